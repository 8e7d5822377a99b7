//! `prism-search` end to end, against the real stack: the write side (`prism_command::app::run`,
//! PostgreSQL event store in a schema of its own, relay on) runs in-process, the real
//! `prism-search` binary runs as child processes configured like an operator would
//! (`PRISM_CONFIG`, `PRISM_PROFILE`, `PRISM_*` variables), with a topic, consumer group,
//! index prefix and store schema of its own per test.
//!
//! Each test ends by checking the guarantee itself: `prismctl verify search` finds the
//! whole search model (every account and transaction document) equal to the search fold of
//! the whole event store, and nothing went to the dead-letter topic.
//!
//! The projector is the `prism-search` binary next to the `prismctl` under test:
//! `cargo test --workspace` builds it; with `cargo test -p prismctl` alone, build it first
//! with `cargo build -p prism-search`. The tests fail with that message when it is missing.

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
use prism_search::copies::SearchCopies;
use prism_tests::{repo_root, unique, up};
use prismctl::models::Model;
use prismctl::rebuild::{Options as RebuildOptions, Source};
use prismctl::verify_model::{verify_model, ModelReport};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// The tests of this file run one at a time: one of them stops the search engine for
/// 30 s, which the others (and their child processes) must not meet halfway.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------
// The test's world: a configuration of its own, written as a profile file
// ---------------------------------------------------------------------------------------

/// What a test changes in its configuration.
#[derive(Debug, Clone, Copy)]
struct Setup {
    partitions: i32,
    /// `[search] refresh_interval_ms`.
    refresh_interval_ms: u64,
    /// `[search] wait_timeout_ms`.
    wait_timeout_ms: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            partitions: 3,
            refresh_interval_ms: 1_000,
            wait_timeout_ms: 5_000,
        }
    }
}

/// One test's names, as a profile file over `config/prism.toml` (what the child processes
/// load through `PRISM_PROFILE`) and as the loaded [`Config`] (what runs in-process).
struct Env {
    config: Config,
    profile: PathBuf,
}

