-- Routing: durable timers, SLA policies and clocks, automation settings, and the metrics
-- projections (ADR 0009). Times are Unix microseconds.
--
-- `routing_timers` holds only ids, kinds, times and non-personal parameters, so it carries no
-- row-level security: the runner finds due timers of every tenant before it binds one (like
-- `notification_due`). Every other table is a tenant table with row-level security (ADR 0005).

CREATE TABLE routing_timers (
    timer_id        uuid   NOT NULL PRIMARY KEY,
    tenant_id       uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    -- snooze_wake, escalate, auto_close, sla_warning, sla_breach
    kind            text   NOT NULL,
    -- which SLA clock and cycle, or the action settings in force when it was scheduled (JSON)
    params          text   NOT NULL,
    due_at          bigint NOT NULL,
    state           text   NOT NULL CHECK (state IN ('pending', 'fired', 'cancelled')),
    -- the event that scheduled it
    cause_event_id  uuid   NULL,
    created_us      bigint NOT NULL,
    done_us         bigint NULL,
    -- what firing did: `applied`, or the refusal code of the command
    outcome         text   NULL
);
CREATE INDEX routing_timers_due ON routing_timers (state, due_at);
CREATE INDEX routing_timers_by_conversation ON routing_timers (tenant_id, conversation_id, kind, state);

-- an inbox's time zone and business hours, from the directory's inbox events
CREATE TABLE routing_inbox_calendars (
    tenant_id      uuid   NOT NULL,
    inbox_id       uuid   NOT NULL,
    timezone       text   NULL,
    business_hours text   NULL,
    PRIMARY KEY (tenant_id, inbox_id)
);

CREATE TABLE routing_sla_policies (
    tenant_id  uuid   NOT NULL,
    inbox_id   uuid   NOT NULL,
    policy_id  uuid   NOT NULL,
    -- JSON: the REST shape
    policy     text   NOT NULL,
    updated_us bigint NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id)
);

CREATE TABLE routing_automation (
    tenant_id  uuid   NOT NULL,
    inbox_id   uuid   NOT NULL,
    settings   text   NOT NULL,
    updated_us bigint NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id)
);

-- what the timer consumer knows of a conversation, and its SLA clocks (JSON)
CREATE TABLE routing_conversations (
    tenant_id       uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    inbox_id        uuid   NOT NULL,
    status          text   NOT NULL,
    priority        text   NOT NULL,
    assignee        uuid   NULL,
    awaiting_reply  boolean NOT NULL,
    replied         boolean NOT NULL,
    clocks          text   NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);

-- metrics: one row per conversation ...
CREATE TABLE routing_metric_conversations (
    tenant_id         uuid    NOT NULL,
    conversation_id   uuid    NOT NULL,
    inbox_id          uuid    NOT NULL,
    status            text    NOT NULL,
    assignee          uuid    NULL,
    opened_us         bigint  NOT NULL,
    awaiting_since_us bigint  NULL,
    first_response_us bigint  NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);
CREATE INDEX routing_metric_conversations_inbox ON routing_metric_conversations (tenant_id, inbox_id);

-- ... and one row per measured fact: `first_response` and `resolution` (value = seconds),
-- `reply`, `reopened`, `sla_breach`, `sla_warning`, `stale_refused`, `template_used`
CREATE TABLE routing_metric_facts (
    tenant_id       uuid   NOT NULL,
    event_id        uuid   NOT NULL,
    kind            text   NOT NULL,
    inbox_id        uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    user_id         uuid   NULL,
    at_us           bigint NOT NULL,
    value           bigint NULL,
    PRIMARY KEY (tenant_id, event_id, kind)
);
CREATE INDEX routing_metric_facts_at ON routing_metric_facts (tenant_id, kind, at_us);

GRANT SELECT, INSERT, UPDATE, DELETE ON routing_timers, routing_inbox_calendars,
    routing_sla_policies, routing_automation, routing_conversations,
    routing_metric_conversations, routing_metric_facts TO postvak_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['routing_inbox_calendars', 'routing_sla_policies',
                             'routing_automation', 'routing_conversations',
                             'routing_metric_conversations', 'routing_metric_facts']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO postvak_app '
            'USING (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END $$;
