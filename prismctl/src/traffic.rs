//! The traffic model behind `prismctl loadgen`, `demo` and the benches. It is the event
//! contract's seeded model ([`prism_events::testing::traffic`]): the same one projector
//! tests draw their events from (`prism_events::testing::Feed`), so benches, load and tests
//! share one generator. [`Traffic`] yields the requests to send; [`Events`] the envelopes
//! the command service would store for them, decided without it. This module's tests hold
//! [`Events`] to the command service's own rules.

pub use prism_events::testing::traffic::*;

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use chrono::{DateTime, Utc};
    use prism_command::account::{
        decide, evolve, replay, Account, Command, DepositMoney, FreezeAccount, OpenAccount,
        PayByCard, PaymentLookup, ReportFraud, WithdrawMoney,
    };
    use prism_events::event::CardPayment;
    use prism_events::{AccountEvent, Country, Currency, Envelope};
    use uuid::Uuid;

    use super::*;

    /// The command the command service decides for `op`; `None` if a code in it is not a
    /// valid country, currency or channel.
    fn to_command(op: &Op) -> Option<Command> {
        Some(match op {
            Op::Open {
                holder_name,
                email,
                country,
                currency,
                daily_withdrawal_limit_minor,
            } => Command::Open(OpenAccount {
                holder_name: holder_name.clone(),
                email: email.clone(),
                country: Country::parse(country).ok()?,
                currency: Currency::parse(currency).ok()?,
                daily_withdrawal_limit_minor: Some(*daily_withdrawal_limit_minor),
            }),
            Op::Deposit {
                amount_minor,
                description,
            } => Command::Deposit(DepositMoney {
                amount_minor: *amount_minor,
                description: Some((*description).to_owned()),
            }),
            Op::Withdraw {
                amount_minor,
                channel,
                description,
            } => Command::Withdraw(WithdrawMoney {
                amount_minor: *amount_minor,
                description: Some((*description).to_owned()),
                channel: withdrawal_channel(channel)?,
            }),
            Op::Pay {
                amount_minor,
                merchant_name,
                merchant_category,
                merchant_country,
                channel,
            } => Command::PayByCard(PayByCard {
                payment: CardPayment {
                    amount_minor: *amount_minor,
                    merchant_name: merchant_name.clone(),
                    merchant_category: (*merchant_category).to_owned(),
                    merchant_country: Country::parse(merchant_country).ok()?,
                    channel: card_channel(channel)?,
                },
            }),
            Op::Freeze { reason } => Command::Freeze(FreezeAccount {
                reason: (*reason).to_owned(),
            }),
            Op::Unfreeze => Command::Unfreeze,
            // The reference below resolves the payment from the step that made it.
            Op::ReportFraud {
                payment: PaymentRef::Event(payment_event_id),
                reason,
            } => Command::ReportFraud(ReportFraud {
                payment_event_id: *payment_event_id,
                reason: (*reason).to_owned(),
                payment: PaymentLookup::CardPayment,
            }),
            Op::ReportFraud {
                payment: PaymentRef::Step(_),
                ..
            } => return None,
        })
    }

    fn start() -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_735_689_600, 0).expect("start")
    }

    fn events(seed: u64, accounts: usize, share: f64, n: usize) -> Vec<(usize, Envelope)> {
        Events::new(seed, accounts, share, start(), chrono::Duration::minutes(1))
            .take(n)
            .collect()
    }

    /// `events` with fraud reports every `reports` steps on average, each report naming its
    /// payment by the payment's place in the sequence (the ids differ from the reference's).
    fn events_with_reports(
        seed: u64,
        accounts: usize,
        share: f64,
        reports: u64,
        n: usize,
    ) -> Vec<(usize, u64, DateTime<Utc>, AccountEvent)> {
        let all: Vec<(usize, Envelope)> =
            Events::new(seed, accounts, share, start(), chrono::Duration::minutes(1))
                .with_fraud_reports(reports)
                .take(n)
                .collect();
        let place: HashMap<Uuid, usize> = all
            .iter()
            .enumerate()
            .map(|(i, (_, e))| (e.id, i))
            .collect();
        all.into_iter()
            .map(|(a, e)| {
                let mut event = e.event;
                if let AccountEvent::PaymentReportedFraudulent(report) = &mut event {
                    let i = place
                        .get(&report.payment_event_id)
                        .copied()
                        .unwrap_or(usize::MAX);
                    report.payment_event_id = Uuid::from_u128(i as u128);
                }
                (a, e.account_version, e.time, event)
            })
            .collect()
    }

    /// The same traffic decided by the command service's rules: `(account index, version,
    /// time, event)` of every event it would store. With `reports`, a fraud report names
    /// its payment by the payment's place in the sequence.
    fn decided_by_the_rules(
        seed: u64,
        accounts: usize,
        share: f64,
        reports: u64,
        n: usize,
    ) -> Vec<(usize, u64, DateTime<Utc>, AccountEvent)> {
        let mut states: Vec<Account> = vec![Account::default(); accounts.max(1)];
        let mut out = Vec::with_capacity(n);
        let mut traffic = Traffic::new(seed, accounts, share).with_fraud_reports(reports);
        // The step that made each payment → its place in the output.
        let mut payments: HashMap<u64, usize> = HashMap::new();
        while out.len() < n {
            let Some(mut step) = traffic.next() else {
                break;
            };
            if let Some(paid) = step.op.unresolved_payment() {
                let Some(place) = payments.get(&paid) else {
                    continue;
                };
                step.op.resolve_payment(Uuid::from_u128(*place as u128));
            }
            let minutes = i64::try_from(out.len()).expect("a small count");
            let time = start() + chrono::Duration::minutes(minutes);
            let command = to_command(&step.op).expect("the model's codes are valid");
            if matches!(step.op, Op::Pay { .. }) {
                payments.insert(step.seq, out.len());
            }
            let state = &mut states[step.account];
            let Ok(decided) = decide(state, &command, time) else {
                continue;
            };
            for event in decided {
                let envelope = Envelope {
                    id: Uuid::nil(),
                    source: EVENT_SOURCE.to_owned(),
                    account_id: prism_events::AccountId(Uuid::nil()),
                    time,
                    account_version: state.version() + 1,
                    correlation_id: None,
                    causation_id: None,
                    event,
                };
                evolve(state, &envelope);
                out.push((step.account, envelope.account_version, time, envelope.event));
            }
        }
        out
    }

    #[test]
    fn events_are_what_the_command_service_rules_decide() {
        // Everyday traffic, and a lot of card testing and holds (declines, freezes, a
        // withdrawal refused on a frozen account), over days of daily limits.
        for (seed, accounts, share) in [(1, 30, 0.02), (7, 40, 0.05), (9, 10, 0.5)] {
            let generated: Vec<_> = events(seed, accounts, share, 20_000)
                .into_iter()
                .map(|(a, e)| (a, e.account_version, e.time, e.event))
                .collect();
            let reference = decided_by_the_rules(seed, accounts, share, 0, 20_000);
            assert_eq!(generated.len(), reference.len());
            if let Some(i) = (0..generated.len()).find(|&i| generated[i] != reference[i]) {
                panic!(
                    "seed {seed}: event {i} differs\n generated: {:?}\n rules:     {:?}",
                    generated[i], reference[i]
                );
            }
        }
    }

    #[test]
    fn fraud_reports_are_what_the_command_service_rules_decide() {
        let (seed, accounts, share, reports) = (5, 30, 0.3, 200);
        let generated = events_with_reports(seed, accounts, share, reports, 20_000);
        let reference = decided_by_the_rules(seed, accounts, share, reports, 20_000);
        let labels = generated
            .iter()
            .filter(|(_, _, _, e)| matches!(e, AccountEvent::PaymentReportedFraudulent(_)))
            .count();
        assert!(labels > 100, "{labels} reports");
        assert_eq!(generated.len(), reference.len());
        if let Some(i) = (0..generated.len()).find(|&i| generated[i] != reference[i]) {
            panic!(
                "event {i} differs\n generated: {:?}\n rules:     {:?}",
                generated[i], reference[i]
            );
        }
    }

    #[test]
    fn every_op_of_the_model_is_a_valid_command() {
        for step in Traffic::new(3, 200, 0.1).take(50_000) {
            assert!(to_command(&step.op).is_some(), "{:?}", step.op);
        }
    }

    #[test]
    fn events_are_valid_histories_the_rules_accept() {
        let all = events(11, 50, 0.05, 20_000);
        let mut histories: HashMap<usize, Vec<Envelope>> = HashMap::new();
        for (account, envelope) in &all {
            let history = histories.entry(*account).or_default();
            assert_eq!(envelope.account_version, history.len() as u64 + 1);
            history.push(envelope.clone());
            // The state after every event is one the rules allow: never below zero, never
            // more withdrawn on a day than the limit.
            let state = replay(history.iter());
            assert!(state.balance_minor() >= 0, "{envelope:?}");
            assert!(
                state.withdrawn_on(envelope.time.date_naive())
                    <= state.daily_withdrawal_limit_minor(),
                "{envelope:?}"
            );
        }
        assert_eq!(histories.len(), 50, "every account is opened");
        let ids: HashSet<Uuid> = all.iter().map(|(_, e)| e.id).collect();
        assert_eq!(ids.len(), all.len(), "event ids are unique");
    }
}
