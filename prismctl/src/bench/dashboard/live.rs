//! Phase 2: commands at a steady rate through prism-command, the real prism-dashboard as a
//! child process, its stream held open by many viewers; accepted → visible in the stream,
//! and what the viewers cost.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prism_platform::auth::Scope;
use prism_platform::Config;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::{Args, LiveFigures, VISIBLE_P99_GOAL_MS};
use crate::loadgen::{Latency, TokenBucket};
use crate::sample;
use crate::services::{self, Kind, Scratch, Service};

/// How long after the sending ends a measured command may still show.
const DRAIN: Duration = Duration::from_secs(10);
/// How often the viewers' positions are compared.
const SAMPLE: Duration = Duration::from_millis(50);
/// Most commands in flight.
const MAX_IN_FLIGHT: usize = 2_000;

/// (account id, version) of a command.
type Key = (String, u64);

/// What the viewers saw.
#[derive(Default)]
struct Seen {
    /// First frame holding each feed entry.
    first: Mutex<HashMap<Key, Instant>>,
}

/// The prism-dashboard child, stopped with SIGTERM (killed if it does not stop).
struct Child {
    process: tokio::process::Child,
    pid: u32,
}

impl Child {
    async fn stop(&mut self) {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(30), self.process.wait())
            .await
            .is_err()
        {
            let _ = self.process.kill().await;
        }
    }
}

pub(super) async fn run(
    config: &Config,
    args: &Args,
    binary: &std::path::Path,
) -> anyhow::Result<LiveFigures> {
    let scratch = Scratch::new("bench_dash_live", config.event_store.backend);
    let mut named = config.clone();
    scratch.apply(&mut named);
    let mut command: Option<Service> = None;
    let mut child: Option<Child> = None;
    let outcome = measure(&named, args, binary, &scratch, &mut command, &mut child).await;
    if let Some(child) = child.as_mut() {
        child.stop().await;
    }
    let in_use = match command.as_mut() {
        Some(service) => service.stop(services::STOP_TIMEOUT).await.is_err(),
        None => false,
    };
    if !args.keep {
        for failure in scratch.remove(config, in_use).await {
            eprintln!("prismctl: bench dashboard: could not remove {failure}");
        }
    }
    outcome
}

