//! On FerretDB (the local stack's MongoDB API), the event store's hot-path lookups are index
//! lookups in the PostgreSQL FerretDB writes to, not reads of a whole collection.
//!
//! The test asks PostgreSQL's planner about the very statement FerretDB 1.x sends for an
//! equality (`SELECT _jsonb FROM <table> WHERE _jsonb->'<field>' @> '<value>'`), on a
//! collection of a few thousand commits written through the store. Skipped (with a message)
//! when the MongoDB API is not FerretDB: MongoDB's own indexes serve those lookups.

use prism_command::store::mongo::MongoStore;
use prism_command::store::{Commit, EventStore, IdempotencyMark, StoredResponse};
use prism_events::event::{AccountOpened, MoneyDeposited};
use prism_events::testing::{self, country, currency};
use prism_events::{AccountEvent, AccountId};
use prism_platform::clients;
use prism_tests::{config, unique, up};
use sqlx::{Connection, PgConnection};

const ACCOUNTS: usize = 200;
const COMMITS_PER_ACCOUNT: u64 = 15;

fn commit(account: AccountId, expected: u64) -> Commit {
    let event = if expected == 0 {
        AccountEvent::AccountOpened(AccountOpened {
            holder_name: "Lookup Holder".into(),
            email: "l@example.org".into(),
            country: country("DE"),
            currency: currency("EUR"),
            daily_withdrawal_limit_minor: 100_000,
        })
    } else {
        AccountEvent::MoneyDeposited(MoneyDeposited {
            amount_minor: 5,
            description: None,
        })
    };
    Commit {
        account_id: account,
        expected_version: expected,
        events: vec![testing::envelope(event)
            .account(account)
            .version(expected + 1)
            .build()],
        idempotency: Some(IdempotencyMark {
            key: format!("test:{account}:{expected}"),
            request_hash: "h".into(),
        }),
        claim: None,
    }
}

/// The plan PostgreSQL picks for FerretDB's equality statement on `collection`'s `field`.
async fn plan(
    pg: &mut PgConnection,
    database: &str,
    collection: &str,
    field: &str,
    value: &str,
) -> String {
    let table: String = up(
        "ferretdb catalogue",
        sqlx::query_scalar(&format!(
            "SELECT _jsonb->>'table' FROM \"{database}\"._ferretdb_database_metadata WHERE _jsonb->>'_id' = $1"
        ))
        .bind(collection)
        .fetch_one(&mut *pg)
        .await,
    );
    up(
        "analyze",
        sqlx::query(&format!("ANALYZE \"{database}\".\"{table}\""))
            .execute(&mut *pg)
            .await,
    );
    let json = serde_json::Value::String(value.to_owned()).to_string();
    let rows: Vec<String> = up(
        "explain",
        sqlx::query_scalar(&format!(
            "EXPLAIN SELECT _jsonb FROM \"{database}\".\"{table}\" WHERE _jsonb->'{field}' @> '{json}'::jsonb"
        ))
        .fetch_all(&mut *pg)
        .await,
    );
    rows.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_ferretdb_every_hot_path_lookup_is_an_index_lookup() {
    let cfg = config();
    let client = up(
        "mongodb",
        clients::mongodb(&cfg.mongodb, "prism-tests").await,
    );
    let info = up(
        "mongodb",
        client
            .database("admin")
            .run_command(mongodb::bson::doc! { "buildInfo": 1 })
            .await,
    );
    if !info.contains_key("ferretdbFeatures") {
        eprintln!("the MongoDB API is not FerretDB: nothing to check");
        return;
    }
    let url = cfg
        .mongodb
        .ferretdb_postgres()
        .cloned()
        .expect("the local stack's configuration names FerretDB's PostgreSQL");
    let name = unique("prism_lookup");
    let store = MongoStore::new(client.clone(), &name).with_ferretdb_postgres(Some(url.clone()));
    up("mongodb", store.init().await);
    // A second start (another instance) finds them there.
    let again = MongoStore::new(client.clone(), &name).with_ferretdb_postgres(Some(url.clone()));
    up("mongodb", again.init().await);

    let accounts: Vec<AccountId> = (0..ACCOUNTS).map(|_| AccountId::generate()).collect();
    for expected in 0..COMMITS_PER_ACCOUNT {
        let batch: Vec<Commit> = accounts.iter().map(|a| commit(*a, expected)).collect();
        for chunk in batch.chunks(50) {
            for result in store.append_batch(chunk).await {
                up("append", result);
            }
        }
    }
    let claims: Vec<StoredResponse> = accounts
        .iter()
        .map(|a| {
            let mark = IdempotencyMark {
                key: format!("claim:{a}"),
                request_hash: "h".into(),
            };
            StoredResponse::claim(&mark, "c", chrono::Utc::now())
        })
        .collect();
    for stored in store.save_responses(&claims).await {
        assert!(up("save responses", stored));
    }
    let probe = accounts[ACCOUNTS / 2];
    assert_eq!(
        up("load", store.load(probe, 0).await).len() as u64,
        COMMITS_PER_ACCOUNT
    );

    let mut pg = up("postgres", PgConnection::connect(url.expose()).await);
    let lookups = [
        ("commits", "account_id", probe.to_string()),
        ("commits", "idempotency_key", format!("test:{probe}:3")),
        ("responses", "_id", format!("claim:{probe}")),
    ];
    for (collection, field, value) in lookups {
        let plan = plan(&mut pg, &name, collection, field, &value).await;
        assert!(
            plan.contains("Index Scan") && plan.contains("_lookup"),
            "{collection}.{field}: FerretDB's equality is not served by a lookup index:\n{plan}"
        );
    }
    let indexes: Vec<String> = up(
        "pg_indexes",
        sqlx::query_scalar("SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND indexname LIKE '%\\_lookup' ORDER BY 1")
            .bind(&name)
            .fetch_all(&mut pg)
            .await,
    );
    assert_eq!(
        indexes.len(),
        6,
        "one lookup index per hot-path field: {indexes:?}"
    );
    let _ = pg.close().await;
    up("mongodb", client.database(&name).drop().await);
}
