//! HTTP plumbing every Prism service shares: problem documents, JSON request bodies whose
//! errors name the field, `/metrics`, the request log line with its correlation id,
//! shutdown.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, MatchedPath, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, Registry, TextEncoder};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Base of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://prism.dev/problems/";

/// An RFC 9457 problem document, served as `application/problem+json`. Boxed, so that
/// `Result<T, Problem>` stays small on the happy path.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Problem(Box<ProblemDocument>);

/// The members of a [`Problem`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProblemDocument {
    /// `https://prism.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable machine-readable identifier, the last segment of `type`.
    pub code: String,
    /// The request field at fault, when there is one (`amount_minor`, `merchant.country`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds a client should wait before retrying (also sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after_seconds: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, title: impl Into<String>) -> Self {
        Self(Box::new(ProblemDocument {
            problem_type: format!("{PROBLEM_BASE}{code}"),
            title: title.into(),
            status: status.as_u16(),
            detail: None,
            code: code.to_owned(),
            field: None,
            retry_after_seconds: None,
        }))
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after_seconds = Some(seconds);
        self
    }

    /// The document's members.
    pub fn document(&self) -> &ProblemDocument {
        &self.0
    }

    /// A 400 naming the request field (body member, path segment, query parameter or
    /// header) at fault.
    pub fn invalid_field(field: &str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "Invalid request field",
        )
        .field(field)
        .detail(detail)
    }

    /// A 500 whose body says nothing about the cause (log the cause where it happened).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        )
        .detail("The server could not complete the request; it has been logged.")
    }

    /// A 503 for a dependency that is down; retry later.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .detail(detail)
        .retry_after(1)
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status_code(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.0.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON request body: the content type checked, the size limited (by the router's body
/// limit), and every error a problem naming the field at fault (`invalid_field` with
/// `field`), the JSON's syntax (`malformed_json`), the media type (415) or the size (413).
/// An empty body stands for `{}`. Unknown fields are refused where `T` says
/// `deny_unknown_fields`.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    /// The body as received (an idempotency check compares it).
    pub raw: Bytes,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            });
        let raw = Bytes::from_request(request, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "Request body too large",
                    )
                    .detail(e.body_text())
                } else {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_body",
                        "Unreadable request body",
                    )
                    .detail(e.body_text())
                }
            })?;
        let text: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &raw
        };
        if json == Some(false) || (json.is_none() && text != b"{}") {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            )
            .detail("send the body as Content-Type: application/json"));
        }
        let value = parse_json(text)?;
        Ok(Self { value, raw })
    }
}

/// Parses `text` as a `T`, every error a problem naming the field (see [`JsonBody`]).
pub fn parse_json<T: DeserializeOwned>(text: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return malformed_json(&inner);
        }
        let field = if path == "." {
            // serde names missing and unknown fields in the message only.
            field_from_message(&inner.to_string()).unwrap_or_default()
        } else {
            path
        };
        let problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "Invalid request field",
        )
        .detail(inner.to_string());
        if field.is_empty() {
            problem
        } else {
            problem.field(field)
        }
    })?;
    // Trailing characters after the value.
    deserializer.end().map_err(|e| malformed_json(&e))?;
    Ok(value)
}

fn malformed_json(error: &serde_json::Error) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "malformed_json", "Malformed JSON")
        .detail(error.to_string())
}

/// serde's "missing field `x`" / "unknown field `x`" messages name the field in backticks.
fn field_from_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

/// Renders a registry in the Prometheus text format (for a `/metrics` route).
pub fn render_metrics(registry: &Registry) -> Response {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                TextEncoder::new().format_type().to_owned(),
            )],
            buffer,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics");
            Problem::internal().into_response()
        }
    }
}

/// The header carrying a request's correlation id, in and out: `prism-command` stores it in
/// the events a command writes (`ce_correlationid` on Kafka), so the projectors' log lines
/// about those events carry it too.
pub const CORRELATION_ID: &str = "x-correlation-id";

/// Whether `value` is usable as a correlation id: 1 to 128 visible ASCII characters.
pub fn valid_correlation_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}

