//! Phase 4: the real prism-ledger as a child process, its memory sampled while it
//! replays, and its `/metrics` read at the end.

use std::fs::File;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use prism_ledger::store::{partition_positions, Ledger};
use prism_platform::Config;
use prometheus_parse::{Scrape, Value};

use super::figures::{CpuSnapshot, Memory, ProjectorFigures, ProjectorMetrics, Rate};
use super::mysql::{per_batch, statement_counters};
use super::report::bar;
use super::*;
use crate::sample;

/// prism-ledger running as a child process.
pub(super) struct Child {
    process: tokio::process::Child,
    pid: u32,
}

impl Child {
    /// SIGTERM (the `kill` command: no libc here), then waits up to a minute; kills it if
    /// it does not stop.
    pub(super) async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
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
pub(super) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

pub(super) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One RSS sample.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    at: Duration,
    stored: u64,
    rss_kib: u64,
}

pub(super) async fn project(
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
        &Names::ledger_config(config, &names.database)?,
    )
    .await
    .context("opening the projector's ledger")?;
    let generation = ledger
        .live()
        .await
        .context("opening the projector's live generation")?;

    let mut samples: Vec<Sample> = Vec::new();
    let mut first: Option<(Instant, u64)> = None;
    let mysql = sample::mysql_server_pids();
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
        if round.is_multiple_of(5) || stored >= total {
            if let (Some(rss_kib), _) = sample::memory_kib(child.pid) {
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
    let (_, hwm_kib) = sample::memory_kib(child.pid);
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
    pub(super) fn of(samples: &[Sample], hwm_kib: Option<u64>, total: u64) -> Self {
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

/// Sum of the plain values (counters, gauges, a histogram's `_sum` and `_count`) of metric
/// `name` over its label sets, only those with `label` = value if given.
fn sum(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(key, value)| s.labels.get(key) == Some(value)))
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            Value::Histogram(_) | Value::Summary(_) => None,
        })
        .sum()
}

/// The cumulative bucket counts of histogram `name`, `(upper bound, count)` summed over its
/// label sets.
fn buckets(scrape: &Scrape, name: &str) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let counts = scrape.samples.iter().filter(|s| s.metric == name);
    for count in counts.filter_map(|s| match &s.value {
        Value::Histogram(counts) => Some(counts),
        _ => None,
    }) {
        for c in count {
            match buckets.iter_mut().find(|(le, _)| *le == c.less_than) {
                Some((_, n)) => *n += c.count,
                None => buckets.push((c.less_than, c.count)),
            }
        }
    }
    buckets
}

impl ProjectorMetrics {
    /// The figures from prism-ledger's `/metrics` text (Prometheus exposition format);
    /// all zero if it cannot be parsed.
    pub(super) fn parse(text: &str, batch_max: usize, partitions: i32, window: Duration) -> Self {
        let scrape =
            Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap_or_else(|_| {
                Scrape {
                    docs: Default::default(),
                    samples: Vec::new(),
                }
            });
        let scrape = &scrape;
        let batches = sum(scrape, "prism_projector_batch_records_count", None);
        let records = sum(scrape, "prism_projector_batch_records_sum", None);
        let seconds = sum(scrape, "prism_projector_batch_duration_seconds_sum", None);
        // Batches of at most `bound` records: the largest bucket bound below the maximum.
        let max = batch_max as f64;
        let small = buckets(scrape, "prism_projector_batch_records")
            .into_iter()
            .filter(|(le, _)| *le < max)
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
                scrape,
                "prism_projector_events_total",
                Some(("outcome", "applied")),
            ) as u64,
            skipped: sum(
                scrape,
                "prism_projector_events_total",
                Some(("outcome", "skipped")),
            ) as u64,
            dead_lettered: sum(
                scrape,
                "prism_projector_events_total",
                Some(("outcome", "dead_lettered")),
            ) as u64,
            sink_errors: sum(scrape, "prism_projector_sink_errors_total", None) as u64,
            mysql_prepares_per_batch: None,
            mysql_executes_per_batch: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_from_the_exposition_text() {
        let text = "\
# HELP prism_projector_batch_records Records per batch.
# TYPE prism_projector_batch_records histogram
prism_projector_batch_records_bucket{projector=\"ledger\",le=\"256\"} 2
prism_projector_batch_records_bucket{projector=\"ledger\",le=\"512\"} 3
prism_projector_batch_records_bucket{projector=\"ledger\",le=\"1024\"} 10
prism_projector_batch_records_sum{projector=\"ledger\"} 8000
prism_projector_batch_records_count{projector=\"ledger\"} 10
prism_projector_batch_duration_seconds_sum{projector=\"ledger\"} 2.5
prism_projector_batch_duration_seconds_count{projector=\"ledger\"} 10
# TYPE prism_projector_events_total counter
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
    fn metrics_are_read_from_what_the_runtime_exposes() {
        use prism_projector::metrics::Outcome;
        use prism_projector::Metrics;

        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry, "ledger").expect("metrics");
        for records in [100, 200, 1_000, 1_000] {
            metrics.batch(0.5, records);
        }
        metrics.event("prism.account.opened", Outcome::Applied, 2_000);
        metrics.event("prism.account.money_deposited", Outcome::Applied, 300);
        metrics.event("prism.account.opened", Outcome::Skipped, 4);
        metrics.sink_error("transient");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encodes");
        let m = ProjectorMetrics::parse(&text, 1_000, 4, Duration::from_secs(1));
        assert_eq!(m.batches, 4);
        assert!((m.mean_batch_records - 575.0).abs() < 1e-9, "{m:?}");
        assert!((m.mean_batch_ms - 500.0).abs() < 1e-9, "{m:?}");
        // Two of the four batches were below the largest bucket under 1 000 records.
        assert_eq!(m.large_batch_share, Some(0.5), "{m:?}");
        assert_eq!(m.worker_busy_share, Some(0.5));
        assert_eq!((m.applied, m.skipped, m.dead_lettered), (2_300, 4, 0));
        assert_eq!(m.sink_errors, 1);
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
