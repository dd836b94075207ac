//! The team's metrics: projections fed from the event log (conversation events, the
//! routing timers' `routing.sla_*` events, the conversation service's agent-activity facts and
//! its draft suggestions), rebuildable by replay ([`rebuild`], run by
//! `postvak admin rebuild-projections`), served at `GET /v1/metrics`.
//!
//! Two tables: `routing_metric_conversations` (one row per conversation: inbox, status,
//! assignee, when it opened, since when the customer waits) and `routing_metric_facts` (one
//! row per measured fact, keyed by the event that produced it, so applying an event twice
//! changes nothing). Durations are measured between the events' own times (`at_us`), in
//! seconds of real time.

use actix_web::{HttpResponse, web};
use async_trait::async_trait;
use postvak_core::access::InboxRole;
use postvak_core::sla::BusinessCalendar;
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::TenantContext;
use postvak_platform::consumer::{EventHandler, HandlerError};
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::http::ApiError;
use postvak_platform::on_tx;
use postvak_platform::store::{EventData, RecordedEvent, StoreError, TenantId, micros};
use postvak_proto::Problem;
use postvak_proto::events::agent_activity as aev;
use postvak_proto::events::conversation as cev;
use postvak_proto::events::draft as dev;
use postvak_proto::events::timers as tev;
use postvak_proto::rest::sla as dto;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;
use utoipa::IntoParams;
use uuid::Uuid;

pub const CONSUMER: &str = "routing-metrics";

/// Fact kinds.
pub const FIRST_RESPONSE: &str = "first_response";
pub const RESOLUTION: &str = "resolution";
pub const REPLY: &str = "reply";
pub const REOPENED: &str = "reopened";
pub const SLA_BREACH: &str = "sla_breach";
pub const SLA_WARNING: &str = "sla_warning";
pub const STALE_REFUSED: &str = "stale_refused";
pub const TEMPLATE_USED: &str = "template_used";
/// A draft provider's suggestion became a draft; `user` = the conversation's assignee then.
pub const SUGGESTION_OFFERED: &str = "suggestion_offered";
/// A reply was sent from a suggested draft; `user` = who sent it, `value` 1 when edited first.
pub const SUGGESTION_ACCEPTED: &str = "suggestion_accepted";
/// The conversation became open-and-unassigned (`value` 1) or stopped being so (0), in the
/// inbox of the row: the history "unassigned at the end of each shift" is read from.
pub const UNASSIGNED: &str = "unassigned";

/// Shift ends counted per query, the latest ones of the period (about 13 months).
const MAX_SHIFT_ENDS: usize = 400;

/// The stream types the metrics are made of.
const STREAMS: [&str; 4] = [
    cev::STREAM_CONVERSATION,
    tev::STREAM_ROUTING_TIMER,
    aev::STREAM_ACTIVITY,
    dev::STREAM_DRAFT_SUGGESTION,
];

/// Feeds the metrics tables from the log.
#[derive(Debug, Default)]
pub struct MetricsProjection;

#[async_trait]
impl EventHandler for MetricsProjection {
    fn name(&self) -> &str {
        CONSUMER
    }

    /// Its writes go through the transaction only: a fetch commits once (ADR 0030).
    fn batch_transactions(&self) -> bool {
        true
    }

    fn stream_types(&self) -> Vec<String> {
        STREAMS.iter().map(|s| (*s).to_owned()).collect()
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        tx.bind_tenant(event.tenant_id).await?;
        apply(tx, event).await.map_err(|e| match e {
            e @ (StoreError::Decode { .. } | StoreError::UnknownEventType { .. }) => {
                HandlerError::Permanent(e.to_string())
            }
            e => HandlerError::Store(e),
        })
    }
}

struct MetricConv {
    inbox_id: Uuid,
    status: String,
    assignee: Option<Uuid>,
    opened_us: i64,
    awaiting_since_us: Option<i64>,
    first_response_us: Option<i64>,
}

