//! `POST /callbacks/{source}`: provider delivery callbacks.
//!
//! Order of work: find the source (404), read the raw body (413 above the
//! limit), verify on the raw bytes (401, saying nothing that helps a
//! forger), parse (400; Mailgun 406), then queue the events and answer 200
//! only once they are committed (503 with `Retry-After` when overloaded or
//! the database is down, so the provider retries).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody, error_response};
use super::extract::BodyLimit;
use crate::clock::now_ms;
use crate::plan::{Command, Outcome, ReplayGuard};
use crate::providers::{Action, CallbackRequest, CertificateStore, Source};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(receive_post, receive_get))
}

/// Everything the callback edge needs besides the ingest queue.
#[derive(Debug)]
pub struct Callbacks {
    sources: HashMap<String, Source>,
    /// `server.public_url` (or `http://<listen>`), without a trailing slash.
    public_url: String,
    certificates: CertificateCache,
    sns: Arc<dyn SnsClient>,
}

impl Callbacks {
    pub fn new(sources: Vec<Source>, public_url: String, sns: Arc<dyn SnsClient>) -> Self {
        Callbacks {
            sources: sources.into_iter().map(|s| (s.name.clone(), s)).collect(),
            public_url,
            certificates: CertificateCache::default(),
            sns,
        }
    }
}

/// The two requests hookrelay makes to Amazon SNS: fetching a signing
/// certificate and visiting a `SubscribeURL`. Both URLs have been checked
/// to be Amazon's (https, an `sns.<region>.amazonaws.com` host) before.
/// The server uses [`SnsHttp`]; tests supply their own.
#[async_trait::async_trait]
pub trait SnsClient: Send + Sync + std::fmt::Debug {
    /// The certificate at `url`, refused above `limit` bytes. Errors are
    /// for the log and never carry the URL.
    async fn certificate(&self, url: &str, limit: usize) -> Result<Vec<u8>, String>;
    /// Visits a `SubscribeURL`, which confirms the subscription when SNS
    /// answers 2xx.
    async fn confirm(&self, url: &str) -> Result<(), String>;
}

/// [`SnsClient`] over HTTPS: short timeouts, redirects never followed.
#[derive(Debug)]
pub struct SnsHttp {
    client: reqwest::Client,
}

impl SnsHttp {
    pub fn new() -> Result<Self, reqwest::Error> {
        crate::net::install_crypto_provider();
        Self::from_builder(reqwest::Client::builder())
    }

    /// A client that cannot be built is an error, never a default client
    /// that would follow redirects and wait forever.
    fn from_builder(builder: reqwest::ClientBuilder) -> Result<Self, reqwest::Error> {
        let client = builder
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(SnsHttp { client })
    }
}

#[async_trait::async_trait]
impl SnsClient for SnsHttp {
    async fn certificate(&self, url: &str, limit: usize) -> Result<Vec<u8>, String> {
        let mut response = self.client.get(url).send().await.map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err("certificate too large".into());
        }
        // Read in chunks: a server that sends no length is cut off at the cap.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.without_url().to_string())? {
            if body.len() + chunk.len() > limit {
                return Err("certificate too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn confirm(&self, url: &str) -> Result<(), String> {
        match self.client.get(url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("status {}", r.status().as_u16())),
            // Without the URL: its query carries the subscription token.
            Err(e) => Err(e.without_url().to_string()),
        }
    }
}

/// SNS signing certificates fetched so far, by URL. Amazon uses a handful.
#[derive(Debug, Default)]
pub struct CertificateCache {
    certificates: Mutex<HashMap<String, Arc<[u8]>>>,
}

/// Most certificates kept; beyond this the cache starts over.
const MAX_CERTIFICATES: usize = 64;
/// Largest certificate accepted.
const MAX_CERTIFICATE_BYTES: usize = 64 * 1024;

impl CertificateStore for CertificateCache {
    fn get(&self, url: &str) -> Option<Arc<[u8]>> {
        self.certificates.lock().ok()?.get(url).cloned()
    }
}

/// One certificate, fetched for the request at hand.
struct Fetched<'a> {
    url: &'a str,
    pem: Arc<[u8]>,
}

impl CertificateStore for Fetched<'_> {
    fn get(&self, url: &str) -> Option<Arc<[u8]>> {
        (url == self.url).then(|| self.pem.clone())
    }
}

impl CertificateCache {
    /// The certificate at `url`, from the cache or fetched (then `true`):
    /// the caller keeps a fetched one only once it verified a signature, so
    /// a request that fails verification leaves nothing behind.
    async fn fetch(&self, sns: &dyn SnsClient, url: &str) -> Result<(Arc<[u8]>, bool), String> {
        if let Some(pem) = self.get(url) {
            return Ok((pem, false));
        }
        let body = sns.certificate(url, MAX_CERTIFICATE_BYTES).await?;
        if body.len() > MAX_CERTIFICATE_BYTES {
            return Err("certificate too large".into());
        }
        Ok((Arc::from(body), true))
    }

