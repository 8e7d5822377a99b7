//! The fuzz test's world: one profile for the five services (a topic, event-store schema,
//! consumer groups, ledger database, search indices, Redis namespaces and offline directory
//! of its own), the services as child processes, the seed data every valid request needs,
//! and the event store's count of events.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_platform::config::Config;
use prism_tests::up;
use serde_json::{json, Value};

use crate::projector::ProjectorProcess;
use crate::routes::{Known, Service, TOKEN};

/// How long a projector's query waits for a consistency token before answering 202: short,
/// since the fuzz test sends tokens of versions that never come.
const WAIT_TIMEOUT_MS: u64 = 300;

/// The run's names (every service's, dropped at the end).
pub use crate::world::World as Env;

/// The fuzz run's names, with short consistency waits (the test sends tokens of versions
/// that never come) and prism-command's body limit as the routes know it.
fn world() -> Env {
    Env::new("fuzz", 2, |section| match section {
        "command" => format!("max_body_bytes = {}\n", Service::Command.body_limit()),
        "search" => format!("refresh_interval_ms = 200\nwait_timeout_ms = {WAIT_TIMEOUT_MS}\n"),
        _ => format!("wait_timeout_ms = {WAIT_TIMEOUT_MS}\n"),
    })
}

/// Runs `body` in an [`Env`] of its own and cleans up whether it passed or not.
pub async fn isolated<F, Fut>(body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()>,
{
    prism_tests::run_then_clean_up(Arc::new(world()), body, |env| async move {
        // The services must be gone before their groups can be deleted.
        env.clean_up().await;
    })
    .await;
}

/// The five services, each a child process with a port of its own; killed when dropped.
pub struct Stack {
    pub processes: Vec<(Service, ProjectorProcess)>,
}

impl Stack {
    pub async fn start(env: &Env) -> Stack {
        let mut processes = Vec::new();
        for service in Service::ALL {
            let process =
                ProjectorProcess::start(service.name(), service.listen_var(), &env.profile);
            processes.push((service, process));
        }
        for (_, process) in &mut processes {
            process.wait_ready(Duration::from_secs(90)).await;
        }
        Stack { processes }
    }

    pub fn process(&self, service: Service) -> &ProjectorProcess {
        match self.processes.iter().find(|(s, _)| *s == service) {
            Some((_, process)) => process,
            None => panic!("{} was not started", service.name()),
        }
    }

    /// `host:port` of `service`.
    pub fn address(&self, service: Service) -> String {
        let url = &self.process(service).url;
        url.trim_start_matches("http://").to_owned()
    }
}

/// The number of events in the run's event store (its own PostgreSQL schema).
pub struct EventStore {
    pool: sqlx::PgPool,
    count: String,
}

impl EventStore {
    pub async fn connect(config: &Config) -> EventStore {
        let pool = up(
            "PostgreSQL",
            prism_platform::clients::postgres(&config.postgres).await,
        );
        let count = format!(
            "SELECT count(*) FROM \"{}\".events",
            config.event_store.postgres_schema
        );
        EventStore { pool, count }
    }

    pub async fn events(&self) -> i64 {
        let (count,): (i64,) = up(
            "PostgreSQL",
            sqlx::query_as(&self.count).fetch_one(&self.pool).await,
        );
        count
    }
}

/// Seeds the world every valid request needs: accounts in several currencies with money,
/// card payments and a withdrawal, sent through prism-command; then waits until every
/// projector shows them. Returns what the run knows.
pub async fn seed(stack: &Stack) -> Known {
    let http = up("reqwest", reqwest::Client::builder().build());
    let command = &stack.process(Service::Command).url;
    let post = |path: String, body: Value| {
        let http = http.clone();
        let url = format!("{command}{path}");
        async move {
            let response = up(
                "prism-command",
                http.post(&url).bearer_auth(TOKEN).json(&body).send().await,
            );
            let status = response.status();
            let answer: Value = up("prism-command's answer", response.json().await);
            assert!(
                status.is_success(),
                "seeding: {url} {body}: {status} {answer}"
            );
            answer
        }
    };
    let mut known = Known::default();
    let people = [
        ("Ada Lovelace", "GB", "GBP"),
        ("Zoë Müller", "DE", "EUR"),
        ("李小龍", "JP", "JPY"),
        ("José da Silva", "BR", "BRL"),
        ("Ngozi Okonjo", "NG", "USD"),
        ("Fatima Al-Sayed", "BH", "BHD"),
    ];
    for (i, (name, country, currency)) in people.into_iter().enumerate() {
        let opened = post(
            "/v1/accounts".into(),
            json!({"holder_name": name, "email": format!("seed{i}@example.org"),
                   "country": country, "currency": currency}),
        )
        .await;
        let id = opened["account_id"].as_str().unwrap_or_default().to_owned();
        let base = format!("/v1/accounts/{id}");
        post(
            format!("{base}/deposits"),
            json!({"amount_minor": 5_000_000, "description": "salary"}),
        )
        .await;
        for (amount, merchant) in [(1_250, "Café Rosa"), (9_900, "Tesco")] {
            let paid = post(
                format!("{base}/payments"),
                json!({"amount_minor": amount, "merchant_name": merchant,
                       "merchant_category": "5812", "merchant_country": "PT", "channel": "pos"}),
            )
            .await;
            if let Some(event) = paid["event_ids"][0].as_str() {
                known.payments.push((id.clone(), event.to_owned()));
            }
        }
        let last = post(
            format!("{base}/withdrawals"),
            json!({"amount_minor": 2_000, "channel": "atm"}),
        )
        .await;
        let token = last["consistency_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        known.accounts.push((id, token));
    }
    // Every projector has every account's last write.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (id, token) in &known.accounts {
        let checks = [
            (Service::Ledger, format!("/v1/accounts/{id}")),
            (Service::Fraud, format!("/v1/features/{id}")),
            (
                Service::Search,
                format!("/v1/search/transactions?account_id={id}"),
            ),
            (Service::Dashboard, "/v1/dashboard/summary".to_owned()),
        ];
        for (service, path) in checks {
            let url = format!("{}{path}", stack.process(service).url);
            loop {
                let answer = http
                    .get(&url)
                    .bearer_auth(TOKEN)
                    .header("Consistency-Token", token)
                    .send()
                    .await;
                if matches!(&answer, Ok(r) if r.status() == 200) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} does not show account {id} within 120 s: {answer:?}\nits log:\n{}",
                    service.name(),
                    stack.process(service).log_tail()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    known
}
