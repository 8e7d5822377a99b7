//! The end of the run: every guarantee checked against the event store (the topic, the
//! success answers, dead letters, `verify` of every read model), and the processes'
//! memory and logs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_platform::Config;
use tokio::sync::Mutex;

use super::fleet::{self, Fleet};
use super::{audit, load, plan, Chaos, Check};
use crate::models::Model;

impl Chaos {
    /// The end-of-run checks against the event store.
    pub(super) async fn final_checks(&self, seen: &load::Seen, checks: &mut Vec<Check>) {
        let config = &self.config;
        // The relay may still be publishing what the last faults held back.
        let deadline = Instant::now() + Duration::from_secs(180);
        let (store, topic) = loop {
            let store = audit::read_store(config).await;
            let topic = match &store {
                Ok(store) => Some(audit::audit_topic(config, store).await),
                Err(_) => None,
            };
            let settled = matches!(&topic, Some(Ok(t)) if t.ok());
            if settled || Instant::now() >= deadline {
                break (store, topic);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let store = match store {
            Ok(store) => store,
            Err(e) => {
                checks.push(Check {
                    check: "event store read".into(),
                    ok: false,
                    detail: format!("{e:#}"),
                });
                return;
            }
        };
        checks.push(match topic {
            Some(Ok(audit)) => Check {
                check: "kafka holds every stored event, in order, no gap".into(),
                ok: audit.ok(),
                detail: format!(
                    "{} events stored, {} records ({} duplicates), {} gaps, {} missing, {} undecodable{}",
                    store.events,
                    audit.records,
                    audit.duplicates,
                    audit.gaps.len(),
                    audit.missing.len(),
                    audit.undecodable,
                    audit
                        .gaps
                        .iter()
                        .chain(&audit.missing)
                        .next()
                        .map(|first| format!("; first: {first}"))
                        .unwrap_or_default()
                ),
            },
            Some(Err(e)) => Check {
                check: "kafka holds every stored event, in order, no gap".into(),
                ok: false,
                detail: format!("{e:#}"),
            },
            None => unreachable_check(),
        });
        let lost: Vec<&uuid::Uuid> = seen
            .succeeded
            .iter()
            .filter(|id| !store.ids.contains(id))
            .collect();
        checks.push(Check {
            check: "every success answer stored".into(),
            ok: lost.is_empty() && !seen.succeeded.is_empty(),
            detail: format!(
                "{} success answers, {} not in the store{}",
                seen.succeeded.len(),
                lost.len(),
                lost.first()
                    .map(|id| format!("; first: {id}"))
                    .unwrap_or_default()
            ),
        });
        let projectors = ["ledger", "search", "dashboard", "fraud"];
        checks.push(match audit::dead_letters(config, &projectors).await {
            Ok(counts) => {
                let total: i64 = counts.iter().map(|(_, n)| n).sum();
                Check {
                    check: "no dead letter".into(),
                    ok: total == 0,
                    detail: counts
                        .iter()
                        .map(|(topic, n)| {
                            format!("{} {n}", topic.rsplit('.').next().unwrap_or(topic))
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            }
            Err(e) => Check {
                check: "no dead letter".into(),
                ok: false,
                detail: format!("{e:#}"),
            },
        });
        for model in Model::ALL {
            checks.push(verify(config, model).await);
        }
    }

    pub(super) async fn panic_check(&self, fleet: &Arc<Mutex<Fleet>>) -> Check {
        let fleet = fleet.lock().await;
        let mut found = Vec::new();
        let mut exits = Vec::new();
        for slot in &fleet.slots {
            for line in fleet::panics(&slot.log) {
                found.push(format!("{}: {line}", slot.name));
            }
            if !slot.exits.is_empty() {
                exits.push(format!("{} exited {}×", slot.name, slot.exits.len()));
            }
        }
        Check {
            check: "no panic in any log".into(),
            ok: found.is_empty(),
            detail: if found.is_empty() {
                let starts: u32 = fleet.slots.iter().map(|s| s.starts).sum();
                format!(
                    "{} processes started {starts}×{}",
                    fleet.slots.len(),
                    if exits.is_empty() {
                        String::new()
                    } else {
                        format!("; exited by themselves: {}", exits.join(", "))
                    }
                )
            } else {
                found.join("; ")
            },
        }
    }
}

fn unreachable_check() -> Check {
    Check {
        check: "kafka holds every stored event, in order, no gap".into(),
        ok: false,
        detail: "the event store could not be read".into(),
    }
}

/// `verify <model>`, waiting up to 3 minutes for the model to catch up.
async fn verify(config: &Config, model: Model) -> Check {
    let name = plan::model_name(model);
    let options = crate::verify::Options {
        wait: Duration::from_secs(180),
        ..Default::default()
    };
    let check = format!("verify {name}");
    let result = match model {
        Model::Ledger => crate::verify::verify_ledger_with(config, &options)
            .await
            .map(|r| {
                (
                    r.ok,
                    format!(
                        "{} accounts, {} events, {} drifted, {} missing, {} extra, {} lines applied twice",
                        r.accounts_in_store,
                        r.events_read,
                        r.drifted,
                        r.missing_in_model,
                        r.only_in_model,
                        r.double_applied_lines
                    ),
                )
            }),
        _ => match model.verifier(config, 100).await {
            Ok(Some(verifier)) => {
                crate::verify_model::verify_model(config, name, verifier.as_ref(), &options)
                    .await
                    .map(|r| {
                        (
                            r.ok,
                            format!(
                                "{} documents, {} events, {} differences",
                                r.documents_expected, r.events, r.difference_count
                            ),
                        )
                    })
            }
            Ok(None) => Err(anyhow::anyhow!("{name} has no verifier")),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok((ok, detail)) => Check { check, ok, detail },
        Err(e) => Check {
            check,
            ok: false,
            detail: format!("{e:#}"),
        },
    }
}

/// Each process's resident memory (KiB), by slot.
pub(super) async fn memory(fleet: &Arc<Mutex<Fleet>>, slots: &[usize]) -> BTreeMap<String, u64> {
    let fleet = fleet.lock().await;
    slots
        .iter()
        .filter_map(|&i| {
            let slot = &fleet.slots[i];
            let rss = slot
                .pid()
                .and_then(|pid| crate::sample::memory_kib(pid).0)?;
            Some((slot.name.clone(), rss))
        })
        .collect()
}

/// No process grew beyond twice its memory after the warm-up plus 64 MiB. Processes are
/// killed and restarted along the run, so "after" is often a younger process than
/// "before": the bound catches a leak that grows with the faults, not a slow one.
pub(super) fn memory_check(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Check {
    let mut grown = Vec::new();
    let mut pairs = Vec::new();
    for (name, was) in before {
        let Some(now) = after.get(name) else {
            continue;
        };
        pairs.push(format!("{name} {}→{} MiB", was / 1024, now / 1024));
        if *now > was * 2 + 64 * 1024 {
            grown.push(name.clone());
        }
    }
    Check {
        check: "no process leaked memory".into(),
        ok: grown.is_empty() && !pairs.is_empty(),
        detail: if grown.is_empty() {
            pairs.join(", ")
        } else {
            format!("grew: {}; {}", grown.join(", "), pairs.join(", "))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_that_more_than_doubles_is_a_leak_and_a_younger_process_is_not() {
        let before = BTreeMap::from([("a".to_owned(), 100_000), ("b".to_owned(), 100_000)]);
        let after = BTreeMap::from([("a".to_owned(), 60_000), ("b".to_owned(), 300_000)]);
        let check = memory_check(&before, &after);
        assert!(!check.ok);
        assert!(check.detail.starts_with("grew: b;"), "{}", check.detail);
        let after = BTreeMap::from([("a".to_owned(), 200_000), ("b".to_owned(), 90_000)]);
        assert!(memory_check(&before, &after).ok);
    }
}
