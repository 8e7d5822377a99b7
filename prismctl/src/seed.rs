//! `prismctl seed`: fills an event store with a long seeded history, fast, so that the
//! write path, the relay, the projectors and `verify` can be measured at millions of events.
//!
//! The history is the seeded traffic model's ([`crate::traffic::Events`]: accounts opened,
//! funded, then everyday deposits, withdrawals, card payments and a few suspicious
//! episodes), one commit per event, written through the store's raw insert
//! (`insert_unchecked`: exactly the document or rows an append writes, unpublished, without
//! the command path's load and idempotency). The relay of a running prism-command publishes
//! them to Kafka like any other backlog, so the projectors receive them too.
//!
//! Each account has one writer task (accounts are dealt to `--concurrency` tasks), so its
//! versions land in order. The timestamps are spaced `--step` apart and end now. The same
//! `--seed` writes the same accounts (account ids included): a second run with it is refused by the
//! store's unique (account, version) guard, and the error says to pick another seed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prism_events::Envelope;
use prism_platform::config::EventStoreBackend;
use prism_platform::Config;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::bench::command::{Backend, RawStore};
use crate::loadgen::parse_duration;
use crate::traffic::Events;

/// Most events one run writes.
const MAX_EVENTS: u64 = 100_000_000;
const MAX_CONCURRENCY: usize = 256;
/// Events queued per writer task ahead of its inserts.
const QUEUE: usize = 1_024;
/// Share of accounts that go through a suspicious episode (as `loadgen`'s default).
const SUSPICIOUS_SHARE: f64 = 0.02;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events to write, the accounts' openings included.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Accounts the events are spread over (each opened before its other events).
    #[arg(long, default_value_t = 20_000)]
    pub accounts: usize,
    /// Seed of the traffic model; the same seed writes the same accounts, account ids included.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Concurrent writer tasks (each account has exactly one).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Time between two consecutive events' timestamps (e.g. 50ms, 2s); the last is now.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    pub step: Duration,
    /// Event store to fill (default: `event_store.backend` of the configuration): the
    /// configured database (MongoDB) or schema (PostgreSQL).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Print the summary as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// What a run wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Seeded {
    pub backend: &'static str,
    /// The database (MongoDB) or schema (PostgreSQL) written.
    pub store: String,
    pub events: u64,
    pub accounts: usize,
    pub seed: u64,
    pub seconds: f64,
    pub per_second: f64,
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    if let Err(problem) = check(args) {
        eprintln!("prismctl seed: {problem}");
        return Ok(ExitCode::from(2));
    }
    let backend = args
        .backend
        .map_or(config.event_store.backend, EventStoreBackend::from);
    let name = match backend {
        EventStoreBackend::Mongodb => config.mongodb.database.clone(),
        EventStoreBackend::Postgres => config.event_store.postgres_schema.clone(),
    };
    let seeded = seed(config, backend, &name, args, !args.json).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&seeded)?);
    } else {
        println!(
            "seeded {} events over {} accounts (seed {}) into the {} store {} in {:.1} s ({:.0} events/s)",
            seeded.events,
            seeded.accounts,
            seeded.seed,
            seeded.backend,
            seeded.store,
            seeded.seconds,
            seeded.per_second
        );
        println!("  they are unpublished: a running prism-command's relay publishes them to Kafka");
    }
    Ok(ExitCode::SUCCESS)
}

/// The arguments' limits, as a message naming the flag.
fn check(args: &Args) -> Result<(), String> {
    if !(1..=MAX_EVENTS).contains(&args.events) {
        return Err(format!("--events must be 1 to {MAX_EVENTS}"));
    }
    if args.accounts == 0 || args.accounts as u64 > args.events {
        return Err("--accounts must be at least 1 and at most --events".into());
    }
    if !(1..=MAX_CONCURRENCY).contains(&args.concurrency) {
        return Err(format!("--concurrency must be 1 to {MAX_CONCURRENCY}"));
    }
    if args.step.is_zero() || chrono::Duration::from_std(args.step).is_err() {
        return Err("--step must be a positive duration".into());
    }
    Ok(())
}

/// The ids of the accounts `args` writes, in the order the history first touches them.
pub fn account_ids(args: &Args) -> Vec<String> {
    let step = chrono::Duration::from_std(args.step).unwrap_or(chrono::Duration::zero());
    let history = Events::new(
        args.seed,
        args.accounts,
        SUSPICIOUS_SHARE,
        chrono::Utc::now(),
        step,
    );
    let mut seen = std::collections::HashSet::new();
    history
        .take(usize::try_from(args.events).unwrap_or(usize::MAX))
        .filter(|(_, event)| seen.insert(event.account_id))
        .map(|(_, event)| event.account_id.to_string())
        .collect()
}

