//! The CloudEvents 1.0 envelope around an [`AccountEvent`], and its raw form.
//!
//! [`RawEvent`] is what crosses a boundary (a Kafka record, a stored document): strings,
//! numbers and the data as JSON, not yet upcast. [`Envelope`] is the decoded, current form.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{AccountEvent, DataError};
use crate::upcast::{upcast, UpcastError};

pub const SPEC_VERSION: &str = "1.0";
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// An account's identity: a UUID (v7 when Prism creates it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub Uuid);

impl AccountId {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for AccountId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// An event with its CloudEvents attributes and Prism's extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// CloudEvents `id`: a UUIDv7, unique per event.
    pub id: Uuid,
    /// CloudEvents `source`: which service produced it, e.g. `/prism/command`.
    pub source: String,
    /// CloudEvents `subject`: the account.
    pub account_id: AccountId,
    /// CloudEvents `time`: when the command was accepted.
    pub time: DateTime<Utc>,
    /// Extension `accountversion`: 1, 2, 3… per account, no gaps.
    pub account_version: u64,
    /// Extension `correlationid`: ties together everything one request caused.
    pub correlation_id: Option<String>,
    /// Extension `causationid`: the command (request) that caused this event.
    pub causation_id: Option<String>,
    pub event: AccountEvent,
}

impl Envelope {
    /// CloudEvents `type`.
    pub fn event_type(&self) -> &'static str {
        self.event.event_type()
    }

    /// The raw form, written at the current schema version.
    pub fn to_raw(&self) -> RawEvent {
        RawEvent {
            id: self.id.to_string(),
            source: self.source.clone(),
            event_type: self.event_type().to_owned(),
            subject: self.account_id.to_string(),
            time: self.time,
            account_version: self.account_version,
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            schema_version: AccountEvent::SCHEMA_VERSION,
            data: self.event.data(),
        }
    }
}

/// An event as it crosses a boundary, before upcasting and validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub account_version: u64,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub schema_version: u32,
    pub data: serde_json::Value,
}

/// A raw event that cannot become an [`Envelope`]: for a consumer, a poison message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    #[error(transparent)]
    Data(#[from] DataError),
}

impl DecodeError {
    /// True when the record is well formed but written by a newer producer than this build
    /// understands: an event type it does not know, or a schema version above its own. Such
    /// a record is not poison: a reader upgraded to the writer's version decodes it.
    pub fn needs_newer_reader(&self) -> bool {
        matches!(
            self,
            DecodeError::Upcast(UpcastError::FromTheFuture { .. })
                | DecodeError::Data(DataError::UnknownType(_))
        )
    }
}

impl RawEvent {
    /// Upcasts the data to the current schema and checks every attribute.
    pub fn decode(self) -> Result<Envelope, DecodeError> {
        let invalid = |field, reason: String| DecodeError::Invalid { field, reason };
        let id = Uuid::parse_str(&self.id).map_err(|e| invalid("id", e.to_string()))?;
        let account_id = self
            .subject
            .parse()
            .map_err(|e: uuid::Error| invalid("subject", e.to_string()))?;
        if self.account_version == 0 {
            return Err(invalid("accountversion", "versions start at 1".into()));
        }
        let data = upcast(&self.event_type, self.schema_version, self.data)?;
        let event = AccountEvent::from_data(&self.event_type, data)?;
        Ok(Envelope {
            id,
            source: self.source,
            account_id,
            time: self.time,
            account_version: self.account_version,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MoneyDeposited;

    pub(crate) fn deposit(version: u64) -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            source: "/prism/command".into(),
            account_id: AccountId::generate(),
            time: Utc::now(),
            account_version: version,
            correlation_id: Some("req-1".into()),
            causation_id: None,
            event: AccountEvent::MoneyDeposited(MoneyDeposited {
                amount_minor: 500,
                description: Some("salary".into()),
            }),
        }
    }

    #[test]
    fn an_envelope_round_trips_through_its_raw_form() {
        let envelope = deposit(3);
        let raw = envelope.to_raw();
        assert_eq!(raw.event_type, "prism.account.money_deposited");
        assert_eq!(raw.schema_version, 1);
        assert_eq!(raw.decode().ok(), Some(envelope));
    }

    #[test]
    fn only_unknown_types_and_future_schemas_need_a_newer_reader() {
        let mut raw = deposit(1).to_raw();
        raw.schema_version = 99;
        assert!(raw.decode().expect_err("future").needs_newer_reader());
        let mut raw = deposit(1).to_raw();
        raw.event_type = "prism.account.interest_paid".into();
        assert!(raw.decode().expect_err("unknown type").needs_newer_reader());
        let mut raw = deposit(1).to_raw();
        raw.data = serde_json::json!({ "amount_minor": "ten" });
        assert!(!raw.decode().expect_err("bad data").needs_newer_reader());
        let mut raw = deposit(1).to_raw();
        raw.subject = "not-a-uuid".into();
        assert!(!raw.decode().expect_err("bad subject").needs_newer_reader());
    }

    #[test]
    fn a_bad_attribute_is_named() {
        let mut raw = deposit(1).to_raw();
        raw.subject = "not-a-uuid".into();
        let err = raw.decode().expect_err("bad subject");
        assert!(err.to_string().contains("subject"), "{err}");

        let mut raw = deposit(1).to_raw();
        raw.account_version = 0;
        assert!(raw.decode().is_err());
    }
}
