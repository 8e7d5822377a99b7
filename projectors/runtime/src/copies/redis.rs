//! Copies of a read model in Redis (feature `redis`): a copy is the key prefix
//! `<namespace>:c<N>:`, and the control keys beside them say which is live:
//! - `<namespace>:control`, a hash: `live` (the live copy's number), `next` (the last number
//!   handed out);
//! - `<namespace>:copies`, a hash: copy number → `{"state", "created_at", "live_since"}`;
//! - `<namespace>:instances`, a hash: running instance → its last report.
//!
//! [`RedisCopies::promote`] is one Lua script: the building copy becomes live, the live one
//! retired and the pointer moves, atomically: a reader sees the old copy or the new one,
//! never neither. Dropping a copy deletes its keys by prefix (`SCAN` + `UNLINK`).
//!
//! A read model in Redis keeps one of these and implements [`super::Copies`] by opening
//! its own copy type on the numbers it hands out; the positions of a copy are the kit's
//! (`<prefix>pos:<partition>`, written by [`crate::checkpoint::redis`]).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::{CopyInfo, CopyState, InstanceReport, InstanceRow, PartitionStatus};
use crate::checkpoint::redis::{keys_matching, position_key};

/// Longest namespace: keys stay short (every key of a copy starts with it).
pub const NAMESPACE_MAX: usize = 64;

/// Why `namespace` (the `namespace` key of a Redis model's section `[section]`) cannot
/// prefix keys: empty, longer than [`NAMESPACE_MAX`], or with characters other than
/// letters, digits and `: - _ .`.
pub fn check_namespace(section: &str, namespace: &str) -> Result<(), String> {
    if namespace.is_empty() || namespace.len() > NAMESPACE_MAX {
        return Err(format!(
            "[{section}] namespace must be 1 to {NAMESPACE_MAX} characters"
        ));
    }
    if !namespace
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":-_.".contains(&b))
    {
        return Err(format!(
            "[{section}] namespace {namespace:?} may only contain letters, digits, : - _ ."
        ));
    }
    Ok(())
}

/// The key prefix of copy `number` in `namespace`: `<namespace>:c<N>:`.
pub fn copy_prefix(namespace: &str, number: u32) -> String {
    format!("{namespace}:c{number}:")
}

/// The copies in one namespace, and the instances that write them.
#[derive(Clone)]
pub struct RedisCopies {
    conn: ConnectionManager,
    namespace: String,
    /// What the read model is called in errors ("dashboard", "fraud").
    what: &'static str,
}

impl std::fmt::Debug for RedisCopies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCopies")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CopyRow {
    /// `building`, `live` or `retired` ([`CopyState`]'s text).
    state: String,
    created_at: DateTime<Utc>,
    live_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceDoc {
    writing: Option<u32>,
    can_open: Option<u32>,
    error: Option<String>,
    seen_at: DateTime<Utc>,
}

/// Makes copy `ARGV[1]` live at time `ARGV[2]`: it must be building; the live copy, if
/// any, is retired. Answers the number retired (0: none) or an error.
const PROMOTE: &str = r"
local control, copies = KEYS[1], KEYS[2]
local n, now = ARGV[1], ARGV[2]
local row = redis.call('HGET', copies, n)
if not row then return redis.error_reply('copy ' .. n .. ' does not exist') end
local doc = cjson.decode(row)
if doc.state ~= 'building' then
  return redis.error_reply('copy ' .. n .. ' is ' .. doc.state .. ', not building')
end
local old = redis.call('HGET', control, 'live')
if old then
  local o = redis.call('HGET', copies, old)
  if o then
    local od = cjson.decode(o)
    od.state = 'retired'
    redis.call('HSET', copies, old, cjson.encode(od))
  end
end
doc.state = 'live'
doc.live_since = now
redis.call('HSET', copies, n, cjson.encode(doc))
redis.call('HSET', control, 'live', n)
return tonumber(old or '0')
";

