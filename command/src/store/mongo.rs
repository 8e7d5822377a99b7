//! The MongoDB backend: MongoDB 7 and FerretDB 1.24, which has no transactions.
//!
//! One document per commit (a command's events), so an append is one single-document
//! insert — atomic on every server without a transaction.
//!
//! # Collections
//! - `commits`: `_id` = the first event's id (a UUIDv7 string), `seq` (the global order, see
//!   below), `account_id`, `first_version`, `last_version`, `events: [{id, type, source, time,
//!   time_us, version, correlation_id?, causation_id?, schema_version, data}]`, `published`,
//!   and `idempotency_key` / `request_hash` only when the commit carries a key. `time_us` (i64
//!   microseconds) is what is read back; `time` (a BSON date, milliseconds) is for people.
//!   Integers in `data` are always stored as BSON int64, so an `i64` amount comes back as it
//!   went in.
//! - `snapshots`: insert-only, `_id` = `<account id>:<version, 20 digits>`; the newest wins on
//!   load and older ones are deleted once a newer one is stored. FerretDB's updates are
//!   read-modify-write without a compare-and-set, so "replace unless newer" as an upsert
//!   could let an older snapshot overwrite a newer one under concurrency; inserts cannot.
//! - `responses`: `_id` = the idempotency key; the first insert wins.
//!
//! # Indexes on `commits`
//! - `account_version`: unique `(account_id, first_version)`, the optimistic-concurrency
//!   guard. With the check that the account's last commit ends at `expected_version`
//!   (existence of a version never changes once true), two writers can never both append
//!   after the same version, and nobody can append past the end of the stream.
//! - `idempotency_key`: unique and `sparse`, so commits without a key never collide.
//!   FerretDB accepts `sparse` and ignores it (`msg_createindexes.go`: "Ignore for now"), but
//!   its unique indexes map a missing field to SQL `NULL` and `NULL`s are distinct, so the
//!   effect is the same; the contract tests check it on the running server.
//!   (`partialFilterExpression` is refused there with `NotImplemented`.)
//! - `seq`: unique. `seq` is `_id` unless that would sort before the account's previous
//!   commit (two instances whose clocks disagree, or two ids minted in the same millisecond
//!   by two processes); then it is `<previous seq's id part>~<n, 20 digits>`, which sorts
//!   right after the previous commit. So `seq` order is version order within every account,
//!   and `read_all` pages by it. A position is `<seq>:<index in commit>`.
//! - `outbox`: the commits not yet published (below), indexes `seq` and `(account_id, seq)`.
//!
//! # Append
//! Normally one `insert_one`. Proving that `expected_version` is the end of a commit needs a
//! read, except when this process already saw that commit (it appended or loaded it): that
//! fact never stops being true, so [`MongoStore`] remembers each account's last commit and
//! reads only when it does not know (first append after a start, or another instance wrote
//! in between — then the read finds no commit ending there, or the insert collides, and
//! the answer is a conflict either way).
//!
//! A batch of commits (group commit, [`EventStore::append_batch`]) is one `insertMany` with
//! `ordered: false`: still one document per commit, so each lands whole or not at all
//! without a transaction, and a duplicate key (version or idempotency key) fails its own
//! document while the server goes on with the others; each write error names its
//! document's index, which maps it back to its commit. The same contract on MongoDB 7 and
//! FerretDB 1.24; FerretDB writes the whole batch in one PostgreSQL transaction and, if any
//! document fails, inserts them again one by one, reporting each duplicate by its index
//! (`msg_insert.go`); any other failure there fails the whole command, which this store
//! reports as "unavailable" for every commit of the batch (outcome unknown).
//!
//! # Outbox
//! A collection `outbox` of *intents*: before a commit is inserted, a copy of its document
//! (without the idempotency fields, with `written_at_ms`) goes into `outbox` under the same
//! `_id` — one `insertMany` per batch of commits. Once Kafka acknowledged all of a commit's
//! events, `mark_published` deletes its intent. So the relay never reads `commits` on its
//! hot path: the sweep and the per-account checks read `outbox`, whose size is the backlog
//! (on FerretDB every filtered read is a scan of the whole collection, so reading
//! `commits`, as a `published` flag on each commit needed, costs the store's size; measured
//! at 70–470 ms per read at 94 k commits).
//!
//! Intent first, commit second, because there are no transactions on FerretDB: a crash
//! between the two leaves an intent without a commit (harmless), never a commit without an
//! intent (unpublished for good). An intent alone therefore does not prove its commit:
//! - the writer knows (it remembers the commits it stored and the inserts it is waiting
//!   for), and drops the intents of commits refused for good;
//! - anybody else (another instance, or after a restart) looks the account's commits up
//!   from the lowest version in doubt (one read of `commits` per such account: a scan on
//!   FerretDB, an index range on MongoDB; only after a crash, a failed insert, or when two
//!   instances write one account). An intent whose versions another commit holds can never
//!   be stored and is dropped; one still not stored after 10 minutes is dropped too. That
//!   is the one timing assumption: a commit insert does not reach the server 10 minutes
//!   after its intent was written (writers insert right after it, and give up on a store
//!   that does not answer within seconds).
//!
//! `unpublished` returns the stored commits among the intents, whole, in `seq` order (the
//! first one even if it alone is larger than `limit`); every unpublished stored commit has
//! its intent, so nothing stored below a listed event is missing. `mark_published` deletes a
//! commit's intent only when every one of its events is listed, so a partly acknowledged
//! commit is published again rather than partly lost. Stores of the earlier format (a
//! `published: false` flag on each commit) get their intents at `init`.
//!
//! # FerretDB 1.24 (PostgreSQL backend), measured
//! - Top-level scalar equalities become SQL (`_jsonb->'k' @> v`); ranges, `$in`, sorts and
//!   limits-with-a-filter run in Go after fetching every match (`query.go`). FerretDB's
//!   btree indexes are on `_jsonb->'k'`, which `@>` cannot use, so on their own even an
//!   `_id` lookup reads the whole table; with `ferretdb_postgres` set, `init` adds GIN
//!   indexes that serve those equalities (`ferretdb.rs`, `FERRETDB_LOOKUPS`): 455 ms →
//!   1 ms for one `_id` at 94 k commits. So every query here leads with an indexed equality
//!   (`account_id`, `idempotency_key`, `_id`) that keeps the rows shipped to Go few, and
//!   the append path avoids reading at all when it can (above). `read_all` fetches and
//!   sorts the whole collection for each page (use big pages there); `scan`, which
//!   `verify` reads, is one unsorted pass.
//! - Updates and deletes first run the same scan, then write by `_id` (an index lookup),
//!   one document per statement. Hence the outbox: a delete there scans only the backlog.
//! - `events: {$not: {$elemMatch: {id: {$nin: ids}}}}` also matches documents that do have
//!   an unlisted event (wrong), so `mark_published` checks completeness here, not in the
//!   filter.
//! - A `createIndexes` of several indexes that already exist panics the connection; a single
//!   existing one is accepted. `init` creates the missing ones one by one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use futures::future::join_all;
use futures::stream::{BoxStream, StreamExt};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, Database, IndexModel};
use prism_events::{AccountId, Envelope, RawEvent};
use prism_platform::secret::Dsn;
use serde::Deserialize;
use uuid::Uuid;

use super::ferretdb;
use super::{
    check_claim, check_commit, first_claims, first_of_each_key, refused, AppendError, Commit,
    EventStore, IdempotencyMark, IdempotentCommit, Position, Snapshot, StoreError, StoredResponse,
};

const COMMITS: &str = "commits";
const SNAPSHOTS: &str = "snapshots";
const RESPONSES: &str = "responses";

/// Named leases (`_id` the name; `holder`, `expires_at`): the relay's sweep lease.
const LEASES: &str = "leases";

/// The duplicate-key error code (MongoDB and FerretDB).
const DUPLICATE_KEY: i32 = 11000;

