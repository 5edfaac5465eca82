//! Outbound fan-out end to end: subscriptions, signed deliveries to a real
//! HTTP subscriber, retries, failures, limits, replays, operator tools.
//!
//! Tests about the retry schedule run with the application's own worker
//! switched off and drive a worker step by step (`run_once`), so they never
//! wait on timers; tests about concurrency and wake-ups use the running
//! worker and wait for the subscriber to receive requests.

use std::time::Duration;

use hookrelay::config::{Config, DeliveryConfig};
use hookrelay::delivery::client::{Client, EXCERPT_BYTES};
use hookrelay::delivery::dispatcher::Dispatcher;
use hookrelay::delivery::ssrf::AddressPolicy;
use hookrelay::domain::outbox::{AttemptRecord, DeliveryKind, DeliveryRow, DeliveryState, Health, Lease, Recorded};
use hookrelay::domain::signing::{VerifyKey, WebhookSecret, verify_courier, verify_standard};
use hookrelay::domain::{DeliveryId, MessageId, SubscriptionId};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, eventually, spawn_app_with};
use crate::sink::{Reply, Sink};

backend_tests!(
    status_changes_arrive_signed_and_in_order,
    filters_and_all_events,
    failures_are_retried_until_success,
    an_exhausted_schedule_ends_dead,
    gone_disables_the_subscription_and_client_errors_fail_at_once,
    a_slow_endpoint_never_holds_back_another,
    rate_limits_space_requests_out,
    replay_resends_the_current_state,
    manual_retry_and_test_ping,
    rotation_and_the_courier_scheme,
    ed25519_subscriptions_sign_with_a_key_only_hookrelay_holds,
    an_expired_lease_is_taken_over,
    subscription_settings_are_checked,
    shutdown_finishes_attempts_and_releases_the_rest,
    a_subscription_failing_too_long_is_disabled,
    a_replay_too_large_queues_nothing,
    outcomes_under_a_lost_lease_are_not_written,
    concurrent_subscription_changes_conflict,
    a_backlog_is_claimed_without_waiting_for_the_poll,
    a_stuck_endpoint_keeps_its_backlog_in_the_outbox,
);

/// Delivery settings for tests: loopback allowed, quick retries, no jitter.
fn fast(c: &mut Config) {
    c.delivery.allow_cidrs = vec!["127.0.0.1/32".parse().expect("cidr")];
    c.delivery.retry_schedule_seconds = vec![0.0, 0.0, 0.0];
    c.delivery.jitter = 0.0;
    c.delivery.poll_interval_ms = 200;
}

/// An application whose own worker is off, and a worker the test drives.
async fn driven(backend: Backend, schedule: Vec<f64>) -> Option<(TestApp, Dispatcher)> {
    let delivery = DeliveryConfig {
        allow_cidrs: vec!["127.0.0.1/32".parse().expect("cidr")],
        retry_schedule_seconds: schedule,
        jitter: 0.0,
        ..DeliveryConfig::default()
    };
    let app = spawn_app_with(backend, |c| {
        c.delivery = delivery.clone();
        c.delivery.enabled = false;
    })
    .await?;
    let (worker, _, _) = Dispatcher::new(app.store.clone(), &delivery);
    Some((app, worker))
}

async fn subscribe(app: &TestApp, body: Value) -> (String, VerifyKey) {
    let (status, sub) = app.post("/subscriptions", body).await;
    assert_eq!(status, 201, "{sub}");
    let secret = VerifyKey::parse(sub["secret"].as_str().expect("secret")).expect("whsec_ or whpk_");
    (sub["id"].as_str().expect("id").to_owned(), secret)
}

/// The `whsec_` secret behind a key (Courier signatures need it).
fn hmac(key: &VerifyKey) -> &WebhookSecret {
    match key {
        VerifyKey::Hmac(secret) => secret,
        VerifyKey::Ed25519Public(_) => panic!("an HMAC subscription"),
    }
}

fn verify(secret: &VerifyKey, r: &crate::sink::Received) {
    let now = hookrelay::clock::now_ms();
    verify_standard(
        secret,
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        r.header("webhook-signature"),
        &r.body,
        now,
        300,
    )
    .expect("a valid Standard Webhooks signature");
}

async fn deliveries(app: &TestApp, sub: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/subscriptions/{sub}/deliveries?limit=200")).await;
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().expect("results").clone()
}

