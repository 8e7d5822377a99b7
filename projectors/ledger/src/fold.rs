//! The ledger's fold: an account's row and one event in, the new row and the writes out.
//!
//! Pure and synchronous: no I/O, no clock, no panics on input. Everything the tables cannot
//! hold is refused with a [`Rejection`] naming the reason (the runtime dead-letters the
//! event) rather than truncated, wrapped or clamped: text longer than its column, money
//! that overflows `i64`, an amount that is not positive, an event for an account that was
//! never opened, a second `opened`, or an event not newer than the row.

use chrono::{DateTime, NaiveDate, Utc};
use prism_events::{AccountEvent, Envelope};
use uuid::Uuid;

/// Column widths (characters, as MySQL counts `VARCHAR(n)`).
pub const HOLDER_NAME_MAX: usize = 200;
pub const EMAIL_MAX: usize = 320;
pub const DESCRIPTION_MAX: usize = 500;
pub const MERCHANT_NAME_MAX: usize = 200;
pub const MERCHANT_CATEGORY_MAX: usize = 4;
pub const FROZEN_REASON_MAX: usize = 500;

/// `accounts.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountStatus {
    Open,
    Frozen,
    Closed,
}

impl AccountStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Frozen => "frozen",
            Self::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "frozen" => Some(Self::Frozen),
            "closed" => Some(Self::Closed),
            _ => None,
        }
    }
}

/// One row of `accounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub account_id: Uuid,
    pub holder_name: String,
    pub email: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// ISO 4217.
    pub currency: String,
    pub status: AccountStatus,
    pub balance_minor: i64,
    pub daily_withdrawal_limit_minor: i64,
    pub frozen_reason: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// Version of the last event folded into this row.
    pub version: u64,
}

/// `statement_lines.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    Deposit,
    Withdrawal,
    CardPayment,
}

impl StatementKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
            Self::CardPayment => "card_payment",
        }
    }
}

/// One row of `statement_lines`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    pub account_id: Uuid,
    pub version: u64,
    pub event_id: Uuid,
    pub kind: StatementKind,
    /// Signed: credits positive, debits negative.
    pub amount_minor: i64,
    pub balance_after_minor: i64,
    pub description: Option<String>,
    /// `atm | branch | online` for withdrawals, `pos | online` for card payments.
    pub channel: Option<&'static str>,
    pub merchant_name: Option<String>,
    pub merchant_category: Option<String>,
    pub merchant_country: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// Increments to one `daily_totals` row (account, UTC day). Amounts are magnitudes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyDelta {
    pub account_id: Uuid,
    pub day: NaiveDate,
    pub credits_minor: i64,
    pub debits_minor: i64,
    pub deposits: u32,
    pub withdrawals: u32,
    pub card_payments: u32,
    pub declined_payments: u32,
}

impl DailyDelta {
    fn zero(account_id: Uuid, day: NaiveDate) -> Self {
        Self {
            account_id,
            day,
            credits_minor: 0,
            debits_minor: 0,
            deposits: 0,
            withdrawals: 0,
            card_payments: 0,
            declined_payments: 0,
        }
    }

    /// Adds `other` (same account and day) with checked arithmetic; `None` on overflow.
    pub fn checked_add(&self, other: &DailyDelta) -> Option<DailyDelta> {
        Some(DailyDelta {
            account_id: self.account_id,
            day: self.day,
            credits_minor: self.credits_minor.checked_add(other.credits_minor)?,
            debits_minor: self.debits_minor.checked_add(other.debits_minor)?,
            deposits: self.deposits.checked_add(other.deposits)?,
            withdrawals: self.withdrawals.checked_add(other.withdrawals)?,
            card_payments: self.card_payments.checked_add(other.card_payments)?,
            declined_payments: self
                .declined_payments
                .checked_add(other.declined_payments)?,
        })
    }
}

/// What one event does to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    /// The account's row after the event (written with an upsert).
    pub account: AccountRow,
    /// The statement line, for deposits, withdrawals and approved card payments.
    pub line: Option<StatementLine>,
    /// The day's increments, for every money event and declined card payments.
    pub daily: Option<DailyDelta>,
}

