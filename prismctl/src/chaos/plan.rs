//! The seeded fault schedule of `prismctl chaos`: which episodes run, in which order, for
//! how long. Pure: the same seed and settings give the same plan, so a failing run can be
//! replayed with its `--seed`.
//!
//! A run is one or more *cycles*. Every cycle holds each fault once: every backing server
//! stopped, a network fault on the path to every server, a rebalance storm, a rebuild
//! killed mid-way and started again, and — on a three-broker Kafka — one broker lost. The
//! order is shuffled per cycle, and the network fault of a server rotates through the four
//! kinds from cycle to cycle, so four cycles cover every server with every kind. The kills
//! of Prism processes are not episodes: they run beside them all the time (see
//! [`KillDeck`]).

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::models::Model;

/// A backing server, by its `dev/stack` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Server {
    Kafka,
    Mongodb,
    Postgres,
    Mysql,
    Elasticsearch,
    Redis,
}

impl Server {
    pub const ALL: [Server; 6] = [
        Server::Kafka,
        Server::Mongodb,
        Server::Postgres,
        Server::Mysql,
        Server::Elasticsearch,
        Server::Redis,
    ];

    /// The name `dev/stack` knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Server::Kafka => "kafka",
            Server::Mongodb => "mongodb",
            Server::Postgres => "postgres",
            Server::Mysql => "mysql",
            Server::Elasticsearch => "elasticsearch",
            Server::Redis => "redis",
        }
    }
}

/// A network fault between Prism and a server (a toxiproxy toxic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toxic {
    /// 300 ms ± 100 ms added to every answer.
    Latency,
    /// Connections reset (TCP RST) mid-request.
    Reset,
    /// Nothing gets through and nothing is closed: requests time out.
    Blackhole,
    /// 64 KB/s each way.
    Bandwidth,
}

impl Toxic {
    pub const ALL: [Toxic; 4] = [
        Toxic::Latency,
        Toxic::Reset,
        Toxic::Blackhole,
        Toxic::Bandwidth,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Toxic::Latency => "latency",
            Toxic::Reset => "reset",
            Toxic::Blackhole => "blackhole",
            Toxic::Bandwidth => "bandwidth",
        }
    }
}

/// One fault of the schedule, run to its end before the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Episode {
    /// `dev/stack down <server>`, wait, `dev/stack up <server>`. `alert`: this outage is
    /// the one during which the lag alert must fire (a sink, long enough for the rule).
    Stop {
        server: Server,
        down_for: Duration,
        alert: bool,
    },
    /// A toxic on every proxy of `server` for `lasting`.
    Network {
        server: Server,
        toxic: Toxic,
        lasting: Duration,
    },
    /// Extra instances of every projector join and leave the groups `rounds` times.
    Storm { rounds: u32 },
    /// `prismctl rebuild <model>` started, killed (SIGKILL) mid-way, started again and
    /// run to its end while a network fault slows the model's sink.
    Rebuild { model: Model },
    /// One Kafka broker of three killed (SIGKILL) and started again after `down_for`.
    BrokerLoss { broker: u8, down_for: Duration },
}

impl Episode {
    /// The fault's name in the report's table.
    pub fn fault(&self) -> String {
        match self {
            Episode::Stop { server, alert, .. } => {
                if *alert {
                    format!("{} stopped (lag alert)", server.name())
                } else {
                    format!("{} stopped", server.name())
                }
            }
            Episode::Network { server, toxic, .. } => {
                format!("network {} → {}", toxic.name(), server.name())
            }
            Episode::Storm { .. } => "rebalance storm".into(),
            Episode::Rebuild { model } => format!("rebuild {} killed, rerun", model_name(*model)),
            Episode::BrokerLoss { .. } => "kafka broker lost (1 of 3)".into(),
        }
    }
}

pub fn model_name(model: Model) -> &'static str {
    match model {
        Model::Ledger => "ledger",
        Model::Search => "search",
        Model::Dashboard => "dashboard",
        Model::Fraud => "fraud",
    }
}

/// What shapes a plan.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    /// How long a server stays stopped.
    pub outage: Duration,
    /// How long a network fault lasts.
    pub network: Duration,
    /// How long the sink outage of the lag-alert check lasts (at least `outage`).
    pub alert_outage: Duration,
    /// Three Kafka brokers: plan a broker loss.
    pub kafka_cluster: bool,
}

/// The episodes of cycle `index` (0 for the first).
pub fn cycle(settings: &Settings, index: u32) -> Vec<Episode> {
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed ^ (u64::from(index) << 32));
    let mut episodes = Vec::new();
    for server in Server::ALL {
        // The lag alert needs a sink down long enough: MariaDB, the ledger's sink, in the
        // first cycle.
        let alert = index == 0 && server == Server::Mysql;
        episodes.push(Episode::Stop {
            server,
            down_for: if alert {
                settings.alert_outage.max(settings.outage)
            } else {
                settings.outage
            },
            alert,
        });
    }
    // Server i gets kind (i + cycle) mod 4: every kind in each cycle, every pair in four.
    for (i, server) in Server::ALL.into_iter().enumerate() {
        let kind = Toxic::ALL[(i + index as usize) % Toxic::ALL.len()];
        episodes.push(Episode::Network {
            server,
            toxic: kind,
            lasting: settings.network,
        });
    }
    episodes.push(Episode::Storm { rounds: 3 });
    episodes.push(Episode::Rebuild {
        model: Model::ALL[(index as usize + rng.gen_range(0..4)) % Model::ALL.len()],
    });
    if settings.kafka_cluster {
        episodes.push(Episode::BrokerLoss {
            broker: rng.gen_range(1..=3),
            down_for: settings.outage,
        });
    }
    episodes.shuffle(&mut rng);
    episodes
}

