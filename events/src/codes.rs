//! ISO codes that appear in events: countries (ISO 3166-1 alpha-2) and currencies
//! (ISO 4217, with their minor-unit exponent, so 1 JPY is `1` and 1 EUR is `100`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};

/// Officially assigned ISO 3166-1 alpha-2 codes.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ \
BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ \
DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY \
HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP \
KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY \
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY \
QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ \
TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ \
VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// Active ISO 4217 currencies usable for accounts, as `CODE:exponent`.
const CURRENCIES: &str = "AED:2 AFN:2 ALL:2 AMD:2 AOA:2 ARS:2 AUD:2 AWG:2 AZN:2 BAM:2 BBD:2 \
BDT:2 BHD:3 BIF:0 BMD:2 BND:2 BOB:2 BRL:2 BSD:2 BTN:2 BWP:2 BYN:2 BZD:2 CAD:2 CDF:2 CHF:2 \
CLP:0 CNY:2 COP:2 CRC:2 CUP:2 CVE:2 CZK:2 DJF:0 DKK:2 DOP:2 DZD:2 EGP:2 ERN:2 ETB:2 EUR:2 \
FJD:2 FKP:2 GBP:2 GEL:2 GHS:2 GIP:2 GMD:2 GNF:0 GTQ:2 GYD:2 HKD:2 HNL:2 HTG:2 HUF:2 IDR:2 \
ILS:2 INR:2 IQD:3 IRR:2 ISK:0 JMD:2 JOD:3 JPY:0 KES:2 KGS:2 KHR:2 KMF:0 KPW:2 KRW:0 KWD:3 \
KYD:2 KZT:2 LAK:2 LBP:2 LKR:2 LRD:2 LSL:2 LYD:3 MAD:2 MDL:2 MGA:2 MKD:2 MMK:2 MNT:2 MOP:2 \
MRU:2 MUR:2 MVR:2 MWK:2 MXN:2 MYR:2 MZN:2 NAD:2 NGN:2 NIO:2 NOK:2 NPR:2 NZD:2 OMR:3 PAB:2 \
PEN:2 PGK:2 PHP:2 PKR:2 PLN:2 PYG:0 QAR:2 RON:2 RSD:2 RUB:2 RWF:0 SAR:2 SBD:2 SCR:2 SDG:2 \
SEK:2 SGD:2 SHP:2 SLE:2 SOS:2 SRD:2 SSP:2 STN:2 SVC:2 SYP:2 SZL:2 THB:2 TJS:2 TMT:2 TND:3 \
TOP:2 TRY:2 TTD:2 TWD:2 TZS:2 UAH:2 UGX:0 USD:2 UYU:2 UZS:2 VES:2 VND:0 VUV:0 WST:2 XAF:0 \
XCD:2 XCG:2 XOF:0 XPF:0 YER:2 ZAR:2 ZMW:2 ZWG:2";

/// [`COUNTRIES`] by letter pair (`AA` is 0, `ZZ` 675): a lookup instead of a scan per event.
static ASSIGNED_COUNTRIES: LazyLock<[bool; 26 * 26]> = LazyLock::new(|| {
    let mut assigned = [false; 26 * 26];
    for code in COUNTRIES.split(' ') {
        if let Some(i) = letter_pair(code.as_bytes()) {
            assigned[i] = true;
        }
    }
    assigned
});

/// [`CURRENCIES`] as code → exponent.
static CURRENCY_EXPONENTS: LazyLock<HashMap<[u8; 3], u8>> = LazyLock::new(|| {
    CURRENCIES
        .split(' ')
        .filter_map(|entry| {
            let (code, exponent) = entry.split_once(':')?;
            Some((code.as_bytes().try_into().ok()?, exponent.parse().ok()?))
        })
        .collect()
});

/// The index of two upper-case ASCII letters among all 26 × 26 pairs.
fn letter_pair(code: &[u8]) -> Option<usize> {
    match code {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => {
            Some(usize::from(a - b'A') * 26 + usize::from(b - b'A'))
        }
        _ => None,
    }
}

/// Deserializes a code from a string without copying it first.
struct CodeVisitor<T>(fn(&str) -> Result<T, InvalidCode>);

impl<T> serde::de::Visitor<'_> for CodeVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an ISO code")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

/// A code that is not in its ISO list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an ISO {standard} code")]
pub struct InvalidCode {
    pub standard: &'static str,
    pub value: String,
}

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Country([u8; 2]);

