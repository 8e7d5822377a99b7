//! Read-your-writes for every projector's query API.
//!
//! A command answers with a consistency token (`v1.<account>.<version>`). A query that sends
//! it back in the `Consistency-Token` header (or, on a single-account endpoint, asks for
//! `?min_version=N`) waits until the read model has handled that version of the account
//! before it reads, and answers `202 Accepted` with a `processing` problem and `Retry-After`
//! if the version does not arrive in time: never stale data.
//!
//! Waits are bounded so that they can never starve the projector ([`Waits`]): at most
//! `max_waiters` at once (more get `503 too_many_waits` with `Retry-After`), each ends at
//! its deadline whatever version it asked for, and they share one watcher. The watcher
//! re-reads the versions of every awaited account in one lookup per round (a round after
//! each of the runtime's progress signals, bumped after every batch this instance writes,
//! and every [`POLL_INTERVAL`], since another instance may own the account's partition;
//! never two rounds closer than [`MIN_ROUND_GAP`]), so the load a flood of waits puts on
//! the read model's database does not grow with the number of waits.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use prism_events::ConsistencyToken;
use prism_platform::http::Problem;
use prometheus::{IntCounter, IntGauge, Opts, Registry};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
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
/// Shortest time between two lookup rounds of the shared watcher, however often progress
/// is signalled.
pub const MIN_ROUND_GAP: Duration = Duration::from_millis(20);
/// Most accounts one lookup asks for; a round over more accounts makes several lookups.
pub const LOOKUP_CHUNK: usize = 500;
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

/// Reads the handled versions of some accounts in one go (the ledger: one `SELECT … WHERE
/// account_id IN (…)`); an account with nothing handled is absent from the answer. The
/// error is shown in logs and problems, so it must not hold secrets.
pub type VersionLookup = Arc<
    dyn Fn(Vec<Uuid>) -> Pin<Box<dyn Future<Output = Result<HashMap<Uuid, u64>, String>> + Send>>
        + Send
        + Sync,
>;

/// Why a wait could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// `max_waiters` waits are running already.
    #[error("{0} queries are already waiting for a version")]
    Busy(usize),
    /// The lookup of the stored versions failed.
    #[error("reading the stored version: {0}")]
    Lookup(String),
}

impl WaitError {
    /// The problem a query API answers: 503 with `Retry-After` either way.
    pub fn problem(&self) -> Problem {
        match self {
            Self::Busy(limit) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_waits",
                "Too many waiting queries",
            )
            .detail(format!(
                "{limit} queries are already waiting for a version; retry shortly, or read \
                 without a Consistency-Token or min_version"
            ))
            .retry_after(RETRY_AFTER_SECONDS),
            Self::Lookup(_) => {
                Problem::unavailable("the read model's database is not answering; retry shortly")
            }
        }
    }
}

/// The metrics of the waits, labelled by projector.
#[derive(Debug, Clone)]
struct WaitMetrics {
    waiting: IntGauge,
    watched: IntGauge,
    refused: IntCounter,
    queries: IntCounter,
}

impl WaitMetrics {
    fn new(registry: &Registry, projector: &str) -> prometheus::Result<Self> {
        let opts = |name: &str, help: &str| {
            Opts::new(name, help).const_label("projector", projector.to_owned())
        };
        let waiting = IntGauge::with_opts(opts(
            "prism_projector_waiting_queries",
            "Queries waiting for a version (Consistency-Token or min_version) right now.",
        ))?;
        let watched = IntGauge::with_opts(opts(
            "prism_projector_waited_accounts",
            "Accounts whose version the shared watcher follows right now.",
        ))?;
        let refused = IntCounter::with_opts(opts(
            "prism_projector_waits_refused_total",
            "Waits refused with 503 because max_waiters were already waiting.",
        ))?;
        let queries = IntCounter::with_opts(opts(
            "prism_projector_wait_queries_total",
            "Lookups of stored versions made for waiting queries (one per round and chunk).",
        ))?;
        registry.register(Box::new(waiting.clone()))?;
        registry.register(Box::new(watched.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(queries.clone()))?;
        Ok(Self {
            waiting,
            watched,
            refused,
            queries,
        })
    }
}

/// What the watcher last saw of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Not looked up yet.
    Unknown,
    /// The handled version (`None`: nothing of the account yet).
    Version(Option<u64>),
    /// The last lookup failed.
    Failed(String),
}

