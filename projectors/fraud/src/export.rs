//! A training set from the offline store: `prismctl export features --from --to --cutoff
//! --out`.
//!
//! 1. Reads the feature rows of the event dates between `from` and `to` (inclusive), keeps
//!    the rows whose event time is in `[from, to)`, and drops duplicates by `event_id`
//!    (a replay may have written a row twice; the copies are identical).
//! 2. Reads the labels (fraud reports) made at or before `cutoff` — the moment the training
//!    set pretends to be built at. A report made later is unknown then: its payment is
//!    labelled not fraud, exactly as a model trained at `cutoff` would have seen it (no
//!    label leakage). A payment reported twice keeps its first report.
//! 3. Writes one Parquet file: the rows in event-time order (then event id) with two more
//!    columns, `label` (reported as fraud at or before the cut-off) and `reported_at`
//!    (when, or null).
//!
//! Files are read with [`read_file`], so a file that is not a complete Parquet file stops
//! the export with its name: it is never read as data.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::offline::{read_file, OfflineError, OfflineStore, Table};

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// Rows whose event time is at or after this…
    pub from: DateTime<Utc>,
    /// …and before this.
    pub to: DateTime<Utc>,
    /// Labels known at this time (reports made at or before it).
    pub cutoff: DateTime<Utc>,
    /// The Parquet file to write (replaced if it exists).
    pub out: PathBuf,
}

/// What an export read and wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    pub row_files: usize,
    pub label_files: usize,
    /// Rows in the date range's files, duplicates and rows outside `[from, to)` included.
    pub rows_read: usize,
    /// Rows dropped because an identical row (same event id) came first.
    pub duplicates: usize,
    /// Rows written.
    pub rows: usize,
    /// Rows written with `label = true`.
    pub frauds: usize,
    /// Reports made after the cut-off, left out.
    pub reports_after_cutoff: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Offline(#[from] OfflineError),
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

fn format_error(path: &Path, reason: impl Into<String>) -> ExportError {
    ExportError::Format {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The date of a `key=YYYY-MM-DD` directory holding `file`.
fn date_of(file: &Path) -> Option<NaiveDate> {
    let dir = file.parent()?.file_name()?.to_str()?;
    let (_, date) = dir.split_once('=')?;
    NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()
}

fn column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a ArrayRef, ExportError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format_error(path, format!("no column {name}")))
}

fn timestamps<'a>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a TimestampMicrosecondArray, ExportError> {
    column(batch, name, path)?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| format_error(path, format!("{name} is not a timestamp in µs")))
}

/// Every fraud report made at or before `cutoff`: payment event id → when it was first
/// reported (µs).
fn labels(
    store: &OfflineStore,
    cutoff: DateTime<Utc>,
    summary: &mut ExportSummary,
) -> Result<HashMap<String, i64>, ExportError> {
    let cutoff_us = cutoff.timestamp_micros();
    let mut reported: HashMap<String, i64> = HashMap::new();
    for path in store.files(Table::Labels)? {
        if date_of(&path).is_some_and(|d| d > cutoff.date_naive()) {
            continue;
        }
        summary.label_files += 1;
        for batch in read_file(&path)? {
            let ids = column(&batch, "payment_event_id", &path)?
                .as_string_opt::<i32>()
                .ok_or_else(|| format_error(&path, "payment_event_id is not text"))?;
            let at = timestamps(&batch, "reported_at", &path)?;
            for i in 0..batch.num_rows() {
                if ids.is_null(i) || at.is_null(i) {
                    continue;
                }
                let when = at.value(i);
                if when > cutoff_us {
                    summary.reports_after_cutoff += 1;
                    continue;
                }
                reported
                    .entry(ids.value(i).to_owned())
                    .and_modify(|first| *first = (*first).min(when))
                    .or_insert(when);
            }
        }
    }
    Ok(reported)
}

