//! The delivery pipeline every entry point shares (SMTP, raw MIME, IMAP):
//! parse → dedupe → thread → seal blobs → ONE transaction: append `message.received`, store the
//! blobs, record the message and its thread index → commit.
//!
//! Why it loses and doubles nothing:
//! - Everything a delivery writes commits in one transaction
//!   ([`postvak_platform::store::EventStore::append_in_tx`]): a committed event never points at
//!   a missing blob, and a failure anywhere leaves nothing behind (no orphan blobs, no event
//!   without its index rows). One commit per mail instead of three is also what makes ingest
//!   fast: the commit's WAL flush was the cost.
//! - The event goes to a stream named after a blind index of (inbox, Message-ID, content
//!   hash), appended with `ExpectedVersion::NoStream`: a second delivery of the same mail —
//!   retry, second MX route, API replay — is a `Conflict`, answered as a duplicate with the
//!   first delivery's ids. Dedupe rests on the event store's primary key, not on a check.
//! - A duplicate re-records the index (idempotently), so a log restored without ingest's
//!   tables heals on redelivery; `rebuild_index` replays it all.
//! - Only after the commit does SMTP answer 250 (or HTTP 201/200); the commit wakes this
//!   process's relay / in-process bus through the store's append signal.

use crate::keys::IndexKey;
use crate::parse::{ParsedMail, parse};
use crate::repo::{self, SealedBlob};
use crate::thread::{self, ThreadMatch};
use postvak_platform::cell::{CellError, Cells, Principal, TenantContext};
use postvak_platform::crypto::CryptoError;
use postvak_platform::store::{KeyScope, LogPosition, NewEvent, StoreError, StreamRef, TenantId};
use postvak_proto::events::ingest::{
    self as ev, AttachmentV1, BlobRefV1, EnvelopeV1, MessageReceivedV1,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

const SERVICE: Principal = Principal::Service { name: "ingest" };

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Cell(#[from] CellError),
    #[error("parsing was interrupted: {0}")]
    Parser(String),
}

impl IngestError {
    /// Worth a retry by the sender (SMTP 4xx): everything here is, since nothing about the
    /// mail itself makes delivery fail.
    pub fn is_temporary(&self) -> bool {
        true
    }
}

/// Where a mail came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Smtp,
    Api,
    Imap,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Api => "api",
            Self::Imap => "imap",
        }
    }
}

/// A recipient that resolved to an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub tenant: TenantId,
    pub inbox_id: Uuid,
    /// The address as given (lower case).
    pub address: String,
    /// The `+tag` of the local part, if any: possibly a reply token.
    pub tag: Option<String>,
}

/// What a delivery produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub tenant: TenantId,
    pub message_id: Uuid,
    pub inbox_id: Uuid,
    pub conversation_id: Uuid,
    pub new_thread: bool,
    /// Already stored before: nothing new was written.
    pub duplicate: bool,
    pub stream_id: String,
}

/// The pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingestor {
    cells: Cells,
    keys: Arc<RwLock<HashMap<TenantId, IndexKey>>>,
    /// The group-commit queue of each cell (see [`crate::pipeline`]'s "Group commit").
    committers: Arc<Mutex<HashMap<String, mpsc::Sender<Job>>>>,
    /// Recipient addresses that resolved to an inbox, for [`RECIPIENT_TTL`].
    recipients: Arc<RwLock<HashMap<String, CachedRecipient>>>,
}

/// How long an `RCPT TO` address that resolved to an inbox is trusted without asking the
/// directory again: an address removed from an inbox is still accepted for at most this long
/// (the mail lands in the inbox that owned it a moment ago). Unknown addresses are never
/// cached: an address added to an inbox is accepted at once (a 550 would be final).
pub const RECIPIENT_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// A resolved address: when, the inbox, and whether it was found through its `local+tag`
/// base (then the tag is kept: possibly a reply token).
type CachedRecipient = (Instant, TenantId, Uuid, bool);

