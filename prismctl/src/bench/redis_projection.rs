//! The projection phase of every Redis read model's bench (`bench dashboard`, `bench
//! fraud`): the projector (the kit's runtime with the model's `RedisCheckpoint` sink) and
//! the raw ceiling of the same writes ([`RedisCheckpoint::prepare`], untimed, then
//! [`RedisCheckpoint::write_raw`]: no `WATCH`, no reads, no fence), each on a fresh copy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use prism_events::Envelope;
use prism_platform::config::ProjectorConfig;
use prism_platform::Config;
use prism_projector::checkpoint::redis::{Accounts, Origin, Prepared, RedisCheckpoint, RedisModel};
use prism_projector::{PositionUpdate, Projection, Runtime, Shared, Sink as _};
use serde::Serialize;
use tokio::task::JoinSet;

use super::ledger::figures::{CpuSnapshot, Rate};
use super::ledger::kafka::{create_topic, end_offsets, produce_workload};
use super::ledger::report::{bar, tick};
use super::ledger::workload::{timed_workload, Timing};

/// The goal of every projector: its rate ÷ the raw ceiling.
pub const RATIO_GOAL: f64 = 0.8;

/// A Redis read model as its bench drives it.
#[async_trait]
pub trait Target: Send + Sync {
    type Model: RedisModel<Account: Clone>;

    /// The projector's short name (metric label).
    fn name(&self) -> &'static str;

    /// The runtime settings of its projector.
    fn runtime(&self) -> ProjectorConfig;

    /// A fresh copy: its number and its sink.
    async fn fresh(&self) -> anyhow::Result<(u32, RedisCheckpoint<Self::Model>)>;

    /// Drops a copy [`Target::fresh`] made.
    async fn abandon(&self, number: u32);

    /// The Redis commands a prepared batch's transaction holds.
    fn commands(prepared: &Prepared<Self::Model>) -> u64;
}

/// What the phase projects, and where.
#[derive(Debug, Clone)]
pub struct Workload {
    pub topic: String,
    pub group: String,
    pub events: u64,
    pub accounts: u64,
    pub partitions: i32,
    pub seed: u64,
    /// Events per second of event time (the events end now).
    pub event_rate: f64,
    /// Events per batch (default: the projector's `batch_max_events`).
    pub batch: Option<usize>,
    pub timeout: Duration,
    /// Keep the copies.
    pub keep: bool,
}

/// The phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionFigures {
    /// The projector, from its subscription (`Runtime::start` returned) to every
    /// partition's end stored (this process: the runtime, the fold, the sink). Ceiling A's
    /// clock also starts at its subscription, so both include the group join.
    pub projector: Rate,
    /// How long `Runtime::start` took before the clock started: the topic check and the
    /// dead-letter topic's creation (new for every bench run), then the subscription.
    pub projector_start_call_s: f64,
    /// The subscription to the first stored position (the group join included).
    pub projector_startup_s: Option<f64>,
    /// The projector's rate from its first stored position to the end, for reference (the
    /// ratio uses the rate from the start).
    pub projector_after_startup_per_second: Option<f64>,
    /// The raw ceiling: both runs together.
    pub raw_pipelined: Rate,
    pub raw_runs: Vec<Rate>,
    /// Pipelines of the ceiling (both runs) and the Redis commands they held.
    pub raw_batches: u64,
    pub raw_commands: u64,
    pub batch_events: usize,
    pub projector_batches: u64,
    pub projector_mean_batch_records: f64,
    /// Time the workers spent in batches (decode, plan, the sink's write), summed over the
    /// partitions: the rest of their time they waited for records.
    pub projector_batch_seconds: f64,
    pub applied: u64,
    pub dead_lettered: u64,
    pub sink_errors: u64,
    /// This process's resident memory at each quarter of the projector's run (MiB).
    pub projector_rss_mib: Vec<f64>,
    /// projector ÷ raw_pipelined.
    pub ratio: f64,
    pub goal: f64,
    pub goal_met: bool,
}

