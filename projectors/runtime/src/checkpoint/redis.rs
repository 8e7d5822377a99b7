//! Transactional checkpoints in Redis (feature `redis`), made of Redis's optimistic
//! transaction (`WATCH` … `MULTI`/`EXEC`): a read model in Redis supplies its
//! [`RedisModel`] (how an account is read and written, its pure fold, its other writes) and
//! [`RedisCheckpoint`] is its [`Sink`].
//!
//! [`RedisCheckpoint::apply`], on a connection of its own for the batch ([`Dedicated`]):
//! 1. `WATCH`es the partition's position and reads it (`HMGET pos offset token`) with the
//!    accounts of the batch it does not remember, pipelined: one round trip;
//! 2. checks the fence (the stored offset is the one this writer read: otherwise
//!    [`SinkError::Fenced`], nothing written) and folds the batch in Rust
//!    ([`RedisModel::fold_batch`]); then [`RedisModel::before_commit`] makes whatever the
//!    model keeps outside Redis durable (it must be harmless to repeat);
//! 3. sends the accounts, the model's other writes and the position (with a new random
//!    token) in one `MULTI`/`EXEC`. Redis runs it only if the position did not change since
//!    step 1: a writer that got in between (a rebalance overlap, a rebuild handing over)
//!    makes `EXEC` answer nil and nothing is written ([`SinkError::Transient`]: the runtime
//!    retries, reads again, and then meets the fence). So a replay, a duplicate or a fenced
//!    writer never applies anything twice, and the batch is all or nothing.
//!
//! Watching the position is enough: an account's key is written only by a writer of the
//! partition its events are keyed to, and only in the transaction that moves that
//! partition's position (a rebuild's fill from the event store, without positions, writes
//! a new copy nobody else writes yet). For the same reason the sink remembers the accounts
//! it wrote per partition: while the stored token is the one it wrote, nobody else wrote
//! the partition and the accounts need not be read back (watching a thousand account keys
//! cost Redis 7.0 2.2 ms per batch: `WATCH` checks each key against the client's whole
//! list). Redis must not evict keys without a TTL (`maxmemory-policy` `noeviction` or
//! `volatile-*`), or an evicted account would be remembered but gone.
//!
//! No answer from Redis is transient; an error inside the transaction (a key of the wrong
//! type) is permanent.
//!
//! [`RedisCheckpoint::prepare`] folds a batch into that transaction and
//! [`RedisCheckpoint::write_raw`] sends it as it is, without `WATCH`, reads or fence: the
//! raw ceiling the benchmarks measure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use foldhash::HashMapExt as _;
use prism_events::Envelope;
use prism_platform::config::RedisConfig;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::Pipeline;
use uuid::Uuid;

use crate::sink::{Batch, PositionUpdate, Sink, SinkError, StoredPosition};

/// A batch's accounts as the fold reads and leaves them (`None`: no state yet), in a map
/// with a fast hasher: it is looked up for every event.
pub type Accounts<A> = foldhash::HashMap<Uuid, Option<A>>;

/// Idle dedicated connections kept for the next batches.
const IDLE_MAX: usize = 64;

/// Most accounts remembered per partition; past it only the last batch's accounts are
/// kept.
const REMEMBERED_MAX: usize = 50_000;

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

/// The key of a partition's position in the copy with key prefix `prefix`: a hash of
/// `offset`, `token`, `writer`, `updated_at`, `event_id`, `event_time`, `last_error`,
/// `last_error_at`.
pub fn position_key(prefix: &str, partition: i32) -> String {
    format!("{prefix}pos:{partition}")
}

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
    /// Connections to the configured server, each command answered within the configured
    /// connect timeout.
    pub fn new(redis: &RedisConfig) -> anyhow::Result<Self> {
        let client = prism_platform::clients::redis(redis)?;
        let timeout = Duration::from_millis(redis.connect_timeout_ms.max(1));
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        Ok(Self {
            client,
            config,
            idle: Arc::default(),
        })
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

/// An account as a Redis read model stores it: the handled version, and the model's state
/// if the account was opened (an account whose opening was dead-lettered has a version
/// and no state).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<A> {
    pub version: u64,
    pub account: Option<A>,
}

impl<A> Default for Stored<A> {
    fn default() -> Self {
        Self {
            version: 0,
            account: None,
        }
    }
}

/// Where a batch's events come from, for a model whose output names them (the Kafka
/// partition and each event's offset; none for a rebuild from the event store).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub partition: Option<i32>,
    /// Each event's offset, in step with the events (empty when they have none).
    pub offsets: &'a [i64],
}

impl Origin<'static> {
    /// Events from nowhere in particular (a rebuild's fill, a benchmark's batches).
    pub const NONE: Self = Self {
        partition: None,
        offsets: &[],
    };
}

