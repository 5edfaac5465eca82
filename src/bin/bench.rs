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

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use hmac::{KeyInit, Mac};
use hookrelay::domain::signing::{VerifyKey, verify_standard};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::Sha256;

const API_KEY: &str = "bench-api-key-0123456789";
const MAILGUN_KEY: &str = "bench-mailgun-signing-key";
/// DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte point follows.
const P256_SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum BackendArg {
    Postgres,
    Sqlite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum ProviderArg {
    /// One HMAC-signed event per request.
    Mailgun,
    /// ECDSA-signed batches of events.
    Sendgrid,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "postgres")]
    backend: BackendArg,
    /// PostgreSQL server to create the fresh database on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    #[arg(long, value_enum, default_value = "mailgun")]
    provider: ProviderArg,
    /// Events per SendGrid callback.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Callbacks to send.
    #[arg(long, default_value_t = 20_000)]
    callbacks: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Callbacks per second; 0 sends as fast as they are accepted.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Subscriptions, each receiving every status change.
    #[arg(long, default_value_t = 4)]
    subscriptions: usize,
    /// hookrelay processes sharing the database (PostgreSQL only).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Messages stored before the run.
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// Timed `GET /messages` queries per filter after the run.
    #[arg(long, default_value_t = 0)]
    queries: usize,
    /// The hookrelay binary (default: next to this one).
    #[arg(long)]
    relay: Option<PathBuf>,
    /// Give up waiting for deliveries after this long without progress.
    #[arg(long, default_value_t = 30)]
    drain_timeout_seconds: u64,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
    /// A label for the report.
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    hookrelay::net::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Some(Suite::Suite { size }) => suite(cli.run, size).await,
            None => {
                let report = run(&cli.run).await?;
                print_report(&report, cli.run.json);
                Ok(())
            }
        }
    })
}

// ---------------------------------------------------------------------------
// Measurements

