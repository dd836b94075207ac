//! SLA policies per inbox, the clocks they run on each conversation, timer settings
//! (escalation, auto-close), and the consumer that turns conversation events into timers.
//!
//! Clocks (pure math in `postvak_core::sla`), driven by conversation events:
//! - a customer message starts **first response** (before any agent reply) or **next
//!   response** (after one); an agent reply (`reply.queued`) satisfies the running one;
//! - **resolution** starts when the conversation opens (again when it is reopened) and stops
//!   at `closed` or `spam`;
//! - `pending` pauses every running clock (the business time used is kept), `open` resumes.
//!
//! Each running clock has a warning timer (at `warn_at` of its target) and a breach timer.
//! Policies and settings apply to clocks and timers started after they change; a priority
//! change does not re-target a running clock.
//!
//! Business hours and the time zone come from the directory's `inbox.created` /
//! `inbox.updated` events, consumed into `routing_inbox_calendars` (no other service's
//! tables are read).

use crate::rules::inbox_ctx;
use crate::timers::{self, ActionParams, NewTimer, TimerKind};
use actix_web::{HttpResponse, web};
use async_trait::async_trait;
use postvak_core::access::InboxRole;
use postvak_core::sla::{BusinessCalendar, Clock, ClockKind, SlaPolicy, SlaTargets};
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::TenantContext;
use postvak_platform::consumer::{EventHandler, HandlerError};
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::http::ApiError;
use postvak_platform::on_tx;
use postvak_platform::store::{EventData, RecordedEvent, StoreError, TenantId, micros};
use postvak_proto::Problem;
use postvak_proto::events::conversation as cev;
use postvak_proto::events::identity as iev;
use postvak_proto::rest::sla as dto;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// Parameters of an SLA timer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaTimerParams {
    pub clock: String,
    pub policy_id: Uuid,
    pub policy_name: String,
    /// When the clock's target is reached (for the warning: the breach it announces).
    pub breach_at_us: i64,
}

/// A clock as kept in `routing_conversations.clocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredClock {
    policy_id: Uuid,
    policy_name: String,
    target_us: i64,
    used_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    running_since_us: Option<i64>,
}

impl StoredClock {
    fn clock(&self) -> Clock {
        Clock {
            target_us: self.target_us,
            used_us: self.used_us,
            running_since_us: self.running_since_us,
        }
    }

    fn set(&mut self, c: Clock) {
        self.used_us = c.used_us;
        self.running_since_us = c.running_since_us;
    }
}

/// What the consumer keeps of one conversation.
#[derive(Debug, Clone)]
struct ConvRow {
    inbox_id: Uuid,
    status: String,
    priority: String,
    assignee: Option<Uuid>,
    awaiting_reply: bool,
    replied: bool,
    clocks: BTreeMap<String, StoredClock>,
}

// ---------------------------------------------------------------------------------------------
// Storage

