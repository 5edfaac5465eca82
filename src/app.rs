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
use crate::config::{Config, redact_url};
use crate::delivery::dispatcher::Dispatcher;
use crate::delivery::ssrf::AddressPolicy;
use crate::http::auth::{ApiKeys, generate_key, hash_key};
use crate::http::callbacks::Callbacks;
use crate::http::{self, AppState};
use crate::ingest::{BatchWriter, Ingest};
use crate::store::{self, Store};
use crate::telemetry;

/// A built, bound, not yet running hookrelay.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    writer: BatchWriter,
    dispatcher: Dispatcher,
    generated_api_key: Option<String>,
    config: Config,
}

impl Application {
    /// Opens and migrates the database, makes sure an API key exists and
    /// binds the listener (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        crate::net::install_crypto_provider();
        let store = store::open(&config.database)
            .await
            .with_context(|| format!("cannot open the database at {}", redact_url(&config.database.url)))?;
        let generated_api_key = ensure_api_key(&config, &store).await?;
        let keys = ApiKeys::load(&config.auth.api_keys, store.clone()).await;
        let sources = config.sources()?;
        let (ingest, mut writer) = Ingest::new(store.clone(), &config.ingest);
        let (dispatcher, handoff, delivery) =
            Dispatcher::new(store.clone(), &config.delivery).map_err(|e| anyhow::anyhow!("delivery: {e}"))?;
        if config.delivery.enabled {
            writer = writer.with_handoff(handoff);
        }
        let address_policy = AddressPolicy::new(&config.delivery.allow_cidrs).map_err(|e| anyhow::anyhow!(e))?;
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
        let state = Arc::new(AppState {
            store,
            ingest,
            keys,
            metrics: telemetry::metrics_handle(),
            retry_after: config.ingest.retry_after_seconds,
            callbacks: Callbacks::new(sources, config.public_url(addr)),
            delivery,
            address_policy,
            tracking,
            max_replay: config.delivery.max_replay,
        });
        Ok(Application { listener, addr, state, writer, dispatcher, generated_api_key, config })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API key generated on this start, if one was (first start with no
    /// key configured). It is not stored anywhere in clear.
    pub fn generated_api_key(&self) -> Option<&str> {
        self.generated_api_key.as_deref()
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
        tracing::info!("hookrelay stopped");
        served.context("the HTTP server task failed")?.context("the HTTP server failed")
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
            secret: crate::config::Secret::new(secret),
        });
    } else if let Some(secret) = store.setting(TRACKING_KEY_SETTING).await?
        && !tracking.keys.iter().any(|k| k.id == STORED_TRACKING_KEY_ID)
    {
        tracking.keys.push(crate::config::TrackingKey {
            id: STORED_TRACKING_KEY_ID.into(),
            secret: crate::config::Secret::new(secret),
        });
    }
    Ok(tracking)
}

/// Generates, stores (hashed) and returns an API key when none exists.
async fn ensure_api_key(config: &Config, store: &Arc<dyn Store>) -> anyhow::Result<Option<String>> {
    if !config.auth.api_keys.is_empty() || !store.api_key_hashes().await?.is_empty() {
        return Ok(None);
    }
    let key = generate_key().map_err(|e| anyhow::anyhow!("no entropy for an API key: {e}"))?;
    store.insert_api_key(&hash_key(&key), "generated on first start", now_ms()).await?;
    tracing::info!("no API key was configured; generated one (printed once on stdout)");
    Ok(Some(key))
}

/// Creates and stores a new API key (the `api-key create` command).
pub async fn create_api_key(config: &Config, label: &str) -> anyhow::Result<String> {
    let store = store::open(&config.database).await.context("cannot open the database")?;
    let key = generate_key().map_err(|e| anyhow::anyhow!("no entropy for an API key: {e}"))?;
    store.insert_api_key(&hash_key(&key), label, now_ms()).await?;
    Ok(key)
}
