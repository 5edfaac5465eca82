//! The configuration tree: defaults, then the TOML file, then
//! `HOOKRELAY__SECTION__KEY` environment variables. Unknown keys are refused
//! and every error names the key it is about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::Secret;
use crate::domain::host::Cidr;
#[cfg(test)]
use crate::domain::secret::MASKED;

/// Environment variables under this prefix override file settings:
/// `HOOKRELAY__INGEST__BATCH_MAX_EVENTS=500` sets `ingest.batch_max_events`.
pub const ENV_PREFIX: &str = "HOOKRELAY__";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub ingest: IngestConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub delivery: DeliveryConfig,
    pub tracking: TrackingConfig,
    /// Provider accounts whose callbacks arrive at `POST /callbacks/{name}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// The URL at which providers and recipients reach hookrelay (behind a
    /// proxy this differs from `listen`); used to build tracked links and to
    /// check URL-signed callbacks. Empty means `http://<listen>`.
    pub public_url: String,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub body_limit_bytes: usize,
    /// How long shutdown waits for in-flight requests before giving up.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            public_url: String::new(),
            body_limit_bytes: 1024 * 1024,
            shutdown_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (a file, created if missing) or `postgres://...`.
    pub url: String,
    /// PostgreSQL connections in the pool; SQLite read connections.
    pub pool_size: usize,
    /// How long to wait for a connection before answering 503.
    pub connect_timeout_ms: u64,
    /// PostgreSQL: longest any statement may run (and wait for a row lock,
    /// at most half of it) before it is canceled and the request gets 503.
    pub statement_timeout_ms: u64,
    /// SQLite `synchronous` setting: `full` (a commit survives power loss)
    /// or `normal` (a commit survives a crash of hookrelay, but the last
    /// transactions may be lost on power loss).
    pub sqlite_synchronous: SqliteSync,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://hookrelay.db".into(),
            pool_size: 8,
            connect_timeout_ms: 5_000,
            statement_timeout_ms: 10_000,
            sqlite_synchronous: SqliteSync::Full,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    Full,
    Normal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Requests waiting for the batch writer; beyond this, edges answer 503.
    pub queue_capacity: usize,
    /// Most events applied in one transaction.
    pub batch_max_events: usize,
    /// How long the writer waits for more events once it has some. 0 commits
    /// whatever is waiting at once (batches still form under load, while the
    /// previous commit is in progress).
    pub batch_max_wait_ms: u64,
    /// Batches committing at once on PostgreSQL (SQLite always uses one):
    /// while one commits, the next forms and commits on another connection
    /// once a quarter of `batch_max_events` is waiting.
    pub writers: usize,
    /// `Retry-After` sent with a 503 when the queue is full or the database
    /// is unavailable.
    pub retry_after_seconds: u64,
    /// Longest a batch may take to commit; past it, its requests get 503
    /// (they were not acknowledged, so their senders retry).
    pub commit_timeout_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            queue_capacity: 10_000,
            batch_max_events: 1_000,
            batch_max_wait_ms: 0,
            writers: 2,
            retry_after_seconds: 1,
            commit_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Run the delivery worker in this process (turn off for API-only processes).
    pub enabled: bool,
    /// Attempts in flight at once in this process, across subscriptions.
    pub concurrency: usize,
    /// A subscription's in-flight limit when it sets none.
    pub default_max_in_flight: u32,
    /// Delays before attempts 2, 3, ... in seconds; attempts in all = length + 1.
    pub retry_schedule_seconds: Vec<f64>,
    /// Random spread of each delay, as a fraction (0.2 = ±20 %).
    pub jitter: f64,
    /// Longest `Retry-After` honoured (it can lengthen a delay, never shorten it).
    pub retry_after_max_seconds: u64,
    pub connect_timeout_ms: u64,
    /// Whole attempt, connect to last byte.
    pub timeout_ms: u64,
    /// How long a claimed delivery stays with this process before another
    /// may take it (must exceed `timeout_ms` comfortably).
    pub lease_seconds: u64,
    /// Safety-net poll for due work (wake-ups normally come at once).
    pub poll_interval_ms: u64,
    /// Deliveries claimed per query.
    pub claim_batch: usize,
    /// A subscription failing without a single success for this long is disabled.
    pub disable_after_failing_seconds: u64,
    /// Most messages one replay request may queue; a larger range is refused
    /// (before anything is queued) and must be replayed in parts.
    pub max_replay: usize,
    /// Destinations allowed although not globally routable (CIDRs), e.g.
    /// `["10.0.0.0/8"]` for subscribers on a private network.
    pub allow_cidrs: Vec<Cidr>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            enabled: true,
            concurrency: 256,
            default_max_in_flight: 32,
            retry_schedule_seconds: vec![5.0, 300.0, 1_800.0, 7_200.0, 18_000.0, 36_000.0, 36_000.0],
            jitter: 0.2,
            retry_after_max_seconds: 86_400,
            connect_timeout_ms: 5_000,
            timeout_ms: 15_000,
            lease_seconds: 60,
            poll_interval_ms: 1_000,
            claim_batch: 200,
            disable_after_failing_seconds: 5 * 86_400,
            max_replay: 100_000,
            allow_cidrs: Vec::new(),
        }
    }
}

