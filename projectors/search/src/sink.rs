//! The search [`Sink`]: one copy of the read model in Elasticsearch/OpenSearch, in the
//! kit's *idempotent by version* checkpoint mode.
//!
//! `_bulk` is not atomic, so the position cannot be written together with the documents.
//! Instead every write can be repeated unchanged and the position moves last:
//! - a transaction document's `_id` is its event id and its content depends only on the
//!   event and the account's unchanging fields, so writing it again changes nothing;
//! - an account document is written with `version_type=external`, version = the account's
//!   version, so an older or equal write loses (a 409 there counts as done). It is written
//!   only after every transaction document of the batch is in, so an account document at
//!   version `v` proves that the account's transactions up to `v` are stored: it is the
//!   account's version checkpoint, and costs no extra document;
//! - the checkpoint index (`<prefix>-checkpoints-g<N>`) holds one document per partition
//!   (`partition-<p>`: offset, last event, writer, last error) and one per account whose
//!   handled version is ahead of its document (`account-<uuid>`: its events were
//!   dead-lettered, so the document never reached that version). [`Sink::versions`] is the
//!   larger of the two;
//! - the position document is written last with `if_seq_no`/`if_primary_term` from the
//!   read at the start of the batch (`op_type=create` when there was none): the fence.
//!
//! [`EsSink::apply`] therefore does:
//! 1. one realtime `mget` reads the partition's position document, the batch's account
//!    documents, and probes the transactions index (both engines would create a missing
//!    index on a bulk `index`, with a dynamic mapping); a stored offset other than
//!    `batch.position.expected` is [`SinkError::Fenced`] before anything is written;
//! 2. fold the batch ([`fold_batch`]); an event not newer than its account's document was
//!    applied by an earlier attempt, so only its transaction document is made again; a
//!    fold rejection of event `i` is [`SinkError::Rejected`] with `index: i`;
//! 3. bulk: the transaction documents, in requests of at most `bulk_max_bytes`, checked
//!    item by item (see [`check_items`]);
//! 4. bulk: the account documents and the few version documents, checked the same way;
//! 5. the position document, fenced. A 409 there is [`SinkError::Fenced`].
//!
//! A crash anywhere leaves documents that the next attempt writes again identically, and
//! a position that still names the batch's start. Nothing uses `refresh`: documents become
//! searchable on the index's refresh interval; the sink's own reads are realtime.
//!
//! Errors: no answer (connection refused, timeout) or 429/5xx is [`SinkError::Transient`];
//! an index that is missing or refuses every write (other 4xx) is [`SinkError::Permanent`];
//! one document the mapping refuses (400 on its item) is [`SinkError::Rejected`] naming its
//! event, so the runtime dead-letters that event and the rest lands.
//!
//! [`EsSink::write_raw`] is steps 3 and 4's documents alone, with the same requests: the
//! raw `_bulk` ceiling `prismctl bench search` measures the projector against.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use elasticsearch::http::response::Response;
use elasticsearch::params::OpType;
use elasticsearch::{BulkParts, IndexParts, MgetParts, SearchParts, UpdateParts};
use prism_projector::checkpoint::{clip, LAST_ERROR_MAX};
use prism_projector::copies::PartitionStatus;
use prism_projector::{AccountVersion, Batch, PositionUpdate, Sink, SinkError, StoredPosition};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::copies::SearchCopy;
use crate::fold::{fold_batch, AccountDoc, Writes};

/// What a bulk answer needs to hold for [`check_items`]: one entry per item, in order
/// (every item has a status), with its error when it has one. The rest (shard counts,
/// sequence numbers, results) is left on the server instead of parsed per item.
const BULK_ANSWER: &[&str] = &[
    "errors",
    "items.*.status",
    "items.*.error",
    "items.*._index",
    "items.*._id",
];
/// Most ids per `mget` request.
const IDS_PER_MGET: usize = 1_000;
/// Most partition documents a status listing reads (far more than any topic has).
const PARTITIONS_MAX: usize = 10_000;

