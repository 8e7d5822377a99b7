//! The ledger's sink passes the projector kit's sink contract suite, on the real MySQL
//! (MariaDB) and Kafka of the local stack. Every copy is a generation of one ledger of the
//! test's own (`Ledger::create_next`), dropped with it at the end.

mod support;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt as _;
use prism_ledger::sink::MySqlSink;
use prism_ledger::store::{Generation, Ledger};
use prism_projector::testing::contract::{self, ContractSubject, Outage};
use prism_projector::Sink;
use serde_json::{json, Value};
use sqlx::{Connection as _, MySqlConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Fresh copies of the read model: new generations of a ledger of this test's own.
struct LedgerSubject {
    ledger: Ledger,
}

#[async_trait]
impl ContractSubject for LedgerSubject {
    type Copy = Generation;

    async fn fresh(&self) -> Generation {
        prism_tests::up("mysql", self.ledger.create_next().await)
    }

    fn sink(&self, copy: &Generation) -> Arc<dyn Sink> {
        Arc::new(MySqlSink::new(copy.clone()))
    }

    async fn snapshot(&self, copy: &Generation) -> Value {
        let s = support::snapshot(&copy.pool).await;
        json!({
            "accounts": s.accounts,
            "statement_lines": s.lines,
            "daily_totals": s.daily,
            "projector_accounts": s.versions,
        })
    }

    /// `projector_partitions` locked by another session (every write of the sink fences on
    /// it), and each of the sink's statements waiting for that lock interrupted
    /// (`KILL QUERY`, error 1317): the sink answers `Transient` until the outage ends.
    /// (The sink's statements are prepared: their command is `Execute`, not `Query`.)
    async fn outage(&self, copy: &Generation) -> Option<Box<dyn Outage>> {
        let options = copy.pool.connect_options();
        let mut locker = prism_tests::up("mysql", MySqlConnection::connect_with(&options).await);
        prism_tests::up(
            "mysql",
            sqlx::query("LOCK TABLES projector_partitions WRITE")
                .execute(&mut locker)
                .await,
        );
        let mut killer = prism_tests::up("mysql", MySqlConnection::connect_with(&options).await);
        let database = copy.database.clone();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                let waiting: Vec<i64> = match sqlx::query_scalar(
                    "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST \
                     WHERE DB = ? AND ID <> CONNECTION_ID() \
                     AND STATE LIKE 'Waiting for table%'",
                )
                .bind(&database)
                .fetch_all(&mut killer)
                .await
                {
                    Ok(ids) => ids,
                    Err(e) => panic!("listing the sessions waiting for the lock: {e}"),
                };
                for id in waiting {
                    let _ = sqlx::query(&format!("KILL QUERY {id}"))
                        .execute(&mut killer)
                        .await;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), stopped.changed()).await;
            }
            let _ = killer.close().await;
        });
        Some(Box::new(TableLock { locker, stop, task }))
    }
}

struct TableLock {
    locker: MySqlConnection,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[async_trait]
impl Outage for TableLock {
    async fn end(self: Box<Self>) {
        let TableLock {
            mut locker,
            stop,
            task,
        } = *self;
        let _ = stop.send(true);
        let _ = task.await;
        prism_tests::up(
            "mysql",
            sqlx::query("UNLOCK TABLES").execute(&mut locker).await,
        );
        let _ = locker.close().await;
    }
}

/// Runs `body` with a ledger of its own, then drops it and every generation it made.
async fn with_subject<F, Fut>(body: F)
where
    F: FnOnce(LedgerSubject) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = prism_tests::config();
    let ledger_config = prism_ledger::LedgerConfig {
        database: prism_tests::unique("t_ledger"),
        ..prism_ledger::LedgerConfig::default()
    };
    let ledger = prism_tests::up("mysql", Ledger::open(&config.mysql, &ledger_config).await);
    let outcome = AssertUnwindSafe(body(LedgerSubject {
        ledger: ledger.clone(),
    }))
    .catch_unwind()
    .await;
    let dropped = ledger.drop_everything().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    if let Err(e) = dropped {
        panic!("dropping the test databases: {e:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mysql_sink_passes_the_sink_checks() {
    with_subject(|subject| async move { contract::sink_checks(&subject).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mysql_sink_passes_the_kafka_gap_check() {
    with_subject(|subject| async move { contract::kafka_gap_is_dead_lettered(&subject).await })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mysql_sink_passes_the_kafka_poison_check() {
    with_subject(|subject| async move {
        contract::kafka_poison_is_dead_lettered_before_the_position_moves(&subject).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mysql_sink_passes_the_kafka_transient_check() {
    with_subject(
        |subject| async move { contract::kafka_transient_errors_are_retried(&subject).await },
    )
    .await;
}
