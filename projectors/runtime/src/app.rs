//! The process shell every projector binary runs: [`run`]`(projector, listener, shutdown)`.
//!
//! A projector supplies a [`Projector`]: its name and settings, how to open its read
//! model's [`Copies`], and its query API. The shell does the rest, the same way for every
//! read model:
//! - opens the live copy ([`LiveCopy`]) and keeps it current as rebuilds promote copies;
//! - starts the runtime on the live copy's sink, retrying with back-off while Kafka (or the
//!   topic) is unavailable, and moves it to a newly promoted copy (batches finished,
//!   positions stored, then started again from the positions stored in the new copy);
//! - stops writing (and says why on `/readyz`) while the live copy cannot be opened here,
//!   so its partitions go to instances that can;
//! - serves the query API beside `/healthz`, `/readyz`, `/metrics` and the admin status
//!   (`GET /v1/admin/status`, `admin` scope), with a problem+json 404 for every other path,
//!   and logs one line per request ([`prism_platform::http::log_requests`]);
//! - on `shutdown` (SIGTERM in `main`), or when the projector fails for good, stops taking
//!   requests, lets every partition finish its batch, stores and commits, and returns.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use axum::response::IntoResponse;
use axum::Router;
use prism_platform::auth::{Auth, Scope};
use prism_platform::config::{KafkaConfig, ProjectorConfig};
use prism_platform::http::Problem;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::copies::{Copies, LiveCopy};
use crate::group_lag::GroupLag;
use crate::{Decode, Projection, Runtime, Shared};

/// What the shell needs to know to run a projector.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Short name: `ledger`, `search`… (metric label, dead-letter topic suffix, logs).
    pub name: &'static str,
    /// Kafka consumer group: `prism-<name>` by default.
    pub group_id: String,
    pub kafka: KafkaConfig,
    /// The runtime's settings for this projector (`[projector]` with its own overrides).
    pub runtime: ProjectorConfig,
    /// How often the live copy is re-read (a rebuild may have promoted another).
    pub copy_poll: Duration,
}

/// A read model: the projector's part of a process; [`run`] is the rest.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// The read model's copies (MySQL databases, indices behind aliases…).
    type Copies: Copies;

    fn settings(&self) -> Settings;

    /// Refuses to serve on `address` with compiled-in (public) secrets unless it is a
    /// loopback address.
    fn check_listener(&self, address: SocketAddr) -> anyhow::Result<()>;

    /// Connects to the read model's store and opens its copies (creating its control
    /// store on first start).
    async fn open(&self) -> anyhow::Result<Self::Copies>;

    /// Whether the read model's control store exists (it has ever run), without creating
    /// it: what tools that only look (`prismctl status`) ask before [`Projector::open`].
    async fn exists(&self) -> anyhow::Result<bool>;

    /// The backing service its copies live in (`mysql`, `elasticsearch`), for messages.
    fn service(&self) -> &'static str;

    /// The check of this projector's APIs for callers with `scope`: its own `auth_enabled`
    /// and the callers of `[[auth.tokens]]`. Its query API needs its read scope; the shell
    /// serves the admin status behind [`Scope::Admin`] with it.
    fn auth(&self, scope: Scope) -> Auth;

    /// The query API on `live` (the copy being served changes when a rebuild promotes
    /// one). `shared.progress` wakes consistency waits; metrics go to `registry`.
    fn api(
        &self,
        live: LiveCopy<Self::Copies>,
        shared: &Shared,
        registry: &Registry,
    ) -> anyhow::Result<Router>;
}

