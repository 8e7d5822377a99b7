//! Group commit: commits that are ready at the same moment share one store round trip.
//!
//! Every command of one instance hands its commit to one [`Batcher`]. A dispatcher task
//! takes the first commit waiting and, without waiting for more, everything else already
//! queued behind it (up to `max_commits`), and writes them with one
//! [`EventStore::append_batch`]. So:
//! - **No fixed wait.** When nothing else is queued a commit goes alone at once; latency at
//!   low load is that of a single append.
//! - **Batches grow with load.** While `in_flight` batches are being written, the commits
//!   that become ready queue, and go together as soon as a batch returns: under
//!   concurrency a round trip carries many commits instead of one, which is what the store
//!   (one statement and one transaction on PostgreSQL, one `insertMany` on MongoDB) turns
//!   into throughput.
//! - **Each caller gets its own commit's answer.** The store checks every commit on its
//!   own, so a conflict or a taken idempotency key fails that commit alone.
//!
//! The command service holds an account's slot while its commit is queued and written, so
//! a batch never holds two commits of one account from this instance.
//!
//! A commit may carry a deadline (its idempotency claim's append window): one still queued
//! when the deadline passes is answered "unavailable" and never sent, so no append starts
//! after it.
//!
//! A keyed command's idempotency claim (the record stored under its key before its commit)
//! travels with the commit ([`Commit::claim`]) and the store writes both in the same round
//! trip: a keyed command costs one shared round trip, like an unkeyed one.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use prometheus::Histogram;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{AppendError, Commit, EventStore, StoreError};

/// Items waiting for their lane's dispatcher beyond this make callers wait to enqueue (each
/// caller queues one item at a time, so this only bounds memory under extreme fan-in).
const QUEUE_CAPACITY: usize = 4096;

/// An item waiting for its batch, and where its answer goes.
struct Pending<I, A> {
    item: I,
    deadline: Option<Instant>,
    reply: oneshot::Sender<A>,
}

type Lane<I, A> = mpsc::Sender<Pending<I, A>>;

/// The handle commands append through; cheap to clone. Dropping every
/// handle stops the dispatchers once the batches in flight are written.
#[derive(Debug, Clone)]
pub struct Batcher {
    commits: Lane<Commit, Result<(), AppendError>>,
}

impl<I, A> std::fmt::Debug for Pending<I, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the dispatchers on the current Tokio runtime (call from within one).
    /// `max_items` bounds a batch, `in_flight` the batches of a lane written at the same
    /// time (both at least 1); `batch_size` observes the size of every batch of commits.
    pub fn spawn(
        store: Arc<dyn EventStore>,
        max_items: usize,
        in_flight: usize,
        batch_size: Histogram,
    ) -> Self {
        let commits = lane(
            max_items,
            in_flight,
            move |commits: Vec<Commit>| {
                let store = Arc::clone(&store);
                let batch_size = batch_size.clone();
                async move {
                    batch_size.observe(commits.len() as f64);
                    store.append_batch(&commits).await
                }
            },
            || Err(lost("the append outlasted its idempotency key's claim").into()),
            |what| Err(lost(what).into()),
        );
        Self { commits }
    }

    /// Appends `commit` with the next batch and answers for it alone. With a `deadline`, the
    /// commit is not sent once it has passed (answered as unavailable instead).
    pub async fn append(
        &self,
        commit: Commit,
        deadline: Option<Instant>,
    ) -> Result<(), AppendError> {
        ask(&self.commits, commit, deadline, |what| {
            Err(lost(what).into())
        })
        .await
    }
}

/// Queues `item` on `lane` and waits for its own answer.
async fn ask<I, A>(
    lane: &Lane<I, A>,
    item: I,
    deadline: Option<Instant>,
    lost: fn(&str) -> A,
) -> A {
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        item,
        deadline,
        reply,
    };
    if lane.send(pending).await.is_err() {
        return lost("the group-commit dispatcher has stopped");
    }
    // The sender is dropped without an answer only if the batch's task died.
    answer
        .await
        .unwrap_or_else(|_| lost("the batched write was lost"))
}

/// Starts a lane's dispatcher: it takes the first waiting item and everything queued behind
/// it, up to `max_items`, whenever fewer than `in_flight` batches are being written, and
/// writes them with `flush` (one answer per item, in order). An item whose deadline passed
/// before its batch is sent gets `late()` and is not sent.
fn lane<I, A, F, Fut>(
    max_items: usize,
    in_flight: usize,
    flush: F,
    late: fn() -> A,
    lost: fn(&str) -> A,
) -> Lane<I, A>
where
    I: Send + 'static,
    A: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<A>> + Send + 'static,
{
    let (queue, mut requests) = mpsc::channel::<Pending<I, A>>(QUEUE_CAPACITY);
    let max_items = max_items.max(1);
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    tokio::spawn(async move {
        loop {
            // Never closed, so acquiring only waits for a batch in flight to return.
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let Some(first) = requests.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < max_items {
                match requests.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            let (overdue, due): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|p| p.deadline.is_some_and(|deadline| deadline <= now));
            for pending in overdue {
                // The caller may have given up already; nobody to tell then.
                let _ = pending.reply.send(late());
            }
            if due.is_empty() {
                continue;
            }
            let (items, replies): (Vec<I>, Vec<_>) =
                due.into_iter().map(|p| (p.item, p.reply)).unzip();
            let written = flush(items);
            tokio::spawn(async move {
                let mut answers = written.await.into_iter();
                for reply in replies {
                    let answer = answers.next().unwrap_or_else(|| {
                        lost("the store answered fewer items than it was given")
                    });
                    // A caller that went away (its request was cancelled) needs no answer: a
                    // stored commit is published by the relay's sweep.
                    let _ = reply.send(answer);
                }
                drop(permit);
            });
        }
    });
    queue
}

fn lost(what: &str) -> StoreError {
    StoreError::Unavailable(what.to_owned())
}
