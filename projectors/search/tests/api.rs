//! The search API against the real engine of the local stack (OpenSearch here,
//! Elasticsearch 8 under docker-compose): a known data set written through the real sink
//! into a copy of its own (unique index prefix, deleted at the end), the router served on
//! a port-0 listener and called over HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use elasticsearch::indices::IndicesRefreshParts;
use elasticsearch::SearchParts;
use prism_events::event::{
    AccountOpened, CardChannel, CardPayment, CardPaymentApproved, CardPaymentDeclined,
    DeclineReason, MoneyDeposited, MoneyWithdrawn, WithdrawalChannel,
};
use prism_events::{AccountEvent, AccountId, Country, Currency, Envelope};
use prism_platform::auth::{Auth, Scope, TokenConfig};
use prism_platform::config::{AuthConfig, LOCAL_ANALYST_TOKEN, LOCAL_DEV_TOKEN};
use prism_platform::secret::Secret;
use prism_projector::{AccountVersion, Batch, PositionUpdate, Sink};
use prism_search::copies::{SearchCopies, SearchCopy};
use prism_search::fold::TransactionDoc;
use prism_search::http::{router, ApiState};
use prism_search::SearchConfig;
use prism_tests::{config, unique, up};
use serde_json::{json, Value};
use uuid::Uuid;

const MAX_PAGE: u32 = 4;
const MAX_FACETS: u32 = 5;
const MAX_QUERY: usize = 200;

/// A test's own copy under a unique prefix; deletes every index under it when dropped.
struct Model {
    copies: SearchCopies,
    config: SearchConfig,
    copy: SearchCopy,
    /// The next offset of partition 0 and the one stored.
    offset: i64,
    stored: Option<i64>,
}

impl Model {
    async fn new() -> Self {
        let cfg = config();
        let search = SearchConfig {
            index_prefix: unique("prism-test-search-api"),
            // Nothing becomes searchable by itself during a test: only explicit refreshes
            // (and the API's read-your-writes refresh) make documents visible.
            refresh_interval_ms: 600_000,
            cursor_secret: Secret::new("search-api-test"),
            page_size: 3,
            max_page_size: MAX_PAGE,
            max_facet_size: MAX_FACETS,
            max_query_chars: MAX_QUERY,
            wait_timeout_ms: 300,
            ..SearchConfig::default()
        };
        let copies = up(
            "elasticsearch",
            SearchCopies::connect(&cfg.elasticsearch, &search).await,
        );
        let copy = up("elasticsearch", copies.live().await);
        Self {
            copies,
            config: search,
            copy,
            offset: 0,
            stored: None,
        }
    }

    /// Writes `events` through the real sink, as the next batch of partition 0.
    async fn apply(&mut self, events: Vec<Envelope>) {
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
        let offset = self.offset + i64::try_from(events.len()).expect("small") - 1;
        let last = events.last().map(|e| (e.id, e.time));
        let batch = Batch {
            events,
            versions,
            offsets: Vec::new(),
            position: Some(PositionUpdate {
                partition: 0,
                expected: self.stored,
                offset,
                event_id: last.map(|(id, _)| id),
                event_time: last.map(|(_, t)| t),
                writer: "prism-search/api-test".into(),
            }),
        };
        let sink = prism_search::sink::EsSink::new(self.copy.clone());
        sink.apply(&batch).await.expect("the sink writes the batch");
        self.stored = Some(offset);
        self.offset = offset + 1;
    }

    async fn refresh(&self) {
        let refreshed = self
            .copies
            .client()
            .indices()
            .refresh(IndicesRefreshParts::Index(&[
                &self.copy.transactions_index,
                &self.copy.accounts_index,
            ]))
            .send()
            .await;
        assert!(up("elasticsearch", refreshed).status_code().is_success());
    }

