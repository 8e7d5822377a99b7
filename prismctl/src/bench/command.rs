//! `prismctl bench command`: how fast the write side is, next to how fast its store can be.
//!
//! In one run on one machine:
//! 1. **Commands.** The real prism-command ([`prism_command::app::run`], relay enabled) runs
//!    in this process on a port-0 listener, with its own fresh database or schema and Kafka
//!    topic named `prism_bench_<random>`. `--accounts` accounts are opened and funded, then
//!    `--concurrency` HTTP clients send deposits and withdrawals on random accounts in a
//!    closed loop.
//! 2. **Raw appends.** The same store backend, in another fresh database or schema
//!    (`prism_bench_<random>_raw`), gets the same kind of commits through
//!    `insert_unchecked` — exactly the document or rows an append writes, without the
//!    version check, the idempotency lookups, HTTP or the relay — from the same number of
//!    concurrent tasks, each account written by one task: the ceiling the command path could
//!    reach on this machine.
//!
//! Each side first warms up (`--warmup`, not measured). The measured time (`--duration`, or
//! `--commands`) of each side is then split into `--rounds` slices run alternately —
//! commands, raw appends, commands, … — so that other load on the machine (a compiler, a
//! test run) weighs on both sides alike instead of skewing the ratio.
//!
//! The ratio commands/s ÷ raw appends/s says how much of the store's speed the command path
//! keeps. Beside latency, each side reports this process's CPU time per operation (server
//! and HTTP clients, or the raw tasks) and how busy the whole machine was: at 100 % the
//! ratio is a ratio of CPU costs per operation, databases and Kafka included.
//!
//! The bench drops everything it created (databases or schemas, topic) on success, on error
//! and on Ctrl-C — except a store prism-command could not be stopped from using, which it
//! names instead (on FerretDB, dropping a database under an open query can wedge the server).

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{SubsecRound, Utc};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use prism_command::store::mongo::MongoStore;
use prism_command::store::postgres::PgStore;
use prism_command::store::{EventStore, StoreError};
use prism_events::event::{AccountOpened, MoneyDeposited, MoneyWithdrawn, WithdrawalChannel};
use prism_events::{AccountEvent, AccountId, Country, Currency, Envelope};
use prism_platform::auth::{Scope, TokenConfig};
use prism_platform::config::EventStoreBackend;
use prism_platform::Config;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::loadgen::{parse_duration, Client, Latency, Outcome};
use crate::sample;
use crate::traffic::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
/// An event store backend, as a flag.
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

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Event store to measure (default: `event_store.backend` of the configuration).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Concurrent HTTP clients (and concurrent raw-append tasks).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured time of each phase (e.g. 20s, 1m); ignored with --commands.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    duration: Duration,
    /// Measure exactly this many commands (and as many raw appends) instead of a duration.
    #[arg(long)]
    commands: Option<u64>,
    /// Accounts opened (and funded) before measuring; commands pick them at random.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// The measured time (or --commands) is split into this many slices per side, run
    /// alternately (commands, raw appends, commands, …), so that a change in the machine's
    /// load weighs on both sides alike.
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// Unmeasured warm-up of each side before the measured slices.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    warmup: Duration,
    /// Seed of the workload (which account, deposit or withdrawal, amount).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Send commands without an Idempotency-Key header (by default every command has one,
    /// as `loadgen` and careful clients send).
    #[arg(long)]
    no_idempotency_keys: bool,
    /// Events of seeded history (as `prismctl seed` writes them, over one account per 50
    /// events) stored in the command side's store before prism-command starts, as published
    /// long ago (they never reach Kafka), to measure at a large store: one scan of the whole
    /// store (what `verify` reads) is timed, then one deposit to each of `--cold-accounts`
    /// history accounts (a load from the store each), then the usual phases. The raw side's
    /// store stays empty.
    #[arg(long, default_value_t = 0)]
    history: u64,
    /// History accounts that get one deposit each (with `--history`).
    #[arg(long, default_value_t = 2_000)]
    cold_accounts: usize,
    /// Print the figures and the ratio as JSON.
    #[arg(long)]
    json: bool,
}

/// What a run with `--history` measured before the usual phases.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub events: u64,
    pub accounts: usize,
    /// Writing the history through the raw insert.
    pub seed_s: f64,
    /// One [`EventStore::scan`] of the whole store (what `prismctl verify` reads).
    pub scan_s: f64,
    pub scan_events_per_second: f64,
    /// One deposit to each of `--cold-accounts` history accounts that prism-command had not
    /// seen: each loads its account (snapshot + tail) from the large store.
    pub cold_commands: Figures,
}

