//! The `prism-ledger` binary at start: it refuses the compiled-in (public) token and cursor
//! key on a listener other machines can reach, naming the key to set, and the logs it
//! writes to a pipe carry no terminal colour codes. Real processes, real MySQL and Kafka.

mod support;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prism_platform::config::Config;
use prism_tests::up;
use support::isolated;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    let listener = up("localhost", std::net::TcpListener::bind("127.0.0.1:0"));
    up("localhost", listener.local_addr()).port()
}

/// A `prism-ledger` child with its stderr on a pipe, collected as it comes.
struct Ledger {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Ledger {
    /// Starts the binary on `listen` with `config`'s names (so nothing shared is touched)
    /// and `extra` environment variables.
    fn start(config: &Config, listen: &str, extra: &[(&str, &str)]) -> Ledger {
        let root = repo_root();
        let ledger = support::ledger_config(config);
        let mut command = Command::new(env!("CARGO_BIN_EXE_prism-ledger"));
        command
            .current_dir(&root)
            .env("PRISM_CONFIG", root.join("config/prism.toml"))
            .env_remove("PRISM_PROFILE")
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env_remove("PRISM_AUTH__TOKENS")
            .env_remove("PRISM_LEDGER__CURSOR_SECRET")
            .env("PRISM_LEDGER__DATABASE", &ledger.database)
            .env("PRISM_LEDGER__GROUP_ID", &ledger.group_id)
            .env("PRISM_LEDGER__LISTEN", listen)
            .env("PRISM_KAFKA__TOPIC", &config.kafka.topic)
            .env(
                "PRISM_KAFKA__TOPIC_PARTITIONS",
                config.kafka.topic_partitions.to_string(),
            )
            .env("PRISM_LOG__LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = up("the prism-ledger binary", command.spawn());
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stderr.take().map(|mut pipe| {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut chunk = [0_u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
            })
        });
        Ledger {
            child,
            stderr,
            reader,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits up to `limit` for the exit; `None` if it still runs.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (a graceful stop), then the exit status within `limit`.
    fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        up("kill -TERM", sent);
        self.wait(limit)
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[track_caller]
fn assert_no_colour(log: &str, what: &str) {
    assert!(
        !log.contains("\x1b["),
        "{what}: the log written to a pipe has ANSI colour codes:\n{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_in_secrets_are_refused_on_a_listener_off_loopback() {
    isolated(1, |env| async move {
        // The local token on every interface: refused before anything is opened.
        let mut ledger = Ledger::start(&env.config, "0.0.0.0:0", &[]);
        let status = ledger.wait(Duration::from_secs(30));
        let log = ledger.stderr();
        assert!(
            status.is_some_and(|s| !s.success()),
            "prism-ledger served on 0.0.0.0 with the compiled-in token ({status:?}):\n{log}"
        );
        assert!(log.contains("[ledger] auth.tokens"), "{log}");
        assert!(log.contains("PRISM_AUTH__TOKENS"), "{log}");
        assert_no_colour(&log, "refused start");

        // Its own token but the local cursor key: refused too, naming that key.
        let own_token = [(
            "PRISM_AUTH__TOKENS",
            r#"[{name="test", token="a-token-of-this-test", scopes=["ledger:read"]}]"#,
        )];
        let mut ledger = Ledger::start(&env.config, "0.0.0.0:0", &own_token);
        let status = ledger.wait(Duration::from_secs(30));
        let log = ledger.stderr();
        assert!(status.is_some_and(|s| !s.success()), "{status:?}:\n{log}");
        assert!(log.contains("[ledger] cursor_secret"), "{log}");
        assert!(log.contains("PRISM_LEDGER__CURSOR_SECRET"), "{log}");

        // Its own values: it serves, on every interface, and only to its own token.
        let port = free_port();
        let mut ledger = Ledger::start(
            &env.config,
            &format!("0.0.0.0:{port}"),
            &[
                own_token[0],
                ("PRISM_LEDGER__CURSOR_SECRET", "a-cursor-key-of-this-test"),
            ],
        );
        let http = support::http_client();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{url}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                ledger.wait(Duration::ZERO).is_none(),
                "prism-ledger stopped:\n{}",
                ledger.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "no /healthz within 60 s:\n{}",
                ledger.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let list = |token: &'static str| {
            http.get(format!("{url}/v1/accounts"))
                .bearer_auth(token)
                .send()
        };
        let local = up(
            "prism-ledger",
            list(prism_platform::config::LOCAL_DEV_TOKEN).await,
        );
        assert_eq!(local.status(), 401);
        let own = up("prism-ledger", list("a-token-of-this-test").await);
        assert_eq!(own.status(), 200);
        let status = ledger.terminate(Duration::from_secs(60));
        let log = ledger.stderr();
        assert!(status.is_some_and(|s| s.success()), "{status:?}:\n{log}");
        assert!(log.contains("prism-ledger listening"), "{log}");
        assert_no_colour(&log, "a run and a graceful stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_pipe_have_no_colour_codes() {
    isolated(1, |env| async move {
        // A start that fails at once still logs its error through tracing.
        let mut ledger = Ledger::start(&env.config, "0.0.0.0:0", &[]);
        let status = ledger.wait(Duration::from_secs(30));
        let log = ledger.stderr();
        assert!(status.is_some(), "prism-ledger did not exit:\n{log}");
        assert!(log.contains("prism-ledger failed"), "no log line:\n{log}");
        assert!(log.contains("ERROR"), "no level in the log line:\n{log}");
        assert_no_colour(&log, "an error at start");
    })
    .await;
}
