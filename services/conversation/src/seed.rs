//! Bulk seeding for `postvak bench api`: a tenant with many conversations, built through the
//! aggregate's `decide`/`evolve` (so the log holds exactly what the service would write),
//! appended and projected like the service does it. Not reachable from the API.

use crate::{ServiceError, codec, projection, stream};
use postvak_core::Aggregate;
use postvak_core::conversation::{
    Actor, Conversation, ConversationCommand as C, Mailbox, Message, Priority, Reply, Status,
};
use postvak_platform::cell::TenantContext;
use postvak_platform::store::{ExpectedVersion, NewEvent, StoreError};
use uuid::Uuid;

/// What the seeded conversations belong to.
#[derive(Debug, Clone)]
pub struct SeedInbox {
    pub inbox_id: Uuid,
    /// The inbox's address: replies are sent from it.
    pub address: String,
    /// The inbox's members: participants of every conversation, assignees in turn.
    pub members: Vec<Uuid>,
}

const WORDS: &[&str] = &[
    "appointment",
    "invoice",
    "referral",
    "prescription",
    "delivery",
    "refund",
    "password",
    "schedule",
    "report",
    "contract",
    "question",
    "results",
];

/// Conversation number `n` of a seed: ~10 events (opened, two more customer messages, a tag,
/// a priority, an assignment, a note, a reply, a status). Deterministic in `n` except for ids.
fn commands(inbox: &SeedInbox, conversation_id: Uuid, n: u64, now_us: i64) -> Vec<C> {
    let word = WORDS[(n % WORDS.len() as u64) as usize];
    let customer = Mailbox {
        name: Some(format!("Customer {n}")),
        address: format!("customer{n}@example.net"),
    };
    let agent = inbox.members[(n % inbox.members.len() as u64) as usize];
    // Spread over the last ~30 days, newest last.
    let start = now_us - 30 * 86_400_000_000 + (n as i64 % 2_592_000) * 1_000_000;
    let message = |k: i64, subject: &str, body: &str| Message {
        message_id: Uuid::now_v7(),
        message_id_header: Some(format!("seed-{n}-{k}@example.net")),
        in_reply_to: Vec::new(),
        references: Vec::new(),
        subject: Some(subject.to_owned()),
        from: vec![customer.clone()],
        reply_to: Vec::new(),
        to: vec![Mailbox {
            name: None,
            address: inbox.address.clone(),
        }],
        cc: Vec::new(),
        snippet: body.to_owned(),
        body_text: None,
        text_blob: None,
        html_blob: None,
        attachments: 0,
        files: Vec::new(),
        body_html: None,
        auto_reply: false,
        author: None,
        at_us: start + k * 60_000_000,
        search_words: Vec::new(),
    };
    let subject = format!("Question about my {word} #{n}");
    let by = Actor::User(agent);
    let status = match n % 4 {
        0 => Status::Open,
        1 => Status::Pending,
        _ => Status::Closed,
    };
    let mut out = vec![
        C::OpenFromMessage {
            conversation_id,
            inbox_id: inbox.inbox_id,
            members: inbox.members.clone(),
            message: message(
                0,
                &subject,
                &format!("Hello, about my {word}: can you help?"),
            ),
        },
        C::ReceiveMessage {
            message: message(1, &format!("Re: {subject}"), "Any news on this?"),
        },
        C::AddTag {
            tag: word.to_owned(),
            by: Actor::System,
            at_us: start + 2 * 60_000_000,
        },
        C::SetPriority {
            priority: if n.is_multiple_of(10) {
                Priority::High
            } else {
                Priority::Low
            },
            by: Actor::System,
            at_us: start + 3 * 60_000_000,
        },
        C::Assign {
            assignee: agent,
            by: Actor::System,
            at_us: start + 4 * 60_000_000,
        },
        C::AddNote {
            note_id: Uuid::now_v7(),
            body: format!("Checked the {word} in our system."),
            mentions: Vec::new(),
            by,
            at_us: start + 5 * 60_000_000,
        },
        C::Reply {
            reply: Reply {
                message_id: Uuid::now_v7(),
                from: Mailbox {
                    name: None,
                    address: inbox.address.clone(),
                },
                to: Vec::new(),
                cc: Vec::new(),
                subject: None,
                body: format!("Thank you, your {word} is on its way."),
                message_id_header: None,
                reply_to: Vec::new(),
                body_html: None,
                files: Vec::new(),
            },
            by,
            at_us: start + 6 * 60_000_000,
        },
        C::ReceiveMessage {
            message: message(7, &format!("Re: {subject}"), "Thanks a lot!"),
        },
    ];
    if status != Status::Open {
        out.push(C::SetStatus {
            status,
            by,
            at_us: start + 8 * 60_000_000,
        });
    }
    out
}

/// Writes conversations `ns` of a seed — their events and read models — in one transaction;
/// returns each one's id and number of events. Batches are independent: callers seed several
/// at once.
pub async fn seed_batch(
    ctx: &TenantContext,
    inbox: &SeedInbox,
    ns: std::ops::Range<u64>,
    now_us: i64,
) -> Result<Vec<(Uuid, usize)>, ServiceError> {
    let keyring = ctx.cell().store.keyring();
    let mut built = Vec::new();
    for n in ns {
        let id = Uuid::now_v7();
        let mut state = Conversation::default();
        let mut events = Vec::new();
        for cmd in commands(inbox, id, n, now_us) {
            for e in state.decide(cmd)? {
                state = state.evolve(&e);
                events.push(e);
            }
        }
        let new_events = events
            .iter()
            .map(|e| {
                let (t, v, payload) = codec::encode(e, id, state.inbox_id)?;
                Ok(NewEvent::new(t, v, payload))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Sealing (and creating the tenant's keys) happens before the transaction opens.
        let prepared = projection::prepare(keyring, ctx.tenant(), &state, 1, &events).await?;
        built.push((id, new_events, prepared, events.len()));
    }
    let store = &ctx.cell().store;
    let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
    let mut out = Vec::with_capacity(built.len());
    for (id, new_events, prepared, count) in built {
        store
            .append_in_tx(
                &mut tx,
                ctx.tenant(),
                &stream(id),
                ExpectedVersion::NoStream,
                new_events,
            )
            .await?;
        projection::write(&mut tx, ctx.tenant(), &prepared).await?;
        out.push((id, count));
    }
    store.commit_appended(tx).await?;
    Ok(out)
}