#[derive(Debug, Default, serde::Serialize)]
struct Percentiles {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn percentiles(mut micros: Vec<u64>) -> Percentiles {
    if micros.is_empty() {
        return Percentiles::default();
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    Percentiles { p50_ms: at(0.5), p90_ms: at(0.9), p99_ms: at(0.99), max_ms: at(1.0) }
}

#[derive(Debug, Default, serde::Serialize)]
struct QueryTiming {
    filter: String,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    label: String,
    backend: Option<BackendArg>,
    provider: Option<ProviderArg>,
    processes: usize,
    subscriptions: usize,
    concurrency: usize,
    paced_rate: f64,
    preloaded_messages: usize,
    callbacks: usize,
    events: usize,
    load_seconds: f64,
    callbacks_per_second: f64,
    events_per_second: f64,
    overload_retries: usize,
    failed_callbacks: usize,
    ack: Percentiles,
    deliveries_expected: usize,
    deliveries_received: usize,
    deliveries_lost: usize,
    deliveries_duplicated: usize,
    deliveries_per_second: f64,
    delivery_seconds: f64,
    signatures_checked: usize,
    signatures_bad: usize,
    end_to_end: Percentiles,
    relay_peak_rss_mb: f64,
    relay_cpu_seconds: f64,
    db_write_transactions: f64,
    db_write_transactions_per_event: f64,
    /// Write transactions during the run by what they were for (ingest
    /// batches, delivery claims, delivery outcome batches).
    db_write_transactions_by_kind: BTreeMap<String, f64>,
    /// Mean events per ingest transaction (the group-commit batch).
    ingest_batch_mean: f64,
    /// Mean time to apply and commit one ingest batch.
    ingest_commit_mean_ms: f64,
    queries: Vec<QueryTiming>,
}

// ---------------------------------------------------------------------------
// The subscriber sink

struct Sink {
    addr: SocketAddr,
    state: Arc<SinkState>,
}

struct SinkState {
    started: Instant,
    /// Send time of each callback (µs since `started`), by callback index.
    sent_at: Vec<AtomicU64>,
    secrets: Mutex<Vec<VerifyKey>>,
    seen: Mutex<HashSet<u128>>,
    latencies: Mutex<Vec<u64>>,
    received: AtomicUsize,
    duplicates: AtomicUsize,
    checked: AtomicUsize,
    bad: AtomicUsize,
    last_arrival: AtomicU64,
    first_arrival: AtomicU64,
}

impl SinkState {
    fn elapsed_micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// The callback index carried in a payload's provider message id
/// (`bench-<index>` or `bench-<index>x<event>`).
fn callback_index(body: &[u8]) -> Option<usize> {
    let needle = br#""provider_message_id":"bench-"#;
    let at = body.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let digits: Vec<u8> = body[at..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn sink_handle(
    state: Arc<SinkState>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let arrived = state.elapsed_micros();
    let sub: usize = req.uri().path().rsplit('/').next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = req.headers().clone();
    let body = req.into_body().collect().await?.to_bytes();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("dlv_"))
        .and_then(|hex| u128::from_str_radix(hex, 16).ok());
    let n = state.received.fetch_add(1, Ordering::Relaxed);
    let _ = state.first_arrival.compare_exchange(0, arrived, Ordering::Relaxed, Ordering::Relaxed);
    state.last_arrival.fetch_max(arrived, Ordering::Relaxed);
    if let Some(id) = id
        && !state.seen.lock().expect("lock").insert(id)
    {
        state.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(i) = callback_index(&body)
        && let Some(sent) = state.sent_at.get(i)
    {
        let sent = sent.load(Ordering::Relaxed);
        if sent > 0 {
            state.latencies.lock().expect("lock").push(arrived.saturating_sub(sent));
        }
    }
    if n.is_multiple_of(97) {
        let secret = state.secrets.lock().expect("lock").get(sub).cloned();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let ok = secret.is_some_and(|s| {
            verify_standard(
                &s,
                &header("webhook-id"),
                &header("webhook-timestamp"),
                &header("webhook-signature"),
                &body,
                hookrelay::clock::now_ms(),
                300,
            )
            .is_ok()
        });
        state.checked.fetch_add(1, Ordering::Relaxed);
        if !ok {
            state.bad.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(hyper::Response::builder().status(204).body(Full::new(Bytes::new())).expect("response"))
}

async fn start_sink(callbacks: usize) -> anyhow::Result<Sink> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(SinkState {
        started: Instant::now(),
        sent_at: (0..callbacks).map(|_| AtomicU64::new(0)).collect(),
        secrets: Mutex::new(Vec::new()),
        seen: Mutex::new(HashSet::new()),
        latencies: Mutex::new(Vec::new()),
        received: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
        checked: AtomicUsize::new(0),
        bad: AtomicUsize::new(0),
        last_arrival: AtomicU64::new(0),
        first_arrival: AtomicU64::new(0),
    });
    let accept_state = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let state = accept_state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| sink_handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Sink { addr, state })
}

// ---------------------------------------------------------------------------
// The relay

struct Relay {
    child: Child,
    url: String,
}

impl Relay {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Peak resident set (MB) and CPU seconds of a process, from /proc.
fn process_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is
    // field 14, stime 15, counted in clock ticks of 1/100 s.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (peak_kb / 1024.0, (ticks(11) + ticks(12)) / 100.0)
}

fn relay_binary(args: &RunArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.relay {
        return Ok(path.clone());
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("hookrelay");
    if !sibling.exists() {
        bail!("no hookrelay binary next to {}; build it (`cargo build --release`) or pass --relay", me.display());
    }
    Ok(sibling)
}

fn write_config(dir: &Path, database_url: &str, sendgrid_key: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 5000
[database]
url = "{database_url}"
pool_size = 16
sqlite_synchronous = "full"
[auth]
api_keys = ["{API_KEY}"]
[log]
level = "warn"
[delivery]
allow_cidrs = ["127.0.0.1/32"]
[[sources]]
name = "mailgun"
provider = "mailgun"
secrets = ["{MAILGUN_KEY}"]
[[sources]]
name = "sendgrid"
provider = "sendgrid"
public_keys = ["{sendgrid_key}"]
"#
        ),
    )?;
    Ok(path)
}

fn start_relay(binary: &Path, config: &Path) -> anyhow::Result<Relay> {
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("relay stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("hookrelay listening on ") {
                    break addr.to_owned();
                }
            }
            _ => bail!("hookrelay exited before listening"),
        }
    };
    // Keep draining stdout so the relay never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Relay { child, url })
}

fn stop_relay(mut relay: Relay) {
    let _ = Command::new("kill").arg("-TERM").arg(relay.pid().to_string()).status();
    let _ = relay.child.wait();
}

// ---------------------------------------------------------------------------
// Databases

struct FreshDatabase {
    url: String,
    admin_url: String,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

async fn pg_admin(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(i) if i > base.find("://").map_or(0, |s| s + 2) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

async fn fresh_database(args: &RunArgs) -> anyhow::Result<FreshDatabase> {
    match args.backend {
        BackendArg::Sqlite => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            Ok(FreshDatabase { url, admin_url: String::new(), name: None, _dir: Some(dir) })
        }
        BackendArg::Postgres => {
            let name = format!("hookrelay_bench_{}_{}", std::process::id(), fastrand::u32(..));
            let admin = pg_admin(&args.database_url).await?;
            admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await?;
            Ok(FreshDatabase {
                url: with_database(&args.database_url, &name),
                admin_url: args.database_url.clone(),
                name: Some(name),
                _dir: None,
            })
        }
    }
}

/// Runs a checkpoint on the PostgreSQL server, so that the writes of the
/// previous run (or of the preload) are not flushed during this one. Needs
/// a superuser (or `pg_checkpoint`); without one the run goes on as is.
async fn settle(db: &FreshDatabase) {
    if db.name.is_none() {
        return;
    }
    let checkpoint = async { pg_admin(&db.admin_url).await?.batch_execute("CHECKPOINT").await.map_err(Into::into) };
    if let Err(e) = checkpoint.await as anyhow::Result<()> {
        eprintln!("no CHECKPOINT before the run ({e:#}); earlier writes may still be flushing");
    }
}

async fn drop_database(db: &FreshDatabase) {
    if let Some(name) = &db.name
        && let Ok(admin) = pg_admin(&db.admin_url).await
    {
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
    }
}

/// Stores `n` messages (spread over 30 days, several providers, statuses,
/// recipients, notifications and tags) straight into the database.
async fn preload(db: &FreshDatabase, backend: BackendArg, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let now = hookrelay::clock::now_ms();
    let started = Instant::now();
    let select = |series: &str, i: &str| {
        format!(
            "SELECT 'pre-' || {i}, \
               (ARRAY['SENT','DELIVERED','OPENED','CLICKED','UNDELIVERABLE'])[({i} % 5) + 1], 2, \
               {now} - ({i} * 2592000000 / {n}), {now} - ({i} * 2592000000 / {n}) + 1000, NULL, NULL, NULL, NULL, NULL, \
               {t}, 'user' || ({i} % 50000) || '@example.com', 'email', \
               (ARRAY['sendgrid','mailgun','ses','twilio'])[({i} % 4) + 1], 'pre-pm-' || {i}, \
               'n' || ({i} % 20), 'e' || ({i} % 10), 'l' || ({i} % 5), '[\"t' || ({i} % 10) || '\"]', NULL, NULL, {now} \
             FROM {series}",
            t = if backend == BackendArg::Postgres { "TRUE" } else { "1" }
        )
    };
    let cols = "id, status, seq, enqueued_at, sent_at, delivered_at, opened_at, clicked_at, reason, error, registered, \
                recipient, channel, provider, provider_message_id, notification, event, list, tags, metadata, \
                idempotency_key, updated_at";
    match backend {
        BackendArg::Postgres => {
            let client = pg_admin(&db.url).await?;
            let series = format!("generate_series(1, {n}) AS g(i)");
            client.batch_execute(&format!("INSERT INTO messages ({cols}) {}", select(&series, "i"))).await?;
            client
                .batch_execute(&format!(
                    "INSERT INTO message_tags (tag, enqueued_at, message_id) \
                     SELECT 't' || (i % 10), {now} - (i * 2592000000 / {n}), 'pre-' || i FROM generate_series(1, {n}) AS g(i); \
                     INSERT INTO message_events (message_id, dedupe_key, ts, received_at, kind, detail) \
                     SELECT 'pre-' || i, 'enqueued:pre-' || i, {now} - (i * 2592000000 / {n}), {now}, 'ENQUEUED', '{{}}' \
                     FROM generate_series(1, {n}) AS g(i);"
                ))
                .await?;
            // What a table that has been in use looks like: vacuumed (its
            // pages marked all-visible, so index-only scans skip the heap)
            // and analyzed.
            client.batch_execute("VACUUM ANALYZE").await?;
        }
        BackendArg::Sqlite => {
            let path = db.url.trim_start_matches("sqlite://").to_owned();
            let sql = format!(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
                 INSERT INTO messages ({cols}) {}; \
                 WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
                 INSERT INTO message_tags (tag, enqueued_at, message_id) \
                 SELECT 't' || (i % 10), {now} - (i * 2592000000 / {n}), 'pre-' || i FROM s; \
                 WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
                 INSERT INTO message_events (message_id, dedupe_key, ts, received_at, kind, detail) \
                 SELECT 'pre-' || i, 'enqueued:pre-' || i, {now} - (i * 2592000000 / {n}), {now}, 'ENQUEUED', '{{}}' FROM s; \
                 ANALYZE;",
                select("s", "i")
                    .replace("(ARRAY['SENT','DELIVERED','OPENED','CLICKED','UNDELIVERABLE'])[({i} % 5) + 1]", "x")
            );
            let sql = sql
                .replace(
                    "(ARRAY['SENT','DELIVERED','OPENED','CLICKED','UNDELIVERABLE'])[(i % 5) + 1]",
                    "CASE i % 5 WHEN 0 THEN 'SENT' WHEN 1 THEN 'DELIVERED' WHEN 2 THEN 'OPENED' WHEN 3 THEN 'CLICKED' ELSE 'UNDELIVERABLE' END",
                )
                .replace(
                    "(ARRAY['sendgrid','mailgun','ses','twilio'])[(i % 4) + 1]",
                    "CASE i % 4 WHEN 0 THEN 'sendgrid' WHEN 1 THEN 'mailgun' WHEN 2 THEN 'ses' ELSE 'twilio' END",
                );
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let conn = rusqlite::Connection::open(path)?;
                conn.execute_batch(&sql)?;
                Ok(())
            })
            .await??;
        }
    }
    eprintln!("preloaded {n} messages in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------
// Load

type Http = HyperClient<HttpConnector, Full<Bytes>>;

fn http_client(pool: usize) -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new()).pool_max_idle_per_host(pool).build(connector)
}