async fn load_conv(
    tx: &mut DbTx,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<ConvRow>, StoreError> {
    type Row = (Uuid, String, String, Option<Uuid>, bool, bool, String);
    let row: Option<Row> = on_tx!(tx, |c| sqlx::query_as(
        "SELECT inbox_id, status, priority, assignee, awaiting_reply, replied, clocks \
         FROM routing_conversations WHERE tenant_id = $1 AND conversation_id = $2"
    )
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(c)
    .await)
    .map_err(db_error)?;
    Ok(row.map(
        |(inbox_id, status, priority, assignee, awaiting_reply, replied, clocks)| ConvRow {
            inbox_id,
            status,
            priority,
            assignee,
            awaiting_reply,
            replied,
            clocks: serde_json::from_str(&clocks).unwrap_or_default(),
        },
    ))
}

async fn save_conv(
    tx: &mut DbTx,
    tenant: TenantId,
    id: Uuid,
    c: &ConvRow,
) -> Result<(), StoreError> {
    let clocks =
        serde_json::to_string(&c.clocks).map_err(|e| StoreError::Serialization(e.to_string()))?;
    on_tx!(tx, |x| sqlx::query(
        "INSERT INTO routing_conversations (tenant_id, conversation_id, inbox_id, status, \
           priority, assignee, awaiting_reply, replied, clocks) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET inbox_id = excluded.inbox_id, \
           status = excluded.status, priority = excluded.priority, assignee = excluded.assignee, \
           awaiting_reply = excluded.awaiting_reply, replied = excluded.replied, \
           clocks = excluded.clocks"
    )
    .bind(tenant.0)
    .bind(id)
    .bind(c.inbox_id)
    .bind(&c.status)
    .bind(&c.priority)
    .bind(c.assignee)
    .bind(c.awaiting_reply)
    .bind(c.replied)
    .bind(clocks)
    .execute(x)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    Ok(())
}

/// The inbox's calendar (24/7 in UTC when the directory never told us otherwise), with the
/// policy's holidays.
async fn calendar(
    tx: &mut DbTx,
    tenant: TenantId,
    inbox: Uuid,
    holidays: &[String],
) -> Result<BusinessCalendar, StoreError> {
    let row: Option<(Option<String>, Option<String>)> = on_tx!(tx, |c| sqlx::query_as(
        "SELECT timezone, business_hours FROM routing_inbox_calendars \
         WHERE tenant_id = $1 AND inbox_id = $2"
    )
    .bind(tenant.0)
    .bind(inbox)
    .fetch_optional(c)
    .await)
    .map_err(db_error)?;
    let (tz, hours) = row.unwrap_or((None, None));
    let hours: Option<serde_json::Value> = hours.and_then(|h| serde_json::from_str(&h).ok());
    // The directory validated both; a zone this build does not know counts as UTC.
    Ok(
        BusinessCalendar::new(tz.as_deref(), hours.as_ref(), holidays)
            .or_else(|_| BusinessCalendar::new(None, hours.as_ref(), holidays))
            .unwrap_or_else(|_| BusinessCalendar::always_open()),
    )
}

async fn upsert_calendar(
    tx: &mut DbTx,
    tenant: TenantId,
    inbox: Uuid,
    timezone: Option<&str>,
    hours: Option<&serde_json::Value>,
) -> Result<(), StoreError> {
    let hours = hours.map(std::string::ToString::to_string);
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO routing_inbox_calendars (tenant_id, inbox_id, timezone, business_hours) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, inbox_id) DO UPDATE SET \
           timezone = COALESCE(excluded.timezone, routing_inbox_calendars.timezone), \
           business_hours = COALESCE(excluded.business_hours, routing_inbox_calendars.business_hours)"
    )
    .bind(tenant.0)
    .bind(inbox)
    .bind(timezone)
    .bind(hours)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    Ok(())
}

/// A stored policy: its id and the shape it was written in.
async fn load_policy(
    tx: &mut DbTx,
    tenant: TenantId,
    inbox: Uuid,
) -> Result<Option<(Uuid, dto::PutSlaPolicy)>, StoreError> {
    let row: Option<(Uuid, String)> = on_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT policy_id, policy FROM routing_sla_policies WHERE tenant_id = $1 AND inbox_id = $2"
    )
    .bind(tenant.0)
    .bind(inbox)
    .fetch_optional(c)
    .await
    })
    .map_err(db_error)?;
    Ok(row.and_then(|(id, p)| serde_json::from_str(&p).ok().map(|p| (id, p))))
}

async fn load_automation(
    tx: &mut DbTx,
    tenant: TenantId,
    inbox: Uuid,
) -> Result<dto::Automation, StoreError> {
    let row: Option<String> = on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT settings FROM routing_automation WHERE tenant_id = $1 AND inbox_id = $2"
    )
    .bind(tenant.0)
    .bind(inbox)
    .fetch_optional(c)
    .await)
    .map_err(db_error)?;
    Ok(row
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default())
}

fn core_targets(t: &dto::SlaTargets) -> SlaTargets {
    SlaTargets {
        first_response_secs: t.first_response_secs,
        next_response_secs: t.next_response_secs,
        resolution_secs: t.resolution_secs,
    }
}

/// The pure policy of a REST shape.
pub fn core_policy(p: &dto::PutSlaPolicy) -> SlaPolicy {
    SlaPolicy {
        targets: core_targets(&p.targets),
        by_priority: p
            .by_priority
            .iter()
            .map(|(k, v)| (k.clone(), core_targets(v)))
            .collect(),
        warn_at: p.warn_at.unwrap_or(DEFAULT_WARN_AT),
    }
}