/// How often the end of the projection is looked for (a bias of half of it on average).
const POSITION_POLL: Duration = Duration::from_millis(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One partition's batches, folded: (events of the batch, its transaction).
type Folded<M> = Arc<Vec<(u64, Prepared<M>)>>;

/// The workload's events per partition, cut into batches of the runtime's size.
struct Streams {
    partitions: Vec<Vec<Vec<Envelope>>>,
    events: u64,
}

impl Streams {
    fn new(
        args: &Workload,
        timing: Timing,
        partition_of: &[i32],
        batch: usize,
    ) -> anyhow::Result<Self> {
        let mut events: Vec<Vec<Envelope>> = vec![Vec::new(); usize::try_from(args.partitions)?];
        let accounts = usize::try_from(args.accounts)?;
        for (account, envelope) in timed_workload(args.seed, accounts, args.events, timing) {
            let partition = partition_of.get(account).copied().unwrap_or(-1);
            let Some(stream) = usize::try_from(partition)
                .ok()
                .and_then(|p| events.get_mut(p))
            else {
                bail!("no delivery report placed account {account} on a partition");
            };
            stream.push(envelope);
        }
        Ok(Self {
            partitions: events
                .into_iter()
                .map(|stream| stream.chunks(batch).map(<[Envelope]>::to_vec).collect())
                .collect(),
            events: args.events,
        })
    }

    /// Every partition's batches folded into the transactions `sink` would send after its
    /// reads and checks, positions included (untimed).
    fn fold<M: RedisModel<Account: Clone>>(
        &self,
        sink: &RedisCheckpoint<M>,
    ) -> anyhow::Result<Vec<Folded<M>>> {
        let mut out = Vec::with_capacity(self.partitions.len());
        for (partition, batches) in self.partitions.iter().enumerate() {
            let mut accounts = Accounts::default();
            let mut folded = Vec::with_capacity(batches.len());
            let mut offset = -1_i64;
            for batch in batches {
                let expected = (offset >= 0).then_some(offset);
                offset += i64::try_from(batch.len())?;
                let last = batch.last();
                let position = PositionUpdate {
                    partition: i32::try_from(partition)?,
                    expected,
                    offset,
                    event_id: last.map(|e| e.id),
                    event_time: last.map(|e| e.time),
                    writer: "bench raw ceiling".into(),
                };
                let first = offset + 1 - i64::try_from(batch.len())?;
                let offsets: Vec<i64> = (first..=offset).collect();
                let origin = Origin {
                    partition: Some(i32::try_from(partition)?),
                    offsets: &offsets,
                };
                let prepared = sink
                    .prepare(&mut accounts, batch, origin, Some(position))
                    .map_err(|e| anyhow!("partition {partition}: the fold refused: {e}"))?;
                folded.push((batch.len() as u64, prepared));
            }
            out.push(Arc::new(folded));
        }
        Ok(out)
    }
}

struct RawRun {
    rate: Rate,
    batches: u64,
    commands: u64,
}

/// Writes the streams' writes with [`RedisCheckpoint::write_raw`] into a fresh copy, one
/// task per partition, all at once.
async fn write_raw<T: Target>(
    target: &T,
    streams: &Streams,
    args: &Workload,
    redis: &[u32],
) -> anyhow::Result<RawRun> {
    let (number, sink) = target.fresh().await.context("the ceiling's copy")?;
    let folded = streams.fold(&sink)?;
    let commands: u64 = folded
        .iter()
        .flat_map(|p| p.iter())
        .map(|(_, p)| T::commands(p))
        .sum();
    let bar = bar("raw Redis pipeline ceiling", Some(streams.events));
    let done = Arc::new(AtomicU64::new(0));
    let ticker = tick(bar.clone(), Arc::clone(&done));
    let cpu = CpuSnapshot::take(std::process::id(), redis);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (partition, batches) in folded.into_iter().enumerate() {
        let (sink, done) = (sink.clone(), Arc::clone(&done));
        tasks.spawn(async move {
            for (events, prepared) in batches.iter() {
                sink.write_raw(prepared)
                    .await
                    .with_context(|| format!("the ceiling's partition {partition}"))?;
                done.fetch_add(*events, Ordering::Relaxed);
            }
            anyhow::Ok(batches.len() as u64)
        });
    }
    let mut batches = 0;
    let deadline = tokio::time::sleep(args.timeout);
    tokio::pin!(deadline);
    let outcome = loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break Ok(()),
                Some(Ok(Ok(n))) => batches += n,
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(e)) => break Err(anyhow!("a ceiling writer failed: {e}")),
            },
            () = &mut deadline => break Err(anyhow!("the raw ceiling took longer than --timeout")),
        }
    };
    let elapsed = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    outcome?;
    if !args.keep {
        target.abandon(number).await;
    }
    Ok(RawRun {
        rate: Rate::of(streams.events, elapsed).cpu(&cpu, std::process::id(), redis),
        batches,
        commands,
    })
}

