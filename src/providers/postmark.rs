//! Postmark webhooks: one event per request, discriminated by `RecordType`
//! (Delivery, Bounce, SpamComplaint, Open, Click, SubscriptionChange).
//!
//! Authenticity: Postmark does not sign its payloads. A source must require
//! HTTP credentials Postmark can send: basic auth (credentials in the webhook
//! URL, `https://user:pass@host/callbacks/<name>`), and/or a secret custom
//! header set on the webhook. A source with neither is refused at start-up:
//! anyone who learns the URL could otherwise forge delivery statuses.
//!
//! Correlation: hookrelay's id in `Metadata` (sent with the message), else
//! the `MessageID` the send API returned. Times are ISO 8601 with up to
//! seven fractional digits.

use serde_json::Value;

use super::common::{self, Unsigned, key_from_id, key_from_parts, str_field};
use super::{Callback, CallbackRequest, ParseContext, ParseError, Parsed};
use crate::config::{FieldError, SourceConfig};
use crate::domain::{EventKind, Reason, Status};

/// Configuration fields a Postmark source uses.
pub const ACCEPTS: &[&str] = &["username", "password", "bearer_token", "header_name", "header_value"];

/// The credentials every Postmark callback must carry: see [`common::Unsigned`].
pub fn credentials(cfg: &SourceConfig) -> Result<Unsigned, FieldError> {
    Unsigned::from_config(
        cfg,
        "username/password",
        format!(
            "Postmark does not sign its webhooks, so a Postmark source needs credentials: set username and \
             password and put them in the webhook URL (https://USER:PASSWORD@<public host>/callbacks/{}), \
             and/or set header_name and header_value and add that custom header to the webhook",
            cfg.name
        ),
    )
}

/// Parses one webhook into its event.
pub fn parse(req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
    let data: Value = serde_json::from_slice(req.body).map_err(|_| ParseError::Shape("the body is not JSON"))?;
    if !data.is_object() {
        return Err(ParseError::Shape("the body is not a JSON object"));
    }
    let record = str_field(&data, "RecordType").ok_or_else(|| ParseError::Missing("RecordType".into()))?;
    Ok(Parsed::events(vec![parse_record(record, &data, ctx, req.received_at)]))
}

/// What a Bounce record means, by its `Type`.
fn bounce_kind(kind: &str) -> (EventKind, Option<Reason>) {
    let undeliverable = |reason| (EventKind::Status(Status::Undeliverable), Some(reason));
    match kind {
        // Postmark may still report a hard bounce after a soft one; like
        // anymail, a soft bounce counts as bounced.
        "HardBounce" | "BadEmailAddress" | "SoftBounce" => undeliverable(Reason::Bounced),
        "Transient" | "DnsError" => (EventKind::Status(Status::Delayed), None),
        "Blocked" | "DMARCPolicy" | "ManuallyDeactivated" => undeliverable(Reason::Filtered),
        // Not sent because the recipient is suppressed (unsubscribed).
        "Unsubscribe" | "ManualSuppression" => undeliverable(Reason::Unsubscribed),
        "SpamNotification" | "SpamComplaint" => (EventKind::Complained, None),
        // Postmark refused the message itself (`Unconfirmed`: an unconfirmed sender signature).
        "TemplateRenderingFailed" | "SMTPApiError" | "Unconfirmed" => undeliverable(Reason::ProviderError),
        // AutoResponder, AddressChange, Subscribe, OpenRelayTest,
        // ChallengeVerification, VirusNotification, InboundError, Unknown:
        // notices that say nothing certain about delivery.
        _ => (EventKind::Unknown, None),
    }
}

/// The record's time field as sent, whichever the record type carries.
fn time_text(data: &Value) -> Option<&str> {
    ["DeliveredAt", "BouncedAt", "ReceivedAt", "ChangedAt"].into_iter().find_map(|k| str_field(data, k))
}

