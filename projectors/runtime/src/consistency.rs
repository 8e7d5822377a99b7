//! Read-your-writes for every projector's query API.
//!
//! A command answers with a consistency token (`v1.<account>.<version>`). A query that sends
//! it back in the `Consistency-Token` header (or, on a single-account endpoint, asks for
//! `?min_version=N`) waits until the read model has handled that version of the account
//! before it reads, and answers `202 Accepted` with a `processing` problem and `Retry-After`
//! if the version does not arrive in time: never stale data.
//!
//! The wait wakes on the runtime's progress signal (bumped after every batch this instance
//! writes) and on a short poll, since another instance may own the account's partition.

use std::future::Future;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use prism_events::ConsistencyToken;
use prism_platform::http::Problem;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

/// The request header carrying a [`ConsistencyToken`].
pub const HEADER: &str = "consistency-token";
/// How the header is named in problems (as clients write it).
pub const HEADER_NAME: &str = "Consistency-Token";
/// The query parameter of single-account endpoints.
pub const MIN_VERSION: &str = "min_version";
/// How often a wait re-reads the stored version even without a progress signal.
pub const POLL_INTERVAL: Duration = Duration::from_millis(40);
/// `Retry-After` of a `processing` answer, in seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// "Do not read before `account_id` has reached `version` in this read model."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTarget {
    pub account_id: Uuid,
    pub version: u64,
}

fn invalid(field: &str, detail: impl Into<String>) -> Problem {
    Problem::invalid_field(field, detail)
}

/// The `Consistency-Token` header, if sent. A malformed or repeated header is a 400
/// naming it.
pub fn token_from_headers(headers: &HeaderMap) -> Result<Option<ConsistencyToken>, Problem> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid(HEADER_NAME, "send at most one consistency token"));
    }
    let text = value.to_str().map_err(|_| {
        invalid(
            HEADER_NAME,
            "not a consistency token (expected v1.<account uuid>.<version>)",
        )
    })?;
    text.parse::<ConsistencyToken>()
        .map(Some)
        .map_err(|e| invalid(HEADER_NAME, e.to_string()))
}

/// A `min_version` query parameter: a non-negative integer (0 asks for nothing).
pub fn parse_min_version(raw: &str) -> Result<u64, Problem> {
    raw.trim().parse::<u64>().map_err(|_| {
        invalid(
            MIN_VERSION,
            format!("{raw:?} is not a version (a non-negative integer)"),
        )
    })
}

/// The wait target of an endpoint that lists many accounts: only the token's account.
pub fn target_from_headers(headers: &HeaderMap) -> Result<Option<WaitTarget>, Problem> {
    Ok(token_from_headers(headers)?.map(|token| WaitTarget {
        account_id: token.account_id.0,
        version: token.version,
    }))
}

/// The wait target of a single-account endpoint: the token (which must name `account`)
/// and `min_version` (already taken from the query string, unparsed); the higher version
/// wins. `None`: nothing to wait for.
pub fn target_for_account(
    headers: &HeaderMap,
    account: Uuid,
    min_version: Option<&str>,
) -> Result<Option<WaitTarget>, Problem> {
    let mut version = 0;
    if let Some(token) = token_from_headers(headers)? {
        if token.account_id.0 != account {
            return Err(invalid(
                HEADER_NAME,
                format!(
                    "the token is for account {}, not for account {account} of this request",
                    token.account_id
                ),
            ));
        }
        version = token.version;
    }
    if let Some(raw) = min_version {
        version = version.max(parse_min_version(raw)?);
    }
    Ok((version > 0).then_some(WaitTarget {
        account_id: account,
        version,
    }))
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The read model holds this version (≥ the target) of the account.
    Reached(u64),
    /// The deadline passed; the read model had reached this version (`None`: nothing of
    /// the account yet).
    TimedOut(Option<u64>),
}

