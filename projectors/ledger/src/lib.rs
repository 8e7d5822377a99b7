//! The ledger read model (MySQL) and its query API.
//!
//! # Layout
//! - [`app`]: the wiring on the projector kit (`LedgerProjector`, `run`).
//! - [`config`]: the `[ledger]` section (`LedgerConfig`); `[ledger.projector]` tunes the
//!   runtime for the ledger alone.
//! - [`fold`]: pure: an account row and one event in, the new row, statement line and
//!   daily-totals increment out.
//! - [`sink`]: `MySqlSink`, the kit's `Sink` over one copy (one transaction per batch).
//! - [`store`]: the control database and the copies (`prism_ledger_g<N>`).
//! - [`query`] + [`http`]: the query API.

pub mod app;
pub mod config;
pub mod fold;
pub mod http;
pub mod query;
pub mod sink;
pub mod store;

pub use config::LedgerConfig;
