//! Support for the ledger projector's integration tests against the real local stack.
//!
//! Every test runs in an [`Env`] of its own: a Kafka topic (`unique("t-ledger")`), a ledger
//! control database (`unique("t_ledger")`), a consumer group and, when it needs one, an
//! event-store schema. [`isolated`] runs a test body and cleans up whether it passed or not:
//! projectors first (stopped before their databases go), then databases, topics, groups.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use prism_events::{AccountId, Envelope};
use prism_ledger::store::Ledger;
use prism_ledger::LedgerConfig;
use prism_platform::auth::Scope;
use prism_platform::config::{Config, EventStoreBackend};
use prism_platform::secret::Secret;
use prism_tests::{unique, up};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::MySqlPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The projector's name, as in its dead-letter topic and metric labels.
pub const PROJECTOR: &str = "ledger";

// ---------------------------------------------------------------------------------------
// Configuration and the test environment
// ---------------------------------------------------------------------------------------

/// A configuration of its own: topic, ledger database, consumer group and event-store
/// schema no other test uses, with a runtime tuned for short tests.
pub fn isolated_config(partitions: i32) -> Config {
    let mut config = prism_tests::config();
    config.kafka.topic = unique("t-ledger");
    config.kafka.topic_partitions = partitions;
    config.ledger.set("database", unique("t_ledger"));
    config.ledger.set("group_id", unique("t-ledger-group"));
    config.ledger.set("listen", "127.0.0.1:0");
    config.ledger.set("generation_poll_ms", 200);
    config.ledger.set("wait_timeout_ms", 3_000);
    config.event_store.backend = EventStoreBackend::Postgres;
    config.event_store.postgres_schema = unique("t_ledger_es");
    config.projector.batch_max_wait_ms = 5;
    config.projector.lag_interval_ms = 200;
    config.projector.session_timeout_ms = 6_000;
    config.projector.retry_backoff_ms = 50;
    config.projector.retry_backoff_max_ms = 1_000;
    config.mysql.max_connections = 8;
    config.log.level = "warn".into();
    config
}

/// `config`'s `[ledger]` section, parsed as the projector parses it.
pub fn ledger_config(config: &Config) -> LedgerConfig {
    match LedgerConfig::from_config(config) {
        Ok(ledger) => ledger,
        Err(e) => panic!("the test configuration's [ledger]: {e}"),
    }
}

/// The dead-letter topic of the ledger for `config`'s topic.
pub fn dlq_topic(config: &Config) -> String {
    prism_projector::dlq::topic_name(&config.kafka.topic, &config.projector.dlq_suffix, PROJECTOR)
}

/// One test's world. Cheap to share (`Arc`).
pub struct Env {
    pub config: Config,
    pub producer: FutureProducer,
    /// Projectors started in this environment, stopped by [`Env::clean_up`] at the latest.
    running: Mutex<Vec<Arc<Running>>>,
}

impl Env {
    /// Creates the topic (so that partitions are known before anything is produced).
    pub async fn new(partitions: i32) -> Env {
        Self::with_config(isolated_config(partitions)).await
    }

