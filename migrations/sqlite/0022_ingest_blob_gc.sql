-- Blob garbage collection (see the PostgreSQL twin for the why).

CREATE TABLE ingest_blob_refs (
    tenant_id  BLOB NOT NULL,
    blob_id    BLOB NOT NULL,
    message_id BLOB NOT NULL,
    PRIMARY KEY (tenant_id, blob_id, message_id)
);

CREATE TABLE ingest_blob_gc (
    tenant_id     BLOB PRIMARY KEY,
    backfilled_at INTEGER NOT NULL,
    last_sweep_at INTEGER
);

CREATE INDEX ingest_blobs_age ON ingest_blobs (tenant_id, created_at);
