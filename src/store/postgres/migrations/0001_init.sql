-- hookrelay schema, PostgreSQL. Times are epoch milliseconds (BIGINT) on
-- both backends so that rows, cursors and comparisons are identical.

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    status              TEXT NOT NULL,
    seq                 BIGINT NOT NULL,
    enqueued_at         BIGINT NOT NULL,
    sent_at             BIGINT,
    delivered_at        BIGINT,
    opened_at           BIGINT,
    clicked_at          BIGINT,
    reason              TEXT,
    error               TEXT,
    registered          BOOLEAN NOT NULL,
    recipient           TEXT,
    channel             TEXT,
    provider            TEXT,
    provider_message_id TEXT,
    notification        TEXT,
    event               TEXT,
    list                TEXT,
    tags                TEXT NOT NULL DEFAULT '[]',
    metadata            TEXT,
    idempotency_key     TEXT,
    updated_at          BIGINT NOT NULL
);

-- Keyset paging (newest first) for every filter of GET /messages.
CREATE INDEX messages_enqueued ON messages (enqueued_at, id);
CREATE INDEX messages_status ON messages (status, enqueued_at, id);
CREATE INDEX messages_recipient ON messages (recipient, enqueued_at, id) WHERE recipient IS NOT NULL;
CREATE INDEX messages_notification ON messages (notification, enqueued_at, id) WHERE notification IS NOT NULL;
CREATE INDEX messages_event ON messages (event, enqueued_at, id) WHERE event IS NOT NULL;
CREATE INDEX messages_list ON messages (list, enqueued_at, id) WHERE list IS NOT NULL;
CREATE INDEX messages_provider ON messages (provider, enqueued_at, id) WHERE provider IS NOT NULL;
-- Correlation of callbacks that carry only the provider's id.
CREATE UNIQUE INDEX messages_provider_ref ON messages (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE UNIQUE INDEX messages_idempotency_key ON messages (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- One row per (tag, message), carrying the paging key so a tag filter pages
-- straight off this index.
CREATE TABLE message_tags (
    tag         TEXT NOT NULL,
    enqueued_at BIGINT NOT NULL,
    message_id  TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    PRIMARY KEY (tag, enqueued_at, message_id)
);
CREATE INDEX message_tags_message ON message_tags (message_id);

-- The history: every event ever recorded, deduplicated by key.
CREATE TABLE message_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  TEXT NOT NULL REFERENCES messages (id),
    dedupe_key  TEXT NOT NULL UNIQUE,
    ts          BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX message_events_message ON message_events (message_id, ts, id);

CREATE TABLE subscriptions (
    id                    TEXT PRIMARY KEY,
    url                   TEXT NOT NULL,
    description           TEXT,
    statuses              TEXT,
    all_events            BOOLEAN NOT NULL DEFAULT FALSE,
    signature_scheme      TEXT NOT NULL,
    secret                TEXT NOT NULL,
    previous_secrets      TEXT NOT NULL DEFAULT '[]',
    headers               TEXT NOT NULL DEFAULT '{}',
    enabled               BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason       TEXT,
    max_in_flight         BIGINT,
    rate_limit_per_second BIGINT,
    failing_since         BIGINT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);

-- The transactional outbox: one row per (transition, subscription), written
-- in the same transaction as the transition.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    message_id      TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    payload         BYTEA NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    locked_until    BIGINT,
    locked_by       TEXT,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT
);
-- Due work, claimed oldest first, in two lanes so that a backlog of
-- retries never starves first attempts.
CREATE INDEX deliveries_due_first ON deliveries (next_attempt_at) WHERE state = 'pending' AND attempts = 0;
CREATE INDEX deliveries_due_retry ON deliveries (next_attempt_at) WHERE state = 'pending' AND attempts > 0;
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, created_at, id);
CREATE INDEX deliveries_subscription_state ON deliveries (subscription_id, state, created_at, id);
CREATE INDEX deliveries_message ON deliveries (message_id);

CREATE TABLE delivery_attempts (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt          BIGINT NOT NULL,
    started_at       BIGINT NOT NULL,
    latency_ms       BIGINT,
    status_code      BIGINT,
    error            TEXT,
    response_excerpt TEXT
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);

-- API keys: only SHA-256 hashes are stored.
CREATE TABLE api_keys (
    hash       TEXT PRIMARY KEY,
    label      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
