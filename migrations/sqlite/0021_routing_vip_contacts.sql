-- VIP contacts as the routing service knows them (see the PostgreSQL migration of the same
-- number; SQLite has no row-level security; ADR 0020).

CREATE TABLE routing_contacts (
    tenant_id  BLOB    NOT NULL,
    contact_id BLOB    NOT NULL,
    version    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, contact_id)
);

CREATE TABLE routing_vip_addresses (
    tenant_id     BLOB NOT NULL,
    address_index BLOB NOT NULL,
    contact_id    BLOB NOT NULL,
    PRIMARY KEY (tenant_id, address_index, contact_id)
);
CREATE INDEX routing_vip_addresses_contact ON routing_vip_addresses (tenant_id, contact_id);