/// What distinguishes records of one type about one message at one time.
fn variant<'a>(record: &str, data: &'a Value) -> &'a str {
    match (record, data.get("SuppressSending")) {
        ("SubscriptionChange", Some(Value::Bool(true))) => "suppress",
        ("SubscriptionChange", Some(Value::Bool(false))) => "reactivate",
        ("Click", _) => str_field(data, "OriginalLink").unwrap_or(""),
        _ => "",
    }
}

fn parse_record(record: &str, data: &Value, ctx: &ParseContext, received_at: i64) -> Callback {
    let pmid = str_field(data, "MessageID");
    let hookrelay_id = data.get("Metadata").and_then(|m| str_field(m, &ctx.id_field));
    let recipient =
        ["Recipient", "Email"].into_iter().find_map(|k| str_field(data, k).map(str::trim).filter(|r| !r.is_empty()));
    let time = time_text(data);
    let ts = time.and_then(common::rfc3339_to_ms).unwrap_or(received_at);
    // Bounces and complaints have an id of their own; other records are
    // identified by what they are about, when, and what changed (an
    // unsubscribe and a resubscribe may share a second; so may two clicks).
    let id = match data.get("ID") {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    };
    let key = match id.filter(|_| matches!(record, "Bounce" | "SpamComplaint")) {
        Some(id) => key_from_id(ctx, &id),
        None => key_from_parts(
            ctx,
            &[
                record.as_bytes(),
                pmid.unwrap_or("").as_bytes(),
                recipient.unwrap_or("").as_bytes(),
                time.unwrap_or("").as_bytes(),
                variant(record, data).as_bytes(),
            ],
        ),
    };
    let bounce_type = str_field(data, "Type").unwrap_or("");
    let (kind, reason) = match record {
        "Delivery" => (EventKind::Status(Status::Delivered), None),
        "Bounce" => bounce_kind(bounce_type),
        "SpamComplaint" => (EventKind::Complained, None),
        "Open" => (EventKind::Status(Status::Opened), None),
        "Click" => (EventKind::Status(Status::Clicked), None),
        "SubscriptionChange" => match data.get("SuppressSending") {
            Some(Value::Bool(true)) => (EventKind::Unsubscribed, None),
            Some(Value::Bool(false)) => (EventKind::Resubscribed, None),
            _ => (EventKind::Unknown, None),
        },
        _ => (EventKind::Unknown, None),
    };
    // `Bounce:HardBounce` says more than `Bounce` alone.
    let name = if record == "Bounce" && !bounce_type.is_empty() {
        format!("{record}:{bounce_type}")
    } else {
        record.to_owned()
    };
    let mut event = common::event(ctx, kind, ts, key, &name, Some(data));
    event.recipient = recipient.map(str::to_owned);
    event.reason = reason;
    if record == "Bounce" {
        // `Details` is the receiving server's reply; `Description` Postmark's generic text.
        let details = str_field(data, "Details").filter(|d| !d.trim().is_empty());
        common::set_error(&mut event, details.or_else(|| str_field(data, "Description")).unwrap_or(""));
    }
    if record == "Click"
        && let Some(url) = str_field(data, "OriginalLink")
    {
        event.detail.insert("url".into(), Value::from(url));
    }
    Callback { target: common::target(ctx, hookrelay_id, pmid), event }
}

#[cfg(test)]
mod tests {
    use crate::providers::VerifyError;
    use axum::http::HeaderMap;
    use base64::Engine;
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::common::testing::{config, context, fixture, headers, mutations, post};
    use super::*;
    use crate::domain::Secret;

    const URL: &str = "https://hooks.example.com/callbacks/postmark";

