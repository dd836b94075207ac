//! The conversation service: conversations opened from received mail (or by an agent), their
//! messages, replies sent as the inbox, internal notes, status, snooze, priority, tags,
//! assignment (exclusive claim), participants with hand-offs and archive-from-own-view, move
//! and merge; the `/v1/conversations` API and the read models behind it.
//!
//! Writes: load the stream, `decide` (pure, `postvak_core::conversation`), append with the
//! version that was read (a concurrent change is a conflict, never a lost write), then update
//! the read model right after (ADR 0003), idempotently; the projection consumer applies the
//! same events again from the log, so a crash between the two steps only delays the view.
//!
//! The participant snapshot needs an inbox's members: for now the directory library is called
//! in-process (`Directory::grants`, `list_teams`) rather than over a command.

mod activity;
pub mod api;
mod codec;
pub mod commands;
pub mod contacts;
mod delivery;
mod downloads;
pub mod drafts;
pub mod files;
mod idempotency;
pub mod inbound;
mod live;
mod projection;
mod queue;
pub mod search_merge;
pub mod seed;
pub mod suggest;
pub mod templates;

use postvak_core::Aggregate;
use postvak_core::access::{Grantee, InboxRole};
use postvak_core::conversation::{
    Actor, Conversation, ConversationCommand, ConversationError, ConversationEvent,
};
use postvak_directory::Directory;
use postvak_directory::identity::Access;
use postvak_platform::cell::{CellError, Cells, Principal, TenantContext};
use postvak_platform::memo::Generational;
use postvak_platform::reads::ReadTx;
use postvak_platform::store::{ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamRef};
use postvak_proto::events::conversation as ev;
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use uuid::Uuid;

pub use inbound::start_consumers;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] ConversationError),
    #[error("not found")]
    NotFound,
    /// The caller's view (`If-Match`) is older than the conversation.
    #[error("the conversation is at version {current}, not {seen}")]
    Stale { seen: u64, current: u64 },
    /// Holds a lesser role than the change needs.
    #[error("this needs the {} permission on the conversation's inbox", .0.as_str())]
    Forbidden(InboxRole),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Directory(#[from] postvak_directory::ServiceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cell(#[from] CellError),
}

pub(crate) fn stream(id: Uuid) -> StreamRef {
    StreamRef::new(ev::STREAM_CONVERSATION, format!("conv-{id}"))
}

pub(crate) fn now_us() -> i64 {
    postvak_platform::store::micros(OffsetDateTime::now_utc())
}

/// A loaded conversation with the events that built it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub state: Conversation,
    pub events: Vec<RecordedEvent>,
}

/// The outcome of a change.
#[derive(Debug, Clone)]
pub struct Changed {
    pub state: Conversation,
    pub events: Vec<ConversationEvent>,
}

/// The conversation service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Conversations {
    cells: Cells,
    directory: Directory,
}

/// How many times a change is retried when another writer got there first.
const MAX_ATTEMPTS: usize = 8;

impl Conversations {
    pub fn new(cells: Cells) -> Self {
        Self {
            directory: Directory::new(cells.clone()),
            cells,
        }
    }

