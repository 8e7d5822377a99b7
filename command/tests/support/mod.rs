//! Starts real prism-command instances (in-process, port 0) against the local stack, each
//! test with its own database or schema and its own Kafka topic, and reads the topic back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prism_events::{AccountId, Envelope};
use prism_platform::auth::{Scope, TokenConfig};
use prism_platform::config::{Config, EventStoreBackend};
use prism_tests::{unique, up};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "prism-local-dev-token";
/// A token of the read side only: accepted, but without the `commands` scope.
pub const READER_TOKEN: &str = "prism-test-reader-token";
/// An operator's token: the admin API only.
pub const ADMIN_TOKEN: &str = "prism-test-admin-token";

/// A configuration of its own: a fresh database (or schema) and topic.
pub fn isolated_config(backend: EventStoreBackend) -> Config {
    let mut config = prism_tests::config();
    config.event_store.backend = backend;
    config.mongodb.database = unique("prism_test_cmd");
    config.event_store.postgres_schema = unique("prism_test_cmd");
    config.kafka.topic = unique("prism-test-events");
    config.kafka.topic_partitions = 3;
    config.relay.sweep_interval_ms = 200;
    config.command.auth_enabled = true;
    config.auth.tokens = vec![
        TokenConfig::new("test", TOKEN, &[Scope::Commands]),
        TokenConfig::new("reader", READER_TOKEN, &[Scope::LedgerRead, Scope::Pii]),
        TokenConfig::new("operator", ADMIN_TOKEN, &[Scope::Admin]),
    ];
    config.log.level = "warn".into();
    config
}

/// A free port on 127.0.0.1 (for a binary that binds it itself).
pub fn free_port() -> u16 {
    let listener = up("localhost", std::net::TcpListener::bind("127.0.0.1:0"));
    up("localhost", listener.local_addr()).port()
}

/// The real `prism-command` binary on `port`, with `config`'s store, topic and relay
/// settings (so that it can be killed with SIGKILL).
pub fn spawn_binary(config: &Config, port: u16) -> Child {
    let root = prism_tests::repo_root();
    let child = Command::new(env!("CARGO_BIN_EXE_prism-command"))
        .current_dir(&root)
        .env("PRISM_CONFIG", root.join("config/prism.toml"))
        .env_remove("PRISM_PROFILE")
        .env("PRISM_COMMAND__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "PRISM_EVENT_STORE__BACKEND",
            config.event_store.backend.as_str(),
        )
        .env("PRISM_MONGODB__DATABASE", &config.mongodb.database)
        .env(
            "PRISM_EVENT_STORE__POSTGRES_SCHEMA",
            &config.event_store.postgres_schema,
        )
        .env("PRISM_KAFKA__TOPIC", &config.kafka.topic)
        .env(
            "PRISM_KAFKA__TOPIC_PARTITIONS",
            config.kafka.topic_partitions.to_string(),
        )
        .env(
            "PRISM_RELAY__SWEEP_INTERVAL_MS",
            config.relay.sweep_interval_ms.to_string(),
        )
        .env(
            "PRISM_RELAY__BATCH_MAX_EVENTS",
            config.relay.batch_max_events.to_string(),
        )
        .env("PRISM_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    up("prism-command binary", child)
}

/// Waits until the service at `base` answers `/readyz` with 200.
pub async fn wait_ready(base: &str) {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "prism-command at {base} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running instance.
pub struct Instance {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Instance {
    pub async fn start(config: &Config) -> Self {
        let listener = up(
            "localhost",
            tokio::net::TcpListener::bind("127.0.0.1:0").await,
        );
        let url = format!("http://{}", up("localhost", listener.local_addr()));
        let (stop, stopped) = oneshot::channel::<()>();
        let config = config.clone();
        let task = tokio::spawn(async move {
            prism_command::app::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        let mut instance = Self {
            url,
            stop: Some(stop),
            task: Some(task),
        };
        instance.wait_ready().await;
        instance
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("{}/healthz", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                if let Some(task) = self.task.take() {
                    match task.await {
                        Ok(Err(e)) => panic!("prism-command failed to start: {e:#}"),
                        other => panic!("prism-command stopped during start-up: {other:?}"),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prism-command did not start at {} within 20s", self.url);
    }

    /// Graceful stop: in-flight requests finish, the relay drains.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("prism-command failed: {e:#}"),
                Ok(Err(e)) => panic!("prism-command task: {e}"),
                Err(_) => panic!("prism-command did not stop within 30s"),
            }
        }
    }
}

/// A small HTTP client for the API.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.to_owned(),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(TOKEN)
                .json(&body),
        )
        .await
    }

    pub async fn post_with_key(&self, path: &str, key: &str, body: Value) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", key)
                .json(&body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(TOKEN),
        )
        .await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = up("prism-command", request.send().await);
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = up("prism-command", response.bytes().await);
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            headers,
            body,
        }
    }

    /// Opens an account and returns its id.
    pub async fn open(&self, currency: &str) -> String {
        let answer = self
            .post(
                "/v1/accounts",
                serde_json::json!({ "holder_name": "Test Holder", "email": "t@example.org",
                    "country": "DE", "currency": currency }),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body["account_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no account_id in {}", answer.body))
            .to_owned()
    }

    pub async fn deposit(&self, account: &str, amount: i64) -> Answer {
        self.post(
            &format!("/v1/accounts/{account}/deposits"),
            serde_json::json!({ "amount_minor": amount }),
        )
        .await
    }
}

