//! The embedded SQLite store: one file, WAL journal, for one process.
//!
//! All writes go through ONE connection owned by a dedicated thread, fed by
//! the ingest batch writer, so there is never lock contention between
//! writers. Reads use a small pool of read-only connections on the blocking
//! thread pool; WAL lets them run while the writer commits.
//!
//! Durability: `synchronous = FULL` by default, so a commit (and therefore
//! every acknowledgement) survives power loss. `database.sqlite_synchronous =
//! "normal"` trades that for speed: a commit still survives a crash of
//! hookrelay, but the last transactions can be lost if the machine loses
//! power.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, Value as SqlValue};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{Semaphore, oneshot};

use super::codec::{
    self, API_KEY_COLUMNS, ATTEMPT_COLUMNS, DELIVERY_COLUMNS, GONE_REASON, MESSAGE_COLUMNS, MessageColumns, RowLike,
    SUBSCRIPTION_COLUMNS, SubscriptionColumns, decode_api_key, decode_attempt, decode_delivery, decode_message,
    decode_subscription, failing_reason, health_by_subscription, history_entry, message_select_list,
    subscription_filter,
};
use super::query::{DeliveryQuery, MessageQuery, Param, count_query, list_deliveries_query, list_query};
use super::{
    Admitted, Backend, BatchResult, Claim, DeliveryStats, DeliverySummary, Disabled, Handoff, HistoryEntry,
    RetryResult, Store, StoreError,
};
use crate::clock::rfc3339;
use crate::config::{DatabaseConfig, SqliteSync};
use crate::domain::DeliveryId;
use crate::domain::outbox::{AttemptRecord, DeliveryRow, Health, Job, Lease, Recorded};
use crate::domain::subscription::Subscription;
use crate::domain::{ApiKeyId, ApiKeyRecord, MessageId, MessageRecord, SubscriptionId};
use crate::plan::{self, Command, Loaded, Lookups, Plan};

/// Migrations, applied in order; the number is the schema version.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("sqlite/migrations/0001_init.sql")),
    (2, include_str!("sqlite/migrations/0002_settings.sql")),
    (3, include_str!("sqlite/migrations/0003_lean_outbox.sql")),
    (4, include_str!("sqlite/migrations/0004_status_in_filter_indexes.sql")),
    (5, include_str!("sqlite/migrations/0005_key_scopes_and_callback_tokens.sql")),
];

type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// The SQLite store.
pub struct SqliteStore {
    writer: mpsc::Sender<WriteJob>,
    /// Whether the writer thread is running (it clears this when it ends,
    /// panicking or not).
    writer_alive: Arc<AtomicBool>,
    readers: Arc<Readers>,
}

/// Clears the writer's flag when the writer thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.readers.path).finish()
    }
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    fn take(&self) -> rusqlite::Result<Connection> {
        if let Some(conn) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }
}

