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

// Summed for every event of a batch: maps with a fast hasher.
use foldhash::{HashMap, HashSet};

use prism_events::Currency;

use uuid::Uuid;

use crate::buckets::Grain;
use crate::fold::{Effect, Status};

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
            ("currency", effect.currency.to_string()),
        ];
        if let Some(card) = &effect.card {
            fields.push(("merchant", card.merchant.clone()));
            fields.push(("country", card.country.to_string()));
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

/// A field of a bucket's counters hash (`HINCRBY <bucket> <field>`), typed so that summing
/// a batch allocates nothing per event; [`Field::name`] is its name in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `n`: events.
    Events,
    /// `t:<cloudevents type>`.
    Type(&'static str),
    /// `in:<CUR>`: minor units in.
    In(Currency),
    /// `out:<CUR>`: minor units out.
    Out(Currency),
    /// `new`: accounts opened.
    New,
    /// `ok`: card payments approved.
    Approved,
    /// `no`: card payments declined.
    Declined,
    /// `r:<reason>`: declines by reason.
    Reason(&'static str),
}

impl Field {
    /// Appends the field's name to `out`.
    pub fn write_name(self, out: &mut String) {
        match self {
            Field::Events => out.push('n'),
            Field::Type(t) => {
                out.push_str("t:");
                out.push_str(t);
            }
            Field::In(c) => {
                out.push_str("in:");
                out.push_str(c.as_str());
            }
            Field::Out(c) => {
                out.push_str("out:");
                out.push_str(c.as_str());
            }
            Field::New => out.push_str("new"),
            Field::Approved => out.push_str("ok"),
            Field::Declined => out.push_str("no"),
            Field::Reason(r) => {
                out.push_str("r:");
                out.push_str(r);
            }
        }
    }

    pub fn name(self) -> String {
        let mut out = String::new();
        self.write_name(&mut out);
        out
    }
}

/// A bucket: its grain and number.
pub type Bucket = (Grain, i64);

/// What a batch writes, summed per key and field: one `HINCRBY` per field however many
/// events of the batch fall in the bucket. Keys are kept typed ([`Bucket`], [`Field`]) and
/// named only when written ([`Writes::counters`] and its siblings name them for a copy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// Bucket → field → increment (`HINCRBY`). A batch touches a handful of fields per
    /// bucket: a list beats a map.
    counters: HashMap<Bucket, Vec<(Field, i64)>>,
    /// Accounts by status, the change (`HINCRBY status <status>`).
    status: BTreeMap<Status, i64>,
    /// Top list of a bucket → member → increment (`ZINCRBY`).
    tops: HashMap<(Top, Bucket), HashMap<String, i64>>,
    /// Bucket → accounts with an event (`PFADD`).
    distinct: HashMap<Bucket, HashSet<Uuid>>,
    /// New feed entries in order (`XADD … MAXLEN = feed_max`).
    feed: Vec<FeedEntry>,
    /// Events added.
    events: usize,
}

fn bump<K: PartialEq>(list: &mut Vec<(K, i64)>, key: K, by: i64) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += by,
        None => list.push((key, by)),
    }
}

impl Writes {
    /// Adds what `effect` writes.
    pub fn add(&mut self, effect: &Effect, large_amount_minor: i64) {
        self.events += 1;
        let mut fields: [Option<(Field, i64)>; 5] = [
            Some((Field::Type(effect.event_type), 1)),
            (effect.money_in > 0).then_some((Field::In(effect.currency), effect.money_in)),
            (effect.money_out > 0).then_some((Field::Out(effect.currency), effect.money_out)),
            matches!(effect.status_change, Some((None, _))).then_some((Field::New, 1)),
            None,
        ];
        let mut reason = None;
        if let Some(card) = &effect.card {
            if card.approved {
                fields[4] = Some((Field::Approved, 1));
            } else {
                fields[4] = Some((Field::Declined, 1));
                reason = card.reason.map(|r| (Field::Reason(r), 1));
            }
        }
        for grain in COUNTER_GRAINS {
            let bucket = (grain, grain.bucket(effect.time));
            let counters = self.counters.entry(bucket).or_default();
            bump(counters, Field::Events, 1);
            for (field, by) in fields.iter().chain([&reason]).flatten() {
                bump(counters, *field, *by);
            }
            if let Some(card) = &effect.card {
                let merchant_top = if card.approved {
                    Top::MerchantVolume
                } else {
                    Top::MerchantDeclines
                };
                for (top, member) in [
                    (merchant_top, card.merchant.as_str()),
                    (Top::Countries, card.country.as_str()),
                ] {
                    let members = self.tops.entry((top, bucket)).or_default();
                    match members.get_mut(member) {
                        Some(n) => *n += 1,
                        None => {
                            members.insert(member.to_owned(), 1);
                        }
                    }
                }
            }
        }
        for grain in DISTINCT_GRAINS {
            let bucket = (grain, grain.bucket(effect.time));
            self.distinct
                .entry(bucket)
                .or_default()
                .insert(effect.account_id);
        }
        if let Some((before, after)) = effect.status_change {
            if let Some(before) = before {
                *self.status.entry(before).or_default() -= 1;
            }
            *self.status.entry(after).or_default() += 1;
        }
        if effect.in_feed(large_amount_minor) {
            self.feed.push(FeedEntry::of(effect));
        }
    }

