//! Amazon SES events, delivered by an Amazon SNS topic subscribed over
//! HTTPS: configuration-set event publishing (`eventType`) and the older
//! identity feedback notifications (`notificationType`).
//!
//! Authenticity: SNS signs a newline-separated string built from the
//! envelope's fields with RSA PKCS#1 v1.5 (SHA-1 for `SignatureVersion`
//! "1", SHA-256 for "2"). The certificate is either pinned in the
//! configuration or fetched by the edge from `SigningCertURL`, which is
//! accepted only when it is https on an `sns.<region>.amazonaws.com[.cn]`
//! host and ends in `.pem` ([`certificate_url`]). A valid signature only
//! proves that *some* SNS topic sent the request, so notifications are also
//! refused unless their topic is in `topic_arns`; subscription
//! confirmations pass verification and the edge confirms only those whose
//! topic [`Credentials::allows_topic`] (others get 403). SNS signs nothing
//! fresh (`Timestamp` is the publish time and retries keep it), so there is
//! no replay window: dedupe keys make replays harmless.
//!
//! Correlation: hookrelay's id is a message tag (`mail.tags.hookrelay_id`,
//! set with the send call's `Tags`/`EmailTags` or `X-SES-MESSAGE-TAGS`), else
//! `mail.messageId`, the `MessageId` SES returned from the send call. One
//! event per recipient; its dedupe key is the SNS `MessageId` (kept on SNS
//! retries) and the recipient.

use std::borrow::Cow;

use base64::Engine;
use reqwest::Url;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::{Map, Value};
use x509_cert::Certificate;
use x509_cert::spki::ObjectIdentifier;

use super::common::{self, HttpAuth, key_from_id, key_from_parts, rfc3339_to_ms, str_field};
use super::{Action, Callback, CallbackRequest, CertificateStore, ParseContext, ParseError, Parsed, VerifyError};
use crate::config::{FieldError, SourceConfig};
use crate::domain::{EventKind, Reason, Status};

/// Configuration fields an SES source uses.
pub const ACCEPTS: &[&str] = &["topic_arns", "certificate_file", "username", "password", "header_name", "header_value"];

/// `rsaEncryption`, the only key type SNS certificates carry.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The envelope fields SNS signs, in order, each only when present. One
/// list serves all message types (aws-php-sns-message-validator does the
/// same): notifications have no `SubscribeURL`/`Token`, confirmations no
/// `Subject`.
const SIGNED_FIELDS: [&str; 8] =
    ["Message", "MessageId", "Subject", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"];

/// An SES source's allowed topics and, optionally, its pinned certificate.
pub struct Credentials {
    topics: Vec<String>,
    /// The pinned certificate's RSA public key (PKCS#1 `RSAPublicKey` DER).
    pinned: Option<Vec<u8>>,
    http: HttpAuth,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ses::Credentials")
            .field("topics", &self.topics)
            .field("pinned_certificate", &self.pinned.is_some())
            .field("http", &self.http)
            .finish()
    }
}

impl Credentials {
    pub fn from_config(cfg: &SourceConfig) -> Result<Self, FieldError> {
        let mut topics = Vec::new();
        for arn in &cfg.topic_arns {
            let arn = arn.trim();
            if !is_topic_arn(arn) {
                return Err(FieldError::new(
                    "topic_arns",
                    format!("`{arn}` is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)"),
                ));
            }
            topics.push(arn.to_owned());
        }
        if topics.is_empty() {
            return Err(FieldError::new(
                "topic_arns",
                "an SES source needs the ARNs of the SNS topics it receives; notifications from any other topic \
                 are refused",
            ));
        }
        let pinned = match &cfg.certificate_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| FieldError::new("certificate_file", format!("cannot read {}: {e}", path.display())))?;
                let key = public_key(&pem)
                    .map_err(|why| FieldError::new("certificate_file", format!("{}: {why}", path.display())))?;
                Some(key)
            }
        };
        Ok(Credentials { topics, pinned, http: HttpAuth::from_config(cfg)? })
    }

    /// Whether `topic_arn` is one of this source's topics.
    pub fn allows_topic(&self, topic_arn: &str) -> bool {
        self.topics.iter().any(|t| t == topic_arn)
    }
}

/// `arn:<partition>:sns:<region>:<account>:<topic>`, loosely: enough to catch
/// a subscription ARN or a typo, not a full grammar.
fn is_topic_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "sns"
        && parts[3..].iter().all(|p| !p.is_empty())
}

/// The RSA public key of the first certificate in `bytes` (PEM or DER).
fn public_key(bytes: &[u8]) -> Result<Vec<u8>, &'static str> {
    use x509_cert::der::Decode;
    let cert = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        Certificate::load_pem_chain(bytes).ok().and_then(|chain| chain.into_iter().next())
    } else {
        Certificate::from_der(bytes).ok()
    }
    .ok_or("not an X.509 certificate in PEM")?;
    let spki = cert.tbs_certificate().subject_public_key_info();
    if spki.algorithm.oid != RSA_ENCRYPTION {
        return Err("the certificate's key is not an RSA key");
    }
    spki.subject_public_key.as_bytes().map(<[u8]>::to_vec).ok_or("unreadable public key")
}

/// What an SNS URL is for: the certificate must be a `.pem` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnsUrl {
    Certificate,
    Subscribe,
}

/// `sns.<region>.amazonaws.com` or `sns.<region>.amazonaws.com.cn`, exactly
/// (`^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$`).
fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else { return false };
    let region = rest.strip_suffix(".amazonaws.com.cn").or_else(|| rest.strip_suffix(".amazonaws.com"));
    region
        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
}

/// Checks a URL taken from an SNS message before anything is fetched from
/// it: https, no userinfo, port 443, an SNS host as written (no case,
/// percent-encoding or IDNA games that normalization would paper over),
/// no fragment, and for certificates a `.pem` path and no query.
fn check_sns_url(raw: &str, kind: SnsUrl) -> Result<(), &'static str> {
    // The URL parser reads `\` as `/` and drops some whitespace; SNS URLs have neither.
    if raw.contains(|c: char| c == '\\' || c.is_whitespace() || c.is_control()) {
        return Err("not a URL");
    }
    let url = Url::parse(raw).map_err(|_| "not a URL")?;
    if url.scheme() != "https" {
        return Err("not https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("userinfo in the URL");
    }
    // The parser drops the scheme's default port, so any port left is not 443.
    if url.port().is_some() {
        return Err("a port other than 443");
    }
    // IP addresses come out as `1.2.3.4` or `[::1]`, which are not SNS hosts.
    let Some(host) = url.host_str() else { return Err("not an Amazon SNS host") };
    if !is_sns_host(host) {
        return Err("not an Amazon SNS host");
    }
    let written = raw
        .strip_prefix("https://")
        .map(|rest| rest.split(['/', '?', '#', '\\']).next().unwrap_or(""))
        .ok_or("not https")?;
    if written != host && written.strip_suffix(":443") != Some(host) {
        return Err("not an Amazon SNS host");
    }
    if url.fragment().is_some() {
        return Err("a fragment in the URL");
    }
    if kind == SnsUrl::Certificate && (!url.path().ends_with(".pem") || url.query().is_some()) {
        return Err("not a .pem path");
    }
    Ok(())
}

