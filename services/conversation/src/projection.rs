//! Read models of the conversation service (`conversations`, `conversation_messages`,
//! `conversation_notes` and the filter tables), on either backend with one SQL text.
//!
//! Every write is idempotent: the conversation row is replaced only by a newer version, and
//! messages and notes are inserted once. So the API (right after its append, ADR 0003) and the
//! projection consumer (catching up, replaying) can both apply the same events.
//! Personal data (subjects, snippets, addresses, bodies, notes) is sealed under the tenant key.

use crate::codec;
use base64::Engine;
use postvak_core::conversation::{Conversation, ConversationEvent, Direction};
use postvak_platform::crypto::Keyring;
use postvak_platform::db::{AsConn, DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{KeyScope, StoreError, TenantId};
use postvak_proto::rest::conversation as dto;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::HashSet;
use std::fmt::Write as _;
use uuid::Uuid;

/// Blind-index purposes of the search index: whole words and their prefixes.
pub(crate) const SEARCH_WORD: &str = "conversation.search.word";
pub(crate) const SEARCH_PREFIX: &str = "conversation.search.prefix";

/// The stored term of `word` under `purpose`: the first 8 bytes of its blind index, read
/// big-endian (collisions within one tenant are negligible at 64 bits: a query term matching
/// another word needs one of ~2^64 values to be hit by a tenant's few million distinct words).
pub(crate) async fn search_term(
    keyring: &Keyring,
    tenant: TenantId,
    purpose: &str,
    word: &str,
) -> Result<i64, StoreError> {
    let mac = keyring
        .blind_index(tenant, purpose, word.as_bytes())
        .await?;
    Ok(term_of(&mac))
}

fn term_of(mac: &[u8; 32]) -> i64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&mac[..8]);
    i64::from_be_bytes(first)
}

/// What one document (a message or a note) adds to the search index.
///
/// PostgreSQL keeps only the words' terms in the document and finds a prefix through the
/// tenant's vocabulary (`conversation_search_prefixes`: prefix term → word term, one row per
/// distinct word and prefix, ADR 0040); SQLite's FTS5 index keeps words and prefixes together.
/// Prefix terms are computed only where they are written: for SQLite all of them, for
/// PostgreSQL those of words its vocabulary does not know yet (a body's ~600 words have
/// ~3,000 prefixes, each an HMAC).
#[derive(Debug, Default)]
pub(crate) struct SearchDoc {
    /// Distinct words with their terms.
    words: Vec<(String, i64)>,
    /// The words' terms, sorted and distinct: the PostgreSQL document.
    terms: Vec<i64>,
    prefix_index: Option<postvak_platform::crypto::BlindIndexer>,
    /// Which store's vocabulary (the keyring's address: one per store, see [`known_words`]).
    store: usize,
    tenant: Option<TenantId>,
    /// Words the write found in the vocabulary: known once the transaction commits.
    seen: std::sync::Mutex<Vec<i64>>,
}

impl SearchDoc {
    fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    fn prefix_term(&self, prefix: &str) -> i64 {
        self.prefix_index
            .as_ref()
            .map_or(0, |i| term_of(&i.index(prefix.as_bytes())))
    }

    /// Every term, words and prefixes, sorted and distinct (the FTS5 document).
    fn all_terms(&self) -> Vec<i64> {
        let mut prefixes: Vec<&str> = Vec::with_capacity(self.words.len() * 6);
        for (word, _) in &self.words {
            prefixes.extend(postvak_core::conversation::search_prefixes(word));
        }
        prefixes.sort_unstable();
        prefixes.dedup();
        let mut all = Vec::with_capacity(self.terms.len() + prefixes.len());
        all.extend_from_slice(&self.terms);
        all.extend(prefixes.iter().map(|p| self.prefix_term(p)));
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The words this process does not know to be in the vocabulary, as (word term, term of
    /// its first prefix): what the write looks up (a word's rows are written together, so one
    /// of them tells). Words too short for a prefix have no rows and are left out.
    fn unknown(&self) -> Vec<(i64, i64)> {
        let Some(tenant) = self.tenant else {
            return Vec::new();
        };
        let known = known_words();
        self.words
            .iter()
            .filter(|(_, w)| known.get(&(self.store, tenant, *w)).is_none())
            .filter_map(|(word, w)| {
                postvak_core::conversation::search_prefixes(word)
                    .next()
                    .map(|p| (*w, self.prefix_term(p)))
            })
            .collect()
    }

    /// The vocabulary rows `(prefix, word)` of the words in `new` (distinct: the words are,
    /// and so are one word's prefixes).
    fn vocabulary(&self, new: &HashSet<i64>) -> Vec<(i64, i64)> {
        self.words
            .iter()
            .filter(|(_, w)| new.contains(w))
            .flat_map(|(word, w)| {
                postvak_core::conversation::search_prefixes(word)
                    .map(move |p| (self.prefix_term(p), *w))
            })
            .collect()
    }
}

/// The search document of `text`: its distinct words and their terms.
async fn search_terms(
    keyring: &Keyring,
    tenant: TenantId,
    text: &str,
) -> Result<SearchDoc, StoreError> {
    // Sorted and distinct already.
    let words = postvak_core::conversation::search_words(text);
    if words.is_empty() {
        return Ok(SearchDoc::default());
    }
    let word_index = keyring.blind_indexer(tenant, SEARCH_WORD).await?;
    let words: Vec<(String, i64)> = words
        .into_iter()
        .map(|w| {
            let t = term_of(&word_index.index(w.as_bytes()));
            (w, t)
        })
        .collect();
    let mut terms: Vec<i64> = words.iter().map(|(_, t)| *t).collect();
    terms.sort_unstable();
    terms.dedup();
    Ok(SearchDoc {
        words,
        terms,
        prefix_index: Some(keyring.blind_indexer(tenant, SEARCH_PREFIX).await?),
        store: std::ptr::from_ref(keyring) as usize,
        tenant: Some(tenant),
        seen: std::sync::Mutex::default(),
    })
}

/// Words this process has seen in a tenant's vocabulary, by (store, tenant, word term): a
/// known word is not looked up again. Only words read back from the table are put here, and
/// only after the reading transaction committed (it may have written them itself), so an entry
/// never claims a word the vocabulary lacks (rows are never deleted). Terms are keyed by the
/// tenant's index key, which differs between stores, so a reused address cannot mix two
/// vocabularies.
fn known_words() -> &'static postvak_platform::memo::Generational<(usize, TenantId, i64), ()> {
    static KNOWN: std::sync::OnceLock<
        postvak_platform::memo::Generational<(usize, TenantId, i64), ()>,
    > = std::sync::OnceLock::new();
    KNOWN.get_or_init(|| postvak_platform::memo::Generational::new(KNOWN_WORDS))
}

/// ~10 MB at most.
const KNOWN_WORDS: usize = 200_000;

/// A document's terms as SQLite's FTS5 table takes them: 16 hex digits each.
fn fts_terms(terms: &[i64]) -> String {
    let mut s = String::with_capacity(terms.len() * 17);
    for t in terms {
        if !s.is_empty() {
            s.push(' ');
        }
        let _ = write!(s, "{:016x}", *t as u64);
    }
    s
}

/// One term of a query as an FTS5 match expression: the term as [`fts_terms`] writes it.
fn fts_match(term: i64) -> String {
    format!("{:016x}", term as u64)
}

fn aad(tenant: TenantId, id: Uuid, what: &[u8]) -> Vec<u8> {
    let mut a = b"postvak.conversation.".to_vec();
    a.extend_from_slice(what);
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(id.as_bytes());
    a
}

/// The sealed part of a conversation row.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub subject: Option<String>,
    pub snippet: String,
    pub contacts: Vec<postvak_proto::events::conversation::MailboxV1>,
}

