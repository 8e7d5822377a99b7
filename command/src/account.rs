//! The account aggregate: pure, synchronous, no I/O.
//!
//! [`decide`] turns a [`Command`] and the current [`Account`] into the events it causes or a
//! [`Rejection`]; [`evolve`] applies one stored event to the state; [`replay`] folds a whole
//! history. The service loads the state (snapshot + tail), calls [`decide`], appends the
//! events, and evolves its cached state with what was stored.
//!
//! # Rules
//! - Amounts are minor units of the account's currency, `1..=`[`MAX_AMOUNT_MINOR`]; every
//!   balance change is overflow-checked (an overflow is [`Rejection::BalanceOverflow`],
//!   never a panic or a wrap).
//! - Only an opened account takes commands: anything but `Open` on an account that was never
//!   opened is [`Rejection::AccountNotFound`] (the only [`Rejection::is_not_found`]);
//!   anything on a closed account, `Open` included, is [`Rejection::AccountClosed`] (an id is
//!   never reused); `Open` on an open or frozen account is [`Rejection::AlreadyOpen`].
//! - A frozen account takes deposits, but no withdrawals ([`Rejection::AccountFrozen`]) and
//!   no card payments (declined with [`DeclineReason::AccountFrozen`]). Freezing a frozen
//!   account is [`Rejection::AlreadyFrozen`]; unfreezing one that is not frozen is
//!   [`Rejection::NotFrozen`].
//! - A withdrawal needs the balance (no overdraft) and keeps the UTC day's withdrawals within
//!   the daily limit: `withdrawn on now's UTC date + amount <= limit`. A new UTC day starts
//!   from zero.
//! - A card payment that breaks a rule is not a rejection but a `CardPaymentDeclined` event:
//!   declines are facts (fraud signals) and are stored. A payment whose amount is `<= 0` is
//!   malformed input, not a payment, and is rejected.
//! - Closing needs a zero balance. Each command yields exactly the events it causes (today
//!   always one).
//! - A fraud report names one of the account's card payments (approved or declined) by its
//!   event id; anything else is [`Rejection::PaymentNotFound`]. Each payment is reported at
//!   most once ([`Rejection::AlreadyReported`]). Reports are taken on open, frozen **and
//!   closed** accounts (chargebacks arrive after a closure); the reason is a required text.
//!   On an account never opened a report is [`Rejection::AccountNotFound`], like any command.
//!
//! # Choices where the issue is silent
//! - **Order of checks:** the account's existence (not found / closed / already open) first,
//!   then the command's own input (amounts, texts, limit), then the rules that depend on the
//!   state. So a malformed withdrawal on a frozen account is `invalid_amount`, and a
//!   withdrawal that both overdraws and breaks the limit is `insufficient_funds`.
//! - **Closing a frozen account is rejected** (`account_frozen`): a freeze is a hold (fraud,
//!   legal), and lifting it must be its own recorded decision before the account can go.
//! - **Only withdrawals count towards the daily withdrawal limit**; card payments do not
//!   (they have their own rules, and the decline stream is the fraud signal).
//! - **Decline precedence** for card payments: account frozen, then amount out of range
//!   (`> MAX_AMOUNT_MINOR`), then insufficient funds.
//! - **Default limit:** 5 000 major units of the currency ([`default_daily_withdrawal_limit`]).
//!   A given limit may be anything in `0..=MAX_AMOUNT_MINOR`; 0 blocks every withdrawal.
//! - **Texts** are trimmed. Holder name (≤ 200 chars), email (≤ 254, `local@domain`, no
//!   whitespace), merchant name (≤ 200) and freeze reason (≤ 500) must not be blank and, except
//!   the reason, not contain control characters; the merchant category is four ASCII digits.
//!   A fraud report's reason is required too, at most 500 chars, trimmed.
//!   A blank description is stored as none; a description is at most 500 chars. Violations are
//!   [`Rejection::InvalidField`] naming the field.
//! - **The daily tracker is bounded:** the state keeps only the latest UTC day that had a
//!   withdrawal and its total. An event of an earlier day (clock skew between instances)
//!   leaves the tracker alone; an event of a later day replaces it.
//! - **Fraud reports need the history, the state keeps only their results.** Whether the
//!   named event is a card payment of this account is looked up by the service in the
//!   account's stored events (up to the state's version) and handed over in the command
//!   ([`PaymentLookup`]): the state keeps no list of payments, which would grow without
//!   bound in every cached state. It keeps the set of payments already reported (reports
//!   are rare), which is part of the snapshot. An event id of the account that is not a
//!   card payment (a deposit, a freeze, a report) is `payment_not_found` like an unknown
//!   id: only card payments can be fraud. Order: the reason, then the payment, then
//!   whether it was reported already. A report moves no money and changes no status.
//! - **HTTP statuses** ([`Rejection::http_status`]): invalid input 400, an account never
//!   opened or a payment the account does not have 404, a payment reported already 409 (the
//!   request repeats one that is done), every other rule 422.
//! - **[`evolve`] never fails and never panics:** it trusts the stored history (every event
//!   in it passed [`decide`]) and saturates rather than wraps if a forged history would
//!   overflow.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use prism_events::event::{
    AccountClosed, AccountFrozen, AccountOpened, AccountUnfrozen, CardPayment, CardPaymentApproved,
    CardPaymentDeclined, DeclineReason, MinorUnits, MoneyDeposited, MoneyWithdrawn,
    PaymentReportedFraudulent, WithdrawalChannel,
};
use prism_events::{AccountEvent, Country, Currency, Envelope};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The sane bound on a single amount (and on a daily limit): 10^12 minor units.
pub const MAX_AMOUNT_MINOR: MinorUnits = 1_000_000_000_000;

/// The default daily withdrawal limit in major units of the account's currency.
const DEFAULT_DAILY_LIMIT_MAJOR: MinorUnits = 5_000;

const NAME_MAX_CHARS: usize = 200;
const EMAIL_MAX_CHARS: usize = 254;
const TEXT_MAX_CHARS: usize = 500;

/// Default daily withdrawal limit when the open command gives none: 5 000 major units of
/// the currency, scaled by its exponent (500 000 for EUR, 5 000 for JPY, 5 000 000 for KWD).
pub fn default_daily_withdrawal_limit(currency: Currency) -> MinorUnits {
    10_i64
        .checked_pow(u32::from(currency.exponent()))
        .and_then(|scale| scale.checked_mul(DEFAULT_DAILY_LIMIT_MAJOR))
        .map_or(MAX_AMOUNT_MINOR, |limit| limit.min(MAX_AMOUNT_MINOR))
}

/// Opens a new account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAccount {
    pub holder_name: String,
    pub email: String,
    pub country: Country,
    pub currency: Currency,
    /// `None` takes [`default_daily_withdrawal_limit`] of the currency.
    pub daily_withdrawal_limit_minor: Option<MinorUnits>,
}

/// Puts money in; allowed on a frozen account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositMoney {
    pub amount_minor: MinorUnits,
    pub description: Option<String>,
}

/// Takes money out: needs the balance and respects the daily limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawMoney {
    pub amount_minor: MinorUnits,
    pub description: Option<String>,
    pub channel: WithdrawalChannel,
}

/// A card payment at a merchant: approved or declined, both recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayByCard {
    pub payment: CardPayment,
}

/// Reports one of the account's card payments as fraud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFraud {
    pub payment_event_id: Uuid,
    pub reason: String,
    /// What the account's history holds under `payment_event_id`, up to the state's
    /// version: the aggregate keeps no list of payments (it would grow without bound), so
    /// the service looks the event up before deciding.
    pub payment: PaymentLookup,
}

/// What an event id is in an account's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentLookup {
    /// A `CardPaymentApproved` or `CardPaymentDeclined` of this account.
    CardPayment,
    /// No event of this account, or one that is not a card payment.
    NotAPayment,
}

/// Stops withdrawals and card payments until unfrozen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeAccount {
    pub reason: String,
}

/// Everything a client can ask of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Open(OpenAccount),
    Deposit(DepositMoney),
    Withdraw(WithdrawMoney),
    PayByCard(PayByCard),
    Freeze(FreezeAccount),
    Unfreeze,
    Close,
    ReportFraud(ReportFraud),
}

impl Command {
    /// A stable, bounded name (a metric label).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open(_) => "open",
            Self::Deposit(_) => "deposit",
            Self::Withdraw(_) => "withdraw",
            Self::PayByCard(_) => "pay",
            Self::Freeze(_) => "freeze",
            Self::Unfreeze => "unfreeze",
            Self::Close => "close",
            Self::ReportFraud(_) => "report_fraud",
        }
    }
}

/// Where an account is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No event yet: the account does not exist.
    #[default]
    Unopened,
    Open,
    Frozen,
    Closed,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unopened => "unopened",
            Self::Open => "open",
            Self::Frozen => "frozen",
            Self::Closed => "closed",
        }
    }
}

