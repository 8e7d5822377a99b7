//! From a valid request ([`Template`]) to a fuzz case: a few mutations of its method, path,
//! query string, headers and body, each named in the case (so a failure says what was
//! done), or a request made up from nothing.
//!
//! A case is kept structured (path segments, query pairs, a JSON body) as long as the
//! mutations are structural, and turned into raw bytes by the first byte-level mutation of
//! that part; [`Case::wire`] then writes the exact bytes of the HTTP/1.1 request.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::routes::{Known, Service, Template, TOKEN};

/// A part of the request: structured while it can be, raw bytes once a byte-level
/// mutation touched it.
#[derive(Debug, Clone)]
pub enum Part<T> {
    Shaped(T),
    Raw(Vec<u8>),
}

/// The body: none, JSON (with raw literals spliced in, see [`Case::splice`]), or bytes.
#[derive(Debug, Clone)]
pub enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>),
}

/// One fuzz case: a request and what was done to it.
#[derive(Debug, Clone)]
pub struct Case {
    pub service: Service,
    pub number: u64,
    /// The template's route, or `random`.
    pub route: &'static str,
    pub method: Vec<u8>,
    pub path: Part<Vec<String>>,
    pub query: Part<Vec<(String, String)>>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Body,
    /// Raw JSON literals to splice into the serialised body, by their placeholder string.
    pub splices: Vec<(String, String)>,
    /// Send the body with `Transfer-Encoding: chunked` instead of `Content-Length`.
    pub chunked: bool,
    /// The mutations applied, in order.
    pub mutations: Vec<String>,
    /// Deliberately not valid HTTP/1.1 (bytes no request target or header may hold, too
    /// many or too large headers): the HTTP server answers it before any route does. See
    /// [`Case::malformed`].
    pub protocol: bool,
    /// The body is over the service's limit.
    pub oversized: bool,
    /// The query parameters the route takes.
    pub params: Vec<&'static str>,
}

impl Case {
    fn from_template(service: Service, number: u64, t: Template) -> Case {
        let mut headers = vec![(b"Host".to_vec(), b"127.0.0.1".to_vec())];
        headers.extend(
            t.headers
                .into_iter()
                .map(|(n, v)| (n.into_bytes(), v.into_bytes())),
        );
        Case {
            service,
            number,
            route: t.route,
            method: t.method.as_bytes().to_vec(),
            path: Part::Shaped(t.segments),
            query: Part::Shaped(t.query),
            headers,
            body: t.body.map_or(Body::None, Body::Json),
            splices: Vec::new(),
            chunked: false,
            mutations: Vec::new(),
            protocol: false,
            oversized: false,
            params: t.params,
        }
    }

    pub fn method_is(&self, method: &str) -> bool {
        self.method == method.as_bytes()
    }

    /// The same request, sent again as case `number`.
    pub fn replayed_as(&self, number: u64) -> Case {
        Case {
            number,
            mutations: vec![format!(
                "the request of case {} again ({})",
                self.number,
                self.mutations.join("; ")
            )],
            ..self.clone()
        }
    }

    /// Deliberately not valid HTTP/1.1, or with a request target that holds a byte no URI
    /// may hold (RFC 3986): the HTTP server may refuse it before any route sees it.
    pub fn malformed(&self) -> bool {
        let uri_byte = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%[]".contains(b);
        self.protocol || !self.target().iter().all(uri_byte)
    }

    /// The request target: path and query string.
    pub fn target(&self) -> Vec<u8> {
        let mut target = match &self.path {
            Part::Shaped(segments) => format!("/{}", segments.join("/")).into_bytes(),
            Part::Raw(raw) => raw.clone(),
        };
        match &self.query {
            Part::Shaped(pairs) if pairs.is_empty() => {}
            Part::Shaped(pairs) => {
                target.push(b'?');
                target.extend_from_slice(encode_query(pairs).as_bytes());
            }
            Part::Raw(raw) => {
                target.push(b'?');
                target.extend_from_slice(raw);
            }
        }
        target
    }

    /// The body's bytes, as they will be sent.
    pub fn body_bytes(&self) -> Option<Vec<u8>> {
        match &self.body {
            Body::None => None,
            Body::Raw(raw) => Some(raw.clone()),
            Body::Json(value) => {
                let mut text = value.to_string();
                for (placeholder, literal) in &self.splices {
                    text = text.replace(&format!("\"{placeholder}\""), literal);
                }
                Some(text.into_bytes())
            }
        }
    }

    /// The exact bytes of the request.
    pub fn wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.method);
        out.push(b' ');
        out.extend_from_slice(&self.target());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        // One request per connection: the answer ends where the connection does.
        out.extend_from_slice(b"Connection: close\r\n");
        let body = self.body_bytes();
        match (&body, self.chunked) {
            (None, _) => out.extend_from_slice(b"\r\n"),
            (Some(body), false) => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            (Some(body), true) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for chunk in body.chunks(1000) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        out
    }

    /// A placeholder for a raw JSON literal (`1e400`, a lone surrogate escape…) that
    /// `serde_json::Value` cannot hold: spliced in when the body is serialised.
    fn splice(&mut self, literal: &str) -> Value {
        let placeholder = format!("\u{1}splice{}\u{1}", self.splices.len());
        // As serde_json writes it.
        let written = Value::String(placeholder.clone()).to_string();
        self.splices
            .push((written.trim_matches('"').to_owned(), literal.to_owned()));
        Value::String(placeholder)
    }

    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    fn remove_header(&mut self, name: &str) {
        self.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
    }

    fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.remove_header(name);
        self.headers.push((name.as_bytes().to_vec(), value.into()));
    }

    fn raw_body(&mut self) -> Vec<u8> {
        let bytes = self.body_bytes().unwrap_or_default();
        self.body = Body::Raw(bytes.clone());
        bytes
    }

    fn raw_path(&mut self) -> Vec<u8> {
        let path = match &self.path {
            Part::Shaped(segments) => format!("/{}", segments.join("/")).into_bytes(),
            Part::Raw(raw) => raw.clone(),
        };
        self.path = Part::Raw(path.clone());
        path
    }

    fn raw_query(&mut self) -> Vec<u8> {
        let query = match &self.query {
            Part::Shaped(pairs) => encode_query(pairs).into_bytes(),
            Part::Raw(raw) => raw.clone(),
        };
        self.query = Part::Raw(query.clone());
        query
    }
}

