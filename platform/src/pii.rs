//! Masks for personal data shown to callers without the `pii` scope
//! ([`crate::auth::Scope::Pii`]). A mask keeps just enough to tell records apart by eye
//! (an initial, the mail domain) and nothing that identifies the person.

/// `ada.lovelace@example.org` → `a***@example.org`; without an `@` (never stored by the
/// command side, which validates addresses) → `***`.
pub fn mask_email(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) if !domain.is_empty() => match local.chars().next() {
            Some(first) => format!("{first}***@{domain}"),
            None => format!("***@{domain}"),
        },
        _ => "***".into(),
    }
}

/// `Ada Lovelace` → `A. L.`: the initial of each word.
pub fn mask_name(name: &str) -> String {
    let initials: Vec<String> = name
        .split_whitespace()
        .filter_map(|word| word.chars().next())
        .map(|first| format!("{first}."))
        .collect();
    if initials.is_empty() {
        "***".into()
    } else {
        initials.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_keeps_its_first_letter_and_domain_only() {
        assert_eq!(mask_email("ada.lovelace@example.org"), "a***@example.org");
        assert_eq!(mask_email("zoë.müller@example.org"), "z***@example.org");
        assert_eq!(mask_email("Émile@exämple.fr"), "É***@exämple.fr");
        assert_eq!(mask_email("@example.org"), "***@example.org");
        for odd in ["", "no-at-sign", "trailing@"] {
            assert_eq!(mask_email(odd), "***", "{odd}");
        }
    }

    #[test]
    fn a_name_keeps_its_initials_only() {
        assert_eq!(mask_name("Ada Lovelace"), "A. L.");
        assert_eq!(mask_name("  Zoë   Müller-Lüdenscheidt "), "Z. M.");
        assert_eq!(mask_name("Ōtani"), "Ō.");
        assert_eq!(mask_name("   "), "***");
    }
}
