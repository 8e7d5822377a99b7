//! The ledger read model (MySQL) and its query API.

pub mod app;
pub mod fold;
pub mod http;
pub mod query;
pub mod sink;
pub mod store;
