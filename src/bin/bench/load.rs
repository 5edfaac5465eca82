//! The load: signed provider callbacks (Mailgun single events, SendGrid
//! batches) driven at a concurrency or a pace, the relay's metrics, and
//! timed message-log queries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::report::{QueryTiming, percentiles};
use crate::sink::Sink;
use crate::{API_KEY, MAILGUN_KEY, P256_SPKI_PREFIX, ProviderArg, RunArgs};

// Load

pub type Http = HyperClient<HttpConnector, Full<Bytes>>;

pub fn http_client(pool: usize) -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new()).pool_max_idle_per_host(pool).build(connector)
}

pub async fn request(
    client: &Http,
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<(u16, Bytes, hyper::HeaderMap)> {
    let mut builder = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = client.request(builder.body(Full::new(body))?).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body, headers))
}

/// Builds signed callbacks.
pub struct Signer {
    pub sendgrid: EcdsaKeyPair,
    pub rng: SystemRandom,
}

impl Signer {
    pub fn new() -> anyhow::Result<(Signer, String)> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("keygen"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("key"))?;
        let mut spki = hex::decode(P256_SPKI_PREFIX)?;
        spki.extend_from_slice(pair.public_key().as_ref());
        let public = base64::engine::general_purpose::STANDARD.encode(spki);
        Ok((Signer { sendgrid: pair, rng }, public))
    }

    /// The path, headers and body of callback number `i`.
    pub fn callback(
        &self,
        provider: ProviderArg,
        i: usize,
        batch: usize,
    ) -> (&'static str, Vec<(&'static str, String)>, Bytes) {
        let now = hookrelay::clock::now_ms() / 1000;
        match provider {
            ProviderArg::Mailgun => {
                let token = format!("tok{i}x{}", fastrand::u64(..));
                let ts = now.to_string();
                let mut mac = hmac::Hmac::<Sha256>::new_from_slice(MAILGUN_KEY.as_bytes()).expect("key");
                mac.update(ts.as_bytes());
                mac.update(token.as_bytes());
                let signature = hex::encode(mac.finalize().into_bytes());
                let body = json!({
                    "signature": {"timestamp": ts, "token": token, "signature": signature},
                    "event-data": {
                        "event": "delivered", "id": format!("ev{i}"), "timestamp": now as f64,
                        "recipient": format!("r{i}@bench.test"),
                        "message": {"headers": {"message-id": format!("bench-{i}@bench.test")}},
                        "delivery-status": {"code": 250, "message": "OK"},
                    },
                });
                ("/callbacks/mailgun", vec![("content-type", "application/json".into())], Bytes::from(body.to_string()))
            }
            ProviderArg::Sendgrid => {
                let events: Vec<Value> = (0..batch)
                    .map(|j| {
                        json!({
                            "email": format!("r{i}x{j}@bench.test"), "timestamp": now, "event": "delivered",
                            "sg_event_id": format!("ev{i}x{j}"), "sg_message_id": format!("bench-{i}x{j}.filter0001"),
                            "response": "250 OK",
                        })
                    })
                    .collect();
                let body = Bytes::from(serde_json::to_vec(&events).expect("json"));
                let ts = now.to_string();
                let mut signed = ts.clone().into_bytes();
                signed.extend_from_slice(&body);
                let signature = self.sendgrid.sign(&self.rng, &signed).expect("sign");
                let signature = base64::engine::general_purpose::STANDARD.encode(signature.as_ref());
                (
                    "/callbacks/sendgrid",
                    vec![
                        ("content-type", "application/json".into()),
                        ("x-twilio-email-event-webhook-timestamp", ts),
                        ("x-twilio-email-event-webhook-signature", signature),
                    ],
                    body,
                )
            }
        }
    }
}

pub struct LoadResult {
    pub seconds: f64,
    pub acks: Vec<u64>,
    pub retries: usize,
    pub failed: usize,
}

