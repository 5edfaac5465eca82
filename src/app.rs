//! The application: builds every part from the configuration, serves until
//! told to stop, then shuts down in order (stop accepting, finish in-flight
//! requests, commit what is queued).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::{Config, ConfigError, redact_url};
use crate::delivery::dispatcher::Dispatcher;
use crate::delivery::ssrf::AddressPolicy;
use crate::domain::{ApiKeyRecord, Scopes};
use crate::http::auth::{ApiKeys, generate_key, new_key};
use crate::http::callbacks::{Callbacks, SnsClient, SnsHttp};
use crate::http::{self, AppState};
use crate::ingest::{BatchWriter, Ingest};
use crate::store::{self, Store};
use crate::telemetry;

/// What [`check`] builds from a configuration that holds together.
#[derive(Debug)]
pub struct Checked {
    pub sources: Vec<crate::providers::Source>,
}

/// Checks what [`Config::load`] cannot alone: each source's credentials
/// (through its provider) and the configured tracking keys. `serve` and
/// `check-config` both run it, so a configuration that checks is one that
/// starts.
pub fn check(config: &Config) -> Result<Checked, ConfigError> {
    let sources = crate::providers::sources(&config.sources)?;
    crate::tracking::check_keys(&config.tracking.keys)?;
    Ok(Checked { sources })
}

/// Outside services [`Application::build_with`] can be given instead of
/// the real ones (tests use it to stand in for Amazon SNS).
#[derive(Debug, Default)]
pub struct Services {
    pub sns: Option<Arc<dyn SnsClient>>,
}

/// A built, bound, not yet running hookrelay.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    writer: BatchWriter,
    dispatcher: Dispatcher,
    generated_api_key: Option<String>,
    stored_api_keys: usize,
    config: Config,
}

