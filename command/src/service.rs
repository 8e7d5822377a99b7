//! Command handling: load → decide → append, one command per account at a time.
//!
//! - **Queueing.** Each account has a slot behind an async mutex: concurrent commands on the
//!   same account wait their turn inside this instance, so a single instance never answers
//!   409 under contention. Different accounts proceed in parallel.
//! - **Cache.** A slot keeps the account's state after each command. The cache is never
//!   trusted blindly: the append's optimistic-concurrency check proves it current, and a
//!   conflict (another instance wrote first) reloads the missing events and decides again,
//!   at most `conflict_retries` times before answering 409.
//! - **Loading.** A cold account is the latest snapshot plus the events after it; a snapshot
//!   is written every `snapshot_every` events.
//! - **Idempotency.** The key is stored with the commit itself (unique in the store), so a
//!   retried request that would append again fails on that index and is answered from the
//!   stored commit — even when two instances race on one key. A rejected request stores
//!   its answer by key; a retry looks that up first (by primary key) and, if today's state
//!   would reject a request that once succeeded, the stored commit is answered instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use prism_events::{AccountEvent, AccountId, ConsistencyToken, Envelope};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::account::{self, Account, Command, Rejection};
use crate::metrics::Metrics;
use crate::relay::RelayHandle;
use crate::store::{
    AppendError, EventStore, IdempotencyMark, Snapshot, StoreError, StoredResponse,
};

/// Settings of the command path.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub source: String,
    pub conflict_retries: u32,
    pub snapshot_every: u64,
    pub cache_accounts: usize,
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
    #[error(transparent)]
    Store(#[from] StoreError),
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
    pub fn new(
        store: Arc<dyn EventStore>,
        relay: RelayHandle,
        metrics: Metrics,
        config: ServiceConfig,
    ) -> Self {
        let capacity = config.cache_accounts.max(1);
        Self {
            store,
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
        // A rejection answered before under this key is answered again (one lookup by key,
        // the store's primary key). An earlier *success* needs no lookup here: appending
        // with the key again fails on its unique index and the commit is replayed then.
        // Checked in the queue, so a twin request that finished while we waited is seen.
        if let Some(mark) = &meta.idempotency {
            if let Some(answer) = self.stored_rejection(mark).await? {
                return answer;
            }
        }
        let mut state = match slot.state.take() {
            Some(state) => state,
            None => self.load(account_id).await?,
        };
        let mut attempt = 0;
        loop {
            let now = now_micros();
            let events = match account::decide(&state, command, now) {
                Ok(events) => events,
                Err(rejection) => {
                    slot.state = Some(state);
                    // A retried request that succeeded the first time may be rejected by
                    // today's state: the first answer wins.
                    if let Some(mark) = &meta.idempotency {
                        if let Some(answer) = self.stored_commit(mark).await? {
                            return answer;
                        }
                    }
                    self.remember_rejection(meta, &rejection).await;
                    return Err(CommandError::Rejected(rejection));
                }
            };
            let envelopes = self.envelopes(account_id, state.version(), now, events, meta);
            match self
                .store
                .append(
                    account_id,
                    state.version(),
                    &envelopes,
                    meta.idempotency.as_ref(),
                )
                .await
            {
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
                        return Err(CommandError::Conflict(account_id));
                    }
                    state = self.catch_up(account_id, state).await?;
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

    /// The rejection answered under this key, as an answer (always `Some(Err)`).
    async fn stored_rejection(
        &self,
        mark: &IdempotencyMark,
    ) -> Result<Option<Result<Accepted, CommandError>>, CommandError> {
        let Some(response) = self.store.find_response(&mark.key).await? else {
            return Ok(None);
        };
        if response.request_hash != mark.request_hash {
            return Ok(Some(Err(CommandError::IdempotencyMismatch)));
        }
        Ok(Some(Err(CommandError::StoredRejection(response))))
    }

    async fn remember_rejection(&self, meta: &Meta, rejection: &Rejection) {
        let Some(mark) = &meta.idempotency else {
            return;
        };
        if rejection.is_not_found() || rejection.is_invalid_input() {
            // Nothing was decided: the same request gets the same answer anyway.
            return;
        }
        let response = StoredResponse {
            key: mark.key.clone(),
            request_hash: mark.request_hash.clone(),
            status: 422,
            body: serde_json::json!({ "code": rejection.code(), "detail": rejection.to_string() }),
        };
        if let Err(e) = self.store.save_response(&response).await {
            tracing::warn!(error = %e, "could not store the rejection for its idempotency key");
        }
    }

    /// Snapshot + events after it.
    async fn load(&self, account_id: AccountId) -> Result<Account, CommandError> {
        let mut state = Account::default();
        if self.config.snapshot_every > 0 {
            if let Some(snapshot) = self.store.load_snapshot(account_id).await? {
                match serde_json::from_value::<Account>(snapshot.state) {
                    Ok(s) if s.version() == snapshot.version => state = s,
                    // An unreadable snapshot (older layout) is only a cache: replay instead.
                    _ => tracing::warn!(%account_id, "ignoring an unreadable snapshot"),
                }
            }
        }
        self.catch_up(account_id, state).await
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
        let state_json = match serde_json::to_value(state) {
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

/// Now, at the precision every store keeps (microseconds).
fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
