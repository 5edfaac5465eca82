//! Open and click tracking at the edge.
//!
//! Public (recipients' mail clients, no API key; the token is the
//! credential):
//! - `GET /t/o/{token}`: always 200 with a 1x1 GIF, whatever the token.
//! - `GET /t/c/{token}`: 302 to the signed target, or 404 with a plain page
//!   for any token that does not verify: never a redirect to anything that
//!   was not signed.
//!
//! Both are the fast path: a verified hit is queued for the group-commit
//! writer and the answer goes out at once, without waiting for the commit.
//! When the queue is full the pixel still answers and the redirect still
//! redirects; the hit that could not be queued is counted in
//! `hookrelay_tracking_dropped_total`. Nothing about the requester is kept
//! but the class of its user agent: never the IP address.
//!
//! Senders (API key):
//! - `POST /tracking/rewrite`: HTML in, HTML out with tracked links and the pixel.
//! - `POST /tracking/links`: the tracked form of one URL.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::clock::now_ms;
use crate::domain::MessageId;
use crate::ingest::IngestError;
use crate::plan::{Command, Outcome};
use crate::tracking::token::TokenKind;
use crate::tracking::{HitRequest, PIXEL_GIF, SignError, rewrite};

/// The public hit endpoints. A token never contains `/`; longer paths
/// under `/t/o/` and `/t/c/` get the same answers as a bad token (pixel,
/// plain 404) rather than the API's JSON 404.
pub fn public_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(open_pixel))
        .routes(routes!(click))
        .route(
            "/t/o/{token}/{*rest}",
            axum::routing::get(|| async {
                invalid(TokenKind::Open, "malformed");
                pixel()
            }),
        )
        .route(
            "/t/c/{token}/{*rest}",
            axum::routing::get(|| async {
                invalid(TokenKind::Click, "malformed");
                invalid_link_page()
            }),
        )
}

/// The sender endpoints (behind the API key).
pub fn protected_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(rewrite_html)).routes(routes!(tracked_link))
}

/// Largest HTML document accepted by `POST /tracking/rewrite` (the request
/// body limit, `server.body_limit_bytes`, applies too). Gmail clips
/// messages past about 100 KB, so real emails are far below this.
pub const MAX_HTML_BYTES: usize = 2 * 1024 * 1024;

/// Record an open. Always answers a transparent 1x1 GIF that must not be
/// cached, whether or not the token is valid (a bad token records nothing).
#[utoipa::path(
    get, path = "/t/o/{token}", tag = "tracking",
    params(("token" = String, Path, description = "The signed open token from the pixel URL")),
    responses((status = 200, description = "A transparent 1x1 GIF, `Cache-Control: no-store`", content_type = "image/gif", body = String))
)]
async fn open_pixel(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    token: Result<Path<String>, PathRejection>,
) -> Response {
    if let Ok(Path(token)) = token {
        record(&state, TokenKind::Open, &token, &method, &headers);
    } else {
        invalid(TokenKind::Open, "malformed");
    }
    pixel()
}

fn pixel() -> Response {
    let mut response = (StatusCode::OK, PIXEL_GIF).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Record a click and redirect to the signed target. A token that does not
/// verify gets a plain 404 page, never a redirect.
#[utoipa::path(
    get, path = "/t/c/{token}", tag = "tracking",
    params(("token" = String, Path, description = "The signed click token from the tracked link")),
    responses(
        (status = 302, description = "Redirect to the signed target (`Location`), `Cache-Control: no-store`, `Referrer-Policy: no-referrer`"),
        (status = 404, description = "Invalid, tampered or retired link: a plain text page", content_type = "text/plain", body = String),
    )
)]
async fn click(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    token: Result<Path<String>, PathRejection>,
) -> Response {
    let target = match token {
        Ok(Path(token)) => record(&state, TokenKind::Click, &token, &method, &headers),
        Err(_) => {
            invalid(TokenKind::Click, "malformed");
            None
        }
    };
    // The target passed `target::check` when it was signed and again when
    // the token was verified; it is ASCII without controls, so this only
    // fails if that invariant is broken, and then nothing is followed.
    match target.as_deref().map(HeaderValue::from_str) {
        Some(Ok(location)) => {
            let mut response = StatusCode::FOUND.into_response();
            let h = response.headers_mut();
            h.insert(header::LOCATION, location);
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            // The tracked URL names the message: keep it from the target site.
            h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            response
        }
        _ => invalid_link_page(),
    }
}

