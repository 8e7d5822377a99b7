//! The MongoDB-protocol event store server: a compound unique index is a real guard.

use mongodb::bson::{doc, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;
use prism_platform::clients;
use prism_tests::{config, unique, up};

const DUPLICATE_KEY: i32 = 11000;

#[tokio::test]
async fn a_compound_unique_index_rejects_a_duplicate_key() {
    let cfg = config();
    let client = up(
        "mongodb",
        clients::mongodb(&cfg.mongodb, "prism-tests").await,
    );
    let database = client.database(&unique("prism_test"));
    let events = database.collection::<Document>("events");

    let index = IndexModel::builder()
        .keys(doc! { "account_id": 1, "version": 1 })
        .options(IndexOptions::builder().unique(true).build())
        .build();
    up("mongodb", events.create_index(index).await);

    for (account, version) in [("a", 1), ("a", 2), ("b", 1)] {
        up(
            "mongodb",
            events
                .insert_one(doc! { "account_id": account, "version": version })
                .await,
        );
    }

    let duplicate = events
        .insert_one(doc! { "account_id": "a", "version": 2, "other": true })
        .await;
    match duplicate {
        Err(e) => match *e.kind {
            ErrorKind::Write(WriteFailure::WriteError(ref w)) => {
                assert_eq!(w.code, DUPLICATE_KEY, "{e}")
            }
            ref other => panic!("expected a duplicate-key write error, got {other:?}"),
        },
        Ok(_) => panic!("a second (a, 2) must be rejected by the unique index"),
    }

    let stored = up("mongodb", events.count_documents(doc! {}).await);
    assert_eq!(stored, 3, "the rejected insert must store nothing");
    let a2 = up(
        "mongodb",
        events
            .find_one(doc! { "account_id": "a", "version": 2 })
            .await,
    );
    assert!(
        a2.is_some_and(|d| !d.contains_key("other")),
        "the original document must be untouched"
    );

    up("mongodb", database.drop().await);
}
