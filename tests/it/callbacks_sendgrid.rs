//! sendgrid callbacks end to end (both backends).

use base64::Engine;
use hookrelay::config::SourceConfig;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

backend_tests!(
    a_signed_batch_lands_in_the_history,
    the_published_signed_batch_is_accepted,
    a_tampered_batch_is_refused_and_nothing_recorded,
    events_correlate_by_the_send_api_message_id,
    personalizations_of_one_request_stay_separate_messages,
);

/// Vector A's verification key (sendgrid-nodejs, sendgrid-go).
const PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
/// The matching private key published in sendgrid-go's tests (SEC1 DER). TEST KEY ONLY.
const PRIVATE_KEY_SEC1: &str = "MHcCAQEEIEQmZgBEh9DcU9zMl34czK3xov4AYvm9P3r7rNB2dNXtoAoGCCqGSM49AwEHoUQDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";

fn source() -> SourceConfig {
    SourceConfig {
        name: "sendgrid".into(),
        provider: "sendgrid".into(),
        public_keys: vec![PUBLIC_KEY.into()],
        ..SourceConfig::default()
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/providers/sendgrid/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    match len {
        0..=127 => out.push(len as u8),
        128..=255 => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// Signature headers for `body`, signed now with the published test key
/// (wrapped as PKCS#8, which `ring` signs with).
fn sign(body: &[u8]) -> Vec<(&'static str, String)> {
    let sec1 = base64::engine::general_purpose::STANDARD.decode(PRIVATE_KEY_SEC1).expect("base64");
    let algorithm = der(0x30, &hex::decode("06072a8648ce3d020106082a8648ce3d030107").expect("hex"));
    let pkcs8 = der(0x30, &[&[0x02, 0x01, 0x00][..], &algorithm, &der(0x04, &sec1)].concat());
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).expect("test key");
    let timestamp = (hookrelay::clock::now_ms() / 1000).to_string();
    let signature = key.sign(&rng, &[timestamp.as_bytes(), body].concat()).expect("sign");
    vec![
        ("X-Twilio-Email-Event-Webhook-Timestamp", timestamp),
        (
            "X-Twilio-Email-Event-Webhook-Signature",
            base64::engine::general_purpose::STANDARD.encode(signature.as_ref()),
        ),
    ]
}

async fn post(app: &TestApp, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    all.extend(headers.iter().map(|(n, v)| (*n, v.as_str())));
    app.post_raw("/callbacks/sendgrid", &all, body).await
}

async fn post_signed(app: &TestApp, body: Vec<u8>) -> (u16, Value) {
    let headers = sign(&body);
    post(app, &headers, body).await
}

fn event(name: &str, id: &str, ts: i64, extra: Value) -> Value {
    let mut e = json!({
        "event": name, "sg_event_id": id, "timestamp": ts, "email": "r@example.com",
        "sg_message_id": "XMsgOrder1.filter0425p1mdw1.13037.57168B4A1D.0",
        "smtp-id": "<XMsgOrder1@ismtpd0006p1sjc2.sendgrid.net>", "hookrelay_id": "order-1",
    });
    if let (Value::Object(e), Value::Object(extra)) = (&mut e, extra) {
        e.extend(extra);
    }
    e
}

async fn a_signed_batch_lands_in_the_history(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.sources.push(source())).await else { return };
    app.register(json!({"id": "order-1", "provider": "sendgrid", "provider_message_id": "XMsgOrder1"})).await;
    // Several events for one message, out of order, in one batch.
    let batch = json!([
        event("open", "e-open", 1_700_000_030, json!({"useragent": "Mozilla/5.0"})),
        event("delivered", "e-delivered", 1_700_000_010, json!({"response": "250 OK"})),
        event("click", "e-click", 1_700_000_040, json!({"url": "https://example.com/a"})),
        event("processed", "e-processed", 1_700_000_000, json!({})),
        event("deferred", "e-deferred", 1_700_000_005, json!({"response": "421 try later", "attempt": "1"})),
    ]);
    let body = serde_json::to_vec(&batch).expect("json");
    let (status, answer) = post_signed(&app, body.clone()).await;
    assert_eq!((status, answer.clone()), (200, json!({"accepted": 5, "duplicates": 0})), "{answer}");

    let (_, m) = app.get("/messages/order-1").await;
    assert_eq!(m["status"], "CLICKED", "the highest status wins: {m}");
    assert_eq!(m["delivered"], 1_700_000_010_000_i64);
    assert_eq!(app.history_types("order-1").await, ["SENT", "DELAYED", "DELIVERED", "OPENED", "CLICKED", "ENQUEUED"]);
    let (_, history) = app.get("/messages/order-1/history?type=CLICKED").await;
    let click = &history["results"][0];
    assert_eq!(click["provider"], "sendgrid");
    assert_eq!(click["provider_event"], "click");
    assert_eq!(click["recipient"], "r@example.com");
    assert_eq!(click["url"], "https://example.com/a");
    assert_eq!(click["data"]["sg_event_id"], "e-click", "the raw provider event is kept");
    let (_, history) = app.get("/messages/order-1/history?type=DELAYED").await;
    assert_eq!(history["results"][0]["error"], "421 try later");

    // SendGrid retries the batch (signed again or not): nothing new.
    let (status, answer) = post_signed(&app, body).await;
    assert_eq!((status, answer), (200, json!({"accepted": 0, "duplicates": 5})));
    assert_eq!(app.history_types("order-1").await.len(), 6);
}

async fn the_published_signed_batch_is_accepted(backend: Backend) {
    // The generated fixture was signed in 2023: accept it as is with a long
    // window, and read hookrelay's id from its `relay_message_id` custom arg.
    let Some(app) = spawn_app_with(backend, |c| {
        c.sources.push(SourceConfig {
            id_field: "relay_message_id".into(),
            tolerance_seconds: Some(100 * 365 * 24 * 3600),
            ..source()
        })
    })
    .await
    else {
        return;
    };
    let headers_text = String::from_utf8(fixture("generated-signed-batch.headers.txt")).expect("utf-8");
    let headers: Vec<(&str, String)> = headers_text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| {
            (
                if n.ends_with("Timestamp") {
                    "X-Twilio-Email-Event-Webhook-Timestamp"
                } else {
                    "X-Twilio-Email-Event-Webhook-Signature"
                },
                v.trim().to_owned(),
            )
        })
        .collect();
    assert_eq!(headers.len(), 2);
    let (status, answer) = post(&app, &headers, fixture("generated-signed-batch.payload")).await;
    assert_eq!((status, answer.clone()), (200, json!({"accepted": 4, "duplicates": 0})), "{answer}");
    let (_, m) = app.get("/messages/msg_01HZX3RELAYEXAMPLE").await;
    // processed, delivered, bounce (UNDELIVERABLE outranks DELIVERED), open.
    assert_eq!(m["status"], "OPENED", "{m}");
    let mut types = app.history_types("msg_01HZX3RELAYEXAMPLE").await;
    types.sort();
    assert_eq!(types, ["DELIVERED", "OPENED", "SENT", "UNDELIVERABLE"]);
    let (_, history) = app.get("/messages/msg_01HZX3RELAYEXAMPLE/history?type=UNDELIVERABLE").await;
    assert_eq!(history["results"][0]["reason"], "BOUNCED");
    assert_eq!(history["results"][0]["error"], "550 5.1.1 The email account that you tried to reach does not exist.");
}

