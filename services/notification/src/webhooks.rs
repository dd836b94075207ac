//! Tenant webhooks, signed per the Standard Webhooks spec.
//!
//! - The consumer maps conversation events to Help Scout-style names and, for every matching
//!   subscription of the tenant (optionally limited to one inbox), records a delivery with its
//!   body (sealed) and schedules it — all in the consumer's transaction, so an event is fanned
//!   out once.
//! - The deliverer POSTs due deliveries with `webhook-id` (the delivery id: the same on every
//!   retry and redelivery, for the receiver's dedupe), `webhook-timestamp` and
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. Each
//!   subscription is its own lane with a small concurrency limit and every request has a
//!   timeout, so a slow endpoint delays only its own deliveries. A 2xx is success; anything
//!   else is retried with backoff until `max_attempts`, then the delivery is `dead` (the
//!   dead-letter list), from where the API can redeliver it.
//! - Delivery is at least once (a crash after the POST and before recording it repeats it).

use crate::due::{self, DueItem, Job, Limits, Settling};
use crate::settings::WebhookSettings;
use crate::ssrf::{DestinationError, DestinationPolicy, GuardedResolver};
use crate::{Part, backoff, duration_us, now_us};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use postvak_platform::cell::{Cell, Cells, TenantContext};
use postvak_platform::consumer::{EventHandler, HandlerError, WakeAfterCommit};
use postvak_platform::db::placeholders;
use postvak_platform::db::{Db, DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{
    EventData, EventStore, KeyScope, RecordedEvent, StoreError, TenantId, from_micros,
};
use postvak_proto::events::conversation as cev;
use postvak_proto::rest::conversation::MessageAttachment;
use postvak_proto::rest::notification::{self as dto, WEBHOOK_EVENTS, WebhookData, WebhookPayload};
use sha2::Sha256;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// This part's name inside the combined [`crate::CONSUMER`] (logs only; the checkpoint is
/// the combined consumer's).
pub const WEBHOOK_CONSUMER: &str = "notification-webhooks";

/// Why a webhook request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The webhook name of a conversation event, if webhooks announce it.
pub fn event_name(event_type: &str) -> Option<&'static str> {
    Some(match event_type {
        cev::OPENED => "convo.created",
        cev::ASSIGNED => "convo.assigned",
        cev::MESSAGE_RECEIVED => "convo.customer.reply.created",
        cev::REPLY_QUEUED => "convo.agent.reply.created",
        cev::NOTE_ADDED => "convo.note.created",
        cev::STATUS_CHANGED => "convo.status",
        cev::TAGGED | cev::UNTAGGED => "convo.tags",
        cev::REPLY_DELIVERY_FAILED => "convo.agent.reply.failed",
        _ => return None,
    })
}

/// `webhook-signature` value for a body: `v1,<base64 HMAC-SHA256>` under the secret's key.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| format!("bad webhook secret: {e}"))?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&key).map_err(|e| format!("bad webhook secret: {e}"))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

fn secret_aad(tenant: TenantId, webhook: Uuid) -> Vec<u8> {
    let mut a = b"postvak.webhook_secret".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(webhook.as_bytes());
    a
}

fn payload_aad(tenant: TenantId, delivery: Uuid) -> Vec<u8> {
    let mut a = b"postvak.webhook_payload".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(delivery.as_bytes());
    a
}

/// The webhook fan-out handler and the deliverer for one cell.
pub(crate) fn start(
    cells: &Cells,
    cell: Arc<Cell>,
    settings: WebhookSettings,
    cancel: CancellationToken,
) -> Part {
    let wake = Arc::new(Notify::new());
    let handler: Arc<dyn EventHandler> = Arc::new(FanOut {
        wake: WakeAfterCommit::new(wake.clone()),
        store: cell.store.clone(),
    });
    let mut part = Part {
        handlers: vec![handler],
        tasks: Vec::new(),
    };
    // reqwest is built without a default TLS provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let policy = match DestinationPolicy::new(&settings.allow_private) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "webhooks.allow_private is invalid; nothing will be delivered");
            return part;
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(settings.timeout_ms.max(1)))
        .redirect(reqwest::redirect::Policy::none())
        // Every name is resolved here and only permitted addresses are connected to.
        .dns_resolver(GuardedResolver {
            policy: policy.clone(),
        })
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; nothing will be delivered");
            return part;
        }
    };
    let limits = Limits {
        per_lane: settings.per_endpoint_concurrency,
        per_tenant: settings.per_tenant_concurrency,
        total: settings.total_concurrency,
        capped_lanes: None,
    };
    let (books, ledger) = tokio::sync::mpsc::channel(BOOKS_BATCH * 4);
    part.tasks
        .push(tokio::spawn(keep_books(cell.db().clone(), ledger)));
    let (reads, requests) = tokio::sync::mpsc::channel(READ_BATCH * 4);
    part.tasks
        .push(tokio::spawn(read_deliveries(cell.db().clone(), requests)));
    let job: Arc<dyn Job> = Arc::new(Deliverer {
        cells: cells.clone(),
        client,
        policy,
        settings,
        books,
        reads,
    });
    part.tasks.push(tokio::spawn(due::dispatch(
        cell.db().clone(),
        due::WEBHOOK,
        job,
        limits,
        wake,
        cancel,
    )));
    part
}

