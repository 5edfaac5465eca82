//! The sender API (register, report events, cancel) and the Courier-style
//! message-log API (list, get, history).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{self, ApiJson, IdPath, QueryPairs};
use super::paging;
use super::values::{self, TimeValue};
use crate::clock::{now_ms, parse_time};
use crate::domain::event::{dedupe_key, hashed_dedupe_key};
use crate::domain::{
    Channel, MessageFields, MessageId, MessageRecord, MessageView, NormalizedEvent, ProviderName, ProviderRef, Reason,
    Status, Target,
};
use crate::plan::is_history_type;
use crate::plan::{Command, Outcome, Registration};
use crate::store::MessageQuery;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(register_message, list_messages))
        .routes(routes!(get_message))
        .routes(routes!(message_history))
        .routes(routes!(report_event))
        .routes(routes!(cancel_message))
}

/// Default and largest page size of `GET /messages`.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 500;

const MAX_TEXT: usize = 256;
const MAX_RECIPIENT: usize = 512;
const MAX_TAGS: usize = 50;
const MAX_ERROR_TEXT: usize = 2_048;
const MAX_JSON: usize = 16 * 1024;
/// 2000-01-01T00:00:00Z: no status event is older.
const EARLIEST_TS: i64 = 946_684_800_000;
/// Clock skew tolerated for reported times.
const MAX_FUTURE_MS: i64 = 86_400_000;

fn not_found() -> ApiError {
    extract::not_found::<MessageId>()
}

/// `POST /messages` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Your id for the message (letters, digits, `-_.:@`, up to 128
    /// characters); generated when absent. Registering the same id again
    /// answers with it and changes nothing.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$")]
    id: Option<String>,
    /// Up to 512 characters, no control characters.
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,512}$")]
    recipient: Option<String>,
    channel: Option<Channel>,
    /// The provider the message is sent through (`sendgrid`, `twilio`, ...):
    /// letters, digits, `-` and `_`, up to 64.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    provider: Option<String>,
    /// The provider's id for the message, if already known (needs `provider`).
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,512}$")]
    provider_message_id: Option<String>,
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,256}$")]
    notification: Option<String>,
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,256}$")]
    event: Option<String>,
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,256}$")]
    list: Option<String>,
    /// Up to 50 tags of up to 128 characters, none empty.
    #[serde(default)]
    #[schema(max_items = 50, inline, value_type = Vec<Tag>)]
    tags: Vec<String>,
    /// Anything to keep with the message: an object of up to 64 fields and
    /// 16 KiB of JSON.
    #[schema(schema_with = metadata_schema)]
    metadata: Option<Map<String, Value>>,
}

/// Most fields of `metadata`.
const MAX_METADATA_FIELDS: usize = 64;

fn metadata_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            utoipa::openapi::Type::Object,
            utoipa::openapi::Type::Null,
        ]))
        .max_properties(Some(MAX_METADATA_FIELDS))
        .build()
}

/// A tag: 1 to 128 characters, not only spaces, no control characters.
#[derive(ToSchema)]
#[schema(
    pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$",
    max_length = 128
)]
#[allow(dead_code, reason = "documentation only")]
struct Tag(String);

/// Answer to `POST /messages`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestId {
    /// The message's id.
    #[serde(rename = "requestId")]
    request_id: String,
}

/// A text field: at most `max` characters, no control characters; blank
/// means absent.
fn text(field: &str, value: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.chars().count() > max => {
            Err(ApiError::bad_request(format!("`{field}` must be at most {max} characters")))
        }
        Some(v) if v.chars().any(char::is_control) => {
            Err(ApiError::bad_request(format!("`{field}` must not contain control characters")))
        }
        Some(v) if v.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn json_size(field: &str, value: &impl Serialize) -> Result<(), ApiError> {
    let size = serde_json::to_vec(value).map_or(0, |v| v.len());
    if size > MAX_JSON {
        return Err(ApiError::bad_request(format!("`{field}` must be at most {MAX_JSON} bytes of JSON")));
    }
    Ok(())
}

fn provider_name(value: Option<String>) -> Result<Option<ProviderName>, ApiError> {
    value.map(|p| ProviderName::parse(&p).map_err(|e| ApiError::bad_request(format!("`provider` {e}")))).transpose()
}

/// The `Idempotency-Key` header, if any.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::bad_request("`Idempotency-Key` must be 1 to 255 visible ASCII characters"))?;
    Ok(Some(key.to_owned()))
}

