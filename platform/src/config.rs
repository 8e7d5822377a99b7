//! The one typed configuration every Prism binary reads.
//!
//! Layers, later ones win:
//! 1. compiled defaults (the `Default` impls below, pointing at the local `dev/stack`);
//! 2. the base file, `config/prism.toml` (or the file named by `PRISM_CONFIG`);
//! 3. an optional profile, `PRISM_PROFILE=compose` → `config/compose.toml` beside the base
//!    file (a value with a `/` or ending in `.toml` is taken as a path);
//! 4. environment variables `PRISM_<SECTION>__<KEY>`, e.g. `PRISM_KAFKA__BOOTSTRAP_SERVERS`.
//!
//! Unknown keys are errors that name the key, so a typo never silently falls back to a
//! default. Passwords live in [`Secret`] or [`Dsn`] values, which never print themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::auth::{Scope, TokenConfig};
use crate::secret::{Dsn, Secret};

/// Environment variable naming the base configuration file.
pub const CONFIG_ENV: &str = "PRISM_CONFIG";
/// Environment variable naming the profile (`compose`) or profile file.
pub const PROFILE_ENV: &str = "PRISM_PROFILE";
/// The base file looked for when `PRISM_CONFIG` is not set.
pub const DEFAULT_CONFIG_FILE: &str = "config/prism.toml";
/// The bearer token compiled in for local use, with every scope (documented in the
/// README). Refused on a listener other than loopback: see
/// [`AuthConfig::refuse_local_tokens`].
pub const LOCAL_DEV_TOKEN: &str = "prism-local-dev-token";
/// The analysts' token compiled in for local use: the read scopes of search, the dashboard
/// and fraud features, without personal data. Refused like [`LOCAL_DEV_TOKEN`].
pub const LOCAL_ANALYST_TOKEN: &str = "prism-local-analyst-token";
/// The cursor-signing key compiled in for local use; refused like [`LOCAL_DEV_TOKEN`].
pub const LOCAL_DEV_CURSOR_SECRET: &str = "prism-local-dev-cursor-secret";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Section(String),
    #[error(
        "[{section}] {key} holds the compiled-in local value, which is public and refused on \
         {listening} (not a loopback address): set your own with {env}"
    )]
    LocalSecret {
        section: &'static str,
        key: &'static str,
        /// The environment variable that sets it, with an example value.
        env: &'static str,
        listening: SocketAddr,
    },
}

/// Refuses a compiled-in local secret (token, cursor key) on a listener that other machines
/// can reach: those values are in the source and the README, so anyone could use them.
/// `in_use` lists the secrets that matter with their key names.
pub fn refuse_local_secrets(
    section: &'static str,
    listening: SocketAddr,
    in_use: &[(&'static str, &'static str, bool)],
) -> Result<(), ConfigError> {
    if listening.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    match in_use.iter().find(|(_, _, local)| *local) {
        Some((key, env, _)) => Err(ConfigError::LocalSecret {
            section,
            key,
            env,
            listening,
        }),
        None => Ok(()),
    }
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        Self::Invalid(Box::new(e))
    }
}

/// Where the configuration layers come from; [`Sources::from_env`] is what binaries use.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The base file; `None` means "`config/prism.toml` if it exists".
    pub base: Option<PathBuf>,
    /// A profile name or path.
    pub profile: Option<String>,
}

