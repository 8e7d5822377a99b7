//! Command handling: load → decide → append, one command per account at a time.
//!
//! - **Queueing.** Each account has a slot behind an async mutex: concurrent commands on the
//!   same account wait their turn inside this instance, so a single instance never answers
//!   409 under contention. Different accounts proceed in parallel.
//! - **Cache.** A slot keeps the account's state after each command. The cache is never
//!   trusted blindly: the append's optimistic-concurrency check proves it current, and a
//!   conflict (another instance wrote first) reloads the missing events and decides again,
//!   at most `conflict_retries` times before answering 409. A rejection has no such proof,
//!   so one decided on a cached state is decided again after reloading the missing events:
//!   a rejection (and the answer stored under its idempotency key) always rests on the
//!   store's current state, never on what this instance last saw.
//! - **Loading.** A cold account is the latest snapshot plus the events after it; a snapshot
//!   is written every `snapshot_every` events, tagged with its format
//!   ([`Account::SNAPSHOT_VERSION`]); one of another format is ignored (replayed instead).
//! - **Fraud reports.** The one command that needs more than the state: whether the named
//!   event is a card payment of the account is looked up in the account's stored events,
//!   up to the version of the state being decided on (`resolve`), and handed to the
//!   aggregate inside the command. It is looked up again before every decision, so a
//!   report decided again after a conflict or on fresh state rests on its own lookup. A
//!   payment the state already holds as reported needs no lookup.
//! - **Group commit.** An accepted commit is appended through the [`Batcher`]: the
//!   commits of different accounts that are ready at the same time share one store round
//!   trip (up to `append_batch_max`), each with its own version check and idempotency key;
//!   a commit goes alone at once when nothing else waits. The account's slot is held until
//!   its own answer is back, so all of the above holds per commit as before. An
//!   idempotency claim (below) rides with its commit in the same round trip.
//! - **Idempotency: one key, one outcome.** The key is stored with the commit itself
//!   (unique in the store), so a retried request that would append again fails on that
//!   index and is answered from the stored commit — even when two instances race on one
//!   key. Before committing, an attempt *claims* the key in the store's `responses` (first
//!   insert wins; the store writes the claim just before the commit, in the same round
//!   trip, and the commit only if the claim went in); a rejected request stores its answer
//!   in that same unique key space (or turns its own claim into it), with the status of its
//!   live answer ([`Rejection::http_status`]). So a key never holds both a rejection and a
//!   commit: whoever stored first decides, the others replay that outcome, and a claim whose owner
//!   is still working answers 409 "in progress" (taken over after `CLAIM_LEASE` if its
//!   owner died before committing). An owner appends only within `CLAIM_APPEND_WINDOW`
//!   of its claim, well inside the lease, so a takeover never races a late commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use prism_events::{AccountEvent, AccountId, ConsistencyToken, Envelope};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::account::{self, Account, Command, PaymentLookup, Rejection, ReportFraud, Status};
use crate::metrics::Metrics;
use crate::relay::RelayHandle;
use crate::store::batcher::Batcher;
use crate::store::{
    AppendError, Commit, EventStore, IdempotencyMark, Snapshot, StoreError, StoredResponse,
};

/// Settings of the command path.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub source: String,
    pub conflict_retries: u32,
    pub snapshot_every: u64,
    pub cache_accounts: usize,
    /// Most commits written in one store round trip (group commit); 1 turns batching off
    /// (every command appends on its own, concurrently).
    pub append_batch_max: usize,
    /// Batches written at the same time; while they are, the next commits queue and go
    /// together.
    pub append_batches_in_flight: usize,
    /// Where "now" comes from: the system clock, except in tests that need to know an
    /// event's time before they send its command.
    pub clock: Clock,
}

/// The time every decision and event of the service is stamped with.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self(Arc::new(Utc::now))
    }

    /// Any source of time (tests).
    pub fn from_fn(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// Now, at the precision every store keeps (microseconds).
    pub fn now_micros(&self) -> DateTime<Utc> {
        (self.0)().trunc_subsecs(6)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Who asked, for the envelope and for idempotency.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub correlation_id: Option<String>,
    /// The request that caused the events (becomes each event's causation id).
    pub causation_id: Option<String>,
    pub idempotency: Option<IdempotencyMark>,
}

/// A command that stored events (or an idempotent replay of one).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub account_id: AccountId,
    pub version: u64,
    pub events: Vec<Envelope>,
    /// True when this answers a retried request from the stored commit.
    pub replayed: bool,
}

