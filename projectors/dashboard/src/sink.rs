//! The dashboard [`Sink`]: one copy of the model in Redis, in the kit's *transactional*
//! checkpoint mode, made of one Lua script per batch (`apply.lua`).
//!
//! Increments are not idempotent, so nothing may be applied twice. [`RedisSink::apply`]:
//! 1. reads the batch's accounts (`HMGET a:<id> v c s`, pipelined: one round trip);
//! 2. folds the batch in Rust ([`crate::fold`]) and sums what it writes ([`Writes`]):
//!    one `HINCRBY` per bucket and field, however many events fall in it;
//! 3. runs the script, which checks the partition's fence (stored offset = the one this
//!    writer read) and each account's version (= the one step 2 folded from), and only
//!    then writes the accounts, the increments, the expiries, the feed and the position.
//!    Redis runs a script alone, so the batch is all or nothing, and a replay, a duplicate
//!    or a fenced writer finds the versions or the offset moved and writes nothing.
//!
//! A stale version means another writer got between steps 1 and 3 (its position write
//! would fence this one, so it is rare): [`SinkError::Transient`], and the runtime's retry
//! reads again. No answer from Redis is transient too; a script error is permanent.
//!
//! [`RedisSink::write_raw`] sends the same writes as plain commands in one `MULTI`/`EXEC`
//! pipeline, without reads, checks or position: the raw ceiling of `prismctl bench
//! dashboard`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use prism_events::Envelope;
use prism_projector::{Batch, Sink, SinkError, StoredPosition};
use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::fold::{fold, Account, Status};
use crate::model::{Keys, Writes};

/// The batch script, loaded once per connection (`EVALSHA`, `EVAL` after a restart).
static SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("apply.lua")));

/// What a copy's sink needs.
#[derive(Clone)]
pub struct RedisSink {
    conn: ConnectionManager,
    keys: Keys,
    large_amount_minor: i64,
    feed_max: u32,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

/// An account as read back: the handled version, and the fold's state if the account was
/// opened (an account whose opening was dead-lettered has a version and no state).
#[derive(Debug, Clone, Default)]
struct Stored {
    version: u64,
    account: Option<Account>,
}

impl RedisSink {
    pub fn new(
        conn: ConnectionManager,
        keys: Keys,
        large_amount_minor: i64,
        feed_max: u32,
    ) -> Self {
        Self {
            conn,
            keys,
            large_amount_minor,
            feed_max,
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Folds `events` onto `accounts` and sums what they write (step 2): pure, and what
    /// the benchmark's raw path precomputes. An event at or below its account's version
    /// was applied already and adds nothing; a refusal names the event's index.
    pub fn fold_batch(
        &self,
        accounts: &mut HashMap<Uuid, Option<Account>>,
        events: &[Envelope],
    ) -> Result<Writes, SinkError> {
        let mut writes = Writes::default();
        for (index, event) in events.iter().enumerate() {
            let id = event.account_id.0;
            let current = accounts.get(&id).and_then(Option::as_ref);
            if current.is_some_and(|a| a.version >= event.account_version) {
                continue;
            }
            let (account, effect) = fold(current, event).map_err(|r| SinkError::Rejected {
                index,
                reason: r.to_string(),
            })?;
            writes.add(&self.keys, &effect, self.large_amount_minor);
            accounts.insert(id, Some(account));
        }
        Ok(writes)
    }

    /// Step 1: the stored state of `ids`.
    async fn load(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Stored>, SinkError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.keys.account(*id))
                .arg("v")
                .arg("c")
                .arg("s");
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(Option<u64>, Option<String>, Option<String>)> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| transient("reading the batch's accounts", &e))?;
        let mut out = HashMap::with_capacity(ids.len());
        for (id, (version, currency, status)) in ids.iter().zip(rows) {
            let version = version.unwrap_or(0);
            let account = match (currency.filter(|c| !c.is_empty()), status) {
                (Some(currency), Some(status)) => Some(Account {
                    version,
                    currency,
                    status: Status::parse(&status).ok_or_else(|| {
                        SinkError::Permanent(format!(
                            "{} holds status {status:?}, which this build does not know",
                            self.keys.account(*id)
                        ))
                    })?,
                }),
                _ => None,
            };
            out.insert(*id, Stored { version, account });
        }
        Ok(out)
    }

