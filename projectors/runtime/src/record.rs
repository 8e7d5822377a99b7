//! A consumed Kafka record, owned, as it travels from the polling thread to its
//! partition's worker.

use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::plan::Decoded;

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// Copies a consumed message (what the polling thread does for every record).
    pub fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// Decodes the record into an event (CloudEvents binary mode, see `prism_events::kafka`).
    pub fn decode(&self) -> Decoded {
        let event_type = self
            .headers
            .iter()
            .find(|(name, _)| name == prism_events::kafka::H_TYPE)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
            .filter(|t| prism_events::AccountEvent::TYPES.contains(t))
            .unwrap_or("undecodable")
            .to_owned();
        let decoded = prism_events::kafka::decode(
            self.key.as_deref(),
            self.headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice())),
            self.payload.as_deref(),
        );
        let needs_upgrade = decoded.as_ref().is_err_and(|e| e.needs_newer_reader());
        Decoded {
            offset: self.offset,
            event_type,
            envelope: decoded.map_err(|e| e.to_string()),
            needs_upgrade,
        }
    }
}
