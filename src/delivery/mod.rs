//! Outbound fan-out: signed `message:updated` webhooks to subscribers.
//!
//! - [`backoff`], [`ssrf`], [`subscription`]: pure rules (retry schedule,
//!   address policy, subscription settings); signatures are
//!   [`crate::domain::signing`]'s.
//! - [`client`]: the HTTP client, whose resolver applies the address policy.
//! - [`dispatcher`]: claims due deliveries (or takes them straight from the
//!   ingest writer), sends them within per-subscription limits, and records
//!   outcomes in batches.

pub mod backoff;
pub mod client;
pub mod dispatcher;
pub mod ssrf;
pub mod subscription;
pub mod verify;