/// Warn at 80 % of a target unless the policy says otherwise.
pub const DEFAULT_WARN_AT: f64 = 0.8;

// ---------------------------------------------------------------------------------------------
// The consumer

/// Consumes conversation and inbox events into clocks and timers. Durable name
/// `routing-timers`.
#[derive(Debug, Default)]
pub struct TimerScheduler;

pub const SCHEDULER: &str = "routing-timers";

#[async_trait]
impl EventHandler for TimerScheduler {
    fn name(&self) -> &str {
        SCHEDULER
    }

    /// Its writes go through the transaction only: a fetch commits once (ADR 0030).
    fn batch_transactions(&self) -> bool {
        true
    }

    fn stream_types(&self) -> Vec<String> {
        vec![
            cev::STREAM_CONVERSATION.to_owned(),
            postvak_proto::events::directory::STREAM_INBOX.to_owned(),
        ]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        if matches!(event.data, EventData::Shredded) {
            return Ok(());
        }
        tx.bind_tenant(event.tenant_id).await?;
        let permanent = |e: StoreError| HandlerError::Permanent(e.to_string());
        match event.event_type.as_str() {
            postvak_proto::events::directory::INBOX_CREATED => {
                let p: postvak_proto::events::directory::InboxCreatedV1 =
                    event.payload().map_err(permanent)?;
                upsert_calendar(tx, event.tenant_id, p.inbox_id, None, None).await?;
                Ok(())
            }
            iev::INBOX_UPDATED => {
                let p: iev::InboxUpdatedV1 = event.payload().map_err(permanent)?;
                if p.timezone.is_some() || p.business_hours.is_some() {
                    upsert_calendar(
                        tx,
                        event.tenant_id,
                        p.inbox_id,
                        p.timezone.as_deref(),
                        p.business_hours.as_ref(),
                    )
                    .await?;
                }
                Ok(())
            }
            _ if event.stream_type == cev::STREAM_CONVERSATION => {
                on_conversation_event(tx, event).await
            }
            _ => Ok(()),
        }
    }
}

