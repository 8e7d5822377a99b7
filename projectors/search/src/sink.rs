//! The search [`Sink`]: one copy of the read model in Elasticsearch/OpenSearch, in the
//! kit's *idempotent by version* checkpoint mode ([`prism_projector::checkpoint::elasticsearch`]
//! says what the mode guarantees and keeps the checkpoint index: positions with their fence,
//! version documents, last errors). What search adds is its two kinds of documents:
//! - a transaction document's `_id` is its event id and its content depends only on the
//!   event and the account's unchanging fields, so writing it again changes nothing;
//! - an account document is written with `version_type=external`, version = the account's
//!   version, so an older or equal write loses (a 409 there counts as done). It is written
//!   only after every transaction document of the batch is in, so an account document at
//!   version `v` proves that the account's transactions up to `v` are stored: it is the
//!   account's version checkpoint, and costs no extra document. The checkpoint index gets a
//!   version document (`account-<uuid>`) only for an account whose handled version is ahead
//!   of its document (its events were dead-lettered, so the document never reached that
//!   version). [`Sink::versions`] is the larger of the two.
//!
//! [`EsSink::apply`] therefore does:
//! 1. one realtime `mget` reads the partition's position document, the batch's account
//!    documents, and probes the transactions index (both engines would create a missing
//!    index on a bulk `index`, with a dynamic mapping); a stored offset other than
//!    `batch.position.expected` is [`SinkError::Fenced`] before anything is written.
//!    Accounts the previous batch of the partition wrote are not read again: the sink
//!    remembers them (up to `[search] account_cache_max`) for as long as the position it
//!    reads is the very write it made after them (same `_seq_no`), i.e. nobody else wrote
//!    the partition since; otherwise, or after any error, it reads them;
//! 2. fold the batch ([`fold_batch`]); an event not newer than its account's document was
//!    applied by an earlier attempt, so only its transaction document is made again; a
//!    fold rejection of event `i` is [`SinkError::Rejected`] with `index: i`;
//! 3. bulk: the transaction documents, in requests of at most `bulk_max_bytes`, checked
//!    item by item (see [`check_items`](prism_projector::checkpoint::elasticsearch::check_items));
//! 4. bulk: the account documents and the few version documents, checked the same way;
//! 5. the position document, fenced. A 409 there is [`SinkError::Fenced`].
//!
//! A crash anywhere leaves documents that the next attempt writes again identically, and
//! a position that still names the batch's start. Nothing uses `refresh`: documents become
//! searchable on the index's refresh interval; the sink's own reads are realtime.
//!
//! Errors are classified as the kit's module says: no answer or 429/5xx is transient, an
//! index that is missing or refuses every write is permanent, one document the mapping
//! refuses is [`SinkError::Rejected`] naming its event (dead-lettered, the rest lands).
//!
//! [`EsSink::write_raw`] is steps 3 and 4's documents alone, with the same requests: the
//! raw `_bulk` ceiling `prismctl bench search` measures the projector against.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use prism_projector::checkpoint::elasticsearch::{
    external_version, fence, ndjson, position_from, BulkLine, Checkpoints, Origin, ReadPosition,
    Store,
};
use prism_projector::{AccountVersion, Batch, Sink, SinkError, StoredPosition};
use serde_json::json;
use uuid::Uuid;

use crate::copies::SearchCopy;
use crate::fold::{fold_batch, AccountDoc, Writes};

/// The engine helpers the rest of the crate shares (answers as status and JSON, error
/// objects as text).
pub(crate) use prism_projector::checkpoint::elasticsearch::{describe, read};

/// The checkpoint storage of `copy` (its checkpoint index); errors name the copy.
pub fn checkpoints(copy: &SearchCopy) -> Checkpoints {
    Checkpoints::new(
        Store::new(copy.client.clone(), format!("copy {}", copy.number)),
        copy.checkpoints_index.clone(),
    )
}

/// The search sink on one copy.
#[derive(Debug, Clone)]
pub struct EsSink {
    copy: SearchCopy,
    checkpoints: Checkpoints,
    memory: Arc<Mutex<Memory>>,
}

/// The account documents this sink wrote, per partition, with the position it stored
/// after them: while a batch's read of the position finds that very write
/// ([`ReadPosition::same_write`]), nobody else wrote the partition since, so its accounts
/// are what the engine holds and need not be read back (realtime gets of documents just
/// written cost the engine a refresh). Anything else, an error included, forgets the
/// partition.
#[derive(Debug, Default)]
struct Memory {
    partitions: HashMap<i32, Remembered>,
    /// Accounts remembered over all partitions.
    accounts: usize,
}

#[derive(Debug)]
struct Remembered {
    stored: ReadPosition,
    accounts: HashMap<Uuid, AccountDoc>,
}

