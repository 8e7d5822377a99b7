//! `prismctl status`: where each projector stands on each partition of the topic.
//!
//! For every read model (each one an entry of [`Model`], read through the projector kit's
//! copies interface) and every partition of `[kafka] topic`:
//! - the **stored position**: offset of the last record the projector handled, as its sink
//!   stored it (atomically with its writes), with the writer, the time of the last applied
//!   event and the last error the sink recorded;
//! - the **end offset** (high watermark) from Kafka;
//! - the **lag in events**: `end - (stored + 1)`, or `end - start` if the projector never
//!   wrote on that partition;
//! - the **lag in seconds**: the age of the oldest unprocessed record, i.e. now minus the
//!   Kafka timestamp of the record at `stored + 1`, read by a throw-away consumer assigned
//!   to that offset (no group membership, no commits). That timestamp is set when the relay
//!   produces the record, so it is the publish time, within milliseconds of the event's
//!   append. If the record cannot be read within a short time the column shows `?`;
//! - the Kafka **committed offset** of the projector's consumer group (informational: the
//!   stored position, not the group's offset, is what a projector resumes from).
//!
//! A projector whose control database does not exist has never run: it shows as
//! "not started". Exit codes: 0 everything was read, 1 a service did not answer (named in
//! the output), 2 bad invocation or configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use prism_platform::{clients, Config};
use prism_projector::copies::PartitionStatus as StoredPositionRow;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::models::{Model, ReadModel};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Refresh every SECS seconds (default 2) until Ctrl-C.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    watch: Option<u64>,
    /// Print one JSON document (per refresh with --watch) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Read models opened across `--watch` refreshes (`None`: not started yet; looked for
/// again next time).
#[derive(Debug, Default)]
pub struct Clients {
    models: BTreeMap<&'static str, ReadModel>,
}

impl Clients {
    /// The read model, opened once it exists (opening creates its control store).
    async fn model(&mut self, config: &Config, model: Model) -> anyhow::Result<Option<ReadModel>> {
        let name = model.settings(config)?.name;
        if let Some(opened) = self.models.get(name) {
            return Ok(Some(opened.clone()));
        }
        let Some(opened) = model.open_existing(config).await? else {
            return Ok(None);
        };
        self.models.insert(name, opened.clone());
        Ok(Some(opened))
    }

    async fn close(self) {}
}

/// What a projector stored.
#[derive(Debug, Clone)]
pub enum Stored {
    /// No control store: the projector has never run.
    NotStarted,
    /// A control store without a live copy of the read model (a first rebuild is running).
    NoLiveGeneration,
    Live {
        generation: u32,
        database: String,
        partitions: Vec<StoredPositionRow>,
    },
}

/// Reads the positions stored in the live copy of `model`.
async fn positions(config: &Config, model: Model, clients: &mut Clients) -> anyhow::Result<Stored> {
    let Some(opened) = clients.model(config, model).await? else {
        return Ok(Stored::NotStarted);
    };
    let Some(number) = opened.copies.live_number().await? else {
        return Ok(Stored::NoLiveGeneration);
    };
    let name = opened
        .copies
        .list()
        .await?
        .into_iter()
        .find(|copy| copy.number == number)
        .map(|copy| copy.name)
        .unwrap_or_else(|| format!("copy {number}"));
    let partitions = opened
        .copies
        .partitions(number)
        .await
        .with_context(|| format!("reading the positions stored in {name}"))?;
    Ok(Stored::Live {
        generation: number,
        database: name,
        partitions,
    })
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// Every service answered.
    pub ok: bool,
    pub topic: String,
    /// `false`: Kafka answered that the topic does not exist (nothing published yet).
    pub topic_exists: bool,
    pub checked_at: DateTime<Utc>,
    /// Partitions of the topic as Kafka reports them (empty if Kafka did not answer).
    pub topic_partitions: Vec<i32>,
    pub projectors: Vec<ProjectorStatus>,
    /// Services that did not answer, with the error.
    pub errors: Vec<ServiceError>,
}

