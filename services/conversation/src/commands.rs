//! Commands the conversation service serves for other services: `conversation.apply`
//! (proto `command::conversation`), the only way routing rules and timers change a
//! conversation — they never append to its stream themselves.
//!
//! The command runs inside the transaction that stores its reply under the idempotency key
//! (`postvak_platform::command`): the conversation events are appended through that same
//! transaction ([`EventStore::append_in_tx`]) and the read model is written there too, so a
//! retried command (same key) answers the first reply and never applies twice. Each event's
//! metadata names the cause: `actor = rule:<id>` / `timer:<id>`, `causation_id = <id>`, and
//! `correlation_id` = the event that set the cause off.
//!
//! Business refusals (no such conversation, merged, closed, an action the conversation
//! refuses) are stored `CommandReply::Err`s with the stable codes of
//! `postvak_proto::command::conversation::codes`. An auto-reply is never sent to a message
//! flagged as an auto-reply or bounce: that action is skipped (`auto_reply_suppressed`).

use crate::{Conversations, codec, projection, stream};
use async_trait::async_trait;
use postvak_core::Aggregate;
use postvak_core::conversation::{
    Actor, Conversation, ConversationCommand as C, ConversationError, ConversationEvent, Mailbox,
    ParticipantRef, Priority, Reply, Status, render_template,
};
use postvak_ingest::Ingestor;
use postvak_platform::cell::{Cell, CellError, Cells, Principal, TenantContext};
use postvak_platform::command::{CommandError, CommandHandler, serve_command};
use postvak_platform::db::DbTx;
use postvak_platform::store::{ExpectedVersion, NewEvent, StoreError, TenantId};
use postvak_proto::command::conversation::{
    self as cmd, ActionV1, ApplyReplyV1, ApplyV1, SkippedV1, codes,
};
use postvak_proto::command::{CommandEnvelope, CommandReply};
use postvak_proto::{EventMetadata, Problem};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many times an apply is decided again when another writer got there first.
const MAX_ATTEMPTS: usize = 8;

