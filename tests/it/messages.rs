//! The sender API and the message-log API.

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{API_KEY, Backend, spawn_app};

backend_tests!(
    registration_and_lookup,
    registration_is_idempotent,
    sender_events_move_the_status_forward_only,
    duplicate_sender_events_change_nothing,
    cancel_only_before_sent,
    every_list_filter,
    paging_walks_every_message_once,
    bad_parameters_are_400,
    unknown_ids_are_404,
    requests_without_a_valid_key_are_401,
    bad_bodies_are_400_and_oversized_ones_413,
    history_can_be_filtered_by_type,
    registrations_sharing_a_provider_id_conflict,
    odd_inputs_get_clear_errors,
    multi_value_filters_are_deduplicated_and_bounded,
);

/// A status repeated thousands of times is one term, answered at once; more
/// distinct values than the cap, an overlong value or too many parameters
/// are a 400 naming the limit, never a 500 or a query that runs for seconds.
async fn multi_value_filters_are_deduplicated_and_bounded(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    app.register(json!({"id": "mv-1"})).await;
    app.event("mv-1", json!({"status": "DELIVERED"})).await;
    let started = std::time::Instant::now();
    let repeated = vec!["status=DELIVERED"; 900].join("&");
    let (status, body) = app.get(&format!("/messages?{repeated}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(1));
    let commas = vec!["delivered"; 5_000].join(",");
    let (status, body) = app.get(&format!("/messages?status={commas}&status=ENQUEUED")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(1));
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "answered in {:?}", started.elapsed());

    let distinct = (0..101).map(|i| format!("S{i}")).collect::<Vec<_>>().join(",");
    let (status, body) = app.get(&format!("/messages?status={distinct}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("at most 100 distinct `status`")), "{body}");
    let (status, body) = app.get(&format!("/messages?status={}", "X".repeat(257))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("256 characters")), "{body}");
    let pairs = vec!["limit=1"; 1_001].join("&");
    let (status, body) = app.get(&format!("/messages?{pairs}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("at most 1000 query parameters")), "{body}");
}

async fn registration_and_lookup(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let id = app
        .register(json!({
            "id": "order-1", "recipient": "ada@example.com", "channel": "email",
            "notification": "welcome", "event": "signup", "list": "news",
            "tags": ["onboarding", "eu"], "metadata": {"plan": "pro"},
            "provider": "SendGrid", "provider_message_id": "sg-1"
        }))
        .await;
    assert_eq!(id, "order-1");
    let (status, m) = app.get("/messages/order-1").await;
    assert_eq!(status, 200);
    assert_eq!(m["id"], "order-1");
    assert_eq!(m["status"], "ENQUEUED");
    assert_eq!(m["seq"], 1);
    assert!(m["enqueued"].as_i64().is_some_and(|t| t > 1_600_000_000_000));
    assert!(m.get("sent").is_none());
    assert_eq!(m["recipient"], "ada@example.com");
    assert_eq!(m["channel"], "email");
    assert_eq!(m["notification"], "welcome");
    assert_eq!(m["event"], "signup");
    assert_eq!(m["list"], "news");
    assert_eq!(m["tags"], json!(["onboarding", "eu"]));
    assert_eq!(m["metadata"], json!({"plan": "pro"}));
    assert_eq!(m["provider"], "sendgrid");
    assert_eq!(m["provider_message_id"], "sg-1");

    // Without an id, one is generated.
    let generated = app.register(json!({"recipient": "+15550100", "channel": "sms"})).await;
    assert!(generated.starts_with("msg_"), "{generated}");
    let (status, m) = app.get(&format!("/messages/{generated}")).await;
    assert_eq!((status, m["channel"].clone()), (200, json!("sms")));
}

async fn registration_is_idempotent(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    assert_eq!(app.register(json!({"id": "same", "recipient": "a@example.com"})).await, "same");
    assert_eq!(app.register(json!({"id": "same", "recipient": "b@example.com"})).await, "same");
    let (_, m) = app.get("/messages/same").await;
    assert_eq!(m["recipient"], "a@example.com", "a repeat changes nothing");

    let post = |key: &'static str| {
        app.client
            .post(app.url("/messages"))
            .bearer_auth(API_KEY)
            .header("Idempotency-Key", key)
            .json(&json!({"recipient": "c@example.com"}))
            .send()
    };
    let first: Value = post("retry-me").await.expect("send").json().await.expect("json");
    let second: Value = post("retry-me").await.expect("send").json().await.expect("json");
    let other: Value = post("another").await.expect("send").json().await.expect("json");
    assert_eq!(first["requestId"], second["requestId"]);
    assert_ne!(first["requestId"], other["requestId"]);
    let (_, history) = app.get(&format!("/messages/{}/history", first["requestId"].as_str().expect("id"))).await;
    assert_eq!(history["results"].as_array().map(Vec::len), Some(1), "one ENQUEUED entry: {history}");
}

async fn sender_events_move_the_status_forward_only(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    app.register(json!({"id": "m"})).await;
    let m = app.event("m", json!({"status": "ROUTED"})).await;
    assert_eq!((m["status"].clone(), m["seq"].clone()), (json!("ROUTED"), json!(2)));
    let m = app
        .event("m", json!({"status": "SENT", "provider": "postmark", "provider_message_id": "pm-77", "ts": 1_700_000_000_000_i64}))
        .await;
    assert_eq!(m["status"], "SENT");
    assert_eq!(m["sent"], 1_700_000_000_000_i64);
    assert_eq!(m["provider"], "postmark");
    assert_eq!(m["provider_message_id"], "pm-77");
    let m = app.event("m", json!({"status": "DELIVERED", "ts": "2023-11-14T22:13:21Z"})).await;
    assert_eq!(m["delivered"], 1_700_000_001_000_i64);
    // Late, lower-ranked events are recorded but do not move the status.
    let m = app.event("m", json!({"status": "SENT"})).await;
    assert_eq!(m["status"], "DELIVERED");
    assert_eq!(m["seq"], 4);
    let m = app.event("m", json!({"status": "DELAYED", "error": "421 try later"})).await;
    assert_eq!(m["status"], "DELIVERED");
    // A bounce after delivery wins; an open before it would not have lost.
    let m = app.event("m", json!({"status": "UNDELIVERABLE", "reason": "BOUNCED", "error": "550 gone"})).await;
    assert_eq!(
        (m["status"].clone(), m["reason"].clone(), m["error"].clone()),
        (json!("UNDELIVERABLE"), json!("BOUNCED"), json!("550 gone"))
    );
    let m = app.event("m", json!({"status": "DELIVERED"})).await;
    assert_eq!(m["status"], "UNDELIVERABLE");
    let (_, history) = app.get("/messages/m/history").await;
    let types: Vec<_> = history["results"].as_array().expect("results").iter().map(|e| e["type"].clone()).collect();
    assert_eq!(types.len(), 8, "every event is kept: {history}");
    let ts: Vec<i64> =
        history["results"].as_array().expect("results").iter().map(|e| e["ts"].as_i64().expect("ts")).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "history is in time order: {ts:?}");
}

async fn duplicate_sender_events_change_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    app.register(json!({"id": "d"})).await;
    for _ in 0..3 {
        app.event("d", json!({"status": "SENT", "event_id": "evt-1"})).await;
    }
    // Concurrent repeats, too.
    let sends = (0..10).map(|_| app.post("/messages/d/events", json!({"status": "DELIVERED", "event_id": "evt-2"})));
    for (status, _) in futures_util::future::join_all(sends).await {
        assert_eq!(status, 202);
    }
    let (_, m) = app.get("/messages/d").await;
    assert_eq!((m["status"].clone(), m["seq"].clone()), (json!("DELIVERED"), json!(3)));
    let (_, history) = app.get("/messages/d/history").await;
    assert_eq!(history["results"].as_array().map(Vec::len), Some(3), "{history}");
}

async fn cancel_only_before_sent(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    app.register(json!({"id": "c1"})).await;
    app.event("c1", json!({"status": "THROTTLED"})).await;
    let (status, m) = app.post("/messages/c1/cancel", json!({})).await;
    assert_eq!((status, m["status"].clone()), (202, json!("CANCELED")));
    let (status, _) = app.post("/messages/c1/cancel", json!({})).await;
    assert_eq!(status, 202, "canceling twice is fine");

    app.register(json!({"id": "c2"})).await;
    app.event("c2", json!({"status": "SENT"})).await;
    let (status, body) = app.post("/messages/c2/cancel", json!({})).await;
    assert_eq!(status, 409);
    assert_eq!(body["type"], "invalid_request_error");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("SENT")), "{body}");

    let (status, _) = app.post("/messages/nope/cancel", json!({})).await;
    assert_eq!(status, 404);
}

