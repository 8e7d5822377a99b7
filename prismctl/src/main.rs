//! `prismctl`: Prism's admin CLI.
//!
//! # Layout
//! - `doctor`: connects to every configured backing service and prints a health table.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod doctor;

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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("prismctl: {e:#}");
            ExitCode::from(2)
        }
    }
}
