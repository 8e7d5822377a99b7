//! The dashboard [`Sink`]: one copy of the model in Redis, in the kit's *transactional*
//! checkpoint mode, made of Redis's optimistic transaction (`WATCH` … `MULTI`/`EXEC`).
//!
//! Increments are not idempotent, so nothing may be applied twice. [`RedisSink::apply`], on
//! a connection of its own for the batch ([`Dedicated`]):
//! 1. `WATCH`es the partition's position and the batch's accounts, and reads them
//!    (`HGET pos offset`, `HMGET a:<id> v c s`), pipelined: one round trip;
//! 2. checks the fence (the stored offset is the one this writer read: otherwise
//!    [`SinkError::Fenced`], nothing written), folds the batch in Rust ([`crate::fold`]) and
//!    sums what it writes ([`Writes`]: one `HINCRBY` per bucket and field, however many
//!    events fall in it);
//! 3. sends the accounts, the increments, the expiries, the feed and the position in one
//!    `MULTI`/`EXEC`. Redis runs it only if no watched key changed since step 1: a writer
//!    that got in between (a rebalance overlap, a rebuild handing over) makes `EXEC` answer
//!    nil and nothing is written ([`SinkError::Transient`]: the runtime retries, reads
//!    again, and then meets the fence). So a replay, a duplicate or a fenced writer never
//!    double-counts, and the batch is all or nothing.
//!
//! No answer from Redis is transient; an error inside the transaction (a key of the wrong
//! type) is permanent.
//!
//! [`RedisSink::write_raw`] sends the same writes as plain commands in one `MULTI`/`EXEC`,
//! without `WATCH`, reads or position: the raw ceiling of `prismctl bench dashboard`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use prism_events::Envelope;
use prism_projector::{Batch, Sink, SinkError, StoredPosition};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use uuid::Uuid;

use crate::fold::{fold, Account, Status};
use crate::model::{Keys, Writes};

/// Idle dedicated connections kept for the next batches.
const IDLE_MAX: usize = 64;

/// Connections of their own for `WATCH` (which belongs to a connection: a shared,
/// multiplexed one would mix other callers' commands into the transaction). A batch takes
/// one and gives it back; a connection that failed is dropped. Cheap to clone.
#[derive(Clone)]
pub struct Dedicated {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    idle: Arc<parking_lot::Mutex<Vec<MultiplexedConnection>>>,
}

impl std::fmt::Debug for Dedicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedicated")
            .field("idle", &self.idle.lock().len())
            .finish_non_exhaustive()
    }
}

impl Dedicated {
    /// Connections to `client`'s server, each command answered within `timeout`.
    pub fn new(client: redis::Client, timeout: std::time::Duration) -> Self {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        Self {
            client,
            config,
            idle: Arc::default(),
        }
    }

    async fn take(&self) -> Result<MultiplexedConnection, SinkError> {
        if let Some(conn) = self.idle.lock().pop() {
            return Ok(conn);
        }
        self.client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| transient("connecting to Redis", &e))
    }

    fn give(&self, conn: MultiplexedConnection) {
        let mut idle = self.idle.lock();
        if idle.len() < IDLE_MAX {
            idle.push(conn);
        }
    }
}

