//! Brevo webhooks end to end (both backends): the webhook's bearer token,
//! batched events, machine (proxy) opens.

use hookrelay::config::SourceConfig;

use hookrelay::domain::Secret;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

backend_tests!(an_authenticated_batch_updates_messages, wrong_credentials_are_refused);

const TOKEN: &str = "brevo-integration-bearer-token";

fn source() -> SourceConfig {
    SourceConfig {
        name: "brevo".into(),
        provider: "brevo".into(),
        bearer_token: Some(Secret::new(TOKEN)),
        ..SourceConfig::default()
    }
}

async fn post(app: &TestApp, token: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    app.post_raw(
        "/callbacks/brevo",
        &[("content-type", "application/json"), ("authorization", &auth)],
        body.to_string(),
    )
    .await
}

fn event(name: &str, ts_epoch: i64, message_id: &str, custom: Option<&str>) -> Value {
    let mut e =
        json!({"event": name, "email": "recipient@example.com", "ts_epoch": ts_epoch, "message-id": message_id});
    if let Some(custom) = custom {
        e["X-Mailin-custom"] = json!(custom);
    }
    e
}

async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |c| c.sources.push(source())).await
}

async fn an_authenticated_batch_updates_messages(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.register(
        json!({"id": "bv-1", "provider": "brevo", "provider_message_id": "<202401011200.1@smtp-relay.mailin.fr>"}),
    )
    .await;
    let custom = r#"{"hookrelay_id": "bv-1"}"#;
    let batch = json!([
        event("request", 1_700_000_000_000, "<202401011200.1@smtp-relay.mailin.fr>", Some(custom)),
        event("delivered", 1_700_000_001_000, "<202401011200.1@smtp-relay.mailin.fr>", Some(custom)),
        // Apple Mail Privacy Protection: recorded, moves nothing.
        event("proxy_open", 1_700_000_002_000, "<202401011200.1@smtp-relay.mailin.fr>", Some(custom)),
    ]);
    let (code, answer) = post(&app, TOKEN, &batch).await;
    assert_eq!((code, answer.clone()), (200, json!({"accepted": 3, "duplicates": 0})), "{answer}");
    let (_, m) = app.get("/messages/bv-1").await;
    assert_eq!(m["status"], "DELIVERED", "a machine open does not count as opened: {m}");
    let (_, history) = app.get("/messages/bv-1/history?type=OPENED").await;
    assert_eq!(history["results"][0]["machine"], true);
    assert_eq!(history["results"][0]["provider_event"], "proxy_open");

    // A human open, correlated by the Message-ID alone (no custom header).
    let open = event("unique_opened", 1_700_000_003_000, "202401011200.1@smtp-relay.mailin.fr", None);
    assert_eq!(post(&app, TOKEN, &open).await.0, 200);
    let (_, m) = app.get("/messages/bv-1").await;
    assert_eq!(m["status"], "OPENED", "{m}");
    // Brevo retries: acknowledged, recorded once.
    let (code, answer) = post(&app, TOKEN, &open).await;
    assert_eq!((code, answer), (200, json!({"accepted": 0, "duplicates": 1})));
}

async fn wrong_credentials_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let body = event("delivered", 1_700_000_000_000, "<x@smtp-relay.mailin.fr>", None);
    let (code, answer) = post(&app, "not-the-token", &body).await;
    assert_eq!((code, answer["message"].clone()), (401, json!("callback authentication failed")));
    let (code, _) = app.post_raw("/callbacks/brevo", &[("content-type", "application/json")], body.to_string()).await;
    assert_eq!(code, 401);
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"], json!([]), "nothing was recorded");
}