/// The error code of creating a collection that exists (MongoDB and FerretDB).
const NAMESPACE_EXISTS: i32 = 48;

/// Separates a `seq` from the index of an event in its commit, in a [`Position`]. Sorts
/// below `~`, so position order is (seq, index) order.
const POSITION_SEPARATOR: char = ':';

/// Separates the id part of a derived `seq` from its counter; sorts above every character
/// of a hyphenated UUID.
const SEQ_SEPARATOR: char = '~';

/// Most accounts whose last commit [`MongoStore`] remembers; past it, it forgets them all.
const TAILS_MAX: usize = 100_000;

/// The outbox collection: one intent per commit, written before the commit (see the module
/// documentation, "Outbox").
const OUTBOX: &str = "outbox";

/// An intent whose commit is not stored this long after it was written is dropped: its
/// writer failed before inserting the commit (a crash, an unknown outcome that was a
/// failure). Writers insert the commit right after the intent, so this is far beyond any
/// append; see the module documentation for the one assumption this makes.
const INTENT_HORIZON_MS: i64 = 10 * 60 * 1_000;

/// Most commit ids [`OutboxMemory::stored`] holds; past it, it forgets them all (which only
/// costs a lookup per account later).
const STORED_MAX: usize = 1_000_000;

/// Size of a generation of [`OutboxMemory::published`]: far more commits than are
/// published while one read of the outbox is being resolved.
const PUBLISHED_GENERATION: usize = 100_000;

/// The event store on a MongoDB-protocol server.
#[derive(Debug, Clone)]
pub struct MongoStore {
    database: Database,
    /// Per account, the last commit this process saw: its last version and its `seq`.
    /// "A commit of account A ends at version V with seq S" stays true forever once true
    /// (nothing is ever deleted), so an append at exactly V needs no read to prove that V is
    /// the end of a commit — on FerretDB, where every read scans the collection, that read
    /// is most of an append's cost. Anything else (no entry, another version) reads.
    tails: Arc<Mutex<HashMap<AccountId, Tail>>>,
    /// What this process knows about the outbox intents it wrote.
    outbox: Arc<Mutex<OutboxMemory>>,
    /// FerretDB's PostgreSQL, where `init` adds the lookup indexes FerretDB's queries can
    /// use (see `ferretdb.rs`); `None` on MongoDB.
    ferretdb_postgres: Option<Dsn>,
}

/// The fields each collection is looked up by equality on a hot path, which on FerretDB
/// need a lookup index of their own (see `ferretdb.rs`): `load`, the append's proof of its
/// predecessor and the outbox lookups (`account_id`), the idempotency checks
/// (`idempotency_key`, the responses' `_id`), the start's migration check (`published`),
/// `load_snapshot`, and the relay's check of one account's backlog (the outbox's
/// `account_id`, a read per account while a large backlog is worked off).
const FERRETDB_LOOKUPS: &[(&str, &str)] = &[
    (COMMITS, "account_id"),
    (COMMITS, "idempotency_key"),
    (COMMITS, "published"),
    (RESPONSES, "_id"),
    (SNAPSHOTS, "account_id"),
    (OUTBOX, "account_id"),
];

/// The outcome of this process's own appends, as far as the outbox cares. An intent is
/// written before its commit, so an intent alone does not say the commit is stored; the
/// writer knows, anybody else must look the commit up (a read of `commits`, which FerretDB
/// runs as a scan: these two sets keep it off the relay's hot path).
#[derive(Debug, Default)]
struct OutboxMemory {
    /// Ids of commits this process stored whose intents are still in the outbox.
    stored: HashSet<String>,
    /// Ids of commits whose intents this process wrote and whose insert has not answered
    /// yet: not stored as far as anybody can tell, and settled in a moment by this process.
    in_flight: HashSet<String>,
    /// Ids of commits whose intents this process deleted as published, newest generation
    /// first: a read of the outbox that began before the delete may still hold them, and
    /// must neither publish them again nor look them up. Two generations of at most
    /// [`PUBLISHED_GENERATION`] ids each.
    published: [HashSet<String>; 2],
}

impl OutboxMemory {
    fn was_published(&self, id: &str) -> bool {
        self.published
            .iter()
            .any(|generation| generation.contains(id))
    }

    fn published(&mut self, id: String) {
        if self.published[0].len() >= PUBLISHED_GENERATION {
            self.published[1] = std::mem::take(&mut self.published[0]);
        }
        self.stored.remove(&id);
        self.published[0].insert(id);
    }
}

#[derive(Debug, Clone)]
struct Tail {
    last_version: u64,
    seq: String,
}

impl MongoStore {
    pub fn new(client: Client, database: &str) -> Self {
        Self {
            database: client.database(database),
            tails: Arc::default(),
            outbox: Arc::default(),
            ferretdb_postgres: None,
        }
    }

    /// With FerretDB's PostgreSQL (`[mongodb] ferretdb_postgres_url`): `init` adds the
    /// lookup indexes there when the server is FerretDB.
    pub fn with_ferretdb_postgres(mut self, url: Option<Dsn>) -> Self {
        self.ferretdb_postgres = url;
        self
    }

    /// On FerretDB, adds the lookup indexes its queries can use, or warns that every lookup
    /// reads a whole collection. Nothing on MongoDB.
    async fn tune_for_ferretdb(&self) -> Result<(), StoreError> {
        if !ferretdb::is_ferretdb(&self.database).await? {
            return Ok(());
        }
        let Some(url) = &self.ferretdb_postgres else {
            tracing::warn!(
                "the MongoDB API is FerretDB and [mongodb] ferretdb_postgres_url is not set: \
                 every lookup reads its whole collection, so commands slow down as the store grows"
            );
            return Ok(());
        };
        let created =
            ferretdb::add_lookup_indexes(url, self.database.name(), FERRETDB_LOOKUPS).await?;
        if created > 0 {
            tracing::info!(
                created,
                "added lookup indexes to FerretDB's PostgreSQL tables"
            );
        }
        Ok(())
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, OutboxMemory> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the outbox intents of commits about to be inserted (their documents), before
    /// the insert: a commit is never stored without its intent, so a crash right after the
    /// insert cannot leave it unpublished. On error nothing was inserted yet and the caller
    /// gives up (unavailable). One round trip for a whole batch. Answers, per commit, whether
    /// its intent is new: an intent that was there already (the same commit sent again) may
    /// belong to a stored commit, so it is never dropped on a refusal.
    async fn write_intents(&self, commits: &[&Document]) -> Result<Vec<bool>, StoreError> {
        let written_at = chrono::Utc::now().timestamp_millis();
        let mut intents = Vec::with_capacity(commits.len());
        let mut ids = Vec::with_capacity(commits.len());
        for commit in commits {
            let mut intent = (*commit).clone();
            intent.remove("idempotency_key");
            intent.remove("request_hash");
            intent.insert("written_at_ms", written_at);
            ids.push(document_id(&intent));
            intents.push(intent);
        }
        self.memory().in_flight.extend(ids.iter().cloned());
        let written = match self
            .outbox_entries()
            .insert_many(intents)
            .ordered(false)
            .await
        {
            Ok(_) => Ok(vec![true; ids.len()]),
            // Written already (the same commit sent again): still its intent.
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(many)
                    if many.write_concern_error.is_none()
                        && many
                            .write_errors
                            .iter()
                            .flatten()
                            .all(|w| w.code == DUPLICATE_KEY) =>
                {
                    let mut fresh = vec![true; ids.len()];
                    for error in many.write_errors.iter().flatten() {
                        if let Some(flag) = fresh.get_mut(error.index) {
                            *flag = false;
                        }
                    }
                    Ok(fresh)
                }
                _ => Err(unavailable(e)),
            },
        };
        if written.is_err() {
            self.settle(&ids, None);
        }
        written
    }

