//! `prismctl loadgen`: seeded, reproducible traffic through prism-command's HTTP API.
//!
//! The requests come from [`crate::traffic`] (same seed, same sequence). They are sent open
//! loop: a token bucket releases `--rate` commands per second whatever the answers, capped
//! at `--concurrency` in flight. All accounts are opened first (their ids come from the
//! server), then the rest of the sequence runs until `--duration` or `--commands`.
//!
//! Every request carries an `Idempotency-Key` naming the run and the step, so a transport
//! error is retried with the same key: if the first attempt did land, the server answers
//! the retry from the stored commit and nothing is stored twice.
//!
//! # Outcomes
//! - 2xx: accepted (a payment is approved or declined; a decline is stored too);
//! - 422 (a rule said no) and 409 (another writer kept winning): expected outcomes, counted;
//! - any other 4xx: the generator sent something the server considers wrong (bad token,
//!   unknown account, invalid field) — a failure;
//! - 5xx and transport errors (after retries): failures.
//!
//! # Labels
//! Every card-testing payment is reported as fraud (`POST …/payments/{event_id}/fraud-reports`)
//! about `--fraud-reports-after` steps later, with the event id its own answer carried, so a
//! run leaves labelled data for the fraud features. A report whose payment got no answer
//! (it failed, or is still in flight) is skipped and counted.
//!
//! Exit status 0 when there was no failure, 1 otherwise (and when the server does not
//! answer at all), 2 for a wrong invocation.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backon::{ExponentialBuilder, Retryable};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::traffic::{Op, Pattern, Step, Traffic, COMMANDS};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of prism-command.
    #[arg(long, env = "PRISMCTL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token for /v1.
    #[arg(
        long,
        env = "PRISMCTL_TOKEN",
        default_value = "prism-local-dev-token",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub token: String,
    /// Accounts opened before the rest of the traffic.
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Target commands per second (open loop); 0 sends as fast as --concurrency allows.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to send (e.g. 30s, 2m, 500ms); ignored with --commands.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Send exactly this many commands (openings included) instead of running for --duration.
    #[arg(long)]
    pub commands: Option<u64>,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seed of the traffic model: the same seed sends the same sequence of requests.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of steps that are suspicious patterns (card testing, freezes), 0 to 1.
    #[arg(long, default_value_t = 0.02)]
    pub suspicious_share: f64,
    /// Mean number of steps between a card-testing payment and its fraud report (half to
    /// one and a half times this); 0 sends no reports.
    #[arg(long, default_value_t = 500)]
    pub fraud_reports_after: u64,
    /// Retries of a request that failed in transport (same idempotency key).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Time limit of one request.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses a duration for a command-line flag: `500ms`, `30s`, `2m`, `1h 30m` (any unit
/// [`humantime`] knows), or a plain number of seconds, as earlier versions took.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("{value:?} is not a duration like 500ms, 30s, 2m or 1h: {e}"))
}

/// What one command came to, after retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx for anything but a payment.
    Accepted,
    /// 2xx payment, `decision = approved`.
    Approved,
    /// 2xx payment, `decision = declined` with its reason (stored as an event).
    Declined(String),
    /// 422 with the rule's code.
    Rejected(String),
    /// 409: another writer kept winning.
    Conflict,
    /// Any other 4xx, with the problem's code.
    ClientError(u16, String),
    /// 5xx.
    ServerError(u16),
    /// No HTTP answer (connect, timeout, broken body), after retries.
    Transport(&'static str),
}

impl Outcome {
    /// A label for summaries (bounded set per command).
    pub fn label(&self) -> String {
        match self {
            Self::Accepted => "accepted".into(),
            Self::Approved => "approved".into(),
            Self::Declined(reason) => format!("declined:{reason}"),
            Self::Rejected(code) => format!("rejected:{code}"),
            Self::Conflict => "conflict".into(),
            Self::ClientError(status, code) => format!("http_{status}:{code}"),
            Self::ServerError(status) => format!("http_{status}"),
            Self::Transport(kind) => format!("transport:{kind}"),
        }
    }

