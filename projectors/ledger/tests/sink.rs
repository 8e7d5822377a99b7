//! The ledger's store and sink against the real MySQL (MariaDB) of the local stack.
//!
//! Every test opens its own control database (`prism_tests::unique("t_ledger")`) and drops
//! it and its generations at the end, whether the test passed or not.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use futures::FutureExt;
use prism_events::event::{
    AccountFrozen, CardPayment, CardPaymentApproved, CardPaymentDeclined, DeclineReason,
    MoneyDeposited,
};
use prism_events::testing::{self, deposited, withdrawn};
use prism_events::{AccountEvent, AccountId, Envelope};
use prism_ledger::sink::{fold_batch, MySqlSink};
use prism_ledger::store::{
    account_version, partition_positions, GenerationState, Ledger, LiveModel,
};
use prism_projector::testing::batch;
use prism_projector::{AccountVersion, Batch, PositionUpdate, Sink, SinkError};
use sqlx::{MySqlPool, Row};
use uuid::Uuid;

/// Runs `body` against a fresh ledger, then drops every database it made.
async fn with_ledger<F, Fut>(body: F)
where
    F: FnOnce(Ledger) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = prism_tests::config();
    let ledger_config = prism_ledger::LedgerConfig {
        database: prism_tests::unique("t_ledger"),
        ..prism_ledger::LedgerConfig::default()
    };
    let ledger = prism_tests::up("mysql", Ledger::open(&config.mysql, &ledger_config).await);
    let outcome = AssertUnwindSafe(body(ledger.clone())).catch_unwind().await;
    let dropped = ledger.drop_everything().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    dropped.expect("dropping the test databases");
}

fn at(day: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, day, h, m, s)
        .single()
        .expect("valid time")
}

fn envelope(account: Uuid, version: u64, time: DateTime<Utc>, event: AccountEvent) -> Envelope {
    testing::envelope(event)
        .account(AccountId(account))
        .version(version)
        .at(time)
        .correlation(None)
        .build()
}

fn opened(name: &str) -> AccountEvent {
    testing::opened(name, "DE", "EUR")
}

fn payment(amount_minor: i64) -> CardPayment {
    testing::payment(amount_minor).0
}

/// version, kind, amount, balance after, channel, merchant.
type LineRow = (u64, String, i64, i64, Option<String>, Option<String>);