/// What a read model in Redis supplies to [`RedisCheckpoint`].
#[async_trait]
pub trait RedisModel: Send + Sync + 'static {
    /// One account's state, as the fold needs it and the model stores it.
    type Account: Send + Sync + 'static;
    /// What a batch writes besides its accounts, folded.
    type Writes: Send + Sync + 'static;

    /// The copy's key prefix (`<namespace>:c<N>:`): the positions are
    /// [`position_key`]`(prefix, partition)`.
    fn prefix(&self) -> &str;

    /// Adds one command reading account `id` to `pipe` (answered by one value).
    fn read_account(&self, pipe: &mut Pipeline, id: Uuid);

    /// The account as that command's answer holds it.
    fn parse_account(
        &self,
        id: Uuid,
        value: &redis::Value,
    ) -> Result<Stored<Self::Account>, SinkError>;

    /// The version an account's state was folded to.
    fn version(account: &Self::Account) -> u64;

    /// Folds `events` onto `accounts` (pure): an event at or below its account's version
    /// was applied already and adds nothing; a refusal is [`SinkError::Rejected`] naming
    /// the event's index.
    fn fold_batch(
        &self,
        accounts: &mut Accounts<Self::Account>,
        events: &[Envelope],
        origin: Origin<'_>,
    ) -> Result<Self::Writes, SinkError>;

    /// Adds the writes of account `id` as it is after the batch to `tx`.
    fn write_account(&self, tx: &mut Pipeline, id: Uuid, stored: &Stored<Self::Account>);

    /// Adds the batch's other writes to `tx`.
    fn write_effects(&self, tx: &mut Pipeline, writes: &Self::Writes);

    /// Makes what the model keeps outside Redis durable, before the position moves past
    /// the batch. It must be harmless to repeat: a failed or refused transaction, or a
    /// crash right after this, replays the batch. Default: nothing outside Redis.
    async fn before_commit(&self, writes: &Self::Writes) -> Result<(), SinkError> {
        let _ = writes;
        Ok(())
    }
}

/// The accounts of one partition as this sink last wrote them, and the token it wrote
/// with the partition's position. Only a writer of the partition writes its accounts, and
/// always in the transaction that moves its position: while the stored token is this one,
/// nobody else has written, and the accounts need not be read back.
struct Remembered<A> {
    token: u64,
    accounts: foldhash::HashMap<Uuid, Stored<A>>,
}

impl<A> Default for Remembered<A> {
    fn default() -> Self {
        Self {
            token: 0,
            accounts: foldhash::HashMap::new(),
        }
    }
}

/// The [`Sink`] of a read model in Redis.
pub struct RedisCheckpoint<M: RedisModel> {
    model: Arc<M>,
    conn: ConnectionManager,
    dedicated: Dedicated,
    remembered: Arc<parking_lot::Mutex<HashMap<i32, Remembered<M::Account>>>>,
}

impl<M: RedisModel> Clone for RedisCheckpoint<M> {
    fn clone(&self) -> Self {
        Self {
            model: Arc::clone(&self.model),
            conn: self.conn.clone(),
            dedicated: self.dedicated.clone(),
            remembered: Arc::clone(&self.remembered),
        }
    }
}

impl<M: RedisModel> std::fmt::Debug for RedisCheckpoint<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCheckpoint")
            .field("prefix", &self.model.prefix())
            .finish_non_exhaustive()
    }
}

impl<M: RedisModel> RedisCheckpoint<M> {
    pub fn new(model: M, conn: ConnectionManager, dedicated: Dedicated) -> Self {
        Self {
            model: Arc::new(model),
            conn,
            dedicated,
            remembered: Arc::default(),
        }
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    fn position_key(&self, partition: i32) -> String {
        position_key(self.model.prefix(), partition)
    }

    fn parse_rows(
        &self,
        ids: &[Uuid],
        values: &[redis::Value],
    ) -> Result<Vec<Stored<M::Account>>, SinkError> {
        ids.iter()
            .zip(values)
            .map(|(id, value)| self.model.parse_account(*id, value))
            .collect()
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
        let position_key = partition.map(|p| self.position_key(p));
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
        for id in &unknown {
            self.model.read_account(&mut read, *id);
        }
        let mut values: Vec<redis::Value> = read
            .query_async(conn)
            .await
            .map_err(|e| transient("reading the batch's position and accounts", &e))?;
        if values.is_empty() {
            return Err(SinkError::Transient("Redis answered nothing".into()));
        }
        let first = values.remove(0);
        let (stored_offset, stored_token): (Option<i64>, Option<u64>) =
            redis::from_redis_value(&first).map_err(|e| transient("reading the position", &e))?;
        let rows = self.parse_rows(&unknown, &values)?;

        // 2. The fence, then the fold.
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
                for id in &known {
                    self.model.read_account(&mut again, *id);
                }
                let values: Vec<redis::Value> = again
                    .query_async(conn)
                    .await
                    .map_err(|e| transient("reading the batch's accounts", &e))?;
                for (id, stored) in known.iter().zip(self.parse_rows(&known, &values)?) {
                    remembered.accounts.insert(*id, stored);
                }
            }
        }
        for (id, stored) in unknown.iter().zip(rows) {
            remembered.accounts.insert(*id, stored);
        }
        // The batch's accounts move out of what is remembered into the fold (and back in
        // after a write that went through).
        let mut before: Vec<u64> = Vec::with_capacity(ids.len());
        let mut accounts = Accounts::with_capacity(ids.len());
        for id in &ids {
            let stored = remembered.accounts.remove(id).unwrap_or_default();
            before.push(stored.version);
            accounts.insert(*id, stored.account);
        }
        let writes = self.model.fold_batch(
            &mut accounts,
            &batch.events,
            Origin {
                partition,
                offsets: &batch.offsets,
            },
        )?;
        self.model.before_commit(&writes).await?;

