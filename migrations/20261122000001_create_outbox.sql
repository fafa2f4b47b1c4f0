-- The outbox table: applications insert rows here inside their own transactions;
-- outboxd publishes every committed row to Kafka.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Columns the application fills (design.md §3).
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    event_type      text        NOT NULL,
    topic           text        NOT NULL,
    payload         jsonb,
    payload_bytes   bytea,
    headers         jsonb       NOT NULL DEFAULT '{}',
    event_id        uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Relay-owned columns: applications leave them alone.
    attempts        integer     NOT NULL DEFAULT 0,
    first_failed_at timestamptz,
    next_attempt_at timestamptz,
    last_error      text,
    published_at    timestamptz,
    CONSTRAINT outbox_exactly_one_payload
        CHECK ((payload IS NULL) <> (payload_bytes IS NULL))
);

COMMENT ON TABLE outbox IS 'Transactional outbox, published to Kafka by outboxd.';
COMMENT ON COLUMN outbox.published_at IS
    'Set when relay.on_publish = ''mark''; with the default ''delete'' a published row is removed.';

-- The relay reads pending rows oldest first; this partial index holds only them.
CREATE INDEX outbox_pending_idx ON outbox (id) WHERE published_at IS NULL;
-- Cleanup of marked rows (relay.on_publish = 'mark') walks this one.
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
