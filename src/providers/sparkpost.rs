//! SparkPost event webhooks: a JSON array of `{"msys": {"<class>": {...}}}`.
//!
//! Authenticity: SparkPost signs nothing, so a source must require the HTTP
//! credentials the webhook is configured to send (Basic auth, an OAuth2 /
//! bearer token, or a custom secret header); one without any is refused at
//! start-up.
//!
//! Correlation: hookrelay's id in `rcpt_meta` (SparkPost merges the
//! transmission's `metadata` and the recipient's `metadata` into it), else
//! the `transmission_id` the Transmissions API returned as `id`. Each event
//! is about one recipient (`rcpt_to`); `event_id` is its dedupe key.
//! `{"msys": {}}` elements are the pings SparkPost sends when a webhook is
//! created or tested.

use serde_json::Value;

use super::common::{self, Unsigned, json_seconds_to_ms, key_from_id, key_from_parts, rfc3339_to_ms, str_field};
use super::{Batch, Callback, CallbackRequest, ParseContext, ParseError, Parsed};
use crate::config::{FieldError, SourceConfig};
use crate::domain::{EventKind, Reason, Status};

/// Configuration fields a SparkPost source uses.
pub const ACCEPTS: &[&str] = &["username", "password", "bearer_token", "header_name", "header_value"];

/// The credentials every SparkPost callback must carry: see [`common::Unsigned`].
pub fn credentials(cfg: &SourceConfig) -> Result<Unsigned, FieldError> {
    Unsigned::from_config(
        cfg,
        "username/password",
        "SparkPost does not sign its webhooks, so a SparkPost source needs the credentials its \
         webhook sends: set the webhook's Basic auth (username/password here) or its OAuth/bearer token \
         (bearer_token), or a secret custom header (header_name/header_value)",
    )
}

/// Parses a batch into one event per element (pings and inbound relay
/// events yield none).
pub fn parse(req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
    let body: Value = serde_json::from_slice(req.body).map_err(|_| ParseError::Unreadable("JSON body"))?;
    let items = match &body {
        Value::Array(items) => items.as_slice(),
        // SparkPost always sends an array; a lone element is read as one.
        Value::Object(_) => std::slice::from_ref(&body),
        _ => return Err(ParseError::Shape("expected a JSON array of events")),
    };
    let mut batch = Batch::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(msys) = item.get("msys").and_then(Value::as_object) else {
            batch.skip(i, ParseError::Shape("no msys object"));
            continue;
        };
        for (class, data) in msys {
            // Inbound mail (relay webhooks) is not about a message hookrelay tracks.
            if class == "relay_event" {
                continue;
            }
            if !data.is_object() {
                batch.skip(i, ParseError::Shape("the event is not an object"));
                continue;
            }
            batch.add(i, parse_event(class, data, ctx, req.received_at));
        }
    }
    batch.finish("SparkPost ping or inbound relay events")
}

