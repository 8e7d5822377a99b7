//! `prismctl demo` and `prismctl bench visibility` (the binary) against the real stack.
//!
//! The demo runs with a Kafka topic, MongoDB database, ledger database, search indices,
//! dashboard keys and consumer groups of its own (given through `PRISM_*` variables, as a user
//! would) on port-0 listeners, with a tiny load; the test drops all of it afterwards. The bench creates (and drops) its own.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use prism_platform::config::{Config, EventStoreBackend};
use prism_tests::up;
use prismctl::services::Scratch;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

/// Runs the prismctl binary from the repository root with `envs` (off the async workers).
async fn prismctl(envs: Vec<(&'static str, String)>, args: &[&str]) -> Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let run = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_prismctl"));
        command
            .args(&args)
            .current_dir(&root)
            .env("PRISM_CONFIG", root.join("config/prism.toml"))
            .env_remove("PRISM_PROFILE")
            .env_remove("RUST_LOG");
        for (key, value) in envs {
            command.env(key, value);
        }
        command.output()
    });
    up("prismctl", up("prismctl", run.await))
}

fn scratch_env(scratch: &Scratch) -> Vec<(&'static str, String)> {
    vec![
        ("PRISM_EVENT_STORE__BACKEND", "mongodb".into()),
        ("PRISM_MONGODB__DATABASE", scratch.store.clone()),
        ("PRISM_KAFKA__TOPIC", scratch.topic.clone()),
        ("PRISM_KAFKA__TOPIC_PARTITIONS", "3".into()),
        ("PRISM_LEDGER__DATABASE", scratch.ledger_database.clone()),
        ("PRISM_LEDGER__GROUP_ID", scratch.group_id.clone()),
        ("PRISM_SEARCH__INDEX_PREFIX", scratch.search_prefix.clone()),
        ("PRISM_SEARCH__GROUP_ID", scratch.search_group()),
        (
            "PRISM_DASHBOARD__NAMESPACE",
            scratch.dashboard_namespace.clone(),
        ),
        ("PRISM_DASHBOARD__GROUP_ID", scratch.dashboard_group()),
        ("PRISM_FRAUD__NAMESPACE", scratch.fraud_namespace.clone()),
        ("PRISM_FRAUD__GROUP_ID", scratch.fraud_group()),
        (
            "PRISM_FRAUD__OFFLINE_DIR",
            scratch.fraud_offline_dir.display().to_string(),
        ),
    ]
}

fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether Kafka still has `topic`.
fn topic_exists(config: &Config, topic: &str) -> bool {
    let consumer: BaseConsumer = up(
        "kafka",
        prism_platform::clients::kafka_client_config(&config.kafka).create(),
    );
    let metadata = up(
        "kafka",
        consumer.fetch_metadata(None, Duration::from_secs(10)),
    );
    metadata.topics().iter().any(|t| t.name() == topic)
}