/// Writes `args.events` events of the seeded history into the store `name` of `backend`
/// (created if missing). Fails on the first refused insert, naming the event.
pub async fn seed(
    config: &Config,
    backend: EventStoreBackend,
    name: &str,
    args: &Args,
    progress: bool,
) -> anyhow::Result<Seeded> {
    check(args).map_err(anyhow::Error::msg)?;
    let store = RawStore::open(config, backend, name)
        .await
        .context("opening the event store (is the stack up? `dev/stack up`)")?;
    let step = chrono::Duration::from_std(args.step).context("--step")?;
    let span = step
        .checked_mul(i32::try_from(args.events).unwrap_or(i32::MAX))
        .context("--events × --step is too long a history")?;
    let start = chrono::Utc::now() - span;
    let bar = bar(progress, args.events);

    // One producer deals the events to the writers by account, so that an account's
    // versions are written by one task, in order.
    let mut senders = Vec::with_capacity(args.concurrency);
    let mut writers = JoinSet::new();
    for _ in 0..args.concurrency {
        let (sender, mut receiver) = mpsc::channel::<Envelope>(QUEUE);
        senders.push(sender);
        let (store, bar) = (store.clone(), bar.clone());
        writers.spawn(async move {
            while let Some(event) = receiver.recv().await {
                store
                    .insert(std::slice::from_ref(&event))
                    .await
                    .with_context(|| {
                        format!(
                            "writing event {} (account {}, version {}); if this store was seeded \
                         with the same --seed before, its accounts are there already: pick \
                         another seed",
                            event.id, event.account_id, event.account_version
                        )
                    })?;
                bar.inc(1);
            }
            anyhow::Ok(())
        });
    }
    let (events, accounts, seed) = (args.events, args.accounts, args.seed);
    let started = Instant::now();
    let producer = tokio::task::spawn_blocking(move || {
        let history = Events::new(seed, accounts, SUSPICIOUS_SHARE, start, step);
        for (account, event) in history.take(usize::try_from(events).unwrap_or(usize::MAX)) {
            let writer = &senders[account % senders.len()];
            if writer.blocking_send(event).is_err() {
                // A writer failed: its error is reported below.
                break;
            }
        }
    });
    let mut failure = None;
    while let Some(joined) = writers.join_next().await {
        let outcome = joined
            .map_err(anyhow::Error::from)
            .and_then(|written| written);
        if let Err(e) = outcome {
            // Stop the others: their queues close once the producer sees a closed one.
            writers.abort_all();
            failure.get_or_insert(e);
        }
    }
    producer.await.context("the event producer")?;
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    let written = bar.position();
    if written != events {
        bail!("the traffic model ended after {written} of {events} events");
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Seeded {
        backend: match backend {
            EventStoreBackend::Mongodb => "mongodb",
            EventStoreBackend::Postgres => "postgres",
        },
        store: name.to_owned(),
        events,
        accounts,
        seed,
        seconds,
        per_second: events as f64 / seconds.max(1e-9),
    })
}

fn bar(show: bool, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if !show {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} seeding [{elapsed_precise}] {bar:30} {human_pos}/{human_len} {per_sec:>14} ETA {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            events: 100,
            accounts: 10,
            seed: 1,
            concurrency: 4,
            step: Duration::from_millis(50),
            backend: None,
            json: false,
        }
    }

    #[test]
    fn limits_name_their_flag() {
        assert!(check(&args()).is_ok());
        for (change, flag) in [
            (
                Box::new(|a: &mut Args| a.events = 0) as Box<dyn Fn(&mut Args)>,
                "--events",
            ),
            (Box::new(|a: &mut Args| a.accounts = 0), "--accounts"),
            (Box::new(|a: &mut Args| a.accounts = 101), "--accounts"),
            (Box::new(|a: &mut Args| a.concurrency = 0), "--concurrency"),
            (Box::new(|a: &mut Args| a.step = Duration::ZERO), "--step"),
        ] {
            let mut a = args();
            change(&mut a);
            let problem = check(&a).expect_err(flag);
            assert!(problem.contains(flag), "{problem}");
        }
    }
}
