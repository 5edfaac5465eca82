//! Twilio Programmable Messaging status callbacks (SMS, MMS, WhatsApp and
//! other channels): form-encoded POSTs to the message's `StatusCallback` URL.
//!
//! Authenticity: `X-Twilio-Signature = base64(HMAC-SHA1(auth token, URL +
//! params))`, where the URL is the one Twilio called (with its query) and
//! the params are every POST field sorted by name, then value, each written
//! as `name` + `value`. hookrelay rebuilds the URL from `server.public_url`,
//! so that must be the URL Twilio calls. Like Twilio's own libraries, the
//! signature is accepted over the URL as given and over the URL with the
//! default port added (`:443`/`:80`) when it has none, or with its port
//! removed when it has one (Twilio's docs say it drops the port of https
//! URLs before signing). Requests with a JSON body sign a URL carrying
//! `bodySHA256=<hex>` instead of the params; that hash is checked too.
//! Several auth tokens may be configured (primary and secondary during a
//! rotation). Basic auth (credentials in the `StatusCallback` URL, which
//! Twilio leaves out of the signed URL) or a secret header may be required
//! on top.
//!
//! Replays: the scheme carries no timestamp or nonce, so there is no window
//! to check. Replaying a genuine callback records nothing new: its dedupe key
//! comes only from signed fields (MessageSid, status, ErrorCode), so it is
//! the key it had the first time. `I-Twilio-Idempotency-Token` is not used:
//! it is not signed, and a replay with a fresh token would add copies.
//!
//! Correlation: hookrelay's id travels in the query of the per-message
//! `StatusCallback` URL (`.../callbacks/twilio?hookrelay_id=<id>`), which
//! the signature covers; the provider id is `MessageSid`.
//!
//! Mapping: `queued`, `sending`, `sent` and the initial-only `accepted` and
//! `scheduled` are SENT (Twilio has taken the message; ROUTED is decided by
//! the sender, not the provider); `delivered` is DELIVERED; `undelivered`
//! and `failed` are UNDELIVERABLE with the `ErrorCode` as the error and a
//! reason derived from it (`failure_reason`); `read` is OPENED; `canceled`
//! is CANCELED; anything else (inbound `receiving`/`received`, new statuses)
//! is recorded as unknown. Status callbacks carry no event time, so the
//! time of receipt is used (`RawDlrDoneDate`, the carrier's `YYMMDDhhmm`
//! without a zone, stays in the raw data).

use std::borrow::Cow;

use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::common::{self, HttpAuth, ct_eq, key_from_parts};
use super::{Callback, CallbackRequest, ParseContext, ParseError, Parsed, VerifyError};
use crate::config::{FieldError, SourceConfig};
use crate::domain::Secret;
use crate::domain::{EventKind, Reason, Status};

/// Configuration fields a Twilio source uses.
pub const ACCEPTS: &[&str] = &["secrets", "username", "password", "header_name", "header_value"];

/// A Twilio source's auth tokens.
pub struct Credentials {
    tokens: Vec<Secret>,
    http: HttpAuth,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("twilio::Credentials").field("tokens", &self.tokens.len()).field("http", &self.http).finish()
    }
}

impl Credentials {
    pub fn from_config(cfg: &SourceConfig) -> Result<Self, FieldError> {
        let tokens: Vec<Secret> = cfg.secrets.iter().filter(|k| !k.expose().is_empty()).cloned().collect();
        if tokens.is_empty() {
            return Err(FieldError::new(
                "secrets",
                "a Twilio source needs the account's auth token (two during a rotation)",
            ));
        }
        Ok(Credentials { tokens, http: HttpAuth::from_config(cfg)? })
    }
}

/// The POST fields in signing order: by name, then by value (byte order).
fn sorted_params(body: &[u8]) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    params.sort_unstable();
    params
}