fn conversation_id(event: &RecordedEvent) -> Option<Uuid> {
    event
        .stream_id
        .strip_prefix("conv-")
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// The `at_us` of a conversation payload (the recording time when it has none).
fn at_of(event: &RecordedEvent) -> i64 {
    match &event.data {
        EventData::Json(v) => v.get("at_us").and_then(serde_json::Value::as_i64),
        EventData::Shredded => None,
    }
    .unwrap_or_else(|| micros(event.recorded_at))
}

async fn on_conversation_event(tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
    let Some(conv) = conversation_id(event) else {
        return Ok(());
    };
    let tenant = event.tenant_id;
    let at = at_of(event);
    let spared = timers::fired_by(event);
    let permanent = |e: StoreError| HandlerError::Permanent(e.to_string());
    let mut ctx = Ctx {
        tenant,
        conv,
        cause: Some(event.event_id),
    };
    if event.event_type == cev::OPENED {
        let p: cev::OpenedV1 = event.payload().map_err(permanent)?;
        if load_conv(tx, tenant, conv).await?.is_some() {
            return Ok(());
        }
        let mut row = ConvRow {
            inbox_id: p.inbox_id,
            status: "open".into(),
            priority: "normal".into(),
            assignee: None,
            awaiting_reply: false,
            replied: false,
            clocks: BTreeMap::new(),
        };
        ctx.start_clock(tx, &mut row, ClockKind::Resolution, at)
            .await?;
        ctx.schedule_escalation(tx, &row, at).await?;
        save_conv(tx, tenant, conv, &row).await?;
        return Ok(());
    }
    let Some(mut row) = load_conv(tx, tenant, conv).await? else {
        // Opened before this consumer existed: nothing to time.
        return Ok(());
    };
    match event.event_type.as_str() {
        cev::MESSAGE_RECEIVED => {
            let kind = if row.replied {
                ClockKind::NextResponse
            } else {
                ClockKind::FirstResponse
            };
            if !row.awaiting_reply {
                row.awaiting_reply = true;
                ctx.start_clock(tx, &mut row, kind, at).await?;
                if row.status == "pending" {
                    ctx.pause_all(tx, &mut row, at).await?;
                }
            }
            timers::cancel(
                tx,
                tenant,
                conv,
                &[TimerKind::AutoClose, TimerKind::SnoozeWake],
                spared,
            )
            .await?;
        }
        cev::REPLY_QUEUED => {
            for kind in [ClockKind::FirstResponse, ClockKind::NextResponse] {
                ctx.stop_clock(tx, &mut row, kind).await?;
            }
            row.awaiting_reply = false;
            row.replied = true;
            timers::cancel(tx, tenant, conv, &[TimerKind::AutoClose], spared).await?;
            let auto = load_automation(tx, tenant, row.inbox_id).await?;
            if let Some(a) = auto.auto_close
                && row.status != "closed"
                && row.status != "spam"
            {
                ctx.schedule(
                    tx,
                    TimerKind::AutoClose,
                    serde_json::to_value(ActionParams {
                        after_days: Some(a.after_days),
                        ..ActionParams::default()
                    })
                    .unwrap_or_default(),
                    at + a.after_days * 86_400 * 1_000_000,
                )
                .await?;
            }
        }
        cev::STATUS_CHANGED => {
            let p: cev::StatusChangedV1 = event.payload().map_err(permanent)?;
            let before = std::mem::replace(&mut row.status, p.status.clone());
            match p.status.as_str() {
                "closed" | "spam" => {
                    for kind in ClockKind::ALL {
                        ctx.stop_clock(tx, &mut row, kind).await?;
                    }
                    row.awaiting_reply = false;
                    timers::cancel(tx, tenant, conv, &TimerKind::ALL, spared).await?;
                }
                "pending" => ctx.pause_all(tx, &mut row, at).await?,
                "open" if before == "closed" || before == "spam" => {
                    ctx.start_clock(tx, &mut row, ClockKind::Resolution, at)
                        .await?;
                    if row.assignee.is_none() {
                        ctx.schedule_escalation(tx, &row, at).await?;
                    }
                }
                "open" => ctx.resume_all(tx, &mut row, at).await?,
                _ => {}
            }
        }
        cev::SNOOZED => {
            let p: cev::SnoozedV1 = event.payload().map_err(permanent)?;
            timers::cancel(tx, tenant, conv, &[TimerKind::SnoozeWake], spared).await?;
            ctx.schedule(tx, TimerKind::SnoozeWake, serde_json::json!({}), p.until_us)
                .await?;
        }
        cev::WOKEN => {
            timers::cancel(tx, tenant, conv, &[TimerKind::SnoozeWake], spared).await?;
        }
        cev::PRIORITY_CHANGED => {
            let p: cev::PriorityChangedV1 = event.payload().map_err(permanent)?;
            row.priority = p.priority;
        }
        cev::ASSIGNED => {
            let p: cev::AssignedV1 = event.payload().map_err(permanent)?;
            row.assignee = Some(p.assignee);
            timers::cancel(tx, tenant, conv, &[TimerKind::Escalate], spared).await?;
        }
        cev::UNASSIGNED => {
            row.assignee = None;
            if row.status != "closed" && row.status != "spam" {
                timers::cancel(tx, tenant, conv, &[TimerKind::Escalate], spared).await?;
                ctx.schedule_escalation(tx, &row, at).await?;
            }
        }
        cev::MOVED => {
            let p: cev::MovedV1 = event.payload().map_err(permanent)?;
            row.inbox_id = p.to_inbox;
        }
        cev::MERGED_INTO => {
            for kind in ClockKind::ALL {
                ctx.stop_clock(tx, &mut row, kind).await?;
            }
            row.status = "closed".into();
            timers::cancel(tx, tenant, conv, &TimerKind::ALL, spared).await?;
        }
        _ => return Ok(()),
    }
    save_conv(tx, tenant, conv, &row).await?;
    Ok(())
}

struct Ctx {
    tenant: TenantId,
    conv: Uuid,
    cause: Option<Uuid>,
}

impl Ctx {
    async fn schedule(
        &mut self,
        tx: &mut DbTx,
        kind: TimerKind,
        params: serde_json::Value,
        due_at_us: i64,
    ) -> Result<Uuid, StoreError> {
        timers::schedule(
            tx,
            &NewTimer {
                tenant: self.tenant,
                conversation_id: self.conv,
                kind,
                params,
                due_at_us,
                cause_event_id: self.cause,
            },
        )
        .await
    }

    async fn schedule_escalation(
        &mut self,
        tx: &mut DbTx,
        row: &ConvRow,
        at: i64,
    ) -> Result<(), StoreError> {
        let auto = load_automation(tx, self.tenant, row.inbox_id).await?;
        if let Some(e) = auto.escalate {
            let due = at + e.after_hours * 3_600 * 1_000_000;
            let params = serde_json::to_value(ActionParams {
                escalate: Some(e),
                ..ActionParams::default()
            })
            .unwrap_or_default();
            self.schedule(tx, TimerKind::Escalate, params, due).await?;
        }
        Ok(())
    }

    /// Starts `kind` under the inbox's policy (if it has a target for it).
    async fn start_clock(
        &mut self,
        tx: &mut DbTx,
        row: &mut ConvRow,
        kind: ClockKind,
        at: i64,
    ) -> Result<(), StoreError> {
        self.stop_clock(tx, row, kind).await?;
        let Some((policy_id, policy)) = load_policy(tx, self.tenant, row.inbox_id).await? else {
            return Ok(());
        };
        let Some(target) = core_policy(&policy).targets_for(&row.priority).get(kind) else {
            return Ok(());
        };
        let stored = StoredClock {
            policy_id,
            policy_name: policy.name.clone(),
            target_us: Clock::start(target, at).target_us,
            used_us: 0,
            running_since_us: Some(at),
        };
        self.arm(tx, row.inbox_id, kind, &stored, &policy).await?;
        row.clocks.insert(kind.as_str().to_owned(), stored);
        Ok(())
    }

    /// Schedules a running clock's warning (if not yet passed) and breach (if not yet
    /// breached).
    async fn arm(
        &mut self,
        tx: &mut DbTx,
        inbox: Uuid,
        kind: ClockKind,
        stored: &StoredClock,
        policy: &dto::PutSlaPolicy,
    ) -> Result<(), StoreError> {
        let clock = stored.clock();
        if clock.running_since_us.is_none() || clock.used_us >= clock.target_us {
            return Ok(());
        }
        let cal = calendar(tx, self.tenant, inbox, &policy.holidays).await?;
        let Some(breach) = clock.due_us(&cal) else {
            return Ok(());
        };
        let params = |_: ()| {
            serde_json::to_value(SlaTimerParams {
                clock: kind.as_str().to_owned(),
                policy_id: stored.policy_id,
                policy_name: stored.policy_name.clone(),
                breach_at_us: breach,
            })
            .unwrap_or_default()
        };
        let warn_at = policy.warn_at.unwrap_or(DEFAULT_WARN_AT);
        if let Some(warn) = clock.warn_us(&cal, warn_at) {
            self.schedule(tx, TimerKind::SlaWarning, params(()), warn)
                .await?;
        }
        self.schedule(tx, TimerKind::SlaBreach, params(()), breach)
            .await?;
        Ok(())
    }

    async fn disarm(&mut self, tx: &mut DbTx, kind: ClockKind) -> Result<(), StoreError> {
        // The params JSON is ours (serde, no spaces): the clock name is matched exactly.
        let pattern = format!("%\"clock\":\"{}\"%", kind.as_str());
        let now = micros(OffsetDateTime::now_utc());
        on_tx!(tx, |c| sqlx::query(
            "UPDATE routing_timers SET state = 'cancelled', done_us = $1 \
             WHERE tenant_id = $2 AND conversation_id = $3 AND state = 'pending' \
               AND kind IN ('sla_warning', 'sla_breach') AND params LIKE $4"
        )
        .bind(now)
        .bind(self.tenant.0)
        .bind(self.conv)
        .bind(pattern)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        Ok(())
    }

    async fn stop_clock(
        &mut self,
        tx: &mut DbTx,
        row: &mut ConvRow,
        kind: ClockKind,
    ) -> Result<(), StoreError> {
        if row.clocks.remove(kind.as_str()).is_some() {
            self.disarm(tx, kind).await?;
        }
        Ok(())
    }

    async fn pause_all(
        &mut self,
        tx: &mut DbTx,
        row: &mut ConvRow,
        at: i64,
    ) -> Result<(), StoreError> {
        let policy = load_policy(tx, self.tenant, row.inbox_id).await?;
        let holidays = policy.map(|(_, p)| p.holidays).unwrap_or_default();
        let cal = calendar(tx, self.tenant, row.inbox_id, &holidays).await?;
        let kinds: Vec<ClockKind> = row
            .clocks
            .keys()
            .filter_map(|k| ClockKind::parse(k))
            .collect();
        for kind in kinds {
            if let Some(s) = row.clocks.get_mut(kind.as_str())
                && s.running_since_us.is_some()
            {
                let mut c = s.clock();
                c.pause(&cal, at);
                s.set(c);
                self.disarm(tx, kind).await?;
            }
        }
        Ok(())
    }

    async fn resume_all(
        &mut self,
        tx: &mut DbTx,
        row: &mut ConvRow,
        at: i64,
    ) -> Result<(), StoreError> {
        let Some((_, policy)) = load_policy(tx, self.tenant, row.inbox_id).await? else {
            return Ok(());
        };
        let kinds: Vec<ClockKind> = row
            .clocks
            .keys()
            .filter_map(|k| ClockKind::parse(k))
            .collect();
        for kind in kinds {
            let Some(s) = row.clocks.get_mut(kind.as_str()) else {
                continue;
            };
            if s.running_since_us.is_some() {
                continue;
            }
            let mut c = s.clock();
            c.resume(at);
            s.set(c);
            let s = s.clone();
            self.arm(tx, row.inbox_id, kind, &s, &policy).await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The API

/// Registers `/v1/inboxes/{inbox_id}/sla-policy` and `/v1/inboxes/{inbox_id}/automation`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/inboxes/{inbox_id}/sla-policy",
        web::get().to(get_sla_policy),
    )
    .route(
        "/v1/inboxes/{inbox_id}/sla-policy",
        web::put().to(put_sla_policy),
    )
    .route(
        "/v1/inboxes/{inbox_id}/sla-policy",
        web::delete().to(delete_sla_policy),
    )
    .route(
        "/v1/inboxes/{inbox_id}/automation",
        web::get().to(get_automation),
    )
    .route(
        "/v1/inboxes/{inbox_id}/automation",
        web::put().to(put_automation),
    );
}

fn validate_policy(p: &dto::PutSlaPolicy) -> Result<(), ApiError> {
    let invalid = |d: String| ApiError::unprocessable("invalid_sla_policy", d);
    if p.name.trim().is_empty() {
        return Err(invalid("name must not be empty".into()));
    }
    let core = core_policy(p);
    core.validate().map_err(invalid)?;
    let all = std::iter::once(&core.targets).chain(core.by_priority.values());
    if all
        .into_iter()
        .all(|t| ClockKind::ALL.iter().all(|k| t.get(*k).is_none()))
    {
        return Err(invalid("a policy needs at least one target".into()));
    }
    BusinessCalendar::new(None, None, &p.holidays).map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

/// The inbox's SLA policy.
#[utoipa::path(get, path = "/v1/inboxes/{inbox_id}/sla-policy", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    responses((status = 200, body = dto::SlaPolicy),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_sla_policy(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Read).await?;
    let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), false).await?;
    let Some((id, policy)) = load_policy(&mut tx, ctx.tenant(), inbox).await? else {
        return Err(ApiError::not_found().with_detail("this inbox has no SLA policy"));
    };
    Ok(HttpResponse::Ok().json(dto::SlaPolicy {
        id,
        inbox_id: inbox,
        policy,
    }))
}

/// Sets the inbox's SLA policy (inbox admins). Clocks started from now on follow it.
#[utoipa::path(put, path = "/v1/inboxes/{inbox_id}/sla-policy", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    request_body = dto::PutSlaPolicy,
    responses((status = 200, body = dto::SlaPolicy),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_sla_policy(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Admin).await?;
    let body = body.into_inner();
    let unknown = dto::PutSlaPolicy::unknown_fields(&body);
    if !unknown.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_sla_policy",
            format!("unknown fields: {}", unknown.join(", ")),
        ));
    }
    let policy: dto::PutSlaPolicy = serde_json::from_value(body).map_err(|e| {
        ApiError::unprocessable("invalid_sla_policy", format!("not an SLA policy: {e}"))
    })?;
    let saved = save_policy(&ctx, inbox, policy).await?;
    Ok(HttpResponse::Ok().json(saved))
}

