-- A list filter on a column combined with a status (`notification=...&status=SENT`)
-- walks the column's index and checks each message's status. When few of
-- those messages have the status, that check read the table once per entry.
-- With the status as the last key column (after the unique id, so the order
-- is unchanged) the index covers the check and only the page's rows are read.
DROP INDEX IF EXISTS messages_recipient;
DROP INDEX IF EXISTS messages_notification;
DROP INDEX IF EXISTS messages_event;
DROP INDEX IF EXISTS messages_list;
DROP INDEX IF EXISTS messages_provider;
CREATE INDEX messages_recipient ON messages (recipient, enqueued_at, id, status) WHERE recipient IS NOT NULL;
CREATE INDEX messages_notification ON messages (notification, enqueued_at, id, status) WHERE notification IS NOT NULL;
CREATE INDEX messages_event ON messages (event, enqueued_at, id, status) WHERE event IS NOT NULL;
CREATE INDEX messages_list ON messages (list, enqueued_at, id, status) WHERE list IS NOT NULL;
CREATE INDEX messages_provider ON messages (provider, enqueued_at, id, status) WHERE provider IS NOT NULL;
