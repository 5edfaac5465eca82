//! The fresh database each run gets ([`ScratchDb`]: a SQLite file, or a
//! database of its own on the PostgreSQL server, dropped afterwards), and
//! what can be stored in it before a run.

use std::time::Instant;

use hookrelay::scratch::{self, Schema, ScratchDb};

use crate::{BackendArg, RunArgs};

pub async fn fresh_database(args: &RunArgs) -> anyhow::Result<ScratchDb> {
    match args.backend {
        BackendArg::Sqlite => Ok(ScratchDb::sqlite("bench.db")?),
        BackendArg::Postgres => {
            let prefix = format!("hookrelay_bench_{}", std::process::id());
            ScratchDb::postgres(&args.database_url, &prefix, Schema::Empty).await
        }
    }
}

/// Runs a checkpoint on the PostgreSQL server, so that the writes of the
/// previous run (or of the preload) are not flushed during this one. Needs
/// a superuser (or `pg_checkpoint`); without one the run goes on as is.
pub async fn settle(db: &ScratchDb) {
    let Some(admin_url) = db.admin_url() else { return };
    let checkpoint = async { scratch::connect(admin_url).await?.batch_execute("CHECKPOINT").await.map_err(Into::into) };
    if let Err(e) = checkpoint.await as anyhow::Result<()> {
        eprintln!("no CHECKPOINT before the run ({e:#}); earlier writes may still be flushing");
    }
}

/// Stores `n` messages (spread over 30 days, several providers, statuses,
/// recipients, notifications and tags) straight into the database.
pub async fn preload(db: &ScratchDb, backend: BackendArg, n: usize) -> anyhow::Result<()> {
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
            let client = scratch::connect(db.url()).await?;
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
            let path = db.url().trim_start_matches("sqlite://").to_owned();
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
