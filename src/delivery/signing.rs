//! Outbound signatures. Pure: time comes in as an argument.
//!
//! Standard Webhooks (the default): `webhook-id`, `webhook-timestamp` (unix
//! seconds) and `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>`
//! keyed with the base64-decoded `whsec_` secret. During a rotation every
//! still-valid secret signs, space-separated, so consumers holding either
//! secret accept. The id is the delivery id, stable across retries; the
//! timestamp is the attempt's.
//!
//! Courier compatibility: `courier-signature: t=<epoch ms>,signature=<hex
//! HMAC-SHA256("t.body")>`, keyed with the secret exactly as shown (the whole
//! `whsec_...` string, as Courier consumers use their secret string). During
//! a rotation each still-valid secret adds a `signature=` entry, newest
//! first, so a consumer comparing the first entry keeps working with the new
//! secret and one accepting any entry works with either.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";
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
}

impl WebhookSecret {
    /// A new secret of 32 random bytes.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(WebhookSecret { text: format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)), key: bytes.to_vec() })
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

/// How a subscription's requests are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` (Standard Webhooks).
    StandardWebhooks,
    /// `courier-signature: t=<ms>,signature=<hex>`.
    Courier,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Courier => "courier",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "standard-webhooks" => Some(Scheme::StandardWebhooks),
            "courier" => Some(Scheme::Courier),
            _ => None,
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

/// The `webhook-signature` value: one entry per secret, space-separated.
pub fn standard_signature_header(secrets: &[&WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| standard_signature(s, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// The `courier-signature` value: one `signature=` entry per secret.
pub fn courier_signature(secrets: &[&WebhookSecret], t_ms: i64, body: &[u8]) -> String {
    let t = t_ms.to_string();
    let mut out = format!("t={t}");
    for secret in secrets {
        let sig = mac(secret.expose().as_bytes(), &[t.as_bytes(), b".", body]);
        out.push_str(",signature=");
        out.push_str(&hex::encode(sig));
    }
    out
}

/// The signature headers of one attempt. `now_ms` is the attempt's time.
pub fn headers(
    scheme: Scheme,
    secrets: &[&WebhookSecret],
    id: &str,
    now_ms: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    match scheme {
        Scheme::StandardWebhooks => {
            let ts = now_ms.div_euclid(1000);
            vec![
                ("webhook-id", id.to_owned()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", standard_signature_header(secrets, id, ts, body)),
            ]
        }
        Scheme::Courier if secrets.is_empty() => Vec::new(),
        Scheme::Courier => vec![("courier-signature", courier_signature(secrets, now_ms, body))],
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

/// Verifies a Standard Webhooks request: any `v1` entry may match.
pub fn verify_standard(
    secret: &WebhookSecret,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_ms: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| SignatureError::Malformed("webhook-timestamp"))?;
    check_time(ts, now_ms.div_euclid(1000), tolerance_seconds)?;
    let expected = mac(secret.key(), &[id.as_bytes(), b".", timestamp.trim().as_bytes(), b".", body]);
    let mut matched = subtle::Choice::from(0);
    for entry in signature_header.split_whitespace() {
        let Some(encoded) = entry.strip_prefix("v1,") else { continue };
        if let Ok(sig) = STANDARD.decode(encoded) {
            matched |= sig.as_slice().ct_eq(&expected);
        }
    }
    if bool::from(matched) { Ok(()) } else { Err(SignatureError::NoMatch) }
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

    #[test]
    fn the_published_vector() {
        assert_eq!(standard_signature(&secret(), ID, TS, BODY), EXPECTED);
        let headers = headers(Scheme::StandardWebhooks, &[&secret()], ID, TS * 1000 + 999, BODY);
        assert_eq!(headers[0], ("webhook-id", ID.to_owned()));
        assert_eq!(headers[1], ("webhook-timestamp", TS.to_string()));
        assert_eq!(headers[2], ("webhook-signature", EXPECTED.to_owned()));
        let now = TS * 1000;
        assert_eq!(verify_standard(&secret(), ID, "1614265330", EXPECTED, BODY, now, 300), Ok(()));
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let new = WebhookSecret::generate().expect("entropy");
        let header = standard_signature_header(&[&new, &secret()], ID, TS, BODY);
        let entries: Vec<_> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1], EXPECTED);
        let now = TS * 1000;
        assert_eq!(verify_standard(&secret(), ID, "1614265330", &header, BODY, now, 300), Ok(()));
        assert_eq!(verify_standard(&new, ID, "1614265330", &header, BODY, now, 300), Ok(()));
    }

    #[test]
    fn negative_cases() {
        let now = TS * 1000;
        let changed = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert_eq!(verify_standard(&secret(), ID, "1614265330", changed, BODY, now, 300), Err(SignatureError::NoMatch));
        assert_eq!(verify_standard(&secret(), ID, "1614265330", "v1,", BODY, now, 300), Err(SignatureError::NoMatch));
        assert_eq!(
            verify_standard(&secret(), ID, "1614265330", "v2,abc", BODY, now, 300),
            Err(SignatureError::NoMatch)
        );
        let mixed = format!("v1,bad {EXPECTED} v1a,xyz");
        assert_eq!(verify_standard(&secret(), ID, "1614265330", &mixed, BODY, now, 300), Ok(()));
        assert_eq!(
            verify_standard(&secret(), ID, "1614265330", EXPECTED, BODY, now + 301_000, 300),
            Err(SignatureError::TooOld)
        );
        assert_eq!(
            verify_standard(&secret(), ID, "1614265330", EXPECTED, BODY, now - 301_000, 300),
            Err(SignatureError::InFuture)
        );
        assert_eq!(
            verify_standard(&secret(), ID, "1614265330", EXPECTED, b"{}", now, 300),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify_standard(&secret(), "other", "1614265330", EXPECTED, BODY, now, 300),
            Err(SignatureError::NoMatch)
        );
        assert!(verify_standard(&secret(), ID, "soon", EXPECTED, BODY, now, 300).is_err());
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
        let header = courier_signature(&[&s], 1_631_816_343_012, BODY);
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
        let h = headers(Scheme::Courier, &[&s], ID, now, BODY);
        assert_eq!(h, vec![("courier-signature", header)]);
        // During a rotation both secrets sign, newest first.
        let new = WebhookSecret::generate().expect("entropy");
        let both = courier_signature(&[&new, &s], now, BODY);
        assert_eq!(both.matches(",signature=").count(), 2);
        assert_eq!(verify_courier(&s, &both, BODY, now, 300), Ok(()));
        assert_eq!(verify_courier(&new, &both, BODY, now, 300), Ok(()));
    }
}
