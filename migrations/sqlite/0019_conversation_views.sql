-- See the PostgreSQL migration of the same number (ADR 0018).
ALTER TABLE conversation_inboxes ADD COLUMN status TEXT NOT NULL DEFAULT 'open';
ALTER TABLE conversation_inboxes ADD COLUMN updated_us INTEGER NOT NULL DEFAULT 0;
UPDATE conversation_inboxes SET
    status = (SELECT c.status FROM conversations c
              WHERE c.tenant_id = conversation_inboxes.tenant_id
                AND c.conversation_id = conversation_inboxes.conversation_id),
    updated_us = (SELECT c.updated_us FROM conversations c
                  WHERE c.tenant_id = conversation_inboxes.tenant_id
                    AND c.conversation_id = conversation_inboxes.conversation_id)
    WHERE EXISTS (SELECT 1 FROM conversations c
                  WHERE c.tenant_id = conversation_inboxes.tenant_id
                    AND c.conversation_id = conversation_inboxes.conversation_id);
DROP INDEX conversation_inboxes_inbox;
CREATE INDEX conversation_inboxes_recent
    ON conversation_inboxes (tenant_id, inbox_id, archived, updated_us DESC, conversation_id DESC);
CREATE INDEX conversation_inboxes_status
    ON conversation_inboxes (tenant_id, inbox_id, archived, status, updated_us DESC, conversation_id DESC);

ALTER TABLE conversation_participants ADD COLUMN updated_us INTEGER NOT NULL DEFAULT 0;
UPDATE conversation_participants SET
    updated_us = (SELECT c.updated_us FROM conversations c
                  WHERE c.tenant_id = conversation_participants.tenant_id
                    AND c.conversation_id = conversation_participants.conversation_id)
    WHERE EXISTS (SELECT 1 FROM conversations c
                  WHERE c.tenant_id = conversation_participants.tenant_id
                    AND c.conversation_id = conversation_participants.conversation_id);
DROP INDEX conversation_participants_user;
CREATE INDEX conversation_participants_recent
    ON conversation_participants (tenant_id, user_id, updated_us DESC, conversation_id DESC);
