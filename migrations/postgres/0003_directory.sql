-- The global directory (tenant → cell, inbound addresses) and the directory service's read
-- models. Addresses here are the tenants' own published inbox addresses, needed in the clear
-- to route inbound mail; contacts' addresses never live here.

CREATE TABLE tenant_cells (
    tenant_id uuid PRIMARY KEY,
    cell      text NOT NULL,
    placed_at bigint NOT NULL
);

CREATE TABLE tenants (
    tenant_id  uuid PRIMARY KEY,
    name       text NOT NULL,
    cell       text NOT NULL,
    created_at bigint NOT NULL
);

CREATE TABLE inboxes (
    tenant_id  uuid NOT NULL,
    inbox_id   uuid NOT NULL,
    name       text NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id)
);

CREATE TABLE inbox_addresses (
    address   text PRIMARY KEY,
    tenant_id uuid NOT NULL,
    inbox_id  uuid NOT NULL
);
CREATE INDEX inbox_addresses_inbox ON inbox_addresses (tenant_id, inbox_id);

CREATE TABLE api_keys (
    key_id       uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    name         text NOT NULL,
    prefix       text NOT NULL,
    secret_hash  bytea NOT NULL,
    scopes       text NOT NULL,
    expires_at   bigint NULL,
    revoked_at   bigint NULL,
    last_used_at bigint NULL,
    created_at   bigint NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_cells, tenants, inboxes, inbox_addresses, api_keys TO postvak_app;
