//! The ledger projector end to end, in-process (`prism_ledger::app::run` on a port-0
//! listener) against the real Kafka and MySQL: events produced straight to a topic of the
//! test's own (CloudEvents binary mode, as the relay does), read back through the HTTP API,
//! `/metrics`, `/readyz`, the dead-letter topic and the model's tables.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use prism_events::event::DeclineReason;
use prism_events::kafka::{H_SCHEMA_VERSION, H_TYPE};
use prism_projector::dlq;
use serde_json::{json, Value};
use support::{
    assert_same, closed, count, day, declined, deposited, eventually, frozen, isolated,
    last_versions, opened, paid, snapshot, unfrozen, wait_versions, withdrawn, Account, Feed,
    PROJECTOR,
};

const CATCH_UP: Duration = Duration::from_secs(30);

/// account (hex), day, credits, debits, deposits, withdrawals, card payments, declines.
type DailyRow = (String, String, i64, i64, u32, u32, u32, u32);

/// The fields of a statement line the test checks.
fn line(v: &Value) -> (u64, String, i64, i64) {
    (
        v["version"].as_u64().unwrap_or(0),
        v["kind"].as_str().unwrap_or("").to_owned(),
        v["amount_minor"].as_i64().unwrap_or(0),
        v["balance_after_minor"].as_i64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_applied_to_balances_statements_and_daily_totals() {
    isolated(2, |env| async move {
        let projector = env.start_projector().await;
        let mut a = Account::new(0);
        let mut b = Account::new(1);
        let mut c = Account::new(0);
        let events = vec![
            a.next(day(1, 9, 0), opened("Ada Lovelace", "DE", "EUR")),
            b.next(day(1, 9, 5), opened("Alan Turing", "GB", "GBP")),
            a.next(day(1, 10, 0), deposited(10_000)),
            c.next(day(1, 10, 30), opened("Grace Hopper", "FR", "EUR")),
            a.next(day(1, 11, 0), withdrawn(3_000)),
            b.next(day(1, 11, 0), deposited(700)),
            a.next(day(1, 12, 0), paid(1_250, "Café Rosa")),
            a.next(
                day(1, 13, 0),
                declined(99_999, DeclineReason::InsufficientFunds),
            ),
            b.next(day(1, 14, 0), withdrawn(700)),
            c.next(day(1, 15, 0), frozen("card stolen")),
            a.next(day(2, 9, 0), deposited(500)),
            a.next(day(2, 10, 0), frozen("suspicious login")),
            b.next(day(2, 10, 0), closed()),
            a.next(day(2, 11, 0), unfrozen()),
        ];
        env.send_all(&events).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&events), CATCH_UP).await;

        // Accounts.
        let account = projector.account(&a.id).await.expect("account a");
        assert_eq!(account["balance_minor"], 6_250, "{account}");
        assert_eq!(account["status"], "open", "{account}");
        assert_eq!(account["frozen_reason"], Value::Null, "{account}");
        assert_eq!(account["version"], 8, "{account}");
        assert_eq!(account["currency"], "EUR", "{account}");
        assert_eq!(account["country"], "DE", "{account}");
        assert_eq!(account["holder_name"], "Ada Lovelace", "{account}");
        assert_eq!(account["opened_at"], "2025-03-01T09:00:00.000000Z");
        assert_eq!(account["updated_at"], "2025-03-02T11:00:00.000000Z");
        let account = projector.account(&b.id).await.expect("account b");
        assert_eq!(account["balance_minor"], 0, "{account}");
        assert_eq!(account["status"], "closed", "{account}");
        assert_eq!(account["closed_at"], "2025-03-02T10:00:00.000000Z");
        assert_eq!(account["currency"], "GBP", "{account}");
        assert_eq!(account["version"], 4, "{account}");
        let account = projector.account(&c.id).await.expect("account c");
        assert_eq!(account["status"], "frozen", "{account}");
        assert_eq!(account["frozen_reason"], "card stolen", "{account}");
        assert_eq!(account["balance_minor"], 0, "{account}");

        // Statements: money events only, newest first, with the running balance.
        let lines = projector.statement(&a.id).await;
        let got: Vec<_> = lines.iter().map(line).collect();
        assert_eq!(
            got,
            vec![
                (6, "deposit".into(), 500, 6_250),
                (4, "card_payment".into(), -1_250, 5_750),
                (3, "withdrawal".into(), -3_000, 7_000),
                (2, "deposit".into(), 10_000, 10_000),
            ],
            "{lines:?}"
        );
        assert_eq!(lines[1]["merchant_name"], "Café Rosa");
        assert_eq!(lines[1]["merchant_category"], "5814");
        assert_eq!(lines[1]["channel"], "pos");
        assert_eq!(lines[2]["channel"], "atm");
        assert_eq!(lines[3]["currency"], "EUR");
        assert_eq!(lines[3]["occurred_at"], "2025-03-01T10:00:00.000000Z");
        assert_eq!(lines[3]["event_id"], json!(events[2].0.id));
        let got: Vec<_> = projector.statement(&b.id).await.iter().map(line).collect();
        assert_eq!(
            got,
            vec![
                (3, "withdrawal".into(), -700, 0),
                (2, "deposit".into(), 700, 700)
            ]
        );
        assert!(projector.statement(&c.id).await.is_empty());

        // The listing filters by status.
        let frozen_list = projector.get("/v1/accounts?status=frozen", &[]).await;
        assert_eq!(frozen_list.status, 200);
        let ids: Vec<&str> = frozen_list.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["account_id"].as_str())
            .collect();
        assert_eq!(ids, vec![c.id.to_string()]);

        // Daily totals (no HTTP endpoint serves them: read the table).
        let daily: Vec<DailyRow> = sqlx::query_as(
            "SELECT HEX(account_id), CAST(day AS CHAR), credits_minor, debits_minor, deposits, \
             withdrawals, card_payments, declined_payments FROM daily_totals \
             WHERE account_id IN (?, ?, ?) ORDER BY account_id, day",
        )
        .bind(a.id.0)
        .bind(b.id.0)
        .bind(c.id.0)
        .fetch_all(&pool)
        .await
        .expect("daily totals");
        let hex = |id: &Account| id.id.0.simple().to_string().to_uppercase();
        let mut want = vec![
            (hex(&a), "2025-03-01".to_owned(), 10_000, 4_250, 1, 1, 1, 1),
            (hex(&a), "2025-03-02".to_owned(), 500, 0, 1, 0, 0, 0),
            (hex(&b), "2025-03-01".to_owned(), 700, 700, 1, 1, 0, 0),
        ];
        want.sort();
        assert_eq!(daily, want);

        assert_eq!(projector.wait_events("applied", 14, CATCH_UP).await, 14);
        assert_eq!(projector.events_total("skipped").await, 0);
        assert_eq!(projector.events_total("dead_lettered").await, 0);
        projector.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_on_the_topic_are_skipped_and_counted() {
    let mut feed = Feed::new(7, 12, 2);
    let events = feed.take(160);
    let reference_events = events.clone();
    // The reference: every event once.
    let reference = tokio::spawn(isolated(2, |env| async move {
        let projector = env.start_projector().await;
        env.send_all(&reference_events).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&reference_events), CATCH_UP).await;
        assert_eq!(projector.wait_events("applied", 160, CATCH_UP).await, 160);
        assert_eq!(projector.events_total("skipped").await, 0);
        let snapshot = snapshot(&pool).await;
        projector.stop().await;
        snapshot
    }));

    isolated(2, |env| async move {
        let projector = env.start_projector().await;
        // 1. The first 100 events, each twice in a row (duplicates inside one batch).
        let doubled: Vec<_> = events[..100]
            .iter()
            .flat_map(|e| [e.clone(), e.clone()])
            .collect();
        env.send_all(&doubled).await;
        // 2. All 150: the first 100 again (a relay re-sending what Kafka had), 50 new.
        env.send_all(&events[..150]).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&events[..150]), CATCH_UP).await;
        // 3. Later, an old version once more, then new events.
        env.send_all(&events[10..11]).await;
        env.send_all(&events[150..]).await;
        wait_versions(&pool, &last_versions(&events), CATCH_UP).await;
        let skipped = projector.wait_events("skipped", 201, CATCH_UP).await;
        assert_eq!(skipped, 201, "skipped duplicates");
        assert_eq!(projector.wait_events("applied", 160, CATCH_UP).await, 160);
        assert_eq!(projector.events_total("dead_lettered").await, 0);

        let reference = reference.await.expect("the reference run");
        let ours = snapshot(&pool).await;
        assert_eq!(
            ours.lines.len(),
            count(&pool, "statement_lines").await as usize
        );
        assert_same("duplicated topic vs. every event once", &reference, &ours);
        projector.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_reset_to_the_beginning_change_nothing_the_projector_resumes_from_its_position() {
    isolated(2, |env| async move {
        let mut feed = Feed::new(11, 8, 2);
        let events = feed.take(80);
        let projector = env.start_projector().await;
        env.send_all(&events).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&events), CATCH_UP).await;
        projector.stop().await;
        let before = snapshot(&pool).await;
        let ends = env.end_offsets();
        let committed = env.committed();
        assert_eq!(
            committed,
            ends.iter().map(|(p, o)| (*p, Some(*o))).collect(),
            "a graceful stop commits the stored positions"
        );

        // Like `kafka-consumer-groups --reset-offsets --to-earliest --execute`.
        env.reset_committed(0);
        assert!(
            env.committed().values().all(|o| *o == Some(0)),
            "{:?}",
            env.committed()
        );

        let projector = env.start_projector().await;
        projector.wait_assigned(env.partitions(), CATCH_UP).await;
        // It starts from the positions stored with the model, not from Kafka's offsets:
        // nothing is applied or counted again, and it commits its positions back.
        let want: std::collections::BTreeMap<i32, Option<i64>> =
            ends.iter().map(|(p, o)| (*p, Some(*o))).collect();
        let (env_ref, want_ref) = (&*env, &want);
        eventually(
            "the committed offsets back at the stored positions",
            CATCH_UP,
            || async move { (env_ref.committed() == *want_ref).then_some(()) },
        )
        .await;
        assert_eq!(projector.events_total("applied").await, 0);
        assert_eq!(projector.events_total("skipped").await, 0);
        assert_eq!(projector.events_total("dead_lettered").await, 0);
        assert_same("after the offset reset", &before, &snapshot(&pool).await);

        // And it goes on from there.
        let more = feed.take(1);
        env.send_all(&more).await;
        wait_versions(&pool, &last_versions(&more), CATCH_UP).await;
        assert_eq!(projector.wait_events("applied", 1, CATCH_UP).await, 1);
        assert_eq!(projector.events_total("skipped").await, 0);
        let after = snapshot(&pool).await;
        assert_eq!(after.accounts.len(), before.accounts.len());
        assert!(after.lines.len() <= before.lines.len() + 1);
        projector.stop().await;

        // The other way round: events arrive while it is stopped, then the offsets are
        // moved to the end. Kafka's offsets would skip them; the stored positions do not.
        let missed = feed.take(20);
        env.send_all(&missed).await;
        let ends = env.end_offsets();
        for (partition, end) in &ends {
            env.reset_committed_partition(*partition, *end);
        }
        let projector = env.start_projector().await;
        wait_versions(&pool, &last_versions(&missed), CATCH_UP).await;
        assert_eq!(projector.wait_events("applied", 20, CATCH_UP).await, 20);
        assert_eq!(projector.events_total("skipped").await, 0);
        projector.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_later_events_applied() {
    isolated(2, |env| async move {
        let projector = env.start_projector().await;
        let mut a = Account::new(0);
        let mut b = Account::new(0);
        let mut c = Account::new(1);
        let t = |m| day(3, 9, m);
        env.send_all(&[
            a.next(t(0), opened("Ada Lovelace", "DE", "EUR")),
            a.next(t(1), deposited(1_000)),
            b.next(t(2), opened("Alan Turing", "DE", "EUR")),
            c.next(t(3), opened("Grace Hopper", "DE", "EUR")),
        ])
        .await;

        // Template: what a valid v3 of a would look like.
        let valid_a = prism_events::kafka::encode(&a.envelope(3, t(4), deposited(5)));
        let headers = |record: &prism_events::kafka::KafkaRecord,
                       replace: &[(&'static str, &str)]| {
            record
                .headers
                .iter()
                .map(|(k, v)| {
                    let value = replace
                        .iter()
                        .find(|(name, _)| name == k)
                        .map_or(v.as_str(), |(_, new)| *new);
                    (*k, value.as_bytes().to_vec())
                })
                .collect::<Vec<_>>()
        };
        let mut poison = Vec::new();
        // 1. Garbage JSON with a's valid headers.
        let garbage = env
            .send_raw(
                Some(valid_a.key.as_bytes()),
                &headers(&valid_a, &[]),
                Some(b"{not json"),
                0,
            )
            .await;
        poison.push((garbage, "value"));
        // 2. No headers at all. (An unknown event type or a schema version from the future
        // is not poison: see `an_event_from_a_newer_writer_holds_its_partition...`.)
        let bare = env
            .send_raw(Some(b"not-an-account"), &[], Some(b"hello"), 0)
            .await;
        poison.push((bare, "missing ce_specversion"));
        // 3. The same garbage on the other partition.
        let valid_c = prism_events::kafka::encode(&c.envelope(2, t(4), deposited(5)));
        let other = env
            .send_raw(
                Some(valid_c.key.as_bytes()),
                &headers(&valid_c, &[]),
                Some(b"[1, 2"),
                1,
            )
            .await;
        poison.push((other, "value"));

        // Later events on the same partitions, same and other accounts.
        let later = vec![
            a.next(t(5), deposited(500)),
            b.next(t(6), deposited(700)),
            c.next(t(7), deposited(300)),
            a.next(t(8), withdrawn(200)),
        ];
        env.send_all(&later).await;
        // Events that decode but that the ledger's fold refuses: money for an account that
        // was never opened, a deposit of nothing. Retried, then dead-lettered; the rest of
        // their batch is written. The refused account's later event cannot follow the
        // missing one (the fold never skips a version): it is dead-lettered too, and the
        // account keeps its last true state until a rebuild.
        let mut never_opened = Account::new(1);
        let refused = vec![
            never_opened.next(t(9), deposited(5)),
            a.next(t(10), deposited(0)),
            a.next(t(11), deposited(1)),
        ];
        for (envelope, partition) in &refused {
            let at = env.send(envelope, *partition).await;
            poison.push((
                at,
                if envelope.account_id != a.id {
                    "never opened"
                } else if envelope.account_version == 5 {
                    "must be positive"
                } else {
                    "cannot be applied without it"
                },
            ));
        }
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&later), CATCH_UP).await;
        wait_versions(&pool, &last_versions(&refused[1..]), CATCH_UP).await;

        let account = projector.account(&a.id).await.expect("a");
        assert_eq!(account["balance_minor"], 1_300, "{account}");
        assert_eq!(account["version"], 4, "{account}");
        assert!(projector.account(&never_opened.id).await.is_none());
        let versions: Vec<u64> = projector
            .statement(&a.id)
            .await
            .iter()
            .map(|l| l["version"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(
            versions,
            vec![4, 3, 2],
            "no line for the refused v5 nor for v6"
        );
        let account = projector.account(&b.id).await.expect("b");
        assert_eq!(account["balance_minor"], 700, "{account}");
        assert_eq!(account["version"], 2, "{account}");
        let account = projector.account(&c.id).await.expect("c");
        assert_eq!(account["balance_minor"], 300, "{account}");

        let letters = env.dead_letters(poison.len(), CATCH_UP);
        assert_eq!(
            letters.len(),
            poison.len(),
            "dead letters: {:?}",
            letters.iter().map(|l| l.error()).collect::<Vec<_>>()
        );
        for ((partition, offset), cause) in &poison {
            let letter = letters
                .iter()
                .find(|l| l.original() == (*partition, *offset))
                .unwrap_or_else(|| {
                    panic!("no dead letter for partition {partition} offset {offset}")
                });
            assert_eq!(letter.header(dlq::H_PROJECTOR).as_deref(), Some(PROJECTOR));
            assert_eq!(
                letter.header(dlq::H_TOPIC).as_deref(),
                Some(env.config.kafka.topic.as_str())
            );
            let error = letter.error();
            assert!(
                error.contains(cause),
                "partition {partition} offset {offset}: error {error:?} should name {cause:?}"
            );
            assert!(letter.header(dlq::H_FAILED_AT).is_some());
        }
        // The original record travels as it was: key, value, CloudEvents headers.
        let first = letters
            .iter()
            .find(|l| l.original() == poison[0].0)
            .expect("the garbage letter");
        assert_eq!(first.payload.as_deref(), Some(&b"{not json"[..]));
        assert_eq!(first.key.as_deref(), Some(valid_a.key.as_bytes()));
        assert_eq!(
            first.header("ce_accountversion").as_deref(),
            Some("3"),
            "original headers are kept"
        );
        assert_eq!(projector.wait_events("dead_lettered", 6, CATCH_UP).await, 6);
        assert_eq!(projector.wait_events("applied", 8, CATCH_UP).await, 8);
        projector.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_gap_is_dead_lettered_after_the_retries_and_other_accounts_go_on() {
    isolated(2, |env| async move {
        let projector = env.start_projector().await;
        let mut g = Account::new(0);
        let mut h = Account::new(0);
        let mut i = Account::new(1);
        let t = |m| day(4, 9, m);
        env.send_all(&[
            g.next(t(0), opened("Gap Holder", "DE", "EUR")),
            g.next(t(1), deposited(1_000)),
            h.next(t(2), opened("Same Partition", "DE", "EUR")),
            i.next(t(3), opened("Other Partition", "DE", "EUR")),
        ])
        .await;
        // v3 and v4 never come.
        let v5 = g.envelope(5, t(4), deposited(999));
        let (_, v5_offset) = env.send(&v5, 0).await;
        let later = vec![h.next(t(5), deposited(70)), i.next(t(6), deposited(80))];
        env.send_all(&later).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&later), CATCH_UP).await;

        let letters = env.dead_letters(1, CATCH_UP);
        assert_eq!(
            letters.len(),
            1,
            "{:?}",
            letters.iter().map(|l| l.error()).collect::<Vec<_>>()
        );
        let letter = &letters[0];
        assert_eq!(letter.original(), (0, v5_offset));
        assert!(letter.error().contains("version gap"), "{}", letter.error());
        assert!(
            letter.error().contains(&g.id.to_string()),
            "{}",
            letter.error()
        );
        assert_eq!(letter.header("ce_id"), Some(v5.id.to_string()));
        // Only after the retries: 50 + 100 + 200 + 400 + 800 ms of back-off at least.
        let original = letter.timestamp_ms.expect("the dead letter's timestamp");
        let produced = support::read_topic(&env.config, &env.config.kafka.topic, 7, CATCH_UP)
            .iter()
            .find(|r| r.partition == 0 && r.offset == v5_offset)
            .and_then(|r| r.timestamp_ms)
            .expect("the v5 record");
        assert!(
            original - produced >= 1_500,
            "dead-lettered {} ms after it was produced: before the gap retries ran out",
            original - produced
        );

        // g stays at v2; the others are applied.
        let account = projector.account(&g.id).await.expect("g");
        assert_eq!(account["version"], 2, "{account}");
        assert_eq!(account["balance_minor"], 1_000, "{account}");
        assert_eq!(
            projector.account(&h.id).await.expect("h")["balance_minor"],
            70
        );
        assert_eq!(
            projector.account(&i.id).await.expect("i")["balance_minor"],
            80
        );
        let gaps = support::metric_sum(
            &projector.metrics().await,
            "prism_projector_version_gaps_total",
            &[],
        );
        assert_eq!(gaps, 1.0);

        // A later event of the reported account goes straight to the dead letters.
        let v6 = g.envelope(6, t(7), deposited(1));
        let (_, v6_offset) = env.send(&v6, 0).await;
        let letters = env.dead_letters(2, CATCH_UP);
        assert_eq!(letters.len(), 2);
        let second = letters
            .iter()
            .find(|l| l.original() == (0, v6_offset))
            .expect("a dead letter for v6");
        assert!(second.error().contains("version gap"), "{}", second.error());
        assert_eq!(projector.account(&g.id).await.expect("g")["version"], 2);
        projector.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_and_build_the_same_model_as_one() {
    const PARTITIONS: i32 = 4;
    let mut feed = Feed::new(23, 40, PARTITIONS);
    let events = feed.take(600);
    let reference_events = events.clone();
    let reference = tokio::spawn(isolated(PARTITIONS, |env| async move {
        let projector = env.start_projector().await;
        env.send_all(&reference_events).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&reference_events), CATCH_UP).await;
        let snapshot = snapshot(&pool).await;
        projector.stop().await;
        snapshot
    }));

    isolated(PARTITIONS, |env| async move {
        let all: BTreeSet<i32> = (0..PARTITIONS).collect();
        let first = env.start_projector().await;
        env.send_all(&events[..200]).await;
        first.wait_assigned(PARTITIONS, CATCH_UP).await;
        let second = env.start_projector().await;
        // Each instance owns a part; together, all of them, once.
        let (first_ref, second_ref, all_ref) = (&first, &second, &all);
        // Generous: with every test of this file running at once on two cores, a
        // cooperative rebalance plus a first lag measurement can take a while.
        let (mine, theirs) = eventually(
            "the partitions split between two instances",
            CATCH_UP * 3,
            || async move {
                let (s1, p1, b1) = first_ref.readyz().await;
                let (s2, p2, b2) = second_ref.readyz().await;
                // Shown only if the test fails: what each instance said last.
                eprintln!("readyz: first {s1} {b1}; second {s2} {b2}");
                match (s1, p1, s2, p2) {
                    (200, Some(p1), 200, Some(p2))
                        if !p1.is_empty()
                            && !p2.is_empty()
                            && p1.is_disjoint(&p2)
                            && p1.union(&p2).copied().collect::<BTreeSet<_>>() == *all_ref =>
                    {
                        Some((p1, p2))
                    }
                    _ => None,
                }
            },
        )
        .await;
        env.send_all(&events[200..500]).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&events[..500]), CATCH_UP).await;
        // Both did part of the work.
        let mut applied_first = 0;
        let mut applied_second = 0;
        let deadline = Instant::now() + CATCH_UP;
        while Instant::now() < deadline {
            applied_first = first.events_total("applied").await;
            applied_second = second.events_total("applied").await;
            if applied_first + applied_second >= 500 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            applied_second > 0,
            "the second instance ({theirs:?}) applied nothing; the first owns {mine:?}"
        );
        assert_eq!(
            applied_first + applied_second,
            500,
            "every event applied once"
        );

        // The first leaves; the second takes over everything.
        first.stop().await;
        second.wait_assigned(PARTITIONS, CATCH_UP).await;
        env.send_all(&events[500..]).await;
        wait_versions(&pool, &last_versions(&events), CATCH_UP).await;
        assert_eq!(
            applied_first
                + second
                    .wait_events("applied", 600 - applied_first, CATCH_UP)
                    .await,
            600,
            "every event applied once"
        );
        assert_eq!(second.events_total("dead_lettered").await, 0);

        let reference = reference.await.expect("the reference run");
        assert_same("two instances vs. one", &reference, &snapshot(&pool).await);
        second.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_waits_for_the_version_it_was_promised_or_answers_processing() {
    let mut config = support::isolated_config(1);
    config.ledger.set("wait_timeout_ms", 3_000);
    support::isolated_with(config, |env| async move {
        let projector = env.start_projector().await;
        let mut w = Account::new(0);
        let t = |m| day(5, 9, m);
        let first = vec![
            w.next(t(0), opened("Wait Holder", "DE", "EUR")),
            w.next(t(1), deposited(100)),
            w.next(t(2), deposited(200)),
        ];
        env.send_all(&first).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&first), CATCH_UP).await;
        let path = format!("/v1/accounts/{}", w.id);

        // A version that arrives during the wait: the answer waits for it.
        for (header, query) in [(true, false), (false, true)] {
            let next = w.version + 1;
            let request_path = if query {
                format!("{path}?min_version={next}")
            } else {
                path.clone()
            };
            let token = w.token(next);
            let headers: Vec<(&str, &str)> = if header {
                vec![("Consistency-Token", token.as_str())]
            } else {
                vec![]
            };
            let started = Instant::now();
            let (answer, _) = tokio::join!(projector.get(&request_path, &headers), async {
                tokio::time::sleep(Duration::from_millis(700)).await;
                env.send_all(&[w.next(t(3), deposited(1))]).await;
            });
            let waited = started.elapsed();
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert_eq!(answer.body["version"], next, "{}", answer.body);
            assert!(
                waited >= Duration::from_millis(700) && waited < Duration::from_millis(3_000),
                "waited {waited:?}"
            );
        }
        let reached = w.version;
        assert_eq!(
            projector.account(&w.id).await.expect("w")["balance_minor"],
            302
        );

        // A version that never comes: 202 processing with Retry-After, at the deadline.
        let never = reached + 5;
        let token = w.token(never);
        let by_query = format!("{path}?min_version={never}");
        let token_header = [("Consistency-Token", token.as_str())];
        let started = Instant::now();
        let statement = format!("{path}/statement");
        let (by_token, by_query, on_statement, on_list) = tokio::join!(
            projector.get(&path, &token_header),
            projector.get(&by_query, &[]),
            projector.get(&statement, &token_header),
            projector.get("/v1/accounts", &token_header),
        );
        let waited = started.elapsed();
        for answer in [&by_token, &by_query, &on_statement, &on_list] {
            assert_eq!(answer.status, 202, "{}", answer.body);
            assert_eq!(
                answer.body["type"], "https://prism.dev/problems/processing",
                "{}",
                answer.body
            );
            assert_eq!(answer.header("retry-after"), Some("1"));
            assert_eq!(
                answer.header("content-type"),
                Some("application/problem+json")
            );
            let detail = answer.body["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(&format!("version {reached}")),
                "the detail says how far the model is: {detail}"
            );
        }
        assert!(
            waited >= Duration::from_millis(3_000),
            "answered after {waited:?}"
        );

        // A version already there answers at once.
        let started = Instant::now();
        let answer = projector
            .get(&path, &[("Consistency-Token", w.token(reached).as_str())])
            .await;
        assert_eq!(answer.status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(2_500),
            "a version already there does not wait for the deadline"
        );
        projector.stop().await;
    })
    .await;
}

/// Backpressure pauses a partition whose sink is behind. If that partition is revoked
/// while paused and later comes back to the same instance, it must be consumed again.
/// The sink is held back for real: a transaction of the test locks the partitions' position
/// rows, so the workers' writes wait and their buffers fill up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_revoked_while_paused_is_consumed_again_when_it_comes_back() {
    let mut config = support::isolated_config(2);
    config.projector.partition_buffer = 4;
    config.projector.batch_max_events = 4;
    config.projector.ready_max_lag = 1_000_000;
    support::isolated_with(config, |env| async move {
        let mut feed = Feed::new(5, 8, 2);
        let first = env.start_projector().await;
        let warm_up = feed.take(40);
        env.send_all(&warm_up).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&warm_up), CATCH_UP).await;
        first.wait_assigned(2, CATCH_UP).await;

        // Hold both partitions' position rows: every write of the projector waits.
        let mut blocker = pool.begin().await.expect("a transaction");
        sqlx::query("SELECT partition_id FROM projector_partitions FOR UPDATE")
            .fetch_all(&mut *blocker)
            .await
            .expect("locking the positions");
        let backlog = feed.take(200);
        env.send_all(&backlog).await;
        let first_ref = &first;
        eventually(
            "both partitions paused by backpressure",
            CATCH_UP,
            || async move {
                let (status, _, body) = first_ref.readyz().await;
                let paused = |p: &str| body["partitions"][p]["paused"] == true;
                (status == 200 && paused("0") && paused("1")).then_some(())
            },
        )
        .await;

        // A second instance joins: the first must give up one (paused) partition, which it
        // does once its batch in hand is written.
        let second = env.start_projector().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        blocker.rollback().await.expect("releasing the positions");
        let second_ref = &second;
        let moved = eventually(
            "one partition moved to the second instance",
            CATCH_UP,
            || async move {
                match second_ref.readyz().await {
                    (200, Some(p), _) if p.len() == 1 => p.into_iter().next(),
                    _ => None,
                }
            },
        )
        .await;
        wait_versions(&pool, &last_versions(&backlog), CATCH_UP).await;

        // The second leaves: partition `moved` comes back to the first, which must read it.
        second.stop().await;
        first.wait_assigned(2, CATCH_UP).await;
        let more = feed.take(40);
        env.send_all(&more).await;
        let behind = last_versions(&more);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let have = support::model_versions(&pool).await;
            let stuck: Vec<_> = behind
                .iter()
                .filter(|(id, v)| have.get(*id).copied().unwrap_or(0) < **v)
                .collect();
            if stuck.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let (_, _, ready) = first.readyz().await;
                panic!(
                    "partition {moved} came back to the first instance but is not consumed: \
                     {} accounts behind; /readyz: {ready}",
                    stuck.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Not only versions: every row equals what one projector builds from these events.
        let all: Vec<_> = [warm_up, backlog, more].concat();
        let reference = support::reference_snapshot(2, all).await;
        assert_same(
            "a partition revoked while paused, then back",
            &reference,
            &snapshot(&pool).await,
        );
        first.stop().await;
    })
    .await;
}

/// Kafka unreachable when prism-ledger starts (it comes up a few seconds later): the
/// projector must either keep trying and project once Kafka answers, or fail the process
/// (`app::run` returns the error, so a supervisor restarts it). Serving HTTP forever with
/// a projector that silently gave up is neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_at_start_is_retried_or_fails_the_process() {
    isolated(1, |env| async move {
        // Kafka's address as prism-ledger sees it: a local port that refuses connections
        // until the test forwards it to the real broker (which then advertises itself).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("its address").port()
        };
        let broker = env.config.kafka.bootstrap_servers.clone();
        let mut config = env.config.clone();
        config.kafka.bootstrap_servers = format!("127.0.0.1:{port}");
        config.kafka.request_timeout_ms = 1_000;
        let projector = env.start_projector_with(config).await;
        tokio::time::sleep(Duration::from_secs(4)).await;

        // Kafka "comes up".
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the forwarding port");
        let forwarder = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let broker = broker.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(broker.as_str()).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let mut account = Account::new(0);
        let events = vec![account.next(day(6, 9, 0), opened("Late Kafka", "DE", "EUR"))];
        env.send_all(&events).await;
        let pool = env.model_pool().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let outcome = loop {
            if support::model_versions(&pool).await.get(&account.id.0) == Some(&1) {
                break "projected";
            }
            if projector.finished() {
                break "failed";
            }
            if Instant::now() >= deadline {
                let (_, _, ready) = projector.readyz().await;
                // Only a shutdown reveals why.
                let stopped = projector.stop_result().await;
                panic!(
                    "20 s after Kafka became reachable prism-ledger still serves HTTP but \
                     projects nothing; /readyz: {ready}; at shutdown app::run returned \
                     {stopped:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        forwarder.abort();
        eprintln!("kafka late at start: {outcome}");
        if outcome == "failed" {
            assert!(
                projector.stop_result().await.is_err(),
                "run() ended with an error"
            );
        } else {
            projector.stop().await;
        }
    })
    .await;
}

/// A partition moves to a second instance, which applies events to its accounts, and then
/// back to the first: the first must not fold the new events onto what it remembered of
/// those accounts from before (a stale cache would silently overwrite the second
/// instance's balances). The whole model is compared with one projector's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_moves_away_and_comes_back_keeps_every_balance() {
    const PARTITIONS: i32 = 2;
    // Few accounts, so every phase touches every one of them.
    let mut feed = Feed::new(41, 6, PARTITIONS);
    let (before, away, back) = (feed.take(60), feed.take(80), feed.take(80));
    isolated(PARTITIONS, |env| async move {
        let pool = env.model_pool().await;
        let first = env.start_projector().await;
        env.send_all(&before).await;
        wait_versions(&pool, &last_versions(&before), CATCH_UP).await;
        first.wait_assigned(PARTITIONS, CATCH_UP).await;

        let second = env.start_projector().await;
        let (first_ref, second_ref) = (&first, &second);
        eventually("the partitions split", CATCH_UP, || async move {
            let (_, p1, _) = first_ref.readyz().await;
            let (_, p2, _) = second_ref.readyz().await;
            match (p1, p2) {
                (Some(p1), Some(p2)) if p1.len() == 1 && p2.len() == 1 && p1 != p2 => Some(()),
                _ => None,
            }
        })
        .await;
        env.send_all(&away).await;
        wait_versions(&pool, &last_versions(&away), CATCH_UP).await;
        assert!(
            second.events_total("applied").await > 0,
            "the second instance applied nothing"
        );

        second.stop().await;
        first.wait_assigned(PARTITIONS, CATCH_UP).await;
        env.send_all(&back).await;
        wait_versions(&pool, &last_versions(&back), CATCH_UP).await;

        let all: Vec<_> = [before, away, back].concat();
        let reference = support::reference_snapshot(PARTITIONS, all).await;
        assert_same(
            "a partition that moved away and back",
            &reference,
            &snapshot(&pool).await,
        );
        first.stop().await;
    })
    .await;
}

/// A rolling deploy that upgrades the writer first: events of a type this build does not
/// know, or of a schema version above its own, reach the projector. They are not poison:
/// nothing is dead-lettered, no account is quarantined, nothing after them on their
/// partition is applied or skipped. The partition holds right before the first of them,
/// says so on `/readyz`, in its metrics and in `prismctl status` (the position row's last
/// error), and other partitions go on. A restart of the same build holds at the same place;
/// the upgraded projector resumes from that stored position, so it catches up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_a_newer_writer_holds_its_partition_and_loses_nothing() {
    isolated(2, |env| async move {
        let projector = env.start_projector().await;
        let mut a = Account::new(0);
        let mut b = Account::new(0);
        let mut c = Account::new(1);
        let t = |m| day(4, 9, m);
        let first = vec![
            a.next(t(0), opened("Ada Lovelace", "DE", "EUR")),
            a.next(t(1), deposited(1_000)),
            b.next(t(2), opened("Alan Turing", "DE", "EUR")),
            c.next(t(3), opened("Grace Hopper", "DE", "EUR")),
        ];
        env.send_all(&first).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&first), CATCH_UP).await;

        let with = |record: &prism_events::kafka::KafkaRecord, name: &str, value: &str| {
            record
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = if *k == name { value } else { v.as_str() };
                    (*k, v.as_bytes().to_vec())
                })
                .collect::<Vec<_>>()
        };
        // a's v3: a type added by the newer writer; b's v2: a newer schema of a known type.
        let (a3, _) = a.next(t(4), deposited(5));
        let a3 = prism_events::kafka::encode(&a3);
        let (held_at_partition, held_at) = env
            .send_raw(
                Some(a3.key.as_bytes()),
                &with(&a3, H_TYPE, "prism.account.interest_paid"),
                Some(&a3.value),
                0,
            )
            .await;
        let (b2, _) = b.next(t(5), deposited(7));
        let b2 = prism_events::kafka::encode(&b2);
        env.send_raw(
            Some(b2.key.as_bytes()),
            &with(&b2, H_SCHEMA_VERSION, "99"),
            Some(&b2.value),
            0,
        )
        .await;
        // Later events: the same accounts, and another partition.
        let later = vec![
            a.next(t(6), deposited(200)),
            b.next(t(7), deposited(300)),
            c.next(t(8), deposited(400)),
        ];
        env.send_all(&later).await;

        // The other partition goes on.
        wait_versions(&pool, &last_versions(&later[2..]), CATCH_UP).await;
        let why = held(&projector, 0).await;
        assert!(why.contains("interest_paid"), "{why}");

        let check_nothing_lost = || async {
            let (offset, error): (i64, Option<String>) = sqlx::query_as(
                "SELECT kafka_offset, last_error FROM projector_partitions WHERE partition_id = 0",
            )
            .fetch_one(&pool)
            .await
            .expect("partition 0's position");
            assert_eq!(held_at_partition, 0);
            assert_eq!(offset, held_at - 1, "the position stops right before it");
            assert!(
                error.as_deref().is_some_and(|e| e.contains("cannot read")),
                "{error:?}"
            );
            let versions = support::model_versions(&pool).await;
            assert_eq!(
                versions.get(&a.id.0),
                Some(&2),
                "nothing of a past the held event"
            );
            assert_eq!(
                versions.get(&b.id.0),
                Some(&1),
                "nothing of b past the held event"
            );
            let balance: i64 =
                sqlx::query_scalar("SELECT balance_minor FROM accounts WHERE account_id = ?")
                    .bind(a.id.0)
                    .fetch_one(&pool)
                    .await
                    .expect("a's row");
            assert_eq!(balance, 1_000);
        };
        check_nothing_lost().await;
        let letters = env.dead_letters(0, Duration::from_secs(2));
        assert!(
            letters.is_empty(),
            "nothing is dead-lettered: {:?}",
            letters.iter().map(|l| l.error()).collect::<Vec<_>>()
        );
        assert_eq!(projector.events_total("dead_lettered").await, 0);
        assert_eq!(projector.events_total("skipped").await, 0);

        // A restart of the same build holds at the same place.
        projector.stop().await;
        let again = env.start_projector().await;
        held(&again, 0).await;
        check_nothing_lost().await;
        again.stop().await;

        // The projector is upgraded (here: a build that reads interest_paid as a credit and
        // knows schema 99): it resumes at the held record and catches up by itself.
        let upgraded = env
            .start_projector_decoding(env.config.clone(), newer_build)
            .await;
        let (a_id, b_id) = (a.id.0, b.id.0);
        let pool_ref = &pool;
        eventually(
            "the upgraded projector caught up",
            CATCH_UP,
            || async move {
                let versions = support::model_versions(pool_ref).await;
                (versions.get(&a_id) == Some(&4) && versions.get(&b_id) == Some(&3)).then_some(())
            },
        )
        .await;
        let a_now = upgraded.account(&a.id).await.expect("a");
        assert_eq!(a_now["balance_minor"], 1_205, "{a_now}");
        let b_now = upgraded.account(&b.id).await.expect("b");
        assert_eq!(b_now["balance_minor"], 307, "{b_now}");
        let upgraded_ref = &upgraded;
        eventually("ready after the upgrade", CATCH_UP, || async move {
            (upgraded_ref.readyz().await.0 == 200).then_some(())
        })
        .await;
        assert_eq!(upgraded.events_total("dead_lettered").await, 0);
        assert!(env.dead_letters(0, Duration::from_secs(1)).is_empty());
        upgraded.stop().await;
    })
    .await;
}

