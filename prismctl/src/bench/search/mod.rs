//! `prismctl bench search`: how fast prism-search projects, how fast it answers analysts,
//! and how soon a command becomes searchable, all measured in one run on this machine.
//!
//! 1. **Projection rate next to the raw `_bulk` ceiling.** A fresh topic
//!    `bench-search-<id>` (`--partitions`) receives `--events` events of the seeded
//!    [`crate::traffic`] model (the same fill as `bench ledger`, not timed). Then:
//!    - *the raw ceiling*: the same events, grouped by the partition each account's records
//!      landed on, folded in memory ([`prism_search::fold::fold_batch`]) into the writes
//!      of batches of `--batch` events per partition (what the runtime hands the sink when
//!      it is behind), and written with [`EsSink::write_raw`](prism_search::sink::EsSink)
//!      (the sink's own document bulks and request sizes, no fence, no reads, no position)
//!      by one task per partition, all at once, into a fresh copy. Timed: the writes.
//!    - *the projector*: the kit's runtime ([`prism_projector::Runtime::start`]) in this
//!      process, with an `EsSink` on another fresh copy and a fresh consumer group, timed
//!      from its start until every partition's stored position reached the partition's end.
//!
//!    The ceiling runs before and after the projector (each into a copy of its own) and
//!    counts as both runs together, so a change in the machine's load weighs on both sides.
//!    Goal: projector ÷ ceiling ≥ 0.8.
//! 2. **Query latency.** The search API ([`prism_search::http::router`]) on a port-0
//!    listener in this process, over the projector's copy: `--query-clients` clients send
//!    `--queries` faceted free-text searches (`q` over merchants and holders, one or two
//!    filters, `facets=true`), closed loop, after a short unmeasured warm-up. Goal: p99 ≤
//!    100 ms.
//! 3. **Freshness.** prism-command and prism-search run in this process
//!    ([`crate::services`]) on an event store, topic, index prefix and group of their own;
//!    card payments are sent open loop at `--rate` for `--duration`; for each accepted
//!    command the time until its event id is *searchable*: one shared poller sends an
//!    `ids` search on the transactions alias every [`freshness::POLL`] for every pending id
//!    (a search, not a realtime GET, so the index's refresh interval counts). Goal: p99 ≤
//!    1.5 s.
//!
//! Every phase reports how busy the machine's CPU was. Everything created (topics, groups,
//! indices, the event store) is removed at the end, on error and on Ctrl-C too, unless
//! `--keep`. Exit codes: 0 measured (whether or not the goals are met), 1 a phase failed,
//! 2 a bad invocation.
//!
//! # Files
//! This file: arguments, names, the order of the phases, cleanup and the report;
//! `projection` phase 1, `queries` phase 2, `freshness` phase 3.

mod freshness;
mod projection;
mod queries;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use backon::{ExponentialBuilder, Retryable};
use prism_platform::Config;
use prism_projector::app::Projector as _;
use prism_search::app::{SearchProjector, NAME};
use prism_search::copies::SearchCopies;
use serde::Serialize;

use super::ledger::figures::Rate;
use super::ledger::kafka::{
    create_topic, delete_groups, delete_topics, end_offsets, produce_workload,
};
use crate::loadgen::{parse_duration, Latency};

