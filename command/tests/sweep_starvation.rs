//! The relay's sweep keeps its turn under load: events a dead instance left unpublished in
//! the store reach Kafka within a bounded time while this instance publishes a steady
//! stream of fresh commits on other accounts.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_events::testing::{deposited, opened, Account};
use prism_events::{AccountId, Envelope};
use prism_platform::config::EventStoreBackend;
use prism_tests::up;
use support::{
    assert_every_event_published, assert_per_account_order, clean_up, consume, isolated_config,
    last_versions, Api, Instance,
};
use uuid::Uuid;

/// Accounts with commands in flight all the time.
const LOADED_ACCOUNTS: usize = 30;
/// Each loaded account gets a deposit this often (or as fast as the store allows).
const LOAD_PACE: Duration = Duration::from_millis(100);
/// Accounts a dead instance left behind, each with one unpublished commit.
const LEFTOVER_ACCOUNTS: usize = 5;
/// The leftovers must be on Kafka within this time (sweep interval 200 ms; generous for a
/// busy two-core machine).
const BOUND: Duration = Duration::from_secs(30);

/// An opening and two deposits, as one commit a crashed instance stored but never published.
fn leftover_commit(account: AccountId) -> Vec<Envelope> {
    let mut dead = Account {
        id: account,
        partition: 0,
        version: 0,
    };
    [
        opened("Left Behind", "DE", "EUR"),
        deposited(10),
        deposited(20),
    ]
    .into_iter()
    .map(|event| dead.next_now(event).0)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_leftovers_are_published_while_the_survivor_is_under_load() {
    let mut config = isolated_config(EventStoreBackend::Mongodb);
    // Each publish cycle waits this long for its batch: a relay that is never idle, as on
    // a busy cluster, so fresh commits are always queued when a cycle ends.
    config.relay.linger_ms = 100;
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);

    let mut accounts = Vec::new();
    for _ in 0..LOADED_ACCOUNTS {
        accounts.push(api.open("EUR").await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = accounts
        .iter()
        .map(|account| {
            let (api, account) = (api.clone(), account.clone());
            let (stop, accepted) = (Arc::clone(&stop), Arc::clone(&accepted));
            tokio::spawn(async move {
                let mut pace = tokio::time::interval(LOAD_PACE);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    let answer = api.deposit(&account, 1).await;
                    assert_eq!(answer.status, 200, "deposit under load: {}", answer.body);
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // The load is steady once every account has had a few commands accepted.
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted.load(Ordering::Relaxed) < 3 * LOADED_ACCOUNTS as u64 {
        assert!(Instant::now() < deadline, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A dead instance's leftovers appear in the store, never published.
    let store = up("event store", prism_command::app::open_store(&config).await);
    let mut leftovers: BTreeMap<AccountId, Vec<Envelope>> = BTreeMap::new();
    for _ in 0..LEFTOVER_ACCOUNTS {
        let account = AccountId(Uuid::now_v7());
        let commit = leftover_commit(account);
        up("append", store.append(account, 0, &commit, None).await);
        leftovers.insert(account, commit);
    }
    let appended = Instant::now();
    let before = accepted.load(Ordering::Relaxed);

    let expected = last_versions(&leftovers);
    let reader_config = config.clone();
    let records = up(
        "reader",
        tokio::task::spawn_blocking(move || consume(&reader_config, &expected, BOUND)).await,
    );
    let waited = appended.elapsed();
    let during = accepted.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        up("load worker", worker.await);
    }
    eprintln!(
        "leftovers reached Kafka after {waited:?}; {during} fresh commands were accepted meanwhile"
    );
    // The load really ran while we waited (otherwise the test shows nothing).
    assert!(during > 20, "only {during} commands accepted while waiting");
    let expected = last_versions(&leftovers);
    let leftover_records: Vec<_> = records
        .into_iter()
        .filter(|(account, _, _)| expected.contains_key(account))
        .collect();
    assert_per_account_order(&leftover_records, &expected);
    assert_every_event_published(&leftover_records, &leftovers);
    assert!(waited < BOUND, "leftovers took {waited:?}");

    instance.stop().await;
    clean_up(&config).await;
}