/// Addresses cached at most (then the cache starts afresh).
const RECIPIENT_CACHE: usize = 10_000;

fn key_aad(tenant: TenantId) -> Vec<u8> {
    let mut aad = b"postvak.ingest.index-key".to_vec();
    aad.extend_from_slice(tenant.0.as_bytes());
    aad
}

/// Associated data of a blob: its ciphertext only opens as this tenant's blob with this id.
pub fn blob_aad(tenant: TenantId, blob_id: Uuid) -> [u8; 32] {
    let mut aad = [0u8; 32];
    aad[..16].copy_from_slice(tenant.0.as_bytes());
    aad[16..].copy_from_slice(blob_id.as_bytes());
    aad
}

/// The stream of one delivered message.
pub fn message_stream(stream_id: &str) -> StreamRef {
    StreamRef::new(ev::STREAM_INBOUND_MESSAGE, stream_id)
}

impl Ingestor {
    pub fn new(cells: Cells) -> Self {
        Self {
            cells,
            keys: Arc::new(RwLock::new(HashMap::new())),
            committers: Arc::new(Mutex::new(HashMap::new())),
            recipients: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    pub fn cells(&self) -> &Cells {
        &self.cells
    }

    /// A context for a tenant acting as the ingest service.
    pub async fn context(&self, tenant: TenantId) -> Result<TenantContext, IngestError> {
        Ok(self.cells.context(tenant, SERVICE).await?)
    }

    /// The inbox an `RCPT TO` names, or `None` (then: 550, never relay). Accepts the inbox's
    /// addresses and aliases and `local+tag@domain` forms of them (reply tokens and
    /// sub-addressing).
    pub async fn resolve_recipient(&self, address: &str) -> Result<Option<Recipient>, IngestError> {
        let address = address.trim().to_ascii_lowercase();
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Ok(None);
        };
        let tag = local
            .split_once('+')
            .filter(|(base, _)| !base.is_empty())
            .map(|(_, tag)| tag.to_owned());
        let cached = read(&self.recipients).get(&address).copied();
        if let Some((at, tenant, inbox_id, tagged)) = cached
            && at.elapsed() < RECIPIENT_TTL
        {
            return Ok(Some(Recipient {
                tenant,
                inbox_id,
                address,
                tag: if tagged { tag } else { None },
            }));
        }
        let dir = self.cells.directory();
        let mut found = repo::resolve_address(dir, &address)
            .await?
            .map(|hit| (hit, None));
        if found.is_none()
            && let Some((base, _)) = local.split_once('+')
            && !base.is_empty()
        {
            found = repo::resolve_address(dir, &format!("{base}@{domain}"))
                .await?
                .map(|hit| (hit, tag));
        }
        let Some(((tenant, inbox_id), tag)) = found else {
            return Ok(None);
        };
        {
            let mut cache = write(&self.recipients);
            if cache.len() >= RECIPIENT_CACHE {
                cache.clear();
            }
            cache.insert(
                address.clone(),
                (Instant::now(), tenant, inbox_id, tag.is_some()),
            );
        }
        Ok(Some(Recipient {
            tenant,
            inbox_id,
            address,
            tag,
        }))
    }

    /// The tenant's index key, created on first use, cached for the life of the process.
    pub async fn index_key(&self, ctx: &TenantContext) -> Result<IndexKey, IngestError> {
        let tenant = ctx.tenant();
        if let Some(k) = read(&self.keys).get(&tenant) {
            return Ok(k.clone());
        }
        let db = ctx.cell().db();
        let keyring = ctx.cell().store.keyring();
        let stored = match repo::load_index_key(db, tenant).await? {
            Some(s) => s,
            None => {
                let fresh = IndexKey::generate();
                let (key_id, sealed) = keyring
                    .seal(
                        tenant,
                        &KeyScope::Tenant,
                        fresh.as_bytes(),
                        &key_aad(tenant),
                    )
                    .await?;
                repo::insert_index_key(db, tenant, key_id, &sealed).await?;
                repo::load_index_key(db, tenant)
                    .await?
                    .ok_or_else(|| StoreError::Database("the index key was not stored".into()))?
            }
        };
        let plain = keyring
            .open(tenant, stored.0, &stored.1, &key_aad(tenant))
            .await?;
        let bytes: [u8; 32] = plain.try_into().map_err(|_| {
            StoreError::Database("the stored index key has the wrong length".into())
        })?;
        let key = IndexKey::from_bytes(bytes);
        write(&self.keys).insert(tenant, key.clone());
        Ok(key)
    }

    /// Parses off the async executor (large mails take milliseconds).
    pub async fn parse(raw: Arc<Vec<u8>>) -> Result<Arc<ParsedMail>, IngestError> {
        if raw.len() < 64 * 1024 {
            return Ok(Arc::new(parse(&raw)));
        }
        tokio::task::spawn_blocking(move || Arc::new(parse(&raw)))
            .await
            .map_err(|e| IngestError::Parser(e.to_string()))
    }

    /// Delivers one mail to every recipient's inbox (recipients naming the same inbox twice get
    /// one copy). All or an error: on error the sender retries, and what was delivered is
    /// recognised as a duplicate.
    pub async fn deliver(
        &self,
        raw: Arc<Vec<u8>>,
        recipients: &[Recipient],
        envelope: &EnvelopeV1,
        source: Source,
    ) -> Result<Vec<Delivery>, IngestError> {
        let parsed = Self::parse(raw.clone()).await?;
        let mut seen: Vec<(TenantId, Uuid)> = Vec::new();
        let mut out = Vec::new();
        for r in recipients {
            if seen.contains(&(r.tenant, r.inbox_id)) {
                continue;
            }
            seen.push((r.tenant, r.inbox_id));
            // A tagged address for the same inbox wins: it may carry a reply token.
            let tag = recipients
                .iter()
                .filter(|o| o.tenant == r.tenant && o.inbox_id == r.inbox_id)
                .find_map(|o| o.tag.as_deref());
            let ctx = self.context(r.tenant).await?;
            let env = EnvelopeV1 {
                rcpt_to: Some(r.address.clone()),
                ..envelope.clone()
            };
            out.push(
                self.deliver_to_inbox(&ctx, r.inbox_id, &raw, &parsed, tag, env, source)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Delivers a parsed mail to one inbox of the context's tenant.
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant(), inbox_id = %inbox))]
    pub async fn deliver_to_inbox(
        &self,
        ctx: &TenantContext,
        inbox: Uuid,
        raw: &[u8],
        mail: &ParsedMail,
        tag: Option<&str>,
        envelope: EnvelopeV1,
        source: Source,
    ) -> Result<Delivery, IngestError> {
        let started = Instant::now();
        let tenant = ctx.tenant();
        let key = self.index_key(ctx).await?;
        let stream_id = format!(
            "msg-{}-{}",
            inbox.simple(),
            key.dedupe_key(inbox, mail.message_id.as_deref(), &mail.content_hash)
        );
        let stream = message_stream(&stream_id);
        let store = &ctx.cell().store;

        // Seal the blobs before the transaction opens: on SQLite, creating the tenant's data
        // key would need the writer connection the transaction holds.
        let mut plain: Vec<(&[u8], String)> = vec![(raw, "message/rfc822".to_owned())];
        if let Some(t) = &mail.text {
            plain.push((t.as_bytes(), "text/plain; charset=utf-8".to_owned()));
        }
        if let Some(h) = &mail.html {
            plain.push((h.as_bytes(), "text/html; charset=utf-8".to_owned()));
        }
        for a in &mail.attachments {
            plain.push((&a.data, a.content_type.clone()));
        }
        let mut refs = Vec::with_capacity(plain.len());
        let mut aads = Vec::with_capacity(plain.len());
        for (i, (bytes, ct)) in plain.iter().enumerate() {
            let sha: [u8; 32] = if i == 0 {
                mail.raw_sha256
            } else {
                Sha256::digest(bytes).into()
            };
            let blob_id = key.blob_id(&sha);
            aads.push(blob_aad(tenant, blob_id));
            refs.push(BlobRefV1 {
                blob_id,
                size: bytes.len() as u64,
                sha256: hex::encode(sha),
                content_type: ct.clone(),
            });
        }
        let (key_id, sealed) = store
            .keyring()
            .seal_many(
                tenant,
                &KeyScope::Tenant,
                plain
                    .iter()
                    .zip(&aads)
                    .map(|((b, _), aad)| (*b, aad.as_slice())),
            )
            .await?;
        let mut blobs: Vec<SealedBlob> = Vec::with_capacity(refs.len());
        for (r, s) in refs.iter().zip(sealed) {
            if !blobs.iter().any(|b| b.blob_id == r.blob_id) {
                blobs.push(SealedBlob {
                    blob_id: r.blob_id,
                    key_id,
                    size: r.size as i64,
                    sealed: s,
                });
            }
        }

        // Threading by reply token or our own Message-IDs needs no lookup; otherwise the commit
        // stage looks the candidates up inside the transaction.
        let threading = match thread::by_token(&key, inbox, tag, mail) {
            Some(hit) => Threading::Known(hit),
            None => Threading::Lookup(
                thread::lookup_order(mail)
                    .into_iter()
                    .map(|(id, m)| (key.message_id_hash(id), m))
                    .collect(),
            ),
        };
        // The event.
        let mut refs = refs.into_iter();
        let raw_ref = refs
            .next()
            .ok_or_else(|| StoreError::Serialization("no raw blob".into()))?;
        let text_body = if mail.text.is_some() {
            refs.next()
        } else {
            None
        };
        let html_body = if mail.html.is_some() {
            refs.next()
        } else {
            None
        };
        let attachments = mail
            .attachments
            .iter()
            .zip(refs)
            .map(|(a, blob)| AttachmentV1 {
                blob,
                filename: a.filename.clone(),
                content_id: a.content_id.clone(),
                inline: a.inline,
            })
            .collect();
        let mut flags = mail.flags.clone();
        if envelope.mail_from.as_deref() == Some("") && !flags.bounce {
            // A null reverse path is how bounces and other notifications travel (RFC 5321
            // §4.5.5); never answer it.
            flags.auto_reply = true;
        }
        let message_id = Uuid::now_v7();
        let payload = MessageReceivedV1 {
            message_id,
            inbox_id: inbox,
            // Filled in by the commit stage, which threads the mail.
            conversation_id: Uuid::nil(),
            new_thread: true,
            thread_match: ThreadMatch::None.as_str().to_owned(),
            source: source.as_str().to_owned(),
            received_at_us: postvak_platform::store::micros(time::OffsetDateTime::now_utc()),
            raw: raw_ref,
            content_hash: hex::encode(mail.content_hash),
            message_id_header: mail.message_id.clone(),
            in_reply_to: mail.in_reply_to.clone(),
            references: mail.references.clone(),
            headers: mail.headers.clone(),
            envelope,
            text_body,
            html_body,
            snippet: mail.snippet.clone(),
            // Here the text is in hand before it is sealed: no blob is opened again for search.
            search_words: postvak_core::conversation::body_search_words(
                mail.text.as_deref().unwrap_or(""),
            ),
            attachments,
            flags,
            auth_results: mail.auth_results.clone(),
        };
        let job = Job {
            ctx: ctx.clone(),
            stream: stream.clone(),
            threading,
            payload,
            blobs,
            record_hashes: record_hashes(&key, mail),
            done: None,
        };
        let (conversation_id, matched) = match self.commit(job).await? {
            Committed::Stored {
                conversation_id,
                matched,
            } => (conversation_id, matched),
            Committed::Duplicate => {
                // The same mail was stored before, or by a concurrent delivery that won.
                return self.duplicate(ctx, &key, inbox, mail, &stream).await;
            }
        };
        let new_thread = matched == ThreadMatch::None;
        metrics::counter!("postvak_ingest_messages_total", "source" => source.as_str(), "outcome" => "stored")
            .increment(1);
        metrics::histogram!("postvak_ingest_deliver_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(%message_id, %conversation_id, new_thread, thread_match = matched.as_str(), "message stored");
        Ok(Delivery {
            tenant,
            message_id,
            inbox_id: inbox,
            conversation_id,
            new_thread,
            duplicate: false,
            stream_id,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        ctx: &TenantContext,
        key: &IndexKey,
        inbox: Uuid,
        mail: &ParsedMail,
        message_id: Uuid,
        stream_id: &str,
        conversation: Uuid,
    ) -> Result<(), IngestError> {
        let hashes = record_hashes(key, mail);
        repo::record_message(
            ctx.cell().db(),
            ctx.tenant(),
            inbox,
            message_id,
            stream_id,
            &hashes,
            conversation,
        )
        .await?;
        Ok(())
    }

    /// A delivery whose stream exists: answer with the first delivery's ids, and repair the
    /// thread index in case the first delivery stopped before writing it.
    async fn duplicate(
        &self,
        ctx: &TenantContext,
        key: &IndexKey,
        inbox: Uuid,
        mail: &ParsedMail,
        stream: &StreamRef,
    ) -> Result<Delivery, IngestError> {
        let events = ctx.read_stream(stream).await?;
        let first = events
            .first()
            .ok_or_else(|| StoreError::Database(format!("stream {} vanished", stream.stream_id)))?;
        let p: MessageReceivedV1 = first.payload()?;
        self.record(
            ctx,
            key,
            inbox,
            mail,
            p.message_id,
            &stream.stream_id,
            p.conversation_id,
        )
        .await?;
        metrics::counter!("postvak_ingest_messages_total", "source" => p.source.clone(), "outcome" => "duplicate")
            .increment(1);
        Ok(Delivery {
            tenant: ctx.tenant(),
            message_id: p.message_id,
            inbox_id: p.inbox_id,
            conversation_id: p.conversation_id,
            new_thread: p.new_thread,
            duplicate: true,
            stream_id: stream.stream_id.clone(),
        })
    }

    /// A blob's plaintext, if it is the tenant's.
    pub async fn read_blob(
        &self,
        ctx: &TenantContext,
        blob_id: Uuid,
    ) -> Result<Option<Vec<u8>>, IngestError> {
        let tenant = ctx.tenant();
        let Some((key_id, sealed)) = repo::get_blob(ctx.cell().db(), tenant, blob_id).await? else {
            return Ok(None);
        };
        let plain = ctx
            .cell()
            .store
            .keyring()
            .open(tenant, key_id, &sealed, &blob_aad(tenant, blob_id))
            .await?;
        Ok(Some(plain))
    }

    /// One stored message's `message.received` payload (`None`: ingest holds no such message
    /// for the tenant). The conversation service finds a message's original (`raw`) here.
    pub async fn received_message(
        &self,
        ctx: &TenantContext,
        message_id: Uuid,
    ) -> Result<Option<MessageReceivedV1>, IngestError> {
        let Some(stream_id) =
            repo::message_stream_of(ctx.cell().db(), ctx.tenant(), message_id).await?
        else {
            return Ok(None);
        };
        let events = ctx.read_stream(&message_stream(&stream_id)).await?;
        match events.first() {
            Some(first) => Ok(Some(first.payload::<MessageReceivedV1>()?)),
            None => Ok(None),
        }
    }

    /// Every message stored for the tenant, oldest first. Reads ingest's own table (written
    /// before the 250) and each message's stream: a message is listed as soon as it was
    /// acknowledged, unlike the log, which a tailer sees only once older transactions end.
    pub async fn received_messages(
        &self,
        ctx: &TenantContext,
    ) -> Result<Vec<MessageReceivedV1>, IngestError> {
        let mut out = Vec::new();
        for stream_id in repo::message_streams(ctx.cell().db(), ctx.tenant()).await? {
            let events = ctx.read_stream(&message_stream(&stream_id)).await?;
            if let Some(first) = events.first() {
                out.push(first.payload::<MessageReceivedV1>()?);
            }
        }
        Ok(out)
    }

    /// Rebuilds a tenant's message list and thread index from its `message.received` events in
    /// the log (after a restore, or if those writes were lost). Idempotent.
    pub async fn rebuild_index(&self, ctx: &TenantContext) -> Result<u64, IngestError> {
        let key = self.index_key(ctx).await?;
        let store = &ctx.cell().store;
        let mut after = LogPosition::START;
        let mut n = 0;
        loop {
            let page = store.read_log(after, 1000, Some(ctx.tenant())).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for e in &page {
                if e.stream_type != ev::STREAM_INBOUND_MESSAGE
                    || e.event_type != ev::MESSAGE_RECEIVED
                {
                    continue;
                }
                let m: MessageReceivedV1 = store.open(e).await?.payload()?;
                let hashes: Vec<String> = m
                    .message_id_header
                    .iter()
                    .chain(&m.in_reply_to)
                    .chain(&m.references)
                    .map(|id| key.message_id_hash(id))
                    .collect();
                repo::record_message(
                    ctx.cell().db(),
                    ctx.tenant(),
                    m.inbox_id,
                    m.message_id,
                    &e.stream_id,
                    &hashes,
                    m.conversation_id,
                )
                .await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Mails one commit carries at most.
const MAX_BATCH: usize = 32;

/// Deliveries waiting for a commit stage before senders wait too.
const QUEUE: usize = 1024;

/// How a mail is threaded: already known (reply token, our own Message-ID) or by looking up
/// these blind indexes in the inbox's index, most telling first.
#[derive(Debug)]
enum Threading {
    Known((Uuid, ThreadMatch)),
    Lookup(Vec<(String, ThreadMatch)>),
}

/// One mail, sealed and ready to commit.
#[derive(Debug)]
struct Job {
    ctx: TenantContext,
    stream: StreamRef,
    threading: Threading,
    /// Complete but for the conversation, which the commit stage decides.
    payload: MessageReceivedV1,
    blobs: Vec<SealedBlob>,
    record_hashes: Vec<String>,
    done: Option<oneshot::Sender<Result<Committed, IngestError>>>,
}

impl Job {
    /// Every blob the mail's event names (raw, bodies, attachments), possibly repeated.
    fn blob_refs(&self) -> Vec<Uuid> {
        let p = &self.payload;
        std::iter::once(p.raw.blob_id)
            .chain(p.text_body.iter().map(|b| b.blob_id))
            .chain(p.html_body.iter().map(|b| b.blob_id))
            .chain(p.attachments.iter().map(|a| a.blob.blob_id))
            .collect()
    }
}

/// What committing one mail did.
#[derive(Debug, Clone, Copy)]
enum Committed {
    Stored {
        conversation_id: Uuid,
        matched: ThreadMatch,
    },
    /// Its stream exists: stored before (or by a concurrent delivery). Nothing was written.
    Duplicate,
}

impl Ingestor {
    /// Hands a mail to its cell's commit stage and waits until its transaction committed (or
    /// failed).
    async fn commit(&self, mut job: Job) -> Result<Committed, IngestError> {
        if commit_workers(job.ctx.cell()) == 0 {
            // No stage: the session commits its own mail.
            let mut done = commit_batch(std::slice::from_ref(&job)).await?;
            return Ok(done.pop().unwrap_or(Committed::Duplicate));
        }
        let (done, result) = oneshot::channel();
        job.done = Some(done);
        let queue = self.committer(job.ctx.cell());
        queue
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the commit stage stopped".into()))?;
        result
            .await
            .map_err(|_| StoreError::Unavailable("the commit stage stopped".into()))?
    }

    /// The commit queue of a cell, its workers started on first use.
    fn committer(&self, cell: &Arc<postvak_platform::cell::Cell>) -> mpsc::Sender<Job> {
        let mut map = self
            .committers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = map.get(&cell.name)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..commit_workers(cell) {
            tokio::spawn(commit_worker(rx.clone()));
        }
        map.insert(cell.name.clone(), tx.clone());
        tx
    }
}

/// Commit workers per cell: one on both backends. Its batches are written with a few
/// multi-row statements (ADR 0021), so a batch of 32 costs about the round trips of one mail;
/// one worker also decides threading for the cell's mails in order, so a reply and its parent
/// in flight together share a conversation. The environment variable
/// `PV_INGEST_COMMIT_WORKERS` changes the count, for measuring only: 0 makes each session
/// commit its own mail (the old PostgreSQL mode). (Not `POSTVAK_…`: that prefix is the
/// configuration's.)
fn commit_workers(_cell: &postvak_platform::cell::Cell) -> usize {
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| {
        std::env::var("PV_INGEST_COMMIT_WORKERS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1)
    })
}

/// Takes whatever mails are waiting (up to [`MAX_BATCH`]) and commits them together: no timer,
/// so a lone mail commits at once and a busy server commits many per transaction.
async fn commit_worker(rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        metrics::histogram!("postvak_ingest_commit_batch_size").record(batch.len() as f64);
        if batch.len() > 1 {
            match commit_batch(&batch).await {
                Ok(results) => {
                    for (mut job, r) in batch.into_iter().zip(results) {
                        if let Some(done) = job.done.take() {
                            let _ = done.send(Ok(r));
                        }
                    }
                    continue;
                }
                Err(e) => {
                    // One mail's failure must not fail the others: each gets its own try.
                    tracing::warn!(error = %e, n = batch.len(), "a group commit failed; committing its mails one by one");
                }
            }
        }
        for mut job in batch {
            let r = commit_batch(std::slice::from_ref(&job))
                .await
                .map(|mut v| v.pop().unwrap_or(Committed::Duplicate));
            if let Some(done) = job.done.take() {
                let _ = done.send(r);
            }
        }
    }
}

/// Commits mails of one cell in one transaction, with a few statements per tenant whatever the
/// batch's size (PostgreSQL): the thread lookup of every mail, the streams and events of every
/// mail, then every mail's blobs, message row, blob references and thread index. Threading is
/// decided in memory in arrival order, so a mail sees the index rows of the batch's earlier
/// mails as if they had been written one by one. A duplicate (its stream exists) writes nothing;
/// any other error rolls everything back.
///
/// On PostgreSQL the transaction first takes a transaction-scoped advisory lock on every thread
/// key it will read or claim (sorted: no deadlock between two of them): a reply and its parent
/// committed at the same instant by two processes are serialised, and the later one's lookup
/// sees the earlier one's index rows (ADR 0021).
async fn commit_batch(batch: &[Job]) -> Result<Vec<Committed>, IngestError> {
    let Some(first) = batch.first() else {
        return Ok(Vec::new());
    };
    let cell = first.ctx.cell();
    let store = &cell.store;
    // Row-level security is armed per tenant: the batch is written tenant by tenant.
    let mut tenants: Vec<TenantId> = Vec::new();
    for job in batch {
        if !tenants.contains(&job.ctx.tenant()) {
            tenants.push(job.ctx.tenant());
        }
    }
    let mut tx = repo::write_tx_locked(cell.db(), tenants[0], &thread_locks(batch)).await?;
    let mut out: Vec<Committed> = vec![Committed::Duplicate; batch.len()];
    for &tenant in &tenants {
        // Free for the first: `write_tx_locked` bound it at BEGIN.
        tx.bind_tenant(tenant).await?;
        let mine: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].ctx.tenant() == tenant)
            .collect();
        // Every candidate of every mail in one lookup.
        let mut wanted: Vec<(Uuid, &str)> = Vec::new();
        for &i in &mine {
            if let Threading::Lookup(order) = &batch[i].threading {
                let inbox = batch[i].payload.inbox_id;
                wanted.extend(order.iter().map(|(h, _)| (inbox, h.as_str())));
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let mut known = repo::lookup_threads_tx(&mut tx, tenant, &wanted).await?;
        // Decide in arrival order; a mail's claims are seen by the mails after it.
        let mut streams_seen: Vec<&str> = Vec::new();
        let mut plan = Vec::new();
        let mut appends = Vec::new();
        for &i in &mine {
            let job = &batch[i];
            if streams_seen.contains(&job.stream.stream_id.as_str()) {
                // The same mail twice in one batch: the first stores it.
                continue;
            }
            streams_seen.push(&job.stream.stream_id);
            let inbox = job.payload.inbox_id;
            let (conversation_id, matched) = match &job.threading {
                Threading::Known(hit) => *hit,
                Threading::Lookup(order) => order
                    .iter()
                    .find_map(|(h, m)| known.get(&(inbox, h.clone())).map(|c| (*c, *m)))
                    .unwrap_or((Uuid::now_v7(), ThreadMatch::None)),
            };
            for h in &job.record_hashes {
                known.entry((inbox, h.clone())).or_insert(conversation_id);
            }
            let payload = MessageReceivedV1 {
                conversation_id,
                new_thread: matched == ThreadMatch::None,
                thread_match: matched.as_str().to_owned(),
                ..job.payload.clone()
            };
            let mut event = NewEvent::from_payload(ev::MESSAGE_RECEIVED, 1, &payload)?;
            event.metadata.actor = Some(job.ctx.principal().actor());
            appends.push((job.stream.clone(), vec![event]));
            plan.push((i, conversation_id, matched));
        }
        // The events first: a concurrent delivery of the same mail waits on the stream's key,
        // then finds it taken.
        let results = store.create_streams_in_tx(&mut tx, tenant, appends).await?;
        let mut rows = Vec::with_capacity(plan.len());
        for ((i, conversation_id, matched), r) in plan.into_iter().zip(results) {
            match r {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            let job = &batch[i];
            rows.push(repo::DeliveryRows {
                inbox_id: job.payload.inbox_id,
                message_id: job.payload.message_id,
                stream_id: &job.stream.stream_id,
                blobs: &job.blobs,
                blob_refs: job.blob_refs(),
                hashes: &job.record_hashes,
                conversation_id,
            });
            out[i] = Committed::Stored {
                conversation_id,
                matched,
            };
        }
        repo::store_deliveries_tx(&mut tx, tenant, &rows).await?;
    }
    // Commits, then wakes this process's relay / in-process bus.
    store.commit_appended(tx).await?;
    Ok(out)
}

/// The advisory-lock keys of every thread key a batch reads or claims, sorted and distinct.
fn thread_locks(batch: &[Job]) -> Vec<i64> {
    let mut keys: Vec<i64> = Vec::new();
    for job in batch {
        let inbox = job.payload.inbox_id;
        let looked_up = match &job.threading {
            Threading::Lookup(order) => order.iter().map(|(h, _)| h.as_str()).collect(),
            Threading::Known(_) => Vec::new(),
        };
        for h in looked_up
            .into_iter()
            .chain(job.record_hashes.iter().map(String::as_str))
        {
            keys.push(repo::thread_lock_key(job.ctx.tenant(), inbox, h));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The blind indexes a stored mail claims in its inbox's thread index.
fn record_hashes(key: &IndexKey, mail: &ParsedMail) -> Vec<String> {
    thread::ids_to_record(mail)
        .into_iter()
        .map(|id| key.message_id_hash(id))
        .collect()
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
