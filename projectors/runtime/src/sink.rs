//! The contract between the runtime and a read model's store.
//!
//! A projector is a pure fold (event → writes) plus a [`Sink`] that performs those writes.
//! The runtime hands the sink ordered, de-duplicated batches; the sink writes a batch's
//! effects *and* the projector's position in one atomic write. That single rule is what
//! makes a restart, a rebalance or a duplicate on Kafka harmless.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prism_events::Envelope;
use uuid::Uuid;

/// Where a projector stands on one partition, as its sink stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPosition {
    pub partition: i32,
    /// Offset of the last record handled (applied, skipped or dead-lettered).
    pub offset: i64,
    /// Id of the last event applied from this partition, if any.
    pub event_id: Option<Uuid>,
    /// CloudEvents time of that event.
    pub event_time: Option<DateTime<Utc>>,
}

/// The partition part of a batch: where the batch leaves the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionUpdate {
    pub partition: i32,
    /// The offset this writer last read from the sink (or wrote). The sink must refuse the
    /// write with [`SinkError::Fenced`] if the stored offset differs: another writer moved it.
    /// `None`: this writer found no stored position.
    pub expected: Option<i64>,
    /// Offset of the last record of this batch.
    pub offset: i64,
    /// Last event applied in this batch (kept from the previous position if none was).
    pub event_id: Option<Uuid>,
    pub event_time: Option<DateTime<Utc>>,
    /// Who writes (consumer group and instance), for `prismctl status`.
    pub writer: String,
}

/// An account's new last handled version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountVersion {
    pub account_id: Uuid,
    pub version: u64,
    /// The event that carried this version.
    pub event_id: Uuid,
}

/// One atomic write.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Events to fold, in partition order. For each account the first one is exactly one
    /// ahead of the stored version and the others follow in version order; the only
    /// versions missing are events the runtime dead-lettered.
    pub events: Vec<Envelope>,
    /// The last handled version of every account this batch touches, including accounts
    /// whose events were dead-lettered (their version moves past the dead letter).
    pub versions: Vec<AccountVersion>,
    /// Each event's Kafka offset, in step with `events`; empty for batches that do not
    /// come from Kafka (a rebuild from the event store).
    pub offsets: Vec<i64>,
    /// Where the batch leaves its partition; `None` for batches that do not come from
    /// Kafka (a rebuild from the event store).
    pub position: Option<PositionUpdate>,
}

/// Why a sink write failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The store is unavailable or timed out: nothing was written; try again later.
    #[error("sink unavailable: {0}")]
    Transient(String),
    /// The stored partition offset is not the expected one: another writer owns the
    /// partition now. Nothing was written.
    #[error("partition {partition} was moved by another writer (stored offset {stored:?})")]
    Fenced { partition: i32, stored: Option<i64> },
    /// The fold or the store refuses `batch.events[index]` for good (bad data). Nothing was
    /// written; the runtime retries, then dead-letters that event and writes the rest.
    #[error("event {index} of the batch was rejected: {reason}")]
    Rejected { index: usize, reason: String },
    /// The store refuses the write for good, for a reason not tied to one event (a value
    /// out of a column's range, a missing table or column): the same write fails the same
    /// way however often it is retried. Nothing was written. The runtime holds the
    /// partition (nothing past it is applied or skipped), says so on `/readyz` and through
    /// [`Sink::record_error`], and retries at its longest back-off, so the partition goes on
    /// by itself once an operator fixed the store.
    #[error("the store refuses the write: {0}")]
    Permanent(String),
}

/// A read model's store, as the runtime sees it.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Stored positions of these partitions (absent: never written).
    async fn positions(&self, partitions: &[i32]) -> Result<Vec<StoredPosition>, SinkError>;

    /// Last handled version of each of these accounts (absent: none handled).
    async fn versions(&self, accounts: &[Uuid]) -> Result<HashMap<Uuid, u64>, SinkError>;

    /// Folds `batch.events`, stores `batch.versions` and `batch.position`: all or nothing.
    async fn apply(&self, batch: &Batch) -> Result<(), SinkError>;

    /// Remembers the last error seen on a partition, with its time, for `prismctl status`
    /// (best effort; kept until the next error, so a dead letter stays visible).
    async fn record_error(&self, partition: i32, error: &str) -> Result<(), SinkError>;

    /// Ownership of `partitions` changes (they were assigned to this instance, revoked from
    /// it, or their worker starts over): anything the sink cached about their accounts is
    /// no longer known to be current, because another writer may own them in between.
    /// Called before the first batch of a new owner and after the last batch of an old one.
    /// A sink that caches nothing keeps this default.
    fn release(&self, partitions: &[i32]) {
        let _ = partitions;
    }
}
