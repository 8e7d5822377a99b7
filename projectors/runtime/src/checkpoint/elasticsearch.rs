//! Idempotent-by-version checkpoints in Elasticsearch/OpenSearch: one checkpoint index
//! beside a read model's own indices, and the request helpers a sink on it needs.
//!
//! `_bulk` is not atomic, so the position cannot be written together with the documents.
//! Instead every write can be repeated unchanged and the position moves last. A sink in
//! this mode keeps these rules (this module does the checkpoint's part of them):
//! - every read-model document is idempotent: its `_id` and content depend only on the
//!   event (document id = event id), or it is written with `version_type=external`,
//!   version = the account's version, so an older or equal write loses (a 409 there counts
//!   as done: [`Origin::Versioned`]);
//! - every item of every bulk is checked ([`check_items`]) and the position moves only
//!   after all of them succeeded;
//! - the checkpoint index holds one document per partition (`partition-<p>`,
//!   [`PartitionDoc`]: offset, last event, writer, last error) and one per account whose
//!   handled version no read-model document carries (`account-<uuid>`, [`VersionDoc`],
//!   externally versioned like the account documents, e.g. after dead letters);
//! - the position document is written last with `if_seq_no`/`if_primary_term` from the read
//!   at the start of the batch (`op_type=create` when there was none): the fence. A stored
//!   offset other than the expected one, seen at the read ([`fence`]) or at the write (a
//!   409), is [`SinkError::Fenced`], and the stored document stays the other writer's.
//!
//! A crash anywhere leaves documents that the next attempt writes again identically, and a
//! position that still names the batch's start. Nothing here uses `refresh`: the reads are
//! realtime `mget`s, so a sink sees its own writes at once; only
//! [`Checkpoints::statuses`] is a search and shows the last refresh.
//!
//! A sink's `apply` is: one realtime [`Store::mget`] of [`Checkpoints::position_doc`]
//! together with its own documents ([`position_from`] reads the position back, [`fence`]
//! compares it); its fold; [`Store::bulk`] of its documents, then of its versioned documents
//! with [`Checkpoints::version_lines`]; [`Checkpoints::store_position`]. Its `positions`,
//! `versions` and `record_error` are [`Checkpoints`]'s, and [`index_body`] creates the
//! checkpoint index.
//!
//! Errors: no answer (connection refused, timeout) or 429/5xx is [`SinkError::Transient`];
//! an index that is missing or refuses every write (another 4xx) is [`SinkError::Permanent`];
//! one document the mapping refuses (400 on its item) is [`SinkError::Rejected`] naming its
//! event, so the runtime dead-letters that event and the rest lands.

use std::collections::HashMap;
use std::ops::Range;

use chrono::{DateTime, Utc};
use elasticsearch::http::response::Response;
use elasticsearch::params::OpType;
use elasticsearch::{BulkParts, Elasticsearch, IndexParts, MgetParts, SearchParts, UpdateParts};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{clip, LAST_ERROR_MAX};
use crate::copies::PartitionStatus;
use crate::sink::{AccountVersion, PositionUpdate, SinkError, StoredPosition};

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

/// The body of `PUT <checkpoint index>`: the mapping of [`PartitionDoc`] and [`VersionDoc`]
/// (strict: a document with a field it does not know is refused, not mapped on the fly).
/// One shard: the index is small and read by id.
pub fn index_body(replicas: u32, refresh_interval_ms: u64) -> Value {
    let keyword = json!({ "type": "keyword" });
    let date = json!({ "type": "date" });
    json!({
        "settings": {
            "number_of_shards": 1,
            "number_of_replicas": replicas,
            "refresh_interval": format!("{refresh_interval_ms}ms"),
        },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "kind": keyword,
                "partition": { "type": "integer" },
                "offset": { "type": "long" },
                "event_id": keyword,
                "event_time": date,
                "writer": keyword,
                "updated_at": date,
                // Stored, never searched.
                "last_error": { "type": "keyword", "index": false, "doc_values": false },
                "last_error_at": date,
                "account_id": keyword,
                "version": { "type": "long" }
            }
        }
    })
}

/// A position document as read (or as [`Checkpoints::store_position`] wrote it), with
/// what the fence compares and swaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPosition {
    pub doc: PartitionDoc,
    seq_no: i64,
    primary_term: i64,
}