async fn load(tx: &mut DbTx, t: TenantId, id: Uuid) -> Result<Option<MetricConv>, StoreError> {
    type Row = (Uuid, String, Option<Uuid>, i64, Option<i64>, Option<i64>);
    let row: Option<Row> = on_tx!(tx, |c| sqlx::query_as(
        "SELECT inbox_id, status, assignee, opened_us, awaiting_since_us, first_response_us \
         FROM routing_metric_conversations WHERE tenant_id = $1 AND conversation_id = $2"
    )
    .bind(t.0)
    .bind(id)
    .fetch_optional(c)
    .await)
    .map_err(db_error)?;
    Ok(row.map(
        |(inbox_id, status, assignee, opened_us, awaiting, first)| MetricConv {
            inbox_id,
            status,
            assignee,
            opened_us,
            awaiting_since_us: awaiting,
            first_response_us: first,
        },
    ))
}

async fn save(tx: &mut DbTx, t: TenantId, id: Uuid, m: &MetricConv) -> Result<(), StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO routing_metric_conversations (tenant_id, conversation_id, inbox_id, status, \
           assignee, opened_us, awaiting_since_us, first_response_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET inbox_id = excluded.inbox_id, \
           status = excluded.status, assignee = excluded.assignee, \
           awaiting_since_us = excluded.awaiting_since_us, \
           first_response_us = excluded.first_response_us"
    )
    .bind(t.0)
    .bind(id)
    .bind(m.inbox_id)
    .bind(&m.status)
    .bind(m.assignee)
    .bind(m.opened_us)
    .bind(m.awaiting_since_us)
    .bind(m.first_response_us)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn fact(
    tx: &mut DbTx,
    t: TenantId,
    event_id: Uuid,
    kind: &str,
    inbox: Uuid,
    conv: Uuid,
    user: Option<Uuid>,
    at_us: i64,
    value: Option<i64>,
) -> Result<(), StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO routing_metric_facts (tenant_id, event_id, kind, inbox_id, conversation_id, \
           user_id, at_us, value) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (tenant_id, event_id, kind) DO NOTHING"
    )
    .bind(t.0)
    .bind(event_id)
    .bind(kind)
    .bind(inbox)
    .bind(conv)
    .bind(user)
    .bind(at_us)
    .bind(value)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    Ok(())
}

fn at_of(event: &RecordedEvent) -> i64 {
    match &event.data {
        EventData::Json(v) => v.get("at_us").and_then(serde_json::Value::as_i64),
        EventData::Shredded => None,
    }
    .unwrap_or_else(|| micros(event.recorded_at))
}

fn secs(us: i64) -> i64 {
    us.div_euclid(1_000_000)
}

impl MetricConv {
    /// Open (or pending) with nobody assigned: what "unassigned" counts.
    fn waiting(&self) -> bool {
        (self.status == "open" || self.status == "pending") && self.assignee.is_none()
    }
}

