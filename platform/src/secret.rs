//! Values that must never reach a log line or a `Debug` dump.
//!
//! Two kinds exist: [`Secret`], an opaque value (a password, a token), and [`Dsn`], a
//! connection string whose user-info password is masked when shown. Both deserialize from
//! a plain string, so configuration files stay ordinary TOML.

use std::fmt;

use serde::{Deserialize, Deserializer};

const MASK: &str = "****";

/// An opaque secret: `Debug` and `Display` print `****`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: call only where it is handed to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A connection string such as `mysql://user:password@host:3306/db`.
///
/// `Debug` and `Display` mask the password; [`Dsn::hosts`] gives the `host:port` part
/// for status tables. Multi-host MongoDB strings (`mongodb://a:1,b:2/`) are kept as they
/// are, which is why this is not a `url::Url`.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn(String);

impl Dsn {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The full string, password included: only for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `(scheme, userinfo, rest)` where rest starts at the host list.
    fn split(&self) -> (Option<&str>, Option<&str>, &str) {
        let (scheme, after) = match self.0.split_once("://") {
            Some((scheme, after)) => (Some(scheme), after),
            None => (None, self.0.as_str()),
        };
        let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(at) => (scheme, Some(&after[..at]), &after[at + 1..]),
            None => (scheme, None, after),
        }
    }

    /// The host list (`host:port[,host:port…]`), without credentials, path or options.
    pub fn hosts(&self) -> &str {
        let (_, _, rest) = self.split();
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The string with any password replaced by `****`.
    pub fn redacted(&self) -> String {
        let (scheme, userinfo, rest) = self.split();
        let mut out = String::with_capacity(self.0.len());
        if let Some(scheme) = scheme {
            out.push_str(scheme);
            out.push_str("://");
        }
        if let Some(userinfo) = userinfo {
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
        }
        out.push_str(rest);
        out
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for Dsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Dsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "**** ****");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn dsn_masks_the_password_and_keeps_the_rest() {
        let d = Dsn::new("mysql://prism:s3cret@db.internal:3306/prism?ssl-mode=required");
        assert_eq!(
            d.redacted(),
            "mysql://prism:****@db.internal:3306/prism?ssl-mode=required"
        );
        assert!(!format!("{d:?}").contains("s3cret"));
        assert!(!format!("{d}").contains("s3cret"));
        assert_eq!(d.hosts(), "db.internal:3306");
    }

    #[test]
    fn dsn_without_credentials_is_unchanged() {
        let d = Dsn::new("redis://127.0.0.1:6379/0");
        assert_eq!(d.redacted(), "redis://127.0.0.1:6379/0");
        assert_eq!(d.hosts(), "127.0.0.1:6379");
    }

    #[test]
    fn dsn_handles_multi_host_mongodb_strings_and_at_signs_in_passwords() {
        let d = Dsn::new("mongodb://app:p@ss@m1:27017,m2:27017/prism?replicaSet=rs0");
        assert_eq!(d.hosts(), "m1:27017,m2:27017");
        assert_eq!(
            d.redacted(),
            "mongodb://app:****@m1:27017,m2:27017/prism?replicaSet=rs0"
        );
    }

    #[test]
    fn an_at_sign_in_the_path_is_not_taken_for_credentials() {
        let d = Dsn::new("http://127.0.0.1:9200/index@x");
        assert_eq!(d.hosts(), "127.0.0.1:9200");
        assert_eq!(d.redacted(), "http://127.0.0.1:9200/index@x");
    }
}
