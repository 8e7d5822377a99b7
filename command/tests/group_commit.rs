//! Group commit through the real service: concurrent commands on different accounts share
//! store round trips, and every guarantee of a single command still holds for each.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use prism_command::store::batcher::Batcher;
use prism_command::store::{AppendError, Commit};
use prism_events::event::{AccountOpened, MoneyDeposited};
use prism_events::testing::{self, country, currency};
use prism_events::{AccountEvent, AccountId};
use prism_platform::config::EventStoreBackend;
use prism_tests::up;
use serde_json::json;
use support::{
    assert_every_event_published, assert_per_account_order, clean_up, consume, isolated_config,
    last_versions, stored_events, Api, Instance,
};

/// `prism_command_append_batch_size`'s `_count` and the count of its `le="1"` bucket.
async fn batch_sizes(api: &Api) -> (u64, u64) {
    let text = match api.http.get(format!("{}/metrics", api.base)).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(e) => panic!("metrics: {e}"),
    };
    let value = |prefix: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
    };
    (
        value("prism_command_append_batch_size_count "),
        value("prism_command_append_batch_size_bucket{le=\"1\"} "),
    )
}

async fn concurrent_commands_on_different_accounts_share_round_trips(backend: EventStoreBackend) {
    let config = isolated_config(backend);
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);

    let accounts: Vec<String> = join_all((0..24).map(|_| api.open("EUR"))).await;
    let racing = api.open("EUR").await;
    assert_eq!(api.deposit(&racing, 1_000).await.status, 200);

    // 24 accounts × 6 deposits, all at once, plus 50 withdrawals racing on one account.
    let deposits = join_all(
        accounts
            .iter()
            .flat_map(|account| (1..=6).map(move |i| (account, i)))
            .map(|(account, i)| {
                let api = api.clone();
                async move { (account.clone(), api.deposit(account, i).await) }
            }),
    );
    let withdrawals = join_all((0..50).map(|i| {
        let api = api.clone();
        let racing = racing.clone();
        async move {
            api.post(
                &format!("/v1/accounts/{racing}/withdrawals"),
                json!({ "amount_minor": 30, "channel": "atm", "description": format!("w{i}") }),
            )
            .await
        }
    }));
    let (deposits, withdrawals) = futures::join!(deposits, withdrawals);

    for (account, answer) in &deposits {
        assert_eq!(answer.status, 200, "deposit on {account}: {}", answer.body);
    }
    let accepted = withdrawals.iter().filter(|a| a.status == 200).count();
    assert_eq!(accepted, 33, "1000 / 30 = 33 withdrawals fit, never more");
    for answer in withdrawals.iter().filter(|a| a.status != 200) {
        assert_eq!(answer.status, 422, "{}", answer.body);
        assert_eq!(answer.body["code"], "insufficient_funds");
    }

    // The store holds every accepted command once, per account without gaps.
    let stored = stored_events(&config).await;
    for account in &accounts {
        let state = api.get(&format!("/v1/accounts/{account}")).await;
        assert_eq!(
            state.body["balance_minor"], 21,
            "1 + 2 + … + 6 on {account}"
        );
        assert_eq!(state.body["version"], 7);
    }
    let racing_state = api.get(&format!("/v1/accounts/{racing}")).await;
    assert_eq!(racing_state.body["balance_minor"], 10);
    assert_eq!(racing_state.body["version"], 35);
    for (account, events) in &stored {
        let versions: Vec<u64> = events.iter().map(|e| e.account_version).collect();
        let wanted: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, wanted, "account {account}");
    }
    assert_eq!(stored.len(), accounts.len() + 1);

    // They were written in shared round trips: some batch held more than one commit.
    let (batches, alone) = batch_sizes(&api).await;
    assert!(batches > 0, "every append goes through the batcher");
    assert!(
        alone < batches,
        "under concurrency some batches hold several commits: {alone} of {batches} were alone"
    );

    // And each reached Kafka, in per-account order.
    let expected = last_versions(&stored);
    let records = tokio::task::spawn_blocking({
        let config = config.clone();
        let expected = expected.clone();
        move || consume(&config, &expected, Duration::from_secs(60))
    })
    .await
    .unwrap_or_else(|e| panic!("consumer thread: {e}"));
    assert_per_account_order(&records, &expected);
    assert_every_event_published(&records, &stored);

    instance.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_on_different_accounts_share_round_trips_on_mongodb() {
    concurrent_commands_on_different_accounts_share_round_trips(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_on_different_accounts_share_round_trips_on_postgres() {
    concurrent_commands_on_different_accounts_share_round_trips(EventStoreBackend::Postgres).await;
}

/// With `append_batch_max = 1` nothing is batched: the switch really turns it off (and the
/// service still answers everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_maximum_of_one_appends_every_command_on_its_own() {
    let mut config = isolated_config(EventStoreBackend::Postgres);
    config.command.append_batch_max = 1;
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let accounts: Vec<String> = join_all((0..16).map(|_| api.open("EUR"))).await;
    let answers = join_all(accounts.iter().map(|a| api.deposit(a, 5))).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let (batches, _) = batch_sizes(&api).await;
    assert_eq!(batches, 0, "no batch is written with batching off");
    let stored = stored_events(&config).await;
    let wanted: BTreeMap<String, u64> = accounts.iter().map(|a| (a.clone(), 2)).collect();
    assert_eq!(last_versions(&stored), wanted);
    instance.stop().await;
    clean_up(&config).await;
}

fn opened(account: AccountId) -> Commit {
    let event = AccountEvent::AccountOpened(AccountOpened {
        holder_name: "Batch Holder".into(),
        email: "b@example.org".into(),
        country: country("DE"),
        currency: currency("EUR"),
        daily_withdrawal_limit_minor: 100_000,
    });
    Commit {
        account_id: account,
        expected_version: 0,
        events: vec![testing::envelope(event).account(account).version(1).build()],
        idempotency: None,
        claim: None,
    }
}

fn deposit(account: AccountId, expected: u64) -> Commit {
    let event = AccountEvent::MoneyDeposited(MoneyDeposited {
        amount_minor: 5,
        description: None,
    });
    Commit {
        account_id: account,
        expected_version: expected,
        events: vec![testing::envelope(event)
            .account(account)
            .version(expected + 1)
            .build()],
        idempotency: None,
        claim: None,
    }
}

/// The batcher on a real store: callers sent at once share batches and each gets its own
/// commit's answer; a commit whose deadline passed before it was sent is never written.
async fn the_batcher_answers_each_caller_alone_and_never_sends_a_late_commit(
    backend: EventStoreBackend,
) {
    let config = isolated_config(backend);
    let store = up("event store", prism_command::app::open_store(&config).await);
    let sizes = up(
        "metrics",
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("sizes", "sizes")),
    );
    let batcher = Batcher::spawn(std::sync::Arc::clone(&store), 8, 1, sizes.clone());

    let existing: Vec<AccountId> = (0..10).map(|_| AccountId::generate()).collect();
    for account in &existing {
        up("event store", batcher.append(opened(*account), None).await);
    }
    // 10 new accounts, 10 good deposits and 10 stale ones (expected 0 on opened accounts).
    let fresh: Vec<AccountId> = (0..10).map(|_| AccountId::generate()).collect();
    let mut commits: Vec<Commit> = fresh.iter().map(|a| opened(*a)).collect();
    commits.extend(existing.iter().map(|a| deposit(*a, 1)));
    commits.extend(existing.iter().map(|a| deposit(*a, 0)));
    let answers = join_all(commits.iter().map(|c| batcher.append(c.clone(), None))).await;
    for (commit, answer) in commits.iter().zip(&answers) {
        if commit.expected_version == 0 && existing.contains(&commit.account_id) {
            assert!(
                matches!(answer, Err(AppendError::Conflict { .. })),
                "a stale commit fails alone: {answer:?}"
            );
        } else {
            assert!(answer.is_ok(), "{answer:?}");
        }
    }
    for account in &fresh {
        assert_eq!(up("event store", store.load(*account, 0).await).len(), 1);
    }
    for account in &existing {
        let versions: Vec<u64> = up("event store", store.load(*account, 0).await)
            .iter()
            .map(|e| e.account_version)
            .collect();
        assert_eq!(
            versions,
            vec![1, 2],
            "opened and one deposit, nothing of the stale one"
        );
    }
    assert!(
        sizes.get_sample_count() < 40,
        "40 commits in fewer batches: {}",
        sizes.get_sample_count()
    );
    assert!(sizes.get_sample_sum() <= 40.0);

    // A deadline already passed: answered without writing.
    let late = AccountId::generate();
    let answer = batcher
        .append(opened(late), Some(std::time::Instant::now()))
        .await;
    assert!(
        matches!(answer, Err(AppendError::Store(_))),
        "a late commit is refused: {answer:?}"
    );
    assert!(up("event store", store.load(late, 0).await).is_empty());

    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batcher_answers_each_caller_alone_and_never_sends_a_late_commit_on_mongodb() {
    the_batcher_answers_each_caller_alone_and_never_sends_a_late_commit(EventStoreBackend::Mongodb)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batcher_answers_each_caller_alone_and_never_sends_a_late_commit_on_postgres() {
    the_batcher_answers_each_caller_alone_and_never_sends_a_late_commit(
        EventStoreBackend::Postgres,
    )
    .await;
}
