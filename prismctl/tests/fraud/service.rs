//! The fraud model's guarantees under kills, its API, and the training set.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prism_fraud::offline::{OfflineStore, Table};
use prism_tests::up;
use serde_json::{json, Value};

use crate::e2e::{self, TOKEN};
use crate::harness::{assert_identical, isolated, verify};
use crate::projector::{load_with_kills, stack, Load, RedisBack};

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = up(
        "a service",
        http.post(url).bearer_auth(TOKEN).json(body).send().await,
    );
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A seeded load while `prism-fraud` is killed (SIGKILL) twice, mid-batch, and started
/// again: the online state and every offline row end equal to the plain re-implementation
/// of the features over the whole event store, and the offline store holds one row per
/// card payment and withdrawal (duplicates only as identical copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fraud_model_survives_kills_mid_load_and_verifies_clean() {
    let _one = crate::harness::ONE_AT_A_TIME.lock().await;
    isolated(3, |env| async move {
        let (command, mut fraud) = env.started().await;
        let total = load_with_kills(&command.url, (23, 40, 1_500), &mut fraud, &[400, 900]).await;
        fraud.wait_ready(Duration::from_secs(60)).await;
        let report = verify(&env.config, Duration::from_secs(90)).await;
        assert_identical(&report, 40);
        assert_eq!(report.events, total, "every stored command is one event");
        let rows = report.documents_expected.saturating_sub(40);
        assert!(
            rows > 300,
            "{rows} feature rows: the load pays and withdraws"
        );
        command.stop().await;
    })
    .await;
}

