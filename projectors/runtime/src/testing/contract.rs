//! The sink contract suite: checks every [`Sink`] must pass, whatever its store.
//!
//! A sink's test implements [`ContractSubject`] (fresh, empty copies of its read model, a
//! canonical snapshot of one) and calls each check, e.g. `contract::replay_changes_nothing(&subject).await`.
//! The checks assert on the read model itself (the whole snapshot), the stored positions
//! and the versions, never on one of them alone; each panics with what differed.
//!
//! Sink-level checks call [`Sink::apply`] directly with batches shaped like the runtime's.
//! Kafka-level checks (`kafka_*`) run the real [`crate::Runtime`] on a topic of their own
//! ([`super::kafka::KafkaEnv`]) and compare the read model with a reference: the same
//! events folded into another fresh copy in one write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prism_events::testing::{deposited, envelope, Feed};
use prism_events::{AccountId, Envelope};
use serde_json::Value;
use uuid::Uuid;

use super::kafka::{wait_offset, wait_versions, Consumed, KafkaEnv};
use super::{batch, eventually, unpositioned, versions_of};
use crate::{AccountVersion, Sink, SinkError, StoredPosition};

/// What a sink's test provides to run the contract suite on it.
#[async_trait]
pub trait ContractSubject: Send + Sync {
    /// One copy of the read model, with whatever the subject needs to read it back.
    type Copy: Send + Sync;

    /// A new, empty copy of the read model (the subject cleans its copies up itself).
    async fn fresh(&self) -> Self::Copy;

    /// The sink writing `copy`.
    fn sink(&self, copy: &Self::Copy) -> Arc<dyn Sink>;

    /// The whole read model of `copy`, canonical (ordered, no volatile values), with the
    /// handled versions and without the partition positions.
    async fn snapshot(&self, copy: &Self::Copy) -> Value;

    /// How the sink keeps its position with its writes (see [`crate::checkpoint`]):
    /// transactional (the default) or idempotent by version. It decides which way
    /// [`position_is_never_behind_the_model`] checks the order of the two.
    fn mode(&self) -> crate::checkpoint::Mode {
        crate::checkpoint::Mode::Transactional
    }

    /// An event the sink's fold refuses ([`SinkError::Rejected`]) when nothing of its account
    /// is stored. The default, a deposit as the first event of an account never opened,
    /// is refused by every fold that needs an account to exist; `None` skips the check
    /// (say why in the subject's tests).
    fn refused(&self) -> Option<Envelope> {
        Some(envelope(deposited(1_000)).version(1).build())
    }

    /// Makes `copy`'s store unavailable (its sink answers [`SinkError::Transient`]) until
    /// the returned outage ends. `None` (the default): the subject cannot, and
    /// [`kafka_transient_errors_are_retried`] says so and checks nothing.
    async fn outage(&self, copy: &Self::Copy) -> Option<Box<dyn Outage>> {
        let _ = copy;
        None
    }
}

/// A store made unavailable by [`ContractSubject::outage`].
#[async_trait]
pub trait Outage: Send {
    /// Makes the store available again.
    async fn end(self: Box<Self>);
}

/// Every sink-level check, in turn.
pub async fn sink_checks<S: ContractSubject>(subject: &S) {
    apply_stores_model_versions_and_position(subject).await;
    replay_changes_nothing(subject).await;
    fenced_writer_changes_nothing(subject).await;
    writers_taking_turns_end_as_one(subject).await;
    versions_are_what_the_batch_stored(subject).await;
    rejected_event_writes_nothing(subject).await;
    record_error_shows_on_nothing_else(subject).await;
    position_is_never_behind_the_model(subject).await;
}

/// Every Kafka-level check, in turn.
pub async fn kafka_checks<S: ContractSubject>(subject: &S) {
    kafka_gap_is_dead_lettered(subject).await;
    kafka_poison_is_dead_lettered_before_the_position_moves(subject).await;
    kafka_transient_errors_are_retried(subject).await;
}

fn events_of(feed: Vec<(Envelope, i32)>) -> Vec<Envelope> {
    feed.into_iter().map(|(e, _)| e).collect()
}

async fn apply(sink: &Arc<dyn Sink>, b: &crate::Batch, what: &str) {
    if let Err(e) = sink.apply(b).await {
        panic!("{what}: the sink refused a valid batch: {e}");
    }
}