/// The goals of the issue.
pub const RATIO_GOAL: f64 = 0.8;
pub const QUERY_P99_GOAL_MS: f64 = 100.0;
pub const FRESHNESS_P99_GOAL_MS: f64 = 1_500.0;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events projected in phase 1, the accounts' openings included.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Accounts the events are spread over (each opened before its other events).
    #[arg(long, default_value_t = 20_000)]
    accounts: u64,
    /// Partitions of the bench topic (one runtime worker and one ceiling writer each).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Seed of the workload; the same seed produces the same events (ids included).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Most events per batch (default: `batch_max_events` of `[search.projector]`, or of
    /// `[projector]`).
    #[arg(long)]
    batch: Option<usize>,
    /// Concurrent clients of the query phase.
    #[arg(long, default_value_t = 8)]
    query_clients: usize,
    /// Measured searches of the query phase (all clients together).
    #[arg(long, default_value_t = 2_000)]
    queries: u64,
    /// Card payments per second of the freshness phase, sent open loop.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Sending time of the freshness phase (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    duration: Duration,
    /// Longest any one phase may take (e.g. 10m, 1h).
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    timeout: Duration,
    /// Leave the topics, consumer groups, indices and the event store behind.
    #[arg(long)]
    keep: bool,
    /// Print the figures as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Most events accepted (the ceiling keeps one run's documents in memory).
const MAX_EVENTS: u64 = 20_000_000;
const MAX_PARTITIONS: i32 = 1_000;
const MAX_QUERY_CLIENTS: usize = 256;
/// Attempts to drop a prefix's indices at the end (about a minute with the back-off).
const CLEANUP_RETRIES: usize = 15;

impl Args {
    fn check(&self) -> Result<(), String> {
        if self.accounts == 0 || self.events < self.accounts {
            return Err(format!(
                "--accounts must be at least 1 and --events ({}) at least --accounts ({}): \
                 every account is opened first",
                self.events, self.accounts
            ));
        }
        if self.events > MAX_EVENTS {
            return Err(format!("--events may be at most {MAX_EVENTS}"));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(format!(
                "--partitions must be between 1 and {MAX_PARTITIONS}"
            ));
        }
        if self.batch == Some(0) {
            return Err("--batch must be at least 1".into());
        }
        if !(1..=MAX_QUERY_CLIENTS).contains(&self.query_clients) || self.queries == 0 {
            return Err(format!(
                "--query-clients must be between 1 and {MAX_QUERY_CLIENTS} and --queries at \
                 least 1"
            ));
        }
        if !self.rate.is_finite() || self.rate <= 0.0 {
            return Err("--rate must be a positive number of commands per second".into());
        }
        if self.duration.is_zero() || self.timeout.is_zero() {
            return Err("--duration and --timeout must be longer than 0".into());
        }
        Ok(())
    }
}

/// Everything phases 1 and 2 create (phase 3 has its [`crate::services::Scratch`]).
#[derive(Debug)]
struct Names {
    topic: String,
    dlq: String,
    group: String,
    /// Index prefixes: the projector's copy (queried in phase 2) and the two ceiling runs'.
    projector_prefix: String,
    raw_prefixes: [String; 2],
}

impl Names {
    fn new(config: &Config) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let id = &id[..12];
        let topic = format!("bench-search-{id}");
        Self {
            dlq: prism_projector::dlq::topic_name(&topic, &config.projector.dlq_suffix, NAME),
            group: topic.clone(),
            projector_prefix: format!("bench-search-{id}"),
            raw_prefixes: [
                format!("bench-search-{id}-raw1"),
                format!("bench-search-{id}-raw2"),
            ],
            topic,
        }
    }

    fn prefixes(&self) -> [&str; 3] {
        [
            &self.projector_prefix,
            &self.raw_prefixes[0],
            &self.raw_prefixes[1],
        ]
    }

    /// Removes everything; reports each failure and answers whether all went.
    async fn remove(&self, config: &Config) -> bool {
        let mut ok = true;
        for prefix in self.prefixes() {
            // Patient: another developer's outage test may have the engine down for a while,
            // and a run that failed because of it must still leave nothing behind.
            let dropped = (|| drop_indices(config, prefix))
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(500))
                        .with_max_delay(Duration::from_secs(5))
                        .with_max_times(CLEANUP_RETRIES),
                )
                .await;
            if let Err(e) = dropped {
                eprintln!("prismctl: bench search: could not drop the indices {prefix}-*: {e:#}");
                ok = false;
            }
        }
        if let Err(e) = delete_groups(config, &[&self.group]).await {
            eprintln!("prismctl: bench search: could not delete the consumer group: {e:#}");
            ok = false;
        }
        if let Err(e) = delete_topics(config, &[&self.topic, &self.dlq]).await {
            eprintln!("prismctl: bench search: could not delete the bench topics: {e:#}");
            ok = false;
        }
        ok
    }
}

