//! The projector test kit (feature `testing`): what every projector's tests and the
//! runtime's own tests share.
//!
//! - [`MemorySink`]: the reference implementation of the [`Sink`] contract, in memory,
//!   with switches that make its "store" unavailable or refuse writes, so the runtime's
//!   behaviour can be tested without any projector.
//! - [`contract`]: the checks every sink must pass, parameterised by a
//!   [`contract::ContractSubject`] the sink's tests implement (fresh copies of its read
//!   model and a canonical snapshot of one). Sink-level checks call `apply` directly;
//!   Kafka-level checks run the real [`crate::Runtime`] on a topic of their own.
//! - [`kafka`]: a Kafka test environment (a unique topic per test, producing with the
//!   project's encoder, a runtime tuned for tests, waits with deadlines, the dead-letter
//!   topic).
//!
//! The kit talks to the real local stack (Kafka on the configured bootstrap servers); a
//! service that does not answer fails the test naming `dev/stack up`.

pub mod contract;
pub mod kafka;
pub mod memory;

use std::future::Future;
use std::time::{Duration, Instant};

use prism_events::Envelope;

pub use memory::MemorySink;

use crate::{AccountVersion, Batch, PositionUpdate};

/// The last version of every account in `events`, with the event that carried it: what the
/// runtime passes as [`Batch::versions`] for a batch of these events.
pub fn versions_of(events: &[Envelope]) -> Vec<AccountVersion> {
    let mut last: Vec<AccountVersion> = Vec::new();
    for e in events {
        match last.iter_mut().find(|v| v.account_id == e.account_id.0) {
            Some(v) if v.version < e.account_version => {
                v.version = e.account_version;
                v.event_id = e.id;
            }
            Some(_) => {}
            None => last.push(AccountVersion {
                account_id: e.account_id.0,
                version: e.account_version,
                event_id: e.id,
            }),
        }
    }
    last
}

/// A batch of `events` as the runtime's worker builds it: their versions, and the position
/// `offset` on `partition`, written by a writer that last read `expected`; the events sit
/// at the offsets just before and up to `offset`.
pub fn batch(events: Vec<Envelope>, partition: i32, expected: Option<i64>, offset: i64) -> Batch {
    let last = events.last().map(|e| (e.id, e.time));
    let first = offset - i64::try_from(events.len()).unwrap_or(0) + 1;
    Batch {
        versions: versions_of(&events),
        offsets: (first..=offset).collect(),
        events,
        position: Some(PositionUpdate {
            partition,
            expected,
            offset,
            event_id: last.map(|l| l.0),
            event_time: last.map(|l| l.1),
            writer: "prism-projector/test".into(),
        }),
    }
}

/// A batch of `events` that comes from no partition (a rebuild from the event store): how a
/// test builds the reference read model of a list of events.
pub fn unpositioned(events: Vec<Envelope>) -> Batch {
    Batch {
        versions: versions_of(&events),
        events,
        offsets: Vec::new(),
        position: None,
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics naming `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
