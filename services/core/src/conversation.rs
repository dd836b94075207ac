//! The conversation aggregate: a thread in one inbox with its messages, internal notes, status,
//! snooze, priority, tags, assignee and participants.
//!
//! Pure: the clock (`at_us`, Unix microseconds) and every id are inputs; the inbox's members
//! (for the participant snapshot) are looked up by the service and passed in.
//!
//! Participants, as a hub inbox needs them:
//! - when a conversation opens, the members of its inbox at that moment become participants;
//!   someone who joins the inbox later is not a participant of earlier conversations unless
//!   added explicitly;
//! - a participant adds a person or another inbox (whose members at that moment join too);
//! - an inbox may archive the conversation from its own view while it stays live for the
//!   others; it can't archive when nobody else would still see it (close it instead).

use crate::Aggregate;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use uuid::Uuid;

/// Status of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Status {
    #[default]
    Open,
    Pending,
    Closed,
    Spam,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Pending => "pending",
            Self::Closed => "closed",
            Self::Spam => "spam",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => Self::Open,
            "pending" => Self::Pending,
            "closed" => Self::Closed,
            "spam" => Self::Spam,
            _ => return None,
        })
    }
}

/// Priority of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "low" => Self::Low,
            "normal" => Self::Normal,
            "high" => Self::High,
            "urgent" => Self::Urgent,
            _ => return None,
        })
    }
}

/// Someone or something taking part in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParticipantRef {
    User(Uuid),
    Inbox(Uuid),
}

/// Who issues a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// An agent: participant rules apply.
    User(Uuid),
    /// A tenant administrator: may act on any conversation of the tenant.
    Admin(Uuid),
    /// An API key, a rule or a service acting on the inbox's behalf.
    System,
}

impl Actor {
    pub fn user(self) -> Option<Uuid> {
        match self {
            Self::User(u) | Self::Admin(u) => Some(u),
            Self::System => None,
        }
    }
}

/// Where the conversation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A received mail.
    Message,
    /// An agent wrote first.
    Agent,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Agent => "agent",
        }
    }
}

/// In or out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// A mailbox: display name and address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: String,
}

/// A message of the conversation, inbound or outbound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub message_id: Uuid,
    /// The `Message-ID` header without angle brackets.
    pub message_id_header: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub subject: Option<String>,
    pub from: Vec<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub snippet: String,
    /// Outbound: the text written by the agent. Inbound bodies stay in ingest's sealed blobs.
    pub body_text: Option<String>,
    pub text_blob: Option<Uuid>,
    pub html_blob: Option<Uuid>,
    pub attachments: u32,
    /// The attachments' names, types and sizes (inbound: ingest's blobs; outbound: the
    /// conversation service's reply files).
    pub files: Vec<MessageFile>,
    /// Outbound: the HTML alternative the agent wrote.
    pub body_html: Option<String>,
    /// An auto-reply or a bounce: never answered automatically.
    pub auto_reply: bool,
    /// Outbound: the agent who wrote it.
    pub author: Option<Uuid>,
    pub at_us: i64,
    /// Inbound: the words of the whole body (its text, or the text rendered from HTML) that
    /// search indexes, as [`body_search_words`] picks them. Travels sealed in the events only;
    /// the index keeps their blind terms, never the words.
    pub search_words: Vec<String>,
}

/// One attachment of a message: where its content is kept, and what a reader is shown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageFile {
    pub file_id: Uuid,
    pub filename: Option<String>,
    pub content_type: String,
    pub size: u64,
    /// SHA-256 (hex) of the content.
    pub sha256: String,
    pub inline: bool,
    /// Inbound: the part's `Content-ID` (without `<>`), which an HTML body's `cid:` names.
    pub content_id: Option<String>,
}

/// A reply as an agent writes it; the aggregate adds the threading headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message_id: Uuid,
    /// The inbox's address replies are sent from (never the agent's own).
    pub from: Mailbox,
    /// Recipients; empty = the sender (or `Reply-To`) of the latest inbound message.
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    /// Empty = `Re: ` + the conversation's subject.
    pub subject: Option<String>,
    pub body: String,
    /// Our Message-ID for it (without angle brackets); `None`: `<message_id>@<inbox domain>`.
    /// The service passes one that carries a signed reply token, so an answer that keeps only
    /// `In-Reply-To` still finds this conversation.
    pub message_id_header: Option<String>,
    /// `Reply-To`, e.g. the inbox's plus-address with the reply token.
    pub reply_to: Vec<Mailbox>,
    /// An HTML alternative of `body`.
    pub body_html: Option<String>,
    /// Files already stored by the service (their content is not part of the event).
    pub files: Vec<MessageFile>,
}

/// What a merged-away conversation hands to the one it is merged into.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MergeSource {
    pub conversation_id: Uuid,
    pub messages: Vec<Uuid>,
    pub thread_ids: Vec<String>,
    pub users: Vec<Uuid>,
    pub inboxes: Vec<Uuid>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationEvent {
    Opened {
        conversation_id: Uuid,
        inbox_id: Uuid,
        origin: Origin,
        /// The inbox's members at this moment.
        participants: Vec<Uuid>,
        by: Option<Uuid>,
        at_us: i64,
    },
    MessageReceived(Message),
    /// An outbound reply, kept as the shared mailbox's sent item and queued for sending.
    ReplyQueued(Message),
    NoteAdded {
        note_id: Uuid,
        author: Option<Uuid>,
        body: String,
        mentions: Vec<Uuid>,
        at_us: i64,
    },
    StatusChanged {
        status: Status,
        by: Option<Uuid>,
        at_us: i64,
    },
    Snoozed {
        until_us: i64,
        by: Option<Uuid>,
        at_us: i64,
    },
    Woken {
        by: Option<Uuid>,
        at_us: i64,
    },
    PriorityChanged {
        priority: Priority,
        by: Option<Uuid>,
        at_us: i64,
    },
    Tagged {
        tag: String,
        by: Option<Uuid>,
        at_us: i64,
    },
    Untagged {
        tag: String,
        by: Option<Uuid>,
        at_us: i64,
    },
    Assigned {
        assignee: Uuid,
        /// Taken by the assignee themselves (exclusive).
        claimed: bool,
        by: Option<Uuid>,
        at_us: i64,
    },
    Unassigned {
        previous: Uuid,
        by: Option<Uuid>,
        at_us: i64,
    },
    ParticipantAdded {
        participant: ParticipantRef,
        /// For an inbox: its members at this moment.
        members: Vec<Uuid>,
        by: Option<Uuid>,
        at_us: i64,
    },
    ArchivedForInbox {
        inbox_id: Uuid,
        by: Option<Uuid>,
        at_us: i64,
    },
    Moved {
        from_inbox: Uuid,
        to_inbox: Uuid,
        /// The new inbox's members at this moment.
        members: Vec<Uuid>,
        by: Option<Uuid>,
        at_us: i64,
    },
    MergedInto {
        target: Uuid,
        by: Option<Uuid>,
        at_us: i64,
    },
    MergedFrom {
        source: MergeSource,
        by: Option<Uuid>,
        at_us: i64,
    },
    /// An outbound reply could not be delivered (the notification service gave up on it).
    ReplyDeliveryFailed(DeliveryFailure),
}

/// Why an outbound reply was not delivered, as the notification service reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    pub message_id: Uuid,
    /// `rejected` (a 5xx), `retries_exhausted`, `uncertain` (interrupted mid-send).
    pub reason: String,
    /// The relay refused it for good: resending the same mail won't help.
    pub permanent: bool,
    pub smtp_code: Option<u16>,
    pub detail: String,
    /// The agent who wrote the reply.
    pub author: Option<Uuid>,
    pub at_us: i64,
}