struct FanOut {
    wake: WakeAfterCommit,
    store: Arc<dyn EventStore>,
}

fn conversation_of(event: &RecordedEvent) -> Option<Uuid> {
    event
        .stream_id
        .strip_prefix("conv-")
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// A message event's attachments as metadata (`files` of `MessageV1`); `None` for events that
/// are not messages. Content never goes into a payload.
fn attachments_of(event_type: &str, data: &serde_json::Value) -> Option<Vec<MessageAttachment>> {
    if event_type != cev::MESSAGE_RECEIVED && event_type != cev::REPLY_QUEUED {
        return None;
    }
    let files: Vec<cev::MessageFileV1> = data
        .get("files")
        .cloned()
        .and_then(|f| serde_json::from_value(f).ok())
        .unwrap_or_default();
    Some(
        files
            .into_iter()
            .map(|f| MessageAttachment {
                id: f.file_id,
                filename: f.filename,
                content_type: f.content_type,
                size: f.size,
                sha256: f.sha256,
                inline: f.inline,
                content_id: f.content_id,
            })
            .collect(),
    )
}

fn uuid_field(v: &serde_json::Value, name: &str) -> Option<Uuid> {
    v.get(name)
        .and_then(|x| x.as_str())
        .and_then(|s| Uuid::parse_str(s).ok())
}

#[async_trait]
impl EventHandler for FanOut {
    fn name(&self) -> &str {
        WEBHOOK_CONSUMER
    }

    fn committed(&self) {
        self.wake.committed();
    }

    fn stream_types(&self) -> Vec<String> {
        vec![cev::STREAM_CONVERSATION.to_owned()]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.handle_batch(tx, &[event]).await
    }

    /// One tenant's events at a time: its subscriptions and the inboxes of the conversations
    /// read once, the deliveries and their due rows written with one statement each (per
    /// [`FAN_OUT_CHUNK`] rows), instead of four round trips per event.
    async fn handle_batch(
        &self,
        tx: &mut DbTx,
        events: &[&RecordedEvent],
    ) -> Result<(), HandlerError> {
        // Tenants in order of first appearance; each tenant's events keep their order (the
        // tenants' rows are independent of each other).
        let mut by_tenant: Vec<(TenantId, Vec<&RecordedEvent>)> = Vec::new();
        for event in events {
            match by_tenant.iter_mut().find(|(t, _)| *t == event.tenant_id) {
                Some((_, list)) => list.push(event),
                None => by_tenant.push((event.tenant_id, vec![event])),
            }
        }
        let mut scheduled = 0;
        for (tenant, list) in by_tenant {
            scheduled += self.fan_out(tx, tenant, &list).await?;
        }
        if scheduled > 0 {
            self.wake.queued();
        }
        Ok(())
    }
}

/// Deliveries (and due rows) written per statement by the fan-out.
const FAN_OUT_CHUNK: usize = 256;

/// A conversation event as the fan-out sees it.
struct Announced<'a> {
    event: &'a RecordedEvent,
    conversation: Uuid,
    data: &'a serde_json::Value,
    /// The inbox the event itself names (`conversation.opened`, `.moved`).
    named_inbox: Option<Uuid>,
}

/// A delivery to insert.
struct NewDelivery {
    delivery: Uuid,
    webhook: Uuid,
    event_id: Uuid,
    name: &'static str,
    body: Vec<u8>,
}

