-- Draft providers (ADR 0016): HTTP endpoints a tenant registers (for all its inboxes or one)
-- that are asked for a suggested reply when a customer writes. The signing secret is sealed
-- with the tenant key. `draft_suggestion_queue` holds only ids and times (read before any
-- tenant is bound, like `conversation_inbound_queue`): the requests still to make. A draft
-- made from a suggestion names its provider in `conversation_drafts.suggested_by`.

CREATE TABLE draft_providers (
    tenant_id   uuid    NOT NULL,
    provider_id uuid    NOT NULL,
    inbox_id    uuid    NULL,
    url         text    NOT NULL,
    secret      bytea   NOT NULL,
    secret_key  uuid    NOT NULL,
    enabled     boolean NOT NULL,
    created_us  bigint  NOT NULL,
    updated_us  bigint  NOT NULL,
    PRIMARY KEY (tenant_id, provider_id)
);

CREATE TABLE draft_suggestion_queue (
    tenant_id       uuid   NOT NULL,
    provider_id     uuid   NOT NULL,
    message_id      uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    queued_at       bigint NOT NULL,
    next_attempt_at bigint NOT NULL,
    attempts        bigint NOT NULL DEFAULT 0,
    last_error      text   NULL,
    PRIMARY KEY (tenant_id, provider_id, message_id)
);
CREATE INDEX draft_suggestion_queue_due ON draft_suggestion_queue (next_attempt_at);

ALTER TABLE conversation_drafts ADD COLUMN suggested_by uuid NULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON draft_providers, draft_suggestion_queue TO postvak_app;

ALTER TABLE draft_providers ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON draft_providers TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);