/// The envelope: a JSON object whatever the content type says (SNS sends
/// `text/plain`).
fn envelope(body: &[u8]) -> Result<Map<String, Value>, VerifyError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(VerifyError::Malformed("JSON body")),
    }
}

/// A string field of the envelope; present with another type is malformed.
fn text<'a>(env: &'a Map<String, Value>, key: &'static str) -> Result<Option<&'a str>, VerifyError> {
    match env.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(VerifyError::Malformed(key)),
    }
}

fn required<'a>(env: &'a Map<String, Value>, key: &'static str) -> Result<&'a str, VerifyError> {
    text(env, key)?.ok_or(VerifyError::Missing(key))
}

/// The certificate URL the edge must fetch (and cache) before [`verify`]:
/// none when a certificate is pinned. The URL is checked here, so nothing
/// is ever fetched from a host that is not Amazon SNS.
pub fn certificate_url(req: &CallbackRequest<'_>, creds: &Credentials) -> Result<Option<String>, VerifyError> {
    if creds.pinned.is_some() {
        return Ok(None);
    }
    let env = envelope(req.body)?;
    let url = required(&env, "SigningCertURL")?;
    check_sns_url(url, SnsUrl::Certificate).map_err(VerifyError::Certificate)?;
    Ok(Some(url.to_owned()))
}

/// A header SNS sends must agree with the body when present.
fn header_agrees(req: &CallbackRequest<'_>, name: &'static str, body_value: &str) -> Result<(), VerifyError> {
    match req.headers.get(name) {
        None => Ok(()),
        Some(v) if v.as_bytes() == body_value.as_bytes() => Ok(()),
        Some(_) => Err(VerifyError::Malformed(name)),
    }
}

/// `Key\nValue\n` for each signed field present. Only `Message` may hold a
/// line break: were another field allowed one, a signed string could be
/// re-cut into different fields (a `MessageId` swallowing the `Subject`).
fn string_to_sign(env: &Map<String, Value>) -> Result<Vec<u8>, VerifyError> {
    let mut out = Vec::new();
    for key in SIGNED_FIELDS {
        let Some(value) = text(env, key)? else { continue };
        if key != "Message" && value.contains(['\n', '\r']) {
            return Err(VerifyError::Malformed(key));
        }
        for part in [key, "\n", value, "\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    Ok(out)
}

/// Checks the SNS signature, the SNS headers against the body, and (except
/// for subscription confirmations, which the edge gates on the topic) that
/// the topic is one of this source's. `now` is unused: SNS signs no fresh
/// timestamp, so replays are left to dedupe.
pub fn verify(
    req: &CallbackRequest<'_>,
    creds: &Credentials,
    _now: i64,
    certificates: &dyn CertificateStore,
) -> Result<(), VerifyError> {
    creds.http.check(req.headers)?;
    let env = envelope(req.body)?;
    let kind = required(&env, "Type")?;
    let message_id = required(&env, "MessageId")?;
    let topic = required(&env, "TopicArn")?;
    required(&env, "Timestamp")?;
    header_agrees(req, "x-amz-sns-message-type", kind)?;
    header_agrees(req, "x-amz-sns-message-id", message_id)?;
    header_agrees(req, "x-amz-sns-topic-arn", topic)?;
    let algorithm: &'static dyn VerificationAlgorithm = match text(&env, "SignatureVersion")?.unwrap_or("1") {
        "1" => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        "2" => &signature::RSA_PKCS1_2048_8192_SHA256,
        _ => return Err(VerifyError::Malformed("SignatureVersion")),
    };
    let signature = base64::engine::general_purpose::STANDARD
        .decode(required(&env, "Signature")?.trim())
        .map_err(|_| VerifyError::Malformed("Signature"))?;
    let to_sign = string_to_sign(&env)?;
    let key = match &creds.pinned {
        Some(key) => Cow::Borrowed(key.as_slice()),
        None => {
            let url = certificate_url(req, creds)?.ok_or(VerifyError::Missing("SigningCertURL"))?;
            let pem = certificates.get(&url).ok_or(VerifyError::Certificate("not fetched"))?;
            Cow::Owned(public_key(&pem).map_err(VerifyError::Certificate)?)
        }
    };
    UnparsedPublicKey::new(algorithm, key.as_ref())
        .verify(&to_sign, &signature)
        .map_err(|_| VerifyError::BadSignature)?;
    // Authentic, but possibly from someone else's topic pointed at this URL:
    // for SNS the topic is what an account credential is elsewhere.
    if kind != "SubscriptionConfirmation" && !creds.allows_topic(topic) {
        return Err(VerifyError::TopicNotAllowed);
    }
    Ok(())
}

/// Parses a verified SNS message.
pub fn parse(req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
    let env = match serde_json::from_slice(req.body) {
        Ok(Value::Object(map)) => map,
        _ => return Err(ParseError::Unreadable("JSON body")),
    };
    match env.get("Type").and_then(Value::as_str) {
        Some("Notification") => notification(&env, ctx, req.received_at),
        Some("SubscriptionConfirmation") => {
            let field =
                |key: &'static str| env.get(key).and_then(Value::as_str).ok_or_else(|| ParseError::Missing(key.into()));
            let (topic_arn, subscribe_url) = (field("TopicArn")?, field("SubscribeURL")?);
            check_sns_url(subscribe_url, SnsUrl::Subscribe).map_err(ParseError::Refused)?;
            Ok(Parsed {
                action: Some(Action::ConfirmSubscription {
                    topic_arn: topic_arn.to_owned(),
                    subscribe_url: subscribe_url.to_owned(),
                }),
                ..Parsed::default()
            })
        }
        Some("UnsubscribeConfirmation") => Ok(Parsed::ignore("SNS message of type UnsubscribeConfirmation")),
        Some(_) => Err(ParseError::Shape("unknown SNS message Type")),
        None => Err(ParseError::Missing("Type".into())),
    }
}

fn notification(env: &Map<String, Value>, ctx: &ParseContext, received_at: i64) -> Result<Parsed, ParseError> {
    let message = env.get("Message").and_then(Value::as_str).ok_or_else(|| ParseError::Missing("Message".into()))?;
    // SES's "Successfully validated SNS topic for Amazon SES event
    // publishing." notice is plain text, as is anything else published to
    // the topic by hand.
    let record = match serde_json::from_str::<Value>(message) {
        Ok(record @ Value::Object(_)) => record,
        _ => return Ok(Parsed::ignore("SNS message of type Notification that is not an SES event")),
    };
    // Anything else published to the topic is verified and acknowledged, so
    // that SNS does not retry it, and records nothing.
    let Some(name) = str_field(&record, "eventType").or_else(|| str_field(&record, "notificationType")) else {
        return Ok(Parsed::ignore("SNS message of type Notification that is not an SES event"));
    };
    match name {
        // Sent once when identity notifications are set up on the topic.
        "AmazonSnsSubscriptionSucceeded" => return Ok(Parsed::ignore("SES notification subscription notice")),
        // Inbound mail (receipt rules): not about a message hookrelay tracks.
        "Received" => return Ok(Parsed::ignore("SES inbound mail notification")),
        _ => {}
    }
    let mail = record.get("mail").filter(|m| m.is_object()).ok_or(ParseError::Shape("SES event without mail"))?;
    let sns_message_id = env.get("MessageId").and_then(Value::as_str).filter(|id| !id.is_empty());
    Ok(Parsed::events(events(&record, mail, name, message, sns_message_id, ctx, received_at)))
}

/// The event-specific object of an SES record (`bounce`, `deliveryDelay`, ...).
fn section_name(event: &str) -> Option<&'static str> {
    Some(match event {
        "Send" => "send",
        "Delivery" => "delivery",
        "DeliveryDelay" => "deliveryDelay",
        "Bounce" => "bounce",
        "Complaint" => "complaint",
        "Reject" => "reject",
        "Rendering Failure" => "failure",
        "Open" => "open",
        "Click" => "click",
        "Subscription" => "subscription",
        _ => return None,
    })
}

