//! `prism-fraud`: fraud features for ML, folded from `account-events`.

pub mod app;
pub mod config;
pub mod copies;
pub mod export;
pub mod features;
pub mod http;
pub mod offline;
pub mod rows;
pub mod sink;
