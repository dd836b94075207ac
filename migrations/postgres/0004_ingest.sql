-- The ingest service's tables in each cell. No plaintext personal data: blobs are AES-256-GCM
-- ciphertext under the tenant's data key; Message-IDs and idempotency keys appear only as
-- blind indexes (HMAC-SHA256 under a per-tenant index key, itself sealed by the keyring).

-- The per-tenant key of the blind indexes, sealed under the tenant's data key.
CREATE TABLE ingest_index_keys (
    tenant_id  uuid PRIMARY KEY,
    key_id     uuid        NOT NULL,
    sealed     bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Raw messages, text and HTML bodies, attachments. `blob_id` is derived from a keyed hash of
-- the content, so storing the same content twice is a no-op.
CREATE TABLE ingest_blobs (
    tenant_id  uuid        NOT NULL,
    blob_id    uuid        NOT NULL,
    key_id     uuid        NOT NULL,
    size       bigint      NOT NULL,
    -- nonce ‖ ciphertext ‖ tag
    sealed     bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, blob_id)
);

-- Message-ID → conversation, per inbox: the Message-IDs each inbox has seen (received, or
-- referenced by a received mail). The first conversation to claim an id keeps it.
CREATE TABLE ingest_thread_index (
    tenant_id       uuid NOT NULL,
    inbox_id        uuid NOT NULL,
    mid_hash        text NOT NULL,
    conversation_id uuid NOT NULL,
    PRIMARY KEY (tenant_id, inbox_id, mid_hash)
);

-- The messages each inbox holds, written before the 250 in the same transaction as the thread
-- index: ingest's own read model ("is it stored?") that never lags behind a commit.
CREATE TABLE ingest_messages (
    tenant_id  uuid NOT NULL,
    message_id uuid NOT NULL,
    inbox_id   uuid NOT NULL,
    stream_id  text NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX ingest_messages_inbox ON ingest_messages (tenant_id, inbox_id, message_id);

-- `Idempotency-Key`s of the raw-MIME endpoint: a key reused with another body is refused.
CREATE TABLE ingest_idempotency (
    tenant_id    uuid        NOT NULL,
    inbox_id     uuid        NOT NULL,
    key_hash     text        NOT NULL,
    request_hash text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, inbox_id, key_hash)
);

GRANT SELECT, INSERT, UPDATE ON ingest_index_keys, ingest_blobs, ingest_thread_index, ingest_messages,
    ingest_idempotency TO postvak_app;

-- Row-level security, the second wall behind every query's own `tenant_id` condition: the
-- application sets `postvak.tenant_id` in each transaction.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['ingest_index_keys', 'ingest_blobs', 'ingest_thread_index',
                             'ingest_messages', 'ingest_idempotency']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO postvak_app '
            'USING (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END $$;
