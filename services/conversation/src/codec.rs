//! Domain events ↔ stored shapes (`postvak_proto::events::conversation`).

use postvak_core::conversation::{
    ConversationEvent as E, DeliveryFailure, Mailbox, MergeSource, Message, MessageFile, Origin,
    ParticipantRef, Priority, Status,
};
use postvak_platform::store::{RecordedEvent, StoreError};
use postvak_proto::events::conversation::{self as ev, MailboxV1, MessageFileV1, MessageV1};
use serde::Serialize;
use uuid::Uuid;

fn value<T: Serialize>(t: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(t).map_err(|e| StoreError::Serialization(e.to_string()))
}

pub(crate) fn mailbox_v1(m: &Mailbox) -> MailboxV1 {
    MailboxV1 {
        name: m.name.clone(),
        address: m.address.clone(),
    }
}

pub(crate) fn mailbox(m: &MailboxV1) -> Mailbox {
    Mailbox {
        name: m.name.clone(),
        address: m.address.clone(),
    }
}

pub(crate) fn message_v1(m: &Message, conversation_id: Uuid, inbox_id: Uuid) -> MessageV1 {
    let boxes = |v: &[Mailbox]| v.iter().map(mailbox_v1).collect();
    MessageV1 {
        message_id: m.message_id,
        conversation_id,
        inbox_id,
        message_id_header: m.message_id_header.clone(),
        in_reply_to: m.in_reply_to.clone(),
        references: m.references.clone(),
        subject: m.subject.clone(),
        from: boxes(&m.from),
        reply_to: boxes(&m.reply_to),
        to: boxes(&m.to),
        cc: boxes(&m.cc),
        snippet: m.snippet.clone(),
        body_text: m.body_text.clone(),
        text_blob: m.text_blob,
        html_blob: m.html_blob,
        attachments: m.attachments,
        files: m.files.iter().map(file_v1).collect(),
        body_html: m.body_html.clone(),
        auto_reply: m.auto_reply,
        author: m.author,
        at_us: m.at_us,
        search_words: m.search_words.clone(),
    }
}

pub(crate) fn file_v1(f: &MessageFile) -> MessageFileV1 {
    MessageFileV1 {
        file_id: f.file_id,
        filename: f.filename.clone(),
        content_type: f.content_type.clone(),
        size: f.size,
        sha256: f.sha256.clone(),
        inline: f.inline,
        content_id: f.content_id.clone(),
    }
}

pub(crate) fn file(f: &MessageFileV1) -> MessageFile {
    MessageFile {
        file_id: f.file_id,
        filename: f.filename.clone(),
        content_type: f.content_type.clone(),
        size: f.size,
        sha256: f.sha256.clone(),
        inline: f.inline,
        content_id: f.content_id.clone(),
    }
}

pub(crate) fn message(m: &MessageV1) -> Message {
    let boxes = |v: &[MailboxV1]| v.iter().map(mailbox).collect();
    Message {
        message_id: m.message_id,
        message_id_header: m.message_id_header.clone(),
        in_reply_to: m.in_reply_to.clone(),
        references: m.references.clone(),
        subject: m.subject.clone(),
        from: boxes(&m.from),
        reply_to: boxes(&m.reply_to),
        to: boxes(&m.to),
        cc: boxes(&m.cc),
        snippet: m.snippet.clone(),
        body_text: m.body_text.clone(),
        text_blob: m.text_blob,
        html_blob: m.html_blob,
        attachments: m.attachments,
        files: m.files.iter().map(file).collect(),
        body_html: m.body_html.clone(),
        auto_reply: m.auto_reply,
        author: m.author,
        at_us: m.at_us,
        search_words: m.search_words.clone(),
    }
}

