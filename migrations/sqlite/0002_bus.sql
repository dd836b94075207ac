-- Bus bookkeeping (see the PostgreSQL migration of the same number for what each table is).
-- UUIDs are stored as hyphenated text; times as RFC 3339 text.

CREATE TABLE IF NOT EXISTS relay_checkpoints (
    cell            TEXT    PRIMARY KEY,
    tx              INTEGER NOT NULL,
    global_position INTEGER NOT NULL,
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE IF NOT EXISTS consumer_checkpoints (
    consumer        TEXT    PRIMARY KEY,
    tx              INTEGER NOT NULL,
    global_position INTEGER NOT NULL,
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE IF NOT EXISTS consumer_processed (
    consumer        TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    tx              INTEGER NOT NULL,
    global_position INTEGER NOT NULL,
    processed_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, event_id)
) STRICT;

CREATE TABLE IF NOT EXISTS consumer_dead_letters (
    consumer        TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    tenant_id       TEXT    NOT NULL,
    stream_type     TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    tx              INTEGER NOT NULL,
    global_position INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    error           TEXT    NOT NULL,
    dead_at         TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, event_id)
) STRICT;

CREATE TABLE IF NOT EXISTS command_replies (
    service         TEXT NOT NULL,
    command         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    tenant_id       TEXT NOT NULL,
    request_hash    BLOB NOT NULL,
    reply           TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (service, command, idempotency_key)
) STRICT;
