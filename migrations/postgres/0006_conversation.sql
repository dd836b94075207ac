-- Conversations: read models of the conversation service, rebuilt from `conversation`
-- streams. Personal data (subjects, snippets, addresses, bodies, notes) is sealed with the
-- tenant key (`*_key` names the data key); only ids, states, tags and times are plain.
-- Times are Unix microseconds. Tenant tables carry row-level security (ADR 0005).

CREATE TABLE conversations (
    tenant_id       uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    inbox_id        uuid   NOT NULL,
    status          text   NOT NULL CHECK (status IN ('open', 'pending', 'closed', 'spam')),
    priority        text   NOT NULL,
    assignee        uuid   NULL,
    snoozed_until   bigint NULL,
    merged_into     uuid   NULL,
    -- space-separated user ids / `inbox:archived(0|1)` pairs / tags (no personal data)
    participants    text   NOT NULL DEFAULT '',
    inboxes         text   NOT NULL DEFAULT '',
    tags            text   NOT NULL DEFAULT '',
    message_count   bigint NOT NULL DEFAULT 0,
    note_count      bigint NOT NULL DEFAULT 0,
    -- sealed JSON: subject, snippet, contacts
    summary         bytea  NOT NULL,
    summary_key     uuid   NOT NULL,
    created_us      bigint NOT NULL,
    updated_us      bigint NOT NULL,
    version         bigint NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);
CREATE INDEX conversations_recent ON conversations (tenant_id, updated_us DESC, conversation_id DESC);
CREATE INDEX conversations_assignee ON conversations (tenant_id, assignee);

CREATE TABLE conversation_inboxes (
    tenant_id       uuid    NOT NULL,
    conversation_id uuid    NOT NULL,
    inbox_id        uuid    NOT NULL,
    archived        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, conversation_id, inbox_id)
);
CREATE INDEX conversation_inboxes_inbox ON conversation_inboxes (tenant_id, inbox_id, archived);

CREATE TABLE conversation_participants (
    tenant_id       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    user_id         uuid NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id, user_id)
);
CREATE INDEX conversation_participants_user ON conversation_participants (tenant_id, user_id);

CREATE TABLE conversation_tags (
    tenant_id       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    tag             text NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id, tag)
);
CREATE INDEX conversation_tags_tag ON conversation_tags (tenant_id, tag);

CREATE TABLE conversation_messages (
    tenant_id       uuid   NOT NULL,
    message_id      uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    direction       text   NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    -- the stream version that added it (for "what changed since")
    version         bigint NOT NULL,
    at_us           bigint NOT NULL,
    -- sealed JSON of the message (headers, addresses, snippet, body)
    content         bytea  NOT NULL,
    content_key     uuid   NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX conversation_messages_conv ON conversation_messages (tenant_id, conversation_id, at_us);

CREATE TABLE conversation_notes (
    tenant_id       uuid   NOT NULL,
    note_id         uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    version         bigint NOT NULL,
    at_us           bigint NOT NULL,
    content         bytea  NOT NULL,
    content_key     uuid   NOT NULL,
    PRIMARY KEY (tenant_id, note_id)
);
CREATE INDEX conversation_notes_conv ON conversation_notes (tenant_id, conversation_id, at_us);

-- Idempotency-Key of POST requests: the first response, replayed (sealed: it may echo bodies).
CREATE TABLE conversation_idempotency (
    tenant_id     uuid   NOT NULL,
    idem_key      text   NOT NULL,
    fingerprint   bytea  NOT NULL,
    status        integer NULL,
    response      bytea  NULL,
    response_key  uuid   NULL,
    created_at    bigint NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);

-- Global (no RLS, no personal data): `message.received` events handed from the consumer to
-- the worker that appends them to conversations (the consumer's transaction can't append).
CREATE TABLE conversation_inbound_queue (
    event_id       uuid   PRIMARY KEY,
    tenant_id      uuid   NOT NULL,
    stream_id      text   NOT NULL,
    stream_version bigint NOT NULL,
    queued_at      bigint NOT NULL,
    attempts       bigint NOT NULL DEFAULT 0,
    last_error     text   NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON conversations, conversation_inboxes,
    conversation_participants, conversation_tags, conversation_messages, conversation_notes,
    conversation_idempotency, conversation_inbound_queue TO postvak_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['conversations', 'conversation_inboxes', 'conversation_participants',
                             'conversation_tags', 'conversation_messages', 'conversation_notes',
                             'conversation_idempotency']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO postvak_app '
            'USING (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END $$;
