//! The HTTP API (axum): JSON in snake_case, money in `*_minor` integers beside a currency,
//! errors as `application/problem+json`.
//!
//! Request bodies are parsed by the platform's `JsonBody`, which names the offending field
//! of any malformed input; every handler then validates fields before the aggregate sees a
//! command. No input reaches a 500: store failures are 503 with `Retry-After`, panics are
//! caught and logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prism_events::event::{CardChannel, CardPayment, WithdrawalChannel};
use prism_events::{AccountEvent, AccountId, Country, Currency};
use prism_platform::auth::Principal;
use prism_platform::http::{render_metrics, JsonBody, Problem};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::account::{
    Account, Command, DepositMoney, FreezeAccount, OpenAccount, PayByCard, PaymentLookup,
    Rejection, ReportFraud, Status, WithdrawMoney,
};
use crate::metrics::Metrics;
use crate::relay::{RelayAdmin, RelayStatus};
use crate::service::{Accepted, CommandError, CommandService, Meta};
use crate::store::IdempotencyMark;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<CommandService>,
    pub metrics: Metrics,
    /// `/v1`: callers with the `commands` scope.
    pub auth: Auth,
    /// `/v1/admin`: callers with the `admin` scope.
    pub admin_auth: Auth,
    pub readiness: Readiness,
    /// Who this instance is, for the admin status.
    pub instance: Instance,
}

/// This running instance, as `GET /v1/admin/status` names it.
#[derive(Debug, Clone)]
pub struct Instance {
    /// `prism-command/<host>/<pid>/<random>`: unique per running instance.
    pub id: String,
    /// The topic the relay publishes to.
    pub topic: String,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// Bearer-token authentication for `/v1` (shared with the projectors' query APIs).
pub use prism_platform::auth::Auth;

/// What `/readyz` checks: the event store answers. Kafka is not checked: commands never
/// need it (the store is the outbox), so a Kafka outage must not take the write side out
/// of rotation. The relay's state (backlog, its age, Kafka's availability) is reported in
/// the body as a detail, `degraded` while it cannot publish.
#[derive(Clone)]
pub struct Readiness {
    pub store: Arc<dyn crate::store::EventStore>,
    /// `None` when the relay is disabled.
    pub relay: Option<RelayStatus>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    async fn check(&self) -> Result<(), String> {
        let limit = Duration::from_secs(2);
        match tokio::time::timeout(
            limit,
            self.store.load_snapshot(AccountId(uuid::Uuid::nil())),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("event store: {e}")),
            Err(_) => Err("event store: no answer within 2s".into()),
        }
    }

    /// The relay's detail for `/readyz`'s body.
    fn relay_detail(&self) -> serde_json::Value {
        match &self.relay {
            Some(status) => serde_json::to_value(status.report()).unwrap_or_else(
                |e| serde_json::json!({ "state": "unknown", "problem": e.to_string() }),
            ),
            None => serde_json::json!({ "state": "disabled" }),
        }
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/accounts", post(open_account))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/accounts/{id}/deposits", post(deposit))
        .route("/v1/accounts/{id}/withdrawals", post(withdraw))
        .route("/v1/accounts/{id}/payments", post(pay))
        .route("/v1/accounts/{id}/freeze", post(freeze))
        .route("/v1/accounts/{id}/unfreeze", post(unfreeze))
        .route("/v1/accounts/{id}/close", post(close))
        .route(
            "/v1/accounts/{id}/payments/{event_id}/fraud-reports",
            post(report_fraud),
        )
        .route_layer(middleware::from_fn_with_state(
            state.auth.clone(),
            prism_platform::auth::require_bearer,
        ));
    let admin = Router::new()
        .route("/v1/admin/status", get(admin_status))
        .route_layer(middleware::from_fn_with_state(
            state.admin_auth.clone(),
            prism_platform::auth::require_bearer,
        ));
    Router::new()
        .merge(v1)
        .merge(admin)
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked");
                Problem::internal().into_response()
            },
        ))
        // Outermost: one line per request, whatever answered it; its correlation id (the
        // caller's X-Correlation-Id or one made up there) is the one the events carry.
        .layer(middleware::from_fn(prism_platform::http::log_requests))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

// ---------- request plumbing ----------

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // The matched route template, never the raw path (bounded label values).
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