/// The API: an account's features now, a candidate's vector (read-your-writes through the
/// consistency token), and every refusal as a problem naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_scores_a_candidate_and_refuses_bad_input() {
    let _one = crate::harness::ONE_AT_A_TIME.lock().await;
    isolated(1, |env| async move {
        let (command, fraud) = env.started().await;
        let http = reqwest::Client::new();
        let (status, opened) = post(
            &http,
            &format!("{}/v1/accounts", command.url),
            &json!({"holder_name": "Ada", "email": "ada@example.org",
                    "country": "DE", "currency": "EUR"}),
        )
        .await;
        assert_eq!(status, 201, "{opened}");
        let account = opened["account_id"].as_str().unwrap_or_default().to_owned();
        post(
            &http,
            &format!("{}/v1/accounts/{account}/deposits", command.url),
            &json!({"amount_minor": 100_000}),
        )
        .await;
        let (_, paid) = post(
            &http,
            &format!("{}/v1/accounts/{account}/payments", command.url),
            &json!({"amount_minor": 2_500, "merchant_name": "Café Rosa",
                    "merchant_category": "5814", "merchant_country": "PT", "channel": "pos"}),
        )
        .await;
        let token = paid["consistency_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!token.is_empty(), "{paid}");

        // Read-your-writes: the payment is in the state the candidate is scored on.
        let score_url = format!("{}/v1/features/{account}/score", fraud.url);
        let response = up(
            "prism-fraud",
            http.post(&score_url)
                .bearer_auth(TOKEN)
                .header("Consistency-Token", &token)
                .json(&json!({"amount_minor": 400, "merchant_name": "Café Rosa",
                              "merchant_category": "5814", "merchant_country": "PT",
                              "channel": "online"}))
                .send()
                .await,
        );
        assert_eq!(response.status().as_u16(), 200);
        let scored: Value = up("the score", response.json().await);
        assert_eq!(scored["version"], 3, "{scored}");
        assert_eq!(scored["feature_set_version"], "fraud-v1");
        let f = &scored["features"];
        assert_eq!(f["card_payments_count_24h"], 1, "{f}");
        assert_eq!(f["card_payments_sum_24h"], 2_500);
        assert_eq!(f["first_time_at_merchant"], false, "paid there before");
        assert_eq!(
            f["merchant_country_differs"], true,
            "PT merchant, DE account"
        );
        assert_eq!(f["is_online"], true);
        assert_eq!(f["amount_mean"], 2_500.0);
        assert!(
            f["amount_zscore"].is_null(),
            "one earlier amount: no spread"
        );
        assert_eq!(f["amount_to_balance"], 400.0 / 97_500.0);

        let (status, _, body) = fraud.get(&format!("/v1/features/{account}")).await;
        assert_eq!(status, 200, "{body}");
        let now: Value = up("the features", serde_json::from_str(&body));
        assert_eq!(now["features"]["card_payments_count_7d"], 1, "{now}");
        assert!(
            now["features"].get("amount_minor").is_none(),
            "no payment of its own"
        );
        assert!(now["features"]["local_hour"]
            .as_u64()
            .is_some_and(|h| h < 24));

        // Refusals: problem+json naming the field.
        for (body, field) in [
            (
                json!({"amount_minor": 0, "merchant_name": "A", "merchant_category": "5814",
                    "merchant_country": "PT", "channel": "pos"}),
                "amount_minor",
            ),
            (
                json!({"amount_minor": 1, "merchant_name": " ", "merchant_category": "5814",
                    "merchant_country": "PT", "channel": "pos"}),
                "merchant_name",
            ),
            (
                json!({"amount_minor": 1, "merchant_name": "A", "merchant_category": "58",
                    "merchant_country": "PT", "channel": "pos"}),
                "merchant_category",
            ),
            (
                json!({"amount_minor": 1, "merchant_name": "A", "merchant_category": "5814",
                    "merchant_country": "XX", "channel": "pos"}),
                "merchant_country",
            ),
            (
                json!({"amount_minor": 1, "merchant_name": "A", "merchant_category": "5814",
                    "merchant_country": "PT", "channel": "atm"}),
                "channel",
            ),
            (
                json!({"amount_minor": 1, "merchant_name": "A", "merchant_category": "5814",
                    "merchant_country": "PT", "channel": "pos", "time": "yesterday"}),
                "time",
            ),
            (
                json!({"amount_minor": 1, "merchant_name": "A", "merchant_category": "5814",
                    "merchant_country": "PT", "channel": "pos", "tip": 1}),
                "tip",
            ),
            (
                json!({"merchant_name": "A", "merchant_category": "5814",
                    "merchant_country": "PT", "channel": "pos"}),
                "amount_minor",
            ),
        ] {
            let response = up(
                "prism-fraud",
                http.post(&score_url)
                    .bearer_auth(TOKEN)
                    .json(&body)
                    .send()
                    .await,
            );
            assert_eq!(response.status().as_u16(), 400, "{body}");
            assert_eq!(
                response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some("application/problem+json")
            );
            let problem: Value = up("the problem", response.json().await);
            assert_eq!(problem["field"], field, "{problem}");
        }
        let (status, _, body) = fraud.get("/v1/features/not-a-uuid").await;
        assert_eq!(status, 400, "{body}");
        let (status, _, body) = fraud
            .get(&format!("/v1/features/{}", uuid::Uuid::new_v4()))
            .await;
        assert_eq!(status, 404, "{body}");
        let (status, _, body) = fraud
            .get(&format!("/v1/features/{account}?colour=red"))
            .await;
        assert_eq!(status, 400, "{body}");
        let anonymous = up(
            "prism-fraud",
            http.get(format!("{}/v1/features/{account}", fraud.url))
                .send()
                .await,
        );
        assert_eq!(anonymous.status().as_u16(), 401);
        let ledger_only = up(
            "prism-fraud",
            http.get(format!("{}/v1/features/{account}", fraud.url))
                .bearer_auth(crate::projector::LEDGER_ONLY_TOKEN)
                .send()
                .await,
        );
        assert_eq!(
            ledger_only.status().as_u16(),
            403,
            "a token without fraud:read"
        );
        command.stop().await;
    })
    .await;
}

