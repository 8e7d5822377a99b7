//! A Prometheus of the run's own, scraping every process of the fleet each second with
//! Prism's real alert rules (`dashboards/alerts/*.rules.yml`, unchanged), so the run can
//! check that the projector lag alert fires during a sink outage and clears after it.
//!
//! The rules hold `PrismProjectorLagHigh` pending while a projector is over 60 s behind and
//! fire it after 5 minutes of that. A short run's outage reaches `pending`; a run whose
//! sink outage lasts over 6 minutes (`--alert-outage`) waits for `firing`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::process::{Child, Command};

use super::fleet::free_port;

/// The Debian package's server, as `dev/stack` runs it.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The alert the run checks.
pub const LAG_ALERT: &str = "PrismProjectorLagHigh";

/// The running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus in `dir` scraping `targets` (`(job, host:port)`), with the rule
    /// files under `rules_dir`.
    pub async fn start(
        dir: &Path,
        rules_dir: &Path,
        targets: &[(String, String)],
    ) -> anyhow::Result<Self> {
        if !Path::new(PROMETHEUS).is_file() {
            bail!("{PROMETHEUS} is missing (`dev/stack up prometheus` installs it)");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, configuration(rules_dir, targets))
            .with_context(|| format!("writing {}", config.display()))?;
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log"))
            .context("creating Prometheus's log")?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting Prometheus")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        let mut this = Self { child, url, http };
        for _ in 0..120 {
            if let Ok(Some(status)) = this.child.try_wait() {
                bail!(
                    "Prometheus exited ({status}); see {}",
                    dir.join("prometheus.log").display()
                );
            }
            let ready = this.http.get(format!("{}/-/ready", this.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(this);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("Prometheus did not become ready at {}", this.url)
    }

    /// The states (`pending`, `firing`) `alert` is in now, one per labelled series, as
    /// `state projector`.
    pub async fn alert_states(&self, alert: &str) -> anyhow::Result<Vec<(String, String)>> {
        let answer = self.api("alerts").await?;
        let states = answer["data"]["alerts"]
            .as_array()
            .map(|alerts| {
                alerts
                    .iter()
                    .filter(|a| a["labels"]["alertname"] == alert)
                    .map(|a| {
                        (
                            a["state"].as_str().unwrap_or("").to_owned(),
                            a["labels"]["projector"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(states)
    }

    /// How many rules Prometheus loaded (0 means the rule files were not found).
    pub async fn rule_count(&self) -> anyhow::Result<usize> {
        let answer = self.api("rules").await?;
        Ok(answer["data"]["groups"]
            .as_array()
            .map(|groups| {
                groups
                    .iter()
                    .map(|g| g["rules"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0))
    }

    /// `GET /api/v1/<what>`'s JSON.
    async fn api(&self, what: &str) -> anyhow::Result<Value> {
        self.http
            .get(format!("{}/api/v1/{what}", self.url))
            .send()
            .await
            .with_context(|| format!("asking Prometheus for its {what}"))?
            .json()
            .await
            .with_context(|| format!("reading Prometheus's {what}"))
    }

    pub async fn stop(self) {
        super::fleet::terminate(self.child, Duration::from_secs(10)).await;
    }
}

/// The configuration: one job per service (named like the production jobs, `prism-ledger`),
/// scraped every second, rules evaluated every second.
fn configuration(rules_dir: &Path, targets: &[(String, String)]) -> String {
    let mut jobs: Vec<(&str, Vec<&str>)> = Vec::new();
    for (job, target) in targets {
        match jobs.iter_mut().find(|(j, _)| j == job) {
            Some((_, list)) => list.push(target),
            None => jobs.push((job, vec![target])),
        }
    }
    let rules: PathBuf = rules_dir.join("*.rules.yml");
    let mut text = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
         rule_files:\n  - {:?}\nscrape_configs:\n",
        rules.display().to_string()
    );
    for (job, list) in jobs {
        let quoted: Vec<String> = list.iter().map(|t| format!("{t:?}")).collect();
        text.push_str(&format!(
            "  - job_name: {job:?}\n    static_configs:\n      - targets: [{}]\n        labels:\n          service: {job:?}\n",
            quoted.join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_has_one_job_per_service_and_the_projects_rules() {
        let text = configuration(
            Path::new("/srv/prism/dashboards/alerts"),
            &[
                ("prism-ledger".into(), "127.0.0.1:4001".into()),
                ("prism-command".into(), "127.0.0.1:4000".into()),
                ("prism-ledger".into(), "127.0.0.1:4002".into()),
            ],
        );
        assert!(text.contains("- \"/srv/prism/dashboards/alerts/*.rules.yml\""));
        assert!(text.contains(
            "job_name: \"prism-ledger\"\n    static_configs:\n      - targets: [\"127.0.0.1:4001\", \"127.0.0.1:4002\"]"
        ));
        assert_eq!(text.matches("job_name").count(), 2);
    }
}