/// Ids returned by a list query, in order.
async fn ids(app: &crate::helpers::TestApp, query: &str) -> Vec<String> {
    let (status, body) = app.get(&format!("/messages?{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    body["results"].as_array().expect("results").iter().map(|m| m["id"].as_str().expect("id").to_owned()).collect()
}

async fn every_list_filter(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    app.register(json!({"id": "a", "recipient": "x@example.com", "notification": "n1", "event": "e1", "list": "l1", "tags": ["t1"], "provider": "sendgrid"})).await;
    app.register(json!({"id": "b", "recipient": "y@example.com", "notification": "n2", "event": "e1", "list": "l2", "tags": ["t1", "t2"], "provider": "mailgun"})).await;
    app.register(json!({"id": "c", "recipient": "x@example.com", "notification": "n2", "event": "e2", "tags": ["t2"]}))
        .await;
    app.event("a", json!({"status": "DELIVERED"})).await;
    app.event("b", json!({"status": "OPENED"})).await;

    assert_eq!(ids(&app, "").await, ["c", "b", "a"], "newest first");
    assert_eq!(ids(&app, "status=DELIVERED").await, ["a"]);
    assert_eq!(ids(&app, "status=DELIVERED&status=OPENED").await, ["b", "a"]);
    assert_eq!(ids(&app, "status=delivered,opened").await, ["b", "a"]);
    assert_eq!(ids(&app, "status=ENQUEUED").await, ["c"]);
    assert_eq!(ids(&app, "recipient=x%40example.com").await, ["c", "a"]);
    assert_eq!(ids(&app, "notification=n2").await, ["c", "b"]);
    assert_eq!(ids(&app, "event=e1").await, ["b", "a"]);
    assert_eq!(ids(&app, "list=l2").await, ["b"]);
    assert_eq!(ids(&app, "messageId=b").await, ["b"]);
    assert_eq!(ids(&app, "provider=mailgun").await, ["b"]);
    assert_eq!(ids(&app, "tag=t1").await, ["b", "a"]);
    assert_eq!(ids(&app, "tag=t2&notification=n2").await, ["c", "b"]);
    assert_eq!(ids(&app, "tag=t2&recipient=x%40example.com&status=ENQUEUED").await, ["c"]);
    assert_eq!(ids(&app, "tag=none").await, Vec::<String>::new());

    let (_, b) = app.get("/messages/b").await;
    let t = b["enqueued"].as_i64().expect("enqueued");
    assert!(ids(&app, &format!("enqueued_after={t}")).await.contains(&"b".to_owned()));
    assert!(!ids(&app, &format!("enqueued_before={t}")).await.contains(&"b".to_owned()));
    assert_eq!(ids(&app, &format!("enqueued_after={}", t + 86_400_000)).await, Vec::<String>::new());
    assert_eq!(ids(&app, "enqueued_after=2000-01-01T00:00:00Z&enqueued_before=2100-01-01T00:00:00Z").await.len(), 3);
}

async fn paging_walks_every_message_once(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let mut registered = Vec::new();
    for i in 0..23 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        registered.push(app.register(json!({"id": format!("p{i:02}"), "tags": [tag]})).await);
    }
    for (query, expected) in [("limit=5", 23), ("limit=4&tag=even", 12), ("limit=1&status=ENQUEUED&tag=odd", 11)] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let q = match &cursor {
                Some(c) => format!("{query}&cursor={c}"),
                None => query.to_owned(),
            };
            let (status, body) = app.get(&format!("/messages?{q}")).await;
            assert_eq!(status, 200, "{body}");
            pages += 1;
            seen.extend(
                body["results"].as_array().expect("results").iter().map(|m| m["id"].as_str().expect("id").to_owned()),
            );
            match body["paging"]["cursor"].as_str() {
                Some(c) => {
                    assert_eq!(body["paging"]["more"], true);
                    cursor = Some(c.to_owned());
                }
                None => {
                    assert_eq!(body["paging"]["more"], false);
                    break;
                }
            }
            assert!(pages < 100, "paging does not end");
        }
        assert_eq!(seen.len(), expected, "{query}: {seen:?}");
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), expected, "{query}: no duplicates");
    }
    assert_eq!(ids(&app, "limit=500").await.len(), 23);
}

