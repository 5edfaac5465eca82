-- API keys an operator can manage: each has an id to revoke it by, the first
-- characters of the key to recognise it by, scopes, and when it was last
-- used. Keys stored before scopes existed keep every right they had.
ALTER TABLE api_keys RENAME COLUMN label TO name;
ALTER TABLE api_keys
    ADD COLUMN id TEXT COLLATE "C",
    ADD COLUMN prefix TEXT,
    ADD COLUMN scopes TEXT NOT NULL DEFAULT 'admin',
    ADD COLUMN last_used_at BIGINT;
UPDATE api_keys SET id = 'key_' || substr(hash, 1, 32) WHERE id IS NULL;
ALTER TABLE api_keys ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX api_keys_id ON api_keys (id);

-- Single-use callback tokens (Mailgun signs a timestamp and a token, not the
-- event): each is remembered, with a hash of the body it came with, for as
-- long as its signature is accepted, so that the token cannot carry another
-- body. Shared by every process.
CREATE TABLE callback_tokens (
    source     TEXT COLLATE "C" NOT NULL,
    token      TEXT COLLATE "C" NOT NULL,
    body_hash  TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (source, token)
);
CREATE INDEX callback_tokens_expiry ON callback_tokens (expires_at);
