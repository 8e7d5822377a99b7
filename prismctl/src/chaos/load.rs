//! The chaos run's traffic: the seeded traffic model of `prismctl loadgen`, spread over the
//! prism-command instances, at a steady rate, with an idempotency key on every command
//! (so a retry after a lost answer is answered from the stored commit, not stored twice).
//! It keeps the event id of every command that got a success answer: the end of the run
//! checks that each one is in the event store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::loadgen::{Client, TokenBucket};
use crate::traffic::{Op, Traffic};

/// What the traffic saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// The first event id of every success answer.
    pub succeeded: Vec<Uuid>,
    /// Answers by outcome label (`accepted`, `http_503`, `transport:connect`, …).
    pub outcomes: BTreeMap<String, u64>,
}

/// The traffic, running in the background until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Starts `rate` commands per second over `accounts` accounts of `seed`, alternating
    /// between `clients` (one per prism-command instance), `concurrency` in flight at most.
    pub fn start(
        clients: Vec<Client>,
        seed: u64,
        accounts: usize,
        rate: f64,
        concurrency: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(drive(
            clients,
            seed,
            accounts,
            rate,
            concurrency,
            Arc::clone(&stop),
            Arc::clone(&seen),
        ));
        Self { stop, seen, task }
    }

    /// Commands that got a success answer so far.
    pub fn succeeded(&self) -> usize {
        self.seen.lock().succeeded.len()
    }

    /// Stops sending, waits for the answers in flight and returns what was seen.
    pub async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        std::mem::take(&mut *self.seen.lock())
    }
}

async fn drive(
    clients: Vec<Client>,
    seed: u64,
    accounts: usize,
    rate: f64,
    concurrency: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    if clients.is_empty() {
        return;
    }
    let run = Uuid::new_v4().simple().to_string();
    let mut ids: Vec<Option<String>> = vec![None; accounts];
    let semaphore = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut bucket = TokenBucket::new(rate);
    // Opens answer with the account's index and id.
    let mut tasks: JoinSet<Option<(usize, String)>> = JoinSet::new();
    let mut opening = true;
    for step in Traffic::new(seed, accounts, 0.05) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let open = matches!(step.op, Op::Open { .. });
        if opening && !open {
            // Every account exists before its first command.
            opening = false;
            while let Some(done) = tasks.join_next().await {
                if let Ok(Some((index, id))) = done {
                    ids[index] = Some(id);
                }
            }
        }
        let account_id = match (open, ids.get(step.account).cloned().flatten()) {
            (true, _) => String::new(),
            (false, Some(id)) => id,
            // Its open failed (a fault): its commands are skipped.
            (false, None) => continue,
        };
        bucket.take().await;
        let Ok(permit) = Arc::clone(&semaphore).acquire_owned().await else {
            break;
        };
        let client = clients[(step.seq as usize) % clients.len()].clone();
        let seen = Arc::clone(&seen);
        let key = format!("chaos-{run}-{}", step.seq);
        tasks.spawn(async move {
            let answer = client.send(&step.op, &account_id, Some(&key)).await;
            drop(permit);
            let stored = answer.outcome.stored();
            {
                let mut seen = seen.lock();
                *seen.outcomes.entry(answer.outcome.label()).or_default() += 1;
                if let (true, Some(event)) = (stored, answer.event_id) {
                    seen.succeeded.push(event);
                }
            }
            match (open && stored, answer.account_id) {
                (true, Some(id)) => Some((step.account, id)),
                _ => None,
            }
        });
        while let Some(done) = tasks.try_join_next() {
            if let Ok(Some((index, id))) = done {
                ids[index] = Some(id);
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// A client of one prism-command instance for the chaos traffic: answers within 10 s,
/// transport errors retried 5 times with the same idempotency key.
pub fn client(url: &str, token: &str, concurrency: usize) -> anyhow::Result<Client> {
    Client::new(url, token, concurrency, Duration::from_secs(10), 5)
}