impl RowLike for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.get(i).map_err(sqlite_error)
    }
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.get(i).map_err(sqlite_error)
    }
    fn boolean(&self, i: usize) -> Result<bool, StoreError> {
        self.get(i).map_err(sqlite_error)
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Text(s) => ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(s.as_bytes())),
            Param::Int(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
        })
    }
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::ReadOnly,
        ) => StoreError::Unavailable(e.into()),
        _ => StoreError::Other(e.into()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and starts its writer thread.
    pub fn open(path: &Path, config: &DatabaseConfig) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Unavailable(e.into()))?;
        }
        let conn = Connection::open(path).map_err(sqlite_error)?;
        let synchronous = match config.sqlite_synchronous {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; \
             PRAGMA busy_timeout = 5000;"
        ))
        .map_err(sqlite_error)?;
        let (tx, rx) = mpsc::channel::<WriteJob>();
        let writer_alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(writer_alive.clone());
        std::thread::Builder::new()
            .name("hookrelay-sqlite-writer".into())
            .spawn(move || {
                let _guard = guard;
                let mut conn = conn;
                conn.set_prepared_statement_cache_capacity(64);
                // Runs until every sender (the store) is dropped.
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Other(e.into()))?;
        Ok(SqliteStore {
            writer: tx,
            writer_alive,
            readers: Arc::new(Readers {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(config.pool_size),
            }),
        })
    }

    /// Runs `f` on the writer connection.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| StoreError::Unavailable("the SQLite writer thread has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the SQLite writer thread has stopped".into()))?
    }

    /// Runs `f` on a read connection.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let _permit = self.readers.permits.acquire().await.map_err(|e| StoreError::Unavailable(e.into()))?;
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.take().map_err(sqlite_error)?;
            let result = f(&conn);
            readers.put(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Other(e.into()))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )
            .map_err(sqlite_error)?;
            let applied: HashSet<i32> = {
                let mut stmt = conn.prepare("SELECT version FROM schema_migrations").map_err(sqlite_error)?;
                let rows = stmt.query_map([], |r| r.get(0)).map_err(sqlite_error)?;
                rows.collect::<Result<_, _>>().map_err(sqlite_error)?
            };
            for (version, sql) in MIGRATIONS {
                if applied.contains(version) {
                    continue;
                }
                let tx = conn.transaction().map_err(sqlite_error)?;
                tx.execute_batch(sql).map_err(sqlite_error)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    params![version, crate::clock::now_ms()],
                )
                .map_err(sqlite_error)?;
                tx.commit().map_err(sqlite_error)?;
                tracing::info!(version, "applied SQLite migration");
            }
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sqlite_error)).await?;
        // The writer thread must be alive too, or nothing can be acknowledged;
        // a busy one is alive (waiting for it would fail readiness under load).
        if self.writer_alive.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError::Unavailable("the SQLite writer thread has stopped".into()))
        }
    }

    async fn apply_batch(
        &self,
        commands: Arc<[Command]>,
        now: i64,
        handoff: Option<Arc<dyn Handoff>>,
    ) -> Result<BatchResult, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_error)?;
            let loaded = load(&tx, &Lookups::for_batch(&commands))?;
            let plan = plan::plan(&commands, loaded, now, rfc3339(now), &mut plan::Fresh);
            write(&tx, &plan)?;
            let admitted = codec::admit(handoff.as_deref(), &plan.deliveries, now);
            insert_deliveries(&tx, &plan.deliveries, &admitted)?;
            tx.commit().map_err(sqlite_error)?;
            let handoff = codec::handoff(&plan.deliveries, &admitted);
            Ok(BatchResult { outcomes: plan.outcomes, handoff, admitted })
        })
        .await
    }

    async fn get_message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let id = id.clone();
        self.read(move |conn| {
            let sql = format!("SELECT {} FROM messages m WHERE m.id = ?1", message_select_list("m"));
            let mut stmt = conn.prepare_cached(&sql).map_err(sqlite_error)?;
            let mut rows = stmt.query([id.as_str()]).map_err(sqlite_error)?;
            match rows.next().map_err(sqlite_error)? {
                Some(row) => Ok(Some(decode_message(row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_messages(&self, query: &MessageQuery) -> Result<Vec<MessageRecord>, StoreError> {
        let (sql, params) = list_query(query, |n| format!("?{n}"));
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(sqlite_error)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(params.iter())).map_err(sqlite_error)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sqlite_error)? {
                out.push(decode_message(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn count_messages(&self, query: &MessageQuery, cap: usize) -> Result<usize, StoreError> {
        let (sql, params) = count_query(query, cap, |n| format!("?{n}"));
        self.read(move |conn| {
            let n: i64 =
                conn.query_row(&sql, rusqlite::params_from_iter(params.iter()), |r| r.get(0)).map_err(sqlite_error)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
        .await
    }

    async fn history(&self, id: &MessageId, kind: Option<&str>) -> Result<Option<Vec<HistoryEntry>>, StoreError> {
        let id = id.clone();
        let kind = kind.map(str::to_owned);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT e.ts, e.kind, e.detail FROM messages m \
                     LEFT JOIN message_events e ON e.message_id = m.id AND (?2 IS NULL OR e.kind = ?2) \
                     WHERE m.id = ?1 ORDER BY e.ts, e.id",
                )
                .map_err(sqlite_error)?;
            let mut rows = stmt.query(params![id.as_str(), kind]).map_err(sqlite_error)?;
            let mut found = false;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sqlite_error)? {
                found = true;
                let Some(ts) = row.int(0)? else { continue };
                out.push(history_entry(ts, row.text(1)?, row.text(2)?)?);
            }
            Ok(found.then_some(out))
        })
        .await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(|conn| {
            let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id");
            let mut stmt = conn.prepare_cached(&sql).map_err(sqlite_error)?;
            let mut rows = stmt.query([]).map_err(sqlite_error)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sqlite_error)? {
                out.push(decode_api_key(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(move |conn| {
            conn.execute(
                &format!("INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![
                    key.id.as_str(),
                    key.name,
                    key.prefix,
                    key.hash,
                    key.scopes.to_string(),
                    key.created_at,
                    key.last_used_at
                ],
            )
            .map_err(sqlite_error)?;
            Ok(())
        })
        .await
    }

    async fn revoke_api_key(&self, id: &ApiKeyId) -> Result<bool, StoreError> {
        let id = id.clone();
        self.write(move |conn| {
            let n = conn.execute("DELETE FROM api_keys WHERE id = ?1", [id.as_str()]).map_err(sqlite_error)?;
            Ok(n == 1)
        })
        .await
    }

    async fn touch_api_keys(&self, used: &[(ApiKeyId, i64)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let used = used.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction().map_err(sqlite_error)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?1",
                    )
                    .map_err(sqlite_error)?;
                for (id, at) in &used {
                    stmt.execute(params![id.as_str(), at]).map_err(sqlite_error)?;
                }
            }
            tx.commit().map_err(sqlite_error)
        })
        .await
    }

    async fn purge_callback_tokens(&self, now: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let n = conn.execute("DELETE FROM callback_tokens WHERE expires_at < ?1", [now]).map_err(sqlite_error)?;
            Ok(n as u64)
        })
        .await
    }

    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            conn.query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(sqlite_error)
        })
        .await
    }

    async fn setting_or_init(&self, name: &str, candidate: &str, now: i64) -> Result<String, StoreError> {
        let (name, candidate) = (name.to_owned(), candidate.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO settings (name, value, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
                params![name, candidate, now],
            )
            .map_err(sqlite_error)?;
            conn.query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| r.get(0)).map_err(sqlite_error)
        })
        .await
    }

    async fn create_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        let values = subscription_params(&SubscriptionColumns::of(sub));
        self.write(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ),
                rusqlite::params_from_iter(values),
            )
            .map_err(sqlite_error)?;
            Ok(())
        })
        .await
    }

    async fn get_subscription(&self, id: &SubscriptionId) -> Result<Option<Subscription>, StoreError> {
        let id = id.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?1"))
                .map_err(sqlite_error)?;
            let mut rows = stmt.query([id.as_str()]).map_err(sqlite_error)?;
            match rows.next().map_err(sqlite_error)? {
                Some(row) => Ok(Some(decode_subscription(row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_subscriptions(
        &self,
        after: Option<&SubscriptionId>,
        limit: usize,
    ) -> Result<Vec<Subscription>, StoreError> {
        let after = after.map(|a| a.as_str().to_owned());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2"
                ))
                .map_err(sqlite_error)?;
            let mut rows = stmt.query(params![after, limit as i64 + 1]).map_err(sqlite_error)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sqlite_error)? {
                out.push(decode_subscription(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn update_subscription(&self, sub: &Subscription, expected_updated_at: i64) -> Result<bool, StoreError> {
        let all = subscription_params(&SubscriptionColumns::of(sub));
        // id, url, ... rate_limit_per_second (?1-?13), then the new and the
        // expected updated_at (?14, ?15).
        let mut values: Vec<rusqlite::types::Value> = all[..13].to_vec();
        values.push(all[15].clone());
        values.push(rusqlite::types::Value::Integer(expected_updated_at));
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE subscriptions SET url = ?2, description = ?3, statuses = ?4, all_events = ?5, \
                       signature_scheme = ?6, secret = ?7, previous_secrets = ?8, headers = ?9, enabled = ?10, \
                       disabled_reason = ?11, max_in_flight = ?12, rate_limit_per_second = ?13, \
                       failing_since = CASE WHEN NOT enabled AND ?10 THEN NULL ELSE failing_since END, \
                       updated_at = ?14 WHERE id = ?1 AND updated_at = ?15",
                    rusqlite::params_from_iter(values),
                )
                .map_err(sqlite_error)?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_subscription(&self, id: &SubscriptionId) -> Result<bool, StoreError> {
        let id = id.clone();
        self.write(move |conn| {
            let n = conn.execute("DELETE FROM subscriptions WHERE id = ?1", [id.as_str()]).map_err(sqlite_error)?;
            Ok(n == 1)
        })
        .await
    }

    async fn claim_deliveries(&self, claim: &Claim) -> Result<Vec<Job>, StoreError> {
        let claim = claim.clone();
        self.write(move |conn| {
            let exclude = serde_json::to_string(&claim.exclude.iter().map(SubscriptionId::as_str).collect::<Vec<_>>())
                .unwrap_or_else(|_| "[]".into());
            let mut jobs = Vec::new();
            for (lane, limit) in [("d.attempts = 0", claim.first), ("d.attempts > 0", claim.retries)] {
                if limit == 0 {
                    continue;
                }
                let sql = format!(
                    "UPDATE deliveries SET locked_until = ?3, locked_by = ?5 WHERE id IN ( \
                       SELECT d.id FROM deliveries d \
                       WHERE d.state = 'pending' AND {lane} AND d.next_attempt_at <= ?1 AND d.kind <> 'test' \
                         AND (d.locked_until IS NULL OR d.locked_until < ?1) \
                         AND d.subscription_id NOT IN (SELECT value FROM json_each(?4)) \
                         AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = d.subscription_id AND s.enabled) \
                       ORDER BY d.next_attempt_at LIMIT ?2) \
                     RETURNING id, subscription_id, message_id, payload, attempts"
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(sqlite_error)?;
                let mut rows = stmt
                    .query(params![claim.now, limit as i64, claim.lease.until, exclude, claim.lease.worker])
                    .map_err(sqlite_error)?;
                while let Some(row) = rows.next().map_err(sqlite_error)? {
                    jobs.push(Job {
                        id: DeliveryId::from_trusted(row.get(0).map_err(sqlite_error)?),
                        subscription_id: SubscriptionId::from_trusted(row.get(1).map_err(sqlite_error)?),
                        message_id: MessageId::from_trusted(row.get(2).map_err(sqlite_error)?),
                        payload: bytes::Bytes::from(row.get::<_, Vec<u8>>(3).map_err(sqlite_error)?),
                        attempts: u32::try_from(row.get::<_, i64>(4).map_err(sqlite_error)?).unwrap_or(0),
                        lease_until: claim.lease.until,
                    });
                }
            }
            Ok(jobs)
        })
        .await
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
        let worker = worker.to_owned();
        let records = records.to_vec();
        let released = released.to_vec();
        let health: Vec<(SubscriptionId, Health)> =
            health_by_subscription(health).into_iter().map(|(id, h)| (id.clone(), h)).collect();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_error)?;
            {
                let mut update = tx
                    .prepare_cached(
                        "UPDATE deliveries SET state = ?2, attempts = ?3, next_attempt_at = ?4, locked_until = NULL, \
                           locked_by = NULL, last_status = ?5, last_error = ?6, updated_at = ?7, \
                           finished_at = CASE WHEN ?2 = 'pending' THEN NULL ELSE ?7 END \
                         WHERE id = ?1 AND locked_by = ?8 AND locked_until = ?9",
                    )
                    .map_err(sqlite_error)?;
                let mut attempt = tx
                    .prepare_cached(
                        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, latency_ms, status_code, \
                           error, response_excerpt) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(sqlite_error)?;
                for r in &records {
                    let status = r.attempt.status_code.map(i64::from);
                    let written = update
                        .execute(params![
                            r.id.as_str(),
                            r.state.as_str(),
                            i64::from(r.attempts),
                            r.next_attempt_at,
                            status,
                            r.attempt.error,
                            now,
                            worker,
                            r.lease_until
                        ])
                        .map_err(sqlite_error)?;
                    // Under a lost lease another worker owns the delivery
                    // and logs its own attempts.
                    if written == 0 {
                        continue;
                    }
                    attempt
                        .execute(params![
                            r.id.as_str(),
                            i64::from(r.attempt.attempt),
                            r.attempt.started_at,
                            r.attempt.latency_ms,
                            status,
                            r.attempt.error,
                            r.attempt.response_excerpt
                        ])
                        .map_err(sqlite_error)?;
                }
                let mut release = tx
                    .prepare_cached(
                        "UPDATE deliveries SET locked_until = NULL, locked_by = NULL \
                         WHERE id = ?1 AND locked_by = ?2 AND locked_until = ?3",
                    )
                    .map_err(sqlite_error)?;
                for (id, lease) in &released {
                    release.execute(params![id.as_str(), worker, lease]).map_err(sqlite_error)?;
                }
            }
            let mut disabled = Vec::new();
            for (id, h) in &health {
                match h {
                    Health::Succeeded => {
                        tx.execute(
                            "UPDATE subscriptions SET failing_since = NULL WHERE id = ?1 AND failing_since IS NOT NULL",
                            [id.as_str()],
                        )
                        .map_err(sqlite_error)?;
                    }
                    Health::Failed => {
                        tx.execute(
                            "UPDATE subscriptions SET failing_since = COALESCE(failing_since, ?2) WHERE id = ?1",
                            params![id.as_str(), now],
                        )
                        .map_err(sqlite_error)?;
                        let reason = failing_reason(disable_after);
                        let n = tx
                            .execute(
                                "UPDATE subscriptions SET enabled = 0, disabled_reason = ?3, updated_at = ?2 \
                                 WHERE id = ?1 AND enabled AND failing_since <= ?2 - ?4",
                                params![id.as_str(), now, reason, disable_after],
                            )
                            .map_err(sqlite_error)?;
                        if n == 1 {
                            disabled.push(Disabled { subscription_id: id.clone(), reason });
                        }
                    }
                    Health::Gone => {
                        let n = tx
                            .execute(
                                "UPDATE subscriptions SET enabled = 0, disabled_reason = ?2, updated_at = ?3 \
                                 WHERE id = ?1 AND enabled",
                                params![id.as_str(), GONE_REASON, now],
                            )
                            .map_err(sqlite_error)?;
                        if n == 1 {
                            disabled.push(Disabled { subscription_id: id.clone(), reason: GONE_REASON.to_owned() });
                        }
                    }
                }
            }
            tx.commit().map_err(sqlite_error)?;
            Ok(disabled)
        })
        .await
    }

    async fn insert_deliveries(&self, rows: &[DeliveryRow], lease: Option<&Lease>) -> Result<(), StoreError> {
        // DeliveryRow is not Clone: copy the fields the insert needs.
        let rows: Vec<DeliveryRow> = rows
            .iter()
            .map(|d| DeliveryRow {
                id: d.id.clone(),
                subscription_id: d.subscription_id.clone(),
                message_id: d.message_id.clone(),
                seq: d.seq,
                kind: d.kind,
                payload: d.payload.clone(),
                created_at: d.created_at,
            })
            .collect();
        let admitted = lease.map_or_else(Admitted::nothing, |l| Admitted::all(l.clone(), rows.len()));
        self.write(move |conn| {
            let tx = conn.transaction().map_err(sqlite_error)?;
            insert_deliveries(&tx, &rows, &admitted)?;
            tx.commit().map_err(sqlite_error)
        })
        .await
    }

    async fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<DeliverySummary>, StoreError> {
        let q = q.clone();
        self.read(move |conn| {
            let sql = list_deliveries_query(q.state, |n| format!("?{n}"));
            let mut stmt = conn.prepare_cached(&sql).map_err(sqlite_error)?;
            let (after_at, after_id) = match &q.after {
                Some((at, id)) => (Some(*at), Some(id.as_str().to_owned())),
                None => (None, None),
            };
            let mut rows = stmt
                .query(params![q.subscription_id.as_str(), after_at, after_id, q.limit as i64 + 1])
                .map_err(sqlite_error)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sqlite_error)? {
                out.push(decode_delivery(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn get_delivery(
        &self,
        id: &DeliveryId,
    ) -> Result<Option<(DeliverySummary, Vec<u8>, Vec<AttemptRecord>)>, StoreError> {
        let id = id.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {DELIVERY_COLUMNS}, payload FROM deliveries WHERE id = ?1"))
                .map_err(sqlite_error)?;
            let mut rows = stmt.query([id.as_str()]).map_err(sqlite_error)?;
            let Some(row) = rows.next().map_err(sqlite_error)? else { return Ok(None) };
            let summary = decode_delivery(row)?;
            let payload: Vec<u8> = row.get(14).map_err(sqlite_error)?;
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts WHERE delivery_id = ?1 ORDER BY id"
                ))
                .map_err(sqlite_error)?;
            let mut rows = stmt.query([id.as_str()]).map_err(sqlite_error)?;
            let mut attempts = Vec::new();
            while let Some(row) = rows.next().map_err(sqlite_error)? {
                attempts.push(decode_attempt(row)?);
            }
            Ok(Some((summary, payload, attempts)))
        })
        .await
    }

    async fn retry_delivery(&self, id: &DeliveryId, now: i64) -> Result<RetryResult, StoreError> {
        let id = id.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_error)?;
            let found: Option<(String, Option<i64>)> = tx
                .query_row("SELECT state, locked_until FROM deliveries WHERE id = ?1", [id.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(sqlite_error)?;
            let Some((state, locked_until)) = found else { return Ok(RetryResult::NotFound) };
            if state == "pending" && locked_until.is_some_and(|t| t > now) {
                return Ok(RetryResult::InFlight);
            }
            let summary = {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "UPDATE deliveries SET state = 'pending', next_attempt_at = ?2, locked_until = NULL, \
                           locked_by = NULL, finished_at = NULL, updated_at = ?2 WHERE id = ?1 \
                         RETURNING {DELIVERY_COLUMNS}"
                    ))
                    .map_err(sqlite_error)?;
                let mut rows = stmt.query(params![id.as_str(), now]).map_err(sqlite_error)?;
                match rows.next().map_err(sqlite_error)? {
                    Some(row) => decode_delivery(row)?,
                    None => return Ok(RetryResult::NotFound),
                }
            };
            tx.commit().map_err(sqlite_error)?;
            Ok(RetryResult::Queued(Box::new(summary)))
        })
        .await
    }

    async fn delivery_stats(&self) -> Result<DeliveryStats, StoreError> {
        self.read(|conn| {
            let mut stats = conn
                .query_row(
                    "SELECT (SELECT count(*) FROM deliveries WHERE state = 'pending'), \
                       (SELECT min(next_attempt_at) FROM deliveries WHERE state = 'pending')",
                    [],
                    |r| Ok(DeliveryStats { pending: r.get(0)?, oldest_due: r.get(1)?, by_subscription: Vec::new() }),
                )
                .map_err(sqlite_error)?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT subscription_id, count(*), min(created_at) FROM deliveries WHERE state = 'pending' \
                     GROUP BY subscription_id",
                )
                .map_err(sqlite_error)?;
            let mut rows = stmt.query([]).map_err(sqlite_error)?;
            while let Some(r) = rows.next().map_err(sqlite_error)? {
                let id: String = r.get(0).map_err(sqlite_error)?;
                let id = SubscriptionId::parse(&id).map_err(|e| StoreError::other(e.to_string()))?;
                stats.by_subscription.push((id, r.get(1).map_err(sqlite_error)?, r.get(2).map_err(sqlite_error)?));
            }
            Ok(stats)
        })
        .await
    }

    async fn listen(
        &self,
        _wake: Arc<tokio::sync::Notify>,
        _changed: Arc<tokio::sync::Notify>,
        _stop: tokio_util::sync::CancellationToken,
    ) {
        // One process: new work and changes are signalled in-process.
    }
}

