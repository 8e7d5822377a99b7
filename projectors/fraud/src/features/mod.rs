//! The feature engine, pure: no I/O, no clock, no randomness.
//!
//! ML teams need features of a card payment *now*, to score it (online), and the same
//! features *as they were just before* every past payment, to train on (offline). Both come
//! from one code path, so a model is trained on exactly what it is served:
//!
//! - [`apply`] folds one event onto an account's [`AccountFeatures`]. For a card payment
//!   (approved or declined) or a withdrawal it also yields a [`Row`]: the [`FeatureVector`]
//!   that event got, computed by [`vector`]'s code on the state *before* the event.
//! - [`vector`] computes the features a [`Candidate`] payment would get on the current
//!   state: what the online API serves.
//!
//! FEATURES.md (beside this crate's `Cargo.toml`) defines every feature; the field docs of
//! [`FeatureVector`] say the same. Changing any definition bumps [`FEATURE_SET_VERSION`].
//!
//! # Time: the feature clock
//! Times are integer microseconds since the Unix epoch, from [`Envelope::time`] (whose
//! precision is the microsecond; anything finer would be dropped, rounding down). Events
//! of one account come in version order, but their times come from the clocks of several
//! command-service instances, which may disagree a little. So each account has a
//! **feature clock**: `clock = max(event time, clock before)`, moved by every event but a
//! fraud report. An event's **feature time** is `t = max(its event time, clock before it)`,
//! which is the clock right after it. Times used by features therefore never go backwards.
//!
//! A window of width `w` holds the account's *earlier* events (lower versions) whose
//! feature time `s` is after `t − w`: `t − w < s ≤ t`. An event exactly `w` before is out,
//! one a microsecond later is in; the payment itself is never in its own windows (it is
//! not an earlier event), while an earlier event of the same microsecond, or one whose
//! time the clock held up, is. Since every later `t ≥ clock`, an entry at or before
//! `clock − w` can never be in a window again: [`apply`] drops it, and the state keeps only
//! 7 days of card payments and 24 hours of withdrawals.
//!
//! # Labels are not features
//! `PaymentReportedFraudulent` moves the version and nothing else, not even the clock: the
//! features of every event are the same whether or not (and whenever) a payment was
//! reported. Labels live in the offline store's `labels` table.

use chrono::{DateTime, Utc};
use prism_events::event::{CardChannel, CardPayment, MoneyWithdrawn, WithdrawalChannel};
use prism_events::{AccountEvent, AccountId, Envelope};
use uuid::Uuid;

mod scoring;
mod state;
pub mod zones;

pub use scoring::{vector, Candidate, Column, ColumnKind, FeatureVector, Value, FEATURE_COUNT};
pub use state::{AccountFeatures, AmountStats, PaymentEntry, WithdrawalEntry};

use scoring::{compute, Subject};
use state::{PaymentEntry as Payment, WithdrawalEntry as Withdrawal};

/// The version of the feature definitions. Changing any definition (a window, a null
/// rule, a formula, a column, the zone table) bumps it, and a rebuild recomputes every row.
pub const FEATURE_SET_VERSION: &str = "fraud-v1";

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// 10 minutes, in µs.
pub const WINDOW_10M: Micros = 10 * 60 * 1_000_000;
/// 1 hour, in µs.
pub const WINDOW_1H: Micros = 60 * 60 * 1_000_000;
/// 24 hours, in µs.
pub const WINDOW_24H: Micros = 24 * 60 * 60 * 1_000_000;
/// 7 days, in µs.
pub const WINDOW_7D: Micros = 7 * 24 * 60 * 60 * 1_000_000;

/// Which event a [`Row`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKind {
    CardPaymentApproved,
    CardPaymentDeclined,
    Withdrawal,
}

impl RowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CardPaymentApproved => "card_payment_approved",
            Self::CardPaymentDeclined => "card_payment_declined",
            Self::Withdrawal => "withdrawal",
        }
    }
}

