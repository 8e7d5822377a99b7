//! JSON Schemas of every event type's data, for consumers in other languages.
//!
//! They are generated from the Rust types and checked in under `events/schemas/`; a test
//! fails when they drift. Regenerate with
//! `PRISM_UPDATE_SCHEMAS=1 cargo test -p prism-events schemas_are_up_to_date`.

use serde_json::{json, Value};

use crate::event::AccountEvent;

/// The same value with every object's keys in sorted order, so the text does not depend on
/// whether serde_json was built with `preserve_order` (feature unification differs
/// between building this crate alone and the whole workspace).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// `(file name, schema)` for every event type: `prism.account.opened.v1.json`, …
pub fn documents() -> Vec<(String, Value)> {
    AccountEvent::schemas()
        .into_iter()
        .map(|(event_type, schema)| {
            let mut value = schema.to_value();
            if let Some(object) = value.as_object_mut() {
                object.insert(
                    "$id".into(),
                    json!(format!(
                        "https://prism.dev/schemas/{event_type}.v{}.json",
                        AccountEvent::SCHEMA_VERSION
                    )),
                );
                object.insert(
                    "description".into(),
                    json!(format!(
                        "Data of CloudEvents type {event_type}, schema version {} (Kafka: the record value; attributes in ce_* headers).",
                        AccountEvent::SCHEMA_VERSION
                    )),
                );
            }
            (
                format!("{event_type}.v{}.json", AccountEvent::SCHEMA_VERSION),
                sorted(value),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn schemas_are_up_to_date() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let update = std::env::var_os("PRISM_UPDATE_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (name, schema) in documents() {
            let path = dir.join(&name);
            let text = match serde_json::to_string_pretty(&schema) {
                Ok(t) => t + "\n",
                Err(e) => panic!("{name}: {e}"),
            };
            if update {
                if let Err(e) = std::fs::write(&path, &text) {
                    panic!("writing {}: {e}", path.display());
                }
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(name);
            }
        }
        assert!(
            stale.is_empty(),
            "checked-in schemas differ from the types: {stale:?}; regenerate with \
             PRISM_UPDATE_SCHEMAS=1 cargo test -p prism-events schemas_are_up_to_date"
        );
    }

    #[test]
    fn schemas_describe_money_as_integers() {
        let docs = documents();
        let deposited = docs
            .iter()
            .find(|(n, _)| n.starts_with("prism.account.money_deposited"))
            .map(|(_, s)| s);
        let amount = deposited.map(|s| &s["properties"]["amount_minor"]["type"]);
        assert_eq!(amount, Some(&json!("integer")));
    }
}