#[derive(Debug, Serialize)]
pub struct ServiceError {
    pub service: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A live generation with stored positions (possibly none yet).
    Live,
    NotStarted,
    NoLiveGeneration,
    /// The positions could not be read (see `errors`).
    Unavailable,
}

#[derive(Debug, Serialize)]
pub struct ProjectorStatus {
    pub name: &'static str,
    pub group_id: String,
    pub state: State,
    pub live_generation: Option<u32>,
    pub database: Option<String>,
    /// Sum of the partitions' lags (negative lags count as 0).
    pub lag_events: Option<i64>,
    /// The largest partition lag in seconds.
    pub lag_seconds: Option<f64>,
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    /// Offset of the last record handled; `None`: never written.
    pub stored_offset: Option<i64>,
    /// Log start offset (low watermark).
    pub start_offset: Option<i64>,
    /// End offset (high watermark): the offset the next record will get.
    pub end_offset: Option<i64>,
    pub lag_events: Option<i64>,
    /// Age of the oldest unprocessed record; 0 when nothing is pending, `None` if unknown.
    pub lag_seconds: Option<f64>,
    /// The consumer group's committed offset (the next record it would read), if any.
    pub committed_offset: Option<i64>,
    pub event_time: Option<DateTime<Utc>>,
    pub writer: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    let mut clients = Clients::default();
    let code = match args.watch {
        None => {
            let report = gather(config, &mut clients).await;
            print(&report, args.json, false)?;
            code(&report)
        }
        Some(secs) => {
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            let mut last;
            loop {
                let report = gather(config, &mut clients).await;
                print(&report, args.json, true)?;
                last = code(&report);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                    _ = &mut ctrl_c => break,
                }
            }
            last
        }
    };
    clients.close().await;
    Ok(code)
}

