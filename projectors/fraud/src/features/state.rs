//! [`AccountFeatures`]: what the feature engine keeps per account between two events.
//!
//! Only what the features need: the card payments of the last 7 days and the withdrawals
//! of the last 24 hours (by the account's feature clock, see [`super`]), plus a few
//! all-time items (the merchants ever paid at, exact amount statistics, the balance, the
//! account's country, currency and opening time). It is stored per account in Redis as
//! JSON, so it is kept small: the per-payment entries, the part that repeats, have
//! one-letter field names.

use std::collections::{BTreeSet, VecDeque};

use prism_events::event::{AccountOpened, MinorUnits};
use prism_events::{Country, Currency};
use serde::{Deserialize, Serialize};

use super::{Micros, WINDOW_24H, WINDOW_7D};

/// One account's feature state: everything [`super::vector()`] reads.
///
/// Times are integer microseconds since the Unix epoch, on the account's feature clock
/// (every one of them is at or before [`AccountFeatures::clock_micros`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountFeatures {
    /// The account version of the last event folded in.
    pub(crate) version: u64,
    /// The feature clock: the largest event time seen (fraud reports aside). Also the
    /// feature time of the previous account event, since every event but a fraud report
    /// sets it to its own feature time.
    pub(crate) clock: Micros,
    /// Feature time of the `AccountOpened` event.
    pub(crate) opened_at: Micros,
    pub(crate) country: Country,
    pub(crate) currency: Currency,
    /// The balance after every event so far (deposits in; withdrawals and approved card
    /// payments out), in minor units. Wider than an event's amount, so that no history of
    /// valid amounts can overflow it.
    pub(crate) balance: i128,
    /// Feature time of the previous card payment (approved or declined), if any.
    pub(crate) last_payment_at: Option<Micros>,
    /// Every card payment (approved or declined) with a feature time after
    /// `clock − 7 days`, oldest first.
    pub(crate) payments: VecDeque<PaymentEntry>,
    /// Every withdrawal with a feature time after `clock − 24 hours`, oldest first.
    pub(crate) withdrawals: VecDeque<WithdrawalEntry>,
    /// Every merchant name the account ever made a card payment at (approved or declined),
    /// exactly as the events spell it.
    pub(crate) merchants: BTreeSet<String>,
    /// Exact statistics of every card payment's amount, all time.
    pub(crate) amounts: AmountStats,
}

/// A card payment as the windows need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEntry {
    /// Feature time (µs).
    #[serde(rename = "t")]
    pub(crate) at: Micros,
    #[serde(rename = "a")]
    pub(crate) amount: MinorUnits,
    #[serde(rename = "m")]
    pub(crate) merchant: String,
    #[serde(rename = "c")]
    pub(crate) merchant_country: Country,
    /// Card not present.
    #[serde(rename = "o", default, skip_serializing_if = "is_false")]
    pub(crate) online: bool,
    #[serde(rename = "d", default, skip_serializing_if = "is_false")]
    pub(crate) declined: bool,
}

/// A withdrawal as the windows need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawalEntry {
    /// Feature time (µs).
    #[serde(rename = "t")]
    pub(crate) at: Micros,
    #[serde(rename = "a")]
    pub(crate) amount: MinorUnits,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Exact running statistics of integer amounts: the count `n`, `Σx` and `Σx²`.
///
/// Integers, not floats: a float running mean and variance (even Welford's recurrence,
/// which exists to tame the cancellation of naive float sums) depends on the order of the
/// additions in its last bits, and two code paths would drift apart. Integer sums are
/// exact, so they do not depend on the order, and the floats are derived from them by one
/// formula in [`super::vector()`]. `i128` holds `Σx²` of more than 10¹⁴ payments of 10¹²
/// minor units; should a sum overflow all the same (absurd amounts), `overflowed` is set
/// and the statistics read as null from then on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmountStats {
    pub(crate) n: u64,
    pub(crate) sum: i128,
    pub(crate) sum_squares: i128,
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) overflowed: bool,
}

