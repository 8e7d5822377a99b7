//! Transactional checkpoints in MySQL/MariaDB: two tables beside the read model, written in
//! the sink's own transaction.
//!
//! ```sql
//! CREATE TABLE projector_partitions (partition_id INT PRIMARY KEY, kafka_offset BIGINT,
//!   event_id BINARY(16) NULL, event_time DATETIME(6) NULL, writer VARCHAR(200),
//!   updated_at DATETIME(6), last_error VARCHAR(2000) NULL, last_error_at DATETIME(6) NULL);
//! CREATE TABLE projector_accounts (account_id BINARY(16) PRIMARY KEY,
//!   version BIGINT UNSIGNED, event_id BINARY(16));
//! ```
//! ([`MIGRATION`] holds them, for a read model's migrations to include.)
//!
//! A sink's `apply` is: begin; [`fence`]; its own reads and writes; [`store_versions`];
//! [`store_position`]; commit. Its `positions`, `versions` and `record_error` are
//! [`positions`], [`versions`] and [`record_error`]. Errors are classified by [`classify`]:
//! the server unreachable, a deadlock or a lock timeout is transient, anything a retry of
//! the same write cannot cure is permanent.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySql, MySqlDatabaseError, MySqlPool};
use sqlx::{MySqlConnection, QueryBuilder, Row};
use uuid::Uuid;

use super::{clip, LAST_ERROR_MAX};
use crate::sink::{AccountVersion, PositionUpdate, SinkError, StoredPosition};

/// The two checkpoint tables (idempotent DDL).
pub const MIGRATION: &str = include_str!("mysql.sql");

/// Most rows per multi-row statement.
const ROWS_PER_STATEMENT: usize = 500;
/// Most ids per `IN (..)` list.
const IDS_PER_QUERY: usize = 1_000;

/// Stored positions of these partitions (absent: never written).
pub async fn positions(
    pool: &MySqlPool,
    partitions: &[i32],
) -> Result<Vec<StoredPosition>, sqlx::Error> {
    let mut out = Vec::with_capacity(partitions.len());
    for chunk in partitions.chunks(IDS_PER_QUERY) {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT partition_id, kafka_offset, event_id, event_time \
             FROM projector_partitions WHERE partition_id IN (",
        );
        let mut list = q.separated(", ");
        for p in chunk {
            list.push_bind(*p);
        }
        q.push(")");
        for row in q.build().fetch_all(pool).await? {
            out.push(StoredPosition {
                partition: row.try_get("partition_id")?,
                offset: row.try_get("kafka_offset")?,
                event_id: row.try_get("event_id")?,
                event_time: row.try_get::<Option<DateTime<Utc>>, _>("event_time")?,
            });
        }
    }
    out.sort_by_key(|p| p.partition);
    Ok(out)
}

/// Last handled version of each of these accounts (absent: none handled).
pub async fn versions(
    pool: &MySqlPool,
    accounts: &[Uuid],
) -> Result<HashMap<Uuid, u64>, sqlx::Error> {
    let mut out = HashMap::with_capacity(accounts.len());
    for chunk in accounts.chunks(IDS_PER_QUERY) {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT account_id, version FROM projector_accounts WHERE account_id IN (",
        );
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(")");
        let rows: Vec<(Uuid, u64)> = q.build_query_as().fetch_all(pool).await?;
        out.extend(rows);
    }
    Ok(out)
}

/// Checks, inside the transaction, that the partition is where this writer expects it.
/// With a stored offset expected, the row is locked (`SELECT .. FOR UPDATE`) and compared;
/// with none expected, the row is inserted at once, and a duplicate key means another
/// writer got there first. Either mismatch is [`SinkError::Fenced`].
pub async fn fence(tx: &mut MySqlConnection, position: &PositionUpdate) -> Result<(), SinkError> {
    let partition = position.partition;
    match position.expected {
        Some(expected) => {
            let stored: Option<i64> = sqlx::query_scalar(
                "SELECT kafka_offset FROM projector_partitions WHERE partition_id = ? FOR UPDATE",
            )
            .bind(partition)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| classify("locking the position", e))?;
            if stored != Some(expected) {
                return Err(SinkError::Fenced { partition, stored });
            }
            Ok(())
        }
        None => {
            let inserted = sqlx::query(
                "INSERT INTO projector_partitions \
                 (partition_id, kafka_offset, event_id, event_time, writer, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(partition)
            .bind(position.offset)
            .bind(position.event_id)
            .bind(position.event_time)
            .bind(&position.writer)
            .bind(Utc::now())
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => Ok(()),
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    let stored: Option<i64> = sqlx::query_scalar(
                        "SELECT kafka_offset FROM projector_partitions WHERE partition_id = ?",
                    )
                    .bind(partition)
                    .fetch_optional(&mut *tx)
                    .await
                    .unwrap_or(None);
                    Err(SinkError::Fenced { partition, stored })
                }
                Err(e) => Err(classify("claiming the position", e)),
            }
        }
    }
}

