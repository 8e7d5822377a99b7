//! `prismctl demo`: Prism end to end in one command, for a newcomer.
//!
//! 1. Checks that the backing services it needs answer (Kafka, the event store, MySQL);
//!    if not, says `dev/stack up` and exits 1.
//! 2. Starts prism-command, prism-ledger, prism-search, prism-dashboard and prism-fraud in
//!    this process — their `app::run`, the code of the binaries — on `command.listen`,
//!    `ledger.listen`, `search.listen`, `dashboard.listen` and `fraud.listen` (127.0.0.1:8080
//!    to :8084; `--command-listen`, `--ledger-listen`, `--search-listen`, `--dashboard-listen`,
//!    `--fraud-listen` change them, port 0 takes any free port). A port in use is named,
//!    exit 2. They use the configuration as it is (the topic `account-events`, the event
//!    store, ledger databases, search indices, dashboard keys, fraud keys and offline files),
//!    so what the demo writes is there for the binaries afterwards; only the dashboard's
//!    pipeline health is pointed at the services it runs.
//! 3. Prints the live page's address with its token (`http://…/#token=…`, the page connects
//!    by itself) for a human to open before the traffic starts: it moves as the traffic flows.
//! 4. Sends seeded loadgen traffic (the [`crate::traffic`] model through
//!    [`crate::loadgen::Client`], open loop at `--rate`), with a progress bar on stderr.
//! 5. Shows, through the ledger's query API only: a page of accounts and the next one (its
//!    cursor), the busiest account of the run, its statement newest first (a page and the
//!    next), and read-your-writes: a deposit, then the same account read with the deposit's
//!    `Consistency-Token` (and, side by side, without it), with how long the wait took.
//! 6. Runs a few analyst searches through prism-search's API once it has indexed the
//!    traffic: declined payments with facets, the busiest holder's name typed without its
//!    accents, online card payments by category and merchant country, an autocomplete.
//! 7. Reads the live dashboard's summary once it has counted the traffic: events in the last
//!    hour, money in and out per currency, the decline rate, the top merchants, accounts by
//!    status; then prism-fraud's features of the busiest account now, and the feature vector
//!    of a card-testing-like candidate payment scored on it.
//! 8. Prints what to try next, stops the services cleanly (the relay drains to Kafka, the
//!    projectors store their positions and commit) and exits 0. `--keep-running` leaves them up
//!    until Ctrl-C instead, to try the curl commands, with a light traffic of the same model
//!    (at most 20 commands/s) that keeps the live page moving.
//!
//! The report goes to stdout, progress to stderr. Exit codes: 0 all went well, 1 a service
//! is down or something failed on the way (said on stderr), 2 a wrong invocation or a port
//! that cannot be used.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::DateTime;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use prism_dashboard::DashboardConfig;
use prism_events::Currency;
use prism_fraud::config::FraudConfig;
use prism_ledger::LedgerConfig;
use prism_platform::auth::Scope;
use prism_platform::config::{AuthConfig, EventStoreBackend, LOCAL_ANALYST_TOKEN};
use prism_platform::Config;
use prism_search::SearchConfig;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::loadgen::{parse_duration, Client, Latency, Outcome, TokenBucket};
use crate::services::{self, Api, Kind, QueryReply, Service, STOP_TIMEOUT};
use crate::table::{self, Align};
use crate::traffic::{Op, Traffic, COMMANDS, MARKETS};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address prism-command listens on (default: `command.listen`, 127.0.0.1:8080); port 0
    /// picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    pub command_listen: Option<String>,
    /// Address prism-ledger listens on (default: `ledger.listen`, 127.0.0.1:8081); port 0
    /// picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    pub ledger_listen: Option<String>,
    /// Address prism-search listens on (default: `search.listen`, 127.0.0.1:8082); port 0
    /// picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    pub search_listen: Option<String>,
    /// Address prism-dashboard (the live page and its API) listens on (default:
    /// `dashboard.listen`, 127.0.0.1:8083); port 0 picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    pub dashboard_listen: Option<String>,
    /// Address prism-fraud (fraud features) listens on (default: `fraud.listen`,
    /// 127.0.0.1:8084); port 0 picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    pub fraud_listen: Option<String>,
    /// Accounts the traffic opens.
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Commands per second of the traffic.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// How long the traffic runs (e.g. 10s, 1m).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Seed of the traffic model: the same seed sends the same requests.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Most commands in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// After the report, keep the services running until Ctrl-C (to try the curl commands),
    /// with a light traffic that keeps the live page moving.
    #[arg(long)]
    pub keep_running: bool,
}

/// Share of suspicious steps in the traffic model (after onboarding).
const SUSPICIOUS_SHARE: f64 = 0.02;
/// Rows per page in the tables (the API's `limit`).
const PAGE: u32 = 5;
/// How long prism-command may take to become ready.
const COMMAND_READY: Duration = Duration::from_secs(60);
/// How long prism-ledger may take to become ready: it first catches up with the topic.
const LEDGER_READY: Duration = Duration::from_secs(300);
/// How long prism-search may take to become ready (it catches up with the topic first).
const SEARCH_READY: Duration = Duration::from_secs(300);
/// How long the demo waits for prism-search to have indexed the traffic.
const SEARCH_CATCH_UP: Duration = Duration::from_secs(60);
/// How long prism-dashboard may take to become ready (it catches up with the topic first).
const DASHBOARD_READY: Duration = Duration::from_secs(300);
/// How long the demo waits for prism-dashboard to have counted the traffic.
const DASHBOARD_CATCH_UP: Duration = Duration::from_secs(60);
/// How long prism-fraud may take to become ready (it catches up with the topic first).
const FRAUD_READY: Duration = Duration::from_secs(300);
/// How long the demo waits for prism-fraud to hold the chosen account.
const FRAUD_CATCH_UP: Duration = Duration::from_secs(60);
/// Most commands per second of the traffic that keeps the page moving with `--keep-running`.
const BACKGROUND_RATE: f64 = 20.0;

/// The bearer token the README documents for local use (safe to print).
const LOCAL_TOKEN: &str = "prism-local-dev-token";

/// The token the demo sends to an API needing `scope`: the first of `[[auth.tokens]]` with
/// it (prism-command's token when the API does not check tokens).
fn scoped_token(
    auth: &AuthConfig,
    scope: Scope,
    auth_enabled: bool,
    command_token: &str,
) -> anyhow::Result<String> {
    match auth.token_with(scope) {
        Some(token) => Ok(token.expose().to_owned()),
        None if !auth_enabled => Ok(command_token.to_owned()),
        None => bail!(
            "no [[auth.tokens]] entry has the scope {scope} while its API checks tokens: the \
             demo has no token to send"
        ),
    }
}