    pub fn cells(&self) -> &Cells {
        &self.cells
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The conversation as its stream tells it.
    pub async fn load(&self, ctx: &TenantContext, id: Uuid) -> Result<Loaded, ServiceError> {
        let events = ctx.read_stream(&stream(id)).await?;
        let mut state = Conversation::default();
        for e in &events {
            state = state.evolve(&codec::decode(e)?);
        }
        Ok(Loaded { state, events })
    }

    /// The conversation's current state: a recently seen state of this process caught up
    /// with the events appended since (one indexed read that usually returns nothing), else
    /// a replay of the whole stream. Always as current as the store at the moment of the
    /// read; a decision taken on it is still checked by the append's expected version.
    pub async fn state(&self, ctx: &TenantContext, id: Uuid) -> Result<Conversation, ServiceError> {
        let key = state_key(ctx, id);
        let cached = states()
            .get(&key)
            .filter(|(_, at)| at.elapsed() < STATE_TTL)
            .map(|(s, _)| s);
        let hit = cached.is_some();
        let mut state = cached.unwrap_or_default();
        let events = ctx
            .cell()
            .store
            .read_stream(ctx.tenant(), &stream(id), state.version + 1)
            .await?;
        if hit && events.is_empty() {
            return Ok(state);
        }
        for e in &events {
            state = state.evolve(&codec::decode(e)?);
        }
        if state.version > 0 {
            states().put(key, (state.clone(), Instant::now()));
        }
        Ok(state)
    }

    /// Users who are members of `inbox` now: direct grants and members of granted teams.
    pub async fn members_of(
        &self,
        ctx: &TenantContext,
        inbox: Uuid,
    ) -> Result<Vec<Uuid>, ServiceError> {
        let now = OffsetDateTime::now_utc();
        let grants = self.directory.grants(ctx, Some(inbox)).await?;
        let mut users = BTreeSet::new();
        let mut teams = BTreeSet::new();
        for g in grants.iter().filter(|g| g.in_force(now)) {
            match g.grantee {
                Grantee::User(u) => {
                    users.insert(u);
                }
                Grantee::Team(t) => {
                    teams.insert(t);
                }
            }
        }
        if !teams.is_empty() {
            for team in self.directory.list_teams(ctx, None).await? {
                if teams.contains(&team.id) {
                    users.extend(team.members);
                }
            }
        }
        Ok(users.into_iter().collect())
    }

    /// Runs `make` against the current state and appends what it decides, retrying when
    /// someone else wrote in between. With `if_match`, a conversation that moved on since is
    /// [`ServiceError::Stale`] — unless the decision itself fails (e.g. claimed by someone
    /// else), which is the more useful answer.
    pub async fn change<F>(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        if_match: Option<u64>,
        make: F,
    ) -> Result<Changed, ServiceError>
    where
        F: Fn(&Conversation) -> Result<Vec<ConversationCommand>, ServiceError>,
    {
        self.change_from(ctx, id, if_match, None, make).await
    }

    /// [`Self::change`] starting from `known`, the state the caller read moments ago in the
    /// same request (one read of the stream less). A write in between is caught by the append's
    /// expected version; a refusal or a stale `If-Match` against `known` is only answered after
    /// reading the store again, so the answer is always about the current state.
    pub async fn change_from<F>(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        if_match: Option<u64>,
        mut known: Option<Conversation>,
        make: F,
    ) -> Result<Changed, ServiceError>
    where
        F: Fn(&Conversation) -> Result<Vec<ConversationCommand>, ServiceError>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let (state, fresh) = match known.take() {
                Some(s) => (s, false),
                None => (self.state(ctx, id).await?, true),
            };
            let decided = make(&state).and_then(|cmds| decide_all(&state, cmds));
            if !fresh && (decided.is_err() || if_match.is_some_and(|seen| seen != state.version)) {
                continue;
            }
            let (next, events) = decided?;
            if let Some(seen) = if_match
                && seen != state.version
            {
                return Err(ServiceError::Stale {
                    seen,
                    current: state.version,
                });
            }
            if events.is_empty() {
                return Ok(Changed {
                    state: next,
                    events,
                });
            }
            let staged = Staged::new(ctx, id, &state, next, events).await?;
            if !commit_staged(ctx, std::slice::from_ref(&staged)).await? {
                continue;
            }
            return Ok(staged.into_changed());
        }
        Err(too_many_attempts(id))
    }

    /// Merges `source` into `target` in ONE transaction: the source's `merged_into` and the
    /// target's `merged_from` commit together or not at all (a target that cannot take it
    /// leaves the source as it was). `check` runs on both states; `if_match` is the source's.
    pub async fn merge(
        &self,
        ctx: &TenantContext,
        source: Uuid,
        target: Uuid,
        if_match: Option<u64>,
        by: Actor,
        check: impl Fn(&Conversation) -> Result<(), ServiceError>,
    ) -> Result<(Changed, Changed), ServiceError> {
        for _ in 0..MAX_ATTEMPTS {
            let s = self.state(ctx, source).await?;
            let t = self.state(ctx, target).await?;
            check(&t)?;
            check(&s)?;
            let at_us = now_us();
            let (s_next, s_events) = decide_all(
                &s,
                vec![ConversationCommand::MergeInto { target, by, at_us }],
            )?;
            if let Some(seen) = if_match
                && seen != s.version
            {
                return Err(ServiceError::Stale {
                    seen,
                    current: s.version,
                });
            }
            let handed = s_next.merge_source();
            let (t_next, t_events) = decide_all(
                &t,
                vec![ConversationCommand::AbsorbMerge {
                    source: handed,
                    by,
                    at_us,
                }],
            )?;
            let mut staged = Vec::with_capacity(2);
            staged.push(Staged::new(ctx, source, &s, s_next, s_events).await?);
            staged.push(Staged::new(ctx, target, &t, t_next, t_events).await?);
            staged.retain(|st| !st.events.is_empty());
            if !commit_staged(ctx, &staged).await? {
                continue;
            }
            let mut done = staged.into_iter().map(Staged::into_changed);
            let (first, second) = (done.next(), done.next());
            let unchanged = |state: Conversation| Changed {
                state,
                events: Vec::new(),
            };
            return Ok(match (first, second) {
                (Some(a), Some(b)) => (a, b),
                // Only one stream had something to write (a repeated merge).
                (Some(a), None) if a.state.id == Some(source) => {
                    (a, self.state(ctx, target).await.map(unchanged)?)
                }
                (Some(b), None) => (self.state(ctx, source).await.map(unchanged)?, b),
                _ => (
                    self.state(ctx, source).await.map(unchanged)?,
                    self.state(ctx, target).await.map(unchanged)?,
                ),
            });
        }
        Err(too_many_attempts(source))
    }
}

