//! The account's country → the IANA time zone its `local_hour` is read in.
//!
//! A country with several zones (US, CA, RU, …) gets one: its **principal zone**. The
//! table holds zone *names* only, never offsets: the offsets and their daylight-saving
//! rules come from the tz database compiled into `chrono-tz`, so a change of a country's
//! rules arrives with a `chrono-tz` upgrade, not by editing this file.
//!
//! # Where the names come from
//! 1. [`ZONE_TAB`]: for every country, the **first row** of the tz database's `zone.tab`
//!    (release 2025b, the release `chrono-tz` 0.10.4 compiles in). `zone.tab` has exactly
//!    one country per row and orders a country's rows "most populous first where that does
//!    not contradict geography", so the first row is the principal zone for all but a few.
//!    Derived with `awk -F'\t' '!/^#/ && !seen[$1]++ { print $1, $3 }' zone.tab | sort`.
//! 2. [`PRINCIPAL_OVERRIDES`]: the countries whose first row is an artefact of that
//!    geographic order (the zone farthest east or west) or a disputed area, and whose clock
//!    differs from where most of the country lives. These take the most populous zone.
//! 3. Countries `zone.tab` does not list (uninhabited: [`NO_ZONE`], BV and HM) have no
//!    zone: their accounts' `local_hour` is null.
//!
//! The test `every_country_has_a_zone_chrono_tz_knows_or_is_listed_without_one` checks
//! that every country [`Country::parse`] accepts is in exactly one of those cases and that
//! every name parses in `chrono-tz`. Changing any row changes a feature's definition: bump
//! [`super::FEATURE_SET_VERSION`].

use std::sync::LazyLock;

use chrono_tz::Tz;
use prism_events::Country;

/// Countries whose first `zone.tab` row is not where most of the country lives, with the
/// zone that is (see the module docs). Sorted by country.
pub const PRINCIPAL_OVERRIDES: &[(&str, &str)] = &[
    // First row: Australia/Lord_Howe (UTC+10:30, ~400 people).
    ("AU", "Australia/Sydney"),
    // First row: America/Noronha (UTC−2, an archipelago).
    ("BR", "America/Sao_Paulo"),
    // First row: America/St_Johns (UTC−3:30, Newfoundland).
    ("CA", "America/Toronto"),
    // First row: Europe/Kaliningrad (UTC+2, the exclave).
    ("RU", "Europe/Moscow"),
    // First row: Europe/Simferopol (Crimea, on Moscow time since 2014).
    ("UA", "Europe/Kyiv"),
];

/// ISO 3166-1 countries that `zone.tab` does not list: no zone, `local_hour` null.
pub const NO_ZONE: &[&str] = &["BV", "HM"];

