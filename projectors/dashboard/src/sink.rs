//! The dashboard [`Sink`]: one copy of the model in Redis, in the kit's *transactional*
//! checkpoint mode, made of Redis's optimistic transaction (`WATCH` … `MULTI`/`EXEC`).
//!
//! Increments are not idempotent, so nothing may be applied twice. [`RedisSink::apply`], on
//! a connection of its own for the batch ([`Dedicated`]):
//! 1. `WATCH`es the partition's position and reads it (`HMGET pos offset token`) with the
//!    accounts of the batch it does not remember (`HMGET a:<id> v c s`), pipelined: one
//!    round trip;
//! 2. checks the fence (the stored offset is the one this writer read: otherwise
//!    [`SinkError::Fenced`], nothing written), folds the batch in Rust ([`crate::fold`]) and
//!    sums what it writes ([`Writes`]: one `HINCRBY` per bucket and field, however many
//!    events fall in it);
//! 3. sends the accounts, the increments, the expiries, the feed and the position (with a
//!    new random token) in one `MULTI`/`EXEC`. Redis runs it only if the position did not
//!    change since step 1: a writer that got in between (a rebalance overlap, a rebuild
//!    handing over) makes `EXEC` answer nil and nothing is written
//!    ([`SinkError::Transient`]: the runtime retries, reads again, and then meets the
//!    fence). So a replay, a duplicate or a fenced writer never double-counts, and the
//!    batch is all or nothing.
//!
//! Watching the position is enough: an account's key is written only by a writer of the
//! partition its events are keyed to, and only in the transaction that moves that
//! partition's position (a rebuild's fill from the event store, without positions, writes
//! a new copy nobody else writes yet). For the same reason the sink remembers the accounts
//! it wrote per partition ([`Remembered`]): while the stored token is the one it wrote,
//! nobody else wrote the partition and the accounts need not be read back (watching a
//! thousand account keys cost Redis 7.0 2.2 ms per batch: `WATCH` checks each key against
//! the client's whole list). Redis must not evict keys without a TTL
//! (`maxmemory-policy` `noeviction` or `volatile-*`), or an evicted account would be
//! remembered but gone.
//!
//! No answer from Redis is transient; an error inside the transaction (a key of the wrong
//! type) is permanent.
//!
//! [`RedisSink::prepare`] folds a batch into that transaction and [`RedisSink::write_raw`]
//! sends it as it is, without `WATCH`, reads or fence: the raw ceiling of
//! `prismctl bench dashboard`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use prism_events::{Currency, Envelope};
use prism_projector::{Batch, PositionUpdate, Sink, SinkError, StoredPosition};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use uuid::Uuid;

use crate::fold::{fold, Account, Status};
use crate::model::{Keys, Writes};

/// Idle dedicated connections kept for the next batches.
const IDLE_MAX: usize = 64;

/// Most accounts remembered per partition ([`Remembered`]); past it only the last batch's
/// accounts are kept.
const REMEMBERED_MAX: usize = 50_000;

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
    remembered: Arc<parking_lot::Mutex<HashMap<i32, Remembered>>>,
}

/// The accounts of one partition as this sink last wrote them, and the token it wrote
/// with the partition's position. Only a writer of the partition writes its accounts, and
/// always in the transaction that moves its position: while the stored token is this one,
/// nobody else has written, and the accounts need not be read back.
#[derive(Debug, Default)]
struct Remembered {
    token: u64,
    accounts: HashMap<Uuid, Stored>,
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
#[derive(Debug, Clone, Copy, Default)]
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
            remembered: Arc::default(),
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
            let current = accounts.get(&id).copied().flatten();
            if current.is_some_and(|a| a.version >= event.account_version) {
                continue;
            }
            let (account, effect) =
                fold(current.as_ref(), event).map_err(|r| SinkError::Rejected {
                    index,
                    reason: r.to_string(),
                })?;
            writes.add(&effect, self.large_amount_minor);
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
                currency: Currency::parse(&currency)
                    .map_err(|e| SinkError::Permanent(format!("{}: {e}", self.keys.account(id))))?,
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
        let mut ids: Vec<Uuid> = batch.versions.iter().map(|v| v.account_id).collect();
        ids.extend(batch.events.iter().map(|e| e.account_id.0));
        ids.sort_unstable();
        ids.dedup();
        let partition = batch.position.as_ref().map(|p| p.partition);
        // What this sink remembers of the partition, taken out while the batch runs (put
        // back only after a write that went through).
        let mut remembered = partition
            .and_then(|p| self.remembered.lock().remove(&p))
            .unwrap_or_default();

