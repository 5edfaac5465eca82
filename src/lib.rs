//! hookrelay: a self-hosted delivery-status relay.
//!
//! Providers' delivery callbacks, tracking hits and senders' reports come in
//! at the edges, become normalized events, go through one bounded queue to a
//! batch writer that applies them in one transaction per batch, and are
//! served back as Courier-compatible message logs.
//!
//! The map:
//!
//! - [`domain`]: ids, statuses, normalized events, the message record, and
//!   the status state machine. Pure: no I/O, no clock.
//! - [`ingest`]: the queue and batch writer (I/O), and [`ingest::plan`], the
//!   pure planner deciding every write and answer of a batch.
//! - [`providers`]: one module per provider: pure `verify` (raw bytes,
//!   constant time) and pure `parse` (to normalized events).
//! - [`store`]: the one storage interface and its PostgreSQL and SQLite
//!   implementations. SQL only; no status rules.
//! - [`tracking`]: open and click tracking: signed tokens, the machine-hit
//!   rules and the HTML rewriter. Pure: no I/O, time passed in.
//! - [`http`]: the edges. Validate input, submit commands or query the
//!   store, shape answers. No state of their own.
//! - [`config`]: the configuration tree, layered and validated.
//! - [`app`]: wires the parts together and owns start-up and shutdown.
//! - [`net`]: outbound HTTP set-up.
//! - [`telemetry`], [`clock`]: logging, metrics, wall-clock helpers.

#![forbid(unsafe_code)]

pub mod app;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod net;
pub mod plan;
pub mod providers;
pub mod store;
pub mod telemetry;
pub mod tracking;

pub use app::Application;
pub use config::Config;
