//! resend callbacks end to end (both backends).

use base64::Engine;
use hmac::{KeyInit, Mac};
use hookrelay::config::SourceConfig;
use hookrelay::domain::Secret;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

backend_tests!(
    signed_events_land_in_the_history,
    a_tampered_event_is_refused_and_nothing_recorded,
    the_generated_signed_fixture_is_accepted,
);

/// The svix libraries' test secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn source() -> SourceConfig {
    SourceConfig {
        name: "resend".into(),
        provider: "resend".into(),
        secrets: vec![Secret::new(SECRET)],
        ..SourceConfig::default()
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/providers/resend/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// Svix headers for `body` under message id `id`, signed now.
fn sign(id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let timestamp = (hookrelay::clock::now_ms() / 1000).to_string();
    let key = base64::engine::general_purpose::STANDARD.decode(&SECRET["whsec_".len()..]).expect("secret");
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let signature = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    vec![("svix-id", id.to_owned()), ("svix-timestamp", timestamp), ("svix-signature", signature)]
}

async fn post(app: &TestApp, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    all.extend(headers.iter().map(|(n, v)| (*n, v.as_str())));
    app.post_raw("/callbacks/resend", &all, body).await
}

/// A sample, tagged with hookrelay's id as sent with `tags: [{name, value}]`.
fn tagged(name: &str, id: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture(name)).expect("json");
    v["data"]["tags"] = json!({"hookrelay_id": id});
    serde_json::to_vec(&v).expect("json")
}

async fn signed_events_land_in_the_history(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.sources.push(source())).await else { return };
    app.register(
        json!({"id": "order-1", "provider": "resend", "provider_message_id": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"}),
    )
    .await;
    for (svix_id, name) in [
        ("msg_delivered", "email.delivered.json"),
        ("msg_opened", "email.opened.json"),
        ("msg_clicked", "email.clicked.json"),
    ] {
        let body = tagged(name, "order-1");
        let (status, answer) = post(&app, &sign(svix_id, &body), body).await;
        assert_eq!((status, answer.clone()), (200, json!({"accepted": 1, "duplicates": 0})), "{name}: {answer}");
    }
    // The sent sample carries no id of ours: it is tied by email_id.
    let sent = fixture("email.sent.json");
    assert_eq!(post(&app, &sign("msg_sent", &sent), sent).await.0, 200);
    // Svix retries with the same id and a new signature: recorded once.
    let again = tagged("email.clicked.json", "order-1");
    let (status, answer) = post(&app, &sign("msg_clicked", &again), again).await;
    assert_eq!((status, answer), (200, json!({"accepted": 0, "duplicates": 1})));

    let (_, m) = app.get("/messages/order-1").await;
    assert_eq!(m["status"], "CLICKED", "{m}");
    assert_eq!(app.history_types("order-1").await, ["SENT", "DELIVERED", "OPENED", "CLICKED", "ENQUEUED"]);
    let (_, history) = app.get("/messages/order-1/history?type=CLICKED").await;
    let click = &history["results"][0];
    assert_eq!(click["provider"], "resend");
    assert_eq!(click["provider_event"], "email.clicked");
    assert_eq!(click["recipient"], "to@example.org");
    assert_eq!(click["url"], "https://example.com/test");
    assert_eq!(click["data"]["data"]["click"]["ipAddress"], "192.168.1.101", "the raw event is kept");

    // A failure for another message (another email_id), by its tag alone.
    let mut failed: Value = serde_json::from_slice(&tagged("email.failed.json", "order-2")).expect("json");
    failed["data"]["email_id"] = json!("bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee");
    let failed = serde_json::to_vec(&failed).expect("json");
    assert_eq!(post(&app, &sign("msg_failed", &failed), failed).await.0, 200);
    let (_, history) = app.get("/messages/order-2/history").await;
    let entry = &history["results"][0];
    assert_eq!((entry["type"].clone(), entry["reason"].clone()), (json!("UNDELIVERABLE"), json!("PROVIDER_ERROR")));
    assert_eq!(entry["error"], "reached_daily_quota");
}

async fn a_tampered_event_is_refused_and_nothing_recorded(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.sources.push(source())).await else { return };
    let body = tagged("email.delivered.json", "order-1");
    let headers = sign("msg_t", &body);
    let tampered = String::from_utf8(body.clone()).expect("utf-8").replace("email.delivered", "email.clicked");
    let (status, answer) = post(&app, &headers, tampered.into_bytes()).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["message"], "callback authentication failed");
    // Another svix-id than the one signed; no signature at all.
    let mut moved = headers.clone();
    moved[0].1 = "msg_other".into();
    assert_eq!(post(&app, &moved, body.clone()).await.0, 401);
    assert_eq!(post(&app, &[], body).await.0, 401);
    let (_, list) = app.get("/messages").await;
    assert_eq!(list["results"], json!([]), "nothing was recorded");
    // Signed but not a Resend event: 400.
    let junk = br#"{"hello":"world"}"#.to_vec();
    assert_eq!(post(&app, &sign("msg_junk", &junk), junk).await.0, 400);
}

async fn the_generated_signed_fixture_is_accepted(backend: Backend) {
    // Signed in 2024 with the published secret: accepted as is with a long
    // window; hookrelay's id is in its `relay_message_id` tag.
    let Some(app) = spawn_app_with(backend, |c| {
        c.sources.push(SourceConfig {
            id_field: "relay_message_id".into(),
            tolerance_seconds: Some(100 * 365 * 24 * 3600),
            ..source()
        })
    })
    .await
    else {
        return;
    };
    let text = String::from_utf8(fixture("generated-signed-email.delivered.headers")).expect("utf-8");
    let headers: Vec<(&str, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(n, v)| {
            ["svix-id", "svix-timestamp", "svix-signature"].into_iter().find(|h| *h == n).map(|h| (h, v.to_owned()))
        })
        .collect();
    assert_eq!(headers.len(), 3);
    let body = fixture("generated-signed-email.delivered.payload");
    let (status, answer) = post(&app, &headers, body.clone()).await;
    assert_eq!((status, answer.clone()), (200, json!({"accepted": 1, "duplicates": 0})), "{answer}");
    let (_, m) = app.get("/messages/msg_01HZX3RELAYEXAMPLE").await;
    assert_eq!(m["status"], "DELIVERED", "{m}");
    assert_eq!(m["delivered"], 1_718_367_224_823_i64);
    // The default five-minute window refuses the same request.
    let Some(strict) = spawn_app_with(backend, |c| c.sources.push(source())).await else { return };
    assert_eq!(post(&strict, &headers, body).await.0, 401);
}
