//! The consumer group's lag as Kafka alone sees it, for an instance that is not projecting:
//! its read model's store cannot be opened yet (the process started during an outage of
//! it), or the live copy cannot be opened here.
//!
//! Such an instance holds no partitions, so the runtime measures nothing, yet the group may
//! be falling behind: every instance of a projector restarted during a store outage is in
//! this state, and without this probe `prism_projector_lag_seconds` would vanish exactly when
//! the lag alert should fire. The probe fills the same gauges for every partition of the
//! topic from the group's offsets committed to Kafka (which the runtime commits after the
//! sink stored them, so they trail the stored positions by at most a commit interval):
//! - lag in records: end offset − committed offset;
//! - lag in seconds: the age of the first record waiting (the one at the committed offset),
//!   by its Kafka timestamp; 0 when nothing waits.
//!
//! It never joins the group (it assigns partitions and never commits), so it moves no
//! partition and no position. [`GroupLag::stop`] removes its gauges before the runtime
//! starts filling them again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use prism_platform::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::Metrics;

/// How long one Kafka request of the probe may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the probe waits for the first waiting record of a partition.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// One partition as the probe measured it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionLag {
    pub records: i64,
    /// `None`: records wait but the first of them could not be read in time.
    pub seconds: Option<f64>,
}

/// The first offset the group has not processed: its committed offset (`None`: nothing
/// committed, so the group starts from the earliest record) kept within the log `low..high`
/// (retention may have deleted it; a recreated topic may be shorter).
fn first_waiting(low: i64, high: i64, committed: Option<i64>) -> i64 {
    committed.unwrap_or(low).clamp(low, high.max(low))
}

/// The group's lag on one partition from what Kafka says of it: its offsets `low..high`,
/// the group's committed offset (`None`: nothing committed, so the group starts from the
/// earliest record) and the timestamp (ms) of the record at the first waiting offset.
pub fn partition_lag(
    low: i64,
    high: i64,
    committed: Option<i64>,
    first_waiting_ms: Option<i64>,
    now_ms: i64,
) -> PartitionLag {
    let records = (high - first_waiting(low, high, committed)).max(0);
    let seconds = if records == 0 {
        Some(0.0)
    } else {
        first_waiting_ms.map(|t| (now_ms - t).max(0) as f64 / 1e3)
    };
    PartitionLag { records, seconds }
}

