//! The event store contract: every behaviour is written once against `&dyn EventStore` and
//! runs on both backends — MongoDB-protocol (`mongodb::…`, FerretDB in the local stack) and
//! PostgreSQL (`postgres::…`) — each test in its own database or schema, dropped afterwards
//! (also when the test fails).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::future::join_all;
use futures::FutureExt;
use prism_command::store::mongo::MongoStore;
use prism_command::store::postgres::PgStore;
use prism_command::store::{
    AppendError, Commit, EventStore, IdempotencyMark, Position, Snapshot, StoreError,
    StoredResponse,
};
use prism_events::event::{
    AccountClosed, AccountFrozen, AccountOpened, AccountUnfrozen, CardChannel, CardPayment,
    CardPaymentApproved, CardPaymentDeclined, DeclineReason, MoneyDeposited, MoneyWithdrawn,
    WithdrawalChannel,
};
use prism_events::testing::{self, country, currency};
use prism_events::{AccountEvent, AccountId, Envelope};
use prism_platform::clients;
use prism_tests::{config, unique, up};
use serde_json::json;
use uuid::Uuid;

type TestFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Runs `test` against a MongoStore on a fresh database, then drops the database.
async fn on_mongodb(test: impl for<'a> FnOnce(&'a MongoStore) -> TestFuture<'a>) {
    on_mongodb_database(|store, _, _| test(store)).await;
}

/// Like [`on_mongodb`], also handing over the client and the database name.
async fn on_mongodb_database(
    test: impl for<'a> FnOnce(&'a MongoStore, &'a ::mongodb::Client, &'a str) -> TestFuture<'a>,
) {
    let cfg = config();
    let client = up(
        "mongodb",
        clients::mongodb(&cfg.mongodb, "prism-store-contract").await,
    );
    let name = unique("prism_store");
    // With FerretDB's lookup indexes when the stack is FerretDB: the contract holds with them.
    let store = MongoStore::new(client.clone(), &name)
        .with_ferretdb_postgres(cfg.mongodb.ferretdb_postgres().cloned());
    up("mongodb", store.init().await);
    let outcome = AssertUnwindSafe(test(&store, &client, &name))
        .catch_unwind()
        .await;
    up("mongodb", client.database(&name).drop().await);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `test` against a PgStore in a fresh schema, then drops the schema.
async fn on_postgres(test: impl for<'a> FnOnce(&'a PgStore) -> TestFuture<'a>) {
    let cfg = config();
    let pool = up("postgres", clients::postgres(&cfg.postgres).await);
    let schema = unique("prism_store");
    let store = PgStore::new(pool.clone(), &schema);
    up("postgres", store.init().await);
    let outcome = AssertUnwindSafe(test(&store)).catch_unwind().await;
    up(
        "postgres",
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&pool)
            .await,
    );
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One test per backend for each behaviour.
macro_rules! contract {
    ($($behaviour:ident),+ $(,)?) => {
        mod mongodb {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    super::on_mongodb(|store| Box::pin(super::$behaviour(store))).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    super::on_postgres(|store| Box::pin(super::$behaviour(store))).await;
                }
            )+
        }
    };
}

contract!(
    every_event_type_round_trips_with_every_attribute,
    time_below_a_microsecond_is_cut_the_same_way_everywhere,
    a_stale_expected_version_conflicts,
    an_expected_version_ahead_of_the_stream_or_inside_a_commit_conflicts,
    a_conflicting_commit_stores_none_of_its_events,
    of_twenty_concurrent_appends_at_one_version_exactly_one_wins,
    of_two_concurrent_multi_event_commits_one_lands_whole_and_the_other_not_at_all,
    an_idempotency_key_binds_the_first_commit_and_refuses_a_second,
    a_reused_key_is_reported_even_when_the_version_is_also_stale,
    commits_without_an_idempotency_key_never_collide,
    read_all_pages_through_every_event_once_and_resumes_from_any_position,
    a_scan_reads_every_event_once_with_its_content,
    events_read_in_version_order_even_when_their_ids_sort_the_other_way,
    a_newer_snapshot_replaces_an_older_one_and_never_the_reverse,
    unpublished_events_come_oldest_first_until_marked_published,
    marking_published_is_idempotent_and_ignores_unknown_ids,
    an_event_left_out_of_mark_published_stays_unpublished,
    init_again_and_concurrently_changes_nothing,
    a_text_with_u0000_is_refused_the_same_way_everywhere,
    a_stored_response_keeps_its_first_answer,
    a_claim_on_a_key_is_replaced_only_by_its_owner,
    in_a_batch_a_conflicting_commit_fails_alone_and_the_others_are_stored,
    a_key_used_twice_in_one_batch_binds_one_commit_and_refuses_the_other,
    a_batch_stores_new_and_existing_accounts_unpublished_and_in_version_order,
    of_concurrent_batches_racing_on_the_same_accounts_each_commit_lands_whole_or_not_at_all,
    responses_saved_in_one_batch_each_keep_the_first_answer_under_their_key,
    a_commit_lands_only_if_its_claim_is_stored_and_a_stored_claim_stays,
    a_lone_commit_with_a_claim_stores_both,
    a_lease_is_held_by_one_holder_until_it_expires,
);

// ---------------------------------------------------------------------------------------
// Events to store.

fn at(rfc3339: &str) -> DateTime<Utc> {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => t.with_timezone(&Utc),
        Err(e) => panic!("bad test time {rfc3339}: {e}"),
    }
}

// Unusual values on purpose (every script, quotes, the largest amounts): what a store
// must round-trip unchanged. Everything else comes from `prism_events::testing`.

fn opened() -> AccountEvent {
    AccountEvent::AccountOpened(AccountOpened {
        holder_name: "Zoë Ångström-Nakamura 中村 🏦".into(),
        email: "zoe@example.org".into(),
        country: country("SE"),
        currency: currency("SEK"),
        daily_withdrawal_limit_minor: 9_007_199_254_740_993,
    })
}

fn deposited(amount_minor: i64) -> AccountEvent {
    AccountEvent::MoneyDeposited(MoneyDeposited {
        amount_minor,
        description: Some("löning \"maj\" — ½".into()),
    })
}

fn payment() -> CardPayment {
    CardPayment {
        amount_minor: 4_250,
        merchant_name: "Café Ürün & Søn".into(),
        merchant_category: "5814".into(),
        merchant_country: country("TR"),
        channel: CardChannel::Online,
    }
}

/// One of each of the eight event types, in an order an account could have them.
fn every_type() -> Vec<AccountEvent> {
    vec![
        opened(),
        deposited(i64::MAX),
        AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
            amount_minor: 9_223_372_036_854_775_000,
            description: None,
            channel: WithdrawalChannel::Atm,
        }),
        AccountEvent::CardPaymentApproved(CardPaymentApproved { payment: payment() }),
        AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
            payment: payment(),
            decline_reason: DeclineReason::InsufficientFunds,
        }),
        AccountEvent::AccountFrozen(AccountFrozen {
            reason: "kort stulet — ärende #42".into(),
        }),
        AccountEvent::AccountUnfrozen(AccountUnfrozen {}),
        AccountEvent::AccountClosed(AccountClosed {}),
    ]
}

