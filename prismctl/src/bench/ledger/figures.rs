//! What `bench ledger` measures: rates with their CPU cost, each phase's figures and
//! the report (`--json` prints it).

use std::time::Duration;

use serde::Serialize;

use crate::sample;

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
    /// CPU time per event of the sink's server when it runs on this machine (MySQL's
    /// `mariadbd` or `mysqld` for the ledger, `redis-server` for the Redis read models), in
    /// microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_event: Option<f64>,
}

/// CPU counters at the start of a measured window.
#[derive(Debug, Clone, Copy)]
pub(in crate::bench) struct CpuSnapshot {
    /// The machine's (busy, total) jiffies.
    machine: Option<(u64, u64)>,
    /// The client's and the local sink server's user + system ticks.
    client: Option<u64>,
    server: Option<u64>,
}

impl CpuSnapshot {
    pub(in crate::bench) fn take(client: u32, server: &[u32]) -> Self {
        Self {
            machine: sample::machine_jiffies(),
            client: sample::process_ticks(client),
            server: sample::ticks_of(server),
        }
    }
}

impl Rate {
    pub(in crate::bench) fn of(events: u64, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-6);
        Self {
            events,
            elapsed_s: secs,
            per_second: events as f64 / secs,
            machine_cpu_busy: None,
            client_cpu_us_per_event: None,
            server_cpu_us_per_event: None,
        }
    }

    /// Several runs as one: their events over their time; busy shares weighted by time.
    pub(in crate::bench) fn combined(runs: &[Rate]) -> Self {
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
        rate.server_cpu_us_per_event = per_event(|r| r.server_cpu_us_per_event);
        rate
    }

    /// Fills the CPU figures of the window that started at `since`.
    pub(in crate::bench) fn cpu(
        mut self,
        since: &CpuSnapshot,
        client: u32,
        server: &[u32],
    ) -> Self {
        self.machine_cpu_busy = sample::busy_since(since.machine);
        let per_event = |before: Option<u64>, after: Option<u64>| {
            let ticks = after?.checked_sub(before?)?;
            (self.events > 0)
                .then(|| ticks as f64 / sample::ticks_per_second() * 1e6 / self.events as f64)
        };
        self.client_cpu_us_per_event = per_event(since.client, sample::process_ticks(client));
        self.server_cpu_us_per_event = per_event(since.server, sample::ticks_of(server));
        self
    }
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

impl ConsumeFigures {
    pub(super) fn combined(a: Self, b: Self) -> Self {
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
    pub(super) fn combined(a: Self, b: Self) -> Self {
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
