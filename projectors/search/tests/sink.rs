//! The search sink and its copies against the real engine of the local stack (OpenSearch
//! here, Elasticsearch 8 under docker-compose). Every test works under its own index
//! prefix and deletes it at the end, even when it fails.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use elasticsearch::indices::{IndicesGetAliasParts, IndicesRefreshParts};
use elasticsearch::{Elasticsearch, SearchParts};
use prism_events::event::{
    AccountOpened, CardChannel, CardPayment, CardPaymentApproved, CardPaymentDeclined,
    DeclineReason, MoneyDeposited, MoneyWithdrawn, WithdrawalChannel,
};
use prism_events::{AccountEvent, AccountId, Country, Currency, Envelope};
use prism_projector::copies::CopyState;
use prism_projector::{AccountVersion, Batch, PositionUpdate, Sink, SinkError};
use prism_search::copies::{SearchCopies, SearchCopy};
use prism_search::fold::{fold_batch, AccountDoc, TransactionDoc, Writes};
use prism_search::index::Names;
use prism_search::sink::EsSink;
use prism_search::SearchConfig;
use prism_tests::{config, unique, up};
use serde_json::{json, Value};
use uuid::Uuid;

/// A test's own copies under a unique prefix; deletes every index under it when dropped.
struct Model {
    copies: SearchCopies,
}

impl Model {
    async fn new() -> Self {
        let cfg = config();
        let search = SearchConfig {
            index_prefix: unique("prism-test-search"),
            ..SearchConfig::default()
        };
        let copies = up(
            "elasticsearch",
            SearchCopies::connect(&cfg.elasticsearch, &search).await,
        );
        Self { copies }
    }

    fn client(&self) -> &Elasticsearch {
        self.copies.client()
    }

    fn names(&self) -> &Names {
        self.copies.names()
    }

    async fn live(&self) -> (SearchCopy, EsSink) {
        let copy = up("elasticsearch", self.copies.live().await);
        let sink = EsSink::new(copy.clone());
        (copy, sink)
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        let copies = self.copies.clone();
        // Async cleanup from a synchronous drop: its own thread, runtime and client.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let client = prism_platform::clients::elasticsearch(&config().elasticsearch);
            if let (Ok(runtime), Ok(client)) = (runtime, client) {
                let copies = copies.with_client(client);
                // The engine may be slow while other tests load it: a few attempts.
                for attempt in 1..=3 {
                    match runtime.block_on(copies.drop_everything()) {
                        Ok(()) => break,
                        Err(e) => eprintln!("cleaning up the test's indices ({attempt}): {e:#}"),
                    }
                }
            }
        });
        let _ = cleanup.join();
    }
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 21, minute, 0)
        .single()
        .expect("valid time")
}

fn envelope(account: Uuid, version: u64, event: AccountEvent) -> Envelope {
    Envelope {
        id: Uuid::now_v7(),
        source: "/prism/test".into(),
        account_id: AccountId(account),
        time: at(version as u32),
        account_version: version,
        correlation_id: None,
        causation_id: None,
        event,
    }
}

fn opened(account: Uuid, holder: &str) -> Envelope {
    envelope(
        account,
        1,
        AccountEvent::AccountOpened(AccountOpened {
            holder_name: holder.into(),
            // The holder's first name, then the account: distinct per account.
            email: format!(
                "{}-{}@example.org",
                holder.split(' ').next().unwrap_or("x").to_lowercase(),
                account.simple()
            ),
            country: Country::parse("DE").expect("DE"),
            currency: Currency::parse("EUR").expect("EUR"),
            daily_withdrawal_limit_minor: 100_000,
        }),
    )
}

fn deposited(account: Uuid, version: u64, amount_minor: i64) -> Envelope {
    envelope(
        account,
        version,
        AccountEvent::MoneyDeposited(MoneyDeposited {
            amount_minor,
            description: Some("Salary November".into()),
        }),
    )
}

fn withdrawn(account: Uuid, version: u64, amount_minor: i64) -> Envelope {
    envelope(
        account,
        version,
        AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
            amount_minor,
            description: None,
            channel: WithdrawalChannel::Atm,
        }),
    )
}

fn card(merchant: &str, category: &str, amount_minor: i64) -> CardPayment {
    CardPayment {
        amount_minor,
        merchant_name: merchant.into(),
        merchant_category: category.into(),
        merchant_country: Country::parse("PT").expect("PT"),
        channel: CardChannel::Pos,
    }
}

