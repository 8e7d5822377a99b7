//! The fraud model's [`Sink`](prism_projector::Sink): two stores behind one position, on the
//! kit's transactional Redis checkpoint ([`prism_projector::checkpoint::redis`]).
//!
//! - **Online** (Redis): each account's feature state ([`AccountFeatures`]) in the hash
//!   `a:<id>` (`v` the handled version, `s` the state as JSON), written with the partition's
//!   position in one `MULTI`/`EXEC` after `WATCH`ing the position: a replay, a duplicate or
//!   a fenced writer changes nothing.
//! - **Offline** (Parquet, [`crate::offline`]): the batch's feature rows and fraud reports,
//!   one file per table and event date, written and flushed *before* that transaction
//!   ([`RedisModel::before_commit`]). A crash after the files and before the position
//!   replays the batch from the same stored state, which writes the same rows again (the
//!   same file if the batch has the same boundaries; identical rows in another file if
//!   not): nothing is lost, and readers drop duplicates by event id.
//!
//! Both come from one fold ([`features::apply_in_place`]): the row an event gets offline is the
//! vector the online API would have given it just before (`features::vector`).

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use chrono::NaiveDate;
use prism_events::{AccountEvent, Envelope};
use prism_projector::checkpoint::redis::{Accounts, Origin, RedisCheckpoint, RedisModel, Stored};
use prism_projector::SinkError;
use redis::Pipeline;
use uuid::Uuid;

use crate::copies::Keys;
use crate::features::{self, AccountFeatures};
use crate::offline::{OfflineStore, Table};
use crate::rows::{feature_batch, label_batch, FeatureRow, LabelRow};

/// The fraud model's sink.
pub type FraudSink = RedisCheckpoint<FraudModel>;

/// One batch's transaction and files, folded ([`FraudSink::prepare`]).
pub type Prepared = prism_projector::checkpoint::redis::Prepared<FraudModel>;

/// The fraud model's part of the Redis checkpoint.
#[derive(Debug, Clone)]
pub struct FraudModel {
    keys: Keys,
    offline: OfflineStore,
}

/// What a batch writes besides the accounts: its offline files.
#[derive(Debug, Default)]
pub struct FraudWrites {
    /// `(table, date, file name, rows)`.
    pub files: Vec<(Table, NaiveDate, String, RecordBatch)>,
    pub rows: usize,
    pub labels: usize,
}

/// An account's stored fields: `HMGET a:<id> v s`.
type AccountRow = (Option<u64>, Option<Vec<u8>>);

impl FraudModel {
    pub fn new(keys: Keys, offline: OfflineStore) -> Self {
        Self { keys, offline }
    }
}

/// An account's feature state as stored in Redis.
pub fn encode_state(state: &AccountFeatures) -> Vec<u8> {
    // Serialising a plain struct of numbers, strings and maps with string keys cannot fail.
    serde_json::to_vec(state).unwrap_or_default()
}

/// The state [`encode_state`] stored.
pub fn decode_state(bytes: &[u8]) -> Result<AccountFeatures, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// The rows of one file: one table's rows of one date in a batch, with the offsets and
/// event ids that name the file.
struct FileRows<R> {
    rows: Vec<R>,
    offsets: Vec<i64>,
    ids: Vec<Uuid>,
}

impl<R> Default for FileRows<R> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            offsets: Vec::new(),
            ids: Vec::new(),
        }
    }
}

impl<R> FileRows<R> {
    fn push(&mut self, row: R, offset: Option<i64>, id: Uuid) {
        self.rows.push(row);
        self.offsets.extend(offset);
        self.ids.push(id);
    }
}

/// A file name for rows from `origin` at `offsets` (or, without offsets, from the events
/// `ids`): the same batch always names the same file.
fn file_name(origin: Origin<'_>, offsets: &[i64], ids: &[Uuid]) -> String {
    match (origin.partition, offsets.first(), offsets.last()) {
        (Some(p), Some(first), Some(last)) => format!("p{p}-o{first}-{last}"),
        _ => format!(
            "s-{}-{}",
            ids.first()
                .map(|u| u.simple().to_string())
                .unwrap_or_default(),
            ids.len()
        ),
    }
}

#[async_trait::async_trait]
impl RedisModel for FraudModel {
    type Account = AccountFeatures;
    type Writes = FraudWrites;

    fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    fn read_account(&self, pipe: &mut Pipeline, id: Uuid) {
        pipe.cmd("HMGET")
            .arg(self.keys.account(id))
            .arg("v")
            .arg("s");
    }

