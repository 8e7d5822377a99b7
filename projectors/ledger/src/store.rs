//! The ledger's databases: the control database and the generations of the read model.
//!
//! The control database (`[ledger] database`, default `prism_ledger`) holds one table,
//! `generations` (migrations/control). Each copy of the read model is its own database,
//! `<control>_g<N>`, with the migrations in migrations/model, applied whenever a
//! generation is opened (idempotent). Exactly one generation is `live` (served by the query
//! API, kept current by the projector); a rebuild fills a `building` one and
//! [`Ledger::promote`]s it, which retires the previous one in the same transaction.
//!
//! Errors name the server's host list, never the DSN (it carries the password).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use chrono::Utc;
use prism_platform::config::MysqlConfig;
use prism_projector::copies::{Copies, CopyInfo, LiveCopy, PartitionStatus};
use prism_projector::Sink;
use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{MySqlPool, Row};
use uuid::Uuid;

use crate::config::LedgerConfig;
use crate::sink::MySqlSink;

/// migrations/control, embedded at build time.
pub static CONTROL_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/control");
/// migrations/model, embedded at build time; applied to every generation database.
pub static MODEL_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/model");

/// Longest database name MySQL accepts.
const MAX_DATABASE_NAME: usize = 64;
/// The control database needs few connections: it is read by pollers and written by admins.
const CONTROL_POOL_MAX: u32 = 4;

/// One row of `generations`: the kit's description of a copy (its `name` is the database).
pub use prism_projector::copies::CopyInfo as GenerationInfo;
/// State of a generation, as stored in `generations.state`: the kit's copy state.
pub use prism_projector::copies::CopyState as GenerationState;
pub use prism_projector::copies::{InstanceReport, InstanceRow};

/// Width of `instances.error`.
const INSTANCE_ERROR_MAX: usize = 2_000;

/// One copy of the read model: its number, database and two pools connected to it.
#[derive(Clone)]
pub struct Generation {
    pub number: u32,
    pub database: String,
    /// The projector's writers (and maintenance): `[mysql] max_connections`.
    pub pool: MySqlPool,
    /// The query API's reads and consistency waits, a small pool of their own
    /// (`[ledger] query_max_connections`, connected on first use), so that however many
    /// queries arrive they never take a connection the projector needs.
    pub reads: MySqlPool,
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generation")
            .field("number", &self.number)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// The ledger's control database and the way to its generations. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    /// Options from the DSN, pointing at the server (database set per pool).
    server: MySqlConnectOptions,
    /// Host list of the server, for error messages.
    hosts: String,
    max_connections: u32,
    /// Size of each generation's query pool.
    query_max_connections: u32,
    connect_timeout: Duration,
    control_database: String,
    control: MySqlPool,
    /// Open generations by number.
    generations: Mutex<HashMap<u32, Generation>>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("server", &self.inner.hosts)
            .field("control_database", &self.inner.control_database)
            .finish_non_exhaustive()
    }
}

/// Checks a database name before it goes into `CREATE DATABASE` text: `[a-z0-9_]`, at
/// most 64 characters, not empty.
pub fn validate_database_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        bail!("database name is empty");
    }
    if name.len() > MAX_DATABASE_NAME {
        bail!("database name {name:?} is longer than {MAX_DATABASE_NAME} characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        bail!("database name {name:?} may only contain a-z, 0-9 and _");
    }
    Ok(())
}

/// The database of generation `number` under control database `control`.
pub fn generation_database(control: &str, number: u32) -> String {
    format!("{control}_g{number}")
}

