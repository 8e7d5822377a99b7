//! `prismctl bench dashboard`: how fast prism-dashboard projects, how soon a command shows
//! in its stream, what 200 viewers cost, and how much Redis a day of traffic takes, all
//! measured in one run on this machine.
//!
//! 1. **Projection rate next to the raw pipelined Redis ceiling.** A fresh topic receives
//!    `--events` events of the seeded [`crate::traffic`] model, timed as if produced live
//!    at `--event-rate` up to now (the dashboard keeps recent buckets only). Then:
//!    - *the raw ceiling*: the same events, grouped by partition, folded in memory into
//!      the transactions of batches of `--batch` events ([`RedisSink::prepare`]: the
//!      accounts, the increments, the expiries, the feed and the position, exactly what
//!      the sink's `MULTI`/`EXEC` holds), and sent as they are ([`RedisSink::write_raw`]:
//!      no `WATCH`, no reads, no fence), one task per partition, into a fresh copy.
//!      Timed: the writes. Run before and after the projector.
//!    - *the projector*: the kit's runtime with a `RedisSink` on another fresh copy, from its
//!      start until every partition's stored position reached the partition's end.
//!
//!    Goal: projector ÷ ceiling ≥ 0.8.
//! 2. **Accepted → visible in the stream, and 200 viewers.** prism-command runs in this
//!    process on an event store and topic of its own; the real `prism-dashboard` binary
//!    runs as a child (so its CPU is its own). `--viewers` clients hold
//!    `/v1/dashboard/stream` open while deposits are sent open loop at `--rate` for
//!    `--duration`; every `--large-every`-th is large enough for the feed, and for those
//!    the time from the command's answer to the first frame whose feed holds it is
//!    measured (goal p99 ≤ 400 ms). Reported with it: each viewer's frames, how far the
//!    slowest viewer was behind the newest frame (goal: at most one), prism-dashboard's
//!    and Redis's CPU, Redis commands/s and the dashboard's summary reads/s (one per tick
//!    whatever the number of viewers).
//! 3. **A day in Redis** (`--day`): a day of traffic at `--day-rate` commands/s (43.2
//!    million events at 500/s), timed over the 24 hours up to now, folded and written
//!    through the raw path into a fresh copy (not waited for: replayed as fast as Redis
//!    takes it); then Redis's memory for it, its keys by kind and what each kind weighs.
//!
//! Everything created (topics, groups, namespaces, the event store) is removed at the end,
//! unless `--keep`. Exit codes: 0 measured (whether or not the goals are met), 1 a phase
//! failed, 2 a bad invocation or no `prism-dashboard` binary.
//!
//! # Files
//! This file: arguments, names, the order of the phases, cleanup and the report;
//! `projection` phase 1, `live` phase 2, `day` phase 3.

mod day;
mod live;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use prism_dashboard::app::{DashboardProjector, NAME};
use prism_dashboard::copies::DashboardCopies;
use prism_dashboard::sink::{Prepared, RedisSink};
use prism_platform::config::ProjectorConfig;
use prism_platform::Config;
use prism_projector::app::Projector as _;
use prism_projector::copies::Copies as _;
use serde::Serialize;

use super::ledger::figures::Rate;
use super::ledger::kafka::{delete_groups, delete_topics};
use super::redis_projection::{Target, Workload};
use crate::loadgen::{parse_duration, Latency};

pub use super::redis_projection::{ProjectionFigures, RATIO_GOAL};

