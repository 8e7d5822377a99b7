//! `prismctl bench visibility`: how long after prism-command accepts a command the ledger
//! shows it, under a steady open-loop rate.
//!
//! 1. prism-command and prism-ledger run in this process ([`crate::services`], the code of
//!    the binaries) on port-0 listeners, with an event store database/schema, a Kafka topic,
//!    a ledger database and a consumer group of their own (`prism_bench_vis_<random>`),
//!    dropped at the end. With `--command-url` and `--ledger-url` the bench measures running
//!    services instead (and creates nothing).
//! 2. `--accounts` accounts of the seeded [`crate::traffic`] model are opened, and each is
//!    read back from the ledger with its consistency token (so the ledger is up to date
//!    before anything is measured).
//! 3. The model's everyday commands (deposits, withdrawals, card payments, a few freezes)
//!    are sent open loop: a token bucket releases `--rate` per second whatever the answers
//!    (at most `--max-in-flight` at once; a send that has to wait for a free slot is
//!    counted). As soon as a command is accepted, `GET /v1/accounts/{id}` goes to the ledger
//!    with the command's `Consistency-Token`: the ledger answers once it holds that version
//!    (or `202 processing` after its `wait_timeout_ms`; the bench then asks again, up to a
//!    minute, and counts the 202s).
//! 4. delay = the ledger's answer arrived − the command's answer arrived ("accepted");
//!    also reported from the command's request start, and the command's own round trip.
//!    Percentiles come from an HDR histogram (µs, 3 significant digits). The first
//!    `--warmup` of sending is not measured.
//!
//! The delay is what a client sees: the relay's publish (`relay.linger_ms`), Kafka, the
//! ledger's batching (`batch_max_wait_ms` of `[ledger.projector]` over `[projector]`,
//! printed beside the figures), the MySQL transaction, the wait's wake-up, and two HTTP
//! round trips on a shared machine.
//!
//! Exit codes: 0 every accepted command became visible and nothing failed; 1 a service
//! failed, a command failed or never became visible; 2 a bad invocation.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use prism_platform::auth::{Scope, TokenConfig};
use prism_platform::config::EventStoreBackend;
use prism_platform::Config;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::loadgen::{parse_duration, Latency, TokenBucket};
use crate::sample;
use crate::services::{self, Api, Kind, Scratch, Service, STOP_TIMEOUT};
use crate::traffic::{Op, Step, Traffic};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Commands per second, sent open loop (whatever the answers).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Measured sending time (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Sending at --rate before the measured time, not measured.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Accounts opened first; the commands go to them as the traffic model picks.
    #[arg(long, default_value_t = 200)]
    pub accounts: usize,
    /// Seed of the traffic model.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Most commands in flight at once (each until visible); a send that finds none free
    /// waits, and is counted.
    #[arg(long, default_value_t = 2_000)]
    pub max_in_flight: usize,
    /// Event store of the in-process prism-command (default: `event_store.backend`).
    #[arg(long, value_enum, conflicts_with = "command_url")]
    pub backend: Option<Backend>,
    /// Measure a running prism-command at this URL (needs --ledger-url) instead of starting
    /// both services here.
    #[arg(long, value_name = "URL", requires = "ledger_url")]
    pub command_url: Option<String>,
    /// The running prism-ledger that consumes that prism-command's topic.
    #[arg(long, value_name = "URL", requires = "command_url")]
    pub ledger_url: Option<String>,
    /// Bearer token for the running prism-command and prism-ledger.
    #[arg(
        long,
        env = "PRISMCTL_TOKEN",
        default_value = "prism-local-dev-token",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub token: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Mongodb,
    Postgres,
}

impl From<Backend> for EventStoreBackend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Mongodb => Self::Mongodb,
            Backend::Postgres => Self::Postgres,
        }
    }
}