fn insert_deliveries(conn: &Connection, rows: &[DeliveryRow], admitted: &Admitted) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO deliveries (id, subscription_id, message_id, seq, kind, payload, state, attempts, \
               next_attempt_at, locked_until, locked_by, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?8, ?9, ?7, ?7)",
        )
        .map_err(sqlite_error)?;
    for (i, d) in rows.iter().enumerate() {
        let lease = admitted.lease_of(i);
        stmt.execute(params![
            d.id.as_str(),
            d.subscription_id.as_str(),
            d.message_id.as_str(),
            d.seq,
            d.kind.as_str(),
            d.payload,
            d.created_at,
            lease.map(|l| l.until),
            lease.map(|l| l.worker.as_str()),
        ])
        .map_err(sqlite_error)?;
    }
    Ok(())
}

fn subscription_params(c: &SubscriptionColumns<'_>) -> [rusqlite::types::Value; 16] {
    use rusqlite::types::Value as V;
    let text = |s: Option<&str>| s.map_or(V::Null, |s| V::Text(s.to_owned()));
    let int = |i: Option<i64>| i.map_or(V::Null, V::Integer);
    [
        V::Text(c.id.to_owned()),
        V::Text(c.url.to_owned()),
        text(c.description),
        text(c.statuses.as_deref()),
        V::Integer(i64::from(c.all_events)),
        V::Text(c.scheme.to_owned()),
        V::Text(c.secret.to_owned()),
        V::Text(c.previous_secrets.clone()),
        V::Text(c.headers.clone()),
        V::Integer(i64::from(c.enabled)),
        text(c.disabled_reason),
        int(c.max_in_flight),
        int(c.rate_limit_per_second),
        int(c.failing_since),
        V::Integer(c.created_at),
        V::Integer(c.updated_at),
    ]
}