pub async fn drive(args: &RunArgs, relays: &[String], signer: Arc<Signer>, sink: &Sink) -> LoadResult {
    let client = http_client(args.concurrency);
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, retries, failed, signer) =
            (client.clone(), next.clone(), retries.clone(), failed.clone(), signer.clone());
        let (relays, state) = (relays.to_vec(), sink.state.clone());
        let (n, rate, provider, batch) = (args.callbacks, args.rate, args.provider, args.batch);
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                // Paced: each callback has its slot; latency counts from it.
                let scheduled = if rate > 0.0 {
                    let at = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                    at
                } else {
                    Instant::now()
                };
                let (path, headers, body) = signer.callback(provider, i, batch);
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let url = format!("{}{path}", relays[i % relays.len()]);
                state.sent_at[i].store(state.elapsed_micros().max(1), Ordering::Relaxed);
                loop {
                    match request(&client, hyper::Method::POST, &url, &headers, body.clone()).await {
                        Ok((200, _, _)) => break,
                        Ok((503, _, _)) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Ok((status, body, _)) => {
                            eprintln!("callback {i}: {status} {}", String::from_utf8_lossy(&body));
                            failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            eprintln!("callback {i}: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                acks.push(u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            acks
        }));
    }
    let mut acks = Vec::with_capacity(args.callbacks);
    for t in tasks {
        acks.extend(t.await.unwrap_or_default());
    }
    LoadResult {
        seconds: started.elapsed().as_secs_f64(),
        acks,
        retries: retries.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    }
}

pub async fn metric_total(client: &Http, relay: &str, name: &str) -> f64 {
    metric_by_kind(client, relay, name).await.values().sum()
}

/// The series of metric `name` by their `kind` label (`""` without one).
pub async fn metric_by_kind(client: &Http, relay: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok((_, body, _)) = request(client, hyper::Method::GET, &format!("{relay}/metrics"), &[], Bytes::new()).await
    else {
        return out;
    };
    for line in String::from_utf8_lossy(&body).lines().filter(|l| l.starts_with(name)) {
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let kind = line.split_once("kind=\"").and_then(|(_, rest)| rest.split_once('"')).map_or("", |(kind, _)| kind);
        *out.entry(kind.to_owned()).or_insert(0.0) += value;
    }
    out
}

pub async fn time_queries(client: &Http, relay: &str, per_filter: usize) -> Vec<QueryTiming> {
    let auth = format!("Bearer {API_KEY}");
    let filters = [
        ("newest page", "limit=50".to_owned()),
        ("status", "status=DELIVERED&limit=50".to_owned()),
        ("two statuses", "status=OPENED&status=CLICKED&limit=50".to_owned()),
        ("recipient", "recipient=user123%40example.com&limit=50".to_owned()),
        ("tag", "tag=t3&limit=50".to_owned()),
        ("provider", "provider=ses&limit=50".to_owned()),
        ("notification + status", "notification=n7&status=SENT&limit=50".to_owned()),
        ("time range", "enqueued_after=2000-01-01T00:00:00Z&enqueued_before=2100-01-01T00:00:00Z&limit=50".to_owned()),
    ];
    let mut out = Vec::new();
    for (name, query) in filters {
        let mut times = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..per_filter {
            // Walk pages so deep positions are timed too.
            let q = match &cursor {
                Some(c) => format!("{query}&cursor={c}"),
                None => query.clone(),
            };
            let started = Instant::now();
            let Ok((status, body, _)) = request(
                client,
                hyper::Method::GET,
                &format!("{relay}/messages?{q}"),
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await
            else {
                continue;
            };
            times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            if status != 200 {
                eprintln!("query {name}: {status}");
                break;
            }
            let page: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            cursor = page["paging"]["cursor"].as_str().map(str::to_owned);
        }
        let p = percentiles(times);
        out.push(QueryTiming { filter: name.to_owned(), p50_ms: p.p50_ms, p99_ms: p.p99_ms });
    }
    let mut times = Vec::new();
    for i in 0..per_filter {
        let started = Instant::now();
        let url = format!("{relay}/messages/pre-{}/history", i * 7 + 1);
        if request(client, hyper::Method::GET, &url, &[("authorization", &auth)], Bytes::new()).await.is_ok() {
            times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
    }
    let p = percentiles(times);
    out.push(QueryTiming { filter: "history of one message".into(), p50_ms: p.p50_ms, p99_ms: p.p99_ms });
    out
}
