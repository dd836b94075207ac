//! Background work of contacts: the consumer of `conversation` and `contact` events, and the
//! worker that files senders and recipients as contacts.
//!
//! Like the inbound consumer, the handler only queues conversation events that carry mail
//! addresses (`contact_link_queue`, ids only) in the consumer's transaction, because filing
//! appends to contact streams and an append needs the database's writer, which that
//! transaction holds on SQLite. The worker then files each queued event and removes the row;
//! filing is idempotent (an address already held, a conversation already linked change
//! nothing), so a crash repeats work but never doubles it. `contact` events are applied to the
//! read model from the log in the handler itself, which repairs what a crash between an API
//! append and its read-model write left behind.

use super::{ContactServiceError, Contacts, codec, read};
use crate::now_us;
use async_trait::async_trait;
use postvak_core::Aggregate;
use postvak_core::contact::{Contact, normalise_address};
use postvak_platform::cell::{Cell, Cells, Principal, TenantContext};
use postvak_platform::consumer::{EventHandler, HandlerError, WakeAfterCommit, run_consumer};
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{
    EventData, EventStore, LogPosition, RecordedEvent, StoreError, StreamRef,
};
use postvak_proto::events::contact as cev;
use postvak_proto::events::conversation::{self as conv, MessageV1};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Durable consumer name.
pub const CONTACTS_CONSUMER: &str = "conversation-contacts";

const SERVICE: Principal = Principal::Service {
    name: "conversation",
};

/// Starts the contacts consumer and its filing worker for one cell.
pub(crate) fn start(
    cells: &Cells,
    cell: Arc<Cell>,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let wake = Arc::new(Notify::new());
    let handler = Arc::new(ContactsHandler {
        store: cell.store.clone(),
        wake: WakeAfterCommit::new(wake.clone()),
    });
    let service = Contacts::new(cells.clone());
    vec![
        tokio::spawn({
            let (store, bus, cancel) = (cell.store.clone(), cell.bus.clone(), cancel.clone());
            async move {
                run_consumer(store, bus, handler, cancel).await;
            }
        }),
        tokio::spawn(run_worker(service, cell, wake, cancel)),
    ]
}

struct ContactsHandler {
    store: Arc<dyn EventStore>,
    wake: WakeAfterCommit,
}

/// Conversation events whose mailboxes become contacts.
fn carries_addresses(event_type: &str) -> bool {
    event_type == conv::MESSAGE_RECEIVED || event_type == conv::REPLY_QUEUED
}

#[async_trait]
impl EventHandler for ContactsHandler {
    fn name(&self) -> &str {
        CONTACTS_CONSUMER
    }

    /// Its writes go through the transaction only: a fetch commits once (ADR 0030).
    fn batch_transactions(&self) -> bool {
        true
    }

    fn committed(&self) {
        self.wake.committed();
    }

