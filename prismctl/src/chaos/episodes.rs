//! The episodes of the fault plan, as the run carries them out: a server stopped and
//! started with `dev/stack`, a toxic on the proxies of a server, a rebalance storm, a
//! rebuild killed mid-way and run again, a broker lost, and the lag alert watched through
//! the sink outage that should raise it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Mutex;

use super::fleet::{self, Fleet};
use super::plan::{self, Episode, Server, Toxic};
use super::{alerts, audit, Chaos, Outcome};
use crate::models::Model;

impl Chaos {
    /// Runs one episode and measures the recovery after it.
    pub(super) async fn episode(
        &self,
        episode: &Episode,
        fleet: &Arc<Mutex<Fleet>>,
        http: &reqwest::Client,
        prometheus: &alerts::Prometheus,
    ) -> anyhow::Result<Outcome> {
        let mut notes = Vec::new();
        let mut failures = Vec::new();
        // Measured inside the episode when it does more after the recovery.
        let mut recovered = None;
        match episode {
            Episode::Stop {
                server,
                down_for,
                alert,
            } => {
                let stopped = super::ServerDown::new(&self.servers_down, *server);
                self.stack(&["down", server.name()])?;
                let mut states = AlertWatch::default();
                let until = Instant::now() + *down_for;
                while Instant::now() < until {
                    if *alert {
                        states.see(prometheus.alert_states(alerts::LAG_ALERT).await.ok());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                self.stack(&["up", server.name()])?;
                drop(stopped);
                if *alert {
                    let back = Instant::now();
                    recovered = Some(self.recover(fleet, http).await);
                    let (note, failure) =
                        self.alert_clears(states, prometheus, *down_for, back).await;
                    notes.push(note);
                    failures.extend(failure);
                }
            }
            Episode::Network {
                server,
                toxic,
                lasting,
            } => {
                self.network_fault(*server, *toxic, *lasting).await?;
            }
            Episode::Storm { rounds } => {
                self.storm(fleet, *rounds).await?;
            }
            Episode::Rebuild { model } => {
                let (note, failure) = self.rebuild(*model).await?;
                notes.push(note);
                failures.extend(failure);
            }
            Episode::BrokerLoss { broker, down_for } => {
                let (note, failure) = self.broker_loss(*broker, *down_for).await?;
                notes.push(note);
                failures.extend(failure);
            }
        }
        let recovery = match recovered {
            Some(recovery) => recovery,
            None => self.recover(fleet, http).await,
        };
        let mut outcome = Outcome::of(recovery);
        outcome.failures.extend(failures);
        outcome.notes = notes;
        Ok(outcome)
    }

    /// `dev/stack <args>`, which must succeed.
    pub(super) fn stack(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = std::process::Command::new(self.root.join("dev/stack"))
            .args(args)
            .current_dir(&self.root)
            .output()
            .context("running dev/stack")?;
        if !output.status.success() {
            bail!(
                "dev/stack {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    async fn network_fault(
        &self,
        server: Server,
        toxic: Toxic,
        lasting: Duration,
    ) -> anyhow::Result<()> {
        let mut added = Vec::new();
        for proxy in self.proxies.iter().filter(|p| p.server == server) {
            added.push((
                proxy.name.clone(),
                self.toxiproxy.add(&proxy.name, toxic).await?,
            ));
        }
        tokio::time::sleep(lasting).await;
        for (proxy, toxics) in added {
            self.toxiproxy.remove(&proxy, &toxics).await?;
        }
        Ok(())
    }

    /// Extra instances of every projector join their groups and leave again, `rounds`
    /// times: half of them by a clean stop, half by SIGKILL.
    async fn storm(&self, fleet: &Arc<Mutex<Fleet>>, rounds: u32) -> anyhow::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.args.seed ^ 0x5701_2e00);
        let mut extras: Vec<usize> = Vec::new();
        for round in 0..rounds {
            {
                let mut fleet = fleet.lock().await;
                if round == 0 {
                    for kind in &fleet::KINDS[1..] {
                        let index = fleet.add(*kind)?;
                        extras.push(index);
                    }
                } else {
                    for &index in &extras {
                        fleet.revive(index)?;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(3_000..6_000))).await;
            for (i, &index) in extras.iter().enumerate() {
                if (i + round as usize).is_multiple_of(2) {
                    let child = fleet.lock().await.detach(index, true);
                    if let Some(child) = child {
                        fleet::terminate(child, Duration::from_secs(20)).await;
                    }
                } else if let Some(mut child) = fleet.lock().await.detach(index, true) {
                    // SIGKILL: it leaves without a word, its partitions wait for the
                    // session timeout.
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(2_000..4_000))).await;
        }
        Ok(())
    }

    /// `prismctl rebuild <model>` killed mid-way, then run again to its end while a
    /// network fault slows the model's sink.
    async fn rebuild(&self, model: Model) -> anyhow::Result<(String, Option<String>)> {
        let name = plan::model_name(model);
        let sink = match model {
            Model::Ledger => Server::Mysql,
            Model::Search => Server::Elasticsearch,
            Model::Dashboard | Model::Fraud => Server::Redis,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(self.args.seed ^ 0x00ee_b11d);
        let mut first = self.spawn_rebuild(name, 1)?;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_500..5_000))).await;
        let killed_mid_way = matches!(first.try_wait(), Ok(None));
        let _ = first.start_kill();
        let _ = first.wait().await;
        let mut second = self.spawn_rebuild(name, 2)?;
        let started = Instant::now();
        self.network_fault(sink, Toxic::Latency, self.args.network)
            .await?;
        let status = tokio::time::timeout(Duration::from_secs(600), second.wait()).await;
        let took = started.elapsed().as_secs_f64();
        let note = format!(
            "{} the first run, second took {took:.0} s",
            if killed_mid_way {
                "killed"
            } else {
                "finished before the kill of"
            }
        );
        let failure = match status {
            Ok(Ok(status)) if status.success() => None,
            Ok(Ok(status)) => Some(format!(
                "the second rebuild exited {status}: {}",
                fleet::last_line(&self.dir.join(format!("logs/rebuild-{name}-2.log")))
            )),
            Ok(Err(e)) => Some(format!("waiting for the rebuild: {e}")),
            Err(_) => {
                let _ = second.start_kill();
                Some("the second rebuild took over 10 minutes".into())
            }
        };
        Ok((note, failure))
    }

    fn spawn_rebuild(&self, model: &str, attempt: u32) -> anyhow::Result<tokio::process::Child> {
        let log_path = self.dir.join(format!("logs/rebuild-{model}-{attempt}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let exe = std::env::current_exe().context("finding prismctl's own path")?;
        tokio::process::Command::new(exe)
            .args(["rebuild", model, "--drop-old", "--handover-timeout", "120"])
            .current_dir(&self.root)
            .env("PRISM_CONFIG", self.root.join("config/prism.toml"))
            .env("PRISM_PROFILE", self.dir.join("profile.toml"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().context("the rebuild's log")?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting prismctl rebuild")
    }

    /// One of three brokers killed (SIGKILL) for `down_for`, watching the topic's end
    /// offsets: publishing may pause for the leader election, not longer.
    async fn broker_loss(
        &self,
        broker: u8,
        down_for: Duration,
    ) -> anyhow::Result<(String, Option<String>)> {
        let Some(stack_name) = self
            .brokers
            .get(usize::from(broker.saturating_sub(1)))
            .and_then(|b| b.stack_name.clone())
        else {
            bail!("broker {broker} is not a broker of a cluster");
        };
        let ends = audit::EndOffsets::new(&self.config)?;
        self.stack(&["kill", &stack_name])?;
        let lost = Instant::now();
        let mut last_change = Instant::now();
        let mut last = ends.sum().await.unwrap_or(0);
        let mut stall = Duration::ZERO;
        while lost.elapsed() < down_for {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Ok(sum) = ends.sum().await {
                if sum > last {
                    last = sum;
                    last_change = Instant::now();
                }
            }
            stall = stall.max(last_change.elapsed());
        }
        self.stack(&["up", &stack_name])?;
        let bound = Duration::from_secs(20);
        let note = format!("longest publish pause {:.1} s", stall.as_secs_f64());
        let failure = (stall > bound).then(|| {
            format!(
                "publishing paused {:.1} s (bound {} s)",
                stall.as_secs_f64(),
                bound.as_secs()
            )
        });
        Ok((note, failure))
    }

    /// After the sink outage: the lag alert must have reached the state the outage allows
    /// and must clear once the projector caught up.
    async fn alert_clears(
        &self,
        states: AlertWatch,
        prometheus: &alerts::Prometheus,
        down_for: Duration,
        back: Instant,
    ) -> (String, Option<String>) {
        let wanted = if down_for >= Duration::from_secs(370) {
            "firing"
        } else {
            "pending"
        };
        let mut watch = states;
        let mut cleared = None;
        while back.elapsed() < Duration::from_secs(180) {
            let now = prometheus.alert_states(alerts::LAG_ALERT).await.ok();
            let quiet = now.as_ref().is_some_and(Vec::is_empty);
            watch.see(now);
            if quiet {
                cleared = Some(back.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let reached = if watch.firing {
            "firing"
        } else if watch.pending {
            "pending"
        } else {
            "never raised"
        };
        let note = format!(
            "{} {reached} for {}, {}",
            alerts::LAG_ALERT,
            watch.projectors.join("+"),
            match cleared {
                Some(d) => format!("cleared {:.0} s after the sink came back", d.as_secs_f64()),
                None => "not cleared".into(),
            }
        );
        let raised = match wanted {
            "firing" => watch.firing,
            _ => watch.pending || watch.firing,
        };
        let failure = if !raised {
            Some(format!("{} never reached {wanted}", alerts::LAG_ALERT))
        } else if cleared.is_none() {
            Some(format!(
                "{} did not clear within 3 minutes",
                alerts::LAG_ALERT
            ))
        } else {
            None
        };
        (note, failure)
    }
}

/// The states the lag alert was seen in.
#[derive(Debug, Default)]
struct AlertWatch {
    pending: bool,
    firing: bool,
    projectors: Vec<String>,
}

impl AlertWatch {
    fn see(&mut self, states: Option<Vec<(String, String)>>) {
        for (state, projector) in states.unwrap_or_default() {
            match state.as_str() {
                "pending" => self.pending = true,
                "firing" => self.firing = true,
                _ => {}
            }
            if !self.projectors.contains(&projector) {
                self.projectors.push(projector);
            }
        }
    }
}