fn code(report: &Report) -> ExitCode {
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Kafka's view of the topic: partitions with their watermarks.
type Watermarks = BTreeMap<i32, (i64, i64)>;

/// Reads everything; a service that does not answer becomes an entry of `errors`.
pub async fn gather(config: &Config, clients: &mut Clients) -> Report {
    let limit = Duration::from_millis(config.doctor.timeout_ms);
    let mut errors = Vec::new();
    let mut topic_exists = true;
    let watermarks = match tokio::time::timeout(limit, watermarks(config)).await {
        Ok(Ok(Some(w))) => Some(w),
        Ok(Ok(None)) => {
            topic_exists = false;
            None
        }
        Ok(Err(e)) => {
            errors.push(ServiceError {
                service: "kafka".into(),
                error: format!("{e:#}"),
            });
            None
        }
        Err(_) => {
            errors.push(ServiceError {
                service: "kafka".into(),
                error: format!("no answer within {} ms", limit.as_millis()),
            });
            None
        }
    };
    let mut projectors = Vec::new();
    for projector in Model::ALL {
        let name = match projector.settings(config) {
            Ok(settings) => settings.name,
            Err(e) => {
                errors.push(ServiceError {
                    service: "configuration".into(),
                    error: format!("{e:#}"),
                });
                continue;
            }
        };
        let stored = match tokio::time::timeout(limit, positions(config, projector, clients)).await
        {
            Ok(Ok(stored)) => Some(stored),
            Ok(Err(e)) => {
                errors.push(ServiceError {
                    service: projector.service(config).into(),
                    error: format!("{name} positions: {e:#}"),
                });
                None
            }
            Err(_) => {
                errors.push(ServiceError {
                    service: projector.service(config).into(),
                    error: format!(
                        "{name} positions: no answer within {} ms",
                        limit.as_millis()
                    ),
                });
                None
            }
        };
        let status =
            projector_status(config, projector, stored, watermarks.as_ref(), &mut errors).await;
        projectors.extend(status);
    }
    Report {
        ok: errors.is_empty(),
        topic: config.kafka.topic.clone(),
        topic_exists,
        checked_at: Utc::now(),
        topic_partitions: watermarks
            .as_ref()
            .map(|w| w.keys().copied().collect())
            .unwrap_or_default(),
        projectors,
        errors,
    }
}

async fn projector_status(
    config: &Config,
    projector: Model,
    stored: Option<Stored>,
    watermarks: Option<&Watermarks>,
    errors: &mut Vec<ServiceError>,
) -> Option<ProjectorStatus> {
    let settings = projector.settings(config).ok()?;
    let group_id = settings.group_id.clone();
    let name = settings.name;
    let (state, generation, database, rows) = match stored {
        None => (State::Unavailable, None, None, Vec::new()),
        Some(Stored::NotStarted) => (State::NotStarted, None, None, Vec::new()),
        Some(Stored::NoLiveGeneration) => (State::NoLiveGeneration, None, None, Vec::new()),
        Some(Stored::Live {
            generation,
            database,
            partitions,
        }) => (State::Live, Some(generation), Some(database), partitions),
    };
    let rows: BTreeMap<i32, StoredPositionRow> =
        rows.into_iter().map(|r| (r.partition, r)).collect();
    let mut ids: BTreeSet<i32> = rows.keys().copied().collect();
    if let Some(w) = watermarks {
        ids.extend(w.keys().copied());
    }

    // Where the oldest unprocessed record of each lagging partition is.
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    let mut partitions: Vec<PartitionStatus> = ids
        .iter()
        .map(|&partition| {
            let row = rows.get(&partition);
            let marks = watermarks.and_then(|w| w.get(&partition)).copied();
            let lag_events = marks.map(|(low, high)| match row {
                Some(r) => high - (r.offset + 1),
                None => high - low,
            });
            if let (Some(lag), Some((low, _))) = (lag_events, marks) {
                if lag > 0 {
                    let next = row.map_or(low, |r| (r.offset + 1).max(low));
                    pending.insert(partition, next);
                }
            }
            PartitionStatus {
                partition,
                stored_offset: row.map(|r| r.offset),
                start_offset: marks.map(|m| m.0),
                end_offset: marks.map(|m| m.1),
                lag_events,
                lag_seconds: lag_events.filter(|&l| l <= 0).map(|_| 0.0),
                committed_offset: None,
                event_time: row.and_then(|r| r.event_time),
                writer: row.map(|r| r.writer.clone()),
                updated_at: row.map(|r| r.updated_at),
                last_error: row.and_then(|r| r.last_error.clone()),
                last_error_at: row.and_then(|r| r.last_error_at),
            }
        })
        .collect();

    if watermarks.is_some() && !ids.is_empty() {
        let limit = Duration::from_millis(config.doctor.timeout_ms);
        let kafka = kafka_details(config, group_id.clone(), ids.clone(), pending);
        match tokio::time::timeout(limit, kafka).await {
            Ok(Ok((committed, timestamps))) => {
                let now = Utc::now().timestamp_millis();
                for p in &mut partitions {
                    p.committed_offset = committed.get(&p.partition).copied().flatten();
                    if let Some(ts) = timestamps.get(&p.partition) {
                        p.lag_seconds = Some(((now - ts).max(0) as f64) / 1000.0);
                    }
                }
            }
            Ok(Err(e)) => errors.push(ServiceError {
                service: "kafka".into(),
                error: format!("{name}: {e:#}"),
            }),
            Err(_) => errors.push(ServiceError {
                service: "kafka".into(),
                error: format!(
                    "{}: committed offsets: no answer within {} ms",
                    name,
                    limit.as_millis()
                ),
            }),
        }
    }

    let lag_events = watermarks.map(|_| {
        partitions
            .iter()
            .filter_map(|p| p.lag_events)
            .map(|l| l.max(0))
            .sum()
    });
    let lag_seconds = if partitions.iter().any(|p| p.lag_seconds.is_none()) {
        None
    } else {
        partitions
            .iter()
            .filter_map(|p| p.lag_seconds)
            .reduce(f64::max)
    };
    let live = matches!(state, State::Live);
    Some(ProjectorStatus {
        name,
        group_id,
        state,
        live_generation: generation,
        database,
        lag_events: lag_events.filter(|_| live),
        lag_seconds: lag_seconds.filter(|_| live),
        partitions,
    })
}

/// Partitions of the topic with their (low, high) watermarks; `None` if the topic does not
/// exist.
async fn watermarks(config: &Config) -> anyhow::Result<Option<Watermarks>> {
    let client_config = clients::kafka_client_config(&config.kafka);
    let topic = config.kafka.topic.clone();
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    // librdkafka calls block: keep them off the async workers.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config.create().context("creating a Kafka client")?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .context("metadata request")?;
        let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
            anyhow::bail!("topic {topic} is not in the broker's metadata");
        };
        if let Some(e) = meta.error() {
            if rdkafka::types::RDKafkaErrorCode::from(e)
                == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
            {
                // Kafka answered: the topic just does not exist yet (nothing published).
                return Ok(None);
            }
            anyhow::bail!(
                "topic {topic}: {}",
                rdkafka::types::RDKafkaErrorCode::from(e)
            );
        }
        let mut marks = BTreeMap::new();
        for partition in meta.partitions() {
            let id = partition.id();
            let w = consumer
                .fetch_watermarks(&topic, id, timeout)
                .with_context(|| format!("watermarks of partition {id}"))?;
            marks.insert(id, w);
        }
        Ok(Some(marks))
    })
    .await
    .context("the Kafka request did not finish")?
}

