//! Durable timers (ADR 0009): snooze wake-ups, escalation of unassigned conversations,
//! auto-close without a customer reply, SLA warnings and breaches.
//!
//! - **Scheduling** happens in a consumer's transaction ([`crate::sla::TimerScheduler`]): the
//!   `routing_timers` row commits with the consumer's processed mark, or not at all.
//! - **Firing** ([`run`]): a due timer is claimed (PostgreSQL: `FOR UPDATE SKIP LOCKED`, held
//!   for the whole fire, so concurrent runners never fire the same timer; SQLite: the one
//!   runner of the one process), its side effect is made (the `conversation.apply` command with
//!   idempotency key = timer id), and then, in one transaction, the fire is recorded
//!   (`routing.timer_fired`, plus `routing.sla_*`, appended to the timer's own stream with
//!   `NoStream`) and the row marked `fired`. A crash anywhere before that commit leaves the
//!   timer `pending`: it fires again, the command answers its stored reply (nothing changes
//!   twice) and the record is written once.

use crate::sla::SlaTimerParams;
use async_trait::async_trait;
use postvak_platform::bus::Bus;
use postvak_platform::cell::Cell;
use postvak_platform::command::{SendCommandError, command_envelope, send_command};
use postvak_platform::db::{Db, DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{
    EventStore, ExpectedVersion, NewEvent, StoreError, StreamRef, TenantId, micros,
};
use postvak_proto::EventMetadata;
use postvak_proto::command::conversation::{
    APPLY, ActionV1, ApplyV1, CauseKindV1, CauseV1, SERVICE,
};
use postvak_proto::events::timers as ev;
use postvak_proto::rest::sla::EscalateSettings;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    SnoozeWake,
    Escalate,
    AutoClose,
    SlaWarning,
    SlaBreach,
}

impl TimerKind {
    pub const ALL: [TimerKind; 5] = [
        TimerKind::SnoozeWake,
        TimerKind::Escalate,
        TimerKind::AutoClose,
        TimerKind::SlaWarning,
        TimerKind::SlaBreach,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SnoozeWake => "snooze_wake",
            Self::Escalate => "escalate",
            Self::AutoClose => "auto_close",
            Self::SlaWarning => "sla_warning",
            Self::SlaBreach => "sla_breach",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A person-readable name, for the command's cause.
    fn title(self) -> &'static str {
        match self {
            Self::SnoozeWake => "snooze wake-up",
            Self::Escalate => "escalation when unassigned",
            Self::AutoClose => "auto-close without a customer reply",
            Self::SlaWarning => "SLA warning",
            Self::SlaBreach => "SLA breach",
        }
    }
}

/// Parameters of an escalation or auto-close timer: the settings in force when it was set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate: Option<EscalateSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_days: Option<i64>,
}

/// A timer to schedule.
#[derive(Debug, Clone)]
pub struct NewTimer {
    pub tenant: TenantId,
    pub conversation_id: Uuid,
    pub kind: TimerKind,
    pub params: serde_json::Value,
    pub due_at_us: i64,
    pub cause_event_id: Option<Uuid>,
}

/// Writes a pending timer in the caller's transaction; returns its id.
pub async fn schedule(tx: &mut DbTx, t: &NewTimer) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    let now = micros(OffsetDateTime::now_utc());
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO routing_timers (timer_id, tenant_id, conversation_id, kind, params, due_at, \
           state, cause_event_id, created_us) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)"
    )
    .bind(id)
    .bind(t.tenant.0)
    .bind(t.conversation_id)
    .bind(t.kind.as_str())
    .bind(t.params.to_string())
    .bind(t.due_at_us)
    .bind(t.cause_event_id)
    .bind(now)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    Ok(id)
}

