//! Mailgun webhooks: the JSON ones (2018 and later) and the legacy
//! form-encoded / multipart ones.
//!
//! Authenticity: `signature = hex(HMAC-SHA256(signing key, timestamp + token))`,
//! carried in the body (the `signature` object, or form fields). The scheme
//! covers only the timestamp and token, not the event: anyone holding one
//! signed callback could send its signature with another event within the
//! timestamp window. So [`verify_token`] hands the token to the edge, which
//! has the batch writer remember it (with a hash of the body) until the
//! window closes; the same token with another body is refused. Several
//! signing keys may be configured during a rotation.
//!
//! Correlation: hookrelay's id in `user-variables` (sent as `v:hookrelay_id`
//! or `X-Mailgun-Variables`), else the `message-id` header Mailgun returned
//! from the send API (without angle brackets).

use hmac::{KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::common::{self, HttpAuth, check_window, ct_eq, json_seconds_to_ms, key_from_id, key_from_parts, str_field};
use super::{Callback, CallbackRequest, ParseContext, ParseError, Parsed, SingleUse, VerifyError};
use crate::config::{FieldError, SourceConfig};
use crate::domain::Secret;
use crate::domain::{EventKind, Reason, Status};

/// Configuration fields a Mailgun source uses.
pub const ACCEPTS: &[&str] =
    &["secrets", "tolerance_seconds", "username", "password", "bearer_token", "header_name", "header_value"];

/// Mailgun signs each POST afresh; fifteen minutes allows for clock skew.
pub const DEFAULT_TOLERANCE_SECONDS: u64 = 15 * 60;

/// A Mailgun source's signing keys.
pub struct Credentials {
    keys: Vec<Secret>,
    tolerance: u64,
    http: HttpAuth,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mailgun::Credentials").field("keys", &self.keys.len()).field("http", &self.http).finish()
    }
}

impl Credentials {
    pub fn from_config(cfg: &SourceConfig) -> Result<Self, FieldError> {
        let keys: Vec<Secret> = cfg.secrets.iter().filter(|k| !k.expose().is_empty()).cloned().collect();
        if keys.is_empty() {
            return Err(FieldError::new("secrets", "a Mailgun source needs its HTTP webhook signing key"));
        }
        Ok(Credentials {
            keys,
            tolerance: cfg.tolerance_seconds.unwrap_or(DEFAULT_TOLERANCE_SECONDS),
            http: HttpAuth::from_config(cfg)?,
        })
    }
}

/// The three signature fields, wherever the body carries them.
#[derive(Debug, PartialEq)]
struct Signature {
    timestamp: String,
    token: String,
    signature: String,
}

enum Body {
    Json(Value),
    Form(Vec<(String, String)>),
}

fn read_body(req: &CallbackRequest<'_>) -> Result<Body, &'static str> {
    let media = common::media_type(req.headers);
    if media == "multipart/form-data" {
        let boundary = req
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(multipart_boundary)
            .ok_or("multipart boundary")?;
        return multipart_fields(req.body, &boundary).map(Body::Form).ok_or("multipart body");
    }
    let looks_json = req.body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if media == "application/json" || (media.is_empty() && looks_json) {
        return serde_json::from_slice(req.body).map(Body::Json).map_err(|_| "JSON body");
    }
    Ok(Body::Form(form_urlencoded::parse(req.body).into_owned().collect()))
}

/// The last value of a form field (user variables may collide with the
/// signature fields; Mailgun's own fields come last).
fn last<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn signature_fields(body: &Body) -> Result<Signature, VerifyError> {
    let (timestamp, token, signature) = match body {
        Body::Json(v) => {
            let sig = v.get("signature").ok_or(VerifyError::Missing("signature"))?;
            let field = |name| match sig.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(_) => Err(VerifyError::Malformed("signature")),
                None => Err(VerifyError::Missing("signature")),
            };
            (field("timestamp")?, field("token")?, field("signature")?)
        }
        Body::Form(fields) => {
            let field = |name| last(fields, name).map(str::to_owned).ok_or(VerifyError::Missing("signature"));
            (field("timestamp")?, field("token")?, field("signature")?)
        }
    };
    Ok(Signature { timestamp, token, signature })
}

