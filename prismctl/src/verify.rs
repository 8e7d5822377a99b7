//! `prismctl verify ledger`: re-folds the event store on its own and compares the result
//! with the live generation of the ledger read model.
//!
//! The fold here shares no code with the projector: per account it keeps every column of
//! `accounts` (names, email, country, currency, status, balance, limit, freeze reason,
//! opened/updated/closed times), the number of money events (deposits, withdrawals, approved
//! card payments: one statement line each), the sum of their signed amounts and of their
//! versions, the last version, and `daily_totals` per UTC day (increments are where a
//! double application shows first).
//!
//! The read model is read first, in one snapshot (REPEATABLE READ, see
//! `prism_ledger::query::BEGIN_SNAPSHOT`: `accounts`, one `GROUP BY account_id` over
//! `statement_lines`, `daily_totals`), then the store: the projector only applies stored
//! events, so the model can then only be behind the store, never ahead of it. Each account
//! is compared with the store's fold at the model's version of it; an account that is
//! merely behind is still drift (`version`; `--wait` re-checks until clean) unless
//! `--allow-behind` (verifying a model that projects under traffic).
//!
//! Statement lines whose aggregates (count, amount sum, version sum) differ are looked at
//! one by one (a bounded number of accounts): a line at a version that carries no money
//! event, or that carries another event, is reported as double-applied; a money event
//! without its line (at or below the model's version) as a missing line.
//!
//! Exit codes: 0 identical, 1 drift or a service did not answer, 2 bad invocation.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prism_command::store::EventStore;
use prism_events::{AccountEvent, AccountId, Envelope};
use prism_ledger::query::BEGIN_SNAPSHOT;
use prism_ledger::store::{validate_database_name, Ledger};
use prism_ledger::LedgerConfig;
use prism_platform::Config;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::mysql::MySqlPool;
use sqlx::Row;
use uuid::Uuid;

/// Events per page of the store's scan.
pub const DEFAULT_PAGE_SIZE: usize = 5_000;
/// Accounts whose statement lines are examined line by line, at most.
const MAX_DETAILED_ACCOUNTS: usize = 200;
/// Mismatches kept in the report (the counts are always complete).
const MAX_MISMATCHES: usize = 10_000;

pub use crate::models::Model;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The read model to verify.
    #[arg(value_enum)]
    model: Model,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Re-check (every second) until clean or SECS seconds have passed; for a read model
    /// that is still catching up.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    wait: u64,
    /// Events per event store page.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PAGE_SIZE as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    page_size: u64,
    /// Accounts the model has not caught up with yet are not drift when everything the
    /// model holds equals the store at the model's version (verifying under traffic).
    #[arg(long)]
    allow_behind: bool,
    /// Compare only this percentage of the accounts, chosen by account id (the fraud
    /// model, whose plain re-implementation rescans each account's history per payment).
    #[arg(long, value_name = "PERCENT", default_value_t = 100,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    sample: u8,
}

/// How [`verify_ledger_with`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub page_size: usize,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Re-check until clean or this much time has passed.
    pub wait: Duration,
    /// An account the model has not caught up with yet is not drift, as long as it equals
    /// the store's fold at the model's version (for a model projecting under traffic).
    pub allow_behind: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            page_size: DEFAULT_PAGE_SIZE,
            progress: false,
            wait: Duration::ZERO,
            allow_behind: false,
        }
    }
}

/// One difference between the store's fold and the read model.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub account_id: Uuid,
    /// `account`, `version`, `balance_minor`, `status`, `holder_name`, `email`, `country`,
    /// `currency`, `daily_withdrawal_limit_minor`, `frozen_reason`, `opened_at`,
    /// `updated_at`, `closed_at`, `statement_lines`, `statement_sum_minor`,
    /// `statement_line` (one line; `version` says which) or `daily_totals` (one day; `day`
    /// says which).
    pub field: String,
    /// The account version a `statement_line` mismatch is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The UTC day a `daily_totals` mismatch is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<NaiveDate>,
    pub expected: Value,
    pub actual: Value,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The read model equals the fold of the store.
    pub ok: bool,
    pub model: &'static str,
    /// The live generation compared (`None`: the ledger never ran, its model is empty).
    pub generation: Option<u32>,
    pub database: Option<String>,
    pub event_store: &'static str,
    pub events_read: u64,
    pub accounts_in_store: usize,
    pub accounts_in_model: usize,
    /// Accounts on both sides with every field equal.
    pub identical: usize,
    /// Accounts on both sides with a difference.
    pub drifted: usize,
    /// Of those, accounts whose model version is below the store's (not caught up).
    pub behind: usize,
    /// In the store, not in the model.
    pub missing_in_model: usize,
    /// In the model (accounts or statement lines), not in the store.
    pub only_in_model: usize,
    /// Statement lines at a version that carries no money event, or another event than the
    /// store's at that version: an event applied twice (or a foreign line).
    pub double_applied_lines: usize,
    /// Money events with no statement line, at or below the model's version.
    pub missing_lines: usize,
    /// Accounts whose lines were examined one by one (at most 200 per check).
    pub accounts_examined: usize,
    /// Checks made (more than one with `--wait`).
    pub attempts: u32,
    pub elapsed_ms: u64,
    pub mismatches: Vec<Mismatch>,
    /// More mismatches than the report keeps.
    pub truncated: bool,
}

