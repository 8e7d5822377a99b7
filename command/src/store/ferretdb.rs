//! FerretDB 1.x on PostgreSQL: the lookup indexes its queries can use.
//!
//! FerretDB stores each collection as a PostgreSQL table of one `jsonb` column, `_jsonb`,
//! and sends every top-level equality of a filter as `WHERE _jsonb->$1 @> $2` (measured
//! with `log_min_duration_statement`; `internal/backends/postgresql/query.go`). Its own
//! indexes (what `createIndexes` makes) are btree indexes on `(_jsonb->'field')`, which
//! enforce uniqueness but cannot serve `@>`, so without more every lookup — even by `_id` —
//! reads the whole table: 455 ms for one `_id` at 94 k commits, growing with the store.
//!
//! A GIN index on the same expression (`jsonb_path_ops`) serves exactly that operator: the
//! same lookup takes about 1 ms. [`add_lookup_indexes`] adds one per field that the event
//! store's hot paths look up by equality, in the PostgreSQL database FerretDB writes to
//! (`[mongodb] ferretdb_postgres_url`). They are invisible to FerretDB (it lists the
//! indexes of its own metadata) and go away with their table when a collection is
//! dropped. Only speed depends on them: every query is the same with or without them, and
//! on a real MongoDB the collections' own indexes do this job (this module is not used).

use mongodb::bson::doc;
use mongodb::Database;
use prism_platform::secret::Dsn;
use sqlx::{Connection, PgConnection};
use std::time::Duration;

use super::StoreError;

/// How long connecting to FerretDB's PostgreSQL may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the server behind `database` is FerretDB: its `buildInfo` answer carries
/// `ferretdbFeatures` (MongoDB's never does).
pub(crate) async fn is_ferretdb(database: &Database) -> Result<bool, StoreError> {
    let info = database
        .run_command(doc! { "buildInfo": 1 })
        .await
        .map_err(|e| StoreError::Unavailable(format!("mongodb: buildInfo: {e}")))?;
    Ok(info.contains_key("ferretdbFeatures") || info.contains_key("ferretdbVersion"))
}

/// Adds a GIN index on `_jsonb -> field` to the table of each `(collection, field)` of
/// FerretDB database `database`, unless there. Answers how many it created. The tables are
/// found in FerretDB's own catalogue (`<database>._ferretdb_database_metadata`); a
/// collection FerretDB has not created yet is skipped (the next start adds its index).
pub(crate) async fn add_lookup_indexes(
    url: &Dsn,
    database: &str,
    indexes: &[(&str, &str)],
) -> Result<usize, StoreError> {
    let failed = |what: &str, e: sqlx::Error| {
        StoreError::Unavailable(format!(
            "FerretDB's PostgreSQL ({}): {what}: {e}",
            url.redacted()
        ))
    };
    let mut connection = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url.expose()))
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "FerretDB's PostgreSQL ({}): no connection within {CONNECT_TIMEOUT:?}",
                url.redacted()
            ))
        })?
        .map_err(|e| failed("connecting", e))?;
    // FerretDB 1.x keeps a database in the schema of the same name.
    let schema = quote_ident(database);
    let mut created = 0;
    for &(collection, field) in indexes {
        let table: Option<String> = sqlx::query_scalar(&format!(
            "SELECT _jsonb->>'table' FROM {schema}._ferretdb_database_metadata \
             WHERE _jsonb->>'_id' = $1"
        ))
        .bind(collection)
        .fetch_optional(&mut connection)
        .await
        .map_err(|e| failed("reading FerretDB's catalogue", e))?;
        let Some(table) = table else { continue };
        let name = lookup_index_name(&table, field);
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = $1 AND indexname = $2)",
        )
        .bind(database)
        .bind(&name)
        .fetch_one(&mut connection)
        .await
        .map_err(|e| failed("listing indexes", e))?;
        if exists {
            continue;
        }
        let statement = format!(
            "CREATE INDEX IF NOT EXISTS {} ON {schema}.{} USING gin ((_jsonb -> {}) jsonb_path_ops)",
            quote_ident(&name),
            quote_ident(&table),
            quote_literal(field),
        );
        match sqlx::query(&statement).execute(&mut connection).await {
            Ok(_) => created += 1,
            // Another instance starting at the same moment made it first.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {}
            Err(e) => return Err(failed("creating a lookup index", e)),
        }
    }
    // Best effort: the server drops the session anyway.
    let _ = connection.close().await;
    Ok(created)
}

/// The lookup index of `table`'s `field` (PostgreSQL truncates names past 63 bytes; tables
/// FerretDB names are short: `<collection>_<8 hex digits>`).
pub(crate) fn lookup_index_name(table: &str, field: &str) -> String {
    format!("{table}_{}_lookup", field.trim_start_matches('_'))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quotes_are_safe_sql() {
        assert_eq!(
            lookup_index_name("commits_4f59511d", "_id"),
            "commits_4f59511d_id_lookup"
        );
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