fn paid(account: Uuid, version: u64, payment: CardPayment) -> Envelope {
    envelope(
        account,
        version,
        AccountEvent::CardPaymentApproved(CardPaymentApproved { payment }),
    )
}

fn declined(account: Uuid, version: u64, payment: CardPayment) -> Envelope {
    envelope(
        account,
        version,
        AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
            payment,
            decline_reason: DeclineReason::InsufficientFunds,
        }),
    )
}

/// A batch of `events` leaving partition 0 at `offset`, as the runtime would hand it over
/// (the last version and event of every account).
fn batch(events: Vec<Envelope>, expected: Option<i64>, offset: i64) -> Batch {
    let mut versions: Vec<AccountVersion> = Vec::new();
    for e in &events {
        let v = AccountVersion {
            account_id: e.account_id.0,
            version: e.account_version,
            event_id: e.id,
        };
        match versions.iter_mut().find(|x| x.account_id == v.account_id) {
            Some(x) => *x = v,
            None => versions.push(v),
        }
    }
    let last = events.last().map(|e| (e.id, e.time));
    Batch {
        events,
        versions,
        offsets: Vec::new(),
        position: Some(PositionUpdate {
            partition: 0,
            expected,
            offset,
            event_id: last.map(|(id, _)| id),
            event_time: last.map(|(_, time)| time),
            writer: "prism-search/test".into(),
        }),
    }
}

/// Every document of `index` (refreshed first) as (id, source, version), sorted by id.
/// Write times (`updated_at`) are left out: they say when, not what.
async fn contents(client: &Elasticsearch, index: &str) -> Vec<(String, Value, Option<i64>)> {
    let refreshed = client
        .indices()
        .refresh(IndicesRefreshParts::Index(&[index]))
        .send()
        .await;
    assert!(up("elasticsearch", refreshed).status_code().is_success());
    let response = client
        .search(SearchParts::Index(&[index]))
        .body(json!({ "size": 10_000, "version": true, "query": { "match_all": {} } }))
        .send()
        .await;
    let response = up("elasticsearch", response);
    let status = response.status_code();
    let body: Value = up("elasticsearch", response.json().await);
    assert!(status.is_success(), "searching {index}: {body}");
    let mut docs: Vec<(String, Value, Option<i64>)> = body["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|hit| {
            let mut source = hit["_source"].clone();
            if let Some(o) = source.as_object_mut() {
                o.remove("updated_at");
            }
            (
                hit["_id"].as_str().expect("id").to_owned(),
                source,
                hit["_version"].as_i64(),
            )
        })
        .collect();
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    docs
}

/// The read model of a copy, whole: transactions and accounts (with their external
/// versions), and the checkpoint documents. Internal versions of transaction documents
/// count writes, not content, so they are left out.
#[derive(Debug, PartialEq)]
struct Snapshot {
    transactions: Vec<(String, Value)>,
    accounts: Vec<(String, Value, Option<i64>)>,
    checkpoints: Vec<(String, Value, Option<i64>)>,
}

async fn snapshot(client: &Elasticsearch, copy: &SearchCopy) -> Snapshot {
    let mut checkpoints = contents(client, &copy.checkpoints_index).await;
    for (id, _, version) in &mut checkpoints {
        // The position document's internal version counts its writes.
        if id.starts_with("partition-") {
            *version = None;
        }
    }
    Snapshot {
        transactions: contents(client, &copy.transactions_index)
            .await
            .into_iter()
            .map(|(id, source, _)| (id, source))
            .collect(),
        accounts: contents(client, &copy.accounts_index).await,
        checkpoints,
    }
}

fn sources<T: serde::de::DeserializeOwned>(docs: &[(String, Value)]) -> Vec<T> {
    docs.iter()
        .map(|(_, source)| serde_json::from_value(source.clone()).expect("a document"))
        .collect()
}

/// Two accounts with every kind of transaction: 10 events.
fn history(a: Uuid, b: Uuid) -> Vec<Envelope> {
    vec![
        opened(a, "Zoë Müller"),
        opened(b, "Ada Lovelace"),
        deposited(a, 2, 50_000),
        paid(a, 3, card("Café Rosa", "5814", 1_250)),
        deposited(b, 2, 2_000),
        withdrawn(a, 4, 10_000),
        declined(b, 3, card("CRYPTO*EXCHANGE", "6051", 900_000)),
        paid(b, 4, card("Livraria Lello", "5942", 1_500)),
        withdrawn(b, 5, 100),
        declined(a, 5, card("Golden Dragon", "5812", 90_000_000)),
    ]
}

