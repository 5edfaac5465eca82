//! Subscriptions: who hears about status changes, and the operator tools
//! around them (secrets and rotation, test pings, replays, enable/disable).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{self, ApiJson, IdPath, OptionalJson, QueryPairs};
use super::paging;
use super::values::{self, TimeValue};
use crate::clock::{now_ms, rfc3339};
use crate::delivery::subscription::{validate_headers, validate_url};
use crate::domain::outbox::{DeliveryKind, DeliveryRow, DeliveryState, Job, payload};
use crate::domain::signing::{KeyKind, Scheme, SigningKey};
use crate::domain::subscription::{PreviousSecret, Subscription};
use crate::domain::{DeliveryId, MessageId, Status, SubscriptionId};
use crate::store::MessageQuery;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create_subscription, list_subscriptions))
        .routes(routes!(get_subscription, update_subscription, delete_subscription))
        .routes(routes!(get_secret))
        .routes(routes!(rotate_secret))
        .routes(routes!(enable_subscription))
        .routes(routes!(disable_subscription))
        .routes(routes!(test_subscription))
        .routes(routes!(replay))
}

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 200;
/// Rotation overlap when none is given: a day.
const DEFAULT_OVERLAP_SECONDS: u64 = 86_400;
/// Longest rotation overlap: a week.
const MAX_OVERLAP_SECONDS: u64 = 7 * 86_400;
/// Previous secrets kept at most.
const MAX_PREVIOUS: usize = 10;

fn not_found() -> ApiError {
    extract::not_found::<SubscriptionId>()
}

async fn load(state: &AppState, id: &SubscriptionId) -> Result<Subscription, ApiError> {
    state.store.get_subscription(id).await?.ok_or_else(not_found)
}

/// A subscription as the API shows it (the secret only when created).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    id: String,
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// Statuses notified; null means all.
    statuses: Option<Vec<Status>>,
    /// Also notified of history events that change no status.
    all_events: bool,
    signature_scheme: Scheme,
    #[schema(value_type = Object)]
    headers: Map<String, Value>,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    /// Attempts in flight at once (per hookrelay process); null = the default.
    max_in_flight: Option<u32>,
    rate_limit_per_second: Option<u32>,
    /// Since when every attempt has failed (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    failing_since: Option<i64>,
    created_at: i64,
    updated_at: i64,
    /// Only in the answer to creation; later from `GET /subscriptions/{id}/secret`.
    /// What the subscriber verifies with: the `whsec_` secret, or for
    /// `standard-webhooks-ed25519` the `whpk_` public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl SubscriptionView {
    fn of(s: &Subscription) -> Self {
        SubscriptionView {
            id: s.id.to_string(),
            url: s.url.clone(),
            description: s.description.clone(),
            statuses: s.statuses.clone(),
            all_events: s.all_events,
            signature_scheme: s.scheme,
            headers: s.headers.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect(),
            enabled: s.enabled,
            disabled_reason: s.disabled_reason.clone(),
            max_in_flight: s.max_in_flight,
            rate_limit_per_second: s.rate_limit_per_second,
            failing_since: s.failing_since,
            created_at: s.created_at,
            updated_at: s.updated_at,
            secret: None,
        }
    }
}

/// `Some(value)` for a present field, even `null`, so PATCH can tell
/// "set to null" from "leave alone".
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `POST /subscriptions` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    /// Where to POST. http or https; must resolve to a public address unless
    /// allow-listed in `delivery.allow_cidrs`.
    url: String,
    description: Option<String>,
    /// Statuses to notify; absent or null = all.
    #[schema(value_type = Option<Vec<Status>>)]
    statuses: Option<Vec<String>>,
    #[serde(default)]
    all_events: bool,
    /// `standard-webhooks` (default), `standard-webhooks-ed25519` (`v1a`
    /// signatures, verified with a public key) or `courier`.
    signature_scheme: Option<Scheme>,
    /// `whsec_` + base64 of 24 to 64 bytes, or for `standard-webhooks-ed25519`
    /// a `whsk_` signing key; generated when absent.
    secret: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    #[schema(value_type = Object)]
    headers: Map<String, Value>,
    #[serde(default = "yes")]
    enabled: bool,
    /// Attempts in flight at once, per hookrelay process: 1 to 10000.
    #[serde(default, deserialize_with = "values::optional_uint")]
    #[schema(minimum = 1, maximum = 10000)]
    max_in_flight: Option<u32>,
    /// Attempts per second, per hookrelay process: 1 to 100000.
    #[serde(default, deserialize_with = "values::optional_uint")]
    #[schema(minimum = 1, maximum = 100000)]
    rate_limit_per_second: Option<u32>,
}

