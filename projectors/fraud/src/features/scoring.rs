//! [`FeatureVector`]: the features one payment gets, and [`vector`], the one function that
//! computes them, for a payment to score now ([`Candidate`]) and for every past payment
//! and withdrawal while folding ([`super::apply`] calls the same code).
//!
//! Every feature is read "as of just before" the payment: from the account's state before
//! it, at the payment's feature time `t` (see [`super`] for the clock). A window of width
//! `w` holds the account's earlier events with a feature time `s` such that `t − w < s`:
//! an event exactly `w` before `t` is out, one a microsecond later is in. Earlier events
//! never have `s > t` (the clock), and the payment itself is never among them.

use chrono::{DateTime, Timelike as _, Utc};
use prism_events::event::{CardChannel, CardPayment, MinorUnits};
use prism_events::Country;
use serde::{Deserialize, Serialize};

use super::state::AccountFeatures;
use super::{zones, Micros, WINDOW_10M, WINDOW_1H, WINDOW_24H, WINDOW_7D};

/// A card payment to score, as the command service would see it before deciding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Minor units of the account's currency.
    pub amount_minor: MinorUnits,
    /// Compared as an exact string with the merchants the account paid at before.
    pub merchant_name: String,
    /// ISO 18245 merchant category code (no feature of `fraud-v1` reads it).
    pub merchant_category: String,
    pub merchant_country: Country,
    pub channel: CardChannel,
    /// When the payment is made (its event time once it is an event).
    pub time: DateTime<Utc>,
}

impl Candidate {
    /// The candidate a card payment event (approved or declined) is, at its event time.
    pub fn from_payment(payment: &CardPayment, time: DateTime<Utc>) -> Self {
        Self {
            amount_minor: payment.amount_minor,
            merchant_name: payment.merchant_name.clone(),
            merchant_category: payment.merchant_category.clone(),
            merchant_country: payment.merchant_country,
            channel: payment.channel,
            time,
        }
    }
}

/// What [`vector`] scores: a card payment, or a withdrawal (no merchant).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub(crate) amount: MinorUnits,
    pub(crate) online: bool,
    /// Name and country; `None` for a withdrawal.
    pub(crate) merchant: Option<(&'a str, Country)>,
    /// Event time (µs); the feature time is this or the clock, whichever is later.
    pub(crate) time: Micros,
}

impl<'a> Subject<'a> {
    pub(crate) fn card(candidate: &'a Candidate) -> Self {
        Self {
            amount: candidate.amount_minor,
            online: candidate.channel == CardChannel::Online,
            merchant: Some((&candidate.merchant_name, candidate.merchant_country)),
            time: candidate.time.timestamp_micros(),
        }
    }
}

