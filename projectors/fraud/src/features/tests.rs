//! Given an account's history, when a payment comes (scored, or folded), then its features
//! are what FEATURES.md says. Each test breaks if the definition it names changes.

use chrono::{DateTime, Duration, Utc};
use prism_events::event::{DeclineReason, MoneyWithdrawn, WithdrawalChannel};
use prism_events::testing::{
    deposited, envelope, frozen, opened, payment, reported_fraudulent, withdrawn, Feed,
};
use prism_events::{AccountEvent, AccountId, Country, Envelope};
use prism_projector::fold::fold_history;

use super::*;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

fn us(micros: i64) -> Duration {
    Duration::microseconds(micros)
}

/// A card payment to score: card present, at "Café Rosa" in PT, unless changed.
fn candidate(amount_minor: i64, time: DateTime<Utc>) -> Candidate {
    Candidate::from_payment(&payment(amount_minor).0, time)
}

/// One account's history, folded event by event as the projector would.
struct Given {
    id: AccountId,
    state: Option<AccountFeatures>,
}

impl Given {
    /// An account opened at `time` in `country` with `currency`.
    fn account(country: &str, currency: &str, time: DateTime<Utc>) -> Self {
        let mut given = Self {
            id: AccountId::generate(),
            state: None,
        };
        let row = given.event(time, opened("Ada", country, currency));
        assert!(row.is_none(), "an opening has no row");
        given
    }

    /// The next version of the account at `time`, folded: its row, if any.
    fn event(&mut self, time: DateTime<Utc>, event: AccountEvent) -> Option<Row> {
        let envelope = self.envelope(time, event);
        apply_in_place(&mut self.state, &envelope).expect("folds")
    }

    /// [`Given::event`] for an event that has a row.
    fn row(&mut self, time: DateTime<Utc>, event: AccountEvent) -> Row {
        self.event(time, event).expect("a row")
    }

    /// The next version's envelope, not folded.
    fn envelope(&self, time: DateTime<Utc>, event: AccountEvent) -> Envelope {
        let version = self.state.as_ref().map_or(0, AccountFeatures::version) + 1;
        envelope(event)
            .account(self.id)
            .version(version)
            .at(time)
            .build()
    }

    fn state(&self) -> &AccountFeatures {
        self.state.as_ref().expect("opened")
    }

    /// What `candidate` would get now.
    fn score(&self, candidate: &Candidate) -> FeatureVector {
        vector(self.state.as_ref(), candidate)
    }
}

const T0: &str = "2026-05-01T00:00:00Z";
const A: &str = "2026-05-01T12:00:00Z";

fn counts(v: &FeatureVector) -> [u32; 4] {
    [
        v.card_payments_count_10m,
        v.card_payments_count_1h,
        v.card_payments_count_24h,
        v.card_payments_count_7d,
    ]
}

fn sums(v: &FeatureVector) -> [i64; 4] {
    [
        v.card_payments_sum_10m,
        v.card_payments_sum_1h,
        v.card_payments_sum_24h,
        v.card_payments_sum_7d,
    ]
}

#[test]
fn a_payment_exactly_24h_before_is_out_of_the_24h_window_and_one_a_microsecond_later_is_in() {
    // Given a declined online payment at A.
    let mut given = Given::account("DE", "EUR", at(T0));
    given.event(
        at(A),
        payment(700).online().declined(DeclineReason::AccountFrozen),
    );
    let a = at(A);

    // When a payment comes exactly 24 h later, then A is out of every 24 h feature…
    let v = given.score(&candidate(100, a + Duration::hours(24)));
    assert_eq!(counts(&v), [0, 0, 0, 1]);
    assert_eq!(sums(&v), [0, 0, 0, 700]);
    assert_eq!(
        (
            v.distinct_merchants_24h,
            v.distinct_merchant_countries_24h,
            v.declines_count_24h
        ),
        (0, 0, 0)
    );
    assert_eq!(v.online_share_24h, None, "no payment in the window");

    // …and 1 µs earlier it is in all of them.
    let v = given.score(&candidate(100, a + Duration::hours(24) - us(1)));
    assert_eq!(counts(&v), [0, 0, 1, 1]);
    assert_eq!(sums(&v), [0, 0, 700, 700]);
    assert_eq!(
        (
            v.distinct_merchants_24h,
            v.distinct_merchant_countries_24h,
            v.declines_count_24h
        ),
        (1, 1, 1)
    );
    assert_eq!(v.online_share_24h, Some(1.0));

    // The same holds for a folded payment's row, and for withdrawals.
    let mut folded = Given::account("DE", "EUR", at(T0));
    folded.event(a, withdrawn(300));
    folded.event(a, payment(700).approved());
    let row = folded.row(a + Duration::hours(24), payment(5).approved());
    assert_eq!(counts(&row.features), [0, 0, 0, 1]);
    assert_eq!(
        (
            row.features.withdrawals_count_24h,
            row.features.withdrawals_sum_24h
        ),
        (0, 0)
    );
    let mut folded = Given::account("DE", "EUR", at(T0));
    folded.event(a, withdrawn(300));
    let row = folded.row(a + Duration::hours(24) - us(1), payment(5).approved());
    assert_eq!(
        (
            row.features.withdrawals_count_24h,
            row.features.withdrawals_sum_24h
        ),
        (1, 300)
    );
}