    fn remember(&self, url: &str, pem: Arc<[u8]>) {
        if let Ok(mut certificates) = self.certificates.lock() {
            if certificates.len() >= MAX_CERTIFICATES {
                certificates.clear();
            }
            certificates.insert(url.to_owned(), pem);
        }
    }
}

/// The challenge of a 401 for a source that takes basic credentials.
const BASIC_CHALLENGE: HeaderValue = HeaderValue::from_static("Basic realm=\"hookrelay\"");

/// Answer to an accepted callback.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Events recorded by this request.
    accepted: usize,
    /// Events that had been recorded before (provider retries).
    duplicates: usize,
    /// Elements of a batch that could not be read and were left out.
    #[serde(skip_serializing_if = "is_zero")]
    skipped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Accepted {
    const NOTHING: Accepted = Accepted { accepted: 0, duplicates: 0, skipped: 0 };
}

/// Receive a provider's delivery callback. The body is verified as sent
/// (signature, token or credentials, depending on the provider) before it
/// is parsed.
#[utoipa::path(
    post, path = "/callbacks/{source}", tag = "callbacks",
    params(("source" = String, Path, description = "A configured source's name")),
    request_body(content = String, description = "The provider's callback, exactly as sent", content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted (also for duplicates and unknown event types)", body = Accepted),
        (status = 400, description = "Verified but nothing in it can be parsed (unreadable elements of a batch are left out and counted in `skipped`)", body = ErrorBody),
        (status = 401, description = "Missing or bad signature or credentials, or a stale timestamp", body = ErrorBody),
        (status = 403, description = "An SNS subscription for a topic that is not allowed", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
        (status = 406, description = "Mailgun: verified but cannot be parsed (do not retry)", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, description = "Overloaded or the database is down: retry", body = ErrorBody),
    )
)]
async fn receive_post(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    limit: Option<axum::Extension<BodyLimit>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(&state, Method::POST, &name, &uri, &headers, limit.map_or(0, |l| l.0.0), body).await
}

/// Receive a callback sent with GET (Vonage SMS delivery receipts).
#[utoipa::path(
    get, path = "/callbacks/{source}", tag = "callbacks",
    params(("source" = String, Path, description = "A configured Vonage source's name")),
    responses(
        (status = 200, body = Accepted), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 405, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn receive_get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    receive(&state, Method::GET, &name, &uri, &headers, 0, Ok(Bytes::new())).await
}

fn refuse(status: StatusCode, message: &str) -> Response {
    error_response(status, message.to_owned())
}

/// 401 for a callback that does not verify, with a `Basic` challenge when
/// the source takes basic credentials (Twilio, like a browser, sends a URL's
/// credentials only after the first request without them is challenged).
fn unauthorized(source: &Source) -> Response {
    count(&source.name, "unauthorized");
    let mut response = refuse(StatusCode::UNAUTHORIZED, "callback authentication failed");
    if source.basic_auth {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, BASIC_CHALLENGE);
    }
    response
}

fn count(source: &str, result: &'static str) {
    metrics::counter!("hookrelay_callbacks_total", "source" => source.to_owned(), "result" => result).increment(1);
}

