//! The seeded traffic model of Prism's test data and load: pure and seeded, so the same
//! seed always yields the same sequence (only the account ids, which the command service
//! assigns, and the idempotency keys, which name a run, differ between runs of
//! `prismctl loadgen`).
//!
//! # The sequence
//! 1. One `open` per account, across a weighted mix of countries and their currencies.
//! 2. One initial deposit per account (a salary or savings transfer).
//! 3. Everyday traffic, forever: deposits, withdrawals (ATM, branch, online; mostly within
//!    the balance and the daily limit, a few deliberately over) and domestic card payments at
//!    a point of sale (real merchant category codes, plausible merchants and amounts).
//! 4. Mixed in, a `suspicious_share` of the steps: card testing (a burst of tiny online
//!    payments at distinct merchants abroad in quick succession, sometimes followed by the
//!    bank freezing the account and unfreezing it a little later) and the occasional freeze
//!    and unfreeze for other reasons.
//! 5. With [`Traffic::with_fraud_reports`], every card-testing payment is reported as fraud
//!    a while later ([`Op::ReportFraud`]), so a run yields labelled data for the fraud
//!    features. Off by default: without it the sequence is the same as before reports
//!    existed.
//!
//! Amounts are chosen in euro cents and converted with an integer rate per currency into
//! the account's minor units, so 10 EUR is 1 000 cents, about 1 620 yen (JPY has no minor
//! unit) and 3 300 fils (KWD has three decimals); nothing here is ever a float.
//!
//! The model keeps a shadow of each account (balance, withdrawn today, frozen) assuming its
//! own requests succeed, to keep most withdrawals within the rules; with requests in flight
//! concurrently the server may still decide some differently, which is fine.
//!
//! # Commands or events
//! [`Traffic`] yields requests ([`Op`]) for a client of the command API to send
//! (`prismctl loadgen`, `demo`, the benches). [`Events`] yields the envelopes the command
//! service would store for the same sequence, with seeded ids and times: what a projector
//! (or a bench of one) consumes without a command service. This crate cannot use the
//! command service's rules, so [`Events`] decides with the few of them this traffic can
//! break (balance, daily withdrawal limit, frozen accounts); `prismctl`'s tests run the same
//! sequence through the real rules and require the very same envelopes.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::event::{
    AccountFrozen, AccountOpened, AccountUnfrozen, CardChannel, CardPayment, CardPaymentApproved,
    CardPaymentDeclined, DeclineReason, MinorUnits, MoneyDeposited, MoneyWithdrawn,
    PaymentReportedFraudulent, WithdrawalChannel,
};
use crate::{AccountEvent, AccountId, Country, Currency, Envelope};

/// A country accounts are opened in: its currency and how money looks there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Market {
    pub country: &'static str,
    pub currency: &'static str,
    /// Digits after the decimal point (ISO 4217): 2 for EUR, 0 for JPY, 3 for KWD.
    pub exponent: u32,
    /// Major units of the currency per euro, times 1 000 (an integer rate, no floats).
    pub per_eur_milli: i64,
    /// The smallest banknote an ATM hands out, in minor units.
    pub note_minor: i64,
    /// Relative share of accounts opened here.
    pub weight: u32,
    pub cities: &'static [&'static str],
    pub first_names: &'static [&'static str],
    pub last_names: &'static [&'static str],
}

impl Market {
    /// Converts an amount in euro cents into this currency's minor units (at least 1).
    pub fn minor_from_eur_cents(&self, eur_cents: i64) -> i64 {
        let scale = 10_i64.pow(self.exponent);
        (eur_cents * self.per_eur_milli * scale / 100_000).max(1)
    }

    /// Like [`Self::minor_from_eur_cents`], rounded to whole banknotes (at least one).
    pub fn notes_from_eur_cents(&self, eur_cents: i64) -> i64 {
        let minor = self.minor_from_eur_cents(eur_cents);
        (minor / self.note_minor).max(1) * self.note_minor
    }
}

const GERMAN_FIRST: &[&str] = &[
    "Lukas", "Anna", "Jonas", "Lea", "Felix", "Mia", "Paul", "Sophie", "Emil", "Hannah", "Zoë",
];
const GERMAN_LAST: &[&str] = &[
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Schäfer",
];
const FRENCH_FIRST: &[&str] = &[
    "Louis", "Camille", "Hugo", "Léa", "Jules", "Chloé", "Arthur", "Manon", "Raphaël", "Inès",
];
const FRENCH_LAST: &[&str] = &[
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Moreau",
];
const SPANISH_FIRST: &[&str] = &[
    "Hugo",
    "Lucía",
    "Martín",
    "Sofía",
    "Pablo",
    "Martina",
    "Daniel",
    "Julia",
    "Alejandro",
    "Paula",
];
const SPANISH_LAST: &[&str] = &[
    "García",
    "Fernández",
    "González",
    "Rodríguez",
    "López",
    "Martínez",
    "Sánchez",
    "Pérez",
    "Gómez",
    "Ruiz",
];
const ITALIAN_FIRST: &[&str] = &[
    "Leonardo",
    "Sofia",
    "Francesco",
    "Giulia",
    "Alessandro",
    "Aurora",
    "Lorenzo",
    "Alice",
    "Mattia",
    "Ginevra",
];
const ITALIAN_LAST: &[&str] = &[
    "Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci", "Marino",
    "Greco",
];
const DUTCH_FIRST: &[&str] = &[
    "Daan", "Emma", "Sem", "Julia", "Lucas", "Tess", "Levi", "Zoë", "Finn", "Sara",
];
const DUTCH_LAST: &[&str] = &[
    "de Jong",
    "Jansen",
    "de Vries",
    "van den Berg",
    "van Dijk",
    "Bakker",
    "Janssen",
    "Visser",
    "Smit",
    "Meijer",
];
const ENGLISH_FIRST: &[&str] = &[
    "Oliver", "Olivia", "George", "Amelia", "Harry", "Isla", "Noah", "Ava", "Jack", "Emily",
];
const ENGLISH_LAST: &[&str] = &[
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Evans",
];
const AMERICAN_FIRST: &[&str] = &[
    "Liam",
    "Olivia",
    "Noah",
    "Emma",
    "James",
    "Charlotte",
    "Elijah",
    "Sophia",
    "Mateo",
    "Mia",
];
const AMERICAN_LAST: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Nguyen",
];
const JAPANESE_FIRST: &[&str] = &[
    "Haruto", "Himari", "Sota", "Yui", "Riku", "Aoi", "Yuto", "Mei", "Sora", "Rin",
];
const JAPANESE_LAST: &[&str] = &[
    "Sato",
    "Suzuki",
    "Takahashi",
    "Tanaka",
    "Watanabe",
    "Ito",
    "Yamamoto",
    "Nakamura",
    "Kobayashi",
    "Kato",
];
const SWISS_FIRST: &[&str] = &[
    "Noah", "Mia", "Luca", "Emma", "Leon", "Lina", "Matteo", "Elena", "David", "Lara",
];
const SWISS_LAST: &[&str] = &[
    "Müller",
    "Meier",
    "Schmid",
    "Keller",
    "Weber",
    "Huber",
    "Meyer",
    "Schneider",
    "Steiner",
    "Fischer",
];
const SWEDISH_FIRST: &[&str] = &[
    "William", "Alice", "Liam", "Maja", "Noah", "Elsa", "Hugo", "Astrid", "Oscar", "Wilma",
];
const SWEDISH_LAST: &[&str] = &[
    "Andersson",
    "Johansson",
    "Karlsson",
    "Nilsson",
    "Eriksson",
    "Larsson",
    "Olsson",
    "Persson",
    "Svensson",
    "Gustafsson",
];
const NORDIC_FIRST: &[&str] = &[
    "Jakob", "Nora", "Emil", "Emma", "Noah", "Ella", "William", "Olivia", "Oskar", "Ida",
];
const NORDIC_LAST: &[&str] = &[
    "Hansen",
    "Johansen",
    "Olsen",
    "Larsen",
    "Andersen",
    "Nielsen",
    "Pedersen",
    "Kristiansen",
    "Jensen",
    "Berg",
];
const POLISH_FIRST: &[&str] = &[
    "Jan",
    "Zofia",
    "Antoni",
    "Hanna",
    "Aleksander",
    "Julia",
    "Franciszek",
    "Maja",
    "Nikodem",
    "Laura",
];
const POLISH_LAST: &[&str] = &[
    "Nowak",
    "Kowalski",
    "Wiśniewski",
    "Wójcik",
    "Kowalczyk",
    "Kamiński",
    "Lewandowski",
    "Zieliński",
    "Szymański",
    "Woźniak",
];
const ARABIC_FIRST: &[&str] = &[
    "Mohammed", "Fatima", "Abdullah", "Maryam", "Ahmad", "Noura", "Yousef", "Sara", "Khalid",
    "Dana",
];
const ARABIC_LAST: &[&str] = &[
    "Al-Sabah",
    "Al-Mutairi",
    "Al-Azmi",
    "Al-Enezi",
    "Al-Rashidi",
    "Al-Shammari",
    "Al-Ajmi",
    "Al-Hajri",
    "Al-Kandari",
    "Al-Otaibi",
];

