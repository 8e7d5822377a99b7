//! Checking a read model against the event store, the same way for every projector: the
//! projector gives the whole model in a canonical form twice, once as its store holds it
//! and once as its pure fold computes it from every stored event, and [`compare`] lists
//! what differs. `prismctl verify <model>` prints that list; tests assert it is empty.
//!
//! A [`Snapshot`] maps a stable key (`accounts/<id>`, `transactions/<event id>`) to the
//! document or row as JSON, with what the store adds on its own (timestamps of the write,
//! internal versions) left out, so equal means equal for a user of the model.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use prism_events::Envelope;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// The whole read model, canonical: key → document.
pub type Snapshot = BTreeMap<String, Value>;

/// A read model as stored, canonical, with each account's version in it.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub documents: Snapshot,
    pub versions: HashMap<Uuid, u64>,
}

/// What a projector offers `verify`: its live model, and the same model computed by its
/// fold from events (each account's versions in order, as the event store returns them).
#[async_trait]
pub trait Verify: Send + Sync {
    /// The live copy's whole model.
    async fn stored(&self) -> anyhow::Result<Stored>;
    /// The model a fold of `events` gives.
    fn expected(&self, events: Vec<Envelope>) -> Snapshot;
    /// Turns [`Verify::expected`]'s documents into what the store makes of them where it
    /// keeps a deterministic function of the data rather than the data (an estimate, such
    /// as a HyperLogLog's count, computed by the store itself). Most models keep this.
    async fn settle(&self, expected: Snapshot) -> anyhow::Result<Snapshot> {
        Ok(expected)
    }
}

/// One key whose document differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub key: String,
    /// What the fold of the event store gives (`None`: the key should not exist).
    pub expected: Option<Value>,
    /// What the store holds (`None`: missing).
    pub actual: Option<Value>,
}

impl Difference {
    /// The fields whose values differ (top level), for a short report.
    pub fn fields(&self) -> Vec<String> {
        match (&self.expected, &self.actual) {
            (Some(Value::Object(e)), Some(Value::Object(a))) => {
                let mut names: Vec<String> = e
                    .keys()
                    .chain(a.keys())
                    .filter(|k| e.get(*k) != a.get(*k))
                    .cloned()
                    .collect();
                names.sort();
                names.dedup();
                names
            }
            _ => Vec::new(),
        }
    }
}

/// Every key where the two snapshots differ, in key order.
pub fn compare(expected: &Snapshot, actual: &Snapshot) -> Vec<Difference> {
    let mut out = Vec::new();
    for (key, want) in expected {
        match actual.get(key) {
            Some(have) if have == want => {}
            have => out.push(Difference {
                key: key.clone(),
                expected: Some(want.clone()),
                actual: have.cloned(),
            }),
        }
    }
    for (key, have) in actual {
        if !expected.contains_key(key) {
            out.push(Difference {
                key: key.clone(),
                expected: None,
                actual: Some(have.clone()),
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn snapshot(pairs: &[(&str, Value)]) -> Snapshot {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn equal_snapshots_have_no_difference() {
        let a = snapshot(&[("accounts/1", json!({"balance": 5}))]);
        assert!(compare(&a, &a.clone()).is_empty());
    }

    #[test]
    fn a_changed_a_missing_and_an_extra_document_are_each_named() {
        let expected = snapshot(&[
            ("accounts/1", json!({"balance": 5, "status": "open"})),
            ("accounts/2", json!({"balance": 1})),
        ]);
        let actual = snapshot(&[
            ("accounts/1", json!({"balance": 7, "status": "open"})),
            ("accounts/3", json!({"balance": 0})),
        ]);
        let diffs = compare(&expected, &actual);
        let keys: Vec<&str> = diffs.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["accounts/1", "accounts/2", "accounts/3"]);
        assert_eq!(diffs[0].fields(), ["balance"]);
        assert!(diffs[1].actual.is_none(), "missing in the store");
        assert!(diffs[2].expected.is_none(), "not in the event store");
    }
}
