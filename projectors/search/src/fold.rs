//! The search fold: an account's document and one event in, the account's new document
//! and the event's transaction document out.
//!
//! Pure and synchronous: no I/O, no clock, no panics on input. Like the ledger's fold it is
//! strict: an account's events are folded in version order, each once; a version that
//! skips one is a [`Rejection::Gap`] (never folded onto a state that misses an event), and
//! money is checked arithmetic. What the engine could not store is refused by its mapping
//! and reported by the sink per event; the fold refuses only what would corrupt the model.
//!
//! The two structs here are the documents as they sit in the indices (field names are the
//! mapping's, see [`crate::index`]); the query API reads them back with serde.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use prism_events::event::{CardChannel, CardPayment, WithdrawalChannel};
use prism_events::{AccountEvent, Envelope};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An account's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    Open,
    Frozen,
    Closed,
}

impl AccountStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Frozen => "frozen",
            Self::Closed => "closed",
        }
    }
}

/// One document of the `accounts` index (`_id` = the account id; external version = the
/// account's version, so an older write of it loses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDoc {
    pub account_id: Uuid,
    pub holder_name: String,
    pub email: String,
    /// ISO 3166-1 alpha-2 of the holder.
    pub country: String,
    /// ISO 4217 of the account.
    pub currency: String,
    pub status: AccountStatus,
    pub balance_minor: i64,
    pub opened_at: DateTime<Utc>,
    /// Time of the last transaction (deposit, withdrawal, card payment approved or
    /// declined); the opening time until there is one. Status changes are not activity.
    pub last_activity_at: DateTime<Utc>,
    /// Version of the last event folded into this document.
    pub version: u64,
}

/// What a transaction document records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionKind {
    Deposit,
    Withdrawal,
    /// An approved card payment.
    CardPayment,
    /// A card payment the account refused (`prism.account.card_payment_declined`): a fact
    /// that moved no money.
    DeclinedPayment,
}

impl TransactionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
            Self::CardPayment => "card_payment",
            Self::DeclinedPayment => "declined_payment",
        }
    }
}

/// Whether the money moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approved,
    Declined,
}

impl Decision {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Declined => "declined",
        }
    }
}

/// One document of the `transactions` index (`_id` = the event id, so writing it again is
/// harmless). Built only from the event and the account's fields that never change after
/// opening (holder name, country, currency), so a replay builds the same document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionDoc {
    pub event_id: Uuid,
    pub account_id: Uuid,
    /// The account version this event carries.
    pub version: u64,
    pub kind: TransactionKind,
    pub holder_name: String,
    /// ISO 3166-1 alpha-2 of the holder.
    pub holder_country: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_name: Option<String>,
    /// ISO 18245 merchant category code (four digits), card payments only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_code: Option<String>,
    /// The code's description ([`mcc_description`]); absent for codes not in the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_country: Option<String>,
    /// `atm | branch | online` for withdrawals, `pos | online` for card payments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The amount as a magnitude (`kind` says which way it went), in minor units of
    /// `currency`. A declined payment keeps the amount that was asked for.
    pub amount_minor: i64,
    pub currency: String,
    /// When the command was accepted (the event's time).
    pub time: DateTime<Utc>,
    pub decision: Decision,
    /// `insufficient_funds | account_frozen | amount_out_of_range`, declined only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What one event does to the search model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    /// The account's document after the event.
    pub account: AccountDoc,
    /// The event's transaction document, for deposits, withdrawals and card payments.
    pub transaction: Option<TransactionDoc>,
}

