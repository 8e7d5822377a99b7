//! [`MemorySink`]: the [`Sink`] contract in memory, the reference the contract suite is
//! written against and the sink of the runtime's own tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use prism_events::{AccountEvent, Envelope};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{Batch, Sink, SinkError, StoredPosition};

/// A read model in memory: per account its status, balance and the events folded into it,
/// plus the runtime's bookkeeping (positions, versions, last errors). A write is checked
/// and folded on a copy of the state, which replaces the state only if all of it
/// succeeded: all or nothing, like a transaction.
///
/// Its fold is deliberately strict, so tests can provoke a [`SinkError::Rejected`]: an
/// account is opened once, every other event needs an opened account and the next version,
/// amounts are positive and the balance never overflows.
///
/// Switches stand in for a store's failures: [`MemorySink::set_unavailable`] (every call
/// answers [`SinkError::Transient`]) and [`MemorySink::set_refusing`] (writes answer
/// [`SinkError::Permanent`]). Every `apply` call is logged with its outcome.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    faults: Mutex<Faults>,
    attempts: Mutex<Vec<Attempt>>,
}

#[derive(Debug, Default)]
struct Faults {
    unavailable: bool,
    refusing: Option<String>,
}

/// One call of [`Sink::apply`] (any outcome), or a call of another method that failed
/// because the store was switched off: when, which, and how it ended (`ok`, or the
/// error's kind: `transient`, `permanent`, `fenced`, `rejected`).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: Instant,
    /// `apply`, `positions`, `versions` or `record_error`.
    pub call: &'static str,
    pub outcome: &'static str,
    /// Events in the batch (`apply` only).
    pub events: usize,
}

#[derive(Debug, Clone, Default)]
struct State {
    positions: BTreeMap<i32, StoredPosition>,
    versions: BTreeMap<Uuid, (u64, Uuid)>,
    accounts: BTreeMap<Uuid, AccountModel>,
    errors: BTreeMap<i32, (String, DateTime<Utc>)>,
}

#[derive(Debug, Clone)]
struct AccountModel {
    status: &'static str,
    balance: i64,
    version: u64,
    /// (version, event id, type, balance change), in version order.
    lines: Vec<(u64, Uuid, &'static str, i64)>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// While `true`, every call fails with [`SinkError::Transient`] (a store that is down).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.inner.faults.lock().unavailable = unavailable;
    }

    /// While `Some`, every `apply` fails with [`SinkError::Permanent`] (a store that refuses
    /// writes for good until an operator fixes it).
    pub fn set_refusing(&self, reason: Option<&str>) {
        self.inner.faults.lock().refusing = reason.map(str::to_owned);
    }

    /// Every `apply` call and every call refused while switched off, oldest first.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.inner.attempts.lock().clone()
    }

    /// The last error recorded for `partition` ([`Sink::record_error`]).
    pub fn last_error(&self, partition: i32) -> Option<String> {
        self.inner
            .state
            .lock()
            .errors
            .get(&partition)
            .map(|(e, _)| e.clone())
    }

    /// The stored position of `partition`, if any.
    pub fn position(&self, partition: i32) -> Option<StoredPosition> {
        self.inner.state.lock().positions.get(&partition).cloned()
    }

    /// The whole read model with the handled versions, canonical (sorted by account);
    /// positions and last errors are left out.
    pub fn snapshot(&self) -> Value {
        let state = self.inner.state.lock();
        let accounts: serde_json::Map<String, Value> = state
            .accounts
            .iter()
            .map(|(id, a)| {
                let lines: Vec<Value> = a
                    .lines
                    .iter()
                    .map(|(v, event, kind, change)| json!([v, event, kind, change]))
                    .collect();
                (
                    id.to_string(),
                    json!({ "status": a.status, "balance": a.balance, "version": a.version,
                            "lines": lines }),
                )
            })
            .collect();
        let versions: serde_json::Map<String, Value> = state
            .versions
            .iter()
            .map(|(id, (v, event))| (id.to_string(), json!([v, event])))
            .collect();
        json!({ "accounts": accounts, "versions": versions })
    }

    /// Fails `call` (logged) while the store is switched off.
    fn check_available(&self, call: &'static str) -> Result<(), SinkError> {
        if self.inner.faults.lock().unavailable {
            if call != "apply" {
                self.log(call, "transient", 0);
            }
            return Err(SinkError::Transient(
                "the in-memory store is switched off".into(),
            ));
        }
        Ok(())
    }

    fn log(&self, call: &'static str, outcome: &'static str, events: usize) {
        self.inner.attempts.lock().push(Attempt {
            at: Instant::now(),
            call,
            outcome,
            events,
        });
    }

    fn try_apply(&self, batch: &Batch) -> Result<(), SinkError> {
        self.check_available("apply")?;
        if let Some(reason) = self.inner.faults.lock().refusing.clone() {
            return Err(SinkError::Permanent(reason));
        }
        let mut state = self.inner.state.lock();
        if let Some(position) = &batch.position {
            let stored = state.positions.get(&position.partition).map(|p| p.offset);
            if stored != position.expected {
                return Err(SinkError::Fenced {
                    partition: position.partition,
                    stored,
                });
            }
        }
        let mut next = state.clone();
        for (index, envelope) in batch.events.iter().enumerate() {
            fold(&mut next.accounts, envelope)
                .map_err(|reason| SinkError::Rejected { index, reason })?;
        }
        for v in &batch.versions {
            next.versions.insert(v.account_id, (v.version, v.event_id));
        }
        if let Some(p) = &batch.position {
            next.positions.insert(
                p.partition,
                StoredPosition {
                    partition: p.partition,
                    offset: p.offset,
                    event_id: p.event_id,
                    event_time: p.event_time,
                },
            );
        }
        *state = next;
        Ok(())
    }
}