async fn count(pool: &MySqlPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn balance(pool: &MySqlPool, account: Uuid) -> Option<i64> {
    sqlx::query_scalar("SELECT balance_minor FROM accounts WHERE account_id = ?")
        .bind(account)
        .fetch_optional(pool)
        .await
        .expect("balance")
}

/// A fingerprint of everything a batch writes, to prove a refused batch wrote nothing.
async fn snapshot(pool: &MySqlPool) -> Vec<(String, Option<i64>)> {
    let rows = sqlx::query(
        "CHECKSUM TABLE accounts, statement_lines, daily_totals, projector_accounts, \
         projector_partitions EXTENDED",
    )
    .fetch_all(pool)
    .await
    .expect("checksum");
    rows.iter()
        .map(|r| (r.get::<String, _>(0), r.get::<Option<i64>, _>(1)))
        .collect()
}

#[tokio::test]
async fn a_batch_is_folded_and_stored_with_its_position() {
    with_ledger(|ledger| async move {
        let generation = ledger.live().await.expect("live generation");
        assert_eq!(generation.number, 1);
        let pool = generation.pool.clone();
        let sink = MySqlSink::new(generation);

        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let events = vec![
            envelope(a, 1, at(1, 9, 0, 0), opened("Ada")),
            envelope(a, 2, at(1, 10, 0, 0), deposited(10_000)),
            envelope(b, 1, at(1, 10, 30, 0), opened("Bob")),
            envelope(a, 3, at(1, 23, 59, 59), withdrawn(2_500)),
            // Next UTC day.
            envelope(
                a,
                4,
                at(2, 0, 0, 1),
                AccountEvent::CardPaymentApproved(CardPaymentApproved {
                    payment: payment(1_250),
                }),
            ),
            envelope(
                a,
                5,
                at(2, 0, 5, 0),
                AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
                    payment: payment(99_999_999),
                    decline_reason: DeclineReason::InsufficientFunds,
                }),
            ),
            envelope(b, 2, at(2, 1, 0, 0), deposited(700)),
            envelope(
                a,
                6,
                at(2, 2, 0, 0),
                AccountEvent::AccountFrozen(AccountFrozen {
                    reason: "card stolen".into(),
                }),
            ),
        ];
        let last_id = events[7].id;
        let b_deposit = events[6].id;
        sink.apply(&batch(events, 3, None, 41))
            .await
            .expect("applied");

        // Accounts.
        let row = sqlx::query(
            "SELECT holder_name, email, country, currency, status, balance_minor, frozen_reason, \
             opened_at, updated_at, closed_at, version FROM accounts WHERE account_id = ?",
        )
        .bind(a)
        .fetch_one(&pool)
        .await
        .expect("account a");
        assert_eq!(row.get::<String, _>("holder_name"), "Ada");
        assert_eq!(row.get::<String, _>("email"), "ada@example.org");
        assert_eq!(row.get::<String, _>("country"), "DE");
        assert_eq!(row.get::<String, _>("currency"), "EUR");
        assert_eq!(row.get::<String, _>("status"), "frozen");
        assert_eq!(row.get::<i64, _>("balance_minor"), 10_000 - 2_500 - 1_250);
        assert_eq!(
            row.get::<Option<String>, _>("frozen_reason").as_deref(),
            Some("card stolen")
        );
        assert_eq!(row.get::<DateTime<Utc>, _>("opened_at"), at(1, 9, 0, 0));
        assert_eq!(row.get::<DateTime<Utc>, _>("updated_at"), at(2, 2, 0, 0));
        assert_eq!(row.get::<Option<DateTime<Utc>>, _>("closed_at"), None);
        assert_eq!(row.get::<u64, _>("version"), 6);
        assert_eq!(balance(&pool, b).await, Some(700));

        // Statement lines with the balance after each.
        let lines: Vec<LineRow> = sqlx::query_as(
            "SELECT version, kind, amount_minor, balance_after_minor, channel, merchant_name \
             FROM statement_lines WHERE account_id = ? ORDER BY version",
        )
        .bind(a)
        .fetch_all(&pool)
        .await
        .expect("lines");
        assert_eq!(
            lines,
            vec![
                (2, "deposit".into(), 10_000, 10_000, None, None),
                (
                    3,
                    "withdrawal".into(),
                    -2_500,
                    7_500,
                    Some("atm".into()),
                    None
                ),
                (
                    4,
                    "card_payment".into(),
                    -1_250,
                    6_250,
                    Some("pos".into()),
                    Some("Café Rosa".into())
                ),
            ]
        );
        assert_eq!(count(&pool, "statement_lines").await, 4);

        // Daily totals per UTC day.
        let totals: Vec<(NaiveDate, i64, i64, u32, u32, u32, u32)> = sqlx::query_as(
            "SELECT day, credits_minor, debits_minor, deposits, withdrawals, card_payments, \
             declined_payments FROM daily_totals WHERE account_id = ? ORDER BY day",
        )
        .bind(a)
        .fetch_all(&pool)
        .await
        .expect("totals");
        let day = |d| NaiveDate::from_ymd_opt(2025, 3, d).expect("date");
        assert_eq!(
            totals,
            vec![
                (day(1), 10_000, 2_500, 1, 1, 0, 0),
                (day(2), 0, 1_250, 0, 0, 1, 1),
            ]
        );

        // Versions and position.
        assert_eq!(account_version(&pool, a).await.expect("version"), Some(6));
        assert_eq!(account_version(&pool, b).await.expect("version"), Some(2));
        assert_eq!(
            account_version(&pool, Uuid::now_v7())
                .await
                .expect("version"),
            None
        );
        let versions = sink.versions(&[a, b]).await.expect("versions");
        assert_eq!(versions, HashMap::from([(a, 6), (b, 2)]));
        let event_id: Uuid =
            sqlx::query_scalar("SELECT event_id FROM projector_accounts WHERE account_id = ?")
                .bind(b)
                .fetch_one(&pool)
                .await
                .expect("event id");
        assert_eq!(event_id, b_deposit);

        let positions = sink.positions(&[3]).await.expect("positions");
        assert_eq!(positions.len(), 1);
        assert_eq!(positions[0].offset, 41);
        assert_eq!(positions[0].event_id, Some(last_id));
        assert_eq!(positions[0].event_time, Some(at(2, 2, 0, 0)));

        // A second batch builds on the first; a day's totals are incremented.
        let more = vec![envelope(b, 3, at(2, 5, 0, 0), deposited(300))];
        sink.apply(&batch(more, 3, Some(41), 42))
            .await
            .expect("second batch");
        assert_eq!(balance(&pool, b).await, Some(1_000));
        let (credits, deposits): (i64, u32) = sqlx::query_as(
            "SELECT credits_minor, deposits FROM daily_totals WHERE account_id = ? AND day = ?",
        )
        .bind(b)
        .bind(day(2))
        .fetch_one(&pool)
        .await
        .expect("totals of b");
        assert_eq!((credits, deposits), (1_000, 2));
    })
    .await;
}

