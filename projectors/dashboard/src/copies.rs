//! The dashboard's copies: a copy is a key prefix (`<namespace>:c<N>:`), and the control
//! keys beside them say which is live:
//! - `<namespace>:control`, a hash: `live` (the live copy's number), `next` (the last number
//!   handed out);
//! - `<namespace>:copies`, a hash: copy number → `{"state", "created_at", "live_since"}`;
//! - `<namespace>:instances`, a hash: running instance → its last report.
//!
//! [`DashboardCopies::promote`] is one Lua script: the building copy becomes live, the
//! live one retired and the pointer moves, atomically: a reader sees the old copy or the
//! new one, never neither. Dropping a copy deletes its keys by prefix (`SCAN` + `UNLINK`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use prism_platform::config::RedisConfig;
use prism_projector::copies::{CopyInfo, CopyState, InstanceReport, InstanceRow, PartitionStatus};
use prism_projector::Sink;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::config::DashboardConfig;
use crate::model::Keys;
use crate::sink::{Dedicated, RedisSink};

/// An opened copy: its keys and the shared connection.
#[derive(Clone)]
pub struct DashboardCopy {
    pub number: u32,
    pub keys: Keys,
    pub conn: ConnectionManager,
    pub dedicated: Dedicated,
    pub large_amount_minor: i64,
    pub feed_max: u32,
}

impl std::fmt::Debug for DashboardCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardCopy")
            .field("number", &self.number)
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl DashboardCopy {
    pub fn sink(&self) -> RedisSink {
        RedisSink::new(
            self.conn.clone(),
            self.dedicated.clone(),
            self.keys.clone(),
            self.large_amount_minor,
            self.feed_max,
        )
    }
}

/// The copies in one namespace.
#[derive(Clone)]
pub struct DashboardCopies {
    conn: ConnectionManager,
    dedicated: Dedicated,
    namespace: String,
    large_amount_minor: i64,
    feed_max: u32,
    retention_hours: i64,
}

impl std::fmt::Debug for DashboardCopies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardCopies")
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

