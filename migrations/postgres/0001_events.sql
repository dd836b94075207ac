-- The event store of one cell: an append-only, hash-chained log of encrypted events, the head of
-- every stream (what optimistic concurrency locks on, and what lets `verify` notice deleted
-- trailing events), and the wrapped data keys that seal payloads.
--
-- Run as the database owner. The application acts as `postvak_app`, which may read and append
-- events but never UPDATE, DELETE or TRUNCATE them.

-- Roles are cluster-wide and tests migrate many databases at once: creating the role races with
-- itself, and the loser sees either error.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'postvak_app') THEN
        CREATE ROLE postvak_app NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- The owner must be able to `SET ROLE postvak_app` (a superuser already can).
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'postvak_app', 'MEMBER') THEN
        EXECUTE format('GRANT postvak_app TO %I', current_user);
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

CREATE TABLE events (
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    -- Transaction of the commit: tailers read `(tx, global_position)` below the snapshot's xmin,
    -- so an event of a transaction that commits late is never skipped.
    tx              xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL,
    tenant_id       uuid        NOT NULL,
    stream_type     text        NOT NULL,
    -- Byte order ("C"): `verify` merges events and heads by (tenant_id, stream_id).
    stream_id       text COLLATE "C" NOT NULL,
    stream_version  bigint      NOT NULL CONSTRAINT events_stream_version_positive CHECK (stream_version > 0),
    event_type      text        NOT NULL,
    event_version   integer     NOT NULL,
    key_id          uuid        NOT NULL,
    -- nonce ‖ AES-256-GCM ciphertext ‖ tag
    payload         bytea       NOT NULL,
    -- The metadata JSON bytes exactly as hashed (jsonb would reorder keys).
    metadata        bytea       NOT NULL,
    recorded_at     timestamptz NOT NULL,
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (tenant_id, stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

CREATE INDEX events_tx_position ON events (tx, global_position);
CREATE INDEX events_tenant_tx_position ON events (tenant_id, tx, global_position);

CREATE TABLE streams (
    tenant_id   uuid   NOT NULL,
    stream_id   text COLLATE "C" NOT NULL,
    stream_type text   NOT NULL,
    version     bigint NOT NULL CHECK (version > 0),
    head_hash   bytea  NOT NULL,
    CONSTRAINT streams_pkey PRIMARY KEY (tenant_id, stream_id)
) WITH (fillfactor = 70); -- every append updates its head: leave room for HOT updates

CREATE TABLE data_keys (
    key_id       uuid        NOT NULL PRIMARY KEY,
    tenant_id    uuid        NOT NULL,
    scope        text        NOT NULL,
    subject      text,
    -- The id of the master key (KEK) that wrapped it.
    kek_id       text        NOT NULL,
    -- NULL once destroyed (crypto-shredding).
    wrapped      bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    destroyed_at timestamptz,
    CONSTRAINT data_keys_scope CHECK (
        (scope = 'tenant' AND subject IS NULL) OR (scope = 'subject' AND subject IS NOT NULL)
    )
);

CREATE UNIQUE INDEX data_keys_scope_key ON data_keys (tenant_id, scope, coalesce(subject, ''));

-- Belt and braces: even a role that was granted too much cannot rewrite history without first
-- disabling this trigger, which takes the table owner or a superuser.
CREATE FUNCTION postvak_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_append_only_rows
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION postvak_events_append_only();

CREATE TRIGGER events_append_only_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION postvak_events_append_only();

GRANT USAGE ON SCHEMA public TO postvak_app;
-- No UPDATE, DELETE or TRUNCATE on events. The identity column's sequence needs no grant: an
-- identity default is evaluated without checking privileges on its internal sequence.
GRANT SELECT, INSERT ON events TO postvak_app;
GRANT SELECT, INSERT, UPDATE ON streams TO postvak_app;
-- UPDATE is how a data key is destroyed (wrapped := NULL).
GRANT SELECT, INSERT, UPDATE ON data_keys TO postvak_app;
