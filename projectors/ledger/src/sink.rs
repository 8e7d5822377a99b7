//! The ledger's [`Sink`]: one MySQL transaction per batch, on one [`Generation`].
//!
//! [`MySqlSink::apply`] does, in one transaction:
//! 1. the fence, if the batch has a position: with a stored offset expected, the
//!    partition's row is locked (`SELECT .. FOR UPDATE`) and compared; with none expected,
//!    the row is inserted at once, and a duplicate key means another writer got there
//!    first. Either mismatch is [`SinkError::Fenced`] and nothing is written;
//! 2. loads the batch's accounts in one `SELECT .. WHERE account_id IN (..) FOR UPDATE`;
//! 3. folds every event in memory, in order ([`fold_batch`]); a rejection of event `i`
//!    rolls back and answers [`SinkError::Rejected`] with `index: i`;
//! 4. writes with multi-row statements ([`write_rows`]'s part): accounts upserted, statement
//!    lines inserted, daily totals aggregated per (account, day) and upserted as increments,
//!    `projector_accounts` upserted from `batch.versions`, and the position (clearing the
//!    partition's last error). Statements are chunked at [`ROWS_PER_STATEMENT`] rows, far
//!    below MySQL's 65,535 placeholders and, with the columns' widths, its 16 MiB
//!    `max_allowed_packet`.
//!
//! For the benchmark ("the raw MySQL write rate of the same rows with the same batching"),
//! [`MySqlSink::write_rows`] runs step 1 and 4 only: the caller folds with [`fold_batch`]
//! (keeping its own account state across batches) and hands over the resulting [`Writes`].
//! [`MySqlSink::apply`] can also be called directly, without Kafka.
//!
//! Generation pools run their transactions at READ COMMITTED (set by the store), so the
//! locking reads take no gap locks: writers of different partitions insert new accounts
//! side by side without deadlocking on the index's end.
//!
//! Errors: the server being unreachable, an I/O error, a pool timeout, a deadlock (1213), a
//! lock wait timeout (1205) or the server going away are [`SinkError::Transient`] (logged at
//! warn by the runtime, retried with back-off). Any other server error (a value out of a
//! column's range, a missing table, a constraint) is deterministic: retrying the same write
//! fails the same way, so it is [`SinkError::Permanent`] and the runtime holds the
//! partition, reports it on `/readyz` and in `prismctl status`, and retries slowly until an
//! operator fixed the store. Bad data in an event is caught by the fold's own checks
//! ([`SinkError::Rejected`]), so a server error is never blamed on one event.
//!
//! The account-row cache is per partition and tagged with the offset it was written at
//! ([`PartitionRows`]): it is used only by a batch whose fence expects that very offset.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::NaiveDate;
use prism_events::Envelope;
use prism_projector::checkpoint::mysql::{self as checkpoint, classify, fence};
use prism_projector::{AccountVersion, Batch, PositionUpdate, Sink, SinkError, StoredPosition};
use sqlx::mysql::MySql;
use sqlx::{MySqlConnection, QueryBuilder, Row};
use uuid::Uuid;

use crate::fold::{fold, AccountRow, AccountStatus, DailyDelta, Rejection, StatementLine};
use crate::store::Generation;

/// Most rows per multi-row statement (13 placeholders per row at most: 6,500 per statement;
/// ~4 KiB per row at the widest: ~2 MiB per packet).
pub const ROWS_PER_STATEMENT: usize = 500;
/// Most ids per `IN (..)` list.
const IDS_PER_QUERY: usize = 1_000;

/// The rows one batch writes: what [`fold_batch`] produces and [`MySqlSink::write_rows`]
/// stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// New state of every account the events touched (one row per account).
    pub accounts: Vec<AccountRow>,
    /// Statement lines, in event order.
    pub lines: Vec<StatementLine>,
    /// Increments per (account, UTC day), aggregated.
    pub daily: Vec<DailyDelta>,
    /// `projector_accounts` rows.
    pub versions: Vec<AccountVersion>,
    /// Where the batch leaves its partition (fenced like `apply`).
    pub position: Option<PositionUpdate>,
}

/// The fold refused `events[index]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {index}: {rejection}")]
pub struct BatchRejection {
    pub index: usize,
    pub rejection: Rejection,
}