/// A running probe; [`GroupLag::stop`] ends it.
#[derive(Debug)]
pub struct GroupLag {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupLag {
    /// Measures `group`'s lag on `topic` every `interval` on a thread of its own (Kafka's
    /// requests block) into `metrics`' lag gauges. Kafka being unreachable is not an error:
    /// the probe keeps trying.
    pub fn start(
        kafka: &KafkaConfig,
        group: &str,
        topic: &str,
        metrics: Metrics,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let config = reader_config(kafka, group);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let topic = topic.to_owned();
        let thread = std::thread::Builder::new()
            .name("group-lag".into())
            .spawn(move || probe(&config, &topic, &metrics, interval, &token))
            .context("starting the group lag thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the probe and removes the gauges it set (waits for its thread, at most one
    /// Kafka request).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for GroupLag {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The Kafka client of a thread that reads `group`'s partitions from outside the group (the
/// probe, the runtime's lag thread): it assigns partitions (which needs the group's id),
/// never joins the group, never commits or stores an offset.
pub(crate) fn reader_config(kafka: &KafkaConfig, group: &str) -> rdkafka::ClientConfig {
    let mut config = prism_platform::clients::kafka_client_config(kafka);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    config
}

/// Sleeps `interval` on a blocking thread, waking every 50 ms to end early once `stop` is
/// cancelled.
pub(crate) fn sleep_unless_cancelled(interval: Duration, stop: &CancellationToken) {
    let deadline = Instant::now() + interval;
    while Instant::now() < deadline && !stop.is_cancelled() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn probe(
    config: &rdkafka::ClientConfig,
    topic: &str,
    metrics: &Metrics,
    interval: Duration,
    stop: &CancellationToken,
) {
    let mut client: Option<BaseConsumer> = None;
    // Every partition the probe set gauges for: removed when it stops.
    let mut measured = BTreeSet::new();
    while !stop.is_cancelled() {
        if client.is_none() {
            match config.create() {
                Ok(made) => client = Some(made),
                Err(e) => tracing::warn!(error = %e, "creating the group lag client"),
            }
        }
        if let Some(consumer) = &client {
            match measure(consumer, topic, stop) {
                Ok(partitions) => {
                    for (partition, lag) in partitions {
                        metrics.lag(partition, lag.records);
                        if let Some(seconds) = lag.seconds {
                            metrics.lag_seconds(partition, seconds);
                        }
                        measured.insert(partition);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "measuring the group's lag");
                    // A fresh client starts from a fresh bootstrap.
                    client = None;
                }
            }
        }
        sleep_unless_cancelled(interval, stop);
    }
    for partition in measured {
        metrics.forget_partition(partition);
    }
}

/// One round: every partition of `topic`.
fn measure(
    consumer: &BaseConsumer,
    topic: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<(i32, PartitionLag)>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .context("reading the topic's partitions")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut list = TopicPartitionList::new();
    for partition in &partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(list, REQUEST_TIMEOUT)
        .context("reading the group's committed offsets")?;
    let mut lags = Vec::with_capacity(partitions.len());
    for partition in partitions {
        if stop.is_cancelled() {
            break;
        }
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .with_context(|| format!("reading partition {partition}'s offsets"))?;
        let committed = committed
            .find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            });
        let next = first_waiting(low, high, committed);
        let first_waiting_ms = if next < high {
            first_record_time(consumer, topic, partition, next)?
        } else {
            None
        };
        let now = chrono::Utc::now().timestamp_millis();
        lags.push((
            partition,
            partition_lag(low, high, committed, first_waiting_ms, now),
        ));
    }
    Ok(lags)
}

/// The timestamp (ms) of the record at `offset`, read by assigning the partition to the
/// probe's own consumer (no group membership, no commit).
pub(crate) fn first_record_time(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<Option<i64>> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(offset))
        .context("naming the partition to read")?;
    consumer
        .assign(&list)
        .context("assigning the partition to read")?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut found = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) if message.partition() == partition => {
                found = message.timestamp().to_millis();
                break;
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => {
                tracing::debug!(partition, error = %e, "reading the first waiting record");
                break;
            }
        }
    }
    let _ = consumer.unassign();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_runs_from_the_committed_offset_to_the_end() {
        let lag = partition_lag(0, 120, Some(100), Some(40_000), 100_000);
        assert_eq!(lag.records, 20);
        assert_eq!(lag.seconds, Some(60.0));
    }

    #[test]
    fn nothing_committed_means_the_group_starts_from_the_earliest_record() {
        let lag = partition_lag(30, 50, None, Some(99_000), 100_000);
        assert_eq!(lag.records, 20);
        assert_eq!(lag.seconds, Some(1.0));
    }

    #[test]
    fn a_caught_up_group_lags_by_nothing_whatever_the_timestamps() {
        assert_eq!(
            partition_lag(0, 120, Some(120), None, 100_000),
            PartitionLag {
                records: 0,
                seconds: Some(0.0)
            }
        );
    }

    #[test]
    fn a_committed_offset_outside_the_log_is_clamped_to_it() {
        // Deleted by retention: the group resumes at the earliest record still kept.
        assert_eq!(partition_lag(50, 80, Some(10), None, 0).records, 30);
        // Past the end (the topic was recreated): nothing waits.
        assert_eq!(partition_lag(0, 5, Some(9), None, 0).records, 0);
    }

    #[test]
    fn a_waiting_record_that_could_not_be_read_leaves_the_seconds_unknown() {
        let lag = partition_lag(0, 10, Some(5), None, 100_000);
        assert_eq!(lag.records, 5);
        assert_eq!(lag.seconds, None);
    }

    #[test]
    fn a_record_stamped_in_the_future_is_not_negative_lag() {
        let lag = partition_lag(0, 10, Some(5), Some(200_000), 100_000);
        assert_eq!(lag.seconds, Some(0.0));
    }
}