/// A message row: id, direction, stream version, time, sealed content, key.
type MessageRow = (Uuid, &'static str, u64, i64, Vec<u8>, Uuid);

/// What a batch of events changes, sealed and ready to write.
#[derive(Debug)]
pub(crate) struct Prepared {
    row: Option<RowValues>,
    messages: Vec<MessageRow>,
    notes: Vec<(Uuid, u64, i64, Vec<u8>, Uuid)>,
    merged_from: Vec<Uuid>,
    /// Search documents the events add: (message or note id, its terms; see [`search_terms`]).
    search: Vec<(Uuid, SearchDoc)>,
    conversation_id: Uuid,
    /// The change starts the stream: there is no row to update in place.
    first: bool,
}

#[derive(Debug)]
struct RowValues {
    inbox_id: Uuid,
    status: &'static str,
    priority: &'static str,
    assignee: Option<Uuid>,
    snoozed_until: Option<i64>,
    merged_into: Option<Uuid>,
    participants: String,
    inboxes: String,
    tags: String,
    message_count: i64,
    note_count: i64,
    summary: Vec<u8>,
    summary_key: Uuid,
    created_us: i64,
    updated_us: i64,
    version: i64,
    user_ids: Vec<Uuid>,
    inbox_rows: Vec<(Uuid, bool)>,
    tag_list: Vec<String>,
}

impl Prepared {
    /// The transaction that wrote this change committed: the vocabulary words its search
    /// documents found are known from now on. Not calling it only costs lookups.
    pub(crate) fn committed(&self) {
        let known = known_words();
        for (_, doc) in &self.search {
            let Some(tenant) = doc.tenant else { continue };
            let seen = std::mem::take(
                &mut *doc
                    .seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            for w in seen {
                known.put((doc.store, tenant, w), ());
            }
        }
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Seals what `events` (applied at versions `first_version..`) change; `state` is the
/// conversation after them.
pub(crate) async fn prepare(
    keyring: &Keyring,
    tenant: TenantId,
    state: &Conversation,
    first_version: u64,
    events: &[ConversationEvent],
) -> Result<Prepared, StoreError> {
    let conversation_id = state.id.unwrap_or_default();
    let mut messages = Vec::new();
    let mut notes = Vec::new();
    let mut merged_from = Vec::new();
    let mut search = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let version = first_version + i as u64;
        match e {
            ConversationEvent::MessageReceived(m) | ConversationEvent::ReplyQueued(m) => {
                let direction = if matches!(e, ConversationEvent::MessageReceived(_)) {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                };
                // The row shows the message; its index words are the events' business only.
                let json = serde_json::to_vec(&postvak_proto::events::conversation::MessageV1 {
                    search_words: Vec::new(),
                    ..codec::message_v1(m, conversation_id, state.inbox_id)
                })
                .map_err(|e| StoreError::Serialization(e.to_string()))?;
                let (key, sealed) = keyring
                    .seal(
                        tenant,
                        &KeyScope::Tenant,
                        &json,
                        &aad(tenant, m.message_id, b"message"),
                    )
                    .await?;
                // Inbound: ingest hands over the subject, the snippet and the body's words
                // (bounded, ADR 0026; the body itself stays in its sealed blob); outbound: what
                // the agent wrote.
                let text = [
                    m.subject.as_deref().unwrap_or(""),
                    &m.snippet,
                    m.body_text.as_deref().unwrap_or(""),
                    &m.search_words.join(" "),
                ]
                .join("\n");
                search.push((m.message_id, search_terms(keyring, tenant, &text).await?));
                messages.push((
                    m.message_id,
                    direction.as_str(),
                    version,
                    m.at_us,
                    sealed,
                    key,
                ));
            }
            ConversationEvent::NoteAdded {
                note_id,
                author,
                body,
                mentions,
                at_us,
            } => {
                let json = serde_json::to_vec(&postvak_proto::events::conversation::NoteAddedV1 {
                    note_id: *note_id,
                    author: *author,
                    body: body.clone(),
                    mentions: mentions.clone(),
                    at_us: *at_us,
                })
                .map_err(|e| StoreError::Serialization(e.to_string()))?;
                let (key, sealed) = keyring
                    .seal(
                        tenant,
                        &KeyScope::Tenant,
                        &json,
                        &aad(tenant, *note_id, b"note"),
                    )
                    .await?;
                notes.push((*note_id, version, *at_us, sealed, key));
                search.push((*note_id, search_terms(keyring, tenant, body).await?));
            }
            ConversationEvent::MergedFrom { source, .. } => {
                merged_from.push(source.conversation_id);
            }
            _ => {}
        }
    }
    let row = if state.id.is_some() {
        let summary = Summary {
            subject: state.subject.clone(),
            snippet: state.snippet.clone(),
            contacts: state.reply_target.iter().map(codec::mailbox_v1).collect(),
        };
        let json =
            serde_json::to_vec(&summary).map_err(|e| StoreError::Serialization(e.to_string()))?;
        let (summary_key, sealed) = keyring
            .seal(
                tenant,
                &KeyScope::Tenant,
                &json,
                &aad(tenant, conversation_id, b"summary"),
            )
            .await?;
        Some(RowValues {
            inbox_id: state.inbox_id,
            status: state.status.as_str(),
            priority: state.priority.as_str(),
            assignee: state.assignee,
            snoozed_until: state.snoozed_until_us,
            merged_into: state.merged_into,
            participants: state
                .users
                .iter()
                .map(|(u, src)| {
                    // `+`: added explicitly (may answer without an inbox grant).
                    if src.contains(&None) {
                        format!("{u}+")
                    } else {
                        u.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            inboxes: state
                .inboxes
                .iter()
                .map(|(i, v)| format!("{i}:{}", u8::from(v.archived)))
                .collect::<Vec<_>>()
                .join(" "),
            tags: state.tags.iter().cloned().collect::<Vec<_>>().join(" "),
            message_count: i64_of(state.messages.len() as u64),
            note_count: i64_of(state.notes),
            summary: sealed,
            summary_key,
            created_us: state.opened_at_us,
            updated_us: state.updated_at_us,
            version: i64_of(state.version),
            user_ids: state.users.keys().copied().collect(),
            inbox_rows: state
                .inboxes
                .iter()
                .map(|(i, v)| (*i, v.archived))
                .collect(),
            tag_list: state.tags.iter().cloned().collect(),
        })
    } else {
        None
    };
    Ok(Prepared {
        row,
        messages,
        notes,
        merged_from,
        search,
        conversation_id,
        first: first_version == 1,
    })
}

/// Indexes one document (a message or note of `conv`) once: a replay finds it there and adds
/// nothing (nor moves it back from a merge target).
///
/// PostgreSQL: the document holds its words only, and the same statement answers which of its
/// words the tenant's vocabulary does not know yet (one index probe per word: `LATERAL …
/// LIMIT 1` keeps the planner from hashing the whole vocabulary, which it did for `NOT EXISTS`
/// while the table's statistics were young); those words' `(prefix, word)` rows follow
/// in a second statement. The table has no unique key, so that insert never waits for
/// another transaction (with one, writers of several documents' new words deadlocked; a rare
/// duplicate row is harmless, migration 0026). Once a vocabulary knows its words, a mail costs
/// one statement, and once this process has seen them there ([`known_words`]), no lookup.
async fn write_search_doc(
    tx: &mut DbTx,
    t: Uuid,
    conv: Uuid,
    doc: Uuid,
    terms: &SearchDoc,
) -> Result<(), StoreError> {
    if terms.is_empty() {
        return Ok(());
    }
    match tx {
        DbTx::Postgres(c) => {
            let unknown = terms.unknown();
            let (unknown_words, unknown_prefixes): (Vec<i64>, Vec<i64>) =
                unknown.iter().copied().unzip();
            let new: Vec<i64> = sqlx::query_scalar(
                "WITH doc AS (INSERT INTO conversation_search_docs (tenant_id, doc_id, conversation_id, terms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, doc_id) DO NOTHING) \
                 SELECT u.word FROM unnest($5::bigint[], $6::bigint[]) AS u(word, prefix) \
                 LEFT JOIN LATERAL (SELECT true AS known FROM conversation_search_prefixes v \
                 WHERE v.tenant_id = $1 AND v.prefix = u.prefix AND v.word = u.word LIMIT 1) k ON true \
                 WHERE k.known IS NULL",
            )
            .bind(t)
            .bind(doc)
            .bind(conv)
            .bind(&terms.terms)
            .bind(&unknown_words)
            .bind(&unknown_prefixes)
            .fetch_all(&mut **c)
            .await
            .map_err(db_error)?;
            let new: HashSet<i64> = new.into_iter().collect();
            // Found there, but perhaps written by this very transaction: remembered as known
            // only once it commits (`Prepared::committed`).
            terms
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(unknown_words.iter().copied().filter(|w| !new.contains(w)));
            if new.is_empty() {
                return Ok(());
            }
            let (prefixes, words): (Vec<i64>, Vec<i64>) =
                terms.vocabulary(&new).into_iter().unzip();
            sqlx::query(
                "INSERT INTO conversation_search_prefixes (tenant_id, prefix, word) \
                 SELECT $1, u.prefix, u.word FROM unnest($2::bigint[], $3::bigint[]) AS u(prefix, word)",
            )
            .bind(t)
            .bind(&prefixes)
            .bind(&words)
            .execute(&mut **c)
            .await
            .map_err(db_error)?;
        }
        DbTx::Sqlite(c) => {
            let rowid: Option<i64> = sqlx::query_scalar(
                "INSERT INTO conversation_search_docs (tenant_id, doc_id, conversation_id) \
                 VALUES ($1, $2, $3) ON CONFLICT (tenant_id, doc_id) DO NOTHING RETURNING doc_rowid",
            )
            .bind(t)
            .bind(doc)
            .bind(conv)
            .fetch_optional(&mut **c)
            .await
            .map_err(db_error)?;
            if let Some(rowid) = rowid {
                sqlx::query("INSERT INTO conversation_search_fts (rowid, terms) VALUES ($1, $2)")
                    .bind(rowid)
                    .bind(fts_terms(&terms.all_terms()))
                    .execute(&mut **c)
                    .await
                    .map_err(db_error)?;
            }
        }
    }
    Ok(())
}

/// Writes a prepared change inside `tx` (bound to `tenant`). Idempotent.
pub(crate) async fn write(tx: &mut DbTx, tenant: TenantId, p: &Prepared) -> Result<(), StoreError> {
    let t = tenant.0;
    let conv = p.conversation_id;
    for (id, direction, version, at_us, sealed, key) in &p.messages {
        on_tx!(&mut *tx, |c| sqlx::query(
            "INSERT INTO conversation_messages (tenant_id, message_id, conversation_id, direction, version, at_us, content, content_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, message_id) DO NOTHING"
        )
        .bind(t)
        .bind(id)
        .bind(conv)
        .bind(*direction)
        .bind(i64_of(*version))
        .bind(at_us)
        .bind(sealed)
        .bind(key)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
    }
    for (id, version, at_us, sealed, key) in &p.notes {
        on_tx!(&mut *tx, |c| sqlx::query(
            "INSERT INTO conversation_notes (tenant_id, note_id, conversation_id, version, at_us, content, content_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, note_id) DO NOTHING"
        )
        .bind(t)
        .bind(id)
        .bind(conv)
        .bind(i64_of(*version))
        .bind(at_us)
        .bind(sealed)
        .bind(key)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
    }
    for (doc, terms) in &p.search {
        write_search_doc(tx, t, conv, *doc, terms).await?;
    }
    for source in &p.merged_from {
        for sql in [
            "UPDATE conversation_messages SET conversation_id = $1 WHERE tenant_id = $2 AND conversation_id = $3",
            "UPDATE conversation_notes SET conversation_id = $1 WHERE tenant_id = $2 AND conversation_id = $3",
            // The merged conversation's words now find the target, as its messages moved.
            "UPDATE conversation_search_docs SET conversation_id = $1 WHERE tenant_id = $2 AND conversation_id = $3",
        ] {
            on_tx!(&mut *tx, |c| sqlx::query(sql)
                .bind(conv)
                .bind(t)
                .bind(source)
                .execute(c)
                .await
                .map(|_| ()))
            .map_err(db_error)?;
        }
    }
    let Some(r) = &p.row else { return Ok(()) };
    if !p.first && p.merged_from.is_empty() && update_in_place(tx, t, conv, r).await? {
        return Ok(());
    }
    let changed = on_tx!(&mut *tx, |c| sqlx::query(
        "INSERT INTO conversations (tenant_id, conversation_id, inbox_id, status, priority, assignee, snoozed_until, merged_into, \
           participants, inboxes, tags, message_count, note_count, summary, summary_key, created_us, updated_us, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET inbox_id = excluded.inbox_id, status = excluded.status, \
           priority = excluded.priority, assignee = excluded.assignee, snoozed_until = excluded.snoozed_until, \
           merged_into = excluded.merged_into, participants = excluded.participants, inboxes = excluded.inboxes, \
           tags = excluded.tags, message_count = excluded.message_count, note_count = excluded.note_count, \
           summary = excluded.summary, summary_key = excluded.summary_key, created_us = excluded.created_us, \
           updated_us = excluded.updated_us, version = excluded.version \
         WHERE conversations.version < excluded.version"
    )
    .bind(t)
    .bind(conv)
    .bind(r.inbox_id)
    .bind(r.status)
    .bind(r.priority)
    .bind(r.assignee)
    .bind(r.snoozed_until)
    .bind(r.merged_into)
    .bind(&r.participants)
    .bind(&r.inboxes)
    .bind(&r.tags)
    .bind(r.message_count)
    .bind(r.note_count)
    .bind(&r.summary)
    .bind(r.summary_key)
    .bind(r.created_us)
    .bind(r.updated_us)
    .bind(r.version)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    if changed == 0 {
        // A newer version is already there.
        return Ok(());
    }
    if !p.first {
        for sql in [
            "DELETE FROM conversation_inboxes WHERE tenant_id = $1 AND conversation_id = $2",
            "DELETE FROM conversation_participants WHERE tenant_id = $1 AND conversation_id = $2",
            "DELETE FROM conversation_tags WHERE tenant_id = $1 AND conversation_id = $2",
        ] {
            on_tx!(&mut *tx, |c| sqlx::query(sql)
                .bind(t)
                .bind(conv)
                .execute(c)
                .await
                .map(|_| ()))
            .map_err(db_error)?;
        }
    }
    // One multi-row insert per table (a conversation of a big inbox has many participants).
    for chunk in r.inbox_rows.chunks(ROWS_PER_INSERT) {
        let sql = values_sql(
            "INSERT INTO conversation_inboxes (tenant_id, conversation_id, inbox_id, archived, status, updated_us) VALUES ",
            &["$1", "$2", "?", "?", "$3", "$4"],
            chunk.len(),
            4,
        );
        on_tx!(&mut *tx, |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(t)
                .bind(conv)
                .bind(r.status)
                .bind(r.updated_us);
            for (inbox, archived) in chunk {
                q = q.bind(inbox).bind(archived);
            }
            q.execute(c).await.map(|_| ())
        })
        .map_err(db_error)?;
    }
    for chunk in r.user_ids.chunks(ROWS_PER_INSERT) {
        let sql = values_sql(
            "INSERT INTO conversation_participants (tenant_id, conversation_id, user_id, updated_us) VALUES ",
            &["$1", "$2", "?", "$3"],
            chunk.len(),
            3,
        );
        on_tx!(&mut *tx, |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(t)
                .bind(conv)
                .bind(r.updated_us);
            for user in chunk {
                q = q.bind(user);
            }
            q.execute(c).await.map(|_| ())
        })
        .map_err(db_error)?;
    }
    for chunk in r.tag_list.chunks(ROWS_PER_INSERT) {
        let sql = values_sql(
            "INSERT INTO conversation_tags (tenant_id, conversation_id, tag) VALUES ",
            &["$1", "$2", "?"],
            chunk.len(),
            2,
        );
        on_tx!(&mut *tx, |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(t)
                .bind(conv);
            for tag in chunk {
                q = q.bind(tag.as_str());
            }
            q.execute(c).await.map(|_| ())
        })
        .map_err(db_error)?;
    }
    Ok(())
}

/// Rows per multi-row insert of the index tables (well below either backend's parameter limit).
const ROWS_PER_INSERT: usize = 200;

/// `prefix` followed by `rows` tuples of `columns`: a `$n` column is shared by every row, each
/// `?` becomes the next parameter after the `shared` ones.
fn values_sql(prefix: &str, columns: &[&str], rows: usize, shared: usize) -> String {
    let mut next = shared;
    let tuples: Vec<String> = (0..rows)
        .map(|_| {
            let cols: Vec<String> = columns
                .iter()
                .map(|c| {
                    if *c == "?" {
                        next += 1;
                        format!("${next}")
                    } else {
                        (*c).to_owned()
                    }
                })
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect();
    // Idempotent: a row already there (a replay) is left as it is.
    format!("{prefix}{} ON CONFLICT DO NOTHING", tuples.join(", "))
}

/// The common change — a reply, a note, a status or an assignment — leaves the conversation's
/// participants, inboxes and tags as they were. Then the rows that index them stay and only
/// their order columns move: three statements instead of a delete and an insert per row.
/// `false` (nothing written) when the stored row has other sets, or is missing, or is newer.
async fn update_in_place(
    tx: &mut DbTx,
    t: Uuid,
    conv: Uuid,
    r: &RowValues,
) -> Result<bool, StoreError> {
    let changed = on_tx!(&mut *tx, |c| sqlx::query(
        "UPDATE conversations SET inbox_id = $3, status = $4, priority = $5, assignee = $6, snoozed_until = $7, \
           merged_into = $8, message_count = $9, note_count = $10, summary = $11, summary_key = $12, \
           created_us = $13, updated_us = $14, version = $15 \
         WHERE tenant_id = $1 AND conversation_id = $2 AND version < $15 \
           AND participants = $16 AND inboxes = $17 AND tags = $18"
    )
    .bind(t)
    .bind(conv)
    .bind(r.inbox_id)
    .bind(r.status)
    .bind(r.priority)
    .bind(r.assignee)
    .bind(r.snoozed_until)
    .bind(r.merged_into)
    .bind(r.message_count)
    .bind(r.note_count)
    .bind(&r.summary)
    .bind(r.summary_key)
    .bind(r.created_us)
    .bind(r.updated_us)
    .bind(r.version)
    .bind(&r.participants)
    .bind(&r.inboxes)
    .bind(&r.tags)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    if changed == 0 {
        return Ok(false);
    }
    on_tx!(&mut *tx, |c| sqlx::query(
        "UPDATE conversation_inboxes SET status = $3, updated_us = $4 WHERE tenant_id = $1 AND conversation_id = $2"
    )
    .bind(t)
    .bind(conv)
    .bind(r.status)
    .bind(r.updated_us)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    if !r.user_ids.is_empty() {
        on_tx!(&mut *tx, |c| sqlx::query(
            "UPDATE conversation_participants SET updated_us = $3 WHERE tenant_id = $1 AND conversation_id = $2"
        )
        .bind(t)
        .bind(conv)
        .bind(r.updated_us)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
    }
    Ok(true)
}

/// A conversation row as read.
#[derive(Debug, Clone)]
pub(crate) struct ConversationRow {
    pub id: Uuid,
    pub inbox_id: Uuid,
    pub status: String,
    pub priority: String,
    pub assignee: Option<Uuid>,
    pub snoozed_until: Option<i64>,
    pub merged_into: Option<Uuid>,
    pub participants: Vec<Uuid>,
    /// Participants added explicitly.
    pub explicit: Vec<Uuid>,
    pub inboxes: Vec<(Uuid, bool)>,
    pub tags: Vec<String>,
    pub message_count: i64,
    pub note_count: i64,
    pub summary: Vec<u8>,
    pub summary_key: Uuid,
    pub created_us: i64,
    pub updated_us: i64,
    pub version: i64,
}

const COLUMNS: &str = "c.conversation_id, c.inbox_id, c.status, c.priority, c.assignee, c.snoozed_until, c.merged_into, \
    c.participants, c.inboxes, c.tags, c.message_count, c.note_count, c.summary, c.summary_key, c.created_us, c.updated_us, c.version";

fn conversation_row<R: Row>(r: &R) -> Result<ConversationRow, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    Uuid: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let participants: String = r.try_get(7)?;
    let inboxes: String = r.try_get(8)?;
    let tags: String = r.try_get(9)?;
    // Written by `prepare` (ids separated by one space, `+` after an explicit one): one
    // pass, ASCII parsing — a list page reads dozens of these rows.
    let mut all = Vec::new();
    let mut explicit = Vec::new();
    for s in participants.split(' ').filter(|s| !s.is_empty()) {
        let (id, added) = match s.strip_suffix('+') {
            Some(id) => (id, true),
            None => (s, false),
        };
        if let Ok(u) = Uuid::try_parse_ascii(id.as_bytes()) {
            all.push(u);
            if added {
                explicit.push(u);
            }
        }
    }
    Ok(ConversationRow {
        id: r.try_get(0)?,
        inbox_id: r.try_get(1)?,
        status: r.try_get(2)?,
        priority: r.try_get(3)?,
        assignee: r.try_get(4)?,
        snoozed_until: r.try_get(5)?,
        merged_into: r.try_get(6)?,
        participants: all,
        explicit,
        inboxes: inboxes
            .split(' ')
            .filter_map(|s| {
                let (id, archived) = s.split_once(':')?;
                Some((Uuid::try_parse_ascii(id.as_bytes()).ok()?, archived == "1"))
            })
            .collect(),
        tags: tags
            .split(' ')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        message_count: r.try_get(10)?,
        note_count: r.try_get(11)?,
        summary: r.try_get(12)?,
        summary_key: r.try_get(13)?,
        created_us: r.try_get(14)?,
        updated_us: r.try_get(15)?,
        version: r.try_get(16)?,
    })
}

/// List filters (already validated).
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    pub inbox: Option<Uuid>,
    pub archived: bool,
    pub status: Option<String>,
    pub assignee: Option<Uuid>,
    pub unassigned: bool,
    pub tag: Option<String>,
    pub participant: Option<Uuid>,
    pub snoozed: Option<bool>,
    pub now_us: i64,
    pub updated_since_us: Option<i64>,
    pub include_merged: bool,
    /// Blind-index terms that must all be present (a search).
    pub search: Vec<SearchKey>,
}

/// One term of a search, as its blind index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SearchKey {
    /// A whole word's term.
    Word(i64),
    /// A prefix's term (`abc*`).
    Prefix(i64),
}

/// Position after which a page starts: `(updated_us, conversation_id)`, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub updated_us: i64,
    pub id: Uuid,
}

impl Cursor {
    pub const START: Cursor = Cursor {
        updated_us: i64::MAX,
        id: Uuid::max(),
    };

    pub fn encode(self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}:{}", self.updated_us, self.id))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (t, id) = text.split_once(':')?;
        Some(Self {
            updated_us: t.parse().ok()?,
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

pub(crate) async fn list(
    tx: &mut impl AsConn,
    tenant: TenantId,
    f: &ListFilter,
    after: Cursor,
    limit: i64,
) -> Result<Vec<ConversationRow>, StoreError> {
    let fts = tx.is_sqlite();
    let (sql, args) = list_sql(tenant, f, after, limit, fts);
    let sql = sqlx::AssertSqlSafe(sql);
    on_tx!(tx, |c| {
        let mut q = sqlx::query(sql);
        for a in &args {
            q = match a {
                Arg::Uuid(v) => q.bind(*v),
                Arg::Bool(v) => q.bind(*v),
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_str()),
            };
        }
        q.fetch_all(c)
            .await
            .and_then(|rows| rows.iter().map(conversation_row).collect())
    })
    .map_err(db_error)
}

/// A bound value of a list query.
#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Uuid(Uuid),
    Bool(bool),
    Int(i64),
    Text(String),
}

/// The list query for exactly the filters given, newest change first.
///
/// Only the active filters are in the SQL (a catch-all `$n IS NULL OR …` statement gets one
/// generic plan from PostgreSQL after a few executions, which cannot use the right index and
/// read every row of the inbox). The query walks the index of the most selective view it has:
/// the inbox's (`conversation_inboxes_recent`/`_status`, which carry `status` and `updated_us`
/// copied from the conversation), else the participant's (`conversation_participants_recent`),
/// else the tenant's (`conversations_recent`), and stops after `limit` rows. The cursor is a
/// row-value comparison on the walked index's columns.
///
/// A search term is found through the inverted index of the search documents: GIN on
/// PostgreSQL, FTS5 on SQLite (`fts`). A conversation matches when each term is in one of its
/// documents (not necessarily the same one).
fn list_sql(
    tenant: TenantId,
    f: &ListFilter,
    after: Cursor,
    limit: i64,
    fts: bool,
) -> (String, Vec<Arg>) {
    let mut args: Vec<Arg> = Vec::new();
    let mut p = |a: Arg| {
        args.push(a);
        format!("${}", args.len())
    };
    let t = p(Arg::Uuid(tenant.0));
    let mut from = String::from("conversations c");
    let mut conds: Vec<String> = Vec::new();
    // The walked view: its alias holds `updated_us` and `conversation_id` for order and cursor.
    let mut view = "c";
    let mut status_done = false;
    if let Some(inbox) = f.inbox {
        from = "conversation_inboxes v JOIN conversations c ON c.tenant_id = v.tenant_id \
                AND c.conversation_id = v.conversation_id"
            .to_owned();
        view = "v";
        conds.push(format!("v.tenant_id = {t}"));
        conds.push(format!("v.inbox_id = {}", p(Arg::Uuid(inbox))));
        conds.push(format!("v.archived = {}", p(Arg::Bool(f.archived))));
        if let Some(s) = &f.status {
            conds.push(format!("v.status = {}", p(Arg::Text(s.clone()))));
            status_done = true;
        }
    } else if let Some(user) = f.participant {
        from = "conversation_participants v JOIN conversations c ON c.tenant_id = v.tenant_id \
                AND c.conversation_id = v.conversation_id"
            .to_owned();
        view = "v";
        conds.push(format!("v.tenant_id = {t}"));
        conds.push(format!("v.user_id = {}", p(Arg::Uuid(user))));
    }
    conds.push(format!("c.tenant_id = {t}"));
    if let (Some(user), Some(_)) = (f.participant, f.inbox) {
        conds.push(format!(
            "EXISTS (SELECT 1 FROM conversation_participants pp WHERE pp.tenant_id = {t} \
             AND pp.conversation_id = c.conversation_id AND pp.user_id = {})",
            p(Arg::Uuid(user))
        ));
    }
    if let (Some(s), false) = (&f.status, status_done) {
        conds.push(format!("c.status = {}", p(Arg::Text(s.clone()))));
    }
    if let Some(a) = f.assignee {
        conds.push(format!("c.assignee = {}", p(Arg::Uuid(a))));
    }
    if f.unassigned {
        conds.push("c.assignee IS NULL".into());
    }
    if let Some(tag) = &f.tag {
        conds.push(format!(
            "EXISTS (SELECT 1 FROM conversation_tags g WHERE g.tenant_id = {t} \
             AND g.conversation_id = c.conversation_id AND g.tag = {})",
            p(Arg::Text(tag.clone()))
        ));
    }
    if let Some(snoozed) = f.snoozed {
        let now = p(Arg::Int(f.now_us));
        conds.push(if snoozed {
            format!("(c.snoozed_until IS NOT NULL AND c.snoozed_until > {now})")
        } else {
            format!("(c.snoozed_until IS NULL OR c.snoozed_until <= {now})")
        });
    }
    if let Some(since) = f.updated_since_us {
        conds.push(format!("c.updated_us >= {}", p(Arg::Int(since))));
    }
    if !f.include_merged {
        conds.push("c.merged_into IS NULL".into());
    }
    for key in &f.search {
        conds.push(match (fts, *key) {
            (true, SearchKey::Word(term) | SearchKey::Prefix(term)) => format!(
                "c.conversation_id IN (SELECT d.conversation_id FROM conversation_search_docs d \
                 WHERE d.tenant_id = {t} AND d.doc_rowid IN (SELECT rowid FROM conversation_search_fts \
                 WHERE conversation_search_fts MATCH {}))",
                p(Arg::Text(fts_match(term)))
            ),
            (false, SearchKey::Word(term)) => format!(
                "c.conversation_id IN (SELECT d.conversation_id FROM conversation_search_docs d \
                 WHERE d.tenant_id = {t} AND d.terms @> ARRAY[{}::bigint])",
                p(Arg::Int(term))
            ),
            // The words the vocabulary lists under the prefix; and the prefix term itself,
            // which documents indexed before the vocabulary (migration 0026) hold.
            (false, SearchKey::Prefix(term)) => {
                let term = p(Arg::Int(term));
                format!(
                    "c.conversation_id IN (SELECT d.conversation_id FROM conversation_search_docs d \
                     WHERE d.tenant_id = {t} AND d.terms && (ARRAY[{term}::bigint] || ARRAY(\
                     SELECT v.word FROM conversation_search_prefixes v \
                     WHERE v.tenant_id = {t} AND v.prefix = {term})))"
                )
            }
        });
    }
    let (us, id) = (p(Arg::Int(after.updated_us)), p(Arg::Uuid(after.id)));
    conds.push(format!(
        "({view}.updated_us, {view}.conversation_id) < ({us}, {id})"
    ));
    let lim = p(Arg::Int(limit));
    let sql = format!(
        "SELECT {COLUMNS} FROM {from} WHERE {} \
         ORDER BY {view}.updated_us DESC, {view}.conversation_id DESC LIMIT {lim}",
        conds.join(" AND ")
    );
    (sql, args)
}

/// The version of a conversation's row, if it has one.
pub(crate) async fn version(
    tx: &mut DbTx,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT version FROM conversations WHERE tenant_id = $1 AND conversation_id = $2"
    )
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(c)
    .await)
    .map_err(db_error)?;
    Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
}

pub(crate) async fn get(
    tx: &mut impl AsConn,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<ConversationRow>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM conversations c WHERE c.tenant_id = $1 AND c.conversation_id = $2"
    ));
    on_tx!(tx, |c| sqlx::query(sql)
        .bind(tenant.0)
        .bind(id)
        .fetch_optional(c)
        .await
        .and_then(|r| r.as_ref().map(conversation_row).transpose()))
    .map_err(db_error)
}

/// A conversation's row with the delivery reports of its replies, in one statement (one round
/// trip for a get whose thread is cached): the row repeats once per report, or comes once with
/// no report.
pub(crate) async fn get_with_reports(
    tx: &mut impl AsConn,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<(ConversationRow, Vec<crate::delivery::DeliveryRow>)>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, d.message_id, d.state, d.reason, d.smtp_code, d.detail, d.detail_key, \
         d.at_us FROM conversations c LEFT JOIN conversation_reply_delivery d \
         ON d.tenant_id = c.tenant_id AND d.conversation_id = c.conversation_id \
         WHERE c.tenant_id = $1 AND c.conversation_id = $2"
    ));
    on_tx!(tx, |c| async {
        let rows = sqlx::query(sql)
            .bind(tenant.0)
            .bind(id)
            .fetch_all(c)
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let row = conversation_row(first)?;
        let mut reports = Vec::new();
        for r in &rows {
            // The report's columns follow the row's 17; all NULL when it has none.
            let Some(message_id) = r.try_get::<Option<Uuid>, _>(17)? else {
                continue;
            };
            reports.push((
                message_id,
                r.try_get(18)?,
                r.try_get(19)?,
                r.try_get(20)?,
                r.try_get(21)?,
                r.try_get(22)?,
                r.try_get(23)?,
            ));
        }
        Ok::<_, sqlx::Error>(Some((row, reports)))
    }
    .await)
    .map_err(db_error)
}

/// Sealed messages of a conversation added after `after_version`, oldest first.
pub(crate) async fn messages(
    tx: &mut impl AsConn,
    tenant: TenantId,
    conversation: Uuid,
    after_version: i64,
) -> Result<Vec<MessageEntry>, StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "SELECT message_id, direction, content, content_key FROM conversation_messages \
         WHERE tenant_id = $1 AND conversation_id = $2 AND version > $3 ORDER BY at_us, message_id"
    )
    .bind(tenant.0)
    .bind(conversation)
    .bind(after_version)
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect()))
    .map_err(db_error)
}