/// The position document of one partition (`partition-<p>` in the checkpoint index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDoc {
    /// Always `partition`.
    pub kind: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<DateTime<Utc>>,
    pub writer: String,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<DateTime<Utc>>,
}

/// An account's last handled version (`account-<uuid>` in the checkpoint index; its
/// external version is the same number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDoc {
    /// Always `account`.
    pub kind: String,
    pub account_id: Uuid,
    pub version: u64,
    pub event_id: Uuid,
}

/// The id of a partition's position document.
pub fn partition_doc_id(partition: i32) -> String {
    format!("partition-{partition}")
}

/// The id of an account's version document.
pub fn version_doc_id(account: &Uuid) -> String {
    format!("account-{account}")
}

/// A position document as read, with what the fence compares and swaps.
#[derive(Debug, Clone)]
struct ReadPosition {
    doc: PartitionDoc,
    seq_no: i64,
    primary_term: i64,
}

/// What made one line of a bulk request: the event a refusal is blamed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A transaction document, made by `batch.events[event]`.
    Transaction { event: usize },
    /// An account document, carrying the version of `batch.events[event]`. A 409 means a
    /// newer or equal version is stored: done.
    Account { event: usize },
    /// An account version document (checkpoint). A 409 means done, as for accounts.
    Version,
}

/// One action (header and source lines) of a bulk request.
#[derive(Debug, Clone)]
pub struct BulkLine {
    pub ndjson: Vec<u8>,
    pub origin: Origin,
}

/// The search sink on one copy.
#[derive(Debug, Clone)]
pub struct EsSink {
    copy: SearchCopy,
}

impl EsSink {
    pub fn new(copy: SearchCopy) -> Self {
        Self { copy }
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
        for range in split(lines, self.copy.bulk_max_bytes) {
            let chunk = &lines[range];
            let mut body = Vec::with_capacity(chunk.iter().map(|l| l.ndjson.len()).sum());
            for line in chunk {
                body.extend_from_slice(&line.ndjson);
            }
            let response = self
                .copy
                .client
                .bulk(BulkParts::None)
                .filter_path(BULK_ANSWER)
                .body(vec![body])
                .send()
                .await;
            let (status, answer) = read(response)
                .await
                .map_err(|e| transport(what, &self.copy, e))?;
            if !(200..300).contains(&status) {
                return Err(refused(what, &self.copy, status, &answer));
            }
            if answer["errors"].as_bool() == Some(false) {
                continue;
            }
            let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let origins: Vec<Origin> = chunk.iter().map(|l| l.origin).collect();
            check_items(items, &origins).map_err(|e| in_copy(e, what, &self.copy))?;
        }
        Ok(())
    }

    /// The position document of `partition`, alone (to name the stored offset when the
    /// fence's compare-and-set failed).
    async fn read_position(&self, partition: i32) -> Result<Option<ReadPosition>, SinkError> {
        let id = partition_doc_id(partition);
        let docs = self
            .mget(
                &[(self.copy.checkpoints_index.as_str(), id)],
                "reading the position",
            )
            .await?;
        Ok(docs.first().map(position_from).transpose()?.flatten())
    }

    /// Realtime `mget` of `(index, id)` pairs, in chunks: the answer's documents in request
    /// order (found or not). A document whose index is missing or unreadable fails it all
    /// ([`SinkError::Permanent`]).
    async fn mget(&self, docs: &[(&str, String)], what: &str) -> Result<Vec<Value>, SinkError> {
        let mut answers = Vec::with_capacity(docs.len());
        for chunk in docs.chunks(IDS_PER_MGET) {
            let body: Vec<Value> = chunk
                .iter()
                .map(|(index, id)| json!({ "_index": index, "_id": id }))
                .collect();
            let response = self
                .copy
                .client
                .mget(MgetParts::None)
                .realtime(true)
                .body(json!({ "docs": body }))
                .send()
                .await;
            let (status, answer) = read(response)
                .await
                .map_err(|e| transport(what, &self.copy, e))?;
            if !(200..300).contains(&status) {
                return Err(refused(what, &self.copy, status, &answer));
            }
            let got = answer["docs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            if got.len() != chunk.len() {
                return Err(SinkError::Transient(format!(
                    "{what} in copy {}: the engine answered {} documents for {}",
                    self.copy.number,
                    got.len(),
                    chunk.len()
                )));
            }
            for doc in got {
                if let Some(error) = doc.get("error") {
                    return Err(SinkError::Permanent(format!(
                        "{what} in {}: {}",
                        doc["_index"].as_str().unwrap_or("?"),
                        describe(error)
                    )));
                }
            }
            answers.extend(got.iter().cloned());
        }
        Ok(answers)
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
            docs.push((
                self.copy.checkpoints_index.as_str(),
                partition_doc_id(partition),
            ));
        }
        docs.extend(
            ids.iter()
                .map(|id| (self.copy.accounts_index.as_str(), id.to_string())),
        );
        let answers = self.mget(&docs, "loading the batch's state").await?;
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

