//! `prismctl bench ledger`: how fast prism-ledger replays a topic, next to the two ceilings
//! it cannot beat on this machine, all measured in one run.
//!
//! 1. **Fill.** A fresh topic `bench-ledger-<id>` (`--partitions`, default 12) receives
//!    `--events` synthetic but valid events, produced straight to Kafka with rdkafka
//!    (idempotent, lz4 like the relay, batched), keyed by account and encoded with
//!    [`prism_events::kafka::encode`], so the default partitioner spreads the accounts as it
//!    does for the relay. `--accounts` accounts are opened first; then a seeded mix of
//!    deposits, withdrawals (within balance and daily limit), approved and declined card
//!    payments at merchants, and occasional freezes and unfreezes follows, with consecutive
//!    account versions and event times increasing over 30 days. The workload is a pure
//!    function of `--seed` (event ids included), so the MySQL ceiling regenerates exactly the
//!    produced events instead of keeping them in memory during the fill.
//! 2. **Ceiling A — raw Kafka consume.** One consumer with the runtime's settings
//!    (`prism_projector::Runtime::start`: its own group, cooperative-sticky,
//!    `queued.max.messages.kbytes`, no auto commit, the pass-through table) reads the whole
//!    topic on its own thread, copying every record's key, payload and headers into owned
//!    buffers as the runtime's polling thread does (`Record::from_message`), until every
//!    partition's end offset is reached. Records are **not decoded**: decoding runs in the
//!    runtime's partition workers, next to the fold, and is part of what the projector
//!    itself costs, not of what Kafka and the client can deliver. Timed from the partition
//!    assignment (the group join, ~3 s of broker `group.initial.rebalance.delay.ms`, is
//!    reported apart) to the last end offset.
//! 3. **Ceiling B — raw MySQL write.** The same events, grouped by the partition each
//!    account's records landed on (read from the fill's delivery reports), folded in memory
//!    with [`fold_batch`] and stored with [`MySqlSink::write_rows`] in batches of
//!    `[projector] batch_max_events` into a fresh generation database, by one task per
//!    partition, all partitions at once (the projector's concurrency), each batch with its
//!    `projector_accounts` versions and its fenced partition position, as the projector
//!    writes them. No Kafka, no decoding, no reading of accounts or versions. Its database is
//!    dropped right after (unless `--keep`) and MySQL is given a moment to flush dirty pages,
//!    so its writes do not weigh on the next phase (MySQL's buffer pool is small next to a
//!    million events' rows: each phase starts on an empty database).
//! 4. **The projector.** The real `prism-ledger` binary (next to this `prismctl`, or
//!    `--ledger-bin`) runs as a child process with its own control database, consumer group
//!    and a free port, and is timed from its start until its stored positions (read from its
//!    live generation) cover every partition's end offset. The figure compared with the
//!    ceilings excludes start-up: it runs from the first stored position seen (the rate
//!    from the process start is reported too). Its RSS (`/proc/<pid>/status`) is sampled
//!    every 500 ms; `VmHWM` gives the peak. It is then stopped with SIGTERM and must exit 0.
//!
//! Both ceilings are measured twice, right before and right after the projector (the
//! projector's database dropped first, the ceiling writing into a fresh one again), and each
//! ceiling is both runs together (events ÷ time): on a shared machine the load changes from
//! minute to minute, and the sandwich makes it weigh on the ceilings as on the projector.
//! The ratio is projector events/s ÷ the lower of the two ceilings; the goal is 0.8.
//!
//! Beside the rates, each phase reports how busy the machine was and the CPU time per event
//! of its client (this process, or prism-ledger) and of a MySQL server running on this
//! machine, plus MySQL's prepared-statement counters per transaction; the projector also
//! reports its batch histograms from `/metrics`. A run that something disturbed (the MySQL
//! server restarted, sink errors, retried transactions) says so in `disturbed`.
//! Everything created (topics, consumer groups, databases, the child's log) is removed at
//! the end, on error and on Ctrl-C too, unless `--keep`.
//!
//! Exit codes: 0 measured (whether or not the goal is met), 1 a phase failed (a service, the
//! projector, a dead letter, cleanup), 2 bad invocation or no `prism-ledger` binary.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use prism_events::event::{
    AccountFrozen, AccountOpened, AccountUnfrozen, CardChannel, CardPayment, CardPaymentApproved,
    CardPaymentDeclined, DeclineReason, MoneyDeposited, MoneyWithdrawn, WithdrawalChannel,
};
use prism_events::{AccountEvent, AccountId, Country, Currency, Envelope};
use prism_ledger::sink::{fold_batch, MySqlSink};
use prism_ledger::store::{partition_positions, Ledger};
use prism_platform::config::LedgerConfig;
use prism_platform::Config;
use prism_projector::{AccountVersion, PositionUpdate, SinkError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde::Serialize;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::bench::machine_jiffies;
use crate::loadgen::parse_duration;

/// The goal of the issue: the projector keeps at least this share of the lower ceiling.
pub const GOAL: f64 = 0.8;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events to replay, the accounts' openings included.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Accounts the events are spread over (each opened before its other events).
    #[arg(long, default_value_t = 20_000)]
    accounts: u64,
    /// Partitions of the bench topic (the projector handles them all, one worker each).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Seed of the workload; the same seed produces the same events (ids included).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The prism-ledger binary to run (default: `prism-ledger` next to this prismctl).
    #[arg(long, value_name = "PATH")]
    ledger_bin: Option<PathBuf>,
    /// Longest any one phase may take (e.g. 10m, 1h).
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    timeout: Duration,
    /// Leave the topics, consumer groups, databases and the projector's log behind.
    #[arg(long)]
    keep: bool,
    /// Print the figures and the ratio as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Most events and accounts accepted (the ceiling keeps the events of one run in memory).
const MAX_EVENTS: u64 = 100_000_000;
const MAX_PARTITIONS: i32 = 1_000;

impl Args {
    fn check(&self) -> Result<(), String> {
        if self.accounts == 0 {
            return Err("--accounts must be at least 1".into());
        }
        if self.events < self.accounts {
            return Err(format!(
                "--events ({}) must be at least --accounts ({}): every account is opened first",
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
        if self.timeout.is_zero() {
            return Err("--timeout must not be zero".into());
        }
        Ok(())
    }
}

// ---------- the report ----------

/// One measured rate.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub events: u64,
    pub elapsed_s: f64,
    pub per_second: f64,
    /// Share of the whole machine's CPU time that was busy meanwhile (all processes: other
    /// work on the machine shows here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu_busy: Option<f64>,
    /// CPU time per event of the client doing the work: this process for the fill and the
    /// ceilings, prism-ledger for the projector (user + system, microseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_us_per_event: Option<f64>,
    /// CPU time per event of the MySQL server, when it runs on this machine (a `mariadbd` or
    /// `mysqld` process), in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mysql_cpu_us_per_event: Option<f64>,
}

/// CPU counters at the start of a measured window.
#[derive(Debug, Clone, Copy)]
struct CpuSnapshot {
    /// The machine's (busy, total) jiffies.
    machine: Option<(u64, u64)>,
    /// The client's and the local MySQL server's user + system ticks.
    client: Option<u64>,
    mysql: Option<u64>,
}

impl CpuSnapshot {
    fn take(client: u32, mysql: &[u32]) -> Self {
        Self {
            machine: machine_jiffies(),
            client: process_ticks(client),
            mysql: ticks_of(mysql),
        }
    }
}

impl Rate {
    fn of(events: u64, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-6);
        Self {
            events,
            elapsed_s: secs,
            per_second: events as f64 / secs,
            machine_cpu_busy: None,
            client_cpu_us_per_event: None,
            mysql_cpu_us_per_event: None,
        }
    }

    /// Several runs as one: their events over their time; busy shares weighted by time.
    fn combined(runs: &[Rate]) -> Self {
        let events = runs.iter().map(|r| r.events).sum();
        let secs: f64 = runs.iter().map(|r| r.elapsed_s).sum();
        let mut rate = Self::of(events, Duration::from_secs_f64(secs.max(1e-6)));
        rate.machine_cpu_busy = runs
            .iter()
            .map(|r| r.machine_cpu_busy.map(|b| b * r.elapsed_s))
            .sum::<Option<f64>>()
            .map(|b| b / secs.max(1e-6));
        let per_event = |f: fn(&Rate) -> Option<f64>| {
            runs.iter()
                .map(|r| f(r).map(|v| v * r.events as f64))
                .sum::<Option<f64>>()
                .map(|v| v / (events.max(1) as f64))
        };
        rate.client_cpu_us_per_event = per_event(|r| r.client_cpu_us_per_event);
        rate.mysql_cpu_us_per_event = per_event(|r| r.mysql_cpu_us_per_event);
        rate
    }

    /// Fills the CPU figures of the window that started at `since`.
    fn cpu(mut self, since: &CpuSnapshot, client: u32, mysql: &[u32]) -> Self {
        self.machine_cpu_busy = busy_since(since.machine);
        let per_event = |before: Option<u64>, after: Option<u64>| {
            let ticks = after?.checked_sub(before?)?;
            (self.events > 0).then(|| ticks as f64 / TICKS_PER_SECOND * 1e6 / self.events as f64)
        };
        self.client_cpu_us_per_event = per_event(since.client, process_ticks(client));
        self.mysql_cpu_us_per_event = per_event(since.mysql, ticks_of(mysql));
        self
    }
}

/// MySQL's global `Com_stmt_prepare` and `Com_stmt_execute` counters.
async fn statement_counters(pool: &sqlx::MySqlPool) -> Option<(u64, u64)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_stmt_prepare', 'Com_stmt_execute')",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    let find = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    Some((find("Com_stmt_prepare")?, find("Com_stmt_execute")?))
}

/// Counter deltas per batch.
fn per_batch(
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
    batches: u64,
) -> (Option<f64>, Option<f64>) {
    match (before, after) {
        (Some((p0, e0)), Some((p1, e1))) if batches > 0 => (
            Some(p1.saturating_sub(p0) as f64 / batches as f64),
            Some(e1.saturating_sub(e0) as f64 / batches as f64),
        ),
        _ => (None, None),
    }
}

/// Processes of a MySQL server on this machine (`mariadbd`, `mysqld`), for the CPU
/// figures; empty when MySQL runs elsewhere (or in a container this process cannot see).
fn mysql_server_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            matches!(comm.trim(), "mariadbd" | "mysqld").then_some(pid)
        })
        .collect()
}