/// A sealed message: id, direction, content, key.
pub(crate) type MessageEntry = (Uuid, String, Vec<u8>, Uuid);
/// A sealed note: id, content, key.
pub(crate) type NoteEntry = (Uuid, Vec<u8>, Uuid);

/// All sealed messages and notes of a conversation, each oldest first, in one statement (a
/// conversation read is a handful of round trips; this saves one).
pub(crate) async fn messages_and_notes(
    tx: &mut impl AsConn,
    tenant: TenantId,
    conversation: Uuid,
) -> Result<(Vec<MessageEntry>, Vec<NoteEntry>), StoreError> {
    let rows = on_tx!(tx, |c| sqlx::query(
        "SELECT message_id, direction, content, content_key, at_us FROM conversation_messages \
           WHERE tenant_id = $1 AND conversation_id = $2 \
         UNION ALL \
         SELECT note_id, 'note', content, content_key, at_us FROM conversation_notes \
           WHERE tenant_id = $1 AND conversation_id = $2 \
         ORDER BY 5, 1"
    )
    .bind(tenant.0)
    .bind(conversation)
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect::<Result<Vec<MessageEntry>, sqlx::Error>>()))
    .map_err(db_error)?;
    let mut messages = Vec::with_capacity(rows.len());
    let mut notes = Vec::new();
    for (id, kind, content, key) in rows {
        if kind == "note" {
            notes.push((id, content, key));
        } else {
            messages.push((id, kind, content, key));
        }
    }
    Ok((messages, notes))
}

