//! Outbound fan-out: signed `message:updated` webhooks to subscribers.
//!
//! - [`signing`], [`backoff`], [`ssrf`], [`subscription`]: pure rules
//!   (signatures, retry schedule, address policy, subscription settings).
//! - [`client`]: the HTTP client, whose resolver applies the address policy.
//! - [`dispatcher`]: claims due deliveries (or takes them straight from the
//!   ingest writer), sends them within per-subscription limits, and records
//!   outcomes in batches.

pub mod backoff;
pub mod client;
pub mod dispatcher;
pub mod signing;
pub mod ssrf;
pub mod subscription;
pub mod verify;

use bytes::Bytes;

use crate::domain::{DeliveryId, MessageId, SubscriptionId};

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
