//! Resend webhooks, delivered through Svix (Standard Webhooks).
//!
//! Authenticity: `svix-signature` holds space-separated `v1,<base64>`
//! entries, each an HMAC-SHA256 of `{svix-id}.{svix-timestamp}.{raw body}`
//! under the base64-decoded `whsec_` secret; any `v1` entry may match (other
//! versions are ignored). The same headers may arrive as `webhook-id`,
//! `webhook-timestamp` and `webhook-signature`. Svix signs each attempt
//! afresh, so the timestamp must be within five minutes of now, both ways.
//! Several secrets may be configured during a rotation.
//!
//! Body: `{"type", "created_at", "data"}`, one event per request.
//! Correlation: hookrelay's id is a send-time tag (`data.tags`), else the
//! `email_id` the send API returned. Dedupe: the message id Svix keeps
//! across retries (`svix-id`).

use base64::Engine;
use serde_json::Value;

use super::common::{self, check_window, key_from_id, key_from_parts, str_field};
use super::{Callback, CallbackRequest, ParseContext, ParseError, Parsed, VerifyError};
use crate::config::{FieldError, SourceConfig};
use crate::domain::signing::{self, VerifyKey, WebhookSecret};
use crate::domain::{EventKind, Reason, Status};

/// Configuration fields a Resend source uses.
pub const ACCEPTS: &[&str] = &["secrets", "tolerance_seconds"];

/// The Svix libraries' window: five minutes.
pub const DEFAULT_TOLERANCE_SECONDS: u64 = 5 * 60;

/// Each header under its Svix name and its Standard Webhooks alias.
const ID: (&str, &str) = ("svix-id", "webhook-id");
const TIMESTAMP: (&str, &str) = ("svix-timestamp", "webhook-timestamp");
const SIGNATURE: (&str, &str) = ("svix-signature", "webhook-signature");

/// A Resend source's signing keys (the decoded `whsec_` secrets).
pub struct Credentials {
    keys: Vec<VerifyKey>,
    tolerance: u64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("resend::Credentials")
            .field("keys", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Credentials {
    pub fn from_config(cfg: &SourceConfig) -> Result<Self, FieldError> {
        if cfg.secrets.is_empty() {
            return Err(FieldError::new(
                "secrets",
                "a Resend source needs the webhook's signing secret (whsec_...), shown on the webhook's page in the \
                 Resend dashboard",
            ));
        }
        let keys = cfg
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                decode_secret(s.expose()).map_err(|why| FieldError::new("secrets", format!("secret {}: {why}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Credentials { keys, tolerance: cfg.tolerance_seconds.unwrap_or(DEFAULT_TOLERANCE_SECONDS) })
    }
}

fn decode_secret(secret: &str) -> Result<VerifyKey, &'static str> {
    let encoded = secret
        .trim()
        .strip_prefix("whsec_")
        .ok_or("must start with whsec_ (the webhook signing secret, not an API key)")?;
    let key = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| "not base64 after whsec_")?;
    WebhookSecret::from_key(secret, key).map(VerifyKey::Hmac).ok_or("empty after whsec_")
}

/// A header under its Svix name, else its Standard Webhooks name.
fn svix_header<'a>(
    req: &CallbackRequest<'a>,
    (svix, standard): (&'static str, &'static str),
) -> Result<&'a str, VerifyError> {
    if req.headers.contains_key(svix) {
        common::header(req.headers, svix)
    } else if req.headers.contains_key(standard) {
        common::header(req.headers, standard)
    } else {
        Err(VerifyError::Missing(svix))
    }
}

/// Checks the signature (any configured secret) and the timestamp window.
pub fn verify(req: &CallbackRequest<'_>, creds: &Credentials, now: i64) -> Result<(), VerifyError> {
    let id = svix_header(req, ID)?;
    let timestamp = svix_header(req, TIMESTAMP)?;
    let signatures = svix_header(req, SIGNATURE)?;
    let ts: i64 = timestamp.trim().parse().map_err(|_| VerifyError::Malformed(TIMESTAMP.0))?;
    // The signed text is the headers exactly as sent.
    if !signing::standard_matches(&creds.keys, id, timestamp, signatures, req.body) {
        return Err(VerifyError::BadSignature);
    }
    check_window(ts, now, creds.tolerance)
}

/// A send-time tag: `data.tags` is a map, or the list form `[{name, value}]`.
fn tag<'a>(tags: &'a Value, name: &str) -> Option<&'a str> {
    match tags {
        Value::Object(map) => map.get(name)?.as_str(),
        Value::Array(list) => {
            list.iter().find(|t| str_field(t, "name") == Some(name)).and_then(|t| str_field(t, "value"))
        }
        _ => None,
    }
}