/// The features one event got, as of just before it: an offline training row.
///
/// A withdrawal's row is scored like a payment without a merchant: its amount, `is_online`
/// from its channel (`online` → true; ATM and branch → false), and the two features about
/// the payment's own merchant (`first_time_at_merchant`, `merchant_country_differs`) null.
/// Every other feature reads the account's history the same way as for a card payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub event_id: Uuid,
    pub account_id: AccountId,
    pub account_version: u64,
    pub kind: RowKind,
    /// The event's own time (CloudEvents `time`).
    pub event_time: DateTime<Utc>,
    /// The feature time `t` the features were computed at, µs since the epoch (module
    /// docs): the event time, or the clock if that was later.
    pub feature_time_micros: Micros,
    pub features: FeatureVector,
}

/// Why the feature engine refuses an event for good (the runtime dead-letters it, and the
/// account's later events with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A version other than the next one: a duplicate or an older version (`version ≤
    /// stored`), or a skipped one (`version > stored + 1`). Folding across a gap would
    /// lose an event's features for good.
    #[error(
        "version {version} of account {account_id} does not follow the folded version \
         {stored}"
    )]
    Gap {
        account_id: AccountId,
        version: u64,
        stored: u64,
    },
    /// An event of an account whose `AccountOpened` was not folded.
    #[error("{event_type} for account {account_id}, which was never opened")]
    UnknownAccount {
        account_id: AccountId,
        event_type: &'static str,
    },
    /// A second `AccountOpened`.
    #[error("account {account_id} is already open (version {version})")]
    AlreadyOpened { account_id: AccountId, version: u64 },
}

/// Folds `event` onto `state` (`None`: the account is not known yet): the account's next
/// state, and for a card payment (approved or declined) or a withdrawal the [`Row`] of
/// features it got, computed on `state` as [`vector()`] computes them.
///
/// [`apply_in_place`] does the same without copying the state.
pub fn apply(
    state: Option<&AccountFeatures>,
    event: &Envelope,
) -> Result<(AccountFeatures, Option<Row>), Rejection> {
    match step(state, event)? {
        Step::Open(opened) => Ok((opened, None)),
        Step::Update(before) => {
            let mut next = before.clone();
            let row = update(&mut next, event);
            Ok((next, row))
        }
    }
}

/// [`apply`] on the state where it lies: `slot` becomes the next state, and the row is
/// returned. On a [`Rejection`] `slot` is left as it was.
pub fn apply_in_place(
    slot: &mut Option<AccountFeatures>,
    event: &Envelope,
) -> Result<Option<Row>, Rejection> {
    let opened = match step(slot.as_ref(), event)? {
        Step::Open(opened) => Some(opened),
        Step::Update(_) => None,
    };
    match opened {
        Some(opened) => {
            *slot = Some(opened);
            Ok(None)
        }
        None => Ok(slot.as_mut().and_then(|state| update(state, event))),
    }
}

/// What an acceptable event does: open the account, or update the state it has.
enum Step<'a> {
    Open(AccountFeatures),
    Update(&'a AccountFeatures),
}

/// Checks `event` against `state` (the version must be the next one; the account must be
/// opened once, first).
fn step<'a>(state: Option<&'a AccountFeatures>, event: &Envelope) -> Result<Step<'a>, Rejection> {
    let account_id = event.account_id;
    let version = event.account_version;
    let stored = state.map_or(0, AccountFeatures::version);
    if stored.checked_add(1) != Some(version) {
        return Err(Rejection::Gap {
            account_id,
            version,
            stored,
        });
    }
    match (state, &event.event) {
        (None, AccountEvent::AccountOpened(opened)) => Ok(Step::Open(AccountFeatures::opened(
            opened,
            event.time.timestamp_micros(),
            version,
        ))),
        (None, other) => Err(Rejection::UnknownAccount {
            account_id,
            event_type: other.event_type(),
        }),
        (Some(s), AccountEvent::AccountOpened(_)) => Err(Rejection::AlreadyOpened {
            account_id,
            version: s.version,
        }),
        (Some(s), _) => Ok(Step::Update(s)),
    }
}

