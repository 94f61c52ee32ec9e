-- Admin calls and line events for an integration another host runs: the host that took the
-- request writes it here and notifies `presence_call`; the owner answers in the row and
-- notifies `presence_answer`. Requests and answers are sealed under the fleet's KEK.
CREATE TABLE host_call (
    id BIGSERIAL PRIMARY KEY,
    integration TEXT NOT NULL,
    caller TEXT NOT NULL,
    request BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    taken_by TEXT,
    answer BYTEA
);
CREATE INDEX host_call_waiting ON host_call (integration) WHERE answer IS NULL;