fn invalid_link_page() -> Response {
    let mut response =
        (StatusCode::NOT_FOUND, "This link is not valid. Please check the message it came from.\n").into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn invalid(kind: TokenKind, reason: &'static str) {
    metrics::counter!("hookrelay_tracking_hits_total", "kind" => kind.as_str(), "outcome" => "invalid").increment(1);
    metrics::counter!("hookrelay_tracking_invalid_total", "kind" => kind.as_str(), "reason" => reason).increment(1);
}

fn dropped(kind: TokenKind, e: IngestError) {
    let reason = match e {
        IngestError::Overloaded => "overloaded",
        IngestError::Unavailable => "unavailable",
        IngestError::ShuttingDown => "shutting_down",
        IngestError::Internal => "failed",
    };
    metrics::counter!("hookrelay_tracking_dropped_total", "kind" => kind.as_str(), "reason" => reason).increment(1);
}

/// Verifies a hit and queues its event without waiting for the commit.
/// Returns the click target when the token is valid, even if the event
/// could not be queued (a person's click is never refused for our load).
fn record(state: &AppState, kind: TokenKind, token: &str, method: &Method, headers: &HeaderMap) -> Option<String> {
    let req = HitRequest {
        head: method == Method::HEAD,
        user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()),
        now: now_ms(),
    };
    let hit = match state.tracking.hit(kind, token, &req) {
        Ok(hit) => hit,
        Err(e) => {
            // By kind only: the token is not logged (it names a message and
            // may carry a URL with personal data in its query).
            tracing::debug!(kind = kind.as_str(), reason = %e, "tracking hit refused");
            invalid(kind, e.label());
            return None;
        }
    };
    if hit.class.is_machine() {
        metrics::counter!("hookrelay_tracking_machine_total", "kind" => kind.as_str(), "class" => hit.class.as_str())
            .increment(1);
    }
    // A repeat of a hit queued within the dedupe window would only be
    // discarded at commit: don't queue it. And tracking never takes more
    // than half the shared queue, so a hammered link cannot crowd out
    // provider callbacks.
    let key = match &hit.command {
        Command::Event { event, .. } => event.dedupe_key.as_str(),
        _ => "",
    };
    if !state.tracking.recent.first_seen(key, req.now) {
        metrics::counter!("hookrelay_tracking_hits_total", "kind" => kind.as_str(), "outcome" => "repeat").increment(1);
        return hit.url;
    }
    if state.ingest.depth() * 2 >= state.ingest.capacity() {
        metrics::counter!("hookrelay_tracking_hits_total", "kind" => kind.as_str(), "outcome" => "dropped")
            .increment(1);
        dropped(kind, IngestError::Overloaded);
        return hit.url;
    }
    match state.ingest.enqueue(vec![hit.command]) {
        Ok(pending) => {
            metrics::counter!("hookrelay_tracking_hits_total", "kind" => kind.as_str(), "outcome" => "queued")
                .increment(1);
            // Watches the commit only to count it; the answer does not wait.
            tokio::spawn(async move {
                match pending.outcome().await {
                    Ok(outcomes) => {
                        let duplicate = matches!(outcomes.first(), Some(Outcome::Applied { duplicate: true, .. }));
                        let result = if duplicate { "duplicate" } else { "recorded" };
                        metrics::counter!("hookrelay_tracking_events_total", "kind" => kind.as_str(), "result" => result)
                            .increment(1);
                    }
                    Err(e) => dropped(kind, e),
                }
            });
        }
        Err(e) => {
            metrics::counter!("hookrelay_tracking_hits_total", "kind" => kind.as_str(), "outcome" => "dropped")
                .increment(1);
            dropped(kind, e);
        }
    }
    hit.url
}

/// 503 when no tracking key is configured: a configuration matter, so no
/// `Retry-After`.
fn not_configured() -> Response {
    ApiError::NotConfigured(SignError::NotConfigured.to_string()).into_response()
}

fn message_id(raw: &str) -> Result<MessageId, ApiError> {
    MessageId::parse(raw).map_err(|e| ApiError::bad_request(format!("`message_id` {e}")))
}

fn yes() -> bool {
    true
}

