//! Phase 1: the projector (the kit's runtime with a `RedisSink`) and the raw pipelined
//! ceiling of the same writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use prism_dashboard::app::NAME;
use prism_dashboard::sink::{Prepared, RedisSink};
use prism_events::Envelope;
use prism_platform::Config;
use prism_projector::app::Projector as _;
use prism_projector::checkpoint::redis::Origin;
use prism_projector::copies::Copies as _;
use prism_projector::{PositionUpdate, Projection, Runtime, Shared, Sink as _};
use tokio::task::JoinSet;

use super::super::ledger::figures::{CpuSnapshot, Rate};
use super::super::ledger::kafka::{create_topic, end_offsets, produce_workload};
use super::super::ledger::report::{bar, tick};
use super::super::ledger::workload::{timed_workload, Timing};
use super::{copies, dashboard_on, Args, Names, ProjectionFigures, RATIO_GOAL};

const POSITION_POLL: Duration = Duration::from_millis(100);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One partition's batches, folded: (events of the batch, its transaction).
type Folded = Arc<Vec<(u64, Prepared)>>;

/// The workload's events per partition, cut into batches of the runtime's size.
struct Streams {
    partitions: Vec<Vec<Vec<Envelope>>>,
    events: u64,
}

impl Streams {
    fn new(
        args: &Args,
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
    fn fold(&self, sink: &RedisSink) -> anyhow::Result<Vec<Folded>> {
        let mut out = Vec::with_capacity(self.partitions.len());
        for (partition, batches) in self.partitions.iter().enumerate() {
            let mut accounts = HashMap::new();
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
                let prepared = sink
                    .prepare(&mut accounts, batch, Origin::NONE, Some(position))
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

/// Writes the streams' writes with [`RedisSink::write_raw`] into a fresh copy, one task per
/// partition, all at once.
async fn write_raw(
    config: &Config,
    names: &Names,
    streams: &Streams,
    args: &Args,
) -> anyhow::Result<RawRun> {
    let copies = copies(config, &names.namespace).await?;
    let copy = copies.create_next().await.context("the ceiling's copy")?;
    let sink = copy.sink();
    let folded = streams.fold(&sink)?;
    let commands: u64 = folded
        .iter()
        .flat_map(|p| p.iter())
        .map(|(_, p)| (p.accounts() + p.writes().commands() + usize::from(p.has_position())) as u64)
        .sum();
    let bar = bar("raw Redis pipeline ceiling", Some(streams.events));
    let done = Arc::new(AtomicU64::new(0));
    let ticker = tick(bar.clone(), Arc::clone(&done));
    let cpu = CpuSnapshot::take(std::process::id(), &[]);
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
        copies.abandon(copy.number).await.ok();
    }
    Ok(RawRun {
        rate: Rate::of(streams.events, elapsed).cpu(&cpu, std::process::id(), &[]),
        batches,
        commands,
    })
}

struct ProjectorRun {
    rate: Rate,
    /// Time the workers spent in batches (decode, plan, the sink's write), all together.
    batch_seconds: f64,
    /// Start of the runtime to its first stored position (group join included), and the
    /// events stored by then.
    startup: Option<(Duration, u64)>,
    batches: u64,
    records: f64,
    applied: u64,
    dead_lettered: u64,
    sink_errors: u64,
}

async fn project(
    config: &Config,
    args: &Args,
    names: &Names,
    ends: &[i64],
    cancel: &AtomicBool,
) -> anyhow::Result<ProjectorRun> {
    let projector = dashboard_on(config, &names.namespace, &names.group)?;
    let runtime = projector.settings().runtime;
    let runtime = match args.batch {
        Some(batch) => prism_platform::config::ProjectorConfig {
            batch_max_events: batch,
            ..runtime
        },
        None => runtime,
    };
    let copies = copies(config, &names.namespace).await?;
    let copy = copies.create_next().await.context("the projector's copy")?;
    let sink = Arc::new(copy.sink());
    let registry = prometheus::Registry::new();
    let shared = Shared::new(&registry, NAME, &runtime)?;
    let partitions: Vec<i32> = (0..args.partitions).collect();
    let total: u64 = ends.iter().map(|e| u64::try_from(*e).unwrap_or(0)).sum();

    let bar = bar("projector (kit runtime)", Some(total));
    let cpu = CpuSnapshot::take(std::process::id(), &[]);
    let started = Instant::now();
    let running = Runtime::start(
        Projection {
            name: NAME.into(),
            group_id: names.group.clone(),
            topic: names.topic.clone(),
        },
        &config.kafka,
        &runtime,
        sink.clone(),
        shared,
    )
    .await
    .context("starting the projector runtime")?;
    let mut startup = None;
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
            if startup.is_none() && !positions.is_empty() {
                startup = Some((started.elapsed(), stored));
            }
            if !behind {
                break Ok(started.elapsed());
            }
        }
        tokio::time::sleep(POSITION_POLL).await;
    };
    let rate = outcome.map(|elapsed| Rate::of(total, elapsed).cpu(&cpu, std::process::id(), &[]));
    bar.finish_and_clear();
    if tokio::time::timeout(STOP_TIMEOUT, running.shut_down())
        .await
        .is_err()
    {
        tracing::warn!("the bench's projector runtime did not stop in time");
    }
    let rate = rate?;
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
        batch_seconds,
        rate,
        startup,
        batches,
        records,
        applied: events("applied") as u64,
        dead_lettered: events("dead_lettered") as u64,
        sink_errors: counter("prism_projector_sink_errors_total", None) as u64,
    })
}

pub(super) async fn run(
    config: &Config,
    args: &Args,
    names: &Names,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<ProjectionFigures> {
    let projector = dashboard_on(config, &names.namespace, &names.group)?;
    let batch = args
        .batch
        .unwrap_or(projector.settings().runtime.batch_max_events)
        .max(1);
    let partitions = usize::try_from(args.partitions).context("--partitions")?;
    let timing = Timing::ending_now(args.events, args.event_rate);

    create_topic(config, &names.topic, args.partitions)
        .await
        .with_context(|| format!("creating the bench topic {}", names.topic))?;
    let filled = {
        let (config, topic, cancel) = (config.clone(), names.topic.clone(), Arc::clone(cancel));
        let (seed, accounts, events) = (args.seed, args.accounts, args.events);
        tokio::task::spawn_blocking(move || {
            produce_workload(&config, seed, accounts, events, timing, &topic, &cancel)
        })
        .await
        .map_err(|e| anyhow!("the producing thread failed: {e}"))??
    };
    let ends = end_offsets(config, &names.topic, partitions).await?;
    let streams = Streams::new(args, timing, &filled.partition_of, batch)?;

    let raw_1 = write_raw(config, names, &streams, args).await?;
    let run = project(config, args, names, &ends, cancel).await?;
    let raw_2 = write_raw(config, names, &streams, args).await?;

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
        ratio,
        goal: RATIO_GOAL,
        goal_met: ratio >= RATIO_GOAL,
    })
}
