-- The ingest service's tables (see the PostgreSQL twin for the why).

CREATE TABLE ingest_index_keys (
    tenant_id  BLOB PRIMARY KEY,
    key_id     BLOB    NOT NULL,
    sealed     BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE ingest_blobs (
    tenant_id  BLOB    NOT NULL,
    blob_id    BLOB    NOT NULL,
    key_id     BLOB    NOT NULL,
    size       INTEGER NOT NULL,
    sealed     BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, blob_id)
);

CREATE TABLE ingest_thread_index (
    tenant_id       BLOB NOT NULL,
    inbox_id        BLOB NOT NULL,
    mid_hash        TEXT NOT NULL,
    conversation_id BLOB NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id, mid_hash)
);

CREATE TABLE ingest_messages (
    tenant_id  BLOB NOT NULL,
    message_id BLOB NOT NULL,
    inbox_id   BLOB NOT NULL,
    stream_id  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX ingest_messages_inbox ON ingest_messages (tenant_id, inbox_id, message_id);

CREATE TABLE ingest_idempotency (
    tenant_id    BLOB    NOT NULL,
    inbox_id     BLOB    NOT NULL,
    key_hash     TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id, key_hash)
);
