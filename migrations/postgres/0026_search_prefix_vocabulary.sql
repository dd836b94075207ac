-- Prefix search through the tenant's vocabulary instead of prefix terms in every document
-- (ADR 0040).
--
-- A document used to carry the terms of its words and of their 3–12 character prefixes:
-- ~3,750 GIN entries for a 25 KB body, of which ~84% were prefixes. Merging them into the GIN
-- index was most of PostgreSQL's work in the routing pipeline. Now a document carries its
-- words' terms only, and a tenant's vocabulary lists, once per distinct word, which prefix
-- terms lead to which word term. A prefix query `abc*` becomes "any word the vocabulary lists
-- under abc" (`terms && ARRAY(...)`), which is how a search engine expands a prefix through
-- its term dictionary. Both columns are blind-index terms as in `conversation_search_docs`:
-- nothing can be read back.
--
-- Documents indexed before this migration keep their prefix terms, and a prefix query also
-- looks for the prefix term itself, so they are found as before, without a re-index.
-- Rows are only added (a word, once known, stays known); they go with the tenant.
--
-- No unique key, on purpose: an insert that meets a uniqueness conflict with a transaction
-- still in progress waits for it, and two transactions each writing several documents' new
-- words (a seeder, a batch) waited for each other crosswise: deadlock. A plain index never
-- makes an insert wait. Two transactions that learn the same new word at the same moment
-- both write its rows; a duplicate only repeats a word in a query's expansion, which `&&`
-- ignores. A transaction writes a word only after finding it missing, so replays add none.

CREATE TABLE conversation_search_prefixes (
    tenant_id uuid   NOT NULL,
    prefix    bigint NOT NULL,
    word      bigint NOT NULL
);
CREATE INDEX conversation_search_prefixes_key
    ON conversation_search_prefixes (tenant_id, prefix, word);

GRANT SELECT, INSERT ON conversation_search_prefixes TO postvak_app;

ALTER TABLE conversation_search_prefixes ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_search_prefixes TO postvak_app
    USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);