        // 1. Watch the position, then read it and the accounts not remembered.
        let position_key = partition.map(|p| self.keys.position(p));
        let unknown: Vec<Uuid> = ids
            .iter()
            .filter(|id| !remembered.accounts.contains_key(id))
            .copied()
            .collect();
        let mut read = redis::pipe();
        if let Some(key) = &position_key {
            read.cmd("WATCH").arg(key).ignore();
        }
        read.cmd("HMGET")
            .arg(position_key.as_deref().unwrap_or("-"))
            .arg("offset")
            .arg("token");
        add_account_reads(&mut read, &self.keys, &unknown);
        let (stored_offset, stored_token, rows): (Option<i64>, Option<u64>, Vec<AccountRow>) = {
            let mut values: Vec<redis::Value> = read
                .query_async(conn)
                .await
                .map_err(|e| transient("reading the batch's position and accounts", &e))?;
            if values.is_empty() {
                return Err(SinkError::Transient("Redis answered nothing".into()));
            }
            let first = values.remove(0);
            let (offset, token) = redis::from_redis_value(&first)
                .map_err(|e| transient("reading the position", &e))?;
            (offset, token, account_rows(&values)?)
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
        if stored_token.is_none() || stored_token != Some(remembered.token) {
            // Somebody else wrote the partition since (or nothing is remembered): what was
            // remembered is stale. The position stays watched while the rest is read.
            let known: Vec<Uuid> = ids
                .iter()
                .filter(|id| remembered.accounts.contains_key(id))
                .copied()
                .collect();
            remembered.accounts.clear();
            if !known.is_empty() {
                let mut again = redis::pipe();
                add_account_reads(&mut again, &self.keys, &known);
                let values: Vec<redis::Value> = again
                    .query_async(conn)
                    .await
                    .map_err(|e| transient("reading the batch's accounts", &e))?;
                for (id, row) in known.iter().zip(account_rows(&values)?) {
                    remembered.accounts.insert(*id, self.stored(*id, row)?);
                }
            }
        }
        for (id, row) in unknown.iter().zip(rows) {
            remembered.accounts.insert(*id, self.stored(*id, row)?);
        }
        let before: Vec<Stored> = ids
            .iter()
            .map(|id| remembered.accounts.get(id).copied().unwrap_or_default())
            .collect();
        let mut accounts: HashMap<Uuid, Option<Account>> = ids
            .iter()
            .zip(&before)
            .map(|(id, s)| (*id, s.account))
            .collect();
        let writes = self.fold_batch(&mut accounts, &batch.events)?;

        // 3. Everything, in one transaction that runs only if the position did not change.
        let handled: HashMap<Uuid, u64> = batch
            .versions
            .iter()
            .map(|v| (v.account_id, v.version))
            .collect();
        let after: Vec<(Uuid, Stored)> = ids
            .iter()
            .zip(&before)
            .map(|(id, before)| {
                let account = accounts.get(id).copied().flatten();
                let version = handled
                    .get(id)
                    .copied()
                    .unwrap_or(0)
                    .max(account.map_or(0, |a| a.version))
                    .max(before.version);
                (*id, Stored { version, account })
            })
            .collect();
        let token = Uuid::new_v4().as_u64_pair().0;
        let tx = self.transaction(&after, &writes, batch.position.as_ref(), token);
        let answer: redis::Value = tx.query_async(conn).await.map_err(|e| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                transient("writing the batch", &e)
            } else {
                SinkError::Permanent(format!("Redis refused the batch: {e}"))
            }
        })?;
        if answer == redis::Value::Nil {
            return Err(SinkError::Transient(
                "another writer changed the partition's position while the batch was folded; \
                 nothing was written"
                    .into(),
            ));
        }
        if let Some(p) = partition {
            if remembered.accounts.len() > REMEMBERED_MAX {
                remembered.accounts.clear();
            }
            remembered.accounts.extend(after);
            remembered.token = token;
            self.remembered.lock().insert(p, remembered);
        }
        Ok(())
    }

    /// Step 3's transaction: the accounts as they are after the batch, the increments, and
    /// the position with `token`.
    fn transaction(
        &self,
        accounts: &[(Uuid, Stored)],
        writes: &Writes,
        position: Option<&PositionUpdate>,
        token: u64,
    ) -> redis::Pipeline {
        let mut tx = redis::pipe();
        tx.atomic();
        for (id, stored) in accounts {
            tx.cmd("HSET")
                .arg(self.keys.account(*id))
                .arg("v")
                .arg(stored.version)
                .arg("c")
                .arg(stored.account.as_ref().map_or("", |a| a.currency.as_str()))
                .arg("s")
                .arg(stored.account.map_or("", |a| a.status.as_str()))
                .ignore();
        }
        add_increments(&mut tx, writes, &self.keys, self.feed_max);
        if let Some(p) = position {
            let mut hset = redis::cmd("HSET");
            hset.arg(self.keys.position(p.partition))
                .arg("offset")
                .arg(p.offset)
                .arg("token")
                .arg(token)
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
        tx
    }

    /// Folds `events` from `accounts` into the transaction [`Sink::apply`] would send for
    /// them after its reads and checks (untimed by the benchmark, which then sends it with
    /// [`RedisSink::write_raw`]).
    pub fn prepare(
        &self,
        accounts: &mut HashMap<Uuid, Option<Account>>,
        events: &[Envelope],
        position: Option<PositionUpdate>,
    ) -> Result<Prepared, SinkError> {
        let before: HashMap<Uuid, u64> = events
            .iter()
            .map(|e| {
                let id = e.account_id.0;
                (
                    id,
                    accounts
                        .get(&id)
                        .copied()
                        .flatten()
                        .map_or(0, |a| a.version),
                )
            })
            .collect();
        let writes = self.fold_batch(accounts, events)?;
        let mut touched: Vec<(Uuid, Stored)> = before
            .into_iter()
            .map(|(id, version)| {
                let account = accounts.get(&id).copied().flatten();
                let version = version.max(account.map_or(0, |a| a.version));
                (id, Stored { version, account })
            })
            .collect();
        touched.sort_unstable_by_key(|(id, _)| *id);
        Ok(Prepared {
            accounts: touched,
            writes,
            position,
        })
    }

    /// Sends a prepared batch's transaction as it is: no `WATCH`, no reads, no fence.
    pub async fn write_raw(&self, prepared: &Prepared) -> Result<(), SinkError> {
        let tx = self.transaction(
            &prepared.accounts,
            &prepared.writes,
            prepared.position.as_ref(),
            0,
        );
        let mut conn = self.conn.clone();
        tx.query_async::<()>(&mut conn)
            .await
            .map_err(|e| transient("writing the raw batch", &e))
    }
}