/// Summed user + system ticks of `pids` (`None` if there are none or one cannot be read).
fn ticks_of(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| process_ticks(*p)).sum()
}

/// Busy share of the machine since `since` (a [`machine_jiffies`] sample).
fn busy_since(since: Option<(u64, u64)>) -> Option<f64> {
    let (b0, t0) = since?;
    let (b1, t1) = machine_jiffies()?;
    let total = t1.saturating_sub(t0);
    (total > 0).then(|| b1.saturating_sub(b0) as f64 / total as f64)
}

/// Ceiling A.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeFigures {
    /// Both runs together (events ÷ time), each timed from the partition assignment to the
    /// last end offset.
    #[serde(flatten)]
    pub rate: Rate,
    /// The run before and the run after the projector.
    pub runs: Vec<Rate>,
    /// Subscribe to assignment (group join).
    pub join_s: f64,
    /// Errors the consumer reported while polling (none expected).
    pub errors: u64,
}

/// Ceiling B.
#[derive(Debug, Clone, Serialize)]
pub struct WriteFigures {
    /// Both runs together (events ÷ time).
    #[serde(flatten)]
    pub rate: Rate,
    /// The run before and the run after the projector.
    pub runs: Vec<Rate>,
    pub batches: u64,
    pub mean_batch_events: f64,
    /// Mean time of one `write_rows` transaction.
    pub mean_batch_ms: f64,
    /// Transactions retried after a transient error.
    pub retries: u64,
    /// MySQL's `Com_stmt_prepare` and `Com_stmt_execute` per transaction (global counters:
    /// other clients of the server count too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mysql_prepares_per_batch: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mysql_executes_per_batch: Option<f64>,
}

/// The RSS of prism-ledger over the replay, in MiB.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// `VmHWM` when caught up (largest RSS of the process's life), or the largest sample.
    pub peak_rss_mib: f64,
    /// First sample (after start-up, before or at the first stored position).
    pub start_mib: Option<f64>,
    /// First sample at or past 25, 50, 75 and 100 % of the events stored.
    pub at_25_mib: Option<f64>,
    pub at_50_mib: Option<f64>,
    pub at_75_mib: Option<f64>,
    pub at_100_mib: Option<f64>,
    /// Every sample: `[seconds since start, events stored, RSS MiB]`.
    pub samples: Vec<(f64, u64, f64)>,
}

/// What prism-ledger's `/metrics` said when it had caught up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProjectorMetrics {
    pub batches: u64,
    pub mean_batch_records: f64,
    /// `prism_projector_batch_duration_seconds`: decode, plan and sink transaction.
    pub mean_batch_ms: f64,
    /// Batches with more than `large_batch_bound` records (the largest bucket bound of
    /// `prism_projector_batch_records` below `batch_max_events`), as a share of all batches.
    pub large_batch_bound: Option<f64>,
    pub large_batch_share: Option<f64>,
    /// Summed batch time ÷ (partitions × steady time): near 1, the workers (the sink) are
    /// the bottleneck; well below, they wait for records.
    pub worker_busy_share: Option<f64>,
    pub applied: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    pub sink_errors: u64,
    /// MySQL's `Com_stmt_prepare` and `Com_stmt_execute` per batch, from the process start
    /// to caught up (global counters: other clients of the server count too).
    pub mysql_prepares_per_batch: Option<f64>,
    pub mysql_executes_per_batch: Option<f64>,
}

/// The projector phase.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectorFigures {
    /// The rate compared with the ceilings: from the first stored position to caught up
    /// (or from the process start when the run was too small to have a steady part).
    pub per_second: f64,
    pub events: u64,
    /// From the process start to caught up.
    pub elapsed_s: f64,
    pub per_second_with_startup: f64,
    /// Process start to the first stored position seen.
    pub startup_s: f64,
    /// Whether `per_second` excludes start-up.
    pub steady: bool,
    pub steady_events: u64,
    pub steady_elapsed_s: f64,
    /// CPU figures of the steady window (client: prism-ledger).
    pub steady_rate: Rate,
    pub memory: Memory,
    pub metrics: ProjectorMetrics,
    /// Exit code after SIGTERM (0 expected).
    pub exit_code: Option<i32>,
}

/// What `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub topic: String,
    pub dlq_topic: String,
    pub consumer_groups: Vec<String>,
    pub databases: Vec<String>,
    pub partitions: i32,
    pub events: u64,
    pub accounts: u64,
    pub seed: u64,
    pub batch_max_events: usize,
    /// Filling the topic (not a ceiling; for reference).
    pub produce: Rate,
    pub kafka_consume: ConsumeFigures,
    pub mysql_write: WriteFigures,
    pub projector: ProjectorFigures,
    /// `kafka_consume` or `mysql_write`.
    pub lower_ceiling: &'static str,
    pub lower_ceiling_per_second: f64,
    /// projector.per_second ÷ lower_ceiling_per_second.
    pub ratio: f64,
    /// projector.per_second_with_startup ÷ lower_ceiling_per_second.
    pub ratio_with_startup: f64,
    pub goal: f64,
    pub goal_met: bool,
    /// Whether everything was left behind (`--keep`).
    pub kept: bool,
    /// What may have disturbed the measurement: the local MySQL server restarted, the
    /// projector met sink errors, ceiling B retried. Empty for a clean run.
    pub disturbed: Vec<String>,
}

