-- Several hosts on one database: each integration is run by the host that holds its lease.
-- `token` grows by one with every takeover; each write of the integration's state checks,
-- inside its transaction and under a share lock on this row, that the writer's token is the
-- current one (fencing: a host that lost the lease writes nothing).
CREATE TABLE lease (
    integration TEXT PRIMARY KEY,
    owner TEXT,
    token BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
-- The hosts, each renewing `seen_at` with its leases: a host not seen within a lease's life
-- is gone, and the others share its integrations.
CREATE TABLE host (
    id TEXT PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at TIMESTAMPTZ NOT NULL
);
