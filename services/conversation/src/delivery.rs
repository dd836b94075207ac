//! Replies' delivery as the conversation shows it (ADR 0013).
//!
//! The notification service owns the `outbound_mail` stream and reports there that a reply was
//! sent (`reply.sent`) or that it gave up on it (`reply.failed`). Only the owning service appends to a stream type, so this
//! service consumes that fact and records it itself:
//! - the consumer writes the read model (`conversation_reply_delivery`: state, SMTP code, the
//!   relay's answer sealed) and queues the failure, both through the consumer's transaction
//!   (on SQLite it holds the only writer, so it can't append);
//! - a worker appends `reply.delivery_failed` to the conversation stream through the
//!   aggregate (once per message: the aggregate knows its failed replies), then drops the
//!   queue row. The event reaches every reader of `/v1/stream`, webhooks, and the notification
//!   service, which alerts the reply's author by mail.
//!
//! `reply.sent` (the relay said 250) only fills the read model: `delivery` shows `sent` with
//! its time, and the conversation stream (its version, the ETag) is not touched (ADR 0016).
//! An outbound message without a report shows `queued`: it is waiting, being sent or retried.

use crate::{Conversations, now_us};
use async_trait::async_trait;
use postvak_core::conversation::{ConversationCommand, DeliveryFailure};
use postvak_platform::cell::{Cell, Cells, Principal, TenantContext};
use postvak_platform::consumer::{EventHandler, HandlerError, WakeAfterCommit, run_consumer};
use postvak_platform::crypto::Keyring;
use postvak_platform::db::{AsConn, Db, DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{EventStore, KeyScope, RecordedEvent, StoreError, TenantId};
use postvak_proto::events::notification::{self as nev, ReplyFailedV1, ReplySentV1};
use postvak_proto::rest::conversation as dto;
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Durable consumer name.
pub const DELIVERY_CONSUMER: &str = "conversation-delivery";

const SERVICE: Principal = Principal::Service {
    name: "conversation",
};

/// A queue row failing this often is left for a person (`last_error` says why).
const MAX_ATTEMPTS: i64 = 20;

fn aad(tenant: TenantId, message_id: Uuid) -> Vec<u8> {
    let mut a = b"postvak.conversation.delivery".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(message_id.as_bytes());
    a
}

/// The consumer of delivery reports and the worker that records failures on conversations.
pub(crate) fn start(
    cells: &Cells,
    cell: Arc<Cell>,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let wake = Arc::new(Notify::new());
    let handler = Arc::new(DeliveryHandler {
        wake: WakeAfterCommit::new(wake.clone()),
        store: cell.store.clone(),
    });
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn({
        let (store, bus, cancel) = (cell.store.clone(), cell.bus.clone(), cancel.clone());
        async move {
            run_consumer(store, bus, handler, cancel).await;
        }
    }));
    tasks.push(tokio::spawn(run_worker(
        Conversations::new(cells.clone()),
        cell,
        wake,
        cancel,
    )));
    tasks
}

struct DeliveryHandler {
    wake: WakeAfterCommit,
    store: Arc<dyn EventStore>,
}

#[async_trait]
impl EventHandler for DeliveryHandler {
    fn name(&self) -> &str {
        DELIVERY_CONSUMER
    }

    fn committed(&self) {
        self.wake.committed();
    }

    fn stream_types(&self) -> Vec<String> {
        vec![nev::STREAM_OUTBOUND_MAIL.to_owned()]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        if event.event_type == nev::REPLY_SENT {
            return record_sent(tx, event).await;
        }
        if event.event_type != nev::REPLY_FAILED {
            return Ok(());
        }
        let f: ReplyFailedV1 = match event.payload() {
            Ok(f) => f,
            // Erased: nothing left to show.
            Err(StoreError::Shredded { .. }) => return Ok(()),
            Err(e) => return Err(HandlerError::Permanent(e.to_string())),
        };
        let t = event.tenant_id;
        let (key, sealed) = self
            .store
            .keyring()
            .seal(
                t,
                &KeyScope::Tenant,
                f.detail.as_bytes(),
                &aad(t, f.message_id),
            )
            .await
            .map_err(|e| HandlerError::Store(StoreError::Crypto(e)))?;
        tx.bind_tenant(t).await?;
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO conversation_reply_delivery (tenant_id, message_id, conversation_id, \
             state, reason, permanent, smtp_code, author, detail, detail_key, at_us) \
             VALUES ($1, $2, $3, 'failed', $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (tenant_id, message_id) DO NOTHING"
        )
        .bind(t.0)
        .bind(f.message_id)
        .bind(f.conversation_id)
        .bind(&f.reason)
        .bind(f.reason == "rejected")
        .bind(f.smtp_code.map(i64::from))
        .bind(f.author)
        .bind(sealed)
        .bind(key)
        .bind(f.at_us)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(|e| HandlerError::Store(db_error(e)))?;
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO conversation_delivery_queue (tenant_id, message_id, conversation_id, \
             queued_at) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, message_id) DO NOTHING"
        )
        .bind(t.0)
        .bind(f.message_id)
        .bind(f.conversation_id)
        .bind(now_us())
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(|e| HandlerError::Store(db_error(e)))?;
        self.wake.queued();
        Ok(())
    }
}

