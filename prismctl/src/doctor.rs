//! `prismctl doctor`: one real request to each backing service, with Prism's own clients.
//!
//! Each check opens a connection, then times one request that also yields the server's
//! version, so the round-trip time is the server's answer time rather than a TCP handshake.
//! Kafka's protocol does not reveal the broker's release, so its "version" column shows
//! what a metadata request does reveal: the brokers and the number of topics.

use std::future::{Future, IntoFuture};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use mongodb::bson::{doc, Document};
use prism_platform::clients;
use prism_platform::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::table::{self, Align};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Ok,
    Failed,
}

#[derive(Debug, Serialize)]
struct Check {
    service: &'static str,
    address: String,
    required: bool,
    status: Status,
    version: Option<String>,
    rtt_ms: Option<f64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    services: Vec<Check>,
}

/// What a successful probe learnt.
pub(crate) struct Answer {
    version: String,
    rtt: Duration,
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    let limit = Duration::from_millis(config.doctor.timeout_ms);
    let (kafka, mongodb, mysql, postgres, elasticsearch, redis, prometheus) = tokio::join!(
        check(
            config,
            "kafka",
            config.kafka.bootstrap_servers.clone(),
            limit,
            kafka(config)
        ),
        check(
            config,
            "mongodb",
            config.mongodb.uri.hosts().into(),
            limit,
            mongodb(config)
        ),
        check(
            config,
            "mysql",
            config.mysql.url.hosts().into(),
            limit,
            mysql(config)
        ),
        check(
            config,
            "postgres",
            config.postgres.url.hosts().into(),
            limit,
            postgres(config)
        ),
        check(
            config,
            "elasticsearch",
            config.elasticsearch.url.hosts().into(),
            limit,
            elasticsearch(config),
        ),
        check(
            config,
            "redis",
            config.redis.url.hosts().into(),
            limit,
            redis(config)
        ),
        check(
            config,
            "prometheus",
            config.prometheus.url.hosts().into(),
            limit,
            prometheus(config),
        ),
    );
    let checks = vec![
        kafka,
        mongodb,
        mysql,
        postgres,
        elasticsearch,
        redis,
        prometheus,
    ];
    let ok = checks
        .iter()
        .all(|c| matches!(c.status, Status::Ok) || !c.required);
    let report = Report {
        ok,
        services: checks,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        print_table(&mut out, &report).context("writing the report")?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn check(
    config: &Config,
    service: &'static str,
    address: String,
    limit: Duration,
    probe: impl Future<Output = anyhow::Result<Answer>>,
) -> Check {
    let required = !config.doctor.optional.iter().any(|s| s == service);
    let outcome = match tokio::time::timeout(limit, probe).await {
        Ok(result) => result,
        Err(_) => Err(anyhow!("no answer within {} ms", limit.as_millis())),
    };
    match outcome {
        Ok(answer) => Check {
            service,
            address,
            required,
            status: Status::Ok,
            version: Some(answer.version),
            rtt_ms: Some((answer.rtt.as_secs_f64() * 1e5).round() / 100.0),
            error: None,
        },
        Err(e) => Check {
            service,
            address,
            required,
            status: Status::Failed,
            version: None,
            rtt_ms: None,
            error: Some(format!("{e:#}")),
        },
    }
}

/// Runs `request` and measures how long it took.
async fn timed<F: IntoFuture>(request: F) -> (F::Output, Duration) {
    let start = Instant::now();
    let value = request.await;
    (value, start.elapsed())
}

pub(crate) async fn kafka(config: &Config) -> anyhow::Result<Answer> {
    let client_config = clients::kafka_client_config(&config.kafka);
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    // librdkafka's metadata call blocks: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config.create().context("creating a Kafka client")?;
        let start = Instant::now();
        let metadata = consumer
            .fetch_metadata(None, timeout)
            .context("metadata request")?;
        let rtt = start.elapsed();
        let brokers = metadata.brokers();
        let ids: Vec<String> = brokers.iter().map(|b| b.id().to_string()).collect();
        let topics = metadata
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__"))
            .count();
        Ok(Answer {
            version: format!(
                "{} broker{} (id {}), {} topic{}",
                brokers.len(),
                if brokers.len() == 1 { "" } else { "s" },
                ids.join(","),
                topics,
                if topics == 1 { "" } else { "s" },
            ),
            rtt,
        })
    })
    .await
    .context("the Kafka check did not finish")?
}

pub(crate) async fn mongodb(config: &Config) -> anyhow::Result<Answer> {
    let client = clients::mongodb(&config.mongodb, "prismctl-doctor").await?;
    let admin = client.database("admin");
    admin
        .run_command(doc! { "ping": 1 })
        .await
        .context("ping")?;
    let (info, rtt) = timed(admin.run_command(doc! { "buildInfo": 1 })).await;
    let info = info.context("buildInfo")?;
    Ok(Answer {
        version: mongodb_version(&info),
        rtt,
    })
}

/// `7.0.14`, or `7.0.42 (FerretDB v1.24.2)` when the server says it is FerretDB.
fn mongodb_version(info: &Document) -> String {
    let version = info.get_str("version").unwrap_or("unknown").to_owned();
    let ferret = info
        .get_str("ferretdbVersion")
        .ok()
        .or_else(|| {
            info.get_document("ferretdb")
                .ok()
                .and_then(|d| d.get_str("version").ok())
        })
        .filter(|v| !v.is_empty() && *v != "unknown");
    match ferret {
        Some(f) => format!("{version} (FerretDB {f})"),
        None if info.contains_key("ferretdbFeatures") || info.contains_key("ferretdb") => {
            format!("{version} (FerretDB)")
        }
        None => version,
    }
}

