//! The search API's engine requests, built from validated parameters: pure functions, no
//! I/O, so every body the API can send is unit-tested here.
//!
//! **User text goes only through `simple_query_string`** (which never fails on syntax:
//! quotes, `*`, `|`, `-`, unbalanced brackets are operators or plain text) and through
//! plain-text `match`-family queries (typo tolerance, autocomplete), which have no syntax
//! at all. It never reaches `query_string`, a script, a field name or any other place of
//! the DSL. Filters are exact values the handler validated (codes from fixed sets,
//! UUIDs, times, integers).

use chrono::{DateTime, SecondsFormat, Utc};
use prism_platform::http::Problem;
use prism_projector::api::invalid;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::fold::TransactionDoc;

/// The free-text fields of a transaction, with their weights: a merchant match counts
/// most, then the holder, then the description.
pub const TEXT_FIELDS: [&str; 3] = ["merchant_name^3", "holder_name^2", "description"];
/// The fields a typo-tolerant `match` looks at (names, where typos happen).
pub const FUZZY_FIELDS: [&str; 2] = ["merchant_name", "holder_name"];
/// The fields highlights are taken from.
pub const HIGHLIGHT_FIELDS: [&str; 3] = ["merchant_name", "holder_name", "description"];
/// The typo-tolerant clause is added only up to this many words: each word expands to at
/// most [`FUZZY_MAX_EXPANSIONS`] terms per field, which keeps the query far below the
/// engine's clause limit.
pub const FUZZY_MAX_WORDS: usize = 4;
pub const FUZZY_MAX_EXPANSIONS: u32 = 20;

pub const CHANNELS: [&str; 4] = ["atm", "branch", "online", "pos"];
pub const DECISIONS: [&str; 2] = ["approved", "declined"];
pub const KINDS: [&str; 4] = ["deposit", "withdrawal", "card_payment", "declined_payment"];
pub const STATUSES: [&str; 3] = ["open", "frozen", "closed"];

/// The order of a transaction search. Every order ends with the event id, which is
/// unique, so `search_after` never skips or repeats a document that shares a sort value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Sort {
    /// Newest first (`-time`, the default).
    #[default]
    #[serde(rename = "-time")]
    TimeDesc,
    #[serde(rename = "time")]
    TimeAsc,
    #[serde(rename = "-amount")]
    AmountDesc,
    #[serde(rename = "amount")]
    AmountAsc,
}

impl Sort {
    pub const ALL: [&'static str; 4] = ["-time", "time", "-amount", "amount"];

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "-time" => Some(Self::TimeDesc),
            "time" => Some(Self::TimeAsc),
            "-amount" => Some(Self::AmountDesc),
            "amount" => Some(Self::AmountAsc),
            _ => None,
        }
    }

    /// The engine's `sort`.
    pub fn clause(&self) -> Value {
        let tie = json!({ "event_id": "asc" });
        match self {
            Self::TimeDesc => json!([{ "time": "desc" }, tie]),
            Self::TimeAsc => json!([{ "time": "asc" }, tie]),
            Self::AmountDesc => json!([{ "amount_minor": "desc" }, { "time": "desc" }, tie]),
            Self::AmountAsc => json!([{ "amount_minor": "asc" }, { "time": "desc" }, tie]),
        }
    }
}

