//! The outbound HTTP client: pooled keep-alive connections, connect and total
//! timeouts, no redirects, and a resolver that only hands the connector
//! addresses the [`AddressPolicy`] permits, so the address checked is the
//! address connected to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::backoff::parse_retry_after;
use super::ssrf::AddressPolicy;

/// Most response bytes kept per attempt.
pub const EXCERPT_BYTES: usize = 4 * 1024;

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

struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = resolved.filter(|a| policy.permits(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(Blocked(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Sends webhook requests.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
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
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy: policy.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_idle_per_host)
            .tcp_nodelay(true)
            .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Client { http, policy }
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
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return done(None, None, Some(format!("invalid URL: {e}")), None),
        };
        // Literal addresses skip the resolver: check them here.
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && !self.policy.permits(ip)
        {
            return done(
                None,
                None,
                Some(format!("{ip} is not an allowed destination (see delivery.allow_cidrs)")),
                None,
            );
        }
        let mut request = self.http.post(parsed).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => return done(None, None, Some(describe(&e)), None),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now_ms));
        let mut excerpt = Vec::new();
        let mut truncated = false;
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = EXCERPT_BYTES - excerpt.len();
                    truncated = chunk.len() > room;
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                // The status already arrived; a broken body does not change it.
                Err(_) => break,
            }
        }
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
                response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .map(|l| format!(" (to {l})"))
                    .unwrap_or_default()
            )),
            _ => Some(format!("status {status}")),
        };
        done(Some(status), retry_after, error, excerpt)
    }
}

/// A readable cause for a failed request (never including the body).
fn describe(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut innermost = None;
    while let Some(s) = source {
        if s.is::<Blocked>() {
            return s.to_string();
        }
        innermost = Some(s);
        source = s.source();
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match innermost {
        Some(cause) => format!("{what}: {cause}"),
        None => what.to_owned(),
    }
}