/// Waits until `check()` (the stored version of the target's account, `None` when the read
/// model has none) is at least `target.version`, or `deadline` passes. Wakes on every
/// change of `progress` and every [`POLL_INTERVAL`]. An error of `check` ends the wait.
pub async fn wait_for<F, Fut, E>(
    target: WaitTarget,
    deadline: Instant,
    mut check: F,
    mut progress: watch::Receiver<u64>,
) -> Result<WaitOutcome, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<u64>, E>>,
{
    // Changes from before the wait began are covered by the first check.
    progress.borrow_and_update();
    let mut signal_open = true;
    loop {
        let stored = check().await?;
        if let Some(version) = stored.filter(|v| *v >= target.version) {
            return Ok(WaitOutcome::Reached(version));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(WaitOutcome::TimedOut(stored));
        }
        let nap = tokio::time::sleep_until(deadline.min(now + POLL_INTERVAL));
        if signal_open {
            tokio::select! {
                changed = progress.changed() => {
                    // The runtime is gone: keep polling until the deadline.
                    signal_open = changed.is_ok();
                }
                () = nap => {}
            }
        } else {
            nap.await;
        }
    }
}

/// The `202 Accepted` answer of a wait that timed out: the write is accepted but not yet
/// visible here; retry after a second.
pub fn processing(target: WaitTarget, reached: Option<u64>) -> Problem {
    let reached = match reached {
        Some(version) => format!("has reached version {version} of account"),
        None => "has no event yet of account".to_owned(),
    };
    Problem::new(StatusCode::ACCEPTED, "processing", "Still processing")
        .detail(format!(
            "the read model {reached} {}; version {} is not applied yet, retry shortly",
            target.account_id, target.version
        ))
        .retry_after(RETRY_AFTER_SECONDS)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use axum::http::HeaderValue;
    use prism_events::AccountId;

    use super::*;

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_str(token).expect("header value"));
        h
    }

    fn field(p: &Problem) -> Option<&str> {
        p.document().field.as_deref()
    }

    #[test]
    fn no_header_and_no_min_version_is_no_wait() {
        let id = Uuid::now_v7();
        assert_eq!(target_for_account(&HeaderMap::new(), id, None), Ok(None));
        assert_eq!(
            target_for_account(&HeaderMap::new(), id, Some("0")),
            Ok(None)
        );
        assert_eq!(target_from_headers(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn a_token_for_the_account_is_a_target_and_the_higher_version_wins() {
        let id = AccountId::generate();
        let token = ConsistencyToken {
            account_id: id,
            version: 7,
        }
        .to_string();
        let h = headers(&token);
        let expect = |version| {
            Ok(Some(WaitTarget {
                account_id: id.0,
                version,
            }))
        };
        assert_eq!(target_for_account(&h, id.0, None), expect(7));
        assert_eq!(target_for_account(&h, id.0, Some("3")), expect(7));
        assert_eq!(target_for_account(&h, id.0, Some("9")), expect(9));
        assert_eq!(
            target_for_account(&HeaderMap::new(), id.0, Some("4")),
            expect(4)
        );
        assert_eq!(target_from_headers(&h), expect(7));
    }

    #[test]
    fn a_token_for_another_account_is_rejected_on_a_single_account_endpoint() {
        let token = ConsistencyToken {
            account_id: AccountId::generate(),
            version: 2,
        }
        .to_string();
        let err =
            target_for_account(&headers(&token), Uuid::now_v7(), None).expect_err("foreign token");
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(field(&err), Some(HEADER_NAME));
    }

    #[test]
    fn malformed_tokens_and_versions_name_their_field() {
        let id = Uuid::now_v7();
        for bad in [
            "",
            "v1",
            "v1.nope.3",
            "v2.0190b8f2c3a47e3c8a6b4d5e6f708192.1",
        ] {
            let err = target_for_account(&headers(bad), id, None).expect_err(bad);
            assert_eq!(err.status_code(), StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(field(&err), Some(HEADER_NAME), "{bad}");
            let err = target_from_headers(&headers(bad)).expect_err(bad);
            assert_eq!(field(&err), Some(HEADER_NAME), "{bad}");
        }
        for bad in ["", "x", "-1", "1.5", "99999999999999999999999"] {
            let err = target_for_account(&HeaderMap::new(), id, Some(bad)).expect_err(bad);
            assert_eq!(err.status_code(), StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(field(&err), Some(MIN_VERSION), "{bad}");
        }
    }

    #[test]
    fn a_repeated_header_is_rejected() {
        let token = ConsistencyToken {
            account_id: AccountId::generate(),
            version: 2,
        }
        .to_string();
        let mut h = headers(&token);
        h.append(HEADER, HeaderValue::from_str(&token).expect("header value"));
        let err = target_from_headers(&h).expect_err("two tokens");
        assert_eq!(field(&err), Some(HEADER_NAME));
    }

    #[test]
    fn the_processing_answer_is_a_202_with_retry_after() {
        let target = WaitTarget {
            account_id: Uuid::now_v7(),
            version: 5,
        };
        let p = processing(target, Some(3));
        assert_eq!(p.status_code(), StatusCode::ACCEPTED);
        let doc = p.document();
        assert_eq!(doc.code, "processing");
        assert_eq!(doc.retry_after_seconds, Some(1));
        let detail = doc.detail.as_deref().unwrap_or_default();
        assert!(detail.contains("version 3") && detail.contains(&target.account_id.to_string()));
    }

    /// A check over a shared counter, as a store's `SELECT version` would see it.
    fn counter_check(
        stored: &Arc<AtomicU64>,
    ) -> impl FnMut() -> std::future::Ready<Result<Option<u64>, ()>> {
        let stored = Arc::clone(stored);
        move || {
            let v = stored.load(Ordering::SeqCst);
            std::future::ready(Ok((v > 0).then_some(v)))
        }
    }

    fn target(version: u64) -> WaitTarget {
        WaitTarget {
            account_id: Uuid::now_v7(),
            version,
        }
    }

    #[tokio::test]
    async fn a_version_already_there_returns_at_once() {
        let stored = Arc::new(AtomicU64::new(4));
        let (_tx, rx) = watch::channel(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let started = std::time::Instant::now();
        let outcome = wait_for(target(3), deadline, counter_check(&stored), rx).await;
        assert_eq!(outcome, Ok(WaitOutcome::Reached(4)));
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn the_progress_signal_wakes_the_wait() {
        let stored = Arc::new(AtomicU64::new(1));
        let (tx, rx) = watch::channel(0);
        let writer = {
            let stored = Arc::clone(&stored);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stored.store(6, Ordering::SeqCst);
                tx.send_modify(|n| *n += 1);
                tx
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let outcome = wait_for(target(6), deadline, counter_check(&stored), rx).await;
        assert_eq!(outcome, Ok(WaitOutcome::Reached(6)));
        drop(writer.await);
    }

    #[tokio::test]
    async fn without_a_signal_the_poll_still_sees_another_instance_s_write() {
        let stored = Arc::new(AtomicU64::new(0));
        // The sender is gone at once: only the poll can notice the change.
        let (tx, rx) = watch::channel(0);
        drop(tx);
        {
            let stored = Arc::clone(&stored);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                stored.store(2, Ordering::SeqCst);
            });
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        let outcome = wait_for(target(2), deadline, counter_check(&stored), rx).await;
        assert_eq!(outcome, Ok(WaitOutcome::Reached(2)));
        let waited = started.elapsed();
        // Real time: generous upper bound for a loaded machine.
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(1_500),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_version_that_never_comes_times_out_at_the_deadline() {
        let stored = Arc::new(AtomicU64::new(3));
        let (tx, rx) = watch::channel(0);
        // Progress that is not the awaited account's keeps the wait going.
        let noise = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tx.send_modify(|n| *n += 1);
            }
        });
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let outcome = wait_for(target(9), deadline, counter_check(&stored), rx).await;
        assert_eq!(outcome, Ok(WaitOutcome::TimedOut(Some(3))));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(1_500),
            "{waited:?}"
        );
        let _ = noise.await;
    }

    #[tokio::test]
    async fn a_failing_check_ends_the_wait_with_its_error() {
        let (_tx, rx) = watch::channel(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let outcome = wait_for(
            target(1),
            deadline,
            || std::future::ready(Err::<Option<u64>, _>("down")),
            rx,
        )
        .await;
        assert_eq!(outcome, Err("down"));
    }
}
