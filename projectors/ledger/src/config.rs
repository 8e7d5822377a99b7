//! The `[ledger]` section of the configuration, owned by this crate.
//!
//! The platform keeps the section raw ([`prism_platform::config::Section`]) and this crate
//! parses it into [`LedgerConfig`] with [`LedgerConfig::from_config`], still refusing
//! unknown keys. `[ledger.projector]` overrides `[projector]` for the ledger alone (the
//! kit's `Section::runtime`, applied by [`crate::app::LedgerProjector::new`]); it is not
//! part of this type.

use std::net::SocketAddr;

use prism_platform::config::{refuse_local_secrets, Config, ConfigError, LOCAL_DEV_CURSOR_SECRET};
use prism_platform::secret::Secret;
use serde::Deserialize;

/// The section's name: `[ledger]`, `[ledger.projector]`, `PRISM_LEDGER__<KEY>`.
pub const SECTION: &str = "ledger";

/// `prism-ledger`: the MySQL read model and its query API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Address of the query API.
    pub listen: String,
    /// Kafka consumer group (one per projector; instances of it share the partitions).
    pub group_id: String,
    /// Name of the control database; each copy of the read model is the database
    /// `<database>_g<generation>` on the server of `[mysql] url`.
    pub database: String,
    /// Whether the query API (`/v1`) needs `Authorization: Bearer <token>` of a caller
    /// with the `ledger:read` scope (`[[auth.tokens]]`).
    pub auth_enabled: bool,
    /// Key that signs paging cursors (so a tampered cursor is refused).
    pub cursor_secret: Secret,
    /// Longest a query waits for a `Consistency-Token` or `min_version`, in milliseconds.
    pub wait_timeout_ms: u64,
    /// Most queries waiting for a version at once; more get 503 with `Retry-After`, so
    /// waits can never crowd out the projector.
    pub max_waiters: usize,
    /// Connections of the query API's own MySQL pool (the projector's writes have theirs,
    /// `[mysql] max_connections`, which queries never touch).
    pub query_max_connections: u32,
    /// Default and largest page sizes of the list endpoints.
    pub page_size: u32,
    pub max_page_size: u32,
    /// How often the query API re-reads which copy of the read model is live, in ms.
    pub generation_poll_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            group_id: "prism-ledger".into(),
            database: "prism_ledger".into(),
            auth_enabled: true,
            cursor_secret: Secret::new(LOCAL_DEV_CURSOR_SECRET),
            wait_timeout_ms: 5_000,
            max_waiters: 256,
            query_max_connections: 4,
            page_size: 50,
            max_page_size: 500,
            generation_poll_ms: 1_000,
        }
    }
}

impl LedgerConfig {
    /// The `[ledger]` section of `config` (defaults for what it leaves out). An unknown key
    /// is an error naming the section and the key.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        config.ledger.parse(SECTION)
    }

    /// Refuses to serve on `listening` (the bound address) with the compiled-in cursor
    /// key unless that is a loopback address. Call it once the listener is bound (the
    /// tokens: [`prism_platform::config::AuthConfig::refuse_local_tokens`]).
    pub fn refuse_local_secrets(&self, listening: SocketAddr) -> Result<(), ConfigError> {
        refuse_local_secrets(
            SECTION,
            listening,
            &[(
                "cursor_secret",
                "PRISM_LEDGER__CURSOR_SECRET=<random text>",
                self.cursor_secret.expose() == LOCAL_DEV_CURSOR_SECRET,
            )],
        )
    }
}

