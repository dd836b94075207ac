-- Identity and access: users, credentials, teams, inbox grants, sessions, SSO settings.
-- Tenant tables in a cell carry row-level security: the application role sees only the rows of
-- the tenant named by `postvak.tenant_id` (set per transaction), a second wall behind the
-- tenant scoping of every query. Global directory tables (identities, sessions, api_keys,
-- sso issuers) are looked up before a tenant is known and carry no RLS.

CREATE TABLE users (
    tenant_id    uuid NOT NULL,
    user_id      uuid NOT NULL,
    -- blind index of the lower-cased email (login, uniqueness); the email itself is sealed.
    email_index  bytea NOT NULL,
    profile      bytea NOT NULL,
    profile_key  uuid NOT NULL,
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'viewer')),
    disabled     boolean NOT NULL DEFAULT false,
    created_at   bigint      NOT NULL,
    PRIMARY KEY (tenant_id, user_id),
    UNIQUE (tenant_id, email_index)
);

CREATE TABLE user_credentials (
    tenant_id      uuid NOT NULL,
    user_id        uuid NOT NULL,
    password_hash  text NULL,
    totp_secret    bytea NULL,
    totp_key       uuid NULL,
    totp_last_step bigint NULL,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE teams (
    tenant_id uuid NOT NULL,
    team_id   uuid NOT NULL,
    name      text NOT NULL,
    skills    text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, team_id)
);

CREATE TABLE team_members (
    tenant_id uuid NOT NULL,
    team_id   uuid NOT NULL,
    user_id   uuid NOT NULL,
    PRIMARY KEY (tenant_id, team_id, user_id)
);

CREATE TABLE inbox_grants (
    tenant_id    uuid NOT NULL,
    grant_id     uuid NOT NULL,
    inbox_id     uuid NOT NULL,
    grantee_kind text NOT NULL CHECK (grantee_kind IN ('user', 'team')),
    grantee_id   uuid NOT NULL,
    role         text NOT NULL CHECK (role IN ('read', 'reply', 'admin')),
    valid_from   bigint      NULL,
    valid_until  bigint      NULL,
    PRIMARY KEY (tenant_id, grant_id)
);
CREATE INDEX inbox_grants_grantee ON inbox_grants (tenant_id, grantee_id);
CREATE INDEX inbox_grants_inbox ON inbox_grants (tenant_id, inbox_id);

ALTER TABLE inboxes ADD COLUMN signature text NULL;
ALTER TABLE inboxes ADD COLUMN timezone text NULL;
ALTER TABLE inboxes ADD COLUMN business_hours text NULL;

CREATE TABLE tenant_security (
    tenant_id    uuid PRIMARY KEY,
    mfa_required boolean NOT NULL DEFAULT false
);

-- Global: (issuer, subject) → user. Never keyed on email.
CREATE TABLE user_identities (
    issuer    text NOT NULL,
    subject   text NOT NULL,
    tenant_id uuid NOT NULL,
    user_id   uuid NOT NULL,
    PRIMARY KEY (issuer, subject)
);

-- Global: sessions are found by the hash of their token.
CREATE TABLE sessions (
    token_hash bytea PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    user_id    uuid NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('cookie', 'bearer')),
    amr        text NOT NULL DEFAULT '',
    created_at bigint      NOT NULL,
    expires_at bigint      NOT NULL,
    revoked_at bigint      NULL
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id);

-- Global: a tenant's OpenID provider; the issuer finds the tenant.
CREATE TABLE sso_settings (
    tenant_id         uuid PRIMARY KEY,
    issuer            text NOT NULL UNIQUE,
    client_id         text NOT NULL,
    client_secret     bytea NULL,
    client_secret_key uuid NULL,
    settings          text NOT NULL,
    updated_at        bigint      NOT NULL
);

-- Pending OIDC logins: state → nonce, PKCE verifier, tenant; single use, short-lived.
CREATE TABLE sso_logins (
    state         text PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    nonce         text NOT NULL,
    pkce_verifier text NOT NULL,
    redirect_uri  text NOT NULL,
    created_at    bigint      NOT NULL
);

ALTER TABLE api_keys ADD COLUMN inboxes text NULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON users, user_credentials, teams, team_members,
    inbox_grants, tenant_security, user_identities, sessions, sso_settings, sso_logins
    TO postvak_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'user_credentials', 'teams', 'team_members',
                             'inbox_grants', 'inboxes', 'tenant_security']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO postvak_app '
            'USING (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END $$;