/// The routes machines poll (Prometheus, orchestrators' probes): their request lines are
/// logged at debug level, so scrapes do not flood the log.
pub const QUIET_ROUTES: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// The route a request line names when no route matched (a 404): never the raw path, which
/// is the caller's text and unbounded.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Middleware (`Router::layer(axum::middleware::from_fn(log_requests))`, outermost, so it
/// sees every answer, refusals and caught panics included): one log line per request,
/// `http request` at info level (debug for [`QUIET_ROUTES`]), with
/// - `method`, `route` (the matched route template, e.g. `/v1/accounts/{id}/deposits`, or
///   [`UNMATCHED_ROUTE`]), `status`, `latency_ms` (until the answer's head: a stream's
///   line is written when it starts);
/// - `correlation_id`: the request's `X-Correlation-Id`, or one made up here (a UUIDv7)
///   and put on the request, so the handlers (and `prism-command`'s events) use the same;
///   empty when the header is not a valid one (1 to 128 visible ASCII characters), which
///   `prism-command` refuses;
/// - `principal`: the caller ([`crate::auth::Principal`], a short hash of its token, set
///   by [`crate::auth::require_bearer`]), empty without an accepted token.
///
/// Never the token, the query string or the body. The answer carries the correlation id
/// back in `X-Correlation-Id`.
pub async fn log_requests(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let correlation = match request.headers().get(CORRELATION_ID) {
        Some(given) => given
            .to_str()
            .ok()
            .filter(|id| valid_correlation_id(id))
            .map(str::to_owned),
        None => {
            let made = uuid::Uuid::now_v7().to_string();
            if let Ok(value) = HeaderValue::from_str(&made) {
                request.headers_mut().insert(CORRELATION_ID, value);
            }
            Some(made)
        }
    };
    let mut response = next.run(request).await;
    if let Some(value) = correlation
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        response.headers_mut().insert(CORRELATION_ID, value);
    }
    let route = route.as_deref().unwrap_or(UNMATCHED_ROUTE);
    let principal = response
        .extensions()
        .get::<crate::auth::Principal>()
        .map_or("", |p| p.0.as_str());
    let latency_ms = started.elapsed().as_micros() as f64 / 1e3;
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                $level,
                method = %method,
                route,
                status = response.status().as_u16(),
                latency_ms,
                correlation_id = correlation.as_deref().unwrap_or(""),
                principal,
                "http request"
            )
        };
    }
    if QUIET_ROUTES.contains(&route) {
        line!(tracing::Level::DEBUG);
    } else {
        line!(tracing::Level::INFO);
    }
    response
}

/// The paths a service answers before it is built ([`front_door`]'s `starting`).
pub const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// How long [`front_door`] holds a request for the API while the service is not built yet,
/// before answering 503: a start that takes less is invisible to callers, as it was when
/// connections waited in the listen queue.
pub const START_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The router a service's listener serves when it starts serving before it is built (its
/// store may be down at start): `app` once it is sent, and until then `starting` for the
/// [`OPEN_PATHS`] (`/healthz`, a `/readyz` saying what is missing, `/metrics`). Any other
/// request waits up to [`START_WAIT`] for `app`, then gets a 503 problem (type `starting`,
/// `Retry-After: 1`). A process restarted during an outage of its store thus stays up,
/// observable and scraped, instead of exiting and being restarted in a loop.
///
/// `app` logs its own requests ([`log_requests`] needs the route matched inside it); the
/// front door logs the answers given while starting.
pub fn front_door(
    starting: axum::Router,
    app: tokio::sync::watch::Receiver<Option<axum::Router>>,
) -> axum::Router {
    use tower::ServiceExt;
    let starting = starting
        .fallback(|| async {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "Starting")
                .detail("the service is not ready to take requests yet; /readyz says why")
                .retry_after(1)
        })
        .layer(axum::middleware::from_fn(log_requests));
    axum::Router::new().fallback(move |request: Request| {
        let mut app = app.clone();
        let starting = starting.clone();
        async move {
            let built = app.borrow().clone();
            let to = match built {
                Some(app) => app,
                None if OPEN_PATHS.contains(&request.uri().path()) => starting,
                None => {
                    let waited = tokio::time::timeout(START_WAIT, app.wait_for(Option::is_some));
                    match waited.await {
                        Ok(Ok(built)) => built.clone().unwrap_or(starting),
                        _ => starting,
                    }
                }
            };
            match to.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    })
}

