//! `prismctl bench fraud`: how fast prism-fraud projects next to its ceilings, and how fast
//! its online API answers, measured in one run on this machine.
//!
//! 1. **Projection rate next to the lower raw ceiling.** A fresh topic receives `--events`
//!    events of the seeded traffic model (timed as if produced live at `--event-rate` up to
//!    now). Then, each on a fresh copy (Redis key prefix and offline directory):
//!    - *ceiling A, raw Kafka consume*: the whole topic read with the runtime's consumer
//!      settings, nothing done with the records;
//!    - *ceiling B, raw writes*: the same events, grouped by partition, folded in memory
//!      (untimed) into what the sink writes per batch of `--batch` events — the accounts'
//!      feature states in one `MULTI`/`EXEC` with the position, and the batch's Parquet
//!      files, written and flushed first — and written as they are (no `WATCH`, no reads,
//!      no fence), one task per partition; run before and after the projector;
//!    - *the projector*: the kit's runtime with a `FraudSink`, from its start until every
//!      partition's stored position reached its end; this process's RSS at each quarter.
//!
//!    Goal: projector ÷ the lower of the two ceilings ≥ 0.8.
//! 2. **Online latency** (unless `--no-latency`): prism-fraud runs in this process on its
//!    own copy (it projects the topic first), and `--clients` clients score candidate
//!    payments (`POST /v1/features/{id}/score`) on random accounts for `--duration`, one
//!    request after the other each; then the same with `GET /v1/features/{id}`. Goal: p99
//!    ≤ 5 ms at 8 clients.
//!
//! Everything created is removed at the end unless `--keep`. Exit codes: 0 measured
//! (whether or not the goals are met), 1 a phase failed, 2 a bad invocation.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use prism_events::testing::traffic::Events;
use prism_fraud::app::{FraudProjector, NAME};
use prism_fraud::copies::FraudCopies;
use prism_fraud::sink::{FraudSink, Prepared};
use prism_platform::auth::Scope;
use prism_platform::config::ProjectorConfig;
use prism_platform::Config;
use prism_projector::app::Projector as _;
use prism_projector::copies::Copies as _;
use prism_projector::Sink as _;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use super::ledger::figures::{ConsumeFigures, Rate};
use super::ledger::kafka::{consume, delete_groups, delete_topics, end_offsets};
use super::redis_projection::{ProjectionFigures, Target, Workload, RATIO_GOAL};
use crate::loadgen::{parse_duration, Latency};

/// The online goal: p99 at 8 clients.
pub const LATENCY_P99_GOAL_MS: f64 = 5.0;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events projected, the accounts' openings included.
    #[arg(long, default_value_t = 300_000)]
    events: u64,
    /// Accounts the events are spread over.
    #[arg(long, default_value_t = 20_000)]
    accounts: u64,
    /// Partitions of the bench topic (one runtime worker and one ceiling writer each).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Seed of the workload.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Most events per batch (default: `batch_max_events` of `[fraud.projector]`).
    #[arg(long)]
    batch: Option<usize>,
    /// Events per second of event time (the workload's events end now).
    #[arg(long, default_value_t = 500.0)]
    event_rate: f64,
    /// Concurrent clients of the latency phase.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Length of each latency measurement (e.g. 10s).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Skip the latency phase.
    #[arg(long)]
    no_latency: bool,
    /// Longest any one phase may take (e.g. 10m, 1h).
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    timeout: Duration,
    /// Leave the topic, groups, Redis keys and offline files behind.
    #[arg(long)]
    keep: bool,
    /// Print the figures as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Everything a run creates.
#[derive(Debug)]
struct Names {
    topic: String,
    dlq: String,
    group: String,
    raw_group: String,
    api_group: String,
    namespace: String,
    offline_dir: PathBuf,
}

