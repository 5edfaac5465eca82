-- History and tag rows are written only by the batch writer, for messages it
-- holds locked (or inserted in the same transaction); a merged-away record's
-- events are moved and its tags deleted before the record itself. Their
-- foreign keys cost a check per row, each locking the message row again, at
-- the rate of events, the busiest write there is.
ALTER TABLE message_events DROP CONSTRAINT IF EXISTS message_events_message_id_fkey;
ALTER TABLE message_tags DROP CONSTRAINT IF EXISTS message_tags_message_id_fkey;