    /// The sources of the found documents of `ids` in the checkpoint index.
    async fn checkpoint_docs<T: serde::de::DeserializeOwned>(
        &self,
        ids: Vec<String>,
        what: &str,
    ) -> Result<Vec<T>, SinkError> {
        let index = self.copy.checkpoints_index.as_str();
        let docs: Vec<(&str, String)> = ids.into_iter().map(|id| (index, id)).collect();
        let mut found = Vec::new();
        for doc in self.mget(&docs, what).await? {
            if doc["found"].as_bool() != Some(true) {
                continue;
            }
            found.push(serde_json::from_value(doc["_source"].clone()).map_err(|e| {
                SinkError::Permanent(format!(
                    "{what} in {index}: {} is not a checkpoint document: {e}",
                    doc["_id"].as_str().unwrap_or("?")
                ))
            })?);
        }
        Ok(found)
    }

    /// Step 5: the position document, fenced on what step 1 read.
    async fn store_position(
        &self,
        position: &PositionUpdate,
        fence: Option<&ReadPosition>,
    ) -> Result<(), SinkError> {
        let what = "writing the position";
        let previous = fence.map(|r| &r.doc);
        let doc = PartitionDoc {
            kind: "partition".into(),
            partition: position.partition,
            offset: position.offset,
            event_id: position.event_id.or(previous.and_then(|p| p.event_id)),
            event_time: position.event_time.or(previous.and_then(|p| p.event_time)),
            writer: position.writer.clone(),
            updated_at: Utc::now(),
            last_error: previous.and_then(|p| p.last_error.clone()),
            last_error_at: previous.and_then(|p| p.last_error_at),
        };
        let id = partition_doc_id(position.partition);
        let request = self
            .copy
            .client
            .index(IndexParts::IndexId(&self.copy.checkpoints_index, &id))
            .body(doc);
        let request = match fence {
            Some(r) => request.if_seq_no(r.seq_no).if_primary_term(r.primary_term),
            None => request.op_type(OpType::Create),
        };
        let (status, body) = read(request.send().await)
            .await
            .map_err(|e| transport(what, &self.copy, e))?;
        match status {
            200..=299 => Ok(()),
            409 => {
                let stored = self
                    .read_position(position.partition)
                    .await
                    .ok()
                    .flatten()
                    .map(|r| r.doc.offset);
                Err(SinkError::Fenced {
                    partition: position.partition,
                    stored,
                })
            }
            _ => Err(refused(what, &self.copy, status, &body)),
        }
    }
}

#[async_trait]
impl Sink for EsSink {
    async fn positions(&self, partitions: &[i32]) -> Result<Vec<StoredPosition>, SinkError> {
        let ids = partitions.iter().copied().map(partition_doc_id).collect();
        let docs: Vec<PartitionDoc> = self.checkpoint_docs(ids, "reading positions").await?;
        let mut positions: Vec<StoredPosition> = docs
            .into_iter()
            .map(|doc| StoredPosition {
                partition: doc.partition,
                offset: doc.offset,
                event_id: doc.event_id,
                event_time: doc.event_time,
            })
            .collect();
        positions.sort_by_key(|p| p.partition);
        Ok(positions)
    }

