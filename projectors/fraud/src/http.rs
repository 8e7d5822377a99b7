//! The features API (bearer token, problem+json, `/openapi.json`):
//! - `GET /v1/features/{account_id}`: the account's features as of now — every feature
//!   that describes the account (windows, statistics, time since its last events, local
//!   hour, age), without the six that describe a payment of its own;
//! - `POST /v1/features/{account_id}/score`: the whole feature vector a candidate card
//!   payment would get if it were made now (or at its `time`), computed by the same code
//!   that wrote every offline row.
//!
//! Both read the account's state from the live copy in one round trip and compute in
//! Rust; both honour a `Consistency-Token` (or `min_version`): they wait until the account's
//! version is in the online store (202 `processing` after `wait_timeout_ms`), so a client
//! that just paid scores its next payment on a state that includes the first.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use prism_events::event::CardChannel;
use prism_events::Country;
use prism_platform::auth::{self, Auth};
use prism_platform::http::{JsonBody, Problem};
use prism_projector::api::openapi::{self, BearerAuth};
use prism_projector::api::{invalid, path_account_id, timestamp, Params, RawQuery, ReadYourWrites};
use prism_projector::consistency::{self, VersionLookup};
use prism_projector::Sink as _;
use prometheus::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue};
use tokio::sync::watch;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::config::FraudConfig;
use crate::copies::FraudCopy;
use crate::features::{
    self, AccountFeatures, Candidate, FeatureVector, Value, FEATURE_SET_VERSION,
};
use crate::sink::decode_state;

/// Says which copy is live now.
pub type CurrentCopy = Arc<dyn Fn() -> FraudCopy + Send + Sync>;

/// The features that describe a payment of its own, left out of `GET /v1/features/{id}`.
pub const PAYMENT_FEATURES: [&str; 6] = [
    "amount_minor",
    "is_online",
    "amount_zscore",
    "first_time_at_merchant",
    "merchant_country_differs",
    "amount_to_balance",
];

const MERCHANT_NAME_MAX: usize = 200;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    copy: CurrentCopy,
    waits: ReadYourWrites,
    auth: Auth,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

impl ApiState {
    /// Starts the waits' shared watcher, so it must run inside a tokio runtime.
    pub fn new(
        copy: CurrentCopy,
        config: &FraudConfig,
        auth: Auth,
        progress: watch::Receiver<u64>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let waits = ReadYourWrites::start(
            version_lookup(Arc::clone(&copy)),
            progress,
            config.max_waiters,
            Duration::from_millis(config.wait_timeout_ms),
            registry,
            crate::app::NAME,
        )?;
        Ok(Self { copy, waits, auth })
    }
}

/// The waits' lookup: the awaited accounts' versions in the live copy.
fn version_lookup(copy: CurrentCopy) -> VersionLookup {
    Arc::new(move |accounts| {
        let sink = copy().sink();
        Box::pin(async move { sink.versions(&accounts).await.map_err(|e| e.to_string()) })
    })
}

/// The `/v1` routes, behind the bearer-token check, and `/openapi.json`.
pub fn router(state: ApiState) -> Router {
    let auth = state.auth.clone();
    Router::new()
        .route("/v1/features/{id}", get(get_features))
        .route("/v1/features/{id}/score", post(score))
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
        title = "prism-fraud",
        description = "Prism's fraud features: an account's features now, and the feature \
            vector a candidate card payment would get, computed by the code that wrote every \
            offline training row (FEATURES.md defines each feature). Money is integer minor \
            units, times are RFC 3339 UTC, errors are application/problem+json naming the \
            field. Send a command's Consistency-Token to read your own write."
    ),
    paths(get_features, score),
    components(schemas(AccountFeaturesResponse, ScoreRequest, ScoreResponse)),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