/// `reply.sent` goes to the read model only: the conversation stream is not touched, so the
/// author's ETag stays valid after the mail leaves (ADR 0013, ADR 0016).
async fn record_sent(tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
    let s: ReplySentV1 = match event.payload() {
        Ok(s) => s,
        Err(StoreError::Shredded { .. }) => return Ok(()),
        Err(e) => return Err(HandlerError::Permanent(e.to_string())),
    };
    let t = event.tenant_id;
    tx.bind_tenant(t).await?;
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO conversation_reply_delivery (tenant_id, message_id, conversation_id, \
         state, smtp_code, at_us) VALUES ($1, $2, $3, 'sent', $4, $5) \
         ON CONFLICT (tenant_id, message_id) DO NOTHING"
    )
    .bind(t.0)
    .bind(s.message_id)
    .bind(s.conversation_id)
    .bind(i64::from(s.smtp_code))
    .bind(s.at_us)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(|e| HandlerError::Store(db_error(e)))
}

struct Queued {
    tenant: TenantId,
    message_id: Uuid,
    conversation_id: Uuid,
}

async fn next_batch(db: &Db) -> Result<Vec<Queued>, StoreError> {
    let mut tx = db.begin().await?;
    let rows: Vec<(Uuid, Uuid, Uuid)> = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT tenant_id, message_id, conversation_id FROM conversation_delivery_queue \
         WHERE attempts < $1 ORDER BY queued_at, message_id LIMIT 64"
    )
    .bind(MAX_ATTEMPTS)
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, message_id, conversation_id)| Queued {
            tenant: TenantId(tenant),
            message_id,
            conversation_id,
        })
        .collect())
}

async fn finish(db: &Db, q: &Queued, error: Option<&str>) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    match error {
        None => on_tx!(&mut tx, |c| sqlx::query(
            "DELETE FROM conversation_delivery_queue WHERE tenant_id = $1 AND message_id = $2"
        )
        .bind(q.tenant.0)
        .bind(q.message_id)
        .execute(c)
        .await
        .map(|_| ())),
        Some(e) => on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE conversation_delivery_queue SET attempts = attempts + 1, last_error = $1 \
             WHERE tenant_id = $2 AND message_id = $3"
        )
        .bind(e)
        .bind(q.tenant.0)
        .bind(q.message_id)
        .execute(c)
        .await
        .map(|_| ())),
    }
    .map_err(db_error)?;
    tx.commit().await
}

type FailureRow = (
    Option<String>,
    bool,
    Option<i64>,
    Option<Uuid>,
    Option<Vec<u8>>,
    Option<Uuid>,
    i64,
);

async fn record(svc: &Conversations, q: &Queued) -> Result<(), crate::ServiceError> {
    let ctx = svc.cells().context(q.tenant, SERVICE).await?;
    let t = q.tenant;
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let row: Option<FailureRow> = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT reason, permanent, smtp_code, author, detail, detail_key, at_us \
         FROM conversation_reply_delivery WHERE tenant_id = $1 AND message_id = $2 \
         AND state = 'failed'"
    )
    .bind(t.0)
    .bind(q.message_id)
    .fetch_optional(c)
    .await
    .and_then(|r| r
        .map(|r| Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
            r.try_get(5)?,
            r.try_get(6)?
        )))
        .transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    let Some((reason, permanent, smtp_code, author, detail, detail_key, at_us)) = row else {
        return Ok(());
    };
    let detail = open_detail(
        ctx.cell().store.keyring(),
        t,
        q.message_id,
        detail,
        detail_key,
    )
    .await?
    .unwrap_or_default();
    let failure = DeliveryFailure {
        message_id: q.message_id,
        reason: reason.unwrap_or_default(),
        permanent,
        smtp_code: smtp_code.and_then(|c| u16::try_from(c).ok()),
        detail,
        author,
        at_us,
    };
    svc.change(&ctx, q.conversation_id, None, |_| {
        Ok(vec![ConversationCommand::RecordDeliveryFailure(
            failure.clone(),
        )])
    })
    .await?;
    Ok(())
}

