//! The search API (axum) for analysts: JSON in snake_case, money in `*_minor` integers
//! beside a currency, times in RFC 3339 UTC, errors as `application/problem+json` naming
//! the field.
//!
//! - `GET /v1/search/transactions?q=&account_id=&country=&merchant_country=&category=&
//!   channel=&decision=&kind=&from=&to=&min_amount_minor=&max_amount_minor=&currency=&
//!   sort=&limit=&cursor=&facets=&facet_size=&amount_interval_minor=`: matching
//!   transactions with highlights, `total`, optional facets and a `next_cursor`;
//! - `GET /v1/search/accounts?q=&status=&country=&limit=`: autocomplete on holder name
//!   and email;
//!
//! Every `/v1` endpoint needs a bearer token with the `search:read` scope (401 without an
//! accepted token, 403 without the scope). Holder names are shown: analysts search by
//! them. Email addresses are shown, and matched by `q`, only to callers with the `pii`
//! scope, or to every caller when `[search] mask_email` is false; others get them masked
//! (`a***@example.org`) and `q` does not look at them.
//! - `GET /v1/search/transactions/export?format=ndjson|csv&<the same filters>`: the whole
//!   result, streamed in pages of `max_page_size`.
//!
//! Free text (`q`) goes through `simple_query_string` only (see [`crate::query`]).
//!
//! **Paging** is `search_after` on a total order (every sort ends with the event id). The
//! first page reads the live alias; if there is more, a point in time (PIT) is opened on
//! it and the cursor carries the PIT id and the last sort values, HMAC-signed and bound to
//! the text, filters and order. Later pages read that PIT, so documents indexed while an
//! analyst pages are neither shown twice nor shift what was not yet shown; the last page
//! closes the PIT, an expired one (`PIT_KEEP_ALIVE` after the previous page) makes the
//! cursor `invalid_cursor`, and so does one closed because more than [`UNPAGED_PITS_MAX`]
//! first pages were not paged on since. Elasticsearch and OpenSearch open and close PITs
//! at different paths: the engine is asked once (`GET /`, [`Engine`]).
//!
//! **Limits**, each a 400 naming its field: `limit` ≤ `max_page_size`, `facet_size` ≤
//! `max_facet_size`, `q` ≤ `max_query_chars` characters without control characters, and a
//! search that runs past `query_timeout_ms` (sent as the engine's `timeout`; the client
//! gives up [`CLIENT_GRACE`] later) is `query_timeout` naming `q`. An engine that is down
//! or overloaded is a 503, one that refuses a request is a 502 (logged), never a 500.
//!
//! **Read your writes**: with a `Consistency-Token`, a search first waits until the
//! account's version is in the live copy (its checkpoint index), then refreshes the live
//! indices so the write is searchable. Concurrent waiters share refreshes
//! ([`Refresher`]). Every `/v1` route needs `Authorization: Bearer <token>`;
//! `/openapi.json` is open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use elasticsearch::http::headers::HeaderMap as EsHeaders;
use elasticsearch::http::request::JsonBody;
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use prism_platform::auth::{self, Auth, Scope, Scopes};
use prism_platform::http::Problem;
use prism_platform::pii;
use prism_projector::api::cursor::invalid_cursor;
use prism_projector::api::openapi::{self, BearerAuth};
use prism_projector::api::{
    account_id, country, invalid, one_of, page_limit, timestamp, CursorKey, Params, RawQuery,
    ReadYourWrites,
};
use prism_projector::consistency::{self, VersionLookup};
use prism_projector::Sink as _;
use prometheus::Registry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{watch, Mutex, OnceCell};
use utoipa::{OpenApi, ToSchema};

use crate::config::SearchConfig;
use crate::copies::SearchCopy;
use crate::fold::{AccountDoc, TransactionDoc};
use crate::index::Names;
use crate::query::{
    self, AccountQuery, Engine, FacetCounts, Facets, PageRequest, Sort, TransactionFilters,
    TransactionQuery, CHANNELS, DECISIONS, KINDS, STATUSES,
};
use crate::sink::{describe, read, EsSink};

/// How long a point in time stays open after a page was read: the time an analyst has
/// to ask for the next page.
pub const PIT_KEEP_ALIVE: &str = "2m";
/// Most points in time this instance keeps open for first pages nobody has paged on yet.
/// Every first page of a search with more pages opens one (so that its cursor reads what
/// was there then), but most searches are never paged on: unbounded, they would pile up for
/// [`PIT_KEEP_ALIVE`] each until the engine refuses new ones past its node-wide limit
/// (OpenSearch: 300), failing every paged search of every index. Past this many the
/// oldest is closed; its cursor then answers `invalid_cursor`, as an expired one does.
pub const UNPAGED_PITS_MAX: usize = 32;
/// How much longer than `query_timeout_ms` the client waits for the engine's answer (the
/// engine checks its `timeout` only now and then, and the answer must travel back).
pub const CLIENT_GRACE: Duration = Duration::from_millis(500);
/// Longest cursor accepted: a PIT id names every shard it covers.
pub const CURSOR_MAX_LEN: usize = 16 * 1024;
/// Default width of an amount histogram bucket (100.00 in a two-decimal currency).
pub const DEFAULT_AMOUNT_INTERVAL_MINOR: i64 = 10_000;
/// Default buckets per facet (at most `max_facet_size`).
pub const DEFAULT_FACET_SIZE: u32 = 10;