/// One recipient of an event, with its own entry when the record has one
/// (`bouncedRecipients[i]`, `delayedRecipients[i]`).
type Recipient<'a> = (Option<&'a str>, Option<&'a Value>);

fn address_list<'a>(value: Option<&'a Value>) -> Vec<Recipient<'a>> {
    let Some(list) = value.and_then(Value::as_array) else { return Vec::new() };
    list.iter().filter_map(|v| v.as_str()).map(|a| (Some(a), None)).collect()
}

fn recipient_entries<'a>(value: Option<&'a Value>) -> Vec<Recipient<'a>> {
    let Some(list) = value.and_then(Value::as_array) else { return Vec::new() };
    list.iter().filter(|v| v.is_object()).map(|v| (str_field(v, "emailAddress"), Some(v))).collect()
}

/// Who an event is about: the record's recipient list for the event types
/// that have one, else the message's only destination (opens, clicks and
/// subscription changes of a message sent to one address), else nobody.
fn recipients<'a>(event: &str, section: Option<&'a Value>, mail: &'a Value) -> Vec<Recipient<'a>> {
    let field = |key: &str| section.and_then(|s| s.get(key));
    let list = match event {
        "Bounce" => recipient_entries(field("bouncedRecipients")),
        "Complaint" => recipient_entries(field("complainedRecipients")),
        "DeliveryDelay" => recipient_entries(field("delayedRecipients")),
        "Delivery" => address_list(field("recipients")),
        "Send" | "Reject" | "Rendering Failure" => address_list(mail.get("destination")),
        _ => match address_list(mail.get("destination")).as_slice() {
            [only] => vec![*only],
            _ => Vec::new(),
        },
    };
    // An event whose list is missing is still recorded, for the message.
    if list.is_empty() { vec![(None, None)] } else { list }
}

/// Whether a subscription event opted back in: everything `OptIn` and not
/// "unsubscribe from all". Anything else (the usual case: the recipient
/// used the unsubscribe link or header) is an unsubscribe.
fn resubscribed(section: Option<&Value>) -> bool {
    let Some(new) = section.and_then(|s| s.get("newTopicPreferences")) else { return false };
    let topics = new.get("topicSubscriptionStatus").and_then(Value::as_array);
    new.get("unsubscribeAll").and_then(Value::as_bool) == Some(false)
        && topics
            .is_some_and(|t| !t.is_empty() && t.iter().all(|s| str_field(s, "subscriptionStatus") == Some("OptIn")))
}

/// Kind, reason and error text of one recipient's event.
fn classify(event: &str, section: Option<&Value>, entry: Option<&Value>) -> (EventKind, Option<Reason>, String) {
    let from_section = |key: &str| section.and_then(|s| str_field(s, key)).unwrap_or("").to_owned();
    let from_entry = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| entry.and_then(|e| str_field(e, k)).filter(|s| !s.trim().is_empty()))
            .map(str::to_owned)
    };
    let undeliverable = EventKind::Status(Status::Undeliverable);
    match event {
        "Send" => (EventKind::Status(Status::Sent), None, String::new()),
        "Delivery" => (EventKind::Status(Status::Delivered), None, String::new()),
        "DeliveryDelay" => (
            EventKind::Status(Status::Delayed),
            None,
            from_entry(&["diagnosticCode"]).unwrap_or_else(|| from_section("delayType")),
        ),
        "Bounce" => {
            // Event publishing reports only bounces SES stopped retrying, so
            // a transient bounce is final too.
            let reason = match section.and_then(|s| str_field(s, "bounceType")) {
                Some("Permanent" | "Transient") => Reason::Bounced,
                _ => Reason::Failed,
            };
            (undeliverable, Some(reason), from_entry(&["diagnosticCode", "status"]).unwrap_or_default())
        }
        "Complaint" => (EventKind::Complained, None, String::new()),
        "Reject" => (undeliverable, Some(Reason::Filtered), from_section("reason")),
        "Rendering Failure" => (undeliverable, Some(Reason::ProviderError), from_section("errorMessage")),
        "Open" => (EventKind::Status(Status::Opened), None, String::new()),
        "Click" => (EventKind::Status(Status::Clicked), None, String::new()),
        "Subscription" if resubscribed(section) => (EventKind::Resubscribed, None, String::new()),
        "Subscription" => (EventKind::Unsubscribed, None, String::new()),
        _ => (EventKind::Unknown, None, String::new()),
    }
}

