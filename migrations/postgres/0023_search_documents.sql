-- The search index, one row per indexed document instead of one per term (ADR 0030).
--
-- A document is what one event adds to a conversation's searchable text: an inbound or
-- outbound message (`doc_id` = its message id) or a note (its note id). `terms` holds the
-- blind-index terms of its words and their prefixes as bigints: the first 8 bytes of
-- HMAC-SHA256 under the tenant's index key, per purpose (`conversation.search.word`,
-- `conversation.search.prefix`), read big-endian. Equal words match, nothing can be read back.
-- A GIN index over `terms` is the inverted index (`terms @> ARRAY[t]`): a 25 KB body brings
-- ~3,700 terms, which as rows of `conversation_search` cost ~3,700 heap tuples and twice as
-- many B-tree entries per mail (770 KB per conversation measured); as one array they are one
-- tuple and GIN's pending list takes the entries in bulk.
-- Rows are inserted once per document (idempotently) and moved to the target of a merge,
-- like the messages they index; the projection rebuilds them from the log.

CREATE TABLE conversation_search_docs (
    tenant_id       uuid     NOT NULL,
    doc_id          uuid     NOT NULL,
    conversation_id uuid     NOT NULL,
    terms           bigint[] NOT NULL,
    PRIMARY KEY (tenant_id, doc_id)
);
-- Terms are random-looking: not worth an attempt at compression when they go to TOAST.
ALTER TABLE conversation_search_docs ALTER COLUMN terms SET STORAGE EXTERNAL;
CREATE INDEX conversation_search_docs_conv ON conversation_search_docs (tenant_id, conversation_id);
CREATE INDEX conversation_search_docs_terms ON conversation_search_docs USING gin (terms);

GRANT SELECT, INSERT, UPDATE, DELETE ON conversation_search_docs TO postvak_app;

ALTER TABLE conversation_search_docs ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_search_docs TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);

-- What was indexed before: one document per conversation (its id as `doc_id`, which no
-- message or note shares), its 16-byte terms cut to their first 8 bytes, the same term the
-- new code computes for the same word.
INSERT INTO conversation_search_docs (tenant_id, doc_id, conversation_id, terms)
SELECT tenant_id, conversation_id, conversation_id,
       array_agg(DISTINCT ('x' || encode(substring(term FROM 1 FOR 8), 'hex'))::bit(64)::bigint)
FROM conversation_search
GROUP BY tenant_id, conversation_id;

DROP TABLE conversation_search;
