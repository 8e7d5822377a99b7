//! `prismctl chaos`: the whole platform under seeded traffic and seeded faults, then every
//! guarantee checked against the event store.
//!
//! The run starts two instances of every Prism service (`prism-command` and the four
//! projectors) as real processes on names of their own (a fresh topic, event store
//! database, ledger database, index prefix and Redis namespaces: [`Scratch`]), every one
//! reaching each backing server through a toxiproxy proxy. It sends the seeded traffic of
//! `prismctl loadgen` through both command instances, kills Prism processes with SIGKILL
//! at random moments all along ([`plan::KillDeck`]), and runs the episodes of the seeded
//! plan one after the other ([`plan::cycle`]): each backing server stopped and started
//! again, a network fault on the path to each, a rebalance storm, a rebuild killed mid-way
//! and run again under a network fault, and on a three-broker Kafka one broker lost. After
//! each episode it measures how long until every instance is ready again.
//!
//! At the end (traffic stopped, every process back) it checks, against the store:
//! the topic holds every stored event with each account's versions in order and no gap;
//! every command that got a success answer is stored; no dead letter; `verify` clean for
//! every read model; no process grew in memory beyond a bound; no panic in any log; and
//! the lag alert of Prism's rules went up during the long sink outage and cleared after.
//! It prints a table (fault, count, recovery, result) and exits 1 if anything failed.

mod alerts;
mod audit;
mod checks;
mod episodes;
mod fleet;
mod load;
mod plan;
mod toxics;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use prism_platform::auth::Scope;
use prism_platform::config::{EventStoreBackend, Sources};
use prism_platform::Config;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::loadgen::parse_duration;
use crate::services::{Kind, Scratch};
use crate::table::{lines, Align};
use checks::{memory, memory_check};
use fleet::{Fleet, Launch};
use plan::{KillDeck, Server};
use toxics::{Proxy, Toxiproxy};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep running faults until this much time has passed (e.g. 30m): cycles of every
    /// fault, the first one always whole (about 10 to 15 minutes), later ones cut off by
    /// the time.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the traffic and of the fault schedule: the same seed, the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Commands per second, over both prism-command instances.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Accounts the traffic opens and uses.
    #[arg(long, default_value_t = 200)]
    accounts: usize,
    /// How long each backing server stays stopped.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    outage: Duration,
    /// How long each network fault lasts.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    network: Duration,
    /// How long the sink outage of the lag-alert check lasts. Over 6 minutes the alert
    /// must reach `firing` (the rule's 60 s threshold plus its 5 minutes `for`); shorter,
    /// `pending`. Default: 75s, or 6m30s when --duration is 20 minutes or more.
    #[arg(long, value_parser = parse_duration)]
    alert_outage: Option<Duration>,
    /// Mean time between two kills of a Prism process (each ± half).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    kill_every: Duration,
    /// How long every instance may take to be ready again after a fault.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    recovery_limit: Duration,
    /// Partitions of the run's topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Toxiproxy's API.
    #[arg(long, default_value = toxics::DEFAULT_API)]
    toxiproxy: String,
    /// Where the service binaries are (default: beside prismctl).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the run's data (topic, databases, indexes, keys) afterwards.
    #[arg(long)]
    keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One row of the report: a fault, how often it ran, how long recovery took.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRow {
    pub fault: String,
    pub count: u32,
    /// The longest time from the end of the fault until every instance was ready.
    pub recovery_max_s: f64,
    pub failures: Vec<String>,
    /// What else was measured (the longest publish stall of a broker loss, the alert's
    /// states).
    pub notes: Vec<String>,
}

