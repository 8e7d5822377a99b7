//! Test data for every crate's tests (feature `testing`): account events with sane
//! defaults, envelopes around them, and the seeded traffic model ([`traffic`]: requests for
//! a client of the command API, or the events they give) with [`Feed`], its events on
//! partitions for projector tests.
//!
//! One place for them, so that a change to the contract (a new field, a new type) is made
//! once instead of in every test file that builds events by hand. Defaults are fixed
//! (never random): a test that reads a default value can rely on it.
//!
//! ```
//! use prism_events::testing::{deposited, opened, Account, Feed};
//!
//! let mut ada = Account::new(0);
//! let (first, partition) = ada.next_now(opened("Ada", "DE", "EUR"));
//! let (second, _) = ada.next_now(deposited(10_000));
//! assert_eq!((first.account_version, second.account_version, partition), (1, 2, 0));
//!
//! // 200 valid events over 10 accounts on 3 partitions, the same for the same seed.
//! let events = Feed::new(7, 10, 3).take(200);
//! assert_eq!(events.len(), 200);
//! ```

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound as _, TimeZone, Utc};
use uuid::Uuid;

use crate::event::{
    AccountClosed, AccountFrozen, AccountOpened, AccountUnfrozen, CardChannel, CardPayment,
    CardPaymentApproved, CardPaymentDeclined, DeclineReason, MinorUnits, MoneyDeposited,
    MoneyWithdrawn, PaymentReportedFraudulent, WithdrawalChannel,
};
use crate::{AccountEvent, AccountId, Country, Currency, Envelope};

pub mod traffic;

/// `source` of every test envelope (the command service's).
pub const SOURCE: &str = "/prism/command";

/// Daily withdrawal limit of [`opened`] accounts, in minor units.
pub const DAILY_LIMIT: MinorUnits = 500_000;

/// Merchant of [`card_payment`] and [`declined_payment`] unless [`Payment::merchant`] says
/// otherwise: a café in Portugal (category 5814, fast food).
pub const MERCHANT: &str = "Café Rosa";
pub const MERCHANT_CATEGORY: &str = "5814";
pub const MERCHANT_COUNTRY: &str = "PT";

/// `2025-03-d h:m:00 UTC`; an out-of-range day or hour gives the Unix epoch (tests pass
/// literals, so that never happens silently in practice: the first assertion on a time
/// shows it).
pub fn day(d: u32, h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, d, h, m, 0)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// A country from its ISO code; an unknown code is a bug in the test, so it panics.
pub fn country(code: &str) -> Country {
    Country::parse(code).unwrap_or_else(|e| panic!("test data: country {code:?}: {e}"))
}

/// A currency from its ISO code; an unknown code is a bug in the test, so it panics.
pub fn currency(code: &str) -> Currency {
    Currency::parse(code).unwrap_or_else(|e| panic!("test data: currency {code:?}: {e}"))
}

/// `AccountOpened` for `name` (email derived from it), with [`DAILY_LIMIT`].
pub fn opened(name: &str, country_code: &str, currency_code: &str) -> AccountEvent {
    AccountEvent::AccountOpened(AccountOpened {
        holder_name: name.into(),
        email: format!("{}@example.org", name.to_lowercase().replace(' ', ".")),
        country: country(country_code),
        currency: currency(currency_code),
        daily_withdrawal_limit_minor: DAILY_LIMIT,
    })
}

/// `MoneyDeposited`, described as "salary".
pub fn deposited(amount_minor: MinorUnits) -> AccountEvent {
    AccountEvent::MoneyDeposited(MoneyDeposited {
        amount_minor,
        description: Some("salary".into()),
    })
}

/// `MoneyWithdrawn` at an ATM, described as "cash".
pub fn withdrawn(amount_minor: MinorUnits) -> AccountEvent {
    AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
        amount_minor,
        description: Some("cash".into()),
        channel: WithdrawalChannel::Atm,
    })
}

/// An approved card payment at `merchant` (category and country: the defaults).
pub fn card_payment(amount_minor: MinorUnits, merchant: &str) -> AccountEvent {
    payment(amount_minor).merchant(merchant).approved()
}

/// A declined card payment at [`MERCHANT`].
pub fn declined_payment(amount_minor: MinorUnits, reason: DeclineReason) -> AccountEvent {
    payment(amount_minor).declined(reason)
}

pub fn frozen(reason: &str) -> AccountEvent {
    AccountEvent::AccountFrozen(AccountFrozen {
        reason: reason.into(),
    })
}

pub fn unfrozen() -> AccountEvent {
    AccountEvent::AccountUnfrozen(AccountUnfrozen {})
}

pub fn closed() -> AccountEvent {
    AccountEvent::AccountClosed(AccountClosed {})
}

/// A fraud report of the payment event `payment_event_id`.
pub fn reported_fraudulent(payment_event_id: Uuid, reason: &str) -> AccountEvent {
    AccountEvent::PaymentReportedFraudulent(PaymentReportedFraudulent {
        payment_event_id,
        reason: reason.into(),
    })
}