struct ProjectorRun {
    rate: Rate,
    start_call: Duration,
    rss: Vec<f64>,
    /// Time the workers spent in batches (decode, plan, the sink's write), all together.
    batch_seconds: f64,
    /// The subscription to the first stored position (group join included), and the
    /// events stored by then.
    startup: Option<(Duration, u64)>,
    batches: u64,
    records: f64,
    applied: u64,
    dead_lettered: u64,
    sink_errors: u64,
}

async fn project<T: Target>(
    config: &Config,
    target: &T,
    args: &Workload,
    ends: &[i64],
    cancel: &AtomicBool,
    redis: &[u32],
) -> anyhow::Result<ProjectorRun> {
    let runtime = target.runtime();
    let runtime = match args.batch {
        Some(batch) => ProjectorConfig {
            batch_max_events: batch,
            ..runtime
        },
        None => runtime,
    };
    let (number, sink) = target.fresh().await.context("the projector's copy")?;
    let sink = Arc::new(sink);
    let registry = prometheus::Registry::new();
    let shared = Shared::new(&registry, target.name(), &runtime)?;
    let partitions: Vec<i32> = (0..args.partitions).collect();
    let total: u64 = ends.iter().map(|e| u64::try_from(*e).unwrap_or(0)).sum();

    let bar = bar("projector (kit runtime)", Some(total));
    let start_call = Instant::now();
    let running = Runtime::start(
        Projection {
            name: target.name().into(),
            group_id: args.group.clone(),
            topic: args.topic.clone(),
        },
        &config.kafka,
        &runtime,
        sink.clone(),
        shared,
    )
    .await
    .context("starting the projector runtime")?;
    let start_call = start_call.elapsed();
    let cpu = CpuSnapshot::take(std::process::id(), redis);
    let started = Instant::now();
    let mut startup = None;
    let mut rss = Vec::new();
    let outcome = loop {
        if cancel.load(Ordering::Relaxed) {
            break Err(anyhow!("interrupted"));
        }
        if started.elapsed() > args.timeout {
            break Err(anyhow!("the projector took longer than --timeout"));
        }
        if let Ok(positions) = sink.positions(&partitions).await {
            let mut stored = 0;
            let mut behind = false;
            for (partition, end) in ends.iter().enumerate() {
                let offset = positions
                    .iter()
                    .find(|p| usize::try_from(p.partition).ok() == Some(partition))
                    .map_or(-1, |p| p.offset);
                stored += u64::try_from((offset + 1).min(*end)).unwrap_or(0);
                behind |= offset + 1 < *end;
            }
            bar.set_position(stored);
            // At each quarter of the run.
            if total > 0 && stored * 4 >= total * (rss.len() as u64 + 1) && rss.len() < 4 {
                let (resident, _) = crate::sample::memory_kib(std::process::id());
                rss.push(resident.map_or(0.0, |kib| kib as f64 / 1024.0));
            }
            if startup.is_none() && !positions.is_empty() {
                startup = Some((started.elapsed(), stored));
            }
            if !behind {
                break Ok(started.elapsed());
            }
        }
        tokio::time::sleep(POSITION_POLL).await;
    };
    let rate = outcome.map(|elapsed| Rate::of(total, elapsed).cpu(&cpu, std::process::id(), redis));
    bar.finish_and_clear();
    if tokio::time::timeout(STOP_TIMEOUT, running.shut_down())
        .await
        .is_err()
    {
        tracing::warn!("the bench's projector runtime did not stop in time");
    }
    let rate = rate?;
    if !args.keep {
        target.abandon(number).await;
    }
    let families = registry.gather();
    let counter = |name: &str, label: Option<(&str, &str)>| -> f64 {
        families
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                label.is_none_or(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == k && l.value() == v)
                })
            })
            .map(|m| m.get_counter().value())
            .sum()
    };
    let (batches, records) = families
        .iter()
        .filter(|f| f.name() == "prism_projector_batch_records")
        .flat_map(|f| f.get_metric())
        .fold((0, 0.0), |(n, s), m| {
            let h = m.get_histogram();
            (n + h.get_sample_count(), s + h.get_sample_sum())
        });
    let batch_seconds: f64 = families
        .iter()
        .filter(|f| f.name() == "prism_projector_batch_duration_seconds")
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_histogram().get_sample_sum())
        .sum();
    let events = |outcome| counter("prism_projector_events_total", Some(("outcome", outcome)));
    Ok(ProjectorRun {
        start_call,
        batch_seconds,
        rss,
        rate,
        startup,
        batches,
        records,
        applied: events("applied") as u64,
        dead_lettered: events("dead_lettered") as u64,
        sink_errors: counter("prism_projector_sink_errors_total", None) as u64,
    })
}

