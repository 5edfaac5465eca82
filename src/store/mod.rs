//! Persistence. One [`Store`] interface, two implementations: PostgreSQL
//! (`postgres`) and an embedded SQLite file (`sqlite`), kept in step by one
//! shared test suite and by sharing everything that is not SQL dialect: the
//! batch planner ([`crate::plan`]), the list queries ([`query`]) and the row
//! codec ([`codec`]). Migrations live beside each implementation.

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{DatabaseConfig, DatabaseUrl};
use crate::domain::outbox::{AttemptRecord, DeliveryRow, DeliveryState, Health, Job, Lease, Recorded};
use crate::domain::subscription::Subscription;
use crate::domain::{ApiKeyId, ApiKeyRecord, DeliveryId, MessageId, MessageRecord, SubscriptionId};
use crate::plan::{Command, Outcome};

pub mod codec;
pub mod postgres;
pub mod query;
pub mod sqlite;

pub use crate::domain::event::HistoryEntry;
pub use query::{DeliveryQuery, MessageQuery};

/// Which implementation a store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (down, pool exhausted, timed out).
    /// Edges answer 503 so that callers retry.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A transaction lost a race with another writer (unique violation,
    /// deadlock, serialization failure); retrying it will succeed.
    #[error("write conflict: {0}")]
    Conflict(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: a bug or data the database refused.
    #[error("database error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn other(message: impl Into<String>) -> Self {
        StoreError::Other(message.into().into())
    }
}

/// This process's delivery worker, as the batch writer sees it. A new
/// outbox row is inserted leased to the worker when the worker admits it
/// (its subscription has room), so that a first attempt needs no separate
/// claim, and handed over once committed; the rest is inserted unleased,
/// and any process claims it later.
pub trait Handoff: std::fmt::Debug + Send + Sync {
    /// Which new deliveries (given by subscription, in order) the worker
    /// takes, leased from `now`.
    fn admit(&self, subscriptions: &[&SubscriptionId], now: i64) -> Admitted;

    /// Deliveries committed under `admitted`, to attempt now.
    fn take(&self, admitted: Admitted, jobs: Vec<Job>);
}

/// What the worker took of a batch's new deliveries. Dropped without being
/// handed to [`Handoff::take`] (the batch failed or timed out), it gives
/// the room it took back.
pub struct Admitted {
    lease: Option<Lease>,
    taken: Vec<bool>,
    give_back: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Admitted {
    /// Deliveries `taken` (by position) under `lease`; `give_back` undoes
    /// the admission unless [`Admitted::keep`] is called.
    pub fn new(lease: Lease, taken: Vec<bool>, give_back: impl FnOnce() + Send + Sync + 'static) -> Self {
        Admitted { lease: Some(lease), taken, give_back: Some(Box::new(give_back)) }
    }

    /// Nothing taken: every delivery goes to the outbox unleased.
    pub fn nothing() -> Self {
        Admitted { lease: None, taken: Vec::new(), give_back: None }
    }

    /// Every delivery taken under `lease` (a caller outside the worker).
    pub fn all(lease: Lease, n: usize) -> Self {
        Admitted { lease: Some(lease), taken: vec![true; n], give_back: None }
    }

    /// The lease the `i`th new delivery is inserted under.
    pub fn lease_of(&self, i: usize) -> Option<&Lease> {
        self.lease.as_ref().filter(|_| self.taken.get(i).copied().unwrap_or(false))
    }

    /// Whether no worker here takes anything (none runs, or it is
    /// shutting down): then other processes are told about the new
    /// deliveries at once. Deliveries a worker here left unleased for want
    /// of budget are its to claim when there is room, and other processes
    /// find them on their next poll.
    pub fn no_worker(&self) -> bool {
        self.lease.is_none()
    }

    /// The committed admission stands: nothing is given back.
    pub fn keep(mut self) {
        self.give_back = None;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(give_back) = self.give_back.take() {
            give_back();
        }
    }
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let taken = self.taken.iter().filter(|t| **t).count();
        f.debug_struct("Admitted").field("lease", &self.lease).field("taken", &taken).finish_non_exhaustive()
    }
}

