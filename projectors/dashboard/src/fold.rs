//! The dashboard's fold, pure: an account's small state (version, currency, status) and one
//! event give the account's next state and the event's [`Effect`], what it adds to the
//! counters. Money moves in the account's currency (events carry amounts only), which is
//! why the dashboard keeps the account state at all.
//!
//! A version other than the next one is refused, like every fold of the kit.

use chrono::{DateTime, Utc};
use prism_events::{AccountEvent, Country, Currency, Envelope};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An account as the dashboard keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub version: u64,
    pub currency: Currency,
    pub status: Status,
}

/// An account's status, as counted on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Frozen,
    Closed,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Open, Status::Frozen, Status::Closed];

    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Frozen => "frozen",
            Status::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A card payment's merchant side, as the top lists count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub merchant: String,
    pub country: Country,
    pub approved: bool,
    /// `insufficient_funds`, … for a declined payment.
    pub reason: Option<&'static str>,
}

/// What one event adds to the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub event_id: Uuid,
    pub account_id: Uuid,
    pub version: u64,
    pub time: DateTime<Utc>,
    pub event_type: &'static str,
    pub currency: Currency,
    /// Minor units into the account (deposits).
    pub money_in: i64,
    /// Minor units out of the account (withdrawals, approved card payments).
    pub money_out: i64,
    /// The amount of a declined payment (moves no money; shown in the feed).
    pub declined_amount: i64,
    pub card: Option<Card>,
    /// The status change, if any: (before, after); `None` before for an opening.
    pub status_change: Option<(Option<Status>, Status)>,
}

impl Effect {
    /// The amount the feed shows.
    pub fn amount(&self) -> i64 {
        self.money_in.max(self.money_out).max(self.declined_amount)
    }

    /// Whether the event goes to the live feed (large, or a declined payment).
    pub fn in_feed(&self, large_amount_minor: i64) -> bool {
        let declined = self.card.as_ref().is_some_and(|c| !c.approved);
        let moves_money = self.money_in > 0 || self.money_out > 0 || self.declined_amount > 0;
        declined || (moves_money && self.amount() >= large_amount_minor)
    }
}

/// Why the dashboard refuses an event for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{event_type} for account {account_id}, which was never opened")]
    UnknownAccount {
        account_id: Uuid,
        event_type: &'static str,
    },
    #[error("account {account_id} is already open (version {version})")]
    AlreadyOpened { account_id: Uuid, version: u64 },
    /// Folding version n+2 onto n would lose version n+1's effect for good.
    #[error(
        "version {version} of account {account_id} does not follow the stored version \
         {stored}"
    )]
    OutOfOrder {
        account_id: Uuid,
        version: u64,
        stored: u64,
    },
    #[error("{field} must be positive, got {value}")]
    NotPositive { field: &'static str, value: i64 },
}

/// The kit's view of the fold.
#[derive(Debug)]
pub struct DashboardFold;

impl prism_projector::fold::Fold for DashboardFold {
    type Account = Account;
    type Effect = Effect;
    type Rejection = Rejection;

    fn fold(current: Option<&Account>, event: &Envelope) -> Result<(Account, Effect), Rejection> {
        fold(current, event)
    }
}

/// Folds `event` onto `current` (`None`: the account is not known yet).
pub fn fold(current: Option<&Account>, event: &Envelope) -> Result<(Account, Effect), Rejection> {
    let account_id = event.account_id.0;
    let version = event.account_version;
    let stored = current.map_or(0, |a| a.version);
    if version != stored + 1 {
        return Err(Rejection::OutOfOrder {
            account_id,
            version,
            stored,
        });
    }
    // The state before (`None`: the event opens the account) and after.
    let (before, mut next) = match (current, &event.event) {
        (None, AccountEvent::AccountOpened(opened)) => (
            None,
            Account {
                version,
                currency: opened.currency,
                status: Status::Open,
            },
        ),
        (None, other) => {
            return Err(Rejection::UnknownAccount {
                account_id,
                event_type: other.event_type(),
            })
        }
        (Some(a), AccountEvent::AccountOpened(_)) => {
            return Err(Rejection::AlreadyOpened {
                account_id,
                version: a.version,
            })
        }
        (Some(a), _) => (Some(a.status), Account { version, ..*a }),
    };
    let mut effect = Effect {
        event_id: event.id,
        account_id,
        version,
        time: event.time,
        event_type: event.event_type(),
        currency: next.currency,
        money_in: 0,
        money_out: 0,
        declined_amount: 0,
        card: None,
        status_change: None,
    };
    match &event.event {
        AccountEvent::AccountOpened(_) => {}
        AccountEvent::MoneyDeposited(e) => {
            effect.money_in = positive("amount_minor", e.amount_minor)?;
        }
        AccountEvent::MoneyWithdrawn(e) => {
            effect.money_out = positive("amount_minor", e.amount_minor)?;
        }
        AccountEvent::CardPaymentApproved(e) => {
            effect.money_out = positive("amount_minor", e.payment.amount_minor)?;
            effect.card = Some(Card {
                merchant: e.payment.merchant_name.clone(),
                country: e.payment.merchant_country,
                approved: true,
                reason: None,
            });
        }
        AccountEvent::CardPaymentDeclined(e) => {
            // A decline may be for an amount out of range: any value is shown.
            effect.declined_amount = e.payment.amount_minor.max(0);
            effect.card = Some(Card {
                merchant: e.payment.merchant_name.clone(),
                country: e.payment.merchant_country,
                approved: false,
                reason: Some(e.decline_reason.as_str()),
            });
        }
        AccountEvent::AccountFrozen(_) => next.status = Status::Frozen,
        AccountEvent::AccountUnfrozen(_) => next.status = Status::Open,
        AccountEvent::AccountClosed(_) => next.status = Status::Closed,
        // Counted by its type like every event; nothing else on the page.
        AccountEvent::PaymentReportedFraudulent(_) => {}
    }
    if before != Some(next.status) {
        effect.status_change = Some((before, next.status));
    }
    Ok((next, effect))
}

