//! Helpers shared by the provider modules: constant-time credential checks,
//! timestamp windows, correlation, event construction and time parsing.
//!
//! Reasons follow one convention across providers (Courier's vocabulary):
//! - `BOUNCED`: hard bounce, gave up after retries, or suppressed because of
//!   an earlier bounce or an invalid address;
//! - `UNSUBSCRIBED`: suppressed because the recipient unsubscribed (or sent STOP);
//! - `FILTERED`: blocked by policy, reputation or content filtering, or
//!   suppressed because of a spam complaint;
//! - `PROVIDER_ERROR`: the provider failed or refused the message itself
//!   (rendering failures, API errors, account restrictions);
//! - `FAILED`: any other undeliverable outcome.

use axum::http::{HeaderMap, HeaderName, header};
use base64::Engine;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use super::{CallbackRequest, ParseContext, VerifyError};
use crate::config::{FieldError, SourceConfig};
use crate::domain::Secret;
use crate::domain::event::{dedupe_key, hashed_dedupe_key};
use crate::domain::{EventKind, MessageId, NormalizedEvent, ProviderRef, Target};

/// Constant-time equality (length differences are not hidden, only content).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A header's value as text; missing and non-text values are errors.
pub fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    let value = headers.get(name).ok_or(VerifyError::Missing(name))?;
    value.to_str().map_err(|_| VerifyError::Malformed(name))
}

/// HTTP-level authentication a source may require: basic auth (the
/// credentials in the webhook URL), a bearer token, and/or a secret header.
/// Every configured check must pass.
#[derive(Default)]
pub struct HttpAuth {
    basic: Option<(String, Secret)>,
    bearer: Option<Secret>,
    header: Option<(HeaderName, Secret)>,
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAuth")
            .field("basic", &self.basic.is_some())
            .field("bearer", &self.bearer.is_some())
            .field("header", &self.header.as_ref().map(|(n, _)| n.as_str()))
            .finish()
    }
}

impl HttpAuth {
    /// Reads `username`/`password`, `bearer_token` and `header_name`/`header_value`.
    pub fn from_config(cfg: &SourceConfig) -> Result<Self, FieldError> {
        let basic = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) if !u.is_empty() && !p.expose().is_empty() => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => return Err(FieldError::new("username/password", "set both, neither empty")),
        };
        let header = match (&cfg.header_name, &cfg.header_value) {
            (Some(name), Some(value)) if !value.expose().is_empty() => {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| FieldError::new("header_name", format!("`{name}` is not a valid header name")))?;
                Some((name, value.clone()))
            }
            (None, None) => None,
            _ => return Err(FieldError::new("header_name/header_value", "set both, value not empty")),
        };
        let bearer = cfg.bearer_token.clone().filter(|t| !t.expose().is_empty());
        Ok(HttpAuth { basic, bearer, header })
    }

    pub fn is_configured(&self) -> bool {
        self.basic.is_some() || self.bearer.is_some() || self.header.is_some()
    }

    /// Checks every configured credential.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), VerifyError> {
        if let Some((user, pass)) = &self.basic {
            let value = header(headers, "authorization")?;
            let (scheme, encoded) = value.split_once(' ').ok_or(VerifyError::Malformed("authorization"))?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(VerifyError::Missing("basic authorization"));
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| VerifyError::Malformed("authorization"))?;
            let (u, p) = match decoded.iter().position(|b| *b == b':') {
                Some(i) => (&decoded[..i], &decoded[i + 1..]),
                None => return Err(VerifyError::Malformed("authorization")),
            };
            // Both halves are compared whatever the first one gives.
            let ok = u.ct_eq(user.as_bytes()) & p.ct_eq(pass.expose().as_bytes());
            if !bool::from(ok) {
                return Err(VerifyError::BadCredentials);
            }
        }
        if let Some(token) = &self.bearer {
            let value = header(headers, "authorization")?;
            let presented = value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
                .ok_or(VerifyError::Missing("bearer authorization"))?;
            if !ct_eq(presented.as_bytes(), token.expose().as_bytes()) {
                return Err(VerifyError::BadCredentials);
            }
        }
        if let Some((name, secret)) = &self.header {
            let value = headers.get(name).ok_or(VerifyError::Missing("secret header"))?;
            if !ct_eq(value.as_bytes(), secret.expose().as_bytes()) {
                return Err(VerifyError::BadCredentials);
            }
        }
        Ok(())
    }
}