/// `config` pointed at index prefix `prefix` and consumer group `group`, parsed as
/// prism-search parses it.
fn search_on(config: &Config, prefix: &str, group: &str) -> anyhow::Result<SearchProjector> {
    let mut config = config.clone();
    config.search.set("index_prefix", prefix);
    config.search.set("group_id", group);
    SearchProjector::new(config).context("the [search] section")
}

/// Drops every index of `prefix` (nothing to do if it was never created).
async fn drop_indices(config: &Config, prefix: &str) -> anyhow::Result<()> {
    let projector = search_on(config, prefix, prefix)?;
    let search = projector.search_config();
    if SearchCopies::exists(&config.elasticsearch, search).await? {
        SearchCopies::connect(&config.elasticsearch, search)
            .await?
            .drop_everything()
            .await?;
    }
    Ok(())
}

/// Drops a ceiling's copy once measured, unless `--keep`.
async fn drop_raw(config: &Config, args: &Args, prefix: &str) -> anyhow::Result<()> {
    if args.keep {
        return Ok(());
    }
    drop_indices(config, prefix)
        .await
        .with_context(|| format!("dropping the ceiling's indices {prefix}-*"))
}

// ---------- the report ----------

/// Phase 1.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionFigures {
    /// The projector, from its subscription (`Runtime::start` returned) to every
    /// partition's end stored. Client CPU: this process (the runtime, the sink and the fold).
    pub projector: Rate,
    /// The raw ceiling: both runs together (events ÷ time).
    pub raw_bulk: Rate,
    /// The run before and the run after the projector.
    pub raw_runs: Vec<Rate>,
    /// `_bulk`-sized writes of the ceiling (both runs), and their mean events.
    pub raw_batches: u64,
    pub raw_mean_batch_events: f64,
    /// The runtime's batches (`prism_projector_batch_records`) and their mean records.
    pub projector_batches: u64,
    pub projector_mean_batch_records: f64,
    /// Start of the runtime to its first stored position (group join included).
    pub projector_startup_s: Option<f64>,
    /// The projector's rate from its first stored position to the end (group join and
    /// first batch excluded), for reference; the ratio uses the rate from the start.
    pub projector_after_startup_per_second: Option<f64>,
    pub applied: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    pub sink_errors: u64,
    /// projector.per_second ÷ raw_bulk.per_second.
    pub ratio: f64,
    pub goal: f64,
    pub goal_met: bool,
}

/// Phase 2.
#[derive(Debug, Clone, Serialize)]
pub struct QueryFigures {
    /// Transaction documents in the queried copy.
    pub documents: u64,
    pub clients: usize,
    /// Measured searches (200 answers), and searches answered otherwise.
    pub queries: u64,
    pub errors: u64,
    pub warmup_queries: u64,
    pub elapsed_s: f64,
    pub per_second: f64,
    pub latency_ms: Latency,
    /// Mean hits per search (`total`), so an empty result does not pass for a fast one.
    pub mean_total_hits: f64,
    /// The query strings sent in turn (path and query of each).
    pub shapes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu_busy: Option<f64>,
    pub goal_p99_ms: f64,
    pub goal_met: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_examples: Vec<String>,
}

