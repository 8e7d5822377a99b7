//! The fraud tests' world: a profile of its own per test, the real `prism-fraud` process,
//! `verify fraud`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prism_platform::config::Config;
use prism_tests::{unique, up};
use prismctl::models::Model;
use prismctl::verify_model::ModelReport;

use crate::e2e::CommandService;
use crate::projector::ProjectorProcess;

/// One test at a time: one of them restarts Redis.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's names, as a profile file (what the child loads) and as the loaded config.
pub(crate) struct Env {
    pub(crate) config: Config,
    pub(crate) profile: PathBuf,
    pub(crate) offline_dir: PathBuf,
}

impl Env {
    fn new(partitions: i32) -> Env {
        let namespace = format!("prism-test:{}", unique("fraud"));
        let group = unique("prism-test-fraud");
        let offline_dir = std::env::temp_dir().join(unique("prism-fraud-offline"));
        let (profile, config) = crate::projector::write_profile(
            "fraud",
            partitions,
            &format!(
                r#"[fraud]
namespace = "{namespace}"
group_id = "{group}"
offline_dir = "{offline}"
copy_poll_ms = 200

[fraud.projector]
batch_max_events = 500
batch_max_wait_ms = 5
"#,
                offline = offline_dir.display()
            ),
        );
        Env {
            config,
            profile,
            offline_dir,
        }
    }

    /// The real `prism-command` in this process and `prism-fraud`, both ready.
    pub(crate) async fn started(&self) -> (CommandService, ProjectorProcess) {
        let command = CommandService::start(&self.config).await;
        let mut fraud = start(self);
        fraud.wait_ready(Duration::from_secs(60)).await;
        (command, fraud)
    }

    pub(crate) fn fraud(&self) -> prism_fraud::config::FraudConfig {
        up("the [fraud] section", self.config.fraud.parse("fraud"))
    }

    async fn clean_up(&self) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        use rdkafka::client::DefaultClientContext;
        let kafka = prism_platform::clients::kafka_client_config(&self.config.kafka);
        if let Ok(admin) = kafka.create::<AdminClient<DefaultClientContext>>() {
            let options = AdminOptions::new();
            let dlq = prism_projector::dlq::topic_name(
                &self.config.kafka.topic,
                &self.config.projector.dlq_suffix,
                "fraud",
            );
            let _ = admin
                .delete_topics(&[&self.config.kafka.topic, &dlq], &options)
                .await;
            let _ = admin
                .delete_groups(&[&self.fraud().group_id], &options)
                .await;
        }
        prism_tests::drop_event_store(&self.config).await;
        if let Ok(copies) = prism_fraud::copies::connect(&self.config.redis, &self.fraud()).await {
            let _ = copies.drop_everything().await;
        }
        let _ = std::fs::remove_dir_all(&self.offline_dir);
        let _ = std::fs::remove_file(&self.profile);
    }
}

/// Runs `body` in an [`Env`] of its own and cleans up whether it passed or not.
pub(crate) async fn isolated<F, Fut>(partitions: i32, body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()>,
{
    prism_tests::run_then_clean_up(Arc::new(Env::new(partitions)), body, |env| async move {
        env.clean_up().await;
    })
    .await;
}

/// The real `prism-fraud`.
pub(crate) fn start(env: &Env) -> ProjectorProcess {
    ProjectorProcess::start("prism-fraud", "PRISM_FRAUD__LISTEN", &env.profile)
}

/// `prismctl verify`, re-checking for up to `wait`.
pub(crate) async fn verify(config: &Config, wait: Duration) -> ModelReport {
    crate::projector::verify(Model::Fraud, config, wait).await
}

pub(crate) use crate::projector::assert_identical;
