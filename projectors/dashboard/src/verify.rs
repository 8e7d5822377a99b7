//! `prismctl verify dashboard`: every counter, top list, distinct count, status count,
//! account and feed entry of the live copy against what the fold makes of the event store
//! (the kit's [`Verify`]).
//!
//! Three things the store keeps differently from the data, and how they are compared:
//! - **expiry**: bucket keys expire in event time, so only buckets still kept a while after
//!   the read are compared ([`KEPT_AFTER_READ_S`]): an older bucket is gone from Redis and
//!   from the expectation alike;
//! - **distinct counts** are HyperLogLog estimates: the expectation's exact members are
//!   added to a scratch HyperLogLog in the same Redis and its estimate compared
//!   ([`Verify::settle`]): a HyperLogLog's registers depend only on its members, so equal
//!   members give the same estimate, and a missing or extra member shows up unless it
//!   happens to leave every register unchanged;
//! - **the feed** is capped: its length must be `min(feed_max, qualifying events)` and each
//!   entry must be a qualifying event with the right fields (which ones the cap kept
//!   depends on the order partitions were applied in).

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use async_trait::async_trait;
use chrono::Utc;
use parking_lot::Mutex;
use prism_events::Envelope;
use prism_projector::fold::fold_history;
use prism_projector::verify::{Snapshot, Stored, Verify};
use serde_json::{json, Value};

use crate::copies::DashboardCopy;
use crate::fold::DashboardFold;
use crate::model::{KeyKind, Writes};

/// A bucket is compared only if it is kept at least this long after the read.
pub const KEPT_AFTER_READ_S: i64 = 120;

/// The dashboard's side of `verify`, on one copy.
#[derive(Debug)]
pub struct DashboardVerify {
    copy: DashboardCopy,
    /// Set by [`Verify::stored`]: the read's cut-off and the feed's event ids.
    read: Mutex<Option<Read>>,
}

#[derive(Debug, Clone)]
struct Read {
    cutoff: i64,
    feed_ids: HashSet<String>,
}

impl DashboardVerify {
    pub fn new(copy: DashboardCopy) -> Self {
        Self {
            copy,
            read: Mutex::new(None),
        }
    }
}

