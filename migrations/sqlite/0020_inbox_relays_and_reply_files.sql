-- Per-inbox SMTP relays (notification service) and the files of replies (conversation
-- service); ADR 0019. See the PostgreSQL migration for what each table holds.

CREATE TABLE notification_smtp_relays (
    tenant_id    BLOB    NOT NULL,
    inbox_id     BLOB    NOT NULL,
    host         TEXT    NOT NULL,
    port         INTEGER NOT NULL,
    security     TEXT    NOT NULL CHECK (security IN ('none', 'starttls', 'tls')),
    username     TEXT    NULL,
    -- sealed with the tenant key (AAD: tenant ‖ inbox)
    password     BLOB    NULL,
    password_key BLOB    NULL,
    revision     INTEGER NOT NULL,
    created_us   INTEGER NOT NULL,
    updated_us   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id)
);

CREATE TABLE conversation_reply_files (
    tenant_id  BLOB    NOT NULL,
    file_id    BLOB    NOT NULL,
    message_id BLOB    NOT NULL,
    size       INTEGER NOT NULL,
    -- sealed with the tenant key (AAD: tenant ‖ file)
    sealed     BLOB    NOT NULL,
    key_id     BLOB    NOT NULL,
    created_us INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, file_id)
);
CREATE INDEX conversation_reply_files_message ON conversation_reply_files (tenant_id, message_id);

ALTER TABLE agent_notification_prefs ADD COLUMN stream INTEGER NOT NULL DEFAULT 1;