impl RegisterRequest {
    fn into_registration(self, idempotency_key: Option<String>, now: i64) -> Result<Registration, ApiError> {
        let id = self
            .id
            .map(|id| MessageId::parse(&id).map_err(|e| ApiError::bad_request(format!("`id` {e}"))))
            .transpose()?;
        let provider = provider_name(self.provider)?;
        let provider_message_id = text("provider_message_id", self.provider_message_id, ProviderRef::MAX_ID_LEN)?;
        if provider_message_id.is_some() && provider.is_none() {
            return Err(ApiError::bad_request("`provider_message_id` needs `provider`"));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(ApiError::bad_request(format!("at most {MAX_TAGS} `tags`")));
        }
        let mut tags = Vec::with_capacity(self.tags.len());
        for tag in self.tags {
            let tag = text("tags", Some(tag), 128)?
                .ok_or_else(|| ApiError::bad_request("`tags` must not contain empty strings"))?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        if let Some(metadata) = &self.metadata {
            if metadata.len() > MAX_METADATA_FIELDS {
                return Err(ApiError::bad_request(format!("`metadata` may have at most {MAX_METADATA_FIELDS} fields")));
            }
            json_size("metadata", metadata)?;
        }
        Ok(Registration {
            id,
            idempotency_key,
            fields: MessageFields {
                recipient: text("recipient", self.recipient, MAX_RECIPIENT)?,
                channel: self.channel,
                provider,
                provider_message_id,
                notification: text("notification", self.notification, MAX_TEXT)?,
                event: text("event", self.event, MAX_TEXT)?,
                list: text("list", self.list, MAX_TEXT)?,
                tags,
                metadata: self.metadata.map(Value::Object),
            },
            ts: now,
        })
    }
}

/// Register a message. Idempotent by `id` and by the `Idempotency-Key`
/// header: a repeat answers with the first registration's id.
#[utoipa::path(
    post, path = "/messages", tag = "messages",
    request_body = RegisterRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "Makes retries of this request safe: 1 to 255 visible ASCII characters")),
    responses(
        (status = 202, description = "Registered (or already registered)", body = RequestId),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, description = "The provider id belongs to another registered message", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn register_message(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RequestId>), ApiError> {
    let registration = body.into_registration(idempotency_key(&headers)?, now_ms())?;
    match state.submit_one(Command::Register(Box::new(registration))).await? {
        Outcome::Registered { id, created } => {
            if created {
                tracing::debug!(message.id = %id, "message registered");
            }
            Ok((StatusCode::ACCEPTED, Json(RequestId { request_id: id.into() })))
        }
        Outcome::ProviderIdTaken { owner } => Err(provider_id_taken(&owner)),
        other => Err(unexpected(&other)),
    }
}

/// A 409 for a provider id that belongs to another registered message.
fn provider_id_taken(owner: &MessageId) -> ApiError {
    ApiError::Conflict(format!(
        "provider_message_id already belongs to message `{owner}`; give each message its own provider id, or \
         pass hookrelay_id in the provider's metadata when one provider id covers several messages"
    ))
}

fn unexpected(outcome: &Outcome) -> ApiError {
    // Only the variant is named: outcomes can carry recipients and metadata.
    let variant = match outcome {
        Outcome::Registered { .. } => "Registered",
        Outcome::Applied { .. } => "Applied",
        Outcome::Canceled { .. } => "Canceled",
        Outcome::Conflict { .. } => "Conflict",
        Outcome::ProviderIdTaken { .. } => "ProviderIdTaken",
        Outcome::Replayed => "Replayed",
        Outcome::NotFound => "NotFound",
    };
    ApiError::Internal(format!("unexpected ingest outcome {variant}").into())
}

/// `POST /messages/{id}/events` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// Any status but ENQUEUED (set by registration) and CANCELED (use
    /// `POST /messages/{id}/cancel`).
    #[schema(schema_with = reportable_status_schema)]
    status: String,
    /// When it happened; defaults to now. A time before 2000 or more than
    /// a day ahead of hookrelay's clock is taken as the time received, and
    /// the one given is kept in the history entry as `reported_ts`.
    #[schema(schema_with = values::optional_time_schema)]
    ts: Option<TimeValue>,
    /// The provider (`sendgrid`, `twilio`, ...): letters, digits, `-` and `_`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    provider: Option<String>,
    /// With SENT: the provider's id, which later callbacks are matched by
    /// (needs `provider`).
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,512}$")]
    provider_message_id: Option<String>,
    /// One of Courier's reasons.
    #[schema(value_type = Option<Reason>)]
    reason: Option<String>,
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,2048}$")]
    error: Option<String>,
    /// Your id for this event; a repeat with the same id changes nothing.
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,256}$")]
    event_id: Option<String>,
    /// Anything to keep in the history entry (up to 16 KiB of JSON).
    data: Option<Value>,
}