const TRANSACTIONS_CURSOR: &str = "transactions";

/// The parameters of a transaction search that select and order documents (shared by
/// the search and the export).
const SELECTION: [&str; 14] = [
    "q",
    "account_id",
    "country",
    "merchant_country",
    "category",
    "channel",
    "decision",
    "kind",
    "from",
    "to",
    "min_amount_minor",
    "max_amount_minor",
    "currency",
    "sort",
];

/// The live copy the API reads: what the process shell's `LiveCopy` says now.
type CurrentCopy = Arc<dyn Fn() -> SearchCopy + Send + Sync>;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    copy: CurrentCopy,
    names: Names,
    cursors: CursorKey,
    page_size: u32,
    max_page_size: u32,
    max_query_chars: usize,
    max_facet_size: u32,
    query_timeout: Duration,
    /// Overrides `query_timeout + CLIENT_GRACE` as the client-side deadline (tests).
    client_deadline: Option<Duration>,
    waits: ReadYourWrites,
    refresher: Refresher,
    engine: OnceCell<Engine>,
    auth: Auth,
    /// Mask email addresses for callers without the `pii` scope (`[search] mask_email`).
    mask_email: bool,
    /// Points in time of first pages not paged on yet, oldest first (see
    /// [`UNPAGED_PITS_MAX`]).
    unpaged_pits: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("names", &self.inner.names)
            .field("page_size", &self.inner.page_size)
            .field("max_page_size", &self.inner.max_page_size)
            .field("query_timeout", &self.inner.query_timeout)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// `copy` says which copy is live now (`move || live.current()` over the shell's
    /// `LiveCopy`): its client is the engine, its checkpoint index holds the versions
    /// waits look for. Searches read the aliases of `config.index_prefix`, which always
    /// point at the live copy. `progress` is the runtime's "a batch was written" signal;
    /// the waits' metrics go to `registry`. Must run inside a tokio runtime.
    pub fn new(
        copy: impl Fn() -> SearchCopy + Send + Sync + 'static,
        config: &SearchConfig,
        auth: Auth,
        progress: watch::Receiver<u64>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let copy: CurrentCopy = Arc::new(copy);
        let max_page_size = config.max_page_size.max(1);
        let waits = ReadYourWrites::start(
            version_lookup(Arc::clone(&copy)),
            progress,
            config.max_waiters,
            Duration::from_millis(config.wait_timeout_ms),
            registry,
            "search",
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                copy,
                names: Names::new(&config.index_prefix),
                cursors: CursorKey::new("search", &config.cursor_secret).max_len(CURSOR_MAX_LEN),
                page_size: config.page_size.clamp(1, max_page_size),
                max_page_size,
                max_query_chars: config.max_query_chars,
                max_facet_size: config.max_facet_size.max(1),
                query_timeout: Duration::from_millis(config.query_timeout_ms.max(1)),
                client_deadline: None,
                waits,
                refresher: Refresher::default(),
                engine: OnceCell::new(),
                auth,
                mask_email: config.mask_email,
                unpaged_pits: std::sync::Mutex::default(),
            }),
        })
    }

    /// Waits `deadline` (instead of `query_timeout_ms` + [`CLIENT_GRACE`]) for each of
    /// the engine's answers. Only before the state is shared (cloned); tests use it to
    /// make the client-side deadline pass for sure.
    #[doc(hidden)]
    pub fn with_client_deadline(mut self, deadline: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.client_deadline = Some(deadline);
        }
        self
    }

    fn client(&self) -> Elasticsearch {
        (self.inner.copy)().client
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.inner.query_timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Sends one request to the engine and reads its JSON answer; every failure is
    /// already the problem to answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, Problem> {
        let response = self
            .client()
            .send(
                method,
                path,
                EsHeaders::new(),
                (!query.is_empty()).then_some(query),
                body.map(JsonBody::new),
                Some(
                    self.inner
                        .client_deadline
                        .unwrap_or(self.inner.query_timeout + CLIENT_GRACE),
                ),
            )
            .await;
        match read(response).await {
            Ok((status, body)) if (200..300).contains(&status) => Ok(body),
            Ok((status, body)) => Err(engine_refused(status, &body, what)),
            Err(e) if e.is_timeout() => Err(query_timeout(self.timeout_ms())),
            Err(e) => {
                tracing::warn!(error = %e, what, "search engine unavailable");
                Err(Problem::unavailable(
                    "the search engine is not answering; retry shortly",
                ))
            }
        }
    }

    /// Which engine this is, asked once.
    async fn engine(&self) -> Result<Engine, Problem> {
        self.inner
            .engine
            .get_or_try_init(|| async {
                let info = self
                    .call(Method::Get, "/", &[], None, "asking which engine this is")
                    .await?;
                Ok(Engine::from_info(&info))
            })
            .await
            .copied()
    }

    async fn open_pit(&self) -> Result<String, Problem> {
        let engine = self.engine().await?;
        let path = engine.open_pit_path(&self.inner.names.transactions_alias());
        let answer = self
            .call(
                Method::Post,
                &path,
                &[("keep_alive", PIT_KEEP_ALIVE)],
                None,
                "opening a point in time",
            )
            .await?;
        engine.opened_pit_id(&answer).ok_or_else(|| {
            tracing::error!(answer = %answer, "the engine opened a point in time without an id");
            bad_gateway()
        })
    }

    /// Remembers the point in time a first page opened; closes the oldest one nobody paged
    /// on once there are more than [`UNPAGED_PITS_MAX`].
    fn opened_for_first_page(&self, pit: &str) {
        let evicted = {
            // A poisoned lock only means another request panicked mid-push: the queue is
            // still a list of ids.
            let mut unpaged = self
                .inner
                .unpaged_pits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            unpaged.push_back(pit.to_owned());
            let excess = unpaged.len().saturating_sub(UNPAGED_PITS_MAX);
            unpaged.drain(..excess).collect::<Vec<_>>()
        };
        for pit in evicted {
            self.close_pit(pit);
        }
    }

    /// A cursor's point in time is being paged on: it is no longer a candidate for closing.
    fn paging_on(&self, pit: &str) {
        self.inner
            .unpaged_pits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|p| p != pit);
    }

    /// Closes a point in time in the background (it would expire anyway).
    fn close_pit(&self, id: String) {
        let state = self.clone();
        tokio::spawn(async move {
            let Ok(engine) = state.engine().await else {
                return;
            };
            let (path, body) = engine.close_pit(&id);
            if let Err(p) = state
                .call(
                    Method::Delete,
                    path,
                    &[],
                    Some(body),
                    "closing a point in time",
                )
                .await
            {
                tracing::debug!(problem = ?p.document(), "closing a point in time failed");
            }
        });
    }

    /// One page of a transaction search: from the live alias (`pit` absent) or a PIT.
    async fn search_page(
        &self,
        search: &TransactionQuery,
        page: &PageRequest<'_>,
        facets: Option<&Facets>,
    ) -> Result<SearchAnswer, Problem> {
        let body = query::transactions_body(search, page, facets);
        let path = match page.pit {
            Some(_) => "/_search".to_owned(),
            None => format!("/{}/_search", self.inner.names.transactions_alias()),
        };
        let answer = self
            .call(
                Method::Post,
                &path,
                &[],
                Some(body),
                "searching transactions",
            )
            .await?;
        if answer["timed_out"].as_bool() == Some(true) {
            return Err(query_timeout(self.timeout_ms()));
        }
        SearchAnswer::parse(answer, page.size)
    }

    /// Waits for a `Consistency-Token`'s version, then makes it searchable.
    async fn read_your_writes(&self, headers: &HeaderMap) -> Result<(), Problem> {
        let Some(target) = consistency::target_from_headers(headers)? else {
            return Ok(());
        };
        self.inner.waits.wait(Some(target)).await?;
        let state = self.clone();
        self.inner
            .refresher
            .refresh(|| async move {
                let names = &state.inner.names;
                let path = format!(
                    "/{},{}/_refresh",
                    names.transactions_alias(),
                    names.accounts_alias()
                );
                state
                    .call(
                        Method::Post,
                        &path,
                        &[],
                        None,
                        "refreshing the live indices",
                    )
                    .await
                    .map(drop)
            })
            .await
    }
}