/// The figures of one measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Successful operations in the measured window.
    pub count: u64,
    pub elapsed_s: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Rule rejections (422); none are expected from the bench workload.
    pub rejected: u64,
    /// Failures (transport, 5xx, other 4xx, store errors).
    pub errors: u64,
    /// CPU time of this process (server and clients, or the raw-append tasks) per operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_cpu_ms_per_op: Option<f64>,
    /// Share of the machine's CPU time that was busy during the window (all processes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu_busy: Option<f64>,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub backend: &'static str,
    pub concurrency: usize,
    pub accounts: usize,
    pub idempotency_keys: bool,
    /// Slices each side's measured time was split into, alternating commands and raw appends.
    pub rounds: u32,
    pub command: Figures,
    pub raw_append: Figures,
    /// Commands/s ÷ raw appends/s.
    pub ratio: f64,
    /// Events the relay had acknowledged by Kafka when the last command slice ended, and
    /// events stored by then.
    pub relay_published: Option<u64>,
    pub events_stored: u64,
    /// How long prism-command took to stop after the last slice: its relay publishes what
    /// is still queued first (long when the relay fell behind).
    pub shutdown_s: Option<f64>,
    /// With `--history`: the store's size and what was measured on it first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    if args.concurrency == 0 || args.accounts == 0 {
        bail!("--concurrency and --accounts must be at least 1");
    }
    if args.commands == Some(0) || (args.commands.is_none() && args.duration.is_zero()) {
        bail!("nothing to measure: give a non-zero --duration or --commands");
    }
    let backend: EventStoreBackend = args
        .backend
        .map(Into::into)
        .unwrap_or(config.event_store.backend);
    let id = Uuid::new_v4().simple().to_string();
    let name = format!("prism_bench_{}", &id[..12]);
    let raw_name = format!("{name}_raw");
    let leftovers = Leftovers {
        backend,
        stores: vec![name.clone(), raw_name.clone()],
        topic: name.clone(),
    };

    let mut server: Option<Server> = None;
    let measured = tokio::select! {
        result = measure(config, args, backend, &name, &raw_name, &mut server) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // A store that prism-command may still be using is not dropped: on FerretDB, dropping a
    // database while a query on it is open can wedge the whole server.
    let mut still_used = None;
    let mut shutdown_s = None;
    if let Some(server) = server.as_mut() {
        let bar = bar("stopping (relay drain)", None);
        let began = Instant::now();
        // A second Ctrl-C gives up waiting (and leaves the store behind, named).
        let stopped = tokio::select! {
            result = server.stop() => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted while stopping")),
        };
        match stopped {
            Ok(()) => shutdown_s = Some(began.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("prismctl: stopping the benchmarked prism-command: {e:#}");
                still_used = Some(name.as_str());
            }
        }
        bar.finish_and_clear();
    }
    leftovers.remove(config, still_used).await;
    let mut report = measured?;
    report.shutdown_s = shutdown_s;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let failed = report.command.errors + report.raw_append.errors > 0 || still_used.is_some();
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Both phases; `server` holds the running prism-command so the caller can stop it
/// whatever happens here.
async fn measure(
    config: &Config,
    args: &Args,
    backend: EventStoreBackend,
    name: &str,
    raw_name: &str,
    server: &mut Option<Server>,
) -> anyhow::Result<Report> {
    let accounts = args.accounts.max(args.concurrency);
    let keys = !args.no_idempotency_keys;
    let rounds = args.rounds.max(1);

    // The command path: prism-command in this process, driven over HTTP.
    let token = Uuid::new_v4().simple().to_string();
    let mut cfg = config.clone();
    cfg.event_store.backend = backend;
    match backend {
        EventStoreBackend::Mongodb => cfg.mongodb.database = name.to_owned(),
        EventStoreBackend::Postgres => cfg.event_store.postgres_schema = name.to_owned(),
    }
    cfg.kafka.topic = name.to_owned();
    cfg.relay.enabled = true;
    cfg.command.auth_enabled = true;
    cfg.auth.tokens = vec![TokenConfig::new("bench", &token, &Scope::ALL)];
    let seeded = match args.history {
        0 => None,
        events => Some(write_history(&cfg, backend, name, args, events).await?),
    };
    let scanned = match &seeded {
        None => None,
        Some(_) => Some(scan_store(&cfg).await?),
    };
    let started = server.insert(Server::start(cfg).await?);
    started.wait_ready().await?;
    let client = Client::new(
        &started.base,
        &token,
        args.concurrency,
        Duration::from_secs(60),
        0,
    )?;
    let history = match seeded {
        None => None,
        Some((seeded, accounts)) => {
            let (scanned, scan_s) = scanned.unwrap_or((0, 0.0));
            let cold = accounts.len().min(args.cold_accounts);
            let (tally, elapsed) = drive_cold(&client, &accounts[..cold], args.concurrency).await?;
            Some(History {
                events: seeded.events,
                accounts: seeded.accounts,
                seed_s: seeded.seconds,
                scan_s,
                scan_events_per_second: scanned as f64 / scan_s.max(1e-9),
                cold_commands: tally.figures(elapsed),
            })
        }
    };
    let ids = Arc::new(open_accounts(&client, accounts, args.concurrency).await?);
    let (warm, _) = drive_commands(
        &client,
        &ids,
        args,
        Window::warmup(args.warmup),
        "warm-up",
        keys,
    )
    .await?;

    // The raw append ceiling: the same backend, another fresh database or schema.
    let store = RawStore::open(config, backend, raw_name).await?;
    let streams = store.open_accounts(accounts, args.concurrency).await?;
    let (mut streams, _, _) = drive_raw(
        &store,
        streams,
        args,
        Window::warmup(args.warmup),
        "raw warm-up",
    )
    .await?;

    // Alternate slices, so that a change in the machine's load weighs on both alike.
    let mut command = Phase::new()?;
    let mut raw = Phase::new()?;
    let mut relay_published = None;
    for round in 0..rounds {
        let window = Window::slice(args, round, rounds);
        let cpu = CpuSample::now();
        let label = format!("commands {}/{rounds}", round + 1);
        let (tally, elapsed) = drive_commands(&client, &ids, args, window, &label, keys).await?;
        command.add(tally, elapsed, &cpu)?;
        if round + 1 == rounds {
            relay_published = started.relay_published(&client).await;
        }

        let window = Window::slice(args, round, rounds);
        let cpu = CpuSample::now();
        let label = format!("raw appends {}/{rounds}", round + 1);
        let (rest, tally, elapsed) = drive_raw(&store, streams, args, window, &label).await?;
        streams = rest;
        raw.add(tally, elapsed, &cpu)?;
    }
    let events_stored = 2 * ids.len() as u64
        + warm.ok
        + command.tally.ok
        + history
            .as_ref()
            .map_or(0, |h| h.events + h.cold_commands.count);

    let (command, raw_append) = (command.figures(), raw.figures());
    let ratio = if raw_append.per_second > 0.0 {
        command.per_second / raw_append.per_second
    } else {
        0.0
    };
    Ok(Report {
        backend: backend.as_str(),
        concurrency: args.concurrency,
        accounts,
        idempotency_keys: keys,
        rounds,
        command,
        raw_append,
        ratio,
        relay_published,
        events_stored,
        shutdown_s: None,
        history,
    })
}

/// Writes `events` events of seeded history into the store `name` (as `prismctl seed`);
/// answers what was written and the history's account ids, in a seeded order.
async fn write_history(
    config: &Config,
    backend: EventStoreBackend,
    name: &str,
    args: &Args,
    events: u64,
) -> anyhow::Result<(crate::seed::Seeded, Vec<String>)> {
    let seed_args = crate::seed::Args {
        events,
        accounts: usize::try_from((events / 50).max(1)).unwrap_or(usize::MAX),
        seed: args.seed,
        concurrency: 32,
        step: Duration::from_millis(50),
        backend: None,
        json: false,
    };
    let seeded = crate::seed::seed(config, backend, name, &seed_args, true)
        .await
        .context("writing the history")?;
    RawStore::open(config, backend, name)
        .await?
        .discard_backlog()
        .await
        .context("marking the history published")?;
    let accounts = crate::seed::account_ids(&seed_args);
    Ok((seeded, accounts))
}

/// Scans the whole store of `config` once, as `prismctl verify` reads it: the events read
/// and the seconds it took.
async fn scan_store(config: &Config) -> anyhow::Result<(u64, f64)> {
    use futures::StreamExt;
    let store = prism_command::app::open_store(config).await?;
    let bar = bar("scanning the store", None);
    let started = Instant::now();
    let mut events = 0_u64;
    let mut scan = store.scan(10_000);
    while let Some(page) = scan.next().await {
        events += page.context("scanning the store")?.len() as u64;
        bar.set_position(events);
    }
    bar.finish_and_clear();
    Ok((events, started.elapsed().as_secs_f64()))
}

/// One deposit to each of `accounts`, `concurrency` at a time: each is the first command
/// prism-command sees for its account, so each loads the account from the store.
async fn drive_cold(
    client: &Client,
    accounts: &[String],
    concurrency: usize,
) -> anyhow::Result<(Tally, Duration)> {
    let bar = bar("cold accounts", Some(accounts.len() as u64));
    let accounts: Arc<Vec<String>> = Arc::new(accounts.to_vec());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, accounts, next, bar) = (
            client.clone(),
            Arc::clone(&accounts),
            Arc::clone(&next),
            bar.clone(),
        );
        tasks.spawn(async move {
            let mut tally = Tally::new()?;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(account) = accounts.get(index) else {
                    return Ok::<_, anyhow::Error>(tally);
                };
                let key = format!("bench-cold-{}", Uuid::now_v7());
                // A history account may be frozen or closed: a rejection, counted.
                tally.answer(client.send(&funding_op(), account, Some(&key)).await);
                bar.inc(1);
            }
        });
    }
    let tally = collect(&mut tasks).await?;
    bar.finish_and_clear();
    Ok((tally, started.elapsed()))
}

