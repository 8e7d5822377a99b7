//! `prismctl rebuild ledger` while load runs: the real write side and the real ledger run
//! in-process; a reader keeps asking the ledger's query API for accounts during two rebuilds
//! (from the topic, then from the event store). Every answer must be a 200 (no gap while the
//! query API switches copies), the live generation must move, the live projector must take
//! the new copy over, and the final copy must equal the store's fold (`verify`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    config.ledger.set("database", unique("prism_test_rebuild"));
    config.ledger.set("group_id", unique("prism-test-rebuild"));
    config.ledger.set("generation_poll_ms", 200);
    config.relay.sweep_interval_ms = 200;
    config.projector.batch_max_wait_ms = 10;
    config.projector.lag_interval_ms = 200;
    config.projector.session_timeout_ms = 6_000;
    config.log.level = "warn".into();
    config
}

/// `config`'s `[ledger]` section, parsed as prism-ledger parses it.
fn ledger_config(config: &Config) -> prism_ledger::LedgerConfig {
    prism_ledger::LedgerConfig::from_config(config).expect("the test configuration's [ledger]")
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
    let command = command_instance(&config).await;
    let ledger_service = ledger_instance(&config).await;
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
                .bearer_auth(TOKEN)
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
                    match http
                        .get(format!("{url}{path}"))
                        .bearer_auth(TOKEN)
                        .send()
                        .await
                    {
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
    let ledger = up(
        "mysql",
        Ledger::open(&config.mysql, &ledger_config(&config)).await,
    );
    let first = up("mysql", ledger.live_number().await);
    let options = |from| Options {
        from,
        drop_old: false,
        max_lag: 20,
        handover_timeout: Duration::from_secs(30),
        store_page_size: 10_000,
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
    let group = ledger_config(&config).group_id;
    let groups: Vec<String> = std::iter::once(group.clone())
        .chain([by_kafka.generation, by_store.generation].map(|g| format!("{group}-rebuild-g{g}")))
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

/// Drops everything a test made: the ledger's databases, the topics, the consumer groups
/// and the event store's database or schema.
async fn clean_up(config: &Config, ledger: &Ledger, generations: &[u32]) {
    let _ = ledger.drop_everything().await;
    if let Ok(admin) = prism_platform::clients::kafka_client_config(&config.kafka)
        .create::<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>>(
    ) {
        let options = rdkafka::admin::AdminOptions::new();
        let dlq = format!("{}.dlq.ledger", config.kafka.topic);
        let _ = admin
            .delete_topics(&[&config.kafka.topic, &dlq], &options)
            .await;
        let group = ledger_config(config).group_id;
        let groups: Vec<String> = std::iter::once(group.clone())
            .chain(generations.iter().map(|g| format!("{group}-rebuild-g{g}")))
            .collect();
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        let _ = admin.delete_groups(&groups, &options).await;
    }
    prism_tests::drop_event_store(config).await;
}

/// Rebuilds from the event store while several writers append to many accounts through the
/// real prism-command: each commit's place in the store's global order is decided before it
/// lands (MongoDB: a UUIDv7 minted before the insert; PostgreSQL: a sequence value drawn
/// before the commit), so the fill's pages pass commits that land behind them. The
/// promoted copy must still equal the store, as a whole (`verify`).
///
/// `page` is the fill's page size: a small one keeps the fill paging at the store's tail
/// while commits land (cheap on PostgreSQL, whose pages are index range reads), so that it
/// meets versions whose predecessor landed behind its page.
async fn store_rebuild_under_concurrent_writers(backend: EventStoreBackend, page: usize) {
    const ACCOUNTS: usize = 40;
    const WRITERS: usize = 8;
    const REBUILDS: usize = 3;
    const WARM_UP: Duration = Duration::from_secs(2);
    const WRITING: Duration = Duration::from_secs(12);
    let mut config = isolated_config();
    config.event_store.backend = backend;
    config.mongodb.database = unique("prism_test_rebuild");
    config.kafka.topic_partitions = 4;
    let command = command_instance(&config).await;
    let ledger_service = ledger_instance(&config).await;
    let http = reqwest::Client::new();
    let mut accounts = Vec::new();
    for i in 0..ACCOUNTS {
        let opened = post(
            &http,
            format!("{}/v1/accounts", command.url),
            json!({"holder_name": format!("Writer {i}"), "email": format!("w{i}@example.org"),
                   "country": "GB", "currency": "GBP"}),
        )
        .await;
        let id = opened["account_id"].as_str().map(str::to_owned);
        accounts.push(id.expect("account_id"));
    }

    let ledger = up(
        "mysql",
        Ledger::open(&config.mysql, &ledger_config(&config)).await,
    );
    let options = Options {
        from: Source::Store,
        drop_old: true,
        max_lag: 20,
        handover_timeout: Duration::from_secs(30),
        store_page_size: page,
        progress: false,
    };
    let mut generations = Vec::new();
    let mut sent = 0;
    for round in 0..REBUILDS {
        // Writers for a bounded time (a store fill that pages until it finds no new event
        // must end); the rebuild starts once they are in full swing.
        let until = Instant::now() + WARM_UP + WRITING;
        let round_sent = Arc::new(AtomicU64::new(0));
        let writers: Vec<JoinHandle<()>> = (0..WRITERS)
            .map(|w| {
                let (http, url, accounts, round_sent) = (
                    http.clone(),
                    command.url.clone(),
                    accounts.clone(),
                    Arc::clone(&round_sent),
                );
                tokio::spawn(async move {
                    let mut n = (round * WRITERS + w) as u64;
                    while Instant::now() < until {
                        n = n
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let id = &accounts[(n >> 33) as usize % accounts.len()];
                        post(
                            &http,
                            format!("{url}/v1/accounts/{id}/deposits"),
                            json!({"amount_minor": 1 + (n >> 40) % 1_000}),
                        )
                        .await;
                        round_sent.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        let warm = Instant::now() + Duration::from_secs(60);
        while round_sent.load(Ordering::Relaxed) < 200 {
            assert!(Instant::now() < warm, "the writers made no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = round_sent.load(Ordering::Relaxed);
        let report = rebuild::rebuild_ledger(&config, &options, std::future::pending())
            .await
            .unwrap_or_else(|e| panic!("rebuild from the store: {e:#}"));
        generations.push(report.generation);
        assert!(report.store_events > 0);
        eprintln!(
            "round {round}: {} events from the store ({} late commits re-read), {} records from Kafka",
            report.store_events, report.store_reread, report.kafka_records
        );
        assert!(
            round_sent.load(Ordering::Relaxed) > before,
            "commands were written while the rebuild ran"
        );
        for writer in writers {
            writer.await.expect("writer task");
        }
        sent += round_sent.load(Ordering::Relaxed);
    }
    assert!(sent > 500, "{sent} deposits");

    let report = prismctl::verify::verify_ledger_with(
        &config,
        &prismctl::verify::Options {
            wait: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await
    .expect("verify");
    ledger_service.stop().await;
    command.stop().await;
    clean_up(&config, &ledger, &generations).await;
    assert!(
        report.ok,
        "the rebuilt copy differs from the store after {sent} deposits: {} accounts drifted; {}",
        report.drifted,
        serde_json::to_string(&report.mismatches.iter().take(10).collect::<Vec<_>>())
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_rebuild_under_concurrent_writers_equals_the_mongodb_store() {
    store_rebuild_under_concurrent_writers(EventStoreBackend::Mongodb, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_rebuild_under_concurrent_writers_equals_the_postgres_store() {
    store_rebuild_under_concurrent_writers(EventStoreBackend::Postgres, 20).await;
}

/// A prism-ledger instance of `config`, running in-process.
async fn ledger_instance(config: &Config) -> Service {
    let config = config.clone();
    start(move |listener, stopped| async move {
        prism_ledger::app::run(config, listener, async {
            let _ = stopped.await;
        })
        .await
    })
    .await
}

/// A prism-command instance of `config`, running in-process.
async fn command_instance(config: &Config) -> Service {
    let config = config.clone();
    start(move |listener, stopped| async move {
        prism_command::app::run(config, listener, async {
            let _ = stopped.await;
        })
        .await
    })
    .await
}

/// Opens `n` accounts and keeps depositing into them round-robin until `stop`; returns the
/// account ids and the load task (which returns how many deposits it made).
async fn steady_load(
    http: &reqwest::Client,
    command: &Service,
    n: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, JoinHandle<u64>) {
    let mut accounts = Vec::new();
    for i in 0..n {
        let opened = post(
            http,
            format!("{}/v1/accounts", command.url),
            json!({"holder_name": format!("Holder {i}"), "email": format!("h{i}@example.org"),
                   "country": "GB", "currency": "GBP"}),
        )
        .await;
        let id = opened["account_id"].as_str().map(str::to_owned);
        accounts.push(id.expect("account_id"));
    }
    let (http, url, ids) = (http.clone(), command.url.clone(), accounts.clone());
    let load = tokio::spawn(async move {
        let mut sent = 0_u64;
        while !stop.load(Ordering::Relaxed) {
            let id = &ids[(sent % ids.len() as u64) as usize];
            post(
                &http,
                format!("{url}/v1/accounts/{id}/deposits"),
                json!({"amount_minor": 100 + sent % 7}),
            )
            .await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    });
    (accounts, load)
}

/// Offset of the last record of every partition of the topic.
async fn last_offsets(config: &Config) -> std::collections::BTreeMap<i32, i64> {
    let kafka = config.kafka.clone();
    up(
        "tokio",
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let client: BaseConsumer = up(
                "kafka",
                prism_platform::clients::kafka_client_config(&kafka).create(),
            );
            let metadata = up(
                "kafka",
                client.fetch_metadata(Some(&kafka.topic), Duration::from_secs(10)),
            );
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            partitions
                .into_iter()
                .map(|p| {
                    let (_, high) = up(
                        "kafka",
                        client.fetch_watermarks(&kafka.topic, p, Duration::from_secs(10)),
                    );
                    (p, high - 1)
                })
                .collect()
        })
        .await,
    )
}

/// Stored offset of every partition in generation `number`.
async fn positions(ledger: &Ledger, number: u32) -> std::collections::BTreeMap<i32, i64> {
    let generation = up("mysql", ledger.generation(number).await);
    up(
        "mysql",
        prism_ledger::store::partition_positions(&generation.pool).await,
    )
    .into_iter()
    .map(|row| (row.partition, row.offset))
    .collect()
}

/// Polls `check` every 100 ms until it answers `Some`, failing after `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every partition of the topic holds a record past `offsets` (the relay
/// published commands written after they were taken).
async fn records_past(config: &Config, offsets: &std::collections::BTreeMap<i32, i64>) {
    eventually(
        Duration::from_secs(60),
        "new records on every partition",
        || async {
            let ends = last_offsets(config).await;
            let past = ends
                .iter()
                .all(|(p, end)| offsets.get(p).is_none_or(|stored| end > stored));
            past.then_some(())
        },
    )
    .await;
}

/// A handover test's running system: a topic of four partitions, prism-command, the live
/// prism-ledger instances, and deposits into a few accounts until it is stopped.
struct UnderLoad {
    config: Config,
    ledger: Ledger,
    /// The prism-ledger instances, then prism-command: stopped in that order.
    services: Vec<Service>,
    stop: Arc<AtomicBool>,
    load: JoinHandle<u64>,
}

impl UnderLoad {
    /// Starts prism-command and `instances` prism-ledger instances, opens `accounts`
    /// accounts and keeps depositing into them.
    async fn start(instances: usize, accounts: usize) -> Self {
        let mut config = isolated_config();
        config.kafka.topic_partitions = 4;
        let command = command_instance(&config).await;
        let mut services = Vec::with_capacity(instances + 1);
        for _ in 0..instances {
            services.push(ledger_instance(&config).await);
        }
        services.push(command);
        let http = reqwest::Client::new();
        let stop = Arc::new(AtomicBool::new(false));
        let (_, load) = steady_load(&http, &services[instances], accounts, Arc::clone(&stop)).await;
        let ledger = up(
            "mysql",
            Ledger::open(&config.mysql, &ledger_config(&config)).await,
        );
        Self {
            config,
            ledger,
            services,
            stop,
            load,
        }
    }

    /// `prismctl rebuild ledger` from the topic, switched once within 20 records of its
    /// end, waiting up to `handover_timeout` for the live instances to take the copy over.
    async fn rebuild(&self, handover_timeout: Duration) -> rebuild::Report {
        let options = Options {
            from: Source::Kafka,
            drop_old: false,
            max_lag: 20,
            handover_timeout,
            store_page_size: 10_000,
            progress: false,
        };
        rebuild::rebuild_ledger(&self.config, &options, std::future::pending())
            .await
            .unwrap_or_else(|e| panic!("rebuild: {e:#}"))
    }

    /// Stops the load, verifies the ledger against the store, stops the services, removes
    /// what the test made (databases, topics, groups: rebuild `new`'s included), fails on
    /// any difference, and returns how many deposits the load made.
    async fn stop_and_verify(self, new: u32) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.load.await.expect("load task");
        let verified = prismctl::verify::verify_ledger_with(
            &self.config,
            &prismctl::verify::Options {
                wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .expect("verify");
        for service in self.services {
            service.stop().await;
        }
        clean_up(&self.config, &self.ledger, &[new]).await;
        assert!(
            verified.ok,
            "{}",
            serde_json::to_string(&verified.mismatches).unwrap_or_default()
        );
        sent
    }
}

/// Two prism-ledger instances share the partitions; a rebuild under load hands over to
/// both: each ends up writing the new copy, nothing writes the retired one any more, and the
/// new copy equals the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_hands_over_to_every_ledger_instance() {
    let system = UnderLoad::start(2, 16).await;
    let (config, ledger) = (&system.config, &system.ledger);
    eventually(
        Duration::from_secs(60),
        "two instances writing generation 1",
        || async {
            let rows = up("mysql", ledger.instances(Duration::from_secs(5)).await);
            (rows.len() == 2 && rows.iter().all(|r| r.writing == Some(1))).then_some(())
        },
    )
    .await;

    let report = system.rebuild(Duration::from_secs(60)).await;
    let new = report.generation;
    assert!(report.handed_over, "{report:?}");
    let rows = up("mysql", ledger.instances(Duration::from_secs(5)).await);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row.writing, Some(new), "{row:?}");
        assert_eq!(row.error, None, "{row:?}");
    }
    // The retired copy takes no write any more, though records keep arriving.
    let retired = positions(ledger, 1).await;
    records_past(config, &retired).await;
    let live = positions(ledger, new).await;
    records_past(config, &live).await;
    eventually(
        Duration::from_secs(60),
        "the live copy moving on",
        || async {
            let now = positions(ledger, new).await;
            live.iter()
                .all(|(p, before)| now.get(p).is_some_and(|o| o > before))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        positions(ledger, 1).await,
        retired,
        "a prism-ledger still writes the retired copy"
    );

    let sent = system.stop_and_verify(new).await;
    assert!(sent > 50, "{sent} deposits");
}

/// A partition that never held a record has nothing for a live projector to write: the
/// handover must not wait for one. (It did: with one account on a four-partition topic a
/// rebuild under load waited out its whole handover timeout and reported the live
/// projector as not having taken the new copy over.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_hands_over_while_a_partition_never_held_a_record() {
    // One account: its records all go to one partition, the other three stay empty.
    let system = UnderLoad::start(1, 1).await;
    let (config, ledger) = (&system.config, &system.ledger);
    let live_writes = eventually(
        Duration::from_secs(60),
        "the live instance writing generation 1",
        || async {
            let rows = up("mysql", ledger.instances(Duration::from_secs(5)).await);
            let positions = positions(ledger, 1).await;
            (rows.len() == 1 && rows[0].writing == Some(1) && !positions.is_empty())
                .then_some(positions)
        },
    )
    .await;
    let ends = last_offsets(config).await;
    let empty = ends.values().filter(|last| **last < 0).count();
    assert_eq!(empty, 3, "three partitions without a record: {ends:?}");
    assert_eq!(live_writes.len(), 1, "{live_writes:?}");

    let report = system.rebuild(Duration::from_secs(30)).await;
    let new = report.generation;
    assert!(report.handed_over, "{report:?}");
    assert_eq!(report.waiting_for, None, "{report:?}");

    let sent = system.stop_and_verify(new).await;
    assert!(sent > 20, "{sent} deposits");
}

/// A live copy the instances cannot open (its database is missing): no instance keeps
/// writing the retired copy it has; each says why on `/readyz` (503). Once the copy can be
/// opened they move to it and catch up, and it equals the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_that_cannot_open_the_live_copy_stops_writing_the_retired_one() {
    let mut config = isolated_config();
    config.kafka.topic_partitions = 4;
    let command = command_instance(&config).await;
    let a = ledger_instance(&config).await;
    let b = ledger_instance(&config).await;
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (_, load) = steady_load(&http, &command, 16, Arc::clone(&stop)).await;
    let ledger = up(
        "mysql",
        Ledger::open(&config.mysql, &ledger_config(&config)).await,
    );
    // The instances write copy 1 on every partition before it is retired: otherwise "at
    // rest" below could be the calm before their first write.
    eventually(
        Duration::from_secs(60),
        "copy 1 written on every partition that holds records",
        || async {
            let written = positions(&ledger, 1).await;
            let ends = last_offsets(&config).await;
            let all = ends
                .iter()
                .filter(|(_, last)| **last >= 0)
                .all(|(p, _)| written.contains_key(p));
            (!written.is_empty() && all).then_some(())
        },
    )
    .await;

    // Generation 2 is registered and promoted, but its database does not exist.
    let database = format!("{}_g2", ledger_config(&config).database);
    up(
        "mysql",
        sqlx::query(
            "INSERT INTO generations (generation, database_name, state, created_at) \
             VALUES (2, ?, 'retired', NOW(6))",
        )
        .bind(&database)
        .execute(ledger.control_pool())
        .await,
    );
    up("mysql", ledger.promote(2).await);

    // Nothing writes the retired copy, though records keep arriving.
    let stopped = eventually(
        Duration::from_secs(30),
        "the retired copy at rest",
        || async {
            let before = positions(&ledger, 1).await;
            records_past(&config, &before).await;
            let after = positions(&ledger, 1).await;
            (after == before).then_some(after)
        },
    )
    .await;
    let later = last_offsets(&config).await;
    records_past(&config, &later).await;
    assert_eq!(
        positions(&ledger, 1).await,
        stopped,
        "a prism-ledger writes the retired copy"
    );

    for instance in [&a, &b] {
        eventually(Duration::from_secs(30), "/readyz saying why", || async {
            let r = http
                .get(format!("{}/readyz", instance.url))
                .send()
                .await
                .ok()?;
            let status = r.status();
            let body = r.text().await.ok()?;
            (status == 503 && body.contains("cannot open the live copy 2")).then_some(())
        })
        .await;
    }
    // The copy can be opened now: both move to it and catch up.
    up(
        "mysql",
        sqlx::raw_sql(&format!("CREATE DATABASE `{database}`"))
            .execute(ledger.control_pool())
            .await,
    );
    for instance in [&a, &b] {
        eventually(Duration::from_secs(60), "ready again", || async {
            let r = http
                .get(format!("{}/readyz", instance.url))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.expect("load task");
    assert!(sent > 50, "{sent} deposits");
    let verified = prismctl::verify::verify_ledger_with(
        &config,
        &prismctl::verify::Options {
            wait: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .await
    .expect("verify");
    a.stop().await;
    b.stop().await;
    command.stop().await;
    clean_up(&config, &ledger, &[2]).await;
    assert!(
        verified.ok,
        "{}",
        serde_json::to_string(&verified.mismatches).unwrap_or_default()
    );
    assert_eq!(verified.generation, Some(2));
}
