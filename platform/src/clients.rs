//! Builds each backing service's client from its configuration section.
//!
//! One function per service, so every binary (and `prismctl doctor`) connects the same
//! way, with the same timeouts and credentials handling. Nothing here logs a password:
//! errors name the service and its host list only.

use std::time::Duration;

use elasticsearch::auth::Credentials;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::Elasticsearch;
use rdkafka::ClientConfig;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::{
    ElasticsearchConfig, KafkaConfig, MongoConfig, MysqlConfig, PostgresConfig, RedisConfig,
};

/// A client could not be built or could not connect.
#[derive(Debug, thiserror::Error)]
#[error("connecting to {service} at {address}: {source}")]
pub struct ConnectError {
    pub service: &'static str,
    /// Host list only, never credentials.
    pub address: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl ConnectError {
    fn new(
        service: &'static str,
        address: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            service,
            address: address.into(),
            source: source.into(),
        }
    }
}

/// librdkafka settings: the bootstrap servers, then the pass-through table as it is.
pub fn kafka_client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &cfg.bootstrap_servers);
    client.set("socket.timeout.ms", cfg.request_timeout_ms.to_string());
    for (key, value) in &cfg.client {
        client.set(key, value);
    }
    client
}

/// Creates the topic `name` with `partitions` partitions (and the configured replication
/// factor) unless it exists. Returns whether it was created.
pub async fn ensure_topic(cfg: &KafkaConfig, name: &str, partitions: i32) -> anyhow::Result<bool> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::error::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> = kafka_client_config(cfg).create()?;
    let topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(cfg.topic_replication_factor),
    );
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_millis(cfg.request_timeout_ms)))
        .request_timeout(Some(Duration::from_millis(cfg.request_timeout_ms)));
    for result in admin.create_topics(&[topic], &options).await? {
        match result {
            Ok(created) => {
                tracing::info!(topic = %created, partitions, "created topic");
                return Ok(true);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(false)
}

/// A MongoDB client (connections are made on first use; server selection is bounded).
pub async fn mongodb(cfg: &MongoConfig, app_name: &str) -> Result<mongodb::Client, ConnectError> {
    let err = |e: mongodb::error::Error| ConnectError::new("mongodb", cfg.uri.hosts(), e);
    let mut options = mongodb::options::ClientOptions::parse(cfg.uri.expose())
        .await
        .map_err(err)?;
    let timeout = Duration::from_millis(cfg.connect_timeout_ms);
    options.app_name = Some(app_name.to_owned());
    options.connect_timeout = Some(timeout);
    options.server_selection_timeout = Some(timeout);
    mongodb::Client::with_options(options).map_err(err)
}

/// A MySQL pool with one connection open, so a bad address fails here.
pub async fn mysql(cfg: &MysqlConfig) -> Result<MySqlPool, ConnectError> {
    MySqlPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .connect(cfg.url.expose())
        .await
        .map_err(|e| ConnectError::new("mysql", cfg.url.hosts(), e))
}

/// A PostgreSQL pool with one connection open, so a bad address fails here.
pub async fn postgres(cfg: &PostgresConfig) -> Result<PgPool, ConnectError> {
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .connect(cfg.url.expose())
        .await
        .map_err(|e| ConnectError::new("postgres", cfg.url.hosts(), e))
}

/// An Elasticsearch-API client for one node (works with Elasticsearch 8 and OpenSearch 2).
pub fn elasticsearch(cfg: &ElasticsearchConfig) -> Result<Elasticsearch, ConnectError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| {
        ConnectError::new("elasticsearch", cfg.url.hosts(), e)
    };
    let url = url::Url::parse(cfg.url.expose()).map_err(|e| err(e.into()))?;
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
        .timeout(Duration::from_millis(cfg.request_timeout_ms))
        .enable_meta_header(false);
    if !cfg.username.is_empty() {
        builder = builder.auth(Credentials::Basic(
            cfg.username.clone(),
            cfg.password.expose().to_owned(),
        ));
    }
    let transport = builder.build().map_err(|e| err(e.into()))?;
    Ok(Elasticsearch::new(transport))
}

/// A Redis client (connections are made by the caller, e.g. a connection manager).
pub fn redis(cfg: &RedisConfig) -> Result<redis::Client, ConnectError> {
    redis::Client::open(cfg.url.expose())
        .map_err(|e| ConnectError::new("redis", cfg.url.hosts(), e))
}

/// A multiplexed Redis connection, with the configured connect timeout.
pub async fn redis_connection(
    cfg: &RedisConfig,
) -> Result<redis::aio::MultiplexedConnection, ConnectError> {
    let client = redis(cfg)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .set_response_timeout(Duration::from_millis(cfg.connect_timeout_ms));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| ConnectError::new("redis", cfg.url.hosts(), e))
}
