-- The search index's pending list is merged off the write path (ADR 0036).
--
-- GIN's fast update (on by default) appends a document's entries to the index's pending list;
-- the insert that finds the list over `gin_pending_list_limit` merges the whole list into the
-- index in its own transaction. On a 2.5 GB index that one insert took 178–549 ms (ADR 0035):
-- a reply, or an inbound mail's projection, waited for everyone's merge.
-- A maintainer task of the conversation service now calls `postvak_search_merge_pending()` a
-- few times a second, so the list stays far below its limit and no write merges it. The limit
-- is raised so that a maintainer that falls behind for a while still leaves writes alone;
-- searches read the (short) list as before, so nothing indexed is ever invisible.
--
-- `gin_clean_pending_list` may only be called by the index's owner; the application acts as
-- `postvak_app`. The function runs as its owner (the migrating role) and does nothing else.
-- A second caller while one merge runs returns at once instead of queueing behind it.

ALTER INDEX conversation_search_docs_terms SET (gin_pending_list_limit = 16384);

CREATE FUNCTION postvak_search_merge_pending() RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $$
BEGIN
    -- One merge at a time across every process of the cell; the key is this function's.
    IF NOT pg_try_advisory_xact_lock(7136042508273512449) THEN
        RETURN 0;
    END IF;
    RETURN gin_clean_pending_list('conversation_search_docs_terms'::regclass);
END
$$;

REVOKE ALL ON FUNCTION postvak_search_merge_pending() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION postvak_search_merge_pending() TO postvak_app;
