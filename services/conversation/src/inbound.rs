//! Background work: conversations from `message.received`, and the projection consumer.
//!
//! `message.received` is consumed with [`run_consumer`]: the handler only records the event in
//! `conversation_inbound_queue` through the consumer's transaction (an append needs the
//! database's writer, which that transaction holds on SQLite). A worker then appends each
//! queued message to its conversation — opening it with the inbox's members as participants
//! when new — updates the read model, and removes the row. Receiving the same message twice
//! changes nothing (the aggregate knows its message ids), so a crash anywhere repeats work
//! but never doubles it.
//!
//! The projection consumer applies every conversation event to the read model from the log,
//! idempotently: it repairs what a crash between an API append and its read-model write left
//! behind, and rebuilds the views on replay.

use crate::{Conversations, ServiceError, codec, now_us, projection};
use async_trait::async_trait;
use postvak_core::Aggregate;
use postvak_core::conversation::{
    Conversation, ConversationCommand, ConversationError, Mailbox, Message,
};
use postvak_platform::cell::{Cell, Cells, Principal, TenantContext};
use postvak_platform::consumer::{EventHandler, HandlerError, WakeAfterCommit, run_consumer};
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{RecordedEvent, StoreError, StreamRef};
use postvak_proto::events::conversation as cev;
use postvak_proto::events::ingest::{self as iev, MailboxV1, MessageReceivedV1};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Durable consumer names.
pub const INGEST_CONSUMER: &str = "conversation-inbound";
pub const PROJECTION_CONSUMER: &str = "conversation-projection";

const SERVICE: Principal = Principal::Service {
    name: "conversation",
};

/// Starts the conversation service's background work for one cell: the `message.received`
/// consumer, the worker that turns queued messages into conversations, the projection
/// consumer, and the `conversation.apply` command server (`commands.rs`). They stop when `cancel` fires.
pub fn start_consumers(
    cells: &Cells,
    cell: Arc<Cell>,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let wake = Arc::new(Notify::new());
    let service = Conversations::new(cells.clone());
    let inbound = Arc::new(InboundHandler {
        wake: WakeAfterCommit::new(wake.clone()),
    });
    let projector = Arc::new(ProjectionHandler {
        store: cell.store.clone(),
    });
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn({
        let (store, bus, cancel) = (cell.store.clone(), cell.bus.clone(), cancel.clone());
        async move {
            run_consumer(store, bus, inbound, cancel).await;
        }
    }));
    tasks.push(tokio::spawn({
        let (store, bus, cancel) = (cell.store.clone(), cell.bus.clone(), cancel.clone());
        async move {
            run_consumer(store, bus, projector, cancel).await;
        }
    }));
    tasks.push(tokio::spawn({
        let (cells, cell, cancel) = (cells.clone(), cell.clone(), cancel.clone());
        async move {
            match crate::commands::serve(&cells, cell, cancel).await {
                Ok(server) => {
                    let _ = server.await;
                }
                Err(e) => tracing::error!(error = %e, "cannot serve conversation.apply"),
            }
        }
    }));
    tasks.push(crate::files::start_sweeper(
        cells.clone(),
        cell.clone(),
        cancel.clone(),
    ));
    tasks.extend(crate::delivery::start(cells, cell.clone(), cancel.clone()));
    tasks.extend(crate::contacts::link::start(
        cells,
        cell.clone(),
        cancel.clone(),
    ));
    tasks.push(tokio::spawn(run_worker(service, cell, wake, cancel)));
    tasks
}

struct InboundHandler {
    wake: WakeAfterCommit,
}

#[async_trait]
impl EventHandler for InboundHandler {
    fn name(&self) -> &str {
        INGEST_CONSUMER
    }

    /// Its writes go through the transaction only: a fetch commits once (ADR 0030).
    fn batch_transactions(&self) -> bool {
        true
    }

    fn stream_types(&self) -> Vec<String> {
        vec![iev::STREAM_INBOUND_MESSAGE.to_owned()]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        if event.event_type != iev::MESSAGE_RECEIVED {
            return Ok(());
        }
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO conversation_inbound_queue (event_id, tenant_id, stream_id, stream_version, queued_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING"
        )
        .bind(event.event_id)
        .bind(event.tenant_id.0)
        .bind(&event.stream_id)
        .bind(i64::try_from(event.stream_version).unwrap_or(i64::MAX))
        .bind(now_us())
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(|e| HandlerError::Store(db_error(e)))?;
        self.wake.queued();
        Ok(())
    }

    fn committed(&self) {
        self.wake.committed();
    }
}

