//! Outbound fan-out: signed `message:updated` webhooks to subscribers.
//!
//! - [`backoff`], [`ssrf`], [`subscription`]: pure rules (retry schedule,
//!   address policy, subscription settings); signatures are
//!   [`crate::domain::signing`]'s.
//! - [`client`]: the HTTP client, whose resolver applies the address policy.
//! - [`dispatcher`]: the scheduler. Claims due deliveries (or takes them
//!   straight from the ingest writer through [`handoff`]) and starts
//!   [`attempt`]s within per-subscription limits ([`rate`]); [`admission`]
//!   bounds what each subscription holds in memory; [`recorder`] writes
//!   outcomes in batches.
//! - [`verify`]: what a subscriber runs to check a signature
//!   (`hookrelay verify`).

pub mod admission;
pub mod attempt;
pub mod backoff;
pub mod client;
pub mod dispatcher;
pub mod handoff;
pub mod rate;
pub mod recorder;
pub mod ssrf;
pub mod subscription;
pub mod verify;