/// Applies commands one after another to a copy of `state`.
fn decide_all(
    state: &Conversation,
    cmds: Vec<ConversationCommand>,
) -> Result<(Conversation, Vec<ConversationEvent>), ServiceError> {
    let mut s = state.clone();
    let mut out = Vec::new();
    for cmd in cmds {
        let events = s.decide(cmd)?;
        for e in &events {
            s = s.evolve(e);
        }
        out.extend(events);
    }
    Ok((s, out))
}

fn too_many_attempts(id: Uuid) -> ServiceError {
    ServiceError::Store(StoreError::Conflict {
        stream_id: stream(id).stream_id,
        expected: ExpectedVersion::Any,
        actual: 0,
    })
}

/// A decided change of one conversation, encoded and sealed, ready to commit.
struct Staged {
    id: Uuid,
    expected: ExpectedVersion,
    new_events: Vec<NewEvent>,
    prepared: projection::Prepared,
    next: Conversation,
    events: Vec<ConversationEvent>,
}

impl Staged {
    /// Everything is sealed here, before any transaction opens: on SQLite a new data key
    /// needs the writer the transaction would hold.
    async fn new(
        ctx: &TenantContext,
        id: Uuid,
        state: &Conversation,
        next: Conversation,
        events: Vec<ConversationEvent>,
    ) -> Result<Self, ServiceError> {
        let expected = if state.version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(state.version)
        };
        let conv = next.id.unwrap_or(id);
        let actor = ctx.principal().actor();
        let new_events = events
            .iter()
            .map(|e| {
                let (t, v, payload) = codec::encode(e, conv, next.inbox_id)?;
                let mut n = NewEvent::new(t, v, payload);
                n.metadata.actor.get_or_insert_with(|| actor.clone());
                Ok(n)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let keyring = ctx.cell().store.keyring();
        let prepared =
            projection::prepare(keyring, ctx.tenant(), &next, state.version + 1, &events).await?;
        Ok(Self {
            id,
            expected,
            new_events,
            prepared,
            next,
            events,
        })
    }

    fn into_changed(self) -> Changed {
        Changed {
            state: self.next,
            events: self.events,
        }
    }
}

/// Appends the staged events and writes their read model in ONE transaction (one commit,
/// one WAL flush; what the caller reads next is what it wrote), then remembers the new
/// states. `false`: another writer got to one of the streams first, nothing was written.
async fn commit_staged(ctx: &TenantContext, staged: &[Staged]) -> Result<bool, ServiceError> {
    let store = &ctx.cell().store;
    let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
    for st in staged {
        match store
            .append_in_tx(
                &mut tx,
                ctx.tenant(),
                &stream(st.id),
                st.expected,
                st.new_events.clone(),
            )
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        projection::write(&mut tx, ctx.tenant(), &st.prepared).await?;
    }
    store.commit_appended(tx).await?;
    for st in staged {
        states().put(state_key(ctx, st.id), (st.next.clone(), Instant::now()));
        st.prepared.committed();
    }
    Ok(true)
}

/// Conversation states this process saw last, by (store, tenant, conversation): a write
/// replays only the events appended since instead of the whole stream (ADR 0022). Bounded in
/// number, and an entry is trusted for [`STATE_TTL`] at most, so decrypted subjects and
/// addresses do not linger in memory (after a contact's erasure, for instance).
type StateKey = (usize, postvak_platform::store::TenantId, Uuid);
type StateEntry = (Conversation, Instant);
const STATE_CACHE: usize = 20_000;
const STATE_TTL: Duration = Duration::from_secs(60);

fn states() -> &'static Generational<StateKey, StateEntry> {
    static STATES: OnceLock<Generational<StateKey, StateEntry>> = OnceLock::new();
    STATES.get_or_init(|| Generational::new(STATE_CACHE))
}