/// How long an accepted command may take to become visible before it counts as never.
const NEVER_VISIBLE: Duration = Duration::from_secs(60);
/// Pause before reading again after the ledger refused a wait (`503 too_many_waits`).
const WAITS_REFUSED_PAUSE: Duration = Duration::from_millis(100);
/// Concurrency of the (unmeasured) account opening.
const OPENING_CONCURRENCY: usize = 16;

/// What `--json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    /// `in-process` (services started here) or `external` (--command-url/--ledger-url).
    pub mode: &'static str,
    pub command_url: String,
    pub ledger_url: String,
    /// Event store and topic of the in-process services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub accounts: usize,
    pub seed: u64,
    pub target_rate: f64,
    pub warmup_s: f64,
    /// The measured sending window.
    pub duration_s: f64,
    /// Commands sent in the measured window, and per second.
    pub sent: u64,
    pub achieved_rate: f64,
    pub accepted: u64,
    /// 422: a rule said no (nothing stored, nothing to wait for).
    pub rejected: u64,
    /// 409: another writer kept winning.
    pub conflicts: u64,
    /// Transport errors, 5xx, other 4xx, unreadable answers.
    pub errors: u64,
    /// Accepted commands seen visible in the ledger (the histogram's count).
    pub count: u64,
    /// From the command's answer (accepted) to the ledger's answer showing it.
    pub delay_ms: Latency,
    /// From the command's request start to the ledger's answer showing it.
    pub delay_from_request_ms: Latency,
    /// The command's own round trip.
    pub command_ms: Latency,
    /// `202 processing` answers (the version did not arrive within the ledger's wait).
    pub timeouts_202: u64,
    /// `503 too_many_waits` answers (the ledger's `max_waiters` were all waiting); the read
    /// is retried shortly after.
    pub waits_refused_503: u64,
    /// Accepted commands not visible within a minute.
    pub never_visible: u64,
    /// Sends that waited for a free slot under --max-in-flight (the rate was not held).
    pub send_waits: u64,
    pub max_in_flight: usize,
    /// Share of the machine's CPU time that was busy during the measured window (all
    /// processes: the services, the databases, Kafka, this bench, anything else running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu_busy: Option<f64>,
    /// The ledger's `batch_max_wait_ms` (`[ledger.projector]` over `[projector]` of this
    /// configuration; a running ledger may use another): a batch waits at most this long
    /// after its first record for more.
    pub batch_max_wait_ms: u64,
    pub ledger_wait_timeout_ms: u64,
    pub relay_linger_ms: u64,
    /// Up to five examples of errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_examples: Vec<String>,
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    check_args(args)?;
    services::logs_if_asked(config);
    let report = match (&args.command_url, &args.ledger_url) {
        (Some(command_url), Some(ledger_url)) => {
            external(config, args, command_url, ledger_url).await
        }
        _ => in_process(config, args).await,
    };
    let report = match report {
        Ok(Some(report)) => report,
        Ok(None) => return Ok(ExitCode::from(1)),
        Err(e) => {
            eprintln!("prismctl: bench visibility: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report).context("writing the report")?;
        println!("{text}");
    } else {
        print_report(&report);
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn check_args(args: &Args) -> anyhow::Result<()> {
    if !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--rate must be a positive number of commands per second");
    }
    if args.duration.is_zero() {
        bail!("--duration must be longer than 0 (e.g. 30s)");
    }
    if args.accounts == 0 || args.max_in_flight == 0 {
        bail!("--accounts and --max-in-flight must be at least 1");
    }
    for url in [&args.command_url, &args.ledger_url].into_iter().flatten() {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("{url:?} is not an http:// or https:// URL");
        }
    }
    Ok(())
}

/// Against running services. `Ok(None)`: they are not ready (said on stderr).
async fn external(
    config: &Config,
    args: &Args,
    command_url: &str,
    ledger_url: &str,
) -> anyhow::Result<Option<Report>> {
    for (name, url) in [("prism-command", command_url), ("prism-ledger", ledger_url)] {
        if let Err(e) = services::wait_ready(name, url, Duration::from_secs(10), |_| {}).await {
            eprintln!("prismctl: {e:#}");
            return Ok(None);
        }
    }
    let api = api(command_url, ledger_url, &args.token, args.max_in_flight)?;
    let mut report = tokio::select! {
        report = measure(&api, config, args) => report?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    report.mode = "external";
    Ok(Some(report))
}

/// Both services here, on names of their own that are dropped at the end.
async fn in_process(config: &Config, args: &Args) -> anyhow::Result<Option<Report>> {
    let backend: EventStoreBackend = args
        .backend
        .map(Into::into)
        .unwrap_or(config.event_store.backend);
    let scratch = Scratch::new("prism_bench_vis", backend);
    let mut cfg = config.clone();
    scratch.apply(&mut cfg);
    cfg.relay.enabled = true;
    let token = uuid::Uuid::new_v4().simple().to_string();
    cfg.command.auth_enabled = true;
    cfg.auth.tokens = vec![TokenConfig::new("bench", &token, &Scope::ALL)];
    cfg.ledger.set("auth_enabled", true);

    let down: Vec<_> = services::check_stack(&cfg)
        .await
        .into_iter()
        .filter_map(|c| c.result.err().map(|e| (c.service, c.address, e)))
        .collect();
    if !down.is_empty() {
        for (service, address, e) in down {
            eprintln!("prismctl: {service} at {address} is not answering: {e}");
        }
        eprintln!("prismctl: the bench needs the local stack: start it with `dev/stack up`");
        return Ok(None);
    }

    let mut command: Option<Service> = None;
    let mut ledger: Option<Service> = None;
    let measured = tokio::select! {
        report = start_and_measure(&cfg, args, &token, &mut command, &mut ledger) => report,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };

    // prism-command first (its relay drains), then the ledger (stores its positions).
    let bar = spinner("stopping prism-command and prism-ledger");
    let mut store_in_use = false;
    for (service, is_command) in [(command.as_mut(), true), (ledger.as_mut(), false)] {
        let Some(service) = service else { continue };
        let stopped = tokio::select! {
            stopped = service.stop(STOP_TIMEOUT) => stopped,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted while stopping")),
        };
        if let Err(e) = stopped {
            eprintln!("prismctl: stopping {}: {e:#}", service.kind().name());
            store_in_use |= is_command;
        }
    }
    bar.set_prefix("dropping what the bench created");
    for failure in scratch.remove(&cfg, store_in_use).await {
        eprintln!("prismctl: left behind: {failure}; drop it by hand");
    }
    bar.finish_and_clear();

    let mut report = measured?;
    report.mode = "in-process";
    report.backend = Some(backend.as_str());
    report.topic = Some(scratch.topic.clone());
    if store_in_use {
        report.ok = false;
    }
    Ok(Some(report))
}

async fn start_and_measure(
    config: &Config,
    args: &Args,
    token: &str,
    command: &mut Option<Service>,
    ledger: &mut Option<Service>,
) -> anyhow::Result<Report> {
    let bar = spinner("starting prism-command and prism-ledger");
    let listener = services::bind(Kind::Command, "127.0.0.1:0").await?;
    let started = command.insert(Service::start(Kind::Command, config.clone(), listener)?);
    started
        .wait_ready(Duration::from_secs(60), |why| {
            bar.set_message(why.to_owned())
        })
        .await?;
    let command_url = started.url().to_owned();
    // The ledger after the command service: the topic exists by then.
    let listener = services::bind(Kind::Ledger, "127.0.0.1:0").await?;
    let started = ledger.insert(Service::start(Kind::Ledger, config.clone(), listener)?);
    started
        .wait_ready(Duration::from_secs(120), |why| {
            bar.set_message(why.to_owned())
        })
        .await?;
    let ledger_url = started.url().to_owned();
    bar.finish_and_clear();
    let api = api(&command_url, &ledger_url, token, args.max_in_flight)?;
    measure(&api, config, args).await
}

fn api(command_url: &str, ledger_url: &str, token: &str, in_flight: usize) -> anyhow::Result<Api> {
    // Longer than any ledger wait (wait_timeout_ms), so a 202 arrives as such.
    Api::new(
        command_url,
        ledger_url,
        token,
        Duration::from_secs(30),
        in_flight.min(512),
    )
}

// ---------- the measurement ----------

/// What the commands came to.
struct Stats {
    sent: u64,
    accepted: u64,
    rejected: u64,
    conflicts: u64,
    errors: u64,
    visible: u64,
    timeouts_202: u64,
    waits_refused_503: u64,
    never_visible: u64,
    send_waits: u64,
    examples: Vec<String>,
    delay_us: Histogram<u64>,
    from_request_us: Histogram<u64>,
    command_us: Histogram<u64>,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        let histogram = || Histogram::new_with_bounds(1, 600_000_000, 3);
        Ok(Self {
            sent: 0,
            accepted: 0,
            rejected: 0,
            conflicts: 0,
            errors: 0,
            visible: 0,
            timeouts_202: 0,
            waits_refused_503: 0,
            never_visible: 0,
            send_waits: 0,
            examples: Vec::new(),
            delay_us: histogram()?,
            from_request_us: histogram()?,
            command_us: histogram()?,
        })
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.examples.len() < 5 {
            self.examples.push(message);
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

async fn measure(api: &Api, config: &Config, args: &Args) -> anyhow::Result<Report> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut traffic = Traffic::new(args.seed, args.accounts, 0.02).peekable();
    let mut opens = Vec::new();
    while let Some(step) = traffic.next_if(|s| matches!(s.op, Op::Open { .. })) {
        opens.push(step);
    }
    let ids = Arc::new(open_accounts(api, opens, &run_id, args.accounts).await?);

    let stats = Arc::new(Mutex::new(Stats::new()?));
    let in_flight = Arc::new(AtomicU64::new(0));
    let semaphore = Arc::new(Semaphore::new(args.max_in_flight));
    let mut bucket = TokenBucket::new(args.rate);
    let mut tasks = JoinSet::new();
    let bar = spinner("");
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let end = measure_from + args.duration;
    let ticker = ticker(
        bar.clone(),
        Arc::clone(&stats),
        Arc::clone(&in_flight),
        measure_from,
        args.duration,
    );
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = sample::machine_jiffies();
        tokio::time::sleep_until(end.into()).await;
        sample::busy_since(before)
    });

    for step in traffic {
        bucket.take().await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let Some(account) = ids.get(step.account).cloned().flatten() else {
            continue;
        };
        let measured = now >= measure_from;
        let permit = match Arc::clone(&semaphore).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if measured {
                    stats.lock().send_waits += 1;
                }
                Arc::clone(&semaphore)
                    .acquire_owned()
                    .await
                    .context("the in-flight limit closed")?
            }
        };
        if measured {
            stats.lock().sent += 1;
        }
        let key = format!("vis-{run_id}-{}", step.seq);
        let (api, stats, in_flight) = (api.clone(), Arc::clone(&stats), Arc::clone(&in_flight));
        in_flight.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            command_until_visible(&api, step, &account, &key, measured, &stats).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    let window = Instant::now()
        .min(end)
        .saturating_duration_since(measure_from);
    bar.set_prefix("waiting for the last commands to become visible");
    let machine_cpu_busy = cpu.await.ok().flatten();
    while tasks.join_next().await.is_some() {}
    ticker.abort();
    bar.finish_and_clear();

    let s = stats.lock();
    let secs = window.as_secs_f64();
    Ok(Report {
        ok: s.errors == 0 && s.never_visible == 0 && s.visible > 0,
        mode: "",
        command_url: api.command_url().to_owned(),
        ledger_url: api.ledger_url().to_owned(),
        backend: None,
        topic: None,
        accounts: ids.iter().flatten().count(),
        seed: args.seed,
        target_rate: args.rate,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: secs,
        sent: s.sent,
        achieved_rate: if secs > 0.0 {
            s.sent as f64 / secs
        } else {
            0.0
        },
        accepted: s.accepted,
        rejected: s.rejected,
        conflicts: s.conflicts,
        errors: s.errors,
        count: s.visible,
        delay_ms: Latency::of(&s.delay_us),
        delay_from_request_ms: Latency::of(&s.from_request_us),
        command_ms: Latency::of(&s.command_us),
        timeouts_202: s.timeouts_202,
        waits_refused_503: s.waits_refused_503,
        never_visible: s.never_visible,
        send_waits: s.send_waits,
        max_in_flight: args.max_in_flight,
        machine_cpu_busy,
        batch_max_wait_ms: config
            .ledger
            .runtime("ledger", &config.projector)?
            .batch_max_wait_ms,
        ledger_wait_timeout_ms: prism_ledger::LedgerConfig::from_config(config)?.wait_timeout_ms,
        relay_linger_ms: config.relay.linger_ms,
        error_examples: s.examples.clone(),
    })
}

