//! The dashboard's [`Sink`](prism_projector::Sink): one copy of the model in Redis, in the
//! kit's transactional Redis checkpoint ([`prism_projector::checkpoint::redis`]): `WATCH`
//! the partition's position, read the accounts the sink does not remember, check the
//! fence, fold, then the accounts, the increments and the position in one
//! `MULTI`/`EXEC`.
//!
//! Increments are not idempotent, so that transaction is what keeps a replay, a duplicate
//! or a fenced writer from double-counting. This module is the dashboard's part of it
//! ([`DashboardModel`]): an account is the hash `a:<id>` (`v` version, `c` currency, `s`
//! status), and a batch's other writes are its summed [`Writes`] (one `HINCRBY` per bucket
//! and field, however many events fall in it; top lists, distinct accounts, expiries, the
//! feed).
//!
//! [`RedisSink::prepare`] folds a batch into that transaction and [`RedisSink::write_raw`]
//! sends it as it is, without `WATCH`, reads or fence: the raw ceiling of
//! `prismctl bench dashboard`.

use prism_events::{Currency, Envelope};
use prism_projector::checkpoint::redis::{Accounts, Origin, RedisCheckpoint, RedisModel, Stored};
use prism_projector::SinkError;
use redis::Pipeline;
use uuid::Uuid;

use crate::fold::{fold, Account, Status};
use crate::model::{Keys, Writes};

/// The dashboard's sink.
pub type RedisSink = RedisCheckpoint<DashboardModel>;

/// One batch's transaction, folded ([`RedisSink::prepare`]).
pub type Prepared = prism_projector::checkpoint::redis::Prepared<DashboardModel>;

/// The dashboard's part of the Redis checkpoint: its keys, and what it writes.
#[derive(Debug, Clone)]
pub struct DashboardModel {
    keys: Keys,
    large_amount_minor: i64,
    feed_max: u32,
}

/// An account's stored fields: `HMGET a:<id> v c s`.
type AccountRow = (Option<u64>, Option<String>, Option<String>);

impl DashboardModel {
    pub fn new(keys: Keys, large_amount_minor: i64, feed_max: u32) -> Self {
        Self {
            keys,
            large_amount_minor,
            feed_max,
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

#[async_trait::async_trait]
impl RedisModel for DashboardModel {
    type Account = Account;
    type Writes = Writes;

    fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    fn read_account(&self, pipe: &mut Pipeline, id: Uuid) {
        pipe.cmd("HMGET")
            .arg(self.keys.account(id))
            .arg("v")
            .arg("c")
            .arg("s");
    }

    fn parse_account(&self, id: Uuid, value: &redis::Value) -> Result<Stored<Account>, SinkError> {
        let (version, currency, status): AccountRow = redis::from_redis_value(value)
            .map_err(|e| SinkError::Transient(format!("reading the accounts: {e}")))?;
        let version = version.unwrap_or(0);
        let account = match (currency.filter(|c| !c.is_empty()), status) {
            (Some(currency), Some(status)) => Some(Account {
                version,
                currency: Currency::parse(&currency)
                    .map_err(|e| SinkError::Permanent(format!("{}: {e}", self.keys.account(id))))?,
                status: Status::parse(&status).ok_or_else(|| {
                    SinkError::Permanent(format!(
                        "{} holds status {status:?}, which this build does not know",
                        self.keys.account(id)
                    ))
                })?,
            }),
            _ => None,
        };
        Ok(Stored { version, account })
    }

    fn version(account: &Account) -> u64 {
        account.version
    }

    /// Folds `events` onto `accounts` and sums what they write: pure, and what the
    /// benchmark's raw path precomputes.
    fn fold_batch(
        &self,
        accounts: &mut Accounts<Account>,
        events: &[Envelope],
        _origin: Origin<'_>,
    ) -> Result<Writes, SinkError> {
        let mut writes = Writes::default();
        for (index, event) in events.iter().enumerate() {
            let id = event.account_id.0;
            let current = accounts.get(&id).copied().flatten();
            if current.is_some_and(|a| a.version >= event.account_version) {
                continue;
            }
            let (account, effect) =
                fold(current.as_ref(), event).map_err(|r| SinkError::Rejected {
                    index,
                    reason: r.to_string(),
                })?;
            writes.add(&effect, self.large_amount_minor);
            accounts.insert(id, Some(account));
        }
        Ok(writes)
    }

    fn write_account(&self, tx: &mut Pipeline, id: Uuid, stored: &Stored<Account>) {
        tx.cmd("HSET")
            .arg(self.keys.account(id))
            .arg("v")
            .arg(stored.version)
            .arg("c")
            .arg(stored.account.as_ref().map_or("", |a| a.currency.as_str()))
            .arg("s")
            .arg(stored.account.map_or("", |a| a.status.as_str()))
            .ignore();
    }

    fn write_effects(&self, tx: &mut Pipeline, writes: &Writes) {
        add_increments(tx, writes, &self.keys, self.feed_max);
    }
}

/// `writes` as commands on copy `keys` (the raw path sends exactly these).
fn add_increments(pipe: &mut Pipeline, writes: &Writes, keys: &Keys, feed_max: u32) {
    let mut name = String::new();
    for ((grain, n), fields) in writes.bucket_counters() {
        let key = keys.counters(grain, n);
        for (field, by) in fields {
            name.clear();
            field.write_name(&mut name);
            pipe.cmd("HINCRBY").arg(&key).arg(&name).arg(by).ignore();
        }
        pipe.cmd("EXPIREAT")
            .arg(&key)
            .arg(keys.expires_at(grain, n))
            .ignore();
    }
    let status = keys.status();
    for (status_name, by) in writes.status_changes() {
        pipe.cmd("HINCRBY")
            .arg(&status)
            .arg(status_name.as_str())
            .arg(by)
            .ignore();
    }
    for ((top, (grain, n)), members) in writes.top_increments() {
        let key = keys.top(top, grain, n);
        for (member, by) in members {
            pipe.cmd("ZINCRBY").arg(&key).arg(by).arg(member).ignore();
        }
        pipe.cmd("EXPIREAT")
            .arg(&key)
            .arg(keys.top_expires_at(grain, n))
            .ignore();
    }
    let mut text = Uuid::encode_buffer();
    for ((grain, n), accounts) in writes.distinct_accounts() {
        let key = keys.distinct(grain, n);
        let cmd = pipe.cmd("PFADD").arg(&key);
        for id in accounts {
            cmd.arg(&*id.hyphenated().encode_lower(&mut text));
        }
        cmd.ignore();
        pipe.cmd("EXPIREAT")
            .arg(&key)
            .arg(keys.expires_at(grain, n))
            .ignore();
    }
    let feed = keys.feed();
    for entry in writes.feed() {
        let cmd = pipe
            .cmd("XADD")
            .arg(&feed)
            .arg("MAXLEN")
            .arg("=")
            .arg(feed_max)
            .arg("*");
        for (field, value) in &entry.fields {
            cmd.arg(*field).arg(value);
        }
        cmd.ignore();
    }
}