/// Folds `events` in order onto `state` (the current rows of their accounts; absent: no
/// row). On success `state` holds the new rows and the result has every row to write
/// (`versions` and `position` left empty for the caller); on a rejection `state` is
/// unchanged. Pure: the benchmark uses it to prepare [`Writes`] without a database.
pub fn fold_batch(
    state: &mut HashMap<Uuid, AccountRow>,
    events: &[Envelope],
) -> Result<Writes, BatchRejection> {
    let mut touched: HashMap<Uuid, AccountRow> = HashMap::new();
    // Order of first touch, so the accounts are written in a stable order.
    let mut order: Vec<Uuid> = Vec::new();
    let mut lines = Vec::new();
    let mut daily: HashMap<(Uuid, NaiveDate), DailyDelta> = HashMap::new();
    let mut daily_order: Vec<(Uuid, NaiveDate)> = Vec::new();

    for (index, envelope) in events.iter().enumerate() {
        let id = envelope.account_id.0;
        let current = touched.get(&id).or_else(|| state.get(&id));
        let folded =
            fold(current, envelope).map_err(|rejection| BatchRejection { index, rejection })?;
        if let Some(line) = folded.line {
            lines.push(line);
        }
        if let Some(delta) = folded.daily {
            let key = (delta.account_id, delta.day);
            match daily.get(&key) {
                Some(sum) => {
                    let sum = sum.checked_add(&delta).ok_or(BatchRejection {
                        index,
                        rejection: Rejection::Overflow {
                            what: "the day's totals",
                        },
                    })?;
                    daily.insert(key, sum);
                }
                None => {
                    daily.insert(key, delta);
                    daily_order.push(key);
                }
            }
        }
        if touched.insert(id, folded.account).is_none() {
            order.push(id);
        }
    }

    let accounts: Vec<AccountRow> = order
        .iter()
        .filter_map(|id| touched.get(id).cloned())
        .collect();
    for account in &accounts {
        state.insert(account.account_id, account.clone());
    }
    Ok(Writes {
        accounts,
        lines,
        daily: daily_order
            .iter()
            .filter_map(|key| daily.get(key).copied())
            .collect(),
        versions: Vec::new(),
        position: None,
    })
}

/// The ledger's sink on one generation of the read model.
#[derive(Debug, Clone)]
pub struct MySqlSink {
    generation: Generation,
    /// Account rows as this sink last committed them, per partition, for batches that carry
    /// a position. Saves the locking read of every batch's accounts.
    accounts: std::sync::Arc<std::sync::Mutex<HashMap<i32, PartitionRows>>>,
}

/// One partition's cached account rows, true only while the partition's stored offset is
/// still `offset` (the one this sink wrote with them). Another writer that owned the
/// partition in between (a rebalance moved it away and back, a rebuild handed it over)
/// necessarily moved the offset, so a batch whose fence expects any other offset finds the
/// rows stale and reads them from MySQL instead. The runtime's [`Sink::release`] on every
/// assign and revoke drops them earlier still.
#[derive(Debug, Default)]
struct PartitionRows {
    offset: i64,
    rows: HashMap<Uuid, AccountRow>,
}

/// Most account rows kept in [`MySqlSink`]'s cache over all partitions (about 300 bytes
/// each); when full it starts over.
const ACCOUNT_CACHE_MAX: usize = 200_000;

impl MySqlSink {
    pub fn new(generation: Generation) -> Self {
        Self {
            generation,
            accounts: Default::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<i32, PartitionRows>> {
        // A poisoned lock means a panic elsewhere; start the cache over rather than trust it.
        self.accounts.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            guard.clear();
            guard
        })
    }

    /// Cached rows of `ids` on `position`'s partition into `state`, if the cache is valid
    /// for the offset this batch's fence expects; returns the ids still to load.
    fn cached(
        &self,
        position: &PositionUpdate,
        ids: &[Uuid],
        state: &mut HashMap<Uuid, AccountRow>,
    ) -> Vec<Uuid> {
        let mut cache = self.cache();
        let valid = match (cache.get(&position.partition), position.expected) {
            (Some(entry), Some(expected)) => entry.offset == expected,
            _ => false,
        };
        if !valid {
            cache.remove(&position.partition);
            return ids.to_vec();
        }
        let Some(entry) = cache.get(&position.partition) else {
            return ids.to_vec();
        };
        ids.iter()
            .filter(|id| match entry.rows.get(id) {
                Some(row) => {
                    state.insert(**id, row.clone());
                    false
                }
                None => true,
            })
            .copied()
            .collect()
    }

    /// After a committed batch: `state`'s rows of `ids` are what the partition holds at
    /// `offset`.
    fn remember(
        &self,
        partition: i32,
        offset: i64,
        ids: &[Uuid],
        state: &mut HashMap<Uuid, AccountRow>,
    ) {
        let mut cache = self.cache();
        let total: usize = cache.values().map(|e| e.rows.len()).sum();
        if total + ids.len() > ACCOUNT_CACHE_MAX {
            cache.clear();
        }
        let entry = cache.entry(partition).or_default();
        entry.offset = offset;
        for id in ids {
            match state.remove(id) {
                Some(row) => entry.rows.insert(*id, row),
                None => entry.rows.remove(id),
            };
        }
    }