    /// Whether the command stored events (every 2xx does).
    pub fn stored(&self) -> bool {
        matches!(self, Self::Accepted | Self::Approved | Self::Declined(_))
    }

    /// A failure of the run (not a rule saying no).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Self::ClientError(..) | Self::ServerError(_) | Self::Transport(_)
        )
    }
}

/// The answer to one request.
#[derive(Debug)]
pub struct Answer {
    pub outcome: Outcome,
    /// From the first attempt's start to the final answer.
    pub latency: Duration,
    pub retries: u32,
    /// The server answered from a stored commit (a retry whose first attempt had landed).
    pub replayed: bool,
    /// `account_id` of a successful answer.
    pub account_id: Option<String>,
    /// The first event id of a successful answer.
    pub event_id: Option<uuid::Uuid>,
    /// A short description of a failure, for the summary.
    pub detail: Option<String>,
}

/// One HTTP client for prism-command's /v1 API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    retries: u32,
}

impl Client {
    pub fn new(
        base: &str,
        token: &str,
        concurrency: usize,
        timeout: Duration,
        retries: u32,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(concurrency.max(1))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            retries,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` answered 200 (for readiness probes).
    pub async fn get_ok(&self, path: &str) -> Result<(), String> {
        match self.http.get(format!("{}{path}", self.base)).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("{path} answered {}", r.status())),
            Err(e) => Err(format!("{e}")),
        }
    }

    /// The body of `GET path` (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{path} answered {}", response.status()));
        }
        response.text().await.map_err(|e| e.to_string())
    }

    /// Sends one command with an idempotency `key`, retrying transport errors (with the
    /// same key; without a key, retries are off, as a retry could store the command twice).
    pub async fn send(&self, op: &Op, account_id: &str, key: Option<&str>) -> Answer {
        let url = format!("{}{}", self.base, op.path(account_id));
        let body = op.body().to_string();
        let started = Instant::now();
        let retries = if key.is_some() { self.retries } else { 0 };
        let attempts = AtomicU32::new(0);
        let once = || async {
            let mut request = self
                .http
                .post(&url)
                .header(AUTHORIZATION, format!("Bearer {}", self.token))
                .header(CONTENT_TYPE, "application/json");
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            let response = request.body(body.clone()).send().await?;
            let status = response.status();
            let replayed = response.headers().contains_key("idempotent-replayed");
            Ok::<_, reqwest::Error>((status, replayed, response.bytes().await?))
        };
        // 100 ms, doubling up to 3.2 s between attempts.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_millis(3_200))
            .with_max_times(usize::try_from(retries).unwrap_or(usize::MAX));
        let sent = once
            .retry(backoff)
            .notify(|_, _| {
                attempts.fetch_add(1, Ordering::Relaxed);
            })
            .await;
        let attempt = attempts.into_inner();
        let (status, replayed, bytes) = match sent {
            Ok(answer) => answer,
            Err(e) => return self.transport(started, attempt, &e),
        };
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let text = |field: &str| json[field].as_str().unwrap_or("").to_owned();
        let (outcome, detail) = classify(op, status, &json);
        let detail = detail.map(|d| {
            if d.is_empty() {
                format!("{} {}: {}", op.command(), status, text("detail"))
            } else {
                d
            }
        });
        let account_id = json["account_id"].as_str().map(str::to_owned);
        let event_id = json["event_ids"][0].as_str().and_then(|id| id.parse().ok());
        Answer {
            outcome,
            latency: started.elapsed(),
            retries: attempt,
            replayed,
            account_id,
            event_id,
            detail,
        }
    }

    fn transport(&self, started: Instant, retries: u32, e: &reqwest::Error) -> Answer {
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else if e.is_body() || e.is_decode() {
            "body"
        } else {
            "request"
        };
        Answer {
            outcome: Outcome::Transport(kind),
            latency: started.elapsed(),
            retries,
            replayed: false,
            account_id: None,
            event_id: None,
            detail: Some(format!("{e}")),
        }
    }
}

/// Maps an HTTP answer to an [`Outcome`], with a detail for failures.
fn classify(op: &Op, status: StatusCode, json: &Value) -> (Outcome, Option<String>) {
    let code = json["code"].as_str().unwrap_or("").to_owned();
    if status.is_success() {
        let outcome = match (op, json["decision"].as_str()) {
            (Op::Pay { .. }, Some("declined")) => Outcome::Declined(
                json["decline_reason"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_owned(),
            ),
            (Op::Pay { .. }, _) => Outcome::Approved,
            _ => Outcome::Accepted,
        };
        return (outcome, None);
    }
    match status.as_u16() {
        422 => (Outcome::Rejected(code), None),
        409 => (Outcome::Conflict, None),
        s @ 400..=499 => (Outcome::ClientError(s, code), Some(String::new())),
        s => (Outcome::ServerError(s), Some(String::new())),
    }
}

/// Sends `rate` tokens per second, bursting at most a 20th of a second's worth.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate <= 0` never waits.
    pub fn new(rate: f64) -> Self {
        let capacity = (rate / 20.0).max(1.0);
        Self {
            rate,
            capacity,
            tokens: 1.0,
            last: Instant::now(),
        }
    }

    pub async fn take(&mut self) {
        if self.rate <= 0.0 {
            return;
        }
        loop {
            let now = Instant::now();
            let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.capacity);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            let wait = (1.0 - self.tokens) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// Counts per command and outcome, and latencies.
#[derive(Debug)]
struct Stats {
    sent: u64,
    done: u64,
    outcomes: BTreeMap<&'static str, BTreeMap<String, u64>>,
    stored: u64,
    rejected: u64,
    conflicts: u64,
    client_errors: u64,
    server_errors: u64,
    transport_errors: u64,
    retries: u64,
    replayed: u64,
    skipped: u64,
    suspicious: u64,
    unresolved_reports: u64,
    failures: Vec<String>,
    latency_us: Histogram<u64>,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sent: 0,
            done: 0,
            outcomes: BTreeMap::new(),
            stored: 0,
            rejected: 0,
            conflicts: 0,
            client_errors: 0,
            server_errors: 0,
            transport_errors: 0,
            retries: 0,
            replayed: 0,
            skipped: 0,
            suspicious: 0,
            unresolved_reports: 0,
            failures: Vec::new(),
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        })
    }

