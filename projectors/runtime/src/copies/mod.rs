//! Copies of a read model ("generations", blue/green): the interface every projector's
//! store implements, so that the process shell ([`crate::app`]) and `prismctl` (`rebuild`,
//! `status`, `verify`, the benches) handle every read model the same way.
//!
//! A read model has numbered copies. Exactly one is `live`: served by the query API and
//! kept current by the projector. A rebuild creates the next copy (`building`), fills it,
//! and [`Copies::promote`]s it, which retires the previous one in the same atomic step (a
//! row update in the ledger's control database, one `_aliases` request in search). Every
//! copy carries its own positions, so a projector moved to a copy resumes exactly where
//! that copy stands.
//!
//! Running instances say which copy they write and which building copy they could open
//! ([`Copies::report_instance`]); a rebuild hands over only once all of them can.
//!
//! [`LiveCopy`] is what a running projector holds: the live copy, re-read every poll
//! interval and swapped atomically, with the instance report kept current.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::sink::Sink;

#[cfg(feature = "redis")]
pub mod redis;

/// State of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Being filled by a rebuild; not served.
    Building,
    /// Served by the query API and kept current by the projector.
    Live,
    /// Replaced by a newer copy; kept until dropped.
    Retired,
}

impl CopyState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Live => "live",
            Self::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "building" => Some(Self::Building),
            "live" => Some(Self::Live),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
}

impl fmt::Display for CopyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for CopyState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for CopyState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One copy, as `prismctl` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyInfo {
    pub number: u32,
    /// Where it lives: a database name, an index name.
    pub name: String,
    pub state: CopyState,
    pub created_at: DateTime<Utc>,
    pub live_since: Option<DateTime<Utc>>,
}

/// What a running instance says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceReport {
    /// `<group>/<host>/<pid>/<random>`: unique per running instance.
    pub instance: String,
    /// The copy its projector writes; `None`: none.
    pub writing: Option<u32>,
    /// The newest `building` copy it could open.
    pub can_open: Option<u32>,
    /// Why it cannot open the live or the newest building copy.
    pub error: Option<String>,
}

/// A running instance, as last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceRow {
    pub instance: String,
    pub writing: Option<u32>,
    pub can_open: Option<u32>,
    pub error: Option<String>,
    pub seen_at: DateTime<Utc>,
}

/// Where a copy stands on one partition, with what `prismctl status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<Uuid>,
    pub event_time: Option<DateTime<Utc>>,
    pub writer: String,
    pub updated_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// The copies of one read model. Implemented by each projector's store (the ledger's
/// MySQL databases, search's indices behind aliases); used by [`crate::app::run`] and by
/// `prismctl` through [`CopiesAdmin`].
#[async_trait]
pub trait Copies: Send + Sync + fmt::Debug + 'static {
    /// An opened copy: what the sink writes and the query API reads (pools, index names).
    type Copy: Clone + Send + Sync + fmt::Debug + 'static;

    /// The number of an opened copy.
    fn number(copy: &Self::Copy) -> u32;

    /// The sink that writes `copy` (everything it needs is in the opened copy).
    fn sink(copy: &Self::Copy) -> Arc<dyn Sink>;

    /// The live copy; on first start (no copy at all) creates copy 1 and makes it live.
    async fn live(&self) -> anyhow::Result<Self::Copy>;

    /// Which copy is live (cheap; polled), `None` if none.
    async fn live_number(&self) -> anyhow::Result<Option<u32>>;

    /// Opens an existing copy (creating or migrating its schema, idempotent).
    async fn open(&self, number: u32) -> anyhow::Result<Self::Copy>;

    /// Creates the next copy, state `building`, empty.
    async fn create_next(&self) -> anyhow::Result<Self::Copy>;

    /// Makes a building copy live and retires the live one, atomically.
    async fn promote(&self, number: u32) -> anyhow::Result<()>;

    /// Drops a building copy (a rebuild that failed or was refused).
    async fn abandon(&self, number: u32) -> anyhow::Result<()>;

    /// The newest `building` copy, if any.
    async fn newest_building(&self) -> anyhow::Result<Option<u32>>;

    /// Every copy, oldest first.
    async fn list(&self) -> anyhow::Result<Vec<CopyInfo>>;

    /// Drops every retired copy; returns their names.
    async fn drop_retired(&self) -> anyhow::Result<Vec<String>>;

    /// Records (upserts) what an instance says about itself, with the current time.
    async fn report_instance(&self, report: &InstanceReport) -> anyhow::Result<()>;

    /// Removes an instance's row (it stops).
    async fn forget_instance(&self, instance: &str) -> anyhow::Result<()>;

    /// Instances seen within `within`.
    async fn instances(&self, within: Duration) -> anyhow::Result<Vec<InstanceRow>>;

    /// The positions stored in `copy`, with their last errors.
    async fn partitions(&self, copy: &Self::Copy) -> anyhow::Result<Vec<PartitionStatus>>;
}

