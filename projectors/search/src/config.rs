//! The `[search]` section of the configuration, owned by this crate.
//!
//! The platform keeps the section raw ([`prism_platform::config::Section`]) and this crate
//! parses it into [`SearchConfig`] with `Section::parse("search")`, still refusing unknown
//! keys. `[search.projector]` overrides `[projector]` for this projector alone (the kit's
//! `Section::runtime`); it is not part of this type.

use std::net::SocketAddr;

use prism_platform::config::{refuse_local_secrets, ConfigError, LOCAL_DEV_CURSOR_SECRET};
use prism_platform::secret::Secret;
use serde::Deserialize;

/// `prism-search`: the search read model and its query API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Address of the query API.
    pub listen: String,
    /// Kafka consumer group (one per projector; instances of it share the partitions).
    pub group_id: String,
    /// Prefix of every index and alias: copy N's indices are `<prefix>-transactions-g<N>`
    /// and `<prefix>-accounts-g<N>` (plus `<prefix>-checkpoints-g<N>`), the query API reads
    /// the aliases `<prefix>-transactions` and `<prefix>-accounts`, and the copies are
    /// listed in `<prefix>-control`. Lowercase letters, digits, `-` and `_` only.
    pub index_prefix: String,
    /// Primary shards of each read-model index (fixed when a copy is created).
    pub shards: u32,
    /// Replicas of each index: 0 on one local node, 1 or more on a cluster.
    pub replicas: u32,
    /// How often new documents become searchable, in ms (the index's `refresh_interval`).
    /// The freshness goal (accepted → searchable) includes it.
    pub refresh_interval_ms: u64,
    /// Largest `_bulk` request body the sink sends, in bytes; a batch larger than this is
    /// sent in several requests (the position still moves only after all of them).
    pub bulk_max_bytes: usize,
    /// Most account documents the sink keeps in memory between batches (per process, all
    /// partitions together), so a batch need not read back the documents the previous
    /// batch of its partition wrote. Kept only while the partition's stored position is
    /// the one this sink wrote last; 0 reads every batch's accounts from the engine.
    pub account_cache_max: usize,
    /// Whether the query API (`/v1`) needs `Authorization: Bearer <token>` of a caller
    /// with the `search:read` scope (`[[auth.tokens]]`).
    pub auth_enabled: bool,
    /// Mask holders' email addresses (and leave them out of `q`) for callers without the
    /// `pii` scope; false shows them to every caller of the API.
    pub mask_email: bool,
    /// Key that signs paging cursors (so a tampered cursor is refused).
    pub cursor_secret: Secret,
    /// Longest a query waits for a `Consistency-Token` or `min_version`, in milliseconds.
    pub wait_timeout_ms: u64,
    /// Most queries waiting for a version at once; more get 503 with `Retry-After`.
    pub max_waiters: usize,
    /// Default and largest page sizes of the search endpoints.
    pub page_size: u32,
    pub max_page_size: u32,
    /// How often the query API re-reads which copy of the read model is live, in ms.
    pub copy_poll_ms: u64,
    /// Longest free-text query (`q`), in characters; longer is a 400 naming `q`.
    pub max_query_chars: usize,
    /// Most buckets a facet returns.
    pub max_facet_size: u32,
    /// Longest a search may run on the engine, in ms (sent as the search `timeout`, and
    /// the client gives up a little after it).
    pub query_timeout_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8082".into(),
            group_id: "prism-search".into(),
            index_prefix: "prism-search".into(),
            shards: 1,
            replicas: 0,
            refresh_interval_ms: 1_000,
            // Elastic's guidance for bulk requests is a few MiB; larger ones gain nothing
            // and hold more memory on both sides.
            bulk_max_bytes: 5 * 1024 * 1024,
            // About 60 MB of account documents.
            account_cache_max: 200_000,
            auth_enabled: true,
            mask_email: true,
            cursor_secret: Secret::new(LOCAL_DEV_CURSOR_SECRET),
            wait_timeout_ms: 5_000,
            max_waiters: 256,
            page_size: 50,
            max_page_size: 500,
            copy_poll_ms: 1_000,
            max_query_chars: 500,
            max_facet_size: 50,
            query_timeout_ms: 5_000,
        }
    }
}

/// Longest index prefix: the longest index name (`<prefix>-transactions-g4294967295`)
/// must stay well under the engines' 255-byte limit.
pub const INDEX_PREFIX_MAX: usize = 100;

