//! SendGrid Event Webhook (the Signed Event Webhook, optionally with OAuth).
//!
//! Authenticity: ECDSA P-256 / SHA-256 over the bytes of the
//! `X-Twilio-Email-Event-Webhook-Timestamp` header immediately followed by
//! the raw body; `X-Twilio-Email-Event-Webhook-Signature` is the base64 DER
//! signature and the key is the "verification key" SendGrid shows (base64
//! DER SubjectPublicKeyInfo). Several keys may be configured during a
//! rotation. When OAuth (a bearer token) or other HTTP credentials are
//! configured they are checked too.
//!
//! Freshness: SendGrid retries a failed batch for up to about a day and may
//! not sign it again, so the default window is three days. A replay inside
//! it changes nothing: every event has a dedupe key.
//!
//! Body: a JSON array of flat event objects (a lone object is taken as a
//! batch of one). Correlation: hookrelay's id is a `custom_args` entry,
//! which SendGrid echoes as a top-level key of every event; without it, the
//! `X-Message-Id` the send API returned (the prefix of each event's
//! `sg_message_id`). It is one of the two, never both: one `X-Message-Id`
//! covers every personalization of a send request.

use base64::Engine;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use serde_json::Value;

use super::common::{self, HttpAuth, check_window, header, json_seconds_to_ms, key_from_id, key_from_parts, str_field};
use super::{Batch, Callback, CallbackRequest, ParseContext, ParseError, Parsed, VerifyError};
use crate::config::{FieldError, SourceConfig};
use crate::domain::{EventKind, MessageId, Reason, Status};

/// Configuration fields a SendGrid source uses.
pub const ACCEPTS: &[&str] =
    &["public_keys", "tolerance_seconds", "bearer_token", "username", "password", "header_name", "header_value"];

/// Three days: SendGrid retries for up to about 24 hours, possibly with the
/// original signature and timestamp.
pub const DEFAULT_TOLERANCE_SECONDS: u64 = 3 * 24 * 60 * 60;

const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// The DER of a P-256 SubjectPublicKeyInfo up to its public point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (65 bytes) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// An uncompressed P-256 point: `0x04 || x || y`.
type Point = [u8; 65];

/// A SendGrid source's verification keys and HTTP credentials.
pub struct Credentials {
    keys: Vec<Point>,
    tolerance: u64,
    http: HttpAuth,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("sendgrid::Credentials")
            .field("keys", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .field("http", &self.http)
            .finish()
    }
}

impl Credentials {
    pub fn from_config(cfg: &SourceConfig) -> Result<Self, FieldError> {
        if cfg.public_keys.is_empty() {
            return Err(FieldError::new(
                "public_keys",
                "a SendGrid source needs the Signed Event Webhook verification key (Settings > Mail Settings > \
                 Event Webhook)",
            ));
        }
        let keys = cfg
            .public_keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                parse_public_key(key).map_err(|why| FieldError::new("public_keys", format!("key {}: {why}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Credentials {
            keys,
            tolerance: cfg.tolerance_seconds.unwrap_or(DEFAULT_TOLERANCE_SECONDS),
            http: HttpAuth::from_config(cfg)?,
        })
    }
}

/// The public point of a base64 P-256 SubjectPublicKeyInfo (PEM armour and
/// line breaks are tolerated: operators paste keys from many places).
fn parse_public_key(text: &str) -> Result<Point, &'static str> {
    let b64: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("-----"))
        .flat_map(|l| l.chars().filter(|c| !c.is_ascii_whitespace()))
        .collect();
    if b64.is_empty() {
        return Err("empty");
    }
    let der = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| "not base64")?;
    let point = der
        .strip_prefix(&P256_SPKI_PREFIX[..])
        .and_then(|p| Point::try_from(p).ok())
        .filter(|p| p[0] == 0x04)
        .ok_or("not a P-256 public key (expected the base64 SubjectPublicKeyInfo SendGrid shows, MFkw...)")?;
    Ok(point)
}

/// Whether `signature` (DER) is valid for `timestamp || body` under any key.
/// Every key is tried, so the time taken does not depend on which matched.
fn signature_matches(keys: &[Point], timestamp: &[u8], body: &[u8], signature: &[u8]) -> bool {
    let message = [timestamp, body].concat();
    keys.iter().fold(false, |ok, key| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key[..]).verify(&message, signature).is_ok() | ok
    })
}

/// Checks the HTTP credentials (when configured), the signature and the
/// timestamp window.
pub fn verify(req: &CallbackRequest<'_>, creds: &Credentials, now: i64) -> Result<(), VerifyError> {
    creds.http.check(req.headers)?;
    let timestamp = header(req.headers, TIMESTAMP_HEADER)?;
    let signature = header(req.headers, SIGNATURE_HEADER)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| VerifyError::Malformed(SIGNATURE_HEADER))?;
    let ts: i64 = timestamp.trim().parse().map_err(|_| VerifyError::Malformed(TIMESTAMP_HEADER))?;
    // The signed bytes are the header exactly as sent.
    if !signature_matches(&creds.keys, timestamp.as_bytes(), req.body, &signature) {
        return Err(VerifyError::BadSignature);
    }
    check_window(ts, now, creds.tolerance)
}