/// A copy [`CopiesAdmin::create_next`] made.
#[derive(Clone)]
pub struct CreatedCopy {
    pub number: u32,
    /// Where it lives (database, index names).
    pub name: String,
    /// Its sink.
    pub sink: Arc<dyn Sink>,
}

impl fmt::Debug for CreatedCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedCopy")
            .field("number", &self.number)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// [`Copies`] by copy number, object-safe: what `prismctl` holds (`Box<dyn CopiesAdmin>`)
/// for any read model. Every [`Copies`] is one.
#[async_trait]
pub trait CopiesAdmin: Send + Sync + fmt::Debug {
    async fn live_number(&self) -> anyhow::Result<Option<u32>>;
    /// Creates the next copy; returns it with its sink (no second open).
    async fn create_next(&self) -> anyhow::Result<CreatedCopy>;
    /// The sink of copy `number` (opening it).
    async fn sink(&self, number: u32) -> anyhow::Result<Arc<dyn Sink>>;
    async fn promote(&self, number: u32) -> anyhow::Result<()>;
    async fn abandon(&self, number: u32) -> anyhow::Result<()>;
    async fn list(&self) -> anyhow::Result<Vec<CopyInfo>>;
    async fn drop_retired(&self) -> anyhow::Result<Vec<String>>;
    async fn instances(&self, within: Duration) -> anyhow::Result<Vec<InstanceRow>>;
    /// The positions stored in copy `number`.
    async fn partitions(&self, number: u32) -> anyhow::Result<Vec<PartitionStatus>>;
}

#[async_trait]
impl<C: Copies> CopiesAdmin for C {
    async fn live_number(&self) -> anyhow::Result<Option<u32>> {
        Copies::live_number(self).await
    }

    async fn create_next(&self) -> anyhow::Result<CreatedCopy> {
        let copy = Copies::create_next(self).await?;
        let number = C::number(&copy);
        let name = Copies::list(self)
            .await?
            .into_iter()
            .find(|info| info.number == number)
            .map(|info| info.name)
            .unwrap_or_else(|| format!("copy {number}"));
        Ok(CreatedCopy {
            number,
            name,
            sink: C::sink(&copy),
        })
    }

    async fn sink(&self, number: u32) -> anyhow::Result<Arc<dyn Sink>> {
        let copy = Copies::open(self, number).await?;
        Ok(C::sink(&copy))
    }

    async fn promote(&self, number: u32) -> anyhow::Result<()> {
        Copies::promote(self, number).await
    }

    async fn abandon(&self, number: u32) -> anyhow::Result<()> {
        Copies::abandon(self, number).await
    }

    async fn list(&self) -> anyhow::Result<Vec<CopyInfo>> {
        Copies::list(self).await
    }

    async fn drop_retired(&self) -> anyhow::Result<Vec<String>> {
        Copies::drop_retired(self).await
    }

    async fn instances(&self, within: Duration) -> anyhow::Result<Vec<InstanceRow>> {
        Copies::instances(self, within).await
    }

    async fn partitions(&self, number: u32) -> anyhow::Result<Vec<PartitionStatus>> {
        let copy = Copies::open(self, number).await?;
        Copies::partitions(self, &copy).await
    }
}

/// What a running projector reads and writes: the live copy, re-read every poll interval
/// by a background task and swapped atomically. Cheap to clone.
///
/// When a rebuild promotes a copy this instance cannot open, it keeps serving the one it
/// has but says so ([`LiveCopy::unavailable`]): the projector must then stop writing that
/// retired copy (its partitions belong in the live one, where other instances can take
/// them over) and the instance is not ready, until the live one opens.
pub struct LiveCopy<C: Copies> {
    current: watch::Receiver<C::Copy>,
    state: Arc<Mutex<LiveState>>,
}

impl<C: Copies> Clone for LiveCopy<C> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

#[derive(Debug, Default)]
struct LiveState {
    /// The live copy this instance cannot open, and why.
    unavailable: Option<(u32, String)>,
    /// The copy the projector writes now (`None`: none), as the projector says.
    writing: Option<u32>,
}

impl<C: Copies> fmt::Debug for LiveCopy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveCopy")
            .field("current", &*self.current.borrow())
            .finish_non_exhaustive()
    }
}

/// How often a poller that keeps failing logs it again at error level.
const LOUD_EVERY: Duration = Duration::from_secs(30);

