//! Tracking tokens: what the pixel and tracked-link URLs carry. Pure: no
//! I/O, no clock (the issue time is passed in).
//!
//! A token is base64url (no padding) of
//!
//! ```text
//! version  u8      1
//! kind     u8      b'o' (open pixel) or b'c' (click)
//! key id   u8 len, then 1..=32 bytes of [A-Za-z0-9_-]
//! issued   u32 BE  unix seconds when the token was made
//! message  u8 len, then the message id (1..=128 bytes)
//! target   the rest, clicks only: the signed URL (see `target`)
//! tag      16 bytes: HMAC-SHA256(key, DOMAIN || everything above), truncated
//! ```
//!
//! Why this shape: the redirect needs the target without reading the
//! database, so the URL travels inside the token and the tag makes it
//! unforgeable; the key id lets keys rotate while links already in
//! mailboxes keep working (every configured key verifies, the first one
//! signs); the kind is signed, so an open token is never a click token;
//! the issue time lets the machine rules see "clicked seconds after it was
//! sent" without a database read. A 128-bit tag is what NIST SP 800-107
//! allows for truncated HMAC with room to spare: guessing one takes 2^127
//! requests on average.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::target::{self, TargetError};
use crate::domain::MessageId;

/// The only format so far.
const VERSION: u8 = 1;
/// Mixed into every tag so these MACs can never be confused with another
/// use of the same secret.
const DOMAIN: &[u8] = b"hookrelay/tracking/v1\0";
/// Bytes of HMAC-SHA256 kept.
pub const TAG_LEN: usize = 16;
/// Longest key id.
pub const MAX_KEY_ID: usize = 32;
/// Shortest secret accepted, in bytes (256 bits of a random string).
pub const MIN_SECRET_LEN: usize = 32;
/// Longest token looked at; anything longer is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Open,
    Click,
}

impl TokenKind {
    fn byte(self) -> u8 {
        match self {
            TokenKind::Open => b'o',
            TokenKind::Click => b'c',
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Open => "open",
            TokenKind::Click => "click",
        }
    }
}

/// What a token says, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub kind: TokenKind,
    pub message_id: MessageId,
    /// Unix seconds.
    pub issued_at: u32,
    /// The click target, already checked (clicks only).
    pub url: Option<String>,
}

impl Claims {
    pub fn open(message_id: MessageId, issued_at: u32) -> Claims {
        Claims { kind: TokenKind::Open, message_id, issued_at, url: None }
    }

    /// A click on `raw`, which must pass [`target::check`]; the checked
    /// (normalized) form is what is signed.
    pub fn click(message_id: MessageId, raw: &str, issued_at: u32) -> Result<Claims, TargetError> {
        Ok(Claims { kind: TokenKind::Click, message_id, issued_at, url: Some(target::check(raw)?) })
    }
}

/// Why a token was refused. Never shown to the requester; counted and
/// logged by kind only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown or retired key id")]
    UnknownKey,
    #[error("tag does not match")]
    BadTag,
    #[error("token is for another kind of hit")]
    WrongKind,
    #[error("signed content is not acceptable")]
    BadContent,
}

impl TokenError {
    /// A metrics label.
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadTag => "bad_tag",
            TokenError::WrongKind => "wrong_kind",
            TokenError::BadContent => "bad_content",
        }
    }
}

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key id is 1 to {MAX_KEY_ID} characters of A-Z, a-z, 0-9, - and _")]
    BadId,
    #[error("the key id `{0}` is used twice")]
    DuplicateId(String),
    #[error("a secret must be at least {MIN_SECRET_LEN} bytes")]
    ShortSecret,
    #[error("at least one key is needed")]
    NoKeys,
}

/// Whether `id` can name a tracking key.
pub fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One key: its id and the HMAC already keyed with its secret.
#[derive(Clone)]
struct Key {
    id: String,
    mac: Hmac<Sha256>,
}

impl Key {
    fn tag(&self, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

/// The configured keys: the first signs, every one verifies.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: secrets never print.
        f.debug_struct("Keyring").field("ids", &self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>()).finish()
    }
}