/// Verifies the ledger once (no waiting, no progress bar).
pub async fn verify_ledger(config: &Config) -> anyhow::Result<VerifyReport> {
    verify_ledger_with(config, &Options::default()).await
}

/// Verifies the ledger, re-checking until clean or `options.wait` has passed.
pub async fn verify_ledger_with(
    config: &Config,
    options: &Options,
) -> anyhow::Result<VerifyReport> {
    validate_database_name(&LedgerConfig::from_config(config)?.database)
        .context("[ledger] database")?;
    let started = Instant::now();
    let store = prism_command::app::open_store(config)
        .await
        .with_context(|| format!("opening the event store ({})", backend_name(config)))?;
    let mysql = prism_platform::clients::mysql(&config.mysql).await?;
    let result = async {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut report = check(config, &store, &mysql, options).await?;
            report.attempts = attempts;
            report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if report.ok || started.elapsed() + Duration::from_secs(1) > options.wait {
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    .await;
    mysql.close().await;
    result
}

fn backend_name(config: &Config) -> &'static str {
    match config.event_store.backend {
        prism_platform::config::EventStoreBackend::Mongodb => "mongodb",
        prism_platform::config::EventStoreBackend::Postgres => "postgres",
    }
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    if let Some(verifier) = args
        .model
        .verifier(config, args.sample)
        .await
        .ok()
        .flatten()
    {
        return run_model(config, args, verifier.as_ref()).await;
    }
    if args.model != Model::Ledger {
        // The read model's store did not answer: say so like a failed verification.
        let name = args.model.settings(config).map(|s| s.name).unwrap_or("?");
        return match args.model.verifier(config, args.sample).await {
            Err(e) => {
                eprintln!("prismctl: verify {name}: {e:#}\n(is the stack up? `dev/stack up`)");
                Ok(ExitCode::FAILURE)
            }
            Ok(_) => anyhow::bail!("verify {name} is not available"),
        };
    }
    // A bad name is a configuration error (exit 2), not drift.
    validate_database_name(&LedgerConfig::from_config(config)?.database)
        .context("[ledger] database")?;
    let options = Options {
        page_size: usize::try_from(args.page_size).unwrap_or(DEFAULT_PAGE_SIZE),
        progress: true,
        wait: Duration::from_secs(args.wait),
        allow_behind: args.allow_behind,
    };
    let report = match verify_ledger_with(config, &options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("prismctl: verify ledger: {e:#}\n(is the stack up? `dev/stack up`)");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        print_text(&mut out, &report).context("writing the report")?;
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `verify <model>` through the kit's [`Verify`](prism_projector::verify::Verify).
async fn run_model(
    config: &Config,
    args: &Args,
    verifier: &dyn prism_projector::verify::Verify,
) -> anyhow::Result<ExitCode> {
    let name = args.model.settings(config)?.name;
    let options = Options {
        page_size: usize::try_from(args.page_size).unwrap_or(DEFAULT_PAGE_SIZE),
        progress: !args.json,
        wait: Duration::from_secs(args.wait),
        allow_behind: args.allow_behind,
    };
    let report = match crate::verify_model::verify_model(config, name, verifier, &options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("prismctl: verify {name}: {e:#}\n(is the stack up? `dev/stack up`)");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        crate::verify_model::print_text(&mut out, &report).context("writing the report")?;
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the store's events say about one account, folded up to `cutoff` (the model's
/// version of the account, so that a model that is merely behind is compared with the
/// store as it was at that version); `last_version` is the store's last version whatever
/// the cutoff.
#[derive(Debug, Clone, Default)]
struct Expected {
    cutoff: u64,
    opened: bool,
    status: &'static str,
    holder_name: String,
    email: String,
    country: String,
    currency: String,
    limit: i64,
    frozen_reason: Option<String>,
    /// Microseconds since the epoch, as the model's `DATETIME(6)` keeps them.
    opened_at: Option<i64>,
    updated_at: Option<i64>,
    closed_at: Option<i64>,
    balance: i128,
    lines: u64,
    line_sum: i128,
    line_version_sum: u128,
    /// Version of the last event folded (at most `cutoff`).
    folded_version: u64,
    last_version: u64,
    /// `daily_totals` by UTC day.
    daily: BTreeMap<NaiveDate, Daily>,
}

/// One `daily_totals` row's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
struct Daily {
    credits_minor: i128,
    debits_minor: i128,
    deposits: u64,
    withdrawals: u64,
    card_payments: u64,
    declined_payments: u64,
}

impl Expected {
    fn new(cutoff: u64) -> Self {
        Self {
            cutoff,
            ..Self::default()
        }
    }

    fn apply(&mut self, envelope: &Envelope) {
        self.last_version = self.last_version.max(envelope.account_version);
        if envelope.account_version > self.cutoff {
            return;
        }
        self.folded_version = self.folded_version.max(envelope.account_version);
        let at = envelope.time.timestamp_micros();
        let event = &envelope.event;
        let day = envelope.time.date_naive();
        match event {
            AccountEvent::AccountOpened(opened) => {
                self.opened = true;
                self.status = "open";
                self.holder_name.clone_from(&opened.holder_name);
                self.email.clone_from(&opened.email);
                self.country = opened.country.as_str().to_owned();
                self.currency = opened.currency.as_str().to_owned();
                self.limit = opened.daily_withdrawal_limit_minor;
                self.opened_at = Some(at);
            }
            AccountEvent::AccountFrozen(frozen) => {
                self.status = "frozen";
                self.frozen_reason = Some(frozen.reason.clone());
            }
            AccountEvent::AccountUnfrozen(_) => {
                self.status = "open";
                self.frozen_reason = None;
            }
            AccountEvent::AccountClosed(_) => {
                self.status = "closed";
                self.frozen_reason = None;
                self.closed_at = Some(at);
            }
            AccountEvent::MoneyDeposited(e) => {
                let d = self.daily.entry(day).or_default();
                d.credits_minor += i128::from(e.amount_minor);
                d.deposits += 1;
            }
            AccountEvent::MoneyWithdrawn(e) => {
                let d = self.daily.entry(day).or_default();
                d.debits_minor += i128::from(e.amount_minor);
                d.withdrawals += 1;
            }
            AccountEvent::CardPaymentApproved(e) => {
                let d = self.daily.entry(day).or_default();
                d.debits_minor += i128::from(e.payment.amount_minor);
                d.card_payments += 1;
            }
            AccountEvent::CardPaymentDeclined(_) => {
                self.daily.entry(day).or_default().declined_payments += 1;
            }
            // The ledger keeps no trace of a fraud report but its version.
            AccountEvent::PaymentReportedFraudulent(_) => {}
        }
        self.updated_at = Some(at);
        if is_money(event) {
            let change = i128::from(event.balance_change());
            self.balance += change;
            self.lines += 1;
            self.line_sum += change;
            self.line_version_sum += u128::from(envelope.account_version);
        }
    }
}

/// Events that move money and get a statement line.
fn is_money(event: &AccountEvent) -> bool {
    matches!(
        event,
        AccountEvent::MoneyDeposited(_)
            | AccountEvent::MoneyWithdrawn(_)
            | AccountEvent::CardPaymentApproved(_)
    )
}

/// One `accounts` row.
#[derive(Debug, Clone)]
struct ModelAccount {
    holder_name: String,
    email: String,
    country: String,
    currency: String,
    status: String,
    balance: i64,
    limit: i64,
    frozen_reason: Option<String>,
    opened_at: i64,
    updated_at: i64,
    closed_at: Option<i64>,
    version: u64,
}

/// `statement_lines` of one account, aggregated.
#[derive(Debug, Clone, Default)]
struct ModelLines {
    count: u64,
    sum: i128,
    version_sum: u128,
    max_version: u64,
}

/// The read model, read in one snapshot.
#[derive(Debug, Default)]
struct ModelView {
    generation: Option<(u32, String, MySqlPool)>,
    accounts: HashMap<Uuid, ModelAccount>,
    lines: HashMap<Uuid, ModelLines>,
    daily: HashMap<Uuid, BTreeMap<NaiveDate, Daily>>,
}

/// Whether a database exists on the MySQL server (without creating it).
pub async fn database_exists(pool: &MySqlPool, database: &str) -> anyhow::Result<bool> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
    )
    .bind(database)
    .fetch_optional(pool)
    .await
    .with_context(|| format!("looking for database {database} on mysql"))?;
    Ok(found.is_some())
}

async fn read_model(config: &Config, mysql: &MySqlPool) -> anyhow::Result<ModelView> {
    // Ledger::open would create the control database: look first.
    let ledger_config = LedgerConfig::from_config(config)?;
    if !database_exists(mysql, &ledger_config.database).await? {
        return Ok(ModelView::default());
    }
    let ledger = Ledger::open(&config.mysql, &ledger_config).await?;
    let Some(number) = ledger.live_number().await? else {
        return Ok(ModelView::default());
    };
    let generation = ledger.generation(number).await?;
    let pool = generation.pool.clone();
    let context = || format!("reading {} on mysql", generation.database);
    // One snapshot of every table (see BEGIN_SNAPSHOT): at READ COMMITTED each statement
    // would see newer commits than the one before, and a line or a day's total written
    // between two reads would look like drift.
    let mut tx = pool
        .begin_with(BEGIN_SNAPSHOT)
        .await
        .with_context(context)?;
    let rows = sqlx::query(
        "SELECT account_id, holder_name, email, country, currency, status, balance_minor, \
         daily_withdrawal_limit_minor, frozen_reason, opened_at, updated_at, closed_at, version \
         FROM accounts",
    )
    .fetch_all(&mut *tx)
    .await
    .with_context(context)?;
    let micros = |t: NaiveDateTime| t.and_utc().timestamp_micros();
    let mut accounts = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get("account_id").with_context(context)?;
        accounts.insert(
            id,
            ModelAccount {
                holder_name: row.try_get("holder_name").with_context(context)?,
                email: row.try_get("email").with_context(context)?,
                country: row.try_get("country").with_context(context)?,
                currency: row.try_get("currency").with_context(context)?,
                status: row.try_get("status").with_context(context)?,
                balance: row.try_get("balance_minor").with_context(context)?,
                limit: row
                    .try_get("daily_withdrawal_limit_minor")
                    .with_context(context)?,
                frozen_reason: row.try_get("frozen_reason").with_context(context)?,
                opened_at: micros(row.try_get("opened_at").with_context(context)?),
                updated_at: micros(row.try_get("updated_at").with_context(context)?),
                closed_at: row
                    .try_get::<Option<NaiveDateTime>, _>("closed_at")
                    .with_context(context)?
                    .map(micros),
                version: row.try_get("version").with_context(context)?,
            },
        );
    }
    // Sums as text: SUM() is DECIMAL, which is parsed here without a decimal type.
    let rows = sqlx::query(
        "SELECT account_id, COUNT(*) AS n, CAST(SUM(amount_minor) AS CHAR) AS amount_sum, \
         CAST(SUM(version) AS CHAR) AS version_sum, MAX(version) AS max_version \
         FROM statement_lines GROUP BY account_id",
    )
    .fetch_all(&mut *tx)
    .await
    .with_context(context)?;
    let mut lines = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get("account_id").with_context(context)?;
        let count: i64 = row.try_get("n").with_context(context)?;
        let sum: String = row.try_get("amount_sum").with_context(context)?;
        let version_sum: String = row.try_get("version_sum").with_context(context)?;
        lines.insert(
            id,
            ModelLines {
                count: u64::try_from(count).unwrap_or(0),
                sum: sum
                    .parse()
                    .with_context(|| format!("statement line sum {sum:?}"))?,
                version_sum: version_sum
                    .parse()
                    .with_context(|| format!("statement line version sum {version_sum:?}"))?,
                max_version: row.try_get("max_version").with_context(context)?,
            },
        );
    }
    let rows = sqlx::query(
        "SELECT account_id, day, credits_minor, debits_minor, deposits, withdrawals, \
         card_payments, declined_payments FROM daily_totals",
    )
    .fetch_all(&mut *tx)
    .await
    .with_context(context)?;
    let mut daily: HashMap<Uuid, BTreeMap<NaiveDate, Daily>> = HashMap::new();
    for row in &rows {
        let id: Uuid = row.try_get("account_id").with_context(context)?;
        let day: NaiveDate = row.try_get("day").with_context(context)?;
        let count = |column: &str| -> anyhow::Result<u64> {
            let n: u32 = row.try_get(column).with_context(context)?;
            Ok(u64::from(n))
        };
        let credits: i64 = row.try_get("credits_minor").with_context(context)?;
        let debits: i64 = row.try_get("debits_minor").with_context(context)?;
        daily.entry(id).or_default().insert(
            day,
            Daily {
                credits_minor: i128::from(credits),
                debits_minor: i128::from(debits),
                deposits: count("deposits")?,
                withdrawals: count("withdrawals")?,
                card_payments: count("card_payments")?,
                declined_payments: count("declined_payments")?,
            },
        );
    }
    tx.commit().await.with_context(context)?;
    Ok(ModelView {
        generation: Some((generation.number, generation.database.clone(), pool)),
        accounts,
        lines,
        daily,
    })
}

pub(crate) fn progress_bar(show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} events read ({per_sec})")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Reads every event of the store in one scan, folding as it goes. Returns the fold and
/// the count. `cutoffs` is each model account's version: the fold of an account stops there
/// (its `last_version` still says where the store is).
async fn fold_store(
    store: &Arc<dyn EventStore>,
    options: &Options,
    cutoffs: &HashMap<Uuid, u64>,
) -> anyhow::Result<(HashMap<Uuid, Expected>, u64)> {
    let bar = progress_bar(options.progress);
    let mut expected: HashMap<Uuid, Expected> = HashMap::new();
    let mut fold = |envelope: &Envelope| {
        let id = envelope.account_id.0;
        expected
            .entry(id)
            .or_insert_with(|| Expected::new(cutoffs.get(&id).copied().unwrap_or(u64::MAX)))
            .apply(envelope);
    };
    let mut in_order = InOrder::default();
    let mut events = 0_u64;
    let mut scan = store.scan(options.page_size.max(1));
    while let Some(page) = scan.next().await {
        let page = page.with_context(|| format!("reading the {} event store", store.backend()))?;
        events += page.len() as u64;
        for envelope in page {
            in_order.push(envelope, &mut fold);
        }
        bar.set_position(events);
    }
    drop(scan);
    let gaps = in_order.finish(&mut fold);
    if gaps > 0 {
        tracing::warn!(
            accounts = gaps,
            "the event store misses versions of some accounts; their later events were folded anyway"
        );
    }
    bar.finish_and_clear();
    Ok((expected, events))
}

/// Hands each account's events to a fold in version order (from version 1), whatever
/// order the store's scan gives them in; events ahead of their account wait here.
#[derive(Debug, Default)]
struct InOrder {
    /// Per account, the version due next.
    next: HashMap<Uuid, u64>,
    /// Per account, events read before the version due.
    waiting: HashMap<Uuid, BTreeMap<u64, Envelope>>,
}

impl InOrder {
    fn push(&mut self, envelope: Envelope, fold: &mut impl FnMut(&Envelope)) {
        let id = envelope.account_id.0;
        let next = self.next.entry(id).or_insert(1);
        let version = envelope.account_version;
        if version < *next {
            return; // read twice (a scan that saw a commit again): folded already
        }
        if version > *next {
            self.waiting
                .entry(id)
                .or_default()
                .insert(version, envelope);
            return;
        }
        fold(&envelope);
        *next += 1;
        if let Some(waiting) = self.waiting.get_mut(&id) {
            while let Some(envelope) = waiting.remove(next) {
                fold(&envelope);
                *next += 1;
            }
            if waiting.is_empty() {
                self.waiting.remove(&id);
            }
        }
    }

    /// Folds what still waits behind a missing version (a store with a gap: the
    /// comparison then shows it) and answers how many accounts had one.
    fn finish(self, fold: &mut impl FnMut(&Envelope)) -> usize {
        let gaps = self.waiting.len();
        for (_, waiting) in self.waiting {
            for envelope in waiting.values() {
                fold(envelope);
            }
        }
        gaps
    }
}

/// One check: the model, then the store, then the comparison.
async fn check(
    config: &Config,
    store: &Arc<dyn EventStore>,
    mysql: &MySqlPool,
    options: &Options,
) -> anyhow::Result<VerifyReport> {
    let model = read_model(config, mysql)
        .await
        .context("reading the ledger read model")?;
    let cutoffs: HashMap<Uuid, u64> = model
        .accounts
        .iter()
        .map(|(id, a)| (*id, a.version))
        .collect();
    let (expected, events_read) = fold_store(store, options, &cutoffs).await?;

    let mut mismatches: Vec<Mismatch> = Vec::new();
    let mut push = |m: Mismatch| mismatches.push(m);
    let (mut identical, mut drifted, mut behind, mut missing_in_model, mut only_in_model) =
        (0, 0, 0, 0, 0);
    let mut to_examine: Vec<Uuid> = Vec::new();

    // Sorted, so the report is stable.
    let store_ids: BTreeMap<Uuid, &Expected> = expected.iter().map(|(k, v)| (*k, v)).collect();
    for (&id, want) in &store_ids {
        let Some(have) = model.accounts.get(&id) else {
            missing_in_model += 1;
            let lines = model.lines.get(&id);
            push(Mismatch {
                account_id: id,
                field: "account".into(),
                version: None,
                day: None,
                expected: json!({ "version": want.last_version, "status": want.status }),
                actual: lines.map_or(Value::Null, |l| json!({ "statement_lines": l.count })),
            });
            continue;
        };
        let mut differs = false;
        let mut field = |name: &str, expected: Value, actual: Value| {
            if expected != actual {
                differs = true;
                push(Mismatch {
                    account_id: id,
                    field: name.into(),
                    version: None,
                    day: None,
                    expected,
                    actual,
                });
            }
        };
        if !want.opened {
            field("account", json!("opened"), json!("no account.opened event"));
        }
        let is_behind = have.version < want.last_version;
        if !(is_behind && options.allow_behind) {
            field("version", json!(want.last_version), json!(have.version));
        }
        // Everything else is compared with the store's fold at the model's version.
        field(
            "balance_minor",
            json!(want.balance.to_string()),
            json!(have.balance.to_string()),
        );
        field("status", json!(want.status), json!(have.status));
        field(
            "holder_name",
            json!(want.holder_name),
            json!(have.holder_name),
        );
        field("email", json!(want.email), json!(have.email));
        field("country", json!(want.country), json!(have.country));
        field("currency", json!(want.currency), json!(have.currency));
        field(
            "daily_withdrawal_limit_minor",
            json!(want.limit),
            json!(have.limit),
        );
        field(
            "frozen_reason",
            json!(want.frozen_reason),
            json!(have.frozen_reason),
        );
        let time = |t: Option<i64>| json!(t.and_then(micros_text));
        field(
            "opened_at",
            time(want.opened_at),
            time(Some(have.opened_at)),
        );
        field(
            "updated_at",
            time(want.updated_at),
            time(Some(have.updated_at)),
        );
        field("closed_at", time(want.closed_at), time(have.closed_at));
        let lines = model.lines.get(&id).cloned().unwrap_or_default();
        field("statement_lines", json!(want.lines), json!(lines.count));
        field(
            "statement_sum_minor",
            json!(want.line_sum.to_string()),
            json!(lines.sum.to_string()),
        );
        if want.lines != lines.count
            || want.line_sum != lines.sum
            || want.line_version_sum != lines.version_sum
            || lines.max_version > have.version
        {
            to_examine.push(id);
            differs = true;
        }
        // Daily totals, day by day, both ways.
        let empty = BTreeMap::new();
        let have_daily = model.daily.get(&id).unwrap_or(&empty);
        let days: std::collections::BTreeSet<&NaiveDate> =
            want.daily.keys().chain(have_daily.keys()).collect();
        for day in days {
            let (w, h) = (want.daily.get(day), have_daily.get(day));
            if w != h {
                differs = true;
                push(Mismatch {
                    account_id: id,
                    field: "daily_totals".into(),
                    version: None,
                    day: Some(*day),
                    expected: w.map_or(Value::Null, |d| json!(d)),
                    actual: h.map_or(Value::Null, |d| json!(d)),
                });
            }
        }
        if is_behind {
            behind += 1;
        }
        if differs {
            drifted += 1;
        } else {
            identical += 1;
        }
    }
    // Accounts or lines in the model that the store does not know.
    let mut model_only: Vec<Uuid> = model
        .accounts
        .keys()
        .chain(model.lines.keys())
        .chain(model.daily.keys())
        .filter(|id| !expected.contains_key(id))
        .copied()
        .collect();
    model_only.sort();
    model_only.dedup();
    for id in model_only {
        only_in_model += 1;
        let account = model.accounts.get(&id);
        let lines = model.lines.get(&id);
        push(Mismatch {
            account_id: id,
            field: "account".into(),
            version: None,
            day: None,
            expected: Value::Null,
            actual: json!({
                "version": account.map(|a| a.version),
                "status": account.map(|a| a.status.clone()),
                "statement_lines": lines.map_or(0, |l| l.count),
                "daily_totals": model.daily.get(&id).map_or(0, BTreeMap::len),
            }),
        });
    }

    // Line by line, for a bounded number of accounts.
    let mut double_applied_lines = 0;
    let mut missing_lines = 0;
    to_examine.truncate(MAX_DETAILED_ACCOUNTS);
    let accounts_examined = to_examine.len();
    if let Some((_, database, pool)) = &model.generation {
        let lines = model_lines(pool, &to_examine)
            .await
            .with_context(|| format!("reading statement lines of {database} on mysql"))?;
        for id in &to_examine {
            let events = store
                .load(AccountId(*id), 0)
                .await
                .with_context(|| format!("loading account {id} from the event store"))?;
            let model_version = model.accounts.get(id).map_or(0, |a| a.version);
            let found = examine_lines(
                *id,
                &events,
                lines.get(id).map(Vec::as_slice).unwrap_or(&[]),
                model_version,
            );
            double_applied_lines += found.double_applied;
            missing_lines += found.missing;
            for m in found.mismatches {
                push(m);
            }
        }
    }

    let ok = mismatches.is_empty();
    let truncated = mismatches.len() > MAX_MISMATCHES;
    mismatches.truncate(MAX_MISMATCHES);
    let (generation, database) = match &model.generation {
        Some((number, database, _)) => (Some(*number), Some(database.clone())),
        None => (None, None),
    };
    Ok(VerifyReport {
        ok,
        model: "ledger",
        generation,
        database,
        event_store: store.backend(),
        events_read,
        accounts_in_store: expected.len(),
        accounts_in_model: model.accounts.len(),
        identical,
        drifted,
        behind,
        missing_in_model,
        only_in_model,
        double_applied_lines,
        missing_lines,
        accounts_examined,
        attempts: 1,
        elapsed_ms: 0,
        mismatches,
        truncated,
    })
}

/// One statement line, as stored.
#[derive(Debug, Clone)]
struct Line {
    version: u64,
    event_id: Uuid,
    kind: String,
    amount: i64,
}

/// The statement lines of `accounts`, in chunks of one query each.
async fn model_lines(
    pool: &MySqlPool,
    accounts: &[Uuid],
) -> anyhow::Result<HashMap<Uuid, Vec<Line>>> {
    let mut out: HashMap<Uuid, Vec<Line>> = HashMap::new();
    for chunk in accounts.chunks(100) {
        let marks = vec!["?"; chunk.len()].join(",");
        let sql = format!(
            "SELECT account_id, version, event_id, kind, amount_minor FROM statement_lines \
             WHERE account_id IN ({marks}) ORDER BY account_id, version"
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(pool).await? {
            let id: Uuid = row.try_get("account_id")?;
            out.entry(id).or_default().push(Line {
                version: row.try_get("version")?,
                event_id: row.try_get("event_id")?,
                kind: row.try_get("kind")?,
                amount: row.try_get("amount_minor")?,
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct LineFindings {
    double_applied: usize,
    missing: usize,
    mismatches: Vec<Mismatch>,
}

/// Compares an account's statement lines with its events, line by line.
fn examine_lines(
    account: Uuid,
    events: &[Envelope],
    lines: &[Line],
    model_version: u64,
) -> LineFindings {
    let mut found = LineFindings::default();
    let by_version: HashMap<u64, &Envelope> =
        events.iter().map(|e| (e.account_version, e)).collect();
    let version_of: HashMap<Uuid, u64> = events.iter().map(|e| (e.id, e.account_version)).collect();
    let mut lined: HashMap<u64, bool> = HashMap::new();
    for line in lines {
        lined.insert(line.version, true);
        let actual = json!({
            "kind": line.kind,
            "amount_minor": line.amount,
            "event_id": line.event_id,
        });
        let mut report = |expected: Value, double: bool| {
            if double {
                found.double_applied += 1;
            }
            found.mismatches.push(Mismatch {
                account_id: account,
                field: "statement_line".into(),
                version: Some(line.version),
                day: None,
                expected,
                actual: actual.clone(),
            });
        };
        match by_version.get(&line.version) {
            None => report(json!("no event at this version"), true),
            Some(event) if !is_money(&event.event) => report(
                json!(format!(
                    "no line: v{} is {} (a money event applied twice?)",
                    line.version,
                    event.event_type()
                )),
                true,
            ),
            Some(event) if event.id != line.event_id => {
                let note = match version_of.get(&line.event_id) {
                    Some(v) => format!("event of v{v} applied again"),
                    None => "an event the store does not have".to_owned(),
                };
                report(
                    json!({ "event_id": event.id, "event_type": event.event_type(), "note": note }),
                    true,
                );
            }
            Some(event) if i128::from(event.event.balance_change()) != i128::from(line.amount) => {
                report(
                    json!({ "amount_minor": event.event.balance_change(), "event_type": event.event_type() }),
                    false,
                );
            }
            Some(_) => {}
        }
    }
    for event in events {
        let v = event.account_version;
        if is_money(&event.event) && v <= model_version && !lined.contains_key(&v) {
            found.missing += 1;
            found.mismatches.push(Mismatch {
                account_id: account,
                field: "statement_line".into(),
                version: Some(v),
                day: None,
                expected: json!({
                    "event_type": event.event_type(),
                    "amount_minor": event.event.balance_change(),
                    "event_id": event.id,
                }),
                actual: Value::Null,
            });
        }
    }
    found
}

/// Microseconds since the epoch as RFC 3339 (UTC, microseconds), `None` if out of range.
fn micros_text(micros: i64) -> Option<String> {
    DateTime::from_timestamp_micros(micros).map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_text(out: &mut impl Write, report: &VerifyReport) -> std::io::Result<()> {
    match (report.generation, &report.database) {
        (Some(g), Some(db)) => writeln!(
            out,
            "ledger: live generation {g} ({db}) against the {} event store",
            report.event_store
        )?,
        _ => writeln!(
            out,
            "ledger: no live generation (never ran): compared as empty against the {} event store",
            report.event_store
        )?,
    }
    if !report.mismatches.is_empty() {
        let rows: Vec<[String; 4]> = report
            .mismatches
            .iter()
            .map(|m| {
                let field = match (m.version, m.day) {
                    (Some(v), _) => format!("{}@v{v}", m.field),
                    (None, Some(day)) => format!("{}@{day}", m.field),
                    (None, None) => m.field.clone(),
                };
                [
                    m.account_id.to_string(),
                    field,
                    text(&m.expected),
                    text(&m.actual),
                ]
            })
            .collect();
        let header = ["ACCOUNT", "FIELD", "EXPECTED", "ACTUAL"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row).take(3) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |out: &mut dyn Write, c: [&str; 4]| {
            writeln!(
                out,
                "{:<w0$}  {:<w1$}  {:<w2$}  {}",
                c[0],
                c[1],
                c[2],
                c[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
        };
        line(out, header)?;
        for r in &rows {
            line(out, [&r[0], &r[1], &r[2], &r[3]])?;
        }
        if report.truncated {
            writeln!(out, "(more mismatches not shown)")?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "{} events, {} accounts in the store, {} in the model: {} identical, {} drifted \
         ({} behind), {} missing in the model, {} only in the model; {} double-applied \
         statement line{}, {} missing line{} ({} check{}, {:.1} s)",
        report.events_read,
        report.accounts_in_store,
        report.accounts_in_model,
        report.identical,
        report.drifted,
        report.behind,
        report.missing_in_model,
        report.only_in_model,
        report.double_applied_lines,
        if report.double_applied_lines == 1 {
            ""
        } else {
            "s"
        },
        report.missing_lines,
        if report.missing_lines == 1 { "" } else { "s" },
        report.attempts,
        if report.attempts == 1 { "" } else { "s" },
        report.elapsed_ms as f64 / 1000.0,
    )?;
    writeln!(
        out,
        "{}",
        if report.ok {
            "identical"
        } else {
            "DRIFT: the read model differs from the event store"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_events::event::MoneyDeposited;
    use prism_events::testing;

    fn event(account: AccountId, version: u64) -> Envelope {
        testing::envelope(AccountEvent::MoneyDeposited(MoneyDeposited {
            amount_minor: 1,
            description: None,
        }))
        .account(account)
        .version(version)
        .build()
    }

    #[test]
    fn each_accounts_events_reach_the_fold_in_version_order_whatever_the_scan_order() {
        let (a, b) = (AccountId::generate(), AccountId::generate());
        let scanned = [
            (a, 3),
            (b, 1),
            (a, 1),
            (a, 2),
            (b, 3),
            (a, 2),
            (b, 2),
            (a, 5),
        ];
        let mut folded: Vec<(AccountId, u64)> = Vec::new();
        let mut fold = |e: &Envelope| folded.push((e.account_id, e.account_version));
        let mut in_order = InOrder::default();
        for (account, version) in scanned {
            in_order.push(event(account, version), &mut fold);
        }
        // (a, 5) waits behind the missing version 4: folded at the end, and counted.
        assert_eq!(in_order.finish(&mut fold), 1);
        let of = |account| -> Vec<u64> {
            folded
                .iter()
                .filter(|(id, _)| *id == account)
                .map(|(_, v)| *v)
                .collect()
        };
        assert_eq!(of(a), vec![1, 2, 3, 5]);
        assert_eq!(of(b), vec![1, 2, 3]);
    }
}