async fn position(sink: &Arc<dyn Sink>, partition: i32) -> Option<StoredPosition> {
    match sink.positions(&[partition]).await {
        Ok(p) => p.into_iter().find(|p| p.partition == partition),
        Err(e) => panic!("reading the position of partition {partition}: {e}"),
    }
}

async fn versions(sink: &Arc<dyn Sink>, accounts: &[Uuid]) -> HashMap<Uuid, u64> {
    match sink.versions(accounts).await {
        Ok(v) => v,
        Err(e) => panic!("reading versions: {e}"),
    }
}

fn expected_versions(events: &[Envelope]) -> HashMap<Uuid, u64> {
    versions_of(events)
        .into_iter()
        .map(|v| (v.account_id, v.version))
        .collect()
}

/// The snapshot of a fresh copy into which `events` were folded in one write without a
/// position: what any order of correct batches of the same events must end with.
async fn reference<S: ContractSubject>(subject: &S, events: Vec<Envelope>) -> Value {
    let copy = subject.fresh().await;
    apply(
        &subject.sink(&copy),
        &unpositioned(events),
        "the reference copy",
    )
    .await;
    subject.snapshot(&copy).await
}

#[track_caller]
fn assert_same(what: &str, expected: &Value, actual: &Value) {
    if expected != actual {
        panic!(
            "{what}: the read model differs\n  expected {}\n  actual   {}",
            clip(expected),
            clip(actual)
        );
    }
}