fn yes() -> bool {
    true
}

/// `PATCH /subscriptions/{id}` body: only the fields given change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSubscription {
    url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<Status>>)]
    statuses: Option<Option<Vec<String>>>,
    all_events: Option<bool>,
    signature_scheme: Option<Scheme>,
    #[schema(value_type = Option<Object>)]
    headers: Option<Map<String, Value>>,
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "values::present_uint")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    max_in_flight: Option<Option<u32>>,
    #[serde(default, deserialize_with = "values::present_uint")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100000)]
    rate_limit_per_second: Option<Option<u32>>,
}

fn check_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    validate_url(url, &state.address_policy)
        .map(|u| u.to_string())
        .map_err(|e| ApiError::bad_request(format!("`url` {e}")))
}

fn check_statuses(statuses: Option<Vec<String>>) -> Result<Option<Vec<Status>>, ApiError> {
    let Some(list) = statuses else { return Ok(None) };
    if list.is_empty() {
        return Err(ApiError::bad_request("`statuses` must not be empty; leave it out (or null) for all"));
    }
    let mut out = Vec::with_capacity(list.len());
    for s in list {
        let status =
            Status::parse(&s).ok_or_else(|| ApiError::bad_request(format!("`statuses`: unknown status `{s}`")))?;
        if !out.contains(&status) {
            out.push(status);
        }
    }
    Ok(Some(out))
}

