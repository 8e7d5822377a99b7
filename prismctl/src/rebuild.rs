//! `prismctl rebuild <model>`: builds a fresh copy of a read model beside the live one,
//! switches the query API to it once it has caught up, and keeps the old copy until
//! `--drop-old`. Every read model is rebuilt the same way, through the projector kit's
//! [`CopiesAdmin`] and its sink: nothing here knows MySQL or Elasticsearch.
//!
//! 1. A new copy (state `building`: the ledger's database `<ledger.database>_g<N>`, search's
//!    indices `<prefix>-*-g<N>`) is created.
//! 2. It is filled from the start of the topic when Kafka still holds every event (each
//!    partition's low watermark is 0), otherwise from the event store first, up to its tail.
//!    The store fill checks every account's version: commands keep landing while it pages,
//!    and a commit that lands behind its page is read from the account's stream when a later
//!    version shows it is missing, so no version is ever skipped. Events the store gave are
//!    skipped later as duplicates (by account version), so the store fill never needs a
//!    Kafka position, and whatever it did not reach the topic brings in order.
//! 3. The projector runtime (consumer group `<group_id>-rebuild-g<N>`, so the live
//!    projector keeps its partitions) follows the topic until every partition is within
//!    `--max-lag` records of its end *and* at or past the live copy's position, so the
//!    switch never answers with older data than the copy it replaces.
//! 4. Every running instance (as it reports itself to the copies' control store, every
//!    poll interval) opens the copy being built on its own; the switch is
//!    refused (the copy dropped) unless all of them have within `--handover-timeout`.
//! 5. The copy is promoted in one atomic step: the query API of every instance serves it
//!    within its poll interval, and their projectors move to it,
//!    resuming from the positions stored in it. Until every instance says it writes the new
//!    copy, this command keeps it current (two writers on one partition are safe: the
//!    position fence); then its own projector stops, and it waits until every partition
//!    has been written there by a live instance or has nothing left to handle (stored at
//!    the topic's end, or no record to read: a partition no account hashed to yet). An
//!    instance that still cannot open the live copy stops projecting rather than write the
//!    retired one, so its partitions go to the others.
//!
//! Commands are never blocked: only the read side is involved.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prism_events::Envelope;
use prism_platform::config::{Config, KafkaConfig};
use prism_projector::copies::{InstanceRow, PartitionStatus};
use prism_projector::{AccountVersion, Batch, Projection, Runtime, Sink, SinkError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use uuid::Uuid;

pub use crate::models::Model;
use crate::models::ReadModel;

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
    /// Events per event store page of a fill from the store (FerretDB reads the whole
    /// collection for every page: keep it big there).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STORE_PAGE,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    store_page_size: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// How [`rebuild`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub from: Source,
    pub drop_old: bool,
    pub max_lag: u64,
    pub handover_timeout: Duration,
    /// Events per `read_all` page of a fill from the store.
    pub store_page_size: usize,
    /// Draw progress bars on stderr (only when it is a terminal).
    pub progress: bool,
}

