//! Live updates: `GET /v1/stream` (Server-Sent Events) and presence.
//!
//! The stream tails the event log of the caller's tenant (`read_log`, woken by the store's
//! `append_signal()` and polled once a second, since another process may append; sooner while
//! a commit is held back behind an older transaction, `TailPause`) and sends
//! `event: conversation` for every change of a conversation the caller may read at that
//! moment (the same rule as `GET /v1/conversations/{id}`), with `id:` = the log position, so a
//! client resumes with `Last-Event-ID`. Without one it starts at the head of the log.
//!
//! Agent notifications (a small hook for the notification service, ADR 0019): the
//! notification service appends `agent.notified` on `agent_notification/user-<user>-<id>`
//! streams; the stream sends the caller's own as `event: notification`
//! (`NotificationStreamEvent`), with the same `id:` positions. Others' are never opened (the
//! user is in the stream id). Which notifications are pushed, and whether at all, is the
//! notification service's business (the user's `stream` preference).
//!
//! Presence (`POST /v1/conversations/{id}/presence`) is ephemeral: never an event in the log.
//! It is published as a bus signal (ADR 0026: a core NATS subject carrying the tenant,
//! `{prefix}.{cell}.sig.presence.{tenant}`, or the in-process bus's broadcast), and every
//! stream subscribes to its own tenant's signals: so an agent sees the presence of agents on
//! any process of the cell, each signal once (a stream's only source is its own
//! subscription; the publisher's process gets its signal back through the bus like the
//! others). A signal of another tenant is dropped (the subject, then the payload is
//! checked), one older than [`PRESENCE_TTL`] too: presence holds that long unless refreshed.

use crate::{Conversations, conversation_role, participation};
use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;
use postvak_directory::identity::Access;
use postvak_platform::cell::TenantContext;
use postvak_platform::db::{Db, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{
    LogPosition, Payloads, StoreError, StoredEvent, TailPause, TenantId,
};
use postvak_proto::events::conversation as ev;
use postvak_proto::events::notification as nev;
use postvak_proto::rest::conversation as dto;
use postvak_proto::rest::notification as notification_dto;
use sqlx::Row;
use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

/// How long a presence signal holds: an older one (delayed on the way) is not shown, and
/// clients re-post presence more often than this while it lasts.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);

/// Publishes a presence signal to every process of the tenant's cell.
pub(crate) async fn publish_presence(
    ctx: &TenantContext,
    conversation_id: Uuid,
    user_id: Uuid,
    state: String,
) -> Result<(), postvak_platform::bus::BusError> {
    let signal = ev::PresenceSignalV1 {
        tenant_id: ctx.tenant().0,
        conversation_id,
        user_id,
        state,
        at_us: postvak_platform::store::micros(OffsetDateTime::now_utc()),
    };
    let payload = serde_json::to_vec(&signal)
        .map_err(|e| postvak_platform::bus::BusError::Other(e.to_string()))?;
    ctx.cell()
        .bus
        .publish_signal(ev::SIGNAL_PRESENCE, ctx.tenant().0, payload)
        .await
}

/// A received presence signal if it is the tenant's, well formed and fresh.
fn presence_of(
    tenant: TenantId,
    signal: &postvak_platform::bus::Signal,
    now: OffsetDateTime,
) -> Option<ev::PresenceSignalV1> {
    let p: ev::PresenceSignalV1 = match serde_json::from_slice(&signal.payload) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "malformed presence signal dropped");
            return None;
        }
    };
    if p.tenant_id != tenant.0 || signal.tenant != tenant.0 {
        tracing::warn!(expected = %tenant.0, got = %p.tenant_id, "presence signal of another tenant dropped");
        return None;
    }
    let at = postvak_platform::store::from_micros(p.at_us);
    (now - at <= PRESENCE_TTL).then_some(p)
}

/// `id:` of an event: `tx-global_position`.
pub(crate) fn encode_position(p: LogPosition) -> String {
    format!("{}-{}", p.tx, p.global_position)
}

pub(crate) fn decode_position(s: &str) -> Option<LogPosition> {
    let (tx, g) = s.trim().split_once('-')?;
    Some(LogPosition {
        tx: tx.parse().ok()?,
        global_position: g.parse().ok()?,
    })
}