fn positive(field: &'static str, value: i64) -> Result<i64, Rejection> {
    if value > 0 {
        Ok(value)
    } else {
        Err(Rejection::NotPositive { field, value })
    }
}

#[cfg(test)]
mod tests {
    use prism_events::event::DeclineReason;
    use prism_events::testing::{
        closed, deposited, envelope, frozen, opened, payment, unfrozen, withdrawn,
    };

    use super::*;

    fn run(events: Vec<Envelope>) -> (Option<Account>, Vec<Effect>) {
        let mut account = None;
        let mut effects = Vec::new();
        for e in events {
            let (a, effect) = fold(account.as_ref(), &e).expect("folds");
            account = Some(a);
            effects.push(effect);
        }
        (account, effects)
    }

    #[test]
    fn money_moves_in_the_accounts_currency_and_declines_move_none() {
        let (account, effects) = run(vec![
            envelope(opened("Ada", "DE", "EUR")).version(1).build(),
            envelope(deposited(10_000)).version(2).build(),
            envelope(withdrawn(2_500)).version(3).build(),
            envelope(
                payment(1_200)
                    .merchant("Corner Cafe")
                    .country("DE")
                    .approved(),
            )
            .version(4)
            .build(),
            envelope(
                payment(90_000)
                    .merchant("Corner Cafe")
                    .country("DE")
                    .declined(DeclineReason::InsufficientFunds),
            )
            .version(5)
            .build(),
        ]);
        let account = account.expect("opened");
        assert_eq!((account.version, account.currency.as_str()), (5, "EUR"));
        let moved: Vec<(i64, i64)> = effects.iter().map(|e| (e.money_in, e.money_out)).collect();
        assert_eq!(moved, [(0, 0), (10_000, 0), (0, 2_500), (0, 1_200), (0, 0)]);
        assert!(effects.iter().all(|e| e.currency.as_str() == "EUR"));
        let declined = effects[4].card.as_ref().expect("card");
        assert_eq!(
            (
                declined.approved,
                declined.reason,
                declined.country.as_str()
            ),
            (false, Some("insufficient_funds"), "DE")
        );
        assert_eq!(effects[4].amount(), 90_000);
        assert!(
            effects[4].in_feed(1_000_000),
            "every decline is in the feed"
        );
        assert!(effects[1].in_feed(10_000) && !effects[1].in_feed(10_001));
        assert!(!effects[0].in_feed(0), "an opening moves no money");
    }

    #[test]
    fn status_changes_are_reported_with_both_sides() {
        let (account, effects) = run(vec![
            envelope(opened("Bo", "US", "USD")).version(1).build(),
            envelope(frozen("review")).version(2).build(),
            envelope(unfrozen()).version(3).build(),
            envelope(closed()).version(4).build(),
        ]);
        let changes: Vec<_> = effects.iter().map(|e| e.status_change).collect();
        assert_eq!(
            changes,
            [
                Some((None, Status::Open)),
                Some((Some(Status::Open), Status::Frozen)),
                Some((Some(Status::Frozen), Status::Open)),
                Some((Some(Status::Open), Status::Closed)),
            ]
        );
        assert_eq!(account.map(|a| a.status), Some(Status::Closed));
    }

    #[test]
    fn gaps_unknown_accounts_and_second_openings_are_refused() {
        let open = envelope(opened("Ada", "DE", "EUR")).version(1).build();
        let (account, _) = fold(None, &open).expect("opens");
        let gap = envelope(deposited(5)).version(3).build();
        assert!(matches!(
            fold(Some(&account), &gap),
            Err(Rejection::OutOfOrder {
                version: 3,
                stored: 1,
                ..
            })
        ));
        let orphan = envelope(deposited(5)).version(1).build();
        assert!(matches!(
            fold(None, &orphan),
            Err(Rejection::UnknownAccount { .. })
        ));
        let again = envelope(opened("Ada", "DE", "EUR")).version(2).build();
        assert!(matches!(
            fold(Some(&account), &again),
            Err(Rejection::AlreadyOpened { .. })
        ));
    }
}
