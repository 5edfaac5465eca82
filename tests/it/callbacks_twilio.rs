//! Twilio status callbacks end to end (both backends): the signature is
//! checked over `server.public_url`, not the address the request reached.

use base64::Engine;
use hmac::{KeyInit, Mac};
use hookrelay::config::{Secret, SourceConfig};
use serde_json::json;
use sha1::Sha1;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

backend_tests!(signed_status_callbacks_update_the_message, bad_signatures_are_refused);

const TOKEN: &str = "twilio-integration-auth-token";
const PUBLIC_URL: &str = "https://relay.example.com";

fn source() -> SourceConfig {
    SourceConfig {
        name: "twilio".into(),
        provider: "twilio".into(),
        secrets: vec![Secret::new("old-token"), Secret::new(TOKEN)],
        ..SourceConfig::default()
    }
}

/// `X-Twilio-Signature` as Twilio computes it: the URL, then every POST
/// field sorted by name and value, as `name` + `value`.
fn sign(url: &str, body: &str) -> String {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    params.sort();
    let mut mac = hmac::Hmac::<Sha1>::new_from_slice(TOKEN.as_bytes()).expect("key");
    mac.update(url.as_bytes());
    for (name, value) in params {
        mac.update(format!("{name}{value}").as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn status_body(sid: &str, status: &str, extra: &str) -> String {
    format!(
        "AccountSid=ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx&ApiVersion=2010-04-01&From=%2B15017250604\
         &MessageSid={sid}&MessageStatus={status}&SmsSid={sid}&SmsStatus={status}&To=%2B15558675310{extra}"
    )
}

/// Posts `body` to `/callbacks/twilio?{query}` with `signature`.
async fn post(app: &TestApp, query: &str, body: &str, signature: &str) -> (u16, serde_json::Value) {
    app.post_raw(
        &format!("/callbacks/twilio?{query}"),
        &[("content-type", "application/x-www-form-urlencoded"), ("x-twilio-signature", signature)],
        body.to_owned(),
    )
    .await
}

async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |c| {
        c.server.public_url = PUBLIC_URL.into();
        c.sources.push(source());
    })
    .await
}

async fn signed_status_callbacks_update_the_message(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.register(json!({"id": "sms-1", "channel": "sms", "provider": "twilio"})).await;
    let query = "hookrelay_id=sms-1";
    let url = format!("{PUBLIC_URL}/callbacks/twilio?{query}");
    for status in ["sent", "delivered"] {
        let body = status_body("SM1342fe1b2c904d1ab04f0fc7a58abca9", status, "");
        let (code, answer) = post(&app, query, &body, &sign(&url, &body)).await;
        assert_eq!((code, answer.clone()), (200, json!({"accepted": 1, "duplicates": 0})), "{status}: {answer}");
    }
    let (_, m) = app.get("/messages/sms-1").await;
    assert_eq!(m["status"], "DELIVERED", "{m}");
    let types = app.history_types("sms-1").await;
    assert!(types.contains(&"DELIVERED".to_owned()) && types.contains(&"SENT".to_owned()), "{types:?}");
    let (_, history) = app.get("/messages/sms-1/history?type=DELIVERED").await;
    let delivered = &history["results"][0];
    assert_eq!(delivered["provider"], "twilio");
    assert_eq!(delivered["provider_event"], "delivered");
    assert_eq!(delivered["recipient"], "+15558675310");

    // A failure for another message, correlated the same way.
    app.register(json!({"id": "sms-2", "channel": "sms", "provider": "twilio"})).await;
    let url = format!("{PUBLIC_URL}/callbacks/twilio?hookrelay_id=sms-2");
    let body = status_body("SM0000000000000000000000000000000b", "undelivered", "&ErrorCode=30003");
    assert_eq!(post(&app, "hookrelay_id=sms-2", &body, &sign(&url, &body)).await.0, 200);
    // A retry of the same callback is acknowledged and recorded once.
    let (code, answer) = post(&app, "hookrelay_id=sms-2", &body, &sign(&url, &body)).await;
    assert_eq!((code, answer), (200, json!({"accepted": 0, "duplicates": 1})));
    let (_, history) = app.get("/messages/sms-2/history?type=UNDELIVERABLE").await;
    let failed = &history["results"][0];
    assert_eq!(failed["reason"], "BOUNCED");
    assert_eq!(failed["error"], "30003");
    let (_, m) = app.get("/messages/sms-2").await;
    assert_eq!(m["status"], "UNDELIVERABLE", "{m}");
}

async fn bad_signatures_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.register(json!({"id": "sms-3", "channel": "sms", "provider": "twilio"})).await;
    let query = "hookrelay_id=sms-3";
    let body = status_body("SM3", "delivered", "");
    let url = format!("{PUBLIC_URL}/callbacks/twilio?{query}");
    // Signed for another message's URL, for the address the request really
    // reached (not the public URL), over another body, or not at all.
    let other = format!("{PUBLIC_URL}/callbacks/twilio?hookrelay_id=sms-4");
    assert_eq!(post(&app, query, &body, &sign(&other, &body)).await.0, 401);
    assert_eq!(post(&app, query, &body, &sign(&app.url(&format!("/callbacks/twilio?{query}")), &body)).await.0, 401);
    assert_eq!(post(&app, query, &body, &sign(&url, &status_body("SM3", "sent", ""))).await.0, 401);
    let (code, answer) = app
        .post_raw(
            &format!("/callbacks/twilio?{query}"),
            &[("content-type", "application/x-www-form-urlencoded")],
            body.clone(),
        )
        .await;
    assert_eq!((code, answer["message"].clone()), (401, json!("callback authentication failed")));
    assert_eq!(app.history_types("sms-3").await, ["ENQUEUED"], "nothing was recorded");
    // The genuine one is accepted.
    assert_eq!(post(&app, query, &body, &sign(&url, &body)).await.0, 200);
}