/// The group's committed offsets, and the Kafka timestamp (ms) of the record at each
/// `pending` offset (those that could be read within a short time).
async fn kafka_details(
    config: &Config,
    group_id: String,
    partitions: BTreeSet<i32>,
    pending: BTreeMap<i32, i64>,
) -> anyhow::Result<(BTreeMap<i32, Option<i64>>, BTreeMap<i32, i64>)> {
    let mut group_config = clients::kafka_client_config(&config.kafka);
    group_config
        .set("group.id", &group_id)
        .set("enable.auto.commit", "false");
    let mut probe_config = clients::kafka_client_config(&config.kafka);
    probe_config
        .set("group.id", "prismctl-status-probe")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("max.partition.fetch.bytes", "65536")
        .set("fetch.wait.max.ms", "50");
    let topic = config.kafka.topic.clone();
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    tokio::task::spawn_blocking(move || {
        // Committed offsets: a plain request, without joining the group.
        let consumer: BaseConsumer = group_config.create().context("creating a Kafka client")?;
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .with_context(|| format!("committed offsets of group {group_id}"))?;
        let committed: BTreeMap<i32, Option<i64>> = committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect();
        drop(consumer);

        // The oldest unprocessed record per lagging partition: assign, read one each.
        let mut timestamps = BTreeMap::new();
        if pending.is_empty() {
            return Ok((committed, timestamps));
        }
        let probe: BaseConsumer = probe_config.create().context("creating a Kafka client")?;
        let mut tpl = TopicPartitionList::new();
        for (&p, &offset) in &pending {
            tpl.add_partition_offset(&topic, p, Offset::Offset(offset))
                .context("building an assignment")?;
        }
        probe.assign(&tpl).context("assigning partitions")?;
        let deadline = Instant::now() + Duration::from_secs(3).min(timeout);
        while timestamps.len() < pending.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Errors (e.g. end of partition) only cost this probe its answer.
            if let Some(Ok(message)) = probe.poll(left.min(Duration::from_millis(200))) {
                let p = message.partition();
                if let (Some(ts), Some(&wanted)) =
                    (message.timestamp().to_millis(), pending.get(&p))
                {
                    if message.offset() >= wanted {
                        timestamps.entry(p).or_insert(ts);
                    }
                }
            }
        }
        Ok((committed, timestamps))
    })
    .await
    .context("the Kafka request did not finish")?
}

