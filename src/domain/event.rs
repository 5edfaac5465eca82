//! Normalized events: what every edge (provider callbacks, tracking hits,
//! the sender API) turns its input into before it reaches the ingest queue.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::ids::{MessageId, ProviderName, ProviderRef};
use super::status::Status;

/// Courier's vocabulary for why a message is in its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    Bounced,
    Failed,
    Filtered,
    NoChannels,
    NoProviders,
    OptInRequired,
    ProviderError,
    Unpublished,
    Unsubscribed,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Bounced,
        Reason::Failed,
        Reason::Filtered,
        Reason::NoChannels,
        Reason::NoProviders,
        Reason::OptInRequired,
        Reason::ProviderError,
        Reason::Unpublished,
        Reason::Unsubscribed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Bounced => "BOUNCED",
            Reason::Failed => "FAILED",
            Reason::Filtered => "FILTERED",
            Reason::NoChannels => "NO_CHANNELS",
            Reason::NoProviders => "NO_PROVIDERS",
            Reason::OptInRequired => "OPT_IN_REQUIRED",
            Reason::ProviderError => "PROVIDER_ERROR",
            Reason::Unpublished => "UNPUBLISHED",
            Reason::Unsubscribed => "UNSUBSCRIBED",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(s))
    }
}

/// What an event means for the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A status event, applied through the state machine.
    Status(Status),
    /// A spam complaint: recorded, never changes the status.
    Complained,
    /// The recipient unsubscribed: recorded, never changes the status.
    Unsubscribed,
    /// The recipient resubscribed: recorded, never changes the status.
    Resubscribed,
    /// A provider event type hookrelay does not map; stored and acknowledged.
    Unknown,
}

impl EventKind {
    /// The `type` of the history entry.
    pub fn history_type(self) -> &'static str {
        match self {
            EventKind::Status(status) => status.as_str(),
            EventKind::Complained => "COMPLAINED",
            EventKind::Unsubscribed => "UNSUBSCRIBED",
            EventKind::Resubscribed => "RESUBSCRIBED",
            EventKind::Unknown => "UNKNOWN",
        }
    }

    pub fn status(self) -> Option<Status> {
        match self {
            EventKind::Status(status) => Some(status),
            _ => None,
        }
    }
}

/// Which message an event belongs to: hookrelay's id when the provider echoed
/// it back, the provider's own id otherwise, or both.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Target {
    pub id: Option<MessageId>,
    pub provider: Option<ProviderRef>,
}

/// One event about one message (and one recipient), in hookrelay's vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizedEvent {
    pub kind: EventKind,
    /// False for events that are recorded but must not move the status
    /// (machine opens and clicks, unless configured otherwise).
    pub affects_status: bool,
    /// When it happened, epoch milliseconds.
    pub ts: i64,
    /// Unique per event; a repeat is acknowledged and changes nothing.
    pub dedupe_key: String,
    pub provider: Option<ProviderName>,
    /// The provider's own name for the event (`bounce`, `email.delivered`).
    pub provider_event: Option<String>,
    pub recipient: Option<String>,
    pub reason: Option<Reason>,
    pub error: Option<String>,
    /// Further fields kept in the history entry (`data` holds the raw
    /// provider event; tracking adds `url`, `user_agent`, `machine`).
    pub detail: Map<String, Value>,
}

impl NormalizedEvent {
    /// A status event with no detail beyond its key.
    pub fn status(status: Status, ts: i64, dedupe_key: String) -> Self {
        NormalizedEvent {
            kind: EventKind::Status(status),
            affects_status: true,
            ts,
            dedupe_key,
            provider: None,
            provider_event: None,
            recipient: None,
            reason: None,
            error: None,
            detail: Map::new(),
        }
    }

    /// Removes NUL characters from the text fields (PostgreSQL refuses them
    /// in text; a signed provider payload may still carry them).
    pub fn scrub(&mut self) {
        for field in [&mut self.recipient, &mut self.error, &mut self.provider_event].into_iter().flatten() {
            if field.contains('\0') {
                field.retain(|c| c != '\0');
            }
        }
        if self.dedupe_key.contains('\0') {
            self.dedupe_key.retain(|c| c != '\0');
        }
    }