    pub async fn with_config(config: Config) -> Env {
        up(
            "kafka",
            prism_platform::clients::ensure_topic(
                &config.kafka,
                &config.kafka.topic,
                config.kafka.topic_partitions,
            )
            .await,
        );
        let producer: FutureProducer = up(
            "kafka",
            prism_platform::clients::kafka_client_config(&config.kafka)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "2")
                .create(),
        );
        Env {
            config,
            producer,
            running: Mutex::new(Vec::new()),
        }
    }

    pub fn partitions(&self) -> i32 {
        self.config.kafka.topic_partitions
    }

    /// Starts `prism_ledger::app::run` in-process on a port-0 listener with this
    /// environment's configuration.
    pub async fn start_projector(&self) -> Projector {
        self.start_projector_with(self.config.clone()).await
    }

    /// Starts `prism_ledger::app::run` in-process with `config`.
    pub async fn start_projector_with(&self, config: Config) -> Projector {
        self.start_projector_decoding(config, prism_projector::record::Record::decode)
            .await
    }

    /// Starts the projector with another event contract (`app::run_decoding`): a stand-in
    /// for a newer build.
    pub async fn start_projector_decoding(
        &self,
        config: Config,
        decode: prism_projector::Decode,
    ) -> Projector {
        let listener = up(
            "localhost",
            tokio::net::TcpListener::bind("127.0.0.1:0").await,
        );
        let url = format!("http://{}", up("localhost", listener.local_addr()));
        let config_token = config.auth.token_with(Scope::LedgerRead).cloned();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            prism_ledger::app::run_decoding(
                config,
                listener,
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
                decode,
            )
            .await
        });
        let running = Arc::new(Running {
            stop,
            task: Mutex::new(Some(task)),
        });
        lock(&self.running).push(Arc::clone(&running));
        let projector = Projector {
            url,
            http: http_client(),
            token: bearer_token(&config_token),
            running,
        };
        projector.wait_healthy().await;
        projector
    }

    // ---- Kafka ----

    /// Produces `envelope` (CloudEvents binary mode, key = account) to `partition`;
    /// returns (partition, offset).
    pub async fn send(&self, envelope: &Envelope, partition: i32) -> (i32, i64) {
        let record = prism_events::kafka::encode(envelope);
        let headers: Vec<(&str, Vec<u8>)> = record
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_bytes().to_vec()))
            .collect();
        self.send_raw(
            Some(record.key.as_bytes()),
            &headers,
            Some(&record.value),
            partition,
        )
        .await
    }

    /// Produces a record exactly as given.
    pub async fn send_raw(
        &self,
        key: Option<&[u8]>,
        headers: &[(&str, Vec<u8>)],
        value: Option<&[u8]>,
        partition: i32,
    ) -> (i32, i64) {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.config.kafka.topic)
            .partition(partition)
            .headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        match self.producer.send(record, Duration::from_secs(30)).await {
            Ok(delivery) => (delivery.partition, delivery.offset),
            Err((e, _)) => panic!(
                "kafka is not answering: {e}\nThe integration tests need the local stack: \
                 run `dev/stack up` (see README.md)."
            ),
        }
    }

    /// Produces every event in order (pipelined: the producer is idempotent, so order per
    /// partition is kept); returns their (partition, offset).
    pub async fn send_all(&self, events: &[(Envelope, i32)]) -> Vec<(i32, i64)> {
        let sends = events.iter().map(|(e, p)| self.send(e, *p));
        futures::future::join_all(sends).await
    }

    /// Reads the dead-letter topic from the beginning until it holds at least `at_least`
    /// records (or `limit` passed), then a little longer to see any extra one.
    pub fn dead_letters(&self, at_least: usize, limit: Duration) -> Vec<DeadLetter> {
        read_topic(&self.config, &dlq_topic(&self.config), at_least, limit)
            .into_iter()
            .map(|r| DeadLetter {
                key: r.key,
                payload: r.payload,
                headers: r.headers,
                timestamp_ms: r.timestamp_ms,
            })
            .collect()
    }

    /// The consumer group's committed offsets, per partition (`None`: none committed).
    pub fn committed(&self) -> BTreeMap<i32, Option<i64>> {
        let consumer: BaseConsumer = up(
            "kafka",
            prism_platform::clients::kafka_client_config(&self.config.kafka)
                .set("group.id", &ledger_config(&self.config).group_id)
                .set("enable.auto.commit", "false")
                .create(),
        );
        let tpl = self.all_partitions(Offset::Invalid);
        let committed = up(
            "kafka",
            consumer.committed_offsets(tpl, Duration::from_secs(10)),
        );
        committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect()
    }

    /// Commits `offset` for every partition in the group (the projector must be stopped:
    /// this is what `kafka-consumer-groups --reset-offsets` does).
    pub fn reset_committed(&self, offset: i64) {
        let consumer: BaseConsumer = up(
            "kafka",
            prism_platform::clients::kafka_client_config(&self.config.kafka)
                .set("group.id", &ledger_config(&self.config).group_id)
                .set("enable.auto.commit", "false")
                .create(),
        );
        let tpl = self.all_partitions(Offset::Offset(offset));
        up("kafka", consumer.commit(&tpl, CommitMode::Sync));
    }

    /// Commits `offset` for one partition in the group (the projector must be stopped).
    pub fn reset_committed_partition(&self, partition: i32, offset: i64) {
        let consumer: BaseConsumer = up(
            "kafka",
            prism_platform::clients::kafka_client_config(&self.config.kafka)
                .set("group.id", &ledger_config(&self.config).group_id)
                .set("enable.auto.commit", "false")
                .create(),
        );
        let mut tpl = TopicPartitionList::new();
        up(
            "kafka",
            tpl.add_partition_offset(&self.config.kafka.topic, partition, Offset::Offset(offset)),
        );
        up("kafka", consumer.commit(&tpl, CommitMode::Sync));
    }

    /// Kafka's end offset of every partition.
    pub fn end_offsets(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = up(
            "kafka",
            prism_platform::clients::kafka_client_config(&self.config.kafka).create(),
        );
        (0..self.partitions())
            .map(|p| {
                let (_, high) = up(
                    "kafka",
                    consumer.fetch_watermarks(&self.config.kafka.topic, p, Duration::from_secs(10)),
                );
                (p, high)
            })
            .collect()
    }

    fn all_partitions(&self, offset: Offset) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions() {
            up(
                "kafka",
                tpl.add_partition_offset(&self.config.kafka.topic, p, offset),
            );
        }
        tpl
    }

    // ---- the read model ----

    /// The ledger (control database) of this environment.
    pub async fn ledger(&self) -> Ledger {
        up(
            "mysql",
            Ledger::open(&self.config.mysql, &ledger_config(&self.config)).await,
        )
    }

    /// A pool on the live generation.
    pub async fn model_pool(&self) -> MySqlPool {
        let ledger = self.ledger().await;
        up("mysql", ledger.live().await).pool
    }

    /// Stops every projector, then drops the databases, the topics, the consumer group and
    /// the event-store schema (if a test made one). Errors are reported, not hidden.
    pub async fn clean_up(&self) {
        let running: Vec<Arc<Running>> = lock(&self.running).drain(..).collect();
        for r in running {
            let _ = r.shut_down().await;
        }
        let mut problems = Vec::new();
        let ledger_config = ledger_config(&self.config);
        match Ledger::open(&self.config.mysql, &ledger_config).await {
            Ok(ledger) => {
                if let Err(e) = ledger.drop_everything().await {
                    problems.push(format!("dropping {}: {e:#}", ledger_config.database));
                }
            }
            Err(e) => problems.push(format!(
                "opening {} to drop it: {e:#}",
                ledger_config.database
            )),
        }
        if let Err(e) = self.drop_event_store().await {
            problems.push(e);
        }
        match prism_platform::clients::kafka_client_config(&self.config.kafka)
            .create::<AdminClient<DefaultClientContext>>()
        {
            Ok(admin) => {
                let dlq = dlq_topic(&self.config);
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
                if let Err(e) = admin
                    .delete_topics(&[&self.config.kafka.topic, &dlq], &options)
                    .await
                {
                    problems.push(format!("deleting topics: {e}"));
                }
                // Every projector stopped; a killed one stays a member until its session
                // times out, so a non-empty group is tried again for a while.
                let group = &ledger_config.group_id;
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let result = admin.delete_groups(&[group], &options).await;
                    let non_empty = matches!(
                        result.as_deref(),
                        Ok([Err((_, RDKafkaErrorCode::NonEmptyGroup))])
                    );
                    if !non_empty || Instant::now() >= deadline {
                        if let Ok([Err((_, code))]) = result.as_deref() {
                            if *code != RDKafkaErrorCode::GroupIdNotFound {
                                problems.push(format!("deleting group {group}: {code}"));
                            }
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Err(e) => problems.push(format!("kafka admin client: {e}")),
        }
        if !problems.is_empty() && !std::thread::panicking() {
            eprintln!("clean-up problems: {problems:?}");
        }
    }
}

impl Env {
    /// Drops the event-store schema of this environment, if a test made one.
    async fn drop_event_store(&self) -> Result<(), String> {
        let schema = &self.config.event_store.postgres_schema;
        let pool = prism_platform::clients::postgres(&self.config.postgres)
            .await
            .map_err(|e| format!("connecting to postgres: {e}"))?;
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name = $1",
        )
        .bind(schema)
        .fetch_optional(&pool)
        .await
        .map_err(|e| format!("looking for the event-store schema: {e}"))?;
        if exists.is_some() {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&pool)
                .await
                .map_err(|e| format!("dropping the event-store schema: {e}"))?;
        }
        pool.close().await;
        Ok(())
    }
}