/// Waits until `projector` reports `partition` held, on `/readyz` and in its metrics;
/// returns the reasons `/readyz` gives.
async fn held(projector: &support::Projector, partition: i32) -> String {
    let needle = format!("partition {partition} is held");
    let needle = needle.as_str();
    let why = eventually(needle, CATCH_UP, || async move {
        let (status, _, body) = projector.readyz().await;
        // Not ready answers a problem document whose detail lists the reasons.
        let reasons = body["detail"].to_string();
        (status == 503 && reasons.contains(needle)).then_some(reasons)
    })
    .await;
    let metrics = projector.metrics().await;
    let label = partition.to_string();
    assert_eq!(
        support::metric_sum(
            &metrics,
            "prism_projector_partition_held",
            &[("partition", label.as_str())]
        ),
        1.0,
        "{needle}, says the metric"
    );
    why
}

/// The test's stand-in for a newer projector build: it knows `interest_paid` (read as a
/// credit) and schema version 99 of a deposit (the same fields as today's).
fn newer_build(record: &prism_projector::record::Record) -> prism_projector::plan::Decoded {
    let headers = record.headers().map(|(name, value)| {
        let value: &[u8] = match (name, value) {
            (H_TYPE, b"prism.account.interest_paid") => b"prism.account.money_deposited",
            (H_SCHEMA_VERSION, b"99") => b"1",
            _ => value,
        };
        (name, value)
    });
    prism_projector::record::Record::new(
        record.partition,
        record.offset,
        record.key(),
        record.payload(),
        headers,
    )
    .decode()
}

