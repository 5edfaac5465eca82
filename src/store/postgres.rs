//! The PostgreSQL store (deadpool-postgres over tokio-postgres).
//!
//! Batches are written with multi-row `UNNEST` statements, prepared once per
//! connection. The rows a batch touches are found first, then locked in ONE
//! statement in id order (`FOR UPDATE`), so writers in several processes
//! always take locks in the same order. A batch that loses a race with
//! another process (a unique violation, deadlock or serialization failure)
//! is reported as [`StoreError::Conflict`] and retried whole by the writer.
//! Every connection has a statement timeout and a lock timeout, so a stuck
//! database turns into 503 answers rather than requests that never end.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub mod sql;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::codec::{
    self, API_KEY_COLUMNS, GONE_REASON, MessageColumns, RowLike, SUBSCRIPTION_COLUMNS, SubscriptionColumns,
    decode_api_key, decode_attempt, decode_delivery, decode_message, decode_subscription, failing_reason,
    health_by_subscription, history_entry, subscription_filter,
};
use super::query::{DeliveryQuery, MessageQuery, Param, count_query, list_query};
use super::{
    Admitted, Backend, BatchResult, Claim, DeliveryStats, DeliverySummary, Disabled, Handoff, HistoryEntry,
    RetryResult, Store, StoreError,
};
use crate::clock::rfc3339;
use crate::config::DatabaseConfig;
use crate::domain::DeliveryId;
use crate::domain::outbox::{AttemptRecord, DeliveryRow, DeliveryState, Health, Job, Lease, Recorded};
use crate::domain::subscription::Subscription;
use crate::domain::{ApiKeyId, ApiKeyRecord, MessageId, MessageRecord, SubscriptionId};
use crate::plan::{self, Command, Loaded, Lookups, Plan};

/// Migrations, applied in order; the number is the schema version.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("postgres/migrations/0001_init.sql")),
    (2, include_str!("postgres/migrations/0002_settings.sql")),
    (3, include_str!("postgres/migrations/0003_lean_outbox.sql")),
    (4, include_str!("postgres/migrations/0004_status_in_filter_indexes.sql")),
    (5, include_str!("postgres/migrations/0005_lean_history.sql")),
    (6, include_str!("postgres/migrations/0006_byte_order_keys.sql")),
    (7, include_str!("postgres/migrations/0007_key_scopes_and_callback_tokens.sql")),
];

/// Serializes migrations between processes starting at once.
const MIGRATION_LOCK: i64 = 0x686f_6f6b_7265_6c61; // "hookrela"

/// Channel on which committed deliveries are announced.
pub const DELIVERY_CHANNEL: &str = "hookrelay_deliveries";
/// Channel on which subscription changes are announced.
pub const SUBSCRIPTION_CHANNEL: &str = "hookrelay_subscriptions";

/// A pool of PostgreSQL connections.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// For the dedicated LISTEN connection.
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("status", &self.pool.status()).finish()
    }
}

/// Tells every process's worker that subscriptions changed. Best effort: a
/// missed notice is made up by the worker's periodic reload.
async fn notify_subscriptions(client: &Object) {
    if let Err(e) = client.batch_execute(&format!("NOTIFY {SUBSCRIPTION_CHANNEL}")).await {
        tracing::warn!(error = %PgError(e), "cannot announce a subscription change");
    }
}

impl RowLike for Row {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.try_get(i).map_err(|e| StoreError::Other(e.into()))
    }
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.try_get(i).map_err(|e| StoreError::Other(e.into()))
    }
    fn boolean(&self, i: usize) -> Result<bool, StoreError> {
        self.try_get(i).map_err(|e| StoreError::Other(e.into()))
    }
}

/// A driver error with the server's message and position, which the
/// driver's own `Display` leaves out ("db error").
#[derive(Debug)]
struct PgError(tokio_postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{}: {} ({})", db.severity(), db.message(), db.code().code()),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Sorts a driver error into the three kinds callers act on.
pub(crate) fn classify(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        if *code == SqlState::UNIQUE_VIOLATION
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
        {
            return StoreError::Conflict(Box::new(PgError(e)));
        }
        let class = &code.code()[..2];
        // 08: connection exception, 53: insufficient resources, 57: operator
        // intervention (shutdown, statement timeout), 55P03: lock timeout.
        if matches!(class, "08" | "53" | "57") || *code == SqlState::LOCK_NOT_AVAILABLE {
            return StoreError::Unavailable(Box::new(PgError(e)));
        }
        return StoreError::Other(Box::new(PgError(e)));
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        StoreError::Unavailable(Box::new(PgError(e)))
    } else {
        StoreError::Other(Box::new(PgError(e)))
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => match classify(e) {
            StoreError::Other(e) => StoreError::Unavailable(e),
            other => other,
        },
        other => StoreError::Unavailable(other.into()),
    }
}

