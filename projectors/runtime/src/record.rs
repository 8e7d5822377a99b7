//! A consumed Kafka record, owned, as it travels from the polling thread to its
//! partition's worker.

use std::ops::Range;

use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::plan::Decoded;

/// A record's key, payload and headers, copied into three buffers sized exactly (the
/// polling thread copies every record: three allocations each, not two per header).
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The key, the payload and the header values, one after the other.
    bytes: Vec<u8>,
    /// The header names, one after the other.
    names: String,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    /// (name in `names`, value in `bytes`) of each header, in order; a header without a
    /// value has an empty one.
    headers: Vec<(Range<usize>, Range<usize>)>,
}

impl Record {
    /// A record of these parts. The headers are gone through twice: once to size the
    /// buffers, once to fill them.
    pub fn new<'a, H>(
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: H,
    ) -> Self
    where
        H: IntoIterator<Item = (&'a str, &'a [u8])>,
        H::IntoIter: Clone,
    {
        let headers = headers.into_iter();
        let (count, names_len, values_len) =
            headers
                .clone()
                .fold((0, 0, 0), |(count, names, values), (name, value)| {
                    (count + 1, names + name.len(), values + value.len())
                });
        let mut bytes = Vec::with_capacity(
            key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + values_len,
        );
        let mut names = String::with_capacity(names_len);
        let put = |bytes: &mut Vec<u8>, part: &[u8]| {
            let start = bytes.len();
            bytes.extend_from_slice(part);
            start..bytes.len()
        };
        let key = key.map(|k| put(&mut bytes, k));
        let payload = payload.map(|p| put(&mut bytes, p));
        let mut ranges = Vec::with_capacity(count);
        ranges.extend(headers.map(|(name, value)| {
            let start = names.len();
            names.push_str(name);
            (start..names.len(), put(&mut bytes, value))
        }));
        Self {
            partition,
            offset,
            bytes,
            names,
            key,
            payload,
            headers: ranges,
        }
    }

    /// Copies a consumed message (what the polling thread does for every record). Each
    /// header is asked of librdkafka once (a name costs a `strlen` and a UTF-8 check), then
    /// sized and copied from that list.
    pub fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers: Vec<(&str, &[u8])> = match message.headers() {
            Some(h) => (0..h.count())
                .filter_map(|i| h.try_get(i))
                .map(|h| (h.key, h.value.unwrap_or_default()))
                .collect(),
            None => Vec::new(),
        };
        Self::new(
            message.partition(),
            message.offset(),
            message.key(),
            message.payload(),
            headers.iter().copied(),
        )
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key.clone().and_then(|r| self.bytes.get(r))
    }

    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.clone().and_then(|r| self.bytes.get(r))
    }

    /// The headers as `(name, value)`, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone + '_ {
        self.headers.iter().filter_map(|(name, value)| {
            Some((
                self.names.get(name.clone())?,
                self.bytes.get(value.clone())?,
            ))
        })
    }

    /// The CloudEvents correlation id (`ce_correlationid`) the command service gave the
    /// request that wrote this event, if the record carries a readable one: what ties a
    /// projector's log line about the event to the HTTP request.
    pub fn correlation_id(&self) -> Option<&str> {
        self.headers()
            .find(|(name, _)| *name == prism_events::kafka::H_CORRELATION_ID)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// How many headers the record has.
    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// Decodes the record into an event (CloudEvents binary mode, see `prism_events::kafka`).
    pub fn decode(&self) -> Decoded {
        let decoded = prism_events::kafka::decode(self.key(), self.headers(), self.payload());
        let event_type = match &decoded {
            Ok(envelope) => envelope.event_type(),
            Err(_) => self
                .headers()
                .find(|(name, _)| *name == prism_events::kafka::H_TYPE)
                .and_then(|(_, value)| std::str::from_utf8(value).ok())
                .and_then(|t| prism_events::AccountEvent::TYPES.iter().find(|k| **k == t))
                .copied()
                .unwrap_or("undecodable"),
        };
        let needs_upgrade = decoded.as_ref().is_err_and(|e| e.needs_newer_reader());
        Decoded {
            offset: self.offset,
            event_type,
            envelope: decoded.map_err(|e| e.to_string()),
            needs_upgrade,
        }
    }
}