#[test]
fn every_window_excludes_its_start_and_includes_the_next_microsecond() {
    // Given one payment at A.
    let mut given = Given::account("DE", "EUR", at(T0));
    given.event(at(A), payment(1_000).approved());
    let windows = [
        Duration::minutes(10),
        Duration::hours(1),
        Duration::hours(24),
        Duration::days(7),
    ];
    for (i, width) in windows.into_iter().enumerate() {
        // When a payment comes exactly one window later, then it is out of that window
        // (and the narrower ones) and in the wider ones.
        let out = counts(&given.score(&candidate(1, at(A) + width)));
        let expected_out: Vec<u32> = (0..4).map(|j| u32::from(j > i)).collect();
        assert_eq!(out.to_vec(), expected_out, "exactly {width} later");
        // One microsecond earlier it is in that window too.
        let inside = counts(&given.score(&candidate(1, at(A) + width - us(1))));
        let expected_in: Vec<u32> = (0..4).map(|j| u32::from(j >= i)).collect();
        assert_eq!(inside.to_vec(), expected_in, "{width} − 1 µs later");
    }
}

#[test]
fn a_payment_never_counts_itself_and_its_row_is_what_vector_gave_before_it() {
    // Given an account with no payment yet.
    let mut given = Given::account("DE", "EUR", at(T0));
    let before = given.state().clone();

    // When a payment is folded, then its row counts nothing: it is not an earlier payment.
    let event = payment(1_250).online().approved();
    let first = given.row(at(A), event.clone());
    assert_eq!(
        (counts(&first.features), sums(&first.features)),
        ([0; 4], [0; 4])
    );
    assert_eq!(first.features.first_time_at_merchant, Some(true));
    assert_eq!(first.features.small_online_payments_10m, 0);
    assert_eq!(
        (
            first.features.amount_mean,
            first.features.seconds_since_previous_payment
        ),
        (None, None)
    );
    assert_eq!(
        (first.kind, first.account_version),
        (RowKind::CardPaymentApproved, 2)
    );
    assert_eq!(first.feature_time_micros, at(A).timestamp_micros());

    // One code path: the row is what `vector` computes for the same payment on the state
    // before it, field for field and bit for bit.
    let AccountEvent::CardPaymentApproved(approved) = &event else {
        unreachable!("an approved payment");
    };
    let scored = vector(
        Some(&before),
        &Candidate::from_payment(&approved.payment, at(A)),
    );
    assert_eq!(scored, first.features);

    // And the next payment, at the same microsecond even, sees it once.
    let second = given.row(at(A), payment(1_250).approved());
    assert_eq!(counts(&second.features), [1, 1, 1, 1]);
    assert_eq!(second.features.first_time_at_merchant, Some(false));
    assert_eq!(second.features.seconds_since_previous_payment, Some(0.0));
}