/// MySQL databases whose name starts with `prefix`.
async fn mysql_databases(config: &Config, prefix: &str) -> Vec<String> {
    let pool = up("mysql", prism_platform::clients::mysql(&config.mysql).await);
    let names: Vec<String> = up(
        "mysql",
        sqlx::query_scalar(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ?",
        )
        .bind(format!("{prefix}%"))
        .fetch_all(&pool)
        .await,
    );
    pool.close().await;
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_end_to_end_and_stops_cleanly() {
    let scratch = Scratch::new("prism_test_demo", EventStoreBackend::Mongodb);
    let mut config = prism_tests::config();
    scratch.apply(&mut config);
    let output = prismctl(
        scratch_env(&scratch),
        &[
            "demo",
            "--command-listen",
            "127.0.0.1:0",
            "--ledger-listen",
            "127.0.0.1:0",
            "--search-listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            "127.0.0.1:0",
            "--fraud-listen",
            "127.0.0.1:0",
            "--duration",
            "3s",
            "--rate",
            "50",
            "--accounts",
            "10",
        ],
    )
    .await;
    let leftovers = scratch.remove(&config, false).await;
    let (stdout, stderr) = texts(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "demo failed:\n{stdout}\n{stderr}"
    );
    assert!(leftovers.is_empty(), "clean-up failed: {leftovers:?}");

    // What ran where, and the traffic.
    let command_url = service_url(&stdout, "prism-command");
    assert!(command_url.starts_with("http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains(&scratch.topic), "{stdout}");
    // The live page's address, with its token, printed before the traffic.
    let page = stdout
        .lines()
        .find_map(|l| {
            l.split_once("Live page — open it now")
                .map(|(_, rest)| rest)
        })
        .and_then(|rest| rest.split_whitespace().last())
        .unwrap_or_else(|| panic!("no live page line:\n{stdout}"))
        .to_owned();
    let dashboard_url = service_url(&stdout, "prism-dashboard");
    assert!(dashboard_url.starts_with("http://127.0.0.1:"), "{stdout}");
    assert!(
        page.starts_with(&format!("{dashboard_url}/#token=")),
        "{page}"
    );
    assert!(
        stdout.find(&page) < stdout.find("Traffic: seeded loadgen"),
        "the page comes before the traffic:\n{stdout}"
    );
    assert!(stdout.contains(&scratch.dashboard_namespace), "{stdout}");
    // The analyst searches ran on prism-search, caught up with the same traffic.
    assert!(
        stdout.contains("Analyst searches (prism-search)"),
        "{stdout}"
    );
    assert!(stdout.contains("Declined card payments:"), "{stdout}");
    assert!(stdout.contains("(no accents) for"), "{stdout}");
    assert!(stdout.contains("Autocomplete"), "{stdout}");
    assert!(stdout.contains("10 of 10 accounts opened"), "{stdout}");
    // Accounts: a page of 5 and the next through the cursor, all opened by this demo (the
    // ledger database is new).
    assert!(stdout.contains("GET /v1/accounts?limit=5\n"), "{stdout}");
    assert!(
        stdout.contains("GET /v1/accounts?limit=5&cursor="),
        "{stdout}"
    );
    let ours = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("* "))
        .count();
    assert_eq!(ours, 10, "accounts marked as the demo's:\n{stdout}");
    // One account, and its statement (every account got an initial deposit).
    let id = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("ID="))
        .unwrap_or_else(|| panic!("no ID= line:\n{stdout}"))
        .to_owned();
    assert!(
        stdout.contains(&format!("account_id              {id}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("GET /v1/accounts/{id}/statement?limit=5")),
        "{stdout}"
    );
    assert!(stdout.contains("BALANCE AFTER"), "{stdout}");
    assert!(stdout.contains("deposit"), "{stdout}");
    // Read your writes.
    assert!(
        stdout.contains(&format!(
            "GET /v1/accounts/{id}  with Consistency-Token: v1."
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("after the deposit was accepted (the ledger waited until it had version"),
        "{stdout}"
    );
    // The live dashboard counted at least every command the traffic stored.
    assert!(
        stdout.contains("Live dashboard (prism-dashboard)"),
        "{stdout}"
    );
    let accepted: u64 = figure(&stdout, "accepted ");
    let events: u64 = figure(&stdout, "events in the last hour");
    assert!(accepted > 0 && events >= accepted, "{stdout}");
    assert!(
        stdout.contains("money in and out in the last hour, per currency:"),
        "{stdout}"
    );
    assert!(stdout.contains("MONEY IN"), "{stdout}");
    assert!(stdout.contains("declines, last 15 min"), "{stdout}");
    assert!(stdout.contains("top merchants, last hour"), "{stdout}");
    assert!(stdout.contains(" open · "), "{stdout}");
    // The busiest account's fraud features, and a scored candidate.
    assert!(stdout.contains("Fraud features (prism-fraud)"), "{stdout}");
    assert!(stdout.contains("(feature set fraud-v1"), "{stdout}");
    let first_time = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("first_time_at_merchant"))
        .unwrap_or_else(|| panic!("no scored candidate:\n{stdout}"));
    assert!(first_time.trim_end().ends_with("true"), "{first_time}");
    assert!(
        stdout.contains(
            "Stopped prism-command, prism-ledger, prism-search, prism-dashboard and prism-fraud cleanly"
        ),
        "{stdout}"
    );
}

/// The URL of `service` in the report's header table.
fn service_url(stdout: &str, service: &str) -> String {
    stdout
        .lines()
        .find_map(|l| {
            let mut cells = l.split_whitespace();
            (cells.next() == Some(service))
                .then(|| cells.next())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no {service} row:\n{stdout}"))
        .to_owned()
}

/// The number right after `label` at the start of a report line (`1,234` counts as 1234).
fn figure(stdout: &str, label: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("no figure after {label:?}:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_named_and_exits_2() {
    let taken = up(
        "localhost",
        tokio::net::TcpListener::bind("127.0.0.1:0").await,
    );
    let address = up("localhost", taken.local_addr()).to_string();
    let scratch = Scratch::new("prism_test_demo", EventStoreBackend::Mongodb);
    // The others on free ports, one on the taken one.
    for flag in ["--ledger-listen", "--dashboard-listen"] {
        let mut args = vec!["demo"];
        for other in [
            "--command-listen",
            "--ledger-listen",
            "--search-listen",
            "--dashboard-listen",
            "--fraud-listen",
        ] {
            args.extend([
                other,
                if other == flag {
                    &address
                } else {
                    "127.0.0.1:0"
                },
            ]);
        }
        let output = prismctl(scratch_env(&scratch), &args).await;
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(2), "{flag}: {stdout}\n{stderr}");
        assert!(stderr.contains(&address), "{stderr}");
        assert!(stderr.contains("already in use"), "{stderr}");
        assert!(stderr.contains(flag), "{stderr}");
    }
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_2() {
    for args in [
        &["demo", "--rate", "0"][..],
        &["demo", "--duration", "soon"][..],
        &["bench", "visibility", "--rate", "-5"][..],
        &["bench", "visibility", "--command-url", "http://127.0.0.1:1"][..],
    ] {
        let output = prismctl(Vec::new(), args).await;
        let (stdout, stderr) = texts(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}\n{stdout}\n{stderr}"
        );
        assert!(!stderr.trim().is_empty(), "{args:?}: no message");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_visibility_reports_the_delay_and_leaves_nothing_behind() {
    let config = prism_tests::config();
    let output = prismctl(
        Vec::new(),
        &[
            "bench",
            "visibility",
            "--rate",
            "50",
            "--duration",
            "3s",
            "--warmup",
            "500ms",
            "--accounts",
            "20",
            "--json",
        ],
    )
    .await;
    let (stdout, stderr) = texts(&output);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(output.status.code(), Some(0), "{report:#}\n{stderr}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["mode"], "in-process");
    assert_eq!(report["accounts"], 20, "{report:#}");
    assert_eq!(report["errors"], 0, "{report:#}");
    assert_eq!(report["never_visible"], 0, "{report:#}");
    assert!(report["timeouts_202"].is_u64(), "{report:#}");
    assert!(report["send_waits"].is_u64(), "{report:#}");
    // The ledger's own batching: `[ledger.projector]` over `[projector]`.
    let ledger_wait = config
        .ledger
        .runtime("ledger", &config.projector)
        .expect("ledger runtime settings")
        .batch_max_wait_ms;
    assert_eq!(report["batch_max_wait_ms"], ledger_wait, "{report:#}");
    let count = report["count"].as_u64().unwrap_or(0);
    let accepted = report["accepted"].as_u64().unwrap_or(0);
    let sent = report["sent"].as_u64().unwrap_or(0);
    assert!(count > 50, "{report:#}");
    assert_eq!(count, accepted, "{report:#}");
    assert!(accepted <= sent, "{report:#}");
    let rate = report["achieved_rate"].as_f64().unwrap_or(0.0);
    assert!((25.0..=75.0).contains(&rate), "{report:#}");
    for figures in ["delay_ms", "delay_from_request_ms", "command_ms"] {
        let f = |q: &str| report[figures][q].as_f64().unwrap_or(-1.0);
        assert!(f("p50") > 0.0, "{figures}: {report:#}");
        assert!(f("p90") >= f("p50"), "{figures}: {report:#}");
        assert!(f("p99") >= f("p90"), "{figures}: {report:#}");
        assert!(f("max") >= f("p99"), "{figures}: {report:#}");
    }
    // Measured from the request start, the delay includes the command's round trip.
    assert!(
        report["delay_from_request_ms"]["p50"].as_f64() >= report["delay_ms"]["p50"].as_f64(),
        "{report:#}"
    );

    // Everything it created is gone.
    let topic = report["topic"].as_str().unwrap_or_default().to_owned();
    assert!(topic.starts_with("prism_bench_vis_"), "{report:#}");
    assert!(!topic_exists(&config, &topic), "topic {topic} left behind");
    assert_eq!(mysql_databases(&config, &topic).await, Vec::<String>::new());
    if config.event_store.backend == EventStoreBackend::Mongodb {
        let mongo = up(
            "mongodb",
            prism_platform::clients::mongodb(&config.mongodb, "prismctl-test").await,
        );
        let names = up("mongodb", mongo.list_database_names().await);
        assert!(!names.contains(&topic), "database {topic} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_down_is_named_with_dev_stack_up_and_exits_1() {
    let scratch = Scratch::new("prism_test_demo", EventStoreBackend::Mongodb);
    let mut envs = scratch_env(&scratch);
    envs.push(("PRISM_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1".into()));
    let output = prismctl(envs, &["demo", "--command-listen", "127.0.0.1:0"]).await;
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("kafka at 127.0.0.1:1 is not answering"),
        "{stderr}"
    );
    assert!(stderr.contains("`dev/stack up`"), "{stderr}");
    // Nothing was started, so nothing was created.
    let config = prism_tests::config();
    assert!(mysql_databases(&config, &scratch.ledger_database)
        .await
        .is_empty());
}
