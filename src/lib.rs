//! hookrelay: a self-hosted delivery-status relay.
//!
//! Providers' delivery callbacks, tracking hits and senders' reports come in
//! at the edges, become normalized events, go through one bounded queue to a
//! batch writer that applies them in one transaction per batch, and are
//! served back as Courier-compatible message logs.
//!
//! The map, in the one direction dependencies point (each module uses only
//! those above it):
//!
//! - [`domain`]: ids, statuses, normalized events, the message record, the
//!   status state machine, outbox rows and leases, subscriptions, signing
//!   keys. Pure: no I/O, no clock.
//! - [`config`]: the configuration tree, layered and validated (uses only
//!   `domain`).
//! - [`plan`]: the batch planner and the ingest commands. Pure: ids and
//!   time are passed in.
//! - [`store`]: the one storage interface, its row codec and list queries,
//!   and its PostgreSQL and SQLite implementations. SQL only; no status
//!   rules.
//! - [`ingest`]: the queue and batch writer (I/O around [`plan`]).
//! - [`providers`]: one module per provider: pure `verify` (raw bytes,
//!   constant time) and pure `parse` (to normalized events).
//! - [`tracking`]: open and click tracking: signed tokens, the machine-hit
//!   rules and the HTML rewriter. Pure: no I/O, time passed in.
//! - [`delivery`]: the fan-out worker: scheduler, attempts, rate limits,
//!   outcome recorder, the SSRF-guarded client.
//! - [`http`]: the edges. Validate input, submit commands or query the
//!   store, shape answers. No state of their own.
//! - [`app`]: checks the configuration, wires the parts together and owns
//!   start-up and shutdown.
//! - [`net`]: outbound TLS set-up; [`telemetry`], [`clock`]: logging,
//!   metrics, wall-clock helpers.
//! - [`scratch`]: throwaway databases for the test suite and the benchmark.

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
pub mod scratch;
pub mod store;
pub mod telemetry;
pub mod tracking;

pub use app::Application;
pub use config::Config;