/// Validates and stores an inbox's SLA policy (the caller checked the permission).
pub async fn save_policy(
    ctx: &TenantContext,
    inbox: Uuid,
    mut policy: dto::PutSlaPolicy,
) -> Result<dto::SlaPolicy, ApiError> {
    policy.name = policy.name.trim().to_owned();
    validate_policy(&policy)?;
    let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
    let id = load_policy(&mut tx, ctx.tenant(), inbox)
        .await?
        .map_or_else(Uuid::now_v7, |(id, _)| id);
    let json = serde_json::to_string(&policy).map_err(|e| ApiError::internal(&e))?;
    let now = micros(OffsetDateTime::now_utc());
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO routing_sla_policies (tenant_id, inbox_id, policy_id, policy, updated_us) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, inbox_id) DO UPDATE SET \
           policy = excluded.policy, updated_us = excluded.updated_us"
    )
    .bind(ctx.tenant().0)
    .bind(inbox)
    .bind(id)
    .bind(json)
    .bind(now)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(dto::SlaPolicy {
        id,
        inbox_id: inbox,
        policy,
    })
}

/// Removes the inbox's SLA policy: no new clocks start (running ones finish).
#[utoipa::path(delete, path = "/v1/inboxes/{inbox_id}/sla-policy", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    responses((status = 204),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_sla_policy(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Admin).await?;
    let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
    let n = on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM routing_sla_policies WHERE tenant_id = $1 AND inbox_id = $2"
    )
    .bind(ctx.tenant().0)
    .bind(inbox)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    tx.commit().await?;
    if n == 0 {
        return Err(ApiError::not_found().with_detail("this inbox has no SLA policy"));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// The inbox's timer settings (escalation, auto-close); absent sections are off.
#[utoipa::path(get, path = "/v1/inboxes/{inbox_id}/automation", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    responses((status = 200, body = dto::Automation),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_automation(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Read).await?;
    let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), false).await?;
    let a = load_automation(&mut tx, ctx.tenant(), inbox).await?;
    Ok(HttpResponse::Ok().json(a))
}

