//! Bearer-token authentication and scopes, shared by every Prism HTTP API
//! (`prism-command`'s `/v1`, the projectors' query APIs).
//!
//! The callers come from configuration (`[[auth.tokens]]`): each has a name, a token and
//! its [`Scope`]s. Every API needs one scope of its own ([`Auth::new`]): a request without
//! an accepted token gets 401, one whose token lacks the API's scope gets 403. Each service
//! serves two such APIs: its own `/v1` (commands, or one read model) and the admin API
//! (`/v1/admin`, [`Scope::Admin`]). The caller
//! is then known by a [`Principal`] (a short hash of the token, so logs and idempotency
//! keys can name the caller without ever holding the token itself) and its [`Scopes`],
//! which handlers read to decide what personal data to show ([`Scope::Pii`]).
//!
//! Comparison leaks nothing useful through timing: both the given token and every
//! configured one are hashed with SHA-256 (so every comparison is over 32 bytes, whatever
//! the lengths), each comparison is constant-time (`subtle`), and every configured token
//! is compared (no early exit at the first match).

use std::fmt;
use std::str::FromStr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::Problem;
use crate::secret::Secret;

/// What a token may do. Written in configuration as the strings of [`Scope::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `prism-command`'s `/v1`: send commands and read the write model's accounts.
    Commands,
    /// `prism-ledger`'s query API.
    LedgerRead,
    /// `prism-search`'s query API.
    SearchRead,
    /// `prism-dashboard`'s page, API and stream.
    DashboardRead,
    /// `prism-fraud`'s feature API.
    FraudRead,
    /// Personal data in the clear: account holders' names and e-mail addresses, wherever a
    /// read API returns them. Without it they are masked (each API says how).
    Pii,
    /// Every service's `/v1/admin` API: what the instance is doing (`GET
    /// /v1/admin/status`). Rebuilds stay with `prismctl`, which needs the servers'
    /// credentials, not a token.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::Commands,
        Scope::LedgerRead,
        Scope::SearchRead,
        Scope::DashboardRead,
        Scope::FraudRead,
        Scope::Pii,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Commands => "commands",
            Scope::LedgerRead => "ledger:read",
            Scope::SearchRead => "search:read",
            Scope::DashboardRead => "dashboard:read",
            Scope::FraudRead => "fraud:read",
            Scope::Pii => "pii",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

// [`Scopes`] is one bit per scope in a `u8`.
const _: () = assert!(Scope::ALL.len() <= 8);

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one of [`Scope::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?} (known: commands, ledger:read, search:read, dashboard:read, fraud:read, pii, admin)")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of [`Scope`]s: what the caller of a request may do, stored in the request's
/// extensions by [`require_bearer`].
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope (authentication turned off).
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(Scope::ALL.into_iter().filter(|s| self.has(*s)))
            .finish()
    }
}

/// One caller as configuration names it (`[[auth.tokens]]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds the token (logged at start-up; never the token).
    pub name: String,
    /// The bearer token (masked in logs).
    pub token: Secret,
    pub scopes: Vec<Scope>,
}

impl TokenConfig {
    pub fn new(name: &str, token: &str, scopes: &[Scope]) -> Self {
        Self {
            name: name.into(),
            token: Secret::new(token),
            scopes: scopes.to_vec(),
        }
    }
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("token", &self.token)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// Who made a request, established by [`require_bearer`] and stored in the request's
/// extensions: the first 8 bytes of the token's SHA-256 in hex, or `anonymous` when
/// authentication is disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// One accepted token: its digest, its holder's identity and scopes.
#[derive(Debug)]
struct Accepted {
    digest: [u8; 32],
    principal: Principal,
    scopes: Scopes,
}

/// The accepted bearer tokens of one API and the scope it needs. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    enabled: bool,
    /// The scope every request of this API needs.
    scope: Scope,
    /// Each accepted token's SHA-256 with its caller identity and scopes, worked out once
    /// here rather than on every request. The tokens themselves are not kept.
    tokens: std::sync::Arc<[Accepted]>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .field("scope", &self.scope)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or not an accepted one: 401.
    Unauthenticated,
    /// An accepted token without the API's scope: 403.
    Forbidden(Scope),
}

impl Auth {
    /// An API needing `scope`, open to the `tokens` that have it (empty tokens are
    /// ignored). With `enabled` false every request passes, with every scope.
    pub fn new(enabled: bool, tokens: &[TokenConfig], scope: Scope) -> Self {
        let tokens = tokens
            .iter()
            .filter(|t| !t.token.is_empty())
            .map(|t| {
                let digest: [u8; 32] = Sha256::digest(t.token.expose().as_bytes()).into();
                Accepted {
                    digest,
                    principal: Principal(hex::encode(&digest[..8])),
                    scopes: t.scopes.iter().copied().collect(),
                }
            })
            .collect();
        Self {
            enabled,
            scope,
            tokens,
        }
    }

