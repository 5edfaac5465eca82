//! Twilio status callbacks end to end (both backends): the signature is
//! checked over `server.public_url`, not the address the request reached.

use base64::Engine;
use hmac::{KeyInit, Mac};
use hookrelay::config::SourceConfig;
use hookrelay::domain::Secret;
use serde_json::json;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

backend_tests!(
    signed_status_callbacks_update_the_message,
    bad_signatures_are_refused,
    json_bodies_signed_by_their_hash_are_recorded,
    basic_credentials_are_challenged_first,
    a_callback_for_an_unknown_message_is_found_by_its_recipient,
);

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

/// Twilio's JSON callbacks: the body's SHA-256 goes in the URL
/// (`bodySHA256`), which is signed with no POST fields.
async fn json_bodies_signed_by_their_hash_are_recorded(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.register(json!({"id": "sms-json", "channel": "sms", "provider": "twilio"})).await;
    let body = json!({"MessageSid": "SMjson0000000000000000000000000001", "MessageStatus": "delivered",
                      "To": "+15558675310", "ErrorCode": null})
    .to_string();
    let query = format!("hookrelay_id=sms-json&bodySHA256={}", hex::encode(Sha256::digest(body.as_bytes())));
    let signature = sign(&format!("{PUBLIC_URL}/callbacks/twilio?{query}"), "");
    let (code, answer) = app
        .post_raw(
            &format!("/callbacks/twilio?{query}"),
            &[("content-type", "application/json"), ("x-twilio-signature", &signature)],
            body,
        )
        .await;
    assert_eq!((code, answer.clone()), (200, json!({"accepted": 1, "duplicates": 0})), "{answer}");
    let (_, m) = app.get("/messages/sms-json").await;
    assert_eq!(m["status"], "DELIVERED", "{m}");
}

/// Twilio sends a URL's credentials only after a `Basic` challenge.
async fn basic_credentials_are_challenged_first(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.server.public_url = PUBLIC_URL.into();
        c.sources.push(SourceConfig {
            username: Some("hooks".into()),
            password: Some(Secret::new("basic-password")),
            ..source()
        });
    })
    .await
    else {
        return;
    };
    let query = "hookrelay_id=sms-basic";
    let body = status_body("SMbasic", "sent", "");
    let signature = sign(&format!("{PUBLIC_URL}/callbacks/twilio?{query}"), &body);
    let url = app.url(&format!("/callbacks/twilio?{query}"));
    let first = app
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", &signature)
        .body(body.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(first.status(), 401);
    assert_eq!(
        first.headers().get("www-authenticate").and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"hookrelay\"")
    );
    let answered = app
        .client
        .post(&url)
        .basic_auth("hooks", Some("basic-password"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", &signature)
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(answered.status(), 200);
    // A source without basic credentials challenges nothing.
    let Some(plain) = spawn(backend).await else { return };
    let (code, _) = post(&plain, query, &status_body("SMbasic", "sent", ""), "bad").await;
    assert_eq!(code, 401);
    let refused = plain
        .client
        .post(plain.url(&format!("/callbacks/twilio?{query}")))
        .header("x-twilio-signature", "bad")
        .body("MessageSid=SM1")
        .send()
        .await
        .expect("POST");
    assert!(refused.headers().get("www-authenticate").is_none());
}

/// A message made from a callback takes the callback's recipient, so the
/// log's recipient filter finds it.
async fn a_callback_for_an_unknown_message_is_found_by_its_recipient(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let body = status_body("SMunknown000000000000000000000001", "delivered", "");
    let url = format!("{PUBLIC_URL}/callbacks/twilio");
    let (code, answer) = app
        .post_raw(
            "/callbacks/twilio",
            &[("content-type", "application/x-www-form-urlencoded"), ("x-twilio-signature", &sign(&url, &body))],
            body,
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    let (_, list) = app.get("/messages?recipient=%2B15558675310").await;
    let results = list["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{list}");
    assert_eq!(results[0]["provider_message_id"], "SMunknown000000000000000000000001");
}
