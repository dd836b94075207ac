-- Notification service: the outbound mail outbox, tenant webhooks and their deliveries, and
-- one global schedule of due work. Mail content and webhook payloads and secrets are sealed
-- with the tenant key (`*_key` names the data key). Times are Unix microseconds. Tenant tables
-- carry row-level security (ADR 0005); `notification_due` holds only ids and times so that
-- the workers can find due work of every tenant before binding one.

CREATE TABLE outbound_mail (
    tenant_id       uuid   NOT NULL,
    message_id      uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    inbox_id        uuid   NOT NULL,
    event_id        uuid   NOT NULL,
    -- sealed JSON: the `reply.queued` payload
    content         bytea  NOT NULL,
    content_key     uuid   NOT NULL,
    state           text   NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
    attempts        bigint NOT NULL DEFAULT 0,
    next_attempt_at bigint NOT NULL,
    last_error      text   NULL,
    created_us      bigint NOT NULL,
    sent_us         bigint NULL,
    PRIMARY KEY (tenant_id, message_id)
);

CREATE TABLE webhook_subscriptions (
    tenant_id   uuid   NOT NULL,
    webhook_id  uuid   NOT NULL,
    url         text   NOT NULL,
    inbox_id    uuid   NULL,
    -- space-separated event names
    events      text   NOT NULL,
    secret      bytea  NOT NULL,
    secret_key  uuid   NOT NULL,
    created_us  bigint NOT NULL,
    PRIMARY KEY (tenant_id, webhook_id)
);

CREATE TABLE webhook_deliveries (
    tenant_id       uuid   NOT NULL,
    delivery_id     uuid   NOT NULL,
    webhook_id      uuid   NOT NULL,
    event_id        uuid   NOT NULL,
    event_type      text   NOT NULL,
    -- sealed JSON body as sent
    payload         bytea  NOT NULL,
    payload_key     uuid   NOT NULL,
    state           text   NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        bigint NOT NULL DEFAULT 0,
    next_attempt_at bigint NOT NULL,
    last_status     bigint NULL,
    last_error      text   NULL,
    created_us      bigint NOT NULL,
    delivered_us    bigint NULL,
    PRIMARY KEY (tenant_id, delivery_id),
    UNIQUE (tenant_id, webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (tenant_id, webhook_id, created_us DESC);

-- conversation → inbox, for filtering webhooks by inbox on events that don't name it
CREATE TABLE notification_conversations (
    tenant_id       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    inbox_id        uuid NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);

-- agent notifications (assigned, mentioned): sent one by one or as a digest per preference
CREATE TABLE agent_notifications (
    tenant_id       uuid   NOT NULL,
    notification_id uuid   NOT NULL,
    user_id         uuid   NOT NULL,
    kind            text   NOT NULL CHECK (kind IN ('assigned', 'mentioned')),
    conversation_id uuid   NOT NULL,
    event_id        uuid   NOT NULL,
    actor           uuid   NULL,
    state           text   NOT NULL CHECK (state IN ('pending', 'sent', 'skipped')),
    created_us      bigint NOT NULL,
    sent_us         bigint NULL,
    PRIMARY KEY (tenant_id, notification_id),
    UNIQUE (tenant_id, user_id, event_id)
);
CREATE INDEX agent_notifications_pending ON agent_notifications (tenant_id, user_id, state);

CREATE TABLE agent_notification_prefs (
    tenant_id       uuid   NOT NULL,
    user_id         uuid   NOT NULL,
    delivery        text   NOT NULL CHECK (delivery IN ('each', 'digest', 'off')),
    digest_secs     bigint NOT NULL,
    updated_us      bigint NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

-- due work of every tenant: `kind` is `mail` or `webhook`; `lane` groups work that shares a
-- concurrency limit (one webhook endpoint, or the relay)
CREATE TABLE notification_due (
    kind      text   NOT NULL,
    item_id   uuid   NOT NULL,
    tenant_id uuid   NOT NULL,
    lane      text   NOT NULL,
    due_at    bigint NOT NULL,
    PRIMARY KEY (kind, item_id)
);
CREATE INDEX notification_due_at ON notification_due (kind, due_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON outbound_mail, webhook_subscriptions,
    webhook_deliveries, notification_conversations, agent_notifications,
    agent_notification_prefs, notification_due TO postvak_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['outbound_mail', 'webhook_subscriptions', 'webhook_deliveries',
                             'notification_conversations', 'agent_notifications',
                             'agent_notification_prefs']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO postvak_app '
            'USING (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END $$;