    /// The larger of the account document's version and its version document's (written
    /// only when dead letters moved the handled version past the document), in one `mget`.
    async fn versions(&self, accounts: &[Uuid]) -> Result<HashMap<Uuid, u64>, SinkError> {
        let mut docs: Vec<(&str, String)> = Vec::with_capacity(accounts.len() * 2);
        for account in accounts {
            docs.push((self.copy.accounts_index.as_str(), account.to_string()));
            docs.push((
                self.copy.checkpoints_index.as_str(),
                version_doc_id(account),
            ));
        }
        let answers = self.mget(&docs, "reading versions").await?;
        let mut versions = HashMap::with_capacity(accounts.len());
        for (account, pair) in accounts.iter().zip(answers.chunks(2)) {
            let version = pair
                .iter()
                .filter(|doc| doc["found"].as_bool() == Some(true))
                .map(|doc| {
                    doc["_source"]["version"].as_u64().ok_or_else(|| {
                        SinkError::Permanent(format!(
                            "reading versions in {}: {} has no version",
                            doc["_index"].as_str().unwrap_or("?"),
                            doc["_id"].as_str().unwrap_or("?")
                        ))
                    })
                })
                .collect::<Result<Vec<u64>, SinkError>>()?
                .into_iter()
                .max();
            if let Some(version) = version {
                versions.insert(*account, version);
            }
        }
        Ok(versions)
    }

    async fn apply(&self, batch: &Batch) -> Result<(), SinkError> {
        // 1 and 2. One read: the fence, the accounts, the transactions index is there.
        let mut ids: Vec<Uuid> = batch.events.iter().map(|e| e.account_id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let partition = batch.position.as_ref().map(|p| p.partition);
        let (read, mut state) = self.load(partition, &ids).await?;
        if let Some(position) = &batch.position {
            let stored = read.as_ref().map(|r| r.doc.offset);
            if stored != position.expected {
                return Err(SinkError::Fenced {
                    partition: position.partition,
                    stored,
                });
            }
        }
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
        lines.extend(version_lines(&self.copy, &ahead)?);
        self.bulk(&lines, "writing accounts").await?;

        // 5. The position, last and fenced.
        if let Some(position) = &batch.position {
            self.store_position(position, read.as_ref()).await?;
        }
        Ok(())
    }

    /// Sets `last_error`/`last_error_at` on the partition's document if it has one (a
    /// partition never written has no position to show, and creating one would invent an
    /// offset). Long messages are cut with a trailing `…`.
    async fn record_error(&self, partition: i32, error: &str) -> Result<(), SinkError> {
        let what = "recording an error";
        let id = partition_doc_id(partition);
        let response = self
            .copy
            .client
            .update(UpdateParts::IndexId(&self.copy.checkpoints_index, &id))
            .body(json!({ "doc": {
                "last_error": clip(error, LAST_ERROR_MAX),
                "last_error_at": Utc::now(),
            }}))
            .send()
            .await;
        let (status, body) = read(response)
            .await
            .map_err(|e| transport(what, &self.copy, e))?;
        match status {
            200..=299 => Ok(()),
            404 if body["error"]["type"] == "document_missing_exception" => Ok(()),
            _ => Err(refused(what, &self.copy, status, &body)),
        }
    }
}

/// Every stored position of `copy` with its last error, by partition (`prismctl status`).
/// A search, so it shows what the last refresh of the checkpoint index holds.
pub async fn partition_statuses(copy: &SearchCopy) -> anyhow::Result<Vec<PartitionStatus>> {
    use anyhow::Context as _;
    let response = copy
        .client
        .search(SearchParts::Index(&[&copy.checkpoints_index]))
        .body(json!({
            "size": PARTITIONS_MAX,
            "query": { "term": { "kind": "partition" } },
            "sort": [{ "partition": "asc" }]
        }))
        .send()
        .await;
    let (status, body) = read(response)
        .await
        .with_context(|| format!("reading positions in {}", copy.checkpoints_index))?;
    if !(200..300).contains(&status) {
        anyhow::bail!(
            "reading positions in {}: HTTP {status}: {}",
            copy.checkpoints_index,
            describe(&body["error"])
        );
    }
    let mut statuses = Vec::new();
    for hit in body["hits"]["hits"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let doc: PartitionDoc = serde_json::from_value(hit["_source"].clone())
            .with_context(|| format!("a position document in {}", copy.checkpoints_index))?;
        statuses.push(PartitionStatus {
            partition: doc.partition,
            offset: doc.offset,
            event_id: doc.event_id,
            event_time: doc.event_time,
            writer: doc.writer,
            updated_at: doc.updated_at,
            last_error: doc.last_error,
            last_error_at: doc.last_error_at,
        });
    }
    Ok(statuses)
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
            origin: Origin::Transaction { event: *event },
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
            origin: Origin::Account { event: *event },
        });
    }
    Ok(lines)
}

