//! The PostgreSQL store's statements on the tables that grow (messages,
//! their history and tags, deliveries and their attempts).
//!
//! Statements are prepared once per connection and PostgreSQL soon runs
//! them with a generic plan: one made without the parameters' values, and
//! possibly while a table was still empty, then kept as the table grows
//! until autovacuum next analyzes it. A plan that was right for an empty
//! table (a sequential scan, a hash join) is ruinous at a million rows, and
//! every statement here is a key lookup or an index-ordered scan. So the
//! store's sessions run with [`PLANNER_SETTINGS`] (no sequential scans, hash
//! joins or merge joins where an index path exists), and lookups by a list
//! of keys probe once per key (`LATERAL (...) OFFSET 0`). The test suite
//! plans every statement generically on an empty database under these
//! settings and refuses a sequential scan of a growing table or any hash or
//! merge join.

use std::sync::OnceLock;

use crate::domain::outbox::DeliveryState;
use crate::store::codec::{ATTEMPT_COLUMNS, DELIVERY_COLUMNS, MESSAGE_COLUMNS, message_select_list};
use crate::store::query::{MessageQuery, list_deliveries_query, list_query};

/// Session settings for the store's connections (see the module's notes).
/// JIT compilation is off too: it pays off for long analytical queries, and
/// a disabled plan node's cost would trigger it on every small statement.
pub const PLANNER_SETTINGS: &[(&str, &str)] =
    &[("enable_seqscan", "off"), ("enable_hashjoin", "off"), ("enable_mergejoin", "off"), ("jit", "off")];

/// The tables that grow without bound; no statement may scan them.
pub const LARGE_TABLES: &[&str] =
    &["messages", "message_events", "message_tags", "deliveries", "delivery_attempts", "callback_tokens"];

fn cached(cell: &'static OnceLock<String>, make: impl FnOnce() -> String) -> &'static str {
    cell.get_or_init(make)
}

pub fn get_message() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    cached(&SQL, || format!("SELECT {} FROM messages m WHERE m.id = $1", message_select_list("m")))
}

pub const HISTORY: &str = "SELECT e.ts, e.kind, e.detail FROM messages m \
     LEFT JOIN LATERAL (SELECT ts, kind, detail, id FROM message_events \
       WHERE message_id = m.id AND ($2::text IS NULL OR kind = $2) OFFSET 0) e ON TRUE \
     WHERE m.id = $1 ORDER BY e.ts, e.id";

/// The messages a batch is about, locked in id order (the same in every
/// writer): by id, by provider reference, by idempotency key.
pub fn lock_messages() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    cached(&SQL, || {
        format!(
            "WITH wanted AS ( \
               SELECT k.id FROM UNNEST($1::text[]) AS k(id) \
               UNION SELECT x.id FROM UNNEST($2::text[], $3::text[]) AS r(provider, pmid), \
                 LATERAL (SELECT id FROM messages \
                          WHERE provider = r.provider AND provider_message_id = r.pmid OFFSET 0) x \
               UNION SELECT x.id FROM UNNEST($4::text[]) AS k(key), \
                 LATERAL (SELECT id FROM messages WHERE idempotency_key = k.key OFFSET 0) x) \
             SELECT {} FROM (SELECT id FROM wanted ORDER BY id) w, \
               LATERAL (SELECT * FROM messages WHERE id = w.id OFFSET 0 FOR UPDATE) m",
            message_select_list("m")
        )
    })
}

/// The single-use callback tokens of a batch already recorded.
pub const EXISTING_TOKENS: &str = "SELECT c.source, c.token, c.body_hash FROM UNNEST($1::text[], $2::text[]) \
     AS k(source, token), LATERAL (SELECT source, token, body_hash FROM callback_tokens \
       WHERE source = k.source AND token = k.token OFFSET 0) c";

/// Forgets single-use tokens whose signatures would be refused as stale.
pub const PURGE_TOKENS: &str = "DELETE FROM callback_tokens WHERE expires_at < $1";

/// Remembers single-use tokens. No `ON CONFLICT`: a token another batch
/// recorded meanwhile is a unique violation, and the retried batch sees it.
pub const INSERT_TOKENS: &str = "INSERT INTO callback_tokens (source, token, body_hash, expires_at) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[])";

pub const EXISTING_DEDUPE_KEYS: &str = "SELECT e.dedupe_key FROM UNNEST($1::text[]) AS k(key), \
     LATERAL (SELECT dedupe_key FROM message_events WHERE dedupe_key = k.key OFFSET 0) e";

/// The subscriptions a batch fans out to, locked against deletion until it
/// commits (deliveries have no foreign key: one lock per subscription and
/// batch instead of one check per row).
pub const ENABLED_SUBSCRIPTIONS: &str =
    "SELECT id, statuses, all_events FROM subscriptions WHERE enabled FOR KEY SHARE";

/// Locks subscriptions against deletion while deliveries are added for them.
pub const LOCK_SUBSCRIPTIONS: &str = "SELECT id FROM subscriptions WHERE id = ANY($1) FOR KEY SHARE";