impl ConversationEvent {
    /// When it happened (Unix microseconds).
    pub fn at_us(&self) -> i64 {
        match self {
            Self::MessageReceived(m) | Self::ReplyQueued(m) => m.at_us,
            Self::ReplyDeliveryFailed(f) => f.at_us,
            Self::Opened { at_us, .. }
            | Self::NoteAdded { at_us, .. }
            | Self::StatusChanged { at_us, .. }
            | Self::Snoozed { at_us, .. }
            | Self::Woken { at_us, .. }
            | Self::PriorityChanged { at_us, .. }
            | Self::Tagged { at_us, .. }
            | Self::Untagged { at_us, .. }
            | Self::Assigned { at_us, .. }
            | Self::Unassigned { at_us, .. }
            | Self::ParticipantAdded { at_us, .. }
            | Self::ArchivedForInbox { at_us, .. }
            | Self::Moved { at_us, .. }
            | Self::MergedInto { at_us, .. }
            | Self::MergedFrom { at_us, .. } => *at_us,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConversationError {
    #[error("the conversation does not exist")]
    NotOpened,
    #[error("the conversation already exists")]
    AlreadyOpened,
    #[error("the conversation was merged into {into}")]
    Merged { into: Uuid },
    #[error("the conversation is claimed by {holder}")]
    ClaimedBy { holder: Uuid },
    #[error("{0} is not a participant of this conversation")]
    NotAParticipant(Uuid),
    #[error("{0} already takes part in this conversation")]
    AlreadyParticipant(Uuid),
    #[error("inbox {0} does not hold this conversation")]
    InboxNotParticipating(Uuid),
    #[error("nobody else would still see the conversation: close it instead")]
    NoOtherParticipant,
    #[error("the conversation is already in inbox {0}")]
    SameInbox(Uuid),
    #[error("a conversation can't be merged into itself")]
    MergeIntoSelf,
    #[error("a note needs a body")]
    EmptyNote,
    #[error("a reply needs a body")]
    EmptyReply,
    #[error("nobody to reply to: give a recipient")]
    NoRecipient,
    #[error("{0:?} is not a valid tag (1–64 characters, no spaces or control characters)")]
    InvalidTag(String),
    #[error("the snooze must end in the future")]
    SnoozeInPast,
    #[error("the conversation is not snoozed")]
    NotSnoozed,
    #[error("the snooze has not ended yet")]
    SnoozeNotOver,
}

/// What one inbox sees of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboxView {
    /// Archived from this inbox's view; still live for the other participants.
    pub archived: bool,
}

/// Where a user's participation comes from: `Some(inbox)` = that inbox's member snapshot,
/// `None` = added explicitly (or by assignment).
pub type ParticipantSource = Option<Uuid>;

/// A summary of one message of the thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    pub message_id: Uuid,
    pub direction: Direction,
}

/// The conversation aggregate's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversation {
    pub id: Option<Uuid>,
    /// The inbox the conversation belongs to (changed by a move).
    pub inbox_id: Uuid,
    pub origin: Option<Origin>,
    pub status: Status,
    pub priority: Priority,
    pub tags: BTreeSet<String>,
    pub assignee: Option<Uuid>,
    pub snoozed_until_us: Option<i64>,
    pub users: BTreeMap<Uuid, BTreeSet<ParticipantSource>>,
    pub inboxes: BTreeMap<Uuid, InboxView>,
    pub messages: Vec<MessageRef>,
    pub notes: u64,
    /// Every Message-ID of the thread, oldest first: the `References` of a reply.
    pub thread_ids: Vec<String>,
    pub subject: Option<String>,
    /// The start of the latest message, for lists.
    pub snippet: String,
    /// Who a reply goes to by default: the `Reply-To` (or `From`) of the latest inbound mail.
    pub reply_target: Vec<Mailbox>,
    pub merged_into: Option<Uuid>,
    pub merged_from: Vec<Uuid>,
    /// Outbound replies whose delivery failed.
    pub failed_replies: BTreeSet<Uuid>,
    pub opened_at_us: i64,
    pub updated_at_us: i64,
    /// Number of events applied: the stream version, the ETag.
    pub version: u64,
}

#[derive(Debug, Clone)]
pub enum ConversationCommand {
    /// Opens a conversation from a received mail.
    OpenFromMessage {
        conversation_id: Uuid,
        inbox_id: Uuid,
        /// The inbox's members now (users, teams expanded).
        members: Vec<Uuid>,
        message: Message,
    },
    /// Opens a conversation an agent starts (the first reply follows as `Reply`).
    Open {
        conversation_id: Uuid,
        inbox_id: Uuid,
        members: Vec<Uuid>,
        by: Actor,
        at_us: i64,
    },
    /// A further inbound mail. Receiving the same message twice changes nothing.
    ReceiveMessage {
        message: Message,
    },
    Reply {
        reply: Reply,
        by: Actor,
        at_us: i64,
    },
    AddNote {
        note_id: Uuid,
        body: String,
        mentions: Vec<Uuid>,
        by: Actor,
        at_us: i64,
    },
    SetStatus {
        status: Status,
        by: Actor,
        at_us: i64,
    },
    Snooze {
        until_us: i64,
        by: Actor,
        at_us: i64,
    },
    /// Ends a snooze: by hand (`manual`, any time), or by the timer once it is over.
    Wake {
        by: Actor,
        manual: bool,
        at_us: i64,
    },
    SetPriority {
        priority: Priority,
        by: Actor,
        at_us: i64,
    },
    AddTag {
        tag: String,
        by: Actor,
        at_us: i64,
    },
    RemoveTag {
        tag: String,
        by: Actor,
        at_us: i64,
    },
    /// The caller takes the conversation: exclusive, fails naming the holder.
    Claim {
        user: Uuid,
        at_us: i64,
    },
    Assign {
        assignee: Uuid,
        by: Actor,
        at_us: i64,
    },
    Unassign {
        by: Actor,
        at_us: i64,
    },
    AddParticipant {
        participant: ParticipantRef,
        /// For an inbox: its members now.
        members: Vec<Uuid>,
        by: Actor,
        at_us: i64,
    },
    ArchiveForInbox {
        inbox_id: Uuid,
        by: Actor,
        at_us: i64,
    },
    Move {
        to_inbox: Uuid,
        members: Vec<Uuid>,
        by: Actor,
        at_us: i64,
    },
    /// This conversation is merged into `target` (and takes no further changes).
    MergeInto {
        target: Uuid,
        by: Actor,
        at_us: i64,
    },
    /// This conversation takes in what `source` had.
    AbsorbMerge {
        source: MergeSource,
        by: Actor,
        at_us: i64,
    },
    /// Records that one of its outbound replies was not delivered: once per message; a
    /// message this conversation did not send is ignored.
    RecordDeliveryFailure(DeliveryFailure),
}

impl Conversation {
    pub fn is_open(&self) -> bool {
        self.id.is_some()
    }

    /// A participant user (from a snapshot, added, or assigned).
    pub fn is_participant(&self, user: Uuid) -> bool {
        self.users.contains_key(&user)
    }

    /// Inboxes that still show the conversation.
    pub fn live_inboxes(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.inboxes
            .iter()
            .filter(|(_, v)| !v.archived)
            .map(|(id, _)| *id)
    }

    /// Users added explicitly (not from an inbox snapshot).
    pub fn added_users(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.users
            .iter()
            .filter(|(_, s)| s.contains(&None))
            .map(|(id, _)| *id)
    }

    pub fn is_snoozed(&self, now_us: i64) -> bool {
        self.snoozed_until_us.is_some_and(|u| u > now_us)
    }

    /// Everything a merged-away conversation hands over.
    pub fn merge_source(&self) -> MergeSource {
        MergeSource {
            conversation_id: self.id.unwrap_or_default(),
            messages: self.messages.iter().map(|m| m.message_id).collect(),
            thread_ids: self.thread_ids.clone(),
            users: self.users.keys().copied().collect(),
            inboxes: self.inboxes.keys().copied().collect(),
            tags: self.tags.iter().cloned().collect(),
        }
    }

    fn has_message(&self, id: Uuid) -> bool {
        self.messages.iter().any(|m| m.message_id == id)
    }

    /// An open, unmerged conversation.
    fn live(&self) -> Result<(), ConversationError> {
        if let Some(into) = self.merged_into {
            return Err(ConversationError::Merged { into });
        }
        if self.id.is_none() {
            return Err(ConversationError::NotOpened);
        }
        Ok(())
    }

    /// Agents must take part; administrators and the system may act on any conversation.
    fn require_participant(&self, by: Actor) -> Result<(), ConversationError> {
        match by {
            Actor::User(u) if !self.is_participant(u) => Err(ConversationError::NotAParticipant(u)),
            _ => Ok(()),
        }
    }

    fn reply_message(
        &self,
        reply: Reply,
        by: Actor,
        at_us: i64,
    ) -> Result<Message, ConversationError> {
        let body = reply.body.trim_end().to_owned();
        if body.trim().is_empty() {
            return Err(ConversationError::EmptyReply);
        }
        let to = if reply.to.is_empty() {
            self.reply_target.clone()
        } else {
            reply.to
        };
        if to.is_empty() {
            return Err(ConversationError::NoRecipient);
        }
        let domain = reply
            .from
            .address
            .rsplit_once('@')
            .map_or("postvak.invalid", |(_, d)| d)
            .to_owned();
        let subject = reply
            .subject
            .filter(|s| !s.trim().is_empty())
            .or_else(|| self.subject.as_deref().map(reply_subject));
        Ok(Message {
            message_id: reply.message_id,
            message_id_header: Some(
                reply
                    .message_id_header
                    .unwrap_or_else(|| format!("{}@{domain}", reply.message_id)),
            ),
            in_reply_to: self.thread_ids.last().cloned().into_iter().collect(),
            references: self.thread_ids.clone(),
            subject,
            from: vec![reply.from],
            reply_to: reply.reply_to,
            to,
            cc: reply.cc,
            snippet: snippet(&body),
            body_text: Some(body),
            text_blob: None,
            html_blob: None,
            attachments: u32::try_from(reply.files.len()).unwrap_or(u32::MAX),
            files: reply.files,
            body_html: reply.body_html.filter(|h| !h.trim().is_empty()),
            auto_reply: false,
            author: by.user(),
            at_us,
            search_words: Vec::new(),
        })
    }
}

/// `Re: ` + the subject, unless it already starts so.
pub fn reply_subject(subject: &str) -> String {
    let s = subject.trim();
    let lower = s.to_lowercase();
    if lower.starts_with("re:") || lower.starts_with("aw:") || lower.starts_with("sv:") {
        s.to_owned()
    } else {
        format!("Re: {s}")
    }
}

/// The first characters of a text, on one line, for lists.
pub fn snippet(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(160).collect()
}

/// A tag as stored: trimmed, lower case; 1–64 characters without whitespace or controls.
pub fn normalise_tag(tag: &str) -> Result<String, ConversationError> {
    let t = tag.trim().to_lowercase();
    let ok = !t.is_empty()
        && t.chars().count() <= 64
        && !t.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(t)
    } else {
        Err(ConversationError::InvalidTag(tag.to_owned()))
    }
}