#[cfg(test)]
mod tests {
    use prism_events::Envelope;

    use super::*;

    #[test]
    fn the_parts_come_back_as_they_went_in() {
        let record = Record::new(
            3,
            42,
            Some(b"key"),
            Some(b"{\"a\":1}"),
            [
                ("ce_type", &b"t"[..]),
                ("empty", &b""[..]),
                ("ce_id", &b"x"[..]),
            ],
        );
        assert_eq!((record.partition, record.offset), (3, 42));
        assert_eq!(record.key(), Some(&b"key"[..]));
        assert_eq!(record.payload(), Some(&b"{\"a\":1}"[..]));
        let headers: Vec<(&str, &[u8])> = record.headers().collect();
        assert_eq!(
            headers,
            [
                ("ce_type", &b"t"[..]),
                ("empty", &b""[..]),
                ("ce_id", &b"x"[..])
            ]
        );
        assert_eq!(record.header_count(), 3);
    }

    #[test]
    fn the_buffers_are_sized_once() {
        let headers = [
            ("ce_type", &b"t"[..]),
            ("empty", &b""[..]),
            ("x", &b"yz"[..]),
        ];
        let record = Record::new(0, 0, Some(b"key"), Some(b"payload"), headers);
        assert_eq!(record.bytes.len(), 3 + 7 + 1 + 2);
        assert_eq!(record.bytes.capacity(), record.bytes.len());
        assert_eq!(record.names.capacity(), record.names.len());
        assert_eq!(record.headers.capacity(), 3);
    }

    #[test]
    fn an_encoded_event_decodes_as_the_contract_says() {
        let envelope = prism_events::testing::envelope(prism_events::testing::deposited(5))
            .version(3)
            .build();
        let sent = prism_events::kafka::encode(&envelope);
        let headers: Vec<(&str, &[u8])> = sent
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        let record = Record::new(
            1,
            9,
            Some(sent.key.as_bytes()),
            Some(&sent.value),
            headers.iter().copied(),
        );
        assert!(record.headers().eq(headers.iter().copied()));
        let decoded = record.decode();
        assert_eq!(
            (decoded.offset, decoded.event_type, decoded.needs_upgrade),
            (9, "prism.account.money_deposited", false)
        );
        let got = decoded.envelope.expect("decodes");
        assert_eq!(
            got,
            Envelope {
                time: got.time,
                ..envelope
            }
        );
    }

    #[test]
    fn a_record_without_key_payload_or_headers_has_none() {
        let record = Record::new(0, 0, None, None, []);
        assert_eq!((record.key(), record.payload()), (None, None));
        assert_eq!(record.headers().count(), 0);
        let empty = Record::new(0, 0, Some(b""), Some(b""), []);
        assert_eq!(
            empty.key(),
            Some(&b""[..]),
            "an empty key is not a missing one"
        );
        assert_eq!(empty.payload(), Some(&b""[..]));
    }

    #[test]
    fn an_undecodable_record_is_named_so_and_a_known_type_keeps_its_name() {
        let junk = Record::new(0, 7, None, Some(b"{"), [("ce_type", &b"nope"[..])]);
        let decoded = junk.decode();
        assert_eq!(decoded.event_type, "undecodable");
        assert!(decoded.envelope.is_err());
        let typed = Record::new(
            0,
            8,
            None,
            Some(b"{"),
            [("ce_type", &b"prism.account.frozen"[..])],
        );
        assert_eq!(typed.decode().event_type, "prism.account.frozen");
    }
}
