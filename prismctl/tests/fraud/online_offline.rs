//! Online = offline, proven on one payment: the features API scores a candidate payment,
//! the very same payment is then sent as a command (at the time the candidate named, with
//! the command service's clock set to it), and the offline row `prism-fraud` writes for the
//! payment's event carries the identical feature vector, field for field, bit for bit.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound as _, Utc};
use parking_lot::Mutex;
use prism_command::service::Clock;
use prism_fraud::offline::Table;
use prism_fraud::rows::read_table;
use prism_projector::copies::Copies as _;
use prism_tests::up;
use serde_json::{json, Value};

use crate::e2e::{CommandService, TOKEN};
use crate::harness::{isolated, start};

async fn send(http: &reqwest::Client, url: String, body: Value) -> Value {
    let response = up(
        "prism-command",
        http.post(&url).bearer_auth(TOKEN).json(&body).send().await,
    );
    let status = response.status();
    let answer: Value = up("prism-command's answer", response.json().await);
    assert!(status.is_success(), "{url}: {status} {answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scored_payment_gets_the_same_features_offline_once_it_is_made() {
    let _one = crate::harness::ONE_AT_A_TIME.lock().await;
    isolated(1, |env| async move {
        // The command service's clock: the system's, or a time the test sets.
        let fixed: Arc<Mutex<Option<DateTime<Utc>>>> = Arc::default();
        let clock = {
            let fixed = Arc::clone(&fixed);
            Clock::from_fn(move || fixed.lock().unwrap_or_else(Utc::now))
        };
        let command = CommandService::start_with_clock(&env.config, clock).await;
        let mut fraud = start(&env);
        fraud.wait_ready(Duration::from_secs(60)).await;
        let http = reqwest::Client::new();
        let base = format!("{}/v1/accounts", command.url);
        let opened = send(
            &http,
            base.clone(),
            json!({"holder_name": "Ada", "email": "ada@example.org",
                   "country": "DE", "currency": "EUR"}),
        )
        .await;
        let account = opened["account_id"].as_str().unwrap_or_default().to_owned();
        send(&http, format!("{base}/{account}/deposits"), json!({"amount_minor": 80_000})).await;
        // A history for every feature to read: payments at home and abroad, a decline, a
        // withdrawal.
        for (amount, merchant, country, channel) in [
            (1_250, "Café Rosa", "DE", "pos"),
            (90, "GAMECOINS*TOPUP 7731", "US", "online"),
            (4_400, "City Grocer", "DE", "pos"),
            (500_000, "Big Screens", "DE", "online"),
        ] {
            send(
                &http,
                format!("{base}/{account}/payments"),
                json!({"amount_minor": amount, "merchant_name": merchant, "merchant_category": "5814",
                       "merchant_country": country, "channel": channel}),
            )
            .await;
        }
        let last = send(
            &http,
            format!("{base}/{account}/withdrawals"),
            json!({"amount_minor": 2_000, "channel": "atm"}),
        )
        .await;
        let token = last["consistency_token"].as_str().unwrap_or_default().to_owned();

        // The candidate, a few seconds from now (µs: the precision of event times).
        let time = (Utc::now() + chrono::Duration::seconds(3)).trunc_subsecs(6);
        let candidate = json!({"amount_minor": 95, "merchant_name": "GAMECOINS*TOPUP 7731",
            "merchant_category": "5816", "merchant_country": "US", "channel": "online",
            "time": time.to_rfc3339_opts(SecondsFormat::Micros, true)});
        let response = up(
            "prism-fraud",
            http.post(format!("{}/v1/features/{account}/score", fraud.url))
                .bearer_auth(TOKEN)
                .header("Consistency-Token", &token)
                .json(&candidate)
                .send()
                .await,
        );
        assert_eq!(response.status().as_u16(), 200);
        let scored: Value = up("the score", response.json().await);
        let online = scored["features"].clone();
        assert_eq!(online["card_payments_count_24h"], 4, "{online}");

        // The same payment, made at that time.
        *fixed.lock() = Some(time);
        let mut body = candidate.clone();
        if let Some(body) = body.as_object_mut() {
            body.remove("time");
        }
        let paid = send(&http, format!("{base}/{account}/payments"), body).await;
        *fixed.lock() = None;
        let event_id = paid["event_ids"][0].as_str().unwrap_or_default().to_owned();

        // Its offline row, once written.
        let copies = up(
            "redis",
            prism_fraud::copies::connect(&env.config.redis, &env.fraud()).await,
        );
        let live = up("redis", copies.live().await);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let row = loop {
            let rows = up("the offline store", read_table(&live.offline, Table::Rows));
            if let Some(row) = rows.get(&event_id) {
                break row.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no offline row for {event_id}; {}",
                fraud.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            row["event_time"],
            json!(time.to_rfc3339_opts(SecondsFormat::Micros, true)),
            "the payment was made at the candidate's time"
        );
        let mut differences = Vec::new();
        let Some(features) = online.as_object() else {
            panic!("features are an object: {online}");
        };
        assert_eq!(features.len(), 27, "{online}");
        for (name, value) in features {
            if row.get(name) != Some(value) {
                differences.push(format!("{name}: online {value}, offline {:?}", row.get(name)));
            }
        }
        assert!(
            differences.is_empty(),
            "online and offline disagree:\n{}",
            differences.join("\n")
        );
        command.stop().await;
    })
    .await;
}