/// `application/x-www-form-urlencoded`, as a browser writes a query string.
fn encode_query(pairs: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Case `number` of `service`: a valid request, left valid (one in eight), with one odd
/// value (three in eight) or with up to four mutations of any kind; or (one in ten) a
/// request made up from nothing.
pub fn case(service: Service, number: u64, known: &Known, rng: &mut ChaCha8Rng) -> Case {
    if rng.gen_ratio(1, 10) {
        return random(service, number, rng);
    }
    let template = crate::routes::template(service, known, rng);
    let mut case = Case::from_template(service, number, template);
    let (count, mutations): (usize, &[Mutation]) = match rng.gen_range(0..8) {
        // Valid: the accepted path is checked too.
        0 => (0, &[]),
        // One odd value where the endpoint reads one, and nothing else wrong: how far
        // into the service an odd value gets.
        1..=3 => (1, &[query_value, odd_field]),
        _ => (rng.gen_range(1..=4), MUTATIONS),
    };
    let mut tries = 0;
    while case.mutations.len() < count && tries < 20 {
        tries += 1;
        let mutation = mutations.choose(rng).copied().unwrap_or(MUTATIONS[0]);
        if let Some(done) = mutation(&mut case, known, rng) {
            case.mutations.push(done);
        }
    }
    case
}

type Mutation = fn(&mut Case, &Known, &mut ChaCha8Rng) -> Option<String>;

/// Every mutation. Each returns what it did, or `None` when it does not apply to the case
/// (another one is drawn). Listed more than once: drawn more often.
const MUTATIONS: &[Mutation] = &[
    // The JSON body
    drop_field,
    drop_field,
    retype_field,
    retype_field,
    odd_number,
    odd_number,
    odd_number,
    odd_string,
    odd_string,
    odd_field,
    odd_field,
    unknown_field,
    duplicate_field,
    replace_body,
    replace_body,
    // The body's bytes and encoding
    flip_bytes,
    truncate_body,
    invalid_utf8,
    byte_order_mark,
    trailing_bytes,
    oversize_body,
    utf16_body,
    gzip_body,
    body_where_none,
    no_body,
    chunked,
    // Headers
    content_type,
    content_type,
    no_content_type,
    content_encoding,
    authorization,
    authorization,
    accept,
    consistency_token,
    consistency_token,
    idempotency_key,
    correlation_id,
    huge_header,
    many_headers,
    odd_header,
    odd_header,
    header_bytes,
    // Method, path and query
    method,
    method,
    path_id,
    path_id,
    path_id,
    path_shape,
    path_shape,
    path_escape,
    long_path,
    request_target,
    query_value,
    query_value,
    query_param,
    query_param,
    query_escape,
    long_query,
];

// ---------------------------------------------------------------------------------------
// Vocabulary

/// Numbers as JSON literals: zero, negatives, the edges of i64 and u64, beyond them,
/// floats, and some that are not JSON at all.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "-0",
    "1.0",
    "1.5",
    "1e3",
    "1E400",
    "-1e400",
    "1e-400",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999999999",
    "1000000000000",
    "1000000000001",
    "4294967296",
    "00012",
    "0x10",
    "NaN",
    "Infinity",
    "+1",
    ".5",
    "1_000",
];

/// Strings: empty, blank, long, control characters, unicode of every kind, markup and
/// query syntax.
fn odd_text(rng: &mut ChaCha8Rng) -> String {
    let choices: [fn(&mut ChaCha8Rng) -> String; 22] = [
        |_| String::new(),
        |_| "   ".into(),
        |_| "\t\n".into(),
        |_| "a\u{0}b".into(),
        |_| "a\u{7}b\u{1b}[31m".into(),
        |_| "\u{202e}evil\u{202c}".into(),
        |_| "e\u{301}\u{301}\u{301}".into(),
        |_| "\u{200b}\u{feff}".into(),
        |_| "😀👩‍👩‍👧‍👦🏳️‍🌈".into(),
        |_| "Ω≈ç√∫˜µ≤≥÷".into(),
        |_| "\u{10ffff}\u{fffd}".into(),
        |_| "'; DROP TABLE events; --".into(),
        |_| "<script>alert(1)</script>".into(),
        |_| "{{7*7}} ${7*7} %s %n".into(),
        |_| "../../../../etc/passwd".into(),
        |_| "\"((((*~\\".into(),
        |_| "a*b*c*d*e*f*g*h*".into(),
        |_| "null".into(),
        |rng| "x".repeat(rng.gen_range(199..=202)),
        |rng| "ü".repeat(rng.gen_range(499..=502)),
        |_| "y".repeat(5_000),
        |_| "é".repeat(3_000),
    ];
    (choices.choose(rng).copied().unwrap_or(choices[0]))(rng)
}