/// CPU counters at the start of a slice.
struct CpuSample {
    /// This process's user + system time, in clock ticks.
    process_ticks: Option<u64>,
    /// The machine's (busy, total) ticks.
    machine: Option<(u64, u64)>,
}

impl CpuSample {
    fn now() -> Self {
        Self {
            process_ticks: sample::own_ticks(),
            machine: sample::machine_jiffies(),
        }
    }
}

/// One side's slices added up.
struct Phase {
    tally: Tally,
    elapsed: Duration,
    process_ticks: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl Phase {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            tally: Tally::new()?,
            elapsed: Duration::ZERO,
            process_ticks: Some(0),
            machine: Some((0, 0)),
        })
    }

    /// Adds a slice that started at `since`.
    fn add(&mut self, tally: Tally, elapsed: Duration, since: &CpuSample) -> anyhow::Result<()> {
        self.tally.merge(tally)?;
        self.elapsed += elapsed;
        let now = CpuSample::now();
        self.process_ticks = match (self.process_ticks, since.process_ticks, now.process_ticks) {
            (Some(sum), Some(before), Some(after)) => Some(sum + after.saturating_sub(before)),
            _ => None,
        };
        self.machine = match (self.machine, since.machine, now.machine) {
            (Some((busy, total)), Some((b0, t0)), Some((b1, t1))) => {
                Some((busy + b1.saturating_sub(b0), total + t1.saturating_sub(t0)))
            }
            _ => None,
        };
        Ok(())
    }

    fn figures(&self) -> Figures {
        let mut figures = self.tally.figures(self.elapsed);
        if let Some(ticks) = self.process_ticks.filter(|_| self.tally.ok > 0) {
            let ms = ticks as f64 / sample::ticks_per_second() * 1_000.0;
            figures.process_cpu_ms_per_op = Some(ms / self.tally.ok as f64);
        }
        if let Some((busy, total)) = self.machine.filter(|(_, total)| *total > 0) {
            figures.machine_cpu_busy = Some(busy as f64 / total as f64);
        }
        figures
    }
}

