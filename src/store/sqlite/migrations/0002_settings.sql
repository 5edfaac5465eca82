-- Values hookrelay generates for itself on first start (the tracking key),
-- kept so that they survive restarts and are shared by every process.
CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
