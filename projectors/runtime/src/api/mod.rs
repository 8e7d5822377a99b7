//! The query-API kit: what every projector's HTTP API needs besides its own queries.
//!
//! - [`Params`]: the query string, each parameter at most once and only the endpoint's
//!   own, so a typo (`limt=5`) is a 400 naming it instead of a silently ignored filter;
//! - field parsers ([`page_limit`], [`account_id`], [`timestamp`], [`one_of`],
//!   [`country`]) whose errors are `400 invalid_field` problems naming the field;
//! - [`cursor`]: HMAC-signed paging cursors bound to the filters that made them;
//! - [`ReadYourWrites`]: the consistency-token wait of a handler (bounded, `202
//!   processing` on timeout, `503` when too many wait);
//! - [`openapi`]: `/openapi.json` from a `utoipa` description;
//! - [`not_found`]: the problem+json 404 every projector's router falls back to.
//!
//! Every error here is an `application/problem+json` [`Problem`].

pub mod cursor;
pub mod openapi;

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use prism_events::Country;
use prism_platform::http::Problem;
use prometheus::Registry;
use tokio::sync::watch;
use uuid::Uuid;

pub use crate::app::not_found;
use crate::consistency::{self, VersionLookup, WaitError, WaitOutcome, WaitTarget, Waits};
pub use cursor::CursorKey;

/// A handler's query string as axum hands it over (a rejection stays a value, so that
/// [`Params::new`] can answer it as a problem).
pub type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The query string: each parameter at most once, only the endpoint's own; an empty value
/// counts as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Refuses an unreadable query string, a parameter not in `allowed` and one given
    /// twice, each as a 400 naming it.
    pub fn new(query: RawQuery, allowed: &[&str]) -> Result<Self, Problem> {
        let Query(pairs) = query.map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "Unreadable query string",
            )
            .detail(e.body_text())
        })?;
        Self::from_pairs(pairs, allowed)
    }

    /// [`Params::new`] over decoded pairs.
    pub fn from_pairs(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Self, Problem> {
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let known = allowed.join(", ");
                return Err(invalid(
                    name,
                    format!("unknown query parameter; this endpoint takes: {known}"),
                ));
            }
            if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(invalid(name, "given more than once"));
            }
        }
        Ok(Self(pairs))
    }

    /// The value of `name`, if given and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.trim().is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter: `true` or `false`, absent is `false`.
    pub fn flag(&self, name: &str) -> Result<bool, Problem> {
        match self.get(name).map(str::trim) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(invalid(name, format!("{other:?} is not true or false"))),
        }
    }
}

/// `limit`: 1 to `max`, `default` when absent.
pub fn page_limit(raw: Option<&str>, default: u32, max: u32) -> Result<u32, Problem> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    raw.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            invalid(
                "limit",
                format!("{raw:?} is not a page size from 1 to {max}"),
            )
        })
}

/// A 400 `invalid_field` problem naming `field`.
pub fn invalid(field: &str, detail: impl Into<String>) -> Problem {
    Problem::invalid_field(field, detail)
}

/// The `{id}` of a path, as an account id (field `account_id`).
pub fn path_account_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, Problem> {
    let Path(raw) = path.map_err(|e| invalid("account_id", e.body_text()))?;
    account_id(&raw)
}

/// An account id (a UUID, hyphenated or not), field `account_id`.
pub fn account_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw.trim()).map_err(|_| {
        invalid(
            "account_id",
            format!("{raw:?} is not an account id (a UUID)"),
        )
    })
}

/// An RFC 3339 time with its offset. A `+` that the query string decoded to a space is
/// taken back. A leap second (`23:59:60`) is taken as the first second of the next minute,
/// as POSIX time counts it: the stores and engines behind the APIs have no second 60
/// (OpenSearch refuses `23:59:60` in a range). Times outside years 1000–9999 (UTC) are
/// refused: MySQL's `DATETIME` holds nothing else, and no account event is dated there.
pub fn timestamp(field: &str, raw: &str) -> Result<DateTime<Utc>, Problem> {
    use chrono::Timelike as _;
    let raw = raw.trim();
    let time = DateTime::parse_from_rfc3339(raw)
        .or_else(|e| match raw.rfind(' ') {
            Some(i) if i > 10 => {
                DateTime::parse_from_rfc3339(&format!("{}+{}", &raw[..i], &raw[i + 1..]))
            }
            _ => Err(e),
        })
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            invalid(
                field,
                format!("{raw:?} is not an RFC 3339 time such as 2024-05-01T00:00:00Z"),
            )
        })?;
    // chrono keeps a leap second as a nanosecond count of a second or more.
    let time = match time.nanosecond().checked_sub(1_000_000_000) {
        Some(nanos) => time
            .with_nanosecond(nanos)
            .and_then(|t| t.checked_add_signed(chrono::TimeDelta::seconds(1)))
            .unwrap_or(time),
        None => time,
    };
    if !(1000..=9999).contains(&chrono::Datelike::year(&time)) {
        return Err(invalid(
            field,
            format!("{raw:?} is outside the years 1000 to 9999 (UTC)"),
        ));
    }
    Ok(time)
}

