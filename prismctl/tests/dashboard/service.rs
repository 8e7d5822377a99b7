//! The dashboard's guarantees under kills and a Redis restart, the stream's delay, and
//! the API's refusals.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_tests::up;
use serde_json::{json, Value};

use crate::e2e::{self, CommandService, TOKEN};
use crate::harness::{
    assert_identical, frames, isolated, open_account, post, stack, verify, Dashboard, RedisBack,
    ONE_AT_A_TIME,
};
use crate::projector::{load_with_kills, ProjectorProcess};

/// A seeded load of `events` commands while the dashboard is killed (SIGKILL) twice and
/// started again: the model ends equal to the fold of the store, and the summary's hour
/// counts every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_survives_kills_mid_load_and_verifies_clean() {
    let _one = ONE_AT_A_TIME.lock().await;
    isolated(3, |env| async move {
        let command = CommandService::start(&env.config).await;
        let mut dashboard = Dashboard::start(&env);
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let total =
            load_with_kills(&command.url, (11, 40, 1_500), &mut dashboard, &[400, 900]).await;
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let report = verify(&env.config, Duration::from_secs(90)).await;
        assert_identical(&report, 40);
        assert_eq!(report.events, total, "every stored command is one event");
        let summary = dashboard.summary().await;
        assert_eq!(
            summary["windows"]["1h"]["events"].as_u64(),
            Some(total),
            "the last hour counts every event: {}",
            summary["windows"]["1h"]
        );
        let open = summary["accounts"]["open"].as_i64().unwrap_or(0)
            + summary["accounts"]["frozen"].as_i64().unwrap_or(0)
            + summary["accounts"]["closed"].as_i64().unwrap_or(0);
        assert_eq!(
            open, 40,
            "every account is counted once: {}",
            summary["accounts"]
        );
        command.stop().await;
    })
    .await;
}

/// A large deposit shows in the stream's feed within a second of being accepted; bad
/// parameters are 400 problems naming the field; no token is a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_shows_a_command_within_a_second_and_bad_input_is_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    isolated(2, |env| async move {
        let command = CommandService::start(&env.config).await;
        let mut dashboard = Dashboard::start(&env);
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let http = reqwest::Client::new();
        let account = open_account(&http, &command, 1).await;
        let mut stream = frames(&dashboard).await;
        let sent = Instant::now();
        let answer = post(
            &http,
            format!("{}/v1/accounts/{account}/deposits", command.url),
            json!({"amount_minor": 250_000}),
        )
        .await;
        let accepted = Instant::now();
        let version = answer["version"].as_u64().expect("a version");
        let seen = loop {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.recv()).await;
            let Ok(Some((at, tick, frame))) = next else {
                panic!(
                    "no frame showed the deposit within 10 s; log:\n{}",
                    dashboard.log_tail()
                );
            };
            assert!(tick > 0, "frames are numbered");
            let found = frame["feed"].as_array().is_some_and(|feed| {
                feed.iter()
                    .any(|e| e["account_id"] == json!(account) && e["version"] == json!(version))
            });
            if found {
                assert_eq!(frame["feed"][0]["amount_minor"], json!(250_000));
                assert_eq!(frame["feed"][0]["large"], json!(true));
                break at;
            }
        };
        let delay = seen.saturating_duration_since(accepted);
        eprintln!(
            "accepted → in the stream: {} ms (command took {} ms)",
            delay.as_millis(),
            accepted.duration_since(sent).as_millis()
        );
        assert!(delay < Duration::from_secs(1), "took {delay:?}");

        for (path, field) in [
            ("/v1/dashboard/series?metric=nope", "metric"),
            ("/v1/dashboard/series?metric=events&window=3h", "window"),
            ("/v1/dashboard/series?metric=money_in", "currency"),
            (
                "/v1/dashboard/series?metric=money_in&currency=EURO",
                "currency",
            ),
            (
                "/v1/dashboard/series?metric=events&currency=EUR",
                "currency",
            ),
            ("/v1/dashboard/summary?window=1h", "window"),
        ] {
            let (status, content_type, body) = dashboard.get(path).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert_eq!(content_type, "application/problem+json", "{path}");
            let problem: Value = up("a problem", serde_json::from_str(&body));
            assert_eq!(problem["field"], json!(field), "{path}: {problem}");
        }
        let (status, _, body) = dashboard
            .get("/v1/dashboard/series?metric=money_in&currency=EUR&window=10m")
            .await;
        assert_eq!(status, 200, "{body}");
        let series: Value = up("a series", serde_json::from_str(&body));
        let points = series["points"].as_array().expect("points");
        assert_eq!(points.len(), 600);
        let total: i64 = points.iter().filter_map(|p| p["v"].as_i64()).sum();
        assert_eq!(total, 250_000, "the deposit is in the last ten minutes");

        let anonymous = up(
            "prism-dashboard",
            http.get(format!("{}/v1/dashboard/summary", dashboard.url))
                .send()
                .await,
        );
        assert_eq!(anonymous.status(), 401);
        let ledger_only = up(
            "prism-dashboard",
            http.get(format!("{}/v1/dashboard/summary", dashboard.url))
                .bearer_auth(crate::projector::LEDGER_ONLY_TOKEN)
                .send()
                .await,
        );
        assert_eq!(ledger_only.status(), 403, "a token without dashboard:read");
        let page = up("prism-dashboard", http.get(&dashboard.url).send().await);
        assert_eq!(page.status(), 200, "the page itself needs no token");
        command.stop().await;
    })
    .await;
}