async fn receive(
    state: &AppState,
    method: Method,
    name: &str,
    uri: &Uri,
    headers: &HeaderMap,
    limit: usize,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(source) = state.callbacks.sources.get(name) else {
        return ApiError::NotFound("no callback source with this name".into()).into_response();
    };
    if method == Method::GET && !source.accepts_get() {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "this source takes POST");
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            count(name, "too_large");
            return ApiError::PayloadTooLarge { limit }.into_response();
        }
        Err(rejection) => return ApiError::bad_request(format!("cannot read the body: {rejection}")).into_response(),
    };
    let query = uri.query().unwrap_or("");
    let callbacks = &state.callbacks;
    let url = if query.is_empty() {
        format!("{}/callbacks/{name}", callbacks.public_url)
    } else {
        format!("{}/callbacks/{name}?{query}", callbacks.public_url)
    };
    let now = now_ms();
    let req = CallbackRequest { method: &method, url: &url, query, headers, body: &body, received_at: now };

    let verified = match source.certificate_url(&req) {
        Ok(Some(cert_url)) => match callbacks.certificates.fetch(&*callbacks.sns, &cert_url).await {
            Ok((pem, fetched)) => {
                let verified = source.verify(&req, now, &Fetched { url: &cert_url, pem: pem.clone() });
                if fetched && verified.is_ok() {
                    callbacks.certificates.remember(&cert_url, pem);
                }
                verified
            }
            Err(e) => {
                // Not the sender's fault: answer 503 so that SNS retries.
                tracing::warn!(source = name, error = %e, "cannot fetch the SNS signing certificate");
                count(name, "certificate_unavailable");
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "signing certificate unavailable; retry later");
            }
        },
        Ok(None) => source.verify(&req, now, &callbacks.certificates),
        Err(e) => Err(e),
    };
    let verified = match verified {
        Ok(verified) => verified,
        Err(e) => {
            tracing::info!(source = name, reason = %e, "callback refused");
            return unauthorized(source);
        }
    };

    let parsed = match source.parse(&req) {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::warn!(source = name, error = %e, "verified callback cannot be parsed");
            count(name, "unparseable");
            return refuse(source.parse_error_status(), &format!("cannot parse the callback: {e}"));
        }
    };
    match &parsed.action {
        Some(Action::ConfirmSubscription { topic_arn, subscribe_url }) => {
            return confirm_subscription(callbacks, source, topic_arn, subscribe_url).await;
        }
        // Answered 200 so that the provider does not retry it.
        Some(Action::Ignore { why }) => tracing::info!(source = name, why, "verified callback records nothing"),
        None => {}
    }
    let skipped = parsed.skipped;
    if let Some(reason) = &parsed.skip_reason {
        // The rest of the batch is recorded: refusing it would have the
        // provider retry the good events and drop them with the bad one.
        tracing::warn!(source = name, skipped, first = %reason, "left out unreadable events of a batch");
        metrics::counter!("hookrelay_callback_events_skipped_total", "source" => name.to_owned())
            .increment(skipped as u64);
    }
    if parsed.callbacks.is_empty() {
        count(name, "empty");
        return Json(Accepted::NOTHING).into_response();
    }
    let guard = verified.single_use.map(|single_use| {
        Box::new(ReplayGuard {
            source: name.to_owned(),
            token: single_use.token,
            body_hash: hex::encode(&Sha256::digest(&body)[..16]),
            expires_at: single_use.expires_at,
        })
    });
    let commands: Vec<Command> = parsed
        .callbacks
        .into_iter()
        .map(|mut cb| {
            cb.event.scrub();
            Command::Event {
                target: cb.target,
                event: Box::new(cb.event),
                create: true,
                want_message: false,
                guard: guard.clone(),
            }
        })
        .collect();
    let events = commands.len();
    match state.ingest.submit(commands).await {
        Ok(outcomes) if outcomes.contains(&Outcome::Replayed) => {
            // A genuine token, seen before with another body: a replay.
            tracing::warn!(source = name, "callback refused: its single-use token came before with another body");
            unauthorized(source)
        }
        Ok(outcomes) => {
            let duplicates = outcomes.iter().filter(|o| matches!(o, Outcome::Applied { duplicate: true, .. })).count();
            metrics::counter!("hookrelay_callback_events_total", "source" => name.to_owned()).increment(events as u64);
            count(name, "accepted");
            tracing::debug!(source = name, events, duplicates, "callback accepted");
            Json(Accepted { accepted: events - duplicates, duplicates, skipped }).into_response()
        }
        Err(e) => {
            count(name, "unavailable");
            ApiError::from(e).into_response()
        }
    }
}

/// Confirms an SNS subscription, for allowed topics only: anyone can point
/// their own topic at this URL and produce a validly signed confirmation.
async fn confirm_subscription(
    callbacks: &Callbacks,
    source: &Source,
    topic_arn: &str,
    subscribe_url: &str,
) -> Response {
    if !source.allows_topic(topic_arn) {
        tracing::warn!(source = %source.name, topic_arn, "refused an SNS subscription for a topic not in topic_arns");
        count(&source.name, "topic_refused");
        return refuse(StatusCode::FORBIDDEN, "this topic is not allowed for this source");
    }
    match callbacks.sns.confirm(subscribe_url).await {
        Ok(()) => {
            tracing::info!(source = %source.name, topic_arn, "confirmed the SNS subscription");
            count(&source.name, "subscription_confirmed");
            Json(Accepted::NOTHING).into_response()
        }
        Err(e) => {
            tracing::warn!(source = %source.name, error = %e, "SNS subscription confirmation failed");
            count(&source.name, "confirmation_failed");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "could not confirm the subscription; retry later")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SnsHttp;

    /// A client that cannot be built fails start-up: rustls has no TLS 1.0,
    /// so a builder limited to it cannot build.
    #[test]
    fn a_client_that_cannot_be_built_is_an_error() {
        crate::net::install_crypto_provider();
        let impossible = reqwest::Client::builder().max_tls_version(reqwest::tls::Version::TLS_1_0);
        assert!(SnsHttp::from_builder(impossible).is_err());
        assert!(SnsHttp::new().is_ok());
    }
}
