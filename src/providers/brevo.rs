//! Brevo (formerly Sendinblue) transactional email webhooks: JSON POSTs of
//! one event object, or an array of them when the webhook is `batched`.
//!
//! Authenticity: Brevo signs nothing. A source must require the bearer
//! token set on the webhook, basic auth (Basic credentials put in the
//! webhook URL), or a secret header; all configured checks must pass,
//! compared in constant time. There is no timestamp to bound replays:
//! dedupe keys make them harmless.
//!
//! Correlation: hookrelay's id travels in the `X-Mailin-custom` header set
//! at send time, which Brevo echoes: either a JSON object holding the id
//! under the id field (`{"hookrelay_id": "<id>", ...}`, so other data can
//! share the header), or the id itself as the whole value. The provider id
//! is `message-id`, the SMTP Message-ID the send API returned as
//! `messageId` (angle brackets do not matter).
//!
//! Mapping: `request` → SENT; `delivered` → DELIVERED; `deferred` and
//! `soft_bounce` → DELAYED; `hard_bounce` and `invalid_email` →
//! UNDELIVERABLE BOUNCED; `blocked` → UNDELIVERABLE FILTERED; `error` →
//! UNDELIVERABLE PROVIDER_ERROR; `opened`, `unique_opened` → OPENED;
//! `proxy_open`, `unique_proxy_open` → OPENED as machine opens (they move
//! the status only if the source allows it); `click` → CLICKED; `spam`,
//! `complaint` → complaint; `unsubscribe(d)` → unsubscribe; anything else is
//! recorded as unknown. The camelCase names used when creating webhooks
//! (`hardBounce`, `uniqueOpened`, ...) are accepted as well, and so are
//! `sent` and `invalid` (the webhook settings' names for `request` and
//! `invalid_email`). `reason` is the error text.
//!
//! Time: `ts_epoch` (milliseconds; a value small enough to be seconds, as
//! in some of Brevo's own examples, is read as seconds), else `ts_event`,
//! else `ts` (seconds), else the time of receipt.

use serde_json::Value;

use super::common::{self, Unsigned, json_seconds_to_ms, key_from_parts, str_field};
use super::{Batch, Callback, CallbackRequest, ParseContext, ParseError, Parsed};
use crate::config::{FieldError, SourceConfig};
use crate::domain::{EventKind, Reason, Status};

/// Configuration fields a Brevo source uses.
pub const ACCEPTS: &[&str] = &["username", "password", "bearer_token", "header_name", "header_value"];

/// The credentials every Brevo callback must carry: see [`common::Unsigned`].
pub fn credentials(cfg: &SourceConfig) -> Result<Unsigned, FieldError> {
    Unsigned::from_config(
        cfg,
        "bearer_token",
        "Brevo does not sign its callbacks; set the webhook's bearer token here, or put Basic \
         credentials in the webhook URL (https://user:password@host/callbacks/<name>) and set \
         username/password, or set header_name/header_value",
    )
}

/// Parses one event or a batch of events.
pub fn parse(req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
    let body: Value = serde_json::from_slice(req.body).map_err(|_| ParseError::Unreadable("JSON body"))?;
    match &body {
        Value::Array(events) => {
            Batch::parse_each(events, "empty event batch", |event| parse_event(event, ctx, req.received_at))
        }
        Value::Object(_) => Ok(Parsed::events(vec![parse_event(&body, ctx, req.received_at)?])),
        _ => Err(ParseError::Shape("expected an event object or an array of them")),
    }
}

