//! A seeded fuzz test of every HTTP endpoint of every service.
//!
//! The five services (`prism-command` and the four projectors) run as child processes
//! against the local stack, with a topic, event-store schema, databases, indices and Redis
//! namespaces of their own, and a few seeded accounts with payments. Then each service
//! gets its share of the cases, all services at once: prism-command one request at a time
//! (so the events stored while a case runs are that case's), each projector three:
//!
//! - **what is sent** (`fuzz/routes.rs`, `fuzz/mutate.rs`): a valid request to one of
//!   the service's routes (every route of its `/openapi.json` has a template; the test
//!   fails if one is missing), then up to four mutations of its method, path (ids spelled
//!   oddly, percent-escapes valid and not, encoded slashes, dot segments, very long paths),
//!   query string (odd values at every limit, unknown and repeated parameters, bad
//!   escapes), headers (content types and charsets, content encodings, bad or missing
//!   tokens, consistency tokens and idempotency keys, huge and many headers) and body
//!   (fields dropped, duplicated, retyped, numbers past i64 and u64, unicode, invalid UTF-8
//!   and escapes, truncated, flipped bits, UTF-16, gzip, over the size limit); or, one in
//!   ten, a request made up from nothing. Requests are written byte by byte over TCP
//!   (`fuzz/wire.rs`), so nothing normalises them on the way.
//! - **what is checked** for each case: an answer comes (except when the server cut an
//!   oversized body short), its status is below 500, every answer that is not a success
//!   (3xx, 4xx, and the 202 of a consistency wait) is `application/problem+json` with its
//!   status in the document (requests that are not valid HTTP/1.1 are exempt: the HTTP
//!   server refuses them before any route), and on prism-command the number of events in
//!   the event store moved by exactly the events the answer names: none for a refused
//!   request or a replay. At the end, no service log says `panicked` and every service is
//!   still running and ready.
//!
//! `PRISM_FUZZ_CASES` (default 12,000, shared out 40 % to prism-command and 15 % to each
//! projector) and `PRISM_FUZZ_SEED` (printed at the start; random by default) make a run
//! reproducible as far as the requests go: the ids and cursors in them come from the run.
//! A failure prints the case's mutations and the exact bytes sent.
//!
//! Build the services first: `cargo build --bins -p prism-command -p prism-ledger -p
//! prism-search -p prism-dashboard -p prism-fraud`.

#[allow(dead_code)]
#[path = "e2e/mod.rs"]
mod e2e;
#[path = "fuzz/mutate.rs"]
mod mutate;
#[allow(dead_code)]
#[path = "e2e/projector.rs"]
mod projector;
#[path = "fuzz/routes.rs"]
mod routes;
#[path = "fuzz/stack.rs"]
mod stack;
#[path = "fuzz/wire.rs"]
mod wire;
#[path = "e2e/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::mutate::{Case, Part};
use crate::routes::{Harvested, Known, Service};
use crate::stack::{EventStore, Stack};
use crate::wire::{Answer, Outcome};

/// Cases in all by default.
const DEFAULT_CASES: u64 = 12_000;
/// Longest a case may take to be answered.
const CASE_LIMIT: Duration = Duration::from_secs(10);
/// How long a streamed answer (server-sent events) is read before it is cut.
const STREAM_READ: Duration = Duration::from_millis(300);
/// Requests in flight at once to each projector.
const PROJECTOR_LANES: u64 = 3;
/// Failures printed in full, one per kind of failure.
const SHOWN: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_to_any_endpoint_gets_a_5xx_a_panic_or_stores_an_event_when_refused() {
    let (seed, total) = settings();
    eprintln!(
        "fuzz: seed {seed}, {total} cases (re-run with PRISM_FUZZ_SEED={seed} \
         PRISM_FUZZ_CASES={total})"
    );
    stack::isolated(|env| async move {
        let stack = Stack::start(&env).await;
        routes_are_covered(&stack).await;
        let known = stack::seed(&stack).await;
        let events = EventStore::connect(&env.config).await;

        let started = Instant::now();
        let mut runs = Vec::new();
        for service in Service::ALL {
            let (cases, lanes) = (share(service, total), lanes(service));
            for lane in 0..lanes {
                let numbers = (lane..cases).step_by(lanes as usize);
                let events = (service == Service::Command).then_some(&events);
                let address = stack.address(service);
                runs.push(run(service, address, numbers, seed, known.clone(), events));
            }
        }
        let mut tallies: Vec<Tally> = Vec::new();
        for lane in futures::future::join_all(runs).await {
            match tallies.iter_mut().find(|t| t.service == lane.service) {
                Some(tally) => tally.absorb(lane),
                None => tallies.push(lane),
            }
        }
        let elapsed = started.elapsed();

        let mut failures: Vec<Failure> = tallies.iter().flat_map(|t| t.failures.clone()).collect();
        for (service, process) in &stack.processes {
            let log = process.log_text();
            if let Some(at) = log.find("panicked") {
                let from = log[..at].rfind('\n').map_or(0, |i| i + 1);
                let excerpt: String = log[from..].lines().take(5).collect::<Vec<_>>().join("\n");
                failures.push(Failure {
                    service: *service,
                    kind: "panic in the log",
                    case: None,
                    detail: excerpt,
                });
            }
        }
        report(seed, &tallies, elapsed, &failures);
        // Every service is still running (`wait_ready` fails naming one that exited) and
        // ready (given a minute, should Kafka be restarting).
        let mut stack = stack;
        for (_, process) in &mut stack.processes {
            process.wait_ready(Duration::from_secs(90)).await;
        }
        assert!(
            failures.is_empty(),
            "fuzz: {} failures (seed {seed}); see above",
            failures.len()
        );
    })
    .await;
}