/// The credentials of a provider that does not sign its callbacks (Postmark,
/// Mailjet, Brevo, SparkPost): the HTTP credentials it can send. At least
/// one must be configured: anyone who learns the URL could otherwise forge
/// delivery statuses.
#[derive(Debug)]
pub struct Unsigned {
    /// Its `Debug` shows which checks are configured, never the secrets.
    http: HttpAuth,
}

impl Unsigned {
    /// Reads the source's HTTP credentials; with none, the error names
    /// `field` and says `how` the provider sends credentials.
    pub fn from_config(cfg: &SourceConfig, field: &'static str, how: impl Into<String>) -> Result<Self, FieldError> {
        let http = HttpAuth::from_config(cfg)?;
        if http.is_configured() { Ok(Unsigned { http }) } else { Err(FieldError::new(field, how)) }
    }

    /// Checks the configured credentials (in constant time).
    pub fn verify(&self, req: &CallbackRequest<'_>) -> Result<(), VerifyError> {
        self.http.check(req.headers)
    }
}

/// Accepted clock skew for timestamps from the future.
pub const FUTURE_SKEW_SECONDS: i64 = 300;

/// Checks a signed timestamp (unix seconds) against `now` (epoch ms): no
/// older than `tolerance_seconds`, no further ahead than the smaller of the
/// tolerance and five minutes.
pub fn check_window(ts_seconds: i64, now_ms: i64, tolerance_seconds: u64) -> Result<(), VerifyError> {
    let now = now_ms.div_euclid(1000);
    let tolerance = i64::try_from(tolerance_seconds).unwrap_or(i64::MAX);
    let age = now.saturating_sub(ts_seconds);
    if age > tolerance || -age > tolerance.min(FUTURE_SKEW_SECONDS) {
        return Err(VerifyError::Stale);
    }
    Ok(())
}

/// The target of an event: hookrelay's id when the provider echoed a valid
/// one, and the provider's own message id when it has one.
pub fn target(ctx: &ParseContext, hookrelay_id: Option<&str>, provider_message_id: Option<&str>) -> Target {
    Target {
        id: hookrelay_id.map(str::trim).and_then(|id| MessageId::parse(id).ok()),
        provider: provider_message_id.and_then(|pmid| ProviderRef::new(ctx.provider.clone(), pmid).ok()),
    }
}

/// A normalized event from this source's provider. `provider_event` is the
/// provider's own name for it; `data` (the raw provider event) is kept in
/// the history entry.
pub fn event(
    ctx: &ParseContext,
    kind: EventKind,
    ts: i64,
    dedupe_key: String,
    provider_event: &str,
    data: Option<&Value>,
) -> NormalizedEvent {
    let mut detail = Map::new();
    if let Some(data) = data {
        detail.insert("data".into(), data.clone());
    }
    NormalizedEvent {
        kind,
        affects_status: true,
        ts,
        dedupe_key,
        provider: Some(ctx.provider.clone()),
        provider_event: Some(truncate(provider_event, 128).to_owned()),
        recipient: None,
        reason: None,
        error: None,
        detail,
    }
}

/// Marks an open or click the provider says was made by a machine (a
/// privacy proxy or link scanner): recorded with `machine: true`, and it
/// moves the status only if the source is configured to let it.
pub fn machine(event: &mut NormalizedEvent, ctx: &ParseContext) {
    event.detail.insert("machine".into(), Value::Bool(true));
    event.affects_status = ctx.machine_events_change_status;
}

/// `provider:id` for events the provider identifies.
pub fn key_from_id(ctx: &ParseContext, id: &str) -> String {
    dedupe_key(ctx.provider.as_str(), id)
}

