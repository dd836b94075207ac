-- Replies' delivery as the conversation service sees it, and agent alerts for failed replies.
--
-- `conversation_reply_delivery` (conversation service) is the read model of the notification
-- service's `reply.failed` facts: the conversation API shows it on outbound messages. The
-- relay's answer may name addresses, so it is sealed with the tenant key.
-- `conversation_delivery_queue` holds only ids: failures the conversation service still has to
-- append to the conversation stream (`reply.delivery_failed`); it is read before any tenant is
-- bound, like `conversation_inbound_queue`, so it carries no row-level security.

CREATE TABLE conversation_reply_delivery (
    tenant_id       uuid   NOT NULL,
    message_id      uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    state           text   NOT NULL CHECK (state IN ('sent', 'failed')),
    reason          text   NULL,
    permanent       boolean NOT NULL DEFAULT false,
    smtp_code       bigint NULL,
    author          uuid   NULL,
    -- sealed: the relay's answer or the error
    detail          bytea  NULL,
    detail_key      uuid   NULL,
    at_us           bigint NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX conversation_reply_delivery_conv ON conversation_reply_delivery (tenant_id, conversation_id);

CREATE TABLE conversation_delivery_queue (
    tenant_id       uuid   NOT NULL,
    message_id      uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    queued_at       bigint NOT NULL,
    attempts        bigint NOT NULL DEFAULT 0,
    last_error      text   NULL,
    PRIMARY KEY (tenant_id, message_id)
);

-- agent notifications: a reply of yours failed
ALTER TABLE agent_notifications DROP CONSTRAINT agent_notifications_kind_check;
ALTER TABLE agent_notifications ADD CONSTRAINT agent_notifications_kind_check
    CHECK (kind IN ('assigned', 'mentioned', 'reply_failed'));

GRANT SELECT, INSERT, UPDATE, DELETE ON conversation_reply_delivery,
    conversation_delivery_queue TO postvak_app;

ALTER TABLE conversation_reply_delivery ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_reply_delivery TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);