/// `base64(HMAC-SHA1(token, url + name1 + value1 + ...))`; `params` sorted.
fn compute_signature(token: &[u8], url: &str, params: &[(String, String)]) -> String {
    let Ok(mut mac) = hmac::Hmac::<Sha1>::new_from_slice(token) else { return String::new() };
    mac.update(url.as_bytes());
    for (name, value) in params {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The URLs a genuine signature may have been computed over: `url` itself,
/// and `url` with the scheme's default port added (when it has no port) or
/// with its port removed (when it has one), as Twilio's libraries accept.
fn url_variants(url: &str) -> Vec<Cow<'_, str>> {
    let mut out = vec![Cow::Borrowed(url)];
    let Some(scheme_end) = url.find("://") else { return out };
    let start = scheme_end + 3;
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    // The host starts after any userinfo; an IPv6 literal's colons are not a port.
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_start..];
    let after_host =
        if host_port.starts_with('[') { host_port.find(']').map_or(host_port.len(), |i| i + 1) } else { 0 };
    let port_colon = host_port[after_host..]
        .rfind(':')
        .map(|i| after_host + i)
        .filter(|&i| host_port[i + 1..].bytes().all(|b| b.is_ascii_digit()));
    match port_colon {
        Some(colon) => {
            let cut = start + host_start + colon;
            out.push(Cow::Owned(format!("{}{}", &url[..cut], &url[end..])));
        }
        None => {
            let default = match url[..scheme_end].to_ascii_lowercase().as_str() {
                "https" => "443",
                "http" => "80",
                _ => return out,
            };
            out.push(Cow::Owned(format!("{}:{default}{}", &url[..end], &url[end..])));
        }
    }
    out
}

/// Checks `X-Twilio-Signature` against every token and URL form, and the
/// body hash when the URL carries one.
pub fn verify(req: &CallbackRequest<'_>, creds: &Credentials, _now: i64) -> Result<(), VerifyError> {
    creds.http.check(req.headers)?;
    let presented = common::header(req.headers, "x-twilio-signature")?.trim();
    if presented.is_empty() {
        return Err(VerifyError::Missing("x-twilio-signature"));
    }
    let body_hash =
        form_urlencoded::parse(req.query.as_bytes()).find(|(k, _)| k == "bodySHA256").map(|(_, v)| v.into_owned());
    let (body_ok, params) = match body_hash {
        // A JSON body: the URL (with the hash) is signed, the body is hashed.
        Some(expected) => {
            let actual = hex::encode(Sha256::digest(req.body));
            (ct_eq(actual.as_bytes(), expected.trim().to_ascii_lowercase().as_bytes()), Vec::new())
        }
        None => (true, sorted_params(req.body)),
    };
    // Every token and URL form is tried, so timing does not tell which matched.
    let urls = url_variants(req.url);
    let matched = creds.tokens.iter().fold(false, |ok, token| {
        urls.iter().fold(ok, |ok, url| {
            ct_eq(compute_signature(token.expose().as_bytes(), url, &params).as_bytes(), presented.as_bytes()) | ok
        })
    });
    if matched && body_ok { Ok(()) } else { Err(VerifyError::BadSignature) }
}

/// Courier's reason for an `undelivered` or `failed` message, from Twilio's
/// error code.
fn failure_reason(code: &str) -> Reason {
    match code {
        // The recipient replied STOP.
        "21610" => Reason::Unsubscribed,
        // Blocked by the carrier: message filtering, or blocked outright.
        "30004" | "30007" => Reason::Filtered,
        // Unreachable handset, unknown destination, landline; invalid or
        // non-mobile `To` numbers.
        "30003" | "30005" | "30006" | "21211" | "21614" => Reason::Bounced,
        _ => Reason::Failed,
    }
}

/// The first value of a form field.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// The form fields as a JSON object (repeated names become arrays).
fn raw_event(fields: &[(String, String)]) -> Value {
    let mut data = Map::new();
    for (k, v) in fields {
        match data.get_mut(k) {
            Some(Value::Array(values)) => values.push(Value::from(v.as_str())),
            Some(first) => *first = Value::Array(vec![first.take(), Value::from(v.as_str())]),
            None => {
                data.insert(k.clone(), Value::from(v.as_str()));
            }
        }
    }
    Value::Object(data)
}

