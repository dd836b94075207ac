-- Agent alerts for SLA warnings and breaches (ADR 0015): the kinds, a per-user preference for
-- them, and the conversation's assignee as the notification service last saw it (who is told;
-- unassigned, the inbox's admins).

ALTER TABLE agent_notifications DROP CONSTRAINT agent_notifications_kind_check;
ALTER TABLE agent_notifications ADD CONSTRAINT agent_notifications_kind_check
    CHECK (kind IN ('assigned', 'mentioned', 'reply_failed', 'sla_warning', 'sla_breached'));
-- what an SLA alert says (clock, due time, policy name): no personal data
ALTER TABLE agent_notifications ADD COLUMN detail text NULL;

-- `inherit`: as `delivery` says; otherwise `each`, `digest` or `off` for SLA alerts only
ALTER TABLE agent_notification_prefs ADD COLUMN sla_alerts text NOT NULL DEFAULT 'inherit'
    CHECK (sla_alerts IN ('inherit', 'each', 'digest', 'off'));

ALTER TABLE notification_conversations ADD COLUMN assignee_id uuid NULL;