/// Applies one event to the metrics tables (idempotent).
pub async fn apply(tx: &mut DbTx, event: &RecordedEvent) -> Result<(), StoreError> {
    if matches!(event.data, EventData::Shredded) {
        return Ok(());
    }
    let t = event.tenant_id;
    let at = at_of(event);
    match event.event_type.as_str() {
        tev::SLA_BREACHED | tev::SLA_WARNING => {
            let p: tev::SlaClockEventV1 = event.payload()?;
            let kind = if event.event_type == tev::SLA_BREACHED {
                SLA_BREACH
            } else {
                SLA_WARNING
            };
            let user = load(tx, t, p.conversation_id)
                .await?
                .and_then(|m| m.assignee);
            return fact(
                tx,
                t,
                event.event_id,
                kind,
                p.inbox_id,
                p.conversation_id,
                user,
                p.at_us,
                None,
            )
            .await;
        }
        aev::STALE_WRITE_REFUSED | aev::TEMPLATE_USED => {
            let (kind, conv, user) = if event.event_type == aev::STALE_WRITE_REFUSED {
                let p: aev::StaleWriteRefusedV1 = event.payload()?;
                (STALE_REFUSED, p.conversation_id, p.user_id)
            } else {
                let p: aev::TemplateUsedV1 = event.payload()?;
                (TEMPLATE_USED, p.conversation_id, p.user_id)
            };
            // Counted in the inbox the conversation is in (a fact about an unknown
            // conversation has no inbox to be counted in).
            let Some(m) = load(tx, t, conv).await? else {
                return Ok(());
            };
            return fact(
                tx,
                t,
                event.event_id,
                kind,
                m.inbox_id,
                conv,
                user,
                at,
                None,
            )
            .await;
        }
        dev::DRAFT_SUGGESTED => {
            let p: dev::DraftSuggestedV1 = event.payload()?;
            // Whose conversation it was when the suggestion arrived (events are applied in
            // commit order, so this is the assignee at that moment).
            let user = load(tx, t, p.conversation_id)
                .await?
                .and_then(|m| m.assignee);
            return fact(
                tx,
                t,
                event.event_id,
                SUGGESTION_OFFERED,
                p.inbox_id,
                p.conversation_id,
                user,
                p.at_us,
                None,
            )
            .await;
        }
        dev::SUGGESTION_ACCEPTED => {
            let p: dev::SuggestionAcceptedV1 = event.payload()?;
            return fact(
                tx,
                t,
                event.event_id,
                SUGGESTION_ACCEPTED,
                p.inbox_id,
                p.conversation_id,
                p.by,
                p.at_us,
                Some(i64::from(p.edited)),
            )
            .await;
        }
        _ if event.stream_type != cev::STREAM_CONVERSATION => return Ok(()),
        _ => {}
    }
    let Some(conv) = event
        .stream_id
        .strip_prefix("conv-")
        .and_then(|s| Uuid::parse_str(s).ok())
    else {
        return Ok(());
    };
    if event.event_type == cev::OPENED {
        let p: cev::OpenedV1 = event.payload()?;
        if load(tx, t, conv).await?.is_none() {
            let m = MetricConv {
                inbox_id: p.inbox_id,
                status: "open".into(),
                assignee: None,
                opened_us: p.at_us,
                awaiting_since_us: None,
                first_response_us: None,
            };
            save(tx, t, conv, &m).await?;
            let (id, inbox) = (event.event_id, m.inbox_id);
            fact(tx, t, id, UNASSIGNED, inbox, conv, None, p.at_us, Some(1)).await?;
        }
        return Ok(());
    }
    let Some(mut m) = load(tx, t, conv).await? else {
        return Ok(());
    };
    let (was_waiting, was_in) = (m.waiting(), m.inbox_id);
    match event.event_type.as_str() {
        cev::MESSAGE_RECEIVED => {
            if m.awaiting_since_us.is_none() {
                m.awaiting_since_us = Some(at);
            }
        }
        cev::REPLY_QUEUED => {
            let p: cev::MessageV1 = event.payload()?;
            if m.first_response_us.is_none()
                && let Some(since) = m.awaiting_since_us
            {
                m.first_response_us = Some(at);
                fact(
                    tx,
                    t,
                    event.event_id,
                    FIRST_RESPONSE,
                    m.inbox_id,
                    conv,
                    p.author,
                    at,
                    Some(secs(at - since)),
                )
                .await?;
            }
            m.awaiting_since_us = None;
            fact(
                tx,
                t,
                event.event_id,
                REPLY,
                m.inbox_id,
                conv,
                p.author,
                at,
                None,
            )
            .await?;
        }
        cev::STATUS_CHANGED => {
            let p: cev::StatusChangedV1 = event.payload()?;
            let before = std::mem::replace(&mut m.status, p.status.clone());
            let was_done = before == "closed" || before == "spam";
            match p.status.as_str() {
                "closed" if !was_done => {
                    fact(
                        tx,
                        t,
                        event.event_id,
                        RESOLUTION,
                        m.inbox_id,
                        conv,
                        m.assignee,
                        at,
                        Some(secs(at - m.opened_us)),
                    )
                    .await?;
                }
                "open" | "pending" if was_done => {
                    fact(
                        tx,
                        t,
                        event.event_id,
                        REOPENED,
                        m.inbox_id,
                        conv,
                        m.assignee,
                        at,
                        None,
                    )
                    .await?;
                }
                _ => {}
            }
        }
        cev::ASSIGNED => {
            let p: cev::AssignedV1 = event.payload()?;
            m.assignee = Some(p.assignee);
        }
        cev::UNASSIGNED => m.assignee = None,
        cev::MOVED => {
            let p: cev::MovedV1 = event.payload()?;
            m.inbox_id = p.to_inbox;
        }
        cev::MERGED_INTO => m.status = "closed".into(),
        _ => return Ok(()),
    }
    if m.waiting() != was_waiting || (m.waiting() && m.inbox_id != was_in) {
        let value = i64::from(m.waiting());
        let (id, inbox) = (event.event_id, m.inbox_id);
        fact(tx, t, id, UNASSIGNED, inbox, conv, None, at, Some(value)).await?;
    }
    save(tx, t, conv, &m).await
}

