//! One test run's names for every service: a profile the five service binaries load (a
//! topic, event-store schema, ledger database, search index prefix, Redis namespaces,
//! consumer groups and fraud offline directory of its own), the configuration loaded from
//! it, and the clean-up that drops all of it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prism_platform::config::Config;
use prism_tests::unique;

/// A run's names, as a profile file (what the children load) and as the loaded config.
pub struct World {
    pub config: Config,
    pub profile: PathBuf,
    offline_dir: PathBuf,
}

impl World {
    /// Names for `name` (e.g. `fuzz`) on a topic of `partitions` partitions; `extra` gives
    /// lines to add to a section (`command`, `ledger`, `search`, `dashboard`, `fraud`).
    pub fn new(name: &str, partitions: i32, extra: impl Fn(&str) -> String) -> World {
        let offline_dir = std::env::temp_dir().join(unique(&format!("prism-{name}-offline")));
        let group = |model: &str| unique(&format!("prism-test-{name}-{model}"));
        let database = unique(&format!("prism_test_{name}"));
        let index_prefix = unique(&format!("prism-test-{name}"));
        let dash_namespace = format!("prism-test:{}", unique(&format!("{name}-dash")));
        let fraud_namespace = format!("prism-test:{}", unique(&format!("{name}-fraud")));
        let section = format!(
            r#"[command]
{command}
[ledger]
database = "{database}"
group_id = "{ledger_group}"
{ledger}
[search]
index_prefix = "{index_prefix}"
group_id = "{search_group}"
copy_poll_ms = 200
{search}
[dashboard]
namespace = "{dash_namespace}"
group_id = "{dash_group}"
copy_poll_ms = 200
health_poll_ms = 500
health_targets = []
{dashboard}
[fraud]
namespace = "{fraud_namespace}"
group_id = "{fraud_group}"
offline_dir = "{offline}"
copy_poll_ms = 200
{fraud}"#,
            command = extra("command"),
            ledger_group = group("ledger"),
            ledger = extra("ledger"),
            search_group = group("search"),
            search = extra("search"),
            dash_group = group("dash"),
            dashboard = extra("dashboard"),
            fraud_group = group("fraud"),
            offline = offline_dir.display(),
            fraud = extra("fraud"),
        );
        let (profile, config) = crate::projector::write_profile(name, partitions, &section);
        World {
            config,
            profile,
            offline_dir,
        }
    }

    /// Drops what the run made: topics, consumer groups, event-store schema, the ledger's
    /// databases, the search indices, the Redis keys, the offline store and the profile.
    pub async fn clean_up(&self) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        use rdkafka::client::DefaultClientContext;
        let config = &self.config;
        let ledger = prism_ledger::LedgerConfig::from_config(config).ok();
        let search = prism_search::app::SearchProjector::new(config.clone())
            .ok()
            .map(|p| p.search_config().clone());
        let dashboard: Option<prism_dashboard::DashboardConfig> =
            config.dashboard.parse("dashboard").ok();
        let fraud: Option<prism_fraud::config::FraudConfig> = config.fraud.parse("fraud").ok();
        if let Ok(admin) = prism_platform::clients::kafka_client_config(&config.kafka)
            .create::<AdminClient<DefaultClientContext>>()
        {
            let options = AdminOptions::new();
            let mut topics = vec![config.kafka.topic.clone()];
            for name in ["ledger", "search", "dashboard", "fraud"] {
                topics.push(prism_projector::dlq::topic_name(
                    &config.kafka.topic,
                    &config.projector.dlq_suffix,
                    name,
                ));
            }
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            let _ = admin.delete_topics(&topics, &options).await;
            let groups: Vec<String> = [
                ledger.as_ref().map(|l| l.group_id.clone()),
                search.as_ref().map(|s| s.group_id.clone()),
                dashboard.as_ref().map(|d| d.group_id.clone()),
                fraud.as_ref().map(|f| f.group_id.clone()),
            ]
            .into_iter()
            .flatten()
            .collect();
            // Stopped consumers stay members until their session times out: until then a
            // group is not empty and cannot be deleted.
            let mut groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !groups.is_empty() && Instant::now() < deadline {
                let Ok(results) = admin.delete_groups(&groups, &options).await else {
                    break;
                };
                let refused: BTreeSet<String> = results
                    .into_iter()
                    .filter_map(|r| match r {
                        Err((group, rdkafka::types::RDKafkaErrorCode::NonEmptyGroup)) => {
                            Some(group)
                        }
                        _ => None,
                    })
                    .collect();
                groups.retain(|g| refused.contains(*g));
                if !groups.is_empty() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        prism_tests::drop_event_store(config).await;
        if let Some(ledger) = &ledger {
            if let Ok(store) = prism_ledger::store::Ledger::open(&config.mysql, ledger).await {
                let _ = store.drop_everything().await;
            }
        }
        if let Some(search) = &search {
            if let Ok(copies) =
                prism_search::copies::SearchCopies::connect(&config.elasticsearch, search).await
            {
                let _ = copies.drop_everything().await;
            }
        }
        if let Some(dashboard) = &dashboard {
            prism_tests::unlink_keys(config, &format!("{}:*", dashboard.namespace)).await;
        }
        if let Some(fraud) = &fraud {
            if let Ok(copies) = prism_fraud::copies::connect(&config.redis, fraud).await {
                let _ = copies.drop_everything().await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.offline_dir);
        let _ = std::fs::remove_file(&self.profile);
    }
}
