//! CloudEvents Kafka protocol binding, binary content mode.
//!
//! The record key is the account id (so one account's events share a partition and keep
//! their order), the value is the JSON `data`, and every attribute is a `ce_`-prefixed
//! header; `datacontenttype` travels as the `content-type` header.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::envelope::{
    AccountId, DecodeError, Envelope, RawEvent, DATA_CONTENT_TYPE, SPEC_VERSION,
};
use crate::event::AccountEvent;

pub const H_SPECVERSION: &str = "ce_specversion";
pub const H_ID: &str = "ce_id";
pub const H_SOURCE: &str = "ce_source";
pub const H_TYPE: &str = "ce_type";
pub const H_SUBJECT: &str = "ce_subject";
pub const H_TIME: &str = "ce_time";
pub const H_CONTENT_TYPE: &str = "content-type";
pub const H_ACCOUNT_VERSION: &str = "ce_accountversion";
pub const H_CORRELATION_ID: &str = "ce_correlationid";
pub const H_CAUSATION_ID: &str = "ce_causationid";
pub const H_SCHEMA_VERSION: &str = "ce_schemaversion";

/// What a producer sends; independent of any Kafka client library.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaRecord {
    pub key: String,
    pub headers: Vec<(&'static str, String)>,
    pub value: Vec<u8>,
}

/// Encodes an envelope at the current schema version.
pub fn encode(envelope: &Envelope) -> KafkaRecord {
    encode_raw(&envelope.to_raw())
}

/// Encodes a raw event as it is (a relay publishes what the store holds).
pub fn encode_raw(raw: &RawEvent) -> KafkaRecord {
    let mut headers = vec![
        (H_SPECVERSION, SPEC_VERSION.to_owned()),
        (H_ID, raw.id.clone()),
        (H_SOURCE, raw.source.clone()),
        (H_TYPE, raw.event_type.clone()),
        (H_SUBJECT, raw.subject.clone()),
        (
            H_TIME,
            raw.time
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        (H_CONTENT_TYPE, DATA_CONTENT_TYPE.to_owned()),
        (H_ACCOUNT_VERSION, raw.account_version.to_string()),
        (H_SCHEMA_VERSION, raw.schema_version.to_string()),
    ];
    if let Some(c) = &raw.correlation_id {
        headers.push((H_CORRELATION_ID, c.clone()));
    }
    if let Some(c) = &raw.causation_id {
        headers.push((H_CAUSATION_ID, c.clone()));
    }
    KafkaRecord {
        key: raw.subject.clone(),
        headers,
        value: serde_json::to_vec(&raw.data).unwrap_or_default(),
    }
}

/// Decodes a consumed record. Headers are `(name, bytes)` as the client library gives them.
///
/// A record at the current schema version is read straight into its event, without a
/// JSON tree in between or a copy of every header; anything else (an older schema to
/// upcast, or a record that fails on the way) goes through [`decode_raw`] and
/// [`RawEvent::decode`], so every record gets exactly the error that path gives.
pub fn decode<'a>(
    key: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    value: Option<&[u8]>,
) -> Result<Envelope, DecodeError> {
    let attributes = Attributes::read(key, headers)?;
    if attributes.schema_version == AccountEvent::SCHEMA_VERSION {
        if let Some(envelope) = attributes.decode_current(value) {
            return Ok(envelope);
        }
    }
    attributes.into_raw(value)?.decode()
}

/// Reads the attributes of a consumed record without upcasting or validating the data.
pub fn decode_raw<'a>(
    key: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    value: Option<&[u8]>,
) -> Result<RawEvent, DecodeError> {
    Attributes::read(key, headers)?.into_raw(value)
}

/// A record's CloudEvents attributes, borrowed from its headers. The ones checked here are
/// checked in this order by both ways of decoding; `id`, `source` and `type` are found
/// missing only after the value was parsed ([`Attributes::into_raw`]).
struct Attributes<'a> {
    id: Option<&'a str>,
    source: Option<&'a str>,
    event_type: Option<&'a str>,
    subject: &'a str,
    time: DateTime<Utc>,
    account_version: u64,
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    schema_version: u32,
}

