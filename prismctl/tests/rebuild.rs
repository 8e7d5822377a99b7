//! `prismctl rebuild ledger` while load runs: the real write side and the real ledger run
//! in-process; a reader keeps asking the ledger's query API for accounts during two rebuilds
//! (from the topic, then from the event store). Every answer must be a 200 (no gap while the
//! query API switches copies), the live generation must move, the live projector must take
//! the new copy over, and the final copy must equal the store's fold (`verify`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prism_ledger::store::Ledger;
use prism_platform::config::{Config, EventStoreBackend};
use prism_tests::{unique, up};
use prismctl::rebuild::{self, Options, Source};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "prism-local-dev-token";

fn isolated_config() -> Config {
    let mut config = prism_tests::config();
    config.event_store.backend = EventStoreBackend::Postgres;
    config.event_store.postgres_schema = unique("prism_test_rebuild");
    config.kafka.topic = unique("prism-test-rebuild");
    config.kafka.topic_partitions = 3;
    config.ledger.database = unique("prism_test_rebuild");
    config.ledger.group_id = unique("prism-test-rebuild");
    config.ledger.generation_poll_ms = 200;
    config.relay.sweep_interval_ms = 200;
    config.projector.batch_max_wait_ms = 10;
    config.projector.lag_interval_ms = 200;
    config.projector.session_timeout_ms = 6_000;
    config.log.level = "warn".into();
    config
}

struct Service {
    url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{} stopped with an error: {e:#}", self.url),
            Err(e) => panic!("{} panicked: {e}", self.url),
        }
    }
}