struct Watched {
    seen: watch::Sender<Seen>,
    /// Waits on this account now; the entry goes when the last one ends.
    waits: usize,
}

struct WaitsInner {
    permits: Arc<Semaphore>,
    max_waiters: usize,
    accounts: Mutex<HashMap<Uuid, Watched>>,
    /// Tells the watcher that an account was added (look it up soon).
    added: Arc<Notify>,
    metrics: WaitMetrics,
}

impl WaitsInner {
    fn accounts(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Watched>> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The read-your-writes waits of one query API: bounded in number, served by one shared
/// watcher task (see the module documentation). Cheap to clone; the watcher stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Waits {
    inner: Arc<WaitsInner>,
}

impl std::fmt::Debug for Waits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waits")
            .field("max_waiters", &self.inner.max_waiters)
            .field("waiting", &self.inner.metrics.waiting.get())
            .finish_non_exhaustive()
    }
}

/// One wait's hold on the watcher: ends the account's entry with the last wait on it.
struct Registration {
    inner: Arc<WaitsInner>,
    account: Uuid,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut accounts = self.inner.accounts();
        if let Some(watched) = accounts.get_mut(&self.account) {
            watched.waits = watched.waits.saturating_sub(1);
            if watched.waits == 0 {
                accounts.remove(&self.account);
            }
        }
        self.inner.metrics.watched.set(accounts.len() as i64);
        self.inner.metrics.waiting.dec();
    }
}

impl Waits {
    /// Starts the shared watcher (a tokio task) and registers the metrics of projector
    /// `projector` in `registry`. `progress` is the runtime's "a batch was written" signal;
    /// a receiver whose sender is gone still works (the poll goes on).
    pub fn start(
        lookup: VersionLookup,
        progress: watch::Receiver<u64>,
        max_waiters: usize,
        registry: &Registry,
        projector: &str,
    ) -> prometheus::Result<Waits> {
        let max_waiters = max_waiters.max(1);
        let added = Arc::new(Notify::new());
        let inner = Arc::new(WaitsInner {
            permits: Arc::new(Semaphore::new(max_waiters)),
            max_waiters,
            accounts: Mutex::new(HashMap::new()),
            added: Arc::clone(&added),
            metrics: WaitMetrics::new(registry, projector)?,
        });
        tokio::spawn(watch_versions(
            Arc::downgrade(&inner),
            added,
            lookup,
            progress,
        ));
        Ok(Waits { inner })
    }