/// A write the database refuses for good (here a day's credits pushed out of BIGINT's range
/// by a broken row) is neither retried for ever as "unavailable" nor skipped: the partition
/// is held, `/readyz`, the metrics and the position row say why, other partitions go on,
/// and once the store is fixed the partition goes on by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_store_refuses_for_good_holds_the_partition_until_it_is_fixed() {
    let mut config = support::isolated_config(2);
    config.projector.retry_backoff_max_ms = 500;
    support::isolated_with(config, |env| async move {
        let projector = env.start_projector().await;
        let mut a = Account::new(0);
        let mut c = Account::new(1);
        let first = vec![
            a.next(day(5, 9, 0), opened("Ada Lovelace", "DE", "EUR")),
            a.next(day(5, 9, 1), deposited(1_000)),
            c.next(day(5, 9, 2), opened("Grace Hopper", "DE", "EUR")),
        ];
        env.send_all(&first).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&first), CATCH_UP).await;

        // Someone broke a row: the day's credits one step from BIGINT's end.
        sqlx::query("UPDATE daily_totals SET credits_minor = ? WHERE account_id = ?")
            .bind(i64::MAX - 100)
            .bind(a.id.0)
            .execute(&pool)
            .await
            .expect("breaking the row");
        let next = vec![
            a.next(day(5, 10, 0), deposited(5_000)),
            c.next(day(5, 10, 1), deposited(300)),
        ];
        env.send_all(&next).await;
        wait_versions(&pool, &last_versions(&next[1..]), CATCH_UP).await;

        let projector_ref = &projector;
        let why = held(&projector, 0).await;
        assert!(why.contains("refuses"), "{why}");
        assert!(why.contains("range"), "names the database's reason: {why}");
        let metrics = projector.metrics().await;
        assert!(
            support::metric_sum(
                &metrics,
                "prism_projector_sink_errors_total",
                &[("kind", "permanent")]
            ) >= 1.0
        );
        let error: Option<String> = sqlx::query_scalar(
            "SELECT last_error FROM projector_partitions WHERE partition_id = 0",
        )
        .fetch_one(&pool)
        .await
        .expect("partition 0's position");
        assert!(
            error.as_deref().is_some_and(|e| e.contains("refuses")),
            "{error:?}"
        );
        assert_eq!(support::model_versions(&pool).await.get(&a.id.0), Some(&2));

        // Fixed by hand: the partition goes on by itself.
        sqlx::query("UPDATE daily_totals SET credits_minor = 1000 WHERE account_id = ?")
            .bind(a.id.0)
            .execute(&pool)
            .await
            .expect("fixing the row");
        wait_versions(&pool, &last_versions(&next), CATCH_UP).await;
        let account = projector.account(&a.id).await.expect("a");
        assert_eq!(account["balance_minor"], 6_000, "{account}");
        let credits: i64 =
            sqlx::query_scalar("SELECT credits_minor FROM daily_totals WHERE account_id = ?")
                .bind(a.id.0)
                .fetch_one(&pool)
                .await
                .expect("a's day");
        assert_eq!(credits, 6_000);
        eventually("ready again", CATCH_UP, || async move {
            (projector_ref.readyz().await.0 == 200).then_some(())
        })
        .await;
        assert_eq!(projector.events_total("dead_lettered").await, 0);
        projector.stop().await;
    })
    .await;
}

