//! The operational endpoints every projector binary serves next to its query API: the open
//! ones (`/healthz`, `/readyz`, `/metrics`) and the admin status (`GET /v1/admin/status`,
//! behind the `admin` scope), all from what the runtime already keeps for them ([`Health`],
//! [`crate::Metrics`]) and the live copy the process holds ([`LiveCopy`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use prism_platform::auth::{self, Auth};
use prism_platform::http::{render_metrics, Problem};
use prometheus::Registry;
use serde::Serialize;

use crate::copies::{Copies, LiveCopy};
use crate::health::{Health, HealthReport};
use crate::Shared;

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

/// Who a running projector instance is, as its admin status names it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `prism-<name>`.
    pub service: String,
    /// `<group>/<host>/<pid>/<random>`: unique per running instance (the name its copies'
    /// instance reports use).
    pub instance: String,
    pub consumer_group: String,
    pub topic: String,
    /// Where its dead letters go: `<topic>.dlq.<name>`.
    pub dead_letter_topic: String,
}

/// `GET /v1/admin/status`: this instance's view of its projector. Every member is always
/// present (`null` when unknown); members are only ever added.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdminStatus {
    /// `prism-<name>`.
    pub service: String,
    /// This build's version.
    pub version: &'static str,
    pub instance: String,
    pub consumer_group: String,
    pub topic: String,
    pub checked_at: DateTime<Utc>,
    /// What `/readyz` answers.
    pub ready: bool,
    /// Why it is not ready (empty when ready), as `/readyz` says it.
    pub reasons: Vec<String>,
    pub copy: CopyStatus,
    pub dead_letters: DeadLetters,
    /// The partitions whose `held` is set.
    pub held_partitions: Vec<i32>,
    /// The partitions assigned to this instance, in order.
    pub partitions: Vec<PartitionAdmin>,
}

/// The copies of the read model (blue/green) as this instance uses them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CopyStatus {
    /// The live copy, as this instance last read it.
    pub live: u32,
    /// The copy its query API reads: the live one, unless that cannot be opened here.
    pub serving: u32,
    /// The copy its projector writes (`null`: none, e.g. while it starts or moves).
    pub writing: Option<u32>,
    /// Why the live copy cannot be opened here (then nothing is projected and the instance
    /// is not ready).
    pub unavailable: Option<String>,
}

/// Dead letters of this instance.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetters {
    pub topic: String,
    /// Records this process dead-lettered since it started (every instance's are on the
    /// topic).
    pub events: u64,
}

/// One assigned partition: the same figures as `prismctl status`, as this instance sees
/// them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionAdmin {
    pub partition: i32,
    /// Offset of the last record handled, as stored with the read model (`null`: nothing
    /// stored yet).
    pub stored_offset: Option<i64>,
    /// Kafka's end offset (the next record's) when last measured.
    pub end_offset: Option<i64>,
    /// Records after the stored position.
    pub lag_events: Option<i64>,
    /// How far behind the read model is in time: since the last applied event's time while
    /// records wait, 0 once caught up.
    pub lag_seconds: Option<f64>,
    /// Time of the last event applied from this partition.
    pub last_event_time: Option<DateTime<Utc>>,
    /// Paused for backpressure (its worker is behind).
    pub paused: bool,
    /// Why the partition is held (nothing past the held record is applied until the cause
    /// is removed).
    pub held: Option<String>,
    pub last_error: Option<String>,
}

/// The admin status from the runtime's health report, the live copy's state and the dead
/// letters counted so far. Pure, so its shape is tested without a running projector.
pub fn admin_status(
    identity: &Identity,
    health: HealthReport,
    copy: CopyStatus,
    dead_letters: u64,
    now: DateTime<Utc>,
) -> AdminStatus {
    // As `/readyz`: a live copy that cannot be opened here makes the instance unready.
    let mut reasons: Vec<String> = copy.unavailable.iter().cloned().collect();
    reasons.extend(health.reasons);
    let held_partitions = health
        .partitions
        .iter()
        .filter(|(_, p)| p.held.is_some())
        .map(|(partition, _)| *partition)
        .collect();
    let partitions = health
        .partitions
        .into_iter()
        .map(|(partition, p)| PartitionAdmin {
            partition,
            stored_offset: p.stored_offset,
            end_offset: p.end_offset,
            lag_events: p.lag,
            lag_seconds: p.lag_ms.map(|ms| ms as f64 / 1e3),
            last_event_time: p.last_event_time,
            paused: p.paused,
            held: p.held,
            last_error: p.last_error,
        })
        .collect();
    AdminStatus {
        service: identity.service.clone(),
        version: env!("CARGO_PKG_VERSION"),
        instance: identity.instance.clone(),
        consumer_group: identity.consumer_group.clone(),
        topic: identity.topic.clone(),
        checked_at: now,
        ready: reasons.is_empty(),
        reasons,
        copy,
        dead_letters: DeadLetters {
            topic: identity.dead_letter_topic.clone(),
            events: dead_letters,
        },
        held_partitions,
        partitions,
    }
}