async fn measure(
    config: &Config,
    args: &Args,
    binary: &std::path::Path,
    scratch: &Scratch,
    command_slot: &mut Option<Service>,
    child_slot: &mut Option<Child>,
) -> anyhow::Result<LiveFigures> {
    let token = config
        .auth
        .token_with(Scope::Commands)
        .map(|t| t.expose().to_owned())
        .unwrap_or_default();
    let dashboard = prism_dashboard::app::DashboardProjector::new(config.clone())?;
    let dash_token = config
        .auth
        .token_with(Scope::DashboardRead)
        .map(|t| t.expose().to_owned())
        .unwrap_or_default();
    let large = dashboard.dashboard_config().large_amount_minor;

    let listener = services::bind(Kind::Command, "127.0.0.1:0").await?;
    let command = command_slot.insert(Service::start(Kind::Command, config.clone(), listener)?);
    command.wait_ready(Duration::from_secs(60), |_| {}).await?;
    let command_url = command.url().to_owned();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port();
    let dashboard_url = format!("http://127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("{}.log", scratch.topic));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let process = tokio::process::Command::new(binary)
        .env("PRISM_KAFKA__TOPIC", &scratch.topic)
        .env("PRISM_DASHBOARD__NAMESPACE", &scratch.dashboard_namespace)
        .env("PRISM_DASHBOARD__GROUP_ID", scratch.dashboard_group())
        .env("PRISM_DASHBOARD__LISTEN", format!("127.0.0.1:{port}"))
        .env("PRISM_DASHBOARD__HEALTH_TARGETS", "[]")
        .env(
            "PRISM_DASHBOARD__MAX_VIEWERS",
            (args.viewers + 16).to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = process
        .id()
        .ok_or_else(|| anyhow!("prism-dashboard exited at once"))?;
    let child = child_slot.insert(Child { process, pid });
    services::wait_ready(
        "prism-dashboard",
        &dashboard_url,
        Duration::from_secs(120),
        |_| {},
    )
    .await
    .with_context(|| format!("prism-dashboard's log is {}", log.display()))?;
    if let Some(status) = child.process.try_wait()? {
        bail!(
            "prism-dashboard exited ({status}); its log is {}",
            log.display()
        );
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build()?;
    // The accounts, opened before anything is measured.
    let mut accounts = Vec::with_capacity(args.live_accounts);
    for i in 0..args.live_accounts {
        let answer: Value = http
            .post(format!("{command_url}/v1/accounts"))
            .bearer_auth(&token)
            .json(
                &json!({"holder_name": format!("Bench {i}"), "email": format!("b{i}@example.org"),
                          "country": "DE", "currency": "EUR"}),
            )
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = answer["account_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no account_id in {answer}"))?;
        accounts.push(id.to_owned());
    }

    // The viewers: one measures (parses the feed), all count frames.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let positions: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.viewers).map(|_| AtomicU64::new(0)).collect());
    let counts: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.viewers).map(|_| AtomicU64::new(0)).collect());
    let mut viewers = JoinSet::new();
    let stream_client = reqwest::Client::builder().build()?;
    for v in 0..args.viewers {
        let response = stream_client
            .get(format!("{dashboard_url}/v1/dashboard/stream"))
            .bearer_auth(&dash_token)
            .send()
            .await
            .with_context(|| format!("viewer {v} connecting"))?;
        if !response.status().is_success() {
            bail!("viewer {v}: the stream answered {}", response.status());
        }
        let (stop, seen, positions, counts) = (
            Arc::clone(&stop),
            Arc::clone(&seen),
            Arc::clone(&positions),
            Arc::clone(&counts),
        );
        viewers.spawn(async move {
            watch(response, v, v == 0, &stop, &seen, &positions, &counts).await;
        });
    }

    // The sampler: how far behind the newest frame the slowest viewer is.
    let behind = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, positions, behind) = (
            Arc::clone(&stop),
            Arc::clone(&positions),
            Arc::clone(&behind),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<u64> = positions
                    .iter()
                    .map(|p| p.load(Ordering::Relaxed))
                    .filter(|id| *id > 0)
                    .collect();
                if let (Some(max), Some(min)) = (ids.iter().max(), ids.iter().min()) {
                    behind.fetch_max(max - min, Ordering::Relaxed);
                }
                tokio::time::sleep(SAMPLE).await;
            }
        })
    };

    // Load figures at the start of the window.
    let mut redis = prism_platform::clients::redis_connection(&config.redis).await?;
    let redis_pid = info_field(&mut redis, "server", "process_id")
        .await
        .map(|v| v as u32);
    let commands_before = info_field(&mut redis, "stats", "total_commands_processed").await;
    let metrics_before = scrape(&http, &dashboard_url).await;
    let dashboard_ticks = sample::process_ticks(child.pid);
    let redis_ticks = redis_pid.and_then(sample::process_ticks);
    let machine = sample::machine_jiffies();
    let started = Instant::now();

    // The sending, open loop.
    let accepted: Arc<Mutex<HashMap<Key, Instant>>> = Arc::default();
    let stats = Arc::new(Counters::default());
    let semaphore = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut bucket = TokenBucket::new(args.rate);
    let mut sends = JoinSet::new();
    let mut n: u64 = 0;
    while started.elapsed() < args.duration {
        bucket.take().await;
        n += 1;
        let measured = n.is_multiple_of(args.large_every);
        let amount = if measured {
            large.max(1)
        } else {
            100 + (n % 50) as i64
        };
        let account = accounts[(n as usize) % accounts.len()].clone();
        let Ok(permit) = Arc::clone(&semaphore).try_acquire_owned() else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            stats.note("more than the in-flight limit waiting: the service is not keeping up");
            continue;
        };
        let (http, url, token, accepted, stats) = (
            http.clone(),
            command_url.clone(),
            token.clone(),
            Arc::clone(&accepted),
            Arc::clone(&stats),
        );
        sends.spawn(async move {
            let answer = http
                .post(format!("{url}/v1/accounts/{account}/deposits"))
                .bearer_auth(&token)
                .json(&json!({"amount_minor": amount}))
                .send()
                .await;
            let at = Instant::now();
            drop(permit);
            match answer {
                Ok(r) if r.status().is_success() => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    if measured {
                        if let Ok(body) = r.json::<Value>().await {
                            if let Some(version) = body["version"].as_u64() {
                                accepted.lock().insert((account, version), at);
                            }
                        }
                    }
                }
                Ok(r) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    stats.note(&format!("deposit: {}", r.status()));
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    stats.note(&format!("deposit: {e}"));
                }
            }
        });
    }
    let sent = n;
    let sending = started.elapsed();
    while sends.join_next().await.is_some() {}
    // Until every measured command showed, or the drain time passed.
    let drain_until = Instant::now() + DRAIN;
    loop {
        let all = {
            let accepted = accepted.lock();
            let first = seen.first.lock();
            accepted.keys().all(|k| first.contains_key(k))
        };
        if all || Instant::now() > drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let window = started.elapsed().as_secs_f64();
    let dashboard_cpu_share =
        ticks_share(dashboard_ticks, sample::process_ticks(child.pid), window);
    let redis_cpu_share = ticks_share(
        redis_ticks,
        redis_pid.and_then(sample::process_ticks),
        window,
    );
    let commands_after = info_field(&mut redis, "stats", "total_commands_processed").await;
    let metrics_after = scrape(&http, &dashboard_url).await;
    let machine_cpu_busy = sample::busy_since(machine);
    let (_, rss_kib) = sample::memory_kib(child.pid);
    stop.store(true, Ordering::Relaxed);
    sampler.abort();
    viewers.abort_all();

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut never = 0;
    {
        let accepted = accepted.lock();
        let first = seen.first.lock();
        for (key, at) in accepted.iter() {
            match first.get(key) {
                Some(shown) => {
                    let us = shown.saturating_duration_since(*at).as_micros();
                    histogram.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                }
                None => never += 1,
            }
        }
    }
    let per_viewer: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let delta =
        |name: &str| -> Option<f64> { Some(metrics_after.get(name)? - metrics_before.get(name)?) };
    let visible_ms = Latency::of(&histogram);
    let error_examples = stats.examples.lock().clone();
    Ok(LiveFigures {
        target_rate: args.rate,
        duration_s: sending.as_secs_f64(),
        sent,
        achieved_rate: sent as f64 / sending.as_secs_f64().max(1e-3),
        accepted: stats.accepted.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        measured: histogram.len() + never,
        never_visible: never,
        visible_goal_met: never == 0 && visible_ms.p99 <= VISIBLE_P99_GOAL_MS,
        visible_ms,
        visible_goal_p99_ms: VISIBLE_P99_GOAL_MS,
        viewers: args.viewers,
        frames: delta("prism_dashboard_stream_frames_total").unwrap_or(0.0) as u64,
        frames_per_viewer_min: per_viewer.iter().copied().min().unwrap_or(0),
        frames_per_viewer_max: per_viewer.iter().copied().max().unwrap_or(0),
        max_frames_behind: behind.load(Ordering::Relaxed),
        dashboard_cpu_share,
        dashboard_rss_mib: rss_kib.map(|k| k as f64 / 1024.0),
        redis_cpu_share,
        redis_commands_per_second: commands_before
            .zip(commands_after)
            .map(|(b, a)| (a - b) / window),
        summary_reads_per_second: delta("prism_dashboard_summary_read_seconds_count")
            .map(|n| n / window),
        machine_cpu_busy,
        error_examples,
    })
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    errors: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Counters {
    fn note(&self, example: &str) {
        let mut examples = self.examples.lock();
        if examples.len() < 5 && !examples.iter().any(|e| e == example) {
            examples.push(example.to_owned());
        }
    }
}

/// Reads one viewer's stream until `stop`: its frame numbers, and (if `measure`) the first
/// frame holding each feed entry.
async fn watch(
    mut response: reqwest::Response,
    viewer: usize,
    measure: bool,
    stop: &AtomicBool,
    seen: &Seen,
    positions: &[AtomicU64],
    counts: &[AtomicU64],
) {
    let mut buffer = String::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(chunk)) = response.chunk().await else {
            return;
        };
        let at = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut data = None;
            for line in frame.lines() {
                if let Some(id) = line.strip_prefix("id:").and_then(|v| v.trim().parse().ok()) {
                    positions[viewer].store(id, Ordering::Relaxed);
                    counts[viewer].fetch_add(1, Ordering::Relaxed);
                } else if let Some(d) = line.strip_prefix("data:") {
                    data = Some(d.trim_start().to_owned());
                }
            }
            if !measure {
                continue;
            }
            let Some(Ok(value)) = data.map(|d| serde_json::from_str::<Value>(&d)) else {
                continue;
            };
            let mut first = seen.first.lock();
            for entry in value["feed"].as_array().into_iter().flatten() {
                let (Some(account), Some(version)) =
                    (entry["account_id"].as_str(), entry["version"].as_u64())
                else {
                    continue;
                };
                first.entry((account.to_owned(), version)).or_insert(at);
            }
        }
    }
}

/// A numeric field of Redis's `INFO <section>`.
async fn info_field(
    redis: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> Option<f64> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(redis)
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
}

/// prism-dashboard's counters and histogram counts from `/metrics` (unlabelled sums).
async fn scrape(http: &reqwest::Client, url: &str) -> HashMap<String, f64> {
    let Ok(response) = http.get(format!("{url}/metrics")).send().await else {
        return HashMap::new();
    };
    let text = response.text().await.unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    out
}

/// CPU ticks between two samples as a share of one core over `seconds`.
fn ticks_share(before: Option<u64>, after: Option<u64>, seconds: f64) -> Option<f64> {
    let ticks = after?.checked_sub(before?)?;
    Some(ticks as f64 / sample::ticks_per_second() / seconds.max(1e-3))
}
