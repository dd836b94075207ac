-- VIP contacts as the routing service knows them (ADR 0020): built by routing's rules consumer
-- from the conversation service's `contact` events, so a `vip_contact` rule condition can test
-- an inbound sender without reading the conversation service's tables.
--
-- Addresses are held only as the contacts' blind index (HMAC of the normalised address under
-- the tenant's index key, purpose `contact.address`): no address is stored here.

-- The newest `contact` stream version applied per contact: an older event delivered late never
-- undoes a newer one (a merge or an erasure stays final).
CREATE TABLE routing_contacts (
    tenant_id  uuid   NOT NULL,
    contact_id uuid   NOT NULL,
    version    bigint NOT NULL,
    PRIMARY KEY (tenant_id, contact_id)
);

-- One row per address of an active contact marked VIP. The contact is part of the key: while
-- one contact is merged into another, both may briefly list the same address.
CREATE TABLE routing_vip_addresses (
    tenant_id     uuid  NOT NULL,
    address_index bytea NOT NULL,
    contact_id    uuid  NOT NULL,
    PRIMARY KEY (tenant_id, address_index, contact_id)
);
CREATE INDEX routing_vip_addresses_contact ON routing_vip_addresses (tenant_id, contact_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON routing_contacts, routing_vip_addresses TO postvak_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['routing_contacts', 'routing_vip_addresses']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO postvak_app '
            'USING (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''postvak.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END $$;