/// Builds the training set of `request` from `store` (module docs).
pub fn export(store: &OfflineStore, request: &ExportRequest) -> Result<ExportSummary, ExportError> {
    if request.from >= request.to {
        return Err(ExportError::Invalid(format!(
            "--from ({}) must be before --to ({})",
            request.from, request.to
        )));
    }
    let mut summary = ExportSummary::default();
    let reported = labels(store, request.cutoff, &mut summary)?;
    let (from_us, to_us) = (
        request.from.timestamp_micros(),
        request.to.timestamp_micros(),
    );
    let (first_day, last_day) = (request.from.date_naive(), request.to.date_naive());

    let mut schema: Option<Arc<Schema>> = None;
    let mut kept: Vec<RecordBatch> = Vec::new();
    // (event time, event id, batch, row) of every row kept, to order the output.
    let mut order: Vec<(i64, String, usize, usize)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for path in store.files(Table::Rows)? {
        if date_of(&path).is_some_and(|d| d < first_day || d > last_day) {
            continue;
        }
        summary.row_files += 1;
        for batch in read_file(&path)? {
            match &schema {
                None => schema = Some(batch.schema()),
                Some(first) if first.fields() != batch.schema().fields() => {
                    return Err(format_error(
                        &path,
                        "its columns differ from the other files' (another feature set \
                         version?); export one copy at a time (prismctl rebuild fraud)",
                    ));
                }
                Some(_) => {}
            }
            let ids = column(&batch, "event_id", &path)?
                .as_string_opt::<i32>()
                .ok_or_else(|| format_error(&path, "event_id is not text"))?;
            let times = timestamps(&batch, "event_time", &path)?;
            let index = kept.len();
            for row in 0..batch.num_rows() {
                summary.rows_read += 1;
                if ids.is_null(row) || times.is_null(row) {
                    continue;
                }
                let t = times.value(row);
                if t < from_us || t >= to_us {
                    continue;
                }
                let id = ids.value(row);
                if !seen.insert(id.to_owned()) {
                    summary.duplicates += 1;
                    continue;
                }
                order.push((t, id.to_owned(), index, row));
            }
            kept.push(batch);
        }
    }
    let Some(schema) = schema else {
        return Err(ExportError::Invalid(
            "the offline store has no feature rows in that range".into(),
        ));
    };
    order.sort();
    summary.rows = order.len();

    let indices: Vec<(usize, usize)> = order.iter().map(|(_, _, b, r)| (*b, *r)).collect();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len() + 2);
    for (i, field) in schema.fields().iter().enumerate() {
        let parts: Vec<&dyn Array> = kept.iter().map(|b| b.column(i).as_ref()).collect();
        columns.push(
            arrow_select::interleave::interleave(&parts, &indices)
                .map_err(|e| ExportError::Invalid(format!("column {}: {e}", field.name())))?,
        );
    }
    let when: Vec<Option<i64>> = order
        .iter()
        .map(|(_, id, _, _)| reported.get(id).copied())
        .collect();
    summary.frauds = when.iter().filter(|w| w.is_some()).count();
    columns.push(Arc::new(BooleanArray::from(
        when.iter().map(|w| Some(w.is_some())).collect::<Vec<_>>(),
    )));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(when).with_timezone("UTC"),
    ));
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("label", DataType::Boolean, false));
    fields.push(Field::new(
        "reported_at",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| ExportError::Invalid(e.to_string()))?;
    write(&request.out, &out)?;
    Ok(summary)
}