/// A field SparkPost may send as a string or a number, as text.
fn text(data: &Value, key: &str) -> Option<String> {
    match data.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Courier's view of a bounce, by SparkPost bounce class. Auto-replies,
/// subscribe requests and challenge-responses are not delivery failures.
fn bounce(class: Option<u32>) -> (EventKind, Option<Reason>) {
    let undeliverable = EventKind::Status(Status::Undeliverable);
    match class {
        Some(60 | 80 | 100) => (EventKind::Unknown, None),
        // Hard bounces (invalid recipient, no RCPT, generic, remote
        // unsubscribe) and soft ones SparkPost stopped retrying.
        Some(10 | 30 | 40 | 90 | 20..=24 | 70) => (undeliverable, Some(Reason::Bounced)),
        // Blocks, spam blocks and administrative failures.
        Some(25 | 50..=54) => (undeliverable, Some(Reason::Filtered)),
        _ => (undeliverable, Some(Reason::Failed)),
    }
}

fn classify(name: &str, data: &Value) -> (EventKind, Option<Reason>) {
    let undeliverable = EventKind::Status(Status::Undeliverable);
    match name {
        "injection" => (EventKind::Status(Status::Sent), None),
        "delivery" => (EventKind::Status(Status::Delivered), None),
        "delay" => (EventKind::Status(Status::Delayed), None),
        "bounce" => bounce(text(data, "bounce_class").and_then(|c| c.parse().ok())),
        "out_of_band" => (undeliverable, Some(Reason::Bounced)),
        "policy_rejection" | "generation_rejection" => (undeliverable, Some(Reason::Filtered)),
        "generation_failure" => (undeliverable, Some(Reason::ProviderError)),
        "spam_complaint" => (EventKind::Complained, None),
        "open" | "initial_open" | "amp_open" | "amp_initial_open" => (EventKind::Status(Status::Opened), None),
        "click" | "amp_click" => (EventKind::Status(Status::Clicked), None),
        "list_unsubscribe" | "link_unsubscribe" => (EventKind::Unsubscribed, None),
        _ => (EventKind::Unknown, None),
    }
}

/// `550 5.1.1 <...>: Recipient address rejected` from the reason and the
/// error code, without repeating the code.
fn error_text(data: &Value) -> String {
    let reason = text(data, "raw_reason").or_else(|| text(data, "reason")).unwrap_or_default();
    match text(data, "error_code") {
        Some(code) if !reason.starts_with(&code) => format!("{code} {reason}"),
        _ => reason,
    }
}

fn parse_event(class: &str, data: &Value, ctx: &ParseContext, received_at: i64) -> Result<Callback, ParseError> {
    let name = str_field(data, "type").ok_or_else(|| ParseError::Missing("type".into()))?;
    // Unix seconds as a string, though generation events carry RFC 3339.
    let ts = data
        .get("timestamp")
        .and_then(|t| json_seconds_to_ms(t).or_else(|| t.as_str().and_then(rfc3339_to_ms)))
        .unwrap_or(received_at);
    let recipient = str_field(data, "rcpt_to").or_else(|| str_field(data, "raw_rcpt_to"));
    let transmission = text(data, "transmission_id");
    let hookrelay_id =
        ["rcpt_meta", "metadata"].into_iter().find_map(|key| data.get(key).and_then(|m| str_field(m, &ctx.id_field)));
    let key = match text(data, "event_id") {
        Some(id) => key_from_id(ctx, &id),
        None => key_from_parts(
            ctx,
            &[
                class.as_bytes(),
                name.as_bytes(),
                transmission.as_deref().unwrap_or("").as_bytes(),
                text(data, "message_id").as_deref().unwrap_or("").as_bytes(),
                recipient.unwrap_or("").as_bytes(),
                text(data, "timestamp").as_deref().unwrap_or("").as_bytes(),
                str_field(data, "target_link_url").unwrap_or("").as_bytes(),
            ],
        ),
    };
    let (kind, reason) = classify(name, data);
    let mut event = common::event(ctx, kind, ts, key, name, Some(data));
    event.recipient = recipient.map(str::to_owned);
    event.reason = reason;
    common::set_error(&mut event, &error_text(data));
    if matches!(name, "click" | "amp_click")
        && let Some(url) = str_field(data, "target_link_url")
    {
        event.detail.insert("url".into(), Value::from(url));
    }
    Ok(Callback { target: common::target(ctx, hookrelay_id, transmission.as_deref()), event })
}

#[cfg(test)]
mod tests {
    use crate::providers::VerifyError;
    use axum::http::HeaderMap;
    use base64::Engine;
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::Action;
    use super::super::common::testing::{config, context, fixture, headers, mutations, post};
    use super::*;
    use crate::domain::MessageId;
    use crate::domain::Secret;

    const URL: &str = "https://hooks.example.com/callbacks/sparkpost";
    const RECEIVED: i64 = 1_234_567_890_123;

    fn basic_creds() -> Unsigned {
        let mut cfg = config("sparkpost");
        cfg.username = Some("hooks".into());
        cfg.password = Some(Secret::new("long-random-secret"));
        credentials(&cfg).expect("valid")
    }

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        headers(&format!("Content-Type: application/json\nAuthorization: Basic {token}"))
    }

    #[test]
    fn a_source_needs_credentials() {
        let err = credentials(&config("sparkpost")).expect_err("refused");
        assert!(err.to_string().starts_with("username/password: "), "{err}");
        assert!(err.to_string().contains("Basic auth") && err.to_string().contains("bearer"), "{err}");
        let mut cfg = config("sparkpost");
        cfg.bearer_token = Some(Secret::new("tok"));
        assert!(credentials(&cfg).is_ok());
        let mut cfg = config("sparkpost");
        cfg.header_name = Some("X-Hook-Secret".into());
        cfg.header_value = Some(Secret::new("v"));
        assert!(credentials(&cfg).is_ok());
        // Empty values count as unset.
        let mut cfg = config("sparkpost");
        cfg.bearer_token = Some(Secret::new(""));
        assert!(credentials(&cfg).is_err());
        let debug = format!("{:?}", basic_creds());
        assert!(!debug.contains("long-random-secret"), "{debug}");
    }

    #[test]
    fn verify_checks_the_webhook_credentials() {
        let body = fixture("sparkpost", "delivery.json");
        let c = basic_creds();
        let check = |h: &HeaderMap| c.verify(&post(URL, h, &body, 0));
        assert_eq!(check(&basic("hooks", "long-random-secret")), Ok(()));
        assert_eq!(check(&basic("hooks", "wrong")), Err(VerifyError::BadCredentials));
        assert_eq!(check(&basic("other", "long-random-secret")), Err(VerifyError::BadCredentials));
        assert_eq!(check(&headers("Content-Type: application/json")), Err(VerifyError::Missing("authorization")));
        assert_eq!(
            check(&headers("Authorization: Bearer long-random-secret")),
            Err(VerifyError::Missing("basic authorization"))
        );

        let mut cfg = config("sparkpost");
        cfg.bearer_token = Some(Secret::new("oauth-token"));
        let bearer = credentials(&cfg).expect("valid");
        assert_eq!(bearer.verify(&post(URL, &headers("Authorization: Bearer oauth-token"), &body, 0)), Ok(()));
        assert_eq!(
            bearer.verify(&post(URL, &headers("Authorization: Bearer other"), &body, 0)),
            Err(VerifyError::BadCredentials)
        );
    }

    /// What an event must normalize to: kind, reason and error text.
    type Outcome = (EventKind, Option<Reason>, Option<&'static str>);
    /// The transmission id and event id an event must carry.
    type Ids = (Option<&'static str>, Option<&'static str>);

    fn parse_body(body: &[u8]) -> Result<Parsed, ParseError> {
        let h = headers("Content-Type: application/json");
        parse(&post(URL, &h, body, RECEIVED), &context("sparkpost"))
    }

    fn parse_fixture(name: &str) -> Callback {
        let mut parsed = parse_body(&fixture("sparkpost", name)).expect("parses");
        assert_eq!(parsed.callbacks.len(), 1, "{name}");
        assert_eq!(parsed.action, None, "{name}");
        parsed.callbacks.remove(0)
    }

    #[test]
    fn every_sample_normalizes_as_the_mapping_table_says() {
        let undeliverable = EventKind::Status(Status::Undeliverable);
        #[rustfmt::skip]
        let cases: &[(&str, &str, Outcome, i64, &str, Ids)] = &[
            ("injection.json", "injection", (EventKind::Status(Status::Sent), None, None),
             1_454_442_600_000, "recipient@example.com", (Some("65832150921904138"), Some("92356927693813856"))),
            ("delivery.json", "delivery", (EventKind::Status(Status::Delivered), None, None),
             1_454_442_600_000, "recipient@example.com", (Some("65832150921904138"), Some("92356927693813856"))),
            ("delay.json", "delay",
             (EventKind::Status(Status::Delayed), None, Some("454 4.4.4 [internal] no MX or A for domain")),
             1_464_825_748_000, "recipient@nomx.example.com", (Some("84345317650824116"), Some("84345317653675522"))),
            ("bounce.json", "bounce",
             (undeliverable, Some(Reason::Bounced), Some("550 5.1.1 <bounce@example.com>: Recipient address rejected: User unknown")),
             1_464_824_548_000, "bounce@example.com", (Some("84345317650824116"), Some("84345317653491230"))),
            ("generation_failure.json", "generation_failure",
             (undeliverable, Some(Reason::ProviderError), Some("554 5.3.3 [internal] Error while rendering part html: ...")),
             1_539_300_285_000, "recipient@example.com", (Some("139013368081177607"), Some("139013368081587254"))),
            ("list_unsubscribe.json", "list_unsubscribe", (EventKind::Unsubscribed, None, None),
             1_464_894_280_000, "recipient@example.com", (Some("84345993965073285"), Some("66331590532986193"))),
            // The anymail tracking samples are trimmed: no ids, no time.
            ("open.json", "open", (EventKind::Status(Status::Opened), None, None),
             RECEIVED, "recipient@example.com", (None, None)),
            ("amp_click.json", "amp_click", (EventKind::Status(Status::Clicked), None, None),
             RECEIVED, "recipient@example.com", (None, None)),
        ];
        let ctx = context("sparkpost");
        for (name, provider_event, (kind, reason, error), ts, recipient, (transmission, event_id)) in cases {
            let cb = parse_fixture(name);
            assert_eq!(cb.event.kind, *kind, "{name}");
            assert_eq!(cb.event.reason, *reason, "{name}");
            assert_eq!(cb.event.error.as_deref(), *error, "{name}");
            assert_eq!(cb.event.ts, *ts, "{name}");
            assert_eq!(cb.event.recipient.as_deref(), Some(*recipient), "{name}");
            assert_eq!(cb.event.provider_event.as_deref(), Some(*provider_event), "{name}");
            assert_eq!(cb.event.provider.as_ref().map(|p| p.as_str()), Some("sparkpost"));
            assert!(cb.event.affects_status, "{name}");
            assert_eq!(cb.target.id, None, "{name}");
            assert_eq!(cb.target.provider.as_ref().map(|p| p.message_id.as_str()), *transmission, "{name}");
            match event_id {
                Some(id) => assert_eq!(cb.event.dedupe_key, key_from_id(&ctx, id), "{name}"),
                None => assert!(cb.event.dedupe_key.starts_with("sparkpost:h:"), "{name}"),
            }
            assert_eq!(str_field(&cb.event.detail["data"], "type"), Some(*provider_event), "{name}: raw event kept");
        }
        let click = parse_fixture("amp_click.json");
        assert_eq!(click.event.detail.get("url"), Some(&Value::from("http://example.com")));
        // Without an event id, the same event always gets the same key.
        let again = parse_fixture("amp_click.json");
        assert_eq!(click.event.dedupe_key, again.event.dedupe_key);
        assert_ne!(click.event.dedupe_key, parse_fixture("open.json").event.dedupe_key);
    }

    /// A one-event batch from `fields` merged over a bounce.
    fn one(class: &str, fields: Value) -> Callback {
        let mut data = json!({
            "type": "bounce", "event_id": "1", "transmission_id": "42", "rcpt_to": "r@example.com",
            "timestamp": "1700000000",
        });
        if let (Value::Object(d), Value::Object(f)) = (&mut data, fields) {
            d.extend(f);
        }
        let body = serde_json::to_vec(&json!([{ "msys": { class: data } }])).expect("json");
        parse_body(&body).expect("parses").callbacks.remove(0)
    }

    #[test]
    fn bounce_classes() {
        let undeliverable = EventKind::Status(Status::Undeliverable);
        let bounced = (undeliverable, Some(Reason::Bounced));
        let filtered = (undeliverable, Some(Reason::Filtered));
        let failed = (undeliverable, Some(Reason::Failed));
        let unknown = (EventKind::Unknown, None);
        #[rustfmt::skip]
        let cases = [
            ("10", bounced), ("30", bounced), ("40", bounced), ("90", bounced),
            ("20", bounced), ("21", bounced), ("22", bounced), ("23", bounced), ("24", bounced), ("70", bounced),
            ("25", filtered), ("50", filtered), ("51", filtered), ("52", filtered), ("53", filtered), ("54", filtered),
            ("60", unknown), ("80", unknown), ("100", unknown),
            ("1", failed), ("99", failed), ("", failed), ("x", failed),
        ];
        for (class, expected) in cases {
            let cb = one("message_event", json!({ "bounce_class": class }));
            assert_eq!((cb.event.kind, cb.event.reason), expected, "class {class}");
        }
        // Numbers are read too.
        let cb = one("message_event", json!({ "bounce_class": 51 }));
        assert_eq!(cb.event.reason, Some(Reason::Filtered));
        // Error text: the code is added when the reason does not start with it.
        let cb = one("message_event", json!({ "bounce_class": "10", "error_code": "550", "reason": "user unknown" }));
        assert_eq!(cb.event.error.as_deref(), Some("550 user unknown"));
        let cb = one("message_event", json!({ "bounce_class": "10", "error_code": "550" }));
        assert_eq!(cb.event.error.as_deref(), Some("550"));
    }

    #[test]
    fn the_other_event_types() {
        let undeliverable = EventKind::Status(Status::Undeliverable);
        #[rustfmt::skip]
        let cases = [
            ("message_event", "out_of_band", undeliverable, Some(Reason::Bounced)),
            ("message_event", "policy_rejection", undeliverable, Some(Reason::Filtered)),
            ("gen_event", "generation_rejection", undeliverable, Some(Reason::Filtered)),
            ("gen_event", "generation_failure", undeliverable, Some(Reason::ProviderError)),
            ("message_event", "spam_complaint", EventKind::Complained, None),
            ("track_event", "initial_open", EventKind::Status(Status::Opened), None),
            ("track_event", "amp_open", EventKind::Status(Status::Opened), None),
            ("track_event", "amp_initial_open", EventKind::Status(Status::Opened), None),
            ("track_event", "click", EventKind::Status(Status::Clicked), None),
            ("unsubscribe_event", "link_unsubscribe", EventKind::Unsubscribed, None),
            ("message_event", "sms_status", EventKind::Unknown, None),
            ("ingest_event", "ingest_success", EventKind::Unknown, None),
            ("brand_new_event", "whatever", EventKind::Unknown, None),
        ];
        for (class, name, kind, reason) in cases {
            let cb = one(class, json!({ "type": name }));
            assert_eq!((cb.event.kind, cb.event.reason), (kind, reason), "{class}/{name}");
            assert_eq!(cb.event.provider_event.as_deref(), Some(name));
        }
        let click = one("track_event", json!({ "type": "click", "target_link_url": "https://example.com/a" }));
        assert_eq!(click.event.detail.get("url"), Some(&Value::from("https://example.com/a")));
        let open = one("track_event", json!({ "type": "open", "target_link_url": "https://example.com/a" }));
        assert_eq!(open.event.detail.get("url"), None);
    }

    #[test]
    fn hookrelay_id_comes_from_rcpt_meta_then_metadata() {
        let cb = one(
            "message_event",
            json!({ "rcpt_meta": { "hookrelay_id": "order-1" }, "metadata": { "hookrelay_id": "order-2" } }),
        );
        assert_eq!(cb.target.id, Some(MessageId::parse("order-1").expect("id")));
        assert_eq!(cb.target.provider.as_ref().map(|p| p.message_id.as_str()), Some("42"));
        let cb = one("message_event", json!({ "rcpt_meta": {}, "metadata": { "hookrelay_id": "order-2" } }));
        assert_eq!(cb.target.id, Some(MessageId::parse("order-2").expect("id")));
        let cb = one("message_event", json!({ "rcpt_meta": { "hookrelay_id": 7 } }));
        assert_eq!(cb.target.id, None, "not a string");
        let cb = one("message_event", json!({ "transmission_id": 65_832_150_921_904_138_u64 }));
        assert_eq!(cb.target.provider.map(|p| p.message_id), Some("65832150921904138".to_owned()));
    }

    #[test]
    fn a_batch_yields_one_event_per_element() {
        let parsed = parse_body(&fixture("sparkpost", "generated-batch.json")).expect("parses");
        let kinds: Vec<_> = parsed.callbacks.iter().map(|c| c.event.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Status(Status::Sent),
                EventKind::Status(Status::Delivered),
                EventKind::Status(Status::Opened),
                EventKind::Status(Status::Clicked),
            ],
            "the ping and the relay event yield nothing"
        );
        for cb in &parsed.callbacks {
            assert_eq!(cb.target.id, Some(MessageId::parse("order-sp-1").expect("id")));
            assert_eq!(cb.event.recipient.as_deref(), Some("alice@example.com"), "rcpt_to, not raw_rcpt_to");
        }
        let ts: Vec<_> = parsed.callbacks.iter().map(|c| c.event.ts).collect();
        assert_eq!(ts, [1_700_000_000_000, 1_700_000_005_000, 1_700_000_060_000, 1_700_000_090_000]);
        let mut keys: Vec<_> = parsed.callbacks.iter().map(|c| c.event.dedupe_key.clone()).collect();
        keys.dedup();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn pings_are_ignored() {
        let ping = parse_body(&fixture("sparkpost", "ping.json")).expect("parses");
        assert!(ping.callbacks.is_empty());
        assert!(matches!(ping.action, Some(Action::Ignore { .. })));
        assert!(matches!(parse_body(b"[]").expect("parses").action, Some(Action::Ignore { .. })));
        let relay = br#"[{"msys":{"relay_event":{"type":"relay_injection","event_id":"1"}}}]"#;
        assert!(parse_body(relay).expect("parses").callbacks.is_empty());
        // A lone element (not an array) is read as a batch of one.
        let lone = parse_body(br#"{"msys":{"message_event":{"type":"delivery","event_id":"9"}}}"#).expect("parses");
        assert_eq!(lone.callbacks.len(), 1);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b"{"[..],
            b"",
            b"42",
            b"\"msys\"",
            b"[1]",
            br#"[{"nope":{}}]"#,
            br#"[{"msys":[]}]"#,
            br#"[{"msys":{"message_event":"delivery"}}]"#,
            br#"[{"msys":{"message_event":{"event_id":"1"}}}]"#,
            br#"[{"msys":{}},{"msys":{"message_event":{"type":1}}}]"#,
        ] {
            assert!(parse_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // Unreadable elements of a batch are left out, the rest recorded.
        let body = br#"[{"nope":{}},{"msys":{"message_event":{"type":"delivery","transmission_id":"7"}}},{"msys":{"track_event":3}}]"#;
        let parsed = parse_body(body).expect("parses");
        assert_eq!((parsed.callbacks.len(), parsed.skipped), (1, 2));
        assert_eq!(parsed.skip_reason.map(|e| e.to_string()).as_deref(), Some("element 0: no msys object"));
    }

    proptest! {
        #[test]
        fn never_panics(body in mutations(vec![
            fixture("sparkpost", "generated-batch.json"),
            fixture("sparkpost", "bounce.json"),
            fixture("sparkpost", "generation_failure.json"),
            fixture("sparkpost", "ping.json"),
        ])) {
            let h = basic("hooks", "long-random-secret");
            let req = post(URL, &h, &body, 0);
            prop_assert_eq!(basic_creds().verify(&req), Ok(()));
            let _ = parse(&req, &context("sparkpost"));
        }
    }
}