impl<'a> Attributes<'a> {
    fn read(
        key: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, DecodeError> {
        let invalid = |field, reason: String| DecodeError::Invalid { field, reason };
        let mut found: [Option<&'a str>; 10] = Default::default();
        let names = [
            H_SPECVERSION,
            H_ID,
            H_SOURCE,
            H_TYPE,
            H_SUBJECT,
            H_TIME,
            H_ACCOUNT_VERSION,
            H_CORRELATION_ID,
            H_CAUSATION_ID,
            H_SCHEMA_VERSION,
        ];
        for (name, bytes) in headers {
            if let Some(i) = names.iter().position(|n| *n == name) {
                let text =
                    std::str::from_utf8(bytes).map_err(|e| invalid(names[i], e.to_string()))?;
                found[i] = Some(text);
            }
        }
        let [spec, id, source, event_type, subject, time, version, correlation, causation, schema] =
            found;
        let spec = spec.ok_or(DecodeError::Missing(H_SPECVERSION))?;
        if spec != SPEC_VERSION {
            return Err(invalid(
                H_SPECVERSION,
                format!("{spec:?} is not {SPEC_VERSION}"),
            ));
        }
        let subject = subject.ok_or(DecodeError::Missing(H_SUBJECT))?;
        if let Some(key) = key {
            if key != subject.as_bytes() {
                return Err(invalid(
                    "key",
                    "the record key is not the event's subject".into(),
                ));
            }
        }
        let time: DateTime<Utc> =
            DateTime::parse_from_rfc3339(time.ok_or(DecodeError::Missing(H_TIME))?)
                .map_err(|e| invalid(H_TIME, e.to_string()))?
                .with_timezone(&Utc);
        let account_version = version
            .ok_or(DecodeError::Missing(H_ACCOUNT_VERSION))?
            .parse()
            .map_err(|e: std::num::ParseIntError| invalid(H_ACCOUNT_VERSION, e.to_string()))?;
        let schema_version = schema
            .ok_or(DecodeError::Missing(H_SCHEMA_VERSION))?
            .parse()
            .map_err(|e: std::num::ParseIntError| invalid(H_SCHEMA_VERSION, e.to_string()))?;
        Ok(Self {
            id,
            source,
            event_type,
            subject,
            time,
            account_version,
            correlation_id: correlation,
            causation_id: causation,
            schema_version,
        })
    }

    /// The envelope of a record at the current schema version, read straight from the
    /// value; `None` if anything is wrong with it (the caller then takes the general way,
    /// which names what).
    fn decode_current(&self, value: Option<&[u8]>) -> Option<Envelope> {
        let id = Uuid::parse_str(self.id?).ok()?;
        let source = self.source?;
        let account_id: AccountId = self.subject.parse().ok()?;
        if self.account_version == 0 {
            return None;
        }
        let event = AccountEvent::from_json_slice(self.event_type?, value?).ok()?;
        Some(Envelope {
            id,
            source: source.to_owned(),
            account_id,
            time: self.time,
            account_version: self.account_version,
            correlation_id: self.correlation_id.map(str::to_owned),
            causation_id: self.causation_id.map(str::to_owned),
            event,
        })
    }

    /// The raw event: the value parsed as JSON, the attributes copied.
    fn into_raw(self, value: Option<&[u8]>) -> Result<RawEvent, DecodeError> {
        let data =
            serde_json::from_slice(value.ok_or(DecodeError::Missing("value"))?).map_err(|e| {
                DecodeError::Invalid {
                    field: "value",
                    reason: e.to_string(),
                }
            })?;
        Ok(RawEvent {
            id: self.id.ok_or(DecodeError::Missing(H_ID))?.to_owned(),
            source: self
                .source
                .ok_or(DecodeError::Missing(H_SOURCE))?
                .to_owned(),
            event_type: self
                .event_type
                .ok_or(DecodeError::Missing(H_TYPE))?
                .to_owned(),
            subject: self.subject.to_owned(),
            time: self.time,
            account_version: self.account_version,
            correlation_id: self.correlation_id.map(str::to_owned),
            causation_id: self.causation_id.map(str::to_owned),
            schema_version: self.schema_version,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::envelope::AccountId;
    use crate::event::{AccountEvent, AccountFrozen};

    fn frozen() -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            source: "/prism/command".into(),
            account_id: AccountId::generate(),
            time: Utc::now(),
            account_version: 7,
            correlation_id: Some("corr".into()),
            causation_id: Some("cause".into()),
            event: AccountEvent::AccountFrozen(AccountFrozen {
                reason: "fraud suspected".into(),
            }),
        }
    }

    fn headers(record: &KafkaRecord) -> Vec<(&str, &[u8])> {
        record
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_bytes()))
            .collect()
    }

    #[test]
    fn a_record_is_keyed_by_account_and_round_trips() {
        let envelope = frozen();
        let record = encode(&envelope);
        assert_eq!(record.key, envelope.account_id.to_string());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&record.value).ok(),
            Some(serde_json::json!({ "reason": "fraud suspected" }))
        );
        assert!(record
            .headers
            .contains(&(H_TYPE, "prism.account.frozen".into())));
        assert!(record.headers.contains(&(H_ACCOUNT_VERSION, "7".into())));
        // Microsecond precision survives the header.
        let decoded = decode(
            Some(record.key.as_bytes()),
            headers(&record),
            Some(&record.value),
        );
        let decoded = decoded.expect("decodes");
        assert_eq!(decoded.id, envelope.id);
        assert_eq!(decoded.event, envelope.event);
        assert_eq!(decoded.causation_id.as_deref(), Some("cause"));
        assert_eq!(
            decoded.time.timestamp_micros(),
            envelope.time.timestamp_micros()
        );
    }

    /// The general way of decoding: a parsed JSON tree, upcast, then the typed event.
    fn decode_via_tree<'a>(
        key: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        value: Option<&[u8]>,
    ) -> Result<Envelope, DecodeError> {
        decode_raw(key, headers, value)?.decode()
    }

    fn every_type() -> Vec<Envelope> {
        use serde_json::json;
        let card = json!({ "amount_minor": 1_200, "merchant_name": "Corner \"Café\"",
            "merchant_category": "5814", "merchant_country": "PT", "channel": "online" });
        let mut declined = card.clone();
        declined["decline_reason"] = json!("insufficient_funds");
        let data = [
            (
                "prism.account.opened",
                json!({ "holder_name": "Ada", "email": "ada@example.com",
                "country": "DE", "currency": "EUR", "daily_withdrawal_limit_minor": 50_000 }),
            ),
            (
                "prism.account.money_deposited",
                json!({ "amount_minor": 10_000, "description": "pay" }),
            ),
            (
                "prism.account.money_withdrawn",
                json!({ "amount_minor": 2_500, "channel": "atm" }),
            ),
            ("prism.account.card_payment_approved", card),
            ("prism.account.card_payment_declined", declined),
            ("prism.account.frozen", json!({ "reason": "review" })),
            ("prism.account.unfrozen", json!({})),
            ("prism.account.closed", json!({})),
            (
                "prism.account.payment_reported_fraudulent",
                json!({ "payment_event_id": Uuid::from_u128(7), "reason": "card stolen" }),
            ),
        ];
        let account = AccountId::generate();
        data.into_iter()
            .zip(1..)
            .map(|((event_type, data), version)| Envelope {
                id: Uuid::now_v7(),
                source: "/prism/command".into(),
                account_id: account,
                time: Utc::now(),
                account_version: version,
                correlation_id: Some("corr".into()),
                causation_id: None,
                event: AccountEvent::from_data(event_type, data).expect(event_type),
            })
            .collect()
    }

    #[test]
    fn the_direct_way_decodes_every_type_as_the_tree_does() {
        let all = every_type();
        let types: std::collections::BTreeSet<&str> =
            all.iter().map(|e| e.event.event_type()).collect();
        assert_eq!(types.len(), AccountEvent::TYPES.len(), "every type once");
        for envelope in all {
            let record = encode(&envelope);
            let key = Some(record.key.as_bytes());
            let direct = decode(key, headers(&record), Some(&record.value)).expect("decodes");
            let tree =
                decode_via_tree(key, headers(&record), Some(&record.value)).expect("decodes");
            assert_eq!(direct, tree, "{}", envelope.event.event_type());
            // What was sent, but the time, which travels in microseconds.
            let sent = Envelope {
                time: direct.time,
                ..envelope
            };
            assert_eq!(direct, sent);
        }
    }

    #[test]
    fn a_bad_record_gets_the_same_error_either_way() {
        let record = encode(&every_type()[1]);
        let with = |name: &'static str, value: &'static [u8]| {
            let mut h = headers(&record);
            h.retain(|(k, _)| *k != name);
            h.push((name, value));
            h
        };
        type Headers<'a> = Vec<(&'a str, &'a [u8])>;
        let cases: Vec<(&str, Headers, &[u8])> = vec![
            ("not json", headers(&record), b"{not json"),
            (
                "a string amount",
                headers(&record),
                br#"{"amount_minor":"5"}"#,
            ),
            (
                "a fractional amount",
                headers(&record),
                br#"{"amount_minor":1.5}"#,
            ),
            ("no data field", headers(&record), b"{}"),
            (
                "an unknown type",
                with(H_TYPE, b"prism.account.renamed"),
                &record.value,
            ),
            ("a bad id", with(H_ID, b"not-a-uuid"), &record.value),
            ("version 0", with(H_ACCOUNT_VERSION, b"0"), &record.value),
            ("bad json and a bad id", with(H_ID, b"x"), b"[1,"),
        ];
        for (what, headers, value) in cases {
            let direct = decode(None, headers.clone(), Some(value)).expect_err(what);
            let tree = decode_via_tree(None, headers, Some(value)).expect_err(what);
            assert_eq!(direct.to_string(), tree.to_string(), "{what}");
            assert_eq!(
                direct.needs_newer_reader(),
                tree.needs_newer_reader(),
                "{what}"
            );
        }
        let unknown = decode(
            None,
            with(H_TYPE, b"prism.account.renamed"),
            Some(&record.value),
        );
        assert!(unknown.is_err_and(|e| e.needs_newer_reader()));
        let bad = decode(None, headers(&record), Some(b"{not json"));
        assert!(matches!(
            bad,
            Err(DecodeError::Invalid { field: "value", .. })
        ));
    }

    #[test]
    fn the_direct_way_accepts_only_what_the_tree_accepts() {
        // JSON that is well formed but that the tree refuses, in a field no type reads
        // (a deposit's fields are read directly; a card payment's go through `flatten`).
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let unknown_field_values: [&[u8]; 6] = [
            b"1e400",
            b"-1e400",
            br#""\ud800""#,
            b"\"\xff\"",
            deep.as_bytes(),
            br#"{"\udc00":1}"#,
        ];
        for envelope in [&every_type()[1], &every_type()[3]] {
            let record = encode(envelope);
            for bad in unknown_field_values {
                let mut value = record.value.clone();
                value.pop();
                value.extend_from_slice(b",\"later\":");
                value.extend_from_slice(bad);
                value.push(b'}');
                let what = String::from_utf8_lossy(&value).into_owned();
                let direct = decode(None, headers(&record), Some(&value));
                let tree = decode_via_tree(None, headers(&record), Some(&value));
                assert!(
                    matches!(tree, Err(DecodeError::Invalid { field: "value", .. })),
                    "{what}: {tree:?}"
                );
                assert_eq!(
                    direct.map_err(|e| e.to_string()),
                    tree.map_err(|e| e.to_string()),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn an_older_schema_version_is_still_upcast() {
        let record = encode(&every_type()[1]);
        let mut old = headers(&record);
        old.retain(|(k, _)| *k != H_SCHEMA_VERSION);
        old.push((H_SCHEMA_VERSION, b"0"));
        // No upcaster goes from version 0: the general way is taken and says so.
        assert!(matches!(
            decode(None, old, Some(&record.value)),
            Err(DecodeError::Upcast(_))
        ));
    }

    #[test]
    fn poison_records_are_errors_not_panics() {
        let record = encode(&frozen());
        let no_type: Vec<_> = headers(&record)
            .into_iter()
            .filter(|(k, _)| *k != H_TYPE)
            .collect();
        assert!(matches!(
            decode(None, no_type, Some(&record.value)),
            Err(DecodeError::Missing(H_TYPE))
        ));
        assert!(decode(None, headers(&record), Some(b"{not json")).is_err());
        assert!(decode(Some(b"other-key"), headers(&record), Some(&record.value)).is_err());
        let mut future = headers(&record);
        future.retain(|(k, _)| *k != H_SCHEMA_VERSION);
        future.push((H_SCHEMA_VERSION, b"99"));
        assert!(matches!(
            decode(None, future, Some(&record.value)),
            Err(DecodeError::Upcast(_))
        ));
    }
}