    /// Every transaction document in the index (refreshed first), by event id.
    async fn transactions(&self) -> BTreeMap<Uuid, TransactionDoc> {
        self.refresh().await;
        let response = self
            .copies
            .client()
            .search(SearchParts::Index(&[&self.copy.transactions_index]))
            .body(json!({ "size": 1_000, "query": { "match_all": {} } }))
            .send()
            .await;
        let body: Value = up("elasticsearch", up("elasticsearch", response).json().await);
        body["hits"]["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|hit| {
                let doc: TransactionDoc =
                    serde_json::from_value(hit["_source"].clone()).expect("a transaction");
                (doc.event_id, doc)
            })
            .collect()
    }

    async fn serve(&self, tweak: impl FnOnce(ApiState) -> ApiState) -> Server {
        self.serve_with(&self.config, tweak).await
    }

    async fn serve_with(
        &self,
        config: &SearchConfig,
        tweak: impl FnOnce(ApiState) -> ApiState,
    ) -> Server {
        let copy = self.copy.clone();
        let (_progress, progress_rx) = tokio::sync::watch::channel(0_u64);
        let state = ApiState::new(
            move || copy.clone(),
            config,
            Auth::new(
                true,
                &[
                    AuthConfig::default().tokens,
                    vec![TokenConfig::new(
                        "ledger-only",
                        "ledger-only-token",
                        &[Scope::LedgerRead, Scope::Pii],
                    )],
                ]
                .concat(),
                Scope::SearchRead,
            ),
            progress_rx,
            &prometheus::Registry::new(),
        )
        .expect("the API's metrics");
        let app = router(tweak(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let address = listener.local_addr().expect("its address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server {
            base: format!("http://{address}"),
            http: reqwest::Client::new(),
        }
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

struct Server {
    base: String,
    http: reqwest::Client,
}

type Answer = (u16, Value);

impl Server {
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        self.get_with(path, query, None).await
    }

    /// A GET with `bearer` as the caller's token.
    async fn get_as(&self, bearer: &str, path: &str, query: &[(&str, &str)]) -> Answer {
        self.send(bearer, path, query, None).await
    }

    async fn get_with(&self, path: &str, query: &[(&str, &str)], token: Option<&str>) -> Answer {
        self.send(LOCAL_DEV_TOKEN, path, query, token).await
    }

    /// A GET as the holder of `bearer`, waiting for `consistency` if given.
    async fn send(
        &self,
        bearer: &str,
        path: &str,
        query: &[(&str, &str)],
        consistency: Option<&str>,
    ) -> Answer {
        let mut request = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .query(query);
        if let Some(token) = consistency {
            request = request.header("Consistency-Token", token);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// An export: status, content type and the whole body.
    async fn export(&self, query: &[(&str, &str)]) -> (u16, String, String) {
        let response = self
            .http
            .get(format!("{}/v1/search/transactions/export", self.base))
            .bearer_auth(LOCAL_DEV_TOKEN)
            .query(query)
            .send()
            .await
            .expect("the API answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.text().await.expect("the whole body");
        (status, content_type, body)
    }
}

#[track_caller]
fn assert_problem(answer: &Answer, status: u16, code: &str, field: Option<&str>) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    if let Some(field) = field {
        assert_eq!(body["field"], field, "{body}");
    }
}

fn event_id(item: &Value) -> Uuid {
    item["event_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .expect("an event id")
}

fn ids(body: &Value) -> BTreeSet<Uuid> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(event_id)
        .collect()
}

// ---------- the known data set ----------

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0)
        .single()
        .expect("a valid time")
}

struct Account {
    id: Uuid,
    version: u64,
}

impl Account {
    fn new() -> Self {
        Self {
            id: Uuid::now_v7(),
            version: 0,
        }
    }

    fn event(&mut self, time: DateTime<Utc>, event: AccountEvent) -> Envelope {
        self.version += 1;
        Envelope {
            id: Uuid::now_v7(),
            source: "/prism/test".into(),
            account_id: AccountId(self.id),
            time,
            account_version: self.version,
            correlation_id: None,
            causation_id: None,
            event,
        }
    }

    fn opened(
        &mut self,
        time: DateTime<Utc>,
        holder: &str,
        email: &str,
        country: &str,
        currency: &str,
    ) -> Envelope {
        self.event(
            time,
            AccountEvent::AccountOpened(AccountOpened {
                holder_name: holder.into(),
                email: email.into(),
                country: Country::parse(country).expect("a country"),
                currency: Currency::parse(currency).expect("a currency"),
                daily_withdrawal_limit_minor: 1_000_000,
            }),
        )
    }

    fn deposit(&mut self, time: DateTime<Utc>, amount_minor: i64, description: &str) -> Envelope {
        self.event(
            time,
            AccountEvent::MoneyDeposited(MoneyDeposited {
                amount_minor,
                description: Some(description.into()),
            }),
        )
    }

    fn withdrawal(
        &mut self,
        time: DateTime<Utc>,
        amount_minor: i64,
        channel: WithdrawalChannel,
    ) -> Envelope {
        self.event(
            time,
            AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
                amount_minor,
                description: None,
                channel,
            }),
        )
    }

    /// An approved card payment.
    fn card(
        &mut self,
        time: DateTime<Utc>,
        merchant: &str,
        category: &str,
        country: &str,
        channel: CardChannel,
        amount_minor: i64,
    ) -> Envelope {
        let payment = payment(merchant, category, country, channel, amount_minor);
        self.event(
            time,
            AccountEvent::CardPaymentApproved(CardPaymentApproved { payment }),
        )
    }

    /// A card payment the account declined.
    fn declined(
        &mut self,
        time: DateTime<Utc>,
        merchant: &str,
        category: &str,
        country: &str,
        channel: CardChannel,
        amount_minor: i64,
    ) -> Envelope {
        let payment = payment(merchant, category, country, channel, amount_minor);
        self.event(
            time,
            AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
                payment,
                decline_reason: DeclineReason::InsufficientFunds,
            }),
        )
    }
}

