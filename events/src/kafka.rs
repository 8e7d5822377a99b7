//! CloudEvents Kafka protocol binding, binary content mode.
//!
//! The record key is the account id (so one account's events share a partition and keep
//! their order), the value is the JSON `data`, and every attribute is a `ce_`-prefixed
//! header; `datacontenttype` travels as the `content-type` header.

use chrono::{DateTime, Utc};

use crate::envelope::{DecodeError, Envelope, RawEvent, DATA_CONTENT_TYPE, SPEC_VERSION};

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
pub fn decode<'a>(
    key: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    value: Option<&[u8]>,
) -> Result<Envelope, DecodeError> {
    decode_raw(key, headers, value)?.decode()
}

/// Reads the attributes of a consumed record without upcasting or validating the data.
pub fn decode_raw<'a>(
    key: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    value: Option<&[u8]>,
) -> Result<RawEvent, DecodeError> {
    let invalid = |field, reason: String| DecodeError::Invalid { field, reason };
    let mut found: [Option<String>; 10] = Default::default();
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
            let text = std::str::from_utf8(bytes).map_err(|e| invalid(names[i], e.to_string()))?;
            found[i] = Some(text.to_owned());
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
        DateTime::parse_from_rfc3339(&time.ok_or(DecodeError::Missing(H_TIME))?)
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
    let data = serde_json::from_slice(value.ok_or(DecodeError::Missing("value"))?)
        .map_err(|e| invalid("value", e.to_string()))?;
    Ok(RawEvent {
        id: id.ok_or(DecodeError::Missing(H_ID))?,
        source: source.ok_or(DecodeError::Missing(H_SOURCE))?,
        event_type: event_type.ok_or(DecodeError::Missing(H_TYPE))?,
        subject,
        time,
        account_version,
        correlation_id: correlation,
        causation_id: causation,
        schema_version,
        data,
    })
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
