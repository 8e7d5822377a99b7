//! The event store: the source of truth, and the outbox the relay publishes from.
//!
//! One trait, two real backends chosen in configuration: [`mongo::MongoStore`] (MongoDB 7
//! and FerretDB, which has no transactions) and [`postgres::PgStore`].
//!
//! # Guarantees every backend gives
//! - **Optimistic concurrency.** `append(account, expected_version, events)` stores the
//!   events only if the account's last version is `expected_version` (0 for a new account);
//!   otherwise [`AppendError::Conflict`]. A unique (account, version) guard in the database
//!   enforces it, so two writers can never both win.
//! - **Atomic commits.** All events of one command are stored together or not at all (on
//!   MongoDB without transactions: one document per commit).
//! - **Idempotency.** A commit may carry an idempotency key (unique across the store) and a
//!   hash of the request; appending a second commit with the same key fails with
//!   [`AppendError::DuplicateIdempotencyKey`], and [`EventStore::find_idempotent`] returns the
//!   first one.
//! - **Group commit.** [`EventStore::append_batch`] writes the commits of many accounts in
//!   one round trip with every guarantee above held per commit; `batcher.rs` gathers the
//!   commits that are ready at the same moment.
//! - **Outbox.** Every stored event starts unpublished; the relay reads
//!   [`EventStore::unpublished`] and calls [`EventStore::mark_published`] after Kafka acked.
//!   Both cost the backlog, never the store's size: PostgreSQL keeps an `outbox` table of
//!   the unpublished events' positions (written in the append's statement, deleted once
//!   published); MongoDB keeps a small `outbox` collection of the commits not yet published
//!   (intents written before each commit, deleted once published), since FerretDB reads a
//!   whole collection for every range or sort.
//! - **Reads.** `load` gives one account's events in version order; `read_all` pages through
//!   every event in a stable order, resumable from a [`Position`].

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use prism_events::{AccountId, Envelope, RawEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod batcher;
mod ferretdb;
pub mod mongo;
pub mod postgres;

/// A place in [`EventStore::read_all`]'s order; opaque outside its backend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position(pub String);

/// One command's commit, as [`EventStore::append_batch`] takes it: the events of one
/// account (versions `expected_version + 1 …`), the request's idempotency mark, and the
/// claim on that key to store first, if the command has not claimed its key yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub account_id: AccountId,
    pub expected_version: u64,
    pub events: Vec<Envelope>,
    pub idempotency: Option<IdempotencyMark>,
    /// A claim ([`StoredResponse::claim`]) on the key of `idempotency`, stored in the same
    /// round trip as the commit and before it: the commit is appended only if the claim was
    /// stored (else [`AppendError::KeyClaimed`]). Once stored it stays, whatever happens to
    /// the commit.
    pub claim: Option<StoredResponse>,
}

impl Commit {
    /// Appends this commit alone: its claim through [`EventStore::save_response`], then
    /// the commit through the single-commit [`EventStore::append`] — what a batch of one
    /// does on a backend that has nothing to gain from a batch's bookkeeping.
    pub(crate) async fn append_alone<S: EventStore + ?Sized>(
        &self,
        store: &S,
    ) -> Result<(), AppendError> {
        if let Some(claim) = &self.claim {
            if !store.save_response(claim).await? {
                return Err(AppendError::KeyClaimed);
            }
        }
        store
            .append(
                self.account_id,
                self.expected_version,
                &self.events,
                self.idempotency.as_ref(),
            )
            .await
    }
}

/// For each commit of a batch, whether its claim is the first of the batch on its key
/// (only those are sent; a later one on the same key is [`AppendError::KeyClaimed`]);
/// true for commits without a claim.
pub(crate) fn first_claims(commits: &[Commit]) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    commits
        .iter()
        .map(|c| {
            c.claim
                .as_ref()
                .is_none_or(|claim| seen.insert(claim.key.as_str()))
        })
        .collect()
}

/// What the store keeps to answer a retried request with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyMark {
    /// Scoped by the caller (e.g. `<principal>:<key>`).
    pub key: String,
    /// A hash of the request (method, path, body): the same key with another body is an error.
    pub request_hash: String,
}

/// The commit an idempotency key is bound to.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotentCommit {
    pub request_hash: String,
    pub events: Vec<Envelope>,
}

/// A stored answer to a request that was rejected (stored nothing in the event stream), so a
/// retry with the same key gets the same answer; or a claim on the key by a request that is
/// committing ([`StoredResponse::CLAIM`]). Rejections and claims share one unique key
/// space, so a key ends with one outcome: a commit or a rejection, never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub key: String,
    pub request_hash: String,
    pub status: u16,
    pub body: serde_json::Value,
}

impl StoredResponse {
    /// `status` of a claim: the key belongs to a request that is (or was) committing; no
    /// HTTP answer is stored, the commit appended with the key is the answer.
    pub const CLAIM: u16 = 0;

