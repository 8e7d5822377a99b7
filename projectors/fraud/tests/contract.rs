//! The fraud sink passes the projector kit's sink contract suite, on the real Redis and
//! Kafka of the local stack, with its offline store in a scratch directory. Every copy is a
//! new copy (`create_next`) in a namespace of the test's own, deleted at the end.
//!
//! The suite's snapshot is both stores: every account's hash (its version and its feature
//! state), and every offline row and label as a reader that drops duplicates by event id
//! sees them (a replay may write a row again, always identical: `read_table` fails if
//! not). Where a row was read (`kafka_partition`, `kafka_offset`) is left out: the suite
//! compares a copy fed from Kafka with one fed without positions, whose rows have none.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt as _;
use prism_fraud::config::FraudConfig;
use prism_fraud::copies::{self, FraudCopies, FraudCopy};
use prism_fraud::offline::Table;
use prism_fraud::rows::read_table;
use prism_fraud::sink::decode_state;
use prism_projector::checkpoint::redis::keys_matching;
use prism_projector::copies::Copies as _;
use prism_projector::testing::contract::{self, ContractSubject};
use prism_projector::Sink;
use serde_json::{json, Value};

struct FraudSubject {
    copies: FraudCopies,
}

#[async_trait]
impl ContractSubject for FraudSubject {
    type Copy = FraudCopy;

    async fn fresh(&self) -> FraudCopy {
        prism_tests::up("redis", self.copies.create_next().await)
    }

    fn sink(&self, copy: &FraudCopy) -> Arc<dyn Sink> {
        Arc::new(copy.sink())
    }

    async fn snapshot(&self, copy: &FraudCopy) -> Value {
        let mut conn = copy.conn.clone();
        let prefix = copy.keys.prefix().to_owned();
        let mut keys = prism_tests::up(
            "redis",
            keys_matching(&mut conn, &format!("{prefix}a:*")).await,
        );
        keys.sort();
        let mut accounts = BTreeMap::new();
        for key in keys {
            let (version, state): (Option<u64>, Option<Vec<u8>>) = prism_tests::up(
                "redis",
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("v")
                    .arg("s")
                    .query_async(&mut conn)
                    .await,
            );
            let state = state
                .filter(|s| !s.is_empty())
                .map(|s| decode_state(&s).expect("a stored state decodes"));
            accounts.insert(
                key.trim_start_matches(&prefix).to_owned(),
                json!({ "v": version, "s": serde_json::to_value(&state).expect("json") }),
            );
        }
        let mut rows = read_table(&copy.offline, Table::Rows).expect("the rows read");
        for row in rows.values_mut() {
            if let Some(row) = row.as_object_mut() {
                row.remove("kafka_partition");
                row.remove("kafka_offset");
            }
        }
        let labels = read_table(&copy.offline, Table::Labels).expect("the labels read");
        json!({ "accounts": accounts, "rows": rows, "labels": labels })
    }
}

/// Runs `body` with a namespace and an offline directory of its own, then deletes both.
async fn with_subject<F, Fut>(body: F)
where
    F: FnOnce(FraudSubject) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = prism_tests::config();
    let unique = prism_tests::unique("contract");
    let fraud = FraudConfig {
        namespace: format!("prism-test:{unique}"),
        offline_dir: std::env::temp_dir().join(format!("prism-fraud-{unique}")),
        ..FraudConfig::default()
    };
    let copies = prism_tests::up("redis", copies::connect(&config.redis, &fraud).await);
    let outcome = AssertUnwindSafe(body(FraudSubject {
        copies: copies.clone(),
    }))
    .catch_unwind()
    .await;
    let dropped = copies.drop_everything().await;
    let _ = std::fs::remove_dir_all(&fraud.offline_dir);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    prism_tests::up("redis", dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fraud_sink_passes_the_sink_checks() {
    with_subject(|subject| async move { contract::sink_checks(&subject).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fraud_sink_passes_the_kafka_gap_check() {
    with_subject(|subject| async move { contract::kafka_gap_is_dead_lettered(&subject).await })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fraud_sink_passes_the_kafka_poison_check() {
    with_subject(|subject| async move {
        contract::kafka_poison_is_dead_lettered_before_the_position_moves(&subject).await
    })
    .await;
}
