//! Micro-benchmarks of the callback path's pure code: every provider's
//! `verify` and `parse` on a realistic signed request (through the public
//! [`Source`] API, as the edge calls them), then the batch planner on the
//! commands a 100-event SendGrid batch becomes.
//!
//! Every case is checked once before it is timed (it verifies, and parses to
//! the expected number of events), so the figures are those of the success
//! path, not of an early rejection. Signatures come from the published or
//! generated vectors under `fixtures/providers/`; SendGrid's are made here
//! with a fresh P-256 key (ECDSA signing is randomized, so a batch of our own
//! size has no fixed vector). SES uses a pinned certificate: nothing is
//! fetched.
//!
//! Run: `cargo bench --bench callbacks` (add `-- --quick` for a fast look).

use std::hint::black_box;
use std::path::PathBuf;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hookrelay::config::SourceConfig;
use hookrelay::domain::Secret;
use hookrelay::domain::subscription::SubscriptionFilter;
use hookrelay::domain::{MessageId, Status, SubscriptionId};
use hookrelay::plan::{Command, Fresh, Loaded, plan};
use hookrelay::providers::{CallbackRequest, NoCertificates, Source};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte point follows.
const P256_SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
/// When the generated SendGrid requests were signed (unix seconds).
const SENDGRID_TS: i64 = 1_700_000_000;
/// Messages in the generated SendGrid batch; each gets four events.
const BATCH_MESSAGES: usize = 25;

/// One callback as the provider sends it, and what it must yield.
struct Case {
    name: &'static str,
    source: Source,
    method: Method,
    /// The URL as hookrelay rebuilds it (with the query, if any).
    url: String,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The clock at verification (epoch ms): inside the signature's window.
    now: i64,
    /// Events the request parses to.
    events: usize,
}

impl Case {
    fn request(&self) -> CallbackRequest<'_> {
        let query = self.url.split_once('?').map_or("", |(_, q)| q);
        CallbackRequest {
            method: &self.method,
            url: &self.url,
            query,
            headers: &self.headers,
            body: &self.body,
            received_at: self.now,
        }
    }

    /// Fails loudly unless the request verifies and parses completely, so
    /// that no benchmark times a rejection.
    fn check(&self) {
        let req = self.request();
        if let Err(e) = self.source.verify(&req, self.now, &NoCertificates) {
            panic!("{}: the sample does not verify: {e}", self.name);
        }
        let parsed =
            self.source.parse(&req).unwrap_or_else(|e| panic!("{}: the sample does not parse: {e}", self.name));
        assert_eq!(parsed.callbacks.len(), self.events, "{}: events", self.name);
        assert_eq!(parsed.skipped, 0, "{}: skipped elements", self.name);
        assert!(
            parsed.callbacks.iter().all(|cb| cb.target.id.is_some() || cb.target.provider.is_some()),
            "{}",
            self.name
        );
    }
}

fn fixture(provider: &str, name: &str) -> Vec<u8> {
    let path = fixture_path(provider, name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn fixture_path(provider: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("{}/fixtures/providers/{provider}/{name}", env!("CARGO_MANIFEST_DIR")))
}

fn fixture_text(provider: &str, name: &str) -> String {
    String::from_utf8(fixture(provider, name)).expect("fixture is UTF-8")
}

/// Headers from `Name: value` lines; blank lines and `#` comments skipped.
fn headers(text: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, value) = line.split_once(':').expect("a `Name: value` header line");
        map.append(
            HeaderName::from_bytes(name.trim().as_bytes()).expect("header name"),
            HeaderValue::from_str(value.trim()).expect("header value"),
        );
    }
    map
}

fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn source(cfg: SourceConfig) -> Source {
    Source::from_config(&cfg).unwrap_or_else(|e| panic!("source {}: {e}", cfg.name))
}

fn config(provider: &str) -> SourceConfig {
    SourceConfig { name: format!("{provider}-bench"), provider: provider.into(), ..SourceConfig::default() }
}

/// Credentials in the webhook URL: what the unsigned providers rely on.
fn basic_config(provider: &str) -> SourceConfig {
    SourceConfig {
        username: Some("hooks".into()),
        password: Some(Secret::new("long-random-secret")),
        ..config(provider)
    }
}

fn post(name: &'static str, source: Source, url: &str, headers: HeaderMap, body: Vec<u8>, now: i64) -> Case {
    Case { name, source, method: Method::POST, url: url.into(), headers, body, now, events: 1 }
}

