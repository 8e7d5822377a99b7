//! Wiring of `prism-ledger`: MySQL read model ← projector runtime ← Kafka, and the query API.
//! `main.rs` and the tests both start the service through [`run`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prism_platform::config::Config;
use prism_projector::{Projection, Runtime};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::{self, ApiState};
use crate::sink::MySqlSink;
use crate::store::{Ledger, LiveModel};

/// The projector's short name: consumer group `prism-ledger`, dead letters on
/// `account-events.dlq.ledger`, metric label `ledger`.
pub const NAME: &str = "ledger";

/// The runtime's view of this projector.
pub fn projection(config: &Config) -> Projection {
    Projection {
        name: NAME.into(),
        group_id: config.ledger.group_id.clone(),
        topic: config.kafka.topic.clone(),
    }
}

/// Runs prism-ledger on `listener` until `shutdown` resolves: then stops taking requests,
/// lets every partition finish its batch, stores and commits, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_decoding(
        config,
        listener,
        shutdown,
        prism_projector::record::Record::decode,
    )
    .await
}

/// [`run`] with another event contract than this build's: how the tests stand in for a
/// newer build of the projector (one that knows more event types or schema versions).
pub async fn run_decoding(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    decode: prism_projector::Decode,
) -> anyhow::Result<()> {
    // The compiled-in token and cursor key are public: never on an address other machines
    // can reach.
    config
        .ledger
        .refuse_local_secrets(listener.local_addr().context("listener address")?)?;
    let registry = Registry::new();
    let mut shared = prism_projector::Shared::new(&registry, NAME, &config.projector)?;
    shared.decode = decode;
    let ledger = Ledger::open(&config.mysql, &config.ledger)
        .await
        .context("opening the ledger databases")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let poll = Duration::from_millis(config.ledger.generation_poll_ms.max(10));
    // Unique per running instance (several may share a host and even a process in tests).
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let instance = format!(
        "{}/{host}/{}/{}",
        config.ledger.group_id,
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let model = LiveModel::start_instance(ledger, poll, stop_rx.clone(), Some(instance))
        .await
        .context("opening the live ledger generation")?;

    let projector = tokio::spawn(project(
        config.clone(),
        model.clone(),
        shared.clone(),
        stop_rx,
    ));

    let ready_model = model.clone();
    let api = ApiState::new(
        model,
        &config.ledger,
        shared.progress.subscribe(),
        &registry,
    )
    .context("registering the query API's metrics")?;
    let app = http::router(api)
        .merge(prism_projector::serve::ops_router(
            shared.health.clone(),
            registry,
        ))
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn_with_state(
            ready_model.clone(),
            unready_without_the_live_copy,
        ));
    let address = listener.local_addr().context("listener address")?;
    tracing::info!(%address, "prism-ledger listening");
    let health = shared.health.clone();
    let (projector_failed_tx, projector_failed) = tokio::sync::oneshot::channel::<()>();
    let mut projector = tokio::spawn(async move {
        let result = projector.await;
        if !matches!(result, Ok(Ok(()))) {
            let _ = projector_failed_tx.send(());
        }
        result
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        // Shut down on request, or when the projector has failed for good: a ledger that
        // serves queries but no longer projects must not look alive.
        tokio::select! {
            () = shutdown => {}
            _ = projector_failed => {}
        }
        health.stopping();
        let _ = stop_tx.send(true);
    });
    server.await.context("serving HTTP")?;

    match (&mut projector).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("projecting")),
        Ok(Err(e)) | Err(e) => anyhow::bail!("projector task failed: {e}"),
    }
    tracing::info!("prism-ledger stopped");
    Ok(())
}

/// Starts the runtime, retrying with back-off while Kafka (or the topic) is unavailable,
/// until it starts or `stop` is set. `Ok(None)`: stopped before it could start.
async fn start_runtime(
    config: &Config,
    sink: Arc<MySqlSink>,
    shared: &prism_projector::Shared,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<prism_projector::Running>> {
    let mut delay = Duration::from_millis(config.projector.retry_backoff_ms.max(100));
    let max = Duration::from_millis(config.projector.retry_backoff_max_ms.max(1_000));
    loop {
        match Runtime::start(
            projection(config),
            &config.kafka,
            &config.projector,
            Arc::clone(&sink) as Arc<dyn prism_projector::Sink>,
            shared.clone(),
        )
        .await
        {
            Ok(running) => return Ok(Some(running)),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot start the projector; retrying"
                );
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(delay) => {}
        }
        if *stop.borrow() {
            return Ok(None);
        }
        delay = (delay * 2).min(max);
    }
}

/// `/readyz` answers 503 while the live generation cannot be opened here, whatever the
/// runtime says: this instance projects nothing then (see [`project`]).
async fn unready_without_the_live_copy(
    axum::extract::State(model): axum::extract::State<LiveModel>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.uri().path() == "/readyz" {
        if let Some((_, why)) = model.unavailable() {
            use axum::response::IntoResponse;
            return prism_platform::http::Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "Not ready",
            )
            .detail(why)
            .retry_after(1)
            .into_response();
        }
    }
    next.run(request).await
}

/// Keeps the runtime writing into the live generation: when a rebuild makes another copy
/// live, the runtime stops (batches finished, positions stored) and starts again on the new
/// copy, from the positions stored there.
///
/// A live copy this instance cannot open ([`LiveModel::unavailable`]) stops the runtime
/// too, and it stays stopped until the copy opens: writing the retired copy would stall
/// this instance's partitions in the live one, while with the runtime stopped the consumer
/// leaves the group and the other instances take the partitions over. `/readyz` says why.
async fn project(
    config: Config,
    model: LiveModel,
    shared: prism_projector::Shared,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let check = Duration::from_millis(config.ledger.generation_poll_ms.max(10));
    loop {
        if model.unavailable().is_some() {
            model.set_writing(None);
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(check) => {}
            }
            if *stop.borrow() {
                return Ok(());
            }
            continue;
        }
        let generation = model.current();
        let number = generation.number;
        let sink = Arc::new(MySqlSink::new(generation));
        let Some(running) = start_runtime(&config, sink, &shared, &mut stop).await? else {
            return Ok(());
        };
        model.set_writing(Some(number));
        tracing::info!(generation = number, "projecting into the live generation");
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    running.shut_down().await;
                    model.set_writing(None);
                    return Ok(());
                }
                () = tokio::time::sleep(check) => {}
            }
            if *stop.borrow() {
                running.shut_down().await;
                model.set_writing(None);
                return Ok(());
            }
            if model.number() != number || model.unavailable().is_some() {
                break;
            }
        }
        match model.unavailable() {
            Some((live, _)) => tracing::error!(
                retired = number,
                live,
                "the live generation cannot be opened here: stopping the projector rather than writing the retired copy"
            ),
            None => tracing::info!(
                from = number,
                to = model.number(),
                "a rebuilt generation went live; moving the projector to it"
            ),
        }
        running.shut_down().await;
        model.set_writing(None);
    }
}
