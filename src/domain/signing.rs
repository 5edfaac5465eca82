//! Outbound signatures. Pure: time comes in as an argument.
//!
//! Standard Webhooks (the default): `webhook-id`, `webhook-timestamp` (unix
//! seconds) and `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>`
//! keyed with the base64-decoded `whsec_` secret. During a rotation every
//! still-valid secret signs, space-separated, so consumers holding either
//! secret accept. The id is the delivery id, stable across retries; the
//! timestamp is the attempt's.
//!
//! Standard Webhooks asymmetric (`v1a`): the same headers, each entry
//! `v1a,<base64 ed25519 signature of id.timestamp.body>` made with a `whsk_`
//! signing key that only hookrelay holds; consumers verify with the `whpk_`
//! public key and hold nothing that could forge a request. A rotation from
//! one kind of key to the other signs with both (`v1,... v1a,...`).
//!
//! Courier compatibility: `courier-signature: t=<epoch ms>,signature=<hex
//! HMAC-SHA256("t.body")>`, keyed with the secret exactly as shown (the whole
//! `whsec_...` string, as Courier consumers use their secret string). During
//! a rotation each still-valid secret adds a `signature=` entry, newest
//! first, so a consumer comparing the first entry keeps working with the new
//! secret and one accepting any entry works with either.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";
/// Prefix of Standard Webhooks ed25519 signing keys (the 32-byte seed, or
/// the seed followed by the public key, in base64).
pub const SIGNING_KEY_PREFIX: &str = "whsk_";
/// Prefix of Standard Webhooks ed25519 public keys.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";
/// Consumers reject timestamps further than this from their clock.
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;

/// A subscription's signing secret: `whsec_` + base64 of 24 to 64 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    text: String,
    key: Vec<u8>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a secret is `whsec_` followed by base64")]
    Format,
    #[error("a secret must decode to 24 to 64 bytes")]
    Length,
    #[error(
        "a signing key is `whsk_` followed by the base64 of a 32-byte ed25519 seed (or the seed and its public key)"
    )]
    SigningKey,
    #[error("a public key is `whpk_` followed by the base64 of a 32-byte ed25519 public key")]
    PublicKey,
    #[error("this scheme signs with {expected} keys, and this is {given}")]
    WrongKind { expected: &'static str, given: &'static str },
}

impl WebhookSecret {
    /// A new secret of 32 random bytes.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(WebhookSecret { text: format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)), key: bytes.to_vec() })
    }

    /// A secret of any length (at least one byte), as providers issue them
    /// for their own webhooks: hookrelay only verifies with those.
    pub fn from_key(text: &str, key: Vec<u8>) -> Option<Self> {
        (!key.is_empty()).then(|| WebhookSecret { text: text.trim().to_owned(), key })
    }

    /// Parses `whsec_<base64>` (the prefix may be omitted).
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let s = s.trim();
        let encoded = s.strip_prefix(SECRET_PREFIX).unwrap_or(s);
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Format)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError::Length);
        }
        Ok(WebhookSecret { text: format!("{SECRET_PREFIX}{encoded}"), key })
    }

    /// The secret as shown to subscribers.
    pub fn expose(&self) -> &str {
        &self.text
    }

    fn key(&self) -> &[u8] {
        &self.key
    }
}

/// A Standard Webhooks ed25519 signing key (`whsk_`).
#[derive(Clone)]
pub struct Ed25519Key {
    text: String,
    pair: Arc<Ed25519KeyPair>,
}

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519Key(..)")
    }
}

impl PartialEq for Ed25519Key {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Ed25519Key {}

impl Ed25519Key {
    /// A new key from 32 random bytes.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ed25519Key::from_seed(&seed).map_err(|_| getrandom::Error::UNEXPECTED)
    }