async fn status_changes_arrive_signed_and_in_order(backend: Backend) {
    let Some(app) = spawn_app_with(backend, fast).await else { return };
    let sink = Sink::start().await;
    let (sub, secret) = subscribe(&app, json!({"url": sink.url("/hook"), "headers": {"X-Team": "billing"}})).await;
    app.register(json!({"id": "m1", "recipient": "r@example.com"})).await;
    app.event("m1", json!({"status": "SENT"})).await;
    app.event("m1", json!({"status": "DELIVERED"})).await;
    let got = sink.take(3).await;
    let mut seqs: Vec<i64> = Vec::new();
    for r in &got {
        verify(&secret, r);
        assert_eq!(r.path, "/hook");
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("x-team"), "billing", "custom headers are sent");
        assert!(r.header("user-agent").starts_with("hookrelay/"));
        let body = r.json();
        assert_eq!(body["type"], "message:updated");
        assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(body["data"]["id"], "m1");
        seqs.push(body["data"]["seq"].as_i64().expect("seq"));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3]);
    let last = got.iter().map(|r| r.json()).max_by_key(|b| b["data"]["seq"].as_i64()).expect("last");
    assert_eq!(last["data"]["status"], "DELIVERED");
    assert!(last["data"]["sent"].is_i64() && last["data"]["delivered"].is_i64(), "milestones accumulate");

    // Every webhook-id is a delivery hookrelay can show.
    let ids: Vec<_> = got.iter().map(|r| r.header("webhook-id").to_owned()).collect();
    let (status, d) = app.get(&format!("/deliveries/{}", ids[0])).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["subscription_id"], sub.as_str());
    // Each key once: the count and the attempts themselves are two fields.
    let raw = app
        .client
        .get(app.url(&format!("/deliveries/{}", ids[0])))
        .bearer_auth(crate::helpers::API_KEY)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert_eq!(raw.matches("\"attempts\":").count(), 1, "{raw}");
    assert_eq!(d["attempt_count"], 1, "{d}");
    assert_eq!(
        d["attempts"],
        json!([{"attempt": 1, "started_at": d["attempts"][0]["started_at"], "latency_ms": d["attempts"][0]["latency_ms"], "status_code": 204}])
    );
    // Outcomes are recorded in batches, just after the answer.
    eventually("three deliveries recorded as succeeded", || async {
        let states: Vec<_> =
            deliveries(&app, &sub).await.iter().map(|d| d["state"].as_str().unwrap_or("").to_owned()).collect();
        (states == ["succeeded"; 3]).then_some(())
    })
    .await;
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("hookrelay_deliveries_total{outcome=\"succeeded\"}"), "deliveries by outcome");
    assert!(metrics.contains("hookrelay_delivery_attempt_seconds"), "attempt latency");
}

async fn filters_and_all_events(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        fast(c);
        c.sources.push(crate::callbacks::mailgun_source());
    })
    .await
    else {
        return;
    };
    let (bounces, everything) = (Sink::start().await, Sink::start().await);
    subscribe(&app, json!({"url": bounces.url("/"), "statuses": ["UNDELIVERABLE", "delivered"]})).await;
    subscribe(&app, json!({"url": everything.url("/"), "all_events": true})).await;
    app.register(json!({"id": "f1", "provider": "mailgun", "provider_message_id": "f1@mg"})).await;
    app.event("f1", json!({"status": "DELIVERED"})).await;
    let complaint = json!({"event": "complained", "id": "c1", "timestamp": 1_700_000_000.0,
                           "message": {"headers": {"message-id": "f1@mg"}}});
    let (status, _) = app
        .post_raw(
            "/callbacks/mailgun",
            &[("content-type", "application/json")],
            crate::callbacks::mailgun_body(complaint, "t-c"),
        )
        .await;
    assert_eq!(status, 200);
    let only = bounces.next().await;
    assert_eq!(only.json()["data"]["status"], "DELIVERED");
    bounces.assert_quiet(Duration::from_millis(300)).await;
    let all = everything.take(3).await;
    let complaint = all.iter().map(|r| r.json()).find(|b| b.get("event").is_some()).expect("the complaint");
    assert_eq!(complaint["event"]["type"], "COMPLAINED");
    assert_eq!(complaint["data"]["status"], "DELIVERED", "the message as it stands");
}

async fn failures_are_retried_until_success(backend: Backend) {
    let Some((app, mut worker)) = driven(backend, vec![0.0, 0.0, 0.0]).await else { return };
    let sink = Sink::start().await;
    let (sub, secret) = subscribe(&app, json!({"url": sink.url("/")})).await;
    app.register(json!({"id": "r1"})).await;
    sink.script([Reply::Status(500), Reply::Status(503), Reply::Status(204)]);
    let mut attempts = 0;
    for _ in 0..3 {
        attempts += worker.run_once().await;
    }
    assert_eq!(attempts, 3);
    let got = sink.take(3).await;
    let ids: Vec<_> = got.iter().map(|r| r.header("webhook-id").to_owned()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "webhook-id is stable across retries");
    for r in &got {
        verify(&secret, r);
    }
    let (_, d) = app.get(&format!("/deliveries/{}", ids[0])).await;
    assert_eq!(d["state"], "succeeded");
    let codes: Vec<_> = d["attempts"].as_array().expect("attempts").iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(503), json!(204)]);
    assert_eq!(d["attempts"][0]["error"], "status 500");
    assert_eq!(d["attempts"][0]["response"], "sink answered 500", "a response excerpt is kept");
    assert_eq!(worker.run_once().await, 0, "nothing left to do");
    let (_, s) = app.get(&format!("/subscriptions/{sub}")).await;
    assert!(s.get("failing_since").is_none(), "a success clears the failure record: {s}");
}

