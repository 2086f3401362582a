-- Notifications and their per-channel delivery state, on PostgreSQL: the tables of
-- ../0001_notifications.sql with PostgreSQL's types. Times are UTC in columns without a zone,
-- written by Switchboard with now() AT TIME ZONE 'UTC'. User ids are kept as text: they are the
-- JWT's `sub`, whatever type the application's users.id has.
CREATE TABLE IF NOT EXISTS notifications (
    id BIGSERIAL PRIMARY KEY,
    user_id VARCHAR(64) NOT NULL,
    type VARCHAR(64) NOT NULL,
    title VARCHAR(255) NOT NULL,
    message TEXT NOT NULL,
    data JSONB NULL,
    created_at TIMESTAMP(3) NOT NULL,
    read_at TIMESTAMP(3) NULL
);

-- unread count and mark-read: WHERE user_id = ? AND read_at IS NULL
CREATE INDEX IF NOT EXISTS notifications_user_unread ON notifications (user_id, read_at);

CREATE TABLE IF NOT EXISTS notification_deliveries (
    notification_id BIGINT NOT NULL
        CONSTRAINT notification_deliveries_notification
        REFERENCES notifications (id) ON DELETE CASCADE,
    -- the recipient again, so the pending list of a user is one index range
    user_id VARCHAR(64) NOT NULL,
    channel VARCHAR(16) NOT NULL,
    status VARCHAR(16) NOT NULL,
    delivered_at TIMESTAMP(3) NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (notification_id, channel)
);

-- undelivered on connect: WHERE user_id = ? AND channel = 'IN_APP' AND status = 'PENDING' ORDER BY notification_id
CREATE INDEX IF NOT EXISTS notification_deliveries_pending
    ON notification_deliveries (user_id, channel, status, notification_id);
