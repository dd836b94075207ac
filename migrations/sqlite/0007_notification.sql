-- Notification service (see the PostgreSQL twin). SQLite has no row-level security.

CREATE TABLE outbound_mail (
    tenant_id       BLOB    NOT NULL,
    message_id      BLOB    NOT NULL,
    conversation_id BLOB    NOT NULL,
    inbox_id        BLOB    NOT NULL,
    event_id        BLOB    NOT NULL,
    content         BLOB    NOT NULL,
    content_key     BLOB    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT    NULL,
    created_us      INTEGER NOT NULL,
    sent_us         INTEGER NULL,
    PRIMARY KEY (tenant_id, message_id)
);

CREATE TABLE webhook_subscriptions (
    tenant_id   BLOB    NOT NULL,
    webhook_id  BLOB    NOT NULL,
    url         TEXT    NOT NULL,
    inbox_id    BLOB    NULL,
    events      TEXT    NOT NULL,
    secret      BLOB    NOT NULL,
    secret_key  BLOB    NOT NULL,
    created_us  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, webhook_id)
);

CREATE TABLE webhook_deliveries (
    tenant_id       BLOB    NOT NULL,
    delivery_id     BLOB    NOT NULL,
    webhook_id      BLOB    NOT NULL,
    event_id        BLOB    NOT NULL,
    event_type      TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    payload_key     BLOB    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_status     INTEGER NULL,
    last_error      TEXT    NULL,
    created_us      INTEGER NOT NULL,
    delivered_us    INTEGER NULL,
    PRIMARY KEY (tenant_id, delivery_id),
    UNIQUE (tenant_id, webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (tenant_id, webhook_id, created_us DESC);

CREATE TABLE notification_conversations (
    tenant_id       BLOB NOT NULL,
    conversation_id BLOB NOT NULL,
    inbox_id        BLOB NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);

CREATE TABLE agent_notifications (
    tenant_id       BLOB    NOT NULL,
    notification_id BLOB    NOT NULL,
    user_id         BLOB    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('assigned', 'mentioned')),
    conversation_id BLOB    NOT NULL,
    event_id        BLOB    NOT NULL,
    actor           BLOB    NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sent', 'skipped')),
    created_us      INTEGER NOT NULL,
    sent_us         INTEGER NULL,
    PRIMARY KEY (tenant_id, notification_id),
    UNIQUE (tenant_id, user_id, event_id)
);
CREATE INDEX agent_notifications_pending ON agent_notifications (tenant_id, user_id, state);

CREATE TABLE agent_notification_prefs (
    tenant_id       BLOB    NOT NULL,
    user_id         BLOB    NOT NULL,
    delivery        TEXT    NOT NULL CHECK (delivery IN ('each', 'digest', 'off')),
    digest_secs     INTEGER NOT NULL,
    updated_us      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE notification_due (
    kind      TEXT    NOT NULL,
    item_id   BLOB    NOT NULL,
    tenant_id BLOB    NOT NULL,
    lane      TEXT    NOT NULL,
    due_at    INTEGER NOT NULL,
    PRIMARY KEY (kind, item_id)
);
CREATE INDEX notification_due_at ON notification_due (kind, due_at);