impl AmountStats {
    /// Adds one amount.
    pub(crate) fn add(&mut self, amount: MinorUnits) {
        let x = i128::from(amount);
        let next = (
            self.n.checked_add(1),
            self.sum.checked_add(x),
            x.checked_mul(x)
                .and_then(|square| self.sum_squares.checked_add(square)),
        );
        match next {
            (Some(n), Some(sum), Some(sum_squares)) => {
                *self = Self {
                    n,
                    sum,
                    sum_squares,
                    overflowed: self.overflowed,
                }
            }
            _ => self.overflowed = true,
        }
    }

    /// `(mean, sample standard deviation)` by the documented formulas (FEATURES.md):
    /// mean = `Σx / n` (both converted to `f64`, then divided), `None` when `n = 0`;
    /// variance = `(n·Σx² − (Σx)²) / (n·(n − 1))` with numerator and denominator computed
    /// exactly in `i128`, each converted to `f64`, then divided; std = its square root,
    /// `None` when `n < 2` or when the numerator or denominator does not fit `i128`. Both
    /// `None` once a sum has overflowed.
    pub(crate) fn mean_std(&self) -> (Option<f64>, Option<f64>) {
        if self.overflowed || self.n == 0 {
            return (None, None);
        }
        let n = i128::from(self.n);
        let mean = self.sum as f64 / n as f64;
        if self.n < 2 {
            return (Some(mean), None);
        }
        let numerator = n
            .checked_mul(self.sum_squares)
            .zip(self.sum.checked_mul(self.sum))
            .and_then(|(a, b)| a.checked_sub(b));
        let denominator = n.checked_mul(n - 1);
        match (numerator, denominator) {
            (Some(num), Some(den)) if num >= 0 && den > 0 => {
                let variance = num as f64 / den as f64;
                (Some(mean), Some(variance.sqrt()))
            }
            // Out of i128's range (or, impossibly, negative): unknown rather than wrong.
            _ => (Some(mean), None),
        }
    }
}

impl AccountFeatures {
    /// The state right after `AccountOpened` at feature time `at`.
    pub(crate) fn opened(opened: &AccountOpened, at: Micros, version: u64) -> Self {
        Self {
            version,
            clock: at,
            opened_at: at,
            country: opened.country,
            currency: opened.currency,
            balance: 0,
            last_payment_at: None,
            payments: VecDeque::new(),
            withdrawals: VecDeque::new(),
            merchants: BTreeSet::new(),
            amounts: AmountStats::default(),
        }
    }

    /// The account version of the last event folded in.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The feature clock, in µs since the epoch (module docs of [`super`]).
    pub fn clock_micros(&self) -> Micros {
        self.clock
    }

    /// The account's country (from `AccountOpened`).
    pub fn country(&self) -> Country {
        self.country
    }

    /// The account's currency (from `AccountOpened`).
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The balance after every event so far, in minor units.
    pub fn balance_minor(&self) -> i128 {
        self.balance
    }

    /// How many card payments (7 days) and withdrawals (24 hours) the state holds.
    pub fn window_entries(&self) -> (usize, usize) {
        (self.payments.len(), self.withdrawals.len())
    }

    /// How many distinct merchant names the account ever paid at.
    pub fn merchants_ever(&self) -> usize {
        self.merchants.len()
    }

    /// The feature time an event at `time` gets: never before the clock.
    pub(crate) fn feature_time(&self, time: Micros) -> Micros {
        time.max(self.clock)
    }

    /// Moves the clock to `at` (a feature time, so never backwards) and drops what no
    /// later event can see: every later feature time is at least the clock, and a window
    /// of width `w` before `t` holds times after `t − w`, so entries at or before
    /// `clock − w` are never read again.
    pub(crate) fn advance(&mut self, at: Micros) {
        self.clock = self.clock.max(at);
        let payments_from = self.clock.saturating_sub(WINDOW_7D);
        while self.payments.front().is_some_and(|p| p.at <= payments_from) {
            self.payments.pop_front();
        }
        let withdrawals_from = self.clock.saturating_sub(WINDOW_24H);
        while self
            .withdrawals
            .front()
            .is_some_and(|w| w.at <= withdrawals_from)
        {
            self.withdrawals.pop_front();
        }
    }
}
