//! The projector kit: everything a projector needs except its fold, its store and its
//! query endpoints. A projector is a pure fold + a [`Sink`] + its [`copies::Copies`] + a
//! query router; [`app::run`] does the rest. See `ARCHITECTURE.md` ("How to add a
//! projector") for the steps and the invariants.
//!
//! # Layout
//! - [`api`]: the query-API kit: parameters that name the bad field, signed cursors,
//!   consistency-token waits, `/openapi.json`, the 404 problem.
//! - [`app`]: the process shell (`Projector`, `run`, `main`): live copy, runtime restarts
//!   and copy switching, ops endpoints, clean shutdown.
//! - [`Runtime`] (`runtime.rs`, `worker.rs`, [`plan`], [`record`], [`dlq`]): the Kafka
//!   consumer group `prism-<name>`, per-partition ordered batches with backpressure,
//!   resuming from the sink's stored position, duplicate and gap detection by account
//!   version, retries with [`backoff`], dead letters, offset commits, a clean stop.
//! - [`fold`]: the pure part of a projector (`Fold`), runnable without a store.
//! - [`sink`]: the contract between the runtime and a read model's store.
//! - [`checkpoint`]: positions, versions and last errors in the store, transactional or
//!   idempotent by version.
//! - [`copies`]: blue/green copies of a read model, the live copy a process serves.
//! - [`consistency`]: read-your-writes waits for query APIs.
//! - [`health`], [`metrics`], [`serve`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`verify`]: comparing a read model with a fold of the event store.
//! - `testing` (feature `testing`): the sink contract suite, the in-memory reference sink
//!   and a Kafka test environment.

pub mod api;
pub mod app;
mod bounded;
pub mod checkpoint;
pub mod consistency;
pub mod copies;
pub mod dlq;
pub mod fold;
pub mod group_lag;
pub mod health;
pub mod metrics;
pub mod plan;
pub mod record;
mod runtime;
pub mod serve;
pub mod sink;
#[cfg(feature = "testing")]
pub mod testing;
pub mod verify;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prism_platform::config::{KafkaConfig, ProjectorConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use health::{Health, HealthReport};
pub use metrics::Metrics;
pub use sink::{AccountVersion, Batch, PositionUpdate, Sink, SinkError, StoredPosition};

/// What the runtime needs to know about one projector.
#[derive(Debug, Clone)]
pub struct Projection {
    /// Short name: `ledger`, `search`… (dead-letter topic suffix, metric label).
    pub name: String,
    /// Kafka consumer group; instances with the same group share the partitions.
    pub group_id: String,
    /// Topic to consume (`account-events`).
    pub topic: String,
}

/// Settings every partition worker reads.
#[derive(Debug)]
pub(crate) struct Settings {
    pub topic: String,
    pub config: ProjectorConfig,
    /// Written into the sink's position rows: `<group>/<host>/<pid>`.
    pub writer: String,
    pub decode: Decode,
}

/// How a consumed record becomes an event: the event contract this build knows. Every
/// projector uses [`record::Record::decode`]; a newer build knows more types or schema
/// versions, which is what its tests stand in for.
pub type Decode = fn(&record::Record) -> plan::Decoded;

/// The parts of a projector process that outlive one run of the runtime (a projector that
/// switches to a rebuilt copy of its read model restarts the runtime, not the process).
#[derive(Debug, Clone)]
pub struct Shared {
    pub metrics: Metrics,
    pub health: Health,
    /// Bumped after every stored batch: query handlers waiting for a version wake on it.
    pub progress: watch::Sender<u64>,
    /// The event contract the workers decode with ([`record::Record::decode`]).
    pub decode: Decode,
}

impl Shared {
    pub fn new(
        registry: &prometheus::Registry,
        projector: &str,
        config: &ProjectorConfig,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            metrics: Metrics::new(registry, projector).context("registering projector metrics")?,
            health: Health::new(config.ready_max_lag),
            progress: watch::channel(0).0,
            decode: record::Record::decode,
        })
    }
}

/// A running projector runtime.
#[derive(Debug)]
pub struct Running {
    shutdown: CancellationToken,
    done: oneshot::Receiver<()>,
}

impl Running {
    /// Asks the runtime to stop: workers finish their batch in hand, positions are stored
    /// and committed, the consumer leaves the group.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the runtime has stopped (after [`Running::stop`]).
    pub async fn stopped(self) {
        let _ = self.done.await;
    }

    /// Stops and waits.
    pub async fn shut_down(self) {
        self.stop();
        self.stopped().await;
    }
}

