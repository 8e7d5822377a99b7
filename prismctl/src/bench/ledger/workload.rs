//! The events the bench replays: the seeded [`crate::traffic`] model run through the
//! account rules ([`Events`]), spread evenly over 30 days so that daily totals and the daily
//! withdrawal limit see many days.

use chrono::{DateTime, Utc};
use prism_events::Envelope;

use crate::traffic::Events;

/// 2025-01-01T00:00:00Z in microseconds: the first event's time.
const START_US: i64 = 1_735_689_600_000_000;
/// The events' times spread over 30 days (so daily totals have many days).
const SPAN_US: i64 = 30 * 86_400 * 1_000_000;
/// Share of suspicious steps (card-testing bursts, holds), as `prismctl demo` sends.
const SUSPICIOUS_SHARE: f64 = 0.02;

/// When the workload's events happen: the first one's time and the step between two.
#[derive(Debug, Clone, Copy)]
pub(in crate::bench) struct Timing {
    pub(in crate::bench) start: DateTime<Utc>,
    pub(in crate::bench) step: chrono::Duration,
}

impl Timing {
    /// `events` events spread evenly over 30 days from 2025-01-01 (the replay benches).
    pub(in crate::bench) fn spread(events: u64) -> Self {
        let step_us = (SPAN_US / i64::try_from(events.max(1)).unwrap_or(i64::MAX)).max(1);
        Self {
            start: DateTime::<Utc>::from_timestamp_micros(START_US).unwrap_or_default(),
            step: chrono::Duration::microseconds(step_us),
        }
    }

    /// `events` events at `per_second`, the last one now: what a live system would have
    /// produced (the dashboard keeps recent buckets only).
    pub(in crate::bench) fn ending_now(events: u64, per_second: f64) -> Self {
        let step_us = (1e6 / per_second.max(1e-3)).round().max(1.0) as i64;
        let span = chrono::Duration::microseconds(
            step_us.saturating_mul(i64::try_from(events).unwrap_or(i64::MAX)),
        );
        Self {
            start: Utc::now() - span,
            step: chrono::Duration::microseconds(step_us),
        }
    }
}

/// `events` events over `accounts` accounts (each opened before its other events) as
/// `(account index, envelope)`, spread over 30 days; the same arguments give the same
/// events, ids included.
pub(in crate::bench) fn workload(
    seed: u64,
    accounts: usize,
    events: u64,
) -> impl Iterator<Item = (usize, Envelope)> {
    timed_workload(seed, accounts, events, Timing::spread(events))
}

/// [`workload`] at other times (the events are the same but for their times).
pub(in crate::bench) fn timed_workload(
    seed: u64,
    accounts: usize,
    events: u64,
    timing: Timing,
) -> impl Iterator<Item = (usize, Envelope)> {
    Events::new(seed, accounts, SUSPICIOUS_SHARE, timing.start, timing.step)
        .take(usize::try_from(events).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prism_events::AccountEvent;
    use prism_ledger::sink::fold_batch;

    use super::*;

    #[test]
    fn the_workload_is_reproducible_and_folds_without_rejection() {
        let a: Vec<(usize, Envelope)> = workload(7, 20, 2_000).collect();
        let b: Vec<(usize, Envelope)> = workload(7, 20, 2_000).collect();
        assert_eq!(a.len(), 2_000);
        assert_eq!(a, b);
        // Every account is opened first, versions are consecutive, times increase.
        let mut versions = HashMap::new();
        let mut last_time = None;
        for (i, (account, envelope)) in a.iter().enumerate() {
            if i < 20 {
                assert_eq!(*account, i);
                assert!(matches!(envelope.event, AccountEvent::AccountOpened(_)));
            }
            let v = versions.entry(*account).or_insert(0);
            *v += 1;
            assert_eq!(envelope.account_version, *v);
            assert!(last_time < Some(envelope.time));
            last_time = Some(envelope.time);
            // Round trip through the Kafka binding.
            let record = prism_events::kafka::encode(envelope);
            let decoded = prism_events::kafka::decode(
                Some(record.key.as_bytes()),
                record.headers.iter().map(|(k, v)| (*k, v.as_bytes())),
                Some(&record.value),
            )
            .expect("decodes");
            assert_eq!(&decoded, envelope);
        }
        let events: Vec<Envelope> = a.into_iter().map(|(_, e)| e).collect();
        let mut state = HashMap::new();
        let writes = fold_batch(&mut state, &events).expect("folds");
        assert!(state.values().all(|row| row.balance_minor >= 0));
        assert!(!writes.lines.is_empty() && !writes.daily.is_empty());
        let types: std::collections::HashSet<&str> =
            events.iter().map(Envelope::event_type).collect();
        for t in [
            "prism.account.opened",
            "prism.account.money_deposited",
            "prism.account.money_withdrawn",
            "prism.account.card_payment_approved",
            "prism.account.card_payment_declined",
        ] {
            assert!(types.contains(t), "no {t} in {types:?}");
        }
    }
}
