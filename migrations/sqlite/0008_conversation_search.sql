-- Search without plaintext (see the PostgreSQL twin): a blind index of words.

CREATE TABLE conversation_search (
    tenant_id       BLOB NOT NULL,
    term            BLOB NOT NULL,
    conversation_id BLOB NOT NULL,
    PRIMARY KEY (tenant_id, term, conversation_id)
) WITHOUT ROWID;
CREATE INDEX conversation_search_conv ON conversation_search (tenant_id, conversation_id);

-- Shared drafts and templates (see the PostgreSQL twin).
CREATE TABLE conversation_drafts (
    tenant_id       BLOB    NOT NULL,
    draft_id        BLOB    NOT NULL,
    conversation_id BLOB    NOT NULL,
    version         INTEGER NOT NULL,
    content         BLOB    NOT NULL,
    content_key     BLOB    NOT NULL,
    created_by      BLOB    NULL,
    updated_by      BLOB    NULL,
    lock_holder     BLOB    NULL,
    lock_expires_us INTEGER NULL,
    created_us      INTEGER NOT NULL,
    updated_us      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, draft_id)
);
CREATE INDEX conversation_drafts_conv ON conversation_drafts (tenant_id, conversation_id);

CREATE TABLE conversation_templates (
    tenant_id   BLOB    NOT NULL,
    template_id BLOB    NOT NULL,
    inbox_id    BLOB    NULL,
    name        TEXT    NOT NULL,
    content     BLOB    NOT NULL,
    content_key BLOB    NOT NULL,
    version     INTEGER NOT NULL,
    created_us  INTEGER NOT NULL,
    updated_us  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, template_id)
);
CREATE INDEX conversation_templates_inbox ON conversation_templates (tenant_id, inbox_id);
