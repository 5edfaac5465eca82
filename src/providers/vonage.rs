//! Vonage: SMS API delivery receipts and Messages API status webhooks.
//!
//! Both must be signed; an unsigned callback is refused (turn on signed
//! webhooks in the Vonage dashboard).
//!
//! - **SMS API delivery receipts** arrive as a GET query (Vonage's default),
//!   a POST form or a POST JSON object. Signature: every parameter but `sig`,
//!   sorted by name, written as `&name=value` with `&` and `=` in values
//!   replaced by `_`; then `md5(string + secret)` (`md5hash`, the default
//!   `signature_method`) or hex `HMAC-<md5|sha1|sha256|sha512>(secret,
//!   string)`, compared with `sig` in lower case. The signed `timestamp`
//!   (unix seconds) must be within `tolerance_seconds` (default one day:
//!   Vonage retries receipts, and replays are harmless because each event
//!   keeps its dedupe key). A parameter given twice is refused: there is no
//!   telling which one Vonage signed.
//! - **Messages API status webhooks** are POSTed JSON with `Authorization:
//!   Bearer <JWT>`: HS256 (no other algorithm is accepted) with the same
//!   signature secret, `iat` within the tolerance, and the `payload_hash`
//!   claim equal to the hex SHA-256 of the raw body.
//!
//! Several secrets may be configured during a rotation.
//!
//! Correlation: hookrelay's id is the `client-ref` (SMS API) or `client_ref`
//! (Messages API) given at send time, either the id itself or, when other
//! data shares the field, a query string holding it under the id field
//! (`hookrelay_id=<id>&...`). The provider id is `messageId` /
//! `message_uuid`.
//!
//! Mapping, SMS API: `accepted`, `buffered` → SENT; `delivered` → DELIVERED;
//! `expired`, `failed`, `rejected` → UNDELIVERABLE with `err-code` as the
//! error and a reason from it (`dlr_reason`); anything else (`unknown`)
//! is recorded without moving the status. Messages API: `submitted` → SENT,
//! `delivered` → DELIVERED, `read` → OPENED, `rejected` (Vonage refused the
//! message) → UNDELIVERABLE PROVIDER_ERROR, `undeliverable` → UNDELIVERABLE
//! FAILED, others unknown.

use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::common::{self, check_window, ct_eq, key_from_parts, str_field};
use super::{Callback, CallbackRequest, ParseContext, ParseError, Parsed, VerifyError};
use crate::config::{FieldError, SourceConfig};
use crate::domain::Secret;
use crate::domain::{EventKind, Reason, Status};

/// Configuration fields a Vonage source uses.
pub const ACCEPTS: &[&str] = &["secrets", "signature_method", "tolerance_seconds"];

/// Vonage retries receipts for a while; a day keeps retries acceptable.
pub const DEFAULT_TOLERANCE_SECONDS: u64 = 86_400;

/// How SMS API callbacks are signed (the dashboard's "signature method").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMethod {
    /// `md5(string + secret)`, Vonage's default.
    Md5Hash,
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl SignatureMethod {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "md5hash" => Some(SignatureMethod::Md5Hash),
            "md5" => Some(SignatureMethod::Md5),
            "sha1" => Some(SignatureMethod::Sha1),
            "sha256" => Some(SignatureMethod::Sha256),
            "sha512" => Some(SignatureMethod::Sha512),
            _ => None,
        }
    }

    /// The lower-case hex signature of `string` under `secret`.
    fn sign(self, secret: &[u8], string: &[u8]) -> String {
        fn hmac_hex<D: hmac::EagerHash>(secret: &[u8], string: &[u8]) -> String {
            match hmac::Hmac::<D>::new_from_slice(secret) {
                Ok(mut mac) => {
                    mac.update(string);
                    hex::encode(mac.finalize().into_bytes())
                }
                Err(_) => String::new(),
            }
        }
        match self {
            SignatureMethod::Md5Hash => {
                let mut hasher = md5::Md5::new();
                hasher.update(string);
                hasher.update(secret);
                hex::encode(hasher.finalize())
            }
            SignatureMethod::Md5 => hmac_hex::<md5::Md5>(secret, string),
            SignatureMethod::Sha1 => hmac_hex::<sha1::Sha1>(secret, string),
            SignatureMethod::Sha256 => hmac_hex::<Sha256>(secret, string),
            SignatureMethod::Sha512 => hmac_hex::<sha2::Sha512>(secret, string),
        }
    }
}