// ---------- prism-command in this process ----------

/// How long prism-command may take to stop: its relay first publishes what is queued, which
/// takes minutes when it fell far behind (FerretDB).
const STOP_TIMEOUT: Duration = Duration::from_secs(600);

/// prism-command started with [`prism_command::app::run`] on a port-0 listener.
struct Server {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Set once it stopped and returned without an error.
    stopped: bool,
}

impl Server {
    async fn start(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a port for prism-command")?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(prism_command::app::run(config, listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            base: format!("http://{address}"),
            stop: Some(stop),
            task: Some(task),
            stopped: false,
        })
    }

    /// Waits until `/readyz` answers 200 (store and Kafka reachable).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let probe = Client::new(&self.base, "", 1, Duration::from_secs(5), 0)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let result = match self.task.take() {
                    Some(task) => task.await,
                    None => break,
                };
                // Finished: nothing uses its store any more.
                self.stopped = true;
                return match result {
                    Ok(Ok(())) => Err(anyhow!("prism-command stopped during start-up")),
                    Ok(Err(e)) => Err(e.context("starting prism-command")),
                    Err(e) => Err(anyhow!("prism-command panicked during start-up: {e}")),
                };
            }
            match probe.get_ok("/readyz").await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("prism-command was not ready within 60 s: {last}")
    }

    /// `prism_relay_published_total` from `/metrics`.
    async fn relay_published(&self, client: &Client) -> Option<u64> {
        let text = client.get_text("/metrics").await.ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("prism_relay_published_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    /// Stops taking requests, lets the relay publish what is queued, and waits for it.
    /// Calling it again answers the same: `Ok` only if it stopped cleanly.
    async fn stop(&mut self) -> anyhow::Result<()> {
        drop(self.stop.take());
        let Some(task) = self.task.take() else {
            return if self.stopped {
                Ok(())
            } else {
                Err(anyhow!("prism-command did not stop cleanly"))
            };
        };
        let result = match tokio::time::timeout(STOP_TIMEOUT, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(anyhow!("prism-command panicked: {e}")),
            Err(_) => Err(anyhow!(
                "prism-command did not stop within {} s (its relay was still publishing)",
                STOP_TIMEOUT.as_secs()
            )),
        };
        self.stopped = result.is_ok();
        result
    }
}

// ---------- the workload ----------

const BENCH_LIMIT_MINOR: i64 = 1_000_000_000_000;
const BENCH_FUNDING_MINOR: i64 = 100_000_000_000;

fn open_op(index: usize) -> Op {
    Op::Open {
        holder_name: format!("Bench Customer {index}"),
        email: format!("bench.{index}@example.org"),
        country: "DE",
        currency: "EUR",
        daily_withdrawal_limit_minor: BENCH_LIMIT_MINOR,
    }
}

fn funding_op() -> Op {
    Op::Deposit {
        amount_minor: BENCH_FUNDING_MINOR,
        description: "bench funding",
    }
}

/// A deposit or a withdrawal of a few euros; funding and limit make every one acceptable.
fn workload_op(rng: &mut ChaCha8Rng) -> Op {
    let amount_minor = rng.gen_range(100..=50_000);
    if rng.gen_bool(0.5) {
        Op::Deposit {
            amount_minor,
            description: "bench deposit",
        }
    } else {
        Op::Withdraw {
            amount_minor,
            channel: "atm",
            description: "bench withdrawal",
        }
    }
}

/// The event the command service stores for a workload [`Op`].
fn event_of(op: &Op) -> anyhow::Result<AccountEvent> {
    Ok(match op {
        Op::Open {
            holder_name,
            email,
            country,
            currency,
            daily_withdrawal_limit_minor,
        } => AccountEvent::AccountOpened(AccountOpened {
            holder_name: holder_name.clone(),
            email: email.clone(),
            country: Country::parse(country)?,
            currency: Currency::parse(currency)?,
            daily_withdrawal_limit_minor: *daily_withdrawal_limit_minor,
        }),
        Op::Deposit {
            amount_minor,
            description,
        } => AccountEvent::MoneyDeposited(MoneyDeposited {
            amount_minor: *amount_minor,
            description: Some((*description).to_owned()),
        }),
        Op::Withdraw {
            amount_minor,
            description,
            ..
        } => AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
            amount_minor: *amount_minor,
            description: Some((*description).to_owned()),
            channel: WithdrawalChannel::Atm,
        }),
        other => bail!("the bench workload has no {}", other.command()),
    })
}