async fn request(
    client: &Http,
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<(u16, Bytes, hyper::HeaderMap)> {
    let mut builder = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = client.request(builder.body(Full::new(body))?).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body, headers))
}

/// Builds signed callbacks.
struct Signer {
    sendgrid: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    fn new() -> anyhow::Result<(Signer, String)> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("keygen"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("key"))?;
        let mut spki = hex::decode(P256_SPKI_PREFIX)?;
        spki.extend_from_slice(pair.public_key().as_ref());
        let public = base64::engine::general_purpose::STANDARD.encode(spki);
        Ok((Signer { sendgrid: pair, rng }, public))
    }

    /// The path, headers and body of callback number `i`.
    fn callback(
        &self,
        provider: ProviderArg,
        i: usize,
        batch: usize,
    ) -> (&'static str, Vec<(&'static str, String)>, Bytes) {
        let now = hookrelay::clock::now_ms() / 1000;
        match provider {
            ProviderArg::Mailgun => {
                let token = format!("tok{i}x{}", fastrand::u64(..));
                let ts = now.to_string();
                let mut mac = hmac::Hmac::<Sha256>::new_from_slice(MAILGUN_KEY.as_bytes()).expect("key");
                mac.update(ts.as_bytes());
                mac.update(token.as_bytes());
                let signature = hex::encode(mac.finalize().into_bytes());
                let body = json!({
                    "signature": {"timestamp": ts, "token": token, "signature": signature},
                    "event-data": {
                        "event": "delivered", "id": format!("ev{i}"), "timestamp": now as f64,
                        "recipient": format!("r{i}@bench.test"),
                        "message": {"headers": {"message-id": format!("bench-{i}@bench.test")}},
                        "delivery-status": {"code": 250, "message": "OK"},
                    },
                });
                ("/callbacks/mailgun", vec![("content-type", "application/json".into())], Bytes::from(body.to_string()))
            }
            ProviderArg::Sendgrid => {
                let events: Vec<Value> = (0..batch)
                    .map(|j| {
                        json!({
                            "email": format!("r{i}x{j}@bench.test"), "timestamp": now, "event": "delivered",
                            "sg_event_id": format!("ev{i}x{j}"), "sg_message_id": format!("bench-{i}x{j}.filter0001"),
                            "response": "250 OK",
                        })
                    })
                    .collect();
                let body = Bytes::from(serde_json::to_vec(&events).expect("json"));
                let ts = now.to_string();
                let mut signed = ts.clone().into_bytes();
                signed.extend_from_slice(&body);
                let signature = self.sendgrid.sign(&self.rng, &signed).expect("sign");
                let signature = base64::engine::general_purpose::STANDARD.encode(signature.as_ref());
                (
                    "/callbacks/sendgrid",
                    vec![
                        ("content-type", "application/json".into()),
                        ("x-twilio-email-event-webhook-timestamp", ts),
                        ("x-twilio-email-event-webhook-signature", signature),
                    ],
                    body,
                )
            }
        }
    }
}

