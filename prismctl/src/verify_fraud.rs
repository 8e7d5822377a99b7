//! `prismctl verify fraud`: the fraud model's online store and offline rows against an
//! **independent, plain** implementation of the feature definitions (FEATURES.md in the
//! fraud crate), written here from the definitions and sharing no code with the feature
//! engine but the country → time-zone table (data that is part of the definitions).
//!
//! The plain way keeps nothing incremental: for every card payment and withdrawal it
//! looks at the account's whole earlier history again (filters, sums and counts over a
//! list), and for the statistics it sums every earlier amount again. Compared, exactly:
//! - every offline feature row (`rows/<event id>`: identifiers, times and every feature;
//!   where the row was read, Kafka partition and offset, is left out, as a rebuild from
//!   the event store has none) and every label (`labels/<report event id>`);
//! - every account's online state, through what it serves: `online/<account>` is its
//!   version and the feature vector of a fixed probe payment one second after the
//!   account's clock, computed by the engine on the stored state and by the plain way on
//!   the account's whole history.
//!
//! `--sample PERCENT` compares only the accounts whose id falls in that share (the same
//! accounts on both sides).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Timelike as _};
use prism_events::event::{
    CardChannel, CardPaymentApproved, CardPaymentDeclined, WithdrawalChannel,
};
use prism_events::{AccountEvent, Country, Currency, Envelope};
use prism_fraud::copies::FraudCopy;
use prism_fraud::features::{self, Candidate, FEATURE_SET_VERSION};
use prism_fraud::offline::Table;
use prism_fraud::rows::read_table;
use prism_fraud::sink::decode_state;
use prism_projector::checkpoint::redis::keys_matching;
use prism_projector::verify::{Snapshot, Stored, Verify};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// The probe payment every account's online state is compared through.
const PROBE_AMOUNT_MINOR: i64 = 1_234;
const PROBE_MERCHANT: &str = "PRISM VERIFY PROBE";
const PROBE_COUNTRY: &str = "US";
/// The probe is made this long after the account's clock.
const PROBE_AFTER_MICROS: i64 = 1_000_000;

const MINUTE: i64 = 60 * 1_000_000;
const TEN_MINUTES: i64 = 10 * MINUTE;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;

/// The fraud model's side of `verify`, on one copy.
#[derive(Debug)]
pub struct FraudVerify {
    copy: FraudCopy,
    sample_percent: u8,
}

impl FraudVerify {
    pub fn new(copy: FraudCopy, sample_percent: u8) -> Self {
        Self {
            copy,
            sample_percent: sample_percent.clamp(1, 100),
        }
    }

    fn sampled(&self, account: Uuid) -> bool {
        account.as_u128() % 100 < u128::from(self.sample_percent)
    }
}

fn time_text(micros: i64) -> Value {
    DateTime::from_timestamp_micros(micros).map_or(Value::from(micros), |t| {
        Value::from(t.to_rfc3339_opts(SecondsFormat::Micros, true))
    })
}

