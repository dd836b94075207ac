-- The event store of one cell (SQLite mirror of migrations/postgres/0001_events.sql).
-- UUIDs are 16-byte BLOBs, timestamps INTEGER microseconds since the epoch. One writer at a
-- time: rowid order is commit order, so `tx` is always 0.

CREATE TABLE events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    tx              INTEGER NOT NULL DEFAULT 0,
    event_id        BLOB    NOT NULL UNIQUE,
    tenant_id       BLOB    NOT NULL,
    stream_type     TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL CHECK (stream_version > 0),
    event_type      TEXT    NOT NULL,
    event_version   INTEGER NOT NULL,
    key_id          BLOB    NOT NULL,
    -- nonce ‖ AES-256-GCM ciphertext ‖ tag
    payload         BLOB    NOT NULL,
    -- The metadata JSON bytes exactly as hashed.
    metadata        BLOB    NOT NULL,
    recorded_at     INTEGER NOT NULL,
    prev_hash       BLOB    NOT NULL,
    hash            BLOB    NOT NULL,
    UNIQUE (tenant_id, stream_id, stream_version)
);

CREATE INDEX events_tenant_position ON events (tenant_id, global_position);

CREATE TABLE streams (
    tenant_id   BLOB    NOT NULL,
    stream_id   TEXT    NOT NULL,
    stream_type TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version > 0),
    head_hash   BLOB    NOT NULL,
    PRIMARY KEY (tenant_id, stream_id)
) WITHOUT ROWID;

CREATE TABLE data_keys (
    key_id       BLOB    NOT NULL PRIMARY KEY,
    tenant_id    BLOB    NOT NULL,
    scope        TEXT    NOT NULL,
    subject      TEXT,
    kek_id       TEXT    NOT NULL,
    -- NULL once destroyed (crypto-shredding).
    wrapped      BLOB,
    created_at   INTEGER NOT NULL,
    destroyed_at INTEGER,
    CHECK ((scope = 'tenant' AND subject IS NULL) OR (scope = 'subject' AND subject IS NOT NULL))
);

CREATE UNIQUE INDEX data_keys_scope_key ON data_keys (tenant_id, scope, coalesce(subject, ''));

-- SQLite has no roles: the append-only rule is these triggers.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only (UPDATE refused)');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only (DELETE refused)');
END;