    /// Waits until the read model has handled `target.version` of the account, or
    /// `deadline` passes. Refused at once (`Busy`) when `max_waiters` are waiting.
    pub async fn wait(
        &self,
        target: WaitTarget,
        deadline: Instant,
    ) -> Result<WaitOutcome, WaitError> {
        let Ok(permit) = Arc::clone(&self.inner.permits).try_acquire_owned() else {
            self.inner.metrics.refused.inc();
            return Err(WaitError::Busy(self.inner.max_waiters));
        };
        let (registration, mut seen) = self.register(target.account_id, permit);
        let outcome = loop {
            let current = seen.borrow_and_update().clone();
            match current {
                Seen::Version(Some(version)) if version >= target.version => {
                    break Ok(WaitOutcome::Reached(version));
                }
                Seen::Failed(e) => break Err(WaitError::Lookup(e)),
                Seen::Unknown | Seen::Version(_) => {}
            }
            tokio::select! {
                changed = seen.changed() => {
                    if changed.is_err() {
                        // Cannot happen while registered (the entry holds the sender); end
                        // the wait rather than spin.
                        break Ok(WaitOutcome::TimedOut(version_of(&seen.borrow())));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    break Ok(WaitOutcome::TimedOut(version_of(&seen.borrow())));
                }
            }
        };
        drop(registration);
        outcome
    }

    fn register(
        &self,
        account: Uuid,
        permit: OwnedSemaphorePermit,
    ) -> (Registration, watch::Receiver<Seen>) {
        let mut accounts = self.inner.accounts();
        let (receiver, new) = match accounts.get_mut(&account) {
            Some(watched) => {
                watched.waits += 1;
                (watched.seen.subscribe(), false)
            }
            None => {
                let (seen, receiver) = watch::channel(Seen::Unknown);
                accounts.insert(account, Watched { seen, waits: 1 });
                (receiver, true)
            }
        };
        self.inner.metrics.watched.set(accounts.len() as i64);
        self.inner.metrics.waiting.inc();
        drop(accounts);
        if new {
            self.inner.added.notify_one();
        }
        let registration = Registration {
            inner: Arc::clone(&self.inner),
            account,
            _permit: permit,
        };
        (registration, receiver)
    }
}

fn version_of(seen: &Seen) -> Option<u64> {
    match seen {
        Seen::Version(version) => *version,
        Seen::Unknown | Seen::Failed(_) => None,
    }
}

/// The shared watcher: while any account is awaited, one round of lookups after each
/// progress signal, each new account and every [`POLL_INTERVAL`], at most one round per
/// [`MIN_ROUND_GAP`]. Idle (no lookups) while nothing is awaited; ends with the last
/// [`Waits`] handle.
async fn watch_versions(
    inner: Weak<WaitsInner>,
    added: Arc<Notify>,
    lookup: VersionLookup,
    mut progress: watch::Receiver<u64>,
) {
    let mut progress_open = true;
    loop {
        let (accounts, queries) = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let accounts: Vec<Uuid> = inner.accounts().keys().copied().collect();
            (accounts, inner.metrics.queries.clone())
        };
        if accounts.is_empty() {
            // Nothing to watch: sleep until an account is added (checking now and then
            // whether the API is gone).
            let _ = tokio::time::timeout(Duration::from_secs(1), added.notified()).await;
            continue;
        }
        let round = Instant::now();
        progress.borrow_and_update();
        for chunk in accounts.chunks(LOOKUP_CHUNK) {
            queries.inc();
            let found = lookup(chunk.to_vec()).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let watched = inner.accounts();
            for account in chunk {
                let Some(entry) = watched.get(account) else {
                    continue;
                };
                let now = match &found {
                    Ok(versions) => Seen::Version(versions.get(account).copied()),
                    Err(e) => Seen::Failed(e.clone()),
                };
                entry.seen.send_if_modified(|seen| {
                    let modified = *seen != now;
                    *seen = now;
                    modified
                });
            }
        }
        tokio::time::sleep_until(round + MIN_ROUND_GAP).await;
        let poll = tokio::time::sleep_until(round + POLL_INTERVAL);
        if progress_open {
            tokio::select! {
                changed = progress.changed() => progress_open = changed.is_ok(),
                () = added.notified() => {}
                () = poll => {}
            }
        } else {
            tokio::select! {
                () = added.notified() => {}
                () = poll => {}
            }
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

    /// A lookup over one shared counter (the version of every account asked for, as a
    /// store's `SELECT version` would see it; 0 = nothing yet), counting its calls.
    fn counter_lookup(stored: &Arc<AtomicU64>, calls: &Arc<AtomicU64>) -> VersionLookup {
        let stored = Arc::clone(stored);
        let calls = Arc::clone(calls);
        Arc::new(move |accounts: Vec<Uuid>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let v = stored.load(Ordering::SeqCst);
            let found = accounts
                .into_iter()
                .filter(|_| v > 0)
                .map(|a| (a, v))
                .collect();
            Box::pin(std::future::ready(Ok(found)))
        })
    }

    fn target(version: u64) -> WaitTarget {
        WaitTarget {
            account_id: Uuid::now_v7(),
            version,
        }
    }

    fn waits(lookup: VersionLookup, progress: watch::Receiver<u64>, max: usize) -> Waits {
        Waits::start(lookup, progress, max, &Registry::new(), "test").expect("metrics")
    }

    fn counters(version: u64) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        (
            Arc::new(AtomicU64::new(version)),
            Arc::new(AtomicU64::new(0)),
        )
    }

