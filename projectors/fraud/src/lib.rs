//! `prism-fraud`: fraud features for ML, folded from `account-events`.

pub mod config;
pub mod export;
pub mod offline;