struct LoadResult {
    seconds: f64,
    acks: Vec<u64>,
    retries: usize,
    failed: usize,
}

async fn drive(args: &RunArgs, relays: &[String], signer: Arc<Signer>, sink: &Sink) -> LoadResult {
    let client = http_client(args.concurrency);
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, retries, failed, signer) =
            (client.clone(), next.clone(), retries.clone(), failed.clone(), signer.clone());
        let (relays, state) = (relays.to_vec(), sink.state.clone());
        let (n, rate, provider, batch) = (args.callbacks, args.rate, args.provider, args.batch);
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                // Paced: each callback has its slot; latency counts from it.
                let scheduled = if rate > 0.0 {
                    let at = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                    at
                } else {
                    Instant::now()
                };
                let (path, headers, body) = signer.callback(provider, i, batch);
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let url = format!("{}{path}", relays[i % relays.len()]);
                state.sent_at[i].store(state.elapsed_micros().max(1), Ordering::Relaxed);
                loop {
                    match request(&client, hyper::Method::POST, &url, &headers, body.clone()).await {
                        Ok((200, _, _)) => break,
                        Ok((503, _, _)) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Ok((status, body, _)) => {
                            eprintln!("callback {i}: {status} {}", String::from_utf8_lossy(&body));
                            failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            eprintln!("callback {i}: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                acks.push(u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            acks
        }));
    }
    let mut acks = Vec::with_capacity(args.callbacks);
    for t in tasks {
        acks.extend(t.await.unwrap_or_default());
    }
    LoadResult {
        seconds: started.elapsed().as_secs_f64(),
        acks,
        retries: retries.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    }
}

