-- Search without plaintext: a blind index of the words of subjects, bodies (inbound: the text
-- ingest handed over, i.e. subject and snippet; outbound replies and notes: their text).
-- `term` is the first 16 bytes of HMAC-SHA256 under the tenant's index key, per purpose
-- (`conversation.search.word` for whole words, `conversation.search.prefix` for prefixes of
-- 3–12 letters), of the lower-cased word: equal words match, nothing can be read back.
-- Rows are only ever inserted (idempotently) and copied to a merge target; the projection
-- rebuilds them from the log.

CREATE TABLE conversation_search (
    tenant_id       uuid  NOT NULL,
    term            bytea NOT NULL,
    conversation_id uuid  NOT NULL,
    PRIMARY KEY (tenant_id, term, conversation_id)
);
CREATE INDEX conversation_search_conv ON conversation_search (tenant_id, conversation_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON conversation_search TO postvak_app;

ALTER TABLE conversation_search ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_search TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);

-- Shared drafts and templates: working copies, not facts, so they live outside the log (like
-- credentials, ADR 0004): a draft changes with every save and is gone once sent (the reply is
-- the event). Content is sealed with the tenant key. A draft is edited by one person at a
-- time: `lock_holder` until `lock_expires_us` (nil id = a machine caller).
CREATE TABLE conversation_drafts (
    tenant_id       uuid   NOT NULL,
    draft_id        uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    version         bigint NOT NULL,
    content         bytea  NOT NULL,
    content_key     uuid   NOT NULL,
    created_by      uuid   NULL,
    updated_by      uuid   NULL,
    lock_holder     uuid   NULL,
    lock_expires_us bigint NULL,
    created_us      bigint NOT NULL,
    updated_us      bigint NOT NULL,
    PRIMARY KEY (tenant_id, draft_id)
);
CREATE INDEX conversation_drafts_conv ON conversation_drafts (tenant_id, conversation_id);

-- Templates of the tenant (inbox_id NULL) or of one inbox; name plain, subject/body sealed.
CREATE TABLE conversation_templates (
    tenant_id   uuid   NOT NULL,
    template_id uuid   NOT NULL,
    inbox_id    uuid   NULL,
    name        text   NOT NULL,
    content     bytea  NOT NULL,
    content_key uuid   NOT NULL,
    version     bigint NOT NULL,
    created_us  bigint NOT NULL,
    updated_us  bigint NOT NULL,
    PRIMARY KEY (tenant_id, template_id)
);
CREATE INDEX conversation_templates_inbox ON conversation_templates (tenant_id, inbox_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON conversation_drafts, conversation_templates TO postvak_app;

ALTER TABLE conversation_drafts ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_drafts TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);
ALTER TABLE conversation_templates ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_templates TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);