/// Writes `batch` to `path` through a temporary file beside it.
fn write(path: &Path, batch: &RecordBatch) -> Result<(), ExportError> {
    let io = |source| OfflineError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ExportError::Invalid(format!("{} is not a file name", path.display())))?;
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties))
        .map_err(|e| format_error(path, e.to_string()))?;
    writer
        .write(batch)
        .map_err(|e| format_error(path, e.to_string()))?;
    writer
        .close()
        .map_err(|e| format_error(path, e.to_string()))?;
    let mut file = File::create(&temporary).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temporary, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow_array::{Int64Array, StringArray};

    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "prism-fraud-export-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("an RFC 3339 time")
    }

    fn rows(ids: &[&str], times: &[&str], amounts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new(
                "event_time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("amount_minor", DataType::Int64, true),
        ]));
        let times: Vec<i64> = times.iter().map(|t| at(t).timestamp_micros()).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids.to_vec())),
                Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
                Arc::new(Int64Array::from(amounts.to_vec())),
            ],
        )
        .expect("rows")
    }

    fn reports(ids: &[&str], times: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("payment_event_id", DataType::Utf8, false),
            Field::new(
                "reported_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]));
        let times: Vec<i64> = times.iter().map(|t| at(t).timestamp_micros()).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids.to_vec())),
                Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
            ],
        )
        .expect("reports")
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("a date")
    }

    #[test]
    fn rows_in_range_once_each_in_time_order_with_labels_known_at_the_cutoff() {
        let root = scratch();
        let store = OfflineStore::new(&root, 1);
        let d1 = ["2026-05-01T10:00:00Z", "2026-05-01T09:00:00Z"];
        store
            .write(
                Table::Rows,
                day("2026-05-01"),
                "p0-o1-2",
                &rows(&["b", "a"], &d1, &[2, 1]),
            )
            .expect("writes");
        // A replay with other batch boundaries wrote "a" again, and "c" (outside the range).
        store
            .write(
                Table::Rows,
                day("2026-05-01"),
                "p0-o2-3",
                &rows(
                    &["a", "c"],
                    &["2026-05-01T09:00:00Z", "2026-05-01T23:00:00Z"],
                    &[1, 3],
                ),
            )
            .expect("writes");
        // "a" reported before the cut-off, "b" after it.
        store
            .write(
                Table::Labels,
                day("2026-05-02"),
                "p0-o9-10",
                &reports(
                    &["a", "b"],
                    &["2026-05-02T00:00:00Z", "2026-05-03T12:00:00Z"],
                ),
            )
            .expect("writes");
        let out = root.join("training.parquet");
        let summary = export(
            &store,
            &ExportRequest {
                from: at("2026-05-01T00:00:00Z"),
                to: at("2026-05-01T12:00:00Z"),
                cutoff: at("2026-05-03T00:00:00Z"),
                out: out.clone(),
            },
        )
        .expect("exports");
        assert_eq!(
            (
                summary.rows_read,
                summary.duplicates,
                summary.rows,
                summary.frauds
            ),
            (4, 1, 2, 1)
        );
        assert_eq!(summary.reports_after_cutoff, 1);
        let written = read_file(&out).expect("reads");
        let batch = &written[0];
        let ids = batch
            .column_by_name("event_id")
            .and_then(|c| c.as_string_opt::<i32>())
            .expect("ids");
        assert_eq!((ids.value(0), ids.value(1)), ("a", "b"), "time order");
        let labels = batch
            .column_by_name("label")
            .and_then(|c| c.as_boolean_opt())
            .expect("labels");
        assert!(labels.value(0), "a was reported before the cut-off");
        assert!(
            !labels.value(1),
            "b's report came after the cut-off: unknown then"
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn a_corrupt_file_stops_the_export_naming_it() {
        let root = scratch();
        let store = OfflineStore::new(&root, 1);
        store
            .write(
                Table::Rows,
                day("2026-05-01"),
                "good",
                &rows(&["a"], &["2026-05-01T09:00:00Z"], &[1]),
            )
            .expect("writes");
        let bad = store
            .date_dir(Table::Rows, day("2026-05-01"))
            .join("bad.parquet");
        fs::write(&bad, b"PAR1 torn").expect("writes");
        let err = export(
            &store,
            &ExportRequest {
                from: at("2026-05-01T00:00:00Z"),
                to: at("2026-05-02T00:00:00Z"),
                cutoff: at("2026-05-02T00:00:00Z"),
                out: root.join("out.parquet"),
            },
        )
        .expect_err("corrupt");
        assert!(err.to_string().contains("bad.parquet"), "{err}");
        assert!(!root.join("out.parquet").exists());
        let _ = fs::remove_dir_all(root);
    }
}
