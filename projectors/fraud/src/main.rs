//! `prism-fraud`: the fraud-features projector and its API. See ARCHITECTURE.md.

use prism_fraud::app::FraudProjector;

/// As in the other projectors: records are copied off the consumer thread and freed on a
/// worker, which glibc's allocator handles poorly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    prism_projector::app::main("prism-fraud", |config| {
        let projector = FraudProjector::new(config)?;
        let listen = projector.fraud_config().listen.clone();
        Ok((projector, listen))
    })
    .await
}