impl Keyring {
    /// Builds the ring from `(id, secret)` pairs, newest (signing) first.
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Keyring, KeyError> {
        let mut out: Vec<Key> = Vec::new();
        for (id, secret) in keys {
            if !valid_key_id(id) {
                return Err(KeyError::BadId);
            }
            if out.iter().any(|k| k.id == id) {
                return Err(KeyError::DuplicateId(id.to_owned()));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyError::ShortSecret);
            }
            let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).map_err(|_| KeyError::ShortSecret)?;
            out.push(Key { id: id.to_owned(), mac });
        }
        if out.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(Keyring { keys: out })
    }

    /// The id of the key that signs new tokens.
    pub fn signing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Encodes and signs `claims` with the first key.
    pub fn sign(&self, claims: &Claims) -> String {
        let key = &self.keys[0];
        let mut payload = Vec::with_capacity(64 + claims.url.as_ref().map_or(0, String::len));
        payload.push(VERSION);
        payload.push(claims.kind.byte());
        push_short(&mut payload, key.id.as_bytes());
        payload.extend_from_slice(&claims.issued_at.to_be_bytes());
        push_short(&mut payload, claims.message_id.as_str().as_bytes());
        if let (TokenKind::Click, Some(url)) = (claims.kind, &claims.url) {
            payload.extend_from_slice(url.as_bytes());
        }
        let tag = key.tag(&payload);
        payload.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// Decodes `token`, checks its tag under the key it names, and returns
    /// its claims if it is a token of `kind` whose content still passes
    /// every check it passed when it was signed.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        // Canonical base64url only (no padding, no stray trailing bits), so
        // each token has exactly one spelling.
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
        if bytes.len() < TAG_LEN + 2 {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let mut r = Reader(payload);
        if r.byte()? != VERSION {
            return Err(TokenError::Malformed);
        }
        let kind_byte = r.byte()?;
        let key_id = r.short()?;
        let key = self.keys.iter().find(|k| k.id.as_bytes() == key_id).ok_or(TokenError::UnknownKey)?;
        if !bool::from(key.tag(payload).ct_eq(tag)) {
            return Err(TokenError::BadTag);
        }
        // Authentic from here on; still parsed defensively.
        let token_kind = match kind_byte {
            b'o' => TokenKind::Open,
            b'c' => TokenKind::Click,
            _ => return Err(TokenError::Malformed),
        };
        if token_kind != kind {
            return Err(TokenError::WrongKind);
        }
        let issued_at = u32::from_be_bytes(r.array()?);
        let id = std::str::from_utf8(r.short()?).map_err(|_| TokenError::BadContent)?;
        let message_id = MessageId::parse(id).map_err(|_| TokenError::BadContent)?;
        let rest = r.0;
        let url = match kind {
            TokenKind::Open if rest.is_empty() => None,
            TokenKind::Open => return Err(TokenError::Malformed),
            TokenKind::Click => {
                let url = std::str::from_utf8(rest).map_err(|_| TokenError::BadContent)?;
                // Checked again at redirect time: only a target that is
                // still acceptable, and exactly as signed, is followed.
                if target::check(url).ok().as_deref() != Some(url) {
                    return Err(TokenError::BadContent);
                }
                Some(url.to_owned())
            }
        };
        Ok(Claims { kind, message_id, issued_at, url })
    }
}

fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    // Key ids and message ids are at most 128 bytes, checked by their types.
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&bytes[..bytes.len().min(usize::from(u8::MAX))]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A length byte (1 or more) and that many bytes.
    fn short(&mut self) -> Result<&'a [u8], TokenError> {
        let len = usize::from(self.byte()?);
        if len == 0 {
            return Err(TokenError::Malformed);
        }
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &[u8] = b"first-secret-0123456789abcdefghijklmnop";
    const K2: &[u8] = b"second-secret-0123456789abcdefghijklmno";
    const ISSUED: u32 = 1_700_000_000;

    fn ring(keys: &[(&'static str, &'static [u8])]) -> Keyring {
        Keyring::new(keys.iter().copied()).expect("valid keys")
    }

    fn id(s: &str) -> MessageId {
        MessageId::parse(s).expect("message id")
    }

    fn click(url: &str) -> Claims {
        Claims::click(id("msg-1"), url, ISSUED).expect("acceptable target")
    }

    #[test]
    fn tokens_round_trip() {
        let keys = ring(&[("k1", K1)]);
        let open = Claims::open(id("order-42@shop.example"), ISSUED);
        let token = keys.sign(&open);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{token}");
        assert_eq!(keys.verify(&token, TokenKind::Open), Ok(open));

        let c = click("https://shop.example/item?id=7&utm_source=mail#reviews");
        let token = keys.sign(&c);
        assert_eq!(keys.verify(&token, TokenKind::Click), Ok(c.clone()));
        assert_eq!(c.url.as_deref(), Some("https://shop.example/item?id=7&utm_source=mail#reviews"));
        // Compact: the fixed overhead besides the id and URL is 25 bytes.
        let overhead =
            URL_SAFE_NO_PAD.decode(&token).expect("b64").len() - "msg-1".len() - c.url.map_or(0, |u| u.len());
        assert_eq!(overhead, 1 + 1 + 1 + 2 + 4 + 1 + TAG_LEN);
    }

    #[test]
    fn kinds_are_not_interchangeable() {
        let keys = ring(&[("k1", K1)]);
        let open_token = keys.sign(&Claims::open(id("m"), ISSUED));
        let click_token = keys.sign(&click("https://example.com/"));
        assert_eq!(keys.verify(&open_token, TokenKind::Click), Err(TokenError::WrongKind));
        assert_eq!(keys.verify(&click_token, TokenKind::Open), Err(TokenError::WrongKind));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let keys = ring(&[("k1", K1)]);
        for (claims, kind) in [
            (Claims::open(id("msg-1"), ISSUED), TokenKind::Open),
            (click("https://example.com/a?b=c"), TokenKind::Click),
        ] {
            let token = keys.sign(&claims);
            let bytes = URL_SAFE_NO_PAD.decode(&token).expect("b64");
            for i in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut tampered = bytes.clone();
                    tampered[i] ^= flip;
                    let t = URL_SAFE_NO_PAD.encode(&tampered);
                    assert!(keys.verify(&t, kind).is_err(), "byte {i} ^ {flip:#x} was accepted");
                }
            }
            // Every character of the text form, replaced by every other one.
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            for i in 0..token.len() {
                for &c in alphabet {
                    if token.as_bytes()[i] == c {
                        continue;
                    }
                    let mut t = token.clone().into_bytes();
                    t[i] = c;
                    let t = String::from_utf8(t).expect("ascii");
                    assert!(keys.verify(&t, kind).is_err(), "char {i} -> {} was accepted", c as char);
                }
            }
            // Truncated, extended and padded forms.
            for cut in 0..token.len() {
                assert!(keys.verify(&token[..cut], kind).is_err(), "prefix of {cut} accepted");
            }
            assert!(keys.verify(&format!("{token}A"), kind).is_err());
            assert!(keys.verify(&format!("{token}="), kind).is_err());
        }
    }

    #[test]
    fn unknown_and_retired_keys_are_refused() {
        let old = ring(&[("k1", K1)]);
        let token = old.sign(&click("https://example.com/"));
        // A ring without k1 (retired) does not know it.
        assert_eq!(ring(&[("k2", K2)]).verify(&token, TokenKind::Click), Err(TokenError::UnknownKey));
        // A different secret under the same id is a forgery.
        assert_eq!(ring(&[("k1", K2)]).verify(&token, TokenKind::Click), Err(TokenError::BadTag));
    }

    #[test]
    fn rotation_keeps_old_links_working() {
        let before = ring(&[("k1", K1)]);
        let old_token = before.sign(&click("https://example.com/old"));
        // Rotation: prepend the new key; the old one still verifies.
        let after = ring(&[("k2", K2), ("k1", K1)]);
        assert_eq!(after.signing_key_id(), "k2");
        let new_token = after.sign(&click("https://example.com/new"));
        assert_eq!(
            after.verify(&old_token, TokenKind::Click).map(|c| c.url),
            Ok(Some("https://example.com/old".into()))
        );
        assert_eq!(
            after.verify(&new_token, TokenKind::Click).map(|c| c.url),
            Ok(Some("https://example.com/new".into()))
        );
        // The old ring cannot verify tokens of the new key.
        assert_eq!(before.verify(&new_token, TokenKind::Click), Err(TokenError::UnknownKey));
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(Keyring::new([("k1", &b"short"[..])]).map(|_| ()), Err(KeyError::ShortSecret));
        assert_eq!(Keyring::new([("bad id", K1)]).map(|_| ()), Err(KeyError::BadId));
        assert_eq!(Keyring::new([("", K1)]).map(|_| ()), Err(KeyError::BadId));
        assert_eq!(Keyring::new([("k1", K1), ("k1", K2)]).map(|_| ()), Err(KeyError::DuplicateId("k1".into())));
        assert_eq!(Keyring::new(std::iter::empty()).map(|_| ()), Err(KeyError::NoKeys));
        assert!(!format!("{:?}", ring(&[("k1", K1)])).contains("secret"));
    }

    /// A validly signed token whose URL no longer passes the target rules
    /// (say, signed by an older version with looser rules) is not followed.
    #[test]
    fn signed_but_unacceptable_targets_are_refused() {
        let keys = ring(&[("k1", K1)]);
        for url in ["javascript:alert(1)", "https://example.com", "//evil.example/", "https://a@evil.example/"] {
            let claims =
                Claims { kind: TokenKind::Click, message_id: id("m"), issued_at: ISSUED, url: Some(url.into()) };
            let token = keys.sign(&claims);
            assert_eq!(keys.verify(&token, TokenKind::Click), Err(TokenError::BadContent), "{url}");
        }
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn decoding_never_panics(s in "\\PC{0,300}") {
                let keys = ring(&[("k1", K1)]);
                let _ = keys.verify(&s, TokenKind::Open);
                let _ = keys.verify(&s, TokenKind::Click);
            }

            #[test]
            fn arbitrary_bytes_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let keys = ring(&[("k1", K1)]);
                let token = URL_SAFE_NO_PAD.encode(&bytes);
                prop_assert!(keys.verify(&token, TokenKind::Click).is_err());
                prop_assert!(keys.verify(&token, TokenKind::Open).is_err());
            }

            #[test]
            fn structured_forgeries_never_verify(
                kid in "[a-z0-9]{1,8}",
                issued in any::<u32>(),
                id in "[a-z0-9]{1,20}",
                url in "https://[a-z]{1,10}\\.example/[a-z]{0,10}",
                tag in proptest::collection::vec(any::<u8>(), TAG_LEN),
            ) {
                let keys = ring(&[("k1", K1)]);
                let mut payload = vec![VERSION, b'c', kid.len() as u8];
                payload.extend_from_slice(kid.as_bytes());
                payload.extend_from_slice(&issued.to_be_bytes());
                payload.push(id.len() as u8);
                payload.extend_from_slice(id.as_bytes());
                payload.extend_from_slice(url.as_bytes());
                payload.extend_from_slice(&tag);
                prop_assert!(keys.verify(&URL_SAFE_NO_PAD.encode(&payload), TokenKind::Click).is_err());
            }

            #[test]
            fn signed_tokens_always_verify(id in "[A-Za-z0-9._:@-]{1,128}", path in "[a-zA-Z0-9/._~-]{0,200}", issued in any::<u32>()) {
                let keys = ring(&[("k1", K1)]);
                let claims = Claims::click(MessageId::parse(&id).expect("id"), &format!("https://example.com/{path}"), issued);
                if let Ok(claims) = claims {
                    let token = keys.sign(&claims);
                    prop_assert_eq!(keys.verify(&token, TokenKind::Click), Ok(claims));
                }
            }
        }
    }
}