/// A token cancelled when `shutdown` resolves: what a service that serves before it is
/// built ([`front_door`]) hands to its server and to its start-up both.
pub fn cancelled_on(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        cancel.cancel();
    });
    token
}

/// Resolves on SIGTERM or Ctrl-C: hand it to `axum::serve(..).with_graceful_shutdown`.
pub async fn shutdown_signal() {
    {
        let ctrl_c = async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {},
            () = term => {},
        }
        tracing::info!("shutdown requested");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(router: &axum::Router, path: &str) -> (StatusCode, String) {
        use tower::ServiceExt;
        let request = Request::builder()
            .uri(path)
            .body(axum::body::Body::empty())
            .expect("a request");
        let response = router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_front_door_serves_the_open_paths_while_starting_and_holds_the_rest_for_the_app() {
        let starting = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "alive" }))
            .route("/readyz", axum::routing::get(|| async { "not yet" }));
        let (app, built) = tokio::sync::watch::channel(None);
        let front = front_door(starting, built);

        assert_eq!(
            answer(&front, "/healthz").await,
            (StatusCode::OK, "alive".into())
        );
        assert_eq!(
            answer(&front, "/readyz").await,
            (StatusCode::OK, "not yet".into())
        );
        // An API request waits for the app instead of failing at once.
        let held = tokio::spawn({
            let front = front.clone();
            async move { answer(&front, "/v1/things").await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!held.is_finished(), "answered before the app was built");
        app.send_replace(Some(
            axum::Router::new()
                .route("/v1/things", axum::routing::get(|| async { "things" }))
                .route("/healthz", axum::routing::get(|| async { "app alive" })),
        ));
        let answered = held.await.expect("the held request");
        assert_eq!(answered, (StatusCode::OK, "things".into()));
        // Built: everything goes to the app.
        assert_eq!(
            answer(&front, "/healthz").await,
            (StatusCode::OK, "app alive".into())
        );
    }

    #[test]
    fn a_correlation_id_is_1_to_128_visible_ascii_characters() {
        assert!(valid_correlation_id("trail-1"));
        assert!(valid_correlation_id(&"x".repeat(128)));
        for bad in ["", " ", "a b", "é", "line\nbreak", &"x".repeat(129)] {
            assert!(!valid_correlation_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_problem_is_served_as_problem_json_with_retry_after() {
        let response = Problem::unavailable("event store down").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/problem+json"))
        );
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(1))
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Payment {
        amount_minor: i64,
        merchant: Merchant,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Merchant {
        country: String,
    }

    fn problem_of(text: &str) -> ProblemDocument {
        parse_json::<Payment>(text.as_bytes())
            .expect_err("refused")
            .document()
            .clone()
    }

    #[test]
    fn a_body_error_names_the_field_or_the_syntax() {
        let p = problem_of(r#"{"amount_minor": "ten", "merchant": {"country": "PT"}}"#);
        assert_eq!(
            (p.code.as_str(), p.field.as_deref()),
            ("invalid_field", Some("amount_minor"))
        );
        let p = problem_of(r#"{"amount_minor": 1, "merchant": {"country": 7}}"#);
        assert_eq!(p.field.as_deref(), Some("merchant.country"));
        let p = problem_of(r#"{"amount_minor": 1}"#);
        assert_eq!(p.field.as_deref(), Some("merchant"), "a missing field");
        let p = problem_of(r#"{"amount_minor": 1, "merchant": {"country": "PT"}, "x": 1}"#);
        assert_eq!(p.field.as_deref(), Some("x"), "an unknown field");
        assert_eq!(problem_of(r#"{"amount_minor": "#).code, "malformed_json");
        assert_eq!(
            problem_of(r#"{"amount_minor": 1, "merchant": {"country": "PT"}} x"#).code,
            "malformed_json"
        );
    }

    #[test]
    fn a_problem_serialises_its_type_from_its_code() {
        let p = Problem::new(StatusCode::BAD_REQUEST, "invalid_field", "Invalid field")
            .field("amount_minor");
        let json = serde_json::to_value(&p).expect("json");
        assert_eq!(json["type"], "https://prism.dev/problems/invalid_field");
        assert_eq!(json["field"], "amount_minor");
        assert_eq!(json["status"], 400);
        assert!(json.get("retry_after_seconds").is_none());
    }
}