/// Redis stops for a few seconds while deposits keep coming: the projector retries (a
/// lost connection is transient: nothing skipped, nothing dead-lettered), and once Redis is
/// back the model converges to the fold of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_converges_after_redis_restarts_mid_stream() {
    let _one = ONE_AT_A_TIME.lock().await;
    isolated(2, |env| async move {
        let command = CommandService::start(&env.config).await;
        let mut dashboard = Dashboard::start(&env);
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let http = reqwest::Client::new();
        let mut accounts = Vec::new();
        for i in 0..5 {
            accounts.push(open_account(&http, &command, i).await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let deposits = {
            let (stop, url, accounts) = (Arc::clone(&stop), command.url.clone(), accounts.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut sent = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = &accounts[sent as usize % accounts.len()];
                    let ok = http
                        .post(format!("{url}/v1/accounts/{id}/deposits"))
                        .bearer_auth(TOKEN)
                        .json(&json!({"amount_minor": 100 + sent % 7}))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    sent += u64::from(ok);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                sent
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut back = RedisBack(true);
        stack(&["down", "redis"]);
        tokio::time::sleep(Duration::from_secs(4)).await;
        stack(&["up", "redis"]);
        back.0 = false;
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let sent = up("the deposits", deposits.await);
        assert!(sent > 100, "deposits kept coming: {sent}");
        let report = verify(&env.config, Duration::from_secs(90)).await;
        assert_identical(&report, 5);
        let (status, _, metrics) = dashboard.get("/metrics").await;
        assert_eq!(status, 200);
        let dead: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("prism_projector_events_total") && l.contains("dead_lettered")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(dead, 0.0, "nothing was dead-lettered");
        dashboard.kill();
        command.stop().await;
    })
    .await;
}

/// `prismctl rebuild dashboard` under load while a viewer reads the summary: the new copy
/// (a key prefix of its own) is filled from the event store, the live pointer moves in one
/// step, no summary fails on the way, and the new copy verifies clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dashboard_rebuild_switches_copies_without_a_failed_read() {
    let _one = ONE_AT_A_TIME.lock().await;
    isolated(2, |env| async move {
        use prismctl::models::Model;
        use prismctl::rebuild::{Options, Source};

        let command = CommandService::start(&env.config).await;
        let mut dashboard = Dashboard::start(&env);
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let stored = Arc::new(AtomicU64::new(0));
        let load = tokio::spawn(e2e::seeded_load(
            command.url.clone(),
            5,
            30,
            1_200,
            4,
            Arc::clone(&stored),
        ));
        // The reader: every summary during the rebuild must be a 200.
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (stop, url) = (Arc::clone(&stop), dashboard.url.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let (mut ok, mut failures) = (0_u64, Vec::new());
                let mut copies = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    match http
                        .get(format!("{url}/v1/dashboard/summary"))
                        .bearer_auth(TOKEN)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            ok += 1;
                            if let Ok(body) = r.json::<Value>().await {
                                copies.insert(body["copy"].as_u64().unwrap_or(0));
                            }
                        }
                        Ok(r) => failures.push(format!("{}", r.status())),
                        Err(e) => failures.push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (ok, failures, copies)
            })
        };
        while stored.load(Ordering::Relaxed) < 400 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let options = Options {
            from: Source::Auto,
            drop_old: false,
            max_lag: 20,
            handover_timeout: Duration::from_secs(60),
            store_page_size: 10_000,
            progress: false,
        };
        let report = prismctl::rebuild::rebuild(
            &env.config,
            Model::Dashboard,
            &options,
            std::future::pending(),
        )
        .await
        .unwrap_or_else(|e| panic!("rebuild dashboard: {e:#}"));
        assert_eq!(report.previous, Some(1));
        assert!(report.handed_over, "{report:?}");
        let total = up("the load", load.await);
        // Past the API's next look at which copy is live.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        let (ok, failures, copies) = up("the reader", reader.await);
        assert!(
            failures.is_empty(),
            "{} summaries failed: {failures:?}",
            failures.len()
        );
        assert!(ok > 20, "only {ok} summaries read");
        assert!(
            copies.contains(&1) && copies.contains(&u64::from(report.generation)),
            "the reader saw copies {copies:?}"
        );

        let verified = verify(&env.config, Duration::from_secs(90)).await;
        assert_identical(&verified, 30);
        assert_eq!(verified.events, total);
        let model = up("redis", Model::Dashboard.open(&env.config).await);
        let states: Vec<(u32, String)> = up("redis", model.copies.list().await)
            .into_iter()
            .map(|c| (c.number, c.state.as_str().to_owned()))
            .collect();
        assert_eq!(
            states,
            vec![
                (1, "retired".to_owned()),
                (report.generation, "live".to_owned())
            ]
        );
        let dropped = up("redis", model.copies.drop_retired().await);
        assert!(
            dropped.len() == 1 && dropped[0].ends_with(":c1:*"),
            "{dropped:?}"
        );
        let summary = dashboard.summary().await;
        assert_eq!(summary["copy"].as_u64(), Some(u64::from(report.generation)));
        assert_eq!(summary["windows"]["1h"]["events"].as_u64(), Some(total));
        command.stop().await;
    })
    .await;
}

