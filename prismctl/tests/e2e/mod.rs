//! What the end-to-end tests of `prismctl/tests/` share: prism-command in-process and the
//! seeded, realistic load sent through it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_platform::config::Config;
use prism_tests::{unique, up};
use prismctl::loadgen::Client;
use prismctl::traffic::{Op, Traffic};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// The bearer token of the local configuration.
pub const TOKEN: &str = "prism-local-dev-token";

/// prism-command in-process; stopped when dropped (also when the test fails).
pub struct CommandService {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl CommandService {
    /// Starts it on a port-0 listener and waits until `/readyz` answers 200.
    pub async fn start(config: &Config) -> CommandService {
        Self::start_with_clock(config, prism_command::service::Clock::system()).await
    }

    /// [`CommandService::start`] with events stamped by `clock`.
    pub async fn start_with_clock(
        config: &Config,
        clock: prism_command::service::Clock,
    ) -> CommandService {
        let listener = up(
            "localhost",
            tokio::net::TcpListener::bind("127.0.0.1:0").await,
        );
        let url = format!("http://{}", up("localhost", listener.local_addr()));
        let (stop, stopped) = oneshot::channel::<()>();
        let config = config.clone();
        let task = tokio::spawn(async move {
            prism_command::app::run_with_clock(
                config,
                listener,
                async {
                    let _ = stopped.await;
                },
                clock,
            )
            .await
        });
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
                if r.status().is_success() {
                    return CommandService {
                        url,
                        stop: Some(stop),
                        task: Some(task),
                    };
                }
            }
            if task.is_finished() {
                panic!("prism-command stopped during start-up: {:?}", task.await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prism-command did not become ready at {url}");
    }

    /// Stops it and checks it stopped cleanly (its relay published what was stored).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(60), task).await {
                Ok(Ok(Ok(()))) => {}
                other => panic!("prism-command did not stop cleanly: {other:?}"),
            }
        }
    }
}

impl Drop for CommandService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Sends the seeded, realistic traffic of `seed` (opens, deposits, withdrawals, card
/// payments, freezes) over `accounts` accounts, at most `concurrency` commands in flight,
/// until `events` commands are stored, counting them in `stored`; returns the number
/// stored.
pub async fn seeded_load(
    url: String,
    seed: u64,
    accounts: usize,
    events: u64,
    concurrency: usize,
    stored: Arc<AtomicU64>,
) -> u64 {
    let client = up(
        "reqwest",
        Client::new(&url, TOKEN, concurrency, Duration::from_secs(30), 5),
    );
    let run = unique("e2e");
    let mut ids: Vec<Option<String>> = vec![None; accounts];
    let semaphore = Arc::new(Semaphore::new(concurrency));
    // Opens answer with the account's index and id.
    let mut tasks: JoinSet<Option<(usize, String)>> = JoinSet::new();
    let mut opening = true;
    for step in Traffic::new(seed, accounts, 0.05) {
        if stored.load(Ordering::Relaxed) >= events {
            break;
        }
        let open = matches!(step.op, Op::Open { .. });
        if opening && !open {
            // Every account exists before its first command.
            opening = false;
            while let Some(done) = tasks.join_next().await {
                if let Some((index, id)) = up("a traffic task", done) {
                    ids[index] = Some(id);
                }
            }
        }
        let account_id = match (open, &ids[step.account]) {
            (true, _) => String::new(),
            (false, Some(id)) => id.clone(),
            (false, None) => continue,
        };
        let permit = up(
            "the semaphore",
            Arc::clone(&semaphore).acquire_owned().await,
        );
        let (client, stored) = (client.clone(), Arc::clone(&stored));
        let key = format!("{run}-{}", step.seq);
        tasks.spawn(async move {
            let answer = client.send(&step.op, &account_id, Some(&key)).await;
            drop(permit);
            if answer.outcome.stored() {
                stored.fetch_add(1, Ordering::Relaxed);
            } else if answer.outcome.is_failure() {
                eprintln!("traffic: {:?} {:?}", answer.outcome, answer.detail);
            }
            match (open && answer.outcome.stored(), answer.account_id) {
                (true, Some(id)) => Some((step.account, id)),
                _ => None,
            }
        });
        while let Some(done) = tasks.try_join_next() {
            if let Some((index, id)) = up("a traffic task", done) {
                ids[index] = Some(id);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        up("a traffic task", done);
    }
    stored.load(Ordering::Relaxed)
}
