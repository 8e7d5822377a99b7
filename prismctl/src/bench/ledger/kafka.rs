//! The Kafka side: the bench topic (create, delete, end offsets), the fill, and
//! ceiling A (a raw consume of the same events).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use parking_lot::Mutex;
use prism_platform::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use super::figures::{ConsumeFigures, CpuSnapshot, Rate};
use super::report::bar;
use super::workload::{timed_workload, Timing};
use super::*;

pub(super) fn admin(
    config: &Config,
) -> anyhow::Result<(AdminClient<DefaultClientContext>, AdminOptions)> {
    let admin: AdminClient<DefaultClientContext> =
        prism_platform::clients::kafka_client_config(&config.kafka)
            .create()
            .context("creating a Kafka admin client")?;
    let timeout = Some(Duration::from_millis(
        config.kafka.request_timeout_ms.max(1_000),
    ));
    let options = AdminOptions::new()
        .operation_timeout(timeout)
        .request_timeout(timeout);
    Ok((admin, options))
}

pub(in crate::bench) async fn create_topic(
    config: &Config,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let (admin, options) = admin(config)?;
    let new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(config.kafka.topic_replication_factor),
    );
    for result in admin.create_topics(&[new], &options).await? {
        if let Err((name, code)) = result {
            bail!("creating topic {name}: {code}");
        }
    }
    Ok(())
}

pub(in crate::bench) async fn delete_topics(
    config: &Config,
    topics: &[&str],
) -> anyhow::Result<()> {
    let (admin, options) = admin(config)?;
    for result in admin.delete_topics(topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => bail!("deleting topic {name}: {code}"),
        }
    }
    Ok(())
}

pub(in crate::bench) async fn delete_groups(
    config: &Config,
    groups: &[&str],
) -> anyhow::Result<()> {
    let (admin, options) = admin(config)?;
    for result in admin.delete_groups(groups, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((name, code)) => bail!("deleting consumer group {name}: {code}"),
        }
    }
    Ok(())
}

/// One run of ceiling A on its own thread.
pub(super) async fn consume_once(
    config: &Config,
    args: &Args,
    names: &Names,
    ends: &[i64],
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<ConsumeFigures> {
    let (config, topic, group, ends, cancel, timeout) = (
        config.clone(),
        names.topic.clone(),
        names.raw_group.clone(),
        ends.to_vec(),
        Arc::clone(cancel),
        args.timeout,
    );
    tokio::task::spawn_blocking(move || consume(&config, &topic, &group, &ends, &cancel, timeout))
        .await
        .map_err(|e| anyhow!("the consuming thread failed: {e}"))?
}

/// End offset of every partition (the fill leaves them at 0 .. count).
pub(in crate::bench) async fn end_offsets(
    config: &Config,
    topic: &str,
    partitions: usize,
) -> anyhow::Result<Vec<i64>> {
    let config = config.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = prism_platform::clients::kafka_client_config(&config.kafka)
            .create()
            .context("creating a Kafka client")?;
        let timeout = Duration::from_millis(config.kafka.request_timeout_ms.max(1_000));
        let mut ends = Vec::with_capacity(partitions);
        for partition in 0..partitions {
            let p = i32::try_from(partition)?;
            let (low, high) = client
                .fetch_watermarks(&topic, p, timeout)
                .with_context(|| format!("reading the offsets of {topic}/{p}"))?;
            if low != 0 {
                bail!("{topic}/{p} starts at offset {low}, not 0");
            }
            ends.push(high);
        }
        Ok(ends)
    })
    .await
    .map_err(|e| anyhow!("the offsets thread failed: {e}"))?
}

// ---------- 1. the fill ----------

pub(in crate::bench) struct Filled {
    pub(in crate::bench) rate: Rate,
    /// Partition of each account's records (from the delivery reports).
    pub(in crate::bench) partition_of: Vec<i32>,
}