async fn an_exhausted_schedule_ends_dead(backend: Backend) {
    let Some((app, mut worker)) = driven(backend, vec![0.0]).await else { return };
    let sink = Sink::start().await;
    let (sub, _) = subscribe(&app, json!({"url": sink.url("/")})).await;
    app.register(json!({"id": "d1"})).await;
    sink.script([Reply::Status(500), Reply::Status(502)]);
    assert_eq!(worker.run_once().await, 1);
    assert_eq!(worker.run_once().await, 1);
    assert_eq!(worker.run_once().await, 0);
    let list = deliveries(&app, &sub).await;
    assert_eq!(list[0]["state"], "dead");
    assert_eq!(list[0]["attempt_count"], 2);
    assert_eq!(list[0]["last_status"], 502);
    assert_eq!(list[0]["last_error"], "status 502");
    let (_, s) = app.get(&format!("/subscriptions/{sub}")).await;
    assert!(s["failing_since"].is_i64(), "the failure is remembered: {s}");
    let (_, dead) = app.get(&format!("/subscriptions/{sub}/deliveries?state=dead")).await;
    assert_eq!(dead["results"].as_array().map(Vec::len), Some(1));
    let (_, ok) = app.get(&format!("/subscriptions/{sub}/deliveries?state=succeeded")).await;
    assert_eq!(ok["results"], json!([]));
    // Deleting the subscription deletes its deliveries and their attempts.
    let delivery = list[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(app.get(&format!("/deliveries/{delivery}")).await.0, 200);
    assert_eq!(app.delete(&format!("/subscriptions/{sub}")).await, 204);
    assert_eq!(app.get(&format!("/deliveries/{delivery}")).await.0, 404);
    assert_eq!((app.db.count("deliveries").await, app.db.count("delivery_attempts").await), (0, 0));
}

async fn gone_disables_the_subscription_and_client_errors_fail_at_once(backend: Backend) {
    let Some((app, mut worker)) = driven(backend, vec![0.0, 0.0]).await else { return };
    let (gone, picky) = (Sink::start().await, Sink::start().await);
    let (gone_sub, _) = subscribe(&app, json!({"url": gone.url("/")})).await;
    let (picky_sub, _) = subscribe(&app, json!({"url": picky.url("/")})).await;
    gone.script([Reply::Status(410)]);
    picky.script([Reply::Status(422)]);
    app.register(json!({"id": "g1"})).await;
    assert_eq!(worker.run_once().await, 2);
    assert_eq!(worker.run_once().await, 0, "neither is retried");
    let (_, s) = app.get(&format!("/subscriptions/{gone_sub}")).await;
    assert_eq!(s["enabled"], false);
    assert_eq!(s["disabled_reason"], "the endpoint answered 410 Gone");
    assert_eq!(deliveries(&app, &picky_sub).await[0]["state"], "failed");
    let (_, p) = app.get(&format!("/subscriptions/{picky_sub}")).await;
    assert_eq!(p["enabled"], true, "other 4xx answers fail the delivery, not the subscription");
    // A disabled subscription gets no new deliveries until it is enabled.
    app.event("g1", json!({"status": "SENT"})).await;
    assert_eq!(deliveries(&app, &gone_sub).await.len(), 1);
    let (status, s) = app.post(&format!("/subscriptions/{gone_sub}/enable"), json!({})).await;
    assert_eq!((status, s["enabled"].clone()), (200, json!(true)));
    app.event("g1", json!({"status": "DELIVERED"})).await;
    assert_eq!(deliveries(&app, &gone_sub).await.len(), 2);
}

async fn a_slow_endpoint_never_holds_back_another(backend: Backend) {
    let Some(app) = spawn_app_with(backend, fast).await else { return };
    let (slow, quick) = (Sink::start().await, Sink::start().await);
    // The slow endpoint answers nothing until the quick one has everything.
    slow.script((0..6).map(|_| Reply::Held(204)));
    subscribe(&app, json!({"url": slow.url("/"), "max_in_flight": 2})).await;
    subscribe(&app, json!({"url": quick.url("/")})).await;
    for i in 0..6 {
        app.register(json!({"id": format!("s{i}")})).await;
    }
    let quick_got = quick.take(6).await;
    slow.wait_started(2).await;
    assert_eq!(slow.started(), 2, "the slow endpoint holds its two requests and gets no more meanwhile");
    slow.release();
    let slow_got = slow.take(6).await;
    let last_quick = quick_got.iter().map(|r| r.at).max().expect("six");
    let first_slow = slow_got.iter().map(|r| r.at).min().expect("six");
    assert!(last_quick < first_slow, "every quick delivery was answered before the slow endpoint answered once");
    assert_eq!(slow.most_at_once(), 2, "max_in_flight holds");
    assert!(slow_got.iter().all(|r| r.json()["type"] == "message:updated"));
}

async fn rate_limits_space_requests_out(backend: Backend) {
    let Some(app) = spawn_app_with(backend, fast).await else { return };
    let sink = Sink::start().await;
    subscribe(&app, json!({"url": sink.url("/"), "rate_limit_per_second": 5})).await;
    for i in 0..10 {
        app.register(json!({"id": format!("rl{i}")})).await;
    }
    let got = sink.take(10).await;
    let span = got[9].at.duration_since(got[0].at);
    // A burst of 5, then one every 200 ms: at least 0.8 s for the last 5.
    assert!(span >= Duration::from_millis(780), "10 requests at 5/s took only {span:?}");
}

async fn replay_resends_the_current_state(backend: Backend) {
    let Some(app) = spawn_app_with(backend, fast).await else { return };
    for i in 0..5 {
        app.register(json!({"id": format!("p{i}")})).await;
    }
    app.event("p1", json!({"status": "DELIVERED"})).await;
    app.event("p2", json!({"status": "DELIVERED"})).await;
    let sink = Sink::start().await;
    let (sub, _) = subscribe(&app, json!({"url": sink.url("/")})).await;
    let (status, body) = app
        .post(
            &format!("/subscriptions/{sub}/replay"),
            json!({"from": "2000-01-01T00:00:00Z", "statuses": ["DELIVERED"]}),
        )
        .await;
    assert_eq!((status, body["queued"].clone()), (202, json!(2)), "{body}");
    let got = sink.take(2).await;
    let mut ids: Vec<_> = got.iter().map(|r| r.json()["data"]["id"].as_str().expect("id").to_owned()).collect();
    ids.sort();
    assert_eq!(ids, ["p1", "p2"]);
    assert!(got.iter().all(|r| r.json()["data"]["status"] == "DELIVERED"));
    let (status, body) = app.post(&format!("/subscriptions/{sub}/replay"), json!({"from": 0})).await;
    assert_eq!((status, body["queued"].clone()), (202, json!(5)));
    sink.take(5).await;
    for bad in [json!({}), json!({"from": "yesterday"}), json!({"from": 0, "statuses": ["NOPE"]})] {
        let (status, _) = app.post(&format!("/subscriptions/{sub}/replay"), bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
    }
    // A range that ends before it starts holds no message.
    let (status, body) = app.post(&format!("/subscriptions/{sub}/replay"), json!({"from": 10, "to": 5})).await;
    assert_eq!((status, body["queued"].clone()), (202, json!(0)));
}

async fn manual_retry_and_test_ping(backend: Backend) {
    let Some((app, mut worker)) = driven(backend, vec![0.0]).await else { return };
    let sink = Sink::start().await;
    let (sub, secret) = subscribe(&app, json!({"url": sink.url("/")})).await;
    sink.script([Reply::Status(400)]);
    app.register(json!({"id": "mr"})).await;
    worker.run_once().await;
    let failed = deliveries(&app, &sub).await[0].clone();
    assert_eq!(failed["state"], "failed");
    let id = failed["id"].as_str().expect("id");
    let (status, queued) = app.post(&format!("/deliveries/{id}/retry"), json!({})).await;
    assert_eq!((status, queued["state"].clone()), (202, json!("pending")), "{queued}");
    assert_eq!(worker.run_once().await, 1);
    let (_, d) = app.get(&format!("/deliveries/{id}")).await;
    assert_eq!(d["state"], "succeeded");
    assert_eq!(d["attempts"].as_array().map(Vec::len), Some(2));
    assert_eq!(d["payload"]["data"]["id"], "mr", "the payload is shown as JSON");
    sink.take(2).await;
    assert_eq!(app.post("/deliveries/dlv_missing/retry", json!({})).await.0, 404);

    let (status, ping) = app.post(&format!("/subscriptions/{sub}/test"), json!({})).await;
    assert_eq!(status, 200, "{ping}");
    assert_eq!((ping["succeeded"].clone(), ping["status_code"].clone()), (json!(true), json!(204)));
    let r = sink.next().await;
    verify(&secret, &r);
    assert_eq!(r.json()["type"], "ping");
    assert_eq!(r.header("webhook-id"), ping["delivery_id"].as_str().expect("id"));
    sink.script([Reply::Status(503)]);
    let (_, ping) = app.post(&format!("/subscriptions/{sub}/test"), json!({})).await;
    assert_eq!((ping["succeeded"].clone(), ping["status_code"].clone()), (json!(false), json!(503)));
    assert_eq!(worker.run_once().await, 0, "pings are not retried");
}

async fn rotation_and_the_courier_scheme(backend: Backend) {
    let Some(app) = spawn_app_with(backend, fast).await else { return };
    let sink = Sink::start().await;
    let (sub, old) = subscribe(&app, json!({"url": sink.url("/")})).await;
    let (status, rotated) =
        app.post(&format!("/subscriptions/{sub}/rotate-secret"), json!({"overlap_seconds": 3600})).await;
    assert_eq!(status, 200, "{rotated}");
    let new = VerifyKey::parse(rotated["secret"].as_str().expect("secret")).expect("whsec_");
    assert_ne!(new, old);
    assert_eq!(rotated["previous"].as_array().map(Vec::len), Some(1));
    let (_, shown) = app.get(&format!("/subscriptions/{sub}/secret")).await;
    assert_eq!(shown["secret"], rotated["secret"]);
    app.register(json!({"id": "rot"})).await;
    let r = sink.next().await;
    assert_eq!(r.header("webhook-signature").split(' ').count(), 2, "both secrets sign during the overlap");
    verify(&new, &r);
    verify(&old, &r);
    // Without overlap the old secret stops signing at once.
    app.post(&format!("/subscriptions/{sub}/rotate-secret"), json!({"overlap_seconds": 0})).await;
    let (_, shown) = app.get(&format!("/subscriptions/{sub}/secret")).await;
    assert_eq!(shown["previous"].as_array().map(Vec::len), Some(1), "the earlier overlap still runs");
    assert_eq!(
        app.post(&format!("/subscriptions/{sub}/rotate-secret"), json!({"overlap_seconds": 999_999_999})).await.0,
        400
    );

    let courier = Sink::start().await;
    let (_, c) = app
        .post(
            "/subscriptions",
            json!({"url": courier.url("/"), "signature_scheme": "courier", "secret": hmac(&old).expose()}),
        )
        .await;
    assert_eq!(c["signature_scheme"], "courier");
    app.register(json!({"id": "cour"})).await;
    let r = courier.next().await;
    assert!(r.headers.get("webhook-signature").is_none());
    verify_courier(hmac(&old), r.header("courier-signature"), &r.body, hookrelay::clock::now_ms(), 300)
        .expect("a valid courier-signature");
}

async fn ed25519_subscriptions_sign_with_a_key_only_hookrelay_holds(backend: Backend) {
    let Some(app) = spawn_app_with(backend, fast).await else { return };
    let sink = Sink::start().await;
    let (status, created) = app
        .post("/subscriptions", json!({"url": sink.url("/"), "signature_scheme": "standard-webhooks-ed25519"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let sub = created["id"].as_str().expect("id").to_owned();
    let public = created["secret"].as_str().expect("secret");
    assert!(public.starts_with("whpk_"), "a consumer gets the public key: {public}");
    let (_, shown) = app.get(&format!("/subscriptions/{sub}/secret")).await;
    assert_eq!(shown["secret"], public);
    assert_eq!(shown["signature_scheme"], "standard-webhooks-ed25519");
    let key = VerifyKey::parse(public).expect("whpk_");
    app.register(json!({"id": "ed-1"})).await;
    let r = sink.next().await;
    assert!(r.header("webhook-signature").starts_with("v1a,"), "{}", r.header("webhook-signature"));
    verify(&key, &r);

    // A rotation keeps the old key signing during the overlap.
    let (status, rotated) = app.post(&format!("/subscriptions/{sub}/rotate-secret"), json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let new = VerifyKey::parse(rotated["secret"].as_str().expect("secret")).expect("whpk_");
    assert_ne!(new, key);
    app.register(json!({"id": "ed-2"})).await;
    let r = sink.next().await;
    assert_eq!(r.header("webhook-signature").matches("v1a,").count(), 2);
    verify(&new, &r);
    verify(&key, &r);

    // A whsec_ secret is not an ed25519 key, and the other way round.
    let (status, body) = app
        .post(
            "/subscriptions",
            json!({"url": sink.url("/"), "signature_scheme": "standard-webhooks-ed25519",
                   "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().expect("message").contains("ed25519"), "{body}");
    let seed = "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
    let (status, body) = app.post("/subscriptions", json!({"url": sink.url("/"), "secret": seed})).await;
    assert_eq!(status, 400, "{body}");
    // A given signing key is used, and only its public half is shown.
    let (status, body) = app
        .post(
            "/subscriptions",
            json!({"url": sink.url("/x"), "signature_scheme": "standard-webhooks-ed25519", "secret": seed}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["secret"].as_str().expect("secret").starts_with("whpk_"));
    assert!(!body.to_string().contains("VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk"), "{body}");
    assert_eq!(app.delete(&format!("/subscriptions/{}", body["id"].as_str().expect("id"))).await, 204);

    // Moving to HMAC makes a whsec_ secret; the ed25519 key signs beside it for the overlap.
    let (status, patched) =
        app.patch(&format!("/subscriptions/{sub}"), json!({"signature_scheme": "standard-webhooks"})).await;
    assert_eq!(status, 200, "{patched}");
    let (_, shown) = app.get(&format!("/subscriptions/{sub}/secret")).await;
    let secret = VerifyKey::parse(shown["secret"].as_str().expect("secret")).expect("whsec_");
    assert!(matches!(secret, VerifyKey::Hmac(_)), "{shown}");
    app.register(json!({"id": "ed-3"})).await;
    let r = sink.next().await;
    let header = r.header("webhook-signature");
    assert!(header.starts_with("v1,") && header.contains(" v1a,"), "{header}");
    verify(&secret, &r);
    verify(&new, &r);
}

async fn an_expired_lease_is_taken_over(backend: Backend) {
    let Some((app, mut worker)) = driven(backend, vec![0.0]).await else { return };
    let sink = Sink::start().await;
    let (sub, _) = subscribe(&app, json!({"url": sink.url("/")})).await;
    let now = hookrelay::clock::now_ms();
    let row = |lease_left: i64| DeliveryRow {
        id: DeliveryId::generate(),
        subscription_id: SubscriptionId::parse(&sub).expect("id"),
        message_id: MessageId::parse("orphan").expect("id"),
        seq: 1,
        kind: DeliveryKind::Status,
        payload: br#"{"type":"message:updated","data":{"id":"orphan"}}"#.to_vec(),
        created_at: now + lease_left,
    };
    // One held by a worker that died (its lease ran out), one still held.
    let expired = row(-1);
    let held = row(0);
    app.store
        .insert_deliveries(std::slice::from_ref(&expired), Some(&Lease { worker: "w_dead".into(), until: now - 1 }))
        .await
        .expect("insert");
    app.store
        .insert_deliveries(std::slice::from_ref(&held), Some(&Lease { worker: "w_busy".into(), until: now + 60_000 }))
        .await
        .expect("insert");
    assert_eq!(worker.run_once().await, 1, "only the expired lease is taken over");
    assert_eq!(sink.next().await.header("webhook-id"), expired.id.as_str());
    let states: Vec<_> = deliveries(&app, &sub)
        .await
        .iter()
        .map(|d| (d["id"].as_str().unwrap_or("").to_owned(), d["state"].clone()))
        .collect();
    assert!(states.contains(&(expired.id.to_string(), json!("succeeded"))));
    assert!(states.contains(&(held.id.to_string(), json!("pending"))));
}

async fn subscription_settings_are_checked(backend: Backend) {
    let Some(app) =
        spawn_app_with(backend, |c| c.delivery.allow_cidrs = vec!["127.0.0.1/32".parse().expect("cidr")]).await
    else {
        return;
    };
    for (body, mention) in [
        (json!({"url": "http://10.0.0.1/hook"}), "allow_cidrs"),
        (json!({"url": "http://169.254.169.254/latest"}), "allow_cidrs"),
        (json!({"url": "http://[::1]/"}), "allow_cidrs"),
        (json!({"url": "ftp://example.com/"}), "http"),
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "https://example.com", "headers": {"Host": "x"}}), "headers"),
        (json!({"url": "https://example.com", "headers": {"webhook-id": "x"}}), "headers"),
        (json!({"url": "https://example.com", "headers": {"x-n": 1}}), "headers"),
        (json!({"url": "https://example.com", "secret": "whsec_short"}), "secret"),
        (json!({"url": "https://example.com", "statuses": ["NOPE"]}), "statuses"),
        (json!({"url": "https://example.com", "statuses": []}), "statuses"),
        (json!({"url": "https://example.com", "signature_scheme": "md5"}), "signature_scheme"),
        (json!({"url": "https://example.com", "max_in_flight": 0}), "max_in_flight"),
        (json!({"url": "https://example.com", "colour": "blue"}), "colour"),
    ] {
        let (status, err) = app.post("/subscriptions", body.clone()).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| m.contains(mention)), "{mention}: {err}");
    }
    let (_, created) =
        app.post("/subscriptions", json!({"url": "https://example.com/a", "description": "team A"})).await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(created["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")));
    let (status, got) = app.get(&format!("/subscriptions/{id}")).await;
    assert_eq!(status, 200);
    assert!(got.get("secret").is_none(), "the secret is only shown at creation and by /secret");
    let (status, patched) = app
        .patch(
            &format!("/subscriptions/{id}"),
            json!({"statuses": ["DELIVERED"], "max_in_flight": 4, "description": null}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["statuses"], json!(["DELIVERED"]));
    assert_eq!(patched["max_in_flight"], 4);
    assert!(patched.get("description").is_none());
    let (_, patched) = app.patch(&format!("/subscriptions/{id}"), json!({"statuses": null})).await;
    assert_eq!(patched["statuses"], Value::Null, "null means all statuses");
    assert_eq!(app.patch(&format!("/subscriptions/{id}"), json!({"url": "http://10.1.1.1/"})).await.0, 400);
    let (_, disabled) = app.post(&format!("/subscriptions/{id}/disable"), json!({})).await;
    assert_eq!(
        (disabled["enabled"].clone(), disabled["disabled_reason"].clone()),
        (json!(false), json!("disabled by an operator"))
    );
    for i in 0..3 {
        app.post("/subscriptions", json!({"url": format!("https://example.com/{i}")})).await;
    }
    let (_, page1) = app.get("/subscriptions?limit=2").await;
    assert_eq!(page1["paging"]["more"], true);
    let cursor = page1["paging"]["cursor"].as_str().expect("cursor");
    let (_, page2) = app.get(&format!("/subscriptions?limit=2&cursor={cursor}")).await;
    assert_eq!(page2["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(page2["paging"]["more"], false);
    assert_eq!(app.delete(&format!("/subscriptions/{id}")).await, 204);
    assert_eq!(app.get(&format!("/subscriptions/{id}")).await.0, 404);
    assert_eq!(app.delete(&format!("/subscriptions/{id}")).await, 404);
    assert_eq!(app.get("/subscriptions/sub_nope/deliveries").await.0, 404);
    assert_eq!(
        app.get(&format!("/subscriptions/{}/deliveries?state=lost", page2["results"][0]["id"].as_str().expect("id")))
            .await
            .0,
        400
    );
}

/// The address policy holds on the address actually connected to: a name
/// resolving to loopback is refused unless loopback is allow-listed, and
/// so is a literal address.
#[tokio::test]
async fn requests_to_private_addresses_are_refused_at_connect_time() {
    hookrelay::net::install_crypto_provider();
    let sink = Sink::start().await;
    let port = sink.addr.port();
    let strict = Client::new(AddressPolicy::default(), Duration::from_secs(2), Duration::from_secs(5), 4);
    for url in [
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let r = strict.post(&url, &[], "{}".into(), 0).await;
        assert_eq!(r.status, None, "{url}");
        assert!(
            r.error.as_deref().is_some_and(|e| e.contains("not allowed") || e.contains("not an allowed")),
            "{url}: {:?}",
            r.error
        );
    }
    sink.assert_quiet(Duration::from_millis(200)).await;
    let open = Client::new(
        AddressPolicy::new(&["127.0.0.1/32".parse().expect("cidr")]),
        Duration::from_secs(2),
        Duration::from_secs(5),
        4,
    );
    let r = open.post(&format!("http://localhost:{port}/ok"), &[], "{}".into(), 0).await;
    assert_eq!(r.status, Some(204), "{:?}", r.error);
    assert_eq!(sink.next().await.path, "/ok");
}

#[tokio::test]
async fn the_client_reports_what_happened() {
    hookrelay::net::install_crypto_provider();
    let sink = Sink::start().await;
    let policy = || AddressPolicy::new(&["127.0.0.1/32".parse().expect("cidr")]);
    let client = Client::new(policy(), Duration::from_secs(2), Duration::from_millis(500), 4);
    let post = |path: &str| {
        let url = sink.url(path);
        let client = client.clone();
        async move { client.post(&url, &[("x-team", "blue")], "{}".into(), 0).await }
    };

    // What is sent: the body, the content type, an agent, the extra headers.
    let r = post("/plain#fragment").await;
    assert_eq!((r.status, r.error.clone()), (Some(204), None));
    let got = sink.next().await;
    assert_eq!((got.path.as_str(), got.body.as_ref()), ("/plain", b"{}".as_slice()));
    assert_eq!(got.header("content-type"), "application/json");
    assert!(got.header("user-agent").starts_with("hookrelay/"));
    assert_eq!(got.header("x-team"), "blue");

    // A large answer is cut to an excerpt.
    sink.script([Reply::With(200, "x-big", "1", "a".repeat(10_000))]);
    let r = post("/big").await;
    let excerpt = r.excerpt.expect("an excerpt");
    assert_eq!((r.status, excerpt.chars().count()), (Some(200), EXCERPT_BYTES + 1));
    assert!(excerpt.ends_with('…'));

    // Redirects are reported, not followed; Retry-After is read.
    sink.script([
        Reply::With(302, "location", "https://elsewhere.example/", String::new()),
        Reply::With(503, "retry-after", "120", String::new()),
    ]);
    let r = post("/moved").await;
    assert_eq!(r.status, Some(302));
    assert_eq!(r.error.as_deref(), Some("status 302: redirects are not followed (to https://elsewhere.example/)"));
    let r = post("/busy").await;
    assert_eq!((r.status, r.retry_after), (Some(503), Some(Duration::from_secs(120))));
    sink.take(3).await;

    // No answer in time, nobody listening, no such URL.
    sink.script([Reply::Slow(Duration::from_secs(3), 200)]);
    let r = post("/slow").await;
    assert_eq!((r.status, r.error.as_deref()), (None, Some("timed out")));
    assert!(r.latency < Duration::from_secs(2), "{:?}", r.latency);
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let r = client.post(&format!("http://{closed}/"), &[], "{}".into(), 0).await;
    assert!(r.error.as_deref().is_some_and(|e| e.starts_with("connection failed")), "{:?}", r.error);
    let r = client.post("not a url", &[], "{}".into(), 0).await;
    assert!(r.error.as_deref().is_some_and(|e| e.starts_with("invalid URL")), "{:?}", r.error);
}

async fn shutdown_finishes_attempts_and_releases_the_rest(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        fast(c);
        c.server.shutdown_grace_ms = 5_000;
    })
    .await
    else {
        return;
    };
    let sink = Sink::start().await;
    sink.script([Reply::Slow(Duration::from_millis(800), 204)]);
    let (sub, _) = subscribe(&app, json!({"url": sink.url("/"), "max_in_flight": 1})).await;
    for i in 0..3 {
        app.register(json!({"id": format!("sd{i}")})).await;
    }
    // Stop while the first attempt is in flight: it finishes; the others
    // are released, not lost.
    sink.wait_started(1).await;
    let config = crate::helpers::test_config(&app.db);
    let db = app.stop().await;
    let first = sink.next().await;
    assert_eq!(first.json()["type"], "message:updated");
    let mut config = config;
    fast(&mut config);
    let again = crate::helpers::start(config, db).await;
    let rest = sink.take(2).await;
    let mut ids: Vec<String> = std::iter::once(&first)
        .chain(rest.iter())
        .map(|r| r.json()["data"]["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["sd0", "sd1", "sd2"], "every delivery arrives exactly once across the restart");
    sink.assert_quiet(Duration::from_millis(300)).await;
    eventually("all three deliveries recorded as succeeded", || async {
        let states: Vec<_> =
            deliveries(&again, &sub).await.iter().map(|d| d["state"].as_str().unwrap_or("").to_owned()).collect();
        (states == ["succeeded"; 3]).then_some(())
    })
    .await;
}

async fn a_subscription_failing_too_long_is_disabled(backend: Backend) {
    let delivery = DeliveryConfig {
        allow_cidrs: vec!["127.0.0.1/32".parse().expect("cidr")],
        retry_schedule_seconds: vec![0.0, 0.0],
        jitter: 0.0,
        disable_after_failing_seconds: 0,
        ..DeliveryConfig::default()
    };
    let Some(app) = spawn_app_with(backend, |c| {
        c.delivery = delivery.clone();
        c.delivery.enabled = false;
    })
    .await
    else {
        return;
    };
    let (mut worker, _, _) = Dispatcher::new(app.store.clone(), &delivery);
    let sink = Sink::start().await;
    sink.script([Reply::Status(500)]);
    let (sub, _) = subscribe(&app, json!({"url": sink.url("/")})).await;
    app.register(json!({"id": "ft"})).await;
    // With a zero window, the first failure is already "failing too long".
    assert_eq!(worker.run_once().await, 1);
    let (_, s) = app.get(&format!("/subscriptions/{sub}")).await;
    assert_eq!(s["enabled"], false, "{s}");
    assert!(s["disabled_reason"].as_str().is_some_and(|r| r.contains("every attempt failed")), "{s}");
    assert_eq!(worker.run_once().await, 0, "a disabled subscription's retries wait");
}

async fn a_replay_too_large_queues_nothing(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        fast(c);
        c.delivery.max_replay = 3;
    })
    .await
    else {
        return;
    };
    for i in 0..5 {
        app.register(json!({"id": format!("r{i}")})).await;
    }
    app.event("r1", json!({"status": "DELIVERED"})).await;
    let sink = Sink::start().await;
    let (sub, _) = subscribe(&app, json!({"url": sink.url("/")})).await;
    let (status, body) = app.post(&format!("/subscriptions/{sub}/replay"), json!({"from": 0})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("more than 3 messages")), "{body}");
    assert!(deliveries(&app, &sub).await.is_empty(), "a refused replay queues nothing");
    // A narrower selection fits.
    let (status, body) =
        app.post(&format!("/subscriptions/{sub}/replay"), json!({"from": 0, "statuses": ["DELIVERED"]})).await;
    assert_eq!((status, body["queued"].clone()), (202, json!(1)), "{body}");
}

/// A worker whose lease ran out (and was taken over) must not overwrite the
/// delivery, nor release another worker's lease.
async fn outcomes_under_a_lost_lease_are_not_written(backend: Backend) {
    let Some((app, _worker)) = driven(backend, vec![0.0]).await else { return };
    let (sub, _) = subscribe(&app, json!({"url": "http://127.0.0.1:9/"})).await;
    let subscription_id = SubscriptionId::parse(&sub).expect("id");
    let now = hookrelay::clock::now_ms();
    let row = DeliveryRow {
        id: DeliveryId::generate(),
        subscription_id: subscription_id.clone(),
        message_id: MessageId::parse("leased").expect("id"),
        seq: 1,
        kind: DeliveryKind::Status,
        payload: b"{}".to_vec(),
        created_at: now,
    };
    let lease = Lease { worker: "w_one".into(), until: now + 60_000 };
    app.store.insert_deliveries(std::slice::from_ref(&row), Some(&lease)).await.expect("insert");
    let recorded = |lease_until: i64| Recorded {
        id: row.id.clone(),
        subscription_id: subscription_id.clone(),
        lease_until,
        state: DeliveryState::Succeeded,
        attempts: 1,
        next_attempt_at: None,
        attempt: AttemptRecord {
            attempt: 1,
            started_at: now,
            latency_ms: 3,
            status_code: Some(200),
            error: None,
            response_excerpt: None,
        },
    };
    let state = || async {
        let (summary, _, attempts) = app.store.get_delivery(&row.id).await.expect("read").expect("exists");
        (summary.state, summary.leased_until, attempts.len())
    };
    let health = [(subscription_id.clone(), Health::Succeeded)];
    // Another lease (an earlier one of the same worker) or another worker: nothing is written.
    app.store.record_attempts("w_one", now, &[recorded(now + 1)], &[], &health, i64::MAX).await.expect("record");
    app.store.record_attempts("w_two", now, &[recorded(lease.until)], &[], &health, i64::MAX).await.expect("record");
    app.store.record_attempts("w_one", now, &[], &[(row.id.clone(), now + 1)], &[], i64::MAX).await.expect("release");
    assert_eq!(state().await, (DeliveryState::Pending, Some(lease.until), 0));
    // The lease the attempt ran under: written.
    app.store.record_attempts("w_one", now, &[recorded(lease.until)], &[], &health, i64::MAX).await.expect("record");
    assert_eq!(state().await, (DeliveryState::Succeeded, None, 1));
}

async fn concurrent_subscription_changes_conflict(backend: Backend) {
    let Some(app) = spawn_app_with(backend, fast).await else { return };
    let (sub, _) = subscribe(&app, json!({"url": "http://127.0.0.1:9/"})).await;
    let id = SubscriptionId::parse(&sub).expect("id");
    let read = app.store.get_subscription(&id).await.expect("read").expect("exists");
    let mut first = read.clone();
    first.description = Some("first".into());
    first.updated_at = read.updated_at + 1;
    assert!(app.store.update_subscription(&first, read.updated_at).await.expect("update"));
    // A writer that read before the first change loses, and changes nothing.
    let mut second = read.clone();
    second.enabled = false;
    second.updated_at = read.updated_at + 2;
    assert!(!app.store.update_subscription(&second, read.updated_at).await.expect("update"));
    let (_, view) = app.get(&format!("/subscriptions/{sub}")).await;
    assert_eq!((view["description"].clone(), view["enabled"].clone()), (json!("first"), json!(true)), "{view}");
    // Through the API, each change reads the latest version first.
    let (status, view) = app.patch(&format!("/subscriptions/{sub}"), json!({"description": "third"})).await;
    assert_eq!((status, view["description"].clone()), (200, json!("third")), "{view}");
}

/// Work committed while the worker was saturated waits in the database; a
/// claim that comes back full in either lane is followed by another at
/// once, not by the next poll.
async fn a_backlog_is_claimed_without_waiting_for_the_poll(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        fast(c);
        c.delivery.poll_interval_ms = 60_000;
        c.delivery.claim_batch = 20;
    })
    .await
    else {
        return;
    };
    let sink = Sink::start().await;
    let (sub, _) = subscribe(&app, json!({"url": sink.url("/")})).await;
    let subscription_id = SubscriptionId::parse(&sub).expect("id");
    let now = hookrelay::clock::now_ms();
    let rows: Vec<DeliveryRow> = (0..200)
        .map(|i| DeliveryRow {
            id: DeliveryId::generate(),
            subscription_id: subscription_id.clone(),
            message_id: MessageId::parse(&format!("backlog-{i}")).expect("id"),
            seq: 1,
            kind: DeliveryKind::Status,
            payload: b"{}".to_vec(),
            created_at: now,
        })
        .collect();
    app.store.insert_deliveries(&rows, None).await.expect("insert");
    // Enabling wakes the worker, as a commit in this process would.
    let (status, _) = app.post(&format!("/subscriptions/{sub}/enable"), json!({})).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    assert_eq!(sink.take(200).await.len(), 200);
    assert!(started.elapsed() < Duration::from_secs(30), "drained by claims, not polls");
}

/// An endpoint that holds every request open, as greedy as it may be (its
/// in-flight cap equals the process-wide one), next to three quick ones:
/// the quick ones get everything at once, the stuck one holds no more than
/// its share of the attempt slots, and its backlog beyond its budget waits
/// unleased in the outbox instead of in memory.
async fn a_stuck_endpoint_keeps_its_backlog_in_the_outbox(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        fast(c);
        c.delivery.concurrency = 8;
    })
    .await
    else {
        return;
    };
    let stuck = Sink::start().await;
    stuck.script((0..200).map(|_| Reply::Held(204)));
    let (stuck_sub, _) = subscribe(&app, json!({"url": stuck.url("/"), "max_in_flight": 8})).await;
    let quick = [Sink::start().await, Sink::start().await, Sink::start().await];
    for sink in &quick {
        subscribe(&app, json!({"url": sink.url("/")})).await;
    }
    for i in 0..200 {
        app.register(json!({"id": format!("iso{i}")})).await;
    }
    for sink in &quick {
        let got = sink.take(200).await;
        assert!(got.iter().all(|r| r.json()["type"] == "message:updated"));
    }
    stuck.wait_started(1).await;
    assert!(stuck.started() <= 6, "the stuck endpoint holds at most its share of 8 slots: {}", stuck.started());
    let query = hookrelay::store::DeliveryQuery {
        subscription_id: hookrelay::domain::SubscriptionId::parse(&stuck_sub).expect("id"),
        state: None,
        after: None,
        limit: 500,
    };
    let listed = app.store.list_deliveries(&query).await.expect("deliveries");
    assert_eq!(listed.len(), 200);
    assert!(listed.iter().all(|d| d.state == hookrelay::domain::outbox::DeliveryState::Pending));
    let leased = listed.iter().filter(|d| d.leased_until.is_some()).count();
    assert!(leased <= 64, "at most its budget leased to the worker, the rest in the outbox: {leased} leased");
    stuck.release();
    let rest = stuck.take(200).await;
    let mut ids: Vec<String> = rest.iter().map(|r| r.json()["data"]["id"].as_str().expect("id").to_owned()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "once it answers, the whole backlog arrives");
}
