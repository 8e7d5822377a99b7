//! Support for Prism's integration tests, which run against the real local stack.
//!
//! Every test gets its own topic, database, index or key prefix from [`unique`], so tests
//! run in parallel and leave nothing behind that another test could see. A service that
//! does not answer fails the test with [`up`]'s message naming `dev/stack up`; nothing is
//! skipped silently.

use std::fmt::Display;
use std::path::PathBuf;

use prism_platform::config::Sources;
use prism_platform::Config;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The configuration a Prism binary started from the repository root would load:
/// `config/prism.toml`, then `PRISM_PROFILE`, then `PRISM_<SECTION>__<KEY>` variables.
pub fn config() -> Config {
    let sources = Sources {
        base: Some(repo_root().join("config/prism.toml")),
        profile: std::env::var("PRISM_PROFILE")
            .ok()
            .filter(|p| !p.is_empty()),
    };
    match sources.load() {
        Ok(config) => config,
        Err(e) => panic!("loading the test configuration: {e}"),
    }
}

/// A name no other test run uses: `<prefix>_<12 hex digits>`.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// Unwraps the result of talking to a backing service, or fails the test saying how to
/// start the stack.
#[track_caller]
pub fn up<T, E: Display>(service: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!(
            "{service} is not answering: {e}\n\
             The integration tests need the local stack: run `dev/stack up` (see README.md)."
        ),
    }
}