/// What a rebuild did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generation: u32,
    /// Where the new copy lives (database, index names).
    pub database: String,
    pub previous: Option<u32>,
    /// `kafka` or `store` (what `auto` chose).
    pub source: Source,
    /// Events folded from the event store (0 from Kafka).
    pub store_events: u64,
    /// Times the store fill met a version that skipped one (a commit that landed behind
    /// its page) and read the account's missing versions from the store.
    pub store_reread: u64,
    /// Records the runtime handled from the topic.
    pub kafka_records: u64,
    pub seconds: f64,
    /// Every partition's position in the new copy was written by the live projector
    /// before this command stopped.
    pub handed_over: bool,
    /// What the handover still waited for when `--handover-timeout` ran out.
    pub waiting_for: Option<String>,
    pub dropped: Vec<String>,
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    let options = Options {
        from: args.from,
        drop_old: args.drop_old,
        max_lag: args.max_lag,
        handover_timeout: Duration::from_secs(args.handover_timeout),
        store_page_size: usize::try_from(args.store_page_size).unwrap_or(10_000),
        progress: !args.json,
    };
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match rebuild(config, args.model, &options, interrupted).await {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let name = args.model.settings(config).map(|s| s.name).unwrap_or("?");
                print_report(&report, name);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let name = args.model.settings(config).map(|s| s.name).unwrap_or("?");
            eprintln!("prismctl rebuild {name}: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

fn print_report(r: &Report, model: &'static str) {
    let source = match r.source {
        Source::Store => "the event store, then Kafka",
        _ => "Kafka, from the start of the topic",
    };
    println!(
        "{model}: copy {} ({}) is live (was {}); built from {source}",
        r.generation,
        r.database,
        r.previous
            .map_or_else(|| "none".to_owned(), |p| p.to_string())
    );
    println!(
        "  {} events from the store ({} late commits re-read), {} records from Kafka, {:.1} s",
        r.store_events, r.store_reread, r.kafka_records, r.seconds
    );
    if r.handed_over {
        println!("  the live prism-{model} now writes the new copy");
    } else {
        println!(
            "  no running prism-{model} took the new copy over yet ({}); it resumes from the new copy's stored positions when it (re)starts",
            r.waiting_for.as_deref().unwrap_or("none running")
        );
    }
    if r.dropped.is_empty() {
        if r.previous.is_some() {
            println!("  the previous copy is kept (retired); `prismctl rebuild {model} --drop-old` drops it");
        }
    } else {
        println!("  dropped: {}", r.dropped.join(", "));
    }
}

/// Rebuilds the ledger (what the tests call).
pub async fn rebuild_ledger(
    config: &Config,
    options: &Options,
    interrupted: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Report> {
    rebuild(config, Model::Ledger, options, interrupted).await
}

/// Rebuilds `model`; `interrupted` resolving abandons the new copy (the live one is
/// untouched) and returns an error.
pub async fn rebuild(
    config: &Config,
    model: Model,
    options: &Options,
    interrupted: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let read_model = model
        .open(config)
        .await
        .context("opening the read model (is the stack up? `dev/stack up`)")?;
    let copies = &read_model.copies;
    let previous = copies.live_number().await?;
    let created = copies.create_next().await?;
    let (number, name, sink) = (created.number, created.name, created.sink);
    let bars = Bars::new(options.progress);
    bars.note(&format!(
        "building copy {number} ({name}) of the {} read model beside the live one ({})",
        read_model.name(),
        previous.map_or_else(|| "none".to_owned(), |p| format!("copy {p}"))
    ));

    let mut state = Build {
        config,
        options,
        model: &read_model,
        number,
        sink,
        bars,
        running: None,
        report: Report {
            generation: number,
            database: name,
            previous,
            source: options.from,
            store_events: 0,
            store_reread: 0,
            kafka_records: 0,
            seconds: 0.0,
            handed_over: false,
            waiting_for: None,
            dropped: Vec::new(),
        },
        topic_ends: TopicEnds::new(config),
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
                report.dropped = copies.drop_retired().await?;
            }
            report.seconds = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => {
            // Not yet promoted (promotion is the last fallible step that matters): drop it.
            if copies.live_number().await.ok().flatten() != Some(number) {
                if let Err(drop_error) = copies.abandon(number).await {
                    tracing::warn!(error = %drop_error, "dropping the abandoned copy");
                }
                return Err(e.context(format!(
                    "rebuild abandoned; copy {number} dropped, the live copy is unchanged"
                )));
            }
            Err(e)
        }
    }
}

struct Build<'a> {
    config: &'a Config,
    options: &'a Options,
    model: &'a ReadModel,
    /// The copy being built, and its sink.
    number: u32,
    sink: Arc<dyn Sink>,
    bars: Bars,
    running: Option<prism_projector::Running>,
    report: Report,
    topic_ends: TopicEnds,
}

impl Build<'_> {
    async fn build(&mut self) -> anyhow::Result<()> {
        let watermarks = self.topic_ends.read().await?;
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
        self.every_instance_can_open().await?;
        self.model.copies.promote(self.number).await?;
        self.bars.note(&format!(
            "copy {} is live: the query API switches within {} ms",
            self.number,
            self.model.settings.copy_poll.as_millis()
        ));
        self.hand_over().await
    }

    /// Folds the event store into the new copy, every account's versions in order and none
    /// left out, up to the store's tail as the first page shorter than a full one finds it.
    ///
    /// `read_all`'s order is not commit order while commands run: a commit's place in it is
    /// decided before it lands (MongoDB: the UUIDv7 minted before the insert; PostgreSQL: a
    /// sequence value drawn before the commit), so a page can pass a commit that lands
    /// behind it. [`FillPlan`] therefore checks each account's version: a version that skips
    /// one makes the fill read the account's missing versions from the store (`load`, which
    /// returns them in version order), and the late commit itself is then a duplicate. A
    /// commit passed with no later version of its account in the fill is simply not in the
    /// copy yet: the topic, followed next, brings it as that account's next version.
    async fn fill_from_store(&mut self) -> anyhow::Result<()> {
        let store = prism_command::app::open_store(self.config)
            .await
            .context("opening the event store")?;
        let sink = Arc::clone(&self.sink);
        let bar = self.bars.counter("event store");
        let chunk = self.model.settings.runtime.batch_max_events.max(1);
        let mut plan = FillPlan::default();
        let page_size = self.options.store_page_size.max(1);
        let mut after = None;
        loop {
            let page = store
                .read_all(after.as_ref(), page_size)
                .await
                .with_context(|| format!("reading the {} event store", store.backend()))?;
            let at_tail = page.len() < page_size;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let mut ready: Vec<Envelope> = Vec::with_capacity(page.len());
            for (_, event) in page {
                match plan.next(&event) {
                    Step::Apply => ready.push(event),
                    Step::Duplicate | Step::Quarantined => {}
                    Step::Gap { handled } => {
                        let account = event.account_id;
                        let missing = store.load(account, handled).await.with_context(|| {
                            format!("reading account {account}'s versions after {handled} from the event store")
                        })?;
                        let through = event.account_version;
                        for earlier in missing
                            .into_iter()
                            .take_while(|e| e.account_version <= through)
                        {
                            match plan.next(&earlier) {
                                Step::Apply => ready.push(earlier),
                                Step::Duplicate | Step::Quarantined => {}
                                Step::Gap { handled } => anyhow::bail!(
                                    "the event store has no version {} of account {account} \
                                     although it has version {through}",
                                    handled + 1
                                ),
                            }
                        }
                        if plan.handled(&account.0) < through {
                            anyhow::bail!(
                                "the event store did not return version {through} of account {account}"
                            );
                        }
                        self.report.store_reread += 1;
                    }
                }
            }
            for part in ready.chunks(chunk) {
                let written = self.apply(&sink, &mut plan, part.to_vec()).await?;
                self.report.store_events += written;
                bar.inc(part.len() as u64);
            }
            if at_tail {
                break;
            }
        }
        bar.finish_and_clear();
        self.bars.note(&format!(
            "folded {} events from the {} event store ({} accounts' late versions re-read)",
            self.report.store_events,
            store.backend(),
            self.report.store_reread
        ));
        Ok(())
    }

    /// Writes one chunk of store events (no Kafka position), retrying transient errors, and
    /// returns how many were written. An event the fold rejects is left out with every later
    /// event of its account (the fold would refuse them as a gap anyway): the topic brings
    /// them again and the runtime dead-letters them, as the live projector did.
    async fn apply(
        &self,
        sink: &Arc<dyn Sink>,
        plan: &mut FillPlan,
        mut events: Vec<Envelope>,
    ) -> anyhow::Result<u64> {
        // An account left out in an earlier chunk stays out.
        events.retain(|e| !plan.is_quarantined(&e.account_id.0));
        let mut attempt = 0_u32;
        loop {
            if events.is_empty() {
                return Ok(0);
            }
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
                // From the event store: no Kafka offsets.
                offsets: Vec::new(),
                position: None,
            };
            match sink.apply(&batch).await {
                Ok(()) => return Ok(events.len() as u64),
                Err(SinkError::Rejected { index, reason }) if index < events.len() => {
                    let e = &events[index];
                    let account = e.account_id.0;
                    self.bars.note(&format!(
                        "left out account {account} from version {} on (event {}): {reason}",
                        e.account_version, e.id
                    ));
                    plan.quarantine(account);
                    events = events
                        .into_iter()
                        .enumerate()
                        .filter(|(i, e)| *i < index || e.account_id.0 != account)
                        .map(|(_, e)| e)
                        .collect();
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
        let settings = &self.model.settings;
        let mut projector = settings.runtime.clone();
        projector.lag_interval_ms = projector.lag_interval_ms.min(500);
        let registry = prometheus::Registry::new();
        let shared = prism_projector::Shared::new(&registry, settings.name, &projector)?;
        let projection = Projection {
            name: settings.name.into(),
            group_id: format!("{}-rebuild-g{}", settings.group_id, self.number),
            topic: settings.kafka.topic.clone(),
        };
        self.running = Some(
            Runtime::start(
                projection,
                &settings.kafka,
                &projector,
                Arc::clone(&self.sink),
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
            if measured == partitions && worst <= self.options.max_lag as i64 {
                // A failed look at the live copy (a busy server) is asked again next round.
                match self.not_behind_live(&report).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => tracing::warn!("comparing with the live copy: {e:#}"),
                }
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
        let positions = self
            .model
            .copies
            .partitions(live)
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

    /// Refuses the switch unless every running instance (its report refreshed lately) has
    /// opened the new copy: an instance that could not would be left with a retired copy
    /// and nothing to project into. Waits up to `--handover-timeout` for them to probe it
    /// (they do every poll interval).
    async fn every_instance_can_open(&mut self) -> anyhow::Result<()> {
        let number = self.number;
        let binary = self.model.binary();
        let deadline = Instant::now() + self.options.handover_timeout;
        loop {
            let instances = match self.model.copies.instances(self.model.alive_window()).await {
                Ok(instances) => instances,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("reading the running {binary} instances: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let not_yet: Vec<&InstanceRow> = instances
                .iter()
                .filter(|i| i.can_open.is_none_or(|n| n < number) && i.writing != Some(number))
                .collect();
            if not_yet.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let why: Vec<String> = not_yet
                    .iter()
                    .map(|i| match &i.error {
                        Some(error) => format!("{}: {error}", i.instance),
                        None => format!("{}: has not opened it yet", i.instance),
                    })
                    .collect();
                anyhow::bail!(
                    "switch refused: not every {binary} can open copy {number} ({})",
                    why.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Keeps the new copy current until the live projectors have taken it over: every
    /// running instance says it writes the new copy (each restarts its runtime on a
    /// promoted copy). From then on this command's runtime stops (its batches finished,
    /// positions stored), so the instances no longer race it for each batch, and it waits
    /// until every partition holds a position a live projector wrote there or has nothing
    /// left to handle. While both run, both may write a partition; the position fence makes
    /// the second writer of a batch re-read the position and skip what the first one
    /// stored. An instance that cannot open the new copy stops projecting (it never writes
    /// the retired one), so its partitions go to the others.
    async fn hand_over(&mut self) -> anyhow::Result<()> {
        let number = self.number;
        let binary = self.model.binary();
        let live_writer = format!("{}/", self.model.settings.group_id);
        let deadline = Instant::now() + self.options.handover_timeout;
        let mut waiting_for = String::new();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // A failed look (a busy server) is taken again next round.
            let looked = async {
                let instances = self
                    .model
                    .copies
                    .instances(self.model.alive_window())
                    .await?;
                let rows = self
                    .model
                    .copies
                    .partitions(number)
                    .await
                    .context("reading the new copy's positions")?;
                anyhow::Ok((instances, rows))
            };
            let (instances, rows) = match looked.await {
                Ok(looked) => looked,
                Err(e) => {
                    tracing::warn!("watching the handover: {e:#}");
                    continue;
                }
            };
            let behind: Vec<String> = instances
                .iter()
                .filter(|i| i.writing != Some(number))
                .map(|i| match &i.error {
                    Some(error) => format!("{} ({error})", i.instance),
                    None => format!("{} (writes {:?})", i.instance, i.writing),
                })
                .collect();
            if instances.is_empty() {
                waiting_for = format!("no running {binary}");
                continue;
            }
            if !behind.is_empty() {
                waiting_for = behind.join(", ");
                continue;
            }
            if let Some(running) = self.running.take() {
                running.shut_down().await;
                self.bars.note(&format!(
                    "every {binary} writes the new copy; this command's projector stopped"
                ));
            }
            let ends = match self.topic_ends.read().await {
                Ok(ends) => ends,
                Err(e) => {
                    tracing::warn!("watching the handover: {e:#}");
                    continue;
                }
            };
            let untaken = untaken(&ends, &rows, &live_writer);
            if untaken.is_empty() {
                self.report.handed_over = true;
                self.report.waiting_for = None;
                self.bars
                    .note(&format!("every {binary} writes the new copy; stopping"));
                return Ok(());
            }
            waiting_for = format!(
                "partitions {} not yet written by a live {binary}",
                untaken.join(", ")
            );
        }
        self.bars.note(&format!(
            "handover not complete after {} s: waiting for {waiting_for}",
            self.options.handover_timeout.as_secs()
        ));
        self.report.waiting_for = Some(waiting_for);
        Ok(())
    }
}

/// The partitions a live projector has not taken over yet, given each partition's
/// `(partition, low, high)` watermarks: neither written by one (its writer starts with
/// `live_writer`) nor with nothing left to handle (stored at the topic's end, or no
/// position and no record to read: a partition no account hashed to yet, or one whose
/// records retention removed). Each comes with where it stands, so a handover that times
/// out says which writer last moved it and how far the topic is ahead.
fn untaken(ends: &[(i32, i64, i64)], rows: &[PartitionStatus], live_writer: &str) -> Vec<String> {
    ends.iter()
        .filter_map(|(partition, low, high)| {
            match rows.iter().find(|r| r.partition == *partition) {
                Some(r) if r.writer.starts_with(live_writer) || r.offset + 1 >= *high => None,
                Some(r) => Some(format!(
                    "{partition} (offset {} stored by {}, topic end {high})",
                    r.offset, r.writer
                )),
                None if high <= low => None,
                None => Some(format!(
                    "{partition} (no position, records {low}..{high} to handle)"
                )),
            }
        })
        .collect()
}

/// Events per `read_all` page of the store fill, unless `--store-page-size` says otherwise.
pub const DEFAULT_STORE_PAGE: u64 = 10_000;

/// What the store fill does with one event, given its account's handled version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The account's next version: fold it.
    Apply,
    /// Already folded (a late commit the fill re-read when it found the gap).
    Duplicate,
    /// More than one version ahead: the versions after `handled` must be read first.
    Gap { handled: u64 },
    /// The account had an event the fold refused: the topic brings the rest.
    Quarantined,
}

/// The store fill's per-account version check: each account's versions go to the fold
/// exactly once, in order, with none skipped, whatever order `read_all` gives them in.
#[derive(Debug, Default)]
struct FillPlan {
    /// Last version handed to the fold, per account.
    handled: std::collections::HashMap<Uuid, u64>,
    quarantined: std::collections::HashSet<Uuid>,
}

impl FillPlan {
    /// Decides `event`'s step; an [`Step::Apply`] counts it as handled.
    fn next(&mut self, event: &Envelope) -> Step {
        let account = event.account_id.0;
        if self.quarantined.contains(&account) {
            return Step::Quarantined;
        }
        let handled = self.handled(&account);
        let version = event.account_version;
        if version <= handled {
            Step::Duplicate
        } else if version == handled + 1 {
            self.handled.insert(account, version);
            Step::Apply
        } else {
            Step::Gap { handled }
        }
    }

    /// Last version of `account` handed to the fold (0: none).
    fn handled(&self, account: &Uuid) -> u64 {
        self.handled.get(account).copied().unwrap_or(0)
    }

    fn quarantine(&mut self, account: Uuid) {
        self.quarantined.insert(account);
    }

    fn is_quarantined(&self, account: &Uuid) -> bool {
        self.quarantined.contains(account)
    }
}

/// Reads `(partition, low, high)` of every partition of the topic, on one Kafka client
/// made at the first read and kept (a handover reads them every round, for up to its
/// whole timeout).
struct TopicEnds {
    kafka: KafkaConfig,
    client: Option<Arc<BaseConsumer>>,
}

impl TopicEnds {
    fn new(config: &Config) -> Self {
        Self {
            kafka: config.kafka.clone(),
            client: None,
        }
    }

    async fn read(&mut self) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let client = match &self.client {
            Some(client) => Arc::clone(client),
            None => {
                let client: BaseConsumer =
                    prism_platform::clients::kafka_client_config(&self.kafka)
                        .create()
                        .context("creating a Kafka client")?;
                Arc::clone(self.client.insert(Arc::new(client)))
            }
        };
        let topic = self.kafka.topic.clone();
        let timeout = Duration::from_millis(self.kafka.request_timeout_ms);
        tokio::task::spawn_blocking(move || watermarks(&client, &topic, timeout))
            .await
            .context("reading watermarks")?
    }
}

/// `(partition, low, high)` of every partition of `topic`.
fn watermarks(
    client: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of {topic} (is Kafka up?)"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} does not exist");
    }
    partitions
        .into_iter()
        .map(|p| {
            let (low, high) = client
                .fetch_watermarks(topic, p, timeout)
                .with_context(|| format!("reading the offsets of partition {p}"))?;
            Ok((p, low, high))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use prism_events::event::MoneyDeposited;
    use prism_events::{AccountEvent, AccountId};

    fn event(account: u128, version: u64) -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            source: "/prism/command".into(),
            account_id: AccountId(Uuid::from_u128(account)),
            time: Utc::now(),
            account_version: version,
            correlation_id: None,
            causation_id: None,
            event: AccountEvent::MoneyDeposited(MoneyDeposited {
                amount_minor: 1,
                description: None,
            }),
        }
    }

    fn position(partition: i32, offset: i64, writer: &str) -> PartitionStatus {
        PartitionStatus {
            partition,
            offset,
            event_id: None,
            event_time: None,
            writer: writer.into(),
            updated_at: Utc::now(),
            last_error: None,
            last_error_at: None,
        }
    }

    #[test]
    fn a_partition_is_handed_over_once_a_live_projector_wrote_it_or_nothing_is_left() {
        let ends = [
            (0, 0, 50),
            (1, 0, 80),
            (2, 0, 80),
            (3, 0, 10),
            // Never held a record.
            (4, 0, 0),
            // Retention removed every record it held.
            (5, 30, 30),
        ];
        let rows = [
            // Written by a live instance, behind the end: taken.
            position(0, 20, "prism-search/instance-a"),
            // The rebuild's writer, at the end: nothing left to hand over.
            position(1, 79, "prism-search-rebuild-g2/instance-r"),
            // The rebuild's writer, behind the end: still waiting, and the reason says so.
            position(2, 57, "prism-search-rebuild-g2/instance-r"),
        ];
        assert_eq!(
            untaken(&ends, &rows, "prism-search/"),
            vec![
                "2 (offset 57 stored by prism-search-rebuild-g2/instance-r, topic end 80)"
                    .to_owned(),
                "3 (no position, records 0..10 to handle)".to_owned(),
            ]
        );
    }

    #[test]
    fn versions_go_to_the_fold_in_order_and_a_skip_asks_for_the_missing_ones() {
        let mut plan = FillPlan::default();
        assert_eq!(plan.next(&event(1, 1)), Step::Apply);
        assert_eq!(plan.next(&event(2, 1)), Step::Apply);
        assert_eq!(plan.next(&event(1, 2)), Step::Apply);
        // Version 3 of account 1 landed behind the page: 4 comes first.
        assert_eq!(plan.next(&event(1, 4)), Step::Gap { handled: 2 });
        assert_eq!(plan.handled(&Uuid::from_u128(1)), 2);
        // The re-read brings 3 and 4; the late 3 in a later page is then a duplicate.
        assert_eq!(plan.next(&event(1, 3)), Step::Apply);
        assert_eq!(plan.next(&event(1, 4)), Step::Apply);
        assert_eq!(plan.next(&event(1, 3)), Step::Duplicate);
        // An account first seen past its opening is a gap from 0.
        assert_eq!(plan.next(&event(3, 2)), Step::Gap { handled: 0 });
    }

    #[test]
    fn an_account_the_fold_refused_takes_no_later_version_from_the_store() {
        let mut plan = FillPlan::default();
        assert_eq!(plan.next(&event(1, 1)), Step::Apply);
        plan.quarantine(Uuid::from_u128(1));
        assert_eq!(plan.next(&event(1, 2)), Step::Quarantined);
        assert_eq!(plan.next(&event(2, 1)), Step::Apply);
    }
}
