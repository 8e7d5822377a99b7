//! The outbox relay: every stored event reaches Kafka, in version order per account.
//!
//! # How order is kept without a lock between instances
//! The relay publishes an account's event `v` only once every earlier version is known to
//! be on Kafka: either this relay published `v - 1` itself (its in-memory watermark), or the
//! store says no earlier version of the account is still unpublished — in which case the
//! relay first publishes the earlier unpublished ones itself, in order. An event is marked
//! published only after Kafka acknowledged it. Two relays (two `prism-command` instances)
//! may therefore both publish an event — a duplicate that consumers drop by version — but
//! neither can put `v` on Kafka before `v - 1`: a copy of `v - 1` was acknowledged first.
//!
//! # Paths
//! - Fast path: the command service hands each appended commit to the relay over a channel,
//!   so publishing takes milliseconds, not a polling interval.
//! - Sweep: at start and every `sweep_interval_ms` the relay asks the store for unpublished
//!   events (a crash between append and publish, an instance that died, a failed publish)
//!   and publishes them the same way. A due sweep runs before the next fresh batch, so a
//!   steady stream of commits cannot starve it: leftovers wait at most one interval plus
//!   one publish cycle. After a full page it goes on page by page (fresh commits get a turn
//!   between pages) until the backlog is gone.
//! - One sweeper: only the relay holding the store's sweep lease publishes what a sweep
//!   finds (two relays sweeping the same pages after an outage published most of the
//!   backlog twice). It renews the lease on each sweep that publishes; a relay that died,
//!   hangs, cannot reach Kafka or had part of a page refused stops renewing, and another
//!   takes over when the lease expires ([`SWEEP_LEASE_SWEEPS`] sweep intervals, at least [`SWEEP_LEASE_MIN`]). The
//!   lease only saves work: order never depends on it.
//!
//! # Kafka down
//! Commands never wait for Kafka: they are stored, and the store is the outbox. The topic is
//! created by the relay, not at start, so prism-command starts and serves while Kafka is
//! down. Once a publish (or the topic's creation) fails, the relay takes Kafka as
//! unavailable: fresh commits are left in the store, and each sweep probes Kafka instead of
//! waiting for a publish timeout per batch. Accounts whose events were left behind lose
//! their watermark and go into a retry set; their fresh commits wait for the sweep, which
//! publishes the backlog oldest first when Kafka answers again. Checks of an account's
//! earlier unpublished events (a store query each) run at most [`PREDECESSOR_CHECKS`] at a
//! time, so the catch-up is not a herd of store scans. The backlog (events and age of the
//! oldest) is reported on `/readyz` and as metrics; it never makes the service unready.
//!
//! # The producer
//! Idempotent (`enable.idempotence=true`, `acks=all`), keyed by account id. The pass-through
//! table `[kafka.client]` cannot weaken either: another value is refused at start. A fatal
//! error of the idempotent producer (it then refuses every send) is noticed after a failed
//! publish and on every sweep, and the producer is rebuilt; the events it failed are
//! published again from the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use prism_events::kafka::encode_raw;
use prism_events::{AccountId, RawEvent};
use prism_platform::config::{KafkaConfig, RelayConfig};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use uuid::Uuid;

use crate::metrics::{Metrics, SendPath};
use crate::store::{EventStore, StoreError};

/// Most store queries for an account's earlier unpublished events at once (after an outage
/// every account lost its watermark, and a page of the catch-up holds up to a thousand
/// accounts). Each is an index lookup of one account in the store's outbox (on MongoDB one
/// for another writer's commits also looks them up in `commits`); with 8 at a time a 1 M
/// backlog on PostgreSQL was worked off at about 1,000 events/s.
pub const PREDECESSOR_CHECKS: usize = 16;

/// The store's name of the lease the sweeping relay holds.
pub const SWEEP_LEASE: &str = "relay-sweep";

/// Sweep intervals a sweep lease lasts unless renewed.
const SWEEP_LEASE_SWEEPS: u32 = 5;

/// Shortest sweep lease: a page's publish (up to `relay.batch_max_events` events, each
/// waiting for its account's previous ack) fits in it.
const SWEEP_LEASE_MIN: Duration = Duration::from_secs(3);

/// Most accounts remembered in the retry set. Beyond it an account only loses its
/// watermark, which is all correctness needs: its next publish checks the store first.
const RETRY_SET_MAX: usize = 100_000;

/// Hands freshly appended commits to the relay.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    sender: Option<mpsc::UnboundedSender<Vec<RawEvent>>>,
}

impl RelayHandle {
    /// A handle that publishes nothing (relay disabled): the sweep of a later relay will.
    pub fn disabled() -> Self {
        Self { sender: None }
    }

    /// Queues one commit's events for publishing. Never blocks the command path.
    pub fn publish(&self, events: Vec<RawEvent>) {
        if let Some(sender) = &self.sender {
            // A closed channel means the relay is shutting down; the next sweep publishes.
            let _ = sender.send(events);
        }
    }
}

