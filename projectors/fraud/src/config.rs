//! The `[fraud]` section of the configuration, owned by this crate (parsed with
//! `Section::parse("fraud")`, unknown keys refused). `[fraud.projector]` overrides
//! `[projector]` for this projector alone.

use std::path::PathBuf;

use prism_platform::config::ConfigError;
use serde::Deserialize;

/// `prism-fraud`: fraud features, online in Redis and offline in Parquet.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FraudConfig {
    /// Address of the features API.
    pub listen: String,
    /// Kafka consumer group (instances of it share the partitions).
    pub group_id: String,
    /// Prefix of every Redis key: copy N's online state lives under `<namespace>:c<N>:`,
    /// the copies and running instances under `<namespace>:control` and
    /// `<namespace>:instances`.
    pub namespace: String,
    /// Root of the offline store: copy N's Parquet files are under `<offline_dir>/c<N>/`.
    pub offline_dir: PathBuf,
    /// Whether the API (`/v1`) needs `Authorization: Bearer <token>` of a caller with the
    /// `fraud:read` scope (`[[auth.tokens]]`).
    pub auth_enabled: bool,
    /// Longest a query waits for a `Consistency-Token` or `min_version`, in ms.
    pub wait_timeout_ms: u64,
    /// Most queries waiting for a version at once; more get 503.
    pub max_waiters: usize,
    /// How often the API re-reads which copy is live, in ms.
    pub copy_poll_ms: u64,
}

impl Default for FraudConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8084".into(),
            group_id: "prism-fraud".into(),
            namespace: "prism:fraud".into(),
            offline_dir: PathBuf::from(".prism/fraud"),
            auth_enabled: true,
            wait_timeout_ms: 5_000,
            max_waiters: 256,
            copy_poll_ms: 1_000,
        }
    }
}

impl FraudConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| ConfigError::Section(format!("[fraud] {key} {why}"));
        prism_projector::copies::redis::check_namespace("fraud", &self.namespace)
            .map_err(ConfigError::Section)?;
        if self.offline_dir.as_os_str().is_empty() {
            return Err(bad("offline_dir", "must name a directory".into()));
        }
        for (key, value) in [
            ("wait_timeout_ms", self.wait_timeout_ms),
            ("max_waiters", self.max_waiters as u64),
            ("copy_poll_ms", self.copy_poll_ms),
        ] {
            if value == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use figment::value::{Dict, Value};
    use prism_platform::config::Section;

    use super::*;

    fn section(pairs: &[(&str, Value)]) -> Section {
        let dict: Dict = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        Section::from_value(Value::from(dict))
    }

    #[test]
    fn the_defaults_are_valid_and_local() {
        let c = FraudConfig::default();
        c.validate().expect("defaults are valid");
        assert_eq!(c.listen, "127.0.0.1:8084");
        assert_eq!(c.group_id, "prism-fraud");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_the_key() {
        let err = section(&[("offline_dri", Value::from("x"))])
            .parse::<FraudConfig>("fraud")
            .expect_err("unknown key");
        assert!(err.to_string().contains("offline_dri"), "{err}");
        let c: FraudConfig = section(&[("namespace", Value::from("a b"))])
            .parse("fraud")
            .expect("parses");
        assert!(c
            .validate()
            .expect_err("space")
            .to_string()
            .contains("namespace"));
        let c: FraudConfig = section(&[("offline_dir", Value::from(""))])
            .parse("fraud")
            .expect("parses");
        assert!(c
            .validate()
            .expect_err("empty")
            .to_string()
            .contains("offline_dir"));
    }
}
