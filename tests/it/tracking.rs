//! Open and click tracking end to end, on both backends: an HTML email
//! rewritten through `POST /tracking/rewrite`, its pixel and links fetched
//! through the real endpoints, and the hits seen in the message's history.
//!
//! Hits are recorded without the request waiting for the commit, so these
//! tests poll `GET /messages/{id}/history` in a short bounded loop: the
//! endpoint deliberately does not wait, so there is nothing to drive.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use hookrelay::config::{Config, IngestConfig, TrackingKey};
use hookrelay::domain::Secret;
use hookrelay::http::auth::ApiKeys;
use hookrelay::http::{AppState, router};
use hookrelay::ingest::Ingest;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::backend_tests;
use crate::helpers::{API_KEY, Backend, TestApp, TestDb, eventually, spawn_app_with, start, test_config};

backend_tests!(
    a_rewritten_email_is_opened_and_clicked,
    bad_tokens_never_redirect_and_record_nothing,
    machine_hits_are_recorded_but_do_not_move_the_status,
    machine_hits_move_the_status_when_configured,
    a_click_right_after_sending_is_a_scanner,
    tracked_links_for_one_url,
    keys_rotate_without_breaking_old_links,
    tracking_works_with_no_keys_configured,
    subscribers_hear_about_clicks,
);

const BROWSER: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                       Version/17.4 Safari/605.1.15";
const K1: &str = "k1-secret-0123456789abcdefghijklmnop";
const K2: &str = "k2-secret-0123456789abcdefghijklmnop";

const EMAIL: &str = r#"<!DOCTYPE html>
<html><head><title>Spring</title></head>
<BODY>
<table role="presentation"><tr><td>
  <h1>Spring sale &amp; more</h1>
  <A HREF="https://shop.example.com/sale?utm_source=mail&amp;utm_campaign=spring">Shop now</A>
  <a href="mailto:help@shop.example.com">Help</a>
  <!-- <a href="https://hidden.example.com/">old</a> -->
  <a href="https://shop.example.com/unsubscribe" data-hookrelay-notrack>Unsubscribe</a>
</td></tr></table>
</BODY>
</html>"#;

fn key(id: &str, secret: &str) -> TrackingKey {
    TrackingKey { id: id.into(), secret: Secret::new(secret) }
}

/// Tracking with one key; clicks are not timed (the tests click at once).
fn tracked(config: &mut Config) {
    config.tracking.keys = vec![key("k1", K1)];
    config.tracking.scanner_window_seconds = 0;
}