fn clip(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= 3_000 {
        return text;
    }
    let mut end = 3_000;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// After `apply`, the read model, the versions and the position all show the batch, and
/// three batches end where one batch of the same events does.
pub async fn apply_stores_model_versions_and_position<S: ContractSubject>(subject: &S) {
    let events = events_of(Feed::new(11, 4, 1).take(30));
    let copy = subject.fresh().await;
    let sink = subject.sink(&copy);
    let empty = subject.snapshot(&copy).await;
    assert_eq!(
        position(&sink, 0).await,
        None,
        "a fresh copy has no position"
    );
    let accounts: Vec<Uuid> = expected_versions(&events).into_keys().collect();
    assert!(
        versions(&sink, &accounts).await.is_empty(),
        "a fresh copy has no versions"
    );

    let (first, rest) = events.split_at(10);
    let (second, third) = rest.split_at(10);
    apply(&sink, &batch(first.to_vec(), 0, None, 9), "batch 1").await;
    apply(&sink, &batch(second.to_vec(), 0, Some(9), 19), "batch 2").await;
    apply(&sink, &batch(third.to_vec(), 0, Some(19), 29), "batch 3").await;

    let stored = position(&sink, 0).await;
    let last = events.last().map(|e| e.id);
    assert_eq!(
        stored.as_ref().map(|p| (p.offset, p.event_id)),
        Some((29, last)),
        "the position is the last batch's"
    );
    assert_eq!(versions(&sink, &accounts).await, expected_versions(&events));
    let model = subject.snapshot(&copy).await;
    assert_ne!(
        model, empty,
        "the batches changed nothing in the read model"
    );
    assert_same(
        "three batches against one",
        &reference(subject, events).await,
        &model,
    );
}

/// The same batch again, with the `expected` offset it was first written with (a worker
/// that did not see its own write succeed), is fenced or changes nothing.
pub async fn replay_changes_nothing<S: ContractSubject>(subject: &S) {
    let events = events_of(Feed::new(12, 3, 1).take(20));
    let copy = subject.fresh().await;
    let sink = subject.sink(&copy);
    let first = batch(events[..10].to_vec(), 0, None, 9);
    apply(&sink, &first, "batch 1").await;
    let model = subject.snapshot(&copy).await;
    let stored = position(&sink, 0).await;

    match sink.apply(&first).await {
        Ok(()) | Err(SinkError::Fenced { .. }) => {}
        Err(e) => panic!("replaying a stored batch: {e}"),
    }
    assert_same("after a replay", &model, &subject.snapshot(&copy).await);
    assert_eq!(
        position(&sink, 0).await,
        stored,
        "a replay moved the position"
    );

    // The next batch still goes on from the stored position.
    apply(
        &sink,
        &batch(events[10..].to_vec(), 0, Some(9), 19),
        "batch 2",
    )
    .await;
    assert_same(
        "after a replay and the next batch",
        &reference(subject, events).await,
        &subject.snapshot(&copy).await,
    );
}

/// A writer whose `expected` offset is stale (another writer moved the partition since)
/// is fenced: the read model and the position stay as the other writer left them.
pub async fn fenced_writer_changes_nothing<S: ContractSubject>(subject: &S) {
    let events = events_of(Feed::new(13, 3, 1).take(30));
    let copy = subject.fresh().await;
    let sink = subject.sink(&copy);
    apply(&sink, &batch(events[..10].to_vec(), 0, None, 9), "batch 1").await;
    apply(
        &sink,
        &batch(events[10..20].to_vec(), 0, Some(9), 19),
        "batch 2",
    )
    .await;
    let model = subject.snapshot(&copy).await;
    let stored = position(&sink, 0).await;

    // The old owner writes batch 2 again, and a writer that never saw a position writes
    // batch 1 again: both must be refused.
    for (what, stale) in [
        (
            "the old owner",
            batch(events[10..20].to_vec(), 0, Some(9), 19),
        ),
        (
            "a writer without a position",
            batch(events[..10].to_vec(), 0, None, 9),
        ),
    ] {
        match sink.apply(&stale).await {
            Err(SinkError::Fenced { partition, stored }) => {
                assert_eq!(partition, 0);
                assert_eq!(stored, Some(19), "{what}: Fenced names the stored offset");
            }
            other => panic!("{what}: a stale writer was not fenced: {other:?}"),
        }
        assert_same(what, &model, &subject.snapshot(&copy).await);
        assert_eq!(
            position(&sink, 0).await,
            stored,
            "{what} moved the position"
        );
    }
    // Another partition is not fenced by this one.
    let other = events_of(Feed::new(14, 1, 1).take(3));
    apply(&sink, &batch(other, 1, None, 2), "partition 1").await;
    assert_eq!(position(&sink, 0).await, stored);
}

/// Two writers taking turns on a partition (a rebalance handing it over and back) end
/// where one writer does: a sink that remembers what it wrote must notice that another
/// writer wrote since, and not fold onto what it remembers.
pub async fn writers_taking_turns_end_as_one<S: ContractSubject>(subject: &S) {
    let events = events_of(Feed::new(15, 3, 1).take(30));
    let copy = subject.fresh().await;
    let (a, b) = (subject.sink(&copy), subject.sink(&copy));
    apply(&a, &batch(events[..10].to_vec(), 0, None, 9), "A: batch 1").await;
    apply(
        &b,
        &batch(events[10..20].to_vec(), 0, Some(9), 19),
        "B: batch 2",
    )
    .await;
    apply(
        &a,
        &batch(events[20..].to_vec(), 0, Some(19), 29),
        "A again: batch 3",
    )
    .await;
    assert_eq!(
        versions(
            &a,
            &expected_versions(&events).into_keys().collect::<Vec<_>>()
        )
        .await,
        expected_versions(&events)
    );
    assert_same(
        "two writers taking turns against one write",
        &reference(subject, events).await,
        &subject.snapshot(&copy).await,
    );
}

/// `versions()` answers exactly what batches stored, including the version of an account
/// whose events the runtime dead-lettered (a version without an event), and nothing for
/// accounts never written.
pub async fn versions_are_what_the_batch_stored<S: ContractSubject>(subject: &S) {
    let events = events_of(Feed::new(15, 3, 1).take(12));
    let copy = subject.fresh().await;
    let sink = subject.sink(&copy);
    let mut b = batch(events.clone(), 0, None, 12);
    // An account whose only event in this batch went to the dead-letter topic.
    let dead_lettered = Uuid::now_v7();
    b.versions.push(AccountVersion {
        account_id: dead_lettered,
        version: 7,
        event_id: Uuid::now_v7(),
    });
    apply(&sink, &b, "batch").await;
    let never = Uuid::now_v7();
    let mut accounts: Vec<Uuid> = expected_versions(&events).into_keys().collect();
    accounts.push(dead_lettered);
    accounts.push(never);
    let mut expected = expected_versions(&events);
    expected.insert(dead_lettered, 7);
    assert_eq!(versions(&sink, &accounts).await, expected);
}

/// A batch with an event the fold refuses is answered with `Rejected { index }` naming
/// that event, and writes nothing: no read-model row, no version, no position.
pub async fn rejected_event_writes_nothing<S: ContractSubject>(subject: &S) {
    let Some(refused) = subject.refused() else {
        eprintln!("rejected_event_writes_nothing: the subject has no refused event; skipped");
        return;
    };
    let events = events_of(Feed::new(16, 2, 1).take(10));
    let copy = subject.fresh().await;
    let sink = subject.sink(&copy);
    apply(&sink, &batch(events[..5].to_vec(), 0, None, 4), "batch 1").await;
    let model = subject.snapshot(&copy).await;
    let stored = position(&sink, 0).await;

    let mut mixed = events[5..].to_vec();
    mixed.insert(2, refused.clone());
    match sink.apply(&batch(mixed, 0, Some(4), 10)).await {
        Err(SinkError::Rejected { index, .. }) => {
            assert_eq!(index, 2, "Rejected names the refused event's index")
        }
        other => panic!("a batch with a refused event: {other:?}"),
    }
    assert_same(
        "after a rejected batch",
        &model,
        &subject.snapshot(&copy).await,
    );
    assert_eq!(
        position(&sink, 0).await,
        stored,
        "a rejected batch moved the position"
    );
    let touched: Vec<Uuid> = vec![refused.account_id.0];
    assert!(
        versions(&sink, &touched).await.is_empty(),
        "a rejected batch stored a version"
    );
    // What the runtime does next: the same batch without the refused event is stored.
    apply(
        &sink,
        &batch(events[5..].to_vec(), 0, Some(4), 10),
        "the batch without it",
    )
    .await;
    assert_same(
        "after the batch without the refused event",
        &reference(subject, events).await,
        &subject.snapshot(&copy).await,
    );
}

/// `record_error` is bookkeeping: it changes neither the read model nor the versions nor
/// the position, on a partition with a position and on one without.
pub async fn record_error_shows_on_nothing_else<S: ContractSubject>(subject: &S) {
    let events = events_of(Feed::new(17, 2, 1).take(6));
    let copy = subject.fresh().await;
    let sink = subject.sink(&copy);
    apply(&sink, &batch(events.clone(), 0, None, 5), "batch").await;
    let model = subject.snapshot(&copy).await;
    let stored = position(&sink, 0).await;
    let accounts: Vec<Uuid> = expected_versions(&events).into_keys().collect();
    let stored_versions = versions(&sink, &accounts).await;
    for partition in [0, 3] {
        if let Err(e) = sink.record_error(partition, "version gap: a test").await {
            panic!("record_error on partition {partition}: {e}");
        }
    }
    assert_same("after record_error", &model, &subject.snapshot(&copy).await);
    assert_eq!(position(&sink, 0).await, stored);
    assert_eq!(
        position(&sink, 3).await,
        None,
        "record_error made a position"
    );
    assert_eq!(versions(&sink, &accounts).await, stored_versions);
    // And the next batch is not fenced by it.
    let more = events_of(Feed::new(18, 1, 1).take(2));
    apply(
        &sink,
        &batch(more, 0, Some(5), 7),
        "the batch after record_error",
    )
    .await;
}

/// While batches are written, a reader sees the model and the position in the order the
/// sink's checkpoint mode promises: transactional, never a version ahead of the position
/// that carried it (they move together); idempotent by version, never the position ahead
/// of the model (the position moves last, so a crash in between is replayed).
pub async fn position_is_never_behind_the_model<S: ContractSubject>(subject: &S) {
    const BATCHES: u64 = 40;
    let copy = subject.fresh().await;
    let sink = subject.sink(&copy);
    let mut account = prism_events::testing::Account::new(0);
    let id: AccountId = account.id;
    let mut all = Vec::new();
    // Batch k (1-based) carries version k and ends at offset 10k - 1.
    let batches: Vec<crate::Batch> = (1..=BATCHES)
        .map(|k| {
            let event = if k == 1 {
                prism_events::testing::opened("Reader Test", "DE", "EUR")
            } else {
                deposited(100)
            };
            let (e, _) = account.next_now(event);
            all.push(e.clone());
            let offset = i64::try_from(10 * k).unwrap_or(i64::MAX) - 1;
            let expected = (k > 1).then(|| offset - 10);
            batch(vec![e], 0, expected, offset)
        })
        .collect();
    let writer_sink = Arc::clone(&sink);
    let writer = tokio::spawn(async move {
        for b in &batches {
            if let Err(e) = writer_sink.apply(b).await {
                return Err(e.to_string());
            }
        }
        Ok(())
    });
    let carried_by = |version: u64| i64::try_from(10 * version).unwrap_or(i64::MAX) - 1;
    let mode = subject.mode();
    let mut observations = 0;
    loop {
        let done = writer.is_finished();
        match mode {
            // Model first, then the position: the position read later can only be further.
            crate::checkpoint::Mode::Transactional => {
                let seen = versions(&sink, &[id.0]).await.get(&id.0).copied();
                let at = position(&sink, 0).await.map(|p| p.offset);
                if let Some(version) = seen {
                    assert!(
                        at.is_some_and(|o| o >= carried_by(version)),
                        "version {version} is visible but the position is {at:?} (behind {})",
                        carried_by(version)
                    );
                    observations += 1;
                }
            }
            // The position first, then the model: the model read later can only be further.
            crate::checkpoint::Mode::IdempotentByVersion => {
                let at = position(&sink, 0).await.map(|p| p.offset);
                let seen = versions(&sink, &[id.0]).await.get(&id.0).copied();
                if let Some(offset) = at {
                    assert!(
                        seen.is_some_and(|v| carried_by(v) >= offset),
                        "the position is at {offset} but the model holds version {seen:?}"
                    );
                    observations += 1;
                }
            }
        }
        if done {
            break;
        }
        // Let the writer run, also on a single-threaded test runtime.
        tokio::task::yield_now().await;
    }
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("writing the batches: {e}"),
        Err(e) => panic!("the writer task: {e}"),
    }
    assert!(observations > 0, "the reader saw nothing");
    assert_same(
        "after every batch",
        &reference(subject, all).await,
        &subject.snapshot(&copy).await,
    );
}