/// On first start: copy 1 (or the next number) is created live unless a copy is live.
const FIRST: &str = r"
local control, copies = KEYS[1], KEYS[2]
local live = redis.call('HGET', control, 'live')
if live then return tonumber(live) end
local n = redis.call('HINCRBY', control, 'next', 1)
redis.call('HSET', copies, n, ARGV[1])
redis.call('HSET', control, 'live', n)
return n
";

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl RedisCopies {
    /// The copies of `namespace` on `conn`; `what` names the read model in errors.
    pub fn new(conn: ConnectionManager, namespace: &str, what: &'static str) -> Self {
        Self {
            conn,
            namespace: namespace.to_owned(),
            what,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The key prefix of copy `number`.
    pub fn prefix(&self, number: u32) -> String {
        copy_prefix(&self.namespace, number)
    }

    fn control(&self) -> String {
        format!("{}:control", self.namespace)
    }

    fn copies(&self) -> String {
        format!("{}:copies", self.namespace)
    }

    fn instances_key(&self) -> String {
        format!("{}:instances", self.namespace)
    }

    /// Whether the namespace was ever used (without creating anything).
    pub async fn exists(&self) -> anyhow::Result<bool> {
        let mut conn = self.conn.clone();
        let n: u32 = redis::cmd("EXISTS")
            .arg(self.control())
            .query_async(&mut conn)
            .await
            .with_context(|| format!("looking for the {}'s control key", self.what))?;
        Ok(n > 0)
    }

    async fn row(&self, number: u32) -> anyhow::Result<Option<CopyRow>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.copies())
            .arg(number)
            .query_async(&mut conn)
            .await
            .with_context(|| format!("reading the {}'s copies", self.what))?;
        raw.map(|r| serde_json::from_str(&r).context("a copy row that is not JSON"))
            .transpose()
    }

    fn new_row(state: CopyState) -> anyhow::Result<String> {
        let now = Utc::now();
        Ok(serde_json::to_string(&CopyRow {
            state: state.as_str().to_owned(),
            created_at: now,
            live_since: (state == CopyState::Live).then_some(now),
        })?)
    }

    /// The live copy's number; on first start creates copy 1 and makes it live.
    pub async fn live(&self) -> anyhow::Result<u32> {
        let mut conn = self.conn.clone();
        redis::Script::new(FIRST)
            .key(self.control())
            .key(self.copies())
            .arg(Self::new_row(CopyState::Live)?)
            .invoke_async(&mut conn)
            .await
            .with_context(|| format!("finding or creating the live {} copy", self.what))
    }

    pub async fn live_number(&self) -> anyhow::Result<Option<u32>> {
        let mut conn = self.conn.clone();
        redis::cmd("HGET")
            .arg(self.control())
            .arg("live")
            .query_async(&mut conn)
            .await
            .with_context(|| format!("reading the live {} copy", self.what))
    }

    /// Fails unless copy `number` exists.
    pub async fn check_exists(&self, number: u32) -> anyhow::Result<()> {
        if self.row(number).await?.is_none() {
            bail!(
                "{} copy {number} does not exist in {}",
                self.what,
                self.namespace
            );
        }
        Ok(())
    }

    /// Numbers a new copy, empties its prefix and records it as building.
    pub async fn create_next(&self) -> anyhow::Result<u32> {
        let mut conn = self.conn.clone();
        let n: u32 = redis::cmd("HINCRBY")
            .arg(self.control())
            .arg("next")
            .arg(1)
            .query_async(&mut conn)
            .await
            .with_context(|| format!("numbering a new {} copy", self.what))?;
        // A number is never reused; a crash before this line leaves a gap, nothing else.
        self.delete_prefix(n).await?;
        redis::cmd("HSET")
            .arg(self.copies())
            .arg(n)
            .arg(Self::new_row(CopyState::Building)?)
            .query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("recording a new {} copy", self.what))?;
        Ok(n)
    }

    pub async fn promote(&self, number: u32) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let _: u32 = redis::Script::new(PROMOTE)
            .key(self.control())
            .key(self.copies())
            .arg(number)
            .arg(now_text())
            .invoke_async(&mut conn)
            .await
            .with_context(|| format!("promoting {} copy {number}", self.what))?;
        Ok(())
    }

    pub async fn abandon(&self, number: u32) -> anyhow::Result<()> {
        match self.row(number).await? {
            Some(row) if row.state == CopyState::Building.as_str() => {}
            Some(row) => bail!("{} copy {number} is {}, not building", self.what, row.state),
            None => return Ok(()),
        }
        self.drop_copy(number).await
    }

    async fn drop_copy(&self, number: u32) -> anyhow::Result<()> {
        self.delete_prefix(number).await?;
        let mut conn = self.conn.clone();
        redis::cmd("HDEL")
            .arg(self.copies())
            .arg(number)
            .query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("forgetting a {} copy", self.what))
    }

    /// Deletes every key starting with copy `number`'s prefix.
    async fn delete_prefix(&self, number: u32) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let found = keys_matching(&mut conn, &format!("{}*", self.prefix(number)))
            .await
            .with_context(|| format!("listing a {} copy's keys", self.what))?;
        for chunk in found.chunks(1_000) {
            redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<()>(&mut conn)
                .await
                .with_context(|| format!("deleting a {} copy's keys", self.what))?;
        }
        Ok(())
    }

    /// Deletes every key of the namespace: every copy, the control keys, the instances
    /// (tools and tests that made a namespace of their own).
    /// Returns the numbers of the copies it dropped.
    pub async fn drop_everything(&self) -> anyhow::Result<Vec<u32>> {
        let numbers: Vec<u32> = self.list().await?.iter().map(|c| c.number).collect();
        for number in &numbers {
            self.delete_prefix(*number).await?;
        }
        let mut conn = self.conn.clone();
        redis::cmd("UNLINK")
            .arg(self.control())
            .arg(self.copies())
            .arg(self.instances_key())
            .query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("deleting the {}'s control keys", self.what))?;
        Ok(numbers)
    }

    pub async fn newest_building(&self) -> anyhow::Result<Option<u32>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|c| c.state == CopyState::Building)
            .map(|c| c.number)
            .max())
    }

    pub async fn list(&self) -> anyhow::Result<Vec<CopyInfo>> {
        let mut conn = self.conn.clone();
        let rows: Vec<(u32, String)> = redis::cmd("HGETALL")
            .arg(self.copies())
            .query_async(&mut conn)
            .await
            .with_context(|| format!("listing the {}'s copies", self.what))?;
        let mut out = Vec::with_capacity(rows.len());
        for (number, raw) in rows {
            let row: CopyRow = serde_json::from_str(&raw)
                .with_context(|| format!("{} copy {number}'s row is not JSON", self.what))?;
            let state = CopyState::parse(&row.state).with_context(|| {
                format!("{} copy {number} is in state {:?}", self.what, row.state)
            })?;
            out.push(CopyInfo {
                number,
                name: format!("{}*", self.prefix(number)),
                state,
                created_at: row.created_at,
                live_since: row.live_since,
            });
        }
        out.sort_by_key(|c| c.number);
        Ok(out)
    }

    /// Returns the copies it dropped.
    pub async fn drop_retired(&self) -> anyhow::Result<Vec<CopyInfo>> {
        let mut dropped = Vec::new();
        for copy in self.list().await? {
            if copy.state == CopyState::Retired {
                self.drop_copy(copy.number).await?;
                dropped.push(copy);
            }
        }
        Ok(dropped)
    }

    pub async fn report_instance(&self, report: &InstanceReport) -> anyhow::Result<()> {
        let doc = InstanceDoc {
            writing: report.writing,
            can_open: report.can_open,
            error: report.error.clone(),
            seen_at: Utc::now(),
        };
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(self.instances_key())
            .arg(&report.instance)
            .arg(serde_json::to_string(&doc)?)
            .query_async::<()>(&mut conn)
            .await
            .context("reporting this instance")
    }

    pub async fn forget_instance(&self, instance: &str) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("HDEL")
            .arg(self.instances_key())
            .arg(instance)
            .query_async::<()>(&mut conn)
            .await
            .context("forgetting this instance")
    }

    pub async fn instances(&self, within: Duration) -> anyhow::Result<Vec<InstanceRow>> {
        let mut conn = self.conn.clone();
        let rows: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.instances_key())
            .query_async(&mut conn)
            .await
            .context("listing running instances")?;
        let since = Utc::now() - chrono::Duration::from_std(within).unwrap_or_default();
        let mut out = Vec::new();
        for (instance, raw) in rows {
            let Ok(doc) = serde_json::from_str::<InstanceDoc>(&raw) else {
                continue;
            };
            if doc.seen_at >= since {
                out.push(InstanceRow {
                    instance,
                    writing: doc.writing,
                    can_open: doc.can_open,
                    error: doc.error,
                    seen_at: doc.seen_at,
                });
            }
        }
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(out)
    }

    /// The positions stored in copy `number`, with their last errors: every partition's
    /// hash read in one pipelined round trip.
    pub async fn partitions(&self, number: u32) -> anyhow::Result<Vec<PartitionStatus>> {
        let prefix = self.prefix(number);
        let mut conn = self.conn.clone();
        let keys = keys_matching(&mut conn, &format!("{prefix}pos:*"))
            .await
            .context("listing positions")?;
        let partitions: Vec<i32> = keys
            .iter()
            .filter_map(|key| {
                key.strip_prefix(&prefix)?
                    .strip_prefix("pos:")?
                    .parse()
                    .ok()
            })
            .collect();
        let mut pipe = redis::pipe();
        for partition in &partitions {
            pipe.cmd("HGETALL").arg(position_key(&prefix, *partition));
        }
        let rows: Vec<HashMap<String, String>> = if partitions.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn)
                .await
                .context("reading positions")?
        };
        let mut out = Vec::new();
        for (partition, row) in partitions.into_iter().zip(rows) {
            let Some(offset) = row.get("offset").and_then(|o| o.parse().ok()) else {
                continue;
            };
            let time = |field: &str| {
                row.get(field)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
            };
            out.push(PartitionStatus {
                partition,
                offset,
                event_id: row.get("event_id").and_then(|s| s.parse().ok()),
                event_time: time("event_time"),
                writer: row.get("writer").cloned().unwrap_or_default(),
                updated_at: time("updated_at").unwrap_or_default(),
                last_error: row.get("last_error").cloned(),
                last_error_at: time("last_error_at"),
            });
        }
        out.sort_by_key(|p| p.partition);
        Ok(out)
    }
}

