-- Leases: the relay instance that holds a lease publishes; every write the relay makes
-- checks (owner, epoch) against this table, so a paused or partitioned instance whose
-- lease was taken over cannot write any more (fencing).
CREATE TABLE outbox_lease (
    name        text        PRIMARY KEY,
    owner       text        NOT NULL,
    epoch       bigint      NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