    #[tokio::test]
    async fn a_version_already_there_returns_at_once() {
        let (stored, calls) = counters(4);
        let (_tx, rx) = watch::channel(0);
        let waits = waits(counter_lookup(&stored, &calls), rx, 8);
        let deadline = Instant::now() + Duration::from_secs(5);
        let started = std::time::Instant::now();
        let outcome = waits.wait(target(3), deadline).await;
        assert_eq!(outcome, Ok(WaitOutcome::Reached(4)));
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn the_progress_signal_wakes_the_wait() {
        let (stored, calls) = counters(1);
        let (tx, rx) = watch::channel(0);
        let waits = waits(counter_lookup(&stored, &calls), rx, 8);
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
        let outcome = waits.wait(target(6), deadline).await;
        assert_eq!(outcome, Ok(WaitOutcome::Reached(6)));
        drop(writer.await);
    }

    #[tokio::test]
    async fn without_a_signal_the_poll_still_sees_another_instance_s_write() {
        let (stored, calls) = counters(0);
        // The sender is gone at once: only the poll can notice the change.
        let (tx, rx) = watch::channel(0);
        drop(tx);
        let waits = waits(counter_lookup(&stored, &calls), rx, 8);
        {
            let stored = Arc::clone(&stored);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                stored.store(2, Ordering::SeqCst);
            });
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        let outcome = waits.wait(target(2), deadline).await;
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
        let (stored, calls) = counters(3);
        let (tx, rx) = watch::channel(0);
        let waits = waits(counter_lookup(&stored, &calls), rx, 8);
        // Progress that is not the awaited account's keeps the wait going.
        let noise = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tx.send_modify(|n| *n += 1);
            }
        });
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let outcome = waits.wait(target(u64::MAX), deadline).await;
        assert_eq!(outcome, Ok(WaitOutcome::TimedOut(Some(3))));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(1_500),
            "{waited:?}"
        );
        let _ = noise.await;
    }

    #[tokio::test]
    async fn a_failing_lookup_ends_the_wait_with_its_error() {
        let (_tx, rx) = watch::channel(0);
        let failing: VersionLookup =
            Arc::new(|_| Box::pin(std::future::ready(Err("down".to_owned()))));
        let waits = waits(failing, rx, 8);
        let deadline = Instant::now() + Duration::from_secs(5);
        let outcome = waits.wait(target(1), deadline).await;
        assert_eq!(outcome, Err(WaitError::Lookup("down".into())));
        assert_eq!(
            WaitError::Lookup("down".into()).problem().status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn waits_over_the_limit_are_refused_with_a_503_and_retry_after() {
        let (stored, calls) = counters(1);
        let (_tx, rx) = watch::channel(0);
        let waits = waits(counter_lookup(&stored, &calls), rx, 2);
        let deadline = Instant::now() + Duration::from_millis(500);
        let (a, b, c) = tokio::join!(
            waits.wait(target(5), deadline),
            waits.wait(target(5), deadline),
            async {
                // After the first two have taken their places.
                tokio::time::sleep(Duration::from_millis(50)).await;
                waits.wait(target(5), deadline).await
            }
        );
        assert_eq!(a, Ok(WaitOutcome::TimedOut(Some(1))));
        assert_eq!(b, Ok(WaitOutcome::TimedOut(Some(1))));
        assert_eq!(c, Err(WaitError::Busy(2)));
        let problem = WaitError::Busy(2).problem();
        assert_eq!(problem.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(problem.document().code, "too_many_waits");
        assert_eq!(problem.document().retry_after_seconds, Some(1));
        // The places are free again once the waits ended.
        let again = waits
            .wait(target(1), Instant::now() + Duration::from_secs(5))
            .await;
        assert_eq!(again, Ok(WaitOutcome::Reached(1)));
    }

    #[tokio::test]
    async fn many_waits_share_one_lookup_per_round() {
        let (stored, calls) = counters(1);
        let (tx, rx) = watch::channel(0);
        let waits = waits(counter_lookup(&stored, &calls), rx, 1_000);
        // Progress as fast as it comes: rounds are still at least MIN_ROUND_GAP apart.
        let noise = tokio::spawn(async move {
            for _ in 0..400 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.send_modify(|n| *n += 1);
            }
        });
        let started = Instant::now();
        let deadline = started + Duration::from_millis(400);
        let all: Vec<_> = (0..500)
            .map(|i| {
                let waits = waits.clone();
                // 50 accounts, 10 waits each.
                let account = Uuid::from_u128(i % 50 + 1);
                tokio::spawn(async move {
                    waits
                        .wait(
                            WaitTarget {
                                account_id: account,
                                version: 9,
                            },
                            deadline,
                        )
                        .await
                })
            })
            .collect();
        for wait in all {
            assert_eq!(
                wait.await.expect("a wait panicked"),
                Ok(WaitOutcome::TimedOut(Some(1)))
            );
        }
        let elapsed = started.elapsed();
        let rounds = calls.load(Ordering::SeqCst);
        let bound = elapsed.as_millis() as u64 / MIN_ROUND_GAP.as_millis() as u64 + 2;
        assert!(
            rounds >= 1 && rounds <= bound,
            "{rounds} lookups in {elapsed:?}"
        );
        let _ = noise.await;
        // Nothing is watched any more, so nothing is looked up.
        let idle = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(calls.load(Ordering::SeqCst), idle);
    }
}
