//! `prism-dashboard` end to end, against the real stack: the write side runs in-process
//! (PostgreSQL event store in a schema of its own, relay on), the real `prism-dashboard`
//! binary runs as a child process configured like an operator would, with a topic,
//! consumer group, Redis namespace and store schema of its own per test.
//!
//! Each test that writes ends with the guarantee itself: `prismctl verify dashboard` finds
//! every counter, top list, distinct count, account and feed entry equal to the fold of
//! the whole event store.
//!
//! The projector is the `prism-dashboard` binary next to the `prismctl` under test
//! (`cargo test --workspace` builds it; with `-p prismctl` alone, build it first).

mod e2e;

use std::fs::File;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{CommandService, TOKEN};
use futures::FutureExt as _;
use prism_platform::config::{Config, Sources};
use prism_tests::{repo_root, unique, up};
use prismctl::models::Model;
use prismctl::verify_model::{verify_model, ModelReport};
use serde_json::{json, Value};

/// One test at a time: one of them restarts Redis.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's names, as a profile file (what the child loads) and as the loaded config.
struct Env {
    config: Config,
    profile: PathBuf,
}

impl Env {
    fn new(partitions: i32) -> Env {
        let topic = unique("prism-test-dash");
        let schema = unique("prism_test_dash");
        let namespace = format!("prism-test:{}", unique("dash"));
        let group = unique("prism-test-dash");
        let profile = std::env::temp_dir().join(format!("{}.toml", unique("prism-dash-e2e")));
        let text = format!(
            r#"[log]
level = "warn"

[kafka]
topic = "{topic}"
topic_partitions = {partitions}

[event_store]
backend = "postgres"
postgres_schema = "{schema}"

[relay]
sweep_interval_ms = 200

[projector]
batch_max_wait_ms = 5
lag_interval_ms = 200
session_timeout_ms = 6000
retry_backoff_ms = 50
retry_backoff_max_ms = 1000

[dashboard]
namespace = "{namespace}"
group_id = "{group}"
copy_poll_ms = 200
health_poll_ms = 500
health_targets = []
"#
        );
        up("the temp dir", std::fs::write(&profile, text));
        let sources = Sources {
            base: Some(repo_root().join("config/prism.toml")),
            profile: Some(profile.display().to_string()),
        };
        let config = match sources.load() {
            Ok(config) => config,
            Err(e) => panic!("loading the test's profile {}: {e}", profile.display()),
        };
        Env { config, profile }
    }

    fn dashboard(&self) -> prism_dashboard::DashboardConfig {
        up(
            "the [dashboard] section",
            self.config.dashboard.parse("dashboard"),
        )
    }

    async fn clean_up(&self) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        use rdkafka::client::DefaultClientContext;
        let kafka = prism_platform::clients::kafka_client_config(&self.config.kafka);
        if let Ok(admin) = kafka.create::<AdminClient<DefaultClientContext>>() {
            let options = AdminOptions::new();
            let dlq = prism_projector::dlq::topic_name(
                &self.config.kafka.topic,
                &self.config.projector.dlq_suffix,
                "dashboard",
            );
            let _ = admin
                .delete_topics(&[&self.config.kafka.topic, &dlq], &options)
                .await;
            let group = self.dashboard().group_id;
            let rebuild = format!("{group}-rebuild-g2");
            let _ = admin.delete_groups(&[&group, &rebuild], &options).await;
        }
        if let Ok(pg) = prism_platform::clients::postgres(&self.config.postgres).await {
            let _ = sqlx::query(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.config.event_store.postgres_schema
            ))
            .execute(&pg)
            .await;
        }
        if let Ok(mut redis) = prism_platform::clients::redis_connection(&self.config.redis).await {
            let pattern = format!("{}:*", self.dashboard().namespace);
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut redis)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut redis)
                    .await;
            }
        }
        let _ = std::fs::remove_file(&self.profile);
    }
}