fn payment(
    merchant: &str,
    category: &str,
    country: &str,
    channel: CardChannel,
    amount_minor: i64,
) -> CardPayment {
    CardPayment {
        amount_minor,
        merchant_name: merchant.into(),
        merchant_category: category.into(),
        merchant_country: Country::parse(country).expect("a country"),
        channel,
    }
}

/// Three holders, eleven transactions over three days (see the facets test for the
/// counts). Written through the sink, then refreshed.
struct Data {
    zoe: Account,
    john: Account,
    ana: Account,
}

async fn known_data(model: &mut Model) -> Data {
    let mut zoe = Account::new();
    let mut john = Account::new();
    let mut ana = Account::new();
    let events = vec![
        zoe.opened(
            at(25, 8),
            "Zoë Müller",
            "zoe.mueller@example.org",
            "DE",
            "EUR",
        ),
        john.opened(at(25, 8), "John Smith", "jsmith@example.co.uk", "GB", "GBP"),
        ana.opened(at(25, 10), "Ana Silva", "ana.silva@example.pt", "PT", "EUR"),
        zoe.deposit(at(25, 9), 500_000, "Salary \"November\""),
        john.deposit(at(25, 9), 200_000, "Payroll"),
        ana.deposit(at(25, 11), 100_000, "Salário"),
        zoe.card(
            at(26, 10),
            "Pastelaria Belém, Lda",
            "5814",
            "PT",
            CardChannel::Pos,
            450,
        ),
        zoe.card(
            at(26, 11),
            "Starbucks Lisboa",
            "5814",
            "PT",
            CardChannel::Online,
            1_250,
        ),
        john.card(
            at(26, 12),
            "Tesco Metro",
            "5411",
            "GB",
            CardChannel::Pos,
            3_200,
        ),
        ana.card(
            at(26, 13),
            "Café Müller",
            "5812",
            "PT",
            CardChannel::Pos,
            800,
        ),
        zoe.declined(
            at(27, 1),
            "Crypto Vault",
            "6051",
            "MT",
            CardChannel::Online,
            900_000,
        ),
        john.card(
            at(27, 2),
            "CryptoMart Exchange",
            "6051",
            "MT",
            CardChannel::Online,
            50_000,
        ),
        john.withdrawal(at(27, 9), 10_000, WithdrawalChannel::Atm),
        ana.withdrawal(at(27, 10), 5_000, WithdrawalChannel::Branch),
    ];
    model.apply(events).await;
    model.refresh().await;
    Data { zoe, john, ana }
}

