//! The subscriber sink: a loopback HTTP server that counts every delivery,
//! notes duplicates and arrival times, and checks a sample of signatures.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookrelay::domain::signing::{VerifyKey, verify_standard};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

// The subscriber sink

pub struct Sink {
    pub addr: SocketAddr,
    pub state: Arc<SinkState>,
}

pub struct SinkState {
    pub started: Instant,
    /// Send time of each callback (µs since `started`), by callback index.
    pub sent_at: Vec<AtomicU64>,
    pub secrets: Mutex<Vec<VerifyKey>>,
    pub seen: Mutex<HashSet<u128>>,
    pub latencies: Mutex<Vec<u64>>,
    pub received: AtomicUsize,
    pub duplicates: AtomicUsize,
    pub checked: AtomicUsize,
    pub bad: AtomicUsize,
    pub last_arrival: AtomicU64,
    pub first_arrival: AtomicU64,
    /// How the slow subscriptions' endpoint (`/slow/...`) answers: after
    /// this long, or never (`None`). Its requests are counted apart.
    pub slow: Option<Duration>,
    pub slow_received: AtomicUsize,
}

impl SinkState {
    pub fn elapsed_micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// The callback index carried in a payload's provider message id
/// (`bench-<index>` or `bench-<index>x<event>`).
pub fn callback_index(body: &[u8]) -> Option<usize> {
    let needle = br#""provider_message_id":"bench-"#;
    let at = body.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let digits: Vec<u8> = body[at..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

pub async fn sink_handle(
    state: Arc<SinkState>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path().starts_with("/slow/") {
        state.slow_received.fetch_add(1, Ordering::Relaxed);
        match state.slow {
            Some(wait) => tokio::time::sleep(wait).await,
            None => std::future::pending::<()>().await,
        }
        return Ok(hyper::Response::builder().status(204).body(Full::new(Bytes::new())).expect("response"));
    }
    let arrived = state.elapsed_micros();
    let sub: usize = req.uri().path().rsplit('/').next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = req.headers().clone();
    let body = req.into_body().collect().await?.to_bytes();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("dlv_"))
        .and_then(|hex| u128::from_str_radix(hex, 16).ok());
    let n = state.received.fetch_add(1, Ordering::Relaxed);
    let _ = state.first_arrival.compare_exchange(0, arrived, Ordering::Relaxed, Ordering::Relaxed);
    state.last_arrival.fetch_max(arrived, Ordering::Relaxed);
    if let Some(id) = id
        && !state.seen.lock().expect("lock").insert(id)
    {
        state.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(i) = callback_index(&body)
        && let Some(sent) = state.sent_at.get(i)
    {
        let sent = sent.load(Ordering::Relaxed);
        if sent > 0 {
            state.latencies.lock().expect("lock").push(arrived.saturating_sub(sent));
        }
    }
    if n.is_multiple_of(97) {
        let secret = state.secrets.lock().expect("lock").get(sub).cloned();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let ok = secret.is_some_and(|s| {
            verify_standard(
                &s,
                &header("webhook-id"),
                &header("webhook-timestamp"),
                &header("webhook-signature"),
                &body,
                hookrelay::clock::now_ms(),
                300,
            )
            .is_ok()
        });
        state.checked.fetch_add(1, Ordering::Relaxed);
        if !ok {
            state.bad.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(hyper::Response::builder().status(204).body(Full::new(Bytes::new())).expect("response"))
}

pub async fn start_sink(callbacks: usize, slow: Option<Duration>) -> anyhow::Result<Sink> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(SinkState {
        started: Instant::now(),
        sent_at: (0..callbacks).map(|_| AtomicU64::new(0)).collect(),
        secrets: Mutex::new(Vec::new()),
        seen: Mutex::new(HashSet::new()),
        latencies: Mutex::new(Vec::new()),
        received: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
        checked: AtomicUsize::new(0),
        bad: AtomicUsize::new(0),
        last_arrival: AtomicU64::new(0),
        first_arrival: AtomicU64::new(0),
        slow,
        slow_received: AtomicUsize::new(0),
    });
    let accept_state = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let state = accept_state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| sink_handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Sink { addr, state })
}
