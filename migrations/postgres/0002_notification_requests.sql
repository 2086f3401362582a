-- Idempotency keys of POST /api/notifications, on PostgreSQL: see ../0002_notification_requests.sql.
CREATE TABLE IF NOT EXISTS notification_requests (
    idempotency_key VARCHAR(191) PRIMARY KEY,
    -- [[id, user_id], ...] of the notifications the first call stored
    notifications JSONB NULL,
    created_at TIMESTAMP(3) NOT NULL
);

-- expiry: WHERE created_at < ?
CREATE INDEX IF NOT EXISTS notification_requests_created ON notification_requests (created_at);