/// Odd times: the edges of RFC 3339 (year 0, 9999, offsets that push them past), of
/// 64-bit nanoseconds (1677, 2262), leap seconds, dates that do not exist, other spellings.
const TIMES: &[&str] = &[
    "2024-05-01T00:00:00+02:00",
    "2024-05-01T00:00:00 02:00",
    "2024-05-01t00:00:00z",
    "2024-05-01T00:00:00-00:00",
    "2024-05-01T00:00:00+24:00",
    "2024-05-01T00:00:00.123456789123Z",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999999-23:59",
    "0000-01-01T00:00:00Z",
    "0000-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00Z",
    "1677-09-21T00:12:43.145224191Z",
    "1677-09-21T00:00:00Z",
    "2262-04-11T23:47:16.854775807Z",
    "2262-04-12T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999999Z",
    "2016-12-31T23:59:60Z",
    "2024-02-30T00:00:00Z",
    "2024-05-01T24:00:00Z",
    "+10000-01-01T00:00:00Z",
    "2024-05-01",
    "1714550400",
    "yesterday",
];

/// Odd integers, as text: zero, negatives, the edges of u32, i64 and u64 and past them,
/// and things that are not integers.
const INTEGERS: &[&str] = &[
    "0",
    "-1",
    "-0",
    "1",
    "2",
    "500",
    "501",
    "1000000000000",
    "1000000000001",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999",
    "1.5",
    "1e3",
    "0x10",
    " 7 ",
    "+5",
    "NaN",
];

/// Odd codes: the right ones in the wrong case, unknown ones, lists.
const CODES: &[&str] = &[
    "OPEN",
    "pt",
    "XX",
    "eur",
    "EURO",
    "true",
    "TRUE",
    "yes",
    "CSV",
    "ndjson ",
    "-time,time",
    "amount desc",
    "10M",
    "1w",
    "money_in",
    "events",
    "atm",
    "pos",
    "0000",
    "58",
    "58a2",
    "PT,GB",
    "*",
];

/// Odd free text, as a query parameter: search syntax and escapes.
const TEXTS: &[&str] = &[
    "*",
    "\"",
    "(",
    ")",
    "a AND b OR c",
    "a~10",
    "~",
    "-",
    "+",
    "|",
    "\\",
    "/",
    "*a*b*c*",
    "\"unclosed",
    "a\u{0}b",
    "\u{7f}",
    "é",
    "😀",
    "<b>",
    "%",
    "a:b",
    "_exists_:x",
    "name:*",
    "[a TO z]",
    "/regex.*/",
];

/// What a parameter or body field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Time,
    Integer,
    Text,
    Code,
}

impl Kind {
    /// By the parameter's or field's name.
    fn of(name: &str) -> Kind {
        match name {
            "from" | "to" | "time" => Kind::Time,
            "limit"
            | "min_version"
            | "facet_size"
            | "amount_interval_minor"
            | "min_amount_minor"
            | "max_amount_minor"
            | "amount_minor"
            | "daily_withdrawal_limit_minor" => Kind::Integer,
            "q" | "holder_name" | "email" | "merchant_name" | "description" | "reason" => {
                Kind::Text
            }
            _ => Kind::Code,
        }
    }

    fn odd_values(self) -> &'static [&'static str] {
        match self {
            Kind::Time => TIMES,
            Kind::Integer => INTEGERS,
            Kind::Text => TEXTS,
            Kind::Code => CODES,
        }
    }
}

/// An odd value for the parameter or field `name`: mostly one for what it holds, else one
/// for anything else, an account id, a cursor, or a long or strange text.
fn odd_value(name: &str, known: &Known, rng: &mut ChaCha8Rng) -> String {
    match rng.gen_range(0..10) {
        0..=5 => Kind::of(name)
            .odd_values()
            .choose(rng)
            .copied()
            .unwrap_or("")
            .to_owned(),
        6 => [TIMES, INTEGERS, CODES, TEXTS]
            .choose(rng)
            .and_then(|kind| kind.choose(rng))
            .copied()
            .unwrap_or("")
            .to_owned(),
        7 => id_variant(&known.account(rng), rng),
        8 => known
            .cursors
            .choose(rng)
            .map(|h| h.cursor.clone())
            .unwrap_or_default(),
        _ => odd_text(rng),
    }
}

/// Content types, right and wrong.
const CONTENT_TYPES: &[&str] = &[
    "application/json; charset=utf-8",
    "application/json; charset=latin1",
    "application/json; charset=utf-16",
    "APPLICATION/JSON",
    "application/problem+json",
    "application/vnd.api+json",
    "application/json;;;",
    "application/json; charset",
    "application/jsonx",
    "text/json",
    "text/plain",
    "text/html",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/octet-stream",
    "*/*",
    "",
    ";",
    "json",
];

/// Authorization values; `{token}` stands for the valid token.
const AUTHORIZATIONS: &[&str] = &[
    "Bearer",
    "Bearer ",
    "Bearer wrong-token",
    "Bearer {token} extra",
    "bearer {token}",
    "BEARER   {token}   ",
    "Bearer\t{token}",
    "Basic cHJpc206cHJpc20=",
    "Token {token}",
    "{token}",
    "Bearer prism-test-ledger-only-token",
    "Bearer prism-local-analyst-token",
    "Bearer {token},Bearer {token}",
    "Bearer \"{token}\"",
];

// ---------------------------------------------------------------------------------------
// The JSON body