/// `PRISM_FUZZ_SEED` (decimal, or hex with `0x`) and `PRISM_FUZZ_CASES`.
fn settings() -> (u64, u64) {
    let seed = match std::env::var("PRISM_FUZZ_SEED") {
        Ok(raw) => {
            let raw = raw.trim();
            let parsed = match raw.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => raw.parse().ok(),
            };
            parsed.unwrap_or_else(|| panic!("PRISM_FUZZ_SEED={raw:?} is not a number"))
        }
        Err(_) => {
            let bytes = uuid::Uuid::new_v4().into_bytes();
            u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default())
        }
    };
    let total = match std::env::var("PRISM_FUZZ_CASES") {
        Ok(raw) => raw
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("PRISM_FUZZ_CASES={raw:?} is not a number")),
        Err(_) => DEFAULT_CASES,
    };
    (seed, total)
}

/// Requests `service` gets at once. prism-command gets one at a time, so that the events
/// the store gains while a case runs are that case's.
fn lanes(service: Service) -> u64 {
    match service {
        Service::Command => 1,
        _ => PROJECTOR_LANES,
    }
}

/// `service`'s share of `total` cases (prism-command gets the remainder).
fn share(service: Service, total: u64) -> u64 {
    let projectors: u64 = Service::ALL
        .iter()
        .filter(|s| **s != Service::Command)
        .map(|s| total * s.share() / 100)
        .sum();
    match service {
        Service::Command => total - projectors,
        _ => total * service.share() / 100,
    }
}

/// The generator of case `number` of `service`: the same for a seed whatever the other
/// services do.
fn case_rng(seed: u64, service: Service, number: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(service as u64);
    rng.set_word_pos(u128::from(number) << 20);
    rng
}