fn load(tx: &Transaction<'_>, lookups: &Lookups) -> Result<Loaded, StoreError> {
    let cols = message_select_list("m");
    let mut loaded = Loaded::default();
    let mut seen: HashSet<MessageId> = HashSet::new();
    let mut keep = |record: MessageRecord, loaded: &mut Loaded| {
        if seen.insert(record.id.clone()) {
            loaded.messages.push(record);
        }
    };
    {
        let mut stmt =
            tx.prepare_cached(&format!("SELECT {cols} FROM messages m WHERE m.id = ?1")).map_err(sqlite_error)?;
        for id in &lookups.ids {
            let mut rows = stmt.query([id.as_str()]).map_err(sqlite_error)?;
            if let Some(row) = rows.next().map_err(sqlite_error)? {
                keep(decode_message(row)?, &mut loaded);
            }
        }
    }
    {
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT {cols} FROM messages m WHERE m.provider = ?1 AND m.provider_message_id = ?2"
            ))
            .map_err(sqlite_error)?;
        for r in &lookups.provider_refs {
            let mut rows = stmt.query([r.provider.as_str(), r.message_id.as_str()]).map_err(sqlite_error)?;
            if let Some(row) = rows.next().map_err(sqlite_error)? {
                keep(decode_message(row)?, &mut loaded);
            }
        }
    }
    {
        let mut stmt = tx
            .prepare_cached(&format!("SELECT {cols} FROM messages m WHERE m.idempotency_key = ?1"))
            .map_err(sqlite_error)?;
        for key in &lookups.idempotency_keys {
            let mut rows = stmt.query([key.as_str()]).map_err(sqlite_error)?;
            if let Some(row) = rows.next().map_err(sqlite_error)? {
                keep(decode_message(row)?, &mut loaded);
            }
        }
    }
    {
        let mut stmt = tx.prepare_cached("SELECT 1 FROM message_events WHERE dedupe_key = ?1").map_err(sqlite_error)?;
        for key in &lookups.dedupe_keys {
            if stmt.query_row([key.as_str()], |_| Ok(())).optional().map_err(sqlite_error)?.is_some() {
                loaded.existing_dedupe_keys.insert(key.clone());
            }
        }
    }
    {
        let mut stmt = tx
            .prepare_cached("SELECT body_hash FROM callback_tokens WHERE source = ?1 AND token = ?2")
            .map_err(sqlite_error)?;
        for (source, token) in &lookups.tokens {
            let hash: Option<String> =
                stmt.query_row([source, token], |r| r.get(0)).optional().map_err(sqlite_error)?;
            if let Some(hash) = hash {
                loaded.tokens.insert((source.clone(), token.clone()), hash);
            }
        }
    }
    let mut stmt = tx
        .prepare_cached("SELECT id, statuses, all_events FROM subscriptions WHERE enabled = 1")
        .map_err(sqlite_error)?;
    let mut rows = stmt.query([]).map_err(sqlite_error)?;
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        let (id, statuses, all_events) =
            (row.get(0).map_err(sqlite_error)?, row.get(1).map_err(sqlite_error)?, row.get(2).map_err(sqlite_error)?);
        loaded.subscriptions.extend(subscription_filter(id, statuses, all_events));
    }
    Ok(loaded)
}

