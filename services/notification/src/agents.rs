//! Agent notifications by email and on the agent's live stream: "assigned to you",
//! "mentioned in a note", "your reply was not delivered" (`reply.delivery_failed`, to the
//! reply's author) and SLA warnings and breaches (`routing.sla_warning` /
//! `routing.sla_breached`, to the conversation's assignee or, when it is unassigned, to the
//! inbox's admins), one mail each or a digest per interval, per the user's preference (`off`
//! records them as skipped; SLA alerts may have their own, ADR 0015).
//!
//! SLA alerts come from routing's timer streams through a consumer of their own
//! ([`SLA_CONSUMER`]); the assignee is what the conversation consumer last recorded in
//! `notification_conversations`. An SLA event older than [`SLA_STALE_US`] when it is handled
//! (a replay after an outage, or the first start of this consumer over an old log) is recorded
//! as skipped, never mailed: it would tell of a deadline long past.
//!
//! The consumer records each notification and schedules the user (one due item per user) in
//! its transaction; unless the user turned `stream` off, the same transaction appends
//! `agent.notified` on `agent_notification/user-<user>-<notification>`, which `/v1/stream`
//! (conversation service) sends to that user as `event: notification` (ADR 0019); the
//! worker sends what is pending for a user through the relay and marks it sent; it then moves
//! the user's due row (next digest, sweep) only if nothing was scheduled for the user since it
//! read the row, so a notification recorded during a send is mailed next (ADR 0038). Delivery is
//! at least once (a crash between the 250 and the mark repeats a mail: these go to our own
//! agents, not to customers). Mails and pushes name the conversation and the actor, never the
//! conversation's content (it stays sealed in the conversation service).

use crate::due::{self, DueItem, Job, Limits, Settling};
use crate::settings::OutboundSmtpSettings;
use crate::smtp::SmtpPool;
use crate::{Part, SERVICE, duration_us, now_us};
use async_trait::async_trait;
use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use postvak_core::access::{Grantee, InboxRole};
use postvak_directory::Directory;
use postvak_platform::cell::{Cell, Cells, Principal, TenantContext};
use postvak_platform::consumer::run_consumer;
use postvak_platform::consumer::{EventHandler, HandlerError, WakeAfterCommit};
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{
    EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamRef, TenantId,
};
use postvak_proto::events::conversation::{
    self as cev, AssignedV1, NoteAddedV1, ReplyDeliveryFailedV1,
};
use postvak_proto::events::notification::{self as nev, AgentNotifiedV1};
use postvak_proto::events::timers::{self as tev, SlaClockEventV1};
use postvak_proto::rest::notification::NotificationPreferences;
use sqlx::Row;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// This part's name inside the combined [`crate::CONSUMER`] (logs only; the checkpoint is
/// the combined consumer's).
pub const AGENT_CONSUMER: &str = "notification-agents";
/// Durable consumer of routing's timer streams for SLA alerts (its own checkpoint).
pub const SLA_CONSUMER: &str = "notification-sla";
/// SLA events older than this when handled are recorded as skipped, never mailed.
pub const SLA_STALE_US: i64 = 3_600_000_000;

const LANE: &str = "agents";
const AUTO_SUBMITTED: HeaderName = HeaderName::new_from_ascii_str("Auto-Submitted");
const DEFAULT_DIGEST_SECS: i64 = 3_600;
/// After a send, look at the user once more a little later: a safety net only. A notification
/// recorded during a send keeps the user's due row due now (the row's `seq`, ADR 0038); the row
/// is held (leased) while its notifications are sent, so no other process sends them (ADR 0041).
const SWEEP_AFTER_US: i64 = 60_000_000;