/// Every key matching `pattern` (`SCAN`, so Redis is never blocked by one long command).
pub async fn keys_matching(
    conn: &mut impl redis::aio::ConnectionLike,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(2_000)
            .query_async(conn)
            .await?;
        out.extend(found);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Connects with the configured timeouts; the manager reconnects by itself after Redis
/// restarts (commands in between fail and are retried by their callers).
pub async fn connect(redis: &RedisConfig) -> anyhow::Result<ConnectionManager> {
    let client = prism_platform::clients::redis(redis)?;
    let timeout = Duration::from_millis(redis.connect_timeout_ms.max(1));
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_number_of_retries(2)
        .set_max_delay(1_000);
    ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| format!("connecting to Redis at {}", redis.url.hosts()))
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl DashboardCopies {
    pub async fn connect(redis: &RedisConfig, config: &DashboardConfig) -> anyhow::Result<Self> {
        let client = prism_platform::clients::redis(redis)?;
        let timeout = Duration::from_millis(redis.connect_timeout_ms.max(1));
        Ok(Self {
            conn: connect(redis).await?,
            dedicated: Dedicated::new(client, timeout),
            namespace: config.namespace.clone(),
            large_amount_minor: config.large_amount_minor,
            feed_max: config.feed_max,
            retention_hours: i64::from(config.retention_hours),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
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
            .context("looking for the dashboard's control key")?;
        Ok(n > 0)
    }

    fn copy(&self, number: u32) -> DashboardCopy {
        DashboardCopy {
            number,
            keys: Keys::new(&self.namespace, number).retention_hours(self.retention_hours),
            conn: self.conn.clone(),
            dedicated: self.dedicated.clone(),
            large_amount_minor: self.large_amount_minor,
            feed_max: self.feed_max,
        }
    }

    async fn row(&self, number: u32) -> anyhow::Result<Option<CopyRow>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.copies())
            .arg(number)
            .query_async(&mut conn)
            .await
            .context("reading the dashboard's copies")?;
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

    pub async fn live(&self) -> anyhow::Result<DashboardCopy> {
        let mut conn = self.conn.clone();
        let n: u32 = redis::Script::new(FIRST)
            .key(self.control())
            .key(self.copies())
            .arg(Self::new_row(CopyState::Live)?)
            .invoke_async(&mut conn)
            .await
            .context("finding or creating the live dashboard copy")?;
        Ok(self.copy(n))
    }

    pub async fn live_number(&self) -> anyhow::Result<Option<u32>> {
        let mut conn = self.conn.clone();
        redis::cmd("HGET")
            .arg(self.control())
            .arg("live")
            .query_async(&mut conn)
            .await
            .context("reading the live dashboard copy")
    }

    pub async fn open(&self, number: u32) -> anyhow::Result<DashboardCopy> {
        if self.row(number).await?.is_none() {
            bail!(
                "dashboard copy {number} does not exist in {}",
                self.namespace
            );
        }
        Ok(self.copy(number))
    }

    pub async fn create_next(&self) -> anyhow::Result<DashboardCopy> {
        let mut conn = self.conn.clone();
        let n: u32 = redis::cmd("HINCRBY")
            .arg(self.control())
            .arg("next")
            .arg(1)
            .query_async(&mut conn)
            .await
            .context("numbering a new dashboard copy")?;
        // A number is never reused; a crash before this line leaves a gap, nothing else.
        self.delete_prefix(&self.copy(n).keys).await?;
        redis::cmd("HSET")
            .arg(self.copies())
            .arg(n)
            .arg(Self::new_row(CopyState::Building)?)
            .query_async::<()>(&mut conn)
            .await
            .context("recording a new dashboard copy")?;
        Ok(self.copy(n))
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
            .with_context(|| format!("promoting dashboard copy {number}"))?;
        Ok(())
    }

    pub async fn abandon(&self, number: u32) -> anyhow::Result<()> {
        match self.row(number).await? {
            Some(row) if row.state == CopyState::Building.as_str() => {}
            Some(row) => bail!("dashboard copy {number} is {}, not building", row.state),
            None => return Ok(()),
        }
        self.drop_copy(number).await
    }

    async fn drop_copy(&self, number: u32) -> anyhow::Result<()> {
        self.delete_prefix(&self.copy(number).keys).await?;
        let mut conn = self.conn.clone();
        redis::cmd("HDEL")
            .arg(self.copies())
            .arg(number)
            .query_async::<()>(&mut conn)
            .await
            .context("forgetting a dashboard copy")
    }

    /// Deletes every key starting with the copy's prefix.
    async fn delete_prefix(&self, keys: &Keys) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let found = keys_matching(&mut conn, &format!("{}*", keys.prefix()))
            .await
            .context("listing a dashboard copy's keys")?;
        for chunk in found.chunks(1_000) {
            redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<()>(&mut conn)
                .await
                .context("deleting a dashboard copy's keys")?;
        }
        Ok(())
    }

    /// Deletes every key of the namespace: every copy, the control keys, the instances
    /// (tools and tests that made a namespace of their own).
    pub async fn drop_everything(&self) -> anyhow::Result<()> {
        for copy in self.list().await? {
            self.delete_prefix(&self.copy(copy.number).keys).await?;
        }
        let mut conn = self.conn.clone();
        redis::cmd("UNLINK")
            .arg(self.control())
            .arg(self.copies())
            .arg(self.instances_key())
            .query_async::<()>(&mut conn)
            .await
            .context("deleting the dashboard's control keys")
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
            .context("listing the dashboard's copies")?;
        let mut out = Vec::with_capacity(rows.len());
        for (number, raw) in rows {
            let row: CopyRow = serde_json::from_str(&raw)
                .with_context(|| format!("dashboard copy {number}'s row is not JSON"))?;
            let state = CopyState::parse(&row.state)
                .with_context(|| format!("dashboard copy {number} is in state {:?}", row.state))?;
            out.push(CopyInfo {
                number,
                name: format!("{}*", self.copy(number).keys.prefix()),
                state,
                created_at: row.created_at,
                live_since: row.live_since,
            });
        }
        out.sort_by_key(|c| c.number);
        Ok(out)
    }

    pub async fn drop_retired(&self) -> anyhow::Result<Vec<String>> {
        let mut dropped = Vec::new();
        for copy in self.list().await? {
            if copy.state == CopyState::Retired {
                self.drop_copy(copy.number).await?;
                dropped.push(copy.name);
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

    pub async fn partitions(&self, copy: &DashboardCopy) -> anyhow::Result<Vec<PartitionStatus>> {
        let mut conn = self.conn.clone();
        let keys = keys_matching(&mut conn, &format!("{}pos:*", copy.keys.prefix()))
            .await
            .context("listing positions")?;
        let mut out = Vec::new();
        for key in keys {
            let Some(crate::model::KeyKind::Position(partition)) = copy.keys.parse(&key) else {
                continue;
            };
            let row: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .context("reading a position")?;
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

/// The sink of an opened copy, as the kit wants it.
pub fn sink_of(copy: &DashboardCopy) -> Arc<dyn Sink> {
    Arc::new(copy.sink())
}