/// Where Prism's synthetic customers live. Weights sum to 100.
pub const MARKETS: &[Market] = &[
    Market {
        country: "DE",
        currency: "EUR",
        exponent: 2,
        per_eur_milli: 1_000,
        note_minor: 1_000,
        weight: 17,
        cities: &["Berlin", "Hamburg", "München", "Köln", "Leipzig"],
        first_names: GERMAN_FIRST,
        last_names: GERMAN_LAST,
    },
    Market {
        country: "FR",
        currency: "EUR",
        exponent: 2,
        per_eur_milli: 1_000,
        note_minor: 1_000,
        weight: 12,
        cities: &["Paris", "Lyon", "Marseille", "Toulouse", "Lille"],
        first_names: FRENCH_FIRST,
        last_names: FRENCH_LAST,
    },
    Market {
        country: "ES",
        currency: "EUR",
        exponent: 2,
        per_eur_milli: 1_000,
        note_minor: 1_000,
        weight: 7,
        cities: &["Madrid", "Barcelona", "Valencia", "Sevilla", "Bilbao"],
        first_names: SPANISH_FIRST,
        last_names: SPANISH_LAST,
    },
    Market {
        country: "IT",
        currency: "EUR",
        exponent: 2,
        per_eur_milli: 1_000,
        note_minor: 1_000,
        weight: 7,
        cities: &["Roma", "Milano", "Napoli", "Torino", "Bologna"],
        first_names: ITALIAN_FIRST,
        last_names: ITALIAN_LAST,
    },
    Market {
        country: "NL",
        currency: "EUR",
        exponent: 2,
        per_eur_milli: 1_000,
        note_minor: 1_000,
        weight: 5,
        cities: &["Amsterdam", "Rotterdam", "Utrecht", "Den Haag", "Eindhoven"],
        first_names: DUTCH_FIRST,
        last_names: DUTCH_LAST,
    },
    Market {
        country: "GB",
        currency: "GBP",
        exponent: 2,
        per_eur_milli: 850,
        note_minor: 1_000,
        weight: 14,
        cities: &["London", "Manchester", "Birmingham", "Leeds", "Glasgow"],
        first_names: ENGLISH_FIRST,
        last_names: ENGLISH_LAST,
    },
    Market {
        country: "US",
        currency: "USD",
        exponent: 2,
        per_eur_milli: 1_090,
        note_minor: 2_000,
        weight: 13,
        cities: &["New York", "Chicago", "Austin", "Seattle", "Boston"],
        first_names: AMERICAN_FIRST,
        last_names: AMERICAN_LAST,
    },
    Market {
        country: "JP",
        currency: "JPY",
        exponent: 0,
        per_eur_milli: 162_000,
        note_minor: 1_000,
        weight: 9,
        cities: &["Tokyo", "Osaka", "Yokohama", "Nagoya", "Sapporo"],
        first_names: JAPANESE_FIRST,
        last_names: JAPANESE_LAST,
    },
    Market {
        country: "CH",
        currency: "CHF",
        exponent: 2,
        per_eur_milli: 950,
        note_minor: 2_000,
        weight: 4,
        cities: &["Zürich", "Genève", "Basel", "Bern", "Lausanne"],
        first_names: SWISS_FIRST,
        last_names: SWISS_LAST,
    },
    Market {
        country: "SE",
        currency: "SEK",
        exponent: 2,
        per_eur_milli: 11_500,
        note_minor: 10_000,
        weight: 4,
        cities: &["Stockholm", "Göteborg", "Malmö", "Uppsala", "Lund"],
        first_names: SWEDISH_FIRST,
        last_names: SWEDISH_LAST,
    },
    Market {
        country: "NO",
        currency: "NOK",
        exponent: 2,
        per_eur_milli: 11_700,
        note_minor: 10_000,
        weight: 2,
        cities: &["Oslo", "Bergen", "Trondheim", "Stavanger", "Tromsø"],
        first_names: NORDIC_FIRST,
        last_names: NORDIC_LAST,
    },
    Market {
        country: "DK",
        currency: "DKK",
        exponent: 2,
        per_eur_milli: 7_460,
        note_minor: 5_000,
        weight: 2,
        cities: &["København", "Aarhus", "Odense", "Aalborg", "Esbjerg"],
        first_names: NORDIC_FIRST,
        last_names: NORDIC_LAST,
    },
    Market {
        country: "PL",
        currency: "PLN",
        exponent: 2,
        per_eur_milli: 4_300,
        note_minor: 5_000,
        weight: 3,
        cities: &["Warszawa", "Kraków", "Wrocław", "Gdańsk", "Poznań"],
        first_names: POLISH_FIRST,
        last_names: POLISH_LAST,
    },
    Market {
        country: "KW",
        currency: "KWD",
        exponent: 3,
        per_eur_milli: 330,
        note_minor: 5_000,
        weight: 1,
        cities: &["Kuwait City", "Hawalli", "Salmiya", "Jahra", "Fahaheel"],
        first_names: ARABIC_FIRST,
        last_names: ARABIC_LAST,
    },
];

/// A kind of point-of-sale merchant: its ISO 18245 category, names, and usual ticket size.
#[derive(Debug)]
struct MerchantKind {
    mcc: &'static str,
    names: &'static [&'static str],
    /// Ticket range in euro cents.
    min_eur_cents: i64,
    max_eur_cents: i64,
    weight: u32,
}

const POS_MERCHANTS: &[MerchantKind] = &[
    MerchantKind {
        mcc: "5411",
        names: &[
            "Fresh Market",
            "City Grocer",
            "Corner Shop",
            "Daily Foods",
            "Family Supermarket",
        ],
        min_eur_cents: 300,
        max_eur_cents: 15_000,
        weight: 30,
    },
    MerchantKind {
        mcc: "5812",
        names: &[
            "Trattoria Roma",
            "The Old Oak",
            "Bistro Central",
            "Golden Dragon",
            "Sushi Hana",
        ],
        min_eur_cents: 1_500,
        max_eur_cents: 12_000,
        weight: 13,
    },
    MerchantKind {
        mcc: "5814",
        names: &[
            "Burger Corner",
            "Café Rosa",
            "Bagel Bros",
            "Kebab House",
            "Noodle Bar",
        ],
        min_eur_cents: 250,
        max_eur_cents: 2_500,
        weight: 16,
    },
    MerchantKind {
        mcc: "5541",
        names: &["Fuel Stop", "Highway Petrol", "City Gas", "Express Fuel"],
        min_eur_cents: 2_000,
        max_eur_cents: 9_000,
        weight: 10,
    },
    MerchantKind {
        mcc: "5912",
        names: &["Central Pharmacy", "Green Cross Apotheke", "Health Plus"],
        min_eur_cents: 400,
        max_eur_cents: 6_000,
        weight: 8,
    },
    MerchantKind {
        mcc: "4111",
        names: &["Metro Transit", "City Bus", "Regional Rail"],
        min_eur_cents: 200,
        max_eur_cents: 4_000,
        weight: 9,
    },
    MerchantKind {
        mcc: "5311",
        names: &[
            "Grand Department Store",
            "Galeria Plaza",
            "Main Street Stores",
        ],
        min_eur_cents: 2_000,
        max_eur_cents: 30_000,
        weight: 5,
    },
    MerchantKind {
        mcc: "5732",
        names: &["Tech Point", "Electro World", "Gadget Hub"],
        min_eur_cents: 3_000,
        max_eur_cents: 120_000,
        weight: 3,
    },
    MerchantKind {
        mcc: "5942",
        names: &["Book Nook", "Page One Books"],
        min_eur_cents: 800,
        max_eur_cents: 6_000,
        weight: 3,
    },
    MerchantKind {
        mcc: "5999",
        names: &["Gift Corner", "Hobby Shop", "Flower Stall"],
        min_eur_cents: 500,
        max_eur_cents: 10_000,
        weight: 3,
    },
];