/// The features of one payment (or withdrawal), as of just before it.
///
/// `t` is the payment's feature time; "earlier card payments" are the account's card
/// payment events before it, approved **and** declined; windows are `(t − w, t]` over
/// earlier events (module docs). Nulls are `None`. Changing any definition bumps
/// [`super::FEATURE_SET_VERSION`]; FEATURES.md has the same table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureVector {
    /// The payment's amount, in minor units of the account's currency (a withdrawal's for a
    /// withdrawal row). Never null.
    pub amount_minor: i64,
    /// Card not present (`channel = online`); for a withdrawal, `channel = online`.
    pub is_online: bool,
    /// Earlier card payments in the last 10 minutes.
    pub card_payments_count_10m: u32,
    /// Earlier card payments in the last hour.
    pub card_payments_count_1h: u32,
    /// Earlier card payments in the last 24 hours.
    pub card_payments_count_24h: u32,
    /// Earlier card payments in the last 7 days.
    pub card_payments_count_7d: u32,
    /// Sum of the amounts of `card_payments_count_10m`, minor units (0 when none; the exact
    /// sum, clamped to the `i64` range).
    pub card_payments_sum_10m: i64,
    /// Sum of the amounts of `card_payments_count_1h`, minor units (as above).
    pub card_payments_sum_1h: i64,
    /// Sum of the amounts of `card_payments_count_24h`, minor units (as above).
    pub card_payments_sum_24h: i64,
    /// Sum of the amounts of `card_payments_count_7d`, minor units (as above).
    pub card_payments_sum_7d: i64,
    /// Earlier withdrawals in the last 24 hours.
    pub withdrawals_count_24h: u32,
    /// Sum of their amounts, minor units (as for the card sums).
    pub withdrawals_sum_24h: i64,
    /// Mean amount of every earlier card payment (all time), minor units: `Σx / n`, both
    /// converted to `f64` and divided. Null when `n = 0`.
    pub amount_mean: Option<f64>,
    /// Sample standard deviation of those amounts, minor units:
    /// `sqrt((n·Σx² − (Σx)²) / (n·(n − 1)))`, numerator and denominator exact in `i128`,
    /// each converted to `f64`, then divided. Null when `n < 2`.
    pub amount_std: Option<f64>,
    /// `(amount_minor − amount_mean) / amount_std` in `f64` (the amount converted to `f64`
    /// first). Null when `n < 2` or `amount_std = 0` (all earlier amounts equal).
    pub amount_zscore: Option<f64>,
    /// Distinct merchant names (exact strings) among the earlier card payments of the last
    /// 24 hours.
    pub distinct_merchants_24h: u32,
    /// Distinct merchant countries among the earlier card payments of the last 24 hours.
    pub distinct_merchant_countries_24h: u32,
    /// No earlier card payment (any time) at this merchant name, exact string. Null for a
    /// withdrawal (no merchant).
    pub first_time_at_merchant: Option<bool>,
    /// Merchant country ≠ the account's country. Null for a withdrawal, and when the
    /// account's country is unknown (no `AccountOpened` seen).
    pub merchant_country_differs: Option<bool>,
    /// `(t − s) / 10⁶` seconds, `s` the feature time of the account's previous event (any
    /// type but a fraud report, which is no account activity); the µs difference converted
    /// to `f64`, then divided. Null when the account has no earlier event.
    pub seconds_since_previous_event: Option<f64>,
    /// The same from the previous card payment (approved or declined; withdrawals are not
    /// payments). Null when there is none.
    pub seconds_since_previous_payment: Option<f64>,
    /// Earlier declined card payments in the last 24 hours.
    pub declines_count_24h: u32,
    /// Online (card not present) share of `card_payments_count_24h`:
    /// `online as f64 / count as f64`. Null when `card_payments_count_24h = 0`.
    pub online_share_24h: Option<f64>,
    /// Earlier card-not-present payments in the last 10 minutes with an amount of at most
    /// 5 major units of the account's currency (`5 × 10^exponent`: 500 for EUR, 5 for
    /// JPY, 5000 for KWD), zero and negative amounts included: card testing.
    pub small_online_payments_10m: u32,
    /// Hour (0–23) of `t` on the wall clock of the account's country's principal time zone
    /// (`zones`, DST included). Null without a country or a zone for it.
    pub local_hour: Option<u32>,
    /// `amount_minor as f64 / balance as f64`, the balance just before the payment. Null
    /// when the balance is ≤ 0 (or unknown).
    pub amount_to_balance: Option<f64>,
    /// `(t − opened) / 10⁶` seconds, `opened` the feature time of `AccountOpened` (computed
    /// as `seconds_since_*`). Null when it was not seen.
    pub account_age_seconds: Option<f64>,
}

/// The type of a feature column (Parquet and the API use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Int64,
    UInt32,
    Float64,
    Bool,
}

/// One feature column: its name (the field's), type and whether it can be null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub kind: ColumnKind,
    pub nullable: bool,
}

/// One feature's value, in the type of its [`Column`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int64(i64),
    UInt32(u32),
    Float64(f64),
    Bool(bool),
    Null,
}

/// How many features [`FeatureVector`] has.
pub const FEATURE_COUNT: usize = 27;

const fn column(name: &'static str, kind: ColumnKind, nullable: bool) -> Column {
    Column {
        name,
        kind,
        nullable,
    }
}