/// `POST /tracking/rewrite` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RewriteRequest {
    /// The message the HTML belongs to (registered or not yet).
    message_id: String,
    /// The final HTML of the email, after personalization.
    html: String,
    /// Insert the open pixel (default true).
    #[serde(default = "yes")]
    opens: bool,
    /// Rewrite links to tracked links (default true).
    #[serde(default = "yes")]
    clicks: bool,
}

/// The rewritten HTML.
#[derive(Debug, Serialize, ToSchema)]
pub struct RewriteResponse {
    html: String,
    /// Links now going through the click redirect.
    links_tracked: usize,
    /// Links left as they were: other schemes (mailto:, tel:, ...), in-page
    /// anchors, relative links without a `<base>`, links marked
    /// `data-hookrelay-notrack`, and links whose target cannot be signed.
    links_untouched: usize,
    open_pixel: bool,
    /// The id of the key that signed the links.
    key_id: String,
}

/// Rewrite an HTML email for tracking: every `http`/`https` link becomes a
/// tracked link and the open pixel is inserted at the end of the body.
/// `mailto:`, `tel:`, `sms:`, in-page anchors, links inside comments and
/// links marked `data-hookrelay-notrack` are left alone.
#[utoipa::path(
    post, path = "/tracking/rewrite", tag = "tracking",
    request_body = RewriteRequest,
    responses(
        (status = 200, body = RewriteResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 503, description = "No tracking key is configured", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn rewrite_html(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<RewriteRequest>,
) -> Result<Response, ApiError> {
    let id = message_id(&body.message_id)?;
    if body.html.len() > MAX_HTML_BYTES {
        return Err(ApiError::bad_request(format!("`html` must be at most {MAX_HTML_BYTES} bytes")));
    }
    let Some(key_id) = state.tracking.signing_key_id().map(str::to_owned) else {
        return Ok(not_configured());
    };
    let now = now_ms();
    let tracking = state.tracking.clone();
    let RewriteRequest { html, opens, clicks, .. } = body;
    // Rewriting a large document is CPU work: keep it off the async threads.
    let rewritten = tokio::task::spawn_blocking(move || {
        let pixel = if opens { tracking.open_url(&id, now).ok() } else { None };
        let mut sign = |target: &str| tracking.click_url(&id, target, now).ok().map(|(url, _)| url);
        let link: Option<rewrite::SignLink<'_>> = if clicks { Some(&mut sign) } else { None };
        rewrite::rewrite(&html, link, pixel.as_deref())
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    metrics::counter!("hookrelay_tracking_rewrites_total").increment(1);
    metrics::counter!("hookrelay_tracking_links_signed_total").increment(rewritten.links_tracked as u64);
    Ok(Json(RewriteResponse {
        html: rewritten.html,
        links_tracked: rewritten.links_tracked,
        links_untouched: rewritten.links_untouched,
        open_pixel: rewritten.pixel_inserted,
        key_id,
    })
    .into_response())
}

/// `POST /tracking/links` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    message_id: String,
    /// An absolute `http` or `https` URL.
    url: String,
}

/// One tracked link.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkResponse {
    /// The tracked link to put in the message.
    url: String,
    /// Where it redirects: the given URL, normalized as a browser would.
    target: String,
    /// The id of the key that signed it.
    key_id: String,
}

/// The tracked form of one URL (for SMS, plain-text email, or HTML built
/// elsewhere).
#[utoipa::path(
    post, path = "/tracking/links", tag = "tracking",
    request_body = LinkRequest,
    responses(
        (status = 200, body = LinkResponse),
        (status = 400, description = "Not an absolute http(s) URL hookrelay will redirect to", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, description = "No tracking key is configured", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn tracked_link(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<LinkRequest>,
) -> Result<Response, ApiError> {
    let id = message_id(&body.message_id)?;
    match state.tracking.click_url(&id, &body.url, now_ms()) {
        Ok((url, target)) => {
            let key_id = state.tracking.signing_key_id().unwrap_or_default().to_owned();
            metrics::counter!("hookrelay_tracking_links_signed_total").increment(1);
            Ok(Json(LinkResponse { url, target, key_id }).into_response())
        }
        Err(SignError::NotConfigured) => Ok(not_configured()),
        Err(SignError::Target(e)) => Err(ApiError::bad_request(format!("`url` {e}"))),
    }
}