impl PgStore {
    /// Builds the pool; connections are made lazily.
    pub fn connect(url: &str, config: &DatabaseConfig) -> Result<Self, StoreError> {
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let mut pg: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| StoreError::Other(e.into()))?;
        pg.connect_timeout(timeout);
        pg.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let statement = config.statement_timeout_ms;
        let lock = (statement / 2).max(50);
        let options = pg.get_options().map(str::to_owned).unwrap_or_default();
        let planner: String = sql::PLANNER_SETTINGS.iter().map(|(name, value)| format!(" -c {name}={value}")).collect();
        pg.options(format!("{options} -c statement_timeout={statement} -c lock_timeout={lock}{planner}").trim());
        if pg.get_application_name().is_none() {
            pg.application_name("hookrelay");
        }
        let manager =
            Manager::from_config(pg.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| StoreError::Other(e.into()))?;
        Ok(PgStore { pool, config: pg })
    }

    pub(crate) async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

fn to_sql_params(params: &[Param]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync + Send> {
            match p {
                Param::Text(s) => Box::new(s.clone()),
                Param::Int(i) => Box::new(*i),
            }
        })
        .collect()
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(classify)?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
                )
                .await
                .map_err(classify)?;
            let applied: HashSet<i32> = client
                .query("SELECT version FROM schema_migrations", &[])
                .await
                .map_err(classify)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for (version, sql) in MIGRATIONS {
                if applied.contains(version) {
                    continue;
                }
                let tx = client.transaction().await.map_err(classify)?;
                tx.batch_execute(sql).await.map_err(classify)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    &[version, &crate::clock::now_ms()],
                )
                .await
                .map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                tracing::info!(version, "applied PostgreSQL migration");
            }
            Ok(())
        }
        .await;
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await.map_err(classify)?;
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(classify)?;
        Ok(())
    }

    async fn apply_batch(
        &self,
        commands: Arc<[Command]>,
        now: i64,
        handoff: Option<Arc<dyn Handoff>>,
    ) -> Result<BatchResult, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(classify)?;
        let loaded = load(&tx, &Lookups::for_batch(&commands)).await?;
        let plan = plan::plan(&commands, loaded, now, rfc3339(now), &mut plan::Fresh);
        let admitted = codec::admit(handoff.as_deref(), &plan.deliveries, now);
        write(&tx, &plan, &admitted).await?;
        tx.commit().await.map_err(classify)?;
        let handoff = codec::handoff(&plan.deliveries, &admitted);
        Ok(BatchResult { outcomes: plan.outcomes, handoff, admitted })
    }

    async fn get_message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::get_message()).await.map_err(classify)?;
        let row = client.query_opt(&stmt, &[&id.as_str()]).await.map_err(classify)?;
        row.as_ref().map(decode_message).transpose()
    }

    async fn list_messages(&self, query: &MessageQuery) -> Result<Vec<MessageRecord>, StoreError> {
        let client = self.client().await?;
        let (sql, params) = list_query(query, |n| format!("${n}"));
        let params = to_sql_params(&params);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let stmt = client.prepare_cached(&sql).await.map_err(classify)?;
        let rows = client.query(&stmt, &refs).await.map_err(classify)?;
        rows.iter().map(decode_message).collect()
    }

    async fn count_messages(&self, query: &MessageQuery, cap: usize) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let (sql, params) = count_query(query, cap, |n| format!("${n}"));
        let params = to_sql_params(&params);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let row = client.query_one(&sql, &refs).await.map_err(classify)?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(usize::MAX))
    }

    async fn history(&self, id: &MessageId, kind: Option<&str>) -> Result<Option<Vec<HistoryEntry>>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::HISTORY).await.map_err(classify)?;
        let rows = client.query(&stmt, &[&id.as_str(), &kind]).await.map_err(classify)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(ts) = row.int(0)? else { continue };
            out.push(history_entry(ts, row.text(1)?, row.text(2)?)?);
        }
        Ok(Some(out))
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id");
        let rows = client.query(&sql, &[]).await.map_err(classify)?;
        rows.iter().map(decode_api_key).collect()
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let scopes = key.scopes.to_string();
        client
            .execute(
                &format!("INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                &[&key.id.as_str(), &key.name, &key.prefix, &key.hash, &scopes, &key.created_at, &key.last_used_at],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn revoke_api_key(&self, id: &ApiKeyId) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client.execute("DELETE FROM api_keys WHERE id = $1", &[&id.as_str()]).await.map_err(classify)?;
        Ok(n == 1)
    }

    async fn touch_api_keys(&self, used: &[(ApiKeyId, i64)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let ids: Vec<&str> = used.iter().map(|(id, _)| id.as_str()).collect();
        let at: Vec<i64> = used.iter().map(|(_, at)| *at).collect();
        client
            .execute(
                "UPDATE api_keys k SET last_used_at = GREATEST(COALESCE(k.last_used_at, 0), u.at) \
                 FROM UNNEST($1::text[], $2::int8[]) AS u(id, at) WHERE k.id = u.id",
                &[&ids, &at],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn purge_callback_tokens(&self, now: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client.execute(sql::PURGE_TOKENS, &[&now]).await.map_err(classify)
    }

    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT value FROM settings WHERE name = $1", &[&name]).await.map_err(classify)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn setting_or_init(&self, name: &str, candidate: &str, now: i64) -> Result<String, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO settings (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                &[&name, &candidate, &now],
            )
            .await
            .map_err(classify)?;
        let row = client.query_one("SELECT value FROM settings WHERE name = $1", &[&name]).await.map_err(classify)?;
        Ok(row.get(0))
    }

    async fn create_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        let client = self.client().await?;
        let c = SubscriptionColumns::of(sub);
        let stmt = client
            .prepare_cached(&format!(
                "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
            ))
            .await
            .map_err(classify)?;
        client.execute(&stmt, &subscription_params(&c)).await.map_err(classify)?;
        notify_subscriptions(&client).await;
        Ok(())
    }

    async fn get_subscription(&self, id: &SubscriptionId) -> Result<Option<Subscription>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"))
            .await
            .map_err(classify)?;
        let row = client.query_opt(&stmt, &[&id.as_str()]).await.map_err(classify)?;
        row.as_ref().map(decode_subscription).transpose()
    }

    async fn list_subscriptions(
        &self,
        after: Option<&SubscriptionId>,
        limit: usize,
    ) -> Result<Vec<Subscription>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2"
            ))
            .await
            .map_err(classify)?;
        let after = after.map(SubscriptionId::as_str);
        let rows = client.query(&stmt, &[&after, &(limit as i64 + 1)]).await.map_err(classify)?;
        rows.iter().map(decode_subscription).collect()
    }

    async fn update_subscription(&self, sub: &Subscription, expected_updated_at: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let c = SubscriptionColumns::of(sub);
        let stmt = client
            .prepare_cached(
                "UPDATE subscriptions SET url = $2, description = $3, statuses = $4, all_events = $5, \
                   signature_scheme = $6, secret = $7, previous_secrets = $8, headers = $9, enabled = $10, \
                   disabled_reason = $11, max_in_flight = $12, rate_limit_per_second = $13, \
                   failing_since = CASE WHEN NOT enabled AND $10 THEN NULL ELSE failing_since END, \
                   updated_at = $15 WHERE id = $1 AND updated_at = $14",
            )
            .await
            .map_err(classify)?;
        // id, url, ... rate_limit_per_second ($1-$13), then the expected and
        // the new updated_at ($14, $15).
        let all = subscription_params(&c);
        let mut params: Vec<&(dyn ToSql + Sync)> = all[..13].to_vec();
        params.push(&expected_updated_at);
        params.push(&c.updated_at);
        let n = client.execute(&stmt, &params).await.map_err(classify)?;
        notify_subscriptions(&client).await;
        Ok(n == 1)
    }

    async fn delete_subscription(&self, id: &SubscriptionId) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(classify)?;
        // The subscription first: its row lock waits for batches fanning out
        // to it, whose deliveries the next statements then see.
        let n = tx.execute("DELETE FROM subscriptions WHERE id = $1", &[&id.as_str()]).await.map_err(classify)?;
        tx.execute(sql::DELETE_SUBSCRIPTION_ATTEMPTS, &[&id.as_str()]).await.map_err(classify)?;
        tx.execute(sql::DELETE_SUBSCRIPTION_DELIVERIES, &[&id.as_str()]).await.map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        notify_subscriptions(&client).await;
        Ok(n == 1)
    }

    async fn claim_deliveries(&self, claim: &Claim) -> Result<Vec<Job>, StoreError> {
        let client = self.client().await?;
        let exclude: Vec<&str> = claim.exclude.iter().map(SubscriptionId::as_str).collect();
        let mut jobs = Vec::new();
        for (first_attempts, limit) in [(true, claim.first), (false, claim.retries)] {
            if limit == 0 {
                continue;
            }
            let stmt = client.prepare_cached(sql::claim(first_attempts)).await.map_err(classify)?;
            let rows = client
                .query(&stmt, &[&claim.now, &(limit as i64), &claim.lease.until, &exclude, &claim.lease.worker])
                .await
                .map_err(classify)?;
            for row in rows {
                jobs.push(Job {
                    id: DeliveryId::from_trusted(row.get(0)),
                    subscription_id: SubscriptionId::from_trusted(row.get(1)),
                    message_id: MessageId::from_trusted(row.get(2)),
                    payload: bytes::Bytes::from(row.get::<_, Vec<u8>>(3)),
                    attempts: u32::try_from(row.get::<_, i64>(4)).unwrap_or(0),
                    lease_until: claim.lease.until,
                });
            }
        }
        Ok(jobs)
    }

    async fn record_attempts(
        &self,
        worker: &str,
        now: i64,
        records: &[Recorded],
        released: &[(DeliveryId, i64)],
        health: &[(SubscriptionId, Health)],
        disable_after: i64,
    ) -> Result<Vec<Disabled>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(classify)?;
        let (record, release, healthy, failing, disable_failing, disable_gone) = tokio::try_join!(
            tx.prepare_cached(sql::RECORD_ATTEMPTS),
            tx.prepare_cached(sql::RELEASE),
            tx.prepare_cached(sql::HEALTHY),
            tx.prepare_cached(sql::FAILING),
            tx.prepare_cached(sql::DISABLE_FAILING),
            tx.prepare_cached(sql::DISABLE_GONE),
        )
        .map_err(classify)?;
        let n = records.len();
        let mut ids = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut next = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut a_num = Vec::with_capacity(n);
        let mut a_start = Vec::with_capacity(n);
        let mut a_latency = Vec::with_capacity(n);
        let mut a_excerpt = Vec::with_capacity(n);
        let mut leases = Vec::with_capacity(n);
        for r in records {
            leases.push(r.lease_until);
            ids.push(r.id.as_str());
            states.push(r.state.as_str());
            attempts.push(i64::from(r.attempts));
            next.push(r.next_attempt_at);
            statuses.push(r.attempt.status_code.map(i64::from));
            errors.push(r.attempt.error.as_deref());
            a_num.push(i64::from(r.attempt.attempt));
            a_start.push(r.attempt.started_at);
            a_latency.push(r.attempt.latency_ms);
            a_excerpt.push(r.attempt.response_excerpt.as_deref());
        }
        let released_ids: Vec<&str> = released.iter().map(|(id, _)| id.as_str()).collect();
        let released_leases: Vec<i64> = released.iter().map(|(_, lease)| *lease).collect();
        let health = health_by_subscription(health);
        let with = |wanted: Health| -> Vec<&str> {
            health.iter().filter(|(_, h)| *h == wanted).map(|(id, _)| id.as_str()).collect()
        };
        let (succeeded, failed, gone) = (with(Health::Succeeded), with(Health::Failed), with(Health::Gone));
        let reason = failing_reason(disable_after);
        let retries = records.iter().any(|r| r.state == DeliveryState::Pending);
        let notify = format!("NOTIFY {DELIVERY_CHANNEL}");
        // Every statement at once (pipelined, run in order by the server).
        // The attempt is logged only for deliveries whose outcome was
        // written: under a lost lease another worker owns the delivery and
        // logs its own attempts.
        let (recorded, released, cleared, failing, disabled_failing, disabled_gone, notified) = tokio::join!(
            async {
                if n == 0 {
                    return Ok(0);
                }
                let params: [&(dyn ToSql + Sync); 13] = [
                    &ids, &states, &attempts, &next, &statuses, &errors, &now, &worker, &leases, &a_num, &a_start,
                    &a_latency, &a_excerpt,
                ];
                tx.execute(&record, &params).await
            },
            async {
                if released_ids.is_empty() {
                    return Ok(0);
                }
                tx.execute(&release, &[&released_ids, &worker, &released_leases]).await
            },
            async { if succeeded.is_empty() { Ok(0) } else { tx.execute(&healthy, &[&succeeded]).await } },
            async { if failed.is_empty() { Ok(0) } else { tx.execute(&failing, &[&failed, &now]).await } },
            async {
                if failed.is_empty() {
                    return Ok(Vec::new());
                }
                tx.query(&disable_failing, &[&failed, &now, &reason, &disable_after]).await
            },
            async {
                if gone.is_empty() {
                    return Ok(Vec::new());
                }
                tx.query(&disable_gone, &[&gone, &GONE_REASON, &now]).await
            },
            async { if retries { tx.batch_execute(&notify).await } else { Ok(()) } },
        );
        // The first failure in request order: later ones only report that
        // the transaction is aborted.
        recorded.map_err(classify)?;
        released.map_err(classify)?;
        cleared.map_err(classify)?;
        failing.map_err(classify)?;
        let (disabled_failing, disabled_gone) = (disabled_failing.map_err(classify)?, disabled_gone.map_err(classify)?);
        notified.map_err(classify)?;
        let mut disabled: Vec<Disabled> = disabled_failing
            .iter()
            .map(|row| Disabled { subscription_id: SubscriptionId::from_trusted(row.get(0)), reason: reason.clone() })
            .collect();
        disabled.extend(disabled_gone.iter().map(|row| Disabled {
            subscription_id: SubscriptionId::from_trusted(row.get(0)),
            reason: GONE_REASON.to_owned(),
        }));
        if !disabled.is_empty() {
            tx.batch_execute(&format!("NOTIFY {SUBSCRIPTION_CHANNEL}")).await.map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        Ok(disabled)
    }

    async fn insert_deliveries(&self, rows: &[DeliveryRow], lease: Option<&Lease>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(classify)?;
        let mut subscriptions: Vec<&str> = rows.iter().map(|r| r.subscription_id.as_str()).collect();
        subscriptions.sort_unstable();
        subscriptions.dedup();
        let locked = tx.query(sql::LOCK_SUBSCRIPTIONS, &[&subscriptions]).await.map_err(classify)?;
        let live: HashSet<&str> = locked.iter().map(|r| r.get(0)).collect();
        // Deliveries for a subscription deleted meanwhile would never be sent.
        let rows: Vec<&DeliveryRow> = rows.iter().filter(|r| live.contains(r.subscription_id.as_str())).collect();
        let admitted = lease.map_or_else(Admitted::nothing, |l| Admitted::all(l.clone(), rows.len()));
        let arrays = DeliveryArrays::of(rows.into_iter(), &admitted);
        let stmt = tx.prepare_cached(sql::INSERT_DELIVERIES).await.map_err(classify)?;
        tx.execute(&stmt, &arrays.params()).await.map_err(classify)?;
        if lease.is_none() {
            tx.batch_execute(&format!("NOTIFY {DELIVERY_CHANNEL}")).await.map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }

    async fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<DeliverySummary>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::list_deliveries(q.state)).await.map_err(classify)?;
        let (after_at, after_id) = match &q.after {
            Some((at, id)) => (Some(*at), Some(id.as_str())),
            None => (None, None),
        };
        let rows = client
            .query(&stmt, &[&q.subscription_id.as_str(), &after_at, &after_id, &(q.limit as i64 + 1)])
            .await
            .map_err(classify)?;
        rows.iter().map(decode_delivery).collect()
    }

    async fn get_delivery(
        &self,
        id: &DeliveryId,
    ) -> Result<Option<(DeliverySummary, Vec<u8>, Vec<AttemptRecord>)>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::get_delivery()).await.map_err(classify)?;
        let Some(row) = client.query_opt(&stmt, &[&id.as_str()]).await.map_err(classify)? else {
            return Ok(None);
        };
        let summary = decode_delivery(&row)?;
        let payload: Vec<u8> = row.get(14);
        let stmt = client.prepare_cached(sql::delivery_attempts()).await.map_err(classify)?;
        let attempts = client.query(&stmt, &[&id.as_str()]).await.map_err(classify)?;
        let attempts = attempts.iter().map(decode_attempt).collect::<Result<_, _>>()?;
        Ok(Some((summary, payload, attempts)))
    }

    async fn retry_delivery(&self, id: &DeliveryId, now: i64) -> Result<RetryResult, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(classify)?;
        let row = tx.query_opt(sql::LOCK_DELIVERY, &[&id.as_str()]).await.map_err(classify)?;
        let Some(row) = row else { return Ok(RetryResult::NotFound) };
        let state: String = row.get(0);
        let locked_until: Option<i64> = row.get(1);
        if state == "pending" && locked_until.is_some_and(|t| t > now) {
            return Ok(RetryResult::InFlight);
        }
        let stmt = tx.prepare_cached(sql::retry_delivery()).await.map_err(classify)?;
        let row = tx.query_one(&stmt, &[&id.as_str(), &now]).await.map_err(classify)?;
        tx.batch_execute(&format!("NOTIFY {DELIVERY_CHANNEL}")).await.map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(RetryResult::Queued(Box::new(decode_delivery(&row)?)))
    }

    async fn delivery_stats(&self) -> Result<DeliveryStats, StoreError> {
        let client = self.client().await?;
        let row = client.query_one(sql::DELIVERY_STATS, &[]).await.map_err(classify)?;
        let rows = client.query(sql::PENDING_BY_SUBSCRIPTION, &[]).await.map_err(classify)?;
        let mut by_subscription = Vec::with_capacity(rows.len());
        for r in rows {
            let id = SubscriptionId::parse(r.get::<_, &str>(0)).map_err(|e| StoreError::other(e.to_string()))?;
            by_subscription.push((id, r.get(1), r.get(2)));
        }
        Ok(DeliveryStats { pending: row.get(0), oldest_due: row.get(1), by_subscription })
    }

    async fn listen(
        &self,
        wake: Arc<tokio::sync::Notify>,
        changed: Arc<tokio::sync::Notify>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        listen(self.config.clone(), wake, changed, stop).await;
    }
}