/// When a phase stops: at a deadline, or after a number of operations.
#[derive(Debug)]
struct Window {
    duration: Duration,
    limit: Option<u64>,
    issued: AtomicU64,
}

impl Window {
    fn warmup(duration: Duration) -> Self {
        Self {
            duration,
            limit: None,
            issued: AtomicU64::new(0),
        }
    }

    /// Slice `round` of `rounds` of the measured time (or of --commands).
    fn slice(args: &Args, round: u32, rounds: u32) -> Self {
        let limit = args.commands.map(|n| {
            let each = n / u64::from(rounds);
            if round + 1 == rounds {
                n - each * u64::from(rounds - 1)
            } else {
                each
            }
        });
        Self {
            duration: args.duration / rounds,
            limit,
            issued: AtomicU64::new(0),
        }
    }

    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.duration.is_zero()
    }

    /// Whether one more operation may start.
    fn admit(&self, started: Instant) -> bool {
        match self.limit {
            Some(limit) => self.issued.fetch_add(1, Ordering::Relaxed) < limit,
            None => started.elapsed() < self.duration,
        }
    }
}

/// One worker's tally.
struct Tally {
    ok: u64,
    rejected: u64,
    errors: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            ok: 0,
            rejected: 0,
            errors: 0,
            first_error: None,
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        })
    }

    fn latency(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
    }

    /// Counts a command's answer: stored (with its latency), rejected, or an error.
    fn answer(&mut self, answer: crate::loadgen::Answer) {
        match &answer.outcome {
            o if o.stored() => {
                self.ok += 1;
                self.latency(answer.latency);
            }
            Outcome::Rejected(_) | Outcome::Conflict => self.rejected += 1,
            other => self.error(format!(
                "{} {}",
                other.label(),
                answer.detail.unwrap_or_default()
            )),
        }
    }

    fn error(&mut self, detail: String) {
        self.errors += 1;
        self.first_error.get_or_insert(detail);
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency_us.add(&other.latency_us)?;
        Ok(())
    }

    fn figures(&self, elapsed: Duration) -> Figures {
        let latency = Latency::of(&self.latency_us);
        let secs = elapsed.as_secs_f64().max(1e-9);
        Figures {
            count: self.ok,
            elapsed_s: secs,
            per_second: self.ok as f64 / secs,
            p50_ms: latency.p50,
            p99_ms: latency.p99,
            max_ms: latency.max,
            rejected: self.rejected,
            errors: self.errors,
            process_cpu_ms_per_op: None,
            machine_cpu_busy: None,
        }
    }
}