#[cfg(test)]
// figment's `Jail` closures must return its (large) `figment::Error`.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;
    use prism_platform::config::Sources;

    use super::*;

    fn at(address: &str) -> SocketAddr {
        address.parse().expect("a socket address")
    }

    /// Loads as the binary would, inside a `Jail` (its own cwd and environment).
    fn load_here() -> Result<Config, ConfigError> {
        Sources::from_env().load()
    }

    #[test]
    fn the_documented_section_parses_to_the_defaults() {
        use figment::providers::{Format, Toml};
        let file = include_str!("../../../config/prism.toml");
        // Its `[ledger.projector]` table belongs to the runtime's settings, not to these.
        let mut section: figment::value::Dict = figment::Figment::from(Toml::string(file))
            .extract_inner(SECTION)
            .expect("config/prism.toml has a [ledger] table");
        section.remove("projector");
        let documented: LedgerConfig =
            figment::Figment::from(figment::providers::Serialized::defaults(section))
                .extract()
                .expect("config/prism.toml's [ledger] parses");
        let defaults = LedgerConfig::default();
        // Debug masks the secrets; compare them exposed.
        assert_eq!(format!("{documented:?}"), format!("{defaults:?}"));
        assert_eq!(
            documented.cursor_secret.expose(),
            defaults.cursor_secret.expose()
        );
    }

    #[test]
    fn the_shipped_files_give_a_valid_ledger_section() {
        // The platform keeps [ledger] raw, so its own check of the shipped files cannot see
        // a misspelt key in it: parse the section as the binary does, for each profile.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let base = root.join("config/prism.toml");
        for profile in [None, Some("compose".to_owned())] {
            let sources = Sources {
                base: Some(base.clone()),
                profile: profile.clone(),
            };
            let parsed = sources
                .load()
                .and_then(|config| LedgerConfig::from_config(&config));
            assert!(parsed.is_ok(), "profile {profile:?}: {parsed:?}");
        }
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_section_and_key() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file("config/prism.toml", "[ledger]\npage_sise = 10\n")?;
            let config = load_here().map_err(|e| e.to_string())?;
            let err = LedgerConfig::from_config(&config).expect_err("a misspelt key");
            let shown = err.to_string();
            assert!(shown.contains("[ledger]"), "{shown}");
            assert!(shown.contains("page_sise"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn the_compiled_in_cursor_key_is_refused_off_loopback_naming_the_key() {
        let ledger = LedgerConfig::default();
        for loopback in [
            "127.0.0.1:8081",
            "127.9.9.9:1",
            "[::1]:8081",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(
                ledger.refuse_local_secrets(at(loopback)).is_ok(),
                "{loopback}"
            );
        }
        for exposed in [
            "0.0.0.0:8081",
            "[::]:8081",
            "10.1.2.3:8081",
            "[2001:db8::1]:80",
        ] {
            let err = ledger
                .refuse_local_secrets(at(exposed))
                .expect_err("the local cursor key off loopback");
            let shown = err.to_string();
            assert!(shown.contains("[ledger] cursor_secret"), "{shown}");
            assert!(shown.contains("PRISM_LEDGER__CURSOR_SECRET"), "{shown}");
            assert!(shown.contains(exposed), "{shown}");
        }
        let own_key = LedgerConfig {
            cursor_secret: Secret::new("a-real-key"),
            ..LedgerConfig::default()
        };
        assert!(own_key.refuse_local_secrets(at("0.0.0.0:8081")).is_ok());
    }

    #[test]
    fn the_cursor_key_can_come_from_the_environment() {
        Jail::expect_with(|jail| {
            jail.set_env("PRISM_LEDGER__CURSOR_SECRET", "key-from-env");
            jail.set_env("PRISM_LEDGER__PAGE_SIZE", "20");
            let config = load_here().map_err(|e| e.to_string())?;
            let ledger = LedgerConfig::from_config(&config).map_err(|e| e.to_string())?;
            assert_eq!(ledger.cursor_secret.expose(), "key-from-env");
            assert_eq!(ledger.page_size, 20);
            assert_eq!(ledger.max_page_size, 500, "the rest keeps its default");
            assert!(ledger.refuse_local_secrets(at("0.0.0.0:8081")).is_ok());
            assert!(
                !format!("{config:?}").contains("key-from-env"),
                "the raw section never shows its values"
            );
            Ok(())
        });
    }
}