impl FanOut {
    /// Fans out one tenant's events (in log order) in `tx`; returns how many deliveries were
    /// scheduled.
    async fn fan_out(
        &self,
        tx: &mut DbTx,
        tenant: TenantId,
        events: &[&RecordedEvent],
    ) -> Result<usize, HandlerError> {
        let store = |e: sqlx::Error| HandlerError::Store(db_error(e));
        let announced: Vec<Announced<'_>> = events
            .iter()
            .filter_map(|event| {
                let conversation = conversation_of(event)?;
                // Erased: nothing to announce.
                let EventData::Json(data) = &event.data else {
                    return None;
                };
                let named_inbox = match event.event_type.as_str() {
                    cev::OPENED => uuid_field(data, "inbox_id"),
                    cev::MOVED => uuid_field(data, "to_inbox"),
                    _ => None,
                };
                Some(Announced {
                    event,
                    conversation,
                    data,
                    named_inbox,
                })
            })
            .collect();
        if announced.is_empty() {
            return Ok(0);
        }
        tx.bind_tenant(tenant).await?;
        let wanted = announced
            .iter()
            .any(|a| event_name(&a.event.event_type).is_some());
        let subs: Vec<(Uuid, String, Option<Uuid>)> = if wanted {
            on_tx!(tx, |c| sqlx::query(
                "SELECT webhook_id, events, inbox_id FROM webhook_subscriptions \
                 WHERE tenant_id = $1"
            )
            .bind(tenant.0)
            .fetch_all(c)
            .await
            .and_then(|rows| rows
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect()))
            .map_err(store)?
        } else {
            Vec::new()
        };
        let subscribed = |name: &str| {
            subs.iter()
                .any(|(_, events, _)| events.split(' ').any(|e| e == name))
        };
        // Conversation → inbox as stored before this batch, for the announced events that
        // don't name their inbox; the batch's own `opened`/`moved` events update it in order
        // below, so each event sees the inbox it would have seen handled alone.
        let unknown: Vec<Uuid> = {
            let mut ids: Vec<Uuid> = announced
                .iter()
                .filter(|a| {
                    event_name(&a.event.event_type).is_some_and(subscribed)
                        && uuid_field(a.data, "inbox_id").is_none()
                        && a.named_inbox.is_none()
                })
                .map(|a| a.conversation)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let mut inboxes: HashMap<Uuid, Uuid> = HashMap::new();
        for chunk in unknown.chunks(FAN_OUT_CHUNK) {
            let sql = format!(
                "SELECT conversation_id, inbox_id FROM notification_conversations \
                 WHERE tenant_id = $1 AND conversation_id IN ({})",
                placeholders(2, chunk.len())
            );
            let rows: Vec<(Uuid, Uuid)> = on_tx!(tx, |c| {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(tenant.0);
                for id in chunk {
                    q = q.bind(*id);
                }
                q.fetch_all(c).await.and_then(|rows| {
                    rows.iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                        .collect()
                })
            })
            .map_err(store)?;
            inboxes.extend(rows);
        }
        let now = now_us();
        let mut new = Vec::new();
        // Conversation → inbox as the batch leaves it (the last `opened`/`moved` of each),
        // written once after the walk.
        let mut placed: Vec<(Uuid, Uuid)> = Vec::new();
        for a in &announced {
            // Keep conversation → inbox, for subscriptions limited to one inbox.
            if let Some(inbox) = a.named_inbox {
                match placed.iter_mut().find(|(c, _)| *c == a.conversation) {
                    Some(p) => p.1 = inbox,
                    None => placed.push((a.conversation, inbox)),
                }
                inboxes.insert(a.conversation, inbox);
            }
            let Some(name) = event_name(&a.event.event_type) else {
                continue;
            };
            if !subscribed(name) {
                continue;
            }
            let inbox = uuid_field(a.data, "inbox_id")
                .or(a.named_inbox)
                .or_else(|| inboxes.get(&a.conversation).copied());
            let body = serde_json::to_vec(&WebhookPayload {
                event_type: name.to_owned(),
                timestamp: a.event.recorded_at,
                data: WebhookData {
                    conversation_id: a.conversation,
                    inbox_id: inbox,
                    event_id: a.event.event_id,
                    event: a.data.clone(),
                    attachments: attachments_of(&a.event.event_type, a.data),
                },
            })
            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
            for (webhook, events, only_inbox) in &subs {
                if !events.split(' ').any(|e| e == name)
                    || (only_inbox.is_some() && *only_inbox != inbox)
                {
                    continue;
                }
                new.push(NewDelivery {
                    delivery: Uuid::now_v7(),
                    webhook: *webhook,
                    event_id: a.event.event_id,
                    name,
                    body: body.clone(),
                });
            }
        }
        for chunk in placed.chunks(FAN_OUT_CHUNK) {
            place_conversations(tx, tenant, chunk).await?;
        }
        if new.is_empty() {
            return Ok(0);
        }
        let aads: Vec<Vec<u8>> = new
            .iter()
            .map(|d| payload_aad(tenant, d.delivery))
            .collect();
        let (key, sealed) = self
            .store
            .keyring()
            .seal_many(
                tenant,
                &KeyScope::Tenant,
                new.iter()
                    .zip(&aads)
                    .map(|(d, aad)| (d.body.as_slice(), aad.as_slice())),
            )
            .await
            .map_err(|e| HandlerError::Store(StoreError::Crypto(e)))?;
        let mut scheduled = 0;
        for (rows, sealed) in new.chunks(FAN_OUT_CHUNK).zip(sealed.chunks(FAN_OUT_CHUNK)) {
            // Tenant, key and time once; five parameters per row, numbered in order of first
            // use (ADR 0005).
            let mut sql = String::from(
                "INSERT INTO webhook_deliveries (tenant_id, delivery_id, webhook_id, event_id, \
                 event_type, payload, payload_key, state, attempts, next_attempt_at, created_us) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8)",
            );
            for i in 1..rows.len() {
                let p = 9 + (i - 1) * 5;
                sql.push_str(&format!(
                    ", ($1, ${}, ${}, ${}, ${}, ${}, $7, 'pending', 0, $8, $8)",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4
                ));
            }
            sql.push_str(
                " ON CONFLICT (tenant_id, webhook_id, event_id) DO NOTHING RETURNING delivery_id",
            );
            let inserted: Vec<Uuid> = on_tx!(tx, |c| {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(tenant.0);
                for (i, (d, payload)) in rows.iter().zip(sealed).enumerate() {
                    q = q
                        .bind(d.delivery)
                        .bind(d.webhook)
                        .bind(d.event_id)
                        .bind(d.name)
                        .bind(payload.as_slice());
                    if i == 0 {
                        q = q.bind(key).bind(now);
                    }
                }
                q.fetch_all(c)
                    .await
                    .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
            })
            .map_err(store)?;
            let inserted: HashSet<Uuid> = inserted.into_iter().collect();
            let due: Vec<(Uuid, String)> = rows
                .iter()
                .filter(|d| inserted.contains(&d.delivery))
                .map(|d| (d.delivery, d.webhook.to_string()))
                .collect();
            due::schedule_many(tx, due::WEBHOOK, tenant, &due, now).await?;
            scheduled += due.len();
        }
        Ok(scheduled)
    }
}

/// Upserts conversation → inbox for one tenant with one statement; a conversation appears at
/// most once in `placed` (one statement may not update a row twice).
async fn place_conversations(
    tx: &mut DbTx,
    tenant: TenantId,
    placed: &[(Uuid, Uuid)],
) -> Result<(), HandlerError> {
    if placed.is_empty() {
        return Ok(());
    }
    // The tenant `$1`, two per row after it (ADR 0005).
    let rows = (0..placed.len())
        .map(|i| format!("($1, ${}, ${})", 2 + i * 2, 3 + i * 2))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO notification_conversations (tenant_id, conversation_id, inbox_id) \
         VALUES {rows} \
         ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET inbox_id = excluded.inbox_id"
    );
    on_tx!(tx, |c| {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(tenant.0);
        for (conversation, inbox) in placed {
            q = q.bind(*conversation).bind(*inbox);
        }
        q.execute(c).await.map(|_| ())
    })
    .map_err(|e| HandlerError::Store(db_error(e)))
}

