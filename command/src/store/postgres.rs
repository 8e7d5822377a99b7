//! The PostgreSQL backend: one row per event, one statement per append.
//!
//! # Tables (in the store's schema)
//! - `events`: `position BIGSERIAL` (the `read_all` order), `event_id`, `commit_id` (the
//!   commit's first event id), `account_id`, `version`, the CloudEvents attributes,
//!   `time TIMESTAMPTZ` (microseconds, exact), `data JSONB` (numbers are `numeric`, so an
//!   `i64` comes back exactly), and `idempotency_key` / `request_hash` on a commit's first
//!   event only. Insert-only: nothing ever updates an event row.
//!   - `events_account_version`: UNIQUE `(account_id, version)`, the optimistic-concurrency
//!     guard; `events_event_id`: UNIQUE `(event_id)`.
//!   - `events_idempotency_key`: partial UNIQUE index on keys that are set.
//! - `outbox`: the `position` of every event not yet published, written by the same
//!   statement as the event and deleted once Kafka acknowledged it. A flag on the event
//!   row, as this store kept before, cost an update of a wide row and of its four indexes
//!   per published event; this costs a narrow insert and a delete. Stores of that format
//!   are moved over at `init`.
//! - `snapshots`: one row per account, replaced only by a higher version.
//! - `responses`: one row per idempotency key, the first insert wins.
//!
//! # Append
//! A single `INSERT … SELECT FROM UNNEST(…) WHERE (the account's last version) =
//! expected_version`: one statement is one transaction, so the commit's rows land together
//! or not at all, the version check and the insert see the same moment, and it costs one
//! round trip. Two writers that both pass the check collide on `events_account_version`;
//! the loser gets a conflict. Positions are taken in version order inside the statement, and
//! a later version of an account can only be inserted after the earlier one committed, so
//! positions ascend with versions within every account.
//!
//! A reader following `read_all` live can miss a row whose transaction commits after a
//! higher position became visible (sequences are not commit-ordered); the relay does not
//! rely on it, and rebuilds read a settled store.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use prism_events::{AccountId, Envelope, RawEvent};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;
use uuid::Uuid;

use super::{check_claim, check_commit, first_claims, first_of_each_key};
use super::{
    AppendError, Commit, EventStore, IdempotencyMark, IdempotentCommit, Position, Snapshot,
    StoreError, StoredResponse,
};

const ACCOUNT_VERSION: &str = "events_account_version";
const EVENT_ID: &str = "events_event_id";
const IDEMPOTENCY_KEY: &str = "events_idempotency_key";

/// The columns a stored event is read back from.
const EVENT_COLUMNS: &str = "e.position, e.event_id, e.account_id, e.version, e.event_type, \
     e.source, e.time, e.correlation_id, e.causation_id, e.schema_version, e.data";

/// The event store in a PostgreSQL schema.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: String,
    /// `schema` quoted as an identifier.
    quoted: String,
    /// The guarded append and the raw insert, prepared once as text.
    append_sql: String,
    insert_sql: String,
    /// The batched append (group commit), see [`PgStore::batch_sql`].
    batch_sql: String,
}

impl PgStore {
    /// A store whose tables live in `schema` ([`EventStore::init`] creates it).
    pub fn new(pool: PgPool, schema: &str) -> Self {
        let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
        let insert_sql = format!(
            "INSERT INTO {quoted}.events (event_id, commit_id, account_id, version, event_type, \
                 source, time, correlation_id, causation_id, schema_version, data, \
                 idempotency_key, request_hash) \
             SELECT e.event_id, $1, $2, e.version, e.event_type, e.source, e.time, \
                 e.correlation_id, e.causation_id, e.schema_version, e.data, \
                 CASE WHEN e.ord = 1 THEN $12::TEXT END, CASE WHEN e.ord = 1 THEN $13::TEXT END \
             FROM UNNEST($3::UUID[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], $7::TIMESTAMPTZ[], \
                 $8::TEXT[], $9::TEXT[], $10::INTEGER[], $11::JSONB[]) WITH ORDINALITY \
                 AS e(event_id, version, event_type, source, time, correlation_id, \
                      causation_id, schema_version, data, ord)"
        );
        // Each inserted event's position also goes into the outbox, in the same statement.
        let queued = |insert: String| {
            format!(
                "WITH inserted AS ({insert} RETURNING position) \
                 INSERT INTO {quoted}.outbox (position) SELECT position FROM inserted"
            )
        };
        let append_sql = queued(format!(
            "{insert_sql} WHERE (SELECT COALESCE(MAX(version), 0) FROM {quoted}.events \
                 WHERE account_id = $2) = $14 \
             ORDER BY e.ord"
        ));
        let insert_sql = queued(format!("{insert_sql} ORDER BY e.ord"));
        let batch_sql = Self::batch_sql(&quoted);
        Self {
            pool,
            schema: schema.to_owned(),
            quoted,
            append_sql,
            insert_sql,
            batch_sql,
        }
    }