/// Every route a service describes in its `/openapi.json` has a template.
async fn routes_are_covered(stack: &Stack) {
    for service in Service::ALL {
        if service == Service::Dashboard {
            continue;
        }
        let (status, _, text) = stack.process(service).get("/openapi.json").await;
        assert_eq!(status, 200, "{}'s /openapi.json: {text}", service.name());
        let doc: Value = prism_tests::up("the OpenAPI document", serde_json::from_str(&text));
        let mut missing = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                let route = format!("{} {path}", method.to_uppercase());
                if !routes::covered(service).contains(&route.as_str()) {
                    missing.push(route);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{} serves routes the fuzz test has no template for (add them to \
             tests/fuzz/routes.rs): {missing:?}",
            service.name()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Running the cases

/// One service's run.
struct Tally {
    service: Service,
    cases: u64,
    statuses: BTreeMap<u16, u64>,
    /// Oversized bodies the server cut short without an answer we could read.
    cut_short: u64,
    /// Keyed commands sent again.
    replays: u64,
    /// Streams (server-sent events) answered 200 and cut after [`STREAM_READ`].
    streams: u64,
    elapsed: Duration,
    /// The slowest cases: how long, the route, the mutations.
    slowest: Vec<(Duration, &'static str, String)>,
    failures: Vec<Failure>,
}

impl Tally {
    /// Adds another lane's run of the same service.
    fn absorb(&mut self, lane: Tally) {
        self.cases += lane.cases;
        for (status, n) in lane.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.cut_short += lane.cut_short;
        self.replays += lane.replays;
        self.streams += lane.streams;
        self.elapsed = self.elapsed.max(lane.elapsed);
        self.slowest.extend(lane.slowest);
        self.slowest.sort_by_key(|slow| std::cmp::Reverse(slow.0));
        self.slowest.truncate(3);
        self.failures.extend(lane.failures);
    }
}

#[derive(Debug, Clone)]
struct Failure {
    service: Service,
    kind: &'static str,
    /// The case and what it got, when the failure belongs to one.
    case: Option<(Case, String)>,
    detail: String,
}

/// Sends the cases `numbers` of `service` one after the other, checking each.
async fn run(
    service: Service,
    address: String,
    numbers: impl Iterator<Item = u64>,
    seed: u64,
    mut known: Known,
    events: Option<&EventStore>,
) -> Tally {
    let started = Instant::now();
    let mut tally = Tally {
        service,
        cases: 0,
        statuses: BTreeMap::new(),
        cut_short: 0,
        replays: 0,
        streams: 0,
        elapsed: Duration::ZERO,
        slowest: Vec::new(),
        failures: Vec::new(),
    };
    // Commands sent with an idempotency key and answered 2xx or 422, with that answer: now
    // and then one is sent again, byte for byte.
    let mut keyed: Vec<(Case, u16)> = Vec::new();
    for number in numbers {
        let mut rng = case_rng(seed, service, number);
        let replay = match keyed.choose(&mut rng) {
            Some(original) if rng.gen_ratio(1, 25) => Some(original.clone()),
            _ => None,
        };
        let case = match &replay {
            Some((original, _)) => original.replayed_as(number),
            None => mutate::case(service, number, &known, &mut rng),
        };
        let before = match events {
            Some(store) => Some(store.events().await),
            None => None,
        };
        let sent = Instant::now();
        let outcome = wire::exchange(
            &address,
            &case.wire(),
            case.method_is("HEAD"),
            CASE_LIMIT,
            STREAM_READ,
        )
        .await;
        tally
            .slowest
            .push((sent.elapsed(), case.route, case.mutations.join("; ")));
        tally.slowest.sort_by_key(|slow| std::cmp::Reverse(slow.0));
        tally.slowest.truncate(3);
        let stored = match (events, before) {
            (Some(store), Some(before)) => Some(store.events().await - before),
            _ => None,
        };
        tally.cases += 1;
        match &outcome {
            Outcome::Answered(answer) => {
                *tally.statuses.entry(answer.status).or_default() += 1;
                tally.streams += u64::from(answer.streamed);
            }
            Outcome::NoAnswer {
                sent_all: false, ..
            } if case.oversized => tally.cut_short += 1,
            _ => {}
        }
        let mut found = check(&case, &outcome, stored);
        if let Some((_, status)) = replay {
            tally.replays += 1;
            found.extend(check_replay(status, &outcome, stored));
        } else if let Some(status) = keyed_answer(&case, &outcome) {
            remember(&mut keyed, (case.clone(), status), 50);
        }
        // A 5xx while a dependency is down is not the request's fault: say so.
        if found.iter().any(|(kind, _)| *kind == "5xx") && case.route != "GET /readyz" {
            let readiness = readiness(&address).await;
            for (kind, detail) in &mut found {
                if *kind == "5xx" {
                    detail.push_str(&format!("; /readyz right after: {readiness}"));
                }
            }
        }
        for (kind, detail) in found {
            tally.failures.push(Failure {
                service,
                kind,
                case: Some((case.clone(), describe(&outcome))),
                detail,
            });
        }
        learn(&mut known, &case, &outcome);
        if let Outcome::Refused(why) = &outcome {
            eprintln!(
                "{} refused a connection ({why}): stopping its run",
                service.name()
            );
            break;
        }
    }
    tally.elapsed = started.elapsed();
    tally
}

/// What is wrong with `outcome` as the answer to `case`; `stored` is the number of events
/// the event store gained meanwhile (prism-command only).
fn check(case: &Case, outcome: &Outcome, stored: Option<i64>) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    let answer = match outcome {
        Outcome::Answered(answer) => Some(answer),
        Outcome::Refused(why) => {
            found.push(("service gone", format!("connection refused: {why}")));
            None
        }
        // The server may answer an oversized body before it is all sent, and close.
        Outcome::NoAnswer {
            sent_all: false, ..
        } if case.oversized => None,
        Outcome::NoAnswer { why, .. } => {
            found.push(("no answer", why.clone()));
            None
        }
    };
    if let Some(answer) = answer {
        if answer.status >= 500 {
            found.push(("5xx", format!("status {}", answer.status)));
        }
        let refusal = answer.status >= 300 || answer.status == 202;
        if refusal && !case.malformed() {
            if let Err(why) = problem_document(answer, case.method_is("HEAD")) {
                found.push(("not a problem document", why));
            }
        }
    }
    if let Some(stored) = stored {
        let expected = answer.map_or(0, events_named);
        if stored != expected {
            let status = answer.map_or("no answer".to_owned(), |a| a.status.to_string());
            let kind = if expected == 0 && !answer.is_some_and(|a| (200..300).contains(&a.status)) {
                "event stored for a refused request"
            } else {
                "events stored differ from the answer"
            };
            found.push((
                kind,
                format!("{stored} events stored, the answer ({status}) names {expected}"),
            ));
        }
    }
    found
}

/// `/readyz`'s status and body, in short.
async fn readiness(address: &str) -> String {
    let request = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let outcome = wire::exchange(address, request, false, CASE_LIMIT, STREAM_READ).await;
    describe(&outcome).chars().take(300).collect()
}

/// The status of a prism-command answer worth replaying: to a request with a valid
/// idempotency key, accepted (2xx) or refused by the account's rules (422, stored under
/// the key).
fn keyed_answer(case: &Case, outcome: &Outcome) -> Option<u16> {
    let Outcome::Answered(answer) = outcome else {
        return None;
    };
    let key = case.header_value("idempotency-key")?;
    let valid = (1..=255).contains(&key.len()) && key.iter().all(u8::is_ascii_graphic);
    let kept = (200..300).contains(&answer.status) || answer.status == 422;
    let command = case.service == Service::Command && case.method_is("POST");
    (command && valid && kept && !case.malformed()).then_some(answer.status)
}

/// What is wrong with the answer to the same keyed command sent again: it must get the
/// first answer's status, say it is a replay when that was a success, and store nothing.
fn check_replay(first: u16, outcome: &Outcome, stored: Option<i64>) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    if let Outcome::Answered(answer) = outcome {
        if answer.status != first {
            found.push((
                "a replay answered differently",
                format!("first {first}, replay {}", answer.status),
            ));
        }
        if (200..300).contains(&first) && answer.header("idempotent-replayed") != Some("true") {
            found.push((
                "a replay answered differently",
                "no Idempotent-Replayed: true".into(),
            ));
        }
    }
    if stored.is_some_and(|n| n != 0) {
        found.push((
            "a replay stored events",
            format!("{} events stored", stored.unwrap_or_default()),
        ));
    }
    found
}

/// An `application/problem+json` answer whose document has its type, title and status.
fn problem_document(answer: &Answer, head: bool) -> Result<(), String> {
    let media = answer.media_type();
    if media != "application/problem+json" {
        return Err(format!("Content-Type {media:?}"));
    }
    if head {
        return Ok(());
    }
    let doc: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("a problem document that is not JSON: {e}"))?;
    if doc["status"].as_u64() != Some(u64::from(answer.status))
        || !doc["type"].is_string()
        || !doc["title"].is_string()
    {
        return Err(format!("an incomplete problem document: {doc}"));
    }
    Ok(())
}

/// The events a prism-command answer says it stored: its `event_ids`, none for a replay.
fn events_named(answer: &Answer) -> i64 {
    if !(200..300).contains(&answer.status) || answer.header("idempotent-replayed") == Some("true")
    {
        return 0;
    }
    serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["event_ids"].as_array().map(Vec::len))
        .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// Remembers what an answer taught: new accounts and their tokens, payments, idempotency
/// keys, cursors.
fn learn(known: &mut Known, case: &Case, outcome: &Outcome) {
    let Outcome::Answered(answer) = outcome else {
        return;
    };
    if !(200..300).contains(&answer.status) {
        return;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&answer.body) else {
        return;
    };
    if case.service == Service::Command {
        if let Some(key) = case
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"idempotency-key"))
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
        {
            remember(&mut known.idempotency_keys, key, 100);
        }
        let (Some(account), Some(token)) = (
            body["account_id"].as_str(),
            body["consistency_token"].as_str(),
        ) else {
            return;
        };
        match known.accounts.iter_mut().find(|(id, _)| id == account) {
            Some(entry) => entry.1 = token.to_owned(),
            None => remember(
                &mut known.accounts,
                (account.to_owned(), token.to_owned()),
                200,
            ),
        }
        if body["decision"].is_string() {
            if let Some(event) = body["event_ids"][0].as_str() {
                remember(
                    &mut known.payments,
                    (account.to_owned(), event.to_owned()),
                    200,
                );
            }
        }
        return;
    }
    if let (Some(cursor), Part::Shaped(segments), Part::Shaped(query)) =
        (body["next_cursor"].as_str(), &case.path, &case.query)
    {
        let harvested = Harvested {
            route: case.route,
            segments: segments.clone(),
            query: query
                .iter()
                .filter(|(k, _)| k != "cursor")
                .cloned()
                .collect(),
            cursor: cursor.to_owned(),
        };
        remember(&mut known.cursors, harvested, 50);
    }
}