/// Checks free text (`q`): at most `max_chars` characters and no control characters
/// (they have no place in a search and often mean a broken client or an attack). Blank
/// text is no text.
pub fn text(field: &str, raw: Option<&str>, max_chars: usize) -> Result<Option<String>, Problem> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let chars = raw.chars().count();
    if chars > max_chars {
        return Err(invalid(
            field,
            format!("{chars} characters; at most {max_chars} are allowed"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(invalid(field, "control characters are not allowed"));
    }
    let trimmed = raw.trim();
    Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
}

/// The filters of a transaction search, validated. Serialised (field order fixed) it is
/// the scope a cursor is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TransactionFilters {
    pub account_id: Option<Uuid>,
    /// The holder's country.
    pub country: Option<String>,
    pub merchant_country: Option<String>,
    /// The merchant category (MCC) code.
    pub category: Option<String>,
    pub channel: Option<&'static str>,
    pub decision: Option<&'static str>,
    pub kind: Option<&'static str>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    pub min_amount_minor: Option<i64>,
    pub max_amount_minor: Option<i64>,
    pub currency: Option<String>,
}

impl TransactionFilters {
    /// The `bool.filter` clauses (exact values only; no scoring).
    pub fn clauses(&self) -> Vec<Value> {
        let mut clauses = Vec::new();
        let mut term = |field: &str, value: Option<&str>| {
            if let Some(value) = value {
                clauses.push(json!({ "term": { field: value } }));
            }
        };
        let account = self.account_id.map(|id| id.to_string());
        term("account_id", account.as_deref());
        term("holder_country", self.country.as_deref());
        term("merchant_country", self.merchant_country.as_deref());
        term("category_code", self.category.as_deref());
        term("channel", self.channel);
        term("decision", self.decision);
        term("kind", self.kind);
        term("currency", self.currency.as_deref());
        if self.from.is_some() || self.to.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(from) = self.from {
                range.insert("gte".into(), json!(rfc3339(from)));
            }
            if let Some(to) = self.to {
                range.insert("lt".into(), json!(rfc3339(to)));
            }
            clauses.push(json!({ "range": { "time": range } }));
        }
        if self.min_amount_minor.is_some() || self.max_amount_minor.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(min) = self.min_amount_minor {
                range.insert("gte".into(), json!(min));
            }
            if let Some(max) = self.max_amount_minor {
                range.insert("lte".into(), json!(max));
            }
            clauses.push(json!({ "range": { "amount_minor": range } }));
        }
        clauses
    }
}

/// A transaction search: free text, filters and order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TransactionQuery {
    pub text: Option<String>,
    pub filters: TransactionFilters,
    pub sort: Sort,
}

impl TransactionQuery {
    /// What a cursor of this search is bound to: the text, every filter and the order.
    pub fn scope(&self) -> String {
        // Serialising plain strings, numbers and times cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The engine's `query`.
    pub fn query(&self) -> Value {
        let mut bool_query = serde_json::Map::new();
        bool_query.insert("filter".into(), Value::Array(self.filters.clauses()));
        if let Some(text) = &self.text {
            bool_query.insert("should".into(), Value::Array(text_clauses(text)));
            bool_query.insert("minimum_should_match".into(), json!(1));
        }
        json!({ "bool": bool_query })
    }

    /// Highlights of the matched text fields (HTML-escaped, matches in `<em>`).
    pub fn highlight(&self) -> Option<Value> {
        self.text.as_ref()?;
        let fields: serde_json::Map<String, Value> = HIGHLIGHT_FIELDS
            .iter()
            .map(|f| ((*f).to_owned(), json!({})))
            .collect();
        Some(json!({
            "encoder": "html",
            "pre_tags": ["<em>"],
            "post_tags": ["</em>"],
            "number_of_fragments": 0,
            "fields": fields
        }))
    }
}

/// The free-text clauses (one must match): the user's `simple_query_string` (its syntax:
/// `"phrase"`, `-not`, `a | b`, `prefix*`, `word~` for a typo the user allows), and, for
/// a few plain words (letters, digits, spaces: no operator of the user's to override), a
/// typo-tolerant `match` on names (`fuzziness: AUTO`: one edit from 3 characters, two
/// from 6), so "starbuks" finds "Starbucks" without the user asking.
pub fn text_clauses(text: &str) -> Vec<Value> {
    let mut clauses = vec![json!({
        "simple_query_string": {
            "query": text,
            "fields": TEXT_FIELDS,
            "default_operator": "and",
            "lenient": true,
            "analyze_wildcard": false,
            "auto_generate_synonyms_phrase_query": false,
            "fuzzy_max_expansions": FUZZY_MAX_EXPANSIONS,
        }
    })];
    let words = text.split_whitespace().count();
    let plain = text
        .chars()
        .all(|c| c.is_alphanumeric() || c.is_whitespace());
    if plain && (1..=FUZZY_MAX_WORDS).contains(&words) {
        clauses.push(json!({
            "multi_match": {
                "query": text,
                "fields": FUZZY_FIELDS,
                "operator": "and",
                "fuzziness": "AUTO",
                "prefix_length": 1,
                "max_expansions": FUZZY_MAX_EXPANSIONS,
                "lenient": true
            }
        }));
    }
    clauses
}

/// The facets of a transaction search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facets {
    /// Most buckets per terms facet.
    pub size: u32,
    /// Width of an amount histogram bucket, in minor units.
    pub amount_interval_minor: i64,
}

