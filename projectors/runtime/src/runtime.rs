//! The consumer side: one Kafka consumer per process, polled on its own thread, handing
//! each partition's records to that partition's worker (a tokio task).
//!
//! * On assignment the partitions start at the position stored **in the sink**, not at
//!   Kafka's committed offset, so the read model and its position can never disagree.
//! * A partition whose worker is behind is paused (its records wait in a bounded buffer)
//!   and resumed once the worker drained it: memory stays bounded, other partitions go on.
//! * Kafka offsets are committed after the sink stored them: asynchronously as batches land,
//!   synchronously on revoke and shutdown, after the workers finished their batch in hand.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bounded::Bounded;
use crate::dlq::DeadLetters;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::record::Record;
use crate::sink::{Sink, StoredPosition};
use crate::worker::{Exit, Slot, Worker, NONE};
use crate::Settings;

struct WorkerHandle {
    records: mpsc::Sender<Record>,
    stop: watch::Sender<bool>,
    slot: Arc<Slot>,
    task: JoinHandle<Exit>,
}

/// Everything the polling thread, the rebalance callback and the workers share.
pub(crate) struct Shared {
    pub settings: Arc<Settings>,
    pub handle: tokio::runtime::Handle,
    pub sink: Arc<dyn Sink>,
    pub dlq: DeadLetters,
    pub metrics: Metrics,
    pub health: Health,
    pub progress: watch::Sender<u64>,
    pub shutdown: CancellationToken,
    // Looked up for every record the polling thread routes: a fast hasher.
    workers: Mutex<foldhash::HashMap<i32, WorkerHandle>>,
    /// Records of paused partitions, oldest first.
    pending: Mutex<foldhash::HashMap<i32, VecDeque<Record>>>,
    /// The offset of the last record handed on, per partition (where a resumed partition
    /// goes on from).
    routed: Mutex<foldhash::HashMap<i32, i64>>,
    /// Offsets last committed to Kafka, per partition.
    committed: Mutex<HashMap<i32, i64>>,
}

/// `parking_lot`'s locks are not poisoned by a panic elsewhere; the data is still
/// consistent for our use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