/// A fresh P-256 key pair and its public key as SendGrid shows it (base64 SPKI).
fn sendgrid_key() -> (EcdsaKeyPair, String) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("P-256 key generation");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).expect("P-256 key");
    let mut spki = hex::decode(P256_SPKI_PREFIX).expect("hex");
    spki.extend_from_slice(pair.public_key().as_ref());
    (pair, STANDARD.encode(spki))
}

/// A SendGrid case: `body` signed at [`SENDGRID_TS`] the way SendGrid signs.
fn sendgrid(name: &'static str, key: &EcdsaKeyPair, public_key: &str, body: Vec<u8>, events: usize) -> Case {
    let ts = SENDGRID_TS.to_string();
    let signature = key.sign(&SystemRandom::new(), &[ts.as_bytes(), &body].concat()).expect("ECDSA signing");
    let h = headers(&format!(
        "Content-Type: application/json\n\
         X-Twilio-Email-Event-Webhook-Timestamp: {ts}\n\
         X-Twilio-Email-Event-Webhook-Signature: {}",
        STANDARD.encode(signature.as_ref())
    ));
    let cfg = SourceConfig { public_keys: vec![public_key.to_owned()], ..config("sendgrid") };
    let now = SENDGRID_TS * 1000 + 60_000;
    Case { events, ..post(name, source(cfg), "https://relay.example.com/callbacks/sendgrid", h, body, now) }
}

/// A realistic SendGrid batch: [`BATCH_MESSAGES`] messages, each processed,
/// delivered, opened and clicked, with the fields SendGrid sends (from the
/// fixtures) and hookrelay's id as a custom argument. Compact JSON and CRLF,
/// as SendGrid posts it.
fn sendgrid_batch() -> Vec<u8> {
    let mut events = Vec::with_capacity(BATCH_MESSAGES * 4);
    for m in 0..BATCH_MESSAGES {
        let sg_id = format!("wrfRRvF7Q0GgwUo2CvD{m:03}");
        let common = json!({
            "email": format!("recipient{m}@example.com"),
            "smtp-id": format!("<{sg_id}@ismtpd0006p1sjc2.sendgrid.net>"),
            "sg_message_id": format!("{sg_id}.filter0425p1mdw1.13037.57168B4A1D.0"),
            "category": ["welcome", "onboarding"],
            "hookrelay_id": format!("msg_bench_{m:04}"),
        });
        let specific = [
            json!({"event": "processed"}),
            json!({"event": "delivered", "ip": "167.89.17.173", "tls": 1,
                   "response": "250 2.0.0 OK 1461095248 m143si2210036ioe.159 - gsmtp "}),
            json!({"event": "open", "ip": "192.0.2.10", "sg_machine_open": false,
                   "useragent": "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko)"}),
            json!({"event": "click", "ip": "192.0.2.10", "url": "https://example.com/welcome?utm_source=email",
                   "url_offset": {"index": 0, "type": "html"},
                   "useragent": "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko)"}),
        ];
        for (k, extra) in specific.into_iter().enumerate() {
            let mut event = common.clone();
            let map = event.as_object_mut().expect("object");
            map.insert("timestamp".into(), json!(SENDGRID_TS - 600 + (k as i64) * 60));
            map.insert("sg_event_id".into(), json!(format!("ev-{m:04}-{k}-nOSv8m0eTQvxvwNw")));
            map.extend(extra.as_object().expect("object").clone());
            events.push(event);
        }
    }
    let mut body = serde_json::to_vec(&events).expect("JSON");
    body.extend_from_slice(b"\r\n");
    body
}

fn postmark() -> Case {
    let h = headers(&format!(
        "Content-Type: application/json\nAuthorization: {}",
        basic_auth("hooks", "long-random-secret")
    ));
    let body = fixture("postmark", "delivery.json");
    post("postmark", source(basic_config("postmark")), "https://relay.example.com/callbacks/postmark", h, body, 0)
}

/// The generated signed fixture (mailgun-php's key), hookrelay's id in `user-variables`.
fn mailgun() -> Case {
    let cfg = SourceConfig {
        secrets: vec![Secret::new("key-3ax6xnjp29jd6fds4gc373sgvjxteol0")],
        id_field: "relay_message_id".into(),
        ..config("mailgun")
    };
    let body = fixture("mailgun", "generated-signed-delivered.json");
    let h = headers("Content-Type: application/json");
    let now = 1_534_108_637_000 + 60_000;
    post("mailgun", source(cfg), "https://relay.example.com/callbacks/mailgun", h, body, now)
}