fn envelope(account: AccountId, version: u64, event: AccountEvent) -> Envelope {
    testing::envelope(event)
        .account(account)
        .version(version)
        .correlation(Some(&format!("req-{version}")))
        .build()
}

/// A commit of `count` deposits after `expected` (amounts tell the commits apart).
fn deposits(account: AccountId, expected: u64, count: u64, amount: i64) -> Vec<Envelope> {
    (1..=count)
        .map(|i| envelope(account, expected + i, deposited(amount)))
        .collect()
}

fn mark(key: &str, hash: &str) -> IdempotencyMark {
    IdempotencyMark {
        key: key.into(),
        request_hash: hash.into(),
    }
}

async fn append(store: &dyn EventStore, expected: u64, events: &[Envelope]) {
    let account = events[0].account_id;
    if let Err(e) = store.append(account, expected, events, None).await {
        panic!("appending after version {expected} of {account}: {e}");
    }
}

async fn load(store: &dyn EventStore, account: AccountId) -> Vec<Envelope> {
    match store.load(account, 0).await {
        Ok(events) => events,
        Err(e) => panic!("loading {account}: {e}"),
    }
}

fn assert_conflict(result: Result<(), AppendError>, account: AccountId, expected: u64) {
    match result {
        Err(AppendError::Conflict {
            account_id,
            expected: got,
        }) => assert_eq!((account_id, got), (account, expected)),
        other => panic!("expected a version conflict at {expected}, got {other:?}"),
    }
}

/// Every event of the store via `read_all`, in pages of `page`.
async fn read_everything(
    store: &dyn EventStore,
    after: Option<Position>,
    page: usize,
) -> Vec<(Position, Envelope)> {
    let mut all = Vec::new();
    let mut after = after;
    loop {
        let batch = match store.read_all(after.as_ref(), page).await {
            Ok(batch) => batch,
            Err(e) => panic!("read_all after {after:?}: {e}"),
        };
        assert!(batch.len() <= page, "a page holds at most its limit");
        let Some((last, _)) = batch.last() else {
            return all;
        };
        after = Some(last.clone());
        all.extend(batch);
    }
}

// ---------------------------------------------------------------------------------------
// Behaviours.

async fn every_event_type_round_trips_with_every_attribute(store: &dyn EventStore) {
    let account = AccountId::generate();
    let mut events: Vec<Envelope> = every_type()
        .into_iter()
        .zip(1..)
        .map(|(event, version)| envelope(account, version, event))
        .collect();
    events[0].time = at("2024-02-29T23:59:59.123456Z");
    events[1].time = at("1999-12-31T23:59:59.999999Z");
    events[2].causation_id = Some("cmd-ünïcødé-✓".into());
    events[3].correlation_id = None;
    events[4].source = "/prism/command/instance-β".into();

    // Commits of one, three and four events.
    append(store, 0, &events[..1]).await;
    append(store, 1, &events[1..4]).await;
    append(store, 4, &events[4..]).await;

    assert_eq!(load(store, account).await, events);
    let tail = up("store", store.load(account, 3).await);
    assert_eq!(
        tail,
        events[3..].to_vec(),
        "load after a version gives the tail"
    );
    assert!(up("store", store.load(account, 8).await).is_empty());
    assert!(load(store, AccountId::generate()).await.is_empty());

    // The raw form the relay publishes decodes to the same events.
    let raw = up("store", store.unpublished(Some(account), 100).await);
    let decoded: Vec<Envelope> = raw
        .into_iter()
        .map(|r| r.decode().expect("stored raw event decodes"))
        .collect();
    assert_eq!(decoded, events);

    let read: Vec<Envelope> = read_everything(store, None, 100)
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(read, events);
}

async fn time_below_a_microsecond_is_cut_the_same_way_everywhere(store: &dyn EventStore) {
    let account = AccountId::generate();
    let mut event = envelope(account, 1, opened());
    event.time = Utc
        .with_ymd_and_hms(2025, 6, 30, 12, 0, 0)
        .single()
        .expect("valid time")
        + chrono::Duration::nanoseconds(123_456_789);
    append(store, 0, std::slice::from_ref(&event)).await;
    let stored = load(store, account).await;
    assert_eq!(stored[0].time, at("2025-06-30T12:00:00.123456Z"));
}

async fn a_stale_expected_version_conflicts(store: &dyn EventStore) {
    let account = AccountId::generate();
    append(store, 0, &[envelope(account, 1, opened())]).await;
    append(store, 1, &deposits(account, 1, 1, 10)).await;
    let before = load(store, account).await;

    for stale in [0, 1] {
        let result = store
            .append(account, stale, &deposits(account, stale, 1, 99), None)
            .await;
        assert_conflict(result, account, stale);
    }
    assert_eq!(load(store, account).await, before);
}

async fn an_expected_version_ahead_of_the_stream_or_inside_a_commit_conflicts(
    store: &dyn EventStore,
) {
    let account = AccountId::generate();
    // A brand-new account has no version 3.
    let result = store
        .append(account, 3, &deposits(account, 3, 1, 1), None)
        .await;
    assert_conflict(result, account, 3);

    let mut first = vec![envelope(account, 1, opened())];
    first.extend(deposits(account, 1, 2, 5));
    append(store, 0, &first).await;

    // Versions 1–3 are one commit: 2 is not the last version, 4 and 5 are ahead.
    for expected in [2, 4, 5] {
        let result = store
            .append(account, expected, &deposits(account, expected, 1, 7), None)
            .await;
        assert_conflict(result, account, expected);
    }
    assert_eq!(load(store, account).await, first);
    // The right version still works afterwards.
    append(store, 3, &deposits(account, 3, 1, 7)).await;
    assert_eq!(load(store, account).await.len(), 4);
}

async fn a_conflicting_commit_stores_none_of_its_events(store: &dyn EventStore) {
    let account = AccountId::generate();
    append(store, 0, &[envelope(account, 1, opened())]).await;
    append(store, 1, &deposits(account, 1, 1, 10)).await;
    let before = load(store, account).await;

    // Versions 2, 3, 4 at expected 1: version 2 exists, so none of the three may land.
    let commit = deposits(account, 1, 3, 77);
    let result = store.append(account, 1, &commit, None).await;
    assert_conflict(result, account, 1);
    assert_eq!(load(store, account).await, before);
    let ids: HashSet<Uuid> = commit.iter().map(|e| e.id).collect();
    let everything = read_everything(store, None, 10).await;
    assert!(everything.iter().all(|(_, e)| !ids.contains(&e.id)));
    let unpublished = up("store", store.unpublished(None, 100).await);
    assert_eq!(
        unpublished.len(),
        2,
        "only the two stored events are pending"
    );
}

