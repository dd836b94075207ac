-- Contacts (issue 7, item 7; ADR 0012). The read model of the `contact` stream.
--
-- No plaintext personal data: `profile` is the sealed JSON of name, addresses, organisation
-- and notes under the contact's OWN data key (`profile_key`, scope `contact:<id>`), so
-- destroying that key makes the row unreadable as well as the contact's events. Addresses are
-- found by a blind index (`address_index`: HMAC-SHA256 of the normalised address under the
-- tenant's index key, purpose `contact.address`), the organisation filter likewise
-- (`organisation_index`, purpose `contact.organisation`). Erasure empties `profile` and both
-- indexes; `contact_conversations` holds only ids and stays.

CREATE TABLE contacts (
    tenant_id          uuid    NOT NULL,
    contact_id         uuid    NOT NULL,
    status             text    NOT NULL CHECK (status IN ('active', 'merged', 'erased')),
    merged_into        uuid    NULL,
    vip                boolean NOT NULL DEFAULT false,
    organisation_index bytea   NULL,
    profile            bytea   NULL,
    profile_key        uuid    NULL,
    conversation_count bigint  NOT NULL DEFAULT 0,
    created_us         bigint  NOT NULL,
    updated_us         bigint  NOT NULL,
    version            bigint  NOT NULL,
    PRIMARY KEY (tenant_id, contact_id)
);
CREATE INDEX contacts_org ON contacts (tenant_id, organisation_index);

-- One address belongs to at most one contact. Also the reservation taken before a contact is
-- created, so two senders with one address never become two contacts.
CREATE TABLE contact_addresses (
    tenant_id     uuid  NOT NULL,
    address_index bytea NOT NULL,
    contact_id    uuid  NOT NULL,
    PRIMARY KEY (tenant_id, address_index)
);
CREATE INDEX contact_addresses_contact ON contact_addresses (tenant_id, contact_id);

CREATE TABLE contact_conversations (
    tenant_id       uuid   NOT NULL,
    contact_id      uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    inbox_id        uuid   NOT NULL,
    linked_us       bigint NOT NULL,
    PRIMARY KEY (tenant_id, contact_id, conversation_id)
);
CREATE INDEX contact_conversations_conv ON contact_conversations (tenant_id, conversation_id);

-- Global (no RLS, no personal data): conversation events with mail addresses, handed from the
-- consumer to the worker that files their senders and recipients as contacts.
CREATE TABLE contact_link_queue (
    event_id       uuid   PRIMARY KEY,
    tenant_id      uuid   NOT NULL,
    stream_id      text   NOT NULL,
    stream_version bigint NOT NULL,
    queued_at      bigint NOT NULL,
    attempts       bigint NOT NULL DEFAULT 0,
    last_error     text   NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON contacts, contact_addresses, contact_conversations,
    contact_link_queue TO postvak_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['contacts', 'contact_addresses', 'contact_conversations']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO postvak_app '
            'USING (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid)',
            t);
    END LOOP;
END $$;