/// The goal of the stream's delay.
pub const VISIBLE_P99_GOAL_MS: f64 = 400.0;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events projected in phase 1, the accounts' openings included.
    #[arg(long, default_value_t = 300_000)]
    events: u64,
    /// Accounts the events are spread over.
    #[arg(long, default_value_t = 20_000)]
    accounts: u64,
    /// Partitions of the bench topic (one runtime worker and one ceiling writer each).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Seed of the workload.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Most events per batch (default: `batch_max_events` of `[dashboard.projector]`, or
    /// of `[projector]`).
    #[arg(long)]
    batch: Option<usize>,
    /// Events per second of event time in phase 1's workload (its events end now).
    #[arg(long, default_value_t = 500.0)]
    event_rate: f64,
    /// Commands per second of phase 2, sent open loop.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Sending time of phase 2 (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    duration: Duration,
    /// Stream viewers of phase 2.
    #[arg(long, default_value_t = 200)]
    viewers: usize,
    /// Every n-th command of phase 2 is a large deposit, measured through the feed.
    #[arg(long, default_value_t = 10)]
    large_every: u64,
    /// Accounts phase 2 deposits into.
    #[arg(long, default_value_t = 200)]
    live_accounts: usize,
    /// Skip phase 2.
    #[arg(long)]
    no_live: bool,
    /// Run phase 3: a day of traffic replayed into Redis, and its memory.
    #[arg(long)]
    day: bool,
    /// Commands per second of the simulated day.
    #[arg(long, default_value_t = 500.0)]
    day_rate: f64,
    /// The prism-dashboard binary of phase 2 (default: next to this prismctl).
    #[arg(long, value_name = "PATH")]
    dashboard_bin: Option<PathBuf>,
    /// Longest any one phase may take (e.g. 10m, 1h).
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    timeout: Duration,
    /// Leave the topics, groups, Redis keys and the event store behind.
    #[arg(long)]
    keep: bool,
    /// Print the figures as one JSON document.
    #[arg(long)]
    json: bool,
}

const MAX_EVENTS: u64 = 20_000_000;
const MAX_PARTITIONS: i32 = 1_000;
const MAX_VIEWERS: usize = 5_000;

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
        for (flag, value) in [
            ("--event-rate", self.event_rate),
            ("--rate", self.rate),
            ("--day-rate", self.day_rate),
        ] {
            if !value.is_finite() || value <= 0.0 {
                return Err(format!("{flag} must be a positive number per second"));
            }
        }
        if !(1..=MAX_VIEWERS).contains(&self.viewers) {
            return Err(format!("--viewers must be between 1 and {MAX_VIEWERS}"));
        }
        if self.large_every == 0 || self.live_accounts == 0 {
            return Err("--large-every and --live-accounts must be at least 1".into());
        }
        if self.duration.is_zero() || self.timeout.is_zero() {
            return Err("--duration and --timeout must be longer than 0".into());
        }
        Ok(())
    }
}

/// Everything phases 1 and 3 create (phase 2 has its [`crate::services::Scratch`]).
#[derive(Debug)]
struct Names {
    topic: String,
    dlq: String,
    group: String,
    /// The Redis namespace of the bench's copies (each run a copy of its own).
    namespace: String,
}

impl Names {
    fn new(config: &Config) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("bench-dashboard-{}", &id[..12]);
        Self {
            dlq: prism_projector::dlq::topic_name(&topic, &config.projector.dlq_suffix, NAME),
            group: topic.clone(),
            namespace: format!("prism:{topic}"),
            topic,
        }
    }

    /// Removes everything; reports each failure and answers whether all went.
    async fn remove(&self, config: &Config) -> bool {
        let mut ok = true;
        let dropped = async {
            let copies = copies(config, &self.namespace).await?;
            copies.drop_everything().await
        };
        if let Err(e) = dropped.await {
            eprintln!(
                "prismctl: bench dashboard: could not delete the keys {}:*: {e:#}",
                self.namespace
            );
            ok = false;
        }
        if let Err(e) = delete_groups(config, &[&self.group]).await {
            eprintln!("prismctl: bench dashboard: could not delete the consumer group: {e:#}");
            ok = false;
        }
        if let Err(e) = delete_topics(config, &[&self.topic, &self.dlq]).await {
            eprintln!("prismctl: bench dashboard: could not delete the bench topics: {e:#}");
            ok = false;
        }
        ok
    }
}

/// `config` pointed at `namespace` and `group`, parsed as prism-dashboard parses it.
fn dashboard_on(
    config: &Config,
    namespace: &str,
    group: &str,
) -> anyhow::Result<DashboardProjector> {
    let mut config = config.clone();
    config.dashboard.set("namespace", namespace);
    config.dashboard.set("group_id", group);
    DashboardProjector::new(config).context("the [dashboard] section")
}

/// The copies of `namespace`.
async fn copies(config: &Config, namespace: &str) -> anyhow::Result<DashboardCopies> {
    let projector = dashboard_on(config, namespace, namespace)?;
    prism_dashboard::copies::connect(&config.redis, projector.dashboard_config()).await
}

/// The dashboard as the projection phase drives it: fresh copies in the bench's namespace.
struct Bench {
    config: Config,
    namespace: String,
    projector: DashboardProjector,
}

#[async_trait::async_trait]
impl Target for Bench {
    type Model = prism_dashboard::sink::DashboardModel;