async fn of_twenty_concurrent_appends_at_one_version_exactly_one_wins(store: &dyn EventStore) {
    let account = AccountId::generate();
    for expected in [0, 1] {
        let attempts: Vec<Vec<Envelope>> = (0..20)
            .map(|i| {
                if expected == 0 {
                    vec![envelope(account, 1, opened())]
                } else {
                    deposits(account, expected, 1, 100 + i)
                }
            })
            .collect();
        let results = join_all(
            attempts
                .iter()
                .map(|events| store.append(account, expected, events, None)),
        )
        .await;
        let mut winners = Vec::new();
        for (attempt, result) in attempts.iter().zip(results) {
            match result {
                Ok(()) => winners.push(attempt),
                Err(AppendError::Conflict { .. }) => {}
                Err(e) => panic!("a losing append must be a conflict, got {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one of 20 wins at {expected}");
        let stored = load(store, account).await;
        assert_eq!(stored.len() as u64, expected + 1);
        assert_eq!(stored.last(), winners[0].last());
    }
}

async fn of_two_concurrent_multi_event_commits_one_lands_whole_and_the_other_not_at_all(
    store: &dyn EventStore,
) {
    let account = AccountId::generate();
    append(store, 0, &[envelope(account, 1, opened())]).await;
    for round in 0..5_u64 {
        let expected = 1 + round * 3;
        let a = deposits(account, expected, 3, 1);
        let b = deposits(account, expected, 3, 2);
        let (ra, rb) = futures::join!(
            store.append(account, expected, &a, None),
            store.append(account, expected, &b, None)
        );
        let winner = match (ra, rb) {
            (Ok(()), Err(AppendError::Conflict { .. })) => &a,
            (Err(AppendError::Conflict { .. }), Ok(())) => &b,
            other => panic!("exactly one commit must win, got {other:?}"),
        };
        let stored = up("store", store.load(account, expected).await);
        assert_eq!(&stored, winner, "the winner whole, nothing of the loser");
    }
}

async fn an_idempotency_key_binds_the_first_commit_and_refuses_a_second(store: &dyn EventStore) {
    let account = AccountId::generate();
    append(store, 0, &[envelope(account, 1, opened())]).await;
    let first = deposits(account, 1, 2, 500);
    let key = "principal-a:key-ü-1";
    up(
        "store",
        store
            .append(account, 1, &first, Some(&mark(key, "sha256:first")))
            .await,
    );

    // The same key again, even for another account and with another body: refused.
    let other = AccountId::generate();
    let again = store
        .append(
            other,
            0,
            &[envelope(other, 1, opened())],
            Some(&mark(key, "sha256:second")),
        )
        .await;
    assert!(
        matches!(again, Err(AppendError::DuplicateIdempotencyKey)),
        "{again:?}"
    );
    assert!(load(store, other).await.is_empty(), "nothing stored");

    let found = up("store", store.find_idempotent(key).await).expect("the key is bound");
    assert_eq!(found.request_hash, "sha256:first");
    assert_eq!(found.events, first);
    assert!(up("store", store.find_idempotent("principal-a:unknown").await).is_none());
    // Keys are exact: another principal's key of the same name is unbound.
    assert!(up("store", store.find_idempotent("principal-b:key-ü-1").await).is_none());
}

async fn a_reused_key_is_reported_even_when_the_version_is_also_stale(store: &dyn EventStore) {
    let account = AccountId::generate();
    let key = "p:retry";
    up(
        "store",
        store
            .append(
                account,
                0,
                &[envelope(account, 1, opened())],
                Some(&mark(key, "h")),
            )
            .await,
    );
    // A retry decided on the old state: both guards fire; the key tells the caller to
    // answer with the first commit.
    let retry = store
        .append(
            account,
            0,
            &[envelope(account, 1, opened())],
            Some(&mark(key, "h")),
        )
        .await;
    assert!(
        matches!(retry, Err(AppendError::DuplicateIdempotencyKey)),
        "{retry:?}"
    );
    // And a version-ahead retry too (no predecessor at all).
    let ahead = store
        .append(
            account,
            5,
            &deposits(account, 5, 1, 1),
            Some(&mark(key, "h")),
        )
        .await;
    assert!(
        matches!(ahead, Err(AppendError::DuplicateIdempotencyKey)),
        "{ahead:?}"
    );
    assert_eq!(load(store, account).await.len(), 1);
}

async fn commits_without_an_idempotency_key_never_collide(store: &dyn EventStore) {
    // On MongoDB a plain unique index would treat every missing key as the same null.
    let accounts: Vec<AccountId> = (0..5).map(|_| AccountId::generate()).collect();
    for account in &accounts {
        append(store, 0, &[envelope(*account, 1, opened())]).await;
        append(store, 1, &deposits(*account, 1, 2, 3)).await;
    }
    // Keyed and unkeyed commits side by side.
    for (i, account) in accounts.iter().enumerate() {
        up(
            "store",
            store
                .append(
                    *account,
                    3,
                    &deposits(*account, 3, 1, 4),
                    Some(&mark(&format!("k{i}"), "h")),
                )
                .await,
        );
        append(store, 4, &deposits(*account, 4, 1, 5)).await;
    }
    for account in &accounts {
        assert_eq!(load(store, *account).await.len(), 5);
    }
}

/// `scan` (what `verify` reads): every stored event exactly once and as stored, in any
/// order, in pages however small.
async fn a_scan_reads_every_event_once_with_its_content(store: &dyn EventStore) {
    use futures::TryStreamExt;
    let scanned: Vec<Vec<Envelope>> = up("scan", store.scan(2).try_collect().await);
    assert!(scanned.iter().all(Vec::is_empty));

    let mut written: Vec<Envelope> = Vec::new();
    for (i, account) in (0..3).map(|_| AccountId::generate()).enumerate() {
        let mut commit = vec![envelope(account, 1, opened())];
        commit.extend(deposits(account, 1, i as u64 + 1, 1));
        append(store, 0, &commit).await;
        let more = deposits(account, commit.len() as u64, 2, 10);
        append(store, commit.len() as u64, &more).await;
        written.extend(commit);
        written.extend(more);
    }
    let scanned: Vec<Vec<Envelope>> = up("scan", store.scan(2).try_collect().await);
    let mut scanned: Vec<Envelope> = scanned.into_iter().flatten().collect();
    let key = |e: &Envelope| (e.account_id, e.account_version);
    scanned.sort_by_key(key);
    written.sort_by_key(key);
    assert_eq!(scanned, written, "every event once, exactly as appended");
}

async fn read_all_pages_through_every_event_once_and_resumes_from_any_position(
    store: &dyn EventStore,
) {
    assert!(up("store", store.read_all(None, 10).await).is_empty());

    // Three accounts, interleaved commits of one to three events.
    let accounts: Vec<AccountId> = (0..3).map(|_| AccountId::generate()).collect();
    let mut versions: BTreeMap<AccountId, u64> = BTreeMap::new();
    let mut written: Vec<Uuid> = Vec::new();
    for round in 0..4_u64 {
        for (i, account) in accounts.iter().enumerate() {
            let expected = versions.get(account).copied().unwrap_or(0);
            let count = 1 + (round + i as u64) % 3;
            let commit = if expected == 0 {
                let mut c = vec![envelope(*account, 1, opened())];
                c.extend(deposits(*account, 1, count - 1, 1));
                c
            } else {
                deposits(*account, expected, count, 1)
            };
            append(store, expected, &commit).await;
            written.extend(commit.iter().map(|e| e.id));
            versions.insert(*account, expected + count);
        }
    }

    let all = read_everything(store, None, 3).await;
    assert_eq!(all.len(), written.len());
    let ids: HashSet<Uuid> = all.iter().map(|(_, e)| e.id).collect();
    assert_eq!(
        ids,
        written.iter().copied().collect(),
        "every event exactly once"
    );
    let positions: HashSet<&Position> = all.iter().map(|(p, _)| p).collect();
    assert_eq!(positions.len(), all.len(), "positions are distinct");

    let mut last: BTreeMap<AccountId, u64> = BTreeMap::new();
    for (_, event) in &all {
        let previous = last
            .insert(event.account_id, event.account_version)
            .unwrap_or(0);
        assert_eq!(
            event.account_version,
            previous + 1,
            "versions ascend without gaps within an account"
        );
    }
    // One page with everything agrees with the small pages.
    let whole = up("store", store.read_all(None, 1_000).await);
    assert_eq!(whole, all);

    // Resuming from any position continues right after it, with any page size.
    for (i, (position, _)) in all.iter().enumerate() {
        let page = 1 + i % 4;
        let rest = read_everything(store, Some(position.clone()), page).await;
        assert_eq!(rest, all[i + 1..].to_vec(), "resuming after event {i}");
    }
    assert!(up("store", store.read_all(None, 0).await).is_empty());
}

async fn events_read_in_version_order_even_when_their_ids_sort_the_other_way(
    store: &dyn EventStore,
) {
    // Two instances whose clocks disagree: version 2's id is an hour "older" than version
    // 1's, and version 3's older still.
    let account = AccountId::generate();
    let minted = |seconds_ago: u64| {
        let now = Utc::now().timestamp() as u64;
        Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            now - seconds_ago,
            0,
        ))
    };
    let mut v1 = envelope(account, 1, opened());
    v1.id = minted(0);
    let mut v2 = deposits(account, 1, 2, 10);
    v2[0].id = minted(3_600);
    v2[1].id = minted(7_200);
    let mut v4 = deposits(account, 3, 1, 20);
    v4[0].id = minted(10_800);
    let other = AccountId::generate();
    let o1 = envelope(other, 1, opened());

    append(store, 0, std::slice::from_ref(&v1)).await;
    append(store, 0, std::slice::from_ref(&o1)).await;
    append(store, 1, &v2).await;
    append(store, 3, &v4).await;

    let expected: Vec<u64> = vec![1, 2, 3, 4];
    let versions_of = |events: Vec<&Envelope>| -> Vec<u64> {
        events
            .into_iter()
            .filter(|e| e.account_id == account)
            .map(|e| e.account_version)
            .collect()
    };
    for page in [1, 2, 100] {
        let all = read_everything(store, None, page).await;
        assert_eq!(versions_of(all.iter().map(|(_, e)| e).collect()), expected);
    }
    let unpublished = up("store", store.unpublished(None, 100).await);
    let pending: Vec<u64> = unpublished
        .iter()
        .filter(|e| e.subject == account.to_string())
        .map(|e| e.account_version)
        .collect();
    assert_eq!(pending, expected);
    let mine = up("store", store.unpublished(Some(account), 100).await);
    let mine: Vec<u64> = mine.iter().map(|e| e.account_version).collect();
    assert_eq!(mine, expected);
}

