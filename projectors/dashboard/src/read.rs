//! Reading the model: the whole summary in one pipelined round trip ([`read_summary`]), a
//! time series ([`read_series`]). Turning Redis's answers into the JSON the page shows is
//! pure ([`Raw::summarise`]), so the window sums are unit-tested without Redis.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::ConnectionManager;
use serde::Serialize;

use crate::buckets::{Grain, Span, Window};
use crate::model::{Keys, Top};

/// Entries of the feed a summary carries.
pub const FEED_SHOWN: usize = 50;

/// Everything the page shows (`GET /v1/dashboard/summary`, each stream frame).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub as_of: String,
    pub copy: u32,
    /// 0 from the summary endpoint; the frame's number on the stream.
    pub tick: u64,
    /// Events in the 10 complete seconds before `as_of`.
    pub events_last_10s: i64,
    /// Minor-unit digits of every currency in the summary.
    pub currencies: BTreeMap<String, u8>,
    pub windows: BTreeMap<&'static str, WindowSummary>,
    pub active_accounts: Active,
    pub accounts: BTreeMap<&'static str, i64>,
    pub feed: Vec<BTreeMap<String, serde_json::Value>>,
    /// Filled in by the service from its health poller.
    pub pipeline: serde_json::Value,
    /// On the stream: the last 10 one-second buckets, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<Vec<SecondPoint>>,
    /// On the stream: the last 2 one-minute buckets, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minutes: Option<Vec<MinutePoint>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WindowSummary {
    pub events: i64,
    pub by_type: BTreeMap<String, i64>,
    pub money_in: BTreeMap<String, i64>,
    pub money_out: BTreeMap<String, i64>,
    pub card_approved: i64,
    pub card_declined: i64,
    /// Declined card payments per 10,000 card payments; `None` without any.
    pub decline_rate_bp: Option<i64>,
    pub declines_by_reason: BTreeMap<String, i64>,
    pub new_accounts: i64,
    pub top_merchants_by_volume: Vec<Ranked>,
    pub top_merchants_by_declines: Vec<Ranked>,
    pub top_countries: Vec<Ranked>,
}