/// The withdrawals of one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DayWithdrawals {
    day: NaiveDate,
    withdrawn_minor: MinorUnits,
}

/// The write-side state of one account, rebuilt from its events.
///
/// **API boundary:** it is snapshotted as JSON with named fields. Decoding is strict (unknown
/// or missing fields are errors), so a snapshot written by another shape of this struct fails
/// to load and the account is replayed from its events instead of being misread. Bump
/// [`Account::SNAPSHOT_VERSION`] whenever the shape or the meaning of a field changes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    version: u64,
    status: Status,
    holder_name: String,
    email: String,
    country: Option<Country>,
    currency: Option<Currency>,
    balance_minor: MinorUnits,
    daily_withdrawal_limit_minor: MinorUnits,
    /// Only the latest UTC day with a withdrawal: the state stays bounded.
    latest_withdrawals: Option<DayWithdrawals>,
    freeze_reason: Option<String>,
    opened_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    /// Payments reported as fraud (reports are rare: small).
    reported: BTreeSet<Uuid>,
}

/// A snapshot as stored: the state with the format it was written in. Decoding is strict,
/// and only [`Account::SNAPSHOT_VERSION`] is accepted, so a snapshot of another format (an
/// older build's, or one without a format at all) is never read with today's meaning.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    format: u32,
    account: Account,
}

/// Why a stored snapshot is not used (the account is replayed from its events instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot format {found}, this build reads {expected}")]
    OtherFormat { found: u32, expected: u32 },
    #[error("unreadable snapshot: {0}")]
    Unreadable(String),
}

impl Account {
    /// The version of the snapshot format; a store discards snapshots of another version.
    pub const SNAPSHOT_VERSION: u32 = 2;

    /// This state as a snapshot document, tagged with [`Account::SNAPSHOT_VERSION`].
    pub fn to_snapshot(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(SnapshotBody {
            format: Self::SNAPSHOT_VERSION,
            account: self.clone(),
        })
    }

    /// The state in a snapshot document written by [`Account::to_snapshot`] of this
    /// snapshot format; any other format or shape is an error.
    pub fn from_snapshot(document: serde_json::Value) -> Result<Account, SnapshotError> {
        let format = document
            .get("format")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| SnapshotError::Unreadable("no format".into()))?;
        if format != u64::from(Self::SNAPSHOT_VERSION) {
            return Err(SnapshotError::OtherFormat {
                found: u32::try_from(format).unwrap_or(u32::MAX),
                expected: Self::SNAPSHOT_VERSION,
            });
        }
        serde_json::from_value::<SnapshotBody>(document)
            .map(|body| body.account)
            .map_err(|e| SnapshotError::Unreadable(e.to_string()))
    }

    /// The version of the last applied event (0 for an unopened account).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn balance_minor(&self) -> MinorUnits {
        self.balance_minor
    }

    pub fn currency(&self) -> Option<Currency> {
        self.currency
    }

    pub fn holder_name(&self) -> &str {
        &self.holder_name
    }

    pub fn email(&self) -> &str {
        &self.email
    }

    pub fn country(&self) -> Option<Country> {
        self.country
    }

    pub fn daily_withdrawal_limit_minor(&self) -> MinorUnits {
        self.daily_withdrawal_limit_minor
    }

    /// Why the account is frozen, while it is.
    pub fn freeze_reason(&self) -> Option<&str> {
        self.freeze_reason.as_deref()
    }

    /// The sum withdrawn on a UTC day; 0 for any day but the latest one with a withdrawal.
    pub fn withdrawn_on(&self, day: NaiveDate) -> MinorUnits {
        match self.latest_withdrawals {
            Some(latest) if latest.day == day => latest.withdrawn_minor,
            _ => 0,
        }
    }

    pub fn opened_at(&self) -> Option<DateTime<Utc>> {
        self.opened_at
    }

    pub fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.updated_at
    }

    /// Whether the payment `event_id` was reported as fraud.
    pub fn reported(&self, event_id: Uuid) -> bool {
        self.reported.contains(&event_id)
    }

    fn record_withdrawal(&mut self, day: NaiveDate, amount: MinorUnits) {
        match &mut self.latest_withdrawals {
            Some(latest) if latest.day == day => {
                latest.withdrawn_minor = latest.withdrawn_minor.saturating_add(amount);
            }
            // An earlier day (clock skew): it cannot matter for today's limit any more.
            Some(latest) if latest.day > day => {}
            _ => {
                self.latest_withdrawals = Some(DayWithdrawals {
                    day,
                    withdrawn_minor: amount,
                });
            }
        }
    }
}

/// Why a command was refused. A rejected command stores nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("account not found")]
    AccountNotFound,
    #[error("account is closed")]
    AccountClosed,
    #[error("account is already open")]
    AlreadyOpen,
    #[error("account is frozen")]
    AccountFrozen,
    #[error("account is already frozen")]
    AlreadyFrozen,
    #[error("account is not frozen")]
    NotFrozen,
    #[error(
        "amount_minor must be between 1 and {MAX_AMOUNT_MINOR} minor units, got {amount_minor}"
    )]
    InvalidAmount { amount_minor: MinorUnits },
    #[error(
        "daily_withdrawal_limit_minor must be between 0 and {MAX_AMOUNT_MINOR} minor units, got {limit_minor}"
    )]
    InvalidLimit { limit_minor: MinorUnits },
    #[error("{field} {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },
    #[error(
        "insufficient funds: balance {balance_minor}, requested {requested_minor} minor units"
    )]
    InsufficientFunds {
        balance_minor: MinorUnits,
        requested_minor: MinorUnits,
    },
    #[error(
        "daily withdrawal limit exceeded: limit {limit_minor}, already withdrawn today \
         {withdrawn_today_minor}, requested {requested_minor} minor units"
    )]
    DailyLimitExceeded {
        limit_minor: MinorUnits,
        withdrawn_today_minor: MinorUnits,
        requested_minor: MinorUnits,
    },
    #[error("the balance would overflow")]
    BalanceOverflow,
    #[error("the balance must be zero to close the account, it is {balance_minor} minor units")]
    BalanceNotZero { balance_minor: MinorUnits },
    #[error("the account has no card payment {payment_event_id}")]
    PaymentNotFound { payment_event_id: Uuid },
    #[error("card payment {payment_event_id} was already reported as fraud")]
    AlreadyReported { payment_event_id: Uuid },
}

impl Rejection {
    /// A stable snake_case identifier (problem documents, metric labels).
    pub fn code(&self) -> &'static str {
        match self {
            Self::AccountNotFound => "account_not_found",
            Self::AccountClosed => "account_closed",
            Self::AlreadyOpen => "already_open",
            Self::AccountFrozen => "account_frozen",
            Self::AlreadyFrozen => "already_frozen",
            Self::NotFrozen => "not_frozen",
            Self::InvalidAmount { .. } => "invalid_amount",
            Self::InvalidLimit { .. } => "invalid_limit",
            Self::InvalidField { .. } => "invalid_field",
            Self::InsufficientFunds { .. } => "insufficient_funds",
            Self::DailyLimitExceeded { .. } => "daily_limit_exceeded",
            Self::BalanceOverflow => "balance_overflow",
            Self::BalanceNotZero { .. } => "balance_not_zero",
            Self::PaymentNotFound { .. } => "payment_not_found",
            Self::AlreadyReported { .. } => "payment_already_reported",
        }
    }

    /// True only for a command on an account that was never opened (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::AccountNotFound)
    }

    /// True for a fraud report of a payment the account does not have (HTTP 404).
    pub fn is_payment_not_found(&self) -> bool {
        matches!(self, Self::PaymentNotFound { .. })
    }

    /// True for a second report of one payment (HTTP 409: the request repeats a done one).
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::AlreadyReported { .. })
    }

    /// True when the command's own input is malformed whatever the state (HTTP 400); the
    /// other rejections are rule violations, answered as [`Self::http_status`] says.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidAmount { .. } | Self::InvalidLimit { .. } | Self::InvalidField { .. }
        )
    }

    /// The HTTP status that answers this rejection, live or replayed from an idempotency
    /// key's stored answer: 400 for invalid input, 404 for an account never opened or a
    /// payment the account does not have, 409 for a payment reported already, 422 for the
    /// other rules.
    pub fn http_status(&self) -> u16 {
        if self.is_invalid_input() {
            400
        } else if self.is_not_found() || self.is_payment_not_found() {
            404
        } else if self.is_duplicate() {
            409
        } else {
            422
        }
    }

    /// The field of the command at fault, for an invalid input.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::InvalidAmount { .. } => Some("amount_minor"),
            Self::InvalidLimit { .. } => Some("daily_withdrawal_limit_minor"),
            Self::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Decides a command against the state at time `now` (UTC; used for the daily limit).
