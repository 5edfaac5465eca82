//! Vonage callbacks end to end (both backends): signed SMS delivery
//! receipts by GET, Messages API status webhooks with a JWT.

use base64::Engine;
use hmac::{KeyInit, Mac};
use hookrelay::config::SourceConfig;
use hookrelay::domain::Secret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, read, spawn_app_with};

backend_tests!(signed_receipts_and_status_webhooks_update_messages, unsigned_callbacks_are_refused);

const SECRET: &str = "vonage-integration-signature-secret";

fn source() -> SourceConfig {
    SourceConfig {
        name: "vonage".into(),
        provider: "vonage".into(),
        secrets: vec![Secret::new(SECRET)],
        signature_method: Some("sha256".into()),
        ..SourceConfig::default()
    }
}

fn now_seconds() -> i64 {
    hookrelay::clock::now_ms() / 1000
}

/// A receipt's query string, signed as Vonage signs it when `sign` is set:
/// `&name=value` over the sorted params, HMAC-SHA256, hex.
fn receipt_query(params: &[(&str, &str)], sign: bool) -> String {
    let ts = now_seconds().to_string();
    let mut all: Vec<(&str, &str)> = params.to_vec();
    all.push(("timestamp", &ts));
    all.push(("nonce", "6f1c0b5e-2b0d-4c8a-9d7e-1a2b3c4d5e6f"));
    all.sort();
    let string: String =
        all.iter().map(|(k, v)| format!("&{k}={}", v.replace(['&', '='], "_"))).collect::<Vec<_>>().concat();
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(string.as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(all);
    if sign {
        query.append_pair("sig", &sig);
    }
    query.finish()
}

/// An HS256 JWT for `body`, as the Messages API signs status webhooks.
fn jwt_for(body: &[u8], secret: &str) -> String {
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = json!({
        "iat": now_seconds(), "jti": "6c4f7d0e-9b1a-4f3e-8a2d-5e6f7a8b9c0d", "iss": "Vonage",
        "payload_hash": hex::encode(Sha256::digest(body)), "api_key": "a1b2c3d",
    });
    let input = format!("{}.{}", b64(json!({"alg": "HS256", "typ": "JWT"})), b64(claims));
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(input.as_bytes());
    format!("{input}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

async fn get_receipt(app: &TestApp, query: &str) -> (u16, Value) {
    read(app.client.get(app.url(&format!("/callbacks/vonage?{query}"))).send().await.expect("GET")).await
}

async fn post_status(app: &TestApp, body: &[u8], jwt: Option<&str>) -> (u16, Value) {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(jwt) = jwt {
        headers.push(("authorization", format!("Bearer {jwt}")));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    app.post_raw("/callbacks/vonage", &headers, body.to_vec()).await
}

fn status_body(client_ref: &str, status: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "message_uuid": format!("uuid-{client_ref}"), "to": "447700900000", "from": "447700900001",
        "timestamp": "2023-05-01T14:00:00.000Z", "status": status, "channel": "sms", "client_ref": client_ref,
    }))
    .expect("json")
}

async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |c| c.sources.push(source())).await
}

async fn signed_receipts_and_status_webhooks_update_messages(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.register(json!({"id": "sms-v1", "channel": "sms", "provider": "vonage"})).await;
    let receipt = [
        ("msisdn", "447700900000"),
        ("to", "AcmeInc"),
        ("messageId", "0A0000001234567B"),
        ("status", "delivered"),
        ("err-code", "0"),
        ("scts", "2001011400"),
        ("client-ref", "sms-v1"),
        ("message-timestamp", "2020-01-01 14:00:00"),
    ];
    let (code, answer) = get_receipt(&app, &receipt_query(&receipt, true)).await;
    assert_eq!((code, answer.clone()), (200, json!({"accepted": 1, "duplicates": 0})), "{answer}");
    let (_, m) = app.get("/messages/sms-v1").await;
    assert_eq!(m["status"], "DELIVERED", "{m}");
    let (_, history) = app.get("/messages/sms-v1/history?type=DELIVERED").await;
    assert_eq!(history["results"][0]["recipient"], "447700900000");
    assert_eq!(history["results"][0]["provider_event"], "delivered");
    // A retry is signed afresh (new timestamp and signature) yet recorded once.
    let (code, answer) = get_receipt(&app, &receipt_query(&receipt, true)).await;
    assert_eq!((code, answer), (200, json!({"accepted": 0, "duplicates": 1})));

    app.register(json!({"id": "sms-v2", "channel": "sms", "provider": "vonage"})).await;
    for status in ["submitted", "delivered"] {
        let body = status_body("sms-v2", status);
        let (code, answer) = post_status(&app, &body, Some(&jwt_for(&body, SECRET))).await;
        assert_eq!(code, 200, "{status}: {answer}");
    }
    let (_, m) = app.get("/messages/sms-v2").await;
    assert_eq!(m["status"], "DELIVERED", "{m}");
    let types = app.history_types("sms-v2").await;
    assert!(types.contains(&"SENT".to_owned()) && types.contains(&"DELIVERED".to_owned()), "{types:?}");
}

async fn unsigned_callbacks_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.register(json!({"id": "sms-v3", "channel": "sms", "provider": "vonage"})).await;
    let receipt = [("messageId", "0A00000000000003"), ("status", "delivered"), ("client-ref", "sms-v3")];
    // Unsigned receipt; a signed one with a field changed afterwards.
    assert_eq!(get_receipt(&app, &receipt_query(&receipt, false)).await.0, 401);
    let tampered = receipt_query(&receipt, true).replace("status=delivered", "status=failed");
    assert_eq!(get_receipt(&app, &tampered).await.0, 401);
    // Status webhook without a JWT, with a JWT for another body, with another secret.
    let body = status_body("sms-v3", "delivered");
    assert_eq!(post_status(&app, &body, None).await.0, 401);
    assert_eq!(post_status(&app, &body, Some(&jwt_for(&status_body("sms-v3", "read"), SECRET))).await.0, 401);
    let (code, answer) = post_status(&app, &body, Some(&jwt_for(&body, "another-secret"))).await;
    assert_eq!((code, answer["message"].clone()), (401, json!("callback authentication failed")));
    assert_eq!(app.history_types("sms-v3").await, ["ENQUEUED"], "nothing was recorded");
}