/// One end-of-run check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// What a run found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub cycles: u32,
    pub seconds: f64,
    pub kafka_brokers: usize,
    pub commands: BTreeMap<String, u64>,
    pub faults: Vec<FaultRow>,
    pub checks: Vec<Check>,
    pub ok: bool,
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    let root = std::env::current_dir().context("the current directory")?;
    if !root.join("dev/stack").is_file() {
        bail!("run `prismctl chaos` from the Prism checkout (it drives `dev/stack`)");
    }
    let report = Chaos::prepare(config, args, &root).await?.run().await?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        for line in render(&report) {
            writeln!(out, "{line}").context("writing the report")?;
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The report as text: the fault table, then the checks.
pub fn render(report: &Report) -> Vec<String> {
    let mut out = vec![format!(
        "chaos: seed {}, {} cycle(s), {:.0} s, {} Kafka broker(s)",
        report.seed, report.cycles, report.seconds, report.kafka_brokers
    )];
    let rows: Vec<Vec<String>> = report
        .faults
        .iter()
        .map(|f| {
            let result = if f.failures.is_empty() {
                "ok".to_owned()
            } else {
                format!("FAILED: {}", f.failures.join("; "))
            };
            let mut result = result;
            if !f.notes.is_empty() {
                result.push_str(&format!(" ({})", f.notes.join("; ")));
            }
            vec![
                f.fault.clone(),
                f.count.to_string(),
                format!("{:.1} s", f.recovery_max_s),
                result,
            ]
        })
        .collect();
    out.extend(lines(
        &[
            ("FAULT", Align::Left),
            ("COUNT", Align::Right),
            ("RECOVERY", Align::Right),
            ("RESULT", Align::Left),
        ],
        &rows,
    ));
    out.push(String::new());
    let commands: Vec<String> = report
        .commands
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    out.push(format!("commands: {}", commands.join(", ")));
    out.push(String::new());
    let checks: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| {
            vec![
                c.check.clone(),
                if c.ok { "ok" } else { "FAILED" }.to_owned(),
                c.detail.clone(),
            ]
        })
        .collect();
    out.extend(lines(
        &[
            ("CHECK", Align::Left),
            ("RESULT", Align::Left),
            ("DETAIL", Align::Left),
        ],
        &checks,
    ));
    out.push(String::new());
    out.push(if report.ok {
        "chaos: every check passed".to_owned()
    } else {
        "chaos: FAILED".to_owned()
    });
    out
}

/// A Kafka broker as the chaos run reaches it.
#[derive(Debug, Clone)]
struct Broker {
    /// `dev/stack`'s name for this broker alone (`kafka-2`), on a cluster.
    stack_name: Option<String>,
    /// Where its proxied listener listens (the proxy's upstream).
    proxied: String,
    /// Where it advertises that listener (where the proxy listens).
    advertised: String,
}

/// The brokers `dev/stack` runs: three when `.prism/kafka/brokers` says so, else one.
fn kafka_layout(root: &Path) -> Vec<Broker> {
    let brokers = std::fs::read_to_string(root.join(".prism/kafka/brokers"))
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .unwrap_or(1);
    if brokers >= 3 {
        (0..3)
            .map(|i| Broker {
                stack_name: Some(format!("kafka-{}", i + 1)),
                proxied: format!("127.0.0.1:{}", 19092 + i),
                advertised: format!("127.0.0.1:{}", 29092 + i),
            })
            .collect()
    } else {
        vec![Broker {
            stack_name: None,
            proxied: "127.0.0.1:19092".into(),
            advertised: "127.0.0.1:29092".into(),
        }]
    }
}

/// `host:port` of a URL-like address (`mysql://u:p@host:port/db`).
fn host_port(url: &str, default_port: u16) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    let host = parsed
        .host_str()
        .with_context(|| format!("{url:?} has no host"))?;
    Ok(format!("{host}:{}", parsed.port().unwrap_or(default_port)))
}

/// `url` with its host and port replaced by `address` (`127.0.0.1:4711`).
fn through(url: &str, address: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{address:?} is not host:port"))?;
    let port: u16 = port.parse().with_context(|| format!("{address:?}: port"))?;
    parsed
        .set_host(Some(host))
        .with_context(|| format!("setting the host of {url:?}"))?;
    parsed
        .set_port(Some(port))
        .map_err(|()| anyhow::anyhow!("setting the port of {url:?}"))?;
    Ok(parsed.to_string())
}

/// The run, set up.
struct Chaos {
    args: ChaosArgs,
    root: PathBuf,
    dir: PathBuf,
    base: Config,
    config: Config,
    scratch: Scratch,
    toxiproxy: Toxiproxy,
    proxies: Vec<Proxy>,
    brokers: Vec<Broker>,
    token: String,
    /// Set while a recovery is measured: the kills wait, so that "every instance ready"
    /// can happen at all.
    kills_paused: Arc<AtomicBool>,
    /// The backing servers an episode has stopped right now. A process killed meanwhile
    /// cannot be ready before the servers it [`needs`] are back (a projector cannot open
    /// its store), so its recovery is counted from the end of their outage.
    servers_down: ServersDown,
}