/// Card-not-present merchants that card testers favour: digital goods, top-ups, donations.
const CARD_TESTING_MERCHANTS: &[(&str, &str)] = &[
    ("5815", "STREAMBOX*DIGITAL"),
    ("5816", "GAMECOINS*TOPUP"),
    ("5816", "PIXELPLAY STORE"),
    ("5818", "APPVAULT*ONLINE"),
    ("5818", "EBOOKS NOW"),
    ("4816", "CLOUDHOST.IO"),
    ("4816", "VPN-SECURE NET"),
    ("5968", "BOXCLUB SUBSCRIPTION"),
    ("5968", "DAILYNEWS PLUS"),
    ("8398", "HELPING HANDS DONATE"),
    ("5734", "KEYSOFT LICENSES"),
    ("4814", "TOPUP MOBILE CREDIT"),
    ("5947", "QUICKGIFT CARDS"),
    ("5999", "RANDOM GOODS WEB"),
];

/// Merchant countries card-testing bursts come from (any but the account's own).
const ABROAD: &[&str] = &[
    "US", "GB", "NL", "BR", "IN", "ID", "PH", "VN", "TR", "NG", "MX", "CN", "HK", "SG",
];

/// What a step asks the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Open {
        holder_name: String,
        email: String,
        country: &'static str,
        currency: &'static str,
        daily_withdrawal_limit_minor: i64,
    },
    Deposit {
        amount_minor: i64,
        description: &'static str,
    },
    Withdraw {
        amount_minor: i64,
        channel: &'static str,
        description: &'static str,
    },
    Pay {
        amount_minor: i64,
        merchant_name: String,
        merchant_category: &'static str,
        merchant_country: &'static str,
        channel: &'static str,
    },
    Freeze {
        reason: &'static str,
    },
    Unfreeze,
    /// Reports an earlier card payment of the account as fraud.
    ReportFraud {
        payment: PaymentRef,
        reason: &'static str,
    },
}

/// The card payment a fraud report names. The generator knows only the step that made it
/// ([`PaymentRef::Step`]); the payment's event id comes back in that step's answer (or from
/// [`Events`]), and a client resolves the report with it ([`Op::resolve_payment`]) before
/// sending. An unresolved report's path names the step, which the server refuses (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentRef {
    /// The `seq` of the [`Step`] that made the payment.
    Step(u64),
    /// The payment's event id.
    Event(Uuid),
}

/// The commands, in the order summaries list them.
pub const COMMANDS: &[&str] = &[
    "open",
    "deposit",
    "withdraw",
    "pay",
    "freeze",
    "unfreeze",
    "report_fraud",
];

impl Op {
    /// The command's name, one of [`COMMANDS`].
    pub fn command(&self) -> &'static str {
        match self {
            Self::Open { .. } => "open",
            Self::Deposit { .. } => "deposit",
            Self::Withdraw { .. } => "withdraw",
            Self::Pay { .. } => "pay",
            Self::Freeze { .. } => "freeze",
            Self::Unfreeze => "unfreeze",
            Self::ReportFraud { .. } => "report_fraud",
        }
    }

    /// The step whose payment a fraud report still waits for, if this is one.
    pub fn unresolved_payment(&self) -> Option<u64> {
        match self {
            Self::ReportFraud {
                payment: PaymentRef::Step(seq),
                ..
            } => Some(*seq),
            _ => None,
        }
    }

    /// Names the payment's event id in a fraud report (no-op for other commands).
    pub fn resolve_payment(&mut self, event_id: Uuid) {
        if let Self::ReportFraud { payment, .. } = self {
            *payment = PaymentRef::Event(event_id);
        }
    }

    /// The request path; `account_id` is ignored for `open`.
    pub fn path(&self, account_id: &str) -> String {
        match self {
            Self::Open { .. } => "/v1/accounts".to_owned(),
            Self::Deposit { .. } => format!("/v1/accounts/{account_id}/deposits"),
            Self::Withdraw { .. } => format!("/v1/accounts/{account_id}/withdrawals"),
            Self::Pay { .. } => format!("/v1/accounts/{account_id}/payments"),
            Self::Freeze { .. } => format!("/v1/accounts/{account_id}/freeze"),
            Self::Unfreeze => format!("/v1/accounts/{account_id}/unfreeze"),
            Self::ReportFraud { payment, .. } => {
                let payment = match payment {
                    PaymentRef::Event(id) => id.to_string(),
                    PaymentRef::Step(seq) => format!("step-{seq}"),
                };
                format!("/v1/accounts/{account_id}/payments/{payment}/fraud-reports")
            }
        }
    }

    /// The JSON request body, as the HTTP API defines it.
    pub fn body(&self) -> Value {
        match self {
            Self::Open {
                holder_name,
                email,
                country,
                currency,
                daily_withdrawal_limit_minor,
            } => json!({
                "holder_name": holder_name,
                "email": email,
                "country": country,
                "currency": currency,
                "daily_withdrawal_limit_minor": daily_withdrawal_limit_minor,
            }),
            Self::Deposit {
                amount_minor,
                description,
            } => json!({ "amount_minor": amount_minor, "description": description }),
            Self::Withdraw {
                amount_minor,
                channel,
                description,
            } => {
                json!({ "amount_minor": amount_minor, "channel": channel, "description": description })
            }
            Self::Pay {
                amount_minor,
                merchant_name,
                merchant_category,
                merchant_country,
                channel,
            } => json!({
                "amount_minor": amount_minor,
                "merchant_name": merchant_name,
                "merchant_category": merchant_category,
                "merchant_country": merchant_country,
                "channel": channel,
            }),
            Self::Freeze { reason } | Self::ReportFraud { reason, .. } => {
                json!({ "reason": reason })
            }
            Self::Unfreeze => json!({}),
        }
    }

    /// The amount, for the commands that move money.
    pub fn amount_minor(&self) -> Option<i64> {
        match self {
            Self::Deposit { amount_minor, .. }
            | Self::Withdraw { amount_minor, .. }
            | Self::Pay { amount_minor, .. } => Some(*amount_minor),
            _ => None,
        }
    }
}

/// Why the model produced a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// Opening an account and its first deposit.
    Onboarding,
    /// Everyday banking that should pass the rules.
    Everyday,
    /// A withdrawal meant to break the balance or the daily limit.
    OverLimit,
    /// A burst of tiny online payments abroad, and the bank's reaction to it.
    CardTesting,
    /// A freeze and its later unfreeze for other reasons.
    Hold,
    /// A fraud report of an earlier card-testing payment.
    FraudReport,
}

impl Pattern {
    pub fn is_suspicious(self) -> bool {
        matches!(self, Self::CardTesting | Self::Hold)
    }
}

/// One request of the sequence: which account (by index in opening order) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 0, 1, 2… in sequence order.
    pub seq: u64,
    /// Index of the account (the `account`-th `open` of the sequence).
    pub account: usize,
    pub op: Op,
    pub pattern: Pattern,
}

/// What the model believes about an account.
#[derive(Debug, Clone)]
struct Shadow {
    market: &'static Market,
    balance_minor: i64,
    withdrawn_minor: i64,
    limit_minor: i64,
    frozen: bool,
}

/// Share of everyday steps per command, in percent.
pub const EVERYDAY_DEPOSIT_PERCENT: u32 = 22;
pub const EVERYDAY_WITHDRAW_PERCENT: u32 = 18;
pub const EVERYDAY_PAY_PERCENT: u32 = 60;
const _: () =
    assert!(EVERYDAY_DEPOSIT_PERCENT + EVERYDAY_WITHDRAW_PERCENT + EVERYDAY_PAY_PERCENT == 100);
/// Share of withdrawals that deliberately break the balance or the daily limit, in percent.
pub const OVER_LIMIT_PERCENT: u32 = 4;
/// Card-testing bursts: this many payments (inclusive range).
pub const BURST_MIN: usize = 6;
pub const BURST_MAX: usize = 14;
/// Percent of card-testing bursts after which the bank freezes the account.
const FREEZE_AFTER_BURST_PERCENT: u32 = 35;
/// Percent of suspicious episodes that are a hold (freeze, later unfreeze) rather than a burst.
const HOLD_PERCENT: u32 = 15;
/// The daily withdrawal limit accounts are opened with, in euro cents.
const DAILY_LIMIT_EUR_CENTS: i64 = 500_000;
/// Steps between a freeze and its unfreeze (inclusive range).
const UNFREEZE_AFTER_MIN: u64 = 150;
const UNFREEZE_AFTER_MAX: u64 = 600;
/// What the reports of card-testing payments say.
pub const FRAUD_REPORT_REASON: &str = "Cardholder disputes: card testing";

/// The seeded generator: an endless iterator of [`Step`]s.
#[derive(Debug, Clone)]
pub struct Traffic {
    rng: ChaCha8Rng,
    accounts: Vec<Shadow>,
    suspicious_share: f64,
    seq: u64,
    /// Steps already decided, emitted before anything new (a burst in progress).
    queued: std::collections::VecDeque<(usize, Op, Pattern)>,
    /// Unfreezes due at a sequence number, with the pattern of their freeze.
    due: BTreeMap<u64, Vec<(usize, Pattern)>>,
    /// Mean steps between a card-testing payment and its fraud report; `None`: no reports.
    report_after: Option<u64>,
    /// Fraud reports due at a sequence number: `(account, step of the payment)`.
    reports_due: BTreeMap<u64, Vec<(usize, u64)>>,
}