impl Ledger {
    /// Connects to the MySQL server of `mysql.url`, creates the control database if
    /// missing, migrates it.
    pub async fn open(mysql: &MysqlConfig, ledger: &LedgerConfig) -> anyhow::Result<Ledger> {
        let hosts = mysql.url.hosts().to_owned();
        let control_database = ledger.database.clone();
        validate_database_name(&control_database).context("[ledger] database")?;
        // The longest generation suffix (`_g4294967295`) must still fit.
        let longest = generation_database(&control_database, u32::MAX);
        validate_database_name(&longest).context("[ledger] database is too long")?;

        // The parse error is not passed on: it could quote the URL.
        let server = MySqlConnectOptions::from_str(mysql.url.expose())
            .map_err(|_| anyhow!("[mysql] url is not a valid MySQL URL: {}", mysql.url))?;
        let connect_timeout = Duration::from_millis(mysql.connect_timeout_ms);

        // information_schema always exists and every user may use it, whatever database the
        // URL names (which may not exist).
        let admin_options = server.clone().database("information_schema");
        let admin = MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(connect_timeout)
            .connect_with(admin_options)
            .await
            .with_context(|| format!("connecting to mysql at {hosts}"))?;
        create_database(&admin, &control_database)
            .await
            .with_context(|| format!("creating database {control_database} on {hosts}"))?;
        // Closing is a courtesy; the database exists either way.
        admin.close().await;

        let control = MySqlPoolOptions::new()
            .max_connections(mysql.max_connections.clamp(1, CONTROL_POOL_MAX))
            .acquire_timeout(connect_timeout)
            .connect_with(server.clone().database(&control_database))
            .await
            .with_context(|| format!("connecting to {control_database} on mysql at {hosts}"))?;
        migrate(&CONTROL_MIGRATIONS, &control)
            .await
            .with_context(|| format!("migrating {control_database} on mysql at {hosts}"))?;

        Ok(Ledger {
            inner: Arc::new(Inner {
                server,
                hosts,
                max_connections: mysql.max_connections.max(1),
                query_max_connections: ledger.query_max_connections.max(1),
                connect_timeout,
                control_database,
                control,
                generations: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether the control database exists (the ledger has ever run), without creating it.
    pub async fn exists(mysql: &MysqlConfig, ledger: &LedgerConfig) -> anyhow::Result<bool> {
        let hosts = mysql.url.hosts().to_owned();
        let server = MySqlConnectOptions::from_str(mysql.url.expose())
            .map_err(|_| anyhow!("[mysql] url is not a valid MySQL URL: {}", mysql.url))?;
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(mysql.connect_timeout_ms))
            .connect_with(server.database("information_schema"))
            .await
            .with_context(|| format!("connecting to mysql at {hosts}"))?;
        let found: Option<String> = sqlx::query_scalar(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
        )
        .bind(&ledger.database)
        .fetch_optional(&pool)
        .await
        .with_context(|| format!("looking for database {} on {hosts}", ledger.database))?;
        pool.close().await;
        Ok(found.is_some())
    }

    /// Name of the control database.
    pub fn control_database(&self) -> &str {
        &self.inner.control_database
    }

    /// Pool connected to the control database.
    pub fn control_pool(&self) -> &MySqlPool {
        &self.inner.control
    }

    /// The live generation; if there is none yet, creates generation 1 (database +
    /// migrations) and makes it live. Migrates it (idempotent) before returning.
    pub async fn live(&self) -> anyhow::Result<Generation> {
        if let Some(number) = self.live_number().await? {
            return self.generation(number).await;
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM generations")
            .fetch_one(&self.inner.control)
            .await
            .with_context(|| self.at("reading generations"))?;
        if count > 0 {
            bail!(
                "{} has generations but none is live: promote one (prismctl rebuild ledger)",
                self.inner.control_database
            );
        }
        // First start: create generation 1 before it is registered, so a registered live
        // generation always has its database. Two instances racing both create (IF NOT
        // EXISTS) and migrate (locked); one INSERT wins.
        let database = generation_database(&self.inner.control_database, 1);
        self.create_generation_database(&database).await?;
        let now = Utc::now();
        let inserted = sqlx::query(
            "INSERT INTO generations (generation, database_name, state, created_at, live_since) \
             VALUES (1, ?, 'live', ?, ?)",
        )
        .bind(&database)
        .bind(now)
        .bind(now)
        .execute(&self.inner.control)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e).with_context(|| self.at("registering generation 1")),
        }
        match self.live_number().await? {
            Some(number) => self.generation(number).await,
            None => bail!(
                "{} has generations but none is live: promote one (prismctl rebuild ledger)",
                self.inner.control_database
            ),
        }
    }

    /// Just reads which generation number is live (cheap; for polling), `None` if none.
    pub async fn live_number(&self) -> anyhow::Result<Option<u32>> {
        let number: Option<u32> = sqlx::query_scalar(
            "SELECT generation FROM generations WHERE state = 'live' \
             ORDER BY generation DESC LIMIT 1",
        )
        .fetch_optional(&self.inner.control)
        .await
        .with_context(|| self.at("reading the live generation"))?;
        Ok(number)
    }

    /// Opens (pool + migrate) an existing generation by number. Pools are cached by number.
    pub async fn generation(&self, number: u32) -> anyhow::Result<Generation> {
        if let Some(generation) = self.cached(number) {
            return Ok(generation);
        }
        let database: Option<String> =
            sqlx::query_scalar("SELECT database_name FROM generations WHERE generation = ?")
                .bind(number)
                .fetch_optional(&self.inner.control)
                .await
                .with_context(|| self.at("reading generations"))?;
        let Some(database) = database else {
            bail!(
                "generation {number} does not exist in {}",
                self.inner.control_database
            );
        };
        validate_database_name(&database)
            .with_context(|| format!("generation {number} in {}", self.inner.control_database))?;
        let pool = self.connect_generation(&database).await?;
        let reads = self.query_pool(&database)?;
        let generation = Generation {
            number,
            database,
            pool,
            reads,
        };
        Ok(self.cache(generation))
    }

    /// Creates the next generation in state `building` (database + migrations).
    pub async fn create_next(&self) -> anyhow::Result<Generation> {
        // The primary key hands out the number: a racing create_next gets a duplicate and
        // tries the next one.
        let mut attempts = 0;
        let (number, database) = loop {
            attempts += 1;
            let max: Option<u32> = sqlx::query_scalar("SELECT MAX(generation) FROM generations")
                .fetch_one(&self.inner.control)
                .await
                .with_context(|| self.at("reading generations"))?;
            let number = match max.unwrap_or(0).checked_add(1) {
                Some(n) => n,
                None => bail!("no generation number left"),
            };
            let database = generation_database(&self.inner.control_database, number);
            validate_database_name(&database)?;
            let inserted = sqlx::query(
                "INSERT INTO generations (generation, database_name, state, created_at) \
                 VALUES (?, ?, 'building', ?)",
            )
            .bind(number)
            .bind(&database)
            .bind(Utc::now())
            .execute(&self.inner.control)
            .await;
            match inserted {
                Ok(_) => break (number, database),
                Err(e) if is_duplicate_key(&e) && attempts < 5 => continue,
                Err(e) => return Err(e).with_context(|| self.at("registering a new generation")),
            }
        };
        if let Err(e) = self.create_generation_database(&database).await {
            // Best effort: leave no row for a database that was not created.
            let _ =
                sqlx::query("DELETE FROM generations WHERE generation = ? AND state = 'building'")
                    .bind(number)
                    .execute(&self.inner.control)
                    .await;
            return Err(e);
        }
        self.generation(number).await
    }

    /// Atomically (one transaction) makes `number` live and the previously live one
    /// `retired`. Promoting the live generation does nothing.
    pub async fn promote(&self, number: u32) -> anyhow::Result<()> {
        let mut tx = self
            .inner
            .control
            .begin()
            .await
            .with_context(|| self.at("starting a transaction"))?;
        // Lock every row (the table is tiny) so concurrent promotions serialise.
        let rows = sqlx::query("SELECT generation, state FROM generations FOR UPDATE")
            .fetch_all(&mut *tx)
            .await
            .with_context(|| self.at("locking generations"))?;
        let mut target = None;
        for row in &rows {
            let n: u32 = row.try_get("generation")?;
            if n == number {
                let state: String = row.try_get("state")?;
                target = Some(state);
            }
        }
        match target.as_deref() {
            None => bail!(
                "generation {number} does not exist in {}",
                self.inner.control_database
            ),
            Some("live") => return Ok(()),
            Some(_) => {}
        }
        let now = Utc::now();
        sqlx::query("UPDATE generations SET state = 'retired' WHERE state = 'live'")
            .execute(&mut *tx)
            .await
            .with_context(|| self.at("retiring the live generation"))?;
        sqlx::query("UPDATE generations SET state = 'live', live_since = ? WHERE generation = ?")
            .bind(now)
            .bind(number)
            .execute(&mut *tx)
            .await
            .with_context(|| self.at("promoting a generation"))?;
        tx.commit()
            .await
            .with_context(|| self.at("committing the promotion"))?;
        Ok(())
    }

    /// The newest generation in state `building`, if any (what instances probe before a
    /// rebuild promotes it).
    pub async fn newest_building(&self) -> anyhow::Result<Option<u32>> {
        sqlx::query_scalar("SELECT MAX(generation) FROM generations WHERE state = 'building'")
            .fetch_one(&self.inner.control)
            .await
            .with_context(|| self.at("reading generations"))
    }

    /// Records (upserts) what a running prism-ledger instance does: see [`InstanceRow`].
    pub async fn report_instance(&self, row: &InstanceReport) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO instances (instance, writing, can_open, error, seen_at) \
             VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE writing = VALUES(writing), \
             can_open = VALUES(can_open), error = VALUES(error), seen_at = VALUES(seen_at)",
        )
        .bind(&row.instance)
        .bind(row.writing)
        .bind(row.can_open)
        .bind(
            row.error
                .as_deref()
                .map(|e| crate::sink::clip(e, INSTANCE_ERROR_MAX)),
        )
        .bind(Utc::now())
        .execute(&self.inner.control)
        .await
        .with_context(|| self.at("recording this instance"))?;
        Ok(())
    }

    /// Removes an instance's row (it stopped cleanly).
    pub async fn forget_instance(&self, instance: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM instances WHERE instance = ?")
            .bind(instance)
            .execute(&self.inner.control)
            .await
            .with_context(|| self.at("removing this instance"))?;
        Ok(())
    }

    /// The instances that reported within `within` (the others are taken as gone).
    pub async fn instances(&self, within: Duration) -> anyhow::Result<Vec<InstanceRow>> {
        let since = Utc::now()
            - chrono::Duration::from_std(within).unwrap_or_else(|_| chrono::Duration::zero());
        let rows = sqlx::query(
            "SELECT instance, writing, can_open, error, seen_at FROM instances \
             WHERE seen_at >= ? ORDER BY instance",
        )
        .bind(since)
        .fetch_all(&self.inner.control)
        .await
        .with_context(|| self.at("reading instances"))?;
        rows.iter()
            .map(|row| {
                Ok(InstanceRow {
                    instance: row.try_get("instance")?,
                    writing: row.try_get("writing")?,
                    can_open: row.try_get("can_open")?,
                    error: row.try_get("error")?,
                    seen_at: row.try_get("seen_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .with_context(|| self.at("reading instances"))
    }

    /// Every generation, by number.
    pub async fn list(&self) -> anyhow::Result<Vec<GenerationInfo>> {
        let rows = sqlx::query(
            "SELECT generation, database_name, state, created_at, live_since \
             FROM generations ORDER BY generation",
        )
        .fetch_all(&self.inner.control)
        .await
        .with_context(|| self.at("reading generations"))?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(GenerationInfo {
                    number: row.try_get("generation")?,
                    name: row.try_get("database_name")?,
                    state: GenerationState::parse(&state)
                        .ok_or_else(|| anyhow!("unknown generation state {state:?}"))?,
                    created_at: row.try_get("created_at")?,
                    live_since: row.try_get("live_since")?,
                })
            })
            .collect()
    }

    /// Drops the databases of retired generations (and their rows); returns the dropped
    /// database names.
    pub async fn drop_retired(&self) -> anyhow::Result<Vec<String>> {
        let retired: Vec<(u32, String)> = sqlx::query_as(
            "SELECT generation, database_name FROM generations WHERE state = 'retired' \
             ORDER BY generation",
        )
        .fetch_all(&self.inner.control)
        .await
        .with_context(|| self.at("reading generations"))?;
        let mut dropped = Vec::with_capacity(retired.len());
        for (number, database) in retired {
            self.forget(number).await;
            self.drop_database(&database).await?;
            sqlx::query("DELETE FROM generations WHERE generation = ? AND state = 'retired'")
                .bind(number)
                .execute(&self.inner.control)
                .await
                .with_context(|| self.at("deleting a retired generation"))?;
            dropped.push(database);
        }
        Ok(dropped)
    }

    /// Drops a generation that is still `building` (an interrupted rebuild). Refuses any
    /// other state, so the live copy can never be dropped this way.
    pub async fn abandon(&self, number: u32) -> anyhow::Result<()> {
        let database: Option<String> = sqlx::query_scalar(
            "SELECT database_name FROM generations WHERE generation = ? AND state = 'building'",
        )
        .bind(number)
        .fetch_optional(&self.inner.control)
        .await
        .with_context(|| self.at("reading generations"))?;
        let Some(database) = database else {
            anyhow::bail!("generation {number} is not being built; not dropping it");
        };
        self.forget(number).await;
        self.drop_database(&database).await?;
        sqlx::query("DELETE FROM generations WHERE generation = ? AND state = 'building'")
            .bind(number)
            .execute(&self.inner.control)
            .await
            .with_context(|| self.at("deleting an abandoned generation"))?;
        Ok(())
    }

    /// Drops the control database and every generation database (tests, `reset`). The
    /// ledger is unusable afterwards.
    pub async fn drop_everything(&self) -> anyhow::Result<()> {
        let mut databases: Vec<String> =
            sqlx::query_scalar("SELECT database_name FROM generations")
                .fetch_all(&self.inner.control)
                .await
                .with_context(|| self.at("reading generations"))?;
        // Also generation databases that lost their row (a crash during create_next).
        let prefix = format!("{}_g", self.inner.control_database);
        let existing: Vec<String> =
            sqlx::query_scalar("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
                .fetch_all(&self.inner.control)
                .await
                .with_context(|| self.at("listing databases"))?;
        for name in existing {
            let is_generation = name
                .strip_prefix(&prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if is_generation && !databases.contains(&name) {
                databases.push(name);
            }
        }
        let open: Vec<Generation> = match self.inner.generations.lock() {
            Ok(mut map) => map.drain().map(|(_, g)| g).collect(),
            Err(poisoned) => poisoned.into_inner().drain().map(|(_, g)| g).collect(),
        };
        for generation in open {
            generation.reads.close().await;
            generation.pool.close().await;
        }
        for database in &databases {
            self.drop_database(database).await?;
        }
        let control = self.inner.control_database.clone();
        self.drop_database(&control).await?;
        self.inner.control.close().await;
        Ok(())
    }

    async fn create_generation_database(&self, database: &str) -> anyhow::Result<()> {
        validate_database_name(database)?;
        create_database(&self.inner.control, database)
            .await
            .with_context(|| self.at(&format!("creating database {database}")))?;
        // Connecting migrates it.
        let pool = self.connect_generation(database).await?;
        pool.close().await;
        Ok(())
    }

    async fn drop_database(&self, database: &str) -> anyhow::Result<()> {
        validate_database_name(database)?;
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{database}`"))
            .execute(&self.inner.control)
            .await
            .with_context(|| self.at(&format!("dropping database {database}")))?;
        Ok(())
    }

    /// Options of every pool on a generation database: its sessions run at READ
    /// COMMITTED, so locking reads take no gap locks and sink writers of different
    /// partitions never deadlock on the index's end (see sink.rs); reads that need one
    /// snapshot ask for it per transaction.
    fn pool_options(&self, max_connections: u32) -> MySqlPoolOptions {
        MySqlPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(self.inner.connect_timeout)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            })
    }

    /// A pool on a generation database, migrated. Its sessions run at READ COMMITTED.
    async fn connect_generation(&self, database: &str) -> anyhow::Result<MySqlPool> {
        validate_database_name(database)?;
        let pool = self
            .pool_options(self.inner.max_connections)
            // Multi-row statements of many lengths would fill sqlx's default cache of 100
            // prepared statements per connection; the sink uses a handful of shapes.
            .connect_with(
                self.inner
                    .server
                    .clone()
                    .database(database)
                    .statement_cache_capacity(32),
            )
            .await
            .with_context(|| self.at(&format!("connecting to {database}")))?;
        migrate(&MODEL_MIGRATIONS, &pool)
            .await
            .with_context(|| self.at(&format!("migrating {database}")))?;
        Ok(pool)
    }

    /// The query API's pool on a generation database (already migrated by its writers'
    /// pool): lazy, so tools that never query (rebuild, verify) never connect it.
    fn query_pool(&self, database: &str) -> anyhow::Result<MySqlPool> {
        validate_database_name(database)?;
        Ok(self
            .pool_options(self.inner.query_max_connections)
            .connect_lazy_with(
                self.inner
                    .server
                    .clone()
                    .database(database)
                    .statement_cache_capacity(32),
            ))
    }

    fn cached(&self, number: u32) -> Option<Generation> {
        match self.inner.generations.lock() {
            Ok(map) => map.get(&number).cloned(),
            Err(poisoned) => poisoned.into_inner().get(&number).cloned(),
        }
    }

    /// Caches `generation` unless another task cached one first (then that one wins and
    /// this pool is closed in the background).
    fn cache(&self, generation: Generation) -> Generation {
        let mut map = match self.inner.generations.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(existing) = map.get(&generation.number) {
            let existing = existing.clone();
            drop(map);
            let (pool, reads) = (generation.pool, generation.reads);
            tokio::spawn(async move {
                reads.close().await;
                pool.close().await;
            });
            return existing;
        }
        map.insert(generation.number, generation.clone());
        generation
    }

    async fn forget(&self, number: u32) {
        let removed = match self.inner.generations.lock() {
            Ok(mut map) => map.remove(&number),
            Err(poisoned) => poisoned.into_inner().remove(&number),
        };
        if let Some(generation) = removed {
            generation.reads.close().await;
            generation.pool.close().await;
        }
    }

    fn at(&self, what: &str) -> String {
        format!(
            "{what} ({} on mysql at {})",
            self.inner.control_database, self.inner.hosts
        )
    }
}

/// Runs `migrator`. MySQL commits DDL statement by statement, so a process killed during a
/// migration leaves it recorded as unfinished ("dirty") and sqlx refuses to go on. Our
/// migrations are idempotent (`IF NOT EXISTS`), so the unfinished record is removed and the
/// migration runs again. Two processes opening the same new copy at once (a rebuild
/// creating it while running instances probe it) can also meet as a dirty record or as a
/// duplicate one (the other recorded it first): the run is then simply repeated, and the
/// repeat finds the migration applied.
async fn migrate(migrator: &Migrator, pool: &MySqlPool) -> Result<(), sqlx::migrate::MigrateError> {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match migrator.run(pool).await {
            Err(sqlx::migrate::MigrateError::Dirty(version)) if attempt < ATTEMPTS => {
                tracing::warn!(
                    version,
                    "re-running a migration another process left unfinished"
                );
                sqlx::query("DELETE FROM _sqlx_migrations WHERE version = ? AND success = FALSE")
                    .bind(version)
                    .execute(pool)
                    .await?;
            }
            Err(sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(db)))
                if db.is_unique_violation() && attempt < ATTEMPTS =>
            {
                tracing::info!("another process recorded the same migration first; checking again");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

async fn create_database(pool: &MySqlPool, database: &str) -> anyhow::Result<()> {
    validate_database_name(database)?;
    let sql = format!(
        "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    );
    sqlx::raw_sql(&sql).execute(pool).await?;
    Ok(())
}

fn is_duplicate_key(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// What the query API reads and the projector writes: the live generation, re-read every
/// poll interval and swapped atomically (the kit's [`LiveCopy`] over [`Ledger`]).
pub type LiveModel = LiveCopy<Ledger>;

#[async_trait]
impl Copies for Ledger {
    type Copy = Generation;

    fn number(copy: &Generation) -> u32 {
        copy.number
    }

    fn sink(copy: &Generation) -> Arc<dyn Sink> {
        Arc::new(MySqlSink::new(copy.clone()))
    }

    async fn live(&self) -> anyhow::Result<Generation> {
        Ledger::live(self).await
    }

    async fn live_number(&self) -> anyhow::Result<Option<u32>> {
        Ledger::live_number(self).await
    }

    async fn open(&self, number: u32) -> anyhow::Result<Generation> {
        self.generation(number).await
    }

    async fn create_next(&self) -> anyhow::Result<Generation> {
        Ledger::create_next(self).await
    }

    async fn promote(&self, number: u32) -> anyhow::Result<()> {
        Ledger::promote(self, number).await
    }

    async fn abandon(&self, number: u32) -> anyhow::Result<()> {
        Ledger::abandon(self, number).await
    }

    async fn newest_building(&self) -> anyhow::Result<Option<u32>> {
        Ledger::newest_building(self).await
    }

    async fn list(&self) -> anyhow::Result<Vec<CopyInfo>> {
        Ledger::list(self).await
    }

    async fn drop_retired(&self) -> anyhow::Result<Vec<String>> {
        Ledger::drop_retired(self).await
    }

    async fn report_instance(&self, report: &InstanceReport) -> anyhow::Result<()> {
        Ledger::report_instance(self, report).await
    }

    async fn forget_instance(&self, instance: &str) -> anyhow::Result<()> {
        Ledger::forget_instance(self, instance).await
    }

    async fn instances(&self, within: Duration) -> anyhow::Result<Vec<InstanceRow>> {
        Ledger::instances(self, within).await
    }

    async fn partitions(&self, copy: &Generation) -> anyhow::Result<Vec<PartitionStatus>> {
        partition_positions(&copy.pool)
            .await
            .with_context(|| format!("reading positions in {}", copy.database))
    }
}

/// Where the projector stands on one partition, with what `prismctl status` shows.
pub use prism_projector::copies::PartitionStatus as StoredPositionRow;

/// Last handled versions of `accounts` (applied or dead-lettered), from
/// `projector_accounts`, in one query; what read-your-writes waits on. An account with
/// nothing handled yet is absent.
pub async fn account_versions(
    pool: &MySqlPool,
    accounts: &[Uuid],
) -> sqlx::Result<HashMap<Uuid, u64>> {
    if accounts.is_empty() {
        return Ok(HashMap::new());
    }
    let mut query = sqlx::QueryBuilder::new(
        "SELECT account_id, version FROM projector_accounts WHERE account_id IN (",
    );
    let mut ids = query.separated(", ");
    for account in accounts {
        ids.push_bind(*account);
    }
    query.push(")");
    let rows: Vec<(Uuid, u64)> = query.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

/// Last handled version of an account (applied or dead-lettered), from
/// `projector_accounts`. `None`: nothing handled yet.
pub async fn account_version(pool: &MySqlPool, account_id: Uuid) -> sqlx::Result<Option<u64>> {
    sqlx::query_scalar("SELECT version FROM projector_accounts WHERE account_id = ?")
        .bind(account_id)
        .fetch_optional(pool)
        .await
}

/// Every stored partition position of a generation, by partition (the kit's checkpoint
/// tables).
pub async fn partition_positions(pool: &MySqlPool) -> sqlx::Result<Vec<StoredPositionRow>> {
    prism_projector::checkpoint::mysql::partitions(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_checked_before_they_reach_sql() {
        assert!(validate_database_name("prism_ledger_g12").is_ok());
        assert!(validate_database_name(&"a".repeat(64)).is_ok());
        for bad in ["", "Prism", "a-b", "a`b", "a; DROP", "é", &"a".repeat(65)] {
            assert!(validate_database_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(generation_database("prism_ledger", 3), "prism_ledger_g3");
    }

    #[test]
    fn the_model_migration_holds_the_kit_s_checkpoint_tables_unchanged() {
        let model = include_str!("../migrations/model/0001_ledger.sql");
        assert!(
            model.contains(prism_projector::checkpoint::mysql::MIGRATION.trim()),
            "migrations/model must create the kit's checkpoint tables as the kit defines them"
        );
    }

    #[test]
    fn generation_states_round_trip() {
        for state in [
            GenerationState::Building,
            GenerationState::Live,
            GenerationState::Retired,
        ] {
            assert_eq!(GenerationState::parse(state.as_str()), Some(state));
        }
        assert_eq!(GenerationState::Live, "live");
        assert_eq!(GenerationState::parse("dead"), None);
    }
}

#[cfg(test)]
mod send_tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn opening_the_ledger_can_run_on_any_task() {
        let mysql = MysqlConfig::default();
        let ledger = LedgerConfig::default();
        let future = Ledger::open(&mysql, &ledger);
        assert_send(&future);
    }
}