/// The agent-notification handler (always: nothing is lost while the relay is misconfigured)
/// and, with a relay, the mailer for one cell.
pub(crate) fn start(
    cells: &Cells,
    cell: Arc<Cell>,
    settings: OutboundSmtpSettings,
    transport: Option<SmtpPool>,
    cancel: CancellationToken,
) -> Part {
    let wake = Arc::new(Notify::new());
    let handler: Arc<dyn EventHandler> = Arc::new(Recorder {
        wake: WakeAfterCommit::new(wake.clone()),
        store: cell.store.clone(),
    });
    let sla: Arc<dyn EventHandler> = Arc::new(SlaAlerts {
        recorder: Recorder {
            wake: WakeAfterCommit::new(wake.clone()),
            store: cell.store.clone(),
        },
        cells: cells.clone(),
        directory: Directory::new(cells.clone()),
    });
    let mut part = Part {
        handlers: vec![handler],
        tasks: vec![tokio::spawn({
            let (store, bus, cancel) = (cell.store.clone(), cell.bus.clone(), cancel.clone());
            async move {
                run_consumer(store, bus, sla, cancel).await;
            }
        })],
    };
    let Some(transport) = transport else {
        return part;
    };
    let job: Arc<dyn Job> = Arc::new(Mailer {
        cells: cells.clone(),
        directory: Directory::new(cells.clone()),
        transport,
        settings,
    });
    part.tasks.push(tokio::spawn(due::dispatch(
        cell.db().clone(),
        due::AGENT,
        job,
        Limits {
            per_lane: 4,
            per_tenant: 4,
            total: 4,
            capped_lanes: None,
        },
        wake,
        cancel,
    )));
    part
}

struct Recorder {
    wake: WakeAfterCommit,
    store: Arc<dyn EventStore>,
}

/// A user's preferences as stored.
struct Prefs {
    delivery: String,
    digest_secs: i64,
    sla_alerts: String,
    /// Push to the user's `/v1/stream` too.
    stream: bool,
}

impl Prefs {
    /// `each`, `digest` or `off` for a notification of `kind`.
    fn mode(&self, kind: &str) -> &str {
        if kind.starts_with("sla_") && self.sla_alerts != "inherit" {
            &self.sla_alerts
        } else {
            &self.delivery
        }
    }
}

async fn prefs(tx: &mut DbTx, t: TenantId, user: Uuid) -> Result<Prefs, StoreError> {
    let row: Option<Prefs> = on_tx!(tx, |c| sqlx::query(
        "SELECT delivery, digest_secs, sla_alerts, stream FROM agent_notification_prefs \
         WHERE tenant_id = $1 AND user_id = $2"
    )
    .bind(t.0)
    .bind(user)
    .fetch_optional(c)
    .await
    .and_then(|r| r
        .map(|r| Ok(Prefs {
            delivery: r.try_get(0)?,
            digest_secs: r.try_get(1)?,
            sla_alerts: r.try_get(2)?,
            stream: r.try_get(3)?,
        }))
        .transpose()))
    .map_err(db_error)?;
    Ok(row.unwrap_or_else(|| Prefs {
        delivery: "each".into(),
        digest_secs: DEFAULT_DIGEST_SECS,
        sla_alerts: "inherit".into(),
        stream: true,
    }))
}

impl Recorder {
    async fn notify(
        &self,
        tx: &mut DbTx,
        event: &RecordedEvent,
        user: Uuid,
        kind: &str,
        actor: Option<Uuid>,
    ) -> Result<(), HandlerError> {
        let Some(conversation) = event
            .stream_id
            .strip_prefix("conv-")
            .and_then(|s| Uuid::parse_str(s).ok())
        else {
            return Ok(());
        };
        self.record(tx, event, conversation, user, kind, actor, None, false)
            .await
    }