/// Runs `body` in a fresh [`Env`] and cleans up afterwards, whether it passed or not.
pub async fn isolated<F, Fut, T>(partitions: i32, body: F) -> T
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = T>,
{
    isolated_with(isolated_config(partitions), body).await
}

/// [`isolated`] with a configuration of the caller's.
pub async fn isolated_with<F, Fut, T>(config: Config, body: F) -> T
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = T>,
{
    let env = Arc::new(Env::with_config(config).await);
    let outcome = AssertUnwindSafe(body(Arc::clone(&env)))
        .catch_unwind()
        .await;
    env.clean_up().await;
    match outcome {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn http_client() -> reqwest::Client {
    up(
        "reqwest",
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build(),
    )
}

// ---------------------------------------------------------------------------------------
// A running projector
// ---------------------------------------------------------------------------------------

struct Running {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<anyhow::Result<()>>>>,
}

impl Running {
    /// Asks for a graceful stop and waits (30 s at most). `None` if already stopped.
    async fn shut_down(&self) -> Option<Result<(), String>> {
        let _ = self.stop.send(true);
        let task = lock(&self.task).take()?;
        Some(
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(e))) => Err(format!("prism-ledger failed: {e:#}")),
                Ok(Err(e)) => Err(format!("prism-ledger task: {e}")),
                Err(_) => Err("prism-ledger did not stop within 30 s".into()),
            },
        )
    }

    fn finished(&self) -> bool {
        lock(&self.task)
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }
}