/// The waits' lookup: the versions in the live copy's checkpoint index (what the sink
/// reads before it writes).
fn version_lookup(copy: CurrentCopy) -> VersionLookup {
    Arc::new(move |accounts| {
        let sink = EsSink::new(copy());
        Box::pin(async move { sink.versions(&accounts).await.map_err(|e| e.to_string()) })
    })
}

/// Refreshes shared by concurrent callers. A caller needs a refresh that *started* after
/// it arrived (one already running may have missed its write): callers that arrive while
/// one runs wait for it to end, then one of them starts the next and the others take its
/// result. So N concurrent waiters cause at most two refreshes, not N.
#[derive(Debug, Default)]
pub struct Refresher {
    /// Held while a refresh runs.
    running: Mutex<()>,
    /// Refreshes started (numbered from 1).
    started: AtomicU64,
    /// The number of the last refresh that succeeded.
    done: AtomicU64,
}

impl Refresher {
    /// Returns once a refresh that started after this call began has succeeded (running
    /// `refresh` unless another caller does), or with the error of the one it ran.
    pub async fn refresh<F, Fut>(&self, refresh: F) -> Result<(), Problem>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), Problem>>,
    {
        let needed = self.started.load(Ordering::SeqCst) + 1;
        let _running = self.running.lock().await;
        if self.done.load(Ordering::SeqCst) >= needed {
            return Ok(());
        }
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        refresh().await?;
        self.done.fetch_max(number, Ordering::SeqCst);
        Ok(())
    }
}

/// The parts of a search answer the API uses.
#[derive(Debug)]
struct SearchAnswer {
    hits: Vec<Value>,
    /// One more hit than asked for came back: there is a next page.
    more: bool,
    total: u64,
    /// The PIT id to use next (the engine may hand out a new one).
    pit: Option<String>,
    aggregations: Value,
}

impl SearchAnswer {
    fn parse(mut answer: Value, size: u32) -> Result<Self, Problem> {
        let Some(hits) = answer["hits"]["hits"].as_array_mut().map(std::mem::take) else {
            tracing::error!(answer = %answer, "a search answer without hits");
            return Err(bad_gateway());
        };
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let more = hits.len() > size;
        let hits = hits.into_iter().take(size).collect();
        Ok(Self {
            hits,
            more,
            total: answer["hits"]["total"]["value"].as_u64().unwrap_or(0),
            pit: answer["pit_id"].as_str().map(str::to_owned),
            aggregations: answer["aggregations"].take(),
        })
    }