// ---------- entry point ----------

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    if let Err(message) = args.check() {
        eprintln!("prismctl: bench ledger: {message}");
        return Ok(ExitCode::from(2));
    }
    let binary = match ledger_binary(args) {
        Ok(path) => path,
        Err(message) => {
            eprintln!("prismctl: bench ledger: {message}");
            return Ok(ExitCode::from(2));
        }
    };
    let names = Names::new(config);
    let cancel = Arc::new(AtomicBool::new(false));
    let mut child: Option<Child> = None;
    let measured = tokio::select! {
        result = measure(config, args, &binary, &names, &cancel, &mut child) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    cancel.store(true, Ordering::Relaxed);

    let mut failed = false;
    if let Some(mut running) = child.take() {
        // Only on an error path: a measured run stopped it already.
        match running.stop().await {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("prismctl: bench ledger: prism-ledger exited with {status}"),
            Err(e) => {
                eprintln!("prismctl: bench ledger: stopping prism-ledger: {e:#}");
                failed = true;
            }
        }
    }
    if let Err(e) = &measured {
        eprintln!("prismctl: bench ledger: {e:#}");
        if names.log.exists() {
            eprintln!(
                "prismctl: bench ledger: prism-ledger's log: {}",
                names.log.display()
            );
        }
        failed = true;
    }
    if args.keep {
        eprintln!(
            "prismctl: bench ledger: kept topics {} and {}, consumer groups {} and {}, \
             databases {}, {} and {} (with their _g1), log {}",
            names.topic,
            names.dlq,
            names.group,
            names.raw_group,
            names.database,
            names.raw_database,
            names.raw_database2,
            names.log.display()
        );
    } else {
        let keep_log = measured.is_err();
        if !names.remove(config, keep_log).await {
            failed = true;
        }
    }

    let report = match measured {
        Ok(report) => report,
        Err(_) => return Ok(ExitCode::from(1)),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.projector.exit_code != Some(0) {
        eprintln!(
            "prismctl: bench ledger: prism-ledger did not exit 0 after SIGTERM ({:?})",
            report.projector.exit_code
        );
        failed = true;
    }
    if report.projector.metrics.dead_lettered > 0 {
        eprintln!(
            "prismctl: bench ledger: prism-ledger dead-lettered {} events of a valid workload",
            report.projector.metrics.dead_lettered
        );
        failed = true;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The prism-ledger binary: `--ledger-bin`, or next to this executable.
fn ledger_binary(args: &Args) -> Result<PathBuf, String> {
    let path = match &args.ledger_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this executable: {e}; pass --ledger-bin"))?
            .with_file_name("prism-ledger"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no prism-ledger binary at {}: build it next to prismctl with \
             `cargo build --release --bins` (or `cargo build --release -p prism-ledger`), \
             or pass --ledger-bin <path>",
            path.display()
        ))
    }
}

/// Everything a run creates.
#[derive(Debug)]
struct Names {
    topic: String,
    dlq: String,
    group: String,
    raw_group: String,
    database: String,
    raw_database: String,
    /// The second run of ceiling B (a database of its own, so `--keep` can keep both).
    raw_database2: String,
    log: PathBuf,
}

impl Names {
    fn new(config: &Config) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let id = &id[..12];
        let topic = format!("bench-ledger-{id}");
        Self {
            dlq: prism_projector::dlq::topic_name(
                &topic,
                &config.projector.dlq_suffix,
                prism_ledger::app::NAME,
            ),
            group: topic.clone(),
            raw_group: format!("{topic}-raw"),
            database: format!("prism_bench_ledger_{id}"),
            raw_database: format!("prism_bench_ledger_{id}_raw"),
            raw_database2: format!("prism_bench_ledger_{id}_raw2"),
            log: std::env::temp_dir().join(format!("prism-bench-ledger-{id}.log")),
            topic,
        }
    }

    fn ledger_config(config: &Config, database: &str) -> LedgerConfig {
        let mut ledger = config.ledger.clone();
        database.clone_into(&mut ledger.database);
        ledger
    }

    /// Removes everything; reports each failure and answers whether all went.
    async fn remove(&self, config: &Config, keep_log: bool) -> bool {
        let mut ok = true;
        for database in [&self.database, &self.raw_database, &self.raw_database2] {
            if let Err(e) = drop_ledger(config, database).await {
                eprintln!("prismctl: bench ledger: could not drop {database}: {e:#}");
                ok = false;
            }
        }
        if let Err(e) = delete_topics(config, &[&self.topic, &self.dlq]).await {
            eprintln!("prismctl: bench ledger: could not delete the bench topics: {e:#}");
            ok = false;
        }
        if let Err(e) = delete_groups(config, &[&self.group, &self.raw_group]).await {
            eprintln!("prismctl: bench ledger: could not delete the consumer groups: {e:#}");
            ok = false;
        }
        if !keep_log {
            // Absent when the projector never started.
            let _ = std::fs::remove_file(&self.log);
        }
        ok
    }
}

/// Drops a ledger's control database and its generations (creating the control database
/// first if the run never got that far: `drop_everything` needs it).
async fn drop_ledger(config: &Config, database: &str) -> anyhow::Result<()> {
    let ledger = Ledger::open(&config.mysql, &Names::ledger_config(config, database)).await?;
    ledger.drop_everything().await
}

fn admin(config: &Config) -> anyhow::Result<(AdminClient<DefaultClientContext>, AdminOptions)> {
    let admin: AdminClient<DefaultClientContext> =
        prism_platform::clients::kafka_client_config(&config.kafka)
            .create()
            .context("creating a Kafka admin client")?;
    let timeout = Some(Duration::from_millis(
        config.kafka.request_timeout_ms.max(1_000),
    ));
    let options = AdminOptions::new()
        .operation_timeout(timeout)
        .request_timeout(timeout);
    Ok((admin, options))
}

async fn create_topic(config: &Config, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let (admin, options) = admin(config)?;
    let new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(config.kafka.topic_replication_factor),
    );
    for result in admin.create_topics(&[new], &options).await? {
        if let Err((name, code)) = result {
            bail!("creating topic {name}: {code}");
        }
    }
    Ok(())
}

async fn delete_topics(config: &Config, topics: &[&str]) -> anyhow::Result<()> {
    let (admin, options) = admin(config)?;
    for result in admin.delete_topics(topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => bail!("deleting topic {name}: {code}"),
        }
    }
    Ok(())
}

async fn delete_groups(config: &Config, groups: &[&str]) -> anyhow::Result<()> {
    let (admin, options) = admin(config)?;
    for result in admin.delete_groups(groups, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((name, code)) => bail!("deleting consumer group {name}: {code}"),
        }
    }
    Ok(())
}

// ---------- the phases ----------

async fn measure(
    config: &Config,
    args: &Args,
    binary: &Path,
    names: &Names,
    cancel: &Arc<AtomicBool>,
    child: &mut Option<Child>,
) -> anyhow::Result<Report> {
    let batch = config.projector.batch_max_events.max(1);
    let mysql_at_start = mysql_server_pids();
    let partitions = usize::try_from(args.partitions).context("--partitions")?;

    // 1. Fill the topic.
    create_topic(config, &names.topic, args.partitions)
        .await
        .with_context(|| format!("creating the bench topic {}", names.topic))?;
    let filled = {
        let (config, args, topic, cancel) = (
            config.clone(),
            args.clone(),
            names.topic.clone(),
            Arc::clone(cancel),
        );
        tokio::task::spawn_blocking(move || produce(&config, &args, &topic, &cancel))
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

    // 2. and 3. The ceilings, before the projector…
    let consume_1 = consume_once(config, args, names, &ends, cancel).await?;
    let write_1 = write_raw(
        config,
        args,
        &names.raw_database,
        &filled.partition_of,
        &ends,
        batch,
    )
    .await?;
    if !args.keep {
        drop_ledger(config, &names.raw_database)
            .await
            .with_context(|| format!("dropping {}", names.raw_database))?;
    }
    settle(config).await;

    // 4. The projector.
    let projector = project(config, args, binary, names, &ends, child).await?;

    // … and after it (on a fresh database again), so that a change in the machine's load
    // during the run weighs on the ceilings as on the projector.
    if !args.keep {
        drop_ledger(config, &names.database)
            .await
            .with_context(|| format!("dropping {}", names.database))?;
    }
    settle(config).await;
    let write_2 = write_raw(
        config,
        args,
        &names.raw_database2,
        &filled.partition_of,
        &ends,
        batch,
    )
    .await?;
    if !args.keep {
        drop_ledger(config, &names.raw_database2)
            .await
            .with_context(|| format!("dropping {}", names.raw_database2))?;
    }
    let consume_2 = consume_once(config, args, names, &ends, cancel).await?;
    let kafka_consume = ConsumeFigures::combined(consume_1, consume_2);
    let mysql_write = WriteFigures::combined(write_1, write_2);

    let (lower_ceiling, lower) = if kafka_consume.rate.per_second <= mysql_write.rate.per_second {
        ("kafka_consume", kafka_consume.rate.per_second)
    } else {
        ("mysql_write", mysql_write.rate.per_second)
    };
    let ratio = projector.per_second / lower;
    let mut disturbed = Vec::new();
    let mysql_at_end = mysql_server_pids();
    if mysql_at_start != mysql_at_end {
        disturbed.push(format!(
            "the local MySQL server restarted during the run (pids {mysql_at_start:?} → \
             {mysql_at_end:?})"
        ));
    }
    if projector.metrics.sink_errors > 0 {
        disturbed.push(format!(
            "prism-ledger met {} sink errors (retried)",
            projector.metrics.sink_errors
        ));
    }
    if mysql_write.retries > 0 {
        disturbed.push(format!(
            "ceiling B retried {} transactions",
            mysql_write.retries
        ));
    }
    let report = Report {
        topic: names.topic.clone(),
        dlq_topic: names.dlq.clone(),
        consumer_groups: vec![names.group.clone(), names.raw_group.clone()],
        databases: vec![
            names.database.clone(),
            prism_ledger::store::generation_database(&names.database, 1),
            names.raw_database.clone(),
            prism_ledger::store::generation_database(&names.raw_database, 1),
            names.raw_database2.clone(),
            prism_ledger::store::generation_database(&names.raw_database2, 1),
        ],
        partitions: args.partitions,
        events: args.events,
        accounts: args.accounts,
        seed: args.seed,
        batch_max_events: batch,
        produce: filled.rate,
        kafka_consume,
        mysql_write,
        ratio_with_startup: projector.per_second_with_startup / lower,
        projector,
        lower_ceiling,
        lower_ceiling_per_second: lower,
        ratio,
        goal: GOAL,
        goal_met: ratio >= GOAL,
        kept: args.keep,
        disturbed,
    };
    Ok(report)
}

/// One run of ceiling A on its own thread.
async fn consume_once(
    config: &Config,
    args: &Args,
    names: &Names,
    ends: &[i64],
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<ConsumeFigures> {
    let (config, topic, group, ends, cancel, timeout) = (
        config.clone(),
        names.topic.clone(),
        names.raw_group.clone(),
        ends.to_vec(),
        Arc::clone(cancel),
        args.timeout,
    );
    tokio::task::spawn_blocking(move || consume(&config, &topic, &group, &ends, &cancel, timeout))
        .await
        .map_err(|e| anyhow!("the consuming thread failed: {e}"))?
}

impl ConsumeFigures {
    fn combined(a: Self, b: Self) -> Self {
        let runs = vec![a.rate, b.rate];
        Self {
            rate: Rate::combined(&runs),
            runs,
            join_s: a.join_s.max(b.join_s),
            errors: a.errors + b.errors,
        }
    }
}

impl WriteFigures {
    fn combined(a: Self, b: Self) -> Self {
        let batches = a.batches + b.batches;
        let mean = |x: f64, y: f64| {
            (x * a.batches as f64 + y * b.batches as f64) / (batches.max(1) as f64)
        };
        let runs = vec![a.rate.clone(), b.rate.clone()];
        Self {
            rate: Rate::combined(&runs),
            runs,
            batches,
            mean_batch_events: mean(a.mean_batch_events, b.mean_batch_events),
            mean_batch_ms: mean(a.mean_batch_ms, b.mean_batch_ms),
            retries: a.retries + b.retries,
            mysql_prepares_per_batch: a
                .mysql_prepares_per_batch
                .zip(b.mysql_prepares_per_batch)
                .map(|(x, y)| mean(x, y)),
            mysql_executes_per_batch: a
                .mysql_executes_per_batch
                .zip(b.mysql_executes_per_batch)
                .map(|(x, y)| mean(x, y)),
        }
    }
}

/// End offset of every partition (the fill leaves them at 0 .. count).
async fn end_offsets(config: &Config, topic: &str, partitions: usize) -> anyhow::Result<Vec<i64>> {
    let config = config.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = prism_platform::clients::kafka_client_config(&config.kafka)
            .create()
            .context("creating a Kafka client")?;
        let timeout = Duration::from_millis(config.kafka.request_timeout_ms.max(1_000));
        let mut ends = Vec::with_capacity(partitions);
        for partition in 0..partitions {
            let p = i32::try_from(partition)?;
            let (low, high) = client
                .fetch_watermarks(&topic, p, timeout)
                .with_context(|| format!("reading the offsets of {topic}/{p}"))?;
            if low != 0 {
                bail!("{topic}/{p} starts at offset {low}, not 0");
            }
            ends.push(high);
        }
        Ok(ends)
    })
    .await
    .map_err(|e| anyhow!("the offsets thread failed: {e}"))?
}