/// How a read model in Redis opens one of its copies: what its sink and its queries need
/// (key names, settings), from the copy's number.
pub trait OpenCopy: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// An opened copy.
    type Copy: Clone + Send + Sync + std::fmt::Debug + 'static;

    /// Copy `number` of `copies` (which exists).
    fn open(&self, copies: &RedisCopies, number: u32) -> Self::Copy;

    /// The number of an opened copy.
    fn number(copy: &Self::Copy) -> u32;

    /// The sink that writes `copy`.
    fn sink(copy: &Self::Copy) -> std::sync::Arc<dyn crate::Sink>;

    /// Deletes what the model keeps of copy `number` outside Redis (files): when the copy
    /// is created (a crash may have left a half-made one under that number), abandoned or
    /// dropped. Default: the model keeps nothing outside Redis.
    fn clear(&self, number: u32) -> anyhow::Result<()> {
        let _ = number;
        Ok(())
    }
}

/// A Redis read model's copies as the kit's [`super::Copies`]: the namespace's control
/// keys ([`RedisCopies`]) and how the model opens a copy.
#[derive(Clone, Debug)]
pub struct ModelCopies<O: OpenCopy> {
    copies: RedisCopies,
    opener: O,
}

impl<O: OpenCopy> ModelCopies<O> {
    pub fn new(copies: RedisCopies, opener: O) -> Self {
        Self { copies, opener }
    }

