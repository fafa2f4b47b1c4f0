-- The consumer side (outboxd::inbox): which events each consumer has already processed.
-- A consumer records (consumer, event_id) in the same transaction as the writes an event
-- causes; a second delivery of the event finds the row and is skipped, so the writes happen
-- once. Rows older than the consumer's retention are deleted by Inbox::cleanup.
CREATE TABLE outbox_inbox (
    consumer     text        NOT NULL,   -- e.g. the consumer group: every member shares it
    event_id     uuid        NOT NULL,   -- the event_id every record carries
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

COMMENT ON TABLE outbox_inbox IS
    'Events each consumer has processed, written by outboxd::inbox in the consumer''s transaction.';

-- Cleanup walks old entries per consumer.
CREATE INDEX outbox_inbox_processed_idx ON outbox_inbox (consumer, processed_at);