/// Parses a batch into one callback per event.
pub fn parse(req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
    let body: Value = serde_json::from_slice(req.body).map_err(|_| ParseError::Shape("the body is not JSON"))?;
    let events = match body {
        Value::Array(events) => events,
        event @ Value::Object(_) => vec![event],
        _ => return Err(ParseError::Shape("the body is not a JSON array of events")),
    };
    Batch::parse_each(&events, "empty event batch", |data| parse_event(data, ctx, req.received_at))
}

/// SendGrid names the servers that handled a message in the segments of
/// `sg_message_id` that follow the message's id (`filter0425p1mdw1`,
/// `filterdrecv-...`, `recvd-...`). Takes the text from a segment's start.
fn is_server_segment(segment: &str) -> bool {
    segment.starts_with("filter") || segment.starts_with("recvd")
}

/// The `X-Message-Id` the send API returned for this event's message: the
/// part of `sg_message_id` before the server segments (before the first `.`
/// when none is recognized). Events SendGrid dropped before assigning an id
/// (`sg_message_id` starts with a server segment) fall back to the local part
/// of `smtp-id`, SendGrid's `<X-Message-Id@host>` Message-ID header.
fn provider_message_id(data: &Value) -> Option<&str> {
    let from_sg = str_field(data, "sg_message_id").map(str::trim).and_then(|sg| {
        let mut segment_starts = std::iter::once(0).chain(sg.match_indices('.').map(|(i, _)| i + 1));
        let id = match segment_starts.find(|&at| is_server_segment(&sg[at..])) {
            Some(at) => &sg[..at.saturating_sub(1)],
            None => sg.split('.').next().unwrap_or(sg),
        };
        Some(id).filter(|id| !id.is_empty())
    });
    from_sg.or_else(|| {
        let smtp_id = str_field(data, "smtp-id")?.trim();
        let smtp_id = smtp_id.strip_prefix('<').unwrap_or(smtp_id);
        let local = smtp_id.split(['@', '>']).next().unwrap_or("").trim();
        Some(local).filter(|l| !l.is_empty())
    })
}

/// Courier's reason for a `dropped` event, from SendGrid's `reason` text.
fn dropped_reason(reason: &str) -> Reason {
    let reason = reason.trim().to_ascii_lowercase();
    match reason.as_str() {
        "bounced address" | "invalid" | "expired" => Reason::Bounced,
        "unsubscribed address" => Reason::Unsubscribed,
        "spam reporting address" => Reason::Filtered,
        r if r.starts_with("spam content") => Reason::Filtered,
        r if r.starts_with("invalid smtpapi header") || r.starts_with("recipient list over package quota") => {
            Reason::ProviderError
        }
        _ => Reason::Failed,
    }
}

