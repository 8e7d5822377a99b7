//! `prismctl bench ledger` (the binary) against the real stack, with tiny numbers: the
//! whole command path runs (fill, both ceilings twice, the real prism-ledger as a child
//! process, cleanup), the JSON has positive rates and the ratio the report promises, and
//! nothing it created is left behind.
//!
//! The projector is the `prism-ledger` binary next to the `prismctl` under test (the bench's
//! default, no `--ledger-bin`): `cargo test --workspace` builds it (prism-ledger has
//! integration tests of its own); with `cargo test -p prismctl` alone, build it first with
//! `cargo build -p prism-ledger`. The test fails with that message when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use prism_platform::config::Config;
use prism_tests::up;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

fn prism_ledger_next_to_prismctl() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_prismctl")).with_file_name("prism-ledger");
    assert!(
        path.is_file(),
        "{} is missing: the bench runs the prism-ledger binary next to prismctl. Build it \
         first with `cargo build -p prism-ledger` (`cargo test --workspace` builds it too).",
        path.display()
    );
    path
}

fn rate(report: &Value, pointer: &str) -> f64 {
    match report.pointer(pointer).and_then(Value::as_f64) {
        Some(v) => v,
        None => panic!("no number at {pointer} in {report:#}"),
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

#[tokio::test]
async fn bench_ledger_measures_three_rates_and_leaves_nothing_behind() {
    prism_ledger_next_to_prismctl();
    let config = prism_tests::config();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = up(
        "prismctl",
        Command::new(env!("CARGO_BIN_EXE_prismctl"))
            .args([
                "bench",
                "ledger",
                "--events",
                "2000",
                "--accounts",
                "50",
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
            "bench ledger --json printed no JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        ),
    };
    assert_eq!(output.status.code(), Some(0), "{report:#}\n{stderr}");

    // Three positive rates over all the events, and the ratio they promise.
    assert_eq!(report["events"], 2000);
    let consume = rate(&report, "/kafka_consume/per_second");
    let write = rate(&report, "/mysql_write/per_second");
    let projector = rate(&report, "/projector/per_second");
    for (name, v) in [
        ("kafka_consume", consume),
        ("mysql_write", write),
        ("projector", projector),
    ] {
        assert!(v.is_finite() && v > 0.0, "{name}: {v} in {report:#}");
    }
    assert_eq!(report["kafka_consume"]["events"], 4000, "two runs");
    assert_eq!(report["mysql_write"]["events"], 4000, "two runs");
    assert_eq!(report["projector"]["events"], 2000);
    let lower = consume.min(write);
    let ratio = rate(&report, "/ratio");
    assert!(
        (ratio - projector / lower).abs() <= 1e-9 * ratio.abs().max(1.0),
        "ratio {ratio} is not {projector} / min({consume}, {write})"
    );
    assert_eq!(rate(&report, "/lower_ceiling_per_second"), lower);
    assert_eq!(report["goal"], 0.8);
    assert_eq!(report["goal_met"], ratio >= 0.8);
    // The projector applied every event, stopped cleanly on SIGTERM, and its memory was seen.
    assert_eq!(
        report["projector"]["metrics"]["applied"], 2000,
        "{report:#}"
    );
    assert_eq!(report["projector"]["metrics"]["dead_lettered"], 0);
    assert_eq!(report["projector"]["exit_code"], 0);
    assert!(rate(&report, "/projector/memory/peak_rss_mib") > 0.0);

    // Nothing is left: topics (the bench topic and its dead-letter topic) and databases.
    let mut created: Vec<String> = vec![
        report["topic"].as_str().unwrap_or_default().to_owned(),
        report["dlq_topic"].as_str().unwrap_or_default().to_owned(),
    ];
    assert!(
        created.iter().all(|t| t.starts_with("bench-ledger-")),
        "{created:?}"
    );
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

    let databases: Vec<String> = report["databases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(databases.len(), 6, "{report:#}");
    let pool = up("mysql", prism_platform::clients::mysql(&config.mysql).await);
    let existing: Vec<String> =
        sqlx::query_scalar("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("listing databases: {e}"));
    created.clear();
    created.extend(databases.iter().filter(|d| existing.contains(d)).cloned());
    assert!(created.is_empty(), "databases left behind: {created:?}");
    pool.close().await;
}

#[test]
fn bad_invocations_exit_2_with_a_message() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--events", "10", "--accounts", "50"],
            "must be at least --accounts",
        ),
        (&["--partitions", "0"], "--partitions"),
        (
            &["--ledger-bin", "/nonexistent/prism-ledger"],
            "cargo build --release",
        ),
    ];
    for (args, message) in cases {
        let output = up(
            "prismctl",
            Command::new(env!("CARGO_BIN_EXE_prismctl"))
                .args(["bench", "ledger"])
                .args(args)
                .current_dir(&root)
                .env("PRISM_CONFIG", root.join("config/prism.toml"))
                .env_remove("PRISM_PROFILE")
                .output(),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
