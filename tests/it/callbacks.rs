//! `POST /callbacks/{source}` end to end, on both backends, with Mailgun as
//! the exercised provider; per-provider suites live in `callbacks_*.rs`.

use hmac::{KeyInit, Mac};
use hookrelay::config::SourceConfig;
use hookrelay::domain::Secret;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

backend_tests!(
    a_signed_callback_lands_in_the_history,
    a_retry_storm_records_each_event_once,
    callbacks_before_registration_are_merged,
    bad_callbacks_get_the_right_status,
    unknown_event_types_are_acknowledged_and_kept,
    a_signed_token_cannot_carry_another_event,
);

pub const MAILGUN_KEY: &str = "key-integration-test-signing-key";

/// A source named `mailgun` with the test signing key.
pub fn mailgun_source() -> SourceConfig {
    SourceConfig {
        name: "mailgun".into(),
        provider: "mailgun".into(),
        secrets: vec![Secret::new(MAILGUN_KEY)],
        ..SourceConfig::default()
    }
}

/// A Mailgun JSON webhook body for `event-data`, signed now.
pub fn mailgun_body(event_data: Value, token: &str) -> Vec<u8> {
    let timestamp = (hookrelay::clock::now_ms() / 1000).to_string();
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(MAILGUN_KEY.as_bytes()).expect("key");
    mac.update(format!("{timestamp}{token}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    serde_json::to_vec(&json!({
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": event_data,
    }))
    .expect("json")
}

fn event(name: &str, id: &str, message_id: &str, extra: Value) -> Value {
    let mut data = json!({
        "event": name, "id": id, "timestamp": 1_700_000_000.5, "recipient": "r@example.com",
        "message": {"headers": {"message-id": message_id}},
    });
    if let (Value::Object(data), Value::Object(extra)) = (&mut data, extra) {
        data.extend(extra);
    }
    data
}

async fn mailgun(app: &TestApp, body: Vec<u8>) -> (u16, Value) {
    app.post_raw("/callbacks/mailgun", &[("content-type", "application/json")], body).await
}

async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |c| c.sources.push(mailgun_source())).await
}

async fn a_signed_callback_lands_in_the_history(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.register(json!({"id": "order-1", "provider": "mailgun", "provider_message_id": "mg-1@example.org"})).await;
    let (status, body) =
        mailgun(&app, mailgun_body(event("delivered", "e1", "<mg-1@example.org>", json!({})), "t1")).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 1, "duplicates": 0})), "{body}");
    // Correlated by hookrelay's id from user-variables, too.
    let by_id = event("opened", "e2", "other@example.org", json!({"user-variables": {"hookrelay_id": "order-1"}}));
    assert_eq!(mailgun(&app, mailgun_body(by_id, "t2")).await.0, 200);
    let (_, m) = app.get("/messages/order-1").await;
    assert_eq!(m["status"], "OPENED");
    assert_eq!(m["delivered"], 1_700_000_000_500_i64);
    let (_, history) = app.get("/messages/order-1/history").await;
    let delivered =
        history["results"].as_array().expect("results").iter().find(|e| e["type"] == "DELIVERED").expect("delivered");
    assert_eq!(delivered["provider"], "mailgun");
    assert_eq!(delivered["provider_event"], "delivered");
    assert_eq!(delivered["recipient"], "r@example.com");
    assert_eq!(delivered["data"]["id"], "e1", "the raw provider event is kept");
}

async fn a_retry_storm_records_each_event_once(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let body = mailgun_body(event("delivered", "storm", "storm@example.org", json!({})), "t-storm");
    let posts = (0..50).map(|_| mailgun(&app, body.clone()));
    let results = futures_util::future::join_all(posts).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let accepted: i64 = results.iter().map(|(_, b)| b["accepted"].as_i64().expect("accepted")).sum();
    assert_eq!(accepted, 1, "exactly one of the 50 posts recorded the event");
    let (_, list) = app.get("/messages?provider=mailgun").await;
    let id = list["results"][0]["id"].as_str().expect("created from the callback").to_owned();
    assert_eq!(app.history_types(&id).await, ["DELIVERED"]);
}