fn write(tx: &Transaction<'_>, plan: &Plan) -> Result<(), StoreError> {
    for g in &plan.tokens {
        tx.prepare_cached("INSERT INTO callback_tokens (source, token, body_hash, expires_at) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut s| s.execute(params![g.source, g.token, g.body_hash, g.expires_at]))
            .map_err(sqlite_error)?;
    }
    for (from, _) in &plan.merges {
        tx.prepare_cached("UPDATE messages SET provider_message_id = NULL, idempotency_key = NULL WHERE id = ?1")
            .and_then(|mut s| s.execute([from.as_str()]))
            .map_err(sqlite_error)?;
    }
    let cols = MESSAGE_COLUMNS.join(", ");
    let placeholders = (1..=MESSAGE_COLUMNS.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    let sets = MESSAGE_COLUMNS[1..]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    let insert_sql = format!("INSERT INTO messages ({cols}) VALUES ({placeholders})");
    let update_sql = format!("UPDATE messages SET {sets} WHERE id = ?1");
    for w in &plan.messages {
        let c = MessageColumns::of(&w.record);
        let values = params![
            c.id,
            c.status,
            c.seq,
            c.enqueued_at,
            c.sent_at,
            c.delivered_at,
            c.opened_at,
            c.clicked_at,
            c.reason,
            c.error,
            c.registered,
            c.recipient,
            c.channel,
            c.provider,
            c.provider_message_id,
            c.notification,
            c.event,
            c.list,
            c.tags,
            c.metadata,
            c.idempotency_key,
            c.updated_at,
        ];
        let sql = if w.is_new { &insert_sql } else { &update_sql };
        tx.prepare_cached(sql).and_then(|mut s| s.execute(values)).map_err(sqlite_error)?;
    }
    for (from, into) in &plan.merges {
        // Deliveries keep the id they were sent with.
        tx.prepare_cached("UPDATE message_events SET message_id = ?2 WHERE message_id = ?1")
            .and_then(|mut s| s.execute([from.as_str(), into.as_str()]))
            .map_err(sqlite_error)?;
        for sql in ["DELETE FROM message_tags WHERE message_id = ?1", "DELETE FROM messages WHERE id = ?1"] {
            tx.prepare_cached(sql).and_then(|mut s| s.execute([from.as_str()])).map_err(sqlite_error)?;
        }
    }
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO message_events (message_id, dedupe_key, ts, received_at, kind, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (dedupe_key) DO NOTHING",
            )
            .map_err(sqlite_error)?;
        for e in &plan.events {
            let inserted = stmt
                .execute(params![e.message_id.as_str(), e.dedupe_key, e.ts, e.received_at, e.kind, e.detail])
                .map_err(sqlite_error)?;
            if inserted != 1 {
                // The planner saw this key as new; the two stores must agree
                // that recording it twice is an error, never a silent drop.
                return Err(StoreError::Conflict("an event of this batch was already recorded".into()));
            }
        }
    }
    for w in plan.messages.iter().filter(|w| w.tags_changed) {
        let m = &w.record;
        tx.prepare_cached("DELETE FROM message_tags WHERE message_id = ?1")
            .and_then(|mut s| s.execute([m.id.as_str()]))
            .map_err(sqlite_error)?;
        let mut stmt = tx
            .prepare_cached("INSERT OR IGNORE INTO message_tags (tag, enqueued_at, message_id) VALUES (?1, ?2, ?3)")
            .map_err(sqlite_error)?;
        for tag in &m.fields.tags {
            stmt.execute(params![tag, m.state.milestones.enqueued, m.id.as_str()]).map_err(sqlite_error)?;
        }
    }
    Ok(())
}