fn merchants(body: &Value) -> BTreeSet<String> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["merchant_name"].as_str().map(str::to_owned))
        .collect()
}

fn holders(body: &Value) -> BTreeSet<String> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["holder_name"].as_str().map(str::to_owned))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// ---------- tests ----------

#[tokio::test]
async fn free_text_ignores_accents_and_case_and_tolerates_a_typo() {
    let mut model = Model::new().await;
    known_data(&mut model).await;
    let api = model.serve(|s| s).await;
    let search = |q: &'static str| {
        let api = &api;
        async move {
            let (status, body) = api
                .get("/v1/search/transactions", &[("q", q), ("limit", "4")])
                .await;
            assert_eq!(status, 200, "{q}: {body}");
            body
        }
    };

    // zoe ↔ Zoë, any case: her four transactions.
    for q in ["zoe", "Zoë", "ZOE", "zoë müller"] {
        let body = search(q).await;
        assert_eq!(body["total"], 4, "{q}: {body}");
        assert_eq!(holders(&body), set(&["Zoë Müller"]), "{q}");
    }
    // muller ↔ Müller: Zoë's four and the café's one.
    for q in ["muller", "MÜLLER", "Muller"] {
        let body = search(q).await;
        assert_eq!(body["total"], 5, "{q}: {body}");
    }
    // A typo within reason finds the merchant; the match is highlighted (HTML-escaped).
    let body = search("starbuks").await;
    assert_eq!(merchants(&body), set(&["Starbucks Lisboa"]), "{body}");
    let body = search("tescoo metro").await;
    assert_eq!(merchants(&body), set(&["Tesco Metro"]), "{body}");
    let body = search("starbucks").await;
    assert_eq!(
        body["items"][0]["highlight"]["merchant_name"], "<em>Starbucks</em> Lisboa",
        "{body}"
    );
    // The user's own syntax: a prefix, an exclusion, a phrase.
    let body = search("crypto*").await;
    assert_eq!(
        merchants(&body),
        set(&["Crypto Vault", "CryptoMart Exchange"])
    );
    let body = search("crypto* -vault").await;
    assert_eq!(merchants(&body), set(&["CryptoMart Exchange"]));
    let body = search("\"salary november\"").await;
    assert_eq!(body["total"], 1, "{body}");
    // Nothing like it: no result, not an error.
    let body = search("xylophone").await;
    assert_eq!(body["total"], 0, "{body}");

    // Accounts as you type: holder name or email, accents folded.
    for (q, holder) in [
        ("zo", "Zoë Müller"),
        ("mül", "Zoë Müller"),
        ("mul", "Zoë Müller"),
        ("zoe.mue", "Zoë Müller"),
        ("smi", "John Smith"),
        ("jsmith", "John Smith"),
        ("ana s", "Ana Silva"),
    ] {
        let (status, body) = api.get("/v1/search/accounts", &[("q", q)]).await;
        assert_eq!(status, 200, "{q}: {body}");
        assert_eq!(holders(&body), set(&[holder]), "{q}: {body}");
    }
    let (_, body) = api
        .get(
            "/v1/search/accounts",
            &[("country", "GB"), ("status", "open")],
        )
        .await;
    assert_eq!(holders(&body), set(&["John Smith"]), "{body}");

    // An analyst (no `pii`): names shown, emails masked and not matched.
    let (status, full) = api.get("/v1/search/accounts", &[("q", "zo")]).await;
    assert_eq!(status, 200, "{full}");
    let email = full["items"][0]["email"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(email.contains('@') && !email.contains("***"), "{full}");
    let (status, body) = api
        .get_as(LOCAL_ANALYST_TOKEN, "/v1/search/accounts", &[("q", "zo")])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(holders(&body), set(&["Zoë Müller"]), "{body}");
    assert_eq!(
        body["items"][0]["email"],
        prism_platform::pii::mask_email(&email),
        "{body}"
    );
    assert!(!body.to_string().contains(&email), "{body}");
    let (status, body) = api
        .get_as(
            LOCAL_ANALYST_TOKEN,
            "/v1/search/accounts",
            &[("q", "jsmith")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["items"],
        serde_json::json!([]),
        "an email prefix finds nothing: {body}"
    );
    // Without the scope `search:read` (the ledger's callers): 403, not 401.
    let (status, body) = api
        .get_as("ledger-only-token", "/v1/search/accounts", &[("q", "zo")])
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "forbidden", "{body}");
}