/// A command on an existing account: its id from the path, the caller, the request's
/// metadata (correlation, causation, idempotency) and the parsed body.
struct AccountCommand<T> {
    account: AccountId,
    /// The path's `event_id` (a fraud report's payment), parsed; `None` on other routes.
    event_id: Option<Uuid>,
    meta: Meta,
    body: T,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for AccountCommand<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let Path(mut params) =
            Path::<HashMap<String, String>>::from_request_parts(&mut parts, state)
                .await
                .map_err(|e| invalid("account_id", e.body_text()))?;
        let id = params.remove("id").unwrap_or_default();
        let account = account_id(&id)?;
        let event_id = params
            .remove("event_id")
            .map(|raw| payment_event_id(&raw))
            .transpose()?;
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(Problem::internal)?;
        // The canonical path (the ids as parsed) keys the idempotency hash.
        let path = canonical_path(
            parts.uri.path(),
            &account.to_string(),
            event_id.map(|id| id.to_string()).as_deref(),
        );
        let headers = parts.headers.clone();
        let body = JsonBody::<T>::from_request(Request::from_parts(parts, body), state).await?;
        let meta = meta(&Method::POST, &path, &headers, &principal, &body.raw)?;
        Ok(Self {
            account,
            event_id,
            meta,
            body: body.value,
        })
    }
}

fn invalid(field: &str, detail: impl Into<String>) -> Problem {
    Problem::invalid_field(field, detail)
}

fn account_id(raw: &str) -> Result<AccountId, Problem> {
    raw.parse().map_err(|_| {
        invalid(
            "account_id",
            format!("{raw:?} is not an account id (a UUID)"),
        )
    })
}

fn payment_event_id(raw: &str) -> Result<Uuid, Problem> {
    raw.parse().map_err(|_| {
        invalid(
            "event_id",
            format!("{raw:?} is not a payment's event id (a UUID)"),
        )
    })
}

fn text(field: &str, value: String, max_chars: usize) -> Result<String, Problem> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if trimmed.chars().count() > max_chars {
        return Err(invalid(field, format!("at most {max_chars} characters")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

fn optional_text(
    field: &str,
    value: Option<String>,
    max_chars: usize,
) -> Result<Option<String>, Problem> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => text(field, v, max_chars).map(Some),
    }
}

fn amount(field: &str, value: i64) -> Result<i64, Problem> {
    if value <= 0 {
        return Err(invalid(
            field,
            "must be a positive integer amount in minor units",
        ));
    }
    Ok(value)
}

fn email(value: String) -> Result<String, Problem> {
    let value = text("email", value, 254)?;
    let valid = value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && domain.contains('.')
            && !value.contains(char::is_whitespace)
            && value.matches('@').count() == 1
    });
    if !valid {
        return Err(invalid("email", "not an email address"));
    }
    Ok(value)
}

/// Per-request metadata: correlation, causation, idempotency.
fn meta(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    principal: &Principal,
    raw_body: &[u8],
) -> Result<Meta, Problem> {
    // `log_requests` puts a made-up one on a request without it, and logs it.
    let correlation_id = match headers.get(prism_platform::http::CORRELATION_ID) {
        Some(v) => {
            let v = v
                .to_str()
                .ok()
                .filter(|s| prism_platform::http::valid_correlation_id(s))
                .ok_or_else(|| invalid("X-Correlation-Id", "1 to 128 visible ASCII characters"))?;
            v.to_owned()
        }
        None => uuid::Uuid::now_v7().to_string(),
    };
    let idempotency = match headers.get("idempotency-key") {
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|s| {
                    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| invalid("Idempotency-Key", "1 to 255 visible ASCII characters"))?;
            let mut hash = Sha256::new();
            hash.update(method.as_str().as_bytes());
            hash.update(b" ");
            hash.update(path.as_bytes());
            hash.update(b"\n");
            hash.update(raw_body);
            Some(IdempotencyMark {
                key: format!("{}:{key}", principal.0),
                request_hash: hex::encode(hash.finalize()),
            })
        }
        None => None,
    };
    Ok(Meta {
        correlation_id: Some(correlation_id),
        causation_id: Some(uuid::Uuid::now_v7().to_string()),
        idempotency,
    })
}

