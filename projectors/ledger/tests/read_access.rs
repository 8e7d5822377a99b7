//! Who may read the ledger, and how much reading may cost: the query API needs a bearer
//! token, and consistency waits are bounded (a limit on concurrent waiters, one shared
//! watcher instead of a MySQL poll per request, a pool of their own) so that a flood of
//! them cannot stall the projector. Real Kafka and MySQL, the ledger in-process.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_platform::auth::{Scope, TokenConfig};
use prism_platform::config::LOCAL_ANALYST_TOKEN;
use serde_json::Value;
use support::{day, deposited, isolated_config, isolated_with, metric_sum, opened, Account};

const CATCH_UP: Duration = Duration::from_secs(30);

#[track_caller]
fn assert_unauthorized(answer: &support::Answer, what: &str) {
    assert_eq!(answer.status, 401, "{what}: {}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert_eq!(
        answer.body["code"], "unauthorized",
        "{what}: {}",
        answer.body
    );
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{what}");
}

/// Polls `GET /v1/accounts/{id}` (authenticated, no wait) until its balance is `balance`.
async fn wait_balance(
    projector: &support::Projector,
    account: &Account,
    balance: i64,
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let answer = projector
            .get(&format!("/v1/accounts/{}", account.id), &[])
            .await;
        if answer.status == 200 && answer.body["balance_minor"] == balance {
            return answer.body;
        }
        assert!(
            Instant::now() < deadline,
            "account {} did not reach balance {balance} within {limit:?}: {} {}",
            account.id,
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A ledger reader without the `pii` scope (added to the test's callers).
const NO_PII_TOKEN: &str = "ledger-reader-without-pii";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_api_refuses_requests_without_an_accepted_bearer_token() {
    let mut config = isolated_config(1);
    config.auth.tokens.push(TokenConfig::new(
        "support",
        NO_PII_TOKEN,
        &[Scope::LedgerRead],
    ));
    isolated_with(config, |env| async move {
        let projector = env.start_projector().await;
        let mut a = Account::new(0);
        let (event, partition) = a.next(day(1, 9, 0), opened("Ada Lovelace", "DE", "EUR"));
        env.send(&event, partition).await;
        let (event, partition) = a.next(day(1, 9, 5), deposited(4_200));
        env.send(&event, partition).await;
        let seen = wait_balance(&projector, &a, 4_200, CATCH_UP).await;
        assert_eq!(seen["holder_name"], "Ada Lovelace", "{seen}");

        let paths = [
            format!("/v1/accounts/{}", a.id),
            format!("/v1/accounts/{}/statement", a.id),
            "/v1/accounts".to_owned(),
            // A wait must not be bought without a token either.
            format!("/v1/accounts/{}?min_version=18446744073709551615", a.id),
        ];
        for path in &paths {
            let anonymous = projector.get_anonymous(path, &[]).await;
            assert_unauthorized(&anonymous, &format!("no token: {path}"));
            for wrong in ["Bearer not-the-token", "Bearer ", "Basic cHJpc206cHJpc20="] {
                let answer = projector
                    .get_anonymous(path, &[("authorization", wrong)])
                    .await;
                assert_unauthorized(&answer, &format!("{wrong:?}: {path}"));
                assert!(
                    answer.body.get("items").is_none()
                        && answer.body.get("balance_minor").is_none(),
                    "a refused request leaked data: {}",
                    answer.body
                );
            }
        }
        // The analysts' token is accepted elsewhere but lacks `ledger:read`: 403, no data.
        let analyst = format!("Bearer {LOCAL_ANALYST_TOKEN}");
        for path in &paths {
            let answer = projector
                .get_anonymous(path, &[("authorization", &analyst)])
                .await;
            assert_eq!(answer.status, 403, "{path}: {}", answer.body);
            assert_eq!(answer.body["code"], "forbidden", "{path}: {}", answer.body);
            assert_eq!(
                answer.header("content-type"),
                Some("application/problem+json"),
                "{path}"
            );
            assert!(
                answer.body.to_string().contains("ledger:read")
                    && answer.body.get("items").is_none()
                    && answer.body.get("balance_minor").is_none(),
                "{path}: {}",
                answer.body
            );
        }
        // A reader without `pii` gets the account with its holder's name and email masked.
        let no_pii = format!("Bearer {NO_PII_TOKEN}");
        let masked = projector
            .get_anonymous(
                &format!("/v1/accounts/{}", a.id),
                &[("authorization", &no_pii)],
            )
            .await;
        assert_eq!(masked.status, 200, "{}", masked.body);
        assert_eq!(masked.body["balance_minor"], 4_200, "{}", masked.body);
        assert_eq!(masked.body["holder_name"], "A. L.", "{}", masked.body);
        let email = seen["email"].as_str().unwrap_or_default();
        assert_eq!(
            masked.body["email"],
            prism_platform::pii::mask_email(email),
            "{}",
            masked.body
        );
        assert!(!masked.body.to_string().contains(email), "{}", masked.body);
        let listed = projector
            .get_anonymous("/v1/accounts", &[("authorization", &no_pii)])
            .await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        assert_eq!(
            listed.body["items"][0]["holder_name"], "A. L.",
            "{}",
            listed.body
        );
        assert!(!listed.body.to_string().contains(email), "{}", listed.body);

        let accepted = projector
            .get(&format!("/v1/accounts/{}/statement", a.id), &[])
            .await;
        assert_eq!(accepted.status, 200, "{}", accepted.body);
        assert_eq!(accepted.body["balance_minor"], 4_200, "{}", accepted.body);
        let listed = projector.get("/v1/accounts", &[]).await;
        assert_eq!(listed.status, 200, "{}", listed.body);

        // The operations endpoints stay open.
        for path in ["/healthz", "/readyz", "/metrics"] {
            let answer = projector.get_anonymous(path, &[]).await;
            assert_ne!(answer.status, 401, "{path}: {}", answer.body);
        }
        projector.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_waits_neither_stalls_the_projector_nor_floods_mysql() {
    const ACCOUNTS: usize = 20;
    const FLOODERS: usize = 300;
    const MAX_WAITERS: usize = 32;
    const ROUNDS: i64 = 5;
    const DEPOSIT: i64 = 100;

    let mut config = isolated_config(2);
    config.ledger.set("max_waiters", MAX_WAITERS as u64);
    config.ledger.set("wait_timeout_ms", 2_000);
    // A small writers' pool: waits that used it would starve the projector at once.
    config.mysql.max_connections = 4;
    isolated_with(config, |env| async move {
        let projector = Arc::new(env.start_projector().await);
        let mut accounts: Vec<Account> = (0..ACCOUNTS)
            .map(|i| Account::new(i32::try_from(i % 2).unwrap_or(0)))
            .collect();
        let mut opening = Vec::new();
        for (i, a) in accounts.iter_mut().enumerate() {
            opening.push(a.next(day(1, 9, 0), opened(&format!("Holder {i}"), "DE", "EUR")));
        }
        env.send_all(&opening).await;
        for a in &accounts {
            wait_balance(&projector, a, 0, CATCH_UP).await;
        }
        let queries = |metrics: &str| {
            metric_sum(
                metrics,
                "prism_projector_wait_queries_total",
                &[("projector", support::PROJECTOR)],
            )
        };
        let before = projector.metrics().await;
        assert!(
            before.contains("prism_projector_wait_queries_total"),
            "the ledger does not count the queries of its waits"
        );
        let queries_before = queries(&before);
        // The server's own count of SELECTs (every client's: shown, not asserted on).
        let pool = env.model_pool().await;
        let selects = || async {
            let row: Option<(String, String)> =
                sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_select'")
                    .fetch_optional(&pool)
                    .await
                    .ok()
                    .flatten();
            row.and_then(|(_, v)| v.parse::<u64>().ok()).unwrap_or(0)
        };
        let selects_before = selects().await;

        // The flood: waits for versions that never come (the largest version there is), on
        // existing accounts and on unknown ones, retried as soon as they end.
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = Arc::new(AtomicU64::new(0));
        let timed_out = Arc::new(AtomicU64::new(0));
        let other = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let flood_started = Instant::now();
        let mut flooders = Vec::new();
        for i in 0..FLOODERS {
            let projector = Arc::clone(&projector);
            let id = if i % 2 == 0 {
                accounts[i % ACCOUNTS].id.to_string()
            } else {
                uuid::Uuid::now_v7().to_string()
            };
            let (stop, stopped) = (Arc::clone(&stop), Arc::clone(&stopped));
            let (busy, timed_out, other) = (
                Arc::clone(&busy),
                Arc::clone(&timed_out),
                Arc::clone(&other),
            );
            flooders.push(tokio::spawn(async move {
                let path = format!("/v1/accounts/{id}?min_version=18446744073709551615");
                while !stopped.load(Ordering::SeqCst) {
                    let answer = projector.get(&path, &[]).await;
                    match answer.status {
                        503 if answer.body["code"] == "too_many_waits" => {
                            assert_eq!(
                                answer.header("content-type"),
                                Some("application/problem+json")
                            );
                            assert!(answer.header("retry-after").is_some(), "{}", answer.body);
                            busy.fetch_add(1, Ordering::SeqCst);
                            tokio::select! {
                                () = stop.notified() => {}
                                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                            }
                        }
                        202 => {
                            timed_out.fetch_add(1, Ordering::SeqCst);
                        }
                        404 if i % 2 == 1 => {}
                        status => {
                            if let Ok(mut other) = other.lock() {
                                other.push(format!("{status} {}", answer.body));
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        // Let the flood build up, then write while it goes on: every deposit must become
        // visible within a bound.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut slowest = Duration::ZERO;
        for round in 1..=ROUNDS {
            let mut events = Vec::new();
            for a in &mut accounts {
                events.push(a.next(
                    day(1, 10, u32::try_from(round).unwrap_or(0)),
                    deposited(DEPOSIT),
                ));
            }
            let sent = Instant::now();
            env.send_all(&events).await;
            for a in &accounts {
                wait_balance(&projector, a, round * DEPOSIT, Duration::from_secs(15)).await;
            }
            slowest = slowest.max(sent.elapsed());
        }
        // Waits keep being refused and timing out while the writes get through.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        stopped.store(true, Ordering::SeqCst);
        stop.notify_waiters();
        for flooder in flooders {
            flooder.await.expect("a flooder panicked");
        }
        let flood = flood_started.elapsed();
        let after = projector.metrics().await;
        let issued = queries(&after) - queries_before;
        let server_selects = selects().await.saturating_sub(selects_before);
        let other = other.lock().map(|o| o.clone()).unwrap_or_default();
        println!(
            "flood of {FLOODERS} over {flood:?}: {} refused, {} timed out, {issued} wait \
             queries ({server_selects} SELECTs on the server from every client), slowest \
             round visible after {slowest:?}",
            busy.load(Ordering::SeqCst),
            timed_out.load(Ordering::SeqCst)
        );
        assert!(
            other.is_empty(),
            "unexpected answers: {:?}",
            &other[..other.len().min(5)]
        );
        assert!(
            busy.load(Ordering::SeqCst) > 0,
            "no wait over the limit was refused"
        );
        assert!(
            timed_out.load(Ordering::SeqCst) > 0,
            "no wait ran to its deadline"
        );
        // One round of queries every 20 ms at most (a chunk holds every watched account),
        // however many waits there are: 300 pollers at 40 ms would be 25 times as many.
        let bound = flood.as_secs_f64() / 0.020 + 20.0;
        assert!(
            issued > 0.0 && issued <= bound,
            "{issued} wait queries in {flood:?} (bound {bound})"
        );
        // And the writes became visible: the whole model, every balance.
        for a in &accounts {
            let seen = wait_balance(&projector, a, ROUNDS * DEPOSIT, CATCH_UP).await;
            assert_eq!(seen["version"], 1 + ROUNDS, "{seen}");
        }
        projector.stop().await;
    })
    .await;
}
