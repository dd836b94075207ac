//! Rules at work: the consumer that follows conversations and the worker that evaluates an
//! inbox's rules and acts through `conversation.apply`.
//!
//! - The consumer (`routing-rules`) keeps `routing_rule_conversations` (assignee, open, tags,
//!   channel, last customer/agent message: the workload and the facts rules need) and
//!   `routing_message_channels` from conversation and ingest events, and queues
//!   `conversation.opened` (and later inbound messages) in `routing_rule_queue` — through its
//!   own transaction, as every consumer must.
//! - The worker takes a queued event, evaluates the inbox's rules (`postvak_core::routing`)
//!   against the agents' availability and workload, and **records the decision first**: one
//!   append of a `routing.rule_fired` event per fired rule (and `routing.notification_requested`
//!   for notify actions) on the conversation's `decisions-<id>` stream, expected at the
//!   version it read. Then it sends one `conversation.apply` per fired rule with the
//!   idempotency key `rule:<event id>:<rule id>` and the recorded actions. A crash anywhere
//!   repeats the work: the recorded decision is found and sent again with the same key and
//!   payload, so the conversation service answers its stored reply — nothing acts twice.

use crate::rules;
use postvak_core::routing::{
    self as core, Agent, Availability, Decided, Facts, Pool, Strategy, Team, Trigger,
};
use postvak_core::sla::BusinessCalendar;
use postvak_directory::Directory;
use postvak_ingest::Ingestor;
use postvak_platform::bus::Bus;
use postvak_platform::cell::{Cell, Cells, Principal, TenantContext};
use postvak_platform::command::{SendCommandError, command_envelope, send_command};
use postvak_platform::consumer::{EventHandler, HandlerError, WakeAfterCommit};
use postvak_platform::db::{AsConn, Conn, Db, DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{
    EventData, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamRef,
    TenantId,
};
use postvak_proto::EventMetadata;
use postvak_proto::command::conversation::{
    APPLY, ActionV1, ApplyV1, CauseKindV1, CauseV1, SERVICE as CONVERSATION,
};
use postvak_proto::events::contact as kev;
use postvak_proto::events::conversation as cev;
use postvak_proto::events::ingest as iev;
use postvak_proto::events::routing as ev;
use postvak_proto::rest::routing as dto;
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Durable consumer name.
pub const CONSUMER: &str = "routing-rules";
/// How long the worker waits for the conversation service's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) const SERVICE: Principal = Principal::Service { name: "routing" };

pub(crate) fn decisions_stream(conversation: Uuid) -> StreamRef {
    StreamRef::new(ev::STREAM_DECISION, format!("decisions-{conversation}"))
}

pub(crate) fn now_us() -> i64 {
    postvak_platform::store::micros(time::OffsetDateTime::now_utc())
}

// ---------------------------------------------------------------------------------------------
// What assignment sees

/// The agents, teams, pointers and calendar rules are evaluated against.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub pool: Pool,
    pub calendar: Option<BusinessCalendar>,
}

impl Snapshot {
    /// Loads what `rules` may need for `inbox`.
    pub async fn load(
        dir: &Directory,
        ctx: &TenantContext,
        inbox: Uuid,
        rules: &[core::Rule],
    ) -> Result<Self, StoreError> {
        let calendar = match dir.get_inbox(ctx, inbox).await {
            Ok(i) => BusinessCalendar::new(i.timezone.as_deref(), i.business_hours.as_ref(), &[])
                .map_err(
                    |e| tracing::warn!(inbox_id = %inbox, error = %e, "inbox calendar unusable"),
                )
                .ok(),
            Err(e) => {
                tracing::warn!(inbox_id = %inbox, error = %e, "inbox not readable for its calendar");
                None
            }
        };
        let needs_teams = rules.iter().any(|r| {
            r.actions
                .iter()
                .any(|a| matches!(a, core::Action::AssignTeam { .. }))
        });
        let mut teams = BTreeMap::new();
        let mut people: BTreeSet<Uuid> = rules
            .iter()
            .flat_map(|r| r.actions.iter())
            .filter_map(|a| match a {
                core::Action::AssignUser(u) => Some(*u),
                _ => None,
            })
            .collect();
        if needs_teams {
            let listed = dir
                .list_teams(ctx, None)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            for t in listed {
                people.extend(t.members.iter().copied());
                teams.insert(
                    t.id,
                    Team {
                        id: t.id,
                        members: t.members.into_iter().collect(),
                        skills: t.skills.into_iter().collect(),
                    },
                );
            }
        }
        let t = ctx.tenant();
        let mut tx = ctx.cell().read_tx(t).await?;
        let availability = load_availability(&mut tx, t).await?;
        let everyone: Vec<Uuid> = people.iter().copied().collect();
        let open = open_counts(&mut tx, t, &everyone).await?;
        let pointers: Vec<(String, Uuid)> = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT pointer, last_user FROM routing_pointers WHERE tenant_id = $1"
        )
        .bind(t.0)
        .fetch_all(c)
        .await
        .and_then(|rows| rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()))
        .map_err(db_error)?;
        tx.end_read();
        let agents = people
            .into_iter()
            .map(|id| {
                let (availability, capacity) = availability
                    .get(&id)
                    .copied()
                    .unwrap_or((Availability::Online, None));
                (
                    id,
                    Agent {
                        id,
                        availability,
                        capacity,
                        open: open.get(&id).copied().unwrap_or(0),
                    },
                )
            })
            .collect();
        Ok(Self {
            pool: Pool {
                agents,
                teams,
                pointers: pointers.into_iter().collect(),
            },
            calendar,
        })
    }

    pub fn in_business_hours(&self, at_us: i64) -> bool {
        self.calendar.as_ref().is_none_or(|c| c.is_open(at_us))
    }
}

