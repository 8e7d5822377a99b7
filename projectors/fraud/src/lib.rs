//! `prism-fraud`: fraud features for ML, folded from `account-events`.