/// The first `zone.tab` row of every country it lists: (country, zone name), sorted by
/// country (`zone.tab` itself is not quite: it lists UA's Crimea row among RU's).
/// Generated from tzdb 2025b (module docs); do not edit by hand.
pub const ZONE_TAB: &[(&str, &str)] = &[
    ("AD", "Europe/Andorra"),
    ("AE", "Asia/Dubai"),
    ("AF", "Asia/Kabul"),
    ("AG", "America/Antigua"),
    ("AI", "America/Anguilla"),
    ("AL", "Europe/Tirane"),
    ("AM", "Asia/Yerevan"),
    ("AO", "Africa/Luanda"),
    ("AQ", "Antarctica/McMurdo"),
    ("AR", "America/Argentina/Buenos_Aires"),
    ("AS", "Pacific/Pago_Pago"),
    ("AT", "Europe/Vienna"),
    ("AU", "Australia/Lord_Howe"),
    ("AW", "America/Aruba"),
    ("AX", "Europe/Mariehamn"),
    ("AZ", "Asia/Baku"),
    ("BA", "Europe/Sarajevo"),
    ("BB", "America/Barbados"),
    ("BD", "Asia/Dhaka"),
    ("BE", "Europe/Brussels"),
    ("BF", "Africa/Ouagadougou"),
    ("BG", "Europe/Sofia"),
    ("BH", "Asia/Bahrain"),
    ("BI", "Africa/Bujumbura"),
    ("BJ", "Africa/Porto-Novo"),
    ("BL", "America/St_Barthelemy"),
    ("BM", "Atlantic/Bermuda"),
    ("BN", "Asia/Brunei"),
    ("BO", "America/La_Paz"),
    ("BQ", "America/Kralendijk"),
    ("BR", "America/Noronha"),
    ("BS", "America/Nassau"),
    ("BT", "Asia/Thimphu"),
    ("BW", "Africa/Gaborone"),
    ("BY", "Europe/Minsk"),
    ("BZ", "America/Belize"),
    ("CA", "America/St_Johns"),
    ("CC", "Indian/Cocos"),
    ("CD", "Africa/Kinshasa"),
    ("CF", "Africa/Bangui"),
    ("CG", "Africa/Brazzaville"),
    ("CH", "Europe/Zurich"),
    ("CI", "Africa/Abidjan"),
    ("CK", "Pacific/Rarotonga"),
    ("CL", "America/Santiago"),
    ("CM", "Africa/Douala"),
    ("CN", "Asia/Shanghai"),
    ("CO", "America/Bogota"),
    ("CR", "America/Costa_Rica"),
    ("CU", "America/Havana"),
    ("CV", "Atlantic/Cape_Verde"),
    ("CW", "America/Curacao"),
    ("CX", "Indian/Christmas"),
    ("CY", "Asia/Nicosia"),
    ("CZ", "Europe/Prague"),
    ("DE", "Europe/Berlin"),
    ("DJ", "Africa/Djibouti"),
    ("DK", "Europe/Copenhagen"),
    ("DM", "America/Dominica"),
    ("DO", "America/Santo_Domingo"),
    ("DZ", "Africa/Algiers"),
    ("EC", "America/Guayaquil"),
    ("EE", "Europe/Tallinn"),
    ("EG", "Africa/Cairo"),
    ("EH", "Africa/El_Aaiun"),
    ("ER", "Africa/Asmara"),
    ("ES", "Europe/Madrid"),
    ("ET", "Africa/Addis_Ababa"),
    ("FI", "Europe/Helsinki"),
    ("FJ", "Pacific/Fiji"),
    ("FK", "Atlantic/Stanley"),
    ("FM", "Pacific/Chuuk"),
    ("FO", "Atlantic/Faroe"),
    ("FR", "Europe/Paris"),
    ("GA", "Africa/Libreville"),
    ("GB", "Europe/London"),
    ("GD", "America/Grenada"),
    ("GE", "Asia/Tbilisi"),
    ("GF", "America/Cayenne"),
    ("GG", "Europe/Guernsey"),
    ("GH", "Africa/Accra"),
    ("GI", "Europe/Gibraltar"),
    ("GL", "America/Nuuk"),
    ("GM", "Africa/Banjul"),
    ("GN", "Africa/Conakry"),
    ("GP", "America/Guadeloupe"),
    ("GQ", "Africa/Malabo"),
    ("GR", "Europe/Athens"),
    ("GS", "Atlantic/South_Georgia"),
    ("GT", "America/Guatemala"),
    ("GU", "Pacific/Guam"),
    ("GW", "Africa/Bissau"),
    ("GY", "America/Guyana"),
    ("HK", "Asia/Hong_Kong"),
    ("HN", "America/Tegucigalpa"),
    ("HR", "Europe/Zagreb"),
    ("HT", "America/Port-au-Prince"),
    ("HU", "Europe/Budapest"),
    ("ID", "Asia/Jakarta"),
    ("IE", "Europe/Dublin"),
    ("IL", "Asia/Jerusalem"),
    ("IM", "Europe/Isle_of_Man"),
    ("IN", "Asia/Kolkata"),
    ("IO", "Indian/Chagos"),
    ("IQ", "Asia/Baghdad"),
    ("IR", "Asia/Tehran"),
    ("IS", "Atlantic/Reykjavik"),
    ("IT", "Europe/Rome"),
    ("JE", "Europe/Jersey"),
    ("JM", "America/Jamaica"),
    ("JO", "Asia/Amman"),
    ("JP", "Asia/Tokyo"),
    ("KE", "Africa/Nairobi"),
    ("KG", "Asia/Bishkek"),
    ("KH", "Asia/Phnom_Penh"),
    ("KI", "Pacific/Tarawa"),
    ("KM", "Indian/Comoro"),
    ("KN", "America/St_Kitts"),
    ("KP", "Asia/Pyongyang"),
    ("KR", "Asia/Seoul"),
    ("KW", "Asia/Kuwait"),
    ("KY", "America/Cayman"),
    ("KZ", "Asia/Almaty"),
    ("LA", "Asia/Vientiane"),
    ("LB", "Asia/Beirut"),
    ("LC", "America/St_Lucia"),
    ("LI", "Europe/Vaduz"),
    ("LK", "Asia/Colombo"),
    ("LR", "Africa/Monrovia"),
    ("LS", "Africa/Maseru"),
    ("LT", "Europe/Vilnius"),
    ("LU", "Europe/Luxembourg"),
    ("LV", "Europe/Riga"),
    ("LY", "Africa/Tripoli"),
    ("MA", "Africa/Casablanca"),
    ("MC", "Europe/Monaco"),
    ("MD", "Europe/Chisinau"),
    ("ME", "Europe/Podgorica"),
    ("MF", "America/Marigot"),
    ("MG", "Indian/Antananarivo"),
    ("MH", "Pacific/Majuro"),
    ("MK", "Europe/Skopje"),
    ("ML", "Africa/Bamako"),
    ("MM", "Asia/Yangon"),
    ("MN", "Asia/Ulaanbaatar"),
    ("MO", "Asia/Macau"),
    ("MP", "Pacific/Saipan"),
    ("MQ", "America/Martinique"),
    ("MR", "Africa/Nouakchott"),
    ("MS", "America/Montserrat"),
    ("MT", "Europe/Malta"),
    ("MU", "Indian/Mauritius"),
    ("MV", "Indian/Maldives"),
    ("MW", "Africa/Blantyre"),
    ("MX", "America/Mexico_City"),
    ("MY", "Asia/Kuala_Lumpur"),
    ("MZ", "Africa/Maputo"),
    ("NA", "Africa/Windhoek"),
    ("NC", "Pacific/Noumea"),
    ("NE", "Africa/Niamey"),
    ("NF", "Pacific/Norfolk"),
    ("NG", "Africa/Lagos"),
    ("NI", "America/Managua"),
    ("NL", "Europe/Amsterdam"),
    ("NO", "Europe/Oslo"),
    ("NP", "Asia/Kathmandu"),
    ("NR", "Pacific/Nauru"),
    ("NU", "Pacific/Niue"),
    ("NZ", "Pacific/Auckland"),
    ("OM", "Asia/Muscat"),
    ("PA", "America/Panama"),
    ("PE", "America/Lima"),
    ("PF", "Pacific/Tahiti"),
    ("PG", "Pacific/Port_Moresby"),
    ("PH", "Asia/Manila"),
    ("PK", "Asia/Karachi"),
    ("PL", "Europe/Warsaw"),
    ("PM", "America/Miquelon"),
    ("PN", "Pacific/Pitcairn"),
    ("PR", "America/Puerto_Rico"),
    ("PS", "Asia/Gaza"),
    ("PT", "Europe/Lisbon"),
    ("PW", "Pacific/Palau"),
    ("PY", "America/Asuncion"),
    ("QA", "Asia/Qatar"),
    ("RE", "Indian/Reunion"),
    ("RO", "Europe/Bucharest"),
    ("RS", "Europe/Belgrade"),
    ("RU", "Europe/Kaliningrad"),
    ("RW", "Africa/Kigali"),
    ("SA", "Asia/Riyadh"),
    ("SB", "Pacific/Guadalcanal"),
    ("SC", "Indian/Mahe"),
    ("SD", "Africa/Khartoum"),
    ("SE", "Europe/Stockholm"),
    ("SG", "Asia/Singapore"),
    ("SH", "Atlantic/St_Helena"),
    ("SI", "Europe/Ljubljana"),
    ("SJ", "Arctic/Longyearbyen"),
    ("SK", "Europe/Bratislava"),
    ("SL", "Africa/Freetown"),
    ("SM", "Europe/San_Marino"),
    ("SN", "Africa/Dakar"),
    ("SO", "Africa/Mogadishu"),
    ("SR", "America/Paramaribo"),
    ("SS", "Africa/Juba"),
    ("ST", "Africa/Sao_Tome"),
    ("SV", "America/El_Salvador"),
    ("SX", "America/Lower_Princes"),
    ("SY", "Asia/Damascus"),
    ("SZ", "Africa/Mbabane"),
    ("TC", "America/Grand_Turk"),
    ("TD", "Africa/Ndjamena"),
    ("TF", "Indian/Kerguelen"),
    ("TG", "Africa/Lome"),
    ("TH", "Asia/Bangkok"),
    ("TJ", "Asia/Dushanbe"),
    ("TK", "Pacific/Fakaofo"),
    ("TL", "Asia/Dili"),
    ("TM", "Asia/Ashgabat"),
    ("TN", "Africa/Tunis"),
    ("TO", "Pacific/Tongatapu"),
    ("TR", "Europe/Istanbul"),
    ("TT", "America/Port_of_Spain"),
    ("TV", "Pacific/Funafuti"),
    ("TW", "Asia/Taipei"),
    ("TZ", "Africa/Dar_es_Salaam"),
    ("UA", "Europe/Simferopol"),
    ("UG", "Africa/Kampala"),
    ("UM", "Pacific/Midway"),
    ("US", "America/New_York"),
    ("UY", "America/Montevideo"),
    ("UZ", "Asia/Samarkand"),
    ("VA", "Europe/Vatican"),
    ("VC", "America/St_Vincent"),
    ("VE", "America/Caracas"),
    ("VG", "America/Tortola"),
    ("VI", "America/St_Thomas"),
    ("VN", "Asia/Ho_Chi_Minh"),
    ("VU", "Pacific/Efate"),
    ("WF", "Pacific/Wallis"),
    ("WS", "Pacific/Apia"),
    ("YE", "Asia/Aden"),
    ("YT", "Indian/Mayotte"),
    ("ZA", "Africa/Johannesburg"),
    ("ZM", "Africa/Lusaka"),
    ("ZW", "Africa/Harare"),
];