    /// The sort values of the last hit: where the next page starts.
    fn last_sort(&self) -> Option<Vec<Value>> {
        self.hits.last()?["sort"].as_array().cloned()
    }
}

/// What a transaction cursor holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CursorState {
    pit: String,
    after: Vec<Value>,
}

/// The `/v1/search` routes, behind the bearer-token check, and `/openapi.json`.
pub fn router(state: ApiState) -> Router {
    let auth = state.inner.auth.clone();
    Router::new()
        .route("/v1/search/transactions", get(search_transactions))
        .route("/v1/search/transactions/export", get(export_transactions))
        .route("/v1/search/accounts", get(search_accounts))
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_bearer,
        ))
        .with_state(state)
        .merge(openapi::router(&ApiDoc::openapi()))
}

/// The OpenAPI description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "prism-search",
        description = "Search over Prism's transactions and accounts for analysts. Free text \
            uses simple_query_string syntax. Money is integer minor units beside a \
            currency, times are RFC 3339 UTC, errors are application/problem+json naming \
            the field. Send a command's Consistency-Token to search your own write."
    ),
    paths(search_transactions, export_transactions, search_accounts),
    components(schemas(TransactionPage, TransactionHit, AccountPage, FacetCounts)),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

// ---------- responses ----------

/// One matching transaction with the highlighted fragments of its text fields.
#[derive(Debug, Serialize, ToSchema)]
struct TransactionHit {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    transaction: TransactionDoc,
    /// Field → the field's text with matches in `<em>` (HTML-escaped).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    highlight: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
struct TransactionPage {
    /// Every match, not only this page's.
    total: u64,
    items: Vec<TransactionHit>,
    /// Send it back as `cursor` with the same parameters for the next page; `null` at
    /// the end.
    next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    facets: Option<FacetCounts>,
}

#[derive(Debug, Serialize, ToSchema)]
struct AccountPage {
    #[schema(value_type = Vec<Object>)]
    items: Vec<AccountDoc>,
}

// ---------- handlers ----------

#[utoipa::path(get, path = "/v1/search/transactions",
    params(
        ("q" = Option<String>, Query, description = "Free text over merchant, holder and description (simple_query_string syntax)"),
        ("account_id" = Option<String>, Query), ("country" = Option<String>, Query, description = "The holder's country"),
        ("merchant_country" = Option<String>, Query), ("category" = Option<String>, Query, description = "MCC code"),
        ("channel" = Option<String>, Query, description = "atm, branch, online, pos"),
        ("decision" = Option<String>, Query, description = "approved, declined"),
        ("kind" = Option<String>, Query, description = "deposit, withdrawal, card_payment, declined_payment"),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive"), ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("min_amount_minor" = Option<i64>, Query), ("max_amount_minor" = Option<i64>, Query), ("currency" = Option<String>, Query),
        ("sort" = Option<String>, Query, description = "-time (default), time, -amount, amount"),
        ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query),
        ("facets" = Option<bool>, Query), ("facet_size" = Option<u32>, Query), ("amount_interval_minor" = Option<i64>, Query),
        ("Consistency-Token" = Option<String>, Header, description = "A command's token: search after its write")),
    responses((status = 200, body = TransactionPage), (status = 202, description = "processing"),
        (status = 400, description = "a bad parameter or a breached limit (problem+json naming it)"),
        (status = 401), (status = 502), (status = 503)),
    security(("bearer" = [])))]
async fn search_transactions(
    State(state): State<ApiState>,
    query: RawQuery,
    headers: HeaderMap,
) -> Result<Json<TransactionPage>, Problem> {
    let mut allowed = SELECTION.to_vec();
    allowed.extend([
        "limit",
        "cursor",
        "facets",
        "facet_size",
        "amount_interval_minor",
        consistency::MIN_VERSION,
    ]);
    let params = Params::new(query, &allowed)?;
    if params.get(consistency::MIN_VERSION).is_some() {
        return Err(invalid(
            consistency::MIN_VERSION,
            "send a Consistency-Token header instead (a search spans accounts)",
        ));
    }
    let search = transaction_query(&params, state.inner.max_query_chars)?;
    let limit = page_limit(
        params.get("limit"),
        state.inner.page_size,
        state.inner.max_page_size,
    )?;
    let facets = facets(&params, state.inner.max_facet_size)?;
    let scope = search.scope();
    let cursor = params
        .get("cursor")
        .map(|c| {
            state
                .inner
                .cursors
                .open::<CursorState>(TRANSACTIONS_CURSOR, &scope, c)
        })
        .transpose()?;
    if let Some(cursor) = &cursor {
        state.paging_on(&cursor.pit);
    }
    state.read_your_writes(&headers).await?;

    let request = PageRequest {
        size: limit,
        pit: cursor.as_ref().map(|c| c.pit.as_str()),
        keep_alive: PIT_KEEP_ALIVE,
        after: cursor.as_ref().map(|c| c.after.as_slice()),
        timeout_ms: state.timeout_ms(),
        total: true,
    };
    let answer = state
        .search_page(&search, &request, facets.as_ref())
        .await?;
    let next_cursor = match (answer.more, answer.last_sort()) {
        (true, Some(after)) => {
            // The first page read the live alias; the rest read one point in time.
            let pit = match (&answer.pit, &cursor) {
                (Some(pit), _) => pit.clone(),
                (None, Some(cursor)) => cursor.pit.clone(),
                (None, None) => {
                    let pit = state.open_pit().await?;
                    state.opened_for_first_page(&pit);
                    pit
                }
            };
            Some(
                state
                    .inner
                    .cursors
                    .seal(TRANSACTIONS_CURSOR, &scope, &CursorState { pit, after }),
            )
        }
        _ => {
            if let Some(pit) = answer.pit.clone().or(cursor.map(|c| c.pit)) {
                state.close_pit(pit);
            }
            None
        }
    };
    let facets = facets.map(|f| query::facet_counts(&answer.aggregations, &f));
    let items = answer
        .hits
        .into_iter()
        .map(transaction_hit)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(TransactionPage {
        total: answer.total,
        items,
        next_cursor,
        facets,
    }))
}