#[tokio::test]
async fn facets_are_exact_for_a_known_data_set() {
    let mut model = Model::new().await;
    known_data(&mut model).await;
    let api = model.serve(|s| s).await;
    let (status, body) = api
        .get(
            "/v1/search/transactions",
            &[
                ("facets", "true"),
                ("facet_size", "5"),
                ("amount_interval_minor", "100000"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 11);
    let facet = |name: &str| -> BTreeMap<String, u64> {
        body["facets"][name]
            .as_array()
            .unwrap_or_else(|| panic!("facet {name}: {body}"))
            .iter()
            .map(|b| {
                (
                    b["value"].as_str().expect("a value").to_owned(),
                    b["count"].as_u64().expect("a count"),
                )
            })
            .collect()
    };
    let expect = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    };
    assert_eq!(
        facet("category"),
        expect(&[("5411", 1), ("5812", 1), ("5814", 2), ("6051", 2)])
    );
    assert_eq!(facet("country"), expect(&[("DE", 4), ("GB", 4), ("PT", 3)]));
    assert_eq!(
        facet("merchant_country"),
        expect(&[("GB", 1), ("MT", 2), ("PT", 3)])
    );
    assert_eq!(
        facet("channel"),
        expect(&[("atm", 1), ("branch", 1), ("online", 3), ("pos", 3)])
    );
    assert_eq!(
        facet("decision"),
        expect(&[("approved", 10), ("declined", 1)])
    );
    assert_eq!(
        facet("per_day"),
        expect(&[("2026-11-25", 3), ("2026-11-26", 4), ("2026-11-27", 4)])
    );
    let histogram: Vec<(i64, i64, u64)> = body["facets"]["amount_histogram"]
        .as_array()
        .expect("a histogram")
        .iter()
        .map(|b| {
            (
                b["from_minor"].as_i64().expect("from"),
                b["to_minor"].as_i64().expect("to"),
                b["count"].as_u64().expect("count"),
            )
        })
        .collect();
    assert_eq!(
        histogram,
        [
            (0, 100_000, 7),
            (100_000, 200_000, 1),
            (200_000, 300_000, 1),
            (500_000, 600_000, 1),
            (900_000, 1_000_000, 1)
        ]
    );

    // Facets follow the filters and the text.
    let (_, body) = api
        .get(
            "/v1/search/transactions",
            &[("facets", "true"), ("q", "zoe"), ("decision", "approved")],
        )
        .await;
    assert_eq!(body["total"], 3, "{body}");
    assert_eq!(
        body["facets"]["channel"],
        json!([{ "value": "online", "count": 1 }, { "value": "pos", "count": 1 }]),
        "{body}"
    );
    // Filters alone.
    for (filter, value, total) in [
        ("merchant_country", "PT", 3),
        ("category", "6051", 2),
        ("kind", "withdrawal", 2),
        ("currency", "GBP", 4),
        ("min_amount_minor", "50000", 5),
        ("from", "2026-11-26T00:00:00Z", 8),
        ("to", "2026-11-26T00:00:00Z", 3),
    ] {
        let (status, body) = api.get("/v1/search/transactions", &[(filter, value)]).await;
        assert_eq!(status, 200, "{filter}: {body}");
        assert_eq!(body["total"], total, "{filter}={value}: {body}");
    }
}

/// Pages through a search sorted by `sort`, adding after every page one transaction that
/// sorts before everything and one that sorts after everything (both made searchable at
/// once). Returns the ids paged and the ids there were before the first page.
async fn page_while_adding(
    api: &Server,
    model: &mut Model,
    data: &mut Data,
    sort: &str,
) -> (Vec<Uuid>, BTreeSet<Uuid>) {
    let before: BTreeSet<Uuid> = model.transactions().await.into_keys().collect();
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..50_u32 {
        let mut query = vec![("sort", sort), ("limit", "3")];
        if let Some(c) = &cursor {
            query.push(("cursor", c.as_str()));
        }
        let (status, body) = api.get("/v1/search/transactions", &query).await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().expect("items");
        assert!(items.len() <= 3, "{body}");
        ids.extend(items.iter().map(event_id));
        let Some(next) = body["next_cursor"].as_str() else {
            return (ids, before);
        };
        cursor = Some(next.to_owned());
        let events = vec![
            data.ana
                .deposit(at(28, page % 24), 999_999_999, "newest and largest"),
            data.john.card(
                at(20, page % 24),
                "Old Shop",
                "5411",
                "GB",
                CardChannel::Pos,
                1,
            ),
        ];
        model.apply(events).await;
        model.refresh().await;
    }
    panic!("paging does not end");
}

#[tokio::test]
async fn pages_stay_stable_while_documents_are_added() {
    let mut model = Model::new().await;
    let mut data = known_data(&mut model).await;
    let api = model.serve(|s| s).await;

    for sort in ["-time", "amount", "-amount", "time"] {
        let (paged, before) = page_while_adding(&api, &mut model, &mut data, sort).await;
        let unique: BTreeSet<Uuid> = paged.iter().copied().collect();
        assert_eq!(unique.len(), paged.len(), "{sort}: a document came twice");
        // Exactly what was there when the first page was read: nothing lost, nothing
        // added half-way.
        assert_eq!(unique, before, "{sort}");
        assert!(before.len() >= 11);
    }

    // A fresh search sees everything that was added.
    let everything = model.transactions().await;
    assert!(everything.len() > 11);
    let (_, body) = api.get("/v1/search/transactions", &[]).await;
    assert_eq!(body["total"].as_u64(), Some(everything.len() as u64));

    // A cursor is bound to its search: with another filter, or changed, it is refused.
    let (_, first) = api.get("/v1/search/transactions", &[("limit", "2")]).await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let other = api
        .get(
            "/v1/search/transactions",
            &[("limit", "2"), ("country", "DE"), ("cursor", &cursor)],
        )
        .await;
    assert_problem(&other, 400, "invalid_cursor", Some("cursor"));
    let tampered = format!("x{cursor}");
    let bad = api
        .get("/v1/search/transactions", &[("cursor", &tampered)])
        .await;
    assert_problem(&bad, 400, "invalid_cursor", Some("cursor"));
    // The same search with its cursor goes on.
    let (status, second) = api
        .get(
            "/v1/search/transactions",
            &[("limit", "2"), ("cursor", &cursor)],
        )
        .await;
    assert_eq!(status, 200, "{second}");
    assert!(ids(&first).is_disjoint(&ids(&second)));

    // Read to the end, the point in time is closed: its cursors are refused from then on
    // (closing runs in the background, hence the poll).
    let mut last_cursor = cursor.clone();
    let mut next = second["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = next {
        let (status, page) = api
            .get("/v1/search/transactions", &[("limit", "2"), ("cursor", &c)])
            .await;
        assert_eq!(status, 200, "{page}");
        next = page["next_cursor"].as_str().map(str::to_owned);
        last_cursor = c;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = api
            .get(
                "/v1/search/transactions",
                &[("limit", "2"), ("cursor", &last_cursor)],
            )
            .await;
        if answer.0 == 400 {
            assert_problem(&answer, 400, "invalid_cursor", Some("cursor"));
            break;
        }
        assert_eq!(answer.0, 200, "{}", answer.1);
        assert!(
            std::time::Instant::now() < deadline,
            "the point in time was not closed after the last page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn hostile_text_never_fails_the_server_and_every_limit_names_its_field() {
    let mut model = Model::new().await;
    known_data(&mut model).await;
    let api = model.serve(|s| s).await;

    let ten_kb = "a".repeat(10 * 1024);
    let brackets = "((((((((((".repeat(15);
    let hostile: Vec<&str> = vec![
        "\"",
        "\"\"\"",
        "\"unterminated phrase",
        "*",
        "**",
        "?",
        "a*b*c*d*",
        "-",
        "+",
        "|",
        "~",
        "zoe~99",
        "a AND OR NOT b",
        "(",
        ")",
        "((zoe",
        "zoe))",
        "[1 TO 5]",
        "{\"match_all\":{}}",
        "merchant_name:crypto",
        "_exists_:holder_name",
        "\\",
        "\\\"",
        "<script>alert(1)</script>",
        "'; DROP TABLE accounts; --",
        "%00",
        "🙂",
        "ß",
        "\u{200b}",
        &brackets,
    ];
    for text in &hostile {
        for path in ["/v1/search/transactions", "/v1/search/accounts"] {
            let (status, body) = api.get(path, &[("q", text)]).await;
            assert!(
                status == 200 || status == 400,
                "{path} q={text:?}: {status} {body}"
            );
        }
    }
    // Too long, control characters: 400 naming q.
    let too_long = "z".repeat(MAX_QUERY + 1);
    for text in [
        ten_kb.as_str(),
        too_long.as_str(),
        "zoe\u{0}",
        "a\u{1b}[2J",
        "line\nbreak",
    ] {
        for path in ["/v1/search/transactions", "/v1/search/accounts"] {
            let answer = api.get(path, &[("q", text)]).await;
            assert_problem(&answer, 400, "invalid_field", Some("q"));
        }
    }
    // Right at the limit is fine.
    let at_limit = "z".repeat(MAX_QUERY);
    let (status, _) = api
        .get("/v1/search/transactions", &[("q", &at_limit)])
        .await;
    assert_eq!(status, 200);

    // Page size, facet size, histogram width, unknown and repeated parameters.
    let max_page = (MAX_PAGE + 1).to_string();
    let answer = api
        .get("/v1/search/transactions", &[("limit", &max_page)])
        .await;
    assert_problem(&answer, 400, "invalid_field", Some("limit"));
    let answer = api.get("/v1/search/accounts", &[("limit", "0")]).await;
    assert_problem(&answer, 400, "invalid_field", Some("limit"));
    let max_facets = (MAX_FACETS + 1).to_string();
    let answer = api
        .get(
            "/v1/search/transactions",
            &[("facets", "true"), ("facet_size", &max_facets)],
        )
        .await;
    assert_problem(&answer, 400, "invalid_field", Some("facet_size"));
    let answer = api
        .get(
            "/v1/search/transactions",
            &[("facets", "true"), ("amount_interval_minor", "1")],
        )
        .await;
    // Buckets are created only where amounts are: a width of 1 is allowed here.
    assert_eq!(answer.0, 200, "{}", answer.1);
    let answer = api
        .get("/v1/search/transactions", &[("sort", "price")])
        .await;
    assert_problem(&answer, 400, "invalid_field", Some("sort"));
    let answer = api
        .get("/v1/search/transactions", &[("query", "zoe")])
        .await;
    assert_problem(&answer, 400, "invalid_field", Some("query"));
    let answer = api
        .get("/v1/search/transactions", &[("q", "a"), ("q", "b")])
        .await;
    assert_problem(&answer, 400, "invalid_field", Some("q"));
    let answer = api.get("/v1/search/accounts", &[("status", "gone")]).await;
    assert_problem(&answer, 400, "invalid_field", Some("status"));

    // The time limit: a search the engine does not answer in time is a 400 naming q. (A
    // real engine answers these in a millisecond or two; a deadline of zero passes for
    // sure.)
    let slow = model
        .serve(|s| s.with_client_deadline(Duration::ZERO))
        .await;
    for path in ["/v1/search/transactions", "/v1/search/accounts"] {
        let answer = slow.get(path, &[("q", "zoe")]).await;
        assert_problem(&answer, 400, "query_timeout", Some("q"));
    }

    // Without a token: 401, as a problem.
    let (status, _) = {
        let response = reqwest::get(format!("{}/v1/search/transactions", api.base))
            .await
            .expect("answers");
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 401);
    // The description is open and names every endpoint.
    let doc: Value = reqwest::get(format!("{}/openapi.json", api.base))
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            "/v1/search/accounts",
            "/v1/search/transactions",
            "/v1/search/transactions/export"
        ])
    );
}