/// Why the ledger refuses an event for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{event_type} for account {account_id}, which was never opened")]
    UnknownAccount {
        account_id: Uuid,
        event_type: &'static str,
    },
    #[error("account {account_id} is already open (version {version})")]
    AlreadyOpened { account_id: Uuid, version: u64 },
    #[error(
        "version {version} of account {account_id} is not newer than its row (version {stored})"
    )]
    Stale {
        account_id: Uuid,
        version: u64,
        stored: u64,
    },
    /// Folding version n+2 onto n would silently lose version n+1's effect: the model must
    /// hold every version of an account, in order, or none after a missing one.
    #[error(
        "version {version} of account {account_id} does not follow its row (version {stored}): \
         an earlier version is missing"
    )]
    Gap {
        account_id: Uuid,
        version: u64,
        stored: u64,
    },
    #[error("{field} is {len} characters, longer than the ledger's {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} must be positive, got {value}")]
    NotPositive { field: &'static str, value: i64 },
    #[error("{field} must not be negative, got {value}")]
    Negative { field: &'static str, value: i64 },
    #[error("{what} overflows 64-bit minor units")]
    Overflow { what: &'static str },
}

/// The ledger's fold as the projector kit sees it ([`prism_projector::fold::Fold`]): the
/// account row is the state; the statement line and the day's increments are the effect.
#[derive(Debug)]
pub struct LedgerFold;

impl prism_projector::fold::Fold for LedgerFold {
    type Account = AccountRow;
    type Effect = (Option<StatementLine>, Option<DailyDelta>);
    type Rejection = Rejection;

    fn fold(
        current: Option<&AccountRow>,
        event: &Envelope,
    ) -> Result<(AccountRow, Self::Effect), Rejection> {
        fold(current, event).map(|f| (f.account, (f.line, f.daily)))
    }
}

impl Rejection {
    /// The reason, as a sink reports it.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), Rejection> {
    // Cheap bound first: a string of at most `max` bytes has at most `max` characters.
    if value.len() <= max {
        return Ok(());
    }
    let len = value.chars().count();
    if len > max {
        return Err(Rejection::TooLong { field, len, max });
    }
    Ok(())
}

fn check_opt_len(field: &'static str, value: Option<&str>, max: usize) -> Result<(), Rejection> {
    value.map_or(Ok(()), |v| check_len(field, v, max))
}

fn positive(field: &'static str, value: i64) -> Result<i64, Rejection> {
    if value > 0 {
        Ok(value)
    } else {
        Err(Rejection::NotPositive { field, value })
    }
}

/// Folds `envelope` into `current` (the account's row, `None` if it has none).
pub fn fold(current: Option<&AccountRow>, envelope: &Envelope) -> Result<Folded, Rejection> {
    let account_id = envelope.account_id.0;
    let at = envelope.time;
    let version = envelope.account_version;

    let current = match (&envelope.event, current) {
        (AccountEvent::AccountOpened(_), None) if version != 1 => {
            return Err(Rejection::Gap {
                account_id,
                version,
                stored: 0,
            })
        }
        (AccountEvent::AccountOpened(opened), None) => {
            check_len("holder_name", &opened.holder_name, HOLDER_NAME_MAX)?;
            check_len("email", &opened.email, EMAIL_MAX)?;
            if opened.daily_withdrawal_limit_minor < 0 {
                return Err(Rejection::Negative {
                    field: "daily_withdrawal_limit_minor",
                    value: opened.daily_withdrawal_limit_minor,
                });
            }
            let account = AccountRow {
                account_id,
                holder_name: opened.holder_name.clone(),
                email: opened.email.clone(),
                country: opened.country.as_str().to_owned(),
                currency: opened.currency.as_str().to_owned(),
                status: AccountStatus::Open,
                balance_minor: 0,
                daily_withdrawal_limit_minor: opened.daily_withdrawal_limit_minor,
                frozen_reason: None,
                opened_at: at,
                updated_at: at,
                closed_at: None,
                version,
            };
            return Ok(Folded {
                account,
                line: None,
                daily: None,
            });
        }
        (AccountEvent::AccountOpened(_), Some(row)) => {
            return Err(Rejection::AlreadyOpened {
                account_id,
                version: row.version,
            })
        }
        (event, None) => {
            return Err(Rejection::UnknownAccount {
                account_id,
                event_type: event.event_type(),
            })
        }
        (_, Some(row)) => row,
    };
    // Versions never go back (that would apply money twice) and never skip (that would lose
    // an event's effect for good). An account whose event was dead-lettered therefore takes
    // no later event either: it waits for a rebuild, visibly, instead of drifting.
    if version <= current.version {
        return Err(Rejection::Stale {
            account_id,
            version,
            stored: current.version,
        });
    }
    if version != current.version + 1 {
        return Err(Rejection::Gap {
            account_id,
            version,
            stored: current.version,
        });
    }

    let mut account = current.clone();
    account.version = version;
    account.updated_at = at;
    let day = at.date_naive();
    let mut daily = DailyDelta::zero(account_id, day);
    let line = |kind, amount_minor, balance_after_minor| StatementLine {
        account_id,
        version,
        event_id: envelope.id,
        kind,
        amount_minor,
        balance_after_minor,
        description: None,
        channel: None,
        merchant_name: None,
        merchant_category: None,
        merchant_country: None,
        occurred_at: at,
    };

    let (line, daily) = match &envelope.event {
        AccountEvent::MoneyDeposited(e) => {
            let amount = positive("amount_minor", e.amount_minor)?;
            check_opt_len("description", e.description.as_deref(), DESCRIPTION_MAX)?;
            account.balance_minor = account
                .balance_minor
                .checked_add(amount)
                .ok_or(Rejection::Overflow { what: "balance" })?;
            daily.credits_minor = amount;
            daily.deposits = 1;
            let mut l = line(StatementKind::Deposit, amount, account.balance_minor);
            l.description = e.description.clone();
            (Some(l), Some(daily))
        }
        AccountEvent::MoneyWithdrawn(e) => {
            let amount = positive("amount_minor", e.amount_minor)?;
            check_opt_len("description", e.description.as_deref(), DESCRIPTION_MAX)?;
            account.balance_minor = account
                .balance_minor
                .checked_sub(amount)
                .ok_or(Rejection::Overflow { what: "balance" })?;
            daily.debits_minor = amount;
            daily.withdrawals = 1;
            let mut l = line(StatementKind::Withdrawal, -amount, account.balance_minor);
            l.description = e.description.clone();
            l.channel = Some(withdrawal_channel(e.channel));
            (Some(l), Some(daily))
        }
        AccountEvent::CardPaymentApproved(e) => {
            let p = &e.payment;
            let amount = positive("amount_minor", p.amount_minor)?;
            check_len("merchant_name", &p.merchant_name, MERCHANT_NAME_MAX)?;
            check_len(
                "merchant_category",
                &p.merchant_category,
                MERCHANT_CATEGORY_MAX,
            )?;
            account.balance_minor = account
                .balance_minor
                .checked_sub(amount)
                .ok_or(Rejection::Overflow { what: "balance" })?;
            daily.debits_minor = amount;
            daily.card_payments = 1;
            let mut l = line(StatementKind::CardPayment, -amount, account.balance_minor);
            l.channel = Some(card_channel(p.channel));
            l.merchant_name = Some(p.merchant_name.clone());
            l.merchant_category = Some(p.merchant_category.clone());
            l.merchant_country = Some(p.merchant_country.as_str().to_owned());
            (Some(l), Some(daily))
        }
        AccountEvent::CardPaymentDeclined(_) => {
            // Moves no money (its amount may be out of range: that can be why it was
            // declined); counted only.
            daily.declined_payments = 1;
            (None, Some(daily))
        }
        AccountEvent::AccountFrozen(e) => {
            check_len("reason", &e.reason, FROZEN_REASON_MAX)?;
            account.status = AccountStatus::Frozen;
            account.frozen_reason = Some(e.reason.clone());
            (None, None)
        }
        AccountEvent::AccountUnfrozen(_) => {
            account.status = AccountStatus::Open;
            account.frozen_reason = None;
            (None, None)
        }
        AccountEvent::AccountClosed(_) => {
            account.status = AccountStatus::Closed;
            account.frozen_reason = None;
            account.closed_at = Some(at);
            (None, None)
        }
        // A label for the fraud features, not a ledger fact: no money moves and the
        // reported payment's line stays as it was. Only the version moves.
        AccountEvent::PaymentReportedFraudulent(_) => (None, None),
        // Handled above; kept for exhaustiveness without a panic.
        AccountEvent::AccountOpened(_) => {
            return Err(Rejection::AlreadyOpened {
                account_id,
                version: current.version,
            })
        }
    };
    Ok(Folded {
        account,
        line,
        daily,
    })
}

fn withdrawal_channel(channel: prism_events::event::WithdrawalChannel) -> &'static str {
    use prism_events::event::WithdrawalChannel as C;
    match channel {
        C::Atm => "atm",
        C::Branch => "branch",
        C::Online => "online",
    }
}

fn card_channel(channel: prism_events::event::CardChannel) -> &'static str {
    use prism_events::event::CardChannel as C;
    match channel {
        C::Pos => "pos",
        C::Online => "online",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_events::event::{DeclineReason, MoneyDeposited};
    use prism_events::testing::{self, closed, deposited, payment, withdrawn, DAILY_LIMIT};
    use prism_events::AccountId;

    const ACCOUNT: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);

    fn time(day: u32, hour: u32) -> DateTime<Utc> {
        testing::day(day, hour, 30)
    }

    fn envelope(version: u64, at: DateTime<Utc>, event: AccountEvent) -> Envelope {
        testing::envelope(event)
            .account(AccountId(ACCOUNT))
            .version(version)
            .at(at)
            .build()
    }

    /// The account of these tests.
    fn opened() -> AccountEvent {
        testing::opened("Ada Lovelace", "GB", "GBP")
    }

    /// Given the events folded in order from no row, the resulting row.
    fn given(events: Vec<AccountEvent>) -> AccountRow {
        let mut row: Option<AccountRow> = None;
        for (i, event) in events.into_iter().enumerate() {
            let version = i as u64 + 1;
            let folded = fold(row.as_ref(), &envelope(version, time(1, 9), event))
                .expect("given events fold");
            row = Some(folded.account);
        }
        row.expect("at least one given event")
    }

    fn when(row: &AccountRow, at: DateTime<Utc>, event: AccountEvent) -> Result<Folded, Rejection> {
        fold(Some(row), &envelope(row.version + 1, at, event))
    }

    #[test]
    fn opened_creates_an_open_account_with_a_zero_balance() {
        let at = time(1, 9);
        let folded = fold(None, &envelope(1, at, opened())).expect("folds");
        let a = &folded.account;
        assert_eq!(a.account_id, ACCOUNT);
        assert_eq!(a.holder_name, "Ada Lovelace");
        assert_eq!(a.email, "ada.lovelace@example.org");
        assert_eq!((a.country.as_str(), a.currency.as_str()), ("GB", "GBP"));
        assert_eq!(a.status, AccountStatus::Open);
        assert_eq!(a.balance_minor, 0);
        assert_eq!(a.daily_withdrawal_limit_minor, DAILY_LIMIT);
        assert_eq!((a.opened_at, a.updated_at, a.closed_at), (at, at, None));
        assert_eq!(a.version, 1);
        assert_eq!((folded.line, folded.daily), (None, None));
    }

    #[test]
    fn opened_for_an_existing_account_is_rejected() {
        let row = given(vec![opened()]);
        assert!(matches!(
            when(&row, time(1, 10), opened()),
            Err(Rejection::AlreadyOpened { version: 1, .. })
        ));
    }

    #[test]
    fn any_other_event_for_an_unknown_account_is_rejected() {
        for event in [deposited(1), withdrawn(1), closed()] {
            let err = fold(None, &envelope(2, time(1, 9), event)).expect_err("unknown account");
            assert!(matches!(err, Rejection::UnknownAccount { .. }), "{err}");
            assert!(err.reason().contains("never opened"), "{err}");
        }
    }

    #[test]
    fn deposited_credits_the_balance_with_a_line_and_the_days_totals() {
        let row = given(vec![opened(), deposited(1_000)]);
        let at = time(2, 23);
        let folded = when(&row, at, deposited(250)).expect("folds");
        assert_eq!(folded.account.balance_minor, 1_250);
        assert_eq!(folded.account.version, 3);
        assert_eq!(folded.account.updated_at, at);
        let line = folded.line.expect("a line");
        assert_eq!(line.kind, StatementKind::Deposit);
        assert_eq!((line.amount_minor, line.balance_after_minor), (250, 1_250));
        assert_eq!(line.description.as_deref(), Some("salary"));
        assert_eq!((line.version, line.occurred_at), (3, at));
        let daily = folded.daily.expect("totals");
        assert_eq!(
            daily.day,
            NaiveDate::from_ymd_opt(2025, 3, 2).expect("date")
        );
        assert_eq!((daily.credits_minor, daily.deposits), (250, 1));
        assert_eq!((daily.debits_minor, daily.withdrawals), (0, 0));
    }

    #[test]
    fn withdrawn_debits_the_balance_with_a_negative_line() {
        let row = given(vec![opened(), deposited(1_000)]);
        let folded = when(&row, time(1, 12), withdrawn(300)).expect("folds");
        assert_eq!(folded.account.balance_minor, 700);
        let line = folded.line.expect("a line");
        assert_eq!(line.kind, StatementKind::Withdrawal);
        assert_eq!((line.amount_minor, line.balance_after_minor), (-300, 700));
        assert_eq!(line.channel, Some("atm"));
        let daily = folded.daily.expect("totals");
        assert_eq!((daily.debits_minor, daily.withdrawals), (300, 1));
        assert_eq!(daily.credits_minor, 0);
    }

    #[test]
    fn an_approved_card_payment_debits_with_the_merchant_on_the_line() {
        let row = given(vec![opened(), deposited(5_000)]);
        let folded = when(&row, time(1, 12), payment(1_250).approved()).expect("folds");
        assert_eq!(folded.account.balance_minor, 3_750);
        let line = folded.line.expect("a line");
        assert_eq!(line.kind, StatementKind::CardPayment);
        assert_eq!(
            (line.amount_minor, line.balance_after_minor),
            (-1_250, 3_750)
        );
        assert_eq!(line.merchant_name.as_deref(), Some("Café Rosa"));
        assert_eq!(line.merchant_category.as_deref(), Some("5814"));
        assert_eq!(line.merchant_country.as_deref(), Some("PT"));
        assert_eq!(line.channel, Some("pos"));
        let daily = folded.daily.expect("totals");
        assert_eq!((daily.debits_minor, daily.card_payments), (1_250, 1));
    }

    #[test]
    fn a_declined_card_payment_moves_no_money_and_is_counted() {
        let row = given(vec![opened()]);
        let event = payment(i64::MAX).declined(DeclineReason::AmountOutOfRange);
        let folded = when(&row, time(1, 12), event).expect("folds");
        assert_eq!(folded.account.balance_minor, 0);
        assert_eq!(folded.account.version, 2);
        assert_eq!(folded.line, None);
        let daily = folded.daily.expect("totals");
        assert_eq!(daily.declined_payments, 1);
        assert_eq!((daily.credits_minor, daily.debits_minor), (0, 0));
    }

    #[test]
    fn frozen_then_unfrozen_sets_and_clears_the_reason() {
        let row = given(vec![opened()]);
        let frozen = when(&row, time(1, 12), testing::frozen("card stolen")).expect("folds");
        assert_eq!(frozen.account.status, AccountStatus::Frozen);
        assert_eq!(frozen.account.frozen_reason.as_deref(), Some("card stolen"));
        assert_eq!((frozen.line, frozen.daily), (None, None));

        let unfrozen = when(&frozen.account, time(1, 13), testing::unfrozen()).expect("folds");
        assert_eq!(unfrozen.account.status, AccountStatus::Open);
        assert_eq!(unfrozen.account.frozen_reason, None);
        assert_eq!(unfrozen.account.version, 3);
    }

    #[test]
    fn closed_sets_the_status_and_closing_time() {
        let row = given(vec![opened()]);
        let at = time(4, 8);
        let folded = when(&row, at, closed()).expect("folds");
        assert_eq!(folded.account.status, AccountStatus::Closed);
        assert_eq!(folded.account.closed_at, Some(at));
        assert_eq!(folded.account.updated_at, at);
    }

    #[test]
    fn a_balance_overflow_is_rejected_not_wrapped() {
        let mut row = given(vec![opened()]);
        row.balance_minor = i64::MAX - 5;
        let err = when(&row, time(1, 12), deposited(6)).expect_err("overflow");
        assert_eq!(err, Rejection::Overflow { what: "balance" });
        row.balance_minor = i64::MIN + 5;
        assert!(matches!(
            when(&row, time(1, 12), withdrawn(6)),
            Err(Rejection::Overflow { .. })
        ));
    }

    #[test]
    fn amounts_that_are_not_positive_are_rejected() {
        let row = given(vec![opened()]);
        for amount in [0, -1, i64::MIN] {
            assert!(matches!(
                when(&row, time(1, 12), deposited(amount)),
                Err(Rejection::NotPositive { .. })
            ));
        }
    }

    #[test]
    fn text_longer_than_its_column_is_rejected_never_truncated() {
        let mut long_name = opened();
        if let AccountEvent::AccountOpened(o) = &mut long_name {
            o.holder_name = "é".repeat(HOLDER_NAME_MAX + 1);
        }
        let err = fold(None, &envelope(1, time(1, 9), long_name)).expect_err("too long");
        assert_eq!(
            err,
            Rejection::TooLong {
                field: "holder_name",
                len: 201,
                max: 200
            }
        );
        // Exactly the column's width in characters (more in bytes) fits.
        let mut fits = opened();
        if let AccountEvent::AccountOpened(o) = &mut fits {
            o.holder_name = "é".repeat(HOLDER_NAME_MAX);
            o.email = "a".repeat(EMAIL_MAX);
        }
        assert!(fold(None, &envelope(1, time(1, 9), fits)).is_ok());

        let row = given(vec![opened()]);
        let long_description = AccountEvent::MoneyDeposited(MoneyDeposited {
            amount_minor: 1,
            description: Some("x".repeat(DESCRIPTION_MAX + 1)),
        });
        assert!(matches!(
            when(&row, time(1, 12), long_description),
            Err(Rejection::TooLong {
                field: "description",
                ..
            })
        ));
        let long_merchant = payment(1)
            .merchant(&"m".repeat(MERCHANT_NAME_MAX + 1))
            .approved();
        assert!(matches!(
            when(&row, time(1, 12), long_merchant),
            Err(Rejection::TooLong {
                field: "merchant_name",
                ..
            })
        ));
        let long_reason = testing::frozen(&"r".repeat(FROZEN_REASON_MAX + 1));
        assert!(matches!(
            when(&row, time(1, 12), long_reason),
            Err(Rejection::TooLong {
                field: "reason",
                ..
            })
        ));
    }

    #[test]
    fn an_event_not_newer_than_the_row_is_rejected() {
        let row = given(vec![opened(), deposited(10)]);
        let err = fold(Some(&row), &envelope(2, time(1, 12), deposited(10))).expect_err("stale");
        assert!(matches!(
            err,
            Rejection::Stale {
                version: 2,
                stored: 2,
                ..
            }
        ));
        assert!(fold(Some(&row), &envelope(3, time(1, 12), deposited(10))).is_ok());
    }

    #[test]
    fn a_version_that_skips_one_is_refused_on_every_path() {
        let row = given(vec![opened(), deposited(10)]);
        let err = fold(Some(&row), &envelope(4, time(1, 12), deposited(10))).expect_err("gap");
        assert!(matches!(
            err,
            Rejection::Gap {
                version: 4,
                stored: 2,
                ..
            }
        ));
        // An opening that is not the account's first event means its history is missing.
        let err = fold(None, &envelope(2, time(1, 12), opened())).expect_err("late open");
        assert!(matches!(err, Rejection::Gap { stored: 0, .. }));
    }

    #[test]
    fn daily_deltas_add_with_overflow_checks() {
        let day = NaiveDate::from_ymd_opt(2025, 3, 1).expect("date");
        let mut a = DailyDelta::zero(ACCOUNT, day);
        a.credits_minor = i64::MAX;
        a.deposits = 1;
        let mut b = DailyDelta::zero(ACCOUNT, day);
        b.deposits = 2;
        assert_eq!(a.checked_add(&b).map(|s| s.deposits), Some(3));
        b.credits_minor = 1;
        assert_eq!(a.checked_add(&b), None);
    }
}