type ServersDown = Arc<tokio::sync::watch::Sender<Vec<Server>>>;

/// `server` counted in [`Chaos::servers_down`] while this lives.
pub(super) struct ServerDown {
    down: ServersDown,
    server: Server,
}

impl ServerDown {
    fn new(down: &ServersDown, server: Server) -> Self {
        down.send_modify(|servers| servers.push(server));
        Self {
            down: Arc::clone(down),
            server,
        }
    }
}

impl Drop for ServerDown {
    fn drop(&mut self) {
        self.down.send_modify(|servers| {
            if let Some(i) = servers.iter().position(|s| *s == self.server) {
                servers.remove(i);
            }
        });
    }
}

/// The servers a process of `kind` must reach to be ready: prism-command its event store
/// (FerretDB, on PostgreSQL), a projector Kafka and its read model's store.
fn needs(kind: Kind) -> &'static [Server] {
    match kind {
        Kind::Command => &[Server::Mongodb, Server::Postgres],
        Kind::Ledger => &[Server::Kafka, Server::Mysql],
        Kind::Search => &[Server::Kafka, Server::Elasticsearch],
        Kind::Dashboard | Kind::Fraud => &[Server::Kafka, Server::Redis],
    }
}

/// The parts of [`Args`] the run uses, owned.
#[derive(Debug, Clone)]
struct ChaosArgs {
    duration: Duration,
    seed: u64,
    rate: f64,
    accounts: usize,
    outage: Duration,
    network: Duration,
    alert_outage: Duration,
    kill_every: Duration,
    recovery_limit: Duration,
    partitions: i32,
    bin_dir: PathBuf,
    keep: bool,
}

impl std::fmt::Debug for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaos").field("dir", &self.dir).finish()
    }
}