/// Open and click tracking (`/t/o/{token}`, `/t/c/{token}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// Keys for tracking tokens, newest first: the first signs new tokens,
    /// every one verifies. Rotate by prepending a new key; remove an old one
    /// only when no mail carrying its links will be opened again. Empty:
    /// hookrelay generates a key on first start and keeps it in the
    /// database (key id `stored`), which keeps verifying after keys are
    /// configured here.
    pub keys: Vec<TrackingKey>,
    /// Whether machine opens and clicks (privacy proxies, prefetches, link
    /// scanners, bots, HEAD requests) move the message's status. They are
    /// recorded either way, with `machine: true`.
    pub machine_events_change_status: bool,
    /// A click this soon after its link was signed is taken for a link
    /// scanner. 0 turns the timing rule off.
    pub scanner_window_seconds: u64,
    /// Identical hits (same message, kind, link and agent class) within one
    /// window of this many seconds are recorded once.
    pub dedupe_window_seconds: u64,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig {
            keys: Vec::new(),
            machine_events_change_status: false,
            scanner_window_seconds: 10,
            dedupe_window_seconds: 60,
        }
    }
}

/// One tracking key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingKey {
    /// Carried in every token: 1 to 32 of A-Z, a-z, 0-9, - and _.
    pub id: String,
    /// At least 32 characters, random.
    pub secret: Secret,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// API keys accepted as `Authorization: Bearer <key>`. When empty and the
    /// database holds no key either, one is generated on first start and
    /// printed once.
    #[serde(deserialize_with = "list_or_comma_string")]
    pub api_keys: Vec<Secret>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter (`info`, `hookrelay=debug,info`); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Pretty, level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// One provider account (`[[sources]]`). Which credential fields apply
/// depends on the provider; a field its provider does not use is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The URL path segment: callbacks arrive at `POST /callbacks/{name}`.
    pub name: String,
    /// sendgrid, postmark, mailgun, ses, twilio, resend, mailjet, brevo,
    /// sparkpost or vonage.
    pub provider: String,
    /// The metadata key under which the provider echoes hookrelay's message id.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Oldest signed timestamp accepted, in seconds (provider default when absent).
    #[serde(default)]
    pub tolerance_seconds: Option<u64>,
    /// HTTP basic auth expected on every callback (the credentials put in the
    /// webhook URL).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// A bearer token expected in `Authorization`.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// A header that must carry `header_value`.
    #[serde(default)]
    pub header_name: Option<String>,
    #[serde(default)]
    pub header_value: Option<Secret>,
    /// SendGrid verification keys (base64 DER SubjectPublicKeyInfo); several
    /// during a key rotation.
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// The provider's shared secrets: Mailgun signing keys, Twilio auth
    /// tokens, Resend `whsec_` secrets, Vonage signature secrets. Several
    /// during a rotation.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Vonage SMS signatures: md5hash, md5, sha1, sha256 or sha512.
    #[serde(default)]
    pub signature_method: Option<String>,
    /// Amazon SNS topics whose subscriptions hookrelay confirms (and whose
    /// notifications it accepts).
    #[serde(default)]
    pub topic_arns: Vec<String>,
    /// A pinned SNS signing certificate (PEM file); when set, certificates
    /// are never fetched.
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
}

