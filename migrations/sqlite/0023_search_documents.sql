-- The search index, one document per message or note (see the PostgreSQL twin, ADR 0030).
-- SQLite's inverted index is FTS5: a contentless table (nothing but the index is kept),
-- without positions (`detail=none`: a document has a term or not), whose rowid is the
-- document's `doc_rowid`. A term is the 8-byte blind-index term as 16 lowercase hex digits.
-- A merge moves the document row to the target; the FTS5 row does not change.

CREATE TABLE conversation_search_docs (
    doc_rowid       INTEGER PRIMARY KEY,
    tenant_id       BLOB NOT NULL,
    doc_id          BLOB NOT NULL,
    conversation_id BLOB NOT NULL,
    UNIQUE (tenant_id, doc_id)
);
CREATE INDEX conversation_search_docs_conv ON conversation_search_docs (tenant_id, conversation_id);
CREATE VIRTUAL TABLE conversation_search_fts USING fts5(
    terms, content = '', detail = none, tokenize = 'ascii'
);

-- What was indexed before: one document per conversation (its id as `doc_id`).
INSERT INTO conversation_search_docs (tenant_id, doc_id, conversation_id)
SELECT DISTINCT tenant_id, conversation_id, conversation_id FROM conversation_search;
INSERT INTO conversation_search_fts (rowid, terms)
SELECT d.doc_rowid,
       (SELECT group_concat(lower(hex(substr(s.term, 1, 8))), ' ') FROM conversation_search s
        WHERE s.tenant_id = d.tenant_id AND s.conversation_id = d.conversation_id)
FROM conversation_search_docs d;

DROP TABLE conversation_search;