/// Step 4's version documents (external versioning), for accounts whose handled version
/// is ahead of their document.
fn version_lines(
    copy: &SearchCopy,
    versions: &[AccountVersion],
) -> Result<Vec<BulkLine>, SinkError> {
    let mut lines = Vec::with_capacity(versions.len());
    for v in versions {
        let version = external_version(v.version).map_err(SinkError::Permanent)?;
        let header = json!({ "index": {
            "_index": copy.checkpoints_index,
            "_id": version_doc_id(&v.account_id),
            "version": version,
            "version_type": "external",
        }});
        let doc = VersionDoc {
            kind: "account".into(),
            account_id: v.account_id,
            version: v.version,
            event_id: v.event_id,
        };
        lines.push(BulkLine {
            ndjson: ndjson(&header, &doc).map_err(SinkError::Permanent)?,
            origin: Origin::Version,
        });
    }
    Ok(lines)
}

/// A position document as `mget` answered it (`None`: not found).
fn position_from(doc: &Value) -> Result<Option<ReadPosition>, SinkError> {
    if doc["found"].as_bool() != Some(true) {
        return Ok(None);
    }
    let index = doc["_index"].as_str().unwrap_or("?");
    let parsed: PartitionDoc = serde_json::from_value(doc["_source"].clone()).map_err(|e| {
        SinkError::Permanent(format!(
            "reading the position in {index}: not a position document: {e}"
        ))
    })?;
    let (Some(seq_no), Some(primary_term)) =
        (doc["_seq_no"].as_i64(), doc["_primary_term"].as_i64())
    else {
        return Err(SinkError::Permanent(format!(
            "reading the position in {index}: the engine returned no _seq_no/_primary_term"
        )));
    };
    Ok(Some(ReadPosition {
        doc: parsed,
        seq_no,
        primary_term,
    }))
}

/// The engines keep external versions as a positive `long`.
fn external_version(version: u64) -> Result<i64, String> {
    i64::try_from(version).map_err(|_| format!("version {version} is beyond a 64-bit long"))
}

fn ndjson<T: Serialize>(header: &Value, doc: &T) -> Result<Vec<u8>, String> {
    let mut out = serde_json::to_vec(header).map_err(|e| e.to_string())?;
    out.push(b'\n');
    serde_json::to_writer(&mut out, doc).map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(out)
}

fn rejected(index: usize, reason: &str) -> SinkError {
    SinkError::Rejected {
        index,
        reason: reason.to_owned(),
    }
}

/// Splits `lines` into consecutive requests of at most `max_bytes` (a single line larger
/// than that goes alone: the engine decides whether it takes it).
pub fn split(lines: &[BulkLine], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut size) = (0, 0usize);
    for (i, line) in lines.iter().enumerate() {
        let len = line.ndjson.len();
        if i > start && size.saturating_add(len) > max_bytes {
            ranges.push(start..i);
            start = i;
            size = 0;
        }
        size = size.saturating_add(len);
    }
    if start < lines.len() {
        ranges.push(start..lines.len());
    }
    ranges
}

