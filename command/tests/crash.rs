//! Kill -9 the real `prism-command` binary under load: every acknowledged command is in the
//! store, and after a restart every stored event reaches Kafka in per-account order.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prism_platform::config::{Config, EventStoreBackend};
use support::{assert_per_account_order, clean_up, consume, isolated_config, stored_events, Api};

fn free_port() -> u16 {
    let listener = prism_tests::up("localhost", std::net::TcpListener::bind("127.0.0.1:0"));
    prism_tests::up("localhost", listener.local_addr()).port()
}

fn spawn(config: &Config, port: u16) -> Child {
    let root = prism_tests::repo_root();
    let child = Command::new(env!("CARGO_BIN_EXE_prism-command"))
        .current_dir(&root)
        .env("PRISM_CONFIG", root.join("config/prism.toml"))
        .env_remove("PRISM_PROFILE")
        .env("PRISM_COMMAND__LISTEN", format!("127.0.0.1:{port}"))
        .env("PRISM_MONGODB__DATABASE", &config.mongodb.database)
        .env("PRISM_KAFKA__TOPIC", &config.kafka.topic)
        .env(
            "PRISM_KAFKA__TOPIC_PARTITIONS",
            config.kafka.topic_partitions.to_string(),
        )
        .env("PRISM_RELAY__SWEEP_INTERVAL_MS", "200")
        .env("PRISM_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    prism_tests::up("prism-command binary", child)
}

async fn wait_ready(api: &Api) {
    for _ in 0..200 {
        if let Ok(r) = api.http.get(format!("{}/readyz", api.base)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prism-command at {} did not become ready", api.base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_loses_no_acknowledged_command_and_publishes_everything_after_restart() {
    let config = isolated_config(EventStoreBackend::Mongodb);
    let port = free_port();
    let mut child = spawn(&config, port);
    let api = Api::new(&format!("http://127.0.0.1:{port}"));
    wait_ready(&api).await;

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
                    let request = api
                        .http
                        .post(format!("{}/v1/accounts/{account}/deposits", api.base))
                        .bearer_auth(support::TOKEN)
                        .json(&serde_json::json!({ "amount_minor": 1 }))
                        .send()
                        .await;
                    let Ok(response) = request else { break };
                    if response.status().as_u16() == 200 {
                        if let Ok(body) = response.json::<serde_json::Value>().await {
                            if let Some(ids) = body["event_ids"].as_array() {
                                acknowledged.extend(
                                    ids.iter().filter_map(|i| i.as_str().map(str::to_owned)),
                                );
                            }
                        }
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    prism_tests::up("kill", child.kill()); // SIGKILL: no shutdown, no flush
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeSet::new();
    for worker in workers {
        acknowledged.extend(prism_tests::up("worker", worker.await));
    }
    assert!(
        acknowledged.len() > 20,
        "the load ran: {} acknowledged",
        acknowledged.len()
    );

    // Every acknowledged command is in the store.
    let stored = stored_events(&config).await;
    let stored_ids: BTreeSet<String> = stored
        .values()
        .flatten()
        .map(|e| e.id.to_string())
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored_ids).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");

    // A new process publishes what the dead one had not.
    let mut child = spawn(&config, port);
    wait_ready(&api).await;
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
    wait_ready(&api).await;
    let account = api.open("EUR").await;
    assert_eq!(api.deposit(&account, 3).await.status, 200);

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(prism_tests::up("kill -TERM", term).success());
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = prism_tests::up("wait", child.try_wait()) {
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
