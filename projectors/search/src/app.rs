//! Wiring of `prism-search` on the projector kit: the `[search]` section, the copies
//! (indices behind aliases) as the kit's [`Copies`], and the query API. The kit's
//! [`prism_projector::app::run`] does the rest. `main.rs` and the tests both start the
//! service through [`run`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use prism_platform::auth::{Auth, Scope};
use prism_platform::config::{Config, ProjectorConfig};
use prism_projector::app::{Projector, Settings};
use prism_projector::copies::{
    Copies, CopyInfo, InstanceReport, InstanceRow, LiveCopy, PartitionStatus,
};
use prism_projector::{Shared, Sink};
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::config::SearchConfig;
use crate::copies::{SearchCopies, SearchCopy};
use crate::sink::EsSink;

/// The projector's short name: consumer group `prism-search`, dead letters on
/// `account-events.dlq.search`, metric label `search`.
pub const NAME: &str = "search";

/// The search model as the kit runs it.
#[derive(Debug, Clone)]
pub struct SearchProjector {
    config: Config,
    search: SearchConfig,
    runtime: ProjectorConfig,
}

impl SearchProjector {
    /// Parses and checks the `[search]` section (and `[search.projector]`).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let search: SearchConfig = config.search.parse(NAME)?;
        search.validate()?;
        let runtime = config.search.runtime(NAME, &config.projector)?;
        Ok(Self {
            config,
            search,
            runtime,
        })
    }

    /// The parsed `[search]` section.
    pub fn search_config(&self) -> &SearchConfig {
        &self.search
    }
}

#[async_trait]
impl Projector for SearchProjector {
    type Copies = SearchCopies;

    fn settings(&self) -> Settings {
        Settings {
            name: NAME,
            group_id: self.search.group_id.clone(),
            kafka: self.config.kafka.clone(),
            runtime: self.runtime.clone(),
            copy_poll: Duration::from_millis(self.search.copy_poll_ms.max(10)),
        }
    }

    fn check_listener(&self, address: SocketAddr) -> anyhow::Result<()> {
        // The compiled-in tokens and cursor key are public: never on an address other
        // machines can reach.
        self.config
            .auth
            .refuse_local_tokens(NAME, self.search.auth_enabled, address)?;
        Ok(self.search.refuse_local_secrets(address)?)
    }

    async fn open(&self) -> anyhow::Result<SearchCopies> {
        SearchCopies::connect(&self.config.elasticsearch, &self.search)
            .await
            .context("opening the search indices")
    }

    async fn exists(&self) -> anyhow::Result<bool> {
        SearchCopies::exists(&self.config.elasticsearch, &self.search).await
    }

    fn service(&self) -> &'static str {
        "elasticsearch"
    }

    fn auth(&self, scope: Scope) -> Auth {
        Auth::new(self.search.auth_enabled, &self.config.auth.tokens, scope)
    }

    fn api(
        &self,
        live: LiveCopy<SearchCopies>,
        shared: &Shared,
        registry: &Registry,
    ) -> anyhow::Result<axum::Router> {
        let auth = self.auth(Scope::SearchRead);
        let state = crate::http::ApiState::new(
            move || live.current(),
            &self.search,
            auth,
            shared.progress.subscribe(),
            registry,
        )
        .context("setting up the search API")?;
        Ok(crate::http::router(state))
    }
}

/// Runs prism-search on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    prism_projector::app::run(SearchProjector::new(config)?, listener, shutdown).await
}

/// The kit's view of the copies: each method is [`SearchCopies`]'s own.
#[async_trait]
impl Copies for SearchCopies {
    type Copy = SearchCopy;

    fn number(copy: &SearchCopy) -> u32 {
        copy.number
    }

    fn sink(copy: &SearchCopy) -> Arc<dyn Sink> {
        Arc::new(EsSink::new(copy.clone()))
    }

    async fn live(&self) -> anyhow::Result<SearchCopy> {
        SearchCopies::live(self).await
    }

    async fn live_number(&self) -> anyhow::Result<Option<u32>> {
        SearchCopies::live_number(self).await
    }

    async fn open(&self, number: u32) -> anyhow::Result<SearchCopy> {
        SearchCopies::open(self, number).await
    }

    async fn create_next(&self) -> anyhow::Result<SearchCopy> {
        SearchCopies::create_next(self).await
    }

    async fn promote(&self, number: u32) -> anyhow::Result<()> {
        SearchCopies::promote(self, number).await
    }

    async fn abandon(&self, number: u32) -> anyhow::Result<()> {
        SearchCopies::abandon(self, number).await
    }

    async fn newest_building(&self) -> anyhow::Result<Option<u32>> {
        SearchCopies::newest_building(self).await
    }

    async fn list(&self) -> anyhow::Result<Vec<CopyInfo>> {
        SearchCopies::list(self).await
    }

    async fn drop_retired(&self) -> anyhow::Result<Vec<String>> {
        SearchCopies::drop_retired(self).await
    }

    async fn report_instance(&self, report: &InstanceReport) -> anyhow::Result<()> {
        SearchCopies::report_instance(self, report).await
    }

    async fn forget_instance(&self, instance: &str) -> anyhow::Result<()> {
        SearchCopies::forget_instance(self, instance).await
    }

    async fn instances(&self, within: Duration) -> anyhow::Result<Vec<InstanceRow>> {
        SearchCopies::instances(self, within).await
    }

    async fn partitions(&self, copy: &SearchCopy) -> anyhow::Result<Vec<PartitionStatus>> {
        SearchCopies::partitions(self, copy).await
    }
}
