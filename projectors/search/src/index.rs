//! Index and alias names, mappings and settings: the one place that knows them.
//!
//! Copy `N` of the read model is three indices, `<prefix>-transactions-g<N>`,
//! `<prefix>-accounts-g<N>` and `<prefix>-checkpoints-g<N>` (the runtime's bookkeeping:
//! positions, and account versions an account document does not carry). The query API reads the aliases
//! `<prefix>-transactions` and `<prefix>-accounts`, which always point at the live copy;
//! a promotion moves both in one `_aliases` request. `<prefix>-control` lists the copies and
//! the running instances (see [`crate::copies`]).
//!
//! Every mapping is explicit and `dynamic: strict`: a document with a field the mapping
//! does not know is refused (the sink dead-letters its event) instead of growing the
//! mapping. Text is analysed with [`FOLDED`] (standard tokenizer, lowercase, ASCII folding)
//! so "zoe" finds "Zoë" and "muller" finds "Müller"; `.keyword` sub-fields hold the exact
//! value (facets show it as written), `.folded` sub-fields the lowercased, folded value
//! (exact filters that ignore case and accents), `.suggest` sub-fields are
//! `search_as_you_type` for autocomplete. Codes (countries, currencies, kinds, channels)
//! are plain keywords, money is `long` minor units, times are `date`.

use serde_json::{json, Value};

use crate::config::SearchConfig;

/// The analyzer (and normalizer) of every free-text field: lowercase + ASCII folding.
pub const FOLDED: &str = "folded";

/// Longest keyword value indexed (longer values stay in `_source` and the text field but
/// are not indexed as a keyword, rather than failing the document).
const KEYWORD_MAX: u32 = 256;

/// The names of every index and alias under one prefix (`[search] index_prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix`, which [`crate::config::validate_index_prefix`] accepted.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The alias the query API searches for transactions: `<prefix>-transactions`.
    pub fn transactions_alias(&self) -> String {
        format!("{}-transactions", self.prefix)
    }

    /// The alias the query API searches for accounts: `<prefix>-accounts`.
    pub fn accounts_alias(&self) -> String {
        format!("{}-accounts", self.prefix)
    }

    /// Copy `number`'s transactions index: `<prefix>-transactions-g<N>`.
    pub fn transactions_index(&self, number: u32) -> String {
        format!("{}-transactions-g{number}", self.prefix)
    }

    /// Copy `number`'s accounts index: `<prefix>-accounts-g<N>`.
    pub fn accounts_index(&self, number: u32) -> String {
        format!("{}-accounts-g{number}", self.prefix)
    }

    /// Copy `number`'s checkpoint index (positions, account versions):
    /// `<prefix>-checkpoints-g<N>`.
    pub fn checkpoints_index(&self, number: u32) -> String {
        format!("{}-checkpoints-g{number}", self.prefix)
    }

    /// The control index (copies and instances): `<prefix>-control`.
    pub fn control_index(&self) -> String {
        format!("{}-control", self.prefix)
    }
}

/// The analysis settings shared by the read-model indices.
fn analysis() -> Value {
    json!({
        "analyzer": {
            FOLDED: {
                "type": "custom",
                "tokenizer": "standard",
                "filter": ["lowercase", "asciifolding"]
            }
        },
        "normalizer": {
            FOLDED: { "type": "custom", "filter": ["lowercase", "asciifolding"] }
        }
    })
}

fn index_settings(config: &SearchConfig) -> Value {
    json!({
        "number_of_shards": config.shards,
        "number_of_replicas": config.replicas,
        "refresh_interval": format!("{}ms", config.refresh_interval_ms),
        "analysis": analysis(),
    })
}

fn keyword() -> Value {
    json!({ "type": "keyword" })
}

fn long() -> Value {
    json!({ "type": "long" })
}

fn date() -> Value {
    json!({ "type": "date" })
}

/// Stored, never searched (error texts).
fn stored_only() -> Value {
    json!({ "type": "keyword", "index": false, "doc_values": false })
}

/// Folded text with the exact value (`.keyword`) and the folded one (`.folded`).
fn text_with_keywords() -> Value {
    json!({
        "type": "text",
        "analyzer": FOLDED,
        "fields": {
            "keyword": { "type": "keyword", "ignore_above": KEYWORD_MAX },
            "folded": { "type": "keyword", "normalizer": FOLDED, "ignore_above": KEYWORD_MAX }
        }
    })
}

/// [`text_with_keywords`] plus `.suggest`, a `search_as_you_type` field for autocomplete
/// (query it with a `bool_prefix` `multi_match` over `.suggest`, `._2gram`, `._3gram`).
fn text_with_suggest() -> Value {
    let mut field = text_with_keywords();
    field["fields"]["suggest"] = json!({ "type": "search_as_you_type", "analyzer": FOLDED });
    field
}

/// The body of `PUT <transactions index>`: settings and the mapping of
/// [`crate::fold::TransactionDoc`].
pub fn transactions_index_body(config: &SearchConfig) -> Value {
    json!({
        "settings": index_settings(config),
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "event_id": keyword(),
                "account_id": keyword(),
                "version": long(),
                "kind": keyword(),
                "holder_name": text_with_suggest(),
                "holder_country": keyword(),
                "merchant_name": text_with_keywords(),
                "category_code": keyword(),
                "category_description": text_with_keywords(),
                "merchant_country": keyword(),
                "channel": keyword(),
                "amount_minor": long(),
                "currency": keyword(),
                "time": date(),
                "decision": keyword(),
                "decline_reason": keyword(),
                "description": { "type": "text", "analyzer": FOLDED }
            }
        }
    })
}

