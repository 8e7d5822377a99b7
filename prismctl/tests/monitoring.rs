//! The monitoring contract: every Grafana dashboard under `dashboards/grafana/dashboards`
//! and every alerting or recording rule under `dashboards/alerts` (when that directory
//! exists) uses only metric names that the Prism services really export.
//!
//! - [`dashboards_are_valid_grafana_json`]: each dashboard parses, has a `panels` array,
//!   every panel has a `gridPos`, every target an `expr`, every datasource the provisioned
//!   one.
//! - [`dashboards_and_rules_use_only_exported_metrics`]: starts `prism-command`,
//!   `prism-ledger`, `prism-search`, `prism-dashboard` and `prism-fraud` as child processes
//!   against the local stack (a topic, consumer groups, event-store schema, databases,
//!   indices and Redis keys of their own), sends a seeded load through the command service,
//!   waits until every projector applied events, scrapes every `/metrics` and fails naming
//!   each metric a dashboard or rule uses that no running service exports.
//!
//! Build the services first: `cargo build -p prism-command -p prism-ledger -p prism-search
//! -p prism-dashboard -p prism-fraud --bins` (`cargo test --workspace` builds them too).

#[allow(dead_code)]
#[path = "e2e/mod.rs"]
mod e2e;
#[allow(dead_code)]
#[path = "e2e/projector.rs"]
mod projector;
#[path = "e2e/world.rs"]
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_tests::{repo_root, up};
use serde_json::Value;

use crate::e2e::TOKEN;
use crate::projector::ProjectorProcess;

/// Series Prometheus itself makes for every scrape target or rule, exported by no service.
const PROMETHEUS_SERIES: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
    "ALERTS",
    "ALERTS_FOR_STATE",
];

/// Series a projector exports only once something went wrong (a failed sink write, a
/// version gap, a held partition, a partition paused by backpressure): a healthy run never
/// shows them, so they are checked against the projector runtime's own metrics, fed each
/// of these once.
const FAULT_ONLY: &[&str] = &[
    "prism_projector_sink_errors_total",
    "prism_projector_version_gaps_total",
    "prism_projector_partition_held",
    "prism_projector_paused_partitions",
];

/// PromQL aggregation operators and functions (a name followed by `(` is one of them too).
const FUNCTIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "double_exponential_smoothing",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sort_by_label",
    "sort_by_label_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
    "mad_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "cos",
    "cosh",
    "sin",
    "sinh",
    "tan",
    "tanh",
    "deg",
    "rad",
    "pi",
    "start",
    "end",
];

/// Keywords followed by a parenthesized list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The other PromQL keywords that are not series (besides [`LABEL_LISTS`]).
const KEYWORDS: &[&str] = &[
    "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan", "Inf", "NaN",
];

// ---------------------------------------------------------------------------------------
// PromQL: the metric names of an expression

