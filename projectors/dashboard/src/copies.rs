//! The dashboard's copies, on the kit's Redis copies ([`RedisCopies`]): a copy is the key
//! prefix `<namespace>:c<N>:`, the control keys beside them say which is live, and
//! promoting a copy is one script. This module only opens a copy as the dashboard needs
//! it: its [`Keys`] and its sink.

use std::sync::Arc;

use prism_platform::config::RedisConfig;
use prism_projector::checkpoint::redis::Dedicated;
use prism_projector::copies::redis::{ModelCopies, OpenCopy, RedisCopies};
use prism_projector::Sink;
use redis::aio::ConnectionManager;

use crate::config::DashboardConfig;
use crate::model::Keys;
use crate::sink::{DashboardModel, RedisSink};

pub use prism_projector::checkpoint::redis::keys_matching;

/// An opened copy: its keys and the shared connection.
#[derive(Clone)]
pub struct DashboardCopy {
    pub number: u32,
    pub keys: Keys,
    pub conn: ConnectionManager,
    pub dedicated: Dedicated,
    pub large_amount_minor: i64,
    pub feed_max: u32,
}

impl std::fmt::Debug for DashboardCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardCopy")
            .field("number", &self.number)
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl DashboardCopy {
    pub fn sink(&self) -> RedisSink {
        RedisSink::new(
            DashboardModel::new(self.keys.clone(), self.large_amount_minor, self.feed_max),
            self.conn.clone(),
            self.dedicated.clone(),
        )
    }
}

/// How the dashboard opens a copy: its keys and its sink's settings.
#[derive(Clone)]
pub struct DashboardOpener {
    dedicated: Dedicated,
    large_amount_minor: i64,
    feed_max: u32,
    retention_hours: i64,
}

impl std::fmt::Debug for DashboardOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardOpener").finish_non_exhaustive()
    }
}

impl OpenCopy for DashboardOpener {
    type Copy = DashboardCopy;

    fn open(&self, copies: &RedisCopies, number: u32) -> DashboardCopy {
        DashboardCopy {
            number,
            keys: Keys::new(copies.namespace(), number).retention_hours(self.retention_hours),
            conn: copies.connection(),
            dedicated: self.dedicated.clone(),
            large_amount_minor: self.large_amount_minor,
            feed_max: self.feed_max,
        }
    }

    fn number(copy: &DashboardCopy) -> u32 {
        copy.number
    }

    fn sink(copy: &DashboardCopy) -> Arc<dyn Sink> {
        Arc::new(copy.sink())
    }
}

/// The copies in one namespace.
pub type DashboardCopies = ModelCopies<DashboardOpener>;

/// The dashboard's copies in the configured namespace.
pub async fn connect(
    redis: &RedisConfig,
    config: &DashboardConfig,
) -> anyhow::Result<DashboardCopies> {
    Ok(ModelCopies::new(
        RedisCopies::new(
            prism_projector::checkpoint::redis::connect(redis).await?,
            &config.namespace,
            "dashboard",
        ),
        DashboardOpener {
            dedicated: Dedicated::new(redis)?,
            large_amount_minor: config.large_amount_minor,
            feed_max: config.feed_max,
            retention_hours: i64::from(config.retention_hours),
        },
    ))
}