    /// Sends `writes` as plain commands in one `MULTI`/`EXEC` (no checks, no position).
    pub async fn write_raw(&self, writes: &Writes) -> Result<(), SinkError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        add_increments(&mut pipe, writes, &self.keys.feed(), self.feed_max);
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| transient("writing the raw batch", &e))
    }
}

/// `writes` as plain commands (the raw path).
fn add_increments(pipe: &mut redis::Pipeline, writes: &Writes, feed_key: &str, feed_max: u32) {
    for (key, fields) in &writes.counters {
        for (field, by) in fields {
            pipe.cmd("HINCRBY").arg(key).arg(field).arg(by).ignore();
        }
    }
    for (key, members) in &writes.tops {
        for (member, by) in members {
            pipe.cmd("ZINCRBY").arg(key).arg(by).arg(member).ignore();
        }
    }
    for (key, members) in &writes.distinct {
        pipe.cmd("PFADD")
            .arg(key)
            .arg(members.iter().collect::<Vec<_>>())
            .ignore();
    }
    for (key, at) in &writes.expire {
        pipe.cmd("EXPIREAT").arg(key).arg(at).ignore();
    }
    for entry in &writes.feed {
        let cmd = pipe
            .cmd("XADD")
            .arg(feed_key)
            .arg("MAXLEN")
            .arg("=")
            .arg(feed_max)
            .arg("*");
        for (field, value) in &entry.fields {
            cmd.arg(*field).arg(value);
        }
        cmd.ignore();
    }
}

fn transient(what: &str, e: &redis::RedisError) -> SinkError {
    SinkError::Transient(format!("{what}: {e}"))
}

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[async_trait]
impl Sink for RedisSink {
    async fn positions(&self, partitions: &[i32]) -> Result<Vec<StoredPosition>, SinkError> {
        let mut pipe = redis::pipe();
        for p in partitions {
            pipe.cmd("HMGET")
                .arg(self.keys.position(*p))
                .arg("offset")
                .arg("event_id")
                .arg("event_time");
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(Option<i64>, Option<String>, Option<String>)> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| transient("reading positions", &e))?;
        Ok(partitions
            .iter()
            .zip(rows)
            .filter_map(|(partition, (offset, id, time))| {
                Some(StoredPosition {
                    partition: *partition,
                    offset: offset?,
                    event_id: id.and_then(|s| s.parse().ok()),
                    event_time: time
                        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
                        .map(|t| t.with_timezone(&Utc)),
                })
            })
            .collect())
    }

