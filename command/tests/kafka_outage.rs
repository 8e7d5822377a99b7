//! Kafka down is not the write side down: prism-command starts while Kafka is stopped,
//! stays ready (reporting the relay's backlog), accepts commands, and once Kafka is back
//! publishes every stored event in per-account order.
//!
//! This stops the shared Kafka of the local stack, so the outage is kept short and Kafka is
//! always started again (also when the test fails). Run it alone:
//! `cargo test -p prism-command --test kafka_outage`.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_platform::config::EventStoreBackend;
use prism_tests::up;
use support::{
    assert_every_event_published, assert_per_account_order, clean_up, consume, isolated_config,
    last_versions, stored_events, Api, Instance,
};

/// Accounts written to during the outage.
const ACCOUNTS: usize = 40;

/// Stops Kafka on creation and starts it again when dropped (also on a panic).
struct KafkaOutage {
    running: bool,
}

impl KafkaOutage {
    fn begin() -> Self {
        stack("down");
        Self { running: true }
    }

    /// Starts Kafka again and waits until it answers.
    fn end(&mut self) {
        if self.running {
            self.running = false;
            stack("up");
        }
    }
}

impl Drop for KafkaOutage {
    fn drop(&mut self) {
        self.end();
    }
}

fn stack(action: &str) {
    let root = prism_tests::repo_root();
    let status = Command::new(root.join("dev/stack"))
        .args([action, "kafka"])
        .current_dir(&root)
        .status();
    let status = up("dev/stack", status);
    assert!(
        status.success(),
        "dev/stack {action} kafka failed: {status}"
    );
}

async fn readyz(api: &Api) -> (u16, serde_json::Value) {
    let answer = api.send(api.http.get(format!("{}/readyz", api.base))).await;
    (answer.status, answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_side_starts_and_accepts_commands_while_kafka_is_down() {
    let mut config = isolated_config(EventStoreBackend::Mongodb);
    // Small sweep pages: the catch-up then runs page after page, with the predecessor
    // checks a truncated page needs, as a large backlog would.
    config.relay.batch_max_events = 25;
    let outage = KafkaOutage::begin();
    let outage_started = Instant::now();

    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        accounts.push(api.open("EUR").await);
    }
    for round in 1..=2 {
        for account in &accounts {
            let answer = api.deposit(account, round).await;
            assert_eq!(
                answer.status, 200,
                "deposit while Kafka is down: {}",
                answer.body
            );
        }
    }
    // Ready all along, and the backlog is reported with its age.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(&api).await;
        assert_eq!(status, 200, "/readyz while Kafka is down: {body}");
        let backlog = body["relay"]["backlog_events"].as_u64().unwrap_or(0);
        // 120 events stored; the sweep reads one page of 25 and says "at least".
        if backlog >= 25 {
            assert_eq!(body["relay"]["backlog_at_least"], true, "{body}");
            assert!(
                body["relay"]["backlog_age_seconds"].as_f64().is_some(),
                "no backlog age in {body}"
            );
            assert_eq!(body["relay"]["state"], "degraded", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not report the backlog: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = up(
        "metrics",
        up(
            "metrics",
            api.http.get(format!("{}/metrics", api.base)).send().await,
        )
        .text()
        .await,
    );
    assert!(
        text.contains("prism_relay_backlog_events")
            && text.contains("prism_relay_backlog_age_seconds"),
        "backlog metrics missing"
    );

    // Commands go on without a pause while Kafka comes back and the relay works off the
    // backlog (small pages: page after page); none may overtake an account's backlog.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let load = {
        let (api, accounts) = (api.clone(), accounts.clone());
        let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for account in &accounts {
                    let answer = api.deposit(account, 3).await;
                    assert_eq!(
                        answer.status, 200,
                        "deposit around the recovery: {}",
                        answer.body
                    );
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    up(
        "dev/stack up kafka",
        tokio::task::spawn_blocking(move || {
            let mut outage = outage;
            outage.end();
        })
        .await,
    );
    eprintln!("Kafka was down for {:?}", outage_started.elapsed());

    // The relay notices by itself that Kafka is back (and creates the topic).
    let recovered = Instant::now();
    let deadline = recovered + Duration::from_secs(120);
    loop {
        let (status, body) = readyz(&api).await;
        assert_eq!(status, 200, "{body}");
        if body["relay"]["state"] == "publishing" {
            eprintln!("publishing again after {:?}: {body}", recovered.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not publish again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two more full rounds of commands once the relay publishes again.
    let target = rounds.load(Ordering::Relaxed) + 2;
    let deadline = Instant::now() + Duration::from_secs(120);
    while rounds.load(Ordering::Relaxed) < target && !load.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the load after the outage stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    up("load around the recovery", load.await);

    // Everything stored reaches Kafka, in order per account, without gaps.
    let stored = stored_events(&config).await;
    assert_eq!(stored.len(), ACCOUNTS, "accounts in the store");
    let expected = last_versions(&stored);
    let reader_config = config.clone();
    let records = up(
        "reader",
        tokio::task::spawn_blocking(move || {
            consume(&reader_config, &expected, Duration::from_secs(120))
        })
        .await,
    );
    eprintln!("caught up {:?} after Kafka was back", recovered.elapsed());
    assert_per_account_order(&records, &last_versions(&stored));
    assert_every_event_published(&records, &stored);

    // The backlog drains to nothing and the relay reports itself healthy again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = readyz(&api).await;
        assert_eq!(status, 200, "{body}");
        if body["relay"]["backlog_events"] == 0 && body["relay"]["state"] == "publishing" {
            break;
        }
        assert!(Instant::now() < deadline, "backlog did not drain: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    instance.stop().await;
    clean_up(&config).await;
}
