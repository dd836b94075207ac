-- The inbox and participant views of the conversation list carry what the list orders and
-- filters by most (ADR 0018): `updated_us` (and, for inboxes, `status`) copied from the
-- conversation by the projection in the same transaction, so a page of an inbox's open
-- conversations is one walk of one index that stops after the page.
ALTER TABLE conversation_inboxes
    ADD COLUMN status     text   NOT NULL DEFAULT 'open',
    ADD COLUMN updated_us bigint NOT NULL DEFAULT 0;
UPDATE conversation_inboxes v SET status = c.status, updated_us = c.updated_us
    FROM conversations c
    WHERE c.tenant_id = v.tenant_id AND c.conversation_id = v.conversation_id;
DROP INDEX conversation_inboxes_inbox;
CREATE INDEX conversation_inboxes_recent
    ON conversation_inboxes (tenant_id, inbox_id, archived, updated_us DESC, conversation_id DESC);
CREATE INDEX conversation_inboxes_status
    ON conversation_inboxes (tenant_id, inbox_id, archived, status, updated_us DESC, conversation_id DESC);

ALTER TABLE conversation_participants ADD COLUMN updated_us bigint NOT NULL DEFAULT 0;
UPDATE conversation_participants v SET updated_us = c.updated_us
    FROM conversations c
    WHERE c.tenant_id = v.tenant_id AND c.conversation_id = v.conversation_id;
DROP INDEX conversation_participants_user;
CREATE INDEX conversation_participants_recent
    ON conversation_participants (tenant_id, user_id, updated_us DESC, conversation_id DESC);
