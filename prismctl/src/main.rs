//! `prismctl`: Prism's admin CLI. The commands live in the library (`src/lib.rs`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use prismctl::{bench, chaos, demo, doctor, export, loadgen, rebuild, seed, status, verify};

/// The projectors' allocator: `demo` and the benches run the services in this process, and
/// should measure them as their binaries run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "prismctl", version, about = "Operate a Prism installation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every backing service: address, server version, round-trip time, status.
    ///
    /// Exits 0 only if every required service answers.
    Doctor(doctor::Args),
    /// Send seeded, reproducible traffic to prism-command over HTTP.
    ///
    /// Opens --accounts accounts across countries and currencies, then sends deposits,
    /// withdrawals, card payments and a --suspicious-share of suspicious patterns at --rate
    /// commands per second. Exits 1 on transport errors, 5xx or unexpected 4xx answers;
    /// rule rejections (422) and conflicts (409) are expected outcomes.
    Loadgen(loadgen::Args),
    /// Measure a Prism component on this machine.
    Bench(bench::Args),
    /// Show where each projector stands on each partition: stored position, end offset, lag.
    ///
    /// Exits 1 if a service does not answer (named in the output).
    Status(status::Args),
    /// Re-fold the event store independently and compare it with a read model.
    ///
    /// Exits 0 when identical, 1 on drift or when a service does not answer.
    Verify(verify::Args),
    /// Build a fresh copy of a read model beside the live one and switch to it.
    ///
    /// From the start of the topic, or from the event store when Kafka no longer holds the
    /// oldest events. The live projector keeps serving throughout; once the copy has caught
    /// up the query API switches to it atomically. The old copy is kept until --drop-old.
    Rebuild(rebuild::Args),
    /// Run Prism end to end: the write side and the ledger, traffic, then queries.
    ///
    /// Needs the local stack (`dev/stack up`). Starts prism-command and prism-ledger in this
    /// process (127.0.0.1:8080 and :8081 unless --command-listen/--ledger-listen), sends a
    /// short seeded loadgen, shows accounts, an account, its statement and read-your-writes
    /// through the ledger's query API, prints what to try next and stops both cleanly.
    /// Exits 1 if a service is down or a step fails, 2 on a bad flag or a port in use.
    Demo(demo::Args),
    /// Fill the event store with a long seeded history, fast (millions of events).
    ///
    /// Writes the traffic model's events one commit each through the store's raw insert,
    /// unpublished: a running prism-command's relay publishes them. The same --seed writes
    /// the same accounts, so a second run with it is refused. Exits 2 on a bad flag.
    Seed(seed::Args),
    /// Export a read model's data for other tools.
    ///
    /// `export features --from --to --out`: the fraud model's training set (Parquet): one
    /// row per card payment and withdrawal, duplicates dropped, labelled with the fraud
    /// reports known at --cutoff. Exits 1 when the store cannot be read, 2 on a bad flag.
    Export(export::Args),
    /// Run the whole platform under seeded traffic and seeded faults, then check it.
    ///
    /// Two instances of every Prism service, as processes, reaching every backing server
    /// through toxiproxy (`dev/stack up toxiproxy`); kills (SIGKILL) at random moments,
    /// every server stopped and started, network faults, a rebalance storm, a rebuild
    /// killed mid-way, a broker lost on a three-broker Kafka. Then: every read model
    /// verified, the topic against the store, every success answer stored, no dead
    /// letter, memory, panics, the lag alert. Prints a table; exits 1 if a check failed.
    /// Run it from the checkout, with the services built beside prismctl.
    Chaos(chaos::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match prism_platform::config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("prismctl: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Doctor(args) => doctor::run(&config, &args).await,
        Command::Loadgen(args) => loadgen::run(&args).await,
        Command::Bench(args) => bench::run(&config, &args).await,
        Command::Status(args) => status::run(&config, &args).await,
        Command::Verify(args) => verify::run(&config, &args).await,
        Command::Rebuild(args) => rebuild::run(&config, &args).await,
        Command::Demo(args) => demo::run(&config, &args).await,
        Command::Seed(args) => seed::run(&config, &args).await,
        Command::Export(args) => export::run(&config, &args).await,
        Command::Chaos(args) => chaos::run(&config, &args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("prismctl: {e:#}");
            ExitCode::from(2)
        }
    }
}
