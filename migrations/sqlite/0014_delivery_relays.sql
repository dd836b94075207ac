-- Replies' delivery and agent alerts for failed replies (see the PostgreSQL twin). SQLite has
-- no row-level security.

CREATE TABLE conversation_reply_delivery (
    tenant_id       BLOB    NOT NULL,
    message_id      BLOB    NOT NULL,
    conversation_id BLOB    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('sent', 'failed')),
    reason          TEXT    NULL,
    permanent       BOOLEAN NOT NULL DEFAULT 0,
    smtp_code       INTEGER NULL,
    author          BLOB    NULL,
    detail          BLOB    NULL,
    detail_key      BLOB    NULL,
    at_us           INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX conversation_reply_delivery_conv ON conversation_reply_delivery (tenant_id, conversation_id);

CREATE TABLE conversation_delivery_queue (
    tenant_id       BLOB    NOT NULL,
    message_id      BLOB    NOT NULL,
    conversation_id BLOB    NOT NULL,
    queued_at       INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT    NULL,
    PRIMARY KEY (tenant_id, message_id)
);

-- agent notifications: a reply of yours failed (SQLite can't alter a CHECK: rebuild)
CREATE TABLE agent_notifications_new (
    tenant_id       BLOB    NOT NULL,
    notification_id BLOB    NOT NULL,
    user_id         BLOB    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('assigned', 'mentioned', 'reply_failed')),
    conversation_id BLOB    NOT NULL,
    event_id        BLOB    NOT NULL,
    actor           BLOB    NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sent', 'skipped')),
    created_us      INTEGER NOT NULL,
    sent_us         INTEGER NULL,
    PRIMARY KEY (tenant_id, notification_id),
    UNIQUE (tenant_id, user_id, event_id)
);
INSERT INTO agent_notifications_new SELECT tenant_id, notification_id, user_id, kind,
    conversation_id, event_id, actor, state, created_us, sent_us FROM agent_notifications;
DROP TABLE agent_notifications;
ALTER TABLE agent_notifications_new RENAME TO agent_notifications;
CREATE INDEX agent_notifications_pending ON agent_notifications (tenant_id, user_id, state);
