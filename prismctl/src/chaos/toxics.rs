//! Toxiproxy, through its HTTP API: a TCP proxy in front of each backing server, which the
//! chaos run's Prism processes connect to instead of the server, and the toxics (network
//! faults) put on them.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::plan::{Server, Toxic};

/// The default address of toxiproxy's API (`dev/stack up toxiproxy`).
pub const DEFAULT_API: &str = "http://127.0.0.1:8474";

/// One proxy: where Prism connects, and the server behind it.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub name: String,
    pub server: Server,
    pub listen: String,
    pub upstream: String,
}

/// A toxiproxy server.
#[derive(Debug, Clone)]
pub struct Toxiproxy {
    api: String,
    http: reqwest::Client,
}

impl Toxiproxy {
    /// Connects to the API at `api` and checks it answers.
    pub async fn connect(api: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        let this = Self {
            api: api.trim_end_matches('/').to_owned(),
            http,
        };
        this.http
            .get(format!("{}/version", this.api))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| {
                format!(
                    "toxiproxy does not answer at {} (start it: `dev/stack up toxiproxy`)",
                    this.api
                )
            })?;
        Ok(this)
    }

    /// Creates `proxy` (replacing one of the same name left by an earlier run).
    pub async fn create(&self, proxy: &Proxy) -> anyhow::Result<()> {
        let _ = self.delete(&proxy.name).await;
        let answer = self
            .http
            .post(format!("{}/proxies", self.api))
            .json(&json!({
                "name": proxy.name,
                "listen": proxy.listen,
                "upstream": proxy.upstream,
                "enabled": true,
            }))
            .send()
            .await
            .with_context(|| format!("creating the proxy {}", proxy.name))?;
        expect_success(answer, &format!("creating the proxy {}", proxy.name)).await
    }

    /// Deletes the proxy `name` (closing its connections).
    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        let answer = self
            .http
            .delete(format!("{}/proxies/{name}", self.api))
            .send()
            .await
            .with_context(|| format!("deleting the proxy {name}"))?;
        expect_success(answer, &format!("deleting the proxy {name}")).await
    }

    /// Puts `toxic` on the proxy `name`, on both directions where it matters; returns the
    /// toxics' names (for [`Self::remove`]).
    pub async fn add(&self, name: &str, toxic: Toxic) -> anyhow::Result<Vec<String>> {
        let toxics: Vec<(String, Value)> = match toxic {
            Toxic::Latency => vec![(
                "chaos_latency".into(),
                json!({"type": "latency", "stream": "downstream",
                       "attributes": {"latency": 300, "jitter": 100}}),
            )],
            // Every connection is reset 100–600 ms after it opens: requests under way are
            // cut mid-flight, as a crashing load balancer or a flapping link does.
            Toxic::Reset => vec![(
                "chaos_reset".into(),
                json!({"type": "reset_peer", "stream": "upstream",
                       "attributes": {"timeout": 350}}),
            )],
            // `timeout` with 0: data is dropped and the connection stays open until the
            // toxic goes.
            Toxic::Blackhole => vec![(
                "chaos_blackhole".into(),
                json!({"type": "timeout", "stream": "upstream",
                       "attributes": {"timeout": 0}}),
            )],
            Toxic::Bandwidth => vec![
                (
                    "chaos_bandwidth_down".into(),
                    json!({"type": "bandwidth", "stream": "downstream",
                           "attributes": {"rate": 64}}),
                ),
                (
                    "chaos_bandwidth_up".into(),
                    json!({"type": "bandwidth", "stream": "upstream",
                           "attributes": {"rate": 64}}),
                ),
            ],
        };
        let mut added = Vec::new();
        for (toxic_name, mut body) in toxics {
            body["name"] = json!(toxic_name);
            body["toxicity"] = json!(1.0);
            let answer = self
                .http
                .post(format!("{}/proxies/{name}/toxics", self.api))
                .json(&body)
                .send()
                .await
                .with_context(|| format!("adding {toxic_name} to {name}"))?;
            expect_success(answer, &format!("adding {toxic_name} to {name}")).await?;
            added.push(toxic_name);
        }
        Ok(added)
    }

    /// Removes the toxics `toxics` from the proxy `name`.
    pub async fn remove(&self, name: &str, toxics: &[String]) -> anyhow::Result<()> {
        for toxic in toxics {
            let answer = self
                .http
                .delete(format!("{}/proxies/{name}/toxics/{toxic}", self.api))
                .send()
                .await
                .with_context(|| format!("removing {toxic} from {name}"))?;
            expect_success(answer, &format!("removing {toxic} from {name}")).await?;
        }
        Ok(())
    }
}

async fn expect_success(answer: reqwest::Response, what: &str) -> anyhow::Result<()> {
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let body = answer.text().await.unwrap_or_default();
    bail!("{what}: toxiproxy answered {status}: {}", body.trim())
}
