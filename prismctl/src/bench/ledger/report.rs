//! Progress bars and the human-readable report.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::figures::{Rate, Report};

// ---------- progress and output ----------

pub(in crate::bench) fn bar(label: &str, len: Option<u64>) -> ProgressBar {
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

pub(in crate::bench) fn tick(
    bar: ProgressBar,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(200));
        loop {
            interval.tick().await;
            bar.set_position(done.load(Ordering::Relaxed));
        }
    })
}

pub(super) fn opt1(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

pub(super) fn opt_mib(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

pub(super) fn print_report(r: &Report) {
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
            opt(rate.server_cpu_us_per_event, 1.0, ""),
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