    /// A claim on `mark`'s key by the request attempt `claim_id`, made at `at`.
    pub fn claim(
        mark: &IdempotencyMark,
        claim_id: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        Self {
            key: mark.key.clone(),
            request_hash: mark.request_hash.clone(),
            status: Self::CLAIM,
            body: serde_json::json!({ "claim": claim_id, "claimed_at": at.to_rfc3339() }),
        }
    }

    /// The claim's attempt id, if this record is a claim.
    pub fn claim_id(&self) -> Option<&str> {
        (self.status == Self::CLAIM)
            .then(|| self.body["claim"].as_str())
            .flatten()
    }

    /// When the claim was made, if this record is a claim.
    pub fn claimed_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        (self.status == Self::CLAIM)
            .then(|| self.body["claimed_at"].as_str())
            .flatten()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// An account's state at a version, as the aggregate serialised it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub account_id: AccountId,
    pub version: u64,
    pub state: serde_json::Value,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error; worth retrying.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// Stored data that cannot be read back (a bug or manual tampering).
    #[error("corrupt stored event {id}: {reason}")]
    Corrupt { id: String, reason: String },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("version conflict on account {account_id}: expected version {expected}")]
    Conflict {
        account_id: AccountId,
        expected: u64,
    },
    #[error("idempotency key already used")]
    DuplicateIdempotencyKey,
    /// The commit's claim could not be stored: a record (a claim, a stored rejection) is
    /// under its key already. Nothing was appended.
    #[error("idempotency key already claimed")]
    KeyClaimed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Creates collections/tables and indexes if missing. Idempotent.
    async fn init(&self) -> Result<(), StoreError>;

    /// Appends `events` (versions `expected_version + 1 …`, all of `account_id`) atomically.
    async fn append(
        &self,
        account_id: AccountId,
        expected_version: u64,
        events: &[Envelope],
        idempotency: Option<&IdempotencyMark>,
    ) -> Result<(), AppendError>;

    /// Appends several commits in as few round trips as the backend allows (one statement
    /// on PostgreSQL, one `insertMany` on MongoDB) and answers for each, in input order.
    /// Every commit is checked on its own exactly as [`EventStore::append`] checks it (its
    /// expected version, its idempotency key) and stored whole or not at all: a conflict or
    /// a taken key fails that commit alone, the others are stored. Commits of one batch are
    /// concurrent: of two for the same account at most one is stored, and one that builds
    /// on another of the same batch conflicts (callers send one commit per account).
    ///
    /// A commit's [`Commit::claim`] is stored before the commit, in the same round trip on
    /// PostgreSQL (the same statement) and beside the outbox intents on MongoDB: the commit
    /// is appended only if its claim was stored, else [`AppendError::KeyClaimed`]. Any
    /// other answer but [`AppendError::Store`] means the claim is stored (a conflict leaves
    /// it: the caller holds the key); after `Store` it may or may not be.
    async fn append_batch(&self, commits: &[Commit]) -> Vec<Result<(), AppendError>>;

    /// The account's events with a version above `after_version`, in version order.
    async fn load(
        &self,
        account_id: AccountId,
        after_version: u64,
    ) -> Result<Vec<Envelope>, StoreError>;

    /// Up to `limit` events after `after` (from the start when `None`) in the store's stable
    /// global order, each with its position. Within an account, versions ascend.
    async fn read_all(
        &self,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<Vec<(Position, Envelope)>, StoreError>;

    /// Every stored event once, in the order cheapest for the backend: within an account
    /// versions may come out of order (a caller that folds puts each account's events in
    /// order itself). One pass over the store however large it is, where paging
    /// [`EventStore::read_all`] costs FerretDB a read and sort of the whole collection per
    /// page. What `prismctl verify` reads. Each item holds some events (about `page`, or
    /// one commit's). Events stored while the scan runs may or may not be included.
    fn scan(&self, page: usize) -> BoxStream<'_, Result<Vec<Envelope>, StoreError>> {
        let page = page.max(1);
        futures::stream::try_unfold(None::<Position>, move |after| async move {
            let events = self.read_all(after.as_ref(), page).await?;
            let Some((last, _)) = events.last() else {
                return Ok(None);
            };
            let next = Some(last.clone());
            Ok(Some((events.into_iter().map(|(_, e)| e).collect(), next)))
        })
        .boxed()
    }

    /// The latest snapshot of an account, if any.
    async fn load_snapshot(&self, account_id: AccountId) -> Result<Option<Snapshot>, StoreError>;

    /// Stores a snapshot, replacing an older one (never a newer one).
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// Up to `limit` unpublished events, oldest first, in version order within each account
    /// (whole commits). With `account_id`, only that account's. Only stored events, and of
    /// an account never one without every unpublished stored event below it: the relay
    /// relies on "not listed here" meaning "published" for the versions below what it
    /// publishes. Called on every sweep: its cost follows the backlog, not the store.
    async fn unpublished(
        &self,
        account_id: Option<AccountId>,
        limit: usize,
    ) -> Result<Vec<RawEvent>, StoreError>;

    /// Marks events published (after Kafka acknowledged them). Idempotent. A commit leaves
    /// the outbox only when all of its events are listed (else it is published again: a
    /// duplicate, never a loss). Index lookups by id on both backends.
    async fn mark_published(&self, event_ids: &[Uuid]) -> Result<(), StoreError>;

    /// The commit bound to an idempotency key, if one was appended with it.
    async fn find_idempotent(&self, key: &str) -> Result<Option<IdempotentCommit>, StoreError>;

    /// Remembers the answer to a rejected request (or a claim); a second save of the same
    /// key keeps the first. True when this call stored it.
    async fn save_response(&self, response: &StoredResponse) -> Result<bool, StoreError>;

    /// [`EventStore::save_response`] for many records in one round trip (group commit of
    /// idempotency claims), one answer per record in input order: true when this call stored
    /// it. Of records sharing a key only the first can be stored.
    async fn save_responses(&self, responses: &[StoredResponse]) -> Vec<Result<bool, StoreError>>;

    /// The stored answer for a key, if a rejected request saved one (or the key's claim,
    /// see [`StoredResponse::claim`]).
    async fn find_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError>;

    /// Replaces the claim `claim_id` stored under `new.key` with `new` (another claim, or
    /// the rejection its owner decided), only if that claim is still the one stored: a
    /// compare-and-set on one record. True when it replaced.
    async fn replace_claim(&self, claim_id: &str, new: &StoredResponse)
        -> Result<bool, StoreError>;

    /// Takes the lease `name` for `holder` until `ttl` from now, or renews it: only when it
    /// is free (never taken, or expired) or already `holder`'s. True when `holder` holds it
    /// after the call. A compare-and-set on one record: of two callers racing for a free
    /// lease one wins. Expiry is judged on the store's clock on PostgreSQL and on the
    /// caller's on MongoDB (instances' clocks are assumed within a fraction of `ttl`).
    async fn hold_lease(&self, name: &str, holder: &str, ttl: Duration)
        -> Result<bool, StoreError>;

    /// The backend's name for logs and metrics: `mongodb` or `postgres`.
    fn backend(&self) -> &'static str;
}