impl Accepted {
    pub fn token(&self) -> ConsistencyToken {
        ConsistencyToken {
            account_id: self.account_id,
            version: self.version,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(Rejection),
    /// A rejection answered earlier for the same idempotency key: the stored answer.
    #[error("answered before")]
    StoredRejection(StoredResponse),
    #[error("another writer kept winning on account {0}; giving up after retries")]
    Conflict(AccountId),
    #[error("the idempotency key was used for a different request")]
    IdempotencyMismatch,
    /// Another attempt with the same idempotency key holds it and has not finished (or
    /// crashed less than `CLAIM_LEASE` ago): retry shortly.
    #[error("a request with this idempotency key is in progress")]
    KeyInProgress,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a claim on an idempotency key stands without its commit before another attempt
/// may take the key over (its owner crashed between the claim and the append).
const CLAIM_LEASE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// How long after making its claim an attempt may still append with the key: the append is
/// neither started nor awaited past this, so by the time another instance may take the key
/// over (after [`CLAIM_LEASE`], by its own clock) no append under the old claim is in
/// flight, and the new owner's outcome cannot meet a late commit. The margin to the lease
/// absorbs clock skew between instances.
const CLAIM_APPEND_WINDOW: std::time::Duration = std::time::Duration::from_secs(15);

/// A claim on an idempotency key held by this attempt.
#[derive(Debug, Clone)]
struct Claim {
    /// The claim's id in the store: only its holder may replace the record.
    id: String,
    /// Taken just before the claim was stored (so never later than the stored time).
    since: Instant,
}

impl Claim {
    fn new() -> Self {
        Self {
            id: Uuid::now_v7().to_string(),
            since: Instant::now(),
        }
    }
}

/// Where this attempt stands with its idempotency key.
#[derive(Debug)]
enum Key {
    /// The request has no key.
    Unkeyed,
    /// This attempt has not claimed the key (it claims it right before appending) and
    /// has not looked at it: a record may be there already.
    Unclaimed,
    /// This attempt holds the key's claim: only it may commit with the key (within
    /// [`CLAIM_APPEND_WINDOW`]) or turn the claim into a stored rejection.
    Mine(Claim),
}

/// What a record found under a key means for this attempt.
enum Settled {
    /// The key's outcome (a stored rejection, the stored commit, or why not).
    Answer(Result<Accepted, CommandError>),
    /// The key's claim, now this attempt's (a fresh one, or an abandoned one taken over).
    TookOver(Claim),
}

/// One account's queue and cached state.
#[derive(Debug, Default)]
struct Slot {
    state: Option<Account>,
}

#[derive(Debug)]
struct Slots {
    map: HashMap<AccountId, Arc<Mutex<Slot>>>,
    capacity: usize,
}

impl Slots {
    fn get(&mut self, account_id: AccountId) -> Arc<Mutex<Slot>> {
        if let Some(slot) = self.map.get(&account_id) {
            return Arc::clone(slot);
        }
        if self.map.len() >= self.capacity {
            // Drop idle slots (nobody holds them); busy ones stay.
            self.map.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        let slot = Arc::new(Mutex::new(Slot::default()));
        self.map.insert(account_id, Arc::clone(&slot));
        slot
    }
}

pub struct CommandService {
    store: Arc<dyn EventStore>,
    /// Group commit; `None` when `append_batch_max` is 1.
    batcher: Option<Batcher>,
    relay: RelayHandle,
    metrics: Metrics,
    config: ServiceConfig,
    slots: StdMutex<Slots>,
}

impl std::fmt::Debug for CommandService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandService")
            .field("backend", &self.store.backend())
            .field("config", &self.config)
            .finish()
    }
}

impl CommandService {
    /// Call on a Tokio runtime: the group-commit dispatcher is spawned on it.
    pub fn new(
        store: Arc<dyn EventStore>,
        relay: RelayHandle,
        metrics: Metrics,
        config: ServiceConfig,
    ) -> Self {
        let capacity = config.cache_accounts.max(1);
        let batcher = (config.append_batch_max > 1).then(|| {
            Batcher::spawn(
                Arc::clone(&store),
                config.append_batch_max,
                config.append_batches_in_flight,
                metrics.append_batch_size.clone(),
            )
        });
        Self {
            store,
            batcher,
            relay,
            metrics,
            config,
            slots: StdMutex::new(Slots {
                map: HashMap::new(),
                capacity,
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    fn slot(&self, account_id: AccountId) -> Arc<Mutex<Slot>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(account_id)
    }

    /// Handles one command; `account_id` is a fresh id for `Command::Open`.
    pub async fn execute(
        &self,
        account_id: AccountId,
        command: Command,
        meta: Meta,
    ) -> Result<Accepted, CommandError> {
        let started = Instant::now();
        let name = command.name();
        let result = self.execute_inner(account_id, &command, &meta).await;
        let outcome = match &result {
            Ok(a) if a.replayed => "replayed",
            Ok(_) => "accepted",
            Err(CommandError::Rejected(_) | CommandError::StoredRejection(_)) => "rejected",
            Err(CommandError::Conflict(_)) => "conflict",
            Err(CommandError::IdempotencyMismatch) => "invalid",
            Err(CommandError::KeyInProgress) => "conflict",
            Err(CommandError::Store(_)) => "error",
        };
        self.metrics
            .command_duration
            .with_label_values(&[name, outcome])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn execute_inner(
        &self,
        account_id: AccountId,
        command: &Command,
        meta: &Meta,
    ) -> Result<Accepted, CommandError> {
        let slot = self.slot(account_id);
        let mut slot = slot.lock().await;
        // One key, one outcome: a rejection and a commit's claim share the store's unique
        // key space (`responses`), and whoever stores first decides. The key is not looked
        // up first: an accepted command claims it (with its commit, see `Commit::claim`)
        // and only a taken key costs a read, which then answers this attempt (a retry, or a
        // twin that finished while we waited); a rejection looks the key up before
        // answering (`reject`).
        let mut key = match &meta.idempotency {
            None => Key::Unkeyed,
            Some(_) => Key::Unclaimed,
        };
        // `fresh`: the state was read from the store for this command. A cached state may
        // be behind another instance's writes; an acceptance is proven current by the
        // append's version check, a rejection is not, so it is decided again on fresh state.
        let (mut state, mut fresh) = match slot.state.take() {
            Some(state) => (state, false),
            // An account id minted for this open (`AccountId::generate`, a UUIDv7) has no
            // history to read; were it taken, the append's version check would say so.
            None if matches!(command, Command::Open(_)) => (Account::default(), true),
            None => (self.load(account_id).await?, true),
        };
        let mut attempt = 0;
        loop {
            let now = self.config.clock.now_micros();
            let resolved = self.resolve(account_id, &state, command).await?;
            let events = match account::decide(&state, resolved.as_ref().unwrap_or(command), now) {
                Ok(events) => events,
                Err(_) if !fresh => {
                    state = self.catch_up(account_id, state).await?;
                    fresh = true;
                    continue;
                }
                Err(rejection) => {
                    slot.state = Some(state);
                    return self.reject(meta, rejection, &key).await;
                }
            };
            // An unclaimed key is claimed with the commit, in the same store round trip
            // (the claim first: the commit lands only if the claim did).
            let claiming = match (&meta.idempotency, &key) {
                (Some(mark), Key::Unclaimed) => {
                    let claim = Claim::new();
                    let record = StoredResponse::claim(mark, &claim.id, Utc::now());
                    Some((claim, record))
                }
                _ => None,
            };
            let envelopes = self.envelopes(account_id, state.version(), now, events, meta);
            let deadline = match (&key, &claiming) {
                (Key::Mine(claim), _) | (_, Some((claim, _))) => {
                    Some(claim.since + CLAIM_APPEND_WINDOW)
                }
                _ => None,
            };
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                // Too late to commit under this claim: a retry finds no commit and, after
                // the lease, takes the key over.
                slot.state = Some(state);
                return Err(CommandError::KeyInProgress);
            }
            let append = self.append(
                Commit {
                    account_id,
                    expected_version: state.version(),
                    events: envelopes.clone(),
                    idempotency: meta.idempotency.clone(),
                    claim: claiming.as_ref().map(|(_, record)| record.clone()),
                },
                deadline,
            );
            let appended = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), append)
                    .await
                    .unwrap_or_else(|_| {
                        Err(AppendError::Store(StoreError::Unavailable(
                            "the append outlasted its idempotency key's claim".into(),
                        )))
                    }),
                None => append.await,
            };
            // Every answer but `KeyClaimed` and a store error says the claim is stored:
            // the key is this attempt's from here on (a retry of the loop appends without a
            // new claim, a rejection replaces the claim).
            if let Some((claim, _)) = &claiming {
                if !matches!(
                    appended,
                    Err(AppendError::KeyClaimed | AppendError::Store(_))
                ) {
                    key = Key::Mine(claim.clone());
                }
            }
            match appended {
                Ok(()) => {
                    let before = state.version();
                    for envelope in &envelopes {
                        account::evolve(&mut state, envelope);
                    }
                    self.maybe_snapshot(account_id, before, &state);
                    self.relay
                        .publish(envelopes.iter().map(Envelope::to_raw).collect());
                    let version = state.version();
                    slot.state = Some(state);
                    return Ok(Accepted {
                        account_id,
                        version,
                        events: envelopes,
                        replayed: false,
                    });
                }
                Err(AppendError::Conflict { .. }) => {
                    self.metrics.conflicts.inc();
                    attempt += 1;
                    if attempt > self.config.conflict_retries {
                        // The cached state is stale: drop it so the next command reloads.
                        // A claim of ours stays: a retry finds no commit and, after the
                        // lease, takes the key over.
                        return Err(CommandError::Conflict(account_id));
                    }
                    state = self.catch_up(account_id, state).await?;
                    fresh = true;
                }
                Err(AppendError::KeyClaimed) => {
                    // A record is under the key (a retry, a twin, a stored rejection):
                    // nothing was appended and it answers this attempt, or an abandoned
                    // claim is taken over and the loop appends again under it.
                    let mark = meta
                        .idempotency
                        .as_ref()
                        .ok_or(CommandError::IdempotencyMismatch)?;
                    let Some(record) = self.store.find_response(&mark.key).await? else {
                        slot.state = Some(state);
                        return Err(CommandError::Store(StoreError::Unavailable(
                            "an idempotency key reported claimed holds no record".into(),
                        )));
                    };
                    match self.settle(mark, record).await? {
                        Settled::Answer(answer) => {
                            slot.state = Some(state);
                            return answer;
                        }
                        Settled::TookOver(claim) => key = Key::Mine(claim),
                    }
                }
                Err(AppendError::DuplicateIdempotencyKey) => {
                    // This key's commit exists (a retry, or a twin on another instance):
                    // answer with it. Nothing was appended, so the state is still current.
                    slot.state = Some(state);
                    let mark = meta
                        .idempotency
                        .as_ref()
                        .ok_or(CommandError::IdempotencyMismatch)?;
                    return match self.stored_commit(mark).await? {
                        Some(answer) => answer,
                        None => Err(CommandError::Store(StoreError::Unavailable(
                            "idempotency key reported taken but not found".into(),
                        ))),
                    };
                }
                Err(AppendError::Store(e)) => {
                    // Unknown whether the append landed: forget the cache, reload next time.
                    return Err(CommandError::Store(e));
                }
            }
        }
    }

    /// Appends one commit (and its claim, if it carries one): through the group-commit
    /// [`Batcher`] (shared with the commits of other accounts that are ready at the same
    /// time), or straight to the store when batching is off. Past `deadline` the batcher no
    /// longer sends it.
    async fn append(&self, commit: Commit, deadline: Option<Instant>) -> Result<(), AppendError> {
        match &self.batcher {
            Some(batcher) => batcher.append(commit, deadline).await,
            None => self
                .store
                .append_batch(std::slice::from_ref(&commit))
                .await
                .pop()
                .unwrap_or_else(|| {
                    Err(AppendError::Store(StoreError::Unavailable(
                        "the store answered no commit".into(),
                    )))
                }),
        }
    }

    /// What `record`, found under `mark`'s key and not this attempt's, means: the stored
    /// rejection, the commit of the claim's owner, "in progress", or a takeover of a claim
    /// abandoned for longer than [`CLAIM_LEASE`].
    async fn settle(
        &self,
        mark: &IdempotencyMark,
        mut record: StoredResponse,
    ) -> Result<Settled, CommandError> {
        // Bounded: each round either answers or loses a takeover race to another attempt.
        for _ in 0..3 {
            if record.request_hash != mark.request_hash {
                return Ok(Settled::Answer(Err(CommandError::IdempotencyMismatch)));
            }
            let Some(owner) = record.claim_id().map(str::to_owned) else {
                return Ok(Settled::Answer(Err(CommandError::StoredRejection(record))));
            };
            if let Some(answer) = self.stored_commit(mark).await? {
                return Ok(Settled::Answer(answer));
            }
            let abandoned = record
                .claimed_at()
                .is_none_or(|at| Utc::now() - at > CLAIM_LEASE);
            if !abandoned {
                return Ok(Settled::Answer(Err(CommandError::KeyInProgress)));
            }
            let claim = Claim::new();
            let ours = StoredResponse::claim(mark, &claim.id, Utc::now());
            if self.store.replace_claim(&owner, &ours).await? {
                // The old owner no longer appends: its window closed well before the lease.
                return Ok(Settled::TookOver(claim));
            }
            match self.store.find_response(&mark.key).await? {
                Some(now) => record = now,
                None => return Ok(Settled::Answer(Err(CommandError::KeyInProgress))),
            }
        }
        Ok(Settled::Answer(Err(CommandError::KeyInProgress)))
    }

    /// Answers a rejection; with a key, stores it as the key's one outcome first.
    async fn reject(
        &self,
        meta: &Meta,
        rejection: Rejection,
        key: &Key,
    ) -> Result<Accepted, CommandError> {
        let Some(mark) = &meta.idempotency else {
            return Err(CommandError::Rejected(rejection));
        };
        let response = StoredResponse {
            key: mark.key.clone(),
            request_hash: mark.request_hash.clone(),
            // A replay answers with the status of the live answer (404 for a payment the
            // account does not have, 409 for one reported already, else 422).
            status: rejection.http_status(),
            body: serde_json::json!({ "code": rejection.code(), "detail": rejection.to_string() }),
        };
        let mut claim = match key {
            Key::Unkeyed => return Err(CommandError::Rejected(rejection)),
            Key::Mine(claim) => Some(claim.id.clone()),
            Key::Unclaimed => None,
        };
        if claim.is_none() {
            // A retried request that succeeded the first time may be rejected by today's
            // state: the first answer wins.
            if let Some(answer) = self.stored_commit(mark).await? {
                return answer;
            }
            if rejection.is_not_found() || rejection.is_invalid_input() {
                // Nothing was decided: the same request gets the same answer anyway.
                return Err(CommandError::Rejected(rejection));
            }
            if self.store.save_response(&response).await? {
                return Err(CommandError::Rejected(rejection));
            }
            match self.store.find_response(&mark.key).await? {
                Some(record) if record == response => {
                    return Err(CommandError::Rejected(rejection));
                }
                Some(record) => match self.settle(mark, record).await? {
                    Settled::Answer(answer) => return answer,
                    Settled::TookOver(taken) => claim = Some(taken.id),
                },
                None => {
                    return Err(CommandError::Store(StoreError::Unavailable(
                        "a stored rejection vanished".into(),
                    )))
                }
            }
        }
        // This attempt holds the key's claim: its rejection becomes the key's outcome.
        let Some(id) = claim else {
            return Err(CommandError::Rejected(rejection));
        };
        // A commit under the key (the claim's previous owner, taken over) is the outcome.
        if let Some(answer) = self.stored_commit(mark).await? {
            return answer;
        }
        if self.store.replace_claim(&id, &response).await? {
            return Err(CommandError::Rejected(rejection));
        }
        // Another attempt took the key over (this one outlived its lease): its outcome rules.
        match self.store.find_response(&mark.key).await? {
            Some(record) => match self.settle(mark, record).await? {
                Settled::Answer(answer) => answer,
                Settled::TookOver(_) => Err(CommandError::KeyInProgress),
            },
            None => Err(CommandError::KeyInProgress),
        }
    }

    /// The write-side state of an account (loads it into the cache if needed).
    pub async fn account(&self, account_id: AccountId) -> Result<Account, CommandError> {
        let slot = self.slot(account_id);
        let mut slot = slot.lock().await;
        let state = match slot.state.take() {
            // Catch up in case another instance wrote meanwhile.
            Some(state) => self.catch_up(account_id, state).await?,
            None => self.load(account_id).await?,
        };
        slot.state = Some(state.clone());
        Ok(state)
    }

    /// The commit appended under this key, as an answer: `Some(Ok)` to replay it,
    /// `Some(Err)` when the key was used for a different request.
    async fn stored_commit(
        &self,
        mark: &IdempotencyMark,
    ) -> Result<Option<Result<Accepted, CommandError>>, CommandError> {
        let Some(commit) = self.store.find_idempotent(&mark.key).await? else {
            return Ok(None);
        };
        if commit.request_hash != mark.request_hash {
            return Ok(Some(Err(CommandError::IdempotencyMismatch)));
        }
        let Some(last) = commit.events.last() else {
            return Err(CommandError::Store(StoreError::Corrupt {
                id: mark.key.clone(),
                reason: "idempotent commit without events".into(),
            }));
        };
        Ok(Some(Ok(Accepted {
            account_id: last.account_id,
            version: last.account_version,
            events: commit.events.clone(),
            replayed: true,
        })))
    }

    /// Snapshot + events after it.
    async fn load(&self, account_id: AccountId) -> Result<Account, CommandError> {
        let mut state = Account::default();
        if self.config.snapshot_every > 0 {
            if let Some(snapshot) = self.store.load_snapshot(account_id).await? {
                match Account::from_snapshot(snapshot.state) {
                    Ok(s) if s.version() == snapshot.version => state = s,
                    // A snapshot is only a cache: one of another format, or unreadable, is
                    // ignored and the account replayed from its events.
                    Ok(_) => {
                        tracing::warn!(%account_id, "ignoring a snapshot whose version disagrees with its state")
                    }
                    Err(e) => tracing::warn!(%account_id, error = %e, "ignoring a snapshot"),
                }
            }
        }
        self.catch_up(account_id, state).await
    }

    /// A fraud report with its payment looked up in the account's history up to `state`'s
    /// version (the aggregate keeps no list of payments); `None` when the command is to be
    /// decided as it is (other commands, and a report on an account never opened, which is
    /// not found whatever it names).
    ///
    /// Called before every decision of the command, so a decision made again (after a
    /// conflict, or a rejection on a cached state) rests on a lookup at its own state.
    async fn resolve(
        &self,
        account_id: AccountId,
        state: &Account,
        command: &Command,
    ) -> Result<Option<Command>, CommandError> {
        let Command::ReportFraud(report) = command else {
            return Ok(None);
        };
        if state.status() == Status::Unopened {
            return Ok(None);
        }
        let resolved = |payment| {
            Command::ReportFraud(ReportFraud {
                payment,
                ..report.clone()
            })
        };
        if state.reported(report.payment_event_id) {
            // Only a card payment of this account was ever accepted as reported: no need
            // to read the history to answer that it was reported already.
            return Ok(Some(resolved(PaymentLookup::CardPayment)));
        }
        let mut payment = PaymentLookup::NotAPayment;
        // Reports are rare and name a past payment: reading the account's history is
        // cheaper than keeping every payment id in every cached state. The store offers no
        // lookup of an event by id (events are keyed by account and version), so this
        // reads the account's stream.
        for envelope in self.store.load(account_id, 0).await? {
            if envelope.account_version > state.version() {
                break;
            }
            if envelope.id == report.payment_event_id {
                if matches!(
                    envelope.event,
                    AccountEvent::CardPaymentApproved(_) | AccountEvent::CardPaymentDeclined(_)
                ) {
                    payment = PaymentLookup::CardPayment;
                }
                break;
            }
        }
        Ok(Some(resolved(payment)))
    }

    /// Applies the events stored after `state`'s version.
    async fn catch_up(
        &self,
        account_id: AccountId,
        mut state: Account,
    ) -> Result<Account, CommandError> {
        for envelope in self.store.load(account_id, state.version()).await? {
            account::evolve(&mut state, &envelope);
        }
        Ok(state)
    }

    fn envelopes(
        &self,
        account_id: AccountId,
        version: u64,
        now: DateTime<Utc>,
        events: Vec<AccountEvent>,
        meta: &Meta,
    ) -> Vec<Envelope> {
        events
            .into_iter()
            .zip(version + 1..)
            .map(|(event, account_version)| Envelope {
                id: Uuid::now_v7(),
                source: self.config.source.clone(),
                account_id,
                time: now,
                account_version,
                correlation_id: meta.correlation_id.clone(),
                causation_id: meta.causation_id.clone(),
                event,
            })
            .collect()
    }

    /// Writes a snapshot in the background when the commit crossed a multiple of `snapshot_every`.
    fn maybe_snapshot(&self, account_id: AccountId, before: u64, state: &Account) {
        let every = self.config.snapshot_every;
        if every == 0 || before / every == state.version() / every {
            return;
        }
        let state_json = match state.to_snapshot() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "serialising a snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            account_id,
            version: state.version(),
            state: state_json,
        };
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            if let Err(e) = store.save_snapshot(&snapshot).await {
                tracing::warn!(error = %e, %account_id, "saving a snapshot");
            }
        });
    }
}