/// One entry of a top list: `name` for merchants, `country` for countries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ranked {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    pub count: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Active {
    /// Distinct accounts with an event in the current UTC hour (HyperLogLog estimate).
    pub hour: i64,
    /// … in the current UTC day.
    pub day: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecondPoint {
    pub t: String,
    pub events: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MinutePoint {
    pub t: String,
    pub events: i64,
    pub money_in: BTreeMap<String, i64>,
    pub money_out: BTreeMap<String, i64>,
}

/// A bucket's counters, as `HGETALL` answers.
pub type Counters = HashMap<String, i64>;

/// What one summary read brings back.
#[derive(Debug, Clone, Default)]
pub struct Raw {
    /// Per-second counters of the 1-minute window, oldest first.
    pub seconds: Vec<(i64, Counters)>,
    /// Per-minute counters of the last hour, oldest first.
    pub minutes: Vec<(i64, Counters)>,
    /// Per-hour counters of the last 24 hours, oldest first.
    pub hours: Vec<(i64, Counters)>,
    /// Window name → top list → (member, score), any order.
    pub tops: HashMap<(&'static str, Top), Vec<(String, i64)>>,
    pub active: Active,
    pub status: Counters,
    /// Feed entries, newest first: (stream id, fields).
    pub feed: Vec<(String, Vec<(String, String)>)>,
}

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The granularity's buckets a window reads, as a slice of what was read.
fn window_buckets(raw: &Raw, window: Window, now: DateTime<Utc>) -> Vec<&Counters> {
    let (grain, _) = window.shape();
    let range = window.buckets(now);
    let source = match grain {
        Grain::Second => &raw.seconds,
        Grain::Minute => &raw.minutes,
        _ => &raw.hours,
    };
    source
        .iter()
        .filter(|(n, _)| range.contains(n))
        .map(|(_, c)| c)
        .collect()
}

/// Sums counters into a window's tiles (without its top lists).
fn sum(buckets: &[&Counters]) -> WindowSummary {
    let mut w = WindowSummary::default();
    for counters in buckets {
        for (field, value) in *counters {
            let value = *value;
            match field.as_str() {
                "n" => w.events += value,
                "new" => w.new_accounts += value,
                "ok" => w.card_approved += value,
                "no" => w.card_declined += value,
                f => {
                    let (kind, name) = f.split_once(':').unwrap_or((f, ""));
                    let map = match kind {
                        "t" => &mut w.by_type,
                        "in" => &mut w.money_in,
                        "out" => &mut w.money_out,
                        "r" => &mut w.declines_by_reason,
                        _ => continue,
                    };
                    *map.entry(name.to_owned()).or_default() += value;
                }
            }
        }
    }
    let cards = w.card_approved + w.card_declined;
    w.decline_rate_bp = (cards > 0).then(|| w.card_declined * 10_000 / cards);
    w
}

/// The `n` highest of `members`, ties by name.
fn top(members: &[(String, i64)], n: usize, country: bool) -> Vec<Ranked> {
    let mut sorted: Vec<&(String, i64)> = members.iter().filter(|(_, s)| *s > 0).collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted
        .into_iter()
        .take(n)
        .map(|(m, count)| Ranked {
            name: (!country).then(|| m.clone()),
            country: country.then(|| m.clone()),
            count: *count,
        })
        .collect()
}

impl Raw {
    /// The summary at reference time `now`.
    pub fn summarise(&self, copy: u32, now: DateTime<Utc>, top_n: usize) -> Summary {
        let mut windows = BTreeMap::new();
        let mut currencies = BTreeMap::new();
        for window in Window::ALL {
            let mut w = sum(&window_buckets(self, window, now));
            let list = |t: Top| self.tops.get(&(window.name(), t)).map_or(&[][..], |v| v);
            w.top_merchants_by_volume = top(list(Top::MerchantVolume), top_n, false);
            w.top_merchants_by_declines = top(list(Top::MerchantDeclines), top_n, false);
            w.top_countries = top(list(Top::Countries), top_n, true);
            for code in w.money_in.keys().chain(w.money_out.keys()) {
                if let Ok(c) = prism_events::Currency::parse(code) {
                    currencies.insert(code.clone(), c.exponent());
                }
            }
            windows.insert(window.name(), w);
        }
        let this_second = Grain::Second.bucket(now);
        let events_last_10s = self
            .seconds
            .iter()
            .filter(|(n, _)| (this_second - 10..this_second).contains(n))
            .map(|(_, c)| c.get("n").copied().unwrap_or(0))
            .sum();
        let accounts = crate::fold::Status::ALL
            .into_iter()
            .map(|s| {
                (
                    s.as_str(),
                    self.status.get(s.as_str()).copied().unwrap_or(0),
                )
            })
            .collect();
        let feed = self
            .feed
            .iter()
            .map(|(id, fields)| feed_entry(id, fields))
            .collect();
        let seconds = self
            .seconds
            .iter()
            .filter(|(n, _)| *n > this_second - 10)
            .map(|(n, c)| SecondPoint {
                t: text(Grain::Second.start(*n)),
                events: c.get("n").copied().unwrap_or(0),
            })
            .collect();
        let this_minute = Grain::Minute.bucket(now);
        let minutes = self
            .minutes
            .iter()
            .filter(|(n, _)| *n > this_minute - 2)
            .map(|(n, c)| {
                let w = sum(&[c]);
                MinutePoint {
                    t: text(Grain::Minute.start(*n)),
                    events: w.events,
                    money_in: w.money_in,
                    money_out: w.money_out,
                }
            })
            .collect();
        Summary {
            as_of: text(now),
            copy,
            tick: 0,
            events_last_10s,
            currencies,
            windows,
            active_accounts: self.active.clone(),
            accounts,
            feed,
            pipeline: serde_json::Value::Null,
            seconds: Some(seconds),
            minutes: Some(minutes),
        }
    }
}

/// A feed entry as the page shows it: typed numbers and flags, absent fields as null.
fn feed_entry(id: &str, fields: &[(String, String)]) -> BTreeMap<String, serde_json::Value> {
    use serde_json::Value;
    let mut out: BTreeMap<String, Value> = ["merchant", "country", "reason"]
        .into_iter()
        .map(|k| (k.to_owned(), Value::Null))
        .collect();
    out.insert("id".into(), Value::from(id));
    for (k, v) in fields {
        let value = match k.as_str() {
            "version" | "amount_minor" => v.parse::<i64>().map_or(Value::Null, Value::from),
            _ => Value::from(v.as_str()),
        };
        out.insert(k.clone(), value);
    }
    let declined = out.get("declined").and_then(Value::as_str) == Some("1");
    out.insert("declined".into(), Value::from(declined));
    out
}

/// Reads everything the summary needs in one pipelined round trip.
pub async fn read_raw(
    conn: &ConnectionManager,
    keys: &Keys,
    now: DateTime<Utc>,
) -> redis::RedisResult<Raw> {
    let seconds: Vec<i64> = Window::OneMinute.buckets(now).collect();
    let minutes: Vec<i64> = Window::OneHour.buckets(now).collect();
    let hours: Vec<i64> = Window::OneDay.buckets(now).collect();
    let mut pipe = redis::pipe();
    for (grain, list) in [
        (Grain::Second, &seconds),
        (Grain::Minute, &minutes),
        (Grain::Hour, &hours),
    ] {
        for n in list {
            pipe.cmd("HGETALL").arg(keys.counters(grain, *n));
        }
    }
    let mut tops = Vec::new();
    for window in Window::ALL {
        let (grain, _) = window.shape();
        for t in Top::ALL {
            let sources: Vec<String> = window.buckets(now).map(|n| keys.top(t, grain, n)).collect();
            pipe.cmd("ZUNION")
                .arg(sources.len())
                .arg(&sources)
                .arg("WITHSCORES");
            tops.push((window.name(), t));
        }
    }
    pipe.cmd("PFCOUNT")
        .arg(keys.distinct(Grain::Hour, Grain::Hour.bucket(now)));
    pipe.cmd("PFCOUNT")
        .arg(keys.distinct(Grain::Day, Grain::Day.bucket(now)));
    pipe.cmd("HGETALL").arg(keys.status());
    pipe.cmd("XREVRANGE")
        .arg(keys.feed())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(FEED_SHOWN);
    let mut conn = conn.clone();
    let answers: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
    let mut it = answers.into_iter();
    let mut next = || it.next().unwrap_or(redis::Value::Nil);
    let mut raw = Raw::default();
    for (list, out) in [
        (&seconds, &mut raw.seconds),
        (&minutes, &mut raw.minutes),
        (&hours, &mut raw.hours),
    ] {
        for n in list {
            let counters: Counters = redis::from_redis_value(&next())?;
            out.push((*n, counters));
        }
    }
    for key in tops {
        let members: Vec<(String, f64)> = redis::from_redis_value(&next())?;
        // Scores are whole counts (ZINCRBY by integers): exact in a double far beyond
        // any count a window could reach.
        let members = members
            .into_iter()
            .map(|(m, s)| (m, s.round() as i64))
            .collect();
        raw.tops.insert(key, members);
    }
    raw.active.hour = redis::from_redis_value(&next())?;
    raw.active.day = redis::from_redis_value(&next())?;
    raw.status = redis::from_redis_value(&next())?;
    let feed: Vec<(String, Vec<(String, String)>)> = redis::from_redis_value(&next())?;
    raw.feed = feed;
    Ok(raw)
}

/// A series' metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    Events,
    MoneyIn(String),
    MoneyOut(String),
    CardApproved,
    CardDeclined,
    NewAccounts,
}

impl Metric {
    pub const NAMES: [&'static str; 6] = [
        "events",
        "money_in",
        "money_out",
        "card_approved",
        "card_declined",
        "new_accounts",
    ];

    /// The counter field it reads.
    pub fn field(&self) -> String {
        match self {
            Metric::Events => "n".into(),
            Metric::MoneyIn(c) => format!("in:{c}"),
            Metric::MoneyOut(c) => format!("out:{c}"),
            Metric::CardApproved => "ok".into(),
            Metric::CardDeclined => "no".into(),
            Metric::NewAccounts => "new".into(),
        }
    }
}

/// One point of a series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Point {
    pub t: String,
    pub v: i64,
}

