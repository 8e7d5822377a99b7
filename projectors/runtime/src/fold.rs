//! The pure part of a projector, as the kit sees it: one account's state (or none) and one
//! event give the account's next state and what the event adds besides it (a statement
//! line, a transaction document). No I/O, no clock, no randomness: the same history always
//! folds to the same model. The sink loads states and writes results; everything between is
//! a [`Fold`], which the kit can therefore run without a store: [`fold_history`] replays a
//! whole event log (what `verify` compares a read model with, and what a benchmark times as
//! the fold's own ceiling).

use std::collections::HashMap;

use prism_events::Envelope;
use uuid::Uuid;

/// A projector's fold.
pub trait Fold {
    /// The per-account state the sink keeps (a row, a document).
    type Account: Clone;
    /// What one event adds besides the account's state.
    type Effect;
    /// Why the fold refuses an event for good (a version that skips one, bad data).
    type Rejection: std::fmt::Display;

    /// Folds `event` onto the account's current state. Must refuse a version other than
    /// the next one, so that nothing is ever applied onto a state that misses an event.
    fn fold(
        current: Option<&Self::Account>,
        event: &Envelope,
    ) -> Result<(Self::Account, Self::Effect), Self::Rejection>;
}

/// What [`fold_history`] computes: every account's final state and every event's effect in
/// order, plus the events the fold refused (with every later event of their account, which
/// the runtime would dead-letter too: an account is never folded past a refused event).
#[derive(Debug)]
pub struct History<F: Fold> {
    pub accounts: HashMap<Uuid, F::Account>,
    pub effects: Vec<F::Effect>,
    /// `(event id, reason)` of each refused or quarantined event.
    pub refused: Vec<(Uuid, String)>,
}

/// Folds `events` (each account's versions in order; accounts interleaved freely) as the
/// runtime would: an event at or below the account's folded version is a duplicate and
/// skipped; a refused event quarantines its account.
pub fn fold_history<F: Fold>(
    events: impl IntoIterator<Item = Envelope>,
    version: impl Fn(&F::Account) -> u64,
) -> History<F> {
    let mut accounts: HashMap<Uuid, F::Account> = HashMap::new();
    let mut quarantined: std::collections::HashSet<Uuid> = Default::default();
    let mut effects = Vec::new();
    let mut refused = Vec::new();
    for event in events {
        let id = event.account_id.0;
        if quarantined.contains(&id) {
            refused.push((
                event.id,
                "an earlier event of the account was refused".into(),
            ));
            continue;
        }
        let current = accounts.get(&id);
        if current.is_some_and(|a| version(a) >= event.account_version) {
            continue;
        }
        match F::fold(current, &event) {
            Ok((account, effect)) => {
                accounts.insert(id, account);
                effects.push(effect);
            }
            Err(rejection) => {
                refused.push((event.id, rejection.to_string()));
                quarantined.insert(id);
            }
        }
    }
    History {
        accounts,
        effects,
        refused,
    }
}

#[cfg(test)]
mod tests {
    use prism_events::testing::{closed, envelope};
    use prism_events::{AccountId, Envelope};

    use super::*;

    /// A fold that counts events and refuses gaps, as every real fold must.
    struct Count;

    impl Fold for Count {
        type Account = u64;
        type Effect = u64;
        type Rejection = String;

        fn fold(current: Option<&u64>, event: &Envelope) -> Result<(u64, u64), String> {
            let next = current.copied().unwrap_or(0) + 1;
            if event.account_version != next {
                return Err(format!("gap: {} after {}", event.account_version, next - 1));
            }
            Ok((next, event.account_version))
        }
    }

    fn event(account: u128, version: u64) -> Envelope {
        envelope(closed())
            .id(Uuid::from_u128(account * 1_000 + u128::from(version)))
            .account(AccountId(Uuid::from_u128(account)))
            .version(version)
            .build()
    }

    #[test]
    fn duplicates_are_skipped_and_a_refused_event_quarantines_its_account() {
        let history = fold_history::<Count>(
            [
                event(1, 1),
                event(2, 1),
                event(1, 2),
                event(1, 2),
                event(2, 3),
                event(2, 4),
                event(1, 3),
            ],
            |v| *v,
        );
        assert_eq!(history.accounts[&Uuid::from_u128(1)], 3);
        assert_eq!(
            history.accounts[&Uuid::from_u128(2)],
            1,
            "stops before the gap"
        );
        assert_eq!(history.effects, vec![1, 1, 2, 3]);
        let refused: Vec<Uuid> = history.refused.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            refused,
            vec![Uuid::from_u128(2_003), Uuid::from_u128(2_004)]
        );
    }
}