impl ReadPosition {
    /// Whether `other` is the very same write of the document (same sequence number and
    /// primary term): nobody wrote the partition's position in between, not even with the
    /// same offset. A sink that keeps state between batches of a partition may trust it
    /// only while the position it reads is the one it stored last.
    pub fn same_write(&self, other: &ReadPosition) -> bool {
        self.seq_no == other.seq_no && self.primary_term == other.primary_term
    }
}

/// What made one line of a bulk request: how its item's status is judged, and the event a
/// refusal is blamed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A read-model document made by `batch.events[event]` (idempotent by its id).
    Document { event: usize },
    /// A read-model document externally versioned with the version of
    /// `batch.events[event]`. A 409 means a newer or equal version is stored: done.
    Versioned { event: usize },
    /// A version document of the checkpoint. A 409 means done, as for versioned documents;
    /// any other refusal is the checkpoint's problem, not an event's.
    Version,
}

/// One action (header and source lines) of a bulk request.
#[derive(Debug, Clone)]
pub struct BulkLine {
    pub ndjson: Vec<u8>,
    pub origin: Origin,
}

/// One Elasticsearch/OpenSearch cluster as a sink talks to it: every answer classified as
/// a [`SinkError`] whose message names `label` (which copy of the read model, say).
#[derive(Debug, Clone)]
pub struct Store {
    client: Elasticsearch,
    label: String,
}

impl Store {
    pub fn new(client: Elasticsearch, label: impl Into<String>) -> Self {
        Self {
            client,
            label: label.into(),
        }
    }

