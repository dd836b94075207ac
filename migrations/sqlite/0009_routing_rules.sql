-- Routing rules, agent availability and workload (see the PostgreSQL twin; SQLite
-- has no row-level security; ADR 0008).
-- Rules and availability are events on routing-owned streams; these are their read models.

-- Rules of an inbox, in order. The body (conditions may hold addresses) is sealed with the
-- tenant key.
CREATE TABLE routing_rules (
    tenant_id  BLOB   NOT NULL,
    inbox_id   BLOB   NOT NULL,
    rule_id    BLOB   NOT NULL,
    position   INTEGER NOT NULL,
    body       BLOB  NOT NULL,
    body_key   BLOB   NOT NULL,
    created_us INTEGER NOT NULL,
    updated_us INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, rule_id)
);
CREATE INDEX routing_rules_inbox ON routing_rules (tenant_id, inbox_id, position);

CREATE TABLE routing_availability (
    tenant_id  BLOB   NOT NULL,
    user_id    BLOB   NOT NULL,
    status     TEXT   NOT NULL,
    capacity   INTEGER NULL,
    updated_us INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

-- What rules need to know about each conversation, from its events: assignee (workload),
-- open or not, tags, the channel it came in by and the last customer/agent message times.
CREATE TABLE routing_rule_conversations (
    tenant_id        BLOB    NOT NULL,
    conversation_id  BLOB    NOT NULL,
    inbox_id         BLOB    NOT NULL,
    assignee         BLOB    NULL,
    open             INTEGER NOT NULL,
    tags             TEXT    NOT NULL,
    channel          TEXT    NULL,
    last_customer_us INTEGER  NULL,
    last_agent_us    INTEGER  NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);
CREATE INDEX routing_rule_conversations_assignee ON routing_rule_conversations (tenant_id, assignee, open);

-- Round-robin pointers: the agent a (rule, team) pointer assigned last.
CREATE TABLE routing_pointers (
    tenant_id BLOB NOT NULL,
    pointer   TEXT NOT NULL,
    last_user BLOB NOT NULL,
    PRIMARY KEY (tenant_id, pointer)
);

-- The channel each inbound message came by (from ingest's `message.received`).
CREATE TABLE routing_message_channels (
    tenant_id  BLOB NOT NULL,
    message_id BLOB NOT NULL,
    channel    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);

-- Global (no RLS, no personal data): conversation events waiting for rule evaluation, handed
-- from the consumer to the worker (the worker sends commands, which a consumer transaction
-- must not wait on).
CREATE TABLE routing_rule_queue (
    event_id        BLOB   NOT NULL PRIMARY KEY,
    tenant_id       BLOB   NOT NULL,
    conversation_id BLOB   NOT NULL,
    inbox_id        BLOB   NOT NULL,
    trigger         TEXT   NOT NULL,
    message_id      BLOB   NULL,
    queued_at       INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT   NULL
);