/// Cancels a conversation's pending timers of the given kinds, in the caller's transaction.
/// A timer being fired right now (PostgreSQL) is locked: this waits for the fire to commit and
/// then finds it no longer pending.
///
/// `spared`: the timer whose own effect the event being handled is (its actor is
/// `timer:<id>`). It stays pending: should its runner have died between the effect and the
/// record, the next runner fires it again (the command answers its stored reply) and records
/// it, instead of the timer ending `cancelled` by its own effect.
pub async fn cancel(
    tx: &mut DbTx,
    tenant: TenantId,
    conversation: Uuid,
    kinds: &[TimerKind],
    spared: Option<Uuid>,
) -> Result<u64, StoreError> {
    const SQL: &str = "UPDATE routing_timers SET state = 'cancelled', done_us = $1 \
         WHERE tenant_id = $2 AND conversation_id = $3 AND kind = $4 AND state = 'pending'";
    const SQL_SPARING: &str = "UPDATE routing_timers SET state = 'cancelled', done_us = $1 \
         WHERE tenant_id = $2 AND conversation_id = $3 AND kind = $4 AND state = 'pending' \
         AND timer_id <> $5";
    let now = micros(OffsetDateTime::now_utc());
    let mut n = 0;
    for kind in kinds {
        n += on_tx!(tx, |c| {
            let q = sqlx::query(if spared.is_some() { SQL_SPARING } else { SQL })
                .bind(now)
                .bind(tenant.0)
                .bind(conversation)
                .bind(kind.as_str());
            let q = match spared {
                Some(id) => q.bind(id),
                None => q,
            };
            q.execute(c).await.map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
    }
    Ok(n)
}

/// The timer an event is the effect of: its actor is the one `CauseV1::actor` gave the
/// command (`timer:<id>`).
pub fn fired_by(event: &postvak_platform::store::RecordedEvent) -> Option<Uuid> {
    event
        .metadata
        .actor
        .as_deref()
        .and_then(|a| a.strip_prefix(CauseKindV1::Timer.as_str()))
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// A pending timer as the runner sees it.
#[derive(Debug, Clone)]
pub struct DueTimer {
    pub timer_id: Uuid,
    pub tenant: TenantId,
    pub conversation_id: Uuid,
    pub kind: TimerKind,
    pub params: serde_json::Value,
    pub due_at_us: i64,
    pub cause_event_id: Option<Uuid>,
}

/// Pending timers due at `now_us`, oldest first.
async fn due_timers(db: &Db, now_us: i64, limit: i64) -> Result<Vec<DueTimer>, StoreError> {
    const SQL: &str = "SELECT timer_id, tenant_id, conversation_id, kind, params, due_at, \
                       cause_event_id FROM routing_timers \
                       WHERE state = 'pending' AND due_at <= $1 ORDER BY due_at LIMIT $2";
    type Row = (Uuid, Uuid, Uuid, String, String, i64, Option<Uuid>);
    let rows: Vec<Row> = match db {
        Db::Postgres(p) => {
            sqlx::query_as(SQL)
                .bind(now_us)
                .bind(limit)
                .fetch_all(p)
                .await
        }
        Db::Sqlite(s) => {
            sqlx::query_as(SQL)
                .bind(now_us)
                .bind(limit)
                .fetch_all(&s.reader)
                .await
        }
    }
    .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .filter_map(|(timer_id, tenant, conv, kind, params, due_at, cause)| {
            Some(DueTimer {
                timer_id,
                tenant: TenantId(tenant),
                conversation_id: conv,
                kind: TimerKind::parse(&kind)?,
                params: serde_json::from_str(&params).unwrap_or(serde_json::Value::Null),
                due_at_us: due_at,
                cause_event_id: cause,
            })
        })
        .collect())
}

/// The earliest pending due time, if any.
async fn next_due(db: &Db) -> Result<Option<i64>, StoreError> {
    const SQL: &str = "SELECT MIN(due_at) FROM routing_timers WHERE state = 'pending'";
    let v: Option<i64> = match db {
        Db::Postgres(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
        Db::Sqlite(s) => sqlx::query_scalar(SQL).fetch_one(&s.reader).await,
    }
    .map_err(db_error)?;
    Ok(v)
}

/// Why a fire did not happen now (the timer stays pending and is tried again).
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    #[error("{0}")]
    Retry(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The side effect of a timer on its conversation: `Ok(outcome)` once the conversation
/// service has decided (`applied`, or the code of its refusal). Must be idempotent under
/// `timer.timer_id` — it is repeated after a crash.
#[async_trait]
pub trait TimerEffect: Send + Sync {
    async fn apply(&self, timer: &DueTimer, actions: Vec<ActionV1>) -> Result<String, FireError>;
}

/// Sends `conversation.apply` over the cell's bus with idempotency key = timer id.
#[derive(Debug)]
pub struct ApplyCommand {
    pub bus: Arc<dyn Bus>,
    pub timeout: Duration,
}

#[async_trait]
impl TimerEffect for ApplyCommand {
    async fn apply(&self, timer: &DueTimer, actions: Vec<ActionV1>) -> Result<String, FireError> {
        let cause = CauseV1 {
            kind: CauseKindV1::Timer,
            id: timer.timer_id,
            name: timer.kind.title().to_owned(),
        };
        let payload = ApplyV1 {
            conversation_id: timer.conversation_id,
            actions,
            trigger_event_id: timer.cause_event_id,
            cause: cause.clone(),
        };
        let envelope = command_envelope(
            timer.tenant,
            timer.timer_id.to_string(),
            Some(cause.actor()),
            &payload,
        )
        .map_err(|e| FireError::Retry(e.to_string()))?;
        match send_command(self.bus.as_ref(), SERVICE, APPLY, &envelope, self.timeout).await {
            Ok(_) => Ok("applied".to_owned()),
            Err(SendCommandError::Rejected(p))
                if matches!(
                    p.code.as_str(),
                    "command_unavailable" | "command_in_progress"
                ) =>
            {
                Err(FireError::Retry(p.code))
            }
            Err(SendCommandError::Rejected(p)) => Ok(p.code),
            Err(e) => Err(FireError::Retry(e.to_string())),
        }
    }
}

/// The actions a timer applies (none for SLA timers: they only record).
fn actions_for(timer: &DueTimer) -> Vec<ActionV1> {
    match timer.kind {
        TimerKind::SnoozeWake => vec![ActionV1::Wake],
        TimerKind::AutoClose => {
            let days = serde_json::from_value::<ActionParams>(timer.params.clone())
                .ok()
                .and_then(|p| p.after_days)
                .unwrap_or(0);
            // No note beside it: on SQLite, a note sealed inside `conversation.apply` waits for
            // the writer connection its own transaction holds (left to the conversation
            // service). The fire's `routing.timer_fired` says why it closed.
            let _ = days;
            vec![ActionV1::SetStatus {
                status: "closed".into(),
            }]
        }
        TimerKind::Escalate => {
            let Some(e) = serde_json::from_value::<ActionParams>(timer.params.clone())
                .ok()
                .and_then(|p| p.escalate)
            else {
                return Vec::new();
            };
            let mut out = Vec::new();
            if let Some(p) = e.set_priority {
                out.push(ActionV1::SetPriority { priority: p });
            }
            if let Some(t) = e.add_tag {
                out.push(ActionV1::AddTag { tag: t });
            }
            if e.notify {
                out.push(ActionV1::Note {
                    body: format!(
                        "Escalated: nobody has been assigned for {} hours.",
                        e.after_hours
                    ),
                });
            }
            out
        }
        TimerKind::SlaWarning | TimerKind::SlaBreach => Vec::new(),
    }
}

/// The timer's stream: one per timer, written once.
pub fn timer_stream(timer_id: Uuid) -> StreamRef {
    StreamRef::new(ev::STREAM_ROUTING_TIMER, format!("timer-{timer_id}"))
}

/// The inbox a conversation is in now, as the timer consumer knows it.
async fn inbox_of(tx: &mut DbTx, tenant: TenantId, conv: Uuid) -> Result<Uuid, StoreError> {
    let v: Option<Uuid> = on_tx!(tx, |c| {
        sqlx::query_scalar(
        "SELECT inbox_id FROM routing_conversations WHERE tenant_id = $1 AND conversation_id = $2"
    )
    .bind(tenant.0)
    .bind(conv)
    .fetch_optional(c)
    .await
    })
    .map_err(db_error)?;
    Ok(v.unwrap_or(Uuid::nil()))
}

/// What happened to one due timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// Fired now, with this outcome.
    Done(String),
    /// Someone else holds it, or it was cancelled or fired meanwhile.
    Skipped,
}

/// Fires one timer exactly once (see the module documentation).
pub async fn fire_one(
    store: &dyn EventStore,
    effect: &dyn TimerEffect,
    timer: &DueTimer,
) -> Result<Fired, FireError> {
    let db = store.db().clone();
    match &db {
        Db::Postgres(_) => {
            let mut tx = db.begin().await?;
            let locked: Option<Uuid> = on_tx!(&mut tx, |c| sqlx::query_scalar(
                "SELECT timer_id FROM routing_timers WHERE timer_id = $1 AND state = 'pending' \
                 FOR UPDATE SKIP LOCKED"
            )
            .bind(timer.timer_id)
            .fetch_optional(c)
            .await)
            .map_err(db_error)?;
            if locked.is_none() {
                return Ok(Fired::Skipped);
            }
            let outcome = effect_of(effect, timer).await?;
            record(store, &mut tx, timer, &outcome, None).await?;
            store.commit_appended(tx).await?;
            Ok(Fired::Done(outcome))
        }
        Db::Sqlite(s) => {
            let read_at = micros(OffsetDateTime::now_utc());
            // One runner per database (the one process of the embedded default): read, act,
            // then mark — the writer can't be held while the conversation service commits.
            let pending: Option<String> = sqlx::query_scalar(
                "SELECT state FROM routing_timers WHERE timer_id = $1 AND state = 'pending'",
            )
            .bind(timer.timer_id)
            .fetch_optional(&s.writer)
            .await
            .map_err(db_error)?;
            if pending.is_none() {
                return Ok(Fired::Skipped);
            }
            let outcome = effect_of(effect, timer).await?;
            let mut tx = db.begin().await?;
            record(store, &mut tx, timer, &outcome, Some(read_at)).await?;
            store.commit_appended(tx).await?;
            Ok(Fired::Done(outcome))
        }
    }
}

async fn effect_of(effect: &dyn TimerEffect, timer: &DueTimer) -> Result<String, FireError> {
    match timer.kind {
        TimerKind::SlaWarning | TimerKind::SlaBreach => Ok("recorded".to_owned()),
        _ => {
            let actions = actions_for(timer);
            if actions.is_empty() {
                return Ok("nothing_to_do".to_owned());
            }
            effect.apply(timer, actions).await
        }
    }
}

/// Appends the fire to the timer's stream and marks the row, in `tx`.
///
/// `read_at` (SQLite, where the row is not locked during the effect): when the runner saw the
/// row pending. A cancellation after that came too late — typically the effect's own event
/// (an auto-close's `closed` cancels the conversation's pending timers): the effect was
/// applied, so the timer fired and is recorded as such. Without this the fire went unrecorded
/// whenever the scheduling consumer handled the effect's event first (the flake under load).
async fn record(
    store: &dyn EventStore,
    tx: &mut DbTx,
    timer: &DueTimer,
    outcome: &str,
    read_at: Option<i64>,
) -> Result<(), StoreError> {
    tx.bind_tenant(timer.tenant).await?;
    let now = micros(OffsetDateTime::now_utc());
    let marked = on_tx!(tx, |c| sqlx::query(
        "UPDATE routing_timers SET state = 'fired', done_us = $1, outcome = $2 \
         WHERE timer_id = $3 AND (state = 'pending' \
           OR (state = 'cancelled' AND $4 IS NOT NULL AND done_us >= $4))"
    )
    .bind(now)
    .bind(outcome)
    .bind(timer.timer_id)
    .bind(read_at)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    if marked == 0 {
        // Fired already, or cancelled before the runner saw it. Nothing to record.
        return Ok(());
    }
    let inbox_id = inbox_of(tx, timer.tenant, timer.conversation_id).await?;
    let meta = EventMetadata {
        actor: Some(format!("timer:{}", timer.timer_id)),
        causation_id: timer.cause_event_id,
        ..EventMetadata::default()
    };
    let mut events = Vec::new();
    if matches!(timer.kind, TimerKind::SlaWarning | TimerKind::SlaBreach)
        && let Ok(p) = serde_json::from_value::<SlaTimerParams>(timer.params.clone())
    {
        let et = if timer.kind == TimerKind::SlaWarning {
            ev::SLA_WARNING
        } else {
            ev::SLA_BREACHED
        };
        let payload = ev::SlaClockEventV1 {
            policy_id: p.policy_id,
            policy_name: p.policy_name,
            conversation_id: timer.conversation_id,
            inbox_id,
            clock: p.clock,
            due_at_us: p.breach_at_us,
            timer_id: timer.timer_id,
            at_us: now,
        };
        events.push(NewEvent::from_payload(et, 1, &payload)?.with_metadata(meta.clone()));
    }
    let fired = ev::TimerFiredV1 {
        timer_id: timer.timer_id,
        kind: timer.kind.as_str().to_owned(),
        conversation_id: timer.conversation_id,
        inbox_id,
        due_at_us: timer.due_at_us,
        outcome: outcome.to_owned(),
        at_us: now,
    };
    events.push(NewEvent::from_payload(ev::TIMER_FIRED, 1, &fired)?.with_metadata(meta));
    store
        .append_in_tx(
            tx,
            timer.tenant,
            &timer_stream(timer.timer_id),
            ExpectedVersion::NoStream,
            events,
        )
        .await?;
    Ok(())
}

/// How the runner runs.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Longest sleep between looks at the table (timers scheduled by another process).
    pub poll: Duration,
    /// Delay before a timer whose effect failed is tried again.
    pub retry: Duration,
    pub batch: i64,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(500),
            retry: Duration::from_secs(5),
            batch: 64,
        }
    }
}

/// Fires due timers of one cell until `cancel` fires.
pub async fn run(
    cell: Arc<Cell>,
    effect: Arc<dyn TimerEffect>,
    options: RunnerOptions,
    cancel: CancellationToken,
) {
    let store = cell.store.clone();
    let db = cell.db().clone();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let now = micros(OffsetDateTime::now_utc());
        let due = match due_timers(&db, now, options.batch).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "timer runner cannot read due timers");
                Vec::new()
            }
        };
        for timer in &due {
            if cancel.is_cancelled() {
                return;
            }
            match fire_one(store.as_ref(), effect.as_ref(), timer).await {
                Ok(Fired::Done(outcome)) => {
                    tracing::info!(timer_id = %timer.timer_id, kind = timer.kind.as_str(), %outcome, "timer fired");
                    metrics::counter!("postvak_routing_timers_fired_total", "kind" => timer.kind.as_str()).increment(1);
                }
                Ok(Fired::Skipped) => {}
                Err(e) => {
                    tracing::warn!(timer_id = %timer.timer_id, error = %e, "timer fire failed; will retry");
                    let later = now + i64::try_from(options.retry.as_micros()).unwrap_or(i64::MAX);
                    if let Err(e) = postpone(&db, timer.timer_id, later).await {
                        tracing::warn!(error = %e, "cannot postpone timer");
                    }
                }
            }
        }
        if !due.is_empty() {
            continue;
        }
        let wait = match next_due(&db).await {
            Ok(Some(at)) => {
                let now = micros(OffsetDateTime::now_utc());
                Duration::from_micros(u64::try_from(at - now).unwrap_or(0)).min(options.poll)
            }
            _ => options.poll,
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn postpone(db: &Db, timer: Uuid, due_at: i64) -> Result<(), StoreError> {
    const SQL: &str =
        "UPDATE routing_timers SET due_at = $1 WHERE timer_id = $2 AND state = 'pending'";
    match db {
        Db::Postgres(p) => sqlx::query(SQL)
            .bind(due_at)
            .bind(timer)
            .execute(p)
            .await
            .map(|_| ()),
        Db::Sqlite(s) => sqlx::query(SQL)
            .bind(due_at)
            .bind(timer)
            .execute(&s.writer)
            .await
            .map(|_| ()),
    }
    .map_err(db_error)
}

/// A timer row, for tests and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerRow {
    pub timer_id: Uuid,
    pub conversation_id: Uuid,
    pub kind: String,
    pub state: String,
    pub due_at_us: i64,
    pub outcome: Option<String>,
}