/// Sends one command and, once accepted, asks the ledger for its account with the
/// command's consistency token until it answers 200.
async fn command_until_visible(
    api: &Api,
    step: Step,
    account: &str,
    key: &str,
    measured: bool,
    stats: &Mutex<Stats>,
) {
    let reply = match api.command(&step.op, account, Some(key)).await {
        Ok(reply) => reply,
        Err(e) => {
            if measured {
                stats.lock().error(format!("{e:#}"));
            }
            return;
        }
    };
    let token = match (reply.status, reply.consistency_token()) {
        (200..=299, Some(token)) => token.to_owned(),
        (422, _) => {
            if measured {
                stats.lock().rejected += 1;
            }
            return;
        }
        (409, _) => {
            if measured {
                stats.lock().conflicts += 1;
            }
            return;
        }
        _ => {
            if measured {
                let what = format!("{} answered {}", step.op.command(), reply.describe());
                stats.lock().error(what);
            }
            return;
        }
    };
    if measured {
        stats.lock().accepted += 1;
    }
    let path = format!("/v1/accounts/{account}");
    loop {
        let answer = api.ledger_get(&path, Some(&token)).await;
        // Whether to pause before reading again; the stats' lock ends with this block.
        let pause = {
            let mut s = stats.lock();
            match answer {
                Ok(q) if q.status == 200 => {
                    if measured {
                        s.visible += 1;
                        let delay = q.answered_at.saturating_duration_since(reply.answered_at);
                        let from_request = q.answered_at.saturating_duration_since(reply.sent_at);
                        s.delay_us.saturating_record(micros(delay));
                        s.from_request_us.saturating_record(micros(from_request));
                        s.command_us.saturating_record(micros(reply.latency()));
                    }
                    return;
                }
                Ok(q) if q.status == 202 => {
                    if measured {
                        s.timeouts_202 += 1;
                    }
                    if reply.answered_at.elapsed() >= NEVER_VISIBLE {
                        if measured {
                            s.never_visible += 1;
                        }
                        return;
                    }
                    false
                }
                Ok(q) if q.status == 503 && q.body["code"] == "too_many_waits" => {
                    // The ledger's waits are all taken: read again a little later.
                    if measured {
                        s.waits_refused_503 += 1;
                    }
                    if reply.answered_at.elapsed() >= NEVER_VISIBLE {
                        if measured {
                            s.never_visible += 1;
                        }
                        return;
                    }
                    true
                }
                Ok(q) => {
                    if measured {
                        s.error(format!(
                            "GET {path} with its token answered {}",
                            q.describe()
                        ));
                    }
                    return;
                }
                Err(e) => {
                    if measured {
                        s.error(format!("{e:#}"));
                    }
                    return;
                }
            }
        };
        if pause {
            tokio::time::sleep(WAITS_REFUSED_PAUSE).await;
        }
    }
}

