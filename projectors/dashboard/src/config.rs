//! The `[dashboard]` section of the configuration, owned by this crate (parsed with
//! `Section::parse("dashboard")`, unknown keys refused). `[dashboard.projector]` overrides
//! `[projector]` for this projector alone.

use prism_platform::config::ConfigError;
use serde::Deserialize;

/// `prism-dashboard`: the live operations dashboard and its page.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Address of the page and its API.
    pub listen: String,
    /// Kafka consumer group (instances of it share the partitions).
    pub group_id: String,
    /// Prefix of every Redis key: copy N lives under `<namespace>:c<N>:`, the copies and
    /// running instances under `<namespace>:control` and `<namespace>:instances`.
    pub namespace: String,
    /// A deposit, withdrawal or card payment of at least this many minor units (in the
    /// account's currency) goes to the live feed; every declined payment does too.
    pub large_amount_minor: i64,
    /// Most entries of the live feed (a capped stream).
    pub feed_max: u32,
    /// How long per-minute and per-hour buckets are kept after they end, in hours (at
    /// least 48: the longest series). Per-second buckets are kept 10 minutes.
    pub retention_hours: u32,
    /// How often the shared reader reads the model for the stream, in ms: a change reaches
    /// every viewer at most this long after it is stored.
    pub tick_ms: u64,
    /// Longest the stream stays silent (a keep-alive comment is sent after it), in ms.
    pub keep_alive_ms: u64,
    /// Most concurrent stream viewers; more get 503 with `Retry-After`.
    pub max_viewers: usize,
    /// Entries of each top list.
    pub top_n: u32,
    /// Whether the API (`/v1`) needs `Authorization: Bearer <token>` of a caller with the
    /// `dashboard:read` scope (`[[auth.tokens]]`; the page itself and its assets are
    /// public: they hold no data).
    pub auth_enabled: bool,
    /// Longest the summary waits for a `Consistency-Token` or `min_version`, in ms.
    pub wait_timeout_ms: u64,
    /// Most queries waiting for a version at once; more get 503.
    pub max_waiters: usize,
    /// How often the query API re-reads which copy is live, in ms.
    pub copy_poll_ms: u64,
    /// Services whose health the page shows: `name=url` of their `/metrics` (projectors:
    /// lag, dead letters; `prism-command`: relay backlog). This service reports itself.
    pub health_targets: Vec<String>,
    /// How often those are scraped, in ms.
    pub health_poll_ms: u64,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8083".into(),
            group_id: "prism-dashboard".into(),
            namespace: "prism:dash".into(),
            large_amount_minor: 100_000,
            feed_max: 500,
            retention_hours: 48,
            tick_ms: 250,
            keep_alive_ms: 15_000,
            max_viewers: 1_000,
            top_n: 10,
            auth_enabled: true,
            wait_timeout_ms: 5_000,
            max_waiters: 256,
            copy_poll_ms: 1_000,
            health_targets: vec![
                "command=http://127.0.0.1:8080/metrics".into(),
                "ledger=http://127.0.0.1:8081/metrics".into(),
                "search=http://127.0.0.1:8082/metrics".into(),
                "fraud=http://127.0.0.1:8084/metrics".into(),
            ],
            health_poll_ms: 2_000,
        }
    }
}

impl DashboardConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| ConfigError::Section(format!("[dashboard] {key} {why}"));
        prism_projector::copies::redis::check_namespace("dashboard", &self.namespace)
            .map_err(ConfigError::Section)?;
        if self.retention_hours < 48 {
            return Err(bad(
                "retention_hours",
                "must be at least 48 (the 48-hour series reads that far back)".into(),
            ));
        }
        for (key, value) in [
            (
                "large_amount_minor",
                u64::try_from(self.large_amount_minor).unwrap_or(0),
            ),
            ("feed_max", u64::from(self.feed_max)),
            ("tick_ms", self.tick_ms),
            ("keep_alive_ms", self.keep_alive_ms),
            ("max_viewers", self.max_viewers as u64),
            ("top_n", u64::from(self.top_n)),
            ("health_poll_ms", self.health_poll_ms),
        ] {
            if value == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        for target in &self.health_targets {
            parse_target(target).map_err(|e| bad("health_targets", e))?;
        }
        Ok(())
    }

    /// `health_targets` as `(name, url)`.
    pub fn targets(&self) -> Vec<(String, String)> {
        self.health_targets
            .iter()
            .filter_map(|t| parse_target(t).ok())
            .collect()
    }
}

/// `name=http://host:port/metrics`.
fn parse_target(raw: &str) -> Result<(String, String), String> {
    let (name, url) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?} is not name=url"))?;
    if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{raw:?} is not name=http(s)://…"));
    }
    Ok((name.to_owned(), url.to_owned()))
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
        let c = DashboardConfig::default();
        c.validate().expect("defaults are valid");
        assert_eq!(c.listen, "127.0.0.1:8083");
        assert_eq!(c.group_id, "prism-dashboard");
        assert_eq!(c.tick_ms, 250);
        assert_eq!(c.targets().len(), 4);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_the_key() {
        let err = section(&[("namespce", Value::from("x"))])
            .parse::<DashboardConfig>("dashboard")
            .expect_err("unknown key");
        assert!(err.to_string().contains("namespce"), "{err}");
        let c: DashboardConfig = section(&[("namespace", Value::from("a b"))])
            .parse("dashboard")
            .expect("parses");
        let err = c.validate().expect_err("space in namespace");
        assert!(err.to_string().contains("namespace"), "{err}");
        let c: DashboardConfig = section(&[("tick_ms", Value::from(0u64))])
            .parse("dashboard")
            .expect("parses");
        assert!(c
            .validate()
            .expect_err("zero")
            .to_string()
            .contains("tick_ms"));
        let c: DashboardConfig = section(&[(
            "health_targets",
            Value::from(vec![Value::from("ledger:8081")]),
        )])
        .parse("dashboard")
        .expect("parses");
        assert!(c
            .validate()
            .expect_err("not name=url")
            .to_string()
            .contains("health_targets"));
    }
}