struct Deliverer {
    cells: Cells,
    client: reqwest::Client,
    policy: DestinationPolicy,
    settings: WebhookSettings,
    /// Outcomes go to [`keep_books`], which records many per transaction.
    books: tokio::sync::mpsc::Sender<Entry>,
    /// Deliveries are read by [`read_deliveries`], many per query.
    reads: tokio::sync::mpsc::Sender<ReadRequest>,
}

/// Outcomes recorded per transaction at most.
const BOOKS_BATCH: usize = 256;

/// One attempt's outcome on its way to the books, and who waits for it to be recorded.
struct Entry {
    tenant: TenantId,
    delivery: Uuid,
    outcome: Option<Outcome>,
    recorded: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Records attempts' outcomes: whatever has queued up meanwhile (up to [`BOOKS_BATCH`]) in one
/// transaction, so that a few thousand deliveries a second cost a few hundred commits. A
/// deliverer's slot is free as soon as its outcome is queued here; the dispatcher does not
/// start the item again until the outcome is committed (its due row must be gone or moved
/// before it may be looked at again: [`Settling`]). Should a batch fail, each entry is recorded
/// on its own.
async fn keep_books(db: Db, mut ledger: tokio::sync::mpsc::Receiver<Entry>) {
    let mut batch = Vec::with_capacity(BOOKS_BATCH);
    while ledger.recv_many(&mut batch, BOOKS_BATCH).await > 0 {
        batch.sort_by_key(|e| e.tenant.0);
        match record_outcomes(&db, &batch).await {
            Ok(()) => {
                for e in batch.drain(..) {
                    let _ = e.recorded.send(Ok(()));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, entries = batch.len(), "webhook outcomes: batch failed; one by one");
                for e in batch.drain(..) {
                    let one = record_outcomes(&db, std::slice::from_ref(&e)).await;
                    let _ = e.recorded.send(one.map_err(|x| x.to_string()));
                }
            }
        }
    }
}

async fn record_outcomes(db: &Db, entries: &[Entry]) -> Result<(), StoreError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let mut tx = db.tenant_tx(first.tenant, true).await?;
    let now = now_us();
    for group in entries.chunk_by(|a, b| a.tenant == b.tenant) {
        let t = group[0].tenant;
        // Free when the transaction is bound to `t` already (the first group's, at BEGIN).
        tx.bind_tenant(t).await?;
        let attempts: Vec<(Uuid, &Outcome)> = group
            .iter()
            .filter_map(|e| e.outcome.as_ref().map(|o| (e.delivery, o)))
            .collect();
        record_attempts(&mut tx, t, &attempts, now).await?;
        let mut done = Vec::with_capacity(group.len());
        for e in group {
            match e.outcome.as_ref().and_then(|o| o.retry_at) {
                Some((at, webhook)) => {
                    due::schedule(
                        &mut tx,
                        due::WEBHOOK,
                        e.delivery,
                        t,
                        &webhook.to_string(),
                        at,
                    )
                    .await?;
                }
                None => done.push(e.delivery),
            }
        }
        due::unschedule_many(&mut tx, due::WEBHOOK, &done).await?;
    }
    tx.commit().await
}

/// Attempts recorded per statement.
const BOOKS_CHUNK: usize = 128;