/// The store's address tells cells (and test databases) of one process apart.
fn store_key(ctx: &TenantContext) -> usize {
    Arc::as_ptr(&ctx.cell().store).cast::<()>() as usize
}

fn state_key(ctx: &TenantContext, id: Uuid) -> StateKey {
    (store_key(ctx), ctx.tenant(), id)
}

/// A conversation's list entry as JSON by (store, tenant, conversation), with the version it
/// shows: a list serves repeated rows without opening and re-serialising their sealed
/// summaries. Same bounds as the states.
type SummaryEntry = (i64, Instant, Arc<str>);

/// A conversation's messages and notes as shown, by the version they belong to (ADR 0022).
type Thread = (
    Vec<postvak_proto::rest::conversation::ConversationMessage>,
    Vec<postvak_proto::rest::conversation::Note>,
);
type DetailEntry = (i64, Instant, Arc<Thread>);

fn details() -> &'static Generational<StateKey, DetailEntry> {
    static DETAILS: OnceLock<Generational<StateKey, DetailEntry>> = OnceLock::new();
    DETAILS.get_or_init(|| Generational::new(DETAIL_CACHE))
}

/// Threads are bigger than states: fewer of them.
const DETAIL_CACHE: usize = 5_000;

fn summaries() -> &'static Generational<StateKey, SummaryEntry> {
    static SUMMARIES: OnceLock<Generational<StateKey, SummaryEntry>> = OnceLock::new();
    SUMMARIES.get_or_init(|| Generational::new(STATE_CACHE))
}

/// How a principal acts in the aggregate.
pub(crate) fn actor_of(p: &Principal) -> Actor {
    match p {
        Principal::User { user_id, role } if role.administers_tenant() => Actor::Admin(*user_id),
        Principal::User { user_id, .. } => Actor::User(*user_id),
        Principal::ApiKey { .. } | Principal::Service { .. } => Actor::System,
    }
}