#[test]
fn the_feature_clock_never_goes_backwards() {
    // Given a payment at 10:00 from an instance whose clock is ahead.
    let mut given = Given::account("DE", "EUR", at("2026-05-01T08:00:00Z"));
    let ten = at("2026-05-01T10:00:00Z");
    given.event(ten, payment(100).approved());

    // When the next payment is stamped 09:59 by an instance whose clock is behind, then its
    // feature time is 10:00: no negative durations, and the 10:00 payment is earlier.
    let row = given.row(at("2026-05-01T09:59:00Z"), payment(200).approved());
    assert_eq!(row.feature_time_micros, ten.timestamp_micros());
    assert_eq!(
        row.event_time,
        at("2026-05-01T09:59:00Z"),
        "the event's own time kept"
    );
    assert_eq!(row.features.seconds_since_previous_event, Some(0.0));
    assert_eq!(row.features.seconds_since_previous_payment, Some(0.0));
    assert_eq!(counts(&row.features), [1, 1, 1, 1]);

    // A deposit stamped even earlier does not move the clock back either.
    given.event(at("2026-05-01T09:00:00Z"), deposited(1_000));
    assert_eq!(given.state().clock_micros(), ten.timestamp_micros());

    // Both payments sit at 10:00 on the clock: exactly 24 h after it, both are out.
    let v = given.score(&candidate(1, ten + Duration::hours(24)));
    assert_eq!(counts(&v), [0, 0, 0, 2]);
    let v = given.score(&candidate(1, ten + Duration::hours(24) - us(1)));
    assert_eq!(counts(&v), [0, 0, 2, 2]);

    // A candidate stamped before the clock is scored at the clock.
    let v = given.score(&candidate(1, at("2026-05-01T07:00:00Z")));
    assert_eq!(v.seconds_since_previous_event, Some(0.0));
    assert_eq!(v.account_age_seconds, Some(7_200.0), "08:00 → 10:00");
}

#[test]
fn local_hour_follows_berlin_through_both_dst_changes() {
    // Given an account in DE (Europe/Berlin).
    let given = Given::account("DE", "EUR", at("2026-01-01T00:00:00Z"));
    let hour = |t: &str| given.score(&candidate(100, at(t))).local_hour;

    // Spring: 02:00 CET becomes 03:00 CEST at 01:00 UTC; local 02:xx never happens.
    assert_eq!(hour("2026-03-29T00:59:59Z"), Some(1));
    assert_eq!(hour("2026-03-29T01:00:00Z"), Some(3));

    // Autumn: 03:00 CEST becomes 02:00 CET at 01:00 UTC; local 02:xx happens twice.
    assert_eq!(hour("2026-10-24T23:59:59Z"), Some(1));
    assert_eq!(hour("2026-10-25T00:00:00Z"), Some(2), "02:00 CEST");
    assert_eq!(hour("2026-10-25T00:59:59Z"), Some(2), "02:59:59 CEST");
    assert_eq!(hour("2026-10-25T01:00:00Z"), Some(2), "02:00 CET, again");
    assert_eq!(hour("2026-10-25T02:00:00Z"), Some(3));
}

#[test]
fn multi_zone_countries_use_their_documented_principal_zone() {
    let summer = "2026-07-01T16:00:00Z";
    let winter = "2026-01-15T16:00:00Z";
    let hours = |country: &str| {
        let given = Given::account(country, "USD", at("2026-01-01T00:00:00Z"));
        [summer, winter].map(|t| given.score(&candidate(1, at(t))).local_hour)
    };
    // US → America/New_York (zone.tab's first row): EDT, then EST.
    assert_eq!(hours("US"), [Some(12), Some(11)]);
    // AU → Australia/Sydney (override of Lord_Howe): AEST in July, AEDT in January.
    assert_eq!(hours("AU"), [Some(2), Some(3)]);
    // JP has one zone and no DST.
    assert_eq!(hours("JP"), [Some(1), Some(1)]);
    // BV (Bouvet Island) has no zone: null.
    assert_eq!(hours("BV"), [None, None]);
}

#[test]
fn the_z_score_is_the_documented_formula_on_hand_computed_values() {
    // Given payments of 10.00, 20.00 and 30.00 EUR (one declined: all payments count).
    let mut given = Given::account("DE", "EUR", at(T0));
    given.event(at(A), payment(1_000).approved());
    given.event(
        at(A),
        payment(2_000).declined(DeclineReason::InsufficientFunds),
    );
    given.event(at(A), payment(3_000).approved());

    // n = 3, Σx = 6 000, Σx² = 14 000 000: mean 2 000, variance (3·14e6 − 36e6)/(3·2) = 1e6.
    let v = given.score(&candidate(4_500, at(A)));
    assert_eq!(v.amount_mean, Some(2_000.0));
    assert_eq!(v.amount_std, Some(1_000.0));
    assert_eq!(v.amount_zscore, Some(2.5));
    let v = given.score(&candidate(500, at(A)));
    assert_eq!(v.amount_zscore, Some(-1.5));

    // 100 and 200: mean 150, variance (2·50 000 − 90 000)/2 = 5 000, z(300) = 150/√5000.
    let mut given = Given::account("DE", "EUR", at(T0));
    given.event(at(A), payment(100).approved());
    given.event(at(A), payment(200).approved());
    let v = given.score(&candidate(300, at(A)));
    assert_eq!(v.amount_mean, Some(150.0));
    assert_eq!(
        v.amount_std.map(f64::to_bits),
        Some(70.710_678_118_654_76_f64.to_bits())
    );
    assert_eq!(
        v.amount_zscore.map(f64::to_bits),
        Some(2.121_320_343_559_642_4_f64.to_bits())
    );
}