/// `(event_type, version, payload)` of a domain event. `conversation_id` and `inbox_id` are
/// written into message payloads for consumers.
pub(crate) fn encode(
    e: &E,
    conversation_id: Uuid,
    inbox_id: Uuid,
) -> Result<(&'static str, u32, serde_json::Value), StoreError> {
    Ok(match e {
        E::Opened {
            conversation_id,
            inbox_id,
            origin,
            participants,
            by,
            at_us,
        } => (
            ev::OPENED,
            1,
            value(&ev::OpenedV1 {
                conversation_id: *conversation_id,
                inbox_id: *inbox_id,
                origin: origin.as_str().to_owned(),
                participants: participants.clone(),
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::MessageReceived(m) => (
            ev::MESSAGE_RECEIVED,
            1,
            value(&message_v1(m, conversation_id, inbox_id))?,
        ),
        E::ReplyQueued(m) => (
            ev::REPLY_QUEUED,
            1,
            value(&message_v1(m, conversation_id, inbox_id))?,
        ),
        E::NoteAdded {
            note_id,
            author,
            body,
            mentions,
            at_us,
        } => (
            ev::NOTE_ADDED,
            1,
            value(&ev::NoteAddedV1 {
                note_id: *note_id,
                author: *author,
                body: body.clone(),
                mentions: mentions.clone(),
                at_us: *at_us,
            })?,
        ),
        E::StatusChanged { status, by, at_us } => (
            ev::STATUS_CHANGED,
            1,
            value(&ev::StatusChangedV1 {
                status: status.as_str().to_owned(),
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::Snoozed {
            until_us,
            by,
            at_us,
        } => (
            ev::SNOOZED,
            1,
            value(&ev::SnoozedV1 {
                until_us: *until_us,
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::Woken { by, at_us } => (
            ev::WOKEN,
            1,
            value(&ev::ActedV1 {
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::PriorityChanged {
            priority,
            by,
            at_us,
        } => (
            ev::PRIORITY_CHANGED,
            1,
            value(&ev::PriorityChangedV1 {
                priority: priority.as_str().to_owned(),
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::Tagged { tag, by, at_us } => (
            ev::TAGGED,
            1,
            value(&ev::TagV1 {
                tag: tag.clone(),
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::Untagged { tag, by, at_us } => (
            ev::UNTAGGED,
            1,
            value(&ev::TagV1 {
                tag: tag.clone(),
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::Assigned {
            assignee,
            claimed,
            by,
            at_us,
        } => (
            ev::ASSIGNED,
            1,
            value(&ev::AssignedV1 {
                assignee: *assignee,
                claimed: *claimed,
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::Unassigned {
            previous,
            by,
            at_us,
        } => (
            ev::UNASSIGNED,
            1,
            value(&ev::UnassignedV1 {
                previous: *previous,
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::ParticipantAdded {
            participant,
            members,
            by,
            at_us,
        } => {
            let (kind, id) = match participant {
                ParticipantRef::User(u) => ("user", *u),
                ParticipantRef::Inbox(i) => ("inbox", *i),
            };
            (
                ev::PARTICIPANT_ADDED,
                1,
                value(&ev::ParticipantAddedV1 {
                    kind: kind.to_owned(),
                    id,
                    members: members.clone(),
                    by: *by,
                    at_us: *at_us,
                })?,
            )
        }
        E::ArchivedForInbox {
            inbox_id,
            by,
            at_us,
        } => (
            ev::ARCHIVED_FOR_INBOX,
            1,
            value(&ev::ArchivedForInboxV1 {
                inbox_id: *inbox_id,
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::Moved {
            from_inbox,
            to_inbox,
            members,
            by,
            at_us,
        } => (
            ev::MOVED,
            1,
            value(&ev::MovedV1 {
                from_inbox: *from_inbox,
                to_inbox: *to_inbox,
                members: members.clone(),
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::MergedInto { target, by, at_us } => (
            ev::MERGED_INTO,
            1,
            value(&ev::MergedIntoV1 {
                target: *target,
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::MergedFrom { source, by, at_us } => (
            ev::MERGED_FROM,
            1,
            value(&ev::MergedFromV1 {
                source: source.conversation_id,
                messages: source.messages.clone(),
                thread_ids: source.thread_ids.clone(),
                users: source.users.clone(),
                inboxes: source.inboxes.clone(),
                tags: source.tags.clone(),
                by: *by,
                at_us: *at_us,
            })?,
        ),
        E::ReplyDeliveryFailed(f) => (
            ev::REPLY_DELIVERY_FAILED,
            1,
            value(&ev::ReplyDeliveryFailedV1 {
                message_id: f.message_id,
                reason: f.reason.clone(),
                permanent: f.permanent,
                smtp_code: f.smtp_code,
                detail: f.detail.clone(),
                author: f.author,
                at_us: f.at_us,
            })?,
        ),
    })
}

fn bad(e: &RecordedEvent, reason: &str) -> StoreError {
    StoreError::Decode {
        event_type: e.event_type.clone(),
        event_version: e.event_version,
        reason: reason.to_owned(),
    }
}

/// Decodes a stored conversation event (every version ever stored).
pub(crate) fn decode(e: &RecordedEvent) -> Result<E, StoreError> {
    if e.event_version != 1 {
        return Err(StoreError::UnknownEventType {
            event_type: e.event_type.clone(),
            event_version: e.event_version,
        });
    }
    Ok(match e.event_type.as_str() {
        ev::OPENED => {
            let p: ev::OpenedV1 = e.payload()?;
            E::Opened {
                conversation_id: p.conversation_id,
                inbox_id: p.inbox_id,
                origin: if p.origin == "agent" {
                    Origin::Agent
                } else {
                    Origin::Message
                },
                participants: p.participants,
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::MESSAGE_RECEIVED => E::MessageReceived(message(&e.payload::<MessageV1>()?)),
        ev::REPLY_QUEUED => E::ReplyQueued(message(&e.payload::<MessageV1>()?)),
        ev::NOTE_ADDED => {
            let p: ev::NoteAddedV1 = e.payload()?;
            E::NoteAdded {
                note_id: p.note_id,
                author: p.author,
                body: p.body,
                mentions: p.mentions,
                at_us: p.at_us,
            }
        }
        ev::STATUS_CHANGED => {
            let p: ev::StatusChangedV1 = e.payload()?;
            E::StatusChanged {
                status: Status::parse(&p.status).ok_or_else(|| bad(e, "unknown status"))?,
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::SNOOZED => {
            let p: ev::SnoozedV1 = e.payload()?;
            E::Snoozed {
                until_us: p.until_us,
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::WOKEN => {
            let p: ev::ActedV1 = e.payload()?;
            E::Woken {
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::PRIORITY_CHANGED => {
            let p: ev::PriorityChangedV1 = e.payload()?;
            E::PriorityChanged {
                priority: Priority::parse(&p.priority).ok_or_else(|| bad(e, "unknown priority"))?,
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::TAGGED | ev::UNTAGGED => {
            let p: ev::TagV1 = e.payload()?;
            if e.event_type == ev::TAGGED {
                E::Tagged {
                    tag: p.tag,
                    by: p.by,
                    at_us: p.at_us,
                }
            } else {
                E::Untagged {
                    tag: p.tag,
                    by: p.by,
                    at_us: p.at_us,
                }
            }
        }
        ev::ASSIGNED => {
            let p: ev::AssignedV1 = e.payload()?;
            E::Assigned {
                assignee: p.assignee,
                claimed: p.claimed,
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::UNASSIGNED => {
            let p: ev::UnassignedV1 = e.payload()?;
            E::Unassigned {
                previous: p.previous,
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::PARTICIPANT_ADDED => {
            let p: ev::ParticipantAddedV1 = e.payload()?;
            E::ParticipantAdded {
                participant: match p.kind.as_str() {
                    "user" => ParticipantRef::User(p.id),
                    "inbox" => ParticipantRef::Inbox(p.id),
                    _ => return Err(bad(e, "unknown participant kind")),
                },
                members: p.members,
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::ARCHIVED_FOR_INBOX => {
            let p: ev::ArchivedForInboxV1 = e.payload()?;
            E::ArchivedForInbox {
                inbox_id: p.inbox_id,
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::MOVED => {
            let p: ev::MovedV1 = e.payload()?;
            E::Moved {
                from_inbox: p.from_inbox,
                to_inbox: p.to_inbox,
                members: p.members,
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::MERGED_INTO => {
            let p: ev::MergedIntoV1 = e.payload()?;
            E::MergedInto {
                target: p.target,
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::MERGED_FROM => {
            let p: ev::MergedFromV1 = e.payload()?;
            E::MergedFrom {
                source: MergeSource {
                    conversation_id: p.source,
                    messages: p.messages,
                    thread_ids: p.thread_ids,
                    users: p.users,
                    inboxes: p.inboxes,
                    tags: p.tags,
                },
                by: p.by,
                at_us: p.at_us,
            }
        }
        ev::REPLY_DELIVERY_FAILED => {
            let p: ev::ReplyDeliveryFailedV1 = e.payload()?;
            E::ReplyDeliveryFailed(DeliveryFailure {
                message_id: p.message_id,
                reason: p.reason,
                permanent: p.permanent,
                smtp_code: p.smtp_code,
                detail: p.detail,
                author: p.author,
                at_us: p.at_us,
            })
        }
        _ => {
            return Err(StoreError::UnknownEventType {
                event_type: e.event_type.clone(),
                event_version: e.event_version,
            });
        }
    })
}
