//! `prism-fraud` end to end, against the real stack: the write side runs in-process
//! (PostgreSQL event store in a schema of its own, relay on), the real `prism-fraud` binary
//! runs as a child process with a topic, consumer group, Redis namespace and offline
//! directory of its own per test.
//!
//! - [`service`]: kills mid-load then `verify fraud` clean (online state and offline rows
//!   against the plain re-implementation), the API's answers and refusals, the training
//!   set export.
//! - [`harness`]: the test's world.
//!
//! The projector is the `prism-fraud` binary next to the `prismctl` under test (`cargo
//! test --workspace` builds it; with `-p prismctl` alone, build it first).

#[path = "../e2e/mod.rs"]
mod e2e;
mod harness;
mod ml;
mod online_offline;
#[path = "../e2e/projector.rs"]
mod projector;
mod service;
