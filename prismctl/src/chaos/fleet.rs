//! The chaos run's Prism processes: the real binaries (`prism-command`, `prism-ledger`, …)
//! as child processes, each on a port of its own that stays the same across restarts, with
//! its stderr in a log file of its own. A supervisor restarts whatever is down once its
//! restart time has come, as systemd or Kubernetes would: after a kill by the run, or after
//! the process exited by itself (counted, with the log's last line).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::services::Kind;

/// What the processes share: the binaries, the configuration and where logs go.
#[derive(Debug, Clone)]
pub struct Launch {
    pub bin_dir: PathBuf,
    pub root: PathBuf,
    pub base_config: PathBuf,
    pub profile: PathBuf,
    pub log_dir: PathBuf,
}

/// One process of the fleet.
#[derive(Debug)]
pub struct Slot {
    pub kind: Kind,
    /// `prism-ledger-1`.
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
    /// Down on purpose until then.
    restart_at: Option<Instant>,
    /// Not restarted by the supervisor (an extra instance that left).
    retired: bool,
    pub starts: u32,
    pub kills: u32,
    /// Exits nobody asked for, with the last log line before each.
    pub exits: Vec<String>,
}

impl Slot {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

/// The section of the configuration a service reads its listen address from.
fn section(kind: Kind) -> &'static str {
    match kind {
        Kind::Command => "COMMAND",
        Kind::Ledger => "LEDGER",
        Kind::Search => "SEARCH",
        Kind::Dashboard => "DASHBOARD",
        Kind::Fraud => "FRAUD",
    }
}

/// A free port on loopback (the OS's choice; kept for the slot's lifetime).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}

/// Every Prism process of the run.
#[derive(Debug)]
pub struct Fleet {
    launch: Launch,
    pub slots: Vec<Slot>,
}

impl Fleet {
    pub fn new(launch: Launch) -> anyhow::Result<Self> {
        for kind in KINDS {
            let binary = launch.bin_dir.join(kind.name());
            if !binary.is_file() {
                anyhow::bail!(
                    "{} is missing: build the services first (`cargo build --release --bins`), \
                     or point --bin-dir at them",
                    binary.display()
                );
            }
        }
        Ok(Self {
            launch,
            slots: Vec::new(),
        })
    }

    /// Adds a process of `kind` and starts it; returns its index.
    pub fn add(&mut self, kind: Kind) -> anyhow::Result<usize> {
        let number = self.slots.iter().filter(|s| s.kind == kind).count() + 1;
        let name = format!("{}-{number}", kind.name());
        let log = self.launch.log_dir.join(format!("{name}.log"));
        self.slots.push(Slot {
            kind,
            name,
            port: free_port()?,
            log,
            child: None,
            restart_at: None,
            retired: false,
            starts: 0,
            kills: 0,
            exits: Vec::new(),
        });
        let index = self.slots.len() - 1;
        self.spawn(index)?;
        Ok(index)
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let launch = &self.launch;
        let slot = &mut self.slots[index];
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&slot.log)
            .with_context(|| format!("opening {}", slot.log.display()))?;
        let child = Command::new(launch.bin_dir.join(slot.kind.name()))
            .current_dir(&launch.root)
            .env("PRISM_CONFIG", &launch.base_config)
            .env("PRISM_PROFILE", &launch.profile)
            .env(
                format!("PRISM_{}__LISTEN", section(slot.kind)),
                format!("127.0.0.1:{}", slot.port),
            )
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", slot.name))?;
        slot.child = Some(child);
        slot.restart_at = None;
        slot.starts += 1;
        Ok(())
    }

    /// SIGKILL: no shutdown, nothing stored on the way out. The supervisor starts it again
    /// after `down_for`.
    pub async fn kill(&mut self, index: usize, down_for: Duration) {
        let slot = &mut self.slots[index];
        if let Some(mut child) = slot.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
            slot.kills += 1;
        }
        slot.restart_at = Some(Instant::now() + down_for);
    }

    /// Takes the process out of the fleet for a clean stop ([`terminate`]), without
    /// holding the fleet meanwhile. Not restarted (`retire`) or restarted by the supervisor
    /// once it is gone.
    pub fn detach(&mut self, index: usize, retire: bool) -> Option<Child> {
        let slot = &mut self.slots[index];
        slot.retired = retire;
        slot.restart_at = if retire { None } else { Some(Instant::now()) };
        slot.child.take()
    }

    /// Starts a retired or held process again now.
    pub fn revive(&mut self, index: usize) -> anyhow::Result<()> {
        self.slots[index].retired = false;
        if self.slots[index].child.is_none() {
            self.spawn(index)?;
        }
        Ok(())
    }

    /// One supervisor round: notes processes that exited by themselves and restarts every
    /// process whose restart time has come. Returns the names of those that exited.
    pub fn supervise(&mut self) -> anyhow::Result<Vec<String>> {
        let mut exited = Vec::new();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if let Some(child) = slot.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let line = last_line(&slot.log);
                    slot.exits.push(format!("{status}: {line}"));
                    slot.child = None;
                    // A process that stops at once again (a server it needs is down) is
                    // not restarted in a tight loop.
                    slot.restart_at = Some(Instant::now() + Duration::from_secs(2));
                    exited.push(slot.name.clone());
                }
            }
            let due = slot.child.is_none()
                && !slot.retired
                && slot.restart_at.is_some_and(|at| at <= Instant::now());
            if due {
                self.spawn(index)?;
            }
        }
        Ok(exited)
    }

    /// The indexes of the processes the run keeps (not the storm's extras).
    pub fn regulars(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| !self.slots[i].retired)
            .collect()
    }

    /// Stops every process cleanly (SIGTERM to all at once, then `grace` for each).
    pub async fn stop_all(&mut self, grace: Duration) {
        let children: Vec<Child> = self
            .slots
            .iter_mut()
            .filter_map(|slot| {
                slot.retired = true;
                slot.child.take()
            })
            .collect();
        for child in &children {
            sigterm(child);
        }
        for child in children {
            wait_or_kill(child, grace).await;
        }
    }
}

/// Asks `child` to stop (SIGTERM: a Prism service stores its positions and leaves).
fn sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

/// SIGTERM, then SIGKILL after `grace`: a clean stop.
pub async fn terminate(child: Child, grace: Duration) {
    sigterm(&child);
    wait_or_kill(child, grace).await;
}

/// Waits `grace` for `child` to exit, then SIGKILL.
async fn wait_or_kill(mut child: Child, grace: Duration) {
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// The services of a fleet, in start order (the command side first: projectors wait for
/// their topic, which prism-command creates).
pub const KINDS: [Kind; 5] = [
    Kind::Command,
    Kind::Ledger,
    Kind::Search,
    Kind::Dashboard,
    Kind::Fraud,
];

/// The last non-empty line of a log (for an unexpected exit).
pub fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.chars().take(300).collect())
        .unwrap_or_default()
}

/// Lines of a log that tell of a panic.
pub fn panics(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("panicked"))
        .map(|l| l.chars().take(300).collect())
        .collect()
}

/// Waits until every `url`'s `/readyz` answers 200, for at most `limit`; `Err` names those
/// that did not, with their last answer.
pub async fn wait_ready(
    http: &reqwest::Client,
    targets: &[(String, String)],
    limit: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let mut waiting = Vec::new();
        for (name, url) in targets {
            match http.get(format!("{url}/readyz")).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    waiting.push(format!("{name} {status} {}", body.trim()));
                }
                Err(e) => waiting.push(format!("{name}: {e}")),
            }
        }
        if waiting.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= limit {
            return Err(waiting.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