/// Folds one event into the accounts, or says why not.
fn fold(accounts: &mut BTreeMap<Uuid, AccountModel>, envelope: &Envelope) -> Result<(), String> {
    let id = envelope.account_id.0;
    let version = envelope.account_version;
    let kind = envelope.event_type();
    if let AccountEvent::AccountOpened(_) = envelope.event {
        if accounts.contains_key(&id) {
            return Err(format!("account {id} is already opened"));
        }
        if version != 1 {
            return Err(format!("account {id} opened at version {version}"));
        }
        accounts.insert(
            id,
            AccountModel {
                status: "open",
                balance: 0,
                version: 1,
                lines: vec![(1, envelope.id, kind, 0)],
            },
        );
        return Ok(());
    }
    let Some(account) = accounts.get_mut(&id) else {
        return Err(format!("account {id} was never opened"));
    };
    if version != account.version + 1 {
        return Err(format!(
            "account {id} is at version {}, the event has version {version}",
            account.version
        ));
    }
    let amount = match &envelope.event {
        AccountEvent::MoneyDeposited(e) => Some(e.amount_minor),
        AccountEvent::MoneyWithdrawn(e) => Some(e.amount_minor),
        AccountEvent::CardPaymentApproved(e) => Some(e.payment.amount_minor),
        AccountEvent::CardPaymentDeclined(e) => Some(e.payment.amount_minor),
        _ => None,
    };
    if let Some(amount) = amount.filter(|a| *a <= 0) {
        return Err(format!("amount {amount} is not positive"));
    }
    let change = envelope.event.balance_change();
    account.balance = account
        .balance
        .checked_add(change)
        .ok_or_else(|| format!("balance of account {id} overflows"))?;
    match envelope.event {
        AccountEvent::AccountFrozen(_) => account.status = "frozen",
        AccountEvent::AccountUnfrozen(_) => account.status = "open",
        AccountEvent::AccountClosed(_) => account.status = "closed",
        _ => {}
    }
    account.version = version;
    account.lines.push((version, envelope.id, kind, change));
    Ok(())
}

#[async_trait]
impl Sink for MemorySink {
    async fn positions(&self, partitions: &[i32]) -> Result<Vec<StoredPosition>, SinkError> {
        self.check_available("positions")?;
        let state = self.inner.state.lock();
        Ok(partitions
            .iter()
            .filter_map(|p| state.positions.get(p).cloned())
            .collect())
    }

    async fn versions(&self, accounts: &[Uuid]) -> Result<HashMap<Uuid, u64>, SinkError> {
        self.check_available("versions")?;
        let state = self.inner.state.lock();
        Ok(accounts
            .iter()
            .filter_map(|a| state.versions.get(a).map(|(v, _)| (*a, *v)))
            .collect())
    }

    async fn apply(&self, batch: &Batch) -> Result<(), SinkError> {
        let result = self.try_apply(batch);
        let outcome = match &result {
            Ok(()) => "ok",
            Err(SinkError::Transient(_)) => "transient",
            Err(SinkError::Permanent(_)) => "permanent",
            Err(SinkError::Fenced { .. }) => "fenced",
            Err(SinkError::Rejected { .. }) => "rejected",
        };
        self.log("apply", outcome, batch.events.len());
        result
    }

    async fn record_error(&self, partition: i32, error: &str) -> Result<(), SinkError> {
        self.check_available("record_error")?;
        self.inner
            .state
            .lock()
            .errors
            .insert(partition, (error.to_owned(), Utc::now()));
        Ok(())
    }
}
