-- Draft providers (ADR 0016); see the PostgreSQL migration of the same number.

CREATE TABLE draft_providers (
    tenant_id   BLOB    NOT NULL,
    provider_id BLOB    NOT NULL,
    inbox_id    BLOB    NULL,
    url         TEXT    NOT NULL,
    secret      BLOB    NOT NULL,
    secret_key  BLOB    NOT NULL,
    enabled     BOOLEAN NOT NULL,
    created_us  INTEGER NOT NULL,
    updated_us  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, provider_id)
);

CREATE TABLE draft_suggestion_queue (
    tenant_id       BLOB    NOT NULL,
    provider_id     BLOB    NOT NULL,
    message_id      BLOB    NOT NULL,
    conversation_id BLOB    NOT NULL,
    queued_at       INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT    NULL,
    PRIMARY KEY (tenant_id, provider_id, message_id)
);
CREATE INDEX draft_suggestion_queue_due ON draft_suggestion_queue (next_attempt_at);

ALTER TABLE conversation_drafts ADD COLUMN suggested_by BLOB NULL;