/// Whether `signature` is the HMAC of `timestamp + token` under `key`.
fn signature_matches(key: &[u8], timestamp: &str, token: &str, signature: &str) -> bool {
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else { return false };
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    ct_eq(expected.as_bytes(), signature.trim().to_ascii_lowercase().as_bytes())
}

/// Checks the signature (any configured key) and the timestamp window.
pub fn verify(req: &CallbackRequest<'_>, creds: &Credentials, now: i64) -> Result<(), VerifyError> {
    verify_token(req, creds, now).map(|_| ())
}

/// Longest token accepted (Mailgun's are 50 characters).
const MAX_TOKEN: usize = 256;

/// [`verify`], returning the signed token: the signature covers only the
/// timestamp and the token, so the edge remembers each token (with the body
/// it came with) until its signature would be refused as stale.
pub fn verify_token(req: &CallbackRequest<'_>, creds: &Credentials, now: i64) -> Result<SingleUse, VerifyError> {
    creds.http.check(req.headers)?;
    let body = read_body(req).map_err(VerifyError::Malformed)?;
    let sig = signature_fields(&body)?;
    if sig.token.is_empty() || sig.signature.is_empty() {
        return Err(VerifyError::Missing("signature"));
    }
    let ts: i64 = sig.timestamp.trim().parse().map_err(|_| VerifyError::Malformed("signature timestamp"))?;
    // The signature is checked with every key before the window, so that
    // timing does not tell a forger which part failed.
    let matched = creds.keys.iter().fold(false, |ok, key| {
        signature_matches(key.expose().as_bytes(), &sig.timestamp, &sig.token, &sig.signature) | ok
    });
    if !matched {
        return Err(VerifyError::BadSignature);
    }
    check_window(ts, now, creds.tolerance)?;
    if sig.token.len() > MAX_TOKEN {
        return Err(VerifyError::Malformed("signature token"));
    }
    let tolerance = i64::try_from(creds.tolerance).unwrap_or(i64::MAX / 2_000);
    Ok(SingleUse { token: sig.token, expires_at: ts.saturating_add(tolerance).saturating_mul(1000) })
}

/// Parses one webhook into its event.
pub fn parse(req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
    match read_body(req).map_err(ParseError::Unreadable)? {
        Body::Json(v) => {
            let data = v
                .get("event-data")
                .filter(|d| d.is_object())
                .ok_or_else(|| ParseError::Missing("event-data".into()))?;
            Ok(Parsed::events(vec![parse_event(data, ctx, req.received_at)?]))
        }
        Body::Form(fields) => Ok(Parsed::events(vec![parse_legacy(&fields, ctx, req.received_at)?])),
    }
}

fn strip_brackets(id: &str) -> &str {
    id.trim().trim_start_matches('<').trim_end_matches('>')
}

/// `550 5.1.1 The email account ...` from a delivery-status object.
fn status_text(ds: Option<&Value>) -> String {
    let Some(ds) = ds else { return String::new() };
    let code = ds.get("code").and_then(Value::as_i64).filter(|c| *c > 0);
    let message = str_field(ds, "message").filter(|m| !m.is_empty()).or_else(|| str_field(ds, "description"));
    match (code, message) {
        (Some(c), Some(m)) => format!("{c} {m}"),
        (Some(c), None) => c.to_string(),
        (None, Some(m)) => m.to_owned(),
        (None, None) => String::new(),
    }
}

/// Courier's reason for a permanent failure, from Mailgun's `reason`.
fn failure_reason(reason: &str) -> Reason {
    match reason {
        "bounce" | "suppress-bounce" | "hardfail" => Reason::Bounced,
        "suppress-unsubscribe" => Reason::Unsubscribed,
        "suppress-complaint" | "espblock" => Reason::Filtered,
        _ => Reason::Failed,
    }
}

