//! The Elasticsearch-API engine: an index with analysers, documents, full-text search.

use elasticsearch::indices::{IndicesCreateParts, IndicesDeleteParts};
use elasticsearch::params::Refresh;
use elasticsearch::{Elasticsearch, IndexParts, SearchParts};
use prism_platform::clients;
use prism_tests::{config, unique, up};
use serde_json::{json, Value};

async fn ok_json(
    service_call: Result<elasticsearch::http::response::Response, elasticsearch::Error>,
) -> Value {
    let response = up("elasticsearch", service_call);
    let status = response.status_code();
    let body: Value = up("elasticsearch", response.json().await);
    assert!(status.is_success(), "HTTP {status}: {body}");
    body
}

async fn search_ids(client: &Elasticsearch, index: &str, query: Value) -> Vec<String> {
    let body = ok_json(
        client
            .search(SearchParts::Index(&[index]))
            .body(json!({ "query": query }))
            .send()
            .await,
    )
    .await;
    let mut ids: Vec<String> = body["hits"]["hits"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .filter_map(|h| h["_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test]
async fn documents_are_found_by_full_text_search() {
    let cfg = config();
    let client = up("elasticsearch", clients::elasticsearch(&cfg.elasticsearch));
    let index = unique("prism-test-search");

    ok_json(
        client
            .indices()
            .create(IndicesCreateParts::Index(&index))
            .body(json!({
                "settings": { "number_of_shards": 1 },
                "mappings": { "properties": {
                    "holder": { "type": "text" },
                    "description": { "type": "text", "analyzer": "english" },
                    "country": { "type": "keyword" },
                    "amount_minor": { "type": "long" }
                }}
            }))
            .send()
            .await,
    )
    .await;

    let docs = [
        (
            "e-1",
            json!({ "holder": "Ada Lovelace", "description": "Paid invoices for coffee beans", "country": "GB", "amount_minor": 1250 }),
        ),
        (
            "e-2",
            json!({ "holder": "Grace Hopper", "description": "Running shoes, online order", "country": "US", "amount_minor": 8999 }),
        ),
        (
            "e-3",
            json!({ "holder": "Ada Byron", "description": "ATM withdrawal", "country": "GB", "amount_minor": 4000 }),
        ),
    ];
    for (id, doc) in &docs {
        ok_json(
            client
                .index(IndexParts::IndexId(&index, id))
                .body(doc)
                .refresh(Refresh::WaitFor)
                .send()
                .await,
        )
        .await;
    }

    // A plain word in a standard-analysed field.
    assert_eq!(
        search_ids(&client, &index, json!({ "match": { "holder": "ada" } })).await,
        ["e-1", "e-3"]
    );
    // Stemming: "invoice" finds "invoices", "run" finds "Running".
    assert_eq!(
        search_ids(
            &client,
            &index,
            json!({ "match": { "description": "invoice" } })
        )
        .await,
        ["e-1"]
    );
    assert_eq!(
        search_ids(
            &client,
            &index,
            json!({ "match": { "description": "run" } })
        )
        .await,
        ["e-2"]
    );
    // Full text combined with a structured filter.
    assert_eq!(
        search_ids(
            &client,
            &index,
            json!({ "bool": {
                "must": { "match": { "holder": "ada" } },
                "filter": { "range": { "amount_minor": { "gte": 2000 } } }
            }})
        )
        .await,
        ["e-3"]
    );
    assert!(search_ids(
        &client,
        &index,
        json!({ "match": { "description": "mortgage" } })
    )
    .await
    .is_empty());

    ok_json(
        client
            .indices()
            .delete(IndicesDeleteParts::Index(&[&index]))
            .send()
            .await,
    )
    .await;
}