/// Opens the model's accounts (closed loop, unmeasured) and reads each back from the
/// ledger with its token. The ids by model index.
async fn open_accounts(
    api: &Api,
    opens: Vec<Step>,
    run_id: &str,
    accounts: usize,
) -> anyhow::Result<Vec<Option<String>>> {
    let bar = ProgressBar::new(opens.len() as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} opening accounts [{elapsed_precise}] {bar:30} {pos}/{len}",
    ) {
        bar.set_style(style);
    }
    let semaphore = Arc::new(Semaphore::new(OPENING_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for step in opens {
        let permit = Arc::clone(&semaphore)
            .acquire_owned()
            .await
            .context("the opening limit closed")?;
        let (api, bar) = (api.clone(), bar.clone());
        let key = format!("vis-{run_id}-{}", step.seq);
        tasks.spawn(async move {
            let outcome = open_and_see(&api, &step.op, &key).await;
            bar.inc(1);
            drop(permit);
            (step.account, outcome)
        });
    }
    let mut ids = vec![None; accounts];
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Ok(id))) => {
                if let Some(slot) = ids.get_mut(index) {
                    *slot = Some(id);
                }
            }
            Ok((_, Err(e))) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow!("an opening task failed: {e}"));
            }
        }
    }
    bar.finish_and_clear();
    if let Some(e) = first_error {
        let opened = ids.iter().flatten().count();
        return Err(e.context(format!("opening accounts ({opened} of {accounts} opened)")));
    }
    Ok(ids)
}