/// The offline store's files after a load: complete Parquet files only, one row per card
/// payment and withdrawal, and a crash's temporary file is never listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_offline_store_holds_complete_files_only() {
    let _one = crate::harness::ONE_AT_A_TIME.lock().await;
    isolated(2, |env| async move {
        let (command, _fraud) = env.started().await;
        let stored = Arc::new(AtomicU64::new(0));
        up(
            "the load",
            tokio::spawn(e2e::seeded_load(
                command.url.clone(),
                5,
                20,
                600,
                8,
                Arc::clone(&stored),
            ))
            .await,
        );
        let report = verify(&env.config, Duration::from_secs(60)).await;
        assert_identical(&report, 20);
        let copies = up(
            "redis",
            prism_fraud::copies::connect(&env.config.redis, &env.fraud()).await,
        );
        let live = up(
            "redis",
            prism_projector::copies::Copies::live(&copies).await,
        );
        let store: OfflineStore = live.offline.clone();
        let files = up("the offline store", store.files(Table::Rows));
        assert!(!files.is_empty());
        for file in &files {
            up("a complete file", prism_fraud::offline::read_file(file));
        }
        // A crash between writing and renaming leaves a hidden temporary file: never listed.
        let dir = files[0]
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        up(
            "a torn file",
            std::fs::write(dir.join(".torn.parquet.tmp"), b"PAR1 torn"),
        );
        assert_eq!(up("the offline store", store.files(Table::Rows)), files);
        let report = verify(&env.config, Duration::from_secs(10)).await;
        assert!(report.ok, "a torn temporary file changes nothing");
        command.stop().await;
    })
    .await;
}

/// Redis stopped for a few seconds under load and started again: the projector retries
/// (nothing skipped, nothing written twice), and the online state and every offline row
/// end equal to the plain re-implementation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fraud_model_converges_after_redis_restarts_mid_stream() {
    let _one = crate::harness::ONE_AT_A_TIME.lock().await;
    isolated(2, |env| async move {
        let (command, fraud) = env.started().await;
        let load = Load::start(&command.url, (31, 30, 1_200));
        load.until(300).await;
        let mut back = RedisBack(true);
        stack(&["down", "redis"]);
        tokio::time::sleep(Duration::from_secs(4)).await;
        stack(&["up", "redis"]);
        back.0 = false;
        let total = load.finish().await;
        let report = verify(&env.config, Duration::from_secs(90)).await;
        assert_identical(&report, 30);
        assert_eq!(report.events, total, "every stored command is one event");
        let (status, _, metrics) = fraud.get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("prism_projector_events_total")
                    && l.contains("dead_lettered")
                    && !l.trim_end().ends_with(" 0")),
            "nothing was dead-lettered for an outage"
        );
        command.stop().await;
    })
    .await;
}

/// `prismctl rebuild fraud` under load: a new copy (key prefix and offline directory) is
/// built from the topic, promoted and handed over; it verifies clean, and the old copy's
/// offline files stay until it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_fraud_builds_a_new_copy_that_verifies_clean() {
    let _one = crate::harness::ONE_AT_A_TIME.lock().await;
    isolated(2, |env| async move {
        let (command, _fraud) = env.started().await;
        let load = Load::start(&command.url, (37, 30, 1_200));
        load.until(400).await;
        let options = prismctl::rebuild::Options {
            from: prismctl::rebuild::Source::Auto,
            drop_old: false,
            max_lag: 20,
            handover_timeout: Duration::from_secs(60),
            store_page_size: 10_000,
            progress: false,
        };
        let report = prismctl::rebuild::rebuild(
            &env.config,
            prismctl::models::Model::Fraud,
            &options,
            std::future::pending(),
        )
        .await
        .unwrap_or_else(|e| panic!("rebuild fraud: {e:#}"));
        assert_eq!(report.previous, Some(1));
        assert!(report.handed_over, "{report:?}");
        let total = load.finish().await;
        let verified = verify(&env.config, Duration::from_secs(90)).await;
        assert_identical(&verified, 30);
        assert_eq!(verified.events, total);
        let copies = up(
            "redis",
            prism_fraud::copies::connect(&env.config.redis, &env.fraud()).await,
        );
        let live = up(
            "redis",
            prism_projector::copies::Copies::live(&copies).await,
        );
        assert_eq!(live.number, report.generation, "the new copy is live");
        assert!(
            OfflineStore::new(&env.offline_dir, 1).dir().exists(),
            "the old copy's files are kept until it is dropped"
        );
        command.stop().await;
    })
    .await;
}
