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
//! The Redis sinks fit one of the two:
//! - **Redis** (dashboard) is transactional in the small: `WATCH` on the position key and
//!   the batch's account keys, read them, check the fence, then `MULTI`/`EXEC` with the
//!   increments, the versions and the position; `EXEC` runs nothing if a watched key moved.
//!   The version check must be part of that step because increments are not idempotent.
//! - **Two stores behind one position** (fraud: online state in Redis, an offline Parquet
//!   log) is idempotent by version: the offline output is written first, durable and
//!   deterministic (same batch → same file name and bytes, rows keyed by event id, so a
//!   reader drops duplicates), then the online state and the position in one atomic step.
//!   A crash between the two repeats the offline write, which changes nothing.

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
