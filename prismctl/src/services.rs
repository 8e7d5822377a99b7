//! Prism's services inside this process, and the HTTP calls the demo and the benches make.
//!
//! [`Service`] runs `prism-command`, `prism-ledger`, `prism-search` or `prism-dashboard` through its crate's
//! `app::run` — the
//! very code of the binary — on a listener this process bound (a fixed port or port 0),
//! with a shutdown trigger. [`Service::stop`] pulls the trigger and waits for `run` to
//! return: prism-command first stops taking requests and lets its relay publish what is
//! queued; prism-ledger lets every partition finish its batch, stores its positions and
//! commits. Errors come back from `stop`, never as a panic.
//!
//! [`wait_ready`] polls `GET /readyz` until it answers 200 (the command service: store and
//! Kafka reachable; the ledger: joined its consumer group, MySQL and Kafka up, caught up
//! within `ready_max_lag`), naming the last reason it was not ready.
//!
//! [`check_stack`] asks each backing service the demo needs one real question with the
//! project's clients (a Kafka metadata request, a MongoDB `ping` or PostgreSQL `SELECT 1`,
//! MySQL `SELECT 1`), so a stopped stack is reported as such instead of as a start-up error.
//!
//! [`Api`] sends commands and ledger queries and keeps what a client needs from the
//! answers: status, body, the consistency token, and when the answer arrived.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use prism_platform::config::EventStoreBackend;
use prism_platform::Config;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::doctor;
use crate::traffic::Op;

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Command,
    Ledger,
    Search,
    Dashboard,
    Fraud,
}

impl Kind {
    /// The binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Command => "prism-command",
            Self::Ledger => "prism-ledger",
            Self::Search => "prism-search",
            Self::Dashboard => "prism-dashboard",
            Self::Fraud => "prism-fraud",
        }
    }

    /// The flag of `prismctl demo` that sets its address.
    pub fn listen_flag(self) -> &'static str {
        match self {
            Self::Command => "--command-listen",
            Self::Ledger => "--ledger-listen",
            Self::Search => "--search-listen",
            Self::Dashboard => "--dashboard-listen",
            Self::Fraud => "--fraud-listen",
        }
    }
}