#[tokio::test]
async fn exports_hold_every_matching_document() {
    let mut model = Model::new().await;
    known_data(&mut model).await;
    let stored = model.transactions().await;
    let api = model.serve(|s| s).await;

    // NDJSON of everything: 11 documents in pages of MAX_PAGE, each exactly as stored.
    let (status, content_type, body) = api.export(&[("format", "ndjson")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/x-ndjson");
    let exported: BTreeMap<Uuid, TransactionDoc> = body
        .lines()
        .map(|line| {
            let doc: TransactionDoc = serde_json::from_str(line).expect("one document per line");
            (doc.event_id, doc)
        })
        .collect();
    assert_eq!(body.lines().count(), stored.len(), "a document came twice");
    assert_eq!(exported, stored);

    // CSV of a filtered search: a header row, then every match, quoting intact.
    let (status, content_type, body) = api
        .export(&[("format", "csv"), ("q", "zoe"), ("sort", "time")])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .expect("a header row")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header, prism_search::query::CSV_COLUMNS);
    let rows: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .expect("valid CSV");
    let zoe: Vec<&TransactionDoc> = stored
        .values()
        .filter(|d| d.holder_name == "Zoë Müller")
        .collect();
    assert_eq!(rows.len(), zoe.len());
    for row in &rows {
        let id = Uuid::parse_str(&row[0]).expect("an event id");
        let doc = stored.get(&id).expect("a stored document");
        assert_eq!(
            row,
            &csv::StringRecord::from(prism_search::query::csv_row(doc).to_vec())
        );
    }
    assert!(body.contains("\"Pastelaria Belém, Lda\""), "{body}");
    assert!(body.contains("\"Salary \"\"November\"\"\""), "{body}");
    // In time order.
    let times: Vec<String> = rows.iter().map(|r| r[4].to_owned()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);

    // An export needs its format.
    let (status, _, body) = api.export(&[("q", "zoe")]).await;
    assert_eq!(status, 400, "{body}");
    let problem: Value = serde_json::from_str(&body).expect("a problem");
    assert_eq!(problem["field"], "format");
    let (status, _, _) = api.export(&[("format", "xlsx")]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_consistency_token_makes_its_write_searchable() {
    let mut model = Model::new().await;
    let mut data = known_data(&mut model).await;
    let api = model.serve(|s| s).await;

    // A new payment, written but not refreshed (the index refreshes every ten minutes).
    let event = data.zoe.card(
        at(28, 9),
        "Livraria Bertrand",
        "5942",
        "PT",
        CardChannel::Pos,
        2_000,
    );
    let token = format!("v1.{}.{}", data.zoe.id, event.account_version);
    model.apply(vec![event]).await;
    let query = [("q", "bertrand")];
    let (status, body) = api.get("/v1/search/transactions", &query).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["total"], 0,
        "not refreshed yet, so not searchable: {body}"
    );
    // With the command's token it is.
    let (status, body) = api
        .get_with("/v1/search/transactions", &query, Some(&token))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(merchants(&body), set(&["Livraria Bertrand"]), "{body}");
    // Concurrent searches with tokens all see it (they share refreshes).
    let more = data.zoe.deposit(at(28, 10), 700, "Refund Bertrand");
    let token = format!("v1.{}.{}", data.zoe.id, more.account_version);
    model.apply(vec![more]).await;
    let answers = futures::future::join_all(
        (0..8).map(|_| api.get_with("/v1/search/transactions", &query, Some(&token))),
    )
    .await;
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["total"], 2, "{body}");
    }
    // A version that never comes: 202 processing after the wait, never stale data.
    let ahead = format!("v1.{}.{}", data.zoe.id, data.zoe.version + 5);
    let answer = api
        .get_with("/v1/search/transactions", &query, Some(&ahead))
        .await;
    assert_problem(&answer, 202, "processing", None);
    let answer = api
        .get_with("/v1/search/accounts", &[("q", "zoe")], Some("v1.nope"))
        .await;
    assert_eq!(answer.0, 400, "{}", answer.1);
}
