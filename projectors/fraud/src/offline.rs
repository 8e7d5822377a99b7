//! The offline store: Parquet files on a file system, one directory per copy.
//!
//! ```text
//! <offline_dir>/c<N>/rows/event_date=YYYY-MM-DD/<name>.parquet     feature rows
//! <offline_dir>/c<N>/labels/report_date=YYYY-MM-DD/<name>.parquet  fraud reports
//! ```
//!
//! The `key=value` directories are Hive-style partitions: DuckDB
//! (`read_parquet('…/rows/*/*.parquet', hive_partitioning = true)`), pandas and pyarrow read
//! the date back as a column.
//!
//! # Crash safety
//! A file is written under a temporary name (`.<name>.tmp`, hidden), flushed to disk, then
//! renamed to its final name, and the directory is flushed: a file under its final name is
//! always complete. Readers ([`OfflineStore::files`]) never list temporary files, and
//! [`read_file`] refuses a file that is not a whole Parquet file (naming it), so a corrupt
//! or truncated file is never read as data. Leftover temporary files are removed by
//! [`OfflineStore::clean_temporary`].
//!
//! # Determinism
//! A file's name comes from what it holds (the batch's partition and offsets, or its first
//! event id for a rebuild's fill) and its bytes from its rows only (no clock, no random
//! part), so writing the same batch again replaces a file by an identical one. A replay with
//! other batch boundaries writes other files holding some of the same rows, identical to
//! the first ones: readers drop duplicates by `event_id` (`prismctl export features` does).

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use chrono::NaiveDate;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// The two tables of the offline store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// One row per card payment and withdrawal: the features as of just before it.
    Rows,
    /// One row per fraud report.
    Labels,
}

impl Table {
    /// The table's directory under a copy's.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Rows => "rows",
            Self::Labels => "labels",
        }
    }

    /// The name of its date partition.
    pub fn date_key(self) -> &'static str {
        match self {
            Self::Rows => "event_date",
            Self::Labels => "report_date",
        }
    }
}