struct ProjectionHandler {
    store: Arc<dyn postvak_platform::store::EventStore>,
}

#[async_trait]
impl EventHandler for ProjectionHandler {
    fn name(&self) -> &str {
        PROJECTION_CONSUMER
    }

    /// Its writes go through the transaction only: a fetch commits once (ADR 0030).
    fn batch_transactions(&self) -> bool {
        true
    }

    fn stream_types(&self) -> Vec<String> {
        vec![cev::STREAM_CONVERSATION.to_owned()]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        project_from_log(self.store.as_ref(), tx, event)
            .await
            .map_err(HandlerError::Store)
    }
}

/// Conversations the inbound worker files into at once on PostgreSQL. Mails of one
/// conversation are filed one after the other, in queue order; on SQLite (one writer) one at
/// a time.
const RECEIVE_PARALLELISM: usize = 8;

async fn run_worker(
    service: Conversations,
    cell: Arc<Cell>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let db = cell.db().clone();
    let parallel = match db {
        postvak_platform::db::Db::Postgres(_) => RECEIVE_PARALLELISM,
        postvak_platform::db::Db::Sqlite(_) => 1,
    };
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let (mut failing, mut progressed) = (false, false);
        match crate::queue::next_batch(&db, &crate::queue::INBOUND).await {
            Ok(batch) => {
                for (ok, failed) in receive_batch(&service, &db, batch, parallel, &cancel).await {
                    progressed |= ok;
                    failing |= failed;
                }
                if cancel.is_cancelled() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the inbound queue");
                failing = true;
            }
        }
        if progressed {
            continue;
        }
        let pause = if failing {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// A queued mail, read from its stream: `Ok(None)` when it was erased (nothing to file).
type Opened = Result<Option<(TenantContext, MessageReceivedV1)>, ServiceError>;

/// Files a batch of queued mails: reads them `parallel` at a time, then files the mails of
/// each conversation in queue order, `parallel` conversations at once (ingest chose each
/// mail's conversation, so mails of different conversations do not depend on each other).
/// Returns, per conversation, whether some mail was filed and whether some failed.
async fn receive_batch(
    service: &Conversations,
    db: &postvak_platform::db::Db,
    batch: Vec<crate::queue::Queued>,
    parallel: usize,
    cancel: &CancellationToken,
) -> Vec<(bool, bool)> {
    use futures::StreamExt;
    let opened: Vec<(crate::queue::Queued, Opened)> = futures::stream::iter(batch)
        .map(|q| async move {
            let opened = service.open_queued(&q).await;
            (q, opened)
        })
        .buffered(parallel)
        .collect()
        .await;
    // One group per conversation, in queue order; a mail that could not be read is its own.
    let groups = postvak_core::batch::group_in_order(opened, |(q, o)| match o {
        Ok(Some((_, p))) => Some((q.tenant, p.conversation_id)),
        _ => None,
    });
    futures::stream::iter(groups)
        .map(|group| async move {
            let (mut ok, mut failed) = (false, false);
            for (q, opened) in group {
                if cancel.is_cancelled() {
                    break;
                }
                let outcome = match opened {
                    Ok(Some((ctx, p))) => service.receive(&ctx, &p).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                let settled = crate::queue::settle(
                    db,
                    &crate::queue::INBOUND,
                    q.event_id,
                    outcome,
                    "add a message to its conversation",
                )
                .await;
                ok |= settled;
                failed |= !settled;
            }
            (ok, failed)
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

fn mailbox(m: &MailboxV1) -> Option<Mailbox> {
    Some(Mailbox {
        name: m.name.clone(),
        address: m.address.clone()?,
    })
}

fn boxes(v: &[MailboxV1]) -> Vec<Mailbox> {
    v.iter().filter_map(mailbox).collect()
}

/// The conversation's view of a received mail.
pub(crate) fn message_of(p: &MessageReceivedV1) -> Message {
    let h = &p.headers;
    Message {
        message_id: p.message_id,
        message_id_header: p.message_id_header.clone(),
        in_reply_to: p.in_reply_to.clone(),
        references: p.references.clone(),
        subject: h.subject.clone(),
        from: boxes(&h.from),
        reply_to: boxes(&h.reply_to),
        to: boxes(&h.to),
        cc: boxes(&h.cc),
        snippet: p.snippet.clone(),
        search_words: p.search_words.clone(),
        body_text: None,
        text_blob: p.text_body.as_ref().map(|b| b.blob_id),
        html_blob: p.html_body.as_ref().map(|b| b.blob_id),
        attachments: u32::try_from(p.attachments.len()).unwrap_or(u32::MAX),
        files: p
            .attachments
            .iter()
            .map(|a| postvak_core::conversation::MessageFile {
                file_id: a.blob.blob_id,
                filename: a.filename.clone(),
                content_type: a.blob.content_type.clone(),
                size: a.blob.size,
                sha256: a.blob.sha256.clone(),
                inline: a.inline,
                content_id: a.content_id.clone(),
            })
            .collect(),
        body_html: None,
        auto_reply: p.flags.auto_reply || p.flags.bounce,
        author: None,
        at_us: p.received_at_us,
    }
}

impl Conversations {
    /// Reads a queued mail's event (`None`: erased, nothing left to file).
    async fn open_queued(&self, q: &crate::queue::Queued) -> Opened {
        let ctx = self.cells().context(q.tenant, SERVICE).await?;
        let stream = StreamRef::new(iev::STREAM_INBOUND_MESSAGE, q.stream_id.clone());
        let events = ctx
            .cell()
            .store
            .read_stream(q.tenant, &stream, q.stream_version)
            .await?;
        let Some(e) = events.iter().find(|e| e.event_id == q.event_id) else {
            return Err(ServiceError::Store(StoreError::Database(format!(
                "queued event {} is not in its stream",
                q.event_id
            ))));
        };
        match e.payload() {
            Ok(p) => Ok(Some((ctx, p))),
            // Erased: nothing left to file.
            Err(StoreError::Shredded { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Files a received mail into its conversation (ingest chose the id), opening it with
    /// the inbox's members as participants when it is new, following merges.
    pub async fn receive(
        &self,
        ctx: &TenantContext,
        p: &MessageReceivedV1,
    ) -> Result<(), ServiceError> {
        let message = message_of(p);
        let mut target = p.conversation_id;
        for _ in 0..8 {
            // The state read here is the one the change starts from (one read of the stream).
            let state = self.state(ctx, target).await?;
            let members = if state.is_open() {
                Vec::new()
            } else {
                self.members_of(ctx, p.inbox_id).await?
            };
            let result = self
                .change_from(ctx, target, None, Some(state), |s: &Conversation| {
                    Ok(vec![if s.is_open() || s.merged_into.is_some() {
                        ConversationCommand::ReceiveMessage {
                            message: message.clone(),
                        }
                    } else {
                        ConversationCommand::OpenFromMessage {
                            conversation_id: target,
                            inbox_id: p.inbox_id,
                            members: members.clone(),
                            message: message.clone(),
                        }
                    }])
                })
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(ServiceError::Domain(ConversationError::Merged { into })) => target = into,
                Err(e) => return Err(e),
            }
        }
        Err(ServiceError::Invalid(format!(
            "conversation {} is merged too deeply",
            p.conversation_id
        )))
    }
}

/// Replays `event`'s stream up to it and writes the read model (for the projection consumer
/// and rebuilds).
///
/// Every conversation event is appended together with its read model, in one transaction
/// (`commit_staged`, `conversation.apply`, the seeder): a row at this event's version or later
/// already holds it, and the event is skipped without reading the stream, opening its events,
/// sealing the row again or computing its search terms (on a realistic body, thousands of
/// HMACs). A rebuild starts from empty tables, so it writes everything.
pub(crate) async fn project_from_log(
    store: &dyn postvak_platform::store::EventStore,
    tx: &mut DbTx,
    event: &RecordedEvent,
) -> Result<(), StoreError> {
    tx.bind_tenant(event.tenant_id).await?;
    if let Some(id) = event
        .stream_id
        .strip_prefix("conv-")
        .and_then(|s| Uuid::parse_str(s).ok())
        && projection::version(tx, event.tenant_id, id)
            .await?
            .is_some_and(|v| v >= event.stream_version)
    {
        return Ok(());
    }
    let stream = StreamRef::new(event.stream_type.clone(), event.stream_id.clone());
    let history = store.read_stream(event.tenant_id, &stream, 1).await?;
    let mut state = Conversation::default();
    let mut this = None;
    for e in history
        .iter()
        .take_while(|e| e.stream_version <= event.stream_version)
    {
        let d = codec::decode(e)?;
        state = state.evolve(&d);
        if e.stream_version == event.stream_version {
            this = Some(d);
        }
    }
    let Some(this) = this else { return Ok(()) };
    let prepared = projection::prepare(
        store.keyring(),
        event.tenant_id,
        &state,
        event.stream_version,
        std::slice::from_ref(&this),
    )
    .await?;
    projection::write(tx, event.tenant_id, &prepared).await
}