/// Why the search model refuses an event for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{event_type} for account {account_id}, which was never opened")]
    UnknownAccount {
        account_id: Uuid,
        event_type: &'static str,
    },
    #[error("account {account_id} is already open (version {version})")]
    AlreadyOpened { account_id: Uuid, version: u64 },
    #[error(
        "version {version} of account {account_id} is not newer than its document (version {stored})"
    )]
    Stale {
        account_id: Uuid,
        version: u64,
        stored: u64,
    },
    /// Folding version n+2 onto n would lose version n+1's effect for good.
    #[error(
        "version {version} of account {account_id} does not follow its document (version \
         {stored}): an earlier version is missing"
    )]
    Gap {
        account_id: Uuid,
        version: u64,
        stored: u64,
    },
    #[error("{field} must be positive, got {value}")]
    NotPositive { field: &'static str, value: i64 },
    #[error("{what} overflows 64-bit minor units")]
    Overflow { what: &'static str },
}

/// Descriptions of the merchant category codes (ISO 18245) that Prism's traffic uses, and
/// a few common others. A code not listed gets no description (the code is still stored).
pub const MCC_DESCRIPTIONS: &[(&str, &str)] = &[
    ("4111", "Local and suburban commuter transportation"),
    ("4121", "Taxicabs and limousines"),
    ("4511", "Airlines"),
    ("4814", "Telecommunication services"),
    ("4816", "Computer network and information services"),
    ("5311", "Department stores"),
    ("5411", "Grocery stores and supermarkets"),
    ("5541", "Service stations"),
    ("5651", "Family clothing stores"),
    ("5732", "Electronics stores"),
    ("5734", "Computer software stores"),
    ("5812", "Eating places and restaurants"),
    ("5814", "Fast food restaurants"),
    ("5815", "Digital goods: books, movies, music"),
    ("5816", "Digital goods: games"),
    ("5818", "Digital goods: large merchant"),
    ("5912", "Drug stores and pharmacies"),
    ("5942", "Book stores"),
    ("5947", "Gift, card, novelty and souvenir shops"),
    ("5968", "Direct marketing: subscription merchants"),
    ("5999", "Miscellaneous and specialty retail stores"),
    ("6011", "Automated cash disbursements"),
    ("6051", "Quasi-cash: foreign currency, money orders, crypto"),
    ("7011", "Hotels and lodging"),
    ("7995", "Betting and casino gambling"),
    ("8398", "Charitable and social service organizations"),
];

/// The description of merchant category `code`, if the table has it.
pub fn mcc_description(code: &str) -> Option<&'static str> {
    MCC_DESCRIPTIONS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, d)| *d)
}

fn positive(field: &'static str, value: i64) -> Result<i64, Rejection> {
    if value > 0 {
        Ok(value)
    } else {
        Err(Rejection::NotPositive { field, value })
    }
}

/// Folds `envelope` into `current` (the account's document, `None` if it has none).
pub fn fold(current: Option<&AccountDoc>, envelope: &Envelope) -> Result<Folded, Rejection> {
    let account_id = envelope.account_id.0;
    let at = envelope.time;
    let version = envelope.account_version;

    let current = match (&envelope.event, current) {
        (AccountEvent::AccountOpened(_), None) if version != 1 => {
            return Err(Rejection::Gap {
                account_id,
                version,
                stored: 0,
            })
        }
        (AccountEvent::AccountOpened(opened), None) => {
            return Ok(Folded {
                account: AccountDoc {
                    account_id,
                    holder_name: opened.holder_name.clone(),
                    email: opened.email.clone(),
                    country: opened.country.as_str().to_owned(),
                    currency: opened.currency.as_str().to_owned(),
                    status: AccountStatus::Open,
                    balance_minor: 0,
                    opened_at: at,
                    last_activity_at: at,
                    version,
                },
                transaction: None,
            });
        }
        (AccountEvent::AccountOpened(_), Some(doc)) => {
            return Err(Rejection::AlreadyOpened {
                account_id,
                version: doc.version,
            })
        }
        (event, None) => {
            return Err(Rejection::UnknownAccount {
                account_id,
                event_type: event.event_type(),
            })
        }
        (_, Some(doc)) => doc,
    };
    if version <= current.version {
        return Err(Rejection::Stale {
            account_id,
            version,
            stored: current.version,
        });
    }
    if version != current.version + 1 {
        return Err(Rejection::Gap {
            account_id,
            version,
            stored: current.version,
        });
    }

    let mut account = current.clone();
    account.version = version;
    let transaction = transaction(current, envelope)?;
    match &envelope.event {
        AccountEvent::MoneyDeposited(e) => {
            account.balance_minor = account
                .balance_minor
                .checked_add(e.amount_minor)
                .ok_or(Rejection::Overflow { what: "balance" })?;
        }
        AccountEvent::MoneyWithdrawn(e) => {
            account.balance_minor = account
                .balance_minor
                .checked_sub(e.amount_minor)
                .ok_or(Rejection::Overflow { what: "balance" })?;
        }
        AccountEvent::CardPaymentApproved(e) => {
            account.balance_minor = account
                .balance_minor
                .checked_sub(e.payment.amount_minor)
                .ok_or(Rejection::Overflow { what: "balance" })?;
        }
        // A fraud report is a label for the fraud features; the reported payment's
        // transaction document stays as it was (its content depends on its own event only).
        AccountEvent::CardPaymentDeclined(_) | AccountEvent::PaymentReportedFraudulent(_) => {}
        AccountEvent::AccountFrozen(_) => account.status = AccountStatus::Frozen,
        AccountEvent::AccountUnfrozen(_) => account.status = AccountStatus::Open,
        AccountEvent::AccountClosed(_) => account.status = AccountStatus::Closed,
        // Handled above; kept for exhaustiveness without a panic.
        AccountEvent::AccountOpened(_) => {
            return Err(Rejection::AlreadyOpened {
                account_id,
                version: current.version,
            })
        }
    }
    if transaction.is_some() {
        account.last_activity_at = at;
    }
    Ok(Folded {
        account,
        transaction,
    })
}

