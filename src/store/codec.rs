//! Rows as the stores read and write them, for both drivers: the column
//! lists, the decoding of a row (through `RowLike`, whichever driver
//! produced it) and the flattening of a record into column values.

use serde_json::{Map, Value};

use super::{Admitted, DeliverySummary, Handoff, StoreError};
use crate::domain::event::HistoryEntry;
use crate::domain::outbox::{AttemptRecord, DeliveryRow, DeliveryState, Health, Job};
use crate::domain::signing::{Scheme, SigningKey};
use crate::domain::subscription::{PreviousSecret, Subscription, SubscriptionFilter};
use crate::domain::{
    ApiKeyId, ApiKeyRecord, Channel, DeliveryId, MessageFields, MessageId, MessageRecord, MessageState, Milestones,
    ProviderName, Reason, Scopes, Status, SubscriptionId,
};

/// The columns of `messages`, in the order every SELECT uses.
pub(crate) const MESSAGE_COLUMNS: [&str; 22] = [
    "id",
    "status",
    "seq",
    "enqueued_at",
    "sent_at",
    "delivered_at",
    "opened_at",
    "clicked_at",
    "reason",
    "error",
    "registered",
    "recipient",
    "channel",
    "provider",
    "provider_message_id",
    "notification",
    "event",
    "list",
    "tags",
    "metadata",
    "idempotency_key",
    "updated_at",
];

/// `m.id, m.status, ...` for SELECTs.
pub(crate) fn message_select_list(alias: &str) -> String {
    MESSAGE_COLUMNS.iter().map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ")
}

/// Read access to one result row, whichever driver produced it.
pub(crate) trait RowLike {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn boolean(&self, i: usize) -> Result<bool, StoreError>;
}

fn required<T>(v: Option<T>, column: &str) -> Result<T, StoreError> {
    v.ok_or_else(|| StoreError::other(format!("messages.{column} is NULL")))
}

/// Decodes a row selected with [`MESSAGE_COLUMNS`].
pub(crate) fn decode_message(row: &impl RowLike) -> Result<MessageRecord, StoreError> {
    let status_text = required(row.text(1)?, "status")?;
    let status = Status::parse(&status_text)
        .ok_or_else(|| StoreError::other(format!("unknown status {status_text:?} in messages")))?;
    let tags: Vec<String> = match row.text(18)? {
        Some(t) => serde_json::from_str(&t).map_err(|e| StoreError::Other(e.into()))?,
        None => Vec::new(),
    };
    let metadata = match row.text(19)? {
        Some(t) => Some(serde_json::from_str(&t).map_err(|e| StoreError::Other(e.into()))?),
        None => None,
    };
    Ok(MessageRecord {
        id: MessageId::from_trusted(required(row.text(0)?, "id")?),
        state: MessageState {
            status,
            seq: required(row.int(2)?, "seq")?,
            milestones: Milestones {
                enqueued: required(row.int(3)?, "enqueued_at")?,
                sent: row.int(4)?,
                delivered: row.int(5)?,
                opened: row.int(6)?,
                clicked: row.int(7)?,
            },
            reason: row.text(8)?.as_deref().and_then(Reason::parse),
            error: row.text(9)?,
        },
        registered: row.boolean(10)?,
        fields: MessageFields {
            recipient: row.text(11)?,
            channel: row.text(12)?.as_deref().and_then(Channel::parse),
            provider: row.text(13)?.map(ProviderName::from_trusted),
            provider_message_id: row.text(14)?,
            notification: row.text(15)?,
            event: row.text(16)?,
            list: row.text(17)?,
            tags,
            metadata,
        },
        idempotency_key: row.text(20)?,
        updated_at: required(row.int(21)?, "updated_at")?,
    })
}

/// A message record flattened into column values for writing.
pub(crate) struct MessageColumns<'a> {
    pub id: &'a str,
    pub status: &'static str,
    pub seq: i64,
    pub enqueued_at: i64,
    pub sent_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub opened_at: Option<i64>,
    pub clicked_at: Option<i64>,
    pub reason: Option<&'static str>,
    pub error: Option<&'a str>,
    pub registered: bool,
    pub recipient: Option<&'a str>,
    pub channel: Option<&'static str>,
    pub provider: Option<&'a str>,
    pub provider_message_id: Option<&'a str>,
    pub notification: Option<&'a str>,
    pub event: Option<&'a str>,
    pub list: Option<&'a str>,
    pub tags: String,
    pub metadata: Option<String>,
    pub idempotency_key: Option<&'a str>,
    pub updated_at: i64,
}