    async fn versions(&self, accounts: &[Uuid]) -> Result<HashMap<Uuid, u64>, SinkError> {
        let mut pipe = redis::pipe();
        for id in accounts {
            pipe.cmd("HGET").arg(self.keys.account(*id)).arg("v");
        }
        let mut conn = self.conn.clone();
        let rows: Vec<Option<u64>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| transient("reading account versions", &e))?;
        Ok(accounts
            .iter()
            .zip(rows)
            .filter_map(|(id, v)| Some((*id, v?)))
            .collect())
    }

    async fn apply(&self, batch: &Batch) -> Result<(), SinkError> {
        // 1. The accounts, as stored.
        let mut ids: Vec<Uuid> = batch.versions.iter().map(|v| v.account_id).collect();
        ids.extend(batch.events.iter().map(|e| e.account_id.0));
        ids.sort_unstable();
        ids.dedup();
        let stored = self.load(&ids).await?;

        // 2. The fold, summed.
        let mut accounts: HashMap<Uuid, Option<Account>> = stored
            .iter()
            .map(|(id, s)| (*id, s.account.clone()))
            .collect();
        let writes = self.fold_batch(&mut accounts, &batch.events)?;

        // 3. The script.
        let mut call = SCRIPT.prepare_invoke();
        match &batch.position {
            Some(p) => {
                call.arg(self.keys.position(p.partition))
                    .arg(p.expected.map(|o| o.to_string()).unwrap_or_default())
                    .arg(p.offset)
                    .arg(p.event_id.map(|id| id.to_string()).unwrap_or_default())
                    .arg(p.event_time.map(time_text).unwrap_or_default())
                    .arg(&p.writer)
                    .arg(time_text(Utc::now()));
            }
            None => {
                call.arg("").arg("").arg("").arg("").arg("").arg("").arg("");
            }
        }
        let handled: HashMap<Uuid, u64> = batch
            .versions
            .iter()
            .map(|v| (v.account_id, v.version))
            .collect();
        call.arg(ids.len());
        for id in &ids {
            let before = stored.get(id).map_or(0, |s| s.version);
            let folded = accounts.get(id).and_then(Option::as_ref);
            let version = handled
                .get(id)
                .copied()
                .unwrap_or(0)
                .max(folded.map_or(0, |a| a.version))
                .max(before);
            call.arg(self.keys.account(*id))
                .arg(before)
                .arg(version)
                .arg(folded.map_or("", |a| a.currency.as_str()))
                .arg(folded.map_or("", |a| a.status.as_str()));
        }
        let hincr: usize = writes.counters.values().map(|f| f.len()).sum();
        call.arg(hincr);
        for (key, fields) in &writes.counters {
            for (field, by) in fields {
                call.arg(key).arg(field).arg(by);
            }
        }
        let zincr: usize = writes.tops.values().map(|m| m.len()).sum();
        call.arg(zincr);
        for (key, members) in &writes.tops {
            for (member, by) in members {
                call.arg(key).arg(member).arg(by);
            }
        }
        call.arg(writes.distinct.len());
        for (key, members) in &writes.distinct {
            call.arg(key).arg(members.len());
            for m in members {
                call.arg(m);
            }
        }
        call.arg(writes.expire.len());
        for (key, at) in &writes.expire {
            call.arg(key).arg(at);
        }
        call.arg(self.keys.feed())
            .arg(self.feed_max)
            .arg(writes.feed.len());
        for entry in &writes.feed {
            call.arg(entry.fields.len());
            for (field, value) in &entry.fields {
                call.arg(*field).arg(value);
            }
        }
        let mut conn = self.conn.clone();
        let answer: Vec<String> = call.invoke_async(&mut conn).await.map_err(|e| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                transient("applying the batch", &e)
            } else {
                SinkError::Permanent(format!("the batch script failed: {e}"))
            }
        })?;
        match answer.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("fenced") => Err(SinkError::Fenced {
                partition: batch.position.as_ref().map_or(-1, |p| p.partition),
                stored: answer.get(1).and_then(|s| s.parse().ok()),
            }),
            Some("stale") => Err(SinkError::Transient(format!(
                "{} moved to version {} while the batch was folded",
                answer.get(1).map_or("an account", String::as_str),
                answer.get(2).map_or("?", String::as_str)
            ))),
            _ => Err(SinkError::Permanent(format!(
                "the batch script answered {answer:?}"
            ))),
        }
    }

    async fn record_error(&self, partition: i32, error: &str) -> Result<(), SinkError> {
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(self.keys.position(partition))
            .arg("last_error")
            .arg(prism_projector::checkpoint::clip(
                error,
                prism_projector::checkpoint::LAST_ERROR_MAX,
            ))
            .arg("last_error_at")
            .arg(time_text(Utc::now()))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| transient("recording the last error", &e))
    }
}

/// A sink on `keys` over `conn` (shared by every sink of a process: one multiplexed
/// connection that reconnects by itself).
pub fn sink(conn: ConnectionManager, keys: Keys, large: i64, feed_max: u32) -> Arc<dyn Sink> {
    Arc::new(RedisSink::new(conn, keys, large, feed_max))
}