    /// Records the outcome of inserting the commits `ids` whose intents this process wrote:
    /// `Some(true)` stored, `Some(false)` refused for good (their intents are dropped by
    /// [`MongoStore::drop_intents`]), `None` unknown (a lookup decides later).
    fn settle(&self, ids: &[String], stored: Option<bool>) {
        let mut memory = self.memory();
        if stored == Some(true) && memory.stored.len() + ids.len() > STORED_MAX {
            memory.stored.clear();
        }
        for id in ids {
            memory.in_flight.remove(id);
            if stored == Some(true) {
                memory.stored.insert(id.clone());
            }
        }
    }

    /// Drops the intents of commits that were refused (conflict, taken key): they can never
    /// be stored under these ids. Best effort: one left behind is found and dropped by the
    /// relay's lookup (see [`MongoStore::resolve`]).
    async fn drop_intents(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        self.settle(ids, Some(false));
        if let Err(e) = self
            .outbox_entries()
            .delete_many(doc! { "_id": { "$in": ids } })
            .await
        {
            tracing::warn!(error = %e, intents = ids.len(), "dropping the outbox intents of refused commits failed; the relay drops them later");
        }
    }

    /// Benchmarks only: drops every outbox intent as if the relay had published their
    /// commits long ago, so that a store filled through [`MongoStore::insert_unchecked`]
    /// stands for a large history with no backlog. Those commits never reach Kafka.
    pub async fn discard_backlog(&self) -> Result<(), StoreError> {
        self.outbox_entries().drop().await.map_err(unavailable)?;
        // Its indexes go with it: back as `init` makes them.
        self.init().await
    }

    fn outbox_entries(&self) -> Collection<Document> {
        self.database.collection(OUTBOX)
    }

    /// The `seq` of the account's commit that ends at `version`, if this process saw it.
    fn known_seq(&self, account_id: AccountId, version: u64) -> Option<String> {
        let tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
        tails
            .get(&account_id)
            .filter(|tail| tail.last_version == version)
            .map(|tail| tail.seq.clone())
    }

    /// Remembers that a commit of the account ends at `last_version` with `seq`.
    fn remember(&self, account_id: AccountId, last_version: u64, seq: &str) {
        let mut tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
        if tails.len() >= TAILS_MAX && !tails.contains_key(&account_id) {
            tails.clear();
        }
        let tail = tails.entry(account_id).or_insert_with(|| Tail {
            last_version: 0,
            seq: String::new(),
        });
        if tail.last_version < last_version {
            tail.last_version = last_version;
            seq.clone_into(&mut tail.seq);
        }
    }

    /// Inserts exactly the document [`EventStore::append`] would write, without the
    /// expected-version check and without idempotency: the raw append ceiling that
    /// `prismctl bench command` compares the command path with.
    pub async fn insert_unchecked(&self, events: &[Envelope]) -> Result<(), StoreError> {
        let first = events.first().ok_or_else(|| refused("-", "no events"))?;
        check_commit(
            first.account_id,
            first.account_version.saturating_sub(1),
            events,
        )?;
        let id = first.id.to_string();
        let document = commit_document(&id, &id, events, None)?;
        // Its outbox intent first, as an append writes it.
        let fresh = self.write_intents(&[&document]).await?;
        let ids = [id];
        let inserted = self.commits().insert_one(document).await;
        self.after_insert(&ids, &fresh, |_| match &inserted {
            Ok(_) => Some(true),
            Err(e) if error_code(e) == Some(DUPLICATE_KEY) => Some(false),
            Err(_) => None,
        })
        .await;
        inserted.map(|_| ()).map_err(unavailable)
    }

    /// Settles the intents of commits `ids` after their insert: `outcome(i)` is whether the
    /// `i`th was stored (`None`: unknown). A refused commit's intent is dropped when this
    /// insert wrote it (`fresh`): then no commit with its id can be waiting for publishing (an
    /// unpublished commit's intent would have been found), only a refused one or one
    /// published already.
    async fn after_insert(
        &self,
        ids: &[String],
        fresh: &[bool],
        outcome: impl Fn(usize) -> Option<bool>,
    ) {
        let mut stored = Vec::new();
        let mut unknown = Vec::new();
        let mut refused = Vec::new();
        for (index, id) in ids.iter().enumerate() {
            match outcome(index) {
                Some(true) => stored.push(id.clone()),
                Some(false) if fresh.get(index).copied().unwrap_or(false) => {
                    refused.push(id.clone())
                }
                Some(false) | None => unknown.push(id.clone()),
            }
        }
        self.settle(&stored, Some(true));
        self.settle(&unknown, None);
        self.drop_intents(&refused).await;
    }

    fn commits(&self) -> Collection<Document> {
        self.database.collection(COMMITS)
    }

    fn snapshots(&self) -> Collection<Document> {
        self.database.collection(SNAPSHOTS)
    }

    fn responses(&self) -> Collection<Document> {
        self.database.collection(RESPONSES)
    }

    fn leases(&self) -> Collection<Document> {
        self.database.collection(LEASES)
    }

    /// The `seq` of the account's commit that ends at `version`, if that commit exists.
    async fn seq_of_commit_ending_at(
        &self,
        account_id: AccountId,
        version: u64,
    ) -> Result<Option<String>, StoreError> {
        let version = to_i64(version)?;
        // Equalities first (pushed down to SQL on FerretDB); the range and the sort give
        // MongoDB index bounds on `account_version` and stop at the first entry.
        let found = self
            .commits()
            .find_one(doc! {
                "account_id": account_id.to_string(),
                "last_version": version,
                "first_version": { "$lte": version },
            })
            .sort(doc! { "account_id": 1, "first_version": -1 })
            .projection(doc! { "seq": 1 })
            .await
            .map_err(unavailable)?;
        match found {
            None => Ok(None),
            Some(document) => match document.get_str("seq") {
                Ok(seq) => Ok(Some(seq.to_owned())),
                Err(e) => Err(corrupt(&document, format!("seq: {e}"))),
            },
        }
    }

    /// Where `commit` goes: its `seq` and its document, or `None` when no commit of the
    /// account ends at its expected version (refused: a conflict or a taken key).
    async fn place(&self, commit: &Commit) -> Result<Option<(String, Document)>, StoreError> {
        check_commit(commit.account_id, commit.expected_version, &commit.events)?;
        let id = commit.events[0].id.to_string();
        let previous = if commit.expected_version == 0 {
            None
        } else if let Some(seq) = self.known_seq(commit.account_id, commit.expected_version) {
            Some(seq)
        } else {
            match self
                .seq_of_commit_ending_at(commit.account_id, commit.expected_version)
                .await?
            {
                Some(seq) => Some(seq),
                None => return Ok(None),
            }
        };
        let seq = previous.map_or_else(|| id.clone(), |previous| seq_after(&previous, &id));
        let document = commit_document(&id, &seq, &commit.events, commit.idempotency.as_ref())?;
        Ok(Some((seq, document)))
    }

    /// Why an append was refused once a guard fired: the key, if it is taken; otherwise a
    /// version conflict.
    async fn refusal(
        &self,
        account_id: AccountId,
        expected: u64,
        idempotency: Option<&IdempotencyMark>,
    ) -> AppendError {
        if let Some(mark) = idempotency {
            match self
                .commits()
                .find_one(doc! { "idempotency_key": &mark.key })
                .projection(doc! { "_id": 1 })
                .await
            {
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

    /// Commits matching `filter` in `seq` order, at most `limit` of them.
    async fn commits_in_order(
        &self,
        filter: Document,
        limit: usize,
    ) -> Result<Vec<StoredCommit>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let documents: Vec<Document> = self
            .commits()
            .find(filter)
            .sort(doc! { "seq": 1 })
            .limit(limit)
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        documents.into_iter().map(StoredCommit::parse).collect()
    }
}

/// An outbox intent as read back: the commit it announces and when it was written.
#[derive(Debug)]
struct Intent {
    commit: StoredCommit,
    first_version: u64,
    written_at_ms: i64,
}

impl Intent {
    fn parse(document: Document) -> Result<Self, StoreError> {
        let first_version = document
            .get_i64("first_version")
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| corrupt(&document, "outbox intent: first_version".into()))?;
        // Missing only on intents a future format might write without it: never too old.
        let written_at_ms = document.get_i64("written_at_ms").unwrap_or(i64::MAX);
        Ok(Self {
            commit: StoredCommit::parse(document)?,
            first_version,
            written_at_ms,
        })
    }
}

/// What an intent says about its commit, once [`MongoStore::resolve`] looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntentState {
    /// The commit is stored: publish it.
    Stored,
    /// This process's insert has not answered yet (it settles the intent itself).
    InFlight,
    /// Another writer's (or one from before a restart): look the commit up.
    Unknown,
}

