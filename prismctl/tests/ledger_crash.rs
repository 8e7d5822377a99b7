//! The ledger under the real write side (`prism_command::app::run`, PostgreSQL event store
//! in a schema of its own, relay on) and realistic traffic, while its instances die or come
//! and go: SIGKILL of the real `prism-ledger` binary at random moments, and three instances
//! joining and leaving the group at random. Each ends with `prismctl verify`: the whole
//! model equals a fold of the event store, no statement line applied twice.
//!
//! It lives with `prismctl` (the top floor: it drives the write side and verifies with
//! `prismctl`), so the ledger's own tests never depend on either. It shares the ledger's
//! test support module, and runs the `prism-ledger` binary built next to `prismctl`
//! (`cargo test --workspace` builds it; alone: `cargo build -p prism-ledger` first).

mod e2e;
#[path = "../../projectors/ledger/tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{CommandService, TOKEN};
use prism_command::store::Position;
use prism_events::AccountEvent;
use prism_platform::auth::{Scope, TokenConfig};
use prism_platform::config::Config;
use prism_tests::{repo_root, unique, up};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The seed of the kill schedule and of the traffic.
const SEED: u64 = 0x1ed6_e4c0_ffee;
const EVENTS: u64 = 20_000;
const ACCOUNTS: usize = 400;
const CONCURRENCY: usize = 16;
const KILLS: u32 = 4;

/// The `prism-ledger` binary next to the `prismctl` under test.
fn ledger_binary() -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_prismctl")).with_file_name("prism-ledger");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p prism-ledger` \
         (`cargo test --workspace` builds it too)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    let listener = up("localhost", std::net::TcpListener::bind("127.0.0.1:0"));
    up("localhost", listener.local_addr()).port()
}

/// The real binary, configured through the environment like an operator would.
struct LedgerProcess {
    config: Config,
    log: PathBuf,
    child: Option<Child>,
    pub url: String,
    pub starts: u32,
}

impl LedgerProcess {
    fn new(config: &Config) -> LedgerProcess {
        let log = std::env::temp_dir().join(format!("{}.log", unique("prism-ledger-crash")));
        eprintln!("prism-ledger's stderr goes to {}", log.display());
        LedgerProcess {
            config: config.clone(),
            log,
            child: None,
            url: String::new(),
            starts: 0,
        }
    }

    fn spawn(&mut self) {
        let root = repo_root();
        let port = free_port();
        let stderr = up(
            "the log file",
            File::options().create(true).append(true).open(&self.log),
        );
        let config = &self.config;
        let ledger = support::ledger_config(config);
        let child = Command::new(ledger_binary())
            .current_dir(&root)
            .env("PRISM_CONFIG", root.join("config/prism.toml"))
            .env_remove("PRISM_PROFILE")
            .env("PRISM_LEDGER__DATABASE", &ledger.database)
            .env("PRISM_LEDGER__GROUP_ID", &ledger.group_id)
            .env("PRISM_LEDGER__LISTEN", format!("127.0.0.1:{port}"))
            .env("PRISM_KAFKA__TOPIC", &config.kafka.topic)
            .env(
                "PRISM_KAFKA__TOPIC_PARTITIONS",
                config.kafka.topic_partitions.to_string(),
            )
            .env("PRISM_PROJECTOR__SESSION_TIMEOUT_MS", "6000")
            .env("PRISM_PROJECTOR__LAG_INTERVAL_MS", "500")
            .env("PRISM_MYSQL__MAX_CONNECTIONS", "8")
            .env("PRISM_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn();
        self.child = Some(up("the prism-ledger binary", child));
        self.url = format!("http://127.0.0.1:{port}");
        self.starts += 1;
    }

    /// SIGKILL: no shutdown, no commit, no leaving the group.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit status (`None`: still running).
    fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        up("kill -TERM", sent);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for LedgerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends the seeded traffic until `EVENTS` events are stored; returns the number stored.
async fn traffic(url: String, stored: Arc<AtomicU64>) -> u64 {
    traffic_of(url, stored, EVENTS, SEED).await
}

/// Sends the traffic of `seed` until `events` events are stored; returns the number stored.
async fn traffic_of(url: String, stored: Arc<AtomicU64>, events: u64, seed: u64) -> u64 {
    e2e::seeded_load(url, seed, ACCOUNTS, events, CONCURRENCY, stored).await
}

/// `prismctl verify` of the whole model against the store (waiting for the model to catch
/// up), its figures printed.
async fn verify(config: &Config, started: Instant) -> prismctl::verify::VerifyReport {
    let report = up(
        "prismctl verify",
        prismctl::verify::verify_ledger_with(
            config,
            &prismctl::verify::Options {
                wait: Duration::from_secs(120),
                ..Default::default()
            },
        )
        .await,
    );
    eprintln!(
        "verify after {:.1}s: ok={} events={} accounts={} identical={} drifted={} \
         double_applied={} missing_lines={} attempts={}",
        started.elapsed().as_secs_f64(),
        report.ok,
        report.events_read,
        report.accounts_in_store,
        report.identical,
        report.drifted,
        report.double_applied_lines,
        report.missing_lines,
        report.attempts
    );
    report
}

/// Partitions the instance owns (0 when it does not answer).
async fn assigned(instance: &support::Projector) -> f64 {
    match instance
        .http
        .get(format!("{}/metrics", instance.url))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) => support::metric_sum(
            &r.text().await.unwrap_or_default(),
            "prism_projector_assigned_partitions",
            &[],
        ),
        Err(_) => 0.0,
    }
}