/// The trail of a request: the correlation id a client sends with a command is on
/// prism-command's request line, travels in the event's Kafka headers to the projector's
/// log line for that event, and is on the projector's own request line when the client
/// reads with it (JSON objects, since the children's stderr is a file, not a terminal).
/// Request lines name the route template, the status, the latency and the caller's
/// principal, never the token or the body; the probes' lines are at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commands_correlation_id_reaches_the_projectors_log_line() {
    let _one = ONE_AT_A_TIME.lock().await;
    isolated(1, |env| async move {
        // The projector logs each applied event at debug level; request lines are at info,
        // the probes' at debug.
        let profile = up("the profile", std::fs::read_to_string(&env.profile));
        let debug = profile.replacen(
            "level = \"warn\"",
            "level = \"warn,prism_projector::worker=debug,prism_platform::http=debug\"",
            1,
        );
        assert_ne!(debug, profile, "the profile sets the log level");
        up("the profile", std::fs::write(&env.profile, debug));
        // The real binary, for its log (the same profile: store schema, topic).
        let mut command =
            ProjectorProcess::start("prism-command", "PRISM_COMMAND__LISTEN", &env.profile);
        command.wait_ready(Duration::from_secs(60)).await;
        let mut dashboard = Dashboard::start(&env);
        dashboard.wait_ready(Duration::from_secs(60)).await;

        let correlation = prism_tests::unique("trail");
        let response = up(
            "prism-command",
            reqwest::Client::new()
                .post(format!("{}/v1/accounts", command.url))
                .bearer_auth(TOKEN)
                .header("x-correlation-id", &correlation)
                .json(
                    &json!({"holder_name": "Ada Lovelace", "email": "ada@example.org",
                              "country": "PT", "currency": "EUR"}),
                )
                .send()
                .await,
        );
        assert_eq!(response.status(), 201);
        assert_eq!(
            response
                .headers()
                .get("x-correlation-id")
                .and_then(|v| v.to_str().ok()),
            Some(correlation.as_str()),
            "the answer names the correlation id"
        );
        let answer: Value = up("prism-command's answer", response.json().await);
        let account = answer["account_id"].as_str().unwrap_or_default().to_owned();

        let request = log_line(&command, &correlation, "http request").await;
        let fields = &request["fields"];
        assert_eq!(request["level"], "INFO", "{request}");
        assert_eq!(fields["method"], "POST", "{request}");
        assert_eq!(fields["route"], "/v1/accounts", "{request}");
        assert_eq!(fields["status"], 201, "{request}");
        assert!(
            fields["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{request}"
        );
        let principal = fields["principal"].as_str().unwrap_or_default().to_owned();
        assert!(
            principal.len() == 16 && principal.bytes().all(|b| b.is_ascii_hexdigit()),
            "the caller is a short hash: {request}"
        );
        let log = command.log_text();
        assert!(!log.contains(TOKEN), "the token is never logged");
        assert!(!log.contains("ada@example.org"), "nor the body");
        // Probes are at debug level, with their route.
        let probe = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["fields"]["route"] == "/readyz")
            .unwrap_or_else(|| panic!("no request line of /readyz:\n{}", command.log_tail()));
        assert_eq!(probe["level"], "DEBUG", "{probe}");
        assert_eq!(probe["fields"]["principal"], "", "{probe}");

        let line = log_line(&dashboard, &correlation, "event applied").await;
        assert_eq!(line["fields"]["account_id"], account.as_str(), "{line}");
        assert_eq!(
            line["fields"]["event_type"], "prism.account.opened",
            "{line}"
        );
        assert_eq!(line["level"], "DEBUG", "{line}");

        // The projector's API logs its requests the same way, the same caller the same.
        let read = up(
            "prism-dashboard",
            reqwest::Client::new()
                .get(format!("{}/v1/dashboard/summary", dashboard.url))
                .bearer_auth(TOKEN)
                .header("x-correlation-id", &correlation)
                .send()
                .await,
        );
        assert_eq!(read.status(), 200);
        let request = log_line(&dashboard, &correlation, "http request").await;
        assert_eq!(request["level"], "INFO", "{request}");
        assert_eq!(request["fields"]["method"], "GET", "{request}");
        assert_eq!(
            request["fields"]["route"], "/v1/dashboard/summary",
            "{request}"
        );
        assert_eq!(request["fields"]["status"], 200, "{request}");
        assert_eq!(
            request["fields"]["principal"],
            principal.as_str(),
            "{request}"
        );
        assert!(
            !dashboard.log_text().contains(TOKEN),
            "the token is never logged"
        );
        command.kill();
    })
    .await;
}

