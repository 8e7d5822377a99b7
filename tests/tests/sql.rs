//! MySQL (the ledger's store) and PostgreSQL (the alternative event store) through sqlx.

use prism_platform::clients;
use prism_platform::config::MysqlConfig;
use prism_platform::secret::Dsn;
use prism_tests::{config, unique, up};
use sqlx::Row;

/// The same connection string pointing at another database.
fn with_database(dsn: &Dsn, database: &str) -> Dsn {
    let mut url = match url::Url::parse(dsn.expose()) {
        Ok(url) => url,
        Err(e) => panic!("configured URL {dsn} does not parse: {e}"),
    };
    url.set_path(database);
    Dsn::new(url.as_str())
}

#[tokio::test]
async fn mysql_stores_and_returns_rows_and_enforces_a_unique_key() {
    let cfg = config();
    let admin = up("mysql", clients::mysql(&cfg.mysql).await);
    let database = unique("prism_test");
    up(
        "mysql",
        sqlx::query(&format!(
            "CREATE DATABASE `{database}` CHARACTER SET utf8mb4"
        ))
        .execute(&admin)
        .await,
    );

    let pool = up(
        "mysql",
        clients::mysql(&MysqlConfig {
            url: with_database(&cfg.mysql.url, &database),
            ..cfg.mysql.clone()
        })
        .await,
    );
    up(
        "mysql",
        sqlx::query(
            "CREATE TABLE accounts (
                 account_id VARCHAR(64) PRIMARY KEY,
                 holder VARCHAR(200) NOT NULL,
                 balance_minor BIGINT NOT NULL
             ) ENGINE=InnoDB",
        )
        .execute(&pool)
        .await,
    );
    for (id, holder, balance) in [
        ("a-1", "Zoë Ångström", 9_007_199_254_740_993_i64),
        ("a-2", "Bo", -5),
    ] {
        up(
            "mysql",
            sqlx::query(
                "INSERT INTO accounts (account_id, holder, balance_minor) VALUES (?, ?, ?)",
            )
            .bind(id)
            .bind(holder)
            .bind(balance)
            .execute(&pool)
            .await,
        );
    }

    let row = up(
        "mysql",
        sqlx::query("SELECT holder, balance_minor FROM accounts WHERE account_id = ?")
            .bind("a-1")
            .fetch_one(&pool)
            .await,
    );
    assert_eq!(row.get::<String, _>("holder"), "Zoë Ångström");
    assert_eq!(row.get::<i64, _>("balance_minor"), 9_007_199_254_740_993);

    let duplicate = sqlx::query("INSERT INTO accounts VALUES ('a-1', 'again', 0)")
        .execute(&pool)
        .await;
    match duplicate {
        Err(sqlx::Error::Database(e)) => assert!(e.is_unique_violation(), "{e}"),
        other => panic!("expected a unique violation, got {other:?}"),
    }

    pool.close().await;
    up(
        "mysql",
        sqlx::query(&format!("DROP DATABASE `{database}`"))
            .execute(&admin)
            .await,
    );
}

#[tokio::test]
async fn postgres_commits_a_transaction_and_rolls_back_another() {
    let cfg = config();
    let pool = up("postgres", clients::postgres(&cfg.postgres).await);
    let schema = unique("prism_test");
    up(
        "postgres",
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&pool)
            .await,
    );
    up(
        "postgres",
        sqlx::query(&format!(
            "CREATE TABLE {schema}.events (
                 account_id TEXT NOT NULL,
                 version BIGINT NOT NULL,
                 payload JSONB NOT NULL,
                 PRIMARY KEY (account_id, version)
             )"
        ))
        .execute(&pool)
        .await,
    );

    let insert =
        format!("INSERT INTO {schema}.events (account_id, version, payload) VALUES ($1, $2, $3)");
    let mut tx = up("postgres", pool.begin().await);
    for version in 1..=2_i64 {
        up(
            "postgres",
            sqlx::query(&insert)
                .bind("acc-1")
                .bind(version)
                .bind(serde_json::json!({ "amount_minor": version * 100 }))
                .execute(&mut *tx)
                .await,
        );
    }
    up("postgres", tx.commit().await);

    let mut tx = up("postgres", pool.begin().await);
    up(
        "postgres",
        sqlx::query(&insert)
            .bind("acc-1")
            .bind(3_i64)
            .bind(serde_json::json!({}))
            .execute(&mut *tx)
            .await,
    );
    up("postgres", tx.rollback().await);

    let rows = up(
        "postgres",
        sqlx::query(&format!(
            "SELECT version, (payload->>'amount_minor')::BIGINT AS amount FROM {schema}.events
             WHERE account_id = $1 ORDER BY version"
        ))
        .bind("acc-1")
        .fetch_all(&pool)
        .await,
    );
    let got: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| (r.get("version"), r.get("amount")))
        .collect();
    assert_eq!(got, vec![(1, 100), (2, 200)]);

    let duplicate = sqlx::query(&insert)
        .bind("acc-1")
        .bind(2_i64)
        .bind(serde_json::json!({}))
        .execute(&pool)
        .await;
    match duplicate {
        Err(sqlx::Error::Database(e)) => assert!(e.is_unique_violation(), "{e}"),
        other => panic!("expected a unique violation, got {other:?}"),
    }

    up(
        "postgres",
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&pool)
            .await,
    );
}