/// Why a publish attempt stopped; the events stay unpublished and are retried.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kafka did not acknowledge {event_id}: {reason}")]
    Kafka { event_id: String, reason: String },
}

/// A `[kafka.client]` setting that would weaken the relay's producer.
#[derive(Debug, thiserror::Error)]
#[error(
    "kafka.client sets {key} = {value:?}, but the relay's producer needs {key} = {needed:?} \
     (acks from all replicas and idempotence keep each account's events on Kafka without \
     loss, gaps or reordering); remove the setting"
)]
pub struct WeakenedProducer {
    pub key: String,
    pub value: String,
    pub needed: &'static str,
}

/// The relay producer's own settings that `[kafka.client]` may repeat but never change,
/// with the values librdkafka accepts as the same.
const GUARDED: &[(&str, &str, &[&str])] = &[
    ("acks", "all", &["all", "-1"]),
    ("request.required.acks", "all", &["all", "-1"]),
    ("enable.idempotence", "true", &["true"]),
];

/// Refuses pass-through settings that change `acks` or `enable.idempotence` (a config
/// error at start rather than a silently weaker producer; the same value is accepted).
pub fn check_pass_through(client: &BTreeMap<String, String>) -> Result<(), WeakenedProducer> {
    for (key, needed, same) in GUARDED {
        if let Some(value) = client.get(*key) {
            if !same.contains(&value.trim().to_ascii_lowercase().as_str()) {
                return Err(WeakenedProducer {
                    key: (*key).to_owned(),
                    value: value.clone(),
                    needed,
                });
            }
        }
    }
    Ok(())
}

/// What the relay last saw, shared with `/readyz`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RelayStatus {
    inner: Arc<Mutex<StatusInner>>,
}

#[derive(Debug, Default)]
struct StatusInner {
    backlog_events: u64,
    backlog_at_least: bool,
    oldest_unpublished: Option<DateTime<Utc>>,
    kafka_problem: Option<String>,
    store_problem: Option<String>,
    /// When Kafka last acknowledged events of this relay.
    last_published: Option<DateTime<Utc>>,
}

/// The relay's state as `/readyz` shows it. A degraded relay never makes the service
/// unready: commands are stored, and published once Kafka is back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelayReport {
    /// `publishing`, or `degraded` while Kafka or the store's outbox cannot be used.
    pub state: &'static str,
    /// Unpublished events the last sweep found (acknowledged ones being marked excluded).
    pub backlog_events: u64,
    /// The sweep reads one page (`relay.batch_max_events`): when it was full, the backlog
    /// is at least `backlog_events`.
    pub backlog_at_least: bool,
    /// Age of the oldest unpublished event (0 without a backlog).
    pub backlog_age_seconds: f64,
    /// Why the relay is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl RelayStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn report(&self) -> RelayReport {
        Self::report_of(&self.lock())
    }

    fn report_of(inner: &StatusInner) -> RelayReport {
        let problem = match (&inner.kafka_problem, &inner.store_problem) {
            (Some(k), Some(s)) => Some(format!("{k}; {s}")),
            (Some(p), None) | (None, Some(p)) => Some(p.clone()),
            (None, None) => None,
        };
        RelayReport {
            state: if problem.is_some() {
                "degraded"
            } else {
                "publishing"
            },
            backlog_events: inner.backlog_events,
            backlog_at_least: inner.backlog_at_least,
            backlog_age_seconds: age_seconds(inner.oldest_unpublished),
            problem,
        }
    }
}

/// The relay's state as the admin status (`GET /v1/admin/status`) shows it: the
/// [`RelayReport`] of `/readyz` with what an operator asks next. Every member is always
/// present (`null` when unknown).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelayAdmin {
    /// `publishing`, or `degraded` while Kafka or the store's outbox cannot be used
    /// (`disabled` is the admin status's, for a service without a relay).
    pub state: &'static str,
    /// `false` while the relay cannot reach Kafka (it publishes once it can).
    pub kafka_available: bool,
    /// Unpublished events the last sweep found.
    pub backlog_events: u64,
    /// The sweep's page was full: the backlog is at least `backlog_events`.
    pub backlog_at_least: bool,
    /// Age of the oldest unpublished event (0 without a backlog).
    pub backlog_age_seconds: f64,
    /// Time of the oldest unpublished event the last sweep found.
    pub oldest_unpublished_at: Option<DateTime<Utc>>,
    /// When Kafka last acknowledged events of this relay (`null`: not since it started).
    pub last_published_at: Option<DateTime<Utc>>,
    /// Why the relay is degraded.
    pub problem: Option<String>,
}

impl RelayStatus {
    pub fn admin(&self) -> RelayAdmin {
        let inner = self.lock();
        let report = Self::report_of(&inner);
        RelayAdmin {
            state: report.state,
            kafka_available: inner.kafka_problem.is_none(),
            backlog_events: report.backlog_events,
            backlog_at_least: report.backlog_at_least,
            backlog_age_seconds: report.backlog_age_seconds,
            oldest_unpublished_at: inner.oldest_unpublished,
            last_published_at: inner.last_published,
            problem: report.problem,
        }
    }
}

