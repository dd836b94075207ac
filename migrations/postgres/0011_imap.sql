-- IMAP connector (ingest): accounts per inbox, their sync state and quarantined messages.
-- The login (username + password or XOAUTH2 access token) is sealed with the tenant key as one
-- JSON blob (`credentials`, key id in `credentials_key`; ADR 0004: secrets are never events).
-- Times are Unix seconds. Tenant tables carry row-level security (ADR 0005);
-- `imap_account_index` holds only ids, so the per-cell supervisor can find every tenant's
-- accounts before binding one (ADR 0010).

CREATE TABLE imap_accounts (
    tenant_id       uuid    NOT NULL,
    account_id      uuid    NOT NULL,
    inbox_id        uuid    NOT NULL,
    host            text    NOT NULL,
    port            bigint  NOT NULL,
    tls             text    NOT NULL CHECK (tls IN ('tls', 'starttls', 'plain')),
    auth            text    NOT NULL CHECK (auth IN ('password', 'xoauth2')),
    credentials     bytea   NOT NULL,
    credentials_key uuid    NOT NULL,
    folder          text    NOT NULL,
    after_import    text    NOT NULL,
    enabled         boolean NOT NULL,
    revision        bigint  NOT NULL,
    created_at      bigint  NOT NULL,
    updated_at      bigint  NOT NULL,
    -- sync state, written by the connector only
    uid_validity    bigint  NULL,
    last_uid        bigint  NOT NULL DEFAULT 0,
    imported        bigint  NOT NULL DEFAULT 0,
    status          text    NOT NULL DEFAULT 'pending',
    last_sync_at    bigint  NULL,
    last_error      text    NULL,
    last_error_at   bigint  NULL,
    PRIMARY KEY (tenant_id, account_id)
);
CREATE INDEX imap_accounts_by_inbox ON imap_accounts (tenant_id, inbox_id);

CREATE TABLE imap_quarantine (
    tenant_id      uuid   NOT NULL,
    account_id     uuid   NOT NULL,
    uid_validity   bigint NOT NULL,
    uid            bigint NOT NULL,
    reason         text   NOT NULL,
    detail         text   NOT NULL,
    size           bigint NULL,
    quarantined_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, account_id, uid_validity, uid)
);

CREATE TABLE imap_account_index (
    account_id uuid    PRIMARY KEY,
    tenant_id  uuid    NOT NULL,
    enabled    boolean NOT NULL,
    revision   bigint  NOT NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON imap_accounts, imap_quarantine, imap_account_index
    TO postvak_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['imap_accounts', 'imap_quarantine']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO postvak_app '
            'USING (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END $$;