/// Phase 3.
#[derive(Debug, Clone, Serialize)]
pub struct FreshnessFigures {
    pub topic: String,
    pub accounts: usize,
    pub target_rate: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub achieved_rate: f64,
    pub accepted: u64,
    /// 422 and 409 answers: nothing stored, nothing to find.
    pub rejected: u64,
    pub errors: u64,
    /// Accepted commands whose event was found (the histogram's count).
    pub searchable: u64,
    /// Accepted commands not searchable within [`freshness::NEVER`].
    pub never_searchable: u64,
    /// Command accepted (its answer arrived) → the poller's search that found it answered.
    pub latency_ms: Latency,
    /// The command's own round trip.
    pub command_ms: Latency,
    pub poll_interval_ms: u64,
    pub refresh_interval_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu_busy: Option<f64>,
    pub goal_p99_ms: f64,
    pub goal_met: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_examples: Vec<String>,
}

/// What `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub topic: String,
    pub index_prefixes: Vec<String>,
    pub partitions: i32,
    pub events: u64,
    pub accounts: u64,
    pub seed: u64,
    pub batch_max_events: usize,
    pub bulk_max_bytes: usize,
    /// Filling the topic (not timed against anything; for reference).
    pub produce: Rate,
    pub projection: ProjectionFigures,
    pub queries: QueryFigures,
    pub freshness: FreshnessFigures,
    pub kept: bool,
    /// What may have disturbed the measurement (sink errors, retried ceiling writes).
    pub disturbed: Vec<String>,
}

// ---------- entry point ----------

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    if let Err(message) = args.check() {
        eprintln!("prismctl: bench search: {message}");
        return Ok(ExitCode::from(2));
    }
    crate::services::logs_if_asked(config);
    let names = Names::new(config);
    let cancel = Arc::new(AtomicBool::new(false));
    let measured = tokio::select! {
        result = measure(config, args, &names, &cancel) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    cancel.store(true, Ordering::Relaxed);

    let mut failed = false;
    if let Err(e) = &measured {
        eprintln!("prismctl: bench search: {e:#}");
        failed = true;
    }
    if args.keep {
        eprintln!(
            "prismctl: bench search: kept topics {} and {}, consumer group {}, indices {}-*",
            names.topic,
            names.dlq,
            names.group,
            names.prefixes().join("-*, ")
        );
    } else if !names.remove(config).await {
        failed = true;
    }
    let Ok(report) = measured else {
        return Ok(ExitCode::from(1));
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("writing the report")?
        );
    } else {
        print_report(&report);
    }
    if report.projection.dead_lettered > 0 {
        eprintln!(
            "prismctl: bench search: the runtime dead-lettered {} events of a valid workload",
            report.projection.dead_lettered
        );
        failed = true;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn measure(
    config: &Config,
    args: &Args,
    names: &Names,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<Report> {
    let projector = search_on(config, &names.projector_prefix, &names.group)?;
    let mut runtime = projector.settings().runtime;
    if let Some(batch) = args.batch {
        runtime.batch_max_events = batch;
    }
    let batch = runtime.batch_max_events.max(1);
    let partitions = usize::try_from(args.partitions).context("--partitions")?;

    // The fill (not timed against anything).
    create_topic(config, &names.topic, args.partitions)
        .await
        .with_context(|| format!("creating the bench topic {}", names.topic))?;
    let filled = {
        let (config, topic, cancel) = (config.clone(), names.topic.clone(), Arc::clone(cancel));
        let (seed, accounts, events) = (args.seed, args.accounts, args.events);
        tokio::task::spawn_blocking(move || {
            let timing = super::ledger::workload::Timing::spread(events);
            produce_workload(&config, seed, accounts, events, timing, &topic, &cancel)
        })
        .await
        .map_err(|e| anyhow!("the producing thread failed: {e}"))??
    };
    let ends = end_offsets(config, &names.topic, partitions).await?;
    let stored: u64 = ends.iter().map(|e| u64::try_from(*e).unwrap_or(0)).sum();
    if stored != args.events {
        bail!(
            "the topic holds {stored} records after the fill, not {}",
            args.events
        );
    }
    let streams = projection::Streams::new(args, &filled.partition_of, &ends, batch)?;

    // 1. The ceiling, the projector, the ceiling again. Each ceiling copy is dropped right
    // after its run (unless --keep), so the next phase starts on an engine holding only
    // the projector's copy, as the queries do.
    let raw_1 = projection::write_raw(config, &names.raw_prefixes[0], &streams, args).await?;
    drop_raw(config, args, &names.raw_prefixes[0]).await?;
    let run = projection::project(config, args, names, &runtime, &ends, cancel).await?;
    let raw_2 = projection::write_raw(config, &names.raw_prefixes[1], &streams, args).await?;
    drop_raw(config, args, &names.raw_prefixes[1]).await?;
    drop(streams);
    let projection = projection::figures(&run, &raw_1, &raw_2);

    // 2. Queries over the projector's copy.
    let queries = queries::measure(config, args, &names.projector_prefix, &names.group).await?;

    // 3. Freshness, on services of its own.
    let freshness = freshness::measure(config, args).await?;

    let mut disturbed = Vec::new();
    if projection.sink_errors > 0 {
        disturbed.push(format!(
            "the projector met {} sink errors (retried)",
            projection.sink_errors
        ));
    }
    let retries = raw_1.retries + raw_2.retries;
    if retries > 0 {
        disturbed.push(format!("the raw ceiling retried {retries} bulk writes"));
    }
    Ok(Report {
        topic: names.topic.clone(),
        index_prefixes: names.prefixes().iter().map(|p| (*p).to_owned()).collect(),
        partitions: args.partitions,
        events: args.events,
        accounts: args.accounts,
        seed: args.seed,
        batch_max_events: batch,
        bulk_max_bytes: projector.search_config().bulk_max_bytes,
        produce: filled.rate,
        projection,
        queries,
        freshness,
        kept: args.keep,
        disturbed,
    })
}

// ---------- output ----------

fn busy(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.0} %", v * 100.0))
}

fn cpu_us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn met(goal_met: bool) -> &'static str {
    if goal_met {
        "met"
    } else {
        "NOT met"
    }
}

