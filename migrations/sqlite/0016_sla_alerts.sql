-- Agent alerts for SLA warnings and breaches (ADR 0015): the kinds, a per-user preference for
-- them, and the conversation's assignee as the notification service last saw it (who is told;
-- unassigned, the inbox's admins).

-- SQLite can't alter a CHECK: rebuild
CREATE TABLE agent_notifications_new (
    tenant_id       BLOB    NOT NULL,
    notification_id BLOB    NOT NULL,
    user_id         BLOB    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('assigned', 'mentioned', 'reply_failed',
                                                     'sla_warning', 'sla_breached')),
    conversation_id BLOB    NOT NULL,
    event_id        BLOB    NOT NULL,
    actor           BLOB    NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sent', 'skipped')),
    created_us      INTEGER NOT NULL,
    sent_us         INTEGER NULL,
    -- what an SLA alert says (clock, due time, policy name): no personal data
    detail          TEXT    NULL,
    PRIMARY KEY (tenant_id, notification_id),
    UNIQUE (tenant_id, user_id, event_id)
);
INSERT INTO agent_notifications_new (tenant_id, notification_id, user_id, kind,
    conversation_id, event_id, actor, state, created_us, sent_us) SELECT tenant_id, notification_id, user_id, kind,
    conversation_id, event_id, actor, state, created_us, sent_us FROM agent_notifications;
DROP TABLE agent_notifications;
ALTER TABLE agent_notifications_new RENAME TO agent_notifications;
CREATE INDEX agent_notifications_pending ON agent_notifications (tenant_id, user_id, state);

-- `inherit`: as `delivery` says; otherwise `each`, `digest` or `off` for SLA alerts only
ALTER TABLE agent_notification_prefs ADD COLUMN sla_alerts TEXT NOT NULL DEFAULT 'inherit'
    CHECK (sla_alerts IN ('inherit', 'each', 'digest', 'off'));

ALTER TABLE notification_conversations ADD COLUMN assignee_id BLOB NULL;
