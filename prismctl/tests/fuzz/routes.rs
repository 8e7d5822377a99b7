//! The route table of every service, as valid requests: for each endpoint a template that
//! the service should accept (given the accounts, payments and cursors the run knows), with
//! its parameters filled from realistic values. The fuzz test mutates these.
//!
//! [`covered`] lists the routes the templates cover; the test compares it with each
//! service's `/openapi.json`, so a new endpoint without a template fails the test.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

/// The bearer token with every scope (the test's profile).
pub const TOKEN: &str = "prism-local-dev-token";

/// The five services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Command,
    Ledger,
    Search,
    Dashboard,
    Fraud,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::Command,
        Service::Ledger,
        Service::Search,
        Service::Dashboard,
        Service::Fraud,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Command => "prism-command",
            Service::Ledger => "prism-ledger",
            Service::Search => "prism-search",
            Service::Dashboard => "prism-dashboard",
            Service::Fraud => "prism-fraud",
        }
    }

    /// The environment variable of its listen address.
    pub fn listen_var(self) -> &'static str {
        match self {
            Service::Command => "PRISM_COMMAND__LISTEN",
            Service::Ledger => "PRISM_LEDGER__LISTEN",
            Service::Search => "PRISM_SEARCH__LISTEN",
            Service::Dashboard => "PRISM_DASHBOARD__LISTEN",
            Service::Fraud => "PRISM_FRAUD__LISTEN",
        }
    }

    /// Its request body limit: `[command] max_body_bytes` (the test's profile), axum's
    /// default for the projectors.
    pub fn body_limit(self) -> usize {
        match self {
            Service::Command => 16_384,
            _ => 2 * 1024 * 1024,
        }
    }

    /// Share of the cases (percent): the write side has the most endpoints and checks.
    pub fn share(self) -> u64 {
        match self {
            Service::Command => 40,
            _ => 15,
        }
    }
}

/// What the run knows about the world, for valid requests.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Accounts that exist, with a consistency token of a write to each.
    pub accounts: Vec<(String, String)>,
    /// Card payments: (account, the payment's event id).
    pub payments: Vec<(String, String)>,
    /// Cursors from earlier answers.
    pub cursors: Vec<Harvested>,
    /// Idempotency keys sent earlier to prism-command.
    pub idempotency_keys: Vec<String>,
}

impl Known {
    pub fn account(&self, rng: &mut ChaCha8Rng) -> String {
        self.accounts
            .choose(rng)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
    }

    /// An account and a token of a write to it.
    pub fn account_with_token(&self, rng: &mut ChaCha8Rng) -> (String, String) {
        self.accounts.choose(rng).cloned().unwrap_or_else(|| {
            let id = uuid::Uuid::now_v7().to_string();
            (id.clone(), format!("v1.{id}.1"))
        })
    }

    fn cursor_for(&self, route: &'static str, rng: &mut ChaCha8Rng) -> Option<Harvested> {
        let found: Vec<_> = self.cursors.iter().filter(|h| h.route == route).collect();
        found.choose(rng).map(|h| (*h).clone())
    }
}

/// A `next_cursor` from an answer, with the request that got it: the next page's request.
#[derive(Debug, Clone)]
pub struct Harvested {
    pub route: &'static str,
    pub segments: Vec<String>,
    /// The query without the cursor.
    pub query: Vec<(String, String)>,
    pub cursor: String,
}

/// A valid request, before any mutation.
#[derive(Debug, Clone)]
pub struct Template {
    /// The route, as `/openapi.json` spells it (`POST /v1/accounts/{id}/deposits`).
    pub route: &'static str,
    pub method: &'static str,
    /// Path segments, already percent-encoded where needed.
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    /// The query parameters the route takes (mutations set them to odd values).
    pub params: Vec<&'static str>,
}

impl Template {
    fn new(route: &'static str, path: &str) -> Self {
        let (method, _) = route.split_once(' ').unwrap_or(("GET", route));
        Template {
            route,
            method,
            segments: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            params: Vec::new(),
        }
    }

    fn authorized(mut self) -> Self {
        self.headers
            .push(("Authorization".into(), format!("Bearer {TOKEN}")));
        self
    }

    fn json(mut self, body: Value) -> Self {
        self.headers
            .push(("Content-Type".into(), "application/json".into()));
        self.body = Some(body);
        self
    }

