//! `prismctl verify ledger` against the real stack: a PostgreSQL event store in a schema of
//! its own, a ledger control database of its own (generation 1 live), events appended through
//! the `EventStore` trait and the matching read model rows written with plain SQL. Clean
//! first; then a corrupted balance, a double-applied statement line and an account the model
//! has not caught up with must all be reported as drift (also by the binary, exit 1).

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use prism_command::store::EventStore;
use prism_events::event::{
    AccountFrozen, AccountOpened, CardChannel, CardPayment, CardPaymentApproved,
    CardPaymentDeclined, DeclineReason, MoneyDeposited, MoneyWithdrawn, WithdrawalChannel,
};
use prism_events::{AccountEvent, AccountId, Country, Currency, Envelope};
use prism_ledger::store::Ledger;
use prism_platform::config::{Config, EventStoreBackend};
use prism_tests::{unique, up};
use prismctl::verify;
use serde_json::Value;
use sqlx::MySqlPool;
use uuid::Uuid;

fn isolated_config() -> Config {
    let mut config = prism_tests::config();
    config.event_store.backend = EventStoreBackend::Postgres;
    config.event_store.postgres_schema = unique("prism_test_verify");
    config.ledger.database = unique("prism_test_verify");
    config.log.level = "warn".into();
    config
}

fn envelope(account: AccountId, version: u64, event: AccountEvent) -> Envelope {
    Envelope {
        id: Uuid::now_v7(),
        source: "/prism/command".into(),
        account_id: account,
        time: Utc::now(),
        account_version: version,
        correlation_id: None,
        causation_id: None,
        event,
    }
}

fn opened() -> AccountEvent {
    AccountEvent::AccountOpened(AccountOpened {
        holder_name: "Ada Lovelace".into(),
        email: "ada@example.org".into(),
        country: up("codes", Country::parse("GB")),
        currency: up("codes", Currency::parse("GBP")),
        daily_withdrawal_limit_minor: 100_000,
    })
}

fn payment(amount_minor: i64) -> CardPayment {
    CardPayment {
        amount_minor,
        merchant_name: "Café Rosa".into(),
        merchant_category: "5814".into(),
        merchant_country: up("codes", Country::parse("PT")),
        channel: CardChannel::Pos,
    }
}

fn deposit(amount_minor: i64) -> AccountEvent {
    AccountEvent::MoneyDeposited(MoneyDeposited {
        amount_minor,
        description: None,
    })
}

/// Appends `events` as one commit after `expected`.
async fn append(
    store: &Arc<dyn EventStore>,
    account: AccountId,
    expected: u64,
    events: Vec<AccountEvent>,
) -> Vec<Envelope> {
    let envelopes: Vec<Envelope> = (1..)
        .zip(events)
        .map(|(i, e)| envelope(account, expected + i, e))
        .collect();
    up(
        "postgres",
        store.append(account, expected, &envelopes, None).await,
    );
    envelopes
}

/// Writes what the ledger would hold for `events` (one account, from its opening): the
/// account row and one statement line per money event.
async fn write_model(pool: &MySqlPool, events: &[Envelope]) {
    let mut balance = 0_i64;
    let mut status = "open";
    let Some(first) = events.first() else { return };
    let account = first.account_id.0;
    for e in events {
        let change = e.event.balance_change();
        let kind = match &e.event {
            AccountEvent::MoneyDeposited(_) => Some("deposit"),
            AccountEvent::MoneyWithdrawn(_) => Some("withdrawal"),
            AccountEvent::CardPaymentApproved(_) => Some("card_payment"),
            AccountEvent::AccountFrozen(_) => {
                status = "frozen";
                None
            }
            AccountEvent::AccountUnfrozen(_) => {
                status = "open";
                None
            }
            AccountEvent::AccountClosed(_) => {
                status = "closed";
                None
            }
            _ => None,
        };
        balance += change;
        if let Some(kind) = kind {
            up(
                "mysql",
                sqlx::query(
                    "INSERT INTO statement_lines (account_id, version, event_id, kind, \
                     amount_minor, balance_after_minor, occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(account)
                .bind(e.account_version)
                .bind(e.id)
                .bind(kind)
                .bind(change)
                .bind(balance)
                .bind(e.time)
                .execute(pool)
                .await,
            );
        }
    }
    let last = events.last().map_or(0, |e| e.account_version);
    up(
        "mysql",
        sqlx::query(
            "INSERT INTO accounts (account_id, holder_name, email, country, currency, status, \
             balance_minor, daily_withdrawal_limit_minor, opened_at, updated_at, version) \
             VALUES (?, 'Ada Lovelace', 'ada@example.org', 'GB', 'GBP', ?, ?, 100000, ?, ?, ?)",
        )
        .bind(account)
        .bind(status)
        .bind(balance)
        .bind(first.time)
        .bind(Utc::now())
        .bind(last)
        .execute(pool)
        .await,
    );
}

fn mismatches<'a>(
    report: &'a verify::VerifyReport,
    account: AccountId,
    field: &str,
) -> Vec<&'a verify::Mismatch> {
    report
        .mismatches
        .iter()
        .filter(|m| m.account_id == account.0 && m.field == field)
        .collect()
}

