//! The dashboard tests' world: a profile of its own per test, the real `prism-dashboard`
//! process, `verify dashboard`, the stream reader, Redis stopped and started.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_platform::config::Config;
use prism_tests::{unique, up};
use prismctl::models::Model;
use prismctl::verify_model::ModelReport;
use serde_json::{json, Value};

use crate::e2e::{CommandService, TOKEN};
use crate::projector::ProjectorProcess;

/// One test at a time: one of them restarts Redis.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's names, as a profile file (what the child loads) and as the loaded config.
pub(crate) struct Env {
    pub(crate) config: Config,
    pub(crate) profile: PathBuf,
}

impl Env {
    fn new(partitions: i32) -> Env {
        let namespace = format!("prism-test:{}", unique("dash"));
        let group = unique("prism-test-dash");
        let (profile, config) = crate::projector::write_profile(
            "dash",
            partitions,
            &format!(
                r#"[dashboard]
namespace = "{namespace}"
group_id = "{group}"
copy_poll_ms = 200
health_poll_ms = 500
health_targets = []
"#
            ),
        );
        Env { config, profile }
    }

    pub(crate) fn dashboard(&self) -> prism_dashboard::DashboardConfig {
        up(
            "the [dashboard] section",
            self.config.dashboard.parse("dashboard"),
        )
    }

    pub(crate) async fn clean_up(&self) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        use rdkafka::client::DefaultClientContext;
        let kafka = prism_platform::clients::kafka_client_config(&self.config.kafka);
        if let Ok(admin) = kafka.create::<AdminClient<DefaultClientContext>>() {
            let options = AdminOptions::new();
            let dlq = prism_projector::dlq::topic_name(
                &self.config.kafka.topic,
                &self.config.projector.dlq_suffix,
                "dashboard",
            );
            let _ = admin
                .delete_topics(&[&self.config.kafka.topic, &dlq], &options)
                .await;
            let group = self.dashboard().group_id;
            let rebuild = format!("{group}-rebuild-g2");
            let _ = admin.delete_groups(&[&group, &rebuild], &options).await;
        }
        prism_tests::drop_event_store(&self.config).await;
        prism_tests::unlink_keys(&self.config, &format!("{}:*", self.dashboard().namespace)).await;
        let _ = std::fs::remove_file(&self.profile);
    }
}

/// Runs `body` in an [`Env`] of its own and cleans up whether it passed or not.
pub(crate) async fn isolated<F, Fut>(partitions: i32, body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()>,
{
    prism_tests::run_then_clean_up(Arc::new(Env::new(partitions)), body, |env| async move {
        env.clean_up().await;
    })
    .await;
}

/// The real `prism-dashboard`; killed when dropped.
pub(crate) struct Dashboard(ProjectorProcess);

impl std::ops::Deref for Dashboard {
    type Target = ProjectorProcess;

    fn deref(&self) -> &ProjectorProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Dashboard {
    fn deref_mut(&mut self) -> &mut ProjectorProcess {
        &mut self.0
    }
}

impl Dashboard {
    pub(crate) fn start(env: &Env) -> Dashboard {
        Dashboard(ProjectorProcess::start(
            "prism-dashboard",
            "PRISM_DASHBOARD__LISTEN",
            &env.profile,
        ))
    }

    pub(crate) async fn summary(&self) -> Value {
        let (status, _, body) = self.get("/v1/dashboard/summary").await;
        assert_eq!(status, 200, "{body}");
        up("the summary", serde_json::from_str(&body))
    }
}

/// `prismctl verify`, re-checking for up to `wait`.
pub(crate) async fn verify(config: &Config, wait: Duration) -> ModelReport {
    crate::projector::verify(Model::Dashboard, config, wait).await
}

pub(crate) use crate::projector::assert_identical;

pub(crate) async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let response = up(
        "prism-command",
        http.post(&url).bearer_auth(TOKEN).json(&body).send().await,
    );
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{url}: {status} {text}");
    up("prism-command's answer", serde_json::from_str(&text))
}

pub(crate) async fn open_account(
    http: &reqwest::Client,
    command: &CommandService,
    i: usize,
) -> String {
    let answer = post(
        http,
        format!("{}/v1/accounts", command.url),
        json!({"holder_name": format!("Holder {i}"), "email": format!("h{i}@example.org"),
               "country": "PT", "currency": "EUR"}),
    )
    .await;
    answer["account_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no account_id in {answer}"))
        .to_owned()
}

/// Frames of `/v1/dashboard/stream`, parsed as they arrive.
pub(crate) async fn frames(
    dashboard: &Dashboard,
) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, u64, Value)> {
    let response = up(
        "prism-dashboard",
        reqwest::Client::new()
            .get(format!("{}/v1/dashboard/stream", dashboard.url))
            .bearer_auth(TOKEN)
            .send()
            .await,
    );
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut response = response;
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let mut id = 0;
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().unwrap_or(0);
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Ok(value) = serde_json::from_str(&data) {
                    if tx.send((Instant::now(), id, value)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

pub(crate) use crate::projector::{stack, RedisBack};
