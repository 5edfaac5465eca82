//! The transactional outbox: the rows the batch writer adds for each status
//! change and subscriber, what a worker leases and attempts, and what an
//! attempt leaves behind. Pure records, shared by the planner, the stores,
//! the delivery worker and the API.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::{DeliveryId, MessageId, MessageRecord, SubscriptionId};

/// An outbox row to insert.
#[derive(Debug, PartialEq)]
pub struct DeliveryRow {
    pub id: DeliveryId,
    pub subscription_id: SubscriptionId,
    pub message_id: MessageId,
    pub seq: i64,
    pub kind: DeliveryKind,
    /// The exact bytes that will be signed and sent.
    pub payload: Vec<u8>,
    pub created_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A status change.
    Status,
    /// A history event that changed no status (`all_events` subscribers).
    Event,
    /// The current state re-sent on an operator's request.
    Replay,
    /// A signed ping.
    Test,
}

impl DeliveryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Status => "status",
            DeliveryKind::Event => "event",
            DeliveryKind::Replay => "replay",
            DeliveryKind::Test => "test",
        }
    }
}

/// The outbound envelope, serialized once per transition.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: &'a str,
    data: crate::domain::MessageView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a Value>,
}

/// Builds the JSON of one outbound `message:updated` payload.
pub fn payload(record: &MessageRecord, timestamp: &str, event: Option<&Value>) -> Vec<u8> {
    let envelope = Envelope { kind: "message:updated", timestamp, data: record.view(), event };
    // Serializing plain data into a Vec cannot fail.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// A delivery leased to this process and ready to attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: DeliveryId,
    pub subscription_id: SubscriptionId,
    pub message_id: MessageId,
    /// The exact bytes to sign and send.
    pub payload: Bytes,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The lease expires at this time (epoch ms); past it another process
    /// may take the delivery, so it must not be started.
    pub lease_until: i64,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt (or being attempted).
    Pending,
    Succeeded,
    /// Refused by the endpoint in a way retrying cannot fix (4xx, 3xx).
    Failed,
    /// Every scheduled attempt failed.
    Dead,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 4] =
        [DeliveryState::Pending, DeliveryState::Succeeded, DeliveryState::Failed, DeliveryState::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Failed => "failed",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        DeliveryState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A lease on deliveries: which process holds them, until when (epoch ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub worker: String,
    pub until: i64,
}

/// One attempt, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// 1-based.
    pub attempt: u32,
    pub started_at: i64,
    pub latency_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The first 4 KiB of the response body.
    pub response_excerpt: Option<String>,
}

/// A delivery's state after an attempt, with the attempt itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub id: DeliveryId,
    pub subscription_id: SubscriptionId,
    /// The lease the attempt ran under; the outcome is written only while
    /// the delivery still holds exactly this lease.
    pub lease_until: i64,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub attempt: AttemptRecord,
}

/// What an attempt tells about its subscription's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Succeeded,
    Failed,
    /// 410 Gone: disable at once.
    Gone,
}