/// A listener could not be bound: a wrong address, or a port in use.
#[derive(Debug)]
pub struct BindError {
    pub kind: Kind,
    pub address: String,
    pub in_use: bool,
    pub source: std::io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, flag) = (self.kind.name(), self.kind.listen_flag());
        if self.in_use {
            write!(
                f,
                "{} is already in use, so {name} cannot listen there (is a {name} already \
                 running?); stop it, or choose another address with {flag} (e.g. {flag} \
                 127.0.0.1:0 for any free port)",
                self.address
            )
        } else {
            write!(
                f,
                "{name} cannot listen on {:?}: {} (give an address like 127.0.0.1:8080 with {flag})",
                self.address, self.source
            )
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Binds `address` (`host:port`; port 0 for any free port) for `kind`.
pub async fn bind(kind: Kind, address: &str) -> Result<TcpListener, BindError> {
    TcpListener::bind(address.trim())
        .await
        .map_err(|source| BindError {
            kind,
            address: address.to_owned(),
            in_use: source.kind() == std::io::ErrorKind::AddrInUse,
            source,
        })
}

/// How long a service may take to stop: prism-command's relay publishes what is queued
/// first, which takes a while when it fell far behind.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(300);

/// A Prism service running in this process.
#[derive(Debug)]
pub struct Service {
    kind: Kind,
    address: SocketAddr,
    url: String,
    trigger: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// What `run` returned, once it did (`Some(Ok)`: it stopped cleanly).
    outcome: Option<Result<(), String>>,
}

impl Service {
    /// Starts `kind` with `config` on `listener`. It serves until [`Self::stop`] (or until
    /// this value is dropped, which also pulls the trigger).
    pub fn start(kind: Kind, config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        let address = listener
            .local_addr()
            .with_context(|| format!("the address of {}'s listener", kind.name()))?;
        let (trigger, pulled) = oneshot::channel::<()>();
        let shutdown = async move {
            // A dropped sender stops the service too.
            let _ = pulled.await;
        };
        let task = match kind {
            Kind::Command => tokio::spawn(prism_command::app::run(config, listener, shutdown)),
            Kind::Ledger => tokio::spawn(prism_ledger::app::run(config, listener, shutdown)),
            Kind::Search => tokio::spawn(prism_search::app::run(config, listener, shutdown)),
            Kind::Dashboard => tokio::spawn(prism_dashboard::app::run(config, listener, shutdown)),
            Kind::Fraud => tokio::spawn(prism_fraud::app::run(config, listener, shutdown)),
        };
        Ok(Self {
            kind,
            address,
            url: format!("http://{}", http_host(address)),
            trigger: Some(trigger),
            task: Some(task),
            outcome: None,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://host:port`, for clients.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Waits until `/readyz` answers 200, for at most `timeout`; `progress` hears why it is
    /// not ready yet. Fails at once if the service stopped (with its error).
    pub async fn wait_ready(
        &mut self,
        timeout: Duration,
        progress: impl FnMut(&str),
    ) -> anyhow::Result<()> {
        let name = self.kind.name();
        let url = self.url.clone();
        let probe = wait_ready(name, &url, timeout, progress);
        tokio::pin!(probe);
        let finished = match self.task.as_mut() {
            Some(task) => tokio::select! {
                ready = &mut probe => return ready,
                finished = task => finished,
            },
            None => return Err(anyhow!("{name} is not running")),
        };
        self.task = None;
        let outcome = match finished {
            Ok(Ok(())) => Err(anyhow!("{name} stopped during start-up")),
            Ok(Err(e)) => Err(e.context(format!("{name} could not start"))),
            Err(e) => Err(anyhow!("{name} crashed during start-up: {e}")),
        };
        self.outcome = Some(Err(match &outcome {
            Err(e) => format!("{e:#}"),
            Ok(()) => String::new(),
        }));
        outcome
    }

    /// Whether `run` has returned (for whatever reason).
    pub fn has_stopped(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Pulls the shutdown trigger and waits (at most `timeout`) for `run` to return.
    /// `Ok` only if it stopped cleanly; calling it again gives the same answer.
    pub async fn stop(&mut self, timeout: Duration) -> anyhow::Result<()> {
        drop(self.trigger.take());
        let name = self.kind.name();
        if let Some(task) = self.task.take() {
            let outcome = match tokio::time::timeout(timeout, task).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(e))) => Err(format!("{name} failed: {e:#}")),
                Ok(Err(e)) => Err(format!("{name} crashed: {e}")),
                Err(_) => Err(format!(
                    "{name} did not stop within {} s",
                    timeout.as_secs()
                )),
            };
            self.outcome = Some(outcome);
        }
        match &self.outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(anyhow!("{e}")),
            None => Err(anyhow!("{name} did not stop cleanly")),
        }
    }
}

/// `127.0.0.1:8080`; an unspecified address (`0.0.0.0`, `::`) as loopback, for clients.
fn http_host(address: SocketAddr) -> String {
    let ip = address.ip();
    if ip.is_unspecified() {
        if ip.is_ipv4() {
            format!("127.0.0.1:{}", address.port())
        } else {
            format!("[::1]:{}", address.port())
        }
    } else {
        address.to_string()
    }
}

/// Polls `{url}/readyz` every 100 ms until it answers 200, for at most `timeout`.
pub async fn wait_ready(
    name: &str,
    url: &str,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let probe = format!("{}/readyz", url.trim_end_matches('/'));
    let deadline = Instant::now() + timeout;
    loop {
        let last = match http.get(&probe).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let status = r.status();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                body["detail"]
                    .as_str()
                    .map_or_else(|| format!("/readyz answered {status}"), str::to_owned)
            }
            Err(e) => format!("{e}"),
        };
        progress(&last);
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "{name} at {url} was not ready within {} s: {last}",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------- the backing services ----------

/// One backing service's answer to [`check_stack`].
#[derive(Debug, Clone)]
pub struct StackCheck {
    pub service: &'static str,
    pub address: String,
    /// `Err`: why it did not answer.
    pub result: Result<(), String>,
}

/// Asks Kafka, the configured event store and MySQL one real question each, concurrently,
/// each within `doctor.timeout_ms`.
pub async fn check_stack(config: &Config) -> Vec<StackCheck> {
    let limit = Duration::from_millis(config.doctor.timeout_ms.max(500));
    let store = async {
        match config.event_store.backend {
            EventStoreBackend::Mongodb => {
                let address = config.mongodb.uri.hosts().to_owned();
                checked("mongodb", address, limit, answers(doctor::mongodb(config))).await
            }
            EventStoreBackend::Postgres => {
                let address = config.postgres.url.hosts().to_owned();
                checked(
                    "postgres",
                    address,
                    limit,
                    answers(doctor::postgres(config)),
                )
                .await
            }
        }
    };
    let (kafka, store, mysql) = tokio::join!(
        checked(
            "kafka",
            config.kafka.bootstrap_servers.clone(),
            limit,
            answers(doctor::kafka(config))
        ),
        store,
        checked(
            "mysql",
            config.mysql.url.hosts().to_owned(),
            limit,
            answers(doctor::mysql(config))
        ),
    );
    vec![kafka, store, mysql]
}

async fn checked(
    service: &'static str,
    address: String,
    limit: Duration,
    probe: impl Future<Output = anyhow::Result<()>>,
) -> StackCheck {
    let result = match tokio::time::timeout(limit, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    };
    StackCheck {
        service,
        address,
        result,
    }
}

/// The doctor's check of each service, without its version and round-trip figures.
async fn answers<T>(check: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<()> {
    check.await.map(|_| ())
}

// ---------- names of one's own ----------

/// Names nobody else uses, for a run that must not touch the configured data: the event
/// store's database (MongoDB) or schema (PostgreSQL), the Kafka topic, the ledger's control
/// database and its consumer group.
#[derive(Debug, Clone)]
pub struct Scratch {
    pub backend: EventStoreBackend,
    /// MongoDB database or PostgreSQL schema.
    pub store: String,
    pub topic: String,
    pub ledger_database: String,
    pub group_id: String,
    /// `[search] index_prefix` (lower case, `-`); the search group is `<group_id>-search`.
    pub search_prefix: String,
    /// `[dashboard] namespace`; the dashboard's group is `<group_id>-dashboard`.
    pub dashboard_namespace: String,
    /// `[fraud] namespace` (the fraud group is `<group_id>-fraud`) and `offline_dir`.
    pub fraud_namespace: String,
    pub fraud_offline_dir: std::path::PathBuf,
}

impl Scratch {
    /// `<prefix>_<12 hex digits>` for everything (`-` instead of `_` in the group id).
    /// `prefix`: lower-case letters, digits and `_`.
    pub fn new(prefix: &str, backend: EventStoreBackend) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{prefix}_{}", &id[..12]);
        Self {
            backend,
            store: name.clone(),
            topic: name.clone(),
            ledger_database: name.clone(),
            group_id: name.replace('_', "-"),
            search_prefix: name.replace('_', "-"),
            dashboard_namespace: format!("prism:{name}"),
            fraud_namespace: format!("prism:{name}:fraud"),
            fraud_offline_dir: std::env::temp_dir().join(format!("{name}-fraud")),
        }
    }

    /// Points `config` at these names.
    pub fn apply(&self, config: &mut Config) {
        config.event_store.backend = self.backend;
        match self.backend {
            EventStoreBackend::Mongodb => config.mongodb.database = self.store.clone(),
            EventStoreBackend::Postgres => config.event_store.postgres_schema = self.store.clone(),
        }
        config.kafka.topic = self.topic.clone();
        config.ledger.set("database", self.ledger_database.as_str());
        config.ledger.set("group_id", self.group_id.as_str());
        config
            .search
            .set("index_prefix", self.search_prefix.as_str());
        config.search.set("group_id", self.search_group());
        config
            .dashboard
            .set("namespace", self.dashboard_namespace.as_str());
        config.dashboard.set("group_id", self.dashboard_group());
        config.fraud.set("namespace", self.fraud_namespace.as_str());
        config.fraud.set("group_id", self.fraud_group());
        config
            .fraud
            .set("offline_dir", self.fraud_offline_dir.display().to_string());
    }

    /// The consumer group of prism-fraud on these names.
    pub fn fraud_group(&self) -> String {
        format!("{}-fraud", self.group_id)
    }

    /// The consumer group of prism-dashboard on these names.
    pub fn dashboard_group(&self) -> String {
        format!("{}-dashboard", self.group_id)
    }

    /// The consumer group of prism-search on these names.
    pub fn search_group(&self) -> String {
        format!("{}-search", self.group_id)
    }

    /// Drops everything these names hold (`config` gives the servers): the ledger's
    /// databases, the consumer group, the topic and its dead-letter topic, and — unless
    /// `keep_store` (a service may still be using it: on FerretDB, dropping a database
    /// under an open query can wedge the server) — the event store. Returns what could not
    /// be dropped, as messages.
    pub async fn remove(&self, config: &Config, keep_store: bool) -> Vec<String> {
        let mut failures = Vec::new();
        let mut named = config.clone();
        self.apply(&mut named);
        let ledger = async {
            let ledger_config = prism_ledger::LedgerConfig::from_config(&named)?;
            prism_ledger::store::Ledger::open(&config.mysql, &ledger_config)
                .await?
                .drop_everything()
                .await
        };
        if let Err(e) = ledger.await {
            failures.push(format!(
                "the ledger databases {}*: {e:#}",
                self.ledger_database
            ));
        }
        let search = async {
            let projector = prism_search::app::SearchProjector::new(named.clone())?;
            let settings = projector.search_config();
            if prism_search::copies::SearchCopies::exists(&config.elasticsearch, settings).await? {
                prism_search::copies::SearchCopies::connect(&config.elasticsearch, settings)
                    .await?
                    .drop_everything()
                    .await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = search.await {
            failures.push(format!(
                "the search indices {}-*: {e:#}",
                self.search_prefix
            ));
        }
        let dashboard = async {
            let projector = prism_dashboard::app::DashboardProjector::new(named.clone())?;
            let copies =
                prism_dashboard::copies::connect(&config.redis, projector.dashboard_config())
                    .await?;
            if copies.exists().await? {
                copies.drop_everything().await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = dashboard.await {
            failures.push(format!(
                "the dashboard keys {}:*: {e:#}",
                self.dashboard_namespace
            ));
        }
        let fraud = async {
            let projector = prism_fraud::app::FraudProjector::new(named.clone())?;
            let copies =
                prism_fraud::copies::connect(&config.redis, projector.fraud_config()).await?;
            if copies.exists().await? {
                copies.drop_everything().await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = fraud.await {
            failures.push(format!(
                "the fraud keys {}:* and files: {e:#}",
                self.fraud_namespace
            ));
        }
        let _ = std::fs::remove_dir_all(&self.fraud_offline_dir);
        let dlq = format!("{}.{}.ledger", self.topic, config.projector.dlq_suffix);
        let search_dlq = format!("{}.{}.search", self.topic, config.projector.dlq_suffix);
        let dashboard_dlq = format!("{}.{}.dashboard", self.topic, config.projector.dlq_suffix);
        let fraud_dlq = format!("{}.{}.fraud", self.topic, config.projector.dlq_suffix);
        let groups = [
            self.group_id.as_str(),
            &self.search_group(),
            &self.dashboard_group(),
            &self.fraud_group(),
        ];
        let topics = [
            self.topic.as_str(),
            &dlq,
            &search_dlq,
            &dashboard_dlq,
            &fraud_dlq,
        ];
        if let Err(e) = delete_kafka(config, &topics, &groups).await {
            failures.push(format!("the Kafka topic {}: {e:#}", self.topic));
        }
        if keep_store {
            failures.push(format!(
                "the event store {} (still in use by prism-command)",
                self.store
            ));
        } else if let Err(e) = self.drop_store(config).await {
            failures.push(format!("the event store {}: {e:#}", self.store));
        }
        failures
    }

    async fn drop_store(&self, config: &Config) -> anyhow::Result<()> {
        match self.backend {
            EventStoreBackend::Mongodb => {
                let client = prism_platform::clients::mongodb(&config.mongodb, "prismctl").await?;
                client.database(&self.store).drop().await?;
            }
            EventStoreBackend::Postgres => {
                let pool = prism_platform::clients::postgres(&config.postgres).await?;
                let quoted = format!("\"{}\"", self.store.replace('"', "\"\""));
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {quoted} CASCADE"))
                    .execute(&pool)
                    .await?;
                pool.close().await;
            }
        }
        Ok(())
    }
}

/// Deletes `topics` (missing ones are fine) and the consumer `groups`.
async fn delete_kafka(config: &Config, topics: &[&str], groups: &[&str]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> =
        prism_platform::clients::kafka_client_config(&config.kafka).create()?;
    let timeout = Some(Duration::from_millis(config.kafka.request_timeout_ms));
    let options = AdminOptions::new()
        .operation_timeout(timeout)
        .request_timeout(timeout);
    // The group first: it is empty once the ledger stopped. A group that never committed
    // may not exist; that is fine.
    let _ = admin.delete_groups(groups, &options).await;
    for result in admin.delete_topics(topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => anyhow::bail!("deleting topic {name}: {code}"),
        }
    }
    Ok(())
}

// ---------- talking to the services ----------

/// The answer to a command.
#[derive(Debug, Clone)]
pub struct CommandReply {
    pub status: u16,
    pub body: Value,
    /// When the request was started and when its whole answer had arrived.
    pub sent_at: Instant,
    pub answered_at: Instant,
}

impl CommandReply {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn account_id(&self) -> Option<&str> {
        self.body["account_id"].as_str()
    }

    pub fn version(&self) -> Option<u64> {
        self.body["version"].as_u64()
    }

    /// What to send as `Consistency-Token` to see this write.
    pub fn consistency_token(&self) -> Option<&str> {
        self.body["consistency_token"].as_str()
    }

    /// A problem's `code` (`insufficient_funds`, …).
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// `422 insufficient_funds: <detail>`, for messages.
    pub fn describe(&self) -> String {
        let detail = self.body["detail"].as_str().unwrap_or("");
        format!("{} {}: {detail}", self.status, self.code())
    }

    pub fn latency(&self) -> Duration {
        self.answered_at.duration_since(self.sent_at)
    }
}

/// The answer to a query.
#[derive(Debug, Clone)]
pub struct QueryReply {
    pub status: u16,
    pub body: Value,
    pub answered_at: Instant,
}

impl QueryReply {
    /// `404 account_not_found: <detail>` or the status alone.
    pub fn describe(&self) -> String {
        let code = self.body["code"].as_str().unwrap_or("");
        let detail = self.body["detail"].as_str().unwrap_or("");
        format!("{} {code}: {detail}", self.status)
    }
}

/// HTTP client for prism-command's `/v1` API and the ledger's query API.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    command_url: String,
    ledger_url: String,
    token: String,
    ledger_token: String,
    /// prism-search's address and token, if it runs (`with_search`).
    search: Option<(String, String)>,
}

impl Api {
    /// `pool` idle connections are kept per host (at least one).
    pub fn new(
        command_url: &str,
        ledger_url: &str,
        token: &str,
        timeout: Duration,
        pool: usize,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(pool.max(1))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            command_url: command_url.trim_end_matches('/').to_owned(),
            ledger_url: ledger_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            ledger_token: token.to_owned(),
            search: None,
        })
    }

    /// Also talks to prism-search at `url`, with `token` (of the scope `search:read`).
    pub fn with_search(mut self, url: &str, token: &str) -> Self {
        self.search = Some((url.trim_end_matches('/').to_owned(), token.to_owned()));
        self
    }

    /// `GET path` (with its query string) on prism-search, authenticated.
    pub async fn search_get(&self, path: &str) -> anyhow::Result<QueryReply> {
        let (base, token) = self
            .search
            .as_ref()
            .context("prism-search is not running")?;
        let request = self
            .http
            .get(format!("{base}{path}"))
            .header(AUTHORIZATION, format!("Bearer {token}"));
        self.query(request, path, "prism-search").await
    }

    /// Sends `token` to the ledger instead of prism-command's token (a caller may have
    /// `commands` without `ledger:read`).
    pub fn with_ledger_token(mut self, token: &str) -> Self {
        token.clone_into(&mut self.ledger_token);
        self
    }

    pub fn command_url(&self) -> &str {
        &self.command_url
    }

    pub fn ledger_url(&self) -> &str {
        &self.ledger_url
    }

    /// Sends `op` for `account_id` (ignored by `open`) with an optional idempotency key.
    /// No retry: a transport error is an `Err`.
    pub async fn command(
        &self,
        op: &Op,
        account_id: &str,
        key: Option<&str>,
    ) -> anyhow::Result<CommandReply> {
        let path = op.path(account_id);
        let mut request = self
            .http
            .post(format!("{}{path}", self.command_url))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(CONTENT_TYPE, "application/json")
            .body(op.body().to_string());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let sent_at = Instant::now();
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {path} to prism-command"))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer to POST {path}"))?;
        let answered_at = Instant::now();
        Ok(CommandReply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            sent_at,
            answered_at,
        })
    }

    /// `GET path` (with its query string) on prism-command's API, authenticated.
    pub async fn command_get(&self, path: &str) -> anyhow::Result<QueryReply> {
        let request = self
            .http
            .get(format!("{}{path}", self.command_url))
            .header(AUTHORIZATION, format!("Bearer {}", self.token));
        self.query(request, path, "prism-command").await
    }

    /// `GET path` (with its query string) on the ledger, authenticated, with a
    /// `Consistency-Token` if given.
    pub async fn ledger_get(&self, path: &str, token: Option<&str>) -> anyhow::Result<QueryReply> {
        let mut request = self
            .http
            .get(format!("{}{path}", self.ledger_url))
            .header(AUTHORIZATION, format!("Bearer {}", self.ledger_token));
        if let Some(token) = token {
            request = request.header("consistency-token", token);
        }
        self.query(request, path, "prism-ledger").await
    }

    async fn query(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
        service: &str,
    ) -> anyhow::Result<QueryReply> {
        let response = request
            .send()
            .await
            .with_context(|| format!("GET {path} from {service}"))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer to GET {path} from {service}"))?;
        Ok(QueryReply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            answered_at: Instant::now(),
        })
    }
}