fn print(report: &Report, json: bool, watch: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        if watch {
            serde_json::to_writer(&mut out, report).context("writing the report")?;
        } else {
            serde_json::to_writer_pretty(&mut out, report).context("writing the report")?;
        }
        writeln!(out).context("writing the report")?;
        for e in &report.errors {
            eprintln!("prismctl: {} is not answering: {}", e.service, e.error);
        }
    } else {
        if watch {
            // Clear the screen and go home.
            write!(out, "\x1b[2J\x1b[H").context("writing the report")?;
        }
        print_table(&mut out, report).context("writing the report")?;
    }
    out.flush().context("writing the report")
}

fn dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "?".to_owned(), |s| format!("{s:.1}"))
}

fn print_table(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let kafka_down = report.errors.iter().any(|e| e.service == "kafka");
    let partitions = if kafka_down && report.topic_partitions.is_empty() {
        "partitions unknown: Kafka did not answer".to_owned()
    } else if report.topic_exists {
        format!("{} partitions", report.topic_partitions.len())
    } else {
        "does not exist yet".to_owned()
    };
    writeln!(
        out,
        "topic {} ({partitions}) at {}",
        report.topic,
        report.checked_at.format("%Y-%m-%d %H:%M:%S UTC")
    )?;
    for p in &report.projectors {
        writeln!(out)?;
        let header = match (&p.state, p.live_generation, &p.database) {
            (State::Live, Some(g), Some(db)) => format!(
                "live generation {g} ({db}); lag {} events, {} s",
                dash(p.lag_events),
                seconds(p.lag_seconds)
            ),
            (State::Live, _, _) => "live".to_owned(),
            (State::NotStarted, _, _) => "not started (no control database)".to_owned(),
            (State::NoLiveGeneration, _, _) => {
                "no live generation (a first rebuild may be running)".to_owned()
            }
            (State::Unavailable, _, _) => "positions unavailable (see below)".to_owned(),
        };
        writeln!(out, "{} (group {}): {header}", p.name, p.group_id)?;
        if !matches!(p.state, State::Live) {
            continue;
        }
        let header = [
            "PARTITION",
            "STORED",
            "END",
            "LAG",
            "LAG_S",
            "COMMITTED",
            "LAST EVENT",
            "WRITER",
            "LAST ERROR",
        ];
        let rows: Vec<[String; 9]> = p
            .partitions
            .iter()
            .map(|s| {
                let error = match (&s.last_error, s.last_error_at) {
                    (Some(e), Some(at)) => format!("{} ({e})", at.format("%H:%M:%S")),
                    (Some(e), None) => e.clone(),
                    _ => "-".to_owned(),
                };
                [
                    s.partition.to_string(),
                    dash(s.stored_offset),
                    dash(s.end_offset),
                    dash(s.lag_events),
                    if s.lag_events.is_some() {
                        seconds(s.lag_seconds)
                    } else {
                        "-".to_owned()
                    },
                    dash(s.committed_offset),
                    dash(s.event_time.map(|t| t.format("%Y-%m-%d %H:%M:%S"))),
                    dash(s.writer.as_deref()),
                    error,
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |out: &mut dyn Write, cells: [&str; 9]| -> std::io::Result<()> {
            let mut text = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i == 8 {
                    text.push_str(cell);
                } else if (1..=5).contains(&i) {
                    text.push_str(&format!("{cell:>w$}  "));
                } else {
                    text.push_str(&format!("{cell:<w$}  "));
                }
            }
            writeln!(out, "{}", text.trim_end())
        };
        line(out, header)?;
        for r in &rows {
            line(
                out,
                [
                    &r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6], &r[7], &r[8],
                ],
            )?;
        }
    }
    if !report.errors.is_empty() {
        writeln!(out)?;
        for e in &report.errors {
            writeln!(out, "{} is not answering: {}", e.service, e.error)?;
        }
        writeln!(out, "(is the stack up? `dev/stack up`)")?;
    }
    Ok(())
}