fn check_headers(headers: Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    let pairs = headers
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(v) => Ok((k, v)),
            _ => Err(ApiError::bad_request(format!("`headers.{k}` must be a string"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    validate_headers(&pairs).map_err(|e| ApiError::bad_request(format!("`headers`: {e}")))
}

fn check_description(d: Option<String>) -> Result<Option<String>, ApiError> {
    match d {
        Some(d) if d.chars().count() > 512 => {
            Err(ApiError::bad_request("`description` must be at most 512 characters"))
        }
        Some(d) if d.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn check_limits(max_in_flight: Option<u32>, rate: Option<u32>) -> Result<(), ApiError> {
    if max_in_flight.is_some_and(|m| !(1..=10_000).contains(&m)) {
        return Err(ApiError::bad_request("`max_in_flight` must be from 1 to 10000"));
    }
    if rate.is_some_and(|r| !(1..=100_000).contains(&r)) {
        return Err(ApiError::bad_request("`rate_limit_per_second` must be from 1 to 100000"));
    }
    Ok(())
}

fn new_secret(scheme: Scheme) -> Result<SigningKey, ApiError> {
    SigningKey::generate(scheme.key_kind()).map_err(|e| ApiError::Internal(format!("no entropy: {e}").into()))
}

/// A given key, or a new one, of the kind `scheme` signs with.
fn secret_for(scheme: Scheme, given: Option<String>) -> Result<SigningKey, ApiError> {
    let Some(given) = given else { return new_secret(scheme) };
    let key = SigningKey::parse(&given).map_err(|e| ApiError::bad_request(format!("`secret`: {e}")))?;
    scheme.check_key(&key).map_err(|e| ApiError::bad_request(format!("`secret`: {e} ({})", scheme.as_str())))?;
    Ok(key)
}

/// Create a subscription. The answer carries its signing secret.
#[utoipa::path(
    post, path = "/subscriptions", tag = "subscriptions",
    request_body = CreateSubscription,
    responses((status = 201, body = SubscriptionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn create_subscription(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateSubscription>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let url = check_url(&state, &body.url)?;
    check_limits(body.max_in_flight, body.rate_limit_per_second)?;
    let scheme = body.signature_scheme.unwrap_or(Scheme::StandardWebhooks);
    let secret = secret_for(scheme, body.secret)?;
    let now = now_ms();
    let subscription = Subscription {
        id: SubscriptionId::generate(),
        url,
        description: check_description(body.description)?,
        statuses: check_statuses(body.statuses)?,
        all_events: body.all_events,
        scheme,
        secret,
        previous_secrets: Vec::new(),
        headers: check_headers(body.headers)?,
        enabled: body.enabled,
        disabled_reason: (!body.enabled).then(|| "created disabled".to_owned()),
        max_in_flight: body.max_in_flight,
        rate_limit_per_second: body.rate_limit_per_second,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    state.store.create_subscription(&subscription).await?;
    state.delivery.subscriptions_changed();
    tracing::info!(subscription.id = %subscription.id, "subscription created");
    let mut view = SubscriptionView::of(&subscription);
    view.secret = Some(subscription.secret.verification_key());
    Ok((StatusCode::CREATED, Json(view)))
}

/// A page of subscriptions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionList {
    paging: super::messages::Paging,
    results: Vec<SubscriptionView>,
}

/// List subscriptions, oldest first.
#[utoipa::path(
    get, path = "/subscriptions", tag = "subscriptions",
    params(("cursor" = Option<String>, Query, pattern = "^$|^[A-Za-z0-9_-]{1,64}$",
            description = "`paging.cursor` of the previous page (a subscription id); empty for the first"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 20")),
    responses((status = 200, body = SubscriptionList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn list_subscriptions(
    State(state): State<Arc<AppState>>,
    q: QueryPairs,
) -> Result<Json<SubscriptionList>, ApiError> {
    q.only(&["cursor", "limit"])?;
    let limit = paging::limit(&q, DEFAULT_LIMIT, MAX_LIMIT)?;
    // Subscriptions are listed by id: the cursor is the last id.
    let after = match q.one("cursor")? {
        None | Some("") => None,
        Some(c) => Some(SubscriptionId::parse(c).map_err(|_| ApiError::bad_request("`cursor` is malformed"))?),
    };
    let mut rows = state.store.list_subscriptions(after.as_ref(), limit).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let cursor = if more { rows.last().map(|s| s.id.to_string()) } else { None };
    Ok(Json(SubscriptionList {
        paging: super::messages::Paging::new(cursor, more),
        results: rows.iter().map(SubscriptionView::of).collect(),
    }))
}

/// One subscription.
#[utoipa::path(
    get, path = "/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn get_subscription(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<SubscriptionId>,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(SubscriptionView::of(&load(&state, &id).await?)))
}

/// Writes a subscription read earlier, unless it changed meanwhile (an
/// automatic disable, a concurrent change): then 409, and nothing is lost.
async fn store_changes(state: &AppState, subscription: &mut Subscription) -> Result<(), ApiError> {
    let expected = subscription.updated_at;
    // Strictly later, so the next writer's expectation is never ambiguous.
    subscription.updated_at = now_ms().max(expected + 1);
    if state.store.update_subscription(subscription, expected).await? {
        state.delivery.subscriptions_changed();
        return Ok(());
    }
    match state.store.get_subscription(&subscription.id).await? {
        None => Err(not_found()),
        Some(_) => Err(ApiError::Conflict("the subscription changed meanwhile; read it again and retry".into())),
    }
}

async fn save(state: &AppState, mut subscription: Subscription) -> Result<Json<SubscriptionView>, ApiError> {
    store_changes(state, &mut subscription).await?;
    Ok(Json(SubscriptionView::of(&subscription)))
}

/// Change a subscription; only the fields given change. Use
/// `rotate-secret` for the secret. Changing `signature_scheme` between an
/// HMAC scheme and `standard-webhooks-ed25519` makes a new key of the new
/// kind (read it from `/secret`); the old one keeps signing beside it for a
/// day, as in a rotation.
#[utoipa::path(
    patch, path = "/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path)),
    request_body = UpdateSubscription,
    responses((status = 200, body = SubscriptionView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "Changed meanwhile (by another request or an automatic disable): read it again and retry", body = ErrorBody)),
    security(("api_key" = []))
)]
async fn update_subscription(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<SubscriptionId>,
    ApiJson(body): ApiJson<UpdateSubscription>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let mut s = load(&state, &id).await?;
    if let Some(url) = body.url {
        s.url = check_url(&state, &url)?;
    }
    if let Some(d) = body.description {
        s.description = check_description(d)?;
    }
    if let Some(statuses) = body.statuses {
        s.statuses = check_statuses(statuses)?;
    }
    if let Some(all) = body.all_events {
        s.all_events = all;
    }
    if let Some(scheme) = body.signature_scheme {
        if scheme.key_kind() != s.scheme.key_kind() {
            // A new key of the new kind, the old one signing beside it for
            // the usual overlap (Standard Webhooks headers carry both).
            let key = new_secret(scheme)?;
            rotate(&mut s, key, DEFAULT_OVERLAP_SECONDS, now_ms());
        }
        s.scheme = scheme;
    }
    if let Some(headers) = body.headers {
        s.headers = check_headers(headers)?;
    }
    if let Some(m) = body.max_in_flight {
        s.max_in_flight = m;
    }
    if let Some(r) = body.rate_limit_per_second {
        s.rate_limit_per_second = r;
    }
    check_limits(s.max_in_flight, s.rate_limit_per_second)?;
    if let Some(enabled) = body.enabled {
        set_enabled(&mut s, enabled);
    }
    save(&state, s).await
}

fn set_enabled(s: &mut Subscription, enabled: bool) {
    if enabled && !s.enabled {
        s.enabled = true;
        s.disabled_reason = None;
        s.failing_since = None;
    } else if !enabled && s.enabled {
        s.enabled = false;
        s.disabled_reason = Some("disabled by an operator".into());
    }
}

/// Delete a subscription and its deliveries.
#[utoipa::path(
    delete, path = "/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn delete_subscription(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<SubscriptionId>,
) -> Result<StatusCode, ApiError> {
    if !state.store.delete_subscription(&id).await? {
        return Err(not_found());
    }
    state.delivery.subscriptions_changed();
    tracing::info!(subscription.id = %id, "subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Resume deliveries (clears the failure record).
#[utoipa::path(
    post, path = "/subscriptions/{id}/enable", tag = "subscriptions",
    params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "Changed meanwhile (by another request or an automatic disable): read it again and retry", body = ErrorBody)),
    security(("api_key" = []))
)]
async fn enable_subscription(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<SubscriptionId>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let mut s = load(&state, &id).await?;
    set_enabled(&mut s, true);
    let view = save(&state, s).await?;
    state.delivery.wake();
    Ok(view)
}

/// Pause deliveries; pending ones wait until the subscription is enabled.
#[utoipa::path(
    post, path = "/subscriptions/{id}/disable", tag = "subscriptions",
    params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "Changed meanwhile (by another request or an automatic disable): read it again and retry", body = ErrorBody)),
    security(("api_key" = []))
)]
async fn disable_subscription(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<SubscriptionId>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let mut s = load(&state, &id).await?;
    set_enabled(&mut s, false);
    save(&state, s).await
}

/// A subscription's secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    /// What the subscriber verifies with: the `whsec_` secret, or the
    /// `whpk_` public key of a `standard-webhooks-ed25519` subscription
    /// (whose signing key never leaves hookrelay).
    secret: String,
    signature_scheme: Scheme,
    /// Secrets still signing during a rotation, until `expires_at` (epoch ms).
    previous: Vec<PreviousView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviousView {
    expires_at: i64,
}

fn secret_view(s: &Subscription, now: i64) -> SecretView {
    SecretView {
        secret: s.secret.verification_key(),
        signature_scheme: s.scheme,
        previous: s
            .previous_secrets
            .iter()
            .filter(|p| p.expires_at > now)
            .map(|p| PreviousView { expires_at: p.expires_at })
            .collect(),
    }
}

/// The current signing secret.
#[utoipa::path(
    get, path = "/subscriptions/{id}/secret", tag = "subscriptions",
    params(("id" = String, Path)),
    responses((status = 200, body = SecretView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn get_secret(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<SubscriptionId>,
) -> Result<Json<SecretView>, ApiError> {
    Ok(Json(secret_view(&load(&state, &id).await?, now_ms())))
}

/// `POST /subscriptions/{id}/rotate-secret` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// The new secret: a `whsec_` secret, or a `whsk_` ed25519 signing key
    /// (which moves a Standard Webhooks subscription to
    /// `standard-webhooks-ed25519`, as a `whsec_` one moves it back; the
    /// Courier scheme takes secrets only). Generated, of the subscription's
    /// kind, when absent.
    secret: Option<String>,
    /// How long the old secret keeps signing too (default 24 h, at most 7 days).
    #[serde(default, deserialize_with = "values::optional_uint")]
    #[schema(minimum = 0, maximum = 604800)]
    overlap_seconds: Option<u64>,
}

/// Replace the signing secret. During the overlap every request carries a
/// signature by each secret (Standard Webhooks), so consumers can switch
/// at their pace.
#[utoipa::path(
    post, path = "/subscriptions/{id}/rotate-secret", tag = "subscriptions",
    params(("id" = String, Path)),
    request_body(content = Option<RotateSecret>, description = "Optional: with no body a secret is generated and the old one signs for a day too"),
    responses((status = 200, body = SecretView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "Changed meanwhile (by another request or an automatic disable): read it again and retry", body = ErrorBody)),
    security(("api_key" = []))
)]
async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<SubscriptionId>,
    OptionalJson(body): OptionalJson<RotateSecret>,
) -> Result<Json<SecretView>, ApiError> {
    let body = body.unwrap_or_default();
    let overlap = body.overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECONDS);
    if overlap > MAX_OVERLAP_SECONDS {
        return Err(ApiError::bad_request(format!("`overlap_seconds` must be at most {MAX_OVERLAP_SECONDS}")));
    }
    let mut s = load(&state, &id).await?;
    let secret = match body.secret {
        None => new_secret(s.scheme)?,
        Some(given) => {
            let key = SigningKey::parse(&given).map_err(|e| ApiError::bad_request(format!("`secret`: {e}")))?;
            // A key of the other kind moves a Standard Webhooks subscription
            // between v1 and v1a, the old key signing beside it meanwhile.
            s.scheme = match (s.scheme, key.kind()) {
                (Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519, KeyKind::Hmac) => Scheme::StandardWebhooks,
                (Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519, KeyKind::Ed25519) => {
                    Scheme::StandardWebhooksEd25519
                }
                (Scheme::Courier, _) => Scheme::Courier,
            };
            s.scheme.check_key(&key).map_err(|e| ApiError::bad_request(format!("`secret`: {e} (courier)")))?;
            key
        }
    };
    let now = now_ms();
    rotate(&mut s, secret, overlap, now);
    store_changes(&state, &mut s).await?;
    tracing::info!(subscription.id = %id, overlap_seconds = overlap, "subscription secret rotated");
    Ok(Json(secret_view(&s, now)))
}