impl MongoStore {
    /// The intents whose commits are stored, in `seq` order (version order per account).
    ///
    /// Every stored, unpublished commit has its intent (written before it, dropped only
    /// after it was published), so whatever is stored below a returned commit is returned
    /// too: the relay's "nothing earlier is unpublished" holds. Intents this process settled
    /// need no read. The others are looked up in `commits`, once per account, from the
    /// lowest version in doubt; an intent whose place is taken by another commit can never
    /// be stored and is dropped, as is one still not stored after [`INTENT_HORIZON_MS`].
    async fn resolve(&self, intents: Vec<Intent>) -> Result<Vec<StoredCommit>, StoreError> {
        let mut accounts: BTreeMap<String, Vec<(Intent, IntentState)>> = BTreeMap::new();
        {
            let memory = self.memory();
            for intent in intents {
                let id = &intent.commit.id;
                if memory.was_published(id) {
                    // Deleted since this read of the outbox: on Kafka already.
                    continue;
                }
                let state = if memory.stored.contains(id) {
                    IntentState::Stored
                } else if memory.in_flight.contains(id) {
                    IntentState::InFlight
                } else {
                    IntentState::Unknown
                };
                accounts
                    .entry(intent.commit.account_id.clone())
                    .or_default()
                    .push((intent, state));
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut eligible = Vec::new();
        let mut dead = Vec::new();
        for (account, intents) in accounts {
            let top_stored = intents
                .iter()
                .filter(|(_, state)| *state == IntentState::Stored)
                .map(|(intent, _)| intent.first_version)
                .max();
            // In doubt: another writer's intents, and this process's unanswered inserts when
            // anything is looked up anyway or one lies below a stored commit (it then lost).
            let any_unknown = intents.iter().any(|(_, s)| *s == IntentState::Unknown);
            let in_doubt = |intent: &Intent, state: IntentState| match state {
                IntentState::Stored => false,
                IntentState::Unknown => true,
                IntentState::InFlight => {
                    any_unknown || top_stored.is_some_and(|top| intent.first_version < top)
                }
            };
            let from = intents
                .iter()
                .filter(|(intent, state)| in_doubt(intent, *state))
                .map(|(intent, _)| intent.first_version)
                .min();
            let found = match from {
                Some(from) => Some(self.lookup(&account, from).await?),
                None => None,
            };
            for (intent, state) in intents {
                let stored = match (state, &found) {
                    (IntentState::Stored, _) => true,
                    (_, Some((ids, _))) if ids.contains(&intent.commit.id) => {
                        let mut memory = self.memory();
                        if memory.stored.len() < STORED_MAX {
                            memory.stored.insert(intent.commit.id.clone());
                        }
                        true
                    }
                    // This process settles its own intents.
                    (IntentState::InFlight, _) => false,
                    (_, found) => {
                        let end = found.as_ref().map_or(0, |(_, end)| *end);
                        if intent.first_version <= end
                            || now_ms.saturating_sub(intent.written_at_ms) > INTENT_HORIZON_MS
                        {
                            dead.push(intent.commit.id.clone());
                        }
                        false
                    }
                };
                if stored {
                    eligible.push(intent.commit);
                }
            }
        }
        if !dead.is_empty() {
            tracing::info!(
                intents = dead.len(),
                "dropping outbox intents whose commits were never stored"
            );
            self.outbox_entries()
                .delete_many(doc! { "_id": { "$in": &dead } })
                .await
                .map_err(unavailable)?;
        }
        eligible.sort_by(|a, b| a.seq.cmp(&b.seq));
        Ok(eligible)
    }

    /// The ids of the account's stored commits that end at `from_version` or later, and the
    /// account's last stored version (0 when none ends that late). A read of `commits`: an
    /// index range on MongoDB, a scan on FerretDB — only for intents this process did not
    /// write itself.
    async fn lookup(
        &self,
        account_id: &str,
        from_version: u64,
    ) -> Result<(HashSet<String>, u64), StoreError> {
        tracing::debug!(
            account_id,
            from_version,
            "looking up commits of outbox intents this process did not write"
        );
        let documents: Vec<Document> = self
            .commits()
            .find(doc! {
                "account_id": account_id,
                "last_version": { "$gte": to_i64(from_version)? },
            })
            .projection(doc! { "_id": 1, "last_version": 1 })
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        let mut ids = HashSet::with_capacity(documents.len());
        let mut end = 0;
        for document in documents {
            let last = document
                .get_i64("last_version")
                .ok()
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| corrupt(&document, "last_version".into()))?;
            end = end.max(last);
            ids.insert(document_id(&document));
        }
        Ok((ids, end))
    }

    /// Stores written before the outbox collection flagged every commit `published: false`
    /// until the relay set it: gives those commits their intents, then drops the flag. Run
    /// by `init`; idempotent (an intent already there stays), so two instances starting
    /// together both finish it. A scan of `commits` on FerretDB, once per start.
    async fn migrate_published_flags(&self) -> Result<(), StoreError> {
        let legacy: Vec<Document> = self
            .commits()
            .find(doc! { "published": false })
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        if legacy.is_empty() {
            return Ok(());
        }
        tracing::info!(
            commits = legacy.len(),
            "moving unpublished commits of the old format to the outbox"
        );
        let written_at = chrono::Utc::now().timestamp_millis();
        let intents: Vec<Document> = legacy
            .into_iter()
            .map(|mut intent| {
                intent.remove("idempotency_key");
                intent.remove("request_hash");
                intent.remove("published");
                intent.insert("written_at_ms", written_at);
                intent
            })
            .collect();
        match self
            .outbox_entries()
            .insert_many(intents)
            .ordered(false)
            .await
        {
            Ok(_) => {}
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(many)
                    if many.write_concern_error.is_none()
                        && many
                            .write_errors
                            .iter()
                            .flatten()
                            .all(|w| w.code == DUPLICATE_KEY) => {}
                _ => return Err(unavailable(e)),
            },
        }
        self.commits()
            .update_many(
                doc! { "published": false },
                doc! { "$unset": { "published": "" } },
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Creates the indexes whose names the collection does not have yet.
async fn create_missing_indexes<T: Send + Sync>(
    collection: &Collection<T>,
    indexes: impl IntoIterator<Item = IndexModel>,
) -> Result<(), StoreError> {
    let existing: HashSet<String> = match collection.list_index_names().await {
        Ok(names) => names.into_iter().collect(),
        // A collection that does not exist yet has no indexes.
        Err(e) if matches!(*e.kind, ErrorKind::Command(ref c) if c.code == 26) => HashSet::new(),
        Err(e) => return Err(unavailable(e)),
    };
    let missing: Vec<IndexModel> = indexes
        .into_iter()
        .filter(|index| {
            index
                .options
                .as_ref()
                .and_then(|o| o.name.as_ref())
                .is_none_or(|name| !existing.contains(name))
        })
        .collect();
    // One at a time: FerretDB 1.24 accepts a single index that exists already (an init
    // racing another instance's), but not several in one `createIndexes`.
    for index in missing {
        collection.create_index(index).await.map_err(unavailable)?;
    }
    Ok(())
}

#[async_trait]
impl EventStore for MongoStore {
    async fn init(&self) -> Result<(), StoreError> {
        let unique = |name: &str| {
            IndexOptions::builder()
                .name(name.to_owned())
                .unique(true)
                .build()
        };
        let commits = [
            IndexModel::builder()
                .keys(doc! { "account_id": 1, "first_version": 1 })
                .options(unique("account_version"))
                .build(),
            IndexModel::builder()
                .keys(doc! { "seq": 1 })
                .options(unique("seq"))
                .build(),
            IndexModel::builder()
                .keys(doc! { "idempotency_key": 1 })
                .options(
                    IndexOptions::builder()
                        .name("idempotency_key".to_owned())
                        .unique(true)
                        .sparse(true)
                        .build(),
                )
                .build(),
        ];
        // The relay reads the outbox in `seq` order, whole or one account's part; a
        // commit's intent is fetched and deleted by `_id`.
        let named = |name: &str| IndexOptions::builder().name(name.to_owned()).build();
        let outbox = [
            IndexModel::builder()
                .keys(doc! { "seq": 1 })
                .options(named("seq"))
                .build(),
            IndexModel::builder()
                .keys(doc! { "account_id": 1, "seq": 1 })
                .options(named("account_seq"))
                .build(),
        ];
        let snapshots = [IndexModel::builder()
            .keys(doc! { "account_id": 1, "version": -1 })
            .options(
                IndexOptions::builder()
                    .name("account_version".to_owned())
                    .build(),
            )
            .build()];
        // Only the missing ones, one by one: FerretDB 1.24 panics (and drops the
        // connection) on a `createIndexes` of several indexes that already exist.
        create_missing_indexes(&self.commits(), commits).await?;
        create_missing_indexes(&self.outbox_entries(), outbox).await?;
        create_missing_indexes(&self.snapshots(), snapshots).await?;
        // `responses` has no index but `_id`'s, so nothing created it yet; FerretDB needs
        // its table for the lookup index.
        match self.database.create_collection(RESPONSES).await {
            Ok(()) => {}
            Err(e) if matches!(*e.kind, ErrorKind::Command(ref c) if c.code == NAMESPACE_EXISTS) => {
            }
            Err(e) => return Err(unavailable(e)),
        }
        self.tune_for_ferretdb().await?;
        self.migrate_published_flags().await
    }

    async fn append(
        &self,
        account_id: AccountId,
        expected_version: u64,
        events: &[Envelope],
        idempotency: Option<&IdempotencyMark>,
    ) -> Result<(), AppendError> {
        check_commit(account_id, expected_version, events)?;
        let id = events[0].id.to_string();
        let previous = if expected_version == 0 {
            None
        } else if let Some(seq) = self.known_seq(account_id, expected_version) {
            Some(seq)
        } else {
            match self
                .seq_of_commit_ending_at(account_id, expected_version)
                .await?
            {
                Some(seq) => Some(seq),
                None => {
                    return Err(self
                        .refusal(account_id, expected_version, idempotency)
                        .await)
                }
            }
        };
        let seq = previous.map_or_else(|| id.clone(), |previous| seq_after(&previous, &id));
        let document = commit_document(&id, &seq, events, idempotency)?;
        // The outbox intent goes first (see the module documentation, "Outbox").
        let fresh = self.write_intents(&[&document]).await?;
        let inserted = self.commits().insert_one(document).await;
        let ids = [id];
        self.after_insert(&ids, &fresh, |_| match &inserted {
            Ok(_) => Some(true),
            Err(e) if error_code(e) == Some(DUPLICATE_KEY) => Some(false),
            Err(_) => None,
        })
        .await;
        match inserted {
            Ok(_) => {
                let last = expected_version + events.len() as u64;
                self.remember(account_id, last, &seq);
                Ok(())
            }
            Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => Err(self
                .refusal(account_id, expected_version, idempotency)
                .await),
            Err(e) => Err(unavailable(e).into()),
        }
    }

    async fn append_batch(&self, commits: &[Commit]) -> Vec<Result<(), AppendError>> {
        if let [commit] = commits {
            if commit.claim.is_none() {
                return vec![commit.append_alone(self).await];
            }
        }
        // Each commit's place after its predecessor, proven as in `append` (a read only for
        // accounts this process has not seen end at the expected version; those reads run
        // side by side). A commit refused here is not sent. A second claim on a key of the
        // batch loses to the first.
        let first_claims = first_claims(commits);
        let placed = join_all(commits.iter().zip(&first_claims).map(
            |(commit, first)| async move {
                if !first {
                    return Err(AppendError::KeyClaimed);
                }
                check_claim(commit)?;
                Ok(self.place(commit).await?)
            },
        ))
        .await;
        let mut results: Vec<Option<Result<(), AppendError>>> = Vec::with_capacity(commits.len());
        let mut refusals = Vec::new();
        let mut ready: Vec<(usize, String, Document)> = Vec::new();
        for (index, placed) in placed.into_iter().enumerate() {
            match placed {
                Ok(Some((seq, document))) => {
                    results.push(None);
                    ready.push((index, seq, document));
                }
                Ok(None) => {
                    results.push(None);
                    refusals.push(index);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        // In account order: FerretDB writes a batch in one PostgreSQL transaction, and two
        // batches meeting on the same accounts then wait for each other instead of
        // deadlocking.
        ready.sort_by_key(|(index, _, _)| commits[*index].account_id);
        // The claims of every commit still in the running (refused ones too: a claim
        // stands whatever its commit's fate) and the outbox intents of the ready ones (see
        // the module documentation, "Outbox") go side by side: one round trip for both.
        let claimed: Vec<usize> = (0..commits.len())
            .filter(|&i| results[i].is_none() && commits[i].claim.is_some())
            .collect();
        let claims: Vec<StoredResponse> = claimed
            .iter()
            .filter_map(|&i| commits[i].claim.clone())
            .collect();
        let intents: Vec<&Document> = ready.iter().map(|(_, _, document)| document).collect();
        let (stored_claims, written) = futures::join!(
            async {
                if claims.is_empty() {
                    Vec::new()
                } else {
                    self.save_responses(&claims).await
                }
            },
            async {
                if intents.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.write_intents(&intents).await
                }
            }
        );
        for (&index, stored) in claimed.iter().zip(stored_claims) {
            match stored {
                Ok(true) => {}
                Ok(false) => results[index] = Some(Err(AppendError::KeyClaimed)),
                Err(e) => results[index] = Some(Err(e.into())),
            }
        }
        refusals.retain(|&index| results[index].is_none());
        let mut fresh = Vec::new();
        let mut sent: Vec<(usize, String)> = Vec::new();
        let mut documents: Vec<Document> = Vec::new();
        let mut withdrawn: Vec<String> = Vec::new();
        match written {
            Ok(flags) => {
                for ((index, seq, document), flag) in ready.into_iter().zip(flags) {
                    if results[index].is_some() {
                        // Its claim was not stored: never inserted; its intent goes if new.
                        if flag {
                            withdrawn.push(document_id(&document));
                        } else {
                            self.settle(&[document_id(&document)], None);
                        }
                        continue;
                    }
                    fresh.push(flag);
                    sent.push((index, seq));
                    documents.push(document);
                }
            }
            // Without the intents nothing is inserted: every commit still in the running is
            // unavailable.
            Err(e) => {
                let error = AppendError::from(e);
                for (index, _, _) in &ready {
                    if results[*index].is_none() {
                        results[*index] = Some(Err(error.clone()));
                    }
                }
            }
        }
        self.drop_intents(&withdrawn).await;
        let ids: Vec<String> = documents.iter().map(document_id).collect();
        if !documents.is_empty() {
            // Unordered: a duplicate key fails its own document and the server goes on
            // with the others. One document per commit, so each lands whole or not at all.
            let inserted = self.commits().insert_many(documents).ordered(false).await;
            let failed: HashMap<usize, i32> = match inserted {
                Ok(_) => HashMap::new(),
                Err(e) => match e.kind.as_ref() {
                    ErrorKind::InsertMany(many) if many.write_concern_error.is_none() => many
                        .write_errors
                        .iter()
                        .flatten()
                        .map(|w| (w.index, w.code))
                        .collect(),
                    // A network error or an unmet write concern: whether each landed is
                    // unknown, so every commit sent gets the error.
                    _ => {
                        let error = AppendError::from(unavailable(e));
                        for (index, _) in &sent {
                            results[*index] = Some(Err(error.clone()));
                        }
                        HashMap::new()
                    }
                },
            };
            self.after_insert(&ids, &fresh, |position| {
                let index = sent.get(position).map(|(index, _)| *index)?;
                if results.get(index).is_some_and(Option::is_some) {
                    return None; // outcome unknown
                }
                match failed.get(&position) {
                    None => Some(true),
                    Some(&DUPLICATE_KEY) => Some(false),
                    Some(_) => None,
                }
            })
            .await;
            for (position, (index, seq)) in sent.iter().enumerate() {
                if results[*index].is_some() {
                    continue;
                }
                let commit = &commits[*index];
                match failed.get(&position) {
                    None => {
                        let last = commit.expected_version + commit.events.len() as u64;
                        self.remember(commit.account_id, last, seq);
                        results[*index] = Some(Ok(()));
                    }
                    Some(&DUPLICATE_KEY) => refusals.push(*index),
                    Some(code) => {
                        results[*index] = Some(Err(AppendError::Store(StoreError::Unavailable(
                            format!("mongodb: insert of a commit failed with code {code}"),
                        ))));
                    }
                }
            }
        }
        // Why the refused ones were refused: a taken key, else a version conflict.
        let reasons = join_all(refusals.iter().map(|&index| {
            let commit = &commits[index];
            self.refusal(
                commit.account_id,
                commit.expected_version,
                commit.idempotency.as_ref(),
            )
        }))
        .await;
        for (index, reason) in refusals.into_iter().zip(reasons) {
            results[index] = Some(Err(reason));
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Unavailable("mongodb: a commit got no answer".into()).into())
                })
            })
            .collect()
    }

    async fn load(
        &self,
        account_id: AccountId,
        after_version: u64,
    ) -> Result<Vec<Envelope>, StoreError> {
        let after = to_i64(after_version)?;
        let documents: Vec<Document> = self
            .commits()
            .find(doc! {
                "account_id": account_id.to_string(),
                "last_version": { "$gt": after },
            })
            .sort(doc! { "account_id": 1, "first_version": 1 })
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        let mut events = Vec::new();
        for document in documents {
            let commit = StoredCommit::parse(document)?;
            if let Some(last) = commit.events.last() {
                if let Ok(last_version) = u64::try_from(last.version) {
                    self.remember(account_id, last_version, &commit.seq);
                }
            }
            for raw in commit.raw_events()? {
                if raw.account_version > after_version {
                    events.push(decode(raw)?);
                }
            }
        }
        Ok(events)
    }

    async fn read_all(
        &self,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<Vec<(Position, Envelope)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (filter, resume) = match after {
            None => (doc! {}, None),
            Some(position) => {
                let (seq, index) = parse_position(position)?;
                (doc! { "seq": { "$gte": &seq } }, Some((seq, index)))
            }
        };
        // Every commit holds at least one event; the resumed one may hold none still unread.
        let commits = self
            .commits_in_order(filter, limit.saturating_add(1))
            .await?;
        let mut out = Vec::with_capacity(limit);
        for commit in commits {
            let seq = commit.seq.clone();
            for (index, raw) in commit.raw_events()?.into_iter().enumerate() {
                if let Some((resume_seq, resume_index)) = &resume {
                    if seq == *resume_seq && index <= *resume_index {
                        continue;
                    }
                }
                if out.len() == limit {
                    return Ok(out);
                }
                out.push((position(&seq, index), decode(raw)?));
            }
        }
        Ok(out)
    }

    /// One unfiltered, unsorted read of `commits` (a plain table scan on FerretDB, a
    /// collection scan on MongoDB), streamed in batches of about `page` commits: a commit
    /// is never updated nor moved, so each comes once.
    fn scan(&self, page: usize) -> BoxStream<'_, Result<Vec<Envelope>, StoreError>> {
        let commits = self.commits();
        let batch = u32::try_from(page.max(1)).unwrap_or(u32::MAX);
        futures::stream::once(async move {
            commits
                .find(doc! {})
                .batch_size(batch)
                .await
                .map_err(unavailable)
        })
        .map_ok(|cursor| cursor.map_err(unavailable))
        .try_flatten()
        .and_then(|document| async move {
            StoredCommit::parse(document)?
                .raw_events()?
                .into_iter()
                .map(decode)
                .collect()
        })
        .boxed()
    }

