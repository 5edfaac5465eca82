//! Persistence. One [`Store`] interface, two implementations: PostgreSQL
//! (`postgres`) and an embedded SQLite file (`sqlite`), kept in step by one
//! shared test suite and by sharing everything that is not SQL dialect: the
//! batch planner ([`crate::plan`]), the list-query builder and row decoding
//! below. Migrations live beside each implementation.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::config::{DatabaseConfig, DatabaseUrl};
use crate::domain::event::Reason;
use crate::domain::outbox::{AttemptRecord, DeliveryRow, DeliveryState, Health, Job, Lease, Recorded};
use crate::domain::signing::{Scheme, SigningKey};
use crate::domain::subscription::{PreviousSecret, Subscription};
use crate::domain::{
    ApiKeyId, ApiKeyRecord, Channel, DeliveryId, MessageId, MessageRecord, MessageState, Milestones, ProviderName,
    Scopes, Status, SubscriptionId,
};
use crate::plan::{Command, Outcome};

pub mod postgres;
pub mod sqlite;

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

/// Filters and position for `GET /messages`. Results are newest first,
/// ordered by `(enqueued, id)` descending.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageQuery {
    pub statuses: Vec<Status>,
    pub recipient: Option<String>,
    pub notification: Option<String>,
    pub event: Option<String>,
    pub list: Option<String>,
    pub message_id: Option<MessageId>,
    pub provider: Option<ProviderName>,
    pub tag: Option<String>,
    /// Only messages enqueued at or after this time (epoch ms).
    pub enqueued_after: Option<i64>,
    /// Only messages enqueued before this time (epoch ms).
    pub enqueued_before: Option<i64>,
    /// Continue after this `(enqueued, id)` position.
    pub after: Option<(i64, MessageId)>,
    /// Rows to return; the store fetches one more to learn if there are more.
    pub limit: usize,
}

impl MessageQuery {
    /// One query per kind of filter the API offers, alone and combined
    /// (the plan check runs each of them).
    #[doc(hidden)]
    pub fn examples() -> Vec<MessageQuery> {
        let text = |s: &str| Some(s.to_owned());
        let base = MessageQuery { limit: 50, ..MessageQuery::default() };
        let after = Some((1_700_000_000_000, MessageId::from_trusted("m".into())));
        vec![
            base.clone(),
            MessageQuery { after: after.clone(), ..base.clone() },
            MessageQuery { statuses: vec![Status::Delivered], after: after.clone(), ..base.clone() },
            MessageQuery { statuses: vec![Status::Delivered, Status::Opened, Status::Clicked], ..base.clone() },
            MessageQuery { recipient: text("a@example.com"), after: after.clone(), ..base.clone() },
            MessageQuery { notification: text("welcome"), ..base.clone() },
            MessageQuery { event: text("signup"), ..base.clone() },
            MessageQuery { list: text("news"), ..base.clone() },
            MessageQuery { message_id: Some(MessageId::from_trusted("m".into())), ..base.clone() },
            MessageQuery { provider: ProviderName::parse("sendgrid").ok(), ..base.clone() },
            MessageQuery { tag: text("vip"), after: after.clone(), ..base.clone() },
            MessageQuery { tag: text("vip"), statuses: vec![Status::Delivered, Status::Opened], ..base.clone() },
            MessageQuery { enqueued_after: Some(1), enqueued_before: Some(2), ..base.clone() },
            MessageQuery {
                notification: text("welcome"),
                statuses: vec![Status::Sent, Status::Delivered],
                after: after.clone(),
                ..base.clone()
            },
            MessageQuery {
                statuses: vec![Status::Undeliverable],
                provider: ProviderName::parse("ses").ok(),
                enqueued_after: Some(1),
                after,
                ..base
            },
        ]
    }
}

/// One history entry as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    pub ts: i64,
    pub kind: String,
    pub detail: Map<String, Value>,
}

