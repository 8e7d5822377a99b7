//! The dashboard sink passes the projector kit's sink contract suite, on the real Redis and
//! Kafka of the local stack. Every copy is a new copy (`create_next`) in a namespace of the
//! test's own, deleted at the end.
//!
//! The suite's snapshot is every key of the copy but the positions, by type: hashes and
//! sorted sets as maps, HyperLogLogs as their count, the feed as its entries' fields in
//! stream order (without the stream ids, which are times of the write).

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt as _;
use prism_dashboard::copies::{self, DashboardCopies, DashboardCopy};
use prism_dashboard::model::KeyKind;
use prism_dashboard::DashboardConfig;
use prism_projector::copies::Copies as _;
use prism_projector::testing::contract::{self, ContractSubject};
use prism_projector::Sink;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};

struct DashboardSubject {
    copies: DashboardCopies,
}

async fn keys_matching(conn: &mut ConnectionManager, pattern: &str) -> Vec<String> {
    let mut keys = prism_tests::up("redis", copies::keys_matching(conn, pattern).await);
    keys.sort();
    keys
}

#[async_trait]
impl ContractSubject for DashboardSubject {
    type Copy = DashboardCopy;

    async fn fresh(&self) -> DashboardCopy {
        prism_tests::up("redis", self.copies.create_next().await)
    }

    fn sink(&self, copy: &DashboardCopy) -> Arc<dyn Sink> {
        Arc::new(copy.sink())
    }

    async fn snapshot(&self, copy: &DashboardCopy) -> Value {
        let mut conn = copy.conn.clone();
        let mut model = BTreeMap::new();
        for key in keys_matching(&mut conn, &format!("{}*", copy.keys.prefix())).await {
            let Some(kind) = copy.keys.parse(&key) else {
                continue;
            };
            let name = key.trim_start_matches(copy.keys.prefix()).to_owned();
            let value = match kind {
                KeyKind::Position(_) => continue,
                KeyKind::Counters(..) | KeyKind::Status | KeyKind::Account(_) => {
                    let map: BTreeMap<String, String> = prism_tests::up(
                        "redis",
                        redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await,
                    );
                    json!(map)
                }
                KeyKind::Top(..) => {
                    let members: Vec<(String, f64)> = prism_tests::up(
                        "redis",
                        redis::cmd("ZRANGE")
                            .arg(&key)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES")
                            .query_async(&mut conn)
                            .await,
                    );
                    json!(members)
                }
                KeyKind::Distinct(..) => {
                    let n: i64 = prism_tests::up(
                        "redis",
                        redis::cmd("PFCOUNT").arg(&key).query_async(&mut conn).await,
                    );
                    json!(n)
                }
                KeyKind::Feed => {
                    let entries: Vec<(String, BTreeMap<String, String>)> = prism_tests::up(
                        "redis",
                        redis::cmd("XRANGE")
                            .arg(&key)
                            .arg("-")
                            .arg("+")
                            .query_async(&mut conn)
                            .await,
                    );
                    json!(entries.into_iter().map(|(_, f)| f).collect::<Vec<_>>())
                }
            };
            model.insert(name, value);
        }
        assert!(
            model.is_empty() || model.keys().any(|k| k.starts_with("m:")),
            "the snapshot holds counters: {model:?}"
        );
        json!(model)
    }
}

/// Runs `body` with a dashboard namespace of its own, then deletes every key of it.
async fn with_subject<F, Fut>(body: F)
where
    F: FnOnce(DashboardSubject) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = prism_tests::config();
    let dashboard = DashboardConfig {
        namespace: format!("prism-test:{}", prism_tests::unique("contract")),
        // The suite's events are of a fixed past date: keep their buckets (~100 years) so
        // the checks see every counter, not only what does not expire.
        retention_hours: 876_000,
        ..DashboardConfig::default()
    };
    let copies = prism_tests::up("redis", copies::connect(&config.redis, &dashboard).await);
    let outcome = AssertUnwindSafe(body(DashboardSubject {
        copies: copies.clone(),
    }))
    .catch_unwind()
    .await;
    let mut conn = copies.connection();
    let keys = keys_matching(&mut conn, &format!("{}:*", dashboard.namespace)).await;
    if !keys.is_empty() {
        let _: () = prism_tests::up(
            "redis",
            redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await,
        );
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_sink_passes_the_sink_checks() {
    with_subject(|subject| async move { contract::sink_checks(&subject).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_sink_passes_the_kafka_gap_check() {
    with_subject(|subject| async move { contract::kafka_gap_is_dead_lettered(&subject).await })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_sink_passes_the_kafka_poison_check() {
    with_subject(|subject| async move {
        contract::kafka_poison_is_dead_lettered_before_the_position_moves(&subject).await
    })
    .await;
}
