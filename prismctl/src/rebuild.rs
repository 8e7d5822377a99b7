//! `prismctl rebuild ledger`: builds a fresh copy of the ledger read model beside the live
//! one, switches the query API to it once it has caught up, and keeps the old copy until
//! `--drop-old`.
//!
//! 1. A new generation (database `<ledger.database>_g<N>`, state `building`) is created.
//! 2. It is filled from the start of the topic when Kafka still holds every event (each
//!    partition's low watermark is 0), otherwise from the event store first. Events the
//!    store gave are skipped later as duplicates (by account version), so the store fill
//!    never needs a Kafka position.
//! 3. The projector runtime (consumer group `<ledger.group_id>-rebuild-g<N>`, so the live
//!    projector keeps its partitions) follows the topic until every partition is within
//!    `--max-lag` records of its end *and* at or past the live copy's position, so the
//!    switch never answers with older data than the copy it replaces.
//! 4. The generation is promoted in one transaction: the query API of every `prism-ledger`
//!    serves it within `ledger.generation_poll_ms`, and their projectors move to it,
//!    resuming from the positions stored in it. Until they have, this command keeps it
//!    current; two writers on one partition are safe (the position fence).
//!
//! Commands are never blocked: only the read side is involved.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prism_events::Envelope;
use prism_ledger::sink::MySqlSink;
use prism_ledger::store::{partition_positions, Generation, Ledger};
use prism_platform::config::Config;
use prism_projector::{AccountVersion, Batch, Runtime, Sink, SinkError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use uuid::Uuid;

/// The read models `rebuild` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    Ledger,
}

/// Where the new copy's history comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Kafka when it still holds every event, the event store otherwise.
    Auto,
    /// The topic from its first offset.
    Kafka,
    /// The event store, then the topic for what arrived meanwhile.
    Store,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The read model to rebuild.
    #[arg(value_enum)]
    model: Model,
    /// Where the history comes from.
    #[arg(long, value_enum, default_value_t = Source::Auto)]
    from: Source,
    /// Drop the copies this and earlier rebuilds replaced, once the new one is live.
    #[arg(long)]
    drop_old: bool,
    /// Caught up: every partition within this many records of its end.
    #[arg(long, value_name = "RECORDS", default_value_t = 100)]
    max_lag: u64,
    /// After the switch, keep the new copy current for at most this long while the live
    /// projectors move to it (they do within `ledger.generation_poll_ms` plus a group join).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    handover_timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// How [`rebuild_ledger`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub from: Source,
    pub drop_old: bool,
    pub max_lag: u64,
    pub handover_timeout: Duration,
    /// Draw progress bars on stderr (only when it is a terminal).
    pub progress: bool,
}