impl Chaos {
    async fn prepare(base: &Config, args: &Args, root: &Path) -> anyhow::Result<Self> {
        let bin_dir = match &args.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()
                .context("finding prismctl's own path")?
                .parent()
                .map(Path::to_path_buf)
                .context("prismctl's directory")?,
        };
        let alert_outage =
            args.alert_outage
                .unwrap_or(if args.duration >= Duration::from_secs(20 * 60) {
                    Duration::from_secs(390)
                } else {
                    Duration::from_secs(75)
                });
        let chaos_args = ChaosArgs {
            duration: args.duration,
            seed: args.seed,
            rate: args.rate,
            accounts: args.accounts.max(10),
            outage: args.outage,
            network: args.network,
            alert_outage,
            kill_every: args.kill_every.max(Duration::from_secs(1)),
            recovery_limit: args.recovery_limit,
            partitions: args.partitions.max(1),
            bin_dir,
            keep: args.keep,
        };
        let toxiproxy = Toxiproxy::connect(&args.toxiproxy).await?;
        let scratch = Scratch::new("prism_chaos", EventStoreBackend::Mongodb);
        let dir = root.join(".prism/chaos").join(&scratch.store);
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let free = free_bytes(&dir)?;
        if free < MIN_FREE_BYTES {
            let _ = std::fs::remove_dir_all(&dir);
            bail!(
                "only {:.1} GiB free on the disk of {}: a run writes every process's log there \
                 and the servers' data grows with its traffic; free at least {} GiB first",
                free as f64 / GIB as f64,
                dir.display(),
                MIN_FREE_BYTES / GIB
            );
        }
        let brokers = kafka_layout(root);
        let mut proxies = Vec::new();
        for (i, broker) in brokers.iter().enumerate() {
            proxies.push(Proxy {
                name: format!("chaos_kafka_{}", i + 1),
                server: Server::Kafka,
                listen: broker.advertised.clone(),
                upstream: broker.proxied.clone(),
            });
        }
        let upstreams = [
            (
                Server::Mongodb,
                host_port(base.mongodb.uri.expose(), 27017)?,
            ),
            (
                Server::Postgres,
                host_port(base.postgres.url.expose(), 5432)?,
            ),
            (Server::Mysql, host_port(base.mysql.url.expose(), 3306)?),
            (
                Server::Elasticsearch,
                host_port(base.elasticsearch.url.expose(), 9200)?,
            ),
            (Server::Redis, host_port(base.redis.url.expose(), 6379)?),
        ];
        for (server, upstream) in upstreams {
            proxies.push(Proxy {
                name: format!("chaos_{}", server.name()),
                server,
                listen: format!("127.0.0.1:{}", fleet::free_port()?),
                upstream,
            });
        }
        for proxy in &proxies {
            toxiproxy.create(proxy).await?;
        }
        let listen = |server: Server| {
            proxies
                .iter()
                .find(|p| p.server == server)
                .map(|p| p.listen.clone())
                .unwrap_or_default()
        };
        let kafka: Vec<String> = proxies
            .iter()
            .filter(|p| p.server == Server::Kafka)
            .map(|p| p.listen.clone())
            .collect();
        let ferretdb = match base.mongodb.ferretdb_postgres() {
            Some(url) => format!(
                "ferretdb_postgres_url = {:?}\n",
                through(url.expose(), &listen(Server::Postgres))?
            ),
            None => String::new(),
        };
        let profile_text = format!(
            r#"# The chaos run's profile: names of its own, every server through toxiproxy.
[log]
level = "info"
format = "json"

[kafka]
bootstrap_servers = {kafka:?}
topic = {topic:?}
topic_partitions = {partitions}
topic_replication_factor = {replication}

[event_store]
backend = "mongodb"

[mongodb]
uri = {mongo:?}
database = {store:?}
{ferretdb}
[postgres]
url = {postgres:?}

[mysql]
url = {mysql:?}

[elasticsearch]
url = {elasticsearch:?}

[redis]
url = {redis:?}

[relay]
sweep_interval_ms = 200

[projector]
session_timeout_ms = 6000
retry_backoff_ms = 50
retry_backoff_max_ms = 2000

[ledger]
database = {ledger:?}
group_id = {group:?}

[search]
index_prefix = {search:?}
group_id = {search_group:?}

[dashboard]
namespace = {dashboard:?}
group_id = {dashboard_group:?}

[fraud]
namespace = {fraud:?}
group_id = {fraud_group:?}
offline_dir = {offline:?}
"#,
            kafka = kafka.join(","),
            topic = scratch.topic,
            partitions = chaos_args.partitions,
            replication = if brokers.len() >= 3 { 3 } else { 1 },
            mongo = through(base.mongodb.uri.expose(), &listen(Server::Mongodb))?,
            store = scratch.store,
            postgres = through(base.postgres.url.expose(), &listen(Server::Postgres))?,
            mysql = through(base.mysql.url.expose(), &listen(Server::Mysql))?,
            elasticsearch = through(
                base.elasticsearch.url.expose(),
                &listen(Server::Elasticsearch)
            )?,
            redis = through(base.redis.url.expose(), &listen(Server::Redis))?,
            ledger = scratch.ledger_database,
            group = scratch.group_id,
            search = scratch.search_prefix,
            search_group = scratch.search_group(),
            dashboard = scratch.dashboard_namespace,
            dashboard_group = scratch.dashboard_group(),
            fraud = scratch.fraud_namespace,
            fraud_group = scratch.fraud_group(),
            offline = dir.join("fraud-offline").display().to_string(),
        );
        let profile = dir.join("profile.toml");
        std::fs::write(&profile, profile_text)
            .with_context(|| format!("writing {}", profile.display()))?;
        let config = Sources {
            base: Some(root.join("config/prism.toml")),
            profile: Some(profile.display().to_string()),
        }
        .load()
        .context("loading the chaos run's profile")?;
        let token = config
            .auth
            .token_with(Scope::Commands)
            .map(|t| t.expose().to_owned())
            .context("no token with the scope \"commands\" in [[auth.tokens]]")?;
        Ok(Self {
            args: chaos_args,
            root: root.to_path_buf(),
            dir,
            base: base.clone(),
            config,
            scratch,
            toxiproxy,
            proxies,
            brokers,
            token,
            kills_paused: Arc::new(AtomicBool::new(false)),
            servers_down: Arc::new(tokio::sync::watch::channel(Vec::new()).0),
        })
    }

    async fn run(self) -> anyhow::Result<Report> {
        let started = Instant::now();
        let launch = Launch {
            bin_dir: self.args.bin_dir.clone(),
            root: self.root.clone(),
            base_config: self.root.join("config/prism.toml"),
            profile: self.dir.join("profile.toml"),
            log_dir: self.dir.join("logs"),
        };
        eprintln!(
            "chaos: logs and profile in {} (seed {})",
            self.dir.display(),
            self.args.seed
        );
        let fleet = Arc::new(Mutex::new(Fleet::new(launch)?));
        let outcome = tokio::select! {
            outcome = self.run_fleet(&fleet, started) => outcome,
            signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}; cleaning up")),
        };
        fleet.lock().await.stop_all(Duration::from_secs(30)).await;
        for proxy in &self.proxies {
            let _ = self.toxiproxy.delete(&proxy.name).await;
        }
        // An interrupted episode may have left a server stopped: start every one (`up` of
        // a running server does nothing).
        for server in Server::ALL {
            if let Err(e) = self.stack(&["up", server.name()]) {
                eprintln!("chaos: {e:#}");
            }
        }
        if !self.args.keep {
            for failure in self.scratch.remove(&self.base, false).await {
                eprintln!("chaos: cleaning up: {failure}");
            }
        }
        outcome
    }

    async fn run_fleet(
        &self,
        fleet: &Arc<Mutex<Fleet>>,
        started: Instant,
    ) -> anyhow::Result<Report> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        // prism-command first: it creates the topic the projectors wait for.
        {
            let mut fleet = fleet.lock().await;
            for _ in 0..2 {
                fleet.add(Kind::Command)?;
            }
        }
        wait_fleet_ready(fleet, &http, Duration::from_secs(120))
            .await
            .map_err(|e| anyhow::anyhow!("prism-command did not start: {e}"))?;
        {
            let mut fleet = fleet.lock().await;
            for kind in &fleet::KINDS[1..] {
                for _ in 0..2 {
                    fleet.add(*kind)?;
                }
            }
        }
        let supervisor = {
            let fleet = Arc::clone(fleet);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if let Err(e) = fleet.lock().await.supervise() {
                        eprintln!("chaos: restarting a process: {e:#}");
                    }
                }
            })
        };
        let result = self.run_supervised(fleet, &http, started).await;
        supervisor.abort();
        result
    }

    async fn run_supervised(
        &self,
        fleet: &Arc<Mutex<Fleet>>,
        http: &reqwest::Client,
        started: Instant,
    ) -> anyhow::Result<Report> {
        wait_fleet_ready(fleet, http, Duration::from_secs(180))
            .await
            .map_err(|e| anyhow::anyhow!("the fleet did not start: {e}"))?;
        let targets: Vec<(String, String)> = {
            let fleet = fleet.lock().await;
            fleet
                .slots
                .iter()
                .map(|s| (s.kind.name().to_owned(), format!("127.0.0.1:{}", s.port)))
                .collect()
        };
        let prometheus = alerts::Prometheus::start(
            &self.dir.join("prometheus"),
            &self.root.join("dashboards/alerts"),
            &targets,
        )
        .await?;
        let result = self.run_load(fleet, http, &prometheus, started).await;
        prometheus.stop().await;
        result
    }

    async fn run_load(
        &self,
        fleet: &Arc<Mutex<Fleet>>,
        http: &reqwest::Client,
        prometheus: &alerts::Prometheus,
        started: Instant,
    ) -> anyhow::Result<Report> {
        let clients = {
            let fleet = fleet.lock().await;
            fleet
                .slots
                .iter()
                .filter(|s| s.kind == Kind::Command)
                .map(|s| load::client(&s.url(), &self.token, 8))
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        let traffic = load::Load::start(
            clients,
            self.args.seed,
            self.args.accounts,
            self.args.rate,
            8,
        );
        // Warm up: every account opened and some traffic through every model.
        let warm = Instant::now();
        while traffic.succeeded() < self.args.accounts * 2
            && warm.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("chaos: warmed up with {} commands", traffic.succeeded());
        let regulars = fleet.lock().await.regulars();
        let baseline = memory(fleet, &regulars).await;
        let rules = prometheus.rule_count().await?;
        let mut rows: BTreeMap<String, FaultRow> = BTreeMap::new();
        let (kill_stop, kill_rows) = self.start_kills(fleet, http, &regulars);
        let mut cycles = 0;
        let mut failed_setup = None;
        'cycles: loop {
            let episodes = plan::cycle(&self.plan_settings(), cycles);
            cycles += 1;
            for episode in episodes {
                // The first cycle always runs whole; later ones end with the time.
                if cycles > 1 && started.elapsed() >= self.args.duration {
                    break 'cycles;
                }
                eprintln!(
                    "chaos: [{:>5.0} s] {}",
                    started.elapsed().as_secs_f64(),
                    episode.fault()
                );
                match self.episode(&episode, fleet, http, prometheus).await {
                    Ok(outcome) => record(&mut rows, &episode.fault(), outcome),
                    Err(e) => {
                        // The run itself could not go on (a `dev/stack` command failed).
                        failed_setup = Some(format!("{}: {e:#}", episode.fault()));
                        break 'cycles;
                    }
                }
            }
            if started.elapsed() >= self.args.duration {
                break;
            }
        }
        let _ = kill_stop.send(());
        let kills = kill_rows.await.unwrap_or_default();
        for (fault, outcome) in kills {
            record(&mut rows, &fault, outcome);
        }
        // Every process back, then the traffic stops and everything settles.
        let recovered = self.recover(fleet, http).await;
        let seen = traffic.stop().await;
        let mut checks = Vec::new();
        if let Some(failure) = failed_setup {
            checks.push(Check {
                check: "the run".into(),
                ok: false,
                detail: failure,
            });
        }
        checks.push(Check {
            check: "every instance ready at the end".into(),
            ok: recovered.is_ok(),
            detail: match &recovered {
                Ok(d) => format!("after {:.1} s", d.as_secs_f64()),
                Err(e) => e.clone(),
            },
        });
        checks.push(Check {
            check: "alert rules loaded".into(),
            ok: rules > 0,
            detail: format!("{rules} rules from dashboards/alerts"),
        });
        self.final_checks(&seen, &mut checks).await;
        let after = memory(fleet, &regulars).await;
        checks.push(memory_check(&baseline, &after));
        checks.push(self.panic_check(fleet).await);
        let faults: Vec<FaultRow> = rows.into_values().collect();
        let ok = checks.iter().all(|c| c.ok) && faults.iter().all(|f| f.failures.is_empty());
        Ok(Report {
            seed: self.args.seed,
            cycles,
            seconds: started.elapsed().as_secs_f64(),
            kafka_brokers: self.brokers.len(),
            commands: seen.outcomes,
            faults,
            checks,
            ok,
        })
    }

    fn plan_settings(&self) -> plan::Settings {
        plan::Settings {
            seed: self.args.seed,
            outage: self.args.outage,
            network: self.args.network,
            alert_outage: self.args.alert_outage,
            kafka_cluster: self.brokers.len() >= 3,
        }
    }

    /// Kills Prism processes (SIGKILL) at random moments until `stop`; each comes back
    /// after a short while (the supervisor) and its time to ready is measured.
    fn start_kills(
        &self,
        fleet: &Arc<Mutex<Fleet>>,
        http: &reqwest::Client,
        regulars: &[usize],
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Vec<(String, Outcome)>>,
    ) {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let mut deck = KillDeck::new(self.args.seed, regulars.len(), self.args.kill_every);
        let (fleet, http, regulars) = (Arc::clone(fleet), http.clone(), regulars.to_vec());
        let paused = Arc::clone(&self.kills_paused);
        let outages = self.servers_down.subscribe();
        let limit = self.args.recovery_limit;
        let task = tokio::spawn(async move {
            let mut measures = tokio::task::JoinSet::new();
            loop {
                let (wait, victim, down) = deck.next();
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(wait) => {}
                }
                while paused.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let index = regulars[victim];
                let (name, url, kind) = {
                    let mut fleet = fleet.lock().await;
                    fleet.kill(index, down).await;
                    let slot = &fleet.slots[index];
                    (slot.kind.name().to_owned(), slot.url(), slot.kind)
                };
                let http = http.clone();
                let mut outages = outages.clone();
                measures.spawn(async move {
                    tokio::time::sleep(down).await;
                    // Killed during an outage of a server it needs: ready is possible
                    // only after it.
                    let waiting = Instant::now();
                    let needed = needs(kind);
                    let _ = outages
                        .wait_for(|down| !down.iter().any(|s| needed.contains(s)))
                        .await;
                    let waited = waiting.elapsed();
                    let ready = fleet::wait_ready(&http, &[(name.clone(), url)], limit).await;
                    let mut outcome = Outcome::of(ready.map(|d| d + down));
                    if waited >= Duration::from_secs(1) {
                        outcome.notes.push(KILLED_DURING_AN_OUTAGE.into());
                    }
                    (format!("kill -9 {name}"), outcome)
                });
            }
            let mut rows = Vec::new();
            while let Some(done) = measures.join_next().await {
                if let Ok(row) = done {
                    rows.push(row);
                }
            }
            rows
        });
        (stop, task)
    }
}