/// The first JSON line of `process`'s log with `message` and `correlation_id`, waiting up
/// to 30 s for it.
async fn log_line(process: &ProjectorProcess, correlation: &str, message: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = process.log_text();
        let found = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| {
                line["fields"]["message"] == message
                    && line["fields"]["correlation_id"] == correlation
            });
        if let Some(line) = found {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no JSON log line {message:?} with correlation id {correlation} within 30 s:\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /v1/admin/status` on the real projector: 401 without a token, 403 with a token
/// without `admin` (problem+json both), and with it this instance's view: its group, the
/// copy it serves and writes, no dead letters, and every assigned partition caught up on
/// the event of the command sent, at Kafka's end offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_status_needs_the_admin_scope_and_shows_this_instances_partitions() {
    let _one = ONE_AT_A_TIME.lock().await;
    isolated(2, |env| async move {
        let command = CommandService::start(&env.config).await;
        let mut dashboard = Dashboard::start(&env);
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let http = reqwest::Client::new();
        let url = format!("{}/v1/admin/status", dashboard.url);
        for (token, status, code) in [
            (None, 401, "unauthorized"),
            (Some(crate::projector::LEDGER_ONLY_TOKEN), 403, "forbidden"),
        ] {
            let mut request = http.get(&url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let answer = up("prism-dashboard", request.send().await);
            assert_eq!(answer.status(), status);
            assert_eq!(
                answer
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some("application/problem+json")
            );
            let problem: Value = up("a problem", answer.json().await);
            assert_eq!(problem["code"], code, "{problem}");
        }

        open_account(&http, &command, 1).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let (code, content_type, body) = dashboard.get("/v1/admin/status").await;
            assert_eq!(code, 200, "{body}");
            assert_eq!(content_type, "application/json");
            let status: Value = up("the admin status", serde_json::from_str(&body));
            let partitions = status["partitions"].as_array().cloned().unwrap_or_default();
            let stored = partitions
                .iter()
                .filter(|p| p["stored_offset"].as_i64().is_some())
                .count();
            let caught_up = partitions.iter().all(|p| p["lag_events"] == 0);
            if partitions.len() == 2 && stored == 1 && caught_up && status["ready"] == true {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the event was not projected within 30 s: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let group = env.dashboard().group_id;
        assert_eq!(status["service"], "prism-dashboard");
        assert!(status["version"].is_string(), "{status}");
        assert_eq!(status["consumer_group"], group.as_str());
        assert!(
            status["instance"]
                .as_str()
                .is_some_and(|i| i.starts_with(&format!("{group}/"))),
            "{status}"
        );
        assert_eq!(status["topic"], env.config.kafka.topic.as_str());
        assert!(status["checked_at"].is_string(), "{status}");
        assert_eq!(status["reasons"], json!([]));
        assert_eq!(
            status["copy"],
            json!({"live": 1, "serving": 1, "writing": 1, "unavailable": null})
        );
        assert_eq!(
            status["dead_letters"],
            json!({
                "topic": format!("{}.dlq.dashboard", env.config.kafka.topic),
                "events": 0
            })
        );
        assert_eq!(status["held_partitions"], json!([]));
        let partitions = status["partitions"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            partitions
                .iter()
                .map(|p| p["partition"].clone())
                .collect::<Vec<_>>(),
            [json!(0), json!(1)]
        );
        let written = partitions
            .iter()
            .find(|p| p["stored_offset"].is_i64())
            .unwrap_or_else(|| panic!("no partition with a position: {status}"));
        assert_eq!(
            written["end_offset"].as_i64(),
            written["stored_offset"].as_i64().map(|offset| offset + 1),
            "the position is the last record: {written}"
        );
        assert_eq!(written["lag_seconds"], 0.0, "{written}");
        assert!(written["last_event_time"].is_string(), "{written}");
        for partition in &partitions {
            for member in ["paused", "held", "last_error"] {
                assert!(partition.get(member).is_some(), "{member} in {partition}");
            }
            assert_eq!(partition["held"], Value::Null, "{partition}");
        }
        command.stop().await;
    })
    .await;
}