fn default_id_field() -> String {
    "hookrelay_id".into()
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            name: String::new(),
            provider: String::new(),
            id_field: default_id_field(),
            tolerance_seconds: None,
            username: None,
            password: None,
            bearer_token: None,
            header_name: None,
            header_value: None,
            public_keys: Vec::new(),
            secrets: Vec::new(),
            signature_method: None,
            topic_arns: Vec::new(),
            certificate_file: None,
        }
    }
}

impl SourceConfig {
    /// The credential fields that are set, by name.
    pub fn set_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut note = |set: bool, name: &'static str| {
            if set {
                out.push(name);
            }
        };
        note(self.tolerance_seconds.is_some(), "tolerance_seconds");
        note(self.username.is_some(), "username");
        note(self.password.is_some(), "password");
        note(self.bearer_token.is_some(), "bearer_token");
        note(self.header_name.is_some(), "header_name");
        note(self.header_value.is_some(), "header_value");
        note(!self.public_keys.is_empty(), "public_keys");
        note(!self.secrets.is_empty(), "secrets");
        note(self.signature_method.is_some(), "signature_method");
        note(!self.topic_arns.is_empty(), "topic_arns");
        note(self.certificate_file.is_some(), "certificate_file");
        out
    }
}

fn list_or_comma_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        One(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v.into_iter().map(Secret::new).collect(),
        Either::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Secret::new).collect(),
    })
}

/// Where the data lives, parsed from `database.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| format!("`{}` is neither sqlite://PATH nor postgres://...", redact_url(url)))?;
        if path.is_empty() {
            return Err("sqlite:// needs a file path".into());
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }
}

/// A database URL with any password replaced, safe to log.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &creds[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A problem with one field of a part of the configuration (a source, say),
/// kept apart from the message so that the whole key can be named
/// (`sources[1].secrets`). Several fields that go together are named
/// `a/b` (`username/password`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        FieldError { field, message: message.into() }
    }

    /// This error under the key of the part it belongs to (`sources[1]`).
    pub fn at(self, part: &str) -> ConfigError {
        ConfigError::Invalid { key: format!("{part}.{}", self.field), message: self.message }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("invalid configuration at `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.to_owned(), message: message.into() }
    }
}