impl HistoryEntry {
    /// The public JSON: `{"ts":..., "type":..., ...detail}`.
    pub fn to_json(&self) -> Value {
        let mut entry = Map::with_capacity(self.detail.len() + 2);
        entry.insert("ts".into(), Value::from(self.ts));
        entry.insert("type".into(), Value::from(self.kind.as_str()));
        for (k, v) in &self.detail {
            entry.insert(k.clone(), v.clone());
        }
        Value::Object(entry)
    }
}

/// What a committed batch produced.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// One per command, in order.
    pub outcomes: Vec<Outcome>,
    /// Deliveries inserted already leased to the caller (when it asked for a
    /// lease), to be attempted without a separate claim.
    pub handoff: Vec<Job>,
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

/// Filters for a subscription's deliveries, newest first.
#[derive(Debug, Clone)]
pub struct DeliveryQuery {
    pub subscription_id: SubscriptionId,
    pub state: Option<DeliveryState>,
    /// Continue after this `(created_at, id)` position.
    pub after: Option<(i64, DeliveryId)>,
    /// Rows to return; the store fetches one more.
    pub limit: usize,
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    pub pending: i64,
    /// The earliest `next_attempt_at` among pending deliveries.
    pub oldest_due: Option<i64>,
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
    /// only after the commit. With a lease, new deliveries are inserted
    /// leased to its holder and returned for immediate attempts.
    async fn apply_batch(
        &self,
        commands: Arc<[Command]>,
        now: i64,
        lease: Option<Lease>,
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

/// The columns of `messages`, in the order every SELECT uses.
pub(crate) const MESSAGE_COLUMNS: [&str; 22] = [
    "id",
    "status",
    "seq",
    "enqueued_at",
    "sent_at",
    "delivered_at",
    "opened_at",
    "clicked_at",
    "reason",
    "error",
    "registered",
    "recipient",
    "channel",
    "provider",
    "provider_message_id",
    "notification",
    "event",
    "list",
    "tags",
    "metadata",
    "idempotency_key",
    "updated_at",
];

/// `m.id, m.status, ...` for SELECTs.
pub(crate) fn message_select_list(alias: &str) -> String {
    MESSAGE_COLUMNS.iter().map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ")
}

/// Read access to one result row, whichever driver produced it.
pub(crate) trait RowLike {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn boolean(&self, i: usize) -> Result<bool, StoreError>;
}

fn required<T>(v: Option<T>, column: &str) -> Result<T, StoreError> {
    v.ok_or_else(|| StoreError::other(format!("messages.{column} is NULL")))
}

/// Decodes a row selected with [`MESSAGE_COLUMNS`].
pub(crate) fn decode_message(row: &impl RowLike) -> Result<MessageRecord, StoreError> {
    let status_text = required(row.text(1)?, "status")?;
    let status = Status::parse(&status_text)
        .ok_or_else(|| StoreError::other(format!("unknown status {status_text:?} in messages")))?;
    let tags: Vec<String> = match row.text(18)? {
        Some(t) => serde_json::from_str(&t).map_err(|e| StoreError::Other(e.into()))?,
        None => Vec::new(),
    };
    let metadata = match row.text(19)? {
        Some(t) => Some(serde_json::from_str(&t).map_err(|e| StoreError::Other(e.into()))?),
        None => None,
    };
    Ok(MessageRecord {
        id: MessageId::from_trusted(required(row.text(0)?, "id")?),
        state: MessageState {
            status,
            seq: required(row.int(2)?, "seq")?,
            milestones: Milestones {
                enqueued: required(row.int(3)?, "enqueued_at")?,
                sent: row.int(4)?,
                delivered: row.int(5)?,
                opened: row.int(6)?,
                clicked: row.int(7)?,
            },
            reason: row.text(8)?.as_deref().and_then(Reason::parse),
            error: row.text(9)?,
        },
        registered: row.boolean(10)?,
        recipient: row.text(11)?,
        channel: row.text(12)?.as_deref().and_then(Channel::parse),
        provider: row.text(13)?.map(ProviderName::from_trusted),
        provider_message_id: row.text(14)?,
        notification: row.text(15)?,
        event: row.text(16)?,
        list: row.text(17)?,
        tags,
        metadata,
        idempotency_key: row.text(20)?,
        updated_at: required(row.int(21)?, "updated_at")?,
    })
}

/// A message record flattened into column values for writing.
pub(crate) struct MessageColumns<'a> {
    pub id: &'a str,
    pub status: &'static str,
    pub seq: i64,
    pub enqueued_at: i64,
    pub sent_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub opened_at: Option<i64>,
    pub clicked_at: Option<i64>,
    pub reason: Option<&'static str>,
    pub error: Option<&'a str>,
    pub registered: bool,
    pub recipient: Option<&'a str>,
    pub channel: Option<&'static str>,
    pub provider: Option<&'a str>,
    pub provider_message_id: Option<&'a str>,
    pub notification: Option<&'a str>,
    pub event: Option<&'a str>,
    pub list: Option<&'a str>,
    pub tags: String,
    pub metadata: Option<String>,
    pub idempotency_key: Option<&'a str>,
    pub updated_at: i64,
}

impl<'a> MessageColumns<'a> {
    pub fn of(m: &'a MessageRecord) -> Self {
        let s = &m.state;
        MessageColumns {
            id: m.id.as_str(),
            status: s.status.as_str(),
            seq: s.seq,
            enqueued_at: s.milestones.enqueued,
            sent_at: s.milestones.sent,
            delivered_at: s.milestones.delivered,
            opened_at: s.milestones.opened,
            clicked_at: s.milestones.clicked,
            reason: s.reason.map(Reason::as_str),
            error: s.error.as_deref(),
            registered: m.registered,
            recipient: m.recipient.as_deref(),
            channel: m.channel.map(Channel::as_str),
            provider: m.provider.as_ref().map(ProviderName::as_str),
            provider_message_id: m.provider_message_id.as_deref(),
            notification: m.notification.as_deref(),
            event: m.event.as_deref(),
            list: m.list.as_deref(),
            tags: serde_json::to_string(&m.tags).unwrap_or_else(|_| "[]".into()),
            metadata: m.metadata.as_ref().map(Value::to_string),
            idempotency_key: m.idempotency_key.as_deref(),
            updated_at: m.updated_at,
        }
    }
}

/// The columns of `subscriptions`, in the order every SELECT uses.
pub(crate) const SUBSCRIPTION_COLUMNS: &str = "id, url, description, statuses, all_events, signature_scheme, secret, \
     previous_secrets, headers, enabled, disabled_reason, max_in_flight, rate_limit_per_second, failing_since, \
     created_at, updated_at";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPrevious {
    secret: String,
    expires_at: i64,
}

fn to_u32(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

/// Decodes a row selected with [`SUBSCRIPTION_COLUMNS`].
pub(crate) fn decode_subscription(row: &impl RowLike) -> Result<Subscription, StoreError> {
    let bad = |what: &str| StoreError::other(format!("subscriptions.{what} is malformed"));
    let statuses = match row.text(3)? {
        Some(t) => {
            let names: Vec<String> = serde_json::from_str(&t).map_err(|_| bad("statuses"))?;
            Some(names.iter().map(|n| Status::parse(n).ok_or_else(|| bad("statuses"))).collect::<Result<_, _>>()?)
        }
        None => None,
    };
    let scheme = Scheme::parse(&required(row.text(5)?, "signature_scheme")?).ok_or_else(|| bad("signature_scheme"))?;
    let secret = SigningKey::parse(&required(row.text(6)?, "secret")?).map_err(|_| bad("secret"))?;
    let previous: Vec<StoredPrevious> =
        serde_json::from_str(&row.text(7)?.unwrap_or_else(|| "[]".into())).map_err(|_| bad("previous_secrets"))?;
    let previous_secrets = previous
        .into_iter()
        .map(|p| {
            Ok(PreviousSecret {
                secret: SigningKey::parse(&p.secret).map_err(|_| bad("previous_secrets"))?,
                expires_at: p.expires_at,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let headers: Vec<(String, String)> =
        serde_json::from_str(&row.text(8)?.unwrap_or_else(|| "[]".into())).map_err(|_| bad("headers"))?;
    Ok(Subscription {
        id: SubscriptionId::from_trusted(required(row.text(0)?, "id")?),
        url: required(row.text(1)?, "url")?,
        description: row.text(2)?,
        statuses,
        all_events: row.boolean(4)?,
        scheme,
        secret,
        previous_secrets,
        headers,
        enabled: row.boolean(9)?,
        disabled_reason: row.text(10)?,
        max_in_flight: to_u32(row.int(11)?),
        rate_limit_per_second: to_u32(row.int(12)?),
        failing_since: row.int(13)?,
        created_at: required(row.int(14)?, "created_at")?,
        updated_at: required(row.int(15)?, "updated_at")?,
    })
}

/// A subscription flattened into column values (same order as
/// [`SUBSCRIPTION_COLUMNS`]).
pub(crate) struct SubscriptionColumns<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub description: Option<&'a str>,
    pub statuses: Option<String>,
    pub all_events: bool,
    pub scheme: &'static str,
    pub secret: &'a str,
    pub previous_secrets: String,
    pub headers: String,
    pub enabled: bool,
    pub disabled_reason: Option<&'a str>,
    pub max_in_flight: Option<i64>,
    pub rate_limit_per_second: Option<i64>,
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl<'a> SubscriptionColumns<'a> {
    pub fn of(s: &'a Subscription) -> Self {
        let previous: Vec<StoredPrevious> = s
            .previous_secrets
            .iter()
            .map(|p| StoredPrevious { secret: p.secret.expose().to_owned(), expires_at: p.expires_at })
            .collect();
        SubscriptionColumns {
            id: s.id.as_str(),
            url: &s.url,
            description: s.description.as_deref(),
            statuses: s.statuses.as_ref().map(|list| {
                serde_json::to_string(&list.iter().map(|st| st.as_str()).collect::<Vec<_>>()).unwrap_or_default()
            }),
            all_events: s.all_events,
            scheme: s.scheme.as_str(),
            secret: s.secret.expose(),
            previous_secrets: serde_json::to_string(&previous).unwrap_or_else(|_| "[]".into()),
            headers: serde_json::to_string(&s.headers).unwrap_or_else(|_| "[]".into()),
            enabled: s.enabled,
            disabled_reason: s.disabled_reason.as_deref(),
            max_in_flight: s.max_in_flight.map(i64::from),
            rate_limit_per_second: s.rate_limit_per_second.map(i64::from),
            failing_since: s.failing_since,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// The columns of `api_keys`, in the order [`decode_api_key`] reads them.
pub(crate) const API_KEY_COLUMNS: &str = "id, name, prefix, hash, scopes, created_at, last_used_at";

pub(crate) fn decode_api_key(row: &impl RowLike) -> Result<ApiKeyRecord, StoreError> {
    let scopes = required(row.text(4)?, "scopes")?;
    Ok(ApiKeyRecord {
        id: ApiKeyId::from_trusted(required(row.text(0)?, "id")?),
        name: required(row.text(1)?, "name")?,
        prefix: row.text(2)?,
        hash: required(row.text(3)?, "hash")?,
        scopes: Scopes::parse(&scopes).map_err(|e| StoreError::other(format!("api_keys.scopes: {e}")))?,
        created_at: required(row.int(5)?, "created_at")?,
        last_used_at: row.int(6)?,
    })
}

/// The columns of a delivery summary, in the order decoding expects.
pub(crate) const DELIVERY_COLUMNS: &str = "id, subscription_id, message_id, seq, kind, state, attempts, \
     next_attempt_at, locked_until, last_status, last_error, created_at, updated_at, finished_at";

/// A subscription's deliveries, newest first: `{1}` the subscription,
/// `{2}`/`{3}` the position to continue after, `{4}` the row limit. The
/// state is written into the text (one statement per state), so that the
/// index of unfinished deliveries serves a listing of pending, failed or
/// dead ones.
pub(crate) fn list_deliveries_query(state: Option<DeliveryState>, placeholder: fn(usize) -> String) -> String {
    let state = match state {
        Some(state) => format!("AND state = '{}' ", state.as_str()),
        None => String::new(),
    };
    let p = |n| placeholder(n);
    format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE subscription_id = {} {state}\
         AND (CAST({} AS BIGINT) IS NULL OR (created_at, id) < ({}, {})) \
         ORDER BY created_at DESC, id DESC LIMIT {}",
        p(1),
        p(2),
        p(2),
        p(3),
        p(4)
    )
}

pub(crate) fn decode_delivery(row: &impl RowLike) -> Result<DeliverySummary, StoreError> {
    let state_text = required(row.text(5)?, "state")?;
    Ok(DeliverySummary {
        id: DeliveryId::from_trusted(required(row.text(0)?, "id")?),
        subscription_id: SubscriptionId::from_trusted(required(row.text(1)?, "subscription_id")?),
        message_id: MessageId::from_trusted(required(row.text(2)?, "message_id")?),
        seq: required(row.int(3)?, "seq")?,
        kind: required(row.text(4)?, "kind")?,
        state: DeliveryState::parse(&state_text)
            .ok_or_else(|| StoreError::other(format!("unknown delivery state {state_text:?}")))?,
        attempts: to_u32(row.int(6)?).unwrap_or(0),
        next_attempt_at: row.int(7)?,
        leased_until: row.int(8)?,
        last_status: row.int(9)?.and_then(|s| u16::try_from(s).ok()),
        last_error: row.text(10)?,
        created_at: required(row.int(11)?, "created_at")?,
        updated_at: required(row.int(12)?, "updated_at")?,
        finished_at: row.int(13)?,
    })
}

/// The columns of `delivery_attempts` as listed.
pub(crate) const ATTEMPT_COLUMNS: &str = "attempt, started_at, latency_ms, status_code, error, response_excerpt";

pub(crate) fn decode_attempt(row: &impl RowLike) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        attempt: to_u32(row.int(0)?).unwrap_or(0),
        started_at: required(row.int(1)?, "started_at")?,
        latency_ms: row.int(2)?.unwrap_or(0),
        status_code: row.int(3)?.and_then(|s| u16::try_from(s).ok()),
        error: row.text(4)?,
        response_excerpt: row.text(5)?,
    })
}

/// Turns the deliveries a plan inserted into jobs for the leaseholder.
pub(crate) fn handoff(rows: &[DeliveryRow], lease: Option<&Lease>) -> Vec<Job> {
    let Some(lease) = lease else { return Vec::new() };
    rows.iter()
        .map(|d| Job {
            id: d.id.clone(),
            subscription_id: d.subscription_id.clone(),
            message_id: d.message_id.clone(),
            payload: bytes::Bytes::from(d.payload.clone()),
            attempts: 0,
            lease_until: lease.until,
        })
        .collect()
}

/// The subscription-health statements both stores run, as (sql kind,
/// subscription) pairs reduced to the last word per subscription: one
/// success anywhere in the batch clears failing.
pub(crate) fn health_by_subscription(health: &[(SubscriptionId, Health)]) -> Vec<(&SubscriptionId, Health)> {
    let mut out: Vec<(&SubscriptionId, Health)> = Vec::new();
    for (id, h) in health {
        match out.iter_mut().find(|(i, _)| *i == id) {
            Some((_, current)) => {
                *current = match (*current, *h) {
                    (Health::Gone, _) | (_, Health::Gone) => Health::Gone,
                    (Health::Succeeded, _) | (_, Health::Succeeded) => Health::Succeeded,
                    _ => Health::Failed,
                }
            }
            None => out.push((id, *h)),
        }
    }
    out
}

/// Why a subscription is disabled after failing for too long.
pub(crate) fn failing_reason(disable_after: i64) -> String {
    format!("every attempt failed for {} hours", disable_after / 3_600_000)
}

/// The reason recorded when an endpoint answers 410.
pub(crate) const GONE_REASON: &str = "the endpoint answered 410 Gone";

/// A bound parameter of a built query.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

/// Builds the keyset-paged `GET /messages` query. `placeholder(n)` renders
/// the n-th (1-based) parameter in the backend's dialect.
///
/// With several statuses, each status gets its own ordered, limited scan
/// (each served by the `(status, enqueued_at, id)` index) and the results are
/// merged, so a page never sorts every matching row.
pub(crate) fn list_query(q: &MessageQuery, placeholder: fn(usize) -> String) -> (String, Vec<Param>) {
    let mut params = Vec::new();
    if q.statuses.len() <= 1 {
        let sql = scan(q, q.statuses.first().copied(), &mut params, placeholder);
        return (sql, params);
    }
    let parts: Vec<String> = q
        .statuses
        .iter()
        .enumerate()
        .map(|(i, status)| format!("SELECT * FROM ({}) AS s{i}", scan(q, Some(*status), &mut params, placeholder)))
        .collect();
    params.push(Param::Int(q.limit as i64 + 1));
    let limit = placeholder(params.len());
    let sql = format!(
        "SELECT * FROM ({}) AS u ORDER BY u.enqueued_at DESC, u.id DESC LIMIT {limit}",
        parts.join(" UNION ALL ")
    );
    (sql, params)
}

/// `SELECT count(*)` over the list query, bounded by `cap + 1` rows.
pub(crate) fn count_query(q: &MessageQuery, cap: usize, placeholder: fn(usize) -> String) -> (String, Vec<Param>) {
    let bounded = MessageQuery { after: None, limit: cap, ..q.clone() };
    let (sql, params) = list_query(&bounded, placeholder);
    (format!("SELECT count(*) FROM ({sql}) AS counted"), params)
}

/// One ordered, limited scan for at most one status.
///
/// A status together with a column filter (recipient, notification, event,
/// list, provider) picks the page's ids first from the column's index, which
/// carries the status, and reads only those rows: checking the status on the
/// table would read one row per index entry, however few of them match.
fn scan(q: &MessageQuery, status: Option<Status>, params: &mut Vec<Param>, placeholder: fn(usize) -> String) -> String {
    let column_filter =
        [&q.recipient, &q.notification, &q.event, &q.list].iter().any(|v| v.is_some()) || q.provider.is_some();
    let ids_first = status.is_some() && column_filter && q.tag.is_none() && q.message_id.is_none();
    let m = if ids_first { "k" } else { "m" };
    let mut conds: Vec<String> = Vec::new();
    let mut bind = |p: Param| {
        params.push(p);
        placeholder(params.len())
    };
    // With a tag filter the scan is driven from message_tags, whose key
    // carries the paging order, so the tag index serves the whole query.
    let (from, order_e, order_id) = if let Some(tag) = &q.tag {
        let p = bind(Param::Text(tag.clone()));
        conds.push(format!("t.tag = {p}"));
        ("message_tags t JOIN messages m ON m.id = t.message_id", "t.enqueued_at", "t.message_id")
    } else if ids_first {
        ("messages k", "k.enqueued_at", "k.id")
    } else {
        ("messages m", "m.enqueued_at", "m.id")
    };
    if let Some(status) = status {
        let p = bind(Param::Text(status.as_str().to_owned()));
        conds.push(format!("{m}.status = {p}"));
    }
    for (column, value) in
        [("recipient", &q.recipient), ("notification", &q.notification), ("event", &q.event), ("list", &q.list)]
    {
        if let Some(v) = value {
            let p = bind(Param::Text(v.clone()));
            conds.push(format!("{m}.{column} = {p}"));
        }
    }
    if let Some(id) = &q.message_id {
        let p = bind(Param::Text(id.as_str().to_owned()));
        conds.push(format!("{m}.id = {p}"));
    }
    if let Some(provider) = &q.provider {
        let p = bind(Param::Text(provider.as_str().to_owned()));
        conds.push(format!("{m}.provider = {p}"));
    }
    if let Some(after) = q.enqueued_after {
        let p = bind(Param::Int(after));
        conds.push(format!("{order_e} >= {p}"));
    }
    if let Some(before) = q.enqueued_before {
        let p = bind(Param::Int(before));
        conds.push(format!("{order_e} < {p}"));
    }
    if let Some((e, id)) = &q.after {
        let pe = bind(Param::Int(*e));
        let pid = bind(Param::Text(id.as_str().to_owned()));
        conds.push(format!("({order_e}, {order_id}) < ({pe}, {pid})"));
    }
    let limit = bind(Param::Int(q.limit as i64 + 1));
    let where_clause = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
    let page = format!("FROM {from}{where_clause} ORDER BY {order_e} DESC, {order_id} DESC LIMIT {limit}");
    if ids_first {
        format!(
            "SELECT {} FROM (SELECT k.id, k.enqueued_at {page}) AS p JOIN messages m ON m.id = p.id \
             ORDER BY p.enqueued_at DESC, p.id DESC",
            message_select_list("m")
        )
    } else {
        format!("SELECT {} {page}", message_select_list("m"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_binds_every_filter() {
        let q = MessageQuery {
            statuses: vec![Status::Delivered, Status::Opened],
            recipient: Some("r".into()),
            tag: Some("t".into()),
            enqueued_after: Some(5),
            after: Some((10, MessageId::parse("m").expect("id"))),
            limit: 20,
            ..MessageQuery::default()
        };
        let (sql, params) = list_query(&q, |n| format!("${n}"));
        assert!(sql.contains("FROM message_tags t JOIN messages m"), "{sql}");
        // One scan per status, each bound separately, merged under one limit.
        assert!(sql.contains("m.status = $2"), "{sql}");
        assert!(sql.contains("m.status = $9"), "{sql}");
        assert!(sql.contains("(t.enqueued_at, t.message_id) < ($5, $6)"), "{sql}");
        assert!(sql.contains(" UNION ALL "), "{sql}");
        assert!(sql.ends_with("ORDER BY u.enqueued_at DESC, u.id DESC LIMIT $15"), "{sql}");
        assert_eq!(params.len(), 15);
        assert_eq!(params[14], Param::Int(21));
        let single = MessageQuery { statuses: vec![Status::Sent], limit: 5, ..MessageQuery::default() };
        let (sql, params) = list_query(&single, |n| format!("?{n}"));
        assert!(!sql.contains("UNION"), "{sql}");
        assert_eq!(params, vec![Param::Text("SENT".into()), Param::Int(6)]);
    }

    #[test]
    fn a_status_with_a_column_filter_picks_ids_from_the_index_first() {
        let q = MessageQuery {
            statuses: vec![Status::Sent],
            notification: Some("welcome".into()),
            after: Some((10, MessageId::parse("m").expect("id"))),
            limit: 50,
            ..MessageQuery::default()
        };
        let (sql, params) = list_query(&q, |n| format!("${n}"));
        assert!(
            sql.contains(
                "FROM (SELECT k.id, k.enqueued_at FROM messages k WHERE k.status = $1 AND k.notification = $2 \
                 AND (k.enqueued_at, k.id) < ($3, $4) ORDER BY k.enqueued_at DESC, k.id DESC LIMIT $5) AS p \
                 JOIN messages m ON m.id = p.id ORDER BY p.enqueued_at DESC, p.id DESC"
            ),
            "{sql}"
        );
        assert_eq!(params.len(), 5);
        // Without a status, or with a tag, the page is read in one pass.
        for q in
            [MessageQuery { statuses: Vec::new(), ..q.clone() }, MessageQuery { tag: Some("vip".into()), ..q.clone() }]
        {
            let (sql, _) = list_query(&q, |n| format!("${n}"));
            assert!(!sql.contains("AS p JOIN"), "{sql}");
        }
    }
}