impl Env {
    fn new(setup: Setup) -> Env {
        let topic = unique("prism-test-search");
        let schema = unique("prism_test_search");
        let prefix = unique("prism-test-search");
        let group = unique("prism-test-search");
        let profile = std::env::temp_dir().join(format!("{}.toml", unique("prism-search-e2e")));
        let text = format!(
            r#"[log]
# The runtime's own info lines (assignments, fences, rewinds, copy moves) are few: kept,
# so a failure's log tail shows how the partitions moved.
level = "warn,prism_projector=info"

[kafka]
topic = "{topic}"
topic_partitions = {partitions}

[event_store]
backend = "postgres"
postgres_schema = "{schema}"

[relay]
sweep_interval_ms = 200

[projector]
batch_max_wait_ms = 10
lag_interval_ms = 200
session_timeout_ms = 6000
retry_backoff_ms = 50
retry_backoff_max_ms = 2000

[search]
index_prefix = "{prefix}"
group_id = "{group}"
copy_poll_ms = 200
refresh_interval_ms = {refresh}
wait_timeout_ms = {wait}
"#,
            partitions = setup.partitions,
            refresh = setup.refresh_interval_ms,
            wait = setup.wait_timeout_ms,
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

    fn group_id(&self) -> String {
        match prism_search::app::SearchProjector::new(self.config.clone()) {
            Ok(p) => p.search_config().group_id.clone(),
            Err(e) => panic!("the test's [search] section: {e:#}"),
        }
    }

    fn dlq_topic(&self) -> String {
        prism_projector::dlq::topic_name(
            &self.config.kafka.topic,
            &self.config.projector.dlq_suffix,
            prism_search::app::NAME,
        )
    }

    /// Drops what the test made: the indices under its prefix, its topics and consumer
    /// groups (including those of `rebuilds`), its event-store schema and its profile.
    async fn clean_up(&self, rebuilds: &[u32]) {
        if let Ok(projector) = prism_search::app::SearchProjector::new(self.config.clone()) {
            if let Ok(copies) =
                SearchCopies::connect(&self.config.elasticsearch, projector.search_config()).await
            {
                if let Err(e) = copies.drop_everything().await {
                    eprintln!("cleaning up the test's indices: {e:#}");
                }
            }
        }
        if let Ok(admin) = prism_platform::clients::kafka_client_config(&self.config.kafka)
            .create::<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>>(
        ) {
            let options = rdkafka::admin::AdminOptions::new();
            let dlq = self.dlq_topic();
            let _ = admin
                .delete_topics(&[&self.config.kafka.topic, &dlq], &options)
                .await;
            let group = self.group_id();
            let groups: Vec<String> = std::iter::once(group.clone())
                .chain(rebuilds.iter().map(|g| format!("{group}-rebuild-g{g}")))
                .collect();
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            let _ = admin.delete_groups(&groups, &options).await;
        }
        prism_tests::drop_event_store(&self.config).await;
        let _ = std::fs::remove_file(&self.profile);
    }
}

/// Runs `body` in an [`Env`] of its own and cleans up whether it passed or not (the body's
/// processes are dropped, so killed, before the indices go). `body` answers the numbers of
/// the copies rebuilds made (their consumer groups are dropped too).
async fn isolated<F, Fut>(setup: Setup, body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = Vec<u32>>,
{
    let env = Arc::new(Env::new(setup));
    let outcome = AssertUnwindSafe(body(Arc::clone(&env)))
        .catch_unwind()
        .await;
    env.clean_up(outcome.as_ref().map(Vec::as_slice).unwrap_or(&[2]))
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------------------
// The processes
// ---------------------------------------------------------------------------------------

fn prism_search_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_prismctl")).with_file_name("prism-search");
    assert!(
        path.is_file(),
        "{} is missing: these tests run the prism-search binary next to prismctl. Build it \
         first with `cargo build -p prism-search` (`cargo test --workspace` builds it too).",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    let listener = up("localhost", std::net::TcpListener::bind("127.0.0.1:0"));
    up("localhost", listener.local_addr()).port()
}

/// The real `prism-search` binary; killed when dropped (also when the test fails).
struct SearchProcess {
    profile: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    url: String,
    http: reqwest::Client,
}

impl SearchProcess {
    fn start(env: &Env) -> SearchProcess {
        let log = std::env::temp_dir().join(format!("{}.log", unique("prism-search-e2e")));
        eprintln!("prism-search's stderr goes to {}", log.display());
        let http = up(
            "reqwest",
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build(),
        );
        let mut process = SearchProcess {
            profile: env.profile.clone(),
            log,
            child: None,
            url: String::new(),
            http,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let root = repo_root();
        let port = free_port();
        let stderr = up(
            "the log file",
            File::options().create(true).append(true).open(&self.log),
        );
        let child = Command::new(prism_search_binary())
            .current_dir(&root)
            .env("PRISM_CONFIG", root.join("config/prism.toml"))
            .env("PRISM_PROFILE", &self.profile)
            .env("PRISM_SEARCH__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn();
        self.child = Some(up("the prism-search binary", child));
        self.url = format!("http://127.0.0.1:{port}");
    }

    /// SIGKILL: no shutdown, no commit, no leaving the group.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Fails the test if the process ended by itself.
    fn assert_running(&mut self) {
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            panic!(
                "prism-search exited by itself ({status}); its log:\n{}",
                self.log_tail()
            );
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// `/readyz`'s status and body (`None`: no answer).
    async fn readyz(&self) -> Option<(u16, String)> {
        let r = self
            .http
            .get(format!("{}/readyz", self.url))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.unwrap_or_default()))
    }

    async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.assert_running();
            if let Some((200, _)) = self.readyz().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prism-search at {} not ready within {limit:?}; its log:\n{}",
                self.url,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The sum of `metric` over the series carrying every label of `labels` (0 when the
    /// process does not answer).
    async fn metric(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let Ok(r) = self.http.get(format!("{}/metrics", self.url)).send().await else {
            return 0.0;
        };
        metric_sum(&r.text().await.unwrap_or_default(), metric, labels)
    }
}

impl Drop for SearchProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            let wanted = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| rest.rsplit(' ').next()?.parse::<f64>().ok())?
        })
        .sum()
}

// ---------------------------------------------------------------------------------------
// Traffic, checks
// ---------------------------------------------------------------------------------------

/// Sends the seeded, realistic traffic of `seed` over `accounts` accounts until `events`
/// commands are stored; returns the number stored.
async fn seeded_load(url: String, seed: u64, accounts: usize, events: u64) -> u64 {
    const CONCURRENCY: usize = 8;
    let stored = Arc::new(AtomicU64::new(0));
    e2e::seeded_load(url, seed, accounts, events, CONCURRENCY, stored).await
}

/// POSTs a command; the answer's JSON (a failed command fails the test).
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

async fn open_account(http: &reqwest::Client, command: &CommandService, i: usize) -> Value {
    post(
        http,
        format!("{}/v1/accounts", command.url),
        json!({"holder_name": format!("Holder {i}"), "email": format!("h{i}@example.org"),
               "country": "PT", "currency": "EUR"}),
    )
    .await
}

/// Deposits into `accounts` round-robin every 10 ms until `stop`; answers how many were
/// stored and how many failed (the write side does not depend on the search engine).
fn steady_deposits(
    command: &CommandService,
    accounts: Vec<String>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(u64, Vec<String>)> {
    let (http, url) = (reqwest::Client::new(), command.url.clone());
    tokio::spawn(async move {
        let (mut sent, mut failures) = (0_u64, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let id = &accounts[(sent as usize + failures.len()) % accounts.len()];
            let answer = http
                .post(format!("{url}/v1/accounts/{id}/deposits"))
                .bearer_auth(TOKEN)
                .json(&json!({"amount_minor": 100 + sent % 7}))
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => sent += 1,
                Ok(r) => failures.push(format!("deposit: {}", r.status())),
                Err(e) => failures.push(format!("deposit: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (sent, failures)
    })
}

/// `prismctl verify search` of the whole model against the whole store, re-checking for
/// up to `wait` while the projector catches up; its figures printed.
async fn verify(config: &Config, wait: Duration) -> ModelReport {
    let started = Instant::now();
    let verifier = up("elasticsearch", Model::Search.verifier(config, 100).await);
    let Some(verifier) = verifier else {
        panic!("the search model has no verifier");
    };
    let options = prismctl::verify::Options {
        wait,
        ..Default::default()
    };
    let report = up(
        "prismctl verify search",
        verify_model(config, "search", verifier.as_ref(), &options).await,
    );
    eprintln!(
        "verify search after {:.1}s: ok={} events={} expected={} stored={} behind={} \
         differences={} attempts={}",
        started.elapsed().as_secs_f64(),
        report.ok,
        report.events,
        report.documents_expected,
        report.documents_stored,
        report.behind,
        report.difference_count,
        report.attempts
    );
    report
}

/// Asserts a clean verification of a model that holds at least `documents` documents.
fn assert_identical(report: &ModelReport, documents: usize) {
    assert!(
        report.ok,
        "the search model differs from the event store: {} differences; first: {}",
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

/// Records in the test's dead-letter topic (0 when it was never created).
async fn dead_letters(env: &Env) -> i64 {
    let (kafka, topic) = (env.config.kafka.clone(), env.dlq_topic());
    let counted = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let client: BaseConsumer = up(
            "kafka",
            prism_platform::clients::kafka_client_config(&kafka).create(),
        );
        let metadata = up(
            "kafka",
            client.fetch_metadata(Some(&topic), Duration::from_secs(10)),
        );
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        partitions
            .into_iter()
            .map(|p| {
                let (low, high) = up(
                    "kafka",
                    client.fetch_watermarks(&topic, p, Duration::from_secs(10)),
                );
                high - low
            })
            .sum::<i64>()
    })
    .await;
    up("tokio", counted)
}

/// Polls `check` every 100 ms until it answers `Some`, failing after `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 1. SIGKILL at random moments
// ---------------------------------------------------------------------------------------

/// The seed of the kill schedule and of the traffic.
const KILL_SEED: u64 = 0x5ea2_c4e1_d1e5;

/// prism-search is killed with SIGKILL five times while seeded traffic runs: at random
/// moments (then left down for a while, so a backlog piles up), and right after the
/// restarted instance starts applying that backlog (a `_bulk` in flight), each time
/// restarted. `_bulk` is not atomic and the position moves
/// last, so a killed batch is re-applied from the stored position: the whole model must
/// still equal the store's fold, with nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkills_at_random_moments_leave_the_search_model_equal_to_the_store() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const EVENTS: u64 = 12_000;
    const KILLS: u32 = 5;
    isolated(Setup::default(), |env| async move {
        let started = Instant::now();
        let command = CommandService::start(&env.config).await;
        let mut search = SearchProcess::start(&env);
        search.wait_ready(Duration::from_secs(120)).await;

        let load = tokio::spawn(seeded_load(command.url.clone(), KILL_SEED, 300, EVENTS));
        let mut rng = ChaCha8Rng::seed_from_u64(KILL_SEED);
        let mut in_flight_kills = 0;
        for kill in 0..KILLS {
            if kill % 2 == 0 {
                // A random moment.
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..=3_000))).await;
            } else {
                // Shortly after the restarted instance starts applying what piled up
                // while it was down: its first batches are bulks of many documents.
                let applied = eventually(
                    Duration::from_secs(120),
                    "the restarted prism-search applying events",
                    || async {
                        let n = search
                            .metric("prism_projector_events_total", &[("outcome", "applied")])
                            .await;
                        (n > 0.0).then_some(n)
                    },
                )
                .await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=150))).await;
                // Records still to apply: the instance is busy writing bulks.
                let lag = search.metric("prism_projector_consumer_lag", &[]).await;
                eprintln!("kill {kill}: {applied} events applied since the restart, {lag} to go");
                if lag > 0.0 {
                    in_flight_kills += 1;
                }
            }
            search.assert_running();
            search.kill();
            if kill % 2 == 0 {
                // Down for a while under load: the restarted instance has a backlog to
                // write in big bulks when the next kill comes.
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..=2_000))).await;
            }
            search.spawn();
            eprintln!(
                "kill {kill} at {:.1}s (load done: {})",
                started.elapsed().as_secs_f64(),
                load.is_finished()
            );
        }
        let stored = up("the load", load.await);
        eprintln!(
            "{stored} commands stored in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        assert!(stored >= EVENTS, "{stored} commands stored");
        assert!(
            in_flight_kills > 0,
            "no kill came while the restarted instance still had records to apply"
        );
        search.wait_ready(Duration::from_secs(180)).await;

        let report = verify(&env.config, Duration::from_secs(240)).await;
        search.assert_running();
        assert_identical(&report, EVENTS as usize / 2);
        assert_eq!(dead_letters(&env).await, 0, "events were dead-lettered");
        eprintln!("whole test: {:.1}s", started.elapsed().as_secs_f64());
        drop(search);
        command.stop().await;
        Vec::new()
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 2. The search engine down for 30 s
// ---------------------------------------------------------------------------------------

/// How long the engine stays down: other tests on this machine use it too.
const OUTAGE: Duration = Duration::from_secs(30);

/// Brings the search engine of the local stack back when dropped, whether the test passed
/// or not.
struct EngineBack {
    armed: bool,
}

impl EngineBack {
    /// `dev/stack down elasticsearch`, with the guard that undoes it.
    fn stop_engine() -> EngineBack {
        let guard = EngineBack { armed: true };
        stack(&["down", "elasticsearch"]);
        guard
    }

    /// `dev/stack up elasticsearch` (it waits until the engine answers).
    fn start_engine(mut self) {
        self.armed = false;
        stack(&["up", "elasticsearch"]);
    }
}

impl Drop for EngineBack {
    fn drop(&mut self) {
        if self.armed {
            eprintln!("bringing the search engine back");
            let _ = Command::new(repo_root().join("dev/stack"))
                .args(["up", "elasticsearch"])
                .current_dir(repo_root())
                .status();
        }
    }
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

/// The engine stops for 30 s while deposits keep coming: `/readyz` says not ready while it
/// is down, the projector backs off (a connection failure is transient: nothing is
/// skipped or dead-lettered) and, once the engine is back, catches up to a model equal to
/// the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_projector_converges_after_the_search_engine_was_down() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    isolated(
        Setup {
            partitions: 2,
            ..Setup::default()
        },
        |env| async move {
            let command = CommandService::start(&env.config).await;
            let mut search = SearchProcess::start(&env);
            search.wait_ready(Duration::from_secs(120)).await;
            let http = reqwest::Client::new();
            let mut accounts = Vec::new();
            for i in 0..8 {
                let opened = open_account(&http, &command, i).await;
                accounts.push(opened["account_id"].as_str().unwrap_or_default().to_owned());
            }
            let stop = Arc::new(AtomicBool::new(false));
            let load = steady_deposits(&command, accounts, Arc::clone(&stop));
            eventually(Duration::from_secs(60), "events applied", || async {
                let n = search
                    .metric("prism_projector_events_total", &[("outcome", "applied")])
                    .await;
                (n > 20.0).then_some(())
            })
            .await;

            let down_at = Instant::now();
            let engine = tokio::task::spawn_blocking(EngineBack::stop_engine).await;
            let engine = up("tokio", engine);
            eprintln!("engine stopped in {:.1}s", down_at.elapsed().as_secs_f64());
            let unready = eventually(OUTAGE, "/readyz saying not ready", || async {
                match search.readyz().await {
                    Some((503, body)) => Some((down_at.elapsed(), body)),
                    _ => None,
                }
            })
            .await;
            eprintln!(
                "not ready {:.1}s after the stop: {}",
                unready.0.as_secs_f64(),
                unready.1
            );
            // The outage lasts its length whatever the checks took.
            tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
            let still_unready = search.readyz().await;
            search.assert_running();
            let up_at = Instant::now();
            up(
                "tokio",
                tokio::task::spawn_blocking(move || engine.start_engine()).await,
            );
            eprintln!(
                "engine down {:.1}s, back in {:.1}s",
                down_at.elapsed().as_secs_f64(),
                up_at.elapsed().as_secs_f64()
            );
            assert!(
                matches!(still_unready, Some((503, _))),
                "/readyz while the engine was down: {still_unready:?}"
            );

            let back_at = Instant::now();
            search.wait_ready(Duration::from_secs(180)).await;
            eprintln!(
                "ready again {:.1}s after the engine",
                back_at.elapsed().as_secs_f64()
            );
            stop.store(true, Ordering::Relaxed);
            let (sent, failures) = up("the load", load.await);
            assert!(failures.is_empty(), "commands failed: {failures:?}");
            assert!(sent > 500, "{sent} deposits");
            let report = verify(&env.config, Duration::from_secs(180)).await;
            search.assert_running();
            assert_identical(&report, sent as usize);
            assert_eq!(dead_letters(&env).await, 0, "events were dead-lettered");
            drop(search);
            command.stop().await;
            Vec::new()
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 3. Read your writes
// ---------------------------------------------------------------------------------------

/// A command's `Consistency-Token` makes the search's first answer show that write, though
/// the indices refresh by themselves only every minute here (so without the token the write
/// is not searchable yet); a token for a version that never comes is a `202 processing`
/// after `wait_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consistency_token_makes_the_first_search_answer_show_the_write() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    // Generous: under load (2 cores shared with other work) a payment took 1.5 s to be
    // applied; the wait must outlast that, and the never-coming version waits all of it.
    const WAIT_MS: u64 = 10_000;
    const PAYMENTS: usize = 10;
    isolated(
        Setup {
            partitions: 2,
            refresh_interval_ms: 60_000,
            wait_timeout_ms: WAIT_MS,
        },
        |env| async move {
            let command = CommandService::start(&env.config).await;
            let mut search = SearchProcess::start(&env);
            search.wait_ready(Duration::from_secs(120)).await;
            let http = reqwest::Client::new();
            let search_url = |id: &str| {
                format!(
                    "{}/v1/search/transactions?account_id={id}&limit=50",
                    search.url
                )
            };
            let mut not_yet_without_token = 0;
            let mut last = (String::new(), String::new(), 0_u64);
            for i in 0..PAYMENTS {
                let opened = open_account(&http, &command, i).await;
                let id = opened["account_id"].as_str().unwrap_or_default().to_owned();
                post(
                    &http,
                    format!("{}/v1/accounts/{id}/deposits", command.url),
                    json!({"amount_minor": 50_000}),
                )
                .await;
                let paid = post(
                    &http,
                    format!("{}/v1/accounts/{id}/payments", command.url),
                    json!({"amount_minor": 1_000 + i as i64, "merchant_name": "Café Rosa",
                           "merchant_category": "5814", "merchant_country": "PT",
                           "channel": "pos"}),
                )
                .await;
                let event_id = paid["event_ids"][0].as_str().unwrap_or_default().to_owned();
                let token = paid["consistency_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let shows = |page: &Value| {
                    page["items"]
                        .as_array()
                        .is_some_and(|items| items.iter().any(|t| t["event_id"] == event_id))
                };

                // Without the token: not searchable yet (nothing refreshed the indices).
                let plain = up(
                    "prism-search",
                    http.get(search_url(&id)).bearer_auth(TOKEN).send().await,
                );
                assert_eq!(plain.status(), 200);
                let plain: Value = up("prism-search", plain.json().await);
                if !shows(&plain) {
                    not_yet_without_token += 1;
                }

                // With it: the first answer shows the payment.
                let asked = Instant::now();
                let answer = up(
                    "prism-search",
                    http.get(search_url(&id))
                        .bearer_auth(TOKEN)
                        .header("Consistency-Token", &token)
                        .send()
                        .await,
                );
                let status = answer.status();
                let page: Value = up("prism-search", answer.json().await);
                assert_eq!(status, 200, "{page}");
                assert!(
                    shows(&page),
                    "payment {event_id} ({token}) missing from the first answer: {page}"
                );
                assert_eq!(page["total"], 2, "the deposit and the payment: {page}");
                eprintln!(
                    "payment {i}: searchable in {} ms with its token",
                    asked.elapsed().as_millis()
                );
                let version = paid["version"].as_u64().unwrap_or_default();
                last = (id, token, version);
            }
            eprintln!(
                "{not_yet_without_token} of {PAYMENTS} payments were not searchable without the token"
            );
            assert!(
                not_yet_without_token > PAYMENTS / 2,
                "the indices refreshed by themselves: the token was not what made the writes \
                 searchable ({not_yet_without_token} of {PAYMENTS} missing without it)"
            );

            // A version that never comes: 202 processing once the wait times out.
            let (id, _, version) = &last;
            let account = id.replace('-', "");
            let never = format!("v1.{account}.{}", version + 1_000);
            let asked = Instant::now();
            let answer = up(
                "prism-search",
                http.get(search_url(id))
                    .bearer_auth(TOKEN)
                    .header("Consistency-Token", &never)
                    .send()
                    .await,
            );
            let waited = asked.elapsed();
            let status = answer.status();
            let content_type = answer
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let retry_after = answer.headers().get("retry-after").is_some();
            let problem: Value = up("prism-search", answer.json().await);
            eprintln!("202 after {} ms: {problem}", waited.as_millis());
            assert_eq!(status, 202, "{problem}");
            assert_eq!(content_type, "application/problem+json");
            assert_eq!(problem["code"], "processing", "{problem}");
            assert!(retry_after, "202 without Retry-After");
            assert!(
                waited >= Duration::from_millis(WAIT_MS - 100),
                "answered after {waited:?}, before wait_timeout_ms"
            );
            assert!(waited < Duration::from_millis(WAIT_MS) + Duration::from_secs(10));

            // Make everything searchable (the last real token refreshes), then the whole
            // model against the store.
            let refreshed = http
                .get(search_url(&last.0))
                .bearer_auth(TOKEN)
                .header("Consistency-Token", &last.1)
                .send()
                .await;
            assert_eq!(up("prism-search", refreshed).status(), 200);
            let report = verify(&env.config, Duration::from_secs(90)).await;
            search.assert_running();
            assert_identical(&report, PAYMENTS * 3);
            assert_eq!(dead_letters(&env).await, 0, "events were dead-lettered");
            drop(search);
            command.stop().await;
            Vec::new()
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 4. `rebuild search` while analysts search
// ---------------------------------------------------------------------------------------

/// `prismctl rebuild search` under load while a client searches every few ms: no search
/// fails while the aliases swap, the live prism-search takes the new copy over, the old
/// copy is retired (and then dropped with `--drop-old`'s call), and the new copy equals the
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_search_rebuild_swaps_copies_without_a_failed_query() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    isolated(Setup::default(), |env| async move {
        let command = CommandService::start(&env.config).await;
        let mut search = SearchProcess::start(&env);
        search.wait_ready(Duration::from_secs(120)).await;
        let http = reqwest::Client::new();
        let mut accounts = Vec::new();
        for i in 0..12 {
            let opened = open_account(&http, &command, i).await;
            let id = opened["account_id"].as_str().unwrap_or_default().to_owned();
            let token = opened["consistency_token"].as_str().unwrap_or_default();
            let seen = up(
                "prism-search",
                http.get(format!("{}/v1/search/accounts?q=Holder", search.url))
                    .bearer_auth(TOKEN)
                    .header("Consistency-Token", token)
                    .send()
                    .await,
            );
            assert_eq!(seen.status(), 200);
            accounts.push(id);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let load = steady_deposits(&command, accounts.clone(), Arc::clone(&stop));

        // The reader: every answer during the rebuild must be a 200.
        let stop_reader = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(AtomicU64::new(0));
        let reader = {
            let (http, url, accounts) = (http.clone(), search.url.clone(), accounts.clone());
            let (stop, answers) = (Arc::clone(&stop_reader), Arc::clone(&answers));
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut i = 0_usize;
                while !stop.load(Ordering::Relaxed) {
                    let id = &accounts[i % accounts.len()];
                    for path in [
                        format!("/v1/search/transactions?account_id={id}&limit=500&facets=true"),
                        "/v1/search/accounts?q=Holder".to_owned(),
                        // More pages: a point in time opened per answer (bounded).
                        "/v1/search/transactions?q=Holder&limit=5".to_owned(),
                    ] {
                        match http
                            .get(format!("{url}{path}"))
                            .bearer_auth(TOKEN)
                            .send()
                            .await
                        {
                            Ok(r) if r.status() == 200 => {
                                answers.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                failures.push(format!("{path}: {status} {body}"));
                            }
                            Err(e) => failures.push(format!("{path}: {e}")),
                        }
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                failures
            })
        };

        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = answers.load(Ordering::Relaxed);
        let options = RebuildOptions {
            from: Source::Auto,
            drop_old: false,
            max_lag: 20,
            handover_timeout: Duration::from_secs(60),
            store_page_size: 10_000,
            progress: false,
        };
        let started = Instant::now();
        let report = prismctl::rebuild::rebuild(
            &env.config,
            Model::Search,
            &options,
            std::future::pending(),
        )
        .await
        .unwrap_or_else(|e| panic!("rebuild search: {e:#}"));
        eprintln!(
            "rebuild in {:.1}s: {report:?}",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(report.previous, Some(1));
        assert!(
            report.handed_over,
            "{report:?}\nprism-search's log:\n{}",
            search.log_tail()
        );
        // Keep searching past the API's next look at which copy is live.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let (sent, load_failures) = up("the load", load.await);
        stop_reader.store(true, Ordering::Relaxed);
        let failures = up("the reader", reader.await);
        let during = answers.load(Ordering::Relaxed) - before;
        eprintln!("{sent} deposits; {during} answers during and after the rebuild");
        assert!(load_failures.is_empty(), "{load_failures:?}");
        assert!(
            failures.is_empty(),
            "{} searches failed; the first: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
        assert!(during > 100, "only {during} searches during the rebuild");

        let new = report.generation;
        let verified = verify(&env.config, Duration::from_secs(120)).await;
        search.assert_running();
        assert_identical(&verified, sent as usize);
        let read_model = up("elasticsearch", Model::Search.open(&env.config).await);
        let copies = up("elasticsearch", read_model.copies.list().await);
        let states: Vec<(u32, &str)> = copies
            .iter()
            .map(|c| (c.number, c.state.as_str()))
            .collect();
        assert_eq!(states, vec![(1, "retired"), (new, "live")], "{copies:?}");
        let dropped = up("elasticsearch", read_model.copies.drop_retired().await);
        assert!(
            !dropped.is_empty() && dropped.iter().all(|name| name.ends_with("-g1")),
            "{dropped:?}"
        );
        let after = up(
            "prism-search",
            http.get(format!(
                "{}/v1/search/transactions?account_id={}",
                search.url, accounts[0]
            ))
            .bearer_auth(TOKEN)
            .send()
            .await,
        );
        assert_eq!(
            after.status(),
            200,
            "a search after the old copy was dropped"
        );
        assert_eq!(dead_letters(&env).await, 0, "events were dead-lettered");
        drop(search);
        command.stop().await;
        vec![new]
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 5. Two instances, one killed
// ---------------------------------------------------------------------------------------

/// Two prism-search instances share the consumer group under seeded traffic; once both
/// own partitions one is killed with SIGKILL: the other takes its partitions over (after
/// the session timeout) and the model ends equal to the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_surviving_instance_takes_over_when_one_of_two_is_killed() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const EVENTS: u64 = 3_000;
    isolated(
        Setup {
            partitions: 4,
            ..Setup::default()
        },
        |env| async move {
            let started = Instant::now();
            let command = CommandService::start(&env.config).await;
            let mut a = SearchProcess::start(&env);
            let mut b = SearchProcess::start(&env);
            a.wait_ready(Duration::from_secs(120)).await;
            b.wait_ready(Duration::from_secs(120)).await;
            // Seeded traffic first, then steady deposits that go on until after the kill (the
            // write side alone takes a few thousand commands in about a second, far less
            // than two instances need to both be applying).
            let seeded = up(
                "the seeded load",
                tokio::spawn(seeded_load(command.url.clone(), KILL_SEED + 5, 200, EVENTS)).await,
            );
            let http = reqwest::Client::new();
            let mut accounts = Vec::new();
            for i in 0..5 {
                let opened = open_account(&http, &command, 9_000 + i).await;
                accounts.push(opened["account_id"].as_str().unwrap_or_default().to_owned());
            }
            let stop = Arc::new(AtomicBool::new(false));
            let load = steady_deposits(&command, accounts, Arc::clone(&stop));
            let owned = eventually(
                Duration::from_secs(90),
                "both instances owning partitions",
                || async {
                    let x = a.metric("prism_projector_assigned_partitions", &[]).await;
                    let y = b.metric("prism_projector_assigned_partitions", &[]).await;
                    (x > 0.0 && y > 0.0 && x + y == 4.0).then_some((x, y))
                },
            )
            .await;
            eventually(
                Duration::from_secs(60),
                "both instances applying",
                || async {
                    let x = a
                        .metric("prism_projector_events_total", &[("outcome", "applied")])
                        .await;
                    let y = b
                        .metric("prism_projector_events_total", &[("outcome", "applied")])
                        .await;
                    (x > 0.0 && y > 0.0).then_some(())
                },
            )
            .await;
            eprintln!(
                "partitions {owned:?} at {:.1}s; killing one",
                started.elapsed().as_secs_f64()
            );
            a.assert_running();
            let under_load = !load.is_finished();
            a.kill();
            let killed_at = Instant::now();
            eventually(
                Duration::from_secs(60),
                "the survivor owning every partition",
                || async {
                    let y = b.metric("prism_projector_assigned_partitions", &[]).await;
                    (y == 4.0).then_some(())
                },
            )
            .await;
            eprintln!(
                "the survivor owns all partitions {:.1}s after the kill",
                killed_at.elapsed().as_secs_f64()
            );
            stop.store(true, Ordering::Relaxed);
            let (deposits, failures) = up("the deposits", load.await);
            assert!(seeded >= EVENTS, "{seeded} commands stored");
            assert!(failures.is_empty(), "{failures:?}");
            assert!(deposits > 0, "no deposit went in");
            assert!(under_load, "the load ended before the kill");
            let report = verify(&env.config, Duration::from_secs(180)).await;
            b.assert_running();
            assert_identical(&report, EVENTS as usize / 2);
            assert_eq!(dead_letters(&env).await, 0, "events were dead-lettered");
            eprintln!("whole test: {:.1}s", started.elapsed().as_secs_f64());
            drop((a, b));
            command.stop().await;
            Vec::new()
        },
    )
    .await;
}

/// Instances that start together on a fresh prefix (a first deployment of several
/// replicas) all open the live copy: one creates the control index and copy 1, the others
/// find them being created and wait for them instead of failing on shards not yet active.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_together_on_a_fresh_prefix_all_open_the_live_copy() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const INSTANCES: usize = 6;
    isolated(Setup::default(), |env| async move {
        let projector = up(
            "the test's [search] section",
            prism_search::app::SearchProjector::new(env.config.clone()),
        );
        let starting: Vec<_> = (0..INSTANCES)
            .map(|_| {
                let (es, search) = (
                    env.config.elasticsearch.clone(),
                    projector.search_config().clone(),
                );
                tokio::spawn(async move {
                    let copies = SearchCopies::connect(&es, &search).await?;
                    copies.live().await.map(|copy| copy.number)
                })
            })
            .collect();
        let mut failures = Vec::new();
        for start in starting {
            match up("tokio", start.await) {
                Ok(number) => assert_eq!(number, 1),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        assert!(
            failures.is_empty(),
            "instances that failed to start: {failures:?}"
        );
        Vec::new()
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// First pages nobody pages on
// ---------------------------------------------------------------------------------------

/// Points in time open on `index` (OpenSearch counts them apart; Elasticsearch counts
/// them among its open search contexts).
async fn open_pits(env: &Env, index: &str) -> u64 {
    use elasticsearch::indices::IndicesStatsParts;
    let client = up(
        "elasticsearch",
        prism_platform::clients::elasticsearch(&env.config.elasticsearch),
    );
    let response = client
        .indices()
        .stats(IndicesStatsParts::IndexMetric(&[index], &["search"]))
        .send()
        .await;
    let stats: Value = up("elasticsearch", up("elasticsearch", response).json().await);
    let search = &stats["_all"]["total"]["search"];
    search["point_in_time_current"]
        .as_u64()
        .or_else(|| search["open_contexts"].as_u64())
        .unwrap_or_else(|| panic!("no search stats for {index}: {stats}"))
}

/// Every first page of a search with more pages opens a point in time for its cursor, but
/// most are never paged on. Those must not pile up (the engine refuses new ones past its
/// node-wide limit, failing every paged search of every index): past a bound the oldest is
/// closed (its cursor answers `invalid_cursor`, as an expired one does) while a recent
/// cursor still pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_pages_nobody_pages_on_do_not_pile_up_points_in_time() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const FIRST_PAGES: usize = 80;
    isolated(Setup::default(), |env| async move {
        let command = CommandService::start(&env.config).await;
        let mut search = SearchProcess::start(&env);
        search.wait_ready(Duration::from_secs(120)).await;
        let http = reqwest::Client::new();
        let opened = open_account(&http, &command, 0).await;
        let id = opened["account_id"].as_str().unwrap_or_default().to_owned();
        let mut token = String::new();
        for amount in 1..=5 {
            let deposited = post(
                &http,
                format!("{}/v1/accounts/{id}/deposits", command.url),
                json!({ "amount_minor": amount * 100 }),
            )
            .await;
            token = deposited["consistency_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        let url = format!(
            "{}/v1/search/transactions?account_id={id}&limit=2",
            search.url
        );
        let first_page = |token: Option<String>| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let mut request = http.get(&url).bearer_auth(TOKEN);
                if let Some(token) = token {
                    request = request.header("Consistency-Token", token);
                }
                let answer = up("prism-search", request.send().await);
                let status = answer.status();
                let page: Value = up("prism-search", answer.json().await);
                assert_eq!(status, 200, "{page}");
                page["next_cursor"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no next page: {page}"))
                    .to_owned()
            }
        };
        let oldest = first_page(Some(token)).await;
        let mut newest = String::new();
        for _ in 1..FIRST_PAGES {
            newest = first_page(None).await;
        }
        let index = format!(
            "{}-transactions-g1",
            up(
                "the test's [search] section",
                prism_search::app::SearchProjector::new(env.config.clone())
            )
            .search_config()
            .index_prefix
        );
        // Closing runs in the background: poll.
        let open = eventually(Duration::from_secs(30), "points in time closed", || async {
            let open = open_pits(&env, &index).await;
            (open <= prism_search::http::UNPAGED_PITS_MAX as u64).then_some(open)
        })
        .await;
        eprintln!("{FIRST_PAGES} first pages: {open} points in time open");

        let page = |cursor: String| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let answer = up(
                    "prism-search",
                    http.get(&url)
                        .query(&[("cursor", &cursor)])
                        .bearer_auth(TOKEN)
                        .send()
                        .await,
                );
                let status = answer.status().as_u16();
                (status, up("prism-search", answer.json::<Value>().await))
            }
        };
        let (status, second) = page(newest).await;
        assert_eq!(status, 200, "the newest cursor pages on: {second}");
        assert_eq!(second["items"].as_array().map(Vec::len), Some(2));
        let (status, refused) = page(oldest).await;
        assert_eq!(
            status, 400,
            "the oldest cursor's point in time was closed: {refused}"
        );
        assert_eq!(refused["code"], "invalid_cursor", "{refused}");
        search.assert_running();
        drop(search);
        command.stop().await;
        Vec::new()
    })
    .await;
}