    /// Records one notification for `user` and schedules them (`skip`: recorded as skipped).
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        tx: &mut DbTx,
        event: &RecordedEvent,
        conversation: Uuid,
        user: Uuid,
        kind: &str,
        actor: Option<Uuid>,
        detail: Option<&str>,
        skip: bool,
    ) -> Result<(), HandlerError> {
        let t = event.tenant_id;
        let p = prefs(tx, t, user).await?;
        let delivery = p.mode(kind).to_owned();
        let digest_secs = p.digest_secs;
        let now = now_us();
        let state = if delivery == "off" || skip {
            "skipped"
        } else {
            "pending"
        };
        let notification_id = Uuid::now_v7();
        let inserted = on_tx!(tx, |c| sqlx::query(
            "INSERT INTO agent_notifications (tenant_id, notification_id, user_id, kind, \
             conversation_id, event_id, actor, state, created_us, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (tenant_id, user_id, event_id) DO NOTHING"
        )
        .bind(t.0)
        .bind(notification_id)
        .bind(user)
        .bind(kind)
        .bind(conversation)
        .bind(event.event_id)
        .bind(actor)
        .bind(state)
        .bind(now)
        .bind(detail)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| HandlerError::Store(db_error(e)))?;
        // Pushed once: only when this transaction recorded it (a redelivery inserts nothing),
        // and its own stream is new.
        if inserted == 1 && !skip && p.stream {
            let pushed = AgentNotifiedV1 {
                notification_id,
                user_id: user,
                kind: kind.to_owned(),
                conversation_id: conversation,
                actor,
                detail: detail.map(str::to_owned),
                at_us: now,
            };
            let mut e = NewEvent::from_payload(nev::AGENT_NOTIFIED, 1, &pushed)
                .map_err(HandlerError::Store)?;
            e.metadata.actor = Some(SERVICE.actor());
            e.metadata.causation_id = Some(event.event_id);
            self.store
                .append_in_tx(
                    tx,
                    t,
                    &StreamRef::new(
                        nev::STREAM_AGENT_NOTIFICATION,
                        nev::agent_notification_stream_id(user, notification_id),
                    ),
                    ExpectedVersion::NoStream,
                    vec![e],
                )
                .await
                .map_err(HandlerError::Store)?;
        }
        if inserted == 1 && state == "pending" {
            let due_at = if delivery == "digest" {
                now.saturating_add(digest_secs.saturating_mul(1_000_000))
            } else {
                now
            };
            due::schedule_earliest(tx, due::AGENT, user, t, LANE, due_at).await?;
            self.wake.queued();
        }
        Ok(())
    }
}

#[async_trait]
impl EventHandler for Recorder {
    fn name(&self) -> &str {
        AGENT_CONSUMER
    }

    fn committed(&self) {
        self.wake.committed();
    }

    /// `agent.notified` events (for `/v1/stream`) are appended in the consumer's transaction.
    fn appends_events(&self) -> bool {
        true
    }

    fn stream_types(&self) -> Vec<String> {
        vec![cev::STREAM_CONVERSATION.to_owned()]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        let decode = |e: StoreError| match e {
            StoreError::Shredded { .. } => None,
            other => Some(HandlerError::Permanent(other.to_string())),
        };
        match event.event_type.as_str() {
            cev::ASSIGNED => {
                let a: AssignedV1 = match event.payload() {
                    Ok(a) => a,
                    Err(e) => return decode(e).map_or(Ok(()), Err),
                };
                tx.bind_tenant(event.tenant_id).await?;
                set_assignee(tx, event, Some(a.assignee)).await?;
                // Taking it yourself needs no mail.
                if a.claimed || a.by == Some(a.assignee) {
                    return Ok(());
                }
                self.notify(tx, event, a.assignee, "assigned", a.by).await
            }
            cev::UNASSIGNED => {
                tx.bind_tenant(event.tenant_id).await?;
                set_assignee(tx, event, None).await
            }
            cev::NOTE_ADDED => {
                let n: NoteAddedV1 = match event.payload() {
                    Ok(n) => n,
                    Err(e) => return decode(e).map_or(Ok(()), Err),
                };
                if n.mentions.is_empty() {
                    return Ok(());
                }
                tx.bind_tenant(event.tenant_id).await?;
                let mut seen = std::collections::BTreeSet::new();
                for m in n.mentions {
                    if Some(m) != n.author && seen.insert(m) {
                        self.notify(tx, event, m, "mentioned", n.author).await?;
                    }
                }
                Ok(())
            }
            cev::REPLY_DELIVERY_FAILED => {
                let f: ReplyDeliveryFailedV1 = match event.payload() {
                    Ok(f) => f,
                    Err(e) => return decode(e).map_or(Ok(()), Err),
                };
                let Some(author) = f.author else {
                    return Ok(());
                };
                tx.bind_tenant(event.tenant_id).await?;
                self.notify(tx, event, author, "reply_failed", None).await
            }
            _ => Ok(()),
        }
    }
}

