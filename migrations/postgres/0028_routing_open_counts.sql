-- Each agent's open assigned conversations, counted as routing's rule facts change (ADR 0042).
-- Least-loaded assignment and capacity read an agent's count here instead of counting the
-- agent's open rows of `routing_rule_conversations` at every decision, which grew with the
-- tenant's open conversations. Kept in the transaction that changes a fact's assignee or
-- open flag; existing facts are counted once here.
CREATE TABLE routing_open_counts (
    tenant_id uuid   NOT NULL,
    user_id   uuid   NOT NULL,
    open      bigint NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

INSERT INTO routing_open_counts (tenant_id, user_id, open)
    SELECT tenant_id, assignee, COUNT(*) FROM routing_rule_conversations
    WHERE open AND assignee IS NOT NULL
    GROUP BY tenant_id, assignee;

GRANT SELECT, INSERT, UPDATE, DELETE ON routing_open_counts TO postvak_app;

ALTER TABLE routing_open_counts ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON routing_open_counts TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);
