//! `prismctl`: Prism's admin CLI, as a library so that integration tests (and other tools)
//! can call the commands' cores directly.
//!
//! # Layout
//! - `doctor`: connects to every configured backing service and prints a health table.
//! - `bench`: `bench command` (prism-command next to its store's raw append ceiling),
//!   `bench ledger` (replay throughput next to the raw Kafka and MySQL ceilings) and
//!   `bench visibility` (acceptance → visible in the ledger); `sample` reads the CPU and
//!   memory figures they report from `/proc`.
//! - `loadgen`: seeded, reproducible traffic through prism-command's HTTP API.
//! - `traffic`: the pure, seeded traffic model `loadgen` sends (the event contract's
//!   `testing::traffic`, shared with projector tests), held to the command service's rules.
//! - `demo`: runs the write side and the ledger in-process (`services`), sends a short load
//!   and shows the query API, including a read-your-writes query.
//! - `status`: each projector's stored positions against Kafka's end offsets.
//! - `verify`: re-folds the event store independently and compares it with a read model
//!   (`verify_model` through the kit's `Verify`; `verify_fraud` the fraud features' plain
//!   re-implementation).
//! - `export`: the fraud model's training set from its offline store.
//! - `rebuild`: builds a new copy of a read model beside the live one and switches to it.
//! - `chaos`: the whole platform (two instances of every service, as processes) under
//!   seeded traffic and seeded faults (kills, servers stopped, network faults through
//!   toxiproxy, rebalances, rebuilds), then every guarantee checked against the store.
//! - `seed`: fills an event store with a long seeded history through its raw insert.

pub mod bench;
pub mod chaos;
pub mod demo;
pub mod doctor;
pub mod export;
pub mod loadgen;
pub mod models;
pub mod rebuild;
pub mod sample;
pub mod seed;
pub mod services;
pub mod status;
pub mod table;
pub mod traffic;
pub mod verify;
pub mod verify_fraud;
pub mod verify_model;
