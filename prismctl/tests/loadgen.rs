//! `prismctl loadgen` against a real prism-command started here on a port-0 listener, with
//! its own MongoDB database and Kafka topic: the summary must match what the store holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use prism_platform::auth::{Scope, TokenConfig};
use prism_platform::config::{Config, EventStoreBackend};
use prism_tests::{unique, up};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use serde_json::Value;
use tokio::sync::oneshot;

const TOKEN: &str = "loadgen-test-token";

fn isolated_config() -> Config {
    let mut config = prism_tests::config();
    config.event_store.backend = EventStoreBackend::Mongodb;
    config.mongodb.database = unique("prism_test_loadgen");
    config.kafka.topic = unique("prism-test-loadgen");
    config.kafka.topic_partitions = 3;
    config.relay.enabled = true;
    config.command.listen = "127.0.0.1:0".into();
    config.command.auth_enabled = true;
    config.auth.tokens = vec![TokenConfig::new("test", TOKEN, &Scope::ALL)];
    config
}

/// Every stored event's type, per type, and the accounts they belong to.
async fn stored_events(config: &Config) -> (BTreeMap<String, u64>, usize) {
    let store = up("mongodb", prism_command::app::open_store(config).await);
    let mut by_type = BTreeMap::new();
    let mut accounts = std::collections::HashSet::new();
    let mut after = None;
    loop {
        let page = up("mongodb", store.read_all(after.as_ref(), 500).await);
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (_, envelope) in &page {
            *by_type.entry(envelope.event_type().to_owned()).or_default() += 1;
            accounts.insert(envelope.account_id);
        }
    }
    (by_type, accounts.len())
}

/// Drops the topic, and the database unless prism-command may still be using it (on
/// FerretDB, dropping a database under an open query can wedge the server).
async fn clean_up(config: &Config, drop_database: bool) {
    if drop_database {
        let client = up(
            "mongodb",
            prism_platform::clients::mongodb(&config.mongodb, "prismctl-test").await,
        );
        up(
            "mongodb",
            client.database(&config.mongodb.database).drop().await,
        );
    }
    let admin: AdminClient<DefaultClientContext> = up(
        "kafka",
        prism_platform::clients::kafka_client_config(&config.kafka).create(),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = admin.delete_topics(&[&config.kafka.topic], &options).await;
}

fn count(summary: &Value, command: &str, outcome: &str) -> u64 {
    summary["commands"][command][outcome].as_u64().unwrap_or(0)
}

fn count_prefixed(summary: &Value, command: &str, prefix: &str) -> u64 {
    summary["commands"][command]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(label, _)| label.starts_with(prefix))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_summary_matches_what_the_store_holds() {
    let config = isolated_config();
    let listener = up(
        "localhost",
        tokio::net::TcpListener::bind("127.0.0.1:0").await,
    );
    let url = format!("http://{}", up("localhost", listener.local_addr()));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(prism_command::app::run(config.clone(), listener, async {
        let _ = stopped.await;
    }));

    // Wait until the service answers (or report why it did not start).
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        if server.is_finished() {
            break;
        }
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        let finished = server.is_finished();
        let outcome = if finished {
            format!("{:?}", server.await)
        } else {
            let _ = stop.send(());
            "not ready within 30 s".to_owned()
        };
        clean_up(&config, finished).await;
        panic!("prism-command did not start: {outcome} — is the stack up? (`dev/stack up`)");
    }

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let url_arg = url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_prismctl"))
            .current_dir(&root)
            .env("PRISM_CONFIG", root.join("config/prism.toml"))
            .env_remove("PRISM_PROFILE")
            .env("PRISMCTL_TOKEN", TOKEN)
            .args([
                "loadgen",
                "--url",
                &url_arg,
                "--accounts",
                "25",
                "--commands",
                "300",
                "--rate",
                "0",
                "--concurrency",
                "8",
                "--seed",
                "7",
                "--suspicious-share",
                "0.1",
                "--json",
            ])
            .output()
    })
    .await
    .expect("the prismctl task")
    .expect("running prismctl");

    let _ = stop.send(());
    let stopped = tokio::time::timeout(Duration::from_secs(60), server).await;
    let stopped_cleanly = matches!(stopped, Ok(Ok(Ok(()))));
    let (stored, accounts) = stored_events(&config).await;
    clean_up(&config, stopped_cleanly).await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadgen exited {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stopped_cleanly,
        "prism-command did not stop cleanly: {stopped:?}"
    );
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("loadgen --json printed no JSON ({e}):\n{stdout}\n{stderr}"));

    assert_eq!(summary["ok"], true, "{summary:#}");
    assert_eq!(summary["sent"], 300, "{summary:#}");
    assert_eq!(summary["accounts_opened"], 25);
    for failure in [
        "transport_errors",
        "server_errors",
        "client_errors",
        "skipped",
    ] {
        assert_eq!(summary[failure], 0, "{failure}: {summary:#}");
    }
    let accepted = summary["accepted"].as_u64().unwrap_or(0);
    let rejected = summary["rejected"].as_u64().unwrap_or(0);
    let conflicts = summary["conflicts"].as_u64().unwrap_or(0);
    assert_eq!(accepted + rejected + conflicts, 300, "{summary:#}");
    assert!(
        summary["suspicious"].as_u64().unwrap_or(0) > 0,
        "{summary:#}"
    );

    // Every accepted command stored exactly one event; every rejected one stored nothing.
    let total: u64 = stored.values().sum();
    assert_eq!(
        total, accepted,
        "events in the store {stored:?} vs {summary:#}"
    );
    assert_eq!(accounts, 25);
    let of = |event_type: &str| stored.get(event_type).copied().unwrap_or(0);
    assert_eq!(
        of("prism.account.opened"),
        count(&summary, "open", "accepted")
    );
    assert_eq!(
        of("prism.account.money_deposited"),
        count(&summary, "deposit", "accepted")
    );
    assert_eq!(
        of("prism.account.money_withdrawn"),
        count(&summary, "withdraw", "accepted")
    );
    assert_eq!(
        of("prism.account.card_payment_approved"),
        count(&summary, "pay", "approved")
    );
    assert_eq!(
        of("prism.account.card_payment_declined"),
        count_prefixed(&summary, "pay", "declined:")
    );
    assert_eq!(
        of("prism.account.frozen"),
        count(&summary, "freeze", "accepted")
    );
    assert_eq!(
        of("prism.account.unfrozen"),
        count(&summary, "unfreeze", "accepted")
    );
}
