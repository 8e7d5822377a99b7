//! MySQL goes away under a running ledger projector (`dev/stack down mysql`) while events
//! keep arriving for 20 s; when it is back (`dev/stack up mysql`) the read model converges
//! with nothing lost. A test binary of its own, with one test: it stops the shared MySQL.
//! MySQL is brought back up whatever happens (a guard's `Drop`).

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use prism_events::AccountEvent;
use support::{count, isolated, last_versions, wait_versions, Feed};
use uuid::Uuid;

const OUTAGE: Duration = Duration::from_secs(20);

fn stack(action: &str) -> Result<(), String> {
    let root = prism_tests::repo_root();
    let output = Command::new(root.join("dev/stack"))
        .args([action, "mysql"])
        .current_dir(&root)
        .output()
        .map_err(|e| format!("running dev/stack {action} mysql: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "dev/stack {action} mysql: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// MySQL is down while this lives; dropping it (or [`MysqlDown::restore`]) brings it back.
struct MysqlDown {
    down: bool,
}

impl MysqlDown {
    fn stop() -> MysqlDown {
        let mut guard = MysqlDown { down: true };
        if let Err(e) = stack("down") {
            guard.restore();
            panic!("{e}");
        }
        guard
    }

    fn restore(&mut self) {
        if std::mem::take(&mut self.down) {
            if let Err(e) = stack("up") {
                eprintln!("MYSQL IS STILL DOWN: {e}\nRun `dev/stack up mysql`.");
                if !std::thread::panicking() {
                    panic!("bringing MySQL back: {e}");
                }
            }
        }
    }
}

impl Drop for MysqlDown {
    fn drop(&mut self) {
        self.restore();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_rides_out_a_mysql_outage_and_loses_nothing() {
    isolated(2, |env| async move {
        let started = Instant::now();
        let projector = env.start_projector().await;
        let mut feed = Feed::new(41, 20, 2);
        let mut produced = feed.take(100);
        env.send_all(&produced).await;
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&produced), Duration::from_secs(30)).await;
        projector
            .wait_assigned(env.partitions(), Duration::from_secs(30))
            .await;

        let mut outage = tokio::task::spawn_blocking(MysqlDown::stop)
            .await
            .expect("stopping mysql");
        let down_at = Instant::now();
        // Keep producing through the outage; watch /readyz.
        let mut saw_unready = None;
        while down_at.elapsed() < OUTAGE {
            let chunk = feed.take(10);
            env.send_all(&chunk).await;
            produced.extend(chunk);
            if saw_unready.is_none() {
                let (status, _, body) = projector.readyz().await;
                if status == 503 {
                    saw_unready = Some(body);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let during = projector.readyz().await;
        let up_at = Instant::now();
        tokio::task::spawn_blocking(move || outage.restore())
            .await
            .expect("starting mysql");
        let unready = saw_unready.expect("/readyz never answered 503 while MySQL was down");
        assert_eq!(
            unready["code"], "not_ready",
            "/readyz during the outage: {unready}"
        );
        assert_eq!(
            during.0, 503,
            "/readyz at the end of the outage: {}",
            during.2
        );
        let detail = during.2["detail"].as_str().unwrap_or_default().to_owned();
        assert!(
            detail.contains("store is not answering"),
            "the reason names the store: {detail}"
        );

        // Everything arrives, once.
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&produced), Duration::from_secs(60)).await;
        let converged = up_at.elapsed();
        let mut ready_again = false;
        for _ in 0..300 {
            if projector.readyz().await.0 == 200 {
                ready_again = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready_again, "/readyz is 200 again after MySQL is back");

        let mut balances: HashMap<Uuid, i64> = HashMap::new();
        let mut money = 0;
        for (e, _) in &produced {
            *balances.entry(e.account_id.0).or_default() += e.event.balance_change();
            if matches!(
                e.event,
                AccountEvent::MoneyDeposited(_)
                    | AccountEvent::MoneyWithdrawn(_)
                    | AccountEvent::CardPaymentApproved(_)
            ) {
                money += 1;
            }
        }
        assert_eq!(count(&pool, "statement_lines").await, money);
        assert_eq!(count(&pool, "accounts").await, 20);
        let rows: Vec<(Uuid, i64, u64)> =
            sqlx::query_as("SELECT account_id, balance_minor, version FROM accounts")
                .fetch_all(&pool)
                .await
                .expect("accounts");
        let versions = last_versions(&produced);
        for (id, balance, version) in rows {
            assert_eq!(Some(&balance), balances.get(&id), "balance of {id}");
            assert_eq!(Some(&version), versions.get(&id), "version of {id}");
        }
        let total = produced.len() as u64;
        assert_eq!(
            projector
                .wait_events("applied", total, Duration::from_secs(10))
                .await,
            total
        );
        assert_eq!(projector.events_total("dead_lettered").await, 0);
        assert!(env.dead_letters(0, Duration::from_secs(1)).is_empty());
        eprintln!(
            "{total} events, {} during the outage; converged {:.1}s after MySQL was back; \
             {:.1}s in all",
            total - 100,
            converged.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        projector.stop().await;
    })
    .await;
}