fn counts(map: &BTreeMap<String, i64>) -> Value {
    Value::Object(map.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// The snapshot key of a model key (`None`: not compared).
fn snapshot_key(kind: KeyKind) -> Option<String> {
    Some(match kind {
        KeyKind::Counters(g, n) => format!("counters/{}/{n}", g.tag()),
        KeyKind::Top(t, g, n) => format!("top/{}/{}/{n}", t.tag(), g.tag()),
        KeyKind::Distinct(g, n) => format!("distinct/{}/{n}", g.tag()),
        KeyKind::Status => "status".into(),
        KeyKind::Account(id) => format!("accounts/{id}"),
        KeyKind::Feed | KeyKind::Position(_) => return None,
    })
}

#[async_trait]
impl Verify for DashboardVerify {
    async fn stored(&self) -> anyhow::Result<Stored> {
        let cutoff = Utc::now().timestamp() + KEPT_AFTER_READ_S;
        let keys = &self.copy.keys;
        let mut conn = self.copy.conn.clone();
        let mut stored = Stored::default();
        let mut feed_ids = HashSet::new();
        for chunk in crate::copies::keys_matching(&mut conn, &format!("{}*", keys.prefix()))
            .await
            .context("listing the copy's keys")?
            .chunks(500)
        {
            let kinds: Vec<(String, KeyKind)> = chunk
                .iter()
                .filter_map(|k| Some((k.clone(), keys.parse(k)?)))
                .filter(|(_, kind)| keys.expiry(*kind).is_none_or(|at| at > cutoff))
                .collect();
            let mut pipe = redis::pipe();
            for (key, kind) in &kinds {
                match kind {
                    KeyKind::Counters(..) | KeyKind::Status | KeyKind::Position(_) => {
                        pipe.cmd("HGETALL").arg(key);
                    }
                    KeyKind::Top(..) => {
                        pipe.cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES");
                    }
                    KeyKind::Distinct(..) => {
                        pipe.cmd("PFCOUNT").arg(key);
                    }
                    KeyKind::Account(_) => {
                        pipe.cmd("HGETALL").arg(key);
                    }
                    KeyKind::Feed => {
                        pipe.cmd("XRANGE").arg(key).arg("-").arg("+");
                    }
                }
            }
            let answers: Vec<redis::Value> = pipe
                .query_async(&mut conn)
                .await
                .context("reading the copy")?;
            for ((_, kind), answer) in kinds.into_iter().zip(answers) {
                let document = match kind {
                    KeyKind::Counters(..) | KeyKind::Status => {
                        let map: BTreeMap<String, i64> = redis::from_redis_value(&answer)?;
                        counts(&map)
                    }
                    KeyKind::Top(..) => {
                        let members: Vec<(String, f64)> = redis::from_redis_value(&answer)?;
                        let map = members
                            .into_iter()
                            .map(|(m, s)| (m, s.round() as i64))
                            .collect();
                        counts(&map)
                    }
                    KeyKind::Distinct(..) => {
                        let n: i64 = redis::from_redis_value(&answer)?;
                        json!({ "distinct": n })
                    }
                    KeyKind::Account(id) => {
                        let row: BTreeMap<String, String> = redis::from_redis_value(&answer)?;
                        let version: u64 = row.get("v").and_then(|v| v.parse().ok()).unwrap_or(0);
                        stored.versions.insert(id, version);
                        json!({
                            "version": version,
                            "currency": row.get("c"),
                            "status": row.get("s"),
                        })
                    }
                    KeyKind::Feed => {
                        let entries: Vec<(String, BTreeMap<String, String>)> =
                            redis::from_redis_value(&answer)?;
                        stored
                            .documents
                            .insert("feed/len".into(), json!(entries.len()));
                        for (_, fields) in entries {
                            let id = fields.get("event_id").cloned().unwrap_or_default();
                            feed_ids.insert(id.clone());
                            stored.documents.insert(format!("feed/{id}"), json!(fields));
                        }
                        continue;
                    }
                    KeyKind::Position(_) => continue,
                };
                if let Some(key) = snapshot_key(kind) {
                    stored.documents.insert(key, document);
                }
            }
        }
        *self.read.lock() = Some(Read { cutoff, feed_ids });
        Ok(stored)
    }

    fn expected(&self, events: Vec<Envelope>) -> Snapshot {
        let read = self.read.lock().clone().unwrap_or(Read {
            cutoff: Utc::now().timestamp() + KEPT_AFTER_READ_S,
            feed_ids: HashSet::new(),
        });
        let keys = &self.copy.keys;
        let history = fold_history::<DashboardFold>(events, |a| a.version);
        let mut writes = Writes::default();
        for effect in &history.effects {
            writes.add(effect, self.copy.large_amount_minor);
        }
        let kept = |key: &str| -> Option<String> {
            let kind = keys.parse(key)?;
            if keys.expiry(kind).is_some_and(|at| at <= read.cutoff) {
                return None;
            }
            snapshot_key(kind)
        };
        let mut out = Snapshot::new();
        for (key, fields) in &writes.counters(keys) {
            if let Some(k) = kept(key) {
                out.insert(k, counts(fields));
            }
        }
        for (key, members) in &writes.tops(keys) {
            if let Some(k) = kept(key) {
                out.insert(k, counts(members));
            }
        }
        for (key, members) in &writes.distinct(keys) {
            if let Some(k) = kept(key) {
                out.insert(k, json!({ "members": members }));
            }
        }
        for (id, account) in &history.accounts {
            out.insert(
                format!("accounts/{id}"),
                json!({
                    "version": account.version,
                    "currency": account.currency,
                    "status": account.status.as_str(),
                }),
            );
        }
        if !writes.feed().is_empty() {
            out.insert(
                "feed/len".into(),
                json!(writes.feed().len().min(self.copy.feed_max as usize)),
            );
        }
        for entry in writes.feed() {
            let Some(id) = entry.event_id() else { continue };
            if read.feed_ids.contains(id) {
                let fields: BTreeMap<&str, &str> =
                    entry.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                out.insert(format!("feed/{id}"), json!(fields));
            }
        }
        out
    }

    /// Distinct members → the estimate a HyperLogLog of exactly them gives, in a scratch
    /// key of the same Redis (deleted after).
    async fn settle(&self, mut expected: Snapshot) -> anyhow::Result<Snapshot> {
        let scratch = format!("{}verify:{}", self.copy.keys.prefix(), uuid::Uuid::new_v4());
        let mut conn = self.copy.conn.clone();
        for document in expected.values_mut() {
            let Some(members) = document.get("members").and_then(Value::as_array) else {
                continue;
            };
            let members: Vec<&str> = members.iter().filter_map(Value::as_str).collect();
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("DEL").arg(&scratch).ignore();
            for chunk in members.chunks(1_000) {
                pipe.cmd("PFADD").arg(&scratch).arg(chunk).ignore();
            }
            pipe.cmd("PFCOUNT").arg(&scratch);
            pipe.cmd("DEL").arg(&scratch).ignore();
            let (n,): (i64,) = pipe
                .query_async(&mut conn)
                .await
                .context("estimating distinct accounts")?;
            *document = json!({ "distinct": n });
        }
        Ok(expected)
    }
}
