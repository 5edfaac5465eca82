//! The message record and its public (Courier-compatible) JSON shape, used
//! by the message-log API and as `data` in outbound `message:updated`
//! payloads, so both always agree.

use serde::Serialize;
use serde_json::Value;

use super::event::Reason;
use super::ids::{Channel, MessageId, ProviderName};
use super::status::{MessageState, Status};

/// Everything hookrelay stores about a message.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageRecord {
    pub id: MessageId,
    pub state: MessageState,
    /// Whether the sender registered it (false while it is known only from
    /// provider callbacks).
    pub registered: bool,
    pub recipient: Option<String>,
    pub channel: Option<Channel>,
    pub provider: Option<ProviderName>,
    pub provider_message_id: Option<String>,
    pub notification: Option<String>,
    pub event: Option<String>,
    pub list: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Option<Value>,
    pub idempotency_key: Option<String>,
    pub updated_at: i64,
}

impl MessageRecord {
    /// A message first known at `now`, with nothing but its id.
    pub fn new(id: MessageId, now: i64) -> Self {
        MessageRecord {
            id,
            state: MessageState::new(now),
            registered: false,
            recipient: None,
            channel: None,
            provider: None,
            provider_message_id: None,
            notification: None,
            event: None,
            list: None,
            tags: Vec::new(),
            metadata: None,
            idempotency_key: None,
            updated_at: now,
        }
    }

    pub fn view(&self) -> MessageView<'_> {
        let s = &self.state;
        MessageView {
            id: self.id.as_str(),
            status: s.status,
            seq: s.seq,
            enqueued: s.milestones.enqueued,
            sent: s.milestones.sent,
            delivered: s.milestones.delivered,
            opened: s.milestones.opened,
            clicked: s.milestones.clicked,
            recipient: self.recipient.as_deref(),
            channel: self.channel,
            provider: self.provider.as_ref().map(ProviderName::as_str),
            provider_message_id: self.provider_message_id.as_deref(),
            notification: self.notification.as_deref(),
            event: self.event.as_deref(),
            list: self.list.as_deref(),
            tags: &self.tags,
            metadata: self.metadata.as_ref(),
            reason: s.reason,
            error: s.error.as_deref(),
        }
    }
}

/// A message as the API shows it: Courier's message fields (milestones in
/// epoch milliseconds, absent until reached) plus `seq`, `provider` and
/// `channel`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView<'a> {
    pub id: &'a str,
    pub status: Status,
    /// Incremented on every status change; keep the highest you have seen.
    pub seq: i64,
    pub enqueued: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clicked: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<&'a str>,
    pub tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_omits_milestones_not_reached() {
        let mut record = MessageRecord::new(MessageId::generate(), 1_000);
        record.state.apply(Status::Sent, 2_000, None, None);
        let json = serde_json::to_value(record.view()).unwrap_or_default();
        assert_eq!(json["status"], "SENT");
        assert_eq!(json["enqueued"], 1_000);
        assert_eq!(json["sent"], 2_000);
        assert_eq!(json["seq"], 1);
        assert!(json.get("delivered").is_none());
        assert_eq!(json["tags"], serde_json::json!([]));
    }
}