/// A rebalance while the sink hangs (a transaction of the test holds the position rows, so
/// every write waits on a lock for up to InnoDB's 50 s): the instance giving up a partition
/// must not block the group for that long. It cancels the batch in hand after
/// `rebalance_timeout_ms`; the fence makes that safe, and the model still equals one
/// projector's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_hangs_does_not_hold_up_a_rebalance() {
    const PARTITIONS: i32 = 2;
    let mut config = support::isolated_config(PARTITIONS);
    config.projector.rebalance_timeout_ms = 2_000;
    config.projector.ready_max_lag = 1_000_000;
    let mut feed = Feed::new(53, 10, PARTITIONS);
    let (warm_up, backlog) = (feed.take(40), feed.take(100));
    support::isolated_with(config, |env| async move {
        let pool = env.model_pool().await;
        let first = env.start_projector().await;
        env.send_all(&warm_up).await;
        wait_versions(&pool, &last_versions(&warm_up), CATCH_UP).await;
        first.wait_assigned(PARTITIONS, CATCH_UP).await;

        let mut blocker = pool.begin().await.expect("a transaction");
        sqlx::query("SELECT partition_id FROM projector_partitions FOR UPDATE")
            .fetch_all(&mut *blocker)
            .await
            .expect("locking the positions");
        env.send_all(&backlog).await;
        let pool_ref = &pool;
        eventually(
            "a sink write waiting on the lock",
            CATCH_UP,
            || async move {
                let waits: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.innodb_lock_waits")
                        .fetch_one(pool_ref)
                        .await
                        .unwrap_or(0);
                (waits > 0).then_some(())
            },
        )
        .await;

        let joined = Instant::now();
        let second = env.start_projector().await;
        let second_ref = &second;
        eventually(
            "the second instance owns a partition",
            Duration::from_secs(25),
            || async move {
                let (_, partitions, _) = second_ref.readyz().await;
                partitions.filter(|p| !p.is_empty()).map(|_| ())
            },
        )
        .await;
        let took = joined.elapsed();
        blocker.rollback().await.expect("releasing the positions");
        eprintln!("rebalance with a hanging sink took {took:?}");

        let all: Vec<_> = [warm_up, backlog].concat();
        wait_versions(&pool, &last_versions(&all), CATCH_UP).await;
        let reference = support::reference_snapshot(PARTITIONS, all).await;
        assert_same(
            "a rebalance with a hanging sink",
            &reference,
            &snapshot(&pool).await,
        );
        second.stop().await;
        first.stop().await;
    })
    .await;
}