/// The metric names `expr` selects: identifiers outside label matchers, range brackets and
/// strings that are neither functions, keywords, label lists nor Grafana variables
/// (`$projector`, `$__rate_interval`), plus the names of `{__name__="…"}` matchers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '#' => {
                // A comment runs to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '{' => {
                let end = matching(&chars, i, '{', '}');
                if let Some(name) = name_matcher(&chars[i + 1..end.saturating_sub(1).max(i + 1)]) {
                    names.insert(name);
                }
                i = end;
            }
            '[' => i = matching(&chars, i, '[', ']'),
            '$' => {
                // A Grafana variable: `$name` or `${name}`.
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = matching(&chars, i, '{', '}');
                } else {
                    while i < chars.len() && is_ident_char(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations: 0.99, 1e3, 0x1f, 5m.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                let ident: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&ident.as_str()) && called {
                    i = matching(&chars, next, '(', ')');
                } else if called
                    || FUNCTIONS.contains(&ident.as_str())
                    || KEYWORDS.contains(&ident.as_str())
                    || LABEL_LISTS.contains(&ident.as_str())
                {
                    // A function, an aggregation or a keyword.
                } else {
                    names.insert(ident);
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index after the string that starts at `start` (backslash escapes, except in
/// backquoted strings).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

/// The index after the `close` matching the `open` at `start`, strings skipped.
fn matching(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// The name of a `__name__="…"` matcher among `matchers` (the inside of `{…}`).
fn name_matcher(matchers: &[char]) -> Option<String> {
    let text: String = matchers.iter().collect();
    let rest = text.split("__name__").nth(1)?.trim_start();
    let rest = rest.strip_prefix('=')?.trim_start();
    let quote = rest.chars().next().filter(|q| *q == '"' || *q == '\'')?;
    let value: String = rest[1..].chars().take_while(|c| *c != quote).collect();
    Some(value).filter(|v| !v.is_empty())
}

/// The metric a Grafana variable query reads: `label_values(metric, label)` names one
/// (with one argument it names only a label), `query_result(expr)` an expression.
fn variable_metric_names(query: &str) -> BTreeSet<String> {
    let query = query.trim();
    if let Some(args) = query
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(')'))
    {
        return match args.rsplit_once(',') {
            Some((selector, _label)) => metric_names(selector),
            None => BTreeSet::new(),
        };
    }
    if let Some(expr) = query
        .strip_prefix("query_result(")
        .and_then(|a| a.strip_suffix(')'))
    {
        return metric_names(expr);
    }
    BTreeSet::new()
}

// ---------------------------------------------------------------------------------------
// The dashboards and the rules

/// One place that uses metrics: a dashboard panel's target, a variable or a rule.
#[derive(Debug)]
struct Use {
    /// `command.json: "Commands per second by outcome" A`, `alerts/prism.yml: expr #3`.
    place: String,
    names: BTreeSet<String>,
}

fn dashboards_dir() -> PathBuf {
    repo_root().join("dashboards/grafana/dashboards")
}

fn files_with(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| extensions.contains(&e))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The datasource uid the provisioning file declares.
fn provisioned_datasource_uid() -> String {
    let path = repo_root().join("dashboards/grafana/provisioning/datasources/prometheus.yml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    let uid = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid:"))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_owned());
    match uid {
        Some(uid) if !uid.is_empty() => uid,
        _ => panic!("{} declares no datasource uid", path.display()),
    }
}

/// A datasource other than the provisioned one (`uid`); variables (`$ds`) pass.
fn datasource_problem(place: &str, value: Option<&Value>, uid: &str) -> Option<String> {
    let used = value.and_then(|d| d.get("uid")).and_then(Value::as_str)?;
    (used != uid && !used.starts_with('$'))
        .then(|| format!("{place}: datasource uid {used:?}, the provisioned one is {uid:?}"))
}

/// Every panel of `panels`, those inside collapsed rows included.
fn all_panels(panels: &[Value]) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in panels {
        all.push(panel);
        if let Some(inner) = panel.get("panels").and_then(Value::as_array) {
            all.extend(all_panels(inner));
        }
    }
    all
}