/// An in-process prism-ledger.
pub struct Projector {
    pub url: String,
    pub http: reqwest::Client,
    /// Bearer token [`Projector::get`] sends to the query API.
    pub token: String,
    running: Arc<Running>,
}

/// The token a test sends: the configuration's first (the compiled local one if none).
fn bearer_token(configured: &Option<Secret>) -> String {
    configured.as_ref().map_or_else(
        || prism_platform::config::LOCAL_DEV_TOKEN.to_owned(),
        |t| t.expose().to_owned(),
    )
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Projector {
    /// A projector running elsewhere (a child process) at `url`, with the local token.
    pub fn at(url: String) -> Projector {
        let (stop, _) = watch::channel(false);
        Projector {
            url,
            http: http_client(),
            token: bearer_token(&None),
            running: Arc::new(Running {
                stop,
                task: Mutex::new(None),
            }),
        }
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if self.running.finished() {
                match self.running.shut_down().await {
                    Some(Err(e)) => panic!("prism-ledger failed to start: {e}"),
                    other => panic!("prism-ledger stopped during start-up: {other:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "prism-ledger did not answer /healthz at {} within 60 s",
            self.url
        );
    }

    /// Whether `app::run` has returned (or was never started here).
    pub fn finished(&self) -> bool {
        self.running.finished()
    }

    /// Stops and returns how `app::run` ended.
    pub async fn stop_result(&self) -> Result<(), String> {
        self.running
            .shut_down()
            .await
            .unwrap_or_else(|| Err("already stopped".into()))
    }

    /// Graceful stop: batches in hand are finished, positions stored and committed.
    pub async fn stop(&self) {
        if let Some(Err(e)) = self.running.shut_down().await {
            panic!("{e}");
        }
    }

    /// `GET path` with this projector's bearer token (unless `headers` has its own
    /// `Authorization`).
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let bearer = format!("Bearer {}", self.token);
        let mut all = headers.to_vec();
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            all.push(("authorization", bearer.as_str()));
        }
        self.get_anonymous(path, &all).await
    }

    /// `GET path` with exactly `headers` (no token unless given there).
    pub async fn get_anonymous(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = up("prism-ledger", request.send().await);
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = up("prism-ledger", response.bytes().await);
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// `GET /v1/accounts/{id}`: `None` on 404.
    pub async fn account(&self, id: &AccountId) -> Option<Value> {
        let answer = self.get(&format!("/v1/accounts/{id}"), &[]).await;
        match answer.status {
            200 => Some(answer.body),
            404 => None,
            other => panic!("GET account {id}: {other} {}", answer.body),
        }
    }

    /// Every statement line of an account (all pages), newest first.
    pub async fn statement(&self, id: &AccountId) -> Vec<Value> {
        let mut lines = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/accounts/{id}/statement?limit=100&cursor={c}"),
                None => format!("/v1/accounts/{id}/statement?limit=100"),
            };
            let answer = self.get(&path, &[]).await;
            assert_eq!(answer.status, 200, "GET statement {id}: {}", answer.body);
            lines.extend(answer.body["items"].as_array().cloned().unwrap_or_default());
            match answer.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return lines,
            }
        }
    }

    /// `/readyz`: (status, assigned partitions when ready).
    pub async fn readyz(&self) -> (u16, Option<BTreeSet<i32>>, Value) {
        let answer = self.get("/readyz", &[]).await;
        let partitions = answer.body["partitions"].as_object().map(|m| {
            m.keys()
                .filter_map(|k| k.parse::<i32>().ok())
                .collect::<BTreeSet<i32>>()
        });
        (answer.status, partitions, answer.body)
    }

    /// Waits until `/readyz` is 200 with exactly `partitions` assigned.
    pub async fn wait_assigned(&self, partitions: i32, limit: Duration) {
        let all: BTreeSet<i32> = (0..partitions).collect();
        let mut last = Value::Null;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let (status, assigned, body) = self.readyz().await;
            if status == 200 && assigned.as_ref() == Some(&all) {
                return;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "prism-ledger at {} never owned all {partitions} partitions: {last}",
            self.url
        );
    }

    pub async fn metrics(&self) -> String {
        let answer = self.get("/metrics", &[]).await;
        assert_eq!(answer.status, 200);
        match answer.body {
            Value::String(s) => s,
            other => other.to_string(),
        }
    }

    /// Waits until `prism_projector_events_total{outcome}` reaches `n`; returns its value
    /// then (which the caller compares with `n`: more is a bug too).
    pub async fn wait_events(&self, outcome: &str, n: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.events_total(outcome).await;
            if got >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sum of `prism_projector_events_total` with this outcome (over every type).
    pub async fn events_total(&self, outcome: &str) -> u64 {
        metric_sum(
            &self.metrics().await,
            "prism_projector_events_total",
            &[("outcome", outcome)],
        ) as u64
    }
}