impl Config {
    /// Loads the configuration from an optional file and the process
    /// environment, then validates it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(path, std::env::vars())
    }

    /// Like [`Config::load`] with the environment given explicitly (tests).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Toml { path: path.to_owned(), message: e.to_string() })?
            }
            None => toml::Table::new(),
        };
        let mut env: Vec<_> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        env.sort();
        for (name, value) in env {
            overlay_env(&mut table, &name, &value)?;
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "(top level)".to_owned() } else { key };
            ConfigError::Invalid { key, message: e.into_inner().to_string() }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::invalid("server.listen", format!("`{}`: {e}", self.server.listen)))?;
        let public = &self.server.public_url;
        if !(public.is_empty() || public_scheme(public).is_some()) {
            return Err(ConfigError::invalid("server.public_url", "must start with http:// or https://"));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(ConfigError::invalid("server.body_limit_bytes", "must be at least 1024"));
        }
        DatabaseUrl::parse(&self.database.url).map_err(|m| ConfigError::invalid("database.url", m))?;
        if self.database.pool_size == 0 {
            return Err(ConfigError::invalid("database.pool_size", "must be at least 1"));
        }
        if self.ingest.queue_capacity == 0 {
            return Err(ConfigError::invalid("ingest.queue_capacity", "must be at least 1"));
        }
        if self.ingest.batch_max_events == 0 {
            return Err(ConfigError::invalid("ingest.batch_max_events", "must be at least 1"));
        }
        if self.ingest.commit_timeout_ms < 100 {
            return Err(ConfigError::invalid("ingest.commit_timeout_ms", "must be at least 100"));
        }
        if self.database.statement_timeout_ms < 100 {
            return Err(ConfigError::invalid("database.statement_timeout_ms", "must be at least 100"));
        }
        if !(1..=16).contains(&self.ingest.writers) {
            return Err(ConfigError::invalid("ingest.writers", "must be from 1 to 16"));
        }
        if self.ingest.writers >= self.database.pool_size {
            return Err(ConfigError::invalid(
                "ingest.writers",
                "must be below database.pool_size: the API and the delivery worker need connections too",
            ));
        }
        if self.ingest.batch_max_wait_ms > 1_000 {
            return Err(ConfigError::invalid("ingest.batch_max_wait_ms", "must be at most 1000"));
        }
        if let Some((i, _)) = self.auth.api_keys.iter().enumerate().find(|(_, k)| k.expose().len() < 16) {
            return Err(ConfigError::invalid(
                &format!("auth.api_keys[{i}]"),
                "an API key must be at least 16 characters",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;
        let d = &self.delivery;
        if d.concurrency == 0 {
            return Err(ConfigError::invalid("delivery.concurrency", "must be at least 1"));
        }
        if !(1..=10_000).contains(&d.default_max_in_flight) {
            return Err(ConfigError::invalid("delivery.default_max_in_flight", "must be from 1 to 10000"));
        }
        if let Some(i) =
            d.retry_schedule_seconds.iter().position(|s| !s.is_finite() || *s < 0.0 || *s > 30.0 * 86_400.0)
        {
            return Err(ConfigError::invalid(
                &format!("delivery.retry_schedule_seconds[{i}]"),
                "delays are seconds from 0 to 30 days",
            ));
        }
        if !(0.0..=0.5).contains(&d.jitter) {
            return Err(ConfigError::invalid("delivery.jitter", "must be from 0 to 0.5"));
        }
        if d.timeout_ms < 100 || d.connect_timeout_ms < 100 {
            return Err(ConfigError::invalid("delivery.timeout_ms", "timeouts must be at least 100 ms"));
        }
        if d.lease_seconds.saturating_mul(1000) < d.timeout_ms.saturating_mul(2).saturating_add(5_000) {
            return Err(ConfigError::invalid(
                "delivery.lease_seconds",
                "must be at least twice delivery.timeout_ms plus 5 seconds: an attempt only starts with a whole \
                 timeout and a margin of lease left, and claimed work may wait its turn",
            ));
        }
        if d.claim_batch == 0 || d.poll_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "delivery.claim_batch",
                "claim_batch and poll_interval_ms must be positive",
            ));
        }
        self.validate_tracking()?;
        Ok(())
    }

    fn validate_tracking(&self) -> Result<(), ConfigError> {
        let t = &self.tracking;
        if t.scanner_window_seconds > 3_600 {
            return Err(ConfigError::invalid("tracking.scanner_window_seconds", "must be at most 3600"));
        }
        if !(1..=86_400).contains(&t.dedupe_window_seconds) {
            return Err(ConfigError::invalid("tracking.dedupe_window_seconds", "must be from 1 to 86400"));
        }
        Ok(())
    }

    /// The configuration in force as TOML, every secret masked (API keys,
    /// tracking keys, source credentials, the database password).
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }

    pub fn database_url(&self) -> DatabaseUrl {
        // Validated at load; the fallback is unreachable in practice.
        DatabaseUrl::parse(&self.database.url).unwrap_or(DatabaseUrl::Sqlite("hookrelay.db".into()))
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// The public base URL without a trailing slash, its scheme in lower
    /// case (schemes are case-insensitive; `HTTPS://` is accepted).
    pub fn public_url(&self, bound: SocketAddr) -> String {
        let public = self.server.public_url.trim_end_matches('/');
        match public_scheme(public) {
            Some(scheme) => format!("{scheme}{}", &public[scheme.len()..]),
            None => format!("http://{bound}"),
        }
    }
}

/// `http://` or `https://` when `url` starts with either, in any case.
fn public_scheme(url: &str) -> Option<&'static str> {
    ["https://", "http://"].into_iter().find(|scheme| {
        url.get(..scheme.len()).is_some_and(|s| s.eq_ignore_ascii_case(scheme)) && url.len() > scheme.len()
    })
}

/// Sets the key named by one `HOOKRELAY__A__B` variable in `table`.
fn overlay_env(table: &mut toml::Table, name: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::invalid(name, "malformed variable name (empty segment)"));
    }
    let mut node = table;
    for segment in &path[..path.len() - 1] {
        let entry = node.entry(segment.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(ConfigError::invalid(&path.join("."), format!("{name} sets a key inside a value"))),
        };
    }
    let key = path[path.len() - 1].clone();
    node.insert(key, env_value(value));
    Ok(())
}