/// What a committed batch produced.
#[derive(Debug)]
pub struct BatchResult {
    /// One per command, in order.
    pub outcomes: Vec<Outcome>,
    /// Deliveries inserted leased to the caller's worker, to be attempted
    /// without a separate claim.
    pub handoff: Vec<Job>,
    /// The admission they were inserted under, for [`Handoff::take`].
    pub admitted: Admitted,
}

/// A claim for due deliveries.
#[derive(Debug, Clone)]
pub struct Claim {
    pub lease: Lease,
    pub now: i64,
    /// Most first attempts to claim.
    pub first: usize,
    /// Most retries to claim (a separate lane, so neither starves the other).
    pub retries: usize,
    /// Subscriptions whose work this process cannot take now (saturated).
    pub exclude: Vec<SubscriptionId>,
}

/// A subscription whose health changed after a batch of attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct Disabled {
    pub subscription_id: SubscriptionId,
    pub reason: String,
}

/// A delivery as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySummary {
    pub id: DeliveryId,
    pub subscription_id: SubscriptionId,
    pub message_id: MessageId,
    pub seq: i64,
    pub kind: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    /// Whether an attempt may be running now (leased and not expired).
    pub leased_until: Option<i64>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// How a manual retry went.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryResult {
    NotFound,
    /// An attempt is running now; retry after it ends.
    InFlight,
    Queued(Box<DeliverySummary>),
}

/// The outbox at a glance, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    pub pending: i64,
    /// The earliest `next_attempt_at` among pending deliveries.
    pub oldest_due: Option<i64>,
    /// Per subscription with pending deliveries: how many, and when the
    /// oldest of them was created.
    pub by_subscription: Vec<(SubscriptionId, i64, i64)>,
}

