//! Mailjet event callbacks end to end (both backends): basic auth from the
//! callback URL, grouped events.

use hookrelay::config::SourceConfig;

use hookrelay::domain::Secret;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

backend_tests!(an_authenticated_batch_updates_messages, wrong_credentials_are_refused);

fn source() -> SourceConfig {
    SourceConfig {
        name: "mailjet".into(),
        provider: "mailjet".into(),
        username: Some("hooks".into()),
        password: Some(Secret::new("mailjet-integration-password")),
        ..SourceConfig::default()
    }
}

async fn post(app: &TestApp, user: &str, password: &str, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/callbacks/mailjet"))
        .basic_auth(user, Some(password))
        .json(body)
        .send()
        .await
        .expect("POST");
    crate::helpers::read(response).await
}

/// Mailjet's grouped events for one message: sent, then opened.
fn batch() -> Value {
    // The MessageID is above 2^53: it must survive exactly.
    let common = json!({"MessageID": 19421777835146490_u64, "email": "recipient@example.com", "CustomID": "mj-1"});
    let with = |extra: Value| {
        let mut event = common.clone();
        if let (Value::Object(e), Value::Object(x)) = (&mut event, extra) {
            e.extend(x);
        }
        event
    };
    json!([
        with(json!({"event": "sent", "time": 1_700_000_000, "smtp_reply": "sent (250 2.0.0 OK)"})),
        with(json!({"event": "open", "time": 1_700_000_060, "ip": "192.0.2.1"})),
    ])
}

async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |c| c.sources.push(source())).await
}

async fn an_authenticated_batch_updates_messages(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.register(json!({"id": "mj-1", "provider": "mailjet", "recipient": "recipient@example.com"})).await;
    let (code, answer) = post(&app, "hooks", "mailjet-integration-password", &batch()).await;
    assert_eq!((code, answer.clone()), (200, json!({"accepted": 2, "duplicates": 0})), "{answer}");
    let (_, m) = app.get("/messages/mj-1").await;
    assert_eq!(m["status"], "OPENED", "{m}");
    assert_eq!(m["delivered"], 1_700_000_000_000_i64);
    let (_, history) = app.get("/messages/mj-1/history?type=DELIVERED").await;
    let delivered = &history["results"][0];
    assert_eq!(delivered["provider_event"], "sent");
    assert_eq!(delivered["recipient"], "recipient@example.com");
    assert_eq!(delivered["data"]["MessageID"], json!(19421777835146490_u64));
    // Mailjet retries the group: acknowledged, nothing recorded twice.
    let (code, answer) = post(&app, "hooks", "mailjet-integration-password", &batch()).await;
    assert_eq!((code, answer), (200, json!({"accepted": 0, "duplicates": 2})));
    // A later event correlates by Mailjet's id alone (no CustomID).
    let complaint = json!({"event": "spam", "time": 1_700_000_100, "MessageID": 19421777835146490_u64,
        "email": "recipient@example.com", "source": "JMRPP"});
    assert_eq!(post(&app, "hooks", "mailjet-integration-password", &complaint).await.0, 200);
    let types = app.history_types("mj-1").await;
    assert!(types.contains(&"COMPLAINED".to_owned()), "{types:?}");
}

async fn wrong_credentials_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (code, answer) = post(&app, "hooks", "wrong-password", &batch()).await;
    assert_eq!((code, answer["message"].clone()), (401, json!("callback authentication failed")));
    assert_eq!(post(&app, "other", "mailjet-integration-password", &batch()).await.0, 401);
    let (code, _) =
        app.post_raw("/callbacks/mailjet", &[("content-type", "application/json")], batch().to_string()).await;
    assert_eq!(code, 401);
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"], json!([]), "nothing was recorded");
}
