-- A list filter on a column combined with a status (`notification=...&status=SENT`)
-- walks the column's index and checks each message's status. When few of
-- those messages have the status, that check visited the table once per
-- entry: tens of thousands of random reads for a page that may be empty.
-- Carrying the status in the index answers the check from the index alone
-- (an index-only scan picks the page's ids, then only those rows are read).
-- The status is already indexed, so a status change writes these entries
-- either way.
DROP INDEX IF EXISTS messages_recipient;
DROP INDEX IF EXISTS messages_notification;
DROP INDEX IF EXISTS messages_event;
DROP INDEX IF EXISTS messages_list;
DROP INDEX IF EXISTS messages_provider;
CREATE INDEX messages_recipient ON messages (recipient, enqueued_at, id) INCLUDE (status) WHERE recipient IS NOT NULL;
CREATE INDEX messages_notification ON messages (notification, enqueued_at, id) INCLUDE (status) WHERE notification IS NOT NULL;
CREATE INDEX messages_event ON messages (event, enqueued_at, id) INCLUDE (status) WHERE event IS NOT NULL;
CREATE INDEX messages_list ON messages (list, enqueued_at, id) INCLUDE (status) WHERE list IS NOT NULL;
CREATE INDEX messages_provider ON messages (provider, enqueued_at, id) INCLUDE (status) WHERE provider IS NOT NULL;

-- Correlation looks a message up by (provider, provider_message_id). On an
-- empty table that lookup costs the same through messages_provider as through
-- this unique index, and a plan made then (prepared statements keep generic
-- plans) would go on reading every message of the provider; between equal
-- costs PostgreSQL takes the most recently created index, so this one is
-- created again after the indexes above. tests/it/plans.rs refuses any key
-- lookup whose index yields rows it must then filter by key.
DROP INDEX IF EXISTS messages_provider_ref;
CREATE UNIQUE INDEX messages_provider_ref ON messages (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