/// Keeps the conversation's assignee (`None`: unassigned) for SLA alerts.
async fn set_assignee(
    tx: &mut DbTx,
    event: &RecordedEvent,
    assignee: Option<Uuid>,
) -> Result<(), HandlerError> {
    let Some(conversation) = event
        .stream_id
        .strip_prefix("conv-")
        .and_then(|s| Uuid::parse_str(s).ok())
    else {
        return Ok(());
    };
    on_tx!(tx, |c| sqlx::query(
        "UPDATE notification_conversations SET assignee_id = $1 \
         WHERE tenant_id = $2 AND conversation_id = $3"
    )
    .bind(assignee)
    .bind(event.tenant_id.0)
    .bind(conversation)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(|e| HandlerError::Store(db_error(e)))
}

/// SLA warnings and breaches → alerts for the assignee, or the inbox's admins.
struct SlaAlerts {
    recorder: Recorder,
    cells: Cells,
    directory: Directory,
}

impl SlaAlerts {
    /// Users holding an `admin` grant on the inbox now, directly or through a team.
    async fn inbox_admins(&self, tenant: TenantId, inbox: Uuid) -> Result<Vec<Uuid>, HandlerError> {
        let unavailable =
            |e: &dyn std::fmt::Display| HandlerError::Store(StoreError::Unavailable(e.to_string()));
        let ctx = self
            .cells
            .context(tenant, SERVICE)
            .await
            .map_err(|e| unavailable(&e))?;
        let grants = self
            .directory
            .grants(&ctx, Some(inbox))
            .await
            .map_err(|e| unavailable(&e))?;
        let now = time::OffsetDateTime::now_utc();
        let mut users = std::collections::BTreeSet::new();
        for g in grants {
            if g.role != InboxRole::Admin || !g.in_force(now) {
                continue;
            }
            match g.grantee {
                Grantee::User(u) => {
                    users.insert(u);
                }
                Grantee::Team(team) => match self.directory.get_team(&ctx, team).await {
                    Ok(t) => users.extend(t.members),
                    Err(postvak_directory::ServiceError::NotFound) => {}
                    Err(e) => return Err(unavailable(&e)),
                },
            }
        }
        Ok(users.into_iter().collect())
    }
}

#[async_trait]
impl EventHandler for SlaAlerts {
    fn name(&self) -> &str {
        SLA_CONSUMER
    }

    fn committed(&self) {
        self.recorder.wake.committed();
    }

    fn stream_types(&self) -> Vec<String> {
        vec![tev::STREAM_ROUTING_TIMER.to_owned()]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        let kind = match event.event_type.as_str() {
            tev::SLA_WARNING => "sla_warning",
            tev::SLA_BREACHED => "sla_breached",
            _ => return Ok(()),
        };
        let e: SlaClockEventV1 = match event.payload() {
            Ok(e) => e,
            Err(StoreError::Shredded { .. }) => return Ok(()),
            Err(other) => return Err(HandlerError::Permanent(other.to_string())),
        };
        let t = event.tenant_id;
        tx.bind_tenant(t).await?;
        let assignee: Option<Uuid> = on_tx!(tx, |c| sqlx::query(
            "SELECT assignee_id FROM notification_conversations \
             WHERE tenant_id = $1 AND conversation_id = $2"
        )
        .bind(t.0)
        .bind(e.conversation_id)
        .fetch_optional(c)
        .await
        .and_then(|r| r.map(|r| r.try_get::<Option<Uuid>, _>(0)).transpose()))
        .map_err(|e| HandlerError::Store(db_error(e)))?
        .flatten();
        let users = match assignee {
            Some(a) => vec![a],
            None => self.inbox_admins(t, e.inbox_id).await?,
        };
        if users.is_empty() {
            tracing::info!(conversation_id = %e.conversation_id, inbox_id = %e.inbox_id, "SLA alert: no assignee and no inbox admin to tell");
        }
        let detail = serde_json::json!({
            "clock": e.clock,
            "due_at_us": e.due_at_us,
            "policy": e.policy_name,
        })
        .to_string();
        let stale = now_us().saturating_sub(e.at_us) > SLA_STALE_US;
        for user in users {
            self.recorder
                .record(
                    tx,
                    event,
                    e.conversation_id,
                    user,
                    kind,
                    None,
                    Some(&detail),
                    stale,
                )
                .await?;
        }
        Ok(())
    }
}

/// What an SLA alert says, from its `detail`.
fn sla_line(kind: &str, conversation: Uuid, detail: Option<&str>) -> String {
    let d: serde_json::Value = detail
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default();
    let clock = match d["clock"].as_str().unwrap_or("") {
        "first_response" => "first response",
        "next_response" => "next response",
        "resolution" => "resolution",
        _ => "target",
    };
    let due = d["due_at_us"]
        .as_i64()
        .map(postvak_platform::store::from_micros)
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "unknown".into());
    let policy = d["policy"].as_str().unwrap_or("SLA");
    if kind == "sla_breached" {
        format!(
            "SLA breached: the {clock} in conversation {conversation} was due at {due} ({policy})."
        )
    } else {
        format!(
            "SLA warning: the {clock} in conversation {conversation} is due at {due} ({policy})."
        )
    }
}

