//! `prismctl verify <model>` for every read model that offers the kit's
//! [`Verify`](prism_projector::verify::Verify): the live copy as stored against what the
//! projector's own fold makes of the whole event store, document by document.
//!
//! The model is read first, then the store: the projector only applies stored events, so
//! the model can only be behind the store, never ahead. With `--allow-behind` each
//! account's events are cut at the version the model holds (an account the model does not
//! hold yet is skipped): what the model holds must then equal the store at that version.
//! Without it, an account that is merely behind is drift (`--wait` re-checks until clean).
//!
//! (`verify ledger` has its own, independent fold with per-line diagnostics: see
//! `verify.rs`.)

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use prism_events::Envelope;
use prism_platform::Config;
use prism_projector::verify::{compare, Difference, Verify};
use serde::Serialize;
use uuid::Uuid;

use crate::verify::Options;

/// Differences listed in a report (all are counted).
const LISTED: usize = 50;

/// What a verification found.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub model: String,
    /// No difference.
    pub ok: bool,
    pub events: u64,
    pub documents_expected: usize,
    pub documents_stored: usize,
    /// Accounts the model holds at an older version than the store (compared at the
    /// model's version with `--allow-behind`).
    pub behind: usize,
    pub difference_count: usize,
    /// The first differences, by key.
    pub differences: Vec<Difference>,
    pub attempts: u32,
    pub elapsed_ms: u64,
}

/// Verifies `verifier`'s live model, re-checking until clean or `options.wait` passed.
pub async fn verify_model(
    config: &Config,
    model: &str,
    verifier: &dyn Verify,
    options: &Options,
) -> anyhow::Result<ModelReport> {
    let started = Instant::now();
    let store = prism_command::app::open_store(config)
        .await
        .context("opening the event store")?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let stored = verifier
            .stored()
            .await
            .with_context(|| format!("reading the {model} read model"))?;
        let mut events: Vec<Envelope> = Vec::new();
        let bar = crate::verify::progress_bar(options.progress);
        let mut scan = store.scan(options.page_size.max(1));
        while let Some(page) = scan.next().await {
            let page =
                page.with_context(|| format!("reading the {} event store", store.backend()))?;
            events.extend(page);
            bar.set_position(events.len() as u64);
        }
        drop(scan);
        bar.finish_and_clear();
        let total = events.len() as u64;
        // Per account in version order, whatever order the store's pages had.
        events.sort_by(|a, b| {
            (a.account_id.0, a.account_version).cmp(&(b.account_id.0, b.account_version))
        });
        let last: HashMap<Uuid, u64> = events
            .iter()
            .map(|e| (e.account_id.0, e.account_version))
            .collect();
        let behind = stored
            .versions
            .iter()
            .filter(|(id, v)| last.get(*id).is_some_and(|l| l > v))
            .count();
        if options.allow_behind {
            events.retain(|e| {
                stored
                    .versions
                    .get(&e.account_id.0)
                    .is_some_and(|v| e.account_version <= *v)
            });
        }
        let expected = verifier
            .settle(verifier.expected(events))
            .await
            .with_context(|| format!("computing the expected {model} read model"))?;
        let differences = compare(&expected, &stored.documents);
        let report = ModelReport {
            model: model.to_owned(),
            ok: differences.is_empty(),
            events: total,
            documents_expected: expected.len(),
            documents_stored: stored.documents.len(),
            behind,
            difference_count: differences.len(),
            differences: differences.into_iter().take(LISTED).collect(),
            attempts,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        if report.ok || started.elapsed() + Duration::from_secs(1) > options.wait {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The report as text.
pub fn print_text(out: &mut impl Write, r: &ModelReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{}: {} ({} events in the store; {} documents expected, {} stored; {} accounts behind)",
        r.model,
        if r.ok { "identical" } else { "DRIFT" },
        r.events,
        r.documents_expected,
        r.documents_stored,
        r.behind
    )?;
    for d in &r.differences {
        let what = match (&d.expected, &d.actual) {
            (Some(_), None) => "missing".to_owned(),
            (None, Some(_)) => "not in the event store".to_owned(),
            _ => format!("differs in {}", d.fields().join(", ")),
        };
        writeln!(out, "  {}: {what}", d.key)?;
    }
    if r.difference_count > r.differences.len() {
        writeln!(
            out,
            "  … and {} more",
            r.difference_count - r.differences.len()
        )?;
    }
    Ok(())
}
