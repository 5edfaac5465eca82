//! Mailjet event webhooks ("event API"): JSON POSTs of one event object, or
//! an array of them when "group events" is on for the trigger.
//!
//! Authenticity: Mailjet signs nothing. A source must require basic auth
//! (Basic credentials put in the event callback URL,
//! `https://user:password@relay.example.com/callbacks/mailjet`), a bearer
//! token, or a secret header; all configured checks must pass, compared in
//! constant time. There is no timestamp to bound replays: dedupe keys make
//! them harmless.
//!
//! Correlation: hookrelay's id is the `CustomID` given at send time (the
//! value itself), else the id field of the `EventPayload` (`Payload`), read
//! as a JSON object. The provider id is `MessageID`, a 64-bit integer kept
//! exact (never through a float) and written in decimal, as the Send API
//! returns it.
//!
//! Mapping: `sent` (accepted by the receiving server) → DELIVERED; `open` →
//! OPENED; `click` → CLICKED; `bounce` → UNDELIVERABLE BOUNCED when
//! `hard_bounce` is true, else DELAYED; `blocked` → UNDELIVERABLE, reason
//! from the error (`blocked_reason`); `spam` → complaint; `unsub` →
//! unsubscribe; anything else is recorded as unknown. Mailjet has no event
//! id: the key is a hash of the event name, `MessageID`, recipient, time
//! and, for clicks, the URL.

use serde_json::Value;

use super::common::{self, Unsigned, json_seconds_to_ms, key_from_parts, str_field};
use super::{Batch, Callback, CallbackRequest, ParseContext, ParseError, Parsed};
use crate::config::{FieldError, SourceConfig};
use crate::domain::{EventKind, Reason, Status};

/// Configuration fields a Mailjet source uses.
pub const ACCEPTS: &[&str] = &["username", "password", "bearer_token", "header_name", "header_value"];

/// The credentials every Mailjet callback must carry: see [`common::Unsigned`].
pub fn credentials(cfg: &SourceConfig) -> Result<Unsigned, FieldError> {
    Unsigned::from_config(
        cfg,
        "username/password",
        "Mailjet does not sign its callbacks; put Basic credentials in the event callback URL \
         (https://user:password@host/callbacks/<name>) and set them here, or set bearer_token or \
         header_name/header_value",
    )
}

/// Parses one event or a group of events.
pub fn parse(req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
    let body: Value = serde_json::from_slice(req.body).map_err(|_| ParseError::Unreadable("JSON body"))?;
    match &body {
        Value::Array(events) => {
            Batch::parse_each(events, "empty event group", |event| parse_event(event, ctx, req.received_at))
        }
        Value::Object(_) => Ok(Parsed::events(vec![parse_event(&body, ctx, req.received_at)?])),
        _ => Err(ParseError::Shape("expected an event object or an array of them")),
    }
}

/// `MessageID` in decimal: an integer (or digits in a string), never read
/// through a float; 0 means none.
fn message_id(event: &Value) -> Option<String> {
    let id = match event.get("MessageID").or_else(|| event.get("mj_message_id"))? {
        Value::Number(n) => n.as_u64().map(|n| n.to_string())?,
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.clone(),
        _ => return None,
    };
    (!id.trim_start_matches('0').is_empty()).then_some(id)
}

/// hookrelay's id: `CustomID`, else the id field of the event payload.
fn hookrelay_id(event: &Value, ctx: &ParseContext) -> Option<String> {
    if let Some(id) = str_field(event, "CustomID").filter(|s| !s.trim().is_empty()) {
        return Some(id.to_owned());
    }
    let payload = match event.get("Payload")? {
        Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
        object @ Value::Object(_) => object.clone(),
        _ => return None,
    };
    str_field(&payload, &ctx.id_field).map(str::to_owned)
}

/// Courier's reason for a `blocked` event, from Mailjet's `error`:
/// `preblocked` (the address bounced or was blocked before) is BOUNCED,
/// template errors are PROVIDER_ERROR, everything else (spam reporter,
/// content or sender blocked, policy, typofix, ...) FILTERED.
fn blocked_reason(error: &str) -> Reason {
    match error.trim().to_ascii_lowercase().as_str() {
        "preblocked" => Reason::Bounced,
        "bad or empty template" | "error in template language" => Reason::ProviderError,
        _ => Reason::Filtered,
    }
}