/// Events the instance applied (0 when it does not answer).
async fn applied(instance: &support::Projector) -> u64 {
    match instance
        .http
        .get(format!("{}/metrics", instance.url))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) => support::metric_sum(
            &r.text().await.unwrap_or_default(),
            "prism_projector_events_total",
            &[("outcome", "applied")],
        ) as u64,
        Err(_) => 0,
    }
}

/// Money events (one statement line each) in the store.
async fn money_events_in_store(config: &Config) -> (u64, u64) {
    let store = up(
        "the event store",
        prism_command::app::open_store(config).await,
    );
    let mut after: Option<Position> = None;
    let (mut events, mut money) = (0_u64, 0_u64);
    loop {
        let page = up(
            "the event store",
            store.read_all(after.as_ref(), 5_000).await,
        );
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (_, e) in &page {
            events += 1;
            if matches!(
                e.event,
                AccountEvent::MoneyDeposited(_)
                    | AccountEvent::MoneyWithdrawn(_)
                    | AccountEvent::CardPaymentApproved(_)
            ) {
                money += 1;
            }
        }
    }
    (events, money)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_at_random_moments_converges_without_drift() {
    let mut config = support::isolated_config(6);
    config.relay.sweep_interval_ms = 200;
    config.command.auth_enabled = true;
    config.auth.tokens = vec![TokenConfig::new("test", TOKEN, &Scope::ALL)];
    support::isolated_with(config, |env| async move {
        let started = Instant::now();
        let config = env.config.clone();
        let command = CommandService::start(&config).await;
        let mut ledger = LedgerProcess::new(&config);
        ledger.spawn();

        let stored = Arc::new(AtomicU64::new(0));
        let load = tokio::spawn(traffic(command.url.clone(), Arc::clone(&stored)));

        // Kill at random moments (seeded) and restart, until the traffic is done and at
        // least KILLS of the kills hit an instance that was projecting. Some kills land in
        // start-up (before the group handed the instance its partitions).
        let mut rng = ChaCha8Rng::seed_from_u64(SEED);
        let mut kills = 0;
        let mut projecting_kills = 0;
        let mut kill_log: Vec<String> = Vec::new();
        while projecting_kills < KILLS || !load.is_finished() {
            if rng.gen_bool(0.2) {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=1_500))).await;
            } else {
                let instance = support::Projector::at(ledger.url.clone());
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    if let Some(status) = ledger.exited() {
                        panic!(
                            "prism-ledger exited on its own ({status}):\n{}",
                            ledger.log_tail()
                        );
                    }
                    if assigned(&instance).await > 0.0 {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "prism-ledger got no partition within 60 s:\n{}",
                        ledger.log_tail()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(300..=4_000))).await;
            }
            if let Some(status) = ledger.exited() {
                panic!(
                    "prism-ledger exited on its own ({status}):\n{}",
                    ledger.log_tail()
                );
            }
            let applied = applied(&support::Projector::at(ledger.url.clone())).await;
            ledger.kill();
            kills += 1;
            if applied > 0 {
                projecting_kills += 1;
            }
            kill_log.push(format!(
                "kill {kills} at {:.1}s: {applied} applied by that instance, {} events stored",
                started.elapsed().as_secs_f64(),
                stored.load(Ordering::Relaxed)
            ));
            if rng.gen_bool(0.3) {
                // Sometimes stay down for a while.
                tokio::time::sleep(Duration::from_millis(rng.gen_range(200..=2_000))).await;
            }
            ledger.spawn();
        }
        let stored_events = up("the traffic task", load.await);
        eprintln!("{} events stored; {}", stored_events, kill_log.join("\n  "));
        assert!(
            stored_events >= EVENTS,
            "only {stored_events} events stored"
        );

        // Let the relay publish what is left, then check everything.
        command.stop().await;
        let report = verify(&config, started).await;
        if let Some(status) = ledger.exited() {
            panic!(
                "prism-ledger exited on its own ({status}):\n{}",
                ledger.log_tail()
            );
        }
        let (events, money) = money_events_in_store(&config).await;
        assert!(
            report.ok,
            "drift after {kills} kills: {:#?}\nprism-ledger log:\n{}",
            report.mismatches.iter().take(20).collect::<Vec<_>>(),
            ledger.log_tail()
        );
        assert_eq!(report.double_applied_lines, 0);
        assert_eq!(report.missing_lines, 0);
        assert_eq!(report.events_read, events);
        assert!(events >= EVENTS, "{events} events in the store");
        assert_eq!(report.accounts_in_model, ACCOUNTS);

        let pool = env.model_pool().await;
        let lines = support::count(&pool, "statement_lines").await;
        assert_eq!(
            u64::try_from(lines).unwrap_or(0),
            money,
            "statement lines vs. money events in the store"
        );
        // Nothing was dead-lettered: a kill is not a reason to give up on an event.
        let letters = env.dead_letters(0, Duration::from_secs(1));
        assert!(
            letters.is_empty(),
            "dead letters after kills: {:?}",
            letters.iter().map(|l| l.error()).collect::<Vec<_>>()
        );
        // The last instance is healthy and caught up.
        let projector = support::Projector::at(ledger.url.clone());
        projector
            .wait_assigned(config.kafka.topic_partitions, Duration::from_secs(30))
            .await;
        // The last one stops cleanly on SIGTERM (and leaves the group).
        let status = ledger.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "prism-ledger on SIGTERM: {status:?}\n{}",
            ledger.log_tail()
        );
        eprintln!(
            "{} starts of prism-ledger, {kills} kills, total {:.1}s",
            ledger.starts,
            started.elapsed().as_secs_f64()
        );
        drop(pool);
    })
    .await;
}

