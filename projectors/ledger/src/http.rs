//! The ledger's query API (axum): JSON in snake_case, money in `*_minor` integers beside a
//! currency, times in RFC 3339 UTC, errors as `application/problem+json` naming the field.
//!
//! - `GET /v1/accounts/{id}`: one account, with the version the read model holds;
//! - `GET /v1/accounts/{id}/statement?from=&to=&cursor=&limit=`: its money movements,
//!   newest first, `from` inclusive, `to` exclusive;
//! - `GET /v1/accounts?status=&country=&cursor=&limit=`: accounts by id.
//!
//! Every endpoint needs `Authorization: Bearer <token>` of a caller with the `ledger:read`
//! scope (`[[auth.tokens]]`; 401 without an accepted token, 403 without the scope), since
//! the model holds names, emails and balances. Holder names and emails are masked
//! (`A. L.`, `a***@example.org`) for callers without the `pii` scope. Every endpoint honours
//! `Consistency-Token` (single-account ones also `min_version`): it waits for that version
//! before reading and answers `202 processing` with `Retry-After` if it does not arrive
//! within `wait_timeout_ms`, never stale data; at most `max_waiters` wait at once (503
//! `too_many_waits` beyond). Lists answer `{ "items": [...], "next_cursor": "..." | null }`
//! with signed cursors. Queries and waits read through the generation's own query pool,
//! never the projector's. `GET /openapi.json` (open, like the ops endpoints) describes the
//! API. Parameters, cursors, waits and the description come from the kit
//! ([`prism_projector::api`]); this file holds only the ledger's endpoints.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use prism_platform::auth::{self, Auth, Scopes};
use prism_platform::http::Problem;
use prism_projector::api::openapi::{self, BearerAuth};
use prism_projector::api::{
    country, invalid, one_of, page_limit, path_account_id, timestamp, CursorKey, Params, RawQuery,
    ReadYourWrites,
};
use prism_projector::consistency::{self, VersionLookup};
use prometheus::Registry;
use serde::Serialize;
use tokio::sync::watch;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::config::LedgerConfig;
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
    waits: ReadYourWrites,
    auth: Auth,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("model", &self.model)
            .field("page_size", &self.page_size)
            .field("max_page_size", &self.max_page_size)
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
        auth: Auth,
        progress: watch::Receiver<u64>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let max_page_size = config.max_page_size.max(1);
        let waits = ReadYourWrites::start(
            version_lookup(model.clone()),
            progress,
            config.max_waiters,
            Duration::from_millis(config.wait_timeout_ms),
            registry,
            crate::app::NAME,
        )?;
        Ok(Self {
            model,
            cursors: CursorKey::new(crate::app::NAME, &config.cursor_secret),
            page_size: config.page_size.clamp(1, max_page_size),
            max_page_size,
            waits,
            auth,
        })
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

/// The `/v1` routes, behind the bearer-token check, and `/openapi.json` (`/healthz`,
/// `/readyz` and `/metrics` are merged in by the kit's shell and stay open).
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
        .merge(openapi::router(&ApiDoc::openapi()))
}

/// The OpenAPI description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "prism-ledger",
        description = "Prism's ledger read model: accounts and their statements. Money is \
            integer minor units beside a currency, times are RFC 3339 UTC, errors are \
            application/problem+json naming the field. Send a command's Consistency-Token \
            to read your own write (202 processing if it does not arrive in time)."
    ),
    paths(list_accounts, get_account, get_statement),
    components(schemas(AccountView, StatementLine, StatementResponse, AccountList)),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

// ---------- responses ----------

#[derive(Debug, Serialize, ToSchema)]
struct StatementResponse {
    account_id: Uuid,
    currency: String,
    balance_minor: i64,
    /// The account version the read model holds; the lines are exactly those up to it.
    version: u64,
    items: Vec<StatementLine>,
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct AccountList {
    items: Vec<AccountView>,
    /// Send it back as `cursor` (with the same filters) for the next page; `null` at the
    /// end.
    next_cursor: Option<String>,
}

// ---------- handlers ----------

#[utoipa::path(get, path = "/v1/accounts/{id}",
    params(("id" = String, Path, description = "The account id (a UUID)"),
        ("min_version" = Option<u64>, Query, description = "Wait until this version is in the model"),
        ("Consistency-Token" = Option<String>, Header, description = "A command's token: wait for its version")),
    responses((status = 200, body = AccountView), (status = 202, description = "processing: the version has not arrived yet"),
        (status = 400, description = "a bad parameter (problem+json naming it)"), (status = 401), (status = 404)),
    security(("bearer" = [])))]