async fn a_newer_snapshot_replaces_an_older_one_and_never_the_reverse(store: &dyn EventStore) {
    let account = AccountId::generate();
    let other = AccountId::generate();
    let snapshot = |account_id, version, balance: i64| Snapshot {
        account_id,
        version,
        state: json!({ "balance_minor": balance, "holder": "Zoë", "flags": [true, null] }),
    };
    assert!(up("store", store.load_snapshot(account).await).is_none());

    up(
        "store",
        store.save_snapshot(&snapshot(account, 5, 50)).await,
    );
    up("store", store.save_snapshot(&snapshot(other, 1, -1)).await);
    assert_eq!(
        up("store", store.load_snapshot(account).await),
        Some(snapshot(account, 5, 50))
    );

    let newer = snapshot(account, 100, i64::MAX);
    up("store", store.save_snapshot(&newer).await);
    assert_eq!(
        up("store", store.load_snapshot(account).await),
        Some(newer.clone())
    );

    // Older, and the same version again: the stored one stays.
    up(
        "store",
        store.save_snapshot(&snapshot(account, 50, 1)).await,
    );
    up(
        "store",
        store.save_snapshot(&snapshot(account, 100, 2)).await,
    );
    assert_eq!(up("store", store.load_snapshot(account).await), Some(newer));

    // Racing saves leave the highest version.
    let racing: Vec<Snapshot> = (101..=120)
        .map(|v| snapshot(account, v, v as i64))
        .collect();
    let results = join_all(racing.iter().map(|s| store.save_snapshot(s))).await;
    for result in results {
        up("store", result);
    }
    assert_eq!(
        up("store", store.load_snapshot(account).await),
        Some(snapshot(account, 120, 120))
    );
    assert_eq!(
        up("store", store.load_snapshot(other).await),
        Some(snapshot(other, 1, -1))
    );
}