/// `hardBounce` → `hard_bounce`; snake_case names are unchanged.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.trim().chars() {
        if c.is_ascii_uppercase() {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `ts_epoch` in ms; values below 10^11 (year 1973 in ms, year 5138 in
/// seconds) are seconds.
fn epoch_ms(value: &Value) -> Option<i64> {
    let n = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    if !n.is_finite() || n < 0.0 {
        None
    } else if n < 1e11 {
        common::seconds_to_ms(n)
    } else if n < 1e15 {
        Some(n.round() as i64)
    } else {
        None
    }
}

/// The event time (ms) and the raw time field it came from.
fn event_time(event: &Value) -> (Option<i64>, Option<&Value>) {
    if let Some(v) = event.get("ts_epoch")
        && let Some(ms) = epoch_ms(v)
    {
        return (Some(ms), Some(v));
    }
    for name in ["ts_event", "ts"] {
        if let Some(v) = event.get(name)
            && let Some(ms) = json_seconds_to_ms(v)
        {
            return (Some(ms), Some(v));
        }
    }
    (None, None)
}

/// hookrelay's id from `X-Mailin-custom`: the id field of a JSON object,
/// else the whole value.
fn hookrelay_id(event: &Value, ctx: &ParseContext) -> Option<String> {
    let custom = event.get("X-Mailin-custom")?;
    let object = match custom {
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(parsed @ Value::Object(_)) => parsed,
            _ => return Some(s.trim().to_owned()),
        },
        object @ Value::Object(_) => object.clone(),
        _ => return None,
    };
    str_field(&object, &ctx.id_field).map(str::to_owned)
}

fn parse_event(event: &Value, ctx: &ParseContext, received_at: i64) -> Result<Callback, ParseError> {
    if !event.is_object() {
        return Err(ParseError::Shape("an event is not an object"));
    }
    let name = str_field(event, "event").ok_or_else(|| ParseError::Missing("event".into()))?;
    let normalized = snake_case(name);
    let pmid = str_field(event, "message-id");
    let recipient = str_field(event, "email");
    let (ts, time) = event_time(event);
    let link = str_field(event, "link");
    let key = key_from_parts(
        ctx,
        &[
            normalized.as_bytes(),
            pmid.unwrap_or("").as_bytes(),
            recipient.unwrap_or("").as_bytes(),
            time.map(Value::to_string).unwrap_or_default().as_bytes(),
            link.unwrap_or("").as_bytes(),
        ],
    );
    let undeliverable = |reason| (EventKind::Status(Status::Undeliverable), Some(reason));
    let (kind, why) = match normalized.as_str() {
        "request" | "sent" => (EventKind::Status(Status::Sent), None),
        "delivered" => (EventKind::Status(Status::Delivered), None),
        "deferred" | "soft_bounce" => (EventKind::Status(Status::Delayed), None),
        "hard_bounce" | "invalid_email" | "invalid" => undeliverable(Reason::Bounced),
        "blocked" => undeliverable(Reason::Filtered),
        "error" => undeliverable(Reason::ProviderError),
        "opened" | "unique_opened" | "proxy_open" | "unique_proxy_open" => (EventKind::Status(Status::Opened), None),
        "click" => (EventKind::Status(Status::Clicked), None),
        "spam" | "complaint" => (EventKind::Complained, None),
        "unsubscribe" | "unsubscribed" => (EventKind::Unsubscribed, None),
        _ => (EventKind::Unknown, None),
    };
    let mut e = common::event(ctx, kind, ts.unwrap_or(received_at), key, name, Some(event));
    e.recipient = recipient.map(str::to_owned);
    e.reason = why;
    common::set_error(&mut e, str_field(event, "reason").unwrap_or(""));
    if matches!(normalized.as_str(), "proxy_open" | "unique_proxy_open") {
        common::machine(&mut e, ctx);
    }
    if let Some(link) = link.filter(|_| normalized == "click") {
        e.detail.insert("url".into(), Value::from(link));
    }
    let id = hookrelay_id(event, ctx);
    Ok(Callback { target: common::target(ctx, id.as_deref(), pmid), event: e })
}

#[cfg(test)]
mod tests {
    use crate::providers::VerifyError;
    use axum::http::HeaderMap;
    use base64::Engine;
    use proptest::prelude::*;

    use super::super::common::testing::{config, context, fixture, headers, mutations, post};
    use super::*;
    use crate::domain::Secret;

    const URL: &str = "https://relay.example.com/callbacks/brevo";
    const RECEIVED: i64 = 1_700_000_000_000;

    fn bearer_creds() -> Unsigned {
        let mut cfg = config("brevo");
        cfg.bearer_token = Some(Secret::new("long-random-token"));
        credentials(&cfg).expect("valid")
    }

    #[test]
    fn the_bearer_token_is_required_and_checked() {
        let body = fixture("brevo", "delivered.json");
        let c = bearer_creds();
        let check = |h: &str| c.verify(&post(URL, &headers(h), &body, 0));
        assert_eq!(check("Authorization: Bearer long-random-token"), Ok(()));
        assert_eq!(check("Authorization: bearer long-random-token"), Ok(()));
        assert_eq!(check("Authorization: Bearer long-random-tokeN"), Err(VerifyError::BadCredentials));
        assert_eq!(check("Authorization: Bearer long-random-token-and-more"), Err(VerifyError::BadCredentials));
        assert_eq!(check("Content-Type: application/json"), Err(VerifyError::Missing("authorization")));
        assert_eq!(check("Authorization: Basic bG9uZzp0b2tlbg=="), Err(VerifyError::Missing("bearer authorization")));
        assert!(!format!("{c:?}").contains("long-random-token"), "no secrets in Debug");
    }

    #[test]
    fn basic_auth_in_the_url_works_too() {
        let mut cfg = config("brevo");
        cfg.username = Some("hooks".into());
        cfg.password = Some(Secret::new("pw-secret"));
        let c = credentials(&cfg).expect("valid");
        let body = fixture("brevo", "delivered.json");
        let basic = |u: &str, p: &str| {
            let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            headers(&format!("Authorization: Basic {v}"))
        };
        assert_eq!(c.verify(&post(URL, &basic("hooks", "pw-secret"), &body, 0)), Ok(()));
        assert_eq!(c.verify(&post(URL, &basic("hooks", "pw"), &body, 0)), Err(VerifyError::BadCredentials));
        assert_eq!(c.verify(&post(URL, &HeaderMap::new(), &body, 0)), Err(VerifyError::Missing("authorization")));
    }

    #[test]
    fn a_source_without_authentication_is_refused() {
        let err = credentials(&config("brevo")).expect_err("refused");
        assert!(err.to_string().starts_with("bearer_token: "), "{err}");
    }

    fn parse_all(body: &[u8]) -> Vec<Callback> {
        let h = headers("Content-Type: application/json");
        parse(&post(URL, &h, body, RECEIVED), &context("brevo")).expect("parses").callbacks
    }

    fn parse_fixture(name: &str) -> Callback {
        let mut all = parse_all(&fixture("brevo", name));
        assert_eq!(all.len(), 1, "{name}");
        all.remove(0)
    }

    const MID: &str = "201803011158.9876543210@smtp-relay.mailin.fr";

    #[test]
    fn every_sample_normalizes_as_the_mapping_table_says() {
        // (fixture, kind, reason, error prefix, recipient, provider message id, time)
        type Case = (&'static str, EventKind, Option<Reason>, Option<&'static str>, &'static str, &'static str, i64);
        let t = 1_520_363_423_000;
        let cases: &[Case] = &[
            (
                "request.json",
                EventKind::Status(Status::Sent),
                None,
                None,
                "recipient@example.com",
                "201803062010.27287306012@smtp-relay.mailin.fr",
                t,
            ),
            ("delivered.json", EventKind::Status(Status::Delivered), None, None, "recipient@example.com", MID, t),
            (
                "deferred.json",
                EventKind::Status(Status::Delayed),
                None,
                Some("550 RecipientError: 550 5.1.1"),
                "notauser@example.com",
                MID,
                t,
            ),
            (
                "soft_bounce.json",
                EventKind::Status(Status::Delayed),
                None,
                Some("undefined Unable to find MX"),
                "recipient@no-mx.example.com",
                MID,
                t,
            ),
            (
                "hard_bounce.json",
                EventKind::Status(Status::Undeliverable),
                Some(Reason::Bounced),
                Some("RecipientError: 550 5.5.0"),
                "not-a-user@example.com",
                MID,
                t,
            ),
            (
                "invalid_email.json",
                EventKind::Status(Status::Undeliverable),
                Some(Reason::Bounced),
                Some("(guessing"),
                "recipient@example.com",
                MID,
                t,
            ),
            (
                "blocked.json",
                EventKind::Status(Status::Undeliverable),
                Some(Reason::Filtered),
                Some("blocked : due to blacklist user"),
                "recipient@example.com",
                MID,
                t,
            ),
            (
                "error.json",
                EventKind::Status(Status::Undeliverable),
                Some(Reason::ProviderError),
                None,
                "example@domain.com",
                "201798300811.5787683@relay.domain.com",
                1_604_933_623_000,
            ),
            ("opened.json", EventKind::Status(Status::Opened), None, None, "recipient@example.com", MID, t),
            ("unique_opened.json", EventKind::Status(Status::Opened), None, None, "recipient@example.com", MID, t),
            (
                "proxy_open.json",
                EventKind::Status(Status::Opened),
                None,
                None,
                "example@domain.com",
                "201798300811.5787683@relay.domain.com",
                RECEIVED,
            ),
            ("click.json", EventKind::Status(Status::Clicked), None, None, "recipient@example.com", MID, t),
            ("spam.json", EventKind::Complained, None, None, "recipient@example.com", MID, t),
            ("unsubscribe.json", EventKind::Unsubscribed, None, None, "recipient@example.com", MID, t),
        ];
        for (name, kind, reason, error, recipient, pmid, ts) in cases {
            let cb = parse_fixture(name);
            assert_eq!(cb.event.kind, *kind, "{name}");
            assert_eq!(cb.event.reason, *reason, "{name}");
            match error {
                Some(prefix) => assert!(
                    cb.event.error.as_deref().is_some_and(|e| e.starts_with(prefix)),
                    "{name}: {:?}",
                    cb.event.error
                ),
                None => assert_eq!(cb.event.error, None, "{name}"),
            }
            assert_eq!(cb.event.recipient.as_deref(), Some(*recipient), "{name}");
            assert_eq!(cb.target.provider.as_ref().map(|p| p.message_id.as_str()), Some(*pmid), "{name}");
            assert_eq!(cb.target.id, None, "{name}: no id in X-Mailin-custom");
            assert_eq!(cb.event.ts, *ts, "{name}");
            assert_eq!(cb.event.provider.as_ref().map(|p| p.as_str()), Some("brevo"));
            assert!(cb.event.dedupe_key.starts_with("brevo:h:"), "{name}");
            let machine = *name == "proxy_open.json";
            assert_eq!(cb.event.affects_status, !machine, "{name}");
            assert_eq!(cb.event.detail.get("machine"), machine.then_some(&Value::Bool(true)), "{name}");
        }
        let click = parse_fixture("click.json");
        assert_eq!(click.event.detail["url"], "https://example.com/click/me");
        assert_eq!(parse_fixture("hard_bounce.json").event.detail["data"]["tag"], "header-tag");
        // Distinct events have distinct keys; the same event keeps its key.
        let mut keys: Vec<String> = cases.iter().map(|(name, ..)| parse_fixture(name).event.dedupe_key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), cases.len());
        let h = HeaderMap::new();
        let again = parse(&post(URL, &h, &fixture("brevo", "delivered.json"), 5), &context("brevo")).expect("parses");
        assert_eq!(again.callbacks[0].event.dedupe_key, parse_fixture("delivered.json").event.dedupe_key);
    }

    #[test]
    fn machine_opens_may_move_the_status_when_allowed() {
        let mut ctx = context("brevo");
        ctx.machine_events_change_status = true;
        let h = HeaderMap::new();
        let parsed = parse(&post(URL, &h, &fixture("brevo", "proxy_open.json"), 0), &ctx).expect("parses");
        assert!(parsed.callbacks[0].event.affects_status);
        assert_eq!(parsed.callbacks[0].event.detail.get("machine"), Some(&Value::Bool(true)));
    }

    #[test]
    fn camel_case_names_batches_and_unknown_events() {
        let events = parse_all(
            br#"[
            {"event":"hardBounce","email":"a@example.com","message-id":"<m1@x>","ts_epoch":1520363423000,"reason":"550"},
            {"event":"uniqueOpened","email":"a@example.com","message-id":"<m1@x>","ts_epoch":1520363423001},
            {"event":"uniqueProxyOpen","email":"a@example.com","message-id":"<m1@x>","ts_event":1520363424},
            {"event":"softBounce","email":"a@example.com","message-id":"<m1@x>","ts":"1520363425"},
            {"event":"invalidEmail","email":"a@example.com","message-id":"<m1@x>"},
            {"event":"sent","email":"a@example.com","message-id":"<m1@x>"},
            {"event":"listAddition","email":"a@example.com"}
        ]"#,
        );
        let kinds: Vec<EventKind> = events.iter().map(|c| c.event.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Status(Status::Undeliverable),
                EventKind::Status(Status::Opened),
                EventKind::Status(Status::Opened),
                EventKind::Status(Status::Delayed),
                EventKind::Status(Status::Undeliverable),
                EventKind::Status(Status::Sent),
                EventKind::Unknown,
            ]
        );
        assert_eq!(events[0].event.reason, Some(Reason::Bounced));
        assert_eq!(events[0].event.provider_event.as_deref(), Some("hardBounce"), "the provider's own name is kept");
        assert_eq!(events[0].target.provider.as_ref().map(|p| p.message_id.as_str()), Some("m1@x"));
        assert_eq!(events[1].event.ts, 1_520_363_423_001);
        assert!(!events[2].event.affects_status, "a proxy open is a machine open");
        assert_eq!(events[2].event.ts, 1_520_363_424_000);
        assert_eq!(events[3].event.ts, 1_520_363_425_000);
        assert_eq!(events[4].event.ts, RECEIVED);
        assert_eq!(events[6].target, crate::domain::Target::default());
        assert!(parse_all(b"[]").is_empty());
    }

    #[test]
    fn the_hookrelay_id_comes_from_x_mailin_custom() {
        let id = |custom: &str| {
            let event = serde_json::json!({"event": "delivered", "message-id": "<m@x>", "X-Mailin-custom": custom});
            parse_all(&serde_json::to_vec(&event).expect("json")).remove(0).target.id.map(String::from)
        };
        assert_eq!(id(r#"{"hookrelay_id": "order-1", "tenant": 4}"#), Some("order-1".into()));
        assert_eq!(id("order-2"), Some("order-2".into()));
        assert_eq!(id(" order-3 "), Some("order-3".into()));
        assert_eq!(id(r#"{"meta": "data"}"#), None, "an object without the field");
        assert_eq!(id("not an id"), None);
        assert_eq!(id("1234"), Some("1234".into()), "JSON but not an object: the value itself");
    }

    #[test]
    fn times() {
        assert_eq!(epoch_ms(&Value::from(1_520_363_423_000_i64)), Some(1_520_363_423_000));
        assert_eq!(epoch_ms(&Value::from(1_604_933_623)), Some(1_604_933_623_000));
        assert_eq!(epoch_ms(&Value::from("1520363423000")), Some(1_520_363_423_000));
        assert_eq!(epoch_ms(&Value::from(-1)), None);
        assert_eq!(epoch_ms(&Value::from(1e300)), None);
        assert_eq!(epoch_ms(&Value::Null), None);
        assert_eq!(snake_case("uniqueProxyOpen"), "unique_proxy_open");
        assert_eq!(snake_case("hard_bounce"), "hard_bounce");
    }

    #[test]
    fn garbage_is_refused() {
        let h = HeaderMap::new();
        for bad in [&b""[..], b"{", b"null", b"\"delivered\"", b"[1]", br#"{"email":"a@b"}"#, br#"[{"event":null}]"#] {
            assert!(parse(&post(URL, &h, bad, 0), &context("brevo")).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Unreadable elements of a batch are left out, the rest recorded.
        let body = br#"[{"event":null},{"event":"delivered","message-id":"<m1@x>"}]"#;
        let parsed = parse(&post(URL, &h, body, 0), &context("brevo")).expect("parses");
        assert_eq!((parsed.callbacks.len(), parsed.skipped), (1, 1));
        assert!(matches!(parsed.skip_reason, Some(ParseError::Element { index: 0, .. })));
    }

    proptest! {
        #[test]
        fn never_panics(body in mutations(vec![
            fixture("brevo", "request.json"),
            fixture("brevo", "error.json"),
            fixture("brevo", "proxy_open.json"),
        ]), auth in "[ -~]{0,40}") {
            let mut h = headers("Content-Type: application/json");
            if let Ok(v) = axum::http::HeaderValue::from_str(&auth) {
                h.insert(axum::http::header::AUTHORIZATION, v);
            }
            let _ = bearer_creds().verify(&post(URL, &h, &body, 0));
            let _ = parse(&post(URL, &h, &body, 0), &context("brevo"));
        }
    }
}
