//! ses callbacks end to end (both backends): SNS-signed notifications
//! checked against a pinned certificate, per-recipient fan-out, and
//! subscription confirmations gated on `topic_arns`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hookrelay::app::Services;
use hookrelay::config::SourceConfig;
use hookrelay::http::callbacks::SnsClient;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, TestDb, start_with, test_config};

backend_tests!(
    a_signed_notification_lands_in_the_history,
    a_bounce_to_three_recipients_records_three_events,
    forged_and_foreign_notifications_are_refused,
    subscriptions_are_confirmed_only_for_allowed_topics,
    a_failed_confirmation_answers_503,
    an_unpinned_source_fetches_the_certificate_once,
    an_unreachable_certificate_answers_503,
);

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-events";

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{}/fixtures/providers/ses/{name}", env!("CARGO_MANIFEST_DIR")))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).expect("fixture")
}

/// An SES source pinned to the certificate of the generated fixtures.
fn ses_source(name: &str, topic: &str) -> SourceConfig {
    SourceConfig {
        name: name.into(),
        provider: "ses".into(),
        topic_arns: vec![topic.into()],
        certificate_file: Some(fixture_path("generated-hookrelay-cert.pem")),
        ..SourceConfig::default()
    }
}

/// Amazon SNS as the test sets it up: serves the fixtures' certificate (or
/// fails), accepts (or fails) confirmations, and records what was asked.
#[derive(Debug, Default)]
struct FakeSns {
    certificate: Option<Vec<u8>>,
    confirms: bool,
    asked: Mutex<Vec<String>>,
}

impl FakeSns {
    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("asked").clone()
    }
}

#[async_trait::async_trait]
impl SnsClient for FakeSns {
    async fn certificate(&self, url: &str, _limit: usize) -> Result<Vec<u8>, String> {
        self.asked.lock().expect("asked").push(format!("certificate {url}"));
        self.certificate.clone().ok_or_else(|| "connection refused".to_owned())
    }

    async fn confirm(&self, url: &str) -> Result<(), String> {
        self.asked.lock().expect("asked").push(format!("confirm {url}"));
        if self.confirms { Ok(()) } else { Err("status 500".into()) }
    }
}

async fn spawn_with(backend: Backend, sns: Arc<FakeSns>, pinned: bool) -> Option<TestApp> {
    let db = TestDb::new(backend).await?;
    let mut config = test_config(&db);
    for (name, topic) in [("ses", TOPIC), ("ses-other", "arn:aws:sns:eu-west-1:123456789012:other-events")] {
        let mut source = ses_source(name, topic);
        if !pinned {
            source.certificate_file = None;
        }
        config.sources.push(source);
    }
    Some(start_with(config, db, Services { sns: Some(sns) }).await)
}

async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_with(backend, Arc::new(FakeSns { confirms: true, ..FakeSns::default() }), true).await
}

fn subscribe_url() -> String {
    let confirmation: Value = serde_json::from_slice(&fixture("generated-hookrelay-v1-subscription-confirmation.json"))
        .expect("fixture is JSON");
    confirmation["SubscribeURL"].as_str().expect("SubscribeURL").to_owned()
}

/// Posts `body` to `/callbacks/{source}` as SNS does: `text/plain` and the
/// `x-amz-sns-*` headers.
async fn sns(app: &TestApp, source: &str, body: Vec<u8>) -> (u16, Value) {
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let (kind, id, topic) = (field("Type"), field("MessageId"), field("TopicArn"));
    let headers = [
        ("content-type", "text/plain; charset=UTF-8"),
        ("user-agent", "Amazon Simple Notification Service Agent"),
        ("x-amz-sns-message-type", kind.as_str()),
        ("x-amz-sns-message-id", id.as_str()),
        ("x-amz-sns-topic-arn", topic.as_str()),
    ];
    app.post_raw(&format!("/callbacks/{source}"), &headers, body).await
}

async fn nothing_recorded(app: &TestApp) {
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"], json!([]), "{list}");
}

async fn a_signed_notification_lands_in_the_history(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let delivery = fixture("generated-hookrelay-v2-delivery.json");
    let (status, body) = sns(&app, "ses", delivery.clone()).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 1, "duplicates": 0})), "{body}");
    // SNS retries the same message: acknowledged, not recorded twice.
    let (status, body) = sns(&app, "ses", delivery).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 0, "duplicates": 1})), "{body}");
    // A SignatureVersion 1 notification about the same message.
    assert_eq!(sns(&app, "ses", fixture("generated-hookrelay-v1-send.json")).await.0, 200);
    // SES's topic validation notice is acknowledged and records nothing.
    let (status, body) = sns(&app, "ses", fixture("generated-hookrelay-v2-validation-notice.json")).await;
    assert_eq!((status, body["accepted"].clone()), (200, json!(0)), "{body}");

    let (status, message) = app.get("/messages/order-ses-1").await;
    assert_eq!(status, 200, "correlated by the hookrelay_id message tag: {message}");
    assert_eq!(message["status"], "DELIVERED");
    assert_eq!(app.history_types("order-ses-1").await, ["SENT", "DELIVERED"]);
    let (_, history) = app.get("/messages/order-ses-1/history?type=DELIVERED").await;
    let delivered = &history["results"][0];
    assert_eq!(delivered["provider"], "ses");
    assert_eq!(delivered["provider_event"], "Delivery");
    assert_eq!(delivered["recipient"], "recipient@example.com");
    assert_eq!(delivered["data"]["mail"]["messageId"], "0100018f2b8c1d7e-hookrelay-delivery-000000");
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"].as_array().map(Vec::len), Some(1), "{list}");
}

