//! prism-command started while its event store cannot be reached (as after a restart during
//! a store outage) stays up: `/healthz` answers, `/readyz` says the event store is not open
//! and why, `/metrics` is scraped, and commands get a 503 `starting` problem, not a hang
//! and not a lost command. Once the store is reachable the same process takes commands.
//!
//! The store (PostgreSQL) is made unreachable for this instance alone by a Toxiproxy proxy,
//! disabled and then enabled; the shared server keeps serving every other test.

mod support;

use std::time::{Duration, Instant};

use prism_platform::config::EventStoreBackend;
use prism_platform::secret::Dsn;
use prism_tests::toxiproxy::Proxy;
use serde_json::json;
use support::{clean_up, isolated_config, stored_events, wait_ready, Api, Instance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_service_started_while_its_store_is_unreachable_answers_then_takes_commands() {
    let mut config = isolated_config(EventStoreBackend::Postgres);
    let postgres = config.postgres.url.clone();
    let proxy = Proxy::disabled(postgres.hosts()).await;
    config.postgres.url = Dsn::new(
        postgres
            .expose()
            .replacen(postgres.hosts(), &proxy.listen, 1),
    );
    config.postgres.connect_timeout_ms = 1_000;

    // Before: `run` returned "initialising the postgres event store" and the process
    // exited; the test support panics on an instance that stops during start-up.
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = api.get("/readyz").await;
        assert_eq!(answer.status, 503, "/readyz while the store is unreachable");
        assert_eq!(answer.content_type, "application/problem+json");
        let detail = answer.body["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(detail.starts_with("event store not open: "), "{detail}");
        if detail.contains("postgres") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz named no store error within 30 s: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api.get("/healthz").await.status, 200);
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200, "/metrics while starting");

    // A command is refused, and says so: nothing can be stored yet.
    let refused = api
        .post(
            "/v1/accounts",
            json!({ "holder_name": "Early Bird", "email": "early@example.org",
                "country": "DE", "currency": "EUR" }),
        )
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.content_type, "application/problem+json");
    assert_eq!(refused.body["code"], "starting", "{}", refused.body);
    assert_eq!(
        refused
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    // The store reachable: the same process becomes ready and takes commands.
    proxy.enable().await;
    wait_ready(&instance.url).await;
    let account = api.open("EUR").await;
    let deposit = api.deposit(&account, 1_250).await;
    assert_eq!(deposit.status, 200, "{}", deposit.body);

    instance.stop().await;
    let stored = stored_events(&config).await;
    let events: usize = stored.values().map(Vec::len).sum();
    assert_eq!(
        events, 2,
        "only the commands answered with success are stored: {stored:?}"
    );
    clean_up(&config).await;
    drop(proxy);
}
