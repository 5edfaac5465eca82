//! Health, readiness, metrics, the OpenAPI description, API-key generation,
//! and the 503 answers when overloaded or when the database is down.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use hookrelay::config::{DatabaseConfig, IngestConfig};
use hookrelay::domain::Secret;
use hookrelay::http::auth::ApiKeys;
use hookrelay::http::{AppState, router};
use hookrelay::ingest::Ingest;
use hookrelay::store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::backend_tests;
use crate::helpers::{API_KEY, Backend, TestDb, spawn_app, start, test_config};

backend_tests!(
    health_readiness_metrics_and_description,
    an_api_key_is_generated_once,
    a_first_start_that_cannot_listen_keeps_no_key,
);

async fn health_readiness_metrics_and_description(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let plain = |path: &str| app.client.get(app.url(path)).send();
    assert_eq!(plain("/healthz").await.expect("send").status(), 200);
    assert_eq!(plain("/readyz").await.expect("send").status(), 200);

    app.register(json!({"id": "metrics-1"})).await;
    let metrics = plain("/metrics").await.expect("send").text().await.expect("text");
    for name in [
        "hookrelay_http_requests_total",
        "hookrelay_http_request_duration_seconds",
        "hookrelay_ingest_queue_depth",
        "hookrelay_ingest_batch_events",
        "hookrelay_ingest_commit_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    let doc: Value = plain("/openapi.json").await.expect("send").json().await.expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/messages", "post"),
        ("/messages", "get"),
        ("/messages/{id}", "get"),
        ("/messages/{id}/history", "get"),
        ("/messages/{id}/events", "post"),
        ("/messages/{id}/cancel", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not described");
    }
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}

async fn an_api_key_is_generated_once(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let mut config = test_config(&db);
    config.auth.api_keys.clear();
    let app = start(config.clone(), db).await;
    let key = app.generated_key.clone().expect("a key is generated on first start");
    let with_key = app.client.get(app.url("/messages")).bearer_auth(&key).send().await.expect("send");
    assert_eq!(with_key.status(), 200);
    let without = app.client.get(app.url("/messages")).bearer_auth(API_KEY).send().await.expect("send");
    assert_eq!(without.status(), 401, "only the generated key works");
    let db = app.stop().await;

    let again = start(config, db).await;
    assert_eq!(again.generated_key, None, "the second start finds the stored key");
    let still = again.client.get(again.url("/messages")).bearer_auth(&key).send().await.expect("send");
    assert_eq!(still.status(), 200);
}

/// A first start whose port is taken must not store a generated key it
/// never gets to show: the next start generates (and shows) one.
async fn a_first_start_that_cannot_listen_keeps_no_key(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut config = test_config(&db);
    config.auth.api_keys.clear();
    config.server.listen = taken.local_addr().expect("addr").to_string();
    let err = hookrelay::Application::build(config.clone()).await.expect_err("the port is taken");
    assert!(format!("{err:#}").contains("cannot listen"), "{err:#}");
    let store = hookrelay::store::open(&config.database).await.expect("store");
    assert!(store.api_keys().await.expect("keys").is_empty(), "no key stored by a start that failed");

    config.server.listen = "127.0.0.1:0".into();
    let app = start(config, db).await;
    let key = app.generated_key.clone().expect("the next start generates and shows a key");
    let with_key = app.client.get(app.url("/messages")).bearer_auth(&key).send().await.expect("send");
    assert_eq!(with_key.status(), 200);
}

async fn state_for(store: Arc<dyn Store>, queue_capacity: usize) -> (Arc<AppState>, hookrelay::ingest::BatchWriter) {
    let config = IngestConfig { queue_capacity, retry_after_seconds: 7, ..IngestConfig::default() };
    let (ingest, writer) = Ingest::new(store.clone(), &config);
    let (_, _, delivery) = hookrelay::delivery::dispatcher::Dispatcher::new(store.clone(), &Default::default());
    let keys = Arc::new(ApiKeys::load(&[Secret::new(API_KEY)], store.clone()).await);
    let state = Arc::new(AppState {
        store,
        ingest,
        keys,
        metrics: hookrelay::telemetry::metrics_handle(),
        retry_after: config.retry_after_seconds,
        callbacks: hookrelay::http::callbacks::Callbacks::new(
            Vec::new(),
            "http://127.0.0.1".into(),
            Arc::new(hookrelay::http::callbacks::SnsHttp::new().expect("sns client")),
        ),
        delivery,
        address_policy: Default::default(),
        tracking: hookrelay::tracking::Tracking::disabled(),
        max_replay: 100_000,
    });
    (state, writer)
}

