-- Contacts (see the PostgreSQL twin and ADR 0012).

CREATE TABLE contacts (
    tenant_id          BLOB    NOT NULL,
    contact_id         BLOB    NOT NULL,
    status             TEXT    NOT NULL CHECK (status IN ('active', 'merged', 'erased')),
    merged_into        BLOB    NULL,
    vip                INTEGER NOT NULL DEFAULT 0,
    organisation_index BLOB    NULL,
    profile            BLOB    NULL,
    profile_key        BLOB    NULL,
    conversation_count INTEGER NOT NULL DEFAULT 0,
    created_us         INTEGER NOT NULL,
    updated_us         INTEGER NOT NULL,
    version            INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, contact_id)
);
CREATE INDEX contacts_org ON contacts (tenant_id, organisation_index);

CREATE TABLE contact_addresses (
    tenant_id     BLOB NOT NULL,
    address_index BLOB NOT NULL,
    contact_id    BLOB NOT NULL,
    PRIMARY KEY (tenant_id, address_index)
) WITHOUT ROWID;
CREATE INDEX contact_addresses_contact ON contact_addresses (tenant_id, contact_id);

CREATE TABLE contact_conversations (
    tenant_id       BLOB    NOT NULL,
    contact_id      BLOB    NOT NULL,
    conversation_id BLOB    NOT NULL,
    inbox_id        BLOB    NOT NULL,
    linked_us       INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, contact_id, conversation_id)
) WITHOUT ROWID;
CREATE INDEX contact_conversations_conv ON contact_conversations (tenant_id, conversation_id);

CREATE TABLE contact_link_queue (
    event_id       BLOB    PRIMARY KEY,
    tenant_id      BLOB    NOT NULL,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    queued_at      INTEGER NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT    NULL
);