fn parse_event(data: &Value, ctx: &ParseContext, received_at: i64) -> Result<Callback, ParseError> {
    let name = str_field(data, "event").ok_or_else(|| ParseError::Missing("event-data.event".into()))?;
    let ts = data.get("timestamp").and_then(json_seconds_to_ms).unwrap_or(received_at);
    let pmid = data.pointer("/message/headers/message-id").and_then(Value::as_str).map(strip_brackets);
    let hookrelay_id = data.get("user-variables").and_then(|u| str_field(u, &ctx.id_field));
    let recipient = str_field(data, "recipient");
    // `id` is unique per day only, so the time is part of the key.
    let key = match str_field(data, "id") {
        Some(id) => key_from_id(ctx, &format!("{id}:{ts}")),
        None => key_from_parts(
            ctx,
            &[name.as_bytes(), recipient.unwrap_or("").as_bytes(), pmid.unwrap_or("").as_bytes(), &ts.to_be_bytes()],
        ),
    };
    let severity = str_field(data, "severity").unwrap_or("");
    let reason = str_field(data, "reason").unwrap_or("");
    let (kind, why) = match name {
        "accepted" => (EventKind::Status(Status::Sent), None),
        "delivered" => (EventKind::Status(Status::Delivered), None),
        "failed" if severity == "temporary" => (EventKind::Status(Status::Delayed), None),
        "failed" => (EventKind::Status(Status::Undeliverable), Some(failure_reason(reason))),
        "rejected" => (EventKind::Status(Status::Undeliverable), Some(Reason::ProviderError)),
        "opened" => (EventKind::Status(Status::Opened), None),
        "clicked" => (EventKind::Status(Status::Clicked), None),
        "unsubscribed" => (EventKind::Unsubscribed, None),
        "complained" => (EventKind::Complained, None),
        _ => (EventKind::Unknown, None),
    };
    let mut event = common::event(ctx, kind, ts, key, name, Some(data));
    event.recipient = recipient.map(str::to_owned);
    event.reason = why;
    let error = if name == "rejected" {
        let reject = data.get("reject");
        [reject.and_then(|r| str_field(r, "reason")), reject.and_then(|r| str_field(r, "description"))]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(": ")
    } else if name == "failed" {
        status_text(data.get("delivery-status"))
    } else {
        String::new()
    };
    common::set_error(&mut event, &error);
    if let Some(url) = str_field(data, "url") {
        event.detail.insert("url".into(), Value::from(url));
    }
    Ok(Callback { target: common::target(ctx, hookrelay_id, pmid), event })
}