/// How an episode or a kill went.
#[derive(Debug, Default)]
struct Outcome {
    recovery: Duration,
    failures: Vec<String>,
    notes: Vec<String>,
}

impl Outcome {
    fn of(recovery: Result<Duration, String>) -> Self {
        match recovery {
            Ok(recovery) => Self {
                recovery,
                ..Default::default()
            },
            Err(waiting) => Self {
                recovery: Duration::ZERO,
                failures: vec![format!("not ready again: {waiting}")],
                notes: Vec::new(),
            },
        }
    }
}

fn record(rows: &mut BTreeMap<String, FaultRow>, fault: &str, outcome: Outcome) {
    let row = rows.entry(fault.to_owned()).or_insert_with(|| FaultRow {
        fault: fault.to_owned(),
        count: 0,
        recovery_max_s: 0.0,
        failures: Vec::new(),
        notes: Vec::new(),
    });
    row.count += 1;
    row.recovery_max_s = row.recovery_max_s.max(outcome.recovery.as_secs_f64());
    row.failures.extend(outcome.failures);
    for note in outcome.notes {
        if !row.notes.contains(&note) {
            row.notes.push(note);
        }
    }
}

/// The note of a kill whose recovery was counted from the end of a server outage.
const KILLED_DURING_AN_OUTAGE: &str =
    "some during an outage of a server they need: counted from its end";