async fn open_detail(
    keyring: &Keyring,
    t: TenantId,
    message_id: Uuid,
    detail: Option<Vec<u8>>,
    key: Option<Uuid>,
) -> Result<Option<String>, StoreError> {
    let (Some(sealed), Some(key)) = (detail, key) else {
        return Ok(None);
    };
    match keyring.open(t, key, &sealed, &aad(t, message_id)).await {
        Ok(plain) => Ok(Some(String::from_utf8_lossy(&plain).into_owned())),
        Err(e) => Err(StoreError::Crypto(e)),
    }
}

async fn run_worker(
    service: Conversations,
    cell: Arc<Cell>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let db = cell.db().clone();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let (mut failing, mut progressed) = (false, false);
        match next_batch(&db).await {
            Ok(batch) => {
                for q in batch {
                    if cancel.is_cancelled() {
                        return;
                    }
                    let error = record(&service, &q).await.err().map(|e| e.to_string());
                    if let Some(e) = &error {
                        tracing::warn!(error = %e, message_id = %q.message_id, "cannot record a failed reply on its conversation; will retry");
                        failing = true;
                    } else {
                        progressed = true;
                    }
                    if let Err(e) = finish(&db, &q, error.as_deref()).await {
                        tracing::warn!(error = %e, "cannot update the delivery queue");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the delivery queue");
                failing = true;
            }
        }
        if progressed {
            continue;
        }
        let pause = if failing {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// The delivery of an outbound message nobody reported on yet.
pub(crate) fn queued() -> dto::MessageDelivery {
    dto::MessageDelivery {
        state: "queued".into(),
        reason: None,
        smtp_code: None,
        detail: None,
        at: None,
    }
}

/// message_id, state, reason, SMTP code, sealed detail, its key, time.
pub(crate) type DeliveryRow = (
    Uuid,
    String,
    Option<String>,
    Option<i64>,
    Option<Vec<u8>>,
    Option<Uuid>,
    i64,
);

/// Fills in `delivery` of the outbound messages among `messages` (of one conversation).
pub(crate) async fn attach(
    ctx: &TenantContext,
    conversation: Uuid,
    messages: &mut [dto::ConversationMessage],
) -> Result<(), StoreError> {
    if !messages.iter().any(|m| m.direction == "outbound") {
        return Ok(());
    }
    let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), false).await?;
    let rows = fetch(&mut tx, ctx.tenant(), conversation).await?;
    tx.commit().await?;
    apply(ctx, rows, messages).await
}

/// The delivery reports of a conversation's replies, read in the caller's transaction (see
/// [`apply`]).
pub(crate) async fn fetch(
    tx: &mut impl AsConn,
    t: TenantId,
    conversation: Uuid,
) -> Result<Vec<DeliveryRow>, StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "SELECT message_id, state, reason, smtp_code, detail, detail_key, at_us \
         FROM conversation_reply_delivery WHERE tenant_id = $1 AND conversation_id = $2"
    )
    .bind(t.0)
    .bind(conversation)
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
            r.try_get(5)?,
            r.try_get(6)?
        )))
        .collect()))
    .map_err(db_error)
}

/// What [`fetch`] read, on the outbound messages: `queued` until a report says otherwise.
pub(crate) async fn apply(
    ctx: &TenantContext,
    rows: Vec<DeliveryRow>,
    messages: &mut [dto::ConversationMessage],
) -> Result<(), StoreError> {
    let (t, keyring) = (ctx.tenant(), ctx.cell().store.keyring());
    for m in messages.iter_mut().filter(|m| m.direction == "outbound") {
        m.delivery = Some(queued());
    }
    for (id, state, reason, smtp_code, detail, key, at_us) in rows {
        let Some(m) = messages.iter_mut().find(|m| m.id == id) else {
            continue;
        };
        m.delivery = Some(dto::MessageDelivery {
            state,
            reason,
            smtp_code: smtp_code.and_then(|c| u16::try_from(c).ok()),
            detail: open_detail(keyring, t, id, detail, key).await?,
            at: Some(postvak_platform::store::from_micros(at_us)),
        });
    }
    Ok(())
}