    async fn load_snapshot(&self, account_id: AccountId) -> Result<Option<Snapshot>, StoreError> {
        let found = self
            .snapshots()
            .find_one(doc! { "account_id": account_id.to_string() })
            .sort(doc! { "account_id": 1, "version": -1 })
            .await
            .map_err(unavailable)?;
        let Some(document) = found else {
            return Ok(None);
        };
        let version = document
            .get_i64("version")
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| corrupt(&document, "snapshot version".into()))?;
        let state = document
            .get("state")
            .cloned()
            .ok_or_else(|| corrupt(&document, "snapshot without state".into()))
            .and_then(|state| bson_to_json(state).map_err(|e| corrupt(&document, e)))?;
        Ok(Some(Snapshot {
            account_id,
            version,
            state,
        }))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let account = snapshot.account_id.to_string();
        let version = to_i64(snapshot.version)?;
        let state = json_to_bson(&snapshot.state).map_err(|e| refused(&account, &e))?;
        let inserted = self
            .snapshots()
            .insert_one(doc! {
                "_id": format!("{account}:{:020}", snapshot.version),
                "account_id": &account,
                "version": version,
                "state": state,
            })
            .await;
        match inserted {
            Ok(_) => {}
            // This very version is stored already: the same state.
            Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => {}
            Err(e) => return Err(unavailable(e)),
        }
        // Older snapshots are never read again; a newer one, if any, stays.
        self.snapshots()
            .delete_many(doc! { "account_id": &account, "version": { "$lt": version } })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn unpublished(
        &self,
        account_id: Option<AccountId>,
        limit: usize,
    ) -> Result<Vec<RawEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The outbox holds only what is not published yet, so reading it whole costs the
        // backlog, never the store's size (FerretDB scans and sorts it; MongoDB walks the
        // `seq` or `account_seq` index).
        let filter = match account_id {
            Some(account_id) => doc! { "account_id": account_id.to_string() },
            None => doc! {},
        };
        let documents: Vec<Document> = self
            .outbox_entries()
            .find(filter)
            .sort(doc! { "seq": 1 })
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        let mut intents = documents
            .into_iter()
            .map(Intent::parse)
            .collect::<Result<Vec<_>, _>>()?;
        // Only the accounts of the oldest `limit` events' intents are resolved (a lookup
        // each for another writer's): a big backlog is worked off page by page, and each
        // of these accounts comes with all its intents, so nothing below is left out.
        let mut accounts = HashSet::new();
        let mut events = 0;
        for intent in &intents {
            if events >= limit {
                break;
            }
            events += intent.commit.events.len();
            accounts.insert(intent.commit.account_id.clone());
        }
        intents.retain(|intent| accounts.contains(&intent.commit.account_id));
        // Whole commits only (a commit is marked published as a whole); the first one even
        // if it alone holds more than `limit` events, so a big commit cannot stall the relay.
        let mut out = Vec::new();
        for commit in self.resolve(intents).await? {
            let events = commit.raw_events()?;
            if !out.is_empty() && out.len() + events.len() > limit {
                break;
            }
            out.extend(events);
        }
        Ok(out)
    }

    async fn mark_published(&self, event_ids: &[Uuid]) -> Result<(), StoreError> {
        if event_ids.is_empty() {
            return Ok(());
        }
        let ids: HashSet<String> = event_ids.iter().map(Uuid::to_string).collect();
        let listed: Vec<&String> = ids.iter().collect();
        // An intent's `_id` is its commit's, which is the commit's first event id. Only
        // commits all of whose events are listed are done: a partly published commit is
        // published again later (a duplicate on Kafka) rather than partly lost. The check is
        // made here, not in the filter: FerretDB 1.24 matches `events: {$not: {$elemMatch:
        // {id: {$nin: …}}}}` on documents that do have an unlisted event.
        let candidates: Vec<Document> = self
            .outbox_entries()
            .find(doc! { "_id": { "$in": &listed } })
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        let mut complete = Vec::new();
        for document in candidates {
            let commit = StoredCommit::parse(document)?;
            if commit.events.iter().all(|e| ids.contains(&e.id)) {
                complete.push(commit.id);
            }
        }
        if complete.is_empty() {
            return Ok(());
        }
        // Deleting is the whole write: on MongoDB an `_id` index lookup per intent, on
        // FerretDB a scan of the (small) outbox and a delete by `_id`.
        self.outbox_entries()
            .delete_many(doc! { "_id": { "$in": &complete } })
            .await
            .map_err(unavailable)?;
        let mut memory = self.memory();
        for id in complete {
            memory.published(id);
        }
        Ok(())
    }

    async fn find_idempotent(&self, key: &str) -> Result<Option<IdempotentCommit>, StoreError> {
        let found = self
            .commits()
            .find_one(doc! { "idempotency_key": key })
            .await
            .map_err(unavailable)?;
        let Some(document) = found else {
            return Ok(None);
        };
        let commit = StoredCommit::parse(document)?;
        let request_hash = commit
            .request_hash
            .clone()
            .ok_or_else(|| StoreError::Corrupt {
                id: commit.id.clone(),
                reason: "idempotency key without a request hash".into(),
            })?;
        let events = commit
            .raw_events()?
            .into_iter()
            .map(decode)
            .collect::<Result<_, _>>()?;
        Ok(Some(IdempotentCommit {
            request_hash,
            events,
        }))
    }

    async fn save_response(&self, response: &StoredResponse) -> Result<bool, StoreError> {
        let body = json_to_bson(&response.body).map_err(|e| refused(&response.key, &e))?;
        let inserted = self
            .responses()
            .insert_one(doc! {
                "_id": &response.key,
                "request_hash": &response.request_hash,
                "status": i32::from(response.status),
                "body": body,
            })
            .await;
        match inserted {
            Ok(_) => Ok(true),
            // The first answer stays.
            Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn save_responses(&self, responses: &[StoredResponse]) -> Vec<Result<bool, StoreError>> {
        if let [response] = responses {
            return vec![self.save_response(response).await];
        }
        let first = first_of_each_key(responses);
        let mut results: Vec<Option<Result<bool, StoreError>>> =
            Vec::with_capacity(responses.len());
        let mut sent = Vec::new();
        let mut documents = Vec::new();
        for (index, (response, first)) in responses.iter().zip(first).enumerate() {
            if !first {
                results.push(Some(Ok(false)));
                continue;
            }
            match json_to_bson(&response.body) {
                Ok(body) => {
                    results.push(None);
                    sent.push(index);
                    documents.push(doc! {
                        "_id": &response.key,
                        "request_hash": &response.request_hash,
                        "status": i32::from(response.status),
                        "body": body,
                    });
                }
                Err(e) => results.push(Some(Err(refused(&response.key, &e)))),
            }
        }
        if !documents.is_empty() {
            // Unordered: a key stored already fails its own document only.
            let failed: Result<HashMap<usize, i32>, StoreError> =
                match self.responses().insert_many(documents).ordered(false).await {
                    Ok(_) => Ok(HashMap::new()),
                    Err(e) => match e.kind.as_ref() {
                        ErrorKind::InsertMany(many) if many.write_concern_error.is_none() => {
                            Ok(many
                                .write_errors
                                .iter()
                                .flatten()
                                .map(|w| (w.index, w.code))
                                .collect())
                        }
                        _ => Err(unavailable(e)),
                    },
                };
            for (position, index) in sent.into_iter().enumerate() {
                results[index] = Some(match &failed {
                    Err(e) => Err(e.clone()),
                    Ok(failed) => match failed.get(&position) {
                        None => Ok(true),
                        // The first answer stays.
                        Some(&DUPLICATE_KEY) => Ok(false),
                        Some(code) => Err(StoreError::Unavailable(format!(
                            "mongodb: insert of a response failed with code {code}"
                        ))),
                    },
                });
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "mongodb: a response got no answer".into(),
                    ))
                })
            })
            .collect()
    }

    async fn replace_claim(
        &self,
        claim_id: &str,
        new: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let body = json_to_bson(&new.body).map_err(|e| refused(&new.key, &e))?;
        let done = self
            .responses()
            .update_one(
                doc! {
                    "_id": &new.key,
                    "status": i32::from(StoredResponse::CLAIM),
                    "body.claim": claim_id,
                },
                doc! { "$set": {
                    "request_hash": &new.request_hash,
                    "status": i32::from(new.status),
                    "body": body,
                } },
            )
            .await
            .map_err(unavailable)?;
        Ok(done.modified_count == 1)
    }

    async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = mongodb::bson::DateTime::now();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let until =
            mongodb::bson::DateTime::from_millis(now.timestamp_millis().saturating_add(ttl_ms));
        // Matches the lease only when it is ours or expired; a lease held by another does
        // not match, so the upsert tries to insert a second document with its `_id` and
        // fails on the unique `_id`: not ours.
        let taken = self
            .leases()
            .update_one(
                doc! {
                    "_id": name,
                    "$or": [ { "holder": holder }, { "expires_at": { "$lt": now } } ],
                },
                doc! { "$set": { "holder": holder, "expires_at": until } },
            )
            .upsert(true)
            .await;
        match taken {
            Ok(_) => Ok(true),
            Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn find_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        let found = self
            .responses()
            .find_one(doc! { "_id": key })
            .await
            .map_err(unavailable)?;
        let Some(document) = found else {
            return Ok(None);
        };
        let bad = |what: &str| corrupt(&document, format!("stored response: {what}"));
        let request_hash = document
            .get_str("request_hash")
            .map_err(|_| bad("request_hash"))?
            .to_owned();
        let status = document
            .get_i32("status")
            .ok()
            .and_then(|s| u16::try_from(s).ok())
            .ok_or_else(|| bad("status"))?;
        let body = document
            .get("body")
            .cloned()
            .ok_or_else(|| bad("body"))
            .and_then(|b| bson_to_json(b).map_err(|e| bad(&e)))?;
        Ok(Some(StoredResponse {
            key: key.to_owned(),
            request_hash,
            status,
            body,
        }))
    }

    fn backend(&self) -> &'static str {
        "mongodb"
    }
}