/// Checks every dashboard (panicking with every problem found) and answers its uses.
fn dashboard_uses() -> Vec<Use> {
    let files = files_with(&dashboards_dir(), &["json"]);
    assert!(
        !files.is_empty(),
        "no dashboard under {}",
        dashboards_dir().display()
    );
    let datasource = provisioned_datasource_uid();
    let mut problems = Vec::new();
    let mut uses = Vec::new();
    let mut uids = BTreeSet::new();
    for path in &files {
        let file = file_name(path);
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => panic!("reading {}: {e}", path.display()),
        };
        let dashboard: Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(e) => {
                problems.push(format!("{file}: not valid JSON: {e}"));
                continue;
            }
        };
        match dashboard.get("uid").and_then(Value::as_str) {
            Some(uid) if !uid.is_empty() => {
                if !uids.insert(uid.to_owned()) {
                    problems.push(format!("{file}: uid {uid:?} is used by another dashboard"));
                }
            }
            _ => problems.push(format!("{file}: no uid")),
        }
        if dashboard.get("title").and_then(Value::as_str).is_none() {
            problems.push(format!("{file}: no title"));
        }
        if dashboard
            .get("schemaVersion")
            .and_then(Value::as_u64)
            .is_none()
        {
            problems.push(format!("{file}: no schemaVersion"));
        }
        let Some(panels) = dashboard.get("panels").and_then(Value::as_array) else {
            problems.push(format!("{file}: no panels array"));
            continue;
        };
        if panels.is_empty() {
            problems.push(format!("{file}: the panels array is empty"));
        }
        let mut ids = BTreeSet::new();
        let mut targets_seen = 0;
        for panel in all_panels(panels) {
            let title = panel.get("title").and_then(Value::as_str).unwrap_or("");
            let place = format!("{file}: panel {title:?}");
            match panel.get("id").and_then(Value::as_u64) {
                Some(id) if ids.insert(id) => {}
                Some(id) => problems.push(format!("{place}: id {id} is used twice")),
                None => problems.push(format!("{place}: no id")),
            }
            let grid = panel.get("gridPos");
            if ["h", "w", "x", "y"].iter().any(|k| {
                grid.and_then(|g| g.get(k))
                    .and_then(Value::as_u64)
                    .is_none()
            }) {
                problems.push(format!("{place}: no gridPos with h, w, x and y"));
            }
            problems.extend(datasource_problem(
                &place,
                panel.get("datasource"),
                &datasource,
            ));
            let kind = panel.get("type").and_then(Value::as_str).unwrap_or("");
            let targets = panel.get("targets").and_then(Value::as_array);
            if kind == "row" || kind == "text" {
                continue;
            }
            let Some(targets) = targets.filter(|t| !t.is_empty()) else {
                problems.push(format!("{place}: no targets"));
                continue;
            };
            for target in targets {
                let reference = target.get("refId").and_then(Value::as_str).unwrap_or("?");
                let place = format!("{place} {reference}");
                problems.extend(datasource_problem(
                    &place,
                    target.get("datasource"),
                    &datasource,
                ));
                match target.get("expr").and_then(Value::as_str) {
                    Some(expr) if !expr.trim().is_empty() => {
                        targets_seen += 1;
                        let names = metric_names(expr);
                        if names.is_empty() {
                            problems.push(format!("{place}: {expr:?} selects no metric"));
                        }
                        uses.push(Use { place, names });
                    }
                    _ => problems.push(format!("{place}: no expr")),
                }
            }
        }
        if targets_seen == 0 {
            problems.push(format!("{file}: no target with an expr"));
        }
        let variables = dashboard
            .pointer("/templating/list")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for variable in &variables {
            let name = variable.get("name").and_then(Value::as_str).unwrap_or("?");
            let place = format!("{file}: variable {name:?}");
            problems.extend(datasource_problem(
                &place,
                variable.get("datasource"),
                &datasource,
            ));
            if variable.get("type").and_then(Value::as_str) != Some("query") {
                continue;
            }
            let query = match variable.get("query") {
                Some(Value::String(q)) => q.clone(),
                Some(q) => q
                    .get("query")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                None => String::new(),
            };
            uses.push(Use {
                place,
                names: variable_metric_names(&query),
            });
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboards are not valid Grafana dashboards:\n  {}",
        problems.join("\n  ")
    );
    uses
}

/// The `expr:` values of a Prometheus rules file (plain, quoted or block scalars) and the
/// names its `record:` rules define.
fn rule_exprs(text: &str) -> (Vec<String>, BTreeSet<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    let mut records = BTreeSet::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let key_line = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let indent = line.len() - key_line.len();
        i += 1;
        if let Some(value) = key_line.strip_prefix("record:") {
            records.insert(unquote(value.trim()));
            continue;
        }
        let Some(value) = key_line.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        // Lines indented deeper than the key continue its value.
        let mut continuation = Vec::new();
        while i < lines.len()
            && (lines[i].trim().is_empty() || lines[i].len() - lines[i].trim_start().len() > indent)
        {
            continuation.push(lines[i].trim());
            i += 1;
        }
        let expr = if value.starts_with('|') || value.starts_with('>') {
            continuation.join("\n")
        } else {
            unquote(
                &std::iter::once(value)
                    .chain(continuation)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        };
        exprs.push(expr);
    }
    (exprs, records)
}

/// A YAML scalar without its quotes (and a trailing comment of a plain one).
fn unquote(value: &str) -> String {
    let value = value.trim();
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        return inner.replace("\\\"", "\"").replace("\\\\", "\\");
    }
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.replace("''", "'");
    }
    match value.split_once(" #") {
        Some((plain, _comment)) => plain.trim().to_owned(),
        None => value.to_owned(),
    }
}

