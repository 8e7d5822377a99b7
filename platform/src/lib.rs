//! Process plumbing shared by every Prism binary.
//!
//! Both the write side (`prism-command`) and every projector start the same way: load the
//! [`config::Config`], install [`telemetry`], build clients with [`clients`]. Nothing here
//! knows about accounts or events; this crate sits below all domain code.
//!
//! # Layout
//! - [`config`]: the typed, layered configuration (defaults ← file ← profile ← env).
//! - [`secret`]: [`secret::Secret`] and [`secret::Dsn`], values that never print passwords.
//! - [`clients`]: one constructor per backing service, same timeouts everywhere.
//! - [`auth`]: bearer-token authentication of the HTTP APIs.
//! - [`http`]: problem documents, `/metrics` rendering, the shutdown signal.
//! - [`telemetry`]: `tracing` set-up.

pub mod auth;
pub mod clients;
pub mod config;
pub mod http;
pub mod pii;
pub mod secret;
pub mod telemetry;

pub use config::Config;
