//! Phase 3: from a command's acceptance to its event being searchable, under a steady
//! open-loop rate of card payments.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use elasticsearch::{Elasticsearch, SearchParts};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prism_platform::auth::{Scope, TokenConfig};
use prism_platform::Config;
use prism_search::index::Names as IndexNames;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::super::ledger::report::bar;
use super::{search_on, Args, FreshnessFigures, FRESHNESS_P99_GOAL_MS};
use crate::loadgen::{Latency, TokenBucket};
use crate::sample;
use crate::services::{self, Api, Kind, Scratch, Service, STOP_TIMEOUT};
use crate::traffic::{Op, Traffic};

/// How often the shared poller searches for every pending event id.
pub const POLL: Duration = Duration::from_millis(20);
/// How long an accepted command may take to become searchable before it counts as never.
pub const NEVER: Duration = Duration::from_secs(60);
/// Accounts the payments go to (opened and funded first, not measured).
const ACCOUNTS: usize = 200;
/// Concurrency of the (unmeasured) opening and funding.
const OPENING_CONCURRENCY: usize = 16;
/// Most commands in flight at once; more means the write side does not keep up.
const MAX_IN_FLIGHT: usize = 1_000;
/// Most ids in one poll (the rest wait for the next).
const IDS_PER_POLL: usize = 2_000;

/// Event ids waiting to be found: when their command was accepted, and whether they count.
type Pending = Mutex<HashMap<String, (Instant, bool)>>;

struct Stats {
    sent: u64,
    accepted: u64,
    rejected: u64,
    errors: u64,
    searchable: u64,
    never: u64,
    examples: Vec<String>,
    delay_us: Histogram<u64>,
    command_us: Histogram<u64>,
}