fn age_seconds(oldest: Option<DateTime<Utc>>) -> f64 {
    oldest.map_or(0.0, |time| {
        let micros = (Utc::now() - time).num_microseconds().unwrap_or(i64::MAX);
        (micros as f64 / 1e6).max(0.0)
    })
}

pub struct Relay {
    store: Arc<dyn EventStore>,
    kafka: KafkaConfig,
    producer: FutureProducer,
    config: RelayConfig,
    metrics: Metrics,
    status: RelayStatus,
    /// Highest version of each account this relay knows to be on Kafka.
    published: HashMap<AccountId, u64>,
    /// Accounts with events left unpublished by a failed or skipped publish: their fresh
    /// commits wait for the sweep, which publishes the account's backlog in order.
    retry: HashSet<AccountId>,
    /// Why Kafka is taken to be unavailable; `None` while publishing works.
    kafka_down: Option<String>,
    /// The topic exists (created or found by this relay).
    topic_ready: bool,
    /// Bounds concurrent predecessor checks (store queries).
    checks: Arc<Semaphore>,
    /// Acknowledged events waiting for [`mark`] to record them.
    marks: mpsc::UnboundedSender<Vec<Uuid>>,
    /// Their ids: on Kafka already, so never published again from a stale "unpublished".
    marking: Marking,
    /// This relay's name as the holder of the sweep lease.
    holder: String,
    /// After a sweep Kafka refused part of: no sweeping (nor renewing the lease) until then.
    lease_pause: Option<Instant>,
    /// Ids of the events the last sweep found unpublished (one page at most): an event
    /// found again by the next one is a backlog the sweeping relay has not got to yet.
    last_page: HashSet<String>,
}

/// Acknowledged events the relay must not publish again from a read of the store: those
/// whose `mark_published` has not finished, and those whose mark finished after the
/// current read began (that read may still list them). Each read of the store starts a new
/// epoch; an id is forgotten once a read begun after its mark finished has been filtered.
type Marking = Arc<Mutex<MarkedIds>>;

#[derive(Debug, Default)]
struct MarkedIds {
    /// Per id, the epoch in which its mark finished, or [`MarkedIds::PENDING`].
    ids: HashMap<Uuid, u64>,
    /// Reads of the store begun so far.
    epoch: u64,
}

impl MarkedIds {
    const PENDING: u64 = u64::MAX;

    /// Marks of `ids` are under way.
    fn pending(&mut self, ids: &[Uuid]) {
        self.ids.extend(ids.iter().map(|id| (*id, Self::PENDING)));
    }

    /// The marks of `ids` finished (or failed: a later sweep publishes them again).
    fn finished(&mut self, ids: &[Uuid]) {
        let now = self.epoch;
        for id in ids {
            if let Some(stamp) = self.ids.get_mut(id) {
                *stamp = now;
            }
        }
    }

    /// A read of the store begins: its epoch.
    fn begin_read(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }

    /// A read begun in `epoch` has been filtered: ids whose marks finished before it began
    /// were out of the store for it (and for every later read).
    fn read_done(&mut self, epoch: u64) {
        self.ids
            .retain(|_, stamp| *stamp == Self::PENDING || *stamp >= epoch);
    }
}

fn is_marking(marking: &Marking, id: &str) -> bool {
    let Ok(id) = Uuid::parse_str(id) else {
        return false;
    };
    marking
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .ids
        .contains_key(&id)
}

/// Records acknowledged events as published, off the publishing path: a slow store must not
/// delay the next publish (an index lookup per commit on PostgreSQL and MongoDB; on FerretDB
/// also a scan of the outbox, i.e. of the backlog). Batches that
/// queue up meanwhile are marked in one call. A failed mark leaves the events unpublished in
/// the store, so a later sweep publishes them again: a duplicate, never a gap.
async fn mark(
    store: Arc<dyn EventStore>,
    mut batches: mpsc::UnboundedReceiver<Vec<Uuid>>,
    marking: Marking,
) {
    while let Some(mut ids) = batches.recv().await {
        while let Ok(more) = batches.try_recv() {
            ids.extend(more);
        }
        if let Err(e) = store.mark_published(&ids).await {
            tracing::warn!(error = %e, events = ids.len(), "marking events published failed");
        }
        marking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .finished(&ids);
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("topic", &self.kafka.topic)
            .field("known_accounts", &self.published.len())
            .field("retry_accounts", &self.retry.len())
            .field("kafka_down", &self.kafka_down)
            .finish()
    }
}

/// Creates the events topic unless it exists.
pub async fn ensure_topic(kafka: &KafkaConfig) -> anyhow::Result<()> {
    prism_platform::clients::ensure_topic(kafka, &kafka.topic, kafka.topic_partitions).await?;
    Ok(())
}