const CATCH_UP: Duration = Duration::from_secs(60);

/// Runs `body` with a Kafka environment and cleans it up afterwards, even if it panicked.
async fn with_kafka<F, Fut>(partitions: i32, body: F)
where
    F: FnOnce(Arc<KafkaEnv>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt as _;
    let env = Arc::new(KafkaEnv::new(partitions).await);
    let outcome = std::panic::AssertUnwindSafe(body(Arc::clone(&env)))
        .catch_unwind()
        .await;
    env.clean_up().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A version gap is re-checked, then dead-lettered with every later event of its account
/// (quarantine); the partition goes on, other accounts are applied, and the read model is
/// that of the events before the gap.
pub async fn kafka_gap_is_dead_lettered<S: ContractSubject>(subject: &S) {
    with_kafka(1, |env| async move {
        let copy = subject.fresh().await;
        let sink = subject.sink(&copy);
        let started = env.start(Arc::clone(&sink)).await;
        let mut feed = Feed::new(21, 2, 1);
        let mut events = feed.take(8);
        let accounts = feed.accounts();
        let gapped = &accounts[0];
        // Version +2 and +3 of the first account: one is missing.
        let v = gapped.version;
        let at = events.last().map_or_else(chrono::Utc::now, |(e, _)| e.time);
        let gap = gapped.envelope(v + 2, at, deposited(10));
        let after = gapped.envelope(v + 3, at, deposited(20));
        let mut offsets = env.send_all(&events).await;
        let gap_offset = env.send(&gap, 0).await;
        let after_offset = env.send(&after, 0).await;
        // Another account goes on after the gap.
        let mut other = accounts[1].clone();
        let (next, _) = other.next_now(deposited(30));
        offsets.push(env.send(&next, 0).await);
        events.push((next, 0));
        let last = offsets.last().copied().unwrap_or(0);
        wait_offset(sink.as_ref(), 0, last, CATCH_UP).await;
        let dead = env.dead_letters(2, CATCH_UP);
        let originals: Vec<(i32, i64)> = dead.iter().map(|d| d.original()).collect();
        assert_eq!(
            originals,
            vec![(0, gap_offset), (0, after_offset)],
            "dead letters"
        );
        let reason = dead[0].header(crate::dlq::H_ERROR).unwrap_or_default();
        assert!(reason.contains("gap"), "the dead letter says why: {reason}");
        assert_eq!(started.events("dead_lettered"), 2);
        started.stop().await;
        assert_same(
            "after a gap",
            &reference(subject, events_of(events)).await,
            &subject.snapshot(&copy).await,
        );
    })
    .await;
}

/// A record that cannot be decoded (bad JSON) is on the dead-letter topic before the
/// stored position passes it, and the events around it are applied.
pub async fn kafka_poison_is_dead_lettered_before_the_position_moves<S: ContractSubject>(
    subject: &S,
) {
    with_kafka(1, |env| async move {
        let copy = subject.fresh().await;
        let sink = subject.sink(&copy);
        let started = env.start(Arc::clone(&sink)).await;
        let mut feed = Feed::new(22, 2, 1);
        let before = feed.take(4);
        env.send_all(&before).await;
        let template = feed.take(1);
        let poison_offset = env.send_poison(&template[0].0, b"{not json", 0).await;
        let after = feed.take(4);
        // The poison's account goes on without the event the poison stood for.
        let after: Vec<(Envelope, i32)> = after
            .into_iter()
            .filter(|(e, _)| e.account_id != template[0].0.account_id)
            .collect();
        let offsets = env.send_all(&after).await;
        // The moment the position passes the poison, its dead letter must be on Kafka.
        wait_offset(sink.as_ref(), 0, poison_offset, CATCH_UP).await;
        let dead = env.dead_letters(1, Duration::from_secs(5));
        assert!(
            dead.iter().any(|d| d.original() == (0, poison_offset)),
            "the position passed offset {poison_offset} before its dead letter was on Kafka: {:?}",
            dead.iter().map(Consumed::original).collect::<Vec<_>>()
        );
        wait_offset(
            sink.as_ref(),
            0,
            offsets.last().copied().unwrap_or(poison_offset),
            CATCH_UP,
        )
        .await;
        let dead = env.dead_letters(1, Duration::from_secs(5));
        assert_eq!(dead.len(), 1, "only the poison is dead-lettered");
        let reason = dead[0].header(crate::dlq::H_ERROR).unwrap_or_default();
        assert!(reason.contains("undecodable"), "{reason}");
        assert_eq!(dead[0].payload.as_deref(), Some(&b"{not json"[..]));
        started.stop().await;
        let mut applied = before;
        applied.extend(after);
        assert_same(
            "after poison",
            &reference(subject, events_of(applied)).await,
            &subject.snapshot(&copy).await,
        );
    })
    .await;
}

/// A store that is briefly unavailable makes the runtime retry: nothing is dead-lettered
/// or skipped, and once the store is back every event is applied exactly once.
pub async fn kafka_transient_errors_are_retried<S: ContractSubject>(subject: &S) {
    with_kafka(1, |env| async move {
        let copy = subject.fresh().await;
        let sink = subject.sink(&copy);
        let started = env.start(Arc::clone(&sink)).await;
        let mut feed = Feed::new(23, 3, 1);
        let first = feed.take(6);
        let offsets = env.send_all(&first).await;
        wait_offset(sink.as_ref(), 0, offsets.last().copied().unwrap_or(0), CATCH_UP).await;

        let Some(outage) = subject.outage(&copy).await else {
            eprintln!("kafka_transient_errors_are_retried: the subject cannot make its store unavailable; skipped");
            started.stop().await;
            return;
        };
        let during = feed.take(6);
        env.send_all(&during).await;
        eventually("the runtime sees the outage", CATCH_UP, || {
            let seen = started.sink_errors("transient");
            async move { (seen > 0).then_some(()) }
        })
        .await;
        outage.end().await;
        let mut all = first;
        all.extend(during);
        let expected = expected_versions(&events_of(all.clone()));
        wait_versions(sink.as_ref(), &expected, CATCH_UP).await;
        assert!(
            env.dead_letters(0, Duration::from_millis(100)).is_empty(),
            "a transient error dead-lettered something"
        );
        assert_eq!(started.events("dead_lettered"), 0);
        assert_eq!(started.events("applied"), all.len() as u64, "every event applied once");
        started.stop().await;
        assert_same(
            "after an outage",
            &reference(subject, events_of(all)).await,
            &subject.snapshot(&copy).await,
        );
    })
    .await;
}
