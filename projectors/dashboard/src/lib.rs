//! `prism-dashboard`: the live operations dashboard of Prism in Redis, and the page ops
//! keep open all day.
//!
//! Every event adds to per-second, per-minute and per-hour counters (events by type, money
//! in and out per currency, card payments approved and declined, declines by reason), to
//! top lists of merchants and countries, and to distinct-account counts; status changes
//! move the account counts; large and declined transactions go to a capped feed. Each
//! batch is one optimistic Redis transaction (`WATCH` the partition's position, read it,
//! check the fence, then `MULTI`/`EXEC`), which writes nothing if the position moved:
//! increments are not idempotent, so the sink is the kit's *transactional* mode. Windows (1 min, 15 min, 1 h, 24 h) are summed from buckets when
//! read; one reader per process feeds every stream viewer.
//!
//! # Layout
//! - [`app`]: the wiring on the projector kit (`DashboardProjector`, `run`).
//! - [`config`]: the `[dashboard]` section.
//! - [`buckets`]: pure: event time → buckets, windows → buckets, expiries.
//! - [`fold`]: pure: an account's small state and one event → its next state and effect.
//! - [`model`]: pure: key names, and what a batch's effects write, summed.
//! - [`sink`]: `RedisSink`, the kit's Redis checkpoint (`WATCH` … `MULTI`/`EXEC` per
//!   batch) over the dashboard's `DashboardModel`; `write_raw` for the benchmark.
//! - [`copies`]: the kit's Redis copies (key prefixes, the live pointer, instance
//!   reports), opened as the dashboard needs them.
//! - [`read`]: the summary in one round trip, series; the window sums (pure).
//! - [`pipeline`]: the other services' health for the page, from their `/metrics`.
//! - [`http`]: the page (embedded `assets/`), the API and the shared stream broadcaster.
//! - [`verify`]: the model against the fold of the event store.

pub mod app;
pub mod buckets;
pub mod config;
pub mod copies;
pub mod fold;
pub mod http;
pub mod model;
pub mod pipeline;
pub mod read;
pub mod sink;
pub mod verify;

pub use config::DashboardConfig;
