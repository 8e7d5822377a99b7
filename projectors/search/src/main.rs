//! `prism-search`: the search projector and its query API. See ARCHITECTURE.md.

use prism_search::app::SearchProjector;

/// As in prism-ledger: records are copied off the consumer thread and freed on a worker,
/// which glibc's allocator handles poorly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    prism_projector::app::main("prism-search", |config| {
        let projector = SearchProjector::new(config)?;
        let listen = projector.search_config().listen.clone();
        Ok((projector, listen))
    })
    .await
}
