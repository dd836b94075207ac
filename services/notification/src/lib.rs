//! The notification service: replies sent as the inbox through an SMTP relay (the outbound
//! outbox, ADR 0006) and signed tenant webhooks (Standard Webhooks).
//!
//! Both follow one pattern: a durable consumer of `conversation` streams records work in a
//! table through the consumer's transaction (on SQLite that transaction holds the only writer
//! connection, so the handler never does I/O of its own), and a worker finds due work in
//! `notification_due` and does it outside any transaction, with per-lane concurrency limits
//! so that one slow relay or endpoint never holds up the others.

pub mod agents;
pub mod api;
pub mod bench;
mod due;
pub mod outbound;
mod settings;
pub mod webhooks;

pub use settings::{NotificationSettings, OutboundSmtpSettings, SmtpSecurity, WebhookSettings};

use postvak_platform::cell::{Cell, Cells, Principal};
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::store::{StoreError, TenantId};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Who the service acts as when it appends (e.g. `reply.failed`).
pub(crate) const SERVICE: Principal = Principal::Service {
    name: "notification",
};

/// Starts the notification service's background work for one cell: the outbox consumer and
/// sender, and the webhook consumer and deliverer. They stop when `cancel` fires.
pub fn start(
    cells: &Cells,
    cell: Arc<Cell>,
    settings: NotificationSettings,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut tasks = outbound::start(cells, cell.clone(), settings.outbound_smtp, cancel.clone());
    tasks.extend(webhooks::start(cells, cell, settings.webhooks, cancel));
    tasks
}

pub(crate) fn now_us() -> i64 {
    postvak_platform::store::micros(time::OffsetDateTime::now_utc())
}

/// Arms row-level security for `tenant` inside a transaction that was not opened with
/// `Db::tenant_tx` (a consumer's).
pub(crate) async fn bind_tenant(tx: &mut DbTx, tenant: TenantId) -> Result<(), StoreError> {
    if let DbTx::Postgres(c) = tx {
        sqlx::query("SELECT set_config('postvak.tenant_id', $1, true)")
            .bind(tenant.0.to_string())
            .execute(&mut **c)
            .await
            .map_err(db_error)?;
    }
    Ok(())
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
