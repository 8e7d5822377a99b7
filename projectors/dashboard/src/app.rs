//! Wiring of `prism-dashboard` on the projector kit: the `[dashboard]` section, the copies
//! (key prefixes, [`crate::copies`]), and the page with its API. The kit's
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

use crate::config::DashboardConfig;
use crate::copies::DashboardCopies;

/// The projector's short name: consumer group `prism-dashboard`, dead letters on
/// `account-events.dlq.dashboard`, metric label `dashboard`.
pub const NAME: &str = "dashboard";

/// The dashboard as the kit runs it.
#[derive(Debug, Clone)]
pub struct DashboardProjector {
    config: Config,
    dashboard: DashboardConfig,
    runtime: ProjectorConfig,
}

impl DashboardProjector {
    /// Parses and checks `[dashboard]` (and `[dashboard.projector]`).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let dashboard: DashboardConfig = config.dashboard.parse(NAME)?;
        dashboard.validate()?;
        let runtime = config.dashboard.runtime(NAME, &config.projector)?;
        Ok(Self {
            config,
            dashboard,
            runtime,
        })
    }

    pub fn dashboard_config(&self) -> &DashboardConfig {
        &self.dashboard
    }
}

#[async_trait]
impl Projector for DashboardProjector {
    type Copies = DashboardCopies;

    fn settings(&self) -> Settings {
        Settings {
            name: NAME,
            group_id: self.dashboard.group_id.clone(),
            kafka: self.config.kafka.clone(),
            runtime: self.runtime.clone(),
            copy_poll: Duration::from_millis(self.dashboard.copy_poll_ms.max(10)),
        }
    }

    fn check_listener(&self, address: SocketAddr) -> anyhow::Result<()> {
        // The compiled-in tokens are public: never on an address other machines can reach.
        Ok(self
            .config
            .auth
            .refuse_local_tokens(NAME, self.dashboard.auth_enabled, address)?)
    }

    async fn open(&self) -> anyhow::Result<DashboardCopies> {
        crate::copies::connect(&self.config.redis, &self.dashboard)
            .await
            .context("opening the dashboard in Redis")
    }

    async fn exists(&self) -> anyhow::Result<bool> {
        self.open().await?.exists().await
    }

    fn service(&self) -> &'static str {
        "redis"
    }

    fn auth(&self, scope: Scope) -> Auth {
        Auth::new(self.dashboard.auth_enabled, &self.config.auth.tokens, scope)
    }

    fn api(
        &self,
        live: LiveCopy<DashboardCopies>,
        shared: &Shared,
        registry: &Registry,
    ) -> anyhow::Result<axum::Router> {
        let health = shared.health.clone();
        let metrics = shared.metrics.clone();
        let this = move || {
            let dead_letters = i64::try_from(metrics.dead_lettered()).unwrap_or(i64::MAX);
            crate::pipeline::own(NAME, &health, dead_letters)
        };
        let state = crate::http::ApiState::new(
            Arc::new(move || live.current()),
            &self.dashboard,
            self.auth(Scope::DashboardRead),
            this,
            shared.progress.subscribe(),
            registry,
        )
        .context("setting up the dashboard API")?;
        Ok(crate::http::router(state))
    }
}

/// Runs prism-dashboard on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    prism_projector::app::run(DashboardProjector::new(config)?, listener, shutdown).await
}
