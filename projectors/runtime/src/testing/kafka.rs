//! A Kafka test environment for projector tests: a topic of its own per test on the local
//! stack's Kafka, records produced with the project's encoder (`prism_events::kafka`), the
//! real [`Runtime`] started on a sink with settings tuned for short tests, the dead-letter
//! topic read back, and everything deleted afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_events::Envelope;
use prism_platform::config::{KafkaConfig, ProjectorConfig};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::{HealthReport, Projection, Running, Runtime, Shared, Sink};

/// Name of the projector under test (dead-letter topic suffix, metric label).
pub const PROJECTOR: &str = "kit";

/// [`ProjectorConfig`] tuned for tests: small batches that do not wait, quick retries,
/// a short session so that a stopped consumer's partitions move on fast.
pub fn test_projector_config() -> ProjectorConfig {
    ProjectorConfig {
        batch_max_wait_ms: 5,
        gap_retries: 2,
        poison_retries: 1,
        retry_backoff_ms: 50,
        retry_backoff_max_ms: 400,
        lag_interval_ms: 200,
        session_timeout_ms: 6_000,
        rebalance_timeout_ms: 5_000,
        ..ProjectorConfig::default()
    }
}

/// One test's Kafka: its topic, consumer group and projector settings.
#[allow(missing_debug_implementations)] // the producer has no useful Debug
pub struct KafkaEnv {
    pub kafka: KafkaConfig,
    pub projection: Projection,
    pub config: ProjectorConfig,
    producer: FutureProducer,
}

/// A runtime started by [`KafkaEnv::start`], with its metrics registry and health.
#[derive(Debug)]
pub struct Started {
    pub running: Running,
    pub shared: Shared,
    pub registry: prometheus::Registry,
}

impl Started {
    /// Sum of every sample of counter or gauge `name` whose labels include `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut sum = 0.0;
        for family in self.registry.gather() {
            if family.name() != name {
                continue;
            }
            for m in family.get_metric() {
                let matches = labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                });
                if matches {
                    sum += m.get_counter().value() + m.get_gauge().value();
                }
            }
        }
        sum
    }

    /// `prism_projector_events_total` for one outcome (`applied`, `skipped`,
    /// `dead_lettered`), over every event type.
    pub fn events(&self, outcome: &str) -> u64 {
        self.metric("prism_projector_events_total", &[("outcome", outcome)]) as u64
    }

    /// `prism_projector_sink_errors_total` of one kind (`transient`, `permanent`, …).
    pub fn sink_errors(&self, kind: &str) -> u64 {
        self.metric("prism_projector_sink_errors_total", &[("kind", kind)]) as u64
    }

    pub fn health(&self) -> HealthReport {
        self.shared.health.report()
    }

    pub async fn stop(self) {
        self.running.shut_down().await;
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Consumed {
    /// Header `name` as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Partition and offset of the original record of a dead letter.
    pub fn original(&self) -> (i32, i64) {
        let partition = self
            .header(crate::dlq::H_PARTITION)
            .and_then(|v| v.parse().ok());
        let offset = self
            .header(crate::dlq::H_OFFSET)
            .and_then(|v| v.parse().ok());
        (partition.unwrap_or(-1), offset.unwrap_or(-1))
    }
}

fn up<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    prism_tests::up("kafka", result)
}

