//! `prismctl seed` against the real event stores: what it writes is the seeded history,
//! every account's versions complete and in order, every event unpublished (the relay's
//! backlog), and a second run with the same seed is refused with a hint.

use std::collections::HashMap;
use std::time::Duration;

use prism_command::store::mongo::MongoStore;
use prism_command::store::postgres::PgStore;
use prism_command::store::EventStore;
use prism_events::{AccountId, Envelope};
use prism_platform::config::EventStoreBackend;
use prism_platform::Config;
use prism_tests::{config, unique, up};
use prismctl::seed::{seed, Args};
use prismctl::traffic::Events;

fn args(events: u64, accounts: usize) -> Args {
    Args {
        events,
        accounts,
        seed: 7,
        concurrency: 4,
        step: Duration::from_millis(50),
        backend: None,
        json: false,
    }
}

/// The store `name` of `backend`, through the command service's own trait.
async fn open(config: &Config, backend: EventStoreBackend, name: &str) -> Box<dyn EventStore> {
    match backend {
        EventStoreBackend::Mongodb => {
            let client = up(
                "mongodb",
                prism_platform::clients::mongodb(&config.mongodb, "prism-tests").await,
            );
            Box::new(MongoStore::new(client, name))
        }
        EventStoreBackend::Postgres => {
            let pool = up(
                "postgres",
                prism_platform::clients::postgres(&config.postgres).await,
            );
            Box::new(PgStore::new(pool, name))
        }
    }
}

async fn drop_store(config: &Config, backend: EventStoreBackend, name: &str) {
    match backend {
        EventStoreBackend::Mongodb => {
            if let Ok(client) =
                prism_platform::clients::mongodb(&config.mongodb, "prism-tests").await
            {
                let _ = client.database(name).drop().await;
            }
        }
        EventStoreBackend::Postgres => {
            if let Ok(pg) = prism_platform::clients::postgres(&config.postgres).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .execute(&pg)
                    .await;
            }
        }
    }
}

async fn seeds_the_history_once(backend: EventStoreBackend) {
    let config = config();
    let name = unique("prism_test_seed");
    let wanted = args(1_500, 40);
    let seeded = seed(&config, backend, &name, &wanted, false).await;
    let again = seed(&config, backend, &name, &wanted, false).await;
    let store = open(&config, backend, &name).await;
    let mut stored: Vec<Envelope> = Vec::new();
    let mut after = None;
    loop {
        let page = up("event store", store.read_all(after.as_ref(), 500).await);
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        stored.extend(page.into_iter().map(|(_, e)| e));
    }
    let unpublished = up("event store", store.unpublished(None, 10_000).await);
    drop_store(&config, backend, &name).await;

    let seeded = seeded.expect("seeding");
    assert_eq!((seeded.events, seeded.accounts), (1_500, 40));
    // Exactly the traffic model's history: the same events, ids included.
    let history: Vec<Envelope> = Events::new(
        7,
        40,
        0.02,
        chrono::Utc::now(),
        chrono::Duration::milliseconds(50),
    )
    .take(1_500)
    .map(|(_, e)| e)
    .collect();
    // Event ids and times differ (they are minted at the seeded times, and the history
    // ends when it is seeded); accounts, versions and contents do not.
    let contents =
        |events: &[Envelope]| -> HashMap<(AccountId, u64), (&'static str, serde_json::Value)> {
            events
                .iter()
                .map(|e| {
                    (
                        (e.account_id, e.account_version),
                        (e.event.event_type(), e.event.data()),
                    )
                })
                .collect()
        };
    assert_eq!(contents(&stored), contents(&history));
    // Every account's versions are 1..=n, in order, none missing.
    let mut last: HashMap<AccountId, u64> = HashMap::new();
    for event in &stored {
        let previous = last.entry(event.account_id).or_insert(0);
        assert_eq!(event.account_version, *previous + 1, "{event:?}");
        *previous = event.account_version;
    }
    assert_eq!(last.len(), 40);
    // All of it is the relay's backlog.
    assert_eq!(unpublished.len(), 1_500);

    let refused = format!("{:#}", again.expect_err("the same seed twice"));
    assert!(refused.contains("pick another seed"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_the_history_once_into_mongodb() {
    seeds_the_history_once(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_the_history_once_into_postgres() {
    seeds_the_history_once(EventStoreBackend::Postgres).await;
}