impl Traffic {
    /// A model of `accounts` accounts (at least one) with a `suspicious_share` (0..=1) of
    /// suspicious steps after onboarding.
    pub fn new(seed: u64, accounts: usize, suspicious_share: f64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let total_weight: u32 = MARKETS.iter().map(|m| m.weight).sum();
        let shadows = (0..accounts.max(1))
            .map(|_| {
                let mut pick = rng.gen_range(0..total_weight);
                let market = MARKETS
                    .iter()
                    .find(|m| {
                        if pick < m.weight {
                            true
                        } else {
                            pick -= m.weight;
                            false
                        }
                    })
                    .unwrap_or(&MARKETS[0]);
                Shadow {
                    market,
                    balance_minor: 0,
                    withdrawn_minor: 0,
                    // 5 000 EUR a day, in banknotes of the currency.
                    limit_minor: market.notes_from_eur_cents(DAILY_LIMIT_EUR_CENTS),
                    frozen: false,
                }
            })
            .collect();
        Self {
            rng,
            accounts: shadows,
            suspicious_share: suspicious_share.clamp(0.0, 1.0),
            seq: 0,
            queued: Default::default(),
            due: BTreeMap::new(),
            report_after: None,
            reports_due: BTreeMap::new(),
        }
    }

    /// Reports every card-testing payment as fraud, uniformly between `mean_steps / 2` and
    /// `3 · mean_steps / 2` steps after it (at least one step); 0 turns reports off.
    pub fn with_fraud_reports(mut self, mean_steps: u64) -> Self {
        self.report_after = (mean_steps > 0).then_some(mean_steps);
        self
    }

    /// The number of accounts the sequence opens first.
    #[cfg(test)]
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// The market account `index` was opened in.
    #[cfg(test)]
    pub fn market(&self, index: usize) -> &'static Market {
        self.accounts[index].market
    }

    fn next_step(&mut self) -> (usize, Op, Pattern) {
        let n = self.accounts.len() as u64;
        if self.seq < n {
            let index = self.seq as usize;
            return (index, self.open(index), Pattern::Onboarding);
        }
        if self.seq < 2 * n {
            let index = (self.seq - n) as usize;
            return (index, self.initial_deposit(index), Pattern::Onboarding);
        }
        if let Some(accounts) = self.due.remove(&self.seq) {
            for (index, pattern) in accounts {
                self.queued.push_back((index, Op::Unfreeze, pattern));
            }
        }
        if let Some(reports) = self.reports_due.remove(&self.seq) {
            for (index, payment) in reports {
                let op = Op::ReportFraud {
                    payment: PaymentRef::Step(payment),
                    reason: FRAUD_REPORT_REASON,
                };
                self.queued.push_back((index, op, Pattern::FraudReport));
            }
        }
        if let Some(step) = self.queued.pop_front() {
            return step;
        }
        if self.rng.gen_bool(self.episode_probability()) {
            self.suspicious_episode();
            if let Some(step) = self.queued.pop_front() {
                return step;
            }
        }
        self.everyday()
    }

    /// The chance that a fresh step starts a suspicious episode, chosen so that episodes
    /// make up `suspicious_share` of all steps: with `q` the start probability and `L` the
    /// mean episode length, the share is `qL / (qL + 1 - q)`.
    fn episode_probability(&self) -> f64 {
        let s = self.suspicious_share;
        if s <= 0.0 {
            return 0.0;
        }
        let burst = (BURST_MIN + BURST_MAX) as f64 / 2.0;
        let freeze_pair = 2.0;
        let hold = HOLD_PERCENT as f64 / 100.0;
        let after_burst = FREEZE_AFTER_BURST_PERCENT as f64 / 100.0;
        let mean = hold * freeze_pair + (1.0 - hold) * (burst + after_burst * freeze_pair);
        (s / (mean * (1.0 - s) + s)).clamp(0.0, 1.0)
    }

    fn open(&mut self, index: usize) -> Op {
        let market = self.accounts[index].market;
        let first = *market.first_names.choose(&mut self.rng).unwrap_or(&"Alex");
        let last = *market.last_names.choose(&mut self.rng).unwrap_or(&"Doe");
        let email_name: String = format!("{first}.{last}")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect::<String>()
            .to_ascii_lowercase();
        Op::Open {
            holder_name: format!("{first} {last}"),
            email: format!("{email_name}.{index}@example.org"),
            country: market.country,
            currency: market.currency,
            daily_withdrawal_limit_minor: self.accounts[index].limit_minor,
        }
    }

    fn initial_deposit(&mut self, index: usize) -> Op {
        let cents = self.rng.gen_range(150_000..=600_000);
        self.deposit_of(index, cents, "Salary")
    }

    fn deposit_of(&mut self, index: usize, eur_cents: i64, description: &'static str) -> Op {
        let shadow = &mut self.accounts[index];
        let amount_minor = shadow.market.minor_from_eur_cents(eur_cents);
        shadow.balance_minor = shadow.balance_minor.saturating_add(amount_minor);
        Op::Deposit {
            amount_minor,
            description,
        }
    }

    fn random_account(&mut self) -> usize {
        self.rng.gen_range(0..self.accounts.len())
    }

    /// A skewed draw in `min..=max`: small tickets are more common than large ones.
    fn ticket(&mut self, min: i64, max: i64) -> i64 {
        let u: i64 = self.rng.gen_range(0..=1_000);
        min + (max - min) * u * u / 1_000_000
    }

    fn everyday(&mut self) -> (usize, Op, Pattern) {
        let index = self.random_account();
        let roll = self.rng.gen_range(0..100);
        if roll < EVERYDAY_DEPOSIT_PERCENT {
            return (index, self.everyday_deposit(index), Pattern::Everyday);
        }
        if roll < EVERYDAY_DEPOSIT_PERCENT + EVERYDAY_WITHDRAW_PERCENT {
            if self.rng.gen_range(0..100) < OVER_LIMIT_PERCENT {
                return (index, self.over_limit_withdrawal(index), Pattern::OverLimit);
            }
            if let Some(op) = self.withdrawal(index) {
                return (index, op, Pattern::Everyday);
            }
            // Too little left to take out here: someone else withdraws, or else tops up.
            for _ in 0..3 {
                let other = self.random_account();
                if let Some(op) = self.withdrawal(other) {
                    return (other, op, Pattern::Everyday);
                }
            }
            return (index, self.everyday_deposit(index), Pattern::Everyday);
        }
        (index, self.pos_payment(index), Pattern::Everyday)
    }

    fn everyday_deposit(&mut self, index: usize) -> Op {
        match self.rng.gen_range(0..10) {
            0..=1 => {
                let cents = self.rng.gen_range(150_000..=500_000);
                self.deposit_of(index, cents, "Salary")
            }
            2..=5 => {
                let cents = self.ticket(2_000, 80_000);
                self.deposit_of(index, cents, "Transfer from savings")
            }
            6..=7 => {
                let cents = self.ticket(1_000, 50_000);
                let market = self.accounts[index].market;
                let amount_minor = market.notes_from_eur_cents(cents);
                let shadow = &mut self.accounts[index];
                shadow.balance_minor = shadow.balance_minor.saturating_add(amount_minor);
                Op::Deposit {
                    amount_minor,
                    description: "Cash deposit",
                }
            }
            _ => {
                let cents = self.ticket(500, 20_000);
                self.deposit_of(index, cents, "Refund")
            }
        }
    }

    /// A withdrawal within the balance and the day's limit, or `None` if not even the
    /// smallest one fits.
    fn withdrawal(&mut self, index: usize) -> Option<Op> {
        let roll = self.rng.gen_range(0..10);
        let (channel, description, wanted_cents, notes) = match roll {
            0..=5 => ("atm", "ATM withdrawal", self.ticket(2_000, 40_000), true),
            6 => (
                "branch",
                "Cash at the counter",
                self.ticket(20_000, 150_000),
                true,
            ),
            _ => (
                "online",
                "Transfer to another bank",
                self.ticket(1_000, 80_000),
                false,
            ),
        };
        let shadow = &self.accounts[index];
        if shadow.frozen {
            return None;
        }
        let market = shadow.market;
        let room = shadow
            .balance_minor
            .min(shadow.limit_minor - shadow.withdrawn_minor);
        let wanted = if notes {
            market.notes_from_eur_cents(wanted_cents)
        } else {
            market.minor_from_eur_cents(wanted_cents)
        };
        let amount_minor = if notes {
            wanted.min(room / market.note_minor * market.note_minor)
        } else {
            wanted.min(room)
        };
        if amount_minor <= 0 {
            return None;
        }
        let shadow = &mut self.accounts[index];
        shadow.balance_minor -= amount_minor;
        shadow.withdrawn_minor += amount_minor;
        Some(Op::Withdraw {
            amount_minor,
            channel,
            description,
        })
    }

    /// A withdrawal the rules reject: more than the balance or than the day's limit allows.
    fn over_limit_withdrawal(&mut self, index: usize) -> Op {
        let shadow = &self.accounts[index];
        let market = shadow.market;
        let room = shadow
            .balance_minor
            .min(shadow.limit_minor - shadow.withdrawn_minor)
            .max(0);
        let extra = market.notes_from_eur_cents(self.ticket(2_000, 100_000));
        let channel = if self.rng.gen_bool(0.5) {
            "atm"
        } else {
            "online"
        };
        Op::Withdraw {
            amount_minor: room + extra,
            channel,
            description: "Withdrawal",
        }
    }

    fn pos_payment(&mut self, index: usize) -> Op {
        let total: u32 = POS_MERCHANTS.iter().map(|k| k.weight).sum();
        let mut pick = self.rng.gen_range(0..total);
        let kind = POS_MERCHANTS
            .iter()
            .find(|k| {
                if pick < k.weight {
                    true
                } else {
                    pick -= k.weight;
                    false
                }
            })
            .unwrap_or(&POS_MERCHANTS[0]);
        let market = self.accounts[index].market;
        let name = *kind.names.choose(&mut self.rng).unwrap_or(&"Shop");
        let city = *market.cities.choose(&mut self.rng).unwrap_or(&"");
        let cents = self.ticket(kind.min_eur_cents, kind.max_eur_cents);
        let amount_minor = market.minor_from_eur_cents(cents);
        let shadow = &mut self.accounts[index];
        if !shadow.frozen && shadow.balance_minor >= amount_minor {
            shadow.balance_minor -= amount_minor;
        }
        Op::Pay {
            amount_minor,
            merchant_name: format!("{name} {city}"),
            merchant_category: kind.mcc,
            merchant_country: market.country,
            channel: "pos",
        }
    }

    /// Queues a whole suspicious episode on one account that is not frozen.
    fn suspicious_episode(&mut self) {
        let mut candidate = None;
        for _ in 0..8 {
            let i = self.random_account();
            if !self.accounts[i].frozen {
                candidate = Some(i);
                break;
            }
        }
        let Some(index) = candidate else { return };
        if self.rng.gen_range(0..100) < HOLD_PERCENT {
            const REASONS: &[&str] = &[
                "Customer reported a lost card",
                "Unusual activity under review",
                "Know-your-customer documents expired",
            ];
            let reason = *REASONS.choose(&mut self.rng).unwrap_or(&REASONS[0]);
            self.queued
                .push_back((index, Op::Freeze { reason }, Pattern::Hold));
            self.schedule_unfreeze(index, Pattern::Hold);
            return;
        }
        let market = self.accounts[index].market;
        let len = self.rng.gen_range(BURST_MIN..=BURST_MAX);
        let abroad: Vec<&'static str> = ABROAD
            .iter()
            .copied()
            .filter(|c| *c != market.country)
            .collect();
        let merchant_country = *abroad.choose(&mut self.rng).unwrap_or(&"US");
        let merchants: Vec<&(&str, &str)> = CARD_TESTING_MERCHANTS
            .choose_multiple(&mut self.rng, len)
            .collect();
        for (mcc, name) in merchants {
            // Card testers probe with amounts a cardholder would not notice.
            let cents = self.rng.gen_range(10..=199);
            let amount_minor = market.minor_from_eur_cents(cents);
            let suffix: u16 = self.rng.gen_range(1000..10000);
            let shadow = &mut self.accounts[index];
            if shadow.balance_minor >= amount_minor {
                shadow.balance_minor -= amount_minor;
            }
            self.queued.push_back((
                index,
                Op::Pay {
                    amount_minor,
                    merchant_name: format!("{name} {suffix}"),
                    merchant_category: mcc,
                    merchant_country,
                    channel: "online",
                },
                Pattern::CardTesting,
            ));
        }
        if self.rng.gen_range(0..100) < FREEZE_AFTER_BURST_PERCENT {
            self.queued.push_back((
                index,
                Op::Freeze {
                    reason: "Suspected card testing",
                },
                Pattern::CardTesting,
            ));
            self.schedule_unfreeze(index, Pattern::CardTesting);
        }
    }

    /// Marks the account frozen and schedules its unfreeze a while later.
    fn schedule_unfreeze(&mut self, index: usize, pattern: Pattern) {
        self.accounts[index].frozen = true;
        let after = self.rng.gen_range(UNFREEZE_AFTER_MIN..=UNFREEZE_AFTER_MAX);
        let at = self.seq + self.queued.len() as u64 + after;
        self.due.entry(at).or_default().push((index, pattern));
    }
}

