//! Opaque, tamper-evident paging cursors.
//!
//! A cursor is `<payload>.<tag>`, both base64url without padding: the payload is the JSON
//! of the page's last key, and the tag is HMAC-SHA256 over a label naming the projector
//! (`prism-<name>-cursor-v1`), the cursor's kind (which list it pages), its scope (the
//! filters of the request that made it) and the payload. So a cursor that was edited,
//! signed with another key, made by another projector or list, or sent back with other
//! filters fails verification and is refused as `invalid_cursor`.

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use prism_platform::http::Problem;
use prism_platform::secret::Secret;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest cursor text accepted by default (a key of a few integers or ids is far below).
pub const DEFAULT_MAX_LEN: usize = 1_024;
/// The query parameter carrying a cursor.
pub const FIELD: &str = "cursor";

/// The key that signs and verifies one projector's cursors (its `cursor_secret`).
#[derive(Clone)]
pub struct CursorKey {
    /// The keyed MAC, already fed with the projector's label (domain separation).
    mac: HmacSha256,
    max_len: usize,
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(****)")
    }
}

impl CursorKey {
    /// The cursor key of projector `projector` (`ledger`, `search`…): a tag made by
    /// another projector, or for anything else, never verifies here.
    pub fn new(projector: &str, secret: &Secret) -> Self {
        Self::from_bytes(projector, secret.expose().as_bytes())
    }

    pub fn from_bytes(projector: &str, key: &[u8]) -> Self {
        // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()));
        let label = format!("prism-{projector}-cursor-v1");
        mac.update(&(label.len() as u64).to_be_bytes());
        mac.update(label.as_bytes());
        Self {
            mac,
            max_len: DEFAULT_MAX_LEN,
        }
    }

    /// Accepts cursors up to `max_len` characters (a cursor carrying an engine's
    /// point-in-time id is longer than one carrying a number).
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    fn tagger(&self, kind: &str, scope: &str, payload: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        for part in [kind.as_bytes(), scope.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(payload);
        mac
    }

    /// The cursor text for `position` on list `kind` with filters `scope`.
    pub fn seal<P: Serialize>(&self, kind: &str, scope: &str, position: &P) -> String {
        // Serialising a plain key (integers, ids, strings) cannot fail.
        let payload = serde_json::to_vec(position).unwrap_or_default();
        let tag = self.tagger(kind, scope, &payload).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The position in a cursor made by [`CursorKey::seal`] with the same key, kind and
    /// scope; anything else is a 400 `invalid_cursor` naming `cursor`.
    pub fn open<P: DeserializeOwned>(
        &self,
        kind: &str,
        scope: &str,
        text: &str,
    ) -> Result<P, Problem> {
        if text.len() > self.max_len {
            return Err(invalid_cursor());
        }
        let (payload, tag) = text.split_once('.').ok_or_else(invalid_cursor)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| invalid_cursor())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid_cursor())?;
        self.tagger(kind, scope, &payload)
            .verify_slice(&tag)
            .map_err(|_| invalid_cursor())?;
        serde_json::from_slice(&payload).map_err(|_| invalid_cursor())
    }
}

/// A cursor that this service did not make for this request.
pub fn invalid_cursor() -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_cursor", "Invalid cursor")
        .field(FIELD)
        .detail(
            "the cursor is not one this list returned for these filters; \
             start again without a cursor",
        )
}

#[cfg(test)]
mod tests {
    use hmac::Mac as _;
    use uuid::Uuid;

    use super::*;

    fn key() -> CursorKey {
        CursorKey::new("ledger", &Secret::new("test-secret"))
    }

    fn refused<P: DeserializeOwned + std::fmt::Debug>(r: Result<P, Problem>) {
        let p = r.expect_err("cursor must be refused");
        assert_eq!(p.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(p.document().code, "invalid_cursor");
        assert_eq!(p.document().field.as_deref(), Some("cursor"));
    }

    #[test]
    fn a_cursor_round_trips_and_is_url_safe() {
        let k = key();
        let text = k.seal("statement", "a|b", &42u64);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
            "{text}"
        );
        assert_eq!(k.open::<u64>("statement", "a|b", &text), Ok(42));
        let id = Uuid::now_v7();
        let text = k.seal("accounts", "", &id);
        assert_eq!(k.open::<Uuid>("accounts", "", &text), Ok(id));
    }

    /// The tag is computed exactly as the ledger computed it before the kit held this code
    /// (label, kind, scope length-prefixed, then the payload), so cursors handed out
    /// before an upgrade still open after it.
    #[test]
    fn the_tag_layout_is_stable() {
        let text = key().seal("statement", "s", &42u64);
        let (_, tag) = text.split_once('.').expect("two parts");
        let mut mac = <HmacSha256 as Mac>::new_from_slice(b"test-secret").expect("any key");
        for part in [&b"prism-ledger-cursor-v1"[..], b"statement", b"s"] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(b"42");
        let expected = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(tag, expected);
    }

    #[test]
    fn a_tampered_cursor_is_refused() {
        let k = key();
        let text = k.seal("statement", "s", &42u64);
        let (payload, tag) = text.split_once('.').expect("two parts");
        // Another position under the same tag.
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(b"41"));
        refused(k.open::<u64>("statement", "s", &forged));
        // A flipped bit in the tag.
        let mut bytes = URL_SAFE_NO_PAD.decode(tag).expect("tag");
        bytes[0] ^= 1;
        let flipped = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(bytes));
        refused(k.open::<u64>("statement", "s", &flipped));
        // A truncated tag.
        refused(k.open::<u64>("statement", "s", &text[..text.len() - 2]));
        for junk in ["", ".", "abc", "a.b.c", "!!.??", &"A".repeat(5_000)] {
            refused(k.open::<u64>("statement", "s", junk));
        }
    }

    #[test]
    fn a_foreign_key_projector_kind_or_scope_is_refused() {
        let text = key().seal("statement", "s", &42u64);
        refused(CursorKey::new("ledger", &Secret::new("other")).open::<u64>(
            "statement",
            "s",
            &text,
        ));
        refused(
            CursorKey::new("search", &Secret::new("test-secret")).open::<u64>(
                "statement",
                "s",
                &text,
            ),
        );
        refused(key().open::<u64>("accounts", "s", &text));
        refused(key().open::<u64>("statement", "s2", &text));
        // Kind and scope are length-prefixed: moving a boundary does not verify.
        let text = key().seal("ab", "c", &1u64);
        refused(key().open::<u64>("a", "bc", &text));
    }

    #[test]
    fn a_valid_tag_over_the_wrong_type_is_refused() {
        let text = key().seal("statement", "s", &"not a number");
        refused(key().open::<u64>("statement", "s", &text));
    }

    #[test]
    fn longer_cursors_need_a_larger_limit() {
        let long = "x".repeat(2_000);
        let text = key().seal("pages", "", &long);
        refused(key().open::<String>("pages", "", &text));
        assert_eq!(
            key().max_len(8_192).open::<String>("pages", "", &text),
            Ok(long)
        );
    }

    #[test]
    fn the_key_never_prints() {
        assert_eq!(format!("{:?}", key()), "CursorKey(****)");
    }
}
