//! The MySQL side: ceiling B (the same events folded and written straight into a ledger
//! database), MySQL's statement counters, and the wait for InnoDB to settle between phases.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use backon::{ExponentialBuilder, Retryable};
use prism_events::Envelope;
use prism_ledger::sink::{fold_batch, MySqlSink};
use prism_ledger::store::Ledger;
use prism_platform::Config;
use prism_projector::{AccountVersion, PositionUpdate, SinkError};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::figures::{CpuSnapshot, Rate, WriteFigures};
use super::report::{bar, tick};
use super::workload::workload;
use super::*;
use crate::sample;

/// MySQL's global `Com_stmt_prepare` and `Com_stmt_execute` counters.
pub(super) async fn statement_counters(pool: &sqlx::MySqlPool) -> Option<(u64, u64)> {
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
pub(super) fn per_batch(
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

/// What one partition's writer did.
#[derive(Debug, Default)]
pub(super) struct Written {
    events: u64,
    batches: u64,
    write_time: Duration,
    retries: u64,
}

pub(super) async fn write_raw(
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
    for (account, envelope) in workload(args.seed, accounts, args.events) {
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

    let ledger = Ledger::open(&config.mysql, &Names::ledger_config(config, database)?)
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
    let mysql = sample::mysql_server_pids();
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
pub(super) const RAW_WRITER: &str = "prismctl-bench/raw-ceiling";

/// One partition's events, folded and written in batches as the projector's worker would.
pub(super) async fn write_partition(
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
        // Transient errors (a deadlock, a lost connection) are retried like the projector's
        // worker does: 100 ms, doubling, five times at most.
        let retries = AtomicU64::new(0);
        (|| sink.write_rows(&writes))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_times(5),
            )
            .when(|e| matches!(e, SinkError::Transient(_)))
            .notify(|e, _| {
                let attempt = retries.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(partition, attempt, error = %e, "ceiling write retried");
            })
            .await
            .with_context(|| format!("partition {partition}, batch at offset {offset}"))?;
        written.retries += retries.into_inner();
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
pub(super) async fn settle(config: &Config) {
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
