//! Phase 1: the projector (the kit's runtime with an `EsSink`) and the raw `_bulk` ceiling
//! of the same documents.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use backon::{ExponentialBuilder, Retryable};
use prism_platform::config::ProjectorConfig;
use prism_platform::Config;
use prism_projector::{Projection, Runtime, Shared, Sink as _, SinkError};
use prism_search::app::NAME;
use prism_search::copies::SearchCopies;
use prism_search::fold::{fold_batch, Writes};
use prism_search::sink::EsSink;
use tokio::task::JoinSet;

use super::super::ledger::figures::{CpuSnapshot, Rate};
use super::super::ledger::report::{bar, tick};
use super::super::ledger::workload::workload;
use super::{search_on, Args, Names, ProjectionFigures, RATIO_GOAL};

/// How often the projector's stored positions are read while it runs (the end is seen
/// half of it late on average).
const POSITION_POLL: Duration = Duration::from_millis(10);
/// Longest the runtime may take to stop after the run.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The workload's documents, folded per partition into the writes of one batch each, in
/// the order the partition holds the events: what the runtime's sink writes when every
/// batch is full. Folded once, before anything is timed, and written by both ceiling runs.
pub(super) struct Streams {
    /// Per partition: (events of the batch, its writes); shared by the writer tasks.
    partitions: Vec<Arc<Vec<(u64, Writes)>>>,
    events: u64,
}

impl Streams {
    pub(super) fn new(
        args: &Args,
        partition_of: &[i32],
        ends: &[i64],
        batch: usize,
    ) -> anyhow::Result<Self> {
        let mut events: Vec<Vec<prism_events::Envelope>> = ends
            .iter()
            .map(|e| Vec::with_capacity(usize::try_from(*e).unwrap_or(0)))
            .collect();
        let accounts = usize::try_from(args.accounts)?;
        for (account, envelope) in workload(args.seed, accounts, args.events) {
            let partition = partition_of.get(account).copied().unwrap_or(-1);
            let Some(stream) = usize::try_from(partition)
                .ok()
                .and_then(|p| events.get_mut(p))
            else {
                bail!("no delivery report placed account {account} on a partition");
            };
            stream.push(envelope);
        }
        let mut partitions = Vec::with_capacity(events.len());
        for (partition, (stream, end)) in events.into_iter().zip(ends).enumerate() {
            if i64::try_from(stream.len()).ok() != Some(*end) {
                bail!(
                    "partition {partition} holds {end} records but the workload puts {} there",
                    stream.len()
                );
            }
            let mut state = HashMap::new();
            let mut batches = Vec::with_capacity(stream.len() / batch + 1);
            for chunk in stream.chunks(batch) {
                let writes = fold_batch(&mut state, chunk)
                    .map_err(|e| anyhow!("partition {partition}: the fold refused {e}"))?;
                batches.push((chunk.len() as u64, writes));
            }
            partitions.push(Arc::new(batches));
        }
        Ok(Self {
            partitions,
            events: args.events,
        })
    }
}

/// One run of the ceiling.
#[derive(Debug, Clone)]
pub(super) struct RawRun {
    pub(super) rate: Rate,
    pub(super) batches: u64,
    pub(super) retries: u64,
}

/// Writes `streams` with [`EsSink::write_raw`] into a fresh copy under `prefix`, one task
/// per partition, all at once (the runtime's concurrency).
pub(super) async fn write_raw(
    config: &Config,
    prefix: &str,
    streams: &Streams,
    args: &Args,
) -> anyhow::Result<RawRun> {
    let projector = search_on(config, prefix, prefix)?;
    let copies = SearchCopies::connect(&config.elasticsearch, projector.search_config())
        .await
        .with_context(|| format!("creating the ceiling's indices {prefix}-*"))?;
    let sink = EsSink::new(copies.live().await.context("the ceiling's copy")?);

    let bar = bar("raw _bulk ceiling", Some(streams.events));
    let done = Arc::new(AtomicU64::new(0));
    let ticker = tick(bar.clone(), Arc::clone(&done));
    let retries = Arc::new(AtomicU64::new(0));
    let cpu = CpuSnapshot::take(std::process::id(), &[]);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (partition, batches) in streams.partitions.iter().enumerate() {
        let batches = Arc::clone(batches);
        let (sink, done, retries) = (sink.clone(), Arc::clone(&done), Arc::clone(&retries));
        tasks.spawn(async move {
            for (events, writes) in batches.iter() {
                // Transient errors (a 429 under load) are retried as the runtime's worker
                // does: 100 ms, doubling, five times at most.
                (|| sink.write_raw(writes))
                    .retry(
                        ExponentialBuilder::default()
                            .with_min_delay(Duration::from_millis(100))
                            .with_max_times(5),
                    )
                    .when(|e| matches!(e, SinkError::Transient(_)))
                    .notify(|_, _| {
                        retries.fetch_add(1, Ordering::Relaxed);
                    })
                    .await
                    .with_context(|| format!("the ceiling's partition {partition}"))?;
                done.fetch_add(*events, Ordering::Relaxed);
            }
            anyhow::Ok(batches.len() as u64)
        });
    }
    let timeout = tokio::time::sleep(args.timeout);
    tokio::pin!(timeout);
    let mut batches = 0;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(n))) => batches += n,
                Some(Ok(Err(e))) => {
                    ticker.abort();
                    bar.finish_and_clear();
                    return Err(e);
                }
                Some(Err(e)) => {
                    ticker.abort();
                    bar.finish_and_clear();
                    return Err(anyhow!("a ceiling writer failed: {e}"));
                }
            },
            () = &mut timeout => {
                ticker.abort();
                bar.finish_and_clear();
                bail!("the raw ceiling took longer than --timeout");
            }
        }
    }
    let elapsed = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    Ok(RawRun {
        rate: Rate::of(streams.events, elapsed).cpu(&cpu, std::process::id(), &[]),
        batches,
        retries: retries.load(Ordering::Relaxed),
    })
}

