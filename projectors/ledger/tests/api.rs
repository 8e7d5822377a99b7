//! The ledger's query API against a real MySQL database of its own: the model's
//! migrations, rows inserted with plain SQL, the router served on a port-0 listener and
//! called over HTTP.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as Days, NaiveDateTime, TimeZone, Utc};
use futures::FutureExt as _;
use prism_ledger::http::{router, ApiState};
use prism_ledger::store::{Generation, LiveModel};
use prism_ledger::LedgerConfig;
use prism_platform::auth::{Auth, Scope};
use prism_platform::clients;
use prism_platform::config::AuthConfig;
use prism_platform::secret::Secret;
use prism_tests::{config, unique, up};
use serde_json::Value;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::MySqlPool;
use tokio::sync::watch;
use uuid::Uuid;

const MAX_PAGE: u32 = 100;

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0)
        .single()
        .expect("a valid time")
}

fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc()
}

struct Account {
    id: Uuid,
    country: &'static str,
    status: &'static str,
}

async fn insert_account(pool: &MySqlPool, a: &Account, version: u64, balance: i64) {
    let t = naive(base_time());
    up(
        "mysql",
        sqlx::query(
            "INSERT INTO accounts (account_id, holder_name, email, country, currency, status, \
             balance_minor, daily_withdrawal_limit_minor, frozen_reason, opened_at, updated_at, \
             closed_at, version) VALUES (?, ?, ?, ?, 'EUR', ?, ?, 500000, ?, ?, ?, ?, ?)",
        )
        .bind(a.id)
        .bind("Ada Lovelace")
        .bind("ada@example.org")
        .bind(a.country)
        .bind(a.status)
        .bind(balance)
        .bind((a.status == "frozen").then_some("suspicious activity"))
        .bind(t)
        .bind(t)
        .bind((a.status == "closed").then_some(t))
        .bind(version)
        .execute(pool)
        .await,
    );
    up(
        "mysql",
        sqlx::query(
            "INSERT INTO projector_accounts (account_id, version, event_id) VALUES (?, ?, ?)",
        )
        .bind(a.id)
        .bind(version)
        .bind(Uuid::now_v7())
        .execute(pool)
        .await,
    );
}

/// Lines for versions 2..=n+1, one hour apart from `base_time() + 1h`, deposits of 100.
async fn insert_lines(pool: &MySqlPool, account: Uuid, n: u64) {
    for i in 1..=n {
        let version = i + 1;
        let amount = 100_i64;
        up(
            "mysql",
            sqlx::query(
                "INSERT INTO statement_lines (account_id, version, event_id, kind, amount_minor, \
                 balance_after_minor, description, channel, merchant_name, merchant_category, \
                 merchant_country, occurred_at) \
                 VALUES (?, ?, ?, 'deposit', ?, ?, ?, NULL, NULL, NULL, NULL, ?)",
            )
            .bind(account)
            .bind(version)
            .bind(Uuid::now_v7())
            .bind(amount)
            .bind(amount * i64::try_from(i).expect("small"))
            .bind(format!("deposit {i}"))
            .bind(naive(
                base_time() + Days::hours(i64::try_from(i).expect("small")),
            ))
            .execute(pool)
            .await,
        );
    }
}

struct Server {
    base: String,
}

async fn serve(pool: &MySqlPool, database: &str, wait_ms: u64) -> (Server, watch::Sender<u64>) {
    let model = LiveModel::fixed(Generation {
        number: 1,
        database: database.to_owned(),
        pool: pool.clone(),
        reads: pool.clone(),
    });
    let ledger = LedgerConfig {
        cursor_secret: Secret::new("api-test-secret"),
        wait_timeout_ms: wait_ms,
        page_size: 10,
        max_page_size: MAX_PAGE,
        ..LedgerConfig::default()
    };
    let (progress, progress_rx) = watch::channel(0_u64);
    let app = router(
        ApiState::new(
            model,
            &ledger,
            Auth::new(true, &AuthConfig::default().tokens, Scope::LedgerRead),
            progress_rx,
            &prometheus::Registry::new(),
        )
        .expect("the API's metrics"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (
        Server {
            base: format!("http://{addr}"),
        },
        progress,
    )
}

impl Server {
    async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        self.get_with(path, query, None).await
    }

    async fn get_with(
        &self,
        path: &str,
        query: &[(&str, &str)],
        token: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(prism_platform::config::LOCAL_DEV_TOKEN)
            .query(query);
        if let Some(token) = token {
            request = request.header("Consistency-Token", token);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, headers, body)
    }
}

#[track_caller]
fn assert_problem(
    answer: &(u16, reqwest::header::HeaderMap, Value),
    status: u16,
    code: &str,
    field: Option<&str>,
) {
    let (got, headers, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{body}"
    );
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(
        body["type"],
        format!("https://prism.dev/problems/{code}"),
        "{body}"
    );
    if let Some(field) = field {
        assert_eq!(body["field"], field, "{body}");
    }
}

fn versions(body: &Value) -> Vec<u64> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|l| l["version"].as_u64().expect("a version"))
        .collect()
}

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| a["account_id"].as_str().expect("an id").to_owned())
        .collect()
}