/// A commit as stored; unknown fields (`time`, `published`, …) are ignored.
#[derive(Debug, Deserialize)]
struct StoredCommit {
    #[serde(rename = "_id")]
    id: String,
    seq: String,
    account_id: String,
    events: Vec<StoredEvent>,
    #[serde(default)]
    request_hash: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StoredEvent {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    source: String,
    time_us: i64,
    version: i64,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    causation_id: Option<String>,
    schema_version: i64,
    data: Bson,
}

impl StoredCommit {
    fn parse(document: Document) -> Result<Self, StoreError> {
        let id = document_id(&document);
        mongodb::bson::from_document(document).map_err(|e| StoreError::Corrupt {
            id,
            reason: format!("commit document: {e}"),
        })
    }

    /// The commit's events in their boundary form, not yet upcast.
    fn raw_events(self) -> Result<Vec<RawEvent>, StoreError> {
        let subject = self.account_id;
        self.events
            .into_iter()
            .map(|event| {
                let bad = |reason: String| StoreError::Corrupt {
                    id: event.id.clone(),
                    reason,
                };
                let time = DateTime::from_timestamp_micros(event.time_us)
                    .ok_or_else(|| bad(format!("time_us {} out of range", event.time_us)))?;
                let account_version = u64::try_from(event.version)
                    .map_err(|_| bad(format!("version {}", event.version)))?;
                let schema_version = u32::try_from(event.schema_version)
                    .map_err(|_| bad(format!("schema_version {}", event.schema_version)))?;
                let data = bson_to_json(event.data.clone()).map_err(bad)?;
                Ok(RawEvent {
                    id: event.id,
                    source: event.source,
                    event_type: event.event_type,
                    subject: subject.clone(),
                    time,
                    account_version,
                    correlation_id: event.correlation_id,
                    causation_id: event.causation_id,
                    schema_version,
                    data,
                })
            })
            .collect()
    }
}

/// The document one commit is stored as.
fn commit_document(
    id: &str,
    seq: &str,
    events: &[Envelope],
    idempotency: Option<&IdempotencyMark>,
) -> Result<Document, StoreError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(refused(id, "no events"));
    };
    let stored = events
        .iter()
        .map(event_document)
        .collect::<Result<Vec<_>, _>>()?;
    let mut document = doc! {
        "_id": id,
        "seq": seq,
        "account_id": first.account_id.to_string(),
        "first_version": to_i64(first.account_version)?,
        "last_version": to_i64(last.account_version)?,
        "events": stored,
    };
    if let Some(mark) = idempotency {
        document.insert("idempotency_key", &mark.key);
        document.insert("request_hash", &mark.request_hash);
    }
    Ok(document)
}