/// A card payment being built: at [`MERCHANT`], card present, until told otherwise.
pub fn payment(amount_minor: MinorUnits) -> Payment {
    Payment(CardPayment {
        amount_minor,
        merchant_name: MERCHANT.into(),
        merchant_category: MERCHANT_CATEGORY.into(),
        merchant_country: country(MERCHANT_COUNTRY),
        channel: CardChannel::Pos,
    })
}

/// Builder of a card payment; finish with [`Payment::approved`] or [`Payment::declined`].
#[derive(Debug, Clone)]
pub struct Payment(pub CardPayment);

impl Payment {
    pub fn merchant(mut self, name: &str) -> Self {
        self.0.merchant_name = name.into();
        self
    }

    /// ISO 18245 merchant category code (four digits).
    pub fn category(mut self, code: &str) -> Self {
        self.0.merchant_category = code.into();
        self
    }

    pub fn country(mut self, code: &str) -> Self {
        self.0.merchant_country = country(code);
        self
    }

    /// Card not present.
    pub fn online(mut self) -> Self {
        self.0.channel = CardChannel::Online;
        self
    }

    pub fn approved(self) -> AccountEvent {
        AccountEvent::CardPaymentApproved(CardPaymentApproved { payment: self.0 })
    }

    pub fn declined(self, reason: DeclineReason) -> AccountEvent {
        AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
            payment: self.0,
            decline_reason: reason,
        })
    }
}

/// Now, to the microsecond: the precision of real events (the command service's clock and
/// the Kafka binding's `ce_time` carry microseconds), so a test event reads back equal from
/// every path.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// An envelope around `event`: a new account, version 1, now, a fresh id and correlation
/// id. Change what the test cares about with the builder methods, e.g.
/// `envelope(deposited(5)).account(id).version(2).build()`.
pub fn envelope(event: AccountEvent) -> EnvelopeBuilder {
    EnvelopeBuilder(Envelope {
        id: Uuid::now_v7(),
        source: SOURCE.into(),
        account_id: AccountId::generate(),
        time: now(),
        account_version: 1,
        correlation_id: Some(format!("test-{}", Uuid::new_v4().simple())),
        causation_id: None,
        event,
    })
}

/// Builder of an [`Envelope`]; see [`envelope`].
#[derive(Debug, Clone)]
pub struct EnvelopeBuilder(Envelope);

impl EnvelopeBuilder {
    pub fn account(mut self, account: AccountId) -> Self {
        self.0.account_id = account;
        self
    }

    pub fn version(mut self, version: u64) -> Self {
        self.0.account_version = version;
        self
    }

    pub fn at(mut self, time: DateTime<Utc>) -> Self {
        self.0.time = time;
        self
    }

    pub fn id(mut self, id: Uuid) -> Self {
        self.0.id = id;
        self
    }

    pub fn correlation(mut self, id: Option<&str>) -> Self {
        self.0.correlation_id = id.map(str::to_owned);
        self
    }

    pub fn causation(mut self, id: Option<&str>) -> Self {
        self.0.causation_id = id.map(str::to_owned);
        self
    }

    pub fn build(self) -> Envelope {
        self.0
    }
}

/// One account's event stream: versions 1, 2, 3… on a fixed partition.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: AccountId,
    pub partition: i32,
    /// Version of the last event handed out (0: none yet).
    pub version: u64,
}

impl Account {
    pub fn new(partition: i32) -> Account {
        Account {
            id: AccountId::generate(),
            partition,
            version: 0,
        }
    }

    /// The next event of this account, at time `at`, with its partition.
    pub fn next(&mut self, at: DateTime<Utc>, event: AccountEvent) -> (Envelope, i32) {
        self.version += 1;
        (self.envelope(self.version, at, event), self.partition)
    }

    /// [`Account::next`] at the current time.
    pub fn next_now(&mut self, event: AccountEvent) -> (Envelope, i32) {
        self.next(now(), event)
    }

    /// An event at any version (for gaps and duplicates), leaving the counter alone.
    pub fn envelope(&self, version: u64, at: DateTime<Utc>, event: AccountEvent) -> Envelope {
        envelope(event)
            .account(self.id)
            .version(version)
            .at(at)
            .build()
    }

    /// The consistency token for `version` of this account.
    pub fn token(&self, version: u64) -> String {
        format!("v1.{}.{version}", self.id.0.simple())
    }
}

/// Seeded, valid event streams over many accounts for tests: the [`traffic`] model's
/// [`traffic::Events`] (every account opened, then funded, then everyday banking across
/// markets, currencies and merchants with a few suspicious episodes; balances never go
/// negative, declines are events, frozen accounts pay nothing) with each account on a
/// partition, round-robin. The same seed gives the same events, ids included, so a failing
/// seed can be replayed.
#[derive(Debug)]
pub struct Feed {
    events: traffic::Events,
    partitions: usize,
}