/// The body of `PUT <accounts index>`: settings and the mapping of
/// [`crate::fold::AccountDoc`].
pub fn accounts_index_body(config: &SearchConfig) -> Value {
    json!({
        "settings": index_settings(config),
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "account_id": keyword(),
                "holder_name": text_with_suggest(),
                "email": text_with_suggest(),
                "country": keyword(),
                "currency": keyword(),
                "status": keyword(),
                "balance_minor": long(),
                "opened_at": date(),
                "last_activity_at": date(),
                "version": long()
            }
        }
    })
}

/// The body of `PUT <checkpoints index>`: the kit's checkpoint index (one document per
/// partition, `partition-<p>`, and one per account whose handled version is ahead of its
/// account document, `account-<uuid>`, after dead letters; see [`crate::sink`]), with this
/// model's replicas and refresh interval. The kit owns its mapping.
pub fn checkpoints_index_body(config: &SearchConfig) -> Value {
    prism_projector::checkpoint::elasticsearch::index_body(
        config.replicas,
        config.refresh_interval_ms,
    )
}

/// The body of `PUT <control index>`: one document per copy (`copy-<n>`) and one per
/// running instance (`instance-<id>`), see [`crate::copies`]. Refreshed at once on every
/// write there (it is tiny and written rarely), so a search of it sees the last write.
pub fn control_index_body(config: &SearchConfig) -> Value {
    json!({
        "settings": {
            "number_of_shards": 1,
            "number_of_replicas": config.replicas,
        },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "kind": keyword(),
                "number": { "type": "integer" },
                "state": keyword(),
                "created_at": date(),
                "live_since": date(),
                "instance": keyword(),
                "writing": { "type": "integer" },
                "can_open": { "type": "integer" },
                "error": stored_only(),
                "seen_at": date()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        let n = Names::new("prism-search");
        assert_eq!(n.transactions_alias(), "prism-search-transactions");
        assert_eq!(n.accounts_alias(), "prism-search-accounts");
        assert_eq!(n.transactions_index(3), "prism-search-transactions-g3");
        assert_eq!(n.accounts_index(3), "prism-search-accounts-g3");
        assert_eq!(n.checkpoints_index(3), "prism-search-checkpoints-g3");
        assert_eq!(n.control_index(), "prism-search-control");
    }

    #[test]
    fn settings_come_from_the_configuration() {
        let config = SearchConfig {
            shards: 3,
            replicas: 2,
            refresh_interval_ms: 250,
            ..SearchConfig::default()
        };
        let body = transactions_index_body(&config);
        assert_eq!(body["settings"]["number_of_shards"], 3);
        assert_eq!(body["settings"]["number_of_replicas"], 2);
        assert_eq!(body["settings"]["refresh_interval"], "250ms");
        assert_eq!(
            checkpoints_index_body(&config)["settings"]["number_of_shards"],
            1
        );
    }

    /// Every field a document serialises is in its mapping (the mapping is strict, so a
    /// field missing there would refuse every document).
    #[test]
    fn the_mappings_hold_every_field_of_the_documents() {
        use chrono::TimeZone;
        let at = chrono::Utc
            .with_ymd_and_hms(2025, 3, 1, 9, 0, 0)
            .single()
            .expect("time");
        let account = crate::fold::AccountDoc {
            account_id: uuid::Uuid::nil(),
            holder_name: "A".into(),
            email: "a@b".into(),
            country: "DE".into(),
            currency: "EUR".into(),
            status: crate::fold::AccountStatus::Open,
            balance_minor: 0,
            opened_at: at,
            last_activity_at: at,
            version: 1,
        };
        let transaction = crate::fold::TransactionDoc {
            event_id: uuid::Uuid::nil(),
            account_id: uuid::Uuid::nil(),
            version: 2,
            kind: crate::fold::TransactionKind::DeclinedPayment,
            holder_name: "A".into(),
            holder_country: "DE".into(),
            merchant_name: Some("M".into()),
            category_code: Some("5814".into()),
            category_description: Some("Fast food restaurants".into()),
            merchant_country: Some("PT".into()),
            channel: Some("pos".into()),
            amount_minor: 1,
            currency: "EUR".into(),
            time: at,
            decision: crate::fold::Decision::Declined,
            decline_reason: Some("insufficient_funds".into()),
            description: Some("d".into()),
        };
        let config = SearchConfig::default();
        for (doc, body) in [
            (
                serde_json::to_value(&account).expect("json"),
                accounts_index_body(&config),
            ),
            (
                serde_json::to_value(&transaction).expect("json"),
                transactions_index_body(&config),
            ),
        ] {
            let properties = &body["mappings"]["properties"];
            for key in doc.as_object().expect("object").keys() {
                assert!(properties.get(key).is_some(), "{key} is not mapped");
            }
            assert_eq!(body["mappings"]["dynamic"], "strict");
        }
    }
}