impl<'a> MessageColumns<'a> {
    pub fn of(m: &'a MessageRecord) -> Self {
        let (s, f) = (&m.state, &m.fields);
        MessageColumns {
            id: m.id.as_str(),
            status: s.status.as_str(),
            seq: s.seq,
            enqueued_at: s.milestones.enqueued,
            sent_at: s.milestones.sent,
            delivered_at: s.milestones.delivered,
            opened_at: s.milestones.opened,
            clicked_at: s.milestones.clicked,
            reason: s.reason.map(Reason::as_str),
            error: s.error.as_deref(),
            registered: m.registered,
            recipient: f.recipient.as_deref(),
            channel: f.channel.map(Channel::as_str),
            provider: f.provider.as_ref().map(ProviderName::as_str),
            provider_message_id: f.provider_message_id.as_deref(),
            notification: f.notification.as_deref(),
            event: f.event.as_deref(),
            list: f.list.as_deref(),
            tags: serde_json::to_string(&f.tags).unwrap_or_else(|_| "[]".into()),
            metadata: f.metadata.as_ref().map(Value::to_string),
            idempotency_key: m.idempotency_key.as_deref(),
            updated_at: m.updated_at,
        }
    }
}

/// The columns of `subscriptions`, in the order every SELECT uses.
pub(crate) const SUBSCRIPTION_COLUMNS: &str = "id, url, description, statuses, all_events, signature_scheme, secret, \
     previous_secrets, headers, enabled, disabled_reason, max_in_flight, rate_limit_per_second, failing_since, \
     created_at, updated_at";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPrevious {
    secret: String,
    expires_at: i64,
}

fn to_u32(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

/// Decodes the `statuses` column of `subscriptions`: a JSON array of
/// statuses, or NULL for all. Anything else is an error, never "all": a
/// subscription must not hear about what it did not ask for.
pub(crate) fn decode_statuses(text: Option<String>) -> Result<Option<Vec<Status>>, StoreError> {
    let Some(text) = text else { return Ok(None) };
    let bad = || StoreError::other("subscriptions.statuses is malformed");
    let names: Vec<String> = serde_json::from_str(&text).map_err(|_| bad())?;
    names.iter().map(|n| Status::parse(n).ok_or_else(bad)).collect::<Result<_, _>>().map(Some)
}

/// What the planner needs of one enabled subscription, from its `id`,
/// `statuses` and `all_events` columns. One whose statuses cannot be read
/// hears nothing (it is left out, with a warning), rather than everything or
/// stopping every batch: its settings are broken, not the batch's.
pub(crate) fn subscription_filter(
    id: String,
    statuses: Option<String>,
    all_events: bool,
) -> Option<SubscriptionFilter> {
    match decode_statuses(statuses) {
        Ok(statuses) => Some(SubscriptionFilter { id: SubscriptionId::from_trusted(id), statuses, all_events }),
        Err(e) => {
            tracing::warn!(subscription.id = %id, error = %e, "subscription left out of fan-out");
            None
        }
    }
}

/// Decodes a history row's `ts`, `kind` and `detail` (JSON object text).
pub(crate) fn history_entry(ts: i64, kind: Option<String>, detail: Option<String>) -> Result<HistoryEntry, StoreError> {
    let detail = match detail.as_deref().map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(map))) => map,
        Some(Ok(_)) | Some(Err(_)) => return Err(StoreError::other("message_events.detail is not a JSON object")),
        None => Map::new(),
    };
    Ok(HistoryEntry { ts, kind: kind.unwrap_or_default(), detail })
}