/// How long a projector's fetch request may wait on the broker for new records.
pub const FETCH_WAIT_MAX_MS: u64 = 100;

/// How long a partition's next fetch is put off when the consumer's local queue is full
/// (`queued.max.messages.kbytes`). librdkafka's default (1000 ms) stalled a catching-up
/// partition for a whole second each time its queue filled: the workers drain 16 MB in
/// well under that.
pub const FETCH_QUEUE_BACKOFF_MS: u64 = 20;

/// The consumer settings of every projector: offsets are stored by the sink (Kafka's are
/// committed by hand, for lag tools), cooperative rebalancing, a bounded prefetch. The
/// benchmark's raw-consume ceiling uses the same.
pub fn consumer_config(
    kafka: &KafkaConfig,
    group_id: &str,
    config: &ProjectorConfig,
) -> rdkafka::ClientConfig {
    let mut client = prism_platform::clients::kafka_client_config(kafka);
    client
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string())
        // A fetch waits at most this long for new records; the next fetch (a resumed
        // partition's included) waits for it. librdkafka's default (500 ms) held every
        // resumed partition up to half a second whenever another partition was caught up.
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
        .set("enable.partition.eof", "false");
    // Pass-through settings win over ours (set again last).
    for (key, value) in &kafka.client {
        client.set(key, value);
    }
    client
}

/// The one back-off of the runtime and the process shell: `retry_backoff_ms` doubled per
/// attempt up to `retry_backoff_max_ms` (attempt 0 waits `retry_backoff_ms`).
pub fn backoff(config: &ProjectorConfig, attempt: u32) -> Duration {
    let base = config.retry_backoff_ms.max(1);
    let max = config.retry_backoff_max_ms.max(base);
    Duration::from_millis(base.saturating_mul(1 << attempt.min(16)).min(max))
}

/// The runtime's entry point.
#[derive(Debug)]
pub struct Runtime;

impl Runtime {
    /// Joins the consumer group and starts projecting into `sink`. Must be called inside a
    /// multi-threaded tokio runtime.
    pub async fn start(
        projection: Projection,
        kafka: &KafkaConfig,
        config: &ProjectorConfig,
        sink: Arc<dyn Sink>,
        shared: Shared,
    ) -> anyhow::Result<Running> {
        prism_platform::clients::ensure_topic(kafka, &projection.topic, kafka.topic_partitions)
            .await
            .with_context(|| format!("creating the Kafka topic {}", projection.topic))?;
        let dlq = dlq::DeadLetters::open(
            kafka,
            &projection.name,
            &projection.topic,
            &config.dlq_suffix,
        )
        .await
        .context("opening the dead-letter topic")?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let settings = Arc::new(Settings {
            topic: projection.topic.clone(),
            config: config.clone(),
            writer: format!("{}/{}/{}", projection.group_id, host, std::process::id()),
            decode: shared.decode,
        });
        let stop = CancellationToken::new();
        let state = Arc::new(runtime::Shared::new(
            settings,
            tokio::runtime::Handle::current(),
            sink,
            dlq,
            shared,
            stop.clone(),
        ));

        let consumer: BaseConsumer<runtime::Context> =
            consumer_config(kafka, &projection.group_id, config)
                .create_with_context(runtime::Context {
                    shared: Arc::clone(&state),
                })
                .context("creating the Kafka consumer")?;
        consumer
            .subscribe(&[&projection.topic])
            .with_context(|| format!("subscribing to {}", projection.topic))?;
        // It reads a partition's first waiting record now and then, from outside the group.
        let lag_config = group_lag::reader_config(kafka, &projection.group_id);
        let connect_lag = move || -> anyhow::Result<BaseConsumer> {
            lag_config.create().context("creating the Kafka lag client")
        };
        // Fail at start, not in the thread, when the configuration cannot make a client.
        drop(connect_lag()?);

        let (done_tx, done_rx) = oneshot::channel();
        let poll_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name(format!("{}-consumer", projection.name))
            .spawn(move || {
                runtime::poll(consumer, poll_state);
                let _ = done_tx.send(());
            })
            .context("starting the consumer thread")?;
        let lag_state = Arc::clone(&state);
        let interval = Duration::from_millis(config.lag_interval_ms.max(100));
        std::thread::Builder::new()
            .name(format!("{}-lag", projection.name))
            .spawn(move || runtime::measure_lag(connect_lag, lag_state, interval))
            .context("starting the lag thread")?;
        tracing::info!(
            projector = %projection.name,
            group = %projection.group_id,
            topic = %projection.topic,
            "projector runtime started"
        );
        Ok(Running {
            shutdown: stop,
            done: done_rx,
        })
    }
}