/// Records the outcomes of attempts at deliveries of `t`.
///
/// PostgreSQL: one statement per distinct outcome (nearly always one: "delivered, 2xx"),
/// the deliveries named by `delivery_id = ANY($ids)`, which the primary key serves whatever
/// the statistics say. Joined to a `VALUES` list instead, the planner put the list on the
/// inner side of a nested loop whenever it thought the tenant had few rows (a table not yet
/// analysed, one busy tenant): 100 outcomes cost 100–400 ms there, and with one tenant and
/// statistics it scanned all of the tenant's deliveries per batch (ADR 0031). SQLite plans
/// the `VALUES` join by the primary key and keeps one statement per chunk.
async fn record_attempts(
    tx: &mut DbTx,
    t: TenantId,
    attempts: &[(Uuid, &Outcome)],
    now: i64,
) -> Result<(), StoreError> {
    if attempts.is_empty() {
        return Ok(());
    }
    match tx {
        DbTx::Postgres(c) => {
            // Same outcome, same statement; first-seen order keeps it deterministic.
            let mut groups: Vec<(&Outcome, Vec<Uuid>)> = Vec::new();
            for (id, o) in attempts {
                match groups.iter_mut().find(|(g, _)| *g == *o) {
                    Some((_, ids)) => ids.push(*id),
                    None => groups.push((o, vec![*id])),
                }
            }
            for (o, ids) in groups {
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = $1, attempts = attempts + $2, \
                     last_status = $3, last_error = $4, next_attempt_at = $5, \
                     delivered_us = CASE WHEN $1 = 'delivered' THEN $6 ELSE delivered_us END \
                     WHERE tenant_id = $7 AND delivery_id = ANY($8) AND state = 'pending'",
                )
                .bind(o.state)
                .bind(i64::from(o.status.is_some() || o.error.is_some()))
                .bind(o.status.map(i64::from))
                .bind(o.error.as_deref())
                .bind(o.retry_at.map_or(0, |(at, _)| at))
                .bind(now)
                .bind(t.0)
                .bind(&ids)
                .execute(&mut **c)
                .await
                .map_err(db_error)?;
            }
            Ok(())
        }
        DbTx::Sqlite(c) => {
            for chunk in attempts.chunks(BOOKS_CHUNK) {
                record_attempts_values(c, t, chunk, now).await?;
            }
            Ok(())
        }
    }
}