fn parse_legacy(fields: &[(String, String)], ctx: &ParseContext, received_at: i64) -> Result<Callback, ParseError> {
    let name = last(fields, "event").ok_or_else(|| ParseError::Missing("event".into()))?;
    let ts = last(fields, "timestamp")
        .and_then(|t| t.parse::<f64>().ok())
        .and_then(common::seconds_to_ms)
        .unwrap_or(received_at);
    let recipient = last(fields, "recipient");
    let pmid = last(fields, "Message-Id")
        .or_else(|| last(fields, "message-id"))
        .map(str::to_owned)
        .or_else(|| header_from_list(last(fields, "message-headers")?, "message-id"));
    let pmid = pmid.as_deref().map(strip_brackets);
    let hookrelay_id = last(fields, &ctx.id_field);
    // Everything but the signature is kept as the raw event.
    let mut data = Map::new();
    for (k, v) in fields.iter().filter(|(k, _)| !matches!(k.as_str(), "signature" | "token" | "timestamp")) {
        data.insert(k.clone(), Value::from(v.as_str()));
    }
    let data = Value::Object(data);
    let key = key_from_parts(
        ctx,
        &[name.as_bytes(), recipient.unwrap_or("").as_bytes(), pmid.unwrap_or("").as_bytes(), &ts.to_be_bytes()],
    );
    let (kind, why) = match name {
        "delivered" => (EventKind::Status(Status::Delivered), None),
        "bounced" => (EventKind::Status(Status::Undeliverable), Some(Reason::Bounced)),
        "dropped" => {
            (EventKind::Status(Status::Undeliverable), Some(failure_reason(last(fields, "reason").unwrap_or(""))))
        }
        "opened" => (EventKind::Status(Status::Opened), None),
        "clicked" => (EventKind::Status(Status::Clicked), None),
        "unsubscribed" => (EventKind::Unsubscribed, None),
        "complained" => (EventKind::Complained, None),
        _ => (EventKind::Unknown, None),
    };
    let mut event = common::event(ctx, kind, ts, key, name, Some(&data));
    event.recipient = recipient.map(str::to_owned);
    event.reason = why;
    let error = [last(fields, "code"), last(fields, "error").or_else(|| last(fields, "description"))]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    common::set_error(&mut event, &error);
    if let Some(url) = last(fields, "url") {
        event.detail.insert("url".into(), Value::from(url));
    }
    Ok(Callback { target: common::target(ctx, hookrelay_id, pmid), event })
}

