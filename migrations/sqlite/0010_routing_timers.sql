-- Routing (see the PostgreSQL twin; SQLite has no row-level security): durable timers, SLA
-- policies and clocks, automation settings, and the metrics projections (ADR 0009). Times are Unix microseconds.
--
-- `routing_timers` holds only ids, kinds, times and non-personal parameters, so it carries no
-- row-level security: the runner finds due timers of every tenant before it binds one (like
-- `notification_due`). Every other table is a tenant table with row-level security (ADR 0005).

CREATE TABLE routing_timers (
    timer_id        BLOB   NOT NULL PRIMARY KEY,
    tenant_id       BLOB   NOT NULL,
    conversation_id BLOB   NOT NULL,
    -- snooze_wake, escalate, auto_close, sla_warning, sla_breach
    kind            TEXT   NOT NULL,
    -- which SLA clock and cycle, or the action settings in force when it was scheduled (JSON)
    params          TEXT   NOT NULL,
    due_at          INTEGER NOT NULL,
    state           TEXT   NOT NULL CHECK (state IN ('pending', 'fired', 'cancelled')),
    -- the event that scheduled it
    cause_event_id  BLOB   NULL,
    created_us      INTEGER NOT NULL,
    done_us         INTEGER NULL,
    -- what firing did: `applied`, or the refusal code of the command
    outcome         TEXT   NULL
);
CREATE INDEX routing_timers_due ON routing_timers (state, due_at);
CREATE INDEX routing_timers_by_conversation ON routing_timers (tenant_id, conversation_id, kind, state);

-- an inbox's time zone and business hours, from the directory's inbox events
CREATE TABLE routing_inbox_calendars (
    tenant_id      BLOB   NOT NULL,
    inbox_id       BLOB   NOT NULL,
    timezone       TEXT   NULL,
    business_hours TEXT   NULL,
    PRIMARY KEY (tenant_id, inbox_id)
);

CREATE TABLE routing_sla_policies (
    tenant_id  BLOB   NOT NULL,
    inbox_id   BLOB   NOT NULL,
    policy_id  BLOB   NOT NULL,
    -- JSON: the REST shape
    policy     TEXT   NOT NULL,
    updated_us INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id)
);

CREATE TABLE routing_automation (
    tenant_id  BLOB   NOT NULL,
    inbox_id   BLOB   NOT NULL,
    settings   TEXT   NOT NULL,
    updated_us INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id)
);

-- what the timer consumer knows of a conversation, and its SLA clocks (JSON)
CREATE TABLE routing_conversations (
    tenant_id       BLOB   NOT NULL,
    conversation_id BLOB   NOT NULL,
    inbox_id        BLOB   NOT NULL,
    status          TEXT   NOT NULL,
    priority        TEXT   NOT NULL,
    assignee        BLOB   NULL,
    awaiting_reply  INTEGER NOT NULL,
    replied         INTEGER NOT NULL,
    clocks          TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);

-- metrics: one row per conversation ...
CREATE TABLE routing_metric_conversations (
    tenant_id         BLOB    NOT NULL,
    conversation_id   BLOB    NOT NULL,
    inbox_id          BLOB    NOT NULL,
    status            TEXT    NOT NULL,
    assignee          BLOB    NULL,
    opened_us         INTEGER  NOT NULL,
    awaiting_since_us INTEGER  NULL,
    first_response_us INTEGER  NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);
CREATE INDEX routing_metric_conversations_inbox ON routing_metric_conversations (tenant_id, inbox_id);

-- ... and one row per measured fact: `first_response` and `resolution` (value = seconds),
-- `reply`, `reopened`, `sla_breach`, `sla_warning`, `stale_refused`, `template_used`
CREATE TABLE routing_metric_facts (
    tenant_id       BLOB   NOT NULL,
    event_id        BLOB   NOT NULL,
    kind            TEXT   NOT NULL,
    inbox_id        BLOB   NOT NULL,
    conversation_id BLOB   NOT NULL,
    user_id         BLOB   NULL,
    at_us           INTEGER NOT NULL,
    value           INTEGER NULL,
    PRIMARY KEY (tenant_id, event_id, kind)
);
CREATE INDEX routing_metric_facts_at ON routing_metric_facts (tenant_id, kind, at_us);