/// A subscription's attempts and deliveries, deleted with it.
pub const DELETE_SUBSCRIPTION_ATTEMPTS: &str =
    "DELETE FROM delivery_attempts a USING deliveries d WHERE d.subscription_id = $1 AND a.delivery_id = d.id";
pub const DELETE_SUBSCRIPTION_DELIVERIES: &str = "DELETE FROM deliveries WHERE subscription_id = $1";

const MESSAGE_UNNEST: &str = "UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], \
     $7::int8[], $8::int8[], $9::text[], $10::text[], $11::bool[], $12::text[], $13::text[], $14::text[], \
     $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::int8[])";

pub fn insert_messages() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    cached(&SQL, || format!("INSERT INTO messages ({}) SELECT * FROM {MESSAGE_UNNEST}", MESSAGE_COLUMNS.join(", ")))
}

pub fn update_messages() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    cached(&SQL, || {
        let sets = MESSAGE_COLUMNS[1..].iter().map(|c| format!("{c} = u.{c}")).collect::<Vec<_>>().join(", ");
        format!(
            "UPDATE messages m SET {sets} FROM {MESSAGE_UNNEST} AS u({}) WHERE m.id = u.id",
            MESSAGE_COLUMNS.join(", ")
        )
    })
}

pub const INSERT_EVENTS: &str = "INSERT INTO message_events (message_id, dedupe_key, ts, received_at, kind, detail) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[]) \
     ON CONFLICT (dedupe_key) DO NOTHING";

pub const DELETE_TAGS: &str = "DELETE FROM message_tags WHERE message_id = ANY($1)";

pub const INSERT_TAGS: &str = "INSERT INTO message_tags (tag, enqueued_at, message_id) \
     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[]) ON CONFLICT DO NOTHING";

pub const INSERT_DELIVERIES: &str = "INSERT INTO deliveries (id, subscription_id, message_id, seq, kind, payload, \
       state, attempts, next_attempt_at, locked_until, locked_by, created_at, updated_at) \
     SELECT u.id, u.sub, u.msg, u.seq, u.kind, u.payload, 'pending', 0, u.created, u.until, u.worker, u.created, \
       u.created \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::bytea[], $7::int8[], $8::int8[], \
       $9::text[]) AS u(id, sub, msg, seq, kind, payload, created, until, worker)";

/// A record merged into another gives up its unique keys first.
pub const CLEAR_MERGED_KEYS: &str =
    "UPDATE messages SET provider_message_id = NULL, idempotency_key = NULL WHERE id = ANY($1)";
pub const MOVE_EVENTS: &str = "UPDATE message_events SET message_id = $2 WHERE message_id = $1";
pub const DELETE_MESSAGES: &str = "DELETE FROM messages WHERE id = ANY($1)";

/// Due deliveries of one lane (`d.attempts = 0` or `d.attempts > 0`),
/// oldest first, leased to a worker.
pub fn claim(first_attempts: bool) -> &'static str {
    static FIRST: OnceLock<String> = OnceLock::new();
    static RETRIES: OnceLock<String> = OnceLock::new();
    let (cell, lane) = if first_attempts { (&FIRST, "d.attempts = 0") } else { (&RETRIES, "d.attempts > 0") };
    cached(cell, || {
        format!(
            "WITH due AS ( \
               SELECT d.id FROM deliveries d \
               WHERE d.state = 'pending' AND {lane} AND d.next_attempt_at <= $1 AND d.kind <> 'test' \
                 AND (d.locked_until IS NULL OR d.locked_until < $1) \
                 AND NOT (d.subscription_id = ANY($4)) \
                 AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = d.subscription_id AND s.enabled) \
               ORDER BY d.next_attempt_at LIMIT $2 FOR UPDATE OF d SKIP LOCKED) \
             UPDATE deliveries d SET locked_until = $3, locked_by = $5 FROM due WHERE d.id = due.id \
             RETURNING d.id, d.subscription_id, d.message_id, d.payload, d.attempts"
        )
    })
}

/// Outcomes written only under the lease each attempt ran with, and the
/// attempts of the deliveries written.
pub const RECORD_ATTEMPTS: &str = "WITH written AS ( \
       UPDATE deliveries d SET state = u.state, attempts = u.attempts, next_attempt_at = u.next_at, \
         locked_until = NULL, locked_by = NULL, last_status = u.status, last_error = u.error, \
         updated_at = $7::int8, finished_at = CASE WHEN u.state = 'pending' THEN NULL ELSE $7::int8 END \
       FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::text[], $9::int8[], \
                   $10::int8[], $11::int8[], $12::int8[], $13::text[]) \
         AS u(id, state, attempts, next_at, status, error, lease, attempt, started, latency, excerpt) \
       WHERE d.id = u.id AND d.locked_by = $8 AND d.locked_until = u.lease \
       RETURNING d.id, u.attempt, u.started, u.latency, u.status, u.error, u.excerpt) \
     INSERT INTO delivery_attempts (delivery_id, attempt, started_at, latency_ms, status_code, error, \
       response_excerpt) \
     SELECT id, attempt, started, latency, status, error, excerpt FROM written";

