//! The vocabulary of hookrelay: identifiers, statuses, normalized events and
//! the message record. Pure: no I/O, no clock, no randomness except the id
//! generators, which take nothing from the environment but entropy.

pub mod api_key;
pub mod event;
pub mod host;
pub mod ids;
pub mod message;
pub mod outbox;
pub mod secret;
pub mod signing;
pub mod status;
pub mod subscription;

pub use api_key::{ApiKeyRecord, Scope, Scopes};
pub use event::{EventKind, NormalizedEvent, Reason, Target};
pub use ids::{ApiKeyId, Channel, DeliveryId, MessageId, ProviderName, ProviderRef, SubscriptionId};
pub use message::{MessageFields, MessageRecord, MessageView};
pub use secret::Secret;
pub use status::{MessageState, Milestones, Status};
