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
    pub fields: MessageFields,
    pub idempotency_key: Option<String>,
    pub updated_at: i64,
}

/// What is known about a message besides its state: who it went to,
/// through what, and how the sender labels it. A registration says it;
/// callbacks fill in what they can (a recipient, a provider's id).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageFields {
    pub recipient: Option<String>,
    pub channel: Option<Channel>,
    pub provider: Option<ProviderName>,
    pub provider_message_id: Option<String>,
    pub notification: Option<String>,
    pub event: Option<String>,
    pub list: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Option<Value>,
}

impl MessageFields {
    /// Fills what is empty here from `other`, another record of the same
    /// message: the provider and its id go together; tags are joined.
    pub fn fill_from(&mut self, other: &MessageFields) {
        fill(&mut self.recipient, &other.recipient);
        if self.channel.is_none() {
            self.channel = other.channel;
        }
        if self.provider_message_id.is_none() {
            self.provider.clone_from(&other.provider);
            self.provider_message_id.clone_from(&other.provider_message_id);
        }
        fill(&mut self.notification, &other.notification);
        fill(&mut self.event, &other.event);
        fill(&mut self.list, &other.list);
        if self.metadata.is_none() {
            self.metadata.clone_from(&other.metadata);
        }
        for tag in &other.tags {
            if !self.tags.contains(tag) {
                self.tags.push(tag.clone());
            }
        }
    }

    /// Takes what a registration says over what callbacks inferred. The
    /// provider is only taken when none is known, and the provider's id is
    /// not taken here: it names the message only once it is claimed.
    pub fn overlay(&mut self, registered: &MessageFields) {
        let set = |slot: &mut Option<String>, v: &Option<String>| {
            if v.is_some() {
                slot.clone_from(v);
            }
        };
        set(&mut self.recipient, &registered.recipient);
        set(&mut self.notification, &registered.notification);
        set(&mut self.event, &registered.event);
        set(&mut self.list, &registered.list);
        if registered.channel.is_some() {
            self.channel = registered.channel;
        }
        if self.provider.is_none() {
            self.provider.clone_from(&registered.provider);
        }
        if !registered.tags.is_empty() {
            self.tags.clone_from(&registered.tags);
        }
        if registered.metadata.is_some() {
            self.metadata.clone_from(&registered.metadata);
        }
    }
}

fn fill(slot: &mut Option<String>, from: &Option<String>) {
    if slot.is_none() {
        slot.clone_from(from);
    }
}

impl MessageRecord {
    /// A message first known at `now`, with nothing but its id.
    pub fn new(id: MessageId, now: i64) -> Self {
        MessageRecord {
            id,
            state: MessageState::new(now),
            registered: false,
            fields: MessageFields::default(),
            idempotency_key: None,
            updated_at: now,
        }
    }

    pub fn view(&self) -> MessageView<'_> {
        let (s, f) = (&self.state, &self.fields);
        MessageView {
            id: self.id.as_str(),
            status: s.status,
            seq: s.seq,
            enqueued: s.milestones.enqueued,
            sent: s.milestones.sent,
            delivered: s.milestones.delivered,
            opened: s.milestones.opened,
            clicked: s.milestones.clicked,
            recipient: f.recipient.as_deref(),
            channel: f.channel,
            provider: f.provider.as_ref().map(ProviderName::as_str),
            provider_message_id: f.provider_message_id.as_deref(),
            notification: f.notification.as_deref(),
            event: f.event.as_deref(),
            list: f.list.as_deref(),
            tags: &f.tags,
            metadata: f.metadata.as_ref(),
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