fn time_us(us: i64) -> time::OffsetDateTime {
    postvak_platform::store::from_micros(us)
}

fn mailbox_dto(m: &postvak_proto::events::conversation::MailboxV1) -> dto::Mailbox {
    dto::Mailbox {
        name: m.name.clone(),
        address: m.address.clone(),
    }
}

pub(crate) async fn conversation_dto(
    keyring: &Keyring,
    tenant: TenantId,
    r: &ConversationRow,
) -> Result<dto::Conversation, StoreError> {
    let plain = keyring
        .open(
            tenant,
            r.summary_key,
            &r.summary,
            &aad(tenant, r.id, b"summary"),
        )
        .await?;
    let s: Summary =
        serde_json::from_slice(&plain).map_err(|e| StoreError::Serialization(e.to_string()))?;
    Ok(dto::Conversation {
        id: r.id,
        inbox_id: r.inbox_id,
        status: r.status.clone(),
        priority: r.priority.clone(),
        assignee: r.assignee,
        tags: r.tags.clone(),
        subject: s.subject,
        snippet: s.snippet,
        contacts: s.contacts.iter().map(mailbox_dto).collect(),
        participants: r.participants.clone(),
        inboxes: r
            .inboxes
            .iter()
            .map(|(i, a)| dto::ConversationInbox {
                inbox_id: *i,
                archived: *a,
            })
            .collect(),
        snoozed_until: r.snoozed_until.map(time_us),
        message_count: u64::try_from(r.message_count).unwrap_or(0),
        note_count: u64::try_from(r.note_count).unwrap_or(0),
        merged_into: r.merged_into,
        created_at: time_us(r.created_us),
        updated_at: time_us(r.updated_us),
        version: u64::try_from(r.version).unwrap_or(0),
    })
}