impl<C: Copies> LiveCopy<C> {
    /// Opens the live copy (creating copy 1 on first start) and spawns the poller, which
    /// stops when `stop` is cancelled.
    pub async fn start(
        copies: Arc<C>,
        poll: Duration,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        Self::start_instance(copies, poll, stop, None).await
    }

    /// [`LiveCopy::start`] for a running instance named `instance`: every poll also opens
    /// the newest copy being built (so a rebuild knows before it promotes it that this
    /// instance can switch to it) and reports what the projector writes and what it
    /// cannot open ([`Copies::report_instance`]); the report is removed when the poller
    /// stops.
    pub async fn start_instance(
        copies: Arc<C>,
        poll: Duration,
        stop: CancellationToken,
        instance: Option<String>,
    ) -> anyhow::Result<Self> {
        let first = copies.live().await?;
        let (tx, rx) = watch::channel(first);
        let live = LiveCopy {
            current: rx,
            state: Arc::default(),
        };
        let poll = poll.max(Duration::from_millis(10));
        let poller = live.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(poll);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut can_open: Option<u32> = None;
            let mut last_loud: Option<(String, tokio::time::Instant)> = None;
            while !stop.is_cancelled() {
                let current = C::number(&tx.borrow());
                let unavailable = match copies.live_number().await {
                    Ok(Some(number)) if number != current => match copies.open(number).await {
                        Ok(copy) => {
                            tracing::info!(from = current, to = number, "serving a new copy");
                            tx.send_replace(copy);
                            None
                        }
                        Err(e) => Some((
                            number,
                            format!(
                                "cannot open the live copy {number} (still on retired {current}; not projecting): {e:#}"
                            ),
                        )),
                    },
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!("polling the live copy: {e:#}");
                        poller.unavailable()
                    }
                };
                if let Some((_, why)) = &unavailable {
                    // Loud, but not once per poll.
                    let repeat = last_loud
                        .as_ref()
                        .is_none_or(|(said, at)| said != why || at.elapsed() >= LOUD_EVERY);
                    if repeat {
                        tracing::error!("{why}");
                        last_loud = Some((why.clone(), tokio::time::Instant::now()));
                    }
                }
                poller.state.lock().unavailable = unavailable;
                if let Some(instance) = &instance {
                    let mut probe_error = None;
                    match copies.newest_building().await {
                        Ok(Some(building)) if Some(building) != can_open => {
                            match copies.open(building).await {
                                Ok(_) => can_open = Some(building),
                                Err(e) => {
                                    probe_error = Some(format!(
                                        "cannot open copy {building}, being built: {e:#}"
                                    ));
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("looking for a copy being built: {e:#}"),
                    }
                    let report = {
                        let state = poller.state.lock();
                        InstanceReport {
                            instance: instance.clone(),
                            writing: state.writing,
                            can_open,
                            error: state
                                .unavailable
                                .as_ref()
                                .map(|(_, why)| why.clone())
                                .or(probe_error),
                        }
                    };
                    if let Err(e) = copies.report_instance(&report).await {
                        tracing::warn!("{e:#}");
                    }
                }
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = stop.cancelled() => break,
                }
            }
            if let Some(instance) = &instance {
                if let Err(e) = copies.forget_instance(instance).await {
                    tracing::warn!("{e:#}");
                }
            }
        });
        Ok(live)
    }

    /// The copy to read now (cheap clone).
    pub fn current(&self) -> C::Copy {
        self.current.borrow().clone()
    }

    /// Number of the copy served now.
    pub fn number(&self) -> u32 {
        C::number(&self.current.borrow())
    }

    /// The sink on the copy served now.
    pub fn sink(&self) -> Arc<dyn Sink> {
        C::sink(&self.current.borrow())
    }

    /// The live copy this instance cannot open and why, if so: what it serves is a
    /// retired copy, which its projector must not write.
    pub fn unavailable(&self) -> Option<(u32, String)> {
        self.state.lock().unavailable.clone()
    }

    /// The copy the projector writes now (`None`: none), as it last said
    /// ([`LiveCopy::set_writing`]).
    pub fn writing(&self) -> Option<u32> {
        self.state.lock().writing
    }

    /// Records which copy the projector writes (`None`: it writes none), for the
    /// instance report.
    pub fn set_writing(&self, copy: Option<u32>) {
        self.state.lock().writing = copy;
    }

    /// A live copy that always serves `copy`, with no poller (tests of a query API).
    #[doc(hidden)]
    pub fn fixed(copy: C::Copy) -> Self {
        let (_sender, current) = watch::channel(copy);
        LiveCopy {
            current,
            state: Arc::default(),
        }
    }
}
