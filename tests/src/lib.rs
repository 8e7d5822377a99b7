//! Support for Prism's integration tests, which run against the real local stack.
//!
//! Every test gets its own topic, database, index or key prefix from [`unique`], so tests
//! run in parallel and leave nothing behind that another test could see. A service that
//! does not answer fails the test with [`up`]'s message naming `dev/stack up`; nothing is
//! skipped silently.

use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;

use futures::FutureExt as _;

use prism_platform::config::{EventStoreBackend, Sources};
use prism_platform::Config;

pub mod toxiproxy;

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

/// Drops the event store `config` names (its MongoDB database or its PostgreSQL schema),
/// for a test's clean-up: errors are ignored, since a clean-up must not hide the test's
/// own failure.
pub async fn drop_event_store(config: &Config) {
    match config.event_store.backend {
        EventStoreBackend::Mongodb => {
            if let Ok(client) =
                prism_platform::clients::mongodb(&config.mongodb, "prism-tests").await
            {
                let _ = client.database(&config.mongodb.database).drop().await;
            }
        }
        EventStoreBackend::Postgres => {
            if let Ok(pool) = prism_platform::clients::postgres(&config.postgres).await {
                let _ = sqlx::query(&format!(
                    "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                    config.event_store.postgres_schema
                ))
                .execute(&pool)
                .await;
                pool.close().await;
            }
        }
    }
}

/// Unlinks every Redis key matching `pattern` (e.g. `prism:dashboard:test_1a2b:*`), for a
/// test's clean-up: errors are ignored, like [`drop_event_store`]'s.
pub async fn unlink_keys(config: &Config, pattern: &str) {
    let Ok(mut redis) = prism_platform::clients::redis_connection(&config.redis).await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut redis)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("UNLINK")
            .arg(&keys)
            .query_async(&mut redis)
            .await;
    }
}

/// Runs `body` on `env`, then `clean_up` on it whether the body passed or panicked, then
/// re-raises the body's panic: the shape of every test harness's `isolated`.
pub async fn run_then_clean_up<E, B, BFut, C, CFut>(env: Arc<E>, body: B, clean_up: C)
where
    B: FnOnce(Arc<E>) -> BFut,
    BFut: Future<Output = ()>,
    C: FnOnce(Arc<E>) -> CFut,
    CFut: Future<Output = ()>,
{
    let outcome = AssertUnwindSafe(body(Arc::clone(&env)))
        .catch_unwind()
        .await;
    clean_up(env).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