    fn name(&self) -> &'static str {
        NAME
    }

    fn runtime(&self) -> ProjectorConfig {
        self.projector.settings().runtime
    }

    async fn fresh(&self) -> anyhow::Result<(u32, RedisSink)> {
        let copy = copies(&self.config, &self.namespace)
            .await?
            .create_next()
            .await?;
        Ok((copy.number, copy.sink()))
    }

    async fn abandon(&self, number: u32) {
        if let Ok(copies) = copies(&self.config, &self.namespace).await {
            copies.abandon(number).await.ok();
        }
    }

    fn commands(p: &Prepared) -> u64 {
        (p.accounts() + p.writes().commands() + usize::from(p.has_position())) as u64
    }
}

// ---------- the report ----------

/// Phase 2.
#[derive(Debug, Clone, Serialize)]
pub struct LiveFigures {
    pub target_rate: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub achieved_rate: f64,
    pub accepted: u64,
    pub errors: u64,
    /// Large deposits measured, and those no frame showed within the drain time.
    pub measured: u64,
    pub never_visible: u64,
    /// Command answered → first frame holding it, at one viewer.
    pub visible_ms: Latency,
    pub visible_goal_p99_ms: f64,
    pub visible_goal_met: bool,
    pub viewers: usize,
    /// Frames the broadcaster published during the run, and the fewest and most a viewer
    /// received (a viewer may skip a frame it was too slow for; it never queues them).
    pub frames: u64,
    pub frames_per_viewer_min: u64,
    pub frames_per_viewer_max: u64,
    /// The most frames any viewer was behind the newest one, sampled every 50 ms.
    pub max_frames_behind: u64,
    /// prism-dashboard's CPU (share of one core) and RSS at the end.
    pub dashboard_cpu_share: Option<f64>,
    pub dashboard_rss_mib: Option<f64>,
    /// Redis's CPU (share of one core) and commands per second, all clients together.
    pub redis_cpu_share: Option<f64>,
    pub redis_commands_per_second: Option<f64>,
    /// Summary reads per second (one per frame tick, shared by every viewer).
    pub summary_reads_per_second: Option<f64>,
    pub machine_cpu_busy: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_examples: Vec<String>,
}