#[utoipa::path(get, path = "/v1/search/transactions/export",
    params(("format" = String, Query, description = "ndjson or csv"),
        ("q" = Option<String>, Query, description = "as for /v1/search/transactions, with the same filters and sort")),
    responses((status = 200, description = "application/x-ndjson (one transaction per line) or text/csv (with a header row)"),
        (status = 400), (status = 401), (status = 502), (status = 503)),
    security(("bearer" = [])))]
async fn export_transactions(
    State(state): State<ApiState>,
    query: RawQuery,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let mut allowed = SELECTION.to_vec();
    allowed.push("format");
    let params = Params::new(query, &allowed)?;
    let format = match params.get("format") {
        Some(raw) => ExportFormat::parse(raw)?,
        None => return Err(invalid("format", "required: ndjson or csv")),
    };
    let search = transaction_query(&params, state.inner.max_query_chars)?;
    state.read_your_writes(&headers).await?;
    // Every page reads one point in time, opened before the first.
    let pit = state.open_pit().await?;
    let export = Export {
        state: state.clone(),
        search,
        format,
        pit: Some(pit),
        after: None,
        header_sent: false,
    };
    // The first page before the answer starts, so its failure is still a problem.
    let (first, export) = match export.next_chunk().await {
        Ok(step) => step,
        Err(problem) => return Err(problem),
    };
    let rest = futures::stream::try_unfold(export, |export| async move {
        if export.pit.is_none() {
            return Ok(None);
        }
        match export.next_chunk().await {
            Ok((chunk, export)) => Ok(Some((chunk, export))),
            Err(problem) => {
                tracing::warn!(problem = ?problem.document(), "export ended early");
                Err(std::io::Error::other("the export ended early"))
            }
        }
    });
    let body = futures::stream::iter([Ok::<_, std::io::Error>(first)]);
    let stream = futures::StreamExt::chain(body, rest);
    Ok((
        [(CONTENT_TYPE, format.content_type())],
        Body::from_stream(stream),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/search/accounts",
    params(("q" = Option<String>, Query, description = "The start of words of the holder's name or email, as typed"),
        ("status" = Option<String>, Query, description = "open, frozen, closed"),
        ("country" = Option<String>, Query), ("limit" = Option<u32>, Query),
        ("Consistency-Token" = Option<String>, Header, description = "A command's token: search after its write")),
    responses((status = 200, body = AccountPage), (status = 202, description = "processing"), (status = 400),
        (status = 401), (status = 502), (status = 503)),
    security(("bearer" = [])))]
async fn search_accounts(
    State(state): State<ApiState>,
    Extension(scopes): Extension<Scopes>,
    query: RawQuery,
    headers: HeaderMap,
) -> Result<Json<AccountPage>, Problem> {
    let params = Params::new(query, &["q", "status", "country", "limit"])?;
    let email_shown = scopes.has(Scope::Pii) || !state.inner.mask_email;
    let search = AccountQuery {
        match_email: email_shown,
        text: query::text("q", params.get("q"), state.inner.max_query_chars)?,
        status: params
            .get("status")
            .map(|s| one_of("status", s, &STATUSES))
            .transpose()?,
        country: params
            .get("country")
            .map(|c| country("country", c))
            .transpose()?,
        limit: page_limit(
            params.get("limit"),
            state.inner.page_size,
            state.inner.max_page_size,
        )?,
    };
    state.read_your_writes(&headers).await?;
    let path = format!("/{}/_search", state.inner.names.accounts_alias());
    let body = query::accounts_body(&search, state.timeout_ms());
    let answer = state
        .call(Method::Post, &path, &[], Some(body), "searching accounts")
        .await?;
    if answer["timed_out"].as_bool() == Some(true) {
        return Err(query_timeout(state.timeout_ms()));
    }
    let items = answer["hits"]["hits"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|hit| {
            source::<AccountDoc>(hit).map(|mut account| {
                if !email_shown {
                    account.email = pii::mask_email(&account.email);
                }
                account
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(AccountPage { items }))
}

// ---------- export ----------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportFormat {
    Ndjson,
    Csv,
}

impl ExportFormat {
    fn parse(raw: &str) -> Result<Self, Problem> {
        match one_of("format", raw, &["ndjson", "csv"])? {
            "csv" => Ok(Self::Csv),
            _ => Ok(Self::Ndjson),
        }
    }

    fn content_type(&self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// An export under way: one page per chunk; `pit` is `None` once the last page was sent
/// (and the PIT closed).
struct Export {
    state: ApiState,
    search: TransactionQuery,
    format: ExportFormat,
    pit: Option<String>,
    after: Option<Vec<Value>>,
    header_sent: bool,
}

impl Export {
    async fn next_chunk(mut self) -> Result<(Bytes, Self), Problem> {
        let Some(pit) = self.pit.take() else {
            return Ok((Bytes::new(), self));
        };
        let request = PageRequest {
            size: self.state.inner.max_page_size,
            pit: Some(&pit),
            keep_alive: PIT_KEEP_ALIVE,
            after: self.after.as_deref(),
            timeout_ms: self.state.timeout_ms(),
            total: false,
        };
        let answer = match self.state.search_page(&self.search, &request, None).await {
            Ok(answer) => answer,
            Err(problem) => {
                self.state.close_pit(pit);
                return Err(problem);
            }
        };
        let next_pit = answer.pit.clone().unwrap_or(pit);
        if answer.more {
            self.after = answer.last_sort();
            self.pit = Some(next_pit);
        } else {
            self.state.close_pit(next_pit);
        }
        let docs = answer
            .hits
            .iter()
            .map(source::<TransactionDoc>)
            .collect::<Result<Vec<_>, _>>()?;
        let chunk = match self.format {
            ExportFormat::Ndjson => ndjson(&docs),
            ExportFormat::Csv => {
                let chunk = csv_rows(&docs, !self.header_sent)?;
                self.header_sent = true;
                chunk
            }
        };
        Ok((Bytes::from(chunk), self))
    }
}

fn ndjson(docs: &[TransactionDoc]) -> Vec<u8> {
    let mut out = Vec::new();
    for doc in docs {
        // A document that was just read from JSON serialises again.
        if serde_json::to_writer(&mut out, doc).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// CSV rows (RFC 4180 quoting: fields with a comma, quote or line break are quoted, and
/// quotes doubled), with the header row first if asked.
fn csv_rows(docs: &[TransactionDoc], header: bool) -> Result<Vec<u8>, Problem> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let failed = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "writing CSV");
        Problem::internal()
    };
    if header {
        writer
            .write_record(query::CSV_COLUMNS)
            .map_err(|e| failed(&e))?;
    }
    for doc in docs {
        writer
            .write_record(query::csv_row(doc))
            .map_err(|e| failed(&e))?;
    }
    writer.into_inner().map_err(|e| failed(&e))
}

// ---------- parameters ----------

/// The text, filters and order of a transaction search.
fn transaction_query(params: &Params, max_query_chars: usize) -> Result<TransactionQuery, Problem> {
    let code = |field: &str, allowed: &[&'static str]| {
        params
            .get(field)
            .map(|v| one_of(field, v, allowed))
            .transpose()
    };
    let amount = |field: &str| {
        params
            .get(field)
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        invalid(
                            field,
                            format!("{v:?} is not an amount in minor units (a whole number ≥ 0)"),
                        )
                    })
            })
            .transpose()
    };
    let filters = TransactionFilters {
        account_id: params.get("account_id").map(account_id).transpose()?,
        country: params
            .get("country")
            .map(|c| country("country", c))
            .transpose()?,
        merchant_country: params
            .get("merchant_country")
            .map(|c| country("merchant_country", c))
            .transpose()?,
        category: params.get("category").map(category).transpose()?,
        channel: code("channel", &CHANNELS)?,
        decision: code("decision", &DECISIONS)?,
        kind: code("kind", &KINDS)?,
        from: params
            .get("from")
            .map(|v| timestamp("from", v))
            .transpose()?,
        to: params.get("to").map(|v| timestamp("to", v)).transpose()?,
        min_amount_minor: amount("min_amount_minor")?,
        max_amount_minor: amount("max_amount_minor")?,
        currency: params.get("currency").map(currency).transpose()?,
    };
    if let (Some(from), Some(to)) = (filters.from, filters.to) {
        if from >= to {
            return Err(invalid(
                "to",
                "must be later than from (the range is [from, to))",
            ));
        }
    }
    if let (Some(min), Some(max)) = (filters.min_amount_minor, filters.max_amount_minor) {
        if min > max {
            return Err(invalid(
                "max_amount_minor",
                "must not be less than min_amount_minor",
            ));
        }
    }
    let sort = match params.get("sort") {
        Some(raw) => Sort::parse(raw.trim()).ok_or_else(|| {
            invalid(
                "sort",
                format!("{raw:?} is not one of {}", Sort::ALL.join(", ")),
            )
        })?,
        None => Sort::default(),
    };
    Ok(TransactionQuery {
        text: query::text("q", params.get("q"), max_query_chars)?,
        filters,
        sort,
    })
}

