//! `/api-keys`: the keys stored in the database, for operators (admin
//! scope). A key is shown once, when it is created; afterwards only its id,
//! name, prefix, scopes and times.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::new_key;
use super::error::{ApiError, ErrorBody};
use super::extract::{self, ApiJson, IdPath};
use crate::clock::now_ms;
use crate::domain::{ApiKeyId, ApiKeyRecord, Scope, Scopes};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list_keys, create_key)).routes(routes!(revoke_key))
}

/// Longest key name.
const MAX_NAME: usize = 100;

/// A stored API key (never the key itself).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    #[schema(example = "key_0190f3c4a1b27c3e9d4f5a6b7c8d9e0f")]
    id: String,
    name: String,
    /// The key's first characters, to recognise it by (absent for keys
    /// stored before prefixes were kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "hr_9sK3ab")]
    prefix: Option<String>,
    scopes: Vec<Scope>,
    /// Epoch ms.
    created_at: i64,
    /// Epoch ms; recorded within a few seconds of each use; absent if never used.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_used_at: Option<i64>,
    /// The key itself: only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl ApiKeyView {
    fn of(r: &ApiKeyRecord) -> Self {
        ApiKeyView {
            id: r.id.to_string(),
            name: r.name.clone(),
            prefix: r.prefix.clone(),
            scopes: r.scopes.list(),
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            key: None,
        }
    }
}

/// The stored keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    results: Vec<ApiKeyView>,
    /// Keys given in the configuration (`auth.api_keys`): admin, not listed.
    configured_keys: usize,
}

/// List the API keys stored in the database, oldest first.
#[utoipa::path(
    get, path = "/api-keys", tag = "operations",
    responses((status = 200, body = ApiKeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn list_keys(State(state): State<Arc<AppState>>) -> Result<Json<ApiKeyList>, ApiError> {
    let keys = state.store.api_keys().await?;
    Ok(Json(ApiKeyList {
        results: keys.iter().map(ApiKeyView::of).collect(),
        configured_keys: state.keys.configured_len(),
    }))
}

/// `POST /api-keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Who or what the key is for (1 to 100 characters).
    #[schema(min_length = 1, max_length = 100, example = "support desk")]
    name: String,
    /// `read` (message logs, histograms, deliveries), `send` (register
    /// messages, report events, tracking) and/or `admin` (everything).
    #[schema(min_items = 1, max_items = 3)]
    scopes: Vec<Scope>,
}

/// Create an API key. The answer carries the key; it is not shown again.
#[utoipa::path(
    post, path = "/api-keys", tag = "operations",
    request_body = CreateKey,
    responses((status = 201, body = ApiKeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn create_key(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<ApiKeyView>), ApiError> {
    let name = check_name(&body.name).map_err(ApiError::bad_request)?;
    if body.scopes.is_empty() || body.scopes.len() > Scope::ALL.len() {
        return Err(ApiError::bad_request("`scopes` must list 1 to 3 of read, send and admin"));
    }
    let (key, record) = new_key(name, Scopes::of(&body.scopes), now_ms())
        .map_err(|e| ApiError::Internal(format!("no entropy: {e}").into()))?;
    state.store.insert_api_key(&record).await?;
    state.keys.reload().await;
    tracing::info!(api_key.id = %record.id, scopes = %record.scopes, "API key created");
    let mut view = ApiKeyView::of(&record);
    view.key = Some(key);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Checks a key's name: 1 to 100 characters, no control characters.
pub fn check_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(format!("`name` must be 1 to {MAX_NAME} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("`name` must not contain control characters".into());
    }
    Ok(name)
}

/// Revoke (delete) a stored API key. It stops working in this process at
/// once and in other processes within seconds. The last admin key cannot
/// be revoked while no key is configured: nobody could manage keys then.
#[utoipa::path(
    delete, path = "/api-keys/{id}", tag = "operations",
    params(("id" = String, Path, description = "The key's id (`key_...`)")),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "The last admin key", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn revoke_key(State(state): State<Arc<AppState>>, IdPath(id): IdPath<ApiKeyId>) -> Result<StatusCode, ApiError> {
    let not_found = extract::not_found::<ApiKeyId>;
    let keys = state.store.api_keys().await?;
    let key = keys.iter().find(|k| k.id == id).ok_or_else(not_found)?;
    let admins = keys.iter().filter(|k| k.scopes.allow(Scope::Admin)).count();
    if key.scopes.allow(Scope::Admin) && admins == 1 && state.keys.configured_len() == 0 {
        return Err(ApiError::Conflict(
            "this is the last admin key; create another admin key first (or configure auth.api_keys)".into(),
        ));
    }
    if !state.store.revoke_api_key(&id).await? {
        return Err(not_found());
    }
    state.keys.reload().await;
    tracing::info!(api_key.id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