/// Subscription health after a round of attempts, one statement per kind
/// of outcome: a success clears the failure record, a failure starts it, a
/// subscription failing for longer than `$4` ms, or answering 410, is
/// disabled (their ids returned).
pub const HEALTHY: &str =
    "UPDATE subscriptions SET failing_since = NULL WHERE id = ANY($1) AND failing_since IS NOT NULL";
pub const FAILING: &str = "UPDATE subscriptions SET failing_since = COALESCE(failing_since, $2) WHERE id = ANY($1)";
pub const DISABLE_FAILING: &str = "UPDATE subscriptions SET enabled = FALSE, disabled_reason = $3, updated_at = $2::int8 \
     WHERE id = ANY($1) AND enabled AND failing_since <= $2::int8 - $4::int8 RETURNING id";
pub const DISABLE_GONE: &str = "UPDATE subscriptions SET enabled = FALSE, disabled_reason = $2, updated_at = $3 \
     WHERE id = ANY($1) AND enabled RETURNING id";

pub const RELEASE: &str = "UPDATE deliveries d SET locked_until = NULL, locked_by = NULL \
     FROM UNNEST($1::text[], $3::int8[]) AS u(id, lease) \
     WHERE d.id = u.id AND d.locked_by = $2 AND d.locked_until = u.lease";

pub fn list_deliveries(state: Option<DeliveryState>) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        let placeholder = |n: usize| format!("${n}");
        std::iter::once(None)
            .chain(DeliveryState::ALL.into_iter().map(Some))
            .map(|state| list_deliveries_query(state, placeholder))
            .collect()
    });
    let at = state.map_or(0, |s| 1 + DeliveryState::ALL.iter().position(|x| *x == s).unwrap_or(0));
    &all[at]
}

pub fn get_delivery() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    cached(&SQL, || format!("SELECT {DELIVERY_COLUMNS}, payload FROM deliveries WHERE id = $1"))
}

pub fn delivery_attempts() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    cached(&SQL, || format!("SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts WHERE delivery_id = $1 ORDER BY id"))
}

pub const LOCK_DELIVERY: &str = "SELECT state, locked_until FROM deliveries WHERE id = $1 FOR UPDATE";

pub fn retry_delivery() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    cached(&SQL, || {
        format!(
            "UPDATE deliveries SET state = 'pending', next_attempt_at = $2, locked_until = NULL, locked_by = NULL, \
               finished_at = NULL, updated_at = $2 WHERE id = $1 RETURNING {DELIVERY_COLUMNS}"
        )
    })
}

pub const DELIVERY_STATS: &str = "SELECT (SELECT count(*) FROM deliveries WHERE state = 'pending'), \
       LEAST((SELECT min(next_attempt_at) FROM deliveries WHERE state = 'pending' AND attempts = 0), \
             (SELECT min(next_attempt_at) FROM deliveries WHERE state = 'pending' AND attempts > 0))";

pub const PENDING_BY_SUBSCRIPTION: &str = "SELECT subscription_id, count(*), min(created_at) FROM deliveries \
     WHERE state = 'pending' GROUP BY subscription_id";

/// Every statement above and the message-log queries for each kind of
/// filter, as they are prepared: for the plan check. (Counts are not
/// prepared: each is planned for its own values.)
#[doc(hidden)]
pub fn all() -> Vec<String> {
    let mut out = keyed();
    out.extend(list_queries());
    out
}

/// The message-log queries for each kind of filter. Unlike [`keyed`]
/// statements they may filter what an index yields (a status on a
/// notification's messages), within the page's limit.
#[doc(hidden)]
pub fn list_queries() -> Vec<String> {
    let placeholder = |n: usize| format!("${n}");
    MessageQuery::examples().iter().map(|query| list_query(query, placeholder).0).collect()
}

/// Every statement above: each finds its rows by keys an index holds
/// whole, so none needs to filter what an index yields.
#[doc(hidden)]
pub fn keyed() -> Vec<String> {
    let mut out: Vec<String> = [
        get_message(),
        HISTORY,
        lock_messages(),
        EXISTING_DEDUPE_KEYS,
        EXISTING_TOKENS,
        INSERT_TOKENS,
        PURGE_TOKENS,
        insert_messages(),
        update_messages(),
        INSERT_EVENTS,
        DELETE_TAGS,
        INSERT_TAGS,
        INSERT_DELIVERIES,
        CLEAR_MERGED_KEYS,
        MOVE_EVENTS,
        DELETE_MESSAGES,
        claim(true),
        claim(false),
        RECORD_ATTEMPTS,
        RELEASE,
        DELETE_SUBSCRIPTION_ATTEMPTS,
        DELETE_SUBSCRIPTION_DELIVERIES,
        list_deliveries(None),
        get_delivery(),
        delivery_attempts(),
        LOCK_DELIVERY,
        retry_delivery(),
        DELIVERY_STATS,
        PENDING_BY_SUBSCRIPTION,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    out.extend(DeliveryState::ALL.into_iter().map(|s| list_deliveries(Some(s)).to_owned()));
    out
}