    /// The batched append: many commits in one statement, so one round trip and one
    /// transaction (one WAL flush) for all of them.
    ///
    /// `input` is every event of every commit, one row each (`$1`–`$14`, one array per
    /// column). `firsts` inserts each commit's first event if the account's last version is
    /// the commit's expected one, with `ON CONFLICT DO NOTHING`: a first row that collides
    /// (another writer took the version, or the idempotency key is taken — it sits on the
    /// first row) is skipped, and with it the whole commit, since `rest` inserts a commit's
    /// later events only if its first row went in. Once a commit's first version is
    /// inserted by this statement nobody else can commit it, and without it nobody passes
    /// the guard for the later versions, so `rest` cannot collide on a version: a commit
    /// lands whole or not at all. (`ON CONFLICT DO NOTHING` over all the rows at once would
    /// not do: a commit could lose one row and keep another.) The statement answers with the
    /// commits that landed. A first row waits for a concurrent insert of the same key
    /// and is skipped only if that one commits, like the single append.
    ///
    /// Claims (`$16`–`$19`, one per commit that carries one) go into `responses` first,
    /// each `ON CONFLICT DO NOTHING`; a commit with a claim (`with_claim`) is inserted only
    /// if its claim was, so claim and commit share the round trip and the transaction. The
    /// statement answers with the commits that landed and the claims that were stored.
    ///
    /// Rows go in account order (claims in key order, all before any event), so two
    /// batches that meet on the same accounts or keys take their index entries in the same
    /// order and wait for each other instead of deadlocking.
    ///
    /// Chosen over one transaction with a savepoint per commit, which needs a round trip per
    /// commit, and over a loop of single appends on separate connections, which pays a
    /// round trip and a WAL flush per commit.
    fn batch_sql(quoted: &str) -> String {
        let columns = "event_id, commit_id, account_id, version, event_type, source, time, \
                       correlation_id, causation_id, schema_version, data";
        let values = "e.event_id, e.commit_id, e.account_id, e.version, e.event_type, \
                      e.source, e.time, e.correlation_id, e.causation_id, e.schema_version, \
                      e.data";
        format!(
            "WITH input AS MATERIALIZED ( \
                 SELECT * FROM UNNEST($1::UUID[], $2::UUID[], $3::BIGINT[], $4::UUID[], \
                     $5::BIGINT[], $6::TEXT[], $7::TEXT[], $8::TIMESTAMPTZ[], $9::TEXT[], \
                     $10::TEXT[], $11::INTEGER[], $12::JSONB[], $13::TEXT[], $14::TEXT[], \
                     $15::BOOLEAN[]) \
                 WITH ORDINALITY AS e(commit_id, account_id, expected, event_id, version, \
                     event_type, source, time, correlation_id, causation_id, schema_version, \
                     data, idempotency_key, request_hash, with_claim, ord) \
             ), claims AS ( \
                 INSERT INTO {quoted}.responses (key, request_hash, status, body) \
                 SELECT * FROM UNNEST($16::TEXT[], $17::TEXT[], $18::INTEGER[], $19::JSONB[]) \
                     AS c(key, request_hash, status, body) \
                 ORDER BY c.key \
                 ON CONFLICT (key) DO NOTHING \
                 RETURNING key \
             ), firsts AS ( \
                 INSERT INTO {quoted}.events ({columns}, idempotency_key, request_hash) \
                 SELECT {values}, e.idempotency_key, e.request_hash FROM input e \
                 WHERE e.version = e.expected + 1 \
                     AND (NOT e.with_claim OR e.idempotency_key IN (SELECT key FROM claims)) \
                     AND (SELECT COALESCE(MAX(x.version), 0) FROM {quoted}.events x \
                          WHERE x.account_id = e.account_id) = e.expected \
                 ORDER BY e.account_id, e.ord \
                 ON CONFLICT DO NOTHING \
                 RETURNING commit_id, position \
             ), rest AS ( \
                 INSERT INTO {quoted}.events ({columns}) \
                 SELECT {values} FROM input e \
                 WHERE e.version > e.expected + 1 \
                     AND e.commit_id IN (SELECT commit_id FROM firsts) \
                 ORDER BY e.account_id, e.ord \
                 RETURNING position \
             ), queued AS ( \
                 INSERT INTO {quoted}.outbox (position) \
                 SELECT position FROM firsts UNION ALL SELECT position FROM rest \
             ) \
             SELECT 'commit' AS kind, commit_id::TEXT AS id FROM firsts \
             UNION ALL SELECT 'claim', key FROM claims"
        )
    }