fn events(
    record: &Value,
    mail: &Value,
    name: &str,
    message: &str,
    sns_message_id: Option<&str>,
    ctx: &ParseContext,
    received_at: i64,
) -> Vec<Callback> {
    let section = section_name(name).and_then(|key| record.get(key)).filter(|s| s.is_object());
    let ts = section
        .and_then(|s| str_field(s, "timestamp"))
        .and_then(rfc3339_to_ms)
        .or_else(|| str_field(mail, "timestamp").and_then(rfc3339_to_ms))
        .unwrap_or(received_at);
    let pmid = str_field(mail, "messageId");
    let hookrelay_id = mail.get("tags").and_then(|tags| tags.get(&ctx.id_field)).and_then(|tag| match tag {
        Value::Array(values) => values.first().and_then(Value::as_str),
        other => other.as_str(),
    });
    let target = common::target(ctx, hookrelay_id, pmid);
    recipients(name, section, mail)
        .into_iter()
        .map(|(recipient, entry)| {
            let rcpt = recipient.unwrap_or("");
            let key = match sns_message_id {
                Some(id) => key_from_id(ctx, &format!("{id}:{rcpt}")),
                None => key_from_parts(ctx, &[message.as_bytes(), rcpt.as_bytes()]),
            };
            let (kind, reason, error) = classify(name, section, entry);
            let mut event = common::event(ctx, kind, ts, key, name, Some(record));
            event.recipient = recipient.map(str::to_owned);
            event.reason = reason;
            common::set_error(&mut event, &error);
            if let Some(url) = section.filter(|_| name == "Click").and_then(|s| str_field(s, "link")) {
                event.detail.insert("url".into(), Value::from(url));
            }
            Callback { target: target.clone(), event }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::Arc;

    use axum::http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::NoCertificates;
    use super::super::common::testing::{config, context, fixture, headers, mutations, post};
    use super::*;
    use crate::domain::MessageId;

    const URL: &str = "https://hooks.example.com/callbacks/ses";
    /// The topic of the reference notification and of our generated fixtures.
    const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-events";
    /// The topic of the AWS docs' subscription confirmation.
    const DOCS_TOPIC: &str = "arn:aws:sns:us-west-2:123456789012:MyTopic";
    const OTHER_TOPIC: &str = "arn:aws:sns:us-east-1:999999999999:someone-elses-topic";
    const NOW: i64 = 1_700_000_000_000;
    /// The reference fixtures' certificate; ours signs `generated-hookrelay-*`.
    const REFERENCE_CERT: &str = "generated-sns-cert.pem";
    const OUR_CERT: &str = "generated-hookrelay-cert.pem";

    fn path(name: &str) -> PathBuf {
        PathBuf::from(format!("{}/fixtures/providers/ses/{name}", env!("CARGO_MANIFEST_DIR")))
    }

    fn creds(topics: &[&str], cert: Option<&str>) -> Credentials {
        let mut cfg = config("ses");
        cfg.topic_arns = topics.iter().map(|t| (*t).to_owned()).collect();
        cfg.certificate_file = cert.map(path);
        Credentials::from_config(&cfg).expect("valid")
    }

    /// What SNS sends besides the body: `text/plain`, and the type and id headers.
    fn sns_headers(body: &[u8]) -> HeaderMap {
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        let mut map = headers("Content-Type: text/plain; charset=UTF-8");
        for (name, key) in [("x-amz-sns-message-type", "Type"), ("x-amz-sns-message-id", "MessageId")] {
            // A mutated body may hold what no header can (control bytes):
            // SNS would not send it, so the header is left out.
            if let Some(value) = v.get(key).and_then(Value::as_str).and_then(|s| HeaderValue::from_str(s).ok()) {
                map.insert(name, value);
            }
        }
        map
    }

    fn check(body: &[u8], creds: &Credentials) -> Result<(), VerifyError> {
        let h = sns_headers(body);
        verify(&post(URL, &h, body, NOW), creds, NOW, &NoCertificates)
    }

    /// `body` with one envelope field replaced (or removed with `Null`).
    fn with(body: &[u8], key: &str, value: Value) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(body).expect("json");
        let map = v.as_object_mut().expect("object");
        if value.is_null() {
            map.remove(key);
        } else {
            map.insert(key.to_owned(), value);
        }
        serde_json::to_vec_pretty(&v).expect("json")
    }

    #[derive(Default)]
    struct Store(HashMap<String, Arc<[u8]>>);

    impl CertificateStore for Store {
        fn get(&self, url: &str) -> Option<Arc<[u8]>> {
            self.0.get(url).cloned()
        }
    }

    #[test]
    fn the_reference_fixtures_verify_with_the_pinned_certificate() {
        let c = creds(&[TOPIC, DOCS_TOPIC], Some(REFERENCE_CERT));
        assert_eq!(check(&fixture("ses", "generated-signed-v2-notification.json"), &c), Ok(()));
        assert_eq!(check(&fixture("ses", "generated-signed-v1-subscription-confirmation.json"), &c), Ok(()));
        // With a pinned certificate nothing is fetched, whatever the body says.
        let body = with(
            &fixture("ses", "generated-signed-v2-notification.json"),
            "SigningCertURL",
            json!("https://evil.example.com/x.pem"),
        );
        assert_eq!(certificate_url(&post(URL, &sns_headers(&body), &body, NOW), &c), Ok(None));
        assert_eq!(check(&body, &c), Ok(()), "SigningCertURL is not signed and not used when pinned");
    }

    #[test]
    fn our_generated_fixtures_verify() {
        let c = creds(&[TOPIC], Some(OUR_CERT));
        for name in [
            "generated-hookrelay-v2-delivery.json",
            "generated-hookrelay-v2-bounce-three-recipients.json",
            "generated-hookrelay-v1-send.json",
            "generated-hookrelay-v2-validation-notice.json",
            "generated-hookrelay-v1-subscription-confirmation.json",
            "generated-hookrelay-v1-subscription-confirmation-other-topic.json",
        ] {
            assert_eq!(check(&fixture("ses", name), &c), Ok(()), "{name}");
        }
        // Each certificate verifies only its own fixtures.
        let reference = creds(&[TOPIC], Some(REFERENCE_CERT));
        assert_eq!(
            check(&fixture("ses", "generated-hookrelay-v2-delivery.json"), &reference),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn fetched_certificates_come_from_the_store_by_their_url() {
        let c = creds(&[TOPIC], None);
        let body = fixture("ses", "generated-signed-v2-notification.json");
        let h = sns_headers(&body);
        let req = post(URL, &h, &body, NOW);
        let url = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-TESTFIXTURE.pem";
        assert_eq!(certificate_url(&req, &c), Ok(Some(url.to_owned())));
        assert_eq!(verify(&req, &c, NOW, &NoCertificates), Err(VerifyError::Certificate("not fetched")));
        let mut store = Store::default();
        store.0.insert(url.to_owned(), Arc::from(fixture("ses", REFERENCE_CERT)));
        assert_eq!(verify(&req, &c, NOW, &store), Ok(()));
        // Someone else's certificate, or something that is not one.
        store.0.insert(url.to_owned(), Arc::from(fixture("ses", OUR_CERT)));
        assert_eq!(verify(&req, &c, NOW, &store), Err(VerifyError::BadSignature));
        store.0.insert(url.to_owned(), Arc::from(&b"<html>not a certificate</html>"[..]));
        assert!(matches!(verify(&req, &c, NOW, &store), Err(VerifyError::Certificate(_))));
        // A certificate URL on another host is refused before any lookup.
        let evil = with(&body, "SigningCertURL", json!("https://sns.us-east-1.amazonaws.com.evil.com/x.pem"));
        let h = sns_headers(&evil);
        let req = post(URL, &h, &evil, NOW);
        assert!(matches!(certificate_url(&req, &c), Err(VerifyError::Certificate(_))));
        assert!(matches!(verify(&req, &c, NOW, &store), Err(VerifyError::Certificate(_))));
        let missing = with(&body, "SigningCertURL", Value::Null);
        let h = sns_headers(&missing);
        assert_eq!(certificate_url(&post(URL, &h, &missing, NOW), &c), Err(VerifyError::Missing("SigningCertURL")));
        assert_eq!(certificate_url(&post(URL, &h, b"text", NOW), &c), Err(VerifyError::Malformed("JSON body")));
    }

    #[test]
    fn tampering_is_refused() {
        let c = creds(&[TOPIC, DOCS_TOPIC], Some(REFERENCE_CERT));
        let body = fixture("ses", "generated-signed-v2-notification.json");
        let text = String::from_utf8(body.clone()).expect("utf-8");

        // A changed Message, on the raw bytes.
        let tampered = text.replacen("user unknown", "user unknowN", 1);
        assert_ne!(tampered, text);
        assert_eq!(check(tampered.as_bytes(), &c), Err(VerifyError::BadSignature));
        // Other signed fields.
        for (key, value) in [("Subject", "Hi"), ("Timestamp", "2017-08-05T00:41:03.154Z"), ("MessageId", "other")] {
            assert_eq!(check(&with(&body, key, json!(value)), &c), Err(VerifyError::BadSignature), "{key}");
        }
        // Dropping the optional Subject changes the string to sign too.
        assert_eq!(check(&with(&body, "Subject", Value::Null), &c), Err(VerifyError::BadSignature));
        // A changed signature.
        let sig = str_field(&serde_json::from_slice(&body).expect("json"), "Signature").expect("sig").to_owned();
        let flipped = format!("{}{}", if sig.starts_with('A') { "B" } else { "A" }, &sig[1..]);
        assert_eq!(check(&with(&body, "Signature", json!(flipped)), &c), Err(VerifyError::BadSignature));
        assert_eq!(
            check(&with(&body, "Signature", json!("not base64!")), &c),
            Err(VerifyError::Malformed("Signature"))
        );
        assert_eq!(check(&with(&body, "Signature", Value::Null), &c), Err(VerifyError::Missing("Signature")));
        // The wrong certificate.
        assert_eq!(check(&body, &creds(&[TOPIC], Some(OUR_CERT))), Err(VerifyError::BadSignature));
        // SignatureVersion swapped, absent (defaults to 1) or unknown.
        assert_eq!(check(&with(&body, "SignatureVersion", json!("1")), &c), Err(VerifyError::BadSignature));
        assert_eq!(check(&with(&body, "SignatureVersion", Value::Null), &c), Err(VerifyError::BadSignature));
        assert_eq!(
            check(&with(&body, "SignatureVersion", json!("3")), &c),
            Err(VerifyError::Malformed("SignatureVersion"))
        );
        let confirmation = fixture("ses", "generated-signed-v1-subscription-confirmation.json");
        assert_eq!(check(&with(&confirmation, "SignatureVersion", json!("2")), &c), Err(VerifyError::BadSignature));
        assert_eq!(check(&with(&confirmation, "SignatureVersion", Value::Null), &c), Ok(()), "1 is the default");
        assert_eq!(
            check(&with(&confirmation, "SubscribeURL", json!("https://sns.us-west-2.amazonaws.com/?x")), &c),
            Err(VerifyError::BadSignature)
        );
        // Required fields, and fields of the wrong type.
        assert_eq!(check(&with(&body, "TopicArn", Value::Null), &c), Err(VerifyError::Missing("TopicArn")));
        assert_eq!(check(&with(&body, "Type", json!(1)), &c), Err(VerifyError::Malformed("Type")));
        assert_eq!(check(b"Successfully validated", &c), Err(VerifyError::Malformed("JSON body")));
        assert_eq!(check(b"[]", &c), Err(VerifyError::Malformed("JSON body")));
    }

    #[test]
    fn fields_cannot_be_recut_with_line_breaks() {
        // Moving "Subject\n<s>" into MessageId keeps the string to sign the
        // same bytes; line breaks outside Message are refused for that reason.
        let c = creds(&[TOPIC], Some(REFERENCE_CERT));
        let body = fixture("ses", "generated-signed-v2-notification.json");
        let v: Value = serde_json::from_slice(&body).expect("json");
        let recut = format!(
            "{}\nSubject\n{}",
            str_field(&v, "MessageId").expect("id"),
            str_field(&v, "Subject").expect("subject")
        );
        let forged = with(&with(&body, "MessageId", json!(recut)), "Subject", Value::Null);
        let env = envelope(&forged).expect("object");
        assert_eq!(string_to_sign(&env), Err(VerifyError::Malformed("MessageId")));
        let h = headers("Content-Type: text/plain");
        assert_eq!(
            verify(&post(URL, &h, &forged, NOW), &c, NOW, &NoCertificates),
            Err(VerifyError::Malformed("MessageId"))
        );
    }

    #[test]
    fn sns_headers_must_agree_with_the_body() {
        let c = creds(&[TOPIC], Some(REFERENCE_CERT));
        let body = fixture("ses", "generated-signed-v2-notification.json");
        let run = |h: &str| verify(&post(URL, &headers(h), &body, NOW), &c, NOW, &NoCertificates);
        assert_eq!(run(""), Ok(()), "the headers are optional");
        assert_eq!(run("x-amz-sns-message-type: Notification"), Ok(()));
        assert_eq!(
            run("x-amz-sns-message-type: SubscriptionConfirmation"),
            Err(VerifyError::Malformed("x-amz-sns-message-type"))
        );
        assert_eq!(
            run("x-amz-sns-message-id: 00000000-0000-0000-0000-000000000000"),
            Err(VerifyError::Malformed("x-amz-sns-message-id"))
        );
        assert_eq!(run(&format!("x-amz-sns-topic-arn: {TOPIC}")), Ok(()));
        assert_eq!(
            run(&format!("x-amz-sns-topic-arn: {OTHER_TOPIC}")),
            Err(VerifyError::Malformed("x-amz-sns-topic-arn"))
        );
        // Content-Type is never looked at.
        assert_eq!(run("Content-Type: application/octet-stream"), Ok(()));
    }

    #[test]
    fn topics_not_in_topic_arns_are_refused() {
        let c = creds(&["arn:aws:sns:us-east-1:123456789012:mine"], Some(REFERENCE_CERT));
        assert_eq!(
            check(&fixture("ses", "generated-signed-v2-notification.json"), &c),
            Err(VerifyError::TopicNotAllowed)
        );
        // A confirmation is authentic but must not be confirmed: it reaches
        // the edge, which asks allows_topic and answers 403.
        assert_eq!(check(&fixture("ses", "generated-signed-v1-subscription-confirmation.json"), &c), Ok(()));
        assert!(!c.allows_topic(DOCS_TOPIC));
        assert!(c.allows_topic("arn:aws:sns:us-east-1:123456789012:mine"));
        assert!(!c.allows_topic("arn:aws:sns:us-east-1:123456789012:mine2"));
        assert!(!c.allows_topic(""));
        // Likewise for our own fixture from someone else's topic.
        let ours = creds(&[TOPIC], Some(OUR_CERT));
        assert_eq!(
            check(&fixture("ses", "generated-hookrelay-v1-subscription-confirmation-other-topic.json"), &ours),
            Ok(())
        );
        assert!(!ours.allows_topic(OTHER_TOPIC));
    }

    fn cert_url(url: &str) -> Result<Option<String>, VerifyError> {
        let body = serde_json::to_vec(&json!({ "SigningCertURL": url })).expect("json");
        let h = HeaderMap::new();
        certificate_url(&post(URL, &h, &body, NOW), &creds(&[TOPIC], None))
    }

    #[test]
    fn certificate_urls_must_be_amazon_sns() {
        for good in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://sns.eu-west-3.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-3242f6d2c76a3c8b9a2ac3a1bd5ee5d4.pem",
            "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-x.pem",
            "https://sns.us-east-1.amazonaws.com:443/SimpleNotificationService-x.pem",
        ] {
            assert_eq!(cert_url(good), Ok(Some(good.to_owned())), "{good}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "HTTPS://sns.us-east-1.amazonaws.com/x.pem",
            "ftp://sns.us-east-1.amazonaws.com/x.pem",
            "file:///etc/x.pem",
            "//sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.cn.evil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com@evil.com/x.pem",
            "https://evil.com@sns.us-east-1.amazonaws.com/x.pem",
            "https://user:pass@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://sns.us-east-1.amazonaws.com:80/x.pem",
            "https://SNS.us-east-1.amazonaws.com/x.pem",
            "https://sns.US-EAST-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.AMAZONAWS.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.PEM",
            "https://sns.us-east-1.amazonaws.com/x.pem.txt",
            "https://sns.us-east-1.amazonaws.com/x.txt",
            "https://sns.us-east-1.amazonaws.com/",
            "https://sns.us-east-1.amazonaws.com",
            "https://sns.us-east-1.amazonaws.com/x.pem?x=.pem",
            "https://sns.us-east-1.amazonaws.com/x.pem#x",
            "https://sns.us-east-1.amazonaws.com/x%2Epem",
            "https://sns.us-east-1.amazonaws.com%2eevil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com\\@evil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com./x.pem",
            "https://sns.us_east-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.amazonaws.com/x.pem",
            "https://xsns.us-east-1.amazonaws.com/x.pem",
            "https://sqs.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.co/x.pem",
            "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://54.239.0.1/x.pem",
            "https://[::1]/x.pem",
            " https://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/x\n.pem",
            "https://ｓｎｓ.us-east-1.amazonaws.com/x.pem",
            "",
        ] {
            assert!(matches!(cert_url(bad), Err(VerifyError::Certificate(_))), "{bad:?}: {:?}", cert_url(bad));
        }
    }

    #[test]
    fn configuration() {
        let err = |f: &dyn Fn(&mut SourceConfig)| {
            let mut cfg = config("ses");
            cfg.topic_arns = vec![TOPIC.into()];
            f(&mut cfg);
            Credentials::from_config(&cfg).expect_err("refused").to_string()
        };
        assert!(err(&|c| c.topic_arns.clear()).starts_with("topic_arns: "));
        assert!(err(&|c| c.topic_arns = vec!["ses-events".into()]).starts_with("topic_arns: "));
        assert!(err(&|c| c.topic_arns = vec![format!("{TOPIC}:0f1e-sub")]).starts_with("topic_arns: "));
        assert!(err(&|c| c.certificate_file = Some(path("missing.pem"))).starts_with("certificate_file: "));
        assert!(err(&|c| c.certificate_file = Some(path("VECTORS.md"))).starts_with("certificate_file: "));
        assert!(err(&|c| c.username = Some("only".into())).starts_with("username/password: "));
        let c = creds(&[TOPIC, DOCS_TOPIC], Some(REFERENCE_CERT));
        let debug = format!("{c:?}");
        assert!(debug.contains("pinned_certificate: true") && debug.contains(TOPIC), "{debug}");
        assert!(ACCEPTS.contains(&"topic_arns") && ACCEPTS.contains(&"certificate_file"));
    }

    /// An unsigned SNS notification around an SES record fixture.
    fn wrap(record: &[u8], sns_message_id: &str) -> Vec<u8> {
        let message = String::from_utf8(record.to_vec()).expect("utf-8");
        serde_json::to_vec(&json!({
            "Type": "Notification", "MessageId": sns_message_id, "TopicArn": TOPIC,
            "Subject": "Amazon SES Email Event Notification", "Message": message,
            "Timestamp": "2024-01-01T00:00:00.000Z", "SignatureVersion": "2", "Signature": "",
        }))
        .expect("json")
    }

    const RECEIVED: i64 = 1_234_567_890_123;

    fn parse_body(body: &[u8]) -> Result<Parsed, ParseError> {
        let h = headers("Content-Type: text/plain; charset=UTF-8");
        parse(&post(URL, &h, body, RECEIVED), &context("ses"))
    }

    fn parse_record(name: &str) -> Vec<Callback> {
        let parsed = parse_body(&wrap(&fixture("ses", name), "sns-id-1")).expect("parses");
        assert_eq!(parsed.action, None, "{name}");
        parsed.callbacks
    }

    /// What an event must normalize to: kind, reason and error text.
    type Outcome = (EventKind, Option<Reason>, Option<&'static str>);

    const EXAMPLE_ID: &str = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000";
    const RCPT: &str = "recipient@example.com";

    #[test]
    fn every_event_publishing_sample_normalizes_as_the_mapping_table_says() {
        let undeliverable = EventKind::Status(Status::Undeliverable);
        #[rustfmt::skip]
        let cases: &[(&str, &str, Outcome, i64, &str)] = &[
            ("event-publishing-send.json", "Send", (EventKind::Status(Status::Sent), None, None), 1_476_421_336_645, RCPT),
            ("event-publishing-delivery.json", "Delivery", (EventKind::Status(Status::Delivered), None, None),
             1_476_919_264_133, RCPT),
            ("event-publishing-delivery-delay.json", "DeliveryDelay",
             (EventKind::Status(Status::Delayed), None, Some("smtp; 421 4.4.1 Unable to connect to remote host")),
             1_592_267_140_095, RCPT),
            ("event-publishing-bounce.json", "Bounce",
             (undeliverable, Some(Reason::Bounced), Some("smtp; 550 5.1.1 user unknown")), 1_501_893_662_669, RCPT),
            ("event-publishing-complaint.json", "Complaint", (EventKind::Complained, None, None), 1_501_893_662_669, RCPT),
            // Reject has no timestamp of its own: the mail's. Its destination is the sender here.
            ("event-publishing-reject.json", "Reject", (undeliverable, Some(Reason::Filtered), Some("Bad content")),
             1_476_466_695_211, "sender@example.com"),
            ("event-publishing-rendering-failure.json", "Rendering Failure",
             (undeliverable, Some(Reason::ProviderError), Some("Attribute 'attributeName' is not present in the rendering data.")),
             1_516_646_586_197, RCPT),
            ("event-publishing-open.json", "Open", (EventKind::Status(Status::Opened), None, None), 1_502_316_019_652, RCPT),
            ("event-publishing-click.json", "Click", (EventKind::Status(Status::Clicked), None, None), 1_502_322_685_570, RCPT),
            ("event-publishing-subscription.json", "Subscription", (EventKind::Unsubscribed, None, None),
             1_641_949_217_910, RCPT),
        ];
        let ctx = context("ses");
        for (name, provider_event, (kind, reason, error), ts, recipient) in cases {
            let callbacks = parse_record(name);
            assert_eq!(callbacks.len(), 1, "{name}");
            let cb = &callbacks[0];
            assert_eq!(cb.event.kind, *kind, "{name}");
            assert_eq!(cb.event.reason, *reason, "{name}");
            assert_eq!(cb.event.error.as_deref(), *error, "{name}");
            assert_eq!(cb.event.ts, *ts, "{name}");
            assert_eq!(cb.event.recipient.as_deref(), Some(*recipient), "{name}");
            assert_eq!(cb.event.provider_event.as_deref(), Some(*provider_event), "{name}");
            assert_eq!(cb.event.provider.as_ref().map(|p| p.as_str()), Some("ses"));
            assert!(cb.event.affects_status, "{name}");
            assert_eq!(cb.event.dedupe_key, key_from_id(&ctx, &format!("sns-id-1:{recipient}")), "{name}");
            let data = &cb.event.detail["data"];
            assert_eq!(str_field(data, "eventType"), Some(*provider_event), "{name}: the raw event is kept");
            assert_eq!(cb.target.id, None, "{name}: no hookrelay_id tag in the AWS samples");
            let pmid = cb.target.provider.as_ref().map(|p| p.message_id.as_str());
            if *name == "event-publishing-subscription.json" {
                assert_eq!(pmid, Some("EXAMPLEe4bccb684-777bc8de-afa7-4970-92b0-f515137b1497-000000"));
            } else {
                assert_eq!(pmid, Some(EXAMPLE_ID), "{name}");
            }
            let url = cb.event.detail.get("url").and_then(Value::as_str);
            if *name == "event-publishing-click.json" {
                assert_eq!(url, Some("http://docs.aws.amazon.com/ses/latest/DeveloperGuide/send-email-smtp.html"));
            } else {
                assert_eq!(url, None, "{name}");
            }
        }
    }

    #[test]
    fn notification_format_samples() {
        let bounce = parse_record("notification-format-bounce.json");
        assert_eq!(bounce.len(), 1);
        assert_eq!(bounce[0].event.kind, EventKind::Status(Status::Undeliverable));
        assert_eq!(bounce[0].event.reason, Some(Reason::Bounced));
        assert_eq!(bounce[0].event.recipient.as_deref(), Some("jane@example.com"));
        assert_eq!(bounce[0].event.error.as_deref(), Some("smtp; 550 5.1.1 <jane@example.com>... User unknown"));
        assert_eq!(bounce[0].event.ts, 1_453_906_784_101);
        assert_eq!(bounce[0].event.provider_event.as_deref(), Some("Bounce"));
        assert_eq!(
            bounce[0].target.provider.as_ref().map(|p| p.message_id.as_str()),
            Some("00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000")
        );

        let complaint = parse_record("notification-format-complaint.json");
        assert_eq!(complaint.len(), 1);
        assert_eq!(complaint[0].event.kind, EventKind::Complained);
        assert_eq!(complaint[0].event.recipient.as_deref(), Some("richard@example.com"));
        assert_eq!(complaint[0].event.ts, RECEIVED, "no timestamp anywhere: the arrival time");
        assert_eq!(complaint[0].event.reason, None);

        let delivery = parse_record("notification-format-delivery.json");
        assert_eq!(delivery.len(), 1, "only delivery.recipients, not every destination");
        assert_eq!(delivery[0].event.kind, EventKind::Status(Status::Delivered));
        assert_eq!(delivery[0].event.recipient.as_deref(), Some("jane@example.com"));
        assert_eq!(delivery[0].event.ts, 1_453_906_778_237);

        // Complete SNS envelopes from the reference.
        for name in ["sns-notification-ses-bounce.json", "sns-notification-event-publishing-bounce.json"] {
            let parsed = parse_body(&fixture("ses", name)).expect("parses");
            assert_eq!(parsed.callbacks.len(), 1, "{name}");
            let cb = &parsed.callbacks[0];
            assert_eq!(cb.event.kind, EventKind::Status(Status::Undeliverable), "{name}");
            assert_eq!(cb.event.reason, Some(Reason::Bounced), "{name}");
            let rcpt = cb.event.recipient.clone().expect("recipient");
            let key = key_from_id(&context("ses"), &format!("19ba9823-d7f2-53c1-860e-cb10e0d13dfc:{rcpt}"));
            assert_eq!(cb.event.dedupe_key, key, "{name}");
        }
    }

    #[test]
    fn a_bounce_listing_three_recipients_yields_three_events() {
        let body = fixture("ses", "generated-hookrelay-v2-bounce-three-recipients.json");
        assert_eq!(check(&body, &creds(&[TOPIC], Some(OUR_CERT))), Ok(()));
        let callbacks = parse_body(&body).expect("parses").callbacks;
        assert_eq!(callbacks.len(), 3);
        let recipients: Vec<_> = callbacks.iter().map(|c| c.event.recipient.clone().expect("recipient")).collect();
        assert_eq!(recipients, ["jane@example.com", "mary@example.com", "richard@example.com"]);
        let mut keys: Vec<_> = callbacks.iter().map(|c| c.event.dedupe_key.clone()).collect();
        keys.dedup();
        assert_eq!(keys.len(), 3, "distinct dedupe keys: {keys:?}");
        for cb in &callbacks {
            assert_eq!(cb.target, callbacks[0].target, "one message");
            assert_eq!(cb.target.id, Some(MessageId::parse("order-ses-3").expect("id")), "from mail.tags");
            assert_eq!(
                cb.target.provider.as_ref().map(|p| p.message_id.as_str()),
                Some("0100018f2b8c1d7e-hookrelay-bounce-000000")
            );
            assert_eq!(cb.event.kind, EventKind::Status(Status::Undeliverable));
            assert_eq!(cb.event.reason, Some(Reason::Bounced));
            let rcpt = cb.event.recipient.as_deref().expect("recipient");
            assert_eq!(cb.event.error, Some(format!("smtp; 550 5.1.1 <{rcpt}>: user unknown")), "its own diagnostic");
            assert_eq!(cb.event.ts, 1_501_893_662_669);
        }
        // A retry of the same SNS message gets the same keys.
        let again = parse_body(&body).expect("parses").callbacks;
        assert_eq!(
            again.iter().map(|c| &c.event.dedupe_key).collect::<Vec<_>>(),
            callbacks.iter().map(|c| &c.event.dedupe_key).collect::<Vec<_>>()
        );
    }

    /// An SES record built from a fixture with some fields replaced.
    fn record_with(name: &str, edit: impl FnOnce(&mut Value)) -> Vec<Callback> {
        let mut record: Value = serde_json::from_slice(&fixture("ses", name)).expect("json");
        edit(&mut record);
        let body = wrap(&serde_json::to_vec(&record).expect("json"), "sns-id-2");
        parse_body(&body).expect("parses").callbacks
    }

    #[test]
    fn bounce_types_and_recipient_lists() {
        let kind_of = |bounce_type: &str, sub_type: &str| {
            let cbs = record_with("event-publishing-bounce.json", |r| {
                r["bounce"]["bounceType"] = json!(bounce_type);
                r["bounce"]["bounceSubType"] = json!(sub_type);
            });
            (cbs[0].event.kind, cbs[0].event.reason)
        };
        let undeliverable = EventKind::Status(Status::Undeliverable);
        for sub in ["General", "NoEmail", "Suppressed", "OnAccountSuppressionList"] {
            assert_eq!(kind_of("Permanent", sub), (undeliverable, Some(Reason::Bounced)), "{sub}");
        }
        for sub in ["General", "MailboxFull", "MessageTooLarge", "ContentRejected", "AttachmentRejected"] {
            assert_eq!(kind_of("Transient", sub), (undeliverable, Some(Reason::Bounced)), "{sub}");
        }
        assert_eq!(kind_of("Undetermined", "Undetermined"), (undeliverable, Some(Reason::Failed)));

        // No diagnostic code: the status code is the error text.
        let cbs = record_with("event-publishing-bounce.json", |r| {
            r["bounce"]["bouncedRecipients"][0].as_object_mut().expect("object").remove("diagnosticCode");
        });
        assert_eq!(cbs[0].event.error.as_deref(), Some("5.1.1"));

        // Deliveries and sends go to each listed recipient.
        let cbs = record_with("event-publishing-delivery.json", |r| {
            r["delivery"]["recipients"] = json!(["a@example.com", "b@example.com"]);
        });
        assert_eq!(
            cbs.iter().filter_map(|c| c.event.recipient.as_deref()).collect::<Vec<_>>(),
            ["a@example.com", "b@example.com"]
        );
        let cbs = record_with("event-publishing-send.json", |r| {
            r["mail"]["destination"] = json!(["a@example.com", "b@example.com", "c@example.com"]);
        });
        assert_eq!(cbs.len(), 3);
        // A delay without a diagnostic code: its type.
        let cbs = record_with("event-publishing-delivery-delay.json", |r| {
            r["deliveryDelay"]["delayedRecipients"] = json!([{"emailAddress": "a@example.com"}]);
        });
        assert_eq!(cbs[0].event.error.as_deref(), Some("TransientCommunicationFailure"));
        // Opens of a message sent to several people name nobody.
        let cbs = record_with("event-publishing-open.json", |r| {
            r["mail"]["destination"] = json!(["a@example.com", "b@example.com"]);
        });
        assert_eq!(cbs.len(), 1);
        assert_eq!(cbs[0].event.recipient, None);
        assert_eq!(cbs[0].event.dedupe_key, key_from_id(&context("ses"), "sns-id-2:"));
        // A bounce without its recipient list is still recorded once.
        let cbs = record_with("event-publishing-bounce.json", |r| {
            r["bounce"].as_object_mut().expect("object").remove("bouncedRecipients");
        });
        assert_eq!((cbs.len(), cbs[0].event.recipient.clone()), (1, None));
        // No timestamps at all: the arrival time.
        let cbs = record_with("event-publishing-send.json", |r| {
            r["mail"].as_object_mut().expect("object").remove("timestamp");
        });
        assert_eq!(cbs[0].event.ts, RECEIVED);
    }

    #[test]
    fn hookrelay_id_comes_from_the_message_tag() {
        let cbs = record_with("event-publishing-delivery.json", |r| {
            r["mail"]["tags"]["hookrelay_id"] = json!(["order-77"]);
        });
        assert_eq!(cbs[0].target.id, Some(MessageId::parse("order-77").expect("id")));
        assert_eq!(cbs[0].target.provider.as_ref().map(|p| p.message_id.as_str()), Some(EXAMPLE_ID));
        // A tag that is not a valid id is ignored; the provider id still correlates.
        let cbs = record_with("event-publishing-delivery.json", |r| {
            r["mail"]["tags"]["hookrelay_id"] = json!(["not a valid id!"]);
        });
        assert_eq!(cbs[0].target.id, None);
        assert!(cbs[0].target.provider.is_some());
        let signed = parse_body(&fixture("ses", "generated-hookrelay-v2-delivery.json")).expect("parses").callbacks;
        assert_eq!(signed[0].target.id, Some(MessageId::parse("order-ses-1").expect("id")));
    }

    #[test]
    fn subscription_changes() {
        let cbs = record_with("event-publishing-subscription.json", |r| {
            r["subscription"]["newTopicPreferences"] = json!({
                "unsubscribeAll": false,
                "topicSubscriptionStatus": [{"topicName": "ExampleTopicName", "subscriptionStatus": "OptIn"}],
            });
        });
        assert_eq!(cbs[0].event.kind, EventKind::Resubscribed);
        let cbs = record_with("event-publishing-subscription.json", |r| {
            r["subscription"]["newTopicPreferences"] = json!({
                "unsubscribeAll": false,
                "topicSubscriptionStatus": [
                    {"topicName": "A", "subscriptionStatus": "OptIn"},
                    {"topicName": "B", "subscriptionStatus": "OptOut"},
                ],
            });
        });
        assert_eq!(cbs[0].event.kind, EventKind::Unsubscribed);
    }

    #[test]
    fn confirmations_notices_and_unknown_events() {
        let body = fixture("ses", "generated-signed-v1-subscription-confirmation.json");
        let v: Value = serde_json::from_slice(&body).expect("json");
        let parsed = parse_body(&body).expect("parses");
        assert!(parsed.callbacks.is_empty());
        assert_eq!(
            parsed.action,
            Some(Action::ConfirmSubscription {
                topic_arn: DOCS_TOPIC.into(),
                subscribe_url: str_field(&v, "SubscribeURL").expect("url").to_owned(),
            })
        );
        // A SubscribeURL off Amazon SNS is never handed to the edge.
        for url in [
            "https://sns.us-west-2.amazonaws.com.evil.com/?Action=ConfirmSubscription",
            "http://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
            "https://x@sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
            "https://sns.us-west-2.amazonaws.com:8443/?Action=ConfirmSubscription",
        ] {
            let body = with(&fixture("ses", "sns-subscription-confirmation.json"), "SubscribeURL", json!(url));
            assert!(parse_body(&body).is_err(), "{url}");
        }
        let missing = with(&fixture("ses", "sns-subscription-confirmation.json"), "SubscribeURL", Value::Null);
        assert!(parse_body(&missing).is_err());

        let notice = parse_body(&fixture("ses", "generated-hookrelay-v2-validation-notice.json")).expect("parses");
        assert_eq!(notice, Parsed::ignore("SNS message of type Notification that is not an SES event"));
        assert_eq!(
            parse_body(&fixture("ses", "sns-notification-docs-example.json")).expect("parses").action,
            Some(Action::Ignore { why: "SNS message of type Notification that is not an SES event" })
        );
        let unsubscribed =
            with(&fixture("ses", "sns-subscription-confirmation.json"), "Type", json!("UnsubscribeConfirmation"));
        assert_eq!(
            parse_body(&unsubscribed).expect("parses"),
            Parsed::ignore("SNS message of type UnsubscribeConfirmation")
        );
        let succeeded = wrap(
            br#"{"notificationType":"AmazonSnsSubscriptionSucceeded","message":"You have successfully subscribed"}"#,
            "n",
        );
        assert!(matches!(parse_body(&succeeded).expect("parses").action, Some(Action::Ignore { .. })));

        let odd = record_with("event-publishing-send.json", |r| r["eventType"] = json!("BrandNewThing"));
        assert_eq!(odd.len(), 1, "one event, not one per destination");
        assert_eq!(odd[0].event.kind, EventKind::Unknown);
        assert_eq!(odd[0].event.provider_event.as_deref(), Some("BrandNewThing"));
        assert_eq!(odd[0].event.recipient.as_deref(), Some(RCPT), "the only destination");
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b"{"[..],
            b"",
            b"[]",
            b"\"Notification\"",
            br#"{"Type":"Notification"}"#,
            br#"{"Type":"Notification","Message":1}"#,
            br#"{"Type":"Weird","Message":"{}"}"#,
            br#"{"Message":"{}"}"#,
            br#"{"Type":"SubscriptionConfirmation","TopicArn":"arn:aws:sns:x:1:t"}"#,
        ] {
            assert!(parse_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // JSON that is not an SES event is acknowledged and records nothing;
        // an SES event without its mail cannot be read.
        assert_eq!(
            parse_body(&wrap(br#"{"hello":"world"}"#, "x")).expect("parses"),
            Parsed::ignore("SNS message of type Notification that is not an SES event")
        );
        assert!(parse_body(&wrap(br#"{"eventType":"Send"}"#, "x")).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(body in mutations(vec![
            fixture("ses", "generated-signed-v2-notification.json"),
            fixture("ses", "generated-signed-v1-subscription-confirmation.json"),
            fixture("ses", "generated-hookrelay-v2-bounce-three-recipients.json"),
            fixture("ses", "sns-notification-ses-bounce.json"),
            wrap(&fixture("ses", "event-publishing-subscription.json"), "m"),
            wrap(&fixture("ses", "event-publishing-click.json"), "m"),
        ]), pinned in any::<bool>()) {
            let h = sns_headers(&body);
            let req = post(URL, &h, &body, 0);
            let c = creds(&[TOPIC, DOCS_TOPIC], pinned.then_some(REFERENCE_CERT));
            let mut store = Store::default();
            if let Ok(Some(url)) = certificate_url(&req, &c) {
                store.0.insert(url, Arc::from(fixture("ses", REFERENCE_CERT)));
            }
            let _ = verify(&req, &c, NOW, &store);
            let _ = parse(&req, &context("ses"));
        }
    }
}