/// A client that never follows redirects, as a test of a redirector must.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// Rewrites `html` for message `id` and returns the response body.
async fn rewrite(app: &TestApp, id: &str, html: &str) -> Value {
    let (status, body) = app.post("/tracking/rewrite", json!({"message_id": id, "html": html})).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The pixel URL and the tracked link URLs in rewritten HTML.
fn tracked_urls(html: &str) -> (String, Vec<String>) {
    let mut pixel = String::new();
    let mut links = Vec::new();
    let settings = lol_html::RewriteStrSettings::new()
        .append_element_content_handler(lol_html::element!("img[src]", |el| {
            let src = el.get_attribute("src").unwrap_or_default();
            if src.contains("/t/o/") {
                pixel = src;
            }
            Ok(())
        }))
        .append_element_content_handler(lol_html::element!("a[href]", |el| {
            let href = el.get_attribute("href").unwrap_or_default();
            if href.contains("/t/c/") {
                links.push(href);
            }
            Ok(())
        }));
    lol_html::rewrite_str(html, settings).expect("parse");
    (pixel, links)
}

async fn hit(client: &reqwest::Client, method: reqwest::Method, url: &str, ua: Option<&str>) -> reqwest::Response {
    let mut request = client.request(method, url);
    if let Some(ua) = ua {
        request = request.header("user-agent", ua);
    }
    request.send().await.expect("send")
}

/// Waits until a message's history has `n` entries of `kind` (hits are
/// queued without waiting for their commit).
async fn wait_for(app: &TestApp, id: &str, kind: &str, n: usize) -> Vec<Value> {
    eventually(&format!("message {id} has {n} {kind} entries"), || async {
        let (status, body) = app.get(&format!("/messages/{id}/history")).await;
        let entries: Vec<Value> = if status == 200 {
            body["results"].as_array().expect("results").iter().filter(|e| e["type"] == kind).cloned().collect()
        } else {
            Vec::new()
        };
        (entries.len() >= n).then_some(entries)
    })
    .await
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn assert_pixel(response: reqwest::Response) {
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("image/gif"));
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    let body = response.bytes().await.expect("body");
    assert_eq!(&body[..], hookrelay::tracking::PIXEL_GIF);
}

async fn assert_not_found_page(response: reqwest::Response) {
    assert_eq!(response.status(), 404);
    assert_eq!(header(&response, "location"), None, "never a redirect");
    assert_eq!(header(&response, "content-type"), Some("text/plain; charset=utf-8"));
    assert!(response.text().await.expect("text").contains("not valid"));
}

async fn a_rewritten_email_is_opened_and_clicked(backend: Backend) {
    let Some(app) = spawn_app_with(backend, tracked).await else { return };
    app.register(json!({"id": "spring-1", "recipient": "r@example.com"})).await;
    let body = rewrite(&app, "spring-1", EMAIL).await;
    assert_eq!((body["links_tracked"].clone(), body["links_untouched"].clone()), (json!(1), json!(2)), "{body}");
    assert_eq!((body["open_pixel"].clone(), body["key_id"].clone()), (json!(true), json!("k1")));
    let html = body["html"].as_str().expect("html");
    assert!(html.contains(r#"<a href="mailto:help@shop.example.com">"#), "{html}");
    assert!(html.contains(r#"<a href="https://shop.example.com/unsubscribe">"#), "{html}");
    assert!(html.contains(r#"<!-- <a href="https://hidden.example.com/">old</a> -->"#));
    let (pixel, links) = tracked_urls(html);
    assert!(pixel.starts_with(&app.url("/t/o/")), "tracked URLs use the public URL: {pixel}");
    assert_eq!(links.len(), 1);

    let client = no_redirects();
    assert_pixel(hit(&client, reqwest::Method::GET, &pixel, Some(BROWSER)).await).await;
    let response = hit(&client, reqwest::Method::GET, &links[0], Some(BROWSER)).await;
    assert_eq!(response.status(), 302);
    let target = "https://shop.example.com/sale?utm_source=mail&utm_campaign=spring";
    assert_eq!(header(&response, "location"), Some(target), "exactly the signed target, &amp; decoded");
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    assert_eq!(header(&response, "referrer-policy"), Some("no-referrer"));

    let clicked = wait_for(&app, "spring-1", "CLICKED", 1).await;
    assert_eq!(clicked[0]["url"], target);
    assert_eq!(clicked[0]["user_agent_class"], "browser");
    assert_eq!(clicked[0].get("machine"), None);
    let opened = wait_for(&app, "spring-1", "OPENED", 1).await;
    assert_eq!(opened[0]["user_agent_class"], "browser");
    let (_, message) = app.get("/messages/spring-1").await;
    assert_eq!(message["status"], "CLICKED", "{message}");
    assert!(message["opened"].as_i64().is_some() && message["clicked"].as_i64().is_some(), "{message}");
    // No raw address or user agent is kept anywhere in the history.
    let (_, history) = app.get("/messages/spring-1/history").await;
    let text = history.to_string();
    assert!(!text.contains("127.0.0.1") && !text.contains("Safari"), "{text}");

    // A repeat within the dedupe window is one event, not two.
    let again = hit(&client, reqwest::Method::GET, &links[0], Some(BROWSER)).await;
    assert_eq!(again.status(), 302);
    // It is recognised at the edge and never queued.
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("send").text().await.expect("text");
    assert!(metrics.contains(r#"hookrelay_tracking_hits_total{kind="click",outcome="repeat"}"#), "{metrics}");
    // A different agent class in the same window is a separate event,
    // which, once seen, shows the repeat before it was committed too.
    hit(&client, reqwest::Method::GET, &links[0], Some("curl/8.5.0")).await;
    let clicked = wait_for(&app, "spring-1", "CLICKED", 2).await;
    assert_eq!(clicked.len(), 2, "{clicked:?}");

    // Every tracking route is described.
    let doc: Value = app.client.get(app.url("/openapi.json")).send().await.expect("send").json().await.expect("json");
    for (path, method) in
        [("/t/o/{token}", "get"), ("/t/c/{token}", "get"), ("/tracking/rewrite", "post"), ("/tracking/links", "post")]
    {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not described");
    }
}

async fn bad_tokens_never_redirect_and_record_nothing(backend: Backend) {
    let Some(app) = spawn_app_with(backend, tracked).await else { return };
    let body = rewrite(&app, "victim", EMAIL).await;
    let (pixel, links) = tracked_urls(body["html"].as_str().expect("html"));
    let good = links[0].rsplit('/').next().expect("token").to_owned();
    let open_token = pixel.rsplit('/').next().expect("token").to_owned();
    let client = no_redirects();

    let mut bad: Vec<String> = vec![
        "x".into(),
        "AAAA".into(),
        "not%20a%20token".into(),
        format!("{good}A"),
        format!("{good}="),
        good[..good.len() - 1].to_owned(),
        open_token.clone(), // an open token is not a click token
        "%0d%0aLocation:%20https://evil.example".into(),
        "https:%2F%2Fevil.example".into(),
        "..%2F..%2Fmessages".into(),
    ];
    // Every single character of a valid token changed.
    for i in 0..good.len() {
        let mut t = good.clone().into_bytes();
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        bad.push(String::from_utf8(t).expect("ascii"));
    }
    for token in &bad {
        let response = hit(&client, reqwest::Method::GET, &app.url(&format!("/t/c/{token}")), Some(BROWSER)).await;
        assert_not_found_page(response).await;
        // At the pixel, the click token is the one of the wrong kind.
        let token = if *token == open_token { &good } else { token };
        let response = hit(&client, reqwest::Method::GET, &app.url(&format!("/t/o/{token}")), Some(BROWSER)).await;
        assert_pixel(response).await;
    }
    // A valid hit on another message, queued after all of the above, is
    // committed in order: once it shows, anything before it would have too.
    let sentinel = rewrite(&app, "sentinel", EMAIL).await;
    let (sentinel_pixel, _) = tracked_urls(sentinel["html"].as_str().expect("html"));
    assert_pixel(hit(&client, reqwest::Method::GET, &sentinel_pixel, Some(BROWSER)).await).await;
    wait_for(&app, "sentinel", "OPENED", 1).await;
    let (_, list) = app.get("/messages").await;
    let ids: Vec<&str> = list["results"].as_array().expect("results").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["sentinel"], "the bad tokens recorded nothing");

    let metrics = app.client.get(app.url("/metrics")).send().await.expect("send").text().await.expect("text");
    assert!(metrics.contains("hookrelay_tracking_invalid_total"), "{metrics}");
}

async fn machine_hits_are_recorded_but_do_not_move_the_status(backend: Backend) {
    let Some(app) = spawn_app_with(backend, tracked).await else { return };
    app.register(json!({"id": "m-1"})).await;
    let body = rewrite(&app, "m-1", EMAIL).await;
    let (pixel, links) = tracked_urls(body["html"].as_str().expect("html"));
    let client = no_redirects();

    // Apple Mail Privacy Protection's proxy, a HEAD probe, a bot, Gmail's proxy.
    assert_pixel(hit(&client, reqwest::Method::GET, &pixel, Some("Mozilla/5.0")).await).await;
    let head = hit(&client, reqwest::Method::HEAD, &links[0], Some(BROWSER)).await;
    assert_eq!(head.status(), 302, "a HEAD still gets the redirect");
    let bot = hit(&client, reqwest::Method::GET, &links[0], Some("python-requests/2.31")).await;
    assert_eq!(bot.status(), 302, "a bot still gets the redirect");

    let opened = wait_for(&app, "m-1", "OPENED", 1).await;
    assert_eq!(
        (opened[0]["machine"].clone(), opened[0]["user_agent_class"].clone()),
        (json!(true), json!("apple_mpp"))
    );
    assert_eq!(opened[0]["status_unchanged"], true);
    let clicked = wait_for(&app, "m-1", "CLICKED", 2).await;
    let mut classes: Vec<&str> = clicked.iter().filter_map(|e| e["user_agent_class"].as_str()).collect();
    classes.sort_unstable();
    assert_eq!(classes, ["bot", "head"]);
    assert!(clicked.iter().all(|e| e["machine"] == true && e["status_unchanged"] == true), "{clicked:?}");
    let (_, message) = app.get("/messages/m-1").await;
    assert_eq!(message["status"], "ENQUEUED", "machine hits move nothing: {message}");

    // A person's open (through Gmail's image proxy) does.
    let gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    assert_pixel(hit(&client, reqwest::Method::GET, &pixel, Some(gmail)).await).await;
    let opened = wait_for(&app, "m-1", "OPENED", 2).await;
    assert!(opened.iter().any(|e| e["user_agent_class"] == "google_image_proxy" && e.get("machine").is_none()));
    let (_, message) = app.get("/messages/m-1").await;
    assert_eq!(message["status"], "OPENED");

    let metrics = app.client.get(app.url("/metrics")).send().await.expect("send").text().await.expect("text");
    assert!(metrics.contains("hookrelay_tracking_machine_total"), "{metrics}");
}

async fn machine_hits_move_the_status_when_configured(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        tracked(c);
        c.tracking.machine_events_change_status = true;
    })
    .await
    else {
        return;
    };
    let body = rewrite(&app, "m-2", EMAIL).await;
    let (pixel, _) = tracked_urls(body["html"].as_str().expect("html"));
    assert_pixel(hit(&no_redirects(), reqwest::Method::GET, &pixel, Some("Mozilla/5.0")).await).await;
    let opened = wait_for(&app, "m-2", "OPENED", 1).await;
    assert_eq!(opened[0]["machine"], true);
    assert_eq!(opened[0].get("status_unchanged"), None);
    let (_, message) = app.get("/messages/m-2").await;
    assert_eq!(message["status"], "OPENED", "created by the hit and moved by it: {message}");
}

async fn a_click_right_after_sending_is_a_scanner(backend: Backend) {
    // The default window: a click within 10 s of the link being signed.
    let Some(app) = spawn_app_with(backend, |c| c.tracking.keys = vec![key("k1", K1)]).await else { return };
    app.register(json!({"id": "scan-1"})).await;
    let body = rewrite(&app, "scan-1", EMAIL).await;
    let (_, links) = tracked_urls(body["html"].as_str().expect("html"));
    let response = hit(&no_redirects(), reqwest::Method::GET, &links[0], Some(BROWSER)).await;
    assert_eq!(response.status(), 302);
    let clicked = wait_for(&app, "scan-1", "CLICKED", 1).await;
    assert_eq!(
        (clicked[0]["user_agent_class"].clone(), clicked[0]["machine"].clone()),
        (json!("scanner"), json!(true))
    );
    let (_, message) = app.get("/messages/scan-1").await;
    assert_eq!(message["status"], "ENQUEUED");
}

async fn tracked_links_for_one_url(backend: Backend) {
    let Some(app) = spawn_app_with(backend, tracked).await else { return };
    let (status, body) =
        app.post("/tracking/links", json!({"message_id": "sms-1", "url": "HTTPS://Example.com/a b?x=1"})).await;
    assert_eq!(status, 400, "a space is refused: {body}");
    let (status, body) =
        app.post("/tracking/links", json!({"message_id": "sms-1", "url": "HTTPS://Example.com/p?x=1&y=%C3%A9"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["target"], "https://example.com/p?x=1&y=%C3%A9");
    assert_eq!(body["key_id"], "k1");
    let link = body["url"].as_str().expect("url");
    let response = hit(&no_redirects(), reqwest::Method::GET, link, Some(BROWSER)).await;
    assert_eq!(header(&response, "location"), Some("https://example.com/p?x=1&y=%C3%A9"));
    wait_for(&app, "sms-1", "CLICKED", 1).await;

    // Nothing hookrelay would not redirect to is ever signed.
    for url in [
        "javascript:alert(document.cookie)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "//evil.example/",
        "/relative",
        "https:/evil.example",
        "https:\\\\evil.example",
        "https://example.com\\@evil.example",
        "https://trusted.example@evil.example/",
        "https://example.com/%0d%0aSet-Cookie:x=y",
        "https://example.com/\r\nSet-Cookie:x=y",
        "ftp://example.com/",
        "",
    ] {
        let (status, body) = app.post("/tracking/links", json!({"message_id": "sms-1", "url": url})).await;
        assert_eq!(status, 400, "{url:?} was signed: {body}");
        assert_eq!(body["type"], "invalid_request_error");
    }
    // Input validation.
    let (status, body) =
        app.post("/tracking/links", json!({"message_id": "bad id", "url": "https://e.example/"})).await;
    assert!(status == 400 && body["message"].as_str().is_some_and(|m| m.contains("message_id")), "{body}");
    // Neither pixel nor links: the HTML comes back as it was.
    let (status, body) =
        app.post("/tracking/rewrite", json!({"message_id": "x", "html": "<p>", "opens": false, "clicks": false})).await;
    assert_eq!((status, body["html"].clone(), body["links_tracked"].clone()), (200, json!("<p>"), json!(0)));
    let (status, _) = app.post("/tracking/rewrite", json!({"message_id": "x", "html": "<p>", "extra": 1})).await;
    assert_eq!(status, 400, "unknown fields are refused");
    // The sender endpoints need the API key; the hit endpoints do not.
    let anonymous = app
        .client
        .post(app.url("/tracking/links"))
        .json(&json!({"message_id": "x", "url": "https://e.example/"}))
        .send()
        .await
        .expect("send");
    assert_eq!(anonymous.status(), 401);
    let anonymous = app.client.post(app.url("/tracking/rewrite")).json(&json!({})).send().await.expect("send");
    assert_eq!(anonymous.status(), 401);
}

async fn keys_rotate_without_breaking_old_links(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let mut config = test_config(&db);
    tracked(&mut config);
    let app = start(config.clone(), db).await;
    let (_, old) = app.post("/tracking/links", json!({"message_id": "rot", "url": "https://e.example/old"})).await;
    assert_eq!(old["key_id"], "k1");
    let old_path = old["url"].as_str().expect("url").split_once("/t/c/").expect("path").1.to_owned();
    let db = app.stop().await;

    // Rotation: the new key first, the old one kept.
    config.tracking.keys = vec![key("k2", K2), key("k1", K1)];
    let app = start(config.clone(), db).await;
    let client = no_redirects();
    let response = hit(&client, reqwest::Method::GET, &app.url(&format!("/t/c/{old_path}")), Some(BROWSER)).await;
    assert_eq!(header(&response, "location"), Some("https://e.example/old"), "old links keep working");
    let (_, new) = app.post("/tracking/links", json!({"message_id": "rot", "url": "https://e.example/new"})).await;
    assert_eq!(new["key_id"], "k2");
    let new_path = new["url"].as_str().expect("url").split_once("/t/c/").expect("path").1.to_owned();
    let db = app.stop().await;

    // Retiring k1: its links stop redirecting; k2's still work.
    config.tracking.keys = vec![key("k2", K2)];
    let app = start(config, db).await;
    let response = hit(&client, reqwest::Method::GET, &app.url(&format!("/t/c/{old_path}")), Some(BROWSER)).await;
    assert_not_found_page(response).await;
    let response = hit(&client, reqwest::Method::GET, &app.url(&format!("/t/c/{new_path}")), Some(BROWSER)).await;
    assert_eq!(header(&response, "location"), Some("https://e.example/new"));
}

async fn tracking_works_with_no_keys_configured(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else { return };
    let (status, body) = app.post("/tracking/rewrite", json!({"message_id": "nk", "html": EMAIL})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key_id"], "stored", "signed with the key generated on first start");
    let (_, links) = tracked_urls(body["html"].as_str().expect("html"));
    let client = no_redirects();
    let first = hit(&client, reqwest::Method::GET, &links[0], Some(BROWSER)).await;
    assert_eq!(first.status(), 302);

    // The stored key survives a restart, and keeps verifying once keys are
    // configured: links already sent keep working.
    let db = app.stop().await;
    let mut config = test_config(&db);
    config.tracking.keys = vec![key("2026-11", "a-configured-secret-of-at-least-32-chars")];
    let again = start(config, db).await;
    let link = links[0].replace(&links[0][..links[0].find("/t/c/").expect("path")], &again.url(""));
    let response = hit(&client, reqwest::Method::GET, &link, Some(BROWSER)).await;
    assert_eq!(response.status(), 302, "a link signed before the restart still redirects");
    let body = rewrite(&again, "nk2", EMAIL).await;
    assert_eq!(body["key_id"], "2026-11", "new links use the configured key");
}

/// A loopback HTTP sink that collects webhook bodies.
async fn sink() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    let _ = tx.send(v);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

async fn subscribers_hear_about_clicks(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        tracked(c);
        c.delivery.allow_cidrs = vec!["127.0.0.0/8".parse().expect("cidr")];
    })
    .await
    else {
        return;
    };
    let (url, mut deliveries) = sink().await;
    let (status, body) = app.post("/subscriptions", json!({"url": url})).await;
    assert_eq!(status, 201, "{body}");
    app.register(json!({"id": "fan-1"})).await;
    let body = rewrite(&app, "fan-1", EMAIL).await;
    let (_, links) = tracked_urls(body["html"].as_str().expect("html"));
    assert_eq!(hit(&no_redirects(), reqwest::Method::GET, &links[0], Some(BROWSER)).await.status(), 302);
    let clicked = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(payload) = deliveries.recv().await {
            if payload["data"]["status"] == "CLICKED" {
                return payload;
            }
        }
        Value::Null
    })
    .await
    .expect("a message:updated webhook for the click");
    assert_eq!(clicked["type"], "message:updated");
    assert_eq!(clicked["data"]["id"], "fan-1");
}

/// Under overload the pixel still answers and the redirect still
/// redirects, without waiting for any commit; what could not be queued is
/// counted. The writer is not running here, so any wait would hang.
#[tokio::test]
async fn overload_never_blocks_a_hit() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let store = hookrelay::store::open(&test_config(&db).database).await.expect("store");
    let ingest_config = IngestConfig { queue_capacity: 1, ..IngestConfig::default() };
    let (ingest, mut writer) = Ingest::new(store.clone(), &ingest_config);
    let (_, _, delivery) = hookrelay::delivery::dispatcher::Dispatcher::new(store.clone(), &Default::default());
    let tracking_config = hookrelay::config::TrackingConfig {
        keys: vec![key("k1", K1)],
        scanner_window_seconds: 0,
        ..Default::default()
    };
    let tracking =
        hookrelay::tracking::Tracking::from_config(&tracking_config, "http://relay.test".into()).expect("tracking");
    let state = Arc::new(AppState {
        store: store.clone(),
        ingest,
        keys: ApiKeys::load(&[Secret::new(API_KEY)], store.clone()).await.into(),
        metrics: hookrelay::telemetry::metrics_handle(),
        retry_after: 1,
        callbacks: hookrelay::http::callbacks::Callbacks::new(
            Vec::new(),
            "http://relay.test".into(),
            Arc::new(hookrelay::http::callbacks::SnsHttp::new().expect("sns client")),
        ),
        delivery,
        address_policy: Default::default(),
        tracking: tracking.clone(),
        max_replay: 100_000,
    });
    let app = router(state.clone(), 1 << 20);
    let id = hookrelay::domain::MessageId::parse("busy").expect("id");
    let now = hookrelay::clock::now_ms();
    let pixel = tracking.open_url(&id, now).expect("open url").replace("http://relay.test", "");
    let (click, _) = tracking.click_url(&id, "https://e.example/busy", now).expect("click url");
    let click = click.replace("http://relay.test", "");
    let get = |path: &str| Request::get(path).header("user-agent", BROWSER).body(Body::empty()).expect("request");

    let wait = Duration::from_secs(2);
    // The first hit takes the only slot; the next ones find the queue full.
    for path in [&pixel, &click, &pixel, &click] {
        let response = tokio::time::timeout(wait, app.clone().oneshot(get(path))).await.expect("answered at once");
        let response = response.expect("response");
        if path == &pixel {
            assert_eq!(response.status(), 200);
        } else {
            assert_eq!(response.status(), 302);
            assert_eq!(response.headers()["location"], "https://e.example/busy");
        }
    }
    assert_eq!(state.ingest.depth(), 1);
    let metrics = state.metrics.render();
    assert!(
        metrics.lines().any(|l| l.starts_with("hookrelay_tracking_dropped_total") && l.contains("overloaded")),
        "{metrics}"
    );
    // The one hit that was queued is committed when the writer runs.
    assert!(writer.run_once().await);
    let history = store.history(&id, None).await.expect("history");
    assert_eq!(history.map(|h| h.len()), Some(1));
}
