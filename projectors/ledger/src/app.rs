//! Wiring of `prism-ledger` on the projector kit: the `[ledger]` section, the MySQL read
//! model's copies, its sink and its query API. The kit's [`prism_projector::app::run`] does the rest (runtime,
//! restarts, copy switching, ops endpoints, shutdown). `main.rs` and the tests both start
//! the service through [`run`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use prism_platform::auth::{Auth, Scope};
use prism_platform::config::{Config, ProjectorConfig};
use prism_projector::app::{Projector, Settings};
use prism_projector::copies::LiveCopy;
use prism_projector::Shared;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::config::{LedgerConfig, SECTION};
use crate::http::{self, ApiState};
use crate::store::Ledger;

/// The projector's short name: consumer group `prism-ledger`, dead letters on
/// `account-events.dlq.ledger`, metric label `ledger`.
pub const NAME: &str = "ledger";

/// The ledger as the kit runs it.
#[derive(Debug, Clone)]
pub struct LedgerProjector {
    config: Config,
    ledger: LedgerConfig,
    runtime: ProjectorConfig,
}

impl LedgerProjector {
    /// Parses the `[ledger]` section once, and `[projector]` with `[ledger.projector]`
    /// laid over it: the ledger's batches are MySQL transactions, sized apart from other
    /// projectors'. Errors name the section and the key.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let ledger = LedgerConfig::from_config(&config)?;
        let runtime = config.ledger.runtime(NAME, &config.projector)?;
        Ok(Self {
            config,
            ledger,
            runtime,
        })
    }

    /// The parsed `[ledger]` section.
    pub fn ledger_config(&self) -> &LedgerConfig {
        &self.ledger
    }
}

#[async_trait]
impl Projector for LedgerProjector {
    type Copies = Ledger;

    fn settings(&self) -> Settings {
        Settings {
            name: NAME,
            group_id: self.ledger.group_id.clone(),
            kafka: self.config.kafka.clone(),
            runtime: self.runtime.clone(),
            copy_poll: Duration::from_millis(self.ledger.generation_poll_ms.max(10)),
        }
    }

    fn check_listener(&self, address: SocketAddr) -> anyhow::Result<()> {
        // The compiled-in tokens and cursor key are public: never on an address other
        // machines can reach.
        self.config
            .auth
            .refuse_local_tokens(SECTION, self.ledger.auth_enabled, address)?;
        Ok(self.ledger.refuse_local_secrets(address)?)
    }

    async fn open(&self) -> anyhow::Result<Ledger> {
        Ledger::open(&self.config.mysql, &self.ledger)
            .await
            .context("opening the ledger databases")
    }

    async fn exists(&self) -> anyhow::Result<bool> {
        Ledger::exists(&self.config.mysql, &self.ledger).await
    }

    fn service(&self) -> &'static str {
        "mysql"
    }

    fn auth(&self, scope: Scope) -> Auth {
        Auth::new(self.ledger.auth_enabled, &self.config.auth.tokens, scope)
    }

    fn api(
        &self,
        live: LiveCopy<Ledger>,
        shared: &Shared,
        registry: &Registry,
    ) -> anyhow::Result<axum::Router> {
        let auth = self.auth(Scope::LedgerRead);
        let state = ApiState::new(
            live,
            &self.ledger,
            auth,
            shared.progress.subscribe(),
            registry,
        )
        .context("registering the query API's metrics")?;
        Ok(http::router(state))
    }
}

/// Runs prism-ledger on `listener` until `shutdown` resolves: then stops taking requests,
/// lets every partition finish its batch, stores and commits, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    prism_projector::app::run(LedgerProjector::new(config)?, listener, shutdown).await
}

/// [`run`] with another event contract than this build's: how the tests stand in for a
/// newer build of the projector (one that knows more event types or schema versions).
pub async fn run_decoding(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    decode: prism_projector::Decode,
) -> anyhow::Result<()> {
    prism_projector::app::run_decoding(LedgerProjector::new(config)?, listener, shutdown, decode)
        .await
}

#[cfg(test)]
// figment's `Jail` closures must return its (large) `figment::Error`.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;
    use prism_platform::config::Sources;

    use super::*;

    /// The projector built from `file` as `config/prism.toml`, as the binary would build it.
    fn projector_from(jail: &mut Jail, file: &str) -> anyhow::Result<LedgerProjector> {
        jail.create_dir("config")?;
        jail.create_file("config/prism.toml", file)?;
        LedgerProjector::new(Sources::from_env().load()?)
    }

    #[test]
    fn ledger_projector_table_overrides_the_shared_runtime_settings_for_the_ledger_alone() {
        Jail::expect_with(|jail| {
            let file = "[projector]\nbatch_max_events = 700\nbatch_max_wait_ms = 30\n\
                        [ledger]\ngroup_id = \"g-ledger\"\n\
                        [ledger.projector]\nbatch_max_events = 123\n";
            let projector = projector_from(jail, file).map_err(|e| format!("{e:#}"))?;
            let settings = projector.settings();
            assert_eq!(settings.runtime.batch_max_events, 123, "[ledger.projector]");
            assert_eq!(settings.runtime.batch_max_wait_ms, 30, "from [projector]");
            assert_eq!(settings.group_id, "g-ledger");
            // [projector] itself, what every other projector starts from, is unchanged.
            assert_eq!(projector.config.projector.batch_max_events, 700);
            let search = projector
                .config
                .search
                .runtime("search", &projector.config.projector)
                .map_err(|e| e.to_string())?;
            assert_eq!(search.batch_max_events, 700, "search keeps [projector]");
            Ok(())
        });
    }

    #[test]
    fn without_a_ledger_projector_table_the_shared_settings_apply() {
        Jail::expect_with(|jail| {
            let projector = projector_from(jail, "[projector]\nbatch_max_events = 700\n")
                .map_err(|e| format!("{e:#}"))?;
            assert_eq!(projector.settings().runtime.batch_max_events, 700);
            assert_eq!(projector.ledger_config().listen, "127.0.0.1:8081");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_in_the_ledger_sections_are_errors_naming_them() {
        Jail::expect_with(|jail| {
            let err = projector_from(jail, "[ledger]\nmax_waiter = 3\n")
                .expect_err("a misspelt [ledger] key");
            let shown = format!("{err:#}");
            assert!(shown.contains("[ledger]"), "{shown}");
            assert!(shown.contains("max_waiter"), "{shown}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            let err = projector_from(jail, "[ledger.projector]\nbatch_max = 3\n")
                .expect_err("a misspelt [ledger.projector] key");
            let shown = format!("{err:#}");
            assert!(shown.contains("[ledger.projector]"), "{shown}");
            assert!(shown.contains("batch_max"), "{shown}");
            Ok(())
        });
    }
}