/// The address of `Name <address>`, or the text as is.
fn address(to: &str) -> &str {
    let to = to.trim();
    match (to.rfind('<'), to.ends_with('>')) {
        (Some(start), true) => to[start + 1..to.len() - 1].trim(),
        _ => to,
    }
}

/// The recipient when the email had exactly one: Resend does not say which
/// of several recipients an event is about.
fn recipient(data: &Value) -> Option<&str> {
    let to = match data.get("to")? {
        Value::Array(list) if list.len() == 1 => list[0].as_str()?,
        Value::String(one) if !one.contains(',') => one,
        _ => return None,
    };
    Some(address(to)).filter(|a| !a.is_empty())
}

/// Courier's reason for `email.suppressed`, from `suppressed.type`.
fn suppressed_reason(kind: &str) -> Reason {
    match kind.trim().to_ascii_lowercase().as_str() {
        "bounce" => Reason::Bounced,
        "complaint" => Reason::Filtered,
        "unsubscribe" => Reason::Unsubscribed,
        _ => Reason::Failed,
    }
}

/// Parses one webhook into its event.
pub fn parse(req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
    let body: Value = serde_json::from_slice(req.body).map_err(|_| ParseError::Shape("the body is not JSON"))?;
    if !body.is_object() {
        return Err(ParseError::Shape("the body is not a JSON object"));
    }
    let name = str_field(&body, "type").ok_or_else(|| ParseError::Missing("type".into()))?;
    let data = body.get("data").filter(|d| d.is_object()).ok_or_else(|| ParseError::Missing("data".into()))?;

    // `created_at` at the top is when the event happened; `data.created_at`
    // is when the email was created.
    let ts = str_field(&body, "created_at")
        .and_then(common::rfc3339_to_ms)
        .or_else(|| str_field(data, "created_at").and_then(common::rfc3339_to_ms))
        .unwrap_or(req.received_at);
    let pmid = str_field(data, "email_id");
    let hookrelay_id = data.get("tags").and_then(|t| tag(t, &ctx.id_field));
    // Svix keeps the message id across retries; without it (verification
    // always requires it) the body, which retries repeat, identifies the event.
    let key = match svix_header(req, ID).ok().map(str::trim).filter(|id| !id.is_empty()) {
        Some(id) => key_from_id(ctx, id),
        None => key_from_parts(ctx, &[req.body]),
    };
    let nested = |object: &str, field: &str| data.get(object).and_then(|o| str_field(o, field)).unwrap_or("");
    let undeliverable = EventKind::Status(Status::Undeliverable);
    let (kind, reason, error) = match name {
        "email.sent" => (EventKind::Status(Status::Sent), None, ""),
        "email.delivered" => (EventKind::Status(Status::Delivered), None, ""),
        "email.delivery_delayed" => (EventKind::Status(Status::Delayed), None, ""),
        "email.bounced" => (undeliverable, Some(Reason::Bounced), nested("bounce", "message")),
        "email.failed" => (undeliverable, Some(Reason::ProviderError), nested("failed", "reason")),
        "email.suppressed" => {
            (undeliverable, Some(suppressed_reason(nested("suppressed", "type"))), nested("suppressed", "message"))
        }
        "email.complained" => (EventKind::Complained, None, ""),
        "email.opened" => (EventKind::Status(Status::Opened), None, ""),
        "email.clicked" => (EventKind::Status(Status::Clicked), None, ""),
        _ => (EventKind::Unknown, None, ""),
    };
    let mut event = common::event(ctx, kind, ts, key, name, Some(&body));
    event.recipient = recipient(data).map(str::to_owned);
    event.reason = reason;
    common::set_error(&mut event, error);
    if name == "email.clicked" && !nested("click", "link").is_empty() {
        event.detail.insert("url".into(), Value::from(nested("click", "link")));
    }
    Ok(Parsed::events(vec![Callback { target: common::target(ctx, hookrelay_id, pmid), event }]))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::common::testing::{config, context, fixture, headers, mutations, post};
    use super::*;
    use crate::domain::Secret;

    const URL: &str = "https://hooks.example.com/callbacks/resend";
    /// The svix libraries' test secret (also used by resend-node).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OTHER_SECRET: &str = "whsec_c2VjcmV0LW9mLWFub3RoZXItZW5kcG9pbnQ=";

    fn creds(secrets: &[&str]) -> Credentials {
        let mut cfg = config("resend");
        cfg.secrets = secrets.iter().map(|s| Secret::new(*s)).collect();
        Credentials::from_config(&cfg).expect("valid")
    }

    fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
        let Ok(VerifyKey::Hmac(secret)) = decode_secret(secret) else { panic!("a whsec_ secret") };
        signing::standard_signature(&secret, id, timestamp.parse().expect("a timestamp"), body)
    }

    fn signed_headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        headers(&format!(
            "Content-Type: application/json\nsvix-id: {id}\nsvix-timestamp: {timestamp}\nsvix-signature: {signature}"
        ))
    }

    fn fixture_headers(name: &str) -> HeaderMap {
        headers(&String::from_utf8(fixture("resend", name)).expect("utf-8"))
    }

    #[test]
    fn the_published_vector() {
        let payload = fixture("resend", "vector-svix-python.payload");
        assert_eq!(payload, br#"{"test": 2432232314}"#);
        let keys = vec![decode_secret(SECRET).expect("secret")];
        let (id, ts) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330");
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let bad = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert!(signing::standard_matches(&keys, id, ts, good, &payload));
        assert!(!signing::standard_matches(&keys, id, ts, bad, &payload));
        assert!(!signing::standard_matches(&keys, id, "1614265331", good, &payload));
        assert!(!signing::standard_matches(&keys, "msg_other", ts, good, &payload));
        // Several entries: any v1 may match; other versions are ignored.
        assert!(signing::standard_matches(&keys, id, ts, &format!("{bad} v2,{} {good}", &good[3..]), &payload));
        assert!(!signing::standard_matches(&keys, id, ts, &format!("{bad} v2,{}", &good[3..]), &payload));
        assert!(!signing::standard_matches(&keys, id, ts, &format!("v1a,{}", &good[3..]), &payload));
        assert!(!signing::standard_matches(&keys, id, ts, &good[3..], &payload));
        assert!(!signing::standard_matches(&keys, id, ts, "", &payload));

        let h = fixture_headers("vector-svix-python.headers");
        let now = 1_614_265_330_000;
        assert_eq!(verify(&post(URL, &h, &payload, now), &creds(&[SECRET]), now), Ok(()));
        assert_eq!(verify(&post(URL, &h, &payload, now), &creds(&[OTHER_SECRET]), now), Err(VerifyError::BadSignature));
    }

    #[test]
    fn the_generated_vector_verifies_and_parses() {
        let body = fixture("resend", "generated-signed-email.delivered.payload");
        let h = fixture_headers("generated-signed-email.delivered.headers");
        let now = 1_718_367_224_000;
        let req = post(URL, &h, &body, now + 1);
        assert_eq!(verify(&req, &creds(&[SECRET]), now), Ok(()));
        // Rotation: any configured secret may match.
        assert_eq!(verify(&req, &creds(&[OTHER_SECRET, SECRET]), now), Ok(()));
        assert_eq!(verify(&req, &creds(&[OTHER_SECRET]), now), Err(VerifyError::BadSignature));

        let mut ctx = context("resend");
        ctx.id_field = "relay_message_id".into();
        let cb = parse(&req, &ctx).expect("parses").callbacks.remove(0);
        assert_eq!(cb.event.kind, EventKind::Status(Status::Delivered));
        assert_eq!(cb.target.id.map(String::from), Some("msg_01HZX3RELAYEXAMPLE".to_owned()));
        assert_eq!(cb.target.provider.map(|p| p.message_id), Some("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".to_owned()));
        assert_eq!(cb.event.dedupe_key, "resend:msg_2W2D3qXLS5fOaPja1GDg7rF2CwB");
        assert_eq!(cb.event.ts, 1_718_367_224_823);
        assert_eq!(cb.event.recipient.as_deref(), Some("to@example.org"));
    }

    #[test]
    fn standard_webhooks_header_names_are_accepted() {
        let body = fixture("resend", "generated-signed-email.delivered.payload");
        let h = headers(
            "webhook-id: msg_2W2D3qXLS5fOaPja1GDg7rF2CwB\nwebhook-timestamp: 1718367224\n\
             webhook-signature: v1,pxig7AtMbPtsCDeMQgL4sSPhLIsMa4rGp1IgkRQoLvY=",
        );
        let now = 1_718_367_224_000;
        let req = post(URL, &h, &body, now);
        assert_eq!(verify(&req, &creds(&[SECRET]), now), Ok(()));
        let cb = parse(&req, &context("resend")).expect("parses").callbacks.remove(0);
        assert_eq!(cb.event.dedupe_key, "resend:msg_2W2D3qXLS5fOaPja1GDg7rF2CwB");
    }

    #[test]
    fn tampering_stale_future_and_missing() {
        let body = fixture("resend", "email.delivered.json");
        let c = creds(&[SECRET]);
        let now = 1_700_000_000_000;
        let at = |ts: &str| signed_headers("msg_1", ts, &sign(SECRET, "msg_1", ts, &body));
        let h = at("1700000000");
        assert_eq!(verify(&post(URL, &h, &body, now), &c, now), Ok(()));

        let mut tampered = body.clone();
        let i = tampered.iter().position(|b| *b == b'7').expect("a digit");
        tampered[i] = b'8';
        assert_eq!(verify(&post(URL, &h, &tampered, now), &c, now), Err(VerifyError::BadSignature));
        let mut bad_sig = h.clone();
        let sig = h["svix-signature"].to_str().expect("text").replace('A', "B").replace('a', "b");
        bad_sig.insert("svix-signature", sig.parse().expect("value"));
        assert_eq!(verify(&post(URL, &bad_sig, &body, now), &c, now), Err(VerifyError::BadSignature));
        let mut other_id = h.clone();
        other_id.insert("svix-id", "msg_2".parse().expect("value"));
        assert_eq!(verify(&post(URL, &other_id, &body, now), &c, now), Err(VerifyError::BadSignature));
        assert_eq!(verify(&post(URL, &h, &body, now), &creds(&[OTHER_SECRET]), now), Err(VerifyError::BadSignature));

        // Five minutes both ways.
        assert_eq!(verify(&post(URL, &at("1699999700"), &body, now), &c, now), Ok(()));
        assert_eq!(verify(&post(URL, &at("1699999699"), &body, now), &c, now), Err(VerifyError::Stale));
        assert_eq!(verify(&post(URL, &at("1700000300"), &body, now), &c, now), Ok(()));
        assert_eq!(verify(&post(URL, &at("1700000301"), &body, now), &c, now), Err(VerifyError::Stale));
        // A configured tolerance replaces the default.
        let mut cfg = config("resend");
        cfg.secrets = vec![Secret::new(SECRET)];
        cfg.tolerance_seconds = Some(3600);
        let long = Credentials::from_config(&cfg).expect("valid");
        assert_eq!(verify(&post(URL, &at("1699996400"), &body, now), &long, now), Ok(()));

        for name in ["svix-id", "svix-timestamp", "svix-signature"] {
            let mut missing = h.clone();
            missing.remove(name);
            assert_eq!(verify(&post(URL, &missing, &body, now), &c, now), Err(VerifyError::Missing(name)), "{name}");
        }
        let mut bad_ts = h.clone();
        bad_ts.insert("svix-timestamp", "yesterday".parse().expect("value"));
        assert_eq!(verify(&post(URL, &bad_ts, &body, now), &c, now), Err(VerifyError::Malformed("svix-timestamp")));
    }

    #[test]
    fn secrets_are_checked_at_start_up() {
        let err = |secrets: &[&str]| {
            let mut cfg = config("resend");
            cfg.secrets = secrets.iter().map(|s| Secret::new(*s)).collect();
            Credentials::from_config(&cfg).expect_err("refused").to_string()
        };
        assert!(err(&[]).starts_with("secrets: "));
        assert!(err(&["re_123456789"]).starts_with("secrets: secret 1: must start with whsec_"));
        assert!(err(&[SECRET, "whsec_not base64!"]).starts_with("secrets: secret 2: not base64"));
        assert!(err(&["whsec_"]).starts_with("secrets: secret 1: empty"));
        let shown = format!("{:?}", creds(&[SECRET]));
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
    }

    fn parse_fixture_with(name: &str, ctx: &ParseContext) -> Callback {
        let body = fixture("resend", name);
        let h = headers(&format!("svix-id: msg_{}", name.replace('.', "_")));
        let mut parsed = parse(&post(URL, &h, &body, 42), ctx).expect("parses");
        assert_eq!(parsed.callbacks.len(), 1, "{name}");
        parsed.callbacks.remove(0)
    }

    #[test]
    fn every_sample_normalizes_as_the_mapping_table_says() {
        struct Case {
            file: &'static str,
            kind: EventKind,
            reason: Option<Reason>,
            error: Option<&'static str>,
            recipient: Option<&'static str>,
            ts: &'static str,
            id: Option<&'static str>,
        }
        let undeliverable = EventKind::Status(Status::Undeliverable);
        let cases = [
            Case {
                file: "email.sent.json",
                kind: EventKind::Status(Status::Sent),
                reason: None,
                error: None,
                // Two recipients: the event does not say which.
                recipient: None,
                ts: "2023-09-28T17:19:43.736Z",
                id: None,
            },
            Case {
                file: "email.delivered.json",
                kind: EventKind::Status(Status::Delivered),
                reason: None,
                error: None,
                recipient: Some("to@example.org"),
                ts: "2023-09-28T17:19:44.823Z",
                id: None,
            },
            Case {
                file: "email.delivery_delayed.json",
                kind: EventKind::Status(Status::Delayed),
                reason: None,
                error: None,
                recipient: Some("delivered@resend.dev"),
                ts: "2023-02-22T23:41:12.126Z",
                id: None,
            },
            Case {
                file: "email.bounced.json",
                kind: undeliverable,
                reason: Some(Reason::Bounced),
                error: Some("The recipient's email provider sent a hard bounce message"),
                recipient: Some("bounced@resend.dev"),
                ts: "2023-10-02T18:11:26.101Z",
                id: None,
            },
            Case {
                file: "email.bounced-current-shape.json",
                kind: undeliverable,
                reason: Some(Reason::Bounced),
                error: Some("The recipient's email address is on the suppression list"),
                recipient: Some("to@example.org"),
                ts: "2024-06-14T12:13:45.101Z",
                id: Some("msg_01HZX3RELAYEXAMPLE"),
            },
            Case {
                file: "email.bounced-suppressed-legacy.json",
                kind: undeliverable,
                reason: Some(Reason::Bounced),
                error: Some("Resend has suppressed sending to this address"),
                recipient: Some("blocked@example.org"),
                ts: "2023-10-01T20:01:01.598Z",
                id: None,
            },
            Case {
                file: "email.failed.json",
                kind: undeliverable,
                reason: Some(Reason::ProviderError),
                error: Some("reached_daily_quota"),
                recipient: Some("to@example.org"),
                ts: "2024-06-14T12:13:44.000Z",
                id: Some("msg_01HZX3RELAYEXAMPLE"),
            },
            Case {
                file: "email.suppressed.json",
                kind: undeliverable,
                reason: Some(Reason::Failed),
                error: Some("Resend has suppressed sending to this address because it is on the account-level"),
                recipient: Some("to@example.org"),
                ts: "2024-06-14T12:13:44.000Z",
                id: Some("msg_01HZX3RELAYEXAMPLE"),
            },
            Case {
                file: "email.complained.json",
                kind: EventKind::Complained,
                reason: None,
                error: None,
                recipient: Some("complained@resend.dev"),
                ts: "2023-10-02T18:10:03.690Z",
                id: None,
            },
            Case {
                file: "email.opened.json",
                kind: EventKind::Status(Status::Opened),
                reason: None,
                error: None,
                recipient: Some("to@example.org"),
                ts: "2023-09-28T17:20:38.990Z",
                id: None,
            },
            Case {
                file: "email.clicked.json",
                kind: EventKind::Status(Status::Clicked),
                reason: None,
                error: None,
                recipient: Some("to@example.org"),
                ts: "2023-09-28T17:21:35.257Z",
                id: None,
            },
        ];
        let mut ctx = context("resend");
        ctx.id_field = "relay_message_id".into();
        for case in cases {
            let name = case.file;
            let cb = parse_fixture_with(name, &ctx);
            let raw: Value = serde_json::from_slice(&fixture("resend", name)).expect("json");
            assert_eq!(cb.event.kind, case.kind, "{name}");
            assert_eq!(cb.event.reason, case.reason, "{name}");
            match case.error {
                Some(prefix) => assert!(
                    cb.event.error.as_deref().is_some_and(|e| e.starts_with(prefix)),
                    "{name}: {:?}",
                    cb.event.error
                ),
                None => assert_eq!(cb.event.error, None, "{name}"),
            }
            assert_eq!(cb.event.recipient.as_deref(), case.recipient, "{name}");
            assert_eq!(Some(cb.event.ts), common::rfc3339_to_ms(case.ts), "{name}");
            assert_eq!(cb.target.id.as_ref().map(|i| i.as_str()), case.id, "{name}");
            assert_eq!(
                cb.target.provider.as_ref().map(|p| p.message_id.as_str()),
                raw["data"]["email_id"].as_str(),
                "{name}"
            );
            assert_eq!(cb.event.provider_event.as_deref(), raw["type"].as_str(), "{name}");
            assert_eq!(cb.event.dedupe_key, format!("resend:msg_{}", name.replace('.', "_")), "{name}");
            assert_eq!(cb.event.detail.get("data"), Some(&raw), "{name}: the raw event is kept");
            assert!(cb.event.affects_status, "{name}");
        }
        let clicked = parse_fixture_with("email.clicked.json", &ctx);
        assert_eq!(clicked.event.detail.get("url"), Some(&Value::from("https://example.com/test")));
        // The sent sample's tags do not hold the id field.
        assert_eq!(parse_fixture_with("email.sent.json", &context("resend")).target.id, None);
        let mut tag_ctx = context("resend");
        tag_ctx.id_field = "tag1".into();
        assert_eq!(
            parse_fixture_with("email.sent.json", &tag_ctx).target.id.map(String::from),
            Some("Tag_1_value".to_owned())
        );
    }

    fn parse_json(v: Value) -> Callback {
        let body = serde_json::to_vec(&v).expect("json");
        let h = headers("svix-id: msg_x");
        parse(&post(URL, &h, &body, 7_000), &context("resend")).expect("parses").callbacks.remove(0)
    }

    #[test]
    fn suppressions_tags_recipients_and_times() {
        for (kind, reason) in [
            ("bounce", Reason::Bounced),
            ("Complaint", Reason::Filtered),
            ("unsubscribe", Reason::Unsubscribed),
            ("OnAccountSuppressionList", Reason::Failed),
            ("", Reason::Failed),
        ] {
            let cb = parse_json(json!({"type": "email.suppressed", "data": {"suppressed": {"type": kind}}}));
            assert_eq!(cb.event.reason, Some(reason), "{kind}");
            assert_eq!(cb.event.kind, EventKind::Status(Status::Undeliverable));
        }
        // Tags in the list form; a recipient with a display name; the email's time when the event has none.
        let cb = parse_json(json!({"type": "email.opened", "data": {
            "email_id": "e-1", "created_at": "2024-01-01T00:00:00Z", "to": ["Ann <ann@example.com>"],
            "tags": [{"name": "other", "value": "x"}, {"name": "hookrelay_id", "value": "order-9"}]}}));
        assert_eq!(cb.target.id.map(String::from), Some("order-9".to_owned()));
        assert_eq!(cb.event.recipient.as_deref(), Some("ann@example.com"));
        assert_eq!(Some(cb.event.ts), common::rfc3339_to_ms("2024-01-01T00:00:00Z"));
        // No time at all: when it arrived.
        assert_eq!(parse_json(json!({"type": "email.sent", "data": {}})).event.ts, 7_000);
        let no_one = parse_json(json!({"type": "email.sent", "data": {"to": []}}));
        assert_eq!(no_one.event.recipient, None);
    }

    #[test]
    fn unknown_events_are_kept_and_garbage_is_refused() {
        for name in ["email.scheduled", "email.received", "contact.created", "domain.updated"] {
            let cb = parse_json(json!({"type": name, "created_at": "2024-06-14T12:13:44Z", "data": {"id": "c-1"}}));
            assert_eq!(cb.event.kind, EventKind::Unknown, "{name}");
            assert_eq!(cb.event.provider_event.as_deref(), Some(name));
        }
        // Without svix-id (verification requires it), the body identifies the event.
        let body = fixture("resend", "email.opened.json");
        let none = HeaderMap::new();
        let a = parse(&post(URL, &none, &body, 0), &context("resend")).expect("parses").callbacks.remove(0);
        let b = parse(&post(URL, &none, &body, 1), &context("resend")).expect("parses").callbacks.remove(0);
        assert!(a.event.dedupe_key.starts_with("resend:h:"));
        assert_eq!(a.event.dedupe_key, b.event.dedupe_key);
        for (bad, why) in [
            (&b"<xml/>"[..], "the body is not JSON"),
            (b"[]", "the body is not a JSON object"),
            (br#"{"data":{}}"#, "missing type"),
            (br#"{"type":"email.sent"}"#, "missing data"),
            (br#"{"type":"email.sent","data":[]}"#, "missing data"),
        ] {
            assert_eq!(
                parse(&post(URL, &none, bad, 0), &context("resend")).map_err(|e| e.to_string()),
                Err(why.to_owned())
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(body in mutations(vec![
            fixture("resend", "generated-signed-email.delivered.payload"),
            fixture("resend", "email.clicked.json"),
            fixture("resend", "email.suppressed.json"),
            fixture("resend", "email.sent.json"),
        ]), signature in prop_oneof![Just("v1,pxig7AtMbPtsCDeMQgL4sSPhLIsMa4rGp1IgkRQoLvY=".to_owned()), ".{0,80}"],
           timestamp in prop_oneof![Just("1718367224".to_owned()), ".{0,12}"]) {
            let mut h = headers("svix-id: msg_2W2D3qXLS5fOaPja1GDg7rF2CwB");
            if let (Ok(sig), Ok(ts)) = (signature.parse(), timestamp.parse()) {
                h.insert("svix-signature", sig);
                h.insert("svix-timestamp", ts);
            }
            let req = post(URL, &h, &body, 0);
            let _ = verify(&req, &creds(&[SECRET]), 1_718_367_224_000);
            let _ = parse(&req, &context("resend"));
        }

        #[test]
        fn secrets_never_panic(secret in ".{0,60}") {
            let _ = decode_secret(&secret);
            let _ = decode_secret(&format!("whsec_{secret}"));
        }
    }
}