        // 3. Everything, in one transaction that runs only if the position did not change.
        let handled: foldhash::HashMap<Uuid, u64> = batch
            .versions
            .iter()
            .map(|v| (v.account_id, v.version))
            .collect();
        let after: Vec<(Uuid, Stored<M::Account>)> = ids
            .iter()
            .zip(before)
            .map(|(id, before)| {
                let account = accounts.remove(id).flatten();
                let version = handled
                    .get(id)
                    .copied()
                    .unwrap_or(0)
                    .max(account.as_ref().map_or(0, M::version))
                    .max(before);
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
            if remembered.accounts.len() + after.len() > REMEMBERED_MAX {
                remembered.accounts.clear();
            }
            remembered.accounts.extend(after);
            remembered.token = token;
            self.remembered.lock().insert(p, remembered);
        }
        Ok(())
    }

    /// Step 3's transaction: the accounts as they are after the batch, the model's other
    /// writes, and the position with `token`.
    fn transaction(
        &self,
        accounts: &[(Uuid, Stored<M::Account>)],
        writes: &M::Writes,
        position: Option<&PositionUpdate>,
        token: u64,
    ) -> Pipeline {
        let mut tx = redis::pipe();
        tx.atomic();
        for (id, stored) in accounts {
            self.model.write_account(&mut tx, *id, stored);
        }
        self.model.write_effects(&mut tx, writes);
        if let Some(p) = position {
            let mut hset = redis::cmd("HSET");
            hset.arg(self.position_key(p.partition))
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
    /// them after its reads and checks (untimed by a benchmark, which then sends it with
    /// [`RedisCheckpoint::write_raw`]).
    pub fn prepare(
        &self,
        accounts: &mut Accounts<M::Account>,
        events: &[Envelope],
        origin: Origin<'_>,
        position: Option<PositionUpdate>,
    ) -> Result<Prepared<M>, SinkError>
    where
        M::Account: Clone,
    {
        let before: foldhash::HashMap<Uuid, u64> = events
            .iter()
            .map(|e| {
                let id = e.account_id.0;
                let version = accounts
                    .get(&id)
                    .and_then(Option::as_ref)
                    .map_or(0, M::version);
                (id, version)
            })
            .collect();
        let writes = self.model.fold_batch(accounts, events, origin)?;
        let mut touched: Vec<(Uuid, Stored<M::Account>)> = before
            .into_iter()
            .map(|(id, version)| {
                let account = accounts.get(&id).cloned().flatten();
                let version = version.max(account.as_ref().map_or(0, M::version));
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

    /// Makes a prepared batch's outside writes durable and sends its transaction as it
    /// is: no `WATCH`, no reads, no fence.
    pub async fn write_raw(&self, prepared: &Prepared<M>) -> Result<(), SinkError> {
        self.model.before_commit(&prepared.writes).await?;
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

/// One batch's transaction, folded ([`RedisCheckpoint::prepare`]).
pub struct Prepared<M: RedisModel> {
    accounts: Vec<(Uuid, Stored<M::Account>)>,
    writes: M::Writes,
    position: Option<PositionUpdate>,
}

impl<M: RedisModel> std::fmt::Debug for Prepared<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("accounts", &self.accounts.len())
            .finish_non_exhaustive()
    }
}

impl<M: RedisModel> Prepared<M> {
    /// How many accounts the transaction writes.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// What the batch writes besides its accounts.
    pub fn writes(&self) -> &M::Writes {
        &self.writes
    }

    pub fn has_position(&self) -> bool {
        self.position.is_some()
    }
}

fn transient(what: &str, e: &redis::RedisError) -> SinkError {
    SinkError::Transient(format!("{what}: {e}"))
}

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[async_trait]
impl<M: RedisModel> Sink for RedisCheckpoint<M> {
    async fn positions(&self, partitions: &[i32]) -> Result<Vec<StoredPosition>, SinkError> {
        let mut pipe = redis::pipe();
        for p in partitions {
            pipe.cmd("HMGET")
                .arg(self.position_key(*p))
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
            self.model.read_account(&mut pipe, *id);
        }
        let mut conn = self.conn.clone();
        let values: Vec<redis::Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| transient("reading account versions", &e))?;
        Ok(accounts
            .iter()
            .zip(self.parse_rows(accounts, &values)?)
            .filter(|(_, stored)| stored.version > 0)
            .map(|(id, stored)| (*id, stored.version))
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
            .arg(self.position_key(partition))
            .arg("last_error")
            .arg(super::clip(error, super::LAST_ERROR_MAX))
            .arg("last_error_at")
            .arg(time_text(Utc::now()))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| transient("recording the last error", &e))
    }
}