    /// The namespace's control keys.
    pub fn control(&self) -> &RedisCopies {
        &self.copies
    }

    pub fn namespace(&self) -> &str {
        self.copies.namespace()
    }

    pub fn connection(&self) -> ConnectionManager {
        self.copies.connection()
    }

    /// Whether the namespace was ever used (without creating anything).
    pub async fn exists(&self) -> anyhow::Result<bool> {
        self.copies.exists().await
    }

    /// Deletes every key of the namespace (tools and tests that made one of their own),
    /// and what the model keeps outside Redis for each copy.
    pub async fn drop_everything(&self) -> anyhow::Result<()> {
        for number in self.copies.drop_everything().await? {
            self.opener.clear(number)?;
        }
        Ok(())
    }

    fn copy(&self, number: u32) -> O::Copy {
        self.opener.open(&self.copies, number)
    }
}

#[async_trait::async_trait]
impl<O: OpenCopy> super::Copies for ModelCopies<O> {
    type Copy = O::Copy;

    fn number(copy: &O::Copy) -> u32 {
        O::number(copy)
    }

    fn sink(copy: &O::Copy) -> std::sync::Arc<dyn crate::Sink> {
        O::sink(copy)
    }

    async fn live(&self) -> anyhow::Result<O::Copy> {
        Ok(self.copy(self.copies.live().await?))
    }

    async fn live_number(&self) -> anyhow::Result<Option<u32>> {
        self.copies.live_number().await
    }

    async fn open(&self, number: u32) -> anyhow::Result<O::Copy> {
        self.copies.check_exists(number).await?;
        Ok(self.copy(number))
    }

    async fn create_next(&self) -> anyhow::Result<O::Copy> {
        let number = self.copies.create_next().await?;
        self.opener.clear(number)?;
        Ok(self.copy(number))
    }

    async fn promote(&self, number: u32) -> anyhow::Result<()> {
        self.copies.promote(number).await
    }

    async fn abandon(&self, number: u32) -> anyhow::Result<()> {
        self.copies.abandon(number).await?;
        self.opener.clear(number)
    }

    async fn newest_building(&self) -> anyhow::Result<Option<u32>> {
        self.copies.newest_building().await
    }

    async fn list(&self) -> anyhow::Result<Vec<CopyInfo>> {
        self.copies.list().await
    }

    async fn drop_retired(&self) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        for copy in self.copies.drop_retired().await? {
            self.opener.clear(copy.number)?;
            names.push(copy.name);
        }
        Ok(names)
    }

    async fn report_instance(&self, report: &InstanceReport) -> anyhow::Result<()> {
        self.copies.report_instance(report).await
    }

    async fn forget_instance(&self, instance: &str) -> anyhow::Result<()> {
        self.copies.forget_instance(instance).await
    }

    async fn instances(&self, within: Duration) -> anyhow::Result<Vec<InstanceRow>> {
        self.copies.instances(within).await
    }

    async fn partitions(&self, copy: &O::Copy) -> anyhow::Result<Vec<PartitionStatus>> {
        self.copies.partitions(O::number(copy)).await
    }
}
