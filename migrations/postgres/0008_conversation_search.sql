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