// ---------- bodies ----------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountRequest {
    #[schema(example = "Ada Lovelace")]
    pub holder_name: String,
    #[schema(example = "ada@example.org")]
    pub email: String,
    /// ISO 3166-1 alpha-2.
    #[schema(example = "GB")]
    pub country: String,
    /// ISO 4217; every amount of the account is in its minor units.
    #[schema(example = "GBP")]
    pub currency: String,
    /// Default: 5,000 major units of the currency.
    #[serde(default)]
    pub daily_withdrawal_limit_minor: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepositRequest {
    #[schema(example = 2500)]
    pub amount_minor: i64,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalRequest {
    pub amount_minor: i64,
    #[serde(default)]
    pub description: Option<String>,
    /// `atm`, `branch` or `online`.
    #[schema(example = "atm")]
    pub channel: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    pub amount_minor: i64,
    #[schema(example = "Café Rosa")]
    pub merchant_name: String,
    /// ISO 18245 merchant category code, 4 digits.
    #[schema(example = "5814")]
    pub merchant_category: String,
    /// ISO 3166-1 alpha-2.
    #[schema(example = "PT")]
    pub merchant_country: String,
    /// `pos` or `online`.
    #[schema(example = "pos")]
    pub channel: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeRequest {
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FraudReportRequest {
    /// Why the payment is reported (at most 500 characters).
    #[schema(example = "Cardholder does not recognise the payment")]
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

/// The answer to every accepted command.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandResponse {
    pub account_id: String,
    /// The account's version after this command.
    pub version: u64,
    pub event_ids: Vec<String>,
    /// Send as `Consistency-Token` to a read model to wait until it shows this write.
    pub consistency_token: String,
    /// Payments only: `approved` or `declined`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<String>,
}

/// The write-side state of an account (for debugging; read models serve queries).
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountResponse {
    pub account_id: String,
    /// `open`, `frozen` or `closed`.
    pub status: String,
    pub holder_name: String,
    pub email: String,
    pub country: String,
    pub currency: String,
    pub balance_minor: i64,
    pub daily_withdrawal_limit_minor: i64,
    /// Withdrawn so far on today's UTC date.
    pub withdrawn_today_minor: i64,
    pub version: u64,
    pub opened_at: Option<String>,
    pub updated_at: Option<String>,
}

// ---------- handlers ----------

fn accepted_response(accepted: &Accepted, status: StatusCode) -> Response {
    let mut decision = None;
    let mut decline_reason = None;
    for envelope in &accepted.events {
        match &envelope.event {
            AccountEvent::CardPaymentApproved(_) => decision = Some("approved".to_owned()),
            AccountEvent::CardPaymentDeclined(d) => {
                decision = Some("declined".to_owned());
                decline_reason = Some(d.decline_reason.as_str().to_owned());
            }
            _ => {}
        }
    }
    let body = CommandResponse {
        account_id: accepted.account_id.to_string(),
        version: accepted.version,
        event_ids: accepted.events.iter().map(|e| e.id.to_string()).collect(),
        consistency_token: accepted.token().to_string(),
        decision,
        decline_reason,
    };
    let mut response = (status, Json(body)).into_response();
    if accepted.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if let Ok(token) = HeaderValue::from_str(&accepted.token().to_string()) {
        response.headers_mut().insert("consistency-token", token);
    }
    response
}

fn command_error(error: CommandError) -> Problem {
    match error {
        CommandError::Rejected(rejection) => rejection_problem(&rejection),
        CommandError::StoredRejection(stored) => {
            let code = stored.body["code"]
                .as_str()
                .unwrap_or("rejected")
                .to_owned();
            let status =
                StatusCode::from_u16(stored.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            let mut problem = Problem::new(status, &code, rejection_title(&code));
            if let Some(detail) = stored.body["detail"].as_str() {
                problem = problem.detail(detail);
            }
            problem
        }
        CommandError::Conflict(account_id) => {
            Problem::new(StatusCode::CONFLICT, "conflict", "Concurrent update")
                .detail(format!(
                    "account {account_id} kept changing under this command; retry it"
                ))
                .retry_after(1)
        }
        CommandError::IdempotencyMismatch => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "Idempotency key reused",
        )
        .detail("this Idempotency-Key was already used for a different request"),
        CommandError::KeyInProgress => Problem::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_progress",
            "Idempotency key in use",
        )
        .detail("another request with this Idempotency-Key is still being handled; retry it")
        .retry_after(1),
        CommandError::Store(e) => {
            tracing::error!(error = %e, "event store failure");
            Problem::unavailable("the event store is not answering; retry shortly")
        }
    }
}

/// `/v1/accounts/{id}/<action>` (or `/v1/accounts/{id}/payments/{event_id}/<action>`) with
/// the id segments as parsed, whatever their spelling in the URI (letter case,
/// percent-encoding), so an honest retry hashes the same.
fn canonical_path(raw: &str, account_id: &str, event_id: Option<&str>) -> String {
    let mut segments: Vec<&str> = raw.split('/').collect();
    if let Some(segment) = segments.get_mut(3) {
        *segment = account_id;
    }
    if let (Some(event_id), Some(segment)) = (event_id, segments.get_mut(5)) {
        *segment = event_id;
    }
    segments.join("/")
}

/// The problem title of a rejection's code, live or replayed from a stored answer.
fn rejection_title(code: &str) -> &'static str {
    match code {
        "invalid_amount" | "invalid_limit" | "invalid_field" => "Invalid request field",
        "account_not_found" => "Account not found",
        "payment_not_found" => "Payment not found",
        "payment_already_reported" => "Already reported",
        _ => "Command rejected",
    }
}

fn rejection_problem(rejection: &Rejection) -> Problem {
    let status =
        StatusCode::from_u16(rejection.http_status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    let problem = Problem::new(status, rejection.code(), rejection_title(rejection.code()))
        .detail(rejection.to_string());
    match rejection.field() {
        Some(field) if rejection.is_invalid_input() => problem.field(field),
        _ => problem,
    }
}

async fn run(
    state: &AppState,
    account_id: AccountId,
    command: Command,
    meta: Meta,
    status: StatusCode,
) -> Response {
    // A new account is a resource of its own; a fraud report (also 201) has none to point at.
    let locate = matches!(command, Command::Open(_));
    match state.service.execute(account_id, command, meta).await {
        Ok(accepted) => {
            let mut response = accepted_response(&accepted, status);
            if status == StatusCode::CREATED && locate {
                if let Ok(location) =
                    HeaderValue::from_str(&format!("/v1/accounts/{}", accepted.account_id))
                {
                    response.headers_mut().insert(header::LOCATION, location);
                }
            }
            response
        }
        Err(e) => command_error(e).into_response(),
    }
}

#[utoipa::path(post, path = "/v1/accounts", request_body = OpenAccountRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key"),
           ("X-Correlation-Id" = Option<String>, Header, description = "Carried into the events")),
    responses((status = 201, body = CommandResponse), (status = 400), (status = 401), (status = 413), (status = 422)),
    security(("bearer" = [])))]