impl Stats {
    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.examples.len() < 5 {
            self.examples.push(message);
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Starts prism-command and prism-search on names of their own, measures, stops them and
/// drops what they created.
pub(super) async fn measure(config: &Config, args: &Args) -> anyhow::Result<FreshnessFigures> {
    let scratch = Scratch::new("prism_bench_search", config.event_store.backend);
    let mut cfg = config.clone();
    scratch.apply(&mut cfg);
    cfg.relay.enabled = true;
    let token = uuid::Uuid::new_v4().simple().to_string();
    cfg.command.auth_enabled = true;
    cfg.auth.tokens = vec![TokenConfig::new("bench", &token, &Scope::ALL)];
    let projector = search_on(&cfg, &scratch.search_prefix, &scratch.search_group())?;
    let refresh_interval_ms = projector.search_config().refresh_interval_ms;

    let down: Vec<String> = services::check_stack(&cfg)
        .await
        .into_iter()
        .filter_map(|c| {
            c.result
                .err()
                .map(|e| format!("{} at {}: {e}", c.service, c.address))
        })
        .collect();
    if !down.is_empty() {
        bail!(
            "not answering: {}; start the local stack with `dev/stack up`",
            down.join("; ")
        );
    }

    let mut command: Option<Service> = None;
    let mut search: Option<Service> = None;
    let measured = start_and_measure(&cfg, args, &token, &scratch, &mut command, &mut search).await;
    // prism-command first (its relay drains), then prism-search.
    let mut store_in_use = false;
    for (service, is_command) in [(command.as_mut(), true), (search.as_mut(), false)] {
        let Some(service) = service else { continue };
        if let Err(e) = service.stop(STOP_TIMEOUT).await {
            eprintln!(
                "prismctl: bench search: stopping {}: {e:#}",
                service.kind().name()
            );
            store_in_use |= is_command;
        }
    }
    if !args.keep {
        for failure in scratch.remove(&cfg, store_in_use).await {
            eprintln!("prismctl: bench search: left behind: {failure}; drop it by hand");
        }
    }
    let mut figures = measured?;
    figures.topic = scratch.topic.clone();
    figures.refresh_interval_ms = refresh_interval_ms;
    Ok(figures)
}

async fn start_and_measure(
    config: &Config,
    args: &Args,
    token: &str,
    scratch: &Scratch,
    command: &mut Option<Service>,
    search: &mut Option<Service>,
) -> anyhow::Result<FreshnessFigures> {
    let spinner = bar("starting prism-command and prism-search", None);
    let listener = services::bind(Kind::Command, "127.0.0.1:0").await?;
    let started = command.insert(Service::start(Kind::Command, config.clone(), listener)?);
    started
        .wait_ready(Duration::from_secs(60), |why| {
            spinner.set_message(why.to_owned())
        })
        .await?;
    let command_url = started.url().to_owned();
    // prism-search after the command service: the topic exists by then.
    let listener = services::bind(Kind::Search, "127.0.0.1:0").await?;
    let started = search.insert(Service::start(Kind::Search, config.clone(), listener)?);
    started
        .wait_ready(Duration::from_secs(120), |why| {
            spinner.set_message(why.to_owned())
        })
        .await?;
    let search_url = started.url().to_owned();
    spinner.finish_and_clear();

    // Only prism-command's API is used: searchability is asked of the engine itself.
    let api = Api::new(
        &command_url,
        &search_url,
        token,
        Duration::from_secs(30),
        64,
    )?;
    let engine = prism_platform::clients::elasticsearch(&config.elasticsearch)?;
    let alias = IndexNames::new(scratch.search_prefix.as_str()).transactions_alias();
    let pending: Arc<Pending> = Arc::default();
    let stats = Arc::new(Mutex::new(Stats {
        sent: 0,
        accepted: 0,
        rejected: 0,
        errors: 0,
        searchable: 0,
        never: 0,
        examples: Vec::new(),
        delay_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        command_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn(poll(
        engine,
        alias,
        Arc::clone(&pending),
        Arc::clone(&stats),
        Arc::clone(&stop),
    ));
    let outcome = send(&api, args, &pending, &stats).await;
    stop.store(true, Ordering::Relaxed);
    let poller = poller
        .await
        .map_err(|e| anyhow!("the searchability poller failed: {e}"));
    let (window, machine_cpu_busy) = outcome?;
    poller??;

    let s = stats.lock();
    let secs = window.as_secs_f64();
    let latency_ms = Latency::of(&s.delay_us);
    Ok(FreshnessFigures {
        topic: String::new(),
        accounts: ACCOUNTS,
        target_rate: args.rate,
        duration_s: secs,
        sent: s.sent,
        achieved_rate: s.sent as f64 / secs.max(1e-6),
        accepted: s.accepted,
        rejected: s.rejected,
        errors: s.errors,
        searchable: s.searchable,
        never_searchable: s.never,
        command_ms: Latency::of(&s.command_us),
        poll_interval_ms: u64::try_from(POLL.as_millis()).unwrap_or(u64::MAX),
        refresh_interval_ms: 0,
        machine_cpu_busy,
        goal_p99_ms: FRESHNESS_P99_GOAL_MS,
        goal_met: s.searchable > 0
            && s.never == 0
            && s.errors == 0
            && latency_ms.p99 <= FRESHNESS_P99_GOAL_MS,
        latency_ms,
        error_examples: s.examples.clone(),
    })
}

/// Opens and funds the accounts (closed loop, unmeasured) and waits until the funding is
/// searchable (the pipeline is warm); then sends card payments open loop at `--rate` for
/// `--duration` and waits until every accepted one was found or given up. The sending
/// window and the machine's busy share in it.
async fn send(
    api: &Api,
    args: &Args,
    pending: &Arc<Pending>,
    stats: &Arc<Mutex<Stats>>,
) -> anyhow::Result<(Duration, Option<f64>)> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut traffic = Traffic::new(args.seed, ACCOUNTS, 0.0);
    let onboarding: Vec<_> = traffic.by_ref().take(2 * ACCOUNTS).collect();
    let (opens, fundings) = onboarding.split_at(ACCOUNTS);

    let spinner = bar("opening and funding accounts", None);
    let semaphore = Arc::new(Semaphore::new(OPENING_CONCURRENCY));
    let mut ids: Vec<Option<String>> = vec![None; ACCOUNTS];
    let mut tasks = JoinSet::new();
    for step in opens {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let (api, op, key) = (
            api.clone(),
            step.op.clone(),
            format!("bs-{run_id}-{}", step.seq),
        );
        let index = step.account;
        tasks.spawn(async move {
            let reply = api.command(&op, "", Some(&key)).await;
            drop(permit);
            (index, reply)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (index, reply) = joined.map_err(|e| anyhow!("an opening task failed: {e}"))?;
        let reply = reply?;
        let id = reply
            .account_id()
            .filter(|_| reply.accepted())
            .ok_or_else(|| anyhow!("opening an account answered {}", reply.describe()))?;
        if let Some(slot) = ids.get_mut(index) {
            *slot = Some(id.to_owned());
        }
    }
    let mut tasks = JoinSet::new();
    for step in fundings {
        let Some(account) = ids.get(step.account).cloned().flatten() else {
            continue;
        };
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let (api, op, key) = (
            api.clone(),
            step.op.clone(),
            format!("bs-{run_id}-{}", step.seq),
        );
        tasks.spawn(async move {
            let reply = api.command(&op, &account, Some(&key)).await;
            drop(permit);
            reply
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let reply = joined.map_err(|e| anyhow!("a funding task failed: {e}"))??;
        if !reply.accepted() {
            bail!("funding an account answered {}", reply.describe());
        }
        for id in event_ids(&reply.body) {
            pending.lock().insert(id, (reply.answered_at, false));
        }
    }
    spinner.set_prefix("waiting for the funding to be searchable");
    let deadline = Instant::now() + NEVER;
    while !pending.lock().is_empty() {
        if Instant::now() > deadline {
            bail!(
                "the accounts' funding was not searchable within {} s",
                NEVER.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    spinner.finish_and_clear();

    let ids = Arc::new(ids);
    let bar = bar("card payments", None);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut bucket = TokenBucket::new(args.rate);
    let mut tasks = JoinSet::new();
    let before = sample::machine_jiffies();
    let started = Instant::now();
    let end = started + args.duration;
    let payments = traffic.filter(|s| matches!(s.op, Op::Pay { .. }));
    for step in payments {
        bucket.take().await;
        if Instant::now() >= end {
            break;
        }
        let Some(account) = ids.get(step.account).cloned().flatten() else {
            continue;
        };
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .context("the in-flight limit closed")?;
        stats.lock().sent += 1;
        let key = format!("bs-{run_id}-{}", step.seq);
        let (api, counts, pending) = (api.clone(), Arc::clone(stats), Arc::clone(pending));
        tasks.spawn(async move {
            let reply = api.command(&step.op, &account, Some(&key)).await;
            drop(permit);
            // The pending ids first, the stats after: never both locks at once (the poller
            // takes them in that order too).
            if let Ok(reply) = &reply {
                if reply.accepted() {
                    let mut p = pending.lock();
                    for id in event_ids(&reply.body) {
                        p.insert(id, (reply.answered_at, true));
                    }
                }
            }
            let mut s = counts.lock();
            match reply {
                Ok(reply) if reply.accepted() => {
                    s.accepted += 1;
                    s.command_us.saturating_record(micros(reply.latency()));
                    if event_ids(&reply.body).is_empty() {
                        s.error(format!(
                            "an accepted payment named no event: {}",
                            reply.body
                        ));
                    }
                }
                Ok(reply) if matches!(reply.status, 409 | 422) => s.rejected += 1,
                Ok(reply) => s.error(format!("pay answered {}", reply.describe())),
                Err(e) => s.error(format!("{e:#}")),
            }
        });
        while tasks.try_join_next().is_some() {}
        let (sent, found) = {
            let s = stats.lock();
            (s.sent, s.searchable)
        };
        bar.set_message(format!("sent {sent}, searchable {found}"));
    }
    let window = started.elapsed().min(args.duration);
    let busy = sample::busy_since(before);
    while tasks.join_next().await.is_some() {}
    bar.set_prefix("waiting for the last payments to be searchable");
    let deadline = Instant::now() + NEVER + POLL * 10;
    while !pending.lock().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    bar.finish_and_clear();
    Ok((window, busy))
}

/// The `event_ids` of a command's answer.
fn event_ids(body: &serde_json::Value) -> Vec<String> {
    body["event_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The one poller: every [`POLL`], an `ids` search on the transactions alias for the
/// pending ids; a found id's delay is the search's answer time − its command's answer
/// time. Ids pending longer than [`NEVER`] are given up. Runs until `stop` and nothing is
/// pending (or all that is left was given up).
async fn poll(
    engine: Elasticsearch,
    alias: String,
    pending: Arc<Pending>,
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tick.tick().await;
        let ids: Vec<String> = {
            let now = Instant::now();
            let mut p = pending.lock();
            let expired: Vec<String> = p
                .iter()
                .filter(|(_, (at, _))| now.duration_since(*at) > NEVER)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                if let Some((_, true)) = p.remove(&id) {
                    stats.lock().never += 1;
                }
            }
            p.keys().take(IDS_PER_POLL).cloned().collect()
        };
        if ids.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            continue;
        }
        let answer = engine
            .search(SearchParts::Index(&[&alias]))
            .filter_path(&["hits.hits._id"])
            .body(json!({
                "query": { "ids": { "values": ids } },
                "size": ids.len(),
                "_source": false,
            }))
            .send()
            .await
            .and_then(|r| r.error_for_status_code());
        let body: serde_json::Value = match answer {
            Ok(response) => match response.json().await {
                Ok(body) => body,
                Err(e) => {
                    failures += 1;
                    tracing::debug!(error = %e, "an unreadable poll answer");
                    continue;
                }
            },
            Err(e) => {
                // The engine busy for a moment: the next poll asks again (and the delays
                // show it); a long outage ends the phase.
                failures += 1;
                if failures > 500 {
                    return Err(anyhow!(e).context("searching for the pending event ids"));
                }
                continue;
            }
        };
        let answered = Instant::now();
        let found = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
        let mut p = pending.lock();
        let mut s = stats.lock();
        for hit in found {
            let Some(id) = hit["_id"].as_str() else {
                continue;
            };
            if let Some((accepted, measured)) = p.remove(id) {
                if measured {
                    s.searchable += 1;
                    s.delay_us
                        .saturating_record(micros(answered.saturating_duration_since(accepted)));
                }
            }
        }
    }
}