impl Sources {
    /// Reads `PRISM_CONFIG` and `PRISM_PROFILE`.
    pub fn from_env() -> Self {
        Self {
            base: std::env::var_os(CONFIG_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            profile: std::env::var(PROFILE_ENV).ok().filter(|v| !v.is_empty()),
        }
    }

    fn figment(&self) -> Result<Figment, ConfigError> {
        let mut figment = Figment::new();
        let base = match &self.base {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.clone())),
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        if let Some(base) = &base {
            figment = figment.merge(Toml::file_exact(base));
        }
        if let Some(profile) = &self.profile {
            let path = profile_path(base.as_deref(), profile);
            if !path.exists() {
                return Err(ConfigError::MissingFile(path));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only SECTION__KEY variables are configuration; PRISM_CONFIG, PRISM_PROFILE and
        // other PRISM_* variables (used by scripts) are not keys and are left alone.
        let env = Env::prefixed("PRISM_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        Ok(figment.merge(env))
    }

    /// Loads and validates the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let config: Config = self.figment()?.extract()?;
        Ok(config)
    }
}

fn profile_path(base: Option<&Path>, profile: &str) -> PathBuf {
    if profile.contains('/') || profile.ends_with(".toml") {
        return PathBuf::from(profile);
    }
    let dir = base
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("config"));
    dir.join(format!("{profile}.toml"))
}

/// Loads the configuration the way every binary does: defaults ← file ← profile ← env.
pub fn load() -> Result<Config, ConfigError> {
    Sources::from_env().load()
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub kafka: KafkaConfig,
    pub mongodb: MongoConfig,
    pub postgres: PostgresConfig,
    pub mysql: MysqlConfig,
    pub elasticsearch: ElasticsearchConfig,
    pub redis: RedisConfig,
    pub prometheus: PrometheusConfig,
    pub doctor: DoctorConfig,
    pub event_store: EventStoreConfig,
    pub auth: AuthConfig,
    pub command: CommandConfig,
    pub relay: RelayConfig,
    pub projector: ProjectorConfig,
    /// `prism-ledger`'s section, owned and parsed by that crate ([`Section`]).
    pub ledger: Section,
    /// `prism-search`'s section, owned and parsed by that crate ([`Section`]).
    pub search: Section,
    /// `prism-dashboard`'s section, owned and parsed by that crate ([`Section`]).
    pub dashboard: Section,
    /// `prism-fraud`'s section, owned and parsed by that crate ([`Section`]).
    pub fraud: Section,
}

/// A section owned by a projector crate (`[search]`, …): kept raw here and parsed by that
/// crate into its own type with [`Section::parse`], still refusing unknown keys. The
/// section's `projector` table (e.g. `[search.projector]`) overrides `[projector]` for that
/// projector alone ([`Section::runtime`]): Elasticsearch wants other batch sizes than MySQL.
/// Naming the section here (one line per projector) keeps a misspelt section an error.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Section(Option<figment::value::Value>);

impl fmt::Debug for Section {
    /// Keys only: a section may hold tokens and keys, which its own type masks once parsed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self
            .0
            .as_ref()
            .and_then(|v| v.as_dict())
            .map(|d| d.keys().map(String::as_str).collect())
            .unwrap_or_default();
        f.debug_struct("Section").field("keys", &keys).finish()
    }
}

impl Section {
    /// A section holding `table` (tests, tools).
    pub fn from_value(table: figment::value::Value) -> Self {
        Self(Some(table))
    }

    /// Sets `key` to `value` (tools and tests that point a projector at scratch names,
    /// as `PRISM_<SECTION>__<KEY>` would).
    pub fn set(&mut self, key: &str, value: impl Into<figment::value::Value>) {
        let mut dict = self
            .0
            .as_ref()
            .and_then(|v| v.as_dict())
            .cloned()
            .unwrap_or_default();
        dict.insert(key.to_owned(), value.into());
        self.0 = Some(figment::value::Value::from(dict));
    }

    /// The section as the crate's type `T` (missing keys from `T::default()` through its
    /// `#[serde(default)]`), without the `projector` table. Errors name the section and key.
    pub fn parse<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, ConfigError> {
        let Some(value) = &self.0 else {
            return Ok(T::default());
        };
        let mut dict = value
            .as_dict()
            .cloned()
            .ok_or_else(|| ConfigError::Section(format!("[{name}] must be a table")))?;
        dict.remove("projector");
        let table = figment::value::Value::from(dict);
        T::deserialize(&table).map_err(|e| ConfigError::Section(format!("[{name}] {e}")))
    }