impl FeatureVector {
    /// Every feature column in the stable order of the struct (and of its JSON and
    /// Parquet forms). New features go at the end, with a new feature set version.
    pub const COLUMNS: [Column; FEATURE_COUNT] = {
        use ColumnKind::{Bool, Float64, Int64, UInt32};
        [
            column("amount_minor", Int64, false),
            column("is_online", Bool, false),
            column("card_payments_count_10m", UInt32, false),
            column("card_payments_count_1h", UInt32, false),
            column("card_payments_count_24h", UInt32, false),
            column("card_payments_count_7d", UInt32, false),
            column("card_payments_sum_10m", Int64, false),
            column("card_payments_sum_1h", Int64, false),
            column("card_payments_sum_24h", Int64, false),
            column("card_payments_sum_7d", Int64, false),
            column("withdrawals_count_24h", UInt32, false),
            column("withdrawals_sum_24h", Int64, false),
            column("amount_mean", Float64, true),
            column("amount_std", Float64, true),
            column("amount_zscore", Float64, true),
            column("distinct_merchants_24h", UInt32, false),
            column("distinct_merchant_countries_24h", UInt32, false),
            column("first_time_at_merchant", Bool, true),
            column("merchant_country_differs", Bool, true),
            column("seconds_since_previous_event", Float64, true),
            column("seconds_since_previous_payment", Float64, true),
            column("declines_count_24h", UInt32, false),
            column("online_share_24h", Float64, true),
            column("small_online_payments_10m", UInt32, false),
            column("local_hour", UInt32, true),
            column("amount_to_balance", Float64, true),
            column("account_age_seconds", Float64, true),
        ]
    };

    /// The names of [`FeatureVector::COLUMNS`], in order.
    pub const NAMES: [&'static str; FEATURE_COUNT] = {
        let mut names = [""; FEATURE_COUNT];
        let mut i = 0;
        while i < FEATURE_COUNT {
            names[i] = Self::COLUMNS[i].name;
            i += 1;
        }
        names
    };

    /// The values in the order of [`FeatureVector::COLUMNS`].
    pub fn values(&self) -> [Value; FEATURE_COUNT] {
        let float = |v: Option<f64>| v.map_or(Value::Null, Value::Float64);
        let boolean = |v: Option<bool>| v.map_or(Value::Null, Value::Bool);
        [
            Value::Int64(self.amount_minor),
            Value::Bool(self.is_online),
            Value::UInt32(self.card_payments_count_10m),
            Value::UInt32(self.card_payments_count_1h),
            Value::UInt32(self.card_payments_count_24h),
            Value::UInt32(self.card_payments_count_7d),
            Value::Int64(self.card_payments_sum_10m),
            Value::Int64(self.card_payments_sum_1h),
            Value::Int64(self.card_payments_sum_24h),
            Value::Int64(self.card_payments_sum_7d),
            Value::UInt32(self.withdrawals_count_24h),
            Value::Int64(self.withdrawals_sum_24h),
            float(self.amount_mean),
            float(self.amount_std),
            float(self.amount_zscore),
            Value::UInt32(self.distinct_merchants_24h),
            Value::UInt32(self.distinct_merchant_countries_24h),
            boolean(self.first_time_at_merchant),
            boolean(self.merchant_country_differs),
            float(self.seconds_since_previous_event),
            float(self.seconds_since_previous_payment),
            Value::UInt32(self.declines_count_24h),
            float(self.online_share_24h),
            Value::UInt32(self.small_online_payments_10m),
            self.local_hour.map_or(Value::Null, Value::UInt32),
            float(self.amount_to_balance),
            float(self.account_age_seconds),
        ]
    }
}

/// The features `candidate` gets on the account whose state is `state` (`None`: an
/// account never seen), as of just before it: what the online API serves, and exactly
/// what [`super::apply`] writes for the same payment once it is an event.
pub fn vector(state: Option<&AccountFeatures>, candidate: &Candidate) -> FeatureVector {
    compute(state, &Subject::card(candidate)).1
}

