//! sparkpost callbacks end to end (both backends): batches behind the
//! webhook's Basic auth, pings.

use base64::Engine;
use hookrelay::config::SourceConfig;
use hookrelay::domain::Secret;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

backend_tests!(
    an_authenticated_batch_lands_in_the_history,
    wrong_credentials_are_refused,
    a_ping_records_nothing,
    an_unreadable_element_costs_the_batch_nothing_else
);

const USER: &str = "hooks";
const PASSWORD: &str = "sparkpost-webhook-secret";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/providers/sparkpost/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |c| {
        c.sources.push(SourceConfig {
            name: "sparkpost".into(),
            provider: "sparkpost".into(),
            username: Some(USER.into()),
            password: Some(Secret::new(PASSWORD)),
            ..SourceConfig::default()
        });
    })
    .await
}

async fn sparkpost(app: &TestApp, user: &str, password: &str, body: Vec<u8>) -> (u16, Value) {
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    app.post_raw("/callbacks/sparkpost", &[("content-type", "application/json"), ("authorization", &auth)], body).await
}

async fn an_authenticated_batch_lands_in_the_history(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let batch = fixture("generated-batch.json");
    let (status, body) = sparkpost(&app, USER, PASSWORD, batch.clone()).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 4, "duplicates": 0})), "{body}");
    // A redelivered batch records nothing new.
    let (status, body) = sparkpost(&app, USER, PASSWORD, batch).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 0, "duplicates": 4})), "{body}");

    assert_eq!(app.history_types("order-sp-1").await, ["SENT", "DELIVERED", "OPENED", "CLICKED"]);
    let (_, message) = app.get("/messages/order-sp-1").await;
    assert_eq!(message["status"], "CLICKED");
    let (_, history) = app.get("/messages/order-sp-1/history?type=CLICKED").await;
    let clicked = &history["results"][0];
    assert_eq!(clicked["provider"], "sparkpost");
    assert_eq!(clicked["provider_event"], "click");
    assert_eq!(clicked["recipient"], "alice@example.com");
    assert_eq!(clicked["url"], "https://example.com/start");
    assert_eq!(clicked["data"]["event_id"], "92356927693813904", "the raw event is kept");
    // The relay (inbound) event made no message of its own.
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"].as_array().map(Vec::len), Some(1), "{list}");
}

async fn wrong_credentials_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let batch = fixture("bounce.json");
    let (status, body) = sparkpost(&app, USER, "wrong", batch.clone()).await;
    assert_eq!((status, body["message"].clone()), (401, json!("callback authentication failed")));
    assert_eq!(sparkpost(&app, "other", PASSWORD, batch.clone()).await.0, 401);
    let (status, _) = app.post_raw("/callbacks/sparkpost", &[("content-type", "application/json")], batch).await;
    assert_eq!(status, 401);
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"], json!([]));
}

async fn a_ping_records_nothing(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (status, body) = sparkpost(&app, USER, PASSWORD, fixture("ping.json")).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 0, "duplicates": 0})), "{body}");
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"], json!([]));
}

async fn an_unreadable_element_costs_the_batch_nothing_else(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let mut batch: Vec<Value> = serde_json::from_slice(&fixture("generated-batch.json")).expect("JSON");
    batch.insert(1, json!({"msys": {"message_event": {"type": 7}}}));
    let (status, body) = sparkpost(&app, USER, PASSWORD, serde_json::to_vec(&batch).expect("JSON")).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 4, "duplicates": 0, "skipped": 1})), "{body}");
    assert_eq!(app.history_types("order-sp-1").await, ["SENT", "DELIVERED", "OPENED", "CLICKED"]);
    // Nothing readable at all is refused, so the sender sees the problem.
    let bad = serde_json::to_vec(&json!([{"msys": {"message_event": {"type": 7}}}])).expect("JSON");
    let (status, body) = sparkpost(&app, USER, PASSWORD, bad).await;
    assert_eq!((status, body["message"].clone()), (400, json!("cannot parse the callback: element 0: missing type")));
}