/// Share of suspicious steps in a [`Feed`]: enough for freezes and declines in a short one.
const FEED_SUSPICIOUS_SHARE: f64 = 0.05;
/// Time between two events of a [`Feed`]: 2 000 events span about ten days, so daily
/// limits and per-day totals see several days.
const FEED_STEP_MINUTES: i64 = 7;

impl Feed {
    pub fn new(seed: u64, accounts: usize, partitions: i32) -> Feed {
        Feed {
            events: traffic::Events::new(
                seed,
                accounts,
                FEED_SUSPICIOUS_SHARE,
                day(1, 8, 0),
                chrono::Duration::minutes(FEED_STEP_MINUTES),
            ),
            partitions: usize::try_from(partitions.max(1)).unwrap_or(1),
        }
    }

    fn partition(&self, index: usize) -> i32 {
        i32::try_from(index % self.partitions).unwrap_or(0)
    }

    /// Every account, with the version of its last event handed out so far.
    pub fn accounts(&self) -> Vec<Account> {
        (0..self.events.accounts())
            .filter_map(|index| {
                Some(Account {
                    id: self.events.account_id(index)?,
                    partition: self.partition(index),
                    version: self.events.version(index)?,
                })
            })
            .collect()
    }

    /// The balance each account has after the events handed out so far.
    pub fn balances(&self) -> HashMap<Uuid, MinorUnits> {
        (0..self.events.accounts())
            .filter_map(|index| {
                Some((
                    self.events.account_id(index)?.0,
                    self.events.balance(index)?,
                ))
            })
            .collect()
    }

    /// The next `n` events (the first ones open every account) with their partitions.
    pub fn take(&mut self, n: usize) -> Vec<(Envelope, i32)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let Some((index, envelope)) = self.events.next() else {
                break;
            };
            out.push((envelope, self.partition(index)));
        }
        out
    }
}

/// The last version of every account in `events`.
pub fn last_versions(events: &[(Envelope, i32)]) -> HashMap<Uuid, u64> {
    let mut out = HashMap::new();
    for (e, _) in events {
        let v = out.entry(e.account_id.0).or_insert(0);
        *v = (*v).max(e.account_version);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_is_a_valid_history_per_account() {
        let mut feed = Feed::new(42, 12, 4);
        let events = feed.take(2_000);
        let mut seen: HashMap<Uuid, (u64, MinorUnits, bool, i32)> = HashMap::new();
        for (e, partition) in &events {
            let entry = seen
                .entry(e.account_id.0)
                .or_insert((0, 0, false, *partition));
            assert_eq!(e.account_version, entry.0 + 1, "versions follow each other");
            assert_eq!(*partition, entry.3, "an account stays on its partition");
            assert_eq!(
                e.account_version == 1,
                matches!(e.event, AccountEvent::AccountOpened(_)),
                "an account is opened first, once"
            );
            match &e.event {
                AccountEvent::AccountFrozen(_) => entry.2 = true,
                AccountEvent::AccountUnfrozen(_) => entry.2 = false,
                // As the command service's rules say: a frozen account takes deposits, but
                // no money leaves it.
                other
                @ (AccountEvent::MoneyWithdrawn(_) | AccountEvent::CardPaymentApproved(_)) => {
                    assert!(!entry.2, "a frozen account got {other:?}");
                }
                _ => {}
            }
            entry.1 += e.event.balance_change();
            assert!(entry.1 >= 0, "balance went negative at {e:?}");
            entry.0 = e.account_version;
        }
        assert_eq!(seen.len(), 12);
        let balances = feed.balances();
        for (account, (_, balance, _, _)) in &seen {
            assert_eq!(balances.get(account), Some(balance));
        }
        assert_eq!(last_versions(&events).len(), 12);
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        // Ids included: a failing seed replays exactly.
        let first = Feed::new(7, 5, 2).take(300);
        assert_eq!(first.len(), 300);
        assert_eq!(first, Feed::new(7, 5, 2).take(300));
        let other = Feed::new(8, 5, 2).take(300);
        assert_ne!(first, other);
        let events = |feed: &[(Envelope, i32)]| -> Vec<AccountEvent> {
            feed.iter().map(|(e, _)| e.event.clone()).collect()
        };
        assert_ne!(events(&first), events(&other), "not only the ids differ");
    }

    #[test]
    fn builders_set_what_they_name_and_round_trip() {
        let account = AccountId::generate();
        let e = envelope(
            payment(1_250)
                .merchant("Bar")
                .category("5813")
                .online()
                .approved(),
        )
        .account(account)
        .version(4)
        .at(day(2, 10, 30))
        .build();
        assert_eq!((e.account_id, e.account_version), (account, 4));
        assert_eq!(e.time, day(2, 10, 30));
        let data = e.event.data();
        assert_eq!(data["merchant_name"], "Bar");
        assert_eq!(data["merchant_category"], "5813");
        assert_eq!(data["channel"], "online");
        assert_eq!(e.to_raw().decode().ok(), Some(e));
        assert_eq!(withdrawn(5).balance_change(), -5);
        assert_eq!(
            declined_payment(5, DeclineReason::AccountFrozen).balance_change(),
            0
        );
    }
}