    pub fn generation(&self) -> &Generation {
        &self.generation
    }

    /// Stores already folded rows exactly as [`apply`](Sink::apply) would (same fence, same
    /// statements, same chunking, one transaction), without loading or folding: the raw
    /// write path, for the benchmark.
    pub async fn write_rows(&self, writes: &Writes) -> Result<(), SinkError> {
        let mut tx = self.begin().await?;
        if let Some(position) = &writes.position {
            fence(&mut tx, position).await?;
        }
        write(&mut tx, writes).await?;
        tx.commit()
            .await
            .map_err(|e| sink_error("committing", &self.generation, e))
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, MySql>, SinkError> {
        self.generation
            .pool
            .begin()
            .await
            .map_err(|e| sink_error("starting a transaction", &self.generation, e))
    }
}

#[async_trait]
impl Sink for MySqlSink {
    async fn positions(&self, partitions: &[i32]) -> Result<Vec<StoredPosition>, SinkError> {
        checkpoint::positions(&self.generation.pool, partitions)
            .await
            .map_err(|e| sink_error("reading positions", &self.generation, e))
    }

    async fn versions(&self, accounts: &[Uuid]) -> Result<HashMap<Uuid, u64>, SinkError> {
        checkpoint::versions(&self.generation.pool, accounts)
            .await
            .map_err(|e| sink_error("reading versions", &self.generation, e))
    }

    async fn apply(&self, batch: &Batch) -> Result<(), SinkError> {
        let mut tx = self.begin().await?;
        if let Some(position) = &batch.position {
            if let Err(e) = fence(&mut tx, position).await {
                self.cache().remove(&position.partition);
                return Err(e);
            }
        }

        let mut ids: Vec<Uuid> = batch.events.iter().map(|e| e.account_id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut state: HashMap<Uuid, AccountRow> = HashMap::with_capacity(ids.len());
        let missing: Vec<Uuid> = match &batch.position {
            Some(position) => self.cached(position, &ids, &mut state),
            None => ids.clone(),
        };
        if !missing.is_empty() {
            let loaded = load_accounts(&mut tx, &missing)
                .await
                .map_err(|e| sink_error("loading accounts", &self.generation, e))?;
            state.extend(loaded);
        }

        let mut writes = match fold_batch(&mut state, &batch.events) {
            Ok(writes) => writes,
            Err(rejected) => {
                // Nothing was written yet; dropping the transaction would roll back too.
                let _ = tx.rollback().await;
                return Err(SinkError::Rejected {
                    index: rejected.index,
                    reason: rejected.rejection.reason(),
                });
            }
        };
        writes.versions.clone_from(&batch.versions);
        // The fence already inserted or locked the partition's row.
        writes.position.clone_from(&batch.position);

        let written = match write(&mut tx, &writes).await {
            Ok(()) => tx
                .commit()
                .await
                .map_err(|e| sink_error("committing", &self.generation, e)),
            Err(e) => Err(e),
        };
        match (&written, &batch.position) {
            (Ok(()), Some(position)) => {
                self.remember(position.partition, position.offset, &ids, &mut state);
            }
            // Unknown outcome: forget the partition's rows.
            (Err(_), Some(position)) => {
                self.cache().remove(&position.partition);
            }
            // Rows written without a position belong to no partition's cache.
            (_, None) => {}
        }
        written
    }

    /// The kit's: the partition's row gets the error if it has a row (see
    /// [`checkpoint::record_error`]).
    async fn record_error(&self, partition: i32, error: &str) -> Result<(), SinkError> {
        checkpoint::record_error(&self.generation.pool, partition, error)
            .await
            .map_err(|e| sink_error("recording an error", &self.generation, e))
    }

    fn release(&self, partitions: &[i32]) {
        let mut cache = self.cache();
        for partition in partitions {
            cache.remove(partition);
        }
    }
}

async fn load_accounts(
    tx: &mut MySqlConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, AccountRow>, sqlx::Error> {
    let mut state = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT account_id, holder_name, email, country, currency, status, balance_minor, \
             daily_withdrawal_limit_minor, frozen_reason, opened_at, updated_at, closed_at, \
             version FROM accounts WHERE account_id IN (",
        );
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(") FOR UPDATE");
        let rows = q.build().fetch_all(&mut *tx).await?;
        for row in rows {
            let status: String = row.try_get("status")?;
            let account = AccountRow {
                account_id: row.try_get("account_id")?,
                holder_name: row.try_get("holder_name")?,
                email: row.try_get("email")?,
                country: row.try_get("country")?,
                currency: row.try_get("currency")?,
                status: AccountStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
                    index: "status".into(),
                    source: format!("unknown account status {status:?}").into(),
                })?,
                balance_minor: row.try_get("balance_minor")?,
                daily_withdrawal_limit_minor: row.try_get("daily_withdrawal_limit_minor")?,
                frozen_reason: row.try_get("frozen_reason")?,
                opened_at: row.try_get("opened_at")?,
                updated_at: row.try_get("updated_at")?,
                closed_at: row.try_get("closed_at")?,
                version: row.try_get("version")?,
            };
            state.insert(account.account_id, account);
        }
    }
    Ok(state)
}