impl Memory {
    /// Takes `partition`'s memory out (a batch that fails leaves it out: forgotten).
    fn take(&mut self, partition: i32) -> Option<Remembered> {
        let taken = self.partitions.remove(&partition)?;
        self.accounts -= taken.accounts.len();
        Some(taken)
    }

    /// Remembers `partition`'s accounts after a batch stored `stored`. Over `max` accounts
    /// in all, the partition keeps only this batch's accounts (those are the likeliest to
    /// come again; a partition at rest is forgotten when its next batch meets a new
    /// writer anyway).
    fn keep(
        &mut self,
        partition: i32,
        stored: ReadPosition,
        mut accounts: HashMap<Uuid, AccountDoc>,
        batch: &HashMap<Uuid, AccountDoc>,
        max: usize,
    ) {
        if self.accounts + accounts.len() > max {
            accounts = batch.clone();
            if self.accounts + accounts.len() > max {
                return;
            }
        }
        self.accounts += accounts.len();
        self.partitions
            .insert(partition, Remembered { stored, accounts });
    }
}

impl EsSink {
    pub fn new(copy: SearchCopy) -> Self {
        let checkpoints = checkpoints(&copy);
        Self {
            copy,
            checkpoints,
            memory: Arc::default(),
        }
    }

    pub fn copy(&self) -> &SearchCopy {
        &self.copy
    }

    /// Writes already folded documents exactly as [`apply`](Sink::apply)'s steps 3 and 4
    /// do (same documents, same request sizes, same item checks), without fence, load,
    /// fold, version documents or position: the raw `_bulk` path, for the benchmark (and
    /// for tests that stand in for a crash before the position).
    pub async fn write_raw(&self, writes: &Writes) -> Result<(), SinkError> {
        let lines = transaction_lines(&self.copy, writes)?;
        self.bulk(&lines, "writing transactions").await?;
        let lines = account_lines(&self.copy, writes)?;
        self.bulk(&lines, "writing accounts").await
    }

    /// Sends `lines` in requests of at most `bulk_max_bytes` and checks every item.
    async fn bulk(&self, lines: &[BulkLine], what: &str) -> Result<(), SinkError> {
        self.checkpoints
            .store()
            .bulk(lines, self.copy.bulk_max_bytes, what)
            .await
    }

    /// Steps 1 and 2's reads in one realtime `mget`: the partition's position document
    /// (with what the fence swaps), the account documents of `ids` that exist, and a probe
    /// of the transactions index (a bulk `index` into a missing index would create it with
    /// a dynamic mapping, so its absence must stop the batch first).
    async fn load(
        &self,
        partition: Option<i32>,
        ids: &[Uuid],
    ) -> Result<(Option<ReadPosition>, HashMap<Uuid, AccountDoc>), SinkError> {
        let mut docs: Vec<(&str, String)> = Vec::with_capacity(ids.len() + 2);
        docs.push((self.copy.transactions_index.as_str(), "probe".into()));
        if let Some(partition) = partition {
            docs.push(self.checkpoints.position_doc(partition));
        }
        docs.extend(
            ids.iter()
                .map(|id| (self.copy.accounts_index.as_str(), id.to_string())),
        );
        let answers = self
            .checkpoints
            .store()
            .mget(&docs, "loading the batch's state")
            .await?;
        let position = match partition {
            Some(_) => answers.get(1).map(position_from).transpose()?.flatten(),
            None => None,
        };
        let skip = if partition.is_some() { 2 } else { 1 };
        let mut accounts = HashMap::with_capacity(ids.len());
        for doc in answers.iter().skip(skip) {
            if doc["found"].as_bool() != Some(true) {
                continue;
            }
            let account: AccountDoc =
                serde_json::from_value(doc["_source"].clone()).map_err(|e| {
                    SinkError::Permanent(format!(
                        "loading accounts in {}: document {} is not an account: {e}",
                        self.copy.accounts_index,
                        doc["_id"].as_str().unwrap_or("?")
                    ))
                })?;
            accounts.insert(account.account_id, account);
        }
        Ok((position, accounts))
    }
}

#[async_trait]
impl Sink for EsSink {
    async fn positions(&self, partitions: &[i32]) -> Result<Vec<StoredPosition>, SinkError> {
        self.checkpoints.positions(partitions).await
    }

    /// The larger of the account document's version and its version document's (written
    /// only when dead letters moved the handled version past the document), in one `mget`.
    async fn versions(&self, accounts: &[Uuid]) -> Result<HashMap<Uuid, u64>, SinkError> {
        self.checkpoints
            .versions(accounts, Some(&self.copy.accounts_index))
            .await
    }

