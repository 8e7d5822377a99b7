//! The fraud model's copies, on the kit's Redis copies: copy N is the key prefix
//! `<namespace>:c<N>:` in Redis (the online store: each account's feature state and the
//! positions) *and* the directory `<offline_dir>/c<N>/` (the offline store: Parquet
//! files). Creating, abandoning or dropping a copy clears both.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use prism_platform::config::RedisConfig;
use prism_projector::checkpoint::redis::Dedicated;
use prism_projector::copies::redis::{ModelCopies, OpenCopy, RedisCopies};
use prism_projector::Sink;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::config::FraudConfig;
use crate::offline::OfflineStore;
use crate::sink::{FraudModel, FraudSink};

/// The Redis keys of one copy of the online store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: String) -> Self {
        Self { prefix }
    }

    /// `<namespace>:c<N>:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// An account's hash: `v` (handled version) and `s` (its feature state, JSON).
    pub fn account(&self, id: Uuid) -> String {
        format!("{}a:{id}", self.prefix)
    }
}

/// An opened copy: its keys, its offline directory and the shared connection.
#[derive(Clone)]
pub struct FraudCopy {
    pub number: u32,
    pub keys: Keys,
    pub offline: OfflineStore,
    pub conn: ConnectionManager,
    pub dedicated: Dedicated,
}

impl std::fmt::Debug for FraudCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FraudCopy")
            .field("number", &self.number)
            .field("prefix", &self.keys.prefix())
            .field("offline", &self.offline.dir())
            .finish_non_exhaustive()
    }
}

impl FraudCopy {
    pub fn sink(&self) -> FraudSink {
        FraudSink::new(
            FraudModel::new(self.keys.clone(), self.offline.clone()),
            self.conn.clone(),
            self.dedicated.clone(),
        )
    }
}

/// How the fraud model opens a copy.
#[derive(Clone)]
pub struct FraudOpener {
    dedicated: Dedicated,
    offline_dir: PathBuf,
}

impl std::fmt::Debug for FraudOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FraudOpener")
            .field("offline_dir", &self.offline_dir)
            .finish_non_exhaustive()
    }
}

impl OpenCopy for FraudOpener {
    type Copy = FraudCopy;

    fn open(&self, copies: &RedisCopies, number: u32) -> FraudCopy {
        FraudCopy {
            number,
            keys: Keys::new(copies.prefix(number)),
            offline: OfflineStore::new(&self.offline_dir, number),
            conn: copies.connection(),
            dedicated: self.dedicated.clone(),
        }
    }

    fn number(copy: &FraudCopy) -> u32 {
        copy.number
    }

    fn sink(copy: &FraudCopy) -> Arc<dyn Sink> {
        Arc::new(copy.sink())
    }

    fn clear(&self, number: u32) -> anyhow::Result<()> {
        let store = OfflineStore::new(&self.offline_dir, number);
        store
            .remove()
            .with_context(|| format!("deleting fraud copy {number}'s offline files"))
    }
}

/// The copies in one namespace (and one offline directory).
pub type FraudCopies = ModelCopies<FraudOpener>;

/// The fraud model's copies in the configured namespace and offline directory.
pub async fn connect(redis: &RedisConfig, config: &FraudConfig) -> anyhow::Result<FraudCopies> {
    Ok(ModelCopies::new(
        RedisCopies::new(
            prism_projector::checkpoint::redis::connect(redis).await?,
            &config.namespace,
            "fraud",
        ),
        FraudOpener {
            dedicated: Dedicated::new(redis)?,
            offline_dir: config.offline_dir.clone(),
        },
    ))
}