    fn from_seed(seed: &[u8]) -> Result<Self, SecretError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| SecretError::SigningKey)?;
        Ok(Ed25519Key { text: format!("{SIGNING_KEY_PREFIX}{}", STANDARD.encode(seed)), pair: Arc::new(pair) })
    }

    /// Parses `whsk_<base64>`: a 32-byte seed (as the Standard Webhooks
    /// libraries write it) or the seed followed by its public key (Svix's
    /// form), which must match.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let encoded = s.trim().strip_prefix(SIGNING_KEY_PREFIX).ok_or(SecretError::SigningKey)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| SecretError::SigningKey)?;
        let key = match bytes.len() {
            32 => Ed25519Key::from_seed(&bytes)?,
            64 => {
                let key = Ed25519Key::from_seed(&bytes[..32])?;
                if key.public_bytes() != &bytes[32..] {
                    return Err(SecretError::SigningKey);
                }
                key
            }
            _ => return Err(SecretError::SigningKey),
        };
        Ok(key)
    }

    fn public_bytes(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// `whpk_` + base64 of the public key: what a consumer verifies with.
    pub fn public_key(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX}{}", STANDARD.encode(self.public_bytes()))
    }

    /// The signing key as stored (`whsk_` + base64 of the seed).
    pub fn expose(&self) -> &str {
        &self.text
    }
}

/// A key a subscription signs with: an HMAC secret (`v1`) or an ed25519
/// signing key (`v1a`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKey {
    Hmac(WebhookSecret),
    Ed25519(Ed25519Key),
}

/// The two kinds of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Hmac,
    Ed25519,
}

impl KeyKind {
    fn describe(self) -> &'static str {
        match self {
            KeyKind::Hmac => "HMAC (`whsec_`)",
            KeyKind::Ed25519 => "ed25519 (`whsk_`)",
        }
    }
}

impl SigningKey {
    /// A new key of `kind`.
    pub fn generate(kind: KeyKind) -> Result<Self, getrandom::Error> {
        Ok(match kind {
            KeyKind::Hmac => SigningKey::Hmac(WebhookSecret::generate()?),
            KeyKind::Ed25519 => SigningKey::Ed25519(Ed25519Key::generate()?),
        })
    }

    /// Parses a stored or given key: `whsk_...` is ed25519, anything else a
    /// `whsec_` secret (whose prefix may be left out).
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        if s.trim().starts_with(SIGNING_KEY_PREFIX) {
            Ed25519Key::parse(s).map(SigningKey::Ed25519)
        } else {
            WebhookSecret::parse(s).map(SigningKey::Hmac)
        }
    }

    pub fn kind(&self) -> KeyKind {
        match self {
            SigningKey::Hmac(_) => KeyKind::Hmac,
            SigningKey::Ed25519(_) => KeyKind::Ed25519,
        }
    }

    /// The key as stored.
    pub fn expose(&self) -> &str {
        match self {
            SigningKey::Hmac(s) => s.expose(),
            SigningKey::Ed25519(k) => k.expose(),
        }
    }

    /// What a consumer verifies with: the `whsec_` secret itself, or the
    /// `whpk_` public key (the signing key never leaves hookrelay).
    pub fn verification_key(&self) -> String {
        match self {
            SigningKey::Hmac(s) => s.expose().to_owned(),
            SigningKey::Ed25519(k) => k.public_key(),
        }
    }

    /// One `v1,...` or `v1a,...` entry over `id.timestamp.body`.
    fn standard_entry(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        match self {
            SigningKey::Hmac(secret) => standard_signature(secret, id, timestamp, body),
            SigningKey::Ed25519(key) => {
                let ts = timestamp.to_string();
                let mut signed = Vec::with_capacity(id.len() + ts.len() + body.len() + 2);
                for part in [id.as_bytes(), b".", ts.as_bytes(), b".", body] {
                    signed.extend_from_slice(part);
                }
                format!("v1a,{}", STANDARD.encode(key.pair.sign(&signed).as_ref()))
            }
        }
    }
}

/// How a subscription's requests are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,...`
    /// (Standard Webhooks, HMAC-SHA256 with a `whsec_` secret).
    StandardWebhooks,
    /// The same headers with `v1a,...` entries: ed25519, signed with a key
    /// only hookrelay holds, verified with its `whpk_` public key.
    StandardWebhooksEd25519,
    /// `courier-signature: t=<ms>,signature=<hex>`.
    Courier,
}