/// Phase 3.
#[derive(Debug, Clone, Serialize)]
pub struct DayFigures {
    pub rate: f64,
    pub events: u64,
    pub accounts: u64,
    pub replay: Rate,
    /// Redis `used_memory` after minus before, in MiB.
    pub used_memory_mib: f64,
    pub keys: u64,
    /// Per kind of key: how many, and their `MEMORY USAGE` summed (sampled for large
    /// kinds, scaled up), in MiB.
    pub kinds: Vec<KindFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindFigures {
    pub kind: &'static str,
    pub keys: u64,
    pub mib: f64,
    pub bounded_by: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub events: u64,
    pub accounts: u64,
    pub partitions: i32,
    pub seed: u64,
    pub projection: Option<ProjectionFigures>,
    pub live: Option<LiveFigures>,
    pub day: Option<DayFigures>,
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    if let Err(e) = args.check() {
        eprintln!("prismctl: bench dashboard: {e}");
        return Ok(ExitCode::from(2));
    }
    crate::services::logs_if_asked(config);
    let binary = match args.dashboard_bin.clone() {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating prismctl")?
            .with_file_name("prism-dashboard"),
    };
    if !args.no_live && !binary.is_file() {
        eprintln!(
            "prismctl: bench dashboard: no prism-dashboard binary at {}: build it next to \
             prismctl with `cargo build --release -p prism-dashboard -p prismctl`, or pass \
             --dashboard-bin",
            binary.display()
        );
        return Ok(ExitCode::from(2));
    }
    let names = Names::new(config);
    let cancel = Arc::new(AtomicBool::new(false));
    let outcome = tokio::select! {
        outcome = measure(config, args, &names, &binary, &cancel) => outcome,
        _ = tokio::signal::ctrl_c() => {
            cancel.store(true, Ordering::Relaxed);
            Err(anyhow!("interrupted"))
        }
    };
    let cleaned = args.keep || names.remove(config).await;
    match outcome {
        Ok(report) => {
            print(args, &report)?;
            Ok(if cleaned {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Err(e) => {
            eprintln!("prismctl: bench dashboard: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn measure(
    config: &Config,
    args: &Args,
    names: &Names,
    binary: &std::path::Path,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<Report> {
    let target = Bench {
        config: config.clone(),
        namespace: names.namespace.clone(),
        projector: dashboard_on(config, &names.namespace, &names.group)?,
    };
    let workload = Workload {
        topic: names.topic.clone(),
        group: names.group.clone(),
        events: args.events,
        accounts: args.accounts,
        partitions: args.partitions,
        seed: args.seed,
        event_rate: args.event_rate,
        batch: args.batch,
        timeout: args.timeout,
        keep: args.keep,
    };
    let projection = super::redis_projection::run(config, &target, &workload, cancel).await?;
    let live = if args.no_live {
        None
    } else {
        Some(live::run(config, args, binary).await?)
    };
    let day = if args.day {
        Some(day::run(config, args, names, cancel).await?)
    } else {
        None
    };
    Ok(Report {
        events: args.events,
        accounts: args.accounts,
        partitions: args.partitions,
        seed: args.seed,
        projection: Some(projection),
        live,
        day,
    })
}

fn print(args: &Args, r: &Report) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "bench dashboard: {} events over {} accounts, {} partitions, seed {}",
        r.events, r.accounts, r.partitions, r.seed
    )?;
    if let Some(p) = &r.projection {
        writeln!(
            out,
            "  projector            {:>10.0} events/s  ({} batches, {:.0} records each; {} \
             applied, {} dead letters, {} sink errors)",
            p.projector.per_second,
            p.projector_batches,
            p.projector_mean_batch_records,
            p.applied,
            p.dead_lettered,
            p.sink_errors
        )?;
        if let (Some(at), Some(rate)) =
            (p.projector_startup_s, p.projector_after_startup_per_second)
        {
            writeln!(
                out,
                "    after its start    {rate:>10.0} events/s  (first position stored after {at:.2} s: \
                 the group join)"
            )?;
        }
        writeln!(
            out,
            "  raw Redis pipeline   {:>10.0} events/s  ({} pipelines of {} events, {} commands)",
            p.raw_pipelined.per_second, p.raw_batches, p.batch_events, p.raw_commands
        )?;
        writeln!(
            out,
            "  ratio                {:>10.3}           (goal ≥ {}: {})",
            p.ratio,
            p.goal,
            if p.goal_met { "met" } else { "NOT met" }
        )?;
        writeln!(out, "  {}", super::redis_projection::cpu_line(p))?;
    }
    if let Some(l) = &r.live {
        writeln!(
            out,
            "  stream at {:.0} cmd/s for {:.0} s: sent {}, accepted {}, errors {}; {} measured, \
             {} never visible",
            l.target_rate, l.duration_s, l.sent, l.accepted, l.errors, l.measured, l.never_visible
        )?;
        writeln!(
            out,
            "  accepted → visible   p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms  \
             (goal p99 ≤ {} ms: {})",
            l.visible_ms.p50,
            l.visible_ms.p90,
            l.visible_ms.p99,
            l.visible_ms.max,
            l.visible_goal_p99_ms,
            if l.visible_goal_met { "met" } else { "NOT met" }
        )?;
        let share = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{:.0}%", v * 100.0));
        let num = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}"));
        writeln!(
            out,
            "  {} viewers: {} frames (each viewer {}–{}), at most {} behind; prism-dashboard \
             CPU {} of a core, RSS {} MiB; Redis CPU {}, {} commands/s, {} summary reads/s",
            l.viewers,
            l.frames,
            l.frames_per_viewer_min,
            l.frames_per_viewer_max,
            l.max_frames_behind,
            share(l.dashboard_cpu_share),
            num(l.dashboard_rss_mib),
            share(l.redis_cpu_share),
            num(l.redis_commands_per_second),
            l.summary_reads_per_second
                .map_or("n/a".to_owned(), |v| format!("{v:.1}"))
        )?;
    }
    if let Some(d) = &r.day {
        writeln!(
            out,
            "  a day at {:.0} cmd/s: {} events over {} accounts replayed at {:.0} events/s; \
             Redis used_memory +{:.1} MiB in {} keys",
            d.rate, d.events, d.accounts, d.replay.per_second, d.used_memory_mib, d.keys
        )?;
        for k in &d.kinds {
            writeln!(
                out,
                "    {:<22} {:>8} keys {:>9.2} MiB  (bounded by {})",
                k.kind, k.keys, k.mib, k.bounded_by
            )?;
        }
    }
    Ok(())
}
