//! Wiring: configuration → store, relay, service, HTTP. `main.rs` and the tests both start
//! the service through [`run`], so tests run the real thing on a port-0 listener.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use prism_platform::auth::Scope;
use prism_platform::config::{Config, EventStoreBackend};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::{self, AppState, Auth, Instance, Readiness};
use crate::metrics::Metrics;
use crate::relay::{Relay, RelayHandle, RelayStatus};
use crate::service::{Clock, CommandService, ServiceConfig};
use crate::store::mongo::MongoStore;
use crate::store::postgres::PgStore;
use crate::store::EventStore;

/// Opens the configured event store and creates its collections/tables and indexes.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    let store: Arc<dyn EventStore> = match config.event_store.backend {
        EventStoreBackend::Mongodb => {
            let client = prism_platform::clients::mongodb(&config.mongodb, "prism-command").await?;
            Arc::new(
                MongoStore::new(client, &config.mongodb.database)
                    .with_ferretdb_postgres(config.mongodb.ferretdb_postgres().cloned()),
            )
        }
        EventStoreBackend::Postgres => {
            let pool = prism_platform::clients::postgres(&config.postgres).await?;
            Arc::new(PgStore::new(pool, &config.event_store.postgres_schema))
        }
    };
    store
        .init()
        .await
        .with_context(|| format!("initialising the {} event store", store.backend()))?;
    Ok(store)
}

/// [`open_store`] until it succeeds, with back-off (100 ms doubling to 5 s); `opening` holds
/// the last error for `/readyz` meanwhile.
async fn open_store_retrying(config: &Config, opening: &Mutex<String>) -> Arc<dyn EventStore> {
    let mut delay = Duration::from_millis(100);
    loop {
        match open_store(config).await {
            Ok(store) => return store,
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "cannot open the event store; retrying");
                *lock(opening) = why;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the listener answers before the event store is open: `/healthz`, `/metrics`, and
/// `/readyz` as a 503 naming the store's last error.
fn starting_router(registry: prometheus::Registry, opening: Arc<Mutex<String>>) -> axum::Router {
    use axum::response::IntoResponse;
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(http::healthz))
        .route(
            "/readyz",
            get(move || {
                let why = lock(&opening).clone();
                async move {
                    prism_platform::http::Problem::unavailable(format!(
                        "event store not open: {why}"
                    ))
                    .retry_after(1)
                    .into_response()
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { prism_platform::http::render_metrics(&registry) }
            }),
        )
}

/// `prism-command/<host>/<pid>/<random>`: unique per running instance (several may share a
/// host, and tests run several in one process), like a projector's.
fn instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "prism-command/{host}/{}/{}",
        std::process::id(),
        &random[..8]
    )
}

/// Runs prism-command on `listener` until `shutdown` resolves; then stops taking requests,
/// finishes those in flight, lets the relay publish what is queued, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_clock(config, listener, shutdown, Clock::system()).await
}

/// [`run`] with events stamped by `clock` (tests that must know an event's time before
/// sending its command, such as the fraud model's online = offline test).
pub async fn run_with_clock(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    clock: Clock,
) -> anyhow::Result<()> {
    let address = listener.local_addr().context("listener address")?;
    // The compiled-in tokens are public: never on an address other machines can reach.
    config
        .auth
        .refuse_local_tokens("command", config.command.auth_enabled, address)?;
    let metrics = Metrics::new().context("registering metrics")?;

    // The listener answers from the start: /healthz, /readyz (503 naming the event store's
    // error) and /metrics while the event store cannot be opened, the whole API once it is.
    // A restart during a store outage thus leaves the process up and observable.
    let shutting_down = prism_platform::http::cancelled_on(shutdown);
    let (full_app, built) = watch::channel(None);
    let opening = Arc::new(Mutex::new("not opened yet".to_owned()));
    let front = prism_platform::http::front_door(
        starting_router(metrics.registry.clone(), Arc::clone(&opening)),
        built,
    );
    let server_stop = shutting_down.clone();
    let server = tokio::spawn(http::serve(listener, front, async move {
        server_stop.cancelled().await;
    }));
    tracing::info!(%address, "prism-command listening");

    let store = tokio::select! {
        store = open_store_retrying(&config, &opening) => store,
        () = shutting_down.cancelled() => {
            server.await.context("the HTTP server task")?.context("serving HTTP")?;
            tracing::info!("prism-command stopped before its event store was open");
            return Ok(());
        }
    };

    let (stop_relay, relay_stopped) = watch::channel(false);
    // Kafka is not needed to start: the relay creates the topic and publishes once Kafka
    // answers; until then commands are stored and the backlog shows on /readyz.
    let (relay_handle, relay_task, relay_status) = if config.relay.enabled {
        let status = RelayStatus::default();
        let relay = match Relay::new(
            Arc::clone(&store),
            &config.kafka,
            config.relay.clone(),
            metrics.clone(),
            status.clone(),
        ) {
            Ok(relay) => relay,
            Err(e) => {
                shutting_down.cancel();
                let _ = server.await;
                return Err(e.context("configuring the relay's Kafka producer"));
            }
        };
        let (handle, task) = relay.spawn(relay_stopped);
        (handle, Some(task), Some(status))
    } else {
        tracing::warn!("relay disabled: events are stored but not published");
        (RelayHandle::disabled(), None, None)
    };

    let service = Arc::new(CommandService::new(
        Arc::clone(&store),
        relay_handle,
        metrics.clone(),
        ServiceConfig {
            source: config.command.source.clone(),
            conflict_retries: config.command.conflict_retries,
            snapshot_every: config.event_store.snapshot_every,
            cache_accounts: config.command.cache_accounts,
            append_batch_max: config.command.append_batch_max,
            append_batches_in_flight: config.command.append_batches_in_flight,
            clock,
        },
    ));
    let state = AppState {
        service,
        metrics,
        auth: Auth::new(
            config.command.auth_enabled,
            &config.auth.tokens,
            Scope::Commands,
        ),
        admin_auth: Auth::new(
            config.command.auth_enabled,
            &config.auth.tokens,
            Scope::Admin,
        ),
        readiness: Readiness {
            store,
            relay: relay_status,
        },
        instance: Instance {
            id: instance_id(),
            topic: config.kafka.topic.clone(),
        },
    };
    tracing::info!(backend = config.event_store.backend.as_str(), instance = %state.instance.id, "prism-command taking commands");
    full_app.send_replace(Some(http::router(state, config.command.max_body_bytes)));
    server
        .await
        .context("the HTTP server task")?
        .context("serving HTTP")?;

    // HTTP is drained: no new commits can arrive. Let the relay finish the queue.
    let _ = stop_relay.send(true);
    if let Some(task) = relay_task {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "relay task failed");
        }
    }
    tracing::info!("prism-command stopped");
    Ok(())
}
