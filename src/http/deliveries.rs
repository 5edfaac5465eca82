//! Deliveries: a subscription's list, one delivery with its attempts, and a
//! manual retry.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{self, IdPath, QueryPairs};
use super::messages::Paging;
use super::paging;
use crate::clock::now_ms;
use crate::domain::outbox::{AttemptRecord, DeliveryState};
use crate::domain::{DeliveryId, SubscriptionId};
use crate::store::{DeliveryQuery, DeliverySummary, RetryResult};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list_deliveries)).routes(routes!(get_delivery)).routes(routes!(retry_delivery))
}

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 200;

fn not_found() -> ApiError {
    extract::not_found::<DeliveryId>()
}

/// One attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    attempt: u32,
    /// When it started (epoch ms).
    started_at: i64,
    latency_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The first 4 KiB of the response body.
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<String>,
}

impl AttemptView {
    fn of(a: &AttemptRecord) -> Self {
        AttemptView {
            attempt: a.attempt,
            started_at: a.started_at,
            latency_ms: a.latency_ms,
            status_code: a.status_code,
            error: a.error.clone(),
            response: a.response_excerpt.clone(),
        }
    }
}

/// A delivery with its payload and every attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    delivery: DeliveryView,
    /// The body sent (the same bytes on every attempt).
    #[schema(value_type = Object)]
    payload: Value,
    attempts: Vec<AttemptView>,
}

/// A delivery, its payload and every attempt (time, status code, latency,
/// error, response excerpt).
#[utoipa::path(
    get, path = "/deliveries/{id}", tag = "deliveries",
    params(("id" = String, Path)),
    responses((status = 200, body = DeliveryDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn get_delivery(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<DeliveryId>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let (summary, payload, attempts) = state.store.get_delivery(&id).await?.ok_or_else(not_found)?;
    let payload = serde_json::from_slice(&payload).unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&payload)));
    Ok(Json(DeliveryDetail {
        delivery: DeliveryView::of(&summary),
        payload,
        attempts: attempts.iter().map(AttemptView::of).collect(),
    }))
}

/// Attempt a delivery again now, whatever its state (a dead or failed one
/// gets one more attempt; a pending one skips its wait).
#[utoipa::path(
    post, path = "/deliveries/{id}/retry", tag = "deliveries",
    params(("id" = String, Path)),
    responses((status = 202, body = DeliveryView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "An attempt is running now", body = ErrorBody)),
    security(("api_key" = []))
)]
async fn retry_delivery(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<DeliveryId>,
) -> Result<(StatusCode, Json<DeliveryView>), ApiError> {
    match state.store.retry_delivery(&id, now_ms()).await? {
        RetryResult::NotFound => Err(not_found()),
        RetryResult::InFlight => {
            Err(ApiError::Conflict("an attempt of this delivery is running; retry after it ends".into()))
        }
        RetryResult::Queued(summary) => {
            state.delivery.wake();
            Ok((StatusCode::ACCEPTED, Json(DeliveryView::of(&summary))))
        }
    }
}

/// A delivery as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    id: String,
    subscription_id: String,
    message_id: String,
    seq: i64,
    /// `status`, `event`, `replay` or `test`.
    kind: String,
    state: DeliveryState,
    /// Attempts made so far (their details: `GET /deliveries/{id}`).
    attempt_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<i64>,
}

impl DeliveryView {
    pub fn of(d: &DeliverySummary) -> Self {
        DeliveryView {
            id: d.id.to_string(),
            subscription_id: d.subscription_id.to_string(),
            message_id: d.message_id.to_string(),
            seq: d.seq,
            kind: d.kind.clone(),
            state: d.state,
            attempt_count: d.attempts,
            next_attempt_at: d.next_attempt_at.filter(|_| d.state == DeliveryState::Pending),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            created_at: d.created_at,
            updated_at: d.updated_at,
            finished_at: d.finished_at,
        }
    }
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    paging: Paging,
    results: Vec<DeliveryView>,
}

/// A subscription's deliveries, newest first.
#[utoipa::path(
    get, path = "/subscriptions/{id}/deliveries", tag = "deliveries",
    params(("id" = String, Path),
           ("state" = Option<DeliveryState>, Query, description = "pending, succeeded, failed or dead"),
           ("cursor" = Option<String>, Query, pattern = "^$|^[0-9]{1,15}\\.[A-Za-z0-9_-]{1,64}$",
            description = "`paging.cursor` of the previous page; empty for the first"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 20")),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn list_deliveries(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<SubscriptionId>,
    q: QueryPairs,
) -> Result<Json<DeliveryList>, ApiError> {
    q.only(&["state", "cursor", "limit"])?;
    let limit = paging::limit(&q, DEFAULT_LIMIT, MAX_LIMIT)?;
    let state_filter = q
        .one("state")?
        .map(|s| {
            DeliveryState::parse(s)
                .ok_or_else(|| ApiError::bad_request("`state` must be pending, succeeded, failed or dead"))
        })
        .transpose()?;
    let after = paging::cursor(&q, |id| DeliveryId::parse(id).ok())?;
    if state.store.get_subscription(&id).await?.is_none() {
        return Err(extract::not_found::<SubscriptionId>());
    }
    let query = DeliveryQuery { subscription_id: id, state: state_filter, after, limit };
    let mut rows = state.store.list_deliveries(&query).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let cursor = if more { rows.last().map(|d| paging::encode(d.created_at, &d.id)) } else { None };
    Ok(Json(DeliveryList { paging: Paging::new(cursor, more), results: rows.iter().map(DeliveryView::of).collect() }))
}
