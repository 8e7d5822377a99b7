//! `prism-ledger`: the ledger projector and its query API. See ARCHITECTURE.md.

use prism_ledger::app::LedgerProjector;

/// Every consumed record is copied off the consumer thread and freed on a worker: with
/// glibc's allocator that cross-thread churn was ~40 % of the projector's CPU in
/// `prismctl bench ledger`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    prism_projector::app::main("prism-ledger", |config| {
        let projector = LedgerProjector::new(config)?;
        let listen = projector.ledger_config().listen.clone();
        Ok((projector, listen))
    })
    .await
}