/// The relay's producer: idempotent, acks from all replicas, keyed by account. Refuses
/// pass-through settings that would weaken either ([`check_pass_through`]).
pub fn producer(kafka: &KafkaConfig, relay: &RelayConfig) -> anyhow::Result<FutureProducer> {
    check_pass_through(&kafka.client)?;
    let mut config = prism_platform::clients::kafka_client_config(kafka);
    // Set after the pass-through table, so these are what the producer runs with.
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", relay.linger_ms.to_string())
        .set("message.timeout.ms", relay.publish_timeout_ms.to_string())
        .set("compression.type", "lz4");
    config.remove("request.required.acks");
    Ok(config.create()?)
}

impl Relay {
    /// A relay publishing to `kafka.topic`; nothing connects to Kafka until it runs.
    pub fn new(
        store: Arc<dyn EventStore>,
        kafka: &KafkaConfig,
        config: RelayConfig,
        metrics: Metrics,
        status: RelayStatus,
    ) -> anyhow::Result<Self> {
        let producer = producer(kafka, &config)?;
        // Replaced by `spawn`; a relay that never runs marks nothing.
        let (marks, _) = mpsc::unbounded_channel();
        Ok(Self {
            store,
            kafka: kafka.clone(),
            producer,
            config,
            metrics,
            status,
            published: HashMap::new(),
            retry: HashSet::new(),
            kafka_down: None,
            topic_ready: false,
            checks: Arc::new(Semaphore::new(PREDECESSOR_CHECKS)),
            marks,
            marking: Marking::default(),
            holder: format!("relay-{}", Uuid::new_v4()),
            lease_pause: None,
            last_page: HashSet::new(),
        })
    }

    /// Starts the relay task; it stops after `shutdown` flips to true and the queue is drained.
    pub fn spawn(
        mut self,
        shutdown: watch::Receiver<bool>,
    ) -> (RelayHandle, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (marks, batches) = mpsc::unbounded_channel();
        self.marks = marks;
        let marker = tokio::spawn(mark(
            Arc::clone(&self.store),
            batches,
            Arc::clone(&self.marking),
        ));
        let task = tokio::spawn(async move {
            self.run(receiver, shutdown).await;
            // `run` consumed the relay and with it the sender: the marker drains and ends.
            if let Err(e) = marker.await {
                tracing::error!(error = %e, "relay marker task failed");
            }
            tracing::info!("relay stopped");
        });
        (
            RelayHandle {
                sender: Some(sender),
            },
            task,
        )
    }