pub fn decide(
    state: &Account,
    command: &Command,
    now: DateTime<Utc>,
) -> Result<Vec<AccountEvent>, Rejection> {
    match (state.status, command) {
        // Chargebacks arrive after a closure: reports are taken on any opened account.
        (Status::Open | Status::Frozen | Status::Closed, Command::ReportFraud(report)) => {
            report_fraud(state, report)
        }
        (Status::Closed, _) => Err(Rejection::AccountClosed),
        (Status::Unopened, Command::Open(open)) => open_account(open),
        (_, Command::Open(_)) => Err(Rejection::AlreadyOpen),
        (Status::Unopened, _) => Err(Rejection::AccountNotFound),
        (_, Command::Deposit(deposit)) => deposit_money(state, deposit),
        (_, Command::Withdraw(withdraw)) => withdraw_money(state, withdraw, now),
        (_, Command::PayByCard(pay)) => pay_by_card(state, pay),
        (_, Command::Freeze(freeze)) => freeze_account(state, freeze),
        (_, Command::Unfreeze) => unfreeze_account(state),
        (_, Command::Close) => close_account(state),
    }
    .map(|event| vec![event])
}

/// Applies one stored event (uses `envelope.time` for the UTC day, `envelope.account_version`
/// for the version).
pub fn evolve(state: &mut Account, envelope: &Envelope) {
    match &envelope.event {
        AccountEvent::AccountOpened(e) => {
            state.status = Status::Open;
            state.holder_name.clone_from(&e.holder_name);
            state.email.clone_from(&e.email);
            state.country = Some(e.country);
            state.currency = Some(e.currency);
            state.daily_withdrawal_limit_minor = e.daily_withdrawal_limit_minor;
            state.opened_at = Some(envelope.time);
        }
        AccountEvent::MoneyDeposited(e) => {
            state.balance_minor = state.balance_minor.saturating_add(e.amount_minor);
        }
        AccountEvent::MoneyWithdrawn(e) => {
            state.balance_minor = state.balance_minor.saturating_sub(e.amount_minor);
            state.record_withdrawal(envelope.time.date_naive(), e.amount_minor);
        }
        AccountEvent::CardPaymentApproved(e) => {
            state.balance_minor = state.balance_minor.saturating_sub(e.payment.amount_minor);
        }
        AccountEvent::CardPaymentDeclined(_) => {}
        AccountEvent::PaymentReportedFraudulent(e) => {
            state.reported.insert(e.payment_event_id);
        }
        AccountEvent::AccountFrozen(e) => {
            state.status = Status::Frozen;
            state.freeze_reason = Some(e.reason.clone());
        }
        AccountEvent::AccountUnfrozen(_) => {
            state.status = Status::Open;
            state.freeze_reason = None;
        }
        AccountEvent::AccountClosed(_) => {
            state.status = Status::Closed;
            state.freeze_reason = None;
        }
    }
    state.version = envelope.account_version;
    state.updated_at = Some(envelope.time);
}

/// Folds a history from scratch.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Account {
    events
        .into_iter()
        .fold(Account::default(), |mut state, envelope| {
            evolve(&mut state, envelope);
            state
        })
}

fn open_account(open: &OpenAccount) -> Result<AccountEvent, Rejection> {
    let holder_name = line("holder_name", &open.holder_name, NAME_MAX_CHARS)?;
    let email = email(&open.email)?;
    let daily_withdrawal_limit_minor = match open.daily_withdrawal_limit_minor {
        None => default_daily_withdrawal_limit(open.currency),
        Some(limit) if (0..=MAX_AMOUNT_MINOR).contains(&limit) => limit,
        Some(limit_minor) => return Err(Rejection::InvalidLimit { limit_minor }),
    };
    Ok(AccountEvent::AccountOpened(AccountOpened {
        holder_name,
        email,
        country: open.country,
        currency: open.currency,
        daily_withdrawal_limit_minor,
    }))
}

fn deposit_money(state: &Account, deposit: &DepositMoney) -> Result<AccountEvent, Rejection> {
    let amount_minor = amount(deposit.amount_minor)?;
    let description = description(deposit.description.as_deref())?;
    state
        .balance_minor
        .checked_add(amount_minor)
        .ok_or(Rejection::BalanceOverflow)?;
    Ok(AccountEvent::MoneyDeposited(MoneyDeposited {
        amount_minor,
        description,
    }))
}

fn withdraw_money(
    state: &Account,
    withdraw: &WithdrawMoney,
    now: DateTime<Utc>,
) -> Result<AccountEvent, Rejection> {
    let amount_minor = amount(withdraw.amount_minor)?;
    let description = description(withdraw.description.as_deref())?;
    if state.status == Status::Frozen {
        return Err(Rejection::AccountFrozen);
    }
    if !covers(state.balance_minor, amount_minor) {
        return Err(Rejection::InsufficientFunds {
            balance_minor: state.balance_minor,
            requested_minor: amount_minor,
        });
    }
    let withdrawn_today_minor = state.withdrawn_on(now.date_naive());
    let within_limit = withdrawn_today_minor
        .checked_add(amount_minor)
        .is_some_and(|total| total <= state.daily_withdrawal_limit_minor);
    if !within_limit {
        return Err(Rejection::DailyLimitExceeded {
            limit_minor: state.daily_withdrawal_limit_minor,
            withdrawn_today_minor,
            requested_minor: amount_minor,
        });
    }
    Ok(AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
        amount_minor,
        description,
        channel: withdraw.channel,
    }))
}

fn pay_by_card(state: &Account, pay: &PayByCard) -> Result<AccountEvent, Rejection> {
    let requested = &pay.payment;
    if requested.amount_minor <= 0 {
        return Err(Rejection::InvalidAmount {
            amount_minor: requested.amount_minor,
        });
    }
    let payment = CardPayment {
        merchant_name: line("merchant_name", &requested.merchant_name, NAME_MAX_CHARS)?,
        merchant_category: merchant_category(&requested.merchant_category)?,
        ..requested.clone()
    };
    let decline_reason = if state.status == Status::Frozen {
        Some(DeclineReason::AccountFrozen)
    } else if payment.amount_minor > MAX_AMOUNT_MINOR {
        Some(DeclineReason::AmountOutOfRange)
    } else if !covers(state.balance_minor, payment.amount_minor) {
        Some(DeclineReason::InsufficientFunds)
    } else {
        None
    };
    Ok(match decline_reason {
        Some(decline_reason) => AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
            payment,
            decline_reason,
        }),
        None => AccountEvent::CardPaymentApproved(CardPaymentApproved { payment }),
    })
}

fn freeze_account(state: &Account, freeze: &FreezeAccount) -> Result<AccountEvent, Rejection> {
    let reason = text("reason", &freeze.reason, TEXT_MAX_CHARS)?;
    if state.status == Status::Frozen {
        return Err(Rejection::AlreadyFrozen);
    }
    Ok(AccountEvent::AccountFrozen(AccountFrozen { reason }))
}

fn unfreeze_account(state: &Account) -> Result<AccountEvent, Rejection> {
    if state.status != Status::Frozen {
        return Err(Rejection::NotFrozen);
    }
    Ok(AccountEvent::AccountUnfrozen(AccountUnfrozen {}))
}

fn close_account(state: &Account) -> Result<AccountEvent, Rejection> {
    if state.status == Status::Frozen {
        return Err(Rejection::AccountFrozen);
    }
    if state.balance_minor != 0 {
        return Err(Rejection::BalanceNotZero {
            balance_minor: state.balance_minor,
        });
    }
    Ok(AccountEvent::AccountClosed(AccountClosed {}))
}

fn report_fraud(state: &Account, report: &ReportFraud) -> Result<AccountEvent, Rejection> {
    let reason = text("reason", &report.reason, TEXT_MAX_CHARS)?;
    let payment_event_id = report.payment_event_id;
    if report.payment != PaymentLookup::CardPayment {
        return Err(Rejection::PaymentNotFound { payment_event_id });
    }
    if state.reported.contains(&payment_event_id) {
        return Err(Rejection::AlreadyReported { payment_event_id });
    }
    Ok(AccountEvent::PaymentReportedFraudulent(
        PaymentReportedFraudulent {
            payment_event_id,
            reason,
        },
    ))
}

/// Whether `balance` can pay `amount` without going below zero (overflow-checked).
fn covers(balance: MinorUnits, amount: MinorUnits) -> bool {
    balance
        .checked_sub(amount)
        .is_some_and(|remaining| remaining >= 0)
}

fn amount(amount_minor: MinorUnits) -> Result<MinorUnits, Rejection> {
    if (1..=MAX_AMOUNT_MINOR).contains(&amount_minor) {
        Ok(amount_minor)
    } else {
        Err(Rejection::InvalidAmount { amount_minor })
    }
}

/// A required free text, trimmed.
fn text(field: &'static str, value: &str, max_chars: usize) -> Result<String, Rejection> {
    let invalid = |reason| Rejection::InvalidField { field, reason };
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid("must not be blank"));
    }
    if value.chars().count() > max_chars {
        return Err(invalid("is too long"));
    }
    Ok(value.to_owned())
}