/// A subscription's columns in [`SUBSCRIPTION_COLUMNS`] order.
fn subscription_params<'a>(c: &'a SubscriptionColumns<'_>) -> [&'a (dyn ToSql + Sync); 16] {
    [
        &c.id,
        &c.url,
        &c.description,
        &c.statuses,
        &c.all_events,
        &c.scheme,
        &c.secret,
        &c.previous_secrets,
        &c.headers,
        &c.enabled,
        &c.disabled_reason,
        &c.max_in_flight,
        &c.rate_limit_per_second,
        &c.failing_since,
        &c.created_at,
        &c.updated_at,
    ]
}

/// Keeps a connection listening on [`DELIVERY_CHANNEL`] and
/// [`SUBSCRIPTION_CHANNEL`], reconnecting after failures.
async fn listen(
    config: tokio_postgres::Config,
    wake: Arc<tokio::sync::Notify>,
    changed: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut backoff = Duration::from_millis(250);
    while !stop.is_cancelled() {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                backoff = Duration::from_millis(250);
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                let _ = tx.send(n.channel() == SUBSCRIPTION_CHANNEL);
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                let sql = format!("LISTEN {DELIVERY_CHANNEL}; LISTEN {SUBSCRIPTION_CHANNEL}");
                if let Err(e) = client.batch_execute(&sql).await {
                    tracing::warn!(error = %PgError(e), "cannot LISTEN for deliveries");
                } else {
                    // Anything may have happened while we were not listening.
                    wake.notify_one();
                    changed.notify_one();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            got = rx.recv() => match got {
                                Some(true) => changed.notify_one(),
                                Some(false) => wake.notify_one(),
                                None => break,
                            },
                        }
                    }
                }
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %PgError(e), "cannot connect to LISTEN for deliveries; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Boxed statement executions, sent together (pipelined) by joining them.
type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// Loads, in one round trip, everything a batch needs: the messages it
/// touches (by id, provider id or idempotency key, locked in ONE statement in
/// id order, so writers in several processes always lock in the same order),
/// which of its dedupe keys exist, and the enabled subscriptions.
async fn load(tx: &Transaction<'_>, lookups: &Lookups) -> Result<Loaded, StoreError> {
    // Prepared once per connection; preparing first keeps the pipelined
    // requests below in order.
    let (lock, dedupe, subs, tokens) = tokio::try_join!(
        tx.prepare_cached(sql::lock_messages()),
        tx.prepare_cached(sql::EXISTING_DEDUPE_KEYS),
        tx.prepare_cached(sql::ENABLED_SUBSCRIPTIONS),
        tx.prepare_cached(sql::EXISTING_TOKENS),
    )
    .map_err(classify)?;
    let ids: Vec<&str> = lookups.ids.iter().map(MessageId::as_str).collect();
    let providers: Vec<&str> = lookups.provider_refs.iter().map(|r| r.provider.as_str()).collect();
    let pmids: Vec<&str> = lookups.provider_refs.iter().map(|r| r.message_id.as_str()).collect();
    let any_messages = !ids.is_empty() || !pmids.is_empty() || !lookups.idempotency_keys.is_empty();
    let locked = async {
        if any_messages {
            tx.query(&lock, &[&ids, &providers, &pmids, &lookups.idempotency_keys]).await
        } else {
            Ok(Vec::new())
        }
    };
    let existing = async {
        if lookups.dedupe_keys.is_empty() { Ok(Vec::new()) } else { tx.query(&dedupe, &[&lookups.dedupe_keys]).await }
    };
    let token_sources: Vec<&str> = lookups.tokens.iter().map(|(source, _)| source.as_str()).collect();
    let token_values: Vec<&str> = lookups.tokens.iter().map(|(_, token)| token.as_str()).collect();
    let known_tokens = async {
        if token_values.is_empty() { Ok(Vec::new()) } else { tx.query(&tokens, &[&token_sources, &token_values]).await }
    };
    // Joined without short-circuiting: after a failure the later requests
    // fail too ("transaction is aborted"); the cause is the first in order.
    let (locked, existing, subscriptions, known_tokens) =
        tokio::join!(locked, existing, tx.query(&subs, &[]), known_tokens);
    let (locked, existing, subscriptions, known_tokens) = (
        locked.map_err(classify)?,
        existing.map_err(classify)?,
        subscriptions.map_err(classify)?,
        known_tokens.map_err(classify)?,
    );
    Ok(Loaded {
        messages: locked.iter().map(decode_message).collect::<Result<_, _>>()?,
        existing_dedupe_keys: existing.iter().map(|r| r.get(0)).collect(),
        subscriptions: subscriptions
            .iter()
            .filter_map(|row| subscription_filter(row.get(0), row.get(1), row.get(2)))
            .collect(),
        tokens: known_tokens.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect(),
    })
}