/// `(availability, capacity)` per agent who set one.
pub(crate) async fn load_availability(
    tx: &mut impl AsConn,
    t: TenantId,
) -> Result<BTreeMap<Uuid, (Availability, Option<u32>)>, StoreError> {
    let rows: Vec<(Uuid, String, Option<i64>)> = on_tx!(tx, |c| sqlx::query(
        "SELECT user_id, status, capacity FROM routing_availability WHERE tenant_id = $1"
    )
    .bind(t.0)
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()))
    .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(|(u, s, c)| {
            (
                u,
                (
                    Availability::parse(&s).unwrap_or_default(),
                    c.and_then(|c| u32::try_from(c).ok()),
                ),
            )
        })
        .collect())
}

/// Open conversations assigned to each of `agents` (those with none are left out), from
/// `routing_open_counts`: one row per agent, whatever the agent's workload (ADR 0042).
pub(crate) async fn open_counts(
    tx: &mut impl AsConn,
    t: TenantId,
    agents: &[Uuid],
) -> Result<BTreeMap<Uuid, u32>, StoreError> {
    if agents.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<(Uuid, i64)> = match tx.conn() {
        // One statement text whatever the number of agents.
        Conn::Postgres(c) => {
            sqlx::query_as(
                "SELECT user_id, open FROM routing_open_counts \
                 WHERE tenant_id = $1 AND user_id = ANY($2) AND open > 0",
            )
            .bind(t.0)
            .bind(agents)
            .fetch_all(c)
            .await
        }
        Conn::Sqlite(c) => {
            // Only numbered placeholders go into the text; the ids are bound.
            let list = postvak_platform::db::placeholders(2, agents.len());
            let sql = format!(
                "SELECT user_id, open FROM routing_open_counts \
                 WHERE tenant_id = $1 AND user_id IN ({list}) AND open > 0"
            );
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(t.0);
            for a in agents {
                q = q.bind(*a);
            }
            q.fetch_all(c).await
        }
    }
    .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(|(u, n)| (u, u32::try_from(n).unwrap_or(u32::MAX)))
        .collect())
}

/// Changes of agents' open counts made in one transaction, written together at its end
/// ([`OpenCounts::flush`]) in (tenant, user) order. A transaction thus takes its count rows
/// after every fact row it locks, and in one order, so the consumer's batch and the worker's
/// early assignment never wait for each other's rows in a cycle.
#[derive(Debug, Default)]
pub(crate) struct OpenCounts(BTreeMap<(Uuid, Uuid), i64>);

impl OpenCounts {
    fn add(&mut self, t: TenantId, user: Uuid, by: i64) {
        *self.0.entry((t.0, user)).or_default() += by;
    }

    /// Writes the changes (binding the transaction to each tenant in turn) and forgets them.
    pub(crate) async fn flush(&mut self, tx: &mut DbTx) -> Result<(), StoreError> {
        for ((tenant, user), by) in std::mem::take(&mut self.0) {
            if by == 0 {
                continue;
            }
            tx.bind_tenant(TenantId(tenant)).await?;
            on_tx!(tx, |x| sqlx::query(
                "INSERT INTO routing_open_counts (tenant_id, user_id, open) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id, user_id) DO UPDATE SET open = routing_open_counts.open + excluded.open"
            )
            .bind(tenant)
            .bind(user)
            .bind(by)
            .execute(x)
            .await
            .map(|_| ()))
            .map_err(db_error)?;
        }
        Ok(())
    }
}