/// The transaction document of `envelope` (`None` for events that are not transactions),
/// given any document of its account: it reads only the fields that never change after
/// opening, so an older or newer document of the account builds the same transaction.
/// Checks the amount is positive (a declined payment's amount is kept as asked: it may be
/// why it was declined).
pub fn transaction(
    account: &AccountDoc,
    envelope: &Envelope,
) -> Result<Option<TransactionDoc>, Rejection> {
    let base = |kind, amount_minor, decision| TransactionDoc {
        event_id: envelope.id,
        account_id: envelope.account_id.0,
        version: envelope.account_version,
        kind,
        holder_name: account.holder_name.clone(),
        holder_country: account.country.clone(),
        merchant_name: None,
        category_code: None,
        category_description: None,
        merchant_country: None,
        channel: None,
        amount_minor,
        currency: account.currency.clone(),
        time: envelope.time,
        decision,
        decline_reason: None,
        description: None,
    };
    let with_payment = |mut doc: TransactionDoc, p: &CardPayment| {
        doc.merchant_name = Some(p.merchant_name.clone());
        doc.category_code = Some(p.merchant_category.clone());
        doc.category_description = mcc_description(&p.merchant_category).map(str::to_owned);
        doc.merchant_country = Some(p.merchant_country.as_str().to_owned());
        doc.channel = Some(card_channel(p.channel).to_owned());
        doc
    };
    let doc = match &envelope.event {
        AccountEvent::MoneyDeposited(e) => {
            let amount = positive("amount_minor", e.amount_minor)?;
            let mut doc = base(TransactionKind::Deposit, amount, Decision::Approved);
            doc.description.clone_from(&e.description);
            doc
        }
        AccountEvent::MoneyWithdrawn(e) => {
            let amount = positive("amount_minor", e.amount_minor)?;
            let mut doc = base(TransactionKind::Withdrawal, amount, Decision::Approved);
            doc.description.clone_from(&e.description);
            doc.channel = Some(withdrawal_channel(e.channel).to_owned());
            doc
        }
        AccountEvent::CardPaymentApproved(e) => {
            let amount = positive("amount_minor", e.payment.amount_minor)?;
            with_payment(
                base(TransactionKind::CardPayment, amount, Decision::Approved),
                &e.payment,
            )
        }
        AccountEvent::CardPaymentDeclined(e) => {
            let mut doc = with_payment(
                base(
                    TransactionKind::DeclinedPayment,
                    e.payment.amount_minor,
                    Decision::Declined,
                ),
                &e.payment,
            );
            doc.decline_reason = Some(e.decline_reason.as_str().to_owned());
            doc
        }
        AccountEvent::AccountOpened(_)
        | AccountEvent::AccountFrozen(_)
        | AccountEvent::AccountUnfrozen(_)
        | AccountEvent::AccountClosed(_)
        | AccountEvent::PaymentReportedFraudulent(_) => return Ok(None),
    };
    Ok(Some(doc))
}