/// The statuses a sender may report.
fn reportable_status_schema() -> utoipa::openapi::Object {
    let reportable =
        Status::ALL.iter().filter(|s| !matches!(s, Status::Enqueued | Status::Canceled)).map(|s| s.as_str());
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(reportable))
        .build()
}

impl EventRequest {
    fn into_command(self, id: MessageId, idempotency_key: Option<String>, now: i64) -> Result<Command, ApiError> {
        let status = Status::parse(&self.status).ok_or_else(|| unknown_status(&self.status))?;
        if status == Status::Enqueued {
            return Err(ApiError::bad_request("ENQUEUED is set by registering the message"));
        }
        if status == Status::Canceled {
            return Err(ApiError::bad_request(
                "cancel with POST /messages/{id}/cancel, which checks it is not too late",
            ));
        }
        let reported = match &self.ts {
            None => now,
            Some(t) => {
                t.millis().ok_or_else(|| ApiError::bad_request("`ts` must be epoch milliseconds or RFC 3339 text"))?
            }
        };
        // Milestones keep the earliest time, so one absurd time would stick:
        // such a time is replaced by the time received (the event itself is
        // real) and kept beside it.
        let ts = if (EARLIEST_TS..=now + MAX_FUTURE_MS).contains(&reported) { reported } else { now };
        let provider = provider_name(self.provider)?;
        let pmid = text("provider_message_id", self.provider_message_id, ProviderRef::MAX_ID_LEN)?;
        let provider_ref = match (&provider, pmid) {
            (Some(p), Some(pmid)) => Some(
                ProviderRef::new(p.clone(), &pmid)
                    .map_err(|e| ApiError::bad_request(format!("`provider_message_id` {e}")))?,
            ),
            (None, Some(_)) => return Err(ApiError::bad_request("`provider_message_id` needs `provider`")),
            _ => None,
        };
        let reason = self
            .reason
            .map(|r| {
                Reason::parse(&r).ok_or_else(|| {
                    let all: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                    ApiError::bad_request(format!("unknown reason `{r}`; expected one of {}", all.join(", ")))
                })
            })
            .transpose()?;
        let error = text("error", self.error, MAX_ERROR_TEXT)?;
        if let Some(data) = &self.data {
            json_size("data", data)?;
        }
        let event_id = text("event_id", self.event_id, MAX_TEXT)?;
        let key = match (event_id, idempotency_key) {
            (Some(e), _) => dedupe_key(&format!("api:{id}"), &e),
            (None, Some(k)) => dedupe_key(&format!("api:{id}:idem"), &k),
            (None, None) => hashed_dedupe_key(
                "api",
                &[
                    id.as_str().as_bytes(),
                    status.as_str().as_bytes(),
                    &reported.to_be_bytes(),
                    provider_ref.as_ref().map_or(&b""[..], |r| r.message_id.as_bytes()),
                    reason.map_or(&b""[..], |r| r.as_str().as_bytes()),
                    error.as_deref().unwrap_or("").as_bytes(),
                ],
            ),
        };
        let mut event = NormalizedEvent::status(status, ts, key);
        event.provider = provider;
        event.reason = reason;
        event.error = error;
        if let Some(data) = self.data {
            event.detail.insert("data".into(), data);
        }
        if ts != reported {
            event.detail.insert("reported_ts".into(), Value::from(reported));
        }
        Ok(Command::Event {
            target: Target { id: Some(id), provider: provider_ref },
            event: Box::new(event),
            create: false,
            want_message: true,
            guard: None,
        })
    }
}

fn unknown_status(s: &str) -> ApiError {
    let all: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
    ApiError::bad_request(format!("unknown status `{s}`; expected one of {}", all.join(", ")))
}