async fn open_account(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    headers: HeaderMap,
    body: JsonBody<OpenAccountRequest>,
) -> Result<Response, Problem> {
    let meta = meta(
        &Method::POST,
        "/v1/accounts",
        &headers,
        &principal,
        &body.raw,
    )?;
    let r = body.value;
    let command = Command::Open(OpenAccount {
        holder_name: text("holder_name", r.holder_name, 200)?,
        email: email(r.email)?,
        country: Country::parse(&r.country).map_err(|e| invalid("country", e.to_string()))?,
        currency: Currency::parse(&r.currency).map_err(|e| invalid("currency", e.to_string()))?,
        daily_withdrawal_limit_minor: match r.daily_withdrawal_limit_minor {
            Some(limit) if limit < 0 => {
                return Err(invalid(
                    "daily_withdrawal_limit_minor",
                    "must not be negative",
                ))
            }
            other => other,
        },
    });
    Ok(run(
        &state,
        AccountId::generate(),
        command,
        meta,
        StatusCode::CREATED,
    )
    .await)
}

#[utoipa::path(post, path = "/v1/accounts/{id}/deposits", request_body = DepositRequest,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandResponse), (status = 400), (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
async fn deposit(
    State(state): State<AppState>,
    request: AccountCommand<DepositRequest>,
) -> Result<Response, Problem> {
    let r = request.body;
    let command = Command::Deposit(DepositMoney {
        amount_minor: amount("amount_minor", r.amount_minor)?,
        description: optional_text("description", r.description, 500)?,
    });
    Ok(run(
        &state,
        request.account,
        command,
        request.meta,
        StatusCode::OK,
    )
    .await)
}

