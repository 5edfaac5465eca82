//! postmark callbacks end to end (both backends).

use base64::Engine;
use hookrelay::config::SourceConfig;
use hookrelay::domain::Secret;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

backend_tests!(
    authenticated_records_land_in_the_history,
    bad_credentials_are_refused_and_nothing_recorded,
    a_secret_header_source,
);

const USER: &str = "hooks";
const PASSWORD: &str = "long-random-secret";

fn source() -> SourceConfig {
    SourceConfig {
        name: "postmark".into(),
        provider: "postmark".into(),
        username: Some(USER.into()),
        password: Some(Secret::new(PASSWORD)),
        ..SourceConfig::default()
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/providers/postmark/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"));
    serde_json::from_slice(&bytes).expect("json")
}

/// A sample sent for hookrelay message `id` (Postmark echoes `Metadata`).
fn for_message(name: &str, id: &str) -> Vec<u8> {
    let mut v = fixture(name);
    v["Metadata"] = json!({"hookrelay_id": id});
    serde_json::to_vec(&v).expect("json")
}

/// Posts as Postmark does with `https://user:pass@host/...`: basic auth.
async fn post_as(app: &TestApp, user: &str, password: &str, body: Vec<u8>) -> (u16, Value) {
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    app.post_raw("/callbacks/postmark", &[("content-type", "application/json"), ("authorization", &auth)], body).await
}

async fn authenticated_records_land_in_the_history(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.sources.push(source())).await else { return };
    app.register(
        json!({"id": "order-1", "provider": "postmark", "provider_message_id": "f4830d10-9c35-4f0c-bca3-3d9b459821f8"}),
    )
    .await;
    // The delivery names hookrelay's id; the open and click only Postmark's MessageID.
    let mut delivery = fixture("delivery.json");
    delivery["MessageID"] = json!("f4830d10-9c35-4f0c-bca3-3d9b459821f8");
    delivery["Metadata"]["hookrelay_id"] = json!("order-1");
    let delivery = serde_json::to_vec(&delivery).expect("json");
    let (status, body) = post_as(&app, USER, PASSWORD, delivery.clone()).await;
    assert_eq!((status, body.clone()), (200, json!({"accepted": 1, "duplicates": 0})), "{body}");
    for name in ["open.json", "click.json"] {
        let (status, body) = post_as(&app, USER, PASSWORD, serde_json::to_vec(&fixture(name)).expect("json")).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    // Postmark retries a record: recorded once.
    let (status, body) = post_as(&app, USER, PASSWORD, delivery).await;
    assert_eq!((status, body), (200, json!({"accepted": 0, "duplicates": 1})));

    let (_, m) = app.get("/messages/order-1").await;
    assert_eq!(m["status"], "CLICKED", "{m}");
    assert_eq!(app.history_types("order-1").await, ["DELIVERED", "OPENED", "CLICKED", "ENQUEUED"]);
    let (_, history) = app.get("/messages/order-1/history?type=CLICKED").await;
    let click = &history["results"][0];
    assert_eq!(click["provider"], "postmark");
    assert_eq!(click["provider_event"], "Click");
    assert_eq!(click["url"], "https://example.com/click/me");
    assert_eq!(click["data"]["ClickLocation"], "HTML", "the raw record is kept");

    // A hard bounce and an unsubscribe for another message, by Metadata alone.
    assert_eq!(post_as(&app, USER, PASSWORD, for_message("bounce-hard.json", "order-2")).await.0, 200);
    assert_eq!(
        post_as(&app, USER, PASSWORD, for_message("subscription-change-unsubscribe.json", "order-2")).await.0,
        200
    );
    let (_, m) = app.get("/messages/order-2").await;
    assert_eq!(m["status"], "UNDELIVERABLE", "{m}");
    let mut types = app.history_types("order-2").await;
    types.sort();
    assert_eq!(types, ["UNDELIVERABLE", "UNSUBSCRIBED"]);
    let (_, history) = app.get("/messages/order-2/history?type=UNDELIVERABLE").await;
    assert_eq!(history["results"][0]["reason"], "BOUNCED");
    assert_eq!(history["results"][0]["recipient"], "bounce@example.com");
    assert_eq!(
        history["results"][0]["error"],
        "smtp;550 5.1.1 The email account that you tried to reach does not exist."
    );
}

async fn bad_credentials_are_refused_and_nothing_recorded(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.sources.push(source())).await else { return };
    let body = for_message("delivery.json", "order-1");
    let (status, answer) = post_as(&app, USER, "wrong-password", body.clone()).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["message"], "callback authentication failed");
    assert_eq!(post_as(&app, "other", PASSWORD, body.clone()).await.0, 401);
    let (status, _) = app.post_raw("/callbacks/postmark", &[("content-type", "application/json")], body).await;
    assert_eq!(status, 401, "no credentials at all");
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"], json!([]), "nothing was recorded");
    // Authenticated but not a Postmark record: 400.
    assert_eq!(post_as(&app, USER, PASSWORD, br#"{"no":"record type"}"#.to_vec()).await.0, 400);
}

async fn a_secret_header_source(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.sources.push(SourceConfig {
            name: "postmark".into(),
            provider: "postmark".into(),
            header_name: Some("X-Hook-Secret".into()),
            header_value: Some(Secret::new("header-secret")),
            ..SourceConfig::default()
        })
    })
    .await
    else {
        return;
    };
    let body = for_message("spam-complaint.json", "order-3");
    let app = &app;
    let post = |secret: &'static str, body: Vec<u8>| async move {
        app.post_raw("/callbacks/postmark", &[("content-type", "application/json"), ("x-hook-secret", secret)], body)
            .await
    };
    assert_eq!(post("not-the-secret", body.clone()).await.0, 401);
    assert_eq!(post("header-secret", body).await.0, 200);
    assert_eq!(app.history_types("order-3").await, ["COMPLAINED"]);
    let (_, m) = app.get("/messages/order-3").await;
    assert_eq!(m["status"], "ENQUEUED", "a complaint does not move the status: {m}");
}