/// SQLite: the outcomes of up to [`BOOKS_CHUNK`] attempts with one statement.
async fn record_attempts_values(
    c: &mut sqlx::SqliteConnection,
    t: TenantId,
    attempts: &[(Uuid, &Outcome)],
    now: i64,
) -> Result<(), StoreError> {
    // `$1` the time, six per attempt, the tenant last: numbered in order of first use
    // (ADR 0005). A VALUES list's columns are `column1`, `column2`, ….
    let rows = (0..attempts.len())
        .map(|i| {
            let p = 2 + i * 6;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                p,
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE webhook_deliveries SET state = v.column2, attempts = attempts + v.column3, \
         last_status = v.column4, last_error = v.column5, next_attempt_at = v.column6, \
         delivered_us = CASE WHEN v.column2 = 'delivered' THEN $1 ELSE delivered_us END \
         FROM (VALUES {rows}) AS v \
         WHERE webhook_deliveries.tenant_id = ${tenant} \
           AND webhook_deliveries.delivery_id = v.column1 \
           AND webhook_deliveries.state = 'pending'",
        tenant = 2 + attempts.len() * 6
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
    for (id, o) in attempts {
        q = q
            .bind(*id)
            .bind(o.state)
            .bind(i64::from(o.status.is_some() || o.error.is_some()))
            .bind(o.status.map(i64::from))
            .bind(o.error.as_deref())
            .bind(o.retry_at.map_or(0, |(at, _)| at));
    }
    q.bind(t.0)
        .execute(&mut *c)
        .await
        .map(|_| ())
        .map_err(db_error)
}

#[async_trait]
impl Job for Deliverer {
    async fn run(&self, item: DueItem) -> Option<Settling> {
        match self.deliver(&item).await {
            Ok(settling) => settling,
            Err(e) => {
                // The due row stays; the dispatcher tries again.
                tracing::warn!(error = %e, delivery_id = %item.item_id, "webhook delivery step failed");
                None
            }
        }
    }
}

/// What an attempt's read found.
enum Load {
    /// Due and deliverable: POST it.
    Attempt(Pending),
    /// Nothing to send (gone, finished, not yet due, subscription deleted); what was
    /// recorded instead is settling, if anything.
    Skip(Option<Settling>),
}

struct Pending {
    webhook: Uuid,
    attempts: u32,
    body: Vec<u8>,
    url: String,
    secret: String,
}

/// A delivery as read for an attempt, with its subscription (`None`: deleted).
struct Stored {
    webhook: Uuid,
    state: String,
    attempts: i64,
    next_at: i64,
    payload: Vec<u8>,
    payload_key: Uuid,
    subscription: Option<(String, Vec<u8>, Uuid)>,
}

/// A deliverer's request to read its delivery, answered by [`read_deliveries`].
struct ReadRequest {
    tenant: TenantId,
    delivery: Uuid,
    read: tokio::sync::oneshot::Sender<Result<Option<Stored>, StoreError>>,
}

/// Deliveries read per query at most.
const READ_BATCH: usize = 128;

/// Reads the deliveries the deliverers are about to attempt: whatever has been asked for
/// meanwhile (up to [`READ_BATCH`]), one tenant-bound read transaction and one query per
/// tenant, instead of a transaction and two queries per attempt.
async fn read_deliveries(db: Db, mut requests: tokio::sync::mpsc::Receiver<ReadRequest>) {
    let mut batch = Vec::with_capacity(READ_BATCH);
    while requests.recv_many(&mut batch, READ_BATCH).await > 0 {
        batch.sort_by_key(|r| r.tenant.0);
        while !batch.is_empty() {
            let t = batch[0].tenant;
            let n = batch.iter().take_while(|r| r.tenant == t).count();
            let group: Vec<ReadRequest> = batch.drain(..n).collect();
            let ids: Vec<Uuid> = group.iter().map(|r| r.delivery).collect();
            match read_stored(&db, t, &ids).await {
                Ok(mut found) => {
                    for r in group {
                        let _ = r.read.send(Ok(found.remove(&r.delivery)));
                    }
                }
                Err(e) => {
                    for r in group {
                        let _ = r.read.send(Err(StoreError::Unavailable(e.to_string())));
                    }
                }
            }
        }
    }
}

async fn read_stored(
    db: &Db,
    t: TenantId,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Stored>, StoreError> {
    // PostgreSQL: one statement text whatever the batch size (`= ANY($2)`), prepared once
    // per connection; an `IN ($2, …)` list is a new statement for each length, parsed and
    // planned again whenever it falls out of the connection's statement cache (ADR 0031).
    let select = "SELECT d.delivery_id, d.webhook_id, d.state, d.attempts, d.next_attempt_at, \
                  d.payload, d.payload_key, s.url, s.secret, s.secret_key \
                  FROM webhook_deliveries d LEFT JOIN webhook_subscriptions s \
                    ON s.tenant_id = d.tenant_id AND s.webhook_id = d.webhook_id \
                  WHERE d.tenant_id = $1 AND d.delivery_id";
    macro_rules! stored {
        ($rows:expr) => {
            $rows.and_then(|rows| {
                rows.iter()
                    .map(|r| {
                        let url: Option<String> = r.try_get(7)?;
                        let secret: Option<Vec<u8>> = r.try_get(8)?;
                        let secret_key: Option<Uuid> = r.try_get(9)?;
                        Ok((
                            r.try_get(0)?,
                            Stored {
                                webhook: r.try_get(1)?,
                                state: r.try_get(2)?,
                                attempts: r.try_get(3)?,
                                next_at: r.try_get(4)?,
                                payload: r.try_get(5)?,
                                payload_key: r.try_get(6)?,
                                subscription: url
                                    .zip(secret)
                                    .zip(secret_key)
                                    .map(|((u, s), k)| (u, s, k)),
                            },
                        ))
                    })
                    .collect::<Result<Vec<(Uuid, Stored)>, sqlx::Error>>()
            })
        };
    }
    let mut tx = db.tenant_tx(t, false).await?;
    let rows = match &mut tx {
        DbTx::Postgres(c) => stored!(
            sqlx::query(sqlx::AssertSqlSafe(format!("{select} = ANY($2)")))
                .bind(t.0)
                .bind(ids)
                .fetch_all(&mut **c)
                .await
        ),
        DbTx::Sqlite(c) => {
            let sql = format!("{select} IN ({})", placeholders(2, ids.len()));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(t.0);
            for id in ids {
                q = q.bind(*id);
            }
            stored!(q.fetch_all(&mut **c).await)
        }
    }
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows.into_iter().collect())
}

impl Deliverer {
    async fn load(&self, ctx: &TenantContext, id: Uuid) -> Result<Load, StoreError> {
        let t = ctx.tenant();
        let (read, answer) = tokio::sync::oneshot::channel();
        let closed = || StoreError::Unavailable("the webhook reader is closed".into());
        self.reads
            .send(ReadRequest {
                tenant: t,
                delivery: id,
                read,
            })
            .await
            .map_err(|_| closed())?;
        let stored = answer.await.map_err(|_| closed())??;
        let now = now_us();
        let Some(d) = stored else {
            return Ok(Load::Skip(Some(self.finish(ctx, id, None).await?)));
        };
        if d.state != "pending" {
            return Ok(Load::Skip(Some(self.finish(ctx, id, None).await?)));
        }
        if d.next_at > now {
            let mut w = ctx.cell().db().tenant_tx(t, true).await?;
            due::schedule(
                &mut w,
                due::WEBHOOK,
                id,
                t,
                &d.webhook.to_string(),
                d.next_at,
            )
            .await?;
            w.commit().await?;
            return Ok(Load::Skip(None));
        }
        let Some((url, secret, secret_key)) = d.subscription else {
            let settling = self
                .finish(
                    ctx,
                    id,
                    Some(Outcome {
                        state: "dead",
                        status: None,
                        error: Some("the subscription was deleted".into()),
                        retry_at: None,
                    }),
                )
                .await?;
            return Ok(Load::Skip(Some(settling)));
        };
        let keyring = ctx.cell().store.keyring();
        let body = keyring
            .open(t, d.payload_key, &d.payload, &payload_aad(t, id))
            .await
            .map_err(StoreError::Crypto)?;
        let secret = keyring
            .open(t, secret_key, &secret, &secret_aad(t, d.webhook))
            .await
            .map_err(StoreError::Crypto)?;
        Ok(Load::Attempt(Pending {
            webhook: d.webhook,
            attempts: u32::try_from(d.attempts).unwrap_or(u32::MAX),
            body,
            url,
            secret: String::from_utf8_lossy(&secret).into_owned(),
        }))
    }

    /// One attempt; returns the commit of its outcome, still settling.
    async fn deliver(&self, item: &DueItem) -> Result<Option<Settling>, StoreError> {
        let ctx = self
            .cells
            .context(item.tenant, crate::SERVICE)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let id = item.item_id;
        let p = match self.load(&ctx, id).await? {
            Load::Attempt(p) => p,
            Load::Skip(settling) => return Ok(settling),
        };
        let attempts = p.attempts.saturating_add(1);
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let msg_id = id.to_string();
        let signature = sign(&p.secret, &msg_id, timestamp, &p.body)
            .map_err(|e| StoreError::Database(e.to_string()))?;
        // Names are checked by the resolver at connect time; an IP literal never reaches it.
        let literal = reqwest::Url::parse(&p.url).ok().and_then(|u| {
            u.host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
                .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        });
        let sent = match literal {
            Some(ip) if !self.policy.permits(ip) => {
                Err(DestinationError::Forbidden(ip).to_string())
            }
            _ => self
                .client
                .post(&p.url)
                .header("content-type", "application/json")
                .header("webhook-id", &msg_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(p.body)
                .send()
                .await
                .map_err(|e| error_chain(&e)),
        };
        let (ok, status, error) = match sent {
            Ok(r) if r.status().is_success() => (true, Some(r.status().as_u16()), None),
            Ok(r) => (
                false,
                Some(r.status().as_u16()),
                Some(format!("endpoint answered {}", r.status())),
            ),
            Err(e) => (false, None, Some(e)),
        };
        let outcome = if ok {
            metrics::counter!("postvak_webhook_deliveries_total", "outcome" => "delivered")
                .increment(1);
            Outcome {
                state: "delivered",
                status,
                error: None,
                retry_at: None,
            }
        } else if attempts >= self.settings.max_attempts {
            metrics::counter!("postvak_webhook_deliveries_total", "outcome" => "dead").increment(1);
            tracing::warn!(delivery_id = %id, webhook_id = %p.webhook, ?error, "webhook delivery dead-lettered");
            Outcome {
                state: "dead",
                status,
                error,
                retry_at: None,
            }
        } else {
            metrics::counter!("postvak_webhook_deliveries_total", "outcome" => "retried")
                .increment(1);
            let delay = backoff(
                std::time::Duration::from_millis(self.settings.retry_base_ms),
                std::time::Duration::from_millis(self.settings.retry_max_ms),
                attempts,
            );
            Outcome {
                state: "pending",
                status,
                error,
                retry_at: Some((now_us().saturating_add(duration_us(delay)), p.webhook)),
            }
        };
        self.finish(&ctx, id, Some(outcome)).await.map(Some)
    }

    /// Queues an attempt's outcome (`None`: only drop the due row) to the books; returns its
    /// commit. A failed commit leaves the due row, so the item is attempted again (at least
    /// once, the same `webhook-id`).
    async fn finish(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        outcome: Option<Outcome>,
    ) -> Result<Settling, StoreError> {
        let (recorded, done) = tokio::sync::oneshot::channel();
        let entry = Entry {
            tenant: ctx.tenant(),
            delivery: id,
            outcome,
            recorded,
        };
        if self.books.send(entry).await.is_err() {
            return Err(StoreError::Unavailable(
                "the webhook books are closed".into(),
            ));
        }
        Ok(Box::pin(async move {
            let error = match done.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(_) => "the webhook books are closed".to_owned(),
            };
            tracing::warn!(error = %error, delivery_id = %id, "webhook outcome not recorded; the delivery stays due");
        }))
    }
}

/// An error with its causes (reqwest's own text hides why a connection failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[derive(PartialEq)]
struct Outcome {
    state: &'static str,
    status: Option<u16>,
    error: Option<String>,
    retry_at: Option<(i64, Uuid)>,
}

// ---- management (the API's store functions) ----

fn webhook_dto(
    id: Uuid,
    url: String,
    events: &str,
    inbox: Option<Uuid>,
    created_us: i64,
) -> dto::Webhook {
    dto::Webhook {
        id,
        url,
        events: events
            .split(' ')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
        inbox_id: inbox,
        created_at: from_micros(created_us),
    }
}

/// Creates a subscription; the secret is in the answer only.
pub async fn create(
    ctx: &TenantContext,
    req: &dto::CreateWebhook,
    policy: &DestinationPolicy,
) -> Result<dto::CreatedWebhook, WebhookError> {
    let url =
        reqwest::Url::parse(&req.url).map_err(|e| WebhookError::Invalid(format!("url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(WebhookError::Invalid(
            "url: must be an http(s) URL with a host".into(),
        ));
    }
    if req.events.is_empty() {
        return Err(WebhookError::Invalid("events: at least one".into()));
    }
    policy.check_url(&url).await?;
    let mut events: Vec<String> = Vec::new();
    for e in &req.events {
        if !WEBHOOK_EVENTS.contains(&e.as_str()) {
            return Err(WebhookError::Invalid(format!(
                "events: unknown event {e:?} (known: {})",
                WEBHOOK_EVENTS.join(", ")
            )));
        }
        if !events.contains(e) {
            events.push(e.clone());
        }
    }
    let t = ctx.tenant();
    let id = Uuid::now_v7();
    let secret = format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 32]>()));
    let (key, sealed) = ctx
        .cell()
        .store
        .keyring()
        .seal(t, &KeyScope::Tenant, secret.as_bytes(), &secret_aad(t, id))
        .await
        .map_err(StoreError::Crypto)?;
    let now = now_us();
    let joined = events.join(" ");
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO webhook_subscriptions (tenant_id, webhook_id, url, inbox_id, events, secret, \
         secret_key, created_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )
    .bind(t.0)
    .bind(id)
    .bind(url.as_str())
    .bind(req.inbox_id)
    .bind(&joined)
    .bind(sealed)
    .bind(key)
    .bind(now)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(dto::CreatedWebhook {
        webhook: webhook_dto(id, url.to_string(), &joined, req.inbox_id, now),
        secret,
    })
}

