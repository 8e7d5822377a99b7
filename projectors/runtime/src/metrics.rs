//! The runtime's Prometheus metrics, labelled by projector. One set per process, shared by
//! every partition worker.

use prometheus::{
    exponential_buckets, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

/// What happened to a consumed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// A duplicate: its account version was already handled.
    Skipped,
    DeadLettered,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Skipped => "skipped",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Metrics {
    projector: String,
    events: IntCounterVec,
    batch_duration: HistogramVec,
    batch_size: HistogramVec,
    delay: HistogramVec,
    lag: IntGaugeVec,
    lag_seconds: GaugeVec,
    sink_errors: IntCounterVec,
    gaps: IntCounterVec,
    paused: IntGaugeVec,
    assigned: IntGaugeVec,
    held: IntGaugeVec,
    worker_accounts: IntGaugeVec,
}

impl Metrics {
    /// Registers the metrics of projector `projector` in `registry`.
    pub fn new(registry: &Registry, projector: &str) -> prometheus::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "prism_projector_events_total",
                "Records consumed, by event type and outcome (applied, skipped as duplicate, dead-lettered).",
            ),
            &["projector", "type", "outcome"],
        )?;
        let batch_duration = HistogramVec::new(
            HistogramOpts::new(
                "prism_projector_batch_duration_seconds",
                "Time to decode, de-duplicate and write one batch (sink transaction included).",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 16)?),
            &["projector"],
        )?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new("prism_projector_batch_records", "Records per batch.")
                .buckets(exponential_buckets(1.0, 2.0, 14)?),
            &["projector"],
        )?;
        let delay = HistogramVec::new(
            HistogramOpts::new(
                "prism_projector_event_delay_seconds",
                "End-to-end delay: event time (command accepted) to applied in the read model.",
            )
            .buckets(exponential_buckets(0.001, 2.0, 18)?),
            &["projector"],
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "prism_projector_consumer_lag",
                "Records on the partition after the projector's stored position.",
            ),
            &["projector", "partition"],
        )?;
        let lag_seconds = GaugeVec::new(
            Opts::new(
                "prism_projector_lag_seconds",
                "How far behind the read model is in time while records wait on the partition: since the last applied event's time (before the first one here, since the first waiting record's Kafka timestamp), 0 when caught up.",
            ),
            &["projector", "partition"],
        )?;
        let sink_errors = IntCounterVec::new(
            Opts::new(
                "prism_projector_sink_errors_total",
                "Failed sink writes by kind (transient, fenced, rejected).",
            ),
            &["projector", "kind"],
        )?;
        let gaps = IntCounterVec::new(
            Opts::new(
                "prism_projector_version_gaps_total",
                "Events more than one version ahead of their account's stored version, reported and dead-lettered.",
            ),
            &["projector"],
        )?;
        let paused = IntGaugeVec::new(
            Opts::new(
                "prism_projector_paused_partitions",
                "Partitions paused because their sink is behind (backpressure).",
            ),
            &["projector"],
        )?;
        let assigned = IntGaugeVec::new(
            Opts::new(
                "prism_projector_assigned_partitions",
                "Partitions this instance owns.",
            ),
            &["projector"],
        )?;
        let held = IntGaugeVec::new(
            Opts::new(
                "prism_projector_partition_held",
                "1 while a partition is held: an event this build cannot read (deploy the newer projector) or a write the store refuses for good (fix the store); nothing past it is applied or skipped.",
            ),
            &["projector", "partition"],
        )?;
        let worker_accounts = IntGaugeVec::new(
            Opts::new(
                "prism_projector_worker_accounts",
                "Accounts remembered by a partition worker (handled versions and quarantine), bounded by [projector] worker_accounts_max.",
            ),
            &["projector", "partition"],
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(held.clone()))?;
        registry.register(Box::new(worker_accounts.clone()))?;
        registry.register(Box::new(batch_duration.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(delay.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(lag_seconds.clone()))?;
        registry.register(Box::new(sink_errors.clone()))?;
        registry.register(Box::new(gaps.clone()))?;
        registry.register(Box::new(paused.clone()))?;
        registry.register(Box::new(assigned.clone()))?;
        Ok(Self {
            projector: projector.to_owned(),
            events,
            batch_duration,
            batch_size,
            delay,
            lag,
            lag_seconds,
            sink_errors,
            gaps,
            paused,
            assigned,
            held,
            worker_accounts,
        })
    }

    pub fn event(&self, event_type: &str, outcome: Outcome, count: u64) {
        self.events
            .with_label_values(&[self.projector.as_str(), event_type, outcome.as_str()])
            .inc_by(count);
    }

    /// Records this process dead-lettered since it started (the sum of
    /// `prism_projector_events_total{outcome="dead_lettered"}`).
    pub fn dead_lettered(&self) -> u64 {
        use prometheus::core::Collector;
        self.events
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                let label = |name: &str, value: &str| {
                    metric
                        .get_label()
                        .iter()
                        .any(|l| l.name() == name && l.value() == value)
                };
                label("outcome", Outcome::DeadLettered.as_str())
                    && label("projector", &self.projector)
            })
            .map(|metric| metric.get_counter().value() as u64)
            .sum()
    }

    pub fn batch(&self, seconds: f64, records: usize) {
        self.batch_duration
            .with_label_values(&[self.projector.as_str()])
            .observe(seconds);
        self.batch_size
            .with_label_values(&[self.projector.as_str()])
            .observe(records as f64);
    }

    pub fn delay(&self, seconds: f64) {
        self.delay
            .with_label_values(&[self.projector.as_str()])
            .observe(seconds.max(0.0));
    }

    pub fn lag(&self, partition: i32, records: i64) {
        self.lag
            .with_label_values(&[self.projector.as_str(), &partition.to_string()])
            .set(records);
    }

    pub fn lag_seconds(&self, partition: i32, seconds: f64) {
        self.lag_seconds
            .with_label_values(&[self.projector.as_str(), &partition.to_string()])
            .set(seconds);
    }

    pub fn forget_partition(&self, partition: i32) {
        let labels = [self.projector.as_str(), &partition.to_string()];
        let _ = self.lag.remove_label_values(&labels);
        let _ = self.lag_seconds.remove_label_values(&labels);
        let _ = self.held.remove_label_values(&labels);
        let _ = self.worker_accounts.remove_label_values(&labels);
    }

    pub fn held(&self, partition: i32, held: bool) {
        self.held
            .with_label_values(&[self.projector.as_str(), &partition.to_string()])
            .set(i64::from(held));
    }

    pub fn worker_accounts(&self, partition: i32, accounts: usize) {
        self.worker_accounts
            .with_label_values(&[self.projector.as_str(), &partition.to_string()])
            .set(i64::try_from(accounts).unwrap_or(i64::MAX));
    }

    pub fn sink_error(&self, kind: &str) {
        self.sink_errors
            .with_label_values(&[self.projector.as_str(), kind])
            .inc();
    }

    pub fn gap(&self) {
        self.gaps
            .with_label_values(&[self.projector.as_str()])
            .inc();
    }

    pub fn paused(&self, partitions: usize) {
        self.paused
            .with_label_values(&[self.projector.as_str()])
            .set(partitions as i64);
    }

    pub fn assigned(&self, partitions: usize) {
        self.assigned
            .with_label_values(&[self.projector.as_str()])
            .set(partitions as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_are_summed_over_event_types_and_other_outcomes_are_not() {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry, "ledger").expect("metrics");
        assert_eq!(metrics.dead_lettered(), 0);
        metrics.event("prism.account.opened", Outcome::DeadLettered, 2);
        metrics.event("prism.account.money_deposited", Outcome::DeadLettered, 1);
        metrics.event("prism.account.opened", Outcome::Applied, 40);
        metrics.event("prism.account.opened", Outcome::Skipped, 3);
        assert_eq!(metrics.dead_lettered(), 3);
    }
}