/// Sets a conversation's assignee (`Some(..)`) and/or open flag in the rule facts, counting
/// the change of each agent's open conversations into `counts`. The fact row is read locked
/// (PostgreSQL `FOR UPDATE`; SQLite has one writer), so when the worker's early assignment
/// and the consumer's `assigned` event both set it, the second sees the first's value and
/// counts nothing. No fact row (its `opened` not followed yet): nothing to change.
pub(crate) async fn set_fact(
    tx: &mut DbTx,
    t: TenantId,
    conv: Uuid,
    assignee: Option<Option<Uuid>>,
    open: Option<bool>,
    counts: &mut OpenCounts,
) -> Result<(), StoreError> {
    let read = if matches!(tx, DbTx::Postgres(_)) {
        "SELECT assignee, open FROM routing_rule_conversations \
         WHERE tenant_id = $1 AND conversation_id = $2 FOR UPDATE"
    } else {
        "SELECT assignee, open FROM routing_rule_conversations \
         WHERE tenant_id = $1 AND conversation_id = $2"
    };
    let old: Option<(Option<Uuid>, bool)> = on_tx!(tx, |x| sqlx::query_as(read)
        .bind(t.0)
        .bind(conv)
        .fetch_optional(x)
        .await)
    .map_err(db_error)?;
    let Some((old_assignee, old_open)) = old else {
        return Ok(());
    };
    let new = (assignee.unwrap_or(old_assignee), open.unwrap_or(old_open));
    if new == (old_assignee, old_open) {
        return Ok(());
    }
    on_tx!(tx, |x| sqlx::query(
        "UPDATE routing_rule_conversations SET assignee = $3, open = $4 \
         WHERE tenant_id = $1 AND conversation_id = $2"
    )
    .bind(t.0)
    .bind(conv)
    .bind(new.0)
    .bind(new.1)
    .execute(x)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    if let (Some(user), true) = (old_assignee, old_open) {
        counts.add(t, user, -1);
    }
    if let (Some(user), true) = new {
        counts.add(t, user, 1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decisions on the wire

pub fn decided_dto(d: &Decided) -> dto::DecidedAction {
    use dto::DecidedAction as D;
    match d {
        Decided::Assign(u) => D::Assign { user: *u },
        Decided::NoAssignee { team, strategy } => D::NoAssignee {
            team: *team,
            strategy: strategy.as_str().to_owned(),
        },
        Decided::AddTag(t) => D::AddTag { tag: t.clone() },
        Decided::SetPriority(p) => D::SetPriority {
            priority: p.as_str().to_owned(),
        },
        Decided::AddParticipantUser(u) => D::AddParticipantUser { user: *u },
        Decided::AddParticipantInbox(i) => D::AddParticipantInbox { inbox: *i },
        Decided::AutoReply(t) => D::AutoReply { template_id: *t },
        Decided::Close => D::Close,
        Decided::Notify { users, message } => D::Notify {
            users: users.clone(),
            message: message.clone(),
        },
    }
}

pub fn fired_dto(f: &core::Fired) -> dto::FiredRule {
    dto::FiredRule {
        rule_id: f.rule_id,
        name: f.rule_name.clone(),
        actions: f.actions.iter().map(decided_dto).collect(),
    }
}

/// The `conversation.apply` actions of a recorded decision (notify and "nobody available" are
/// not conversation changes).
pub fn apply_actions(actions: &[dto::DecidedAction]) -> Vec<ActionV1> {
    use dto::DecidedAction as D;
    actions
        .iter()
        .filter_map(|a| {
            Some(match a {
                D::Assign { user } => ActionV1::Assign { user: *user },
                D::AddTag { tag } => ActionV1::AddTag { tag: tag.clone() },
                D::SetPriority { priority } => ActionV1::SetPriority {
                    priority: priority.clone(),
                },
                D::AddParticipantUser { user } => ActionV1::AddParticipantUser { user: *user },
                D::AddParticipantInbox { inbox } => ActionV1::AddParticipantInbox { inbox: *inbox },
                D::AutoReply { template_id } => ActionV1::AutoReply {
                    template_id: *template_id,
                },
                D::Close => ActionV1::SetStatus {
                    status: "closed".into(),
                },
                D::NoAssignee { .. } | D::Notify { .. } => return None,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The consumer

pub(crate) struct RuleConsumer {
    pub(crate) wake: WakeAfterCommit,
    /// For the blind indexes of VIP contacts' addresses.
    pub(crate) store: Arc<dyn EventStore>,
}

#[async_trait::async_trait]
impl EventHandler for RuleConsumer {
    fn name(&self) -> &str {
        CONSUMER
    }

    fn stream_types(&self) -> Vec<String> {
        // Contacts too: in the same commit order as the mail that rules are evaluated for,
        // so a VIP mark committed before a mail arrived is known when its rules run.
        vec![
            cev::STREAM_CONVERSATION.to_owned(),
            iev::STREAM_INBOUND_MESSAGE.to_owned(),
            kev::STREAM_CONTACT.to_owned(),
        ]
    }

    /// One commit per fetch instead of one per event: this consumer reads every event of the
    /// cell (several stream types), and each commit is a WAL flush.
    fn batch_transactions(&self) -> bool {
        true
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.handle_batch(tx, &[event]).await
    }

    /// Each event in turn, with the open counts' changes written once at the end.
    async fn handle_batch(
        &self,
        tx: &mut DbTx,
        events: &[&RecordedEvent],
    ) -> Result<(), HandlerError> {
        let mut counts = OpenCounts::default();
        for event in events {
            self.apply(tx, event, &mut counts).await?;
        }
        counts.flush(tx).await?;
        Ok(())
    }

    fn committed(&self) {
        self.wake.committed();
    }
}

impl RuleConsumer {
    /// Follows one event into the rule facts; open counts' changes go to `counts`.
    async fn apply(
        &self,
        tx: &mut DbTx,
        event: &RecordedEvent,
        counts: &mut OpenCounts,
    ) -> Result<(), HandlerError> {
        if matches!(event.data, EventData::Shredded) {
            return Ok(());
        }
        tx.bind_tenant(event.tenant_id).await?;
        if event.stream_type == kev::STREAM_CONTACT {
            crate::vip::follow(tx, self.store.keyring(), event).await?;
            return Ok(());
        }
        if follow(tx, event, counts).await? {
            self.wake.queued();
        }
        Ok(())
    }
}

fn conversation_of(stream_id: &str) -> Option<Uuid> {
    stream_id.strip_prefix("conv-").and_then(|s| s.parse().ok())
}

/// Applies one event to the rule facts; `true` when it queued work for the worker.
async fn follow(
    tx: &mut DbTx,
    e: &RecordedEvent,
    counts: &mut OpenCounts,
) -> Result<bool, StoreError> {
    let t = e.tenant_id;
    if e.event_type == iev::MESSAGE_RECEIVED {
        let p: iev::MessageReceivedV1 = e.payload()?;
        on_tx!(tx, |x| sqlx::query(
            "INSERT INTO routing_message_channels (tenant_id, message_id, channel) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, message_id) DO NOTHING"
        )
        .bind(t.0)
        .bind(p.message_id)
        .bind(&p.source)
        .execute(x)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        return Ok(false);
    }
    let Some(conv) = conversation_of(&e.stream_id) else {
        return Ok(false);
    };
    match e.event_type.as_str() {
        cev::OPENED => {
            let p: cev::OpenedV1 = e.payload()?;
            let channel = (p.origin == "agent").then_some("agent");
            on_tx!(tx, |x| sqlx::query(
                "INSERT INTO routing_rule_conversations (tenant_id, conversation_id, inbox_id, assignee, open, tags, channel) \
                 VALUES ($1, $2, $3, NULL, $4, '[]', $5) ON CONFLICT (tenant_id, conversation_id) DO NOTHING"
            )
            .bind(t.0)
            .bind(conv)
            .bind(p.inbox_id)
            .bind(true)
            .bind(channel)
            .execute(x)
            .await
            .map(|_| ()))
            .map_err(db_error)?;
            enqueue(tx, e, conv, p.inbox_id, Trigger::Opened, None).await?;
            return Ok(true);
        }
        cev::MESSAGE_RECEIVED => {
            let p: cev::MessageV1 = e.payload()?;
            on_tx!(tx, |x| sqlx::query(
                "UPDATE routing_rule_conversations SET last_customer_us = $3, \
                 channel = COALESCE(channel, (SELECT m.channel FROM routing_message_channels m \
                   WHERE m.tenant_id = $1 AND m.message_id = $4)) \
                 WHERE tenant_id = $1 AND conversation_id = $2"
            )
            .bind(t.0)
            .bind(conv)
            .bind(p.at_us)
            .bind(p.message_id)
            .execute(x)
            .await
            .map(|_| ()))
            .map_err(db_error)?;
            // The message that opened the conversation was queued with `opened`.
            if e.stream_version > 2 {
                enqueue(
                    tx,
                    e,
                    conv,
                    p.inbox_id,
                    Trigger::Message,
                    Some(p.message_id),
                )
                .await?;
                return Ok(true);
            }
        }
        cev::REPLY_QUEUED => {
            let p: cev::MessageV1 = e.payload()?;
            set_i64(tx, t, conv, "UPDATE routing_rule_conversations SET last_agent_us = $3 WHERE tenant_id = $1 AND conversation_id = $2", p.at_us).await?;
        }
        cev::ASSIGNED => {
            let p: cev::AssignedV1 = e.payload()?;
            set_fact(tx, t, conv, Some(Some(p.assignee)), None, counts).await?;
        }
        cev::UNASSIGNED => set_fact(tx, t, conv, Some(None), None, counts).await?,
        cev::STATUS_CHANGED => {
            let p: cev::StatusChangedV1 = e.payload()?;
            let open = matches!(p.status.as_str(), "open" | "pending");
            set_fact(tx, t, conv, None, Some(open), counts).await?;
        }
        cev::MERGED_INTO => set_fact(tx, t, conv, None, Some(false), counts).await?,
        cev::MOVED => {
            let p: cev::MovedV1 = e.payload()?;
            on_tx!(tx, |x| sqlx::query(
                "UPDATE routing_rule_conversations SET inbox_id = $3 WHERE tenant_id = $1 AND conversation_id = $2"
            )
            .bind(t.0)
            .bind(conv)
            .bind(p.to_inbox)
            .execute(x)
            .await
            .map(|_| ()))
            .map_err(db_error)?;
        }
        cev::TAGGED | cev::UNTAGGED => {
            let p: cev::TagV1 = e.payload()?;
            let current: Option<String> = on_tx!(tx, |x| sqlx::query(
                "SELECT tags FROM routing_rule_conversations WHERE tenant_id = $1 AND conversation_id = $2"
            )
            .bind(t.0)
            .bind(conv)
            .fetch_optional(x)
            .await
            .and_then(|r| r.map(|r| r.try_get(0)).transpose()))
            .map_err(db_error)?;
            let Some(current) = current else {
                return Ok(false);
            };
            let mut tags: BTreeSet<String> = serde_json::from_str(&current).unwrap_or_default();
            if e.event_type == cev::TAGGED {
                tags.insert(p.tag);
            } else {
                tags.remove(&p.tag);
            }
            let json = serde_json::to_string(&tags)
                .map_err(|e| StoreError::Serialization(e.to_string()))?;
            on_tx!(tx, |x| sqlx::query(
                "UPDATE routing_rule_conversations SET tags = $3 WHERE tenant_id = $1 AND conversation_id = $2"
            )
            .bind(t.0)
            .bind(conv)
            .bind(json)
            .execute(x)
            .await
            .map(|_| ()))
            .map_err(db_error)?;
        }
        _ => {}
    }
    Ok(false)
}

async fn set_i64(
    tx: &mut DbTx,
    t: TenantId,
    conv: Uuid,
    q: &'static str,
    v: i64,
) -> Result<(), StoreError> {
    on_tx!(tx, |x| sqlx::query(q)
        .bind(t.0)
        .bind(conv)
        .bind(v)
        .execute(x)
        .await
        .map(|_| ()))
    .map_err(db_error)
}

async fn enqueue(
    tx: &mut DbTx,
    e: &RecordedEvent,
    conv: Uuid,
    inbox: Uuid,
    trigger: Trigger,
    message: Option<Uuid>,
) -> Result<(), StoreError> {
    let trigger = match trigger {
        Trigger::Opened => "opened",
        Trigger::Message => "message",
    };
    on_tx!(tx, |x| sqlx::query(
        "INSERT INTO routing_rule_queue (event_id, tenant_id, conversation_id, inbox_id, trigger, message_id, queued_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING"
    )
    .bind(e.event_id)
    .bind(e.tenant_id.0)
    .bind(conv)
    .bind(inbox)
    .bind(trigger)
    .bind(message)
    .bind(now_us())
    .execute(x)
    .await
    .map(|_| ()))
    .map_err(db_error)
}

// ---------------------------------------------------------------------------------------------
// The worker

#[derive(Debug, Clone)]
struct Queued {
    event_id: Uuid,
    tenant: TenantId,
    conversation: Uuid,
    inbox: Uuid,
    trigger: Trigger,
    message: Option<Uuid>,
}

async fn next_batch(db: &Db) -> Result<Vec<Queued>, StoreError> {
    const SQL: &str = "SELECT event_id, tenant_id, conversation_id, inbox_id, trigger, message_id FROM routing_rule_queue \
                       ORDER BY queued_at, event_id LIMIT 64";
    // One statement on its own: no transaction around a single read.
    let rows: Vec<(Uuid, Uuid, Uuid, Uuid, String, Option<Uuid>)> = match db {
        Db::Postgres(p) => sqlx::query_as(SQL).fetch_all(p).await,
        Db::Sqlite(s) => sqlx::query_as(SQL).fetch_all(&s.writer).await,
    }
    .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(
            |(event_id, tenant, conversation, inbox, trigger, message)| Queued {
                event_id,
                tenant: TenantId(tenant),
                conversation,
                inbox,
                trigger: if trigger == "message" {
                    Trigger::Message
                } else {
                    Trigger::Opened
                },
                message,
            },
        )
        .collect())
}

/// Removes the handled triggers from the queue: one statement for the whole batch.
async fn finish_handled(db: &Db, handled: &[Uuid]) -> Result<(), StoreError> {
    if handled.is_empty() {
        return Ok(());
    }
    match db {
        Db::Postgres(p) => sqlx::query("DELETE FROM routing_rule_queue WHERE event_id = ANY($1)")
            .bind(handled)
            .execute(p)
            .await
            .map(|_| ()),
        Db::Sqlite(s) => {
            // Only numbered placeholders go into the text; the ids are bound.
            let list = postvak_platform::db::placeholders(1, handled.len());
            let sql = format!("DELETE FROM routing_rule_queue WHERE event_id IN ({list})");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in handled {
                q = q.bind(*id);
            }
            q.execute(&s.writer).await.map(|_| ())
        }
    }
    .map_err(db_error)
}

/// Records why a trigger was not handled; it stays queued for the next round.
async fn finish_failed(db: &Db, event_id: Uuid, error: &str) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE routing_rule_queue SET attempts = attempts + 1, last_error = $1 WHERE event_id = $2"
    )
    .bind(error)
    .bind(event_id)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

/// Evaluates rules for queued events until `cancel` fires.
pub(crate) async fn run_worker(
    cells: Cells,
    cell: Arc<Cell>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let worker = Worker {
        directory: Directory::new(cells.clone()),
        ingestor: Ingestor::new(cells.clone()),
        cells,
        bus: cell.bus.clone(),
    };
    let db = cell.db().clone();
    let parallel = match db {
        Db::Postgres(_) => DECIDE_CONCURRENCY,
        Db::Sqlite(_) => 1,
    };
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let mut failing = false;
        match next_batch(&db).await {
            Ok(batch) => {
                let handled = batch.len();
                let decided = worker.decide_batch(batch, parallel).await;
                if cancel.is_cancelled() {
                    return;
                }
                let mut done = Vec::with_capacity(handled);
                for (event_id, outcome) in worker.send_all(decided).await {
                    match outcome {
                        Ok(()) => done.push(event_id),
                        Err(e) => {
                            failing = true;
                            tracing::warn!(%event_id, error = %e, "rules not applied yet; retrying");
                            if let Err(e) = finish_failed(&db, event_id, &e.to_string()).await {
                                tracing::warn!(error = %e, "cannot update the rule queue");
                            }
                        }
                    }
                }
                if let Err(e) = finish_handled(&db, &done).await {
                    tracing::warn!(error = %e, "cannot update the rule queue");
                    failing = true;
                }
                if handled > 0 && !failing {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the rule queue");
                failing = true;
            }
        }
        let pause = if failing {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

pub(crate) struct Worker {
    pub(crate) cells: Cells,
    pub(crate) directory: Directory,
    pub(crate) ingestor: Ingestor,
    pub(crate) bus: Arc<dyn Bus>,
}

/// `(assignee, tags, channel, last customer message, last agent message)` of a conversation.
type FactsRow = (
    Option<Uuid>,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// A recorded decision: one fired rule.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) rule_id: Uuid,
    pub(crate) rule_name: String,
    pub(crate) actions: Vec<dto::DecidedAction>,
}

/// What to send for one queued trigger: `None` when no rule fired.
type Decisions = Result<Option<(TenantContext, Vec<Recorded>)>, WorkError>;

/// Conversations whose decisions are sent at the same time.
const SEND_CONCURRENCY: usize = 16;

/// Reads (and records) of a batch's decisions at the same time, on PostgreSQL.
const DECIDE_CONCURRENCY: usize = 16;

/// An inbox's rules and what they are evaluated against, for one batch.
struct InboxRules {
    rules: Vec<core::Rule>,
    snapshot: Snapshot,
    /// The snapshot's pool, moved by this batch's assignments.
    pool: Pool,
    reads_body: bool,
    asks_vip: bool,
}

impl InboxRules {
    /// `None`: the inbox has no rules.
    async fn load(
        dir: &Directory,
        ctx: &TenantContext,
        inbox: Uuid,
    ) -> Result<Option<Self>, StoreError> {
        let rules = rules::load_core(ctx, inbox).await?;
        if rules.is_empty() {
            return Ok(None);
        }
        let snapshot = Snapshot::load(dir, ctx, inbox, &rules).await?;
        let reads_body = rules
            .iter()
            .any(|r| r.conditions.iter().any(core::Condition::reads_body));
        let asks_vip = rules
            .iter()
            .any(|r| r.conditions.contains(&core::Condition::VipContact));
        Ok(Some(Self {
            pool: snapshot.pool.clone(),
            rules,
            snapshot,
            reads_body,
            asks_vip,
        }))
    }

    /// Writes the pointers this batch moved, in one transaction.
    async fn save_pointers(&self, ctx: &TenantContext) -> Result<(), StoreError> {
        let moved: Vec<(&String, &Uuid)> = self
            .pool
            .pointers
            .iter()
            .filter(|(k, u)| self.snapshot.pool.pointers.get(*k) != Some(*u))
            .collect();
        if moved.is_empty() {
            return Ok(());
        }
        let t = ctx.tenant();
        let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
        for (key, user) in moved {
            save_pointer(&mut tx, t, key, *user).await?;
        }
        tx.commit().await
    }
}

/// A trigger's reads, before evaluation.
enum Read {
    Recorded(Vec<Recorded>),
    NoRules,
    Facts(Box<Facts>, bool),
}

/// A trigger after evaluation, before its record.
enum Evaluated {
    Recorded(Vec<Recorded>),
    Nothing,
    Fired(Vec<core::Fired>),
}

async fn save_pointer(tx: &mut DbTx, t: TenantId, key: &str, user: Uuid) -> Result<(), StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO routing_pointers (tenant_id, pointer, last_user) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id, pointer) DO UPDATE SET last_user = excluded.last_user"
    )
    .bind(t.0)
    .bind(key)
    .bind(user)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)
}

impl Worker {
    /// Sends decided actions: a conversation's in queue order, different conversations' at
    /// the same time (each `conversation.apply` is a round trip and a commit in the
    /// conversation service). Returns each trigger's outcome.
    async fn send_all(
        &self,
        decided: Vec<(Queued, Decisions)>,
    ) -> Vec<(Uuid, Result<(), WorkError>)> {
        use futures::StreamExt as _;
        let groups =
            postvak_core::batch::group_in_order(decided, |(q, _)| Some((q.tenant, q.conversation)));
        futures::stream::iter(groups)
            .map(|group| async move {
                let mut out = Vec::with_capacity(group.len());
                for (q, d) in group {
                    let outcome = match d {
                        Err(e) => Err(e),
                        Ok(None) => Ok(()),
                        Ok(Some((ctx, recorded))) => {
                            self.send(&ctx, q.conversation, q.event_id, &recorded).await
                        }
                    };
                    out.push((q.event_id, outcome));
                }
                out
            })
            .buffer_unordered(SEND_CONCURRENCY)
            .flat_map(futures::stream::iter)
            .collect()
            .await
    }

    /// Decisions already recorded for `trigger` (a repeat after a crash or a retry).
    pub(crate) async fn recorded(
        &self,
        ctx: &TenantContext,
        conversation: Uuid,
        trigger: Uuid,
    ) -> Result<Option<Vec<Recorded>>, StoreError> {
        let events = ctx.read_stream(&decisions_stream(conversation)).await?;
        let mut out = Vec::new();
        for e in &events {
            if e.event_type == ev::RULE_FIRED {
                let p: ev::RuleFiredV1 = e.payload()?;
                if p.trigger_event_id == trigger {
                    out.push(Recorded {
                        rule_id: p.rule_id,
                        rule_name: p.rule_name,
                        actions: p.actions,
                    });
                }
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// The conversation's facts for this trigger.
    async fn facts(
        &self,
        ctx: &TenantContext,
        q: &Queued,
        snapshot: &Snapshot,
        reads_body: bool,
    ) -> Result<(Facts, bool), StoreError> {
        let t = ctx.tenant();
        let mut tx = ctx.cell().read_tx(t).await?;
        let row: Option<FactsRow> =
            on_tx!(&mut tx, |c| sqlx::query(
                "SELECT assignee, tags, channel, last_customer_us, last_agent_us FROM routing_rule_conversations \
                 WHERE tenant_id = $1 AND conversation_id = $2"
            )
            .bind(t.0)
            .bind(q.conversation)
            .fetch_optional(c)
            .await
            .and_then(|r| r
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
                .transpose()))
            .map_err(db_error)?;
        tx.end_read();
        let (assignee, tags, channel, last_customer_us, last_agent_us) =
            row.unwrap_or((None, "[]".into(), None, None, None));
        let now = now_us();
        let mut facts = Facts {
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            channel: channel.as_deref().and_then(core::Channel::parse),
            in_business_hours: snapshot.in_business_hours(now),
            now_us: now,
            last_customer_us,
            last_agent_us,
            ..Facts::default()
        };
        // The message: the one named, or the first of the conversation.
        let conv = ctx
            .read_stream(&StreamRef::new(
                cev::STREAM_CONVERSATION,
                format!("conv-{}", q.conversation),
            ))
            .await?;
        let message = conv
            .iter()
            .filter(|e| e.event_type == cev::MESSAGE_RECEIVED)
            .filter_map(|e| e.payload::<cev::MessageV1>().ok())
            .find(|m| q.message.is_none_or(|id| id == m.message_id));
        if let Some(m) = message {
            facts.from = m.from.first().map(|b| b.address.to_lowercase());
            facts.recipients =
                m.to.iter()
                    .chain(&m.cc)
                    .map(|b| b.address.to_lowercase())
                    .collect();
            facts.subject = m.subject.clone().unwrap_or_default();
            facts.body = match m.text_blob {
                // The body is in a sealed blob of up to 50 KB: read only for a rule on it.
                Some(_) if !reads_body => String::new(),
                Some(blob) => match self.ingestor.read_blob(ctx, blob).await {
                    Ok(Some(bytes)) => {
                        let mut s = String::from_utf8_lossy(&bytes).into_owned();
                        if s.len() > 64 * 1024 {
                            let mut cut = 64 * 1024;
                            while !s.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            s.truncate(cut);
                        }
                        s
                    }
                    _ => m.snippet.clone(),
                },
                None => m.body_text.clone().unwrap_or_else(|| m.snippet.clone()),
            };
            if q.trigger == Trigger::Message {
                facts.last_customer_us = last_customer_us.or(Some(m.at_us));
            }
        }
        Ok((facts, assignee.is_some()))
    }

    /// The decisions for a batch of queued triggers, in queue order: those already recorded
    /// (a repeat after a crash or a retry), or the rules evaluated and recorded now.
    ///
    /// What does not depend on other decisions is read `parallel` at a time: each inbox's
    /// rules and snapshot (agents, workloads, pointers, calendar) once per batch, then each
    /// trigger's recorded decisions and facts. The rules are then evaluated one trigger after
    /// the other in queue order against the inbox's pool, which each assignment moves (its
    /// round-robin pointer, the agent's workload), exactly as reloading it before every
    /// trigger did. The decisions are recorded `parallel` conversations at a time (one
    /// conversation's in order), and the moved pointers written once at the end.
    async fn decide_batch(&self, batch: Vec<Queued>, parallel: usize) -> Vec<(Queued, Decisions)> {
        use futures::StreamExt as _;
        let failed = |e: &dyn std::fmt::Display| WorkError::Other(e.to_string());
        // One context per tenant, one set of rules and snapshot per inbox.
        let mut contexts: HashMap<TenantId, Result<TenantContext, String>> = HashMap::new();
        for t in batch.iter().map(|q| q.tenant).collect::<BTreeSet<_>>() {
            let ctx = self
                .cells
                .context(t, SERVICE)
                .await
                .map_err(|e| e.to_string());
            contexts.insert(t, ctx);
        }
        let inboxes: BTreeSet<(TenantId, Uuid)> =
            batch.iter().map(|q| (q.tenant, q.inbox)).collect();
        let contexts = &contexts;
        let mut inboxes: HashMap<(TenantId, Uuid), Result<Option<InboxRules>, String>> =
            futures::stream::iter(inboxes)
                .map(|(t, inbox)| async move {
                    let loaded = match &contexts[&t] {
                        Ok(ctx) => InboxRules::load(&self.directory, ctx, inbox)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.clone()),
                    };
                    ((t, inbox), loaded)
                })
                .buffer_unordered(parallel)
                .collect()
                .await;
        // Each trigger's recorded decisions, or its facts.
        let inboxes_read = &inboxes;
        let batch_read = &batch;
        let read: Vec<Result<Read, WorkError>> = futures::stream::iter(0..batch.len())
            .map(|i| async move {
                let q = &batch_read[i];
                let ctx = contexts[&q.tenant].as_ref().map_err(|e| failed(e))?;
                if let Some(r) = self.recorded(ctx, q.conversation, q.event_id).await? {
                    return Ok(Read::Recorded(r));
                }
                let Some(inbox) = inboxes_read[&(q.tenant, q.inbox)]
                    .as_ref()
                    .map_err(|e| failed(e))?
                else {
                    return Ok(Read::NoRules);
                };
                let (mut facts, assigned) = self
                    .facts(ctx, q, &inbox.snapshot, inbox.reads_body)
                    .await?;
                if inbox.asks_vip
                    && let Some(from) = &facts.from
                {
                    facts.sender_is_vip_contact = crate::vip::is_vip_contact(ctx, from).await?;
                }
                Ok(Read::Facts(Box::new(facts), assigned))
            })
            .buffered(parallel)
            .collect()
            .await;
        // Evaluation, in queue order, against each inbox's pool as it moves.
        let mut assigned_now: BTreeSet<(TenantId, Uuid)> = BTreeSet::new();
        let mut evaluated: Vec<Result<Evaluated, WorkError>> = Vec::with_capacity(batch.len());
        for (q, r) in batch.iter().zip(read) {
            evaluated.push(r.map(|r| match r {
                Read::Recorded(r) => Evaluated::Recorded(r),
                Read::NoRules => Evaluated::Nothing,
                Read::Facts(facts, assigned) => {
                    let Some(Ok(Some(inbox))) = inboxes.get_mut(&(q.tenant, q.inbox)) else {
                        return Evaluated::Nothing;
                    };
                    // An assignment decided earlier in this batch counts, as it did when
                    // every trigger read the conversation's row after the last one's record.
                    let assigned = assigned || assigned_now.contains(&(q.tenant, q.conversation));
                    let fired =
                        core::evaluate(&inbox.rules, q.trigger, &facts, &mut inbox.pool, assigned);
                    if fired
                        .iter()
                        .any(|f| f.actions.iter().any(|a| matches!(a, Decided::Assign(_))))
                    {
                        assigned_now.insert((q.tenant, q.conversation));
                    }
                    if fired.is_empty() {
                        Evaluated::Nothing
                    } else {
                        Evaluated::Fired(fired)
                    }
                }
            }));
        }
        // Records, one conversation's in order, `parallel` conversations at once.
        let groups = postvak_core::batch::group_in_order(0..batch.len(), |i| {
            Some((batch[*i].tenant, batch[*i].conversation))
        });
        let (batch_ref, evaluated_ref, inboxes_ref) = (&batch, &evaluated, &inboxes);
        let mut decisions: Vec<(usize, Decisions)> = futures::stream::iter(groups)
            .map(|group| async move {
                let mut out = Vec::with_capacity(group.len());
                for i in group {
                    let q = &batch_ref[i];
                    let d = match &evaluated_ref[i] {
                        Err(e) => Err(failed(e)),
                        Ok(Evaluated::Nothing) => Ok(None),
                        Ok(e) => match contexts[&q.tenant].as_ref() {
                            Err(e) => Err(failed(e)),
                            Ok(ctx) => match e {
                                Evaluated::Recorded(r) => Ok(Some((ctx.clone(), r.clone()))),
                                Evaluated::Fired(fired) => {
                                    let rules = match inboxes_ref.get(&(q.tenant, q.inbox)) {
                                        Some(Ok(Some(inbox))) => inbox.rules.as_slice(),
                                        _ => &[],
                                    };
                                    let trigger = match q.trigger {
                                        Trigger::Opened => "opened",
                                        Trigger::Message => "message",
                                    };
                                    self.record(
                                        ctx,
                                        q.conversation,
                                        q.inbox,
                                        q.event_id,
                                        trigger,
                                        fired,
                                        rules,
                                        false,
                                    )
                                    .await
                                    .map(|r| Some((ctx.clone(), r)))
                                }
                                Evaluated::Nothing => Ok(None),
                            },
                        },
                    };
                    out.push((i, d));
                }
                out
            })
            .buffer_unordered(parallel)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        // The round-robin pointers that moved, once each.
        for ((t, _), inbox) in &inboxes {
            let (Ok(Some(inbox)), Ok(ctx)) = (inbox, &contexts[t]) else {
                continue;
            };
            if let Err(e) = inbox.save_pointers(ctx).await {
                tracing::warn!(error = %e, "cannot save the round-robin pointers");
            }
        }
        decisions.sort_by_key(|(i, _)| *i);
        batch
            .into_iter()
            .zip(decisions)
            .map(|(q, (_, d))| (q, d))
            .collect()
    }

    /// Appends the decision (all fired rules at once), notes the assignee, and moves the
    /// round-robin pointers unless `move_pointers` is false (the caller writes them).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record(
        &self,
        ctx: &TenantContext,
        conversation: Uuid,
        inbox: Uuid,
        trigger_event: Uuid,
        trigger: &str,
        fired: &[core::Fired],
        rules: &[core::Rule],
        move_pointers: bool,
    ) -> Result<Vec<Recorded>, WorkError> {
        let stream = decisions_stream(conversation);
        let version = ctx
            .cell()
            .store
            .stream_version(ctx.tenant(), &stream)
            .await?;
        let at_us = now_us();
        let mut events = Vec::new();
        let mut recorded = Vec::new();
        for f in fired {
            let actions: Vec<dto::DecidedAction> = f.actions.iter().map(decided_dto).collect();
            let meta = EventMetadata {
                actor: Some(format!("rule:{}", f.rule_id)),
                causation_id: Some(trigger_event),
                ..EventMetadata::default()
            };
            events.push(
                NewEvent::from_payload(
                    ev::RULE_FIRED,
                    1,
                    &ev::RuleFiredV1 {
                        rule_id: f.rule_id,
                        rule_name: f.rule_name.clone(),
                        inbox_id: inbox,
                        conversation_id: conversation,
                        trigger_event_id: trigger_event,
                        trigger: trigger.to_owned(),
                        actions: actions.clone(),
                        at_us,
                    },
                )?
                .with_metadata(meta.clone()),
            );
            for a in &f.actions {
                if let Decided::Notify { users, message } = a {
                    events.push(
                        NewEvent::from_payload(
                            ev::NOTIFICATION_REQUESTED,
                            1,
                            &ev::NotificationRequestedV1 {
                                rule_id: f.rule_id,
                                inbox_id: inbox,
                                conversation_id: conversation,
                                users: users.clone(),
                                message: message.clone(),
                                at_us,
                            },
                        )?
                        .with_metadata(meta.clone()),
                    );
                }
            }
            recorded.push(Recorded {
                rule_id: f.rule_id,
                rule_name: f.rule_name.clone(),
                actions,
            });
        }
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        match ctx.append(&stream, expected, events).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                // Someone recorded first: theirs is the decision.
                if let Some(r) = self.recorded(ctx, conversation, trigger_event).await? {
                    return Ok(r);
                }
                return Err(WorkError::Other("decision stream moved; retrying".into()));
            }
            Err(e) => return Err(e.into()),
        }
        // Round-robin pointers and the workload see the pick now, not when the assignment
        // comes back as an event.
        let t = ctx.tenant();
        let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
        // The fact and the counts first, the pointers last: a transaction that holds count
        // rows waits only for pointer rows, which the consumer never takes.
        let assigned: Vec<(&core::Fired, Uuid)> = fired
            .iter()
            .filter_map(|f| {
                f.actions.iter().find_map(|a| match a {
                    Decided::Assign(u) => Some((f, *u)),
                    _ => None,
                })
            })
            .collect();
        let mut counts = OpenCounts::default();
        for (_, user) in &assigned {
            set_fact(
                &mut tx,
                t,
                conversation,
                Some(Some(*user)),
                None,
                &mut counts,
            )
            .await?;
        }
        counts.flush(&mut tx).await?;
        if move_pointers {
            for (f, user) in assigned {
                let rule = rules.iter().find(|r| r.id == f.rule_id);
                for a in rule.map(|r| r.actions.as_slice()).unwrap_or_default() {
                    if let core::Action::AssignTeam {
                        team: Some(team),
                        strategy: Strategy::RoundRobin,
                        ..
                    } = a
                    {
                        let key = core::pointer_key(f.rule_id, *team);
                        save_pointer(&mut tx, t, &key, user).await?;
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Sends each recorded decision as `conversation.apply` with its idempotency key.
    pub(crate) async fn send(
        &self,
        ctx: &TenantContext,
        conversation: Uuid,
        trigger_event: Uuid,
        recorded: &[Recorded],
    ) -> Result<(), WorkError> {
        for r in recorded {
            let actions = apply_actions(&r.actions);
            if actions.is_empty() {
                continue;
            }
            let body = ApplyV1 {
                conversation_id: conversation,
                actions,
                cause: CauseV1 {
                    kind: CauseKindV1::Rule,
                    id: r.rule_id,
                    name: r.rule_name.clone(),
                },
                trigger_event_id: Some(trigger_event),
            };
            let key = format!("rule:{trigger_event}:{}", r.rule_id);
            let envelope = command_envelope(
                ctx.tenant(),
                key,
                Some(format!("rule:{}", r.rule_id)),
                &body,
            )
            .map_err(|e| WorkError::Other(e.to_string()))?;
            match send_command(
                self.bus.as_ref(),
                CONVERSATION,
                APPLY,
                &envelope,
                COMMAND_TIMEOUT,
            )
            .await
            {
                Ok(_) => {}
                Err(SendCommandError::Rejected(p)) if p.code == "command_unavailable" => {
                    return Err(WorkError::Other(format!("conversation.apply: {}", p.title)));
                }
                Err(SendCommandError::Rejected(p)) => {
                    // A business refusal (closed, merged, …) is final; the decision stays
                    // recorded.
                    tracing::info!(conversation_id = %conversation, rule_id = %r.rule_id, code = %p.code, "rule action refused");
                }
                Err(e) => return Err(WorkError::Other(e.to_string())),
            }
        }
        Ok(())
    }
}
