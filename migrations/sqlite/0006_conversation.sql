-- Conversations (see the PostgreSQL twin). SQLite has no row-level security: the embedded
-- default is single-process and every query is tenant-scoped.

CREATE TABLE conversations (
    tenant_id       BLOB   NOT NULL,
    conversation_id BLOB   NOT NULL,
    inbox_id        BLOB   NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('open', 'pending', 'closed', 'spam')),
    priority        TEXT   NOT NULL,
    assignee        BLOB   NULL,
    snoozed_until   INTEGER NULL,
    merged_into     BLOB   NULL,
    -- space-separated user ids / `inbox:archived(0|1)` pairs / tags (no personal data)
    participants    TEXT   NOT NULL DEFAULT '',
    inboxes         TEXT   NOT NULL DEFAULT '',
    tags            TEXT   NOT NULL DEFAULT '',
    message_count   INTEGER NOT NULL DEFAULT 0,
    note_count      INTEGER NOT NULL DEFAULT 0,
    -- sealed JSON: subject, snippet, contacts
    summary         BLOB  NOT NULL,
    summary_key     BLOB   NOT NULL,
    created_us      INTEGER NOT NULL,
    updated_us      INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);
CREATE INDEX conversations_recent ON conversations (tenant_id, updated_us, conversation_id);
CREATE INDEX conversations_assignee ON conversations (tenant_id, assignee);

CREATE TABLE conversation_inboxes (
    tenant_id       BLOB    NOT NULL,
    conversation_id BLOB    NOT NULL,
    inbox_id        BLOB    NOT NULL,
    archived        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, conversation_id, inbox_id)
);
CREATE INDEX conversation_inboxes_inbox ON conversation_inboxes (tenant_id, inbox_id, archived);

CREATE TABLE conversation_participants (
    tenant_id       BLOB NOT NULL,
    conversation_id BLOB NOT NULL,
    user_id         BLOB NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id, user_id)
);
CREATE INDEX conversation_participants_user ON conversation_participants (tenant_id, user_id);

CREATE TABLE conversation_tags (
    tenant_id       BLOB NOT NULL,
    conversation_id BLOB NOT NULL,
    tag             TEXT NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id, tag)
);
CREATE INDEX conversation_tags_tag ON conversation_tags (tenant_id, tag);

CREATE TABLE conversation_messages (
    tenant_id       BLOB   NOT NULL,
    message_id      BLOB   NOT NULL,
    conversation_id BLOB   NOT NULL,
    direction       TEXT   NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    -- the stream version that added it (for "what changed since")
    version         INTEGER NOT NULL,
    at_us           INTEGER NOT NULL,
    -- sealed JSON of the message (headers, addresses, snippet, body)
    content         BLOB  NOT NULL,
    content_key     BLOB   NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX conversation_messages_conv ON conversation_messages (tenant_id, conversation_id, at_us);

CREATE TABLE conversation_notes (
    tenant_id       BLOB   NOT NULL,
    note_id         BLOB   NOT NULL,
    conversation_id BLOB   NOT NULL,
    version         INTEGER NOT NULL,
    at_us           INTEGER NOT NULL,
    content         BLOB  NOT NULL,
    content_key     BLOB   NOT NULL,
    PRIMARY KEY (tenant_id, note_id)
);
CREATE INDEX conversation_notes_conv ON conversation_notes (tenant_id, conversation_id, at_us);

-- Idempotency-Key of POST requests: the first response, replayed (sealed: it may echo bodies).
CREATE TABLE conversation_idempotency (
    tenant_id     BLOB   NOT NULL,
    idem_key      TEXT   NOT NULL,
    fingerprint   BLOB  NOT NULL,
    status        INTEGER NULL,
    response      BLOB  NULL,
    response_key  BLOB   NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);

-- Global (no RLS, no personal data): `message.received` events handed from the consumer to
-- the worker that appends them to conversations (the consumer's transaction can't append).
CREATE TABLE conversation_inbound_queue (
    event_id       BLOB   PRIMARY KEY,
    tenant_id      BLOB   NOT NULL,
    stream_id      TEXT   NOT NULL,
    stream_version INTEGER NOT NULL,
    queued_at      INTEGER NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT   NULL
);

