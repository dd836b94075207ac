-- Routing rules, agent availability and workload (routing service; ADR 0008).
-- Rules and availability are events on routing-owned streams; these are their read models.

-- Rules of an inbox, in order. The body (conditions may hold addresses) is sealed with the
-- tenant key.
CREATE TABLE routing_rules (
    tenant_id  uuid   NOT NULL,
    inbox_id   uuid   NOT NULL,
    rule_id    uuid   NOT NULL,
    position   bigint NOT NULL,
    body       bytea  NOT NULL,
    body_key   uuid   NOT NULL,
    created_us bigint NOT NULL,
    updated_us bigint NOT NULL,
    PRIMARY KEY (tenant_id, rule_id)
);
CREATE INDEX routing_rules_inbox ON routing_rules (tenant_id, inbox_id, position);

CREATE TABLE routing_availability (
    tenant_id  uuid   NOT NULL,
    user_id    uuid   NOT NULL,
    status     text   NOT NULL,
    capacity   bigint NULL,
    updated_us bigint NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

-- What rules need to know about each conversation, from its events: assignee (workload),
-- open or not, tags, the channel it came in by and the last customer/agent message times.
CREATE TABLE routing_rule_conversations (
    tenant_id        uuid    NOT NULL,
    conversation_id  uuid    NOT NULL,
    inbox_id         uuid    NOT NULL,
    assignee         uuid    NULL,
    open             boolean NOT NULL,
    tags             text    NOT NULL,
    channel          text    NULL,
    last_customer_us bigint  NULL,
    last_agent_us    bigint  NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);
CREATE INDEX routing_rule_conversations_assignee ON routing_rule_conversations (tenant_id, assignee, open);

-- Round-robin pointers: the agent a (rule, team) pointer assigned last.
CREATE TABLE routing_pointers (
    tenant_id uuid NOT NULL,
    pointer   text NOT NULL,
    last_user uuid NOT NULL,
    PRIMARY KEY (tenant_id, pointer)
);

-- The channel each inbound message came by (from ingest's `message.received`).
CREATE TABLE routing_message_channels (
    tenant_id  uuid NOT NULL,
    message_id uuid NOT NULL,
    channel    text NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);

-- Global (no RLS, no personal data): conversation events waiting for rule evaluation, handed
-- from the consumer to the worker (the worker sends commands, which a consumer transaction
-- must not wait on).
CREATE TABLE routing_rule_queue (
    event_id        uuid   PRIMARY KEY,
    tenant_id       uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    inbox_id        uuid   NOT NULL,
    trigger         text   NOT NULL,
    message_id      uuid   NULL,
    queued_at       bigint NOT NULL,
    attempts        bigint NOT NULL DEFAULT 0,
    last_error      text   NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON routing_rules, routing_availability,
    routing_rule_conversations, routing_pointers, routing_message_channels,
    routing_rule_queue TO postvak_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['routing_rules', 'routing_availability',
                             'routing_rule_conversations', 'routing_pointers',
                             'routing_message_channels']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO postvak_app '
            'USING (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END $$;
