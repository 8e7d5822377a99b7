//! A projector binary (`prism-dashboard`, `prism-fraud`, …) as a child process, configured
//! like an operator would: the repository's `config/prism.toml`, the test's profile, and a
//! port of its own that stays the same across restarts. Killed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prism_tests::{repo_root, unique, up};

/// The bearer token of the local configuration.
const TOKEN: &str = "prism-local-dev-token";
/// A caller of the profiles [`write_profile`] writes that may read the ledger only: the
/// other read APIs answer it 403.
pub const LEDGER_ONLY_TOKEN: &str = "prism-test-ledger-only-token";

/// `name` (e.g. `prism-fraud`) next to the `prismctl` under test.
pub fn binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_prismctl")).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p {name}` \
         (`cargo test --workspace` builds it too).",
        path.display()
    );
    path
}

/// The real projector process.
pub struct ProjectorProcess {
    name: &'static str,
    /// The environment variable of its listen address (`PRISM_FRAUD__LISTEN`).
    listen_var: &'static str,
    profile: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub url: String,
    pub http: reqwest::Client,
}

impl ProjectorProcess {
    /// Starts `name` with the test's `profile`; its stderr goes to a log file of its own.
    pub fn start(name: &'static str, listen_var: &'static str, profile: &Path) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique(name)));
        eprintln!("{name}'s stderr goes to {}", log.display());
        let mut process = Self {
            name,
            listen_var,
            profile: profile.to_owned(),
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
        process.spawn();
        process
    }

    /// Starts the process (again: on the same port).
    pub fn spawn(&mut self) {
        let root = repo_root();
        let port = match self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
        {
            Some(port) => port,
            None => {
                let listener = up("localhost", std::net::TcpListener::bind("127.0.0.1:0"));
                up("localhost", listener.local_addr()).port()
            }
        };
        let stderr = up(
            "the log file",
            File::options().create(true).append(true).open(&self.log),
        );
        let child = Command::new(binary(self.name))
            .current_dir(&root)
            .env("PRISM_CONFIG", root.join("config/prism.toml"))
            .env("PRISM_PROFILE", &self.profile)
            .env(self.listen_var, format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn();
        self.child = Some(up(self.name, child));
        self.url = format!("http://127.0.0.1:{port}");
    }

    /// SIGKILL: no shutdown, nothing stored on the way out.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything the process (and its earlier runs) wrote to stderr.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until `/readyz` answers 200; panics with the log if it exits or times out.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited ({status}); its log:\n{}",
                    self.name,
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
                "{} not ready within {limit:?}; its log:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET `path` with the token: status, content type and body.
    pub async fn get(&self, path: &str) -> (u16, String, String) {
        let r = up(
            self.name,
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
}

impl Drop for ProjectorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `prismctl verify <model>` (every account), re-checking for up to `wait`.
pub async fn verify(
    model: prismctl::models::Model,
    config: &prism_platform::config::Config,
    wait: Duration,
) -> prismctl::verify_model::ModelReport {
    let name = up("the configuration", model.settings(config)).name;
    let verifier = up(model.service(config), model.verifier(config, 100).await);
    let Some(verifier) = verifier else {
        panic!("{name} has no verifier");
    };
    let options = prismctl::verify::Options {
        wait,
        ..Default::default()
    };
    let report = up(
        "prismctl verify",
        prismctl::verify_model::verify_model(config, name, verifier.as_ref(), &options).await,
    );
    eprintln!(
        "verify {name}: ok={} events={} expected={} stored={} differences={} attempts={}",
        report.ok,
        report.events,
        report.documents_expected,
        report.documents_stored,
        report.difference_count,
        report.attempts
    );
    report
}

/// The report found no difference, over at least `documents` documents.
pub fn assert_identical(report: &prismctl::verify_model::ModelReport, documents: usize) {
    assert!(
        report.ok,
        "{} differs from the event store: {} differences; first: {}",
        report.model,
        report.difference_count,
        serde_json::to_string(&report.differences.iter().take(3).collect::<Vec<_>>())
            .unwrap_or_default()
    );
    assert!(
        report.documents_expected >= documents,
        "{} documents expected, at least {documents} wanted",
        report.documents_expected
    );
}

/// The seeded load of `seed` (`accounts` accounts, `events` commands) sent through a
/// command service in the background.
pub struct Load {
    stored: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl Load {
    pub fn start(command_url: &str, (seed, accounts, events): (u64, usize, u64)) -> Self {
        let stored = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(crate::e2e::seeded_load(
            command_url.to_owned(),
            seed,
            accounts,
            events,
            8,
            std::sync::Arc::clone(&stored),
        ));
        Self { stored, task }
    }

    /// Waits until `n` commands are stored (or the load ended).
    pub async fn until(&self, n: u64) {
        while self.stored.load(std::sync::atomic::Ordering::Relaxed) < n && !self.task.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The number of commands stored, once the load ended.
    pub async fn finish(self) -> u64 {
        up("the load", self.task.await)
    }
}

/// A seeded load (see [`Load`]) while `process` is killed (SIGKILL) and started again each
/// time the stored count reaches one of `kills`; returns the number of commands stored.
pub async fn load_with_kills(
    command_url: &str,
    workload: (u64, usize, u64),
    process: &mut ProjectorProcess,
    kills: &[u64],
) -> u64 {
    let load = Load::start(command_url, workload);
    for at in kills {
        load.until(*at).await;
        process.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        process.spawn();
    }
    load.finish().await
}

/// `dev/stack <args>` (e.g. `down redis`), which must succeed.
pub fn stack(args: &[&str]) {
    let status = Command::new(repo_root().join("dev/stack"))
        .args(args)
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .status();
    let status = up("dev/stack", status);
    assert!(status.success(), "dev/stack {}: {status}", args.join(" "));
}

/// Brings Redis back if the test fails while it is down.
pub struct RedisBack(pub bool);

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

/// Writes a test profile of its own (`<name>` names the files): a topic of `partitions`
/// partitions and a PostgreSQL event store schema of its own, a fast relay and runtime, and
/// the projector's `section` (TOML) after them. Returns the profile's path and the
/// configuration loaded from `config/prism.toml` with it, as the child will load it.
pub fn write_profile(
    name: &str,
    partitions: i32,
    section: &str,
) -> (PathBuf, prism_platform::config::Config) {
    let topic = unique(&format!("prism-test-{name}"));
    let schema = unique(&format!("prism_test_{name}"));
    let profile =
        std::env::temp_dir().join(format!("{}.toml", unique(&format!("prism-{name}-e2e"))));
    let text = format!(
        r#"[[auth.tokens]]
name = "local"
token = "{TOKEN}"
scopes = ["commands", "ledger:read", "search:read", "dashboard:read", "fraud:read", "pii", "admin"]

[[auth.tokens]]
name = "ledger-only"
token = "{LEDGER_ONLY_TOKEN}"
scopes = ["ledger:read"]

[log]
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

{section}"#
    );
    up("the temp dir", std::fs::write(&profile, text));
    let sources = prism_platform::config::Sources {
        base: Some(repo_root().join("config/prism.toml")),
        profile: Some(profile.display().to_string()),
    };
    match sources.load() {
        Ok(config) => (profile, config),
        Err(e) => panic!("loading the test's profile {}: {e}", profile.display()),
    }
}
