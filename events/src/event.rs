//! The account events: past tense, one enum, each with its own data type.
//!
//! An event's type string ([`AccountEvent::event_type`]) never changes once released; a
//! change to a data type is additive or bumps [`AccountEvent::SCHEMA_VERSION`] with an
//! upcaster (see [`crate::upcast`]). Data types accept unknown fields on purpose: a consumer
//! built against an older contract must keep reading events that gained a field.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::codes::{Country, Currency};

/// An amount of money in minor units of the account's currency (cents for EUR).
pub type MinorUnits = i64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountOpened {
    pub holder_name: String,
    pub email: String,
    pub country: Country,
    pub currency: Currency,
    /// Withdrawals per UTC day may not exceed this, in minor units.
    pub daily_withdrawal_limit_minor: MinorUnits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MoneyDeposited {
    pub amount_minor: MinorUnits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Where a withdrawal was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawalChannel {
    Atm,
    Branch,
    Online,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MoneyWithdrawn {
    pub amount_minor: MinorUnits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub channel: WithdrawalChannel,
}

/// How a card was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CardChannel {
    /// Card present, at a point of sale.
    Pos,
    /// Card not present.
    Online,
}

/// Why a card payment was declined. Declines are facts (fraud signals), not errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    InsufficientFunds,
    AccountFrozen,
    AmountOutOfRange,
}

impl DeclineReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InsufficientFunds => "insufficient_funds",
            Self::AccountFrozen => "account_frozen",
            Self::AmountOutOfRange => "amount_out_of_range",
        }
    }
}

/// The merchant side of a card payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CardPayment {
    pub amount_minor: MinorUnits,
    pub merchant_name: String,
    /// ISO 18245 merchant category code, four digits.
    #[schemars(regex(pattern = r"^[0-9]{4}$"))]
    pub merchant_category: String,
    pub merchant_country: Country,
    pub channel: CardChannel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CardPaymentApproved {
    #[serde(flatten)]
    pub payment: CardPayment,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CardPaymentDeclined {
    #[serde(flatten)]
    pub payment: CardPayment,
    pub decline_reason: DeclineReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountFrozen {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct AccountUnfrozen {}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct AccountClosed {}

/// A card payment of the account was reported as fraud (by its holder, or by the bank
/// after a chargeback). The label ML pipelines learn from: it names the payment event, and
/// its own CloudEvents `time` is when the report was made. It changes no balance and no
/// status; each payment is reported at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentReportedFraudulent {
    /// Id of the account's `CardPaymentApproved` or `CardPaymentDeclined` event.
    pub payment_event_id: uuid::Uuid,
    /// Why it was reported, in the reporter's words.
    pub reason: String,
}

/// Every fact about an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountEvent {
    AccountOpened(AccountOpened),
    MoneyDeposited(MoneyDeposited),
    MoneyWithdrawn(MoneyWithdrawn),
    CardPaymentApproved(CardPaymentApproved),
    CardPaymentDeclined(CardPaymentDeclined),
    AccountFrozen(AccountFrozen),
    AccountUnfrozen(AccountUnfrozen),
    AccountClosed(AccountClosed),
    PaymentReportedFraudulent(PaymentReportedFraudulent),
}

/// An event's data did not match its type.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{event_type} data does not match its schema: {source}")]
    Invalid {
        event_type: &'static str,
        source: serde_json::Error,
    },
}

/// Any JSON, read as [`serde_json::Value`] reads it (strings valid UTF-8 without lone
/// surrogates, numbers within `f64`, the same nesting limit) and kept nowhere.
///
/// A data type skips the value of a field it does not know without those checks, so
/// [`AccountEvent::from_json_slice`] reads its data this way first: it then refuses exactly
/// the data that does not parse as a tree, as [`AccountEvent::from_data`]'s callers do.
struct WellFormed;

impl<'de> Deserialize<'de> for WellFormed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WellFormed)
    }
}

impl<'de> Visitor<'de> for WellFormed {
    type Value = WellFormed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<WellFormed>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<WellFormed, WellFormed>()?.is_some() {}
        Ok(self)
    }
}

