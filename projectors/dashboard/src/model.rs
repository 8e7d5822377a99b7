//! The Redis model: key names, and what a batch of [`Effect`]s writes, summed (pure).
//!
//! Copy N of the model lives under `<namespace>:c<N>:` ([`Keys`]):
//!
//! | key | type | holds | bounded by |
//! |---|---|---|---|
//! | `s:<sec>`, `m:<min>`, `h:<hour>` | hash | `n` events, `t:<type>` by CloudEvents type, `new` accounts opened, `in:<CUR>`, `out:<CUR>`, `ok`/`no` card payments approved/declined, `r:<reason>` declines | TTL (10 min; 48 h; 48 h) |
//! | `tv:<g>:<n>`, `td:<g>:<n>`, `tc:<g>:<n>` | sorted set | card payments by merchant approved (`v`olume), declined (`d`), by merchant `c`ountry | TTL: the longest window that reads them (1 min of seconds, 1 h of minutes, 24 h of hours) |
//! | `u:h:<hour>`, `u:d:<day>` | HyperLogLog | distinct accounts with an event | TTL (48 h; 7 days) |
//! | `status` | hash | accounts `open`, `frozen`, `closed` | 3 fields |
//! | `a:<account>` | hash | `v` version, `c` currency, `s` status | one per account |
//! | `feed` | stream | the latest large or declined transactions | `feed_max` entries |
//! | `pos:<partition>` | hash | the kit's position and last error | one per partition |
//!
//! Bucket numbers count seconds, minutes, hours or days from the Unix epoch (see
//! [`crate::buckets`]). Every bucket key expires in event time ([`Keys::expires_at`]).
//! Amounts are integer minor units, summed with `HINCRBY` (64-bit, exact).

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::buckets::Grain;
use crate::fold::Effect;

/// The granularities counters and top lists are kept at.
pub const COUNTER_GRAINS: [Grain; 3] = [Grain::Second, Grain::Minute, Grain::Hour];
/// The granularities distinct accounts are counted at.
pub const DISTINCT_GRAINS: [Grain; 2] = [Grain::Hour, Grain::Day];

/// A top list's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Top {
    /// Approved card payments by merchant.
    MerchantVolume,
    /// Declined card payments by merchant.
    MerchantDeclines,
    /// Card payments by merchant country.
    Countries,
}

impl Top {
    pub const ALL: [Top; 3] = [Top::MerchantVolume, Top::MerchantDeclines, Top::Countries];

    pub const fn tag(self) -> &'static str {
        match self {
            Top::MerchantVolume => "tv",
            Top::MerchantDeclines => "td",
            Top::Countries => "tc",
        }
    }

    pub fn parse_tag(tag: &str) -> Option<Self> {
        Top::ALL.into_iter().find(|t| t.tag() == tag)
    }
}

/// Key names of one copy, and how long its bucket keys are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    retention_hours: i64,
}

impl Keys {
    /// Copy `copy` of the model in `namespace`, minute and hour buckets kept 48 hours.
    pub fn new(namespace: &str, copy: u32) -> Self {
        Self {
            prefix: format!("{namespace}:c{copy}:"),
            retention_hours: crate::buckets::HOURS_KEPT,
        }
    }

    /// Minute and hour buckets kept `hours` instead.
    pub fn retention_hours(mut self, hours: i64) -> Self {
        self.retention_hours = hours;
        self
    }

    /// When bucket `n` of `grain` expires (Unix seconds).
    pub fn expires_at(&self, grain: Grain, n: i64) -> i64 {
        grain.expires_at(n, self.retention_hours)
    }

    /// When a key of this kind expires, for bucket keys.
    pub fn expiry(&self, kind: KeyKind) -> Option<i64> {
        match kind {
            KeyKind::Counters(g, n) | KeyKind::Distinct(g, n) => Some(self.expires_at(g, n)),
            KeyKind::Top(_, g, n) => Some(self.top_expires_at(g, n)),
            _ => None,
        }
    }

    /// When the top lists of bucket `n` of `grain` expire (Unix seconds): as long as a
    /// window reads them, or as long as the counters when those are kept longer (tests keep
    /// everything to fold a fixed past date).
    pub fn top_expires_at(&self, grain: Grain, n: i64) -> i64 {
        let counters = self.expires_at(grain, n);
        if self.retention_hours > crate::buckets::HOURS_KEPT {
            counters
        } else {
            grain.top_expires_at(n)
        }
    }