impl Scheme {
    pub const ALL: [Scheme; 3] = [Scheme::StandardWebhooks, Scheme::StandardWebhooksEd25519, Scheme::Courier];

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::StandardWebhooksEd25519 => "standard-webhooks-ed25519",
            Scheme::Courier => "courier",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Scheme::ALL.into_iter().find(|scheme| scheme.as_str() == s)
    }

    /// The kind of key the scheme's current key must be.
    pub fn key_kind(self) -> KeyKind {
        match self {
            Scheme::StandardWebhooks | Scheme::Courier => KeyKind::Hmac,
            Scheme::StandardWebhooksEd25519 => KeyKind::Ed25519,
        }
    }

    /// Checks that `key` can be this scheme's current key.
    pub fn check_key(self, key: &SigningKey) -> Result<(), SecretError> {
        if key.kind() == self.key_kind() {
            Ok(())
        } else {
            Err(SecretError::WrongKind { expected: self.key_kind().describe(), given: key.kind().describe() })
        }
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// One `v1,<base64>` entry.
pub fn standard_signature(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let sig = mac(secret.key(), &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", STANDARD.encode(sig))
}

/// The `webhook-signature` value: one entry per key, space-separated
/// (`v1,` for secrets, `v1a,` for ed25519 keys).
pub fn standard_signature_header(keys: &[&SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter().map(|k| k.standard_entry(id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// The `courier-signature` value: one `signature=` entry per secret
/// (Courier's scheme has no place for ed25519 keys, which are left out).
pub fn courier_signature(keys: &[&SigningKey], t_ms: i64, body: &[u8]) -> String {
    let t = t_ms.to_string();
    let mut out = format!("t={t}");
    for key in keys {
        let SigningKey::Hmac(secret) = key else { continue };
        let sig = mac(secret.expose().as_bytes(), &[t.as_bytes(), b".", body]);
        out.push_str(",signature=");
        out.push_str(&hex::encode(sig));
    }
    out
}

/// The signature headers of one attempt. `now_ms` is the attempt's time.
pub fn headers(
    scheme: Scheme,
    keys: &[&SigningKey],
    id: &str,
    now_ms: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    match scheme {
        Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519 => {
            let ts = now_ms.div_euclid(1000);
            vec![
                ("webhook-id", id.to_owned()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", standard_signature_header(keys, id, ts, body)),
            ]
        }
        Scheme::Courier if !keys.iter().any(|k| k.kind() == KeyKind::Hmac) => Vec::new(),
        Scheme::Courier => vec![("courier-signature", courier_signature(keys, now_ms, body))],
    }
}

/// What a consumer verifies with: a `whsec_` secret (`v1` entries) or a
/// `whpk_` public key (`v1a` entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyKey {
    Hmac(WebhookSecret),
    Ed25519Public([u8; 32]),
}

impl VerifyKey {
    /// Parses `whpk_...` (or a `whsk_` signing key, whose public half is
    /// used) or a `whsec_` secret.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let s = s.trim();
        if let Some(encoded) = s.strip_prefix(PUBLIC_KEY_PREFIX) {
            let bytes = STANDARD.decode(encoded).map_err(|_| SecretError::PublicKey)?;
            return bytes.try_into().map(VerifyKey::Ed25519Public).map_err(|_| SecretError::PublicKey);
        }
        match SigningKey::parse(s)? {
            SigningKey::Hmac(secret) => Ok(VerifyKey::Hmac(secret)),
            SigningKey::Ed25519(key) => {
                key.public_bytes().try_into().map(VerifyKey::Ed25519Public).map_err(|_| SecretError::PublicKey)
            }
        }
    }

    /// The signature entries this key checks.
    pub fn entry_prefix(&self) -> &'static str {
        match self {
            VerifyKey::Hmac(_) => "v1,",
            VerifyKey::Ed25519Public(_) => "v1a,",
        }
    }
}

/// Why a received webhook does not verify (consumer side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("the timestamp is too old")]
    TooOld,
    #[error("the timestamp is in the future")]
    InFuture,
    #[error("no signature matches")]
    NoMatch,
    /// A public key checks Standard Webhooks `v1a` entries only.
    #[error("a whpk_ public key checks only Standard Webhooks v1a signatures")]
    WrongKey,
}

fn check_time(ts_seconds: i64, now_seconds: i64, tolerance: i64) -> Result<(), SignatureError> {
    if now_seconds - ts_seconds > tolerance {
        return Err(SignatureError::TooOld);
    }
    if ts_seconds - now_seconds > tolerance {
        return Err(SignatureError::InFuture);
    }
    Ok(())
}

/// Verifies a Standard Webhooks request: any entry of the key's kind
/// (`v1` for a secret, `v1a` for a public key) may match; entries of other
/// kinds are passed over, as the specification asks.
pub fn verify_standard(
    key: &VerifyKey,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_ms: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| SignatureError::Malformed("webhook-timestamp"))?;
    check_time(ts, now_ms.div_euclid(1000), tolerance_seconds)?;
    if standard_matches(std::slice::from_ref(key), id, timestamp, signature_header, body) {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// Whether any entry of a Standard Webhooks signature header matches
/// `id.timestamp.body` under any of `keys` (`v1` entries for secrets, `v1a`
/// for public keys; others are passed over). Every pair is compared, so
/// timing says nothing about which matched. The timestamp is not checked.
pub fn standard_matches(keys: &[VerifyKey], id: &str, timestamp: &str, signature_header: &str, body: &[u8]) -> bool {
    let signed = [id.as_bytes(), b".", timestamp.trim().as_bytes(), b".", body];
    let mut matched = subtle::Choice::from(0);
    for key in keys {
        let entries = signature_header.split_whitespace().filter_map(|e| e.strip_prefix(key.entry_prefix()));
        match key {
            VerifyKey::Hmac(secret) => {
                let expected = mac(secret.key(), &signed);
                for encoded in entries {
                    if let Ok(sig) = STANDARD.decode(encoded) {
                        matched |= sig.as_slice().ct_eq(&expected);
                    }
                }
            }
            VerifyKey::Ed25519Public(public) => {
                // A signature verifies or not; there is no secret to time.
                let message = signed.concat();
                let public = UnparsedPublicKey::new(&ED25519, public);
                for encoded in entries {
                    let ok = STANDARD.decode(encoded).is_ok_and(|sig| public.verify(&message, &sig).is_ok());
                    matched |= subtle::Choice::from(u8::from(ok));
                }
            }
        }
    }
    bool::from(matched)
}

/// Verifies a `courier-signature` header.
pub fn verify_courier(
    secret: &WebhookSecret,
    header: &str,
    body: &[u8],
    now_ms: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("signature", v)) => signatures.push(v),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed("courier-signature"))?;
    let t_ms: i64 = t.parse().map_err(|_| SignatureError::Malformed("courier-signature"))?;
    check_time(t_ms.div_euclid(1000), now_ms.div_euclid(1000), tolerance_seconds)?;
    let expected = hex::encode(mac(secret.expose().as_bytes(), &[t.as_bytes(), b".", body]));
    let matched =
        signatures.iter().fold(subtle::Choice::from(0), |acc, s| acc | s.as_bytes().ct_eq(expected.as_bytes()));
    if bool::from(matched) { Ok(()) } else { Err(SignatureError::NoMatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks / Svix published vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> WebhookSecret {
        WebhookSecret::parse(SECRET).expect("valid secret")
    }

    fn key() -> SigningKey {
        SigningKey::Hmac(secret())
    }

    fn vkey() -> VerifyKey {
        VerifyKey::Hmac(secret())
    }

    #[test]
    fn the_published_vector() {
        assert_eq!(standard_signature(&secret(), ID, TS, BODY), EXPECTED);
        let headers = headers(Scheme::StandardWebhooks, &[&key()], ID, TS * 1000 + 999, BODY);
        assert_eq!(headers[0], ("webhook-id", ID.to_owned()));
        assert_eq!(headers[1], ("webhook-timestamp", TS.to_string()));
        assert_eq!(headers[2], ("webhook-signature", EXPECTED.to_owned()));
        let now = TS * 1000;
        assert_eq!(verify_standard(&vkey(), ID, "1614265330", EXPECTED, BODY, now, 300), Ok(()));
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let new = SigningKey::generate(KeyKind::Hmac).expect("entropy");
        let header = standard_signature_header(&[&new, &key()], ID, TS, BODY);
        let entries: Vec<_> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1], EXPECTED);
        let now = TS * 1000;
        assert_eq!(verify_standard(&vkey(), ID, "1614265330", &header, BODY, now, 300), Ok(()));
        let SigningKey::Hmac(new) = new else { unreachable!("an HMAC key") };
        assert_eq!(verify_standard(&VerifyKey::Hmac(new), ID, "1614265330", &header, BODY, now, 300), Ok(()));
    }

    #[test]
    fn negative_cases() {
        let now = TS * 1000;
        let changed = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert_eq!(verify_standard(&vkey(), ID, "1614265330", changed, BODY, now, 300), Err(SignatureError::NoMatch));
        assert_eq!(verify_standard(&vkey(), ID, "1614265330", "v1,", BODY, now, 300), Err(SignatureError::NoMatch));
        assert_eq!(verify_standard(&vkey(), ID, "1614265330", "v2,abc", BODY, now, 300), Err(SignatureError::NoMatch));
        let mixed = format!("v1,bad {EXPECTED} v1a,xyz");
        assert_eq!(verify_standard(&vkey(), ID, "1614265330", &mixed, BODY, now, 300), Ok(()));
        assert_eq!(
            verify_standard(&vkey(), ID, "1614265330", EXPECTED, BODY, now + 301_000, 300),
            Err(SignatureError::TooOld)
        );
        assert_eq!(
            verify_standard(&vkey(), ID, "1614265330", EXPECTED, BODY, now - 301_000, 300),
            Err(SignatureError::InFuture)
        );
        assert_eq!(verify_standard(&vkey(), ID, "1614265330", EXPECTED, b"{}", now, 300), Err(SignatureError::NoMatch));
        assert_eq!(
            verify_standard(&vkey(), "other", "1614265330", EXPECTED, BODY, now, 300),
            Err(SignatureError::NoMatch)
        );
        assert!(verify_standard(&vkey(), ID, "soon", EXPECTED, BODY, now, 300).is_err());
    }

    #[test]
    fn secrets() {
        assert_eq!(secret().expose(), SECRET);
        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").map(|s| s.expose().to_owned()),
            Ok(SECRET.into())
        );
        assert_eq!(WebhookSecret::parse("whsec_!!!"), Err(SecretError::Format));
        assert_eq!(WebhookSecret::parse("whsec_dG9vc2hvcnQ="), Err(SecretError::Length));
        let generated = WebhookSecret::generate().expect("entropy");
        assert!(generated.expose().starts_with(SECRET_PREFIX));
        assert_eq!(WebhookSecret::parse(generated.expose()), Ok(generated.clone()));
        assert!(!format!("{generated:?}").contains(generated.expose()));
    }

    #[test]
    fn courier_scheme() {
        let s = secret();
        let header = courier_signature(&[&key()], 1_631_816_343_012, BODY);
        assert!(header.starts_with("t=1631816343012,signature="));
        // Recompute independently: HMAC-SHA256 keyed with the secret text over "t.body".
        let mut m = HmacSha256::new_from_slice(SECRET.as_bytes()).expect("key");
        m.update(b"1631816343012.");
        m.update(BODY);
        assert_eq!(header, format!("t=1631816343012,signature={}", hex::encode(m.finalize().into_bytes())));
        let now = 1_631_816_343_012;
        assert_eq!(verify_courier(&s, &header, BODY, now, 300), Ok(()));
        assert_eq!(verify_courier(&s, &header, b"x", now, 300), Err(SignatureError::NoMatch));
        assert_eq!(verify_courier(&s, &header, BODY, now + 400_000, 300), Err(SignatureError::TooOld));
        assert!(verify_courier(&s, "garbage", BODY, now, 300).is_err());
        let h = headers(Scheme::Courier, &[&key()], ID, now, BODY);
        assert_eq!(h, vec![("courier-signature", header)]);
        // During a rotation both secrets sign, newest first.
        let new = WebhookSecret::generate().expect("entropy");
        let both = courier_signature(&[&SigningKey::Hmac(new.clone()), &key()], now, BODY);
        assert_eq!(both.matches(",signature=").count(), 2);
        assert_eq!(verify_courier(&s, &both, BODY, now, 300), Ok(()));
        assert_eq!(verify_courier(&new, &both, BODY, now, 300), Ok(()));
    }

    /// The Standard Webhooks libraries' published ed25519 vector
    /// (`libraries/go/webhook_asymmetric_test.go`, TestAsymmetricWebhookSign):
    /// the seed is the base64 of "TESTSIGNINGKEYDONOTUSETHISFORANY".
    const ED_SEED: &str = "VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
    const ED_EXPECTED: &str =
        "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";

    #[test]
    fn the_published_ed25519_vector() {
        let key = SigningKey::parse(&format!("whsk_{ED_SEED}")).expect("signing key");
        assert_eq!(key.kind(), KeyKind::Ed25519);
        let header = headers(Scheme::StandardWebhooksEd25519, &[&key], ID, TS * 1000 + 5, BODY);
        assert_eq!(header[2], ("webhook-signature", ED_EXPECTED.to_owned()));
        let public = VerifyKey::parse(&key.verification_key()).expect("public key");
        assert!(key.verification_key().starts_with(PUBLIC_KEY_PREFIX));
        let now = TS * 1000;
        assert_eq!(verify_standard(&public, ID, "1614265330", ED_EXPECTED, BODY, now, 300), Ok(()));
        // Seed followed by its public key (Svix's form) is the same key; a
        // wrong public half is refused.
        let SigningKey::Ed25519(ed) = &key else { unreachable!("ed25519") };
        let long = [STANDARD.decode(ED_SEED).expect("b64"), ed.public_bytes().to_vec()].concat();
        assert_eq!(SigningKey::parse(&format!("whsk_{}", STANDARD.encode(&long))), Ok(key.clone()));
        let mut wrong = long.clone();
        wrong[40] ^= 1;
        assert_eq!(SigningKey::parse(&format!("whsk_{}", STANDARD.encode(&wrong))), Err(SecretError::SigningKey));
        assert!(!format!("{key:?}").contains(ED_SEED));
    }

    #[test]
    fn ed25519_negative_cases() {
        let key = SigningKey::generate(KeyKind::Ed25519).expect("entropy");
        let public = VerifyKey::parse(&key.verification_key()).expect("public key");
        let now = TS * 1000;
        let good = standard_signature_header(&[&key], ID, TS, BODY);
        assert_eq!(verify_standard(&public, ID, "1614265330", &good, BODY, now, 300), Ok(()));
        assert_eq!(verify_standard(&public, ID, "1614265330", &good, b"{}", now, 300), Err(SignatureError::NoMatch));
        assert_eq!(verify_standard(&public, ID, "1614265330", "v1a,", BODY, now, 300), Err(SignatureError::NoMatch));
        // A v1 entry is not taken for a v1a one, nor the other way round.
        assert_eq!(verify_standard(&public, ID, "1614265330", EXPECTED, BODY, now, 300), Err(SignatureError::NoMatch));
        assert_eq!(verify_standard(&vkey(), ID, "1614265330", &good, BODY, now, 300), Err(SignatureError::NoMatch));
        // A rotation between kinds signs with both; each consumer key finds its entry.
        let both = standard_signature_header(&[&key, &self::key()], ID, TS, BODY);
        assert!(both.starts_with("v1a,") && both.contains(" v1,"), "{both}");
        assert_eq!(verify_standard(&public, ID, "1614265330", &both, BODY, now, 300), Ok(()));
        assert_eq!(verify_standard(&vkey(), ID, "1614265330", &both, BODY, now, 300), Ok(()));
        // Courier's header carries only the secrets.
        assert_eq!(courier_signature(&[&key, &self::key()], now, BODY).matches("signature=").count(), 1);
        assert!(headers(Scheme::Courier, &[&key], ID, now, BODY).is_empty());
        for bad in ["whpk_", "whpk_AAAA", "whsk_AAAA", "whsk_!!"] {
            assert!(VerifyKey::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Scheme::StandardWebhooksEd25519.check_key(&key), Ok(()));
        assert!(Scheme::StandardWebhooks.check_key(&key).is_err());
        assert!(Scheme::StandardWebhooksEd25519.check_key(&self::key()).is_err());
        assert_eq!(Scheme::parse("standard-webhooks-ed25519"), Some(Scheme::StandardWebhooksEd25519));
    }
}