    /// Whether requests need a token at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The scope this API needs.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The caller's identity and scopes, or why the request is refused.
    pub fn check(&self, headers: &HeaderMap) -> Result<(Principal, Scopes), Refusal> {
        if !self.enabled {
            return Ok((Principal("anonymous".into()), Scopes::all()));
        }
        let given = bearer(headers).ok_or(Refusal::Unauthenticated)?;
        let (principal, scopes) = self.caller(given).ok_or(Refusal::Unauthenticated)?;
        if scopes.has(self.scope) {
            Ok((principal, scopes))
        } else {
            Err(Refusal::Forbidden(self.scope))
        }
    }

    /// Who sent `headers`, if its token is an accepted one, whatever its scopes (the
    /// caller a refused request is logged with); `anonymous` with authentication off.
    pub fn identify(&self, headers: &HeaderMap) -> Option<Principal> {
        if !self.enabled {
            return Some(Principal("anonymous".into()));
        }
        self.caller(bearer(headers)?)
            .map(|(principal, _)| principal)
    }

    /// The identity of the holder of `token`, if it is an accepted one with this API's
    /// scope.
    pub fn principal_of(&self, token: &str) -> Option<Principal> {
        self.caller(token)
            .filter(|(_, scopes)| scopes.has(self.scope))
            .map(|(principal, _)| principal)
    }

    fn caller(&self, token: &str) -> Option<(Principal, Scopes)> {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every configured token is compared, so the time does not say which one matched.
        let mut found = None;
        for accepted in self.tokens.iter() {
            if constant_time_eq(&accepted.digest, &given) {
                found = Some(accepted);
            }
        }
        found.map(|a| (a.principal.clone(), a.scopes))
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

/// The `403` answer: problem+json naming the scope the token lacks.
pub fn forbidden(scope: Scope) -> Response {
    let mut response = Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
        .detail(format!(
            "this token does not have the scope {scope}, which this API needs"
        ))
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
    )) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The answer to a refused request.
pub fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Unauthenticated => unauthorized(),
        Refusal::Forbidden(scope) => forbidden(scope),
    }
}

