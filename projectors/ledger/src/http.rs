//! The ledger's query API (axum): JSON in snake_case, money in `*_minor` integers beside a
//! currency, times in RFC 3339 UTC, errors as `application/problem+json` naming the field.
//!
//! - `GET /v1/accounts/{id}`: one account, with the version the read model holds;
//! - `GET /v1/accounts/{id}/statement?from=&to=&cursor=&limit=`: its money movements,
//!   newest first, `from` inclusive, `to` exclusive;
//! - `GET /v1/accounts?status=&country=&cursor=&limit=`: accounts by id.
//!
//! Every endpoint needs `Authorization: Bearer <token>` (`[ledger] tokens`; 401 without),
//! since the model holds names, emails and balances. Every endpoint honours
//! `Consistency-Token` (single-account ones also `min_version`): it waits for that version
//! before reading and answers `202 processing` with `Retry-After` if it does not arrive
//! within `wait_timeout_ms`, never stale data; at most `max_waiters` wait at once (503
//! `too_many_waits` beyond). Lists answer `{ "items": [...], "next_cursor": "..." | null }`
//! with signed cursors. Queries and waits read through the generation's own query pool,
//! never the projector's.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use prism_events::Country;
use prism_platform::auth::{self, Auth};
use prism_platform::config::LedgerConfig;
use prism_platform::http::Problem;
use prism_projector::consistency::{self, VersionLookup, WaitOutcome, WaitTarget, Waits};
use prometheus::Registry;
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::cursor::CursorKey;
use crate::query::{self, AccountView, AccountsQuery, StatementLine, StatementQuery};
use crate::store::{self, LiveModel};

/// Statuses an account can have in the ledger.
pub const STATUSES: [&str; 3] = ["open", "frozen", "closed"];

const STATEMENT_CURSOR: &str = "statement";
const ACCOUNTS_CURSOR: &str = "accounts";

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    model: LiveModel,
    cursors: CursorKey,
    page_size: u32,
    max_page_size: u32,
    wait_timeout: Duration,
    waits: Waits,
    auth: Auth,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("model", &self.model)
            .field("page_size", &self.page_size)
            .field("max_page_size", &self.max_page_size)
            .field("wait_timeout", &self.wait_timeout)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// `progress` is the runtime's "a batch was written" signal; waits also poll, so a
    /// receiver whose sender is gone (or never bumped) still works. The waits' metrics
    /// (`prism_projector_wait*`) go to `registry`. Starts the waits' shared watcher, so
    /// it must run inside a tokio runtime.
    pub fn new(
        model: LiveModel,
        config: &LedgerConfig,
        progress: watch::Receiver<u64>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let max_page_size = config.max_page_size.max(1);
        let waits = Waits::start(
            version_lookup(model.clone()),
            progress,
            config.max_waiters,
            registry,
            crate::app::NAME,
        )?;
        Ok(Self {
            model,
            cursors: CursorKey::new(&config.cursor_secret),
            page_size: config.page_size.clamp(1, max_page_size),
            max_page_size,
            wait_timeout: Duration::from_millis(config.wait_timeout_ms),
            waits,
            auth: Auth::new(config.auth_enabled, &config.tokens),
        })
    }

    /// Waits (if asked) until the account's version is in the read model.
    async fn wait(&self, target: Option<WaitTarget>) -> Result<(), Problem> {
        let Some(target) = target else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + self.wait_timeout;
        match self.waits.wait(target, deadline).await {
            Ok(WaitOutcome::Reached(_)) => Ok(()),
            Ok(WaitOutcome::TimedOut(reached)) => Err(consistency::processing(target, reached)),
            Err(e) => {
                if let consistency::WaitError::Lookup(cause) = &e {
                    tracing::warn!(error = %cause, "ledger wait: database unavailable");
                }
                Err(e.problem())
            }
        }
    }
}