/// SIGINT or SIGTERM, by name.
async fn interrupted() -> &'static str {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = terminate => "SIGTERM",
    }
}

impl Chaos {
    /// Waits until every process of the fleet is ready, the kills paused meanwhile; the
    /// time it took, or who was not ready after `--recovery-limit`.
    async fn recover(
        &self,
        fleet: &Arc<Mutex<Fleet>>,
        http: &reqwest::Client,
    ) -> Result<Duration, String> {
        self.kills_paused.store(true, Ordering::Relaxed);
        let recovered = wait_fleet_ready(fleet, http, self.args.recovery_limit).await;
        self.kills_paused.store(false, Ordering::Relaxed);
        recovered
    }
}

/// Every running process of the fleet ready, within `limit`.
async fn wait_fleet_ready(
    fleet: &Arc<Mutex<Fleet>>,
    http: &reqwest::Client,
    limit: Duration,
) -> Result<Duration, String> {
    let targets: Vec<(String, String)> = {
        let fleet = fleet.lock().await;
        fleet
            .regulars()
            .into_iter()
            .map(|i| (fleet.slots[i].name.clone(), fleet.slots[i].url()))
            .collect()
    };
    fleet::wait_ready(http, &targets, limit).await
}

const GIB: u64 = 1 << 30;
/// The least free space a run starts with: a 30-minute run's logs took about 400 MB, and a
/// full disk mid-run fails servers and checks for reasons that are not the ones tested.
const MIN_FREE_BYTES: u64 = 3 * GIB;

/// Free space on the filesystem holding `path`, in bytes (`df -P -k`).
fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    let output = std::process::Command::new("df")
        .args(["-P", "-k"])
        .arg(path)
        .output()
        .context("running df")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| {
            format!(
                "reading the free space of {} from df: {text}",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_goes_through_a_proxy_with_its_credentials_and_path_kept() {
        assert_eq!(
            through(
                "mysql://prism:secret@127.0.0.1:3306/prism",
                "127.0.0.1:4711"
            )
            .ok(),
            Some("mysql://prism:secret@127.0.0.1:4711/prism".to_owned())
        );
        assert_eq!(
            through("redis://127.0.0.1:6379/0", "127.0.0.1:4712").ok(),
            Some("redis://127.0.0.1:4712/0".to_owned())
        );
        assert_eq!(
            host_port("http://127.0.0.1/", 9200).ok(),
            Some("127.0.0.1:9200".to_owned())
        );
        assert!(through("not a url", "127.0.0.1:1").is_err());
    }
}
