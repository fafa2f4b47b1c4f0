-- Leases: the relay instance that holds a lease publishes; every write the relay makes
-- checks (owner, epoch) against this table, so a paused or partitioned instance whose
-- lease was taken over cannot write any more (fencing).
CREATE TABLE outbox_lease (
    name        VARCHAR(255) NOT NULL PRIMARY KEY,
    owner       VARCHAR(255) NOT NULL,
    epoch       BIGINT       NOT NULL,
    acquired_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    renewed_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    expires_at  TIMESTAMP(6) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