    pub fn client(&self) -> &Elasticsearch {
        &self.client
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends `lines` in requests of at most `max_bytes` (see [`split`]) and checks every
    /// item ([`check_items`]). Returns at the first request that failed: every write is
    /// idempotent, so the caller retries the whole batch.
    pub async fn bulk(
        &self,
        lines: &[BulkLine],
        max_bytes: usize,
        what: &str,
    ) -> Result<(), SinkError> {
        for range in split(lines, max_bytes) {
            let chunk = &lines[range];
            let mut body = Vec::with_capacity(chunk.iter().map(|l| l.ndjson.len()).sum());
            for line in chunk {
                body.extend_from_slice(&line.ndjson);
            }
            let response = self
                .client
                .bulk(BulkParts::None)
                .filter_path(BULK_ANSWER)
                .body(vec![body])
                .send()
                .await;
            let (status, answer) = read(response).await.map_err(|e| self.transport(what, e))?;
            if !(200..300).contains(&status) {
                return Err(self.refused(what, status, &answer));
            }
            if answer["errors"].as_bool() == Some(false) {
                continue;
            }
            let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let origins: Vec<Origin> = chunk.iter().map(|l| l.origin).collect();
            check_items(items, &origins).map_err(|e| self.in_store(e, what))?;
        }
        Ok(())
    }

    /// Realtime `mget` of `(index, id)` pairs, in chunks: the answer's documents in request
    /// order (found or not). A document whose index is missing or unreadable fails it all
    /// ([`SinkError::Permanent`]).
    pub async fn mget(&self, docs: &[(&str, String)], what: &str) -> Result<Vec<Value>, SinkError> {
        let mut answers = Vec::with_capacity(docs.len());
        for chunk in docs.chunks(IDS_PER_MGET) {
            let body: Vec<Value> = chunk
                .iter()
                .map(|(index, id)| json!({ "_index": index, "_id": id }))
                .collect();
            let response = self
                .client
                .mget(MgetParts::None)
                .realtime(true)
                .body(json!({ "docs": body }))
                .send()
                .await;
            let (status, answer) = read(response).await.map_err(|e| self.transport(what, e))?;
            if !(200..300).contains(&status) {
                return Err(self.refused(what, status, &answer));
            }
            let got = answer["docs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            if got.len() != chunk.len() {
                return Err(SinkError::Transient(format!(
                    "{what} in {}: the engine answered {} documents for {}",
                    self.label,
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

    /// No answer at all (connection refused or reset, timeout, unreadable body): transient.
    pub fn transport(&self, what: &str, e: elasticsearch::Error) -> SinkError {
        SinkError::Transient(format!("{what} in {}: {e}", self.label))
    }

    /// An answer that refuses the whole request: 429/5xx are transient, other statuses are
    /// the index's own fault (missing, closed, blocked, bad mapping) and permanent.
    pub fn refused(&self, what: &str, status: u16, body: &Value) -> SinkError {
        let message = format!(
            "{what} in {}: HTTP {status}: {}",
            self.label,
            describe(body.get("error").unwrap_or(body))
        );
        if status == 429 || status >= 500 {
            SinkError::Transient(message)
        } else {
            SinkError::Permanent(message)
        }
    }

    fn in_store(&self, e: SinkError, what: &str) -> SinkError {
        let context = |reason: String| format!("{what} in {}: {reason}", self.label);
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
}

/// The checkpoint index of one read-model copy: positions with their fence, account
/// versions, last errors. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: Store,
    index: String,
}

impl Checkpoints {
    /// The checkpoint index `index` (created with [`index_body`]) in `store`.
    pub fn new(store: Store, index: impl Into<String>) -> Self {
        Self {
            store,
            index: index.into(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn index(&self) -> &str {
        &self.index
    }

    /// The `(index, id)` of `partition`'s position document, for a sink's own `mget`
    /// (read it back with [`position_from`]).
    pub fn position_doc(&self, partition: i32) -> (&str, String) {
        (self.index.as_str(), partition_doc_id(partition))
    }

    /// The position document of `partition`, alone, with what the fence swaps.
    pub async fn read_position(&self, partition: i32) -> Result<Option<ReadPosition>, SinkError> {
        let docs = self
            .store
            .mget(&[self.position_doc(partition)], "reading the position")
            .await?;
        Ok(docs.first().map(position_from).transpose()?.flatten())
    }

    /// Stored positions of these partitions (absent: never written), by partition.
    pub async fn positions(&self, partitions: &[i32]) -> Result<Vec<StoredPosition>, SinkError> {
        let ids = partitions.iter().copied().map(partition_doc_id).collect();
        let docs: Vec<PartitionDoc> = self.docs(ids, "reading positions").await?;
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

    /// Last handled version of each of these accounts (absent: none handled), in one
    /// `mget`. With `carriers`, an index of per-account documents (`_id` = account id, a
    /// `version` field, written with external versioning at the account's version) that
    /// double as version checkpoints: the answer is the larger of the carrier's version and
    /// the version document's (written only where no carrier holds the handled version).
    pub async fn versions(
        &self,
        accounts: &[Uuid],
        carriers: Option<&str>,
    ) -> Result<HashMap<Uuid, u64>, SinkError> {
        let per_account = if carriers.is_some() { 2 } else { 1 };
        let mut docs: Vec<(&str, String)> = Vec::with_capacity(accounts.len() * per_account);
        for account in accounts {
            if let Some(carriers) = carriers {
                docs.push((carriers, account.to_string()));
            }
            docs.push((self.index.as_str(), version_doc_id(account)));
        }
        let answers = self.store.mget(&docs, "reading versions").await?;
        let mut versions = HashMap::with_capacity(accounts.len());
        for (account, group) in accounts.iter().zip(answers.chunks(per_account)) {
            let version = group
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

    /// Bulk lines of version documents (external versioning, so an older one loses), for
    /// [`Store::bulk`] after every read-model document of the batch is in.
    pub fn version_lines(&self, versions: &[AccountVersion]) -> Result<Vec<BulkLine>, SinkError> {
        let mut lines = Vec::with_capacity(versions.len());
        for v in versions {
            let version = external_version(v.version).map_err(SinkError::Permanent)?;
            let header = json!({ "index": {
                "_index": self.index,
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

    /// Writes the position, last and fenced on `found` (what the batch's first read found;
    /// `None`: there was no document, so it is created and must not exist by then). The
    /// event and the last error are kept from `found` where the update has none. A 409 is
    /// [`SinkError::Fenced`] with the offset stored now; the stored document is untouched.
    /// Returns the document as written, with its new sequence number: what the next
    /// batch's read finds unless another writer came in between
    /// ([`ReadPosition::same_write`]).
    pub async fn store_position(
        &self,
        position: &PositionUpdate,
        found: Option<&ReadPosition>,
    ) -> Result<ReadPosition, SinkError> {
        let what = "writing the position";
        let previous = found.map(|r| &r.doc);
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
            .store
            .client
            .index(IndexParts::IndexId(&self.index, &id))
            .body(&doc);
        let request = match found {
            Some(r) => request.if_seq_no(r.seq_no).if_primary_term(r.primary_term),
            None => request.op_type(OpType::Create),
        };
        let (status, body) = read(request.send().await)
            .await
            .map_err(|e| self.store.transport(what, e))?;
        match status {
            200..=299 => match (body["_seq_no"].as_i64(), body["_primary_term"].as_i64()) {
                (Some(seq_no), Some(primary_term)) => Ok(ReadPosition {
                    doc,
                    seq_no,
                    primary_term,
                }),
                _ => Err(SinkError::Permanent(format!(
                    "{what} in {}: the engine returned no _seq_no/_primary_term",
                    self.store.label
                ))),
            },
            409 => {
                // Only to name it in the error: the fence already held.
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
            _ => Err(self.store.refused(what, status, &body)),
        }
    }

    /// Sets `last_error`/`last_error_at` on the partition's document if it has one, and
    /// changes nothing else (the offset stays). A partition never written has no position to
    /// show, and creating one would invent an offset, so that is a no-op. Long messages are
    /// cut with a trailing `…`.
    pub async fn record_error(&self, partition: i32, error: &str) -> Result<(), SinkError> {
        let what = "recording an error";
        let id = partition_doc_id(partition);
        let response = self
            .store
            .client
            .update(UpdateParts::IndexId(&self.index, &id))
            .body(json!({ "doc": {
                "last_error": clip(error, LAST_ERROR_MAX),
                "last_error_at": Utc::now(),
            }}))
            .send()
            .await;
        let (status, body) = read(response)
            .await
            .map_err(|e| self.store.transport(what, e))?;
        match status {
            200..=299 => Ok(()),
            404 if body["error"]["type"] == "document_missing_exception" => Ok(()),
            _ => Err(self.store.refused(what, status, &body)),
        }
    }

    /// Every stored position with its last error, by partition (`prismctl status`). A
    /// search, so it shows what the last refresh of the checkpoint index holds.
    pub async fn statuses(&self) -> Result<Vec<PartitionStatus>, SinkError> {
        let what = "reading positions";
        let response = self
            .store
            .client
            .search(SearchParts::Index(&[&self.index]))
            .body(json!({
                "size": PARTITIONS_MAX,
                "query": { "term": { "kind": "partition" } },
                "sort": [{ "partition": "asc" }]
            }))
            .send()
            .await;
        let (status, body) = read(response)
            .await
            .map_err(|e| self.store.transport(what, e))?;
        if !(200..300).contains(&status) {
            return Err(self.store.refused(what, status, &body));
        }
        let mut statuses = Vec::new();
        for hit in body["hits"]["hits"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let doc: PartitionDoc = serde_json::from_value(hit["_source"].clone())
                .map_err(|e| self.not_a_checkpoint(what, hit, &e))?;
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

    /// The sources of the found documents of `ids` in the checkpoint index.
    async fn docs<T: DeserializeOwned>(
        &self,
        ids: Vec<String>,
        what: &str,
    ) -> Result<Vec<T>, SinkError> {
        let docs: Vec<(&str, String)> = ids
            .into_iter()
            .map(|id| (self.index.as_str(), id))
            .collect();
        let mut found = Vec::new();
        for doc in self.store.mget(&docs, what).await? {
            if doc["found"].as_bool() != Some(true) {
                continue;
            }
            found.push(
                serde_json::from_value(doc["_source"].clone())
                    .map_err(|e| self.not_a_checkpoint(what, &doc, &e))?,
            );
        }
        Ok(found)
    }

    fn not_a_checkpoint(&self, what: &str, doc: &Value, e: &serde_json::Error) -> SinkError {
        SinkError::Permanent(format!(
            "{what} in {}: {} is not a checkpoint document: {e}",
            self.index,
            doc["_id"].as_str().unwrap_or("?")
        ))
    }
}

/// The fence at the start of a batch: the stored offset (`found`) must be the one the
/// writer expects, or another writer moved the partition ([`SinkError::Fenced`]) and
/// nothing may be written.
pub fn fence(position: &PositionUpdate, found: Option<&ReadPosition>) -> Result<(), SinkError> {
    let stored = found.map(|r| r.doc.offset);
    if stored != position.expected {
        return Err(SinkError::Fenced {
            partition: position.partition,
            stored,
        });
    }
    Ok(())
}

/// A position document as `mget` answered it (`None`: not found).
pub fn position_from(doc: &Value) -> Result<Option<ReadPosition>, SinkError> {
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
pub fn external_version(version: u64) -> Result<i64, String> {
    i64::try_from(version).map_err(|_| format!("version {version} is beyond a 64-bit long"))
}

/// One bulk action: `header` and `doc`, each on its own line.
pub fn ndjson<T: Serialize>(header: &Value, doc: &T) -> Result<Vec<u8>, String> {
    let mut out = serde_json::to_vec(header).map_err(|e| e.to_string())?;
    out.push(b'\n');
    serde_json::to_writer(&mut out, doc).map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(out)
}

/// Splits `lines` into consecutive requests of at most `max_bytes` (a single line larger
/// than that goes alone: the engine decides whether it takes it).
pub fn split(lines: &[BulkLine], max_bytes: usize) -> Vec<Range<usize>> {
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
        let versioned = matches!(origin, Origin::Versioned { .. } | Origin::Version);
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
            (400, Origin::Document { event }) | (400, Origin::Versioned { event }) => {
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
pub async fn read(
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
pub fn describe(error: &Value) -> String {
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
            Origin::Document { event: 0 },
            Origin::Versioned { event: 0 },
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
            Origin::Document { event: 0 },
            Origin::Document { event: 5 },
            Origin::Versioned { event: 3 },
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
            let origins = [Origin::Document { event: 0 }, Origin::Document { event: 1 }];
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
            check_items(&items, &[Origin::Document { event: 0 }]),
            Err(SinkError::Permanent(_))
        ));
        // A conflict on a document that is not versioned is not "done".
        let items = [item(409, "version_conflict_engine_exception")];
        assert!(matches!(
            check_items(&items, &[Origin::Document { event: 0 }]),
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

    #[test]
    fn a_moved_offset_fences_the_batch_before_it_writes() {
        let at = Utc::now();
        let read = ReadPosition {
            doc: PartitionDoc {
                kind: "partition".into(),
                partition: 2,
                offset: 41,
                event_id: None,
                event_time: None,
                writer: "other".into(),
                updated_at: at,
                last_error: None,
                last_error_at: None,
            },
            seq_no: 3,
            primary_term: 1,
        };
        let update = |expected| PositionUpdate {
            partition: 2,
            expected,
            offset: 50,
            event_id: None,
            event_time: None,
            writer: "me".into(),
        };
        assert!(fence(&update(Some(41)), Some(&read)).is_ok());
        assert!(fence(&update(None), None).is_ok());
        assert!(matches!(
            fence(&update(Some(40)), Some(&read)),
            Err(SinkError::Fenced {
                partition: 2,
                stored: Some(41)
            })
        ));
        assert!(matches!(
            fence(&update(None), Some(&read)),
            Err(SinkError::Fenced {
                partition: 2,
                stored: Some(41)
            })
        ));
        assert!(matches!(
            fence(&update(Some(41)), None),
            Err(SinkError::Fenced {
                partition: 2,
                stored: None
            })
        ));
    }

    /// Every field a checkpoint document serialises is in the mapping (the mapping is
    /// strict, so a field missing there would refuse every position write).
    #[test]
    fn the_mapping_holds_every_field_of_the_checkpoint_documents() {
        let at = Utc::now();
        let partition = PartitionDoc {
            kind: "partition".into(),
            partition: 0,
            offset: 1,
            event_id: Some(Uuid::nil()),
            event_time: Some(at),
            writer: "w".into(),
            updated_at: at,
            last_error: Some("e".into()),
            last_error_at: Some(at),
        };
        let version = VersionDoc {
            kind: "account".into(),
            account_id: Uuid::nil(),
            version: 1,
            event_id: Uuid::nil(),
        };
        let body = index_body(2, 250);
        assert_eq!(body["settings"]["number_of_shards"], 1);
        assert_eq!(body["settings"]["number_of_replicas"], 2);
        assert_eq!(body["settings"]["refresh_interval"], "250ms");
        assert_eq!(body["mappings"]["dynamic"], "strict");
        let properties = &body["mappings"]["properties"];
        for doc in [
            serde_json::to_value(&partition).expect("json"),
            serde_json::to_value(&version).expect("json"),
        ] {
            for key in doc.as_object().expect("object").keys() {
                assert!(properties.get(key).is_some(), "{key} is not mapped");
            }
        }
    }
}
