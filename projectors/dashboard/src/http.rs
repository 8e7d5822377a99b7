//! The page and its API:
//! - `GET /` and `/assets/…`: the page, embedded in the binary (no CDN, no data in it);
//! - `GET /v1/dashboard/summary`: every tile, window, top list, the feed and the pipeline's
//!   health; waits for a `Consistency-Token` first if one is sent (202 `processing` after
//!   `wait_timeout_ms`);
//! - `GET /v1/dashboard/series?metric=&window=[&currency=]`: one counter over time;
//! - `GET /v1/dashboard/stream`: server-sent events, a `summary` frame whenever the model
//!   changed, at most every `tick_ms`.
//!
//! The stream is fed by one [`Broadcaster`] per process: a single task reads the model
//! once per tick (one pipelined round trip) while anyone watches, and hands the same
//! serialized frame to every viewer through a `watch` channel. A slow viewer skips to the
//! newest frame instead of queueing old ones, so no viewer is ever more than one frame
//! behind, and 200 viewers cost Redis what one does.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use futures::Stream;
use prism_platform::auth::{self, Auth};
use prism_platform::http::Problem;
use prism_projector::api::{invalid, one_of, Params, RawQuery, ReadYourWrites};
use prism_projector::consistency::{self, VersionLookup};
use prism_projector::Sink as _;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::buckets::Span;
use crate::config::DashboardConfig;
use crate::copies::DashboardCopy;
use crate::pipeline::{Latest, ServiceHealth};
use crate::read::{read_raw, read_series, Metric, Summary};

/// Says which copy is live now.
pub type CurrentCopy = Arc<dyn Fn() -> DashboardCopy + Send + Sync>;

/// One frame of the stream, serialized once for every viewer.
#[derive(Debug)]
pub struct Frame {
    pub tick: u64,
    pub json: String,
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    copy: CurrentCopy,
    auth: Auth,
    waits: ReadYourWrites,
    pipeline: Latest,
    top_n: usize,
    large_amount_minor: i64,
    max_viewers: usize,
    keep_alive: Duration,
    frames: watch::Receiver<Option<Arc<Frame>>>,
    viewers: Arc<Viewers>,
    metrics: ApiMetrics,
    /// Stops the broadcaster and the health poller when the API goes away.
    _stop: tokio_util::sync::DropGuard,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("top_n", &self.inner.top_n)
            .finish_non_exhaustive()
    }
}

/// Viewers of the stream, and a wake-up for the broadcaster when the first arrives.
#[derive(Debug, Default)]
pub struct Viewers {
    count: AtomicUsize,
    arrived: Notify,
}

#[derive(Clone)]
struct ApiMetrics {
    viewers: IntGauge,
    frames: IntCounter,
    reads: Histogram,
}

impl ApiMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let viewers = IntGauge::new(
            "prism_dashboard_stream_viewers",
            "Viewers connected to /v1/dashboard/stream.",
        )?;
        let frames = IntCounter::new(
            "prism_dashboard_stream_frames_total",
            "Frames the broadcaster published (each sent to every viewer).",
        )?;
        let reads = Histogram::with_opts(
            HistogramOpts::new(
                "prism_dashboard_summary_read_seconds",
                "Time to read the whole summary from Redis (one pipelined round trip).",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14)?),
        )?;
        registry.register(Box::new(viewers.clone()))?;
        registry.register(Box::new(frames.clone()))?;
        registry.register(Box::new(reads.clone()))?;
        Ok(Self {
            viewers,
            frames,
            reads,
        })
    }
}