    /// Events added.
    pub fn events(&self) -> usize {
        self.events
    }

    /// The bucket counters, typed: for writing them without naming each field twice.
    pub fn bucket_counters(&self) -> impl Iterator<Item = (Bucket, &[(Field, i64)])> {
        self.counters.iter().map(|(b, f)| (*b, f.as_slice()))
    }

    /// The change of accounts by status.
    pub fn status_changes(&self) -> impl Iterator<Item = (Status, i64)> + '_ {
        self.status.iter().map(|(s, n)| (*s, *n))
    }

    /// The top lists' increments, typed.
    pub fn top_increments(&self) -> impl Iterator<Item = ((Top, Bucket), &HashMap<String, i64>)> {
        self.tops.iter().map(|(k, m)| (*k, m))
    }

    /// The accounts of each distinct-count bucket, typed.
    pub fn distinct_accounts(&self) -> impl Iterator<Item = (Bucket, &HashSet<Uuid>)> {
        self.distinct.iter().map(|(b, m)| (*b, m))
    }

    /// Every bucket key written, with the Unix time it expires (`EXPIREAT`).
    pub fn expire(&self, keys: &Keys) -> BTreeMap<String, i64> {
        let counters = self
            .counters
            .keys()
            .map(|&(g, n)| (keys.counters(g, n), keys.expires_at(g, n)));
        let tops = self
            .tops
            .keys()
            .map(|&(t, (g, n))| (keys.top(t, g, n), keys.top_expires_at(g, n)));
        let distinct = self
            .distinct
            .keys()
            .map(|&(g, n)| (keys.distinct(g, n), keys.expires_at(g, n)));
        counters.chain(tops).chain(distinct).collect()
    }

    /// The counter hashes of copy `keys`, named: key → field → increment (the status
    /// counts included).
    pub fn counters(&self, keys: &Keys) -> BTreeMap<String, BTreeMap<String, i64>> {
        let mut out: BTreeMap<String, BTreeMap<String, i64>> = self
            .counters
            .iter()
            .map(|(&(g, n), fields)| {
                let fields = fields.iter().map(|(f, by)| (f.name(), *by)).collect();
                (keys.counters(g, n), fields)
            })
            .collect();
        if !self.status.is_empty() {
            out.insert(
                keys.status(),
                self.status
                    .iter()
                    .map(|(s, n)| (s.as_str().to_owned(), *n))
                    .collect(),
            );
        }
        out
    }

    /// The top lists of copy `keys`, named: key → member → increment.
    pub fn tops(&self, keys: &Keys) -> BTreeMap<String, BTreeMap<String, i64>> {
        self.tops
            .iter()
            .map(|(&(t, (g, n)), members)| {
                let members = members.iter().map(|(m, by)| (m.clone(), *by)).collect();
                (keys.top(t, g, n), members)
            })
            .collect()
    }

    /// The distinct-account counts of copy `keys`, named: key → accounts.
    pub fn distinct(&self, keys: &Keys) -> BTreeMap<String, BTreeSet<String>> {
        self.distinct
            .iter()
            .map(|(&(g, n), ids)| {
                (
                    keys.distinct(g, n),
                    ids.iter().map(Uuid::to_string).collect(),
                )
            })
            .collect()
    }

    /// New feed entries in order.
    pub fn feed(&self) -> &[FeedEntry] {
        &self.feed
    }

    /// Redis commands these writes take (what the benchmark's raw ceiling sends).
    pub fn commands(&self) -> usize {
        self.counters.values().map(Vec::len).sum::<usize>()
            + self.status.len()
            + self.tops.values().map(HashMap::len).sum::<usize>()
            + self.distinct.len()
            + self.counters.len()
            + self.tops.len()
            + self.distinct.len()
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
            currency: Currency::parse("EUR").expect("EUR"),
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
        w.add(&effect("2026-11-28T12:00:00.100Z", 100, None), 1_000);
        w.add(&effect("2026-11-28T12:00:00.900Z", 250, None), 1_000);
        let sec = keys.counters(
            Grain::Second,
            Grain::Second.bucket(effect("2026-11-28T12:00:00Z", 0, None).time),
        );
        assert_eq!(w.counters(&keys)[&sec]["n"], 2);
        assert_eq!(w.counters(&keys)[&sec]["in:EUR"], 350);
        assert_eq!(
            w.counters(&keys)[&sec]["t:prism.account.money_deposited"],
            2
        );
        assert_eq!(w.counters(&keys).len(), 3, "one hash per grain");
        assert!(w.feed().is_empty(), "below the large amount");
        assert_eq!(w.distinct(&keys).len(), 2, "hour and day");
        assert_eq!(
            w.distinct(&keys).values().next().map(BTreeSet::len),
            Some(1)
        );
    }

    #[test]
    fn an_event_at_midnight_and_one_just_before_land_in_different_buckets_of_every_grain() {
        let keys = Keys::new("t", 1);
        let mut w = Writes::default();
        w.add(&effect("2026-11-28T23:59:59.999Z", 1, None), 1_000);
        w.add(&effect("2026-11-29T00:00:00.000Z", 1, None), 1_000);
        assert_eq!(
            w.counters(&keys).len(),
            6,
            "two seconds, two minutes, two hours"
        );
        assert_eq!(w.distinct(&keys).len(), 4, "two hours, two days");
        assert!(w.counters(&keys).values().all(|f| f["n"] == 1));
    }

    #[test]
    fn a_decline_counts_its_reason_merchant_and_country_and_goes_to_the_feed() {
        let keys = Keys::new("t", 1);
        let mut w = Writes::default();
        let card = Card {
            merchant: "Corner Cafe".into(),
            country: prism_events::Country::parse("DE").expect("DE"),
            approved: false,
            reason: Some("account_frozen"),
        };
        w.add(&effect("2026-11-28T12:00:00Z", 0, Some(card)), 1_000_000);
        let minute = keys.counters(
            Grain::Minute,
            Grain::Minute.bucket(effect("2026-11-28T12:00:00Z", 0, None).time),
        );
        assert_eq!(w.counters(&keys)[&minute]["no"], 1);
        assert_eq!(w.counters(&keys)[&minute]["r:account_frozen"], 1);
        assert!(!w.counters(&keys)[&minute].contains_key("ok"));
        assert_eq!(
            w.tops(&keys).len(),
            6,
            "declines and countries at three grains"
        );
        assert!(w
            .tops(&keys)
            .keys()
            .all(|k| k.contains(":td:") || k.contains(":tc:")));
        assert_eq!(w.feed().len(), 1);
        assert_eq!(
            w.feed()[0].event_id(),
            Some(Uuid::from_u128(7).to_string().as_str())
        );
    }

    #[test]
    fn an_opening_counts_a_new_account_and_top_lists_expire_with_their_longest_window() {
        let keys = Keys::new("t", 1);
        let mut w = Writes::default();
        let mut opened = effect("2026-11-28T12:00:00Z", 0, None);
        opened.status_change = Some((None, crate::fold::Status::Open));
        w.add(&opened, 1_000);
        let counters = w.counters(&keys);
        assert_eq!(counters.len(), 4, "three buckets and the status counts");
        assert!(counters
            .iter()
            .filter(|(k, _)| **k != keys.status())
            .all(|(_, f)| f.get("new") == Some(&1)));
        assert_eq!(counters[&keys.status()]["open"], 1);
        let card = Card {
            merchant: "Corner Cafe".into(),
            country: prism_events::Country::parse("DE").expect("DE"),
            approved: true,
            reason: None,
        };
        let paid = effect("2026-11-28T12:00:00Z", 0, Some(card));
        w.add(&paid, 1_000);
        let minute = Grain::Minute.bucket(paid.time);
        let top = keys.top(Top::MerchantVolume, Grain::Minute, minute);
        let counters = keys.counters(Grain::Minute, minute);
        assert_eq!(
            w.expire(&keys)[&top] - Grain::Minute.start(minute).timestamp(),
            60 + 3_600 + crate::buckets::EXPIRY_MARGIN_S,
            "read by the 1-hour window at most"
        );
        assert!(
            w.expire(&keys)[&counters] > w.expire(&keys)[&top],
            "counters feed the 48-hour series"
        );
        assert_eq!(
            keys.expiry(keys.parse(&top).expect("a key")),
            Some(w.expire(&keys)[&top])
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