/// The waits' lookup: the versions of the awaited accounts in the live generation, one
/// query on its query pool.
fn version_lookup(model: LiveModel) -> VersionLookup {
    Arc::new(move |accounts| {
        let reads = model.current().reads;
        Box::pin(async move {
            store::account_versions(&reads, &accounts)
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// The `/v1` routes, behind the bearer-token check (`/healthz`, `/readyz` and `/metrics`
/// are merged in by the binary and stay open).
pub fn router(state: ApiState) -> Router {
    let auth = state.auth.clone();
    Router::new()
        .route("/v1/accounts", get(list_accounts))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/accounts/{id}/statement", get(get_statement))
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_bearer,
        ))
        .with_state(state)
}

// ---------- responses ----------

#[derive(Debug, Serialize)]
struct StatementResponse {
    account_id: Uuid,
    currency: String,
    balance_minor: i64,
    /// The account version the read model holds; the lines are exactly those up to it.
    version: u64,
    items: Vec<StatementLine>,
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize)]
struct ListResponse<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

// ---------- handlers ----------

async fn get_account(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<AccountView>, Problem> {
    let id = path_account_id(id)?;
    let params = Params::new(query, &[consistency::MIN_VERSION])?;
    let target =
        consistency::target_for_account(&headers, id, params.get(consistency::MIN_VERSION))?;
    state.wait(target).await?;
    let generation = state.model.current();
    query::account(&generation.reads, id)
        .await
        .map_err(|e| database_error(&e))?
        .map(Json)
        .ok_or_else(|| account_not_found(id))
}

async fn get_statement(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<StatementResponse>, Problem> {
    let id = path_account_id(id)?;
    let params = Params::new(
        query,
        &["from", "to", "cursor", "limit", consistency::MIN_VERSION],
    )?;
    let from = params
        .get("from")
        .map(|v| timestamp("from", v))
        .transpose()?;
    let to = params.get("to").map(|v| timestamp("to", v)).transpose()?;
    if let (Some(from), Some(to)) = (from, to) {
        if from >= to {
            return Err(invalid(
                "to",
                "must be later than from (the range is [from, to))",
            ));
        }
    }
    let limit = state.limit(params.get("limit"))?;
    let scope = statement_scope(id, from, to);
    let before = params
        .get("cursor")
        .map(|c| state.cursors.open::<u64>(STATEMENT_CURSOR, &scope, c))
        .transpose()?;
    let target =
        consistency::target_for_account(&headers, id, params.get(consistency::MIN_VERSION))?;
    state.wait(target).await?;
    let generation = state.model.current();
    let page = query::statement(
        &generation.reads,
        id,
        StatementQuery {
            from,
            to,
            before,
            limit,
        },
    )
    .await
    .map_err(|e| database_error(&e))?
    .ok_or_else(|| account_not_found(id))?;
    let next_cursor = page
        .next
        .map(|version| state.cursors.seal(STATEMENT_CURSOR, &scope, &version));
    Ok(Json(StatementResponse {
        account_id: page.account.account_id,
        currency: page.account.currency,
        balance_minor: page.account.balance_minor,
        version: page.account.version,
        items: page.lines,
        next_cursor,
    }))
}

async fn list_accounts(
    State(state): State<ApiState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<ListResponse<AccountView>>, Problem> {
    let params = Params::new(query, &["status", "country", "cursor", "limit"])?;
    let status = params.get("status").map(status).transpose()?;
    let country = params.get("country").map(country).transpose()?;
    let limit = state.limit(params.get("limit"))?;
    let scope = format!(
        "status={}&country={}",
        status.as_deref().unwrap_or(""),
        country.as_deref().unwrap_or("")
    );
    let after = params
        .get("cursor")
        .map(|c| state.cursors.open::<Uuid>(ACCOUNTS_CURSOR, &scope, c))
        .transpose()?;
    let target = consistency::target_from_headers(&headers)?;
    state.wait(target).await?;
    let generation = state.model.current();
    let page = query::accounts(
        &generation.reads,
        &AccountsQuery {
            status,
            country,
            after,
            limit,
        },
    )
    .await
    .map_err(|e| database_error(&e))?;
    let next_cursor = page
        .next
        .map(|id| state.cursors.seal(ACCOUNTS_CURSOR, &scope, &id));
    Ok(Json(ListResponse {
        items: page.accounts,
        next_cursor,
    }))
}

// ---------- parameters ----------

/// The query string: each parameter at most once, only the endpoint's own; an empty value
/// counts as absent.
#[derive(Debug)]
struct Params(Vec<(String, String)>);

impl Params {
    fn new(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        allowed: &[&str],
    ) -> Result<Self, Problem> {
        let Query(pairs) = query.map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "Unreadable query string",
            )
            .detail(e.body_text())
        })?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let known = allowed.join(", ");
                return Err(invalid(
                    name,
                    format!("unknown query parameter; this endpoint takes: {known}"),
                ));
            }
            if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(invalid(name, "given more than once"));
            }
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.trim().is_empty())
            .map(|(_, v)| v.as_str())
    }
}