/// `GET /v1/features/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountFeaturesResponse {
    pub account_id: Uuid,
    /// The account version the online store holds: the features read every event up to it.
    pub version: u64,
    pub feature_set_version: &'static str,
    /// The time the features were computed at: now, or the account's feature clock if that
    /// is later (FEATURES.md).
    pub as_of: DateTime<Utc>,
    /// Every feature of the account (names and meanings as in FEATURES.md), without those
    /// of a payment of its own.
    #[schema(value_type = Object)]
    pub features: Map<String, JsonValue>,
}

/// `POST /v1/features/{id}/score`: a card payment that has not been made.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// Minor units of the account's currency, at least 1.
    pub amount_minor: i64,
    pub merchant_name: String,
    /// ISO 18245 merchant category code, four digits.
    pub merchant_category: String,
    /// ISO 3166-1 alpha-2.
    pub merchant_country: String,
    /// `pos` (card present) or `online` (card not present).
    pub channel: String,
    /// When the payment is made (RFC 3339); now if absent.
    pub time: Option<String>,
}

/// The feature vector of a candidate payment.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreResponse {
    pub account_id: Uuid,
    pub version: u64,
    pub feature_set_version: &'static str,
    /// The candidate's time (its feature time is this, or the account's clock if later).
    pub time: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub features: FeatureVector,
}

fn unavailable(e: &redis::RedisError) -> Problem {
    Problem::unavailable(format!("the online store is unavailable: {e}"))
}

fn account_not_found(id: Uuid) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "account_not_found",
        "Account not found",
    )
    .detail(format!(
        "the fraud model has no opened account {id} (yet: send a Consistency-Token to wait for it)"
    ))
}

/// The account's version and feature state in the live copy.
async fn load(state: &ApiState, id: Uuid) -> Result<(u64, AccountFeatures), Problem> {
    let copy = (state.copy)();
    let mut conn = copy.conn.clone();
    let (version, bytes): (Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
        .arg(copy.keys.account(id))
        .arg("v")
        .arg("s")
        .query_async(&mut conn)
        .await
        .map_err(|e| unavailable(&e))?;
    let (Some(version), Some(bytes)) = (version, bytes.filter(|b| !b.is_empty())) else {
        return Err(account_not_found(id));
    };
    let features = decode_state(&bytes).map_err(|e| {
        tracing::error!(account = %id, error = %e, "an unreadable feature state");
        Problem::internal()
    })?;
    Ok((version, features))
}

/// A feature's value as JSON.
fn json_value(value: Value) -> JsonValue {
    match value {
        Value::Int64(v) => JsonValue::from(v),
        Value::UInt32(v) => JsonValue::from(v),
        Value::Float64(v) => {
            serde_json::Number::from_f64(v).map_or(JsonValue::Null, JsonValue::Number)
        }
        Value::Bool(v) => JsonValue::Bool(v),
        Value::Null => JsonValue::Null,
    }
}

#[utoipa::path(get, path = "/v1/features/{id}",
    params(("id" = String, Path, description = "The account id (a UUID)"),
        ("min_version" = Option<u64>, Query, description = "Wait until this version is in the model"),
        ("Consistency-Token" = Option<String>, Header, description = "A command's token: wait for its version")),
    responses((status = 200, body = AccountFeaturesResponse),
        (status = 202, description = "processing: the version has not arrived yet"),
        (status = 400, description = "a bad parameter (problem+json naming it)"), (status = 401),
        (status = 404, description = "no such account in the model"),
        (status = 503, description = "the online store is unavailable")),
    security(("bearer" = [])))]