    /// `<namespace>:c<N>:`, what every key of the copy starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn counters(&self, grain: Grain, n: i64) -> String {
        format!("{}{}:{n}", self.prefix, grain.tag())
    }

    pub fn top(&self, top: Top, grain: Grain, n: i64) -> String {
        format!("{}{}:{}:{n}", self.prefix, top.tag(), grain.tag())
    }

    pub fn distinct(&self, grain: Grain, n: i64) -> String {
        format!("{}u:{}:{n}", self.prefix, grain.tag())
    }

    pub fn status(&self) -> String {
        format!("{}status", self.prefix)
    }

    pub fn account(&self, id: Uuid) -> String {
        format!("{}a:{id}", self.prefix)
    }

    pub fn feed(&self) -> String {
        format!("{}feed", self.prefix)
    }

    pub fn position(&self, partition: i32) -> String {
        format!("{}pos:{partition}", self.prefix)
    }

    /// What a key of this copy is, from its name (`None`: not a model key).
    pub fn parse(&self, key: &str) -> Option<KeyKind> {
        let rest = key.strip_prefix(&self.prefix)?;
        let parts: Vec<&str> = rest.split(':').collect();
        Some(match parts.as_slice() {
            ["status"] => KeyKind::Status,
            ["feed"] => KeyKind::Feed,
            ["a", id] => KeyKind::Account(id.parse().ok()?),
            ["pos", p] => KeyKind::Position(p.parse().ok()?),
            ["u", g, n] => KeyKind::Distinct(Grain::parse_tag(g)?, n.parse().ok()?),
            [t, g, n] => KeyKind::Top(Top::parse_tag(t)?, Grain::parse_tag(g)?, n.parse().ok()?),
            [g, n] => KeyKind::Counters(Grain::parse_tag(g)?, n.parse().ok()?),
            _ => return None,
        })
    }
}

/// A key of the model, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Counters(Grain, i64),
    Top(Top, Grain, i64),
    Distinct(Grain, i64),
    Status,
    Account(Uuid),
    Feed,
    Position(i32),
}

/// One entry of the live feed, as its stream entry's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    pub fields: Vec<(&'static str, String)>,
}

impl FeedEntry {
    fn of(effect: &Effect) -> Self {
        let mut fields = vec![
            ("event_id", effect.event_id.to_string()),
            ("account_id", effect.account_id.to_string()),
            ("version", effect.version.to_string()),
            ("type", effect.event_type.to_owned()),
            (
                "time",
                effect
                    .time
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
            ("amount_minor", effect.amount().to_string()),
            ("currency", effect.currency.clone()),
        ];
        if let Some(card) = &effect.card {
            fields.push(("merchant", card.merchant.clone()));
            fields.push(("country", card.country.clone()));
            if let Some(reason) = card.reason {
                fields.push(("reason", reason.to_owned()));
            }
            if !card.approved {
                fields.push(("declined", "1".to_owned()));
            }
        }
        Self { fields }
    }

    pub fn event_id(&self) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| *k == "event_id")
            .map(|(_, v)| v.as_str())
    }
}

/// What a batch writes, summed per key and field: one `HINCRBY` per field however many
/// events of the batch fall in the bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// key → field → increment (`HINCRBY`): bucket counters and the status counts.
    pub counters: BTreeMap<String, BTreeMap<String, i64>>,
    /// key → member → increment (`ZINCRBY`).
    pub tops: BTreeMap<String, BTreeMap<String, i64>>,
    /// key → members (`PFADD`).
    pub distinct: BTreeMap<String, BTreeSet<String>>,
    /// key → Unix time it expires (`EXPIREAT`), for every bucket key written.
    pub expire: BTreeMap<String, i64>,
    /// New feed entries in order (`XADD … MAXLEN = feed_max`).
    pub feed: Vec<FeedEntry>,
    /// Events added.
    pub events: usize,
}