/// Column arrays for a multi-row message write.
#[derive(Default)]
struct MessageArrays<'a> {
    id: Vec<&'a str>,
    status: Vec<&'static str>,
    seq: Vec<i64>,
    enqueued_at: Vec<i64>,
    sent_at: Vec<Option<i64>>,
    delivered_at: Vec<Option<i64>>,
    opened_at: Vec<Option<i64>>,
    clicked_at: Vec<Option<i64>>,
    reason: Vec<Option<&'static str>>,
    error: Vec<Option<&'a str>>,
    registered: Vec<bool>,
    recipient: Vec<Option<&'a str>>,
    channel: Vec<Option<&'static str>>,
    provider: Vec<Option<&'a str>>,
    provider_message_id: Vec<Option<&'a str>>,
    notification: Vec<Option<&'a str>>,
    event: Vec<Option<&'a str>>,
    list: Vec<Option<&'a str>>,
    tags: Vec<String>,
    metadata: Vec<Option<String>>,
    idempotency_key: Vec<Option<&'a str>>,
    updated_at: Vec<i64>,
}

impl<'a> MessageArrays<'a> {
    fn push(&mut self, c: MessageColumns<'a>) {
        self.id.push(c.id);
        self.status.push(c.status);
        self.seq.push(c.seq);
        self.enqueued_at.push(c.enqueued_at);
        self.sent_at.push(c.sent_at);
        self.delivered_at.push(c.delivered_at);
        self.opened_at.push(c.opened_at);
        self.clicked_at.push(c.clicked_at);
        self.reason.push(c.reason);
        self.error.push(c.error);
        self.registered.push(c.registered);
        self.recipient.push(c.recipient);
        self.channel.push(c.channel);
        self.provider.push(c.provider);
        self.provider_message_id.push(c.provider_message_id);
        self.notification.push(c.notification);
        self.event.push(c.event);
        self.list.push(c.list);
        self.tags.push(c.tags);
        self.metadata.push(c.metadata);
        self.idempotency_key.push(c.idempotency_key);
        self.updated_at.push(c.updated_at);
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 22] {
        [
            &self.id,
            &self.status,
            &self.seq,
            &self.enqueued_at,
            &self.sent_at,
            &self.delivered_at,
            &self.opened_at,
            &self.clicked_at,
            &self.reason,
            &self.error,
            &self.registered,
            &self.recipient,
            &self.channel,
            &self.provider,
            &self.provider_message_id,
            &self.notification,
            &self.event,
            &self.list,
            &self.tags,
            &self.metadata,
            &self.idempotency_key,
            &self.updated_at,
        ]
    }
}

