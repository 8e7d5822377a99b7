//! The reads of the query API, against one copy (generation) of the ledger read model.
//!
//! Account ids are `BINARY(16)` (sqlx binds a `Uuid` as its 16 bytes); money is `BIGINT`
//! minor units beside the account's currency; times are UTC `DATETIME(6)`, served as
//! RFC 3339. Lists page by keyset: each page fetches one row more than it returns to know
//! whether another page exists.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use prism_platform::auth::{Scope, Scopes};
use prism_platform::pii;
use serde::Serialize;
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};
use uuid::Uuid;

/// RFC 3339, UTC, microseconds (what the model stores).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn time(naive: NaiveDateTime) -> String {
    rfc3339(naive.and_utc())
}

/// An account as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    pub account_id: Uuid,
    pub holder_name: String,
    pub email: String,
    pub country: String,
    pub currency: String,
    /// `open`, `frozen` or `closed`.
    pub status: String,
    pub balance_minor: i64,
    pub daily_withdrawal_limit_minor: i64,
    pub frozen_reason: Option<String>,
    pub opened_at: String,
    pub updated_at: String,
    pub closed_at: Option<String>,
    /// Version of the last event of the account folded into this view.
    pub version: u64,
}

const ACCOUNT_COLUMNS: &str = "account_id, holder_name, email, country, currency, status, \
     balance_minor, daily_withdrawal_limit_minor, frozen_reason, opened_at, updated_at, \
     closed_at, version";

impl AccountView {
    /// The account as a caller with `scopes` may see it: holder name and email masked
    /// without the `pii` scope.
    pub fn shown_to(self, scopes: Scopes) -> Self {
        if scopes.has(Scope::Pii) {
            return self;
        }
        Self {
            holder_name: pii::mask_name(&self.holder_name),
            email: pii::mask_email(&self.email),
            ..self
        }
    }
}

fn account_row(row: &MySqlRow) -> Result<AccountView, sqlx::Error> {
    Ok(AccountView {
        account_id: row.try_get("account_id")?,
        holder_name: row.try_get("holder_name")?,
        email: row.try_get("email")?,
        country: row.try_get("country")?,
        currency: row.try_get("currency")?,
        status: row.try_get("status")?,
        balance_minor: row.try_get("balance_minor")?,
        daily_withdrawal_limit_minor: row.try_get("daily_withdrawal_limit_minor")?,
        frozen_reason: row.try_get("frozen_reason")?,
        opened_at: time(row.try_get("opened_at")?),
        updated_at: time(row.try_get("updated_at")?),
        closed_at: row
            .try_get::<Option<NaiveDateTime>, _>("closed_at")?
            .map(time),
        version: row.try_get("version")?,
    })
}

async fn account_in<'e, E>(executor: E, id: Uuid) -> Result<Option<AccountView>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = MySql>,
{
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ?");
    match sqlx::query(&sql).bind(id).fetch_optional(executor).await? {
        Some(row) => account_row(&row).map(Some),
        None => Ok(None),
    }
}

/// One account, `None` if the ledger does not know it.
pub async fn account(pool: &MySqlPool, id: Uuid) -> Result<Option<AccountView>, sqlx::Error> {
    account_in(pool, id).await
}

/// One money movement of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StatementLine {
    /// The account version of the event that made this line.
    pub version: u64,
    pub event_id: Uuid,
    /// `deposit`, `withdrawal` or `card_payment`.
    pub kind: String,
    /// Signed: credits positive, debits negative.
    pub amount_minor: i64,
    pub balance_after_minor: i64,
    pub currency: String,
    pub description: Option<String>,
    pub channel: Option<String>,
    pub merchant_name: Option<String>,
    pub merchant_category: Option<String>,
    pub merchant_country: Option<String>,
    pub occurred_at: String,
}

/// What a statement request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementQuery {
    /// Lines with `occurred_at >= from`.
    pub from: Option<DateTime<Utc>>,
    /// Lines with `occurred_at < to`.
    pub to: Option<DateTime<Utc>>,
    /// Lines with `version < before` (the cursor: last version of the previous page).
    pub before: Option<u64>,
    pub limit: u32,
}

/// A page of an account's statement, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementPage {
    pub account: AccountView,
    pub lines: Vec<StatementLine>,
    /// Version of the last line returned, when more lines follow.
    pub next: Option<u64>,
}

/// Starts a read-only transaction that reads one snapshot of the whole model. Generation
/// pools run their sessions at READ COMMITTED (the sink's locking reads must take no gap
/// locks), where every statement sees the latest commits and MySQL/MariaDB ignore `WITH
/// CONSISTENT SNAPSHOT`; so the next transaction is set to REPEATABLE READ first, in the same
/// round trip (`SET TRANSACTION` without `SESSION` applies to that one transaction only, and
/// the session goes back to READ COMMITTED after it).
pub const BEGIN_SNAPSHOT: &str = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
     START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";