async fn start<F, Fut>(run: F) -> Service
where
    F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = up(
        "localhost",
        tokio::net::TcpListener::bind("127.0.0.1:0").await,
    );
    let url = format!("http://{}", up("localhost", listener.local_addr()));
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(listener, stopped));
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                return Service { url, stop, task };
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not become ready");
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let response = up(
        "prism-command",
        http.post(url).bearer_auth(TOKEN).json(&body).send().await,
    );
    assert!(response.status().is_success(), "{}", response.status());
    up("prism-command", response.json().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_under_load_switches_copies_with_no_gap_in_answers() {
    let config = isolated_config();
    let command = {
        let config = config.clone();
        start(move |listener, stopped| async move {
            prism_command::app::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
        })
        .await
    };
    let ledger_service = {
        let config = config.clone();
        start(move |listener, stopped| async move {
            prism_ledger::app::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
        })
        .await
    };
    let http = reqwest::Client::new();

    let mut accounts = Vec::new();
    for i in 0..12 {
        let opened = post(
            &http,
            format!("{}/v1/accounts", command.url),
            json!({"holder_name": format!("Holder {i}"), "email": format!("h{i}@example.org"),
                   "country": "GB", "currency": "GBP"}),
        )
        .await;
        let id = opened["account_id"].as_str().map(str::to_owned);
        let id = id.expect("account_id");
        // The reader below must only ever see accounts the ledger already has.
        let token = opened["consistency_token"].as_str().unwrap_or_default();
        let visible = up(
            "prism-ledger",
            http.get(format!("{}/v1/accounts/{id}", ledger_service.url))
                .header("Consistency-Token", token)
                .send()
                .await,
        );
        assert_eq!(
            visible.status(),
            200,
            "account {id} did not reach the ledger"
        );
        accounts.push(id);
    }

    // Load: deposits round-robin until told to stop.
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = {
        let (http, url, accounts, stop) = (
            http.clone(),
            command.url.clone(),
            accounts.clone(),
            Arc::clone(&stop_load),
        );
        tokio::spawn(async move {
            let mut sent = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let id = &accounts[(sent % accounts.len() as u64) as usize];
                post(
                    &http,
                    format!("{url}/v1/accounts/{id}/deposits"),
                    json!({"amount_minor": 100 + sent % 7}),
                )
                .await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };

    // Reader: every answer during the rebuilds must be a 200 with the account in it.
    let stop_reader = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicU64::new(0));
    let reader = {
        let (http, url, accounts, stop, answers) = (
            http.clone(),
            ledger_service.url.clone(),
            accounts.clone(),
            Arc::clone(&stop_reader),
            Arc::clone(&answers),
        );
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0_usize;
            while !stop.load(Ordering::Relaxed) {
                let id = &accounts[i % accounts.len()];
                for path in [
                    format!("/v1/accounts/{id}"),
                    format!("/v1/accounts/{id}/statement?limit=5"),
                ] {
                    match http.get(format!("{url}{path}")).send().await {
                        Ok(r) if r.status() == 200 => {
                            answers.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!("{path}: {}", r.status())),
                        Err(e) => failures.push(format!("{path}: {e}")),
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failures
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = up("mysql", Ledger::open(&config.mysql, &config.ledger).await);
    let first = up("mysql", ledger.live_number().await);
    let options = |from| Options {
        from,
        drop_old: false,
        max_lag: 20,
        handover_timeout: Duration::from_secs(30),
        progress: false,
    };
    let by_kafka = rebuild::rebuild_ledger(&config, &options(Source::Auto), std::future::pending())
        .await
        .expect("rebuild from the topic");
    assert_eq!(
        by_kafka.source,
        Source::Kafka,
        "the topic still holds every event"
    );
    assert_eq!(by_kafka.previous, first);
    assert!(
        by_kafka.handed_over,
        "the live projector took the new copy over"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let by_store =
        rebuild::rebuild_ledger(&config, &options(Source::Store), std::future::pending())
            .await
            .expect("rebuild from the store");
    assert!(by_store.store_events > 0);
    assert!(by_store.handed_over);
    assert_eq!(
        up("mysql", ledger.live_number().await),
        Some(by_store.generation)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop_load.store(true, Ordering::Relaxed);
    let sent = load.await.expect("load task");
    stop_reader.store(true, Ordering::Relaxed);
    let failures = reader.await.expect("reader task");
    assert!(
        sent > 50,
        "the load ran during the rebuilds ({sent} deposits)"
    );
    assert!(answers.load(Ordering::Relaxed) > 50);
    assert!(
        failures.is_empty(),
        "answers that were not 200: {failures:?}"
    );

    let report = prismctl::verify::verify_ledger_with(
        &config,
        &prismctl::verify::Options {
            wait: Duration::from_secs(20),
            ..Default::default()
        },
    )
    .await
    .expect("verify");
    assert!(
        report.ok,
        "drift after the rebuilds: {}",
        serde_json::to_string(&report).unwrap_or_default()
    );

    // Both rebuilt copies were kept until --drop-old; dropping leaves only the live one.
    let dropped = up("mysql", ledger.drop_retired().await);
    assert_eq!(dropped.len(), 2, "{dropped:?}");

    ledger_service.stop().await;
    command.stop().await;
    let _ = ledger.drop_everything().await;
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> = up(
        "kafka",
        prism_platform::clients::kafka_client_config(&config.kafka).create(),
    );
    let options = rdkafka::admin::AdminOptions::new();
    let dlq = format!("{}.dlq.ledger", config.kafka.topic);
    let _ = admin
        .delete_topics(&[&config.kafka.topic, &dlq], &options)
        .await;
    let groups: Vec<String> = std::iter::once(config.ledger.group_id.clone())
        .chain(
            [by_kafka.generation, by_store.generation]
                .map(|g| format!("{}-rebuild-g{g}", config.ledger.group_id)),
        )
        .collect();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let _ = admin.delete_groups(&groups, &options).await;
    let pg = up(
        "postgres",
        prism_platform::clients::postgres(&config.postgres).await,
    );
    let _ = sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
        config.event_store.postgres_schema
    ))
    .execute(&pg)
    .await;
}