#[tokio::test]
async fn the_same_batch_twice_is_fenced_and_changes_nothing() {
    with_ledger(|ledger| async move {
        let generation = ledger.live().await.expect("live");
        let pool = generation.pool.clone();
        let sink = MySqlSink::new(generation);
        let a = Uuid::now_v7();

        // First writer of the partition: expected None.
        let first = batch(
            vec![
                envelope(a, 1, at(1, 9, 0, 0), opened("Ada")),
                envelope(a, 2, at(1, 9, 1, 0), deposited(500)),
            ],
            0,
            None,
            7,
        );
        sink.apply(&first).await.expect("first");
        let before = snapshot(&pool).await;
        match sink.apply(&first).await {
            Err(SinkError::Fenced { partition, stored }) => {
                assert_eq!((partition, stored), (0, Some(7)))
            }
            other => panic!("expected Fenced, got {other:?}"),
        }
        assert_eq!(snapshot(&pool).await, before);

        // Then with an expected offset.
        let second = batch(
            vec![envelope(a, 3, at(1, 9, 2, 0), deposited(100))],
            0,
            Some(7),
            9,
        );
        sink.apply(&second).await.expect("second");
        let before = snapshot(&pool).await;
        match sink.apply(&second).await {
            Err(SinkError::Fenced { partition, stored }) => {
                assert_eq!((partition, stored), (0, Some(9)))
            }
            other => panic!("expected Fenced, got {other:?}"),
        }
        assert_eq!(snapshot(&pool).await, before);
        assert_eq!(balance(&pool, a).await, Some(600));

        // Expecting a position on a partition that has none is fenced too.
        let elsewhere = batch(
            vec![envelope(a, 4, at(1, 9, 3, 0), deposited(1))],
            5,
            Some(3),
            4,
        );
        assert!(matches!(
            sink.apply(&elsewhere).await,
            Err(SinkError::Fenced {
                partition: 5,
                stored: None
            })
        ));
        assert_eq!(snapshot(&pool).await, before);
    })
    .await;
}

