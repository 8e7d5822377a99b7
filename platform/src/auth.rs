//! Bearer-token authentication shared by every Prism HTTP API (`prism-command`'s `/v1`,
//! the projectors' query APIs).
//!
//! The accepted tokens come from configuration (`[command] tokens`, `[ledger] tokens`).
//! A request is let through when its `Authorization: Bearer <token>` matches one of them;
//! the caller is then known by a [`Principal`]: a short hash of the token, so logs and
//! idempotency keys can name the caller without ever holding the token itself.
//!
//! Comparison leaks nothing useful through timing: both the given token and every
//! configured one are hashed with SHA-256 (so every comparison is over 32 bytes, whatever
//! the lengths), each comparison is constant-time, and every configured token is compared
//! (no early exit at the first match).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::Problem;
use crate::secret::Secret;

/// Who made a request, established by [`require_bearer`] and stored in the request's
/// extensions: the first 8 bytes of the token's SHA-256 in hex, or `anonymous` when
/// authentication is disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// The accepted bearer tokens of one API. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    enabled: bool,
    /// Each accepted token's SHA-256 with its caller identity, worked out once here rather
    /// than on every request. The tokens themselves are not kept.
    tokens: std::sync::Arc<[([u8; 32], Principal)]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Auth {
    /// `tokens` are the accepted ones; empty tokens are ignored (an empty list with
    /// `enabled` lets nobody in).
    pub fn new(enabled: bool, tokens: &[Secret]) -> Self {
        let tokens = tokens
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| {
                let digest: [u8; 32] = Sha256::digest(t.expose().as_bytes()).into();
                let principal = Principal(hex::encode(&digest[..8]));
                (digest, principal)
            })
            .collect();
        Self { enabled, tokens }
    }

    /// Whether requests need a token at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The caller's identity, or `None` if the request is not allowed.
    pub fn principal(&self, headers: &HeaderMap) -> Option<Principal> {
        if !self.enabled {
            return Some(Principal("anonymous".into()));
        }
        let given = bearer(headers)?;
        self.principal_of(given)
    }

    /// The identity of the holder of `token`, if it is an accepted one.
    pub fn principal_of(&self, token: &str) -> Option<Principal> {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every configured token is compared, so the time does not say which one matched.
        let mut found = None;
        for (digest, principal) in self.tokens.iter() {
            if constant_time_eq(digest, &given) {
                found = Some(principal);
            }
        }
        found.cloned()
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Equal digests, compared in constant time by `subtle` (which keeps the optimiser from
/// turning the comparison back into an early exit).
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a[..].ct_eq(&b[..]))
}

/// The `401` answer: problem+json with `WWW-Authenticate: Bearer`.
pub fn unauthorized() -> Response {
    let mut response = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
        .detail("send Authorization: Bearer <token> with a configured token")
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Middleware (`axum::middleware::from_fn_with_state(auth, require_bearer)`): answers 401
/// to a request without an accepted token; otherwise stores its [`Principal`] in the
/// request's extensions and passes it on.
pub async fn require_bearer(
    State(auth): State<Auth>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.principal(request.headers()) {
        Some(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        None => unauthorized(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header value"),
        );
        h
    }

    #[test]
    fn an_accepted_token_gives_a_principal_that_does_not_reveal_it() {
        let auth = Auth::new(true, &[Secret::new("one"), Secret::new("two")]);
        let one = auth.principal(&headers("Bearer one")).expect("accepted");
        let two = auth.principal(&headers("bearer  two ")).expect("accepted");
        assert_ne!(one, two);
        assert_eq!(one.0.len(), 16);
        assert!(!one.0.contains("one"));
        assert_eq!(auth.principal(&headers("Bearer one")), Some(one));
    }

    #[test]
    fn missing_wrong_and_malformed_credentials_are_refused() {
        let auth = Auth::new(true, &[Secret::new("right")]);
        assert_eq!(auth.principal(&HeaderMap::new()), None);
        for bad in [
            "Bearer wrong",
            "Bearer righ",
            "Bearer rightt",
            "Bearer ",
            "Basic right",
            "right",
            "Bearerright",
        ] {
            assert_eq!(auth.principal(&headers(bad)), None, "{bad}");
        }
    }

    #[test]
    fn empty_tokens_are_never_accepted_and_disabled_auth_lets_everyone_in() {
        let auth = Auth::new(true, &[Secret::new("")]);
        assert_eq!(auth.principal(&headers("Bearer ")), None);
        assert_eq!(auth.principal_of(""), None);
        let open = Auth::new(false, &[]);
        assert_eq!(
            open.principal(&HeaderMap::new()),
            Some(Principal("anonymous".into()))
        );
    }

    #[test]
    fn debug_output_holds_no_token() {
        let auth = Auth::new(true, &[Secret::new("very-secret-token")]);
        let shown = format!("{auth:?}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
    }
}