/// What a rebuild did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generation: u32,
    pub database: String,
    pub previous: Option<u32>,
    /// `kafka` or `store` (what `auto` chose).
    pub source: Source,
    /// Events folded from the event store (0 from Kafka).
    pub store_events: u64,
    /// Records the runtime handled from the topic.
    pub kafka_records: u64,
    pub seconds: f64,
    /// Every partition's position in the new copy was written by the live projector
    /// before this command stopped.
    pub handed_over: bool,
    pub dropped: Vec<String>,
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    let Model::Ledger = args.model;
    let options = Options {
        from: args.from,
        drop_old: args.drop_old,
        max_lag: args.max_lag,
        handover_timeout: Duration::from_secs(args.handover_timeout),
        progress: !args.json,
    };
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match rebuild_ledger(config, &options, interrupted).await {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("prismctl rebuild ledger: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

fn print_report(r: &Report) {
    let source = match r.source {
        Source::Store => "the event store, then Kafka",
        _ => "Kafka, from the start of the topic",
    };
    println!(
        "generation {} ({}) is live (was {}); built from {source}",
        r.generation,
        r.database,
        r.previous
            .map_or_else(|| "none".to_owned(), |p| p.to_string())
    );
    println!(
        "  {} events from the store, {} records from Kafka, {:.1} s",
        r.store_events, r.kafka_records, r.seconds
    );
    if r.handed_over {
        println!("  the live prism-ledger now writes the new copy");
    } else {
        println!(
            "  no running prism-ledger took the new copy over yet; it resumes from the new copy's stored positions when it (re)starts"
        );
    }
    if r.dropped.is_empty() {
        if r.previous.is_some() {
            println!("  the previous copy is kept (retired); `prismctl rebuild ledger --drop-old` drops it");
        }
    } else {
        println!("  dropped: {}", r.dropped.join(", "));
    }
}

/// Rebuilds the ledger; `interrupted` resolving abandons the new copy (the live one is
/// untouched) and returns an error.
pub async fn rebuild_ledger(
    config: &Config,
    options: &Options,
    interrupted: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let ledger = Ledger::open(&config.mysql, &config.ledger)
        .await
        .context("opening the ledger databases (is MySQL up? `dev/stack up`)")?;
    let previous = ledger.live_number().await?;
    let generation = ledger.create_next().await?;
    let number = generation.number;
    let bars = Bars::new(options.progress);
    bars.note(&format!(
        "building generation {number} in database {} beside the live one ({})",
        generation.database,
        previous.map_or_else(|| "none".to_owned(), |p| format!("generation {p}"))
    ));

    let mut state = Build {
        config,
        options,
        ledger: &ledger,
        generation: generation.clone(),
        bars,
        running: None,
        report: Report {
            generation: number,
            database: generation.database.clone(),
            previous,
            source: options.from,
            store_events: 0,
            kafka_records: 0,
            seconds: 0.0,
            handed_over: false,
            dropped: Vec::new(),
        },
    };
    let outcome = tokio::select! {
        result = state.build() => result,
        () = interrupted => Err(anyhow::anyhow!("interrupted")),
    };
    if let Some(running) = state.running.take() {
        running.shut_down().await;
    }
    match outcome {
        Ok(()) => {
            let mut report = state.report;
            if options.drop_old {
                report.dropped = ledger.drop_retired().await?;
            }
            report.seconds = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => {
            // Not yet promoted (promotion is the last fallible step that matters): drop it.
            if ledger.live_number().await.ok().flatten() != Some(number) {
                if let Err(drop_error) = ledger.abandon(number).await {
                    tracing::warn!(error = %drop_error, "dropping the abandoned copy");
                }
                return Err(e.context(format!(
                    "rebuild abandoned; generation {number} dropped, the live copy is unchanged"
                )));
            }
            Err(e)
        }
    }
}

struct Build<'a> {
    config: &'a Config,
    options: &'a Options,
    ledger: &'a Ledger,
    generation: Generation,
    bars: Bars,
    running: Option<prism_projector::Running>,
    report: Report,
}

impl Build<'_> {
    async fn build(&mut self) -> anyhow::Result<()> {
        let watermarks = watermarks(self.config).await?;
        let complete = watermarks.iter().all(|(_, low, _)| *low == 0);
        let source = match self.options.from {
            Source::Auto if complete => Source::Kafka,
            Source::Auto => Source::Store,
            other => other,
        };
        if source == Source::Kafka && !complete {
            anyhow::bail!(
                "Kafka no longer holds the oldest events of {} (retention moved a partition's start); use --from store",
                self.config.kafka.topic
            );
        }
        self.report.source = source;
        if source == Source::Store {
            self.fill_from_store().await?;
        }
        self.follow_topic(&watermarks).await?;
        self.ledger.promote(self.generation.number).await?;
        self.bars.note(&format!(
            "generation {} is live: the query API switches within {} ms",
            self.generation.number, self.config.ledger.generation_poll_ms
        ));
        self.hand_over().await
    }

    /// Folds every event of the store into the new copy, in store order.
    async fn fill_from_store(&mut self) -> anyhow::Result<()> {
        let store = prism_command::app::open_store(self.config)
            .await
            .context("opening the event store")?;
        let sink = MySqlSink::new(self.generation.clone());
        let bar = self.bars.counter("event store");
        let chunk = self.config.projector.batch_max_events.max(1);
        let mut after = None;
        loop {
            let page = store
                .read_all(after.as_ref(), 10_000)
                .await
                .with_context(|| format!("reading the {} event store", store.backend()))?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let events: Vec<Envelope> = page.into_iter().map(|(_, e)| e).collect();
            for part in events.chunks(chunk) {
                self.apply(&sink, part.to_vec()).await?;
                self.report.store_events += part.len() as u64;
                bar.inc(part.len() as u64);
            }
        }
        bar.finish_and_clear();
        self.bars.note(&format!(
            "folded {} events from the {} event store",
            self.report.store_events,
            store.backend()
        ));
        Ok(())
    }

    /// Writes one chunk of store events (no Kafka position), retrying transient errors; an
    /// event the fold rejects is reported and left out, as the projector would dead-letter it.
    async fn apply(&self, sink: &MySqlSink, mut events: Vec<Envelope>) -> anyhow::Result<()> {
        let mut attempt = 0_u32;
        loop {
            let mut last: std::collections::HashMap<Uuid, AccountVersion> = Default::default();
            for e in &events {
                last.insert(
                    e.account_id.0,
                    AccountVersion {
                        account_id: e.account_id.0,
                        version: e.account_version,
                        event_id: e.id,
                    },
                );
            }
            let batch = Batch {
                events: events.clone(),
                versions: last.into_values().collect(),
                position: None,
            };
            match sink.apply(&batch).await {
                Ok(()) => return Ok(()),
                Err(SinkError::Rejected { index, reason }) if index < events.len() => {
                    let e = events.remove(index);
                    self.bars.note(&format!(
                        "left out event {} (account {} version {}): {reason}",
                        e.id, e.account_id, e.account_version
                    ));
                }
                Err(e) if attempt < 10 => {
                    tracing::warn!(error = %e, attempt, "writing the new copy; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                    attempt += 1;
                }
                Err(e) => return Err(anyhow::anyhow!("writing the new copy: {e}")),
            }
        }
    }

    /// Runs the projector runtime on the new copy until every partition is caught up.
    async fn follow_topic(&mut self, watermarks: &[(i32, i64, i64)]) -> anyhow::Result<()> {
        let mut projector = self.config.projector.clone();
        projector.lag_interval_ms = projector.lag_interval_ms.min(500);
        let registry = prometheus::Registry::new();
        let shared = prism_projector::Shared::new(&registry, prism_ledger::app::NAME, &projector)?;
        let mut projection = prism_ledger::app::projection(self.config);
        projection.group_id = format!(
            "{}-rebuild-g{}",
            self.config.ledger.group_id, self.generation.number
        );
        let sink: Arc<dyn Sink> = Arc::new(MySqlSink::new(self.generation.clone()));
        self.running = Some(
            Runtime::start(
                projection,
                &self.config.kafka,
                &projector,
                sink,
                shared.clone(),
            )
            .await
            .context("starting the projector runtime")?,
        );
        let partitions = watermarks.len();
        let total: i64 = watermarks.iter().map(|(_, low, high)| high - low).sum();
        let bar = self.bars.gauge("kafka", total.max(0) as u64);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let report = shared.health.report();
            let mut done = 0_i64;
            let mut end = 0_i64;
            let mut measured = 0;
            let mut worst = 0_i64;
            for (partition, p) in &report.partitions {
                let low = watermarks
                    .iter()
                    .find(|(w, _, _)| w == partition)
                    .map_or(0, |(_, low, _)| *low);
                let high = p.end_offset.unwrap_or(low);
                let next = p.stored_offset.map_or(low, |s| s + 1);
                done += (next - low).max(0);
                end += (high - low).max(0);
                if let Some(lag) = p.lag {
                    measured += 1;
                    worst = worst.max(lag);
                }
            }
            bar.set_length(end.max(total).max(0) as u64);
            bar.set_position(done.max(0) as u64);
            self.report.kafka_records = done.max(0) as u64;
            if measured == partitions
                && worst <= self.options.max_lag as i64
                && self.not_behind_live(&report).await?
            {
                break;
            }
        }
        bar.finish_and_clear();
        self.bars.note(&format!(
            "caught up with the topic ({} records handled)",
            self.report.kafka_records
        ));
        Ok(())
    }

    /// Whether the new copy has reached, on every partition, the position of the copy the
    /// query API serves now, so that switching never shows an older answer than before.
    async fn not_behind_live(
        &self,
        report: &prism_projector::HealthReport,
    ) -> anyhow::Result<bool> {
        let Some(live) = self.report.previous else {
            return Ok(true);
        };
        let live = self.ledger.generation(live).await?;
        let positions = partition_positions(&live.pool)
            .await
            .context("reading the live copy's positions")?;
        Ok(positions.iter().all(|live| {
            report
                .partitions
                .get(&live.partition)
                .and_then(|p| p.stored_offset)
                .is_some_and(|ours| ours >= live.offset)
        }))
    }

    /// Keeps the new copy current until a live projector writes it: the live projectors
    /// move to a promoted copy together (each restarts its runtime on it), so the first
    /// position they store there means they have taken over. Until this command stops, both
    /// may write a partition; the position fence makes the second writer of a batch re-read
    /// the position and skip what the first one stored.
    async fn hand_over(&mut self) -> anyhow::Result<()> {
        let live_writer = format!("{}/", self.config.ledger.group_id);
        let deadline = Instant::now() + self.options.handover_timeout;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let rows = partition_positions(&self.generation.pool)
                .await
                .context("reading the new copy's positions")?;
            if rows.iter().any(|r| r.writer.starts_with(&live_writer)) {
                self.report.handed_over = true;
                self.bars
                    .note("the live projector writes the new copy; stopping");
                return Ok(());
            }
        }
        Ok(())
    }
}