/// The tenant's subscriptions, oldest first.
pub async fn list(ctx: &TenantContext) -> Result<Vec<dto::Webhook>, WebhookError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let rows: Vec<dto::Webhook> = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT webhook_id, url, events, inbox_id, created_us FROM webhook_subscriptions \
         WHERE tenant_id = $1 ORDER BY created_us, webhook_id"
    )
    .bind(t.0)
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok(webhook_dto(
            r.try_get(0)?,
            r.try_get(1)?,
            &r.try_get::<String, _>(2)?,
            r.try_get(3)?,
            r.try_get(4)?
        )))
        .collect()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows)
}

/// Deletes a subscription; its pending deliveries end as dead letters.
pub async fn delete(ctx: &TenantContext, id: Uuid) -> Result<(), WebhookError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    let n = on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM webhook_subscriptions WHERE tenant_id = $1 AND webhook_id = $2"
    )
    .bind(t.0)
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    tx.commit().await?;
    if n == 0 {
        return Err(WebhookError::NotFound);
    }
    Ok(())
}

async fn exists(tx: &mut DbTx, t: TenantId, id: Uuid) -> Result<bool, WebhookError> {
    let n: Option<i64> = on_tx!(tx, |c| sqlx::query(
        "SELECT 1 FROM webhook_subscriptions WHERE tenant_id = $1 AND webhook_id = $2"
    )
    .bind(t.0)
    .bind(id)
    .fetch_optional(c)
    .await
    .and_then(|r| r.map(|r| r.try_get::<i32, _>(0).map(i64::from)).transpose()))
    .map_err(db_error)?;
    Ok(n.is_some())
}