    async fn run(
        mut self,
        mut receiver: mpsc::UnboundedReceiver<Vec<RawEvent>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut sweep =
            tokio::time::interval(Duration::from_millis(self.config.sweep_interval_ms.max(1)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A full page was published: more backlog is waiting, so sweep again right away.
        let mut catching_up = false;
        loop {
            if catching_up {
                catching_up = self.sweep().await;
                // Fresh commits get their turn between pages.
                self.publish_queued(&mut receiver).await;
                if *shutdown.borrow() {
                    break;
                }
                continue;
            }
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                // A due sweep goes before fresh commits: under steady load a commit is
                // queued whenever a publish cycle ends, and the sweep would never run.
                _ = sweep.tick() => {
                    catching_up = self.sweep().await;
                    // Whatever queued meanwhile gets its turn now: during an outage each
                    // sweep waits for Kafka's probe and the next one is due at once, so
                    // the queue would otherwise grow for as long as Kafka is down.
                    self.publish_queued(&mut receiver).await;
                }
                commit = receiver.recv() => {
                    let Some(first) = commit else { break };
                    let mut batch = vec![first];
                    batch.extend(drain(&mut receiver));
                    self.publish_fresh(batch).await;
                }
            }
        }
        // Drain what was queued before shutdown, then flush the producer.
        receiver.close();
        let mut rest = Vec::new();
        while let Some(commit) = receiver.recv().await {
            rest.push(commit);
        }
        if !rest.is_empty() {
            self.publish_fresh(rest).await;
        }
        // With Kafka down there is nothing to wait for: unacknowledged events stay
        // unpublished in the store and the next relay publishes them.
        let flush = if self.kafka_down.is_some() { 1 } else { 10 };
        if let Err(e) = self.producer.flush(Duration::from_secs(flush)) {
            tracing::warn!(error = %e, "flushing the relay producer");
        }
    }

    /// Publishes (or leaves to the sweep) every commit queued right now.
    async fn publish_queued(&mut self, receiver: &mut mpsc::UnboundedReceiver<Vec<RawEvent>>) {
        let queued = drain(receiver);
        if !queued.is_empty() {
            self.publish_fresh(queued).await;
        }
    }

    /// Publishes commits just appended by this instance, unless Kafka is down or the
    /// account waits for the sweep: then they stay in the store for the sweep.
    async fn publish_fresh(&mut self, commits: Vec<Vec<RawEvent>>) {
        if !self.topic_ready && self.kafka_down.is_none() {
            // First publish of this relay: create the topic (or learn that Kafka is down).
            self.kafka_ready().await;
        }
        let usable = self.topic_ready && self.kafka_down.is_none();
        let mut work = Vec::new();
        for (account_id, mut events) in by_account(commits.into_iter().flatten()) {
            if !usable || self.retry.contains(&account_id) {
                self.defer(account_id);
                continue;
            }
            // A sweep may have published these already (acknowledged, so on Kafka): skip
            // them rather than ask the store about the rest. The sweep itself never skips,
            // so an event whose mark failed is still published again and marked.
            if let Some(&known) = self.published.get(&account_id) {
                events.retain(|e| e.account_version > known);
            }
            if !events.is_empty() {
                work.push((account_id, events));
            }
        }
        if !work.is_empty() {
            self.publish_accounts(work, true, SendPath::Fresh).await;
        }
    }

    /// Leaves an account's events to the sweep: its watermark is forgotten, so nothing of it
    /// is published before the store confirmed what is still unpublished.
    fn defer(&mut self, account_id: AccountId) {
        self.published.remove(&account_id);
        if self.retry.len() < RETRY_SET_MAX {
            self.retry.insert(account_id);
        }
    }

    /// Publishes whatever the store holds unpublished (one page, oldest first) and reports
    /// the backlog. Returns whether the page was full and published: more is waiting.
    async fn sweep(&mut self) -> bool {
        // A full page may have cut an account's history (clocks of two instances can order
        // commit ids differently from versions): then check predecessors in the store too.
        let truncated;
        let epoch = self
            .marking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .begin_read();
        let pending = match self
            .store
            .unpublished(None, self.config.batch_max_events)
            .await
        {
            Ok(mut pending) => {
                // Judged on the page as read: filtering must not make a full page look whole.
                truncated = pending.len() >= self.config.batch_max_events;
                // Acknowledged and being marked, or marked while this read ran: on Kafka
                // already.
                pending.retain(|e| !is_marking(&self.marking, &e.id));
                self.marking
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read_done(epoch);
                self.status.lock().store_problem = None;
                pending
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay sweep could not read unpublished events");
                self.status.lock().store_problem = Some(format!("reading the outbox: {e}"));
                return false;
            }
        };
        self.report_backlog(&pending, truncated);
        let page: HashSet<String> = pending.iter().map(|e| e.id.clone()).collect();
        let previous_page = std::mem::replace(&mut self.last_page, page);
        if pending.is_empty() {
            // Nothing unpublished: no account has a backlog left to wait for.
            self.retry.clear();
            if self.kafka_down.is_some() || !self.topic_ready {
                // Create the topic at start (projectors may wait for it) and probe after a
                // failure, so the status says when Kafka is back, even with nothing to send.
                self.kafka_ready().await;
            }
            return false;
        }
        if !self.kafka_ready().await {
            return false;
        }
        let paused = self.lease_pause.is_some_and(|until| Instant::now() < until);
        if paused || !self.holds_sweep_lease().await {
            // Another relay works the backlog off. An account of this relay's retry set
            // waits for that relay's sweeps only while it has an event the previous sweep
            // found unpublished too (a whole page lists every unpublished event): the
            // backlog is still there. Events appended since are this relay's own deferred
            // commits; waiting for them would keep the account waiting for as long as
            // commits keep coming, each one a sweep late. Released, its next commit checks
            // the store first and publishes the account's unpublished events before it.
            if !truncated {
                let waiting = still_waiting(&pending, &previous_page);
                self.retry.retain(|account| waiting.contains(account));
            }
            return false;
        }
        tracing::info!(
            events = pending.len(),
            "relay sweep found unpublished events"
        );
        // Untruncated, the page holds every unpublished event: predecessors included.
        let all_published = self
            .publish_accounts(by_account(pending), truncated, SendPath::Sweep)
            .await;
        if !all_published {
            // Kafka refused some of the page here: let the lease lapse, so another relay
            // (which may reach the partitions this one cannot) gets a turn.
            self.lease_pause = Some(Instant::now() + self.sweep_lease_ttl());
        }
        if all_published && !truncated {
            // Every account's backlog as of the read is on Kafka. Commits deferred since
            // have lost their watermark, so they are checked against the store anyway.
            self.retry.clear();
        }
        all_published && truncated
    }

    /// Takes or renews the sweep lease: one relay at a time publishes the backlog, since
    /// two sweeping the same pages would publish each event twice. A relay renews it only
    /// on a sweep that goes on to publish (Kafka answering), and not for one lease after
    /// Kafka refused part of a page, so one that died, hangs, lost Kafka or cannot publish
    /// lets it expire, and another takes over within [`SWEEP_LEASE_SWEEPS`] sweep
    /// intervals. A store that cannot answer does not stop the sweep: duplicates rather
    /// than a backlog left waiting.
    async fn holds_sweep_lease(&self) -> bool {
        let ttl = self.sweep_lease_ttl();
        match self.store.hold_lease(SWEEP_LEASE, &self.holder, ttl).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "taking the relay's sweep lease; sweeping anyway");
                true
            }
        }
    }

    fn sweep_lease_ttl(&self) -> Duration {
        let interval = Duration::from_millis(self.config.sweep_interval_ms.max(1));
        (interval * SWEEP_LEASE_SWEEPS).max(SWEEP_LEASE_MIN)
    }

    fn report_backlog(&self, pending: &[RawEvent], truncated: bool) {
        let oldest = pending.iter().map(|e| e.time).min();
        let events = pending.len() as u64;
        {
            let mut status = self.status.lock();
            status.backlog_events = events;
            status.backlog_at_least = truncated;
            status.oldest_unpublished = oldest;
        }
        self.metrics
            .relay_backlog_events
            .set(i64::try_from(events).unwrap_or(i64::MAX));
        self.metrics
            .relay_backlog_age_seconds
            .set(age_seconds(oldest));
    }

    /// Whether Kafka can be published to now: rebuilds a fatally failed producer, creates
    /// the topic if this relay has not yet, and probes Kafka after a failure.
    async fn kafka_ready(&mut self) -> bool {
        self.rebuild_if_fatal();
        if !self.topic_ready {
            // Creating the topic is the probe too (it fails while Kafka is down).
            if let Err(e) = ensure_topic(&self.kafka).await {
                self.kafka_unavailable(format!("creating the topic {}: {e:#}", self.kafka.topic));
                return false;
            }
            self.topic_ready = true;
        } else if self.kafka_down.is_some() {
            if let Err(reason) = self.probe().await {
                self.kafka_unavailable(reason);
                return false;
            }
        }
        if self.kafka_down.take().is_some() {
            tracing::info!(topic = %self.kafka.topic, "kafka answers again; the relay publishes the backlog");
        }
        self.metrics.relay_kafka_available.set(1);
        self.status.lock().kafka_problem = None;
        true
    }

    /// Asks Kafka for the topic's metadata (a real request, bounded by
    /// `kafka.request_timeout_ms`).
    async fn probe(&mut self) -> Result<(), String> {
        let producer = self.producer.clone();
        let topic = self.kafka.topic.clone();
        let limit = Duration::from_millis(self.kafka.request_timeout_ms);
        let answer = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), limit)
                .map(|m| m.topics().iter().find_map(|t| t.error()))
        })
        .await;
        match answer {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(error))) => {
                // The topic went missing: create it again before the next publish.
                self.topic_ready = false;
                Err(format!("topic {}: {error:?}", self.kafka.topic))
            }
            Ok(Err(e)) => Err(format!("kafka metadata: {e}")),
            Err(e) => Err(format!("kafka metadata probe: {e}")),
        }
    }

    fn kafka_unavailable(&mut self, reason: String) {
        if self.kafka_down.is_none() {
            tracing::warn!(reason = %reason, "kafka unavailable: commands are stored and published when it is back");
        }
        self.metrics.relay_kafka_available.set(0);
        self.status.lock().kafka_problem = Some(format!("kafka unavailable: {reason}"));
        self.kafka_down = Some(reason);
    }

    /// A fatal error of the idempotent producer (e.g. the broker fenced its producer id)
    /// makes it refuse every send for good: build a new one.
    fn rebuild_if_fatal(&mut self) {
        let Some((code, reason)) = self.producer.client().fatal_error() else {
            return;
        };
        tracing::error!(?code, reason = %reason, "the relay's producer failed fatally; rebuilding it");
        match producer(&self.kafka, &self.config) {
            Ok(fresh) => {
                self.producer = fresh;
                self.metrics.relay_producer_rebuilds.inc();
                // Nothing is known to be on Kafka through the new producer's eyes beyond
                // what was acknowledged; watermarks stay valid (they only record acks).
            }
            Err(e) => self.kafka_unavailable(format!("rebuilding the producer: {e:#}")),
        }
    }

    /// Publishes each account's events in order; accounts in parallel. Returns whether
    /// every account's events were published. `path` names where `work` comes from; the
    /// predecessors a check adds to fresh commits are counted as such.
    async fn publish_accounts(
        &mut self,
        work: Vec<(AccountId, Vec<RawEvent>)>,
        check_predecessors: bool,
        path: SendPath,
    ) -> bool {
        let mut plans = Vec::with_capacity(work.len());
        for (account_id, events) in work {
            let Some(first) = events.first() else {
                continue;
            };
            let known = self.published.get(&account_id).copied();
            // Contiguous from what this relay already published: nothing can be missing.
            // Otherwise (a first event past the watermark, or a hole inside the group where
            // another instance appended) the store says what is still unpublished.
            let contiguous = events
                .windows(2)
                .all(|pair| pair[1].account_version == pair[0].account_version + 1);
            let needs_check = check_predecessors
                && (!contiguous
                    || (first.account_version > 1 && known != Some(first.account_version - 1)));
            plans.push((account_id, events, needs_check, known));
        }
        let store = Arc::clone(&self.store);
        let checks = Arc::clone(&self.checks);
        let marking = &self.marking;
        let producer = &self.producer;
        let topic = self.kafka.topic.as_str();
        let timeout = Duration::from_millis(self.config.publish_timeout_ms);
        let metrics = &self.metrics;
        let results = join_all(plans.into_iter().map(
            |(account_id, events, needs_check, known)| {
                let store = Arc::clone(&store);
                let checks = Arc::clone(&checks);
                async move {
                    let given: HashSet<u64> = if path == SendPath::Fresh && needs_check {
                        events.iter().map(|e| e.account_version).collect()
                    } else {
                        HashSet::new()
                    };
                    let events = if needs_check {
                        // A closed semaphore cannot happen (never closed); go on unbounded.
                        let _permit = checks.acquire_owned().await.ok();
                        match with_predecessors(store.as_ref(), marking, account_id, events).await {
                            Ok(events) => events,
                            Err(e) => return (account_id, known, Err(e)),
                        }
                    } else {
                        events
                    };
                    tracing::debug!(%account_id, ?known, needs_check, events = events.len(), "publishing");
                    let path_of = |event: &RawEvent| match path {
                        SendPath::Fresh
                            if needs_check && !given.contains(&event.account_version) =>
                        {
                            SendPath::Predecessor
                        }
                        other => other,
                    };
                    let outcome =
                        publish_in_order(producer, topic, timeout, metrics, &events, path_of)
                            .await;
                    (account_id, known, outcome.map(|ids| (ids, events)))
                }
            },
        ))
        .await;

        let mut acked: Vec<Uuid> = Vec::new();
        let mut kafka_failure = None;
        let mut all_published = true;
        for (account_id, known, result) in results {
            match result {
                Ok((ids, events)) => {
                    if let Some(last) = events.last() {
                        let top = known.unwrap_or(0).max(last.account_version);
                        self.published.insert(account_id, top);
                    }
                    self.retry.remove(&account_id);
                    acked.extend(ids);
                }
                Err(e) => {
                    all_published = false;
                    tracing::warn!(account_id = %account_id, error = %e, "publish failed; will retry");
                    if let PublishError::Kafka { reason, .. } = &e {
                        kafka_failure = Some(reason.clone());
                    }
                    // The sweep publishes what is left, after checking the store.
                    self.defer(account_id);
                }
            }
        }
        if !acked.is_empty() {
            self.status.lock().last_published = Some(Utc::now());
            self.marking
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pending(&acked);
            // A closed marker (shutdown) leaves them unpublished: the next relay republishes.
            let _ = self.marks.send(acked);
        }
        if let Some(reason) = kafka_failure {
            self.kafka_unavailable(reason);
            self.rebuild_if_fatal();
        }
        // Keep the watermark map bounded: it is only an optimisation.
        if self.published.len() > 1_000_000 {
            self.published.clear();
        }
        all_published
    }
}