impl Writes {
    /// Adds what `effect` writes.
    pub fn add(&mut self, keys: &Keys, effect: &Effect, large_amount_minor: i64) {
        self.events += 1;
        let mut fields: Vec<(String, i64)> =
            vec![("n".into(), 1), (format!("t:{}", effect.event_type), 1)];
        if effect.money_in > 0 {
            fields.push((format!("in:{}", effect.currency), effect.money_in));
        }
        if effect.money_out > 0 {
            fields.push((format!("out:{}", effect.currency), effect.money_out));
        }
        if matches!(effect.status_change, Some((None, _))) {
            fields.push(("new".into(), 1));
        }
        if let Some(card) = &effect.card {
            if card.approved {
                fields.push(("ok".into(), 1));
            } else {
                fields.push(("no".into(), 1));
                if let Some(reason) = card.reason {
                    fields.push((format!("r:{reason}"), 1));
                }
            }
        }
        for grain in COUNTER_GRAINS {
            let n = grain.bucket(effect.time);
            let key = keys.counters(grain, n);
            let counters = self.counters.entry(key.clone()).or_default();
            for (field, by) in &fields {
                *counters.entry(field.clone()).or_default() += by;
            }
            self.expire.insert(key, keys.expires_at(grain, n));
            if let Some(card) = &effect.card {
                let merchant_top = if card.approved {
                    Top::MerchantVolume
                } else {
                    Top::MerchantDeclines
                };
                for (top, member) in [
                    (merchant_top, &card.merchant),
                    (Top::Countries, &card.country),
                ] {
                    let key = keys.top(top, grain, n);
                    *self
                        .tops
                        .entry(key.clone())
                        .or_default()
                        .entry(member.clone())
                        .or_default() += 1;
                    self.expire.insert(key, keys.top_expires_at(grain, n));
                }
            }
        }
        for grain in DISTINCT_GRAINS {
            let n = grain.bucket(effect.time);
            let key = keys.distinct(grain, n);
            self.distinct
                .entry(key.clone())
                .or_default()
                .insert(effect.account_id.to_string());
            self.expire.insert(key, keys.expires_at(grain, n));
        }
        if let Some((before, after)) = effect.status_change {
            let status = self.counters.entry(keys.status()).or_default();
            if let Some(before) = before {
                *status.entry(before.as_str().into()).or_default() -= 1;
            }
            *status.entry(after.as_str().into()).or_default() += 1;
        }
        if effect.in_feed(large_amount_minor) {
            self.feed.push(FeedEntry::of(effect));
        }
    }

