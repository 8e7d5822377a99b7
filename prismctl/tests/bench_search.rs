//! `prismctl bench search` (the binary) against the real stack, with tiny numbers: all three
//! phases run (fill, ceiling, in-process projector, ceiling again; searches through the
//! real API; command → searchable with prism-command and prism-search in-process), the
//! JSON holds every figure the report promises, finite, with the ratio it says, and nothing
//! the bench created is left behind. Not a timed test: no figure is held to a goal.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use elasticsearch::cat::CatIndicesParts;
use prism_platform::config::Config;
use prism_tests::up;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

fn number(report: &Value, pointer: &str) -> f64 {
    match report.pointer(pointer).and_then(Value::as_f64) {
        Some(v) if v.is_finite() => v,
        other => panic!("no finite number at {pointer} ({other:?}) in {report:#}"),
    }
}

fn topics(config: &Config) -> Vec<String> {
    let client: BaseConsumer = up(
        "kafka",
        prism_platform::clients::kafka_client_config(&config.kafka).create(),
    );
    let metadata = up(
        "kafka",
        client.fetch_metadata(None, Duration::from_secs(10)),
    );
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect()
}

/// Indices whose names start with `prefix`.
async fn indices(config: &Config, prefix: &str) -> Vec<String> {
    let client = up(
        "elasticsearch",
        prism_platform::clients::elasticsearch(&config.elasticsearch),
    );
    let pattern = format!("{prefix}*");
    let response = up(
        "elasticsearch",
        client
            .cat()
            .indices(CatIndicesParts::Index(&[&pattern]))
            .format("json")
            .send()
            .await,
    );
    let listed: Value = up("elasticsearch", response.json().await);
    listed
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["index"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn bench_search_reports_all_three_phases_and_leaves_nothing_behind() {
    let config = prism_tests::config();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = up(
        "prismctl",
        Command::new(env!("CARGO_BIN_EXE_prismctl"))
            .args([
                "bench",
                "search",
                "--events",
                "2000",
                "--accounts",
                "50",
                "--queries",
                "50",
                "--rate",
                "50",
                "--duration",
                "3s",
                "--json",
            ])
            .current_dir(&root)
            .env("PRISM_CONFIG", root.join("config/prism.toml"))
            .env_remove("PRISM_PROFILE")
            .output(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = match serde_json::from_slice(&output.stdout) {
        Ok(v) => v,
        Err(e) => panic!(
            "bench search --json printed no JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        ),
    };
    assert_eq!(output.status.code(), Some(0), "{report:#}\n{stderr}");
    assert_eq!(report["events"], 2000);

    // 1. Both rates over all the events, and the ratio they promise.
    let projector = number(&report, "/projection/projector/per_second");
    let raw = number(&report, "/projection/raw_bulk/per_second");
    assert!(projector > 0.0 && raw > 0.0, "{report:#}");
    assert_eq!(report["projection"]["projector"]["events"], 2000);
    assert_eq!(report["projection"]["raw_bulk"]["events"], 4000, "two runs");
    let ratio = number(&report, "/projection/ratio");
    assert!(
        (ratio - projector / raw).abs() <= 1e-9 * ratio.max(1.0),
        "ratio {ratio} is not {projector} / {raw}"
    );
    assert_eq!(report["projection"]["goal_met"], ratio >= 0.8);
    assert_eq!(report["projection"]["applied"], 2000, "{report:#}");
    assert_eq!(report["projection"]["dead_lettered"], 0);

    // 2. Every search answered 200 with hits, over the projected transactions.
    let q = &report["queries"];
    assert_eq!(q["queries"], 50, "{report:#}");
    assert_eq!(q["errors"], 0, "{report:#}");
    let documents = number(&report, "/queries/documents");
    assert!(documents > 0.0 && documents <= 2000.0, "{report:#}");
    assert!(
        number(&report, "/queries/mean_total_hits") > 0.0,
        "{report:#}"
    );
    let p50 = number(&report, "/queries/latency_ms/p50");
    let p99 = number(&report, "/queries/latency_ms/p99");
    assert!(0.0 < p50 && p50 <= p99, "{report:#}");
    assert_eq!(q["goal_met"], p99 <= 100.0);

    // 3. Every accepted payment was found searchable.
    let f = &report["freshness"];
    let accepted = f["accepted"].as_u64().unwrap_or(0);
    assert!(accepted > 0, "{report:#}");
    assert_eq!(f["searchable"], accepted, "{report:#}");
    assert_eq!(f["never_searchable"], 0);
    assert_eq!(f["errors"], 0, "{report:#}");
    let p99 = number(&report, "/freshness/latency_ms/p99");
    assert!(p99 > 0.0, "{report:#}");
    assert_eq!(f["goal_met"], p99 <= 1500.0);

    // Nothing is left: the topics and every index of the bench's prefixes.
    let created: Vec<String> = [&report["topic"], &f["topic"]]
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    assert_eq!(created.len(), 2, "{report:#}");
    let mut left = Vec::new();
    for _ in 0..20 {
        let now = topics(&config);
        left = created
            .iter()
            .filter(|t| now.contains(t))
            .cloned()
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(left.is_empty(), "topics left behind: {left:?}");
    let prefixes: Vec<String> = report["index_prefixes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(prefixes.len(), 3, "{report:#}");
    for prefix in prefixes.iter().chain([&created[1].replace('_', "-")]) {
        let left = indices(&config, prefix).await;
        assert!(left.is_empty(), "indices left behind: {left:?}");
    }
}