/// Reads an environment value as a TOML value where it looks like one
/// (numbers, booleans, arrays), as a plain string otherwise.
fn env_value(value: &str) -> toml::Value {
    let looks_typed = value == "true"
        || value == "false"
        || value.starts_with('[')
        || (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b'_' || b == b'.' || b == b'-'));
    if looks_typed
        && let Ok(mut t) = format!("v = {value}").parse::<toml::Table>()
        && let Some(v) = t.remove("v")
    {
        return v;
    }
    toml::Value::String(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn defaults_need_nothing() {
        let config = Config::load_from(None, env(&[])).expect("defaults are valid");
        assert_eq!(config, Config::default());
        assert_eq!(config.database_url(), DatabaseUrl::Sqlite("hookrelay.db".into()));
        assert_eq!(config.listen_addr().to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn env_overrides_file() {
        let f = file("[ingest]\nbatch_max_events = 10\nqueue_capacity = 5\n");
        let config = Config::load_from(
            Some(f.path()),
            env(&[
                ("HOOKRELAY__INGEST__BATCH_MAX_EVENTS", "20"),
                ("HOOKRELAY__DATABASE__URL", "postgres://u:p@h/db"),
                ("HOOKRELAY__AUTH__API_KEYS", "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb"),
                ("OTHER", "ignored"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.ingest.batch_max_events, 20);
        assert_eq!(config.ingest.queue_capacity, 5);
        assert_eq!(config.database_url(), DatabaseUrl::Postgres("postgres://u:p@h/db".into()));
        assert_eq!(config.auth.api_keys.len(), 2);
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = file("[ingest]\nbatch_max_event = 10\n");
        let err = Config::load_from(Some(f.path()), env(&[])).expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("batch_max_event"), "{text}");
        assert!(text.contains("ingest"), "{text}");

        let err = Config::load_from(None, env(&[("HOOKRELAY__NOPE__X", "1")])).expect_err("unknown section");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err =
            Config::load_from(None, env(&[("HOOKRELAY__INGEST__BATCH_MAX_EVENTS", "lots")])).expect_err("not a number");
        assert!(err.to_string().contains("ingest.batch_max_events"), "{err}");

        let err = Config::load_from(None, env(&[("HOOKRELAY__SERVER__LISTEN", "nowhere")])).expect_err("bad addr");
        assert!(err.to_string().contains("server.listen"), "{err}");

        let err = Config::load_from(None, env(&[("HOOKRELAY__DATABASE__URL", "mysql://x")])).expect_err("bad url");
        assert!(err.to_string().contains("database.url"), "{err}");

        let err = Config::load_from(None, env(&[("HOOKRELAY__AUTH__API_KEYS", "short")])).expect_err("short key");
        assert!(err.to_string().contains("auth.api_keys[0]"), "{err}");

        // A lease must outlast an attempt started at its end, with a margin.
        let short_lease = [("HOOKRELAY__DELIVERY__TIMEOUT_MS", "30000"), ("HOOKRELAY__DELIVERY__LEASE_SECONDS", "60")];
        let err = Config::load_from(None, env(&short_lease)).expect_err("lease too short");
        assert!(err.to_string().contains("delivery.lease_seconds"), "{err}");
        let lease = [("HOOKRELAY__DELIVERY__TIMEOUT_MS", "30000"), ("HOOKRELAY__DELIVERY__LEASE_SECONDS", "65")];
        assert!(Config::load_from(None, env(&lease)).is_ok());
    }

    #[test]
    fn tracking_windows_are_checked_by_name() {
        for (text, key) in [
            ("[tracking]\nkeys = [{ id = \"k1\" }]\n", "tracking.keys[0]"),
            ("[tracking]\ndedupe_window_seconds = 0\n", "tracking.dedupe_window_seconds"),
            ("[tracking]\nscanner_window_seconds = 99999\n", "tracking.scanner_window_seconds"),
        ] {
            let err = Config::load_from(Some(file(text).path()), env(&[])).expect_err(text);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        // From the environment, as a TOML array.
        let config = Config::load_from(
            None,
            env(&[("HOOKRELAY__TRACKING__KEYS", "[{id=\"env\",secret=\"0123456789abcdef0123456789abcdef\"}]")]),
        )
        .expect("valid");
        assert_eq!(config.tracking.keys[0].id, "env");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2hunter2hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(redact_url("postgres://user:pw@host/db"), "postgres://user:***@host/db");
        assert_eq!(redact_url("postgres://host/db"), "postgres://host/db");
    }

    #[test]
    fn public_url_schemes_are_case_insensitive() {
        let bound = SocketAddr::from(([127, 0, 0, 1], 9000));
        for (given, public) in [
            ("HTTPS://Relay.example.com/", "https://Relay.example.com"),
            ("Http://relay.example.com/base", "http://relay.example.com/base"),
            ("", "http://127.0.0.1:9000"),
        ] {
            let config = Config::load_from(None, env(&[("HOOKRELAY__SERVER__PUBLIC_URL", given)])).expect(given);
            assert_eq!(config.public_url(bound), public);
        }
        for bad in ["ftp://relay.example.com", "relay.example.com", "https://"] {
            let err = Config::load_from(None, env(&[("HOOKRELAY__SERVER__PUBLIC_URL", bad)])).expect_err(bad);
            assert!(err.to_string().contains("server.public_url"), "{err}");
        }
    }

    #[test]
    fn the_printed_configuration_hides_every_secret() {
        let secrets = [
            "db-password-123",
            "api-key-0123456789abcdef",
            "tracking-secret-0123456789abcdef0123456789",
            "basic-password-xyz",
            "mailgun-signing-key-abc",
        ];
        let text = format!(
            "[database]\nurl = \"postgres://hookrelay:{}@db.internal:5432/relay\"\n\
             [auth]\napi_keys = [\"{}\"]\n\
             [tracking]\nkeys = [{{ id = \"k1\", secret = \"{}\" }}]\n\
             [[sources]]\nname = \"pm\"\nprovider = \"postmark\"\nusername = \"hooks\"\npassword = \"{}\"\n\
             [[sources]]\nname = \"mg\"\nprovider = \"mailgun\"\nsecrets = [\"{}\"]\n",
            secrets[0], secrets[1], secrets[2], secrets[3], secrets[4]
        );
        let config = Config::load_from(Some(file(&text).path()), env(&[])).expect("valid");
        let printed = config.to_masked_toml();
        for secret in secrets {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        assert!(printed.contains("postgres://hookrelay:***@db.internal:5432/relay"), "{printed}");
        assert!(printed.contains(MASKED) && printed.contains("username = \"hooks\""), "{printed}");
        // It is TOML of the same shape (secrets aside).
        let table: toml::Table = printed.parse().expect("TOML");
        assert_eq!(table["sources"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn sqlite_urls() {
        assert_eq!(DatabaseUrl::parse("sqlite:///tmp/x.db"), Ok(DatabaseUrl::Sqlite("/tmp/x.db".into())));
        assert_eq!(DatabaseUrl::parse("sqlite:x.db"), Ok(DatabaseUrl::Sqlite("x.db".into())));
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// Every key path in a TOML table, as `section.key`.
    fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in table {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(t) => keys(t, &path, out),
                _ => out.push(path),
            }
        }
    }

    #[test]
    fn the_example_documents_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let config = Config::load_from(Some(&path), Vec::new()).expect("config.example.toml is valid");
        assert_eq!(config, Config::default(), "the example shows the defaults");

        let text = std::fs::read_to_string(&path).expect("read");
        let example: toml::Table = text.parse().expect("toml");
        let mut defaults = toml::Table::try_from(Config::default()).expect("serialize defaults");
        // Sources have no defaults; they are documented in comments below.
        defaults.remove("sources");
        let (mut documented, mut all) = (Vec::new(), Vec::new());
        keys(&example, "", &mut documented);
        keys(&defaults, "", &mut all);
        documented.sort();
        all.sort();
        assert_eq!(documented, all, "config.example.toml must list every key");
        for key in &all {
            let name = key.rsplit('.').next().unwrap_or(key);
            let line = text.lines().position(|l| l.starts_with(&format!("{name} ="))).expect("key line");
            assert!(
                text.lines().nth(line.saturating_sub(1)).is_some_and(|l| l.starts_with('#')),
                "{key} needs a comment above it"
            );
        }
        let every_field = SourceConfig {
            tolerance_seconds: Some(1),
            username: Some("x".into()),
            password: Some(Secret::new("x")),
            bearer_token: Some(Secret::new("x")),
            header_name: Some("x".into()),
            header_value: Some(Secret::new("x")),
            signature_method: Some("x".into()),
            certificate_file: Some("x".into()),
            ..SourceConfig::default()
        };
        let source = toml::Table::try_from(every_field).expect("serialize a source");
        assert_eq!(source.len(), 14, "every field of SourceConfig is serialized");
        for field in source.keys() {
            assert!(text.contains(&format!("#   {field} ")), "source field {field} is not documented");
        }
    }
}