#[tokio::test]
async fn a_rejected_event_writes_nothing_and_is_named_by_index() {
    with_ledger(|ledger| async move {
        let generation = ledger.live().await.expect("live");
        let pool = generation.pool.clone();
        let sink = MySqlSink::new(generation);
        let a = Uuid::now_v7();
        let unknown = Uuid::now_v7();
        let before = snapshot(&pool).await;

        let events = vec![
            envelope(a, 1, at(1, 9, 0, 0), opened("Ada")),
            envelope(a, 2, at(1, 9, 1, 0), deposited(500)),
            envelope(unknown, 4, at(1, 9, 2, 0), deposited(1)),
            envelope(a, 3, at(1, 9, 3, 0), deposited(5)),
        ];
        match sink.apply(&batch(events, 1, None, 12)).await {
            Err(SinkError::Rejected { index, reason }) => {
                assert_eq!(index, 2);
                assert!(reason.contains("never opened"), "{reason}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(snapshot(&pool).await, before);
        assert!(sink.positions(&[1]).await.expect("positions").is_empty());

        // Overflow, caught by the fold across batches.
        sink.apply(&batch(
            vec![
                envelope(a, 1, at(1, 9, 0, 0), opened("Ada")),
                envelope(a, 2, at(1, 9, 1, 0), deposited(i64::MAX)),
            ],
            1,
            None,
            13,
        ))
        .await
        .expect("max balance");
        let before = snapshot(&pool).await;
        match sink
            .apply(&batch(
                vec![envelope(a, 3, at(1, 9, 2, 0), deposited(1))],
                1,
                Some(13),
                14,
            ))
            .await
        {
            Err(SinkError::Rejected { index: 0, reason }) => {
                assert!(reason.contains("overflow"), "{reason}")
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(snapshot(&pool).await, before);
    })
    .await;
}

#[tokio::test]
async fn positions_versions_and_errors_round_trip() {
    with_ledger(|ledger| async move {
        let generation = ledger.live().await.expect("live");
        let pool = generation.pool.clone();
        let sink = MySqlSink::new(generation);
        assert!(sink.positions(&[0, 1, 2]).await.expect("none").is_empty());
        assert!(sink
            .versions(&[Uuid::now_v7()])
            .await
            .expect("none")
            .is_empty());

        // An error on a partition without a row stores nothing.
        sink.record_error(0, "boom").await.expect("record error");
        assert_eq!(count(&pool, "projector_partitions").await, 0);

        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        for (partition, account) in [(0, a), (2, b)] {
            sink.apply(&batch(
                vec![envelope(account, 1, at(1, 9, 0, 0), opened("Ada"))],
                partition,
                None,
                100 + i64::from(partition),
            ))
            .await
            .expect("apply");
        }
        // A version moved past a dead-lettered event, without events.
        let dead = Uuid::now_v7();
        sink.apply(&Batch {
            events: vec![],
            offsets: vec![],
            versions: vec![AccountVersion {
                account_id: b,
                version: 2,
                event_id: dead,
            }],
            position: Some(PositionUpdate {
                partition: 2,
                expected: Some(102),
                offset: 103,
                event_id: None,
                event_time: None,
                writer: "prism-ledger/test".into(),
            }),
        })
        .await
        .expect("versions only");

        let positions = sink.positions(&[0, 1, 2]).await.expect("positions");
        assert_eq!(
            positions
                .iter()
                .map(|p| (p.partition, p.offset))
                .collect::<Vec<_>>(),
            vec![(0, 100), (2, 103)]
        );
        // The last applied event is kept when a batch applied none.
        assert!(positions[1].event_id.is_some());
        assert_ne!(positions[1].event_id, Some(dead));
        let many: Vec<Uuid> = (0..2_500).map(|_| Uuid::now_v7()).chain([a, b]).collect();
        assert_eq!(
            sink.versions(&many).await.expect("versions"),
            HashMap::from([(a, 1), (b, 2)])
        );

        // Errors are shown and kept (with their time) after later successful writes.
        let long = "x".repeat(3_000);
        sink.record_error(2, &long).await.expect("record error");
        sink.record_error(0, "kafka: broker down")
            .await
            .expect("record");
        let rows = partition_positions(&pool).await.expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].last_error.as_deref(), Some("kafka: broker down"));
        assert!(rows[0].last_error_at.is_some());
        assert_eq!(rows[0].writer, "prism-projector/test");
        assert_eq!(
            rows[1].last_error.as_ref().map(|e| e.chars().count()),
            Some(2_000)
        );
        assert_eq!(rows[1].offset, 103);

        sink.apply(&batch(
            vec![envelope(a, 2, at(1, 9, 5, 0), deposited(5))],
            0,
            Some(100),
            104,
        ))
        .await
        .expect("apply");
        let rows = partition_positions(&pool).await.expect("rows");
        // A later successful write keeps the error (with its time) for `prismctl status`.
        assert_eq!(
            (rows[0].offset, rows[0].last_error.as_deref()),
            (104, Some("kafka: broker down"))
        );
        assert!(rows[0].last_error_at.is_some());
        assert!(rows[1].last_error.is_some(), "other partitions keep theirs");
    })
    .await;
}

#[tokio::test]
async fn promote_switches_the_live_generation_atomically() {
    with_ledger(|ledger| async move {
        assert_eq!(ledger.live_number().await.expect("number"), None);
        let first = ledger.live().await.expect("live");
        assert_eq!(first.number, 1);
        assert_eq!(first.database, format!("{}_g1", ledger.control_database()));
        assert_eq!(ledger.live().await.expect("again").number, 1);

        let shutdown = tokio_util::sync::CancellationToken::new();
        let _stop_poller = shutdown.clone().drop_guard();
        let model = LiveModel::start(
            Arc::new(ledger.clone()),
            Duration::from_millis(20),
            shutdown,
        )
        .await
        .expect("live model");
        assert_eq!(model.current().number, 1);

        let next = ledger.create_next().await.expect("next");
        assert_eq!(next.number, 2);
        // The new generation has the model's tables and is not served yet.
        assert_eq!(count(&next.pool, "accounts").await, 0);
        assert_eq!(ledger.live_number().await.expect("number"), Some(1));
        let list = ledger.list().await.expect("list");
        assert_eq!(
            list.iter().map(|g| (g.number, g.state)).collect::<Vec<_>>(),
            vec![(1, GenerationState::Live), (2, GenerationState::Building)]
        );

        ledger.promote(2).await.expect("promote");
        assert_eq!(ledger.live_number().await.expect("number"), Some(2));
        let list = ledger.list().await.expect("list");
        assert_eq!(
            list.iter().map(|g| (g.number, g.state)).collect::<Vec<_>>(),
            vec![(1, GenerationState::Retired), (2, GenerationState::Live)]
        );
        assert!(list[1].live_since.is_some());
        assert_eq!(ledger.live().await.expect("live").number, 2);

        // Never zero or two live generations, whoever looks, while promotions race.
        let racers: Vec<_> = (0..4)
            .map(|i| {
                let ledger = ledger.clone();
                tokio::spawn(async move { ledger.promote(1 + (i % 2)).await })
            })
            .collect();
        let watcher = {
            let pool = ledger.control_pool().clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let live: i64 =
                        sqlx::query_scalar("SELECT COUNT(*) FROM generations WHERE state = 'live'")
                            .fetch_one(&pool)
                            .await
                            .expect("count");
                    assert_eq!(live, 1);
                }
            })
        };
        for r in racers {
            r.await.expect("join").expect("promote");
        }
        watcher.await.expect("watcher");
        assert!(ledger.promote(99).await.is_err());

        // The live model follows.
        ledger.promote(2).await.expect("promote");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while model.current().number != 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "live model did not switch"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn drop_retired_drops_only_retired_generations() {
    with_ledger(|ledger| async move {
        ledger.live().await.expect("g1");
        let g2 = ledger.create_next().await.expect("g2");
        ledger.promote(g2.number).await.expect("promote g2");
        let g3 = ledger.create_next().await.expect("g3");
        ledger.promote(g3.number).await.expect("promote g3");
        let g4 = ledger.create_next().await.expect("g4");
        assert_eq!(g4.number, 4);

        let control = ledger.control_database().to_owned();
        let dropped = ledger.drop_retired().await.expect("drop");
        assert_eq!(
            dropped,
            vec![format!("{control}_g1"), format!("{control}_g2")]
        );
        let list = ledger.list().await.expect("list");
        assert_eq!(
            list.iter().map(|g| (g.number, g.state)).collect::<Vec<_>>(),
            vec![(3, GenerationState::Live), (4, GenerationState::Building)]
        );
        let schemas: Vec<String> = sqlx::query_scalar(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ? \
             ORDER BY SCHEMA_NAME",
        )
        .bind(format!("{control}%"))
        .fetch_all(ledger.control_pool())
        .await
        .expect("schemas");
        assert_eq!(
            schemas,
            vec![
                control.clone(),
                format!("{control}_g3"),
                format!("{control}_g4")
            ]
        );
        assert!(ledger.drop_retired().await.expect("again").is_empty());
        assert!(ledger.generation(1).await.is_err());
        assert_eq!(ledger.generation(4).await.expect("g4").number, 4);
    })
    .await;
}

#[tokio::test]
async fn a_batch_of_2000_events_is_written_in_chunks() {
    with_ledger(|ledger| async move {
        let generation = ledger.live().await.expect("live");
        let pool = generation.pool.clone();
        let sink = MySqlSink::new(generation);
        let accounts: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
        let mut events = Vec::new();
        for (i, a) in accounts.iter().enumerate() {
            let name = format!("Holder {i} {}", "é".repeat(150));
            events.push(envelope(*a, 1, at(1, 8, 0, 0), opened(&name)));
        }
        for v in 2..=4 {
            for a in &accounts {
                events.push(envelope(
                    *a,
                    v,
                    at(1, 9, 0, 0),
                    AccountEvent::MoneyDeposited(MoneyDeposited {
                        amount_minor: 100,
                        description: Some("d".repeat(500)),
                    }),
                ));
            }
        }
        assert_eq!(events.len(), 2_000);
        sink.apply(&batch(events, 0, None, 1_999))
            .await
            .expect("2,000 events");
        assert_eq!(count(&pool, "accounts").await, 500);
        assert_eq!(count(&pool, "statement_lines").await, 1_500);
        assert_eq!(count(&pool, "daily_totals").await, 500);
        assert_eq!(count(&pool, "projector_accounts").await, 500);
        let total: i64 =
            sqlx::query_scalar("SELECT CAST(SUM(balance_minor) AS SIGNED) FROM accounts")
                .fetch_one(&pool)
                .await
                .expect("sum");
        assert_eq!(total, 500 * 300);
        let deposits: i64 =
            sqlx::query_scalar("SELECT CAST(SUM(deposits) AS SIGNED) FROM daily_totals")
                .fetch_one(&pool)
                .await
                .expect("sum");
        assert_eq!(deposits, 1_500);
    })
    .await;
}

#[tokio::test]
async fn write_rows_stores_prefolded_rows_with_the_same_fence() {
    with_ledger(|ledger| async move {
        let generation = ledger.live().await.expect("live");
        let pool = generation.pool.clone();
        let sink = MySqlSink::new(generation);
        let a = Uuid::now_v7();
        let events = vec![
            envelope(a, 1, at(1, 9, 0, 0), opened("Ada")),
            envelope(a, 2, at(1, 9, 1, 0), deposited(40)),
        ];
        let mut state = HashMap::new();
        let b = batch(events, 0, None, 1);
        let mut writes = fold_batch(&mut state, &b.events).expect("fold");
        writes.versions.clone_from(&b.versions);
        writes.position.clone_from(&b.position);
        sink.write_rows(&writes).await.expect("write rows");
        assert_eq!(balance(&pool, a).await, Some(40));
        assert_eq!(state.get(&a).map(|r| r.balance_minor), Some(40));
        assert!(matches!(
            sink.write_rows(&writes).await,
            Err(SinkError::Fenced { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn a_fenced_write_forgets_the_cached_accounts() {
    with_ledger(|ledger| async move {
        let generation = ledger.live().await.expect("live generation");
        let pool = generation.pool.clone();
        let ours = MySqlSink::new(generation.clone());
        let theirs = MySqlSink::new(generation);
        let a = Uuid::now_v7();

        // We write versions 1-2 (and cache the row), then another writer writes version 3.
        ours.apply(&batch(
            vec![
                envelope(a, 1, at(1, 9, 0, 0), opened("Ada")),
                envelope(a, 2, at(1, 9, 1, 0), deposited(100)),
            ],
            0,
            None,
            1,
        ))
        .await
        .expect("our first batch");
        theirs
            .apply(&batch(
                vec![envelope(a, 3, at(1, 9, 2, 0), deposited(50))],
                0,
                Some(1),
                2,
            ))
            .await
            .expect("their batch");

        // Our next write still expects offset 1: fenced.
        let next = vec![envelope(a, 4, at(1, 9, 3, 0), deposited(7))];
        let fenced = ours.apply(&batch(next.clone(), 0, Some(1), 3)).await;
        assert!(
            matches!(fenced, Err(SinkError::Fenced { .. })),
            "{fenced:?}"
        );
        // After re-reading the position, the write must build on their row, not our cache.
        ours.apply(&batch(next, 0, Some(2), 3))
            .await
            .expect("our batch after the fence");
        assert_eq!(balance(&pool, a).await, Some(157));
    })
    .await;
}