/// A Vonage source's signature secrets.
pub struct Credentials {
    secrets: Vec<Secret>,
    method: SignatureMethod,
    tolerance: u64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("vonage::Credentials")
            .field("secrets", &self.secrets.len())
            .field("method", &self.method)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Credentials {
    pub fn from_config(cfg: &SourceConfig) -> Result<Self, FieldError> {
        let secrets: Vec<Secret> = cfg.secrets.iter().filter(|k| !k.expose().is_empty()).cloned().collect();
        if secrets.is_empty() {
            return Err(FieldError::new(
                "secrets",
                "a Vonage source needs the account's signature secret (signed webhooks)",
            ));
        }
        let method = match &cfg.signature_method {
            None => SignatureMethod::Md5Hash,
            Some(m) => SignatureMethod::parse(m).ok_or_else(|| {
                FieldError::new("signature_method", format!("`{m}` is not one of md5hash, md5, sha1, sha256, sha512"))
            })?,
        };
        Ok(Credentials { secrets, method, tolerance: cfg.tolerance_seconds.unwrap_or(DEFAULT_TOLERANCE_SECONDS) })
    }
}

fn is_json_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The SMS API parameters of a request, as received: the query for GET (or
/// an empty body), else the form or JSON body.
fn sms_params(req: &CallbackRequest<'_>) -> Result<Vec<(String, String)>, &'static str> {
    let params: Vec<(String, String)> = if *req.method == axum::http::Method::GET || req.body.trim_ascii().is_empty() {
        form_urlencoded::parse(req.query.as_bytes()).into_owned().collect()
    } else if is_json_object(req.body) || common::media_type(req.headers) == "application/json" {
        let object: Map<String, Value> = serde_json::from_slice(req.body).map_err(|_| "JSON body")?;
        object
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(n) => Ok((k, n.to_string())),
                _ => Err("parameters"),
            })
            .collect::<Result<_, _>>()?
    } else {
        form_urlencoded::parse(req.body).into_owned().collect()
    };
    let mut names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err("duplicate parameter");
    }
    Ok(params)
}

/// `&name=value` for every parameter but `sig`, sorted by name, with `&`
/// and `=` in values replaced by `_`.
fn signing_string(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "sig").collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (k, v) in sorted {
        out.push('&');
        out.push_str(k);
        out.push('=');
        out.push_str(&v.replace(['&', '='], "_"));
    }
    out
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn verify_sms(params: &[(String, String)], creds: &Credentials, now: i64) -> Result<(), VerifyError> {
    let presented = param(params, "sig").map(str::trim).filter(|s| !s.is_empty()).ok_or(VerifyError::Missing("sig"))?;
    let timestamp = param(params, "timestamp").ok_or(VerifyError::Missing("timestamp"))?;
    let ts: i64 = timestamp.trim().parse().map_err(|_| VerifyError::Malformed("timestamp"))?;
    let string = signing_string(params);
    let presented = presented.to_ascii_lowercase();
    // Every secret is tried, and the signature before the window, so that
    // timing does not tell a forger which part failed.
    let matched = creds.secrets.iter().fold(false, |ok, secret| {
        ct_eq(creds.method.sign(secret.expose().as_bytes(), string.as_bytes()).as_bytes(), presented.as_bytes()) | ok
    });
    if !matched {
        return Err(VerifyError::BadSignature);
    }
    check_window(ts, now, creds.tolerance)
}

/// A JWT segment: base64url without padding, then JSON.
fn jwt_json(segment: &str) -> Option<Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok().filter(Value::is_object)
}

/// A numeric date claim, in seconds.
fn claim_seconds(claims: &Value, name: &str) -> Option<i64> {
    let n = claims.get(name)?;
    n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15).map(|f| f as i64))
}

fn verify_jwt(token: &str, body: &[u8], creds: &Credentials, now: i64) -> Result<(), VerifyError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("JWT"));
    };
    let head = jwt_json(header).ok_or(VerifyError::Malformed("JWT header"))?;
    // Only HS256: never `none`, never an algorithm the token picks for us.
    if str_field(&head, "alg") != Some("HS256") {
        return Err(VerifyError::Malformed("JWT algorithm"));
    }
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| VerifyError::Malformed("JWT signature"))?;
    let signed = &token.as_bytes()[..header.len() + 1 + payload.len()];
    let matched = creds.secrets.iter().fold(false, |ok, secret| {
        let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else { return ok };
        mac.update(signed);
        ct_eq(&mac.finalize().into_bytes(), &signature) | ok
    });
    if !matched {
        return Err(VerifyError::BadSignature);
    }
    let claims = jwt_json(payload).ok_or(VerifyError::Malformed("JWT claims"))?;
    let iat = claim_seconds(&claims, "iat").ok_or(VerifyError::Missing("JWT iat"))?;
    let hash = str_field(&claims, "payload_hash").ok_or(VerifyError::Missing("JWT payload_hash"))?;
    let actual = hex::encode(Sha256::digest(body));
    if !ct_eq(actual.as_bytes(), hash.trim().to_ascii_lowercase().as_bytes()) {
        return Err(VerifyError::BadSignature);
    }
    check_window(iat, now, creds.tolerance)?;
    if let Some(exp) = claim_seconds(&claims, "exp")
        && now.div_euclid(1000) > exp.saturating_add(common::FUTURE_SKEW_SECONDS)
    {
        return Err(VerifyError::Stale);
    }
    Ok(())
}