/// A Delivery notification signed with SignatureVersion 2 (RSA-2048,
/// SHA-256), verified against the pinned fixture certificate.
fn ses() -> Case {
    let cfg = SourceConfig {
        topic_arns: vec!["arn:aws:sns:us-east-1:123456789012:ses-events".into()],
        certificate_file: Some(fixture_path("ses", "generated-hookrelay-cert.pem")),
        ..config("ses")
    };
    let body = fixture("ses", "generated-hookrelay-v2-delivery.json");
    let envelope: Value = serde_json::from_slice(&body).expect("JSON");
    let field = |key: &str| envelope[key].as_str().expect("envelope field").to_owned();
    let h = headers(&format!(
        "Content-Type: text/plain; charset=UTF-8\n\
         x-amz-sns-message-type: {}\nx-amz-sns-message-id: {}\nx-amz-sns-topic-arn: {}",
        field("Type"),
        field("MessageId"),
        field("TopicArn")
    ));
    post("ses", source(cfg), "https://relay.example.com/callbacks/ses", h, body, 1_700_000_000_000)
}

/// The generated `delivered` status callback and its X-Twilio-Signature.
fn twilio() -> Case {
    let cfg = SourceConfig { secrets: vec![Secret::new("hookrelay-test-auth-token")], ..config("twilio") };
    let body = fixture("twilio", "status-delivered.txt").trim_ascii_end().to_vec();
    let h = headers(&fixture_text("twilio", "status-delivered.headers"));
    let url = "https://relay.example.com/callbacks/twilio?hookrelay_id=order-7";
    post("twilio", source(cfg), url, h, body, 1_718_367_224_000)
}

