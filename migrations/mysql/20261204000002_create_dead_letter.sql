-- Rows the relay gave up on, with why. The original row is kept whole so that
-- `outboxd dead-letters replay` can put it back under its original id.
CREATE TABLE outbox_dead_letter (
    id               BIGINT       NOT NULL PRIMARY KEY,   -- the original outbox.id
    aggregate_type   VARCHAR(255) NOT NULL,
    aggregate_id     VARCHAR(255) NOT NULL,
    event_type       VARCHAR(255) NOT NULL,
    topic            VARCHAR(255) NOT NULL,
    payload          JSON         NULL,
    payload_bytes    LONGBLOB     NULL,
    headers          JSON         NOT NULL,
    event_id         CHAR(36) CHARACTER SET ascii NOT NULL,
    created_at       TIMESTAMP(6) NOT NULL,
    reason           TEXT         NOT NULL,               -- human-readable cause
    error_class      VARCHAR(64)  NOT NULL,               -- e.g. record_too_large
    attempts         INT          NOT NULL,
    first_failed_at  TIMESTAMP(6) NOT NULL,
    last_failed_at   TIMESTAMP(6) NOT NULL,
    dead_lettered_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    resolved_at      TIMESTAMP(6) NULL DEFAULT NULL,      -- set by replay or discard
    resolution       VARCHAR(16)  NULL,
    CONSTRAINT outbox_dead_letter_resolution
        CHECK (resolution IS NULL OR resolution IN ('replayed', 'discarded')),
    -- Open dead letters per aggregate (with dead_letter policy 'hold' they stop it).
    INDEX outbox_dead_letter_open_idx (resolved_at, aggregate_id),
    -- A relay on MariaDB/MySQL looks for the latest replay or discard to rescan.
    INDEX outbox_dead_letter_resolved_idx (resolved_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