/// Sums every sample of `name` whose labels include `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|l| l == format!("{k}=\"{v}\"")));
        if matches {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

// ---------------------------------------------------------------------------------------
// Reading topics
// ---------------------------------------------------------------------------------------

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Kafka timestamp of the dead letter.
    pub timestamp_ms: Option<i64>,
}

impl DeadLetter {
    /// The value of header `name` as text (`None` if absent).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned())
    }

    pub fn original(&self) -> (i32, i64) {
        let partition = self
            .header(prism_projector::dlq::H_PARTITION)
            .and_then(|p| p.parse().ok())
            .unwrap_or(-1);
        let offset = self
            .header(prism_projector::dlq::H_OFFSET)
            .and_then(|p| p.parse().ok())
            .unwrap_or(-1);
        (partition, offset)
    }

    pub fn error(&self) -> String {
        self.header(prism_projector::dlq::H_ERROR)
            .unwrap_or_default()
    }
}

/// Reads every partition of `topic` from the beginning until `at_least` records arrived or
/// `limit` passed, then 500 ms more (to see records beyond the expected ones).
pub fn read_topic(config: &Config, topic: &str, at_least: usize, limit: Duration) -> Vec<Consumed> {
    let consumer: BaseConsumer = up(
        "kafka",
        prism_platform::clients::kafka_client_config(&config.kafka)
            .set("group.id", unique("t-ledger-reader"))
            .set("enable.auto.commit", "false")
            .create(),
    );
    let metadata = up(
        "kafka",
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10)),
    );
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            up(
                "kafka",
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning),
            );
        }
    }
    if tpl.count() == 0 {
        return Vec::new();
    }
    up("kafka", consumer.assign(&tpl));
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    let mut grace: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if grace.is_none() && out.len() >= at_least {
            grace = Some(now + Duration::from_millis(500));
        }
        if grace.is_some_and(|g| now >= g) || (grace.is_none() && now >= deadline) {
            break;
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = up("kafka", message);
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Consumed {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
        });
    }
    out
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

// The shared test data of the contract crate: builders and the seeded history generator.
// (Not every test binary that includes this module uses all of them.)
#[allow(unused_imports)]
pub use prism_events::testing::{
    card_payment as paid, closed, country, day, declined_payment as declined, deposited, frozen,
    last_versions, opened, unfrozen, withdrawn, Account, Feed,
};

// ---------------------------------------------------------------------------------------
// The read model, row by row
// ---------------------------------------------------------------------------------------

/// Every row of the read model's tables as text, ordered by primary key (the partition
/// positions are left out: offsets differ between topics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub accounts: Vec<String>,
    pub lines: Vec<String>,
    pub daily: Vec<String>,
    pub versions: Vec<String>,
}