    /// Redis commands these writes take (what the benchmark's raw ceiling sends).
    pub fn commands(&self) -> usize {
        self.counters.values().map(BTreeMap::len).sum::<usize>()
            + self.tops.values().map(BTreeMap::len).sum::<usize>()
            + self.distinct.len()
            + self.expire.len()
            + self.feed.len()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::fold::Card;

    fn effect(time: &str, money_in: i64, card: Option<Card>) -> Effect {
        Effect {
            event_id: Uuid::from_u128(7),
            account_id: Uuid::from_u128(1),
            version: 2,
            time: DateTime::parse_from_rfc3339(time)
                .expect("time")
                .with_timezone(&Utc),
            event_type: if card.is_some() {
                "prism.account.card_payment_declined"
            } else {
                "prism.account.money_deposited"
            },
            currency: "EUR".into(),
            money_in,
            money_out: 0,
            declined_amount: card.as_ref().map_or(0, |_| 500),
            card,
            status_change: None,
        }
    }

    #[test]
    fn events_of_one_bucket_sum_into_one_increment_per_field() {
        let keys = Keys::new("t", 3);
        let mut w = Writes::default();
        w.add(&keys, &effect("2026-11-28T12:00:00.100Z", 100, None), 1_000);
        w.add(&keys, &effect("2026-11-28T12:00:00.900Z", 250, None), 1_000);
        let sec = keys.counters(
            Grain::Second,
            Grain::Second.bucket(effect("2026-11-28T12:00:00Z", 0, None).time),
        );
        assert_eq!(w.counters[&sec]["n"], 2);
        assert_eq!(w.counters[&sec]["in:EUR"], 350);
        assert_eq!(w.counters[&sec]["t:prism.account.money_deposited"], 2);
        assert_eq!(w.counters.len(), 3, "one hash per grain");
        assert!(w.feed.is_empty(), "below the large amount");
        assert_eq!(w.distinct.len(), 2, "hour and day");
        assert_eq!(w.distinct.values().next().map(BTreeSet::len), Some(1));
    }

    #[test]
    fn an_event_at_midnight_and_one_just_before_land_in_different_buckets_of_every_grain() {
        let keys = Keys::new("t", 1);
        let mut w = Writes::default();
        w.add(&keys, &effect("2026-11-28T23:59:59.999Z", 1, None), 1_000);
        w.add(&keys, &effect("2026-11-29T00:00:00.000Z", 1, None), 1_000);
        assert_eq!(w.counters.len(), 6, "two seconds, two minutes, two hours");
        assert_eq!(w.distinct.len(), 4, "two hours, two days");
        assert!(w.counters.values().all(|f| f["n"] == 1));
    }

    #[test]
    fn a_decline_counts_its_reason_merchant_and_country_and_goes_to_the_feed() {
        let keys = Keys::new("t", 1);
        let mut w = Writes::default();
        let card = Card {
            merchant: "Corner Cafe".into(),
            country: "DE".into(),
            approved: false,
            reason: Some("account_frozen"),
        };
        w.add(
            &keys,
            &effect("2026-11-28T12:00:00Z", 0, Some(card)),
            1_000_000,
        );
        let minute = keys.counters(
            Grain::Minute,
            Grain::Minute.bucket(effect("2026-11-28T12:00:00Z", 0, None).time),
        );
        assert_eq!(w.counters[&minute]["no"], 1);
        assert_eq!(w.counters[&minute]["r:account_frozen"], 1);
        assert!(!w.counters[&minute].contains_key("ok"));
        assert_eq!(w.tops.len(), 6, "declines and countries at three grains");
        assert!(w
            .tops
            .keys()
            .all(|k| k.contains(":td:") || k.contains(":tc:")));
        assert_eq!(w.feed.len(), 1);
        assert_eq!(
            w.feed[0].event_id(),
            Some(Uuid::from_u128(7).to_string().as_str())
        );
    }

    #[test]
    fn an_opening_counts_a_new_account_and_top_lists_expire_with_their_longest_window() {
        let keys = Keys::new("t", 1);
        let mut w = Writes::default();
        let mut opened = effect("2026-11-28T12:00:00Z", 0, None);
        opened.status_change = Some((None, crate::fold::Status::Open));
        w.add(&keys, &opened, 1_000);
        assert!(w
            .counters
            .values()
            .take(3)
            .all(|f| f.get("new") == Some(&1)));
        let card = Card {
            merchant: "Corner Cafe".into(),
            country: "DE".into(),
            approved: true,
            reason: None,
        };
        let paid = effect("2026-11-28T12:00:00Z", 0, Some(card));
        w.add(&keys, &paid, 1_000);
        let minute = Grain::Minute.bucket(paid.time);
        let top = keys.top(Top::MerchantVolume, Grain::Minute, minute);
        let counters = keys.counters(Grain::Minute, minute);
        assert_eq!(
            w.expire[&top] - Grain::Minute.start(minute).timestamp(),
            60 + 3_600 + crate::buckets::EXPIRY_MARGIN_S,
            "read by the 1-hour window at most"
        );
        assert!(
            w.expire[&counters] > w.expire[&top],
            "counters feed the 48-hour series"
        );
        assert_eq!(
            keys.expiry(keys.parse(&top).expect("a key")),
            Some(w.expire[&top])
        );
    }

    #[test]
    fn every_key_name_parses_back() {
        let keys = Keys::new("prism:dash", 12);
        let id = Uuid::from_u128(99);
        for (key, kind) in [
            (
                keys.counters(Grain::Minute, 5),
                KeyKind::Counters(Grain::Minute, 5),
            ),
            (
                keys.top(Top::Countries, Grain::Hour, 7),
                KeyKind::Top(Top::Countries, Grain::Hour, 7),
            ),
            (
                keys.distinct(Grain::Day, 3),
                KeyKind::Distinct(Grain::Day, 3),
            ),
            (keys.status(), KeyKind::Status),
            (keys.account(id), KeyKind::Account(id)),
            (keys.feed(), KeyKind::Feed),
            (keys.position(4), KeyKind::Position(4)),
        ] {
            assert_eq!(keys.parse(&key), Some(kind), "{key}");
        }
        assert_eq!(keys.parse("prism:dash:c1:status"), None, "another copy");
        assert_eq!(keys.parse("prism:dash:c12:zz:1"), None);
    }
}
