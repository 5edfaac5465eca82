//! `hookrelay-bench`: the end-to-end benchmark.
//!
//! Starts hookrelay (one or more processes, release build) on a fresh
//! PostgreSQL database or SQLite file, starts a subscriber sink on loopback
//! that counts every delivery, checks signatures on a sample and records
//! arrival times, creates K subscriptions, then drives N signed provider
//! callbacks (Mailgun-style single events or SendGrid-style batches) at
//! concurrency C, as fast as they are accepted or paced at a rate. It
//! reports accepted callbacks/s and events/s, acknowledgement latency,
//! deliveries/s, callback-to-subscriber latency, lost and duplicated
//! deliveries, the relay's peak RSS and CPU time, and database write
//! transactions per event: one JSON line and a readable table.
//!
//! `hookrelay-bench suite` runs every configuration the README reports.
//!
//! - `run`: one run and the suite; `load`: the callbacks and queries;
//!   `sink`: the subscriber; `relay`: the processes under test; `db`: the
//!   fresh database and its preload; `report`: figures and their printing.

mod db;
mod load;
mod relay;
mod report;
mod run;
mod sink;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::report::print_report;
use crate::run::{isolation, run, suite};

pub const API_KEY: &str = "bench-api-key-0123456789";
pub const MAILGUN_KEY: &str = "bench-mailgun-signing-key";
/// DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte point follows.
pub const P256_SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";

#[derive(Parser, Debug)]
#[command(name = "hookrelay-bench", about = "End-to-end benchmark of hookrelay")]
struct Cli {
    #[command(subcommand)]
    command: Option<Suite>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Suite {
    /// Run every configuration reported in the README.
    Suite {
        /// Scale every run's size by this factor (0.1 for a quick look).
        #[arg(long, default_value_t = 1.0)]
        size: f64,
    },
    /// Healthy subscriptions' throughput and lag with and without slow and
    /// never-answering ones, on both backends, at 8,000 and 50,000 messages.
    Isolation {
        /// Scale every run's size by this factor.
        #[arg(long, default_value_t = 1.0)]
        size: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendArg {
    Postgres,
    Sqlite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderArg {
    /// One HMAC-signed event per request.
    Mailgun,
    /// ECDSA-signed batches of events.
    Sendgrid,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "postgres")]
    pub backend: BackendArg,
    /// PostgreSQL server to create the fresh database on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    #[arg(long, value_enum, default_value = "mailgun")]
    pub provider: ProviderArg,
    /// Events per SendGrid callback.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Callbacks to send.
    #[arg(long, default_value_t = 20_000)]
    pub callbacks: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Callbacks per second; 0 sends as fast as they are accepted.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Subscriptions, each receiving every status change.
    #[arg(long, default_value_t = 4)]
    pub subscriptions: usize,
    /// hookrelay processes sharing the database (PostgreSQL only).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Messages stored before the run.
    #[arg(long, default_value_t = 0)]
    pub preload: usize,
    /// Timed `GET /messages` queries per filter after the run.
    #[arg(long, default_value_t = 0)]
    pub queries: usize,
    /// The hookrelay binary (default: next to this one).
    #[arg(long)]
    pub relay: Option<PathBuf>,
    /// Give up waiting for deliveries after this long without progress.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_seconds: u64,
    /// Subscriptions to an endpoint that answers slowly (or never), besides
    /// `--subscriptions` healthy ones; the report covers the healthy ones.
    #[arg(long, default_value_t = 0)]
    pub slow_subscriptions: usize,
    /// How long the slow endpoint takes to answer.
    #[arg(long, default_value_t = 10_000)]
    pub slow_ms: u64,
    /// The slow endpoint never answers (hookrelay's timeout ends each attempt).
    #[arg(long)]
    pub slow_never: bool,
    /// Print only the JSON line.
    #[arg(long)]
    pub json: bool,
    /// A label for the report.
    #[arg(long, default_value = "")]
    pub label: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    hookrelay::net::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Some(Suite::Suite { size }) => suite(cli.run, size).await,
            Some(Suite::Isolation { size }) => isolation(cli.run, size).await,
            None => {
                let report = run(&cli.run).await?;
                print_report(&report, cli.run.json);
                Ok(())
            }
        }
    })
}