/// Opens and funds `n` accounts over HTTP, `concurrency` at a time; their ids.
async fn open_accounts(
    client: &Client,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let bar = bar("opening accounts", Some(n as u64));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let (client, next, bar) = (client.clone(), Arc::clone(&next), bar.clone());
        tasks.spawn(async move {
            let mut opened = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                if index >= n {
                    return Ok::<_, anyhow::Error>(opened);
                }
                let key = format!("bench-open-{}", Uuid::now_v7());
                let answer = client.send(&open_op(index), "", Some(&key)).await;
                let id = match (&answer.outcome, answer.account_id) {
                    (Outcome::Accepted, Some(id)) => id,
                    (outcome, _) => bail!(
                        "opening a bench account: {} {}",
                        outcome.label(),
                        answer.detail.unwrap_or_default()
                    ),
                };
                let key = format!("bench-fund-{}", Uuid::now_v7());
                let answer = client.send(&funding_op(), &id, Some(&key)).await;
                if answer.outcome != Outcome::Accepted {
                    bail!(
                        "funding a bench account: {} {}",
                        answer.outcome.label(),
                        answer.detail.unwrap_or_default()
                    );
                }
                opened.push((index, id));
                bar.inc(1);
            }
        });
    }
    let mut ids = vec![String::new(); n];
    while let Some(result) = tasks.join_next().await {
        for (index, id) in result.map_err(|e| anyhow!("an opening task failed: {e}"))?? {
            ids[index] = id;
        }
    }
    bar.finish_and_clear();
    Ok(ids)
}

/// `--concurrency` HTTP clients in a closed loop: deposits and withdrawals on random accounts.
async fn drive_commands(
    client: &Client,
    ids: &Arc<Vec<String>>,
    args: &Args,
    window: Window,
    label: &str,
    keys: bool,
) -> anyhow::Result<(Tally, Duration)> {
    if window.is_empty() {
        return Ok((Tally::new()?, Duration::ZERO));
    }
    let window = Arc::new(window);
    let done = Arc::new(AtomicU64::new(0));
    let bar = bar(label, window.limit);
    let ticker = tick(bar.clone(), Arc::clone(&done), window.limit.is_none());
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..args.concurrency {
        let (client, ids, window, done) = (
            client.clone(),
            Arc::clone(ids),
            Arc::clone(&window),
            Arc::clone(&done),
        );
        let seed = args.seed ^ ((worker as u64 + 1) << 32) ^ started.elapsed().as_nanos() as u64;
        tasks.spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut tally = Tally::new()?;
            while window.admit(started) {
                let account = &ids[rng.gen_range(0..ids.len())];
                let op = workload_op(&mut rng);
                let key = keys.then(|| format!("bench-{}", Uuid::now_v7()));
                tally.answer(client.send(&op, account, key.as_deref()).await);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(tally)
        });
    }
    let tally = collect(&mut tasks).await?;
    let elapsed = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    if let Some(e) = &tally.first_error {
        eprintln!("prismctl: {label}: {} failed, e.g. {e}", tally.errors);
    }
    Ok((tally, elapsed))
}

async fn collect(tasks: &mut JoinSet<anyhow::Result<Tally>>) -> anyhow::Result<Tally> {
    let mut total = Tally::new()?;
    while let Some(result) = tasks.join_next().await {
        total.merge(result.map_err(|e| anyhow!("a bench task failed: {e}"))??)?;
    }
    Ok(total)
}

// ---------- the raw append ceiling ----------

/// The store backend used directly, through its `insert_unchecked` (also what
/// `prismctl seed` fills a store with).
#[derive(Clone)]
pub(crate) enum RawStore {
    Mongo(MongoStore),
    Postgres(PgStore),
}

/// One account's stream as a raw task writes it: the id and the last version written.
type Stream = (AccountId, u64);

impl RawStore {
    pub(crate) async fn open(
        config: &Config,
        backend: EventStoreBackend,
        name: &str,
    ) -> anyhow::Result<Self> {
        let store = match backend {
            EventStoreBackend::Mongodb => {
                let client =
                    prism_platform::clients::mongodb(&config.mongodb, "prismctl-bench").await?;
                Self::Mongo(
                    MongoStore::new(client, name)
                        .with_ferretdb_postgres(config.mongodb.ferretdb_postgres().cloned()),
                )
            }
            EventStoreBackend::Postgres => {
                let pool = prism_platform::clients::postgres(&config.postgres).await?;
                Self::Postgres(PgStore::new(pool, name))
            }
        };
        match &store {
            Self::Mongo(s) => s.init().await,
            Self::Postgres(s) => s.init().await,
        }
        .context("initialising the raw-append store")?;
        Ok(store)
    }