/// A tenant's timers of one conversation, oldest first.
pub async fn list(
    db: &Db,
    tenant: TenantId,
    conversation: Uuid,
) -> Result<Vec<TimerRow>, StoreError> {
    const SQL: &str = "SELECT timer_id, conversation_id, kind, state, due_at, outcome \
                       FROM routing_timers WHERE tenant_id = $1 AND conversation_id = $2 \
                       ORDER BY created_us, timer_id";
    macro_rules! rows {
        ($pool:expr) => {
            sqlx::query(SQL)
                .bind(tenant.0)
                .bind(conversation)
                .fetch_all($pool)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| {
                            Ok(TimerRow {
                                timer_id: r.try_get(0)?,
                                conversation_id: r.try_get(1)?,
                                kind: r.try_get(2)?,
                                state: r.try_get(3)?,
                                due_at_us: r.try_get(4)?,
                                outcome: r.try_get(5)?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                })
        };
    }
    match db {
        Db::Postgres(p) => rows!(p),
        Db::Sqlite(s) => rows!(&s.writer),
    }
    .map_err(db_error)
}

/// Starts, for one cell, the consumer that schedules timers, the metrics projection and the
/// timer runner (firing through `conversation.apply` on the cell's bus).
pub fn start(cell: Arc<Cell>, cancel: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    for handler in [
        Arc::new(crate::sla::TimerScheduler) as Arc<dyn postvak_platform::consumer::EventHandler>,
        Arc::new(crate::metrics::MetricsProjection),
    ] {
        let (store, bus, cancel) = (cell.store.clone(), cell.bus.clone(), cancel.clone());
        out.push(tokio::spawn(async move {
            postvak_platform::consumer::run_consumer(store, bus, handler, cancel).await;
        }));
    }
    let effect = Arc::new(ApplyCommand {
        bus: cell.bus.clone(),
        timeout: Duration::from_secs(10),
    });
    out.push(tokio::spawn(run(
        cell,
        effect,
        RunnerOptions::default(),
        cancel,
    )));
    out
}
