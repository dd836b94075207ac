//! The notification service: replies sent as the inbox through an SMTP relay (the outbound
//! outbox, ADR 0006), signed tenant webhooks (Standard Webhooks), and agent notifications
//! (assigned, mentioned; one mail each or a digest).
//!
//! All three follow one pattern: one durable consumer of `conversation` streams records work in
//! tables through the consumer's transaction (on SQLite that transaction holds the only writer
//! connection, so the handlers do no I/O of their own), and workers find due work in
//! `notification_due` and do it outside any transaction, with per-lane concurrency limits so
//! that one slow relay or endpoint never holds up the others.
//!
//! Wiring: `start(cells, cell, NotificationSettings { outbound_smtp: config.section(
//! "outbound_smtp")?, webhooks: config.section("webhooks")? }, cancel)` per cell, and
//! `api::routes` in the HTTP app (needs `web::Data<Directory>` and the authenticator).

pub mod agents;
pub mod api;
pub mod bench;
mod due;
pub mod outbound;
pub mod relays;
mod settings;
pub mod smtp;
pub mod ssrf;
pub mod webhooks;

pub use settings::{
    DkimAlgorithm, DkimKeySettings, NotificationSettings, OutboundSmtpSettings, SmtpSecurity,
    WebhookSettings,
};

use postvak_platform::cell::{Cell, Cells, Principal};
use postvak_platform::consumer::{EventHandler, HandlerError, run_consumer};
use postvak_platform::db::DbTx;
use postvak_platform::store::RecordedEvent;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Who the service acts as when it appends (e.g. `reply.failed`).
pub(crate) const SERVICE: Principal = Principal::Service {
    name: "notification",
};

/// Durable consumer name: one consumer feeds the outbox, the webhooks and the agent
/// notifications, so each conversation event costs one transaction here, not three.
pub const CONSUMER: &str = "notification";

/// Starts the notification service's background work for one cell: the consumer of
/// conversation events, the mail sender, the webhook deliverer and the agent-notification
/// mailer. They stop when `cancel` fires.
pub fn start(
    cells: &Cells,
    cell: Arc<Cell>,
    settings: NotificationSettings,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut part = outbound::start(cells, cell.clone(), settings.outbound_smtp, cancel.clone());
    let hooks = webhooks::start(cells, cell.clone(), settings.webhooks, cancel.clone());
    part.tasks.extend(hooks.tasks);
    let handler = Arc::new(Combined {
        whole_batch: hooks.handlers,
        per_event: part.handlers,
    });
    part.tasks.push(tokio::spawn({
        let (store, bus) = (cell.store.clone(), cell.bus.clone());
        async move {
            run_consumer(store, bus, handler, cancel).await;
        }
    }));
    part.tasks
}

/// What one part of the service contributes: event handlers and worker tasks.
pub(crate) struct Part {
    pub handlers: Vec<Arc<dyn EventHandler>>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Runs every part's handler on each event in the one consumer transaction. Each is
/// idempotent, so a retry after one of them failed repeats the others harmlessly; a
/// permanent failure of one dead-letters the event for all.
struct Combined {
    /// Given a batch's events all at once, before the others see any (the webhook fan-out,
    /// which writes many rows per statement). Its only table another part touches is
    /// `notification_conversations`, where it creates the row that the agent part's
    /// `assigned` later updates — so running it first keeps every outcome of event order.
    whole_batch: Vec<Arc<dyn EventHandler>>,
    /// Given the events one by one, each event to all of them in turn.
    per_event: Vec<Arc<dyn EventHandler>>,
}

#[async_trait::async_trait]
impl EventHandler for Combined {
    fn name(&self) -> &str {
        CONSUMER
    }

    fn stream_types(&self) -> Vec<String> {
        vec![postvak_proto::events::conversation::STREAM_CONVERSATION.to_owned()]
    }

    /// Many events per transaction: each part only writes rows through `tx`.
    fn batch_transactions(&self) -> bool {
        true
    }

    fn appends_events(&self) -> bool {
        self.whole_batch
            .iter()
            .chain(&self.per_event)
            .any(|h| h.appends_events())
    }

    fn committed(&self) {
        for h in self.whole_batch.iter().chain(&self.per_event) {
            h.committed();
        }
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.handle_batch(tx, &[event]).await
    }

    async fn handle_batch(
        &self,
        tx: &mut DbTx,
        events: &[&RecordedEvent],
    ) -> Result<(), HandlerError> {
        for h in &self.whole_batch {
            h.handle_batch(tx, events).await?;
        }
        for event in events {
            for h in &self.per_event {
                h.handle(tx, event).await?;
            }
        }
        Ok(())
    }
}

pub(crate) fn now_us() -> i64 {
    postvak_platform::store::micros(time::OffsetDateTime::now_utc())
}

/// Exponential backoff: `base · 2^(attempts-1)`, capped at `max`.
pub(crate) fn backoff(
    base: std::time::Duration,
    max: std::time::Duration,
    attempts: u32,
) -> std::time::Duration {
    let exp = attempts.saturating_sub(1).min(20);
    base.saturating_mul(2u32.saturating_pow(exp)).min(max)
}

pub(crate) fn duration_us(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