impl Names {
    fn new(config: &Config) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("bench-fraud-{}", &id[..12]);
        Self {
            dlq: prism_projector::dlq::topic_name(&topic, &config.projector.dlq_suffix, NAME),
            group: topic.clone(),
            raw_group: format!("{topic}-raw"),
            api_group: format!("{topic}-api"),
            namespace: format!("prism:{topic}"),
            offline_dir: std::env::temp_dir().join(&topic),
            topic,
        }
    }

    /// `config` pointed at this run's topic, namespace, offline directory and `group`.
    fn config(&self, config: &Config, group: &str) -> Config {
        let mut config = config.clone();
        config.kafka.topic.clone_from(&self.topic);
        config.fraud.set("namespace", self.namespace.as_str());
        config.fraud.set("group_id", group);
        config
            .fraud
            .set("offline_dir", self.offline_dir.display().to_string());
        config
    }

    async fn remove(&self, config: &Config) -> bool {
        let mut ok = true;
        let dropped = async {
            let copies = copies(&self.config(config, &self.group)).await?;
            copies.drop_everything().await
        };
        if let Err(e) = dropped.await {
            eprintln!("prismctl: bench fraud: could not delete the bench's copies: {e:#}");
            ok = false;
        }
        let _ = std::fs::remove_dir_all(&self.offline_dir);
        if let Err(e) =
            delete_groups(config, &[&self.group, &self.raw_group, &self.api_group]).await
        {
            eprintln!("prismctl: bench fraud: could not delete the consumer groups: {e:#}");
            ok = false;
        }
        if let Err(e) = delete_topics(config, &[&self.topic, &self.dlq]).await {
            eprintln!("prismctl: bench fraud: could not delete the bench topics: {e:#}");
            ok = false;
        }
        ok
    }
}

async fn copies(config: &Config) -> anyhow::Result<FraudCopies> {
    let projector = FraudProjector::new(config.clone()).context("the [fraud] section")?;
    projector.open().await
}

/// The fraud model as the projection phase drives it: fresh copies of the bench.
struct Bench {
    config: Config,
    runtime: ProjectorConfig,
}

#[async_trait::async_trait]
impl Target for Bench {
    type Model = prism_fraud::sink::FraudModel;

    fn name(&self) -> &'static str {
        NAME
    }

    fn runtime(&self) -> ProjectorConfig {
        self.runtime.clone()
    }

    async fn fresh(&self) -> anyhow::Result<(u32, FraudSink)> {
        let copy = copies(&self.config).await?.create_next().await?;
        Ok((copy.number, copy.sink()))
    }

    async fn abandon(&self, number: u32) {
        if let Ok(copies) = copies(&self.config).await {
            copies.abandon(number).await.ok();
        }
    }

    /// The Redis commands of the transaction, and one per Parquet file.
    fn commands(p: &Prepared) -> u64 {
        (p.accounts() + p.writes().files.len() + usize::from(p.has_position())) as u64
    }
}

