-- Idempotency keys of POST /api/notifications (header `Idempotency-Key`). A call whose answer
-- was lost (a timeout while the transaction committed) can be repeated with the same key: the
-- repeat answers the first call's notifications instead of storing them again. Keys are kept
-- for a day.
CREATE TABLE IF NOT EXISTS notification_requests (
    idempotency_key VARCHAR(191) NOT NULL,
    -- [[id, user_id], ...] of the notifications the first call stored
    notifications JSON NULL,
    created_at DATETIME(3) NOT NULL,
    PRIMARY KEY (idempotency_key),
    -- expiry: WHERE created_at < ?
    KEY notification_requests_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