/// The events of one commit belong to `account_id`, carry the versions after
/// `expected_version` without gaps, and hold no U+0000. Anything else is refused before
/// any I/O, as [`StoreError::Corrupt`] ("not stored: …"): for the first two a caller's bug.
pub(crate) fn check_commit(
    account_id: AccountId,
    expected_version: u64,
    events: &[Envelope],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(refused(&account_id.to_string(), "a commit needs events"));
    }
    for (offset, event) in (1_u64..).zip(events) {
        if event.account_id != account_id {
            return Err(refused(
                &event.id.to_string(),
                &format!(
                    "event of account {} in a commit of {account_id}",
                    event.account_id
                ),
            ));
        }
        let wanted = expected_version.checked_add(offset);
        if Some(event.account_version) != wanted || event.account_version > i64::MAX as u64 {
            return Err(refused(
                &event.id.to_string(),
                &format!(
                    "version {} where {} was due after expected version {expected_version}",
                    event.account_version,
                    wanted.map_or_else(|| "nothing".to_owned(), |w| w.to_string()),
                ),
            ));
        }
        let texts = [
            Some(event.source.as_str()),
            event.correlation_id.as_deref(),
            event.causation_id.as_deref(),
        ];
        if texts.iter().flatten().any(|t| t.contains('\0')) || has_nul(&event.event.data()) {
            // PostgreSQL (TEXT, JSONB) and FerretDB cannot store U+0000; refuse it the same
            // way on every backend rather than fail as "unavailable" on some.
            return Err(refused(
                &event.id.to_string(),
                "a text contains U+0000, which the event stores cannot hold",
            ));
        }
    }
    Ok(())
}

/// A commit's claim is a claim ([`StoredResponse::CLAIM`]) on the commit's own key;
/// anything else is a caller's bug, refused before any I/O.
pub(crate) fn check_claim(commit: &Commit) -> Result<(), StoreError> {
    let Some(claim) = &commit.claim else {
        return Ok(());
    };
    let own_key = commit
        .idempotency
        .as_ref()
        .is_some_and(|mark| mark.key == claim.key && mark.request_hash == claim.request_hash);
    if claim.status != StoredResponse::CLAIM || !own_key {
        return Err(refused(
            &commit.account_id.to_string(),
            "a commit's claim must be a claim on the commit's own idempotency key",
        ));
    }
    Ok(())
}

fn has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Indexes of the records that are the first with their key (only these are sent; the
/// others cannot be stored by this call).
pub(crate) fn first_of_each_key(responses: &[StoredResponse]) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    responses
        .iter()
        .map(|r| seen.insert(r.key.as_str()))
        .collect()
}

/// Input a backend refuses to store, before any I/O.
pub(crate) fn refused(id: &str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        id: id.to_owned(),
        reason: format!("not stored: {reason}"),
    }
}