/// The permission a caller holds on a conversation: the best of their roles on the inboxes
/// holding it; a user must also take part in it (the inbox's members when it started, and
/// those added since). A person handed the conversation may answer it even without a grant.
/// `None` = it doesn't exist for them (404).
pub(crate) fn conversation_role(
    access: &Access,
    inboxes: &[Uuid],
    participant: Option<bool>,
) -> Option<InboxRole> {
    let best = inboxes.iter().filter_map(|i| access.inbox_role(*i)).max();
    match &access.principal {
        Principal::User { role, .. } if role.administers_tenant() => Some(InboxRole::Admin),
        Principal::User { .. } => match participant {
            None => None,
            Some(true) => Some(best.map_or(InboxRole::Reply, |b| b.max(InboxRole::Reply))),
            Some(false) => best,
        },
        Principal::ApiKey { .. } | Principal::Service { .. } => best,
    }
}

/// `participant` argument of [`conversation_role`] from the aggregate: `Some(explicitly
/// added)` for a participant user.
pub(crate) fn participation(state: &Conversation, user: Option<Uuid>) -> Option<bool> {
    let u = user?;
    state.users.get(&u).map(|sources| sources.contains(&None))
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page {
    /// Each a `Conversation` as JSON (cached per conversation version).
    pub items: Vec<Arc<str>>,
    pub next_cursor: Option<String>,
}

impl Page {
    /// The page as a `ConversationPage` JSON document.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(32 + self.items.iter().map(|i| i.len() + 1).sum::<usize>());
        out.extend_from_slice(b"{\"items\":[");
        for (n, item) in self.items.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item.as_bytes());
        }
        out.push(b']');
        if let Some(c) = &self.next_cursor {
            out.extend_from_slice(b",\"next_cursor\":");
            // A cursor is base64url text; serde_json quotes and escapes it all the same.
            out.extend_from_slice(serde_json::to_string(c).unwrap_or_default().as_bytes());
        }
        out.push(b'}');
        out
    }
}

impl Conversations {
    pub(crate) async fn row(
        &self,
        ctx: &TenantContext,
        id: Uuid,
    ) -> Result<Option<projection::ConversationRow>, ServiceError> {
        let mut tx = ctx.cell().read_tx(ctx.tenant()).await?;
        let row = projection::get(&mut tx, ctx.tenant(), id).await?;
        tx.end_read();
        Ok(row)
    }

    /// A conversation with its messages and notes, from the read model (no permission check:
    /// the API checks, with [`Self::get_visible`]).
    pub async fn get(
        &self,
        ctx: &TenantContext,
        id: Uuid,
    ) -> Result<postvak_proto::rest::conversation::ConversationDetail, ServiceError> {
        self.get_visible(ctx, id, |_| true).await
    }

    /// A conversation with its messages and notes, from the read model, if `visible` lets its
    /// row through (`NotFound` otherwise): the check and the read share one transaction.
    pub(crate) async fn get_visible(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        visible: impl Fn(&projection::ConversationRow) -> bool,
    ) -> Result<postvak_proto::rest::conversation::ConversationDetail, ServiceError> {
        let keyring = ctx.cell().store.keyring();
        let t = ctx.tenant();
        let mut tx = ctx.cell().read_tx(t).await?;
        // Delivery reports change without the version (they leave the ETag alone): read with
        // the row every time. Messages and notes change only with the version.
        let (row, reports) = projection::get_with_reports(&mut tx, t, id)
            .await?
            .filter(|(r, _)| visible(r))
            .ok_or(ServiceError::NotFound)?;
        let key = (store_key(ctx), t, id);
        let cached = details()
            .get(&key)
            .filter(|(v, at, _)| *v == row.version && at.elapsed() < STATE_TTL);
        let thread = match cached {
            Some((_, _, thread)) => {
                tx.end_read();
                thread
            }
            None => {
                let (messages, notes) = projection::messages_and_notes(&mut tx, t, id).await?;
                // Decrypted after the connection is back: it serves other reads meanwhile.
                tx.end_read();
                let mut out_messages = Vec::with_capacity(messages.len());
                for m in &messages {
                    out_messages.push(projection::message_dto(keyring, t, m).await?);
                }
                let mut out_notes = Vec::with_capacity(notes.len());
                for n in &notes {
                    out_notes.push(projection::note_dto(keyring, t, n).await?);
                }
                let thread = Arc::new((out_messages, out_notes));
                details().put(key, (row.version, Instant::now(), thread.clone()));
                thread
            }
        };
        let (mut messages, notes) = Arc::unwrap_or_clone(thread);
        delivery::apply(ctx, reports, &mut messages).await?;
        Ok(postvak_proto::rest::conversation::ConversationDetail {
            conversation: projection::conversation_dto(keyring, t, &row).await?,
            messages,
            notes,
        })
    }