/// The accounts of a whole page of unpublished events that have an event the previous
/// page held too: a backlog the sweeping relay has not published since.
fn still_waiting(page: &[RawEvent], previous_page: &HashSet<String>) -> HashSet<AccountId> {
    page.iter()
        .filter(|e| previous_page.contains(&e.id))
        .filter_map(|e| e.subject.parse().ok())
        .collect()
}

/// Whatever is queued on the channel right now.
fn drain(receiver: &mut mpsc::UnboundedReceiver<Vec<RawEvent>>) -> Vec<Vec<RawEvent>> {
    let mut queued = Vec::new();
    while let Ok(commit) = receiver.try_recv() {
        queued.push(commit);
    }
    queued
}

/// Groups events per account, each group in version order. An event whose subject is no
/// account id cannot be keyed and is never published (logged).
fn by_account(events: impl IntoIterator<Item = RawEvent>) -> Vec<(AccountId, Vec<RawEvent>)> {
    let mut groups: BTreeMap<String, Vec<RawEvent>> = BTreeMap::new();
    for event in events {
        groups.entry(event.subject.clone()).or_default().push(event);
    }
    groups
        .into_iter()
        .filter_map(|(subject, mut events)| {
            let Ok(account_id) = subject.parse::<AccountId>() else {
                tracing::error!(subject = %subject, "stored event with an invalid subject; not published");
                return None;
            };
            events.sort_by_key(|e| e.account_version);
            Some((account_id, events))
        })
        .collect()
}