#[tokio::test]
async fn the_query_api_reads_the_ledger_model() {
    let cfg = config();
    let admin = up("mysql", clients::mysql(&cfg.mysql).await);
    let database = unique("t_ledger_api");
    up(
        "mysql",
        sqlx::query(&format!(
            "CREATE DATABASE `{database}` CHARACTER SET utf8mb4"
        ))
        .execute(&admin)
        .await,
    );
    let options = up(
        "mysql",
        MySqlConnectOptions::from_str(cfg.mysql.url.expose()),
    )
    .database(&database);
    let pool = up(
        "mysql",
        MySqlPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await,
    );
    // The scenario drops the database itself; this is for when it fails half-way.
    let outcome = AssertUnwindSafe(scenario(&admin, &pool, &database))
        .catch_unwind()
        .await;
    pool.close().await;
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
        .execute(&admin)
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    up("mysql", dropped);
}

async fn scenario(admin: &MySqlPool, pool: &MySqlPool, database: &str) {
    let pool = pool.clone();
    let database = database.to_owned();
    up(
        "mysql",
        sqlx::migrate!("./migrations/model").run(&pool).await,
    );

    // The account with a statement: opened (v1), then 25 deposits (v2..=v26).
    let main = Account {
        id: Uuid::now_v7(),
        country: "DE",
        status: "open",
    };
    insert_account(&pool, &main, 26, 2_500).await;
    insert_lines(&pool, main.id, 25).await;
    // Accounts for listing: 5 open in GB, 2 frozen in GB, 2 open in FR, 1 closed in GB.
    let mut others = Vec::new();
    for (country, status, n) in [
        ("GB", "open", 5),
        ("GB", "frozen", 2),
        ("FR", "open", 2),
        ("GB", "closed", 1),
    ] {
        for _ in 0..n {
            let a = Account {
                id: Uuid::new_v4(),
                country,
                status,
            };
            insert_account(&pool, &a, 1, 0).await;
            others.push(a);
        }
    }
    // sqlx binds a Uuid as its 16 bytes.
    let stored: Vec<u8> = up(
        "mysql",
        sqlx::query_scalar("SELECT account_id FROM accounts WHERE account_id = ?")
            .bind(main.id)
            .fetch_one(&pool)
            .await,
    );
    assert_eq!(stored, main.id.as_bytes());

    let (api, _progress) = serve(&pool, &database, 300).await;
    let account_path = format!("/v1/accounts/{}", main.id);
    let statement_path = format!("{account_path}/statement");

    // ---- the description: open (no token), JSON, every endpoint with its parameters ----
    let response = reqwest::get(format!("{}/openapi.json", api.base))
        .await
        .expect("the API answers");
    assert_eq!(response.status().as_u16(), 200);
    let doc: Value = response.json().await.expect("a JSON description");
    assert_eq!(doc["info"]["title"], "prism-ledger", "{doc}");
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/v1/accounts",
            "/v1/accounts/{id}",
            "/v1/accounts/{id}/statement"
        ]
    );
    let statement_params: Vec<&str> = doc["paths"]["/v1/accounts/{id}/statement"]["get"]
        ["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in ["id", "from", "to", "cursor", "limit", "min_version"] {
        assert!(
            statement_params.contains(&name),
            "{name}: {statement_params:?}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // ---- one account ----
    let (status, _, body) = api.get(&account_path, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["account_id"], main.id.to_string());
    assert_eq!(body["balance_minor"], 2_500);
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["country"], "DE");
    assert_eq!(body["status"], "open");
    assert_eq!(body["daily_withdrawal_limit_minor"], 500_000);
    assert_eq!(body["version"], 26);
    assert_eq!(body["opened_at"], "2024-05-01T00:00:00.000000Z");
    assert_eq!(body["closed_at"], Value::Null);
    // The simple form of the id is an id too.
    let (status, _, _) = api
        .get(&format!("/v1/accounts/{}", main.id.simple()), &[])
        .await;
    assert_eq!(status, 200);

    let unknown = Uuid::now_v7();
    let missing = api.get(&format!("/v1/accounts/{unknown}"), &[]).await;
    assert_problem(&missing, 404, "account_not_found", None);
    let missing = api
        .get(&format!("/v1/accounts/{unknown}/statement"), &[])
        .await;
    assert_problem(&missing, 404, "account_not_found", None);
    let bad = api.get("/v1/accounts/not-a-uuid", &[]).await;
    assert_problem(&bad, 400, "invalid_field", Some("account_id"));
    let bad = api.get(&account_path, &[("expand", "all")]).await;
    assert_problem(&bad, 400, "invalid_field", Some("expand"));
    let bad = api.get(&account_path, &[("min_version", "soon")]).await;
    assert_problem(&bad, 400, "invalid_field", Some("min_version"));
    let bad = api.get_with(&account_path, &[], Some("v1.garbage.3")).await;
    assert_problem(&bad, 400, "invalid_field", Some("Consistency-Token"));
    let foreign = format!("v1.{}.1", others[0].id.simple());
    let bad = api.get_with(&account_path, &[], Some(&foreign)).await;
    assert_problem(&bad, 400, "invalid_field", Some("Consistency-Token"));

    // ---- statement: 3 pages newest first, no duplicates, no gaps ----
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![("limit", "10")];
        if let Some(c) = &cursor {
            query.push(("cursor", c.as_str()));
        }
        let (status, _, body) = api.get(&statement_path, &query).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], 26);
        assert_eq!(body["currency"], "EUR");
        pages += 1;
        let page = versions(&body);
        seen.extend(page);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (2..=26).rev().collect::<Vec<u64>>());
    let (_, _, first) = api.get(&statement_path, &[("limit", "1")]).await;
    let line = &first["items"][0];
    assert_eq!(line["kind"], "deposit");
    assert_eq!(line["amount_minor"], 100);
    assert_eq!(line["balance_after_minor"], 2_500);
    assert_eq!(line["currency"], "EUR");
    assert_eq!(line["occurred_at"], "2024-05-02T01:00:00.000000Z");
    // The default page size.
    let (_, _, default_page) = api.get(&statement_path, &[]).await;
    assert_eq!(versions(&default_page).len(), 10);

    // ---- statement: [from, to) ----
    let from = (base_time() + Days::hours(5)).to_rfc3339();
    let to = (base_time() + Days::hours(9)).to_rfc3339();
    let (status, _, body) = api
        .get(
            &statement_path,
            &[("from", &from), ("to", &to), ("limit", "3")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Lines i = 5..=8 (versions 6..=9), newest first, 3 then 1.
    assert_eq!(versions(&body), [9, 8, 7]);
    let next = body["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (_, _, body2) = api
        .get(
            &statement_path,
            &[
                ("from", &from),
                ("to", &to),
                ("limit", "3"),
                ("cursor", &next),
            ],
        )
        .await;
    assert_eq!(versions(&body2), [6]);
    assert_eq!(body2["next_cursor"], Value::Null);
    // The cursor belongs to its range: with another range it is refused.
    let bad = api
        .get(
            &statement_path,
            &[("from", &from), ("limit", "3"), ("cursor", &next)],
        )
        .await;
    assert_problem(&bad, 400, "invalid_cursor", Some("cursor"));
    // …and to its account.
    let other_statement = format!("/v1/accounts/{}/statement", others[0].id);
    let bad = api
        .get(
            &other_statement,
            &[
                ("from", &from),
                ("to", &to),
                ("limit", "3"),
                ("cursor", &next),
            ],
        )
        .await;
    assert_problem(&bad, 400, "invalid_cursor", Some("cursor"));
    // A tampered cursor.
    let mut tampered = next.clone().into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let bad = api
        .get(
            &statement_path,
            &[
                ("from", &from),
                ("to", &to),
                ("limit", "3"),
                ("cursor", &tampered),
            ],
        )
        .await;
    assert_problem(&bad, 400, "invalid_cursor", Some("cursor"));

    for (query, field) in [
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "101")], "limit"),
        (vec![("limit", "ten")], "limit"),
        (vec![("from", "2024-05-01")], "from"),
        (vec![("to", "yesterday")], "to"),
        (vec![("from", to.as_str()), ("to", from.as_str())], "to"),
        (vec![("from", from.as_str()), ("to", from.as_str())], "to"),
        (vec![("sort", "asc")], "sort"),
    ] {
        let bad = api.get(&statement_path, &query).await;
        assert_problem(&bad, 400, "invalid_field", Some(field));
    }

    // ---- list: filters and paging ----
    let mut gb_open = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("status", "open"), ("country", "GB"), ("limit", "2")];
        if let Some(c) = &cursor {
            query.push(("cursor", c.as_str()));
        }
        let (status, _, body) = api.get("/v1/accounts", &query).await;
        assert_eq!(status, 200, "{body}");
        for item in body["items"].as_array().expect("items") {
            assert_eq!(item["status"], "open");
            assert_eq!(item["country"], "GB");
        }
        gb_open.extend(ids(&body));
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<Uuid> = others
        .iter()
        .filter(|a| a.status == "open" && a.country == "GB")
        .map(|a| a.id)
        .collect();
    expected.sort();
    let expected: Vec<String> = expected.iter().map(Uuid::to_string).collect();
    assert_eq!(gb_open, expected);
    assert_eq!(gb_open.iter().collect::<HashSet<_>>().len(), 5);

    let (_, _, frozen) = api.get("/v1/accounts", &[("status", "frozen")]).await;
    assert_eq!(ids(&frozen).len(), 2);
    assert_eq!(frozen["items"][0]["frozen_reason"], "suspicious activity");
    let (_, _, fr) = api.get("/v1/accounts", &[("country", "FR")]).await;
    assert_eq!(ids(&fr).len(), 2);
    let (_, _, all) = api.get("/v1/accounts", &[("limit", "100")]).await;
    assert_eq!(ids(&all).len(), 11);
    assert_eq!(all["next_cursor"], Value::Null);
    let mut sorted = ids(&all);
    sorted.sort_by_key(|id| Uuid::parse_str(id).expect("uuid"));
    assert_eq!(ids(&all), sorted);

    // A list cursor is bound to its filters.
    let (_, _, page) = api
        .get("/v1/accounts", &[("status", "open"), ("limit", "1")])
        .await;
    let next = page["next_cursor"]
        .as_str()
        .expect("more open accounts")
        .to_owned();
    let bad = api
        .get("/v1/accounts", &[("status", "frozen"), ("cursor", &next)])
        .await;
    assert_problem(&bad, 400, "invalid_cursor", Some("cursor"));
    let bad = api.get("/v1/accounts", &[("cursor", &next)]).await;
    assert_problem(&bad, 400, "invalid_cursor", Some("cursor"));
    for (query, field) in [
        (vec![("status", "active")], "status"),
        (vec![("country", "XX")], "country"),
        (vec![("country", "gbr")], "country"),
        (vec![("limit", "0")], "limit"),
        (vec![("min_version", "3")], "min_version"),
        (vec![("page", "2")], "page"),
    ] {
        let bad = api.get("/v1/accounts", &query).await;
        assert_problem(&bad, 400, "invalid_field", Some(field));
    }
    // A list waits for the token's account (here already there).
    let reached = format!("v1.{}.26", main.id.simple());
    let (status, _, _) = api.get_with("/v1/accounts", &[], Some(&reached)).await;
    assert_eq!(status, 200);

    // ---- read-your-writes: a version that does not come ----
    let started = Instant::now();
    let waiting = api.get(&account_path, &[("min_version", "27")]).await;
    let waited = started.elapsed();
    assert_problem(&waiting, 202, "processing", None);
    assert_eq!(
        waiting.1.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let detail = waiting.2["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("version 26"), "{detail}");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    let ahead = format!("v1.{}.27", main.id.simple());
    let waiting = api.get_with(&statement_path, &[], Some(&ahead)).await;
    assert_problem(&waiting, 202, "processing", None);
    let waiting = api.get_with("/v1/accounts", &[], Some(&ahead)).await;
    assert_problem(&waiting, 202, "processing", None);
    // A version already there answers at once.
    let (status, _, _) = api.get(&account_path, &[("min_version", "26")]).await;
    assert_eq!(status, 200);

    // ---- read-your-writes: the version arrives during the wait ----
    let (patient, progress) = serve(&pool, &database, 5_000).await;
    let writer = {
        let pool = pool.clone();
        let id = main.id;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut tx = up("mysql", pool.begin().await);
            up(
                "mysql",
                sqlx::query(
                    "UPDATE accounts SET version = 27, balance_minor = 2600 WHERE account_id = ?",
                )
                .bind(id)
                .execute(&mut *tx)
                .await,
            );
            up(
                "mysql",
                sqlx::query("UPDATE projector_accounts SET version = 27 WHERE account_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await,
            );
            up("mysql", tx.commit().await);
            progress.send_modify(|n| *n += 1);
            progress
        })
    };
    let started = Instant::now();
    let (status, _, body) = patient.get_with(&account_path, &[], Some(&ahead)).await;
    let waited = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 27);
    assert_eq!(body["balance_minor"], 2_600);
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    let _progress = writer.await.expect("the writer task");

    // ---- the database goes away: 503, not 500 ----
    up(
        "mysql",
        sqlx::query(&format!("DROP DATABASE `{database}`"))
            .execute(admin)
            .await,
    );
    let gone = api.get(&account_path, &[]).await;
    assert_problem(&gone, 503, "unavailable", None);
    assert_eq!(
        gone.1.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
}