/// The terms facets: response name → field.
pub const TERMS_FACETS: [(&str, &str); 5] = [
    ("category", "category_code"),
    ("country", "holder_country"),
    ("merchant_country", "merchant_country"),
    ("channel", "channel"),
    ("decision", "decision"),
];

impl Facets {
    /// The engine's `aggs`.
    pub fn aggregations(&self) -> Value {
        let mut aggs = serde_json::Map::new();
        for (name, field) in TERMS_FACETS {
            aggs.insert(
                name.into(),
                json!({ "terms": { "field": field, "size": self.size } }),
            );
        }
        aggs.insert(
            "amount_histogram".into(),
            json!({ "histogram": {
                "field": "amount_minor",
                "interval": self.amount_interval_minor,
                "min_doc_count": 1
            } }),
        );
        aggs.insert(
            "per_day".into(),
            json!({ "date_histogram": {
                "field": "time",
                "calendar_interval": "day",
                "format": "yyyy-MM-dd",
                "time_zone": "UTC",
                "min_doc_count": 1
            } }),
        );
        Value::Object(aggs)
    }
}

/// One page of a search: where it starts and how long it may run.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest<'a> {
    /// Documents wanted; one more is asked for, to know whether a next page exists.
    pub size: u32,
    /// The point in time to read (`None`: the live index, named in the URL).
    pub pit: Option<&'a str>,
    /// How long the point in time stays open after this request (`2m`).
    pub keep_alive: &'a str,
    /// The sort values of the last document of the previous page.
    pub after: Option<&'a [Value]>,
    /// The engine's `timeout` for this search, in ms.
    pub timeout_ms: u64,
    /// Whether to count every match exactly.
    pub total: bool,
}

/// The body of a transaction search page.
pub fn transactions_body(
    query: &TransactionQuery,
    page: &PageRequest<'_>,
    facets: Option<&Facets>,
) -> Value {
    let mut body = json!({
        "size": page.size.saturating_add(1),
        "query": query.query(),
        "sort": query.sort.clause(),
        "timeout": format!("{}ms", page.timeout_ms),
        "track_total_hits": page.total,
    });
    if let Some(pit) = page.pit {
        body["pit"] = json!({ "id": pit, "keep_alive": page.keep_alive });
    }
    if let Some(after) = page.after {
        body["search_after"] = Value::Array(after.to_vec());
    }
    if let Some(highlight) = query.highlight() {
        body["highlight"] = highlight;
    }
    if let Some(facets) = facets {
        body["aggs"] = facets.aggregations();
    }
    body
}

/// An account search (autocomplete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountQuery {
    pub text: Option<String>,
    pub status: Option<&'static str>,
    pub country: Option<String>,
    pub limit: u32,
    /// Whether `text` also matches email addresses: not for a caller who sees them
    /// masked, who could otherwise find an address by trying its prefixes.
    pub match_email: bool,
}

/// The body of an account search: as-you-type on holder name and email (each word a
/// whole or the start of a word, in any order; email only with `match_email`), else every
/// account by holder name.
pub fn accounts_body(query: &AccountQuery, timeout_ms: u64) -> Value {
    let mut filters = Vec::new();
    if let Some(status) = query.status {
        filters.push(json!({ "term": { "status": status } }));
    }
    if let Some(country) = &query.country {
        filters.push(json!({ "term": { "country": country } }));
    }
    let mut bool_query = json!({ "filter": filters });
    let sort = match &query.text {
        Some(text) => {
            let mut fields = vec![
                "holder_name.suggest^2",
                "holder_name.suggest._2gram^2",
                "holder_name.suggest._3gram^2",
            ];
            if query.match_email {
                fields.extend([
                    "email.suggest",
                    "email.suggest._2gram",
                    "email.suggest._3gram",
                ]);
            }
            bool_query["must"] = json!([{
                "multi_match": {
                    "query": text,
                    "type": "bool_prefix",
                    "operator": "and",
                    "fields": fields
                }
            }]);
            json!(["_score", { "holder_name.keyword": "asc" }, { "account_id": "asc" }])
        }
        None => json!([{ "holder_name.keyword": "asc" }, { "account_id": "asc" }]),
    };
    json!({
        "size": query.limit,
        "timeout": format!("{timeout_ms}ms"),
        "query": { "bool": bool_query },
        "sort": sort
    })
}

/// One bucket of a facet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Bucket {
    pub value: String,
    pub count: u64,
}