impl Iterator for Traffic {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        let (account, op, pattern) = self.next_step();
        if matches!(op, Op::Unfreeze) {
            self.accounts[account].frozen = false;
        }
        if let (Some(mean), Op::Pay { .. }, Pattern::CardTesting) =
            (self.report_after, &op, pattern)
        {
            let after = self
                .rng
                .gen_range(mean / 2..=mean.saturating_mul(3) / 2)
                .max(1);
            let at = self.seq.saturating_add(after);
            self.reports_due
                .entry(at)
                .or_default()
                .push((account, self.seq));
        }
        let step = Step {
            seq: self.seq,
            account,
            op,
            pattern,
        };
        self.seq += 1;
        Some(step)
    }
}

/// `source` of the envelopes [`Events`] yields: the command service's.
pub const EVENT_SOURCE: &str = "/prism/command";

/// The seeded sequence as stored events: every [`Traffic`] step decided against the state
/// the earlier events built, as the command service decides it: a rejected step (a
/// withdrawal over the balance or the day's limit, or from a frozen account; a freeze of a
/// frozen account) leaves no event, a card payment the balance cannot cover or on a frozen
/// account is a decline event. Yields `(account index, envelope)` forever; the same
/// arguments give the same envelopes, ids included.
#[derive(Debug, Clone)]
pub struct Events {
    traffic: Traffic,
    /// Account ids and event ids come from here (the traffic's generator decides the steps).
    rng: ChaCha8Rng,
    /// Each account's id and what the rules look at.
    accounts: Vec<(AccountId, Ledger)>,
    start_us: i64,
    step_us: i64,
    yielded: i64,
    /// Event ids of card-testing payments whose fraud report is still to come, by step.
    reported_later: HashMap<u64, Uuid>,
}

/// What the command service's rules need to know about an account to decide this traffic.
#[derive(Debug, Clone, Default)]
struct Ledger {
    version: u64,
    opened: bool,
    frozen: bool,
    balance_minor: MinorUnits,
    limit_minor: MinorUnits,
    /// The UTC day of the latest withdrawals and their sum.
    withdrawn: Option<(NaiveDate, MinorUnits)>,
}

impl Ledger {
    fn withdrawn_on(&self, day: NaiveDate) -> MinorUnits {
        match self.withdrawn {
            Some((latest, sum)) if latest == day => sum,
            _ => 0,
        }
    }

    fn covers(&self, amount_minor: MinorUnits) -> bool {
        self.balance_minor
            .checked_sub(amount_minor)
            .is_some_and(|left| left >= 0)
    }