/// Rebuilds one tenant's metrics from its events; returns how many events were applied.
pub async fn rebuild(ctx: &TenantContext) -> Result<u64, StoreError> {
    crate::rebuild_from_log(
        ctx,
        &["routing_metric_facts", "routing_metric_conversations"],
        |t| STREAMS.contains(&t),
        async |tx, event| apply(tx, event).await,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// The API

/// Registers `GET /v1/metrics`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/metrics", web::get().to(get_metrics));
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    pub inbox_id: Option<Uuid>,
    /// Only the team's members (their replies, responses, workload).
    pub team_id: Option<Uuid>,
    /// Only this agent.
    pub user_id: Option<Uuid>,
    /// Period start, Unix seconds (default: `to` − 7 days).
    #[param(minimum = 0, maximum = 253_402_300_799_i64)]
    pub from: Option<i64>,
    /// Period end (exclusive), Unix seconds (default: now).
    #[param(minimum = 0, maximum = 253_402_300_799_i64)]
    pub to: Option<i64>,
}

type FactRow = (String, Uuid, Uuid, Option<Uuid>, i64, Option<i64>);

fn stats(mut values: Vec<i64>) -> dto::DurationStats {
    if values.is_empty() {
        return dto::DurationStats::default();
    }
    values.sort_unstable();
    let n = values.len();
    // Lower median: an actual observed value.
    let p50 = values[(n - 1) / 2];
    #[allow(clippy::cast_precision_loss)]
    let avg = values.iter().sum::<i64>() as f64 / n as f64;
    dto::DurationStats {
        count: n as u64,
        p50_secs: Some(p50),
        avg_secs: Some(avg),
    }
}

/// The team's metrics for a period: first response and resolution times, unassigned now,
/// workload per agent, SLA breaches, reopened, replies per conversation, duplicate replies
/// prevented, template use. Tenant admins see every inbox; others see the inboxes they are
/// members of (`inbox_id` must be one of them).
#[utoipa::path(get, path = "/v1/metrics", tag = "routing", security(("bearer" = [])),
    params(MetricsQuery),
    responses((status = 200, body = dto::Metrics),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn get_metrics(
    dir: web::Data<Directory>,
    auth: Authenticated,
    query: web::Query<MetricsQuery>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    let access = dir.access(&ctx).await?;
    let m = compute(&dir, &ctx, &access, &query.into_inner()).await?;
    Ok(HttpResponse::Ok().json(m))
}

/// The metrics `access` may see (the body of `GET /v1/metrics`).
pub async fn compute(
    dir: &Directory,
    ctx: &TenantContext,
    access: &postvak_directory::identity::Access,
    q: &MetricsQuery,
) -> Result<dto::Metrics, ApiError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // Unix seconds from 1970 to the end of year 9999: anything else is a mistake, not a period.
    const LATEST: i64 = 253_402_300_799;
    if [q.from, q.to]
        .into_iter()
        .flatten()
        .any(|t| !(0..=LATEST).contains(&t))
    {
        return Err(ApiError::unprocessable(
            "invalid_period",
            "from and to are Unix seconds between 1970 and 9999",
        ));
    }
    let to = q.to.unwrap_or(now);
    let from = q.from.unwrap_or_else(|| to.saturating_sub(7 * 86_400));
    if from >= to {
        return Err(ApiError::unprocessable(
            "invalid_period",
            "from must be before to",
        ));
    }
    if let Some(inbox) = q.inbox_id {
        access.require_inbox(inbox, InboxRole::Read)?;
    }
    let users: Option<BTreeSet<Uuid>> = match (q.team_id, q.user_id) {
        (Some(team), user) => {
            let members: BTreeSet<Uuid> =
                dir.get_team(ctx, team).await?.members.into_iter().collect();
            Some(match user {
                Some(u) => members.into_iter().filter(|m| *m == u).collect(),
                None => members,
            })
        }
        (None, Some(u)) => Some([u].into()),
        (None, None) => None,
    };
    let admin = access.administers_tenant();
    let tenant = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(tenant, false).await?;
    let facts: Vec<FactRow> = on_tx!(&mut tx, |c| {
        sqlx::query_as(
        "SELECT kind, inbox_id, conversation_id, user_id, at_us, value FROM routing_metric_facts \
         WHERE tenant_id = $1 AND at_us >= $2 AND at_us < $3"
    )
    .bind(tenant.0)
    .bind(from.saturating_mul(1_000_000))
    .bind(to.saturating_mul(1_000_000))
    .fetch_all(c)
    .await
    })
    .map_err(db_error)?;
    let open: Vec<(Uuid, Option<Uuid>)> = on_tx!(&mut tx, |c| sqlx::query_as(
        "SELECT inbox_id, assignee FROM routing_metric_conversations \
         WHERE tenant_id = $1 AND status IN ('open', 'pending')"
    )
    .bind(tenant.0)
    .fetch_all(c)
    .await)
    .map_err(db_error)?;
    // Open-and-unassigned history of the inbox up to the period's end.
    let history: Vec<(Uuid, Uuid, i64, Option<i64>)> = match q.inbox_id {
        Some(_) if users.is_none() => on_tx!(&mut tx, |c| sqlx::query_as(
            "SELECT conversation_id, inbox_id, at_us, value FROM routing_metric_facts \
             WHERE tenant_id = $1 AND kind = $2 AND at_us <= $3 ORDER BY at_us, event_id"
        )
        .bind(tenant.0)
        .bind(UNASSIGNED)
        .bind(to.saturating_mul(1_000_000))
        .fetch_all(c)
        .await)
        .map_err(db_error)?,
        _ => Vec::new(),
    };
    drop(tx);
    let unassigned_at_end_of_shift = match q.inbox_id {
        Some(inbox) if users.is_none() => {
            let ends = shift_ends(dir, ctx, inbox, from, to.min(now)).await;
            unassigned_at(&history, inbox, &ends)
        }
        _ => Vec::new(),
    };
    let visible = |inbox: &Uuid| {
        q.inbox_id.is_none_or(|i| i == *inbox) && (admin || access.inbox_role(*inbox).is_some())
    };
    let by_user = |u: &Option<Uuid>| match &users {
        None => true,
        Some(set) => u.is_some_and(|u| set.contains(&u)),
    };
    let mut frt = Vec::new();
    let mut resolution = Vec::new();
    let (mut breaches, mut warnings, mut reopened, mut stale, mut templates) = (0, 0, 0, 0, 0);
    let mut replies = 0u64;
    let mut replied_convs = BTreeSet::new();
    let mut replies_by_user: BTreeMap<Uuid, u64> = BTreeMap::new();
    let mut suggestions = dto::SuggestionStats::default();
    let mut accepted_by_user: BTreeMap<Uuid, u64> = BTreeMap::new();
    for (kind, inbox, conv, user, _, value) in facts.iter().filter(|f| visible(&f.1)) {
        let _ = inbox;
        if !by_user(user) {
            continue;
        }
        match kind.as_str() {
            FIRST_RESPONSE => frt.extend(*value),
            RESOLUTION => resolution.extend(*value),
            REPLY => {
                replies += 1;
                replied_convs.insert(*conv);
                if let Some(u) = user {
                    *replies_by_user.entry(*u).or_default() += 1;
                }
            }
            REOPENED => reopened += 1,
            SLA_BREACH => breaches += 1,
            SLA_WARNING => warnings += 1,
            STALE_REFUSED => stale += 1,
            TEMPLATE_USED => templates += 1,
            SUGGESTION_OFFERED => suggestions.suggested += 1,
            SUGGESTION_ACCEPTED => {
                suggestions.accepted += 1;
                if *value != Some(1) {
                    suggestions.accepted_unedited += 1;
                }
                if let Some(u) = user {
                    *accepted_by_user.entry(*u).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let mut open_by_user: BTreeMap<Uuid, u64> = BTreeMap::new();
    let mut unassigned_now = 0;
    for (inbox, assignee) in open.iter().filter(|(i, _)| visible(i)) {
        match assignee {
            None if users.is_none() => unassigned_now += 1,
            None => {}
            Some(u) if by_user(&Some(*u)) => *open_by_user.entry(*u).or_default() += 1,
            Some(_) => {}
        }
        let _ = inbox;
    }
    let agents: BTreeSet<Uuid> = open_by_user
        .keys()
        .chain(replies_by_user.keys())
        .chain(accepted_by_user.keys())
        .copied()
        .collect();
    let workload = agents
        .into_iter()
        .map(|u| dto::AgentWorkload {
            user_id: u,
            open: open_by_user.get(&u).copied().unwrap_or(0),
            replies: replies_by_user.get(&u).copied().unwrap_or(0),
            suggestions_accepted: accepted_by_user.get(&u).copied().unwrap_or(0),
        })
        .collect();
    #[allow(clippy::cast_precision_loss)]
    {
        suggestions.acceptance_rate = (suggestions.suggested > 0)
            .then(|| suggestions.accepted as f64 / suggestions.suggested as f64);
    }
    #[allow(clippy::cast_precision_loss)]
    let replies_per_conversation =
        (!replied_convs.is_empty()).then(|| replies as f64 / replied_convs.len() as f64);
    Ok(dto::Metrics {
        from,
        to,
        first_response: stats(frt),
        resolution: stats(resolution),
        unassigned_now,
        unassigned_at_end_of_shift,
        workload,
        sla_breaches: breaches,
        sla_warnings: warnings,
        reopened,
        replies_per_conversation,
        duplicate_replies_prevented: stale,
        template_uses: templates,
        suggestions,
    })
}

/// The ends of the inbox's business days (its time zone and hours; 24/7 = local midnight) in
/// `from < end ≤ to`, Unix seconds; at most the latest [`MAX_SHIFT_ENDS`].
async fn shift_ends(
    dir: &Directory,
    ctx: &TenantContext,
    inbox: Uuid,
    from: i64,
    to: i64,
) -> Vec<i64> {
    let calendar = match dir.get_inbox(ctx, inbox).await {
        Ok(i) => BusinessCalendar::new(i.timezone.as_deref(), i.business_hours.as_ref(), &[])
            .unwrap_or_else(|_| BusinessCalendar::always_open()),
        Err(_) => BusinessCalendar::always_open(),
    };
    let mut ends = BTreeSet::new();
    // Every 12 hours from the end backwards: each local date is met at least once, DST or not.
    let mut at = to.saturating_add(86_400);
    while at > from.saturating_sub(86_400) && ends.len() <= MAX_SHIFT_ENDS {
        if let Some(end) = calendar.end_of_day(at.saturating_mul(1_000_000)) {
            let end = end.div_euclid(1_000_000);
            if from < end && end <= to {
                ends.insert(end);
            }
        }
        at -= 43_200;
    }
    let skip = ends.len().saturating_sub(MAX_SHIFT_ENDS);
    ends.into_iter().skip(skip).collect()
}

/// How many conversations were open and unassigned in `inbox` at each end (the last fact at or
/// before it decides), from the history sorted by time.
fn unassigned_at(
    history: &[(Uuid, Uuid, i64, Option<i64>)],
    inbox: Uuid,
    ends: &[i64],
) -> Vec<dto::ShiftEnd> {
    let mut state: BTreeMap<Uuid, bool> = BTreeMap::new();
    let mut next = history.iter().peekable();
    ends.iter()
        .map(|&end| {
            let end_us = end.saturating_mul(1_000_000);
            while let Some((conv, in_inbox, _, value)) = next.next_if(|f| f.2 <= end_us) {
                state.insert(*conv, *in_inbox == inbox && *value == Some(1));
            }
            dto::ShiftEnd {
                ended_at: end,
                unassigned: state.values().filter(|w| **w).count() as u64,
            }
        })
        .collect()
}