    fn record(&mut self, command: &'static str, answer: &Answer) {
        self.done += 1;
        *self
            .outcomes
            .entry(command)
            .or_default()
            .entry(answer.outcome.label())
            .or_default() += 1;
        match &answer.outcome {
            o if o.stored() => self.stored += 1,
            Outcome::Rejected(_) => self.rejected += 1,
            Outcome::Conflict => self.conflicts += 1,
            Outcome::ClientError(..) => self.client_errors += 1,
            Outcome::ServerError(_) => self.server_errors += 1,
            Outcome::Transport(_) => self.transport_errors += 1,
            _ => {}
        }
        self.retries += u64::from(answer.retries);
        self.replayed += u64::from(answer.replayed);
        if answer.outcome.is_failure() && self.failures.len() < 5 {
            if let Some(detail) = &answer.detail {
                self.failures.push(detail.clone());
            }
        }
        let micros = u64::try_from(answer.latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
    }

    fn failed(&self) -> u64 {
        self.client_errors + self.server_errors + self.transport_errors
    }
}

/// The end-of-run report (`--json` prints it as it is).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub ok: bool,
    pub url: String,
    pub seed: u64,
    pub run_id: String,
    pub accounts: usize,
    pub accounts_opened: usize,
    pub concurrency: usize,
    pub target_rate: f64,
    pub elapsed_s: f64,
    pub achieved_rate: f64,
    /// Requests sent (steps skipped because their account could not be opened excluded).
    pub sent: u64,
    /// 2xx answers: each stored exactly one event (declined payments included).
    pub accepted: u64,
    /// 422 answers: a rule said no; nothing stored.
    pub rejected: u64,
    pub conflicts: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub transport_errors: u64,
    pub retries: u64,
    pub replayed: u64,
    pub skipped: u64,
    /// Steps of suspicious patterns sent.
    pub suspicious: u64,
    /// Fraud reports not sent because their payment had no answer with an event id yet.
    pub unresolved_reports: u64,
    /// Per command, per outcome label (`accepted`, `approved`, `declined:<reason>`,
    /// `rejected:<code>`, `conflict`, `http_<status>:<code>`, `transport:<kind>`).
    pub commands: BTreeMap<String, BTreeMap<String, u64>>,
    /// Declined card payments per reason.
    pub declines: BTreeMap<String, u64>,
    pub latency_ms: Latency,
    /// Up to five examples of failures.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1_000.0;
        if histogram.is_empty() {
            return Self {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        }
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

pub async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.suspicious_share) {
        bail!("--suspicious-share must be between 0 and 1");
    }
    if args.accounts == 0 || args.concurrency == 0 {
        bail!("--accounts and --concurrency must be at least 1");
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be a number of commands per second (0 for as fast as possible)");
    }
    let client = Client::new(
        &args.url,
        &args.token,
        args.concurrency,
        Duration::from_millis(args.timeout_ms),
        args.retries,
    )?;
    if let Err(e) = client.get_ok("/healthz").await {
        eprintln!(
            "prismctl: prism-command at {} is not answering: {e}",
            client.base()
        );
        return Ok(ExitCode::from(1));
    }
    let summary = generate(&client, args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs the traffic and returns the summary.
async fn generate(client: &Client, args: &Args) -> anyhow::Result<Summary> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let traffic = Traffic::new(args.seed, args.accounts, args.suspicious_share)
        .with_fraud_reports(args.fraud_reports_after);
    // Event ids of card-testing payments whose report is still to come, by step.
    let reported_later: Arc<Mutex<HashMap<u64, uuid::Uuid>>> = Default::default();
    let stats = Arc::new(Mutex::new(Stats::new()?));
    let ids: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; args.accounts]));
    let semaphore = Arc::new(Semaphore::new(args.concurrency));
    let mut bucket = TokenBucket::new(args.rate);
    let mut tasks = JoinSet::new();

    let bar = progress_bar(args);
    let started = Instant::now();
    let deadline = args.commands.is_none().then(|| started + args.duration);
    let limit = args.commands.unwrap_or(u64::MAX);
    let ticker = spawn_ticker(
        bar.clone(),
        Arc::clone(&stats),
        started,
        args.commands.is_some(),
    );

    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut opening = true;
    let mut opened: Option<Arc<Vec<Option<String>>>> = None;
    for mut step in traffic {
        if step.seq >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if opening && !matches!(step.op, Op::Open { .. }) {
            // Every account must exist before its first command.
            opening = false;
            while tasks.join_next().await.is_some() {}
            let ids = ids.lock().clone();
            if ids.iter().all(Option::is_none) {
                break;
            }
            opened = Some(Arc::new(ids));
        }
        let account_id = match &opened {
            None => String::new(),
            Some(ids) => match &ids[step.account] {
                Some(id) => id.clone(),
                None => {
                    stats.lock().skipped += 1;
                    continue;
                }
            },
        };
        if let Some(payment) = step.op.unresolved_payment() {
            match reported_later.lock().remove(&payment) {
                Some(event_id) => step.op.resolve_payment(event_id),
                None => {
                    stats.lock().unresolved_reports += 1;
                    continue;
                }
            }
        }
        let permit = tokio::select! {
            _ = &mut interrupted => break,
            permit = async {
                bucket.take().await;
                Arc::clone(&semaphore).acquire_owned().await
            } => permit?,
        };
        {
            let mut s = stats.lock();
            s.sent += 1;
            s.suspicious += u64::from(step.pattern.is_suspicious());
        }
        let key = format!("loadgen-{run_id}-{}", step.seq);
        let (client, stats, ids) = (client.clone(), Arc::clone(&stats), Arc::clone(&ids));
        let reported_later = Arc::clone(&reported_later);
        let will_be_reported = args.fraud_reports_after > 0 && step.pattern == Pattern::CardTesting;
        tasks.spawn(async move {
            let Step {
                account, op, seq, ..
            } = step;
            let answer = client.send(&op, &account_id, Some(&key)).await;
            if let (Op::Open { .. }, Some(id)) = (&op, &answer.account_id) {
                if answer.outcome.stored() {
                    ids.lock()[account] = Some(id.clone());
                }
            }
            if let (Op::Pay { .. }, true, Some(id)) = (&op, will_be_reported, answer.event_id) {
                if answer.outcome.stored() {
                    reported_later.lock().insert(seq, id);
                }
            }
            stats.lock().record(op.command(), &answer);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();

    let stats = stats.lock();
    let accounts_opened = ids.lock().iter().filter(|id| id.is_some()).count();
    let mut failures = stats.failures.clone();
    if accounts_opened == 0 && failures.is_empty() {
        failures.push("no account could be opened".into());
    }
    let declines = stats
        .outcomes
        .get("pay")
        .map(|o| {
            o.iter()
                .filter_map(|(label, n)| {
                    label.strip_prefix("declined:").map(|r| (r.to_owned(), *n))
                })
                .collect()
        })
        .unwrap_or_default();
    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(Summary {
        ok: stats.failed() == 0 && accounts_opened > 0,
        url: client.base().to_owned(),
        seed: args.seed,
        run_id,
        accounts: args.accounts,
        accounts_opened,
        concurrency: args.concurrency,
        target_rate: args.rate,
        elapsed_s: secs,
        achieved_rate: stats.done as f64 / secs,
        sent: stats.sent,
        accepted: stats.stored,
        rejected: stats.rejected,
        conflicts: stats.conflicts,
        client_errors: stats.client_errors,
        server_errors: stats.server_errors,
        transport_errors: stats.transport_errors,
        retries: stats.retries,
        replayed: stats.replayed,
        skipped: stats.skipped,
        suspicious: stats.suspicious,
        unresolved_reports: stats.unresolved_reports,
        commands: stats
            .outcomes
            .iter()
            .map(|(command, outcomes)| ((*command).to_owned(), outcomes.clone()))
            .collect(),
        declines,
        latency_ms: Latency::of(&stats.latency_us),
        failures,
    })
}

fn progress_bar(args: &Args) -> ProgressBar {
    let bar = match args.commands {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new(args.duration.as_secs().max(1)),
    };
    let template = if args.commands.is_some() {
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len}s {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Refreshes the bar every 200 ms: sent, rate, errors by class.
fn spawn_ticker(
    bar: ProgressBar,
    stats: Arc<Mutex<Stats>>,
    started: Instant,
    by_count: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let elapsed = started.elapsed();
            let message = {
                let s = stats.lock();
                if by_count {
                    bar.set_position(s.sent);
                }
                format!(
                    "sent {} | {:.0}/s | 422 {} | 409 {} | other 4xx {} | 5xx {} | transport {}",
                    s.sent,
                    s.done as f64 / elapsed.as_secs_f64().max(1e-3),
                    s.rejected,
                    s.conflicts,
                    s.client_errors,
                    s.server_errors,
                    s.transport_errors,
                )
            };
            if !by_count {
                bar.set_position(elapsed.as_secs());
            }
            bar.set_message(message);
        }
    })
}

fn print_summary(s: &Summary) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "loadgen against {}: seed {}, run {}, {} of {} accounts opened",
        s.url, s.seed, s.run_id, s.accounts_opened, s.accounts
    );
    let target = if s.target_rate > 0.0 {
        format!("{:.0}/s", s.target_rate)
    } else {
        "unlimited".into()
    };
    let _ = writeln!(
        out,
        "sent {} commands in {:.1} s: {:.1}/s (target {target}, concurrency {}); {} suspicious",
        s.sent, s.elapsed_s, s.achieved_rate, s.concurrency, s.suspicious
    );
    let _ = writeln!(
        out,
        "latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        s.latency_ms.p50, s.latency_ms.p90, s.latency_ms.p99, s.latency_ms.max
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<10} {:>8}  outcomes", "command", "count");
    for command in COMMANDS {
        let Some(outcomes) = s.commands.get(*command) else {
            continue;
        };
        let total: u64 = outcomes.values().sum();
        let detail: Vec<String> = outcomes
            .iter()
            .map(|(label, n)| format!("{label} {n}"))
            .collect();
        let _ = writeln!(out, "{command:<10} {total:>8}  {}", detail.join(", "));
    }
    let _ = writeln!(out);
    let declines: Vec<String> = s.declines.iter().map(|(r, n)| format!("{r} {n}")).collect();
    let _ = writeln!(
        out,
        "accepted {} (stored events), rejected by rules {}, declined payments {}",
        s.accepted,
        s.rejected,
        if declines.is_empty() {
            "0".into()
        } else {
            declines.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "conflicts {}, other 4xx {}, 5xx {}, transport errors {} (retries {}, replayed {}), skipped {}, fraud reports without their payment {}",
        s.conflicts, s.client_errors, s.server_errors, s.transport_errors, s.retries, s.replayed, s.skipped, s.unresolved_reports
    );
    for failure in &s.failures {
        let _ = writeln!(out, "  e.g. {failure}");
    }
    let _ = writeln!(out, "{}", if s.ok { "OK" } else { "FAILED" });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_common_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn answers_are_classified_by_status_and_body() {
        let pay = Op::Pay {
            amount_minor: 1,
            merchant_name: "x".into(),
            merchant_category: "5411",
            merchant_country: "DE",
            channel: "pos",
        };
        let deposit = Op::Deposit {
            amount_minor: 1,
            description: "x",
        };
        let declined =
            serde_json::json!({ "decision": "declined", "decline_reason": "account_frozen" });
        assert_eq!(
            classify(&pay, StatusCode::OK, &declined).0,
            Outcome::Declined("account_frozen".into())
        );
        assert_eq!(
            classify(
                &pay,
                StatusCode::OK,
                &serde_json::json!({ "decision": "approved" })
            )
            .0,
            Outcome::Approved
        );
        assert_eq!(
            classify(&deposit, StatusCode::OK, &Value::Null).0,
            Outcome::Accepted
        );
        let rule = serde_json::json!({ "code": "insufficient_funds" });
        let (outcome, detail) = classify(&deposit, StatusCode::UNPROCESSABLE_ENTITY, &rule);
        assert_eq!(
            (outcome.label(), outcome.is_failure(), detail),
            ("rejected:insufficient_funds".into(), false, None)
        );
        let (outcome, _) = classify(
            &deposit,
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({ "code": "unauthorized" }),
        );
        assert!(outcome.is_failure() && !outcome.stored());
        assert!(
            classify(&deposit, StatusCode::SERVICE_UNAVAILABLE, &Value::Null)
                .0
                .is_failure()
        );
        assert!(!classify(&deposit, StatusCode::CONFLICT, &Value::Null)
            .0
            .is_failure());
    }

    #[tokio::test]
    async fn the_token_bucket_paces_at_its_rate() {
        let mut bucket = TokenBucket::new(200.0);
        let started = Instant::now();
        for _ in 0..60 {
            bucket.take().await;
        }
        // 60 tokens at 200/s: about 0.3 s minus the initial burst of 10.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    }
}