#[tokio::test]
async fn an_applied_batch_is_read_back_document_by_document_with_its_position() {
    let model = Model::new().await;
    let (copy, sink) = model.live().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let events = history(a, b);
    let batch = batch(events.clone(), None, 9);

    sink.apply(&batch).await.expect("applies");

    // The documents are exactly what the pure fold makes of the events.
    let mut state = HashMap::new();
    let expected = fold_batch(&mut state, &events).expect("folds");
    let model_now = snapshot(model.client(), &copy).await;
    let mut want_transactions: Vec<TransactionDoc> =
        expected.transactions.into_iter().map(|(_, t)| t).collect();
    want_transactions.sort_by_key(|t| t.event_id.to_string());
    assert_eq!(want_transactions.len(), 8);
    assert_eq!(
        sources::<TransactionDoc>(&model_now.transactions),
        want_transactions
    );
    let mut want_accounts = expected.accounts.clone();
    want_accounts.sort_by_key(|d| d.account_id.to_string());
    let got_accounts: Vec<AccountDoc> = model_now
        .accounts
        .iter()
        .map(|(_, s, _)| serde_json::from_value(s.clone()).expect("an account"))
        .collect();
    assert_eq!(got_accounts, want_accounts);
    // Balances: a: 50,000 - 1,250 - 10,000; b: 2,000 - 1,500 - 100.
    let balance = |id: Uuid| state[&id].balance_minor;
    assert_eq!((balance(a), balance(b)), (38_750, 400));
    // Account documents carry their version as the engine's external version.
    for (_, source, version) in &model_now.accounts {
        assert_eq!(source["version"].as_i64(), *version);
    }

    // The checkpoint: the position and every account's version.
    let positions = sink.positions(&[0, 1]).await.expect("positions");
    assert_eq!(positions.len(), 1);
    assert_eq!(positions[0].offset, 9);
    assert_eq!(positions[0].event_id, Some(events[9].id));
    let versions = sink
        .versions(&[a, b, Uuid::now_v7()])
        .await
        .expect("versions");
    assert_eq!(versions, HashMap::from([(a, 5), (b, 5)]));
}

#[tokio::test]
async fn replaying_a_batch_changes_nothing() {
    let model = Model::new().await;
    let (copy, sink) = model.live().await;
    let events = history(Uuid::now_v7(), Uuid::now_v7());
    sink.apply(&batch(events.clone(), None, 9))
        .await
        .expect("applies");
    let before = snapshot(model.client(), &copy).await;

    // The same events again, by the partition's owner (as after a lost acknowledgement).
    sink.apply(&batch(events.clone(), Some(9), 9))
        .await
        .expect("a replay applies");
    // And the very same batch (its fence is stale now): refused, nothing written.
    let stale = sink.apply(&batch(events, None, 9)).await;
    assert!(
        matches!(
            stale,
            Err(SinkError::Fenced {
                partition: 0,
                stored: Some(9)
            })
        ),
        "{stale:?}"
    );

    assert_eq!(snapshot(model.client(), &copy).await, before);
}

#[tokio::test]
async fn a_fenced_writer_writes_no_position_and_leaves_the_model_equal() {
    let model = Model::new().await;
    let (copy, sink) = model.live().await;
    let a = Uuid::now_v7();
    sink.apply(&batch(
        vec![opened(a, "Grace Hopper"), deposited(a, 2, 500)],
        None,
        1,
    ))
    .await
    .expect("applies");
    let before = snapshot(model.client(), &copy).await;

    // Another writer that read no position, then one that read an older one, both with
    // new events.
    for expected in [None, Some(0), Some(7)] {
        let later = batch(vec![withdrawn(a, 3, 100)], expected, 2);
        let result = sink.apply(&later).await;
        assert!(
            matches!(
                result,
                Err(SinkError::Fenced {
                    partition: 0,
                    stored: Some(1)
                })
            ),
            "{expected:?}: {result:?}"
        );
    }
    assert_eq!(snapshot(model.client(), &copy).await, before);
    assert_eq!(sink.positions(&[0]).await.expect("positions")[0].offset, 1);
}