/// Upserts the accounts' last handled versions, in multi-row statements.
pub async fn store_versions(
    tx: &mut MySqlConnection,
    versions: &[AccountVersion],
) -> Result<(), SinkError> {
    for chunk in versions.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO projector_accounts (account_id, version, event_id) ",
        );
        q.push_values(chunk, |mut b, v| {
            b.push_bind(v.account_id)
                .push_bind(v.version)
                .push_bind(v.event_id);
        });
        q.push(" ON DUPLICATE KEY UPDATE version = VALUES(version), event_id = VALUES(event_id)");
        q.build()
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("writing account versions", e))?;
    }
    Ok(())
}

/// Moves the position (after [`fence`], which locked or inserted its row) and clears
/// nothing else: the last error stays visible until the next one.
pub async fn store_position(
    tx: &mut MySqlConnection,
    position: &PositionUpdate,
) -> Result<(), SinkError> {
    sqlx::query(
        "UPDATE projector_partitions SET kafka_offset = ?, \
         event_id = COALESCE(?, event_id), event_time = COALESCE(?, event_time), \
         writer = ?, updated_at = ? \
         WHERE partition_id = ?",
    )
    .bind(position.offset)
    .bind(position.event_id)
    .bind(position.event_time)
    .bind(&position.writer)
    .bind(Utc::now())
    .bind(position.partition)
    .execute(&mut *tx)
    .await
    .map_err(|e| classify("writing the position", e))?;
    Ok(())
}

/// Sets `last_error`/`last_error_at` on the partition's row if it has one, and does
/// nothing if it has none (a partition never written has no row to show, and inserting
/// one would invent an offset). Long messages are cut with a trailing `…`.
pub async fn record_error(
    pool: &MySqlPool,
    partition: i32,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projector_partitions SET last_error = ?, last_error_at = ? \
         WHERE partition_id = ?",
    )
    .bind(clip(error, LAST_ERROR_MAX))
    .bind(Utc::now())
    .bind(partition)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every stored position of a copy with what `prismctl status` shows.
pub async fn partitions(
    pool: &MySqlPool,
) -> Result<Vec<crate::copies::PartitionStatus>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT partition_id, kafka_offset, event_id, event_time, writer, updated_at, \
         last_error, last_error_at FROM projector_partitions ORDER BY partition_id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(crate::copies::PartitionStatus {
                partition: row.try_get("partition_id")?,
                offset: row.try_get("kafka_offset")?,
                event_id: row.try_get("event_id")?,
                event_time: row.try_get("event_time")?,
                writer: row.try_get("writer")?,
                updated_at: row.try_get("updated_at")?,
                last_error: row.try_get("last_error")?,
                last_error_at: row.try_get("last_error_at")?,
            })
        })
        .collect()
}

/// MySQL/MariaDB error numbers that mean "try again".
const RETRYABLE: &[u16] = &[
    1040, // too many connections
    1053, // server shutdown in progress
    1205, // lock wait timeout
    1213, // deadlock
    1317, // query interrupted
    1927, // connection killed (MariaDB)
    2006, // server has gone away
    2013, // lost connection during query
];

/// MySQL errors a retry of the same write cannot cure: the store refuses these values or
/// this schema (out of range, too long, wrong type, a missing table or column, a constraint).
pub fn deterministic(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_none_or(|m| !RETRYABLE.contains(&m.number())),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Decode(_) => true,
        _ => false,
    }
}

/// Server unreachable, I/O, pool timeouts, deadlocks and the like are
/// [`SinkError::Transient`]; a deterministic error (see [`deterministic`]) is
/// [`SinkError::Permanent`]: the runtime holds the partition and says so, instead of
/// retrying it as "unavailable" for ever.
pub fn classify(what: &str, e: sqlx::Error) -> SinkError {
    if deterministic(&e) {
        tracing::error!("sink: {what}: {e}");
        return SinkError::Permanent(format!("{what}: {e}"));
    }
    SinkError::Transient(format!("{what}: {e}"))
}