impl ApiState {
    /// The API over `copy` (the live copy now); starts the broadcaster and the pipeline
    /// health poller (`this` gives this service's own row), both stopped when the last
    /// clone of the state is dropped. Must run inside a tokio runtime.
    pub fn new(
        copy: CurrentCopy,
        config: &DashboardConfig,
        auth: Auth,
        this: impl Fn() -> ServiceHealth + Send + 'static,
        progress: watch::Receiver<u64>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let stop = CancellationToken::new();
        let pipeline: Latest = Arc::default();
        tokio::spawn(crate::pipeline::poll(
            config.targets(),
            Duration::from_millis(config.health_poll_ms),
            Arc::clone(&pipeline),
            this,
            stop.clone(),
        ));
        let waits = ReadYourWrites::start(
            version_lookup(Arc::clone(&copy)),
            progress,
            config.max_waiters,
            Duration::from_millis(config.wait_timeout_ms),
            registry,
            "dashboard",
        )?;
        let metrics = ApiMetrics::new(registry)?;
        let (tx, rx) = watch::channel(None);
        let viewers = Arc::new(Viewers::default());
        let state = Self {
            inner: Arc::new(Inner {
                copy,
                auth,
                waits,
                pipeline,
                top_n: config.top_n as usize,
                large_amount_minor: config.large_amount_minor,
                max_viewers: config.max_viewers,
                keep_alive: Duration::from_millis(config.keep_alive_ms),
                frames: rx,
                viewers,
                metrics,
                _stop: stop.clone().drop_guard(),
            }),
        };
        let tick = Duration::from_millis(config.tick_ms);
        tokio::spawn(broadcast(Arc::downgrade(&state.inner), tx, tick, stop));
        Ok(state)
    }

    /// Reads the summary now (one round trip), with the pipeline table.
    pub async fn summary(&self) -> Result<Summary, Problem> {
        let copy = (self.inner.copy)();
        let now = Utc::now();
        let started = Instant::now();
        let raw = read_raw(&copy.conn, &copy.keys, now)
            .await
            .map_err(|e| unavailable(&e))?;
        self.inner
            .metrics
            .reads
            .observe(started.elapsed().as_secs_f64());
        let mut summary = raw.summarise(copy.number, now, self.inner.top_n);
        for entry in &mut summary.feed {
            let large = entry
                .get("amount_minor")
                .and_then(serde_json::Value::as_i64)
                .is_some_and(|a| a >= self.inner.large_amount_minor);
            entry.insert("large".into(), serde_json::Value::from(large));
        }
        summary.pipeline =
            serde_json::to_value(&*self.inner.pipeline.read()).unwrap_or(serde_json::Value::Null);
        Ok(summary)
    }
}

fn unavailable(e: &redis::RedisError) -> Problem {
    tracing::warn!(error = %e, "reading the dashboard from Redis");
    Problem::unavailable("Redis did not answer; try again shortly").retry_after(1)
}

fn version_lookup(copy: CurrentCopy) -> VersionLookup {
    Arc::new(move |accounts| {
        let sink = copy().sink();
        Box::pin(async move { sink.versions(&accounts).await.map_err(|e| e.to_string()) })
    })
}

/// The broadcaster: while anyone watches, reads the summary every `tick` and publishes it
/// when it changed (the reference time aside). Holds the state weakly: it ends with it.
async fn broadcast(
    inner: std::sync::Weak<Inner>,
    tx: watch::Sender<Option<Arc<Frame>>>,
    tick: Duration,
    stop: CancellationToken,
) {
    let mut frames: u64 = 0;
    let mut last: Option<serde_json::Value> = None;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(state) = inner.upgrade().map(|inner| ApiState { inner }) else {
            return;
        };
        if state.inner.viewers.count.load(Ordering::Acquire) == 0 {
            // Nobody watches: wait for the first viewer (the next one sees a fresh frame).
            last = None;
            let viewers = Arc::clone(&state.inner.viewers);
            drop(state);
            tokio::select! {
                () = stop.cancelled() => return,
                () = viewers.arrived.notified() => {}
            }
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let summary = match state.summary().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let Ok(mut value) = serde_json::to_value(&summary) else {
            continue;
        };
        let as_of = value
            .as_object_mut()
            .and_then(|o| o.remove("as_of"))
            .unwrap_or_default();
        if last.as_ref() == Some(&value) {
            continue;
        }
        last = Some(value.clone());
        frames += 1;
        let n = frames;
        if let Some(o) = value.as_object_mut() {
            o.insert("as_of".into(), as_of);
            o.insert("tick".into(), serde_json::Value::from(n));
        }
        let frame = Frame {
            tick: n,
            json: value.to_string(),
        };
        state.inner.metrics.frames.inc();
        tx.send_replace(Some(Arc::new(frame)));
    }
}

/// The API's routes (the shell adds `/healthz`, `/readyz`, `/metrics` and the 404).
pub fn router(state: ApiState) -> Router {
    let auth = state.inner.auth.clone();
    let api = Router::new()
        .route("/v1/dashboard/summary", get(summary))
        .route("/v1/dashboard/series", get(series))
        .route("/v1/dashboard/stream", get(stream))
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_bearer,
        ))
        .with_state(state);
    Router::new()
        .route("/", get(page))
        .route("/assets/dashboard.js", get(script))
        .route("/assets/dashboard.css", get(style))
        .merge(api)
}

