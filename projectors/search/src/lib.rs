//! `prism-search`: the search read model of Prism's accounts, in Elasticsearch or
//! OpenSearch, and its query API for analysts.
//!
//! Every deposit, withdrawal and card payment (approved or declined) becomes one document
//! of the `transactions` index, and every account one document of the `accounts` index,
//! both behind aliases so a rebuild fills new indices and swaps the aliases in one step.
//! `_bulk` is not atomic, so the sink runs in the kit's *idempotent by version* checkpoint
//! mode: every write can be repeated unchanged, and the position moves last.
//!
//! # Layout
//! - [`app`]: the wiring on the projector kit (`SearchProjector`, `run`) and the kit's
//!   `Copies` over [`copies::SearchCopies`]; `main.rs` is `prism_projector::app::main`.
//! - [`config`]: the `[search]` section (`SearchConfig`).
//! - [`fold`]: pure: an account document and one event in, the new account document and
//!   the event's transaction document out; the MCC descriptions.
//! - [`index`]: index and alias names, mappings and settings (one place for both).
//! - [`sink`]: `EsSink`, the kit's `Sink` over one copy: the transaction and account
//!   documents of a batch on the kit's `checkpoint::elasticsearch` (fence, item checks,
//!   the checkpoint index); `write_raw` for the benchmark.
//! - [`query`]: pure: the engine requests of the search API from validated parameters.
//! - [`http`]: the search API (axum): transactions with facets and stable paging,
//!   account autocomplete, NDJSON/CSV export, read-your-writes.
//! - [`copies`]: `SearchCopies`, the blue/green copies: the control index, copy indices,
//!   the atomic alias swap, instance reports.
//! - [`verify`]: the model against the fold of the event store (`prismctl verify search`).

pub mod app;
pub mod config;
pub mod copies;
pub mod fold;
pub mod http;
pub mod index;
pub mod query;
pub mod sink;
pub mod verify;

pub use config::SearchConfig;