fn register_request(id: &str) -> Request<Body> {
    Request::post("/messages")
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(json!({ "id": id }).to_string()))
        .expect("request")
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let store = hookrelay::store::open(&test_config(&db).database).await.expect("store");
    // The writer is not running, so the single slot stays taken.
    let (state, mut writer) = state_for(store, 1).await;
    let app = router(state.clone(), 1 << 20);
    let first = tokio::spawn(app.clone().oneshot(register_request("queued")));
    for _ in 0..10_000 {
        if state.ingest.depth() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(state.ingest.depth(), 1, "the first request is queued");
    let response = app.clone().oneshot(register_request("refused")).await.expect("response");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
    // Once the writer runs, the queued request is committed and answered.
    assert!(writer.run_once().await);
    let first = first.await.expect("join").expect("response");
    assert_eq!(first.status(), 202);
}

#[tokio::test]
async fn a_database_that_is_down_answers_503() {
    let config = DatabaseConfig {
        url: "postgres://postgres@127.0.0.1:1/nowhere".into(),
        connect_timeout_ms: 300,
        ..DatabaseConfig::default()
    };
    let store: Arc<dyn Store> =
        Arc::new(hookrelay::store::postgres::PgStore::connect(&config.url, &config).expect("lazy pool"));
    let (state, writer) = state_for(store, 16).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn(writer.run(stop.clone()));
    let app = router(state, 1 << 20);

    let response = app.clone().oneshot(register_request("lost")).await.expect("response");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["type"], "api_error");

    let ready =
        app.clone().oneshot(Request::get("/readyz").body(Body::empty()).expect("request")).await.expect("response");
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
    let list = app
        .oneshot(
            Request::get("/messages")
                .header("authorization", format!("Bearer {API_KEY}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(list.status(), 503);
    assert_eq!(
        list.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("7"),
        "a read that meets a database outage asks for the configured wait, as ingest does"
    );
    stop.cancel();
    writer.await.expect("writer stops");
}

/// A row held locked by another session: the event for it gets 503 within
/// the statement timeout, other requests are not held up for long, and
/// everything works again once the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_row_answers_503_and_recovers() {
    let Some(app) = crate::helpers::spawn_app_with(Backend::Postgres, |c| {
        c.database.statement_timeout_ms = 600;
        c.ingest.commit_timeout_ms = 1_500;
    })
    .await
    else {
        return;
    };
    app.register(json!({"id": "locked"})).await;
    let url = app.db.url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.batch_execute("BEGIN; SELECT * FROM messages WHERE id = 'locked' FOR UPDATE").await.expect("lock");

    let started = std::time::Instant::now();
    let (status, body) = app.post("/messages/locked/events", json!({"status": "SENT"})).await;
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "answered within the timeouts");
    let (status, _) = app.post("/messages", json!({"id": "unrelated"})).await;
    assert_eq!(status, 202, "other messages are not held up");

    client.batch_execute("ROLLBACK").await.expect("unlock");
    let (status, m) = app.post("/messages/locked/events", json!({"status": "SENT"})).await;
    assert_eq!((status, m["status"].clone()), (202, json!("SENT")));
}

/// Tracking with no key is a configuration matter: 503 in the usual error
/// shape, without a `Retry-After` that would invite pointless retries.
#[tokio::test]
async fn tracking_without_keys_answers_503_without_retry_after() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let store = hookrelay::store::open(&test_config(&db).database).await.expect("store");
    let (state, _writer) = state_for(store, 16).await;
    let request = Request::post("/tracking/links")
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(json!({ "message_id": "m1", "url": "https://example.com/" }).to_string()))
        .expect("request");
    let response = router(state, 1 << 20).oneshot(request).await.expect("response");
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_none());
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["type"], "api_error");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("key")), "{body}");
}
