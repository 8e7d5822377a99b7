//! `prismctl status` (the binary) against the real stack: a Kafka topic, consumer group and
//! ledger control database of its own. The JSON must show the stored positions, the end
//! offsets, the lags and the group's committed offset; a ledger that never ran shows as
//! "not started"; an unreachable MySQL is named and exits 1.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use prism_ledger::store::Ledger;
use prism_platform::config::Config;
use prism_tests::{unique, up};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

fn isolated_config() -> Config {
    let mut config = prism_tests::config();
    config.kafka.topic = unique("prism-test-status");
    config.ledger.set("database", unique("prism_test_status"));
    config.ledger.set("group_id", unique("prism-test-status"));
    config
}

/// `config`'s `[ledger]` section, parsed as prism-ledger parses it.
fn ledger_config(config: &Config) -> prism_ledger::LedgerConfig {
    prism_ledger::LedgerConfig::from_config(config).expect("the test configuration's [ledger]")
}

fn prismctl(config: &Config, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new(env!("CARGO_BIN_EXE_prismctl"));
    command
        .args(args)
        .current_dir(&root)
        .env("PRISM_CONFIG", root.join("config/prism.toml"))
        .env_remove("PRISM_PROFILE")
        .env("PRISM_KAFKA__TOPIC", &config.kafka.topic)
        .env("PRISM_LEDGER__DATABASE", ledger_config(config).database)
        .env("PRISM_LEDGER__GROUP_ID", ledger_config(config).group_id);
    for (k, v) in envs {
        command.env(k, v);
    }
    up("prismctl", command.output())
}

