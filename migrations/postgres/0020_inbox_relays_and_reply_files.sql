-- Per-inbox SMTP relays (notification service) and the files of replies (conversation
-- service); ADR 0019.
--
-- `notification_smtp_relays`: one row per inbox that sends through its own relay instead of the
-- platform default. The AUTH password is sealed with the tenant key (never an event, never
-- returned); the settings without it are audit events on `smtp_relay/relay-<inbox>`.
-- `conversation_reply_files`: the attachments of replies, sealed with the tenant key, written
-- by the reply API before the `reply.queued` event that names them; the notification service
-- reads them through the conversation library when it builds the mail.
-- `agent_notification_prefs.stream`: whether the user's notifications are also pushed to their
-- `/v1/stream` (as `agent.notified` events); on by default.

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

CREATE TABLE conversation_reply_files (
    tenant_id  uuid   NOT NULL,
    file_id    uuid   NOT NULL,
    message_id uuid   NOT NULL,
    size       bigint NOT NULL,
    -- sealed with the tenant key (AAD: tenant ‖ file)
    sealed     bytea  NOT NULL,
    key_id     uuid   NOT NULL,
    created_us bigint NOT NULL,
    PRIMARY KEY (tenant_id, file_id)
);
CREATE INDEX conversation_reply_files_message ON conversation_reply_files (tenant_id, message_id);

ALTER TABLE agent_notification_prefs ADD COLUMN stream boolean NOT NULL DEFAULT true;

GRANT SELECT, INSERT, UPDATE, DELETE ON notification_smtp_relays, conversation_reply_files
    TO postvak_app;

ALTER TABLE notification_smtp_relays ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notification_smtp_relays TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);
ALTER TABLE conversation_reply_files ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_reply_files TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);