/// The documents one batch writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// New state of every account the events changed (one document per account, in order
    /// of first touch).
    pub accounts: Vec<AccountDoc>,
    /// Transaction documents, in event order, with the index in the batch of the event
    /// that made each (so a document the engine refuses names its event).
    pub transactions: Vec<(usize, TransactionDoc)>,
    /// For each account of `accounts`, the index in the batch of its last event (the one
    /// whose version the document carries).
    pub account_events: Vec<usize>,
    /// Events not newer than their account's document: an earlier attempt applied them
    /// and died before storing the position. Their transaction documents are in
    /// `transactions` again (same id, same content); their accounts were not touched.
    pub replayed: usize,
}

/// The fold refused `events[index]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {index}: {rejection}")]
pub struct BatchRejection {
    pub index: usize,
    pub rejection: Rejection,
}

/// Folds `events` in order onto `state` (the current documents of their accounts; absent:
/// none). On success `state` holds the new documents and the result has every document to
/// write; on a rejection `state` is unchanged.
///
/// An event whose version is not newer than its account's document was applied by an
/// earlier attempt of this batch (the documents landed, the position did not): it is not
/// folded again, but its transaction document is produced again, identical, so the
/// rewrite is harmless. The runtime never hands over a version it knows was handled, so
/// only that crash window leads here.
pub fn fold_batch(
    state: &mut HashMap<Uuid, AccountDoc>,
    events: &[Envelope],
) -> Result<Writes, BatchRejection> {
    let mut touched: HashMap<Uuid, (AccountDoc, usize)> = HashMap::new();
    let mut order: Vec<Uuid> = Vec::new();
    let mut transactions = Vec::new();
    let mut replayed = 0;

    for (index, envelope) in events.iter().enumerate() {
        let id = envelope.account_id.0;
        let reject = |rejection| BatchRejection { index, rejection };
        let current = touched
            .get(&id)
            .map(|(doc, _)| doc)
            .or_else(|| state.get(&id));
        if let Some(doc) = current {
            if envelope.account_version <= doc.version {
                if let Some(t) = transaction(doc, envelope).map_err(reject)? {
                    transactions.push((index, t));
                }
                replayed += 1;
                continue;
            }
        }
        let folded = fold(current, envelope).map_err(reject)?;
        if let Some(t) = folded.transaction {
            transactions.push((index, t));
        }
        if touched.insert(id, (folded.account, index)).is_none() {
            order.push(id);
        }
    }

    let mut accounts = Vec::with_capacity(order.len());
    let mut account_events = Vec::with_capacity(order.len());
    for id in &order {
        if let Some((doc, index)) = touched.remove(id) {
            state.insert(*id, doc.clone());
            accounts.push(doc);
            account_events.push(index);
        }
    }
    Ok(Writes {
        accounts,
        transactions,
        account_events,
        replayed,
    })
}

fn withdrawal_channel(channel: WithdrawalChannel) -> &'static str {
    match channel {
        WithdrawalChannel::Atm => "atm",
        WithdrawalChannel::Branch => "branch",
        WithdrawalChannel::Online => "online",
    }
}

fn card_channel(channel: CardChannel) -> &'static str {
    match channel {
        CardChannel::Pos => "pos",
        CardChannel::Online => "online",
    }
}

#[cfg(test)]
mod tests {
    use prism_events::event::DeclineReason;
    use prism_events::testing::{self, deposited, payment, withdrawn};
    use prism_events::AccountId;

    use super::*;

