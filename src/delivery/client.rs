//! The outbound HTTP client: pooled keep-alive connections, connect and total
//! timeouts, no redirects, and a resolver that only hands the connector
//! addresses the [`AddressPolicy`] permits, so the address checked is the
//! address connected to.
//!
//! Built on hyper directly: a delivery is one POST of bytes already signed,
//! and a general-purpose client's per-request machinery (URL parsing with
//! IDNA, redirect and retry layers cloning the headers) cost more CPU than
//! the request itself.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, LOCATION, RETRY_AFTER, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;

use super::backoff::parse_retry_after;
use super::ssrf::AddressPolicy;

/// Most response bytes kept per attempt.
pub const EXCERPT_BYTES: usize = 4 * 1024;

const AGENT: &str = concat!("hookrelay/", env!("CARGO_PKG_VERSION"));

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// None when no HTTP answer arrived (refused, timed out, blocked).
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub error: Option<String>,
    pub excerpt: Option<String>,
    pub latency: Duration,
}

#[derive(Debug)]
struct Blocked(String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves only to addresses that are not allowed (see delivery.allow_cidrs)", self.0)
    }
}

impl std::error::Error for Blocked {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves names, keeping only the addresses the policy permits.
#[derive(Clone)]
struct GuardedResolver {
    policy: Arc<AddressPolicy>,
    lookups: Arc<Lookups>,
}

/// How long a name's addresses are reused, and how long a failed lookup is.
const LOOKUP_TTL: Duration = Duration::from_secs(30);
const FAILED_LOOKUP_TTL: Duration = Duration::from_secs(5);
/// Lookups running at once, at most.
const LOOKUPS_AT_ONCE: usize = 16;
/// Names remembered; beyond this the cache starts over.
const LOOKUP_CACHE: usize = 10_000;

/// Name lookups for deliveries. The system resolver (`getaddrinfo`) runs on
/// tokio's blocking pool, where a DNS server that does not answer holds a
/// thread for its whole timeout, longer than the attempt that asked. Every
/// attempt to a subscriber whose name does not resolve would take another
/// thread, until the pool (which SQLite's readers share) is exhausted and
/// everything else waits. So each name is looked up once at a time and its
/// answer reused for a while (a failure too, briefly), and at most
/// [`LOOKUPS_AT_ONCE`] lookups run at once.
struct Lookups {
    names: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Looked>>>>>,
    permits: tokio::sync::Semaphore,
}

struct Looked {
    at: Instant,
    addresses: Result<Vec<SocketAddr>, String>,
}

impl Lookups {
    fn new() -> Self {
        Lookups { names: Default::default(), permits: tokio::sync::Semaphore::new(LOOKUPS_AT_ONCE) }
    }

    async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, BoxError> {
        self.resolve_with(host, |host| async move {
            tokio::net::lookup_host((host.as_str(), 0)).await.map(Iterator::collect).map_err(|e| e.to_string())
        })
        .await
    }

    /// [`Lookups::resolve`] with the lookup itself given (tests count them).
    async fn resolve_with<F, Fut>(&self, host: &str, lookup: F) -> Result<Vec<SocketAddr>, BoxError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Vec<SocketAddr>, String>>,
    {
        let slot = {
            let mut names = self.names.lock().map_err(|_| "the resolver cache is poisoned")?;
            if names.len() >= LOOKUP_CACHE {
                names.clear();
            }
            names.entry(host.to_owned()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(looked) = slot.as_ref() {
            let ttl = if looked.addresses.is_ok() { LOOKUP_TTL } else { FAILED_LOOKUP_TTL };
            if looked.at.elapsed() < ttl {
                return looked.addresses.clone().map_err(Into::into);
            }
        }
        let _permit = self.permits.acquire().await.map_err(|_| "the resolver is closed")?;
        let addresses = lookup(host.to_owned()).await;
        *slot = Some(Looked { at: Instant::now(), addresses: addresses.clone() });
        addresses.map_err(Into::into)
    }
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let (policy, lookups) = (self.policy.clone(), self.lookups.clone());
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = lookups.resolve(&host).await?;
            let allowed: Vec<SocketAddr> = resolved.into_iter().filter(|a| policy.permits(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(Blocked(host)) as BoxError);
            }
            Ok(allowed.into_iter())
        })
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

/// Sends webhook requests.
#[derive(Clone)]
pub struct Client {
    http: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    policy: Arc<AddressPolicy>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(policy: AddressPolicy, connect_timeout: Duration, timeout: Duration, max_idle_per_host: usize) -> Self {
        crate::net::install_crypto_provider();
        let policy = Arc::new(policy);
        let resolver = GuardedResolver { policy: policy.clone(), lookups: Arc::new(Lookups::new()) };
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let tls = tls_config();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_idle_per_host)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Client { http, policy, timeout }
    }