/// Checks the JWT (Messages API) or the `sig` parameter (SMS API).
pub fn verify(req: &CallbackRequest<'_>, creds: &Credentials, now: i64) -> Result<(), VerifyError> {
    if req.headers.contains_key(axum::http::header::AUTHORIZATION) {
        let value = common::header(req.headers, "authorization")?;
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or(VerifyError::Malformed("authorization"))?;
        return verify_jwt(token, req.body, creds, now);
    }
    if messages_body(req).is_some() {
        return Err(VerifyError::Missing("authorization"));
    }
    let params = sms_params(req).map_err(VerifyError::Malformed)?;
    verify_sms(&params, creds, now)
}

/// A Messages API status body: a JSON object with `message_uuid`.
fn messages_body(req: &CallbackRequest<'_>) -> Option<Value> {
    if *req.method != axum::http::Method::POST || !is_json_object(req.body) {
        return None;
    }
    serde_json::from_slice::<Value>(req.body).ok().filter(|v| v.get("message_uuid").is_some())
}

/// Parses one delivery receipt or status webhook into its event.
pub fn parse(req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
    let callback = match messages_body(req) {
        Some(body) => parse_status(&body, ctx, req.received_at)?,
        None => {
            let params = sms_params(req).map_err(ParseError::Unreadable)?;
            parse_receipt(&params, ctx, req.received_at)?
        }
    };
    Ok(Parsed::events(vec![callback]))
}

/// hookrelay's id from a client reference: the reference itself, or the
/// id field of a query string in it.
fn id_from_client_ref<'a>(client_ref: &'a str, ctx: &ParseContext) -> std::borrow::Cow<'a, str> {
    if client_ref.contains('=')
        && let Some((_, id)) = form_urlencoded::parse(client_ref.as_bytes()).find(|(k, _)| *k == ctx.id_field.as_str())
    {
        return std::borrow::Cow::Owned(id.into_owned());
    }
    std::borrow::Cow::Borrowed(client_ref)
}

/// Epoch ms of a UTC calendar time.
fn utc_ms(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Option<i64> {
    let month = time::Month::try_from(month).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let t = time::Time::from_hms(hour, minute, second).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp() * 1000)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), Vonage's `message-timestamp`.
fn message_timestamp_ms(s: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(s.trim(), &format).ok()?;
    Some(t.assume_utc().unix_timestamp() * 1000)
}

/// `YYMMDDHHMM` (UTC), the carrier's `scts`.
fn scts_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() != 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| s[i..i + 2].parse::<u8>().ok();
    utc_ms(2000 + i32::from(n(0)?), n(2)?, n(4)?, n(6)?, n(8)?, 0)
}

/// Courier's reason for an undeliverable SMS, from Vonage's receipt error
/// code: 6 (anti-spam rejection) and 50–53 (entity, header, content and
/// consent filters) are FILTERED; 3 (absent subscriber, permanent) and 9
/// (illegal number) are BOUNCED; anything else FAILED.
fn dlr_reason(code: &str) -> Reason {
    match code.trim() {
        "6" | "50" | "51" | "52" | "53" => Reason::Filtered,
        "3" | "9" => Reason::Bounced,
        _ => Reason::Failed,
    }
}

fn parse_receipt(params: &[(String, String)], ctx: &ParseContext, received_at: i64) -> Result<Callback, ParseError> {
    let get = |name| param(params, name).map(str::trim).filter(|v| !v.is_empty());
    let message_id = get("messageId").ok_or_else(|| ParseError::Missing("messageId".into()))?;
    let status = get("status").ok_or_else(|| ParseError::Missing("status".into()))?;
    let err_code = get("err-code").unwrap_or("");
    let scts = get("scts").unwrap_or("");
    let ts = get("message-timestamp").and_then(message_timestamp_ms).or_else(|| scts_ms(scts)).unwrap_or(received_at);
    let key = key_from_parts(ctx, &[message_id.as_bytes(), status.as_bytes(), err_code.as_bytes(), scts.as_bytes()]);
    let (kind, why) = match status.to_ascii_lowercase().as_str() {
        "accepted" | "buffered" => (EventKind::Status(Status::Sent), None),
        "delivered" => (EventKind::Status(Status::Delivered), None),
        "expired" | "failed" | "rejected" => (EventKind::Status(Status::Undeliverable), Some(dlr_reason(err_code))),
        _ => (EventKind::Unknown, None),
    };
    // The raw event, without the signature material.
    let data: Map<String, Value> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "sig" | "nonce" | "timestamp"))
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let mut event = common::event(ctx, kind, ts, key, status, Some(&Value::Object(data)));
    event.recipient = get("msisdn").map(str::to_owned);
    event.reason = why;
    if why.is_some() && err_code != "0" {
        common::set_error(&mut event, err_code);
    }
    let hookrelay_id = get("client-ref").map(|r| id_from_client_ref(r, ctx));
    Ok(Callback { target: common::target(ctx, hookrelay_id.as_deref(), Some(message_id)), event })
}