#[test]
fn amount_statistics_are_null_until_defined() {
    let mut given = Given::account("DE", "EUR", at(T0));
    // n = 0: all null.
    let v = given.score(&candidate(500, at(A)));
    assert_eq!(
        (v.amount_mean, v.amount_std, v.amount_zscore),
        (None, None, None)
    );
    // n = 1: a mean, no spread.
    given.event(at(A), payment(500).approved());
    let v = given.score(&candidate(500, at(A)));
    assert_eq!(
        (v.amount_mean, v.amount_std, v.amount_zscore),
        (Some(500.0), None, None)
    );
    // n = 2, equal amounts: std 0, so no z-score (not ±∞, not 0).
    given.event(at(A), payment(500).approved());
    let v = given.score(&candidate(900, at(A)));
    assert_eq!(
        (v.amount_mean, v.amount_std, v.amount_zscore),
        (Some(500.0), Some(0.0), None)
    );
    // Withdrawals are not card payments: they do not move the statistics.
    given.event(at(A), withdrawn(100_000));
    let v = given.score(&candidate(900, at(A)));
    assert_eq!(v.amount_mean, Some(500.0));
}

#[test]
fn exact_statistics_do_not_depend_on_order_nor_cancel() {
    let amounts = [
        1_000_000_000_001,
        1_000_000_000_002,
        1_000_000_000_003,
        7,
        999_999,
    ];
    let fold = |order: &[usize]| {
        let mut given = Given::account("DE", "EUR", at(T0));
        for &i in order {
            given.event(at(A), payment(amounts[i]).approved());
        }
        let v = given.score(&candidate(42, at(A)));
        (given.state().amounts, v)
    };
    let (stats, v) = fold(&[0, 1, 2, 3, 4]);
    let (stats_reversed, v_reversed) = fold(&[4, 3, 2, 1, 0]);
    let (stats_shuffled, v_shuffled) = fold(&[2, 4, 0, 3, 1]);
    assert_eq!(stats, stats_reversed);
    assert_eq!(stats, stats_shuffled);
    for other in [&v_reversed, &v_shuffled] {
        assert_eq!(
            v.amount_mean.map(f64::to_bits),
            other.amount_mean.map(f64::to_bits)
        );
        assert_eq!(
            v.amount_std.map(f64::to_bits),
            other.amount_std.map(f64::to_bits)
        );
        assert_eq!(
            v.amount_zscore.map(f64::to_bits),
            other.amount_zscore.map(f64::to_bits)
        );
    }

    // 10¹² + 1, + 2, + 3 have a variance of exactly 1; naive float sums cancel to nothing.
    let (_, v) = fold(&[0, 1, 2]);
    assert_eq!(v.amount_std, Some(1.0));
    assert_eq!(v.amount_mean, Some(1_000_000_000_002.0));
    let xs = [amounts[0], amounts[1], amounts[2]].map(|x| x as f64);
    let (n, sum) = (3.0, xs.iter().sum::<f64>());
    let naive = (n * xs.iter().map(|x| x * x).sum::<f64>() - sum * sum) / (n * (n - 1.0));
    assert_ne!(naive, 1.0, "what the exact sums avoid");
}