/// Delivery reports: where each account's records went, and failures.
pub(super) struct Deliveries {
    partition_of: Vec<AtomicI32>,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, account: usize) {
        match result {
            Ok(message) => {
                if let Some(slot) = self.partition_of.get(account) {
                    slot.store(message.partition(), Ordering::Relaxed);
                }
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// Produces the workload to `topic` (blocking; runs on its own thread).
pub(super) fn produce(
    config: &Config,
    args: &Args,
    topic: &str,
    cancel: &AtomicBool,
) -> anyhow::Result<Filled> {
    let timing = Timing::spread(args.events);
    produce_workload(
        config,
        args.seed,
        args.accounts,
        args.events,
        timing,
        topic,
        cancel,
    )
}

/// Produces `events` events of the seeded workload over `accounts` accounts to `topic`
/// (blocking; runs on its own thread). Shared by the benches that replay a topic.
pub(in crate::bench) fn produce_workload(
    config: &Config,
    seed: u64,
    accounts: u64,
    events: u64,
    timing: Timing,
    topic: &str,
    cancel: &AtomicBool,
) -> anyhow::Result<Filled> {
    let accounts = usize::try_from(accounts)?;
    let mut client = prism_platform::clients::kafka_client_config(&config.kafka);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "524288")
        .set("message.timeout.ms", "300000");
    for (key, value) in &config.kafka.client {
        client.set(key, value);
    }
    let producer: BaseProducer<Deliveries> = client
        .create_with_context(Deliveries {
            partition_of: (0..accounts).map(|_| AtomicI32::new(-1)).collect(),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
        .context("creating the Kafka producer")?;

    let bar = bar("filling the topic", Some(events));
    let cpu = CpuSnapshot::take(std::process::id(), &[]);
    let started = Instant::now();
    let workload = timed_workload(seed, accounts, events, timing);
    for (sent, (account, envelope)) in workload.enumerate() {
        let record = prism_events::kafka::encode(&envelope);
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let mut pending = BaseRecord::<str, [u8], usize>::with_opaque_to(topic, account)
            .key(record.key.as_str())
            .payload(record.value.as_slice())
            .headers(headers);
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    pending = back;
                    producer.poll(Duration::from_millis(10));
                    if cancel.load(Ordering::Relaxed) {
                        bail!("interrupted");
                    }
                }
                Err((e, _)) => return Err(e).context("producing to the bench topic"),
            }
        }
        if sent % 1024 == 0 {
            producer.poll(Duration::ZERO);
            bar.set_position(sent as u64);
            if cancel.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .context("waiting for Kafka to acknowledge the bench events")?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let context = producer.context();
    let failed = context.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!(
            "{failed} bench events were not delivered, e.g. {}",
            context.first_error.lock().clone().unwrap_or_default()
        );
    }
    let delivered = context.delivered.load(Ordering::Relaxed);
    if delivered != events {
        bail!("Kafka acknowledged {delivered} bench events of {}", events);
    }
    let partition_of: Vec<i32> = context
        .partition_of
        .iter()
        .map(|p| p.load(Ordering::Relaxed))
        .collect();
    Ok(Filled {
        rate: Rate::of(events, elapsed).cpu(&cpu, std::process::id(), &[]),
        partition_of,
    })
}

// ---------- 2. ceiling A: raw Kafka consume ----------

/// Records when the group assigned partitions.
pub(super) struct Assignment {
    at: Mutex<Option<Instant>>,
}

impl ClientContext for Assignment {}

impl ConsumerContext for Assignment {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if tpl.count() > 0 {
                self.at.lock().get_or_insert_with(Instant::now);
            }
        }
    }
}

/// Reads the whole topic with the runtime's consumer settings (blocking).
pub(in crate::bench) fn consume(
    config: &Config,
    topic: &str,
    group: &str,
    ends: &[i64],
    cancel: &AtomicBool,
    timeout: Duration,
) -> anyhow::Result<ConsumeFigures> {
    let client = prism_projector::consumer_config(&config.kafka, group, &config.projector);
    let consumer: BaseConsumer<Assignment> = client
        .create_with_context(Assignment {
            at: Mutex::new(None),
        })
        .context("creating the Kafka consumer")?;
    let total: u64 = ends.iter().map(|e| u64::try_from(*e).unwrap_or(0)).sum();
    let bar = bar("ceiling A: kafka consume", Some(total));
    let started = Instant::now();
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("subscribing to {topic}"))?;

    let mut cpu = None;
    let mut remaining = ends.iter().filter(|e| **e > 0).count();
    let mut reached = vec![false; ends.len()];
    let mut count: u64 = 0;
    let mut bytes: u64 = 0;
    let mut errors: u64 = 0;
    let mut first_error = None;
    while remaining > 0 {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if started.elapsed() > timeout {
            bail!(
                "ceiling A: {count} of {total} records read in {} s (--timeout)",
                timeout.as_secs()
            );
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Ok(message)) => {
                if cpu.is_none() {
                    cpu = Some(CpuSnapshot::take(std::process::id(), &[]));
                }
                let record = prism_projector::record::Record::from_message(&message);
                drop(message);
                count += 1;
                bytes += (record.payload().map_or(0, <[u8]>::len)
                    + record.key().map_or(0, <[u8]>::len)
                    + record
                        .headers()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()) as u64;
                if let Some(end) = usize::try_from(record.partition)
                    .ok()
                    .and_then(|p| ends.get(p).zip(reached.get_mut(p)))
                {
                    if !*end.1 && record.offset + 1 >= *end.0 {
                        *end.1 = true;
                        remaining -= 1;
                    }
                }
                std::hint::black_box(&record);
                if count.is_multiple_of(4096) {
                    bar.set_position(count);
                }
            }
            Some(Err(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let done = Instant::now();
    bar.finish_and_clear();
    consumer.unsubscribe();
    std::hint::black_box(bytes);
    if let Some(e) = first_error {
        eprintln!("prismctl: bench ledger: ceiling A: {errors} consumer errors, e.g. {e}");
    }
    let assigned = consumer.context().at.lock().unwrap_or(started);
    Ok(ConsumeFigures {
        rate: match &cpu {
            Some(cpu) => {
                Rate::of(count, done.duration_since(assigned)).cpu(cpu, std::process::id(), &[])
            }
            None => Rate::of(count, done.duration_since(assigned)),
        },
        runs: Vec::new(),
        join_s: assigned.duration_since(started).as_secs_f64(),
        errors,
    })
}