impl Application {
    /// Opens and migrates the database, binds the listener (port 0 picks a
    /// free port) and, last, makes sure an API key exists: a key generated
    /// here is only stored once nothing else can fail, so the caller always
    /// gets to show it.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with(config, Services::default()).await
    }

    /// [`Application::build`] with some outside services replaced.
    pub async fn build_with(config: Config, services: Services) -> anyhow::Result<Application> {
        crate::net::install_crypto_provider();
        let store = store::open(&config.database)
            .await
            .with_context(|| format!("cannot open the database at {}", redact_url(&config.database.url)))?;
        let Checked { sources } = check(&config)?;
        let sns: Arc<dyn SnsClient> = match services.sns {
            Some(sns) => sns,
            None => Arc::new(SnsHttp::new().context("cannot build the HTTP client for Amazon SNS")?),
        };
        let (ingest, mut writer) = Ingest::new(store.clone(), &config.ingest);
        let (dispatcher, handoff, delivery) = Dispatcher::new(store.clone(), &config.delivery);
        if config.delivery.enabled {
            writer = writer.with_handoff(handoff);
        }
        let address_policy = AddressPolicy::new(&config.delivery.allow_cidrs);
        let listener = TcpListener::bind(config.listen_addr())
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        let tracking_config = tracking_keys(&config, &store).await?;
        let tracking = crate::tracking::Tracking::from_config(&tracking_config, config.public_url(addr))
            .map_err(|e| anyhow::anyhow!("tracking.keys: {e}"))?;
        if config.server.public_url.is_empty() {
            // Fine on a developer's machine; never right on 0.0.0.0.
            if addr.ip().is_loopback() {
                tracing::info!(%addr, "server.public_url is not set: tracked links point at this address");
            } else {
                tracing::warn!(%addr, "server.public_url is not set: tracked links point at this address");
            }
        }
        let keys = Arc::new(ApiKeys::load(&config.auth.api_keys, store.clone()).await);
        let (generated_api_key, stored_api_keys) = ensure_api_key(&config, &store).await?;
        if generated_api_key.is_some() {
            keys.reload().await;
        }
        let state = Arc::new(AppState {
            store,
            ingest,
            keys,
            metrics: telemetry::metrics_handle(),
            retry_after: config.ingest.retry_after_seconds,
            callbacks: Callbacks::new(sources, config.public_url(addr), sns),
            delivery,
            address_policy,
            tracking,
            max_replay: config.delivery.max_replay,
        });
        Ok(Application { listener, addr, state, writer, dispatcher, generated_api_key, stored_api_keys, config })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API key generated on this start, if one was (first start with no
    /// key configured). It is not stored anywhere in clear.
    pub fn generated_api_key(&self) -> Option<&str> {
        self.generated_api_key.as_deref()
    }

    /// How many API keys the database holds, when the configuration gives
    /// none and none was generated on this start (0 otherwise): the keys
    /// are somewhere, and whoever lost theirs needs to know how to get one.
    pub fn stored_api_keys(&self) -> usize {
        self.stored_api_keys
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// Serves until `shutdown` fires, then stops accepting, lets in-flight
    /// requests finish (within `server.shutdown_grace_ms`), commits whatever
    /// is queued, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application { listener, state, writer, dispatcher, config, addr, .. } = self;
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(writer.run(writer_stop.clone()));
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        let delivery_stop = CancellationToken::new();
        let delivery = config.delivery.enabled.then(|| tokio::spawn(dispatcher.run(delivery_stop.clone(), grace)));
        let keys_stop = CancellationToken::new();
        let keys = tokio::spawn(state.keys.clone().run(keys_stop.clone()));
        let maintenance = tokio::spawn(maintain(state.store.clone(), keys_stop.clone()));
        let router = http::router(state, config.server.body_limit_bytes);
        let server = axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let mut server = tokio::spawn(async move { server.await });
        tracing::info!(%addr, database = %redact_url(&config.database.url), "hookrelay is serving");

        let served = tokio::select! {
            result = &mut server => result,
            () = shutdown.cancelled() => {
                tracing::info!("shutting down: no new connections; finishing in-flight requests");
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(grace_ms = config.server.shutdown_grace_ms, "in-flight requests did not finish in time");
                        server.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        // Every request that reached the queue gets its answer: the writer
        // commits what is left before it stops.
        writer_stop.cancel();
        let drain = Duration::from_millis(config.server.shutdown_grace_ms.max(config.ingest.commit_timeout_ms));
        match tokio::time::timeout(drain, writer).await {
            Ok(result) => result.context("the ingest writer failed")?,
            Err(_) => {
                tracing::warn!("the ingest writer did not drain in time; unanswered requests were not acknowledged")
            }
        }
        // Then the deliveries: attempts in flight finish (within the grace
        // period), the rest is released for another process or the next start.
        delivery_stop.cancel();
        if let Some(delivery) = delivery {
            delivery.await.context("the delivery worker failed")?;
        }
        keys_stop.cancel();
        let _ = keys.await;
        let _ = maintenance.await;
        tracing::info!("hookrelay stopped");
        served.context("the HTTP server task failed")?.context("the HTTP server failed")
    }
}

/// How often the maintenance task runs.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// Until `stop`: forgets single-use callback tokens once their signatures
/// would be refused as stale anyway (every process does it; deleting what
/// another process deleted is harmless).
async fn maintain(store: Arc<dyn Store>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(MAINTENANCE_EVERY) => {}
        }
        match store.purge_callback_tokens(now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(tokens = n, "forgot expired callback tokens"),
            Err(e) => tracing::warn!(error = %e, "cannot purge expired callback tokens"),
        }
    }
}

/// The setting holding the tracking key generated on first start.
const TRACKING_KEY_SETTING: &str = "tracking_key";
/// The id tokens signed with that key carry.
const STORED_TRACKING_KEY_ID: &str = "stored";

/// The tracking keys to use. With none configured, a key is generated on
/// first start and kept in the database, so tracked links work with no
/// set-up and survive restarts; once keys are configured, a stored key
/// still verifies, so links already sent keep working.
async fn tracking_keys(config: &Config, store: &Arc<dyn Store>) -> anyhow::Result<crate::config::TrackingConfig> {
    let mut tracking = config.tracking.clone();
    if tracking.keys.is_empty() {
        let candidate = generate_key().map_err(|e| anyhow::anyhow!("no entropy for a tracking key: {e}"))?;
        let secret = store.setting_or_init(TRACKING_KEY_SETTING, &candidate, now_ms()).await?;
        tracking.keys.push(crate::config::TrackingKey {
            id: STORED_TRACKING_KEY_ID.into(),
            secret: crate::domain::Secret::new(secret),
        });
    } else if let Some(secret) = store.setting(TRACKING_KEY_SETTING).await?
        && !tracking.keys.iter().any(|k| k.id == STORED_TRACKING_KEY_ID)
    {
        tracking.keys.push(crate::config::TrackingKey {
            id: STORED_TRACKING_KEY_ID.into(),
            secret: crate::domain::Secret::new(secret),
        });
    }
    Ok(tracking)
}

/// Generates, stores (hashed) and returns an admin API key when none
/// exists; otherwise counts the stored keys when none is configured.
async fn ensure_api_key(config: &Config, store: &Arc<dyn Store>) -> anyhow::Result<(Option<String>, usize)> {
    if !config.auth.api_keys.is_empty() {
        return Ok((None, 0));
    }
    let stored = store.api_keys().await?.len();
    if stored > 0 {
        return Ok((None, stored));
    }
    let (key, record) = new_key("generated on first start", Scopes::ADMIN, now_ms())
        .map_err(|e| anyhow::anyhow!("no entropy for an API key: {e}"))?;
    store.insert_api_key(&record).await?;
    tracing::info!(api_key.id = %record.id, "no API key was configured; generated one (printed once on stdout)");
    Ok((Some(key), 0))
}

/// Creates and stores a new API key (`hookrelay api-key create`); returns
/// the key, shown once, and its record.
pub async fn create_api_key(config: &Config, name: &str, scopes: Scopes) -> anyhow::Result<(String, ApiKeyRecord)> {
    let store = store::open(&config.database).await.context("cannot open the database")?;
    let (key, record) =
        new_key(name, scopes, now_ms()).map_err(|e| anyhow::anyhow!("no entropy for an API key: {e}"))?;
    store.insert_api_key(&record).await?;
    Ok((key, record))
}

/// The API keys stored in the database (`hookrelay api-key list`).
pub async fn list_api_keys(config: &Config) -> anyhow::Result<Vec<ApiKeyRecord>> {
    let store = store::open(&config.database).await.context("cannot open the database")?;
    Ok(store.api_keys().await?)
}

/// Revokes the stored key named by its id or its prefix (`hookrelay
/// api-key revoke`); a prefix must name exactly one key.
pub async fn revoke_api_key(config: &Config, id_or_prefix: &str) -> anyhow::Result<ApiKeyRecord> {
    let store = store::open(&config.database).await.context("cannot open the database")?;
    let keys = store.api_keys().await?;
    let matching: Vec<&ApiKeyRecord> =
        keys.iter().filter(|k| k.id.as_str() == id_or_prefix || k.prefix.as_deref() == Some(id_or_prefix)).collect();
    let key = match matching.as_slice() {
        [key] => (*key).clone(),
        [] => anyhow::bail!("no stored API key has the id or prefix `{id_or_prefix}` (see `hookrelay api-key list`)"),
        _ => anyhow::bail!("several keys have the prefix `{id_or_prefix}`; give the key's id"),
    };
    if !store.revoke_api_key(&key.id).await? {
        anyhow::bail!("the key was revoked meanwhile");
    }
    Ok(key)
}
