//! The HTTP edges: routing, authentication, request metrics and the error
//! shape. Handlers validate input, turn it into ingest commands or store
//! queries, and shape the answer; they hold no state of their own.

pub mod api_keys;
pub mod auth;
pub mod callbacks;
pub mod deliveries;
pub mod error;
pub mod extract;
pub mod messages;
pub mod openapi;
pub mod ops;
pub mod paging;
pub mod subscriptions;
pub mod tracking;
pub mod values;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::ingest::Ingest;
use crate::plan::{Command, Outcome};
use crate::store::Store;
use auth::ApiKeys;
use error::ApiError;
use extract::BodyLimit;

/// What every handler can reach.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub ingest: Ingest,
    pub keys: Arc<ApiKeys>,
    pub metrics: PrometheusHandle,
    /// `Retry-After` seconds for 503 answers.
    pub retry_after: u64,
    pub callbacks: callbacks::Callbacks,
    /// The delivery worker (or, in an API-only process, a handle that only
    /// signals other processes through the database).
    pub delivery: crate::delivery::handoff::DeliveryHandle,
    /// Where subscriber URLs may point.
    pub address_policy: crate::delivery::ssrf::AddressPolicy,
    /// Open and click tracking: keys, public URL, machine-hit rules.
    pub tracking: crate::tracking::Tracking,
    /// `delivery.max_replay`.
    pub max_replay: usize,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("backend", &self.store.backend()).finish_non_exhaustive()
    }
}

impl AppState {
    /// Queues one command and waits for its committed outcome.
    pub async fn submit_one(&self, command: Command) -> Result<Outcome, ApiError> {
        let mut outcomes = self.ingest.submit(vec![command]).await?;
        outcomes.pop().ok_or_else(|| ApiError::Internal("ingest returned no outcome".into()))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookrelay",
        description = "Delivery-status relay: provider callbacks in, Courier-compatible message logs and signed \
                       message:updated webhooks out."
    ),
    modifiers(&SecurityAddon),
    components(schemas(messages::HistoryType)),
    tags(
        (name = "messages", description = "Register messages, report statuses, read message logs"),
        (name = "callbacks", description = "Provider delivery callbacks, verified on the raw body"),
        (name = "subscriptions", description = "Subscriber endpoints for signed message:updated webhooks"),
        (name = "deliveries", description = "Outbound deliveries and their attempts"),
        (name = "tracking", description = "Open pixel, click redirect, and tracked links for senders"),
        (name = "operations", description = "Health, readiness, metrics, this description"),
    )
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and their OpenAPI description, before state is attached.
pub fn api(state: &Arc<AppState>) -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let protected = OpenApiRouter::new()
        .merge(messages::routes())
        .merge(subscriptions::routes())
        .merge(deliveries::routes())
        .merge(tracking::protected_routes())
        .merge(api_keys::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_api_key));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(protected)
        .merge(callbacks::routes())
        .merge(tracking::public_routes())
        .merge(ops::routes())
        .split_for_parts()
}

/// The whole application router.
pub fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    let (routes, doc) = api(&state);
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    openapi::complete(&mut doc);
    let doc = doc.to_string();
    routes
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(Extension(ops::OpenApiJson(doc.into())))
        .layer(middleware::from_fn_with_state(state.retry_after, error::retry_after))
        .layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(Extension(BodyLimit(body_limit)))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .with_state(state)
}

fn method_label(method: &axum::http::Method) -> &'static str {
    match *method {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

/// The header that carries a request's id, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// Runs every request in a `request` span carrying its id and route, so any
/// line it logs (a 500's cause included) names it; answers with the id in
/// `X-Request-Id`, and counts and times the request by route template
/// (never by raw path, which would carry ids).
async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let id = request_id(req.headers());
    // At error level so the span is on whenever a 500's line is logged,
    // whatever level the operator chose.
    let span = tracing::error_span!("request", id = %id, method, route = %route);
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    span.in_scope(|| tracing::debug!(status, elapsed_ms = elapsed * 1e3, "request"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    metrics::counter!("hookrelay_http_requests_total", "method" => method, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("hookrelay_http_request_duration_seconds", "method" => method, "route" => route)
        .record(elapsed);
    response
}

/// The caller's `X-Request-Id` when it is a short token (a proxy's id, kept
/// so its logs and hookrelay's can be joined), otherwise a new one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|v| {
        (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    });
    given.map_or_else(|| format!("{:016x}", fastrand::u64(..)), str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use axum::middleware;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::{REQUEST_ID, track};
    use crate::http::error::ApiError;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The one line a 500 logs names the request (its id, echoed to the
    /// caller, and its route); a caller's own id is kept, a hostile one replaced.
    #[tokio::test]
    async fn a_failed_request_logs_its_id_and_route() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = Router::new()
            .route("/boom/{id}", get(|| async { ApiError::Internal("the disk caught fire".into()) }))
            .layer(middleware::from_fn(track));

        let request = Request::get("/boom/7").header(REQUEST_ID, "proxy-4f2a").body(Body::empty()).expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()[REQUEST_ID], "proxy-4f2a");
        let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
        let line = text.lines().find(|l| l.contains("the disk caught fire")).expect("the cause is logged");
        assert!(line.contains("id=proxy-4f2a") && line.contains("route=/boom/{id}"), "{line}");

        let request =
            Request::get("/boom/8").header(REQUEST_ID, "a b\\n<script>").body(Body::empty()).expect("request");
        let response = app.oneshot(request).await.expect("response");
        let id = response.headers()[REQUEST_ID].to_str().expect("ascii").to_owned();
        assert_eq!(id.len(), 16, "a generated id replaces one that is not a short token: {id}");
    }
}