    fn basic_creds() -> Unsigned {
        let mut cfg = config("postmark");
        cfg.username = Some("hooks".into());
        cfg.password = Some(Secret::new("long-random-secret"));
        credentials(&cfg).expect("valid")
    }

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        headers(&format!("Content-Type: application/json\nAuthorization: Basic {v}"))
    }

    #[test]
    fn a_source_without_credentials_is_refused() {
        let err = credentials(&config("postmark")).expect_err("refused");
        assert!(err.to_string().starts_with("username/password: "), "{err}");
        assert!(err.to_string().contains("https://USER:PASSWORD@<public host>/callbacks/postmark-test"), "{err}");
        assert!(err.to_string().contains("header_name"), "{err}");
        // Half a credential is refused too.
        let mut cfg = config("postmark");
        cfg.username = Some("hooks".into());
        assert!(credentials(&cfg).expect_err("refused").to_string().starts_with("username/password: "));
        let mut cfg = config("postmark");
        cfg.header_name = Some("X-Hook-Secret".into());
        assert!(credentials(&cfg).expect_err("refused").to_string().starts_with("header_name/header_value: "));
    }

    #[test]
    fn basic_auth_is_checked() {
        let c = basic_creds();
        let body = fixture("postmark", "delivery.json");
        assert_eq!(c.verify(&post(URL, &basic("hooks", "long-random-secret"), &body, 0)), Ok(()));
        assert_eq!(
            c.verify(&post(URL, &basic("hooks", "long-random-secreT"), &body, 0)),
            Err(VerifyError::BadCredentials)
        );
        assert_eq!(
            c.verify(&post(URL, &basic("other", "long-random-secret"), &body, 0)),
            Err(VerifyError::BadCredentials)
        );
        let none = headers("Content-Type: application/json");
        assert_eq!(c.verify(&post(URL, &none, &body, 0)), Err(VerifyError::Missing("authorization")));
        let bearer = headers("Authorization: Bearer long-random-secret");
        assert_eq!(c.verify(&post(URL, &bearer, &body, 0)), Err(VerifyError::Missing("basic authorization")));
        // Debug shows no secret.
        assert!(!format!("{c:?}").contains("long-random-secret"));
    }

    #[test]
    fn a_secret_header_is_checked_and_may_be_combined() {
        let mut cfg = config("postmark");
        cfg.header_name = Some("X-Hook-Secret".into());
        cfg.header_value = Some(Secret::new("hdr-secret"));
        let c = credentials(&cfg).expect("valid");
        let body = fixture("postmark", "open.json");
        let ok = headers("X-Hook-Secret: hdr-secret");
        assert_eq!(c.verify(&post(URL, &ok, &body, 0)), Ok(()));
        let wrong = headers("X-Hook-Secret: hdr-secreT");
        assert_eq!(c.verify(&post(URL, &wrong, &body, 0)), Err(VerifyError::BadCredentials));
        assert_eq!(c.verify(&post(URL, &HeaderMap::new(), &body, 0)), Err(VerifyError::Missing("secret header")));

        // Both configured: both required.
        cfg.username = Some("hooks".into());
        cfg.password = Some(Secret::new("long-random-secret"));
        let both = credentials(&cfg).expect("valid");
        assert_eq!(both.verify(&post(URL, &ok, &body, 0)), Err(VerifyError::Missing("authorization")));
        let mut all = basic("hooks", "long-random-secret");
        assert_eq!(both.verify(&post(URL, &all, &body, 0)), Err(VerifyError::Missing("secret header")));
        all.insert("x-hook-secret", "hdr-secret".parse().expect("value"));
        assert_eq!(both.verify(&post(URL, &all, &body, 0)), Ok(()));
    }

    fn parse_body(body: &[u8], ctx: &ParseContext) -> Callback {
        let h = HeaderMap::new();
        let mut parsed = parse(&post(URL, &h, body, 42), ctx).expect("parses");
        assert_eq!(parsed.callbacks.len(), 1);
        assert_eq!(parsed.action, None);
        parsed.callbacks.remove(0)
    }

    fn parse_fixture(name: &str) -> Callback {
        parse_body(&fixture("postmark", name), &context("postmark"))
    }

    #[test]
    fn every_sample_normalizes_as_the_mapping_table_says() {
        struct Case {
            file: &'static str,
            kind: EventKind,
            reason: Option<Reason>,
            error: Option<&'static str>,
            recipient: Option<&'static str>,
            ts: i64,
            pmid: &'static str,
            key: Option<&'static str>,
            provider_event: &'static str,
        }
        let cases = [
            Case {
                file: "delivery.json",
                kind: EventKind::Status(Status::Delivered),
                reason: None,
                error: None,
                recipient: Some("recipient@example.com"),
                ts: 1_406_914_090_273,
                pmid: "883953f4-6105-42a2-a16a-77a8eac79483",
                key: None,
                provider_event: "Delivery",
            },
            Case {
                file: "bounce-hard.json",
                kind: EventKind::Status(Status::Undeliverable),
                reason: Some(Reason::Bounced),
                error: Some("smtp;550 5.1.1 The email account that you tried to reach does not exist."),
                recipient: Some("bounce@example.com"),
                ts: 1_461_788_930_396,
                pmid: "2706ee8a-737c-4285-b032-ccd317af53ed",
                key: Some("postmark:901542550"),
                provider_event: "Bounce:HardBounce",
            },
            Case {
                // A real (scrubbed) payload: no recipient, no time.
                file: "bounce-type-unsubscribe.json",
                kind: EventKind::Status(Status::Undeliverable),
                reason: Some(Reason::Unsubscribed),
                error: Some("Unsubscribe or Remove request."),
                recipient: None,
                ts: 42,
                pmid: "5555555-5555555-5555-5555555",
                key: Some("postmark:555555555"),
                provider_event: "Bounce:Unsubscribe",
            },
            Case {
                file: "spam-complaint.json",
                kind: EventKind::Complained,
                reason: None,
                error: None,
                recipient: Some("spam@example.com"),
                ts: 1_461_788_930_396,
                pmid: "2706ee8a-737c-4285-b032-ccd317af53ed",
                key: Some("postmark:901542550"),
                provider_event: "SpamComplaint",
            },
            Case {
                file: "open.json",
                kind: EventKind::Status(Status::Opened),
                reason: None,
                error: None,
                recipient: Some("recipient@example.com"),
                ts: 1_461_788_501_249,
                pmid: "f4830d10-9c35-4f0c-bca3-3d9b459821f8",
                key: None,
                provider_event: "Open",
            },
            Case {
                file: "click.json",
                kind: EventKind::Status(Status::Clicked),
                reason: None,
                error: None,
                recipient: Some("recipient@example.com"),
                ts: 1_508_944_871_906,
                pmid: "f4830d10-9c35-4f0c-bca3-3d9b459821f8",
                key: None,
                provider_event: "Click",
            },
            Case {
                file: "subscription-change-unsubscribe.json",
                kind: EventKind::Unsubscribed,
                reason: None,
                error: None,
                recipient: Some("john@example.com"),
                ts: 1_654_449_452_000,
                pmid: "a4909a96-73d7-4c49-b148-a54522d3f7ac",
                key: None,
                provider_event: "SubscriptionChange",
            },
            Case {
                file: "subscription-change-hardbounce.json",
                kind: EventKind::Unsubscribed,
                reason: None,
                error: None,
                recipient: Some("john@example.com"),
                ts: 1_654_449_452_000,
                pmid: "b4cb783d-78ed-43f2-983b-63f55c712dc8",
                key: None,
                provider_event: "SubscriptionChange",
            },
            Case {
                file: "subscription-change-resubscribe.json",
                kind: EventKind::Resubscribed,
                reason: None,
                error: None,
                recipient: Some("john@example.com"),
                ts: 1_654_449_452_000,
                pmid: "a4909a96-73d7-4c49-b148-a54522d3f7ac",
                key: None,
                provider_event: "SubscriptionChange",
            },
        ];
        let mut keys = std::collections::HashSet::new();
        for case in cases {
            let name = case.file;
            let cb = parse_fixture(name);
            assert_eq!(cb.event.kind, case.kind, "{name}");
            assert_eq!(cb.event.reason, case.reason, "{name}");
            assert_eq!(cb.event.error.as_deref(), case.error, "{name}");
            assert_eq!(cb.event.recipient.as_deref(), case.recipient, "{name}");
            assert_eq!(cb.event.ts, case.ts, "{name}");
            assert_eq!(cb.target.provider.as_ref().map(|p| p.message_id.as_str()), Some(case.pmid), "{name}");
            assert_eq!(cb.target.provider.as_ref().map(|p| p.provider.as_str()), Some("postmark"), "{name}");
            assert_eq!(cb.target.id, None, "{name}: no hookrelay_id in the sample's Metadata");
            assert_eq!(cb.event.provider_event.as_deref(), Some(case.provider_event), "{name}");
            assert!(cb.event.affects_status, "{name}");
            match case.key {
                Some(key) => assert_eq!(cb.event.dedupe_key, key, "{name}"),
                None => assert!(cb.event.dedupe_key.starts_with("postmark:h:"), "{name}"),
            }
            // A retry of the same record has the same key.
            assert_eq!(parse_fixture(name).event.dedupe_key, cb.event.dedupe_key, "{name}");
            // The bounce and the complaint samples share a bounce ID (one Postmark record).
            keys.insert(cb.event.dedupe_key.clone());
            let raw: Value = serde_json::from_slice(&fixture("postmark", name)).expect("json");
            assert_eq!(cb.event.detail.get("data"), Some(&raw), "{name}: the raw event is kept");
        }
        assert_eq!(keys.len(), 8, "every other record has its own key");
        // Same message, recipient and second: an unsubscribe and a resubscribe are still two events.
        assert_ne!(
            parse_fixture("subscription-change-unsubscribe.json").event.dedupe_key,
            parse_fixture("subscription-change-resubscribe.json").event.dedupe_key
        );
        let click = parse_fixture("click.json");
        assert_eq!(click.event.detail.get("url"), Some(&Value::from("https://example.com/click/me")));
        let hardbounce = parse_fixture("subscription-change-hardbounce.json");
        assert_eq!(hardbounce.event.detail["data"]["SuppressionReason"], "HardBounce");
    }

    #[test]
    fn hookrelay_id_comes_from_metadata() {
        let mut v: Value = serde_json::from_slice(&fixture("postmark", "delivery.json")).expect("json");
        v["Metadata"]["hookrelay_id"] = json!("order-42");
        let body = serde_json::to_vec(&v).expect("json");
        let cb = parse_body(&body, &context("postmark"));
        assert_eq!(cb.target.id.map(String::from), Some("order-42".to_owned()));
        let mut ctx = context("postmark");
        ctx.id_field = "userid".into();
        let cb = parse_body(&fixture("postmark", "delivery.json"), &ctx);
        assert_eq!(cb.target.id.map(String::from), Some("12345".to_owned()));
        // A Delivery and an Open of one message at one time are different events.
        let open = json!({"RecordType": "Open", "MessageID": v["MessageID"], "Recipient": v["Recipient"], "ReceivedAt": v["DeliveredAt"]});
        let open = parse_body(&serde_json::to_vec(&open).expect("json"), &ctx);
        assert_ne!(open.event.dedupe_key, cb.event.dedupe_key);
    }

    #[test]
    fn every_bounce_type() {
        let undeliverable = EventKind::Status(Status::Undeliverable);
        let cases = [
            ("HardBounce", undeliverable, Some(Reason::Bounced)),
            ("BadEmailAddress", undeliverable, Some(Reason::Bounced)),
            ("SoftBounce", undeliverable, Some(Reason::Bounced)),
            ("Transient", EventKind::Status(Status::Delayed), None),
            ("DnsError", EventKind::Status(Status::Delayed), None),
            ("Blocked", undeliverable, Some(Reason::Filtered)),
            ("DMARCPolicy", undeliverable, Some(Reason::Filtered)),
            ("ManuallyDeactivated", undeliverable, Some(Reason::Filtered)),
            ("Unsubscribe", undeliverable, Some(Reason::Unsubscribed)),
            ("ManualSuppression", undeliverable, Some(Reason::Unsubscribed)),
            ("SpamNotification", EventKind::Complained, None),
            ("SpamComplaint", EventKind::Complained, None),
            ("TemplateRenderingFailed", undeliverable, Some(Reason::ProviderError)),
            ("SMTPApiError", undeliverable, Some(Reason::ProviderError)),
            ("Unconfirmed", undeliverable, Some(Reason::ProviderError)),
            ("AutoResponder", EventKind::Unknown, None),
            ("AddressChange", EventKind::Unknown, None),
            ("Subscribe", EventKind::Unknown, None),
            ("OpenRelayTest", EventKind::Unknown, None),
            ("ChallengeVerification", EventKind::Unknown, None),
            ("VirusNotification", EventKind::Unknown, None),
            ("InboundError", EventKind::Unknown, None),
            ("Unknown", EventKind::Unknown, None),
            ("SomethingNew", EventKind::Unknown, None),
        ];
        for (i, (kind, expected, reason)) in cases.into_iter().enumerate() {
            let body = json!({"RecordType": "Bounce", "ID": i, "Type": kind, "MessageID": "m-1", "Email": "x@example.com",
                "Description": "Generic text.", "Details": "", "BouncedAt": "2019-11-05T16:33:54.9070259Z"});
            let cb = parse_body(&serde_json::to_vec(&body).expect("json"), &context("postmark"));
            assert_eq!((cb.event.kind, cb.event.reason), (expected, reason), "{kind}");
            assert_eq!(cb.event.error.as_deref(), Some("Generic text."), "{kind}: Description when Details is empty");
            assert_eq!(cb.event.dedupe_key, format!("postmark:{i}"));
        }
        let untyped = json!({"RecordType": "Bounce", "MessageID": "m-1"});
        assert_eq!(
            parse_body(&serde_json::to_vec(&untyped).expect("json"), &context("postmark")).event.kind,
            EventKind::Unknown
        );
    }

    #[test]
    fn unknown_records_are_kept_and_garbage_is_refused() {
        let body = br#"{"RecordType":"Inbound","MessageID":"x-1"}"#;
        let cb = parse_body(body, &context("postmark"));
        assert_eq!(cb.event.kind, EventKind::Unknown);
        assert_eq!(cb.event.provider_event.as_deref(), Some("Inbound"));
        assert_eq!(cb.event.ts, 42, "no time: when it arrived");
        let odd = br#"{"RecordType":"SubscriptionChange","MessageID":"x-1","SuppressSending":"yes"}"#;
        assert_eq!(parse_body(odd, &context("postmark")).event.kind, EventKind::Unknown);
        let h = HeaderMap::new();
        for (bad, why) in [
            (&b"nope"[..], "the body is not JSON"),
            (b"[]", "the body is not a JSON object"),
            (br#"{"From":"inbound@example.com"}"#, "missing RecordType"),
            (br#"{"RecordType":1}"#, "missing RecordType"),
        ] {
            assert_eq!(
                parse(&post(URL, &h, bad, 0), &context("postmark")).map_err(|e| e.to_string()),
                Err(why.to_owned())
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(body in mutations(vec![
            fixture("postmark", "delivery.json"),
            fixture("postmark", "bounce-hard.json"),
            fixture("postmark", "click.json"),
            fixture("postmark", "subscription-change-unsubscribe.json"),
        ]), authorization in ".{0,40}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = format!("Basic {authorization}").parse() {
                h.insert("authorization", v);
            }
            let req = post(URL, &h, &body, 0);
            let _ = basic_creds().verify(&req);
            let _ = parse(&req, &context("postmark"));
        }
    }
}