/// Words shorter than this are not indexed (and not searched for).
pub const SEARCH_MIN_CHARS: usize = 2;
/// Longer words are indexed by their first this-many characters.
pub const SEARCH_MAX_CHARS: usize = 64;
/// Prefixes of this many characters…
pub const SEARCH_PREFIX_MIN: usize = 3;
/// …up to this many are indexed too (`invoi*` finds "invoice").
pub const SEARCH_PREFIX_MAX: usize = 12;

/// The words of a text as the search index keeps them: lower case (Unicode-aware), split at
/// every character that is neither a letter nor a digit, 2–64 characters, no stemming.
pub fn search_words(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut buf = String::new();
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        if normalise_word(w, &mut buf) && !out.contains(buf.as_str()) {
            out.insert(buf.clone());
        }
    }
    out
}

/// One word as the index keeps it, written into `buf` (reused, so a repeated word costs no
/// allocation): false when it is too short to index. ASCII words, nearly all of a typical
/// mail, are lowered byte-wise; others take Unicode's full lower-casing, as before.
fn normalise_word(w: &str, buf: &mut String) -> bool {
    buf.clear();
    if w.is_ascii() {
        if w.len() < SEARCH_MIN_CHARS {
            return false;
        }
        buf.push_str(&w[..w.len().min(SEARCH_MAX_CHARS)]);
        buf.make_ascii_lowercase();
        return true;
    }
    if w.chars().count() < SEARCH_MIN_CHARS {
        return false;
    }
    buf.extend(w.to_lowercase().chars().take(SEARCH_MAX_CHARS));
    true
}

/// Most distinct words of one inbound body that are indexed (ADR 0026): with their prefixes
/// at most ~11 blind terms each, so a message adds at most ~11,000 index rows.
pub const SEARCH_BODY_MAX_WORDS: usize = 1_000;
/// Only this many bytes of a body are read for its words (a 20 MB text is not scanned whole).
pub const SEARCH_BODY_MAX_BYTES: usize = 512 * 1024;

/// The distinct words of a message body as the index keeps them ([`search_words`]), in the
/// order they first appear, at most [`SEARCH_BODY_MAX_WORDS`] from the first
/// [`SEARCH_BODY_MAX_BYTES`]: a long mail is searchable well past its snippet, at a bounded
/// cost.
pub fn body_search_words(text: &str) -> Vec<String> {
    let text = &text[..text.floor_char_boundary(SEARCH_BODY_MAX_BYTES)];
    // Hashing, not ordering: a 50 KB body has thousands of words and few distinct ones.
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    let mut buf = String::new();
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        if !normalise_word(w, &mut buf) || seen.contains(buf.as_str()) {
            continue;
        }
        seen.insert(buf.clone());
        out.push(buf.clone());
        if out.len() == SEARCH_BODY_MAX_WORDS {
            break;
        }
    }
    out
}

/// The prefixes of `word` that are indexed: its first 3–12 characters (the word itself when
/// it is that short, so that `invoice*` finds "invoice" too). Slices of `word`: a body brings
/// thousands of them, and none is allocated.
pub fn search_prefixes(word: &str) -> impl Iterator<Item = &str> + '_ {
    // Where the first k characters end, for k = 0, 1, …, n.
    word.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(word.len()))
        .skip(SEARCH_PREFIX_MIN)
        .take(SEARCH_PREFIX_MAX - SEARCH_PREFIX_MIN + 1)
        .map(move |end| &word[..end])
}

/// One term of a search query.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SearchTerm {
    /// A whole word.
    Word(String),
    /// `abc*`: words starting so (matched on at most the first 12 characters).
    Prefix(String),
}

/// A query could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchQueryError {
    #[error("the query has no word of at least {SEARCH_MIN_CHARS} letters or digits")]
    Empty,
    #[error("a prefix search needs at least {SEARCH_PREFIX_MIN} letters before `*`: {0}")]
    ShortPrefix(String),
    #[error("at most {max} search terms, not {got}")]
    TooManyTerms { max: usize, got: usize },
}

/// Most terms a query may have.
pub const SEARCH_MAX_TERMS: usize = 16;

/// Parses a query: words (all must match), a trailing `*` makes a word a prefix.
pub fn parse_search(q: &str) -> Result<Vec<SearchTerm>, SearchQueryError> {
    let mut out = BTreeSet::new();
    for raw in q.split_whitespace() {
        let prefix = raw.ends_with('*');
        let words = search_words(raw);
        let n = words.len();
        for (i, w) in words.into_iter().enumerate() {
            // `foo-bar*` is two whole words: a star only makes a single word a prefix.
            if prefix && n == 1 && i == 0 {
                if w.chars().count() < SEARCH_PREFIX_MIN {
                    return Err(SearchQueryError::ShortPrefix(raw.to_owned()));
                }
                out.insert(SearchTerm::Prefix(
                    w.chars().take(SEARCH_PREFIX_MAX).collect(),
                ));
            } else {
                out.insert(SearchTerm::Word(w));
            }
        }
    }
    if out.is_empty() {
        return Err(SearchQueryError::Empty);
    }
    if out.len() > SEARCH_MAX_TERMS {
        return Err(SearchQueryError::TooManyTerms {
            max: SEARCH_MAX_TERMS,
            got: out.len(),
        });
    }
    Ok(out.into_iter().collect())
}

/// Variables a template may use.
pub const TEMPLATE_VARIABLES: [&str; 4] = [
    "contact.name",
    "agent.name",
    "agent.signature",
    "inbox.name",
];

/// A template names a variable nobody fills in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown template variable {{{{{0}}}}}; known: contact.name, agent.name, agent.signature, inbox.name"
)]
pub struct UnknownVariable(pub String);

/// The `{{name}}` placeholders of a template (spaces inside the braces allowed).
fn placeholders(text: &str) -> impl Iterator<Item = (usize, usize, &str)> {
    let mut from = 0;
    std::iter::from_fn(move || {
        let start = from + text.get(from..)?.find("{{")?;
        let end = start + 2 + text.get(start + 2..)?.find("}}")?;
        from = end + 2;
        Some((start, end + 2, text.get(start + 2..end)?.trim()))
    })
}

/// Checks that a template uses only known variables.
pub fn check_template(text: &str) -> Result<(), UnknownVariable> {
    for (_, _, name) in placeholders(text) {
        if !TEMPLATE_VARIABLES.contains(&name) {
            return Err(UnknownVariable(name.to_owned()));
        }
    }
    Ok(())
}