/// `UNNEST($1::text[], ...)` matching [`MessageArrays::params`].
/// Column arrays for a multi-row delivery insert.
struct DeliveryArrays<'a> {
    ids: Vec<&'a str>,
    subs: Vec<&'a str>,
    msgs: Vec<&'a str>,
    seqs: Vec<i64>,
    kinds: Vec<&'static str>,
    payloads: Vec<&'a [u8]>,
    created: Vec<i64>,
    until: Vec<Option<i64>>,
    worker: Vec<Option<&'a str>>,
}

impl<'a> DeliveryArrays<'a> {
    fn of(rows: impl ExactSizeIterator<Item = &'a DeliveryRow>, admitted: &'a Admitted) -> Self {
        let n = rows.len();
        let mut a = DeliveryArrays {
            ids: Vec::with_capacity(n),
            subs: Vec::with_capacity(n),
            msgs: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            until: Vec::with_capacity(n),
            worker: Vec::with_capacity(n),
        };
        for (i, d) in rows.enumerate() {
            let lease = admitted.lease_of(i);
            a.until.push(lease.map(|l| l.until));
            a.worker.push(lease.map(|l| l.worker.as_str()));
            a.ids.push(d.id.as_str());
            a.subs.push(d.subscription_id.as_str());
            a.msgs.push(d.message_id.as_str());
            a.seqs.push(d.seq);
            a.kinds.push(d.kind.as_str());
            a.payloads.push(d.payload.as_slice());
            a.created.push(d.created_at);
        }
        a
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.ids,
            &self.subs,
            &self.msgs,
            &self.seqs,
            &self.kinds,
            &self.payloads,
            &self.created,
            &self.until,
            &self.worker,
        ]
    }
}