#[utoipa::path(post, path = "/v1/accounts/{id}/withdrawals", request_body = WithdrawalRequest,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandResponse), (status = 400), (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
async fn withdraw(
    State(state): State<AppState>,
    request: AccountCommand<WithdrawalRequest>,
) -> Result<Response, Problem> {
    let r = request.body;
    let channel = match r.channel.as_str() {
        "atm" => WithdrawalChannel::Atm,
        "branch" => WithdrawalChannel::Branch,
        "online" => WithdrawalChannel::Online,
        other => {
            return Err(invalid(
                "channel",
                format!("{other:?} is not one of atm, branch, online"),
            ))
        }
    };
    let command = Command::Withdraw(WithdrawMoney {
        amount_minor: amount("amount_minor", r.amount_minor)?,
        description: optional_text("description", r.description, 500)?,
        channel,
    });
    Ok(run(
        &state,
        request.account,
        command,
        request.meta,
        StatusCode::OK,
    )
    .await)
}

#[utoipa::path(post, path = "/v1/accounts/{id}/payments", request_body = PaymentRequest,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandResponse, description = "Approved or declined (see decision)"),
              (status = 400), (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
async fn pay(
    State(state): State<AppState>,
    request: AccountCommand<PaymentRequest>,
) -> Result<Response, Problem> {
    let r = request.body;
    let channel = match r.channel.as_str() {
        "pos" => CardChannel::Pos,
        "online" => CardChannel::Online,
        other => {
            return Err(invalid(
                "channel",
                format!("{other:?} is not one of pos, online"),
            ))
        }
    };
    if r.merchant_category.len() != 4 || !r.merchant_category.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "merchant_category",
            "a merchant category code is 4 digits",
        ));
    }
    let command = Command::PayByCard(PayByCard {
        payment: CardPayment {
            amount_minor: amount("amount_minor", r.amount_minor)?,
            merchant_name: text("merchant_name", r.merchant_name, 200)?,
            merchant_category: r.merchant_category,
            merchant_country: Country::parse(&r.merchant_country)
                .map_err(|e| invalid("merchant_country", e.to_string()))?,
            channel,
        },
    });
    Ok(run(
        &state,
        request.account,
        command,
        request.meta,
        StatusCode::OK,
    )
    .await)
}

#[utoipa::path(post, path = "/v1/accounts/{id}/freeze", request_body = FreezeRequest,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandResponse), (status = 400), (status = 404), (status = 422)),
    security(("bearer" = [])))]
async fn freeze(
    State(state): State<AppState>,
    request: AccountCommand<FreezeRequest>,
) -> Result<Response, Problem> {
    let command = Command::Freeze(FreezeAccount {
        reason: text("reason", request.body.reason, 500)?,
    });
    Ok(run(
        &state,
        request.account,
        command,
        request.meta,
        StatusCode::OK,
    )
    .await)
}

/// Reports one of the account's card payments (approved or declined) as fraud: the label the
/// fraud features learn from. Taken on open, frozen and closed accounts; once per payment.
#[utoipa::path(post, path = "/v1/accounts/{id}/payments/{event_id}/fraud-reports",
    request_body = FraudReportRequest,
    params(("id" = String, Path),
        ("event_id" = String, Path, description = "The event id of the account's `CardPaymentApproved` or `CardPaymentDeclined` (a UUID)"),
        ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = CommandResponse, description = "The report is stored (`PaymentReportedFraudulent`)"),
        (status = 400, description = "a malformed field: `reason` (required, at most 500 characters), `event_id`, `account_id`"),
        (status = 401),
        (status = 404, description = "`account_not_found`, or `payment_not_found`: no card payment of the account has this event id"),
        (status = 409, description = "`payment_already_reported`; or a concurrent update / idempotency key in progress (retry)"),
        (status = 422, description = "`idempotency_key_reused`")),
    security(("bearer" = [])))]
async fn report_fraud(
    State(state): State<AppState>,
    request: AccountCommand<FraudReportRequest>,
) -> Result<Response, Problem> {
    // Always there on this route (the extractor parsed it).
    let payment_event_id = request
        .event_id
        .ok_or_else(|| invalid("event_id", "the path names no payment event id"))?;
    let command = Command::ReportFraud(ReportFraud {
        payment_event_id,
        reason: text("reason", request.body.reason, 500)?,
        // Looked up by the service against the account's history.
        payment: PaymentLookup::NotAPayment,
    });
    Ok(run(
        &state,
        request.account,
        command,
        request.meta,
        StatusCode::CREATED,
    )
    .await)
}