/// Fills a template in: each known `{{variable}}` becomes its value (empty when unknown for
/// this conversation); anything else is left as written.
pub fn render_template(text: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end, name) in placeholders(text) {
        out.push_str(&text[last..start]);
        if TEMPLATE_VARIABLES.contains(&name) {
            out.push_str(&value(name).unwrap_or_default());
        } else {
            out.push_str(&text[start..end]);
        }
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

fn push_unique(list: &mut Vec<String>, id: &str) {
    if !id.is_empty() && !list.iter().any(|x| x == id) {
        list.push(id.to_owned());
    }
}

impl Aggregate for Conversation {
    type Command = ConversationCommand;
    type Event = ConversationEvent;
    type Error = ConversationError;

    fn decide(
        &self,
        command: ConversationCommand,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        use ConversationCommand as C;
        use ConversationEvent as E;
        match command {
            C::OpenFromMessage {
                conversation_id,
                inbox_id,
                members,
                message,
            } => {
                if let Some(into) = self.merged_into {
                    return Err(ConversationError::Merged { into });
                }
                if self.is_open() {
                    // Ingest decided it was new, but another mail opened it first: extend.
                    return self.decide(C::ReceiveMessage { message });
                }
                Ok(vec![
                    E::Opened {
                        conversation_id,
                        inbox_id,
                        origin: Origin::Message,
                        participants: dedup(members),
                        by: None,
                        at_us: message.at_us,
                    },
                    E::MessageReceived(message),
                ])
            }
            C::Open {
                conversation_id,
                inbox_id,
                members,
                by,
                at_us,
            } => {
                if self.is_open() {
                    return Err(ConversationError::AlreadyOpened);
                }
                let mut participants = members;
                participants.extend(by.user());
                Ok(vec![E::Opened {
                    conversation_id,
                    inbox_id,
                    origin: Origin::Agent,
                    participants: dedup(participants),
                    by: by.user(),
                    at_us,
                }])
            }
            C::ReceiveMessage { message } => {
                self.live()?;
                if self.has_message(message.message_id) {
                    return Ok(Vec::new());
                }
                let at_us = message.at_us;
                let mut out = vec![E::MessageReceived(message)];
                // A customer writing again wakes the conversation and reopens it.
                if self.snoozed_until_us.is_some() {
                    out.push(E::Woken { by: None, at_us });
                }
                if self.status == Status::Closed || self.status == Status::Pending {
                    out.push(E::StatusChanged {
                        status: Status::Open,
                        by: None,
                        at_us,
                    });
                }
                Ok(out)
            }
            C::Reply { reply, by, at_us } => {
                self.live()?;
                self.require_participant(by)?;
                if self.has_message(reply.message_id) {
                    return Ok(Vec::new());
                }
                Ok(vec![E::ReplyQueued(self.reply_message(reply, by, at_us)?)])
            }
            C::AddNote {
                note_id,
                body,
                mentions,
                by,
                at_us,
            } => {
                self.live()?;
                self.require_participant(by)?;
                let body = body.trim().to_owned();
                if body.is_empty() {
                    return Err(ConversationError::EmptyNote);
                }
                Ok(vec![E::NoteAdded {
                    note_id,
                    author: by.user(),
                    body,
                    mentions: dedup(mentions),
                    at_us,
                }])
            }
            C::SetStatus { status, by, at_us } => {
                self.live()?;
                self.require_participant(by)?;
                if self.status == status {
                    return Ok(Vec::new());
                }
                Ok(vec![E::StatusChanged {
                    status,
                    by: by.user(),
                    at_us,
                }])
            }
            C::Snooze {
                until_us,
                by,
                at_us,
            } => {
                self.live()?;
                self.require_participant(by)?;
                if until_us <= at_us {
                    return Err(ConversationError::SnoozeInPast);
                }
                if self.snoozed_until_us == Some(until_us) {
                    return Ok(Vec::new());
                }
                Ok(vec![E::Snoozed {
                    until_us,
                    by: by.user(),
                    at_us,
                }])
            }
            C::Wake { by, manual, at_us } => {
                self.live()?;
                self.require_participant(by)?;
                let Some(until) = self.snoozed_until_us else {
                    return Err(ConversationError::NotSnoozed);
                };
                if !manual && until > at_us {
                    return Err(ConversationError::SnoozeNotOver);
                }
                Ok(vec![E::Woken {
                    by: by.user(),
                    at_us,
                }])
            }
            C::SetPriority {
                priority,
                by,
                at_us,
            } => {
                self.live()?;
                self.require_participant(by)?;
                if self.priority == priority {
                    return Ok(Vec::new());
                }
                Ok(vec![E::PriorityChanged {
                    priority,
                    by: by.user(),
                    at_us,
                }])
            }
            C::AddTag { tag, by, at_us } => {
                self.live()?;
                self.require_participant(by)?;
                let tag = normalise_tag(&tag)?;
                if self.tags.contains(&tag) {
                    return Ok(Vec::new());
                }
                Ok(vec![E::Tagged {
                    tag,
                    by: by.user(),
                    at_us,
                }])
            }
            C::RemoveTag { tag, by, at_us } => {
                self.live()?;
                self.require_participant(by)?;
                let tag = normalise_tag(&tag)?;
                if !self.tags.contains(&tag) {
                    return Ok(Vec::new());
                }
                Ok(vec![E::Untagged {
                    tag,
                    by: by.user(),
                    at_us,
                }])
            }
            C::Claim { user, at_us } => {
                self.live()?;
                match self.assignee {
                    Some(holder) if holder == user => Ok(Vec::new()),
                    Some(holder) => Err(ConversationError::ClaimedBy { holder }),
                    None => {
                        self.require_participant(Actor::User(user))?;
                        Ok(vec![E::Assigned {
                            assignee: user,
                            claimed: true,
                            by: Some(user),
                            at_us,
                        }])
                    }
                }
            }
            C::Assign {
                assignee,
                by,
                at_us,
            } => {
                self.live()?;
                self.require_participant(by)?;
                if self.assignee == Some(assignee) {
                    return Ok(Vec::new());
                }
                Ok(vec![E::Assigned {
                    assignee,
                    claimed: false,
                    by: by.user(),
                    at_us,
                }])
            }
            C::Unassign { by, at_us } => {
                self.live()?;
                self.require_participant(by)?;
                Ok(self
                    .assignee
                    .map(|previous| E::Unassigned {
                        previous,
                        by: by.user(),
                        at_us,
                    })
                    .into_iter()
                    .collect())
            }
            C::AddParticipant {
                participant,
                members,
                by,
                at_us,
            } => {
                self.live()?;
                self.require_participant(by)?;
                let present = match participant {
                    ParticipantRef::User(u) => {
                        self.users.get(&u).is_some_and(|s| s.contains(&None))
                    }
                    ParticipantRef::Inbox(i) => self.inboxes.get(&i).is_some_and(|v| !v.archived),
                };
                if present {
                    let id = match participant {
                        ParticipantRef::User(u) | ParticipantRef::Inbox(u) => u,
                    };
                    return Err(ConversationError::AlreadyParticipant(id));
                }
                Ok(vec![E::ParticipantAdded {
                    participant,
                    members: match participant {
                        ParticipantRef::Inbox(_) => dedup(members),
                        ParticipantRef::User(_) => Vec::new(),
                    },
                    by: by.user(),
                    at_us,
                }])
            }
            C::ArchiveForInbox {
                inbox_id,
                by,
                at_us,
            } => {
                self.live()?;
                let Some(view) = self.inboxes.get(&inbox_id) else {
                    return Err(ConversationError::InboxNotParticipating(inbox_id));
                };
                if view.archived {
                    return Ok(Vec::new());
                }
                let others_see_it = self.live_inboxes().any(|i| i != inbox_id)
                    || self.added_users().next().is_some();
                if !others_see_it {
                    return Err(ConversationError::NoOtherParticipant);
                }
                Ok(vec![E::ArchivedForInbox {
                    inbox_id,
                    by: by.user(),
                    at_us,
                }])
            }
            C::Move {
                to_inbox,
                members,
                by,
                at_us,
            } => {
                self.live()?;
                self.require_participant(by)?;
                if to_inbox == self.inbox_id {
                    return Err(ConversationError::SameInbox(to_inbox));
                }
                let mut out = Vec::new();
                if let Some(previous) = self.assignee {
                    out.push(E::Unassigned {
                        previous,
                        by: by.user(),
                        at_us,
                    });
                }
                out.push(E::Moved {
                    from_inbox: self.inbox_id,
                    to_inbox,
                    members: dedup(members),
                    by: by.user(),
                    at_us,
                });
                Ok(out)
            }
            C::MergeInto { target, by, at_us } => {
                self.live()?;
                self.require_participant(by)?;
                if Some(target) == self.id {
                    return Err(ConversationError::MergeIntoSelf);
                }
                Ok(vec![E::MergedInto {
                    target,
                    by: by.user(),
                    at_us,
                }])
            }
            C::AbsorbMerge { source, by, at_us } => {
                self.live()?;
                self.require_participant(by)?;
                if Some(source.conversation_id) == self.id {
                    return Err(ConversationError::MergeIntoSelf);
                }
                if self.merged_from.contains(&source.conversation_id) {
                    return Ok(Vec::new());
                }
                Ok(vec![E::MergedFrom {
                    source,
                    by: by.user(),
                    at_us,
                }])
            }
            C::RecordDeliveryFailure(failure) => {
                if !self.is_open() {
                    return Err(ConversationError::NotOpened);
                }
                let ours = self.messages.iter().any(|m| {
                    m.message_id == failure.message_id && m.direction == Direction::Outbound
                });
                if !ours || self.failed_replies.contains(&failure.message_id) {
                    return Ok(Vec::new());
                }
                Ok(vec![E::ReplyDeliveryFailed(failure)])
            }
        }
    }

    fn evolve(mut self, event: &ConversationEvent) -> Self {
        use ConversationEvent as E;
        self.version += 1;
        self.updated_at_us = self.updated_at_us.max(event.at_us());
        match event {
            E::Opened {
                conversation_id,
                inbox_id,
                origin,
                participants,
                by,
                at_us,
            } => {
                self.id = Some(*conversation_id);
                self.inbox_id = *inbox_id;
                self.origin = Some(*origin);
                self.opened_at_us = *at_us;
                self.inboxes.insert(*inbox_id, InboxView::default());
                for u in participants {
                    self.users.entry(*u).or_default().insert(Some(*inbox_id));
                }
                if let Some(b) = by {
                    self.users.entry(*b).or_default().insert(None);
                }
            }
            E::MessageReceived(m) | E::ReplyQueued(m) => {
                let direction = if matches!(event, E::MessageReceived(_)) {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                };
                self.messages.push(MessageRef {
                    message_id: m.message_id,
                    direction,
                });
                for id in m.references.iter().chain(&m.in_reply_to) {
                    push_unique(&mut self.thread_ids, id);
                }
                if let Some(id) = &m.message_id_header {
                    push_unique(&mut self.thread_ids, id);
                }
                if self.subject.is_none() {
                    self.subject = m.subject.clone();
                }
                self.snippet = m.snippet.clone();
                if direction == Direction::Inbound {
                    let target = if m.reply_to.is_empty() {
                        &m.from
                    } else {
                        &m.reply_to
                    };
                    if !target.is_empty() {
                        self.reply_target = target.clone();
                    }
                } else if self.reply_target.is_empty() {
                    // An agent wrote first: the customer's answer goes to the same people.
                    self.reply_target = m.to.clone();
                }
            }
            E::NoteAdded { .. } => self.notes += 1,
            E::StatusChanged { status, .. } => self.status = *status,
            E::Snoozed { until_us, .. } => self.snoozed_until_us = Some(*until_us),
            E::Woken { .. } => self.snoozed_until_us = None,
            E::PriorityChanged { priority, .. } => self.priority = *priority,
            E::Tagged { tag, .. } => {
                self.tags.insert(tag.clone());
            }
            E::Untagged { tag, .. } => {
                self.tags.remove(tag);
            }
            E::Assigned { assignee, .. } => {
                self.assignee = Some(*assignee);
                if !self.users.contains_key(assignee) {
                    self.users.entry(*assignee).or_default().insert(None);
                }
            }
            E::Unassigned { .. } => self.assignee = None,
            E::ParticipantAdded {
                participant,
                members,
                ..
            } => match participant {
                ParticipantRef::User(u) => {
                    self.users.entry(*u).or_default().insert(None);
                }
                ParticipantRef::Inbox(i) => {
                    self.inboxes.insert(*i, InboxView::default());
                    for u in members {
                        self.users.entry(*u).or_default().insert(Some(*i));
                    }
                }
            },
            E::ArchivedForInbox { inbox_id, .. } => {
                if let Some(v) = self.inboxes.get_mut(inbox_id) {
                    v.archived = true;
                }
            }
            E::Moved {
                from_inbox,
                to_inbox,
                members,
                ..
            } => {
                self.inboxes.remove(from_inbox);
                for sources in self.users.values_mut() {
                    sources.remove(&Some(*from_inbox));
                }
                self.users.retain(|_, s| !s.is_empty());
                self.inbox_id = *to_inbox;
                self.inboxes.insert(*to_inbox, InboxView::default());
                for u in members {
                    self.users.entry(*u).or_default().insert(Some(*to_inbox));
                }
            }
            E::MergedInto { target, .. } => self.merged_into = Some(*target),
            E::ReplyDeliveryFailed(f) => {
                self.failed_replies.insert(f.message_id);
            }
            E::MergedFrom { source, .. } => {
                self.merged_from.push(source.conversation_id);
                for id in &source.messages {
                    if !self.has_message(*id) {
                        self.messages.push(MessageRef {
                            message_id: *id,
                            direction: Direction::Inbound,
                        });
                    }
                }
                for id in &source.thread_ids {
                    push_unique(&mut self.thread_ids, id);
                }
                for u in &source.users {
                    self.users.entry(*u).or_default().insert(None);
                }
                for i in &source.inboxes {
                    self.inboxes.entry(*i).or_default();
                }
                for t in &source.tags {
                    self.tags.insert(t.clone());
                }
            }
        }
        self
    }
}

fn dedup(ids: Vec<Uuid>) -> Vec<Uuid> {
    let mut seen = BTreeSet::new();
    ids.into_iter().filter(|i| seen.insert(*i)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_700_000_000_000_000;
    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    const CONV: u128 = 100;
    const INBOX: u128 = 10;
    const HUB: u128 = 11;
    const ALICE: u128 = 1; // member of INBOX when it opened
    const BOB: u128 = 2; // member of INBOX when it opened
    const CAROL: u128 = 3; // joined INBOX later
    const DAVE: u128 = 4; // member of HUB

    /// given/when/then over the aggregate (cqrs-es `TestFramework` style).
    struct Given(Conversation);

    fn given(events: &[ConversationEvent]) -> Given {
        Given(Conversation::replay(events))
    }

    impl Given {
        fn when(
            &self,
            cmd: ConversationCommand,
        ) -> Result<Vec<ConversationEvent>, ConversationError> {
            self.0.decide(cmd)
        }
        fn then_state(&self, cmd: ConversationCommand) -> Conversation {
            let events = self.0.decide(cmd).unwrap();
            events.iter().fold(self.0.clone(), |s, e| s.evolve(e))
        }
    }

    fn customer() -> Mailbox {
        Mailbox {
            name: Some("Eve Customer".into()),
            address: "eve@example.org".into(),
        }
    }

    fn inbound(n: u128, header: &str, at_us: i64) -> Message {
        Message {
            message_id: id(n),
            message_id_header: Some(header.into()),
            subject: Some("Printer on fire".into()),
            from: vec![customer()],
            to: vec![Mailbox {
                name: None,
                address: "support@acme.test".into(),
            }],
            snippet: "It is on fire".into(),
            at_us,
            ..Message::default()
        }
    }

    fn opened() -> Vec<ConversationEvent> {
        vec![
            ConversationEvent::Opened {
                conversation_id: id(CONV),
                inbox_id: id(INBOX),
                origin: Origin::Message,
                participants: vec![id(ALICE), id(BOB)],
                by: None,
                at_us: T0,
            },
            ConversationEvent::MessageReceived(inbound(1000, "m1@example.org", T0)),
        ]
    }

    fn with(
        mut base: Vec<ConversationEvent>,
        more: &[ConversationEvent],
    ) -> Vec<ConversationEvent> {
        base.extend_from_slice(more);
        base
    }

    fn alice() -> Actor {
        Actor::User(id(ALICE))
    }

    // --- opening and the participant snapshot ---

    #[test]
    fn given_nothing_when_message_received_then_opened_with_the_inbox_members_as_participants() {
        let events = given(&[])
            .when(ConversationCommand::OpenFromMessage {
                conversation_id: id(CONV),
                inbox_id: id(INBOX),
                members: vec![id(ALICE), id(BOB), id(ALICE)],
                message: inbound(1000, "m1@example.org", T0),
            })
            .unwrap();
        assert_eq!(events, opened());
        let state = Conversation::replay(&events);
        assert!(state.is_participant(id(ALICE)) && state.is_participant(id(BOB)));
        assert_eq!(state.version, 2);
        assert_eq!(state.subject.as_deref(), Some("Printer on fire"));
        assert_eq!(state.reply_target, vec![customer()]);
    }

    #[test]
    fn given_opened_when_someone_joins_the_inbox_later_then_they_are_not_a_participant() {
        // CAROL joined the inbox after the conversation opened: the snapshot does not change,
        // and a later message doesn't add her either.
        let g = given(&opened());
        let state = g.then_state(ConversationCommand::ReceiveMessage {
            message: inbound(1001, "m2@example.org", T0 + 5),
        });
        assert!(!state.is_participant(id(CAROL)));
        assert_eq!(
            state.decide(ConversationCommand::AddNote {
                note_id: id(1),
                body: "me too".into(),
                mentions: vec![],
                by: Actor::User(id(CAROL)),
                at_us: T0 + 6,
            }),
            Err(ConversationError::NotAParticipant(id(CAROL)))
        );
    }

    #[test]
    fn given_opened_when_carol_is_added_explicitly_then_she_takes_part() {
        let state = given(&opened()).then_state(ConversationCommand::AddParticipant {
            participant: ParticipantRef::User(id(CAROL)),
            members: vec![],
            by: alice(),
            at_us: T0 + 1,
        });
        assert!(state.is_participant(id(CAROL)));
        assert_eq!(state.added_users().collect::<Vec<_>>(), vec![id(CAROL)]);
    }

    #[test]
    fn given_opened_when_opened_again_from_a_message_then_the_message_extends_it() {
        let events = given(&opened())
            .when(ConversationCommand::OpenFromMessage {
                conversation_id: id(CONV),
                inbox_id: id(INBOX),
                members: vec![id(CAROL)],
                message: inbound(1001, "m2@example.org", T0 + 1),
            })
            .unwrap();
        assert_eq!(
            events,
            vec![ConversationEvent::MessageReceived(inbound(
                1001,
                "m2@example.org",
                T0 + 1
            ))]
        );
    }

    #[test]
    fn given_nothing_when_an_agent_writes_first_then_opened_by_the_agent() {
        let events = given(&[])
            .when(ConversationCommand::Open {
                conversation_id: id(CONV),
                inbox_id: id(INBOX),
                members: vec![id(BOB)],
                by: alice(),
                at_us: T0,
            })
            .unwrap();
        let state = Conversation::replay(&events);
        assert_eq!(state.origin, Some(Origin::Agent));
        assert!(state.is_participant(id(ALICE)) && state.is_participant(id(BOB)));
        assert_eq!(
            state.decide(ConversationCommand::Open {
                conversation_id: id(CONV),
                inbox_id: id(INBOX),
                members: vec![],
                by: alice(),
                at_us: T0,
            }),
            Err(ConversationError::AlreadyOpened)
        );
    }

    #[test]
    fn given_nothing_when_any_change_then_not_opened() {
        assert_eq!(
            given(&[]).when(ConversationCommand::Claim {
                user: id(ALICE),
                at_us: T0
            }),
            Err(ConversationError::NotOpened)
        );
    }

    // --- messages ---

    #[test]
    fn given_closed_and_snoozed_when_the_customer_writes_again_then_woken_and_reopened() {
        let g = given(&with(
            opened(),
            &[
                ConversationEvent::StatusChanged {
                    status: Status::Closed,
                    by: Some(id(ALICE)),
                    at_us: T0 + 1,
                },
                ConversationEvent::Snoozed {
                    until_us: T0 + 1_000,
                    by: Some(id(ALICE)),
                    at_us: T0 + 1,
                },
            ],
        ));
        let events = g
            .when(ConversationCommand::ReceiveMessage {
                message: inbound(1001, "m2@example.org", T0 + 2),
            })
            .unwrap();
        assert_eq!(
            events,
            vec![
                ConversationEvent::MessageReceived(inbound(1001, "m2@example.org", T0 + 2)),
                ConversationEvent::Woken {
                    by: None,
                    at_us: T0 + 2
                },
                ConversationEvent::StatusChanged {
                    status: Status::Open,
                    by: None,
                    at_us: T0 + 2
                },
            ]
        );
    }

    #[test]
    fn given_a_message_when_received_again_then_nothing_changes() {
        assert_eq!(
            given(&opened()).when(ConversationCommand::ReceiveMessage {
                message: inbound(1000, "m1@example.org", T0),
            }),
            Ok(vec![])
        );
    }

    // --- replying as the inbox ---

    fn reply(n: u128, body: &str) -> Reply {
        Reply {
            message_id: id(n),
            from: Mailbox {
                name: Some("Acme Support".into()),
                address: "support@acme.test".into(),
            },
            to: vec![],
            cc: vec![],
            subject: None,
            body: body.into(),
            message_id_header: None,
            reply_to: vec![],
            body_html: None,
            files: vec![],
        }
    }

    #[test]
    fn given_a_thread_when_reply_then_sent_from_the_inbox_with_threading_headers() {
        let mut second = inbound(1001, "m2@example.org", T0 + 1);
        second.in_reply_to = vec!["m1@example.org".into()];
        second.references = vec!["m1@example.org".into()];
        let g = given(&with(
            opened(),
            &[ConversationEvent::MessageReceived(second)],
        ));
        let events = g
            .when(ConversationCommand::Reply {
                reply: reply(2000, "We are on it.\n"),
                by: alice(),
                at_us: T0 + 2,
            })
            .unwrap();
        let [ConversationEvent::ReplyQueued(m)] = events.as_slice() else {
            panic!("expected one reply, got {events:?}");
        };
        assert_eq!(m.from[0].address, "support@acme.test");
        assert_eq!(m.to, vec![customer()]);
        assert_eq!(
            m.message_id_header.as_deref(),
            Some(format!("{}@acme.test", id(2000)).as_str())
        );
        assert_eq!(m.in_reply_to, vec!["m2@example.org".to_owned()]);
        assert_eq!(
            m.references,
            vec!["m1@example.org".to_owned(), "m2@example.org".to_owned()]
        );
        assert_eq!(m.subject.as_deref(), Some("Re: Printer on fire"));
        assert_eq!(m.body_text.as_deref(), Some("We are on it."));
        assert_eq!(m.author, Some(id(ALICE)));
        // The reply becomes part of the thread: the next one references it.
        let state = g.then_state(ConversationCommand::Reply {
            reply: reply(2000, "We are on it."),
            by: alice(),
            at_us: T0 + 2,
        });
        assert_eq!(
            state.thread_ids.last().map(String::as_str),
            Some(format!("{}@acme.test", id(2000)).as_str())
        );
        assert_eq!(
            state.messages.last().map(|m| m.direction),
            Some(Direction::Outbound)
        );
    }

    #[test]
    fn given_a_reply_when_its_delivery_fails_then_recorded_once_and_only_for_our_messages() {
        let mut events = opened();
        events.push(ConversationEvent::ReplyQueued(Message {
            message_id: id(2000),
            author: Some(id(ALICE)),
            at_us: T0 + 1,
            ..Message::default()
        }));
        let g = given(&events);
        let failure = |message: u128| DeliveryFailure {
            message_id: id(message),
            reason: "rejected".into(),
            permanent: true,
            smtp_code: Some(550),
            detail: "550 no such user".into(),
            author: Some(id(ALICE)),
            at_us: T0 + 2,
        };
        let recorded = g
            .when(ConversationCommand::RecordDeliveryFailure(failure(2000)))
            .unwrap();
        assert_eq!(
            recorded,
            vec![ConversationEvent::ReplyDeliveryFailed(failure(2000))]
        );
        let state = g.then_state(ConversationCommand::RecordDeliveryFailure(failure(2000)));
        assert!(state.failed_replies.contains(&id(2000)));
        assert_eq!(
            Given(state).when(ConversationCommand::RecordDeliveryFailure(failure(2000))),
            Ok(Vec::new())
        );
        // An inbound message or a stranger's id is not ours to fail.
        assert_eq!(
            g.when(ConversationCommand::RecordDeliveryFailure(failure(1000))),
            Ok(Vec::new())
        );
        assert_eq!(
            given(&[]).when(ConversationCommand::RecordDeliveryFailure(failure(2000))),
            Err(ConversationError::NotOpened)
        );
    }

    #[test]
    fn given_reply_to_header_when_reply_then_it_goes_to_reply_to() {
        let mut m = inbound(1000, "m1@example.org", T0);
        m.reply_to = vec![Mailbox {
            name: None,
            address: "tickets@example.org".into(),
        }];
        let g = given(&[opened()[0].clone(), ConversationEvent::MessageReceived(m)]);
        let events = g
            .when(ConversationCommand::Reply {
                reply: reply(2000, "ok"),
                by: alice(),
                at_us: T0 + 1,
            })
            .unwrap();
        let [ConversationEvent::ReplyQueued(m)] = events.as_slice() else {
            panic!()
        };
        assert_eq!(m.to[0].address, "tickets@example.org");
    }

    #[test]
    fn given_opened_when_empty_reply_or_stranger_replies_then_refused() {
        let g = given(&opened());
        assert_eq!(
            g.when(ConversationCommand::Reply {
                reply: reply(2000, "  \n"),
                by: alice(),
                at_us: T0
            }),
            Err(ConversationError::EmptyReply)
        );
        assert_eq!(
            g.when(ConversationCommand::Reply {
                reply: reply(2000, "hi"),
                by: Actor::User(id(CAROL)),
                at_us: T0
            }),
            Err(ConversationError::NotAParticipant(id(CAROL)))
        );
        // An administrator may, and so may an API key.
        assert!(
            g.when(ConversationCommand::Reply {
                reply: reply(2000, "hi"),
                by: Actor::Admin(id(CAROL)),
                at_us: T0
            })
            .is_ok()
        );
    }

    #[test]
    fn given_agent_opened_without_recipient_when_reply_without_to_then_no_recipient() {
        let g = given(&[ConversationEvent::Opened {
            conversation_id: id(CONV),
            inbox_id: id(INBOX),
            origin: Origin::Agent,
            participants: vec![id(ALICE)],
            by: Some(id(ALICE)),
            at_us: T0,
        }]);
        assert_eq!(
            g.when(ConversationCommand::Reply {
                reply: reply(2000, "hi"),
                by: alice(),
                at_us: T0
            }),
            Err(ConversationError::NoRecipient)
        );
    }

    // --- notes ---

    #[test]
    fn given_opened_when_note_with_mentions_then_noted() {
        let events = given(&opened())
            .when(ConversationCommand::AddNote {
                note_id: id(3000),
                body: " @bob look ".into(),
                mentions: vec![id(BOB), id(BOB)],
                by: alice(),
                at_us: T0 + 1,
            })
            .unwrap();
        assert_eq!(
            events,
            vec![ConversationEvent::NoteAdded {
                note_id: id(3000),
                author: Some(id(ALICE)),
                body: "@bob look".into(),
                mentions: vec![id(BOB)],
                at_us: T0 + 1
            }]
        );
        assert_eq!(
            given(&opened()).when(ConversationCommand::AddNote {
                note_id: id(3000),
                body: " ".into(),
                mentions: vec![],
                by: alice(),
                at_us: T0
            }),
            Err(ConversationError::EmptyNote)
        );
    }

    // --- status, snooze, priority, tags ---

    #[test]
    fn given_open_when_status_changes_then_changed_and_same_status_is_a_no_op() {
        let g = given(&opened());
        assert_eq!(
            g.when(ConversationCommand::SetStatus {
                status: Status::Spam,
                by: alice(),
                at_us: T0 + 1
            }),
            Ok(vec![ConversationEvent::StatusChanged {
                status: Status::Spam,
                by: Some(id(ALICE)),
                at_us: T0 + 1
            }])
        );
        assert_eq!(
            g.when(ConversationCommand::SetStatus {
                status: Status::Open,
                by: alice(),
                at_us: T0 + 1
            }),
            Ok(vec![])
        );
    }

    #[test]
    fn given_open_when_snoozed_then_snoozed_until_and_wakes_by_itself_only_when_over() {
        let g = given(&opened());
        assert_eq!(
            g.when(ConversationCommand::Snooze {
                until_us: T0,
                by: alice(),
                at_us: T0
            }),
            Err(ConversationError::SnoozeInPast)
        );
        let state = g.then_state(ConversationCommand::Snooze {
            until_us: T0 + 100,
            by: alice(),
            at_us: T0,
        });
        assert!(state.is_snoozed(T0 + 99));
        assert!(!state.is_snoozed(T0 + 100));
        assert_eq!(
            state.decide(ConversationCommand::Wake {
                by: Actor::System,
                manual: false,
                at_us: T0 + 99
            }),
            Err(ConversationError::SnoozeNotOver)
        );
        let woken = Given(state.clone()).then_state(ConversationCommand::Wake {
            by: Actor::System,
            manual: false,
            at_us: T0 + 100,
        });
        assert_eq!(woken.snoozed_until_us, None);
        // By hand, any time.
        assert!(
            state
                .decide(ConversationCommand::Wake {
                    by: alice(),
                    manual: true,
                    at_us: T0 + 1
                })
                .is_ok()
        );
        assert_eq!(
            woken.decide(ConversationCommand::Wake {
                by: alice(),
                manual: true,
                at_us: T0 + 101
            }),
            Err(ConversationError::NotSnoozed)
        );
    }

    #[test]
    fn given_open_when_priority_set_then_changed() {
        let state = given(&opened()).then_state(ConversationCommand::SetPriority {
            priority: Priority::Urgent,
            by: alice(),
            at_us: T0 + 1,
        });
        assert_eq!(state.priority, Priority::Urgent);
        assert_eq!(
            state.decide(ConversationCommand::SetPriority {
                priority: Priority::Urgent,
                by: alice(),
                at_us: T0 + 2
            }),
            Ok(vec![])
        );
    }

    #[test]
    fn given_open_when_tagged_and_untagged_then_normalised_and_idempotent() {
        let g = given(&opened());
        let state = g.then_state(ConversationCommand::AddTag {
            tag: " Billing ".into(),
            by: alice(),
            at_us: T0 + 1,
        });
        assert!(state.tags.contains("billing"));
        let again = Given(state.clone());
        assert_eq!(
            again.when(ConversationCommand::AddTag {
                tag: "billing".into(),
                by: alice(),
                at_us: T0 + 2
            }),
            Ok(vec![])
        );
        let removed = again.then_state(ConversationCommand::RemoveTag {
            tag: "BILLING".into(),
            by: alice(),
            at_us: T0 + 3,
        });
        assert!(removed.tags.is_empty());
        assert_eq!(
            g.when(ConversationCommand::AddTag {
                tag: "two words".into(),
                by: alice(),
                at_us: T0
            }),
            Err(ConversationError::InvalidTag("two words".into()))
        );
    }

    // --- claim, assign, unassign ---

    #[test]
    fn given_unassigned_when_claimed_then_assigned_and_a_second_claim_names_the_holder() {
        let g = given(&opened());
        let state = g.then_state(ConversationCommand::Claim {
            user: id(ALICE),
            at_us: T0 + 1,
        });
        assert_eq!(state.assignee, Some(id(ALICE)));
        assert_eq!(
            state.decide(ConversationCommand::Claim {
                user: id(BOB),
                at_us: T0 + 2
            }),
            Err(ConversationError::ClaimedBy { holder: id(ALICE) })
        );
        // Claiming what one holds changes nothing.
        assert_eq!(
            state.decide(ConversationCommand::Claim {
                user: id(ALICE),
                at_us: T0 + 2
            }),
            Ok(vec![])
        );
        // A non-participant can't claim.
        assert_eq!(
            g.when(ConversationCommand::Claim {
                user: id(CAROL),
                at_us: T0 + 2
            }),
            Err(ConversationError::NotAParticipant(id(CAROL)))
        );
    }

    #[test]
    fn given_claimed_when_assigned_to_someone_else_then_reassigned_and_unassign_clears() {
        let g = given(&with(
            opened(),
            &[ConversationEvent::Assigned {
                assignee: id(ALICE),
                claimed: true,
                by: Some(id(ALICE)),
                at_us: T0 + 1,
            }],
        ));
        let state = g.then_state(ConversationCommand::Assign {
            assignee: id(CAROL),
            by: Actor::User(id(BOB)),
            at_us: T0 + 2,
        });
        assert_eq!(state.assignee, Some(id(CAROL)));
        // Assigning someone makes them a participant.
        assert!(state.is_participant(id(CAROL)));
        let events = Given(state)
            .when(ConversationCommand::Unassign {
                by: alice(),
                at_us: T0 + 3,
            })
            .unwrap();
        assert_eq!(
            events,
            vec![ConversationEvent::Unassigned {
                previous: id(CAROL),
                by: Some(id(ALICE)),
                at_us: T0 + 3
            }]
        );
        assert_eq!(
            given(&opened()).when(ConversationCommand::Unassign {
                by: alice(),
                at_us: T0
            }),
            Ok(vec![])
        );
    }

    // --- participants: adding an inbox, archiving from one's own view ---

    fn handed_to_hub() -> Vec<ConversationEvent> {
        with(
            opened(),
            &[ConversationEvent::ParticipantAdded {
                participant: ParticipantRef::Inbox(id(HUB)),
                members: vec![id(DAVE)],
                by: Some(id(ALICE)),
                at_us: T0 + 1,
            }],
        )
    }

    #[test]
    fn given_opened_when_a_participant_adds_an_inbox_then_its_members_join() {
        let events = given(&opened())
            .when(ConversationCommand::AddParticipant {
                participant: ParticipantRef::Inbox(id(HUB)),
                members: vec![id(DAVE)],
                by: alice(),
                at_us: T0 + 1,
            })
            .unwrap();
        assert_eq!(events, handed_to_hub()[2..].to_vec());
        let state = Conversation::replay(&handed_to_hub());
        assert!(state.is_participant(id(DAVE)));
        assert_eq!(
            state.live_inboxes().collect::<Vec<_>>(),
            vec![id(INBOX), id(HUB)]
        );
        // The hub's member can add someone in turn; a stranger can't.
        assert!(
            state
                .decide(ConversationCommand::AddParticipant {
                    participant: ParticipantRef::User(id(CAROL)),
                    members: vec![],
                    by: Actor::User(id(DAVE)),
                    at_us: T0 + 2
                })
                .is_ok()
        );
        assert_eq!(
            state.decide(ConversationCommand::AddParticipant {
                participant: ParticipantRef::User(id(DAVE)),
                members: vec![],
                by: Actor::User(id(CAROL)),
                at_us: T0 + 2
            }),
            Err(ConversationError::NotAParticipant(id(CAROL)))
        );
        assert_eq!(
            state.decide(ConversationCommand::AddParticipant {
                participant: ParticipantRef::Inbox(id(HUB)),
                members: vec![],
                by: alice(),
                at_us: T0 + 2
            }),
            Err(ConversationError::AlreadyParticipant(id(HUB)))
        );
    }

    #[test]
    fn given_handed_to_a_hub_when_the_first_inbox_archives_then_it_stays_live_for_the_hub() {
        let state = given(&handed_to_hub()).then_state(ConversationCommand::ArchiveForInbox {
            inbox_id: id(INBOX),
            by: alice(),
            at_us: T0 + 2,
        });
        assert_eq!(state.live_inboxes().collect::<Vec<_>>(), vec![id(HUB)]);
        assert_eq!(state.status, Status::Open);
        assert!(state.is_participant(id(DAVE)));
        // The hub can't archive too: nobody would see it any more.
        assert_eq!(
            state.decide(ConversationCommand::ArchiveForInbox {
                inbox_id: id(HUB),
                by: Actor::User(id(DAVE)),
                at_us: T0 + 3
            }),
            Err(ConversationError::NoOtherParticipant)
        );
        // Archiving twice changes nothing.
        assert_eq!(
            state.decide(ConversationCommand::ArchiveForInbox {
                inbox_id: id(INBOX),
                by: alice(),
                at_us: T0 + 3
            }),
            Ok(vec![])
        );
    }

    #[test]
    fn given_only_the_first_inbox_when_it_archives_then_refused() {
        let g = given(&opened());
        assert_eq!(
            g.when(ConversationCommand::ArchiveForInbox {
                inbox_id: id(INBOX),
                by: alice(),
                at_us: T0 + 1
            }),
            Err(ConversationError::NoOtherParticipant)
        );
        assert_eq!(
            g.when(ConversationCommand::ArchiveForInbox {
                inbox_id: id(HUB),
                by: alice(),
                at_us: T0 + 1
            }),
            Err(ConversationError::InboxNotParticipating(id(HUB)))
        );
        // Handed to a person instead: now the first inbox may archive it.
        let state = g.then_state(ConversationCommand::AddParticipant {
            participant: ParticipantRef::User(id(CAROL)),
            members: vec![],
            by: alice(),
            at_us: T0 + 1,
        });
        assert!(
            state
                .decide(ConversationCommand::ArchiveForInbox {
                    inbox_id: id(INBOX),
                    by: alice(),
                    at_us: T0 + 2
                })
                .is_ok()
        );
    }

    // --- move and merge ---

    #[test]
    fn given_claimed_when_moved_then_unassigned_and_the_new_inboxes_members_replace_the_old() {
        let g = given(&with(
            opened(),
            &[
                ConversationEvent::ParticipantAdded {
                    participant: ParticipantRef::User(id(CAROL)),
                    members: vec![],
                    by: Some(id(ALICE)),
                    at_us: T0 + 1,
                },
                ConversationEvent::Assigned {
                    assignee: id(ALICE),
                    claimed: true,
                    by: Some(id(ALICE)),
                    at_us: T0 + 1,
                },
            ],
        ));
        let events = g
            .when(ConversationCommand::Move {
                to_inbox: id(HUB),
                members: vec![id(DAVE)],
                by: alice(),
                at_us: T0 + 2,
            })
            .unwrap();
        assert!(
            matches!(events[0], ConversationEvent::Unassigned { previous, .. } if previous == id(ALICE))
        );
        let state = events.iter().fold(g.0.clone(), |s, e| s.evolve(e));
        assert_eq!(state.inbox_id, id(HUB));
        assert_eq!(state.assignee, None);
        assert!(state.is_participant(id(DAVE)));
        assert!(state.is_participant(id(CAROL)), "explicitly added stay");
        assert!(
            !state.is_participant(id(BOB)),
            "the old inbox's snapshot leaves"
        );
        assert_eq!(
            state.decide(ConversationCommand::Move {
                to_inbox: id(HUB),
                members: vec![],
                by: Actor::System,
                at_us: T0 + 3
            }),
            Err(ConversationError::SameInbox(id(HUB)))
        );
    }

    #[test]
    fn given_two_conversations_when_merged_then_the_source_is_frozen_and_the_target_takes_all() {
        let source = Conversation::replay(&opened());
        let target_events = vec![
            ConversationEvent::Opened {
                conversation_id: id(CONV + 1),
                inbox_id: id(INBOX),
                origin: Origin::Message,
                participants: vec![id(ALICE)],
                by: None,
                at_us: T0,
            },
            ConversationEvent::MessageReceived(inbound(1005, "m5@example.org", T0)),
        ];
        let target = Conversation::replay(&target_events);
        assert_eq!(
            source.decide(ConversationCommand::MergeInto {
                target: id(CONV),
                by: alice(),
                at_us: T0
            }),
            Err(ConversationError::MergeIntoSelf)
        );
        let merged = Given(source.clone()).then_state(ConversationCommand::MergeInto {
            target: id(CONV + 1),
            by: alice(),
            at_us: T0 + 1,
        });
        assert_eq!(
            merged.decide(ConversationCommand::AddNote {
                note_id: id(1),
                body: "x".into(),
                mentions: vec![],
                by: alice(),
                at_us: T0 + 2
            }),
            Err(ConversationError::Merged { into: id(CONV + 1) })
        );
        assert_eq!(
            merged.decide(ConversationCommand::ReceiveMessage {
                message: inbound(1009, "m9@example.org", T0 + 2)
            }),
            Err(ConversationError::Merged { into: id(CONV + 1) })
        );
        let absorbed = Given(target).then_state(ConversationCommand::AbsorbMerge {
            source: source.merge_source(),
            by: alice(),
            at_us: T0 + 1,
        });
        assert!(absorbed.is_participant(id(BOB)));
        assert_eq!(absorbed.messages.len(), 2);
        assert!(absorbed.thread_ids.contains(&"m1@example.org".to_owned()));
        // Absorbing the same source twice changes nothing.
        assert_eq!(
            absorbed.decide(ConversationCommand::AbsorbMerge {
                source: source.merge_source(),
                by: alice(),
                at_us: T0 + 2
            }),
            Ok(vec![])
        );
    }

    #[test]
    fn reply_subjects_are_not_stacked() {
        assert_eq!(reply_subject("Hello"), "Re: Hello");
        assert_eq!(reply_subject("RE: Hello"), "RE: Hello");
    }

    // --- properties ---

    fn arb_command() -> impl Strategy<Value = ConversationCommand> {
        let user = (1u128..6).prop_map(id);
        let inbox = (10u128..13).prop_map(id);
        let at = (0i64..1_000).prop_map(|d| T0 + d);
        let actor = prop_oneof![user.clone().prop_map(Actor::User), Just(Actor::System)];
        prop_oneof![
            (user.clone(), at.clone())
                .prop_map(|(u, at_us)| ConversationCommand::Claim { user: u, at_us }),
            (actor, at.clone()).prop_map(|(by, at_us)| ConversationCommand::Unassign { by, at_us }),
            (user.clone(), user.clone(), at.clone()).prop_map(|(a, b, at_us)| {
                ConversationCommand::Assign {
                    assignee: a,
                    by: Actor::User(b),
                    at_us,
                }
            }),
            (
                inbox.clone(),
                proptest::collection::vec(user.clone(), 0..3),
                at.clone()
            )
                .prop_map(|(i, m, at_us)| {
                    ConversationCommand::AddParticipant {
                        participant: ParticipantRef::Inbox(i),
                        members: m,
                        by: Actor::System,
                        at_us,
                    }
                }),
            (user.clone(), at.clone()).prop_map(|(u, at_us)| ConversationCommand::AddParticipant {
                participant: ParticipantRef::User(u),
                members: vec![],
                by: Actor::System,
                at_us,
            }),
            (inbox.clone(), at.clone()).prop_map(|(i, at_us)| {
                ConversationCommand::ArchiveForInbox {
                    inbox_id: i,
                    by: Actor::System,
                    at_us,
                }
            }),
            (inbox, proptest::collection::vec(user, 0..3), at.clone()).prop_map(|(i, m, at_us)| {
                ConversationCommand::Move {
                    to_inbox: i,
                    members: m,
                    by: Actor::System,
                    at_us,
                }
            }),
            (1000u128..1005, at).prop_map(|(n, at_us)| ConversationCommand::ReceiveMessage {
                message: inbound(n, &format!("m{n}@example.org"), at_us)
            }),
        ]
    }

    proptest! {
        /// Whatever agents do: the conversation never vanishes from every view, an assignee is
        /// always a participant, the version counts the events, and replaying the log gives
        /// the same state as folding decisions as they were made.
        #[test]
        fn invariants_hold_under_any_command_sequence(cmds in proptest::collection::vec(arb_command(), 0..40)) {
            let mut log = opened();
            let mut state = Conversation::replay(&log);
            for cmd in cmds {
                if let Ok(events) = state.decide(cmd) {
                    for e in &events {
                        state = state.evolve(e);
                    }
                    log.extend(events);
                }
                prop_assert!(state.live_inboxes().next().is_some() || state.added_users().next().is_some());
                if let Some(a) = state.assignee {
                    prop_assert!(state.is_participant(a));
                }
                prop_assert!(state.inboxes.contains_key(&state.inbox_id));
                prop_assert_eq!(state.version, log.len() as u64);
                let ids: BTreeSet<Uuid> = state.messages.iter().map(|m| m.message_id).collect();
                prop_assert_eq!(ids.len(), state.messages.len());
            }
            prop_assert_eq!(Conversation::replay(&log), state);
        }

        /// A second claim by anyone else always names the holder.
        #[test]
        fn a_second_claim_always_names_the_holder(first in 1u128..3, second in 1u128..3) {
            let state = given(&opened()).then_state(ConversationCommand::Claim { user: id(first), at_us: T0 });
            let r = state.decide(ConversationCommand::Claim { user: id(second), at_us: T0 + 1 });
            if first == second {
                prop_assert_eq!(r, Ok(vec![]));
            } else {
                prop_assert_eq!(r, Err(ConversationError::ClaimedBy { holder: id(first) }));
            }
        }
    }

    #[test]
    fn search_words_are_lower_case_unicode_words() {
        let w = search_words("Grüße, ÖLTANK-Prüfung! a x2 e-mail: Eve@Example.org ΣΊΣΥΦΟΣ");
        for expected in [
            "grüße",
            "öltank",
            "prüfung",
            "x2",
            "mail",
            "eve",
            "example",
            "org",
            "σίσυφος",
        ] {
            assert!(w.contains(expected), "{expected} in {w:?}");
        }
        assert!(!w.contains("a"), "one letter is not a word");
        assert!(!w.contains("e"));
    }

    proptest! {
        /// The allocation-free word splitter gives exactly the words of the plain definition
        /// (Unicode lower case of every alphanumeric run, first 64 characters, at least 2).
        #[test]
        fn fast_words_equal_the_plain_definition(text in "(\\PC|[ .,A-Za-zÄÖÜß0-9ΣΊ-]){0,300}") {
            let plain: Vec<String> = text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.chars().count() >= SEARCH_MIN_CHARS)
                .map(|w| w.to_lowercase().chars().take(SEARCH_MAX_CHARS).collect())
                .collect();
            let mut distinct = Vec::new();
            for w in &plain {
                if !distinct.contains(w) {
                    distinct.push(w.clone());
                }
            }
            prop_assert_eq!(body_search_words(&text), distinct);
            prop_assert_eq!(search_words(&text), plain.into_iter().collect::<BTreeSet<_>>());
        }
    }

    #[test]
    fn body_words_are_distinct_in_order_and_bounded() {
        assert_eq!(
            body_search_words("Hello hello, WORLD! a hello world again"),
            vec!["hello", "world", "again"]
        );
        let many: String = (0..SEARCH_BODY_MAX_WORDS + 50)
            .map(|i| format!("w{i} "))
            .collect();
        let w = body_search_words(&many);
        assert_eq!(w.len(), SEARCH_BODY_MAX_WORDS);
        assert_eq!(w.last().map(String::as_str), Some("w999"));
        // Only the first SEARCH_BODY_MAX_BYTES are read, cut on a character boundary.
        let long = format!("{}ü tail", "é".repeat(SEARCH_BODY_MAX_BYTES));
        let w = body_search_words(&long);
        assert_eq!(w.len(), 1);
        assert!(!w.contains(&"tail".to_owned()));
    }

    #[test]
    fn prefixes_run_from_three_to_twelve_characters() {
        let p: Vec<&str> = search_prefixes("invoice").collect();
        assert_eq!(p, ["inv", "invo", "invoi", "invoic", "invoice"]);
        let long: Vec<&str> = search_prefixes("abcdefghijklmnop").collect();
        assert_eq!(long.len(), 10);
        assert_eq!(long.last(), Some(&"abcdefghijkl"));
        assert_eq!(search_prefixes("ab").count(), 0);
        assert_eq!(search_prefixes("abc").collect::<Vec<_>>(), ["abc"]);
        // Characters, not bytes.
        let p: Vec<&str> = search_prefixes("größenordnung").collect();
        assert_eq!(p.first(), Some(&"grö"));
        assert_eq!(p.last(), Some(&"größenordnun"));
        assert_eq!(search_prefixes("日本語").collect::<Vec<_>>(), ["日本語"]);
    }

    #[test]
    fn queries_parse_into_words_and_prefixes() {
        assert_eq!(
            parse_search("Printer INVOI*").unwrap(),
            vec![
                SearchTerm::Word("printer".into()),
                SearchTerm::Prefix("invoi".into())
            ]
        );
        assert_eq!(parse_search("  ?! "), Err(SearchQueryError::Empty));
        assert!(matches!(
            parse_search("ab*"),
            Err(SearchQueryError::ShortPrefix(_))
        ));
        let many = (0..20)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(matches!(
            parse_search(&many),
            Err(SearchQueryError::TooManyTerms { .. })
        ));
    }

    #[test]
    fn templates_render_known_variables_and_refuse_unknown_ones() {
        let t = "Dear {{contact.name}},\n\n{{ agent.signature }}\n{{inbox.name}} {{x}} {{";
        assert_eq!(check_template(t), Err(UnknownVariable("x".into())));
        assert!(check_template("Hi {{contact.name}}").is_ok());
        let out = render_template(t, |v| match v {
            "contact.name" => Some("Eve".into()),
            "agent.signature" => Some("Alice".into()),
            _ => None,
        });
        assert_eq!(out, "Dear Eve,\n\nAlice\n {{x}} {{");
    }
}
