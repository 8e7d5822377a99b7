//! What `/healthz` and `/readyz` report: shared by the runtime (which updates it) and the
//! binary's HTTP server (which reads it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;

/// One assigned partition as this instance sees it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PartitionHealth {
    /// Offset of the last handled record (`None`: nothing stored yet).
    pub stored_offset: Option<i64>,
    /// Kafka's end offset when last measured.
    pub end_offset: Option<i64>,
    pub lag: Option<i64>,
    /// How far behind the read model is in time, in ms: since the last applied event's
    /// time while records wait, 0 once caught up (`None`: not measured yet).
    pub lag_ms: Option<i64>,
    /// Time of the last event applied from this partition.
    pub last_event_time: Option<chrono::DateTime<chrono::Utc>>,
    pub paused: bool,
    pub last_error: Option<String>,
    /// Why the partition is held, if it is: nothing past the held record is applied until
    /// the cause is removed (see `worker.rs`). A held partition makes the instance unready.
    pub held: Option<String>,
}

#[derive(Debug)]
struct Inner {
    ready_max_lag: u64,
    joined: AtomicBool,
    sink_ok: AtomicBool,
    kafka_ok: AtomicBool,
    stopping: AtomicBool,
    /// Why the read model is not open yet (the process shell retries until it is).
    opening: Mutex<Option<String>>,
    partitions: Mutex<BTreeMap<i32, PartitionHealth>>,
}

/// Cheap to clone; all clones see the same state.
#[derive(Debug, Clone)]
pub struct Health(Arc<Inner>);

/// A snapshot for `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub ready: bool,
    pub reasons: Vec<String>,
    pub partitions: BTreeMap<i32, PartitionHealth>,
}

impl Health {
    pub fn new(ready_max_lag: u64) -> Self {
        Self(Arc::new(Inner {
            ready_max_lag,
            joined: AtomicBool::new(false),
            sink_ok: AtomicBool::new(true),
            kafka_ok: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            opening: Mutex::new(None),
            partitions: Mutex::new(BTreeMap::new()),
        }))
    }

    fn partitions(&self) -> MutexGuard<'_, BTreeMap<i32, PartitionHealth>> {
        // `parking_lot` locks are not poisoned by a panic elsewhere.
        self.0.partitions.lock()
    }

    pub(crate) fn joined(&self) {
        self.0.joined.store(true, Ordering::Relaxed);
    }

    pub(crate) fn sink_ok(&self, ok: bool) {
        self.0.sink_ok.store(ok, Ordering::Relaxed);
    }

    pub(crate) fn kafka_ok(&self, ok: bool) {
        self.0.kafka_ok.store(ok, Ordering::Relaxed);
    }

    pub fn stopping(&self) {
        self.0.stopping.store(true, Ordering::Relaxed);
    }

    /// `Some(why)`: the read model could not be opened (the last error); `None`: it is open.
    pub fn opening(&self, why: Option<String>) {
        *self.0.opening.lock() = why;
    }

    pub(crate) fn update(&self, partition: i32, f: impl FnOnce(&mut PartitionHealth)) {
        f(self.partitions().entry(partition).or_default());
    }

    pub(crate) fn remove(&self, partition: i32) {
        self.partitions().remove(&partition);
    }

    /// Ready: joined the group, the sink and Kafka answer, no assigned partition lags by more
    /// than the configured number of records, and not shutting down.
    pub fn report(&self) -> HealthReport {
        let mut reasons = Vec::new();
        if self.0.stopping.load(Ordering::Relaxed) {
            reasons.push("shutting down".to_owned());
        }
        if let Some(why) = self.0.opening.lock().as_ref() {
            reasons.push(format!("the read model is not open: {why}"));
        }
        if !self.0.joined.load(Ordering::Relaxed) {
            reasons.push("not yet part of the consumer group".to_owned());
        }
        if !self.0.sink_ok.load(Ordering::Relaxed) {
            reasons.push("the read model's store is not answering".to_owned());
        }
        if !self.0.kafka_ok.load(Ordering::Relaxed) {
            reasons.push("Kafka is not answering".to_owned());
        }
        let partitions = self.partitions().clone();
        for (partition, p) in &partitions {
            if let Some(why) = &p.held {
                reasons.push(format!("partition {partition} is held: {why}"));
            }
            if p.lag.is_none() {
                reasons.push(format!("partition {partition}: lag not measured yet"));
            }
            if let Some(lag) = p.lag {
                if lag > self.0.ready_max_lag as i64 {
                    reasons.push(format!(
                        "partition {partition} lags by {lag} records (limit {})",
                        self.0.ready_max_lag
                    ));
                }
            }
        }
        HealthReport {
            ready: reasons.is_empty(),
            reasons,
            partitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_joined_and_within_the_lag_limit() {
        let health = Health::new(10);
        assert!(!health.report().ready);
        health.joined();
        assert!(health.report().ready);
        health.update(3, |p| p.stored_offset = Some(7));
        assert!(!health.report().ready, "lag not measured yet");
        health.update(3, |p| p.lag = Some(11));
        let report = health.report();
        assert!(!report.ready);
        assert!(report.reasons[0].contains("partition 3"));
        health.update(3, |p| p.lag = Some(10));
        assert!(health.report().ready);
        health.sink_ok(false);
        assert!(!health.report().ready);
    }

    #[test]
    fn not_ready_while_the_read_model_is_not_open_and_says_why() {
        let health = Health::new(10);
        health.joined();
        health.opening(Some("connection refused".into()));
        let report = health.report();
        assert!(!report.ready);
        assert_eq!(
            report.reasons,
            ["the read model is not open: connection refused"]
        );
        health.opening(None);
        assert!(health.report().ready);
    }

    #[test]
    fn a_held_partition_is_not_ready_and_says_why() {
        let health = Health::new(10);
        health.joined();
        health.update(1, |p| p.lag = Some(0));
        assert!(health.report().ready);
        health.update(1, |p| p.held = Some("unknown event type".into()));
        let report = health.report();
        assert!(!report.ready);
        assert!(report.reasons[0].contains("partition 1 is held: unknown event type"));
        health.update(1, |p| p.held = None);
        assert!(health.report().ready);
    }
}
