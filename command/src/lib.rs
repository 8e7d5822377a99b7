//! Prism's write side: the only writer of the source of truth.
//!
//! A command arrives over HTTP, is decided against the account's state rebuilt from its
//! events, and the resulting events are appended to the event store with optimistic
//! concurrency; the relay then publishes every stored event to Kafka in per-account order.
//!
//! # Layout
//! - [`account`]: the aggregate, pure: `decide(state, command) -> events | rejection`,
//!   `evolve(state, event)`. No I/O.
//! - [`store`]: the event store trait and its MongoDB and PostgreSQL backends.
//! - [`service`]: command handling — per-account queue, cache, retries, idempotency.
//! - [`relay`]: the transactional outbox: stored events → Kafka, in order per account.
//! - [`http`]: the axum API, problem documents, OpenAPI.
//! - [`app`]: wiring, shared by `main.rs` and the tests.
//! - [`metrics`]: every metric name in one place.

pub mod account;
pub mod app;
pub mod http;
pub mod metrics;
pub mod relay;
pub mod service;
pub mod store;
