//! The dead-letter topic `<topic>.<suffix>.<projector>`: records a projector cannot apply,
//! with headers saying who gave up on them, why, and where they came from.

use std::time::Duration;

use chrono::Utc;
use prism_platform::config::KafkaConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::record::Record;

pub const H_PROJECTOR: &str = "prism_dlq_projector";
pub const H_ERROR: &str = "prism_dlq_error";
pub const H_TOPIC: &str = "prism_dlq_original_topic";
pub const H_PARTITION: &str = "prism_dlq_original_partition";
pub const H_OFFSET: &str = "prism_dlq_original_offset";
pub const H_FAILED_AT: &str = "prism_dlq_failed_at";

/// The dead-letter topic of `projector` for `topic`.
pub fn topic_name(topic: &str, suffix: &str, projector: &str) -> String {
    format!("{topic}.{suffix}.{projector}")
}

#[derive(Clone)]
pub(crate) struct DeadLetters {
    producer: FutureProducer,
    projector: String,
    source_topic: String,
    topic: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish()
    }
}

impl DeadLetters {
    /// Creates the topic if needed (one partition: dead letters are rare and read by people).
    pub(crate) async fn open(
        kafka: &KafkaConfig,
        projector: &str,
        source_topic: &str,
        suffix: &str,
    ) -> anyhow::Result<Self> {
        let topic = topic_name(source_topic, suffix, projector);
        prism_platform::clients::ensure_topic(kafka, &topic, 1).await?;
        let mut config = prism_platform::clients::kafka_client_config(kafka);
        config.set("linger.ms", "0");
        for (key, value) in &kafka.client {
            config.set(key, value);
        }
        // Set last, so pass-through settings cannot weaken them: the position moves past a
        // dead letter once Kafka acknowledged it, so that acknowledgement must be durable.
        for (key, ours) in [("enable.idempotence", "true"), ("acks", "all")] {
            if let Some(theirs) = kafka.client.get(key).filter(|v| v.as_str() != ours) {
                tracing::warn!(
                    key,
                    theirs = %theirs,
                    ours,
                    "kafka.client may not change the dead-letter producer's durability; ignored"
                );
            }
            config.set(key, ours);
        }
        Ok(Self {
            producer: config.create()?,
            projector: projector.to_owned(),
            source_topic: source_topic.to_owned(),
            topic,
        })
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `record` with the reason; waits for Kafka's acknowledgement.
    pub(crate) async fn send(&self, record: &Record, error: &str) -> anyhow::Result<()> {
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let failed_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut headers = OwnedHeaders::new_with_capacity(record.header_count() + 6);
        for (name, value) in record.headers() {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        for (key, value) in [
            (H_PROJECTOR, self.projector.as_str()),
            (H_ERROR, error),
            (H_TOPIC, self.source_topic.as_str()),
            (H_PARTITION, partition.as_str()),
            (H_OFFSET, offset.as_str()),
            (H_FAILED_AT, failed_at.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = record.key() {
            out = out.key(key);
        }
        if let Some(payload) = record.payload() {
            out = out.payload(payload);
        }
        self.producer
            .send(out, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("publishing to {}: {e}", self.topic))?;
        Ok(())
    }
}