/// What a copy's sink needs.
#[derive(Clone)]
pub struct RedisSink {
    conn: ConnectionManager,
    dedicated: Dedicated,
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

/// An account's stored fields: `HMGET a:<id> v c s`.
type AccountRow = (Option<u64>, Option<String>, Option<String>);

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
        dedicated: Dedicated,
        keys: Keys,
        large_amount_minor: i64,
        feed_max: u32,
    ) -> Self {
        Self {
            conn,
            dedicated,
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

    /// An account's stored fields (`HMGET a:<id> v c s`) as read back.
    fn stored(
        &self,
        id: Uuid,
        (version, currency, status): AccountRow,
    ) -> Result<Stored, SinkError> {
        let version = version.unwrap_or(0);
        let account = match (currency.filter(|c| !c.is_empty()), status) {
            (Some(currency), Some(status)) => Some(Account {
                version,
                currency,
                status: Status::parse(&status).ok_or_else(|| {
                    SinkError::Permanent(format!(
                        "{} holds status {status:?}, which this build does not know",
                        self.keys.account(id)
                    ))
                })?,
            }),
            _ => None,
        };
        Ok(Stored { version, account })
    }

    /// Steps 1 to 3 of [`Sink::apply`] on `conn`, a connection of the batch's own.
    async fn apply_on(
        &self,
        conn: &mut MultiplexedConnection,
        batch: &Batch,
    ) -> Result<(), SinkError> {
        // 1. Watch, then read, the position and the accounts.
        let mut ids: Vec<Uuid> = batch.versions.iter().map(|v| v.account_id).collect();
        ids.extend(batch.events.iter().map(|e| e.account_id.0));
        ids.sort_unstable();
        ids.dedup();
        let position_key = batch
            .position
            .as_ref()
            .map(|p| self.keys.position(p.partition));
        let account_keys: Vec<String> = ids.iter().map(|id| self.keys.account(*id)).collect();
        let mut read = redis::pipe();
        read.cmd("WATCH")
            .arg(&position_key)
            .arg(&account_keys)
            .ignore();
        read.cmd("HGET")
            .arg(position_key.as_deref().unwrap_or("-"))
            .arg("offset");
        for key in &account_keys {
            read.cmd("HMGET").arg(key).arg("v").arg("c").arg("s");
        }
        let (stored_offset, rows): (Option<i64>, Vec<AccountRow>) = {
            let mut values: Vec<redis::Value> = read
                .query_async(conn)
                .await
                .map_err(|e| transient("reading the batch's position and accounts", &e))?;
            if values.is_empty() {
                return Err(SinkError::Transient("Redis answered nothing".into()));
            }
            let first = values.remove(0);
            let offset: Option<i64> = redis::from_redis_value(&first)
                .map_err(|e| transient("reading the position", &e))?;
            let rows = values
                .iter()
                .map(redis::from_redis_value)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| transient("reading the accounts", &e))?;
            (offset, rows)
        };

        // 2. The fence, then the fold, summed.
        if let Some(p) = &batch.position {
            if stored_offset != p.expected {
                return Err(SinkError::Fenced {
                    partition: p.partition,
                    stored: stored_offset,
                });
            }
        }
        let mut stored = HashMap::with_capacity(ids.len());
        for (id, row) in ids.iter().zip(rows) {
            stored.insert(*id, self.stored(*id, row)?);
        }
        let mut accounts: HashMap<Uuid, Option<Account>> = stored
            .iter()
            .map(|(id, s)| (*id, s.account.clone()))
            .collect();
        let writes = self.fold_batch(&mut accounts, &batch.events)?;

        // 3. Everything, in one transaction that runs only if nothing watched changed.
        let handled: HashMap<Uuid, u64> = batch
            .versions
            .iter()
            .map(|v| (v.account_id, v.version))
            .collect();
        let mut tx = redis::pipe();
        tx.atomic();
        for (id, key) in ids.iter().zip(&account_keys) {
            let before = stored.get(id).map_or(0, |s| s.version);
            let folded = accounts.get(id).and_then(Option::as_ref);
            let version = handled
                .get(id)
                .copied()
                .unwrap_or(0)
                .max(folded.map_or(0, |a| a.version))
                .max(before);
            tx.cmd("HSET")
                .arg(key)
                .arg("v")
                .arg(version)
                .arg("c")
                .arg(folded.map_or("", |a| a.currency.as_str()))
                .arg("s")
                .arg(folded.map_or("", |a| a.status.as_str()))
                .ignore();
        }
        add_increments(&mut tx, &writes, &self.keys.feed(), self.feed_max);
        if let (Some(p), Some(key)) = (&batch.position, &position_key) {
            let mut hset = redis::cmd("HSET");
            hset.arg(key)
                .arg("offset")
                .arg(p.offset)
                .arg("writer")
                .arg(&p.writer)
                .arg("updated_at")
                .arg(time_text(Utc::now()));
            if let (Some(id), Some(time)) = (p.event_id, p.event_time) {
                hset.arg("event_id")
                    .arg(id.to_string())
                    .arg("event_time")
                    .arg(time_text(time));
            }
            tx.add_command(hset).ignore();
        }
        tx.cmd("PING");
        let answer: redis::Value = tx.query_async(conn).await.map_err(|e| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                transient("writing the batch", &e)
            } else {
                SinkError::Permanent(format!("Redis refused the batch: {e}"))
            }
        })?;
        if answer == redis::Value::Nil {
            return Err(SinkError::Transient(
                "another writer changed the partition's position or one of its accounts \
                 while the batch was folded; nothing was written"
                    .into(),
            ));
        }
        Ok(())
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
        let mut conn = self.dedicated.take().await?;
        match self.apply_on(&mut conn, batch).await {
            Ok(()) => {
                self.dedicated.give(conn);
                Ok(())
            }
            // A refusal leaves the connection watching: clear it before it is reused.
            Err(e @ (SinkError::Fenced { .. } | SinkError::Rejected { .. })) => {
                if redis::cmd("UNWATCH")
                    .query_async::<()>(&mut conn)
                    .await
                    .is_ok()
                {
                    self.dedicated.give(conn);
                }
                Err(e)
            }
            // Anything else: the connection is dropped (and its WATCH with it).
            Err(e) => Err(e),
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