/// Makes `key` the current key; the old one keeps signing for `overlap`
/// seconds (none when 0). At most [`MAX_PREVIOUS`] old keys are kept.
fn rotate(s: &mut Subscription, key: SigningKey, overlap: u64, now: i64) {
    let old = std::mem::replace(&mut s.secret, key);
    s.previous_secrets.retain(|p| p.expires_at > now);
    if overlap > 0 {
        s.previous_secrets.insert(0, PreviousSecret { secret: old, expires_at: now + (overlap as i64) * 1000 });
    }
    s.previous_secrets.truncate(MAX_PREVIOUS);
}

/// The result of a test ping.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestResult {
    delivery_id: String,
    succeeded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<u16>,
    latency_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<String>,
}

/// The message id test pings are recorded under.
pub const PING_MESSAGE: &str = "hookrelay-ping";

/// Send a signed ping now and report how the endpoint answered. The ping
/// (`{"type":"ping",...}`) is recorded as a delivery of kind `test`; it is
/// not retried and does not count towards the subscription's health.
#[utoipa::path(
    post, path = "/subscriptions/{id}/test", tag = "subscriptions",
    params(("id" = String, Path)),
    responses((status = 200, body = TestResult), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn test_subscription(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<SubscriptionId>,
) -> Result<Json<TestResult>, ApiError> {
    let s = load(&state, &id).await?;
    let now = now_ms();
    let body = serde_json::to_vec(&serde_json::json!({
        "type": "ping",
        "timestamp": rfc3339(now),
        "data": {"subscription_id": s.id.as_str()},
    }))
    .map_err(|e| ApiError::Internal(e.into()))?;
    let message_id = MessageId::parse(PING_MESSAGE).map_err(|e| ApiError::Internal(e.into()))?;
    let row = DeliveryRow {
        id: DeliveryId::generate(),
        subscription_id: s.id.clone(),
        message_id: message_id.clone(),
        seq: 0,
        kind: DeliveryKind::Test,
        payload: body.clone(),
        created_at: now,
    };
    let lease = state.delivery.lease();
    state.store.insert_deliveries(std::slice::from_ref(&row), Some(&lease)).await?;
    let job = Job {
        id: row.id.clone(),
        subscription_id: s.id.clone(),
        message_id,
        payload: body.into(),
        attempts: 0,
        lease_until: lease.until,
    };
    let recorded = state.delivery.attempt_once(&s, job).await;
    state
        .store
        .record_attempts(state.delivery.worker(), now_ms(), std::slice::from_ref(&recorded), &[], &[], i64::MAX)
        .await?;
    Ok(Json(TestResult {
        delivery_id: row.id.to_string(),
        succeeded: recorded.state == DeliveryState::Succeeded,
        status_code: recorded.attempt.status_code,
        latency_ms: recorded.attempt.latency_ms,
        error: recorded.attempt.error,
        response: recorded.attempt.response_excerpt,
    }))
}

/// `POST /subscriptions/{id}/replay` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Messages enqueued at or after this time (epoch ms or RFC 3339).
    #[schema(schema_with = values::time_schema)]
    from: TimeValue,
    /// ...and before this one (default: now). A range that ends before it
    /// starts holds no message.
    #[schema(schema_with = values::optional_time_schema)]
    to: Option<TimeValue>,
    /// Only messages now in one of these statuses.
    #[schema(value_type = Option<Vec<Status>>, min_items = 1)]
    statuses: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayResult {
    /// Deliveries queued.
    queued: usize,
}

fn time_value(field: &str, v: &TimeValue) -> Result<i64, ApiError> {
    v.millis().ok_or_else(|| ApiError::bad_request(format!("`{field}` must be epoch milliseconds or RFC 3339 text")))
}

/// Re-send the current state of every message enqueued in a time range
/// (optionally only in some statuses) to this subscription, as new
/// deliveries with the usual retries. For subscribers that missed updates
/// while down or disabled.
#[utoipa::path(
    post, path = "/subscriptions/{id}/replay", tag = "subscriptions",
    params(("id" = String, Path)),
    request_body = ReplayRequest,
    responses((status = 202, body = ReplayResult), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn replay(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<SubscriptionId>,
    ApiJson(body): ApiJson<ReplayRequest>,
) -> Result<(StatusCode, Json<ReplayResult>), ApiError> {
    let s = load(&state, &id).await?;
    let now = now_ms();
    let from = time_value("from", &body.from)?;
    let to = body.to.as_ref().map(|t| time_value("to", t)).transpose()?.unwrap_or(now + 1);
    // An empty range (`to` not after `from`) holds no message: nothing to queue.
    let statuses = check_statuses(body.statuses)?.unwrap_or_default();
    let timestamp = rfc3339(now);
    let mut query = MessageQuery {
        statuses,
        enqueued_after: Some(from),
        enqueued_before: Some(to),
        limit: 500,
        ..MessageQuery::default()
    };
    // Counted first, so a range that is too large queues nothing.
    let max = state.max_replay;
    if state.store.count_messages(&query, max).await? > max {
        return Err(ApiError::bad_request(format!(
            "more than {max} messages in this range (delivery.max_replay); replay a shorter range at a time"
        )));
    }
    let mut queued = 0;
    loop {
        let mut page = state.store.list_messages(&query).await?;
        let more = page.len() > query.limit;
        page.truncate(query.limit);
        let rows: Vec<DeliveryRow> = page
            .iter()
            .map(|m| DeliveryRow {
                id: DeliveryId::generate(),
                subscription_id: s.id.clone(),
                message_id: m.id.clone(),
                seq: m.state.seq,
                kind: DeliveryKind::Replay,
                payload: payload(m, &timestamp, None),
                created_at: now,
            })
            .collect();
        state.store.insert_deliveries(&rows, None).await?;
        queued += rows.len();
        match (more, page.last()) {
            (true, Some(last)) => query.after = Some((last.state.milestones.enqueued, last.id.clone())),
            _ => break,
        }
    }
    state.delivery.wake();
    tracing::info!(subscription.id = %id, queued, "replay queued");
    Ok((StatusCode::ACCEPTED, Json(ReplayResult { queued })))
}