async fn get_account(
    State(state): State<ApiState>,
    Extension(scopes): Extension<Scopes>,
    id: Result<Path<String>, PathRejection>,
    query: RawQuery,
    headers: HeaderMap,
) -> Result<Json<AccountView>, Problem> {
    let id = path_account_id(id)?;
    let params = Params::new(query, &[consistency::MIN_VERSION])?;
    let target =
        consistency::target_for_account(&headers, id, params.get(consistency::MIN_VERSION))?;
    state.waits.wait(target).await?;
    let generation = state.model.current();
    query::account(&generation.reads, id)
        .await
        .map_err(|e| database_error(&e))?
        .map(|account| Json(account.shown_to(scopes)))
        .ok_or_else(|| account_not_found(id))
}

#[utoipa::path(get, path = "/v1/accounts/{id}/statement",
    params(("id" = String, Path, description = "The account id (a UUID)"),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("limit" = Option<u32>, Query, description = "Page size"),
        ("min_version" = Option<u64>, Query, description = "Wait until this version is in the model"),
        ("Consistency-Token" = Option<String>, Header, description = "A command's token: wait for its version")),
    responses((status = 200, body = StatementResponse, description = "Money movements, newest first"),
        (status = 202, description = "processing"), (status = 400), (status = 401), (status = 404)),
    security(("bearer" = [])))]
async fn get_statement(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    query: RawQuery,
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
    state.waits.wait(target).await?;
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

#[utoipa::path(get, path = "/v1/accounts",
    params(("status" = Option<String>, Query, description = "open, frozen or closed"),
        ("country" = Option<String>, Query, description = "ISO 3166-1 alpha-2"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("limit" = Option<u32>, Query, description = "Page size"),
        ("Consistency-Token" = Option<String>, Header, description = "A command's token: wait for its version")),
    responses((status = 200, body = AccountList, description = "Accounts by id"),
        (status = 202, description = "processing"), (status = 400), (status = 401)),
    security(("bearer" = [])))]
async fn list_accounts(
    State(state): State<ApiState>,
    Extension(scopes): Extension<Scopes>,
    query: RawQuery,
    headers: HeaderMap,
) -> Result<Json<AccountList>, Problem> {
    let params = Params::new(query, &["status", "country", "cursor", "limit"])?;
    let status = params.get("status").map(status).transpose()?;
    let country = params
        .get("country")
        .map(|c| country("country", c))
        .transpose()?;
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
    state.waits.wait(target).await?;
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
    Ok(Json(AccountList {
        items: page
            .accounts
            .into_iter()
            .map(|account| account.shown_to(scopes))
            .collect(),
        next_cursor,
    }))
}

// ---------- parameters ----------

impl ApiState {
    fn limit(&self, raw: Option<&str>) -> Result<u32, Problem> {
        page_limit(raw, self.page_size, self.max_page_size)
    }
}

fn status(raw: &str) -> Result<String, Problem> {
    one_of("status", raw, &STATUSES).map(str::to_owned)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn field(p: &Problem) -> Option<&str> {
        p.document().field.as_deref()
    }

    #[test]
    fn statuses_are_checked() {
        for s in STATUSES {
            assert_eq!(status(s).as_deref(), Ok(s));
        }
        for bad in ["OPEN", "active", "x"] {
            assert_eq!(field(&status(bad).expect_err(bad)), Some("status"));
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

    #[test]
    fn the_description_names_every_endpoint() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("JSON");
        for path in [
            "/v1/accounts",
            "/v1/accounts/{id}",
            "/v1/accounts/{id}/statement",
        ] {
            assert!(doc["paths"][path]["get"].is_object(), "{path}: {doc}");
        }
    }
}
