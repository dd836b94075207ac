//! Integration tests of the notification service against real SQLite and PostgreSQL (with
//! row-level security armed), the real directory, ingest and conversation services, a real
//! SMTP relay (aiosmtpd with STARTTLS and AUTH) and real HTTP webhook receivers. One binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agents;
mod bench;
mod helpers;
mod inbox_relay;
mod openapi;
mod outbound;
mod receiver;
mod reply_parts;
mod sla_alerts;
mod smtp_sink;
mod stream_notifications;
mod webhook_events;
mod webhooks;