impl KafkaEnv {
    /// A topic with `partitions` partitions (created now) and a consumer group, both
    /// unique, on the configured Kafka.
    pub async fn new(partitions: i32) -> KafkaEnv {
        let mut kafka = prism_tests::config().kafka;
        kafka.topic = prism_tests::unique("t-kit");
        kafka.topic_partitions = partitions;
        up(prism_platform::clients::ensure_topic(&kafka, &kafka.topic, partitions).await);
        let producer: FutureProducer = up(prism_platform::clients::kafka_client_config(&kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .create());
        KafkaEnv {
            projection: Projection {
                name: PROJECTOR.into(),
                group_id: prism_tests::unique("t-kit-group"),
                topic: kafka.topic.clone(),
            },
            kafka,
            config: test_projector_config(),
            producer,
        }
    }

    pub fn topic(&self) -> &str {
        &self.kafka.topic
    }

    /// The dead-letter topic of the projector under test.
    pub fn dlq_topic(&self) -> String {
        crate::dlq::topic_name(self.topic(), &self.config.dlq_suffix, PROJECTOR)
    }

    /// Starts the runtime on `sink` with this environment's settings and waits until it
    /// owns every partition.
    pub async fn start(&self, sink: Arc<dyn Sink>) -> Started {
        let registry = prometheus::Registry::new();
        let shared = up(Shared::new(&registry, PROJECTOR, &self.config));
        let running = up(Runtime::start(
            self.projection.clone(),
            &self.kafka,
            &self.config,
            sink,
            shared.clone(),
        )
        .await);
        let started = Started {
            running,
            shared,
            registry,
        };
        let partitions = usize::try_from(self.kafka.topic_partitions).unwrap_or(0);
        super::eventually(
            "the runtime owns every partition",
            Duration::from_secs(60),
            || {
                let assigned = started.health().partitions.len();
                async move { (assigned == partitions).then_some(()) }
            },
        )
        .await;
        started
    }

    /// Produces `envelope` with the project's encoder to `partition`; returns its offset.
    pub async fn send(&self, envelope: &Envelope, partition: i32) -> i64 {
        self.send_encoded(envelope, None, partition, None).await
    }

    /// Produces every event in order, one after the other; returns their offsets.
    pub async fn send_all(&self, events: &[(Envelope, i32)]) -> Vec<i64> {
        let mut offsets = Vec::with_capacity(events.len());
        for (e, p) in events {
            offsets.push(self.send(e, *p).await);
        }
        offsets
    }

    /// Produces `envelope` like [`KafkaEnv::send`] with the Kafka timestamp `timestamp_ms`
    /// (ms since the Unix epoch) instead of now; returns its offset.
    pub async fn send_at(&self, envelope: &Envelope, partition: i32, timestamp_ms: i64) -> i64 {
        self.send_encoded(envelope, None, partition, Some(timestamp_ms))
            .await
    }

    /// Produces `envelope`'s key and headers with `value` instead of its JSON: poison.
    pub async fn send_poison(&self, envelope: &Envelope, value: &[u8], partition: i32) -> i64 {
        self.send_encoded(envelope, Some(value), partition, None)
            .await
    }

    /// `envelope`'s key and headers as the project's encoder writes them, with its JSON or
    /// `value`, at `timestamp_ms` or now.
    async fn send_encoded(
        &self,
        envelope: &Envelope,
        value: Option<&[u8]>,
        partition: i32,
        timestamp_ms: Option<i64>,
    ) -> i64 {
        let record = prism_events::kafka::encode(envelope);
        let headers: Vec<(&str, Vec<u8>)> = record
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_bytes().to_vec()))
            .collect();
        self.produce(
            Some(record.key.as_bytes()),
            &headers,
            Some(value.unwrap_or(&record.value)),
            partition,
            timestamp_ms,
        )
        .await
    }

    /// Produces a record exactly as given; returns its offset.
    pub async fn send_raw(
        &self,
        key: Option<&[u8]>,
        headers: &[(&str, Vec<u8>)],
        value: Option<&[u8]>,
        partition: i32,
    ) -> i64 {
        self.produce(key, headers, value, partition, None).await
    }

    async fn produce(
        &self,
        key: Option<&[u8]>,
        headers: &[(&str, Vec<u8>)],
        value: Option<&[u8]>,
        partition: i32,
        timestamp_ms: Option<i64>,
    ) -> i64 {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(self.topic())
            .partition(partition)
            .headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        if let Some(ms) = timestamp_ms {
            record = record.timestamp(ms);
        }
        match self.producer.send(record, Duration::from_secs(30)).await {
            Ok(delivery) => delivery.offset,
            Err((e, _)) => up(Err::<i64, _>(e)),
        }
    }

    /// Commits `offset` for `partition` in the projector's group (what
    /// `kafka-consumer-groups --reset-offsets` does), to show it is not what the runtime
    /// resumes from.
    pub fn commit_offset(&self, partition: i32, offset: i64) {
        let consumer: BaseConsumer = up(prism_platform::clients::kafka_client_config(&self.kafka)
            .set("group.id", &self.projection.group_id)
            .set("enable.auto.commit", "false")
            .create());
        let mut tpl = TopicPartitionList::new();
        up(tpl.add_partition_offset(self.topic(), partition, Offset::Offset(offset)));
        up(consumer.commit(&tpl, CommitMode::Sync));
    }

    /// Reads the dead-letter topic from the beginning until it holds `at_least` records or
    /// `limit` passed, then 500 ms more to see any record beyond them.
    pub fn dead_letters(&self, at_least: usize, limit: Duration) -> Vec<Consumed> {
        read_topic(&self.kafka, &self.dlq_topic(), at_least, limit)
    }

    /// Deletes the topic, the dead-letter topic and the consumer group (the runtime must
    /// be stopped). Problems are printed, not hidden, and do not fail the test.
    pub async fn clean_up(&self) {
        let admin: AdminClient<DefaultClientContext> =
            match prism_platform::clients::kafka_client_config(&self.kafka).create() {
                Ok(admin) => admin,
                Err(e) => {
                    eprintln!("clean-up: kafka admin client: {e}");
                    return;
                }
            };
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let dlq = self.dlq_topic();
        if let Err(e) = admin.delete_topics(&[self.topic(), &dlq], &options).await {
            eprintln!("clean-up: deleting topics: {e}");
        }
        let group = self.projection.group_id.as_str();
        if let Err(e) = admin.delete_groups(&[group], &options).await {
            eprintln!("clean-up: deleting group {group}: {e}");
        }
    }
}