/// A page of an account's statement, `None` if the ledger does not know the account. The
/// account and its lines are read in one snapshot ([`BEGIN_SNAPSHOT`]), so the account's
/// `version` and balance describe exactly the lines returned: no line is newer than the
/// version, and the newest line's `balance_after_minor` is the balance when it is the
/// account's last money event.
pub async fn statement(
    pool: &MySqlPool,
    id: Uuid,
    query: StatementQuery,
) -> Result<Option<StatementPage>, sqlx::Error> {
    let mut tx = pool.begin_with(BEGIN_SNAPSHOT).await?;
    let Some(account) = account_in(&mut *tx, id).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    let mut sql = QueryBuilder::<MySql>::new(
        "SELECT version, event_id, kind, amount_minor, balance_after_minor, description, \
         channel, merchant_name, merchant_category, merchant_country, occurred_at \
         FROM statement_lines WHERE account_id = ",
    );
    sql.push_bind(id);
    if let Some(from) = query.from {
        sql.push(" AND occurred_at >= ").push_bind(from.naive_utc());
    }
    if let Some(to) = query.to {
        sql.push(" AND occurred_at < ").push_bind(to.naive_utc());
    }
    if let Some(before) = query.before {
        sql.push(" AND version < ").push_bind(before);
    }
    sql.push(" ORDER BY version DESC LIMIT ")
        .push_bind(u64::from(query.limit) + 1);
    let rows = sql.build().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let mut lines = rows
        .iter()
        .map(|row| {
            Ok(StatementLine {
                version: row.try_get("version")?,
                event_id: row.try_get("event_id")?,
                kind: row.try_get("kind")?,
                amount_minor: row.try_get("amount_minor")?,
                balance_after_minor: row.try_get("balance_after_minor")?,
                currency: account.currency.clone(),
                description: row.try_get("description")?,
                channel: row.try_get("channel")?,
                merchant_name: row.try_get("merchant_name")?,
                merchant_category: row.try_get("merchant_category")?,
                merchant_country: row.try_get("merchant_country")?,
                occurred_at: time(row.try_get("occurred_at")?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let next = page_end(&mut lines, query.limit, |line| line.version);
    Ok(Some(StatementPage {
        account,
        lines,
        next,
    }))
}

/// What an account listing asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountsQuery {
    /// `open`, `frozen` or `closed` (validated by the caller).
    pub status: Option<String>,
    /// ISO 3166-1 alpha-2 (validated by the caller).
    pub country: Option<String>,
    /// Accounts with `account_id > after` (the cursor: last id of the previous page).
    pub after: Option<Uuid>,
    pub limit: u32,
}

/// A page of accounts in `account_id` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountsPage {
    pub accounts: Vec<AccountView>,
    /// Id of the last account returned, when more follow.
    pub next: Option<Uuid>,
}

pub async fn accounts(
    pool: &MySqlPool,
    query: &AccountsQuery,
) -> Result<AccountsPage, sqlx::Error> {
    let mut sql = QueryBuilder::<MySql>::new(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE 1 = 1"
    ));
    if let Some(status) = &query.status {
        sql.push(" AND status = ").push_bind(status.clone());
    }
    if let Some(country) = &query.country {
        sql.push(" AND country = ").push_bind(country.clone());
    }
    if let Some(after) = query.after {
        sql.push(" AND account_id > ").push_bind(after);
    }
    sql.push(" ORDER BY account_id LIMIT ")
        .push_bind(u64::from(query.limit) + 1);
    let rows = sql.build().fetch_all(pool).await?;
    let mut accounts = rows
        .iter()
        .map(account_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = page_end(&mut accounts, query.limit, |a| a.account_id);
    Ok(AccountsPage { accounts, next })
}

/// Cuts a `limit + 1` fetch to `limit` items; the key of the last item kept when more
/// followed.
fn page_end<T, K>(items: &mut Vec<T>, limit: u32, key: impl Fn(&T) -> K) -> Option<K> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() > limit {
        items.truncate(limit);
        items.last().map(key)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_cut_at_its_limit_and_names_its_last_key() {
        let mut items = vec![5, 4, 3];
        assert_eq!(page_end(&mut items, 2, |v| *v), Some(4));
        assert_eq!(items, [5, 4]);
        let mut items = vec![5, 4];
        assert_eq!(page_end(&mut items, 2, |v| *v), None);
        assert_eq!(items, [5, 4]);
    }

    #[test]
    fn times_are_rfc3339_utc_with_microseconds() {
        let t = DateTime::parse_from_rfc3339("2024-03-01T10:00:00.5+02:00")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(rfc3339(t), "2024-03-01T08:00:00.500000Z");
    }
}