impl Shared {
    pub(crate) fn new(
        settings: Arc<Settings>,
        handle: tokio::runtime::Handle,
        sink: Arc<dyn Sink>,
        dlq: DeadLetters,
        parts: crate::Shared,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            settings,
            handle,
            sink,
            dlq,
            metrics: parts.metrics,
            health: parts.health,
            progress: parts.progress,
            shutdown,
            workers: Mutex::default(),
            pending: Mutex::default(),
            routed: Mutex::default(),
            committed: Mutex::new(HashMap::new()),
        }
    }

    fn topic(&self) -> &str {
        &self.settings.topic
    }

    fn tpl(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(self.topic(), *p);
        }
        tpl
    }

    /// Longest a rebalance callback may spend on one partition-set's I/O.
    fn rebalance_bound(&self) -> Duration {
        Duration::from_millis(self.settings.config.rebalance_timeout_ms.max(100))
    }

    /// Reads the stored positions, retrying until the sink answers, `bound` has passed or
    /// shutdown (`None` for the last two).
    fn positions(
        &self,
        partitions: &[i32],
        bound: Duration,
    ) -> Option<HashMap<i32, StoredPosition>> {
        let deadline = Instant::now() + bound;
        let mut attempt: u32 = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Timers need the runtime's context: built inside `block_on`.
            let read = self.handle.block_on(async {
                tokio::time::timeout(left, self.sink.positions(partitions)).await
            });
            let read = match read {
                Ok(read) => read,
                Err(_) => Err(crate::SinkError::Transient(format!(
                    "reading the positions took longer than {} ms",
                    bound.as_millis()
                ))),
            };
            match read {
                Ok(found) => {
                    self.health.sink_ok(true);
                    return Some(found.into_iter().map(|p| (p.partition, p)).collect());
                }
                Err(e) => {
                    self.health.sink_ok(false);
                    if attempt == 0 || attempt.is_power_of_two() {
                        tracing::warn!(error = %e, "cannot read the stored positions; retrying");
                    }
                    if self.shutdown.is_cancelled() || Instant::now() >= deadline {
                        return None;
                    }
                    let pause = crate::backoff(&self.settings.config, attempt)
                        .min(deadline.saturating_duration_since(Instant::now()));
                    std::thread::sleep(pause);
                    attempt += 1;
                }
            }
        }
    }

    /// Starts `partition`'s worker at `position`; `None` for `position` means the stored
    /// position is not known yet: the worker reads it and the partition starts over there.
    fn start_worker(&self, partition: i32, position: Option<Option<StoredPosition>>) {
        let position_known = position.is_some();
        let position = position.flatten();
        let capacity = self.settings.config.partition_buffer.max(1);
        let (records_tx, records_rx) = mpsc::channel(capacity);
        let (stop_tx, stop_rx) = watch::channel(false);
        let stored = position.as_ref().map_or(NONE, |p| p.offset);
        let slot = Arc::new(Slot {
            stored: AtomicI64::new(stored),
        });
        self.health.update(partition, |p| {
            p.stored_offset = position.as_ref().map(|p| p.offset);
            p.paused = false;
        });
        let worker = Worker {
            partition,
            settings: Arc::clone(&self.settings),
            sink: Arc::clone(&self.sink),
            dlq: self.dlq.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            progress: self.progress.clone(),
            slot: Arc::clone(&slot),
            records: records_rx,
            stop: stop_rx,
            position,
            position_known,
            versions: Bounded::new(self.settings.config.worker_accounts_max),
            quarantined: Bounded::new(self.settings.config.worker_accounts_max),
            held: None,
        };
        let task = self.handle.spawn(worker.run());
        lock(&self.workers).insert(
            partition,
            WorkerHandle {
                records: records_tx,
                stop: stop_tx,
                slot,
                task,
            },
        );
        self.metrics.assigned(lock(&self.workers).len());
    }

    /// Stops the workers of `partitions` after their batch in hand; returns the offsets
    /// their sink stored last.
    fn stop_workers(&self, partitions: &[i32]) -> HashMap<i32, i64> {
        let handles: Vec<(i32, WorkerHandle)> = {
            let mut workers = lock(&self.workers);
            partitions
                .iter()
                .filter_map(|p| workers.remove(p).map(|w| (*p, w)))
                .collect()
        };
        {
            let mut pending = lock(&self.pending);
            let mut routed = lock(&self.routed);
            for p in partitions {
                pending.remove(p);
                routed.remove(p);
            }
        }
        for (_, w) in &handles {
            let _ = w.stop.send(true);
        }
        // Every worker finishes its batch in hand within one bound, together: a sink that
        // hangs must not keep this (rebalance) callback past Kafka's poll interval.
        let deadline = tokio::time::Instant::now() + self.rebalance_bound();
        let mut stored = HashMap::new();
        for (partition, mut w) in handles {
            let finished = self
                .handle
                .block_on(async { tokio::time::timeout_at(deadline, &mut w.task).await });
            let offset = match finished {
                Ok(Ok(Exit::Stopped(offset))) => offset,
                Ok(Ok(Exit::Rewind(_))) => w.slot.stored.load(Ordering::Acquire),
                Ok(Err(e)) => {
                    tracing::error!(partition, error = %e, "partition worker failed");
                    w.slot.stored.load(Ordering::Acquire)
                }
                Err(_) => {
                    // Cancelled mid-write: the transaction is rolled back, or it commits and
                    // the next owner's fenced write sees a moved position and re-reads it.
                    w.task.abort();
                    tracing::warn!(
                        partition,
                        bound_ms = self.settings.config.rebalance_timeout_ms,
                        "the partition's batch in hand did not finish in time; cancelled it"
                    );
                    self.metrics.sink_error("cancelled");
                    w.slot.stored.load(Ordering::Acquire)
                }
            };
            if offset != NONE {
                stored.insert(partition, offset);
            }
            self.health.remove(partition);
            self.metrics.forget_partition(partition);
        }
        // Another instance may own these next: nothing cached about them stays trusted.
        self.sink.release(partitions);
        self.metrics.assigned(lock(&self.workers).len());
        stored
    }

    /// Commits `stored` (offsets of last handled records) as Kafka offsets.
    fn commit(
        &self,
        consumer: &BaseConsumer<Context>,
        stored: &HashMap<i32, i64>,
        mode: CommitMode,
    ) {
        let mut tpl = TopicPartitionList::new();
        let mut committed = lock(&self.committed);
        for (partition, offset) in stored {
            if committed.get(partition) == Some(offset) {
                continue;
            }
            if tpl
                .add_partition_offset(self.topic(), *partition, Offset::Offset(offset + 1))
                .is_ok()
            {
                committed.insert(*partition, *offset);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, mode) {
            // Harmless for correctness: positions live in the sink. Kafka's offsets only
            // feed lag tools.
            tracing::debug!(error = %e, "committing offsets to Kafka");
            for partition in stored.keys() {
                committed.remove(partition);
            }
        }
    }

    fn stored_offsets(&self) -> HashMap<i32, i64> {
        lock(&self.workers)
            .iter()
            .filter_map(|(p, w)| {
                let offset = w.slot.stored.load(Ordering::Acquire);
                (offset != NONE).then_some((*p, offset))
            })
            .collect()
    }

    fn on_assign(&self, consumer: &BaseConsumer<Context>, tpl: &mut TopicPartitionList) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(self.topic())
            .iter()
            .map(|e| e.partition())
            .collect();
        self.health.joined();
        if partitions.is_empty() {
            return;
        }
        // Whatever was cached about these partitions predates their new ownership.
        self.sink.release(&partitions);
        // Bounded: a sink that does not answer must not hold the group's rebalance. Without
        // the positions, each worker reads its own and starts its partition over there.
        let positions = self.positions(&partitions, self.rebalance_bound());
        if positions.is_none() {
            if self.shutdown.is_cancelled() {
                return;
            }
            tracing::warn!(
                ?partitions,
                "the stored positions could not be read within the rebalance bound; \
                 each partition reads its own and starts over there"
            );
        }
        for partition in &partitions {
            let (offset, position) = match &positions {
                Some(found) => match found.get(partition) {
                    Some(p) => (Offset::Offset(p.offset + 1), Some(Some(p.clone()))),
                    None => (Offset::Beginning, Some(None)),
                },
                // Kafka's committed offset is only a guess here; the worker corrects it.
                None => (Offset::Stored, None),
            };
            if let Err(e) = tpl.set_partition_offset(self.topic(), *partition, offset) {
                tracing::error!(partition, error = %e, "cannot set the start offset");
            }
            self.start_worker(*partition, position);
        }
        tracing::info!(
            ?partitions,
            "partitions assigned; resuming from the stored positions"
        );
        let _ = consumer;
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Context>, tpl: &TopicPartitionList) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(self.topic())
            .iter()
            .map(|e| e.partition())
            .collect();
        // librdkafka keeps a partition's pause across a revoke and a re-assignment: release
        // the ones backpressure paused, or their next owner here would never read them.
        let paused: Vec<i32> = {
            let pending = lock(&self.pending);
            partitions
                .iter()
                .copied()
                .filter(|p| pending.contains_key(p))
                .collect()
        };
        if !paused.is_empty() {
            let _ = consumer.resume(&self.tpl(&paused));
        }
        let stored = self.stop_workers(&partitions);
        if !consumer.assignment_lost() {
            self.commit(consumer, &stored, CommitMode::Sync);
        }
        tracing::info!(
            ?partitions,
            "partitions revoked; batches finished and committed"
        );
    }
}

