//! One partition's worker: collects ordered batches, plans them against the handled account
//! versions, dead-letters what cannot be applied, and has the sink write each batch together
//! with the partition's position. Partitions run independently of each other.

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use crate::bounded::Bounded;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_events::Envelope;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::dlq::DeadLetters;
use crate::health::Health;
use crate::metrics::{Metrics, Outcome};
use crate::plan::{plan, Decoded, Plan};
use crate::record::Record;
use crate::sink::{AccountVersion, Batch, PositionUpdate, Sink, SinkError, StoredPosition};
use crate::Settings;

/// No stored position (the partition was never written).
pub(crate) const NONE: i64 = -1;

/// What the polling thread and a worker share about one partition.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Offset of the last record the sink stored for this partition, or [`NONE`].
    pub stored: AtomicI64,
}

/// Why a worker stops early.
#[derive(Debug)]
pub(crate) enum Halt {
    /// Shutdown or a revoke asked it to, in the middle of waiting.
    Stopped,
    /// The sink's position went backwards (the read model was reset under us): the polling
    /// thread restarts this partition from the sink's position.
    Rewind(Option<StoredPosition>),
}

/// How a worker ended.
#[derive(Debug)]
pub(crate) enum Exit {
    /// Stopped; the stored offset the partition was left at ([`NONE`] if none).
    Stopped(i64),
    Rewind(Option<StoredPosition>),
}

pub(crate) struct Worker {
    pub partition: i32,
    pub settings: Arc<Settings>,
    pub sink: Arc<dyn Sink>,
    pub dlq: DeadLetters,
    pub metrics: Metrics,
    pub health: Health,
    pub progress: watch::Sender<u64>,
    pub slot: Arc<Slot>,
    pub records: mpsc::Receiver<Record>,
    pub stop: watch::Receiver<bool>,
    /// Position as last read from or written to the sink.
    pub position: Option<StoredPosition>,
    /// False when the partition was assigned without its stored position (the sink did not
    /// answer within the rebalance's time bound): the worker reads it first, then asks the
    /// polling thread to start the partition over from there ([`Exit::Rewind`]).
    pub position_known: bool,
    /// Last handled version of accounts seen on this partition (only this partition's
    /// owner writes them, so the cache stays true while we own it). Bounded: a forgotten
    /// account is read from the sink again.
    pub versions: Bounded<Uuid, u64>,
    /// Accounts reported for a version gap or a dead-lettered event: their later events are
    /// dead-lettered at once. Bounded: a forgotten account is found again by the same checks.
    pub quarantined: Bounded<Uuid, ()>,
    /// Why the partition is held, while it is (see [`Worker::set_held`]).
    pub held: Option<String>,
}