/// The uses of every rules file under `dashboards/alerts` (none while it does not exist),
/// and the names their recording rules define.
fn rule_uses() -> (Vec<Use>, BTreeSet<String>) {
    let dir = repo_root().join("dashboards/alerts");
    let mut uses = Vec::new();
    let mut records = BTreeSet::new();
    for path in files_with(&dir, &["yml", "yaml"]) {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => panic!("reading {}: {e}", path.display()),
        };
        // Rules files only (a top-level `groups:`); promtool's rule tests check them.
        if !text.lines().any(|l| l.starts_with("groups:")) {
            continue;
        }
        let (exprs, defined) = rule_exprs(&text);
        records.extend(defined);
        for (n, expr) in exprs.iter().enumerate() {
            uses.push(Use {
                place: format!("alerts/{}: expr #{}", file_name(&path), n + 1),
                names: metric_names(expr),
            });
        }
    }
    (uses, records)
}

// ---------------------------------------------------------------------------------------
// What the services export

/// The metric families of a Prometheus text exposition: name → type (`untyped` for samples
/// without a `# TYPE` line).
fn exposition_families(text: &str) -> BTreeMap<String, String> {
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                families.insert(name.to_owned(), kind.to_owned());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name: String = line
                .chars()
                .take_while(|c| *c != '{' && !c.is_whitespace())
                .collect();
            families.entry(name).or_insert_with(|| "untyped".to_owned());
        }
    }
    families
}

/// `name` as exported by `families`: itself, or the histogram or summary family of its
/// `_bucket`, `_sum` or `_count` series.
fn exported_family(name: &str, families: &BTreeMap<String, String>) -> Option<String> {
    let family = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let family = name.strip_suffix(suffix)?;
        let kind = families.get(family)?;
        (kind == "histogram" || (kind == "summary" && *suffix != "_bucket"))
            .then(|| family.to_owned())
    });
    family.or_else(|| families.contains_key(name).then(|| name.to_owned()))
}

/// The families the projector runtime exports once each fault happened (see
/// [`FAULT_ONLY`]), from its own metrics type.
fn fault_families() -> BTreeMap<String, String> {
    let registry = prometheus::Registry::new();
    let metrics = up(
        "the projector runtime's metrics",
        prism_projector::Metrics::new(&registry, "probe"),
    );
    metrics.sink_error("transient");
    metrics.gap();
    metrics.held(0, true);
    metrics.paused(1);
    let mut buffer = Vec::new();
    up(
        "the text encoder",
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buffer,
        ),
    );
    exposition_families(&String::from_utf8_lossy(&buffer))
}

// ---------------------------------------------------------------------------------------
// The services

/// The five services, each a child process with a port of its own.
struct Services {
    processes: Vec<ProjectorProcess>,
}

/// Each service: binary, listen variable, `/metrics` must show (after the load).
const SERVICES: &[(&str, &str, &[&str])] = &[
    (
        "prism-command",
        "PRISM_COMMAND__LISTEN",
        &[
            "prism_command_duration_seconds_count",
            "prism_http_requests_total",
        ],
    ),
    (
        "prism-ledger",
        "PRISM_LEDGER__LISTEN",
        &[
            "prism_projector_events_total",
            "prism_projector_batch_duration_seconds_count",
        ],
    ),
    (
        "prism-search",
        "PRISM_SEARCH__LISTEN",
        &[
            "prism_projector_events_total",
            "prism_projector_batch_duration_seconds_count",
        ],
    ),
    (
        "prism-dashboard",
        "PRISM_DASHBOARD__LISTEN",
        &[
            "prism_projector_events_total",
            "prism_projector_batch_duration_seconds_count",
        ],
    ),
    (
        "prism-fraud",
        "PRISM_FRAUD__LISTEN",
        &[
            "prism_projector_events_total",
            "prism_projector_batch_duration_seconds_count",
        ],
    ),
];