async fn unpublished_events_come_oldest_first_until_marked_published(store: &dyn EventStore) {
    let a = AccountId::generate();
    let b = AccountId::generate();
    let a1 = vec![envelope(a, 1, opened())];
    let b1 = vec![envelope(b, 1, opened())];
    let a2 = deposits(a, 1, 3, 10);
    let b2 = deposits(b, 1, 1, 20);
    append(store, 0, &a1).await;
    append(store, 0, &b1).await;
    append(store, 1, &a2).await;
    append(store, 1, &b2).await;
    let written: Vec<Uuid> = [&a1, &b1, &a2, &b2]
        .iter()
        .flat_map(|c| c.iter().map(|e| e.id))
        .collect();

    let pending = up("store", store.unpublished(None, 100).await);
    let ids: Vec<Uuid> = pending
        .iter()
        .map(|e| e.id.parse().expect("uuid"))
        .collect();
    assert_eq!(ids, written, "oldest first");

    // A small limit gives a non-empty prefix of the same order.
    let first = up("store", store.unpublished(None, 1).await);
    assert!(!first.is_empty());
    assert_eq!(first[..], pending[..first.len()]);

    let only_a = up("store", store.unpublished(Some(a), 100).await);
    let versions: Vec<u64> = only_a.iter().map(|e| e.account_version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert!(only_a.iter().all(|e| e.subject == a.to_string()));

    // The relay publishes whole commits and marks them.
    let published: Vec<Uuid> = a1.iter().chain(&a2).map(|e| e.id).collect();
    up("store", store.mark_published(&published).await);
    assert!(up("store", store.unpublished(Some(a), 100).await).is_empty());
    let left: Vec<Uuid> = up("store", store.unpublished(None, 100).await)
        .iter()
        .map(|e| e.id.parse().expect("uuid"))
        .collect();
    let expected: Vec<Uuid> = b1.iter().chain(&b2).map(|e| e.id).collect();
    assert_eq!(left, expected);

    // Published events are still events: loading and reading all are unaffected.
    assert_eq!(load(store, a).await.len(), 4);
    assert_eq!(read_everything(store, None, 2).await.len(), 6);
}

async fn marking_published_is_idempotent_and_ignores_unknown_ids(store: &dyn EventStore) {
    let account = AccountId::generate();
    let commit = vec![envelope(account, 1, opened())];
    append(store, 0, &commit).await;
    let later = deposits(account, 1, 2, 1);
    append(store, 1, &later).await;

    let ids: Vec<Uuid> = commit.iter().map(|e| e.id).collect();
    up("store", store.mark_published(&ids).await);
    up("store", store.mark_published(&ids).await);
    up("store", store.mark_published(&[]).await);
    up("store", store.mark_published(&[Uuid::now_v7()]).await);

    let pending = up("store", store.unpublished(None, 100).await);
    let versions: Vec<u64> = pending.iter().map(|e| e.account_version).collect();
    assert_eq!(
        versions,
        vec![2, 3],
        "only the marked commit left the outbox"
    );
}

async fn an_event_left_out_of_mark_published_stays_unpublished(store: &dyn EventStore) {
    let account = AccountId::generate();
    let mut commit = vec![envelope(account, 1, opened())];
    commit.extend(deposits(account, 1, 2, 9));
    append(store, 0, &commit).await;

    // Kafka acknowledged only the first event of the commit.
    up("store", store.mark_published(&[commit[0].id]).await);
    let pending: HashSet<Uuid> = up("store", store.unpublished(None, 100).await)
        .iter()
        .map(|e| e.id.parse().expect("uuid"))
        .collect();
    assert!(
        pending.contains(&commit[1].id) && pending.contains(&commit[2].id),
        "events that were not acknowledged must stay in the outbox"
    );

    let all: Vec<Uuid> = commit.iter().map(|e| e.id).collect();
    up("store", store.mark_published(&all).await);
    assert!(up("store", store.unpublished(None, 100).await).is_empty());
}

async fn init_again_and_concurrently_changes_nothing(store: &dyn EventStore) {
    let account = AccountId::generate();
    append(store, 0, &[envelope(account, 1, opened())]).await;
    // A restart, and three instances starting at once.
    up("store", store.init().await);
    for result in join_all((0..3).map(|_| store.init())).await {
        up("store", result);
    }
    append(store, 1, &deposits(account, 1, 1, 5)).await;
    assert_conflict(
        store
            .append(account, 1, &deposits(account, 1, 1, 6), None)
            .await,
        account,
        1,
    );
    assert_eq!(load(store, account).await.len(), 2);
}

async fn a_text_with_u0000_is_refused_the_same_way_everywhere(store: &dyn EventStore) {
    let account = AccountId::generate();
    append(store, 0, &[envelope(account, 1, opened())]).await;
    let frozen = AccountEvent::AccountFrozen(AccountFrozen {
        reason: "nul \u{0} inside".into(),
    });
    let mut correlated = envelope(account, 2, deposited(1));
    correlated.correlation_id = Some("req\u{0}".into());
    for event in [envelope(account, 2, frozen), correlated] {
        match store.append(account, 1, &[event], None).await {
            Err(AppendError::Store(StoreError::Corrupt { reason, .. })) => {
                assert!(reason.contains("U+0000"), "{reason}")
            }
            other => panic!("expected a refusal naming U+0000, got {other:?}"),
        }
    }
    assert_eq!(load(store, account).await.len(), 1);
}

async fn a_stored_response_keeps_its_first_answer(store: &dyn EventStore) {
    assert!(up("store", store.find_response("p:k").await).is_none());
    let first = StoredResponse {
        key: "p:k".into(),
        request_hash: "sha256:abc".into(),
        status: 422,
        body: json!({
            "type": "https://prism.example/problems/insufficient-funds",
            "title": "Insufficient funds ✗",
            "balance_minor": i64::MAX,
        }),
    };
    assert!(
        up("store", store.save_response(&first).await),
        "the first save stores"
    );
    let second = StoredResponse {
        status: 409,
        body: json!({ "title": "other" }),
        ..first.clone()
    };
    assert!(
        !up("store", store.save_response(&second).await),
        "a second save of the key stores nothing"
    );
    assert_eq!(up("store", store.find_response("p:k").await), Some(first));
    assert!(up("store", store.find_response("p:other").await).is_none());
}

async fn a_lease_is_held_by_one_holder_until_it_expires(store: &dyn EventStore) {
    let ttl = Duration::from_millis(1500);
    let hold = |holder: &'static str| async move {
        up("store", store.hold_lease("sweep", holder, ttl).await)
    };
    assert!(hold("a").await, "a free lease is taken");
    assert!(!hold("b").await, "a lease held by another is refused");
    assert!(hold("a").await, "its holder renews it");
    // Leases are by name.
    assert!(up("store", store.hold_lease("other", "b", ttl).await));
    // Of many racing for a free lease, one wins.
    let racers = ["c1", "c2", "c3", "c4", "c5", "c6"];
    let won = join_all(
        racers
            .iter()
            .map(|holder| store.hold_lease("race", holder, ttl)),
    )
    .await;
    let winners = won.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(winners, 1, "{won:?}");
    // Unrenewed, it expires and another takes it; the old holder is then refused.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert!(hold("b").await, "an expired lease is taken");
    assert!(!hold("a").await, "the old holder lost it");
}

// ---------------------------------------------------------------------------------------
// Two instances of the store on the same data (two `prism-command` processes): what one
// remembers never lets it win against what the other wrote.

