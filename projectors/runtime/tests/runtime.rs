//! The runtime's own tests, on real Kafka with the in-memory reference sink: the runtime's
//! rules without any projector. Every test has a topic and a consumer group of its own.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt as _;
use prism_events::testing::{deposited, opened, Account, Feed};
use prism_events::Envelope;
use prism_projector::testing::contract::{self, ContractSubject, Outage};
use prism_projector::testing::kafka::{wait_offset, wait_versions, KafkaEnv};
use prism_projector::testing::{batch, eventually, unpositioned, MemorySink};
use prism_projector::Sink;
use serde_json::Value;

const CATCH_UP: Duration = Duration::from_secs(60);

/// The contract subject of the reference sink.
struct Memory;

struct Off(MemorySink);

#[async_trait]
impl Outage for Off {
    async fn end(self: Box<Self>) {
        self.0.set_unavailable(false);
    }
}

#[async_trait]
impl ContractSubject for Memory {
    type Copy = MemorySink;

    async fn fresh(&self) -> MemorySink {
        MemorySink::new()
    }

    fn sink(&self, copy: &MemorySink) -> Arc<dyn Sink> {
        Arc::new(copy.clone())
    }

    async fn snapshot(&self, copy: &MemorySink) -> Value {
        copy.snapshot()
    }

    async fn outage(&self, copy: &MemorySink) -> Option<Box<dyn Outage>> {
        copy.set_unavailable(true);
        Some(Box::new(Off(copy.clone())))
    }
}

