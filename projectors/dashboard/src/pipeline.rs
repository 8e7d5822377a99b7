//! Pipeline health for the page: every `health_poll_ms`, each configured service's
//! `/metrics` (and `/readyz`) is read and summed into one row: a projector's lag in records
//! (`prism_projector_consumer_lag`) and in seconds (`prism_projector_lag_seconds`), its dead
//! letters (`prism_projector_events_total{outcome="dead_lettered"}`); `prism-command`'s
//! relay backlog (`prism_relay_backlog_events`, `…_age_seconds`). This service reports
//! itself from its own runtime, without a request. A service that does not answer is
//! `up: false` with the error, never a missing row.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use parking_lot::RwLock;
use prism_projector::Health;
use prometheus_parse::{Scrape, Value as Sample};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// One row of the health table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceHealth {
    pub name: String,
    /// `projector` or `relay`.
    pub kind: &'static str,
    pub up: bool,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_events: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_backlog: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_backlog_age_seconds: Option<f64>,
    pub error: Option<String>,
}

/// The whole table, as the summary carries it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PipelineHealth {
    pub checked_at: Option<String>,
    pub services: Vec<ServiceHealth>,
}

/// Sums a scrape into a row (pure).
pub fn from_scrape(name: &str, scrape: &Scrape, ready: bool) -> ServiceHealth {
    let mut row = ServiceHealth {
        name: name.to_owned(),
        kind: "projector",
        up: true,
        ready,
        ..Default::default()
    };
    let value = |s: &prometheus_parse::Sample| match s.value {
        Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => v,
        _ => 0.0,
    };
    let mut lag: Option<f64> = None;
    let mut lag_s: Option<f64> = None;
    let mut dead: Option<f64> = None;
    for s in &scrape.samples {
        match s.metric.as_str() {
            "prism_projector_consumer_lag" => *lag.get_or_insert(0.0) += value(s),
            "prism_projector_lag_seconds" => {
                lag_s = Some(lag_s.unwrap_or(0.0).max(value(s)));
            }
            "prism_projector_events_total" => {
                let d = dead.get_or_insert(0.0);
                if s.labels.get("outcome") == Some("dead_lettered") {
                    *d += value(s);
                }
            }
            "prism_relay_backlog_events" => {
                row.kind = "relay";
                row.relay_backlog = Some(value(s) as i64);
            }
            "prism_relay_backlog_age_seconds" => {
                row.relay_backlog_age_seconds = Some(value(s));
            }
            _ => {}
        }
    }
    if row.kind == "projector" {
        row.lag_events = lag.map(|v| v as i64);
        row.lag_seconds = lag_s;
        row.dead_letters = dead.map(|v| v as i64);
    }
    row
}

/// This service's own row, from its runtime.
pub fn own(name: &str, health: &Health, dead_letters: i64) -> ServiceHealth {
    let report = health.report();
    let lag = report.partitions.values().filter_map(|p| p.lag).sum();
    let lag_ms = report
        .partitions
        .values()
        .filter_map(|p| p.lag_ms)
        .max()
        .unwrap_or(0);
    ServiceHealth {
        name: name.to_owned(),
        kind: "projector",
        up: true,
        ready: report.ready,
        lag_events: Some(lag),
        lag_seconds: Some(lag_ms as f64 / 1e3),
        dead_letters: Some(dead_letters),
        error: (!report.ready).then(|| report.reasons.join("; ")),
        ..Default::default()
    }
}

/// The latest table, shared with the API.
pub type Latest = Arc<RwLock<PipelineHealth>>;

/// Polls `targets` until `stop`, keeping `latest` current; `this` gives this service's row.
pub async fn poll(
    targets: Vec<(String, String)>,
    every: Duration,
    latest: Latest,
    this: impl Fn() -> ServiceHealth + Send + 'static,
    stop: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(1_500))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "pipeline health: no HTTP client");
            return;
        }
    };
    loop {
        let mut services = vec![this()];
        let checks = targets.iter().map(|(name, url)| scrape(&client, name, url));
        services.extend(futures::future::join_all(checks).await);
        *latest.write() = PipelineHealth {
            checked_at: Some(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
            services,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn scrape(client: &reqwest::Client, name: &str, url: &str) -> ServiceHealth {
    let down = |error: String| ServiceHealth {
        name: name.to_owned(),
        kind: if name == "command" {
            "relay"
        } else {
            "projector"
        },
        error: Some(error),
        ..Default::default()
    };
    let body = match client.get(url).send().await {
        Ok(r) if r.status().is_success() => match r.text().await {
            Ok(b) => b,
            Err(e) => return down(format!("reading {url}: {e}")),
        },
        Ok(r) => return down(format!("{url} answered {}", r.status())),
        Err(e) => return down(format!("{url}: {}", without_url(&e))),
    };
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = match Scrape::parse(lines) {
        Ok(s) => s,
        Err(e) => return down(format!("{url} is not Prometheus text: {e}")),
    };
    let ready_url = url.trim_end_matches("/metrics").to_owned() + "/readyz";
    let ready = client
        .get(&ready_url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    let mut row = from_scrape(name, &scrape, ready);
    if !ready {
        row.error = Some("not ready (see its /readyz)".into());
    }
    row
}

/// A request error without the URL repeated (the row names it already).
fn without_url(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connection refused".into()
    } else if e.is_timeout() {
        "no answer in time".into()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projectors_scrape_sums_lag_and_dead_letters_and_a_relays_gives_its_backlog() {
        let text = "\
# TYPE prism_projector_consumer_lag gauge
prism_projector_consumer_lag{projector=\"ledger\",partition=\"0\"} 3
prism_projector_consumer_lag{projector=\"ledger\",partition=\"1\"} 4
prism_projector_lag_seconds{projector=\"ledger\",partition=\"0\"} 1.5
prism_projector_lag_seconds{projector=\"ledger\",partition=\"1\"} 0.25
prism_projector_events_total{projector=\"ledger\",type=\"MoneyDeposited\",outcome=\"applied\"} 90
prism_projector_events_total{projector=\"ledger\",type=\"MoneyDeposited\",outcome=\"dead_lettered\"} 2
";
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
        let row = from_scrape("ledger", &scrape, true);
        assert_eq!(row.lag_events, Some(7));
        assert_eq!(row.lag_seconds, Some(1.5));
        assert_eq!(row.dead_letters, Some(2));
        assert_eq!(row.kind, "projector");
        let relay = "prism_relay_backlog_events 12\nprism_relay_backlog_age_seconds 0.5\n";
        let scrape = Scrape::parse(relay.lines().map(|l| Ok(l.to_owned()))).expect("parses");
        let row = from_scrape("command", &scrape, true);
        assert_eq!((row.kind, row.relay_backlog), ("relay", Some(12)));
        assert_eq!(row.lag_events, None);
    }
}
