//! prism-command end to end against the real stack: HTTP → aggregate → store → relay → Kafka.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use prism_platform::config::EventStoreBackend;
use prism_tests::up;
use serde_json::json;
use support::{
    assert_per_account_order, clean_up, consume, isolated_config, stored_events, Api, Instance,
};

const BACKENDS: [EventStoreBackend; 2] = [EventStoreBackend::Mongodb, EventStoreBackend::Postgres];

async fn fifty_concurrent_withdrawals(backend: EventStoreBackend) {
    let config = isolated_config(backend);
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let account = api.open("EUR").await;
    assert_eq!(api.deposit(&account, 1_000).await.status, 200);

    let answers = join_all((0..50).map(|i| {
        let api = api.clone();
        let account = account.clone();
        async move {
            api.post(
                &format!("/v1/accounts/{account}/withdrawals"),
                json!({ "amount_minor": 30, "channel": "atm", "description": format!("w{i}") }),
            )
            .await
        }
    }))
    .await;
    let accepted = answers.iter().filter(|a| a.status == 200).count();
    let rejected: Vec<_> = answers.iter().filter(|a| a.status != 200).collect();
    assert_eq!(accepted, 33, "1000 / 30 = 33 withdrawals fit");
    for answer in &rejected {
        assert_eq!(answer.status, 422, "{}", answer.body);
        assert_eq!(answer.body["code"], "insufficient_funds");
    }
    let state = api.get(&format!("/v1/accounts/{account}")).await;
    assert_eq!(state.body["balance_minor"], 10);
    assert_eq!(state.body["version"], 35);

    let stored = stored_events(&config).await;
    let events: Vec<_> = stored.values().flatten().collect();
    let withdrawals = events
        .iter()
        .filter(|e| e.event_type() == "prism.account.money_withdrawn")
        .count();
    assert_eq!(withdrawals, 33, "every accepted withdrawal is stored once");
    let versions: Vec<u64> = events.iter().map(|e| e.account_version).collect();
    assert_eq!(versions, (1..=35).collect::<Vec<_>>());

    instance.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_withdrawals_never_overdraw_on_mongodb() {
    fifty_concurrent_withdrawals(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_withdrawals_never_overdraw_on_postgres() {
    fifty_concurrent_withdrawals(EventStoreBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_retry_answers_the_same_and_stores_nothing_new() {
    for backend in BACKENDS {
        let config = isolated_config(backend);
        let instance = Instance::start(&config).await;
        let api = Api::new(&instance.url);

        let open = json!({ "holder_name": "Bo", "email": "bo@example.org", "country": "SE", "currency": "SEK" });
        let first = api
            .post_with_key("/v1/accounts", "open-1", open.clone())
            .await;
        let again = api.post_with_key("/v1/accounts", "open-1", open).await;
        assert_eq!(first.status, 201, "{}", first.body);
        assert_eq!(again.status, 201, "{}", again.body);
        assert_eq!(first.body, again.body, "the retry gets the original answer");
        assert_eq!(
            again
                .headers
                .get("idempotent-replayed")
                .and_then(|v| v.to_str().ok()),
            Some("true")
        );
        let account = first.body["account_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();

        let path = format!("/v1/accounts/{account}/deposits");
        let d1 = api
            .post_with_key(&path, "dep-1", json!({ "amount_minor": 700 }))
            .await;
        let d2 = api
            .post_with_key(&path, "dep-1", json!({ "amount_minor": 700 }))
            .await;
        assert_eq!((d1.status, d2.status), (200, 200));
        assert_eq!(d1.body["event_ids"], d2.body["event_ids"]);

        let other = api
            .post_with_key(&path, "dep-1", json!({ "amount_minor": 701 }))
            .await;
        assert_eq!(other.status, 422, "{}", other.body);
        assert_eq!(other.body["code"], "idempotency_key_reused");

        // A rejection is answered the same way, even after the account could take it.
        let wpath = format!("/v1/accounts/{account}/withdrawals");
        let w = json!({ "amount_minor": 1_000, "channel": "online" });
        let r1 = api.post_with_key(&wpath, "wd-1", w.clone()).await;
        assert_eq!(r1.status, 422, "{}", r1.body);
        assert_eq!(api.deposit(&account, 5_000).await.status, 200);
        let r2 = api.post_with_key(&wpath, "wd-1", w).await;
        assert_eq!(r2.status, 422, "{}", r2.body);
        assert_eq!(r2.body["code"], "insufficient_funds");

        let stored = stored_events(&config).await;
        let types: Vec<&str> = stored.values().flatten().map(|e| e.event_type()).collect();
        assert_eq!(
            types,
            [
                "prism.account.opened",
                "prism.account.money_deposited",
                "prism.account.money_deposited"
            ],
            "{backend:?}"
        );
        instance.stop().await;
        clean_up(&config).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_problem_document_and_stores_nothing() {
    let config = isolated_config(EventStoreBackend::Mongodb);
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let account = api.open("EUR").await;
    assert_eq!(api.deposit(&account, 100).await.status, 200);
    let deposits = format!("{}/v1/accounts/{account}/deposits", instance.url);
    let payments = format!("/v1/accounts/{account}/payments");

    let raw = |body: &'static str| {
        api.http
            .post(&deposits)
            .bearer_auth(support::TOKEN)
            .header("content-type", "application/json")
            .body(body)
    };
    let huge = format!(
        "{{\"amount_minor\": 1, \"description\": \"{}\"}}",
        "x".repeat(20_000)
    );
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, Option<&str>)> = vec![
        ("malformed json", raw("{\"amount_minor\": "), 400, None),
        ("trailing garbage", raw("{\"amount_minor\": 5} x"), 400, None),
        ("wrong type", raw("{\"amount_minor\": \"5\"}"), 400, Some("amount_minor")),
        ("float amount", raw("{\"amount_minor\": 5.5}"), 400, Some("amount_minor")),
        ("unknown field", raw("{\"amount_minor\": 5, \"currency\": \"EUR\"}"), 400, Some("currency")),
        ("missing field", raw("{}"), 400, Some("amount_minor")),
        ("negative amount", raw("{\"amount_minor\": -5}"), 400, Some("amount_minor")),
        ("zero amount", raw("{\"amount_minor\": 0}"), 400, Some("amount_minor")),
        ("i64 overflow", raw("{\"amount_minor\": 100000000000000000000}"), 400, Some("amount_minor")),
        ("over the sane bound", raw("{\"amount_minor\": 1000000000001}"), 400, Some("amount_minor")),
        (
            "huge body",
            api.http
                .post(&deposits)
                .bearer_auth(support::TOKEN)
                .header("content-type", "application/json")
                .body(huge),
            413,
            None,
        ),
        (
            "not json",
            api.http.post(&deposits).bearer_auth(support::TOKEN).header("content-type", "text/plain").body("amount=5"),
            415,
            None,
        ),
        ("no token", api.http.post(&deposits).json(&json!({ "amount_minor": 5 })), 401, None),
        (
            "wrong token",
            api.http.post(&deposits).bearer_auth("nope").json(&json!({ "amount_minor": 5 })),
            401,
            None,
        ),
        (
            "token without the commands scope",
            api.http.post(&deposits).bearer_auth(support::READER_TOKEN).json(&json!({ "amount_minor": 5 })),
            403,
            None,
        ),
        (
            "unknown account",
            api.http
                .post(format!("{}/v1/accounts/0190b8f2-c3a4-7e3c-8a6b-4d5e6f708192/deposits", instance.url))
                .bearer_auth(support::TOKEN)
                .json(&json!({ "amount_minor": 5 })),
            404,
            None,
        ),
        (
            "malformed account id",
            api.http
                .post(format!("{}/v1/accounts/not-a-uuid/deposits", instance.url))
                .bearer_auth(support::TOKEN)
                .json(&json!({ "amount_minor": 5 })),
            400,
            Some("account_id"),
        ),
        (
            "an account id that is not UTF-8 once decoded",
            api.http
                .get(format!("{}/v1/accounts/%FF%FE", instance.url))
                .bearer_auth(support::TOKEN),
            400,
            Some("account_id"),
        ),
        (
            "bad merchant category",
            api.http.post(format!("{}{payments}", instance.url)).bearer_auth(support::TOKEN).json(&json!({
                "amount_minor": 5, "merchant_name": "M", "merchant_category": "58x4",
                "merchant_country": "DE", "channel": "pos" })),
            400,
            Some("merchant_category"),
        ),
        (
            "unknown country",
            api.http.post(format!("{}{payments}", instance.url)).bearer_auth(support::TOKEN).json(&json!({
                "amount_minor": 5, "merchant_name": "M", "merchant_category": "5814",
                "merchant_country": "XX", "channel": "pos" })),
            400,
            Some("merchant_country"),
        ),
        (
            "bad channel",
            api.http.post(format!("{}{payments}", instance.url)).bearer_auth(support::TOKEN).json(&json!({
                "amount_minor": 5, "merchant_name": "M", "merchant_category": "5814",
                "merchant_country": "DE", "channel": "atm" })),
            400,
            Some("channel"),
        ),
        (
            "bad currency on open",
            api.http.post(format!("{}/v1/accounts", instance.url)).bearer_auth(support::TOKEN).json(&json!({
                "holder_name": "A", "email": "a@example.org", "country": "DE", "currency": "EURO" })),
            400,
            Some("currency"),
        ),
        (
            "bad email on open",
            api.http.post(format!("{}/v1/accounts", instance.url)).bearer_auth(support::TOKEN).json(&json!({
                "holder_name": "A", "email": "not-an-email", "country": "DE", "currency": "EUR" })),
            400,
            Some("email"),
        ),
        (
            "rule violation",
            api.http
                .post(format!("{}/v1/accounts/{account}/close", instance.url))
                .bearer_auth(support::TOKEN)
                .json(&json!({})),
            422,
            None,
        ),
    ];
    for (name, request, status, field) in cases {
        let answer = api.send(request).await;
        assert_eq!(answer.status, status, "{name}: {}", answer.body);
        assert_eq!(answer.content_type, "application/problem+json", "{name}");
        assert_eq!(answer.body["status"], status, "{name}: {}", answer.body);
        assert!(
            answer.body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("https://")),
            "{name}"
        );
        if let Some(field) = field {
            assert_eq!(answer.body["field"], field, "{name}: {}", answer.body);
        }
    }

    let stored = stored_events(&config).await;
    assert_eq!(
        stored.values().flatten().count(),
        2,
        "only the open and the first deposit are stored"
    );
    instance.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_approved_or_declined_and_both_are_stored() {
    let config = isolated_config(EventStoreBackend::Mongodb);
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let account = api.open("EUR").await;
    assert_eq!(api.deposit(&account, 1_000).await.status, 200);
    let pay = |amount: i64| {
        let api = api.clone();
        let account = account.clone();
        async move {
            api.post(
                &format!("/v1/accounts/{account}/payments"),
                json!({ "amount_minor": amount, "merchant_name": "Café Rosa", "merchant_category": "5814",
                        "merchant_country": "PT", "channel": "pos" }),
            )
            .await
        }
    };
    let approved = pay(600).await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.body["decision"], "approved");
    let declined = pay(600).await;
    assert_eq!(declined.status, 200, "{}", declined.body);
    assert_eq!(declined.body["decision"], "declined");
    assert_eq!(declined.body["decline_reason"], "insufficient_funds");
    assert_eq!(declined.body["version"], 4);

    let state = api.get(&format!("/v1/accounts/{account}")).await;
    assert_eq!(state.body["balance_minor"], 400);
    assert_eq!(state.body["status"], "open");
    instance.stop().await;
    clean_up(&config).await;
}

/// A fraud report names one of the account's card payments, approved or declined: once
/// (409 after), never a deposit, a stranger's payment or an unknown id (404), with a reason
/// (400), also after the account was closed; the answer is a command's answer (201, the next
/// version, the event id, the consistency token); a keyed retry gets the same answer,
/// rejections included; the label is stored as an event, the refusals store nothing.
async fn fraud_reports(backend: EventStoreBackend) {
    let config = isolated_config(backend);
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let account = api.open("EUR").await;
    let event_id = |answer: &support::Answer| {
        answer.body["event_ids"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let deposit = api.deposit(&account, 1_000).await;
    assert_eq!(deposit.status, 200, "{}", deposit.body);
    let deposit_id = event_id(&deposit);
    let pay = |amount: i64| {
        let api = api.clone();
        let account = account.clone();
        async move {
            api.post(
                &format!("/v1/accounts/{account}/payments"),
                json!({ "amount_minor": amount, "merchant_name": "Café Rosa", "merchant_category": "5814",
                        "merchant_country": "PT", "channel": "online" }),
            )
            .await
        }
    };
    let paid = pay(1_000).await;
    assert_eq!(
        (paid.status, &paid.body["decision"]),
        (200, &json!("approved")),
        "{}",
        paid.body
    );
    let payment = event_id(&paid);
    let declined = pay(500).await;
    assert_eq!(
        (declined.status, &declined.body["decision"]),
        (200, &json!("declined")),
        "{}",
        declined.body
    );
    assert_eq!(declined.body["version"], 4);
    let declined_payment = event_id(&declined);
    let other = api.open("EUR").await;
    let path = |account: &str, event: &str| {
        format!("/v1/accounts/{account}/payments/{event}/fraud-reports")
    };
    let report = |account: &str, event: &str, reason: &str| {
        let api = api.clone();
        let path = path(account, event);
        let body = json!({ "reason": reason });
        async move { api.post(&path, body).await }
    };
    let report_with_key = |account: &str, event: &str, key: &'static str| {
        let api = api.clone();
        let path = path(account, event);
        async move {
            api.post_with_key(&path, key, json!({ "reason": "Not me" }))
                .await
        }
    };

    // Malformed input: 400 naming the field, as every command answers.
    let bad_input = [
        (
            "blank reason",
            path(&account, &payment),
            json!({ "reason": "  " }),
            "reason",
        ),
        ("no reason", path(&account, &payment), json!({}), "reason"),
        (
            "long reason",
            path(&account, &payment),
            json!({ "reason": "x".repeat(501) }),
            "reason",
        ),
        (
            "reason not a string",
            path(&account, &payment),
            json!({ "reason": 5 }),
            "reason",
        ),
        (
            "unknown field",
            path(&account, &payment),
            json!({ "reason": "x", "amount_minor": 5 }),
            "amount_minor",
        ),
        (
            "malformed event id",
            path(&account, "nope"),
            json!({ "reason": "x" }),
            "event_id",
        ),
        (
            "malformed account id",
            path("nope", &payment),
            json!({ "reason": "x" }),
            "account_id",
        ),
    ];
    for (name, path, body, field) in bad_input {
        let answer = api.post(&path, body).await;
        assert_eq!(answer.status, 400, "{name}: {}", answer.body);
        assert_eq!(answer.content_type, "application/problem+json", "{name}");
        assert_eq!(answer.body["field"], field, "{name}: {}", answer.body);
    }

    // Not a card payment of this account: 404 payment_not_found.
    let random = "0190b8f2-c3a4-7e3c-8a6b-4d5e6f708192";
    for (name, account, event) in [
        ("a deposit", &account, deposit_id.as_str()),
        ("an unknown id", &account, random),
        ("a stranger's payment", &other, payment.as_str()),
    ] {
        let answer = report(account, event, "x").await;
        assert_eq!(answer.status, 404, "{name}: {}", answer.body);
        assert_eq!(answer.content_type, "application/problem+json", "{name}");
        assert_eq!(answer.body["code"], "payment_not_found", "{name}");
    }
    let unknown_account = report(random, &payment, "x").await;
    assert_eq!(unknown_account.status, 404, "{}", unknown_account.body);
    assert_eq!(unknown_account.body["code"], "account_not_found");

    // The declined payment, reported while the account is open: the next version.
    let first = report(&account, &declined_payment, "  Card testing  ").await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["version"], 5);
    assert_eq!(first.body["account_id"], json!(account));
    assert_eq!(
        first.body["consistency_token"],
        json!(format!("v1.{}.5", account.replace('-', "")))
    );
    assert_eq!(
        first.body["event_ids"].as_array().map(Vec::len),
        Some(1),
        "{}",
        first.body
    );
    assert!(first.body.get("decision").is_none(), "{}", first.body);
    assert_eq!(
        first
            .headers
            .get("consistency-token")
            .and_then(|v| v.to_str().ok()),
        Some(format!("v1.{}.5", account.replace('-', "")).as_str())
    );
    assert!(
        first.headers.get("location").is_none(),
        "a report creates no resource to point at"
    );
    let again = report(&account, &declined_payment, "Card testing").await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.body["code"], "payment_already_reported");
    assert_eq!(again.content_type, "application/problem+json");

    // The account pays nothing more and closes (zero balance); the chargeback comes after.
    let closed = api
        .post(&format!("/v1/accounts/{account}/close"), json!({}))
        .await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    assert_eq!(closed.body["version"], 6);
    let after_closure = report_with_key(&account, &payment, "report-1").await;
    assert_eq!(after_closure.status, 201, "{}", after_closure.body);
    assert_eq!(after_closure.body["version"], 7);
    // A retry with the same key, the payment's id spelled in capitals: the same answer.
    let retried = report_with_key(&account, &payment.to_uppercase(), "report-1").await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    assert_eq!(retried.body, after_closure.body);
    assert_eq!(
        retried
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    // Keyed rejections keep their status when replayed from the stored answer.
    for (key, event, status, code) in [
        (
            "report-2",
            payment.as_str(),
            409,
            "payment_already_reported",
        ),
        ("report-3", deposit_id.as_str(), 404, "payment_not_found"),
    ] {
        for attempt in ["first", "retry"] {
            let answer = report_with_key(&account, event, key).await;
            assert_eq!(answer.status, status, "{key} {attempt}: {}", answer.body);
            assert_eq!(answer.body["code"], code, "{key} {attempt}");
        }
    }
    // What a replay answers from: the stored answer carries the live status.
    let store = up("event store", prism_command::app::open_store(&config).await);
    for (key, status) in [("report-2", 409), ("report-3", 404)] {
        let stored = up("event store", store.find_response(&scoped_key(key)).await);
        assert_eq!(stored.map(|r| r.status), Some(status), "{key}");
    }
    let deposit_after_closure = api.deposit(&account, 1).await;
    assert_eq!(deposit_after_closure.status, 422);
    assert_eq!(deposit_after_closure.body["code"], "account_closed");

    let state = api.get(&format!("/v1/accounts/{account}")).await;
    assert_eq!(state.body["status"], "closed", "{}", state.body);
    assert_eq!(state.body["version"], 7);
    assert_eq!(state.body["balance_minor"], 0);

    let stored = stored_events(&config).await;
    let reports: Vec<_> = stored
        .values()
        .flatten()
        .filter(|e| e.event_type() == "prism.account.payment_reported_fraudulent")
        .collect();
    assert_eq!(
        reports.len(),
        2,
        "two reports stored, nothing for the refusals"
    );
    assert_eq!(
        reports[0].event.data(),
        json!({ "payment_event_id": declined_payment, "reason": "Card testing" }),
        "the label names the payment, the reason trimmed"
    );
    assert_eq!(reports[0].account_version, 5);
    assert_eq!(reports[1].event.data()["payment_event_id"], json!(payment));
    assert_eq!(reports[1].account_version, 7);
    assert_eq!(
        stored.values().flatten().count(),
        8,
        "7 events of the account, 1 of the other"
    );
    instance.stop().await;
    clean_up(&config).await;
}

/// An idempotency key as the store holds it: scoped by the caller identity of the test's
/// token (the first 8 bytes of its SHA-256, in hex).
fn scoped_key(key: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(support::TOKEN.as_bytes());
    format!("{}:{key}", hex::encode(&digest[..8]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_reports_name_a_card_payment_once_on_mongodb() {
    fraud_reports(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_reports_name_a_card_payment_once_on_postgres() {
    fraud_reports(EventStoreBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_kafka_in_order_per_account() {
    for backend in BACKENDS {
        let config = isolated_config(backend);
        let instance = Instance::start(&config).await;
        let api = Api::new(&instance.url);
        let mut accounts = Vec::new();
        for _ in 0..5 {
            accounts.push(api.open("USD").await);
        }
        join_all(accounts.iter().map(|account| {
            let api = api.clone();
            async move {
                for _ in 0..8 {
                    assert_eq!(api.deposit(account, 10).await.status, 200);
                }
            }
        }))
        .await;
        let expected: BTreeMap<String, u64> = accounts.iter().map(|a| (a.clone(), 9)).collect();
        let records = consume(&config, &expected, Duration::from_secs(30));
        assert_per_account_order(&records, &expected);
        instance.stop().await;
        clean_up(&config).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_while_no_relay_runs_are_published_when_one_starts() {
    let mut config = isolated_config(EventStoreBackend::Mongodb);
    // The crash window between the store write and the publish, held open: a service
    // without a relay stores events and publishes none.
    config.relay.enabled = false;
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let a = api.open("GBP").await;
    let b = api.open("GBP").await;
    for _ in 0..4 {
        assert_eq!(api.deposit(&a, 5).await.status, 200);
        assert_eq!(api.deposit(&b, 7).await.status, 200);
    }
    instance.stop().await;

    // The relay creates the topic when it starts; until then nothing was published.
    config.relay.enabled = true;
    let instance = Instance::start(&config).await;
    let expected: BTreeMap<String, u64> = [(a.clone(), 5), (b.clone(), 5)].into();
    let records = consume(&config, &expected, Duration::from_secs(30));
    assert_per_account_order(&records, &expected);
    instance.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_the_same_accounts_keep_per_account_order_on_kafka() {
    let config = isolated_config(EventStoreBackend::Mongodb);
    let one = Instance::start(&config).await;
    let two = Instance::start(&config).await;
    let apis = [Api::new(&one.url), Api::new(&two.url)];
    let mut accounts = Vec::new();
    for i in 0..4 {
        accounts.push(apis[i % 2].open("CHF").await);
    }
    // Both instances hammer every account at once: versions conflict across instances and
    // are retried; every command must still land, in order.
    let results = join_all(accounts.iter().flat_map(|account| {
        apis.iter().map(move |api| {
            let api = api.clone();
            let account = account.clone();
            async move {
                let mut ok = 0;
                for _ in 0..6 {
                    let answer = api.deposit(&account, 1).await;
                    assert!(
                        answer.status == 200 || answer.status == 409,
                        "{}",
                        answer.body
                    );
                    ok += usize::from(answer.status == 200);
                }
                (account, ok)
            }
        })
    }))
    .await;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (account, ok) in results {
        *expected.entry(account).or_insert(1) += ok as u64;
    }
    let stored = stored_events(&config).await;
    for (account, envelopes) in &stored {
        assert_eq!(
            Some(&(envelopes.len() as u64)),
            expected.get(&account.to_string()),
            "stored versions of {account}"
        );
    }
    let records = consume(&config, &expected, Duration::from_secs(30));
    assert_per_account_order(&records, &expected);
    one.stop().await;
    two.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_describes_itself_and_reports_health() {
    let config = isolated_config(EventStoreBackend::Mongodb);
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let openapi = api.get("/openapi.json").await;
    assert_eq!(openapi.status, 200);
    assert!(openapi.body["paths"]["/v1/accounts/{id}/payments"]["post"].is_object());
    let report =
        &openapi.body["paths"]["/v1/accounts/{id}/payments/{event_id}/fraud-reports"]["post"];
    assert!(report["responses"]["201"].is_object(), "{report}");
    assert_eq!(
        report["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/FraudReportRequest"
    );
    assert_eq!(
        openapi.body["components"]["schemas"]["FraudReportRequest"]["required"],
        json!(["reason"])
    );
    assert_eq!(api.get("/healthz").await.status, 200);
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let account = api.open("JPY").await;
    assert_eq!(api.deposit(&account, 5).await.status, 200);
    let metrics = api
        .http
        .get(format!("{}/metrics", instance.url))
        .send()
        .await;
    let text = match metrics {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => panic!("metrics: {e}"),
    };
    assert!(
        text.contains(
            "prism_command_duration_seconds_count{command=\"deposit\",outcome=\"accepted\"} 1"
        ),
        "{text}"
    );
    assert_eq!(api.get("/nope").await.status, 404);
    instance.stop().await;
    clean_up(&config).await;
}

/// `GET /v1/admin/status` needs the admin scope (401 without a token, 403 with the
/// commands token, problem+json both) and shows the instance, its event store and its
/// relay, which has published the command sent before; the admin token is no commands
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_status_needs_the_admin_scope_and_shows_the_store_and_the_relay() {
    let config = isolated_config(EventStoreBackend::Postgres);
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let status_url = format!("{}/v1/admin/status", instance.url);

    let anonymous = api.send(api.http.get(&status_url)).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.content_type, "application/problem+json");
    assert_eq!(anonymous.body["code"], "unauthorized", "{}", anonymous.body);
    let commands_only = api.get("/v1/admin/status").await;
    assert_eq!(commands_only.status, 403, "{}", commands_only.body);
    assert_eq!(commands_only.content_type, "application/problem+json");
    assert!(
        commands_only.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("admin")),
        "the refusal names the scope: {}",
        commands_only.body
    );
    let admin_on_commands = api
        .send(
            api.http
                .post(format!("{}/v1/accounts", instance.url))
                .bearer_auth(support::ADMIN_TOKEN)
                .json(&json!({ "holder_name": "Op", "email": "op@example.org",
                               "country": "DE", "currency": "EUR" })),
        )
        .await;
    assert_eq!(admin_on_commands.status, 403, "admin is not commands");

    let account = api.open("EUR").await;
    let admin = || api.send(api.http.get(&status_url).bearer_auth(support::ADMIN_TOKEN));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let answer = admin().await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.content_type, "application/json");
        if answer.body["relay"]["published_events"].as_u64() >= Some(1) {
            break answer.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not publish {account}'s opening within 30 s: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let members = |value: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    };
    assert_eq!(
        members(&status),
        [
            "checked_at",
            "event_store",
            "instance",
            "ready",
            "reasons",
            "relay",
            "service",
            "version"
        ],
        "{status}"
    );
    assert_eq!(status["service"], "prism-command");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        status["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("prism-command/")),
        "{status}"
    );
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["reasons"], json!([]));
    assert_eq!(
        status["event_store"],
        json!({ "backend": "postgres", "answering": true, "problem": null })
    );
    let relay = &status["relay"];
    assert_eq!(
        members(relay),
        [
            "backlog_age_seconds",
            "backlog_at_least",
            "backlog_events",
            "enabled",
            "kafka_available",
            "last_published_at",
            "oldest_unpublished_at",
            "problem",
            "published_events",
            "state",
            "topic"
        ],
        "{relay}"
    );
    assert_eq!(relay["enabled"], true);
    assert_eq!(relay["topic"], config.kafka.topic.as_str());
    assert_eq!(relay["state"], "publishing", "{relay}");
    assert_eq!(relay["kafka_available"], true, "{relay}");
    assert!(relay["last_published_at"].is_string(), "{relay}");

    instance.stop().await;
    clean_up(&config).await;
}

/// The correlation id of a command comes back in the answer's `X-Correlation-Id` and is
/// the one its events carry: the caller's, or one made up for a request without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_names_the_correlation_id_the_events_carry() {
    let config = isolated_config(EventStoreBackend::Postgres);
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let correlation = |answer: &support::Answer| -> String {
        answer
            .headers
            .get("x-correlation-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let account = api.open("EUR").await;
    let made_up = api.deposit(&account, 100).await;
    assert_eq!(made_up.status, 200, "{}", made_up.body);
    let made_up_id = correlation(&made_up);
    assert!(!made_up_id.is_empty(), "an id is made up and answered");
    let given = api
        .send(
            api.http
                .post(format!("{}/v1/accounts/{account}/deposits", instance.url))
                .bearer_auth(support::TOKEN)
                .header("x-correlation-id", "trail-of-this-test")
                .json(&json!({ "amount_minor": 5 })),
        )
        .await;
    assert_eq!(given.status, 200, "{}", given.body);
    assert_eq!(correlation(&given), "trail-of-this-test");
    let bad = api
        .send(
            api.http
                .post(format!("{}/v1/accounts/{account}/deposits", instance.url))
                .bearer_auth(support::TOKEN)
                .header("x-correlation-id", "two words")
                .json(&json!({ "amount_minor": 5 })),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["field"], "X-Correlation-Id");
    assert_eq!(correlation(&bad), "", "an invalid id is not echoed");

    let stored = stored_events(&config).await;
    let carried: Vec<Option<String>> = stored
        .values()
        .flatten()
        .skip(1)
        .map(|e| e.correlation_id.clone())
        .collect();
    assert_eq!(
        carried,
        [Some(made_up_id), Some("trail-of-this-test".to_owned())]
    );
    instance.stop().await;
    clean_up(&config).await;
}