/// A required single-line text, trimmed, without control characters.
fn line(field: &'static str, value: &str, max_chars: usize) -> Result<String, Rejection> {
    let value = text(field, value, max_chars)?;
    if value.chars().any(char::is_control) {
        return Err(Rejection::InvalidField {
            field,
            reason: "must not contain control characters",
        });
    }
    Ok(value)
}

fn email(value: &str) -> Result<String, Rejection> {
    let value = line("email", value, EMAIL_MAX_CHARS)?;
    let well_formed = value
        .rsplit_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !value.chars().any(char::is_whitespace);
    if !well_formed {
        return Err(Rejection::InvalidField {
            field: "email",
            reason: "must be an email address (local@domain)",
        });
    }
    Ok(value)
}

/// An optional description: blank is none.
fn description(value: Option<&str>) -> Result<Option<String>, Rejection> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(value) if value.chars().count() > TEXT_MAX_CHARS => Err(Rejection::InvalidField {
            field: "description",
            reason: "is too long",
        }),
        Some(value) => Ok(Some(value.to_owned())),
    }
}

fn merchant_category(value: &str) -> Result<String, Rejection> {
    if value.len() == 4 && value.bytes().all(|b| b.is_ascii_digit()) {
        Ok(value.to_owned())
    } else {
        Err(Rejection::InvalidField {
            field: "merchant_category",
            reason: "must be a four-digit merchant category code",
        })
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_in_its_own_format_only() {
        let state = Account {
            version: 7,
            balance_minor: 1_234,
            ..Default::default()
        };
        let document = state.to_snapshot().expect("serialises");
        assert_eq!(document["format"], Account::SNAPSHOT_VERSION);
        assert_eq!(Account::from_snapshot(document.clone()), Ok(state.clone()));

        let mut other = document;
        other["format"] = serde_json::json!(Account::SNAPSHOT_VERSION + 1);
        assert!(matches!(
            Account::from_snapshot(other),
            Err(SnapshotError::OtherFormat { .. })
        ));
        // A bare state (the layout before formats were recorded) is never read.
        let bare = serde_json::to_value(&state).expect("serialises");
        assert!(Account::from_snapshot(bare).is_err());
    }
}

#[cfg(test)]
mod tests {
    use prism_events::event::CardChannel;
    use prism_events::AccountId;
    use uuid::Uuid;

    use super::*;

    // ---- given / when / then -------------------------------------------------------------

    fn at(rfc3339: &str) -> DateTime<Utc> {
        rfc3339.parse().expect("an RFC 3339 timestamp")
    }

    /// The default moment of a scenario: mid-day, far from a UTC midnight.
    fn noon() -> DateTime<Utc> {
        at("2025-03-14T12:00:00Z")
    }

    /// A history of stored events and the time the next command is decided at.
    struct Scenario {
        account_id: AccountId,
        history: Vec<Envelope>,
        now: DateTime<Utc>,
    }

    fn given(events: impl IntoIterator<Item = AccountEvent>) -> Scenario {
        let mut scenario = Scenario {
            account_id: AccountId::generate(),
            history: Vec::new(),
            now: noon(),
        };
        for event in events {
            scenario.store(noon(), event);
        }
        scenario
    }

    fn given_nothing() -> Scenario {
        given([])
    }

    /// An open EUR account (default limit 500 000) with `balance` deposited.
    fn given_open_with(balance: MinorUnits) -> Scenario {
        let mut events = vec![opened(None)];
        if balance > 0 {
            events.push(deposited(balance));
        }
        given(events)
    }

    impl Scenario {
        fn store(&mut self, time: DateTime<Utc>, event: AccountEvent) {
            let version = self.history.len() as u64 + 1;
            self.history.push(Envelope {
                id: Uuid::now_v7(),
                source: "/prism/command".into(),
                account_id: self.account_id,
                time,
                account_version: version,
                correlation_id: None,
                causation_id: None,
                event,
            });
        }

        /// Adds an event stored at a given time.
        fn and_at(mut self, time: &str, event: AccountEvent) -> Self {
            self.store(at(time), event);
            self
        }

        fn state(&self) -> Account {
            replay(&self.history)
        }

        /// Decides at the scenario's time (noon unless [`Self::when_at`]).
        fn when(&mut self, command: Command) -> Then<'_> {
            let result = decide(&self.state(), &command, self.now);
            Then {
                scenario: self,
                result,
            }
        }

        fn when_at(&mut self, now: &str, command: Command) -> Then<'_> {
            self.now = at(now);
            self.when(command)
        }
    }

    struct Then<'a> {
        scenario: &'a mut Scenario,
        result: Result<Vec<AccountEvent>, Rejection>,
    }

    impl Then<'_> {
        /// Asserts the events, stores them at the decision time, returns the new state.
        fn then(self, expected: impl IntoIterator<Item = AccountEvent>) -> Account {
            let events = self.result.expect("the command should be accepted");
            assert_eq!(events, expected.into_iter().collect::<Vec<_>>());
            let now = self.scenario.now;
            for event in events {
                self.scenario.store(now, event);
            }
            self.scenario.state()
        }

        /// Asserts a rejection by its code and returns it.
        fn then_rejected(self, code: &str) -> Rejection {
            let rejection = self.result.expect_err("the command should be rejected");
            assert_eq!(rejection.code(), code, "{rejection}");
            rejection
        }
    }

    // ---- events and commands ---------------------------------------------------------------

    fn eur() -> Currency {
        Currency::parse("EUR").expect("EUR")
    }

    fn pt() -> Country {
        Country::parse("PT").expect("PT")
    }

    fn opened(limit: Option<MinorUnits>) -> AccountEvent {
        AccountEvent::AccountOpened(AccountOpened {
            holder_name: "Ada Lovelace".into(),
            email: "ada@example.org".into(),
            country: pt(),
            currency: eur(),
            daily_withdrawal_limit_minor: limit.unwrap_or(500_000),
        })
    }

    fn deposited(amount_minor: MinorUnits) -> AccountEvent {
        AccountEvent::MoneyDeposited(MoneyDeposited {
            amount_minor,
            description: None,
        })
    }

    fn withdrawn(amount_minor: MinorUnits) -> AccountEvent {
        AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
            amount_minor,
            description: None,
            channel: WithdrawalChannel::Atm,
        })
    }

    fn frozen() -> AccountEvent {
        AccountEvent::AccountFrozen(AccountFrozen {
            reason: "card reported stolen".into(),
        })
    }

    fn unfrozen() -> AccountEvent {
        AccountEvent::AccountUnfrozen(AccountUnfrozen {})
    }

    fn closed() -> AccountEvent {
        AccountEvent::AccountClosed(AccountClosed {})
    }

    fn card_payment(amount_minor: MinorUnits) -> CardPayment {
        CardPayment {
            amount_minor,
            merchant_name: "Café Rosa".into(),
            merchant_category: "5814".into(),
            merchant_country: pt(),
            channel: CardChannel::Pos,
        }
    }

    fn approved(amount_minor: MinorUnits) -> AccountEvent {
        AccountEvent::CardPaymentApproved(CardPaymentApproved {
            payment: card_payment(amount_minor),
        })
    }

    fn declined(amount_minor: MinorUnits, decline_reason: DeclineReason) -> AccountEvent {
        AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
            payment: card_payment(amount_minor),
            decline_reason,
        })
    }

    fn open_with(
        currency: &str,
        limit: Option<MinorUnits>,
        holder_name: &str,
        email: &str,
    ) -> Command {
        Command::Open(OpenAccount {
            holder_name: holder_name.into(),
            email: email.into(),
            country: pt(),
            currency: Currency::parse(currency).expect("a currency"),
            daily_withdrawal_limit_minor: limit,
        })
    }

    fn open() -> Command {
        open_with("EUR", None, "Ada Lovelace", "ada@example.org")
    }

    fn deposit(amount_minor: MinorUnits) -> Command {
        Command::Deposit(DepositMoney {
            amount_minor,
            description: None,
        })
    }

    fn withdraw(amount_minor: MinorUnits) -> Command {
        Command::Withdraw(WithdrawMoney {
            amount_minor,
            description: None,
            channel: WithdrawalChannel::Atm,
        })
    }

    fn pay(amount_minor: MinorUnits) -> Command {
        Command::PayByCard(PayByCard {
            payment: card_payment(amount_minor),
        })
    }

    fn freeze() -> Command {
        Command::Freeze(FreezeAccount {
            reason: "card reported stolen".into(),
        })
    }

    /// A report of `payment`, as the service resolves it (`found`: a card payment of the
    /// account).
    fn report(payment: Uuid, found: bool) -> Command {
        Command::ReportFraud(ReportFraud {
            payment_event_id: payment,
            reason: "  Cardholder does not recognise it  ".into(),
            payment: if found {
                PaymentLookup::CardPayment
            } else {
                PaymentLookup::NotAPayment
            },
        })
    }

    fn reported(payment: Uuid) -> AccountEvent {
        prism_events::testing::reported_fraudulent(payment, "Cardholder does not recognise it")
    }

    /// A report of `payment` (found) with `reason`.
    fn report_with(payment: Uuid, reason: &str) -> Command {
        Command::ReportFraud(ReportFraud {
            payment_event_id: payment,
            reason: reason.into(),
            payment: PaymentLookup::CardPayment,
        })
    }

    // ---- fraud reports ---------------------------------------------------------------------

    #[test]
    fn a_card_payment_is_reported_once_with_its_reason_trimmed() {
        let mut scenario = given_open_with(10_000).and_at("2026-05-01T10:00:00Z", approved(500));
        let payment = scenario.history[2].id;
        let state = scenario
            .when(report(payment, true))
            .then([reported(payment)]);
        assert!(state.reported(payment));
        assert_eq!(state.balance_minor(), 9_500, "a report moves no money");
        scenario
            .when(report(payment, true))
            .then_rejected("payment_already_reported");
    }

    #[test]
    fn a_declined_payment_can_be_reported_and_anything_else_is_not_found() {
        let mut scenario = given_open_with(0).and_at(
            "2026-05-01T10:00:00Z",
            declined(500, DeclineReason::InsufficientFunds),
        );
        let payment = scenario.history[1].id;
        scenario
            .when(report(payment, true))
            .then([reported(payment)]);
        // The service found no card payment under that id (a deposit's, another account's).
        scenario
            .when(report(Uuid::now_v7(), false))
            .then_rejected("payment_not_found");
    }

    #[test]
    fn reports_are_taken_on_frozen_and_closed_accounts_but_not_unopened_ones() {
        let mut frozen_account = given_open_with(1_000)
            .and_at("2026-05-01T10:00:00Z", approved(1_000))
            .and_at("2026-05-01T11:00:00Z", frozen());
        let payment = frozen_account.history[2].id;
        frozen_account
            .when(report(payment, true))
            .then([reported(payment)]);
        let mut closed_account = given_open_with(1_000)
            .and_at("2026-05-01T10:00:00Z", approved(1_000))
            .and_at("2026-05-02T10:00:00Z", closed());
        let payment = closed_account.history[2].id;
        closed_account
            .when(report(payment, true))
            .then([reported(payment)]);
        given_nothing()
            .when(report(Uuid::now_v7(), true))
            .then_rejected("account_not_found");
    }

    #[test]
    fn a_report_needs_a_reason() {
        let mut scenario = given_open_with(1_000).and_at("2026-05-01T10:00:00Z", approved(10));
        let payment = scenario.history[2].id;
        let Command::ReportFraud(mut blank) = report(payment, true) else {
            unreachable!("a report")
        };
        blank.reason = "   ".into();
        let rejection = scenario
            .when(Command::ReportFraud(blank))
            .then_rejected("invalid_field");
        assert_eq!(rejection.field(), Some("reason"));
    }

    #[test]
    fn a_report_on_a_frozen_or_closed_account_leaves_its_status_and_balance_alone() {
        let mut frozen_account = given_open_with(1_000)
            .and_at("2026-05-01T10:00:00Z", approved(400))
            .and_at("2026-05-01T11:00:00Z", frozen());
        let payment = frozen_account.history[2].id;
        let state = frozen_account
            .when(report(payment, true))
            .then([reported(payment)]);
        assert_eq!(state.status(), Status::Frozen);
        assert_eq!(state.freeze_reason(), Some("card reported stolen"));
        assert_eq!(state.balance_minor(), 600);
        assert_eq!(state.version(), 5, "the report is the next version");

        let mut closed_account = given_open_with(1_000)
            .and_at("2026-05-01T10:00:00Z", approved(1_000))
            .and_at("2026-05-02T10:00:00Z", closed());
        let payment = closed_account.history[2].id;
        let state = closed_account
            .when(report(payment, true))
            .then([reported(payment)]);
        assert_eq!(state.status(), Status::Closed);
        assert_eq!(state.version(), 5);
        // Still closed for everything else.
        closed_account
            .when(deposit(1))
            .then_rejected("account_closed");
    }

    #[test]
    fn a_second_report_is_refused_on_a_closed_account_too() {
        let mut scenario = given_open_with(1_000)
            .and_at("2026-05-01T10:00:00Z", approved(1_000))
            .and_at("2026-05-02T10:00:00Z", closed());
        let payment = scenario.history[2].id;
        scenario
            .when(report(payment, true))
            .then([reported(payment)]);
        let rejection = scenario
            .when(report(payment, true))
            .then_rejected("payment_already_reported");
        assert_eq!(
            rejection,
            Rejection::AlreadyReported {
                payment_event_id: payment
            }
        );
        assert_eq!(rejection.http_status(), 409);
    }

    #[test]
    fn each_payment_is_reported_on_its_own() {
        let mut scenario = given_open_with(1_000)
            .and_at("2026-05-01T10:00:00Z", approved(100))
            .and_at("2026-05-01T10:05:00Z", approved(100));
        let (first, second) = (scenario.history[2].id, scenario.history[3].id);
        scenario.when(report(first, true)).then([reported(first)]);
        let state = scenario.when(report(second, true)).then([reported(second)]);
        assert!(state.reported(first) && state.reported(second));
        assert!(!state.reported(scenario.history[1].id));
    }

    #[test]
    fn a_payment_the_service_did_not_find_is_not_found_whatever_else_holds() {
        let mut scenario = given_open_with(1_000);
        // The deposit's own id: an event of the account, but not a card payment.
        let deposit_id = scenario.history[1].id;
        let rejection = scenario
            .when(report(deposit_id, false))
            .then_rejected("payment_not_found");
        assert_eq!(
            rejection,
            Rejection::PaymentNotFound {
                payment_event_id: deposit_id
            }
        );
        assert_eq!(rejection.http_status(), 404);
        assert!(!rejection.is_not_found(), "the account exists");
        let mut closed_account = given([opened(None), closed()]);
        closed_account
            .when(report(Uuid::now_v7(), false))
            .then_rejected("payment_not_found");
    }

    #[test]
    fn on_an_account_never_opened_a_report_is_account_not_found_whatever_the_lookup() {
        for found in [true, false] {
            let rejection = given_nothing()
                .when(report(Uuid::now_v7(), found))
                .then_rejected("account_not_found");
            assert_eq!(rejection.http_status(), 404);
        }
    }

    #[test]
    fn a_report_reason_is_trimmed_and_at_most_500_chars() {
        let mut scenario = given_open_with(1_000).and_at("2026-05-01T10:00:00Z", approved(10));
        let payment = scenario.history[2].id;
        let too_long = format!("  {}  ", "é".repeat(501));
        let rejection = scenario
            .when(report_with(payment, &too_long))
            .then_rejected("invalid_field");
        assert_eq!(rejection.field(), Some("reason"));
        assert_eq!(rejection.http_status(), 400);
        let longest = "é".repeat(500);
        scenario
            .when(report_with(payment, &format!("\n {longest} \t")))
            .then([prism_events::testing::reported_fraudulent(
                payment, &longest,
            )]);
    }

    #[test]
    fn a_bad_reason_is_reported_before_the_payment_and_the_duplicate() {
        let mut scenario = given_open_with(1_000).and_at("2026-05-01T10:00:00Z", approved(10));
        let payment = scenario.history[2].id;
        scenario
            .when(report(payment, true))
            .then([reported(payment)]);
        for found in [true, false] {
            let Command::ReportFraud(mut blank) = report(payment, found) else {
                unreachable!("a report")
            };
            blank.reason = String::new();
            let rejection = scenario
                .when(Command::ReportFraud(blank))
                .then_rejected("invalid_field");
            assert_eq!(rejection.field(), Some("reason"));
        }
    }

    #[test]
    fn replay_folds_reports_into_the_reported_set() {
        let mut scenario = given_open_with(1_000).and_at("2026-05-01T10:00:00Z", approved(10));
        let payment = scenario.history[2].id;
        let decided = scenario
            .when(report(payment, true))
            .then([reported(payment)]);
        let replayed = replay(&scenario.history);
        assert_eq!(replayed, decided);
        assert!(replayed.reported(payment));
        assert_eq!(replayed.version(), 4);
        assert_eq!(replayed.balance_minor(), 990);
    }

    #[test]
    fn the_reported_payments_survive_a_snapshot() {
        let mut scenario = given_open_with(1_000).and_at("2026-05-01T10:00:00Z", approved(10));
        let payment = scenario.history[2].id;
        let state = scenario
            .when(report(payment, true))
            .then([reported(payment)]);
        let document = state.to_snapshot().expect("serialises");
        assert_eq!(document["format"], Account::SNAPSHOT_VERSION);
        assert_eq!(
            document["account"]["reported"],
            serde_json::json!([payment.to_string()])
        );
        let back = Account::from_snapshot(document.clone()).expect("reads back");
        assert!(back.reported(payment));
        assert_eq!(back, state);

        // A snapshot of the format before reports (no `reported` set) is not read as one
        // without reports: it is refused, and the account replayed from its events.
        let mut before_reports = document;
        before_reports["format"] = serde_json::json!(1);
        if let Some(account) = before_reports["account"].as_object_mut() {
            account.remove("reported");
        }
        assert_eq!(
            Account::from_snapshot(before_reports.clone()),
            Err(SnapshotError::OtherFormat {
                found: 1,
                expected: Account::SNAPSHOT_VERSION
            })
        );
        // Nor is that shape under today's format number.
        before_reports["format"] = serde_json::json!(Account::SNAPSHOT_VERSION);
        assert!(matches!(
            Account::from_snapshot(before_reports),
            Err(SnapshotError::Unreadable(_))
        ));
    }

    fn every_command() -> Vec<Command> {
        vec![
            open(),
            deposit(100),
            withdraw(100),
            pay(100),
            freeze(),
            Command::Unfreeze,
            Command::Close,
        ]
    }

    // ---- opening ---------------------------------------------------------------------------

    #[test]
    fn opening_a_new_account_records_who_and_where_with_the_given_limit() {
        let state = given_nothing()
            .when(open_with(
                "EUR",
                Some(20_000),
                "Ada Lovelace",
                "ada@example.org",
            ))
            .then([opened(Some(20_000))]);
        assert_eq!(state.status(), Status::Open);
        assert_eq!(state.version(), 1);
        assert_eq!(state.balance_minor(), 0);
        assert_eq!(state.holder_name(), "Ada Lovelace");
        assert_eq!(state.email(), "ada@example.org");
        assert_eq!(state.country(), Some(pt()));
        assert_eq!(state.currency(), Some(eur()));
        assert_eq!(state.daily_withdrawal_limit_minor(), 20_000);
        assert_eq!(state.opened_at(), Some(noon()));
        assert_eq!(state.updated_at(), Some(noon()));
    }

    #[test]
    fn opening_without_a_limit_takes_five_thousand_major_units_of_the_currency() {
        for (currency, limit) in [("EUR", 500_000), ("JPY", 5_000), ("KWD", 5_000_000)] {
            let currency = Currency::parse(currency).expect("a currency");
            assert_eq!(default_daily_withdrawal_limit(currency), limit);
        }
        let state = given_nothing().when(open()).then([opened(Some(500_000))]);
        assert_eq!(state.daily_withdrawal_limit_minor(), 500_000);
    }

    #[test]
    fn opening_trims_the_holder_name_and_email() {
        given_nothing()
            .when(open_with(
                "EUR",
                None,
                "  Ada Lovelace ",
                " ada@example.org\t",
            ))
            .then([opened(None)]);
    }

    #[test]
    fn a_limit_of_zero_and_of_the_maximum_are_accepted() {
        for limit in [0, MAX_AMOUNT_MINOR] {
            given_nothing()
                .when(open_with(
                    "EUR",
                    Some(limit),
                    "Ada Lovelace",
                    "ada@example.org",
                ))
                .then([opened(Some(limit))]);
        }
    }

    #[test]
    fn a_negative_limit_or_one_above_the_maximum_is_rejected() {
        for limit in [-1, MAX_AMOUNT_MINOR + 1, i64::MIN, i64::MAX] {
            let rejection = given_nothing()
                .when(open_with(
                    "EUR",
                    Some(limit),
                    "Ada Lovelace",
                    "ada@example.org",
                ))
                .then_rejected("invalid_limit");
            assert_eq!(rejection.field(), Some("daily_withdrawal_limit_minor"));
            assert!(rejection.is_invalid_input());
        }
    }

    #[test]
    fn a_blank_holder_name_or_a_malformed_email_is_rejected_naming_the_field() {
        let cases = [
            ("  ", "ada@example.org", "holder_name"),
            ("Ada\u{0}Lovelace", "ada@example.org", "holder_name"),
            (&"A".repeat(201), "ada@example.org", "holder_name"),
            ("Ada", "", "email"),
            ("Ada", "ada.example.org", "email"),
            ("Ada", "@example.org", "email"),
            ("Ada", "ada@", "email"),
            ("Ada", "ada lovelace@example.org", "email"),
        ];
        for (holder_name, email, field) in cases {
            let rejection = given_nothing()
                .when(open_with("EUR", None, holder_name, email))
                .then_rejected("invalid_field");
            assert_eq!(rejection.field(), Some(field), "{holder_name:?} {email:?}");
        }
    }

    #[test]
    fn opening_an_open_or_frozen_account_again_is_rejected() {
        given([opened(None)])
            .when(open())
            .then_rejected("already_open");
        given([opened(None), frozen()])
            .when(open())
            .then_rejected("already_open");
    }

    // ---- existence -------------------------------------------------------------------------

    #[test]
    fn every_command_but_open_on_an_account_never_opened_is_not_found() {
        for command in every_command().into_iter().skip(1) {
            let rejection = given_nothing()
                .when(command.clone())
                .then_rejected("account_not_found");
            assert!(rejection.is_not_found(), "{}", command.name());
        }
    }

    #[test]
    fn every_command_on_a_closed_account_is_rejected_as_closed() {
        for command in every_command() {
            let rejection = given([opened(None), closed()])
                .when(command.clone())
                .then_rejected("account_closed");
            assert!(!rejection.is_not_found(), "{}", command.name());
        }
    }

    #[test]
    fn a_malformed_command_on_an_account_never_opened_is_still_not_found() {
        given_nothing()
            .when(deposit(-5))
            .then_rejected("account_not_found");
    }

    // ---- amounts ---------------------------------------------------------------------------

    #[test]
    fn a_zero_or_negative_amount_is_rejected() {
        for amount in [0, -1, i64::MIN] {
            for command in [deposit(amount), withdraw(amount), pay(amount)] {
                let rejection = given_open_with(1_000)
                    .when(command)
                    .then_rejected("invalid_amount");
                assert_eq!(
                    rejection,
                    Rejection::InvalidAmount {
                        amount_minor: amount
                    }
                );
                assert!(rejection.is_invalid_input());
            }
        }
    }

    #[test]
    fn the_maximum_amount_is_accepted_and_one_more_is_rejected() {
        let mut scenario = given_open_with(0);
        let state = scenario
            .when(deposit(MAX_AMOUNT_MINOR))
            .then([deposited(MAX_AMOUNT_MINOR)]);
        assert_eq!(state.balance_minor(), MAX_AMOUNT_MINOR);
        scenario
            .when(deposit(MAX_AMOUNT_MINOR + 1))
            .then_rejected("invalid_amount");
        scenario
            .when(withdraw(MAX_AMOUNT_MINOR + 1))
            .then_rejected("invalid_amount");
    }

    #[test]
    fn the_message_of_an_invalid_amount_states_the_bounds() {
        let rejection = given_open_with(0)
            .when(deposit(0))
            .then_rejected("invalid_amount");
        assert_eq!(
            rejection.to_string(),
            "amount_minor must be between 1 and 1000000000000 minor units, got 0"
        );
    }

    // ---- deposits --------------------------------------------------------------------------

    #[test]
    fn depositing_adds_to_the_balance_and_keeps_the_description() {
        let state = given_open_with(1_000)
            .when(Command::Deposit(DepositMoney {
                amount_minor: 250,
                description: Some(" salary ".into()),
            }))
            .then([AccountEvent::MoneyDeposited(MoneyDeposited {
                amount_minor: 250,
                description: Some("salary".into()),
            })]);
        assert_eq!(state.balance_minor(), 1_250);
        assert_eq!(state.version(), 3);
    }

    #[test]
    fn a_blank_description_is_stored_as_none_and_a_long_one_is_rejected() {
        given_open_with(0)
            .when(Command::Deposit(DepositMoney {
                amount_minor: 1,
                description: Some("   ".into()),
            }))
            .then([deposited(1)]);
        let rejection = given_open_with(0)
            .when(Command::Deposit(DepositMoney {
                amount_minor: 1,
                description: Some("x".repeat(501)),
            }))
            .then_rejected("invalid_field");
        assert_eq!(rejection.field(), Some("description"));
    }

    #[test]
    fn a_deposit_that_would_overflow_the_balance_is_rejected() {
        // Only a forged history gets here (10^12 per deposit), but the rule must hold anyway.
        let mut scenario = given([opened(None), deposited(i64::MAX - 5)]);
        scenario.when(deposit(6)).then_rejected("balance_overflow");
        let state = scenario.when(deposit(5)).then([deposited(5)]);
        assert_eq!(state.balance_minor(), i64::MAX);
        scenario.when(deposit(1)).then_rejected("balance_overflow");
    }

    // ---- withdrawals -----------------------------------------------------------------------

    #[test]
    fn withdrawing_the_exact_balance_is_allowed() {
        let state = given_open_with(10_000)
            .when(withdraw(10_000))
            .then([withdrawn(10_000)]);
        assert_eq!(state.balance_minor(), 0);
        assert_eq!(state.withdrawn_on(noon().date_naive()), 10_000);
    }

    #[test]
    fn withdrawing_more_than_the_balance_is_rejected() {
        let rejection = given_open_with(10_000)
            .when(withdraw(10_001))
            .then_rejected("insufficient_funds");
        assert_eq!(
            rejection,
            Rejection::InsufficientFunds {
                balance_minor: 10_000,
                requested_minor: 10_001
            }
        );
        assert!(!rejection.is_invalid_input());
    }

    #[test]
    fn withdrawing_from_an_empty_account_is_rejected() {
        given_open_with(0)
            .when(withdraw(1))
            .then_rejected("insufficient_funds");
    }

    #[test]
    fn withdrawals_may_reach_the_daily_limit_exactly() {
        let mut scenario = given([opened(Some(1_000)), deposited(5_000)]);
        scenario.when(withdraw(600)).then([withdrawn(600)]);
        let state = scenario.when(withdraw(400)).then([withdrawn(400)]);
        assert_eq!(state.withdrawn_on(noon().date_naive()), 1_000);
        assert_eq!(state.balance_minor(), 4_000);
    }

    #[test]
    fn one_minor_unit_over_the_daily_limit_is_rejected() {
        let mut scenario = given([opened(Some(1_000)), deposited(5_000)]);
        scenario.when(withdraw(600)).then([withdrawn(600)]);
        let rejection = scenario
            .when(withdraw(401))
            .then_rejected("daily_limit_exceeded");
        assert_eq!(
            rejection,
            Rejection::DailyLimitExceeded {
                limit_minor: 1_000,
                withdrawn_today_minor: 600,
                requested_minor: 401
            }
        );
        given([opened(Some(1_000)), deposited(5_000)])
            .when(withdraw(1_001))
            .then_rejected("daily_limit_exceeded");
    }

    #[test]
    fn the_daily_limit_resets_at_the_next_utc_midnight() {
        let mut scenario = given([opened(Some(1_000)), deposited(5_000)]);
        scenario
            .when_at("2025-03-14T23:59:59Z", withdraw(1_000))
            .then([withdrawn(1_000)]);
        scenario
            .when_at("2025-03-14T23:59:59Z", withdraw(1))
            .then_rejected("daily_limit_exceeded");
        let state = scenario
            .when_at("2025-03-15T00:00:00Z", withdraw(1_000))
            .then([withdrawn(1_000)]);
        let day = |s: &str| at(s).date_naive();
        assert_eq!(state.withdrawn_on(day("2025-03-15T00:00:00Z")), 1_000);
        // Bounded: only the latest day is kept.
        assert_eq!(state.withdrawn_on(day("2025-03-14T12:00:00Z")), 0);
        scenario
            .when_at("2025-03-15T00:00:00Z", withdraw(1))
            .then_rejected("daily_limit_exceeded");
    }

    #[test]
    fn the_day_is_utc_whatever_the_offset_of_the_time() {
        let mut scenario = given([opened(Some(1_000)), deposited(5_000)]).and_at(
            // 23:30 at UTC+1 is 22:30 UTC: still the 14th in UTC.
            "2025-03-14T23:30:00+01:00",
            withdrawn(1_000),
        );
        scenario
            .when_at("2025-03-14T23:59:59Z", withdraw(1))
            .then_rejected("daily_limit_exceeded");
    }

    #[test]
    fn a_withdrawal_stored_for_an_earlier_day_does_not_reset_the_latest_day() {
        // Two instances with skewed clocks: a later-stored event carries an earlier day.
        let state = given([opened(Some(1_000)), deposited(5_000)])
            .and_at("2025-03-15T08:00:00Z", withdrawn(700))
            .and_at("2025-03-14T23:59:58Z", withdrawn(100))
            .state();
        assert_eq!(
            state.withdrawn_on(at("2025-03-15T09:00:00Z").date_naive()),
            700
        );
        assert_eq!(state.balance_minor(), 4_200);
    }

    #[test]
    fn a_daily_limit_of_zero_blocks_every_withdrawal() {
        given([opened(Some(0)), deposited(5_000)])
            .when(withdraw(1))
            .then_rejected("daily_limit_exceeded");
    }

    #[test]
    fn card_payments_do_not_count_towards_the_daily_withdrawal_limit() {
        let mut scenario = given([opened(Some(1_000)), deposited(5_000)]);
        scenario.when(pay(900)).then([approved(900)]);
        scenario.when(withdraw(1_000)).then([withdrawn(1_000)]);
    }

    #[test]
    fn insufficient_funds_is_reported_before_the_daily_limit() {
        given([opened(Some(1_000)), deposited(500)])
            .when(withdraw(2_000))
            .then_rejected("insufficient_funds");
    }

    #[test]
    fn a_withdrawal_keeps_its_channel_and_description() {
        given_open_with(1_000)
            .when(Command::Withdraw(WithdrawMoney {
                amount_minor: 100,
                description: Some("rent".into()),
                channel: WithdrawalChannel::Branch,
            }))
            .then([AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
                amount_minor: 100,
                description: Some("rent".into()),
                channel: WithdrawalChannel::Branch,
            })]);
    }

    // ---- freezing --------------------------------------------------------------------------

    #[test]
    fn freezing_an_open_account_records_the_reason() {
        let state = given_open_with(0).when(freeze()).then([frozen()]);
        assert_eq!(state.status(), Status::Frozen);
        assert_eq!(state.freeze_reason(), Some("card reported stolen"));
    }

    #[test]
    fn freezing_a_frozen_account_is_rejected() {
        given([opened(None), frozen()])
            .when(freeze())
            .then_rejected("already_frozen");
    }

    #[test]
    fn a_blank_freeze_reason_is_rejected() {
        let rejection = given_open_with(0)
            .when(Command::Freeze(FreezeAccount {
                reason: " \n ".into(),
            }))
            .then_rejected("invalid_field");
        assert_eq!(rejection.field(), Some("reason"));
    }

    #[test]
    fn a_frozen_account_takes_deposits() {
        let state = given([opened(None), frozen()])
            .when(deposit(700))
            .then([deposited(700)]);
        assert_eq!(state.balance_minor(), 700);
        assert_eq!(state.status(), Status::Frozen);
    }

    #[test]
    fn withdrawing_from_a_frozen_account_is_rejected() {
        given([opened(None), deposited(5_000), frozen()])
            .when(withdraw(100))
            .then_rejected("account_frozen");
    }

    #[test]
    fn unfreezing_an_account_that_is_not_frozen_is_rejected() {
        given_open_with(0)
            .when(Command::Unfreeze)
            .then_rejected("not_frozen");
    }

    #[test]
    fn unfreezing_a_frozen_account_allows_withdrawals_again() {
        let mut scenario = given([opened(None), deposited(5_000), frozen()]);
        let state = scenario.when(Command::Unfreeze).then([unfrozen()]);
        assert_eq!(state.status(), Status::Open);
        assert_eq!(state.freeze_reason(), None);
        scenario.when(withdraw(100)).then([withdrawn(100)]);
    }

    // ---- card payments ---------------------------------------------------------------------

    #[test]
    fn a_good_card_payment_is_approved_and_reduces_the_balance() {
        let state = given_open_with(5_000)
            .when(pay(1_250))
            .then([approved(1_250)]);
        assert_eq!(state.balance_minor(), 3_750);
    }

    #[test]
    fn a_card_payment_of_exactly_the_balance_is_approved() {
        let state = given_open_with(5_000)
            .when(pay(5_000))
            .then([approved(5_000)]);
        assert_eq!(state.balance_minor(), 0);
    }

    #[test]
    fn a_card_payment_over_the_balance_is_declined_for_insufficient_funds() {
        let state = given_open_with(5_000)
            .when(pay(5_001))
            .then([declined(5_001, DeclineReason::InsufficientFunds)]);
        assert_eq!(state.balance_minor(), 5_000);
        assert_eq!(state.version(), 3, "a decline is a stored fact");
    }

    #[test]
    fn a_card_payment_on_a_frozen_account_is_declined() {
        let state = given([opened(None), deposited(5_000), frozen()])
            .when(pay(100))
            .then([declined(100, DeclineReason::AccountFrozen)]);
        assert_eq!(state.balance_minor(), 5_000);
    }

    #[test]
    fn a_card_payment_above_the_maximum_is_declined_as_out_of_range() {
        let mut scenario = given([
            opened(None),
            deposited(MAX_AMOUNT_MINOR),
            deposited(MAX_AMOUNT_MINOR),
        ]);
        scenario.when(pay(MAX_AMOUNT_MINOR + 1)).then([declined(
            MAX_AMOUNT_MINOR + 1,
            DeclineReason::AmountOutOfRange,
        )]);
        let state = scenario
            .when(pay(MAX_AMOUNT_MINOR))
            .then([approved(MAX_AMOUNT_MINOR)]);
        assert_eq!(state.balance_minor(), MAX_AMOUNT_MINOR);
    }

    #[test]
    fn a_frozen_account_declines_as_frozen_before_any_other_reason() {
        given([opened(None), frozen()])
            .when(pay(i64::MAX))
            .then([declined(i64::MAX, DeclineReason::AccountFrozen)]);
    }

    #[test]
    fn an_out_of_range_payment_declines_as_out_of_range_before_insufficient_funds() {
        given_open_with(0)
            .when(pay(MAX_AMOUNT_MINOR + 1))
            .then([declined(
                MAX_AMOUNT_MINOR + 1,
                DeclineReason::AmountOutOfRange,
            )]);
    }

    #[test]
    fn a_card_payment_of_zero_or_less_is_rejected_not_declined() {
        given([opened(None), frozen()])
            .when(pay(0))
            .then_rejected("invalid_amount");
    }

    #[test]
    fn a_card_payment_with_a_malformed_merchant_is_rejected() {
        for (name, category, field) in [
            ("Café Rosa", "581", "merchant_category"),
            ("Café Rosa", "58a4", "merchant_category"),
            ("Café Rosa", "58144", "merchant_category"),
            ("   ", "5814", "merchant_name"),
        ] {
            let mut payment = card_payment(100);
            payment.merchant_name = name.into();
            payment.merchant_category = category.into();
            let rejection = given_open_with(1_000)
                .when(Command::PayByCard(PayByCard { payment }))
                .then_rejected("invalid_field");
            assert_eq!(rejection.field(), Some(field));
        }
    }

    // ---- closing ---------------------------------------------------------------------------

    #[test]
    fn closing_an_account_with_a_zero_balance_closes_it() {
        let state = given([opened(None), deposited(100), withdrawn(100)])
            .when(Command::Close)
            .then([closed()]);
        assert_eq!(state.status(), Status::Closed);
        assert_eq!(state.version(), 4);
    }

    #[test]
    fn closing_an_account_with_a_non_zero_balance_is_rejected() {
        let rejection = given_open_with(1)
            .when(Command::Close)
            .then_rejected("balance_not_zero");
        assert_eq!(rejection, Rejection::BalanceNotZero { balance_minor: 1 });
    }

    #[test]
    fn closing_a_frozen_account_is_rejected_until_it_is_unfrozen() {
        let mut scenario = given([opened(None), frozen()]);
        scenario
            .when(Command::Close)
            .then_rejected("account_frozen");
        scenario.when(Command::Unfreeze).then([unfrozen()]);
        scenario.when(Command::Close).then([closed()]);
    }

    // ---- state, replay, snapshots ----------------------------------------------------------

    #[test]
    fn each_accepted_command_yields_exactly_one_event() {
        let state = replay(&given_open_with(5_000).history);
        for command in [deposit(1), withdraw(1), pay(1), pay(10_000), freeze()] {
            let events = decide(&state, &command, noon()).expect("accepted");
            assert_eq!(events.len(), 1, "{}", command.name());
        }
    }

    #[test]
    fn replay_reproduces_the_state_and_version_built_step_by_step() {
        let mut scenario = given_nothing();
        scenario.when(open()).then([opened(None)]);
        scenario.when(deposit(10_000)).then([deposited(10_000)]);
        scenario
            .when_at("2025-03-14T23:00:00Z", withdraw(3_000))
            .then([withdrawn(3_000)]);
        scenario.when(pay(1_000)).then([approved(1_000)]);
        scenario
            .when(pay(100_000))
            .then([declined(100_000, DeclineReason::InsufficientFunds)]);
        scenario.when(freeze()).then([frozen()]);
        scenario.when(deposit(500)).then([deposited(500)]);
        let last = scenario.when(Command::Unfreeze).then([unfrozen()]);

        let mut folded = Account::default();
        for envelope in &scenario.history {
            evolve(&mut folded, envelope);
        }
        let replayed = replay(&scenario.history);
        assert_eq!(replayed, folded);
        assert_eq!(replayed, last);
        assert_eq!(replayed.version(), 8);
        assert_eq!(replayed.balance_minor(), 6_500);
        assert_eq!(replayed.status(), Status::Open);
        assert_eq!(
            replayed.withdrawn_on(at("2025-03-14T23:00:00Z").date_naive()),
            3_000
        );
        assert_eq!(replayed.opened_at(), Some(noon()));
        assert_eq!(replayed.updated_at(), Some(at("2025-03-14T23:00:00Z")));
    }

    #[test]
    fn a_replay_of_nothing_is_an_unopened_account() {
        let state = replay([]);
        assert_eq!(state, Account::default());
        assert_eq!(state.status(), Status::Unopened);
        assert_eq!(state.version(), 0);
        assert_eq!(state.currency(), None);
        assert_eq!(state.opened_at(), None);
    }

    #[test]
    fn an_account_snapshot_round_trips_through_json() {
        let state = given([opened(Some(1_000)), deposited(5_000), frozen()])
            .and_at("2025-03-14T23:59:59Z", withdrawn(250))
            .state();
        let json = serde_json::to_value(&state).expect("serialise");
        assert_eq!(json["status"], "frozen");
        assert_eq!(json["balance_minor"], 4_750);
        assert_eq!(json["currency"], "EUR");
        assert_eq!(json["country"], "PT");
        assert_eq!(json["latest_withdrawals"]["day"], "2025-03-14");
        assert_eq!(json["latest_withdrawals"]["withdrawn_minor"], 250);
        let back: Account = serde_json::from_value(json).expect("deserialise");
        assert_eq!(back, state);

        let empty = serde_json::to_string(&Account::default()).expect("serialise");
        let back: Account = serde_json::from_str(&empty).expect("deserialise");
        assert_eq!(back, Account::default());
    }

    #[test]
    fn a_snapshot_of_another_shape_fails_to_load_instead_of_being_misread() {
        let state = given_open_with(100).state();
        let mut json = serde_json::to_value(&state).expect("serialise");
        json["overdraft_minor"] = serde_json::json!(0);
        assert!(serde_json::from_value::<Account>(json.clone()).is_err());
        if let Some(fields) = json.as_object_mut() {
            fields.remove("overdraft_minor");
            fields.remove("balance_minor");
        }
        assert!(serde_json::from_value::<Account>(json).is_err());
    }

    #[test]
    fn statuses_serialise_in_snake_case() {
        for status in [
            Status::Unopened,
            Status::Open,
            Status::Frozen,
            Status::Closed,
        ] {
            let json = serde_json::to_value(status).expect("serialise");
            assert_eq!(json, status.as_str());
        }
    }

    // ---- names and codes -------------------------------------------------------------------

    #[test]
    fn command_names_are_stable_metric_labels() {
        let mut commands = every_command();
        commands.push(report(Uuid::nil(), true));
        let names: Vec<_> = commands.iter().map(Command::name).collect();
        assert_eq!(
            names,
            [
                "open",
                "deposit",
                "withdraw",
                "pay",
                "freeze",
                "unfreeze",
                "close",
                "report_fraud"
            ]
        );
    }

    #[test]
    fn rejection_codes_are_distinct_snake_case_and_only_not_found_is_not_found() {
        let rejections = [
            Rejection::AccountNotFound,
            Rejection::AccountClosed,
            Rejection::AlreadyOpen,
            Rejection::AccountFrozen,
            Rejection::AlreadyFrozen,
            Rejection::NotFrozen,
            Rejection::InvalidAmount { amount_minor: 0 },
            Rejection::InvalidLimit { limit_minor: -1 },
            Rejection::InvalidField {
                field: "email",
                reason: "must not be blank",
            },
            Rejection::InsufficientFunds {
                balance_minor: 0,
                requested_minor: 1,
            },
            Rejection::DailyLimitExceeded {
                limit_minor: 0,
                withdrawn_today_minor: 0,
                requested_minor: 1,
            },
            Rejection::BalanceOverflow,
            Rejection::BalanceNotZero { balance_minor: 1 },
            Rejection::PaymentNotFound {
                payment_event_id: Uuid::nil(),
            },
            Rejection::AlreadyReported {
                payment_event_id: Uuid::nil(),
            },
        ];
        let mut codes: Vec<_> = rejections.iter().map(Rejection::code).collect();
        for code in &codes {
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}"
            );
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), rejections.len());
        let not_found: Vec<_> = rejections.iter().filter(|r| r.is_not_found()).collect();
        assert_eq!(not_found, [&Rejection::AccountNotFound]);
        let statuses: Vec<_> = rejections
            .iter()
            .map(|r| (r.code(), r.http_status()))
            .collect();
        for (code, status) in statuses {
            let expected = match code {
                "invalid_amount" | "invalid_limit" | "invalid_field" => 400,
                "account_not_found" | "payment_not_found" => 404,
                "payment_already_reported" => 409,
                _ => 422,
            };
            assert_eq!(status, expected, "{code}");
        }
        assert!(rejections.iter().all(|r| !r.to_string().is_empty()));
    }
}
