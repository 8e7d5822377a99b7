//! `prism-command`: the write-side service. See the crate docs and ARCHITECTURE.md.

use std::process::ExitCode;

use anyhow::Context;
use prism_platform::http::shutdown_signal;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match prism_platform::config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("prism-command: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = prism_platform::telemetry::init(&config.log) {
        eprintln!("prism-command: {e}");
        return ExitCode::from(2);
    }
    let result = async {
        let listener = tokio::net::TcpListener::bind(&config.command.listen)
            .await
            .with_context(|| format!("binding {}", config.command.listen))?;
        prism_command::app::run(config, listener, shutdown_signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "prism-command failed");
            eprintln!("prism-command: {e:#}");
            ExitCode::FAILURE
        }
    }
}