/// The newest position of the tenant's log that `read_log` would return now.
pub(crate) async fn head(db: &Db, tenant: TenantId) -> Result<LogPosition, StoreError> {
    let sql = match db {
        Db::Postgres(_) => {
            "SELECT tx::text::bigint, global_position FROM events WHERE tenant_id = $1 \
             AND tx < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY tenant_id DESC, tx DESC, global_position DESC LIMIT 1"
        }
        Db::Sqlite(_) => {
            "SELECT tx, global_position FROM events WHERE tenant_id = $1 \
             ORDER BY global_position DESC LIMIT 1"
        }
    };
    let mut tx = db.begin().await?;
    let row: Option<(i64, i64)> = on_tx!(&mut tx, |c| sqlx::query(sql)
        .bind(tenant.0)
        .fetch_optional(c)
        .await
        .and_then(|r| r.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(row.map_or(LogPosition::START, |(t, g)| LogPosition {
        tx: u64::try_from(t).unwrap_or(0),
        global_position: g,
    }))
}

/// A response body fed by a channel: ends when the sender is dropped; dropping it (the client
/// went away) stops the task feeding it.
pub(crate) struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl MessageBody for ChannelBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.get_mut().0.poll_recv(cx).map(|b| b.map(Ok))
    }
}

fn frame(event: &str, id: Option<&str>, data: &impl serde::Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    let mut s = String::new();
    if let Some(id) = id {
        s.push_str("id: ");
        s.push_str(id);
        s.push('\n');
    }
    s.push_str("event: ");
    s.push_str(event);
    s.push_str("\ndata: ");
    s.push_str(&json);
    s.push_str("\n\n");
    Bytes::from(s)
}

/// Whether the caller may read the conversation now (404 rules of the API).
async fn may_read(svc: &Conversations, ctx: &TenantContext, access: &Access, id: Uuid) -> bool {
    // The cached state caught up with the events since (usually just the ones this stream is
    // about to send), not a replay of the whole conversation per change and per stream.
    match svc.state(ctx, id).await {
        Ok(state) if state.is_open() || state.merged_into.is_some() => {
            let inboxes: Vec<Uuid> = state.inboxes.keys().copied().collect();
            conversation_role(access, &inboxes, participation(&state, access.user_id())).is_some()
        }
        _ => false,
    }
}

fn conversation_of(e: &StoredEvent) -> Option<Uuid> {
    if e.stream_type != ev::STREAM_CONVERSATION {
        return None;
    }
    Uuid::try_parse(e.stream_id.strip_prefix("conv-")?).ok()
}

/// An `agent.notified` event as the stream shows it (`None`: erased or not readable).
async fn notification(
    store: &dyn postvak_platform::store::EventStore,
    e: &StoredEvent,
) -> Option<notification_dto::NotificationStreamEvent> {
    if e.event_type != nev::AGENT_NOTIFIED || e.event_version != 1 {
        return None;
    }
    let n: nev::AgentNotifiedV1 = match store.open(e).await.and_then(|r| r.payload()) {
        Ok(n) => n,
        Err(err) => {
            tracing::warn!(error = %err, "live stream cannot read an agent notification");
            return None;
        }
    };
    Some(notification_dto::NotificationStreamEvent {
        notification_id: n.notification_id,
        kind: n.kind,
        conversation_id: n.conversation_id,
        actor: n.actor,
        detail: n.detail,
        at: postvak_platform::store::from_micros(n.at_us),
    })
}

/// How many log entries are read at once.
const BATCH: usize = 256;
/// Polls the log this often even without a signal (another process may have appended).
const POLL: Duration = Duration::from_secs(1);