/// A key for events without an id of their own: a hash of the parts that
/// make the event what it is.
pub fn key_from_parts(ctx: &ParseContext, parts: &[&[u8]]) -> String {
    hashed_dedupe_key(ctx.provider.as_str(), parts)
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Longest provider error text kept on an event.
pub const MAX_ERROR: usize = 1_024;

/// Sets the error text, trimmed and bounded; empty text sets nothing.
pub fn set_error(event: &mut NormalizedEvent, text: &str) {
    let text = text.trim();
    if !text.is_empty() {
        event.error = Some(truncate(text, MAX_ERROR).to_owned());
    }
}

/// Unix seconds (possibly fractional) to epoch milliseconds.
pub fn seconds_to_ms(seconds: f64) -> Option<i64> {
    if !seconds.is_finite() || !(0.0..1e12).contains(&seconds) {
        return None;
    }
    Some((seconds * 1000.0).round() as i64)
}

/// A JSON number or numeric string of unix seconds, in epoch milliseconds.
pub fn json_seconds_to_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => seconds_to_ms(n.as_f64()?),
        Value::String(s) => seconds_to_ms(s.trim().parse().ok()?),
        _ => None,
    }
}

/// RFC 3339 / ISO 8601 text (any number of fractional digits) in epoch ms.
pub fn rfc3339_to_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A string field of a JSON object.
pub fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key)?.as_str()
}

/// Case-insensitive lookup of a content type's media type.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
pub mod testing {
    //! Fixtures and fuzzing for provider tests.

    use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
    use proptest::prelude::*;

    use super::super::{CallbackRequest, ParseContext};
    use crate::config::SourceConfig;
    use crate::domain::ProviderName;

    /// The bytes of `fixtures/providers/<provider>/<name>`.
    pub fn fixture(provider: &str, name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/providers/{provider}/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
    }

