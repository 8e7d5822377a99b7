//! Phase 3: a day of traffic replayed into a fresh copy through the raw path, then what it
//! costs Redis: `used_memory` before and after, and every key of the copy by kind with its
//! `MEMORY USAGE` (sampled for the numerous kinds).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use prism_dashboard::buckets::Grain;
use prism_dashboard::model::KeyKind;
use prism_platform::Config;
use prism_projector::checkpoint::redis::{Accounts, Origin};
use prism_projector::copies::Copies as _;
use tokio::task::JoinSet;

use super::super::ledger::figures::{CpuSnapshot, Rate};
use super::super::ledger::report::bar;
use super::super::ledger::workload::{timed_workload, Timing};
use super::{copies, Args, DayFigures, KindFigures, Names};

/// Events folded into one pipeline.
const BATCH: usize = 2_000;
/// Pipelines in flight at once.
const WRITERS: usize = 4;
/// Keys of one kind whose `MEMORY USAGE` is read (the rest are counted and scaled).
const SAMPLED: usize = 300;

pub(super) async fn run(
    config: &Config,
    args: &Args,
    names: &Names,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<DayFigures> {
    let copies = copies(config, &names.namespace).await?;
    let copy = copies.create_next().await.context("the day's copy")?;
    let sink = copy.sink();
    let mut redis = prism_platform::clients::redis_connection(&config.redis).await?;
    let before = used_memory(&mut redis).await?;

    let events = (args.day_rate * 86_400.0).round() as u64;
    let accounts = usize::try_from(args.accounts)?;
    let timing = Timing::ending_now(events, args.day_rate);

    // Fold a batch, start its pipeline, keep at most WRITERS in flight.
    let bar = bar("a day of traffic into Redis", Some(events));
    let cpu = CpuSnapshot::take(std::process::id(), &[]);
    let started = Instant::now();
    let mut state = Accounts::default();
    let mut batch = Vec::with_capacity(BATCH);
    let mut writes: JoinSet<anyhow::Result<u64>> = JoinSet::new();
    let mut done = 0;
    let mut workload = timed_workload(args.seed, accounts, events, timing).peekable();
    while workload.peek().is_some() {
        batch.clear();
        batch.extend(workload.by_ref().take(BATCH).map(|(_, e)| e));
        let folded = sink
            .prepare(&mut state, &batch, Origin::NONE, None)
            .map_err(|e| anyhow!("the fold refused: {e}"))?;
        let (sink, n) = (sink.clone(), batch.len() as u64);
        writes.spawn(async move {
            sink.write_raw(&folded).await?;
            Ok(n)
        });
        while writes.len() >= WRITERS {
            done += joined(writes.join_next().await)?;
            bar.set_position(done);
        }
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
    }
    while !writes.is_empty() {
        done += joined(writes.join_next().await)?;
        bar.set_position(done);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let replay = Rate::of(events, elapsed).cpu(&cpu, std::process::id(), &[]);
    let after = used_memory(&mut redis).await?;

    // Every key of the copy, by kind.
    let mut kinds: HashMap<&'static str, Vec<String>> = HashMap::new();
    let all =
        prism_dashboard::copies::keys_matching(&mut redis, &format!("{}*", copy.keys.prefix()))
            .await
            .context("listing the day's keys")?;
    for key in all {
        if let Some(kind) = copy.keys.parse(&key) {
            kinds.entry(kind_name(kind)).or_default().push(key);
        }
    }
    let mut figures = Vec::new();
    let mut keys = 0;
    for (kind, list) in &kinds {
        keys += list.len() as u64;
        let step = (list.len() / SAMPLED).max(1);
        let sample: Vec<&String> = list.iter().step_by(step).take(SAMPLED).collect();
        let mut pipe = redis::pipe();
        for key in &sample {
            pipe.cmd("MEMORY")
                .arg("USAGE")
                .arg(*key)
                .arg("SAMPLES")
                .arg(0);
        }
        let sizes: Vec<Option<u64>> = pipe
            .query_async(&mut redis)
            .await
            .context("reading MEMORY USAGE")?;
        let sampled: u64 = sizes.iter().flatten().sum();
        let scaled = sampled as f64 * list.len() as f64 / sample.len().max(1) as f64;
        figures.push(KindFigures {
            kind,
            keys: list.len() as u64,
            mib: scaled / (1024.0 * 1024.0),
            bounded_by: bounded_by(kind),
        });
    }
    figures.sort_by(|a, b| b.mib.total_cmp(&a.mib));
    if !args.keep {
        copies.abandon(copy.number).await.ok();
    }
    Ok(DayFigures {
        rate: args.day_rate,
        events,
        accounts: args.accounts,
        replay,
        used_memory_mib: (after - before) as f64 / (1024.0 * 1024.0),
        keys,
        kinds: figures,
    })
}

/// A finished write's events, or its error.
fn joined(
    next: Option<Result<anyhow::Result<u64>, tokio::task::JoinError>>,
) -> anyhow::Result<u64> {
    match next {
        None => Ok(0),
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(anyhow!("a writer failed: {e}")),
    }
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Counters(Grain::Second, _) => "counters per second",
        KeyKind::Counters(Grain::Minute, _) => "counters per minute",
        KeyKind::Counters(..) => "counters per hour",
        KeyKind::Top(_, Grain::Second, _) => "top lists per second",
        KeyKind::Top(_, Grain::Minute, _) => "top lists per minute",
        KeyKind::Top(..) => "top lists per hour",
        KeyKind::Distinct(Grain::Hour, _) => "distinct per hour",
        KeyKind::Distinct(..) => "distinct per day",
        KeyKind::Status => "status counts",
        KeyKind::Account(_) => "accounts",
        KeyKind::Feed => "feed",
        KeyKind::Position(_) => "positions",
    }
}

fn bounded_by(kind: &str) -> &'static str {
    match kind {
        "counters per second" => "TTL: 10 minutes",
        "top lists per second" => "TTL: 1 minute",
        "top lists per minute" => "TTL: 1 hour",
        "top lists per hour" => "TTL: 24 hours",
        "counters per minute" | "counters per hour" | "distinct per hour" => "TTL: retention_hours",
        "distinct per day" => "TTL: 7 days",
        "accounts" => "one per account",
        "feed" => "feed_max entries",
        _ => "a few fields",
    }
}

async fn used_memory(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i64> {
    let text: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(redis)
        .await
        .context("reading Redis's INFO memory")?;
    text.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("INFO memory has no used_memory"))
}