/// A sink remembers the accounts it wrote only while the partition's stored position is
/// its own last write: once another instance wrote the partition (a rebalance moved it
/// away and back) or an error was recorded on it, the accounts are read again, and every
/// document ends as the fold of all the events.
#[tokio::test]
async fn remembered_accounts_are_read_again_once_the_partition_was_written_by_another() {
    let model = Model::new().await;
    let (copy, first) = model.live().await;
    let second = EsSink::new(copy.clone());
    let x = Uuid::now_v7();
    let events = [
        opened(x, "Ada Lovelace"),
        deposited(x, 2, 1_000),
        deposited(x, 3, 500),
        withdrawn(x, 4, 200),
        deposited(x, 5, 50),
        deposited(x, 6, 10),
    ];
    let mut offset = 0;
    let mut send = |sink: &EsSink, from: usize, to: usize| {
        let expected = (offset > 0).then_some(offset);
        offset = to as i64;
        let batch = batch(events[from..to].to_vec(), expected, offset);
        let sink = sink.clone();
        async move { sink.apply(&batch).await }
    };
    send(&first, 0, 2).await.expect("the first instance");
    send(&second, 2, 3).await.expect("another instance");
    send(&first, 3, 4)
        .await
        .expect("the first instance, after the other");
    send(&first, 4, 5).await.expect("the first instance again");
    first
        .record_error(0, "a retried failure")
        .await
        .expect("an error recorded");
    send(&first, 5, 6)
        .await
        .expect("the first instance, after the error");

    let mut state = HashMap::new();
    let all = fold_batch(&mut state, &events).expect("folds");
    let model_now = snapshot(model.client(), &copy).await;
    let accounts: Vec<AccountDoc> = model_now
        .accounts
        .iter()
        .map(|(_, s, _)| serde_json::from_value(s.clone()).expect("an account"))
        .collect();
    assert_eq!(accounts, all.accounts);
    assert_eq!(accounts[0].balance_minor, 1_360);
    assert_eq!(model_now.transactions.len(), all.transactions.len());
    assert_eq!(
        first.versions(&[x]).await.expect("versions"),
        HashMap::from([(x, 6)])
    );
}

#[tokio::test]
async fn a_batch_applied_again_after_a_crash_before_its_position_ends_as_a_clean_apply() {
    let model = Model::new().await;
    let (clean_copy, clean) = model.live().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let events = history(a, b);
    let (first, second) = events.split_at(4);

    // The clean copy: two batches.
    clean
        .apply(&batch(first.to_vec(), None, 3))
        .await
        .expect("applies");
    clean
        .apply(&batch(second.to_vec(), Some(3), 9))
        .await
        .expect("applies");

    let clean_now = snapshot(model.client(), &clean_copy).await;
    let mut state: HashMap<Uuid, AccountDoc> = HashMap::new();
    fold_batch(&mut state, first).expect("folds");
    let writes = fold_batch(&mut state, second).expect("folds");

    // Crash 1: batch 2's transactions landed, the writer died before its accounts.
    let copy = up("elasticsearch", model.copies.create_next().await);
    let crashed = EsSink::new(copy.clone());
    crashed
        .apply(&batch(first.to_vec(), None, 3))
        .await
        .expect("applies");
    let transactions_only = Writes {
        transactions: writes.transactions.clone(),
        ..Writes::default()
    };
    crashed
        .write_raw(&transactions_only)
        .await
        .expect("transactions land");
    // The checkpoint still says batch 1 (the accounts carry the versions): the runtime
    // hands over batch 2 again, whole.
    assert_eq!(
        crashed.positions(&[0]).await.expect("positions")[0].offset,
        3
    );
    assert_eq!(
        crashed.versions(&[a, b]).await.expect("versions"),
        HashMap::from([(a, 3), (b, 1)])
    );
    crashed
        .apply(&batch(second.to_vec(), Some(3), 9))
        .await
        .expect("applies after the crash");
    assert_eq!(snapshot(model.client(), &copy).await, clean_now);

    // Crash 2: every document of batch 2 landed, the writer died before the position.
    let copy = up("elasticsearch", model.copies.create_next().await);
    let crashed = EsSink::new(copy.clone());
    crashed
        .apply(&batch(first.to_vec(), None, 3))
        .await
        .expect("applies");
    crashed.write_raw(&writes).await.expect("documents land");
    // The versions say batch 2 is handled, the position does not: the runtime skips its
    // events as duplicates and stores the position (keeping the last event it had).
    assert_eq!(
        crashed.versions(&[a, b]).await.expect("versions"),
        HashMap::from([(a, 5), (b, 5)])
    );
    let mut skipped = batch(Vec::new(), Some(3), 9);
    skipped.position = skipped.position.map(|p| PositionUpdate {
        event_id: None,
        event_time: None,
        ..p
    });
    crashed.apply(&skipped).await.expect("the position moves");
    let now = snapshot(model.client(), &copy).await;
    assert_eq!(now.transactions, clean_now.transactions);
    assert_eq!(now.accounts, clean_now.accounts);
    assert_eq!(
        crashed.positions(&[0]).await.expect("positions")[0].offset,
        9
    );
    // A worker that still had batch 2 in hand applies it whole instead: the same.
    crashed
        .apply(&batch(second.to_vec(), Some(9), 9))
        .await
        .expect("applies");
    let now = snapshot(model.client(), &copy).await;
    assert_eq!(
        (now.transactions, now.accounts),
        (clean_now.transactions, clean_now.accounts)
    );
}