/// `facets=true` with `facet_size` (1 to `max`) and `amount_interval_minor` (≥ 1).
fn facets(params: &Params, max: u32) -> Result<Option<Facets>, Problem> {
    let size = params
        .get("facet_size")
        .map(|raw| {
            raw.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "facet_size",
                        format!("{raw:?} is not a facet size from 1 to {max}"),
                    )
                })
        })
        .transpose()?
        .unwrap_or(DEFAULT_FACET_SIZE.min(max));
    let interval = params
        .get("amount_interval_minor")
        .map(|raw| {
            raw.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    invalid(
                        "amount_interval_minor",
                        format!("{raw:?} is not a bucket width in minor units (≥ 1)"),
                    )
                })
        })
        .transpose()?
        .unwrap_or(DEFAULT_AMOUNT_INTERVAL_MINOR);
    Ok(params.flag("facets")?.then_some(Facets {
        size,
        amount_interval_minor: interval,
    }))
}

/// An MCC code: four digits.
fn category(raw: &str) -> Result<String, Problem> {
    let raw = raw.trim();
    if raw.len() == 4 && raw.bytes().all(|b| b.is_ascii_digit()) {
        Ok(raw.to_owned())
    } else {
        Err(invalid(
            "category",
            format!("{raw:?} is not a merchant category code (four digits)"),
        ))
    }
}