    /// Messages added after version `after` (for a stale view).
    pub async fn messages_since(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        after: u64,
    ) -> Result<Vec<postvak_proto::rest::conversation::ConversationMessage>, ServiceError> {
        let keyring = ctx.cell().store.keyring();
        let t = ctx.tenant();
        let mut tx = ctx.cell().read_tx(t).await?;
        let messages =
            projection::messages(&mut tx, t, id, i64::try_from(after).unwrap_or(i64::MAX)).await?;
        tx.end_read();
        let mut out = Vec::with_capacity(messages.len());
        for m in &messages {
            out.push(projection::message_dto(keyring, t, m).await?);
        }
        delivery::attach(ctx, id, &mut out).await?;
        Ok(out)
    }

    /// A page of conversations matching `filter` that `visible` lets through, newest change
    /// first.
    pub(crate) async fn list(
        &self,
        ctx: &TenantContext,
        filter: &projection::ListFilter,
        cursor: Option<projection::Cursor>,
        limit: usize,
        visible: impl Fn(&projection::ConversationRow) -> bool,
    ) -> Result<Page, ServiceError> {
        let keyring = ctx.cell().store.keyring();
        let t = ctx.tenant();
        let mut after = cursor.unwrap_or(projection::Cursor::START);
        let mut rows = Vec::new();
        // One row more than the page tells whether there is a next one. Rows the caller may
        // not see (an inbox-limited key, say) are skipped and the walk goes on, in bigger
        // batches.
        let mut batch = i64::try_from(limit + 1).unwrap_or(201);
        let mut more = false;
        // A search or a tag's best plan depends on how common the word or tag is: those lists
        // are planned for their values, in a transaction of the pool (ADR 0035).
        let mut tx = if filter.search.is_empty() && filter.tag.is_none() {
            ctx.cell().read_tx(t).await?
        } else {
            ReadTx::Tx(ctx.cell().db().tenant_tx(t, false).await?)
        };
        'fill: loop {
            let page = projection::list(&mut tx, t, filter, after, batch).await?;
            let exhausted = (page.len() as i64) < batch;
            for r in page {
                after = projection::Cursor {
                    updated_us: r.updated_us,
                    id: r.id,
                };
                if visible(&r) {
                    if rows.len() == limit {
                        more = true;
                        break 'fill;
                    }
                    rows.push(r);
                }
            }
            if exhausted {
                break;
            }
            batch = (batch * 2).min(400);
        }
        tx.end_read();
        let next_cursor = if more {
            rows.last().map(|r| {
                projection::Cursor {
                    updated_us: r.updated_us,
                    id: r.id,
                }
                .encode()
            })
        } else {
            None
        };
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let key = (store_key(ctx), t, r.id);
            let cached = summaries()
                .get(&key)
                .filter(|(v, at, _)| *v == r.version && at.elapsed() < STATE_TTL);
            let json = match cached {
                Some((_, _, json)) => json,
                None => {
                    let dto = projection::conversation_dto(keyring, t, r).await?;
                    let json: Arc<str> = serde_json::to_string(&dto)
                        .map_err(|e| StoreError::Serialization(e.to_string()))?
                        .into();
                    summaries().put(key, (r.version, Instant::now(), json.clone()));
                    json
                }
            };
            items.push(json);
        }
        Ok(Page { items, next_cursor })
    }
}