/// Runs `body` in an [`Env`] of its own and cleans up whether it passed or not.
async fn isolated<F, Fut>(partitions: i32, body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()>,
{
    let env = Arc::new(Env::new(partitions));
    let outcome = AssertUnwindSafe(body(Arc::clone(&env)))
        .catch_unwind()
        .await;
    env.clean_up().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_prismctl")).with_file_name("prism-dashboard");
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p prism-dashboard` \
         (`cargo test --workspace` builds it too).",
        path.display()
    );
    path
}

/// The real `prism-dashboard`; killed when dropped.
struct Dashboard {
    profile: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    url: String,
    http: reqwest::Client,
}

impl Dashboard {
    fn start(env: &Env) -> Dashboard {
        let log = std::env::temp_dir().join(format!("{}.log", unique("prism-dash-e2e")));
        eprintln!("prism-dashboard's stderr goes to {}", log.display());
        let mut d = Dashboard {
            profile: env.profile.clone(),
            log,
            child: None,
            url: String::new(),
            http: up(
                "reqwest",
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build(),
            ),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let root = repo_root();
        let listener = up("localhost", std::net::TcpListener::bind("127.0.0.1:0"));
        let port = up("localhost", listener.local_addr()).port();
        drop(listener);
        let stderr = up(
            "the log file",
            File::options().create(true).append(true).open(&self.log),
        );
        let child = Command::new(binary())
            .current_dir(&root)
            .env("PRISM_CONFIG", root.join("config/prism.toml"))
            .env("PRISM_PROFILE", &self.profile)
            .env("PRISM_DASHBOARD__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn();
        self.child = Some(up("the prism-dashboard binary", child));
        self.url = format!("http://127.0.0.1:{port}");
    }

    /// SIGKILL: no shutdown, nothing stored on the way out.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "prism-dashboard exited ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prism-dashboard not ready within {limit:?}; its log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET `path` with the token: status and body.
    async fn get(&self, path: &str) -> (u16, String, String) {
        let r = up(
            "prism-dashboard",
            self.http
                .get(format!("{}{path}", self.url))
                .bearer_auth(TOKEN)
                .send()
                .await,
        );
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, r.text().await.unwrap_or_default())
    }

    async fn summary(&self) -> Value {
        let (status, _, body) = self.get("/v1/dashboard/summary").await;
        assert_eq!(status, 200, "{body}");
        up("the summary", serde_json::from_str(&body))
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `prismctl verify dashboard`, re-checking for up to `wait`.
async fn verify(config: &Config, wait: Duration) -> ModelReport {
    let verifier = up("redis", Model::Dashboard.verifier(config).await);
    let Some(verifier) = verifier else {
        panic!("the dashboard has no verifier");
    };
    let options = prismctl::verify::Options {
        wait,
        ..Default::default()
    };
    let report = up(
        "prismctl verify dashboard",
        verify_model(config, "dashboard", verifier.as_ref(), &options).await,
    );
    eprintln!(
        "verify dashboard: ok={} events={} expected={} stored={} differences={} attempts={}",
        report.ok,
        report.events,
        report.documents_expected,
        report.documents_stored,
        report.difference_count,
        report.attempts
    );
    report
}

fn assert_identical(report: &ModelReport, documents: usize) {
    assert!(
        report.ok,
        "the dashboard differs from the event store: {} differences; first: {}",
        report.difference_count,
        serde_json::to_string(&report.differences.iter().take(5).collect::<Vec<_>>())
            .unwrap_or_default()
    );
    assert!(
        report.documents_expected >= documents,
        "{} documents expected, at least {documents} wanted",
        report.documents_expected
    );
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let response = up(
        "prism-command",
        http.post(&url).bearer_auth(TOKEN).json(&body).send().await,
    );
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{url}: {status} {text}");
    up("prism-command's answer", serde_json::from_str(&text))
}

async fn open_account(http: &reqwest::Client, command: &CommandService, i: usize) -> String {
    let answer = post(
        http,
        format!("{}/v1/accounts", command.url),
        json!({"holder_name": format!("Holder {i}"), "email": format!("h{i}@example.org"),
               "country": "PT", "currency": "EUR"}),
    )
    .await;
    answer["account_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no account_id in {answer}"))
        .to_owned()
}

/// A seeded load of `events` commands while the dashboard is killed (SIGKILL) twice and
/// started again: the model ends equal to the fold of the store, and the summary's hour
/// counts every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_survives_kills_mid_load_and_verifies_clean() {
    let _one = ONE_AT_A_TIME.lock().await;
    isolated(3, |env| async move {
        let command = CommandService::start(&env.config).await;
        let mut dashboard = Dashboard::start(&env);
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let stored = Arc::new(AtomicU64::new(0));
        let load = tokio::spawn(e2e::seeded_load(
            command.url.clone(),
            11,
            40,
            1_500,
            8,
            Arc::clone(&stored),
        ));
        for at in [400, 900] {
            while stored.load(Ordering::Relaxed) < at && !load.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            dashboard.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            dashboard.spawn();
        }
        let total = up("the load", load.await);
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let report = verify(&env.config, Duration::from_secs(90)).await;
        assert_identical(&report, 40);
        assert_eq!(report.events, total, "every stored command is one event");
        let summary = dashboard.summary().await;
        assert_eq!(
            summary["windows"]["1h"]["events"].as_u64(),
            Some(total),
            "the last hour counts every event: {}",
            summary["windows"]["1h"]
        );
        let open = summary["accounts"]["open"].as_i64().unwrap_or(0)
            + summary["accounts"]["frozen"].as_i64().unwrap_or(0)
            + summary["accounts"]["closed"].as_i64().unwrap_or(0);
        assert_eq!(
            open, 40,
            "every account is counted once: {}",
            summary["accounts"]
        );
        command.stop().await;
    })
    .await;
}

/// Frames of `/v1/dashboard/stream`, parsed as they arrive.
async fn frames(
    dashboard: &Dashboard,
) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, u64, Value)> {
    let response = up(
        "prism-dashboard",
        reqwest::Client::new()
            .get(format!("{}/v1/dashboard/stream", dashboard.url))
            .bearer_auth(TOKEN)
            .send()
            .await,
    );
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut response = response;
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let mut id = 0;
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().unwrap_or(0);
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Ok(value) = serde_json::from_str(&data) {
                    if tx.send((Instant::now(), id, value)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// A large deposit shows in the stream's feed within a second of being accepted; bad
/// parameters are 400 problems naming the field; no token is a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_shows_a_command_within_a_second_and_bad_input_is_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    isolated(2, |env| async move {
        let command = CommandService::start(&env.config).await;
        let mut dashboard = Dashboard::start(&env);
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let http = reqwest::Client::new();
        let account = open_account(&http, &command, 1).await;
        let mut stream = frames(&dashboard).await;
        let sent = Instant::now();
        let answer = post(
            &http,
            format!("{}/v1/accounts/{account}/deposits", command.url),
            json!({"amount_minor": 250_000}),
        )
        .await;
        let accepted = Instant::now();
        let version = answer["version"].as_u64().expect("a version");
        let seen = loop {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.recv()).await;
            let Ok(Some((at, tick, frame))) = next else {
                panic!(
                    "no frame showed the deposit within 10 s; log:\n{}",
                    dashboard.log_tail()
                );
            };
            assert!(tick > 0, "frames are numbered");
            let found = frame["feed"].as_array().is_some_and(|feed| {
                feed.iter()
                    .any(|e| e["account_id"] == json!(account) && e["version"] == json!(version))
            });
            if found {
                assert_eq!(frame["feed"][0]["amount_minor"], json!(250_000));
                assert_eq!(frame["feed"][0]["large"], json!(true));
                break at;
            }
        };
        let delay = seen.saturating_duration_since(accepted);
        eprintln!(
            "accepted → in the stream: {} ms (command took {} ms)",
            delay.as_millis(),
            accepted.duration_since(sent).as_millis()
        );
        assert!(delay < Duration::from_secs(1), "took {delay:?}");

        for (path, field) in [
            ("/v1/dashboard/series?metric=nope", "metric"),
            ("/v1/dashboard/series?metric=events&window=3h", "window"),
            ("/v1/dashboard/series?metric=money_in", "currency"),
            (
                "/v1/dashboard/series?metric=money_in&currency=EURO",
                "currency",
            ),
            (
                "/v1/dashboard/series?metric=events&currency=EUR",
                "currency",
            ),
            ("/v1/dashboard/summary?window=1h", "window"),
        ] {
            let (status, content_type, body) = dashboard.get(path).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert_eq!(content_type, "application/problem+json", "{path}");
            let problem: Value = up("a problem", serde_json::from_str(&body));
            assert_eq!(problem["field"], json!(field), "{path}: {problem}");
        }
        let (status, _, body) = dashboard
            .get("/v1/dashboard/series?metric=money_in&currency=EUR&window=10m")
            .await;
        assert_eq!(status, 200, "{body}");
        let series: Value = up("a series", serde_json::from_str(&body));
        let points = series["points"].as_array().expect("points");
        assert_eq!(points.len(), 600);
        let total: i64 = points.iter().filter_map(|p| p["v"].as_i64()).sum();
        assert_eq!(total, 250_000, "the deposit is in the last ten minutes");

        let anonymous = up(
            "prism-dashboard",
            http.get(format!("{}/v1/dashboard/summary", dashboard.url))
                .send()
                .await,
        );
        assert_eq!(anonymous.status(), 401);
        let page = up("prism-dashboard", http.get(&dashboard.url).send().await);
        assert_eq!(page.status(), 200, "the page itself needs no token");
        command.stop().await;
    })
    .await;
}

fn stack(args: &[&str]) {
    let status = Command::new(repo_root().join("dev/stack"))
        .args(args)
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .status();
    let status = up("dev/stack", status);
    assert!(status.success(), "dev/stack {}: {status}", args.join(" "));
}

/// Brings Redis back if the test fails while it is down.
struct RedisBack(bool);

impl Drop for RedisBack {
    fn drop(&mut self) {
        if self.0 {
            let _ = Command::new(repo_root().join("dev/stack"))
                .args(["up", "redis"])
                .current_dir(repo_root())
                .status();
        }
    }
}

/// Redis stops for a few seconds while deposits keep coming: the projector retries (a
/// lost connection is transient: nothing skipped, nothing dead-lettered), and once Redis is
/// back the model converges to the fold of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_converges_after_redis_restarts_mid_stream() {
    let _one = ONE_AT_A_TIME.lock().await;
    isolated(2, |env| async move {
        let command = CommandService::start(&env.config).await;
        let mut dashboard = Dashboard::start(&env);
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let http = reqwest::Client::new();
        let mut accounts = Vec::new();
        for i in 0..5 {
            accounts.push(open_account(&http, &command, i).await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let deposits = {
            let (stop, url, accounts) = (Arc::clone(&stop), command.url.clone(), accounts.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut sent = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = &accounts[sent as usize % accounts.len()];
                    let ok = http
                        .post(format!("{url}/v1/accounts/{id}/deposits"))
                        .bearer_auth(TOKEN)
                        .json(&json!({"amount_minor": 100 + sent % 7}))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    sent += u64::from(ok);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                sent
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut back = RedisBack(true);
        stack(&["down", "redis"]);
        tokio::time::sleep(Duration::from_secs(4)).await;
        stack(&["up", "redis"]);
        back.0 = false;
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let sent = up("the deposits", deposits.await);
        assert!(sent > 100, "deposits kept coming: {sent}");
        let report = verify(&env.config, Duration::from_secs(90)).await;
        assert_identical(&report, 5);
        let (status, _, metrics) = dashboard.get("/metrics").await;
        assert_eq!(status, 200);
        let dead: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("prism_projector_events_total") && l.contains("dead_lettered")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(dead, 0.0, "nothing was dead-lettered");
        dashboard.kill();
        command.stop().await;
    })
    .await;
}