/// The kills of Prism processes that run beside the episodes: every `mean` on average (±
/// half), the next process from a shuffled deck of all of them, so each one is killed once
/// before any is killed twice.
#[derive(Debug)]
pub struct KillDeck {
    rng: ChaCha8Rng,
    processes: usize,
    deck: Vec<usize>,
    mean: Duration,
}

impl KillDeck {
    pub fn new(seed: u64, processes: usize, mean: Duration) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed.wrapping_add(0x6b69_6c6c)),
            processes,
            deck: Vec::new(),
            mean,
        }
    }

    /// How long to wait before the next kill, which process it hits (an index into the
    /// fleet's processes), and how long that process stays down before it is restarted.
    pub fn next(&mut self) -> (Duration, usize, Duration) {
        if self.deck.is_empty() {
            self.deck = (0..self.processes).collect();
            self.deck.shuffle(&mut self.rng);
        }
        let victim = self.deck.pop().unwrap_or(0);
        let wait = self.mean.mul_f64(self.rng.gen_range(0.5..1.5));
        let down = Duration::from_millis(self.rng.gen_range(200..2_500));
        (wait, victim, down)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn settings(seed: u64, kafka_cluster: bool) -> Settings {
        Settings {
            seed,
            outage: Duration::from_secs(30),
            network: Duration::from_secs(15),
            alert_outage: Duration::from_secs(75),
            kafka_cluster,
        }
    }

    #[test]
    fn a_cycle_stops_every_server_and_faults_the_path_to_each_with_every_kind() {
        let episodes = cycle(&settings(7, false), 0);
        let stopped: HashSet<Server> = episodes
            .iter()
            .filter_map(|e| match e {
                Episode::Stop { server, .. } => Some(*server),
                _ => None,
            })
            .collect();
        assert_eq!(stopped.len(), Server::ALL.len());
        let kinds: HashSet<&str> = episodes
            .iter()
            .filter_map(|e| match e {
                Episode::Network { toxic, .. } => Some(toxic.name()),
                _ => None,
            })
            .collect();
        assert_eq!(kinds.len(), Toxic::ALL.len(), "{episodes:?}");
        assert!(episodes.contains(&Episode::Storm { rounds: 3 }));
        assert!(episodes
            .iter()
            .any(|e| matches!(e, Episode::Rebuild { .. })));
        assert!(!episodes
            .iter()
            .any(|e| matches!(e, Episode::BrokerLoss { .. })));
        assert!(cycle(&settings(7, true), 0)
            .iter()
            .any(|e| matches!(e, Episode::BrokerLoss { .. })));
    }

    #[test]
    fn only_the_first_cycle_holds_the_long_sink_outage_of_the_alert_check() {
        let alert_outages = |index| {
            cycle(&settings(3, false), index)
                .into_iter()
                .filter(|e| {
                    matches!(e, Episode::Stop { alert: true, down_for, server: Server::Mysql }
                        if *down_for == Duration::from_secs(75))
                })
                .count()
        };
        assert_eq!(alert_outages(0), 1);
        assert_eq!(alert_outages(1), 0);
    }

    #[test]
    fn four_cycles_put_every_kind_of_network_fault_on_every_server() {
        let mut pairs = HashSet::new();
        for index in 0..4 {
            for episode in cycle(&settings(11, false), index) {
                if let Episode::Network { server, toxic, .. } = episode {
                    pairs.insert((server, toxic.name()));
                }
            }
        }
        assert_eq!(pairs.len(), Server::ALL.len() * Toxic::ALL.len());
    }

    #[test]
    fn a_seed_gives_one_plan_and_another_seed_another_order() {
        assert_eq!(cycle(&settings(5, true), 2), cycle(&settings(5, true), 2));
        let orders: HashSet<Vec<String>> = (0..5)
            .map(|seed| {
                cycle(&settings(seed, false), 0)
                    .iter()
                    .map(Episode::fault)
                    .collect()
            })
            .collect();
        assert!(orders.len() > 1, "the order depends on the seed");
    }

    #[test]
    fn the_kill_deck_kills_every_process_once_before_any_twice() {
        let mut deck = KillDeck::new(9, 10, Duration::from_secs(10));
        let mut first: Vec<usize> = (0..10).map(|_| deck.next().1).collect();
        first.sort_unstable();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        for _ in 0..25 {
            let (wait, victim, down) = deck.next();
            assert!(victim < 10);
            assert!(wait >= Duration::from_secs(5) && wait <= Duration::from_secs(15));
            assert!(down < Duration::from_secs(3));
        }
    }
}
