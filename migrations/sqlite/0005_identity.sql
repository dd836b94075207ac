-- Identity and access (see the PostgreSQL twin). SQLite has no row-level security: the
-- embedded default is single-process and every query is tenant-scoped.

CREATE TABLE users (
    tenant_id    BLOB NOT NULL,
    user_id      BLOB NOT NULL,
    email_index  BLOB NOT NULL,
    profile      BLOB NOT NULL,
    profile_key  BLOB NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'viewer')),
    disabled     INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id),
    UNIQUE (tenant_id, email_index)
);

CREATE TABLE user_credentials (
    tenant_id      BLOB NOT NULL,
    user_id        BLOB NOT NULL,
    password_hash  TEXT NULL,
    totp_secret    BLOB NULL,
    totp_key       BLOB NULL,
    totp_last_step INTEGER NULL,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE teams (
    tenant_id BLOB NOT NULL,
    team_id   BLOB NOT NULL,
    name      TEXT NOT NULL,
    skills    TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, team_id)
);

CREATE TABLE team_members (
    tenant_id BLOB NOT NULL,
    team_id   BLOB NOT NULL,
    user_id   BLOB NOT NULL,
    PRIMARY KEY (tenant_id, team_id, user_id)
);

CREATE TABLE inbox_grants (
    tenant_id    BLOB NOT NULL,
    grant_id     BLOB NOT NULL,
    inbox_id     BLOB NOT NULL,
    grantee_kind TEXT NOT NULL CHECK (grantee_kind IN ('user', 'team')),
    grantee_id   BLOB NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('read', 'reply', 'admin')),
    valid_from   INTEGER NULL,
    valid_until  INTEGER NULL,
    PRIMARY KEY (tenant_id, grant_id)
);
CREATE INDEX inbox_grants_grantee ON inbox_grants (tenant_id, grantee_id);
CREATE INDEX inbox_grants_inbox ON inbox_grants (tenant_id, inbox_id);

ALTER TABLE inboxes ADD COLUMN signature TEXT NULL;
ALTER TABLE inboxes ADD COLUMN timezone TEXT NULL;
ALTER TABLE inboxes ADD COLUMN business_hours TEXT NULL;

CREATE TABLE tenant_security (
    tenant_id    BLOB PRIMARY KEY,
    mfa_required INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE user_identities (
    issuer    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    tenant_id BLOB NOT NULL,
    user_id   BLOB NOT NULL,
    PRIMARY KEY (issuer, subject)
);

CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY,
    tenant_id  BLOB NOT NULL,
    user_id    BLOB NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('cookie', 'bearer')),
    amr        TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NULL
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id);

CREATE TABLE sso_settings (
    tenant_id         BLOB PRIMARY KEY,
    issuer            TEXT NOT NULL UNIQUE,
    client_id         TEXT NOT NULL,
    client_secret     BLOB NULL,
    client_secret_key BLOB NULL,
    settings          TEXT NOT NULL,
    updated_at        INTEGER NOT NULL
);

CREATE TABLE sso_logins (
    state         TEXT PRIMARY KEY,
    tenant_id     BLOB NOT NULL,
    nonce         TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    redirect_uri  TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

ALTER TABLE api_keys ADD COLUMN inboxes TEXT NULL;
