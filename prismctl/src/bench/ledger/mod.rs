//! `prismctl bench ledger`: how fast prism-ledger replays a topic, next to the two ceilings
//! it cannot beat on this machine, all measured in one run.
//!
//! 1. **Fill.** A fresh topic `bench-ledger-<id>` (`--partitions`, default 12) receives
//!    `--events` synthetic but valid events, produced straight to Kafka with rdkafka
//!    (idempotent, lz4 like the relay, batched), keyed by account and encoded with
//!    [`prism_events::kafka::encode`], so the default partitioner spreads the accounts as it
//!    does for the relay. `--accounts` accounts are opened first; then the seeded
//!    [`crate::traffic`] sequence, decided by the command service's own rules, follows:
//!    deposits, withdrawals (within balance and daily limit), approved and declined card
//!    payments at merchants at home and abroad, card-testing bursts, freezes and unfreezes,
//!    with consecutive account versions and event times increasing over 30 days. It is a pure
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
//!
//! # Files
//! This file holds the arguments, the names of what a run creates and the order of the
//! phases; `workload` the events, `kafka` the topic, the fill and ceiling A, `mysql`
//! ceiling B, `child` the projector as a child process and its `/metrics`, `figures` what
//! is measured, `report` the progress bars and the printed report.

mod child;
// The topic, the figures, the bars and the workload serve `bench search` too.
pub(super) mod figures;
pub(super) mod kafka;
mod mysql;
pub(super) mod report;
pub(super) mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use prism_ledger::store::Ledger;
use prism_ledger::LedgerConfig;
use prism_platform::Config;
use uuid::Uuid;

use crate::loadgen::parse_duration;
use crate::sample;

use child::{project, Child};
use figures::{ConsumeFigures, Report, WriteFigures};
use kafka::{consume_once, create_topic, delete_groups, delete_topics, end_offsets, produce};
use mysql::{settle, write_raw};
use report::print_report;

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

    /// `config`'s `[ledger]` section with the control database `database`.
    fn ledger_config(config: &Config, database: &str) -> anyhow::Result<LedgerConfig> {
        let mut ledger = LedgerConfig::from_config(config)?;
        database.clone_into(&mut ledger.database);
        Ok(ledger)
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
    let ledger = Ledger::open(&config.mysql, &Names::ledger_config(config, database)?).await?;
    ledger.drop_everything().await
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
    let mysql_at_start = sample::mysql_server_pids();
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
    let mysql_at_end = sample::mysql_server_pids();
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