/// However many accounts a partition carries, its worker remembers at most
/// `worker_accounts_max` of them (versions, quarantine), and what it forgot it reads again:
/// the model still equals one projector's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_remembers_a_bounded_number_of_accounts() {
    const PARTITIONS: i32 = 2;
    const MAX: usize = 10;
    let mut config = support::isolated_config(PARTITIONS);
    config.projector.worker_accounts_max = MAX;
    config.projector.batch_max_events = 50;
    let mut feed = Feed::new(61, 120, PARTITIONS);
    let events = feed.take(700);
    let expected = events.clone();
    support::isolated_with(config, |env| async move {
        let pool = env.model_pool().await;
        let projector = env.start_projector().await;
        env.send_all(&events).await;
        wait_versions(&pool, &last_versions(&events), CATCH_UP).await;
        let metrics = projector.metrics().await;
        for partition in ["0", "1"] {
            let remembered = support::metric_sum(
                &metrics,
                "prism_projector_worker_accounts",
                &[("partition", partition)],
            );
            assert!(
                remembered > 0.0 && remembered <= MAX as f64,
                "partition {partition}'s worker remembers {remembered} accounts (cap {MAX})"
            );
        }
        let reference = support::reference_snapshot(PARTITIONS, expected).await;
        assert_same("bounded worker memory", &reference, &snapshot(&pool).await);
        projector.stop().await;
    })
    .await;
}