impl ApiState {
    fn limit(&self, raw: Option<&str>) -> Result<u32, Problem> {
        page_limit(raw, self.page_size, self.max_page_size)
    }
}

/// `limit`: 1 to `max`, `default` when absent.
fn page_limit(raw: Option<&str>, default: u32, max: u32) -> Result<u32, Problem> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    raw.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            invalid(
                "limit",
                format!("{raw:?} is not a page size from 1 to {max}"),
            )
        })
}

fn invalid(field: &str, detail: impl Into<String>) -> Problem {
    Problem::invalid_field(field, detail)
}

fn path_account_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, Problem> {
    let Path(raw) = path.map_err(|e| invalid("account_id", e.body_text()))?;
    account_id(&raw)
}

fn account_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw.trim()).map_err(|_| {
        invalid(
            "account_id",
            format!("{raw:?} is not an account id (a UUID)"),
        )
    })
}

/// An RFC 3339 time with its offset. A `+` that the query string decoded to a space is
/// taken back.
fn timestamp(field: &str, raw: &str) -> Result<DateTime<Utc>, Problem> {
    let raw = raw.trim();
    DateTime::parse_from_rfc3339(raw)
        .or_else(|e| match raw.rfind(' ') {
            Some(i) if i > 10 => {
                DateTime::parse_from_rfc3339(&format!("{}+{}", &raw[..i], &raw[i + 1..]))
            }
            _ => Err(e),
        })
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            invalid(
                field,
                format!("{raw:?} is not an RFC 3339 time such as 2024-05-01T00:00:00Z"),
            )
        })
}

fn status(raw: &str) -> Result<String, Problem> {
    STATUSES
        .iter()
        .find(|s| **s == raw)
        .map(|s| (*s).to_owned())
        .ok_or_else(|| {
            invalid(
                "status",
                format!("{raw:?} is not one of open, frozen, closed"),
            )
        })
}

fn country(raw: &str) -> Result<String, Problem> {
    Country::parse(raw)
        .map(|c| c.as_str().to_owned())
        .map_err(|e| invalid("country", e.to_string()))
}

/// What a statement cursor is bound to: the account and the time range.
fn statement_scope(id: Uuid, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    let time = |t: Option<DateTime<Utc>>| t.map(query::rfc3339).unwrap_or_default();
    format!(
        "account={}&from={}&to={}",
        id.simple(),
        time(from),
        time(to)
    )
}

// ---------- errors ----------

fn account_not_found(id: Uuid) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "account_not_found",
        "Account not found",
    )
    .field("account_id")
    .detail(format!("the ledger has no account {id}"))
}

