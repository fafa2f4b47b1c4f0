-- Rows the relay gave up on, with why. The original row is kept whole so that
-- `outboxd dead-letters replay` can put it back under its original id.
CREATE TABLE outbox_dead_letter (
    id               bigint      PRIMARY KEY,      -- the original outbox.id
    aggregate_type   text        NOT NULL,
    aggregate_id     text        NOT NULL,
    event_type       text        NOT NULL,
    topic            text        NOT NULL,
    payload          jsonb,
    payload_bytes    bytea,
    headers          jsonb       NOT NULL,
    event_id         uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    reason           text        NOT NULL,          -- human-readable cause
    error_class      text        NOT NULL,          -- e.g. record_too_large, invalid_topic
    attempts         integer     NOT NULL,
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz,                   -- set by replay or discard
    resolution       text CHECK (resolution IN ('replayed', 'discarded'))
);

-- Open dead letters per aggregate: with dead_letter policy 'hold' they stop the aggregate.
CREATE INDEX outbox_dead_letter_open_idx
    ON outbox_dead_letter (aggregate_id) WHERE resolved_at IS NULL;
CREATE INDEX outbox_dead_letter_resolved_idx
    ON outbox_dead_letter (resolved_at) WHERE resolved_at IS NOT NULL;