fn event_document(envelope: &Envelope) -> Result<Bson, StoreError> {
    let raw = envelope.to_raw();
    let data = json_to_bson(&raw.data).map_err(|e| refused(&raw.id, &e))?;
    let mut event = doc! {
        "id": raw.id,
        "type": raw.event_type,
        "source": raw.source,
        "time": mongodb::bson::DateTime::from_millis(raw.time.timestamp_millis()),
        "time_us": raw.time.timestamp_micros(),
        "version": to_i64(raw.account_version)?,
        "schema_version": i64::from(raw.schema_version),
        "data": data,
    };
    if let Some(correlation_id) = raw.correlation_id {
        event.insert("correlation_id", correlation_id);
    }
    if let Some(causation_id) = raw.causation_id {
        event.insert("causation_id", causation_id);
    }
    Ok(Bson::Document(event))
}

/// A `seq` that sorts after `previous`: the commit's own id when it already does.
fn seq_after(previous: &str, id: &str) -> String {
    if id > previous {
        return id.to_owned();
    }
    let (base, counter) = match previous.split_once(SEQ_SEPARATOR) {
        Some((base, counter)) => (base, counter.parse::<u64>().unwrap_or(0)),
        None => (previous, 0),
    };
    format!("{base}{SEQ_SEPARATOR}{:020}", counter.saturating_add(1))
}