async fn bad_parameters_are_400(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    for query in [
        "status=NOPE",
        "status=DELIVERED,NOPE",
        "cursor=garbage",
        "cursor=djE6eDp5",
        "limit=0",
        "limit=501",
        "limit=ten",
        "limit=1&limit=2",
        "enqueued_after=yesterday",
        "messageId=has%20space",
        "provider=no%20way",
        "colour=blue",
    ] {
        let (status, body) = app.get(&format!("/messages?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["type"], "invalid_request_error", "{query}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{query}");
    }
    let (status, body) = app.get("/messages?limit=0").await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().is_some_and(|m| m.contains("limit")), "{body}");
    app.register(json!({"id": "h"})).await;
    let (status, _) = app.get("/messages/h/history?type=EXPLODED").await;
    assert_eq!(status, 400);
}

async fn unknown_ids_are_404(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    for path in ["/messages/missing", "/messages/missing/history", "/messages/not%20valid"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["type"], "invalid_request_error");
    }
    let (status, _) = app.post("/messages/missing/events", json!({"status": "SENT"})).await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/no/such/route").await;
    assert_eq!(status, 404);
}

async fn requests_without_a_valid_key_are_401(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let no_key = app.client.get(app.url("/messages")).send().await.expect("send");
    assert_eq!(no_key.status(), 401);
    assert_eq!(no_key.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    let (_, body) = crate::helpers::read(no_key).await;
    assert_eq!(body["type"], "invalid_request_error");
    for auth in ["Bearer wrong-key-wrong-key", "Basic dGVzdDp0ZXN0", "Bearer", API_KEY] {
        let response = app
            .client
            .post(app.url("/messages"))
            .header("authorization", auth)
            .json(&json!({}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 401, "{auth}");
    }
    let ok = app
        .client
        .get(app.url("/messages"))
        .header("authorization", format!("bearer {API_KEY}"))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200, "the scheme is case-insensitive");
}

async fn bad_bodies_are_400_and_oversized_ones_413(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    for (body, mention) in [
        (json!({"channel": "pigeon"}), "channel"),
        (json!({"colour": "blue"}), "colour"),
        (json!({"id": "has space"}), "id"),
        (json!({"tags": "not-a-list"}), "tags"),
        (json!({"provider_message_id": "x"}), "provider"),
        (json!({"recipient": "x".repeat(600)}), "recipient"),
        (json!({"metadata": {"big": "x".repeat(20_000)}}), "metadata"),
    ] {
        let (status, response) = app.post("/messages", body.clone()).await;
        assert_eq!(status, 400, "{body}: {response}");
        assert!(response["message"].as_str().is_some_and(|m| m.contains(mention)), "{mention}: {response}");
    }
    let raw = app.client.post(app.url("/messages")).bearer_auth(API_KEY).body("{not json").send().await.expect("send");
    assert_eq!(raw.status(), 400);
    app.register(json!({"id": "e"})).await;
    for body in [
        json!({"status": "EXPLODED"}),
        json!({"status": "ENQUEUED"}),
        json!({"status": "SENT", "reason": "BORED"}),
        json!({"status": "SENT", "ts": "soon"}),
    ] {
        let (status, response) = app.post("/messages/e/events", body.clone()).await;
        assert_eq!(status, 400, "{body}: {response}");
    }
    let huge = json!({"metadata": {"blob": "x".repeat(2 * 1024 * 1024)}});
    let (status, response) = app.post("/messages", huge).await;
    assert_eq!(status, 413, "{response}");
    assert_eq!(response["type"], "invalid_request_error");
}

async fn history_can_be_filtered_by_type(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    app.register(json!({"id": "f"})).await;
    app.event("f", json!({"status": "SENT", "data": {"attempt": 1}})).await;
    app.event("f", json!({"status": "DELAYED", "error": "greylisted"})).await;
    app.event("f", json!({"status": "DELIVERED"})).await;
    let (status, body) = app.get("/messages/f/history?type=delayed").await;
    assert_eq!(status, 200);
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["type"], "DELAYED");
    assert_eq!(results[0]["error"], "greylisted");
    let (_, body) = app.get("/messages/f/history?type=SENT").await;
    assert_eq!(body["results"][0]["data"], json!({"attempt": 1}));
    let (_, body) = app.get("/messages/f/history?type=CLICKED").await;
    assert_eq!(body["results"], json!([]));
}