/// An ISO 4217 code, upper case.
fn currency(raw: &str) -> Result<String, Problem> {
    prism_events::Currency::parse(raw.trim())
        .map(|c| c.to_string())
        .map_err(|e| invalid("currency", e.to_string()))
}

// ---------- engine answers ----------

fn source<T: serde::de::DeserializeOwned>(hit: &Value) -> Result<T, Problem> {
    T::deserialize(&hit["_source"]).map_err(|e| {
        tracing::error!(error = %e, id = %hit["_id"], "a document the API cannot read");
        bad_gateway()
    })
}

fn transaction_hit(mut hit: Value) -> Result<TransactionHit, Problem> {
    let transaction = source::<TransactionDoc>(&hit)?;
    let highlight = match hit["highlight"].take() {
        Value::Object(fields) => Some(Value::Object(
            fields
                .into_iter()
                .map(|(field, fragments)| {
                    let text = fragments
                        .as_array()
                        .and_then(|f| f.first())
                        .cloned()
                        .unwrap_or(Value::Null);
                    (field, text)
                })
                .collect(),
        )),
        _ => None,
    };
    Ok(TransactionHit {
        transaction,
        highlight,
    })
}

fn bad_gateway() -> Problem {
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        "The search engine gave an unusable answer",
    )
    .detail("the search engine refused or garbled the request; it was logged")
}

fn query_timeout(ms: u64) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "query_timeout",
        "The search took too long",
    )
    .field("q")
    .detail(format!(
        "the search ran longer than {ms} ms; narrow it (fewer wildcards, more filters, \
             a shorter time range)"
    ))
}