#[utoipa::path(post, path = "/v1/accounts/{id}/unfreeze", request_body = EmptyRequest,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandResponse), (status = 404), (status = 422)),
    security(("bearer" = [])))]
async fn unfreeze(
    State(state): State<AppState>,
    request: AccountCommand<EmptyRequest>,
) -> Result<Response, Problem> {
    Ok(run(
        &state,
        request.account,
        Command::Unfreeze,
        request.meta,
        StatusCode::OK,
    )
    .await)
}

#[utoipa::path(post, path = "/v1/accounts/{id}/close", request_body = EmptyRequest,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandResponse), (status = 404), (status = 422)),
    security(("bearer" = [])))]
async fn close(
    State(state): State<AppState>,
    request: AccountCommand<EmptyRequest>,
) -> Result<Response, Problem> {
    Ok(run(
        &state,
        request.account,
        Command::Close,
        request.meta,
        StatusCode::OK,
    )
    .await)
}

#[utoipa::path(get, path = "/v1/accounts/{id}", params(("id" = String, Path)),
    responses((status = 200, body = AccountResponse), (status = 400), (status = 404)),
    security(("bearer" = [])))]
async fn get_account(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    // A segment that is not UTF-8 once decoded (`%FF`) is bad input like any other id.
    let Path(id) = id.map_err(|e| invalid("account_id", e.body_text()))?;
    let account = account_id(&id)?;
    let found = state
        .service
        .account(account)
        .await
        .map_err(command_error)?;
    if found.status() == Status::Unopened {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "account_not_found",
            "Account not found",
        )
        .detail(format!("no account {account}")));
    }
    Ok(Json(account_response(account, &found)).into_response())
}

fn account_response(account_id: AccountId, a: &Account) -> AccountResponse {
    AccountResponse {
        account_id: account_id.to_string(),
        status: a.status().as_str().into(),
        holder_name: a.holder_name().to_owned(),
        email: a.email().to_owned(),
        country: a.country().map(|c| c.to_string()).unwrap_or_default(),
        currency: a.currency().map(|c| c.to_string()).unwrap_or_default(),
        balance_minor: a.balance_minor(),
        daily_withdrawal_limit_minor: a.daily_withdrawal_limit_minor(),
        withdrawn_today_minor: a.withdrawn_on(chrono::Utc::now().date_naive()),
        version: a.version(),
        opened_at: a.opened_at().map(|t| t.to_rfc3339()),
        updated_at: a.updated_at().map(|t| t.to_rfc3339()),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "prism-command", description = "Prism's write side: commands on bank accounts. Money is integer minor units of the account's currency. Errors are application/problem+json."),
    paths(open_account, get_account, deposit, withdraw, pay, freeze, unfreeze, close,
        report_fraud),
    components(schemas(OpenAccountRequest, DepositRequest, WithdrawalRequest, PaymentRequest,
        FreezeRequest, FraudReportRequest, EmptyRequest, CommandResponse, AccountResponse)),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            utoipa::openapi::security::SecurityScheme::Http(utoipa::openapi::security::Http::new(
                utoipa::openapi::security::HttpAuthScheme::Bearer,
            )),
        );
    }
}

/// `GET /v1/admin/status`: what this instance is doing. Every member is always present
/// (`null` when unknown or not applicable); members are only ever added. Like `/readyz`
/// and `/metrics`, it is an operations endpoint, described in the README rather than in
/// `/openapi.json` (the commands API).
#[derive(Debug, Serialize)]
pub struct AdminStatus {
    /// `prism-command`.
    pub service: &'static str,
    /// This build's version.
    pub version: &'static str,
    /// `prism-command/<host>/<pid>/<random>`: unique per running instance.
    pub instance: String,
    pub checked_at: chrono::DateTime<chrono::Utc>,
    /// What `/readyz` answers (the event store answers; the relay never makes it unready).
    pub ready: bool,
    /// Why it is not ready (empty when ready).
    pub reasons: Vec<String>,
    pub event_store: AdminEventStore,
    pub relay: AdminRelay,
}

/// The event store, as this instance reaches it.
#[derive(Debug, Serialize)]
pub struct AdminEventStore {
    /// `mongodb` or `postgres`.
    pub backend: &'static str,
    /// It answered a read within 2 s just now.
    pub answering: bool,
    /// Why it did not.
    pub problem: Option<String>,
}