async fn open_and_see(api: &Api, op: &Op, key: &str) -> anyhow::Result<String> {
    let reply = api.command(op, "", Some(key)).await?;
    let (Some(id), Some(token), true) = (
        reply.account_id(),
        reply.consistency_token(),
        reply.accepted(),
    ) else {
        bail!("prism-command answered {}", reply.describe());
    };
    let path = format!("/v1/accounts/{id}");
    let give_up = Instant::now() + NEVER_VISIBLE;
    loop {
        let q = api.ledger_get(&path, Some(token)).await?;
        match q.status {
            200 => return Ok(id.to_owned()),
            202 if Instant::now() < give_up => {}
            _ => bail!("GET {path} from prism-ledger answered {}", q.describe()),
        }
    }
}

// ---------- output ----------

fn spinner(prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {msg}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(prefix.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn ticker(
    bar: ProgressBar,
    stats: Arc<Mutex<Stats>>,
    in_flight: Arc<AtomicU64>,
    measure_from: Instant,
    duration: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let now = Instant::now();
            if now < measure_from {
                bar.set_prefix("warm-up");
                bar.set_message(format!("{} in flight", in_flight.load(Ordering::Relaxed)));
                continue;
            }
            let elapsed = now.duration_since(measure_from);
            let message = {
                let s = stats.lock();
                let p99 = if s.delay_us.is_empty() {
                    0.0
                } else {
                    s.delay_us.value_at_quantile(0.99) as f64 / 1_000.0
                };
                format!(
                    "{:.0}/{:.0} s | sent {} ({:.0}/s) | visible {} | p99 {p99:.1} ms | in flight {} | 202 {} | errors {}",
                    elapsed.as_secs_f64().min(duration.as_secs_f64()),
                    duration.as_secs_f64(),
                    s.sent,
                    s.sent as f64 / elapsed.as_secs_f64().max(1e-3),
                    s.visible,
                    in_flight.load(Ordering::Relaxed),
                    s.timeouts_202,
                    s.errors
                )
            };
            bar.set_prefix("measuring");
            bar.set_message(message);
        }
    })
}