async fn callbacks_before_registration_are_merged(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let early = event("delivered", "early", "<late-reg@example.org>", json!({}));
    assert_eq!(mailgun(&app, mailgun_body(early, "t-early")).await.0, 200);
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["results"][0]["status"], "DELIVERED");

    app.register(json!({"id": "late", "provider": "mailgun", "provider_message_id": "late-reg@example.org", "recipient": "r@example.com"}))
        .await;
    let (_, list) = app.get("/messages").await;
    let results = list["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "one message, not two: {list}");
    assert_eq!(results[0]["id"], "late");
    assert_eq!(results[0]["status"], "DELIVERED");
    assert_eq!(app.history_types("late").await, ["DELIVERED", "ENQUEUED"]);
}

async fn bad_callbacks_get_the_right_status(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.sources.push(mailgun_source());
        c.server.body_limit_bytes = 64 * 1024;
    })
    .await
    else {
        return;
    };
    let good = mailgun_body(event("delivered", "x", "x@example.org", json!({})), "t-x");
    // Tampered signature.
    let mut v: Value = serde_json::from_slice(&good).expect("json");
    v["signature"]["token"] = json!("forged");
    let (status, body) = mailgun(&app, serde_json::to_vec(&v).expect("json")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "callback authentication failed", "no detail for a forger");
    // No signature at all.
    assert_eq!(mailgun(&app, br#"{"event-data":{"event":"delivered"}}"#.to_vec()).await.0, 401);
    // Unknown source.
    let (status, body) = app.post_raw("/callbacks/nope", &[], good.clone()).await;
    assert_eq!((status, body["type"].clone()), (404, json!("invalid_request_error")));
    // Verified but unparseable: Mailgun gets 406 (do not retry).
    let unparseable = {
        let mut v: Value = serde_json::from_slice(&good).expect("json");
        v["event-data"] = json!({"no": "event"});
        serde_json::to_vec(&v).expect("json")
    };
    assert_eq!(mailgun(&app, unparseable).await.0, 406);
    // Too large.
    let huge = vec![b' '; 65 * 1024];
    assert_eq!(mailgun(&app, huge).await.0, 413);
    // GET is only for sources that take it.
    let get = app.client.get(app.url("/callbacks/mailgun")).send().await.expect("send");
    assert_eq!(get.status(), 405);
    // Nothing was recorded by any of these.
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"], json!([]));
}

async fn unknown_event_types_are_acknowledged_and_kept(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let odd = event("list_member_uploaded", "u1", "odd@example.org", json!({}));
    let (status, body) = mailgun(&app, mailgun_body(odd, "t-odd")).await;
    assert_eq!((status, body["accepted"].clone()), (200, json!(1)));
    let (_, list) = app.get("/messages").await;
    let id = list["results"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(list["results"][0]["status"], "ENQUEUED", "an unknown event moves nothing");
    let (_, history) = app.get(&format!("/messages/{id}/history?type=UNKNOWN")).await;
    assert_eq!(history["results"][0]["provider_event"], "list_member_uploaded");
}

/// Mailgun signs only the timestamp and the token: the signature of one
/// genuine callback must not carry another event, from any process.
async fn a_signed_token_cannot_carry_another_event(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let genuine = mailgun_body(event("delivered", "tok-e1", "tok@example.org", json!({})), "shared-token");
    assert_eq!(mailgun(&app, genuine.clone()).await.0, 200);
    // The very same request again (a provider retry) is a duplicate.
    let (status, body) = mailgun(&app, genuine.clone()).await;
    assert_eq!((status, body), (200, json!({"accepted": 0, "duplicates": 1})));
    // Its signature fields copied onto another event: refused.
    let mut forged: Value = serde_json::from_slice(&genuine).expect("json");
    forged["event-data"] = event("failed", "tok-e2", "tok@example.org", json!({"severity": "permanent"}));
    let (status, body) = mailgun(&app, serde_json::to_vec(&forged).expect("json")).await;
    assert_eq!(status, 401, "{body}");
    let (_, list) = app.get("/messages?provider=mailgun").await;
    let id = list["results"][0]["id"].as_str().expect("message").to_owned();
    assert_eq!(app.history_types(&id).await, ["DELIVERED"], "the forged event left no trace");
    // A fresh token carries its own event.
    let next = mailgun_body(event("opened", "tok-e3", "tok@example.org", json!({})), "another-token");
    assert_eq!(mailgun(&app, next).await.0, 200);
    // Remembered tokens go once their signatures would be stale anyway.
    assert_eq!(app.db.count("callback_tokens").await, 2);
    let far = hookrelay::clock::now_ms() + 16 * 60 * 1000;
    assert_eq!(app.store.purge_callback_tokens(far).await.expect("purge"), 2);
    assert_eq!(app.db.count("callback_tokens").await, 0);
}
