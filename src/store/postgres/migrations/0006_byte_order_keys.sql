-- Ids, keys and filter values are compared only for equality and as paging
-- tie-breakers, never sorted for people to read. Under a linguistic database
-- collation (en_US.UTF-8, C.UTF-8, ...) every comparison in their indexes
-- went through the C library's strcoll, about a sixth of PostgreSQL's time
-- when ingesting batches. Byte order ("C") compares with memcmp, and matches
-- SQLite's, so both backends page in the same order.
ALTER TABLE messages
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C",
    ALTER COLUMN recipient TYPE TEXT COLLATE "C",
    ALTER COLUMN provider TYPE TEXT COLLATE "C",
    ALTER COLUMN provider_message_id TYPE TEXT COLLATE "C",
    ALTER COLUMN notification TYPE TEXT COLLATE "C",
    ALTER COLUMN event TYPE TEXT COLLATE "C",
    ALTER COLUMN list TYPE TEXT COLLATE "C",
    ALTER COLUMN idempotency_key TYPE TEXT COLLATE "C";
ALTER TABLE message_tags
    ALTER COLUMN tag TYPE TEXT COLLATE "C",
    ALTER COLUMN message_id TYPE TEXT COLLATE "C";
ALTER TABLE message_events
    ALTER COLUMN message_id TYPE TEXT COLLATE "C",
    ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE subscriptions
    ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE deliveries
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN subscription_id TYPE TEXT COLLATE "C",
    ALTER COLUMN message_id TYPE TEXT COLLATE "C",
    ALTER COLUMN state TYPE TEXT COLLATE "C";
ALTER TABLE delivery_attempts
    ALTER COLUMN delivery_id TYPE TEXT COLLATE "C";