/// Report a sender-side status (ROUTED, SENT with the provider's id,
/// UNROUTABLE, THROTTLED, DELAYED, FILTERED, ...). Answers with the message
/// as it stands afterwards.
#[utoipa::path(
    post, path = "/messages/{id}/events", tag = "messages",
    request_body = EventRequest,
    params(("id" = String, Path, description = "Message id"),
           ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "Dedupes retries when `event_id` is absent: 1 to 255 visible ASCII characters")),
    responses(
        (status = 202, description = "Recorded (or a duplicate)", body = MessageView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The provider id belongs to another registered message", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn report_event(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<MessageId>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<EventRequest>,
) -> Result<Response, ApiError> {
    let command = body.into_command(id.clone(), idempotency_key(&headers)?, now_ms())?;
    match state.submit_one(command).await? {
        Outcome::Applied { message: Some(message), .. } => Ok(accepted(&message)),
        Outcome::Applied { .. } => {
            // A duplicate: answer with the message as stored.
            let message = state.store.get_message(&id).await?.ok_or_else(not_found)?;
            Ok(accepted(&message))
        }
        Outcome::NotFound => Err(not_found()),
        Outcome::ProviderIdTaken { owner } => Err(provider_id_taken(&owner)),
        other => Err(unexpected(&other)),
    }
}

fn accepted(message: &MessageRecord) -> Response {
    (StatusCode::ACCEPTED, Json(message.view())).into_response()
}

/// Cancel a message that has not been sent (ENQUEUED, ROUTED, THROTTLED or
/// DIGESTED). Canceling a canceled message succeeds and changes nothing.
#[utoipa::path(
    post, path = "/messages/{id}/cancel", tag = "messages",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 202, description = "Canceled", body = MessageView),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Already sent or otherwise final", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn cancel_message(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<MessageId>,
) -> Result<Response, ApiError> {
    match state.submit_one(Command::Cancel { id, ts: now_ms() }).await? {
        Outcome::Canceled { message } => Ok(accepted(&message)),
        Outcome::Conflict { status } => {
            Err(ApiError::Conflict(format!("the message is {status} and can no longer be canceled")))
        }
        Outcome::NotFound => Err(not_found()),
        other => Err(unexpected(&other)),
    }
}

/// Query parameters of `GET /messages` (documentation; parsed by hand so
/// that `status` may repeat).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    /// `paging.cursor` of the previous page; empty or absent for the first.
    #[param(pattern = "^$|^[0-9]{1,15}\\.[A-Za-z0-9._:@-]{1,128}$")]
    cursor: Option<String>,
    /// Statuses to include; repeat the parameter or separate with commas.
    status: Option<Vec<Status>>,
    /// Exact match; up to 512 characters, no control characters.
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,512}$")]
    recipient: Option<String>,
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,512}$")]
    notification: Option<String>,
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,512}$")]
    event: Option<String>,
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,512}$")]
    list: Option<String>,
    #[serde(rename = "messageId")]
    #[param(rename = "messageId", pattern = "^[A-Za-z0-9._:@-]{1,128}$")]
    message_id: Option<String>,
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    provider: Option<String>,
    /// Messages carrying this tag.
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,512}$")]
    tag: Option<String>,
    /// Only messages enqueued at or after this time (epoch ms or RFC 3339).
    #[param(schema_with = values::time_schema)]
    enqueued_after: Option<String>,
    /// Only messages enqueued before this time (epoch ms or RFC 3339).
    #[param(schema_with = values::time_schema)]
    enqueued_before: Option<String>,
    /// Page size, 1 to 500 (default 20).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

const LIST_PARAMS: &[&str] = &[
    "cursor",
    "status",
    "recipient",
    "notification",
    "event",
    "list",
    "messageId",
    "provider",
    "tag",
    "enqueued_after",
    "enqueued_before",
    "limit",
];

/// `paging` of a list response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Paging {
    /// Pass as `cursor` to get the next page; null on the last page.
    cursor: Option<String>,
    more: bool,
}

impl Paging {
    pub fn new(cursor: Option<String>, more: bool) -> Self {
        Paging { cursor, more }
    }
}

/// A page of messages, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList<'a> {
    paging: Paging,
    results: Vec<MessageView<'a>>,
}