    /// Takes everything stored off the outbox (see the stores' `discard_backlog`).
    async fn discard_backlog(&self) -> Result<(), StoreError> {
        match self {
            Self::Mongo(s) => s.discard_backlog().await,
            Self::Postgres(s) => s.discard_backlog().await,
        }
    }

    pub(crate) async fn insert(&self, events: &[Envelope]) -> Result<(), StoreError> {
        match self {
            Self::Mongo(s) => s.insert_unchecked(events).await,
            Self::Postgres(s) => s.insert_unchecked(events).await,
        }
    }

    /// Writes `n` accounts' opening and funding commits; the streams, split among `tasks`
    /// so that each account has one writer (as the command service's per-account queue).
    async fn open_accounts(&self, n: usize, tasks: usize) -> anyhow::Result<Vec<Vec<Stream>>> {
        let bar = bar("raw: opening accounts", Some(n as u64));
        let mut set = JoinSet::new();
        for task in 0..tasks {
            let (store, bar) = (self.clone(), bar.clone());
            set.spawn(async move {
                let mut streams = Vec::new();
                for index in (task..n).step_by(tasks) {
                    let account = AccountId::generate();
                    for (version, op) in [(1, open_op(index)), (2, funding_op())] {
                        store
                            .insert(&[envelope(account, version, event_of(&op)?)])
                            .await?;
                    }
                    streams.push((account, 2));
                    bar.inc(1);
                }
                Ok::<_, anyhow::Error>(streams)
            });
        }
        let mut all = Vec::with_capacity(tasks);
        while let Some(result) = set.join_next().await {
            all.push(result.map_err(|e| anyhow!("a raw task failed: {e}"))??);
        }
        bar.finish_and_clear();
        Ok(all)
    }
}

/// An envelope as the command service builds it (ids, time at microseconds, correlation
/// and causation ids as a request without headers gets).
fn envelope(account_id: AccountId, account_version: u64, event: AccountEvent) -> Envelope {
    Envelope {
        id: Uuid::now_v7(),
        source: "/prism/command".into(),
        account_id,
        time: Utc::now().trunc_subsecs(6),
        account_version,
        correlation_id: Some(Uuid::now_v7().to_string()),
        causation_id: Some(Uuid::now_v7().to_string()),
        event,
    }
}

/// `--concurrency` tasks inserting one-event commits on their own accounts, round robin.
async fn drive_raw(
    store: &RawStore,
    streams: Vec<Vec<Stream>>,
    args: &Args,
    window: Window,
    label: &str,
) -> anyhow::Result<(Vec<Vec<Stream>>, Tally, Duration)> {
    if window.is_empty() {
        return Ok((streams, Tally::new()?, Duration::ZERO));
    }
    let window = Arc::new(window);
    let done = Arc::new(AtomicU64::new(0));
    let bar = bar(label, window.limit);
    let ticker = tick(bar.clone(), Arc::clone(&done), window.limit.is_none());
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (worker, mut mine) in streams.into_iter().enumerate() {
        let (store, window, done) = (store.clone(), Arc::clone(&window), Arc::clone(&done));
        let seed = args.seed ^ ((worker as u64 + 1) << 40) ^ started.elapsed().as_nanos() as u64;
        tasks.spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut tally = Tally::new()?;
            let mut next = 0;
            while !mine.is_empty() && window.admit(started) {
                let slot = next % mine.len();
                let (account, version) = &mut mine[slot];
                next += 1;
                let event = envelope(*account, *version + 1, event_of(&workload_op(&mut rng))?);
                let began = Instant::now();
                match store.insert(std::slice::from_ref(&event)).await {
                    Ok(()) => {
                        *version += 1;
                        tally.ok += 1;
                        tally.latency(began.elapsed());
                    }
                    Err(e) => tally.error(e.to_string()),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>((mine, tally))
        });
    }
    let mut all = Vec::new();
    let mut total = Tally::new()?;
    while let Some(result) = tasks.join_next().await {
        let (mine, tally) = result.map_err(|e| anyhow!("a raw task failed: {e}"))??;
        all.push(mine);
        total.merge(tally)?;
    }
    let elapsed = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    if let Some(e) = &total.first_error {
        eprintln!("prismctl: {label}: {} failed, e.g. {e}", total.errors);
    }
    Ok((all, total, elapsed))
}

// ---------- leaving nothing behind ----------

/// What the bench creates, to drop whatever happens.
struct Leftovers {
    backend: EventStoreBackend,
    /// MongoDB databases or PostgreSQL schemas.
    stores: Vec<String>,
    topic: String,
}