    /// `[projector]` with this section's `projector` table laid over it.
    pub fn runtime(
        &self,
        name: &str,
        base: &ProjectorConfig,
    ) -> Result<ProjectorConfig, ConfigError> {
        let overrides = self
            .0
            .as_ref()
            .and_then(|v| v.as_dict())
            .and_then(|d| d.get("projector"));
        let Some(overrides) = overrides else {
            return Ok(base.clone());
        };
        let merged = Figment::from(figment::providers::Serialized::defaults(base))
            .merge(figment::providers::Serialized::defaults(overrides));
        merged
            .extract()
            .map_err(|e| ConfigError::Section(format!("[{name}.projector] {e}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (a file, a pipe, a container's log), text on
    /// one.
    #[default]
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `info,prism_platform=debug`; `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// The topic every event is published to.
    pub topic: String,
    /// Partitions used when Prism creates the topic.
    pub topic_partitions: i32,
    /// Replication factor used when Prism creates the topic.
    pub topic_replication_factor: i32,
    /// Timeout for metadata and admin requests.
    pub request_timeout_ms: u64,
    /// librdkafka properties handed over as they are (SASL, TLS, tuning), e.g.
    /// `"security.protocol" = "SASL_SSL"`. Values are masked in `Debug` output.
    #[serde(deserialize_with = "flatten_client_properties")]
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic: "account-events".into(),
            topic_partitions: 12,
            topic_replication_factor: 1,
            request_timeout_ms: 5_000,
            client: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Pass-through values can hold SASL passwords or JAAS configs: show only the keys.
        let client: BTreeMap<&str, &str> =
            self.client.keys().map(|k| (k.as_str(), "****")).collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic", &self.topic)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication_factor", &self.topic_replication_factor)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("client", &client)
            .finish()
    }
}

/// A pass-through property value as TOML or the environment may give it.
#[derive(Deserialize)]
#[serde(untagged)]
enum PropertyValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// `sasl.mechanism = "PLAIN"` in TOML (unquoted dotted key) and
    /// `PRISM_KAFKA__CLIENT__SASL__MECHANISM` both arrive as nested tables.
    Table(BTreeMap<String, PropertyValue>),
}

fn flatten_client_properties<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    fn walk(
        prefix: &str,
        map: BTreeMap<String, PropertyValue>,
        out: &mut BTreeMap<String, String>,
    ) {
        for (key, value) in map {
            let key = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                PropertyValue::Bool(b) => {
                    out.insert(key, b.to_string());
                }
                PropertyValue::Int(i) => {
                    out.insert(key, i.to_string());
                }
                PropertyValue::Float(x) => {
                    out.insert(key, x.to_string());
                }
                PropertyValue::Text(s) => {
                    out.insert(key, s);
                }
                PropertyValue::Table(t) => walk(&key, t, out),
            }
        }
    }
    let raw = BTreeMap::<String, PropertyValue>::deserialize(deserializer)?;
    let mut out = BTreeMap::new();
    walk("", raw, &mut out);
    Ok(out)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoConfig {
    /// A MongoDB connection string; may hold credentials (masked when shown).
    pub uri: Dsn,
    /// The database Prism's event store uses.
    pub database: String,
    pub connect_timeout_ms: u64,
    /// Only when the MongoDB API is FerretDB 1.x on PostgreSQL: a connection string to the
    /// PostgreSQL database FerretDB stores into. The event store then adds, beside
    /// FerretDB's own indexes, the lookup indexes PostgreSQL can use for the queries FerretDB
    /// sends (it filters every equality as `_jsonb->key @> value`, which FerretDB's own
    /// btree indexes cannot serve: without these, every lookup reads the whole
    /// collection). Unset (or empty) on MongoDB, whose own indexes serve every lookup;
    /// ignored when the server is not FerretDB.
    pub ferretdb_postgres_url: Option<Dsn>,
}

impl MongoConfig {
    /// [`MongoConfig::ferretdb_postgres_url`], unless unset or empty (a profile over a base
    /// file that sets it turns it off with `""`).
    pub fn ferretdb_postgres(&self) -> Option<&Dsn> {
        self.ferretdb_postgres_url
            .as_ref()
            .filter(|url| !url.expose().is_empty())
    }
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uri: Dsn::new("mongodb://127.0.0.1:27017/"),
            database: "prism".into(),
            connect_timeout_ms: 5_000,
            ferretdb_postgres_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: Dsn,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: Dsn::new("postgres://prism:prism@127.0.0.1:5432/prism"),
            max_connections: 16,
            connect_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MysqlConfig {
    /// `mysql://user:password@host:port/database`.
    pub url: Dsn,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            url: Dsn::new("mysql://prism:prism@127.0.0.1:3306/prism"),
            max_connections: 16,
            connect_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// Base URL of the REST API, e.g. `http://127.0.0.1:9200`.
    pub url: Dsn,
    /// Basic-auth user; empty for none.
    pub username: String,
    pub password: Secret,
    pub request_timeout_ms: u64,
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        Self {
            url: Dsn::new("http://127.0.0.1:9200"),
            username: String::new(),
            password: Secret::default(),
            request_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db`.
    pub url: Dsn,
    pub connect_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Dsn::new("redis://127.0.0.1:6379/0"),
            connect_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL of the Prometheus server that scrapes Prism.
    pub url: Dsn,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            url: Dsn::new("http://127.0.0.1:9090"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DoctorConfig {
    /// Services whose failure `prismctl doctor` reports but does not count as fatal.
    pub optional: Vec<String>,
    /// Per-service time limit for a check; above the clients' own connect timeouts so that
    /// a failing service reports its client's error rather than a bare time-out.
    pub timeout_ms: u64,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        Self {
            optional: vec!["prometheus".into()],
            timeout_ms: 10_000,
        }
    }
}

/// Which database holds the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStoreBackend {
    /// MongoDB 7 (or FerretDB): one document per commit, no transactions needed.
    #[default]
    Mongodb,
    /// PostgreSQL: one row per event, one transaction per commit.
    Postgres,
}

impl EventStoreBackend {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Mongodb => "mongodb",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventStoreConfig {
    pub backend: EventStoreBackend,
    /// With the postgres backend: the schema holding the event tables.
    pub postgres_schema: String,
    /// A snapshot of an account is stored every this many events (0 = never).
    pub snapshot_every: u64,
}

impl Default for EventStoreConfig {
    fn default() -> Self {
        Self {
            backend: EventStoreBackend::Mongodb,
            postgres_schema: "prism".into(),
            snapshot_every: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandConfig {
    /// Address of the HTTP API.
    pub listen: String,
    /// Whether requests to /v1 need `Authorization: Bearer <token>` of a caller with the
    /// `commands` scope (`[[auth.tokens]]`).
    pub auth_enabled: bool,
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// How often a command is re-decided after another instance wrote first, before 409.
    pub conflict_retries: u32,
    /// Accounts whose state is kept in memory (least recently used ones are dropped).
    pub cache_accounts: usize,
    /// CloudEvents `source` of the events this service writes.
    pub source: String,
    /// Most commits of different accounts written in one store round trip (group commit);
    /// 1 turns batching off.
    pub append_batch_max: usize,
    /// Batches written at the same time; the commits that become ready meanwhile queue and
    /// go together when one returns.
    pub append_batches_in_flight: usize,
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            auth_enabled: true,
            max_body_bytes: 16 * 1024,
            conflict_retries: 5,
            cache_accounts: 100_000,
            source: "/prism/command".into(),
            append_batch_max: 64,
            append_batches_in_flight: 2,
        }
    }
}

/// The callers of every Prism API (`[[auth.tokens]]`): each token with its scopes. Each
/// service's `auth_enabled` turns the check on or off for that service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
}

impl Default for AuthConfig {
    /// The two local callers of the README: one with every scope, one analyst.
    fn default() -> Self {
        Self {
            tokens: vec![
                TokenConfig::new("local", LOCAL_DEV_TOKEN, &Scope::ALL),
                TokenConfig::new(
                    "local-analyst",
                    LOCAL_ANALYST_TOKEN,
                    &[Scope::SearchRead, Scope::DashboardRead, Scope::FraudRead],
                ),
            ],
        }
    }
}

impl AuthConfig {
    /// The first configured token with `scope` (what a local client such as the demo
    /// sends), if any.
    pub fn token_with(&self, scope: Scope) -> Option<&Secret> {
        self.tokens
            .iter()
            .find(|t| t.scopes.contains(&scope) && !t.token.is_empty())
            .map(|t| &t.token)
    }

    /// Refuses to serve `section`'s API on `listening` (the bound address) while a
    /// compiled-in token would let callers in, unless that is a loopback address. Call it
    /// once the listener is bound.
    pub fn refuse_local_tokens(
        &self,
        section: &'static str,
        auth_enabled: bool,
        listening: SocketAddr,
    ) -> Result<(), ConfigError> {
        let local = self
            .tokens
            .iter()
            .any(|t| [LOCAL_DEV_TOKEN, LOCAL_ANALYST_TOKEN].contains(&t.token.expose()));
        refuse_local_secrets(
            section,
            listening,
            &[(
                "auth.tokens",
                "PRISM_AUTH__TOKENS='[{name=\"ops\", token=\"<token>\", scopes=[\"commands\"]}]'",
                auth_enabled && local,
            )],
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Run the outbox relay inside prism-command. Off only for maintenance (events are then
    /// stored but not published until a relay runs again).
    pub enabled: bool,
    /// How often the relay looks for events nobody published (crash recovery, other instances).
    pub sweep_interval_ms: u64,
    /// Most events published per sweep.
    pub batch_max_events: usize,
    /// How long a publish may wait for Kafka's acknowledgement before it is retried later.
    pub publish_timeout_ms: u64,
    /// librdkafka `linger.ms` for the relay's producer: latency versus batching.
    pub linger_ms: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sweep_interval_ms: 1_000,
            batch_max_events: 1_000,
            publish_timeout_ms: 30_000,
            linger_ms: 1,
        }
    }
}

/// The projector runtime's settings, shared by every projector binary (a projector's own
/// section may override them: [`Section::runtime`]).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Most records in one sink write (one transaction).
    pub batch_max_events: usize,
    /// Longest a batch waits to fill up after its first record, in milliseconds.
    pub batch_max_wait_ms: u64,
    /// Records buffered per partition before that partition is paused (backpressure).
    pub partition_buffer: usize,
    /// A batch the sink rejects is retried this many times before the rejected event goes to
    /// the dead-letter topic.
    pub poison_retries: u32,
    /// A version gap (an event more than one ahead of the stored version) is re-checked this
    /// many times before the event is dead-lettered and reported.
    pub gap_retries: u32,
    /// First back-off after a transient sink error; doubles up to `retry_backoff_max_ms`.
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// `/readyz` answers 503 while the lag of an assigned partition exceeds this many events.
    pub ready_max_lag: u64,
    /// How often consumer lag is measured (and the lag gauge updated), in milliseconds.
    pub lag_interval_ms: u64,
    /// Kafka `session.timeout.ms`: how soon a dead instance's partitions move elsewhere.
    pub session_timeout_ms: u64,
    /// Dead-letter topics are named `<topic>.<dlq_suffix>.<projector>`.
    pub dlq_suffix: String,
    /// Most accounts a partition worker remembers (handled versions, gap quarantine); past
    /// it the oldest are forgotten and re-read from the sink when next seen, so memory stays
    /// bounded however many accounts exist.
    pub worker_accounts_max: usize,
    /// Longest a rebalance waits for a partition's worker to finish its batch in hand, in
    /// milliseconds; a worker still busy then (a sink that hangs) is cancelled. Keeps the
    /// rebalance callback well inside Kafka's `max.poll.interval.ms`.
    pub rebalance_timeout_ms: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_max_events: 1_000,
            batch_max_wait_ms: 20,
            partition_buffer: 4_000,
            poison_retries: 3,
            gap_retries: 5,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 10_000,
            ready_max_lag: 1_000,
            lag_interval_ms: 2_000,
            session_timeout_ms: 10_000,
            dlq_suffix: "dlq".into(),
            worker_accounts_max: 100_000,
            rebalance_timeout_ms: 10_000,
        }
    }
}

#[cfg(test)]
// figment's `Jail` closures must return its (large) `figment::Error`.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;

    use super::*;

    /// Loads as a binary would, inside a `Jail` (its own cwd and environment).
    fn load_here() -> Result<Config, ConfigError> {
        Sources::from_env().load()
    }

    /// A projector crate's own section type, as `prism-search` has one.
    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Owned {
        listen: String,
        replicas: u32,
    }

    #[test]
    fn a_projector_section_is_parsed_by_its_owner_and_may_tune_its_runtime() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file(
                "config/prism.toml",
                "[projector]\nbatch_max_events = 700\n[search]\nlisten = \"127.0.0.1:9\"\n[search.projector]\nbatch_max_wait_ms = 250\n",
            )?;
            jail.set_env("PRISM_SEARCH__REPLICAS", "2");
            let c = load_here().map_err(|e| e.to_string())?;
            let owned: Owned = c.search.parse("search").map_err(|e| e.to_string())?;
            assert_eq!(
                owned,
                Owned {
                    listen: "127.0.0.1:9".into(),
                    replicas: 2
                }
            );
            let runtime = c
                .search
                .runtime("search", &c.projector)
                .map_err(|e| e.to_string())?;
            assert_eq!(runtime.batch_max_events, 700, "inherited from [projector]");
            assert_eq!(
                runtime.batch_max_wait_ms, 250,
                "overridden for search alone"
            );
            assert_eq!(c.projector.batch_max_wait_ms, 20, "others keep [projector]");
            let mut section = c.search.clone();
            section.set("replicas", 5_u32);
            let owned: Owned = section.parse("search").map_err(|e| e.to_string())?;
            assert_eq!((owned.listen.as_str(), owned.replicas), ("127.0.0.1:9", 5));
            Ok(())
        });
    }

    #[test]
    fn a_misspelt_key_in_a_projector_section_is_named() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file(
                "config/prism.toml",
                "[search]\nreplica = 1\n[search.projector]\nbatch_max = 1\n",
            )?;
            let c = load_here().map_err(|e| e.to_string())?;
            let err = c.search.parse::<Owned>("search").expect_err("misspelt key");
            assert!(err.to_string().contains("replica"), "{err}");
            let err = c
                .search
                .runtime("search", &c.projector)
                .expect_err("misspelt key");
            assert!(err.to_string().contains("batch_max"), "{err}");
            assert!(
                !format!("{:?}", c.search).contains('1'),
                "Debug shows keys only"
            );
            Ok(())
        });
    }

    #[test]
    fn defaults_point_at_the_local_stack() {
        Jail::expect_with(|_jail| {
            let c = load_here().map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.bootstrap_servers, "127.0.0.1:9092");
            assert_eq!(c.kafka.topic, "account-events");
            assert_eq!(c.kafka.topic_partitions, 12);
            assert_eq!(c.mysql.url.hosts(), "127.0.0.1:3306");
            assert_eq!(c.log.format, LogFormat::Auto);
            Ok(())
        });
    }

    #[test]
    fn file_then_profile_then_environment_win_in_that_order() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file(
                "config/prism.toml",
                "[kafka]\nbootstrap_servers = \"file:9092\"\ntopic = \"from-file\"\n[log]\nlevel = \"debug\"\n",
            )?;
            jail.create_file(
                "config/compose.toml",
                "[kafka]\nbootstrap_servers = \"kafka:9092\"\n",
            )?;
            jail.set_env("PRISM_PROFILE", "compose");
            jail.set_env("PRISM_LOG__LEVEL", "warn");
            let c = load_here().map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.bootstrap_servers, "kafka:9092");
            assert_eq!(c.kafka.topic, "from-file");
            assert_eq!(c.log.level, "warn");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_is_rejected_by_name() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file("config/prism.toml", "[kafka]\nbootstrap_server = \"x:1\"\n")?;
            let err = load_here().expect_err("a misspelt key must be rejected");
            assert!(err.to_string().contains("bootstrap_server"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_section_from_the_environment_is_rejected_by_name() {
        Jail::expect_with(|jail| {
            jail.set_env("PRISM_KAFAK__TOPIC", "x");
            let err = load_here().expect_err("a misspelt section must be rejected");
            assert!(err.to_string().contains("kafak"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn prism_variables_that_are_not_keys_are_ignored() {
        Jail::expect_with(|jail| {
            jail.set_env("PRISM_CACHE", "/somewhere");
            jail.set_env("PRISM_STATE", "/elsewhere");
            load_here().map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    #[test]
    fn a_missing_profile_file_is_an_error_naming_it() {
        Jail::expect_with(|jail| {
            jail.set_env("PRISM_PROFILE", "staging");
            let err = load_here().expect_err("a missing profile must be an error");
            assert!(err.to_string().contains("staging.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_explicit_missing_config_file_is_an_error() {
        Jail::expect_with(|jail| {
            jail.set_env("PRISM_CONFIG", "nowhere.toml");
            let err = load_here().expect_err("a missing file must be an error");
            assert!(err.to_string().contains("nowhere.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn kafka_pass_through_properties_are_flattened_and_masked() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file(
                "config/prism.toml",
                r#"
[kafka.client]
"security.protocol" = "SASL_SSL"
sasl.mechanism = "PLAIN"
"sasl.password" = "topsecret"
"linger.ms" = 5
"enable.idempotence" = true
"#,
            )?;
            jail.set_env("PRISM_KAFKA__CLIENT__SASL__USERNAME", "app");
            let c = load_here().map_err(|e| e.to_string())?;
            let client = &c.kafka.client;
            assert_eq!(client["security.protocol"], "SASL_SSL");
            assert_eq!(client["sasl.mechanism"], "PLAIN");
            assert_eq!(client["sasl.username"], "app");
            assert_eq!(client["sasl.password"], "topsecret");
            assert_eq!(client["linger.ms"], "5");
            assert_eq!(client["enable.idempotence"], "true");
            let shown = format!("{c:?}");
            assert!(!shown.contains("topsecret"), "{shown}");
            assert!(shown.contains("sasl.password"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn passwords_in_urls_and_secrets_never_show_in_debug() {
        Jail::expect_with(|jail| {
            jail.set_env("PRISM_MYSQL__URL", "mysql://u:pw-mysql@h:3306/d");
            jail.set_env("PRISM_ELASTICSEARCH__PASSWORD", "pw-es");
            let c = load_here().map_err(|e| e.to_string())?;
            assert_eq!(c.mysql.url.expose(), "mysql://u:pw-mysql@h:3306/d");
            assert_eq!(c.elasticsearch.password.expose(), "pw-es");
            let shown = format!("{c:?}");
            assert!(
                !shown.contains("pw-mysql") && !shown.contains("pw-es"),
                "{shown}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_shipped_files_are_valid() {
        // The checked-in profiles must load with no unknown key.
        Jail::expect_with(|_| {
            shipped_files_load();
            Ok(())
        });
    }

    fn shipped_files_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let base = root.join("config/prism.toml");
        let local = Sources {
            base: Some(base.clone()),
            profile: None,
        }
        .load();
        assert!(local.is_ok(), "config/prism.toml: {local:?}");
        let compose = Sources {
            base: Some(base),
            profile: Some("compose".into()),
        }
        .load();
        match compose {
            Ok(c) => assert_eq!(c.kafka.bootstrap_servers, "kafka:9092"),
            Err(e) => panic!("config/compose.toml: {e}"),
        }
    }
    #[test]
    fn the_local_callers_are_the_same_in_the_shipped_file_and_the_compiled_in_defaults() {
        Jail::expect_with(|_| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let shipped = Sources {
                base: Some(root.join("config/prism.toml")),
                profile: None,
            }
            .load()
            .map_err(|e| e.to_string())?;
            for auth in [shipped.auth, AuthConfig::default()] {
                let scopes = |name: &str| -> Vec<Scope> {
                    let mut scopes = auth
                        .tokens
                        .iter()
                        .find(|t| t.name == name)
                        .map(|t| t.scopes.clone())
                        .unwrap_or_default();
                    scopes.sort();
                    scopes
                };
                // The local token opens every API, the admin API included.
                assert_eq!(scopes("local"), Scope::ALL.to_vec());
                assert_eq!(
                    auth.token_with(Scope::Admin).map(Secret::expose),
                    Some(LOCAL_DEV_TOKEN)
                );
                // The analyst reads, and nothing else.
                assert_eq!(
                    scopes("local-analyst"),
                    [Scope::SearchRead, Scope::DashboardRead, Scope::FraudRead]
                );
            }
            Ok(())
        });
    }

    fn at(address: &str) -> SocketAddr {
        address.parse().expect("a socket address")
    }

    #[test]
    fn compiled_in_tokens_are_refused_off_loopback_naming_the_key() {
        // The projectors' own secrets (cursor keys) are checked by their own crates.
        let auth = AuthConfig::default();
        for loopback in [
            "127.0.0.1:8080",
            "127.9.9.9:1",
            "[::1]:8081",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(
                auth.refuse_local_tokens("command", true, at(loopback))
                    .is_ok(),
                "{loopback}"
            );
        }
        for exposed in [
            "0.0.0.0:8080",
            "[::]:8080",
            "10.1.2.3:8080",
            "[2001:db8::1]:80",
        ] {
            let err = auth
                .refuse_local_tokens("command", true, at(exposed))
                .expect_err("the local token off loopback");
            let shown = err.to_string();
            assert!(shown.contains("[command] auth.tokens"), "{shown}");
            assert!(shown.contains("PRISM_AUTH__TOKENS"), "{shown}");
            assert!(shown.contains(exposed), "{shown}");
        }
    }

    #[test]
    fn a_local_token_is_refused_among_others_and_unused_without_auth() {
        let exposed = at("0.0.0.0:8080");
        for local in [LOCAL_DEV_TOKEN, LOCAL_ANALYST_TOKEN] {
            // A local token among others is still refused: it would still be let in.
            let mixed = AuthConfig {
                tokens: vec![
                    TokenConfig::new("ops", "a-real-token", &Scope::ALL),
                    TokenConfig::new("local", local, &[Scope::SearchRead]),
                ],
            };
            assert!(mixed.refuse_local_tokens("search", true, exposed).is_err());
            // Without authentication no token is used.
            assert!(mixed.refuse_local_tokens("search", false, exposed).is_ok());
        }
        let own = AuthConfig {
            tokens: vec![TokenConfig::new("ops", "a-real-token", &Scope::ALL)],
        };
        assert!(own.refuse_local_tokens("command", true, exposed).is_ok());
    }

    #[test]
    fn tokens_and_their_scopes_can_come_from_the_environment() {
        Jail::expect_with(|jail| {
            jail.set_env(
                "PRISM_AUTH__TOKENS",
                r#"[{name="app", token="from-env-1", scopes=["commands"]}, {name="analyst", token="from-env-2", scopes=["search:read", "pii"]}]"#,
            );
            let c = load_here().map_err(|e| e.to_string())?;
            let shown: Vec<(&str, &str, &[Scope])> = c
                .auth
                .tokens
                .iter()
                .map(|t| (t.name.as_str(), t.token.expose(), t.scopes.as_slice()))
                .collect();
            assert_eq!(
                shown,
                [
                    ("app", "from-env-1", &[Scope::Commands][..]),
                    (
                        "analyst",
                        "from-env-2",
                        &[Scope::SearchRead, Scope::Pii][..]
                    ),
                ]
            );
            assert!(c
                .auth
                .refuse_local_tokens("command", true, at("0.0.0.0:8080"))
                .is_ok());
            Ok(())
        });
    }

    #[test]
    fn an_unknown_scope_is_a_configuration_error_naming_it() {
        Jail::expect_with(|jail| {
            jail.set_env(
                "PRISM_AUTH__TOKENS",
                r#"[{name="app", token="t", scopes=["ledger:write"]}]"#,
            );
            let err = load_here().expect_err("an unknown scope");
            assert!(err.to_string().contains("ledger:write"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_compose_profile_carries_its_own_secrets() {
        // docker-compose.yml listens on 0.0.0.0 and sets tokens and cursor key from its
        // environment; the shipped files alone must not be what it relies on.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let compose =
            std::fs::read_to_string(root.join("docker-compose.yml")).expect("docker-compose.yml");
        for key in ["PRISM_AUTH__TOKENS", "PRISM_LEDGER__CURSOR_SECRET"] {
            assert!(
                compose.contains(key),
                "docker-compose.yml does not set {key}"
            );
        }
        for local in [
            LOCAL_DEV_TOKEN,
            LOCAL_ANALYST_TOKEN,
            LOCAL_DEV_CURSOR_SECRET,
        ] {
            assert!(!compose.contains(local), "docker-compose.yml holds {local}");
        }
    }
}
