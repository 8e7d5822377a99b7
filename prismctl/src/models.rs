//! The read models `prismctl` knows, each reached through the projector kit only: its
//! [`Projector`](prism_projector::app::Projector) says its name, consumer group and runtime
//! settings, and opens its copies as a [`CopiesAdmin`]. `status`, `rebuild` and the
//! benches use this, never a projector's store or sink types, so a new read model is one
//! line in [`Model`] and one arm in [`Model::open`].

use std::sync::Arc;
use std::time::Duration;

use prism_platform::config::Config;
use prism_projector::app::{Projector, Settings};
use prism_projector::copies::CopiesAdmin;
use prism_projector::verify::Verify;

/// A read model, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// `prism-ledger`: balances and statements in MySQL.
    Ledger,
    /// `prism-search`: transactions and accounts in Elasticsearch/OpenSearch.
    Search,
    /// `prism-dashboard`: live counters, top lists and the feed in Redis.
    Dashboard,
    /// `prism-fraud`: fraud features, online in Redis and offline in Parquet.
    Fraud,
}

impl Model {
    /// Every read model, in the order `status` shows them.
    pub const ALL: [Model; 4] = [Model::Ledger, Model::Search, Model::Dashboard, Model::Fraud];

    /// Connects to the read model's store and opens its copies.
    pub async fn open(self, config: &Config) -> anyhow::Result<ReadModel> {
        match self {
            Model::Ledger => {
                ReadModel::open(prism_ledger::app::LedgerProjector::new(config.clone())?).await
            }
            Model::Search => {
                ReadModel::open(prism_search::app::SearchProjector::new(config.clone())?).await
            }
            Model::Dashboard => {
                ReadModel::open(prism_dashboard::app::DashboardProjector::new(
                    config.clone(),
                )?)
                .await
            }
            Model::Fraud => {
                ReadModel::open(prism_fraud::app::FraudProjector::new(config.clone())?).await
            }
        }
    }

    /// Opens the read model only if it has ever run (opening would create its control
    /// store): `None` when it has not.
    pub async fn open_existing(self, config: &Config) -> anyhow::Result<Option<ReadModel>> {
        match self {
            Model::Ledger => {
                ReadModel::open_existing(prism_ledger::app::LedgerProjector::new(config.clone())?)
                    .await
            }
            Model::Search => {
                ReadModel::open_existing(prism_search::app::SearchProjector::new(config.clone())?)
                    .await
            }
            Model::Dashboard => {
                ReadModel::open_existing(prism_dashboard::app::DashboardProjector::new(
                    config.clone(),
                )?)
                .await
            }
            Model::Fraud => {
                ReadModel::open_existing(prism_fraud::app::FraudProjector::new(config.clone())?)
                    .await
            }
        }
    }

    /// The projector's side of `verify` for read models checked through the kit's
    /// [`Verify`]; `None` for the ledger, whose `verify` has its own independent fold.
    /// `sample_percent` is the share of accounts compared where a model samples (fraud).
    pub async fn verifier(
        self,
        config: &Config,
        sample_percent: u8,
    ) -> anyhow::Result<Option<Box<dyn Verify>>> {
        Ok(match self {
            Model::Ledger => None,
            Model::Search => {
                let projector = prism_search::app::SearchProjector::new(config.clone())?;
                let copies = projector.open().await?;
                Some(Box::new(prism_search::verify::SearchVerify::new(&copies)))
            }
            Model::Dashboard => {
                let projector = prism_dashboard::app::DashboardProjector::new(config.clone())?;
                let copies = projector.open().await?;
                let live = prism_projector::copies::Copies::live(&copies).await?;
                Some(Box::new(prism_dashboard::verify::DashboardVerify::new(
                    live,
                )))
            }
            Model::Fraud => {
                let projector = prism_fraud::app::FraudProjector::new(config.clone())?;
                let copies = projector.open().await?;
                let live = prism_projector::copies::Copies::live(&copies).await?;
                Some(Box::new(crate::verify_fraud::FraudVerify::new(
                    live,
                    sample_percent,
                )))
            }
        })
    }