/// A header from legacy `message-headers`: a JSON list of `[name, value]`.
fn header_from_list(list: &str, name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_json::from_str(list).ok()?;
    pairs.into_iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

fn multipart_boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// The text fields of a multipart/form-data body (file parts are skipped).
fn multipart_fields(body: &[u8], boundary: &str) -> Option<Vec<(String, String)>> {
    if boundary.is_empty() || boundary.len() > 200 {
        return None;
    }
    let delimiter = format!("--{boundary}");
    let text = std::str::from_utf8(body).ok()?;
    let mut fields = Vec::new();
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").or_else(|| part.strip_prefix('\n'))?;
        let (head, value) = part.split_once("\r\n\r\n").or_else(|| part.split_once("\n\n"))?;
        let disposition = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
        if disposition.contains("filename=") {
            continue;
        }
        let name = disposition.split(';').find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            (k.trim() == "name").then(|| v.trim().trim_matches('"').to_owned())
        })?;
        let value = value.strip_suffix("\r\n").or_else(|| value.strip_suffix('\n')).unwrap_or(value);
        fields.push((name, value.to_owned()));
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;
    use proptest::prelude::*;

    use super::super::common::testing::{config, context, fixture, headers, mutations, post};
    use super::*;

    const KEY: &str = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0";
    const URL: &str = "https://hooks.example.com/callbacks/mailgun";

    fn creds(keys: &[&str]) -> Credentials {
        let mut cfg = config("mailgun");
        cfg.secrets = keys.iter().map(|k| Secret::new(*k)).collect();
        Credentials::from_config(&cfg).expect("valid")
    }

    fn sign(key: &str, timestamp: &str, token: &str) -> String {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("key");
        mac.update(format!("{timestamp}{token}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A fixture with a real signature block for `timestamp`.
    fn signed(name: &str, key: &str, timestamp: i64) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&fixture("mailgun", name)).expect("json");
        let token = format!("token-{name}-{timestamp}");
        let ts = timestamp.to_string();
        v["signature"] = serde_json::json!({"timestamp": ts, "token": token, "signature": sign(key, &ts, &token)});
        serde_json::to_vec(&v).expect("json")
    }

    fn json_headers() -> HeaderMap {
        headers("Content-Type: application/json")
    }

    #[test]
    fn the_published_vector() {
        let token = "5egbgr1vjgqxtrnp65xfznchgdccwh5d6i09vijqi3whgowmn6";
        let sig = "9cfc5c41582e51246e73c88d34db3af0a3a2692a76fbab81492842f000256d33";
        assert!(signature_matches(KEY.as_bytes(), "1403645220", token, sig));
        assert!(signature_matches(KEY.as_bytes(), "1403645220", token, &sig.to_ascii_uppercase()));
        assert!(!signature_matches(
            KEY.as_bytes(),
            "1403645220",
            "owyldpe6nxhmrn78epljl6bj0orrki1u3d2v5e6cnlmmuox8jr",
            sig
        ));
        assert!(!signature_matches(KEY.as_bytes(), "0", "", ""));
    }

    #[test]
    fn the_generated_signed_fixture_verifies() {
        let body = fixture("mailgun", "generated-signed-delivered.json");
        let h = json_headers();
        let now = 1_534_108_637_000 + 60_000;
        assert_eq!(verify(&post(URL, &h, &body, now), &creds(&[KEY]), now), Ok(()));
        // Key rotation: any configured key may match.
        assert_eq!(verify(&post(URL, &h, &body, now), &creds(&["old-key", KEY]), now), Ok(()));
        assert_eq!(verify(&post(URL, &h, &body, now), &creds(&["other-key"]), now), Err(VerifyError::BadSignature));
    }

    #[test]
    fn tampering_stale_future_and_missing() {
        let now = 1_700_000_000_000;
        let body = signed("delivered.json", KEY, 1_700_000_000);
        let h = json_headers();
        let c = creds(&[KEY]);
        assert_eq!(verify(&post(URL, &h, &body, now), &c, now), Ok(()));

        // A changed token or timestamp breaks the signature.
        let mut v: Value = serde_json::from_slice(&body).expect("json");
        v["signature"]["token"] = Value::from("another-token");
        let tampered = serde_json::to_vec(&v).expect("json");
        assert_eq!(verify(&post(URL, &h, &tampered, now), &c, now), Err(VerifyError::BadSignature));
        let mut v: Value = serde_json::from_slice(&body).expect("json");
        v["signature"]["timestamp"] = Value::from("1700000001");
        let tampered = serde_json::to_vec(&v).expect("json");
        assert_eq!(verify(&post(URL, &h, &tampered, now), &c, now), Err(VerifyError::BadSignature));
        // A changed signature.
        let mut v: Value = serde_json::from_slice(&body).expect("json");
        let s = v["signature"]["signature"].as_str().expect("sig").replace(['a', 'b'], "c");
        v["signature"]["signature"] = Value::from(s);
        let tampered = serde_json::to_vec(&v).expect("json");
        assert_eq!(verify(&post(URL, &h, &tampered, now), &c, now), Err(VerifyError::BadSignature));
        // Wrong key.
        assert_eq!(verify(&post(URL, &h, &body, now), &creds(&["nope"]), now), Err(VerifyError::BadSignature));
        // Stale and future.
        let stale = signed("delivered.json", KEY, 1_700_000_000 - 901);
        assert_eq!(verify(&post(URL, &h, &stale, now), &c, now), Err(VerifyError::Stale));
        let future = signed("delivered.json", KEY, 1_700_000_000 + 301);
        assert_eq!(verify(&post(URL, &h, &future, now), &c, now), Err(VerifyError::Stale));
        // Missing signature block.
        let bare = br#"{"event-data":{"event":"delivered"}}"#;
        assert_eq!(verify(&post(URL, &h, bare, now), &c, now), Err(VerifyError::Missing("signature")));
        assert_eq!(verify(&post(URL, &h, b"not json", now), &c, now), Err(VerifyError::Malformed("JSON body")));
    }

    #[test]
    fn legacy_form_webhooks_verify_and_parse() {
        let ts = "1534108637";
        let token = "legacytoken";
        let body = format!(
            "event=bounced&recipient=bob%40example.com&code=550&error=5.1.1+No+such+user&hookrelay_id=order-9\
             &Message-Id=%3C20180812.1@example.org%3E&timestamp={ts}&token={token}&signature={}",
            sign(KEY, ts, token)
        );
        let h = headers("Content-Type: application/x-www-form-urlencoded");
        let now = 1_534_108_637_000;
        let req = post(URL, &h, body.as_bytes(), now);
        assert_eq!(verify(&req, &creds(&[KEY]), now), Ok(()));
        let parsed = parse(&req, &context("mailgun")).expect("parses");
        let cb = &parsed.callbacks[0];
        assert_eq!(cb.target.id.as_ref().map(|i| i.as_str()), Some("order-9"));
        assert_eq!(cb.target.provider.as_ref().map(|p| p.message_id.as_str()), Some("20180812.1@example.org"));
        assert_eq!(cb.event.kind, EventKind::Status(Status::Undeliverable));
        assert_eq!(cb.event.reason, Some(Reason::Bounced));
        assert_eq!(cb.event.error.as_deref(), Some("550 5.1.1 No such user"));
        assert_eq!(cb.event.ts, 1_534_108_637_000);
        assert!(cb.event.detail["data"].get("signature").is_none(), "the signature is not kept");

        // A user variable named like a signature field cannot shadow it.
        let body = format!("{body}&token=forged");
        let req = post(URL, &h, body.as_bytes(), now);
        assert_eq!(verify(&req, &creds(&[KEY]), now), Err(VerifyError::BadSignature));
    }

    #[test]
    fn legacy_multipart_webhooks() {
        let ts = "1534108637";
        let token = "mptoken";
        let b = "----hookrelayboundary";
        let part = |name: &str, value: &str| {
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
        };
        let body = [
            part("event", "dropped"),
            part("reason", "hardfail"),
            part("recipient", "x@example.com"),
            part("message-headers", r#"[["Message-Id", "<abc@example.org>"], ["Subject", "hi"]]"#),
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"attachment-1\"; filename=\"m.eml\"\r\n\r\nraw\r\n"
            ),
            part("timestamp", ts),
            part("token", token),
            part("signature", &sign(KEY, ts, token)),
            format!("--{b}--\r\n"),
        ]
        .concat();
        let h = headers(&format!("Content-Type: multipart/form-data; boundary=\"{b}\""));
        let now = 1_534_108_637_000;
        let req = post(URL, &h, body.as_bytes(), now);
        assert_eq!(verify(&req, &creds(&[KEY]), now), Ok(()));
        let cb = parse(&req, &context("mailgun")).expect("parses").callbacks.remove(0);
        assert_eq!(cb.event.kind, EventKind::Status(Status::Undeliverable));
        assert_eq!(cb.event.reason, Some(Reason::Bounced));
        assert_eq!(cb.target.provider.map(|p| p.message_id), Some("abc@example.org".to_owned()));
        assert!(cb.event.detail["data"].get("attachment-1").is_none());
    }

    fn parse_fixture(name: &str) -> Callback {
        let body = fixture("mailgun", name);
        let h = json_headers();
        let mut parsed = parse(&post(URL, &h, &body, 42), &context("mailgun")).expect("parses");
        assert_eq!(parsed.callbacks.len(), 1, "{name}");
        parsed.callbacks.remove(0)
    }

    #[test]
    fn every_sample_normalizes_as_the_mapping_table_says() {
        let cases: &[(&str, EventKind, Option<Reason>, Option<&str>)] = &[
            ("delivered.json", EventKind::Status(Status::Delivered), None, None),
            (
                "failed-permanent.json",
                EventKind::Status(Status::Undeliverable),
                Some(Reason::Bounced),
                Some("550 5.1.1 The email account"),
            ),
            ("failed-temporary.json", EventKind::Status(Status::Delayed), None, None),
            ("failed-temporary-greylisted.json", EventKind::Status(Status::Delayed), None, None),
            (
                "rejected.json",
                EventKind::Status(Status::Undeliverable),
                Some(Reason::ProviderError),
                Some("Sandbox subdomains"),
            ),
            ("opened.json", EventKind::Status(Status::Opened), None, None),
            ("clicked.json", EventKind::Status(Status::Clicked), None, None),
            ("unsubscribed.json", EventKind::Unsubscribed, None, None),
            ("complained.json", EventKind::Complained, None, None),
        ];
        for (name, kind, reason, error) in cases {
            let cb = parse_fixture(name);
            assert_eq!(cb.event.kind, *kind, "{name}");
            assert_eq!(cb.event.reason, *reason, "{name}");
            if let Some(error) = error {
                assert!(
                    cb.event.error.as_deref().is_some_and(|e| e.starts_with(error)),
                    "{name}: {:?}",
                    cb.event.error
                );
            }
            assert_eq!(cb.event.provider.as_ref().map(|p| p.as_str()), Some("mailgun"));
            assert!(cb.event.dedupe_key.starts_with("mailgun:"), "{name}");
            assert!(cb.event.detail.contains_key("data"), "{name}: the raw event is kept");
        }
        let delivered = parse_fixture("delivered.json");
        assert_eq!(delivered.event.ts, 1_534_108_637_153);
        assert_eq!(delivered.event.recipient.as_deref(), Some("recipient@example.com"));
        assert_eq!(
            delivered.target.provider.map(|p| p.message_id),
            Some("20180812211713.1.DF5966851B4BAA99@example.org".to_owned())
        );
        assert_eq!(delivered.target.id, None);
        let clicked = parse_fixture("clicked.json");
        assert_eq!(clicked.event.detail.get("url"), Some(&Value::from("https://example.com/test")));
        assert_eq!(clicked.target, crate::domain::Target::default(), "no message id in this sample");
    }

    #[test]
    fn hookrelay_id_comes_from_user_variables() {
        let mut v: Value = serde_json::from_slice(&fixture("mailgun", "delivered.json")).expect("json");
        v["event-data"]["user-variables"] = serde_json::json!({"hookrelay_id": "order-77"});
        let body = serde_json::to_vec(&v).expect("json");
        let h = json_headers();
        let cb = parse(&post(URL, &h, &body, 0), &context("mailgun")).expect("parses").callbacks.remove(0);
        assert_eq!(cb.target.id.map(String::from), Some("order-77".to_owned()));
        // The same event (same id and time) always has the same key; another event does not.
        let again = parse(&post(URL, &h, &body, 99), &context("mailgun")).expect("parses").callbacks.remove(0);
        assert_eq!(cb.event.dedupe_key, again.event.dedupe_key);
        assert_ne!(cb.event.dedupe_key, parse_fixture("opened.json").event.dedupe_key);
    }

    #[test]
    fn unknown_events_are_kept_and_garbage_is_refused() {
        let body = br#"{"signature":{},"event-data":{"event":"list_member_uploaded","timestamp":1}}"#;
        let h = json_headers();
        let cb = parse(&post(URL, &h, body, 0), &context("mailgun")).expect("parses").callbacks.remove(0);
        assert_eq!(cb.event.kind, EventKind::Unknown);
        assert_eq!(cb.event.provider_event.as_deref(), Some("list_member_uploaded"));
        for bad in [&br#"{"signature":{}}"#[..], br#"{"event-data":{"no":"event"}}"#, b"{", br#"{"event-data":[]}"#] {
            assert!(parse(&post(URL, &h, bad, 0), &context("mailgun")).is_err());
        }
    }

    #[test]
    fn the_source_needs_a_key() {
        assert!(Credentials::from_config(&config("mailgun")).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(body in mutations(vec![
            fixture("mailgun", "delivered.json"),
            fixture("mailgun", "generated-signed-delivered.json"),
            b"event=delivered&timestamp=1&token=t&signature=s".to_vec(),
        ]), form in any::<bool>()) {
            let h = if form { headers("Content-Type: multipart/form-data; boundary=x") } else { json_headers() };
            let req = post(URL, &h, &body, 0);
            let _ = verify(&req, &creds(&[KEY]), 1_534_108_637_000);
            let _ = parse(&req, &context("mailgun"));
        }
    }
}