/// The one code path behind every feature: `(t, features)` of `subject` on `state`.
pub(crate) fn compute(
    state: Option<&AccountFeatures>,
    subject: &Subject<'_>,
) -> (Micros, FeatureVector) {
    let t = state.map_or(subject.time, |s| s.feature_time(subject.time));
    let mut v = FeatureVector {
        amount_minor: subject.amount,
        is_online: subject.online,
        card_payments_count_10m: 0,
        card_payments_count_1h: 0,
        card_payments_count_24h: 0,
        card_payments_count_7d: 0,
        card_payments_sum_10m: 0,
        card_payments_sum_1h: 0,
        card_payments_sum_24h: 0,
        card_payments_sum_7d: 0,
        withdrawals_count_24h: 0,
        withdrawals_sum_24h: 0,
        amount_mean: None,
        amount_std: None,
        amount_zscore: None,
        distinct_merchants_24h: 0,
        distinct_merchant_countries_24h: 0,
        // No earlier payment anywhere, so none at this merchant.
        first_time_at_merchant: subject.merchant.map(|_| true),
        merchant_country_differs: None,
        seconds_since_previous_event: None,
        seconds_since_previous_payment: None,
        declines_count_24h: 0,
        online_share_24h: None,
        small_online_payments_10m: 0,
        local_hour: None,
        amount_to_balance: None,
        account_age_seconds: None,
    };
    let Some(state) = state else {
        return (t, v);
    };

    // Card payment windows, in one pass over the 7 days the state keeps. The state may be
    // older than `t` (a candidate scored long after the last event), so every entry is
    // checked against the windows, not only trusted to have been pruned.
    let windows = [WINDOW_10M, WINDOW_1H, WINDOW_24H, WINDOW_7D].map(|w| t.saturating_sub(w));
    let [after_10m, _, after_24h, _] = windows;
    let small_limit = small_amount_limit(state.currency.exponent());
    let mut counts = [0u64; 4];
    let mut sums = [0i128; 4];
    let (mut declines, mut online_24h, mut small_online) = (0u64, 0u64, 0u64);
    let mut merchants = std::collections::BTreeSet::new();
    let mut countries = std::collections::BTreeSet::new();
    for p in &state.payments {
        for (i, after) in windows.iter().enumerate() {
            if p.at > *after {
                counts[i] += 1;
                sums[i] += i128::from(p.amount);
            }
        }
        if p.at > after_24h {
            merchants.insert(p.merchant.as_str());
            countries.insert(p.merchant_country);
            declines += u64::from(p.declined);
            online_24h += u64::from(p.online);
        }
        if p.at > after_10m && p.online && p.amount <= small_limit {
            small_online += 1;
        }
    }
    [
        v.card_payments_count_10m,
        v.card_payments_count_1h,
        v.card_payments_count_24h,
        v.card_payments_count_7d,
    ] = counts.map(count);
    [
        v.card_payments_sum_10m,
        v.card_payments_sum_1h,
        v.card_payments_sum_24h,
        v.card_payments_sum_7d,
    ] = sums.map(clamp);
    v.distinct_merchants_24h = count(merchants.len() as u64);
    v.distinct_merchant_countries_24h = count(countries.len() as u64);
    v.declines_count_24h = count(declines);
    v.small_online_payments_10m = count(small_online);
    let payments_24h = counts[2];
    v.online_share_24h = (payments_24h > 0).then(|| online_24h as f64 / payments_24h as f64);

    let (mut withdrawals, mut withdrawn) = (0u64, 0i128);
    for w in state.withdrawals.iter().filter(|w| w.at > after_24h) {
        withdrawals += 1;
        withdrawn += i128::from(w.amount);
    }
    v.withdrawals_count_24h = count(withdrawals);
    v.withdrawals_sum_24h = clamp(withdrawn);

    let (mean, std) = state.amounts.mean_std();
    v.amount_mean = mean;
    v.amount_std = std;
    v.amount_zscore = match (mean, std) {
        (Some(mean), Some(std)) if std > 0.0 => Some((subject.amount as f64 - mean) / std),
        _ => None,
    };

    if let Some((name, country)) = subject.merchant {
        v.first_time_at_merchant = Some(!state.merchants.contains(name));
        v.merchant_country_differs = Some(country != state.country);
    }
    v.seconds_since_previous_event = Some(seconds_between(state.clock, t));
    v.seconds_since_previous_payment = state.last_payment_at.map(|s| seconds_between(s, t));
    v.local_hour = zones::zone(state.country)
        .zip(DateTime::from_timestamp_micros(t))
        .map(|(zone, utc)| utc.with_timezone(&zone).hour());
    v.amount_to_balance = (state.balance > 0).then(|| subject.amount as f64 / state.balance as f64);
    v.account_age_seconds = Some(seconds_between(state.opened_at, t));
    (t, v)
}

/// `5 × 10^exponent` minor units: 5 major units of the currency.
fn small_amount_limit(exponent: u8) -> MinorUnits {
    10i64
        .checked_pow(u32::from(exponent))
        .and_then(|unit| unit.checked_mul(5))
        .unwrap_or(MinorUnits::MAX)
}

/// Seconds from `from` to `to` (µs): the exact difference converted to `f64`, then
/// divided by 10⁶.
fn seconds_between(from: Micros, to: Micros) -> f64 {
    (i128::from(to) - i128::from(from)) as f64 / 1e6
}

fn count(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn clamp(sum: i128) -> i64 {
    i64::try_from(sum).unwrap_or(if sum < 0 { i64::MIN } else { i64::MAX })
}