    /// The status this event may move the message to, if any.
    pub fn effective_status(&self) -> Option<Status> {
        if self.affects_status { self.kind.status() } else { None }
    }

    /// The history entry's fields besides `ts` and `type`.
    pub fn history_detail(&self) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(p) = &self.provider {
            out.insert("provider".into(), Value::from(p.as_str()));
        }
        if let Some(e) = &self.provider_event {
            out.insert("provider_event".into(), Value::from(e.as_str()));
        }
        if let Some(r) = &self.recipient {
            out.insert("recipient".into(), Value::from(r.as_str()));
        }
        if let Some(r) = self.reason {
            out.insert("reason".into(), Value::from(r.as_str()));
        }
        if let Some(e) = &self.error {
            out.insert("error".into(), Value::from(e.as_str()));
        }
        if !self.affects_status && self.kind.status().is_some() {
            out.insert("status_unchanged".into(), Value::Bool(true));
        }
        for (k, v) in &self.detail {
            out.insert(k.clone(), v.clone());
        }
        out
    }
}

/// One entry of a message's history: when, its `type` (a status or an
/// event that changes none) and its other fields. The one shape the API,
/// the outbound `event` object and the stores use.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    pub ts: i64,
    pub kind: String,
    pub detail: Map<String, Value>,
}

impl HistoryEntry {
    /// The public JSON: `{"ts":..., "type":..., ...detail}`.
    pub fn to_json(&self) -> Value {
        let mut entry = Map::with_capacity(self.detail.len() + 2);
        entry.insert("ts".into(), Value::from(self.ts));
        entry.insert("type".into(), Value::from(self.kind.as_str()));
        for (k, v) in &self.detail {
            entry.insert(k.clone(), v.clone());
        }
        Value::Object(entry)
    }
}

/// Longest dedupe key stored verbatim; longer keys are hashed.
pub const MAX_DEDUPE_KEY: usize = 200;

/// Builds a dedupe key `prefix:part` from a provider's event id, hashing it
/// when it is too long to store as is.
pub fn dedupe_key(prefix: &str, part: &str) -> String {
    if prefix.len() + 1 + part.len() <= MAX_DEDUPE_KEY {
        format!("{prefix}:{part}")
    } else {
        hashed_dedupe_key(prefix, &[part.as_bytes()])
    }
}

/// Builds a dedupe key from a hash of `parts`, for events that carry no id of
/// their own. Parts are length-prefixed so that ("ab","c") ≠ ("a","bc").
pub fn hashed_dedupe_key(prefix: &str, parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    format!("{prefix}:h:{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keys_are_bounded_and_unambiguous() {
        assert_eq!(dedupe_key("sendgrid", "abc"), "sendgrid:abc");
        let long = "x".repeat(500);
        let key = dedupe_key("sendgrid", &long);
        assert!(key.len() <= MAX_DEDUPE_KEY);
        assert!(key.starts_with("sendgrid:h:"));
        assert_ne!(hashed_dedupe_key("p", &[b"ab", b"c"]), hashed_dedupe_key("p", &[b"a", b"bc"]));
    }

    #[test]
    fn reasons_round_trip() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            let json = serde_json::to_string(&reason).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }

    #[test]
    fn scrub_removes_nul() {
        let mut event = NormalizedEvent::status(Status::Sent, 1, "k\0ey".into());
        event.error = Some("bad\0text".into());
        event.scrub();
        assert_eq!(event.dedupe_key, "key");
        assert_eq!(event.error.as_deref(), Some("badtext"));
    }

    #[test]
    fn machine_events_do_not_move_the_status() {
        let mut event = NormalizedEvent::status(Status::Opened, 1, "k".into());
        assert_eq!(event.effective_status(), Some(Status::Opened));
        event.affects_status = false;
        assert_eq!(event.effective_status(), None);
        assert_eq!(event.history_detail().get("status_unchanged"), Some(&Value::Bool(true)));
    }
}
