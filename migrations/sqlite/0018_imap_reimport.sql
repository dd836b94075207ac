-- A quarantined IMAP message imported by request (ADR 0017): the delivery it became, so a
-- repeated request answers the same without fetching again.
ALTER TABLE imap_quarantine ADD COLUMN reimported_message_id BLOB NULL;
ALTER TABLE imap_quarantine ADD COLUMN reimported_conversation_id BLOB NULL;
ALTER TABLE imap_quarantine ADD COLUMN reimported_duplicate INTEGER NULL;
ALTER TABLE imap_quarantine ADD COLUMN reimported_at INTEGER NULL;