async fn scenario(config: Config, ledger: Ledger) {
    let store = up("postgres", prism_command::app::open_store(&config).await);
    let generation = up("mysql", ledger.live().await);
    let pool = generation.pool.clone();

    let a = AccountId::generate();
    let b = AccountId::generate();
    let a_events = append(
        &store,
        a,
        0,
        vec![
            opened(),
            deposit(10_000),
            AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
                amount_minor: 3_000,
                description: Some("rent".into()),
                channel: WithdrawalChannel::Atm,
            }),
            AccountEvent::CardPaymentApproved(CardPaymentApproved {
                payment: payment(1_250),
            }),
            AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
                payment: payment(99_999),
                decline_reason: DeclineReason::InsufficientFunds,
            }),
        ],
    )
    .await;
    let a_more = append(
        &store,
        a,
        5,
        vec![AccountEvent::AccountFrozen(AccountFrozen {
            reason: "card stolen".into(),
        })],
    )
    .await;
    let b_events = append(&store, b, 0, vec![opened(), deposit(500)]).await;
    let a_all: Vec<Envelope> = a_events.into_iter().chain(a_more).collect();
    write_model(&pool, &a_all).await;
    write_model(&pool, &b_events).await;

    // 1. Identical.
    let report = up("stack", verify::verify_ledger(&config).await);
    assert!(report.ok, "expected a clean verify: {report:#?}");
    assert_eq!(report.events_read, 8);
    assert_eq!(report.accounts_in_store, 2);
    assert_eq!(report.accounts_in_model, 2);
    assert_eq!(report.identical, 2);
    assert_eq!(report.generation, Some(generation.number));
    assert!(report.mismatches.is_empty());

    // 2. Drift: a corrupted balance, a line applied at the version of the freeze (the
    // deposit again), and an event the model has not caught up with.
    up(
        "mysql",
        sqlx::query("UPDATE accounts SET balance_minor = balance_minor + 1 WHERE account_id = ?")
            .bind(a.0)
            .execute(&pool)
            .await,
    );
    up(
        "mysql",
        sqlx::query(
            "INSERT INTO statement_lines (account_id, version, event_id, kind, amount_minor, \
             balance_after_minor, occurred_at) VALUES (?, 6, ?, 'deposit', 10000, 15750, ?)",
        )
        .bind(a.0)
        .bind(Uuid::now_v7())
        .bind(Utc::now())
        .execute(&pool)
        .await,
    );
    append(&store, b, 2, vec![deposit(25)]).await;

    let report = up("stack", verify::verify_ledger(&config).await);
    assert!(!report.ok, "drift not reported: {report:#?}");
    assert_eq!(report.drifted, 2, "{report:#?}");
    assert_eq!(report.behind, 1, "{report:#?}");
    assert_eq!(report.double_applied_lines, 1, "{report:#?}");
    let balance = mismatches(&report, a, "balance_minor");
    assert_eq!(balance.len(), 1, "{report:#?}");
    assert_eq!(balance[0].expected, Value::String("5750".into()));
    assert_eq!(balance[0].actual, Value::String("5751".into()));
    let count = mismatches(&report, a, "statement_lines");
    assert_eq!(count.len(), 1, "{report:#?}");
    assert_eq!(
        (count[0].expected.clone(), count[0].actual.clone()),
        (3.into(), 4.into())
    );
    let line = mismatches(&report, a, "statement_line");
    assert_eq!(line.len(), 1, "{report:#?}");
    assert_eq!(line[0].version, Some(6));
    let version = mismatches(&report, b, "version");
    assert_eq!(version.len(), 1, "{report:#?}");
    assert_eq!(
        (version[0].expected.clone(), version[0].actual.clone()),
        (3.into(), 2.into())
    );

    // 3. The binary says the same, with exit code 1.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = up(
        "prismctl",
        Command::new(env!("CARGO_BIN_EXE_prismctl"))
            .args(["verify", "ledger", "--json"])
            .current_dir(&root)
            .env("PRISM_CONFIG", root.join("config/prism.toml"))
            .env_remove("PRISM_PROFILE")
            .env("PRISM_EVENT_STORE__BACKEND", "postgres")
            .env(
                "PRISM_EVENT_STORE__POSTGRES_SCHEMA",
                &config.event_store.postgres_schema,
            )
            .env("PRISM_LEDGER__DATABASE", &config.ledger.database)
            .output(),
    );
    let json: Value = match serde_json::from_slice(&output.stdout) {
        Ok(v) => v,
        Err(e) => panic!(
            "verify --json printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    };
    assert_eq!(output.status.code(), Some(1), "{json:#}");
    assert_eq!(json["ok"], false);
    assert_eq!(json["double_applied_lines"], 1);
    assert_eq!(json["behind"], 1);

    // 4. Repaired a moment later, as a projector catching up would: `--wait` re-checks
    // until clean.
    let b_all = up("postgres", store.load(b, 0).await);
    let repair_pool = pool.clone();
    let repair = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let statements = [
            (
                "UPDATE accounts SET balance_minor = balance_minor - 1 WHERE account_id = ?",
                a,
            ),
            (
                "DELETE FROM statement_lines WHERE account_id = ? AND version = 6",
                a,
            ),
            ("DELETE FROM statement_lines WHERE account_id = ?", b),
            ("DELETE FROM accounts WHERE account_id = ?", b),
        ];
        for (sql, account) in statements {
            up(
                "mysql",
                sqlx::query(sql).bind(account.0).execute(&repair_pool).await,
            );
        }
        write_model(&repair_pool, &b_all).await;
    });
    let options = verify::Options {
        wait: Duration::from_secs(20),
        ..verify::Options::default()
    };
    let report = up("stack", verify::verify_ledger_with(&config, &options).await);
    up("repair task", repair.await);
    assert!(
        report.ok,
        "expected a clean verify after repair: {report:#?}"
    );
    assert!(report.attempts >= 2, "{report:#?}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_a_clean_ledger_then_every_kind_of_drift() {
    let config = isolated_config();
    let ledger = up("mysql", Ledger::open(&config.mysql, &config.ledger).await);
    // The clean-up below also runs when the scenario panics.
    let outcome = AssertUnwindSafe(scenario(config.clone(), ledger.clone()))
        .catch_unwind()
        .await;

    up("mysql", ledger.drop_everything().await);
    let pg = up(
        "postgres",
        prism_platform::clients::postgres(&config.postgres).await,
    );
    up(
        "postgres",
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            config.event_store.postgres_schema
        ))
        .execute(&pg)
        .await,
    );
    pg.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_that_never_ran_is_compared_as_empty_and_not_created() {
    let config = isolated_config();
    let report = up("stack", verify::verify_ledger(&config).await);
    // An empty store and no ledger: nothing differs.
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.generation, None);
    let mysql = up("mysql", prism_platform::clients::mysql(&config.mysql).await);
    let created = up(
        "mysql",
        verify::database_exists(&mysql, &config.ledger.database).await,
    );
    assert!(!created, "verify created the ledger's control database");
    mysql.close().await;
    let pg = up(
        "postgres",
        prism_platform::clients::postgres(&config.postgres).await,
    );
    up(
        "postgres",
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            config.event_store.postgres_schema
        ))
        .execute(&pg)
        .await,
    );
    pg.close().await;
}