async fn get_features(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    query: RawQuery,
    headers: HeaderMap,
) -> Result<Json<AccountFeaturesResponse>, Problem> {
    let id = path_account_id(id)?;
    let params = Params::new(query, &[consistency::MIN_VERSION])?;
    let target =
        consistency::target_for_account(&headers, id, params.get(consistency::MIN_VERSION))?;
    state.waits.wait(target).await?;
    let (version, account) = load(&state, id).await?;
    // Any payment: the features that describe the account do not depend on it.
    let probe = Candidate {
        amount_minor: 1,
        merchant_name: String::new(),
        merchant_category: "0000".into(),
        merchant_country: account.country(),
        channel: CardChannel::Pos,
        time: Utc::now(),
    };
    let vector = features::vector(Some(&account), &probe);
    let features = FeatureVector::NAMES
        .iter()
        .zip(vector.values())
        .filter(|(name, _)| !PAYMENT_FEATURES.contains(name))
        .map(|(name, value)| ((*name).to_owned(), json_value(value)))
        .collect();
    let as_of_micros = probe.time.timestamp_micros().max(account.clock_micros());
    Ok(Json(AccountFeaturesResponse {
        account_id: id,
        version,
        feature_set_version: FEATURE_SET_VERSION,
        as_of: DateTime::from_timestamp_micros(as_of_micros).unwrap_or(probe.time),
        features,
    }))
}

/// The candidate a request describes, every field checked and named when wrong.
fn candidate(request: ScoreRequest) -> Result<Candidate, Problem> {
    if !(1..=1_000_000_000_000).contains(&request.amount_minor) {
        return Err(invalid(
            "amount_minor",
            "must be a whole number of minor units from 1 to 10^12",
        ));
    }
    let merchant_name = request.merchant_name.trim().to_owned();
    if merchant_name.is_empty() || merchant_name.chars().count() > MERCHANT_NAME_MAX {
        return Err(invalid(
            "merchant_name",
            format!("must be 1 to {MERCHANT_NAME_MAX} characters"),
        ));
    }
    if merchant_name.chars().any(char::is_control) {
        return Err(invalid(
            "merchant_name",
            "must not contain control characters",
        ));
    }
    let category = request.merchant_category.trim();
    if category.len() != 4 || !category.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "merchant_category",
            "must be an ISO 18245 merchant category code: four digits",
        ));
    }
    let merchant_country = Country::parse(request.merchant_country.trim())
        .map_err(|e| invalid("merchant_country", e.to_string()))?;
    let channel = match request.channel.trim() {
        "pos" => CardChannel::Pos,
        "online" => CardChannel::Online,
        other => {
            return Err(invalid(
                "channel",
                format!("{other:?} is not one of pos, online"),
            ))
        }
    };
    let time = match &request.time {
        Some(raw) => timestamp("time", raw)?,
        None => Utc::now(),
    };
    Ok(Candidate {
        amount_minor: request.amount_minor,
        merchant_name,
        merchant_category: category.to_owned(),
        merchant_country,
        channel,
        time,
    })
}

#[utoipa::path(post, path = "/v1/features/{id}/score",
    params(("id" = String, Path, description = "The account id (a UUID)"),
        ("min_version" = Option<u64>, Query, description = "Wait until this version is in the model"),
        ("Consistency-Token" = Option<String>, Header, description = "A command's token: wait for its version")),
    request_body = ScoreRequest,
    responses((status = 200, body = ScoreResponse),
        (status = 202, description = "processing: the version has not arrived yet"),
        (status = 400, description = "a bad field or parameter (problem+json naming it)"), (status = 401),
        (status = 404, description = "no such account in the model"),
        (status = 503, description = "the online store is unavailable")),
    security(("bearer" = [])))]
async fn score(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    query: RawQuery,
    headers: HeaderMap,
    body: JsonBody<ScoreRequest>,
) -> Result<Json<ScoreResponse>, Problem> {
    let id = path_account_id(id)?;
    let params = Params::new(query, &[consistency::MIN_VERSION])?;
    let candidate = candidate(body.value)?;
    let target =
        consistency::target_for_account(&headers, id, params.get(consistency::MIN_VERSION))?;
    state.waits.wait(target).await?;
    let (version, account) = load(&state, id).await?;
    let features = features::vector(Some(&account), &candidate);
    Ok(Json(ScoreResponse {
        account_id: id,
        version,
        feature_set_version: FEATURE_SET_VERSION,
        time: candidate.time,
        features,
    }))
}
