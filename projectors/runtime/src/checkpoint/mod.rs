//! Checkpoint storage: where a sink keeps the runtime's bookkeeping (each partition's
//! position with its fence, each account's last handled version, the last error), so that
//! a sink writes only its read model.
//!
//! Two modes, after what the store can do:
//! - **transactional** ([`mysql`]): the position, the versions and the read-model rows are
//!   written in one transaction; the fence is a locking read of the position row inside
//!   it. Nothing is visible before the commit, so a fenced or failed write leaves nothing.
//! - **idempotent by version** ([`elasticsearch`]: a checkpoint index beside the read
//!   model's indices): the store has no transaction across documents, so every read-model
//!   write must be harmless to repeat (document id = event id; per-account documents
//!   versioned by account version, so an older write loses), the versions and the position
//!   are written only after every read-model write succeeded, and the position write is
//!   fenced by a compare-and-set on its own document. A crash in between leaves writes that
//!   the replay repeats unchanged.
//!
//! Both store the same [`crate::StoredPosition`] and versions, and both answer
//! [`crate::SinkError::Fenced`] when another writer moved the partition.
//!
//! Redis ([`redis`], feature `redis`) is transactional in the small: `WATCH` on the
//! position key, read it and the accounts, check the fence, then `MULTI`/`EXEC` with the
//! accounts, the read model's other writes and the position; `EXEC` runs nothing if the
//! position moved. A read model in Redis supplies only its `RedisModel` (the dashboard's
//! increments, the fraud model's feature states). A model that also keeps something
//! outside Redis (the fraud model's offline Parquet files) writes it in
//! `RedisModel::before_commit`, durable and harmless to repeat, before the transaction
//! moves the position: a crash in between repeats that write, which changes nothing.

#[cfg(feature = "elasticsearch")]
pub mod elasticsearch;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "redis")]
pub mod redis;

/// How a sink keeps its position with its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Position, versions and read-model rows in one transaction.
    Transactional,
    /// Idempotent writes first, the fenced position last.
    IdempotentByVersion,
}

/// `s` cut to at most `max` characters, the last being `…` when cut (display only: the
/// last error a status shows).
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Longest last-error message kept with a position.
pub const LAST_ERROR_MAX: usize = 2_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_marks_a_cut() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "ab…");
        assert_eq!(clip("ééé", 3), "ééé");
    }
}