/// The projector's run.
#[derive(Debug, Clone)]
pub(super) struct ProjectorRun {
    rate: Rate,
    startup_s: Option<f64>,
    /// Events stored when the first position was seen, for the rate after start-up.
    stored_at_startup: u64,
    batches: u64,
    records: f64,
    applied: u64,
    skipped: u64,
    dead_lettered: u64,
    sink_errors: u64,
}

/// Runs the kit's runtime over the topic into a fresh copy under the projector's prefix
/// until every partition's stored position reached the partition's end.
pub(super) async fn project(
    config: &Config,
    args: &Args,
    names: &Names,
    runtime: &ProjectorConfig,
    ends: &[i64],
    cancel: &AtomicBool,
) -> anyhow::Result<ProjectorRun> {
    let projector = search_on(config, &names.projector_prefix, &names.group)?;
    let copies = SearchCopies::connect(&config.elasticsearch, projector.search_config())
        .await
        .context("creating the projector's indices")?;
    let sink = Arc::new(EsSink::new(
        copies.live().await.context("the projector's copy")?,
    ));
    let registry = prometheus::Registry::new();
    let shared = Shared::new(&registry, NAME, runtime)?;
    let partitions: Vec<i32> = (0..args.partitions).collect();
    let total: u64 = ends.iter().map(|e| u64::try_from(*e).unwrap_or(0)).sum();

    let bar = bar("projector (kit runtime)", Some(total));
    let running = Runtime::start(
        Projection {
            name: NAME.into(),
            group_id: names.group.clone(),
            topic: names.topic.clone(),
        },
        &config.kafka,
        runtime,
        sink.clone(),
        shared,
    )
    .await
    .context("starting the projector runtime")?;
    // The clock starts at the subscription, as ceiling A's does: `Runtime::start` first
    // checks the topic and creates the dead-letter topic, set-up the ceiling has not.
    let cpu = CpuSnapshot::take(std::process::id(), &[]);
    let started = Instant::now();

    let mut startup = None;
    let mut stored_at_startup = 0;
    let outcome = loop {
        if cancel.load(Ordering::Relaxed) {
            break Err(anyhow!("interrupted"));
        }
        if started.elapsed() > args.timeout {
            break Err(anyhow!("the projector took longer than --timeout"));
        }
        // A failed read (the engine busy) is read again at the next poll.
        if let Ok(positions) = sink.positions(&partitions).await {
            let mut stored = 0;
            let mut behind = false;
            for (partition, end) in ends.iter().enumerate() {
                let offset = positions
                    .iter()
                    .find(|p| usize::try_from(p.partition).ok() == Some(partition))
                    .map_or(-1, |p| p.offset);
                // The stored offset is the last record handled.
                stored += u64::try_from((offset + 1).min(*end)).unwrap_or(0);
                behind |= offset + 1 < *end;
            }
            bar.set_position(stored);
            if !positions.is_empty() && startup.is_none() {
                startup = Some(started.elapsed());
                stored_at_startup = stored;
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

    let metric = |name: &str, label: Option<(&str, &str)>| -> f64 {
        registry
            .gather()
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
    let (batches, records) = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "prism_projector_batch_records")
        .flat_map(|f| f.get_metric())
        .fold((0, 0.0), |(n, s), m| {
            let h = m.get_histogram();
            (n + h.get_sample_count(), s + h.get_sample_sum())
        });
    let events = |outcome| metric("prism_projector_events_total", Some(("outcome", outcome)));
    Ok(ProjectorRun {
        rate,
        startup_s: startup.map(|d| d.as_secs_f64()),
        stored_at_startup,
        batches,
        records,
        applied: events("applied") as u64,
        skipped: events("skipped") as u64,
        dead_lettered: events("dead_lettered") as u64,
        sink_errors: metric("prism_projector_sink_errors_total", None) as u64,
    })
}

/// Phase 1's figures from its three runs.
pub(super) fn figures(run: &ProjectorRun, raw_1: &RawRun, raw_2: &RawRun) -> ProjectionFigures {
    let raw_runs = vec![raw_1.rate.clone(), raw_2.rate.clone()];
    let raw_bulk = Rate::combined(&raw_runs);
    let raw_batches = raw_1.batches + raw_2.batches;
    let ratio = run.rate.per_second / raw_bulk.per_second.max(f64::MIN_POSITIVE);
    ProjectionFigures {
        projector: run.rate.clone(),
        raw_mean_batch_events: raw_bulk.events as f64 / raw_batches.max(1) as f64,
        raw_bulk,
        raw_runs,
        raw_batches,
        projector_batches: run.batches,
        projector_mean_batch_records: run.records / run.batches.max(1) as f64,
        projector_startup_s: run.startup_s,
        projector_after_startup_per_second: run.startup_s.and_then(|startup| {
            let secs = run.rate.elapsed_s - startup;
            let events = run.rate.events.saturating_sub(run.stored_at_startup);
            (secs > 0.0 && events > 0).then(|| events as f64 / secs)
        }),
        applied: run.applied,
        skipped: run.skipped,
        dead_lettered: run.dead_lettered,
        sink_errors: run.sink_errors,
        ratio,
        goal: RATIO_GOAL,
        goal_met: ratio >= RATIO_GOAL,
    }
}