    /// The event the command service stores for `op` at `time`, `None` for a rejection
    /// (or a code the contract does not know, which the model's tables never hold).
    fn decide(&self, op: &Op, time: DateTime<Utc>) -> Option<AccountEvent> {
        let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        if !self.opened {
            let Op::Open {
                holder_name,
                email,
                country,
                currency,
                daily_withdrawal_limit_minor,
            } = op
            else {
                return None;
            };
            return Some(AccountEvent::AccountOpened(AccountOpened {
                holder_name: holder_name.trim().to_owned(),
                email: email.trim().to_owned(),
                country: Country::parse(country).ok()?,
                currency: Currency::parse(currency).ok()?,
                daily_withdrawal_limit_minor: *daily_withdrawal_limit_minor,
            }));
        }
        Some(match op {
            Op::Open { .. } => return None,
            Op::Deposit {
                amount_minor,
                description,
            } => {
                self.balance_minor.checked_add(*amount_minor)?;
                AccountEvent::MoneyDeposited(MoneyDeposited {
                    amount_minor: *amount_minor,
                    description: text(description),
                })
            }
            Op::Withdraw {
                amount_minor,
                channel,
                description,
            } => {
                let within_limit = self
                    .withdrawn_on(time.date_naive())
                    .checked_add(*amount_minor)
                    .is_some_and(|total| total <= self.limit_minor);
                if self.frozen || !self.covers(*amount_minor) || !within_limit {
                    return None;
                }
                AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
                    amount_minor: *amount_minor,
                    description: text(description),
                    channel: withdrawal_channel(channel)?,
                })
            }
            Op::Pay {
                amount_minor,
                merchant_name,
                merchant_category,
                merchant_country,
                channel,
            } => {
                let payment = CardPayment {
                    amount_minor: *amount_minor,
                    merchant_name: merchant_name.trim().to_owned(),
                    merchant_category: (*merchant_category).to_owned(),
                    merchant_country: Country::parse(merchant_country).ok()?,
                    channel: card_channel(channel)?,
                };
                let decline_reason = if self.frozen {
                    Some(DeclineReason::AccountFrozen)
                } else if !self.covers(*amount_minor) {
                    Some(DeclineReason::InsufficientFunds)
                } else {
                    None
                };
                match decline_reason {
                    Some(decline_reason) => {
                        AccountEvent::CardPaymentDeclined(CardPaymentDeclined {
                            payment,
                            decline_reason,
                        })
                    }
                    None => AccountEvent::CardPaymentApproved(CardPaymentApproved { payment }),
                }
            }
            Op::Freeze { reason } if !self.frozen => AccountEvent::AccountFrozen(AccountFrozen {
                reason: reason.trim().to_owned(),
            }),
            Op::Unfreeze if self.frozen => AccountEvent::AccountUnfrozen(AccountUnfrozen {}),
            Op::Freeze { .. } | Op::Unfreeze => return None,
            Op::ReportFraud {
                payment: PaymentRef::Event(payment_event_id),
                reason,
            } => AccountEvent::PaymentReportedFraudulent(PaymentReportedFraudulent {
                payment_event_id: *payment_event_id,
                reason: reason.trim().to_owned(),
            }),
            Op::ReportFraud {
                payment: PaymentRef::Step(_),
                ..
            } => return None,
        })
    }

    fn apply(&mut self, envelope: &Envelope) {
        match &envelope.event {
            AccountEvent::AccountOpened(e) => {
                self.opened = true;
                self.limit_minor = e.daily_withdrawal_limit_minor;
            }
            AccountEvent::MoneyDeposited(e) => {
                self.balance_minor = self.balance_minor.saturating_add(e.amount_minor);
            }
            AccountEvent::MoneyWithdrawn(e) => {
                self.balance_minor = self.balance_minor.saturating_sub(e.amount_minor);
                let day = envelope.time.date_naive();
                let sum = self.withdrawn_on(day).saturating_add(e.amount_minor);
                self.withdrawn = Some((day, sum));
            }
            AccountEvent::CardPaymentApproved(e) => {
                self.balance_minor = self.balance_minor.saturating_sub(e.payment.amount_minor);
            }
            AccountEvent::AccountFrozen(_) => self.frozen = true,
            AccountEvent::AccountUnfrozen(_) => self.frozen = false,
            AccountEvent::CardPaymentDeclined(_)
            | AccountEvent::AccountClosed(_)
            | AccountEvent::PaymentReportedFraudulent(_) => {}
        }
        self.version = envelope.account_version;
    }
}

/// The channel of a withdrawal request as the contract names it.
pub fn withdrawal_channel(channel: &str) -> Option<WithdrawalChannel> {
    match channel {
        "atm" => Some(WithdrawalChannel::Atm),
        "branch" => Some(WithdrawalChannel::Branch),
        "online" => Some(WithdrawalChannel::Online),
        _ => None,
    }
}

/// The channel of a card payment request as the contract names it.
pub fn card_channel(channel: &str) -> Option<CardChannel> {
    match channel {
        "pos" => Some(CardChannel::Pos),
        "online" => Some(CardChannel::Online),
        _ => None,
    }
}

impl Events {
    /// `accounts` accounts (opened first, then funded, then everyday traffic with a
    /// `suspicious_share` of suspicious episodes). The n-th event is timed `start + n·step`,
    /// so a run spread over days exercises the daily withdrawal limit and daily totals.
    pub fn new(
        seed: u64,
        accounts: usize,
        suspicious_share: f64,
        start: DateTime<Utc>,
        step: chrono::Duration,
    ) -> Self {
        let traffic = Traffic::new(seed, accounts, suspicious_share);
        // A separate stream for ids, so that they do not shift the traffic's choices.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1d5_1d5);
        let accounts = (0..traffic.accounts.len())
            .map(|_| {
                let id = AccountId(uuid::Builder::from_random_bytes(rng.gen()).into_uuid());
                (id, Ledger::default())
            })
            .collect();
        Self {
            traffic,
            rng,
            accounts,
            start_us: start.timestamp_micros(),
            step_us: step.num_microseconds().unwrap_or(1).max(1),
            yielded: 0,
            reported_later: HashMap::new(),
        }
    }

    /// Reports card-testing payments as fraud, as [`Traffic::with_fraud_reports`] does.
    pub fn with_fraud_reports(mut self, mean_steps: u64) -> Self {
        self.traffic = self.traffic.with_fraud_reports(mean_steps);
        self
    }

    /// The id of account `index` (in opening order).
    pub fn account_id(&self, index: usize) -> Option<AccountId> {
        self.accounts.get(index).map(|(id, _)| *id)
    }

    /// How many accounts the sequence has.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Account `index`'s balance after the events yielded so far.
    pub fn balance(&self, index: usize) -> Option<MinorUnits> {
        self.accounts.get(index).map(|(_, a)| a.balance_minor)
    }

    /// Account `index`'s version after the events yielded so far (0: none yet).
    pub fn version(&self, index: usize) -> Option<u64> {
        self.accounts.get(index).map(|(_, a)| a.version)
    }

    /// A UUIDv7 at `time`, its random part from the seeded generator.
    fn uuid_at(&mut self, time: DateTime<Utc>) -> Uuid {
        let millis = u64::try_from(time.timestamp_millis()).unwrap_or(0);
        uuid::Builder::from_unix_timestamp_millis(millis, &self.rng.gen()).into_uuid()
    }
}

impl Iterator for Events {
    type Item = (usize, Envelope);

