//! The offline store's two tables as Arrow record batches: feature rows (one per card
//! payment and withdrawal) and labels (one per fraud report). Column order and types are
//! part of the API: `prismctl export features`, DuckDB and pandas read them.
//!
//! Feature rows: `event_id`, `account_id` (text UUIDs), `account_version`, `event_time` and
//! `feature_time` (timestamps µs UTC: the event's own time, and the time its features were
//! computed at, see FEATURES.md), `event_type` (`card_payment_approved`,
//! `card_payment_declined`, `withdrawal`), `kafka_partition`, `kafka_offset` (null for rows
//! a rebuild wrote from the event store), `feature_set_version`, then every feature of
//! [`FeatureVector::COLUMNS`] in its order.
//!
//! Labels: `payment_event_id`, `account_id`, `reported_at` (timestamp µs UTC, the report's
//! event time), `report_event_id`, `reason`.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::features::{ColumnKind, FeatureVector, Row, Value, FEATURE_COUNT, FEATURE_SET_VERSION};

/// One feature row: the features an event got, and where the event was read.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    pub row: Row,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

/// One fraud report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRow {
    pub payment_event_id: Uuid,
    pub account_id: Uuid,
    pub reported_at: DateTime<Utc>,
    pub report_event_id: Uuid,
    pub reason: String,
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The feature rows' schema.
pub fn feature_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("account_id", DataType::Utf8, false),
        Field::new("account_version", DataType::UInt64, false),
        Field::new("event_time", timestamp_type(), false),
        Field::new("feature_time", timestamp_type(), false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, true),
        Field::new("kafka_offset", DataType::Int64, true),
        Field::new("feature_set_version", DataType::Utf8, false),
    ];
    for column in FeatureVector::COLUMNS {
        let kind = match column.kind {
            ColumnKind::Int64 => DataType::Int64,
            ColumnKind::UInt32 => DataType::UInt32,
            ColumnKind::Float64 => DataType::Float64,
            ColumnKind::Bool => DataType::Boolean,
        };
        fields.push(Field::new(column.name, kind, column.nullable));
    }
    Arc::new(Schema::new(fields))
}

/// The labels' schema.
pub fn label_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("payment_event_id", DataType::Utf8, false),
        Field::new("account_id", DataType::Utf8, false),
        Field::new("reported_at", timestamp_type(), false),
        Field::new("report_event_id", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]))
}

fn uuids<'a>(ids: impl Iterator<Item = &'a Uuid>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(ids.map(Uuid::to_string)))
}

fn times<'a>(times: impl Iterator<Item = &'a DateTime<Utc>>) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from_iter_values(times.map(DateTime::timestamp_micros))
            .with_timezone("UTC"),
    )
}

/// `rows` as one record batch of [`feature_schema`].
pub fn feature_batch(rows: &[FeatureRow]) -> Result<RecordBatch, ArrowError> {
    let mut columns: Vec<ArrayRef> = vec![
        uuids(rows.iter().map(|r| &r.row.event_id)),
        uuids(rows.iter().map(|r| &r.row.account_id.0)),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.row.account_version),
        )),
        times(rows.iter().map(|r| &r.row.event_time)),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| r.row.feature_time_micros),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.row.kind.as_str()),
        )),
        Arc::new(rows.iter().map(|r| r.partition).collect::<Int32Array>()),
        Arc::new(rows.iter().map(|r| r.offset).collect::<Int64Array>()),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|_| FEATURE_SET_VERSION),
        )),
    ];
    let values: Vec<_> = rows.iter().map(|r| r.row.features.values()).collect();
    for (i, column) in FeatureVector::COLUMNS.iter().enumerate() {
        let at = |row: &[Value; FEATURE_COUNT]| row[i];
        let array: ArrayRef = match column.kind {
            ColumnKind::Int64 => Arc::new(
                values
                    .iter()
                    .map(|v| match at(v) {
                        Value::Int64(x) => Some(x),
                        _ => None,
                    })
                    .collect::<Int64Array>(),
            ),
            ColumnKind::UInt32 => Arc::new(
                values
                    .iter()
                    .map(|v| match at(v) {
                        Value::UInt32(x) => Some(x),
                        _ => None,
                    })
                    .collect::<UInt32Array>(),
            ),
            ColumnKind::Float64 => Arc::new(
                values
                    .iter()
                    .map(|v| match at(v) {
                        Value::Float64(x) => Some(x),
                        _ => None,
                    })
                    .collect::<Float64Array>(),
            ),
            ColumnKind::Bool => Arc::new(
                values
                    .iter()
                    .map(|v| match at(v) {
                        Value::Bool(x) => Some(x),
                        _ => None,
                    })
                    .collect::<BooleanArray>(),
            ),
        };
        columns.push(array);
    }
    RecordBatch::try_new(feature_schema(), columns)
}