async fn a_tampered_batch_is_refused_and_nothing_recorded(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.sources.push(source())).await else { return };
    let body = serde_json::to_vec(&json!([event("delivered", "t1", 1_700_000_000, json!({}))])).expect("json");
    let headers = sign(&body);
    let tampered = String::from_utf8(body.clone()).expect("utf-8").replace("delivered", "click").into_bytes();
    let (status, answer) = post(&app, &headers, tampered).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["message"], "callback authentication failed");
    // Unsigned, and signed by another key's signature headers for other bytes.
    assert_eq!(post(&app, &[], body.clone()).await.0, 401);
    assert_eq!(post(&app, &sign(b"[]"), body).await.0, 401);
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"], json!([]), "nothing was recorded");
    // Signed but not a SendGrid batch: 400.
    let (status, answer) = post_signed(&app, b"\"hello\"".to_vec()).await;
    assert_eq!(status, 400, "{answer}");
}

async fn events_correlate_by_the_send_api_message_id(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.sources.push(source())).await else { return };
    // Registered with the X-Message-Id the send API returned; the events
    // carry no custom args, only SendGrid's own ids.
    app.register(json!({"id": "welcome-7", "provider": "sendgrid", "provider_message_id": "wrfRRvF7Q0GgwUo2CvDmEA"}))
        .await;
    let delivered: Value = serde_json::from_slice(&fixture("delivered.json")).expect("json");
    let dropped: Value = serde_json::from_slice(&fixture("dropped-invalid.json")).expect("json");
    let batch = json!([delivered[0], dropped[0]]);
    let (status, answer) = post_signed(&app, serde_json::to_vec(&batch).expect("json")).await;
    assert_eq!((status, answer.clone()), (200, json!({"accepted": 2, "duplicates": 0})), "{answer}");
    let (_, m) = app.get("/messages/welcome-7").await;
    assert_eq!(m["status"], "UNDELIVERABLE", "{m}");
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"].as_array().map(Vec::len), Some(1), "no second message: {list}");
}

async fn personalizations_of_one_request_stay_separate_messages(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.sources.push(source())).await else { return };
    // One send request (one X-Message-Id) with two personalizations, each
    // with its own hookrelay_id custom arg.
    let batch = json!([
        event("delivered", "p-a", 1_700_000_010, json!({"hookrelay_id": "batch-a", "email": "a@example.com"})),
        event(
            "bounce",
            "p-b",
            1_700_000_011,
            json!({"hookrelay_id": "batch-b", "email": "b@example.com", "type": "bounce"})
        ),
        event("open", "p-a2", 1_700_000_020, json!({"hookrelay_id": "batch-a", "email": "a@example.com"})),
    ]);
    let (status, answer) = post_signed(&app, serde_json::to_vec(&batch).expect("json")).await;
    assert_eq!((status, answer.clone()), (200, json!({"accepted": 3, "duplicates": 0})), "{answer}");
    let (_, a) = app.get("/messages/batch-a").await;
    let (_, b) = app.get("/messages/batch-b").await;
    assert_eq!((a["status"].clone(), b["status"].clone()), (json!("OPENED"), json!("UNDELIVERABLE")), "{a} {b}");
    assert_eq!(app.history_types("batch-a").await, ["DELIVERED", "OPENED"]);
    assert_eq!(app.history_types("batch-b").await, ["UNDELIVERABLE"]);
}
