//! The notification service: outbound SMTP as the inbox, agent notifications and signed
//! webhooks. Not built yet (its own issue).