impl Worker {
    /// Runs until stopped or rewound.
    pub(crate) async fn run(mut self) -> Exit {
        if !self.position_known {
            return match self.read_position().await {
                Ok(position) => Exit::Rewind(position),
                Err(_) => Exit::Stopped(NONE),
            };
        }
        let max = self.settings.config.batch_max_events.max(1);
        let linger = Duration::from_millis(self.settings.config.batch_max_wait_ms);
        let mut buffer: Vec<Record> = Vec::with_capacity(max);
        loop {
            if *self.stop.borrow() {
                break;
            }
            tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                record = self.records.recv() => match record {
                    Some(record) => buffer.push(record),
                    None => break,
                },
            }
            let deadline = tokio::time::Instant::now() + linger;
            while buffer.len() < max {
                match self.records.try_recv() {
                    Ok(record) => {
                        buffer.push(record);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
                tokio::select! {
                    biased;
                    _ = self.stop.changed() => break,
                    () = tokio::time::sleep_until(deadline) => break,
                    record = self.records.recv() => match record {
                        Some(record) => buffer.push(record),
                        None => break,
                    },
                }
            }
            // A stop request lets the batch in hand finish: it is written and committed.
            let batch = std::mem::take(&mut buffer);
            match self.process(batch).await {
                Ok(()) => {}
                Err(Halt::Stopped) => break,
                Err(Halt::Rewind(position)) => return Exit::Rewind(position),
            }
        }
        Exit::Stopped(self.slot.stored.load(Ordering::Acquire))
    }

    fn stored_offset(&self) -> Option<i64> {
        self.position.as_ref().map(|p| p.offset)
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for `delay` unless asked to stop first.
    async fn pause(&mut self, delay: Duration) -> Result<(), Halt> {
        if self.stopping() {
            return Err(Halt::Stopped);
        }
        tokio::select! {
            _ = self.stop.changed() => Err(Halt::Stopped),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        crate::backoff(&self.settings.config, attempt)
    }

    /// Reads versions of `accounts` from the sink into `into` (0 for none) and the cache,
    /// retrying transient errors.
    async fn load_versions(
        &mut self,
        accounts: Vec<Uuid>,
        into: &mut HashMap<Uuid, u64>,
    ) -> Result<(), Halt> {
        let mut attempt = 0;
        loop {
            match self.sink.versions(&accounts).await {
                Ok(found) => {
                    for account in accounts {
                        let version = found.get(&account).copied().unwrap_or(0);
                        self.versions.insert(account, version);
                        into.insert(account, version);
                    }
                    self.health.sink_ok(true);
                    self.metrics
                        .worker_accounts(self.partition, self.versions.len());
                    return Ok(());
                }
                Err(e) => {
                    self.transient(&e.to_string(), attempt).await;
                    self.pause(self.backoff(attempt)).await?;
                    attempt += 1;
                }
            }
        }
    }

    async fn transient(&self, error: &str, attempt: u32) {
        self.metrics.sink_error("transient");
        self.health.sink_ok(false);
        self.health
            .update(self.partition, |p| p.last_error = Some(error.to_owned()));
        if attempt == 0 || attempt.is_power_of_two() {
            tracing::warn!(partition = self.partition, attempt, %error, "sink unavailable; retrying");
            // Best effort: the store may well be the thing that is down.
            let _ = self.sink.record_error(self.partition, error).await;
        }
    }

    /// Reads the partition's stored position, retrying transient errors.
    async fn read_position(&mut self) -> Result<Option<StoredPosition>, Halt> {
        let mut attempt = 0;
        loop {
            match self.sink.positions(&[self.partition]).await {
                Ok(mut found) => {
                    self.health.sink_ok(true);
                    return Ok(found.pop());
                }
                Err(e) => {
                    self.transient(&e.to_string(), attempt).await;
                    self.pause(self.backoff(attempt)).await?;
                    attempt += 1;
                }
            }
        }
    }

    /// Handles one batch of records from this partition, in order.
    async fn process(&mut self, records: Vec<Record>) -> Result<(), Halt> {
        let stored = self.stored_offset();
        let mut records: Vec<Record> = records
            .into_iter()
            .filter(|r| stored.is_none_or(|s| r.offset > s))
            .collect();
        let decode = self.settings.decode;
        let mut decoded: Vec<Decoded> = records.iter().map(decode).collect();
        // A record from a newer writer is not poison: everything before it is handled, then
        // the partition waits (nothing after it may be applied before it, or skipped).
        let upgrade = decoded.iter().position(|d| d.needs_upgrade).map(|at| {
            let why = decoded[at]
                .envelope
                .as_ref()
                .err()
                .cloned()
                .unwrap_or_default();
            records.truncate(at);
            decoded.truncate(at);
            why
        });
        if !records.is_empty() {
            self.process_decoded(records, decoded).await?;
        }
        match upgrade {
            Some(why) => self.hold_for_upgrade(why).await,
            None => Ok(()),
        }
    }

    async fn process_decoded(
        &mut self,
        records: Vec<Record>,
        decoded: Vec<Decoded>,
    ) -> Result<(), Halt> {
        let started = Instant::now();
        let Some(last_offset) = records.last().map(|r| r.offset) else {
            return Ok(());
        };

        // The handled versions of this batch's accounts: from the cache, else the sink.
        let mut versions: HashMap<Uuid, u64> = HashMap::new();
        let mut missing: HashSet<Uuid> = HashSet::new();
        for account in decoded
            .iter()
            .filter_map(|d| d.envelope.as_ref().ok().map(|e| e.account_id.0))
        {
            match self.versions.get(&account) {
                Some(v) => {
                    versions.insert(account, *v);
                }
                None => {
                    missing.insert(account);
                }
            }
        }
        if !missing.is_empty() {
            self.load_versions(missing.into_iter().collect(), &mut versions)
                .await?;
        }

        let quarantined = &self.quarantined;
        let mut planned = plan(&decoded, &versions, &|a| quarantined.contains_key(a));
        let mut attempt = 0;
        while !planned.gaps.is_empty() && attempt < self.settings.config.gap_retries {
            // The cache may be behind the sink (another writer); look again before blaming Kafka.
            self.pause(self.backoff(attempt)).await?;
            attempt += 1;
            let accounts: Vec<Uuid> = planned
                .gaps
                .iter()
                .filter_map(|(i, _)| decoded[*i].envelope.as_ref().ok().map(|e| e.account_id.0))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            self.load_versions(accounts, &mut versions).await?;
            let quarantined = &self.quarantined;
            planned = plan(&decoded, &versions, &|a| quarantined.contains_key(a));
        }
        let mut dead: Vec<(usize, String)> = std::mem::take(&mut planned.dead);
        for (index, handled) in std::mem::take(&mut planned.gaps) {
            if let Ok(envelope) = &decoded[index].envelope {
                let account = envelope.account_id.0;
                let reason = format!(
                    "version gap: account {account} is at version {handled}, event {} has version {}",
                    envelope.id, envelope.account_version
                );
                tracing::error!(
                    partition = self.partition,
                    offset = records[index].offset,
                    correlation_id = records[index].correlation_id().unwrap_or(""),
                    %reason,
                    "event not applied"
                );
                self.metrics.gap();
                self.quarantined.insert(account, ());
                dead.push((index, reason));
            }
        }

        self.write(&records, decoded, planned, dead, last_offset)
            .await?;
        let elapsed = started.elapsed();
        tracing::debug!(
            partition = self.partition,
            records = records.len(),
            last_offset,
            ms = elapsed.as_secs_f64() * 1e3,
            "batch stored"
        );
        self.metrics.batch(elapsed.as_secs_f64(), records.len());
        Ok(())
    }

    /// Holds the partition at a record this build cannot read, until the worker is stopped
    /// (a revoke or a shutdown; the projector upgraded to the writer's version then reads it
    /// from the stored position). Nothing is dead-lettered, skipped or applied past it, so
    /// no account loses an event and none is quarantined; the partition's later records
    /// wait in Kafka (the channel fills and the polling thread pauses the partition).
    async fn hold_for_upgrade(&mut self, why: String) -> Result<(), Halt> {
        let at = self.stored_offset().map_or(0, |o| o + 1);
        let reason = format!(
            "offset {at} holds an event this projector cannot read ({why}): deploy the projector \
             version that knows it; the partition then goes on by itself"
        );
        tracing::error!(partition = self.partition, offset = at, %reason, "partition held");
        self.set_held(Some(reason.clone()));
        // Best effort, for `prismctl status`: the store may be what is down.
        let _ = self.sink.record_error(self.partition, &reason).await;
        loop {
            if self.stopping() {
                return Err(Halt::Stopped);
            }
            if self.stop.changed().await.is_err() {
                return Err(Halt::Stopped);
            }
        }
    }

    /// Marks the partition held (with why) or released, on `/readyz` and in the metrics.
    fn set_held(&mut self, why: Option<String>) {
        if self.held == why {
            return;
        }
        self.metrics.held(self.partition, why.is_some());
        self.health.update(self.partition, |p| {
            p.held.clone_from(&why);
            if why.is_some() {
                p.last_error.clone_from(&why);
            }
        });
        self.held = why;
    }

    /// Dead-letters, then writes the batch and the position; retries until it is stored.
    async fn write(
        &mut self,
        records: &[Record],
        mut decoded: Vec<Decoded>,
        mut planned: Plan,
        mut dead: Vec<(usize, String)>,
        last_offset: i64,
    ) -> Result<(), Halt> {
        // The events move into the batch once; a retry sends the same batch again.
        let events: Vec<Envelope> = planned
            .apply
            .iter()
            .filter_map(|i| std::mem::replace(&mut decoded[*i].envelope, Err(String::new())).ok())
            .collect();
        let mut batch = Batch {
            versions: planned
                .versions
                .iter()
                .map(|(account, (version, event_id))| AccountVersion {
                    account_id: *account,
                    version: *version,
                    event_id: *event_id,
                })
                .collect(),
            events,
            offsets: Vec::new(),
            position: None,
        };
        let mut attempt = 0;
        let mut dead_sent = 0;
        // How often the sink rejected each event of this batch (by event id).
        let mut rejections: HashMap<Uuid, u32> = HashMap::new();
        loop {
            // Dead letters are on Kafka before the position moves past them.
            while dead_sent < dead.len() {
                let (index, reason) = &dead[dead_sent];
                match self.dlq.send(&records[*index], reason).await {
                    Ok(()) => {
                        self.metrics
                            .event(decoded[*index].event_type, Outcome::DeadLettered, 1);
                        tracing::warn!(
                            partition = self.partition,
                            offset = records[*index].offset,
                            correlation_id = records[*index].correlation_id().unwrap_or(""),
                            dlq = self.dlq.topic(),
                            reason = %reason,
                            "dead-lettered"
                        );
                        dead_sent += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "dead-letter topic unavailable; retrying");
                        self.pause(self.backoff(attempt)).await?;
                        attempt += 1;
                    }
                }
            }

            let last_applied = batch.events.last();
            let previous = self.position.as_ref();
            let position = PositionUpdate {
                partition: self.partition,
                expected: self.stored_offset(),
                offset: last_offset,
                event_id: last_applied
                    .map(|e| e.id)
                    .or(previous.and_then(|p| p.event_id)),
                event_time: last_applied
                    .map(|e| e.time)
                    .or(previous.and_then(|p| p.event_time)),
                writer: self.settings.writer.clone(),
            };
            batch.position = Some(position.clone());
            // In step with the events (a rejection removes an event and its record index).
            batch.offsets = planned.apply.iter().map(|i| records[*i].offset).collect();
            match self.sink.apply(&batch).await {
                Ok(()) => {
                    if self.held.is_some() {
                        tracing::info!(
                            partition = self.partition,
                            "the store took the write; partition released"
                        );
                        self.set_held(None);
                    }
                    self.stored(position, &planned, &decoded, &batch.events);
                    if let Some((_, reason)) = dead.last() {
                        // After the write, so it lands on the row the batch just stored.
                        let _ = self.sink.record_error(self.partition, reason).await;
                        self.health
                            .update(self.partition, |p| p.last_error = Some(reason.clone()));
                    }
                    return Ok(());
                }
                Err(SinkError::Transient(e)) => {
                    self.transient(&e, attempt).await;
                    self.pause(self.backoff(attempt)).await?;
                    attempt += 1;
                }
                Err(SinkError::Permanent(e)) => {
                    self.metrics.sink_error("permanent");
                    let reason = format!(
                        "the read model's store refuses a write for good ({e}); nothing past \
                         offset {} is applied until the store is fixed",
                        self.stored_offset().map_or(0, |o| o + 1)
                    );
                    if self.held.is_none() {
                        tracing::error!(partition = self.partition, %reason, "partition held");
                        let _ = self.sink.record_error(self.partition, &reason).await;
                    }
                    self.set_held(Some(reason));
                    // Slowly: the same write fails the same way until someone fixes the store.
                    let longest = self.settings.config.retry_backoff_max_ms.max(1);
                    self.pause(Duration::from_millis(longest)).await?;
                }
                Err(SinkError::Fenced { stored, .. }) => {
                    self.metrics.sink_error("fenced");
                    // Expected while a rebuilt copy is handed over, or for a moment during
                    // a rebalance; a steady stream of these means two groups write one copy.
                    tracing::info!(
                        partition = self.partition,
                        ours = ?self.stored_offset(),
                        stored = ?stored,
                        "another writer moved this partition; re-reading its position"
                    );
                    return self.refenced(records, stored).await;
                }
                Err(SinkError::Rejected { index, reason }) => {
                    self.metrics.sink_error("rejected");
                    let Some(&record_index) = planned.apply.get(index) else {
                        tracing::error!(index, %reason, "sink rejected an event index outside the batch");
                        self.pause(self.backoff(attempt)).await?;
                        attempt += 1;
                        continue;
                    };
                    let event_id = batch.events[index].id;
                    let count = rejections.entry(event_id).or_insert(0);
                    *count += 1;
                    if *count > self.settings.config.poison_retries {
                        rejections.remove(&event_id);
                        planned.apply.remove(index);
                        let rejected = batch.events.remove(index);
                        dead.push((record_index, format!("rejected by the projector: {reason}")));
                        // The account's later events cannot follow a missing one (the fold
                        // refuses a version skip): they go to the dead-letter topic too, and
                        // so will its events in later batches, until a rebuild.
                        let account = rejected.account_id.0;
                        self.quarantined.insert(account, ());
                        let mut i = index;
                        while i < batch.events.len() {
                            if batch.events[i].account_id.0 == account {
                                let later = batch.events.remove(i);
                                let record_index = planned.apply.remove(i);
                                dead.push((
                                    record_index,
                                    format!(
                                        "account {account}: its event {} (version {}) was dead-lettered; \
                                         version {} cannot be applied without it; rebuild the read model",
                                        rejected.id, rejected.account_version, later.account_version
                                    ),
                                ));
                            } else {
                                i += 1;
                            }
                        }
                    } else {
                        tracing::warn!(partition = self.partition, %event_id, %reason, "sink rejected an event; retrying");
                        self.pause(self.backoff(0)).await?;
                    }
                }
            }
        }
    }

    /// Another writer owns (or reset) the partition's position: adopt the sink's view.
    async fn refenced(&mut self, records: &[Record], _hint: Option<i64>) -> Result<(), Halt> {
        let mut attempt = 0;
        let position = loop {
            match self.sink.positions(&[self.partition]).await {
                Ok(mut found) => break found.pop(),
                Err(e) => {
                    self.transient(&e.to_string(), attempt).await;
                    self.pause(self.backoff(attempt)).await?;
                    attempt += 1;
                }
            }
        };
        let ours = self.stored_offset();
        let theirs = position.as_ref().map(|p| p.offset);
        self.versions.clear();
        self.sink.release(&[self.partition]);
        if theirs < ours {
            // The stored position went backwards (the read model was reset): this
            // partition starts over from there, with nothing of what is queued.
            tracing::warn!(
                partition = self.partition,
                ?ours,
                ?theirs,
                "stored position went backwards; re-reading the partition"
            );
            return Err(Halt::Rewind(position));
        }
        self.position = position;
        self.slot
            .stored
            .store(theirs.unwrap_or(NONE), Ordering::Release);
        // The other writer is ahead: whatever it has not covered is still ours to handle.
        let rest: Vec<Record> = records
            .iter()
            .filter(|r| theirs.is_none_or(|t| r.offset > t))
            .cloned()
            .collect();
        Box::pin(self.process(rest)).await
    }

    /// Bookkeeping after the sink stored a batch.
    fn stored(
        &mut self,
        position: PositionUpdate,
        planned: &Plan,
        decoded: &[Decoded],
        applied: &[Envelope],
    ) {
        for (account, (version, _)) in &planned.versions {
            self.versions.insert(*account, *version);
        }
        self.metrics
            .worker_accounts(self.partition, self.versions.len());
        self.position = Some(StoredPosition {
            partition: position.partition,
            offset: position.offset,
            event_id: position.event_id,
            event_time: position.event_time,
        });
        self.slot.stored.store(position.offset, Ordering::Release);
        self.health.sink_ok(true);
        self.health.update(self.partition, |p| {
            p.stored_offset = Some(position.offset);
            if position.event_time.is_some() {
                p.last_event_time = position.event_time;
            }
            if let Some(end) = p.end_offset {
                // The end is past the record just handled, whatever the last measure said.
                let end = end.max(position.offset + 1);
                p.end_offset = Some(end);
                p.lag = Some(end - position.offset - 1);
            }
        });
        let now = chrono::Utc::now();
        let traced = tracing::enabled!(tracing::Level::DEBUG);
        for envelope in applied {
            self.metrics
                .event(envelope.event_type(), Outcome::Applied, 1);
            if traced {
                // The end of a request's trail: its correlation id, from the HTTP request
                // through the event's headers to the read model.
                tracing::debug!(
                    partition = self.partition,
                    event_id = %envelope.id,
                    account_id = %envelope.account_id.0,
                    version = envelope.account_version,
                    event_type = envelope.event_type(),
                    correlation_id = envelope.correlation_id.as_deref().unwrap_or(""),
                    "event applied"
                );
            }
            let delay = (now - envelope.time).num_microseconds().unwrap_or(i64::MAX);
            self.metrics.delay(delay as f64 / 1e6);
        }
        for index in &planned.skipped {
            self.metrics
                .event(decoded[*index].event_type, Outcome::Skipped, 1);
        }
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }
}
