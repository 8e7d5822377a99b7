//! `prismctl`: Prism's admin CLI.
//!
//! # Layout
//! - `doctor`: connects to every configured backing service and prints a health table.
//! - `bench`: `bench command` measures prism-command next to its store's raw append ceiling.
//! - `loadgen`: seeded, reproducible traffic through prism-command's HTTP API.
//! - `traffic`: the pure, seeded traffic model `loadgen` sends.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod doctor;
mod loadgen;
mod traffic;

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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("prismctl: {e:#}");
            ExitCode::from(2)
        }
    }
}