/// Installs the services' logging (to stderr) when `RUST_LOG` asks for it; otherwise the
/// in-process services stay quiet and only the report is printed.
pub fn logs_if_asked(config: &Config) {
    if std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty()) {
        if let Err(e) = prism_platform::telemetry::init(&config.log) {
            eprintln!("prismctl: logging: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("address");
        assert_eq!(http_host(any), "127.0.0.1:8080");
        let any6: SocketAddr = "[::]:8081".parse().expect("address");
        assert_eq!(http_host(any6), "[::1]:8081");
        let local: SocketAddr = "127.0.0.1:9".parse().expect("address");
        assert_eq!(http_host(local), "127.0.0.1:9");
    }

    #[tokio::test]
    async fn a_port_in_use_is_named_with_the_flag_to_change_it() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = taken.local_addr().expect("address").to_string();
        let err = bind(Kind::Ledger, &address).await.expect_err("in use");
        assert!(err.in_use);
        let message = err.to_string();
        assert!(message.contains(&address), "{message}");
        assert!(message.contains("--ledger-listen"), "{message}");
        let err = bind(Kind::Command, "nowhere")
            .await
            .expect_err("bad address");
        assert!(!err.in_use);
        assert!(err.to_string().contains("--command-listen"), "{err}");
    }
}