/// The live page at `url` with `token` in its address (`http://…/#token=…`): the page takes
/// it from there and connects by itself.
fn page_url(url: &str, token: &str) -> String {
    format!(
        "{}/#token={}",
        url.trim_end_matches('/'),
        fragment_encode(token)
    )
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    check_args(args)?;
    services::logs_if_asked(config);
    let config = config.clone();
    let token = scoped_token(
        &config.auth,
        Scope::Commands,
        config.command.auth_enabled,
        LOCAL_TOKEN,
    )?;
    let command_listen = args
        .command_listen
        .clone()
        .unwrap_or_else(|| config.command.listen.clone());
    // The `[ledger]`, `[search]` and `[dashboard]` sections, parsed once (each projector
    // parses its own again when it starts).
    let ledger = prism_ledger::app::LedgerProjector::new(config.clone())?
        .ledger_config()
        .clone();
    let ledger_listen = args
        .ledger_listen
        .clone()
        .unwrap_or_else(|| ledger.listen.clone());
    let search = prism_search::app::SearchProjector::new(config.clone())?
        .search_config()
        .clone();
    let search_listen = args
        .search_listen
        .clone()
        .unwrap_or_else(|| search.listen.clone());
    let dashboard = prism_dashboard::app::DashboardProjector::new(config.clone())?
        .dashboard_config()
        .clone();
    let dashboard_listen = args
        .dashboard_listen
        .clone()
        .unwrap_or_else(|| dashboard.listen.clone());
    let page_token = scoped_token(
        &config.auth,
        Scope::DashboardRead,
        dashboard.auth_enabled,
        &token,
    )?;
    let fraud = prism_fraud::app::FraudProjector::new(config.clone())?
        .fraud_config()
        .clone();
    let fraud_listen = args
        .fraud_listen
        .clone()
        .unwrap_or_else(|| fraud.listen.clone());
    let fraud_token = scoped_token(&config.auth, Scope::FraudRead, fraud.auth_enabled, &token)?;

    // 1. The stack.
    let spinner = spinner("checking the stack (Kafka, event store, MySQL)");
    let checks = services::check_stack(&config).await;
    spinner.finish_and_clear();
    let down: Vec<_> = checks.iter().filter(|c| c.result.is_err()).collect();
    if !down.is_empty() {
        for check in &down {
            let error = check.result.as_ref().err().map_or("", String::as_str);
            eprintln!(
                "prismctl: {} at {} is not answering: {error}",
                check.service, check.address
            );
        }
        eprintln!("prismctl: the demo needs the local stack: start it with `dev/stack up`");
        return Ok(ExitCode::from(1));
    }

    // 2. The listeners: a port in use is the caller's to fix (exit 2).
    let command_listener = match services::bind(Kind::Command, &command_listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("prismctl: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let ledger_listener = match services::bind(Kind::Ledger, &ledger_listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("prismctl: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let search_listener = match services::bind(Kind::Search, &search_listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("prismctl: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let dashboard_listener = match services::bind(Kind::Dashboard, &dashboard_listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("prismctl: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let fraud_listener = match services::bind(Kind::Fraud, &fraud_listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("prismctl: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let listeners = Listeners {
        command: command_listener,
        ledger: ledger_listener,
        search: search_listener,
        dashboard: dashboard_listener,
        fraud: fraud_listener,
    };

    let mut running = Running::default();
    let sections = Sections {
        ledger: &ledger,
        search: &search,
        dashboard: &dashboard,
        fraud: &fraud,
    };
    let tokens = Tokens {
        command: &token,
        dashboard: &page_token,
        fraud: &fraud_token,
    };
    let outcome = tokio::select! {
        outcome = demo(&config, sections, args, tokens, listeners, &mut running) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let mut failed = false;
    match &outcome {
        Ok(Finish::Clean) => {}
        Ok(Finish::Failed(message)) => {
            eprintln!("prismctl: {message}");
            failed = true;
        }
        Err(e) => {
            eprintln!("prismctl: demo failed: {e:#}");
            failed = true;
        }
    }
    if args.keep_running && outcome.is_ok() && running.all_up() {
        let rate = args.rate.min(BACKGROUND_RATE);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "\nThe services keep running (prism-command at {}, prism-ledger at {}, \
             prism-search at {}, prism-dashboard at {}, prism-fraud at {}).\nA light traffic of the same model \
             ({rate:.0} commands/s on the demo's accounts) keeps the live page moving: open {}\n\
             Press Ctrl-C to stop them.",
            running.url(Kind::Command),
            running.url(Kind::Ledger),
            running.url(Kind::Search),
            running.url(Kind::Dashboard),
            running.url(Kind::Fraud),
            page_url(&running.url(Kind::Dashboard), &page_token)
        );
        let _ = out.flush();
        drop(out);
        match running.background.take() {
            Some(background) => tokio::select! {
                moved = keep_moving(background, rate, args.concurrency) => {
                    if let Err(e) = moved {
                        eprintln!("prismctl: the background traffic stopped: {e:#}");
                    }
                    let _ = tokio::signal::ctrl_c().await;
                }
                _ = tokio::signal::ctrl_c() => {}
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    if !running.stop().await {
        failed = true;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn check_args(args: &Args) -> anyhow::Result<()> {
    if args.accounts == 0 || args.concurrency == 0 {
        bail!("--accounts and --concurrency must be at least 1");
    }
    if !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--rate must be a positive number of commands per second");
    }
    if args.duration.is_zero() {
        bail!("--duration must be longer than 0 (e.g. 10s)");
    }
    Ok(())
}

/// How the demo ended when nothing broke outright.
enum Finish {
    Clean,
    /// It ran to the end, but something in it went wrong (the message says what).
    Failed(String),
}

/// The services started so far, to stop whatever happens.
#[derive(Default)]
struct Running {
    command: Option<Service>,
    ledger: Option<Service>,
    search: Option<Service>,
    dashboard: Option<Service>,
    fraud: Option<Service>,
    /// What keeps the live page moving with `--keep-running`, once the traffic ran.
    background: Option<Background>,
}

/// The services' listeners, bound before anything starts (a port in use is exit 2).
struct Listeners {
    command: tokio::net::TcpListener,
    ledger: tokio::net::TcpListener,
    search: tokio::net::TcpListener,
    dashboard: tokio::net::TcpListener,
    fraud: tokio::net::TcpListener,
}

/// The projectors' configuration sections, parsed once.
#[derive(Clone, Copy)]
struct Sections<'a> {
    ledger: &'a LedgerConfig,
    search: &'a SearchConfig,
    dashboard: &'a DashboardConfig,
    fraud: &'a FraudConfig,
}

impl Running {
    fn services(&self) -> [&Option<Service>; 5] {
        [
            &self.command,
            &self.ledger,
            &self.search,
            &self.dashboard,
            &self.fraud,
        ]
    }

    fn all_up(&self) -> bool {
        self.services()
            .iter()
            .all(|s| s.as_ref().is_some_and(|s| !s.has_stopped()))
    }

    fn url(&self, kind: Kind) -> String {
        let service = match kind {
            Kind::Command => &self.command,
            Kind::Ledger => &self.ledger,
            Kind::Search => &self.search,
            Kind::Dashboard => &self.dashboard,
            Kind::Fraud => &self.fraud,
        };
        service
            .as_ref()
            .map_or_else(String::new, |s| s.url().to_owned())
    }

    /// Stops prism-command (its relay drains to Kafka), then the projectors (each projects
    /// what it has, stores its positions and commits). Whether all stopped cleanly.
    async fn stop(&mut self) -> bool {
        if self.services().iter().all(|s| s.is_none()) {
            return true;
        }
        let bar = spinner(
            "stopping prism-command (relay drains), prism-ledger, prism-search, prism-dashboard and prism-fraud",
        );
        let began = Instant::now();
        let mut errors = Vec::new();
        for service in [
            self.command.as_mut(),
            self.ledger.as_mut(),
            self.search.as_mut(),
            self.dashboard.as_mut(),
            self.fraud.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            let stopped = tokio::select! {
                stopped = service.stop(STOP_TIMEOUT) => stopped,
                _ = tokio::signal::ctrl_c() => Err(anyhow!(
                    "{} was interrupted while stopping", service.kind().name()
                )),
            };
            if let Err(e) = stopped {
                errors.push(format!("{e:#}"));
            }
        }
        bar.finish_and_clear();
        let mut out = std::io::stdout().lock();
        if errors.is_empty() {
            let mut names: Vec<&str> = self
                .services()
                .iter()
                .filter_map(|s| s.as_ref().map(|s| s.kind().name()))
                .collect();
            // `a and b`, `a, b and c`.
            let last = names.pop().unwrap_or_default();
            let names: Vec<String> = if names.is_empty() {
                vec![last.to_owned()]
            } else {
                vec![names.join(", "), last.to_owned()]
            };
            let _ = writeln!(
                out,
                "\nStopped {} cleanly in {:.1} s (the relay published everything stored; the \
                 projectors stored their positions and committed).",
                names.join(" and "),
                began.elapsed().as_secs_f64()
            );
            true
        } else {
            drop(out);
            for e in errors {
                eprintln!("prismctl: stopping: {e}");
            }
            false
        }
    }
}

async fn demo(
    config: &Config,
    sections: Sections<'_>,
    args: &Args,
    tokens: Tokens<'_>,
    listeners: Listeners,
    running: &mut Running,
) -> anyhow::Result<Finish> {
    let token = tokens.command;
    let Sections {
        ledger: ledger_config,
        search: search_config,
        dashboard: dashboard_config,
        fraud: fraud_config,
    } = sections;
    let Listeners {
        command: command_listener,
        ledger: ledger_listener,
        search: search_listener,
        dashboard: dashboard_listener,
        fraud: fraud_listener,
    } = listeners;
    // prism-command first: it creates the topic the ledger subscribes to.
    let command_url = start_ready(
        &mut running.command,
        Kind::Command,
        config.clone(),
        command_listener,
        "starting prism-command",
        COMMAND_READY,
    )
    .await?;

    let ledger_url = start_ready(
        &mut running.ledger,
        Kind::Ledger,
        config.clone(),
        ledger_listener,
        "starting prism-ledger (it catches up with the topic first)",
        LEDGER_READY,
    )
    .await?;

    let search_url = start_ready(
        &mut running.search,
        Kind::Search,
        config.clone(),
        search_listener,
        "starting prism-search (it catches up with the topic first)",
        SEARCH_READY,
    )
    .await?;

    let fraud_url = start_ready(
        &mut running.fraud,
        Kind::Fraud,
        config.clone(),
        fraud_listener,
        "starting prism-fraud (it catches up with the topic first)",
        FRAUD_READY,
    )
    .await?;

    // The page's pipeline health reads the services this demo runs, wherever they listen.
    let mut with_health = config.clone();
    with_health.dashboard.set(
        "health_targets",
        health_targets(
            &dashboard_config.health_targets,
            &[
                ("command", &command_url),
                ("ledger", &ledger_url),
                ("search", &search_url),
                ("fraud", &fraud_url),
            ],
        ),
    );
    let dashboard_url = start_ready(
        &mut running.dashboard,
        Kind::Dashboard,
        with_health,
        dashboard_listener,
        "starting prism-dashboard (it catches up with the topic first)",
        DASHBOARD_READY,
    )
    .await?;
    let page = page_url(&dashboard_url, tokens.dashboard);

    let mut out = Report::new();
    print_header(
        &mut out,
        config,
        sections,
        [
            &command_url,
            &ledger_url,
            &search_url,
            &dashboard_url,
            &fraud_url,
        ],
        &page,
    );

    // 4. Traffic.
    let client = Client::new(
        &command_url,
        token,
        args.concurrency,
        Duration::from_secs(10),
        3,
    )?;
    let (traffic, model) = drive(&client, args).await?;
    print_traffic(&mut out, args, &traffic);
    let Some(chosen) = traffic.busiest() else {
        bail!(
            "no account could be opened ({})",
            traffic.failures.first().map_or("no answer", String::as_str)
        );
    };
    let chosen = chosen.to_owned();
    if args.keep_running {
        running.background = Some(Background {
            client: client.clone(),
            model,
            ids: traffic.ids.clone(),
        });
    }

    // 5. The ledger's query API, 6. the searches, 7. the live dashboard.
    let api = Api::new(&command_url, &ledger_url, token, Duration::from_secs(30), 4)?
        .with_ledger_token(&scoped_token(
            &config.auth,
            Scope::LedgerRead,
            ledger_config.auth_enabled,
            token,
        )?)
        .with_search(
            &search_url,
            &scoped_token(
                &config.auth,
                Scope::SearchRead,
                search_config.auth_enabled,
                token,
            )?,
        );
    let known: Vec<&str> = traffic.ids.iter().flatten().map(String::as_str).collect();
    show_accounts(&mut out, &api, &known).await?;
    let account = show_account(&mut out, &api, &chosen).await?;
    show_statement(&mut out, &api, &chosen).await?;
    let visible = read_your_writes(&mut out, &api, &chosen, &account).await?;
    let searched = show_searches(&mut out, &api, &account, SEARCH_CATCH_UP).await;
    let board = ProjectorApi::new("prism-dashboard", &dashboard_url, tokens.dashboard)?;
    let counted = show_dashboard(&mut out, &board, traffic.accepted, DASHBOARD_CATCH_UP).await;
    let features = ProjectorApi::new("prism-fraud", &fraud_url, tokens.fraud)?;
    let scored = show_fraud(&mut out, &features, &chosen, &account, FRAUD_CATCH_UP).await;
    // Once the demo ends, the binaries would listen where the configuration says.
    let tried = if args.keep_running {
        [
            command_url.clone(),
            ledger_url.clone(),
            search_url.clone(),
            dashboard_url.clone(),
            fraud_url.clone(),
        ]
    } else {
        [
            format!("http://{}", config.command.listen),
            format!("http://{}", ledger_config.listen),
            format!("http://{}", search_config.listen),
            format!("http://{}", dashboard_config.listen),
            format!("http://{}", fraud_config.listen),
        ]
    };
    let [try_command, try_ledger, try_search, try_dashboard, try_fraud] = &tried;
    print_next_steps(
        &mut out,
        args,
        tokens,
        [
            try_command,
            try_ledger,
            try_search,
            try_dashboard,
            try_fraud,
        ],
        &chosen,
    );

    let mut problems = Vec::new();
    if traffic.failed > 0 {
        problems.push(format!(
            "{} of {} commands failed (e.g. {})",
            traffic.failed,
            traffic.sent,
            traffic.failures.first().map_or("", String::as_str)
        ));
    }
    if let Err(why) = visible {
        problems.push(why);
    }
    if let Err(e) = searched {
        problems.push(format!("the analyst searches: {e:#}"));
    }
    if let Err(e) = counted {
        problems.push(format!("the live dashboard: {e:#}"));
    }
    if let Err(e) = scored {
        problems.push(format!("the fraud features: {e:#}"));
    }
    Ok(if problems.is_empty() {
        Finish::Clean
    } else {
        Finish::Failed(problems.join("; "))
    })
}

/// `health_targets` (`name=url` of a `/metrics`) with the address of the service this process
/// runs under the same name in place of the configured one; other targets stay as they are.
fn health_targets(configured: &[String], running: &[(&str, &str)]) -> Vec<String> {
    configured
        .iter()
        .map(|target| {
            let name = target.split_once('=').map_or("", |(name, _)| name);
            match running.iter().find(|(ours, _)| *ours == name) {
                Some((name, url)) => format!("{name}={}/metrics", url.trim_end_matches('/')),
                None => target.clone(),
            }
        })
        .collect()
}

// ---------- traffic ----------

/// What the traffic did.
struct TrafficRun {
    /// Server ids of the accounts, by index in the model (`None`: not opened).
    ids: Vec<Option<String>>,
    /// Stored commands per account.
    stored_per_account: Vec<u64>,
    /// Per command, per outcome label.
    outcomes: BTreeMap<&'static str, BTreeMap<String, u64>>,
    sent: u64,
    accepted: u64,
    rejected: u64,
    conflicts: u64,
    failed: u64,
    skipped: u64,
    failures: Vec<String>,
    latency_us: Histogram<u64>,
    elapsed: Duration,
}

impl TrafficRun {
    fn new(accounts: usize) -> anyhow::Result<Self> {
        Ok(Self {
            ids: vec![None; accounts],
            stored_per_account: vec![0; accounts],
            outcomes: BTreeMap::new(),
            sent: 0,
            accepted: 0,
            rejected: 0,
            conflicts: 0,
            failed: 0,
            skipped: 0,
            failures: Vec::new(),
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            elapsed: Duration::ZERO,
        })
    }

    fn record(
        &mut self,
        account: usize,
        command: &'static str,
        outcome: &Outcome,
        latency: Duration,
        detail: Option<String>,
    ) {
        *self
            .outcomes
            .entry(command)
            .or_default()
            .entry(outcome.label())
            .or_default() += 1;
        match outcome {
            o if o.stored() => {
                self.accepted += 1;
                if let Some(n) = self.stored_per_account.get_mut(account) {
                    *n += 1;
                }
            }
            Outcome::Rejected(_) => self.rejected += 1,
            Outcome::Conflict => self.conflicts += 1,
            _ => {
                self.failed += 1;
                if self.failures.len() < 5 {
                    self.failures
                        .push(detail.unwrap_or_else(|| format!("{command}: {}", outcome.label())));
                }
            }
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
    }

    /// The opened account with the most stored commands (the first such, for a tie).
    fn busiest(&self) -> Option<&str> {
        let mut best: Option<(u64, &str)> = None;
        for (id, n) in self.ids.iter().zip(&self.stored_per_account) {
            if let Some(id) = id {
                if best.is_none_or(|(most, _)| *n > most) {
                    best = Some((*n, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    fn opened(&self) -> usize {
        self.ids.iter().flatten().count()
    }
}

/// Sends the seeded traffic open loop at `--rate` for `--duration`: every account is
/// opened first (their ids come from the server), then the everyday sequence. Also gives
/// back the model where it stopped (the next step is the first one not sent).
async fn drive(client: &Client, args: &Args) -> anyhow::Result<(TrafficRun, Traffic)> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let stats = Arc::new(Mutex::new(TrafficRun::new(args.accounts)?));
    let semaphore = Arc::new(Semaphore::new(args.concurrency));
    let mut bucket = TokenBucket::new(args.rate);
    let mut tasks = JoinSet::new();

    let bar = ProgressBar::new(args.duration.as_secs().max(1));
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} traffic [{elapsed_precise}] {bar:30} {pos}/{len}s {msg}",
    ) {
        bar.set_style(style);
    }
    let started = Instant::now();
    let deadline = started + args.duration;
    let ticker = {
        let (bar, stats) = (bar.clone(), Arc::clone(&stats));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let elapsed = started.elapsed();
                let message = {
                    let s = stats.lock();
                    format!(
                        "sent {} | {:.0}/s | accepted {} | rejected {} | failed {}",
                        s.sent,
                        s.sent as f64 / elapsed.as_secs_f64().max(1e-3),
                        s.accepted,
                        s.rejected,
                        s.failed
                    )
                };
                bar.set_position(elapsed.as_secs());
                bar.set_message(message);
            }
        })
    };

    let mut opened: Option<Arc<Vec<Option<String>>>> = None;
    let mut model = Traffic::new(args.seed, args.accounts, SUSPICIOUS_SHARE);
    while Instant::now() < deadline {
        let Some(step) = model.next() else {
            break;
        };
        let is_open = matches!(step.op, Op::Open { .. });
        if !is_open && opened.is_none() {
            // Every account must exist before its first command.
            while tasks.join_next().await.is_some() {}
            let ids = stats.lock().ids.clone();
            if ids.iter().all(Option::is_none) {
                break;
            }
            opened = Some(Arc::new(ids));
        }
        let account_id = match &opened {
            None => String::new(),
            Some(ids) => match ids.get(step.account).cloned().flatten() {
                Some(id) => id,
                None => {
                    stats.lock().skipped += 1;
                    continue;
                }
            },
        };
        bucket.take().await;
        let permit = Arc::clone(&semaphore)
            .acquire_owned()
            .await
            .context("the in-flight limit closed")?;
        stats.lock().sent += 1;
        let key = format!("demo-{run_id}-{}", step.seq);
        let (client, stats) = (client.clone(), Arc::clone(&stats));
        tasks.spawn(async move {
            let answer = client.send(&step.op, &account_id, Some(&key)).await;
            let mut s = stats.lock();
            if let (Op::Open { .. }, Some(id)) = (&step.op, &answer.account_id) {
                if answer.outcome.stored() {
                    if let Some(slot) = s.ids.get_mut(step.account) {
                        *slot = Some(id.clone());
                    }
                }
            }
            s.record(
                step.account,
                step.op.command(),
                &answer.outcome,
                answer.latency,
                answer.detail,
            );
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    ticker.abort();
    bar.finish_and_clear();
    let mut stats = stats.lock();
    stats.elapsed = started.elapsed();
    let mut result = TrafficRun::new(0)?;
    std::mem::swap(&mut *stats, &mut result);
    Ok((result, model))
}

/// The traffic model where the demo's traffic left it, and the accounts it opened: what
/// keeps the live page moving with `--keep-running`.
struct Background {
    client: Client,
    model: Traffic,
    /// Server ids of the accounts, by index in the model (`None`: not opened).
    ids: Vec<Option<String>>,
}

/// Goes on with the model at `rate` commands/s (at most `concurrency` in flight) until the
/// future is dropped (Ctrl-C). Answers are not reported: rules saying no are part of the
/// model, and the page shows what was stored. An account opened meanwhile is used once its
/// id is back; a step for an account not opened is skipped.
async fn keep_moving(background: Background, rate: f64, concurrency: usize) -> anyhow::Result<()> {
    let Background { client, model, ids } = background;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let ids = Arc::new(Mutex::new(ids));
    let semaphore = Arc::new(Semaphore::new(concurrency));
    let mut bucket = TokenBucket::new(rate);
    // Dropped with this future: the requests in flight are abandoned.
    let mut tasks = JoinSet::new();
    for step in model {
        let is_open = matches!(step.op, Op::Open { .. });
        let known = ids.lock().get(step.account).cloned().flatten();
        let account_id = match (is_open, known) {
            (true, _) => String::new(),
            (false, Some(id)) => id,
            (false, None) => {
                // Let Ctrl-C in even if many steps in a row are skipped.
                tokio::task::yield_now().await;
                continue;
            }
        };
        bucket.take().await;
        let permit = Arc::clone(&semaphore)
            .acquire_owned()
            .await
            .context("the in-flight limit closed")?;
        let key = format!("demo-live-{run_id}-{}", step.seq);
        let (client, ids) = (client.clone(), Arc::clone(&ids));
        tasks.spawn(async move {
            let answer = client.send(&step.op, &account_id, Some(&key)).await;
            if let (true, true, Some(id)) = (is_open, answer.outcome.stored(), answer.account_id) {
                if let Some(slot) = ids.lock().get_mut(step.account) {
                    *slot = Some(id);
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    Ok(())
}

// ---------- the ledger's query API ----------

/// Accounts: a page of the list, and the next one through its cursor.
async fn show_accounts(out: &mut Report, api: &Api, ours: &[&str]) -> anyhow::Result<()> {
    out.section("Accounts in the ledger, a page and the next (* = opened by this demo)");
    let mut path = format!("/v1/accounts?limit={PAGE}");
    for page in 1..=2 {
        out.line(&format!("GET {path}"));
        let reply = ledger_ok(api, &path, None).await?;
        let items = reply.body["items"].as_array().cloned().unwrap_or_default();
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|a| {
                let id = text(&a["account_id"]);
                let mark = if ours.contains(&id.as_str()) {
                    "*"
                } else {
                    " "
                };
                vec![
                    format!("{mark} {id}"),
                    shorten(&text(&a["holder_name"]), 24),
                    text(&a["country"]),
                    text(&a["status"]),
                    money(
                        a["balance_minor"].as_i64().unwrap_or(0),
                        &text(&a["currency"]),
                    ),
                    number(&a["version"]),
                ]
            })
            .collect();
        if rows.is_empty() {
            out.line("  (no accounts)");
        } else {
            out.table(
                &[
                    ("  ACCOUNT", Align::Left),
                    ("HOLDER", Align::Left),
                    ("COUNTRY", Align::Left),
                    ("STATUS", Align::Left),
                    ("BALANCE", Align::Right),
                    ("VERSION", Align::Right),
                ],
                &rows,
            );
        }
        match reply.body["next_cursor"].as_str() {
            Some(cursor) if page == 1 => {
                out.blank();
                out.line("next page: the same query with the answer's next_cursor");
                path = format!("/v1/accounts?limit={PAGE}&cursor={}", encode(cursor));
            }
            Some(_) => out.line("… more pages follow (next_cursor is set)"),
            None => {
                out.line("(last page: next_cursor is null)");
                break;
            }
        }
    }
    Ok(())
}

/// One account as the ledger holds it, once it has every write of the run (the version
/// prism-command reports, waited for with `?min_version`).
async fn show_account(out: &mut Report, api: &Api, id: &str) -> anyhow::Result<Value> {
    out.section("The busiest account of the run");
    let write_side = api.command_get(&format!("/v1/accounts/{id}")).await?;
    let version = match (write_side.status, write_side.body["version"].as_u64()) {
        (200, Some(version)) => version,
        _ => bail!(
            "prism-command could not show account {id}: {}",
            write_side.describe()
        ),
    };
    let path = format!("/v1/accounts/{id}?min_version={version}");
    out.line(&format!("GET {path}"));
    let reply = ledger_ok(api, &path, None).await?;
    let a = &reply.body;
    let currency = text(&a["currency"]);
    let mut rows = vec![
        ("account_id", text(&a["account_id"])),
        (
            "holder",
            format!("{} <{}>", text(&a["holder_name"]), text(&a["email"])),
        ),
        (
            "country, currency",
            format!("{}, {currency}", text(&a["country"])),
        ),
        ("status", text(&a["status"])),
        (
            "balance",
            money(a["balance_minor"].as_i64().unwrap_or(0), &currency),
        ),
        (
            "daily withdrawal limit",
            money(
                a["daily_withdrawal_limit_minor"].as_i64().unwrap_or(0),
                &currency,
            ),
        ),
        ("opened at", time(&text(&a["opened_at"]))),
        ("updated at", time(&text(&a["updated_at"]))),
        ("version", number(&a["version"])),
    ];
    if let Some(reason) = a["frozen_reason"].as_str() {
        rows.insert(4, ("frozen because", reason.to_owned()));
    }
    for (key, value) in rows {
        out.line(&format!("  {key:<23} {value}"));
    }
    Ok(reply.body)
}

/// Its statement, newest first: a page and the next through the cursor.
async fn show_statement(out: &mut Report, api: &Api, id: &str) -> anyhow::Result<()> {
    out.section("Its statement, newest first (money movements only)");
    let mut path = format!("/v1/accounts/{id}/statement?limit={PAGE}");
    for page in 1..=2 {
        out.line(&format!("GET {path}"));
        let reply = ledger_ok(api, &path, None).await?;
        let items = reply.body["items"].as_array().cloned().unwrap_or_default();
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|line| {
                let currency = text(&line["currency"]);
                vec![
                    number(&line["version"]),
                    time(&text(&line["occurred_at"])),
                    text(&line["kind"]),
                    signed_money(line["amount_minor"].as_i64().unwrap_or(0), &currency),
                    money(line["balance_after_minor"].as_i64().unwrap_or(0), &currency),
                    shorten(&line_detail(line), 40),
                ]
            })
            .collect();
        if rows.is_empty() {
            out.line("  (no money movements yet)");
        } else {
            out.table(
                &[
                    ("  VERSION", Align::Right),
                    ("TIME (UTC)", Align::Left),
                    ("KIND", Align::Left),
                    ("AMOUNT", Align::Right),
                    ("BALANCE AFTER", Align::Right),
                    ("DETAIL", Align::Left),
                ],
                &rows,
            );
        }
        match reply.body["next_cursor"].as_str() {
            Some(cursor) if page == 1 => {
                out.blank();
                out.line("older lines: the same query with the answer's next_cursor");
                path = format!(
                    "/v1/accounts/{id}/statement?limit={PAGE}&cursor={}",
                    encode(cursor)
                );
            }
            Some(_) => out.line("… older lines follow (next_cursor is set)"),
            None => {
                out.line("(the first line of the account: next_cursor is null)");
                break;
            }
        }
    }
    Ok(())
}

/// A deposit, then the account read at once without and with its consistency token.
/// `Ok(Err(why))`: it ran, but the ledger did not show the write as it should.
async fn read_your_writes(
    out: &mut Report,
    api: &Api,
    id: &str,
    before: &Value,
) -> anyhow::Result<Result<(), String>> {
    out.section("Read your writes");
    let currency = text(&before["currency"]);
    let balance = before["balance_minor"].as_i64().unwrap_or(0);
    let amount_minor = MARKETS
        .iter()
        .find(|m| m.currency == currency)
        .map_or(2_500, |m| m.minor_from_eur_cents(2_500));
    let op = Op::Deposit {
        amount_minor,
        description: "prismctl demo: read your writes",
    };
    let key = format!("demo-ryw-{}", uuid::Uuid::new_v4().simple());
    let deposit = api.command(&op, id, Some(&key)).await?;
    let (Some(version), Some(token), true) = (
        deposit.version(),
        deposit.consistency_token().map(str::to_owned),
        deposit.accepted(),
    ) else {
        bail!("the deposit was not accepted: {}", deposit.describe());
    };
    out.line(&format!(
        "POST /v1/accounts/{id}/deposits {}   ({})",
        json!({ "amount_minor": amount_minor, "description": "prismctl demo: read your writes" }),
        money(amount_minor, &currency)
    ));
    out.line(&format!(
        "  → {} {} in {}: version {version}, consistency_token {token}",
        deposit.status,
        reqwest::StatusCode::from_u16(deposit.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
        ms(deposit.latency()),
    ));

    // Both reads leave at once, right after the command's answer.
    let path = format!("/v1/accounts/{id}");
    let (plain, waited) = tokio::join!(
        api.ledger_get(&path, None),
        until_visible(api, &path, Some(&token))
    );
    let (plain, (waited, processing)) = (plain?, waited?);
    let expected = balance.saturating_add(amount_minor);
    let show = |reply: &QueryReply| {
        format!(
            "version {}, balance {}",
            number(&reply.body["version"]),
            money(reply.body["balance_minor"].as_i64().unwrap_or(0), &currency)
        )
    };
    let plain_note = match plain.body["version"].as_u64() {
        _ if plain.status != 200 => format!("answered {}", plain.describe()),
        Some(v) if v < version => format!("{} — the deposit was not projected yet", show(&plain)),
        Some(_) => format!("{} — already projected (a fast ledger)", show(&plain)),
        None => format!("answered {}", plain.describe()),
    };
    out.line(&format!("GET {path}  (no token, sent at once)"));
    out.line(&format!("  → {plain_note}"));
    out.line(&format!("GET {path}  with Consistency-Token: {token}"));
    let wait = waited
        .answered_at
        .saturating_duration_since(deposit.answered_at);
    let outcome = match (waited.status, waited.body["version"].as_u64()) {
        (200, Some(v)) if v >= version => {
            let retried = if processing > 0 {
                format!(", after {processing} × 202 processing: a busy ledger")
            } else {
                String::new()
            };
            out.line(&format!(
                "  → {} — answered {} after the deposit was accepted (the ledger waited \
                 until it had version {version}{retried})",
                show(&waited),
                ms(wait)
            ));
            let shown = waited.body["balance_minor"].as_i64();
            if v == version && shown != Some(expected) {
                Err(format!(
                    "the ledger shows balance {} after the deposit, expected {}",
                    shown.map_or_else(|| "?".into(), |b| money(b, &currency)),
                    money(expected, &currency)
                ))
            } else {
                Ok(())
            }
        }
        (202, _) => {
            out.line(&format!("  → {}", waited.describe()));
            Err(format!(
                "the ledger did not show version {version} within {} s",
                VISIBLE_WITHIN.as_secs()
            ))
        }
        _ => {
            out.line(&format!("  → {}", waited.describe()));
            Err(format!(
                "reading the deposit back failed: {}",
                waited.describe()
            ))
        }
    };
    Ok(outcome)
}

/// How long a query that waits for a version may keep answering `202 processing`.
const VISIBLE_WITHIN: Duration = Duration::from_secs(60);

/// `GET path` on the ledger, asked again while it answers `202 processing` (the version
/// it waits for has not arrived within its `wait_timeout_ms`), for at most
/// [`VISIBLE_WITHIN`]. The last answer, and how many 202s came first.
async fn until_visible(
    api: &Api,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(QueryReply, u32)> {
    let give_up = Instant::now() + VISIBLE_WITHIN;
    let mut processing = 0;
    loop {
        let reply = api.ledger_get(path, token).await?;
        if reply.status != 202 || Instant::now() >= give_up {
            return Ok((reply, processing));
        }
        processing += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` on the ledger that must answer 200 (after any `202 processing`).
async fn ledger_ok(api: &Api, path: &str, token: Option<&str>) -> anyhow::Result<QueryReply> {
    let (reply, _) = until_visible(api, path, token).await?;
    if reply.status != 200 {
        bail!("GET {path} on prism-ledger answered {}", reply.describe());
    }
    Ok(reply)
}

/// What a statement line is about: the merchant, the channel, the description.
fn line_detail(line: &Value) -> String {
    if let Some(merchant) = line["merchant_name"].as_str() {
        let category = line["merchant_category"].as_str().unwrap_or("");
        let country = line["merchant_country"].as_str().unwrap_or("");
        return format!("{merchant} ({category}, {country})");
    }
    match (line["channel"].as_str(), line["description"].as_str()) {
        (Some(channel), Some(d)) => format!("{d} ({channel})"),
        (Some(channel), None) => channel.to_owned(),
        (None, Some(d)) => d.to_owned(),
        (None, None) => String::new(),
    }
}

// ---------- the report ----------

/// Writes to stdout, numbering the sections; a closed stdout is ignored.
struct Report {
    section: u32,
}

impl Report {
    fn new() -> Self {
        Self { section: 0 }
    }

    fn line(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "  {text}");
    }

    fn raw(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }

    fn blank(&mut self) {
        self.raw("");
    }

    fn section(&mut self, title: &str) {
        self.section += 1;
        self.blank();
        self.raw(&format!("{}. {title}", self.section));
    }

    fn table(&mut self, headers: &[(&str, Align)], rows: &[Vec<String>]) {
        for line in table::lines(headers, rows) {
            self.line(&line);
        }
    }
}

/// What runs where, and the live page's address to open before the traffic starts.
fn print_header(
    out: &mut Report,
    config: &Config,
    sections: Sections<'_>,
    urls: [&str; 5],
    page: &str,
) {
    let [command_url, ledger_url, search_url, dashboard_url, fraud_url] = urls;
    let Sections {
        ledger,
        search,
        dashboard,
        fraud,
    } = sections;
    let (search_prefix, search_group) = (&search.index_prefix, &search.group_id);
    let store = match config.event_store.backend {
        EventStoreBackend::Mongodb => format!(
            "MongoDB database {:?} at {}",
            config.mongodb.database,
            config.mongodb.uri.hosts()
        ),
        EventStoreBackend::Postgres => format!(
            "PostgreSQL schema {:?} at {}",
            config.event_store.postgres_schema,
            config.postgres.url.hosts()
        ),
    };
    out.raw("Prism demo: commands in, events through Kafka, read models out.");
    out.blank();
    out.table(
        &[
            ("SERVICE", Align::Left),
            ("URL", Align::Left),
            ("WHAT IT DOES", Align::Left),
        ],
        &[
            vec![
                "prism-command".into(),
                command_url.into(),
                format!("validates commands, appends events to the {store}"),
            ],
            vec![
                String::new(),
                String::new(),
                format!(
                    "and its relay publishes them to the Kafka topic {:?} at {}",
                    config.kafka.topic, config.kafka.bootstrap_servers
                ),
            ],
            vec![
                "prism-ledger".into(),
                ledger_url.into(),
                format!(
                    "consumes the topic (group {:?}) into MySQL {:?} at {}, serves queries",
                    ledger.group_id,
                    ledger.database,
                    config.mysql.url.hosts()
                ),
            ],
            vec![
                "prism-search".into(),
                search_url.into(),
                format!(
                    "consumes it too (group {search_group:?}) into the indices {search_prefix:?}-* at {}, serves searches",
                    config.elasticsearch.url.hosts()
                ),
            ],
            vec![
                "prism-dashboard".into(),
                dashboard_url.into(),
                "live operations page: events/s, money in/out, declines, top merchants, feed, \
                 pipeline health"
                    .into(),
            ],
            vec![
                String::new(),
                String::new(),
                format!(
                    "consumes it too (group {:?}) into Redis keys {:?}:* at {}, serves the page",
                    dashboard.group_id,
                    dashboard.namespace,
                    config.redis.url.hosts()
                ),
            ],
            vec![
                "prism-fraud".into(),
                fraud_url.into(),
                "fraud features for ML: each account's now, a candidate payment's score".into(),
            ],
            vec![
                String::new(),
                String::new(),
                format!(
                    "consumes it too (group {:?}): online state in Redis keys {:?}:*, offline \
                     rows in Parquet under {}",
                    fraud.group_id,
                    fraud.namespace,
                    fraud.offline_dir.display()
                ),
            ],
        ],
    );
    out.line(
        "All five run in this process with the code of their binaries and stop when the demo ends.",
    );
    out.blank();
    out.line(&format!(
        "Live page — open it now, it moves as the traffic flows: {page}"
    ));
}

fn print_traffic(out: &mut Report, args: &Args, t: &TrafficRun) {
    out.section(&format!(
        "Traffic: seeded loadgen (seed {}) through prism-command's HTTP API",
        args.seed
    ));
    let secs = t.elapsed.as_secs_f64().max(1e-9);
    out.line(&format!(
        "{} of {} accounts opened; {} commands in {:.1} s ({:.0}/s, target {:.0}/s, at most {} in flight)",
        t.opened(),
        args.accounts,
        t.sent,
        secs,
        t.sent as f64 / secs,
        args.rate,
        args.concurrency
    ));
    out.line(&format!(
        "accepted {} (each stored its events) · rejected by a rule {} · conflicts {} · failed {}{}",
        t.accepted,
        t.rejected,
        t.conflicts,
        t.failed,
        if t.skipped > 0 {
            format!(" · skipped {} (account not opened)", t.skipped)
        } else {
            String::new()
        }
    ));
    let l = Latency::of(&t.latency_us);
    out.line(&format!(
        "command latency p50 {:.1} ms · p90 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
        l.p50, l.p90, l.p99, l.max
    ));
    out.blank();
    let rows: Vec<Vec<String>> = COMMANDS
        .iter()
        .filter_map(|command| {
            let outcomes = t.outcomes.get(command)?;
            let total: u64 = outcomes.values().sum();
            let detail: Vec<String> = outcomes
                .iter()
                .map(|(label, n)| format!("{label} {n}"))
                .collect();
            Some(vec![
                (*command).to_owned(),
                total.to_string(),
                detail.join(", "),
            ])
        })
        .collect();
    out.table(
        &[
            ("COMMAND", Align::Left),
            ("COUNT", Align::Right),
            ("OUTCOMES", Align::Left),
        ],
        &rows,
    );
    for failure in &t.failures {
        out.line(&format!("failed, e.g.: {failure}"));
    }
}

/// The tokens the demo sends: prism-command's (the ledger's and search's are the same in the
/// local configuration) and prism-dashboard's (also in the live page's address).
#[derive(Clone, Copy)]
struct Tokens<'a> {
    command: &'a str,
    dashboard: &'a str,
    fraud: &'a str,
}

fn print_next_steps(out: &mut Report, args: &Args, tokens: Tokens<'_>, urls: [&str; 5], id: &str) {
    let [command_url, ledger_url, search_url, dashboard_url, fraud_url] = urls;
    out.section("Try it yourself");
    if args.keep_running {
        out.line("The services keep running below; in another terminal:");
    } else {
        out.line("Start the services (or run `prismctl demo --keep-running`), then:");
        out.line(
            "  cargo run --release -p prism-command &   cargo run --release -p prism-ledger &   \
             cargo run --release -p prism-search &   cargo run --release -p prism-dashboard &   \
             cargo run --release -p prism-fraud &",
        );
    }
    let shown_token = if tokens.command == LOCAL_TOKEN {
        tokens.command
    } else {
        "<a token of [[auth.tokens]] with the scopes of the APIs>"
    };
    let page_token = if tokens.dashboard == LOCAL_TOKEN {
        tokens.dashboard
    } else {
        "<a token of [[auth.tokens]] with the scope dashboard:read>"
    };
    out.line(&format!(
        "Open the live page in a browser: {}",
        page_url(dashboard_url, page_token)
    ));
    let c = command_url.trim_start_matches("http://");
    let l = ledger_url.trim_start_matches("http://");
    let s = search_url.trim_start_matches("http://");
    let d = dashboard_url.trim_start_matches("http://");
    let f = fraud_url.trim_start_matches("http://");
    for line in [
        format!("ID={id}"),
        format!("T='Authorization: Bearer {shown_token}'"),
        format!("curl -s -H \"$T\" {l}/v1/accounts/$ID"),
        format!("curl -s -H \"$T\" \"{l}/v1/accounts/$ID/statement?limit=5\""),
        format!("curl -s -H \"$T\" '{l}/v1/accounts?country=DE&status=open&limit=5'"),
        format!(
            "curl -s -H \"$T\" -H 'content-type: application/json' {c}/v1/accounts/$ID/deposits \
             -d '{{\"amount_minor\":1000}}'"
        ),
        format!("curl -s -H \"$T\" -H 'Consistency-Token: <consistency_token of that answer>' {l}/v1/accounts/$ID"),
        format!("curl -s -H \"$T\" '{s}/v1/search/transactions?q=cafe&channel=online&facets=true&limit=5'"),
        format!("curl -s -H \"$T\" '{s}/v1/search/accounts?q=zoe'"),
        format!(
            "curl -s -H 'Authorization: Bearer {LOCAL_ANALYST_TOKEN}' '{s}/v1/search/accounts?q=zoe'   \
             # an analyst: emails masked"
        ),
        format!("curl -s -H \"$T\" {d}/v1/dashboard/summary   # what the live page shows"),
        format!("curl -s -H \"$T\" {f}/v1/features/$ID   # the account's fraud features now"),
        format!(
            "curl -s -H \"$T\" -H 'content-type: application/json' {f}/v1/features/$ID/score \
             -d '{{\"amount_minor\":95,\"merchant_name\":\"GAMECOINS*TOPUP\",\"merchant_category\":\"5816\",\"merchant_country\":\"US\",\"channel\":\"online\"}}'"
        ),
        "prismctl status                   # where each projector stands on each Kafka partition".into(),
        "prismctl verify ledger            # re-fold the event store and compare".into(),
        "prismctl verify search            # every search document against the event store".into(),
        "prismctl verify fraud             # online state and offline rows vs a plain re-implementation".into(),
        "prismctl bench visibility --rate 500 --duration 30s   # command → visible delay".into(),
    ] {
        out.line(&format!("  {line}"));
    }
    out.line(&format!(
        "The API descriptions: {command_url}/openapi.json, {ledger_url}/openapi.json, \
         {search_url}/openapi.json, {fraud_url}/openapi.json"
    ));
}

// ---------- formatting ----------

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn number(value: &Value) -> String {
    value
        .as_u64()
        .map_or_else(|| text(value), |n| n.to_string())
}

/// `1,234.56 EUR`, `-1,500 JPY`, `12.345 KWD`: the currency's own number of decimals.
fn money(minor: i64, currency: &str) -> String {
    let exponent = Currency::parse(currency).map_or(2, |c| u32::from(c.exponent()));
    money_in_decimals(minor, currency, exponent)
}

/// Like [`money`] with the number of decimals given (as an API states it).
fn money_in_decimals(minor: i64, currency: &str, exponent: u32) -> String {
    format!("{} {currency}", decimal(minor, exponent))
}

/// `-1,234.56`: `minor` units with `exponent` decimals, integers only.
fn decimal(minor: i64, exponent: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}", unsigned_amount(minor.unsigned_abs(), exponent))
}

/// Like [`money`] with an explicit `+` on credits.
fn signed_money(minor: i64, currency: &str) -> String {
    if minor > 0 {
        format!("+{}", money(minor, currency))
    } else {
        money(minor, currency)
    }
}

fn unsigned_amount(minor: u64, exponent: u32) -> String {
    let scale = 10_u64.saturating_pow(exponent);
    let (major, fraction) = (minor / scale, minor % scale);
    let digits = major.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if exponent == 0 {
        grouped
    } else {
        format!("{grouped}.{fraction:0width$}", width = exponent as usize)
    }
}

/// `2024-05-01T08:00:00.123456Z` → `2024-05-01 08:00:00.123`.
fn time(rfc3339: &str) -> String {
    DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|_| rfc3339.to_owned())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1_000.0)
}

/// At most `max` characters, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Percent-encodes a value for an address's `#fragment` (the page decodes it with
/// `decodeURIComponent`): everything but letters, digits and `-._~`.
fn fragment_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `1234` basis points → `12.34 %`, with integers only.
fn basis_points(bp: i64) -> String {
    let sign = if bp < 0 { "-" } else { "" };
    let bp = bp.unsigned_abs();
    format!("{sign}{}.{:02} %", bp / 100, bp % 100)
}

/// `1,234`: a count with its thousands grouped.
fn count(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", unsigned_amount(n.unsigned_abs(), 0))
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Starts a service into `slot` and waits until it is ready, `what` on a spinner
/// meanwhile; its URL.
async fn start_ready(
    slot: &mut Option<Service>,
    kind: Kind,
    config: Config,
    listener: tokio::net::TcpListener,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let service = slot.insert(Service::start(kind, config, listener)?);
    let bar = spinner(what);
    let ready = service
        .wait_ready(timeout, |why| bar.set_message(why.to_owned()))
        .await;
    bar.finish_and_clear();
    ready?;
    Ok(service.url().to_owned())
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {msg}") {
        bar.set_style(style);
    }
    bar.set_prefix(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

// ---------- analyst searches ----------

/// Letters an analyst types without their accents (`Zoë Müller` → `zoe muller`), so the
/// demo shows that the search model folds them. Only a display aid: the engine's own
/// `asciifolding` does the real work.
fn without_accents(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| match c {
            'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' | 'ø' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ñ' => 'n',
            'ç' => 'c',
            other => other,
        })
        .collect()
}

/// Waits until a projector (`name`) has projected everything on the topic: every partition
/// of its `/readyz` (asked through `readyz`) at lag 0, twice in a row (the relay may still
/// be publishing the last commits).
async fn caught_up<F, R>(name: &str, limit: Duration, mut readyz: F) -> anyhow::Result<()>
where
    F: FnMut() -> R,
    R: Future<Output = anyhow::Result<QueryReply>>,
{
    let deadline = Instant::now() + limit;
    let mut settled = 0;
    loop {
        let reply = readyz().await?;
        let lagging = reply.body["partitions"]
            .as_object()
            .map_or(usize::MAX, |p| {
                p.values()
                    .filter(|p| p["lag"].as_i64().is_none_or(|lag| lag > 0))
                    .count()
            });
        settled = if reply.status == 200 && lagging == 0 {
            settled + 1
        } else {
            0
        };
        if settled >= 2 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{name} has not caught up after {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn search_ok(api: &Api, path: &str) -> anyhow::Result<Value> {
    let reply = api.search_get(path).await?;
    if reply.status != 200 {
        bail!("GET {path}: {}", reply.describe());
    }
    Ok(reply.body)
}

/// A transactions page as rows: time, holder, merchant or kind, amount, decision.
fn transaction_rows(page: &Value) -> Vec<Vec<String>> {
    page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|t| {
                    let what = match t["merchant_name"].as_str() {
                        Some(merchant) => format!(
                            "{} ({}, {})",
                            merchant,
                            text(&t["category_description"]),
                            text(&t["merchant_country"])
                        ),
                        None => text(&t["kind"]),
                    };
                    let amount = t["amount_minor"].as_i64().unwrap_or(0);
                    let decision = match t["decline_reason"].as_str() {
                        Some(reason) => format!("declined: {reason}"),
                        None => text(&t["decision"]),
                    };
                    vec![
                        time(&text(&t["time"])),
                        shorten(&text(&t["holder_name"]), 22),
                        shorten(&what, 44),
                        money(amount, &text(&t["currency"])),
                        decision,
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

fn facet_line(page: &Value, facet: &str, top: usize) -> String {
    page["facets"][facet]
        .as_array()
        .map(|buckets| {
            buckets
                .iter()
                .take(top)
                .map(|b| format!("{} {}", text(&b["value"]), number(&b["count"])))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// A few searches an analyst would run, through prism-search's API.
async fn show_searches(
    out: &mut Report,
    api: &Api,
    account: &Value,
    catch_up: Duration,
) -> anyhow::Result<()> {
    out.section("Analyst searches (prism-search)");
    caught_up("prism-search", catch_up, || api.search_get("/readyz")).await?;
    let headers = [
        ("time (UTC)", Align::Left),
        ("holder", Align::Left),
        ("merchant / kind", Align::Left),
        ("amount", Align::Right),
        ("decision", Align::Left),
    ];

    let declined = search_ok(
        api,
        &format!("/v1/search/transactions?decision=declined&facets=true&limit={PAGE}"),
    )
    .await?;
    out.line(&format!(
        "Declined card payments: {} in all; by channel: {}; by category: {}",
        number(&declined["total"]),
        facet_line(&declined, "channel", 4),
        facet_line(&declined, "category", 4)
    ));
    out.table(&headers, &transaction_rows(&declined));

    let holder = text(&account["holder_name"]);
    let typed = without_accents(&holder);
    let theirs = search_ok(
        api,
        &format!(
            "/v1/search/transactions?q={}&sort=-amount&facets=true&limit={PAGE}",
            encode(&typed)
        ),
    )
    .await?;
    out.blank();
    out.line(&format!(
        "Typed \"{typed}\" (no accents) for {holder}: {} transactions, largest first; \
         merchant countries: {}",
        number(&theirs["total"]),
        facet_line(&theirs, "merchant_country", 5)
    ));
    out.table(&headers, &transaction_rows(&theirs));

    let online = search_ok(
        api,
        &format!(
            "/v1/search/transactions?channel=online&kind=card_payment&facets=true&limit={PAGE}"
        ),
    )
    .await?;
    out.blank();
    out.line(&format!(
        "Approved online card payments: {}; top categories: {}; top merchant countries: {}",
        number(&online["total"]),
        facet_line(&online, "category", 4),
        facet_line(&online, "merchant_country", 4)
    ));

    let prefix: String = typed.chars().take(3).collect();
    let suggested = search_ok(
        api,
        &format!("/v1/search/accounts?q={}&limit={PAGE}", encode(&prefix)),
    )
    .await?;
    let names: Vec<String> = suggested["items"]
        .as_array()
        .map(|items| items.iter().map(|a| text(&a["holder_name"])).collect())
        .unwrap_or_default();
    out.blank();
    out.line(&format!(
        "Autocomplete \"{prefix}\": {}",
        if names.is_empty() {
            "no account".to_owned()
        } else {
            names.join(", ")
        }
    ));
    Ok(())
}

// ---------- the live dashboard ----------

/// HTTP client for prism-dashboard's API, with a token of the scope `dashboard:read`.
struct ProjectorApi {
    /// The service's name, for errors.
    name: &'static str,
    http: reqwest::Client,
    url: String,
    token: String,
}

impl ProjectorApi {
    fn new(name: &'static str, url: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            name,
            http,
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// `GET path` on the service, authenticated.
    async fn get(&self, path: &str) -> anyhow::Result<QueryReply> {
        let request = self.http.get(format!("{}{path}", self.url));
        self.send(request, "GET", path).await
    }

    /// `POST path` with a JSON `body`, authenticated.
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<QueryReply> {
        let request = self.http.post(format!("{}{path}", self.url)).json(body);
        self.send(request, "POST", path).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        method: &str,
        path: &str,
    ) -> anyhow::Result<QueryReply> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("{method} {path} to {}", self.name))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer to {method} {path} from {}", self.name))?;
        Ok(QueryReply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            answered_at: Instant::now(),
        })
    }
}

/// The summary once prism-dashboard has counted the traffic: caught up with the topic, and
/// at least `accepted` events (the commands the traffic stored) in the last hour.
async fn counted_summary(
    board: &ProjectorApi,
    accepted: u64,
    limit: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + limit;
    caught_up("prism-dashboard", limit, || board.get("/readyz")).await?;
    loop {
        let reply = board.get(SUMMARY).await?;
        if reply.status != 200 {
            bail!("GET {SUMMARY}: {}", reply.describe());
        }
        let events = reply.body["windows"]["1h"]["events"].as_u64().unwrap_or(0);
        if events >= accepted {
            return Ok(reply.body);
        }
        if Instant::now() >= deadline {
            bail!(
                "prism-dashboard counted {events} events in the last hour after {} s, expected \
                 at least {accepted} (the commands the traffic stored)",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The dashboard's summary path.
const SUMMARY: &str = "/v1/dashboard/summary";

/// Money in and out per currency (`{currency: minor units}` each) as table rows: currency,
/// in, out, with the decimals the summary states for each currency (`currencies`).
fn money_rows(money_in: &Value, money_out: &Value, currencies: &Value) -> Vec<Vec<String>> {
    let mut codes: Vec<&String> = [money_in, money_out]
        .iter()
        .filter_map(|m| m.as_object())
        .flat_map(|m| m.keys())
        .collect();
    codes.sort();
    codes.dedup();
    codes
        .into_iter()
        .map(|currency| {
            let exponent = currencies[currency.as_str()]
                .as_u64()
                .and_then(|e| u32::try_from(e).ok())
                .unwrap_or_else(|| {
                    Currency::parse(currency).map_or(2, |c| u32::from(c.exponent()))
                });
            let amount = |m: &Value| decimal(m[currency.as_str()].as_i64().unwrap_or(0), exponent);
            vec![currency.clone(), amount(money_in), amount(money_out)]
        })
        .collect()
}

/// The live dashboard, read through its API once it has counted the traffic.
async fn show_dashboard(
    out: &mut Report,
    board: &ProjectorApi,
    accepted: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    out.section("Live dashboard (prism-dashboard)");
    let summary = counted_summary(board, accepted, limit).await?;
    out.line(&format!(
        "GET {SUMMARY}   (what the live page shows, counted from the same events)"
    ));
    let (hour, quarter) = (&summary["windows"]["1h"], &summary["windows"]["15m"]);
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    let decline_rate = match quarter["decline_rate_bp"].as_i64() {
        Some(bp) => format!(
            "{} ({} declined of {} card payments)",
            basis_points(bp),
            count(int(&quarter["card_declined"])),
            count(int(&quarter["card_approved"]).saturating_add(int(&quarter["card_declined"])))
        ),
        None => "no card payment in the window".to_owned(),
    };
    let merchants: Vec<String> = hour["top_merchants_by_volume"]
        .as_array()
        .map(|top| {
            top.iter()
                .take(3)
                .map(|m| format!("{} ({})", text(&m["name"]), count(int(&m["count"]))))
                .collect()
        })
        .unwrap_or_default();
    let accounts = &summary["accounts"];
    let rows = [
        (
            "events in the last hour",
            format!(
                "{} (last minute {})",
                count(int(&hour["events"])),
                count(int(&summary["windows"]["1m"]["events"]))
            ),
        ),
        ("declines, last 15 min", decline_rate),
        (
            "top merchants, last hour",
            if merchants.is_empty() {
                "no approved card payment".to_owned()
            } else {
                merchants.join(" · ")
            },
        ),
        (
            "accounts",
            format!(
                "{} open · {} frozen · {} closed ({} active in the last hour)",
                count(int(&accounts["open"])),
                count(int(&accounts["frozen"])),
                count(int(&accounts["closed"])),
                count(int(&summary["active_accounts"]["hour"]))
            ),
        ),
    ];
    for (key, value) in rows {
        out.line(&format!("  {key:<25} {value}"));
    }
    let money = money_rows(
        &hour["money_in"],
        &hour["money_out"],
        &summary["currencies"],
    );
    if money.is_empty() {
        out.line("no money in or out in the last hour");
    } else {
        out.line("money in and out in the last hour, per currency:");
        out.table(
            &[
                ("  CURRENCY", Align::Left),
                ("MONEY IN", Align::Right),
                ("MONEY OUT", Align::Right),
            ],
            &money
                .into_iter()
                .map(|mut row| {
                    row[0] = format!("  {}", row[0]);
                    row
                })
                .collect::<Vec<_>>(),
        );
    }
    Ok(())
}

// ---------- fraud features ----------

/// A feature's value for a line of the report (`—` for null).
fn feature(value: &Value) -> String {
    match value {
        Value::Null => "—".to_owned(),
        Value::Number(n) if n.is_f64() => {
            n.as_f64().map_or_else(String::new, |f| {
                // A small ratio keeps its digits.
                if f != 0.0 && f.abs() < 0.01 {
                    format!("{f:.2e}")
                } else {
                    format!("{f:.3}")
                }
            })
        }
        other => text(other),
    }
}

/// The busiest account's fraud features now, and the vector a suspicious candidate payment
/// would get, through prism-fraud's API once it holds the account's `version`.
async fn show_fraud(
    out: &mut Report,
    api: &ProjectorApi,
    id: &str,
    account: &Value,
    limit: Duration,
) -> anyhow::Result<()> {
    out.section("Fraud features (prism-fraud)");
    let version = account["version"].as_u64().unwrap_or(0);
    let path = format!("/v1/features/{id}?min_version={version}");
    let deadline = Instant::now() + limit;
    let now = loop {
        let reply = api.get(&path).await?;
        if reply.status == 200 {
            break reply.body;
        }
        if Instant::now() >= deadline {
            bail!("GET {path}: {}", reply.describe());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    out.line(&format!(
        "GET /v1/features/{id}   (feature set {}, as of version {})",
        text(&now["feature_set_version"]),
        number(&now["version"])
    ));
    let f = &now["features"];
    for name in [
        "card_payments_count_24h",
        "card_payments_sum_24h",
        "amount_mean",
        "amount_std",
        "distinct_merchants_24h",
        "declines_count_24h",
        "seconds_since_previous_event",
        "local_hour",
        "account_age_seconds",
    ] {
        out.line(&format!("  {name:<32} {}", feature(&f[name])));
    }
    // A card-testing probe: a tiny online payment abroad, at a merchant it never paid.
    let candidate = json!({"amount_minor": 95, "merchant_name": "GAMECOINS*TOPUP DEMO",
        "merchant_category": "5816", "merchant_country": "US", "channel": "online"});
    let scored = api
        .post(&format!("/v1/features/{id}/score"), &candidate)
        .await?;
    if scored.status != 200 {
        bail!("POST /v1/features/{id}/score: {}", scored.describe());
    }
    out.line(&format!(
        "POST /v1/features/{id}/score   {candidate}   (the vector a model would score)"
    ));
    let f = &scored.body["features"];
    for name in [
        "is_online",
        "first_time_at_merchant",
        "merchant_country_differs",
        "small_online_payments_10m",
        "amount_zscore",
        "amount_to_balance",
        "seconds_since_previous_payment",
    ] {
        out.line(&format!("  {name:<32} {}", feature(&f[name])));
    }
    out.line(
        "The same code wrote an offline row for every past payment (prismctl export features).",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_uses_the_currency_decimals_and_groups_thousands() {
        assert_eq!(money(123_456, "EUR"), "1,234.56 EUR");
        assert_eq!(money(-5, "EUR"), "-0.05 EUR");
        assert_eq!(money(1_500_000, "JPY"), "1,500,000 JPY");
        assert_eq!(money(12_345, "KWD"), "12.345 KWD");
        assert_eq!(signed_money(2_500, "GBP"), "+25.00 GBP");
        assert_eq!(signed_money(-2_500, "GBP"), "-25.00 GBP");
        assert_eq!(money(0, "USD"), "0.00 USD");
        assert_eq!(money(i64::MIN, "EUR"), "-92,233,720,368,547,758.08 EUR");
    }

    #[test]
    fn cursors_are_percent_encoded_and_text_is_shortened() {
        assert_eq!(encode("a+b/c=d_e-f.g~ "), "a%2Bb%2Fc%3Dd_e-f.g%7E+");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
        assert_eq!(
            time("2024-05-01T08:00:00.123456Z"),
            "2024-05-01 08:00:00.123"
        );
        assert_eq!(time("not a time"), "not a time");
    }

    #[test]
    fn an_analyst_types_names_without_their_accents() {
        assert_eq!(without_accents("Zoë Müller"), "zoe muller");
        assert_eq!(without_accents("João Gonçalves"), "joao goncalves");
        assert_eq!(without_accents("Ørsted Åse"), "orsted ase");
    }

    #[test]
    fn the_dashboard_figures_use_integers_and_the_stated_decimals() {
        assert_eq!(basis_points(353), "3.53 %");
        assert_eq!(basis_points(10_000), "100.00 %");
        assert_eq!(basis_points(5), "0.05 %");
        assert_eq!(count(1_234_567), "1,234,567");
        let currencies = json!({ "EUR": 2, "JPY": 0, "KWD": 3 });
        assert_eq!(
            money_rows(
                &json!({ "EUR": 1_234_567, "JPY": 3000, "KWD": 120_500 }),
                &json!({ "EUR": 5, "XTS": 1_000 }),
                &currencies
            ),
            [
                ["EUR", "12,345.67", "0.05"],
                ["JPY", "3,000", "0"],
                ["KWD", "120.500", "0.000"],
                ["XTS", "0.00", "10.00"],
            ]
        );
        assert!(money_rows(&json!({}), &json!({}), &currencies).is_empty());
        assert_eq!(money_in_decimals(-1_050, "KWD", 3), "-1.050 KWD");
    }

    #[test]
    fn the_page_address_carries_its_token_and_the_health_targets_the_demo_services() {
        assert_eq!(
            page_url("http://127.0.0.1:8083", "prism-local-dev-token"),
            "http://127.0.0.1:8083/#token=prism-local-dev-token"
        );
        assert_eq!(
            page_url("http://h:1/", "a b&c=d/é"),
            "http://h:1/#token=a%20b%26c%3Dd%2F%C3%A9"
        );
        let configured = [
            "command=http://127.0.0.1:8080/metrics".to_owned(),
            "other=http://10.0.0.1:9/metrics".to_owned(),
            "search=http://127.0.0.1:8082/metrics".to_owned(),
        ];
        assert_eq!(
            health_targets(
                &configured,
                &[
                    ("command", "http://127.0.0.1:4001"),
                    ("ledger", "http://127.0.0.1:4002"),
                    ("search", "http://127.0.0.1:4003/"),
                ]
            ),
            [
                "command=http://127.0.0.1:4001/metrics",
                "other=http://10.0.0.1:9/metrics",
                "search=http://127.0.0.1:4003/metrics",
            ]
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        let args = |accounts, rate, duration| Args {
            command_listen: None,
            ledger_listen: None,
            search_listen: None,
            dashboard_listen: None,
            fraud_listen: None,
            accounts,
            rate,
            duration,
            seed: 1,
            concurrency: 4,
            keep_running: false,
        };
        assert!(check_args(&args(10, 50.0, Duration::from_secs(1))).is_ok());
        assert!(check_args(&args(0, 50.0, Duration::from_secs(1))).is_err());
        assert!(check_args(&args(10, 0.0, Duration::from_secs(1))).is_err());
        assert!(check_args(&args(10, f64::NAN, Duration::from_secs(1))).is_err());
        assert!(check_args(&args(10, 50.0, Duration::ZERO)).is_err());
    }
}
