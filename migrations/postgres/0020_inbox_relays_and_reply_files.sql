-- Per-inbox SMTP relays (notification service) and the files of replies (conversation
-- service); ADR 0019.
--
-- `notification_smtp_relays`: one row per inbox that sends through its own relay instead of the
-- platform default. The AUTH password is sealed with the tenant key (never an event, never
-- returned); the settings without it are audit events on `smtp_relay/relay-<inbox>`.

CREATE TABLE notification_smtp_relays (
    tenant_id    uuid   NOT NULL,
    inbox_id     uuid   NOT NULL,
    host         text   NOT NULL,
    port         bigint NOT NULL,
    security     text   NOT NULL CHECK (security IN ('none', 'starttls', 'tls')),
    username     text   NULL,
    -- sealed with the tenant key (AAD: tenant ‖ inbox)
    password     bytea  NULL,
    password_key uuid   NULL,
    revision     bigint NOT NULL,
    created_us   bigint NOT NULL,
    updated_us   bigint NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON notification_smtp_relays TO postvak_app;

ALTER TABLE notification_smtp_relays ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notification_smtp_relays TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);
