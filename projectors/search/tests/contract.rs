//! The search sink passes the projector kit's sink contract suite, on the real OpenSearch
//! and Kafka of the local stack. Every copy is a new copy (`create_next`) of a search model
//! of the test's own (its own index prefix), dropped with it at the end.
//!
//! The suite's transient-outage check is not run here: an Elasticsearch-API engine has no
//! per-index way to answer "unavailable" (closing or blocking an index answers 4xx, which
//! is `Permanent` by design); the engine down for 30 s is `prismctl/tests/search.rs`'s.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use elasticsearch::indices::IndicesRefreshParts;
use elasticsearch::SearchParts;
use futures::FutureExt as _;
use prism_projector::checkpoint::Mode;
use prism_projector::testing::contract::{self, ContractSubject};
use prism_projector::Sink;
use prism_search::copies::{SearchCopies, SearchCopy};
use prism_search::sink::EsSink;
use prism_search::SearchConfig;
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Fresh copies of the search model: new copies under this test's own prefix.
struct SearchSubject {
    copies: SearchCopies,
}

/// Every document of `index`, by id (the suite's sets are small).
async fn documents(copy: &SearchCopy, index: &str) -> Map<String, Value> {
    let response = prism_tests::up(
        "elasticsearch",
        copy.client
            .search(SearchParts::Index(&[index]))
            .body(json!({ "size": 10_000, "query": { "match_all": {} } }))
            .send()
            .await,
    );
    let body: Value = prism_tests::up("elasticsearch", response.json().await);
    let mut out = Map::new();
    for hit in body["hits"]["hits"].as_array().cloned().unwrap_or_default() {
        let id = hit["_id"].as_str().unwrap_or_default().to_owned();
        out.insert(id, hit["_source"].clone());
    }
    out
}

#[async_trait]
impl ContractSubject for SearchSubject {
    type Copy = SearchCopy;

    async fn fresh(&self) -> SearchCopy {
        prism_tests::up("elasticsearch", self.copies.create_next().await)
    }

    fn mode(&self) -> Mode {
        Mode::IdempotentByVersion
    }

    fn sink(&self, copy: &SearchCopy) -> Arc<dyn Sink> {
        Arc::new(EsSink::new(copy.clone()))
    }

    /// Both indices (refreshed first: a search sees only refreshed documents) and the
    /// handled version of every account the copy knows, as the sink reports them.
    async fn snapshot(&self, copy: &SearchCopy) -> Value {
        let indices = [
            copy.transactions_index.as_str(),
            copy.accounts_index.as_str(),
            copy.checkpoints_index.as_str(),
        ];
        prism_tests::up(
            "elasticsearch",
            copy.client
                .indices()
                .refresh(IndicesRefreshParts::Index(&indices))
                .send()
                .await,
        );
        let transactions = documents(copy, &copy.transactions_index).await;
        let accounts = documents(copy, &copy.accounts_index).await;
        let ids: Vec<Uuid> = accounts
            .keys()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        let versions = prism_tests::up(
            "elasticsearch",
            EsSink::new(copy.clone())
                .versions(&ids)
                .await
                .map_err(|e| e.to_string()),
        );
        let versions: std::collections::BTreeMap<String, u64> = versions
            .into_iter()
            .map(|(id, v)| (id.to_string(), v))
            .collect();
        json!({
            "transactions": transactions,
            "accounts": accounts,
            "versions": versions,
        })
    }
}

/// Runs `body` with a search model of its own, then drops every index it made.
async fn with_subject<F, Fut>(body: F)
where
    F: FnOnce(SearchSubject) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = prism_tests::config();
    let search = SearchConfig {
        index_prefix: prism_tests::unique("prism-test-contract").replace('_', "-"),
        ..SearchConfig::default()
    };
    let copies = prism_tests::up(
        "elasticsearch",
        SearchCopies::connect(&config.elasticsearch, &search).await,
    );
    let outcome = AssertUnwindSafe(body(SearchSubject {
        copies: copies.clone(),
    }))
    .catch_unwind()
    .await;
    let dropped = copies.drop_everything().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    if let Err(e) = dropped {
        panic!("dropping the test indices: {e:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_sink_passes_the_sink_checks() {
    with_subject(|subject| async move { contract::sink_checks(&subject).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_sink_passes_the_kafka_gap_check() {
    with_subject(|subject| async move { contract::kafka_gap_is_dead_lettered(&subject).await })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_sink_passes_the_kafka_poison_check() {
    with_subject(|subject| async move {
        contract::kafka_poison_is_dead_lettered_before_the_position_moves(&subject).await
    })
    .await;
}