async fn two_instances_interleave_without_either_overwriting_the_other(
    a: &dyn EventStore,
    b: &dyn EventStore,
) {
    let account = AccountId::generate();
    append(a, 0, &[envelope(account, 1, opened())]).await;
    append(a, 1, &deposits(account, 1, 1, 1)).await;
    // B writes version 3 behind A's back.
    append(b, 2, &deposits(account, 2, 1, 2)).await;
    // A still believes version 2 is the last: a conflict, not a fork.
    assert_conflict(
        a.append(account, 2, &deposits(account, 2, 1, 3), None)
            .await,
        account,
        2,
    );
    // After catching up, A appends on top of B's version.
    assert_eq!(load(a, account).await.len(), 3);
    append(a, 3, &deposits(account, 3, 2, 4)).await;
    assert_conflict(
        b.append(account, 3, &deposits(account, 3, 1, 5), None)
            .await,
        account,
        3,
    );
    let versions: Vec<u64> = load(b, account)
        .await
        .iter()
        .map(|e| e.account_version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn mongodb_two_instances_interleave_without_either_overwriting_the_other() {
    on_mongodb_database(|store, client, name| {
        Box::pin(async move {
            // Its own memory of each account's last commit, like another process.
            let other = MongoStore::new(client.clone(), name);
            two_instances_interleave_without_either_overwriting_the_other(store, &other).await;
        })
    })
    .await;
}

#[tokio::test]
async fn postgres_two_instances_interleave_without_either_overwriting_the_other() {
    on_postgres(|store| {
        Box::pin(async move {
            // PgStore keeps nothing in memory: a clone is as good as another process.
            let other = store.clone();
            two_instances_interleave_without_either_overwriting_the_other(store, &other).await;
        })
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Backend-specific: the raw insert `prismctl bench command` measures.

async fn the_unchecked_insert_writes_what_append_writes(
    store: &dyn EventStore,
    insert: impl Future<Output = Result<(), StoreError>>,
    events: Vec<Envelope>,
) {
    up("store", insert.await);
    let account = events[0].account_id;
    assert_eq!(load(store, account).await, events);
    // The guards see it like an appended commit.
    let result = store
        .append(account, 0, &[envelope(account, 1, opened())], None)
        .await;
    assert_conflict(result, account, 0);
    append(store, 2, &deposits(account, 2, 1, 1)).await;
    assert_eq!(
        up("store", store.unpublished(Some(account), 10).await).len(),
        3
    );
}

fn unchecked_commit() -> Vec<Envelope> {
    let account = AccountId::generate();
    let mut events = vec![envelope(account, 1, opened())];
    events.extend(deposits(account, 1, 1, 42));
    events
}

#[tokio::test]
async fn mongodb_unchecked_insert_writes_what_append_writes() {
    on_mongodb(|store| {
        Box::pin(async move {
            let events = unchecked_commit();
            let insert = store.insert_unchecked(&events);
            the_unchecked_insert_writes_what_append_writes(store, insert, events.clone()).await;
        })
    })
    .await;
}

#[tokio::test]
async fn postgres_unchecked_insert_writes_what_append_writes() {
    on_postgres(|store| {
        Box::pin(async move {
            let events = unchecked_commit();
            let insert = store.insert_unchecked(&events);
            the_unchecked_insert_writes_what_append_writes(store, insert, events.clone()).await;
        })
    })
    .await;
}

/// A claim on an idempotency key shares the responses' key space: the first record wins,
/// and only the holder of the claim (by its id) can replace it, once.
async fn a_claim_on_a_key_is_replaced_only_by_its_owner(store: &dyn EventStore) {
    let mark = IdempotencyMark {
        key: format!("tester:{}", uuid::Uuid::now_v7()),
        request_hash: "hash-1".into(),
    };
    let claim = StoredResponse::claim(&mark, "attempt-a", Utc::now());
    assert!(up("store", store.save_response(&claim).await));
    // A rejection saved after the claim does not replace it.
    let rejection = StoredResponse {
        key: mark.key.clone(),
        request_hash: mark.request_hash.clone(),
        status: 422,
        body: json!({ "code": "insufficient_funds", "detail": "no" }),
    };
    assert!(!up("store", store.save_response(&rejection).await));
    let found = up("store", store.find_response(&mark.key).await);
    assert_eq!(found.as_ref().and_then(|r| r.claim_id()), Some("attempt-a"));
    // Someone else's id cannot replace it; the owner's can, once.
    assert!(!up(
        "store",
        store.replace_claim("attempt-b", &rejection).await
    ));
    assert!(up(
        "store",
        store.replace_claim("attempt-a", &rejection).await
    ));
    assert!(!up("store", store.replace_claim("attempt-a", &claim).await));
    assert_eq!(
        up("store", store.find_response(&mark.key).await),
        Some(rejection)
    );
    // A claim can be handed over to another claim (a takeover), and then only that one counts.
    let other = IdempotencyMark {
        key: format!("tester:{}", uuid::Uuid::now_v7()),
        request_hash: "hash-2".into(),
    };
    up(
        "store",
        store
            .save_response(&StoredResponse::claim(&other, "old", Utc::now()))
            .await,
    );
    let taken = StoredResponse::claim(&other, "new", Utc::now());
    assert!(up("store", store.replace_claim("old", &taken).await));
    assert!(!up("store", store.replace_claim("old", &taken).await));
    let found = up("store", store.find_response(&other.key).await);
    assert_eq!(found.as_ref().and_then(|r| r.claim_id()), Some("new"));
}

// ---------------------------------------------------------------------------------------
// Batched appends (group commit).

fn commit(
    account: AccountId,
    expected: u64,
    events: Vec<Envelope>,
    idempotency: Option<IdempotencyMark>,
) -> Commit {
    Commit {
        account_id: account,
        expected_version: expected,
        events,
        idempotency,
        claim: None,
    }
}

/// A commit that claims its own key in the same round trip (as a keyed command does).
fn claiming(
    account: AccountId,
    expected: u64,
    events: Vec<Envelope>,
    key: &IdempotencyMark,
) -> Commit {
    let claim = StoredResponse::claim(key, &format!("attempt-{}", Uuid::now_v7()), Utc::now());
    Commit {
        claim: Some(claim),
        ..commit(account, expected, events, Some(key.clone()))
    }
}

fn amounts(events: &[Envelope]) -> Vec<i64> {
    events
        .iter()
        .map(|e| match &e.event {
            AccountEvent::MoneyDeposited(d) => d.amount_minor,
            _ => 0,
        })
        .collect()
}

async fn in_a_batch_a_conflicting_commit_fails_alone_and_the_others_are_stored(
    store: &dyn EventStore,
) {
    let [a, b, c, d] = [(); 4].map(|()| AccountId::generate());
    for account in [a, c, d] {
        append(store, 0, &[envelope(account, 1, opened())]).await;
    }
    append(store, 1, &deposits(c, 1, 1, 7)).await;
    let batch = vec![
        commit(a, 1, deposits(a, 1, 2, 10), None),
        // Stale: c is at version 2.
        commit(c, 1, deposits(c, 1, 2, 99), None),
        commit(b, 0, vec![envelope(b, 1, opened())], None),
        // Ahead of the stream: d is at version 1.
        commit(d, 3, deposits(d, 3, 1, 99), None),
        commit(d, 1, deposits(d, 1, 1, 30), None),
    ];
    let results = store.append_batch(&batch).await;
    assert_eq!(results.len(), batch.len(), "one answer per commit");
    let mut results = results.into_iter();
    assert!(matches!(results.next(), Some(Ok(()))));
    assert_conflict(results.next().expect("c's answer"), c, 1);
    assert!(matches!(results.next(), Some(Ok(()))));
    assert_conflict(results.next().expect("d's stale answer"), d, 3);
    assert!(matches!(results.next(), Some(Ok(()))));

    assert_eq!(amounts(&load(store, a).await), vec![0, 10, 10]);
    assert_eq!(load(store, b).await, batch[2].events);
    // The refused commit left nothing behind; c is as it was.
    assert_eq!(amounts(&load(store, c).await), vec![0, 7]);
    assert_eq!(amounts(&load(store, d).await), vec![0, 30]);
    // The stored commits stay appendable after, as after a single append.
    append(store, 3, &deposits(a, 3, 1, 11)).await;
    assert_eq!(amounts(&load(store, a).await), vec![0, 10, 10, 11]);
}

async fn a_key_used_twice_in_one_batch_binds_one_commit_and_refuses_the_other(
    store: &dyn EventStore,
) {
    let [a, b, c, d] = [(); 4].map(|()| AccountId::generate());
    let taken = mark(&format!("tester:{}", Uuid::now_v7()), "hash-taken");
    let stored = vec![envelope(d, 1, opened())];
    up("store", store.append(d, 0, &stored, Some(&taken)).await);
    let twice = mark(&format!("tester:{}", Uuid::now_v7()), "hash-twice");
    let batch = vec![
        commit(a, 0, vec![envelope(a, 1, opened())], Some(twice.clone())),
        commit(b, 0, vec![envelope(b, 1, opened())], Some(twice.clone())),
        // A key already bound before the batch.
        commit(c, 0, vec![envelope(c, 1, opened())], Some(taken.clone())),
    ];
    let results = store.append_batch(&batch).await;
    assert_eq!(results.len(), 3);
    let winners: Vec<usize> = results[..2]
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one commit gets the key: {results:?}"
    );
    let (winner, loser) = (winners[0], 1 - winners[0]);
    assert!(
        matches!(results[loser], Err(AppendError::DuplicateIdempotencyKey)),
        "{:?}",
        results[loser]
    );
    assert!(
        matches!(results[2], Err(AppendError::DuplicateIdempotencyKey)),
        "{:?}",
        results[2]
    );
    let bound = up("store", store.find_idempotent(&twice.key).await).expect("bound");
    assert_eq!(bound.request_hash, twice.request_hash);
    assert_eq!(bound.events, batch[winner].events);
    assert_eq!(
        load(store, batch[winner].account_id).await,
        batch[winner].events
    );
    assert!(load(store, batch[loser].account_id).await.is_empty());
    assert!(load(store, c).await.is_empty());
    let first = up("store", store.find_idempotent(&taken.key).await).expect("bound");
    assert_eq!(first.events, stored);
}

async fn a_batch_stores_new_and_existing_accounts_unpublished_and_in_version_order(
    store: &dyn EventStore,
) {
    let old = AccountId::generate();
    let opening = vec![envelope(old, 1, opened())];
    append(store, 0, &opening).await;
    up("store", store.mark_published(&[opening[0].id]).await);
    let fresh = AccountId::generate();
    let other = AccountId::generate();
    let batch = vec![
        commit(
            fresh,
            0,
            vec![
                envelope(fresh, 1, opened()),
                envelope(fresh, 2, deposited(5)),
                envelope(fresh, 3, deposited(6)),
            ],
            Some(mark(&format!("tester:{}", Uuid::now_v7()), "h1")),
        ),
        commit(old, 1, deposits(old, 1, 2, 40), None),
        commit(other, 0, vec![envelope(other, 1, opened())], None),
    ];
    let results = store.append_batch(&batch).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // Every stored event is unpublished, whole commits, versions ascending per account.
    let pending = up("store", store.unpublished(None, 100).await);
    let mut by_account: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in &pending {
        by_account
            .entry(event.subject.clone())
            .or_default()
            .push(event.account_version);
    }
    let wanted: BTreeMap<String, Vec<u64>> = [
        (fresh.to_string(), vec![1, 2, 3]),
        (old.to_string(), vec![2, 3]),
        (other.to_string(), vec![1]),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_account, wanted);
    let pending_ids: HashSet<Uuid> = pending
        .iter()
        .map(|e| e.id.parse().expect("uuid"))
        .collect();
    let stored_ids: HashSet<Uuid> = batch
        .iter()
        .flat_map(|c| c.events.iter().map(|e| e.id))
        .collect();
    assert_eq!(pending_ids, stored_ids);

    // Read back: `load` per account, `read_all` across them, both in version order.
    assert_eq!(load(store, fresh).await, batch[0].events);
    let mut old_events = opening.clone();
    old_events.extend(batch[1].events.clone());
    assert_eq!(load(store, old).await, old_events);
    let everything = read_everything(store, None, 2).await;
    assert_eq!(everything.len(), 7);
    let mut seen: BTreeMap<AccountId, Vec<u64>> = BTreeMap::new();
    for (_, event) in &everything {
        seen.entry(event.account_id)
            .or_default()
            .push(event.account_version);
    }
    assert_eq!(seen[&fresh], vec![1, 2, 3]);
    assert_eq!(seen[&old], vec![1, 2, 3]);
    assert_eq!(seen[&other], vec![1]);

    // The relay's marking works on batched commits as on single ones.
    let ids: Vec<Uuid> = stored_ids.into_iter().collect();
    up("store", store.mark_published(&ids).await);
    assert!(up("store", store.unpublished(None, 100).await).is_empty());
}

async fn of_concurrent_batches_racing_on_the_same_accounts_each_commit_lands_whole_or_not_at_all(
    store: &dyn EventStore,
) {
    let accounts: Vec<AccountId> = (0..6).map(|_| AccountId::generate()).collect();
    for account in &accounts {
        append(store, 0, &[envelope(*account, 1, opened())]).await;
    }
    for round in 0..3_u64 {
        let expected = 1 + round * 3;
        // Eight writers, each a batch over every account at the same version, each in its
        // own order of accounts; each commit is three deposits of the writer's own amount,
        // so a mixed commit would show.
        let batches: Vec<Vec<Commit>> = (0..8_usize)
            .map(|writer| {
                let mut order = accounts.clone();
                order.rotate_left(writer % accounts.len());
                if writer % 2 == 1 {
                    order.reverse();
                }
                order
                    .iter()
                    .map(|a| {
                        let amount = 100 + writer as i64;
                        commit(*a, expected, deposits(*a, expected, 3, amount), None)
                    })
                    .collect()
            })
            .collect();
        let results = join_all(batches.iter().map(|batch| store.append_batch(batch))).await;
        for account in &accounts {
            let mut winners = Vec::new();
            for (writer, answers) in results.iter().enumerate() {
                let Some(index) = batches[writer]
                    .iter()
                    .position(|c| c.account_id == *account)
                else {
                    panic!("every batch has every account");
                };
                match &answers[index] {
                    Ok(()) => winners.push((writer, index)),
                    Err(AppendError::Conflict { .. }) => {}
                    Err(e) => panic!("a losing commit must be a conflict, got {e:?}"),
                }
            }
            assert_eq!(
                winners.len(),
                1,
                "exactly one writer wins {account} in round {round}"
            );
            let stored = load(store, *account).await;
            assert_eq!(stored.len() as u64, expected + 3);
            let winner = &batches[winners[0].0][winners[0].1];
            assert_eq!(
                stored[expected as usize..],
                winner.events[..],
                "the winner's commit, whole"
            );
        }
    }
}

async fn responses_saved_in_one_batch_each_keep_the_first_answer_under_their_key(
    store: &dyn EventStore,
) {
    let key = |name: &str| mark(&format!("tester:{name}:{}", Uuid::now_v7()), "hash");
    let (a, taken, c) = (key("a"), key("taken"), key("c"));
    let earlier = StoredResponse::claim(&taken, "earlier", Utc::now());
    assert!(up("store", store.save_response(&earlier).await));
    let batch = vec![
        StoredResponse::claim(&a, "a-1", Utc::now()),
        StoredResponse::claim(&taken, "later", Utc::now()),
        StoredResponse::claim(&c, "c-1", Utc::now()),
        // The same key again in the same batch: the first one is the key's record.
        StoredResponse::claim(&a, "a-2", Utc::now()),
    ];
    let stored: Vec<bool> = store
        .save_responses(&batch)
        .await
        .into_iter()
        .map(|r| up("store", r))
        .collect();
    assert_eq!(stored, vec![true, false, true, false]);
    let claim_of =
        |found: Option<StoredResponse>| found.and_then(|r| r.claim_id().map(str::to_owned));
    assert_eq!(
        claim_of(up("store", store.find_response(&a.key).await)).as_deref(),
        Some("a-1")
    );
    assert_eq!(
        claim_of(up("store", store.find_response(&taken.key).await)).as_deref(),
        Some("earlier")
    );
    assert_eq!(
        claim_of(up("store", store.find_response(&c.key).await)).as_deref(),
        Some("c-1")
    );
}

/// A commit carrying its key's claim: the claim is stored first, in the same round trip;
/// a key that holds a record already refuses the commit (`KeyClaimed`, nothing appended,
/// the record untouched); a claim stays stored when its commit conflicts; of two claims on
/// one key in a batch only the first counts.
async fn a_commit_lands_only_if_its_claim_is_stored_and_a_stored_claim_stays(
    store: &dyn EventStore,
) {
    let [a, b, c, d] = [(); 4].map(|()| AccountId::generate());
    for account in [a, b, c, d] {
        append(store, 0, &[envelope(account, 1, opened())]).await;
    }
    let key = |name: &str| {
        mark(
            &format!("tester:{name}:{}", Uuid::now_v7()),
            &format!("hash-{name}"),
        )
    };
    let (fresh, rejected, stale, twin) = (key("fresh"), key("rejected"), key("stale"), key("twin"));
    let rejection = StoredResponse {
        key: rejected.key.clone(),
        request_hash: rejected.request_hash.clone(),
        status: 422,
        body: json!({ "code": "insufficient_funds" }),
    };
    assert!(up("save", store.save_response(&rejection).await));
    let batch = vec![
        claiming(a, 1, deposits(a, 1, 1, 10), &fresh),
        claiming(b, 1, deposits(b, 1, 1, 20), &rejected),
        // Stale: c is at version 1.
        claiming(c, 0, vec![envelope(c, 1, opened())], &stale),
        claiming(d, 1, deposits(d, 1, 1, 40), &twin),
        // The same key again (another account): the first claim of the batch wins.
        claiming(b, 1, deposits(b, 1, 1, 50), &twin),
    ];
    let results = store.append_batch(&batch).await;
    assert_eq!(results.len(), batch.len(), "one answer per commit");
    assert!(matches!(results[0], Ok(())), "fresh: {:?}", results[0]);
    assert!(
        matches!(results[1], Err(AppendError::KeyClaimed)),
        "rejected: {:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(AppendError::Conflict { .. })),
        "stale: {:?}",
        results[2]
    );
    assert!(matches!(results[3], Ok(())), "twin: {:?}", results[3]);
    assert!(
        matches!(results[4], Err(AppendError::KeyClaimed)),
        "second twin: {:?}",
        results[4]
    );

    assert_eq!(amounts(&load(store, a).await), vec![0, 10]);
    assert_eq!(
        amounts(&load(store, b).await),
        vec![0],
        "nothing appended under a taken key"
    );
    assert_eq!(amounts(&load(store, d).await), vec![0, 40]);
    let found = |key: &IdempotencyMark| {
        let key = key.key.clone();
        async move { up("find_response", store.find_response(&key).await) }
    };
    assert_eq!(
        found(&fresh).await,
        batch[0].claim.clone(),
        "the landed commit's claim"
    );
    assert_eq!(
        found(&rejected).await,
        Some(rejection),
        "the stored rejection is untouched"
    );
    assert_eq!(
        found(&stale).await,
        batch[2].claim.clone(),
        "a conflicting commit's claim stays"
    );
    assert_eq!(
        found(&twin).await,
        batch[3].claim.clone(),
        "the first claim on a key"
    );
    let committed = up("find_idempotent", store.find_idempotent(&fresh.key).await);
    assert_eq!(committed.map(|c| c.events), Some(batch[0].events.clone()));
    assert!(up(
        "find_idempotent",
        store.find_idempotent(&rejected.key).await
    )
    .is_none());
}

/// A batch of one commit with a claim (a keyed command at low load) stores both.
async fn a_lone_commit_with_a_claim_stores_both(store: &dyn EventStore) {
    let account = AccountId::generate();
    let key = mark(&format!("tester:lone:{}", Uuid::now_v7()), "hash-lone");
    let lone = claiming(account, 0, vec![envelope(account, 1, opened())], &key);
    let results = store.append_batch(std::slice::from_ref(&lone)).await;
    assert!(matches!(results.as_slice(), [Ok(())]), "{results:?}");
    assert_eq!(load(store, account).await, lone.events);
    assert_eq!(
        up("find_response", store.find_response(&key.key).await),
        lone.claim
    );
    // Claimed now: the same claim again is refused and appends nothing.
    let again = claiming(account, 1, deposits(account, 1, 1, 5), &key);
    let results = store.append_batch(std::slice::from_ref(&again)).await;
    assert!(
        matches!(results.as_slice(), [Err(AppendError::KeyClaimed)]),
        "{results:?}"
    );
    assert_eq!(load(store, account).await, lone.events);
}