const INDEX_HTML: &str = include_str!("../assets/index.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");

/// Only this origin's scripts, styles and connections: the page needs nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn page() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

async fn script() -> Response {
    asset(DASHBOARD_JS, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(DASHBOARD_CSS, "text/css; charset=utf-8")
}

async fn summary(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Json<Summary>, Problem> {
    Params::new(query, &[])?;
    let target = consistency::target_from_headers(&headers)?;
    state.inner.waits.wait(target).await?;
    let mut summary = state.summary().await?;
    summary.seconds = None;
    summary.minutes = None;
    Ok(Json(summary))
}

#[derive(Debug, serde::Serialize)]
struct Series {
    metric: &'static str,
    window: &'static str,
    step_seconds: i64,
    currency: Option<String>,
    points: Vec<crate::read::Point>,
}

async fn series(State(state): State<ApiState>, query: RawQuery) -> Result<Json<Series>, Problem> {
    let params = Params::new(query, &["metric", "window", "currency"])?;
    let metric_name = one_of(
        "metric",
        params
            .get("metric")
            .ok_or_else(|| invalid("metric", "is required"))?,
        &Metric::NAMES,
    )?;
    let span = params
        .get("window")
        .map(|w| {
            Span::parse(w).ok_or_else(|| {
                invalid(
                    "window",
                    format!("{w:?} is not one of {}", Span::NAMES.join(", ")),
                )
            })
        })
        .transpose()?
        .unwrap_or(Span::TenMinutes);
    let currency = params
        .get("currency")
        .map(|c| {
            prism_events::Currency::parse(c)
                .map(|c| c.as_str().to_owned())
                .map_err(|e| invalid("currency", e.to_string()))
        })
        .transpose()?;
    let metric = match (metric_name, currency.clone()) {
        ("money_in", Some(c)) => Metric::MoneyIn(c),
        ("money_out", Some(c)) => Metric::MoneyOut(c),
        ("money_in" | "money_out", None) => {
            return Err(invalid("currency", "is required for money metrics"))
        }
        (_, Some(_)) => {
            return Err(invalid(
                "currency",
                "applies only to money_in and money_out",
            ))
        }
        ("events", None) => Metric::Events,
        ("card_approved", None) => Metric::CardApproved,
        ("card_declined", None) => Metric::CardDeclined,
        _ => Metric::NewAccounts,
    };
    let copy = (state.inner.copy)();
    let points = read_series(&copy.conn, &copy.keys, &metric, span, Utc::now())
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(Json(Series {
        metric: metric_name,
        window: span.name(),
        step_seconds: span.shape().0.seconds(),
        currency,
        points,
    }))
}

/// Counts a viewer while its stream lives.
struct Watching {
    viewers: Arc<Viewers>,
    gauge: IntGauge,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.viewers.count.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

async fn stream(
    State(state): State<ApiState>,
    query: RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    Params::new(query, &[])?;
    let viewers = Arc::clone(&state.inner.viewers);
    if viewers.count.fetch_add(1, Ordering::AcqRel) >= state.inner.max_viewers {
        viewers.count.fetch_sub(1, Ordering::AcqRel);
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-viewers",
            "Too many viewers",
        )
        .detail(format!(
            "{} viewers are connected already",
            state.inner.max_viewers
        ))
        .retry_after(5));
    }
    viewers.arrived.notify_one();
    state.inner.metrics.viewers.inc();
    let watching = Watching {
        viewers,
        gauge: state.inner.metrics.viewers.clone(),
    };
    let mut frames = state.inner.frames.clone();
    // The newest frame first (if any), then each new one.
    frames.mark_changed();
    let events = futures::stream::unfold((frames, watching), |(mut frames, watching)| async move {
        loop {
            frames.changed().await.ok()?;
            let frame = frames.borrow_and_update().clone();
            if let Some(frame) = frame {
                let event = Event::default()
                    .event("summary")
                    .id(frame.tick.to_string())
                    .data(&frame.json);
                return Some((Ok(event), (frames, watching)));
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(state.inner.keep_alive)))
}
