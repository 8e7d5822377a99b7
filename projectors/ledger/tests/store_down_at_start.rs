//! A ledger projector started while MySQL cannot be reached (as after a restart during a
//! MySQL outage) stays up: `/healthz` answers, `/readyz` says the read model is not open and
//! why, the query API answers 503 `starting`, and `/metrics` carries the group's lag
//! measured from Kafka alone, so the lag alert can fire although no instance projects.
//! Once MySQL is reachable it opens the read model and projects everything, without a
//! restart.
//!
//! MySQL is made unreachable for this projector alone by a Toxiproxy proxy in front of it,
//! disabled and then enabled (the stack's Toxiproxy, `dev/stack up toxiproxy`): the shared
//! MySQL keeps serving every other test.

mod support;

use std::time::{Duration, Instant};

use prism_platform::secret::Dsn;
use prism_tests::toxiproxy::Proxy;
use support::{isolated, last_versions, metric_sum, wait_versions, Feed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_started_while_mysql_is_unreachable_serves_health_and_lag_then_projects() {
    isolated(3, |env| async move {
        let mut feed = Feed::new(73, 12, 3);
        let produced = feed.take(60);
        env.send_all(&produced).await;

        // The ledger reaches MySQL only through the proxy, which refuses connections.
        let mysql = env.config.mysql.url.clone();
        let upstream = mysql.hosts().to_owned();
        let proxy = Proxy::disabled(&upstream).await;
        let mut config = env.config.clone();
        config.mysql.url = Dsn::new(mysql.expose().replacen(mysql.hosts(), &proxy.listen, 1));
        config.mysql.connect_timeout_ms = 1_000;
        config.projector.lag_interval_ms = 200;

        // Before: the process exited here ("opening the ledger read model"), and the test
        // support panics on a projector that stops during start-up.
        let projector = env.start_projector_with(config).await;

        // Not ready, saying why (the error of the last attempt, once one failed).
        let opening = "the read model is not open: opening the ledger read model";
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _, body) = projector.readyz().await;
            assert_eq!(status, 503, "/readyz while MySQL is unreachable: {body}");
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(opening),
                "/readyz names the read model: {detail}"
            );
            if detail.contains(&format!("{opening}: ")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no error on /readyz within 30 s: {detail}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The API answers 503 `starting` (after holding the request a while), not a hang
        // or a 404.
        let answer = projector.get("/v1/accounts", &[]).await;
        assert_eq!(answer.status, 503, "{:?}", answer.body);
        assert_eq!(answer.body["code"], "starting", "{:?}", answer.body);
        assert_eq!(answer.header("retry-after"), Some("1"));

        // The group's lag, from Kafka alone: every record waits (nothing was ever committed),
        // and the oldest waiting record's age is a lag in seconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        let waiting = produced.len() as f64;
        loop {
            let metrics = projector.metrics().await;
            let lag = metric_sum(
                &metrics,
                "prism_projector_consumer_lag",
                &[("projector", "ledger")],
            );
            let seconds_reported = metrics.contains("prism_projector_lag_seconds{");
            if lag == waiting && seconds_reported {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "/metrics did not show the group's lag of {waiting} records within 30 s \
                 (lag {lag}, seconds reported: {seconds_reported}):\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // MySQL reachable: the same process opens the read model and projects everything.
        proxy.enable().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, _, body) = projector.readyz().await;
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not ready 60 s after MySQL became reachable: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let pool = env.model_pool().await;
        wait_versions(&pool, &last_versions(&produced), Duration::from_secs(60)).await;
        let answer = projector.get("/v1/accounts", &[]).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let lag = metric_sum(
            &projector.metrics().await,
            "prism_projector_consumer_lag",
            &[("projector", "ledger")],
        );
        assert_eq!(lag, 0.0, "the runtime measures the lag once it projects");
        projector.stop().await;
        drop(proxy);
    })
    .await;
}