    async fn apply(&self, batch: &Batch) -> Result<(), SinkError> {
        // 1 and 2. One read: the fence, the accounts not remembered, the transactions
        // index is there.
        let mut ids: Vec<Uuid> = batch.events.iter().map(|e| e.account_id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let partition = batch.position.as_ref().map(|p| p.partition);
        let remembered = partition.and_then(|p| self.memory.lock().take(p));
        let unknown: Vec<Uuid> = match &remembered {
            Some(r) => ids
                .iter()
                .filter(|id| !r.accounts.contains_key(id))
                .copied()
                .collect(),
            None => ids.clone(),
        };
        let (read, loaded) = self.load(partition, &unknown).await?;
        let mut known = match (remembered, &read) {
            (Some(r), Some(found)) if r.stored.same_write(found) => r.accounts,
            // Another write of the position came in between: what was remembered may be
            // old. Read the rest too (a fenced batch stops below without writing).
            (Some(r), _) => {
                let rest: Vec<Uuid> = ids
                    .iter()
                    .filter(|id| r.accounts.contains_key(id))
                    .copied()
                    .collect();
                self.load(None, &rest).await?.1
            }
            (None, _) => HashMap::new(),
        };
        if let Some(position) = &batch.position {
            fence(position, read.as_ref())?;
        }
        let mut state: HashMap<Uuid, AccountDoc> = ids
            .iter()
            .filter_map(|id| known.remove(id).map(|doc| (*id, doc)))
            .collect();
        state.extend(loaded);
        let writes = fold_batch(&mut state, &batch.events).map_err(|r| SinkError::Rejected {
            index: r.index,
            reason: r.rejection.to_string(),
        })?;

        // 3. The transactions, every item checked.
        let lines = transaction_lines(&self.copy, &writes)?;
        self.bulk(&lines, "writing transactions").await?;

        // 4. Only once every transaction is in: the accounts, whose versions say so, and
        // version documents where dead letters moved an account past its document.
        let ahead: Vec<AccountVersion> = batch
            .versions
            .iter()
            .filter(|v| v.version > state.get(&v.account_id).map_or(0, |d| d.version))
            .copied()
            .collect();
        let mut lines = account_lines(&self.copy, &writes)?;
        lines.extend(self.checkpoints.version_lines(&ahead)?);
        self.bulk(&lines, "writing accounts").await?;

        // 5. The position, last and fenced.
        if let Some(position) = &batch.position {
            let stored = self
                .checkpoints
                .store_position(position, read.as_ref())
                .await?;
            if self.copy.account_cache_max > 0 {
                let mut accounts = known;
                accounts.extend(state.iter().map(|(id, doc)| (*id, doc.clone())));
                self.memory.lock().keep(
                    position.partition,
                    stored,
                    accounts,
                    &state,
                    self.copy.account_cache_max,
                );
            }
        }
        Ok(())
    }

    /// The kit's: sets the last error on the partition's position document, if it has one.
    async fn record_error(&self, partition: i32, error: &str) -> Result<(), SinkError> {
        self.checkpoints.record_error(partition, error).await
    }
}

/// The bulk lines of step 3: transaction documents (`index`, `_id` = event id).
pub fn transaction_lines(copy: &SearchCopy, writes: &Writes) -> Result<Vec<BulkLine>, SinkError> {
    let mut lines = Vec::with_capacity(writes.transactions.len());
    for (event, doc) in &writes.transactions {
        let header = json!({ "index": {
            "_index": copy.transactions_index,
            "_id": doc.event_id.to_string(),
        }});
        lines.push(BulkLine {
            ndjson: ndjson(&header, doc).map_err(|e| rejected(*event, &e))?,
            origin: Origin::Document { event: *event },
        });
    }
    Ok(lines)
}

/// The bulk lines of step 4's account documents (`index`, external version = account
/// version).
pub fn account_lines(copy: &SearchCopy, writes: &Writes) -> Result<Vec<BulkLine>, SinkError> {
    let mut lines = Vec::with_capacity(writes.accounts.len());
    for (doc, event) in writes.accounts.iter().zip(&writes.account_events) {
        let version = external_version(doc.version).map_err(|e| rejected(*event, &e))?;
        let header = json!({ "index": {
            "_index": copy.accounts_index,
            "_id": doc.account_id.to_string(),
            "version": version,
            "version_type": "external",
        }});
        lines.push(BulkLine {
            ndjson: ndjson(&header, doc).map_err(|e| rejected(*event, &e))?,
            origin: Origin::Versioned { event: *event },
        });
    }
    Ok(lines)
}

/// A document of event `index` that cannot be written at all (it cannot be serialised, or
/// its version is beyond what the engine keeps): that event's fault.
fn rejected(index: usize, reason: &str) -> SinkError {
    SinkError::Rejected {
        index,
        reason: reason.to_owned(),
    }
}