/// One bucket of the amount histogram: amounts in `[from_minor, to_minor)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AmountBucket {
    pub from_minor: i64,
    pub to_minor: i64,
    pub count: u64,
}

/// The facets of a result, as the API answers them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FacetCounts {
    pub category: Vec<Bucket>,
    pub country: Vec<Bucket>,
    pub merchant_country: Vec<Bucket>,
    pub channel: Vec<Bucket>,
    pub decision: Vec<Bucket>,
    pub amount_histogram: Vec<AmountBucket>,
    /// Transactions per UTC day (`value` = `YYYY-MM-DD`).
    pub per_day: Vec<Bucket>,
}

/// The facets in a search response's `aggregations` (missing ones are empty).
pub fn facet_counts(aggregations: &Value, facets: &Facets) -> FacetCounts {
    let buckets = |name: &str| -> Vec<Value> {
        aggregations[name]["buckets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let terms = |name: &str| -> Vec<Bucket> {
        buckets(name)
            .iter()
            .filter_map(|b| {
                let value = match &b["key"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some(Bucket {
                    value,
                    count: b["doc_count"].as_u64()?,
                })
            })
            .collect()
    };
    let amount_histogram = buckets("amount_histogram")
        .iter()
        .filter_map(|b| {
            // Bucket keys are multiples of the interval, sent as floats.
            let from = b["key"].as_f64()?.round() as i64;
            Some(AmountBucket {
                from_minor: from,
                to_minor: from.saturating_add(facets.amount_interval_minor),
                count: b["doc_count"].as_u64()?,
            })
        })
        .collect();
    let per_day = buckets("per_day")
        .iter()
        .filter_map(|b| {
            Some(Bucket {
                value: b["key_as_string"].as_str()?.to_owned(),
                count: b["doc_count"].as_u64()?,
            })
        })
        .collect();
    FacetCounts {
        category: terms("category"),
        country: terms("country"),
        merchant_country: terms("merchant_country"),
        channel: terms("channel"),
        decision: terms("decision"),
        amount_histogram,
        per_day,
    }
}

/// Times as the documents hold them.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The columns of a CSV export, in order.
pub const CSV_COLUMNS: [&str; 17] = [
    "event_id",
    "account_id",
    "version",
    "kind",
    "time",
    "amount_minor",
    "currency",
    "decision",
    "decline_reason",
    "holder_name",
    "holder_country",
    "merchant_name",
    "category_code",
    "category_description",
    "merchant_country",
    "channel",
    "description",
];

/// A transaction as a CSV row ([`CSV_COLUMNS`]); absent values are empty cells.
pub fn csv_row(doc: &TransactionDoc) -> [String; 17] {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        doc.event_id.to_string(),
        doc.account_id.to_string(),
        doc.version.to_string(),
        doc.kind.as_str().to_owned(),
        rfc3339(doc.time),
        doc.amount_minor.to_string(),
        doc.currency.clone(),
        doc.decision.as_str().to_owned(),
        opt(&doc.decline_reason),
        doc.holder_name.clone(),
        doc.holder_country.clone(),
        opt(&doc.merchant_name),
        opt(&doc.category_code),
        opt(&doc.category_description),
        opt(&doc.merchant_country),
        opt(&doc.channel),
        opt(&doc.description),
    ]
}

/// The search engine behind the API. They differ (for this API) only in their point-in-time
/// endpoints; everything else here (`pit` in the search body, `search_after`, `timeout`,
/// aggregations, `simple_query_string`) is the same on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Elasticsearch 8: `POST /<index>/_pit`, `DELETE /_pit {"id"}`.
    Elasticsearch,
    /// OpenSearch 2: `POST /<index>/_search/point_in_time`,
    /// `DELETE /_search/point_in_time {"pit_id": [..]}`.
    OpenSearch,
}

impl Engine {
    /// From the answer of `GET /`: OpenSearch says `version.distribution: "opensearch"`,
    /// Elasticsearch has no distribution.
    pub fn from_info(info: &Value) -> Self {
        match info["version"]["distribution"].as_str() {
            Some("opensearch") => Self::OpenSearch,
            _ => Self::Elasticsearch,
        }
    }

    /// The path that opens a point in time on `index` (`keep_alive` goes in the query).
    pub fn open_pit_path(&self, index: &str) -> String {
        match self {
            Self::Elasticsearch => format!("/{index}/_pit"),
            Self::OpenSearch => format!("/{index}/_search/point_in_time"),
        }
    }