/// The consumer's context: runs the rebalance protocol with our hooks.
pub(crate) struct Context {
    pub shared: Arc<Shared>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.health.kafka_ok(false);
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.shared.on_assign(consumer, tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                // A partition paused before a lost assignment may come back still paused.
                let _ = consumer.resume(tpl);
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.shared.on_revoke(consumer, tpl);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                let all: Vec<i32> = lock(&self.shared.workers).keys().copied().collect();
                self.shared.stop_workers(&all);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the new assignment");
        }
    }
}

/// The polling loop; returns when `shared.shutdown` is set, after stopping every worker and
/// committing their positions.
pub(crate) fn poll(consumer: BaseConsumer<Context>, shared: Arc<Shared>) {
    let commit_every = Duration::from_millis(200);
    let mut last_commit = Instant::now();
    let mut routed_since_chores = 0_u32;
    while !shared.shutdown.is_cancelled() {
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Ok(message)) => {
                shared.health.kafka_ok(true);
                route(&consumer, &shared, Record::from_message(&message));
                // The chores below take every lock and look at every partition: during a
                // catch-up they run once per CHORES_EVERY records, not once per record.
                routed_since_chores += 1;
                if routed_since_chores < CHORES_EVERY {
                    continue;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consuming");
            }
        }
        routed_since_chores = 0;
        drain_pending(&consumer, &shared);
        restart_rewound(&consumer, &shared);
        if last_commit.elapsed() >= commit_every {
            let stored = shared.stored_offsets();
            shared.commit(&consumer, &stored, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    let all: Vec<i32> = lock(&shared.workers).keys().copied().collect();
    let stored = shared.stop_workers(&all);
    shared.commit(&consumer, &stored, CommitMode::Sync);
    consumer.unsubscribe();
    tracing::info!("consumer stopped; positions stored and committed");
}

/// Records the polling thread routes in a row before it drains paused partitions, restarts
/// rewound workers and commits (also done whenever a poll finds nothing): at 100,000
/// records a second, every third of a millisecond.
const CHORES_EVERY: u32 = 32;

fn pause(consumer: &BaseConsumer<Context>, shared: &Shared, partition: i32, paused: bool) {
    let tpl = shared.tpl(&[partition]);
    let result = if paused {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = result {
        tracing::warn!(partition, paused, error = %e, "pausing/resuming a partition");
    }
    shared.health.update(partition, |p| p.paused = paused);
    shared.metrics.paused(lock(&shared.pending).len());
}

fn route(consumer: &BaseConsumer<Context>, shared: &Shared, record: Record) {
    let partition = record.partition;
    let sender = match lock(&shared.workers).get(&partition) {
        Some(w) => w.records.clone(),
        // Not ours (any more): the owner reads it from its stored position.
        None => return,
    };
    lock(&shared.routed).insert(partition, record.offset);
    let mut pending = lock(&shared.pending);
    if let Some(queue) = pending.get_mut(&partition) {
        queue.push_back(record);
        return;
    }
    match sender.try_send(record) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(record)) => {
            pending.insert(partition, VecDeque::from([record]));
            drop(pending);
            pause(consumer, shared, partition, true);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// Moves the records of paused partitions to their workers, and resumes a partition once
/// its queue is empty *and* its worker's channel is at most half full. Resuming costs a
/// fetch (librdkafka drops what it had prefetched for a paused partition and fetches again
/// from the position), so resuming as soon as one record fits would pay that fetch every
/// batch during a catch-up; with the half-full mark a paused partition gets a whole
/// fetch's worth of room first.
fn drain_pending(consumer: &BaseConsumer<Context>, shared: &Shared) {
    let resume_at = (shared.settings.config.partition_buffer.max(1) / 2).max(1);
    let mut resumed = Vec::new();
    {
        let workers = lock(&shared.workers);
        let mut pending = lock(&shared.pending);
        for (partition, queue) in pending.iter_mut() {
            let Some(worker) = workers.get(partition) else {
                queue.clear();
                resumed.push(*partition);
                continue;
            };
            while let Some(record) = queue.pop_front() {
                match worker.records.try_send(record) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(record)) => {
                        queue.push_front(record);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        queue.clear();
                        break;
                    }
                }
            }
            if queue.is_empty() && worker.records.capacity() >= resume_at {
                resumed.push(*partition);
            }
        }
        for p in &resumed {
            pending.remove(p);
        }
    }
    for partition in resumed {
        pause(consumer, shared, partition, false);
        // librdkafka fetches a resumed partition only at its broker thread's next wake-up,
        // up to a second later (measured: every backpressure pause cost a catch-up about a
        // second per partition); a seek to where the partition stands (the record after the
        // last one handed on, which is where librdkafka would go on from) fetches at once.
        let owned = lock(&shared.workers).contains_key(&partition);
        let last = lock(&shared.routed).get(&partition).copied();
        if let (true, Some(last)) = (owned, last) {
            let _ = consumer.seek(
                shared.topic(),
                partition,
                Offset::Offset(last + 1),
                Duration::ZERO,
            );
        }
    }
}

/// A worker whose sink position went backwards ended itself: start the partition over from
/// the sink's position.
fn restart_rewound(consumer: &BaseConsumer<Context>, shared: &Shared) {
    let finished: Vec<i32> = lock(&shared.workers)
        .iter()
        .filter(|(_, w)| w.task.is_finished())
        .map(|(p, _)| *p)
        .collect();
    for partition in finished {
        let Some(worker) = lock(&shared.workers).remove(&partition) else {
            continue;
        };
        lock(&shared.pending).remove(&partition);
        lock(&shared.routed).remove(&partition);
        let position = match shared.handle.block_on(worker.task) {
            Ok(Exit::Rewind(position)) => position,
            Ok(Exit::Stopped(_)) => continue,
            Err(e) => {
                tracing::error!(partition, error = %e, "partition worker failed; restarting it");
                match shared.positions(&[partition], shared.rebalance_bound()) {
                    Some(mut found) => found.remove(&partition),
                    None => {
                        // Not known yet: the new worker reads it and rewinds again.
                        shared.sink.release(&[partition]);
                        shared.start_worker(partition, None);
                        continue;
                    }
                }
            }
        };
        shared.sink.release(&[partition]);
        let offset = position
            .as_ref()
            .map_or(Offset::Beginning, |p| Offset::Offset(p.offset + 1));
        lock(&shared.committed).remove(&partition);
        shared.start_worker(partition, Some(position));
        if let Err(e) = consumer.seek(shared.topic(), partition, offset, Duration::from_secs(10)) {
            tracing::error!(partition, error = %e, "seeking to the stored position");
        }
        pause(consumer, shared, partition, false);
    }
}

/// The Kafka timestamp (ms) of `partition`'s record at `offset`, read with the lag client
/// (assigned, never a member of the group, never committing); `None` when it cannot be
/// read now (the next round tries again).
fn first_waiting_time(
    client: &BaseConsumer,
    shared: &Shared,
    partition: i32,
    offset: i64,
) -> Option<i64> {
    match crate::group_lag::first_record_time(client, shared.topic(), partition, offset) {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(partition, offset, error = %format!("{e:#}"), "reading the first waiting record");
            None
        }
    }
}

/// Rounds of failed watermark requests after which the lag client is replaced.
const LAG_CLIENT_FAILED_ROUNDS: u32 = 3;

/// Measures each assigned partition's lag every `interval` on its own thread (watermark
/// requests block), until shutdown. `connect` makes the client it asks with: after
/// [`LAG_CLIENT_FAILED_ROUNDS`] rounds in a row in which a request failed, the client is
/// dropped and a new one made. (A chaos run saw instances whose consumer read again after
/// a whole Kafka cluster was restarted while their lag stayed unmeasured for minutes,
/// which kept them unready; a fresh client starts from a fresh bootstrap.)
pub(crate) fn measure_lag(
    connect: impl Fn() -> anyhow::Result<BaseConsumer>,
    shared: Arc<Shared>,
    interval: Duration,
) {
    let mut client = None;
    let mut failed_rounds = 0;
    // Per partition that has applied nothing yet: the offset of its first waiting record
    // and that record's Kafka timestamp (ms), read once per offset.
    let mut waiting: HashMap<i32, (i64, i64)> = HashMap::new();
    while !shared.shutdown.is_cancelled() {
        if client.is_none() {
            match connect() {
                Ok(made) => client = Some(made),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "creating the Kafka lag client")
                }
            }
        }
        let partitions: Vec<(i32, i64)> = lock(&shared.workers)
            .iter()
            .map(|(p, w)| (*p, w.slot.stored.load(Ordering::Acquire)))
            .collect();
        let mut ok = client.is_some();
        let mut last_error = None;
        waiting.retain(|p, _| partitions.iter().any(|(q, _)| q == p));
        for (partition, stored) in partitions {
            let Some(client) = client.as_ref() else {
                break;
            };
            match client.fetch_watermarks(shared.topic(), partition, Duration::from_secs(5)) {
                Ok((low, high)) => {
                    let next = if stored == NONE { low } else { stored + 1 };
                    let lag = (high - next).max(0);
                    shared.metrics.lag(partition, lag);
                    let now = chrono::Utc::now();
                    let mut applied = None;
                    shared
                        .health
                        .update(partition, |p| applied = p.last_event_time);
                    // Records wait: the model is as old as its last applied event; before
                    // the first one here (a partition just assigned, a store down since),
                    // as old as the first waiting record (its Kafka timestamp).
                    let ms = match (lag, applied) {
                        (0, _) => 0,
                        (_, Some(t)) => (now - t).num_milliseconds().max(0),
                        (_, None) => {
                            let since = match waiting.get(&partition) {
                                Some((offset, since)) if *offset == next => Some(*since),
                                _ => {
                                    let since = first_waiting_time(
                                        client,
                                        &shared,
                                        partition,
                                        next.max(low),
                                    );
                                    if let Some(ms) = since {
                                        waiting.insert(partition, (next, ms));
                                    }
                                    since
                                }
                            };
                            since.map_or(0, |ms| (now.timestamp_millis() - ms).max(0))
                        }
                    };
                    shared.health.update(partition, |p| {
                        p.end_offset = Some(high);
                        p.lag = Some(lag);
                        p.lag_ms = Some(ms);
                    });
                    shared.metrics.lag_seconds(partition, ms as f64 / 1e3);
                }
                Err(e) => {
                    ok = false;
                    tracing::debug!(partition, error = %e, "fetching watermarks");
                    last_error = Some(e);
                }
            }
        }
        if ok {
            failed_rounds = 0;
        } else {
            failed_rounds += 1;
            if failed_rounds >= LAG_CLIENT_FAILED_ROUNDS && client.is_some() {
                tracing::warn!(
                    rounds = failed_rounds,
                    error = %last_error.map(|e| e.to_string()).unwrap_or_default(),
                    "the lag client keeps failing; replacing it"
                );
                client = None;
                failed_rounds = 0;
            }
        }
        shared.health.kafka_ok(ok);
        crate::group_lag::sleep_unless_cancelled(interval, &shared.shutdown);
    }
}
