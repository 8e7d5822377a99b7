//! A consumed Kafka record, owned, as it travels from the polling thread to its
//! partition's worker.

use std::ops::Range;

use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::plan::Decoded;

/// A record's key, payload and headers, copied into a few buffers (the polling thread
/// copies every record: a handful of allocations each, not two per header).
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
    /// A record of these parts.
    pub fn new<'a>(
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Self {
        /// Room for the usual CloudEvents headers' names and values.
        const HEADERS_ROOM: usize = 192;
        let mut bytes = Vec::with_capacity(
            key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + HEADERS_ROOM,
        );
        let mut names = String::with_capacity(HEADERS_ROOM);
        let put = |bytes: &mut Vec<u8>, part: &[u8]| {
            let start = bytes.len();
            bytes.extend_from_slice(part);
            start..bytes.len()
        };
        let key = key.map(|k| put(&mut bytes, k));
        let payload = payload.map(|p| put(&mut bytes, p));
        let headers = headers
            .into_iter()
            .map(|(name, value)| {
                let start = names.len();
                names.push_str(name);
                (start..names.len(), put(&mut bytes, value))
            })
            .collect();
        Self {
            partition,
            offset,
            bytes,
            names,
            key,
            payload,
            headers,
        }
    }

    /// Copies a consumed message (what the polling thread does for every record).
    pub fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers = message.headers();
        Self::new(
            message.partition(),
            message.offset(),
            message.key(),
            message.payload(),
            headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|h| (h.key, h.value.unwrap_or_default())),
        )
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key.clone().and_then(|r| self.bytes.get(r))
    }

    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.clone().and_then(|r| self.bytes.get(r))
    }

    /// The headers as `(name, value)`, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter().filter_map(|(name, value)| {
            Some((
                self.names.get(name.clone())?,
                self.bytes.get(value.clone())?,
            ))
        })
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