    const ACCOUNT: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);

    fn time(day: u32, hour: u32) -> DateTime<Utc> {
        testing::day(day, hour, 30)
    }

    fn envelope(version: u64, at: DateTime<Utc>, event: AccountEvent) -> Envelope {
        testing::envelope(event)
            .account(AccountId(ACCOUNT))
            .version(version)
            .at(at)
            .build()
    }

    /// The account of these tests: accents in both names, for the folded text fields.
    fn opened() -> AccountEvent {
        testing::opened("Zoë Müller", "DE", "EUR")
    }

    /// Given the events folded in order from no document, the resulting document.
    fn given(events: Vec<AccountEvent>) -> AccountDoc {
        let mut doc: Option<AccountDoc> = None;
        for (i, event) in events.into_iter().enumerate() {
            let folded = fold(doc.as_ref(), &envelope(i as u64 + 1, time(1, 9), event))
                .expect("given events fold");
            doc = Some(folded.account);
        }
        doc.expect("at least one given event")
    }

    fn when(doc: &AccountDoc, at: DateTime<Utc>, event: AccountEvent) -> Result<Folded, Rejection> {
        fold(Some(doc), &envelope(doc.version + 1, at, event))
    }

    #[test]
    fn opened_creates_an_open_account_document_with_a_zero_balance() {
        let at = time(1, 9);
        let folded = fold(None, &envelope(1, at, opened())).expect("folds");
        assert_eq!(
            folded.account,
            AccountDoc {
                account_id: ACCOUNT,
                holder_name: "Zoë Müller".into(),
                email: "zoë.müller@example.org".into(),
                country: "DE".into(),
                currency: "EUR".into(),
                status: AccountStatus::Open,
                balance_minor: 0,
                opened_at: at,
                last_activity_at: at,
                version: 1,
            }
        );
        assert_eq!(folded.transaction, None);
    }

    #[test]
    fn a_deposit_credits_the_balance_and_makes_an_approved_transaction() {
        let doc = given(vec![opened(), deposited(1_000)]);
        let at = time(2, 23);
        let e = envelope(3, at, deposited(250));
        let folded = fold(Some(&doc), &e).expect("folds");
        assert_eq!(folded.account.balance_minor, 1_250);
        assert_eq!(
            (folded.account.version, folded.account.last_activity_at),
            (3, at)
        );
        let t = folded.transaction.expect("a transaction");
        assert_eq!((t.event_id, t.account_id, t.version), (e.id, ACCOUNT, 3));
        assert_eq!(t.kind, TransactionKind::Deposit);
        assert_eq!((t.amount_minor, t.currency.as_str()), (250, "EUR"));
        assert_eq!(
            (t.holder_name.as_str(), t.holder_country.as_str()),
            ("Zoë Müller", "DE")
        );
        assert_eq!(t.decision, Decision::Approved);
        assert_eq!(t.description.as_deref(), Some("salary"));
        assert_eq!(
            (t.channel, t.merchant_name, t.decline_reason),
            (None, None, None)
        );
        assert_eq!(t.time, at);
    }

    #[test]
    fn a_withdrawal_debits_the_balance_with_its_channel() {
        let doc = given(vec![opened(), deposited(1_000)]);
        let folded = when(&doc, time(1, 12), withdrawn(300)).expect("folds");
        assert_eq!(folded.account.balance_minor, 700);
        let t = folded.transaction.expect("a transaction");
        assert_eq!(t.kind, TransactionKind::Withdrawal);
        assert_eq!(t.amount_minor, 300);
        assert_eq!(t.channel.as_deref(), Some("atm"));
    }

    #[test]
    fn an_approved_card_payment_debits_with_merchant_and_category() {
        let doc = given(vec![opened(), deposited(5_000)]);
        let event = payment(1_250).online().approved();
        let folded = when(&doc, time(1, 12), event).expect("folds");
        assert_eq!(folded.account.balance_minor, 3_750);
        let t = folded.transaction.expect("a transaction");
        assert_eq!(t.kind, TransactionKind::CardPayment);
        assert_eq!(t.amount_minor, 1_250);
        assert_eq!(t.merchant_name.as_deref(), Some("Café Rosa"));
        assert_eq!(t.category_code.as_deref(), Some("5814"));
        assert_eq!(
            t.category_description.as_deref(),
            Some("Fast food restaurants")
        );
        assert_eq!(t.merchant_country.as_deref(), Some("PT"));
        assert_eq!(t.channel.as_deref(), Some("online"));
        assert_eq!(t.decision, Decision::Approved);
    }

    #[test]
    fn a_declined_payment_is_a_declined_transaction_that_moves_no_money() {
        let doc = given(vec![opened()]);
        let at = time(1, 12);
        let event = payment(i64::MAX).declined(DeclineReason::AmountOutOfRange);
        let folded = when(&doc, at, event).expect("folds");
        assert_eq!(folded.account.balance_minor, 0);
        assert_eq!(folded.account.version, 2);
        assert_eq!(folded.account.last_activity_at, at);
        let t = folded.transaction.expect("a transaction");
        assert_eq!(t.kind, TransactionKind::DeclinedPayment);
        assert_eq!(t.decision, Decision::Declined);
        assert_eq!(t.decline_reason.as_deref(), Some("amount_out_of_range"));
        assert_eq!(t.amount_minor, i64::MAX);
        assert_eq!(t.merchant_name.as_deref(), Some("Café Rosa"));
    }

    #[test]
    fn status_events_change_the_status_but_are_not_activity() {
        let doc = given(vec![opened()]);
        let frozen = when(&doc, time(2, 8), testing::frozen("card stolen")).expect("folds");
        assert_eq!(frozen.account.status, AccountStatus::Frozen);
        assert_eq!(frozen.account.last_activity_at, doc.last_activity_at);
        assert_eq!(frozen.transaction, None);
        let open = when(&frozen.account, time(2, 9), testing::unfrozen()).expect("folds");
        assert_eq!(open.account.status, AccountStatus::Open);
        let closed = when(&open.account, time(2, 10), testing::closed()).expect("folds");
        assert_eq!(closed.account.status, AccountStatus::Closed);
        assert_eq!(closed.account.version, 4);
    }

    #[test]
    fn a_version_that_skips_one_is_a_gap_and_an_old_one_is_stale() {
        let doc = given(vec![opened(), deposited(10)]);
        assert!(matches!(
            fold(Some(&doc), &envelope(4, time(1, 12), deposited(10))),
            Err(Rejection::Gap {
                version: 4,
                stored: 2,
                ..
            })
        ));
        assert!(matches!(
            fold(Some(&doc), &envelope(2, time(1, 12), deposited(10))),
            Err(Rejection::Stale {
                version: 2,
                stored: 2,
                ..
            })
        ));
        // An opening that is not the account's first event means its history is missing.
        assert!(matches!(
            fold(None, &envelope(2, time(1, 12), opened())),
            Err(Rejection::Gap { stored: 0, .. })
        ));
    }

    #[test]
    fn events_of_unknown_accounts_and_second_openings_are_refused() {
        assert!(matches!(
            fold(None, &envelope(1, time(1, 9), deposited(1))),
            Err(Rejection::UnknownAccount { .. })
        ));
        let doc = given(vec![opened()]);
        assert!(matches!(
            when(&doc, time(1, 10), opened()),
            Err(Rejection::AlreadyOpened { version: 1, .. })
        ));
    }

    #[test]
    fn money_is_checked_never_wrapped_and_amounts_must_be_positive() {
        let mut doc = given(vec![opened()]);
        doc.balance_minor = i64::MAX - 5;
        assert_eq!(
            when(&doc, time(1, 12), deposited(6)),
            Err(Rejection::Overflow { what: "balance" })
        );
        doc.balance_minor = i64::MIN + 5;
        assert!(matches!(
            when(&doc, time(1, 12), withdrawn(6)),
            Err(Rejection::Overflow { .. })
        ));
        doc.balance_minor = 0;
        for amount in [0, -1, i64::MIN] {
            assert!(matches!(
                when(&doc, time(1, 12), deposited(amount)),
                Err(Rejection::NotPositive { .. })
            ));
        }
    }

    #[test]
    fn every_mcc_the_traffic_uses_has_a_description() {
        // The seeded traffic the benches, the demo and the tests send (card testing
        // included), so a merchant category added there cannot go undescribed here.
        let start = testing::day(1, 0, 0);
        let every_minute = chrono::Duration::minutes(1);
        let categories: std::collections::BTreeSet<String> =
            testing::traffic::Events::new(3, 500, 0.2, start, every_minute)
                .take(50_000)
                .filter_map(|(_, e)| match e.event {
                    AccountEvent::CardPaymentApproved(a) => Some(a.payment.merchant_category),
                    AccountEvent::CardPaymentDeclined(d) => Some(d.payment.merchant_category),
                    _ => None,
                })
                .collect();
        assert!(categories.len() >= 19, "{categories:?}");
        for code in &categories {
            assert!(mcc_description(code).is_some(), "{code}");
        }
        assert_eq!(mcc_description("0000"), None);
    }

    #[test]
    fn a_batch_folds_in_order_and_writes_one_document_per_account() {
        let other = Uuid::from_u128(2);
        let mut events: Vec<Envelope> = vec![
            envelope(1, time(1, 9), opened()),
            envelope(2, time(1, 10), deposited(100)),
        ];
        let mut second = envelope(1, time(1, 9), opened());
        second.account_id = AccountId(other);
        events.push(second);
        events.push(envelope(3, time(1, 11), withdrawn(40)));
        let mut state = HashMap::new();
        let writes = fold_batch(&mut state, &events).expect("folds");
        assert_eq!(writes.accounts.len(), 2);
        assert_eq!(writes.accounts[0].account_id, ACCOUNT);
        assert_eq!(writes.accounts[0].balance_minor, 60);
        assert_eq!(writes.account_events, vec![3, 2]);
        let indices: Vec<usize> = writes.transactions.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, vec![1, 3]);
        assert_eq!(writes.replayed, 0);
        assert_eq!(state[&ACCOUNT].version, 3);
        assert_eq!(state[&other].version, 1);
    }

    #[test]
    fn a_rejected_event_names_its_index_and_leaves_the_state_alone() {
        let mut state = HashMap::new();
        let events = vec![
            envelope(1, time(1, 9), opened()),
            envelope(3, time(1, 10), deposited(100)),
        ];
        let err = fold_batch(&mut state, &events).expect_err("gap");
        assert_eq!(err.index, 1);
        assert!(matches!(err.rejection, Rejection::Gap { .. }));
        assert!(state.is_empty());
    }

    #[test]
    fn events_an_earlier_attempt_applied_give_their_transactions_again_not_their_money() {
        // Given a crash after the documents landed: the account document is at version 3.
        let events = vec![
            envelope(1, time(1, 9), opened()),
            envelope(2, time(1, 10), deposited(100)),
            envelope(3, time(1, 11), withdrawn(40)),
            envelope(4, time(1, 12), deposited(5)),
        ];
        let mut clean = HashMap::new();
        let first = fold_batch(&mut clean, &events).expect("folds");
        let mut state = HashMap::from([(ACCOUNT, {
            let mut s = HashMap::new();
            fold_batch(&mut s, &events[..3]).expect("folds");
            s[&ACCOUNT].clone()
        })]);
        // When the batch (versions 2..4) is applied again onto that document.
        let again = fold_batch(&mut state, &events[1..]).expect("folds");
        // Then the money is counted once and every transaction is there, unchanged.
        assert_eq!(again.replayed, 2);
        assert_eq!(again.accounts, first.accounts);
        assert_eq!(state[&ACCOUNT].balance_minor, 65);
        let replayed: Vec<&TransactionDoc> = again.transactions.iter().map(|(_, t)| t).collect();
        let clean_docs: Vec<&TransactionDoc> = first.transactions.iter().map(|(_, t)| t).collect();
        assert_eq!(replayed, clean_docs);
    }

    #[test]
    fn documents_serialise_with_the_mapping_s_field_names() {
        let doc = given(vec![opened()]);
        let json = serde_json::to_value(&doc).expect("serialises");
        assert_eq!(json["status"], "open");
        assert_eq!(json["account_id"], ACCOUNT.to_string());
        let back: AccountDoc = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, doc);
        let t = when(&doc, time(1, 12), withdrawn(1))
            .expect("folds")
            .transaction
            .expect("a transaction");
        let json = serde_json::to_value(&t).expect("serialises");
        assert_eq!(json["kind"], "withdrawal");
        assert!(json.get("merchant_name").is_none(), "absent, not null");
        let back: TransactionDoc = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, t);
    }
}