/// Middleware (`axum::middleware::from_fn_with_state(auth, require_bearer)`): answers 401
/// to a request without an accepted token and 403 to one whose token lacks the API's
/// scope; otherwise stores its [`Principal`] and [`Scopes`] in the request's extensions
/// and passes it on. The answer carries the [`Principal`] too (a 403's as well) in its
/// extensions, for the request log ([`crate::http::log_requests`]), which runs outside
/// this middleware and never sees the request's.
pub async fn require_bearer(
    State(auth): State<Auth>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.check(request.headers()) {
        Ok((principal, scopes)) => {
            request.extensions_mut().insert(principal.clone());
            request.extensions_mut().insert(scopes);
            let mut response = next.run(request).await;
            response.extensions_mut().insert(principal);
            response
        }
        Err(refusal) => {
            let mut response = refused(refusal);
            if let Refusal::Forbidden(_) = refusal {
                if let Some(principal) = auth.identify(request.headers()) {
                    response.extensions_mut().insert(principal);
                }
            }
            response
        }
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

    fn token(value: &str, scopes: &[Scope]) -> TokenConfig {
        TokenConfig::new("test", value, scopes)
    }

    #[test]
    fn an_accepted_token_gives_a_principal_that_does_not_reveal_it() {
        let auth = Auth::new(
            true,
            &[
                token("one", &[Scope::LedgerRead]),
                token("two", &[Scope::LedgerRead, Scope::Pii]),
            ],
            Scope::LedgerRead,
        );
        let (one, one_scopes) = auth.check(&headers("Bearer one")).expect("accepted");
        let (two, two_scopes) = auth.check(&headers("bearer  two ")).expect("accepted");
        assert_ne!(one, two);
        assert_eq!(one.0.len(), 16);
        assert!(!one.0.contains("one"));
        assert!(!one_scopes.has(Scope::Pii) && two_scopes.has(Scope::Pii));
        assert_eq!(auth.principal_of("one"), Some(one));
    }

    #[test]
    fn missing_wrong_and_malformed_credentials_are_unauthenticated() {
        let auth = Auth::new(true, &[token("right", &[Scope::Commands])], Scope::Commands);
        assert_eq!(auth.check(&HeaderMap::new()), Err(Refusal::Unauthenticated));
        for bad in [
            "Bearer wrong",
            "Bearer righ",
            "Bearer rightt",
            "Bearer ",
            "Basic right",
            "right",
            "Bearerright",
        ] {
            assert_eq!(
                auth.check(&headers(bad)),
                Err(Refusal::Unauthenticated),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_token_without_the_apis_scope_is_forbidden_not_unauthenticated() {
        let tokens = [
            token("analyst", &[Scope::SearchRead, Scope::DashboardRead]),
            token("app", &[Scope::Commands]),
        ];
        let ledger = Auth::new(true, &tokens, Scope::LedgerRead);
        assert_eq!(
            ledger.check(&headers("Bearer analyst")),
            Err(Refusal::Forbidden(Scope::LedgerRead))
        );
        assert_eq!(ledger.principal_of("app"), None);
        let search = Auth::new(true, &tokens, Scope::SearchRead);
        assert!(search.check(&headers("Bearer analyst")).is_ok());
        assert_eq!(
            search.check(&headers("Bearer app")),
            Err(Refusal::Forbidden(Scope::SearchRead))
        );
    }

    #[test]
    fn the_admin_api_needs_the_admin_scope_which_no_other_scope_implies() {
        let every_other: Vec<Scope> = Scope::ALL
            .into_iter()
            .filter(|s| *s != Scope::Admin)
            .collect();
        let tokens = [
            token("everything-else", &every_other),
            token("operator", &[Scope::Admin]),
        ];
        let admin = Auth::new(true, &tokens, Scope::Admin);
        assert_eq!(
            admin.check(&headers("Bearer everything-else")),
            Err(Refusal::Forbidden(Scope::Admin))
        );
        assert_eq!(
            admin.check(&HeaderMap::new()),
            Err(Refusal::Unauthenticated)
        );
        let (operator, scopes) = admin
            .check(&headers("Bearer operator"))
            .expect("the admin scope opens the admin API");
        assert!(scopes.has(Scope::Admin) && !scopes.has(Scope::Commands));
        let commands = Auth::new(true, &tokens, Scope::Commands);
        assert_eq!(
            commands.check(&headers("Bearer operator")),
            Err(Refusal::Forbidden(Scope::Commands)),
            "admin is not a superuser scope"
        );
        // A refused caller is still known by its identity, never by its token.
        assert_eq!(
            commands.identify(&headers("Bearer operator")),
            Some(operator)
        );
        assert_eq!(commands.identify(&headers("Bearer stranger")), None);
        assert_eq!(commands.identify(&HeaderMap::new()), None);
        assert_eq!(
            Auth::new(false, &[], Scope::Admin).identify(&HeaderMap::new()),
            Some(Principal("anonymous".into()))
        );
    }

    #[test]
    fn empty_tokens_are_never_accepted_and_disabled_auth_lets_everyone_in_with_every_scope() {
        let auth = Auth::new(true, &[token("", &Scope::ALL)], Scope::Commands);
        assert_eq!(
            auth.check(&headers("Bearer ")),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(auth.principal_of(""), None);
        let open = Auth::new(false, &[], Scope::LedgerRead);
        assert_eq!(
            open.check(&HeaderMap::new()),
            Ok((Principal("anonymous".into()), Scopes::all()))
        );
    }

    #[test]
    fn scopes_parse_from_their_names_and_nothing_else() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert_eq!("admin".parse::<Scope>(), Ok(Scope::Admin));
        let names: std::collections::BTreeSet<&str> =
            Scope::ALL.into_iter().map(Scope::as_str).collect();
        assert_eq!(names.len(), Scope::ALL.len(), "one name per scope");
        let unknown = "root"
            .parse::<Scope>()
            .expect_err("not a scope")
            .to_string();
        for scope in Scope::ALL {
            assert!(unknown.contains(scope.as_str()), "{unknown} lists {scope}");
        }
        for bad in ["", "ledger", "LEDGER:READ", "read:ledger", "root"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
        let all = Scopes::all();
        assert!(Scope::ALL.into_iter().all(|s| all.has(s)));
        assert!(!Scopes::default().has(Scope::Pii));
    }

    #[test]
    fn debug_output_holds_no_token() {
        let tokens = [token("very-secret-token", &[Scope::FraudRead])];
        let auth = Auth::new(true, &tokens, Scope::FraudRead);
        for shown in [format!("{auth:?}"), format!("{tokens:?}")] {
            assert!(!shown.contains("very-secret-token"), "{shown}");
        }
    }
}