async fn metric_total(client: &Http, relay: &str, name: &str) -> f64 {
    metric_by_kind(client, relay, name).await.values().sum()
}

/// The series of metric `name` by their `kind` label (`""` without one).
async fn metric_by_kind(client: &Http, relay: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok((_, body, _)) = request(client, hyper::Method::GET, &format!("{relay}/metrics"), &[], Bytes::new()).await
    else {
        return out;
    };
    for line in String::from_utf8_lossy(&body).lines().filter(|l| l.starts_with(name)) {
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let kind = line.split_once("kind=\"").and_then(|(_, rest)| rest.split_once('"')).map_or("", |(kind, _)| kind);
        *out.entry(kind.to_owned()).or_insert(0.0) += value;
    }
    out
}

async fn time_queries(client: &Http, relay: &str, per_filter: usize) -> Vec<QueryTiming> {
    let auth = format!("Bearer {API_KEY}");
    let filters = [
        ("newest page", "limit=50".to_owned()),
        ("status", "status=DELIVERED&limit=50".to_owned()),
        ("two statuses", "status=OPENED&status=CLICKED&limit=50".to_owned()),
        ("recipient", "recipient=user123%40example.com&limit=50".to_owned()),
        ("tag", "tag=t3&limit=50".to_owned()),
        ("provider", "provider=ses&limit=50".to_owned()),
        ("notification + status", "notification=n7&status=SENT&limit=50".to_owned()),
        ("time range", "enqueued_after=2000-01-01T00:00:00Z&enqueued_before=2100-01-01T00:00:00Z&limit=50".to_owned()),
    ];
    let mut out = Vec::new();
    for (name, query) in filters {
        let mut times = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..per_filter {
            // Walk pages so deep positions are timed too.
            let q = match &cursor {
                Some(c) => format!("{query}&cursor={c}"),
                None => query.clone(),
            };
            let started = Instant::now();
            let Ok((status, body, _)) = request(
                client,
                hyper::Method::GET,
                &format!("{relay}/messages?{q}"),
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await
            else {
                continue;
            };
            times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            if status != 200 {
                eprintln!("query {name}: {status}");
                break;
            }
            let page: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            cursor = page["paging"]["cursor"].as_str().map(str::to_owned);
        }
        let p = percentiles(times);
        out.push(QueryTiming { filter: name.to_owned(), p50_ms: p.p50_ms, p99_ms: p.p99_ms });
    }
    let mut times = Vec::new();
    for i in 0..per_filter {
        let started = Instant::now();
        let url = format!("{relay}/messages/pre-{}/history", i * 7 + 1);
        if request(client, hyper::Method::GET, &url, &[("authorization", &auth)], Bytes::new()).await.is_ok() {
            times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
    }
    let p = percentiles(times);
    out.push(QueryTiming { filter: "history of one message".into(), p50_ms: p.p50_ms, p99_ms: p.p99_ms });
    out
}

async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    if args.backend == BackendArg::Sqlite && args.processes > 1 {
        bail!("SQLite is for one process; use --backend postgres for --processes > 1");
    }
    let binary = relay_binary(args)?;
    let db = fresh_database(args).await?;
    let result = run_on(args, &binary, &db).await;
    drop_database(&db).await;
    result
}

async fn run_on(args: &RunArgs, binary: &Path, db: &FreshDatabase) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let (signer, sendgrid_key) = Signer::new()?;
    let config = write_config(dir.path(), &db.url, &sendgrid_key)?;
    // Migrate first, so a preload can go straight into the tables.
    let status = Command::new(binary).arg("--config").arg(&config).arg("migrate").stdout(Stdio::null()).status()?;
    if !status.success() {
        bail!("hookrelay migrate failed");
    }
    preload(db, args.backend, args.preload).await?;
    settle(db).await;
    let mut relays = Vec::new();
    for _ in 0..args.processes.max(1) {
        relays.push(start_relay(binary, &config)?);
    }
    let urls: Vec<String> = relays.iter().map(|r| r.url.clone()).collect();
    let outcome = measure(args, &urls, signer, relays.iter().map(Relay::pid).collect()).await;
    for relay in relays {
        stop_relay(relay);
    }
    outcome
}