#[tokio::test]
async fn a_late_write_of_older_documents_never_overwrites_newer_ones() {
    let model = Model::new().await;
    let (copy, sink) = model.live().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let events = history(a, b);
    let (first, second) = events.split_at(4);
    // A writer folded the first batch, then stalled (a rebalance moved the partition).
    let mut stalled_state = HashMap::new();
    let stalled = fold_batch(&mut stalled_state, first).expect("folds");
    sink.apply(&batch(first.to_vec(), None, 3))
        .await
        .expect("applies");
    sink.apply(&batch(second.to_vec(), Some(3), 9))
        .await
        .expect("applies");
    let before = snapshot(model.client(), &copy).await;

    // Its bulk lands late: the account documents it carries are older and lose.
    sink.write_raw(&stalled)
        .await
        .expect("the late bulk is answered");

    assert_eq!(snapshot(model.client(), &copy).await, before);
}

#[tokio::test]
async fn a_document_the_mapping_refuses_is_rejected_naming_its_event_and_the_rest_lands() {
    let model = Model::new().await;
    let (copy, sink) = model.live().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    // A category code longer than any keyword term may be (Lucene's 32,766 bytes).
    let poison = paid(a, 2, card("Huge Category", &"9".repeat(40_000), 100));
    let events = vec![
        opened(a, "Alan Turing"),
        opened(b, "Edsger Dijkstra"),
        poison,
        deposited(b, 2, 700),
    ];
    let result = sink.apply(&batch(events.clone(), None, 3)).await;
    match &result {
        Err(SinkError::Rejected { index, reason }) => {
            assert_eq!(*index, 2, "{reason}");
        }
        other => panic!("expected the poison event to be rejected, got {other:?}"),
    }
    assert!(sink.positions(&[0]).await.expect("positions").is_empty());
    // No account moved: account documents follow only a batch whose transactions all
    // landed (else a's balance would count a payment that has no document).
    assert!(snapshot(model.client(), &copy).await.accounts.is_empty());

    // The runtime dead-letters event 2 and applies the rest; a's version moves past it.
    let mut rest = batch(
        vec![events[0].clone(), events[1].clone(), events[3].clone()],
        None,
        3,
    );
    for v in &mut rest.versions {
        if v.account_id == a {
            *v = AccountVersion {
                account_id: a,
                version: 2,
                event_id: events[2].id,
            };
        }
    }
    sink.apply(&rest).await.expect("the rest applies");

    let now = snapshot(model.client(), &copy).await;
    let transactions: Vec<TransactionDoc> = sources(&now.transactions);
    assert_eq!(transactions.len(), 1);
    assert_eq!(transactions[0].event_id, events[3].id);
    assert_eq!(transactions[0].amount_minor, 700);
    let accounts: Vec<AccountDoc> = now
        .accounts
        .iter()
        .map(|(_, source, _)| serde_json::from_value(source.clone()).expect("an account"))
        .collect();
    let balances: HashMap<Uuid, (i64, u64)> = accounts
        .iter()
        .map(|d| (d.account_id, (d.balance_minor, d.version)))
        .collect();
    assert_eq!(balances, HashMap::from([(a, (0, 1)), (b, (700, 2))]));
    assert_eq!(
        sink.versions(&[a, b]).await.expect("versions"),
        HashMap::from([(a, 2), (b, 2)])
    );
    assert_eq!(sink.positions(&[0]).await.expect("positions")[0].offset, 3);
}

