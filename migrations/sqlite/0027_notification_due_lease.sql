-- A due row's lease (ADR 0041). Agent notifications share one due row per user; the mailer
-- claims the row (`leased_until` in the future) before it reads the user's pending
-- notifications and sends them, and clears it when it moves the row. Another process's
-- dispatcher skips a leased row, so two notification processes never mail the same
-- notification twice; a lease left by a crashed process ends by itself. Mail and webhook
-- rows never carry one (their own rows hold their sending state).
ALTER TABLE notification_due ADD COLUMN leased_until bigint NULL;