async fn registrations_sharing_a_provider_id_conflict(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    app.register(json!({"id": "a1", "provider": "sendgrid", "provider_message_id": "X-MSG-1"})).await;
    let (status, body) =
        app.post("/messages", json!({"id": "b1", "provider": "sendgrid", "provider_message_id": "X-MSG-1"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("a1")), "{body}");
    let (status, a1) = app.get("/messages/a1").await;
    assert_eq!((status, a1["provider_message_id"].clone()), (200, json!("X-MSG-1")), "a1 is intact");
    assert_eq!(app.get("/messages/b1").await.0, 404);
    app.register(json!({"id": "c1"})).await;
    let (status, _) = app
        .post(
            "/messages/c1/events",
            json!({"status": "SENT", "provider": "sendgrid", "provider_message_id": "X-MSG-1"}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(app.history_types("c1").await, ["ENQUEUED"]);
}

async fn odd_inputs_get_clear_errors(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    for query in ["recipient=%00", "tag=a%0Ab", "notification=%01"] {
        let (status, body) = app.get(&format!("/messages?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    let delete = app.client.delete(app.url("/messages")).bearer_auth(API_KEY).send().await.expect("send");
    assert_eq!(delete.status(), 405);
    let (_, body) = crate::helpers::read(delete).await;
    assert_eq!(body["type"], "invalid_request_error");
    app.register(json!({"id": "o"})).await;
    for event in [json!({"status": "CANCELED"}), json!({"status": "ENQUEUED"}), json!({"status": "SENT", "ts": "soon"})]
    {
        let (status, body) = app.post("/messages/o/events", event.clone()).await;
        assert_eq!(status, 400, "{event}: {body}");
    }
    let (_, m) = app.get("/messages/o").await;
    assert_eq!((m["status"].clone(), m.get("sent").cloned()), (json!("ENQUEUED"), None));
    // Absurd times are recorded at the time received, the given one kept:
    // a milestone keeps its first time, so a wrong one must not stick.
    let before = hookrelay::clock::now_ms();
    for (ts, key) in [
        (json!(-99_999_999_999_999_999_i64), "past"),
        (json!(i64::MAX), "future"),
        (json!("1999-12-31T23:59:59Z"), "y2k"),
    ] {
        let m = app.event("o", json!({"status": "DELIVERED", "ts": ts, "event_id": key})).await;
        assert!(m["delivered"].as_i64().is_some_and(|d| d >= before), "{m}");
    }
    let (_, history) = app.get("/messages/o/history?type=DELIVERED").await;
    let reported: Vec<Value> =
        history["results"].as_array().expect("results").iter().map(|e| e["reported_ts"].clone()).collect();
    assert_eq!(reported, [json!(-99_999_999_999_999_999_i64), json!(i64::MAX), json!(946_684_799_000_i64)]);
}