/// The read model's database failed: 503 for what a retry may cure, 500 for the rest
/// (logged here, never shown).
fn database_error(e: &sqlx::Error) -> Problem {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Database(_) => {
            tracing::warn!(error = %e, "ledger query: database unavailable");
            Problem::unavailable("the ledger database is not answering; retry shortly")
        }
        _ => {
            tracing::error!(error = %e, "ledger query failed");
            Problem::internal()
        }
    }
}

/// A problem+json 404 for the binary's router fallback (`router` sets none, so that it
/// can be merged with other routes).
pub async fn not_found() -> Response {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "Not found")
        .detail("no such resource")
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(p: &Problem) -> Option<&str> {
        p.document().field.as_deref()
    }

    fn params(pairs: &[(&str, &str)], allowed: &[&str]) -> Result<Params, Problem> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Params::new(Ok(Query(pairs)), allowed)
    }

    #[test]
    fn unknown_and_repeated_parameters_are_named() {
        let err = params(&[("limit", "1"), ("sort", "x")], &["limit"]).expect_err("unknown");
        assert_eq!(field(&err), Some("sort"));
        let err = params(&[("limit", "1"), ("limit", "2")], &["limit"]).expect_err("twice");
        assert_eq!(field(&err), Some("limit"));
        let ok = params(&[("limit", " "), ("cursor", "c")], &["limit", "cursor"]).expect("ok");
        assert_eq!(ok.get("limit"), None);
        assert_eq!(ok.get("cursor"), Some("c"));
    }

    #[test]
    fn limits_are_from_one_to_the_maximum() {
        assert_eq!(page_limit(None, 50, 500), Ok(50));
        assert_eq!(page_limit(Some("1"), 50, 500), Ok(1));
        assert_eq!(page_limit(Some("500"), 50, 500), Ok(500));
        for bad in ["0", "501", "-1", "x", "1.5"] {
            let err = page_limit(Some(bad), 50, 500).expect_err(bad);
            assert_eq!(field(&err), Some("limit"), "{bad}");
        }
    }

    #[test]
    fn account_ids_are_uuids() {
        let id = Uuid::now_v7();
        assert_eq!(account_id(&id.to_string()), Ok(id));
        assert_eq!(account_id(&id.simple().to_string()), Ok(id));
        let err = account_id("nope").expect_err("bad id");
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(field(&err), Some("account_id"));
    }

    #[test]
    fn times_must_be_rfc3339() {
        let t = timestamp("from", "2024-05-01T10:00:00+02:00").expect("offset");
        assert_eq!(query::rfc3339(t), "2024-05-01T08:00:00.000000Z");
        // `+` decoded to a space by a careless client.
        assert_eq!(timestamp("from", "2024-05-01T10:00:00 02:00"), Ok(t));
        assert!(timestamp("from", "2024-05-01T08:00:00Z").is_ok());
        for bad in [
            "2024-05-01",
            "yesterday",
            "2024-05-01T08:00:00",
            "1714550400",
        ] {
            let err = timestamp("to", bad).expect_err(bad);
            assert_eq!(field(&err), Some("to"), "{bad}");
        }
    }

    #[test]
    fn statuses_and_countries_are_checked() {
        for s in STATUSES {
            assert_eq!(status(s).as_deref(), Ok(s));
        }
        for bad in ["OPEN", "active", "x"] {
            assert_eq!(field(&status(bad).expect_err(bad)), Some("status"));
        }
        assert_eq!(country("GB").as_deref(), Ok("GB"));
        for bad in ["gb", "XX", "GBR", "1"] {
            assert_eq!(field(&country(bad).expect_err(bad)), Some("country"));
        }
    }

    #[test]
    fn a_statement_cursor_is_bound_to_account_and_range() {
        let id = Uuid::now_v7();
        let t = timestamp("from", "2024-05-01T00:00:00Z").ok();
        assert_ne!(statement_scope(id, t, None), statement_scope(id, None, t));
        assert_ne!(
            statement_scope(id, None, None),
            statement_scope(Uuid::now_v7(), None, None)
        );
    }
}