fn list_query(q: &QueryPairs) -> Result<MessageQuery, ApiError> {
    q.only(LIST_PARAMS)?;
    let mut statuses = q
        .many("status")?
        .into_iter()
        .map(|s| Status::parse(s).ok_or_else(|| unknown_status(s)))
        .collect::<Result<Vec<_>, _>>()?;
    // Two spellings of one status are one term.
    statuses.sort_unstable();
    statuses.dedup();
    let limit = paging::limit(q, DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = paging::cursor(q, |id| MessageId::parse(id).ok())?;
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        q.one(name)?
            .map(|t| {
                parse_time(t).ok_or_else(|| {
                    ApiError::bad_request(format!("`{name}` must be epoch milliseconds or RFC 3339 text"))
                })
            })
            .transpose()
    };
    let plain = |name: &str| -> Result<Option<String>, ApiError> {
        match q.one(name)? {
            Some(v) if v.chars().any(char::is_control) => {
                Err(ApiError::bad_request(format!("`{name}` must not contain control characters")))
            }
            Some(v) if v.chars().count() > MAX_RECIPIENT => {
                Err(ApiError::bad_request(format!("`{name}` must be at most {MAX_RECIPIENT} characters")))
            }
            other => Ok(other.map(str::to_owned)),
        }
    };
    Ok(MessageQuery {
        statuses,
        recipient: plain("recipient")?,
        notification: plain("notification")?,
        event: plain("event")?,
        list: plain("list")?,
        message_id: q
            .one("messageId")?
            .map(|m| MessageId::parse(m).map_err(|e| ApiError::bad_request(format!("`messageId` {e}"))))
            .transpose()?,
        provider: q
            .one("provider")?
            .map(|p| ProviderName::parse(p).map_err(|e| ApiError::bad_request(format!("`provider` {e}"))))
            .transpose()?,
        tag: plain("tag")?,
        enqueued_after: time("enqueued_after")?,
        enqueued_before: time("enqueued_before")?,
        after,
        limit,
    })
}

/// List messages, newest first, with filters and cursor paging.
#[utoipa::path(
    get, path = "/messages", tag = "messages",
    params(ListParams),
    responses(
        (status = 200, body = MessageList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn list_messages(State(state): State<Arc<AppState>>, q: QueryPairs) -> Result<Response, ApiError> {
    let query = list_query(&q)?;
    let mut rows = state.store.list_messages(&query).await?;
    let more = rows.len() > query.limit;
    rows.truncate(query.limit);
    let cursor = if more { rows.last().map(|m| paging::encode(m.state.milestones.enqueued, &m.id)) } else { None };
    let body = MessageList { paging: Paging { cursor, more }, results: rows.iter().map(MessageRecord::view).collect() };
    Ok(Json(body).into_response())
}

/// One message.
#[utoipa::path(
    get, path = "/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Message id")),
    responses((status = 200, body = MessageView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn get_message(State(state): State<Arc<AppState>>, IdPath(id): IdPath<MessageId>) -> Result<Response, ApiError> {
    let message = state.store.get_message(&id).await?.ok_or_else(not_found)?;
    Ok(Json(message.view()).into_response())
}

/// The `type` of a history entry: a status, or an event that changes none
/// (documentation of the `type` parameter).
#[derive(Debug)]
pub struct HistoryType;

impl utoipa::PartialSchema for HistoryType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(crate::plan::HISTORY_TYPES.iter().copied()))
            .into()
    }
}

impl ToSchema for HistoryType {}

/// A message's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    /// Entries in time order: `{"ts": <epoch ms>, "type": "DELIVERED", ...}`.
    #[schema(value_type = Vec<Object>)]
    results: Vec<Value>,
}

/// Every event recorded for a message, in time order, optionally only of one `type`.
#[utoipa::path(
    get, path = "/messages/{id}/history", tag = "messages",
    params(("id" = String, Path, description = "Message id"),
           ("type" = Option<HistoryType>, Query, description = "Only entries of this type (DELIVERED, COMPLAINED, ...)")),
    responses((status = 200, body = History), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []))
)]
async fn message_history(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath<MessageId>,
    q: QueryPairs,
) -> Result<Json<History>, ApiError> {
    q.only(&["type"])?;
    let kind = q
        .one("type")?
        .map(|t| {
            if is_history_type(t) {
                Ok(t.to_ascii_uppercase())
            } else {
                Err(ApiError::bad_request(format!("unknown history type `{t}`")))
            }
        })
        .transpose()?;
    let entries = state.store.history(&id, kind.as_deref()).await?.ok_or_else(not_found)?;
    Ok(Json(History { results: entries.iter().map(|e| e.to_json()).collect() }))
}
