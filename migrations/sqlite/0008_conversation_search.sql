-- Search without plaintext (see the PostgreSQL twin): a blind index of words.

CREATE TABLE conversation_search (
    tenant_id       BLOB NOT NULL,
    term            BLOB NOT NULL,
    conversation_id BLOB NOT NULL,
    PRIMARY KEY (tenant_id, term, conversation_id)
) WITHOUT ROWID;
CREATE INDEX conversation_search_conv ON conversation_search (tenant_id, conversation_id);