    /// Which of `keys` are taken by a stored commit.
    async fn taken_keys(&self, keys: &[&str]) -> Result<HashSet<String>, StoreError> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT idempotency_key FROM {}.events WHERE idempotency_key = ANY($1)",
            self.quoted
        ))
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                row.try_get::<String, _>("idempotency_key")
                    .map_err(|e| corrupt(row, e))
            })
            .collect()
    }

    /// The batched statement for commits already checked; `Err` when the statement as a
    /// whole failed (nothing of it is stored).
    async fn append_checked_batch(
        &self,
        commits: &[&Commit],
    ) -> Result<Vec<Result<(), AppendError>>, sqlx::Error> {
        let events = commits.iter().map(|c| c.events.len()).sum::<usize>();
        let mut columns = BatchColumns::with_capacity(events);
        for commit in commits {
            columns.push(commit);
        }
        let claims: Vec<&StoredResponse> =
            commits.iter().filter_map(|c| c.claim.as_ref()).collect();
        let rows = columns
            .bind(sqlx::query(&self.batch_sql))
            .bind(claims.iter().map(|c| c.key.as_str()).collect::<Vec<_>>())
            .bind(
                claims
                    .iter()
                    .map(|c| c.request_hash.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                claims
                    .iter()
                    .map(|c| i32::from(c.status))
                    .collect::<Vec<_>>(),
            )
            .bind(claims.iter().map(|c| &c.body).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await?;
        let mut landed: HashSet<String> = HashSet::new();
        let mut claimed: HashSet<String> = HashSet::new();
        for row in &rows {
            let id: String = row.try_get("id")?;
            match row.try_get::<String, _>("kind")?.as_str() {
                "commit" => landed.insert(id),
                _ => claimed.insert(id),
            };
        }
        let landed = |commit: &Commit| landed.contains(&commit.events[0].id.to_string());
        let unclaimed = |commit: &Commit| {
            commit
                .claim
                .as_ref()
                .is_some_and(|claim| !claimed.contains(&claim.key))
        };
        let refused: Vec<&str> = commits
            .iter()
            .filter(|c| !landed(c) && !unclaimed(c))
            .filter_map(|c| c.idempotency.as_ref().map(|m| m.key.as_str()))
            .collect();
        let taken = self.taken_keys(&refused).await;
        Ok(commits
            .iter()
            .map(|commit| {
                if landed(commit) {
                    return Ok(());
                }
                if unclaimed(commit) {
                    return Err(AppendError::KeyClaimed);
                }
                match (&taken, &commit.idempotency) {
                    (Err(e), Some(_)) => Err(e.clone().into()),
                    (Ok(taken), Some(mark)) if taken.contains(&mark.key) => {
                        Err(AppendError::DuplicateIdempotencyKey)
                    }
                    _ => Err(AppendError::Conflict {
                        account_id: commit.account_id,
                        expected: commit.expected_version,
                    }),
                }
            })
            .collect())
    }

    /// Inserts exactly the rows [`EventStore::append`] would write, without the
    /// expected-version check and without idempotency: the raw append ceiling that
    /// `prismctl bench command` compares the command path with.
    pub async fn insert_unchecked(&self, events: &[Envelope]) -> Result<(), StoreError> {
        let first = events.first().ok_or_else(|| StoreError::Corrupt {
            id: "-".into(),
            reason: "not stored: no events".into(),
        })?;
        check_commit(
            first.account_id,
            first.account_version.saturating_sub(1),
            events,
        )?;
        bind_commit(sqlx::query(&self.insert_sql), events, None)?
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Benchmarks only: takes every stored event off the outbox as if the relay had
    /// published it long ago, so that a store filled through
    /// [`PgStore::insert_unchecked`] stands for a large history with no backlog. The events
    /// never reach Kafka.
    pub async fn discard_backlog(&self) -> Result<(), StoreError> {
        sqlx::query(&format!("DELETE FROM {}.outbox", self.quoted))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Stores written before the outbox table kept a `published` flag on every event (with
    /// a partial index of the unpublished ones): their unpublished events go to the outbox,
    /// then the flag and its index go. Run by `init`, under its lock; a no-op once done.
    async fn migrate_published_flags(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        let flagged: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'events' AND column_name = 'published')",
        )
        .bind(&self.schema)
        .fetch_one(&mut **tx)
        .await
        .map_err(unavailable)?;
        if !flagged {
            return Ok(());
        }
        let s = &self.quoted;
        let moved = sqlx::query(&format!(
            "INSERT INTO {s}.outbox (position) SELECT position FROM {s}.events \
             WHERE NOT published ON CONFLICT DO NOTHING"
        ))
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        for statement in [
            format!("DROP INDEX IF EXISTS {s}.events_unpublished"),
            format!("ALTER TABLE {s}.events DROP COLUMN published"),
        ] {
            sqlx::query(&statement)
                .execute(&mut **tx)
                .await
                .map_err(unavailable)?;
        }
        tracing::info!(
            events = moved,
            "moved the unpublished events of the earlier format to the outbox table"
        );
        Ok(())
    }

    /// Why an append was refused: the key, if it is taken; otherwise a version conflict.
    async fn refusal(
        &self,
        account_id: AccountId,
        expected: u64,
        idempotency: Option<&IdempotencyMark>,
    ) -> AppendError {
        if let Some(mark) = idempotency {
            let taken = sqlx::query(&format!(
                "SELECT 1 FROM {}.events WHERE idempotency_key = $1",
                self.quoted
            ))
            .bind(&mark.key)
            .fetch_optional(&self.pool)
            .await;
            match taken {
                Ok(Some(_)) => return AppendError::DuplicateIdempotencyKey,
                Ok(None) => {}
                Err(e) => return unavailable(e).into(),
            }
        }
        AppendError::Conflict {
            account_id,
            expected,
        }
    }
}

#[async_trait]
impl EventStore for PgStore {
    async fn init(&self) -> Result<(), StoreError> {
        let s = &self.quoted;
        let statements = [
            format!("CREATE SCHEMA IF NOT EXISTS {s}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.events (
                     position BIGSERIAL PRIMARY KEY,
                     event_id UUID NOT NULL,
                     commit_id UUID NOT NULL,
                     account_id UUID NOT NULL,
                     version BIGINT NOT NULL CHECK (version > 0),
                     event_type TEXT NOT NULL,
                     source TEXT NOT NULL,
                     time TIMESTAMPTZ NOT NULL,
                     correlation_id TEXT,
                     causation_id TEXT,
                     schema_version INTEGER NOT NULL,
                     data JSONB NOT NULL,
                     idempotency_key TEXT,
                     request_hash TEXT,
                     CONSTRAINT {ACCOUNT_VERSION} UNIQUE (account_id, version),
                     CONSTRAINT {EVENT_ID} UNIQUE (event_id)
                 )"
            ),
            format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {IDEMPOTENCY_KEY} ON {s}.events \
                 (idempotency_key) WHERE idempotency_key IS NOT NULL"
            ),
            format!("CREATE TABLE IF NOT EXISTS {s}.outbox (position BIGINT PRIMARY KEY)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.snapshots (
                     account_id UUID PRIMARY KEY,
                     version BIGINT NOT NULL,
                     state JSONB NOT NULL
                 )"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.responses (
                     key TEXT PRIMARY KEY,
                     request_hash TEXT NOT NULL,
                     status INTEGER NOT NULL,
                     body JSONB NOT NULL
                 )"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.leases (
                     name TEXT PRIMARY KEY,
                     holder TEXT NOT NULL,
                     expires_at TIMESTAMPTZ NOT NULL
                 )"
            ),
        ];
        // `IF NOT EXISTS` is not safe against a concurrent creator: serialise initialisers.
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("prism-event-store:{}", self.schema))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        for statement in &statements {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        self.migrate_published_flags(&mut tx).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(())
    }

    async fn append(
        &self,
        account_id: AccountId,
        expected_version: u64,
        events: &[Envelope],
        idempotency: Option<&IdempotencyMark>,
    ) -> Result<(), AppendError> {
        check_commit(account_id, expected_version, events)?;
        let query = bind_commit(sqlx::query(&self.append_sql), events, idempotency)?
            .bind(to_i64(expected_version)?);
        match query.execute(&self.pool).await {
            Ok(done) if done.rows_affected() == events.len() as u64 => Ok(()),
            // The account's last version is not the expected one.
            Ok(_) => Err(self
                .refusal(account_id, expected_version, idempotency)
                .await),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => match e.constraint() {
                Some(IDEMPOTENCY_KEY) => Err(AppendError::DuplicateIdempotencyKey),
                Some(ACCOUNT_VERSION | EVENT_ID) => Err(self
                    .refusal(account_id, expected_version, idempotency)
                    .await),
                _ => Err(unavailable(sqlx::Error::Database(e)).into()),
            },
            Err(e) => Err(unavailable(e).into()),
        }
    }

    async fn append_batch(&self, commits: &[Commit]) -> Vec<Result<(), AppendError>> {
        // A lone commit with a claim still goes through the batch statement: one round
        // trip for both.
        if let [commit] = commits {
            if commit.claim.is_none() {
                return vec![commit.append_alone(self).await];
            }
        }
        // Refuse malformed commits alone, before any I/O (and a second claim on a key of
        // the batch: the first one's claim wins); the rest go in one statement.
        let first_claims = first_claims(commits);
        let mut results: Vec<Option<Result<(), AppendError>>> = commits
            .iter()
            .zip(first_claims)
            .map(|(c, first_claim)| {
                if !first_claim {
                    return Some(Err(AppendError::KeyClaimed));
                }
                check_commit(c.account_id, c.expected_version, &c.events)
                    .and_then(|()| check_claim(c))
                    .err()
                    .map(|e| Err(e.into()))
            })
            .collect();
        let checked: Vec<(usize, &Commit)> = commits
            .iter()
            .enumerate()
            .filter(|(i, _)| results[*i].is_none())
            .collect();
        let batch: Vec<&Commit> = checked.iter().map(|(_, c)| *c).collect();
        let answers = match self.append_checked_batch(&batch).await {
            Ok(answers) => answers,
            // A unique violation the statement does not absorb (an event id used twice, a
            // caller's bug) fails the whole statement: then each commit is tried on its
            // own, so only the faulty one fails.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let mut answers = Vec::with_capacity(batch.len());
                for commit in &batch {
                    answers.push(commit.append_alone(self).await);
                }
                answers
            }
            Err(e) => {
                let error = AppendError::from(unavailable(e));
                batch.iter().map(|_| Err(error.clone())).collect()
            }
        };
        for ((index, _), answer) in checked.iter().zip(answers) {
            results[*index] = Some(answer);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(unavailable_text("a commit got no answer").into())))
            .collect()
    }

    async fn load(
        &self,
        account_id: AccountId,
        after_version: u64,
    ) -> Result<Vec<Envelope>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM {}.events e \
             WHERE e.account_id = $1 AND e.version > $2 ORDER BY e.version",
            self.quoted
        ))
        .bind(account_id.0)
        .bind(to_i64(after_version)?)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(|row| decode(raw_event(row)?)).collect()
    }

    async fn read_all(
        &self,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<Vec<(Position, Envelope)>, StoreError> {
        let after = match after {
            None => 0,
            Some(position) => position.0.parse::<i64>().map_err(|_| StoreError::Corrupt {
                id: position.0.clone(),
                reason: "not a position of the postgres event store".into(),
            })?,
        };
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM {}.events e WHERE e.position > $1 \
             ORDER BY e.position LIMIT $2",
            self.quoted
        ))
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let position: i64 = row.try_get("position").map_err(|e| corrupt(row, e))?;
                Ok((Position(position.to_string()), decode(raw_event(row)?)?))
            })
            .collect()
    }

    async fn load_snapshot(&self, account_id: AccountId) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT version, state FROM {}.snapshots WHERE account_id = $1",
            self.quoted
        ))
        .bind(account_id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let bad = |reason: String| StoreError::Corrupt {
            id: format!("snapshot of {account_id}"),
            reason,
        };
        let version: i64 = row.try_get("version").map_err(|e| bad(e.to_string()))?;
        let state: serde_json::Value = row.try_get("state").map_err(|e| bad(e.to_string()))?;
        Ok(Some(Snapshot {
            account_id,
            version: u64::try_from(version).map_err(|_| bad(format!("version {version}")))?,
            state,
        }))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO {s}.snapshots (account_id, version, state) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO UPDATE \
                 SET version = EXCLUDED.version, state = EXCLUDED.state \
                 WHERE {s}.snapshots.version < EXCLUDED.version",
            s = self.quoted
        ))
        .bind(snapshot.account_id.0)
        .bind(to_i64(snapshot.version)?)
        .bind(&snapshot.state)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn unpublished(
        &self,
        account_id: Option<AccountId>,
        limit: usize,
    ) -> Result<Vec<RawEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The sweep walks the outbox in position order; one account's check walks the
        // account's events (a range of `events_account_version`) and probes the outbox for
        // each: positions ascend with versions within an account.
        let rows = match account_id {
            None => {
                sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM {s}.outbox o \
                     JOIN {s}.events e ON e.position = o.position \
                     ORDER BY o.position LIMIT $1",
                    s = self.quoted
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
            Some(account_id) => {
                sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM {s}.events e \
                     JOIN {s}.outbox o ON o.position = e.position \
                     WHERE e.account_id = $1 ORDER BY e.version LIMIT $2",
                    s = self.quoted
                ))
                .bind(account_id.0)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(unavailable)?;
        rows.iter().map(raw_event).collect()
    }

    async fn mark_published(&self, event_ids: &[Uuid]) -> Result<(), StoreError> {
        if event_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            "DELETE FROM {s}.outbox o USING {s}.events e \
             WHERE e.event_id = ANY($1) AND o.position = e.position",
            s = self.quoted
        ))
        .bind(event_ids)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn find_idempotent(&self, key: &str) -> Result<Option<IdempotentCommit>, StoreError> {
        // The keyed row is the commit's first; its other rows follow it in the account.
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS}, k.request_hash AS key_request_hash \
             FROM {s}.events k JOIN {s}.events e \
                 ON e.account_id = k.account_id AND e.version >= k.version \
                 AND e.commit_id = k.commit_id \
             WHERE k.idempotency_key = $1 ORDER BY e.version",
            s = self.quoted
        ))
        .bind(key)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let request_hash: Option<String> = first
            .try_get("key_request_hash")
            .map_err(|e| corrupt(first, e))?;
        let request_hash = request_hash.ok_or_else(|| StoreError::Corrupt {
            id: key.to_owned(),
            reason: "idempotency key without a request hash".into(),
        })?;
        let events = rows
            .iter()
            .map(|row| decode(raw_event(row)?))
            .collect::<Result<_, _>>()?;
        Ok(Some(IdempotentCommit {
            request_hash,
            events,
        }))
    }

    async fn save_response(&self, response: &StoredResponse) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "INSERT INTO {}.responses (key, request_hash, status, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO NOTHING",
            self.quoted
        ))
        .bind(&response.key)
        .bind(&response.request_hash)
        .bind(i32::from(response.status))
        .bind(&response.body)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn save_responses(&self, responses: &[StoredResponse]) -> Vec<Result<bool, StoreError>> {
        if let [response] = responses {
            return vec![self.save_response(response).await];
        }
        let first = first_of_each_key(responses);
        let sent: Vec<&StoredResponse> = responses
            .iter()
            .zip(&first)
            .filter_map(|(r, first)| first.then_some(r))
            .collect();
        // One statement: every record, `ON CONFLICT DO NOTHING` each on its own key; the
        // keys it answers with are the ones this call stored.
        let stored = sqlx::query(&format!(
            "INSERT INTO {}.responses (key, request_hash, status, body) \
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::INTEGER[], $4::JSONB[]) \
             ON CONFLICT (key) DO NOTHING RETURNING key",
            self.quoted
        ))
        .bind(sent.iter().map(|r| r.key.as_str()).collect::<Vec<_>>())
        .bind(
            sent.iter()
                .map(|r| r.request_hash.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(sent.iter().map(|r| i32::from(r.status)).collect::<Vec<_>>())
        .bind(sent.iter().map(|r| &r.body).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
        .and_then(|rows| {
            rows.iter()
                .map(|row| row.try_get::<String, _>("key").map_err(|e| corrupt(row, e)))
                .collect::<Result<HashSet<String>, _>>()
        });
        responses
            .iter()
            .zip(first)
            .map(|(response, first)| match &stored {
                Ok(keys) => Ok(first && keys.contains(&response.key)),
                Err(e) => Err(e.clone()),
            })
            .collect()
    }

    async fn find_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT request_hash, status, body FROM {}.responses WHERE key = $1",
            self.quoted
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let bad = |reason: String| StoreError::Corrupt {
            id: format!("response {key}"),
            reason,
        };
        let status: i32 = row.try_get("status").map_err(|e| bad(e.to_string()))?;
        Ok(Some(StoredResponse {
            key: key.to_owned(),
            request_hash: row
                .try_get("request_hash")
                .map_err(|e| bad(e.to_string()))?,
            status: u16::try_from(status).map_err(|_| bad(format!("status {status}")))?,
            body: row.try_get("body").map_err(|e| bad(e.to_string()))?,
        }))
    }

    async fn replace_claim(
        &self,
        claim_id: &str,
        new: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE {}.responses SET request_hash = $3, status = $4, body = $5 \
             WHERE key = $1 AND status = {} AND body->>'claim' = $2",
            self.quoted,
            StoredResponse::CLAIM
        ))
        .bind(&new.key)
        .bind(claim_id)
        .bind(&new.request_hash)
        .bind(i32::from(new.status))
        .bind(&new.body)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let s = &self.quoted;
        // The upsert's update runs only where the WHERE holds: a lease held by another and
        // not expired is left alone, and no row comes back.
        let held = sqlx::query(&format!(
            "INSERT INTO {s}.leases (name, holder, expires_at) \
             VALUES ($1, $2, now() + make_interval(secs => $3)) \
             ON CONFLICT (name) DO UPDATE \
             SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
             WHERE {s}.leases.holder = EXCLUDED.holder OR {s}.leases.expires_at < now() \
             RETURNING holder"
        ))
        .bind(name)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(held.is_some())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// The batched append's `$1`–`$14`: one array per column, one entry per event of every
/// commit; the idempotency mark on each commit's first event only.
#[derive(Default)]
struct BatchColumns {
    commit_ids: Vec<Uuid>,
    account_ids: Vec<Uuid>,
    expected: Vec<i64>,
    ids: Vec<Uuid>,
    versions: Vec<i64>,
    types: Vec<String>,
    sources: Vec<String>,
    times: Vec<DateTime<Utc>>,
    correlations: Vec<Option<String>>,
    causations: Vec<Option<String>>,
    schema_versions: Vec<i32>,
    data: Vec<serde_json::Value>,
    keys: Vec<Option<String>>,
    hashes: Vec<Option<String>>,
    /// Whether the row's commit carries a claim (stored first, see [`PgStore::batch_sql`]).
    with_claim: Vec<bool>,
}

impl BatchColumns {
    fn with_capacity(events: usize) -> Self {
        Self {
            commit_ids: Vec::with_capacity(events),
            account_ids: Vec::with_capacity(events),
            expected: Vec::with_capacity(events),
            ids: Vec::with_capacity(events),
            versions: Vec::with_capacity(events),
            types: Vec::with_capacity(events),
            sources: Vec::with_capacity(events),
            times: Vec::with_capacity(events),
            correlations: Vec::with_capacity(events),
            causations: Vec::with_capacity(events),
            schema_versions: Vec::with_capacity(events),
            data: Vec::with_capacity(events),
            keys: Vec::with_capacity(events),
            hashes: Vec::with_capacity(events),
            with_claim: Vec::with_capacity(events),
        }
    }

    /// Adds a commit that passed [`check_commit`], which bounds every version by
    /// `i64::MAX` (the expected one is below the first); the schema version is a small
    /// constant. So the conversions below cannot fail.
    fn push(&mut self, commit: &Commit) {
        let commit_id = commit.events[0].id;
        for (index, event) in commit.events.iter().enumerate() {
            let raw = event.to_raw();
            self.commit_ids.push(commit_id);
            self.account_ids.push(commit.account_id.0);
            self.expected
                .push(i64::try_from(commit.expected_version).unwrap_or(i64::MAX));
            self.ids.push(event.id);
            self.versions
                .push(i64::try_from(event.account_version).unwrap_or(i64::MAX));
            self.types.push(raw.event_type);
            self.sources.push(raw.source);
            // Both backends keep whole microseconds, cut the same way.
            self.times.push(raw.time.trunc_subsecs(6));
            self.correlations.push(raw.correlation_id);
            self.causations.push(raw.causation_id);
            self.schema_versions
                .push(i32::try_from(raw.schema_version).unwrap_or(i32::MAX));
            self.data.push(raw.data);
            let mark = commit.idempotency.as_ref().filter(|_| index == 0);
            self.keys.push(mark.map(|m| m.key.clone()));
            self.hashes.push(mark.map(|m| m.request_hash.clone()));
            self.with_claim.push(commit.claim.is_some());
        }
    }

    fn bind(self, query: PgQuery<'_>) -> PgQuery<'_> {
        query
            .bind(self.commit_ids)
            .bind(self.account_ids)
            .bind(self.expected)
            .bind(self.ids)
            .bind(self.versions)
            .bind(self.types)
            .bind(self.sources)
            .bind(self.times)
            .bind(self.correlations)
            .bind(self.causations)
            .bind(self.schema_versions)
            .bind(self.data)
            .bind(self.keys)
            .bind(self.hashes)
            .bind(self.with_claim)
    }
}

/// Binds `$1`–`$13` of the insert: the commit's id and account, one array per column, and
/// the idempotency mark (on the first row only).
fn bind_commit<'q>(
    query: PgQuery<'q>,
    events: &[Envelope],
    idempotency: Option<&IdempotencyMark>,
) -> Result<PgQuery<'q>, StoreError> {
    let first = &events[0];
    let mut ids = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut sources = Vec::with_capacity(events.len());
    let mut times = Vec::with_capacity(events.len());
    let mut correlations = Vec::with_capacity(events.len());
    let mut causations = Vec::with_capacity(events.len());
    let mut schema_versions = Vec::with_capacity(events.len());
    let mut data = Vec::with_capacity(events.len());
    for event in events {
        let raw = event.to_raw();
        ids.push(event.id);
        versions.push(to_i64(event.account_version)?);
        types.push(raw.event_type);
        sources.push(raw.source);
        // Both backends keep whole microseconds, cut the same way.
        times.push(raw.time.trunc_subsecs(6));
        correlations.push(raw.correlation_id);
        causations.push(raw.causation_id);
        schema_versions.push(i32::try_from(raw.schema_version).map_err(|_| {
            StoreError::Corrupt {
                id: raw.id.clone(),
                reason: format!("not stored: schema version {}", raw.schema_version),
            }
        })?);
        data.push(raw.data);
    }
    Ok(query
        .bind(first.id)
        .bind(first.account_id.0)
        .bind(ids)
        .bind(versions)
        .bind(types)
        .bind(sources)
        .bind(times)
        .bind(correlations)
        .bind(causations)
        .bind(schema_versions)
        .bind(data)
        .bind(idempotency.map(|m| m.key.clone()))
        .bind(idempotency.map(|m| m.request_hash.clone())))
}