fn body_object(case: &mut Case) -> Option<&mut serde_json::Map<String, Value>> {
    match &mut case.body {
        Body::Json(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn random_key(case: &mut Case, rng: &mut ChaCha8Rng) -> Option<String> {
    let keys: Vec<String> = body_object(case)?.keys().cloned().collect();
    keys.choose(rng).cloned()
}

fn drop_field(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let key = random_key(case, rng)?;
    body_object(case)?.remove(&key);
    Some(format!("body: drop {key}"))
}

fn retype_field(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let key = random_key(case, rng)?;
    let value = [
        json!(null),
        json!(true),
        json!("12"),
        json!(12),
        json!(1.5),
        json!([]),
        json!({}),
        json!([1, "a"]),
        json!({"a": 1}),
    ]
    .choose(rng)
    .cloned()
    .unwrap_or(Value::Null);
    body_object(case)?.insert(key.clone(), value.clone());
    Some(format!("body: {key} = {value}"))
}

fn odd_number(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let key = random_key(case, rng)?;
    let literal = NUMBERS.choose(rng).copied().unwrap_or("0");
    let value = case.splice(literal);
    body_object(case)?.insert(key.clone(), value);
    Some(format!("body: {key} = {literal}"))
}

fn odd_string(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let key = random_key(case, rng)?;
    if rng.gen_ratio(1, 4) {
        // Escapes serde_json refuses or that decode to odd characters.
        let literal = [
            "\"\\ud800\"",
            "\"\\udc00\\ud800\"",
            "\"\\u0000\"",
            "\"\\x41\"",
            "\"\\\"",
            "\"a\nb\"",
        ]
        .choose(rng)
        .copied()
        .unwrap_or("\"\"");
        let value = case.splice(literal);
        body_object(case)?.insert(key.clone(), value);
        return Some(format!("body: {key} = {literal}"));
    }
    let text = odd_text(rng);
    let shown = shorten(&format!("{text:?}"));
    body_object(case)?.insert(key.clone(), Value::String(text));
    Some(format!("body: {key} = {shown}"))
}

/// A field set to an odd value for what it holds: a number literal for an amount, a time
/// at the edges for a time, a code in the wrong case for a code.
fn odd_field(case: &mut Case, known: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let key = random_key(case, rng)?;
    let value = odd_value(&key, known, rng);
    let shown = shorten(&format!("{value:?}"));
    // An integer field gets the literal as a JSON number when it is one.
    let number = Kind::of(&key) == Kind::Integer && value.trim() == value;
    let json = if number && value.parse::<f64>().is_ok() {
        case.splice(&value)
    } else {
        Value::String(value)
    };
    body_object(case)?.insert(key.clone(), json);
    Some(format!("body: {key} = {shown}"))
}

fn unknown_field(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let key = ["extra", "__proto__", "", "Amount_Minor", "amount_minor "]
        .choose(rng)
        .copied()
        .unwrap_or("extra");
    body_object(case)?.insert(key.into(), json!(1));
    Some(format!("body: add {key:?}"))
}

fn duplicate_field(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let key = random_key(case, rng)?;
    let other = ["1", "\"other\"", "null", "-5"]
        .choose(rng)
        .copied()
        .unwrap_or("1");
    let mut bytes = case.raw_body();
    let at = bytes.iter().position(|b| *b == b'{')? + 1;
    let twin = format!("{}:{other},", Value::String(key.clone()));
    bytes.splice(at..at, twin.into_bytes());
    case.body = Body::Raw(bytes);
    Some(format!("body: {key} twice"))
}

fn replace_body(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let bodies: [fn() -> Vec<u8>; 20] = [
        Vec::new,
        || b" \r\n ".to_vec(),
        || b"null".to_vec(),
        || b"[]".to_vec(),
        || b"{}".to_vec(),
        || b"\"{}\"".to_vec(),
        || b"1".to_vec(),
        || b"true".to_vec(),
        || b"{".to_vec(),
        || b"}".to_vec(),
        || b"{\"a\":}".to_vec(),
        || b"[{}]".to_vec(),
        || b"{\"amount_minor\":1}{\"amount_minor\":2}".to_vec(),
        || b"amount_minor=1&channel=atm".to_vec(),
        || b"<account><amount>1</amount></account>".to_vec(),
        || b"\0\0\0\0".to_vec(),
        || "[".repeat(10_000).into_bytes(),
        || "{\"a\":".repeat(3_000).into_bytes(),
        || format!("{}1{}", "[".repeat(127), "]".repeat(127)).into_bytes(),
        || "{\"a\":1,".repeat(1_500).into_bytes(),
    ];
    let index = rng.gen_range(0..bodies.len());
    let body = bodies[index]();
    let shown = shorten(&String::from_utf8_lossy(&body));
    case.body = Body::Raw(body);
    Some(format!("body: replaced by {shown:?}"))
}

// ---------------------------------------------------------------------------------------
// The body's bytes and encoding

fn flip_bytes(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let mut bytes = case.raw_body();
    if bytes.is_empty() {
        return None;
    }
    let flips = rng.gen_range(1..=4);
    for _ in 0..flips {
        let at = rng.gen_range(0..bytes.len());
        bytes[at] ^= 1 << rng.gen_range(0..8);
    }
    case.body = Body::Raw(bytes);
    Some(format!("body: {flips} bits flipped"))
}

fn truncate_body(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let mut bytes = case.raw_body();
    if bytes.len() < 2 {
        return None;
    }
    let at = rng.gen_range(1..bytes.len());
    bytes.truncate(at);
    case.body = Body::Raw(bytes);
    Some(format!("body: cut at {at}"))
}

fn invalid_utf8(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let mut bytes = case.raw_body();
    let bad: &[u8] = [
        &[0xff][..],
        &[0xc3],
        &[0xc0, 0xaf],
        &[0xed, 0xa0, 0x80],
        &[0xf4, 0x90, 0x80, 0x80],
        &[0xfe, 0xff],
    ]
    .choose(rng)
    .copied()
    .unwrap_or(&[0xff]);
    // Inside a string if there is one: after a quote.
    let quotes: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'"')
        .map(|(i, _)| i + 1)
        .collect();
    let at = quotes
        .choose(rng)
        .copied()
        .unwrap_or_else(|| rng.gen_range(0..=bytes.len()));
    bytes.splice(at..at, bad.iter().copied());
    case.body = Body::Raw(bytes);
    Some(format!("body: invalid UTF-8 {bad:02x?} at {at}"))
}

fn byte_order_mark(case: &mut Case, _: &Known, _: &mut ChaCha8Rng) -> Option<String> {
    let mut bytes = vec![0xef, 0xbb, 0xbf];
    bytes.extend(case.raw_body());
    case.body = Body::Raw(bytes);
    Some("body: UTF-8 byte order mark".into())
}

fn trailing_bytes(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let mut bytes = case.raw_body();
    let tail = [" x", "\0", "}", "\n\n{}", ",", "\u{feff}"]
        .choose(rng)
        .copied()
        .unwrap_or(" x");
    bytes.extend_from_slice(tail.as_bytes());
    case.body = Body::Raw(bytes);
    Some(format!("body: trailing {tail:?}"))
}

fn oversize_body(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let limit = case.service.body_limit();
    // Large bodies to the projectors are slow to send: rarely.
    if limit > 100_000 && !rng.gen_ratio(1, 10) {
        return None;
    }
    let size = limit + [1, 100, limit].choose(rng).copied().unwrap_or(1);
    match &mut case.body {
        Body::Json(Value::Object(map)) => {
            map.insert("pad".into(), Value::String("a".repeat(size)));
        }
        _ => case.body = Body::Raw(vec![b' '; size]),
    }
    case.oversized = true;
    Some(format!("body: over the limit ({size} bytes)"))
}

fn utf16_body(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let bytes = case.raw_body();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let mut utf16 = if rng.gen_bool(0.5) {
        vec![0xff, 0xfe]
    } else {
        Vec::new()
    };
    for unit in text.encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    case.body = Body::Raw(utf16);
    case.set_header("Content-Type", "application/json; charset=utf-16");
    Some("body: UTF-16".into())
}

fn gzip_body(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let bytes = case.raw_body();
    let (body, what) = match rng.gen_range(0..3) {
        0 => (gzip(&bytes), "gzip"),
        1 => {
            let mut zipped = gzip(&bytes);
            zipped.truncate(zipped.len() / 2);
            (zipped, "truncated gzip")
        }
        _ => (bytes, "plain bytes labelled gzip"),
    };
    case.body = Body::Raw(body);
    case.set_header("Content-Encoding", "gzip");
    Some(format!("body: {what}"))
}

fn body_where_none(case: &mut Case, _: &Known, _: &mut ChaCha8Rng) -> Option<String> {
    if !matches!(case.body, Body::None) {
        return None;
    }
    case.body = Body::Json(json!({"amount_minor": 1}));
    case.set_header("Content-Type", "application/json");
    Some("body: added".into())
}

fn no_body(case: &mut Case, _: &Known, _: &mut ChaCha8Rng) -> Option<String> {
    if matches!(case.body, Body::None) {
        return None;
    }
    case.body = Body::None;
    Some("body: none".into())
}

fn chunked(case: &mut Case, _: &Known, _: &mut ChaCha8Rng) -> Option<String> {
    if matches!(case.body, Body::None) || case.chunked {
        return None;
    }
    case.chunked = true;
    Some("body: chunked".into())
}

// ---------------------------------------------------------------------------------------
// Headers

fn content_type(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let value = CONTENT_TYPES.choose(rng).copied().unwrap_or("");
    if rng.gen_ratio(1, 5) {
        // Two of them.
        case.headers
            .push((b"Content-Type".to_vec(), value.as_bytes().to_vec()));
        return Some(format!("header: a second Content-Type {value:?}"));
    }
    case.set_header("Content-Type", value);
    Some(format!("header: Content-Type {value:?}"))
}

fn no_content_type(case: &mut Case, _: &Known, _: &mut ChaCha8Rng) -> Option<String> {
    case.header_value("content-type")?;
    case.remove_header("Content-Type");
    Some("header: no Content-Type".into())
}

fn content_encoding(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let value = [
        "gzip",
        "br",
        "deflate",
        "identity",
        "gzip, gzip",
        "x-bogus",
        "",
    ]
    .choose(rng)
    .copied()
    .unwrap_or("gzip");
    case.set_header("Content-Encoding", value);
    Some(format!("header: Content-Encoding {value:?}"))
}

fn authorization(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    match rng.gen_range(0..8) {
        0 => {
            case.remove_header("Authorization");
            Some("header: no Authorization".into())
        }
        1 => {
            case.headers.push((
                b"Authorization".to_vec(),
                format!("Bearer {TOKEN}").into_bytes(),
            ));
            Some("header: Authorization twice".into())
        }
        2 => {
            let token = "t".repeat(*[1_000, 9_000, 60_000].choose(rng).unwrap_or(&1_000));
            case.set_header("Authorization", format!("Bearer {token}"));
            Some(format!("header: a {}-byte token", token.len()))
        }
        3 => {
            let mut value = b"Bearer ".to_vec();
            value.extend_from_slice(&[0xff, 0xfe, b'x', 0x80]);
            case.set_header("Authorization", value);
            Some("header: Authorization with non-ASCII bytes".into())
        }
        _ => {
            let shown = AUTHORIZATIONS.choose(rng).copied().unwrap_or("Bearer");
            case.set_header("Authorization", shown.replace("{token}", TOKEN));
            Some(format!("header: Authorization {shown:?}"))
        }
    }
}

fn accept(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let long = "a/b, ".repeat(2_000);
    let value = [
        "application/xml",
        "text/event-stream",
        "*/*;q=0",
        "application/json;q=0",
        "",
        "garbage",
        "text/html",
        long.as_str(),
    ]
    .choose(rng)
    .copied()
    .unwrap_or("");
    case.set_header("Accept", value);
    Some(format!("header: Accept {:?}", shorten(value)))
}

fn consistency_token(case: &mut Case, known: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let (account, token) = known.account_with_token(rng);
    let other = uuid::Uuid::now_v7();
    let value = match rng.gen_range(0..12) {
        0 => token,
        1 => format!("v1.{other}.1"),
        2 => format!("v1.{account}.0"),
        3 => format!("v1.{account}.18446744073709551615"),
        4 => format!("v1.{account}.18446744073709551616"),
        5 => format!("v1.{account}.-1"),
        6 => format!("v2.{account}.1"),
        7 => "v1..1".into(),
        8 => String::new(),
        9 => format!("v1.{}.1", account.to_uppercase()),
        10 => format!("v1.{account}.1.2"),
        _ => {
            case.headers
                .push((b"Consistency-Token".to_vec(), token.clone().into_bytes()));
            token
        }
    };
    case.headers
        .push((b"Consistency-Token".to_vec(), value.clone().into_bytes()));
    Some(format!("header: Consistency-Token {value:?}"))
}

fn idempotency_key(case: &mut Case, known: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let value: Vec<u8> = match rng.gen_range(0..6) {
        // An earlier key: the same request replays, another one is refused.
        0..=2 => known
            .idempotency_keys
            .choose(rng)
            .cloned()
            .unwrap_or_else(|| "fuzz-key".into())
            .into_bytes(),
        3 => "k".repeat(256).into_bytes(),
        4 => vec![b'k', 0xff, b'y'],
        _ => b"has space".to_vec(),
    };
    let shown = shorten(&String::from_utf8_lossy(&value));
    case.set_header("Idempotency-Key", value);
    Some(format!("header: Idempotency-Key {shown:?}"))
}

fn correlation_id(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let value: Vec<u8> = match rng.gen_range(0..4) {
        0 => Vec::new(),
        1 => "c".repeat(129).into_bytes(),
        2 => vec![b'c', 0xe9],
        _ => b"with space".to_vec(),
    };
    let shown = shorten(&String::from_utf8_lossy(&value));
    case.set_header("X-Correlation-Id", value);
    Some(format!("header: X-Correlation-Id {shown:?}"))
}

fn huge_header(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let size = *[8 * 1024, 64 * 1024, 600 * 1024]
        .choose(rng)
        .unwrap_or(&8192);
    case.headers.push((b"X-Fuzz".to_vec(), vec![b'h'; size]));
    // Past the HTTP server's buffer for a request head.
    case.protocol |= size > 300 * 1024;
    Some(format!("header: X-Fuzz of {size} bytes"))
}

fn many_headers(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let count = *[50, 99, 150, 1_000].choose(rng).unwrap_or(&50);
    for i in 0..count {
        case.headers
            .push((format!("X-Fuzz-{i}").into_bytes(), b"1".to_vec()));
    }
    // More than the HTTP server takes (100 in all).
    case.protocol |= case.headers.len() + 2 > 100;
    Some(format!("header: {count} more headers"))
}

fn odd_header(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let (name, value, protocol): (&str, &str, bool) = *[
        ("Expect", "100-continue", false),
        ("Expect", "something-else", false),
        ("Transfer-Encoding", "gzip", true),
        ("Content-Length", "abc", true),
        ("Content-Length", "-1", true),
        ("Host", "", false),
        ("Host", "evil.example", false),
        ("Host", "127.0.0.1:1", false),
        ("Range", "bytes=0-1", false),
        ("If-None-Match", "*", false),
        ("If-Modified-Since", "yesterday", false),
        ("Cookie", "a=b; c", false),
        ("Origin", "http://evil.example", false),
        ("X-Forwarded-For", "::1, 10.0.0.1", false),
        ("Upgrade", "h2c", false),
        ("Upgrade", "websocket", false),
        ("Accept-Encoding", "gzip, br, zstd", false),
        ("Accept-Charset", "ebcdic", false),
        ("Max-Forwards", "0", false),
        ("Content-Language", "xx", false),
        ("Trailer", "Expires", false),
    ]
    .choose(rng)
    .unwrap_or(&("Expect", "100-continue", false));
    if name == "Host" && rng.gen_bool(0.5) {
        case.remove_header("Host");
        return Some("header: no Host".into());
    }
    case.headers
        .push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
    case.protocol |= protocol;
    Some(format!("header: {name}: {value:?}"))
}

fn header_bytes(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let (name, value, protocol, what): (&[u8], &[u8], bool, &str) = *[
        (
            &b"X-Fuzz"[..],
            &[0xc3, 0xa9, 0xff][..],
            false,
            "non-ASCII value",
        ),
        (b"X-Fuzz", b"a\x01b", true, "a control character in a value"),
        (b"X Fuzz", b"1", true, "a space in a name"),
        (b"X-F\xc3\xbczz", b"1", true, "a non-ASCII name"),
        (b"", b"1", true, "an empty name"),
        (
            b"X-Fuzz",
            b" leading and trailing ",
            false,
            "spaces around a value",
        ),
    ]
    .choose(rng)
    .unwrap_or(&(b"X-Fuzz", b"1", false, "x"));
    case.headers.push((name.to_vec(), value.to_vec()));
    case.protocol |= protocol;
    Some(format!("header: {what}"))
}

// ---------------------------------------------------------------------------------------
// Method, path and query string

fn method(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let long = "M".repeat(1_000);
    let (name, protocol) = *[
        ("GET", false),
        ("POST", false),
        ("PUT", false),
        ("DELETE", false),
        ("PATCH", false),
        ("HEAD", false),
        ("OPTIONS", false),
        ("TRACE", false),
        ("CONNECT", true),
        ("get", false),
        ("FOO", false),
        ("M-SEARCH", false),
        ("GÉT", true),
        (long.as_str(), false),
    ]
    .choose(rng)
    .unwrap_or(&("GET", false));
    case.method = name.as_bytes().to_vec();
    case.protocol |= protocol;
    Some(format!("method {}", shorten(name)))
}

/// Odd spellings of an id in a path segment (already percent-encoded where they need it).
fn id_variant(id: &str, rng: &mut ChaCha8Rng) -> String {
    let simple = id.replace('-', "");
    let encoded: String = id.bytes().map(|b| format!("%{b:02X}")).collect();
    let variants = [
        id.to_uppercase(),
        simple,
        format!("{{{id}}}"),
        format!("urn:uuid:{id}"),
        "00000000-0000-0000-0000-000000000000".into(),
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::new_v4().to_string(),
        "not-a-uuid".into(),
        String::new(),
        "0".into(),
        "-1".into(),
        format!("{id}0"),
        id[..id.len() - 1].to_owned(),
        "x".repeat(10_000),
        "%C3%BC".into(),
        "..".into(),
        ".".into(),
        "%2e%2e".into(),
        "%2F".into(),
        format!("{id}%2Fdeposits"),
        "%00".into(),
        "%ZZ".into(),
        "%".into(),
        "%F".into(),
        "%C0%AF".into(),
        "%FF%FE".into(),
        encoded,
        format!("%20{id}"),
        format!("{id}%0A"),
        format!("{id};v=1"),
    ];
    variants.choose(rng).cloned().unwrap_or_default()
}

fn is_id(segment: &str) -> bool {
    uuid::Uuid::parse_str(segment).is_ok()
}

fn path_id(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let Part::Shaped(segments) = &mut case.path else {
        return None;
    };
    let ids: Vec<usize> = (0..segments.len())
        .filter(|i| is_id(&segments[*i]))
        .collect();
    let at = *ids.choose(rng)?;
    let variant = id_variant(&segments[at], rng);
    let shown = shorten(&variant);
    segments[at] = variant;
    Some(format!("path: id {shown:?}"))
}

fn path_shape(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let Part::Shaped(segments) = &mut case.path else {
        return None;
    };
    let what = match rng.gen_range(0..8) {
        0 => {
            segments.push(
                ["x", "", "..", "score", "deposits"]
                    .choose(rng)
                    .copied()
                    .unwrap_or("x")
                    .to_owned(),
            );
            "a segment more"
        }
        1 if !segments.is_empty() => {
            let at = rng.gen_range(0..segments.len());
            segments.remove(at);
            "a segment less"
        }
        2 => {
            for s in segments.iter_mut() {
                *s = s.to_uppercase();
            }
            "upper case"
        }
        3 => {
            let at = rng.gen_range(0..=segments.len());
            segments.insert(at, String::new());
            "an empty segment (//)"
        }
        4 => {
            let at = rng.gen_range(0..=segments.len());
            segments.insert(at, ".".into());
            "a dot segment"
        }
        5 => {
            segments.insert(0, "..".into());
            "a leading .."
        }
        6 => {
            segments.push(String::new());
            "a trailing slash"
        }
        _ => {
            segments.reverse();
            "segments reversed"
        }
    };
    Some(format!("path: {what}"))
}

/// Whether the request target is still a path (not `*` or an absolute URI).
fn origin_form(case: &Case) -> bool {
    match &case.path {
        Part::Shaped(_) => true,
        Part::Raw(raw) => raw.starts_with(b"/"),
    }
}

fn path_escape(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    if !origin_form(case) {
        return None;
    }
    let mut path = case.raw_path();
    let escape = [
        "%", "%Z", "%ZZ", "%2F", "%2f", "%5C", "%FF", "%C0%AF", "%00", "%25", "+", ";x=1",
    ]
    .choose(rng)
    .copied()
    .unwrap_or("%");
    let at = rng.gen_range(1..=path.len());
    path.splice(at..at, escape.bytes());
    case.path = Part::Raw(path);
    Some(format!("path: {escape:?} at {at}"))
}

fn long_path(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    if !origin_form(case) {
        return None;
    }
    let mut path = case.raw_path();
    let size = *[2_000, 20_000, 70_000].choose(rng).unwrap_or(&2_000);
    while path.len() < size {
        path.extend_from_slice(b"/a");
    }
    // Past the longest URI the HTTP server takes.
    case.protocol |= size > 65_000;
    case.path = Part::Raw(path);
    Some(format!("path: {size} bytes long"))
}

fn request_target(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    if !origin_form(case) {
        return None;
    }
    let path = case.raw_path();
    let (target, protocol, what): (Vec<u8>, bool, &str) = match rng.gen_range(0..6) {
        0 => {
            let mut t = b"http://127.0.0.1".to_vec();
            t.extend_from_slice(&path);
            (t, false, "absolute form")
        }
        1 => {
            let mut t = b"http://evil.example:1".to_vec();
            t.extend_from_slice(&path);
            (t, false, "absolute form, another host")
        }
        2 => (b"*".to_vec(), true, "asterisk form"),
        3 => {
            let mut t = path.clone();
            let at = rng.gen_range(1..=t.len());
            t.splice(at..at, [0xc3, 0xbc, 0xff]);
            (t, true, "raw non-ASCII bytes")
        }
        4 => {
            let mut t = path.clone();
            let byte = *[b' ', b'"', b'<', b'\\', b'{', b'^', b'`', b'|', b'#', 0x7f]
                .choose(rng)
                .unwrap_or(&b'"');
            let at = rng.gen_range(1..=t.len());
            t.insert(at, byte);
            (t, true, "a byte a URI may not hold")
        }
        _ => (
            path.strip_prefix(b"/").unwrap_or(&path).to_vec(),
            true,
            "no leading slash",
        ),
    };
    case.path = Part::Raw(target);
    case.protocol |= protocol;
    Some(format!("target: {what}"))
}

fn query_pairs(case: &mut Case) -> Option<&mut Vec<(String, String)>> {
    match &mut case.query {
        Part::Shaped(pairs) => Some(pairs),
        Part::Raw(_) => None,
    }
}

fn query_value(case: &mut Case, known: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let name = case.params.choose(rng).copied()?.to_owned();
    let value = odd_value(&name, known, rng);
    let shown = shorten(&format!("{value:?}"));
    let pairs = query_pairs(case)?;
    pairs.retain(|(k, _)| *k != name);
    pairs.push((name.clone(), value));
    Some(format!("query: {name}={shown}"))
}

fn query_param(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let pairs = query_pairs(case)?;
    let what = match rng.gen_range(0..5) {
        0 if !pairs.is_empty() => {
            let at = rng.gen_range(0..pairs.len());
            let twin = pairs[at].clone();
            pairs.push(twin);
            "a parameter twice"
        }
        1 if !pairs.is_empty() => {
            let at = rng.gen_range(0..pairs.len());
            pairs[at].1 = "other".into();
            pairs.push(pairs[at].clone());
            pairs[at].1 = "1".into();
            "a parameter twice, different values"
        }
        2 if !pairs.is_empty() => {
            let at = rng.gen_range(0..pairs.len());
            pairs.remove(at);
            "a parameter less"
        }
        3 => {
            for i in 0..500 {
                pairs.push((format!("p{i}"), "x".into()));
            }
            "500 unknown parameters"
        }
        _ => {
            let name = ["x", "LIMIT", "limit ", "", "cursor[]", "a.b"]
                .choose(rng)
                .copied()
                .unwrap_or("x");
            pairs.push((name.into(), "1".into()));
            "an unknown parameter"
        }
    };
    Some(format!("query: {what}"))
}

fn query_escape(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let mut query = case.raw_query();
    let escape = [
        "%", "%Z", "%ZZ", "%FF", "%C0%AF", "%00", "&&&", "=", "==", "a=b=c", "+", ";", "%26",
        "%3D", "&limit", "&limit=", "?",
    ]
    .choose(rng)
    .copied()
    .unwrap_or("%");
    let at = rng.gen_range(0..=query.len());
    query.splice(at..at, escape.bytes());
    case.query = Part::Raw(query);
    Some(format!("query: {escape:?} at {at}"))
}

fn long_query(case: &mut Case, _: &Known, rng: &mut ChaCha8Rng) -> Option<String> {
    let size = *[2_000, 30_000, 70_000].choose(rng).unwrap_or(&2_000);
    let name = case.params.choose(rng).copied().unwrap_or("q").to_owned();
    let pairs = query_pairs(case)?;
    pairs.retain(|(k, _)| *k != name);
    pairs.push((name.clone(), "q".repeat(size)));
    case.protocol |= size > 65_000;
    Some(format!("query: {name} of {size} bytes"))
}

// ---------------------------------------------------------------------------------------
// Requests from nothing

/// A request made of random parts: a method, path segments from the services' own words
/// and random ones, parameters, headers and a body.
fn random(service: Service, number: u64, rng: &mut ChaCha8Rng) -> Case {
    const WORDS: &[&str] = &[
        "v1",
        "accounts",
        "search",
        "transactions",
        "export",
        "dashboard",
        "summary",
        "series",
        "stream",
        "features",
        "score",
        "statement",
        "payments",
        "deposits",
        "fraud-reports",
        "openapi.json",
        "metrics",
        "assets",
        "..",
        "%2F",
        "%FF",
        "",
    ];
    let mut segments = Vec::new();
    for _ in 0..rng.gen_range(0..6) {
        segments.push(match rng.gen_range(0..4) {
            0 => uuid::Uuid::new_v4().to_string(),
            1 => (0..rng.gen_range(1..12))
                .map(|_| rng.gen_range(b'!'..=b'~'))
                .filter(|b| !b"?#%".contains(b))
                .map(char::from)
                .collect(),
            _ => WORDS.choose(rng).copied().unwrap_or("v1").to_owned(),
        });
    }
    let mut query = Vec::new();
    for _ in 0..rng.gen_range(0..4) {
        query.push((
            ["q", "limit", "cursor", "x", "min_version", "from"]
                .choose(rng)
                .copied()
                .unwrap_or("x")
                .to_owned(),
            odd_value("x", &Known::default(), rng),
        ));
    }
    let mut headers = vec![(b"Host".to_vec(), b"127.0.0.1".to_vec())];
    if rng.gen_bool(0.7) {
        headers.push((
            b"Authorization".to_vec(),
            format!("Bearer {TOKEN}").into_bytes(),
        ));
    }
    let body = match rng.gen_range(0..4) {
        0 => Body::None,
        1 => Body::Raw((0..rng.gen_range(0..2_000)).map(|_| rng.gen()).collect()),
        2 => Body::Raw(
            (0..rng.gen_range(0..200))
                .map(|_| rng.gen_range(b' '..=b'~'))
                .collect(),
        ),
        _ => Body::Json(json!({ "amount_minor": rng.gen_range(-5..5), "x": odd_text(rng) })),
    };
    if !matches!(body, Body::None) && rng.gen_bool(0.7) {
        headers.push((
            b"Content-Type".to_vec(),
            CONTENT_TYPES
                .choose(rng)
                .copied()
                .unwrap_or("")
                .as_bytes()
                .to_vec(),
        ));
    }
    let method = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
        .choose(rng)
        .copied()
        .unwrap_or("GET");
    Case {
        service,
        number,
        route: "random",
        method: method.as_bytes().to_vec(),
        path: Part::Shaped(segments),
        query: Part::Shaped(query),
        headers,
        body,
        splices: Vec::new(),
        chunked: false,
        mutations: vec!["random request".into()],
        protocol: false,
        oversized: false,
        params: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// At most 60 characters of `text`, for the names of mutations.
fn shorten(text: &str) -> String {
    if text.chars().count() <= 60 {
        return text.to_owned();
    }
    let head: String = text.chars().take(40).collect();
    format!("{head}… ({} chars)", text.chars().count())
}

/// A valid gzip member of `data` in stored (uncompressed) deflate blocks.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = u8::from(blocks.peek().is_none());
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.push(last);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(data.len() % (1 << 32))
            .unwrap_or(0)
            .to_le_bytes(),
    );
    out
}

/// CRC-32 (IEEE), bit by bit: the bodies are small.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0_u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
