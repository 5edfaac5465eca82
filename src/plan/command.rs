//! What edges hand to the ingest queue, and what the batch writer answers.

use crate::domain::{MessageFields, MessageId, MessageRecord, NormalizedEvent, Status, Target};

/// A sender registering a message (`POST /messages`).
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    /// The sender's id for the message; generated when absent.
    pub id: Option<MessageId>,
    /// A repeat with the same key answers with the first registration's id.
    pub idempotency_key: Option<String>,
    pub fields: MessageFields,
    /// When the registration was received, epoch ms.
    pub ts: i64,
}

/// A provider's single-use callback token (Mailgun signs a timestamp and a
/// token, not the event): remembered, with a hash of the body it came with,
/// until its signature stops being accepted, so that the same token with
/// another body is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayGuard {
    /// The configured source's name: tokens are per provider account.
    pub source: String,
    pub token: String,
    pub body_hash: String,
    /// When the signature stops being accepted (epoch ms).
    pub expires_at: i64,
}

/// One unit of work for the batch writer.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Register(Box<Registration>),
    /// Record an event about a message.
    Event {
        target: Target,
        event: Box<NormalizedEvent>,
        /// Create the message when no record matches (provider callbacks,
        /// tracking hits); when false an unknown message is `NotFound`
        /// (the sender API).
        create: bool,
        /// Return the message as it stands after the event.
        want_message: bool,
        /// A single-use token the callback was signed with, which may not
        /// come with another body.
        guard: Option<Box<ReplayGuard>>,
    },
    /// Move a message that has not been sent to CANCELED.
    Cancel {
        id: MessageId,
        ts: i64,
    },
}

/// The writer's answer to one command, sent only after its batch committed.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Registered {
        id: MessageId,
        /// False when an earlier registration (same id or idempotency key)
        /// already existed.
        created: bool,
    },
    Applied {
        /// The message the event was recorded on (None for a duplicate whose
        /// message could not be resolved without creating one).
        id: Option<MessageId>,
        duplicate: bool,
        changed: bool,
        message: Option<Box<MessageRecord>>,
    },
    Canceled {
        message: Box<MessageRecord>,
    },
    /// The event's single-use token was used before with another body:
    /// nothing was recorded (the edge answers 401).
    Replayed,
    /// The message is past the point where it could be canceled.
    Conflict {
        status: Status,
    },
    /// The provider's message id already belongs to another registered
    /// message; two registered messages are never merged.
    ProviderIdTaken {
        owner: MessageId,
    },
    NotFound,
}