fn print_report(r: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "bench visibility: from a command's acceptance to its visibility in the ledger"
    );
    match (r.backend, &r.topic) {
        (Some(backend), Some(topic)) => {
            let _ = writeln!(
                out,
                "  in this process: prism-command ({backend} event store) → Kafka topic {topic} \
                 → prism-ledger (MySQL); {} accounts, seed {}",
                r.accounts, r.seed
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "  running services: prism-command {} → prism-ledger {}; {} accounts, seed {}",
                r.command_url, r.ledger_url, r.accounts, r.seed
            );
        }
    }
    let _ = writeln!(
        out,
        "  open loop at {:.0}/s for {:.1} s after a {:.1} s warm-up: sent {} ({:.1}/s achieved); \
         accepted {}, rejected by rules {}, conflicts {}, errors {}",
        r.target_rate,
        r.duration_s,
        r.warmup_s,
        r.sent,
        r.achieved_rate,
        r.accepted,
        r.rejected,
        r.conflicts,
        r.errors
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<26} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (name, l) in [
        ("accepted → visible", &r.delay_ms),
        ("request sent → visible", &r.delay_from_request_ms),
        ("command round trip", &r.command_ms),
    ] {
        let _ = writeln!(
            out,
            "  {name:<26} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            r.count, l.p50, l.p90, l.p99, l.max
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  visible: GET /v1/accounts/{{id}} with the command's Consistency-Token answered 200 \
         (the ledger waits for that version); accepted: prism-command's answer arrived"
    );
    let _ = writeln!(
        out,
        "  202 processing (not visible within the ledger's wait_timeout_ms {}): {} · 503 waits \
         refused (the ledger's max_waiters busy): {} · never visible within {} s: {} · sends \
         that waited for --max-in-flight {}: {}",
        r.ledger_wait_timeout_ms,
        r.timeouts_202,
        r.waits_refused_503,
        NEVER_VISIBLE.as_secs(),
        r.never_visible,
        r.max_in_flight,
        r.send_waits
    );
    let source = if r.mode == "external" {
        " (this configuration's values; the running services may use others)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "  ledger batch_max_wait_ms = {} (a batch waits up to this long after its first \
         record for more), relay linger_ms = {}{source}",
        r.batch_max_wait_ms, r.relay_linger_ms
    );
    if let Some(busy) = r.machine_cpu_busy {
        let _ = writeln!(
            out,
            "  the machine's CPU was {:.0}% busy during the measured window (every process)",
            busy * 100.0
        );
    }
    if r.achieved_rate < 0.95 * r.target_rate || r.command_ms.p50 > 100.0 {
        let _ = writeln!(
            out,
            "  warning: the write side did not keep up with {:.0}/s here (achieved {:.0}/s, \
             command round trip p50 {:.0} ms): the delays include queueing; try a lower --rate \
             or a quieter machine",
            r.target_rate, r.achieved_rate, r.command_ms.p50
        );
    }
    for example in &r.error_examples {
        let _ = writeln!(out, "  error, e.g.: {example}");
    }
    let _ = writeln!(out, "{}", if r.ok { "OK" } else { "FAILED" });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(rate: f64, duration: Duration) -> Args {
        Args {
            rate,
            duration,
            warmup: Duration::ZERO,
            accounts: 10,
            seed: 1,
            max_in_flight: 100,
            backend: None,
            command_url: None,
            ledger_url: None,
            token: String::new(),
            json: false,
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(check_args(&args(500.0, Duration::from_secs(30))).is_ok());
        assert!(check_args(&args(0.0, Duration::from_secs(30))).is_err());
        assert!(check_args(&args(f64::INFINITY, Duration::from_secs(30))).is_err());
        assert!(check_args(&args(500.0, Duration::ZERO)).is_err());
        let mut external = args(500.0, Duration::from_secs(1));
        external.command_url = Some("localhost:8080".into());
        assert!(check_args(&external).is_err());
        external.command_url = Some("http://localhost:8080".into());
        external.ledger_url = Some("http://localhost:8081".into());
        assert!(check_args(&external).is_ok());
    }
}