/// Writes a plan in ONE round trip: every statement is sent at once
/// (pipelined) and the server runs them in order. Statements are prepared
/// first (once per connection) so that the requests go out in order.
async fn write(tx: &Transaction<'_>, plan: &Plan, admitted: &Admitted) -> Result<(), StoreError> {
    let (
        insert_messages,
        update_messages,
        insert_events,
        delete_tags,
        insert_tags,
        insert_deliveries,
        clear_refs,
        move_events,
        delete_message,
        insert_tokens,
    ) = tokio::try_join!(
        tx.prepare_cached(sql::insert_messages()),
        tx.prepare_cached(sql::update_messages()),
        tx.prepare_cached(sql::INSERT_EVENTS),
        tx.prepare_cached(sql::DELETE_TAGS),
        tx.prepare_cached(sql::INSERT_TAGS),
        tx.prepare_cached(sql::INSERT_DELIVERIES),
        tx.prepare_cached(sql::CLEAR_MERGED_KEYS),
        tx.prepare_cached(sql::MOVE_EVENTS),
        tx.prepare_cached(sql::DELETE_MESSAGES),
        tx.prepare_cached(sql::INSERT_TOKENS),
    )
    .map_err(classify)?;

    let (mut new, mut old) = (MessageArrays::default(), MessageArrays::default());
    for w in &plan.messages {
        let columns = MessageColumns::of(&w.record);
        if w.is_new { new.push(columns) } else { old.push(columns) }
    }
    let merged_away: Vec<&str> = plan.merges.iter().map(|(from, _)| from.as_str()).collect();
    let pairs: Vec<(&str, &str)> = plan.merges.iter().map(|(from, into)| (from.as_str(), into.as_str())).collect();
    let moves: Vec<[&(dyn ToSql + Sync); 2]> =
        pairs.iter().map(|(from, into)| [from as &(dyn ToSql + Sync), into as _]).collect();
    let n = plan.events.len();
    let (mut ids, mut keys, mut ts, mut received, mut kinds, mut details) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in &plan.events {
        ids.push(e.message_id.as_str());
        keys.push(e.dedupe_key.as_str());
        ts.push(e.ts);
        received.push(e.received_at);
        kinds.push(e.kind);
        details.push(e.detail.as_str());
    }
    let retag: Vec<&MessageRecord> = plan.messages.iter().filter(|w| w.tags_changed).map(|w| &w.record).collect();
    let retag_ids: Vec<&str> = retag.iter().map(|m| m.id.as_str()).collect();
    let (mut tags, mut enqueued, mut owners) = (Vec::new(), Vec::new(), Vec::new());
    for m in &retag {
        for tag in &m.fields.tags {
            tags.push(tag.as_str());
            enqueued.push(m.state.milestones.enqueued);
            owners.push(m.id.as_str());
        }
    }
    let deliveries = DeliveryArrays::of(plan.deliveries.iter(), admitted);
    let (new_params, old_params, delivery_params) = (new.params(), old.params(), deliveries.params());
    let event_params: [&(dyn ToSql + Sync); 6] = [&ids, &keys, &ts, &received, &kinds, &details];
    let tag_params: [&(dyn ToSql + Sync); 3] = [&tags, &enqueued, &owners];
    let merged_params: [&(dyn ToSql + Sync); 1] = [&merged_away];
    let (mut t_sources, mut t_tokens, mut t_hashes, mut t_expiry) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for g in &plan.tokens {
        t_sources.push(g.source.as_str());
        t_tokens.push(g.token.as_str());
        t_hashes.push(g.body_hash.as_str());
        t_expiry.push(g.expires_at);
    }
    let token_params: [&(dyn ToSql + Sync); 4] = [&t_sources, &t_tokens, &t_hashes, &t_expiry];
    let retag_params: [&(dyn ToSql + Sync); 1] = [&retag_ids];

    // In order: a record merged away gives up its unique keys before its
    // successor takes them; messages exist before history refers to them.
    let mut ops: Vec<Pending<'_>> = Vec::with_capacity(13);
    if !plan.tokens.is_empty() {
        ops.push(Box::pin(tx.execute(&insert_tokens, &token_params)));
    }
    if !merged_away.is_empty() {
        ops.push(Box::pin(tx.execute(&clear_refs, &merged_params)));
    }
    if !new.id.is_empty() {
        ops.push(Box::pin(tx.execute(&insert_messages, &new_params)));
    }
    if !old.id.is_empty() {
        ops.push(Box::pin(tx.execute(&update_messages, &old_params)));
    }
    for params in &moves {
        ops.push(Box::pin(tx.execute(&move_events, params)));
    }
    if !merged_away.is_empty() {
        ops.push(Box::pin(tx.execute(&delete_tags, &merged_params)));
        ops.push(Box::pin(tx.execute(&delete_message, &merged_params)));
    }
    let events_at = (n > 0).then(|| {
        ops.push(Box::pin(tx.execute(&insert_events, &event_params)));
        ops.len() - 1
    });
    if !retag_ids.is_empty() {
        ops.push(Box::pin(tx.execute(&delete_tags, &retag_params)));
        if !tags.is_empty() {
            ops.push(Box::pin(tx.execute(&insert_tags, &tag_params)));
        }
    }
    if !plan.deliveries.is_empty() {
        ops.push(Box::pin(tx.execute(&insert_deliveries, &delivery_params)));
        if admitted.no_worker() {
            // Delivered at commit: other processes may take these.
            ops.push(Box::pin(async { tx.batch_execute(&format!("NOTIFY {DELIVERY_CHANNEL}")).await.map(|()| 0) }));
        }
    }
    // All of them, then the first error in request order: after a failure
    // the later statements only report that the transaction is aborted.
    let results =
        futures_util::future::join_all(ops).await.into_iter().collect::<Result<Vec<u64>, _>>().map_err(classify)?;
    if let Some(i) = events_at
        && results[i] as usize != n
    {
        // Another process recorded one of these events after we looked; the
        // retry will see it as a duplicate.
        return Err(StoreError::Conflict("an event of this batch was recorded concurrently".into()));
    }
    Ok(())
}