/// The callback's fields: a form body, or a JSON object (sent with
/// `bodySHA256` in the URL), whose values are taken as text.
fn body_fields(body: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    if !body.trim_ascii_start().starts_with(b"{") {
        return Ok(form_urlencoded::parse(body).into_owned().collect());
    }
    let object: Map<String, Value> = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    Ok(object
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::Null => None,
            Value::String(s) => Some((k, s)),
            other => Some((k, other.to_string())),
        })
        .collect())
}

/// Parses one status callback into its event.
pub fn parse(req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
    let fields = body_fields(req.body)?;
    let status = field(&fields, "MessageStatus")
        .or_else(|| field(&fields, "SmsStatus"))
        .ok_or_else(|| ParseError::Missing("MessageStatus".into()))?;
    let sid = field(&fields, "MessageSid")
        .or_else(|| field(&fields, "SmsSid"))
        .ok_or_else(|| ParseError::Missing("MessageSid".into()))?;
    let error_code = field(&fields, "ErrorCode").map(str::trim).unwrap_or("");
    let hookrelay_id = form_urlencoded::parse(req.query.as_bytes())
        .find(|(k, _)| *k == ctx.id_field.as_str())
        .map(|(_, v)| v.into_owned());

    let key = key_from_parts(ctx, &[sid.as_bytes(), status.as_bytes(), error_code.as_bytes()]);
    let (kind, why) = match status.to_ascii_lowercase().as_str() {
        "queued" | "sending" | "sent" | "accepted" | "scheduled" => (EventKind::Status(Status::Sent), None),
        "delivered" => (EventKind::Status(Status::Delivered), None),
        "undelivered" | "failed" => (EventKind::Status(Status::Undeliverable), Some(failure_reason(error_code))),
        "read" => (EventKind::Status(Status::Opened), None),
        "canceled" => (EventKind::Status(Status::Canceled), None),
        _ => (EventKind::Unknown, None),
    };
    let data = raw_event(&fields);
    let mut event = common::event(ctx, kind, req.received_at, key, status, Some(&data));
    event.recipient = field(&fields, "To").map(str::to_owned);
    event.reason = why;
    if why.is_some() {
        common::set_error(&mut event, error_code);
    }
    Ok(Parsed::events(vec![Callback { target: common::target(ctx, hookrelay_id.as_deref(), Some(sid)), event }]))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;
    use proptest::prelude::*;

    use super::super::common::testing::{config, context, fixture, headers, mutations, post};
    use super::*;

    /// The token of the generated fixtures (`VECTORS.md`, "Generated for hookrelay").
    const TOKEN: &str = "hookrelay-test-auth-token";
    const URL: &str = "https://relay.example.com/callbacks/twilio?hookrelay_id=order-7";

    /// The published vectors' inputs.
    const VECTOR_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const VECTOR_PARAMS: &[u8] =
        b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";

    fn creds(tokens: &[&str]) -> Credentials {
        let mut cfg = config("twilio");
        cfg.secrets = tokens.iter().map(|k| Secret::new(*k)).collect();
        Credentials::from_config(&cfg).expect("valid")
    }

    fn body(name: &str) -> Vec<u8> {
        fixture("twilio", &format!("{name}.txt")).trim_ascii_end().to_vec()
    }

    fn signed_headers(signature: &str) -> HeaderMap {
        headers(&format!("Content-Type: application/x-www-form-urlencoded\nX-Twilio-Signature: {signature}"))
    }

    /// Whether `signature` verifies for `url` and the vector params, token `12345`.
    fn vector_ok(url: &str, params: &[u8], signature: &str) -> bool {
        let h = signed_headers(signature);
        verify(&post(url, &h, params, 0), &creds(&["12345"]), 0).is_ok()
    }

    #[test]
    fn the_published_vectors() {
        assert_eq!(
            compute_signature(b"12345", VECTOR_URL, &sorted_params(VECTOR_PARAMS)),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        // Each signature verifies for the URL it was computed over.
        let cases = [
            ("https://mycompany.com/myapp.php?foo=1&bar=2", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            ("https://mycompany.com:443/myapp.php?foo=1&bar=2", "kvajT1Ptam85bY51eRf/AJRuM3w="),
            ("http://mycompany.com:80/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
            ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
        ];
        for (url, sig) in cases {
            assert!(vector_ok(url, VECTOR_PARAMS, sig), "{url}");
        }
        // The default port may be added or removed: hookrelay's URL without
        // the port accepts a signature over the URL with it, and vice versa.
        assert!(vector_ok(
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            VECTOR_PARAMS,
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        ));
        assert!(vector_ok(
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            VECTOR_PARAMS,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(vector_ok("http://mycompany.com/myapp.php?foo=1&bar=2", VECTOR_PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4="));
        // ... but a port is not invented: https on :1234 is not :443.
        assert!(!vector_ok(
            "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
            VECTOR_PARAMS,
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        ));
        assert!(!vector_ok(
            "http://mycompany.com/myapp.php?foo=1&bar=2",
            VECTOR_PARAMS,
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        ));
        // Host case is not normalized.
        assert!(!vector_ok(
            "https://MyCompany.com/myapp.php?foo=1&bar=2",
            VECTOR_PARAMS,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn repeated_params_contribute_each_value_sorted() {
        let params = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234";
        assert_eq!(compute_signature(b"12345", VECTOR_URL, &sorted_params(params)), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
        assert!(vector_ok(VECTOR_URL, params, "IK+Dwps556ElfBT0I3Rgjkr1wJU="));
    }

    #[test]
    fn url_forms() {
        let forms = |url| url_variants(url).into_iter().map(Cow::into_owned).collect::<Vec<_>>();
        assert_eq!(forms("https://h.example/p?q=1"), ["https://h.example/p?q=1", "https://h.example:443/p?q=1"]);
        assert_eq!(forms("http://h.example:80/p"), ["http://h.example:80/p", "http://h.example/p"]);
        assert_eq!(forms("https://h.example"), ["https://h.example", "https://h.example:443"]);
        assert_eq!(forms("https://u:p@[::1]:8443/p"), ["https://u:p@[::1]:8443/p", "https://u:p@[::1]/p"]);
        assert_eq!(forms("https://[::1]/p"), ["https://[::1]/p", "https://[::1]:443/p"]);
        assert_eq!(forms("ftp://h/p"), ["ftp://h/p"]);
        assert_eq!(forms("no scheme"), ["no scheme"]);
    }

    #[test]
    fn the_generated_fixtures_verify() {
        for name in ["status-delivered", "status-undelivered-30003"] {
            let h = headers(std::str::from_utf8(&fixture("twilio", &format!("{name}.headers"))).expect("utf-8"));
            let b = body(name);
            assert_eq!(verify(&post(URL, &h, &b, 0), &creds(&[TOKEN]), 0), Ok(()), "{name}");
            // Rotation: the secondary token matches as well as the primary.
            assert_eq!(verify(&post(URL, &h, &b, 0), &creds(&["old-token", TOKEN]), 0), Ok(()), "{name}");
        }
    }

    #[test]
    fn tampering_wrong_token_and_missing_header() {
        let h = headers(std::str::from_utf8(&fixture("twilio", "status-delivered.headers")).expect("utf-8"));
        let b = body("status-delivered");
        let c = creds(&[TOKEN]);
        // A changed field, an added field, a changed URL (another message's id).
        let tampered = String::from_utf8(b.clone()).expect("utf-8").replace("delivered", "undelivered");
        assert_eq!(verify(&post(URL, &h, tampered.as_bytes(), 0), &c, 0), Err(VerifyError::BadSignature));
        let added = [&b[..], b"&ErrorCode=30003"].concat();
        assert_eq!(verify(&post(URL, &h, &added, 0), &c, 0), Err(VerifyError::BadSignature));
        let other = URL.replace("order-7", "order-8");
        assert_eq!(verify(&post(&other, &h, &b, 0), &c, 0), Err(VerifyError::BadSignature));
        // A changed signature.
        let forged = signed_headers("Blp0PkrN4BahN8J6GPZfnvGRUfM=");
        assert_eq!(verify(&post(URL, &forged, &b, 0), &c, 0), Err(VerifyError::BadSignature));
        // Wrong token.
        assert_eq!(verify(&post(URL, &h, &b, 0), &creds(&["12345"]), 0), Err(VerifyError::BadSignature));
        // Missing or empty header.
        let bare = headers("Content-Type: application/x-www-form-urlencoded");
        assert_eq!(verify(&post(URL, &bare, &b, 0), &c, 0), Err(VerifyError::Missing("x-twilio-signature")));
        assert_eq!(
            verify(&post(URL, &signed_headers(""), &b, 0), &c, 0),
            Err(VerifyError::Missing("x-twilio-signature"))
        );
    }

    #[test]
    fn json_bodies_sign_the_body_hash() {
        let json = br#"{"MessageSid":"SM1"}"#;
        let hash = hex::encode(Sha256::digest(json));
        let url = format!("https://relay.example.com/callbacks/twilio?bodySHA256={hash}");
        let sig = compute_signature(b"12345", &url, &[]);
        let h = signed_headers(&sig);
        assert_eq!(verify(&post(&url, &h, json, 0), &creds(&["12345"]), 0), Ok(()));
        // The signature covers the hash in the URL, the hash covers the body.
        assert_eq!(
            verify(&post(&url, &h, br#"{"MessageSid":"SM2"}"#, 0), &creds(&["12345"]), 0),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn json_bodies_are_parsed_like_forms() {
        let json =
            br#"{"MessageSid":"SM1","MessageStatus":"undelivered","ErrorCode":30007,"To":"+15005550006","Price":null}"#;
        let url = "https://relay.example.com/callbacks/twilio?hookrelay_id=order-7&bodySHA256=ab";
        let cb = parse_body(json, "Content-Type: application/json", url);
        assert_eq!(cb.event.kind, EventKind::Status(Status::Undeliverable));
        assert_eq!(cb.event.reason, Some(Reason::Filtered));
        assert_eq!(cb.event.error.as_deref(), Some("30007"));
        assert_eq!(cb.event.recipient.as_deref(), Some("+15005550006"));
        assert_eq!(cb.target.id.as_ref().map(|id| id.as_str()), Some("order-7"));
        let form = b"MessageSid=SM1&MessageStatus=undelivered&ErrorCode=30007&To=%2B15005550006";
        let from_form = parse_body(form, "Content-Type: application/x-www-form-urlencoded", url);
        assert_eq!(cb.event.dedupe_key, from_form.event.dedupe_key, "one event whichever the encoding");
        let bad = parse(&post(url, &HeaderMap::new(), b"{not json", 0), &context("twilio"));
        assert!(bad.is_err());
    }

    #[test]
    fn extra_http_auth_is_checked_too() {
        let mut cfg = config("twilio");
        cfg.secrets = vec![Secret::new(TOKEN)];
        cfg.header_name = Some("X-Hook-Secret".into());
        cfg.header_value = Some(Secret::new("hdr"));
        let c = Credentials::from_config(&cfg).expect("valid");
        let text = String::from_utf8(fixture("twilio", "status-delivered.headers")).expect("utf-8");
        let b = body("status-delivered");
        assert_eq!(verify(&post(URL, &headers(&text), &b, 0), &c, 0), Err(VerifyError::Missing("secret header")));
        let with = headers(&format!("{text}\nX-Hook-Secret: hdr"));
        assert_eq!(verify(&post(URL, &with, &b, 0), &c, 0), Ok(()));
        assert!(!format!("{c:?}").contains(TOKEN) && !format!("{c:?}").contains("hdr"), "no secrets in Debug");
    }

    fn parse_body(body: &[u8], headers_text: &str, url: &str) -> Callback {
        let h = headers(headers_text);
        let mut parsed = parse(&post(url, &h, body, 1_700_000_000_000), &context("twilio")).expect("parses");
        assert_eq!(parsed.callbacks.len(), 1);
        parsed.callbacks.remove(0)
    }

    fn parse_fixture(name: &str) -> Callback {
        parse_body(&body(name), "", URL)
    }

    #[test]
    fn every_sample_normalizes_as_the_mapping_table_says() {
        // (fixture, kind, reason, error, MessageSid, To)
        type Case = (&'static str, EventKind, Option<Reason>, Option<&'static str>, &'static str, &'static str);
        let cases: &[Case] = &[
            (
                "status-sent-docs-example",
                EventKind::Status(Status::Sent),
                None,
                None,
                "SM1342fe1b2c904d1ab04f0fc7a58abca9",
                "",
            ),
            (
                "status-sent-messaging-service",
                EventKind::Status(Status::Sent),
                None,
                None,
                "SM0b6e2697aae04182a9f5b5c7a8994c7f",
                "2021",
            ),
            (
                "status-delivered",
                EventKind::Status(Status::Delivered),
                None,
                None,
                "SM1342fe1b2c904d1ab04f0fc7a58abca9",
                "+15558675310",
            ),
            (
                "status-undelivered-30003",
                EventKind::Status(Status::Undeliverable),
                Some(Reason::Bounced),
                Some("30003"),
                "SM1342fe1b2c904d1ab04f0fc7a58abca9",
                "+15558675310",
            ),
            (
                "status-failed-21610",
                EventKind::Status(Status::Undeliverable),
                Some(Reason::Unsubscribed),
                Some("21610"),
                "SMe287d7109a5a925f182f0e07fe5b223b",
                "+12028831111",
            ),
            (
                "status-read-whatsapp",
                EventKind::Status(Status::Opened),
                None,
                None,
                "SM1342fe1b2c904d1ab04f0fc7a58abca9",
                "whatsapp:+15558675310",
            ),
        ];
        for (name, kind, reason, error, sid, to) in cases {
            let cb = parse_fixture(name);
            assert_eq!(cb.event.kind, *kind, "{name}");
            assert_eq!(cb.event.reason, *reason, "{name}");
            assert_eq!(cb.event.error.as_deref(), *error, "{name}");
            assert_eq!(cb.event.recipient.as_deref(), (!to.is_empty()).then_some(*to), "{name}");
            assert_eq!(cb.event.ts, 1_700_000_000_000, "{name}: no event time, so the time of receipt");
            assert_eq!(cb.target.id.as_ref().map(|i| i.as_str()), Some("order-7"), "{name}");
            assert_eq!(cb.target.provider.as_ref().map(|p| p.message_id.as_str()), Some(*sid), "{name}");
            assert_eq!(cb.event.provider.as_ref().map(|p| p.as_str()), Some("twilio"));
            assert!(cb.event.affects_status, "{name}");
            assert!(cb.event.dedupe_key.starts_with("twilio:h:"), "{name}");
        }
        let delivered = parse_fixture("status-delivered");
        assert_eq!(delivered.event.provider_event.as_deref(), Some("delivered"));
        let data = &delivered.event.detail["data"];
        assert_eq!(data["RawDlrDoneDate"], "2406141213", "kept in the raw data only");
        assert_eq!(data["From"], "+15017250604");
    }

    #[test]
    fn other_statuses() {
        let status = |s: &str, code: &str| {
            let b = format!("MessageSid=SM1&MessageStatus={s}&ErrorCode={code}&To=%2B1555");
            parse_body(b.as_bytes(), "", URL).event
        };
        for s in ["queued", "sending", "accepted", "scheduled"] {
            assert_eq!(status(s, "").kind, EventKind::Status(Status::Sent), "{s}");
        }
        assert_eq!(status("canceled", "").kind, EventKind::Status(Status::Canceled));
        for s in ["receiving", "received", "teleported"] {
            let e = status(s, "");
            assert_eq!((e.kind, e.provider_event.as_deref()), (EventKind::Unknown, Some(s)));
        }
        let failed = |code| {
            let e = status("failed", code);
            (e.reason, e.error)
        };
        assert_eq!(failed("30007"), (Some(Reason::Filtered), Some("30007".into())));
        assert_eq!(failed("30005"), (Some(Reason::Bounced), Some("30005".into())));
        assert_eq!(failed("30006"), (Some(Reason::Bounced), Some("30006".into())));
        assert_eq!(failed("30008"), (Some(Reason::Failed), Some("30008".into())));
        assert_eq!(failed(""), (Some(Reason::Failed), None));
        // No error on success even when a code field is present.
        assert_eq!(status("delivered", "0").error, None);
    }

    #[test]
    fn dedupe_keys() {
        // The unsigned idempotency header never makes the key: a replay
        // with a fresh token is still the same event.
        let h = String::from_utf8(fixture("twilio", "status-delivered.headers")).expect("utf-8");
        let with_token = parse_body(&body("status-delivered"), &h, URL);
        let other_token = h.replace("5f1b8a52-0c54-4a30-9a43-6a1f2d1e9b07", "00000000-0000-4000-8000-000000000000");
        assert_eq!(
            with_token.event.dedupe_key,
            parse_body(&body("status-delivered"), &other_token, URL).event.dedupe_key
        );
        assert_eq!(with_token.event.dedupe_key, parse_fixture("status-delivered").event.dedupe_key);
        // Stable across retries (time of receipt and URL do not matter),
        // distinct per status and error code.
        let a = parse_fixture("status-undelivered-30003");
        let h = axum::http::HeaderMap::new();
        let b = body("status-undelivered-30003");
        let later = parse(&post("https://other.example/x", &h, &b, 5), &context("twilio")).expect("parses");
        assert_eq!(a.event.dedupe_key, later.callbacks[0].event.dedupe_key);
        assert_ne!(a.event.dedupe_key, parse_fixture("status-delivered").event.dedupe_key);
        let other_code = String::from_utf8(b).expect("utf-8").replace("30003", "30005");
        assert_ne!(a.event.dedupe_key, parse_body(other_code.as_bytes(), "", URL).event.dedupe_key);
    }

    #[test]
    fn the_id_comes_from_the_callback_url_only() {
        let b = [&body("status-delivered")[..], b"&hookrelay_id=forged"].concat();
        let cb = parse_body(&b, "", "https://relay.example.com/callbacks/twilio");
        assert_eq!(cb.target.id, None);
        let cb = parse_body(&b, "", "https://relay.example.com/callbacks/twilio?x=1&hookrelay_id=order%2D9");
        assert_eq!(cb.target.id.map(String::from), Some("order-9".to_owned()));
        // An id hookrelay could not have issued is ignored; the sid still correlates.
        let cb = parse_body(&b, "", "https://relay.example.com/callbacks/twilio?hookrelay_id=not+valid");
        assert_eq!(cb.target.id, None);
        assert!(cb.target.provider.is_some());
    }

    #[test]
    fn garbage_is_refused() {
        let h = HeaderMap::new();
        for bad in [&b""[..], b"MessageSid=SM1", b"MessageStatus=sent", b"{\"MessageStatus\":\"sent\"}", b"\xff\xfe"] {
            assert!(parse(&post(URL, &h, bad, 0), &context("twilio")).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_source_needs_a_token() {
        let err = Credentials::from_config(&config("twilio")).expect_err("refused");
        assert!(err.to_string().starts_with("secrets: "), "{err}");
    }

    proptest! {
        #[test]
        fn never_panics(body in mutations(vec![
            body("status-delivered"),
            body("status-failed-21610"),
            VECTOR_PARAMS.to_vec(),
        ]), url in "[a-z:/\\[\\]@?&=0-9.]{0,40}") {
            let h = String::from_utf8(fixture("twilio", "status-delivered.headers")).expect("utf-8");
            let h = headers(&h);
            let _ = verify(&post(URL, &h, &body, 0), &creds(&[TOKEN]), 0);
            let _ = verify(&post(&url, &h, &body, 0), &creds(&[TOKEN]), 0);
            let _ = parse(&post(URL, &h, &body, 0), &context("twilio"));
            let _ = url_variants(&url);
        }
    }
}