/// The outbox relay of this instance.
#[derive(Debug, Serialize)]
pub struct AdminRelay {
    /// `false` with `[relay] enabled = false` (state `disabled`: events are stored, not
    /// published).
    pub enabled: bool,
    /// The topic it publishes to.
    pub topic: String,
    /// Events Kafka acknowledged since this instance started (duplicates included).
    pub published_events: u64,
    #[serde(flatten)]
    pub state: RelayAdmin,
}

async fn admin_status(State(state): State<AppState>) -> Response {
    let readiness = &state.readiness;
    let store = readiness.check().await;
    let relay = match &readiness.relay {
        Some(status) => status.admin(),
        None => RelayAdmin {
            state: "disabled",
            kafka_available: false,
            backlog_events: 0,
            backlog_at_least: false,
            backlog_age_seconds: 0.0,
            oldest_unpublished_at: None,
            last_published_at: None,
            problem: None,
        },
    };
    let body = AdminStatus {
        service: "prism-command",
        version: env!("CARGO_PKG_VERSION"),
        instance: state.instance.id.clone(),
        checked_at: chrono::Utc::now(),
        ready: store.is_ok(),
        reasons: store.clone().err().into_iter().collect(),
        event_store: AdminEventStore {
            backend: readiness.store.backend(),
            answering: store.is_ok(),
            problem: store.err(),
        },
        relay: AdminRelay {
            enabled: readiness.relay.is_some(),
            topic: state.instance.topic.clone(),
            published_events: state.metrics.relay_published.get(),
            state: relay,
        },
    };
    Json(body).into_response()
}

async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    render_metrics(&state.metrics.registry)
}

pub(crate) async fn healthz() -> Response {
    (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness.check().await {
        Ok(()) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "status": "ready",
                "relay": state.readiness.relay_detail(),
            })),
        )
            .into_response(),
        Err(reason) => Problem::unavailable(reason).into_response(),
    }
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "No such resource")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_path_spells_the_account_id_one_way() {
        let id = "01a22161-2934-76f9-ada0-484d27d22232";
        let canonical = format!("/v1/accounts/{id}/deposits");
        assert_eq!(canonical_path(&canonical, id, None), canonical);
        assert_eq!(
            canonical_path(
                "/v1/accounts/%30%31a22161-2934-76f9-ada0-484d27d22232/deposits",
                id,
                None
            ),
            canonical
        );
        assert_eq!(
            canonical_path(
                "/v1/accounts/01A22161-2934-76F9-ADA0-484D27D22232/deposits",
                id,
                None
            ),
            canonical
        );
    }

    #[test]
    fn the_canonical_path_spells_the_payment_event_id_one_way() {
        let id = "01a22161-2934-76f9-ada0-484d27d22232";
        let event = "01a22162-0000-7000-8000-000000000001";
        let canonical = format!("/v1/accounts/{id}/payments/{event}/fraud-reports");
        for raw in [
            canonical.clone(),
            format!(
                "/v1/accounts/{id}/payments/{}/fraud-reports",
                event.to_uppercase()
            ),
            format!(
                "/v1/accounts/{id}/payments/%30%31a22162-0000-7000-8000-000000000001/fraud-reports"
            ),
        ] {
            assert_eq!(canonical_path(&raw, id, Some(event)), canonical, "{raw}");
        }
    }

    #[test]
    fn rejections_answer_with_their_status_and_name_the_field_of_bad_input() {
        let cases = [
            (
                Rejection::InvalidField {
                    field: "reason",
                    reason: "must not be blank",
                },
                StatusCode::BAD_REQUEST,
            ),
            (Rejection::AccountNotFound, StatusCode::NOT_FOUND),
            (
                Rejection::PaymentNotFound {
                    payment_event_id: Uuid::nil(),
                },
                StatusCode::NOT_FOUND,
            ),
            (
                Rejection::AlreadyReported {
                    payment_event_id: Uuid::nil(),
                },
                StatusCode::CONFLICT,
            ),
            (Rejection::AccountClosed, StatusCode::UNPROCESSABLE_ENTITY),
        ];
        for (rejection, status) in cases {
            let response = rejection_problem(&rejection).into_response();
            assert_eq!(response.status(), status, "{rejection}");
        }
    }
}