/// Folds an accepted event (the next version, not an opening) onto `state`; its row, if
/// it gets one, is scored on `state` as it was before.
fn update(state: &mut AccountFeatures, event: &Envelope) -> Option<Row> {
    let time = event.time.timestamp_micros();
    // Every event type is named: a new one must be decided on here, not fall through.
    let scored = match &event.event {
        // A label, not account activity: nothing but the version moves (module docs).
        AccountEvent::PaymentReportedFraudulent(_) => {
            state.version = event.account_version;
            return None;
        }
        AccountEvent::CardPaymentApproved(e) => {
            Some(card_payment(state, &e.payment, false, event.time))
        }
        AccountEvent::CardPaymentDeclined(e) => {
            Some(card_payment(state, &e.payment, true, event.time))
        }
        AccountEvent::MoneyWithdrawn(e) => Some(withdrawal(state, e, time)),
        AccountEvent::AccountOpened(_)
        | AccountEvent::MoneyDeposited(_)
        | AccountEvent::AccountFrozen(_)
        | AccountEvent::AccountUnfrozen(_)
        | AccountEvent::AccountClosed(_) => None,
    };
    state.version = event.account_version;
    state.balance = state
        .balance
        .saturating_add(i128::from(event.event.balance_change()));
    state.advance(time);
    scored.map(|(kind, t, features)| Row {
        event_id: event.id,
        account_id: event.account_id,
        account_version: event.account_version,
        kind,
        event_time: event.time,
        feature_time_micros: t,
        features,
    })
}

/// Scores a card payment on `state`, then records it there.
fn card_payment(
    state: &mut AccountFeatures,
    payment: &CardPayment,
    declined: bool,
    time: DateTime<Utc>,
) -> (RowKind, Micros, FeatureVector) {
    let candidate = Candidate::from_payment(payment, time);
    let (t, features) = compute(Some(state), &Subject::card(&candidate));
    state.payments.push_back(Payment {
        at: t,
        amount: payment.amount_minor,
        merchant: payment.merchant_name.clone(),
        merchant_country: payment.merchant_country,
        online: payment.channel == CardChannel::Online,
        declined,
    });
    if !state.merchants.contains(&payment.merchant_name) {
        state.merchants.insert(payment.merchant_name.clone());
    }
    state.amounts.add(payment.amount_minor);
    state.last_payment_at = Some(t);
    let kind = if declined {
        RowKind::CardPaymentDeclined
    } else {
        RowKind::CardPaymentApproved
    };
    (kind, t, features)
}

/// Scores a withdrawal on `state` (no merchant: [`Row`]), then records it there.
fn withdrawal(
    state: &mut AccountFeatures,
    withdrawn: &MoneyWithdrawn,
    time: Micros,
) -> (RowKind, Micros, FeatureVector) {
    let subject = Subject {
        amount: withdrawn.amount_minor,
        online: withdrawn.channel == WithdrawalChannel::Online,
        merchant: None,
        time,
    };
    let (t, features) = compute(Some(state), &subject);
    state.withdrawals.push_back(Withdrawal {
        at: t,
        amount: withdrawn.amount_minor,
    });
    (RowKind::Withdrawal, t, features)
}

/// The kit's view of the engine ([`prism_projector::fold::Fold`]): the effect of an event
/// is its row, if any.
#[derive(Debug)]
pub struct FeatureFold;

impl prism_projector::fold::Fold for FeatureFold {
    type Account = AccountFeatures;
    type Effect = Option<Row>;
    type Rejection = Rejection;

    fn fold(
        current: Option<&AccountFeatures>,
        event: &Envelope,
    ) -> Result<(AccountFeatures, Option<Row>), Rejection> {
        apply(current, event)
    }
}

#[cfg(test)]
mod tests;