#[test]
fn pruning_keeps_the_state_within_its_windows() {
    // Given 30 days of a card payment every 15 minutes (50 merchants in turn) and a
    // withdrawal every hour.
    let start = at(T0);
    let mut given = Given::account("DE", "EUR", start);
    let quarter = Duration::minutes(15);
    for k in 0..(30 * 96) {
        let t = start + quarter * k;
        given.event(
            t,
            payment(100)
                .merchant(&format!("shop {}", k % 50))
                .approved(),
        );
        if k % 4 == 1 {
            given.event(t, withdrawn(10));
        }
        let state = given.state();
        let clock = state.clock_micros();
        assert!(state.payments.iter().all(|p| p.at > clock - WINDOW_7D));
        assert!(state.withdrawals.iter().all(|w| w.at > clock - WINDOW_24H));
    }
    // Then it holds the last 7 days and 24 hours only, but all-time items stay.
    let state = given.state();
    assert_eq!(state.window_entries(), (7 * 96, 24));
    assert_eq!(state.merchants_ever(), 50);
    assert_eq!(state.amounts.n, 30 * 96);
    let size = serde_json::to_vec(state).expect("json").len();
    assert!(size < 64 * 1024, "{size} bytes");
    // And what it dropped is not missed: the 7 d window still counts all it should.
    let v = given.score(&candidate(1, state_clock(&given) + us(1)));
    assert_eq!(v.card_payments_count_7d, 7 * 96);
    assert_eq!(v.withdrawals_count_24h, 24);
}

fn state_clock(given: &Given) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(given.state().clock_micros()).expect("a time")
}

#[test]
fn the_state_round_trips_through_json() {
    let mut given = Given::account("JP", "JPY", at(T0));
    given.event(at(A), deposited(50_000));
    given.event(
        at(A),
        payment(1_200)
            .merchant("Ramen 一蘭")
            .country("JP")
            .online()
            .approved(),
    );
    given.event(at(A), payment(9).declined(DeclineReason::AmountOutOfRange));
    given.event(at(A), withdrawn(3_000));
    // Amounts no valid event has: sums beyond i64, still exact in the state.
    given.event(
        at(A),
        payment(i64::MAX).declined(DeclineReason::AmountOutOfRange),
    );
    given.event(
        at(A),
        payment(i64::MIN).declined(DeclineReason::AmountOutOfRange),
    );
    let state = given.state();
    let json = serde_json::to_string(state).expect("serializes");
    let back: AccountFeatures = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(&back, state);
    assert!(json.contains(r#""m":"Ramen 一蘭""#), "{json}");

    let v = given.score(&candidate(10, at(A)));
    let json = serde_json::to_string(&v).expect("serializes");
    let back: FeatureVector = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, v);
}

#[test]
fn duplicates_gaps_orphans_and_second_openings_are_refused() {
    let mut given = Given::account("DE", "EUR", at(T0));
    given.event(at(A), deposited(100));
    let state = given.state().clone();
    let id = given.id;
    let at_version = |version: u64, event: AccountEvent| {
        envelope(event)
            .account(id)
            .version(version)
            .at(at(A))
            .build()
    };

    // A duplicate (or older) version, and a skipped one.
    for (version, stored) in [(2, 2), (1, 2), (4, 2)] {
        let refused = apply(Some(&state), &at_version(version, deposited(1)));
        assert_eq!(
            refused.err(),
            Some(Rejection::Gap {
                account_id: id,
                version,
                stored
            })
        );
    }
    // Anything before AccountOpened, even a fraud report.
    for event in [
        deposited(1),
        payment(1).approved(),
        reported_fraudulent(Uuid::nil(), "x"),
    ] {
        assert!(matches!(
            apply(None, &at_version(1, event)),
            Err(Rejection::UnknownAccount { .. })
        ));
    }
    // A second opening.
    assert!(matches!(
        apply(Some(&state), &at_version(3, opened("Ada", "DE", "EUR"))),
        Err(Rejection::AlreadyOpened { version: 2, .. })
    ));
    // The version counter cannot wrap.
    let mut last = state.clone();
    last.version = u64::MAX;
    assert!(matches!(
        apply(Some(&last), &at_version(0, deposited(1))),
        Err(Rejection::Gap { .. })
    ));
}

#[test]
fn a_fraud_report_moves_the_version_and_no_feature() {
    // Given the same history with and without a report of its first payment, stamped
    // days later (a report's time must not move the clock).
    let history = |report: bool| {
        let mut given = Given::account("DE", "EUR", at(T0));
        let first = given.row(at(A), payment(1_000).approved());
        let before = given.state().clone();
        if report {
            given.event(
                at("2026-05-20T00:00:00Z"),
                reported_fraudulent(first.event_id, "not me"),
            );
            let after = given.state();
            assert_eq!(after.version(), before.version() + 1);
            let mut same = after.clone();
            same.version = before.version();
            assert_eq!(same, before, "nothing but the version moved");
        }
        given
            .row(at("2026-05-01T12:05:00Z"), payment(2_000).approved())
            .features
    };
    // Then the next payment's features are the same either way.
    assert_eq!(history(true), history(false));
}

#[test]
fn a_withdrawal_row_has_no_merchant_features() {
    let mut given = Given::account("DE", "EUR", at(T0));
    given.event(at(A), deposited(100_000));
    given.event(at(A), payment(1_000).approved());

    // An ATM withdrawal: its own amount, not online, merchant features null.
    let row = given.row(at(A) + Duration::minutes(1), withdrawn(20_000));
    assert_eq!(row.kind, RowKind::Withdrawal);
    let v = &row.features;
    assert_eq!((v.amount_minor, v.is_online), (20_000, false));
    assert_eq!(
        (v.first_time_at_merchant, v.merchant_country_differs),
        (None, None)
    );
    // Everything about the history reads as for a payment.
    assert_eq!(counts(v), [1, 1, 1, 1]);
    assert_eq!(v.amount_mean, Some(1_000.0));
    assert_eq!(v.seconds_since_previous_payment, Some(60.0));
    assert_eq!(v.amount_to_balance, Some(20_000.0 / 99_000.0));

    // An online withdrawal is online.
    let online = AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
        amount_minor: 5_000,
        description: None,
        channel: WithdrawalChannel::Online,
    });
    let row = given.row(at(A) + Duration::minutes(2), online);
    assert!(row.features.is_online);
    assert_eq!(
        row.features.withdrawals_count_24h, 1,
        "the ATM one before it"
    );

    // The next payment sees both withdrawals, and its previous payment is still the card
    // payment while its previous event is the last withdrawal.
    let v = given.score(&candidate(1, at(A) + Duration::minutes(3)));
    assert_eq!(
        (v.withdrawals_count_24h, v.withdrawals_sum_24h),
        (2, 25_000)
    );
    assert_eq!(v.seconds_since_previous_payment, Some(180.0));
    assert_eq!(v.seconds_since_previous_event, Some(60.0));
    assert_eq!(
        counts(&v),
        [1, 1, 1, 1],
        "withdrawals are not card payments"
    );
}

