//! `prism-ledger`: the ledger projector and its query API. See ARCHITECTURE.md.

use std::process::ExitCode;

use anyhow::Context;
use prism_platform::http::shutdown_signal;

/// Every consumed record is copied off the consumer thread and freed on a worker: with
/// glibc's allocator that cross-thread churn was ~40 % of the projector's CPU in
/// `prismctl bench ledger`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match prism_platform::config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("prism-ledger: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = prism_platform::telemetry::init(&config.log) {
        eprintln!("prism-ledger: {e}");
        return ExitCode::from(2);
    }
    let result = async {
        let listener = tokio::net::TcpListener::bind(&config.ledger.listen)
            .await
            .with_context(|| format!("binding {}", config.ledger.listen))?;
        prism_ledger::app::run(config, listener, shutdown_signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "prism-ledger failed");
            eprintln!("prism-ledger: {e:#}");
            ExitCode::FAILURE
        }
    }
}