/// Checks a bulk answer's `items` (in request order) against what made each line.
/// Success: 2xx, or 409 on an externally versioned document (a newer or equal version is
/// stored). Otherwise, most urgent first: any 429/5xx item (or a missing item) is
/// [`SinkError::Transient`] (retry the whole batch: every write is idempotent); any other
/// failure that is not one document's fault (a 4xx other than 400, or a 400 on a version
/// document) is [`SinkError::Permanent`]; a 400 on a document (the mapping refuses it) is
/// [`SinkError::Rejected`] naming the earliest such event.
pub fn check_items(items: &[Value], origins: &[Origin]) -> Result<(), SinkError> {
    let mut transient: Option<String> = None;
    let mut permanent: Option<String> = None;
    let mut rejected: Option<(usize, String)> = None;
    if items.len() != origins.len() {
        transient = Some(format!(
            "the engine answered {} items for {} actions",
            items.len(),
            origins.len()
        ));
    }
    for (item, origin) in items.iter().zip(origins) {
        let result = item
            .as_object()
            .and_then(|o| o.values().next())
            .unwrap_or(&Value::Null);
        let status = result["status"].as_u64().unwrap_or(0);
        let versioned = matches!(origin, Origin::Account { .. } | Origin::Version);
        if (200..300).contains(&status) || (status == 409 && versioned) {
            continue;
        }
        let reason = format!(
            "{} {}: HTTP {status}: {}",
            result["_index"].as_str().unwrap_or("?"),
            result["_id"].as_str().unwrap_or("?"),
            describe(&result["error"])
        );
        match (status, origin) {
            (429, _) | (500..=599, _) | (0, _) => {
                transient.get_or_insert(reason);
            }
            (400, Origin::Transaction { event }) | (400, Origin::Account { event }) => {
                if rejected.as_ref().is_none_or(|(first, _)| event < first) {
                    rejected = Some((*event, reason));
                }
            }
            _ => {
                permanent.get_or_insert(reason);
            }
        }
    }
    if let Some(reason) = transient {
        return Err(SinkError::Transient(reason));
    }
    if let Some(reason) = permanent {
        return Err(SinkError::Permanent(reason));
    }
    if let Some((index, reason)) = rejected {
        return Err(SinkError::Rejected { index, reason });
    }
    Ok(())
}

/// A response's status and JSON body (`Null` when the body is empty, e.g. `HEAD`).
pub(crate) async fn read(
    response: Result<Response, elasticsearch::Error>,
) -> Result<(u16, Value), elasticsearch::Error> {
    let response = response?;
    let status = response.status_code().as_u16();
    let text = response.text().await?;
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        // A body that is not JSON (a proxy's error page) is kept as text for the message.
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, body))
}

/// `type: reason` of an engine error object (or the text of a non-JSON body).
pub(crate) fn describe(error: &Value) -> String {
    match error {
        Value::Object(_) => {
            let kind = error["type"].as_str().unwrap_or("error");
            let reason = error["reason"].as_str().unwrap_or("");
            let cause = error["caused_by"]["reason"].as_str();
            match cause {
                Some(cause) => format!("{kind}: {reason} ({cause})"),
                None => format!("{kind}: {reason}"),
            }
        }
        Value::String(s) => clip(s, 300),
        Value::Null => "no details".into(),
        other => clip(&other.to_string(), 300),
    }
}

/// No answer at all (connection refused or reset, timeout, unreadable body): transient.
fn transport(what: &str, copy: &SearchCopy, e: elasticsearch::Error) -> SinkError {
    SinkError::Transient(format!("{what} in copy {}: {e}", copy.number))
}

/// An answer that refuses the whole request: 429/5xx are transient, other statuses are the
/// index's own fault (missing, closed, blocked, bad mapping) and permanent.
fn refused(what: &str, copy: &SearchCopy, status: u16, body: &Value) -> SinkError {
    let message = format!(
        "{what} in copy {}: HTTP {status}: {}",
        copy.number,
        describe(body.get("error").unwrap_or(body))
    );
    if status == 429 || status >= 500 {
        SinkError::Transient(message)
    } else {
        SinkError::Permanent(message)
    }
}