/// The storage interface every part of hookrelay uses.
#[async_trait]
pub trait Store: std::fmt::Debug + Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Brings the schema up to date. Safe to run from several processes.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Applies one batch of ingest commands in ONE transaction: dedupe,
    /// transitions, history and outbox rows. Returns one outcome per command,
    /// only after the commit. With a hand-off, the new deliveries it admits
    /// are inserted leased to its worker and returned for immediate attempts.
    async fn apply_batch(
        &self,
        commands: Arc<[Command]>,
        now: i64,
        handoff: Option<Arc<dyn Handoff>>,
    ) -> Result<BatchResult, StoreError>;

    async fn get_message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError>;

    /// Up to `query.limit + 1` messages.
    async fn list_messages(&self, query: &MessageQuery) -> Result<Vec<MessageRecord>, StoreError>;

    /// How many messages match `query` (its position and limit ignored),
    /// counting no further than `cap + 1`.
    async fn count_messages(&self, query: &MessageQuery, cap: usize) -> Result<usize, StoreError>;

    /// The history of a message in order, `None` when the message is unknown.
    async fn history(&self, id: &MessageId, kind: Option<&str>) -> Result<Option<Vec<HistoryEntry>>, StoreError>;

    /// The API keys stored in the database (hashes, never keys), oldest first.
    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// Deletes a stored key; false when there is none with this id.
    async fn revoke_api_key(&self, id: &ApiKeyId) -> Result<bool, StoreError>;

    /// Records when keys were last used (a batch gathered in memory, so
    /// that authenticating a request never writes).
    async fn touch_api_keys(&self, used: &[(ApiKeyId, i64)]) -> Result<(), StoreError>;

    /// Deletes callback tokens whose signatures can no longer be accepted;
    /// returns how many went.
    async fn purge_callback_tokens(&self, now: i64) -> Result<u64, StoreError>;

    /// A setting hookrelay keeps for itself, if stored.
    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// The stored value of a setting, storing `candidate` first if there is
    /// none (the first process to start wins; every process gets the same).
    async fn setting_or_init(&self, name: &str, candidate: &str, now: i64) -> Result<String, StoreError>;

    async fn create_subscription(&self, subscription: &Subscription) -> Result<(), StoreError>;

    async fn get_subscription(&self, id: &SubscriptionId) -> Result<Option<Subscription>, StoreError>;

    /// Up to `limit + 1` subscriptions after `after`, by id.
    async fn list_subscriptions(
        &self,
        after: Option<&SubscriptionId>,
        limit: usize,
    ) -> Result<Vec<Subscription>, StoreError>;

    /// Replaces a subscription's settings if it is unchanged since it was
    /// read (its `updated_at` is still `expected_updated_at`); false when it
    /// changed meanwhile or does not exist. `failing_since` is the worker's:
    /// it is only cleared, when a disabled subscription is enabled.
    async fn update_subscription(
        &self,
        subscription: &Subscription,
        expected_updated_at: i64,
    ) -> Result<bool, StoreError>;

    /// Deletes a subscription and its deliveries; false when it did not exist.
    async fn delete_subscription(&self, id: &SubscriptionId) -> Result<bool, StoreError>;

    /// Leases due deliveries of enabled subscriptions, oldest first.
    async fn claim_deliveries(&self, claim: &Claim) -> Result<Vec<Job>, StoreError>;

    /// Records attempt outcomes and logs the attempts (for deliveries still
    /// holding the lease each attempt ran under: this `worker`, that
    /// `lease_until`), releases leases
    /// not used (the same way), and applies subscription health: a success
    /// clears `failing_since`, a failure starts it, a subscription failing
    /// longer than `disable_after` ms or answering 410 is disabled. Returns
    /// the subscriptions it disabled.
    async fn record_attempts(
        &self,
        worker: &str,
        now: i64,
        records: &[Recorded],
        released: &[(DeliveryId, i64)],
        health: &[(SubscriptionId, Health)],
        disable_after: i64,
    ) -> Result<Vec<Disabled>, StoreError>;

    /// Inserts deliveries outside the ingest path (replays, test pings),
    /// optionally leased.
    async fn insert_deliveries(&self, rows: &[DeliveryRow], lease: Option<&Lease>) -> Result<(), StoreError>;

    /// Up to `limit + 1` deliveries, newest first.
    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<DeliverySummary>, StoreError>;

    /// A delivery, its payload and every attempt in order.
    async fn get_delivery(
        &self,
        id: &DeliveryId,
    ) -> Result<Option<(DeliverySummary, Vec<u8>, Vec<AttemptRecord>)>, StoreError>;

    /// Makes a delivery due now (whatever its state) unless an attempt is running.
    async fn retry_delivery(&self, id: &DeliveryId, now: i64) -> Result<RetryResult, StoreError>;

    async fn delivery_stats(&self) -> Result<DeliveryStats, StoreError>;

    /// Until `stop`: wakes `wake` whenever another process commits
    /// deliveries, and `changed` whenever a subscription changes (created,
    /// updated, rotated, disabled, deleted). PostgreSQL listens for
    /// notifications; SQLite (one process) returns at once.
    async fn listen(
        &self,
        wake: Arc<tokio::sync::Notify>,
        changed: Arc<tokio::sync::Notify>,
        stop: tokio_util::sync::CancellationToken,
    );
}

/// Opens (and migrates) the store named by the configuration.
pub async fn open(config: &DatabaseConfig) -> Result<Arc<dyn Store>, StoreError> {
    let url = DatabaseUrl::parse(&config.url).map_err(StoreError::other)?;
    let store: Arc<dyn Store> = match url {
        DatabaseUrl::Postgres(url) => Arc::new(postgres::PgStore::connect(&url, config)?),
        DatabaseUrl::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(&path, config)?),
    };
    store.migrate().await?;
    Ok(store)
}
