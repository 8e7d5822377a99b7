//! Wiring of `prism-ledger` on the projector kit: the MySQL read model's copies, its sink
//! and its query API. The kit's [`prism_projector::app::run`] does the rest (runtime,
//! restarts, copy switching, ops endpoints, shutdown). `main.rs` and the tests both start
//! the service through [`run`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use prism_platform::config::Config;
use prism_projector::app::{Projector, Settings};
use prism_projector::copies::LiveCopy;
use prism_projector::{Projection, Shared};
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::http::{self, ApiState};
use crate::store::Ledger;

/// The projector's short name: consumer group `prism-ledger`, dead letters on
/// `account-events.dlq.ledger`, metric label `ledger`.
pub const NAME: &str = "ledger";

/// The runtime's view of this projector (what tools that run the runtime themselves, such
/// as a rebuild, need).
pub fn projection(config: &Config) -> Projection {
    Projection {
        name: NAME.into(),
        group_id: config.ledger.group_id.clone(),
        topic: config.kafka.topic.clone(),
    }
}

/// The ledger as the kit runs it.
#[derive(Debug, Clone)]
pub struct LedgerProjector {
    config: Config,
}

impl LedgerProjector {
    pub fn new(config: Config) -> Self {
        Self { config }
    }
}

#[async_trait]
impl Projector for LedgerProjector {
    type Copies = Ledger;

    fn settings(&self) -> Settings {
        Settings {
            name: NAME,
            group_id: self.config.ledger.group_id.clone(),
            kafka: self.config.kafka.clone(),
            runtime: self.config.projector.clone(),
            copy_poll: Duration::from_millis(self.config.ledger.generation_poll_ms.max(10)),
        }
    }

    fn check_listener(&self, address: SocketAddr) -> anyhow::Result<()> {
        // The compiled-in token and cursor key are public: never on an address other
        // machines can reach.
        Ok(self.config.ledger.refuse_local_secrets(address)?)
    }

    async fn open(&self) -> anyhow::Result<Ledger> {
        Ledger::open(&self.config.mysql, &self.config.ledger)
            .await
            .context("opening the ledger databases")
    }

    async fn exists(&self) -> anyhow::Result<bool> {
        Ledger::exists(&self.config.mysql, &self.config.ledger).await
    }

    fn service(&self) -> &'static str {
        "mysql"
    }

    fn api(
        &self,
        live: LiveCopy<Ledger>,
        shared: &Shared,
        registry: &Registry,
    ) -> anyhow::Result<axum::Router> {
        let state = ApiState::new(
            live,
            &self.config.ledger,
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
    prism_projector::app::run(LedgerProjector::new(config), listener, shutdown).await
}

/// [`run`] with another event contract than this build's: how the tests stand in for a
/// newer build of the projector (one that knows more event types or schema versions).
pub async fn run_decoding(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    decode: prism_projector::Decode,
) -> anyhow::Result<()> {
    prism_projector::app::run_decoding(LedgerProjector::new(config), listener, shutdown, decode)
        .await
}