impl Country {
    /// Parses an upper-case alpha-2 code that ISO 3166-1 assigns.
    pub fn parse(value: &str) -> Result<Self, InvalidCode> {
        let invalid = || InvalidCode {
            standard: "3166-1 alpha-2 country",
            value: value.to_owned(),
        };
        match letter_pair(value.as_bytes()) {
            Some(i) if ASSIGNED_COUNTRIES[i] => {
                let bytes: [u8; 2] = value.as_bytes().try_into().map_err(|_| invalid())?;
                Ok(Self(bytes))
            }
            _ => Err(invalid()),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Country> for String {
    fn from(c: Country) -> Self {
        c.as_str().to_owned()
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CodeVisitor(Country::parse))
    }
}

/// An active ISO 4217 currency, upper case, with its minor-unit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

impl Currency {
    pub fn parse(value: &str) -> Result<Self, InvalidCode> {
        let invalid = || InvalidCode {
            standard: "4217 currency",
            value: value.to_owned(),
        };
        let code: [u8; 3] = value.as_bytes().try_into().map_err(|_| invalid())?;
        if !code.iter().all(u8::is_ascii_uppercase) {
            return Err(invalid());
        }
        let exponent = *CURRENCY_EXPONENTS.get(&code).ok_or_else(invalid)?;
        Ok(Self { code, exponent })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Digits after the decimal point: 2 for EUR, 0 for JPY, 3 for KWD.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.as_str().to_owned()
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CodeVisitor(Currency::parse))
    }
}

impl JsonSchema for Country {
    fn schema_name() -> Cow<'static, str> {
        "Country".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let codes: Vec<&str> = COUNTRIES.split(' ').collect();
        json_schema!({
            "type": "string",
            "description": "ISO 3166-1 alpha-2 country code",
            "enum": codes,
        })
    }
}

impl JsonSchema for Currency {
    fn schema_name() -> Cow<'static, str> {
        "Currency".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let codes: Vec<&str> = CURRENCIES
            .split(' ')
            .filter_map(|entry| entry.split_once(':').map(|(code, _)| code))
            .collect();
        json_schema!({
            "type": "string",
            "description": "ISO 4217 currency code; amounts are in its minor units",
            "enum": codes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_assigned_country_code_is_listed_once() {
        let codes: Vec<&str> = COUNTRIES.split(' ').collect();
        assert_eq!(codes.len(), 249);
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, codes, "sorted and unique");
    }

    #[test]
    fn countries_are_validated() {
        assert_eq!(Country::parse("DE").map(|c| c.to_string()), Ok("DE".into()));
        for bad in ["de", "XX", "D", "DEU", "", "ÄB"] {
            assert!(Country::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn currencies_know_their_minor_units() {
        let eur = Currency::parse("EUR").expect("EUR");
        let jpy = Currency::parse("JPY").expect("JPY");
        let kwd = Currency::parse("KWD").expect("KWD");
        assert_eq!((eur.exponent(), jpy.exponent(), kwd.exponent()), (2, 0, 3));
        for bad in ["eur", "XXX", "EU", "EURO", "XAU"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_listed_code_parses_and_neighbours_do_not() {
        for code in COUNTRIES.split(' ') {
            assert_eq!(Country::parse(code).map(|c| c.to_string()), Ok(code.into()));
        }
        for entry in CURRENCIES.split(' ') {
            let (code, exponent) = entry.split_once(':').expect("CODE:exponent");
            let parsed = Currency::parse(code).expect(code);
            assert_eq!(
                (parsed.as_str(), parsed.exponent().to_string()),
                (code, exponent.into())
            );
        }
        // Assigned neighbours of gaps in the list.
        for bad in ["AB", "ZZ", "UK", "EU"] {
            assert!(Country::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_parse_from_escaped_and_owned_json_strings() {
        let c: Country = serde_json::from_str("\"\\u0044E\"").expect("an escaped DE");
        assert_eq!(c.as_str(), "DE");
        let value = serde_json::json!("USD");
        let usd: Currency = serde_json::from_value(value).expect("USD from a value");
        assert_eq!(usd.exponent(), 2);
        assert!(
            serde_json::from_str::<Country>("7").is_err(),
            "not a string"
        );
    }

    #[test]
    fn codes_round_trip_through_json() {
        let c: Country = serde_json::from_str("\"JP\"").expect("JP");
        assert_eq!(serde_json::to_string(&c).expect("json"), "\"JP\"");
        assert!(serde_json::from_str::<Currency>("\"ABC\"").is_err());
    }
}