    /// Headers from `Name: value` lines.
    pub fn headers(text: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("bad header line {line:?}"));
            map.append(
                HeaderName::from_bytes(name.trim().as_bytes()).expect("header name"),
                HeaderValue::from_str(value.trim()).expect("header value"),
            );
        }
        map
    }

    /// A POST request with the given headers and body.
    pub fn post<'a>(url: &'a str, headers: &'a HeaderMap, body: &'a [u8], received_at: i64) -> CallbackRequest<'a> {
        static POST: Method = Method::POST;
        let query = url.split_once('?').map_or("", |(_, q)| q);
        CallbackRequest { method: &POST, url, query, headers, body, received_at }
    }

    pub fn context(provider: &str) -> ParseContext {
        ParseContext {
            provider: ProviderName::parse(provider).expect("name"),
            id_field: "hookrelay_id".into(),
            machine_events_change_status: false,
        }
    }

    /// A source configuration with only the name and provider set.
    pub fn config(provider: &str) -> SourceConfig {
        SourceConfig { name: format!("{provider}-test"), provider: provider.into(), ..SourceConfig::default() }
    }

    /// Random bytes, and fixtures with bytes flipped, inserted or cut off:
    /// what parsers and verifiers must survive without panicking.
    pub fn mutations(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        let seeds = if seeds.is_empty() { vec![Vec::new()] } else { seeds };
        let random = proptest::collection::vec(any::<u8>(), 0..512).boxed();
        let flipped =
            (proptest::sample::select(seeds.clone()), proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8))
                .prop_map(|(mut bytes, edits)| {
                    for (at, b) in edits {
                        if !bytes.is_empty() {
                            let i = at % bytes.len();
                            bytes[i] = b;
                        }
                    }
                    bytes
                })
                .boxed();
        let cut = (proptest::sample::select(seeds.clone()), any::<usize>())
            .prop_map(|(mut bytes, at)| {
                let len = bytes.len();
                bytes.truncate(if len == 0 { 0 } else { at % len });
                bytes
            })
            .boxed();
        let inserted = (
            proptest::sample::select(seeds),
            any::<usize>(),
            proptest::sample::select(vec![
                &b"{"[..],
                b"}",
                b"[",
                b"]",
                b"\"",
                b",",
                b":",
                b"null",
                b"\\",
                b"&",
                b"=",
                b"%",
                b"\xff",
                b"1e999",
            ]),
        )
            .prop_map(|(mut bytes, at, piece)| {
                let i = if bytes.is_empty() { 0 } else { at % bytes.len() };
                bytes.splice(i..i, piece.iter().copied());
                bytes
            })
            .boxed();
        prop_oneof![random, flipped, cut, inserted]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SourceConfig {
        SourceConfig { name: "t".into(), provider: "postmark".into(), ..SourceConfig::default() }
    }

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert("authorization", format!("Basic {v}").parse().expect("value"));
        h
    }

    #[test]
    fn basic_auth_checks_both_halves() {
        let mut c = cfg();
        c.username = Some("hook".into());
        c.password = Some(Secret::new("s3cret"));
        let auth = HttpAuth::from_config(&c).expect("valid");
        assert!(auth.is_configured());
        assert_eq!(auth.check(&basic("hook", "s3cret")), Ok(()));
        assert_eq!(auth.check(&basic("hook", "wrong")), Err(VerifyError::BadCredentials));
        assert_eq!(auth.check(&basic("other", "s3cret")), Err(VerifyError::BadCredentials));
        assert_eq!(auth.check(&basic("hook", "s3cret:extra")), Err(VerifyError::BadCredentials));
        assert_eq!(auth.check(&HeaderMap::new()), Err(VerifyError::Missing("authorization")));
        let mut bad = HeaderMap::new();
        bad.insert("authorization", "Basic !!!".parse().expect("value"));
        assert_eq!(auth.check(&bad), Err(VerifyError::Malformed("authorization")));
    }

    #[test]
    fn bearer_and_header_secrets() {
        let mut c = cfg();
        c.bearer_token = Some(Secret::new("tok"));
        c.header_name = Some("X-Hook-Secret".into());
        c.header_value = Some(Secret::new("hdr"));
        let auth = HttpAuth::from_config(&c).expect("valid");
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer tok".parse().expect("value"));
        assert_eq!(auth.check(&h), Err(VerifyError::Missing("secret header")));
        h.insert("x-hook-secret", "hdr".parse().expect("value"));
        assert_eq!(auth.check(&h), Ok(()));
        h.insert("x-hook-secret", "nope".parse().expect("value"));
        assert_eq!(auth.check(&h), Err(VerifyError::BadCredentials));
        h.insert("x-hook-secret", "hdr".parse().expect("value"));
        h.insert("authorization", "Bearer tok2".parse().expect("value"));
        assert_eq!(auth.check(&h), Err(VerifyError::BadCredentials));
    }

    #[test]
    fn half_configured_auth_is_refused() {
        let mut c = cfg();
        c.username = Some("only".into());
        assert!(HttpAuth::from_config(&c).is_err());
        let mut c = cfg();
        c.header_name = Some("bad header".into());
        c.header_value = Some(Secret::new("v"));
        assert!(HttpAuth::from_config(&c).is_err());
    }

    #[test]
    fn windows() {
        let now = 1_000_000_000_000;
        assert_eq!(check_window(1_000_000_000, now, 300), Ok(()));
        assert_eq!(check_window(1_000_000_000 - 300, now, 300), Ok(()));
        assert_eq!(check_window(1_000_000_000 - 301, now, 300), Err(VerifyError::Stale));
        assert_eq!(check_window(1_000_000_000 + 300, now, 300), Ok(()));
        assert_eq!(check_window(1_000_000_000 + 301, now, 300), Err(VerifyError::Stale));
        assert_eq!(check_window(1_000_000_000 + 301, now, 86_400), Err(VerifyError::Stale));
        assert_eq!(check_window(1_000_000_000 - 86_400, now, 86_400), Ok(()));
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339_to_ms("2014-08-01T13:28:10.2735393-04:00"), Some(1_406_914_090_273));
        assert_eq!(seconds_to_ms(1_534_108_637.153_125), Some(1_534_108_637_153));
        assert_eq!(json_seconds_to_ms(&Value::from("1454442600")), Some(1_454_442_600_000));
        assert_eq!(seconds_to_ms(f64::NAN), None);
        assert_eq!(seconds_to_ms(-1.0), None);
        assert_eq!(truncate("héllo", 2), "h");
    }
}
