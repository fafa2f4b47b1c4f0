-- The consumer side (outboxd::inbox): which events each consumer has already processed.
-- A consumer records (consumer, event_id) in the same transaction as the writes an event
-- causes; a second delivery of the event finds the row and is skipped, so the writes happen
-- once. Rows older than the consumer's retention are deleted by Inbox::cleanup.
CREATE TABLE outbox_inbox (
    consumer     VARCHAR(255) NOT NULL,   -- e.g. the consumer group: every member shares it
    event_id     CHAR(36) CHARACTER SET ascii NOT NULL,   -- the event_id every record carries
    processed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (consumer, event_id),
    -- Cleanup walks old entries per consumer.
    INDEX outbox_inbox_processed_idx (consumer, processed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin
  COMMENT = 'Events each consumer has processed, written by outboxd::inbox in the consumer''s transaction.';