    /// The backing service its copies live in (`mysql`, …).
    pub fn service(self, config: &Config) -> &'static str {
        match self {
            Model::Ledger => prism_ledger::app::LedgerProjector::new(config.clone())
                .map_or("mysql", |p| p.service()),
            Model::Search => prism_search::app::SearchProjector::new(config.clone())
                .map_or("elasticsearch", |p| p.service()),
            Model::Dashboard => prism_dashboard::app::DashboardProjector::new(config.clone())
                .map_or("redis", |p| p.service()),
            Model::Fraud => prism_fraud::app::FraudProjector::new(config.clone())
                .map_or("redis", |p| p.service()),
        }
    }

    /// The projector's settings, without connecting to anything.
    pub fn settings(self, config: &Config) -> anyhow::Result<Settings> {
        Ok(match self {
            Model::Ledger => prism_ledger::app::LedgerProjector::new(config.clone())?.settings(),
            Model::Search => prism_search::app::SearchProjector::new(config.clone())?.settings(),
            Model::Dashboard => {
                prism_dashboard::app::DashboardProjector::new(config.clone())?.settings()
            }
            Model::Fraud => prism_fraud::app::FraudProjector::new(config.clone())?.settings(),
        })
    }
}

/// One read model, opened.
#[derive(Debug, Clone)]
pub struct ReadModel {
    pub settings: Settings,
    pub copies: Arc<dyn CopiesAdmin>,
}

impl ReadModel {
    async fn open<P: Projector>(projector: P) -> anyhow::Result<Self> {
        let settings = projector.settings();
        let copies = projector.open().await?;
        Ok(Self {
            settings,
            copies: Arc::new(copies),
        })
    }

    async fn open_existing<P: Projector>(projector: P) -> anyhow::Result<Option<Self>> {
        if !projector.exists().await? {
            return Ok(None);
        }
        Self::open(projector).await.map(Some)
    }

    /// Short name: `ledger`, `search`.
    pub fn name(&self) -> &'static str {
        self.settings.name
    }

    /// The binary that serves it: `prism-ledger`.
    pub fn binary(&self) -> String {
        format!("prism-{}", self.settings.name)
    }

    /// How recently an instance must have reported to count as running.
    pub fn alive_window(&self) -> Duration {
        (self.settings.copy_poll * 5).max(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use prism_platform::config::Sources;

    use super::*;

    /// The configuration `file` gives, loaded as every binary loads it.
    fn load(file: &str) -> Config {
        let path = std::env::temp_dir().join(format!(
            "prismctl-models-{}.toml",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, file).expect("writing the test configuration");
        let loaded = Sources {
            base: Some(path.clone()),
            profile: None,
        }
        .load();
        let _ = std::fs::remove_file(&path);
        loaded.expect("the test configuration loads")
    }

    #[test]
    fn each_projector_section_tunes_its_own_runtime_only() {
        let config = load(
            "[projector]\nbatch_max_events = 700\n\
             [ledger.projector]\nbatch_max_events = 123\n\
             [search.projector]\nbatch_max_wait_ms = 250\n",
        );
        let ledger = Model::Ledger.settings(&config).expect("ledger settings");
        let search = Model::Search.settings(&config).expect("search settings");
        assert_eq!(ledger.runtime.batch_max_events, 123);
        assert_eq!(
            ledger.runtime.batch_max_wait_ms, 20,
            "[projector]'s default"
        );
        assert_eq!(search.runtime.batch_max_events, 700, "[projector]");
        assert_eq!(search.runtime.batch_max_wait_ms, 250);
    }

    #[test]
    fn a_misspelt_ledger_key_fails_naming_it() {
        let config = load("[ledger]\ngroupid = \"x\"\n");
        let err = Model::Ledger.settings(&config).expect_err("a misspelt key");
        let shown = format!("{err:#}");
        assert!(
            shown.contains("[ledger]") && shown.contains("groupid"),
            "{shown}"
        );
        assert!(
            Model::Search.settings(&config).is_ok(),
            "search is not affected"
        );
    }
}