/// Every event stored for the test's store, per account, through the store itself.
pub async fn stored_events(config: &Config) -> BTreeMap<AccountId, Vec<Envelope>> {
    let store = up("event store", prism_command::app::open_store(config).await);
    let mut all: BTreeMap<AccountId, Vec<Envelope>> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = up("event store", store.read_all(after.as_ref(), 500).await);
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (_, envelope) in page {
            all.entry(envelope.account_id).or_default().push(envelope);
        }
    }
    all
}

/// Reads the topic from the beginning until every account in `expected` reached its version
/// (or the limit). Returns `(account id, account version, event id)` per record, in
/// partition order, duplicates included.
pub fn consume(
    config: &Config,
    expected: &BTreeMap<String, u64>,
    limit: Duration,
) -> Vec<(String, u64, String)> {
    let consumer: BaseConsumer = up(
        "kafka",
        prism_platform::clients::kafka_client_config(&config.kafka)
            .set("group.id", unique("prism-test-reader"))
            .set("enable.auto.commit", "false")
            .create(),
    );
    let mut assignment = TopicPartitionList::new();
    for partition in 0..config.kafka.topic_partitions {
        up(
            "kafka",
            assignment.add_partition_offset(&config.kafka.topic, partition, Offset::Beginning),
        );
    }
    up("kafka", consumer.assign(&assignment));
    let deadline = std::time::Instant::now() + limit;
    let mut records = Vec::new();
    let mut reached: BTreeMap<String, u64> = BTreeMap::new();
    let done = |reached: &BTreeMap<String, u64>| {
        expected
            .iter()
            .all(|(account, version)| reached.get(account).is_some_and(|v| v >= version))
    };
    while !done(&reached) && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = up("kafka", message);
        let mut version = 0;
        let mut id = String::new();
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
                match header.key {
                    "ce_accountversion" => version = value.parse().unwrap_or(0),
                    "ce_id" => id = value,
                    _ => {}
                }
            }
        }
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let top = reached.entry(key.clone()).or_insert(0);
        *top = (*top).max(version);
        // The id, with where it sits in the log (for failure messages).
        let id = format!("{id}@{}:{}", message.partition(), message.offset());
        records.push((key, version, id));
    }
    records
}

/// Asserts that, per account, the records' versions never go backwards except as exact
/// duplicates of versions already seen, and that every version 1..=n appears.
pub fn assert_per_account_order(
    records: &[(String, u64, String)],
    expected: &BTreeMap<String, u64>,
) {
    let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
    for (account, version, _) in records {
        let seen = highest.entry(account.as_str()).or_insert(0);
        if *version <= *seen {
            continue; // a duplicate: consumers drop it by version
        }
        if *version != *seen + 1 {
            let history: Vec<(u64, &str)> = records
                .iter()
                .filter(|(a, _, _)| a == account)
                .map(|(_, v, id)| (*v, id.as_str()))
                .collect();
            panic!(
                "account {account}: version {version} arrived right after {seen} (a gap or \
                 reordering); its records in log order: {history:?}"
            );
        }
        *seen = *version;
    }
    for (account, last) in expected {
        assert_eq!(
            highest.get(account.as_str()).copied().unwrap_or(0),
            *last,
            "account {account} did not reach version {last} on Kafka"
        );
    }
}

/// Drops the test's database/schema and topic.
pub async fn clean_up(config: &Config) {
    prism_tests::drop_event_store(config).await;
    if let Ok(admin) = prism_platform::clients::kafka_client_config(&config.kafka)
        .create::<AdminClient<DefaultClientContext>>()
    {
        let _ = admin
            .delete_topics(&[&config.kafka.topic], &AdminOptions::new())
            .await;
    }
}

/// The last version of every account in `stored`, keyed by the account's text form (as on
/// Kafka).
pub fn last_versions(stored: &BTreeMap<AccountId, Vec<Envelope>>) -> BTreeMap<String, u64> {
    stored
        .iter()
        .map(|(account, events)| {
            let last = events.last().map_or(0, |e| e.account_version);
            (account.to_string(), last)
        })
        .collect()
}

/// Asserts that every stored event's id is among the records read from the topic.
pub fn assert_every_event_published(
    records: &[(String, u64, String)],
    stored: &BTreeMap<AccountId, Vec<Envelope>>,
) {
    let published: std::collections::BTreeSet<&str> = records
        .iter()
        .map(|(_, _, id)| id.split('@').next().unwrap_or_default())
        .collect();
    let missing: Vec<String> = stored
        .values()
        .flatten()
        .filter(|e| !published.contains(e.id.to_string().as_str()))
        .map(|e| format!("{}@{}v{}", e.id, e.account_id, e.account_version))
        .collect();
    assert!(
        missing.is_empty(),
        "{} stored events never reached Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