/// Most unpublished earlier events fetched for one account at once.
const MAX_PREDECESSORS: usize = 100_000;

/// `events` merged with the account's still-unpublished events below the last of them (the
/// ones before the first, and any in holes between them), in version order.
async fn with_predecessors(
    store: &dyn EventStore,
    marking: &Marking,
    account_id: AccountId,
    events: Vec<RawEvent>,
) -> Result<Vec<RawEvent>, PublishError> {
    let last_version = events.last().map_or(0, |e| e.account_version);
    let mut merged: BTreeMap<u64, RawEvent> = store
        .unpublished(Some(account_id), MAX_PREDECESSORS)
        .await?
        .into_iter()
        .filter(|e| e.account_version < last_version && !is_marking(marking, &e.id))
        .map(|e| (e.account_version, e))
        .collect();
    for event in events {
        merged.insert(event.account_version, event);
    }
    Ok(merged.into_values().collect())
}

/// Sends one account's events strictly in order, each after the previous was acknowledged
/// (an idempotent producer keeps order too, but a failure must stop the ones after it).
async fn publish_in_order(
    producer: &FutureProducer,
    topic: &str,
    timeout: Duration,
    metrics: &Metrics,
    events: &[RawEvent],
    path_of: impl Fn(&RawEvent) -> SendPath,
) -> Result<Vec<Uuid>, PublishError> {
    let mut ids = Vec::with_capacity(events.len());
    for event in events {
        let record = encode_raw(event);
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let started = Instant::now();
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&record.key)
                    .payload(&record.value)
                    .headers(headers),
                timeout,
            )
            .await
            .map_err(|(e, _)| PublishError::Kafka {
                event_id: event.id.clone(),
                reason: e.to_string(),
            })?;
        metrics
            .relay_ack_seconds
            .observe(started.elapsed().as_secs_f64());
        let delay = (Utc::now() - event.time).num_microseconds().unwrap_or(0) as f64 / 1e6;
        metrics.relay_delay_seconds.observe(delay.max(0.0));
        metrics.relay_published.inc();
        metrics
            .relay_sent
            .with_label_values(&[path_of(event).as_str()])
            .inc();
        match Uuid::parse_str(&event.id) {
            Ok(id) => ids.push(id),
            Err(_) => tracing::error!(event_id = %event.id, "stored event id is not a UUID"),
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn pass_through_may_not_weaken_the_producer() {
        for (key, value) in [
            ("acks", "1"),
            ("acks", "0"),
            ("request.required.acks", "1"),
            ("enable.idempotence", "false"),
        ] {
            let error = check_pass_through(&client(&[(key, value)]))
                .expect_err("a weaker setting is refused");
            assert_eq!(error.key, key);
            assert!(error.to_string().contains("remove the setting"), "{error}");
        }
    }

    #[test]
    fn pass_through_may_repeat_the_producers_own_values() {
        let same = client(&[
            ("acks", "all"),
            ("request.required.acks", "-1"),
            ("enable.idempotence", "TRUE"),
            ("linger.ms", "5"),
            ("security.protocol", "SASL_SSL"),
        ]);
        assert!(check_pass_through(&same).is_ok());
    }

    #[test]
    fn a_kafka_or_store_problem_degrades_the_report_and_the_backlog_has_an_age() {
        let status = RelayStatus::default();
        assert_eq!(status.report().state, "publishing");
        assert_eq!(status.report().backlog_age_seconds, 0.0);
        {
            let mut inner = status.lock();
            inner.backlog_events = 7;
            inner.oldest_unpublished = Some(Utc::now() - chrono::Duration::seconds(90));
            inner.kafka_problem = Some("kafka unavailable: down".into());
        }
        let report = status.report();
        assert_eq!(report.state, "degraded");
        assert_eq!(report.backlog_events, 7);
        assert!(report.backlog_age_seconds >= 90.0, "{report:?}");
        assert_eq!(report.problem.as_deref(), Some("kafka unavailable: down"));
        let admin = status.admin();
        assert!(!admin.kafka_available, "{admin:?}");
        assert_eq!(admin.backlog_events, 7);
        assert!(admin.oldest_unpublished_at.is_some() && admin.last_published_at.is_none());
        status.lock().kafka_problem = None;
        status.lock().store_problem = Some("reading the outbox: x".into());
        assert_eq!(status.report().state, "degraded");
        let admin = status.admin();
        assert!(
            admin.kafka_available,
            "only the store's outbox is the problem"
        );
        assert_eq!(admin.state, "degraded");
        assert_eq!(admin.problem.as_deref(), Some("reading the outbox: x"));
    }

    #[test]
    fn an_account_waits_for_another_relays_sweep_only_while_its_old_backlog_is_there() {
        let event = |account: &AccountId, version: u64| RawEvent {
            id: Uuid::new_v4().to_string(),
            source: "/prism/command".into(),
            event_type: "prism.account.money_deposited".into(),
            subject: account.to_string(),
            time: Utc::now(),
            account_version: version,
            correlation_id: None,
            causation_id: None,
            schema_version: 1,
            data: serde_json::json!({ "amount_minor": 1 }),
        };
        let (old, new, gone) = (
            AccountId(Uuid::new_v4()),
            AccountId(Uuid::new_v4()),
            AccountId(Uuid::new_v4()),
        );
        // The previous sweep found `old`'s and `gone`'s first events. Now `old` still has
        // its event, `new` only events appended since (this relay's own deferred commits)
        // and `gone` nothing left.
        let backlog = event(&old, 1);
        let previous = HashSet::from([backlog.id.clone(), event(&gone, 1).id]);
        let page = vec![backlog, event(&new, 1), event(&new, 2)];
        let waiting = still_waiting(&page, &previous);
        assert_eq!(waiting, HashSet::from([old]));
        assert!(still_waiting(&page, &HashSet::new()).is_empty());
    }
}