    /// The id in the answer of [`Engine::open_pit_path`].
    pub fn opened_pit_id(&self, answer: &Value) -> Option<String> {
        let key = match self {
            Self::Elasticsearch => "id",
            Self::OpenSearch => "pit_id",
        };
        answer[key].as_str().map(str::to_owned)
    }

    /// The path and body that close point in time `id`.
    pub fn close_pit(&self, id: &str) -> (&'static str, Value) {
        match self {
            Self::Elasticsearch => ("/_pit", json!({ "id": id })),
            Self::OpenSearch => ("/_search/point_in_time", json!({ "pit_id": [id] })),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    const HOSTILE: [&str; 12] = [
        "\"unterminated",
        "*",
        "a OR b AND -c",
        "((((",
        "))]]}}",
        "+-|*~\"()",
        "{\"script\": \"boom\"}",
        "field:value",
        "merchant_name:x OR _exists_:y",
        "\\",
        "zoe~99",
        "<script>alert(1)</script>",
    ];

    /// Every place `needle` occurs in `value`: (the key holding it, the keys above).
    fn occurrences(
        value: &Value,
        needle: &str,
        path: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        match value {
            Value::String(s) if s.contains(needle) => found.push(path.clone()),
            Value::Array(items) => {
                for item in items {
                    occurrences(item, needle, path, found);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    assert!(!key.contains(needle), "user text became a key: {key}");
                    assert_ne!(key, "query_string", "query_string must never be used");
                    path.push(key.clone());
                    occurrences(item, needle, path, found);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn places(body: &Value, needle: &str) -> Vec<Vec<String>> {
        let mut found = Vec::new();
        occurrences(body, needle, &mut Vec::new(), &mut found);
        found
    }

    fn page() -> PageRequest<'static> {
        PageRequest {
            size: 10,
            pit: None,
            keep_alive: "2m",
            after: None,
            timeout_ms: 5_000,
            total: true,
        }
    }

    #[test]
    fn user_text_appears_only_as_the_text_of_simple_query_string_or_a_match() {
        let facets = Facets {
            size: 10,
            amount_interval_minor: 1_000,
        };
        for text in HOSTILE
            .iter()
            .copied()
            .chain(["crypto", "zoe müller lisbon"])
        {
            let query = TransactionQuery {
                text: Some(text.to_owned()),
                ..TransactionQuery::default()
            };
            let body = transactions_body(&query, &page(), Some(&facets));
            let found = places(&body, text);
            assert!(!found.is_empty(), "{text}: {body}");
            for path in found {
                let tail: Vec<&str> = path.iter().rev().take(2).map(String::as_str).collect();
                assert!(
                    tail == ["query", "simple_query_string"] || tail == ["query", "multi_match"],
                    "{text} appears at {path:?}"
                );
            }
        }
    }

    #[test]
    fn the_typo_tolerant_clause_is_only_for_a_few_words() {
        assert_eq!(text_clauses("starbuks").len(), 2);
        assert_eq!(text_clauses("zoe muller lisbon cafe").len(), 2);
        assert_eq!(text_clauses("one two three four five").len(), 1);
        // The user's operators are not overridden by a clause that ignores them.
        for operators in [
            "crypto* -vault",
            "\"exact phrase\"",
            "a | b",
            "zoe~2",
            "(x)",
        ] {
            assert_eq!(text_clauses(operators).len(), 1, "{operators}");
        }
        let fuzzy = &text_clauses("starbuks")[1]["multi_match"];
        assert_eq!(fuzzy["fuzziness"], "AUTO");
        assert_eq!(fuzzy["max_expansions"], FUZZY_MAX_EXPANSIONS);
    }

    #[test]
    fn text_is_limited_in_length_and_refuses_control_characters() {
        assert_eq!(text("q", None, 10), Ok(None));
        assert_eq!(text("q", Some("   "), 10), Ok(None));
        assert_eq!(text("q", Some(" Zoë "), 10), Ok(Some("Zoë".into())));
        // Characters, not bytes: ten accented letters are ten.
        assert_eq!(
            text("q", Some(&"ë".repeat(10)), 10).map(|t| t.is_some()),
            Ok(true)
        );
        let long = "x".repeat(10 * 1024);
        for bad in [
            long.as_str(),
            "a\u{0}b",
            "line\nbreak",
            "tab\there",
            "\u{1b}[31m",
        ] {
            let err = text("q", Some(bad), 500).expect_err("refused");
            assert_eq!(err.document().field.as_deref(), Some("q"));
        }
        for hostile in HOSTILE {
            assert!(text("q", Some(hostile), 500).is_ok(), "{hostile}");
        }
    }

    #[test]
    fn filters_become_exact_clauses() {
        let account = Uuid::now_v7();
        let from = Utc
            .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
            .single()
            .expect("time");
        let filters = TransactionFilters {
            account_id: Some(account),
            country: Some("DE".into()),
            merchant_country: Some("PT".into()),
            category: Some("5812".into()),
            channel: Some("pos"),
            decision: Some("declined"),
            kind: Some("declined_payment"),
            from: Some(from),
            to: None,
            min_amount_minor: Some(100),
            max_amount_minor: Some(900),
            currency: Some("EUR".into()),
        };
        let clauses = filters.clauses();
        assert!(clauses.contains(&json!({ "term": { "account_id": account.to_string() } })));
        assert!(clauses.contains(&json!({ "term": { "holder_country": "DE" } })));
        assert!(clauses.contains(&json!({ "term": { "merchant_country": "PT" } })));
        assert!(clauses.contains(&json!({ "term": { "category_code": "5812" } })));
        assert!(clauses.contains(&json!({ "term": { "channel": "pos" } })));
        assert!(clauses.contains(&json!({ "term": { "decision": "declined" } })));
        assert!(clauses.contains(&json!({ "term": { "kind": "declined_payment" } })));
        assert!(clauses.contains(&json!({ "term": { "currency": "EUR" } })));
        assert!(clauses
            .contains(&json!({ "range": { "time": { "gte": "2026-11-01T00:00:00.000000Z" } } })));
        assert!(
            clauses.contains(&json!({ "range": { "amount_minor": { "gte": 100, "lte": 900 } } }))
        );
        assert_eq!(clauses.len(), 10);
        assert!(TransactionFilters::default().clauses().is_empty());
    }

    #[test]
    fn a_cursor_scope_changes_with_every_filter_text_and_order() {
        let base = TransactionQuery::default();
        let variants = [
            TransactionQuery {
                text: Some("a".into()),
                ..base.clone()
            },
            TransactionQuery {
                sort: Sort::AmountAsc,
                ..base.clone()
            },
            TransactionQuery {
                filters: TransactionFilters {
                    channel: Some("pos"),
                    ..TransactionFilters::default()
                },
                ..base.clone()
            },
            TransactionQuery {
                filters: TransactionFilters {
                    min_amount_minor: Some(1),
                    ..TransactionFilters::default()
                },
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(v.scope(), base.scope(), "{v:?}");
        }
        assert_eq!(base.scope(), TransactionQuery::default().scope());
    }

    #[test]
    fn pages_ask_for_one_more_and_carry_the_point_in_time() {
        let after = [json!(1_700_000_000_000_i64), json!("e")];
        let request = PageRequest {
            pit: Some("pit-id"),
            after: Some(&after),
            ..page()
        };
        let body = transactions_body(&TransactionQuery::default(), &request, None);
        assert_eq!(body["size"], 11);
        assert_eq!(body["pit"], json!({ "id": "pit-id", "keep_alive": "2m" }));
        assert_eq!(body["search_after"], json!(after));
        assert_eq!(body["timeout"], "5000ms");
        assert!(body.get("aggs").is_none());
        assert!(body.get("highlight").is_none());
        // Every order ends with the unique event id.
        for sort in Sort::ALL {
            let clause = Sort::parse(sort).expect("known").clause();
            let last = clause.as_array().and_then(|c| c.last()).cloned();
            assert_eq!(last, Some(json!({ "event_id": "asc" })), "{sort}");
        }
        assert_eq!(Sort::parse("price"), None);
    }

    #[test]
    fn facets_are_terms_a_histogram_and_days() {
        let facets = Facets {
            size: 7,
            amount_interval_minor: 500,
        };
        let aggs = facets.aggregations();
        for (name, field) in TERMS_FACETS {
            assert_eq!(aggs[name]["terms"]["field"], field);
            assert_eq!(aggs[name]["terms"]["size"], 7);
        }
        assert_eq!(aggs["amount_histogram"]["histogram"]["interval"], 500);
        assert_eq!(
            aggs["per_day"]["date_histogram"]["calendar_interval"],
            "day"
        );
        let response = json!({
            "category": { "buckets": [{ "key": "5812", "doc_count": 3 }] },
            "decision": { "buckets": [{ "key": "approved", "doc_count": 2 }] },
            "amount_histogram": { "buckets": [{ "key": 1000.0, "doc_count": 4 }] },
            "per_day": { "buckets": [{ "key": 1, "key_as_string": "2026-11-27", "doc_count": 5 }] }
        });
        let counts = facet_counts(&response, &facets);
        assert_eq!(
            counts.category,
            [Bucket {
                value: "5812".into(),
                count: 3
            }]
        );
        assert_eq!(
            counts.decision,
            [Bucket {
                value: "approved".into(),
                count: 2
            }]
        );
        assert!(counts.country.is_empty());
        assert_eq!(
            counts.amount_histogram,
            [AmountBucket {
                from_minor: 1_000,
                to_minor: 1_500,
                count: 4
            }]
        );
        assert_eq!(
            counts.per_day,
            [Bucket {
                value: "2026-11-27".into(),
                count: 5
            }]
        );
    }

    #[test]
    fn account_search_is_as_you_type_with_exact_filters() {
        let body = accounts_body(
            &AccountQuery {
                text: Some("zoe mu".into()),
                status: Some("open"),
                country: Some("PT".into()),
                limit: 5,
                match_email: true,
            },
            1_000,
        );
        let must = &body["query"]["bool"]["must"][0]["multi_match"];
        assert_eq!(must["type"], "bool_prefix");
        assert_eq!(must["query"], "zoe mu");
        let fields = must["fields"].to_string();
        assert!(fields.contains("holder_name.suggest") && fields.contains("email.suggest"));
        let names_only = accounts_body(
            &AccountQuery {
                text: Some("zoe".into()),
                limit: 5,
                ..AccountQuery::default()
            },
            1_000,
        );
        let fields = names_only["query"]["bool"]["must"][0]["multi_match"]["fields"].to_string();
        assert!(
            fields.contains("holder_name.suggest") && !fields.contains("email"),
            "a caller who sees emails masked cannot match them: {fields}"
        );
        assert_eq!(
            body["query"]["bool"]["filter"],
            json!([{ "term": { "status": "open" } }, { "term": { "country": "PT" } }])
        );
        assert_eq!(body["size"], 5);
        for hostile in HOSTILE {
            let body = accounts_body(
                &AccountQuery {
                    text: Some(hostile.into()),
                    limit: 5,
                    ..AccountQuery::default()
                },
                1_000,
            );
            for path in places(&body, hostile) {
                assert_eq!(path.last().map(String::as_str), Some("query"), "{path:?}");
                assert!(path.contains(&"multi_match".to_owned()), "{path:?}");
            }
        }
        let all = accounts_body(
            &AccountQuery {
                limit: 5,
                ..AccountQuery::default()
            },
            1_000,
        );
        assert!(all["query"]["bool"].get("must").is_none());
    }

    #[test]
    fn each_engine_gets_its_own_point_in_time_endpoints() {
        let opensearch = json!({ "version": { "distribution": "opensearch", "number": "2.19.1" } });
        let elastic = json!({ "version": { "number": "8.15.0", "build_flavor": "default" } });
        assert_eq!(Engine::from_info(&opensearch), Engine::OpenSearch);
        assert_eq!(Engine::from_info(&elastic), Engine::Elasticsearch);
        assert_eq!(
            Engine::OpenSearch.open_pit_path("t"),
            "/t/_search/point_in_time"
        );
        assert_eq!(Engine::Elasticsearch.open_pit_path("t"), "/t/_pit");
        assert_eq!(
            Engine::OpenSearch
                .opened_pit_id(&json!({ "pit_id": "p" }))
                .as_deref(),
            Some("p")
        );
        assert_eq!(
            Engine::Elasticsearch
                .opened_pit_id(&json!({ "id": "e" }))
                .as_deref(),
            Some("e")
        );
        assert_eq!(
            Engine::OpenSearch.close_pit("p"),
            ("/_search/point_in_time", json!({ "pit_id": ["p"] }))
        );
        assert_eq!(
            Engine::Elasticsearch.close_pit("e"),
            ("/_pit", json!({ "id": "e" }))
        );
    }
}