    fn next(&mut self) -> Option<Self::Item> {
        let micros = self
            .start_us
            .checked_add(self.yielded.checked_mul(self.step_us)?)?;
        let time = DateTime::from_timestamp_micros(micros)?;
        // Rejected steps leave no event; the model rarely asks for one (a few percent of
        // withdrawals deliberately), so this loop ends after a step or two.
        loop {
            let mut step = self.traffic.next()?;
            if let Some(payment) = step.op.unresolved_payment() {
                let Some(event_id) = self.reported_later.remove(&payment) else {
                    continue;
                };
                step.op.resolve_payment(event_id);
            }
            let Some((account_id, state)) = self.accounts.get(step.account) else {
                continue;
            };
            let (account_id, account_version) = (*account_id, state.version + 1);
            let Some(event) = state.decide(&step.op, time) else {
                continue;
            };
            let envelope = Envelope {
                id: self.uuid_at(time),
                source: EVENT_SOURCE.to_owned(),
                account_id,
                time,
                account_version,
                correlation_id: Some(self.uuid_at(time).to_string()),
                causation_id: Some(self.uuid_at(time).to_string()),
                event,
            };
            if let Some((_, state)) = self.accounts.get_mut(step.account) {
                state.apply(&envelope);
            }
            if self.traffic.report_after.is_some()
                && step.pattern == Pattern::CardTesting
                && matches!(step.op, Op::Pay { .. })
            {
                self.reported_later.insert(step.seq, envelope.id);
            }
            self.yielded += 1;
            return Some((step.account, envelope));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn market(country: &str) -> &'static Market {
        MARKETS
            .iter()
            .find(|m| m.country == country)
            .unwrap_or_else(|| panic!("no market {country}"))
    }

    #[test]
    fn the_same_seed_yields_the_same_sequence() {
        let a: Vec<Step> = Traffic::new(7, 50, 0.05).take(20_000).collect();
        let b: Vec<Step> = Traffic::new(7, 50, 0.05).take(20_000).collect();
        assert_eq!(a, b);
        let c: Vec<Step> = Traffic::new(8, 50, 0.05).take(20_000).collect();
        assert_ne!(a, c, "another seed, another sequence");
    }

    #[test]
    fn every_account_is_opened_then_funded_before_anything_else() {
        let steps: Vec<Step> = Traffic::new(1, 30, 0.02).take(200).collect();
        for (i, step) in steps[..30].iter().enumerate() {
            assert_eq!((step.account, step.op.command()), (i, "open"));
        }
        for (i, step) in steps[30..60].iter().enumerate() {
            assert_eq!((step.account, step.op.command()), (i, "deposit"));
        }
        assert!(steps[60..].iter().all(|s| s.op.command() != "open"));
        assert!(steps.iter().enumerate().all(|(i, s)| s.seq == i as u64));
    }

    #[test]
    fn the_mix_matches_the_configured_proportions() {
        // About 50 steps per account, as in a typical run.
        let accounts = 4_000;
        let steps: Vec<Step> = Traffic::new(42, accounts, 0.02)
            .skip(2 * accounts)
            .take(200_000)
            .collect();
        let total = steps.len() as f64;
        let suspicious = steps.iter().filter(|s| s.pattern.is_suspicious()).count() as f64;
        let share = suspicious / total;
        assert!((share - 0.02).abs() < 0.004, "suspicious share {share}");

        let everyday: Vec<&Step> = steps
            .iter()
            .filter(|s| !s.pattern.is_suspicious())
            .collect();
        let n = everyday.len() as f64;
        let count = |command: &str| {
            everyday
                .iter()
                .filter(|s| s.op.command() == command)
                .count() as f64
        };
        let within = |actual: f64, percent: u32, tolerance: f64| {
            (actual / n - f64::from(percent) / 100.0).abs() < tolerance
        };
        // Withdrawals that no longer fit fall back to deposits, so allow some slack there.
        assert!(
            within(count("pay"), EVERYDAY_PAY_PERCENT, 0.01),
            "pay {}",
            count("pay") / n
        );
        assert!(
            within(count("withdraw"), EVERYDAY_WITHDRAW_PERCENT, 0.03),
            "withdraw {}",
            count("withdraw") / n
        );
        assert!(
            within(count("deposit"), EVERYDAY_DEPOSIT_PERCENT, 0.03),
            "deposit {}",
            count("deposit") / n
        );

        let withdrawals = count("withdraw");
        let over = steps
            .iter()
            .filter(|s| s.pattern == Pattern::OverLimit)
            .count() as f64;
        assert!(
            (over / withdrawals - 0.04).abs() < 0.01,
            "over-limit share {}",
            over / withdrawals
        );

        // Every freeze is followed by one unfreeze (those due after the window excepted).
        let freezes = steps.iter().filter(|s| s.op.command() == "freeze").count();
        let unfreezes = steps
            .iter()
            .filter(|s| s.op.command() == "unfreeze")
            .count();
        assert!(
            freezes > 0 && freezes.abs_diff(unfreezes) <= 5,
            "{freezes} freezes, {unfreezes} unfreezes"
        );
    }

    #[test]
    fn everyday_payments_are_domestic_and_card_testing_is_abroad_online_and_tiny() {
        let accounts = 200;
        let model = Traffic::new(3, accounts, 0.05);
        let markets: Vec<&Market> = (0..accounts).map(|i| model.market(i)).collect();
        let steps: Vec<Step> = model.skip(2 * accounts).take(50_000).collect();
        let mut bursts = 0;
        let mut previous: Option<&Step> = None;
        for step in &steps {
            let market = markets[step.account];
            if let Op::Pay {
                merchant_country,
                channel,
                amount_minor,
                ..
            } = &step.op
            {
                match step.pattern {
                    Pattern::Everyday => {
                        assert_eq!((*merchant_country, *channel), (market.country, "pos"));
                    }
                    Pattern::CardTesting => {
                        assert_ne!(*merchant_country, market.country);
                        assert_eq!(*channel, "online");
                        assert!(*amount_minor <= market.minor_from_eur_cents(199));
                        let continues = previous.is_some_and(|p| {
                            p.pattern == Pattern::CardTesting
                                && p.account == step.account
                                && p.op.command() == "pay"
                        });
                        if !continues {
                            bursts += 1;
                        }
                    }
                    other => panic!("a payment in pattern {other:?}"),
                }
            }
            previous = Some(step);
        }
        assert!(bursts > 20, "{bursts} bursts");
    }

    #[test]
    fn a_card_testing_burst_hits_distinct_merchants_in_a_row() {
        let steps: Vec<Step> = Traffic::new(11, 100, 0.2).skip(200).take(5_000).collect();
        let mut i = 0;
        let mut checked = 0;
        while i < steps.len() {
            if steps[i].pattern == Pattern::CardTesting && steps[i].op.command() == "pay" {
                let account = steps[i].account;
                let mut names = HashSet::new();
                let mut len = 0;
                while i < steps.len()
                    && steps[i].pattern == Pattern::CardTesting
                    && steps[i].account == account
                    && steps[i].op.command() == "pay"
                {
                    if let Op::Pay { merchant_name, .. } = &steps[i].op {
                        assert!(
                            names.insert(merchant_name.clone()),
                            "merchant repeated in a burst"
                        );
                    }
                    len += 1;
                    i += 1;
                }
                if i < steps.len() {
                    assert!((BURST_MIN..=BURST_MAX).contains(&len), "burst of {len}");
                    checked += 1;
                }
            } else {
                i += 1;
            }
        }
        assert!(checked > 10);
    }

    #[test]
    fn fraud_reports_are_off_by_default_and_change_nothing_before_the_first_report() {
        let plain: Vec<Step> = Traffic::new(13, 80, 0.1).take(20_000).collect();
        let off: Vec<Step> = Traffic::new(13, 80, 0.1)
            .with_fraud_reports(0)
            .take(20_000)
            .collect();
        assert_eq!(plain, off);
        assert!(plain.iter().all(|s| s.op.command() != "report_fraud"));
    }

    #[test]
    fn every_card_testing_payment_is_reported_once_a_while_later() {
        let mean = 400;
        let steps: Vec<Step> = Traffic::new(17, 100, 0.1)
            .with_fraud_reports(mean)
            .take(30_000)
            .collect();
        let mut reported: HashMap<u64, u64> = HashMap::new();
        for step in &steps {
            let Some(payment) = step.op.unresolved_payment() else {
                continue;
            };
            assert_eq!(step.pattern, Pattern::FraudReport);
            let paid = &steps[usize::try_from(payment).expect("index")];
            assert_eq!(paid.seq, payment);
            assert_eq!(
                (paid.pattern, paid.op.command(), paid.account),
                (Pattern::CardTesting, "pay", step.account),
                "a report names a card-testing payment of its own account"
            );
            // Due at `payment + delay`, and emitted at or (behind other due steps) after it.
            let delay = step.seq - payment;
            assert!(delay >= mean / 2, "reported {delay} steps after");
            assert!(reported.insert(payment, step.seq).is_none(), "twice");
        }
        let card_testing: Vec<u64> = steps
            .iter()
            .filter(|s| s.pattern == Pattern::CardTesting && s.op.command() == "pay")
            .map(|s| s.seq)
            .collect();
        // Every payment whose report was due within the run was reported.
        let last = steps.len() as u64;
        for seq in &card_testing {
            if seq + 3 * mean / 2 + 50 < last {
                assert!(reported.contains_key(seq), "payment {seq} never reported");
            }
        }
        assert!(reported.len() > 100, "{} reports", reported.len());
    }

    #[test]
    fn events_report_card_testing_payments_by_their_event_ids() {
        let start = DateTime::<Utc>::from_timestamp(1_735_689_600, 0).expect("start");
        let all: Vec<(usize, Envelope)> =
            Events::new(19, 60, 0.1, start, chrono::Duration::seconds(1))
                .with_fraud_reports(300)
                .take(20_000)
                .collect();
        let by_id: HashMap<Uuid, &Envelope> = all.iter().map(|(_, e)| (e.id, e)).collect();
        let mut reported = HashSet::new();
        for (_, envelope) in &all {
            let AccountEvent::PaymentReportedFraudulent(report) = &envelope.event else {
                continue;
            };
            let payment = by_id
                .get(&report.payment_event_id)
                .expect("the reported payment is an earlier event");
            assert_eq!(payment.account_id, envelope.account_id);
            assert!(payment.account_version < envelope.account_version);
            assert!(matches!(
                payment.event,
                AccountEvent::CardPaymentApproved(_) | AccountEvent::CardPaymentDeclined(_)
            ));
            assert_eq!(report.reason, FRAUD_REPORT_REASON);
            assert!(reported.insert(report.payment_event_id), "reported twice");
        }
        assert!(reported.len() > 50, "{} reports", reported.len());
    }

    #[test]
    fn accounts_open_across_markets_in_proportion_to_their_weights() {
        let model = Traffic::new(5, 20_000, 0.0);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for i in 0..model.accounts() {
            *counts.entry(model.market(i).country).or_default() += 1;
        }
        let total_weight: u32 = MARKETS.iter().map(|m| m.weight).sum();
        for m in MARKETS {
            let share = counts.get(m.country).copied().unwrap_or(0) as f64 / 20_000.0;
            let expected = f64::from(m.weight) / f64::from(total_weight);
            assert!(
                (share - expected).abs() < 0.01,
                "{}: {share} vs {expected}",
                m.country
            );
        }
        let currencies: HashSet<&str> = MARKETS.iter().map(|m| m.currency).collect();
        for c in ["EUR", "GBP", "USD", "JPY", "CHF", "SEK", "KWD"] {
            assert!(currencies.contains(c), "{c}");
        }
    }

    #[test]
    fn amounts_are_positive_integers_in_minor_units() {
        let steps: Vec<Step> = Traffic::new(9, 300, 0.1).take(100_000).collect();
        for step in &steps {
            if let Some(amount) = step.op.amount_minor() {
                assert!(amount > 0, "{step:?}");
                assert!(amount <= 1_000_000_000_000, "{step:?}");
            }
            if let Op::Open {
                daily_withdrawal_limit_minor,
                ..
            } = step.op
            {
                assert!(daily_withdrawal_limit_minor > 0);
            }
            // The JSON body carries integers, never fractions.
            if let Some(v) = step.op.body().get("amount_minor") {
                assert!(v.is_i64(), "{v}");
            }
        }
    }

    #[test]
    fn currencies_without_minor_units_get_whole_units_at_their_own_scale() {
        let (eur, jpy, kwd) = (market("DE"), market("JP"), market("KW"));
        assert_eq!((eur.exponent, jpy.exponent, kwd.exponent), (2, 0, 3));
        // 10 EUR is 1 000 cents, about 1 620 yen (not 162 000), and 3 300 fils.
        assert_eq!(eur.minor_from_eur_cents(1_000), 1_000);
        assert_eq!(jpy.minor_from_eur_cents(1_000), 1_620);
        assert_eq!(kwd.minor_from_eur_cents(1_000), 3_300);
        // The smallest card-testing probe still converts to at least one minor unit.
        assert!(jpy.minor_from_eur_cents(10) >= 1);
        // ATM withdrawals are whole banknotes: 1 000 yen notes, 10 EUR notes.
        assert_eq!(jpy.notes_from_eur_cents(12_345) % 1_000, 0);
        assert_eq!(eur.notes_from_eur_cents(12_345), 12_000);

        let accounts = 400;
        let model = Traffic::new(21, accounts, 0.02);
        let markets: Vec<&Market> = (0..accounts).map(|i| model.market(i)).collect();
        let mut yen_payments = Vec::new();
        let mut euro_payments = Vec::new();
        for step in model.take(100_000) {
            let market = markets[step.account];
            match (&step.op, market.currency) {
                (Op::Pay { amount_minor, .. }, "JPY") if step.pattern == Pattern::Everyday => {
                    yen_payments.push(*amount_minor)
                }
                (Op::Pay { amount_minor, .. }, "EUR") if step.pattern == Pattern::Everyday => {
                    euro_payments.push(*amount_minor)
                }
                (
                    Op::Withdraw {
                        amount_minor,
                        channel: "atm",
                        ..
                    },
                    "JPY",
                ) if step.pattern == Pattern::Everyday => {
                    assert_eq!(amount_minor % 1_000, 0, "ATMs hand out 1 000 yen notes");
                }
                (
                    Op::Open {
                        daily_withdrawal_limit_minor,
                        ..
                    },
                    "JPY",
                ) => {
                    // 5 000 EUR a day is 810 000 yen.
                    assert_eq!(*daily_withdrawal_limit_minor, 810_000);
                }
                _ => {}
            }
        }
        yen_payments.sort_unstable();
        euro_payments.sort_unstable();
        let median = |v: &[i64]| v[v.len() / 2];
        assert!(!yen_payments.is_empty() && !euro_payments.is_empty());
        // Same basket, different scale: the yen median is ~1.6 times the cent median.
        let (yen, cents) = (median(&yen_payments), median(&euro_payments));
        assert!(
            yen > cents && yen < 3 * cents,
            "median {yen} JPY vs {cents} EUR cents"
        );
        assert!(
            (300..30_000).contains(&yen),
            "median card payment {yen} JPY"
        );
    }

    fn events(seed: u64, accounts: usize, n: usize) -> Vec<(usize, Envelope)> {
        let start = DateTime::<Utc>::from_timestamp(1_735_689_600, 0).expect("start");
        Events::new(seed, accounts, 0.05, start, chrono::Duration::minutes(1))
            .take(n)
            .collect()
    }

    #[test]
    fn events_are_reproducible_and_depend_on_the_seed() {
        let a = events(7, 40, 5_000);
        assert_eq!(a.len(), 5_000);
        assert_eq!(a, events(7, 40, 5_000));
        assert_ne!(a, events(8, 40, 5_000));
    }

    #[test]
    fn events_are_valid_histories() {
        let all = events(11, 50, 20_000);
        let mut histories: HashMap<usize, (u64, MinorUnits, bool)> = HashMap::new();
        let mut last_time = None;
        for (account, envelope) in &all {
            assert!(last_time < Some(envelope.time), "times increase");
            last_time = Some(envelope.time);
            let (version, balance, frozen) = histories.entry(*account).or_default();
            assert_eq!(envelope.account_version, *version + 1);
            assert_eq!(
                matches!(envelope.event, AccountEvent::AccountOpened(_)),
                *version == 0,
                "opened first and only once: {envelope:?}"
            );
            match &envelope.event {
                AccountEvent::AccountFrozen(_) => *frozen = true,
                AccountEvent::AccountUnfrozen(_) => *frozen = false,
                AccountEvent::MoneyWithdrawn(_) | AccountEvent::CardPaymentApproved(_) => {
                    assert!(!*frozen, "money left a frozen account: {envelope:?}");
                }
                _ => {}
            }
            *balance += envelope.event.balance_change();
            assert!(*balance >= 0, "{envelope:?}");
            *version = envelope.account_version;
        }
        assert_eq!(histories.len(), 50, "every account is opened");
        let ids: HashSet<Uuid> = all.iter().map(|(_, e)| e.id).collect();
        assert_eq!(ids.len(), all.len(), "event ids are unique");
    }

    #[test]
    fn events_have_what_a_search_needs_to_find() {
        let all = events(5, 400, 30_000);
        let mut types = HashSet::new();
        let (mut declines, mut categories, mut countries, mut channels) = (
            HashSet::new(),
            HashSet::new(),
            HashSet::new(),
            HashSet::new(),
        );
        let mut accented_holders = 0;
        let mut accented_merchants = 0;
        for (_, envelope) in &all {
            types.insert(envelope.event_type());
            let payment = match &envelope.event {
                AccountEvent::AccountOpened(opened) => {
                    accented_holders += usize::from(!opened.holder_name.is_ascii());
                    None
                }
                AccountEvent::CardPaymentApproved(approved) => Some(&approved.payment),
                AccountEvent::CardPaymentDeclined(declined) => {
                    declines.insert(declined.decline_reason);
                    Some(&declined.payment)
                }
                AccountEvent::MoneyWithdrawn(withdrawn) => {
                    channels.insert(format!("{:?}", withdrawn.channel));
                    None
                }
                _ => None,
            };
            if let Some(payment) = payment {
                categories.insert(payment.merchant_category.clone());
                countries.insert(payment.merchant_country);
                channels.insert(format!("{:?}", payment.channel));
                accented_merchants += usize::from(!payment.merchant_name.is_ascii());
            }
        }
        for t in [
            "prism.account.opened",
            "prism.account.money_deposited",
            "prism.account.money_withdrawn",
            "prism.account.card_payment_approved",
            "prism.account.card_payment_declined",
            "prism.account.frozen",
            "prism.account.unfrozen",
        ] {
            assert!(types.contains(t), "no {t} in {types:?}");
        }
        assert!(
            declines.contains(&DeclineReason::InsufficientFunds),
            "{declines:?}"
        );
        assert!(
            declines.contains(&DeclineReason::AccountFrozen),
            "{declines:?}"
        );
        assert!(categories.len() >= 10, "{categories:?}");
        assert!(countries.len() >= 10, "{countries:?}");
        assert!(channels.len() >= 4, "{channels:?}"); // Pos, Online, Atm, Branch
        assert!(accented_holders > 0 && accented_merchants > 0);
    }

    #[test]
    fn a_name_with_accents_in_two_words_is_among_the_holders() {
        // "Zoë Müller": a search for "zoe muller" must have something to fold and find.
        let holders: HashSet<String> = Traffic::new(1, 5_000, 0.0)
            .take(5_000)
            .filter_map(|step| match step.op {
                Op::Open { holder_name, .. } => Some(holder_name),
                _ => None,
            })
            .collect();
        assert!(holders.contains("Zoë Müller"), "{} holders", holders.len());
    }
}