pub async fn snapshot(pool: &MySqlPool) -> Snapshot {
    async fn rows(pool: &MySqlPool, sql: &str) -> Vec<String> {
        up(
            "mysql",
            sqlx::query_scalar::<_, String>(sql).fetch_all(pool).await,
        )
    }
    Snapshot {
        accounts: rows(
            pool,
            "SELECT CONCAT_WS('|', HEX(account_id), holder_name, email, country, currency, \
             status, balance_minor, daily_withdrawal_limit_minor, IFNULL(frozen_reason, '-'), \
             opened_at, updated_at, IFNULL(closed_at, '-'), version) \
             FROM accounts ORDER BY account_id",
        )
        .await,
        lines: rows(
            pool,
            "SELECT CONCAT_WS('|', HEX(account_id), version, HEX(event_id), kind, amount_minor, \
             balance_after_minor, IFNULL(description, '-'), IFNULL(channel, '-'), \
             IFNULL(merchant_name, '-'), IFNULL(merchant_category, '-'), \
             IFNULL(merchant_country, '-'), occurred_at) \
             FROM statement_lines ORDER BY account_id, version",
        )
        .await,
        daily: rows(
            pool,
            "SELECT CONCAT_WS('|', HEX(account_id), day, credits_minor, debits_minor, deposits, \
             withdrawals, card_payments, declined_payments) \
             FROM daily_totals ORDER BY account_id, day",
        )
        .await,
        versions: rows(
            pool,
            "SELECT CONCAT_WS('|', HEX(account_id), version, HEX(event_id)) \
             FROM projector_accounts ORDER BY account_id",
        )
        .await,
    }
}

/// Asserts two snapshots are equal, table by table, naming the first differing row.
#[track_caller]
pub fn assert_same(what: &str, expected: &Snapshot, actual: &Snapshot) {
    for (table, e, a) in [
        ("accounts", &expected.accounts, &actual.accounts),
        ("statement_lines", &expected.lines, &actual.lines),
        ("daily_totals", &expected.daily, &actual.daily),
        ("projector_accounts", &expected.versions, &actual.versions),
    ] {
        if e == a {
            continue;
        }
        let first = e
            .iter()
            .zip(a.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(e.len().min(a.len()));
        panic!(
            "{what}: table {table} differs ({} rows expected, {} found); first difference at \
             row {first}:\n  expected {:?}\n  actual   {:?}",
            e.len(),
            a.len(),
            e.get(first),
            a.get(first)
        );
    }
}

/// The read model one lone projector builds from `events` (on a topic of its own with
/// `partitions` partitions, each event once, in order): the reference a test of scale-out,
/// rebalances or failures compares the whole model with.
pub async fn reference_snapshot(partitions: i32, events: Vec<(Envelope, i32)>) -> Snapshot {
    isolated(partitions, |env| async move {
        let projector = env.start_projector().await;
        env.send_all(&events).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&events), Duration::from_secs(60)).await;
        let snapshot = snapshot(&pool).await;
        projector.stop().await;
        snapshot
    })
    .await
}

/// Last handled version per account, from `projector_accounts`.
pub async fn model_versions(pool: &MySqlPool) -> HashMap<Uuid, u64> {
    let rows: Vec<(Uuid, u64)> = up(
        "mysql",
        sqlx::query_as("SELECT account_id, version FROM projector_accounts")
            .fetch_all(pool)
            .await,
    );
    rows.into_iter().collect()
}

/// Waits until the model holds at least `expected` of every account.
pub async fn wait_versions(pool: &MySqlPool, expected: &HashMap<Uuid, u64>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let have = model_versions(pool).await;
        let behind: Vec<(Uuid, u64, u64)> = expected
            .iter()
            .filter_map(|(id, v)| {
                let got = have.get(id).copied().unwrap_or(0);
                (got < *v).then_some((*id, *v, got))
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "the read model did not catch up within {limit:?}: {} accounts behind, e.g. \
                 (account, expected, found) {:?}",
                behind.len(),
                &behind[..behind.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts rows of a table of the model.
pub async fn count(pool: &MySqlPool, table: &str) -> i64 {
    up(
        "mysql",
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(pool)
            .await,
    )
}

/// Polls `check` every 100 ms until it returns `Some`, or fails naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