/// Every bucket of `span` ending with the one holding `now`, zeros included.
pub async fn read_series(
    conn: &ConnectionManager,
    keys: &Keys,
    metric: &Metric,
    span: Span,
    now: DateTime<Utc>,
) -> redis::RedisResult<Vec<Point>> {
    let (grain, _) = span.shape();
    let buckets: Vec<i64> = span.buckets(now).collect();
    let field = metric.field();
    let mut pipe = redis::pipe();
    for n in &buckets {
        pipe.cmd("HGET").arg(keys.counters(grain, *n)).arg(&field);
    }
    let mut conn = conn.clone();
    let values: Vec<Option<i64>> = pipe.query_async(&mut conn).await?;
    Ok(buckets
        .iter()
        .zip(values)
        .map(|(n, v)| Point {
            t: text(grain.start(*n)),
            v: v.unwrap_or(0),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn counters(pairs: &[(&str, i64)]) -> Counters {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn windows_sum_only_their_buckets_and_the_rate_is_in_basis_points() {
        let now = at("2026-11-29T00:00:00.000Z");
        let s = Grain::Second.bucket(now);
        let mut raw = Raw::default();
        // 23:59:59 (in the 1-minute window), 23:59:00 (61 s before: out of it).
        raw.seconds.push((s - 60, counters(&[("n", 100)])));
        raw.seconds.push((
            s - 1,
            counters(&[
                ("n", 3),
                ("ok", 2),
                ("no", 1),
                ("r:account_frozen", 1),
                ("in:EUR", 250),
            ]),
        ));
        raw.seconds.push((
            s,
            counters(&[("n", 1), ("t:prism.account.opened", 1), ("new", 1)]),
        ));
        let m = Grain::Minute.bucket(now);
        raw.minutes.push((m - 15, counters(&[("n", 40)])));
        raw.minutes
            .push((m - 1, counters(&[("n", 7), ("out:JPY", 500)])));
        let sum = raw.summarise(1, now, 10);
        let one = &sum.windows["1m"];
        assert_eq!(one.events, 4);
        assert_eq!((one.card_approved, one.card_declined), (2, 1));
        assert_eq!(one.decline_rate_bp, Some(3_333));
        assert_eq!(one.declines_by_reason["account_frozen"], 1);
        assert_eq!(one.money_in["EUR"], 250);
        assert_eq!(one.new_accounts, 1);
        assert_eq!(
            sum.windows["15m"].events, 7,
            "minute m-15 is 16 minutes back"
        );
        assert_eq!(sum.windows["1h"].events, 47);
        assert_eq!(sum.windows["24h"].decline_rate_bp, None, "no card payment");
        assert_eq!(sum.events_last_10s, 3, "the current second is not complete");
        assert_eq!(sum.currencies.get("JPY"), Some(&0));
        assert_eq!(sum.currencies.get("EUR"), Some(&2));
    }

    #[test]
    fn top_lists_are_highest_first_with_ties_by_name_and_cut_at_n() {
        let members = vec![
            ("b".to_owned(), 5),
            ("a".to_owned(), 5),
            ("c".to_owned(), 9),
            ("d".to_owned(), 1),
        ];
        let names: Vec<_> = top(&members, 3, false)
            .into_iter()
            .map(|r| (r.name.unwrap_or_default(), r.count))
            .collect();
        assert_eq!(
            names,
            [
                ("c".to_owned(), 9),
                ("a".to_owned(), 5),
                ("b".to_owned(), 5)
            ]
        );
    }

    #[test]
    fn feed_entries_get_numbers_and_flags() {
        let e = feed_entry(
            "1-0",
            &[
                ("type".into(), "prism.account.card_payment_declined".into()),
                ("amount_minor".into(), "1500".into()),
                ("reason".into(), "insufficient_funds".into()),
                ("declined".into(), "1".into()),
            ],
        );
        assert_eq!(e["amount_minor"], serde_json::json!(1500));
        assert_eq!(e["declined"], serde_json::json!(true));
        assert_eq!(e["merchant"], serde_json::Value::Null);
    }
}
