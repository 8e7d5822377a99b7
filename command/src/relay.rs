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
//!   events (a crash between append and publish, or an instance that died) and publishes
//!   them the same way.
//!
//! The producer is idempotent (`enable.idempotence=true`, `acks=all`), keyed by account id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use prism_events::kafka::encode_raw;
use prism_events::{AccountId, RawEvent};
use prism_platform::config::{KafkaConfig, RelayConfig};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::store::{EventStore, StoreError};

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

pub struct Relay {
    store: Arc<dyn EventStore>,
    producer: FutureProducer,
    topic: String,
    config: RelayConfig,
    metrics: Metrics,
    /// Highest version of each account this relay knows to be on Kafka.
    published: HashMap<AccountId, u64>,
    /// Acknowledged events waiting for [`mark`] to record them.
    marks: mpsc::UnboundedSender<Vec<Uuid>>,
    /// Their ids: on Kafka already, so never published again from a stale "unpublished".
    marking: Marking,
}

/// Ids of acknowledged events whose `mark_published` has not finished yet.
type Marking = Arc<std::sync::Mutex<HashSet<Uuid>>>;

fn is_marking(marking: &Marking, id: &str) -> bool {
    let Ok(id) = Uuid::parse_str(id) else {
        return false;
    };
    marking
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&id)
}

/// Records acknowledged events as published, off the publishing path: a slow store (FerretDB
/// runs one transaction per updated document) must not delay the next publish. Batches that
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
        let mut marking = marking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &ids {
            marking.remove(id);
        }
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("topic", &self.topic)
            .field("known_accounts", &self.published.len())
            .finish()
    }
}

/// Creates the events topic unless it exists.
pub async fn ensure_topic(kafka: &KafkaConfig) -> anyhow::Result<()> {
    prism_platform::clients::ensure_topic(kafka, &kafka.topic, kafka.topic_partitions).await?;
    Ok(())
}

/// The relay's producer: idempotent, acks from all replicas, keyed by account.
pub fn producer(kafka: &KafkaConfig, relay: &RelayConfig) -> anyhow::Result<FutureProducer> {
    let mut config = prism_platform::clients::kafka_client_config(kafka);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", relay.linger_ms.to_string())
        .set("message.timeout.ms", relay.publish_timeout_ms.to_string())
        .set("compression.type", "lz4");
    // Pass-through settings win over ours (set again last).
    for (key, value) in &kafka.client {
        config.set(key, value);
    }
    Ok(config.create()?)
}

impl Relay {
    pub fn new(
        store: Arc<dyn EventStore>,
        producer: FutureProducer,
        topic: String,
        config: RelayConfig,
        metrics: Metrics,
    ) -> Self {
        // Replaced by `spawn`; a relay that never runs marks nothing.
        let (marks, _) = mpsc::unbounded_channel();
        Self {
            store,
            producer,
            topic,
            config,
            metrics,
            published: HashMap::new(),
            marks,
            marking: Marking::default(),
        }
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
        loop {
            tokio::select! {
                // Fresh commits first: they are what clients wait for.
                biased;
                commit = receiver.recv() => {
                    let Some(first) = commit else { break };
                    let mut batch = vec![first];
                    while let Ok(more) = receiver.try_recv() {
                        batch.push(more);
                    }
                    self.publish_fresh(batch).await;
                }
                _ = sweep.tick() => self.sweep().await,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
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
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "flushing the relay producer");
        }
    }

    /// Publishes commits just appended by this instance.
    async fn publish_fresh(&mut self, commits: Vec<Vec<RawEvent>>) {
        let work = by_account(commits.into_iter().flatten());
        self.publish_accounts(work, true).await;
    }

    /// Publishes whatever the store holds unpublished.
    async fn sweep(&mut self) {
        let pending = match self
            .store
            .unpublished(None, self.config.batch_max_events)
            .await
        {
            Ok(mut pending) => {
                // Acknowledged and being marked: on Kafka already.
                pending.retain(|e| !is_marking(&self.marking, &e.id));
                pending
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay sweep could not read unpublished events");
                return;
            }
        };
        self.metrics.relay_pending.set(pending.len() as i64);
        if pending.is_empty() {
            return;
        }
        // A full page may have cut an account's history (clocks of two instances can order
        // commit ids differently from versions): then check predecessors in the store too.
        let truncated = pending.len() >= self.config.batch_max_events;
        tracing::info!(
            events = pending.len(),
            "relay sweep found unpublished events"
        );
        let work = by_account(pending);
        // Untruncated, the page holds every unpublished event: predecessors included.
        self.publish_accounts(work, truncated).await;
    }

    /// Publishes each account's events in order; accounts in parallel.
    async fn publish_accounts(&mut self, work: Vec<Vec<RawEvent>>, check_predecessors: bool) {
        let mut plans = Vec::with_capacity(work.len());
        for events in work {
            let Some(first) = events.first() else {
                continue;
            };
            let Ok(account_id) = first.subject.parse::<AccountId>() else {
                tracing::error!(subject = %first.subject, "stored event with an invalid subject; not published");
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
        let marking = &self.marking;
        let producer = &self.producer;
        let topic = self.topic.as_str();
        let timeout = Duration::from_millis(self.config.publish_timeout_ms);
        let metrics = &self.metrics;
        let results = join_all(plans.into_iter().map(
            |(account_id, events, needs_check, known)| {
                let store = Arc::clone(&store);
                async move {
                    let events = if needs_check {
                        match with_predecessors(store.as_ref(), marking, account_id, events).await {
                            Ok(events) => events,
                            Err(e) => return (account_id, known, Err(e)),
                        }
                    } else {
                        events
                    };
                    tracing::debug!(%account_id, ?known, needs_check, events = events.len(), "publishing");
                    let outcome =
                        publish_in_order(producer, topic, timeout, metrics, &events).await;
                    (account_id, known, outcome.map(|ids| (ids, events)))
                }
            },
        ))
        .await;

        let mut acked: Vec<Uuid> = Vec::new();
        for (account_id, known, result) in results {
            match result {
                Ok((ids, events)) => {
                    if let Some(last) = events.last() {
                        let top = known.unwrap_or(0).max(last.account_version);
                        self.published.insert(account_id, top);
                    }
                    acked.extend(ids);
                }
                Err(e) => {
                    // Forget the watermark: the next attempt asks the store again.
                    self.published.remove(&account_id);
                    tracing::warn!(account_id = %account_id, error = %e, "publish failed; will retry");
                }
            }
        }
        if !acked.is_empty() {
            self.marking
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(acked.iter().copied());
            // A closed marker (shutdown) leaves them unpublished: the next relay republishes.
            let _ = self.marks.send(acked);
        }
        // Keep the watermark map bounded: it is only an optimisation.
        if self.published.len() > 1_000_000 {
            self.published.clear();
        }
    }
}

/// Groups events per account, each group in version order.
fn by_account(events: impl IntoIterator<Item = RawEvent>) -> Vec<Vec<RawEvent>> {
    let mut groups: BTreeMap<String, Vec<RawEvent>> = BTreeMap::new();
    for event in events {
        groups.entry(event.subject.clone()).or_default().push(event);
    }
    groups
        .into_values()
        .map(|mut events| {
            events.sort_by_key(|e| e.account_version);
            events
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
        match Uuid::parse_str(&event.id) {
            Ok(id) => ids.push(id),
            Err(_) => tracing::error!(event_id = %event.id, "stored event id is not a UUID"),
        }
    }
    Ok(ids)
}