    fn header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.into(), value));
        self
    }

    /// Adds `params` to the query parameters the route takes.
    fn params(mut self, params: &[&'static str]) -> Self {
        self.params.extend_from_slice(params);
        self
    }

    /// Sets `name` to a `value` with probability `p`.
    fn maybe(
        mut self,
        rng: &mut ChaCha8Rng,
        p: f64,
        name: &str,
        value: impl FnOnce(&mut ChaCha8Rng) -> String,
    ) -> Self {
        if rng.gen_bool(p) {
            let value = value(rng);
            self.query.push((name.into(), value));
        }
        self
    }
}

/// The `/v1` routes each service's templates cover, as `/openapi.json` names them
/// (`<method> <path>`). Every service also serves `/healthz`, `/readyz`, `/metrics`,
/// `/openapi.json` (but prism-dashboard) and the admin status.
pub fn covered(service: Service) -> &'static [&'static str] {
    match service {
        Service::Command => &[
            "GET /v1/admin/status",
            "POST /v1/accounts",
            "GET /v1/accounts/{id}",
            "POST /v1/accounts/{id}/deposits",
            "POST /v1/accounts/{id}/withdrawals",
            "POST /v1/accounts/{id}/payments",
            "POST /v1/accounts/{id}/freeze",
            "POST /v1/accounts/{id}/unfreeze",
            "POST /v1/accounts/{id}/close",
            "POST /v1/accounts/{id}/payments/{event_id}/fraud-reports",
        ],
        Service::Ledger => &[
            "GET /v1/admin/status",
            "GET /v1/accounts",
            "GET /v1/accounts/{id}",
            "GET /v1/accounts/{id}/statement",
        ],
        Service::Search => &[
            "GET /v1/admin/status",
            "GET /v1/search/transactions",
            "GET /v1/search/transactions/export",
            "GET /v1/search/accounts",
        ],
        // No `/openapi.json`: its routes are listed in `prism_dashboard::http`.
        Service::Dashboard => &[
            "GET /v1/admin/status",
            "GET /v1/dashboard/summary",
            "GET /v1/dashboard/series",
            "GET /v1/dashboard/stream",
        ],
        Service::Fraud => &[
            "GET /v1/admin/status",
            "GET /v1/features/{id}",
            "POST /v1/features/{id}/score",
        ],
    }
}

/// A valid request to one of `service`'s endpoints, the operational ones included.
pub fn template(service: Service, known: &Known, rng: &mut ChaCha8Rng) -> Template {
    // One in eight requests goes to an endpoint every service serves the same way.
    if rng.gen_ratio(1, 8) {
        let mut paths = vec!["/healthz", "/readyz", "/metrics", "/v1/admin/status"];
        if service != Service::Dashboard {
            paths.push("/openapi.json");
        }
        let path = paths.choose(rng).copied().unwrap_or("/healthz");
        return match path {
            "/healthz" => Template::new("GET /healthz", path),
            "/readyz" => Template::new("GET /readyz", path),
            "/metrics" => Template::new("GET /metrics", path),
            "/v1/admin/status" => Template::new("GET /v1/admin/status", path).authorized(),
            _ => Template::new("GET /openapi.json", path),
        };
    }
    match service {
        Service::Command => command(known, rng),
        Service::Ledger => ledger(known, rng),
        Service::Search => search(known, rng),
        Service::Dashboard => dashboard(rng),
        Service::Fraud => fraud(known, rng),
    }
}

// ---------------------------------------------------------------------------------------
// Values

const COUNTRIES: &[&str] = &["PT", "GB", "DE", "US", "BR", "JP", "FR", "NG"];
const CURRENCIES: &[&str] = &["EUR", "GBP", "USD", "JPY", "BHD", "BRL"];
const NAMES: &[&str] = &[
    "Ada Lovelace",
    "Zoë Müller",
    "李小龍",
    "Seán O'Brien",
    "José da Silva",
    "Ngozi Okonjo",
];
const MERCHANTS: &[&str] = &[
    "Café Rosa",
    "Tesco",
    "Amazon EU",
    "Bäckerei Süß",
    "東京書店",
];
const CATEGORIES: &[&str] = &["5812", "5411", "5999", "7995", "4829", "0000"];