#[tokio::test]
async fn a_version_gap_is_refused_by_the_fold_and_nothing_moves() {
    let model = Model::new().await;
    let (copy, sink) = model.live().await;
    let a = Uuid::now_v7();
    sink.apply(&batch(vec![opened(a, "Barbara Liskov")], None, 0))
        .await
        .expect("applies");
    let before = snapshot(model.client(), &copy).await;

    let result = sink
        .apply(&batch(vec![deposited(a, 3, 100)], Some(0), 1))
        .await;
    match &result {
        Err(SinkError::Rejected { index: 0, reason }) => {
            assert!(reason.contains("missing"), "{reason}")
        }
        other => panic!("expected a gap rejection, got {other:?}"),
    }
    assert_eq!(snapshot(model.client(), &copy).await, before);
}

#[tokio::test]
async fn a_missing_index_is_permanent_and_is_not_recreated_by_a_write() {
    let model = Model::new().await;
    let (copy, sink) = model.live().await;
    let deleted = model
        .client()
        .indices()
        .delete(elasticsearch::indices::IndicesDeleteParts::Index(&[
            &copy.transactions_index
        ]))
        .send()
        .await;
    assert!(up("elasticsearch", deleted).status_code().is_success());

    let a = Uuid::now_v7();
    let result = sink
        .apply(&batch(
            vec![opened(a, "Ken Thompson"), deposited(a, 2, 1)],
            None,
            1,
        ))
        .await;
    assert!(matches!(result, Err(SinkError::Permanent(_))), "{result:?}");
    let exists = model
        .client()
        .indices()
        .exists(elasticsearch::indices::IndicesExistsParts::Index(&[
            &copy.transactions_index
        ]))
        .send()
        .await;
    assert_eq!(up("elasticsearch", exists).status_code().as_u16(), 404);
    assert!(sink.positions(&[0]).await.expect("positions").is_empty());
}

