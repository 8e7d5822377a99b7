//! Kill -9 the real `prism-command` binary under load: every acknowledged command is in the
//! store, and after a restart every stored event reaches Kafka in per-account order.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prism_events::{AccountId, Envelope};
use prism_platform::config::{Config, EventStoreBackend};
use prism_tests::up;
use support::{
    assert_every_event_published, assert_per_account_order, clean_up, consume, free_port,
    isolated_config, last_versions, spawn_binary as spawn, stored_events, wait_ready, Api,
    Instance,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_loses_no_acknowledged_command_and_publishes_everything_after_restart() {
    let config = isolated_config(EventStoreBackend::Mongodb);
    let port = free_port();
    let mut child = spawn(&config, port);
    let api = Api::new(&format!("http://127.0.0.1:{port}"));
    wait_ready(&api.base).await;

    let mut accounts = Vec::new();
    for _ in 0..6 {
        accounts.push(api.open("EUR").await);
    }
    // Load on every account until the process dies under it.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = accounts
        .iter()
        .map(|account| {
            let api = api.clone();
            let account = account.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    acknowledged.extend(deposit(&api, &account).await);
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    up("kill", child.kill()); // SIGKILL: no shutdown, no flush
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    let (stored, stored_ids) = assert_acknowledged_are_stored(&config, workers, 20).await;

    // A new process publishes what the dead one had not.
    let mut child = spawn(&config, port);
    wait_ready(&api.base).await;
    let expected: BTreeMap<String, u64> = stored
        .iter()
        .map(|(account, events)| (account.to_string(), events.len() as u64))
        .collect();
    let records = consume(&config, &expected, Duration::from_secs(60));
    assert_per_account_order(&records, &expected);
    let published: BTreeSet<&str> = records
        .iter()
        .map(|(_, _, id)| id.split('@').next().unwrap_or_default())
        .collect();
    for id in &stored_ids {
        assert!(
            published.contains(id.as_str()),
            "stored event {id} never reached Kafka"
        );
    }

    let _ = child.kill();
    let _ = child.wait();
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_exits_cleanly() {
    let config = isolated_config(EventStoreBackend::Mongodb);
    let port = free_port();
    let mut child = spawn(&config, port);
    let api = Api::new(&format!("http://127.0.0.1:{port}"));
    wait_ready(&api.base).await;
    let account = api.open("EUR").await;
    assert_eq!(api.deposit(&account, 3).await.status, 200);

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(up("kill -TERM", term).success());
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = up("wait", child.try_wait()) {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match status {
        Some(s) => assert!(s.success(), "exit status {s}"),
        None => {
            let _ = child.kill();
            panic!("prism-command did not exit within 10s of SIGTERM");
        }
    }
    // Everything it accepted was published before it exited.
    let expected: BTreeMap<String, u64> = [(account, 2)].into();
    let records = consume(&config, &expected, Duration::from_secs(10));
    assert_per_account_order(&records, &expected);
    clean_up(&config).await;
}

/// Collects what the stopped load's `workers` had acknowledged (more than `at_least`
/// events) and asserts every one is in the store. Answers the store's events and their ids.
async fn assert_acknowledged_are_stored(
    config: &Config,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
    at_least: usize,
) -> (BTreeMap<AccountId, Vec<Envelope>>, BTreeSet<String>) {
    let mut acknowledged = BTreeSet::new();
    for worker in workers {
        acknowledged.extend(up("worker", worker.await));
    }
    assert!(
        acknowledged.len() > at_least,
        "the load ran: {} acknowledged",
        acknowledged.len()
    );
    let stored = stored_events(config).await;
    let stored_ids: BTreeSet<String> = stored
        .values()
        .flatten()
        .map(|e| e.id.to_string())
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored_ids).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    (stored, stored_ids)
}

/// One deposit with an idempotency key through `api`; the event ids of an acknowledged one
/// (200), none otherwise (refused, or the instance died under it).
async fn deposit(api: &Api, account: &str) -> Vec<String> {
    let sent = api
        .http
        .post(format!("{}/v1/accounts/{account}/deposits", api.base))
        .bearer_auth(support::TOKEN)
        .header("Idempotency-Key", format!("crash-{}", uuid::Uuid::now_v7()))
        .json(&serde_json::json!({ "amount_minor": 1 }))
        .send()
        .await;
    let Ok(response) = sent else {
        return Vec::new();
    };
    if response.status().as_u16() != 200 {
        return Vec::new();
    }
    let Ok(body) = response.json::<serde_json::Value>().await else {
        return Vec::new();
    };
    body["event_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Two instances share the accounts under concurrent keyed load, so each writes batches of
/// commits (group commit, claims with them); one is killed with SIGKILL in the middle of
/// it and restarted. Every acknowledged command is in the store, every account's stream is
/// whole (versions 1..n, no gap), and every stored event reaches Kafka in per-account
/// order.
async fn a_kill_during_batched_appends_with_two_instances_loses_nothing(
    backend: EventStoreBackend,
) {
    const ACCOUNTS: usize = 48;
    const WORKERS: usize = 24;
    let config = isolated_config(backend);
    let port = free_port();
    let mut child = spawn(&config, port);
    let killed = Api::new(&format!("http://127.0.0.1:{port}"));
    wait_ready(&killed.base).await;
    let survivor = Instance::start(&config).await;
    let other = Api::new(&survivor.url);
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        accounts.push(other.open("EUR").await);
    }
    let accounts = Arc::new(accounts);

    // Each worker walks the accounts, sending every other command to each instance.
    let stop = Arc::new(AtomicBool::new(false));
    let sent_to_killed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (killed, other, accounts) = (killed.clone(), other.clone(), Arc::clone(&accounts));
            let (stop, sent_to_killed) = (Arc::clone(&stop), Arc::clone(&sent_to_killed));
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut turn = worker;
                while !stop.load(Ordering::Relaxed) {
                    let account = &accounts[turn % accounts.len()];
                    let api = if turn % 2 == 0 {
                        sent_to_killed.fetch_add(1, Ordering::Relaxed);
                        &killed
                    } else {
                        &other
                    };
                    acknowledged.extend(deposit(api, account).await);
                    turn += WORKERS + 1;
                }
                acknowledged
            })
        })
        .collect();
    // Kill once the doomed instance has taken a good share of the load.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sent_to_killed.load(Ordering::Relaxed) < 400 {
        assert!(
            std::time::Instant::now() < deadline,
            "the load did not reach the instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    up("kill", child.kill()); // SIGKILL: batches in flight die with it
    let _ = child.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut child = spawn(&config, port);
    wait_ready(&killed.base).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (stored, _) = assert_acknowledged_are_stored(&config, workers, 400).await;
    for (account, events) in &stored {
        let versions: Vec<u64> = events.iter().map(|e| e.account_version).collect();
        let whole: Vec<u64> = (1..=events.len() as u64).collect();
        assert_eq!(
            versions, whole,
            "account {account}: its stream has a gap or a repeat"
        );
    }
    let expected = last_versions(&stored);
    let reader = config.clone();
    let records = up(
        "reader",
        tokio::task::spawn_blocking(move || consume(&reader, &expected, Duration::from_secs(120)))
            .await,
    );
    assert_per_account_order(&records, &last_versions(&stored));
    assert_every_event_published(&records, &stored);

    let _ = child.kill();
    let _ = child.wait();
    survivor.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mongodb_a_kill_during_batched_appends_with_two_instances_loses_nothing() {
    a_kill_during_batched_appends_with_two_instances_loses_nothing(EventStoreBackend::Mongodb)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_kill_during_batched_appends_with_two_instances_loses_nothing() {
    a_kill_during_batched_appends_with_two_instances_loses_nothing(EventStoreBackend::Postgres)
        .await;
}
