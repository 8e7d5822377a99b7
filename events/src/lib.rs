//! Prism's event contract: the only types that cross Kafka or sit in the event store.
//!
//! This crate depends on nothing of ours; the command service and every projector depend
//! on it. Changes are additive, or bump [`AccountEvent::SCHEMA_VERSION`] with an upcaster.
//!
//! # Layout
//! - [`event`]: the account events and their data types (past tense, one enum).
//! - [`codes`]: ISO country and currency codes, validated.
//! - [`envelope`]: the CloudEvents envelope ([`Envelope`]) and its raw boundary form.
//! - [`kafka`]: the CloudEvents Kafka binding (binary mode: key, `ce_*` headers, JSON value).
//! - [`upcast`]: upgrades old schema versions when an event is read.
//! - [`token`]: the consistency token a client hands to a read model.
//! - [`schema`]: JSON Schemas of every event type, checked in under `events/schemas/`.
//! - `testing` (feature `testing`): event builders for tests, and `testing::traffic`, the one
//!   seeded traffic model (command API requests, or the events they give) behind `Feed`,
//!   `prismctl loadgen` and the benches.

pub mod codes;
pub mod envelope;
pub mod event;
pub mod kafka;
pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token;
pub mod upcast;

pub use codes::{Country, Currency};
pub use envelope::{AccountId, DecodeError, Envelope, RawEvent};
pub use event::AccountEvent;
pub use token::ConsistencyToken;