// ---------- 1. the fill ----------

struct Filled {
    rate: Rate,
    /// Partition of each account's records (from the delivery reports).
    partition_of: Vec<i32>,
}

/// Delivery reports: where each account's records went, and failures.
struct Deliveries {
    partition_of: Vec<AtomicI32>,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, account: usize) {
        match result {
            Ok(message) => {
                if let Some(slot) = self.partition_of.get(account) {
                    slot.store(message.partition(), Ordering::Relaxed);
                }
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                lock(&self.first_error).get_or_insert_with(|| error.to_string());
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Produces the workload to `topic` (blocking; runs on its own thread).
fn produce(
    config: &Config,
    args: &Args,
    topic: &str,
    cancel: &AtomicBool,
) -> anyhow::Result<Filled> {
    let accounts = usize::try_from(args.accounts)?;
    let mut client = prism_platform::clients::kafka_client_config(&config.kafka);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "524288")
        .set("message.timeout.ms", "300000");
    for (key, value) in &config.kafka.client {
        client.set(key, value);
    }
    let producer: BaseProducer<Deliveries> = client
        .create_with_context(Deliveries {
            partition_of: (0..accounts).map(|_| AtomicI32::new(-1)).collect(),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
        .context("creating the Kafka producer")?;

    let bar = bar("filling the topic", Some(args.events));
    let cpu = CpuSnapshot::take(std::process::id(), &[]);
    let started = Instant::now();
    let workload = Workload::new(args.seed, accounts, args.events)?;
    for (sent, (account, envelope)) in workload.enumerate() {
        let record = prism_events::kafka::encode(&envelope);
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let mut pending = BaseRecord::<str, [u8], usize>::with_opaque_to(topic, account)
            .key(record.key.as_str())
            .payload(record.value.as_slice())
            .headers(headers);
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    pending = back;
                    producer.poll(Duration::from_millis(10));
                    if cancel.load(Ordering::Relaxed) {
                        bail!("interrupted");
                    }
                }
                Err((e, _)) => return Err(e).context("producing to the bench topic"),
            }
        }
        if sent % 1024 == 0 {
            producer.poll(Duration::ZERO);
            bar.set_position(sent as u64);
            if cancel.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .context("waiting for Kafka to acknowledge the bench events")?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let context = producer.context();
    let failed = context.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!(
            "{failed} bench events were not delivered, e.g. {}",
            lock(&context.first_error).clone().unwrap_or_default()
        );
    }
    let delivered = context.delivered.load(Ordering::Relaxed);
    if delivered != args.events {
        bail!(
            "Kafka acknowledged {delivered} bench events of {}",
            args.events
        );
    }
    let partition_of: Vec<i32> = context
        .partition_of
        .iter()
        .map(|p| p.load(Ordering::Relaxed))
        .collect();
    Ok(Filled {
        rate: Rate::of(args.events, elapsed).cpu(&cpu, std::process::id(), &[]),
        partition_of,
    })
}

// ---------- 2. ceiling A: raw Kafka consume ----------

/// Records when the group assigned partitions.
struct Assignment {
    at: Mutex<Option<Instant>>,
}

impl ClientContext for Assignment {}

impl ConsumerContext for Assignment {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if tpl.count() > 0 {
                lock(&self.at).get_or_insert_with(Instant::now);
            }
        }
    }
}

