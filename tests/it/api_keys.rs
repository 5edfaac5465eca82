//! API keys an operator manages: scopes on every route, creation and
//! revocation over HTTP, last-used times written in batches, and keys
//! stored before scopes existed keeping every right.

use std::sync::Arc;

use hookrelay::domain::{Scope, Scopes};
use hookrelay::http::auth::{ApiKeys, new_key};
use hookrelay::store::Store;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, TestDb, read, spawn_app, start, test_config};

backend_tests!(
    a_read_key_reads_and_a_send_key_sends,
    keys_are_created_listed_and_revoked,
    the_last_admin_key_cannot_be_revoked,
    last_use_is_recorded_in_batches,
);

async fn call(app: &TestApp, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    read(request.send().await.expect("send")).await
}

/// Creates a key over the API (with the test's admin key) and returns it.
async fn create(app: &TestApp, name: &str, scopes: &[&str]) -> (String, Value) {
    let (status, body) = app.post("/api-keys", json!({"name": name, "scopes": scopes})).await;
    assert_eq!(status, 201, "{body}");
    (body["key"].as_str().expect("the key, once").to_owned(), body)
}

async fn a_read_key_reads_and_a_send_key_sends(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let (reader, _) = create(&app, "support desk", &["read"]).await;
    let (sender, _) = create(&app, "mailer", &["send"]).await;
    app.register(json!({"id": "scoped-1", "recipient": "ada@example.com"})).await;

    for path in ["/messages", "/messages/scoped-1", "/messages/scoped-1/history"] {
        assert_eq!(call(&app, "GET", path, &reader, None).await.0, 200, "read {path}");
        let (status, body) = call(&app, "GET", path, &sender, None).await;
        assert_eq!(status, 403, "a send key cannot read {path}: {body}");
    }
    let (status, body) = call(&app, "POST", "/messages", &reader, Some(json!({"id": "nope"}))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "invalid_request_error", "Courier's error shape: {body}");
    assert!(body["message"].as_str().expect("message").contains("`send`"), "{body}");
    for (method, path, body) in [
        ("GET", "/subscriptions", None),
        ("POST", "/subscriptions", Some(json!({"url": "https://example.com/x"}))),
        ("GET", "/api-keys", None),
        ("POST", "/api-keys", Some(json!({"name": "escalate", "scopes": ["admin"]}))),
    ] {
        assert_eq!(call(&app, method, path, &reader, body.clone()).await.0, 403, "read {method} {path}");
        assert_eq!(call(&app, method, path, &sender, body).await.0, 403, "send {method} {path}");
    }

    let (status, body) = call(&app, "POST", "/messages", &sender, Some(json!({"id": "scoped-2"}))).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) =
        call(&app, "POST", "/messages/scoped-2/events", &sender, Some(json!({"status": "SENT"}))).await;
    assert_eq!(status, 202, "{body}");
    // A wrong key is still 401, whatever the route.
    assert_eq!(call(&app, "GET", "/messages", "hr_not-a-key-at-all-0000000000", None).await.0, 401);
}

async fn keys_are_created_listed_and_revoked(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let (key, created) = create(&app, "temporary", &["read", "send"]).await;
    assert_eq!(created["scopes"], json!(["read", "send"]));
    assert_eq!(created["prefix"].as_str(), Some(&key[..9]));
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(call(&app, "GET", "/messages", &key, None).await.0, 200);

    let (status, list) = app.get("/api-keys").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["configured_keys"], 1);
    let listed = list["results"].as_array().expect("results");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(listed[0].get("key").is_none() && !list.to_string().contains(&key), "never listed again: {list}");

    for (body, why) in [
        (json!({"name": "", "scopes": ["read"]}), "empty name"),
        (json!({"name": "x", "scopes": []}), "no scope"),
        (json!({"name": "x", "scopes": ["write"]}), "unknown scope"),
        (json!({"name": "x"}), "scopes missing"),
        (json!({"name": "x".repeat(101), "scopes": ["read"]}), "long name"),
    ] {
        assert_eq!(app.post("/api-keys", body).await.0, 400, "{why}");
    }

    assert_eq!(app.delete(&format!("/api-keys/{id}")).await, 204);
    assert_eq!(call(&app, "GET", "/messages", &key, None).await.0, 401, "revoked at once");
    assert_eq!(app.delete(&format!("/api-keys/{id}")).await, 404);
    assert_eq!(app.delete("/api-keys/not-an-id!").await, 404);
}

async fn the_last_admin_key_cannot_be_revoked(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let mut config = test_config(&db);
    config.auth.api_keys.clear();
    let app = start(config, db).await;
    let admin = app.generated_key.clone().expect("generated");
    let (_, list) = call(&app, "GET", "/api-keys", &admin, None).await;
    assert_eq!(list["results"][0]["scopes"], json!(["admin"]), "the generated key is admin: {list}");
    let id = list["results"][0]["id"].as_str().expect("id").to_owned();
    let (status, body) = call(&app, "DELETE", &format!("/api-keys/{id}"), &admin, None).await;
    assert_eq!(status, 409, "{body}");
    // With a second admin key it can go.
    let (status, second) =
        call(&app, "POST", "/api-keys", &admin, Some(json!({"name": "ops", "scopes": ["admin"]}))).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(call(&app, "DELETE", &format!("/api-keys/{id}"), &admin, None).await.0, 204);
    assert_eq!(call(&app, "GET", "/messages", &admin, None).await.0, 401);
    let second = second["key"].as_str().expect("key");
    assert_eq!(call(&app, "GET", "/api-keys", second, None).await.0, 200);
}

async fn last_use_is_recorded_in_batches(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let store: Arc<dyn Store> = app.store.clone();
    let (key, record) = new_key("batch", Scopes::of(&[Scope::Read]), 1_000).expect("entropy");
    store.insert_api_key(&record).await.expect("insert");
    let keys = ApiKeys::load(&[], store.clone()).await;
    for _ in 0..50 {
        assert!(keys.check(&key).await.is_some());
    }
    let stored = store.api_keys().await.expect("keys");
    assert_eq!(stored.iter().find(|k| k.id == record.id).expect("stored").last_used_at, None, "no write per use");
    keys.flush().await.expect("flush");
    let stored = store.api_keys().await.expect("keys");
    let used = stored.iter().find(|k| k.id == record.id).expect("stored").last_used_at;
    assert!(used.is_some_and(|t| t > 1_000), "{used:?}");
    keys.flush().await.expect("nothing to write is fine");
}