/// `(partition, low, high)` of every partition of the topic.
async fn watermarks(config: &Config) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let kafka = config.kafka.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let client: BaseConsumer = prism_platform::clients::kafka_client_config(&kafka)
            .create()
            .context("creating a Kafka client")?;
        let timeout = Duration::from_millis(kafka.request_timeout_ms);
        let metadata = client
            .fetch_metadata(Some(&kafka.topic), timeout)
            .with_context(|| format!("reading the metadata of {} (is Kafka up?)", kafka.topic))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            anyhow::bail!("topic {} does not exist", kafka.topic);
        }
        partitions
            .into_iter()
            .map(|p| {
                let (low, high) = client
                    .fetch_watermarks(&kafka.topic, p, timeout)
                    .with_context(|| format!("reading the offsets of partition {p}"))?;
                Ok((p, low, high))
            })
            .collect()
    })
    .await
    .context("reading watermarks")?
}

/// Progress bars on stderr, drawn only when it is a terminal; notes go above them.
struct Bars {
    show: bool,
}

impl Bars {
    fn new(show: bool) -> Self {
        Self { show }
    }

    fn note(&self, text: &str) {
        if self.show {
            eprintln!("{text}");
        }
    }

    fn target(&self) -> ProgressDrawTarget {
        if self.show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        }
    }

    fn counter(&self, what: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(None, self.target());
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>12} {spinner} {human_pos} events  {per_sec}  {elapsed}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    fn gauge(&self, what: &str, total: u64) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(total), self.target());
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {human_pos}/{human_len} records  {per_sec}  ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}