/// Feeds one stream until the client goes away.
pub(crate) async fn run_stream(
    svc: Conversations,
    ctx: TenantContext,
    access: Access,
    mut pos: LogPosition,
    heartbeat: Duration,
    out: mpsc::Sender<Bytes>,
) {
    let store = ctx.cell().store.clone();
    let signal = store.append_signal();
    let tenant = ctx.tenant();
    // Subscribed before the first byte, so a presence posted once the stream is open arrives.
    let mut presence = match ctx
        .cell()
        .bus
        .subscribe_signals(ev::SIGNAL_PRESENCE, tenant.0)
        .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "live stream runs without presence");
            None
        }
    };
    let me = access.user_id();
    let mut last_sent = tokio::time::Instant::now();
    let mut pause = TailPause::new(POLL);
    // Tells the client how long to wait before reconnecting.
    if out
        .send(Bytes::from_static(b"retry: 2000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (batch, held_back) = match store
            .read_log_tail(
                pos,
                BATCH,
                Some(tenant),
                // Only agent notifications are sent with their content; of the rest the
                // stream learns which conversation changed, never reading their payloads.
                Payloads::OfStreamTypes(&[nev::STREAM_AGENT_NOTIFICATION]),
            )
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "live stream cannot read the log");
                (Vec::new(), false)
            }
        };
        let full = batch.len() == BATCH;
        if !batch.is_empty() {
            pause.reset();
        }
        let mut seen: HashMap<Uuid, bool> = HashMap::new();
        for e in batch {
            pos = e.position;
            if e.stream_type == nev::STREAM_AGENT_NOTIFICATION {
                if me.is_some()
                    && nev::agent_notification_user(&e.stream_id) == me
                    && let Some(data) = notification(&*store, &e).await
                {
                    let id_text = encode_position(e.position);
                    if out
                        .send(frame("notification", Some(&id_text), &data))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last_sent = tokio::time::Instant::now();
                }
                continue;
            }
            let Some(id) = conversation_of(&e) else {
                continue;
            };
            let visible = match seen.get(&id) {
                Some(v) => *v,
                None => {
                    let v = may_read(&svc, &ctx, &access, id).await;
                    seen.insert(id, v);
                    v
                }
            };
            if !visible {
                continue;
            }
            let data = dto::ConversationStreamEvent {
                conversation_id: id,
                version: e.stream_version,
                change: e.event_type.clone(),
                at: e.recorded_at,
            };
            let id_text = encode_position(e.position);
            if out
                .send(frame("conversation", Some(&id_text), &data))
                .await
                .is_err()
            {
                return;
            }
            last_sent = tokio::time::Instant::now();
        }
        if full {
            continue;
        }
        let wait = pause.after_short_read(held_back);
        let beat_at = last_sent + heartbeat;
        tokio::select! {
            () = out.closed() => return,
            () = &mut notified => {}
            () = tokio::time::sleep(wait) => {}
            () = tokio::time::sleep_until(beat_at) => {
                if out.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            p = next_signal(&mut presence) => match p {
                Some(signal) => {
                    if let Some(p) = presence_of(tenant, &signal, OffsetDateTime::now_utc())
                        && Some(p.user_id) != me
                        && may_read(&svc, &ctx, &access, p.conversation_id).await
                    {
                        let data = dto::PresenceStreamEvent {
                            conversation_id: p.conversation_id,
                            user_id: p.user_id,
                            state: p.state,
                            at: postvak_platform::store::from_micros(p.at_us),
                        };
                        if out.send(frame("presence", None, &data)).await.is_err() {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                }
                None => {
                    tracing::warn!("presence subscription ended; the stream goes on without it");
                    presence = None;
                }
            },
        }
    }
}

/// The next signal of the subscription; never, without one.
async fn next_signal(
    s: &mut Option<Box<dyn postvak_platform::bus::SignalStream>>,
) -> Option<postvak_platform::bus::Signal> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let p = LogPosition {
            tx: 42,
            global_position: 7,
        };
        assert_eq!(decode_position(&encode_position(p)), Some(p));
        assert_eq!(decode_position("x"), None);
        assert_eq!(decode_position("1-"), None);
    }

    fn signal(tenant: Uuid, p: &ev::PresenceSignalV1) -> postvak_platform::bus::Signal {
        postvak_platform::bus::Signal {
            tenant,
            payload: serde_json::to_vec(p).unwrap(),
        }
    }

    #[test]
    fn presence_is_only_the_tenant_s_and_fresh() {
        let mine = TenantId(Uuid::now_v7());
        let now = OffsetDateTime::now_utc();
        let p = ev::PresenceSignalV1 {
            tenant_id: mine.0,
            conversation_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            state: "viewing".into(),
            at_us: postvak_platform::store::micros(now),
        };
        assert_eq!(presence_of(mine, &signal(mine.0, &p), now), Some(p.clone()));
        // Another tenant's payload, even on this tenant's subject, is dropped.
        let other = ev::PresenceSignalV1 {
            tenant_id: Uuid::now_v7(),
            ..p.clone()
        };
        assert_eq!(presence_of(mine, &signal(mine.0, &other), now), None);
        assert_eq!(presence_of(mine, &signal(other.tenant_id, &p), now), None);
        // Not refreshed within the TTL: expired.
        let later = now + PRESENCE_TTL + time::Duration::seconds(1);
        assert_eq!(presence_of(mine, &signal(mine.0, &p), later), None);
        let bad = postvak_platform::bus::Signal {
            tenant: mine.0,
            payload: b"{".to_vec(),
        };
        assert_eq!(presence_of(mine, &bad, now), None);
    }
}