/// Reads every partition of `topic` from the beginning until `at_least` records arrived or
/// `limit` passed, then 500 ms more.
pub fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    at_least: usize,
    limit: Duration,
) -> Vec<Consumed> {
    let consumer: BaseConsumer = up(prism_platform::clients::kafka_client_config(kafka)
        .set("group.id", prism_tests::unique("t-kit-reader"))
        .set("enable.auto.commit", "false")
        .create());
    let metadata = up(consumer.fetch_metadata(Some(topic), Duration::from_secs(10)));
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            up(tpl.add_partition_offset(topic, p.id(), Offset::Beginning));
        }
    }
    if tpl.count() == 0 {
        return Vec::new();
    }
    up(consumer.assign(&tpl));
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    let mut grace: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if grace.is_none() && out.len() >= at_least {
            grace = Some(now + Duration::from_millis(500));
        }
        if grace.is_some_and(|g| now >= g) || (grace.is_none() && now >= deadline) {
            return out;
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = up(message);
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Consumed {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
}

/// Waits until `sink`'s handled version of every account reaches `expected`.
pub async fn wait_versions(
    sink: &dyn Sink,
    expected: &std::collections::HashMap<Uuid, u64>,
    limit: Duration,
) {
    let accounts: Vec<Uuid> = expected.keys().copied().collect();
    super::eventually(
        &format!("the sink reaches the versions {expected:?}"),
        limit,
        || {
            let accounts = accounts.clone();
            async move {
                let have = sink.versions(&accounts).await.ok()?;
                expected
                    .iter()
                    .all(|(a, v)| have.get(a).is_some_and(|h| h >= v))
                    .then_some(())
            }
        },
    )
    .await;
}

/// Waits until `sink`'s stored offset of `partition` reaches `offset`.
pub async fn wait_offset(sink: &dyn Sink, partition: i32, offset: i64, limit: Duration) {
    super::eventually(
        &format!("the stored position of partition {partition} reaches offset {offset}"),
        limit,
        || async move {
            let stored = sink.positions(&[partition]).await.ok()?;
            stored
                .iter()
                .any(|p| p.partition == partition && p.offset >= offset)
                .then_some(())
        },
    )
    .await;
}
