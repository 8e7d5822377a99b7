//! `stack-check`: proves that `dev/stack down`/`up` keeps every service's data and that
//! `dev/stack reset` drops it. Used by `dev/test` around a restart of the stack:
//!
//! ```text
//! token=$(stack-check write)     # a marker in every service; prints a token
//! dev/stack down && dev/stack up
//! stack-check present "$token"   # every marker is still there
//! dev/stack reset && dev/stack up
//! stack-check absent "$token"    # every marker is gone
//! ```
//! The markers use fixed names (`prism_stack_check`, …) so a later process can find them.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use mongodb::bson::{doc, Document};
use prism_platform::clients;
use prism_platform::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use redis::AsyncCommands;
use serde_json::{json, Value};

const NAME: &str = "prism_stack_check";
const TOPIC: &str = "prism-stack-check";
const INDEX: &str = "prism-stack-check";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = prism_tests::config();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["write"] => write(&config).await.map(|token| println!("{token}")),
        ["present", token] => check(&config, token, true).await,
        ["absent", token] => check(&config, token, false).await,
        _ => {
            eprintln!("usage: stack-check write | present TOKEN | absent TOKEN");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stack-check: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes one marker per service; returns `<marker>@<unix seconds>`.
async fn write(config: &Config) -> anyhow::Result<String> {
    let marker = prism_tests::unique("marker");

    // Kafka: a topic with one message.
    let base = clients::kafka_client_config(&config.kafka);
    let admin: AdminClient<DefaultClientContext> = base.create().context("kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = admin.delete_topics(&[TOPIC], &options).await;
    for attempt in 0.. {
        let created = admin
            .create_topics(
                &[NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1))],
                &options,
            )
            .await
            .context("creating the kafka marker topic")?;
        match created.first() {
            Some(Ok(_)) => break,
            // A topic being deleted cannot be created again at once.
            Some(Err(_)) if attempt < 20 => tokio::time::sleep(Duration::from_millis(500)).await,
            Some(Err((_, code))) => bail!("creating {TOPIC}: {code}"),
            None => bail!("creating {TOPIC}: no answer"),
        }
    }
    let producer: FutureProducer = base.create().context("kafka producer")?;
    producer
        .send(
            FutureRecord::to(TOPIC).key("marker").payload(&marker),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .context("producing the kafka marker")?;

    // MongoDB.
    let mongo = clients::mongodb(&config.mongodb, "stack-check").await?;
    let markers = mongo.database(NAME).collection::<Document>("markers");
    markers.drop().await.context("mongodb drop")?;
    markers
        .insert_one(doc! { "_id": "marker", "token": &marker })
        .await
        .context("mongodb insert")?;

    // MySQL.
    let mysql = clients::mysql(&config.mysql).await?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {NAME}"),
        format!("CREATE DATABASE {NAME}"),
        format!("CREATE TABLE {NAME}.markers (token VARCHAR(64) NOT NULL)"),
    ] {
        sqlx::query(&sql).execute(&mysql).await.context("mysql")?;
    }
    sqlx::query(&format!("INSERT INTO {NAME}.markers VALUES (?)"))
        .bind(&marker)
        .execute(&mysql)
        .await
        .context("mysql insert")?;

    // PostgreSQL.
    let pg = clients::postgres(&config.postgres).await?;
    for sql in [
        format!("DROP SCHEMA IF EXISTS {NAME} CASCADE"),
        format!("CREATE SCHEMA {NAME}"),
        format!("CREATE TABLE {NAME}.markers (token TEXT NOT NULL)"),
    ] {
        sqlx::query(&sql).execute(&pg).await.context("postgres")?;
    }
    sqlx::query(&format!("INSERT INTO {NAME}.markers VALUES ($1)"))
        .bind(&marker)
        .execute(&pg)
        .await
        .context("postgres insert")?;

    // Elasticsearch.
    let es = clients::elasticsearch(&config.elasticsearch)?;
    es.index(elasticsearch::IndexParts::IndexId(INDEX, "marker"))
        .body(json!({ "token": marker }))
        .refresh(elasticsearch::params::Refresh::True)
        .send()
        .await
        .context("elasticsearch index")?
        .error_for_status_code()
        .context("elasticsearch index")?;

    // Redis.
    let mut redis = clients::redis_connection(&config.redis).await?;
    let () = redis
        .set(format!("{NAME}:marker"), &marker)
        .await
        .context("redis set")?;

    // Prometheus: remember a moment at which it has samples.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock")?
        .as_secs();
    for _ in 0..60 {
        if prometheus_has_samples_at(config, now).await? {
            return Ok(format!("{marker}@{now}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("prometheus has no sample of its own `up` series at {now}")
}

async fn prometheus_has_samples_at(config: &Config, at: u64) -> anyhow::Result<bool> {
    let url = format!(
        "{}/api/v1/query",
        config.prometheus.url.expose().trim_end_matches('/')
    );
    let body: Value = reqwest::Client::new()
        .get(url)
        .query(&[
            ("query", "up{job=\"prometheus\"}"),
            ("time", &at.to_string()),
        ])
        .send()
        .await
        .context("prometheus query")?
        .error_for_status()
        .context("prometheus query")?
        .json()
        .await
        .context("prometheus answer")?;
    Ok(body["data"]["result"]
        .as_array()
        .is_some_and(|r| !r.is_empty()))
}

/// Checks every marker is there (`present`) or gone (`absent`); reports all services.
async fn check(config: &Config, token: &str, present: bool) -> anyhow::Result<()> {
    let (marker, at) = token.split_once('@').context("token is MARKER@SECONDS")?;
    let at: u64 = at.parse().context("token is MARKER@SECONDS")?;
    let found = [
        ("kafka", kafka_marker(config).await),
        ("mongodb", mongodb_marker(config).await),
        ("mysql", mysql_marker(config).await),
        ("postgres", postgres_marker(config).await),
        ("elasticsearch", elasticsearch_marker(config).await),
        ("redis", redis_marker(config).await),
        (
            "prometheus",
            prometheus_has_samples_at(config, at)
                .await
                .map(|has| has.then(|| marker.to_owned())),
        ),
    ];
    let mut wrong = Vec::new();
    for (service, result) in found {
        let state = match result {
            Ok(Some(value)) if value == marker => "present",
            Ok(Some(_)) => "different",
            Ok(None) => "absent",
            Err(e) => {
                wrong.push(format!("{service}: {e:#}"));
                continue;
            }
        };
        let expected = if present { "present" } else { "absent" };
        println!("{service:<14} {state}");
        if state != expected {
            wrong.push(format!("{service}: marker {state}, expected {expected}"));
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}

async fn kafka_marker(config: &Config) -> anyhow::Result<Option<String>> {
    let consumer: BaseConsumer = clients::kafka_client_config(&config.kafka)
        .set("group.id", "prism-stack-check")
        .set("enable.auto.commit", "false")
        .create()
        .context("kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
        .context("kafka metadata")?;
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.name() == TOPIC && t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .context("kafka assignment")?;
    consumer.assign(&assignment).context("kafka assign")?;
    for _ in 0..20 {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.context("kafka poll")?;
            return Ok(message
                .payload()
                .map(|p| String::from_utf8_lossy(p).into_owned()));
        }
    }
    Ok(None)
}

async fn mongodb_marker(config: &Config) -> anyhow::Result<Option<String>> {
    let mongo = clients::mongodb(&config.mongodb, "stack-check").await?;
    let doc = mongo
        .database(NAME)
        .collection::<Document>("markers")
        .find_one(doc! { "_id": "marker" })
        .await
        .context("mongodb find")?;
    Ok(doc.and_then(|d| d.get_str("token").ok().map(str::to_owned)))
}

async fn mysql_marker(config: &Config) -> anyhow::Result<Option<String>> {
    let mysql = clients::mysql(&config.mysql).await?;
    let exists: Option<String> = sqlx::query_scalar(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_name = 'markers'",
    )
    .bind(NAME)
    .fetch_optional(&mysql)
    .await
    .context("mysql")?;
    if exists.is_none() {
        return Ok(None);
    }
    sqlx::query_scalar(&format!("SELECT token FROM {NAME}.markers"))
        .fetch_optional(&mysql)
        .await
        .context("mysql select")
}

async fn postgres_marker(config: &Config) -> anyhow::Result<Option<String>> {
    let pg = clients::postgres(&config.postgres).await?;
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::TEXT")
        .bind(format!("{NAME}.markers"))
        .fetch_one(&pg)
        .await
        .context("postgres")?;
    if exists.is_none() {
        return Ok(None);
    }
    sqlx::query_scalar(&format!("SELECT token FROM {NAME}.markers"))
        .fetch_optional(&pg)
        .await
        .context("postgres select")
}

async fn elasticsearch_marker(config: &Config) -> anyhow::Result<Option<String>> {
    let es = clients::elasticsearch(&config.elasticsearch)?;
    let response = es
        .get(elasticsearch::GetParts::IndexId(INDEX, "marker"))
        .send()
        .await
        .context("elasticsearch get")?;
    if response.status_code().as_u16() == 404 {
        return Ok(None);
    }
    let body: Value = response
        .error_for_status_code()
        .context("elasticsearch get")?
        .json()
        .await
        .context("elasticsearch get")?;
    Ok(body["_source"]["token"].as_str().map(str::to_owned))
}

async fn redis_marker(config: &Config) -> anyhow::Result<Option<String>> {
    let mut redis = clients::redis_connection(&config.redis).await?;
    redis
        .get(format!("{NAME}:marker"))
        .await
        .context("redis get")
}