fn raw_event(row: &PgRow) -> Result<RawEvent, StoreError> {
    let get_err = |e: sqlx::Error| corrupt(row, e);
    let id: Uuid = row.try_get("event_id").map_err(get_err)?;
    let account_id: Uuid = row.try_get("account_id").map_err(get_err)?;
    let version: i64 = row.try_get("version").map_err(get_err)?;
    let schema_version: i32 = row.try_get("schema_version").map_err(get_err)?;
    let time: DateTime<Utc> = row.try_get("time").map_err(get_err)?;
    let bad = |reason: String| StoreError::Corrupt {
        id: id.to_string(),
        reason,
    };
    Ok(RawEvent {
        id: id.to_string(),
        source: row.try_get("source").map_err(get_err)?,
        event_type: row.try_get("event_type").map_err(get_err)?,
        subject: account_id.to_string(),
        time,
        account_version: u64::try_from(version).map_err(|_| bad(format!("version {version}")))?,
        correlation_id: row.try_get("correlation_id").map_err(get_err)?,
        causation_id: row.try_get("causation_id").map_err(get_err)?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| bad(format!("schema version {schema_version}")))?,
        data: row.try_get("data").map_err(get_err)?,
    })
}

fn decode(raw: RawEvent) -> Result<Envelope, StoreError> {
    let id = raw.id.clone();
    raw.decode().map_err(|e| StoreError::Corrupt {
        id,
        reason: e.to_string(),
    })
}

fn to_i64(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::Corrupt {
        id: version.to_string(),
        reason: "not stored: version beyond BIGINT".into(),
    })
}

/// A row that does not decode: names its event id when that much is readable.
fn corrupt(row: &PgRow, error: sqlx::Error) -> StoreError {
    let id = row
        .try_get::<Uuid, _>("event_id")
        .map_or_else(|_| "<unreadable row>".to_owned(), |id| id.to_string());
    StoreError::Corrupt {
        id,
        reason: error.to_string(),
    }
}

/// sqlx errors name the failing statement's problem and, for connection errors, the host;
/// never the password, which only lives in the pool's options.
fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("postgres: {error}"))
}

fn unavailable_text(what: &str) -> StoreError {
    StoreError::Unavailable(format!("postgres: {what}"))
}