/// Fills the topic, measures the raw ceiling, the projector, and the ceiling again.
pub async fn run<T: Target>(
    config: &Config,
    target: &T,
    args: &Workload,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<ProjectionFigures> {
    let batch = args
        .batch
        .unwrap_or(target.runtime().batch_max_events)
        .max(1);
    let partitions = usize::try_from(args.partitions).context("--partitions")?;
    let timing = Timing::ending_now(args.events, args.event_rate);

    create_topic(config, &args.topic, args.partitions)
        .await
        .with_context(|| format!("creating the bench topic {}", args.topic))?;
    let filled = {
        let (config, topic, cancel) = (config.clone(), args.topic.clone(), Arc::clone(cancel));
        let (seed, accounts, events) = (args.seed, args.accounts, args.events);
        tokio::task::spawn_blocking(move || {
            produce_workload(&config, seed, accounts, events, timing, &topic, &cancel)
        })
        .await
        .map_err(|e| anyhow!("the producing thread failed: {e}"))??
    };
    let ends = end_offsets(config, &args.topic, partitions).await?;
    let streams = Streams::new(args, timing, &filled.partition_of, batch)?;

    // Redis's own CPU is measured when it runs on this machine: next to this process's, it
    // shows which of the two bounds each run.
    let redis = crate::sample::redis_server_pids();
    let raw_1 = write_raw(target, &streams, args, &redis).await?;
    let run = project(config, target, args, &ends, cancel, &redis).await?;
    let raw_2 = write_raw(target, &streams, args, &redis).await?;

    let raw_runs = vec![raw_1.rate.clone(), raw_2.rate.clone()];
    let raw_pipelined = Rate::combined(&raw_runs);
    let ratio = run.rate.per_second / raw_pipelined.per_second.max(f64::MIN_POSITIVE);
    let after_startup = run.startup.and_then(|(at, stored)| {
        let secs = run.rate.elapsed_s - at.as_secs_f64();
        let events = run.rate.events.saturating_sub(stored);
        (secs > 0.0 && events > 0).then(|| events as f64 / secs)
    });
    Ok(ProjectionFigures {
        projector_startup_s: run.startup.map(|(at, _)| at.as_secs_f64()),
        projector_after_startup_per_second: after_startup,
        projector: run.rate,
        projector_start_call_s: run.start_call.as_secs_f64(),
        raw_pipelined,
        raw_runs,
        raw_batches: raw_1.batches + raw_2.batches,
        raw_commands: raw_1.commands + raw_2.commands,
        batch_events: batch,
        projector_batches: run.batches,
        projector_batch_seconds: run.batch_seconds,
        projector_mean_batch_records: run.records / run.batches.max(1) as f64,
        applied: run.applied,
        dead_lettered: run.dead_lettered,
        sink_errors: run.sink_errors,
        projector_rss_mib: run.rss,
        ratio,
        goal: RATIO_GOAL,
        goal_met: ratio >= RATIO_GOAL,
    })
}

/// The CPU each run cost per event (this process, the local Redis server) and how busy the
/// machine was: on a machine where Redis and the projector share the cores, the ceiling is
/// bound by Redis and the projector by the cores, and these figures show it.
pub fn cpu_line(p: &ProjectionFigures) -> String {
    let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    let busy = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{:.0} %", v * 100.0));
    format!(
        "CPU µs per event (this process + Redis; machine busy): projector {} + {} ({}), \
         raw {} + {} ({})",
        us(p.projector.client_cpu_us_per_event),
        us(p.projector.server_cpu_us_per_event),
        busy(p.projector.machine_cpu_busy),
        us(p.raw_pipelined.client_cpu_us_per_event),
        us(p.raw_pipelined.server_cpu_us_per_event),
        busy(p.raw_pipelined.machine_cpu_busy),
    )
}