/// `labels` as one record batch of [`label_schema`].
pub fn label_batch(labels: &[LabelRow]) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(
        label_schema(),
        vec![
            uuids(labels.iter().map(|l| &l.payment_event_id)),
            uuids(labels.iter().map(|l| &l.account_id)),
            times(labels.iter().map(|l| &l.reported_at)),
            uuids(labels.iter().map(|l| &l.report_event_id)),
            Arc::new(StringArray::from_iter_values(
                labels.iter().map(|l| l.reason.as_str()),
            )),
        ],
    )
}

/// One cell of a table as JSON (timestamps as RFC 3339 with microseconds).
fn cell(array: &dyn arrow_array::Array, row: usize) -> serde_json::Value {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, UInt32Type, UInt64Type,
    };
    use serde_json::Value as J;
    if array.is_null(row) {
        return J::Null;
    }
    match array.data_type() {
        DataType::Utf8 => J::from(array.as_string::<i32>().value(row)),
        DataType::Boolean => J::from(array.as_boolean().value(row)),
        DataType::Int32 => J::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => J::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt32 => J::from(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => J::from(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float64 => {
            serde_json::Number::from_f64(array.as_primitive::<Float64Type>().value(row))
                .map_or(J::Null, J::Number)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let micros = array.as_primitive::<TimestampMicrosecondType>().value(row);
            DateTime::from_timestamp_micros(micros).map_or(J::from(micros), |t| {
                J::from(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            })
        }
        other => J::from(format!("<{other}>")),
    }
}

/// Every row of `table` in `store` as a JSON object by column name, keyed and de-duplicated
/// by `event_id` (feature rows) or `report_event_id` (labels): what a reader that drops
/// duplicates sees. Two different rows under one key are an error: the store would be
/// wrong.
pub fn read_table(
    store: &crate::offline::OfflineStore,
    table: crate::offline::Table,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>, crate::offline::OfflineError> {
    let key = match table {
        crate::offline::Table::Rows => "event_id",
        crate::offline::Table::Labels => "report_event_id",
    };
    let mut out = std::collections::BTreeMap::new();
    for path in store.files(table)? {
        for batch in crate::offline::read_file(&path)? {
            let schema = batch.schema();
            for row in 0..batch.num_rows() {
                let object: serde_json::Map<String, serde_json::Value> = schema
                    .fields()
                    .iter()
                    .zip(batch.columns())
                    .map(|(field, column)| (field.name().clone(), cell(column.as_ref(), row)))
                    .collect();
                let id = object
                    .get(key)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned();
                let object = serde_json::Value::Object(object);
                if let Some(earlier) = out.get(&id) {
                    if earlier != &object {
                        return Err(crate::offline::OfflineError::Conflict {
                            path: path.clone(),
                            reason: format!("{key} {id} holds another row than an earlier file"),
                        });
                    }
                }
                out.insert(id, object);
            }
        }
    }
    Ok(out)
}
