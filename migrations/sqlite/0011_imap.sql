-- IMAP connector (see the PostgreSQL twin). SQLite has no row-level security.

CREATE TABLE imap_accounts (
    tenant_id       BLOB    NOT NULL,
    account_id      BLOB    NOT NULL,
    inbox_id        BLOB    NOT NULL,
    host            TEXT    NOT NULL,
    port            INTEGER NOT NULL,
    tls             TEXT    NOT NULL CHECK (tls IN ('tls', 'starttls', 'plain')),
    auth            TEXT    NOT NULL CHECK (auth IN ('password', 'xoauth2')),
    credentials     BLOB    NOT NULL,
    credentials_key BLOB    NOT NULL,
    folder          TEXT    NOT NULL,
    after_import    TEXT    NOT NULL,
    enabled         BOOLEAN NOT NULL,
    revision        INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    uid_validity    INTEGER NULL,
    last_uid        INTEGER NOT NULL DEFAULT 0,
    imported        INTEGER NOT NULL DEFAULT 0,
    status          TEXT    NOT NULL DEFAULT 'pending',
    last_sync_at    INTEGER NULL,
    last_error      TEXT    NULL,
    last_error_at   INTEGER NULL,
    PRIMARY KEY (tenant_id, account_id)
);
CREATE INDEX imap_accounts_by_inbox ON imap_accounts (tenant_id, inbox_id);

CREATE TABLE imap_quarantine (
    tenant_id      BLOB    NOT NULL,
    account_id     BLOB    NOT NULL,
    uid_validity   INTEGER NOT NULL,
    uid            INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    detail         TEXT    NOT NULL,
    size           INTEGER NULL,
    quarantined_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, account_id, uid_validity, uid)
);

CREATE TABLE imap_account_index (
    account_id BLOB    PRIMARY KEY,
    tenant_id  BLOB    NOT NULL,
    enabled    BOOLEAN NOT NULL,
    revision   INTEGER NOT NULL
);
