//! The consistency token: what the write side hands a client so that a read model can wait
//! until it has applied the client's own write.

use std::fmt;
use std::str::FromStr;

use crate::envelope::AccountId;

/// "Account `account_id` has reached `version`". Its text form, `v1.<uuid>.<version>`, goes
/// in the `Consistency-Token` header of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsistencyToken {
    pub account_id: AccountId,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a consistency token (expected v1.<account uuid>.<version>)")]
pub struct InvalidToken;

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1.{}.{}", self.account_id.0.simple(), self.version)
    }
}

impl FromStr for ConsistencyToken {
    type Err = InvalidToken;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let (Some("v1"), Some(id), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidToken);
        };
        let account_id = id.parse().map_err(|_| InvalidToken)?;
        let version = version.parse().map_err(|_| InvalidToken)?;
        if version == 0 {
            return Err(InvalidToken);
        }
        Ok(Self {
            account_id,
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_through_text() {
        let token = ConsistencyToken {
            account_id: AccountId::generate(),
            version: 42,
        };
        let text = token.to_string();
        assert!(text.starts_with("v1.") && text.ends_with(".42"), "{text}");
        assert_eq!(text.parse(), Ok(token));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for bad in [
            "",
            "v1",
            "v2.x.1",
            "v1.nope.1",
            "v1.0190b8f2c3a47e3c8a6b4d5e6f708192.x",
            "v1.0190b8f2c3a47e3c8a6b4d5e6f708192.0",
            "v1.0190b8f2c3a47e3c8a6b4d5e6f708192.1.2",
        ] {
            assert_eq!(bad.parse::<ConsistencyToken>(), Err(InvalidToken), "{bad}");
        }
    }
}
