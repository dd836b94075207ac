-- The global directory and the directory service's read models (see the PostgreSQL twin).

CREATE TABLE tenant_cells (
    tenant_id BLOB PRIMARY KEY,
    cell      TEXT NOT NULL,
    placed_at INTEGER NOT NULL
);

CREATE TABLE tenants (
    tenant_id  BLOB PRIMARY KEY,
    name       TEXT NOT NULL,
    cell       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE inboxes (
    tenant_id  BLOB NOT NULL,
    inbox_id   BLOB NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id)
);

CREATE TABLE inbox_addresses (
    address   TEXT PRIMARY KEY,
    tenant_id BLOB NOT NULL,
    inbox_id  BLOB NOT NULL
);
CREATE INDEX inbox_addresses_inbox ON inbox_addresses (tenant_id, inbox_id);

CREATE TABLE api_keys (
    key_id       BLOB PRIMARY KEY,
    tenant_id    BLOB NOT NULL,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    secret_hash  BLOB NOT NULL,
    scopes       TEXT NOT NULL,
    expires_at   INTEGER NULL,
    revoked_at   INTEGER NULL,
    last_used_at INTEGER NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