/// Decodes a row selected with [`SUBSCRIPTION_COLUMNS`].
pub(crate) fn decode_subscription(row: &impl RowLike) -> Result<Subscription, StoreError> {
    let bad = |what: &str| StoreError::other(format!("subscriptions.{what} is malformed"));
    let statuses = decode_statuses(row.text(3)?)?;
    let scheme = Scheme::parse(&required(row.text(5)?, "signature_scheme")?).ok_or_else(|| bad("signature_scheme"))?;
    let secret = SigningKey::parse(&required(row.text(6)?, "secret")?).map_err(|_| bad("secret"))?;
    let previous: Vec<StoredPrevious> =
        serde_json::from_str(&row.text(7)?.unwrap_or_else(|| "[]".into())).map_err(|_| bad("previous_secrets"))?;
    let previous_secrets = previous
        .into_iter()
        .map(|p| {
            Ok(PreviousSecret {
                secret: SigningKey::parse(&p.secret).map_err(|_| bad("previous_secrets"))?,
                expires_at: p.expires_at,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let headers: Vec<(String, String)> =
        serde_json::from_str(&row.text(8)?.unwrap_or_else(|| "[]".into())).map_err(|_| bad("headers"))?;
    Ok(Subscription {
        id: SubscriptionId::from_trusted(required(row.text(0)?, "id")?),
        url: required(row.text(1)?, "url")?,
        description: row.text(2)?,
        statuses,
        all_events: row.boolean(4)?,
        scheme,
        secret,
        previous_secrets,
        headers,
        enabled: row.boolean(9)?,
        disabled_reason: row.text(10)?,
        max_in_flight: to_u32(row.int(11)?),
        rate_limit_per_second: to_u32(row.int(12)?),
        failing_since: row.int(13)?,
        created_at: required(row.int(14)?, "created_at")?,
        updated_at: required(row.int(15)?, "updated_at")?,
    })
}

/// A subscription flattened into column values (same order as
/// [`SUBSCRIPTION_COLUMNS`]).
pub(crate) struct SubscriptionColumns<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub description: Option<&'a str>,
    pub statuses: Option<String>,
    pub all_events: bool,
    pub scheme: &'static str,
    pub secret: &'a str,
    pub previous_secrets: String,
    pub headers: String,
    pub enabled: bool,
    pub disabled_reason: Option<&'a str>,
    pub max_in_flight: Option<i64>,
    pub rate_limit_per_second: Option<i64>,
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl<'a> SubscriptionColumns<'a> {
    pub fn of(s: &'a Subscription) -> Self {
        let previous: Vec<StoredPrevious> = s
            .previous_secrets
            .iter()
            .map(|p| StoredPrevious { secret: p.secret.expose().to_owned(), expires_at: p.expires_at })
            .collect();
        SubscriptionColumns {
            id: s.id.as_str(),
            url: &s.url,
            description: s.description.as_deref(),
            statuses: s.statuses.as_ref().map(|list| {
                serde_json::to_string(&list.iter().map(|st| st.as_str()).collect::<Vec<_>>()).unwrap_or_default()
            }),
            all_events: s.all_events,
            scheme: s.scheme.as_str(),
            secret: s.secret.expose(),
            previous_secrets: serde_json::to_string(&previous).unwrap_or_else(|_| "[]".into()),
            headers: serde_json::to_string(&s.headers).unwrap_or_else(|_| "[]".into()),
            enabled: s.enabled,
            disabled_reason: s.disabled_reason.as_deref(),
            max_in_flight: s.max_in_flight.map(i64::from),
            rate_limit_per_second: s.rate_limit_per_second.map(i64::from),
            failing_since: s.failing_since,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// The columns of `api_keys`, in the order [`decode_api_key`] reads them.
pub(crate) const API_KEY_COLUMNS: &str = "id, name, prefix, hash, scopes, created_at, last_used_at";

pub(crate) fn decode_api_key(row: &impl RowLike) -> Result<ApiKeyRecord, StoreError> {
    let scopes = required(row.text(4)?, "scopes")?;
    Ok(ApiKeyRecord {
        id: ApiKeyId::from_trusted(required(row.text(0)?, "id")?),
        name: required(row.text(1)?, "name")?,
        prefix: row.text(2)?,
        hash: required(row.text(3)?, "hash")?,
        scopes: Scopes::parse(&scopes).map_err(|e| StoreError::other(format!("api_keys.scopes: {e}")))?,
        created_at: required(row.int(5)?, "created_at")?,
        last_used_at: row.int(6)?,
    })
}

/// The columns of a delivery summary, in the order decoding expects.
pub(crate) const DELIVERY_COLUMNS: &str = "id, subscription_id, message_id, seq, kind, state, attempts, \
     next_attempt_at, locked_until, last_status, last_error, created_at, updated_at, finished_at";

pub(crate) fn decode_delivery(row: &impl RowLike) -> Result<DeliverySummary, StoreError> {
    let state_text = required(row.text(5)?, "state")?;
    Ok(DeliverySummary {
        id: DeliveryId::from_trusted(required(row.text(0)?, "id")?),
        subscription_id: SubscriptionId::from_trusted(required(row.text(1)?, "subscription_id")?),
        message_id: MessageId::from_trusted(required(row.text(2)?, "message_id")?),
        seq: required(row.int(3)?, "seq")?,
        kind: required(row.text(4)?, "kind")?,
        state: DeliveryState::parse(&state_text)
            .ok_or_else(|| StoreError::other(format!("unknown delivery state {state_text:?}")))?,
        attempts: to_u32(row.int(6)?).unwrap_or(0),
        next_attempt_at: row.int(7)?,
        leased_until: row.int(8)?,
        last_status: row.int(9)?.and_then(|s| u16::try_from(s).ok()),
        last_error: row.text(10)?,
        created_at: required(row.int(11)?, "created_at")?,
        updated_at: required(row.int(12)?, "updated_at")?,
        finished_at: row.int(13)?,
    })
}

/// The columns of `delivery_attempts` as listed.
pub(crate) const ATTEMPT_COLUMNS: &str = "attempt, started_at, latency_ms, status_code, error, response_excerpt";

pub(crate) fn decode_attempt(row: &impl RowLike) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        attempt: to_u32(row.int(0)?).unwrap_or(0),
        started_at: required(row.int(1)?, "started_at")?,
        latency_ms: row.int(2)?.unwrap_or(0),
        status_code: row.int(3)?.and_then(|s| u16::try_from(s).ok()),
        error: row.text(4)?,
        response_excerpt: row.text(5)?,
    })
}

/// What a batch's hand-off takes: admitted by its worker, or nothing.
pub(crate) fn admit(handoff: Option<&dyn Handoff>, rows: &[DeliveryRow], now: i64) -> Admitted {
    match handoff {
        Some(h) if !rows.is_empty() => {
            let subscriptions: Vec<&SubscriptionId> = rows.iter().map(|d| &d.subscription_id).collect();
            h.admit(&subscriptions, now)
        }
        _ => Admitted::nothing(),
    }
}

/// Turns the deliveries a plan inserted leased into jobs for the leaseholder.
pub(crate) fn handoff(rows: &[DeliveryRow], admitted: &Admitted) -> Vec<Job> {
    rows.iter()
        .enumerate()
        .filter_map(|(i, d)| admitted.lease_of(i).map(|lease| (d, lease)))
        .map(|(d, lease)| Job {
            id: d.id.clone(),
            subscription_id: d.subscription_id.clone(),
            message_id: d.message_id.clone(),
            payload: bytes::Bytes::from(d.payload.clone()),
            attempts: 0,
            lease_until: lease.until,
        })
        .collect()
}

/// The subscription-health statements both stores run, as (sql kind,
/// subscription) pairs reduced to the last word per subscription: one
/// success anywhere in the batch clears failing.
pub(crate) fn health_by_subscription(health: &[(SubscriptionId, Health)]) -> Vec<(&SubscriptionId, Health)> {
    let mut out: Vec<(&SubscriptionId, Health)> = Vec::new();
    for (id, h) in health {
        match out.iter_mut().find(|(i, _)| *i == id) {
            Some((_, current)) => {
                *current = match (*current, *h) {
                    (Health::Gone, _) | (_, Health::Gone) => Health::Gone,
                    (Health::Succeeded, _) | (_, Health::Succeeded) => Health::Succeeded,
                    _ => Health::Failed,
                }
            }
            None => out.push((id, *h)),
        }
    }
    out
}

/// Why a subscription is disabled after failing for too long.
pub(crate) fn failing_reason(disable_after: i64) -> String {
    format!("every attempt failed for {} hours", disable_after / 3_600_000)
}

/// The reason recorded when an endpoint answers 410.
pub(crate) const GONE_REASON: &str = "the endpoint answered 410 Gone";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_statuses_fail_closed() {
        assert_eq!(decode_statuses(None).expect("null is all"), None);
        assert_eq!(
            decode_statuses(Some(r#"["DELIVERED","OPENED"]"#.into())).expect("a list"),
            Some(vec![Status::Delivered, Status::Opened])
        );
        // Neither malformed JSON nor an unknown name reads as "all statuses".
        for broken in ["not json", r#"["DELIVERED","NOPE"]"#, r#"{"a":1}"#, "null"] {
            assert!(decode_statuses(Some(broken.into())).is_err(), "{broken}");
            assert_eq!(subscription_filter("sub_x".into(), Some(broken.into()), true), None, "{broken}");
        }
        let filter = subscription_filter("sub_x".into(), Some(r#"["SENT"]"#.into()), false).expect("kept");
        assert!(filter.wants_status(Status::Sent) && !filter.wants_status(Status::Delivered));
    }
}