/// The principal zone's name of `country` (module docs), `None` for [`NO_ZONE`].
pub fn zone_name(country: Country) -> Option<&'static str> {
    let code = country.as_str();
    let find = |table: &'static [(&'static str, &'static str)]| {
        table
            .binary_search_by(|(c, _)| (*c).cmp(code))
            .ok()
            .and_then(|i| table.get(i))
            .map(|(_, zone)| *zone)
    };
    find(PRINCIPAL_OVERRIDES).or_else(|| find(ZONE_TAB))
}

/// Every country's zone, parsed once: indexed by the code's letter pair (`AA` = 0).
static ZONES: LazyLock<Vec<Option<Tz>>> = LazyLock::new(|| {
    let mut zones = vec![None; 26 * 26];
    for (code, _) in ZONE_TAB {
        if let (Ok(country), Some(i)) = (Country::parse(code), index(code)) {
            if let Some(slot) = zones.get_mut(i) {
                *slot = zone_name(country).and_then(|name| name.parse::<Tz>().ok());
            }
        }
    }
    zones
});

fn index(code: &str) -> Option<usize> {
    match code.as_bytes() {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => {
            Some(usize::from(a - b'A') * 26 + usize::from(b - b'A'))
        }
        _ => None,
    }
}

/// The principal time zone of `country`, `None` when it has none ([`NO_ZONE`]).
pub fn zone(country: Country) -> Option<Tz> {
    index(country.as_str()).and_then(|i| ZONES.get(i).copied().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code `Country::parse` accepts (it knows the ISO list; the list is private).
    fn every_country() -> Vec<Country> {
        let letters = b'A'..=b'Z';
        letters
            .clone()
            .flat_map(|a| letters.clone().map(move |b| [a, b]))
            .filter_map(|pair| Country::parse(std::str::from_utf8(&pair).ok()?).ok())
            .collect()
    }

    #[test]
    fn every_country_has_a_zone_chrono_tz_knows_or_is_listed_without_one() {
        let countries = every_country();
        assert_eq!(countries.len(), 249, "the ISO list of prism_events::codes");
        for country in countries {
            let code = country.as_str();
            match zone_name(country) {
                Some(name) => {
                    assert!(!NO_ZONE.contains(&code), "{code} is listed without a zone");
                    let parsed = name.parse::<Tz>();
                    assert!(parsed.is_ok(), "{code}: chrono-tz does not know {name}");
                    assert_eq!(zone(country), parsed.ok(), "{code}");
                }
                None => {
                    assert!(
                        NO_ZONE.contains(&code),
                        "{code} has no zone and is not listed"
                    );
                    assert_eq!(zone(country), None);
                }
            }
        }
    }

    #[test]
    fn tables_are_sorted_unique_and_only_name_known_countries() {
        for table in [ZONE_TAB, PRINCIPAL_OVERRIDES] {
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0), "sorted, unique");
            for (code, name) in table {
                assert!(Country::parse(code).is_ok(), "{code}");
                assert!(name.parse::<Tz>().is_ok(), "{name}");
            }
        }
        for (code, _) in PRINCIPAL_OVERRIDES {
            assert!(
                ZONE_TAB.iter().any(|(c, _)| c == code),
                "{code}: an override replaces a zone.tab row"
            );
        }
    }

    #[test]
    fn multi_zone_countries_get_their_documented_principal_zone() {
        let name = |code: &str| Country::parse(code).ok().and_then(zone_name);
        assert_eq!(name("US"), Some("America/New_York"), "zone.tab's first row");
        assert_eq!(name("DE"), Some("Europe/Berlin"), "not Europe/Busingen");
        assert_eq!(name("MX"), Some("America/Mexico_City"));
        assert_eq!(name("CA"), Some("America/Toronto"), "override");
        assert_eq!(name("AU"), Some("Australia/Sydney"), "override");
        assert_eq!(name("RU"), Some("Europe/Moscow"), "override");
        assert_eq!(name("BV"), None);
    }
}
