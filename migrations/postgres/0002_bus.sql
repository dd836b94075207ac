-- Bus bookkeeping: the relay's position per cell, consumer checkpoints, processed event ids
-- (dedupe of at-least-once deliveries), dead letters, and command replies kept under their
-- idempotency key. Runs after 0001, which creates the application role.

-- Where the relay of a cell stands: the last event it published and saw acknowledged.
CREATE TABLE IF NOT EXISTS relay_checkpoints (
    cell            TEXT        PRIMARY KEY,
    tx              BIGINT      NOT NULL,
    global_position BIGINT      NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A consumer's low watermark: every event at or before it was handled, skipped as a duplicate
-- or dead-lettered. Written in the same transaction as the handler's effect.
CREATE TABLE IF NOT EXISTS consumer_checkpoints (
    consumer        TEXT        PRIMARY KEY,
    tx              BIGINT      NOT NULL,
    global_position BIGINT      NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Event ids a consumer has handled: a redelivery finds its id here and is skipped.
CREATE TABLE IF NOT EXISTS consumer_processed (
    consumer        TEXT        NOT NULL,
    event_id        UUID        NOT NULL,
    tx              BIGINT      NOT NULL,
    global_position BIGINT      NOT NULL,
    processed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Events a consumer gave up on after its attempts ran out (or a permanent error).
CREATE TABLE IF NOT EXISTS consumer_dead_letters (
    consumer        TEXT        NOT NULL,
    event_id        UUID        NOT NULL,
    tenant_id       UUID        NOT NULL,
    stream_type     TEXT        NOT NULL,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    tx              BIGINT      NOT NULL,
    global_position BIGINT      NOT NULL,
    attempts        BIGINT      NOT NULL,
    error           TEXT        NOT NULL,
    dead_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- The reply a command produced, under its idempotency key: a retried request gets this reply
-- and the handler does not run again. `request_hash` (SHA-256 of the payload) refuses a key
-- reused for a different request.
CREATE TABLE IF NOT EXISTS command_replies (
    service         TEXT        NOT NULL,
    command         TEXT        NOT NULL,
    idempotency_key TEXT        NOT NULL,
    tenant_id       UUID        NOT NULL,
    request_hash    BYTEA       NOT NULL,
    reply           JSONB,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (service, command, idempotency_key)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON
    relay_checkpoints,
    consumer_checkpoints,
    consumer_processed,
    consumer_dead_letters,
    command_replies
TO postvak_app;