impl Leftovers {
    /// Drops every store but `keep` and the topic; a failure is reported, not fatal.
    async fn remove(&self, config: &Config, keep: Option<&str>) {
        for name in &self.stores {
            if keep == Some(name.as_str()) {
                eprintln!("prismctl: left {name} behind (still in use); drop it by hand");
                continue;
            }
            if let Err(e) = Self::drop_store(config, self.backend, name).await {
                eprintln!("prismctl: could not drop {name}: {e:#}; drop it by hand");
            }
        }
        if let Err(e) = delete_topic(config, &self.topic).await {
            eprintln!(
                "prismctl: could not delete the Kafka topic {}: {e:#}",
                self.topic
            );
        }
    }

    async fn drop_store(
        config: &Config,
        backend: EventStoreBackend,
        name: &str,
    ) -> anyhow::Result<()> {
        match backend {
            EventStoreBackend::Mongodb => {
                let client =
                    prism_platform::clients::mongodb(&config.mongodb, "prismctl-bench").await?;
                client.database(name).drop().await?;
            }
            EventStoreBackend::Postgres => {
                let pool = prism_platform::clients::postgres(&config.postgres).await?;
                let quoted = format!("\"{}\"", name.replace('"', "\"\""));
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {quoted} CASCADE"))
                    .execute(&pool)
                    .await?;
                pool.close().await;
            }
        }
        Ok(())
    }
}

async fn delete_topic(config: &Config, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        prism_platform::clients::kafka_client_config(&config.kafka).create()?;
    let timeout = Some(Duration::from_millis(config.kafka.request_timeout_ms));
    let options = AdminOptions::new()
        .operation_timeout(timeout)
        .request_timeout(timeout);
    for result in admin.delete_topics(&[topic], &options).await? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => bail!("deleting topic {name}: {code}"),
        }
    }
    Ok(())
}

// ---------- progress and output ----------

fn bar(label: &str, len: Option<u64>) -> ProgressBar {
    let (bar, template) = match len {
        Some(n) => (
            ProgressBar::new(n),
            "{spinner} {prefix:<22} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {prefix:<22} [{elapsed_precise}] {msg}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn tick(bar: ProgressBar, done: Arc<AtomicU64>, by_time: bool) -> tokio::task::JoinHandle<()> {
    let started = Instant::now();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(250));
        loop {
            interval.tick().await;
            let n = done.load(Ordering::Relaxed);
            if !by_time {
                bar.set_position(n);
            }
            bar.set_message(format!(
                "{n} ops, {:.0}/s",
                n as f64 / started.elapsed().as_secs_f64().max(1e-3)
            ));
        }
    })
}

fn print_report(r: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "bench command: {} backend, {} concurrent clients, {} accounts, idempotency keys {}, \
         {} alternating rounds",
        r.backend,
        r.concurrency,
        r.accounts,
        if r.idempotency_keys { "on" } else { "off" },
        r.rounds
    );
    let _ = writeln!(
        out,
        "{:<14} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8} {:>12} {:>9}",
        "", "ops", "ops/s", "p50 ms", "p99 ms", "max ms", "errors", "cpu ms/op", "machine"
    );
    for (name, f) in [("commands", &r.command), ("raw appends", &r.raw_append)] {
        let cpu = f
            .process_cpu_ms_per_op
            .map_or_else(|| "-".into(), |v| format!("{v:.3}"));
        let busy = f
            .machine_cpu_busy
            .map_or_else(|| "-".into(), |v| format!("{:.0}%", v * 100.0));
        let _ = writeln!(
            out,
            "{name:<14} {:>10} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>8} {cpu:>12} {busy:>9}",
            f.count, f.per_second, f.p50_ms, f.p99_ms, f.max_ms, f.errors
        );
    }
    let _ = writeln!(out, "ratio commands/s ÷ raw appends/s: {:.3}", r.ratio);
    if let Some(published) = r.relay_published {
        let _ = writeln!(
            out,
            "relay: {published} of {} stored events on Kafka when the last command slice ended",
            r.events_stored
        );
    }
    if let Some(h) = &r.history {
        let c = &h.cold_commands;
        let _ = writeln!(
            out,
            "history: {} events over {} accounts, seeded in {:.0} s; whole-store scan {:.1} s \
             ({:.0} events/s); first command on {} history accounts: {:.1}/s, p50 {:.2} ms, \
             p99 {:.2} ms ({} rejected, {} errors)",
            h.events,
            h.accounts,
            h.seed_s,
            h.scan_s,
            h.scan_events_per_second,
            c.count + c.rejected + c.errors,
            c.per_second,
            c.p50_ms,
            c.p99_ms,
            c.rejected,
            c.errors
        );
    }
    if let Some(secs) = r.shutdown_s {
        let _ = writeln!(
            out,
            "prism-command stopped {secs:.1} s after the last slice (relay drained)"
        );
    }
}
