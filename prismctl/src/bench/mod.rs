//! `prismctl bench …`: measures a Prism component on this machine, next to the ceiling its
//! backing service reaches with the same work.
//!
//! - [`command`]: prism-command's commands/s next to its store's raw append ceiling.
//! - [`dashboard`]: prism-dashboard's projection rate next to the raw pipelined Redis
//!   ceiling, the delay until a command shows in its stream, 200 viewers, a day in Redis.
//! - [`fraud`]: prism-fraud's projection rate next to its lower raw ceiling (Kafka
//!   consume; Redis states and Parquet files), and the online API's latency.
//! - [`ledger`]: prism-ledger's replay rate next to the raw Kafka and MySQL ceilings.
//! - [`search`]: prism-search's projection rate next to the raw `_bulk` ceiling, its query
//!   latency and the delay until a command is searchable.
//! - [`visibility`]: the delay from a command's acceptance to its visibility in the ledger.

pub mod command;
pub mod dashboard;
pub mod fraud;
pub mod ledger;
pub mod redis_projection;
pub mod search;
pub mod visibility;

use std::process::ExitCode;

use prism_platform::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    target: Target,
}

#[derive(Debug, clap::Subcommand)]
enum Target {
    /// prism-command's commands/s and latency, next to the raw append ceiling of its store.
    ///
    /// Starts prism-command in this process with a fresh database/schema and topic, drives
    /// it over HTTP and, alternately, inserts the same commits directly into another fresh
    /// database/schema; prints both, their ratio, and drops everything it created.
    Command(command::Args),
    /// prism-dashboard's projection rate next to the raw pipelined Redis ceiling of the same
    /// writes, the delay until a command shows in its stream at a steady rate with many
    /// viewers, and (`--day`) Redis's memory after a day of traffic. See
    /// `bench/dashboard/mod.rs`.
    Dashboard(dashboard::Args),
    /// prism-fraud's projection rate next to the lower of its raw ceilings (raw Kafka
    /// consume; raw writes of the same Redis states and Parquet files), and its online
    /// API's latency at 8 clients. See `bench/fraud.rs`.
    Fraud(fraud::Args),
    /// prism-ledger's replay rate (events/s), next to the raw Kafka consume and raw MySQL
    /// write ceilings of the same events on this machine. See `bench/ledger/mod.rs`.
    Ledger(ledger::Args),
    /// prism-search's projection rate next to the raw `_bulk` ceiling of the same documents,
    /// its faceted query latency and command-to-searchable delay. See `bench/search/mod.rs`.
    Search(search::Args),
    /// The delay from a command's acceptance to its visibility in the ledger, under a steady
    /// open-loop rate. See `bench/visibility.rs`.
    Visibility(visibility::Args),
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    match &args.target {
        Target::Command(args) => command::run(config, args).await,
        Target::Dashboard(args) => dashboard::run(config, args).await,
        Target::Fraud(args) => fraud::run(config, args).await,
        Target::Ledger(args) => ledger::run(config, args).await,
        Target::Search(args) => search::run(config, args).await,
        Target::Visibility(args) => visibility::run(config, args).await,
    }
}