/// Step 4: every write of a batch, chunked, inside the caller's transaction.
async fn write(tx: &mut MySqlConnection, writes: &Writes) -> Result<(), SinkError> {
    for chunk in writes.accounts.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO accounts (account_id, holder_name, email, country, currency, status, \
             balance_minor, daily_withdrawal_limit_minor, frozen_reason, opened_at, updated_at, \
             closed_at, version) ",
        );
        q.push_values(chunk, |mut b, a| {
            b.push_bind(a.account_id)
                .push_bind(a.holder_name.as_str())
                .push_bind(a.email.as_str())
                .push_bind(a.country.as_str())
                .push_bind(a.currency.as_str())
                .push_bind(a.status.as_str())
                .push_bind(a.balance_minor)
                .push_bind(a.daily_withdrawal_limit_minor)
                .push_bind(a.frozen_reason.as_deref())
                .push_bind(a.opened_at)
                .push_bind(a.updated_at)
                .push_bind(a.closed_at)
                .push_bind(a.version);
        });
        q.push(
            " ON DUPLICATE KEY UPDATE holder_name = VALUES(holder_name), email = VALUES(email), \
             country = VALUES(country), currency = VALUES(currency), status = VALUES(status), \
             balance_minor = VALUES(balance_minor), \
             daily_withdrawal_limit_minor = VALUES(daily_withdrawal_limit_minor), \
             frozen_reason = VALUES(frozen_reason), opened_at = VALUES(opened_at), \
             updated_at = VALUES(updated_at), closed_at = VALUES(closed_at), \
             version = VALUES(version)",
        );
        q.build()
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("writing accounts", e))?;
    }

    for chunk in writes.lines.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO statement_lines (account_id, version, event_id, kind, amount_minor, \
             balance_after_minor, description, channel, merchant_name, merchant_category, \
             merchant_country, occurred_at) ",
        );
        q.push_values(chunk, |mut b, l| {
            b.push_bind(l.account_id)
                .push_bind(l.version)
                .push_bind(l.event_id)
                .push_bind(l.kind.as_str())
                .push_bind(l.amount_minor)
                .push_bind(l.balance_after_minor)
                .push_bind(l.description.as_deref())
                .push_bind(l.channel)
                .push_bind(l.merchant_name.as_deref())
                .push_bind(l.merchant_category.as_deref())
                .push_bind(l.merchant_country.as_deref())
                .push_bind(l.occurred_at);
        });
        q.build()
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("writing statement lines", e))?;
    }

    for chunk in writes.daily.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO daily_totals (account_id, day, credits_minor, debits_minor, deposits, \
             withdrawals, card_payments, declined_payments) ",
        );
        q.push_values(chunk, |mut b, d| {
            b.push_bind(d.account_id)
                .push_bind(d.day)
                .push_bind(d.credits_minor)
                .push_bind(d.debits_minor)
                .push_bind(d.deposits)
                .push_bind(d.withdrawals)
                .push_bind(d.card_payments)
                .push_bind(d.declined_payments);
        });
        q.push(
            " ON DUPLICATE KEY UPDATE credits_minor = credits_minor + VALUES(credits_minor), \
             debits_minor = debits_minor + VALUES(debits_minor), \
             deposits = deposits + VALUES(deposits), \
             withdrawals = withdrawals + VALUES(withdrawals), \
             card_payments = card_payments + VALUES(card_payments), \
             declined_payments = declined_payments + VALUES(declined_payments)",
        );
        q.build()
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("writing daily totals", e))?;
    }

    checkpoint::store_versions(tx, &writes.versions).await?;
    if let Some(position) = &writes.position {
        // With `expected: None` the fence inserted this row already; updating it again is
        // harmless and keeps one code path.
        checkpoint::store_position(tx, position).await?;
    }
    Ok(())
}

fn sink_error(what: &str, generation: &Generation, e: sqlx::Error) -> SinkError {
    classify(&format!("{what} in {}", generation.database), e)
}

pub(crate) use prism_projector::checkpoint::clip;