fn float(value: Option<f64>) -> Value {
    value
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// An earlier event, as the plain way reads it.
#[derive(Debug, Clone)]
struct Past {
    /// Feature time, µs.
    t: i64,
    kind: PastKind,
}

#[derive(Debug, Clone)]
enum PastKind {
    Payment {
        amount: i64,
        merchant: String,
        country: Country,
        online: bool,
        declined: bool,
    },
    Withdrawal {
        amount: i64,
    },
    Other,
}

/// What is scored: a card payment or a withdrawal.
struct Scored<'a> {
    amount: i64,
    online: bool,
    /// Merchant name and country; `None` for a withdrawal.
    merchant: Option<(&'a str, Country)>,
}

/// One account's history folded the plain way.
#[derive(Debug, Default)]
struct Account {
    opened_at: Option<i64>,
    country: Option<Country>,
    currency: Option<Currency>,
    clock: Option<i64>,
    balance: i128,
    past: Vec<Past>,
}

impl Account {
    /// The features of `scored` at feature time `t` on the history so far.
    fn features(&self, t: i64, scored: &Scored<'_>) -> Map<String, Value> {
        let within = |w: i64| {
            self.past
                .iter()
                .filter(move |p| p.t > t - w && p.t <= t)
                .map(|p| &p.kind)
        };
        let payments = |w: i64| {
            within(w).filter_map(|k| match k {
                PastKind::Payment {
                    amount,
                    merchant,
                    country,
                    online,
                    declined,
                } => Some((*amount, merchant.as_str(), *country, *online, *declined)),
                _ => None,
            })
        };
        let clamp =
            |sum: i128| i64::try_from(sum).unwrap_or(if sum < 0 { i64::MIN } else { i64::MAX });
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut out = Map::new();
        out.insert("amount_minor".into(), json!(scored.amount));
        out.insert("is_online".into(), json!(scored.online));
        for (name, w) in [
            ("10m", TEN_MINUTES),
            ("1h", HOUR),
            ("24h", DAY),
            ("7d", WEEK),
        ] {
            out.insert(
                format!("card_payments_count_{name}"),
                json!(count(payments(w).count())),
            );
        }
        for (name, w) in [
            ("10m", TEN_MINUTES),
            ("1h", HOUR),
            ("24h", DAY),
            ("7d", WEEK),
        ] {
            let sum: i128 = payments(w).map(|p| i128::from(p.0)).sum();
            out.insert(format!("card_payments_sum_{name}"), json!(clamp(sum)));
        }
        let withdrawals: Vec<i64> = within(DAY)
            .filter_map(|k| match k {
                PastKind::Withdrawal { amount } => Some(*amount),
                _ => None,
            })
            .collect();
        out.insert(
            "withdrawals_count_24h".into(),
            json!(count(withdrawals.len())),
        );
        out.insert(
            "withdrawals_sum_24h".into(),
            json!(clamp(withdrawals.iter().map(|a| i128::from(*a)).sum())),
        );

        // All-time statistics of every earlier card payment, summed again from the list.
        let amounts: Vec<i128> = self
            .past
            .iter()
            .filter_map(|p| match &p.kind {
                PastKind::Payment { amount, .. } => Some(i128::from(*amount)),
                _ => None,
            })
            .collect();
        let n = i128::try_from(amounts.len()).unwrap_or(i128::MAX);
        let sum = amounts.iter().try_fold(0i128, |s, a| s.checked_add(*a));
        let squares = amounts.iter().try_fold(0i128, |s, a| {
            a.checked_mul(*a).and_then(|q| s.checked_add(q))
        });
        let mean = match sum {
            Some(sum) if n > 0 => Some(sum as f64 / n as f64),
            _ => None,
        };
        let std = match (sum, squares) {
            (Some(sum), Some(squares)) if n >= 2 => n
                .checked_mul(squares)
                .zip(sum.checked_mul(sum))
                .and_then(|(a, b)| a.checked_sub(b))
                .zip(n.checked_mul(n - 1))
                .map(|(num, den)| (num as f64 / den as f64).sqrt()),
            _ => None,
        };
        let z = match (mean, std) {
            (Some(mean), Some(std)) if std != 0.0 => Some((scored.amount as f64 - mean) / std),
            _ => None,
        };
        out.insert("amount_mean".into(), float(mean));
        out.insert("amount_std".into(), float(std));
        out.insert("amount_zscore".into(), float(z));

        let merchants: BTreeSet<&str> = payments(DAY).map(|p| p.1).collect();
        let countries: BTreeSet<Country> = payments(DAY).map(|p| p.2).collect();
        out.insert(
            "distinct_merchants_24h".into(),
            json!(count(merchants.len())),
        );
        out.insert(
            "distinct_merchant_countries_24h".into(),
            json!(count(countries.len())),
        );
        let first_time = scored.merchant.map(|(name, _)| {
            !self
                .past
                .iter()
                .any(|p| matches!(&p.kind, PastKind::Payment { merchant, .. } if merchant == name))
        });
        out.insert("first_time_at_merchant".into(), json!(first_time));
        let differs = match (scored.merchant, self.country) {
            (Some((_, merchant_country)), Some(country)) => Some(merchant_country != country),
            _ => None,
        };
        out.insert("merchant_country_differs".into(), json!(differs));
        let since = |s: Option<i64>| float(s.map(|s| (t - s) as f64 / 1e6));
        let previous_event = self.past.last().map(|p| p.t);
        let previous_payment = self
            .past
            .iter()
            .rev()
            .find(|p| matches!(p.kind, PastKind::Payment { .. }))
            .map(|p| p.t);
        out.insert("seconds_since_previous_event".into(), since(previous_event));
        out.insert(
            "seconds_since_previous_payment".into(),
            since(previous_payment),
        );
        out.insert(
            "declines_count_24h".into(),
            json!(count(payments(DAY).filter(|p| p.4).count())),
        );
        let in_day = payments(DAY).count();
        let online_in_day = payments(DAY).filter(|p| p.3).count();
        out.insert(
            "online_share_24h".into(),
            float((in_day > 0).then(|| online_in_day as f64 / in_day as f64)),
        );
        let small = self
            .currency
            .map(|c| 5 * 10i64.pow(u32::from(c.exponent())))
            .unwrap_or(0);
        out.insert(
            "small_online_payments_10m".into(),
            json!(count(
                payments(TEN_MINUTES)
                    .filter(|p| p.3 && p.0 <= small)
                    .count()
            )),
        );
        let hour = self
            .country
            .and_then(features::zones::zone_name)
            .and_then(|name| name.parse::<chrono_tz::Tz>().ok())
            .and_then(|zone| {
                DateTime::from_timestamp_micros(t).map(|t| t.with_timezone(&zone).hour())
            });
        out.insert("local_hour".into(), json!(hour));
        let to_balance = (self.opened_at.is_some() && self.balance > 0)
            .then(|| scored.amount as f64 / self.balance as f64);
        out.insert("amount_to_balance".into(), float(to_balance));
        out.insert(
            "account_age_seconds".into(),
            float(self.opened_at.map(|o| (t - o) as f64 / 1e6)),
        );
        out
    }

    /// Folds `event`; returns its row's features for a card payment or a withdrawal.
    fn fold(&mut self, event: &Envelope) -> Option<(i64, &'static str, Map<String, Value>)> {
        let time = event.time.timestamp_micros();
        if matches!(event.event, AccountEvent::PaymentReportedFraudulent(_)) {
            return None;
        }
        let t = self.clock.map_or(time, |c| c.max(time));
        let (row, kind) = match &event.event {
            AccountEvent::AccountOpened(e) => {
                self.opened_at = Some(t);
                self.country = Some(e.country);
                self.currency = Some(e.currency);
                (None, PastKind::Other)
            }
            AccountEvent::CardPaymentApproved(CardPaymentApproved { payment: p })
            | AccountEvent::CardPaymentDeclined(CardPaymentDeclined { payment: p, .. }) => {
                let declined = matches!(event.event, AccountEvent::CardPaymentDeclined(_));
                let online = p.channel == CardChannel::Online;
                let features = self.features(
                    t,
                    &Scored {
                        amount: p.amount_minor,
                        online,
                        merchant: Some((&p.merchant_name, p.merchant_country)),
                    },
                );
                let event_type = if declined {
                    "card_payment_declined"
                } else {
                    "card_payment_approved"
                };
                (
                    Some((event_type, features)),
                    PastKind::Payment {
                        amount: p.amount_minor,
                        merchant: p.merchant_name.clone(),
                        country: p.merchant_country,
                        online,
                        declined,
                    },
                )
            }
            AccountEvent::MoneyWithdrawn(e) => {
                let features = self.features(
                    t,
                    &Scored {
                        amount: e.amount_minor,
                        online: e.channel == WithdrawalChannel::Online,
                        merchant: None,
                    },
                );
                (
                    Some(("withdrawal", features)),
                    PastKind::Withdrawal {
                        amount: e.amount_minor,
                    },
                )
            }
            _ => (None, PastKind::Other),
        };
        self.balance += i128::from(event.event.balance_change());
        self.clock = Some(t);
        self.past.push(Past { t, kind });
        row.map(|(event_type, features)| (t, event_type, features))
    }

    /// The probe's features one second after the clock.
    fn probe(&self) -> Option<Map<String, Value>> {
        let t = self.clock? + PROBE_AFTER_MICROS;
        let country = Country::parse(PROBE_COUNTRY).ok()?;
        Some(self.features(
            t,
            &Scored {
                amount: PROBE_AMOUNT_MINOR,
                online: true,
                merchant: Some((PROBE_MERCHANT, country)),
            },
        ))
    }
}

/// The probe as the engine scores it on a stored state.
fn engine_probe(state: &features::AccountFeatures) -> anyhow::Result<Value> {
    let t = state.clock_micros() + PROBE_AFTER_MICROS;
    let candidate = Candidate {
        amount_minor: PROBE_AMOUNT_MINOR,
        merchant_name: PROBE_MERCHANT.into(),
        merchant_category: "0000".into(),
        merchant_country: Country::parse(PROBE_COUNTRY)?,
        channel: CardChannel::Online,
        time: DateTime::from_timestamp_micros(t).context("a probe time in range")?,
    };
    Ok(serde_json::to_value(features::vector(
        Some(state),
        &candidate,
    ))?)
}

#[async_trait]
impl Verify for FraudVerify {
    async fn stored(&self) -> anyhow::Result<Stored> {
        let mut documents = Snapshot::new();
        let mut versions = HashMap::new();
        let prefix = self.copy.keys.prefix().to_owned();
        let mut conn = self.copy.conn.clone();
        let keys = keys_matching(&mut conn, &format!("{prefix}a:*"))
            .await
            .context("listing the online store's accounts")?;
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("HMGET").arg(key).arg("v").arg("s");
            }
            let rows: Vec<(Option<u64>, Option<Vec<u8>>)> = pipe
                .query_async(&mut conn)
                .await
                .context("reading the online store's accounts")?;
            for (key, (version, state)) in chunk.iter().zip(rows) {
                let Some(id) = key
                    .strip_prefix(&prefix)
                    .and_then(|k| k.strip_prefix("a:"))
                    .and_then(|k| k.parse::<Uuid>().ok())
                else {
                    continue;
                };
                if !self.sampled(id) {
                    continue;
                }
                let version = version.unwrap_or(0);
                versions.insert(id, version);
                let probe = match state.filter(|s| !s.is_empty()) {
                    Some(bytes) => engine_probe(
                        &decode_state(&bytes).with_context(|| format!("{key}'s state"))?,
                    )?,
                    None => Value::Null,
                };
                documents.insert(
                    format!("online/{id}"),
                    json!({ "version": version, "probe": probe }),
                );
            }
        }
        let offline = self.copy.offline.clone();
        let (rows, labels) = tokio::task::spawn_blocking(move || {
            Ok::<_, prism_fraud::offline::OfflineError>((
                read_table(&offline, Table::Rows)?,
                read_table(&offline, Table::Labels)?,
            ))
        })
        .await
        .context("reading the offline store")??;
        for (id, mut row) in rows {
            let account = row["account_id"].as_str().and_then(|a| a.parse().ok());
            if !account.is_some_and(|a| self.sampled(a)) {
                continue;
            }
            if let Some(object) = row.as_object_mut() {
                object.remove("kafka_partition");
                object.remove("kafka_offset");
            }
            documents.insert(format!("rows/{id}"), row);
        }
        for (id, label) in labels {
            let account = label["account_id"].as_str().and_then(|a| a.parse().ok());
            if account.is_some_and(|a| self.sampled(a)) {
                documents.insert(format!("labels/{id}"), label);
            }
        }
        Ok(Stored {
            documents,
            versions,
        })
    }

    fn expected(&self, events: Vec<Envelope>) -> Snapshot {
        let mut by_account: BTreeMap<Uuid, Vec<Envelope>> = BTreeMap::new();
        for event in events {
            if self.sampled(event.account_id.0) {
                by_account
                    .entry(event.account_id.0)
                    .or_default()
                    .push(event);
            }
        }
        let mut out = Snapshot::new();
        for (id, mut events) in by_account {
            events.sort_by_key(|e| e.account_version);
            let mut account = Account::default();
            let mut version = 0;
            for event in &events {
                // The engine refuses what does not follow; so does the plain way.
                if event.account_version != version + 1
                    || (account.opened_at.is_none()
                        && !matches!(event.event, AccountEvent::AccountOpened(_)))
                {
                    break;
                }
                version = event.account_version;
                if let AccountEvent::PaymentReportedFraudulent(report) = &event.event {
                    out.insert(
                        format!("labels/{}", event.id),
                        json!({
                            "payment_event_id": report.payment_event_id.to_string(),
                            "account_id": id.to_string(),
                            "reported_at": time_text(event.time.timestamp_micros()),
                            "report_event_id": event.id.to_string(),
                            "reason": report.reason,
                        }),
                    );
                }
                if let Some((t, event_type, features)) = account.fold(event) {
                    let mut row = Map::new();
                    row.insert("event_id".into(), json!(event.id.to_string()));
                    row.insert("account_id".into(), json!(id.to_string()));
                    row.insert("account_version".into(), json!(event.account_version));
                    row.insert(
                        "event_time".into(),
                        time_text(event.time.timestamp_micros()),
                    );
                    row.insert("feature_time".into(), time_text(t));
                    row.insert("event_type".into(), json!(event_type));
                    row.insert("feature_set_version".into(), json!(FEATURE_SET_VERSION));
                    row.extend(features);
                    out.insert(format!("rows/{}", event.id), Value::Object(row));
                }
            }
            if version > 0 {
                let probe = account.probe().map_or(Value::Null, Value::Object);
                out.insert(
                    format!("online/{id}"),
                    json!({ "version": version, "probe": probe }),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use prism_events::testing::{deposited, envelope, opened, payment, withdrawn};
    use prism_events::AccountId;

    use super::*;

    #[test]
    fn the_plain_way_matches_the_engine_on_a_small_history() {
        let account = AccountId(Uuid::from_u128(42));
        let at = |s: &str| s.parse::<DateTime<chrono::Utc>>().expect("a time");
        let event = |version: u64, time: &str, event: AccountEvent| {
            envelope(event)
                .account(account)
                .version(version)
                .at(at(time))
                .build()
        };
        // Across the spring DST change in Berlin; the withdrawal's time goes back (another
        // instance's clock), so the feature clock holds it up.
        let events = vec![
            event(1, "2026-03-28T20:00:00Z", opened("Ada", "DE", "EUR")),
            event(2, "2026-03-28T20:05:00Z", deposited(100_000)),
            event(
                3,
                "2026-03-29T00:59:59Z",
                payment(450)
                    .online()
                    .merchant("SHOP A")
                    .country("NL")
                    .approved(),
            ),
            event(4, "2026-03-29T01:00:00Z", payment(300).approved()),
            event(5, "2026-03-29T00:30:00Z", withdrawn(1_000)),
            event(
                6,
                "2026-03-29T01:00:00Z",
                payment(300)
                    .merchant("SHOP A")
                    .online()
                    .declined(prism_events::event::DeclineReason::InsufficientFunds),
            ),
        ];
        let mut plain = Account::default();
        let mut state: Option<features::AccountFeatures> = None;
        for event in &events {
            let ours = plain.fold(event).map(|(_, _, f)| Value::Object(f));
            let (next, row) = features::apply(state.as_ref(), event).expect("folds");
            let theirs = row.map(|r| serde_json::to_value(r.features).expect("json"));
            assert_eq!(ours, theirs, "version {}", event.account_version);
            state = Some(next);
        }
        let state = state.expect("a state");
        assert_eq!(
            Some(Value::Object(plain.probe().expect("a probe"))),
            Some(engine_probe(&state).expect("a probe")),
        );
    }
}