struct Admin<C: Copies> {
    identity: Identity,
    shared: Shared,
    live: LiveCopy<C>,
}

impl<C: Copies> Clone for Admin<C> {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            shared: self.shared.clone(),
            live: self.live.clone(),
        }
    }
}

/// `GET /v1/admin/status` ([`AdminStatus`]) behind `auth` (the `admin` scope: 401 without
/// an accepted token, 403 without the scope).
pub fn admin_router<C: Copies>(
    auth: Auth,
    identity: Identity,
    shared: Shared,
    live: LiveCopy<C>,
) -> Router {
    Router::new()
        .route("/v1/admin/status", get(status::<C>))
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_bearer,
        ))
        .with_state(Admin {
            identity,
            shared,
            live,
        })
}

async fn status<C: Copies>(State(admin): State<Admin<C>>) -> Response {
    let serving = admin.live.number();
    let unavailable = admin.live.unavailable();
    let copy = CopyStatus {
        live: unavailable.as_ref().map_or(serving, |(live, _)| *live),
        serving,
        writing: admin.live.writing(),
        unavailable: unavailable.map(|(_, why)| why),
    };
    Json(admin_status(
        &admin.identity,
        admin.shared.health.report(),
        copy,
        admin.shared.metrics.dead_lettered(),
        Utc::now(),
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::PartitionHealth;

    fn identity() -> Identity {
        Identity {
            service: "prism-ledger".into(),
            instance: "prism-ledger/host/42/0a1b2c3d".into(),
            consumer_group: "prism-ledger".into(),
            topic: "account-events".into(),
            dead_letter_topic: "account-events.dlq.ledger".into(),
        }
    }

    fn copy(unavailable: Option<&str>) -> CopyStatus {
        CopyStatus {
            live: if unavailable.is_some() { 4 } else { 3 },
            serving: 3,
            writing: unavailable.is_none().then_some(3),
            unavailable: unavailable.map(str::to_owned),
        }
    }

    #[test]
    fn the_admin_status_has_every_member_with_the_partitions_figures() {
        let health = Health::new(10);
        health.joined();
        health.update(0, |p| {
            *p = PartitionHealth {
                stored_offset: Some(41),
                end_offset: Some(45),
                lag: Some(3),
                lag_ms: Some(1_500),
                ..PartitionHealth::default()
            }
        });
        health.update(2, |p| {
            p.lag = Some(0);
            p.lag_ms = Some(0);
            p.held = Some("offset 7 holds an event this projector cannot read".into());
        });
        let now = Utc::now();
        let status = admin_status(&identity(), health.report(), copy(None), 5, now);
        let json = serde_json::to_value(&status).expect("json");
        let mut members: Vec<&str> = json
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        members.sort_unstable();
        assert_eq!(
            members,
            [
                "checked_at",
                "consumer_group",
                "copy",
                "dead_letters",
                "held_partitions",
                "instance",
                "partitions",
                "ready",
                "reasons",
                "service",
                "topic",
                "version"
            ]
        );
        assert_eq!(
            json["partitions"][0],
            serde_json::json!({
                "partition": 0, "stored_offset": 41, "end_offset": 45, "lag_events": 3,
                "lag_seconds": 1.5, "last_event_time": null, "paused": false, "held": null,
                "last_error": null
            })
        );
        assert_eq!(json["held_partitions"], serde_json::json!([2]));
        assert_eq!(
            json["dead_letters"],
            serde_json::json!({"topic": "account-events.dlq.ledger", "events": 5})
        );
        assert_eq!(
            json["copy"],
            serde_json::json!({"live": 3, "serving": 3, "writing": 3, "unavailable": null})
        );
        assert!(!status.ready, "a held partition is not ready");
        assert_eq!(status.reasons, health.report().reasons);
    }

    #[test]
    fn a_live_copy_that_cannot_be_opened_here_makes_the_status_unready_and_says_why() {
        let health = Health::new(10);
        health.joined();
        assert!(admin_status(&identity(), health.report(), copy(None), 0, Utc::now()).ready);
        let status = admin_status(
            &identity(),
            health.report(),
            copy(Some("cannot open the live copy 4")),
            0,
            Utc::now(),
        );
        assert!(!status.ready);
        assert_eq!(status.reasons, ["cannot open the live copy 4"]);
        assert_eq!((status.copy.live, status.copy.serving), (4, 3));
    }
}