/// Adds `item`, dropping the oldest past `max`.
fn remember<T>(list: &mut Vec<T>, item: T, max: usize) {
    if list.len() >= max {
        list.remove(0);
    }
    list.push(item);
}

// ---------------------------------------------------------------------------------------
// The report

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Answered(answer) => {
            let body = String::from_utf8_lossy(&answer.body);
            let body: String = body.chars().take(600).collect();
            format!(
                "{} {:?} {body}",
                answer.status,
                answer.header("content-type").unwrap_or("(no Content-Type)")
            )
        }
        Outcome::NoAnswer { why, sent_all } => {
            format!("no answer ({why}; request sent in full: {sent_all})")
        }
        Outcome::Refused(why) => format!("connection refused: {why}"),
    }
}

/// The request's bytes as a Rust byte string (at most 1,500 bytes of it shown).
fn shown_bytes(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(1_500)];
    let mut text = format!("b\"{}\"", shown.escape_ascii());
    if bytes.len() > shown.len() {
        text.push_str(&format!(" … ({} bytes in all)", bytes.len()));
    }
    text
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn report(seed: u64, tallies: &[Tally], elapsed: Duration, failures: &[Failure]) {
    let total: u64 = tallies.iter().map(|t| t.cases).sum();
    let each: Vec<String> = tallies
        .iter()
        .map(|t| format!("{} {}", t.service.name(), thousands(t.cases)))
        .collect();
    eprintln!(
        "\nfuzz: {} cases in {:.0} s (seed {seed}): {}",
        thousands(total),
        elapsed.as_secs_f64(),
        each.join(", ")
    );
    for tally in tallies {
        let statuses: Vec<String> = tally
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}×{n}"))
            .collect();
        let mut notes = Vec::new();
        if tally.cut_short > 0 {
            notes.push(format!("{} oversized bodies cut short", tally.cut_short));
        }
        if tally.streams > 0 {
            notes.push(format!("{} event streams read", tally.streams));
        }
        if tally.replays > 0 {
            notes.push(format!("{} keyed commands replayed", tally.replays));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        eprintln!(
            "  {:<16} {:>7} cases in {:>5.1} s: {}{notes}; {} failures",
            tally.service.name(),
            thousands(tally.cases),
            tally.elapsed.as_secs_f64(),
            statuses.join(" "),
            tally.failures.len()
        );
        for (took, route, mutations) in &tally.slowest {
            eprintln!(
                "      slowest: {:.1} s {route} ({mutations})",
                took.as_secs_f64()
            );
        }
    }
    if failures.is_empty() {
        return;
    }
    // One example of each kind of failure per service, route and status.
    let mut groups: BTreeMap<(Service, &str, &str, String), (u64, &Failure)> = BTreeMap::new();
    for failure in failures {
        let (route, status) = match &failure.case {
            Some((case, got)) => (case.route, got.split(' ').next().unwrap_or("").to_owned()),
            None => ("", String::new()),
        };
        groups
            .entry((failure.service, failure.kind, route, status))
            .or_insert((0, failure))
            .0 += 1;
    }
    eprintln!(
        "\nfuzz: {} failures in {} groups; one example of each:",
        failures.len(),
        groups.len()
    );
    for ((service, kind, route, _), (count, failure)) in groups.iter().take(SHOWN) {
        eprintln!("\n- {} {kind} ×{count}: {}", service.name(), failure.detail);
        if let Some((case, got)) = &failure.case {
            eprintln!("  case {} of {route}", case.number);
            eprintln!("  mutations: {}", case.mutations.join("; "));
            eprintln!("  sent: {}", shown_bytes(&case.wire()));
            eprintln!("  got: {got}");
        }
    }
    if groups.len() > SHOWN {
        eprintln!("\n… and {} more groups", groups.len() - SHOWN);
    }
    let kafka_away = failures.iter().any(|f| {
        f.case
            .as_ref()
            .is_some_and(|(case, got)| case.route == "GET /readyz" && got.contains("Kafka"))
    });
    if kafka_away {
        eprintln!(
            "\nfuzz: Kafka was away during the run (restarted?): the projectors' /readyz said \
             so. Run again once it is back."
        );
    }
}

