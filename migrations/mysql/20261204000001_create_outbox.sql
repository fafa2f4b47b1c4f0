-- The outbox on MariaDB (>= 10.6) and MySQL (>= 8.0): the same columns and meanings as
-- the PostgreSQL schema (migrations/*.sql). Applications insert rows here inside their own
-- transactions; outboxd publishes every committed row.
--
--   INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload)
--   VALUES ('order', '42', 'order.created', 'orders', '{"total": 12}');
--
-- Times are TIMESTAMP(6): stored in UTC whatever the writing session's time_zone.
CREATE TABLE outbox (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    -- Columns the application fills (design.md §3).
    aggregate_type  VARCHAR(255) NOT NULL,
    aggregate_id    VARCHAR(255) NOT NULL,
    event_type      VARCHAR(255) NOT NULL,
    topic           VARCHAR(255) NOT NULL,
    payload         JSON         NULL,
    payload_bytes   LONGBLOB     NULL,
    headers         JSON         NOT NULL DEFAULT ('{}'),
    event_id        CHAR(36) CHARACTER SET ascii NOT NULL DEFAULT (UUID()),
    created_at      TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    -- Relay-owned columns: applications leave them alone.
    attempts        INT          NOT NULL DEFAULT 0,
    first_failed_at TIMESTAMP(6) NULL DEFAULT NULL,
    next_attempt_at TIMESTAMP(6) NULL DEFAULT NULL,
    last_error      TEXT         NULL,
    published_at    TIMESTAMP(6) NULL DEFAULT NULL,
    CONSTRAINT outbox_event_id_key UNIQUE (event_id),
    CONSTRAINT outbox_exactly_one_payload
        CHECK ((payload IS NULL) <> (payload_bytes IS NULL)),
    -- The relay reads pending rows (published_at IS NULL) oldest first, and cleanup of
    -- marked rows (relay.on_publish = 'mark') walks the published ones by age: one index
    -- serves both (MySQL has no partial indexes).
    INDEX outbox_pending_idx (published_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin
  COMMENT = 'Transactional outbox, published by outboxd.';