/// A JSON string or number as text.
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_status(body: &Value, ctx: &ParseContext, received_at: i64) -> Result<Callback, ParseError> {
    let uuid = str_field(body, "message_uuid").filter(|u| !u.is_empty());
    let uuid = uuid.ok_or(ParseError::Shape("message_uuid is not a string"))?;
    let status = str_field(body, "status").ok_or_else(|| ParseError::Missing("status".into()))?;
    let timestamp = str_field(body, "timestamp").unwrap_or("");
    let ts = common::rfc3339_to_ms(timestamp).unwrap_or(received_at);
    let key = key_from_parts(ctx, &[uuid.as_bytes(), status.as_bytes(), timestamp.as_bytes()]);
    let (kind, why) = match status.to_ascii_lowercase().as_str() {
        "submitted" => (EventKind::Status(Status::Sent), None),
        "delivered" => (EventKind::Status(Status::Delivered), None),
        "read" => (EventKind::Status(Status::Opened), None),
        "rejected" => (EventKind::Status(Status::Undeliverable), Some(Reason::ProviderError)),
        "undeliverable" => (EventKind::Status(Status::Undeliverable), Some(Reason::Failed)),
        _ => (EventKind::Unknown, None),
    };
    let mut event = common::event(ctx, kind, ts, key, status, Some(body));
    // `to` is a number (current API) or `{"type": "sms", "number": ...}` (v0.1).
    event.recipient = match body.get("to") {
        Some(Value::String(to)) => Some(to.clone()),
        Some(to @ Value::Object(_)) => str_field(to, "number").or_else(|| str_field(to, "id")).map(str::to_owned),
        _ => None,
    };
    event.reason = why;
    if let Some(error) = body.get("error") {
        let title = text(error.get("title"));
        let detail = text(error.get("detail"));
        let text = match (title, detail) {
            (Some(t), Some(d)) => format!("{t}: {d}"),
            (Some(t), None) => t,
            (None, Some(d)) => d,
            (None, None) => text(error.get("type")).or_else(|| text(Some(error))).unwrap_or_default(),
        };
        common::set_error(&mut event, &text);
    }
    let hookrelay_id = str_field(body, "client_ref").map(|r| id_from_client_ref(r, ctx));
    Ok(Callback { target: common::target(ctx, hookrelay_id.as_deref(), Some(uuid)), event })
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, Method};
    use proptest::prelude::*;

    use super::super::common::testing::{config, context, fixture, headers, mutations, post};
    use super::*;

    const URL: &str = "https://relay.example.com/callbacks/vonage";
    /// The generated JWT's secret (`VECTORS.md`).
    const JWT_SECRET: &str = "secret-32-bytes-minimum-xxxxxxxxx";
    /// The generated JWT's `iat`: 2023-05-01T14:00:00Z.
    const JWT_IAT: i64 = 1_682_949_600;
    /// The generated signed receipt's `timestamp`: 2020-01-01T14:00:00Z.
    const DLR_TS: i64 = 1_577_887_200;

    fn creds(secrets: &[&str], method: Option<&str>) -> Credentials {
        let mut cfg = config("vonage");
        cfg.secrets = secrets.iter().map(|k| Secret::new(*k)).collect();
        cfg.signature_method = method.map(str::to_owned);
        Credentials::from_config(&cfg).expect("valid")
    }

    fn get_request<'a>(url: &'a str, h: &'a HeaderMap, received_at: i64) -> CallbackRequest<'a> {
        static GET: Method = Method::GET;
        let query = url.split_once('?').map_or("", |(_, q)| q);
        CallbackRequest { method: &GET, url, query, headers: h, body: b"", received_at }
    }

    /// Verifies a receipt sent by GET with `query`, received at `now`.
    fn verify_get(query: &str, c: &Credentials, now: i64) -> Result<(), VerifyError> {
        let url = format!("{URL}?{query}");
        verify(&get_request(&url, &HeaderMap::new(), now), c, now)
    }

    fn signed_dlr() -> String {
        String::from_utf8(fixture("vonage", "sms-dlr-signed-sha256.txt")).expect("utf-8").trim_end().to_owned()
    }

    fn jwt_headers(token: &str) -> HeaderMap {
        headers(&format!("Content-Type: application/json\nAuthorization: Bearer {token}"))
    }

    fn fixture_jwt() -> String {
        String::from_utf8(fixture("vonage", "generated-messages-status.jwt")).expect("utf-8").trim().to_owned()
    }

    /// A fresh HS256 JWT (test helper; the fixture is the independent check).
    fn jwt(header: &Value, claims: &Value, secret: &str) -> String {
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", b64(header), b64(claims));
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(input.as_bytes());
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{input}.{sig}")
    }

    fn claims_for(body: &[u8], iat: i64) -> Value {
        serde_json::json!({"iat": iat, "jti": "j-1", "iss": "Vonage", "payload_hash": hex::encode(Sha256::digest(body))})
    }

    #[test]
    fn the_published_sms_vectors() {
        let params = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
            ("timestamp".to_owned(), "1461605396".to_owned()),
        ];
        assert_eq!(signing_string(&params), "&a=1&b=2&timestamp=1461605396");
        let vectors = [
            ("md5hash", "6af838ef94998832dbfc29020b564830"),
            ("md5", "c15c21ced558c93a226c305f58f902f2"),
            ("sha1", "3e19a4e6880fdc2c1426bfd0587c98b9532f0210"),
            ("sha256", "a321e824b9b816be7c3f28859a31749a098713d39f613c80d455bbaffae1cd24"),
            (
                "sha512",
                "812a18f76680fa0fe1b8bd9ee1625466ceb1bd96242e4d050d2cfd9a7b40166c63ed26ec9702168781b6edcf1633db8ff95af9341701004eec3fcf9550572ee8",
            ),
        ];
        let now = 1_461_605_396_000 + 60_000;
        for (method, sig) in vectors {
            // Whole requests, in any order, with the signature in either case.
            for query in [
                format!("b=2&sig={sig}&a=1&timestamp=1461605396"),
                format!("a=1&b=2&timestamp=1461605396&sig={}", sig.to_ascii_uppercase()),
            ] {
                assert_eq!(verify_get(&query, &creds(&["secret"], Some(method)), now), Ok(()), "{method}");
            }
            // Another method with the same secret does not match.
            let other = if method == "sha256" { "sha1" } else { "sha256" };
            let query = format!("a=1&b=2&timestamp=1461605396&sig={sig}");
            assert_eq!(
                verify_get(&query, &creds(&["secret"], Some(other)), now),
                Err(VerifyError::BadSignature),
                "{method}"
            );
        }
        // `md5hash` is the default.
        let query = "a=1&b=2&timestamp=1461605396&sig=6af838ef94998832dbfc29020b564830";
        assert_eq!(verify_get(query, &creds(&["secret"], None), now), Ok(()));
    }

    #[test]
    fn separators_in_values_are_replaced() {
        let params = vec![("text".to_owned(), "a&b=c".to_owned()), ("sig".to_owned(), "x".to_owned())];
        assert_eq!(signing_string(&params), "&text=a_b_c");
    }

    #[test]
    fn the_generated_signed_receipt_verifies_as_get_form_and_json() {
        let query = signed_dlr();
        let now = DLR_TS * 1000 + 30_000;
        let c = creds(&["other", "secret"], Some("sha256"));
        assert_eq!(verify_get(&query, &c, now), Ok(()));
        let form = headers("Content-Type: application/x-www-form-urlencoded");
        assert_eq!(verify(&post(URL, &form, query.as_bytes(), now), &c, now), Ok(()));
        let object: Map<String, Value> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))
            .collect();
        let json = serde_json::to_vec(&object).expect("json");
        let jh = headers("Content-Type: application/json");
        assert_eq!(verify(&post(URL, &jh, &json, now), &c, now), Ok(()));
    }

    #[test]
    fn receipts_tampered_stale_future_and_unsigned() {
        let query = signed_dlr();
        let now = DLR_TS * 1000;
        let c = creds(&["secret"], Some("sha256"));
        let check = verify_get;
        assert_eq!(check(&query, &c, now), Ok(()));
        // A changed field, an added field, a changed signature.
        assert_eq!(check(&query.replace("status=delivered", "status=failed"), &c, now), Err(VerifyError::BadSignature));
        assert_eq!(check(&format!("{query}&extra=1"), &c, now), Err(VerifyError::BadSignature));
        assert_eq!(check(&query.replace("sig=730b", "sig=830b"), &c, now), Err(VerifyError::BadSignature));
        // Wrong secret.
        assert_eq!(check(&query, &creds(&["not-it"], Some("sha256")), now), Err(VerifyError::BadSignature));
        // A day old is fine, a day and a second is not; five minutes ahead at most.
        assert_eq!(check(&query, &c, now + 86_400_000), Ok(()));
        assert_eq!(check(&query, &c, now + 86_401_000), Err(VerifyError::Stale));
        assert_eq!(check(&query, &c, now - 300_000), Ok(()));
        assert_eq!(check(&query, &c, now - 301_000), Err(VerifyError::Stale));
        // A configured tolerance wins.
        let mut cfg = config("vonage");
        cfg.secrets = vec![Secret::new("secret")];
        cfg.signature_method = Some("sha256".into());
        cfg.tolerance_seconds = Some(60);
        let strict = Credentials::from_config(&cfg).expect("valid");
        assert_eq!(check(&query, &strict, now + 61_000), Err(VerifyError::Stale));
        // Unsigned, without a timestamp, a parameter given twice.
        assert_eq!(check(&fixture_text("sms-dlr.txt"), &c, now), Err(VerifyError::Missing("sig")));
        let no_ts = query.replace("&timestamp=1577887200", "");
        assert_eq!(check(&no_ts, &c, now), Err(VerifyError::Missing("timestamp")));
        assert_eq!(
            check(&format!("{query}&status=failed"), &c, now),
            Err(VerifyError::Malformed("duplicate parameter"))
        );
        assert_eq!(check("", &c, now), Err(VerifyError::Missing("sig")));
    }

    fn fixture_text(name: &str) -> String {
        String::from_utf8(fixture("vonage", name)).expect("utf-8").trim_end().to_owned()
    }

    #[test]
    fn the_generated_jwt_verifies() {
        let body = fixture("vonage", "generated-messages-status.payload");
        assert_eq!(
            hex::encode(Sha256::digest(&body)),
            "4bd4813ac15c99e0bf9f6154220f8ce3c01f1508f9361cdaf424c978bdba8d3f"
        );
        let h = jwt_headers(&fixture_jwt());
        let now = JWT_IAT * 1000 + 5_000;
        assert_eq!(verify(&post(URL, &h, &body, now), &creds(&[JWT_SECRET], None), now), Ok(()));
        assert_eq!(verify(&post(URL, &h, &body, now), &creds(&["old", JWT_SECRET], Some("sha512")), now), Ok(()));
    }

    #[test]
    fn jwts_tampered_stale_future_and_refused_algorithms() {
        let body = fixture("vonage", "generated-messages-status.payload");
        let token = fixture_jwt();
        let c = creds(&[JWT_SECRET], None);
        let now = JWT_IAT * 1000;
        let check = |token: &str, body: &[u8], now: i64| verify(&post(URL, &jwt_headers(token), body, now), &c, now);
        assert_eq!(check(&token, &body, now), Ok(()));
        // The body is bound by payload_hash.
        let tampered = String::from_utf8(body.clone()).expect("utf-8").replace("delivered", "rejected");
        assert_eq!(check(&token, tampered.as_bytes(), now), Err(VerifyError::BadSignature));
        // A changed signature or claims.
        let (rest, sig) = token.rsplit_once('.').expect("three parts");
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).expect("base64url");
        raw[0] ^= 1;
        let flipped = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(check(&format!("{rest}.{flipped}"), &body, now), Err(VerifyError::BadSignature));
        let forged_claims =
            jwt(&serde_json::json!({"alg": "HS256"}), &claims_for(tampered.as_bytes(), JWT_IAT), "guess");
        assert_eq!(check(&forged_claims, tampered.as_bytes(), now), Err(VerifyError::BadSignature));
        // Wrong secret.
        assert_eq!(
            verify(&post(URL, &jwt_headers(&token), &body, now), &creds(&["secret"], None), now),
            Err(VerifyError::BadSignature)
        );
        // Stale and future iat (the default tolerance is a day).
        assert_eq!(check(&token, &body, now + 86_400_000), Ok(()));
        assert_eq!(check(&token, &body, now + 86_401_000), Err(VerifyError::Stale));
        assert_eq!(check(&token, &body, now - 301_000), Err(VerifyError::Stale));
        // An expired token.
        let mut claims = claims_for(&body, JWT_IAT);
        claims["exp"] = Value::from(JWT_IAT + 60);
        let expiring = jwt(&serde_json::json!({"alg": "HS256", "typ": "JWT"}), &claims, JWT_SECRET);
        assert_eq!(check(&expiring, &body, now + 60_000), Ok(()));
        assert_eq!(check(&expiring, &body, now + 361_000), Err(VerifyError::Stale));
        // Only HS256: `none` (with or without a signature) and others are refused.
        let claims = claims_for(&body, JWT_IAT);
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", b64(&serde_json::json!({"alg": "none"})), b64(&claims));
        assert_eq!(check(&none, &body, now), Err(VerifyError::Malformed("JWT algorithm")));
        for alg in ["HS512", "hs256", "RS256"] {
            let t = jwt(&serde_json::json!({"alg": alg}), &claims, JWT_SECRET);
            assert_eq!(check(&t, &body, now), Err(VerifyError::Malformed("JWT algorithm")), "{alg}");
        }
        // A fresh, correct one verifies (the helper agrees with the fixture).
        assert_eq!(check(&jwt(&serde_json::json!({"alg": "HS256"}), &claims, JWT_SECRET), &body, now), Ok(()));
        // Missing claims.
        for missing in ["iat", "payload_hash"] {
            let mut claims = claims_for(&body, JWT_IAT);
            claims.as_object_mut().expect("object").remove(missing);
            let t = jwt(&serde_json::json!({"alg": "HS256"}), &claims, JWT_SECRET);
            assert!(matches!(check(&t, &body, now), Err(VerifyError::Missing(_))), "{missing}");
        }
        // Malformed tokens and headers.
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!", &format!("{token}=")] {
            assert!(matches!(check(bad, &body, now), Err(VerifyError::Malformed(_))), "{bad:?}");
        }
        let basic = headers("Authorization: Basic dTpw");
        assert_eq!(verify(&post(URL, &basic, &body, now), &c, now), Err(VerifyError::Malformed("authorization")));
        // No JWT at all: a status body is refused as unsigned.
        let bare = headers("Content-Type: application/json");
        assert_eq!(verify(&post(URL, &bare, &body, now), &c, now), Err(VerifyError::Missing("authorization")));
    }

    fn parse_receipt_query(query: &str) -> Callback {
        let url = format!("{URL}?{query}");
        let h = HeaderMap::new();
        let mut parsed = parse(&get_request(&url, &h, 1_700_000_000_000), &context("vonage")).expect("parses");
        assert_eq!(parsed.callbacks.len(), 1);
        parsed.callbacks.remove(0)
    }

    fn parse_status_body(body: &[u8]) -> Callback {
        let h = headers("Content-Type: application/json");
        let mut parsed = parse(&post(URL, &h, body, 1_700_000_000_000), &context("vonage")).expect("parses");
        assert_eq!(parsed.callbacks.len(), 1);
        parsed.callbacks.remove(0)
    }

    #[test]
    fn receipts_normalize_as_the_mapping_table_says() {
        let cb = parse_receipt_query(&fixture_text("sms-dlr.txt"));
        assert_eq!(cb.event.kind, EventKind::Status(Status::Delivered));
        assert_eq!((cb.event.reason, cb.event.error.as_deref()), (None, None));
        assert_eq!(cb.event.recipient.as_deref(), Some("4527631111"));
        assert_eq!(cb.event.ts, 1_493_724_243_000, "message-timestamp, UTC");
        assert_eq!(cb.target.id, None);
        assert_eq!(cb.target.provider.as_ref().map(|p| p.message_id.as_str()), Some("0C0000002EEBDA56"));
        assert_eq!(cb.event.provider_event.as_deref(), Some("delivered"));
        assert!(cb.event.dedupe_key.starts_with("vonage:h:"));

        let signed = parse_receipt_query(&signed_dlr());
        assert_eq!(signed.event.kind, EventKind::Status(Status::Delivered));
        assert_eq!(signed.target.id.as_ref().map(|i| i.as_str()), Some("msg_01HZX3RELAYEXAMPLE"));
        assert_eq!(signed.target.provider.as_ref().map(|p| p.message_id.as_str()), Some("0A0000001234567B"));
        assert_eq!(signed.event.recipient.as_deref(), Some("447700900000"));
        assert_eq!(signed.event.ts, DLR_TS * 1000);
        let data = &signed.event.detail["data"];
        assert_eq!(data["client-ref"], "msg_01HZX3RELAYEXAMPLE");
        for dropped in ["sig", "nonce", "timestamp"] {
            assert!(data.get(dropped).is_none(), "{dropped} is signature material");
        }

        let status = |s: &str, code: &str| {
            parse_receipt_query(&format!("messageId=M1&status={s}&err-code={code}&msisdn=447700900000")).event
        };
        for s in ["accepted", "buffered"] {
            assert_eq!(status(s, "0").kind, EventKind::Status(Status::Sent), "{s}");
        }
        for (s, code, reason) in [
            ("failed", "1", Reason::Failed),
            ("expired", "2", Reason::Failed),
            ("rejected", "6", Reason::Filtered),
            ("rejected", "52", Reason::Filtered),
            ("failed", "9", Reason::Bounced),
            ("failed", "3", Reason::Bounced),
        ] {
            let e = status(s, code);
            assert_eq!(e.kind, EventKind::Status(Status::Undeliverable), "{s}");
            assert_eq!((e.reason, e.error.as_deref()), (Some(reason), Some(code)), "{s} {code}");
        }
        assert_eq!(status("failed", "0").error, None);
        let unknown = status("unknown", "0");
        assert_eq!((unknown.kind, unknown.provider_event.as_deref()), (EventKind::Unknown, Some("unknown")));
        // No message-timestamp: scts, then the time of receipt.
        assert_eq!(parse_receipt_query("messageId=M1&status=delivered&scts=1705021324").event.ts, 1_493_731_440_000);
        assert_eq!(parse_receipt_query("messageId=M1&status=delivered&scts=17050213").event.ts, 1_700_000_000_000);
    }

    #[test]
    fn receipt_dedupe_keys_and_client_refs() {
        let a = parse_receipt_query(&signed_dlr());
        // A retry is signed afresh (new timestamp, nonce, sig): same key.
        let retry = signed_dlr()
            .replace("nonce=aaaaaaaa", "nonce=bbbbbbbb")
            .replace("timestamp=1577887200", "timestamp=1577887260");
        assert_eq!(a.event.dedupe_key, parse_receipt_query(&retry).event.dedupe_key);
        let failed = signed_dlr().replace("status=delivered", "status=failed");
        assert_ne!(a.event.dedupe_key, parse_receipt_query(&failed).event.dedupe_key);
        // The id may sit under the id field of a query string in client-ref.
        let cb = parse_receipt_query("messageId=M1&status=delivered&client-ref=tenant%3D4%26hookrelay_id%3Dorder-5");
        assert_eq!(cb.target.id.map(String::from), Some("order-5".to_owned()));
        let cb = parse_receipt_query("messageId=M1&status=delivered&client-ref=not+an+id");
        assert_eq!(cb.target.id, None);
    }

    #[test]
    fn status_webhooks_normalize_as_the_mapping_table_says() {
        let delivered = parse_status_body(&fixture("vonage", "messages-status-delivered.json"));
        assert_eq!(delivered.event.kind, EventKind::Status(Status::Delivered));
        assert_eq!((delivered.event.reason, delivered.event.error.as_deref()), (None, None));
        assert_eq!(delivered.event.recipient.as_deref(), Some("447700900000"));
        assert_eq!(delivered.event.ts, JWT_IAT * 1000);
        assert_eq!(delivered.target.id.as_ref().map(|i| i.as_str()), Some("msg_01HZX3RELAYEXAMPLE"));
        assert_eq!(
            delivered.target.provider.as_ref().map(|p| p.message_id.as_str()),
            Some("aaaaaaaa-bbbb-cccc-dddd-0123456789ab")
        );
        assert_eq!(delivered.event.detail["data"]["usage"]["price"], "0.0333");
        // The signed fixture is the same event: same key.
        let generated = parse_status_body(&fixture("vonage", "generated-messages-status.payload"));
        assert_eq!(generated.event.dedupe_key, delivered.event.dedupe_key);

        let rejected = parse_status_body(&fixture("vonage", "messages-status-rejected.json"));
        assert_eq!(rejected.event.kind, EventKind::Status(Status::Undeliverable));
        assert_eq!(rejected.event.reason, Some(Reason::ProviderError));
        assert_eq!(rejected.event.error.as_deref(), Some("1240: Illegal Number"));
        assert_ne!(rejected.event.dedupe_key, delivered.event.dedupe_key);

        let status = |s: &str, extra: &str| {
            let body = format!(
                r#"{{"message_uuid":"u1","status":"{s}","to":"447700900000","timestamp":"2023-05-01T14:00:00Z"{extra}}}"#
            );
            parse_status_body(body.as_bytes()).event
        };
        assert_eq!(status("submitted", "").kind, EventKind::Status(Status::Sent));
        assert_eq!(status("read", "").kind, EventKind::Status(Status::Opened));
        let undeliverable = status("undeliverable", r#","error":{"type":"https://developer.vonage.com/api-errors#x"}"#);
        assert_eq!(undeliverable.kind, EventKind::Status(Status::Undeliverable));
        assert_eq!(undeliverable.reason, Some(Reason::Failed));
        assert_eq!(undeliverable.error.as_deref(), Some("https://developer.vonage.com/api-errors#x"));
        let numeric = status("rejected", r#","error":{"title":1320,"detail":"Message already sent"}"#);
        assert_eq!(numeric.error.as_deref(), Some("1320: Message already sent"));
        assert_eq!(status("clicked", "").kind, EventKind::Unknown);
        // The v0.1 shape of `to`.
        let old = parse_status_body(
            br#"{"message_uuid":"u1","status":"delivered","to":{"type":"sms","number":"447700900001"}}"#,
        );
        assert_eq!(old.event.recipient.as_deref(), Some("447700900001"));
        assert_eq!(old.event.ts, 1_700_000_000_000, "no timestamp: the time of receipt");
    }

    #[test]
    fn garbage_is_refused() {
        let h = headers("Content-Type: application/json");
        for bad in [
            &b"{"[..],
            br#"{"message_uuid":5,"status":"delivered"}"#,
            br#"{"message_uuid":"u","to":"x"}"#,
            b"[1]",
            b"status=delivered",
            b"messageId=M1",
        ] {
            assert!(parse(&post(URL, &h, bad, 0), &context("vonage")).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&get_request(URL, &HeaderMap::new(), 0), &context("vonage")).is_err());
    }

    #[test]
    fn configuration() {
        let err = Credentials::from_config(&config("vonage")).expect_err("no secret");
        assert!(err.to_string().starts_with("secrets: "), "{err}");
        let mut cfg = config("vonage");
        cfg.secrets = vec![Secret::new("s3cret-value")];
        cfg.signature_method = Some("sha384".into());
        let err = Credentials::from_config(&cfg).expect_err("bad method");
        assert!(err.to_string().starts_with("signature_method: "), "{err}");
        cfg.signature_method = Some("SHA256".into());
        let c = Credentials::from_config(&cfg).expect("valid");
        assert_eq!(c.method, SignatureMethod::Sha256);
        assert_eq!(c.tolerance, DEFAULT_TOLERANCE_SECONDS);
        assert!(!format!("{c:?}").contains("s3cret-value"));
    }

    proptest! {
        #[test]
        fn never_panics(body in mutations(vec![
            signed_dlr().into_bytes(),
            fixture("vonage", "generated-messages-status.payload"),
            fixture("vonage", "messages-status-rejected.json"),
        ]), token in mutations(vec![fixture_jwt().into_bytes()]), json in any::<bool>()) {
            let c = creds(&["secret", JWT_SECRET], Some("sha256"));
            let h = if json { headers("Content-Type: application/json") } else { HeaderMap::new() };
            let _ = verify(&post(URL, &h, &body, 0), &c, 0);
            let _ = parse(&post(URL, &h, &body, 0), &context("vonage"));
            if let Ok(query) = std::str::from_utf8(&body) {
                let url = format!("{URL}?{query}");
                let req = get_request(&url, &h, 0);
                let _ = verify(&req, &c, 0);
                let _ = parse(&req, &context("vonage"));
            }
            if let Ok(token) = std::str::from_utf8(&token)
                && let Ok(value) = axum::http::HeaderValue::from_str(&format!("Bearer {token}"))
            {
                let mut h = HeaderMap::new();
                h.insert(axum::http::header::AUTHORIZATION, value);
                let _ = verify(&post(URL, &h, &body, 0), &c, JWT_IAT * 1000);
            }
        }
    }
}