#[tokio::test]
async fn an_engine_that_does_not_answer_is_transient_never_a_rejection() {
    let model = Model::new().await;
    let (copy, _) = model.live().await;
    // The same copy through a client whose engine is gone (nothing listens on port 9).
    let gone = prism_platform::config::ElasticsearchConfig {
        url: prism_platform::secret::Dsn::new("http://127.0.0.1:9"),
        request_timeout_ms: 2_000,
        ..config().elasticsearch
    };
    let client = up(
        "elasticsearch",
        prism_platform::clients::elasticsearch(&gone),
    );
    let sink = EsSink::new(SearchCopy { client, ..copy });
    let a = Uuid::now_v7();
    let events = vec![opened(a, "Margaret Hamilton"), deposited(a, 2, 10)];

    let results = [
        sink.apply(&batch(events, None, 1)).await.err(),
        sink.positions(&[0]).await.err(),
        sink.versions(&[a]).await.err(),
        sink.record_error(0, "x").await.err(),
    ];
    for result in results {
        assert!(
            matches!(result, Some(SinkError::Transient(_))),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn the_last_error_is_kept_on_an_existing_position_only() {
    let model = Model::new().await;
    let (copy, sink) = model.live().await;
    sink.record_error(0, "nothing stored yet")
        .await
        .expect("no position: nothing to record on");
    assert!(model
        .copies
        .partitions(&copy)
        .await
        .expect("partitions")
        .is_empty());

    let a = Uuid::now_v7();
    sink.apply(&batch(vec![opened(a, "Frances Allen")], None, 0))
        .await
        .expect("applies");
    sink.record_error(0, &"x".repeat(5_000))
        .await
        .expect("records");
    // The next batch keeps the error visible (until the next one replaces it).
    sink.apply(&batch(vec![deposited(a, 2, 5)], Some(0), 1))
        .await
        .expect("applies");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        // A search: it sees the checkpoint index as of its last refresh.
        let statuses = model.copies.partitions(&copy).await.expect("partitions");
        if statuses.first().is_some_and(|s| s.offset == 1) {
            break statuses[0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = status.last_error.expect("the error is kept");
    assert_eq!(error.chars().count(), 2_000);
    assert!(status.last_error_at.is_some());
    assert_eq!(status.writer, "prism-search/test");
}

/// Ids of the documents of `index` (an alias) that `query` finds, sorted.
async fn found(client: &Elasticsearch, index: &str, query: Value) -> Vec<String> {
    let response = client
        .search(SearchParts::Index(&[index]))
        .body(json!({ "query": query }))
        .send()
        .await;
    let response = up("elasticsearch", response);
    let status = response.status_code();
    let body: Value = up("elasticsearch", response.json().await);
    assert!(status.is_success(), "{body}");
    let mut ids: Vec<String> = body["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .filter_map(|h| h["_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn accents_and_case_do_not_matter_to_searches() {
    let model = Model::new().await;
    let (copy, sink) = model.live().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let events = history(a, b);
    sink.apply(&batch(events.clone(), None, 9))
        .await
        .expect("applies");
    contents(model.client(), &copy.transactions_index).await; // refreshes
    contents(model.client(), &copy.accounts_index).await;
    let transactions = model.names().transactions_alias();
    let accounts = model.names().accounts_alias();
    let of_a: Vec<String> = {
        let mut ids: Vec<String> = events
            .iter()
            .filter(|e| e.account_id.0 == a && e.account_version > 1)
            .map(|e| e.id.to_string())
            .collect();
        ids.sort();
        ids
    };

    for text in ["zoe", "MULLER", "Zoë Müller", "zoe muller"] {
        let query = json!({ "simple_query_string": {
            "query": text, "fields": ["holder_name"], "default_operator": "and"
        }});
        assert_eq!(
            found(model.client(), &transactions, query).await,
            of_a,
            "{text}"
        );
    }
    // A merchant written with an accent, found without.
    let cafe =
        json!({ "simple_query_string": { "query": "cafe rosa", "fields": ["merchant_name"] }});
    assert_eq!(
        found(model.client(), &transactions, cafe).await,
        vec![events[3].id.to_string()]
    );
    // The folded keyword filters exactly, whatever the case and accents.
    let exact = json!({ "term": { "merchant_name.folded": "Cafe ROSA" } });
    assert_eq!(found(model.client(), &transactions, exact).await.len(), 1);
    // Autocomplete on the holder's name and e-mail.
    for prefix in ["zo", "zoë mü", "MUL"] {
        let query = json!({ "multi_match": {
            "query": prefix, "type": "bool_prefix",
            "fields": ["holder_name.suggest", "holder_name.suggest._2gram", "holder_name.suggest._3gram"]
        }});
        assert_eq!(
            found(model.client(), &accounts, query).await,
            vec![a.to_string()],
            "{prefix}"
        );
    }
    let query = json!({ "multi_match": {
        "query": "zoe", "type": "bool_prefix",
        "fields": ["email.suggest", "email.suggest._2gram", "email.suggest._3gram"]
    }});
    assert_eq!(
        found(model.client(), &accounts, query).await,
        vec![a.to_string()]
    );
}

/// Which index each alias points at, read in one request (one cluster state).
async fn alias_targets(client: &Elasticsearch, names: &Names) -> HashMap<String, Vec<String>> {
    let (t, a) = (names.transactions_alias(), names.accounts_alias());
    let response = client
        .indices()
        .get_alias(IndicesGetAliasParts::Name(&[&t, &a]))
        .send()
        .await;
    let body: Value = up("elasticsearch", up("elasticsearch", response).json().await);
    let mut targets: HashMap<String, Vec<String>> = HashMap::new();
    for (index, entry) in body.as_object().expect("indices") {
        for alias in entry["aliases"].as_object().expect("aliases").keys() {
            targets
                .entry(alias.clone())
                .or_default()
                .push(index.clone());
        }
    }
    targets
}

#[tokio::test]
async fn promote_moves_both_aliases_at_once_and_retires_the_old_copy() {
    let model = Model::new().await;
    let (first, sink) = model.live().await;
    let names = model.names().clone();
    assert_eq!(model.copies.live_number().await.expect("live"), Some(1));
    let a = Uuid::now_v7();
    sink.apply(&batch(vec![opened(a, "Old Copy")], None, 0))
        .await
        .expect("applies");

    let next = up("elasticsearch", model.copies.create_next().await);
    assert_eq!(next.number, 2);
    assert_eq!(
        model.copies.newest_building().await.expect("building"),
        Some(2)
    );
    let b = Uuid::now_v7();
    EsSink::new(next.clone())
        .apply(&batch(vec![opened(b, "New Copy")], None, 0))
        .await
        .expect("applies");
    contents(model.client(), &next.accounts_index).await; // refreshes

    // A reader watches both aliases while the promotion runs: every observation shows
    // both on the same single copy, the old one and then the new one.
    let watcher = {
        let client = model.client().clone();
        let names = names.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let targets = alias_targets(&client, &names).await;
                let t = targets
                    .get(&names.transactions_alias())
                    .cloned()
                    .unwrap_or_default();
                let a = targets
                    .get(&names.accounts_alias())
                    .cloned()
                    .unwrap_or_default();
                let copies: Vec<u32> = t
                    .iter()
                    .chain(a.iter())
                    .filter_map(|i| i.rsplit_once("-g").and_then(|(_, n)| n.parse().ok()))
                    .collect();
                assert_eq!((t.len(), a.len()), (1, 1), "{targets:?}");
                assert_eq!(copies[0], copies[1], "{targets:?}");
                seen.push(copies[0]);
                if copies[0] == 2 || tokio::time::Instant::now() > deadline {
                    return seen;
                }
            }
        })
    };
    model.copies.promote(2).await.expect("promotes");
    let seen = watcher.await.expect("the watcher saw no broken state");
    assert_eq!(seen.last(), Some(&2));

    assert_eq!(model.copies.live_number().await.expect("live"), Some(2));
    let states: Vec<(u32, CopyState)> = model
        .copies
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|c| (c.number, c.state))
        .collect();
    assert_eq!(states, vec![(1, CopyState::Retired), (2, CopyState::Live)]);
    // Queries through the aliases now see the new copy's documents.
    assert_eq!(
        found(
            model.client(),
            &names.accounts_alias(),
            json!({ "match_all": {} })
        )
        .await,
        vec![b.to_string()]
    );
    // The live copy cannot be abandoned; the retired one is dropped with its indices.
    assert!(model.copies.abandon(2).await.is_err());
    let dropped = model.copies.drop_retired().await.expect("drops");
    assert!(dropped.contains(&first.transactions_index), "{dropped:?}");
    let exists = model
        .client()
        .indices()
        .exists(elasticsearch::indices::IndicesExistsParts::Index(&[
            &first.accounts_index
        ]))
        .send()
        .await;
    assert_eq!(up("elasticsearch", exists).status_code().as_u16(), 404);
    assert_eq!(
        model
            .copies
            .list()
            .await
            .expect("list")
            .iter()
            .map(|c| c.number)
            .collect::<Vec<_>>(),
        vec![2]
    );
}

#[tokio::test]
async fn a_first_start_that_died_before_its_aliases_is_finished_by_the_next() {
    let model = Model::new().await;
    let (copy, sink) = model.live().await;
    let a = Uuid::now_v7();
    sink.apply(&batch(vec![opened(a, "Leslie Lamport")], None, 0))
        .await
        .expect("applies");
    // The aliases are gone, as if the process died between registering copy 1 and
    // pointing the aliases at it.
    let names = model.names();
    let removed = model
        .client()
        .indices()
        .update_aliases()
        .body(json!({ "actions": [
            { "remove": { "index": copy.transactions_index, "alias": names.transactions_alias() } },
            { "remove": { "index": copy.accounts_index, "alias": names.accounts_alias() } }
        ]}))
        .send()
        .await;
    assert!(up("elasticsearch", removed).status_code().is_success());
    assert_eq!(model.copies.live_number().await.expect("live"), None);

    let (again, _) = model.live().await;
    assert_eq!(again.number, 1);
    let targets = alias_targets(model.client(), names).await;
    assert_eq!(
        targets[&names.transactions_alias()],
        vec![copy.transactions_index.clone()]
    );
    assert_eq!(
        targets[&names.accounts_alias()],
        vec![copy.accounts_index.clone()]
    );
    // Nothing was lost: the copy is the same one.
    assert_eq!(
        EsSink::new(again).positions(&[0]).await.expect("positions")[0].offset,
        0
    );
}

#[tokio::test]
async fn instances_report_themselves_and_are_forgotten() {
    let model = Model::new().await;
    model.live().await;
    let report = prism_projector::copies::InstanceReport {
        instance: "prism-search/test-host/1/abc".into(),
        writing: Some(1),
        can_open: None,
        error: Some("cannot open copy 2".into()),
    };
    model
        .copies
        .report_instance(&report)
        .await
        .expect("reports");
    let rows = model
        .copies
        .instances(Duration::from_secs(60))
        .await
        .expect("instances");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].instance, report.instance);
    assert_eq!((rows[0].writing, rows[0].can_open), (Some(1), None));
    assert_eq!(rows[0].error.as_deref(), Some("cannot open copy 2"));
    model
        .copies
        .forget_instance(&report.instance)
        .await
        .expect("forgets");
    assert!(model
        .copies
        .instances(Duration::from_secs(60))
        .await
        .expect("instances")
        .is_empty());
}