/// One batch's transaction, folded ([`RedisSink::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    accounts: Vec<(Uuid, Stored)>,
    writes: Writes,
    position: Option<PositionUpdate>,
}

impl Prepared {
    /// Redis commands the transaction holds.
    pub fn commands(&self) -> usize {
        self.accounts.len() + self.writes.commands() + usize::from(self.position.is_some())
    }
}

/// `HMGET a:<id> v c s` for each of `ids`.
fn add_account_reads(pipe: &mut redis::Pipeline, keys: &Keys, ids: &[Uuid]) {
    for id in ids {
        pipe.cmd("HMGET")
            .arg(keys.account(*id))
            .arg("v")
            .arg("c")
            .arg("s");
    }
}

fn account_rows(values: &[redis::Value]) -> Result<Vec<AccountRow>, SinkError> {
    values
        .iter()
        .map(redis::from_redis_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| transient("reading the accounts", &e))
}

/// `writes` as commands on copy `keys` (the raw path sends exactly these).
fn add_increments(pipe: &mut redis::Pipeline, writes: &Writes, keys: &Keys, feed_max: u32) {
    let mut name = String::new();
    for ((grain, n), fields) in writes.bucket_counters() {
        let key = keys.counters(grain, n);
        for (field, by) in fields {
            name.clear();
            field.write_name(&mut name);
            pipe.cmd("HINCRBY").arg(&key).arg(&name).arg(by).ignore();
        }
        pipe.cmd("EXPIREAT")
            .arg(&key)
            .arg(keys.expires_at(grain, n))
            .ignore();
    }
    let status = keys.status();
    for (status_name, by) in writes.status_changes() {
        pipe.cmd("HINCRBY")
            .arg(&status)
            .arg(status_name.as_str())
            .arg(by)
            .ignore();
    }
    for ((top, (grain, n)), members) in writes.top_increments() {
        let key = keys.top(top, grain, n);
        for (member, by) in members {
            pipe.cmd("ZINCRBY").arg(&key).arg(by).arg(member).ignore();
        }
        pipe.cmd("EXPIREAT")
            .arg(&key)
            .arg(keys.top_expires_at(grain, n))
            .ignore();
    }
    let mut text = Uuid::encode_buffer();
    for ((grain, n), accounts) in writes.distinct_accounts() {
        let key = keys.distinct(grain, n);
        let cmd = pipe.cmd("PFADD").arg(&key);
        for id in accounts {
            cmd.arg(&*id.hyphenated().encode_lower(&mut text));
        }
        cmd.ignore();
        pipe.cmd("EXPIREAT")
            .arg(&key)
            .arg(keys.expires_at(grain, n))
            .ignore();
    }
    let feed = keys.feed();
    for entry in writes.feed() {
        let cmd = pipe
            .cmd("XADD")
            .arg(&feed)
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
