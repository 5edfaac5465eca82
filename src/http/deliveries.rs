//! One delivery: its attempts, and a manual retry.

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
use super::extract::{self, IdPath};
use super::subscriptions::DeliveryView;
use crate::clock::now_ms;
use crate::domain::DeliveryId;
use crate::domain::outbox::AttemptRecord;
use crate::store::RetryResult;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(get_delivery)).routes(routes!(retry_delivery))
}

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