/// The generated Svix-signed `email.delivered`, the svix test secret.
fn resend() -> Case {
    let cfg = SourceConfig {
        secrets: vec![Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")],
        id_field: "relay_message_id".into(),
        ..config("resend")
    };
    let body = fixture("resend", "generated-signed-email.delivered.payload");
    let h = headers(&fixture_text("resend", "generated-signed-email.delivered.headers"));
    let now = 1_718_367_224_000 + 30_000;
    post("resend", source(cfg), "https://relay.example.com/callbacks/resend", h, body, now)
}

fn mailjet() -> Case {
    let h = headers(&format!(
        "Content-Type: application/json\nAuthorization: {}",
        basic_auth("hooks", "long-random-secret")
    ));
    let body = fixture("mailjet", "sent.json");
    post("mailjet", source(basic_config("mailjet")), "https://relay.example.com/callbacks/mailjet", h, body, 0)
}

fn brevo() -> Case {
    let cfg = SourceConfig { bearer_token: Some(Secret::new("long-random-token")), ..config("brevo") };
    let h = headers("Content-Type: application/json\nAuthorization: Bearer long-random-token");
    let body = fixture("brevo", "delivered.json");
    post("brevo", source(cfg), "https://relay.example.com/callbacks/brevo", h, body, 1_700_000_000_000)
}

/// A SparkPost batch: injection, delivery, open and click for one
/// recipient, a ping and an inbound relay event (both yield nothing).
fn sparkpost() -> Case {
    let h = headers(&format!(
        "Content-Type: application/json\nAuthorization: {}",
        basic_auth("hooks", "long-random-secret")
    ));
    let body = fixture("sparkpost", "generated-batch.json");
    let url = "https://relay.example.com/callbacks/sparkpost";
    Case { events: 4, ..post("sparkpost", source(basic_config("sparkpost")), url, h, body, 1_700_000_000_000) }
}

/// A Messages API status signed with an HS256 JWT (the generated vector).
fn vonage_messages() -> Case {
    let cfg = SourceConfig { secrets: vec![Secret::new("secret-32-bytes-minimum-xxxxxxxxx")], ..config("vonage") };
    let token = fixture_text("vonage", "generated-messages-status.jwt");
    let h = headers(&format!("Content-Type: application/json\nAuthorization: Bearer {}", token.trim()));
    let body = fixture("vonage", "generated-messages-status.payload");
    let now = 1_682_949_600_000 + 60_000;
    post("vonage-messages-jwt", source(cfg), "https://relay.example.com/callbacks/vonage", h, body, now)
}

/// An SMS delivery receipt by GET (Vonage's default), signed with
/// HMAC-SHA256 in its `sig` parameter.
fn vonage_sms() -> Case {
    let cfg = SourceConfig {
        secrets: vec![Secret::new("secret")],
        signature_method: Some("sha256".into()),
        ..config("vonage")
    };
    let query = fixture_text("vonage", "sms-dlr-signed-sha256.txt");
    let url = format!("https://relay.example.com/callbacks/vonage?{}", query.trim());
    let now = 1_577_887_200_000 + 60_000;
    Case { method: Method::GET, url, ..post("vonage-sms-dlr", source(cfg), "", HeaderMap::new(), Vec::new(), now) }
}

fn cases() -> Vec<Case> {
    let (key, public_key) = sendgrid_key();
    vec![
        sendgrid("sendgrid", &key, &public_key, fixture("sendgrid", "delivered.json"), 1),
        sendgrid("sendgrid-batch-100", &key, &public_key, sendgrid_batch(), BATCH_MESSAGES * 4),
        postmark(),
        mailgun(),
        ses(),
        twilio(),
        resend(),
        mailjet(),
        brevo(),
        sparkpost(),
        vonage_messages(),
        vonage_sms(),
    ]
}

/// `provider_verify/<case>` and `provider_parse/<case>`; throughput is in
/// events, so batches compare with single events per event.
fn providers(c: &mut Criterion) {
    let cases = cases();
    for case in &cases {
        case.check();
    }
    let mut group = c.benchmark_group("provider_verify");
    for case in &cases {
        let req = case.request();
        group.throughput(Throughput::Elements(case.events as u64));
        group.bench_function(case.name, |b| {
            b.iter(|| case.source.verify(black_box(&req), black_box(case.now), &NoCertificates))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("provider_parse");
    for case in &cases {
        let req = case.request();
        group.throughput(Throughput::Elements(case.events as u64));
        group.bench_function(case.name, |b| b.iter(|| case.source.parse(black_box(&req))));
    }
    group.finish();
}

/// `ingest_plan/*`: the planner on the 100 commands the SendGrid batch
/// becomes at the edge, against an empty database (every message new).
fn ingest_plan(c: &mut Criterion) {
    let (key, public_key) = sendgrid_key();
    let case = sendgrid("sendgrid-batch-100", &key, &public_key, sendgrid_batch(), BATCH_MESSAGES * 4);
    case.check();
    let parsed = case.source.parse(&case.request()).expect("the batch parses");
    // What the edge submits (src/http/callbacks.rs).
    let commands: Vec<Command> = parsed
        .callbacks
        .into_iter()
        .map(|mut cb| {
            cb.event.scrub();
            Command::Event {
                target: cb.target,
                event: Box::new(cb.event),
                create: true,
                want_message: false,
                guard: None,
            }
        })
        .collect();
    let now = SENDGRID_TS * 1000 + 60_000;
    let timestamp = "2023-11-14T22:14:20Z";
    let subscriber = SubscriptionFilter {
        id: SubscriptionId::parse("sub_bench").expect("subscription id"),
        statuses: None,
        all_events: false,
    };
    let loaded =
        |subscribers: &[SubscriptionFilter]| Loaded { subscriptions: subscribers.to_vec(), ..Loaded::default() };

    let checked = plan(&commands, loaded(&[]), now, timestamp.into(), &mut Fresh);
    assert_eq!(checked.outcomes.len(), commands.len());
    assert_eq!(checked.messages.len(), BATCH_MESSAGES, "one new message per hookrelay id");
    assert!(checked.deliveries.is_empty());
    let checked = plan(&commands, loaded(std::slice::from_ref(&subscriber)), now, timestamp.into(), &mut Fresh);
    let first = MessageId::parse("msg_bench_0000").expect("id");
    let record = checked.messages.iter().find(|m| m.record.id == first).map(|m| &m.record).expect("planned");
    assert_eq!(record.state.status, Status::Clicked);
    // A delivery for every status change: ENQUEUED is not sent, so SENT,
    // DELIVERED, OPENED and CLICKED per message.
    assert_eq!(checked.deliveries.len(), BATCH_MESSAGES * 4);

    let mut group = c.benchmark_group("ingest_plan");
    group.throughput(Throughput::Elements(commands.len() as u64));
    for (name, subscribers) in
        [("batch-100/no-subscribers", &[][..]), ("batch-100/one-subscriber", std::slice::from_ref(&subscriber))]
    {
        group.bench_function(name, |b| {
            // The inputs are consumed by `plan`; building them is not timed.
            b.iter_batched(
                || (loaded(subscribers), timestamp.to_owned()),
                |(loaded, ts)| plan(black_box(&commands), loaded, now, ts, &mut Fresh),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, providers, ingest_plan);
criterion_main!(benches);