struct Mailer {
    cells: Cells,
    directory: Directory,
    transport: SmtpPool,
    settings: OutboundSmtpSettings,
}

#[derive(Debug)]
struct PendingNote {
    id: Uuid,
    kind: String,
    conversation: Uuid,
    actor: Option<Uuid>,
    created_us: i64,
    detail: Option<String>,
}

#[async_trait]
impl Job for Mailer {
    async fn run(&self, item: DueItem) -> Option<Settling> {
        if let Err(e) = self.run_user(&item).await {
            tracing::warn!(error = %e, user_id = %item.item_id, "agent notification step failed");
        }
        None
    }
}

impl Mailer {
    /// Releases the user's due row, moved to `at` (`None`: dropped), unless a notification
    /// was scheduled since the claim: that one is due now, not at the sweep.
    async fn release(
        &self,
        ctx: &TenantContext,
        user: Uuid,
        held: due::Claim,
        at: Option<i64>,
    ) -> Result<(), StoreError> {
        let t = ctx.tenant();
        let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
        due::release(&mut tx, due::AGENT, user, t, LANE, held, at).await?;
        tx.commit().await
    }

    async fn run_user(&self, item: &DueItem) -> Result<(), StoreError> {
        let ctx = self
            .cells
            .context(item.tenant, SERVICE)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let t = ctx.tenant();
        let user = item.item_id;
        let now = now_us();
        // The user's row is held until the notifications read below are sent and marked, so
        // another notification process does not send them too; a crash leaves the lease to
        // end by itself (a notification may then be mailed again, never lost). Claimed
        // before the notifications are read: a schedule after this read is seen at release.
        let lease = i64::try_from(self.settings.sending_lease().as_micros()).unwrap_or(i64::MAX);
        let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
        let Some(held) =
            due::claim(&mut tx, due::AGENT, user, now, now.saturating_add(lease)).await?
        else {
            // Not due any more, or another process holds it.
            return tx.commit().await;
        };
        let p = prefs(&mut tx, t, user).await?;
        let pending: Vec<PendingNote> = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT notification_id, kind, conversation_id, actor, created_us, detail \
             FROM agent_notifications WHERE tenant_id = $1 AND user_id = $2 AND state = 'pending' \
             ORDER BY created_us, notification_id"
        )
        .bind(t.0)
        .bind(user)
        .fetch_all(c)
        .await
        .and_then(|rows| rows
            .iter()
            .map(|r| Ok(PendingNote {
                id: r.try_get(0)?,
                kind: r.try_get(1)?,
                conversation: r.try_get(2)?,
                actor: r.try_get(3)?,
                created_us: r.try_get(4)?,
                detail: r.try_get(5)?,
            }))
            .collect()))
        .map_err(db_error)?;
        tx.commit().await?;
        let sent = self.send_pending(&ctx, user, held, now, &p, pending).await;
        if sent.is_err() {
            // Otherwise held until the lease ends: due again after the retry pause instead.
            let at = now_us().saturating_add(duration_us(self.settings.retry_base()));
            if let Err(e) = self.release(&ctx, user, held, Some(at)).await {
                tracing::warn!(error = %e, user_id = %user, "cannot release a user's notifications; the lease ends by itself");
            }
        }
        sent
    }

    /// Sends what is due of a user's `pending` notifications (claimed through `held`) and
    /// releases the user's row.
    async fn send_pending(
        &self,
        ctx: &TenantContext,
        user: Uuid,
        held: due::Claim,
        now: i64,
        p: &Prefs,
        pending: Vec<PendingNote>,
    ) -> Result<(), StoreError> {
        if pending.is_empty() {
            return self.release(ctx, user, held, None).await;
        }
        // Each kind as the user wants it now: one by one at once, or gathered in a digest
        // that is due one interval after its oldest notification.
        let (digest, each): (Vec<PendingNote>, Vec<PendingNote>) = pending
            .into_iter()
            .partition(|n| p.mode(&n.kind) == "digest");
        let digest_due = digest.first().map(|oldest| {
            oldest
                .created_us
                .saturating_add(p.digest_secs.saturating_mul(1_000_000))
        });
        let digest_now = digest_due.is_some_and(|d| d <= now);
        let later = digest_due.filter(|_| !digest_now);
        if each.is_empty() && !digest_now {
            return self.release(ctx, user, held, later).await;
        }
        let digest = if digest_now { digest } else { Vec::new() };
        let pending: Vec<&PendingNote> = each.iter().chain(&digest).collect();
        let recipient = match self.directory.get_user(ctx, user).await {
            Ok(u) if !u.disabled => u,
            Ok(_) | Err(postvak_directory::ServiceError::NotFound) => {
                let ids: Vec<Uuid> = pending.iter().map(|p| p.id).collect();
                self.mark(ctx, &ids, "skipped").await?;
                return self.release(ctx, user, held, later).await;
            }
            Err(e) => return Err(StoreError::Unavailable(e.to_string())),
        };
        let mut lines = Vec::with_capacity(pending.len());
        for p in &pending {
            if p.kind.starts_with("sla_") {
                lines.push(sla_line(&p.kind, p.conversation, p.detail.as_deref()));
                continue;
            }
            let who = match p.actor {
                Some(a) => self
                    .directory
                    .get_user(ctx, a)
                    .await
                    .map(|u| u.display_name)
                    .unwrap_or_else(|_| "Someone".into()),
                None => "Postvak".into(),
            };
            lines.push(match p.kind.as_str() {
                "assigned" => format!("{who} assigned conversation {} to you.", p.conversation),
                "reply_failed" => format!(
                    "Your reply in conversation {} could not be delivered; the conversation shows why.",
                    p.conversation
                ),
                _ => format!("{who} mentioned you in conversation {}.", p.conversation),
            });
        }
        let (each_lines, digest_lines) = lines.split_at(each.len());
        let mut batches: Vec<(String, Vec<Uuid>, String)> = each
            .iter()
            .zip(each_lines)
            .map(|(p, line)| {
                let subject = match p.kind.as_str() {
                    "assigned" => "[Postvak] A conversation was assigned to you",
                    "reply_failed" => "[Postvak] Your reply was not delivered",
                    "sla_warning" => "[Postvak] SLA warning",
                    "sla_breached" => "[Postvak] SLA breached",
                    _ => "[Postvak] You were mentioned",
                }
                .to_owned();
                (subject, vec![p.id], line.clone())
            })
            .collect();
        if !digest.is_empty() {
            batches.push((
                format!("[Postvak] {} notifications", digest.len()),
                digest.iter().map(|p| p.id).collect(),
                digest_lines.join("\n"),
            ));
        }
        for (subject, ids, body) in batches {
            let mail = self.mail(&recipient.email, &recipient.display_name, &subject, &body);
            let sent = match mail {
                Ok(m) => self.transport.send(&m).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, user_id = %user, "agent notification not sent; will retry");
                let at = now_us().saturating_add(duration_us(self.settings.retry_base()));
                return self.release(ctx, user, held, Some(at)).await;
            }
            metrics::counter!("postvak_agent_notifications_total").increment(ids.len() as u64);
            self.mark(ctx, &ids, "sent").await?;
        }
        let sweep = now_us().saturating_add(SWEEP_AFTER_US);
        let next = later.map_or(sweep, |l| l.min(sweep));
        self.release(ctx, user, held, Some(next)).await
    }

    fn mail(&self, to: &str, name: &str, subject: &str, body: &str) -> Result<Message, String> {
        let from = self
            .settings
            .notification_from
            .parse()
            .map_err(|e| format!("notification_from: {e}"))?;
        let to = lettre::message::Mailbox::new(
            Some(name.to_owned()),
            to.parse().map_err(|e| format!("bad address {to}: {e}"))?,
        );
        let mut m = Message::builder()
            .from(from)
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(format!("{body}\n"))
            .map_err(|e| e.to_string())?;
        // RFC 3834: nobody's auto-responder should answer it.
        m.headers_mut()
            .insert_raw(HeaderValue::new(AUTO_SUBMITTED, "auto-generated".into()));
        Ok(m)
    }

    async fn mark(&self, ctx: &TenantContext, ids: &[Uuid], state: &str) -> Result<(), StoreError> {
        let t = ctx.tenant();
        let now = now_us();
        let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
        for id in ids {
            on_tx!(&mut tx, |c| sqlx::query(
                "UPDATE agent_notifications SET state = $1, sent_us = $2 \
                 WHERE tenant_id = $3 AND notification_id = $4 AND state = 'pending'"
            )
            .bind(state)
            .bind(now)
            .bind(t.0)
            .bind(*id)
            .execute(c)
            .await
            .map(|_| ()))
            .map_err(db_error)?;
        }
        tx.commit().await
    }
}