#[test]
fn small_online_payments_count_card_testing_in_the_currencys_major_units() {
    // EUR: 5 EUR = 500 cents.
    let mut given = Given::account("DE", "EUR", at(T0));
    given.event(at(A), payment(500).online().approved());
    given.event(at(A), payment(501).online().approved());
    given.event(at(A), payment(100).approved());
    given.event(
        at(A),
        payment(0)
            .online()
            .declined(DeclineReason::AmountOutOfRange),
    );
    let v = given.score(&candidate(1, at(A) + Duration::minutes(10) - us(1)));
    assert_eq!(
        v.small_online_payments_10m, 2,
        "500 and 0: online and at most 5 EUR"
    );
    let v = given.score(&candidate(1, at(A) + Duration::minutes(10)));
    assert_eq!(v.small_online_payments_10m, 0, "10 minutes later, out");

    // JPY has no minor unit: 5 JPY = 5.
    let mut given = Given::account("JP", "JPY", at(T0));
    given.event(at(A), payment(5).online().approved());
    given.event(at(A), payment(6).online().approved());
    let v = given.score(&candidate(1, at(A)));
    assert_eq!(v.small_online_payments_10m, 1);
}

#[test]
fn merchant_features_compare_exact_names_and_the_accounts_country() {
    // Given payments at "Café Rosa" (PT, declined) and "Bar Alto" (ES, online).
    let mut given = Given::account("DE", "EUR", at(T0));
    given.event(
        at(A),
        payment(100).declined(DeclineReason::InsufficientFunds),
    );
    given.event(
        at(A),
        payment(100)
            .merchant("Bar Alto")
            .country("ES")
            .online()
            .approved(),
    );

    let c = |merchant: &str, country: &str| {
        let mut c = candidate(100, at(A));
        c.merchant_name = merchant.into();
        c.merchant_country = Country::parse(country).expect("a country");
        given.score(&c)
    };
    assert_eq!(
        c("Café Rosa", "PT").first_time_at_merchant,
        Some(false),
        "declined counts"
    );
    assert_eq!(
        c("Cafe Rosa", "PT").first_time_at_merchant,
        Some(true),
        "exact string"
    );
    assert_eq!(
        c("café rosa", "PT").first_time_at_merchant,
        Some(true),
        "exact string"
    );
    assert_eq!(c("Café Rosa", "PT").merchant_country_differs, Some(true));
    assert_eq!(c("Kiosk", "DE").merchant_country_differs, Some(false));

    let v = c("Kiosk", "DE");
    assert_eq!(
        (v.distinct_merchants_24h, v.distinct_merchant_countries_24h),
        (2, 2)
    );
    assert_eq!(v.declines_count_24h, 1);
    assert_eq!(v.online_share_24h, Some(0.5));
}

