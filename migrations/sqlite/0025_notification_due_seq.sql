-- A due row's schedule counter (ADR 0038). An agent's notifications share one due row per
-- user. The mailer reads the counter before it reads the user's pending notifications, and
-- moves the row (to the next sweep or digest) only while the counter is unchanged: a
-- notification recorded meanwhile keeps the row due now instead of waiting for the sweep.
ALTER TABLE notification_due ADD COLUMN seq bigint NOT NULL DEFAULT 0;
