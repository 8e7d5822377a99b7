//! Kafka down is not the write side down: prism-command starts while Kafka is stopped,
//! stays ready (reporting the relay's backlog), accepts commands, and once Kafka is back
//! publishes every stored event in per-account order.
//!
//! A second test stops Kafka for a minute under a running prism-command while commands go
//! on, and checks the relay's catch-up the same way. A third runs two instances through an
//! outage and checks that both publish their own commits again once the backlog is out.
//!
//! These stop the shared Kafka of the local stack (one test at a time), so Kafka is always
//! started again (also when a test fails). Run them alone:
//! `cargo test -p prism-command --test kafka_outage`.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_platform::config::{Config, EventStoreBackend};
use prism_tests::up;
use support::{
    assert_every_event_published, assert_per_account_order, clean_up, consume, isolated_config,
    last_versions, stored_events, Api, Instance,
};

/// Accounts written to during the outage.
const ACCOUNTS: usize = 40;

/// Both tests stop the one Kafka of the stack: one at a time.
static KAFKA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

impl KafkaOutage {
    /// [`KafkaOutage::end`] on a blocking thread, so the runtime's tasks (the load) go on.
    async fn end_off_runtime(self) {
        up(
            "dev/stack up kafka",
            tokio::task::spawn_blocking(move || {
                let mut outage = self;
                outage.end();
            })
            .await,
        );
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

/// The instance's `/metrics` page.
async fn metrics_text(api: &Api) -> String {
    let answer = up(
        "/metrics",
        api.http.get(format!("{}/metrics", api.base)).send().await,
    );
    up("/metrics", answer.text().await)
}

async fn readyz(api: &Api) -> (u16, serde_json::Value) {
    let answer = api.send(api.http.get(format!("{}/readyz", api.base))).await;
    (answer.status, answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_side_starts_and_accepts_commands_while_kafka_is_down() {
    let _kafka = KAFKA.lock().await;
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
    let text = metrics_text(&api).await;
    assert!(
        text.contains("prism_relay_backlog_events")
            && text.contains("prism_relay_backlog_age_seconds"),
        "backlog metrics missing"
    );

    // Commands go on without a pause while Kafka comes back and the relay works off the
    // backlog (small pages: page after page); none may overtake an account's backlog.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let load = keep_depositing(&api, &accounts, &stop, &rounds);
    outage.end_off_runtime().await;
    eprintln!("Kafka was down for {:?}", outage_started.elapsed());

    // The relay notices by itself that Kafka is back (and creates the topic).
    let recovered = recover_and_stop(&api, &stop, &rounds, load).await;
    assert_relay_caught_up(&config, &api, ACCOUNTS, recovered).await;
    instance.stop().await;
    clean_up(&config).await;
}

/// Deposits of 1 on every account, round after round, until `stop`; each must be accepted.
/// Answers the rounds completed so far through `rounds`.
fn keep_depositing(
    api: &Api,
    accounts: &[String],
    stop: &Arc<AtomicBool>,
    rounds: &Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let (api, accounts) = (api.clone(), accounts.to_vec());
    let (stop, rounds) = (Arc::clone(stop), Arc::clone(rounds));
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for account in &accounts {
                let answer = api.deposit(account, 1).await;
                assert_eq!(answer.status, 200, "a deposit: {}", answer.body);
            }
            rounds.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Once Kafka is back: waits until the relay publishes again, lets the load run two more
/// full rounds, then stops it. Answers when Kafka was back.
async fn recover_and_stop(
    api: &Api,
    stop: &AtomicBool,
    rounds: &AtomicU64,
    load: tokio::task::JoinHandle<()>,
) -> Instant {
    let back = Instant::now();
    wait_for_readyz(
        api,
        Duration::from_secs(120),
        "the relay did not publish again",
        |b| b["relay"]["state"] == "publishing",
    )
    .await;
    eprintln!("publishing again after {:?}", back.elapsed());
    let target = rounds.load(Ordering::Relaxed) + 2;
    let deadline = Instant::now() + Duration::from_secs(120);
    while rounds.load(Ordering::Relaxed) < target && !load.is_finished() {
        assert!(Instant::now() < deadline, "the load stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    up("the load", load.await);
    back
}

/// Everything stored reaches Kafka, per account in order without a gap, and the relay's
/// backlog drains to nothing.
async fn assert_relay_caught_up(config: &Config, api: &Api, accounts: usize, back: Instant) {
    let stored = assert_all_on_kafka_in_order(config).await;
    assert_eq!(stored, accounts, "accounts in the store");
    eprintln!("caught up {:?} after Kafka was back", back.elapsed());
    wait_for_readyz(
        api,
        Duration::from_secs(60),
        "the backlog did not drain",
        |b| b["relay"]["backlog_events"] == 0 && b["relay"]["state"] == "publishing",
    )
    .await;
}

/// Opens `count` accounts through `api` and waits until its relay has published them.
async fn open_before_the_outage(api: &Api, count: usize) -> Vec<String> {
    let mut accounts = Vec::with_capacity(count);
    for _ in 0..count {
        accounts.push(api.open("EUR").await);
    }
    wait_for_readyz(
        api,
        Duration::from_secs(60),
        "nothing published before the outage",
        |b| b["relay"]["state"] == "publishing" && b["relay"]["backlog_events"] == 0,
    )
    .await;
    accounts
}

/// Every stored event is on Kafka, per account in order without a gap. Answers how many
/// accounts the store holds.
async fn assert_all_on_kafka_in_order(config: &Config) -> usize {
    let stored = stored_events(config).await;
    let expected = last_versions(&stored);
    let reader_config = config.clone();
    let records = up(
        "reader",
        tokio::task::spawn_blocking(move || {
            consume(&reader_config, &expected, Duration::from_secs(180))
        })
        .await,
    );
    assert_per_account_order(&records, &last_versions(&stored));
    assert_every_event_published(&records, &stored);
    stored.len()
}

/// Polls `/readyz` until `done` says so, failing after `limit`.
async fn wait_for_readyz(
    api: &Api,
    limit: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = readyz(api).await;
        assert_eq!(status, 200, "/readyz: {body}");
        if done(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kafka stops for a minute under a running prism-command while commands go on without a
/// pause: every one is accepted, and once Kafka is back the relay publishes the whole
/// backlog — every stored event, per account in order, without a gap — and drains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_catches_up_after_kafka_was_down_for_a_minute_while_commands_went_on() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let _kafka = KAFKA.lock().await;
    let mut config = isolated_config(EventStoreBackend::Mongodb);
    // Small sweep pages: the catch-up runs page after page, as a larger backlog would.
    config.relay.batch_max_events = 25;
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let accounts = open_before_the_outage(&api, ACCOUNTS / 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let load = keep_depositing(&api, &accounts, &stop, &rounds);
    let outage = up(
        "dev/stack down kafka",
        tokio::task::spawn_blocking(KafkaOutage::begin).await,
    );
    let down = Instant::now();
    let before = rounds.load(Ordering::Relaxed);
    // The outage itself: the load goes on meanwhile; readiness stays, the backlog shows.
    wait_for_readyz(
        &api,
        OUTAGE,
        "no backlog reported while Kafka is down",
        |b| b["relay"]["state"] == "degraded" && b["relay"]["backlog_events"].as_u64() > Some(0),
    )
    .await;
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    assert!(!load.is_finished(), "the load stopped during the outage");
    let during = rounds.load(Ordering::Relaxed) - before;
    assert!(
        during > 0,
        "no command round completed while Kafka was down"
    );
    outage.end_off_runtime().await;
    eprintln!(
        "Kafka was down for {:?}; {during} rounds of {} deposits meanwhile",
        down.elapsed(),
        accounts.len()
    );

    let back = recover_and_stop(&api, &stop, &rounds, load).await;
    assert_relay_caught_up(&config, &api, accounts.len(), back).await;
    instance.stop().await;
    clean_up(&config).await;
}

/// The relay's figures on one instance's `/metrics`: events acknowledged, those of them
/// acknowledged within 1 s of their command (`prism_relay_delay_seconds`), and those sent
/// by a sweep (`prism_relay_sent_total{path="sweep"}`).
#[derive(Debug, Clone, Copy, Default)]
struct RelayFigures {
    published: f64,
    within_1s: f64,
    swept: f64,
}

impl RelayFigures {
    async fn scrape(api: &Api) -> Self {
        let text = metrics_text(api).await;
        let value = |prefix: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Self {
            published: value("prism_relay_delay_seconds_count "),
            within_1s: value("prism_relay_delay_seconds_bucket{le=\"1\"} "),
            swept: value("prism_relay_sent_total{path=\"sweep\"} "),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            published: self.published - before.published,
            within_1s: self.within_1s - before.within_1s,
            swept: self.swept - before.swept,
        }
    }
}

/// Waits until nothing stored before `back` is unpublished: the outage's backlog is on
/// Kafka.
async fn wait_for_outage_backlog_published(config: &Config, back: chrono::DateTime<chrono::Utc>) {
    let store = up("event store", prism_command::app::open_store(config).await);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = up("event store", store.unpublished(None, 1_000_000).await)
            .iter()
            .filter(|e| e.time < back)
            .count();
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} events of the outage still unpublished"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two instances under load through a Kafka outage: once the outage's backlog is on
/// Kafka, each publishes its own commits again as they come, whichever holds the sweep
/// lease. The instance without the lease used to leave every account it had deferred
/// during the outage to the other's sweeps for as long as commits kept coming: each of its
/// commits reached Kafka up to a sweep interval late (here 2 s), with no end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_every_instance_publishes_its_own_commits_again() {
    const OUTAGE: Duration = Duration::from_secs(10);
    const WINDOW: Duration = Duration::from_secs(8);
    let _kafka = KAFKA.lock().await;
    let mut config = isolated_config(EventStoreBackend::Mongodb);
    config.relay.sweep_interval_ms = 2_000;
    // Publishes give up within the outage, so both relays defer commits to the sweep.
    config.relay.publish_timeout_ms = 2_000;
    let instances = [
        Instance::start(&config).await,
        Instance::start(&config).await,
    ];
    let apis: Vec<Api> = instances.iter().map(|i| Api::new(&i.url)).collect();
    let mut accounts = Vec::new();
    for api in &apis {
        accounts.push(open_before_the_outage(api, ACCOUNTS / 4).await);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let loads: Vec<_> = apis
        .iter()
        .zip(&accounts)
        .map(|(api, own)| keep_depositing(api, own, &stop, &rounds))
        .collect();
    let outage = up(
        "dev/stack down kafka",
        tokio::task::spawn_blocking(KafkaOutage::begin).await,
    );
    tokio::time::sleep(OUTAGE).await;
    outage.end_off_runtime().await;
    let back = chrono::Utc::now();
    wait_for_outage_backlog_published(&config, back).await;
    // Two sweeps for each relay to see the backlog gone.
    tokio::time::sleep(Duration::from_millis(2 * config.relay.sweep_interval_ms)).await;

    let mut before = Vec::new();
    for api in &apis {
        before.push(RelayFigures::scrape(api).await);
    }
    tokio::time::sleep(WINDOW).await;
    let mut window = Vec::new();
    for (api, before) in apis.iter().zip(&before) {
        window.push(RelayFigures::scrape(api).await.since(*before));
    }
    stop.store(true, Ordering::Relaxed);
    for load in loads {
        up("the load", load.await);
    }
    eprintln!("after the outage's backlog, over {WINDOW:?}: {window:?}");
    for (n, figures) in window.iter().enumerate() {
        let late = figures.published - figures.within_1s;
        assert!(
            figures.published >= 20.0 && late * 50.0 <= figures.published,
            "instance {n}: {late} of {} events reached Kafka more than 1 s after their \
             command ({} sent by a sweep): {window:?}",
            figures.published,
            figures.swept
        );
    }

    assert_all_on_kafka_in_order(&config).await;
    for instance in instances {
        instance.stop().await;
    }
    clean_up(&config).await;
}