/// One of a fixed set of values (a status, a channel…), exactly as written.
pub fn one_of(field: &str, raw: &str, allowed: &[&'static str]) -> Result<&'static str, Problem> {
    allowed.iter().find(|s| **s == raw).copied().ok_or_else(|| {
        invalid(
            field,
            format!("{raw:?} is not one of {}", allowed.join(", ")),
        )
    })
}

/// An ISO 3166-1 alpha-2 country code, upper case.
pub fn country(field: &str, raw: &str) -> Result<String, Problem> {
    Country::parse(raw)
        .map(|c| c.as_str().to_owned())
        .map_err(|e| invalid(field, e.to_string()))
}

/// The consistency-token wait of a query API: a handler calls [`ReadYourWrites::wait`]
/// with the target it parsed (`consistency::target_for_account` /
/// `target_from_headers`) before it reads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadYourWrites {
    waits: Waits,
    timeout: Duration,
    projector: &'static str,
}

impl ReadYourWrites {
    /// Starts the shared watcher over `lookup` (see [`Waits::start`]; must run inside a
    /// tokio runtime). A wait gives up after `timeout` with `202 processing`.
    pub fn start(
        lookup: VersionLookup,
        progress: watch::Receiver<u64>,
        max_waiters: usize,
        timeout: Duration,
        registry: &Registry,
        projector: &'static str,
    ) -> prometheus::Result<Self> {
        let waits = Waits::start(lookup, progress, max_waiters, registry, projector)?;
        Ok(Self {
            waits,
            timeout,
            projector,
        })
    }

    /// Waits (if asked) until the account's version is in the read model.
    pub async fn wait(&self, target: Option<WaitTarget>) -> Result<(), Problem> {
        let Some(target) = target else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        match self.waits.wait(target, deadline).await {
            Ok(WaitOutcome::Reached(_)) => Ok(()),
            Ok(WaitOutcome::TimedOut(reached)) => Err(consistency::processing(target, reached)),
            Err(e) => {
                if let WaitError::Lookup(cause) = &e {
                    tracing::warn!(
                        projector = self.projector,
                        error = %cause,
                        "consistency wait: read model unavailable"
                    );
                }
                Err(e.problem())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use chrono::TimeZone as _;

    use super::*;

    fn field(p: &Problem) -> Option<&str> {
        p.document().field.as_deref()
    }

    fn params(pairs: &[(&str, &str)], allowed: &[&str]) -> Result<Params, Problem> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Params::new(Ok(Query(pairs)), allowed)
    }

    #[test]
    fn unknown_and_repeated_parameters_are_named() {
        let err = params(&[("limit", "1"), ("sort", "x")], &["limit"]).expect_err("unknown");
        assert_eq!(field(&err), Some("sort"));
        let err = params(&[("limit", "1"), ("limit", "2")], &["limit"]).expect_err("twice");
        assert_eq!(field(&err), Some("limit"));
        let ok = params(&[("limit", " "), ("cursor", "c")], &["limit", "cursor"]).expect("ok");
        assert_eq!(ok.get("limit"), None);
        assert_eq!(ok.get("cursor"), Some("c"));
    }

    #[test]
    fn flags_are_true_or_false() {
        let p = params(
            &[("a", "true"), ("b", "false"), ("c", "yes")],
            &["a", "b", "c"],
        )
        .expect("ok");
        assert_eq!(p.flag("a"), Ok(true));
        assert_eq!(p.flag("b"), Ok(false));
        assert_eq!(p.flag("missing"), Ok(false));
        assert_eq!(field(&p.flag("c").expect_err("yes")), Some("c"));
    }

    #[test]
    fn limits_are_from_one_to_the_maximum() {
        assert_eq!(page_limit(None, 50, 500), Ok(50));
        assert_eq!(page_limit(Some("1"), 50, 500), Ok(1));
        assert_eq!(page_limit(Some("500"), 50, 500), Ok(500));
        for bad in ["0", "501", "-1", "x", "1.5"] {
            let err = page_limit(Some(bad), 50, 500).expect_err(bad);
            assert_eq!(field(&err), Some("limit"), "{bad}");
        }
    }

    #[test]
    fn account_ids_are_uuids() {
        let id = Uuid::now_v7();
        assert_eq!(account_id(&id.to_string()), Ok(id));
        assert_eq!(account_id(&id.simple().to_string()), Ok(id));
        let err = account_id("nope").expect_err("bad id");
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(field(&err), Some("account_id"));
    }

    #[test]
    fn times_must_be_rfc3339() {
        let t = timestamp("from", "2024-05-01T10:00:00+02:00").expect("offset");
        let expected = Utc
            .with_ymd_and_hms(2024, 5, 1, 8, 0, 0)
            .single()
            .expect("a time");
        assert_eq!(t, expected);
        // `+` decoded to a space by a careless client.
        assert_eq!(timestamp("from", "2024-05-01T10:00:00 02:00"), Ok(t));
        assert_eq!(timestamp("from", "2024-05-01T08:00:00Z"), Ok(t));
        for bad in [
            "2024-05-01",
            "yesterday",
            "2024-05-01T08:00:00",
            "1714550400",
        ] {
            let err = timestamp("to", bad).expect_err(bad);
            assert_eq!(field(&err), Some("to"), "{bad}");
        }
    }

    #[test]
    fn a_time_outside_the_years_1000_to_9999_is_bad_input() {
        // The first made MySQL's driver panic in the ledger (a fuzz case): year -1 in UTC.
        for raw in [
            "0000-01-01T00:00:00+01:00",
            "0999-12-31T23:59:59Z",
            "9999-12-31T23:30:00-01:00",
        ] {
            let refused = timestamp("from", raw).expect_err(raw);
            assert_eq!(
                refused.status_code(),
                axum::http::StatusCode::BAD_REQUEST,
                "{raw}"
            );
        }
        assert!(timestamp("from", "1000-01-01T00:00:00Z").is_ok());
        assert!(timestamp("to", "9999-12-31T23:59:59Z").is_ok());
    }

    #[test]
    fn a_leap_second_is_the_first_second_of_the_next_minute() {
        use chrono::Timelike as _;
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .expect("a time")
                .with_timezone(&Utc)
        };
        assert_eq!(
            timestamp("to", "2016-12-31T23:59:60Z"),
            Ok(at("2017-01-01T00:00:00Z"))
        );
        assert_eq!(
            timestamp("to", "2016-12-31T23:59:60.25+01:00"),
            Ok(at("2016-12-31T23:00:00.25Z"))
        );
        // What the engines are sent has no second 60.
        let sent = timestamp("to", "2016-12-31T23:59:60.5Z").expect("a time");
        assert!(sent.nanosecond() < 1_000_000_000);
        assert_eq!(sent.to_rfc3339(), "2017-01-01T00:00:00.500+00:00");
    }

    #[test]
    fn enumerations_and_countries_are_checked() {
        let allowed = ["open", "frozen", "closed"];
        for s in allowed {
            assert_eq!(one_of("status", s, &allowed), Ok(s));
        }
        for bad in ["OPEN", "active", "x"] {
            let err = one_of("status", bad, &allowed).expect_err(bad);
            assert_eq!(field(&err), Some("status"));
        }
        assert_eq!(country("country", "GB").as_deref(), Ok("GB"));
        for bad in ["gb", "XX", "GBR", "1"] {
            let err = country("merchant_country", bad).expect_err(bad);
            assert_eq!(field(&err), Some("merchant_country"));
        }
    }

    fn lookup(versions: HashMap<Uuid, u64>) -> VersionLookup {
        Arc::new(move |_| {
            let versions = versions.clone();
            Box::pin(async move { Ok(versions) })
        })
    }

    #[tokio::test]
    async fn a_wait_passes_once_the_version_is_there_and_times_out_as_processing() {
        let account = Uuid::now_v7();
        let (_progress, progress_rx) = watch::channel(0_u64);
        let waits = ReadYourWrites::start(
            lookup(HashMap::from([(account, 3)])),
            progress_rx,
            4,
            Duration::from_millis(200),
            &Registry::new(),
            "test",
        )
        .expect("metrics");
        assert_eq!(waits.wait(None).await, Ok(()));
        let reached = WaitTarget {
            account_id: account,
            version: 3,
        };
        assert_eq!(waits.wait(Some(reached)).await, Ok(()));
        let ahead = WaitTarget {
            account_id: account,
            version: 4,
        };
        let err = waits.wait(Some(ahead)).await.expect_err("not there yet");
        assert_eq!(err.status_code(), StatusCode::ACCEPTED);
        assert_eq!(err.document().code, "processing");
    }
}
