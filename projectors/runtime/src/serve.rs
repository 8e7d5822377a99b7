//! The operational endpoints every projector binary serves next to its query API.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prism_platform::http::{render_metrics, Problem};
use prometheus::Registry;

use crate::health::Health;

#[derive(Debug, Clone)]
struct Ops {
    health: Health,
    registry: Registry,
}

/// `/healthz` (the process answers), `/readyz` (joined, sink and Kafka up, caught up within
/// `ready_max_lag`; 503 problem listing the reasons otherwise) and `/metrics`.
pub fn ops_router(health: Health, registry: Registry) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ops { health, registry })
}

async fn healthz() -> Response {
    (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response()
}

async fn readyz(State(ops): State<Ops>) -> Response {
    let report = ops.health.report();
    if report.ready {
        (StatusCode::OK, Json(report)).into_response()
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "Not ready")
            .detail(report.reasons.join("; "))
            .retry_after(1)
            .into_response()
    }
}

async fn metrics(State(ops): State<Ops>) -> Response {
    render_metrics(&ops.registry)
}