fn json(output: &Output) -> Value {
    match serde_json::from_slice(&output.stdout) {
        Ok(v) => v,
        Err(e) => panic!(
            "status --json printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn partition(report: &Value, id: i64) -> &Value {
    report["projectors"][0]["partitions"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["partition"] == id))
        .unwrap_or_else(|| panic!("no partition {id} in {report:#}"))
}

fn admin(config: &Config) -> AdminClient<DefaultClientContext> {
    up(
        "kafka",
        prism_platform::clients::kafka_client_config(&config.kafka).create(),
    )
}

/// A topic of 3 partitions with 5, 2 and 0 records.
async fn topic_with_records(config: &Config) {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let topic = NewTopic::new(&config.kafka.topic, 3, TopicReplication::Fixed(1));
    let results = up(
        "kafka",
        admin(config).create_topics(&[topic], &options).await,
    );
    for result in results {
        if let Err((name, e)) = result {
            panic!("creating topic {name}: {e}");
        }
    }
    let producer: FutureProducer = up(
        "kafka",
        prism_platform::clients::kafka_client_config(&config.kafka).create(),
    );
    for (partition, count) in [(0, 5), (1, 2)] {
        for i in 0..count {
            let payload = format!("record {i}");
            let record = FutureRecord::to(&config.kafka.topic)
                .partition(partition)
                .key("account")
                .payload(&payload);
            if let Err((e, _)) = producer.send(record, Duration::from_secs(10)).await {
                panic!("producing to partition {partition}: {e}");
            }
        }
    }
}

/// Commits offset 2 on partition 0 for the projector's group (without joining it).
fn commit_group_offset(config: &Config) {
    let mut client = prism_platform::clients::kafka_client_config(&config.kafka);
    client
        .set("group.id", &ledger_config(config).group_id)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = up("kafka", client.create());
    let mut tpl = TopicPartitionList::new();
    up(
        "kafka",
        tpl.add_partition_offset(&config.kafka.topic, 0, Offset::Offset(2)),
    );
    up("kafka", consumer.commit(&tpl, CommitMode::Sync));
}

async fn scenario(config: &Config, ledger: &Ledger) {
    topic_with_records(config).await;
    commit_group_offset(config);
    let generation = up("mysql", ledger.live().await);
    // Partition 0: records 0 and 1 handled; partition 1 never written; partition 2 empty.
    up(
        "mysql",
        sqlx::query(
            "INSERT INTO projector_partitions (partition_id, kafka_offset, event_time, writer, \
             updated_at, last_error, last_error_at) VALUES (0, 1, ?, 'prism-ledger/test', ?, \
             'sink unavailable: test', ?)",
        )
        .bind(Utc::now())
        .bind(Utc::now())
        .bind(Utc::now())
        .execute(&generation.pool)
        .await,
    );

    let output = prismctl(config, &[], &["status", "--json"]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0), "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["topic_partitions"], serde_json::json!([0, 1, 2]));
    let ledger_status = &report["projectors"][0];
    assert_eq!(ledger_status["name"], "ledger");
    assert_eq!(ledger_status["state"], "live", "{report:#}");
    assert_eq!(ledger_status["live_generation"], generation.number);
    assert_eq!(ledger_status["lag_events"], 5, "{report:#}");

    let p0 = partition(&report, 0);
    assert_eq!(p0["stored_offset"], 1, "{report:#}");
    assert_eq!(p0["end_offset"], 5);
    assert_eq!(p0["lag_events"], 3);
    let lag_seconds = p0["lag_seconds"].as_f64();
    assert!(
        lag_seconds.is_some_and(|s| (0.0..120.0).contains(&s)),
        "lag in seconds of partition 0: {report:#}"
    );
    assert_eq!(p0["committed_offset"], 2);
    assert_eq!(p0["writer"], "prism-ledger/test");
    assert_eq!(p0["last_error"], "sink unavailable: test");
    assert!(p0["last_error_at"].is_string());

    let p1 = partition(&report, 1);
    assert_eq!(p1["stored_offset"], Value::Null);
    assert_eq!(p1["end_offset"], 2);
    assert_eq!(p1["lag_events"], 2);
    assert!(p1["lag_seconds"].is_number(), "{report:#}");
    assert_eq!(p1["committed_offset"], Value::Null);

    let p2 = partition(&report, 2);
    assert_eq!(p2["end_offset"], 0);
    assert_eq!(p2["lag_events"], 0);
    assert_eq!(p2["lag_seconds"], 0.0);

    // The table names the live generation.
    let output = prismctl(config, &[], &["status"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("live generation {}", generation.number)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_stored_offsets_end_offsets_and_lag() {
    let config = isolated_config();
    let ledger = up(
        "mysql",
        Ledger::open(&config.mysql, &ledger_config(&config)).await,
    );
    let outcome = AssertUnwindSafe(scenario(&config, &ledger))
        .catch_unwind()
        .await;

    up("mysql", ledger.drop_everything().await);
    let admin = admin(&config);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = admin.delete_topics(&[&config.kafka.topic], &options).await;
    let _ = admin
        .delete_groups(&[&ledger_config(&config).group_id], &options)
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_that_never_ran_is_not_started_and_stays_uncreated() {
    let config = isolated_config();
    let output = prismctl(&config, &[], &["status", "--json"]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0), "{report:#}");
    assert_eq!(
        report["projectors"][0]["state"], "not_started",
        "{report:#}"
    );
    // The topic does not exist either: Kafka answered, so that is not a failure.
    assert_eq!(report["topic_exists"], false, "{report:#}");
    let mysql = up("mysql", prism_platform::clients::mysql(&config.mysql).await);
    let found: Option<String> = up(
        "mysql",
        sqlx::query_scalar(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
        )
        .bind(&ledger_config(&config).database)
        .fetch_optional(&mysql)
        .await,
    );
    assert_eq!(found, None, "status created the ledger's control database");
    mysql.close().await;
}

#[test]
fn an_unreachable_mysql_is_named_and_exits_1() {
    let config = isolated_config();
    let output = prismctl(
        &config,
        &[
            ("PRISM_MYSQL__URL", "mysql://prism:prism@127.0.0.1:1/prism"),
            ("PRISM_MYSQL__CONNECT_TIMEOUT_MS", "1000"),
        ],
        &["status", "--json"],
    );
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    assert_eq!(report["errors"][0]["service"], "mysql", "{report:#}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mysql is not answering"), "{stderr}");
    assert!(!stderr.contains("prism:prism"), "password leaked: {stderr}");
}

#[test]
fn watch_zero_is_a_bad_invocation() {
    let config = isolated_config();
    let output = prismctl(&config, &[], &["status", "--watch", "0"]);
    assert_eq!(output.status.code(), Some(2));
}
