//! Upcasting: a stored or published event written with an older schema version is upgraded
//! to the current shape when it is read, so folds only ever see current data.
//!
//! Each step turns version `n` of one event type into version `n + 1`. Today every type is
//! at version 1 and [`STEPS`] is empty; the first breaking change to a data type adds its
//! step here (and bumps `AccountEvent::SCHEMA_VERSION`), never rewriting stored events.

use serde_json::Value;

use crate::event::AccountEvent;

/// Upgrades the data of `event_type` from `from_version` to `from_version + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub event_type: &'static str,
    pub from_version: u32,
    pub apply: fn(Value) -> Result<Value, String>,
}

/// The production chain.
pub const STEPS: &[Step] = &[];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    #[error(
        "{event_type} schema version {version} is newer than this build understands ({current})"
    )]
    FromTheFuture {
        event_type: String,
        version: u32,
        current: u32,
    },
    #[error("no upcaster for {event_type} from schema version {version}")]
    NoStep { event_type: String, version: u32 },
    #[error("upcasting {event_type} from schema version {version}: {reason}")]
    Failed {
        event_type: String,
        version: u32,
        reason: String,
    },
}

/// Upgrades `data` to the current schema version with the production chain.
pub fn upcast(event_type: &str, version: u32, data: Value) -> Result<Value, UpcastError> {
    upcast_with(
        STEPS,
        event_type,
        version,
        AccountEvent::SCHEMA_VERSION,
        data,
    )
}

/// Upgrades `data` from `version` to `target` with the given chain.
pub fn upcast_with(
    steps: &[Step],
    event_type: &str,
    mut version: u32,
    target: u32,
    mut data: Value,
) -> Result<Value, UpcastError> {
    if version > target {
        return Err(UpcastError::FromTheFuture {
            event_type: event_type.to_owned(),
            version,
            current: target,
        });
    }
    while version < target {
        let step = steps
            .iter()
            .find(|s| s.event_type == event_type && s.from_version == version)
            .ok_or_else(|| UpcastError::NoStep {
                event_type: event_type.to_owned(),
                version,
            })?;
        data = (step.apply)(data).map_err(|reason| UpcastError::Failed {
            event_type: event_type.to_owned(),
            version,
            reason,
        })?;
        version += 1;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A made-up history for the test: v1 `amount` (major units) → v2 `amount_minor`,
    /// v2 → v3 adds `description`.
    const CHAIN: &[Step] = &[
        Step {
            event_type: "t",
            from_version: 1,
            apply: |mut v| {
                let major = v["amount"].as_i64().ok_or("amount is not an integer")?;
                v["amount_minor"] = json!(major * 100);
                v.as_object_mut().map(|o| o.remove("amount"));
                Ok(v)
            },
        },
        Step {
            event_type: "t",
            from_version: 2,
            apply: |mut v| {
                v["description"] = json!(null);
                Ok(v)
            },
        },
    ];

    #[test]
    fn old_data_is_upgraded_step_by_step() {
        let got = upcast_with(CHAIN, "t", 1, 3, json!({ "amount": 7 }));
        assert_eq!(got, Ok(json!({ "amount_minor": 700, "description": null })));
        let unchanged = upcast_with(CHAIN, "t", 3, 3, json!({ "x": 1 }));
        assert_eq!(unchanged, Ok(json!({ "x": 1 })));
    }

    #[test]
    fn a_missing_step_a_failing_step_and_a_future_version_are_errors() {
        assert!(matches!(
            upcast_with(CHAIN, "other", 1, 2, json!({})),
            Err(UpcastError::NoStep { .. })
        ));
        assert!(matches!(
            upcast_with(CHAIN, "t", 1, 2, json!({ "amount": "x" })),
            Err(UpcastError::Failed { .. })
        ));
        assert!(matches!(
            upcast("prism.account.opened", 99, json!({})),
            Err(UpcastError::FromTheFuture { .. })
        ));
    }

    #[test]
    fn current_data_passes_through_the_production_chain() {
        for t in AccountEvent::TYPES {
            assert_eq!(
                upcast(t, AccountEvent::SCHEMA_VERSION, json!({ "a": 1 })),
                Ok(json!({ "a": 1 }))
            );
        }
    }
}