const DELIVERY_COLUMNS: &str = "delivery_id, webhook_id, event_id, event_type, state, attempts, \
                                last_status, last_error, created_us, delivered_us";

type DeliveryRow = (
    Uuid,
    Uuid,
    Uuid,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    i64,
    Option<i64>,
);

fn delivery_dto(r: DeliveryRow) -> dto::WebhookDelivery {
    let (id, webhook, event, event_type, state, attempts, status, error, created, delivered) = r;
    dto::WebhookDelivery {
        id,
        webhook_id: webhook,
        event_id: event,
        event_type,
        state,
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_status: status.and_then(|s| u16::try_from(s).ok()),
        last_error: error,
        created_at: from_micros(created),
        delivered_at: delivered.map(from_micros),
    }
}

macro_rules! delivery_row {
    ($r:expr) => {
        (
            $r.try_get(0)?,
            $r.try_get(1)?,
            $r.try_get(2)?,
            $r.try_get(3)?,
            $r.try_get(4)?,
            $r.try_get(5)?,
            $r.try_get(6)?,
            $r.try_get(7)?,
            $r.try_get(8)?,
            $r.try_get(9)?,
        )
    };
}

/// A subscription's deliveries, newest first (at most `limit`).
pub async fn deliveries(
    ctx: &TenantContext,
    webhook: Uuid,
    limit: i64,
) -> Result<Vec<dto::WebhookDelivery>, WebhookError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    if !exists(&mut tx, t, webhook).await? {
        return Err(WebhookError::NotFound);
    }
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 \
         ORDER BY created_us DESC, delivery_id DESC LIMIT $3"
    );
    let rows: Vec<DeliveryRow> = on_tx!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(t.0)
        .bind(webhook)
        .bind(limit)
        .fetch_all(c)
        .await
        .and_then(|rows| rows.iter().map(|r| Ok(delivery_row!(r))).collect()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows.into_iter().map(delivery_dto).collect())
}

/// Sends a delivery again now (a dead letter gets one more attempt).
pub async fn redeliver(
    ctx: &TenantContext,
    webhook: Uuid,
    delivery: Uuid,
) -> Result<dto::WebhookDelivery, WebhookError> {
    let t = ctx.tenant();
    let now = now_us();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    if !exists(&mut tx, t, webhook).await? {
        return Err(WebhookError::NotFound);
    }
    let n = on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1 \
         WHERE tenant_id = $2 AND webhook_id = $3 AND delivery_id = $4"
    )
    .bind(now)
    .bind(t.0)
    .bind(webhook)
    .bind(delivery)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    if n == 0 {
        return Err(WebhookError::NotFound);
    }
    due::schedule(
        &mut tx,
        due::WEBHOOK,
        delivery,
        t,
        &webhook.to_string(),
        now,
    )
    .await?;
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE tenant_id = $1 AND delivery_id = $2"
    );
    let row: DeliveryRow = on_tx!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(t.0)
        .bind(delivery)
        .fetch_one(c)
        .await
        .and_then(|r| Ok(delivery_row!(r))))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(delivery_dto(row))
}