async fn measure(args: &RunArgs, relays: &[String], signer: Signer, pids: Vec<u32>) -> anyhow::Result<Report> {
    let client = http_client(8);
    let sink = start_sink(args.callbacks).await?;
    let auth = format!("Bearer {API_KEY}");
    for k in 0..args.subscriptions {
        let body = json!({"url": format!("http://{}/hook/{k}", sink.addr), "max_in_flight": 256});
        let (status, body, _) = request(
            &client,
            hyper::Method::POST,
            &format!("{}/subscriptions", relays[0]),
            &[("authorization", &auth), ("content-type", "application/json")],
            Bytes::from(body.to_string()),
        )
        .await?;
        if status != 201 {
            bail!("creating a subscription: {status} {}", String::from_utf8_lossy(&body));
        }
        let created: Value = serde_json::from_slice(&body)?;
        let secret =
            VerifyKey::parse(created["secret"].as_str().unwrap_or_default()).map_err(|e| anyhow::anyhow!("{e}"))?;
        sink.state.secrets.lock().expect("lock").push(secret);
    }
    let mut commits_by_kind = BTreeMap::<String, f64>::new();
    for r in relays {
        for (kind, n) in metric_by_kind(&client, r, "hookrelay_db_write_transactions_total").await {
            *commits_by_kind.entry(kind).or_insert(0.0) -= n;
        }
    }
    let events_per_callback = if args.provider == ProviderArg::Sendgrid { args.batch } else { 1 };
    let expected = args.callbacks * events_per_callback * args.subscriptions;
    let load = drive(args, relays, Arc::new(signer), &sink).await;

    // Wait for every delivery, as long as they keep coming.
    let mut last = sink.state.received.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while sink.state.seen.lock().expect("lock").len() < expected {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = sink.state.received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(args.drain_timeout_seconds) {
            eprintln!("deliveries stopped arriving; giving up waiting");
            break;
        }
    }
    let (mut batch_sum, mut batch_count, mut commit_sum, mut commit_count) = (0.0, 0.0, 0.0, 0.0);
    for r in relays {
        for (kind, n) in metric_by_kind(&client, r, "hookrelay_db_write_transactions_total").await {
            *commits_by_kind.entry(kind).or_insert(0.0) += n;
        }
        batch_sum += metric_total(&client, r, "hookrelay_ingest_batch_events_sum").await;
        batch_count += metric_total(&client, r, "hookrelay_ingest_batch_events_count").await;
        commit_sum += metric_total(&client, r, "hookrelay_ingest_commit_seconds_sum").await;
        commit_count += metric_total(&client, r, "hookrelay_ingest_commit_seconds_count").await;
    }
    let queries = if args.queries > 0 { time_queries(&client, &relays[0], args.queries).await } else { Vec::new() };
    let usage: Vec<(f64, f64)> = pids.iter().map(|p| process_usage(*p)).collect();

    let state = &sink.state;
    let unique = state.seen.lock().expect("lock").len();
    let first = state.first_arrival.load(Ordering::Relaxed);
    let last_arrival = state.last_arrival.load(Ordering::Relaxed);
    let delivery_seconds = (last_arrival.saturating_sub(first)) as f64 / 1e6;
    let events = (args.callbacks - load.failed) * events_per_callback;
    let commits: f64 = commits_by_kind.values().sum();
    Ok(Report {
        label: args.label.clone(),
        backend: Some(args.backend),
        provider: Some(args.provider),
        processes: relays.len(),
        subscriptions: args.subscriptions,
        concurrency: args.concurrency,
        paced_rate: args.rate,
        preloaded_messages: args.preload,
        callbacks: args.callbacks,
        events,
        load_seconds: load.seconds,
        callbacks_per_second: args.callbacks as f64 / load.seconds,
        events_per_second: events as f64 / load.seconds,
        overload_retries: load.retries,
        failed_callbacks: load.failed,
        ack: percentiles(load.acks),
        deliveries_expected: expected,
        deliveries_received: state.received.load(Ordering::Relaxed),
        deliveries_lost: expected.saturating_sub(unique),
        deliveries_duplicated: state.duplicates.load(Ordering::Relaxed),
        deliveries_per_second: if delivery_seconds > 0.0 { unique as f64 / delivery_seconds } else { 0.0 },
        delivery_seconds,
        signatures_checked: state.checked.load(Ordering::Relaxed),
        signatures_bad: state.bad.load(Ordering::Relaxed),
        end_to_end: percentiles(std::mem::take(&mut *state.latencies.lock().expect("lock"))),
        relay_peak_rss_mb: usage.iter().map(|u| u.0).fold(0.0, f64::max),
        relay_cpu_seconds: usage.iter().map(|u| u.1).sum(),
        db_write_transactions: commits,
        db_write_transactions_per_event: if events > 0 { commits / events as f64 } else { 0.0 },
        db_write_transactions_by_kind: commits_by_kind,
        ingest_batch_mean: if batch_count > 0.0 { batch_sum / batch_count } else { 0.0 },
        ingest_commit_mean_ms: if commit_count > 0.0 { commit_sum / commit_count * 1000.0 } else { 0.0 },
        queries,
    })
}