/// A kill during the very first start-up, while the read model's tables are being created
/// (MySQL commits DDL at once, so the migration is not atomic), must not leave a ledger
/// that can never start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_the_first_start_creates_the_model_does_not_wedge_the_ledger() {
    support::isolated(1, |env| async move {
        let config = env.config.clone();
        let admin = up("mysql", prism_platform::clients::mysql(&config.mysql).await);
        let generation =
            prism_ledger::store::generation_database(&support::ledger_config(&config).database, 1);
        let mut ledger = LedgerProcess::new(&config);
        ledger.spawn();
        // Kill the moment the migration of generation 1 is recorded as begun but not done.
        let probe =
            format!("SELECT COUNT(*) FROM `{generation}`._sqlx_migrations WHERE NOT success");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut caught = false;
        while Instant::now() < deadline && ledger.exited().is_none() {
            let begun: Result<i64, _> = sqlx::query_scalar(&probe).fetch_one(&admin).await;
            if begun.is_ok_and(|n| n > 0) {
                ledger.kill();
                caught = true;
                break;
            }
            let done: Result<i64, _> = sqlx::query_scalar(&format!(
                "SELECT COUNT(*) FROM `{generation}`._sqlx_migrations WHERE success"
            ))
            .fetch_one(&admin)
            .await;
            if done.is_ok_and(|n| n > 0) {
                break;
            }
        }
        admin.close().await;
        if !caught {
            // The window was missed (the machine was quick): nothing to test this time.
            eprintln!("the migration finished before the kill; not exercised this run");
            ledger.kill();
            return;
        }

        // It must come back: up, part of the group, projecting.
        ledger.spawn();
        let mut account = support::Account::new(0);
        let events = vec![account.next(
            support::day(7, 9, 0),
            support::opened("After Kill", "DE", "EUR"),
        )];
        env.send_all(&events).await;
        let instance = support::Projector::at(ledger.url.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = ledger.exited() {
                panic!(
                    "after a kill during its first start-up prism-ledger cannot start again \
                     ({status}):\n{}",
                    ledger.log_tail()
                );
            }
            if instance
                .http
                .get(format!("{}/v1/accounts/{}", ledger.url, account.id))
                .bearer_auth(&instance.token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prism-ledger did not project after the restart:\n{}",
                ledger.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let status = ledger.terminate(Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    })
    .await;
}

/// The scale-out run that once corrupted balances: under load, up to three prism-ledger
/// instances of one group join and leave (clean stops, like SIGTERM) at random moments, so
/// partitions move between them again and again, away and back. At the end `prismctl
/// verify` compares the whole model with a fold of the event store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_joining_and_leaving_at_random_under_load_verify_clean() {
    const SCALE_SEED: u64 = 0x005c_a1e0;
    const SCALE_EVENTS: u64 = 20_000;
    const CHANGES: u32 = 16;
    let mut config = support::isolated_config(6);
    config.relay.sweep_interval_ms = 200;
    config.command.auth_enabled = true;
    config.auth.tokens = vec![TokenConfig::new("test", TOKEN, &Scope::ALL)];
    config.projector.session_timeout_ms = 6_000;
    support::isolated_with(config, |env| async move {
        let started = Instant::now();
        let config = env.config.clone();
        let command = CommandService::start(&config).await;
        let stored = Arc::new(AtomicU64::new(0));
        let load = tokio::spawn(traffic_of(
            command.url.clone(),
            Arc::clone(&stored),
            SCALE_EVENTS,
            SCALE_SEED,
        ));

        let mut rng = ChaCha8Rng::seed_from_u64(SCALE_SEED);
        let mut running = vec![env.start_projector().await];
        let mut changes = 0;
        let mut log: Vec<String> = Vec::new();
        while changes < CHANGES || !load.is_finished() {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(300..=2_000))).await;
            let join = running.len() == 1 || (running.len() < 3 && rng.gen_bool(0.5));
            if join {
                running.push(env.start_projector().await);
            } else {
                let leaving = running.remove(rng.gen_range(0..running.len()));
                leaving.stop().await;
            }
            changes += 1;
            // Each change moves partitions for real before the next: every instance
            // running owns some, and together they own all of them.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut owned = Vec::new();
                for instance in &running {
                    owned.push(assigned(instance).await);
                }
                if owned.iter().all(|n| *n > 0.0)
                    && owned.iter().sum::<f64>() == f64::from(config.kafka.topic_partitions)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the partitions never settled on {} instances: {owned:?}",
                    running.len()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            log.push(format!(
                "{:.1}s: {} ({} running, {} events stored)",
                started.elapsed().as_secs_f64(),
                if join { "join" } else { "leave" },
                running.len(),
                stored.load(Ordering::Relaxed)
            ));
        }
        let stored_events = up("the traffic task", load.await);
        eprintln!("{stored_events} events stored;\n  {}", log.join("\n  "));
        assert!(
            stored_events >= SCALE_EVENTS,
            "only {stored_events} events stored"
        );

        command.stop().await;
        let report = verify(&config, started).await;
        assert!(
            report.ok,
            "drift after {changes} membership changes: {:#?}",
            report.mismatches.iter().take(20).collect::<Vec<_>>()
        );
        assert_eq!(report.double_applied_lines, 0);
        assert_eq!(report.missing_lines, 0);
        let letters = env.dead_letters(0, Duration::from_secs(1));
        assert!(
            letters.is_empty(),
            "dead letters after a scale-out run: {:?}",
            letters.iter().map(|l| l.error()).collect::<Vec<_>>()
        );
        for instance in running {
            instance.stop().await;
        }
    })
    .await;
}