#[test]
fn balance_age_and_gaps_in_seconds() {
    let open = at(T0);
    let mut given = Given::account("DE", "EUR", open);
    // Balance 0: no ratio.
    assert_eq!(given.score(&candidate(100, open)).amount_to_balance, None);
    given.event(open + Duration::seconds(60), deposited(10_000));
    let row = given.row(open + Duration::seconds(90), payment(2_500).approved());
    assert_eq!(row.features.amount_to_balance, Some(0.25));
    assert_eq!(row.features.account_age_seconds, Some(90.0));
    assert_eq!(row.features.seconds_since_previous_event, Some(30.0));
    // A decline moves no money; the balance is 7 500.
    given.event(
        open + Duration::seconds(100),
        payment(90_000).declined(DeclineReason::InsufficientFunds),
    );
    let v = given.score(&candidate(
        3_000,
        open + Duration::seconds(100) + us(500_000),
    ));
    assert_eq!(v.amount_to_balance, Some(3_000.0 / 7_500.0));
    assert_eq!(v.seconds_since_previous_event, Some(0.5));
    assert_eq!(v.seconds_since_previous_payment, Some(0.5));
    assert_eq!(v.account_age_seconds, Some(100.5));
    // Frozen, unfrozen and closed are account activity too.
    given.event(open + Duration::seconds(200), frozen("review"));
    let v = given.score(&candidate(1, open + Duration::seconds(201)));
    assert_eq!(v.seconds_since_previous_event, Some(1.0));
    assert_eq!(v.seconds_since_previous_payment, Some(101.0));
    // Spent to zero: no ratio.
    given.event(open + Duration::seconds(300), withdrawn(7_500));
    assert_eq!(
        given
            .score(&candidate(1, open + Duration::seconds(300)))
            .amount_to_balance,
        None
    );
}

#[test]
fn an_unknown_account_gets_neutral_features() {
    let v = vector(None, &candidate(2_000, at(A)));
    assert_eq!((v.amount_minor, v.is_online), (2_000, false));
    assert_eq!((counts(&v), sums(&v)), ([0; 4], [0; 4]));
    assert_eq!(
        v.first_time_at_merchant,
        Some(true),
        "no earlier payment anywhere"
    );
    assert_eq!(
        (
            v.merchant_country_differs,
            v.local_hour,
            v.amount_to_balance,
            v.account_age_seconds
        ),
        (None, None, None, None)
    );
    assert_eq!(
        (
            v.seconds_since_previous_event,
            v.seconds_since_previous_payment,
            v.online_share_24h
        ),
        (None, None, None)
    );
}

#[test]
fn absurd_amounts_saturate_or_read_null_and_never_panic() {
    let mut given = Given::account("DE", "EUR", at(T0));
    for _ in 0..3 {
        given.event(
            at(A),
            payment(i64::MAX).declined(DeclineReason::AmountOutOfRange),
        );
        given.event(at(A), withdrawn(i64::MAX));
        given.event(at(A), deposited(i64::MAX));
    }
    given.event(
        at(A),
        payment(i64::MIN)
            .online()
            .declined(DeclineReason::AmountOutOfRange),
    );
    let v = given.score(&candidate(i64::MIN, at(A)));
    // 3 × i64::MAX + i64::MIN does not fit i64: clamped.
    assert_eq!(v.card_payments_sum_24h, i64::MAX);
    assert_eq!(v.withdrawals_sum_24h, i64::MAX);
    // Σx² of three i64::MAX overflows i128: unknown, not wrong.
    assert!(given.state().amounts.overflowed);
    assert_eq!(
        (v.amount_mean, v.amount_std, v.amount_zscore),
        (None, None, None)
    );
    assert_eq!(
        v.small_online_payments_10m, 1,
        "a negative amount is at most 5 EUR"
    );
    assert_eq!(v.amount_to_balance, None, "the balance is 0");
}