    fn parse_account(
        &self,
        id: Uuid,
        value: &redis::Value,
    ) -> Result<Stored<AccountFeatures>, SinkError> {
        let (version, state): AccountRow = redis::from_redis_value(value)
            .map_err(|e| SinkError::Transient(format!("reading the accounts: {e}")))?;
        let account = match state.filter(|s| !s.is_empty()) {
            None => None,
            Some(bytes) => Some(decode_state(&bytes).map_err(|e| {
                SinkError::Permanent(format!(
                    "{} holds a feature state this build cannot read: {e}",
                    self.keys.account(id)
                ))
            })?),
        };
        Ok(Stored {
            version: version.unwrap_or(0),
            account,
        })
    }

    fn version(account: &AccountFeatures) -> u64 {
        account.version()
    }

    fn fold_batch(
        &self,
        accounts: &mut Accounts<AccountFeatures>,
        events: &[Envelope],
        origin: Origin<'_>,
    ) -> Result<FraudWrites, SinkError> {
        let mut rows: BTreeMap<NaiveDate, FileRows<FeatureRow>> = BTreeMap::new();
        let mut labels: BTreeMap<NaiveDate, FileRows<LabelRow>> = BTreeMap::new();
        for (index, event) in events.iter().enumerate() {
            let id = event.account_id.0;
            // Every account of the batch has its slot (`None`: not known yet).
            let slot = accounts.entry(id).or_default();
            if slot
                .as_ref()
                .is_some_and(|a| a.version() >= event.account_version)
            {
                continue;
            }
            let row = features::apply_in_place(slot, event).map_err(|r| SinkError::Rejected {
                index,
                reason: r.to_string(),
            })?;
            let offset = origin.offsets.get(index).copied();
            if let Some(row) = row {
                rows.entry(row.event_time.date_naive()).or_default().push(
                    FeatureRow {
                        partition: origin.partition,
                        offset,
                        row,
                    },
                    offset,
                    event.id,
                );
            }
            if let AccountEvent::PaymentReportedFraudulent(report) = &event.event {
                labels.entry(event.time.date_naive()).or_default().push(
                    LabelRow {
                        payment_event_id: report.payment_event_id,
                        account_id: id,
                        reported_at: event.time,
                        report_event_id: event.id,
                        reason: report.reason.clone(),
                    },
                    offset,
                    event.id,
                );
            }
        }
        let mut writes = FraudWrites::default();
        let failed = |e: arrow_schema::ArrowError| {
            SinkError::Permanent(format!("building the offline rows: {e}"))
        };
        for (date, file) in rows {
            writes.rows += file.rows.len();
            let name = file_name(origin, &file.offsets, &file.ids);
            let batch = feature_batch(&file.rows).map_err(failed)?;
            writes.files.push((Table::Rows, date, name, batch));
        }
        for (date, file) in labels {
            writes.labels += file.rows.len();
            let name = file_name(origin, &file.offsets, &file.ids);
            let batch = label_batch(&file.rows).map_err(failed)?;
            writes.files.push((Table::Labels, date, name, batch));
        }
        Ok(writes)
    }

    fn write_account(&self, tx: &mut Pipeline, id: Uuid, stored: &Stored<AccountFeatures>) {
        let key = self.keys.account(id);
        match &stored.account {
            Some(state) => {
                tx.cmd("HSET")
                    .arg(&key)
                    .arg("v")
                    .arg(stored.version)
                    .arg("s")
                    .arg(encode_state(state))
                    .ignore();
            }
            None => {
                tx.cmd("HSET")
                    .arg(&key)
                    .arg("v")
                    .arg(stored.version)
                    .ignore();
            }
        }
    }

    fn write_effects(&self, _tx: &mut Pipeline, _writes: &FraudWrites) {}

    async fn before_commit(&self, writes: &FraudWrites) -> Result<(), SinkError> {
        if writes.files.is_empty() {
            return Ok(());
        }
        let store = self.offline.clone();
        let files: Vec<(Table, NaiveDate, String, RecordBatch)> = writes.files.clone();
        tokio::task::spawn_blocking(move || {
            for (table, date, name, batch) in &files {
                store.write(*table, *date, name, batch)?;
            }
            Ok::<_, crate::offline::OfflineError>(())
        })
        .await
        .map_err(|e| SinkError::Transient(format!("writing the offline files: {e}")))?
        // A full or read-only disk heals no faster than a retry; it is never the event's
        // fault, so the runtime keeps the batch and backs off.
        .map_err(|e| SinkError::Transient(format!("writing the offline files: {e}")))
    }
}