/// A non-2xx answer of the engine, as the problem to answer.
fn engine_refused(status: u16, body: &Value, what: &str) -> Problem {
    let error = &body["error"];
    let text = error.to_string();
    let has = |needle: &str| text.contains(needle);
    if has("search_context_missing") || has("No search context found") {
        return invalid_cursor().detail(
            "the cursor expired (pages must be read within a few minutes of each other); \
             start again without a cursor",
        );
    }
    if has("too_many_buckets") {
        return invalid(
            "amount_interval_minor",
            "the amount histogram would have too many buckets; use a wider interval",
        );
    }
    if has("too_many_clauses") || has("too_many_nested_clauses") || has("maxClauseCount") {
        return invalid(
            "q",
            "the text expands to too many terms; use fewer wildcards",
        );
    }
    let detail = describe(error);
    if status == 429 || status >= 500 || has("index_not_found") || has("no_shard_available") {
        tracing::warn!(status, error = %detail, what, "search engine unavailable");
        return Problem::unavailable("the search engine is not answering; retry shortly");
    }
    tracing::error!(status, error = %detail, what, "the search engine refused a request");
    bad_gateway()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use serde_json::json;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let pairs = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut allowed = SELECTION.to_vec();
        allowed.extend(["facets", "facet_size", "amount_interval_minor"]);
        Params::from_pairs(pairs, &allowed).expect("known parameters")
    }

    fn field(p: &Problem) -> Option<&str> {
        p.document().field.as_deref()
    }

    #[test]
    fn every_bad_filter_is_named() {
        for (name, bad) in [
            ("account_id", "x"),
            ("country", "de"),
            ("merchant_country", "XX"),
            ("category", "58"),
            ("channel", "web"),
            ("decision", "maybe"),
            ("kind", "refund"),
            ("from", "yesterday"),
            ("to", "2026-13-01T00:00:00Z"),
            ("min_amount_minor", "-1"),
            ("max_amount_minor", "1.5"),
            ("currency", "EURO"),
            ("sort", "price"),
            ("q", "a\u{7}b"),
        ] {
            let err = transaction_query(&params(&[(name, bad)]), 500).expect_err(name);
            assert_eq!(err.status_code(), StatusCode::BAD_REQUEST, "{name}");
            assert_eq!(field(&err), Some(name), "{name}");
        }
        let err = transaction_query(
            &params(&[
                ("from", "2026-11-02T00:00:00Z"),
                ("to", "2026-11-01T00:00:00Z"),
            ]),
            500,
        )
        .expect_err("empty range");
        assert_eq!(field(&err), Some("to"));
        let err = transaction_query(
            &params(&[("min_amount_minor", "10"), ("max_amount_minor", "9")]),
            500,
        )
        .expect_err("empty amount range");
        assert_eq!(field(&err), Some("max_amount_minor"));
        let q = "x".repeat(501);
        let err = transaction_query(&params(&[("q", &q)]), 500).expect_err("long");
        assert_eq!(field(&err), Some("q"));
    }

    #[test]
    fn good_filters_are_kept() {
        let search = transaction_query(
            &params(&[
                ("q", " crypto "),
                ("country", "DE"),
                ("category", "5812"),
                ("channel", "online"),
                ("currency", "EUR"),
                ("sort", "amount"),
            ]),
            500,
        )
        .expect("valid");
        assert_eq!(search.text.as_deref(), Some("crypto"));
        assert_eq!(search.filters.country.as_deref(), Some("DE"));
        assert_eq!(search.filters.category.as_deref(), Some("5812"));
        assert_eq!(search.filters.channel, Some("online"));
        assert_eq!(search.filters.currency.as_deref(), Some("EUR"));
        assert_eq!(search.sort, Sort::AmountAsc);
    }

    #[test]
    fn facet_limits_are_named() {
        assert_eq!(facets(&params(&[]), 50), Ok(None));
        let f = facets(&params(&[("facets", "true")]), 50).expect("ok");
        assert_eq!(
            f,
            Some(Facets {
                size: DEFAULT_FACET_SIZE,
                amount_interval_minor: DEFAULT_AMOUNT_INTERVAL_MINOR
            })
        );
        let err =
            facets(&params(&[("facets", "true"), ("facet_size", "51")]), 50).expect_err("too many");
        assert_eq!(field(&err), Some("facet_size"));
        let err = facets(&params(&[("amount_interval_minor", "0")]), 50).expect_err("zero");
        assert_eq!(field(&err), Some("amount_interval_minor"));
        let err = facets(&params(&[("facets", "yes")]), 50).expect_err("not a flag");
        assert_eq!(field(&err), Some("facets"));
    }

    #[test]
    fn engine_failures_become_the_right_problems() {
        let expired =
            json!({ "error": { "root_cause": [{ "type": "search_context_missing_exception" }] } });
        let p = engine_refused(404, &expired, "t");
        assert_eq!(p.document().code, "invalid_cursor");
        let buckets = json!({ "error": { "type": "too_many_buckets_exception" } });
        assert_eq!(
            field(&engine_refused(400, &buckets, "t")),
            Some("amount_interval_minor")
        );
        let down = json!({ "error": { "type": "cluster_block_exception" } });
        assert_eq!(
            engine_refused(503, &down, "t").status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let missing = json!({ "error": { "type": "index_not_found_exception" } });
        assert_eq!(
            engine_refused(404, &missing, "t").status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let refused = json!({ "error": { "type": "parsing_exception" } });
        assert_eq!(
            engine_refused(400, &refused, "t").status_code(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            engine_refused(400, &json!("proxy page"), "t").status_code(),
            StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let doc: TransactionDoc = serde_json::from_value(json!({
            "event_id": "0190b0b0-0000-7000-8000-000000000001",
            "account_id": "0190b0b0-0000-7000-8000-000000000002",
            "version": 2, "kind": "card_payment", "holder_name": "Zoë \"Z\" Müller",
            "holder_country": "DE", "merchant_name": "Café, Lisboa", "category_code": "5812",
            "merchant_country": "PT", "channel": "pos", "amount_minor": 1250, "currency": "EUR",
            "time": "2026-11-27T21:05:00Z", "decision": "approved",
            "description": "two\nlines"
        }))
        .expect("a document");
        let text = String::from_utf8(csv_rows(&[doc], true).expect("csv")).expect("utf-8");
        let mut lines = text.split("\r\n");
        assert_eq!(lines.next(), Some(query::CSV_COLUMNS.join(",").as_str()));
        let rest: String = lines.collect::<Vec<_>>().join("\r\n");
        assert!(rest.contains("\"Zoë \"\"Z\"\" Müller\""), "{rest}");
        assert!(rest.contains("\"Café, Lisboa\""), "{rest}");
        assert!(rest.contains("\"two\nlines\""), "{rest}");
        let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let record = reader.records().next().expect("a row").expect("parses");
        assert_eq!(&record[9], "Zoë \"Z\" Müller");
        assert_eq!(&record[11], "Café, Lisboa");
        assert_eq!(&record[16], "two\nlines");
    }

    #[tokio::test]
    async fn concurrent_waiters_share_refreshes() {
        let refresher = Arc::new(Refresher::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let refresher = Arc::clone(&refresher);
            let runs = Arc::clone(&runs);
            tasks.push(tokio::spawn(async move {
                refresher
                    .refresh(|| async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok(())
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.expect("joins"), Ok(()));
        }
        let runs = runs.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&runs),
            "{runs} refreshes for 20 concurrent waiters"
        );
        // A caller arriving after they all finished gets a refresh of its own.
        let again = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&again);
        refresher
            .refresh(|| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await
            .expect("refreshed");
        assert_eq!(again.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_refresh_is_not_taken_as_done() {
        let refresher = Refresher::default();
        let failed = refresher
            .refresh(|| async { Err(Problem::unavailable("down")) })
            .await;
        assert!(failed.is_err());
        let ran = AtomicUsize::new(0);
        refresher
            .refresh(|| async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await
            .expect("refreshed");
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
