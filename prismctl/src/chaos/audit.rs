//! What the chaos run checks at its end, against the event store as the source of truth:
//! - every event the store holds is on Kafka, each account's versions in order there with
//!   no gap (a version seen again is a duplicate, allowed: the relay publishes at least
//!   once);
//! - every command that got a success answer is in the store;
//! - no dead letter (the traffic is valid: anything dead-lettered was a transient cause
//!   taken for a permanent one);
//! - every read model equal to a fold of the store (`verify`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use prism_platform::clients;
use prism_platform::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

/// What the store holds: each account's last version, and every event id.
#[derive(Debug, Default)]
pub struct StoreView {
    pub events: u64,
    pub last_version: HashMap<Uuid, u64>,
    pub ids: HashSet<Uuid>,
}

/// Reads the whole event store.
pub async fn read_store(config: &Config) -> anyhow::Result<StoreView> {
    let store = prism_command::app::open_store(config)
        .await
        .context("opening the event store")?;
    let mut view = StoreView::default();
    let mut scan = store.scan(5_000);
    while let Some(page) = scan.next().await {
        let page = page.context("reading the event store")?;
        for envelope in page {
            view.events += 1;
            let last = view.last_version.entry(envelope.account_id.0).or_default();
            *last = (*last).max(envelope.account_version);
            view.ids.insert(envelope.id);
        }
    }
    Ok(view)
}

/// What the topic holds, and what is wrong with it.
#[derive(Debug, Default)]
pub struct TopicAudit {
    pub records: u64,
    /// Records whose version the account had already shown (published again).
    pub duplicates: u64,
    /// `account: expected version → found`, for versions that skipped ahead.
    pub gaps: Vec<String>,
    /// Records that do not decode as events.
    pub undecodable: u64,
    /// Store events missing from the topic, as `account: store v → topic v`.
    pub missing: Vec<String>,
    /// Accounts on the topic that the store does not know.
    pub unknown_accounts: u64,
}

impl TopicAudit {
    pub fn ok(&self) -> bool {
        self.gaps.is_empty()
            && self.undecodable == 0
            && self.missing.is_empty()
            && self.unknown_accounts == 0
    }
}

/// Reads the whole topic of `config` and holds it to `store`.
pub async fn audit_topic(config: &Config, store: &StoreView) -> anyhow::Result<TopicAudit> {
    let per_account = read_topic(config).await?;
    let mut audit = per_account.audit;
    for (account, last) in &store.last_version {
        let on_topic = per_account.last.get(account).copied().unwrap_or(0);
        if on_topic < *last {
            audit
                .missing
                .push(format!("{account}: store v{last} → topic v{on_topic}"));
        }
    }
    audit.unknown_accounts = per_account
        .last
        .keys()
        .filter(|a| !store.last_version.contains_key(a))
        .count() as u64;
    Ok(audit)
}

struct TopicRead {
    audit: TopicAudit,
    last: HashMap<Uuid, u64>,
}

async fn read_topic(config: &Config) -> anyhow::Result<TopicRead> {
    let mut client_config = clients::kafka_client_config(&config.kafka);
    client_config
        .set("group.id", format!("prism-chaos-audit-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let topic = config.kafka.topic.clone();
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms.max(10_000));
    // librdkafka calls block: keep them off the async workers.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config.create().context("creating a Kafka client")?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .context("metadata request")?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        let mut ends = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for &partition in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, timeout)
                .with_context(|| format!("watermarks of partition {partition}"))?;
            if high > low {
                ends.insert(partition, high);
                assignment
                    .add_partition_offset(&topic, partition, Offset::Offset(low))
                    .context("assigning a partition")?;
            }
        }
        consumer
            .assign(&assignment)
            .context("assigning the topic")?;
        let mut audit = TopicAudit::default();
        let mut last: HashMap<Uuid, u64> = HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while !ends.is_empty() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "reading the topic {topic} took over 5 minutes; partitions left: {:?}",
                ends.keys().collect::<Vec<_>>()
            );
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message.context("reading the topic")?;
            let (partition, offset) = (message.partition(), message.offset());
            audit.records += 1;
            let headers: Vec<(&str, &[u8])> = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key, h.value.unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            match prism_events::kafka::decode(message.key(), headers, message.payload()) {
                Ok(envelope) => {
                    let account = envelope.account_id.0;
                    let version = envelope.account_version;
                    let seen = last.entry(account).or_default();
                    if version <= *seen {
                        audit.duplicates += 1;
                    } else {
                        if version != *seen + 1 {
                            audit.gaps.push(format!(
                                "{account}: v{} expected, v{version} found (partition {partition} \
                                 offset {offset})",
                                *seen + 1
                            ));
                        }
                        *seen = version;
                    }
                }
                Err(_) => audit.undecodable += 1,
            }
            if ends.get(&partition).is_some_and(|end| offset + 1 >= *end) {
                ends.remove(&partition);
            }
        }
        Ok(TopicRead { audit, last })
    })
    .await
    .context("the Kafka read did not finish")?
}

/// Records in the dead-letter topics of `projectors` (`<topic>.<suffix>.<projector>`); a
/// topic that does not exist holds none.
pub async fn dead_letters(
    config: &Config,
    projectors: &[&str],
) -> anyhow::Result<Vec<(String, i64)>> {
    let client_config = clients::kafka_client_config(&config.kafka);
    let topics: Vec<String> = projectors
        .iter()
        .map(|p| format!("{}.{}.{p}", config.kafka.topic, config.projector.dlq_suffix))
        .collect();
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms.max(10_000));
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config.create().context("creating a Kafka client")?;
        let mut counts = Vec::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .context("metadata request")?;
            let mut count = 0;
            if let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) {
                if meta.error().is_none() {
                    for partition in meta.partitions() {
                        let (low, high) = consumer
                            .fetch_watermarks(&topic, partition.id(), timeout)
                            .with_context(|| format!("watermarks of {topic}"))?;
                        count += high - low;
                    }
                }
            }
            counts.push((topic, count));
        }
        Ok(counts)
    })
    .await
    .context("the Kafka request did not finish")?
}

/// The topic's end offsets, read with one client kept open (a new client would first have
/// to find a live broker, which is what a broker loss is measured on).
pub struct EndOffsets {
    consumer: std::sync::Arc<BaseConsumer>,
    topic: String,
    timeout: Duration,
}

impl std::fmt::Debug for EndOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndOffsets")
            .field("topic", &self.topic)
            .finish()
    }
}

impl EndOffsets {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = clients::kafka_client_config(&config.kafka)
            .create()
            .context("creating a Kafka client")?;
        Ok(Self {
            consumer: std::sync::Arc::new(consumer),
            topic: config.kafka.topic.clone(),
            timeout: Duration::from_millis(config.kafka.request_timeout_ms),
        })
    }

    /// The sum of the topic's end offsets: what the relay has published.
    pub async fn sum(&self) -> anyhow::Result<i64> {
        let consumer = std::sync::Arc::clone(&self.consumer);
        let (topic, timeout) = (self.topic.clone(), self.timeout);
        tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .context("metadata request")?;
            let mut sum = 0;
            if let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) {
                for partition in meta.partitions() {
                    let (_, high) = consumer
                        .fetch_watermarks(&topic, partition.id(), timeout)
                        .with_context(|| format!("watermarks of partition {}", partition.id()))?;
                    sum += high;
                }
            }
            Ok(sum)
        })
        .await
        .context("the Kafka request did not finish")?
    }
}