fn print_report(r: &Report, json_only: bool) {
    println!("{}", serde_json::to_string(r).unwrap_or_default());
    if json_only {
        return;
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n  {} ({:?}, {:?}, {} process(es), K={}, C={}{})",
        if r.label.is_empty() { "run" } else { &r.label },
        r.backend.unwrap_or(BackendArg::Postgres),
        r.provider.unwrap_or(ProviderArg::Mailgun),
        r.processes,
        r.subscriptions,
        r.concurrency,
        if r.paced_rate > 0.0 { format!(", paced {}/s", r.paced_rate) } else { String::new() }
    );
    let _ = writeln!(
        t,
        "  callbacks        {:>10} in {:.2} s = {:.0}/s ({} 503 retries, {} failed)",
        r.callbacks, r.load_seconds, r.callbacks_per_second, r.overload_retries, r.failed_callbacks
    );
    let _ = writeln!(t, "  events           {:>10} = {:.0}/s", r.events, r.events_per_second);
    let _ = writeln!(
        t,
        "  ack latency      p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.ack.p50_ms, r.ack.p99_ms, r.ack.max_ms
    );
    let _ = writeln!(
        t,
        "  deliveries       {}/{} in {:.2} s = {:.0}/s, lost {}, duplicated {}",
        r.deliveries_expected - r.deliveries_lost,
        r.deliveries_expected,
        r.delivery_seconds,
        r.deliveries_per_second,
        r.deliveries_lost,
        r.deliveries_duplicated
    );
    let _ = writeln!(
        t,
        "  callback→sink    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.end_to_end.p50_ms, r.end_to_end.p90_ms, r.end_to_end.p99_ms, r.end_to_end.max_ms
    );
    let _ = writeln!(t, "  signatures       {} checked, {} bad", r.signatures_checked, r.signatures_bad);
    let _ = writeln!(t, "  relay            peak RSS {:.0} MB, CPU {:.1} s", r.relay_peak_rss_mb, r.relay_cpu_seconds);
    let _ = writeln!(
        t,
        "  db writes        {:.0} transactions = {:.4} per event ({})",
        r.db_write_transactions,
        r.db_write_transactions_per_event,
        r.db_write_transactions_by_kind.iter().map(|(k, n)| format!("{k} {n:.0}")).collect::<Vec<_>>().join(", ")
    );
    for q in &r.queries {
        let _ = writeln!(t, "  GET /messages    {:<24} p50 {:.2} ms  p99 {:.2} ms", q.filter, q.p50_ms, q.p99_ms);
    }
    eprintln!("{t}");
}