/// A user's preferences (defaults when never set).
pub async fn preferences(
    ctx: &TenantContext,
    user: Uuid,
) -> Result<NotificationPreferences, StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let p = prefs(&mut tx, t, user).await?;
    tx.commit().await?;
    Ok(NotificationPreferences {
        delivery: p.delivery,
        digest_secs: u32::try_from(p.digest_secs).unwrap_or(u32::MAX),
        sla_alerts: p.sla_alerts,
        stream: p.stream,
    })
}

/// Sets a user's preferences; `Err(reason)` for values out of range.
pub async fn set_preferences(
    ctx: &TenantContext,
    user: Uuid,
    p: &NotificationPreferences,
) -> Result<Result<(), String>, StoreError> {
    if !matches!(p.delivery.as_str(), "each" | "digest" | "off") {
        return Ok(Err("delivery: one of each, digest, off".into()));
    }
    if p.digest_secs == 0 || p.digest_secs > 7 * 86_400 {
        return Ok(Err("digest_secs: 1 to 604800".into()));
    }
    if !matches!(p.sla_alerts.as_str(), "inherit" | "each" | "digest" | "off") {
        return Ok(Err("sla_alerts: one of inherit, each, digest, off".into()));
    }
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO agent_notification_prefs (tenant_id, user_id, delivery, digest_secs, \
         updated_us, sla_alerts, stream) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (tenant_id, user_id) DO UPDATE \
         SET delivery = excluded.delivery, digest_secs = excluded.digest_secs, \
             updated_us = excluded.updated_us, sla_alerts = excluded.sla_alerts, \
             stream = excluded.stream"
    )
    .bind(t.0)
    .bind(user)
    .bind(&p.delivery)
    .bind(i64::from(p.digest_secs))
    .bind(now_us())
    .bind(&p.sla_alerts)
    .bind(p.stream)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(Ok(()))
}

/// The user behind a principal, if it is one.
pub(crate) fn user_of(p: &Principal) -> Option<Uuid> {
    match p {
        Principal::User { user_id, .. } => Some(*user_id),
        _ => None,
    }
}
