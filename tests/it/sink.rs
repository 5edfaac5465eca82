//! A subscriber endpoint on loopback for tests: records every request,
//! answers from a script (204 when the script is empty), tracks how many
//! requests it is handling at once, and signals when requests start, so a
//! test waits for progress instead of sleeping to guess it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

/// How the sink answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// Wait, then answer.
    Slow(Duration, u16),
    /// A status, a header and a body.
    With(u16, &'static str, &'static str, String),
    /// Hold the request until [`Sink::release`], then answer.
    Held(u16),
}

/// One request the sink received.
#[derive(Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was answered.
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
    }
}

struct Shared {
    script: Mutex<VecDeque<Reply>>,
    now: AtomicUsize,
    most: AtomicUsize,
    /// Requests that have arrived so far.
    started: tokio::sync::watch::Sender<usize>,
    /// Opened by [`Sink::release`].
    gate: tokio::sync::watch::Sender<bool>,
}

pub struct Sink {
    pub addr: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct AppState {
    tx: mpsc::UnboundedSender<Received>,
    shared: Arc<Shared>,
}

async fn handle(State(state): State<AppState>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    state.shared.started.send_modify(|n| *n += 1);
    let now = state.shared.now.fetch_add(1, Ordering::SeqCst) + 1;
    state.shared.most.fetch_max(now, Ordering::SeqCst);
    let reply = state.shared.script.lock().expect("lock").pop_front().unwrap_or(Reply::Status(204));
    let (status, extra) = match reply {
        Reply::Status(s) => (s, None),
        Reply::Slow(wait, s) => {
            tokio::time::sleep(wait).await;
            (s, None)
        }
        Reply::With(s, name, value, body) => (s, Some((name, value, body))),
        Reply::Held(s) => {
            let _ = state.shared.gate.subscribe().wait_for(|open| *open).await;
            (s, None)
        }
    };
    state.shared.now.fetch_sub(1, Ordering::SeqCst);
    let _ = state.tx.send(Received { path: uri.path().to_owned(), headers, body, at: Instant::now() });
    let status = StatusCode::from_u16(status).expect("status");
    match extra {
        Some((name, value, body)) => (status, [(name, value)], body).into_response(),
        None => (status, format!("sink answered {}", status.as_u16())).into_response(),
    }
}

impl Sink {
    pub async fn start() -> Sink {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            script: Mutex::default(),
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            started: tokio::sync::watch::channel(0).0,
            gate: tokio::sync::watch::channel(false).0,
        });
        let app = axum::Router::new().fallback(handle).with_state(AppState { tx, shared: shared.clone() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Sink { addr, rx: tokio::sync::Mutex::new(rx), shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Answers for the next requests, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().expect("lock").extend(replies);
    }

    /// The next request (it must come within 10 s).
    pub async fn next(&self) -> Received {
        let mut rx = self.rx.lock().await;
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a delivery within 10 s")
            .expect("the sink is running")
    }

    /// The next `n` requests.
    pub async fn take(&self, n: usize) -> Vec<Received> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts that nothing arrives for `wait`.
    pub async fn assert_quiet(&self, wait: Duration) {
        let mut rx = self.rx.lock().await;
        if let Ok(Some(r)) = tokio::time::timeout(wait, rx.recv()).await {
            panic!("unexpected delivery: {}", String::from_utf8_lossy(&r.body));
        }
    }

    /// Waits until `n` requests have arrived (at most 10 s), answered or not.
    pub async fn wait_started(&self, n: usize) {
        let mut started = self.shared.started.subscribe();
        tokio::time::timeout(Duration::from_secs(10), started.wait_for(|count| *count >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} requests within 10 s"))
            .expect("the sink is running");
    }

    /// Requests that have arrived so far.
    pub fn started(&self) -> usize {
        *self.shared.started.borrow()
    }

    /// Lets every held request (and any later one) be answered.
    pub fn release(&self) {
        self.shared.gate.send_replace(true);
    }

    /// The most requests it was handling at once.
    pub fn most_at_once(&self) -> usize {
        self.shared.most.load(Ordering::SeqCst)
    }
}