/// Every configuration the README reports, in order.
async fn suite(base: RunArgs, size: f64) -> anyhow::Result<()> {
    let n = |x: usize| ((x as f64 * size).round() as usize).max(1);
    let single = RunArgs { provider: ProviderArg::Mailgun, concurrency: 64, ..base.clone() };
    let mut runs: Vec<RunArgs> = Vec::new();
    for backend in [BackendArg::Postgres, BackendArg::Sqlite] {
        let tag = if backend == BackendArg::Postgres { "pg" } else { "sqlite" };
        let b = RunArgs { backend, ..single.clone() };
        runs.push(RunArgs {
            label: format!("{tag} ingest, single events"),
            callbacks: n(60_000),
            subscriptions: 0,
            ..b.clone()
        });
        runs.push(RunArgs {
            label: format!("{tag} ingest, batches of 100"),
            provider: ProviderArg::Sendgrid,
            batch: 100,
            callbacks: n(2_000),
            concurrency: 16,
            subscriptions: 0,
            ..b.clone()
        });
        runs.push(RunArgs {
            label: format!("{tag} fan-out K=4"),
            callbacks: n(30_000),
            concurrency: 256,
            subscriptions: 4,
            ..b.clone()
        });
        runs.push(RunArgs {
            label: format!("{tag} paced 1000/s, K=4"),
            callbacks: n(20_000),
            rate: 1_000.0,
            subscriptions: 4,
            ..b.clone()
        });
    }
    let pg = RunArgs { backend: BackendArg::Postgres, subscriptions: 4, ..single.clone() };
    for factor in [1, 2, 4, 8] {
        runs.push(RunArgs {
            label: format!("pg scale {factor}x ({} /s, K=4)", 500 * factor),
            callbacks: n(5_000 * factor),
            concurrency: 256,
            rate: 500.0 * factor as f64,
            ..pg.clone()
        });
    }
    runs.push(RunArgs {
        label: "pg 2 processes, K=0".into(),
        callbacks: n(60_000),
        processes: 2,
        subscriptions: 0,
        ..pg.clone()
    });
    runs.push(RunArgs {
        label: "pg 2 processes, K=4".into(),
        callbacks: n(30_000),
        processes: 2,
        concurrency: 256,
        ..pg.clone()
    });
    runs.push(RunArgs {
        label: "pg with 1M stored, K=4".into(),
        callbacks: n(30_000),
        preload: n(1_000_000),
        queries: 200,
        ..pg.clone()
    });
    let mut reports = Vec::new();
    for args in runs {
        let report = run(&args).await.with_context(|| format!("run {}", args.label))?;
        print_report(&report, base.json);
        reports.push(report);
    }
    if !base.json {
        println!("{}", summary(&reports));
    }
    Ok(())
}

/// The suite's figures as one Markdown table.
fn summary(reports: &[Report]) -> String {
    let mut t = String::from(
        "| run | callbacks/s | events/s | deliveries/s | ack p50 / p99 ms | callback→sink p50 / p99 / max ms | lost / dup | relay RSS MB | relay CPU s | commits/event |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        let deliveries =
            if r.deliveries_expected > 0 { format!("{:.0}", r.deliveries_per_second) } else { "–".into() };
        let e2e = if r.deliveries_expected > 0 {
            format!("{:.1} / {:.1} / {:.0}", r.end_to_end.p50_ms, r.end_to_end.p99_ms, r.end_to_end.max_ms)
        } else {
            "–".into()
        };
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} | {} | {:.1} / {:.1} | {} | {} / {} | {:.0} | {:.1} | {:.4} |",
            r.label,
            r.callbacks_per_second,
            r.events_per_second,
            deliveries,
            r.ack.p50_ms,
            r.ack.p99_ms,
            e2e,
            r.deliveries_lost,
            r.deliveries_duplicated,
            r.relay_peak_rss_mb,
            r.relay_cpu_seconds,
            r.db_write_transactions_per_event
        );
    }
    for r in reports.iter().filter(|r| !r.queries.is_empty()) {
        let _ = writeln!(t, "\n| `GET /messages` ({}) | p50 ms | p99 ms |\n|---|---:|---:|", r.label);
        for q in &r.queries {
            let _ = writeln!(t, "| {} | {:.2} | {:.2} |", q.filter, q.p50_ms, q.p99_ms);
        }
    }
    t
}