#[tokio::test]
async fn the_memory_sink_passes_the_sink_checks() {
    contract::sink_checks(&Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_sink_passes_the_kafka_gap_check() {
    contract::kafka_gap_is_dead_lettered(&Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_sink_passes_the_kafka_poison_check() {
    contract::kafka_poison_is_dead_lettered_before_the_position_moves(&Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_sink_passes_the_kafka_transient_check() {
    contract::kafka_transient_errors_are_retried(&Memory).await;
}

/// Runs `body` with a Kafka environment and cleans it up afterwards.
async fn with_kafka<F, Fut>(partitions: i32, body: F)
where
    F: FnOnce(Arc<KafkaEnv>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let env = Arc::new(KafkaEnv::new(partitions).await);
    let outcome = std::panic::AssertUnwindSafe(body(Arc::clone(&env)))
        .catch_unwind()
        .await;
    env.clean_up().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn envelopes(events: &[(Envelope, i32)]) -> Vec<Envelope> {
    events.iter().map(|(e, _)| e.clone()).collect()
}

fn reference(events: Vec<Envelope>) -> Value {
    let sink = MemorySink::new();
    let outcome = sink
        .apply(&unpositioned(events))
        .now_or_never()
        .expect("the memory sink answers at once");
    outcome.expect("the reference events are valid");
    sink.snapshot()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_resumes_from_the_stored_position_not_the_committed_offset() {
    with_kafka(1, |env| async move {
        // Offsets 0..=2 hold poison: a runtime starting before offset 3 dead-letters it.
        let mut junk = Account::new(0);
        for _ in 0..3 {
            let (e, _) = junk.next_now(deposited(1));
            env.send_poison(&e, b"{never read", 0).await;
        }
        let mut ada = Account::new(0);
        let events: Vec<(Envelope, i32)> = vec![
            ada.next_now(opened("Ada", "DE", "EUR")),
            ada.next_now(deposited(500)),
            ada.next_now(deposited(700)),
        ];
        let offsets = env.send_all(&events).await;
        assert_eq!(offsets, vec![3, 4, 5]);

        // The sink says offsets up to 2 are handled; Kafka's committed offset says 6 (past
        // everything): the runtime must go by the sink.
        let sink = MemorySink::new();
        sink.apply(&batch(Vec::new(), 0, None, 2))
            .await
            .expect("seeding the position");
        env.commit_offset(0, 6);
        let started = env.start(Arc::new(sink.clone())).await;
        wait_offset(&sink, 0, 5, CATCH_UP).await;
        started.stop().await;

        assert_eq!(sink.snapshot(), reference(envelopes(&events)));
        assert!(
            env.dead_letters(0, Duration::from_millis(200)).is_empty(),
            "records before the stored position were read"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_skipped_and_counted() {
    with_kafka(1, |env| async move {
        let mut ada = Account::new(0);
        let first = ada.next_now(opened("Ada", "DE", "EUR"));
        let second = ada.next_now(deposited(500));
        let third = ada.next_now(deposited(700));
        // A relay that published twice: the same events again, and an old one late.
        let sent = vec![
            first.clone(),
            second.clone(),
            second.clone(),
            third.clone(),
            first.clone(),
        ];
        let sink = MemorySink::new();
        let started = env.start(Arc::new(sink.clone())).await;
        let offsets = env.send_all(&sent).await;
        wait_offset(&sink, 0, offsets[4], CATCH_UP).await;
        assert_eq!(started.events("skipped"), 2);
        assert_eq!(started.events("applied"), 3);
        started.stop().await;
        assert_eq!(sink.snapshot(), reference(vec![first.0, second.0, third.0]));
        assert!(env.dead_letters(0, Duration::from_millis(200)).is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_sink_error_holds_the_partition_until_the_store_is_fixed() {
    with_kafka(2, |env| async move {
        let sink = MemorySink::new();
        let started = env.start(Arc::new(sink.clone())).await;
        let mut feed = Feed::new(31, 4, 2);
        let first = feed.take(8);
        env.send_all(&first).await;
        wait_versions(
            &sink,
            &prism_events::testing::last_versions(&first),
            CATCH_UP,
        )
        .await;
        let before = sink.snapshot();
        let positions = (sink.position(0), sink.position(1));

        sink.set_refusing(Some("column balance_minor out of range"));
        let held = feed.take(8);
        env.send_all(&held).await;
        let report = eventually("both partitions held", CATCH_UP, || {
            let report = started.health();
            async move {
                (report
                    .partitions
                    .values()
                    .filter(|p| p.held.is_some())
                    .count()
                    == 2)
                    .then_some(report)
            }
        })
        .await;
        assert!(
            !report.ready,
            "a held partition is not ready: {:?}",
            report.reasons
        );
        assert!(
            report.reasons.iter().any(|r| r.contains("out of range")),
            "{:?}",
            report.reasons
        );
        assert_eq!(started.metric("prism_projector_partition_held", &[]), 2.0);
        // Held: nothing applied, skipped or dead-lettered; the positions stay.
        assert_eq!(sink.snapshot(), before);
        assert_eq!((sink.position(0), sink.position(1)), positions);
        assert!(sink
            .last_error(0)
            .is_some_and(|e| e.contains("refuses a write for good")));
        let permanent = sink
            .attempts()
            .iter()
            .filter(|a| a.outcome == "permanent")
            .count();
        assert!(permanent >= 2, "{permanent} refused writes");

        sink.set_refusing(None);
        let mut all = first;
        all.extend(held);
        wait_versions(&sink, &prism_events::testing::last_versions(&all), CATCH_UP).await;
        eventually("the partitions are released", CATCH_UP, || {
            let report = started.health();
            async move {
                report
                    .partitions
                    .values()
                    .all(|p| p.held.is_none())
                    .then_some(())
            }
        })
        .await;
        assert_eq!(started.metric("prism_projector_partition_held", &[]), 0.0);
        assert_eq!(started.events("dead_lettered"), 0);
        started.stop().await;
        assert_eq!(sink.snapshot(), reference(envelopes(&all)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried_with_a_growing_back_off() {
    with_kafka(1, |env| async move {
        let sink = MemorySink::new();
        let started = env.start(Arc::new(sink.clone())).await;
        let mut feed = Feed::new(32, 2, 1);
        let events = feed.take(6);
        sink.set_unavailable(true);
        env.send_all(&events).await;
        // Long enough for the back-off (50 ms doubling to 400 ms) to reach its ceiling.
        // The worker's retried calls (reading versions, then writing), not the best-effort
        // `record_error` that follows a failure at once.
        let retried = |a: &prism_projector::testing::memory::Attempt| {
            a.outcome == "transient" && a.call != "record_error"
        };
        eventually("five failed calls", CATCH_UP, || {
            let failed = sink.attempts().iter().filter(|a| retried(a)).count();
            async move { (failed >= 5).then_some(()) }
        })
        .await;
        sink.set_unavailable(false);
        wait_versions(
            &sink,
            &prism_events::testing::last_versions(&events),
            CATCH_UP,
        )
        .await;
        started.stop().await;

        let failed: Vec<_> = sink.attempts().into_iter().filter(|a| retried(a)).collect();
        let gaps: Vec<Duration> = failed.windows(2).map(|w| w[1].at - w[0].at).collect();
        // Without a back-off the writes would follow each other within microseconds; with
        // it the waits grow to `retry_backoff_max_ms` (400 ms).
        assert!(
            gaps.iter().all(|g| *g >= Duration::from_millis(40)),
            "retried without waiting: {gaps:?}"
        );
        assert!(
            gaps.iter().any(|g| *g >= Duration::from_millis(350)),
            "the back-off never grew: {gaps:?}"
        );
        assert!(env.dead_letters(0, Duration::from_millis(200)).is_empty());
        assert_eq!(sink.snapshot(), reference(envelopes(&events)));
    })
    .await;
}

/// A partition that has applied nothing since it was assigned (here: its store is down
/// from the start) reports how long its first waiting record has waited, not 0 s: the lag
/// alert must see a store outage on a partition that just moved to this instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_applied_nothing_yet_reports_the_age_of_its_first_waiting_record() {
    with_kafka(1, |env| async move {
        const WAITED_S: f64 = 90.0;
        let sent = chrono::Utc::now().timestamp_millis() - (WAITED_S * 1e3) as i64;
        let events = Feed::new(33, 2, 1).take(6);
        for (at, (event, partition)) in events.iter().enumerate() {
            env.send_at(event, *partition, sent + at as i64).await;
        }
        let sink = MemorySink::new();
        sink.set_unavailable(true);
        let started = env.start(Arc::new(sink.clone())).await;
        let seconds = || started.metric("prism_projector_lag_seconds", &[("partition", "0")]);
        eventually("the age of the first waiting record", CATCH_UP, || {
            let (records, seconds) = (
                started.metric("prism_projector_consumer_lag", &[("partition", "0")]),
                seconds(),
            );
            async move { (records == 6.0 && seconds >= WAITED_S).then_some(seconds) }
        })
        .await;
        let reported = seconds();
        assert!(
            reported < WAITED_S + 60.0,
            "the lag is older than the record: {reported} s"
        );

        sink.set_unavailable(false);
        wait_versions(
            &sink,
            &prism_events::testing::last_versions(&events),
            CATCH_UP,
        )
        .await;
        eventually("no lag once everything is applied", CATCH_UP, || {
            let seconds = seconds();
            async move { (seconds == 0.0).then_some(()) }
        })
        .await;
        started.stop().await;
        assert_eq!(sink.snapshot(), reference(envelopes(&events)));
    })
    .await;
}

/// How long the backpressure test's catch-up may take (group join included). Each time
/// its busy partition is resumed, its next fetch waits for the fetch in flight for the idle
/// partition, which the broker holds up to `fetch.wait.max.ms`: measured 10.9 s at
/// librdkafka's default (500 ms) against 2.4 s at the runtime's 100 ms.
const BACKPRESSURE_CATCH_UP: Duration = Duration::from_secs(6);

/// Opens 20 accounts of partition 0 and deposits `rounds` times into each, then times a
/// runtime catching up on them from the start (group join included) with `env`'s settings,
/// and checks the sink ends equal to the reference fold. Cleans `env` up, pass or fail.
/// Answers the number of records and the time taken; `what` names the run in its log line.
async fn time_catch_up(env: KafkaEnv, rounds: i64, what: &str) -> (usize, Duration) {
    let env = Arc::new(env);
    let outcome = std::panic::AssertUnwindSafe(async {
        let mut accounts: Vec<Account> = (0..20).map(|_| Account::new(0)).collect();
        let mut events: Vec<(Envelope, i32)> = accounts
            .iter_mut()
            .map(|a| a.next_now(opened("Ada", "DE", "EUR")))
            .collect();
        for round in 0..rounds {
            for account in &mut accounts {
                events.push(account.next_now(deposited(100 + round)));
            }
        }
        let offsets = env.send_all(&events).await;
        let last = offsets.last().copied().unwrap_or(-1);

        let sink = MemorySink::new();
        let begun = std::time::Instant::now();
        let started = env.start(Arc::new(sink.clone())).await;
        wait_offset(&sink, 0, last, CATCH_UP).await;
        let took = begun.elapsed();
        eprintln!("catch-up {what}: {took:?}");
        started.stop().await;
        assert_eq!(sink.snapshot(), reference(envelopes(&events)));
        (events.len(), took)
    })
    .catch_unwind()
    .await;
    env.clean_up().await;
    match outcome {
        Ok(timed) => timed,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_partition_resumes_without_waiting_out_an_idle_partitions_fetch() {
    let mut env = KafkaEnv::new(2).await;
    // A small buffer: the busy partition is paused and resumed about every 25 records.
    env.config.partition_buffer = 50;
    env.config.batch_max_events = 10;
    let (records, took) = time_catch_up(env, 60, "through the small buffer").await;
    assert!(
        took < BACKPRESSURE_CATCH_UP,
        "{records} records through a 50-record buffer took {took:?}: resumed partitions wait \
         for the idle partition's fetch"
    );
}

/// How long the full-queue test's catch-up may take (group join included): measured
/// 43.5 s with librdkafka's default `fetch.queue.backoff.ms` (1000 ms) against 1.3 s with
/// the runtime's.
const FULL_QUEUE_CATCH_UP: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_fetch_queue_does_not_stall_a_catching_up_partition_for_a_second() {
    let mut env = KafkaEnv::new(2).await;
    // Small fetches into a local queue that is full at one record: librdkafka decides
    // most next fetches with the last one's records not all polled yet, and puts them off
    // by `fetch.queue.backoff.ms`. A real backlog meets the same with the runtime's 16 MB
    // queue whenever the polling thread falls behind the broker (measured in the fraud
    // bench: partitions idle for a second at a time).
    for (key, value) in [
        ("queued.min.messages", "1"),
        ("max.partition.fetch.bytes", "65536"),
    ] {
        env.kafka.client.insert(key.into(), value.into());
    }
    let (records, took) =
        time_catch_up(env, 300, "through 64 KB fetches into a one-record queue").await;
    assert!(
        took < FULL_QUEUE_CATCH_UP,
        "{records} records took {took:?}: each fetch after a full queue was put off a second"
    );
}