/// The whole of a projector binary's `main`: loads the configuration, sets up logging,
/// builds the projector with `make` (which also names the address to listen on), binds it
/// and [`run`]s until SIGTERM or Ctrl-C. Exit code 2 for bad configuration, 1 for a
/// failure, 0 after a clean stop.
pub async fn main<P: Projector>(
    binary: &str,
    make: impl FnOnce(prism_platform::config::Config) -> anyhow::Result<(P, String)>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = match prism_platform::config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = prism_platform::telemetry::init(&config.log) {
        eprintln!("{binary}: {e}");
        return ExitCode::from(2);
    }
    let (projector, listen) = match make(config) {
        Ok(made) => made,
        Err(e) => {
            eprintln!("{binary}: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = async {
        let listener = TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        run(projector, listener, prism_platform::http::shutdown_signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{binary} failed");
            eprintln!("{binary}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `projector` on `listener` until `shutdown` resolves.
pub async fn run<P: Projector>(
    projector: P,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_decoding(projector, listener, shutdown, crate::record::Record::decode).await
}

/// [`run`] with another event contract than this build's: how tests stand in for a newer
/// build of the projector (one that knows more event types or schema versions).
pub async fn run_decoding<P: Projector>(
    projector: P,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    decode: Decode,
) -> anyhow::Result<()> {
    let address = listener.local_addr().context("listener address")?;
    projector.check_listener(address)?;
    let settings = projector.settings();
    let name = settings.name;
    let registry = Registry::new();
    let mut shared = Shared::new(&registry, name, &settings.runtime)?;
    shared.decode = decode;
    // Until [`open_live`] succeeds (with the last error once an attempt failed).
    shared
        .health
        .opening(Some(format!("opening the {name} read model")));
    // Unique per running instance (several may share a host and even a process in tests).
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let instance = format!(
        "{}/{host}/{}/{}",
        settings.group_id,
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );

    // `shutting_down`: the caller asked to stop. `failed`: the projector failed for good.
    // Either stops the server, then `stop` stops the projector.
    let shutting_down = prism_platform::http::cancelled_on(shutdown);
    let failed = CancellationToken::new();
    let stop = CancellationToken::new();

    // The server answers from the start, before the read model is open: /healthz,
    // /readyz (503 naming what is not open) and /metrics at once, everything else once
    // the query API exists. A store that is down when the process starts (a restart during
    // an outage) leaves it running and observable instead of exiting.
    let (full_app, built) = tokio::sync::watch::channel(None);
    let ops = crate::serve::ops_router(shared.health.clone(), registry.clone());
    let front = prism_platform::http::front_door(ops.clone(), built);
    tracing::info!(%address, "prism-{name} listening");
    let health = shared.health.clone();
    let (server_stop, server_failed, server_project) =
        (shutting_down.clone(), failed.clone(), stop.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, front)
            .with_graceful_shutdown(async move {
                // Shut down on request, or when the projector has failed for good: a read
                // model that serves queries but no longer projects must not look alive.
                tokio::select! {
                    () = server_stop.cancelled() => {}
                    () = server_failed.cancelled() => {}
                }
                health.stopping();
                server_project.cancel();
            })
            .await
    });

    let opened = tokio::select! {
        opened = open_live(&projector, &settings, &shared, &stop, &instance) => Some(opened),
        () = shutting_down.cancelled() => None,
    };
    let live = match opened {
        Some(Ok(live)) => live,
        Some(Err(e)) => {
            failed.cancel();
            let _ = server.await;
            return Err(e);
        }
        None => {
            server
                .await
                .context("the HTTP server task")?
                .context("serving HTTP")?;
            tracing::info!("prism-{name} stopped before its read model was open");
            return Ok(());
        }
    };

    let identity = crate::serve::Identity {
        service: format!("prism-{name}"),
        instance,
        consumer_group: settings.group_id.clone(),
        topic: settings.kafka.topic.clone(),
        dead_letter_topic: crate::dlq::topic_name(
            &settings.kafka.topic,
            &settings.runtime.dlq_suffix,
            name,
        ),
    };
    let admin = crate::serve::admin_router(
        projector.auth(Scope::Admin),
        identity,
        shared.clone(),
        live.clone(),
    );
    let app = projector
        .api(live.clone(), &shared, &registry)
        .context("building the query API")?
        .merge(ops)
        .merge(admin);
    let app = with_problem_fallbacks(app)
        .layer(axum::middleware::from_fn_with_state(
            live.clone(),
            unready_without_the_live_copy::<P::Copies>,
        ))
        // Outermost: one line per request, whatever answered it.
        .layer(axum::middleware::from_fn(
            prism_platform::http::log_requests,
        ));
    full_app.send_replace(Some(app));

    let project_task = tokio::spawn(project(
        settings.clone(),
        live,
        shared.clone(),
        stop.clone(),
    ));
    let failed_signal = failed.clone();
    let mut project_task = tokio::spawn(async move {
        let result = project_task.await;
        if !matches!(result, Ok(Ok(()))) {
            failed_signal.cancel();
        }
        result
    });
    server
        .await
        .context("the HTTP server task")?
        .context("serving HTTP")?;

    match (&mut project_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("projecting")),
        Ok(Err(e)) | Err(e) => anyhow::bail!("projector task failed: {e}"),
    }
    tracing::info!("prism-{name} stopped");
    Ok(())
}

/// Opens the read model and its live copy, retrying with back-off for as long as it takes
/// (the store may be down or unreachable): `/readyz` names the error meanwhile, and the
/// group's lag is measured from Kafka alone ([`GroupLag`]) since nothing else measures it.
async fn open_live<P: Projector>(
    projector: &P,
    settings: &Settings,
    shared: &Shared,
    stop: &CancellationToken,
    instance: &str,
) -> anyhow::Result<LiveCopy<P::Copies>> {
    let name = settings.name;
    let mut probe: Option<GroupLag> = None;
    let mut attempt = 0_u32;
    loop {
        let opened = async {
            let copies = Arc::new(
                projector
                    .open()
                    .await
                    .with_context(|| format!("opening the {name} read model"))?,
            );
            LiveCopy::start_instance(
                copies,
                settings.copy_poll,
                stop.clone(),
                Some(instance.to_owned()),
            )
            .await
            .with_context(|| format!("opening the live copy of the {name} read model"))
        }
        .await;
        match opened {
            Ok(live) => {
                if let Some(probe) = probe.take() {
                    probe.stop().await;
                }
                shared.health.opening(None);
                if attempt > 0 {
                    tracing::info!(attempts = attempt + 1, "the {name} read model is open");
                }
                return Ok(live);
            }
            Err(e) => {
                let delay = start_backoff(&settings.runtime, attempt);
                attempt = attempt.saturating_add(1);
                let why = format!("{e:#}");
                tracing::warn!(
                    error = %why,
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot open the read model; retrying"
                );
                shared.health.opening(Some(why));
                if probe.is_none() {
                    probe = Some(start_probe(settings, shared)?);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The group lag probe for this projector, measuring at the runtime's lag interval.
fn start_probe(settings: &Settings, shared: &Shared) -> anyhow::Result<GroupLag> {
    GroupLag::start(
        &settings.kafka,
        &settings.group_id,
        &settings.kafka.topic,
        shared.metrics.clone(),
        Duration::from_millis(settings.runtime.lag_interval_ms.max(100)),
    )
}

/// Every path the projector does not serve: a problem document, not an empty 404.
pub async fn not_found() -> axum::response::Response {
    Problem::new(axum::http::StatusCode::NOT_FOUND, "not_found", "Not found")
        .detail("no such resource")
        .into_response()
}

/// A path the projector serves, asked with a method it does not take: a problem document
/// (with axum's `Allow` header), not an empty 405.
pub async fn method_not_allowed() -> axum::response::Response {
    Problem::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
    )
    .detail("this resource does not take this method")
    .into_response()
}

/// `router` answering what none of its routes does with problem documents: [`not_found`]
/// and [`method_not_allowed`]. Call it once every route is in (the 405 fallback applies to
/// the routes the router has).
pub fn with_problem_fallbacks(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// `/readyz` answers 503 while the live copy cannot be opened here, whatever the runtime
/// says: this instance projects nothing then (see [`project`]).
async fn unready_without_the_live_copy<C: Copies>(
    axum::extract::State(live): axum::extract::State<LiveCopy<C>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.uri().path() == "/readyz" {
        if let Some((_, why)) = live.unavailable() {
            return Problem::new(
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

/// The back-off between attempts to start the runtime: the runtime's own
/// ([`crate::backoff`]), from at least 100 ms up to at least 1 s.
fn start_backoff(config: &ProjectorConfig, attempt: u32) -> Duration {
    let config = ProjectorConfig {
        retry_backoff_ms: config.retry_backoff_ms.max(100),
        retry_backoff_max_ms: config.retry_backoff_max_ms.max(1_000),
        ..config.clone()
    };
    crate::backoff(&config, attempt)
}

/// Starts the runtime on `live`'s current copy, retrying with back-off while Kafka (or the
/// topic) is unavailable, until it starts or `stop` is cancelled (`Ok(None)`).
async fn start_runtime<C: Copies>(
    settings: &Settings,
    live: &LiveCopy<C>,
    shared: &Shared,
    stop: &CancellationToken,
) -> anyhow::Result<Option<crate::Running>> {
    let mut attempt = 0_u32;
    loop {
        let projection = Projection {
            name: settings.name.into(),
            group_id: settings.group_id.clone(),
            topic: settings.kafka.topic.clone(),
        };
        match Runtime::start(
            projection,
            &settings.kafka,
            &settings.runtime,
            live.sink(),
            shared.clone(),
        )
        .await
        {
            Ok(running) => return Ok(Some(running)),
            Err(e) => {
                let delay = start_backoff(&settings.runtime, attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot start the projector; retrying"
                );
                tokio::select! {
                    () = stop.cancelled() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Keeps the runtime writing into the live copy: when a rebuild makes another copy live,
/// the runtime stops (batches finished, positions stored) and starts again on the new
/// copy, from the positions stored there.
///
/// A live copy this instance cannot open ([`LiveCopy::unavailable`]) stops the runtime
/// too, and it stays stopped until the copy opens: writing the retired copy would stall
/// this instance's partitions in the live one, while with the runtime stopped the consumer
/// leaves the group and the other instances take the partitions over. `/readyz` says why.
async fn project<C: Copies>(
    settings: Settings,
    live: LiveCopy<C>,
    shared: Shared,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let check = settings.copy_poll.max(Duration::from_millis(10));
    // Measures the group's lag while this instance projects nothing.
    let mut probe: Option<GroupLag> = None;
    loop {
        if live.unavailable().is_some() {
            live.set_writing(None);
            if probe.is_none() {
                probe = Some(start_probe(&settings, &shared)?);
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(check) => continue,
            }
        }
        if let Some(probe) = probe.take() {
            probe.stop().await;
        }
        let number = live.number();
        let Some(running) = start_runtime(&settings, &live, &shared, &stop).await? else {
            return Ok(());
        };
        live.set_writing(Some(number));
        tracing::info!(copy = number, "projecting into the live copy");
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    running.shut_down().await;
                    live.set_writing(None);
                    return Ok(());
                }
                () = tokio::time::sleep(check) => {}
            }
            if live.number() != number || live.unavailable().is_some() {
                break;
            }
        }
        match live.unavailable() {
            Some((current, _)) => tracing::error!(
                retired = number,
                live = current,
                "the live copy cannot be opened here: stopping the projector rather than writing the retired copy"
            ),
            None => tracing::info!(
                from = number,
                to = live.number(),
                "a rebuilt copy went live; moving the projector to it"
            ),
        }
        running.shut_down().await;
        live.set_writing(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_backoff_doubles_from_its_floor_to_its_ceiling_and_never_ends() {
        let config = ProjectorConfig {
            retry_backoff_ms: 10,
            retry_backoff_max_ms: 3_000,
            ..ProjectorConfig::default()
        };
        let delays: Vec<u64> = (0..8)
            .map(|attempt| start_backoff(&config, attempt).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_600, 3_000, 3_000, 3_000]);
    }

    /// The status line and headers of `request` sent to `app` over a real connection.
    async fn head_of(app: Router, request: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("its address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connects");
        stream.write_all(request.as_bytes()).await.expect("sends");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("reads");
        answer
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
    }

    #[tokio::test]
    async fn a_wrong_method_and_an_unknown_path_get_problem_documents() {
        let app = || {
            with_problem_fallbacks(
                Router::new().route("/v1/things", axum::routing::get(|| async { "ok" })),
            )
        };
        let wrong_method = head_of(
            app(),
            "POST /v1/things HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(wrong_method.starts_with("http/1.1 405"), "{wrong_method}");
        assert!(
            wrong_method.contains("content-type: application/problem+json"),
            "{wrong_method}"
        );
        assert!(wrong_method.contains("allow: get,head"), "{wrong_method}");
        let unknown = head_of(
            app(),
            "GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(unknown.starts_with("http/1.1 404"), "{unknown}");
        assert!(
            unknown.contains("content-type: application/problem+json"),
            "{unknown}"
        );
    }
}