pub(crate) async fn mysql(config: &Config) -> anyhow::Result<Answer> {
    let pool = clients::mysql(&config.mysql).await?;
    let (version, rtt) =
        timed(sqlx::query_scalar::<_, String>("SELECT VERSION()").fetch_one(&pool)).await;
    let version = version.context("SELECT VERSION()")?;
    pool.close().await;
    let version = match version.split_once("-MariaDB") {
        Some((number, _)) => format!("MariaDB {number}"),
        None => format!("MySQL {version}"),
    };
    Ok(Answer { version, rtt })
}

pub(crate) async fn postgres(config: &Config) -> anyhow::Result<Answer> {
    let pool = clients::postgres(&config.postgres).await?;
    let (version, rtt) =
        timed(sqlx::query_scalar::<_, String>("SELECT version()").fetch_one(&pool)).await;
    let version = version.context("SELECT version()")?;
    pool.close().await;
    // "PostgreSQL 15.18 (Debian …) on x86_64…" → "PostgreSQL 15.18"
    let short: Vec<&str> = version.split_whitespace().take(2).collect();
    Ok(Answer {
        version: short.join(" "),
        rtt,
    })
}

async fn elasticsearch(config: &Config) -> anyhow::Result<Answer> {
    let client = clients::elasticsearch(&config.elasticsearch)?;
    let info = || async {
        client
            .info()
            .send()
            .await
            .context("GET /")?
            .error_for_status_code()
            .context("GET /")?
            .json::<serde_json::Value>()
            .await
            .context("GET / returned no JSON")
    };
    info().await?;
    let (body, rtt) = timed(info()).await;
    let body = body?;
    let number = body["version"]["number"].as_str().unwrap_or("unknown");
    let distribution = match body["version"]["distribution"].as_str() {
        Some("opensearch") => "OpenSearch",
        Some(other) => other,
        None => "Elasticsearch",
    };
    Ok(Answer {
        version: format!("{distribution} {number}"),
        rtt,
    })
}

async fn redis(config: &Config) -> anyhow::Result<Answer> {
    let mut conn = clients::redis_connection(&config.redis).await?;
    let (info, rtt) = timed(
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut conn),
    )
    .await;
    let info = info.context("INFO server")?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| format!("Redis {}", v.trim()))
        .unwrap_or_else(|| "Redis (version not reported)".into());
    Ok(Answer { version, rtt })
}

async fn prometheus(config: &Config) -> anyhow::Result<Answer> {
    let url = format!(
        "{}/api/v1/status/buildinfo",
        config.prometheus.url.expose().trim_end_matches('/')
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.doctor.timeout_ms))
        .build()
        .context("building an HTTP client")?;
    let get = || async {
        http.get(&url)
            .send()
            .await
            .context("GET /api/v1/status/buildinfo")?
            .error_for_status()
            .context("GET /api/v1/status/buildinfo")?
            .json::<serde_json::Value>()
            .await
            .context("build info was not JSON")
    };
    get().await?;
    let (body, rtt) = timed(get()).await;
    let body = body?;
    let version = body["data"]["version"].as_str().unwrap_or("unknown");
    Ok(Answer {
        version: format!("Prometheus {version}"),
        rtt,
    })
}

fn print_table(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = report
        .services
        .iter()
        .map(|c| {
            let status = match (&c.status, c.required) {
                (Status::Ok, _) => "ok".to_owned(),
                (Status::Failed, true) => format!("FAILED: {}", c.error.as_deref().unwrap_or("")),
                (Status::Failed, false) => format!(
                    "unavailable (optional): {}",
                    c.error.as_deref().unwrap_or("")
                ),
            };
            vec![
                c.service.to_owned(),
                c.address.clone(),
                c.version.clone().unwrap_or_else(|| "-".into()),
                c.rtt_ms
                    .map(|ms| format!("{ms:.2} ms"))
                    .unwrap_or_else(|| "-".into()),
                status,
            ]
        })
        .collect();
    let headers = [
        ("SERVICE", Align::Left),
        ("ADDRESS", Align::Left),
        ("VERSION", Align::Left),
        ("RTT", Align::Right),
        ("STATUS", Align::Left),
    ];
    for line in table::lines(&headers, &rows) {
        writeln!(out, "{line}")?;
    }
    let failed: Vec<&str> = report
        .services
        .iter()
        .filter(|c| matches!(c.status, Status::Failed) && c.required)
        .map(|c| c.service)
        .collect();
    if failed.is_empty() {
        writeln!(out, "\nall required services answer")
    } else {
        writeln!(
            out,
            "\n{} required service{} not answering: {} (is the stack up? `dev/stack up`)",
            failed.len(),
            if failed.len() == 1 { " is" } else { "s are" },
            failed.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferretdb_is_named_in_the_mongodb_version() {
        let info = doc! { "version": "7.0.42", "ferretdbVersion": "v1.24.2" };
        assert_eq!(mongodb_version(&info), "7.0.42 (FerretDB v1.24.2)");
        let plain = doc! { "version": "7.0.14" };
        assert_eq!(mongodb_version(&plain), "7.0.14");
    }
}