#[test]
fn a_seeded_traffic_feed_folds_without_refusal_and_rows_match_their_events() {
    let events: Vec<Envelope> = Feed::new(11, 25, 3)
        .take(3_000)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let scored = events
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                AccountEvent::CardPaymentApproved(_)
                    | AccountEvent::CardPaymentDeclined(_)
                    | AccountEvent::MoneyWithdrawn(_)
            )
        })
        .count();
    let history = fold_history::<FeatureFold>(events.clone(), AccountFeatures::version);
    assert!(history.refused.is_empty(), "{:?}", history.refused.first());
    let rows: Vec<Row> = history.effects.into_iter().flatten().collect();
    assert_eq!(rows.len(), scored);
    assert!(scored > 100, "the feed has payments");
    for row in &rows {
        assert!(row.feature_time_micros >= row.event_time.timestamp_micros());
        assert!(row
            .features
            .account_age_seconds
            .is_some_and(|age| age >= 0.0));
        assert!(row
            .features
            .seconds_since_previous_event
            .is_some_and(|s| s >= 0.0));
    }
}

#[test]
fn folding_in_place_gives_the_states_and_rows_of_folding_a_copy_and_a_refusal_changes_nothing() {
    let events: Vec<Envelope> = Feed::new(12, 25, 3)
        .take(3_000)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let mut copied: std::collections::HashMap<AccountId, AccountFeatures> = Default::default();
    let mut in_place: std::collections::HashMap<AccountId, Option<AccountFeatures>> =
        Default::default();
    let mut rows = 0;
    for event in &events {
        let slot = in_place.entry(event.account_id).or_default();
        // A duplicate of the event before is refused, and leaves the state as it was.
        if let Some(before) = slot.clone() {
            let duplicate = envelope(event.event.clone())
                .account(event.account_id)
                .version(before.version())
                .build();
            assert!(apply_in_place(slot, &duplicate).is_err());
            assert_eq!(slot.as_ref(), Some(&before));
        }
        let (next, row) = apply(copied.get(&event.account_id), event).expect("folds");
        let in_place_row = apply_in_place(slot, event).expect("folds in place");
        assert_eq!(slot.as_ref(), Some(&next), "{event:?}");
        assert_eq!(in_place_row, row);
        rows += usize::from(row.is_some());
        copied.insert(event.account_id, next);
    }
    assert!(rows > 100, "the feed has payments");
}

#[test]
fn the_columns_are_the_fields_in_order_with_their_types() {
    // Every feature set, then every feature null.
    let mut full = Given::account("DE", "EUR", at(T0));
    full.event(at(A), deposited(10_000));
    full.event(at(A), payment(100).online().approved());
    full.event(at(A), payment(300).approved());
    let full = full.score(&candidate(200, at(A)));
    let mut empty = vector(None, &candidate(200, at(A)));
    empty.first_time_at_merchant = None;

    let json = serde_json::to_string(&full).expect("json");
    let positions: Vec<usize> = FeatureVector::NAMES
        .iter()
        .map(|name| json.find(&format!("\"{name}\":")).expect(name))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "JSON order = NAMES"
    );
    let fields = serde_json::to_value(&full).expect("json");
    assert_eq!(fields.as_object().map(|o| o.len()), Some(FEATURE_COUNT));

    for v in [&full, &empty] {
        for (column, value) in FeatureVector::COLUMNS.iter().zip(v.values()) {
            let kind = match value {
                Value::Int64(_) => Some(ColumnKind::Int64),
                Value::UInt32(_) => Some(ColumnKind::UInt32),
                Value::Float64(_) => Some(ColumnKind::Float64),
                Value::Bool(_) => Some(ColumnKind::Bool),
                Value::Null => None,
            };
            match kind {
                Some(kind) => assert_eq!(kind, column.kind, "{}", column.name),
                None => assert!(column.nullable, "{} is null", column.name),
            }
        }
    }
    assert!(full.values().iter().all(|v| *v != Value::Null), "{full:?}");
    assert_eq!(FEATURE_SET_VERSION, "fraud-v1");
}