fn in_copy(e: SinkError, what: &str, copy: &SearchCopy) -> SinkError {
    let context = |reason: String| format!("{what} in copy {}: {reason}", copy.number);
    match e {
        SinkError::Transient(r) => SinkError::Transient(context(r)),
        SinkError::Permanent(r) => SinkError::Permanent(context(r)),
        SinkError::Rejected { index, reason } => SinkError::Rejected {
            index,
            reason: context(reason),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(len: usize) -> BulkLine {
        BulkLine {
            ndjson: vec![b'x'; len],
            origin: Origin::Version,
        }
    }

    #[test]
    fn bulk_requests_are_split_at_the_byte_limit_and_never_empty() {
        let lines: Vec<BulkLine> = [40, 40, 30, 100, 10].into_iter().map(line).collect();
        assert_eq!(split(&lines, 100), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(split(&lines, 1_000), vec![0..5]);
        assert!(split(&[], 100).is_empty());
        // A line over the limit goes alone.
        assert_eq!(split(&[line(500)], 100), vec![0..1]);
    }

    fn item(status: u64, error: &str) -> Value {
        let mut result = json!({ "_index": "i", "_id": "d", "status": status });
        if !error.is_empty() {
            result["error"] = json!({ "type": error, "reason": "why" });
        }
        json!({ "index": result })
    }

    #[test]
    fn a_version_conflict_on_a_versioned_document_counts_as_done() {
        let items = [
            item(201, ""),
            item(409, "version_conflict_engine_exception"),
            item(409, "version_conflict_engine_exception"),
        ];
        let origins = [
            Origin::Transaction { event: 0 },
            Origin::Account { event: 0 },
            Origin::Version,
        ];
        assert!(check_items(&items, &origins).is_ok());
    }

    #[test]
    fn a_document_the_mapping_refuses_names_the_earliest_event() {
        let items = [
            item(201, ""),
            item(400, "mapper_parsing_exception"),
            item(400, "mapper_parsing_exception"),
        ];
        let origins = [
            Origin::Transaction { event: 0 },
            Origin::Transaction { event: 5 },
            Origin::Account { event: 3 },
        ];
        match check_items(&items, &origins) {
            Err(SinkError::Rejected { index, reason }) => {
                assert_eq!(index, 3);
                assert!(reason.contains("mapper_parsing_exception"), "{reason}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[test]
    fn overload_and_server_errors_are_transient_and_win_over_the_rest() {
        for status in [429, 500, 503] {
            let items = [
                item(400, "mapper_parsing_exception"),
                item(status, "es_rejected_execution_exception"),
            ];
            let origins = [
                Origin::Transaction { event: 0 },
                Origin::Transaction { event: 1 },
            ];
            assert!(matches!(
                check_items(&items, &origins),
                Err(SinkError::Transient(_))
            ));
        }
        // Fewer items than actions: nothing can be trusted, try again.
        assert!(matches!(
            check_items(&[item(201, "")], &[Origin::Version, Origin::Version]),
            Err(SinkError::Transient(_))
        ));
    }

    #[test]
    fn an_index_level_refusal_is_permanent_not_one_event_s_fault() {
        let items = [item(404, "index_not_found_exception")];
        assert!(matches!(
            check_items(&items, &[Origin::Transaction { event: 0 }]),
            Err(SinkError::Permanent(_))
        ));
        // A conflict on a document that is not versioned is not "done".
        let items = [item(409, "version_conflict_engine_exception")];
        assert!(matches!(
            check_items(&items, &[Origin::Transaction { event: 0 }]),
            Err(SinkError::Permanent(_))
        ));
        // A bad version document is the checkpoint's problem, not an event's.
        let items = [item(400, "mapper_parsing_exception")];
        assert!(matches!(
            check_items(&items, &[Origin::Version]),
            Err(SinkError::Permanent(_))
        ));
    }

    #[test]
    fn external_versions_beyond_a_long_are_refused() {
        assert_eq!(external_version(7), Ok(7));
        assert!(external_version(u64::MAX).is_err());
    }
}
