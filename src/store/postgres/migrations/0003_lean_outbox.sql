-- Deliveries and their attempts are written at the rate of status changes
-- times subscribers. Their foreign keys cost a check per row, each locking
-- the subscription's (or the delivery's) row again, more than the rest of
-- the insert. Instead, the batch writer locks the subscriptions it fans out
-- to once per batch (FOR KEY SHARE), an attempt is logged only for a
-- delivery its outcome update found, and deleting a subscription deletes
-- its deliveries and their attempts itself.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_subscription_id_fkey;
ALTER TABLE delivery_attempts DROP CONSTRAINT IF EXISTS delivery_attempts_delivery_id_fkey;

-- Listing by state serves the states that stay few (pending, failed, dead);
-- succeeded deliveries are listed from deliveries_subscription. A success no
-- longer adds an entry to this index.
DROP INDEX IF EXISTS deliveries_subscription_state;
CREATE INDEX deliveries_subscription_open ON deliveries (subscription_id, state, created_at, id)
    WHERE state <> 'succeeded';

-- Deliveries keep the message id they were sent with when the message is
-- later merged into a registered one (it is the id the subscriber saw), so
-- nothing looks them up by message.
DROP INDEX IF EXISTS deliveries_message;