/// The provider's error text: `reason` (bounce, dropped) or `response`
/// (deferred), prefixed with the enhanced status code when it adds one.
fn error_text(data: &Value) -> String {
    let text = str_field(data, "reason").filter(|s| !s.trim().is_empty()).or_else(|| str_field(data, "response"));
    let status = data.get("status").and_then(|s| match s {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    match (status, text.map(str::trim)) {
        (Some(status), Some(text)) if !text.contains(status.as_str()) => format!("{status} {text}"),
        (_, Some(text)) => text.to_owned(),
        (Some(status), None) => status,
        (None, None) => String::new(),
    }
}

fn parse_event(data: &Value, ctx: &ParseContext, received_at: i64) -> Result<Callback, ParseError> {
    if !data.is_object() {
        return Err(ParseError::Shape("not an object"));
    }
    let name = str_field(data, "event").ok_or(ParseError::Missing("`event`".into()))?;
    let ts = data.get("timestamp").and_then(json_seconds_to_ms).unwrap_or(received_at);
    let recipient = str_field(data, "email").map(str::trim).filter(|r| !r.is_empty());
    let pmid = provider_message_id(data);
    let hookrelay_id = str_field(data, &ctx.id_field).map(str::trim).filter(|id| MessageId::parse(id).is_ok());
    let key = match str_field(data, "sg_event_id").map(str::trim).filter(|id| !id.is_empty()) {
        Some(id) => key_from_id(ctx, id),
        // Older payloads lack `sg_event_id`; a retried batch repeats the
        // event's fields, so their bytes identify it.
        None => key_from_parts(ctx, &[&serde_json::to_vec(data).unwrap_or_default()]),
    };
    let (kind, reason) = match name {
        "processed" => (EventKind::Status(Status::Sent), None),
        "deferred" => (EventKind::Status(Status::Delayed), None),
        "delivered" => (EventKind::Status(Status::Delivered), None),
        "open" => (EventKind::Status(Status::Opened), None),
        "click" => (EventKind::Status(Status::Clicked), None),
        "bounce" => {
            let reason = if str_field(data, "type") == Some("blocked") { Reason::Filtered } else { Reason::Bounced };
            (EventKind::Status(Status::Undeliverable), Some(reason))
        }
        "dropped" => {
            (EventKind::Status(Status::Undeliverable), Some(dropped_reason(str_field(data, "reason").unwrap_or(""))))
        }
        "spamreport" => (EventKind::Complained, None),
        "unsubscribe" | "group_unsubscribe" => (EventKind::Unsubscribed, None),
        "group_resubscribe" => (EventKind::Resubscribed, None),
        _ => (EventKind::Unknown, None),
    };
    let mut event = common::event(ctx, kind, ts, key, name, Some(data));
    event.recipient = recipient.map(str::to_owned);
    event.reason = reason;
    if matches!(name, "deferred" | "bounce" | "dropped") {
        common::set_error(&mut event, &error_text(data));
    }
    if name == "open" && data.get("sg_machine_open") == Some(&Value::Bool(true)) {
        common::machine(&mut event, ctx);
    }
    if name == "click"
        && let Some(url) = str_field(data, "url")
    {
        event.detail.insert("url".into(), Value::from(url));
    }
    // One send request, hence one X-Message-Id, may carry many
    // personalizations, each with its own hookrelay id; records sharing a
    // provider id are merged as one message. So hookrelay's id, when the
    // event carries one, is the only correlation; the provider's id is for
    // messages sent without it (and stays in the raw event).
    let target = match hookrelay_id {
        Some(id) => common::target(ctx, Some(id), None),
        None => common::target(ctx, None, pmid),
    };
    Ok(Callback { target, event })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    use serde_json::json;

    use super::super::Action;
    use super::super::common::testing::{config, context, fixture, headers, mutations, post};
    use super::*;
    use crate::domain::Secret;

    const URL: &str = "https://hooks.example.com/callbacks/sendgrid";
    /// Vector A's key (sendgrid-nodejs, sendgrid-go).
    const PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
    /// The matching private key published in sendgrid-go's tests (SEC1 DER). TEST KEY ONLY.
    const PRIVATE_KEY_SEC1: &str = "MHcCAQEEIEQmZgBEh9DcU9zMl34czK3xov4AYvm9P3r7rNB2dNXtoAoGCCqGSM49AwEHoUQDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
    /// Vector A's "other key" negative case.
    const OTHER_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA==";
    const VECTOR_TIMESTAMP: &str = "1588788367";
    const VECTOR_SIGNATURE: &str =
        "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).expect("base64")
    }

    fn creds_with(keys: &[&str], tweak: impl FnOnce(&mut SourceConfig)) -> Credentials {
        let mut cfg = config("sendgrid");
        cfg.public_keys = keys.iter().map(|k| (*k).to_owned()).collect();
        tweak(&mut cfg);
        Credentials::from_config(&cfg).expect("valid")
    }

    fn creds(keys: &[&str]) -> Credentials {
        creds_with(keys, |_| {})
    }

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let len = content.len();
        let mut out = vec![tag];
        match len {
            0..=127 => out.push(len as u8),
            128..=255 => out.extend([0x81, len as u8]),
            _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// The published SEC1 test key wrapped as PKCS#8, which `ring` signs with.
    fn test_key_pair() -> EcdsaKeyPair {
        let algorithm = der(0x30, &hex::decode("06072a8648ce3d020106082a8648ce3d030107").expect("hex"));
        let pkcs8 = der(0x30, &[&[0x02, 0x01, 0x00][..], &algorithm, &der(0x04, &b64(PRIVATE_KEY_SEC1))].concat());
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &SystemRandom::new()).expect("test key")
    }

    /// Signature headers for `body` at `timestamp`, made with the test key.
    fn signed_headers(timestamp: &str, body: &[u8]) -> HeaderMap {
        let message = [timestamp.as_bytes(), body].concat();
        let signature = test_key_pair().sign(&SystemRandom::new(), &message).expect("sign");
        let signature = base64::engine::general_purpose::STANDARD.encode(signature.as_ref());
        headers(&format!(
            "Content-Type: application/json\n\
             X-Twilio-Email-Event-Webhook-Timestamp: {timestamp}\n\
             X-Twilio-Email-Event-Webhook-Signature: {signature}"
        ))
    }

    fn keys(list: &[&str]) -> Vec<Point> {
        list.iter().map(|k| parse_public_key(k).expect("key")).collect()
    }

    #[test]
    fn vector_a_and_its_negative_cases() {
        let payload = fixture("sendgrid", "vector-nodejs-go.payload");
        let sig = b64(VECTOR_SIGNATURE);
        let key = keys(&[PUBLIC_KEY]);
        assert!(signature_matches(&key, VECTOR_TIMESTAMP.as_bytes(), &payload, &sig));
        assert!(!signature_matches(&keys(&[OTHER_KEY]), VECTOR_TIMESTAMP.as_bytes(), &payload, &sig));
        assert!(!signature_matches(&key, VECTOR_TIMESTAMP.as_bytes(), b"payload", &sig));
        let changed =
            b64("MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=");
        assert!(!signature_matches(&key, VECTOR_TIMESTAMP.as_bytes(), &payload, &changed));
        assert!(!signature_matches(&key, b"timestamp", &payload, &sig));
        assert!(!signature_matches(&key, VECTOR_TIMESTAMP.as_bytes(), &payload, b"not der"));
        assert!(!signature_matches(&[], VECTOR_TIMESTAMP.as_bytes(), &payload, &sig));

        // The same through `verify`, with the headers as SendGrid sends them.
        let h = headers(&String::from_utf8(fixture("sendgrid", "vector-nodejs-go.headers")).expect("utf-8"));
        let now = 1_588_788_367_000;
        assert_eq!(verify(&post(URL, &h, &payload, now), &creds(&[PUBLIC_KEY]), now), Ok(()));
        assert_eq!(verify(&post(URL, &h, &payload, now), &creds(&[OTHER_KEY]), now), Err(VerifyError::BadSignature));
        assert_eq!(verify(&post(URL, &h, b"payload", now), &creds(&[PUBLIC_KEY]), now), Err(VerifyError::BadSignature));
        let mut bad_ts = h.clone();
        bad_ts.insert(TIMESTAMP_HEADER, "timestamp".parse().expect("value"));
        assert_eq!(
            verify(&post(URL, &bad_ts, &payload, now), &creds(&[PUBLIC_KEY]), now),
            Err(VerifyError::Malformed(TIMESTAMP_HEADER))
        );
    }

    #[test]
    fn any_configured_key_may_verify() {
        let payload = fixture("sendgrid", "vector-nodejs-go.payload");
        let h = headers(&String::from_utf8(fixture("sendgrid", "vector-nodejs-go.headers")).expect("utf-8"));
        let now = 1_588_788_367_000;
        assert_eq!(verify(&post(URL, &h, &payload, now), &creds(&[OTHER_KEY, PUBLIC_KEY]), now), Ok(()));
        assert_eq!(verify(&post(URL, &h, &payload, now), &creds(&[PUBLIC_KEY, OTHER_KEY]), now), Ok(()));
    }

    #[test]
    fn the_generated_signed_batch_verifies_and_parses() {
        let body = fixture("sendgrid", "generated-signed-batch.payload");
        let h = headers(&String::from_utf8(fixture("sendgrid", "generated-signed-batch.headers.txt")).expect("utf-8"));
        let now = 1_700_000_000_000 + 60_000;
        let req = post(URL, &h, &body, now);
        assert_eq!(verify(&req, &creds(&[PUBLIC_KEY]), now), Ok(()));
        assert_eq!(verify(&req, &creds(&[OTHER_KEY]), now), Err(VerifyError::BadSignature));
        // The trailing CRLF is part of what was signed.
        let trimmed = body.strip_suffix(b"\r\n").expect("CRLF");
        assert_eq!(verify(&post(URL, &h, trimmed, now), &creds(&[PUBLIC_KEY]), now), Err(VerifyError::BadSignature));

        let mut ctx = context("sendgrid");
        ctx.id_field = "relay_message_id".into();
        let parsed = parse(&req, &ctx).expect("parses");
        let kinds: Vec<_> = parsed.callbacks.iter().map(|c| c.event.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Status(Status::Sent),
                EventKind::Status(Status::Delivered),
                EventKind::Status(Status::Undeliverable),
                EventKind::Status(Status::Opened),
            ]
        );
        for cb in &parsed.callbacks {
            assert_eq!(cb.target.id.as_ref().map(|i| i.as_str()), Some("msg_01HZX3RELAYEXAMPLE"));
        }
        assert!(parsed.callbacks.iter().all(|c| c.target.provider.is_none()), "hookrelay's id alone correlates");
        let parsed = parse(&req, &context("sendgrid")).expect("parses");
        let pmids: Vec<_> =
            parsed.callbacks.iter().map(|c| c.target.provider.as_ref().map(|p| p.message_id.as_str())).collect();
        assert_eq!(
            pmids,
            [
                Some("wrfRRvF7Q0GgwUo2CvDmEA"),
                Some("wrfRRvF7Q0GgwUo2CvDmEA"),
                Some("Lli-03HcQ5-JLybO9fXsJg"),
                Some("wrfRRvF7Q0GgwUo2CvDmEA")
            ]
        );
    }

    #[test]
    fn tampering_stale_future_and_missing() {
        let body = fixture("sendgrid", "delivered.json");
        let c = creds(&[PUBLIC_KEY]);
        let now = 1_700_000_000_000;
        let h = signed_headers("1700000000", &body);
        assert_eq!(verify(&post(URL, &h, &body, now), &c, now), Ok(()));

        // One byte of the body changed.
        let mut tampered = body.clone();
        let at = tampered.iter().position(|b| *b == b'4').expect("a digit");
        tampered[at] = b'5';
        assert_eq!(verify(&post(URL, &h, &tampered, now), &c, now), Err(VerifyError::BadSignature));
        // The signature changed (a bit flipped in s, still valid DER).
        let mut sig = b64(h[SIGNATURE_HEADER].to_str().expect("text"));
        let last = sig.len() - 1;
        sig[last] ^= 0x01;
        let mut bad_sig = h.clone();
        bad_sig
            .insert(SIGNATURE_HEADER, base64::engine::general_purpose::STANDARD.encode(&sig).parse().expect("value"));
        assert_eq!(verify(&post(URL, &bad_sig, &body, now), &c, now), Err(VerifyError::BadSignature));
        // Another timestamp than the one signed.
        let mut moved = h.clone();
        moved.insert(TIMESTAMP_HEADER, "1700000001".parse().expect("value"));
        assert_eq!(verify(&post(URL, &moved, &body, now), &c, now), Err(VerifyError::BadSignature));
        // Wrong key.
        assert_eq!(verify(&post(URL, &h, &body, now), &creds(&[OTHER_KEY]), now), Err(VerifyError::BadSignature));

        // Three days back is accepted (SendGrid retries without re-signing), a second more is not.
        let oldest = (1_700_000_000 - DEFAULT_TOLERANCE_SECONDS as i64).to_string();
        let h_old = signed_headers(&oldest, &body);
        assert_eq!(verify(&post(URL, &h_old, &body, now), &c, now), Ok(()));
        let stale = (1_700_000_000 - DEFAULT_TOLERANCE_SECONDS as i64 - 1).to_string();
        let h_stale = signed_headers(&stale, &body);
        assert_eq!(verify(&post(URL, &h_stale, &body, now), &c, now), Err(VerifyError::Stale));
        // Five minutes of clock skew ahead, no more.
        let h_ahead = signed_headers("1700000300", &body);
        assert_eq!(verify(&post(URL, &h_ahead, &body, now), &c, now), Ok(()));
        let h_future = signed_headers("1700000301", &body);
        assert_eq!(verify(&post(URL, &h_future, &body, now), &c, now), Err(VerifyError::Stale));
        // A configured tolerance replaces the default.
        let short = creds_with(&[PUBLIC_KEY], |cfg| cfg.tolerance_seconds = Some(600));
        let h_hour = signed_headers("1699996400", &body);
        assert_eq!(verify(&post(URL, &h_hour, &body, now), &short, now), Err(VerifyError::Stale));
        assert_eq!(verify(&post(URL, &h_hour, &body, now), &c, now), Ok(()));

        // Missing or malformed headers.
        for name in [SIGNATURE_HEADER, TIMESTAMP_HEADER] {
            let mut missing = h.clone();
            missing.remove(name);
            assert_eq!(verify(&post(URL, &missing, &body, now), &c, now), Err(VerifyError::Missing(name)));
        }
        let mut not_b64 = h.clone();
        not_b64.insert(SIGNATURE_HEADER, "!!!".parse().expect("value"));
        assert_eq!(verify(&post(URL, &not_b64, &body, now), &c, now), Err(VerifyError::Malformed(SIGNATURE_HEADER)));
        assert_eq!(
            verify(&post(URL, &HeaderMap::new(), &body, now), &c, now),
            Err(VerifyError::Missing(TIMESTAMP_HEADER))
        );
    }

    #[test]
    fn a_configured_bearer_token_is_required_too() {
        let body = fixture("sendgrid", "open.json");
        let c = creds_with(&[PUBLIC_KEY], |cfg| cfg.bearer_token = Some(Secret::new("oauth-token")));
        let now = 1_700_000_000_000;
        let mut h = signed_headers("1700000000", &body);
        assert_eq!(verify(&post(URL, &h, &body, now), &c, now), Err(VerifyError::Missing("authorization")));
        h.insert("authorization", "Bearer wrong".parse().expect("value"));
        assert_eq!(verify(&post(URL, &h, &body, now), &c, now), Err(VerifyError::BadCredentials));
        h.insert("authorization", "Bearer oauth-token".parse().expect("value"));
        assert_eq!(verify(&post(URL, &h, &body, now), &c, now), Ok(()));
        // The token alone is not enough: the signature is still checked.
        assert_eq!(verify(&post(URL, &h, b"[]", now), &c, now), Err(VerifyError::BadSignature));
    }

    #[test]
    fn keys_are_checked_at_start_up() {
        let err = |keys: &[&str]| {
            let mut cfg = config("sendgrid");
            cfg.public_keys = keys.iter().map(|k| (*k).to_owned()).collect();
            Credentials::from_config(&cfg).expect_err("refused").to_string()
        };
        assert!(err(&[]).starts_with("public_keys: "));
        assert!(err(&[""]).starts_with("public_keys: key 1: empty"));
        assert!(err(&[PUBLIC_KEY, "not base64!"]).starts_with("public_keys: key 2: not base64"));
        // A P-384 key, a truncated key and a compressed point are not P-256 SPKIs.
        let p384 =
            [hex::decode("3076301006072a8648ce3d020106052b81040022036200").expect("hex"), vec![0x04], vec![7; 96]]
                .concat();
        let p384 = base64::engine::general_purpose::STANDARD.encode(p384);
        assert!(err(&[&p384]).contains("not a P-256 public key"));
        let truncated = &PUBLIC_KEY[..PUBLIC_KEY.len() - 8];
        assert!(err(&[truncated]).starts_with("public_keys: key 1: "));
        let mut compressed = b64(PUBLIC_KEY);
        compressed[26] = 0x02;
        let compressed = base64::engine::general_purpose::STANDARD.encode(compressed);
        assert!(err(&[&compressed]).contains("not a P-256 public key"));
        // PEM armour and line breaks are fine.
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
            &PUBLIC_KEY[..64],
            &PUBLIC_KEY[64..]
        );
        assert_eq!(parse_public_key(&pem), parse_public_key(PUBLIC_KEY));
        // Debug shows no key material.
        let shown = format!("{:?}", creds_with(&[PUBLIC_KEY], |cfg| cfg.bearer_token = Some(Secret::new("tok-123"))));
        assert!(!shown.contains("MFkw") && !shown.contains("tok-123"), "{shown}");
    }

    fn parse_fixture_with(name: &str, ctx: &ParseContext) -> Callback {
        let body = fixture("sendgrid", name);
        let h = HeaderMap::new();
        let mut parsed = parse(&post(URL, &h, &body, 42), ctx).expect("parses");
        assert_eq!(parsed.callbacks.len(), 1, "{name}");
        parsed.callbacks.remove(0)
    }

    /// The samples carry anymail's `anymail_id` custom arg: use it as the id field.
    fn anymail_context() -> ParseContext {
        let mut ctx = context("sendgrid");
        ctx.id_field = "anymail_id".into();
        ctx
    }

    #[test]
    fn every_sample_normalizes_as_the_mapping_table_says() {
        struct Case {
            file: &'static str,
            kind: EventKind,
            reason: Option<Reason>,
            error: Option<&'static str>,
            recipient: &'static str,
            ts: i64,
            id: Option<&'static str>,
            pmid: Option<&'static str>,
            key: &'static str,
        }
        let undeliverable = EventKind::Status(Status::Undeliverable);
        let cases = [
            Case {
                file: "processed.json",
                kind: EventKind::Status(Status::Sent),
                reason: None,
                error: None,
                recipient: "recipient@example.com",
                ts: 1_461_095_246_000,
                id: Some("3c2f4df8-c6dd-4cd2-9b91-6582b81a0349"),
                pmid: Some("wrfRRvF7Q0GgwUo2CvDmEA"),
                key: "sendgrid:ZyjAM5rnQmuI1KFInHQ3Nw",
            },
            Case {
                file: "deferred.json",
                kind: EventKind::Status(Status::Delayed),
                reason: None,
                error: Some(
                    "Email was deferred due to the following reason(s): [IPs were throttled by recipient server]",
                ),
                recipient: "recipient@example.com",
                ts: 1_461_200_990_000,
                id: Some("ccf83222-0d7e-4542-8beb-893122afa757"),
                pmid: Some("u9Gvi3mzT6iC2poAb58_qQ"),
                key: "sendgrid:b_syL5UiTvWC_Ky5L6Bs5Q",
            },
            Case {
                file: "delivered.json",
                kind: EventKind::Status(Status::Delivered),
                reason: None,
                error: None,
                recipient: "recipient@example.com",
                ts: 1_461_095_250_000,
                id: Some("4ab185c2-0171-492f-9ce0-27de258efc99"),
                pmid: Some("wrfRRvF7Q0GgwUo2CvDmEA"),
                key: "sendgrid:nOSv8m0eTQ-vxvwNwt3fZQ",
            },
            Case {
                file: "open.json",
                kind: EventKind::Status(Status::Opened),
                reason: None,
                error: None,
                recipient: "recipient@example.com",
                ts: 1_461_095_250_000,
                id: Some("44920b35-3e31-478b-bb67-b4f5e0c85ebc"),
                pmid: Some("wrfRRvF7Q0GgwUo2CvDmEA"),
                key: "sendgrid:MjIwNDg5NTgtZGE3OC00NDI1LWFiMmMtMDUyZTU2ZmFkOTFm",
            },
            Case {
                file: "click.json",
                kind: EventKind::Status(Status::Clicked),
                reason: None,
                error: None,
                recipient: "recipient@example.com",
                ts: 1_461_095_250_000,
                id: Some("75de5af9-a090-4325-87f9-8c599ad66f60"),
                pmid: Some("_fjPjuJfRW-IPs5SuvYotg"),
                key: "sendgrid:OTdlOGUzYjctYjc5Zi00OWE4LWE4YWUtNjIxNjk2ZTJlNGVi",
            },
            Case {
                file: "bounce.json",
                kind: undeliverable,
                reason: Some(Reason::Bounced),
                error: Some("550 5.1.1 The email account that you tried to reach does not exist."),
                recipient: "noreply@example.com",
                ts: 1_461_095_250_000,
                id: Some("de212213-bb66-4302-8f3f-20acdb7a104e"),
                pmid: Some("Lli-03HcQ5-JLybO9fXsJg"),
                key: "sendgrid:lC0Rc-FuQmKbnxCWxX1jRQ",
            },
            Case {
                file: "dropped-bounced-address.json",
                kind: undeliverable,
                reason: Some(Reason::Bounced),
                error: Some("5.0.0 Bounced Address"),
                recipient: "example@example.com",
                ts: 1_513_299_569_000,
                id: None,
                // A legacy id with dots: everything before the server segments.
                pmid: Some("14c5d75ce93.dfd.64b469"),
                key: "sendgrid:zmzJhfJgAfUSOW80yEbPyw==",
            },
            Case {
                file: "dropped-invalid.json",
                kind: undeliverable,
                reason: Some(Reason::Bounced),
                error: Some("Invalid"),
                recipient: "invalid@invalid",
                ts: 1_461_095_250_000,
                id: Some("c74002d9-7ccb-4f67-8b8c-766cec03c9a6"),
                // `sg_message_id` has no id prefix: the smtp-id's local part.
                pmid: Some("wrfRRvF7Q0GgwUo2CvDmEA"),
                key: "sendgrid:3NPOePGOTkeM_U3fgWApfg",
            },
            Case {
                file: "dropped-unsubscribed.json",
                kind: undeliverable,
                reason: Some(Reason::Unsubscribed),
                error: Some("Unsubscribed Address"),
                recipient: "unsubscribe@example.com",
                ts: 1_461_095_250_000,
                id: Some("a36ec0f9-aabe-45c7-9a84-3e17afb5cb65"),
                pmid: Some("wrfRRvF7Q0GgwUo2CvDmEA"),
                key: "sendgrid:oxy9OLwMTAy5EsuZn1qhIg",
            },
        ];
        let ctx = anymail_context();
        for case in cases {
            let name = case.file;
            let cb = parse_fixture_with(name, &ctx);
            assert_eq!(cb.event.kind, case.kind, "{name}");
            assert_eq!(cb.event.reason, case.reason, "{name}");
            assert_eq!(cb.event.error.as_deref(), case.error, "{name}");
            assert_eq!(cb.event.recipient.as_deref(), Some(case.recipient), "{name}");
            assert_eq!(cb.event.ts, case.ts, "{name}");
            assert_eq!(cb.target.id.as_ref().map(|i| i.as_str()), case.id, "{name}");
            if case.id.is_some() {
                assert_eq!(cb.target.provider, None, "{name}: hookrelay's id alone correlates");
            }
            // Without the custom arg, SendGrid's id correlates.
            let plain = parse_fixture_with(name, &context("sendgrid"));
            assert_eq!(plain.target.id, None, "{name}");
            assert_eq!(plain.target.provider.as_ref().map(|p| p.message_id.as_str()), case.pmid, "{name}");
            assert_eq!(plain.target.provider.as_ref().map(|p| p.provider.as_str()), Some("sendgrid"), "{name}");
            assert_eq!(cb.event.dedupe_key, case.key, "{name}");
            assert_eq!(cb.event.provider.as_ref().map(|p| p.as_str()), Some("sendgrid"), "{name}");
            assert!(cb.event.affects_status, "{name}");
            let raw: Value = serde_json::from_slice(&fixture("sendgrid", name)).expect("json");
            assert_eq!(cb.event.detail.get("data"), Some(&raw[0]), "{name}: the raw event is kept");
            // The same event parsed again (a retry) has the same key.
            assert_eq!(parse_fixture_with(name, &ctx).event.dedupe_key, cb.event.dedupe_key, "{name}");
        }
        let click = parse_fixture_with("click.json", &ctx);
        assert_eq!(click.event.detail.get("url"), Some(&Value::from("http://www.example.com")));
        assert_eq!(click.event.provider_event.as_deref(), Some("click"));
    }

    fn one(event: Value) -> Callback {
        let body = serde_json::to_vec(&json!([event])).expect("json");
        let h = HeaderMap::new();
        parse(&post(URL, &h, &body, 7_000), &context("sendgrid")).expect("parses").callbacks.remove(0)
    }

    #[test]
    fn the_other_events_and_reasons() {
        let base = json!({"email": "r@example.com", "timestamp": 1_700_000_000, "sg_message_id": "abc.filter1", "hookrelay_id": "order-5"});
        let with = |extra: Value| {
            let mut e = base.clone();
            if let (Value::Object(e), Value::Object(extra)) = (&mut e, extra) {
                e.extend(extra);
            }
            one(e)
        };
        let kind = |name: &str| with(json!({"event": name})).event.kind;
        assert_eq!(kind("spamreport"), EventKind::Complained);
        assert_eq!(kind("unsubscribe"), EventKind::Unsubscribed);
        assert_eq!(kind("group_unsubscribe"), EventKind::Unsubscribed);
        assert_eq!(kind("group_resubscribe"), EventKind::Resubscribed);
        assert_eq!(kind("test_event"), EventKind::Unknown);
        let cb = with(json!({"event": "spamreport"}));
        assert_eq!((cb.event.reason, cb.event.error), (None, None));
        assert_eq!(cb.target.id.map(String::from), Some("order-5".to_owned()));
        assert_eq!(cb.target.provider, None, "hookrelay's id alone correlates");

        let blocked =
            with(json!({"event": "bounce", "type": "blocked", "reason": "554 blocked by policy", "status": "5.7.1"}));
        assert_eq!(blocked.event.kind, EventKind::Status(Status::Undeliverable));
        assert_eq!(blocked.event.reason, Some(Reason::Filtered));
        assert_eq!(blocked.event.error.as_deref(), Some("5.7.1 554 blocked by policy"));
        let untyped = with(json!({"event": "bounce"}));
        assert_eq!(untyped.event.reason, Some(Reason::Bounced));

        for (text, reason) in [
            ("Bounced Address", Reason::Bounced),
            ("Invalid", Reason::Bounced),
            ("Expired", Reason::Bounced),
            ("Unsubscribed Address", Reason::Unsubscribed),
            ("Spam Reporting Address", Reason::Filtered),
            ("Spam Content (if spam checker app enabled)", Reason::Filtered),
            ("Invalid SMTPAPI header", Reason::ProviderError),
            ("Recipient List over Package Quota", Reason::ProviderError),
            ("Something new", Reason::Failed),
        ] {
            let cb = with(json!({"event": "dropped", "reason": text}));
            assert_eq!(cb.event.reason, Some(reason), "{text}");
            assert_eq!(cb.event.error.as_deref(), Some(text));
        }
        // A delivered event's SMTP reply is not an error.
        assert_eq!(with(json!({"event": "delivered", "response": "250 OK"})).event.error, None);
    }

    #[test]
    fn machine_opens_are_flagged() {
        let open =
            one(json!({"event": "open", "email": "r@example.com", "sg_event_id": "m1", "sg_machine_open": true}));
        assert_eq!(open.event.kind, EventKind::Status(Status::Opened));
        assert_eq!(open.event.detail.get("machine"), Some(&Value::Bool(true)));
        assert!(!open.event.affects_status);
        let human =
            one(json!({"event": "open", "email": "r@example.com", "sg_event_id": "m2", "sg_machine_open": false}));
        assert!(human.event.affects_status);
        assert_eq!(human.event.detail.get("machine"), None);
    }

    #[test]
    fn ids_keys_and_times_without_the_usual_fields() {
        // No sg_event_id: a hash of the event, stable, and different per event.
        let e = json!({"event": "dropped", "email": "a@example.com", "timestamp": 1, "reason": "Invalid"});
        let a = one(e.clone());
        assert!(a.event.dedupe_key.starts_with("sendgrid:h:"));
        assert_eq!(one(e).event.dedupe_key, a.event.dedupe_key);
        let b = one(json!({"event": "dropped", "email": "b@example.com", "timestamp": 1, "reason": "Invalid"}));
        assert_ne!(a.event.dedupe_key, b.event.dedupe_key);
        // No message ids at all; no timestamp: the time it arrived.
        assert_eq!(a.target, crate::domain::Target::default());
        let untimed = one(json!({"event": "processed", "sg_event_id": "x"}));
        assert_eq!(untimed.event.ts, 7_000);
        assert_eq!(untimed.event.recipient, None);
        // smtp-id fallback, brackets and host removed.
        let smtp = one(json!({"event": "processed", "smtp-id": "<local-part@ismtpd-1>"}));
        assert_eq!(smtp.target.provider.map(|p| p.message_id), Some("local-part".to_owned()));
        let plain = one(json!({"event": "processed", "sg_message_id": "NoDotsAtAll"}));
        assert_eq!(plain.target.provider.map(|p| p.message_id), Some("NoDotsAtAll".to_owned()));
        let modern = one(
            json!({"event": "processed", "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-5645d9c87f-78xgx-1-5E72F6F0-6.0"}),
        );
        assert_eq!(modern.target.provider.map(|p| p.message_id), Some("LRzXl_NHStOGhQ4kofSm_A".to_owned()));
        // A hookrelay id that is not a valid id is ignored, not an error.
        let bad_id = one(json!({"event": "processed", "hookrelay_id": "has spaces", "sg_message_id": "abc.filter1"}));
        assert_eq!(bad_id.target.id, None);
        assert_eq!(bad_id.target.provider.map(|p| p.message_id), Some("abc".to_owned()), "SendGrid's id then");
    }

    #[test]
    fn batches_objects_empties_and_garbage() {
        let h = HeaderMap::new();
        let ctx = context("sendgrid");
        // Vector A's body is a lone object: a batch of one, of an unknown type.
        let payload = fixture("sendgrid", "vector-nodejs-go.payload");
        let parsed = parse(&post(URL, &h, &payload, 9), &ctx).expect("parses");
        assert_eq!(parsed.callbacks.len(), 1);
        assert_eq!(parsed.callbacks[0].event.kind, EventKind::Unknown);
        assert_eq!(parsed.callbacks[0].event.provider_event.as_deref(), Some("test_event"));
        assert_eq!(parsed.callbacks[0].event.ts, 9);
        let empty = parse(&post(URL, &h, b" [ ] ", 0), &ctx).expect("parses");
        assert_eq!(empty.action, Some(Action::Ignore { why: "empty event batch" }));
        for (bad, why) in [
            (&b"not json"[..], "the body is not JSON"),
            (b"42", "the body is not a JSON array of events"),
            (b"[1]", "element 0: not an object"),
            (br#"[{"event":7}]"#, "element 0: missing `event`"),
            (br#"[{"event":7},2]"#, "none of the 2 events can be read; element 0: missing `event`"),
        ] {
            assert_eq!(parse(&post(URL, &h, bad, 0), &ctx).map_err(|e| e.to_string()), Err(why.to_owned()));
        }
        // One unreadable element does not cost the batch its readable events.
        let body = br#"[{"event":"open","sg_message_id":"m1.filter1"},{"email":"x@example.com"},3]"#;
        let parsed = parse(&post(URL, &h, body, 0), &ctx).expect("the readable part parses");
        assert_eq!(parsed.callbacks.len(), 1);
        assert_eq!(parsed.skipped, 2);
        assert_eq!(parsed.skip_reason.map(|e| e.to_string()).as_deref(), Some("element 1: missing `event`"));
    }

    proptest! {
        #[test]
        fn never_panics(body in mutations(vec![
            fixture("sendgrid", "generated-signed-batch.payload"),
            fixture("sendgrid", "bounce.json"),
            fixture("sendgrid", "dropped-bounced-address.json"),
            fixture("sendgrid", "vector-nodejs-go.payload"),
        ]), timestamp in prop_oneof![Just("1700000000".to_owned()), ".{0,12}"],
           signature in prop_oneof![Just(VECTOR_SIGNATURE.to_owned()), "[A-Za-z0-9+/=]{0,100}"]) {
            let mut h = HeaderMap::new();
            if let (Ok(ts), Ok(sig)) = (timestamp.parse(), signature.parse()) {
                h.insert(TIMESTAMP_HEADER, ts);
                h.insert(SIGNATURE_HEADER, sig);
            }
            let req = post(URL, &h, &body, 0);
            let _ = verify(&req, &creds(&[PUBLIC_KEY]), 1_700_000_000_000);
            let _ = parse(&req, &anymail_context());
        }

        #[test]
        fn keys_never_panic(key in ".{0,120}") {
            let _ = parse_public_key(&key);
        }
    }
}
