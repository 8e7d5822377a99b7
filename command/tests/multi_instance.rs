//! The command service as several instances see one store: a rejection is decided on the
//! store's current state, not on what one instance cached; a cold load from a snapshot and
//! the events after it equals a full replay; a snapshot of another format is never read.

mod support;

use prism_command::account::{self, Account};
use prism_command::store::Snapshot;
use prism_events::AccountId;
use prism_platform::config::EventStoreBackend;
use prism_tests::up;
use serde_json::json;
use support::{clean_up, isolated_config, Api, Instance};

/// A deposit through instance B, then a withdrawal through instance A, whose cache still
/// holds the balance before the deposit: the withdrawal is accepted (and its key answers
/// the same on both instances). The same for a freeze on B and an unfreeze on A.
async fn rejections_are_decided_on_current_state(backend: EventStoreBackend) {
    let config = isolated_config(backend);
    let one = Instance::start(&config).await;
    let two = Instance::start(&config).await;
    let (a, b) = (Api::new(&one.url), Api::new(&two.url));
    let account = a.open("EUR").await;
    // A knows the account at version 1, balance 0.
    assert_eq!(a.deposit(&account, 100).await.status, 200);
    assert_eq!(b.deposit(&account, 5_000).await.status, 200);

    let path = format!("/v1/accounts/{account}/withdrawals");
    let withdrawal = a
        .post_with_key(
            &path,
            "withdraw-1",
            json!({ "amount_minor": 3_000, "channel": "atm" }),
        )
        .await;
    assert_eq!(
        withdrawal.status, 200,
        "{backend:?}: a withdrawal covered by a deposit made on another instance: {}",
        withdrawal.body
    );
    let again = b
        .post_with_key(
            &path,
            "withdraw-1",
            json!({ "amount_minor": 3_000, "channel": "atm" }),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["version"], withdrawal.body["version"]);

    let freeze = b
        .post(
            &format!("/v1/accounts/{account}/freeze"),
            json!({ "reason": "card reported stolen" }),
        )
        .await;
    assert_eq!(freeze.status, 200, "{}", freeze.body);
    let unfreeze = a
        .post_with_key(
            &format!("/v1/accounts/{account}/unfreeze"),
            "unfreeze-1",
            json!({}),
        )
        .await;
    assert_eq!(
        unfreeze.status, 200,
        "{backend:?}: an unfreeze of an account frozen on another instance: {}",
        unfreeze.body
    );
    let state = b.get(&format!("/v1/accounts/{account}")).await;
    assert_eq!(state.body["balance_minor"], 2_100, "{}", state.body);
    assert_eq!(state.body["status"], "open", "{}", state.body);
    one.stop().await;
    two.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_is_decided_on_the_current_state_on_mongodb() {
    rejections_are_decided_on_current_state(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_is_decided_on_the_current_state_on_postgres() {
    rejections_are_decided_on_current_state(EventStoreBackend::Postgres).await;
}

/// A fraud report needs the account's history (is the named event one of its card
/// payments?), which the service looks up at the state it decides on; the lookup is made
/// again whenever the command is decided again. Two instances, A and B, on one account:
/// - a report on A of a payment made on B, which A's cached state does not know yet: the
///   lookup at A's state finds nothing, so it is decided again on the current state and
///   accepted;
/// - a report on A of a payment A knows while B wrote after it: the append conflicts, A
///   catches up, looks up again and is accepted at the next version;
/// - a report on A of a payment B reported meanwhile: accepted on A's cached state, the
///   append conflicts, and decided again it is `payment_already_reported`.
async fn fraud_reports_are_decided_on_current_state(backend: EventStoreBackend) {
    let config = isolated_config(backend);
    let one = Instance::start(&config).await;
    let two = Instance::start(&config).await;
    let (a, b) = (Api::new(&one.url), Api::new(&two.url));
    let account = a.open("EUR").await;
    assert_eq!(a.deposit(&account, 1_000).await.status, 200);
    let pay = |api: &Api, amount: i64| {
        let api = api.clone();
        let path = format!("/v1/accounts/{account}/payments");
        async move {
            let answer = api
                .post(
                    &path,
                    json!({ "amount_minor": amount, "merchant_name": "GAMECOINS*TOPUP",
                            "merchant_category": "5816", "merchant_country": "US", "channel": "online" }),
                )
                .await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert_eq!(answer.body["decision"], "approved", "{}", answer.body);
            answer.body["event_ids"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let report = |api: &Api, payment: &str| {
        let api = api.clone();
        let path = format!("/v1/accounts/{account}/payments/{payment}/fraud-reports");
        async move { api.post(&path, json!({ "reason": "card testing" })).await }
    };

    // A knows version 2; B pays (version 3).
    let p1 = pay(&b, 300).await;
    let first = report(&a, &p1).await;
    assert_eq!(
        first.status, 201,
        "{backend:?}: a report on A of a payment made on B: {}",
        first.body
    );
    assert_eq!(first.body["version"], 4, "{}", first.body);

    // A pays (version 5, A knows it); B deposits (version 6): A's append conflicts.
    let p2 = pay(&a, 200).await;
    assert_eq!(b.deposit(&account, 1).await.status, 200);
    let second = report(&a, &p2).await;
    assert_eq!(
        second.status, 201,
        "{backend:?}: a report on A after B wrote: {}",
        second.body
    );
    assert_eq!(second.body["version"], 7, "{}", second.body);

    // A pays (version 8); B, which knows version 6, reports it (version 9); A, which
    // knows version 8, reports it too: the conflict tells A it was reported already.
    let p3 = pay(&a, 100).await;
    let on_b = report(&b, &p3).await;
    assert_eq!(on_b.status, 201, "{backend:?}: {}", on_b.body);
    assert_eq!(on_b.body["version"], 9, "{}", on_b.body);
    let on_a = report(&a, &p3).await;
    assert_eq!(on_a.status, 409, "{backend:?}: {}", on_a.body);
    assert_eq!(on_a.body["code"], "payment_already_reported");

    let state = a.get(&format!("/v1/accounts/{account}")).await;
    assert_eq!(state.body["version"], 9, "{}", state.body);
    assert_eq!(state.body["balance_minor"], 401, "{}", state.body);
    one.stop().await;
    two.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_reports_are_decided_on_the_current_state_on_mongodb() {
    fraud_reports_are_decided_on_current_state(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_reports_are_decided_on_the_current_state_on_postgres() {
    fraud_reports_are_decided_on_current_state(EventStoreBackend::Postgres).await;
}

/// Snapshots every 3 events: a cold instance loads snapshot + tail, another instance with
/// snapshots off replays everything; both answer the same state. Then a snapshot of another
/// format (here: the bare state, as builds before formats were recorded wrote it) with a
/// wrong balance is put in the store: a cold instance ignores it and replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_load_from_a_snapshot_equals_a_full_replay_and_other_formats_are_ignored() {
    let mut config = isolated_config(EventStoreBackend::Mongodb);
    config.event_store.snapshot_every = 3;
    let writer = Instance::start(&config).await;
    let api = Api::new(&writer.url);
    let account = api.open("EUR").await;
    for amount in [500, 700, 900, 1_100, 1_300, 1_500, 1_700] {
        assert_eq!(api.deposit(&account, amount).await.status, 200);
    }
    let withdrawal = api
        .post(
            &format!("/v1/accounts/{account}/withdrawals"),
            json!({ "amount_minor": 2_000, "channel": "atm" }),
        )
        .await;
    assert_eq!(withdrawal.status, 200, "{}", withdrawal.body);
    // Version 10: whatever snapshot was written last (3, 6 or 9), a tail follows it.
    assert_eq!(api.deposit(&account, 300).await.status, 200);
    writer.stop().await;

    let store = up(
        "the event store",
        prism_command::app::open_store(&config).await,
    );
    let id: AccountId = up("an account id", account.parse());
    let snapshot = up("the store", store.load_snapshot(id).await);
    let snapshot = snapshot.expect("a snapshot was written");
    assert_eq!(snapshot.state["format"], Account::SNAPSHOT_VERSION);
    assert!(
        snapshot.version >= 3 && snapshot.version < 10,
        "{}",
        snapshot.version
    );

    let path = format!("/v1/accounts/{account}");
    let cold = Instance::start(&config).await;
    let from_snapshot = Api::new(&cold.url).get(&path).await;
    cold.stop().await;
    let mut replaying = config.clone();
    replaying.event_store.snapshot_every = 0;
    let replay = Instance::start(&replaying).await;
    let from_events = Api::new(&replay.url).get(&path).await;
    replay.stop().await;
    assert_eq!(from_snapshot.status, 200, "{}", from_snapshot.body);
    assert_eq!(from_snapshot.body, from_events.body);
    assert_eq!(from_events.body["balance_minor"], 6_000);

    // A snapshot in another format, at the current version, claiming another balance.
    let events = up("the store", store.load(id, 0).await);
    let mut bare = up(
        "a state",
        serde_json::to_value(account::replay(events.iter())),
    );
    bare["balance_minor"] = json!(999_999);
    let version = events.last().map_or(0, |e| e.account_version);
    up(
        "the store",
        store
            .save_snapshot(&Snapshot {
                account_id: id,
                version,
                state: bare,
            })
            .await,
    );
    let cold = Instance::start(&config).await;
    let answer = Api::new(&cold.url).get(&path).await;
    cold.stop().await;
    assert_eq!(
        answer.body["balance_minor"], 6_000,
        "a snapshot of another format was read: {}",
        answer.body
    );
    clean_up(&config).await;
}

/// Sends until the answer is final: a 409 "in progress" (another attempt holds the key) is
/// retried, as a client would.
async fn final_answer(api: &Api, path: &str, key: &str, body: serde_json::Value) -> (u16, String) {
    for _ in 0..100 {
        let answer = api.post_with_key(path, key, body.clone()).await;
        if answer.status == 409 && answer.body["code"] == "idempotency_key_in_progress" {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        }
        return (
            answer.status,
            format!("{} {}", answer.body["code"], answer.body["version"]),
        );
    }
    panic!("{path} with key {key} stayed in progress");
}

/// One idempotency key, one outcome: the same withdrawal (same key) goes to both instances
/// at once while a deposit races them, so one attempt may see the money and the other not.
/// Every answer for the key is the same, retries later too, and the store never holds both
/// a rejection and a commit for it.
async fn one_key_one_outcome(backend: EventStoreBackend) {
    let config = isolated_config(backend);
    let one = Instance::start(&config).await;
    let two = Instance::start(&config).await;
    let (a, b) = (Api::new(&one.url), Api::new(&two.url));
    let store = up(
        "the event store",
        prism_command::app::open_store(&config).await,
    );
    let mut outcomes = std::collections::BTreeMap::new();
    for round in 0..40 {
        let account = a.open("EUR").await;
        assert_eq!(b.deposit(&account, 500).await.status, 200);
        let path = format!("/v1/accounts/{account}/withdrawals");
        let key = format!("race-{round}");
        let body = json!({ "amount_minor": 800, "channel": "online" });
        let ((first, second), deposit) = tokio::join!(
            async {
                tokio::join!(
                    final_answer(&a, &path, &key, body.clone()),
                    final_answer(&b, &path, &key, body.clone())
                )
            },
            async {
                if round % 2 == 0 {
                    tokio::task::yield_now().await;
                }
                if round % 3 == 0 { &a } else { &b }
                    .deposit(&account, 1_000)
                    .await
            }
        );
        assert_eq!(deposit.status, 200, "{}", deposit.body);
        assert_eq!(
            first, second,
            "{backend:?} round {round}: two outcomes for one key"
        );
        let later = final_answer(&b, &path, &key, body.clone()).await;
        assert_eq!(
            later, first,
            "{backend:?} round {round}: a retry got another outcome"
        );
        *outcomes.entry(first.0).or_insert(0) += 1;

        // In the store: the key's commit and a stored rejection never both.
        let scoped = key_in_store(&*store, &key).await;
        let commit = up("the store", store.find_idempotent(&scoped).await);
        let response = up("the store", store.find_response(&scoped).await);
        let rejected = response.as_ref().is_some_and(|r| r.status == 422);
        assert!(
            !(commit.is_some() && rejected),
            "{backend:?} round {round}: the key holds a commit and a rejection {response:?}"
        );
    }
    eprintln!("{backend:?}: outcomes by status {outcomes:?}");
    one.stop().await;
    two.stop().await;
    clean_up(&config).await;
}

/// The key as the store holds it (scoped by the caller): found through the responses of
/// this test's database, which only this test writes.
async fn key_in_store(store: &dyn prism_command::store::EventStore, key: &str) -> String {
    for principal in candidate_principals() {
        let scoped = format!("{principal}:{key}");
        if up("the store", store.find_response(&scoped).await).is_some()
            || up("the store", store.find_idempotent(&scoped).await).is_some()
        {
            return scoped;
        }
    }
    panic!("nothing stored under idempotency key {key}");
}

/// Who the store scopes this test's keys by: the caller identity of its token (the first 8
/// bytes of its SHA-256, in hex).
fn candidate_principals() -> Vec<String> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(support::TOKEN.as_bytes());
    vec![hex::encode(&digest[..8])]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_has_one_outcome_across_instances_on_mongodb() {
    one_key_one_outcome(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_has_one_outcome_across_instances_on_postgres() {
    one_key_one_outcome(EventStoreBackend::Postgres).await;
}

/// A retry whose URI spells the account id another way (percent-encoded, upper case) is the
/// same request: it replays the first answer instead of "key reused for another request".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_account_id_spelled_otherwise_is_the_same_request() {
    let config = isolated_config(EventStoreBackend::Mongodb);
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let account = api.open("EUR").await;
    let body = json!({ "amount_minor": 250 });
    let first = api
        .post_with_key(
            &format!("/v1/accounts/{account}/deposits"),
            "spelled",
            body.clone(),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let encoded: String = account
        .chars()
        .take(2)
        .map(|c| format!("%{:02X}", u32::from(c)))
        .chain(std::iter::once(account[2..].to_owned()))
        .collect();
    for spelling in [encoded, account.to_uppercase()] {
        let retry = api
            .post_with_key(
                &format!("/v1/accounts/{spelling}/deposits"),
                "spelled",
                body.clone(),
            )
            .await;
        assert_eq!(retry.status, 200, "{spelling}: {}", retry.body);
        assert_eq!(retry.body["version"], first.body["version"], "{spelling}");
    }
    instance.stop().await;
    clean_up(&config).await;
}

/// The claim an attempt leaves on its key when it dies between the claim and the commit:
/// while the claim is within its lease a retry answers 409 "in progress" (its owner may
/// still commit); after the lease a retry takes the key over and commits, once.
async fn a_claim_is_taken_over_only_after_its_lease(backend: EventStoreBackend) {
    use sha2::Digest as _;
    let config = isolated_config(backend);
    let instance = Instance::start(&config).await;
    let api = Api::new(&instance.url);
    let store = up(
        "the event store",
        prism_command::app::open_store(&config).await,
    );
    let account = api.open("EUR").await;
    let path = format!("/v1/accounts/{account}/deposits");
    let body = json!({ "amount_minor": 400 });
    let mut request = format!("POST {path}\n").into_bytes();
    request.extend(up("a body", serde_json::to_vec(&body)));
    let request_hash = hex::encode(sha2::Sha256::digest(&request));
    let principal = &candidate_principals()[0];
    let claim_of = |key: &str, age: chrono::TimeDelta| {
        let mark = prism_command::store::IdempotencyMark {
            key: format!("{principal}:{key}"),
            request_hash: request_hash.clone(),
        };
        prism_command::store::StoredResponse::claim(&mark, "crashed", chrono::Utc::now() - age)
    };

    let live = claim_of("live", chrono::TimeDelta::seconds(1));
    assert!(up("the store", store.save_response(&live).await));
    let answer = api.post_with_key(&path, "live", body.clone()).await;
    assert_eq!(answer.status, 409, "{backend:?}: {}", answer.body);
    assert_eq!(answer.body["code"], "idempotency_key_in_progress");

    let abandoned = claim_of("abandoned", chrono::TimeDelta::seconds(120));
    assert!(up("the store", store.save_response(&abandoned).await));
    let first = api.post_with_key(&path, "abandoned", body.clone()).await;
    assert_eq!(first.status, 200, "{backend:?}: {}", first.body);
    let retry = api.post_with_key(&path, "abandoned", body.clone()).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.body["version"], first.body["version"]);
    let state = api.get(&format!("/v1/accounts/{account}")).await;
    assert_eq!(
        state.body["balance_minor"], 400,
        "committed once: {}",
        state.body
    );
    let scoped = format!("{principal}:abandoned");
    let commit = up("the store", store.find_idempotent(&scoped).await);
    assert!(commit.is_some(), "{backend:?}: the key's commit is stored");
    instance.stop().await;
    clean_up(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_taken_over_only_after_its_lease_on_mongodb() {
    a_claim_is_taken_over_only_after_its_lease(EventStoreBackend::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_taken_over_only_after_its_lease_on_postgres() {
    a_claim_is_taken_over_only_after_its_lease(EventStoreBackend::Postgres).await;
}