/// `domain: invalid domain`, else the SMTP reply.
fn error_text(event: &Value) -> String {
    let related = str_field(event, "error_related_to").map(str::trim).filter(|s| !s.is_empty());
    let error = str_field(event, "error").map(str::trim).filter(|s| !s.is_empty());
    match (related, error) {
        (Some(r), Some(e)) => format!("{r}: {e}"),
        (None, Some(e)) => e.to_owned(),
        _ => str_field(event, "smtp_reply").or_else(|| str_field(event, "comment")).unwrap_or("").to_owned(),
    }
}

fn parse_event(event: &Value, ctx: &ParseContext, received_at: i64) -> Result<Callback, ParseError> {
    if !event.is_object() {
        return Err(ParseError::Shape("an event is not an object"));
    }
    let name = str_field(event, "event").ok_or_else(|| ParseError::Missing("event".into()))?;
    let pmid = message_id(event);
    let recipient = str_field(event, "email");
    let time = event.get("time");
    let ts = time.and_then(json_seconds_to_ms).unwrap_or(received_at);
    let url = str_field(event, "url");
    let key = key_from_parts(
        ctx,
        &[
            name.as_bytes(),
            pmid.as_deref().unwrap_or("").as_bytes(),
            recipient.unwrap_or("").as_bytes(),
            time.map(Value::to_string).unwrap_or_default().as_bytes(),
            url.unwrap_or("").as_bytes(),
        ],
    );
    let hard = event.get("hard_bounce").and_then(Value::as_bool) == Some(true);
    let (kind, why) = match name {
        "sent" => (EventKind::Status(Status::Delivered), None),
        "open" => (EventKind::Status(Status::Opened), None),
        "click" => (EventKind::Status(Status::Clicked), None),
        "bounce" if hard => (EventKind::Status(Status::Undeliverable), Some(Reason::Bounced)),
        "bounce" => (EventKind::Status(Status::Delayed), None),
        "blocked" => {
            (EventKind::Status(Status::Undeliverable), Some(blocked_reason(str_field(event, "error").unwrap_or(""))))
        }
        "spam" => (EventKind::Complained, None),
        "unsub" => (EventKind::Unsubscribed, None),
        _ => (EventKind::Unknown, None),
    };
    let mut e = common::event(ctx, kind, ts, key, name, Some(event));
    e.recipient = recipient.map(str::to_owned);
    e.reason = why;
    if matches!(name, "bounce" | "blocked") {
        common::set_error(&mut e, &error_text(event));
    }
    if let Some(url) = url.filter(|_| name == "click") {
        e.detail.insert("url".into(), Value::from(url));
    }
    let id = hookrelay_id(event, ctx);
    Ok(Callback { target: common::target(ctx, id.as_deref(), pmid.as_deref()), event: e })
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

    const URL: &str = "https://relay.example.com/callbacks/mailjet";

    fn creds() -> Unsigned {
        let mut cfg = config("mailjet");
        cfg.username = Some("hooks".into());
        cfg.password = Some(Secret::new("long-random-secret"));
        credentials(&cfg).expect("valid")
    }

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        headers(&format!("Content-Type: application/json\nAuthorization: Basic {v}"))
    }

    #[test]
    fn basic_auth_is_required_and_checked() {
        let body = fixture("mailjet", "sent.json");
        let c = creds();
        let check = |h: &HeaderMap| c.verify(&post(URL, h, &body, 0));
        assert_eq!(check(&basic("hooks", "long-random-secret")), Ok(()));
        assert_eq!(check(&basic("hooks", "wrong")), Err(VerifyError::BadCredentials));
        assert_eq!(check(&basic("other", "long-random-secret")), Err(VerifyError::BadCredentials));
        assert_eq!(check(&headers("Content-Type: application/json")), Err(VerifyError::Missing("authorization")));
        assert_eq!(
            check(&headers("Authorization: Bearer long-random-secret")),
            Err(VerifyError::Missing("basic authorization"))
        );
        assert!(!format!("{c:?}").contains("long-random-secret"), "no secrets in Debug");
    }

    #[test]
    fn bearer_and_header_secrets_work_too() {
        let mut cfg = config("mailjet");
        cfg.header_name = Some("X-Hook-Secret".into());
        cfg.header_value = Some(Secret::new("hdr-secret"));
        let c = credentials(&cfg).expect("valid");
        let body = fixture("mailjet", "sent.json");
        assert_eq!(c.verify(&post(URL, &headers("X-Hook-Secret: hdr-secret"), &body, 0)), Ok(()));
        assert_eq!(
            c.verify(&post(URL, &headers("X-Hook-Secret: hdr-secreT"), &body, 0)),
            Err(VerifyError::BadCredentials)
        );
        let mut cfg = config("mailjet");
        cfg.bearer_token = Some(Secret::new("tok"));
        let c = credentials(&cfg).expect("valid");
        assert_eq!(c.verify(&post(URL, &headers("Authorization: Bearer tok"), &body, 0)), Ok(()));
        assert_eq!(
            c.verify(&post(URL, &headers("Authorization: Bearer tok2"), &body, 0)),
            Err(VerifyError::BadCredentials)
        );
    }

    #[test]
    fn a_source_without_authentication_is_refused() {
        let err = credentials(&config("mailjet")).expect_err("refused");
        assert!(err.to_string().starts_with("username/password: "), "{err}");
        assert!(err.to_string().contains("Basic credentials in the event callback URL"), "{err}");
    }

    fn parse_all(body: &[u8]) -> Vec<Callback> {
        let h = headers("Content-Type: application/json");
        parse(&post(URL, &h, body, 42), &context("mailjet")).expect("parses").callbacks
    }

    fn parse_fixture(name: &str) -> Callback {
        let mut all = parse_all(&fixture("mailjet", name));
        assert_eq!(all.len(), 1, "{name}");
        all.remove(0)
    }

    #[test]
    fn every_sample_normalizes_as_the_mapping_table_says() {
        // (fixture, kind, reason, error, recipient)
        type Case = (&'static str, EventKind, Option<Reason>, Option<&'static str>, &'static str);
        let cases: &[Case] = &[
            ("sent.json", EventKind::Status(Status::Delivered), None, None, "recipient@example.com"),
            ("open.json", EventKind::Status(Status::Opened), None, None, "recipient@example.com"),
            (
                "bounce-hard.json",
                EventKind::Status(Status::Undeliverable),
                Some(Reason::Bounced),
                Some("domain: invalid domain"),
                "invalid@invalid",
            ),
            (
                "bounce-greylisted.json",
                EventKind::Status(Status::Delayed),
                None,
                Some("domain: greylisted"),
                "protected@example.com",
            ),
            (
                "blocked.json",
                EventKind::Status(Status::Undeliverable),
                Some(Reason::Filtered),
                Some("domain: typofix"),
                "bad@example.com",
            ),
            ("spam.json", EventKind::Complained, None, None, "spam@example.com"),
            ("unsub.json", EventKind::Unsubscribed, None, None, "recipient@example.com"),
        ];
        for (name, kind, reason, error, recipient) in cases {
            let cb = parse_fixture(name);
            assert_eq!(cb.event.kind, *kind, "{name}");
            assert_eq!(cb.event.reason, *reason, "{name}");
            assert_eq!(cb.event.error.as_deref(), *error, "{name}");
            assert_eq!(cb.event.recipient.as_deref(), Some(*recipient), "{name}");
            assert_eq!(cb.event.ts, 1_498_093_527_000, "{name}");
            // Exact, though above 2^53: a float would give ...568.
            assert_eq!(cb.target.provider.as_ref().map(|p| p.message_id.as_str()), Some("12345678901234567"), "{name}");
            assert_eq!(cb.target.id, None, "{name}: no CustomID, no id in the payload");
            assert_eq!(cb.event.provider.as_ref().map(|p| p.as_str()), Some("mailjet"));
            assert!(cb.event.dedupe_key.starts_with("mailjet:h:"), "{name}");
            assert!(cb.event.affects_status, "{name}");
            assert_eq!(
                cb.event.detail["data"],
                serde_json::from_slice::<Value>(&fixture("mailjet", name)).expect("json")[0]
            );
        }
        // Every sample has its own key.
        let mut keys: Vec<String> = cases.iter().map(|(name, ..)| parse_fixture(name).event.dedupe_key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), cases.len());
    }

    #[test]
    fn clicks_blocks_and_unknown_events() {
        let events = parse_all(
            br#"[
            {"event":"click","time":1498093527,"MessageID":19421777835146490,"email":"a@example.com","url":"https://example.com/x"},
            {"event":"click","time":1498093527,"MessageID":19421777835146490,"email":"a@example.com","url":"https://example.com/y"},
            {"event":"blocked","time":1,"MessageID":1,"email":"b@example.com","error_related_to":"recipient","error":"preblocked"},
            {"event":"blocked","time":1,"MessageID":1,"email":"b@example.com","error_related_to":"content","error":"error in template language"},
            {"event":"bounce","time":1,"MessageID":"2","email":"c@example.com","smtp_reply":"550 no such user","hard_bounce":true},
            {"event":"sent","time":1,"MessageID":1.5e16,"email":"d@example.com"},
            {"event":"parse","time":1,"MessageID":0}
        ]"#,
        );
        assert_eq!(events.len(), 7);
        assert_eq!(events[0].event.kind, EventKind::Status(Status::Clicked));
        assert_eq!(events[0].event.detail["url"], "https://example.com/x");
        assert_eq!(events[0].target.provider.as_ref().map(|p| p.message_id.as_str()), Some("19421777835146490"));
        assert_ne!(events[0].event.dedupe_key, events[1].event.dedupe_key, "two links clicked in one second");
        assert_eq!(events[2].event.reason, Some(Reason::Bounced));
        assert_eq!(events[2].event.error.as_deref(), Some("recipient: preblocked"));
        assert_eq!(events[3].event.reason, Some(Reason::ProviderError));
        assert_eq!(events[4].event.error.as_deref(), Some("550 no such user"));
        assert_eq!(events[4].target.provider.as_ref().map(|p| p.message_id.as_str()), Some("2"));
        assert_eq!(events[5].target.provider, None, "a float id is not trusted");
        assert_eq!(events[6].event.kind, EventKind::Unknown);
        assert_eq!(events[6].event.provider_event.as_deref(), Some("parse"));
        assert_eq!(events[6].target.provider, None, "0 is no id");
        assert_eq!(events[6].event.ts, 1_000);
    }

    #[test]
    fn the_hookrelay_id_comes_from_custom_id_or_the_payload() {
        let events = parse_all(
            br#"[
            {"event":"sent","time":1,"MessageID":7,"email":"a@example.com","CustomID":"order-1","Payload":"{\"hookrelay_id\":\"order-2\"}"},
            {"event":"sent","time":1,"MessageID":8,"email":"a@example.com","CustomID":"","Payload":"{\"hookrelay_id\":\"order-2\"}"},
            {"event":"sent","time":1,"MessageID":9,"email":"a@example.com","Payload":{"hookrelay_id":"order-3"}},
            {"event":"sent","time":1,"MessageID":9,"email":"a@example.com","Payload":"not json"}
        ]"#,
        );
        let ids: Vec<Option<String>> = events.into_iter().map(|c| c.target.id.map(String::from)).collect();
        assert_eq!(ids, [Some("order-1".into()), Some("order-2".into()), Some("order-3".into()), None]);
        // The sample's payload has no id field.
        assert_eq!(parse_fixture("sent.json").target.id, None);
    }

    #[test]
    fn a_single_object_is_one_event_and_keys_are_stable() {
        let array: Value = serde_json::from_slice(&fixture("mailjet", "sent.json")).expect("json");
        let object = serde_json::to_vec(&array[0]).expect("json");
        let single = parse_all(&object);
        assert_eq!(single.len(), 1);
        // A retry (received later, as a single object or in a group) has the same key.
        let h = HeaderMap::new();
        let later =
            parse(&post(URL, &h, &fixture("mailjet", "sent.json"), 99_999), &context("mailjet")).expect("parses");
        assert_eq!(single[0].event.dedupe_key, later.callbacks[0].event.dedupe_key);
        assert!(parse_all(b"[]").is_empty());
    }

    #[test]
    fn garbage_is_refused() {
        let h = HeaderMap::new();
        for bad in [
            &b""[..],
            b"{",
            b"42",
            b"\"sent\"",
            b"[1]",
            br#"[{"time":1}]"#,
            br#"{"event":5}"#,
            br#"[{"event":5},null]"#,
        ] {
            assert!(parse(&post(URL, &h, bad, 0), &context("mailjet")).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Unreadable elements of a group are left out, the rest recorded.
        let parsed = parse(&post(URL, &h, br#"[{"event":"sent"},null]"#, 0), &context("mailjet")).expect("parses");
        assert_eq!((parsed.callbacks.len(), parsed.skipped), (1, 1));
        assert!(matches!(parsed.skip_reason, Some(ParseError::Element { index: 1, .. })));
    }

    proptest! {
        #[test]
        fn never_panics(body in mutations(vec![
            fixture("mailjet", "sent.json"),
            fixture("mailjet", "bounce-hard.json"),
            fixture("mailjet", "open.json"),
        ]), auth in "[ -~]{0,40}") {
            let mut h = headers("Content-Type: application/json");
            if let Ok(v) = axum::http::HeaderValue::from_str(&auth) {
                h.insert(axum::http::header::AUTHORIZATION, v);
            }
            let _ = creds().verify(&post(URL, &h, &body, 0));
            let _ = parse(&post(URL, &h, &body, 0), &context("mailjet"));
        }
    }
}