impl Services {
    async fn start(env: &Env) -> Services {
        let mut processes = Vec::new();
        for (name, listen_var, _) in SERVICES {
            processes.push(ProjectorProcess::start(name, listen_var, &env.profile));
        }
        for process in &mut processes {
            process.wait_ready(Duration::from_secs(90)).await;
        }
        Services { processes }
    }

    fn command_url(&self) -> &str {
        &self.processes[0].url
    }

    /// Every service's `/metrics`, once each shows the series it must show after the load
    /// (within `limit`).
    async fn scrape_when_settled(&self, limit: Duration) -> Vec<(&'static str, String)> {
        let deadline = Instant::now() + limit;
        loop {
            let mut scrapes = Vec::new();
            let mut waiting = Vec::new();
            for (process, (name, _, wanted)) in self.processes.iter().zip(SERVICES) {
                let (status, _, text) = process.get("/metrics").await;
                assert_eq!(status, 200, "{name}'s /metrics answered {status}: {text}");
                let missing: Vec<&str> = wanted
                    .iter()
                    .filter(|w| !text.lines().any(|l| l.starts_with(**w)))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    waiting.push(format!("{name}: {}", missing.join(", ")));
                }
                scrapes.push((*name, text));
            }
            if waiting.is_empty() {
                return scrapes;
            }
            assert!(
                Instant::now() < deadline,
                "the services did not export their series within {limit:?}: {}\nlogs:\n{}",
                waiting.join("; "),
                self.processes
                    .iter()
                    .map(|p| p.log_tail())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// One run's names (every service's, dropped at the end).
use crate::world::World as Env;

/// Runs `body` in an [`Env`] of its own and cleans up whether it passed or not.
async fn isolated<F, Fut>(body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()>,
{
    prism_tests::run_then_clean_up(
        Arc::new(Env::new("mon", 3, |_| String::new())),
        body,
        |env| async move {
            env.clean_up().await;
        },
    )
    .await;
}

/// A few requests to each service's API besides the load, so that their labelled series
/// (statuses, routes) appear.
async fn side_traffic(services: &Services) {
    let http = up("reqwest", reqwest::Client::builder().build());
    let command = services.command_url();
    // Refused: no token (401) and an invalid body (400).
    let _ = http
        .post(format!("{command}/v1/accounts"))
        .json(&serde_json::json!({}))
        .send()
        .await;
    let _ = http
        .post(format!("{command}/v1/accounts"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({}))
        .send()
        .await;
    for process in &services.processes {
        let _ = process.get("/healthz").await;
        let _ = process.get("/readyz").await;
    }
}

// ---------------------------------------------------------------------------------------
// The tests

#[test]
fn the_tokenizer_finds_metrics_and_skips_functions_labels_and_variables() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (projector, le) \
             (rate(prism_projector_batch_duration_seconds_bucket{projector=~\"$projector\"}[$__rate_interval])))"
        ),
        ["prism_projector_batch_duration_seconds_bucket"]
    );
    assert_eq!(
        names("sum(rate(a_total{x=\"y{z}\"}[5m])) / ignoring(kind) group_left(job) b_count > 0"),
        ["a_total", "b_count"]
    );
    assert_eq!(names("up == 0"), ["up"]);
    assert_eq!(names("sum(up) without (instance)"), ["up"]);
    assert_eq!(
        names("max_over_time(foo[10m:1m]) offset 5m and on (job) bar"),
        ["bar", "foo"]
    );
    assert_eq!(names("{__name__=\"baz_total\", job=\"x\"}"), ["baz_total"]);
    assert_eq!(
        names("time() - process_start_time_seconds"),
        ["process_start_time_seconds"]
    );
    assert_eq!(
        names("label_replace(x, \"dst\", \"$1\", \"src\", \"(.*)\")"),
        ["x"]
    );
    assert_eq!(
        variable_metric_names("label_values(prism_projector_assigned_partitions, projector)")
            .into_iter()
            .collect::<Vec<_>>(),
        ["prism_projector_assigned_partitions"]
    );
    assert!(variable_metric_names("label_values(projector)").is_empty());

    let families = exposition_families(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n# TYPE c_total counter\nc_total 3\n",
    );
    assert_eq!(exported_family("h_bucket", &families).as_deref(), Some("h"));
    assert_eq!(exported_family("h_count", &families).as_deref(), Some("h"));
    assert_eq!(
        exported_family("c_total", &families).as_deref(),
        Some("c_total")
    );
    assert_eq!(exported_family("c_total_count", &families), None);
    assert_eq!(exported_family("missing", &families), None);
}

#[test]
fn rule_files_give_their_exprs_in_every_yaml_form() {
    let (exprs, records) = rule_exprs(
        r#"groups:
  - name: prism
    rules:
      - record: job:prism_http_requests:rate5m
        expr: sum by (job) (rate(prism_http_requests_total[5m]))
      - alert: Down
        expr: up == 0 # a comment
        for: 1m
      - alert: Quoted
        expr: "prism_relay_backlog_age_seconds > 60"
      - alert: Block
        expr: |
          sum(rate(prism_projector_events_total{outcome="dead_lettered"}[5m]))
            > 0
        labels:
          severity: page
"#,
    );
    assert_eq!(
        exprs,
        [
            "sum by (job) (rate(prism_http_requests_total[5m]))",
            "up == 0",
            "prism_relay_backlog_age_seconds > 60",
            "sum(rate(prism_projector_events_total{outcome=\"dead_lettered\"}[5m]))\n> 0",
        ]
    );
    assert_eq!(
        records.into_iter().collect::<Vec<_>>(),
        ["job:prism_http_requests:rate5m"]
    );
}

#[test]
fn dashboards_are_valid_grafana_json() {
    let uses = dashboard_uses();
    assert!(!uses.is_empty());
    for file in ["command.json", "projectors.json", "stack.json"] {
        assert!(
            uses.iter().any(|u| u.place.starts_with(file)),
            "{file} has no target"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_and_rules_use_only_exported_metrics() {
    let mut uses = dashboard_uses();
    let (rules, records) = rule_uses();
    eprintln!(
        "{} dashboard uses, {} rule expressions",
        uses.len(),
        rules.len()
    );
    uses.extend(rules);

    isolated(|env| async move {
        let services = Services::start(&env).await;
        let load = crate::projector::Load::start(services.command_url(), (20_261_129, 24, 300));
        side_traffic(&services).await;
        let stored = load.finish().await;
        assert!(stored > 0, "the load stored no command");
        let scrapes = services.scrape_when_settled(Duration::from_secs(120)).await;

        // name → the services exporting it.
        let mut exported: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        let mut families_of: Vec<(&str, BTreeMap<String, String>)> = Vec::new();
        for (service, text) in &scrapes {
            families_of.push((service, exposition_families(text)));
        }
        let faults = fault_families();

        let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for use_ in &uses {
            for name in &use_.names {
                if PROMETHEUS_SERIES.contains(&name.as_str()) || records.contains(name) {
                    exported
                        .entry(name.clone())
                        .or_default()
                        .insert(if records.contains(name) {
                            "a recording rule"
                        } else {
                            "Prometheus"
                        });
                    continue;
                }
                let mut found = None;
                for (service, families) in &families_of {
                    if let Some(family) = exported_family(name, families) {
                        exported.entry(family.clone()).or_default().insert(service);
                        found = Some(family);
                    }
                }
                if found.is_none() && FAULT_ONLY.contains(&name.as_str()) {
                    if let Some(family) = exported_family(name, &faults) {
                        exported
                            .entry(family)
                            .or_default()
                            .insert("the projector runtime, after a fault");
                        found = Some(name.clone());
                    }
                }
                if found.is_none() {
                    missing
                        .entry(name.clone())
                        .or_default()
                        .push(use_.place.clone());
                }
            }
        }

        eprintln!("metric names checked ({}):", exported.len() + missing.len());
        for (name, by) in &exported {
            let by: Vec<&str> = by.iter().copied().collect();
            eprintln!("  ok       {name}  ({})", by.join(", "));
        }
        for name in missing.keys() {
            eprintln!("  MISSING  {name}");
        }
        assert!(
            missing.is_empty(),
            "metrics used by a dashboard or rule that no running service exports:\n{}",
            missing
                .iter()
                .map(|(name, places)| format!("  {name}: {}", places.join("; ")))
                .collect::<Vec<_>>()
                .join("\n")
        );
    })
    .await;
}