macro_rules! event_types {
    ($($variant:ident => $type:literal),+ $(,)?) => {
        impl AccountEvent {
            /// Every CloudEvents `type` string, in declaration order.
            pub const TYPES: &'static [&'static str] = &[$($type),+];

            /// The CloudEvents `type`: stable forever once released.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $type,)+
                }
            }

            /// The event's data as JSON (the CloudEvents `data`, the Kafka message value).
            pub fn data(&self) -> serde_json::Value {
                let value = match self {
                    $(Self::$variant(d) => serde_json::to_value(d),)+
                };
                // Serialising these plain structs cannot fail (string keys, no maps of non-strings).
                value.unwrap_or(serde_json::Value::Null)
            }

            /// Rebuilds an event from its type and (already upcast) data.
            pub fn from_data(event_type: &str, data: serde_json::Value) -> Result<Self, DataError> {
                match event_type {
                    $($type => serde_json::from_value(data)
                        .map(Self::$variant)
                        .map_err(|source| DataError::Invalid { event_type: $type, source }),)+
                    other => Err(DataError::UnknownType(other.to_owned())),
                }
            }

            /// Reads an event of `event_type` at the current schema version straight from
            /// its JSON data: what [`AccountEvent::from_data`] gives for the parsed tree,
            /// without building the tree (and refusing, like it, data that does not parse
            /// as one: see `WellFormed`).
            pub fn from_json_slice(event_type: &str, data: &[u8]) -> Result<Self, DataError> {
                match event_type {
                    $($type => serde_json::from_slice::<WellFormed>(data)
                        .and_then(|_| serde_json::from_slice(data))
                        .map(Self::$variant)
                        .map_err(|source| DataError::Invalid { event_type: $type, source }),)+
                    other => Err(DataError::UnknownType(other.to_owned())),
                }
            }

            /// The JSON Schema of each type's data, for consumers in other languages.
            pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
                vec![$(($type, schemars::schema_for!($variant)),)+]
            }
        }
    };
}

event_types! {
    AccountOpened => "prism.account.opened",
    MoneyDeposited => "prism.account.money_deposited",
    MoneyWithdrawn => "prism.account.money_withdrawn",
    CardPaymentApproved => "prism.account.card_payment_approved",
    CardPaymentDeclined => "prism.account.card_payment_declined",
    AccountFrozen => "prism.account.frozen",
    AccountUnfrozen => "prism.account.unfrozen",
    AccountClosed => "prism.account.closed",
    PaymentReportedFraudulent => "prism.account.payment_reported_fraudulent",
}

impl AccountEvent {
    /// The schema version every event is written with today.
    pub const SCHEMA_VERSION: u32 = 1;

    /// The signed change this event makes to the balance.
    pub fn balance_change(&self) -> MinorUnits {
        match self {
            Self::MoneyDeposited(e) => e.amount_minor,
            Self::MoneyWithdrawn(e) => -e.amount_minor,
            Self::CardPaymentApproved(e) => -e.payment.amount_minor,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment() -> CardPayment {
        CardPayment {
            amount_minor: 1250,
            merchant_name: "Café Rosa".into(),
            merchant_category: "5814".into(),
            merchant_country: Country::parse("PT").expect("PT"),
            channel: CardChannel::Pos,
        }
    }

    #[test]
    fn every_event_round_trips_through_its_type_and_data() {
        let events = vec![
            AccountEvent::AccountOpened(AccountOpened {
                holder_name: "Ada".into(),
                email: "ada@example.org".into(),
                country: Country::parse("GB").expect("GB"),
                currency: Currency::parse("GBP").expect("GBP"),
                daily_withdrawal_limit_minor: 50_000,
            }),
            AccountEvent::MoneyDeposited(MoneyDeposited {
                amount_minor: 10,
                description: None,
            }),
            AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
                amount_minor: 5,
                description: Some("rent".into()),
                channel: WithdrawalChannel::Atm,
            }),
            AccountEvent::CardPaymentApproved(CardPaymentApproved { payment: payment() }),
            AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
                payment: payment(),
                decline_reason: DeclineReason::InsufficientFunds,
            }),
            AccountEvent::AccountFrozen(AccountFrozen {
                reason: "card stolen".into(),
            }),
            AccountEvent::AccountUnfrozen(AccountUnfrozen {}),
            AccountEvent::AccountClosed(AccountClosed {}),
            AccountEvent::PaymentReportedFraudulent(PaymentReportedFraudulent {
                payment_event_id: uuid::Uuid::from_u128(7),
                reason: "card not present".into(),
            }),
        ];
        assert_eq!(events.len(), AccountEvent::TYPES.len());
        for event in events {
            let back = AccountEvent::from_data(event.event_type(), event.data());
            assert_eq!(back.ok(), Some(event));
        }
    }

    #[test]
    fn card_payment_data_is_flat() {
        let event = AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
            payment: payment(),
            decline_reason: DeclineReason::AccountFrozen,
        });
        let data = event.data();
        assert_eq!(data["merchant_category"], "5814");
        assert_eq!(data["decline_reason"], "account_frozen");
        assert_eq!(data["channel"], "pos");
    }

    #[test]
    fn unknown_types_and_bad_data_are_errors() {
        assert!(matches!(
            AccountEvent::from_data("prism.account.teleported", serde_json::json!({})),
            Err(DataError::UnknownType(_))
        ));
        assert!(matches!(
            AccountEvent::from_data(
                "prism.account.money_deposited",
                serde_json::json!({ "amount_minor": "ten" })
            ),
            Err(DataError::Invalid { .. })
        ));
        assert!(matches!(
            AccountEvent::from_data(
                "prism.account.opened",
                serde_json::json!({ "holder_name": "A", "email": "a@b", "country": "XX",
                    "currency": "EUR", "daily_withdrawal_limit_minor": 1 })
            ),
            Err(DataError::Invalid { .. })
        ));
    }
}