/// What `bench fraud` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub events: u64,
    pub accounts: u64,
    pub partitions: i32,
    pub projection: ProjectionFigures,
    /// Ceiling A: the topic read, nothing done.
    pub raw_consume: ConsumeFigures,
    /// The lower of ceiling A and ceiling B (`projection.raw_pipelined`), events/s.
    pub lower_ceiling_per_second: f64,
    /// projector ÷ the lower ceiling.
    pub ratio_to_lower_ceiling: f64,
    pub goal: f64,
    pub goal_met: bool,
    pub latency: Option<LatencyFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyFigures {
    pub clients: usize,
    pub score_requests: u64,
    pub score_ms: Latency,
    pub features_requests: u64,
    pub features_ms: Latency,
    pub errors: u64,
    /// The first failed request's status and body (or transport error), if any failed.
    pub first_error: Option<String>,
    pub goal_p99_ms: f64,
    pub goal_met: bool,
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    if args.events == 0 || args.accounts == 0 || args.partitions < 1 || args.clients == 0 {
        eprintln!("prismctl: bench fraud: --events, --accounts, --partitions and --clients must be at least 1");
        return Ok(ExitCode::from(2));
    }
    crate::services::logs_if_asked(config);
    let names = Names::new(config);
    let cancel = Arc::new(AtomicBool::new(false));
    let figures = tokio::select! {
        figures = measure(config, args, &names, &cancel) => figures,
        _ = tokio::signal::ctrl_c() => {
            cancel.store(true, Ordering::Relaxed);
            Err(anyhow!("interrupted"))
        }
    };
    if !args.keep && !names.remove(config).await {
        eprintln!("prismctl: bench fraud: some of the bench's data is left behind (see above)");
    }
    let figures = match figures {
        Ok(figures) => figures,
        Err(e) => {
            eprintln!("prismctl: bench fraud: {e:#}\n(is the stack up? `dev/stack up`)");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &figures).context("writing the figures")?;
        writeln!(out)?;
    } else {
        print(&mut out, &figures)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    config: &Config,
    args: &Args,
    names: &Names,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<Figures> {
    let bench_config = names.config(config, &names.group);
    let runtime = FraudProjector::new(bench_config.clone())?
        .settings()
        .runtime;
    let target = Bench {
        config: bench_config,
        runtime,
    };
    let workload = Workload {
        topic: names.topic.clone(),
        group: names.group.clone(),
        events: args.events,
        accounts: args.accounts,
        partitions: args.partitions,
        seed: args.seed,
        event_rate: args.event_rate,
        batch: args.batch,
        timeout: args.timeout,
        keep: args.keep,
    };
    let projection = super::redis_projection::run(config, &target, &workload, cancel).await?;
    let partitions = usize::try_from(args.partitions).context("--partitions")?;
    let ends = end_offsets(config, &names.topic, partitions).await?;
    let raw_consume = {
        let (config, topic, group, cancel, timeout) = (
            config.clone(),
            names.topic.clone(),
            names.raw_group.clone(),
            Arc::clone(cancel),
            args.timeout,
        );
        tokio::task::spawn_blocking(move || {
            consume(&config, &topic, &group, &ends, &cancel, timeout)
        })
        .await
        .map_err(|e| anyhow!("the consuming thread failed: {e}"))??
    };
    let lower = raw_consume
        .rate
        .per_second
        .min(projection.raw_pipelined.per_second);
    let ratio = projection.projector.per_second / lower.max(f64::MIN_POSITIVE);
    let latency = if args.no_latency {
        None
    } else {
        let ends = end_offsets(config, &names.topic, partitions).await?;
        Some(online_latency(config, args, names, &ends).await?)
    };
    Ok(Figures {
        events: args.events,
        accounts: args.accounts,
        partitions: args.partitions,
        projection,
        raw_consume,
        lower_ceiling_per_second: lower,
        ratio_to_lower_ceiling: ratio,
        goal: RATIO_GOAL,
        goal_met: ratio >= RATIO_GOAL,
        latency,
    })
}

/// Phase 2: prism-fraud in this process, caught up on the topic, scored by `--clients`.
async fn online_latency(
    config: &Config,
    args: &Args,
    names: &Names,
    ends: &[i64],
) -> anyhow::Result<LatencyFigures> {
    let config = names.config(config, &names.api_group);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("a local port")?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(prism_fraud::app::run(config.clone(), listener, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let token = config
        .auth
        .token_with(Scope::FraudRead)
        .map(|t| t.expose().to_owned())
        .unwrap_or_default();
    // The accounts of the workload, and the last one opened: once it scores, the copy has
    // caught up with every opening.
    let events = Events::new(
        args.seed,
        usize::try_from(args.accounts)?,
        0.0,
        chrono::Utc::now(),
        chrono::Duration::seconds(1),
    );
    let accounts: Vec<uuid::Uuid> = (0..events.accounts())
        .filter_map(|i| events.account_id(i).map(|a| a.0))
        .collect();
    // Caught up: every partition's position in the live copy at the topic's end.
    let deadline = Instant::now() + args.timeout;
    let partitions: Vec<i32> = (0..args.partitions).collect();
    let caught_up = loop {
        if service.is_finished() {
            break Err(anyhow!("prism-fraud stopped during the latency phase"));
        }
        let done = match copies(&config).await {
            Ok(copies) => match copies.live().await {
                Ok(copy) => copy
                    .sink()
                    .positions(&partitions)
                    .await
                    .ok()
                    .is_some_and(|p| {
                        ends.iter().enumerate().all(|(partition, end)| {
                            *end == 0
                                || p.iter().any(|s| {
                                    usize::try_from(s.partition).ok() == Some(partition)
                                        && s.offset + 1 >= *end
                                })
                        })
                    }),
                Err(_) => false,
            },
            Err(_) => false,
        };
        if done {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow!("prism-fraud did not catch up within --timeout"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let measured = match caught_up {
        Ok(()) => measure_latency(&http, &url, &token, &accounts, args).await,
        Err(e) => Err(e),
    };
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), service).await;
    measured
}

async fn measure_latency(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    accounts: &[uuid::Uuid],
    args: &Args,
) -> anyhow::Result<LatencyFigures> {
    let score = |i: usize| {
        serde_json::json!({"amount_minor": 500 + (i % 5000) as i64, "merchant_name": format!("Shop {}", i % 50),
            "merchant_category": "5411", "merchant_country": if i.is_multiple_of(7) { "US" } else { "DE" },
            "channel": if i.is_multiple_of(3) { "online" } else { "pos" }})
    };
    let mut results = Vec::new();
    let mut first_error: Option<String> = None;
    for scoring in [true, false] {
        let until = Instant::now() + args.duration;
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..args.clients {
            let (http, url, token) = (http.clone(), url.to_owned(), token.to_owned());
            let accounts = accounts.to_vec();
            let body = score;
            tasks.spawn(async move {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(client as u64);
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut errors = 0u64;
                let mut first_error: Option<String> = None;
                let mut i = 0usize;
                while Instant::now() < until {
                    let account = accounts[rng.gen_range(0..accounts.len())];
                    let started = Instant::now();
                    let sent = if scoring {
                        http.post(format!("{url}/v1/features/{account}/score"))
                            .bearer_auth(&token)
                            .json(&body(i))
                            .send()
                            .await
                    } else {
                        http.get(format!("{url}/v1/features/{account}"))
                            .bearer_auth(&token)
                            .send()
                            .await
                    };
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            histogram.record(started.elapsed().as_micros() as u64)?;
                        }
                        Ok(r) => {
                            errors += 1;
                            if first_error.is_none() {
                                let status = r.status();
                                first_error = Some(format!(
                                    "{status} {}",
                                    r.text().await.unwrap_or_default()
                                ));
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                    i += 1;
                }
                anyhow::Ok((histogram, errors, first_error))
            });
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut errors = 0;
        while let Some(done) = tasks.join_next().await {
            let (histogram, e, first) = done.map_err(|e| anyhow!("a client failed: {e}"))??;
            all.add(histogram)?;
            errors += e;
            if first_error.is_none() {
                first_error = first;
            }
        }
        results.push((all, errors));
    }
    let (score_h, score_errors) = &results[0];
    let (get_h, get_errors) = &results[1];
    let score_ms = Latency::of(score_h);
    let features_ms = Latency::of(get_h);
    let errors = score_errors + get_errors;
    let goal_met = errors == 0
        && !score_h.is_empty()
        && score_ms.p99 <= LATENCY_P99_GOAL_MS
        && features_ms.p99 <= LATENCY_P99_GOAL_MS;
    Ok(LatencyFigures {
        clients: args.clients,
        score_requests: score_h.len(),
        score_ms,
        features_requests: get_h.len(),
        features_ms,
        errors,
        first_error,
        goal_p99_ms: LATENCY_P99_GOAL_MS,
        goal_met,
    })
}

fn print(out: &mut impl std::io::Write, f: &Figures) -> std::io::Result<()> {
    let p = &f.projection;
    writeln!(
        out,
        "bench fraud: {} events over {} accounts on {} partitions, batches of {}",
        f.events, f.accounts, f.partitions, p.batch_events
    )?;
    let line = |name: &str, r: &Rate| {
        format!(
            "  {name:<34} {:>10.0} events/s  ({:.1} s)",
            r.per_second, r.elapsed_s
        )
    };
    writeln!(
        out,
        "{}",
        line("projector (kit runtime, FraudSink)", &p.projector)
    )?;
    writeln!(
        out,
        "{}",
        line("ceiling A: raw Kafka consume", &f.raw_consume.rate)
    )?;
    writeln!(
        out,
        "{}",
        line("ceiling B: raw Redis + Parquet writes", &p.raw_pipelined)
    )?;
    writeln!(
        out,
        "  ratio to the lower ceiling ({:.0} events/s): {:.3} (goal {:.1}: {})",
        f.lower_ceiling_per_second,
        f.ratio_to_lower_ceiling,
        f.goal,
        if f.goal_met { "met" } else { "NOT met" }
    )?;
    writeln!(out, "  {}", super::redis_projection::cpu_line(p))?;
    let rss: Vec<String> = p
        .projector_rss_mib
        .iter()
        .map(|m| format!("{m:.0}"))
        .collect();
    writeln!(
        out,
        "  this process's RSS at each quarter of the projection: {} MiB",
        rss.join(" / ")
    )?;
    writeln!(
        out,
        "  applied {}, dead-lettered {}, sink errors {}, {} batches of {:.0} records on average",
        p.applied,
        p.dead_lettered,
        p.sink_errors,
        p.projector_batches,
        p.projector_mean_batch_records
    )?;
    if let Some(l) = &f.latency {
        writeln!(
            out,
            "online, {} clients: score p50 {:.2} / p99 {:.2} / max {:.2} ms ({} requests); \
             features now p50 {:.2} / p99 {:.2} ms ({}); errors {} (goal p99 ≤ {} ms: {})",
            l.clients,
            l.score_ms.p50,
            l.score_ms.p99,
            l.score_ms.max,
            l.score_requests,
            l.features_ms.p50,
            l.features_ms.p99,
            l.features_requests,
            l.errors,
            l.goal_p99_ms,
            if l.goal_met { "met" } else { "NOT met" }
        )?;
        if let Some(e) = &l.first_error {
            writeln!(out, "  first failed request: {e}")?;
        }
    }
    Ok(())
}