async fn a_bounce_to_three_recipients_records_three_events(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (status, body) = sns(&app, "ses", fixture("generated-hookrelay-v2-bounce-three-recipients.json")).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 3, "duplicates": 0})), "{body}");
    assert_eq!(app.history_types("order-ses-3").await, ["UNDELIVERABLE", "UNDELIVERABLE", "UNDELIVERABLE"]);
    let (_, message) = app.get("/messages/order-ses-3").await;
    assert_eq!(message["status"], "UNDELIVERABLE");
    let (_, history) = app.get("/messages/order-ses-3/history").await;
    let mut recipients: Vec<_> =
        history["results"].as_array().expect("results").iter().map(|e| e["recipient"].clone()).collect();
    recipients.sort_by_key(|r| r.to_string());
    assert_eq!(recipients, [json!("jane@example.com"), json!("mary@example.com"), json!("richard@example.com")]);
    assert!(history["results"].as_array().expect("results").iter().all(|e| e["reason"] == "BOUNCED"), "{history}");
}

async fn forged_and_foreign_notifications_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let delivery = fixture("generated-hookrelay-v2-delivery.json");
    // A changed Message, on the raw bytes.
    let text = String::from_utf8(delivery.clone()).expect("utf-8");
    let tampered = text.replacen("250 2.6.0 Message received", "250 2.6.0 Message Received", 1);
    assert_ne!(tampered, text);
    let (status, body) = sns(&app, "ses", tampered.into_bytes()).await;
    assert_eq!((status, body["message"].clone()), (401, json!("callback authentication failed")));
    // The AWS docs' placeholder signature.
    assert_eq!(sns(&app, "ses", fixture("sns-notification-event-publishing-bounce.json")).await.0, 401);
    // Authentic, but from a topic this source does not take.
    assert_eq!(sns(&app, "ses-other", delivery).await.0, 401);
    // Not even JSON.
    assert_eq!(sns(&app, "ses", b"Successfully validated".to_vec()).await.0, 401);
    nothing_recorded(&app).await;
}

async fn subscriptions_are_confirmed_only_for_allowed_topics(backend: Backend) {
    let sns = Arc::new(FakeSns { confirms: true, ..FakeSns::default() });
    let Some(app) = spawn_with(backend, sns.clone(), true).await else { return };
    let foreign = fixture("generated-hookrelay-v1-subscription-confirmation-other-topic.json");
    let (status, body) = sns_post(&app, foreign).await;
    assert_eq!(status, 403, "{body}");
    assert!(sns.asked().is_empty(), "a foreign topic's SubscribeURL is never visited");
    // The allowed topic: hookrelay visits the SubscribeURL, once.
    let (status, body) = sns_post(&app, fixture("generated-hookrelay-v1-subscription-confirmation.json")).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 0, "duplicates": 0})), "{body}");
    assert_eq!(sns.asked(), [format!("confirm {}", subscribe_url())]);
    nothing_recorded(&app).await;
}

async fn sns_post(app: &TestApp, body: Vec<u8>) -> (u16, Value) {
    sns(app, "ses", body).await
}

/// SNS retries a confirmation that gets no 2xx: when visiting the
/// SubscribeURL fails, the answer is 503.
async fn a_failed_confirmation_answers_503(backend: Backend) {
    let sns = Arc::new(FakeSns::default());
    let Some(app) = spawn_with(backend, sns.clone(), true).await else { return };
    let (status, body) = sns_post(&app, fixture("generated-hookrelay-v1-subscription-confirmation.json")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "api_error");
    assert_eq!(sns.asked(), [format!("confirm {}", subscribe_url())]);
}

/// Without a pinned certificate the signing certificate is fetched from
/// the `SigningCertURL`, kept once it verified a signature, and not
/// fetched again.
async fn an_unpinned_source_fetches_the_certificate_once(backend: Backend) {
    let pem = std::fs::read(fixture_path("generated-hookrelay-cert.pem")).expect("certificate");
    let sns = Arc::new(FakeSns { certificate: Some(pem), ..FakeSns::default() });
    let Some(app) = spawn_with(backend, sns.clone(), false).await else { return };
    let (status, body) = sns_post(&app, fixture("generated-hookrelay-v2-delivery.json")).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 1, "duplicates": 0})), "{body}");
    let (status, _) = sns_post(&app, fixture("generated-hookrelay-v1-send.json")).await;
    assert_eq!(status, 200);
    let asked = sns.asked();
    assert_eq!(asked.len(), 1, "fetched once, then from the cache: {asked:?}");
    assert!(asked[0].starts_with("certificate https://sns.") && asked[0].ends_with(".pem"), "{asked:?}");
}

/// A certificate that cannot be fetched is not the sender's fault: 503, so
/// SNS retries, and nothing is recorded.
async fn an_unreachable_certificate_answers_503(backend: Backend) {
    let sns = Arc::new(FakeSns::default());
    let Some(app) = spawn_with(backend, sns.clone(), false).await else { return };
    let (status, body) = sns_post(&app, fixture("generated-hookrelay-v2-delivery.json")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(sns.asked().len(), 1);
    nothing_recorded(&app).await;
}
