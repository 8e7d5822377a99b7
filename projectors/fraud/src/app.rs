//! Wiring of `prism-fraud` on the projector kit: the `[fraud]` section, the copies (a Redis
//! key prefix and an offline directory, [`crate::copies`]) and the features API. The kit's
//! [`prism_projector::app::run`] does the rest.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
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

use crate::config::FraudConfig;
use crate::copies::FraudCopies;

/// The projector's short name: consumer group `prism-fraud`, dead letters on
/// `account-events.dlq.fraud`, metric label `fraud`.
pub const NAME: &str = "fraud";

/// The fraud model as the kit runs it.
#[derive(Debug, Clone)]
pub struct FraudProjector {
    config: Config,
    fraud: FraudConfig,
    runtime: ProjectorConfig,
}

impl FraudProjector {
    /// Parses and checks `[fraud]` (and `[fraud.projector]`).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let fraud: FraudConfig = config.fraud.parse(NAME)?;
        fraud.validate()?;
        let runtime = config.fraud.runtime(NAME, &config.projector)?;
        Ok(Self {
            config,
            fraud,
            runtime,
        })
    }

    pub fn fraud_config(&self) -> &FraudConfig {
        &self.fraud
    }
}

#[async_trait]
impl Projector for FraudProjector {
    type Copies = FraudCopies;

    fn settings(&self) -> Settings {
        Settings {
            name: NAME,
            group_id: self.fraud.group_id.clone(),
            kafka: self.config.kafka.clone(),
            runtime: self.runtime.clone(),
            copy_poll: Duration::from_millis(self.fraud.copy_poll_ms.max(10)),
        }
    }

    fn check_listener(&self, address: SocketAddr) -> anyhow::Result<()> {
        // The compiled-in tokens are public: never on an address other machines can reach.
        Ok(self
            .config
            .auth
            .refuse_local_tokens(NAME, self.fraud.auth_enabled, address)?)
    }

    async fn open(&self) -> anyhow::Result<FraudCopies> {
        crate::copies::connect(&self.config.redis, &self.fraud)
            .await
            .context("opening the fraud model in Redis")
    }

    async fn exists(&self) -> anyhow::Result<bool> {
        self.open().await?.exists().await
    }

    fn service(&self) -> &'static str {
        "redis"
    }

    fn auth(&self, scope: Scope) -> Auth {
        Auth::new(self.fraud.auth_enabled, &self.config.auth.tokens, scope)
    }

    fn api(
        &self,
        live: LiveCopy<FraudCopies>,
        shared: &Shared,
        registry: &Registry,
    ) -> anyhow::Result<axum::Router> {
        let state = crate::http::ApiState::new(
            Arc::new(move || live.current()),
            &self.fraud,
            self.auth(Scope::FraudRead),
            shared.progress.subscribe(),
            registry,
        )
        .context("setting up the features API")?;
        Ok(crate::http::router(state))
    }
}

/// Runs prism-fraud on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    prism_projector::app::run(FraudProjector::new(config)?, listener, shutdown).await
}
