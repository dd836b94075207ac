-- Blob garbage collection (ADR 0021): which blobs each stored message's event names, so that a
-- sweeper can remove blobs no message references (left by an older version's failed delivery,
-- or by a message removed later) once they are older than a grace period.

-- Written in the delivery's transaction, together with the event and the blobs.
CREATE TABLE ingest_blob_refs (
    tenant_id  uuid NOT NULL,
    blob_id    uuid NOT NULL,
    message_id uuid NOT NULL,
    PRIMARY KEY (tenant_id, blob_id, message_id)
);

-- Per tenant: whether the references of messages stored before this migration were recovered
-- from the log (the sweeper removes nothing of a tenant before that).
CREATE TABLE ingest_blob_gc (
    tenant_id     uuid PRIMARY KEY,
    backfilled_at timestamptz NOT NULL DEFAULT now(),
    last_sweep_at timestamptz
);

-- The sweeper walks a tenant's blobs oldest first.
CREATE INDEX ingest_blobs_age ON ingest_blobs (tenant_id, created_at);

GRANT SELECT, INSERT, DELETE ON ingest_blob_refs TO postvak_app;
GRANT SELECT, INSERT, UPDATE ON ingest_blob_gc TO postvak_app;
GRANT DELETE ON ingest_blobs TO postvak_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['ingest_blob_refs', 'ingest_blob_gc']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO postvak_app '
            'USING (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END $$;