    /// POSTs `body` to `url` with the given headers. Never fails: every
    /// outcome is a [`Response`].
    pub async fn post(&self, url: &str, headers: &[(&str, &str)], body: Bytes, now_ms: i64) -> Response {
        let started = Instant::now();
        let done = |status, retry_after, error: Option<String>, excerpt| Response {
            status,
            retry_after,
            error,
            excerpt,
            latency: started.elapsed(),
        };
        // A fragment is never sent.
        let url = url.split_once('#').map_or(url, |(before, _)| before);
        let uri: Uri = match url.parse() {
            Ok(uri) => uri,
            Err(e) => return done(None, None, Some(format!("invalid URL: {e}")), None),
        };
        let Some(host) = uri.host() else {
            return done(None, None, Some("invalid URL: no host".into()), None);
        };
        // Literal addresses skip the resolver: check them here.
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>()
            && !self.policy.permits(ip)
        {
            return done(
                None,
                None,
                Some(format!("{ip} is not an allowed destination (see delivery.allow_cidrs)")),
                None,
            );
        }
        let mut request = Request::post(uri);
        if let Some(h) = request.headers_mut() {
            h.reserve(headers.len() + 2);
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(USER_AGENT, HeaderValue::from_static(AGENT));
            for (name, value) in headers {
                match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                    (Ok(name), Ok(value)) => {
                        h.append(name, value);
                    }
                    _ => return done(None, None, Some(format!("invalid header `{name}`")), None),
                }
            }
        }
        let request = match request.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return done(None, None, Some(format!("invalid request: {e}")), None),
        };
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| describe(&e))?;
            let (parts, mut body) = response.into_parts();
            // The excerpt: at most EXCERPT_BYTES, reading no further (the
            // connection is then not reused, which is the price of a
            // subscriber that answers with a large body).
            let mut excerpt = Vec::new();
            let mut truncated = false;
            while excerpt.len() < EXCERPT_BYTES {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(chunk) = frame.data_ref() {
                            let room = EXCERPT_BYTES - excerpt.len();
                            truncated = chunk.len() > room;
                            excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        }
                    }
                    // The status already arrived; a broken body does not change it.
                    Some(Err(_)) | None => break,
                }
            }
            Ok::<_, String>((parts, excerpt, truncated))
        };
        let (parts, excerpt, truncated) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return done(None, None, Some(error), None),
            Err(_) => return done(None, None, Some("timed out".into()), None),
        };
        let status = parts.status.as_u16();
        let retry_after =
            parts.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now_ms));
        let excerpt = (!excerpt.is_empty()).then(|| {
            let mut text = String::from_utf8_lossy(&excerpt).into_owned();
            if truncated {
                text.push('…');
            }
            text
        });
        let error = match status {
            200..=299 => None,
            300..=399 => Some(format!(
                "status {status}: redirects are not followed{}",
                parts
                    .headers
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(|l| format!(" (to {l})"))
                    .unwrap_or_default()
            )),
            _ => Some(format!("status {status}")),
        };
        done(Some(status), retry_after, error, excerpt)
    }
}

/// TLS with the system's trust store (as browsers and curl see it).
fn tls_config() -> rustls::ClientConfig {
    use rustls_platform_verifier::ConfigVerifierExt;
    rustls::ClientConfig::with_platform_verifier().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot load the system's trust store; HTTPS deliveries will fail");
        rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
    })
}

/// A readable cause for a failed request (never including the body).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut innermost = None;
    while let Some(s) = source {
        if s.is::<Blocked>() {
            return s.to_string();
        }
        innermost = Some(s);
        source = s.source();
    }
    let timed_out = innermost.is_some_and(|s| s.to_string().contains("timed out"));
    let what = if timed_out {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match innermost {
        Some(cause) if !timed_out => format!("{what}: {cause}"),
        _ => what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_is_looked_up_once_at_a_time_and_its_answer_reused() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let lookups = Arc::new(Lookups::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = |calls: Arc<AtomicUsize>| {
            move |_: String| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<Vec<SocketAddr>, _>("no such name".to_owned())
            }
        };
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (lookups, calls) = (lookups.clone(), calls.clone());
                tokio::spawn(async move { lookups.resolve_with("down.example", failing(calls)).await.is_err() })
            })
            .collect();
        for task in tasks {
            assert!(task.await.expect("join"), "every caller sees the failure");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one lookup for twenty attempts");
        let ok = |_: String| async { Ok(vec![SocketAddr::from(([93, 184, 215, 14], 0))]) };
        assert!(lookups.resolve_with("up.example", ok).await.is_ok());
        assert_eq!(lookups.resolve_with("up.example", failing(calls.clone())).await.expect("cached").len(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a fresh answer is reused");
    }
}
