//! `prism-dashboard`: the dashboard projector, its page and API. See ARCHITECTURE.md.

use prism_dashboard::app::DashboardProjector;

/// As in the other projectors: records are copied off the consumer thread and freed on a
/// worker, which glibc's allocator handles poorly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    prism_projector::app::main("prism-dashboard", |config| {
        let projector = DashboardProjector::new(config)?;
        let listen = projector.dashboard_config().listen.clone();
        Ok((projector, listen))
    })
    .await
}
