//! Every metric prism-command exports, in one place (names are part of the dashboards).

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

/// Latency buckets from 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `prism_command_duration_seconds{command,outcome}`: outcome is accepted, replayed,
    /// rejected, conflict, invalid or error.
    pub command_duration: HistogramVec,
    /// `prism_command_conflicts_total`: appends that lost to another writer and were retried.
    pub conflicts: IntCounter,
    /// `prism_command_append_batch_size`: commits written together in one store round trip
    /// (group commit); above 1 only while commands of several accounts are ready at once.
    pub append_batch_size: Histogram,
    /// `prism_relay_published_total`: events acknowledged by Kafka (duplicates included).
    pub relay_published: IntCounter,
    /// `prism_relay_sent_total{path}`: the same events by the way the relay sent them:
    /// `fresh` (a commit of this instance, as it was appended), `predecessor` (an account's
    /// earlier unpublished events, sent before a fresh commit whose account this relay had
    /// no watermark for) or `sweep` (found in the store by a sweep). Where duplicates come
    /// from after an outage: both instances' predecessors and sweeps may send one event.
    pub relay_sent: IntCounterVec,
    /// `prism_relay_backlog_events`: unpublished events the last sweep found (at most
    /// `relay.batch_max_events`, one page).
    pub relay_backlog_events: IntGauge,
    /// `prism_relay_backlog_age_seconds`: age of the oldest unpublished event at the last
    /// sweep (0 without a backlog). Alert on this, not on readiness.
    pub relay_backlog_age_seconds: Gauge,
    /// `prism_relay_kafka_available`: 1 while the relay can publish, 0 while Kafka is down.
    pub relay_kafka_available: IntGauge,
    /// `prism_relay_producer_rebuilds_total`: producers replaced after a fatal error.
    pub relay_producer_rebuilds: IntCounter,
    /// `prism_relay_ack_seconds`: one publish's wait for Kafka's acknowledgement.
    pub relay_ack_seconds: Histogram,
    /// `prism_relay_delay_seconds`: from the event's time (command accepted) to Kafka's ack.
    pub relay_delay_seconds: Histogram,
    /// `prism_http_requests_total{route,status}`.
    pub http_requests: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let command_duration = HistogramVec::new(
            HistogramOpts::new(
                "prism_command_duration_seconds",
                "Time to handle a command, by command and outcome",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["command", "outcome"],
        )?;
        let conflicts = IntCounter::new(
            "prism_command_conflicts_total",
            "Appends that lost to another writer and were decided again",
        )?;
        let append_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "prism_command_append_batch_size",
                "Commits written together in one store round trip (group commit)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        let relay_published = IntCounter::new(
            "prism_relay_published_total",
            "Events acknowledged by Kafka",
        )?;
        let relay_sent = IntCounterVec::new(
            Opts::new(
                "prism_relay_sent_total",
                "Events acknowledged by Kafka, by the way the relay sent them",
            ),
            &["path"],
        )?;
        for path in SendPath::ALL {
            relay_sent.with_label_values(&[path.as_str()]);
        }
        let relay_backlog_events = IntGauge::new(
            "prism_relay_backlog_events",
            "Unpublished events found by the last relay sweep (one page at most)",
        )?;
        let relay_backlog_age_seconds = Gauge::new(
            "prism_relay_backlog_age_seconds",
            "Age of the oldest unpublished event at the last relay sweep",
        )?;
        let relay_kafka_available = IntGauge::new(
            "prism_relay_kafka_available",
            "1 while the relay can publish to Kafka, 0 while it cannot",
        )?;
        let relay_producer_rebuilds = IntCounter::new(
            "prism_relay_producer_rebuilds_total",
            "Relay producers rebuilt after a fatal error",
        )?;
        let relay_ack_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "prism_relay_ack_seconds",
                "Wait for Kafka's acknowledgement",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let relay_delay_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "prism_relay_delay_seconds",
                "From a command's acceptance to its event's acknowledgement by Kafka",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "prism_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )?;
        registry.register(Box::new(command_duration.clone()))?;
        registry.register(Box::new(conflicts.clone()))?;
        registry.register(Box::new(append_batch_size.clone()))?;
        registry.register(Box::new(relay_published.clone()))?;
        registry.register(Box::new(relay_sent.clone()))?;
        registry.register(Box::new(relay_backlog_events.clone()))?;
        registry.register(Box::new(relay_backlog_age_seconds.clone()))?;
        registry.register(Box::new(relay_kafka_available.clone()))?;
        registry.register(Box::new(relay_producer_rebuilds.clone()))?;
        registry.register(Box::new(relay_ack_seconds.clone()))?;
        registry.register(Box::new(relay_delay_seconds.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        Ok(Self {
            registry,
            command_duration,
            conflicts,
            append_batch_size,
            relay_published,
            relay_sent,
            relay_backlog_events,
            relay_backlog_age_seconds,
            relay_kafka_available,
            relay_producer_rebuilds,
            relay_ack_seconds,
            relay_delay_seconds,
            http_requests,
        })
    }
}

/// How the relay sent an event to Kafka (the `path` of `prism_relay_sent_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPath {
    Fresh,
    Predecessor,
    Sweep,
}

impl SendPath {
    pub const ALL: [Self; 3] = [Self::Fresh, Self::Predecessor, Self::Sweep];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Predecessor => "predecessor",
            Self::Sweep => "sweep",
        }
    }
}
