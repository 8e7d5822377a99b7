//! The outbox relay against the real stores and Kafka: a relay restarted in the middle of
//! a catch-up still publishes every stored event, and two relays fed by two writers racing
//! on the same accounts keep every account's order on Kafka. Each relay runs on its own
//! store object, as in its own process: what it knows of the other writer's commits it
//! learns from the store.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_command::metrics::Metrics;
use prism_command::relay::{Relay, RelayHandle, RelayStatus, SWEEP_LEASE};
use prism_command::store::{AppendError, EventStore};
use prism_events::testing::{deposited, opened, Account};
use prism_events::{AccountId, Envelope};
use prism_platform::config::{Config, EventStoreBackend};
use prism_tests::up;
use support::{
    assert_every_event_published, assert_per_account_order, clean_up, consume, free_port,
    isolated_config, last_versions, spawn_binary, stored_events, wait_ready, Api, Instance,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Generous bound for a relay to work off a backlog on a busy two-core machine.
const CATCH_UP: Duration = Duration::from_secs(120);

/// A relay on a store object of its own (a process of its own, as far as the store knows).
struct RunningRelay {
    handle: RelayHandle,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    metrics: Metrics,
}

impl RunningRelay {
    /// Stops the relay and waits until it has drained its queue and flushed its producer.
    async fn stop(self) {
        let _ = self.stop.send(true);
        up("relay", self.task.await);
    }
}

async fn start_relay(config: &Config, store: Arc<dyn EventStore>) -> RunningRelay {
    let metrics = up("metrics", Metrics::new());
    let relay = up(
        "relay",
        Relay::new(
            store,
            &config.kafka,
            config.relay.clone(),
            metrics.clone(),
            RelayStatus::default(),
        ),
    );
    let (stop, stopped) = watch::channel(false);
    let (handle, task) = relay.spawn(stopped);
    RunningRelay {
        handle,
        stop,
        task,
        metrics,
    }
}

async fn open(config: &Config) -> Arc<dyn EventStore> {
    up("event store", prism_command::app::open_store(config).await)
}

/// Unpublished events as `store` sees them: a store object that writes nothing, so it
/// knows nothing of anybody's commits but what it reads.
async fn backlog(store: &dyn EventStore) -> usize {
    up("event store", store.unpublished(None, 1_000_000).await).len()
}

async fn wait_for_empty_backlog(config: &Config) {
    let observer = open(config).await;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let left = backlog(observer.as_ref()).await;
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} events still unpublished after {CATCH_UP:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until part of the backlog of `total` events is published, but not all of it.
async fn wait_for_partial_catch_up(observer: &dyn EventStore, total: usize) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let left = backlog(observer).await;
        if left < total {
            assert!(left > 0, "the catch-up ended before it could be cut");
            return;
        }
        assert!(Instant::now() < deadline, "nothing was published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads the topic back and checks every stored event is on it, in per-account order.
async fn assert_all_published_in_order(config: &Config) {
    let stored = stored_events(config).await;
    let expected = last_versions(&stored);
    let reader = config.clone();
    let wanted = expected.clone();
    let records = up(
        "reader",
        tokio::task::spawn_blocking(move || consume(&reader, &wanted, CATCH_UP)).await,
    );
    assert_per_account_order(&records, &expected);
    assert_every_event_published(&records, &stored);
}

/// `count` commits for a fresh account, some of several events.
fn history(count: usize) -> (AccountId, Vec<Vec<Envelope>>) {
    let mut account = Account {
        id: AccountId(Uuid::now_v7()),
        partition: 0,
        version: 0,
    };
    let mut commits = vec![vec![
        account.next_now(opened("Outbox Owner", "DE", "EUR")).0,
    ]];
    for n in 1..count {
        let size = if n % 3 == 0 { 3 } else { 1 };
        let commit = (0..size)
            .map(|_| account.next_now(deposited(10)).0)
            .collect();
        commits.push(commit);
    }
    (account.id, commits)
}

/// Appends `commits` of a fresh account through `store`; answers the account's version
/// after them.
async fn append_history(
    store: &dyn EventStore,
    account: AccountId,
    commits: &[Vec<Envelope>],
) -> u64 {
    let mut version = 0;
    for commit in commits {
        up("append", store.append(account, version, commit, None).await);
        version += commit.len() as u64;
    }
    version
}

/// A dead writer's work: `accounts` accounts of `commits` commits each, stored and never
/// published (its store object is gone with it). Returns how many events it stored.
async fn dead_writers_backlog(config: &Config, accounts: usize, commits: usize) -> usize {
    let writer = open(config).await;
    let mut total = 0;
    for _ in 0..accounts {
        let (account, history) = history(commits);
        let version = append_history(writer.as_ref(), account, &history).await;
        total += usize::try_from(version).unwrap_or(0);
    }
    total
}

/// Records on the topic (every partition's end offset, duplicates included).
async fn topic_records(config: &Config) -> usize {
    let kafka = config.kafka.clone();
    let partitions = config.kafka.topic_partitions;
    let ends = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let client: BaseConsumer = up(
            "kafka",
            prism_platform::clients::kafka_client_config(&kafka).create(),
        );
        (0..partitions)
            .map(|p| {
                let (low, high) = up(
                    "kafka",
                    client.fetch_watermarks(&kafka.topic, p, Duration::from_secs(10)),
                );
                usize::try_from(high - low).unwrap_or(0)
            })
            .sum::<usize>()
    });
    up("kafka", ends.await)
}

async fn relay_restarted_mid_catch_up_publishes_every_stored_event(backend: EventStoreBackend) {
    let mut config = isolated_config(backend);
    // Small pages, so the catch-up takes many and the restart lands inside it.
    config.relay.batch_max_events = 40;
    config.relay.sweep_interval_ms = 100;

    let total = dead_writers_backlog(&config, 40, 12).await;
    let observer = open(&config).await;
    assert_eq!(
        backlog(observer.as_ref()).await,
        total,
        "everything starts unpublished"
    );

    // The first relay gets part of the way, then dies (its task and its memory).
    let first = start_relay(&config, open(&config).await).await;
    wait_for_partial_catch_up(observer.as_ref(), total).await;
    first.task.abort();
    let _ = first.task.await;
    drop(first.handle);
    drop(first.stop);

    // A new relay, on a new store object, finishes the job.
    let second = start_relay(&config, open(&config).await).await;
    wait_for_empty_backlog(&config).await;
    assert_all_published_in_order(&config).await;

    second.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mongodb_a_relay_restarted_mid_catch_up_publishes_every_stored_event() {
    relay_restarted_mid_catch_up_publishes_every_stored_event(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_relay_restarted_mid_catch_up_publishes_every_stored_event() {
    relay_restarted_mid_catch_up_publishes_every_stored_event(EventStoreBackend::Postgres).await;
}

/// Appends `rounds` deposits to every account through `store`, racing another writer: on a
/// conflict it reloads the account and tries again. Each commit goes to `relay` as the
/// command service hands it over.
async fn write(
    store: Arc<dyn EventStore>,
    relay: RelayHandle,
    accounts: Vec<AccountId>,
    rounds: usize,
) -> usize {
    let mut written = 0;
    let mut versions: BTreeMap<AccountId, u64> = BTreeMap::new();
    for _ in 0..rounds {
        for &account_id in &accounts {
            loop {
                let version = match versions.get(&account_id) {
                    Some(&v) => v,
                    None => up("load", store.load(account_id, 0).await)
                        .last()
                        .map_or(0, |e| e.account_version),
                };
                let mut account = Account {
                    id: account_id,
                    partition: 0,
                    version,
                };
                let commit: Vec<Envelope> = if version == 0 {
                    vec![account.next_now(opened("Two Writers", "DE", "EUR")).0]
                } else {
                    vec![account.next_now(deposited(1)).0]
                };
                match store.append(account_id, version, &commit, None).await {
                    Ok(()) => {
                        versions.insert(account_id, version + 1);
                        relay.publish(commit.iter().map(Envelope::to_raw).collect());
                        written += 1;
                        break;
                    }
                    Err(AppendError::Conflict { .. }) => {
                        // The other writer was first: catch up from the store.
                        let stored = up("load", store.load(account_id, 0).await);
                        versions.insert(account_id, stored.last().map_or(0, |e| e.account_version));
                    }
                    Err(e) => panic!("append failed: {e}"),
                }
            }
        }
    }
    written
}

async fn two_relays_keep_every_accounts_order(backend: EventStoreBackend) {
    let config = isolated_config(backend);
    let accounts: Vec<AccountId> = (0..8).map(|_| AccountId(Uuid::now_v7())).collect();

    // Two "instances": each a store object, its relay and a writer feeding it.
    let store_a = open(&config).await;
    let store_b = open(&config).await;
    let relay_a = start_relay(&config, Arc::clone(&store_a)).await;
    let relay_b = start_relay(&config, Arc::clone(&store_b)).await;
    let a = tokio::spawn(write(
        Arc::clone(&store_a),
        relay_a.handle.clone(),
        accounts.clone(),
        25,
    ));
    let b = tokio::spawn(write(
        Arc::clone(&store_b),
        relay_b.handle.clone(),
        accounts.clone(),
        25,
    ));
    let written = up("writer", a.await) + up("writer", b.await);
    assert_eq!(written, 2 * 25 * accounts.len());

    wait_for_empty_backlog(&config).await;
    let stored = stored_events(&config).await;
    let events: usize = stored.values().map(Vec::len).sum();
    assert_eq!(events, written, "every commit stored once");
    assert_all_published_in_order(&config).await;

    for relay in [relay_a, relay_b] {
        relay.stop().await;
    }
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mongodb_two_relays_and_two_writers_keep_every_accounts_order_on_kafka() {
    two_relays_keep_every_accounts_order(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_two_relays_and_two_writers_keep_every_accounts_order_on_kafka() {
    two_relays_keep_every_accounts_order(EventStoreBackend::Postgres).await;
}

async fn a_killed_instance_mid_catch_up_leaves_nothing_unpublished(backend: EventStoreBackend) {
    let mut config = isolated_config(backend);
    config.relay.batch_max_events = 40;
    config.relay.sweep_interval_ms = 100;

    // A dead instance's backlog: stored, never published.
    let writer = open(&config).await;
    let mut accounts = Vec::new();
    let mut total = 0;
    for _ in 0..40 {
        let (account, commits) = history(12);
        let mut version = 0;
        for commit in commits {
            up(
                "append",
                writer.append(account, version, &commit, None).await,
            );
            version += commit.len() as u64;
            total += commit.len();
        }
        accounts.push(account);
    }
    drop(writer);

    // Two instances catch up together; one of them is killed (SIGKILL) in the middle.
    let observer = open(&config).await;
    assert_eq!(backlog(observer.as_ref()).await, total);
    let port = free_port();
    let mut killed = spawn_binary(&config, port);
    let survivor = Instance::start(&config).await;
    wait_for_partial_catch_up(observer.as_ref(), total).await;
    up("kill", killed.kill());
    let _ = killed.wait();

    // Commands go on through the survivor while the killed one is restarted.
    let api = Api::new(&survivor.url);
    for account in accounts.iter().take(10) {
        let answer = api.deposit(&account.to_string(), 5).await;
        assert_eq!(answer.status, 200, "deposit: {}", answer.body);
    }
    let mut restarted = spawn_binary(&config, port);
    wait_ready(&format!("http://127.0.0.1:{port}")).await;

    wait_for_empty_backlog(&config).await;
    assert_all_published_in_order(&config).await;

    let _ = restarted.kill();
    let _ = restarted.wait();
    survivor.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mongodb_an_instance_killed_mid_catch_up_leaves_nothing_unpublished() {
    a_killed_instance_mid_catch_up_leaves_nothing_unpublished(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_an_instance_killed_mid_catch_up_leaves_nothing_unpublished() {
    a_killed_instance_mid_catch_up_leaves_nothing_unpublished(EventStoreBackend::Postgres).await;
}

/// A store written before the outbox collection existed flagged each commit `published:
/// false` instead: `init` gives such commits their intents, so they are still published.
#[tokio::test]
async fn commits_flagged_unpublished_by_the_earlier_format_are_published_after_an_upgrade() {
    use mongodb::bson::doc;

    let config = isolated_config(EventStoreBackend::Mongodb);
    let (account, commits) = history(3);
    let writer = open(&config).await;
    let version = append_history(writer.as_ref(), account, &commits).await;
    drop(writer);
    // Rewrite them in the earlier format: no intents, a flag on each commit.
    let client = up(
        "mongodb",
        prism_platform::clients::mongodb(&config.mongodb, "prism-tests").await,
    );
    let database = client.database(&config.mongodb.database);
    let outbox = database.collection::<mongodb::bson::Document>("outbox");
    let commits_collection = database.collection::<mongodb::bson::Document>("commits");
    up("mongodb", outbox.delete_many(doc! {}).await);
    up(
        "mongodb",
        commits_collection
            .update_many(doc! {}, doc! { "$set": { "published": false } })
            .await,
    );
    let before_upgrade = up(
        "event store",
        open(&config).await.unpublished(None, 100).await,
    );

    // `open` ran `init`: every flagged commit is unpublished again, in version order.
    let versions: Vec<u64> = before_upgrade.iter().map(|e| e.account_version).collect();
    assert_eq!(versions, (1..=version).collect::<Vec<_>>());
    let flagged = up(
        "mongodb",
        commits_collection
            .count_documents(doc! { "published": { "$exists": true } })
            .await,
    );
    assert_eq!(flagged, 0, "the old flag is gone once the intents exist");

    // And the relay publishes them.
    let relay = start_relay(&config, open(&config).await).await;
    wait_for_empty_backlog(&config).await;
    assert_all_published_in_order(&config).await;
    relay.stop().await;
    clean_up(&config).await;
}

/// A PostgreSQL store of the earlier format (a `published` flag on every event, with a
/// partial index of the unpublished ones) moves its unpublished events to the outbox table
/// at `init`, drops the flag, and the relay publishes them all in order — not the ones
/// flagged published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_events_flagged_unpublished_by_the_earlier_format_are_published_after_an_upgrade(
) {
    let config = isolated_config(EventStoreBackend::Postgres);
    let (account, commits) = history(4);
    let writer = open(&config).await;
    let version = append_history(writer.as_ref(), account, &commits).await;
    drop(writer);
    // Rewrite them in the earlier format: no outbox, a flag on each event; the first
    // commit was published already then.
    let published = commits[0].len() as i64;
    let pool = up(
        "postgres",
        prism_platform::clients::postgres(&config.postgres).await,
    );
    let s = format!("\"{}\"", config.event_store.postgres_schema);
    for statement in [
        format!("DROP TABLE {s}.outbox"),
        format!("ALTER TABLE {s}.events ADD COLUMN published BOOLEAN NOT NULL DEFAULT FALSE"),
        format!("UPDATE {s}.events SET published = TRUE WHERE version <= {published}"),
        format!("CREATE INDEX events_unpublished ON {s}.events (position) WHERE NOT published"),
    ] {
        up("postgres", sqlx::query(&statement).execute(&pool).await);
    }

    // `open` runs `init`: the events flagged unpublished are in the outbox, in order.
    let upgraded = up(
        "event store",
        open(&config).await.unpublished(None, 100).await,
    );
    let versions: Vec<u64> = upgraded.iter().map(|e| e.account_version).collect();
    let expected: Vec<u64> = (published as u64 + 1..=version).collect();
    assert_eq!(versions, expected);
    let flag_left: bool = up(
        "postgres",
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 \
             AND table_name = 'events' AND column_name = 'published')",
        )
        .bind(&config.event_store.postgres_schema)
        .fetch_one(&pool)
        .await,
    );
    assert!(
        !flag_left,
        "the old flag is gone once the outbox holds its events"
    );
    // A second start finds nothing to move.
    let again = up(
        "event store",
        open(&config).await.unpublished(None, 100).await,
    );
    assert_eq!(again.len(), upgraded.len());

    // The relay publishes what was unpublished; the events published before stay off it.
    let relay = start_relay(&config, open(&config).await).await;
    wait_for_empty_backlog(&config).await;
    relay.stop().await;
    let stored = stored_events(&config).await;
    let mut wanted = stored.clone();
    for events in wanted.values_mut() {
        events.retain(|e| e.account_version > published as u64);
    }
    let expected = last_versions(&stored);
    let records = consume(&config, &expected, Duration::from_secs(60));
    assert_every_event_published(&records, &wanted);
    let republished = records
        .iter()
        .filter(|(_, v, _)| *v <= published as u64)
        .count();
    assert_eq!(
        republished, 0,
        "events published before the upgrade went out again"
    );
    clean_up(&config).await;
}

/// A dead writer's backlog (100 accounts of 12 commits, in pages of 50), worked off by
/// `relays` relays started at once, each on a store object of its own; returns the test's
/// configuration and how many events were stored, once the backlog is gone and every relay
/// stopped (its producer flushed).
async fn catch_up_by_relays(backend: EventStoreBackend, relays: usize) -> (Config, usize) {
    let mut config = isolated_config(backend);
    config.relay.batch_max_events = 50;
    config.relay.sweep_interval_ms = 100;
    let total = dead_writers_backlog(&config, 100, 12).await;
    let mut running = Vec::with_capacity(relays);
    for _ in 0..relays {
        running.push(start_relay(&config, open(&config).await).await);
    }
    wait_for_empty_backlog(&config).await;
    for relay in running {
        relay.stop().await;
    }
    (config, total)
}

/// A catch-up with nothing failing publishes each stored event exactly once: an event whose
/// mark finished while the next page was being read is not published again from that page
/// (it was, before: about 30 % duplicates while working off a large backlog).
async fn a_catch_up_without_failures_publishes_each_event_once(backend: EventStoreBackend) {
    let (config, total) = catch_up_by_relays(backend, 1).await;
    let stored = stored_events(&config).await;
    let expected = last_versions(&stored);
    let reader = config.clone();
    let wanted = expected.clone();
    let records = up(
        "reader",
        tokio::task::spawn_blocking(move || consume(&reader, &wanted, CATCH_UP)).await,
    );
    assert_per_account_order(&records, &expected);
    assert_every_event_published(&records, &stored);
    assert_eq!(
        records.len(),
        total,
        "{} records on Kafka for {total} stored events",
        records.len()
    );
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mongodb_a_catch_up_without_failures_publishes_each_event_once() {
    a_catch_up_without_failures_publishes_each_event_once(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_catch_up_without_failures_publishes_each_event_once() {
    a_catch_up_without_failures_publishes_each_event_once(EventStoreBackend::Postgres).await;
}

/// Two relays starting on one backlog at once (two prism-command instances back after an
/// outage): the one holding the sweep lease works it off and the other leaves it, so the
/// backlog reaches Kafka about once, not once per relay (before the lease, both published
/// most of it). Every event still arrives, in per-account order.
async fn two_relays_on_one_backlog_publish_it_about_once(backend: EventStoreBackend) {
    let (config, total) = catch_up_by_relays(backend, 2).await;
    assert_all_published_in_order(&config).await;
    let records = topic_records(&config).await;
    eprintln!("{records} records on Kafka for {total} stored events");
    assert!(
        records >= total && (records - total) * 20 <= total,
        "{records} records on Kafka for {total} stored events: more than 5 % duplicates"
    );
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mongodb_two_relays_on_one_backlog_publish_it_about_once() {
    two_relays_on_one_backlog_publish_it_about_once(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_two_relays_on_one_backlog_publish_it_about_once() {
    two_relays_on_one_backlog_publish_it_about_once(EventStoreBackend::Postgres).await;
}

/// While another instance holds the sweep lease, a fresh commit of an account with an
/// unpublished backlog (a dead writer's) sends that backlog first, then itself: the
/// relay's `prism_relay_sent_total` counts the backlog as `predecessor`, the commit as
/// `fresh`, and nothing as `sweep` (the relay's own sweeps leave the backlog to the lease's
/// holder). This is the way a backlog can reach Kafka twice after an outage: the sweeper
/// may send the same events.
async fn a_fresh_commit_sends_its_accounts_backlog_as_predecessors(backend: EventStoreBackend) {
    let mut config = isolated_config(backend);
    config.relay.sweep_interval_ms = 100;
    let (account_id, history) = history(7);
    let version = append_history(open(&config).await.as_ref(), account_id, &history).await;
    let backlog_events = usize::try_from(version).unwrap_or(0);
    let other = open(&config).await;
    assert!(
        up(
            "lease",
            other
                .hold_lease(SWEEP_LEASE, "another instance", Duration::from_secs(300))
                .await
        ),
        "the other instance takes the sweep lease"
    );

    let store = open(&config).await;
    let relay = start_relay(&config, Arc::clone(&store)).await;
    // Several sweeps run and leave the backlog to the lease's holder.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(backlog(other.as_ref()).await, backlog_events);

    let mut account = Account {
        id: account_id,
        partition: 0,
        version,
    };
    let commit = vec![account.next_now(deposited(5)).0];
    up(
        "append",
        store.append(account_id, version, &commit, None).await,
    );
    relay
        .handle
        .publish(commit.iter().map(Envelope::to_raw).collect());
    wait_for_empty_backlog(&config).await;
    assert_all_published_in_order(&config).await;

    let sent = |path: &str| relay.metrics.relay_sent.with_label_values(&[path]).get();
    assert_eq!(
        (sent("predecessor"), sent("fresh"), sent("sweep")),
        (backlog_events as u64, 1, 0),
        "events sent as predecessors, fresh, by sweeps"
    );
    assert_eq!(
        relay.metrics.relay_published.get(),
        backlog_events as u64 + 1
    );
    relay.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mongodb_a_fresh_commit_sends_its_accounts_backlog_as_predecessors() {
    a_fresh_commit_sends_its_accounts_backlog_as_predecessors(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_fresh_commit_sends_its_accounts_backlog_as_predecessors() {
    a_fresh_commit_sends_its_accounts_backlog_as_predecessors(EventStoreBackend::Postgres).await;
}
