//! Pure batch planning: which consumed records to apply, skip or dead-letter, given the
//! last handled version of each account. No I/O, so every rule has a unit test.

use foldhash::HashMap;

use prism_events::Envelope;
use uuid::Uuid;

/// A consumed record after decoding.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub offset: i64,
    /// CloudEvents type from the headers, or `undecodable` when there is none.
    pub event_type: &'static str,
    pub envelope: Result<Envelope, String>,
    /// The record is well formed but from a newer writer (unknown event type, schema version
    /// above this build's): not poison, the partition waits for an upgraded projector.
    pub needs_upgrade: bool,
}

/// How one batch of records is handled.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indices of the records to fold, in order.
    pub apply: Vec<usize>,
    /// Duplicates: their version was already handled.
    pub skipped: Vec<usize>,
    /// Records to dead-letter now, with the reason (undecodable, or an account already
    /// reported for a gap).
    pub dead: Vec<(usize, String)>,
    /// Records more than one version ahead of their account: `(index, handled version)`.
    pub gaps: Vec<(usize, u64)>,
    /// New last handled version (and event id) per account touched by `apply`.
    pub versions: HashMap<Uuid, (u64, Uuid)>,
}

/// The last handled version of `account` (0: nothing handled yet).
fn known(versions: &HashMap<Uuid, u64>, account: &Uuid) -> u64 {
    versions.get(account).copied().unwrap_or(0)
}

/// Plans `records` (in partition order) against the handled `versions` of their accounts
/// (every account of `records` must be in it, or is taken as never handled). Accounts for
/// which `quarantined` answers true were reported for a gap earlier: their events are
/// dead-lettered without retrying.
pub fn plan(
    records: &[Decoded],
    versions: &HashMap<Uuid, u64>,
    quarantined: &dyn Fn(&Uuid) -> bool,
) -> Plan {
    let mut plan = Plan::default();
    for (index, record) in records.iter().enumerate() {
        let envelope = match &record.envelope {
            Ok(envelope) => envelope,
            Err(reason) => {
                plan.dead.push((index, format!("undecodable: {reason}")));
                continue;
            }
        };
        let account = envelope.account_id.0;
        let handled = plan
            .versions
            .get(&account)
            .map(|(v, _)| *v)
            .unwrap_or_else(|| known(versions, &account));
        let version = envelope.account_version;
        if version <= handled {
            plan.skipped.push(index);
        } else if quarantined(&account) {
            plan.dead.push((
                index,
                format!(
                    "account {account} has a version gap (handled up to {handled}); rebuild the read model"
                ),
            ));
        } else if version == handled + 1 {
            plan.apply.push(index);
            plan.versions.insert(account, (version, envelope.id));
        } else {
            plan.gaps.push((index, handled));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use prism_events::testing::{deposited, envelope};
    use prism_events::AccountId;

    use super::*;

    fn event(account: Uuid, version: u64) -> Decoded {
        let envelope = envelope(deposited(1))
            .account(AccountId(account))
            .version(version)
            .build();
        Decoded {
            offset: 0,
            event_type: envelope.event_type(),
            envelope: Ok(envelope),
            needs_upgrade: false,
        }
    }

    fn none(_: &Uuid) -> bool {
        false
    }

    #[test]
    fn consecutive_versions_of_a_new_account_are_applied() {
        let a = Uuid::now_v7();
        let records = vec![event(a, 1), event(a, 2), event(a, 3)];
        let plan = plan(&records, &HashMap::default(), &none);
        assert_eq!(plan.apply, vec![0, 1, 2]);
        assert_eq!(plan.versions[&a].0, 3);
        assert!(plan.skipped.is_empty() && plan.gaps.is_empty() && plan.dead.is_empty());
    }

    #[test]
    fn versions_already_handled_are_skipped_as_duplicates() {
        let a = Uuid::now_v7();
        let records = vec![event(a, 4), event(a, 5), event(a, 6)];
        let stored = HashMap::from_iter([(a, 5)]);
        let plan = plan(&records, &stored, &none);
        assert_eq!(plan.skipped, vec![0, 1]);
        assert_eq!(plan.apply, vec![2]);
    }

    #[test]
    fn a_duplicate_inside_the_batch_is_skipped() {
        let a = Uuid::now_v7();
        let records = vec![event(a, 1), event(a, 2), event(a, 2), event(a, 3)];
        let plan = plan(&records, &HashMap::default(), &none);
        assert_eq!(plan.apply, vec![0, 1, 3]);
        assert_eq!(plan.skipped, vec![2]);
    }

    #[test]
    fn a_version_more_than_one_ahead_is_a_gap_and_so_is_the_rest_of_that_account() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let records = vec![event(a, 3), event(b, 1), event(a, 4)];
        let stored = HashMap::from_iter([(a, 1)]);
        let plan = plan(&records, &stored, &none);
        assert_eq!(plan.gaps, vec![(0, 1), (2, 1)]);
        assert_eq!(plan.apply, vec![1]);
        assert!(!plan.versions.contains_key(&a));
    }

    #[test]
    fn undecodable_records_are_dead_lettered_and_others_continue() {
        let a = Uuid::now_v7();
        let mut records = vec![event(a, 1)];
        records.push(Decoded {
            offset: 1,
            event_type: "undecodable",
            envelope: Err("missing ce_id".into()),
            needs_upgrade: false,
        });
        records.push(event(a, 2));
        let plan = plan(&records, &HashMap::default(), &none);
        assert_eq!(plan.apply, vec![0, 2]);
        assert_eq!(plan.dead.len(), 1);
        assert_eq!(plan.dead[0].0, 1);
        assert!(plan.dead[0].1.contains("missing ce_id"));
    }

    #[test]
    fn a_quarantined_account_is_dead_lettered_without_retrying() {
        let a = Uuid::now_v7();
        let records = vec![event(a, 9)];
        let plan = plan(&records, &HashMap::from_iter([(a, 2)]), &|x| *x == a);
        assert!(plan.gaps.is_empty());
        assert_eq!(plan.dead.len(), 1);
        // Its duplicates are still just duplicates.
        let plan2 = super::plan(&[event(a, 1)], &HashMap::from_iter([(a, 2)]), &|x| *x == a);
        assert_eq!(plan2.skipped, vec![0]);
    }
}
