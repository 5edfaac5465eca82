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