    fn stream_types(&self) -> Vec<String> {
        vec![
            conv::STREAM_CONVERSATION.to_owned(),
            cev::STREAM_CONTACT.to_owned(),
        ]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        if event.stream_type == cev::STREAM_CONTACT {
            return project_from_log(self.store.as_ref(), tx, event)
                .await
                .map_err(HandlerError::Store);
        }
        if !carries_addresses(&event.event_type) {
            return Ok(());
        }
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO contact_link_queue (event_id, tenant_id, stream_id, stream_version, queued_at) \
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
}

/// Replays a contact stream up to `event` and writes the read model.
///
/// The service writes a contact's row right after each append (in its own transaction; this
/// consumer catches up when that failed): a row already at this event's version or later is
/// left alone without reading the stream or sealing the profile again (ADR 0030).
async fn project_from_log(
    store: &dyn EventStore,
    tx: &mut DbTx,
    event: &RecordedEvent,
) -> Result<(), StoreError> {
    let Some(id) = event
        .stream_id
        .strip_prefix("contact-")
        .and_then(|s| Uuid::try_parse(s).ok())
    else {
        return Ok(());
    };
    tx.bind_tenant(event.tenant_id).await?;
    if read::version(tx, event.tenant_id, id)
        .await?
        .is_some_and(|v| u64::try_from(v).unwrap_or(0) >= event.stream_version)
    {
        return Ok(());
    }
    let history = store
        .read_stream(
            event.tenant_id,
            &StreamRef::new(event.stream_type.clone(), event.stream_id.clone()),
            1,
        )
        .await?;
    let mut state = Contact::default();
    for e in history
        .iter()
        .take_while(|e| e.stream_version <= event.stream_version)
    {
        state = state.evolve(&codec::decode(e)?);
    }
    let prepared = read::prepare(store.keyring(), event.tenant_id, id, &state).await?;
    read::write(tx, event.tenant_id, &prepared).await
}

async fn run_worker(
    service: Contacts,
    cell: Arc<Cell>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let db = cell.db().clone();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let mut failing = false;
        let mut progressed = false;
        match crate::queue::next_batch(&db, &crate::queue::CONTACT_LINK).await {
            Ok(batch) => {
                for q in batch {
                    if cancel.is_cancelled() {
                        return;
                    }
                    let outcome = file_queued(&service, &q).await;
                    let ok = crate::queue::settle(
                        &db,
                        &crate::queue::CONTACT_LINK,
                        q.event_id,
                        outcome,
                        "file a message's contacts",
                    )
                    .await;
                    progressed |= ok;
                    failing |= !ok;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the contact link queue");
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

async fn file_queued(
    service: &Contacts,
    q: &crate::queue::Queued,
) -> Result<(), ContactServiceError> {
    let ctx = service.cells().context(q.tenant, SERVICE).await?;
    let events = ctx
        .cell()
        .store
        .read_stream(
            q.tenant,
            &StreamRef::new(conv::STREAM_CONVERSATION, q.stream_id.clone()),
            q.stream_version,
        )
        .await?;
    let Some(e) = events.iter().find(|e| e.event_id == q.event_id) else {
        return Err(StoreError::Database(format!(
            "queued event {} is not in its stream",
            q.event_id
        ))
        .into());
    };
    let own = own_addresses(service, &ctx).await?;
    file_event(service, &ctx, e, &own).await
}

/// The tenant's inbox addresses (normalised): never contacts.
async fn own_addresses(
    service: &Contacts,
    ctx: &TenantContext,
) -> Result<BTreeSet<String>, ContactServiceError> {
    let dir = service.conversations();
    let mut out = BTreeSet::new();
    let mut after = None;
    loop {
        let page = dir
            .directory()
            .list_inboxes(ctx, None, after, 200)
            .await
            .map_err(crate::ServiceError::from)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for inbox in &page {
            out.extend(inbox.addresses.iter().filter_map(|a| normalise_address(a)));
        }
        if page.len() < 200 {
            break;
        }
    }
    Ok(out)
}

/// `local+tag@domain` is the inbox `local@domain` (plus-addressed reply tokens).
fn is_own(address: &str, own: &BTreeSet<String>) -> bool {
    if own.contains(address) {
        return true;
    }
    match address.split_once('@') {
        Some((local, domain)) => match local.split_once('+') {
            Some((base, _)) => own.contains(&format!("{base}@{domain}")),
            None => false,
        },
        None => false,
    }
}

/// Files the external mailboxes of one conversation event.
async fn file_event(
    service: &Contacts,
    ctx: &TenantContext,
    e: &RecordedEvent,
    own: &BTreeSet<String>,
) -> Result<(), ContactServiceError> {
    if !carries_addresses(&e.event_type) || matches!(e.data, EventData::Shredded) {
        return Ok(());
    }
    let m: MessageV1 = e.payload()?;
    let boxes: Vec<_> = if e.event_type == conv::MESSAGE_RECEIVED {
        // Auto-replies and bounces come from machines, not people.
        if m.auto_reply {
            return Ok(());
        }
        m.from
            .iter()
            .chain(&m.reply_to)
            .chain(&m.to)
            .chain(&m.cc)
            .collect()
    } else {
        m.to.iter().chain(&m.cc).collect()
    };
    // One name per address: the first that carries one.
    let mut wanted: BTreeMap<String, Option<String>> = BTreeMap::new();
    for b in boxes {
        let Some(n) = normalise_address(&b.address) else {
            continue;
        };
        if is_own(&n, own) {
            continue;
        }
        let slot = wanted.entry(n).or_default();
        if slot.is_none() {
            slot.clone_from(&b.name);
        }
    }
    for (address, name) in wanted {
        service
            .file(
                ctx,
                &address,
                name.as_deref(),
                m.conversation_id,
                m.inbox_id,
            )
            .await?;
    }
    Ok(())
}

/// Rewrites every contact's read model from the log, then files every conversation's senders
/// and recipients again (`postvak admin rebuild-projections`): contacts first, so that known
/// addresses find their contacts instead of making new ones. Returns the events applied.
pub async fn rebuild(cells: &Cells, ctx: &TenantContext) -> Result<u64, ContactServiceError> {
    let service = Contacts::new(cells.clone());
    let store = &ctx.cell().store;
    let own = own_addresses(&service, ctx).await?;
    let mut applied = 0u64;
    let mut contacts = BTreeSet::new();
    let mut after = LogPosition::START;
    loop {
        let page = store.read_log(after, 1000, Some(ctx.tenant())).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        contacts.extend(
            page.iter()
                .filter(|s| s.stream_type == cev::STREAM_CONTACT)
                .filter_map(|s| s.stream_id.strip_prefix("contact-"))
                .filter_map(|s| Uuid::try_parse(s).ok()),
        );
    }
    for id in contacts {
        let state = service.load(ctx, id).await?.state;
        service.project(ctx, id, &state).await?;
        applied += 1;
    }
    let mut after = LogPosition::START;
    loop {
        let page = store.read_log(after, 1000, Some(ctx.tenant())).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for stored in page.iter().filter(|s| {
            s.stream_type == conv::STREAM_CONVERSATION && carries_addresses(&s.event_type)
        }) {
            let event = store.open(stored).await?;
            file_event(&service, ctx, &event, &own).await?;
            applied += 1;
        }
    }
    Ok(applied)
}