impl SearchConfig {
    /// Checks what serde cannot: the index prefix is a valid start of an index name (it
    /// goes into URLs and index names), and sizes that must not be zero are not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_index_prefix(&self.index_prefix)
            .map_err(|e| ConfigError::Section(format!("[search] index_prefix: {e}")))?;
        for (key, value) in [
            ("shards", u64::from(self.shards)),
            ("bulk_max_bytes", self.bulk_max_bytes as u64),
            ("page_size", u64::from(self.page_size)),
            ("max_page_size", u64::from(self.max_page_size)),
            ("max_query_chars", self.max_query_chars as u64),
            ("max_facet_size", u64::from(self.max_facet_size)),
            ("query_timeout_ms", self.query_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Section(format!(
                    "[search] {key} must be at least 1"
                )));
            }
        }
        if self.page_size > self.max_page_size {
            return Err(ConfigError::Section(format!(
                "[search] page_size ({}) is larger than max_page_size ({})",
                self.page_size, self.max_page_size
            )));
        }
        Ok(())
    }

    /// Refuses to serve on `listening` (the bound address) with the compiled-in cursor
    /// key unless that is a loopback address. Call it once the listener is bound (the
    /// tokens: [`prism_platform::config::AuthConfig::refuse_local_tokens`]).
    pub fn refuse_local_secrets(&self, listening: SocketAddr) -> Result<(), ConfigError> {
        refuse_local_secrets(
            "search",
            listening,
            &[(
                "cursor_secret",
                "PRISM_SEARCH__CURSOR_SECRET=<random text>",
                self.cursor_secret.expose() == LOCAL_DEV_CURSOR_SECRET,
            )],
        )
    }
}

/// An index prefix: not empty, at most [`INDEX_PREFIX_MAX`] bytes, `[a-z0-9_-]`, not
/// starting with `-` or `_` (the engines refuse index names that do).
pub fn validate_index_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("is empty".into());
    }
    if prefix.len() > INDEX_PREFIX_MAX {
        return Err(format!("is longer than {INDEX_PREFIX_MAX} characters"));
    }
    if prefix.starts_with(['-', '_']) {
        return Err(format!("{prefix:?} starts with '-' or '_'"));
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!("{prefix:?} may only contain a-z, 0-9, - and _"));
    }
    Ok(())
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
    fn the_defaults_are_the_documented_local_values() {
        let c = SearchConfig::default();
        assert_eq!(c.listen, "127.0.0.1:8082");
        assert_eq!(c.group_id, "prism-search");
        assert_eq!(c.index_prefix, "prism-search");
        assert_eq!((c.shards, c.replicas), (1, 0));
        assert_eq!(c.refresh_interval_ms, 1_000);
        assert_eq!(c.bulk_max_bytes, 5 * 1024 * 1024);
        assert!(c.auth_enabled && c.mask_email);
        assert_eq!(c.cursor_secret.expose(), LOCAL_DEV_CURSOR_SECRET);
        assert_eq!((c.wait_timeout_ms, c.max_waiters), (5_000, 256));
        assert_eq!((c.page_size, c.max_page_size), (50, 500));
        assert_eq!(c.copy_poll_ms, 1_000);
        assert_eq!(
            (c.max_query_chars, c.max_facet_size, c.query_timeout_ms),
            (500, 50, 5_000)
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_missing_section_gives_the_defaults_and_given_keys_win() {
        let parsed: SearchConfig = Section::default().parse("search").expect("parses");
        assert_eq!(parsed.listen, SearchConfig::default().listen);
        let parsed: SearchConfig = section(&[
            ("replicas", Value::from(2u32)),
            ("index_prefix", Value::from("analysts")),
        ])
        .parse("search")
        .expect("parses");
        assert_eq!(
            (parsed.replicas, parsed.index_prefix.as_str()),
            (2, "analysts")
        );
        assert_eq!(parsed.shards, 1);
    }

    #[test]
    fn the_documented_section_parses_to_the_defaults() {
        use figment::providers::{Format, Toml};
        let file = include_str!("../../../config/prism.toml");
        let documented: SearchConfig = figment::Figment::from(Toml::string(file))
            .extract_inner("search")
            .expect("config/prism.toml's [search] parses");
        let defaults = SearchConfig::default();
        // Debug masks the secrets; compare them exposed.
        assert_eq!(format!("{documented:?}"), format!("{defaults:?}"));
        assert_eq!(
            documented.cursor_secret.expose(),
            defaults.cursor_secret.expose()
        );
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it() {
        let err = section(&[("replica", Value::from(2u32))])
            .parse::<SearchConfig>("search")
            .expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("replica"), "{text}");
        assert!(text.contains("[search]"), "{text}");
    }

    #[test]
    fn index_prefixes_are_checked_before_they_reach_a_url() {
        assert!(validate_index_prefix("prism-search").is_ok());
        assert!(validate_index_prefix("a_1").is_ok());
        for bad in [
            "",
            "Prism",
            "-a",
            "_a",
            "a/b",
            "a b",
            "a*",
            "é",
            &"a".repeat(101),
        ] {
            assert!(validate_index_prefix(bad).is_err(), "{bad:?}");
        }
        let config = SearchConfig {
            index_prefix: "A".into(),
            ..SearchConfig::default()
        };
        assert!(config.validate().is_err());
        let config = SearchConfig {
            page_size: 600,
            ..SearchConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
