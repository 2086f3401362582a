-- Notifications and their per-channel delivery state. Runs on MariaDB 10.11+ and MySQL 8
-- (PostgreSQL: postgres/0001_notifications.sql, the same tables).
-- Times are UTC, written by Switchboard with UTC_TIMESTAMP(3). User ids are kept as text:
-- they are the JWT's `sub`, whatever type the application's users.id has.
CREATE TABLE IF NOT EXISTS notifications (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    user_id VARCHAR(64) NOT NULL,
    type VARCHAR(64) NOT NULL,
    title VARCHAR(255) NOT NULL,
    message TEXT NOT NULL,
    data JSON NULL,
    created_at DATETIME(3) NOT NULL,
    read_at DATETIME(3) NULL,
    PRIMARY KEY (id),
    -- unread count and mark-read: WHERE user_id = ? AND read_at IS NULL
    KEY notifications_user_unread (user_id, read_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS notification_deliveries (
    notification_id BIGINT UNSIGNED NOT NULL,
    -- the recipient again, so the pending list of a user is one index range
    user_id VARCHAR(64) NOT NULL,
    channel VARCHAR(16) NOT NULL,
    status VARCHAR(16) NOT NULL,
    delivered_at DATETIME(3) NULL,
    attempts INT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (notification_id, channel),
    -- undelivered on connect: WHERE user_id = ? AND channel = 'IN_APP' AND status = 'PENDING' ORDER BY notification_id
    KEY notification_deliveries_pending (user_id, channel, status, notification_id),
    CONSTRAINT notification_deliveries_notification
        FOREIGN KEY (notification_id) REFERENCES notifications (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