pub(crate) async fn message_dto(
    keyring: &Keyring,
    tenant: TenantId,
    (id, direction, sealed, key): &(Uuid, String, Vec<u8>, Uuid),
) -> Result<dto::ConversationMessage, StoreError> {
    let plain = keyring
        .open(tenant, *key, sealed, &aad(tenant, *id, b"message"))
        .await?;
    let m: postvak_proto::events::conversation::MessageV1 =
        serde_json::from_slice(&plain).map_err(|e| StoreError::Serialization(e.to_string()))?;
    Ok(dto::ConversationMessage {
        id: m.message_id,
        direction: direction.clone(),
        subject: m.subject,
        from: m.from.iter().map(mailbox_dto).collect(),
        to: m.to.iter().map(mailbox_dto).collect(),
        cc: m.cc.iter().map(mailbox_dto).collect(),
        snippet: m.snippet,
        body_text: m.body_text,
        text_blob_id: m.text_blob,
        html_blob_id: m.html_blob,
        attachments: m.attachments,
        attachment_list: m.files.iter().map(crate::files::attachment_dto).collect(),
        body_html: m.body_html,
        message_id_header: m.message_id_header,
        in_reply_to: m.in_reply_to,
        references: m.references,
        author: m.author,
        auto_reply: m.auto_reply,
        at: time_us(m.at_us),
        // Outbound: filled in by `delivery::attach`.
        delivery: None,
    })
}

pub(crate) async fn note_dto(
    keyring: &Keyring,
    tenant: TenantId,
    (id, sealed, key): &(Uuid, Vec<u8>, Uuid),
) -> Result<dto::Note, StoreError> {
    let plain = keyring
        .open(tenant, *key, sealed, &aad(tenant, *id, b"note"))
        .await?;
    let n: postvak_proto::events::conversation::NoteAddedV1 =
        serde_json::from_slice(&plain).map_err(|e| StoreError::Serialization(e.to_string()))?;
    Ok(dto::Note {
        id: n.note_id,
        author: n.author,
        body: n.body,
        mentions: n.mentions,
        at: time_us(n.at_us),
    })
}
