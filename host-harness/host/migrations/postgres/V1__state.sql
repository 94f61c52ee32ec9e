-- The state of every integration: what the SQLite store keeps, shared by every host on this
-- database. Values, keys, inbox bodies and credentials are sealed by the host before they
-- get here (see the host's seal module); this schema never sees them in the clear.
CREATE TABLE kv (
    integration TEXT NOT NULL,
    key TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (integration, key)
);
CREATE TABLE kv_backup (
    integration TEXT NOT NULL,
    key TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (integration, key)
);
CREATE TABLE notification_key (
    integration TEXT PRIMARY KEY,
    cert_id TEXT NOT NULL,
    pkcs8 BYTEA NOT NULL,
    cert_der BYTEA NOT NULL
);
CREATE TABLE swapped_release (
    integration TEXT PRIMARY KEY,
    configured_sha256 TEXT NOT NULL,
    wasm BYTEA NOT NULL
);
CREATE TABLE inbox (
    id BIGSERIAL PRIMARY KEY,
    integration TEXT NOT NULL,
    kind TEXT NOT NULL,
    body BYTEA NOT NULL,
    received_ms BIGINT NOT NULL
);
CREATE INDEX inbox_by_integration ON inbox (integration, id);
CREATE TABLE integration_record (
    integration TEXT PRIMARY KEY,
    record BYTEA NOT NULL
);
CREATE TABLE credential (
    integration TEXT NOT NULL,
    username TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    PRIMARY KEY (integration, username)
);