/// Reads the whole topic with the runtime's consumer settings (blocking).
fn consume(
    config: &Config,
    topic: &str,
    group: &str,
    ends: &[i64],
    cancel: &AtomicBool,
    timeout: Duration,
) -> anyhow::Result<ConsumeFigures> {
    let client = prism_projector::consumer_config(&config.kafka, group, &config.projector);
    let consumer: BaseConsumer<Assignment> = client
        .create_with_context(Assignment {
            at: Mutex::new(None),
        })
        .context("creating the Kafka consumer")?;
    let total: u64 = ends.iter().map(|e| u64::try_from(*e).unwrap_or(0)).sum();
    let bar = bar("ceiling A: kafka consume", Some(total));
    let started = Instant::now();
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("subscribing to {topic}"))?;

    let mut cpu = None;
    let mut remaining = ends.iter().filter(|e| **e > 0).count();
    let mut reached = vec![false; ends.len()];
    let mut count: u64 = 0;
    let mut bytes: u64 = 0;
    let mut errors: u64 = 0;
    let mut first_error = None;
    while remaining > 0 {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if started.elapsed() > timeout {
            bail!(
                "ceiling A: {count} of {total} records read in {} s (--timeout)",
                timeout.as_secs()
            );
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Ok(message)) => {
                if cpu.is_none() {
                    cpu = Some(CpuSnapshot::take(std::process::id(), &[]));
                }
                let record = prism_projector::record::Record::from_message(&message);
                drop(message);
                count += 1;
                bytes += (record.payload.as_ref().map_or(0, Vec::len)
                    + record.key.as_ref().map_or(0, Vec::len)
                    + record
                        .headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()) as u64;
                if let Some(end) = usize::try_from(record.partition)
                    .ok()
                    .and_then(|p| ends.get(p).zip(reached.get_mut(p)))
                {
                    if !*end.1 && record.offset + 1 >= *end.0 {
                        *end.1 = true;
                        remaining -= 1;
                    }
                }
                std::hint::black_box(&record);
                if count % 4096 == 0 {
                    bar.set_position(count);
                }
            }
            Some(Err(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let done = Instant::now();
    bar.finish_and_clear();
    consumer.unsubscribe();
    std::hint::black_box(bytes);
    if let Some(e) = first_error {
        eprintln!("prismctl: bench ledger: ceiling A: {errors} consumer errors, e.g. {e}");
    }
    let assigned = lock(&consumer.context().at).unwrap_or(started);
    Ok(ConsumeFigures {
        rate: match &cpu {
            Some(cpu) => {
                Rate::of(count, done.duration_since(assigned)).cpu(cpu, std::process::id(), &[])
            }
            None => Rate::of(count, done.duration_since(assigned)),
        },
        runs: Vec::new(),
        join_s: assigned.duration_since(started).as_secs_f64(),
        errors,
    })
}

// ---------- 3. ceiling B: raw MySQL write ----------

/// What one partition's writer did.
#[derive(Debug, Default)]
struct Written {
    events: u64,
    batches: u64,
    write_time: Duration,
    retries: u64,
}

async fn write_raw(
    config: &Config,
    args: &Args,
    database: &str,
    partition_of: &[i32],
    ends: &[i64],
    batch: usize,
) -> anyhow::Result<WriteFigures> {
    // The same events, in the order each partition holds them.
    let mut streams: Vec<Vec<Envelope>> = ends
        .iter()
        .map(|e| Vec::with_capacity(usize::try_from(*e).unwrap_or(0)))
        .collect();
    let accounts = usize::try_from(args.accounts)?;
    for (account, envelope) in Workload::new(args.seed, accounts, args.events)? {
        let partition = partition_of.get(account).copied().unwrap_or(-1);
        let Some(stream) = usize::try_from(partition)
            .ok()
            .and_then(|p| streams.get_mut(p))
        else {
            bail!("no delivery report placed account {account} on a partition");
        };
        stream.push(envelope);
    }
    for (partition, (stream, end)) in streams.iter().zip(ends).enumerate() {
        if i64::try_from(stream.len()).ok() != Some(*end) {
            bail!(
                "partition {partition} holds {end} records but the workload puts {} there",
                stream.len()
            );
        }
    }

    let ledger = Ledger::open(&config.mysql, &Names::ledger_config(config, database))
        .await
        .context("opening the ceiling's ledger database")?;
    let generation = ledger
        .live()
        .await
        .context("creating the ceiling's generation")?;
    let sink = MySqlSink::new(generation);
    settle(config).await;

    let bar = bar("ceiling B: mysql write", Some(args.events));
    let done = Arc::new(AtomicU64::new(0));
    let ticker = tick(bar.clone(), Arc::clone(&done));
    let mysql = mysql_server_pids();
    let statements = statement_counters(&sink.generation().pool).await;
    let cpu = CpuSnapshot::take(std::process::id(), &mysql);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (partition, stream) in streams.into_iter().enumerate() {
        let (sink, done) = (sink.clone(), Arc::clone(&done));
        let partition = i32::try_from(partition)?;
        tasks.spawn(write_partition(sink, partition, stream, batch, done));
    }
    let mut total = Written::default();
    let mut failure = None;
    while let Some(result) = tasks.join_next().await {
        match result.map_err(|e| anyhow!("a ceiling writer failed: {e}")) {
            Ok(Ok(w)) => {
                total.events += w.events;
                total.batches += w.batches;
                total.write_time += w.write_time;
                total.retries += w.retries;
            }
            Ok(Err(e)) | Err(e) => {
                failure.get_or_insert(e);
                tasks.abort_all();
            }
        }
    }
    let elapsed = started.elapsed();
    let (prepares, executes) = per_batch(
        statements,
        statement_counters(&sink.generation().pool).await,
        total.batches,
    );
    ticker.abort();
    bar.finish_and_clear();
    sink.generation().pool.close().await;
    ledger.control_pool().close().await;
    if let Some(e) = failure {
        return Err(e.context("ceiling B"));
    }
    let batches = total.batches.max(1) as f64;
    Ok(WriteFigures {
        rate: Rate::of(total.events, elapsed).cpu(&cpu, std::process::id(), &mysql),
        runs: Vec::new(),
        batches: total.batches,
        mean_batch_events: total.events as f64 / batches,
        mean_batch_ms: total.write_time.as_secs_f64() * 1_000.0 / batches,
        retries: total.retries,
        mysql_prepares_per_batch: prepares,
        mysql_executes_per_batch: executes,
    })
}

/// Writer of the ceiling's position rows.
const RAW_WRITER: &str = "prismctl-bench/raw-ceiling";

/// One partition's events, folded and written in batches as the projector's worker would.
async fn write_partition(
    sink: MySqlSink,
    partition: i32,
    events: Vec<Envelope>,
    batch: usize,
    done: Arc<AtomicU64>,
) -> anyhow::Result<Written> {
    let mut written = Written::default();
    let mut state = HashMap::new();
    let mut expected: Option<i64> = None;
    let mut offset: i64 = -1;
    for chunk in events.chunks(batch) {
        let mut writes = fold_batch(&mut state, chunk)
            .map_err(|e| anyhow!("partition {partition}: the fold refused {e}"))?;
        let mut versions: HashMap<Uuid, (u64, Uuid)> = HashMap::with_capacity(chunk.len());
        for e in chunk {
            versions.insert(e.account_id.0, (e.account_version, e.id));
        }
        writes.versions = versions
            .into_iter()
            .map(|(account_id, (version, event_id))| AccountVersion {
                account_id,
                version,
                event_id,
            })
            .collect();
        offset += i64::try_from(chunk.len())?;
        let last = chunk.last();
        writes.position = Some(PositionUpdate {
            partition,
            expected,
            offset,
            event_id: last.map(|e| e.id),
            event_time: last.map(|e| e.time),
            writer: RAW_WRITER.into(),
        });
        let began = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            match sink.write_rows(&writes).await {
                Ok(()) => break,
                Err(SinkError::Transient(e)) if attempt < 5 => {
                    attempt += 1;
                    written.retries += 1;
                    tracing::debug!(partition, attempt, error = %e, "ceiling write retried");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(e) => bail!("partition {partition}, batch at offset {offset}: {e}"),
            }
        }
        written.write_time += began.elapsed();
        written.batches += 1;
        written.events += chunk.len() as u64;
        expected = Some(offset);
        done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(written)
}

/// Waits (at most 30 s) while InnoDB is flushing dirty pages (their count keeps falling), so
/// one phase's writes weigh as little as possible on the next one. MariaDB with its default
/// `innodb_max_dirty_pages_pct_lwm = 0` does not flush in the background at all: then this
/// returns after a second. Best effort: silent if the status cannot be read.
async fn settle(config: &Config) {
    let Ok(pool) = prism_platform::clients::mysql(&config.mysql).await else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last: Option<u64> = None;
    while Instant::now() < deadline {
        let dirty: Result<(String, String), _> =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
                .fetch_one(&pool)
                .await;
        let Some(pages) = dirty.ok().and_then(|(_, v)| v.parse::<u64>().ok()) else {
            break;
        };
        // 1,000 pages of 16 KiB: a few MB left, or no progress in the last second.
        if pages <= 1_000 || last.is_some_and(|l| pages >= l) {
            break;
        }
        last = Some(pages);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    pool.close().await;
}

// ---------- 4. the projector ----------

/// prism-ledger running as a child process.
struct Child {
    process: tokio::process::Child,
    pid: u32,
}

impl Child {
    /// SIGTERM (the `kill` command: no libc here), then waits up to a minute; kills it if
    /// it does not stop.
    async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.process.try_wait()? {
            return Ok(status);
        }
        let sent = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await
            .context("running kill -TERM")?;
        if !sent.success() {
            // It may have exited between the check and the signal.
            if let Some(status) = self.process.try_wait()? {
                return Ok(status);
            }
            bail!("kill -TERM {} failed ({sent})", self.pid);
        }
        match tokio::time::timeout(Duration::from_secs(60), self.process.wait()).await {
            Ok(status) => status.context("waiting for prism-ledger"),
            Err(_) => {
                let _ = self.process.kill().await;
                bail!("prism-ledger did not stop within 60 s of SIGTERM; killed it")
            }
        }
    }
}

/// A free local port (bound, read, released).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `USER_HZ`: 100 on every Linux architecture Prism runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of `pid`, in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One RSS sample.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    stored: u64,
    rss_kib: u64,
}

async fn project(
    config: &Config,
    args: &Args,
    binary: &Path,
    names: &Names,
    ends: &[i64],
    slot: &mut Option<Child>,
) -> anyhow::Result<ProjectorFigures> {
    let total: u64 = ends.iter().map(|e| u64::try_from(*e).unwrap_or(0)).sum();
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let log =
        File::create(&names.log).with_context(|| format!("creating {}", names.log.display()))?;
    let log_err = log.try_clone().context("opening the log twice")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building an HTTP client")?;

    let status_pool = prism_platform::clients::mysql(&config.mysql).await.ok();
    let statements = match &status_pool {
        Some(pool) => statement_counters(pool).await,
        None => None,
    };
    let started = Instant::now();
    let process = tokio::process::Command::new(binary)
        .env("PRISM_KAFKA__TOPIC", &names.topic)
        .env("PRISM_LEDGER__DATABASE", &names.database)
        .env("PRISM_LEDGER__GROUP_ID", &names.group)
        .env("PRISM_LEDGER__LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = process
        .id()
        .ok_or_else(|| anyhow!("prism-ledger exited at once"))?;
    let child = slot.insert(Child { process, pid });

    let bar = bar("projector (prism-ledger)", Some(total));
    bar.set_message("starting");
    // Its HTTP server answers once the live generation exists.
    loop {
        if let Some(status) = child.process.try_wait()? {
            bail!("prism-ledger exited during start-up ({status})");
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("prism-ledger did not answer /healthz within 120 s");
        }
        let healthy = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if healthy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ledger = Ledger::open(
        &config.mysql,
        &Names::ledger_config(config, &names.database),
    )
    .await
    .context("opening the projector's ledger")?;
    let generation = ledger
        .live()
        .await
        .context("opening the projector's live generation")?;

    let mut samples: Vec<Sample> = Vec::new();
    let mut first: Option<(Instant, u64)> = None;
    let mysql = mysql_server_pids();
    let mut cpu_first: Option<CpuSnapshot> = None;
    let mut failures = 0;
    let mut round: u64 = 0;
    let caught_up = loop {
        if let Some(status) = child.process.try_wait()? {
            bail!("prism-ledger exited while replaying ({status})");
        }
        if started.elapsed() > args.timeout {
            bail!(
                "prism-ledger had not caught up after {} s (--timeout)",
                args.timeout.as_secs()
            );
        }
        let stored = match partition_positions(&generation.pool).await {
            Ok(positions) => {
                failures = 0;
                positions
                    .iter()
                    .map(|p| {
                        let end = usize::try_from(p.partition)
                            .ok()
                            .and_then(|i| ends.get(i))
                            .copied()
                            .unwrap_or(0);
                        u64::try_from((p.offset + 1).clamp(0, end)).unwrap_or(0)
                    })
                    .sum::<u64>()
            }
            Err(e) => {
                failures += 1;
                if failures > 50 {
                    return Err(e).context("reading the projector's positions");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = Instant::now();
        if stored > 0 && first.is_none() {
            first = Some((now, stored));
            cpu_first = Some(CpuSnapshot::take(child.pid, &mysql));
            bar.set_message("");
        }
        if round % 5 == 0 || stored >= total {
            if let (Some(rss_kib), _) = memory_kib(child.pid) {
                samples.push(Sample {
                    at: now.duration_since(started),
                    stored,
                    rss_kib,
                });
            }
        }
        bar.set_position(stored);
        if stored >= total {
            break now;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();

    // Events stored in the steady window, for the CPU figures per event.
    let steady_stored = first.map_or(0, |(_, stored)| total - stored.min(total));
    let statements_after = match &status_pool {
        Some(pool) => statement_counters(pool).await,
        None => None,
    };
    if let Some(pool) = status_pool {
        pool.close().await;
    }
    let steady_cpu = cpu_first.map(|since| {
        let at = first.map_or(started, |(at, _)| at);
        Rate::of(steady_stored, caught_up.duration_since(at)).cpu(&since, child.pid, &mysql)
    });
    let metrics_text = match http.get(format!("{base}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(e) => {
            eprintln!("prismctl: bench ledger: reading prism-ledger's /metrics: {e}");
            String::new()
        }
    };
    let (_, hwm_kib) = memory_kib(child.pid);
    let status = child.stop().await?;
    *slot = None;
    generation.pool.close().await;
    drop(ledger);

    let elapsed = caught_up.duration_since(started);
    let (startup, steady_events, steady_elapsed) = match first {
        Some((at, stored)) => (
            at.duration_since(started),
            total - stored.min(total),
            caught_up.duration_since(at),
        ),
        None => (elapsed, 0, Duration::ZERO),
    };
    let with_startup = Rate::of(total, elapsed);
    let steady = steady_events > 0 && steady_elapsed > Duration::from_millis(50);
    let per_second = if steady {
        steady_events as f64 / steady_elapsed.as_secs_f64()
    } else {
        with_startup.per_second
    };
    let mut metrics = ProjectorMetrics::parse(
        &metrics_text,
        config.projector.batch_max_events.max(1),
        args.partitions,
        if steady { steady_elapsed } else { elapsed },
    );
    (
        metrics.mysql_prepares_per_batch,
        metrics.mysql_executes_per_batch,
    ) = per_batch(statements, statements_after, metrics.batches);
    Ok(ProjectorFigures {
        per_second,
        events: total,
        elapsed_s: with_startup.elapsed_s,
        per_second_with_startup: with_startup.per_second,
        startup_s: startup.as_secs_f64(),
        steady,
        steady_events,
        steady_elapsed_s: steady_elapsed.as_secs_f64(),
        steady_rate: steady_cpu.unwrap_or_else(|| Rate::of(0, Duration::ZERO)),
        memory: Memory::of(&samples, hwm_kib, total),
        metrics,
        exit_code: status.code(),
    })
}

impl Memory {
    fn of(samples: &[Sample], hwm_kib: Option<u64>, total: u64) -> Self {
        let at = |share: f64| {
            let target = (total as f64 * share).ceil() as u64;
            samples
                .iter()
                .find(|s| s.stored >= target)
                .map(|s| mib(s.rss_kib))
        };
        let largest = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        Self {
            peak_rss_mib: mib(hwm_kib.unwrap_or(0).max(largest)),
            start_mib: samples.first().map(|s| mib(s.rss_kib)),
            at_25_mib: at(0.25),
            at_50_mib: at(0.5),
            at_75_mib: at(0.75),
            at_100_mib: at(1.0),
            samples: samples
                .iter()
                .map(|s| {
                    (
                        (s.at.as_secs_f64() * 10.0).round() / 10.0,
                        s.stored,
                        (mib(s.rss_kib) * 10.0).round() / 10.0,
                    )
                })
                .collect(),
        }
    }
}

// ---------- prism-ledger's /metrics ----------

/// `(labels, value)` of every sample of metric `name` (exact name, any labels).
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            let close = rest.find('}')?;
            (&rest[..close], rest[close + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            return None;
        };
        let value = value.split_whitespace().next()?.parse::<f64>().ok()?;
        Some((labels, value))
    })
}

fn sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    samples(text, name)
        .filter(|(labels, _)| label.is_none_or(|l| labels.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

impl ProjectorMetrics {
    fn parse(text: &str, batch_max: usize, partitions: i32, window: Duration) -> Self {
        let batches = sum(text, "prism_projector_batch_records_count", None);
        let records = sum(text, "prism_projector_batch_records_sum", None);
        let seconds = sum(text, "prism_projector_batch_duration_seconds_sum", None);
        // Batches of at most `bound` records: the largest bucket bound below the maximum.
        let max = batch_max as f64;
        let small = samples(text, "prism_projector_batch_records_bucket")
            .filter_map(|(labels, v)| {
                let le = labels.split("le=\"").nth(1)?.split('"').next()?;
                let le: f64 = le.parse().ok()?;
                (le < max).then_some((le, v))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let busy = f64::from(partitions) * window.as_secs_f64();
        let per_batch = |x: f64| if batches > 0.0 { x / batches } else { 0.0 };
        Self {
            batches: batches as u64,
            mean_batch_records: per_batch(records),
            mean_batch_ms: per_batch(seconds) * 1_000.0,
            large_batch_bound: small.map(|(bound, _)| bound),
            large_batch_share: small
                .filter(|_| batches > 0.0)
                .map(|(_, s)| (batches - s) / batches),
            worker_busy_share: (busy > 0.0 && batches > 0.0).then(|| seconds / busy),
            applied: sum(
                text,
                "prism_projector_events_total",
                Some("outcome=\"applied\""),
            ) as u64,
            skipped: sum(
                text,
                "prism_projector_events_total",
                Some("outcome=\"skipped\""),
            ) as u64,
            dead_lettered: sum(
                text,
                "prism_projector_events_total",
                Some("outcome=\"dead_lettered\""),
            ) as u64,
            sink_errors: sum(text, "prism_projector_sink_errors_total", None) as u64,
            mysql_prepares_per_batch: None,
            mysql_executes_per_batch: None,
        }
    }
}

// ---------- the workload ----------

/// 2025-01-01T00:00:00Z in microseconds: the first event's time.
const START_US: i64 = 1_735_689_600_000_000;
/// The events' times spread over 30 days (so daily totals have many days).
const SPAN_US: i64 = 30 * 86_400 * 1_000_000;
/// The command service's bound on one amount (`prism_command::account::MAX_AMOUNT_MINOR`).
const MAX_AMOUNT_MINOR: i64 = prism_command::account::MAX_AMOUNT_MINOR;

const MARKETS: [(&str, &str); 7] = [
    ("DE", "EUR"),
    ("FR", "EUR"),
    ("ES", "EUR"),
    ("NL", "EUR"),
    ("GB", "GBP"),
    ("US", "USD"),
    ("JP", "JPY"),
];

const MERCHANTS: [(&str, &str, &str); 12] = [
    ("Rewe City Berlin", "5411", "DE"),
    ("Carrefour Market Lyon", "5411", "FR"),
    ("Tesco Express Leeds", "5411", "GB"),
    ("Café Central Wien", "5814", "AT"),
    ("Shell Hamburg", "5541", "DE"),
    ("Deutsche Bahn", "4111", "DE"),
    ("Fnac Paris", "5732", "FR"),
    ("Boots Manchester", "5912", "GB"),
    ("Amazon EU", "5999", "LU"),
    ("Steam Games", "5816", "US"),
    ("Uber Trip", "4121", "NL"),
    ("Ristorante Roma", "5812", "IT"),
];

const DEPOSITS: [&str; 4] = ["salary", "transfer", "refund", "cash deposit"];

/// One account as the generator knows it (what `decide` would check).
#[derive(Debug, Clone)]
struct Sim {
    id: AccountId,
    market: usize,
    version: u64,
    balance: i64,
    frozen: bool,
    limit: i64,
    /// UTC day (days since the epoch) of `withdrawn`.
    day: i64,
    withdrawn: i64,
}

/// The seeded workload: every account opened, then a mix of events on random accounts.
/// Yields `(account index, envelope)`; the same arguments give the same events.
#[derive(Debug)]
struct Workload {
    rng: ChaCha8Rng,
    sims: Vec<Sim>,
    /// Country, currency, minor units per major unit.
    markets: Vec<(Country, Currency, i64)>,
    merchants: Vec<(String, String, Country)>,
    total: u64,
    next: u64,
    step_us: i64,
}

impl Workload {
    fn new(seed: u64, accounts: usize, events: u64) -> anyhow::Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let markets = MARKETS
            .iter()
            .map(|(country, currency)| {
                let currency = Currency::parse(currency)?;
                let scale = 10_i64.pow(u32::from(currency.exponent()));
                Ok((Country::parse(country)?, currency, scale))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let merchants = MERCHANTS
            .iter()
            .map(|(name, mcc, country)| {
                Ok((
                    (*name).to_owned(),
                    (*mcc).to_owned(),
                    Country::parse(country)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sims = (0..accounts)
            .map(|_| {
                let market = rng.gen_range(0..markets.len());
                Sim {
                    id: AccountId(uuid::Builder::from_random_bytes(rng.gen()).into_uuid()),
                    market,
                    version: 0,
                    balance: 0,
                    frozen: false,
                    limit: 5_000 * markets[market].2,
                    day: -1,
                    withdrawn: 0,
                }
            })
            .collect();
        let step_us = (SPAN_US / i64::try_from(events.max(1)).unwrap_or(i64::MAX)).max(1);
        Ok(Self {
            rng,
            sims,
            markets,
            merchants,
            total: events,
            next: 0,
            step_us,
        })
    }

    /// A UUIDv7 at `micros`, its random part from the seeded generator.
    fn uuid_at(rng: &mut ChaCha8Rng, micros: i64) -> Uuid {
        let millis = u64::try_from(micros / 1_000).unwrap_or(0);
        uuid::Builder::from_unix_timestamp_millis(millis, &rng.gen()).into_uuid()
    }

    fn event(&mut self, index: usize, account: usize, micros: i64) -> AccountEvent {
        let Self {
            rng,
            sims,
            markets,
            merchants,
            ..
        } = self;
        let sim = &mut sims[account];
        let (country, currency, scale) = markets[sim.market];
        if sim.version == 0 {
            return AccountEvent::AccountOpened(AccountOpened {
                holder_name: format!("Bench Holder {index}"),
                email: format!("holder.{index}@bench.example.org"),
                country,
                currency,
                daily_withdrawal_limit_minor: sim.limit,
            });
        }
        let day = micros.div_euclid(86_400_000_000);
        if sim.day != day {
            sim.day = day;
            sim.withdrawn = 0;
        }
        let deposit = |rng: &mut ChaCha8Rng, sim: &mut Sim| {
            let amount = rng.gen_range(10..=2_000) * scale + rng.gen_range(0..scale);
            sim.balance += amount;
            AccountEvent::MoneyDeposited(MoneyDeposited {
                amount_minor: amount,
                description: Some(DEPOSITS[rng.gen_range(0..DEPOSITS.len())].to_owned()),
            })
        };
        let r: f64 = rng.gen();
        if sim.frozen {
            return if r < 0.3 {
                sim.frozen = false;
                AccountEvent::AccountUnfrozen(AccountUnfrozen {})
            } else if r < 0.65 {
                deposit(rng, sim)
            } else {
                let payment = Self::payment(rng, merchants, scale);
                AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
                    payment,
                    decline_reason: DeclineReason::AccountFrozen,
                })
            };
        }
        if r < 0.004 {
            sim.frozen = true;
            return AccountEvent::AccountFrozen(AccountFrozen {
                reason: "suspected card fraud".into(),
            });
        }
        if r < 0.36 {
            return deposit(rng, sim);
        }
        if r < 0.56 {
            let amount = rng.gen_range(20..=400) * scale;
            if amount <= sim.balance && sim.withdrawn + amount <= sim.limit {
                sim.balance -= amount;
                sim.withdrawn += amount;
                let channel = match rng.gen_range(0..10) {
                    0..=5 => WithdrawalChannel::Atm,
                    6..=7 => WithdrawalChannel::Online,
                    _ => WithdrawalChannel::Branch,
                };
                return AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
                    amount_minor: amount,
                    description: None,
                    channel,
                });
            }
            return deposit(rng, sim);
        }
        let mut payment = Self::payment(rng, merchants, scale);
        if rng.gen_bool(0.001) {
            payment.amount_minor = MAX_AMOUNT_MINOR + rng.gen_range(1..1_000);
            return AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
                payment,
                decline_reason: DeclineReason::AmountOutOfRange,
            });
        }
        if payment.amount_minor > sim.balance {
            return AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
                payment,
                decline_reason: DeclineReason::InsufficientFunds,
            });
        }
        sim.balance -= payment.amount_minor;
        AccountEvent::CardPaymentApproved(CardPaymentApproved { payment })
    }

    fn payment(
        rng: &mut ChaCha8Rng,
        merchants: &[(String, String, Country)],
        scale: i64,
    ) -> CardPayment {
        let (name, mcc, country) = &merchants[rng.gen_range(0..merchants.len())];
        CardPayment {
            amount_minor: rng.gen_range(1..=150) * scale + rng.gen_range(0..scale),
            merchant_name: name.clone(),
            merchant_category: mcc.clone(),
            merchant_country: *country,
            channel: if rng.gen_bool(0.7) {
                CardChannel::Pos
            } else {
                CardChannel::Online
            },
        }
    }
}

impl Iterator for Workload {
    type Item = (usize, Envelope);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let index = usize::try_from(self.next).ok()?;
        self.next += 1;
        let micros = START_US + i64::try_from(index).ok()? * self.step_us;
        let time: DateTime<Utc> = DateTime::from_timestamp_micros(micros)?;
        let account = if index < self.sims.len() {
            index
        } else {
            self.rng.gen_range(0..self.sims.len())
        };
        let event = self.event(index, account, micros);
        let sim = &mut self.sims[account];
        sim.version += 1;
        let (id, version) = (sim.id, sim.version);
        let rng = &mut self.rng;
        Some((
            account,
            Envelope {
                id: Self::uuid_at(rng, micros),
                source: "/prism/command".into(),
                account_id: id,
                time,
                account_version: version,
                correlation_id: Some(Self::uuid_at(rng, micros).to_string()),
                causation_id: Some(Self::uuid_at(rng, micros).to_string()),
                event,
            },
        ))
    }
}

// ---------- progress and output ----------

fn bar(label: &str, len: Option<u64>) -> ProgressBar {
    let (bar, template) = match len {
        Some(n) => (
            ProgressBar::new(n),
            "{spinner} {prefix:<26} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} \
             {per_sec:>14} ETA {eta} {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {prefix:<26} [{elapsed_precise}] {msg}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn tick(bar: ProgressBar, done: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(200));
        loop {
            interval.tick().await;
            bar.set_position(done.load(Ordering::Relaxed));
        }
    })
}

fn opt1(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn opt_mib(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn print_report(r: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "bench ledger: {} events on {} accounts, {} partitions, batches of at most {} \
         (topic {}, seed {})",
        r.events, r.accounts, r.partitions, r.batch_max_events, r.topic, r.seed
    );
    let _ = writeln!(
        out,
        "{:<32} {:>9} {:>8} {:>10} {:>6} {:>10} {:>10}  runs before/after",
        "", "events", "seconds", "events/s", "busy", "client µs", "mysql µs"
    );
    let opt = |v: Option<f64>, scale: f64, unit: &str| {
        v.map_or_else(|| "-".into(), |v| format!("{:.0}{unit}", v * scale))
    };
    let line = |out: &mut std::io::StdoutLock<'_>, name: &str, rate: &Rate, runs: &[Rate]| {
        let each: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.0}", r.per_second))
            .collect();
        let _ = writeln!(
            out,
            "{name:<32} {:>9} {:>8.2} {:>10.0} {:>6} {:>10} {:>10}  {}",
            rate.events,
            rate.elapsed_s,
            rate.per_second,
            opt(rate.machine_cpu_busy, 100.0, " %"),
            opt(rate.client_cpu_us_per_event, 1.0, ""),
            opt(rate.mysql_cpu_us_per_event, 1.0, ""),
            each.join(" / ")
        );
    };
    let p = &r.projector;
    line(&mut out, "fill (produce, for reference)", &r.produce, &[]);
    line(
        &mut out,
        "ceiling A: raw Kafka consume",
        &r.kafka_consume.rate,
        &r.kafka_consume.runs,
    );
    line(
        &mut out,
        "ceiling B: raw MySQL write",
        &r.mysql_write.rate,
        &r.mysql_write.runs,
    );
    let mut steady = p.steady_rate.clone();
    steady.per_second = p.per_second;
    line(
        &mut out,
        if p.steady {
            "projector (after start-up)"
        } else {
            "projector (from start)"
        },
        &steady,
        &[],
    );
    let _ = writeln!(
        out,
        "{:<32} {:>9} {:>8.2} {:>10.0}",
        "projector (from process start)", p.events, p.elapsed_s, p.per_second_with_startup
    );
    let _ = writeln!(
        out,
        "ratio projector ÷ lower ceiling ({}): {:.3}   (with start-up: {:.3})   goal {:.1}: {}",
        r.lower_ceiling,
        r.ratio,
        r.ratio_with_startup,
        r.goal,
        if r.goal_met { "met" } else { "NOT met" }
    );
    let _ = writeln!(
        out,
        "ceiling A: group join {:.1} s (not timed); ceiling B: {} transactions, {:.0} events and \
         {:.1} ms each, {} retried; MySQL prepares/executes per transaction {} / {}",
        r.kafka_consume.join_s,
        r.mysql_write.batches,
        r.mysql_write.mean_batch_events,
        r.mysql_write.mean_batch_ms,
        r.mysql_write.retries,
        opt1(r.mysql_write.mysql_prepares_per_batch),
        opt1(r.mysql_write.mysql_executes_per_batch)
    );
    for reason in &r.disturbed {
        let _ = writeln!(out, "DISTURBED: {reason}");
    }
    let m = &p.metrics;
    let _ = writeln!(
        out,
        "projector: start-up {:.1} s; {} batches, {:.0} records and {:.1} ms each, {} with more \
         than {} records, workers busy {}; applied {}, skipped {}, dead-lettered {}, sink \
         errors {}; MySQL prepares/executes per batch {} / {}",
        p.startup_s,
        m.batches,
        m.mean_batch_records,
        m.mean_batch_ms,
        m.large_batch_share
            .map_or_else(|| "-".into(), |s| format!("{:.0} %", s * 100.0)),
        m.large_batch_bound
            .map_or_else(|| "-".into(), |b| format!("{b:.0}")),
        m.worker_busy_share
            .map_or_else(|| "-".into(), |s| format!("{:.0} %", s * 100.0)),
        m.applied,
        m.skipped,
        m.dead_lettered,
        m.sink_errors,
        opt1(m.mysql_prepares_per_batch),
        opt1(m.mysql_executes_per_batch)
    );
    let mem = &p.memory;
    let _ = writeln!(
        out,
        "prism-ledger RSS MiB: peak {:.1}; start {}, 25 % {}, 50 % {}, 75 % {}, 100 % {}; exit code {}",
        mem.peak_rss_mib,
        opt_mib(mem.start_mib),
        opt_mib(mem.at_25_mib),
        opt_mib(mem.at_50_mib),
        opt_mib(mem.at_75_mib),
        opt_mib(mem.at_100_mib),
        p.exit_code
            .map_or_else(|| "none (signal)".into(), |c| c.to_string())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_is_reproducible_and_folds_without_rejection() {
        let a: Vec<(usize, Envelope)> = Workload::new(7, 20, 2_000).expect("workload").collect();
        let b: Vec<(usize, Envelope)> = Workload::new(7, 20, 2_000).expect("workload").collect();
        assert_eq!(a.len(), 2_000);
        assert_eq!(a, b);
        // Every account is opened first, versions are consecutive, times increase.
        let mut versions = HashMap::new();
        let mut last_time = None;
        for (i, (account, envelope)) in a.iter().enumerate() {
            if i < 20 {
                assert_eq!(*account, i);
                assert!(matches!(envelope.event, AccountEvent::AccountOpened(_)));
            }
            let v = versions.entry(*account).or_insert(0);
            *v += 1;
            assert_eq!(envelope.account_version, *v);
            assert!(last_time < Some(envelope.time));
            last_time = Some(envelope.time);
            // Round trip through the Kafka binding.
            let record = prism_events::kafka::encode(envelope);
            let decoded = prism_events::kafka::decode(
                Some(record.key.as_bytes()),
                record.headers.iter().map(|(k, v)| (*k, v.as_bytes())),
                Some(&record.value),
            )
            .expect("decodes");
            assert_eq!(&decoded, envelope);
        }
        let events: Vec<Envelope> = a.into_iter().map(|(_, e)| e).collect();
        let mut state = HashMap::new();
        let writes = fold_batch(&mut state, &events).expect("folds");
        assert!(state.values().all(|row| row.balance_minor >= 0));
        assert!(!writes.lines.is_empty() && !writes.daily.is_empty());
        let types: std::collections::HashSet<&str> =
            events.iter().map(Envelope::event_type).collect();
        for t in [
            "prism.account.opened",
            "prism.account.money_deposited",
            "prism.account.money_withdrawn",
            "prism.account.card_payment_approved",
            "prism.account.card_payment_declined",
        ] {
            assert!(types.contains(t), "no {t} in {types:?}");
        }
    }

    #[test]
    fn metrics_are_read_from_the_exposition_text() {
        let text = "\
# HELP prism_projector_batch_records Records per batch.
prism_projector_batch_records_bucket{projector=\"ledger\",le=\"256\"} 2
prism_projector_batch_records_bucket{projector=\"ledger\",le=\"512\"} 3
prism_projector_batch_records_bucket{projector=\"ledger\",le=\"1024\"} 10
prism_projector_batch_records_sum{projector=\"ledger\"} 8000
prism_projector_batch_records_count{projector=\"ledger\"} 10
prism_projector_batch_duration_seconds_sum{projector=\"ledger\"} 2.5
prism_projector_batch_duration_seconds_count{projector=\"ledger\"} 10
prism_projector_events_total{outcome=\"applied\",projector=\"ledger\",type=\"a\"} 7000
prism_projector_events_total{outcome=\"applied\",projector=\"ledger\",type=\"b\"} 1000
prism_projector_events_total{outcome=\"dead_lettered\",projector=\"ledger\",type=\"b\"} 1
";
        let m = ProjectorMetrics::parse(text, 1_000, 2, Duration::from_secs(5));
        assert_eq!(m.batches, 10);
        assert!((m.mean_batch_records - 800.0).abs() < 1e-9);
        assert!((m.mean_batch_ms - 250.0).abs() < 1e-9);
        assert_eq!(m.large_batch_bound, Some(512.0));
        assert_eq!(m.large_batch_share, Some(0.7));
        assert_eq!(m.worker_busy_share, Some(0.25));
        assert_eq!((m.applied, m.skipped, m.dead_lettered), (8_000, 0, 1));
    }

    #[test]
    fn memory_is_read_at_each_quarter() {
        let s = |secs, stored, mib: u64| Sample {
            at: Duration::from_secs(secs),
            stored,
            rss_kib: mib * 1024,
        };
        let samples = [s(1, 0, 40), s(2, 30, 50), s(3, 60, 52), s(4, 100, 53)];
        let m = Memory::of(&samples, Some(60 * 1024), 100);
        assert_eq!(m.start_mib, Some(40.0));
        assert_eq!(m.at_25_mib, Some(50.0));
        assert_eq!(m.at_50_mib, Some(52.0));
        assert_eq!(m.at_75_mib, Some(53.0));
        assert_eq!(m.at_100_mib, Some(53.0));
        assert_eq!(m.peak_rss_mib, 60.0);
    }
}