// ---------------------------------------------------------------------------------------
// The checks themselves

/// A plain `POST /v1/accounts/{id}/deposits` case (`target` as sent).
fn deposit_case(target: &[u8]) -> Case {
    Case {
        service: Service::Command,
        number: 0,
        route: "POST /v1/accounts/{id}/deposits",
        method: b"POST".to_vec(),
        path: Part::Raw(target.to_vec()),
        query: Part::Shaped(Vec::new()),
        headers: Vec::new(),
        body: mutate::Body::Raw(b"{\"amount_minor\":1}".to_vec()),
        splices: Vec::new(),
        chunked: false,
        mutations: Vec::new(),
        protocol: false,
        oversized: false,
        params: Vec::new(),
    }
}

fn answer(status: u16, content_type: &str, body: &str, replayed: bool) -> Outcome {
    let mut headers = vec![("content-type".to_owned(), content_type.to_owned())];
    if replayed {
        headers.push(("idempotent-replayed".to_owned(), "true".to_owned()));
    }
    Outcome::Answered(Answer {
        status,
        headers,
        body: body.as_bytes().to_vec(),
        streamed: false,
    })
}

fn kinds(found: &[(&'static str, String)]) -> Vec<&'static str> {
    found.iter().map(|(kind, _)| *kind).collect()
}

#[test]
fn the_checks_catch_stored_events_server_errors_and_bare_refusals() {
    let case = deposit_case(b"/v1/accounts/01a22632-9030-7356-995b-16759090e246/deposits");
    let refused = answer(
        422,
        "application/problem+json",
        r#"{"type":"https://prism.dev/problems/account_closed","title":"x","status":422}"#,
        false,
    );
    assert!(check(&case, &refused, Some(0)).is_empty());
    assert_eq!(
        kinds(&check(&case, &refused, Some(1))),
        ["event stored for a refused request"]
    );
    let accepted = answer(200, "application/json", r#"{"event_ids":["a"]}"#, false);
    assert!(check(&case, &accepted, Some(1)).is_empty());
    assert_eq!(
        kinds(&check(&case, &accepted, Some(2))),
        ["events stored differ from the answer"]
    );
    let replayed = answer(200, "application/json", r#"{"event_ids":["a"]}"#, true);
    assert!(check(&case, &replayed, Some(0)).is_empty());
    assert_eq!(
        kinds(&check_replay(200, &replayed, Some(1))),
        ["a replay stored events"]
    );
    assert_eq!(
        kinds(&check_replay(200, &accepted, Some(0))),
        ["a replay answered differently"]
    );
    let failed = answer(
        503,
        "application/problem+json",
        r#"{"type":"t","title":"x","status":503}"#,
        false,
    );
    assert_eq!(kinds(&check(&case, &failed, Some(0))), ["5xx"]);
    let bare = answer(400, "text/plain", "Invalid URL", false);
    assert_eq!(
        kinds(&check(&case, &bare, Some(0))),
        ["not a problem document"]
    );
    // The HTTP server refuses a target no URI may hold before any route: no document.
    let malformed = deposit_case(b"/v1/accounts/\xff/deposits");
    assert!(check(&malformed, &bare, Some(0)).is_empty());
    let gone = Outcome::NoAnswer {
        why: "reset".into(),
        sent_all: true,
    };
    assert_eq!(kinds(&check(&case, &gone, Some(0))), ["no answer"]);
}