fn position(seq: &str, index: usize) -> Position {
    Position(format!("{seq}{POSITION_SEPARATOR}{index:04}"))
}

fn parse_position(position: &Position) -> Result<(String, usize), StoreError> {
    position
        .0
        .rsplit_once(POSITION_SEPARATOR)
        .and_then(|(seq, index)| Some((seq.to_owned(), index.parse().ok()?)))
        .ok_or_else(|| StoreError::Corrupt {
            id: position.0.clone(),
            reason: "not a position of the mongodb event store".into(),
        })
}

fn decode(raw: RawEvent) -> Result<Envelope, StoreError> {
    let id = raw.id.clone();
    raw.decode().map_err(|e| StoreError::Corrupt {
        id,
        reason: e.to_string(),
    })
}

/// JSON → BSON, integers always as int64 (so an `i64` never turns into a double or an
/// int32 that a reader might widen differently).
fn json_to_bson(value: &serde_json::Value) -> Result<Bson, String> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Bson::Int64(i),
            (None, Some(u), _) => return Err(format!("integer {u} does not fit in an int64")),
            (None, None, Some(f)) => Bson::Double(f),
            (None, None, None) => return Err(format!("number {n} has no BSON form")),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(
            items
                .iter()
                .map(json_to_bson)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Value::Object(map) => {
            let mut document = Document::new();
            for (key, item) in map {
                document.insert(key.clone(), json_to_bson(item)?);
            }
            Bson::Document(document)
        }
    })
}

/// BSON → JSON for what [`json_to_bson`] writes (int32 is accepted too); anything else is
/// not ours.
fn bson_to_json(value: Bson) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match value {
        Bson::Null => Value::Null,
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => Value::from(i),
        Bson::Double(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("double {f} has no JSON form"))?,
        Bson::String(s) => Value::String(s),
        Bson::Array(items) => Value::Array(
            items
                .into_iter()
                .map(bson_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Bson::Document(document) => {
            let mut map = serde_json::Map::new();
            for (key, item) in document {
                map.insert(key, bson_to_json(item)?);
            }
            Value::Object(map)
        }
        other => return Err(format!("unexpected BSON {:?}", other.element_type())),
    })
}

fn to_i64(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| refused(&version.to_string(), "version beyond int64"))
}

/// The server's error code, whether it came as a write error or a command error.
fn error_code(error: &MongoError) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => Some(e.code),
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|e| e.code),
        _ => None,
    }
}

fn unavailable(error: MongoError) -> StoreError {
    StoreError::Unavailable(format!("mongodb: {error}"))
}

fn corrupt(document: &Document, reason: String) -> StoreError {
    StoreError::Corrupt {
        id: document_id(document),
        reason,
    }
}

fn document_id(document: &Document) -> String {
    match document.get("_id") {
        Some(Bson::String(id)) => id.clone(),
        Some(other) => other.to_string(),
        None => "<no _id>".to_owned(),
    }
}

/// Input the store will not write (a caller's bug); reported as [`StoreError::Corrupt`],
/// the variant for data that cannot round-trip.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_sorts_after_its_predecessor_even_when_the_id_does_not() {
        let earlier = "0190a000-0000-7000-8000-000000000000";
        let later = "0190a000-0000-7000-8000-000000000001";
        assert_eq!(seq_after(earlier, later), later);
        let derived = seq_after(later, earlier);
        assert!(derived.as_str() > later, "{derived}");
        let again = seq_after(&derived, earlier);
        assert!(again > derived, "{again}");
        // Still below any id that sorts after the base.
        assert!(again.as_str() < "0190a000-0000-7000-8000-000000000002");
        // Positions order like (seq, index).
        assert!(position(later, 9) < position(&derived, 0));
        assert!(position(&derived, 9) < position(&again, 0));
    }

    #[test]
    fn integers_stay_int64_and_come_back_exactly() {
        let value = serde_json::json!({
            "big": i64::MAX, "small": i64::MIN, "one": 1, "f": 0.5,
            "s": "Zoë ✓", "a": [1, {"b": null}], "t": true
        });
        let bson = json_to_bson(&value).expect("to bson");
        let Bson::Document(d) = &bson else {
            panic!("a document")
        };
        assert_eq!(d.get("one"), Some(&Bson::Int64(1)));
        assert_eq!(bson_to_json(bson).expect("to json"), value);
        assert!(json_to_bson(&serde_json::json!(u64::MAX)).is_err());
    }

    #[test]
    fn a_position_parses_back() {
        let p = position("abc~00000000000000000001", 12);
        assert_eq!(
            parse_position(&p).expect("parses"),
            ("abc~00000000000000000001".to_owned(), 12)
        );
        assert!(parse_position(&Position("nonsense".into())).is_err());
    }
}