/// Serves `conversation.apply` for one cell until `cancel` fires; returns once the server is
/// subscribed.
pub async fn serve(
    cells: &Cells,
    cell: Arc<Cell>,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, postvak_platform::bus::BusError> {
    let handler = Arc::new(ApplyHandler {
        service: Conversations::new(cells.clone()),
        ingestor: Ingestor::new(cells.clone()),
        store: cell.store.clone(),
    });
    serve_command(
        cell.bus.clone(),
        cell.db().clone(),
        cmd::SERVICE,
        cmd::APPLY,
        handler,
        cancel,
    )
    .await
}

struct ApplyHandler {
    service: Conversations,
    ingestor: Ingestor,
    /// The cell's store: the events an apply wrote are announced to the tailers at once.
    store: Arc<dyn postvak_platform::store::EventStore>,
}

fn refuse(status: u16, code: &str, title: &str, detail: Option<String>) -> CommandReply {
    CommandReply::Err {
        problem: Problem::new(status, code, title, detail),
    }
}

fn not_found() -> CommandReply {
    refuse(404, codes::NOT_FOUND, "No such conversation", None)
}

fn unavailable(e: impl std::fmt::Display) -> CommandError {
    CommandError::Unavailable(e.to_string())
}

/// What an action becomes before the aggregate decides.
enum Step {
    Run(Box<C>),
    Skip(&'static str),
    Refuse(CommandReply),
}

#[async_trait]
impl CommandHandler for ApplyHandler {
    fn committed(&self) {
        self.store.announce_commit();
    }

    async fn handle(
        &self,
        tx: &mut DbTx,
        command: &CommandEnvelope,
    ) -> Result<CommandReply, CommandError> {
        let apply: ApplyV1 = match serde_json::from_value(command.payload.clone()) {
            Ok(a) => a,
            Err(e) => {
                return Ok(refuse(
                    422,
                    "invalid_command",
                    "The command payload is not a conversation.apply v1",
                    Some(e.to_string()),
                ));
            }
        };
        let tenant = TenantId(command.tenant_id);
        let ctx = match self
            .service
            .cells()
            .context(tenant, Principal::Service { name: "routing" })
            .await
        {
            Ok(c) => c,
            Err(CellError::UnknownTenant(_)) => return Ok(not_found()),
            Err(e) => return Err(unavailable(e)),
        };
        // The reply's transaction is not tenant-bound: arm row-level security for the read
        // model written below.
        tx.bind_tenant(tenant).await.map_err(CommandError::Store)?;
        for _ in 0..MAX_ATTEMPTS {
            match self.attempt(tx, &ctx, &apply).await? {
                Some(reply) => return Ok(reply),
                None => continue,
            }
        }
        Err(unavailable(format!(
            "conversation {} kept changing under the command",
            apply.conversation_id
        )))
    }
}

impl ApplyHandler {
    /// One decide-and-append; `None` when another writer got there first.
    async fn attempt(
        &self,
        tx: &mut DbTx,
        ctx: &TenantContext,
        apply: &ApplyV1,
    ) -> Result<Option<CommandReply>, CommandError> {
        let id = apply.conversation_id;
        let loaded = self
            .service
            .load(ctx, id)
            .await
            .map_err(|e| unavailable(&e))?;
        let state = loaded.state;
        if !state.is_open() {
            return Ok(Some(not_found()));
        }
        if let Some(into) = state.merged_into {
            return Ok(Some(refuse(
                409,
                codes::MERGED,
                "The conversation was merged into another one",
                Some(format!("merged into {into}")),
            )));
        }
        let reopens = apply
            .actions
            .iter()
            .any(|a| matches!(a, ActionV1::SetStatus { .. }));
        if state.status == Status::Closed && !reopens {
            return Ok(Some(refuse(
                409,
                codes::CLOSED,
                "The conversation is closed",
                None,
            )));
        }
        // The last inbound message: an auto-reply never answers an auto-reply or a bounce.
        let mut last_inbound_auto = None;
        for e in &loaded.events {
            if let Ok(ConversationEvent::MessageReceived(m)) = codec::decode(e) {
                last_inbound_auto = Some(m.auto_reply);
            }
        }
        let now = crate::now_us();
        let mut s = state.clone();
        let mut events = Vec::new();
        let mut changed = Vec::new();
        let mut skipped = Vec::new();
        for (i, action) in apply.actions.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let step = self
                .step(tx, ctx, &s, action, last_inbound_auto, now)
                .await?;
            let command = match step {
                Step::Run(c) => *c,
                Step::Skip(reason) => {
                    skipped.push(SkippedV1 {
                        index,
                        reason: reason.into(),
                    });
                    continue;
                }
                Step::Refuse(r) => return Ok(Some(r)),
            };
            match s.decide(command) {
                Ok(evs) if evs.is_empty() => skipped.push(SkippedV1 {
                    index,
                    reason: "no_change".into(),
                }),
                Ok(evs) => {
                    for e in &evs {
                        s = s.evolve(e);
                    }
                    events.extend(evs);
                    changed.push(index);
                }
                Err(e) => {
                    let reason = match e {
                        ConversationError::AlreadyParticipant(_) => "already_participant",
                        ConversationError::NotSnoozed => "not_snoozed",
                        ConversationError::SnoozeNotOver => "snooze_not_over",
                        ConversationError::NoRecipient => "no_recipient",
                        ConversationError::Merged { .. } => {
                            return Ok(Some(refuse(
                                409,
                                codes::MERGED,
                                "The conversation was merged into another one",
                                None,
                            )));
                        }
                        other => {
                            return Ok(Some(refuse(
                                422,
                                codes::INVALID_ACTION,
                                "The conversation refuses this action",
                                Some(format!("action {i}: {other}")),
                            )));
                        }
                    };
                    skipped.push(SkippedV1 {
                        index,
                        reason: reason.into(),
                    });
                }
            }
        }
        if !events.is_empty() {
            let metadata = EventMetadata {
                actor: Some(apply.cause.actor()),
                causation_id: Some(apply.cause.id),
                correlation_id: apply.trigger_event_id,
                ..EventMetadata::default()
            };
            let conv = s.id.unwrap_or(id);
            let new_events = events
                .iter()
                .map(|e| {
                    let (t, v, payload) = codec::encode(e, conv, s.inbox_id)?;
                    Ok(NewEvent::new(t, v, payload).with_metadata(metadata.clone()))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let store = &ctx.cell().store;
            match store
                .append_in_tx(
                    tx,
                    ctx.tenant(),
                    &stream(id),
                    ExpectedVersion::Exact(state.version),
                    new_events,
                )
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let prepared = projection::prepare(
                store.keyring(),
                ctx.tenant(),
                &s,
                state.version + 1,
                &events,
            )
            .await?;
            projection::write(tx, ctx.tenant(), &prepared).await?;
        }
        let reply = ApplyReplyV1 {
            conversation_id: id,
            version: s.version,
            changed,
            skipped,
        };
        Ok(Some(CommandReply::Ok {
            payload: serde_json::to_value(&reply).map_err(unavailable)?,
        }))
    }

    /// Turns one action into an aggregate command (looking up what it needs).
    async fn step(
        &self,
        tx: &mut DbTx,
        ctx: &TenantContext,
        state: &Conversation,
        action: &ActionV1,
        last_inbound_auto: Option<bool>,
        at_us: i64,
    ) -> Result<Step, CommandError> {
        let by = Actor::System;
        let invalid = |detail: String| {
            Step::Refuse(refuse(
                422,
                codes::INVALID_ACTION,
                "The conversation refuses this action",
                Some(detail),
            ))
        };
        Ok(Step::Run(Box::new(match action {
            ActionV1::Assign { user } => C::Assign {
                assignee: *user,
                by,
                at_us,
            },
            ActionV1::Unassign => C::Unassign { by, at_us },
            ActionV1::AddTag { tag } => C::AddTag {
                tag: tag.clone(),
                by,
                at_us,
            },
            ActionV1::SetPriority { priority } => match Priority::parse(priority) {
                Some(priority) => C::SetPriority {
                    priority,
                    by,
                    at_us,
                },
                None => return Ok(invalid(format!("unknown priority {priority:?}"))),
            },
            ActionV1::SetStatus { status } => match Status::parse(status) {
                Some(status) => C::SetStatus { status, by, at_us },
                None => return Ok(invalid(format!("unknown status {status:?}"))),
            },
            ActionV1::AddParticipantUser { user } => C::AddParticipant {
                participant: ParticipantRef::User(*user),
                members: Vec::new(),
                by,
                at_us,
            },
            ActionV1::AddParticipantInbox { inbox } => {
                match self.service.directory().get_inbox(ctx, *inbox).await {
                    Ok(_) => {}
                    Err(postvak_directory::ServiceError::NotFound) => {
                        return Ok(invalid(format!("no inbox {inbox}")));
                    }
                    Err(e) => return Err(unavailable(e)),
                }
                let members = self
                    .service
                    .members_of(ctx, *inbox)
                    .await
                    .map_err(unavailable)?;
                C::AddParticipant {
                    participant: ParticipantRef::Inbox(*inbox),
                    members,
                    by,
                    at_us,
                }
            }
            ActionV1::Wake => C::Wake {
                by,
                manual: false,
                at_us,
            },
            ActionV1::Note { body } => C::AddNote {
                note_id: Uuid::now_v7(),
                body: body.clone(),
                mentions: Vec::new(),
                by,
                at_us,
            },
            ActionV1::AutoReply { template_id } => {
                if last_inbound_auto != Some(false) {
                    return Ok(Step::Skip("auto_reply_suppressed"));
                }
                match self.auto_reply(tx, ctx, state, *template_id).await? {
                    Ok(reply) => C::Reply { reply, by, at_us },
                    Err(step) => return Ok(step),
                }
            }
        })))
    }

    /// The reply an auto-reply action sends: the template rendered for the conversation, from
    /// the inbox's first address with our Message-ID and reply token.
    async fn auto_reply(
        &self,
        tx: &mut DbTx,
        ctx: &TenantContext,
        state: &Conversation,
        template_id: Uuid,
    ) -> Result<Result<Reply, Step>, CommandError> {
        let keyring = ctx.cell().store.keyring();
        let template = crate::templates::load_in_tx(tx, keyring, ctx.tenant(), template_id).await?;
        let usable = template.filter(|(inbox, _, _)| inbox.is_none_or(|i| i == state.inbox_id));
        let Some((_, subject, body)) = usable else {
            return Ok(Err(Step::Refuse(refuse(
                422,
                codes::TEMPLATE_NOT_FOUND,
                "No such template for this conversation's inbox",
                Some(format!("template {template_id}")),
            ))));
        };
        let inbox = match self
            .service
            .directory()
            .get_inbox(ctx, state.inbox_id)
            .await
        {
            Ok(i) => i,
            Err(e) => return Err(unavailable(e)),
        };
        let Some(address) = inbox.addresses.first().cloned() else {
            return Ok(Err(Step::Skip("inbox_without_address")));
        };
        let contact = state
            .reply_target
            .first()
            .map(|m| m.name.clone().unwrap_or_else(|| m.address.clone()));
        let signature = inbox.signature.clone().filter(|s| !s.trim().is_empty());
        let inbox_name = Some(inbox.name.clone());
        let value = |name: &str| match name {
            "contact.name" => contact.clone(),
            "agent.name" => inbox_name.clone(),
            "agent.signature" => signature.clone(),
            "inbox.name" => inbox_name.clone(),
            _ => None,
        };
        let from = Mailbox {
            name: Some(inbox.name.clone()),
            address,
        };
        let conversation = state.id.unwrap_or_default();
        let (message_id_header, reply_to) = match from.address.rsplit_once('@') {
            Some((local, domain)) => {
                let key = self.ingestor.index_key(ctx).await.map_err(unavailable)?;
                let token = key.reply_token(state.inbox_id, conversation);
                (
                    Some(key.outbound_message_id(state.inbox_id, conversation, domain)),
                    vec![Mailbox {
                        name: from.name.clone(),
                        address: format!("{local}+{token}@{domain}"),
                    }],
                )
            }
            None => (None, Vec::new()),
        };
        // One auto-reply per conversation and template: a deterministic message id makes a
        // repeat of the same action a no-op in the aggregate.
        let message_id = Uuid::from_u128(conversation.as_u128() ^ template_id.as_u128());
        Ok(Ok(Reply {
            message_id,
            from,
            to: Vec::new(),
            cc: Vec::new(),
            subject: subject.as_deref().map(|s| render_template(s, value)),
            body: render_template(&body, value),
            message_id_header,
            reply_to,
            body_html: None,
            files: Vec::new(),
        }))
    }
}
