//! Phase 2: the latency of faceted free-text searches through the real search API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use elasticsearch::indices::IndicesRefreshParts;
use elasticsearch::CountParts;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prism_platform::auth::{Auth, Scope, TokenConfig};
use prism_platform::Config;
use prism_search::copies::SearchCopies;
use prism_search::http::{router, ApiState};
use reqwest::header::AUTHORIZATION;
use tokio::task::JoinSet;

use super::super::ledger::report::bar;
use super::{search_on, Args, QueryFigures, QUERY_P99_GOAL_MS};
use crate::loadgen::Latency;
use crate::sample;

/// The searches sent in turn: free text over merchants and holders (accents folded:
/// "muller" finds Müller, "zoe" Zoë), one or two filters, facets. All have hits in the
/// seeded workload.
const SHAPES: &[&str] = &[
    "q=muller&channel=pos&facets=true",
    "q=zo%C3%AB%20m%C3%BCller&facets=true",
    "q=caf%C3%A9&decision=approved&facets=true",
    "q=market&country=DE&channel=pos&facets=true",
    "q=gamecoins%20topup&channel=online&facets=true",
    "q=pharmacy&category=5912&facets=true",
    "q=sushi%20hana&kind=card_payment&facets=true",
    "q=fuel&min_amount_minor=2000&facets=true",
];

/// Unmeasured searches per client before the measured ones (caches, JIT, connections).
const WARMUP_PER_CLIENT: u64 = 5;
/// Longest one search may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Stats {
    latency_us: Histogram<u64>,
    errors: u64,
    examples: Vec<String>,
    total_hits: u64,
}

/// Serves the search API over the copy under `prefix` on a port-0 listener and measures.
pub(super) async fn measure(
    config: &Config,
    args: &Args,
    prefix: &str,
    group: &str,
) -> anyhow::Result<QueryFigures> {
    let projector = search_on(config, prefix, group)?;
    let mut search = projector.search_config().clone();
    let token = uuid::Uuid::new_v4().simple().to_string();
    search.auth_enabled = true;
    let copies = SearchCopies::connect(&config.elasticsearch, &search)
        .await
        .context("opening the projector's copy")?;
    let copy = copies.live().await.context("the projector's copy")?;

    // Everything the projector wrote becomes searchable now, not on the next refresh.
    let alias = copies.names().transactions_alias();
    copy.client
        .indices()
        .refresh(IndicesRefreshParts::Index(&[&alias]))
        .send()
        .await
        .and_then(|r| r.error_for_status_code())
        .with_context(|| format!("refreshing {alias}"))?;
    let count: serde_json::Value = copy
        .client
        .count(CountParts::Index(&[&alias]))
        .send()
        .await
        .and_then(|r| r.error_for_status_code())
        .with_context(|| format!("counting {alias}"))?
        .json()
        .await
        .context("reading the count")?;
    let documents = count["count"].as_u64().unwrap_or(0);

    // No consistency waits in this phase: the progress signal never moves.
    let (_progress, progress) = tokio::sync::watch::channel(0);
    let live = copy.clone();
    let auth = Auth::new(
        true,
        &[TokenConfig::new("bench", &token, &[Scope::SearchRead])],
        Scope::SearchRead,
    );
    let state = ApiState::new(
        move || live.clone(),
        &search,
        auth,
        progress,
        &prometheus::Registry::new(),
    )
    .context("setting up the search API")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the search API's listener")?;
    let address = listener.local_addr().context("the listener's address")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });

    let base = format!("http://{address}/v1/search/transactions");
    let outcome = send_all(args, &base, &token).await;
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the bench's search API failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the bench's search API crashed"),
        Err(_) => tracing::warn!("the bench's search API did not stop in time"),
    }
    let (stats, elapsed, machine_cpu_busy) = outcome?;
    let measured = stats.latency_us.len();
    let latency_ms = Latency::of(&stats.latency_us);
    Ok(QueryFigures {
        documents,
        clients: args.query_clients,
        queries: measured,
        errors: stats.errors,
        warmup_queries: WARMUP_PER_CLIENT * args.query_clients as u64,
        elapsed_s: elapsed.as_secs_f64(),
        per_second: measured as f64 / elapsed.as_secs_f64().max(1e-6),
        mean_total_hits: stats.total_hits as f64 / measured.max(1) as f64,
        shapes: SHAPES
            .iter()
            .map(|s| format!("GET /v1/search/transactions?{s}"))
            .collect(),
        machine_cpu_busy,
        goal_p99_ms: QUERY_P99_GOAL_MS,
        goal_met: measured > 0 && stats.errors == 0 && latency_ms.p99 <= QUERY_P99_GOAL_MS,
        latency_ms,
        error_examples: stats.examples,
    })
}

/// The warm-up, then `--queries` searches shared by `--query-clients` clients, closed
/// loop. The stats, the measured time and the machine's busy share in it.
async fn send_all(
    args: &Args,
    base: &str,
    token: &str,
) -> anyhow::Result<(Stats, Duration, Option<f64>)> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(args.query_clients)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let stats = Arc::new(Mutex::new(Stats {
        latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        errors: 0,
        examples: Vec::new(),
        total_hits: 0,
    }));

    // Warm-up: every shape a few times, from every client, not measured.
    let mut warm = JoinSet::new();
    for client in 0..args.query_clients {
        let (http, base, token) = (http.clone(), base.to_owned(), token.to_owned());
        warm.spawn(async move {
            for i in 0..WARMUP_PER_CLIENT {
                let shape = SHAPES[(client + i as usize) % SHAPES.len()];
                let _ = search(&http, &base, shape, &token).await;
            }
        });
    }
    while warm.join_next().await.is_some() {}

    let bar = bar("searches", Some(args.queries));
    let next = Arc::new(AtomicU64::new(0));
    let before = sample::machine_jiffies();
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for _ in 0..args.query_clients {
        let (http, base, token) = (http.clone(), base.to_owned(), token.to_owned());
        let (next, stats, bar, total) = (
            Arc::clone(&next),
            Arc::clone(&stats),
            bar.clone(),
            args.queries,
        );
        clients.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let shape = SHAPES[usize::try_from(i).unwrap_or(0) % SHAPES.len()];
                let began = Instant::now();
                let answer = search(&http, &base, shape, &token).await;
                let took = began.elapsed();
                let mut s = stats.lock();
                match answer {
                    Ok(hits) => {
                        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
                        s.latency_us.saturating_record(us);
                        s.total_hits += hits;
                    }
                    Err(e) => {
                        s.errors += 1;
                        if s.examples.len() < 5 {
                            s.examples.push(format!("{e:#}"));
                        }
                    }
                }
                bar.inc(1);
            }
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined.map_err(|e| anyhow!("a search client failed: {e}"))?;
    }
    let elapsed = started.elapsed();
    let busy = sample::busy_since(before);
    bar.finish_and_clear();
    let stats = Arc::try_unwrap(stats)
        .map_err(|_| anyhow!("a search client outlived the phase"))?
        .into_inner();
    Ok((stats, elapsed, busy))
}

/// One search; its `total` when the API answered 200.
async fn search(
    http: &reqwest::Client,
    base: &str,
    shape: &str,
    token: &str,
) -> anyhow::Result<u64> {
    let response = http
        .get(format!("{base}?{shape}"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .with_context(|| format!("GET ?{shape}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("reading the answer to ?{shape}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(anyhow!("?{shape} answered {status}: {body}"));
    }
    Ok(body["total"]
        .as_u64()
        .or_else(|| body["total"]["value"].as_u64())
        .unwrap_or(0))
}