fn validate_automation(a: &dto::Automation) -> Result<(), ApiError> {
    let invalid = |d: &str| ApiError::unprocessable("invalid_automation", d.to_owned());
    if let Some(e) = &a.escalate {
        if !(1..=8760).contains(&e.after_hours) {
            return Err(invalid("escalate.after_hours must be between 1 and 8760"));
        }
        if e.set_priority
            .as_deref()
            .is_some_and(|p| !["low", "normal", "high", "urgent"].contains(&p))
        {
            return Err(invalid(
                "escalate.set_priority must be low, normal, high or urgent",
            ));
        }
        if e.add_tag.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(invalid("escalate.add_tag must not be empty"));
        }
        if e.set_priority.is_none() && e.add_tag.is_none() && !e.notify {
            return Err(invalid(
                "escalate needs an action: set_priority, add_tag or notify",
            ));
        }
    }
    if let Some(c) = &a.auto_close
        && !(1..=365).contains(&c.after_days)
    {
        return Err(invalid("auto_close.after_days must be between 1 and 365"));
    }
    Ok(())
}

/// Sets the inbox's timer settings (inbox admins); conversations timed from now on follow them.
#[utoipa::path(put, path = "/v1/inboxes/{inbox_id}/automation", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    request_body = dto::Automation,
    responses((status = 200, body = dto::Automation),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_automation(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<dto::Automation>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Admin).await?;
    let a = save_automation(&ctx, inbox, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(a))
}

/// Validates and stores an inbox's timer settings (the caller checked the permission).
pub async fn save_automation(
    ctx: &TenantContext,
    inbox: Uuid,
    a: dto::Automation,
) -> Result<dto::Automation, ApiError> {
    validate_automation(&a)?;
    let json = serde_json::to_string(&a).map_err(|e| ApiError::internal(&e))?;
    let now = micros(OffsetDateTime::now_utc());
    let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO routing_automation (tenant_id, inbox_id, settings, updated_us) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, inbox_id) DO UPDATE SET \
           settings = excluded.settings, updated_us = excluded.updated_us"
    )
    .bind(ctx.tenant().0)
    .bind(inbox)
    .bind(json)
    .bind(now)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(a)
}