/// Why the offline store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a complete Parquet file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("writing {path}: {reason}")]
    Encode { path: PathBuf, reason: String },
    /// Two files disagree about one event: the store does not hold what the fold wrote.
    #[error("{path}: {reason}")]
    Conflict { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OfflineError + '_ {
    move |source| OfflineError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One copy's directory of Parquet files.
#[derive(Debug, Clone)]
pub struct OfflineStore {
    dir: PathBuf,
}

impl OfflineStore {
    /// Copy `number`'s files under `root`.
    pub fn new(root: &Path, number: u32) -> Self {
        Self {
            dir: root.join(format!("c{number}")),
        }
    }

    /// The copy's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of `table`'s files of `date`.
    pub fn date_dir(&self, table: Table, date: NaiveDate) -> PathBuf {
        self.dir.join(table.dir_name()).join(format!(
            "{}={}",
            table.date_key(),
            date.format("%Y-%m-%d")
        ))
    }

    /// Writes `batch` as `<name>.parquet` in `table`'s directory of `date`, crash-safely
    /// (module docs): after this returns, the file is complete and on disk.
    pub fn write(
        &self,
        table: Table,
        date: NaiveDate,
        name: &str,
        batch: &RecordBatch,
    ) -> Result<PathBuf, OfflineError> {
        let dir = self.date_dir(table, date);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{name}.parquet"));
        let temporary = dir.join(format!(".{name}.parquet.tmp"));
        let bytes = encode(batch).map_err(|reason| OfflineError::Encode {
            path: path.clone(),
            reason,
        })?;
        let mut file = File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(&bytes).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
        drop(file);
        fs::rename(&temporary, &path).map_err(io(&path))?;
        // The rename itself is durable once the directory is.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        Ok(path)
    }

    /// Every complete file of `table` (temporary files are never listed), in name order:
    /// by date, then by name.
    pub fn files(&self, table: Table) -> Result<Vec<PathBuf>, OfflineError> {
        let root = self.dir.join(table.dir_name());
        let mut out = Vec::new();
        let dates = match fs::read_dir(&root) {
            Ok(dates) => dates,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&root)(e)),
        };
        for date in dates {
            let date = date.map_err(io(&root))?.path();
            if !date.is_dir() {
                continue;
            }
            for file in fs::read_dir(&date).map_err(io(&date))? {
                let path = file.map_err(io(&date))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".parquet") && !name.starts_with('.') {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes temporary files a crash left between writing and renaming; returns how many.
    pub fn clean_temporary(&self) -> Result<usize, OfflineError> {
        let mut removed = 0;
        for table in [Table::Rows, Table::Labels] {
            let root = self.dir.join(table.dir_name());
            let Ok(dates) = fs::read_dir(&root) else {
                continue;
            };
            for date in dates.flatten() {
                let Ok(files) = fs::read_dir(date.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let path = file.path();
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if name.starts_with('.') && name.ends_with(".tmp") {
                        fs::remove_file(&path).map_err(io(&path))?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Deletes the copy's directory and everything in it.
    pub fn remove(&self) -> Result<(), OfflineError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.dir)(e)),
        }
    }
}

/// The Parquet bytes of `batch`: Snappy pages, and nothing in them that depends on when or
/// where they were written.
fn encode(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(concat!("prism-fraud ", env!("CARGO_PKG_VERSION")).to_owned())
        .build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties))
        .map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Every row of the Parquet file at `path`, checked: a file that is not a whole Parquet
/// file (truncated, corrupt, not Parquet at all) is [`OfflineError::Corrupt`] naming it,
/// never rows.
pub fn read_file(path: &Path) -> Result<Vec<RecordBatch>, OfflineError> {
    let corrupt = |reason: String| OfflineError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| corrupt(e.to_string()))?
        .build()
        .map_err(|e| corrupt(e.to_string()))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "prism-fraud-offline-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    fn batch(ids: &[&str], amounts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("amount_minor", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids.to_vec())),
                Arc::new(Int64Array::from(amounts.to_vec())),
            ],
        )
        .expect("a batch")
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, 29).expect("a date")
    }

    #[test]
    fn a_written_file_reads_back_and_the_same_batch_writes_the_same_bytes() {
        let root = scratch("same");
        let store = OfflineStore::new(&root, 3);
        let rows = batch(&["a", "b"], &[10, 20]);
        let path = store
            .write(Table::Rows, day(), "p0-o1-2", &rows)
            .expect("writes");
        assert!(path.ends_with("c3/rows/event_date=2026-03-29/p0-o1-2.parquet"));
        let first = fs::read(&path).expect("bytes");
        store
            .write(Table::Rows, day(), "p0-o1-2", &rows)
            .expect("again");
        assert_eq!(fs::read(&path).expect("bytes"), first, "deterministic");
        let back = read_file(&path).expect("reads");
        assert_eq!(back, vec![rows]);
        assert_eq!(store.files(Table::Rows).expect("lists"), vec![path]);
        assert!(store.files(Table::Labels).expect("lists").is_empty());
        store.remove().expect("removes");
        assert!(!store.dir().exists());
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn a_truncated_or_temporary_file_is_never_read_as_data() {
        let root = scratch("torn");
        let store = OfflineStore::new(&root, 1);
        let path = store
            .write(Table::Rows, day(), "whole", &batch(&["a"], &[1]))
            .expect("writes");
        let bytes = fs::read(&path).expect("bytes");
        // A crash mid-write leaves a temporary file: never listed, then cleaned.
        let dir = store.date_dir(Table::Rows, day());
        fs::write(dir.join(".torn.parquet.tmp"), &bytes[..bytes.len() / 2]).expect("writes");
        assert_eq!(store.files(Table::Rows).expect("lists"), vec![path.clone()]);
        assert_eq!(store.clean_temporary().expect("cleans"), 1);
        // A file cut short under a final name (a disk that lied) is refused, named.
        let cut = dir.join("cut.parquet");
        fs::write(&cut, &bytes[..bytes.len() - 9]).expect("writes");
        let err = read_file(&cut).expect_err("truncated");
        assert!(matches!(err, OfflineError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("cut.parquet"), "{err}");
        fs::write(&cut, b"not parquet at all").expect("writes");
        assert!(matches!(read_file(&cut), Err(OfflineError::Corrupt { .. })));
        let _ = fs::remove_dir_all(root);
    }
}
