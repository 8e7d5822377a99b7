//! The dashboard's copies, on the kit's Redis copies ([`RedisCopies`]): a copy is the key
//! prefix `<namespace>:c<N>:`, the control keys beside them say which is live, and
//! promoting a copy is one script. This module only opens a copy as the dashboard needs
//! it: its [`Keys`] and its sink.

use std::sync::Arc;
use std::time::Duration;

use prism_platform::config::RedisConfig;
use prism_projector::checkpoint::redis::{connect, Dedicated};
use prism_projector::copies::redis::RedisCopies;
use prism_projector::copies::{CopyInfo, InstanceReport, InstanceRow, PartitionStatus};
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

/// The copies in one namespace.
#[derive(Clone)]
pub struct DashboardCopies {
    copies: RedisCopies,
    dedicated: Dedicated,
    large_amount_minor: i64,
    feed_max: u32,
    retention_hours: i64,
}

impl std::fmt::Debug for DashboardCopies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardCopies")
            .field("namespace", &self.copies.namespace())
            .finish_non_exhaustive()
    }
}

impl DashboardCopies {
    pub async fn connect(redis: &RedisConfig, config: &DashboardConfig) -> anyhow::Result<Self> {
        Ok(Self {
            copies: RedisCopies::new(connect(redis).await?, &config.namespace, "dashboard"),
            dedicated: Dedicated::new(redis)?,
            large_amount_minor: config.large_amount_minor,
            feed_max: config.feed_max,
            retention_hours: i64::from(config.retention_hours),
        })
    }

    pub fn namespace(&self) -> &str {
        self.copies.namespace()
    }

    pub fn connection(&self) -> ConnectionManager {
        self.copies.connection()
    }

    /// Whether the namespace was ever used (without creating anything).
    pub async fn exists(&self) -> anyhow::Result<bool> {
        self.copies.exists().await
    }

    fn copy(&self, number: u32) -> DashboardCopy {
        DashboardCopy {
            number,
            keys: Keys::new(self.copies.namespace(), number).retention_hours(self.retention_hours),
            conn: self.copies.connection(),
            dedicated: self.dedicated.clone(),
            large_amount_minor: self.large_amount_minor,
            feed_max: self.feed_max,
        }
    }

    pub async fn live(&self) -> anyhow::Result<DashboardCopy> {
        Ok(self.copy(self.copies.live().await?))
    }

    pub async fn live_number(&self) -> anyhow::Result<Option<u32>> {
        self.copies.live_number().await
    }

    pub async fn open(&self, number: u32) -> anyhow::Result<DashboardCopy> {
        self.copies.check_exists(number).await?;
        Ok(self.copy(number))
    }

    pub async fn create_next(&self) -> anyhow::Result<DashboardCopy> {
        Ok(self.copy(self.copies.create_next().await?))
    }

    pub async fn promote(&self, number: u32) -> anyhow::Result<()> {
        self.copies.promote(number).await
    }

    pub async fn abandon(&self, number: u32) -> anyhow::Result<()> {
        self.copies.abandon(number).await
    }

    /// Deletes every key of the namespace: every copy, the control keys, the instances
    /// (tools and tests that made a namespace of their own).
    pub async fn drop_everything(&self) -> anyhow::Result<()> {
        self.copies.drop_everything().await
    }

    pub async fn newest_building(&self) -> anyhow::Result<Option<u32>> {
        self.copies.newest_building().await
    }

    pub async fn list(&self) -> anyhow::Result<Vec<CopyInfo>> {
        self.copies.list().await
    }

    pub async fn drop_retired(&self) -> anyhow::Result<Vec<String>> {
        self.copies.drop_retired().await
    }

    pub async fn report_instance(&self, report: &InstanceReport) -> anyhow::Result<()> {
        self.copies.report_instance(report).await
    }

    pub async fn forget_instance(&self, instance: &str) -> anyhow::Result<()> {
        self.copies.forget_instance(instance).await
    }

    pub async fn instances(&self, within: Duration) -> anyhow::Result<Vec<InstanceRow>> {
        self.copies.instances(within).await
    }

    pub async fn partitions(&self, copy: &DashboardCopy) -> anyhow::Result<Vec<PartitionStatus>> {
        self.copies.partitions(copy.number).await
    }
}

/// The sink of an opened copy, as the kit wants it.
pub fn sink_of(copy: &DashboardCopy) -> Arc<dyn Sink> {
    Arc::new(copy.sink())
}