fn print_report(r: &Report) {
    let mut out = std::io::stdout().lock();
    let p = &r.projection;
    let _ = writeln!(
        out,
        "bench search: {} events on {} accounts, {} partitions, batches of at most {} events, \
         _bulk requests of at most {} bytes (topic {}, seed {})",
        r.events, r.accounts, r.partitions, r.batch_max_events, r.bulk_max_bytes, r.topic, r.seed
    );
    let _ = writeln!(out, "\n1. projection rate next to the raw _bulk ceiling");
    let _ = writeln!(
        out,
        "  {:<34} {:>9} {:>8} {:>10} {:>9} {:>10}  runs before/after",
        "", "events", "seconds", "events/s", "CPU busy", "client µs"
    );
    let line = |out: &mut std::io::StdoutLock<'_>, name: &str, rate: &Rate, runs: &[Rate]| {
        let each: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.0}", r.per_second))
            .collect();
        let _ = writeln!(
            out,
            "  {name:<34} {:>9} {:>8.2} {:>10.0} {:>9} {:>10}  {}",
            rate.events,
            rate.elapsed_s,
            rate.per_second,
            busy(rate.machine_cpu_busy),
            cpu_us(rate.client_cpu_us_per_event),
            each.join(" / ")
        );
    };
    line(&mut out, "fill (produce, for reference)", &r.produce, &[]);
    line(
        &mut out,
        "raw _bulk ceiling (write_raw)",
        &p.raw_bulk,
        &p.raw_runs,
    );
    line(
        &mut out,
        "projector (kit runtime + EsSink)",
        &p.projector,
        &[],
    );
    let _ = writeln!(
        out,
        "  ratio projector ÷ raw ceiling: {:.3}   goal {:.1}: {}",
        p.ratio,
        p.goal,
        met(p.goal_met)
    );
    let _ = writeln!(
        out,
        "  ceiling: {} writes of {:.0} events; projector: start-up {}, {} batches of {:.0} \
         records ({} events/s after start-up), applied {}, skipped {}, dead-lettered {}, \
         sink errors {}",
        p.raw_batches,
        p.raw_mean_batch_events,
        p.projector_startup_s
            .map_or_else(|| "-".into(), |s| format!("{s:.1} s")),
        p.projector_batches,
        p.projector_mean_batch_records,
        p.projector_after_startup_per_second
            .map_or_else(|| "-".into(), |r| format!("{r:.0}")),
        p.applied,
        p.skipped,
        p.dead_lettered,
        p.sink_errors
    );

    let q = &r.queries;
    let _ = writeln!(
        out,
        "\n2. query latency: {} faceted free-text searches, {} clients, over {} transactions \
         ({} warm-up searches not measured)",
        q.queries, q.clients, q.documents, q.warmup_queries
    );
    let _ = writeln!(
        out,
        "  p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.0} searches/s; {:.0} \
         hits per search on average; errors {}; CPU busy {}",
        q.latency_ms.p50,
        q.latency_ms.p90,
        q.latency_ms.p99,
        q.latency_ms.max,
        q.per_second,
        q.mean_total_hits,
        q.errors,
        busy(q.machine_cpu_busy)
    );
    let _ = writeln!(
        out,
        "  goal p99 ≤ {:.0} ms: {}",
        q.goal_p99_ms,
        met(q.goal_met)
    );
    for shape in &q.shapes {
        let _ = writeln!(out, "    {shape}");
    }

    let f = &r.freshness;
    let _ = writeln!(
        out,
        "\n3. freshness: card payments at {:.0}/s for {:.1} s over {} accounts (topic {}): \
         sent {} ({:.1}/s), accepted {}, rejected {}, errors {}",
        f.target_rate,
        f.duration_s,
        f.accounts,
        f.topic,
        f.sent,
        f.achieved_rate,
        f.accepted,
        f.rejected,
        f.errors
    );
    let _ = writeln!(
        out,
        "  accepted → searchable: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms \
         ({} searchable, {} never); command round trip p50 {:.1} ms, p99 {:.1} ms; CPU busy {}",
        f.latency_ms.p50,
        f.latency_ms.p90,
        f.latency_ms.p99,
        f.latency_ms.max,
        f.searchable,
        f.never_searchable,
        f.command_ms.p50,
        f.command_ms.p99,
        busy(f.machine_cpu_busy)
    );
    let _ = writeln!(
        out,
        "  refresh_interval_ms {}, poll every {} ms; goal p99 ≤ {:.0} ms: {}",
        f.refresh_interval_ms,
        f.poll_interval_ms,
        f.goal_p99_ms,
        met(f.goal_met)
    );
    for example in q.error_examples.iter().chain(&f.error_examples) {
        let _ = writeln!(out, "  error, e.g.: {example}");
    }
    for reason in &r.disturbed {
        let _ = writeln!(out, "DISTURBED: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["bench-search"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("parses").args
    }

    #[test]
    fn the_defaults_are_the_issues_sizes_and_bad_arguments_are_refused() {
        let args = parse(&[]);
        assert_eq!(
            (args.events, args.query_clients, args.rate),
            (1_000_000, 8, 200.0)
        );
        assert_eq!(args.duration, Duration::from_secs(30));
        assert!(args.check().is_ok());
        for bad in [
            &["--events", "10", "--accounts", "20"][..],
            &["--batch", "0"],
            &["--query-clients", "0"],
            &["--queries", "0"],
            &["--rate", "0"],
            &["--duration", "0s"],
            &["--partitions", "0"],
        ] {
            assert!(parse(bad).check().is_err(), "{bad:?} accepted");
        }
    }
}