fn pick(rng: &mut ChaCha8Rng, values: &[&str]) -> String {
    values.choose(rng).copied().unwrap_or_default().to_owned()
}

/// A time in the last 30 days, RFC 3339.
fn recent_time(rng: &mut ChaCha8Rng) -> String {
    let seconds = rng.gen_range(0..30 * 24 * 3600);
    (chrono::Utc::now() - chrono::Duration::seconds(seconds))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---------------------------------------------------------------------------------------
// prism-command

fn command(known: &Known, rng: &mut ChaCha8Rng) -> Template {
    let account = known.account(rng);
    let base = format!("/v1/accounts/{account}");
    let template = match rng.gen_range(0..100) {
        0..=14 => {
            let mut body = json!({
                "holder_name": pick(rng, NAMES),
                "email": format!("fuzz{}@example.org", rng.gen_range(0..1_000_000)),
                "country": pick(rng, COUNTRIES),
                "currency": pick(rng, CURRENCIES),
            });
            if rng.gen_bool(0.3) {
                body["daily_withdrawal_limit_minor"] = json!(rng.gen_range(0..10_000_000));
            }
            Template::new("POST /v1/accounts", "/v1/accounts").json(body)
        }
        15..=24 => Template::new("GET /v1/accounts/{id}", &base),
        25..=41 => {
            let mut body = json!({ "amount_minor": rng.gen_range(1..1_000_000) });
            if rng.gen_bool(0.5) {
                body["description"] = json!("salary");
            }
            Template::new(
                "POST /v1/accounts/{id}/deposits",
                &format!("{base}/deposits"),
            )
            .json(body)
        }
        42..=53 => Template::new(
            "POST /v1/accounts/{id}/withdrawals",
            &format!("{base}/withdrawals"),
        )
        .json(json!({
            "amount_minor": rng.gen_range(1..50_000),
            "channel": pick(rng, &["atm", "branch", "online"]),
        })),
        54..=71 => Template::new(
            "POST /v1/accounts/{id}/payments",
            &format!("{base}/payments"),
        )
        .json(json!({
            "amount_minor": rng.gen_range(1..100_000),
            "merchant_name": pick(rng, MERCHANTS),
            "merchant_category": pick(rng, CATEGORIES),
            "merchant_country": pick(rng, COUNTRIES),
            "channel": pick(rng, &["pos", "online"]),
        })),
        72..=77 => Template::new("POST /v1/accounts/{id}/freeze", &format!("{base}/freeze"))
            .json(json!({ "reason": "customer called" })),
        78..=84 => Template::new(
            "POST /v1/accounts/{id}/unfreeze",
            &format!("{base}/unfreeze"),
        )
        .json(json!({})),
        85..=86 => {
            Template::new("POST /v1/accounts/{id}/close", &format!("{base}/close")).json(json!({}))
        }
        _ => {
            let (account, payment) = known
                .payments
                .choose(rng)
                .cloned()
                .unwrap_or_else(|| (account.clone(), uuid::Uuid::now_v7().to_string()));
            Template::new(
                "POST /v1/accounts/{id}/payments/{event_id}/fraud-reports",
                &format!("/v1/accounts/{account}/payments/{payment}/fraud-reports"),
            )
            .json(json!({ "reason": "not me" }))
        }
    };
    let mut template = template.authorized();
    if template.method == "POST" && rng.gen_bool(0.3) {
        template = template.header(
            "Idempotency-Key",
            format!("fuzz-{}", rng.gen_range(0..u64::MAX)),
        );
    }
    if rng.gen_bool(0.2) {
        template = template.header(
            "X-Correlation-Id",
            format!("fuzz-{}", rng.gen_range(0..u32::MAX)),
        );
    }
    template
}

// ---------------------------------------------------------------------------------------
// prism-ledger

fn ledger(known: &Known, rng: &mut ChaCha8Rng) -> Template {
    let (account, token) = known.account_with_token(rng);
    let template = match rng.gen_range(0..3) {
        0 => {
            const ROUTE: &str = "GET /v1/accounts";
            let template = Template::new(ROUTE, "/v1/accounts")
                .params(&["status", "country", "cursor", "limit"]);
            match known.cursor_for(ROUTE, rng).filter(|_| rng.gen_bool(0.4)) {
                Some(harvested) => with_cursor(template, harvested),
                None => template
                    .maybe(rng, 0.3, "status", |rng| {
                        pick(rng, &prism_ledger::http::STATUSES)
                    })
                    .maybe(rng, 0.3, "country", |rng| pick(rng, COUNTRIES))
                    .maybe(rng, 0.6, "limit", |rng| rng.gen_range(1..4).to_string()),
            }
        }
        1 => Template::new("GET /v1/accounts/{id}", &format!("/v1/accounts/{account}"))
            .params(&["min_version"])
            .maybe(rng, 0.2, "min_version", |rng| {
                rng.gen_range(0..3).to_string()
            }),
        _ => {
            const ROUTE: &str = "GET /v1/accounts/{id}/statement";
            let template = Template::new(ROUTE, &format!("/v1/accounts/{account}/statement"))
                .params(&["from", "to", "cursor", "limit", "min_version"]);
            match known.cursor_for(ROUTE, rng).filter(|_| rng.gen_bool(0.4)) {
                Some(harvested) => with_cursor(template, harvested),
                None => template
                    .maybe(rng, 0.3, "from", recent_time)
                    .maybe(rng, 0.2, "to", |_| chrono::Utc::now().to_rfc3339())
                    .maybe(rng, 0.6, "limit", |rng| rng.gen_range(1..4).to_string()),
            }
        }
    };
    let mut template = template.authorized();
    if template.route != "GET /v1/accounts" && rng.gen_bool(0.2) {
        template = template.header("Consistency-Token", token);
    }
    template
}

/// The next page of a list: the path and filters that made the cursor, and the cursor.
fn with_cursor(mut template: Template, harvested: Harvested) -> Template {
    template.segments = harvested.segments;
    template.query = harvested.query;
    template.query.push(("cursor".into(), harvested.cursor));
    template
}

// ---------------------------------------------------------------------------------------
// prism-search

const SEARCH_FILTERS: &[&str] = &[
    "q",
    "account_id",
    "country",
    "merchant_country",
    "category",
    "channel",
    "decision",
    "kind",
    "from",
    "to",
    "min_amount_minor",
    "max_amount_minor",
    "currency",
    "sort",
];
/// A few valid transaction filters.
fn search_filters(template: Template, known: &Known, rng: &mut ChaCha8Rng) -> Template {
    use prism_search::query::{CHANNELS, DECISIONS, KINDS};
    let mut t = template;
    for _ in 0..rng.gen_range(0..3) {
        let filter = pick(rng, SEARCH_FILTERS);
        let value = match filter.as_str() {
            "q" => pick(
                rng,
                &[
                    "café",
                    "tesco",
                    "Müller",
                    "amaz*",
                    "\"Café Rosa\"",
                    "-tesco",
                ],
            ),
            "account_id" => known.account(rng),
            "country" | "merchant_country" => pick(rng, COUNTRIES),
            "category" => pick(rng, CATEGORIES),
            "channel" => pick(rng, &CHANNELS),
            "decision" => pick(rng, &DECISIONS),
            "kind" => pick(rng, &KINDS),
            "from" => recent_time(rng),
            "to" => chrono::Utc::now().to_rfc3339(),
            "min_amount_minor" => rng.gen_range(0..1000).to_string(),
            "max_amount_minor" => rng.gen_range(1000..1_000_000).to_string(),
            "currency" => pick(rng, CURRENCIES),
            _ => pick(rng, &prism_search::query::Sort::ALL),
        };
        if !t.query.iter().any(|(k, _)| *k == filter) {
            t.query.push((filter, value));
        }
    }
    t
}

fn search(known: &Known, rng: &mut ChaCha8Rng) -> Template {
    let template = match rng.gen_range(0..10) {
        0..=5 => {
            const ROUTE: &str = "GET /v1/search/transactions";
            let template = Template::new(ROUTE, "/v1/search/transactions")
                .params(SEARCH_FILTERS)
                .params(&[
                    "limit",
                    "cursor",
                    "facets",
                    "facet_size",
                    "amount_interval_minor",
                ]);
            match known.cursor_for(ROUTE, rng).filter(|_| rng.gen_bool(0.3)) {
                Some(harvested) => with_cursor(template, harvested),
                None => {
                    let mut t =
                        search_filters(template, known, rng)
                            .maybe(rng, 0.6, "limit", |rng| rng.gen_range(1..4).to_string());
                    if rng.gen_bool(0.3) {
                        t.query.push(("facets".into(), "true".into()));
                        t = t
                            .maybe(rng, 0.5, "facet_size", |rng| {
                                rng.gen_range(1..20).to_string()
                            })
                            .maybe(rng, 0.5, "amount_interval_minor", |rng| {
                                rng.gen_range(100..100_000).to_string()
                            });
                    }
                    t
                }
            }
        }
        6..=7 => {
            let template = Template::new(
                "GET /v1/search/transactions/export",
                "/v1/search/transactions/export",
            )
            .params(SEARCH_FILTERS)
            .params(&["format"]);
            let mut t = search_filters(template, known, rng);
            t.query
                .push(("format".into(), pick(rng, &["ndjson", "csv"])));
            t
        }
        _ => Template::new("GET /v1/search/accounts", "/v1/search/accounts")
            .params(&["q", "status", "country", "limit"])
            .maybe(rng, 0.7, "q", |rng| {
                pick(rng, &["ad", "zoë", "li", "jos", "fuzz1", "ng"])
            })
            .maybe(rng, 0.2, "status", |rng| {
                pick(rng, &prism_search::query::STATUSES)
            })
            .maybe(rng, 0.2, "country", |rng| pick(rng, COUNTRIES))
            .maybe(rng, 0.3, "limit", |rng| rng.gen_range(1..10).to_string()),
    };
    let mut template = template.authorized();
    if rng.gen_bool(0.1) {
        let (_, token) = known.account_with_token(rng);
        template = template.header("Consistency-Token", token);
    }
    template
}

// ---------------------------------------------------------------------------------------
// prism-dashboard

fn dashboard(rng: &mut ChaCha8Rng) -> Template {
    use prism_dashboard::buckets::Span;
    use prism_dashboard::read::Metric;
    match rng.gen_range(0..10) {
        // The page and its assets are public.
        0 => Template::new("GET /", "/"),
        1 => Template::new("GET /assets/dashboard.js", "/assets/dashboard.js"),
        2 => Template::new("GET /assets/dashboard.css", "/assets/dashboard.css"),
        3..=5 => Template::new("GET /v1/dashboard/summary", "/v1/dashboard/summary").authorized(),
        6..=8 => {
            let metric = pick(rng, &Metric::NAMES);
            let mut t = Template::new("GET /v1/dashboard/series", "/v1/dashboard/series")
                .params(&["metric", "window", "currency"])
                .maybe(rng, 0.7, "window", |rng| pick(rng, &Span::NAMES));
            if metric.starts_with("money") {
                t.query.push(("currency".into(), pick(rng, CURRENCIES)));
            }
            t.query.push(("metric".into(), metric));
            t.authorized()
        }
        _ => Template::new("GET /v1/dashboard/stream", "/v1/dashboard/stream")
            .authorized()
            .header("Accept", "text/event-stream".into()),
    }
}

// ---------------------------------------------------------------------------------------
// prism-fraud

fn fraud(known: &Known, rng: &mut ChaCha8Rng) -> Template {
    let (account, token) = known.account_with_token(rng);
    let template = if rng.gen_bool(0.4) {
        Template::new("GET /v1/features/{id}", &format!("/v1/features/{account}"))
    } else {
        let mut body = Map::new();
        body.insert("amount_minor".into(), json!(rng.gen_range(1..1_000_000)));
        body.insert("merchant_name".into(), json!(pick(rng, MERCHANTS)));
        body.insert("merchant_category".into(), json!(pick(rng, CATEGORIES)));
        body.insert("merchant_country".into(), json!(pick(rng, COUNTRIES)));
        body.insert("channel".into(), json!(pick(rng, &["pos", "online"])));
        if rng.gen_bool(0.4) {
            body.insert("time".into(), json!(recent_time(rng)));
        }
        Template::new(
            "POST /v1/features/{id}/score",
            &format!("/v1/features/{account}/score"),
        )
        .json(Value::Object(body))
    };
    let mut template = template
        .params(&["min_version"])
        .maybe(rng, 0.1, "min_version", |_| "1".into())
        .authorized();
    if rng.gen_bool(0.2) {
        template = template.header("Consistency-Token", token);
    }
    template
}
