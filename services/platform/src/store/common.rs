//! What both backends share: sealing and chaining a batch before it is written, the bounded
//! cache of stream heads, and the `verify` walk (a merge of events and heads in key order).

use super::{
    ExpectedVersion, KeyScope, MAX_STREAM_VERSION, NewEvent, StoreError, StoredEvent, StreamRef,
    TenantId, VerifyFinding, VerifyReport, now_micros, payload_aad,
};
use crate::crypto::Keyring;
use crate::memo::Generational;
use async_trait::async_trait;
use postvak_core::chain::{ChainInput, ChainVerifier, GENESIS, Hash, event_hash};
use std::collections::{HashSet, VecDeque};
use time::OffsetDateTime;
use uuid::Uuid;

/// One event sealed for storage; its version and chain are fixed by [`chain`] once the stream's
/// head is known.
#[derive(Debug, Clone)]
pub(crate) struct SealedEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: u32,
    pub key_id: Uuid,
    pub payload: Vec<u8>,
    pub metadata: Vec<u8>,
}

/// A batch sealed for one stream; `recorded_at` is shared by the batch.
#[derive(Debug, Clone)]
pub(crate) struct SealedBatch {
    pub events: Vec<SealedEvent>,
    pub recorded_at: OffsetDateTime,
}

impl SealedBatch {
    pub fn len(&self) -> u64 {
        self.events.len() as u64
    }

    pub fn event_ids(&self) -> Vec<Uuid> {
        self.events.iter().map(|e| e.event_id).collect()
    }
}

/// The checks that need no database: a non-empty batch without repeated event ids.
pub(crate) fn precheck(events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    let mut seen = HashSet::with_capacity(events.len());
    for e in events {
        if !seen.insert(e.event_id) {
            return Err(StoreError::DuplicateEvent {
                event_id: e.event_id,
            });
        }
    }
    Ok(())
}

/// Serialises and encrypts a batch (one key lookup per run of events under the same scope).
pub(crate) async fn seal(
    keyring: &Keyring,
    tenant: TenantId,
    events: Vec<NewEvent>,
) -> Result<SealedBatch, StoreError> {
    let recorded_at = now_micros();
    let mut out = Vec::with_capacity(events.len());
    let mut rest = events.as_slice();
    while let Some(first) = rest.first() {
        let scope: &KeyScope = &first.key;
        let run = rest.iter().take_while(|e| &e.key == scope).count();
        let (head, tail) = rest.split_at(run);
        let plains = head
            .iter()
            .map(|e| {
                serde_json::to_vec(&e.payload)
                    .map_err(|err| StoreError::Serialization(err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let aads: Vec<[u8; 32]> = head
            .iter()
            .map(|e| payload_aad(tenant, e.event_id))
            .collect();
        let (key_id, sealed) = keyring
            .seal_many(
                tenant,
                scope,
                plains
                    .iter()
                    .zip(aads.iter())
                    .map(|(p, a)| (p.as_slice(), a.as_slice())),
            )
            .await?;
        for (e, payload) in head.iter().zip(sealed) {
            out.push(SealedEvent {
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                event_version: e.event_version,
                key_id,
                payload,
                metadata: serde_json::to_vec(&e.metadata)
                    .map_err(|err| StoreError::Serialization(err.to_string()))?,
            });
        }
        rest = tail;
    }
    Ok(SealedBatch {
        events: out,
        recorded_at,
    })
}

/// A batch with versions and hashes, ready to insert after a head `(version, hash)`.
#[derive(Debug)]
pub(crate) struct ChainedBatch {
    pub first_version: u64,
    pub versions: Vec<i64>,
    pub prev_hashes: Vec<Vec<u8>>,
    pub hashes: Vec<Vec<u8>>,
}

impl ChainedBatch {
    pub fn last_version(&self) -> u64 {
        self.first_version + self.versions.len() as u64 - 1
    }

    pub fn head_hash(&self) -> Hash {
        let mut h = GENESIS;
        if let Some(last) = self.hashes.last()
            && last.len() == h.len()
        {
            h.copy_from_slice(last);
        }
        h
    }
}

/// Computes versions and the hash chain of `batch` following a head at `head_version`.
pub(crate) fn chain(
    tenant: TenantId,
    stream: &StreamRef,
    head_version: u64,
    head_hash: &[u8],
    batch: &SealedBatch,
) -> Result<ChainedBatch, StoreError> {
    let last = head_version
        .checked_add(batch.len())
        .filter(|v| *v <= MAX_STREAM_VERSION);
    if last.is_none() {
        return Err(StoreError::VersionOverflow {
            stream_id: stream.stream_id.clone(),
        });
    }
    let recorded_at_micros = super::micros(batch.recorded_at);
    let n = batch.events.len();
    let mut versions = Vec::with_capacity(n);
    let mut prev_hashes = Vec::with_capacity(n);
    let mut hashes: Vec<Vec<u8>> = Vec::with_capacity(n);
    let mut prev = head_hash.to_vec();
    for (i, e) in batch.events.iter().enumerate() {
        let version = head_version + 1 + i as u64;
        let hash = event_hash(&ChainInput {
            prev_hash: &prev,
            event_id: e.event_id,
            tenant_id: tenant.0,
            stream_type: &stream.stream_type,
            stream_id: &stream.stream_id,
            stream_version: version,
            event_type: &e.event_type,
            event_version: e.event_version,
            key_id: e.key_id,
            payload: &e.payload,
            metadata: &e.metadata,
            recorded_at_micros,
        })
        .to_vec();
        // Versions are at most MAX_STREAM_VERSION (checked above), so they fit an i64.
        versions.push(i64::try_from(version).unwrap_or(i64::MAX));
        prev_hashes.push(std::mem::replace(&mut prev, hash.clone()));
        hashes.push(hash);
    }
    Ok(ChainedBatch {
        first_version: head_version + 1,
        versions,
        prev_hashes,
        hashes,
    })
}

/// A stream's head as stored in `streams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub stream_type: String,
    pub version: u64,
    pub hash: Vec<u8>,
}

/// What the locked head says about an append: `Ok(head version)` when it may go ahead.
pub(crate) fn check_head(
    stream: &StreamRef,
    expected: ExpectedVersion,
    head: Option<&Head>,
) -> Result<u64, HeadCheck> {
    if let Some(h) = head
        && h.stream_type != stream.stream_type
    {
        return Err(HeadCheck::TypeMismatch(h.stream_type.clone()));
    }
    let actual = head.map_or(0, |h| h.version);
    if expected.matches(actual) {
        Ok(actual)
    } else {
        Err(HeadCheck::Conflict(actual))
    }
}

/// Why [`check_head`] refused.
#[derive(Debug)]
pub(crate) enum HeadCheck {
    TypeMismatch(String),
    /// Wrong expected version (the caller then looks for already-stored event ids: a retry of an
    /// append that committed is a `DuplicateEvent`, not a conflict).
    Conflict(u64),
}

/// A bounded cache of stream heads `(tenant, stream) → (type, version, hash)`. Only a hint:
/// an append that trusts it is conditional on the head still being exactly that.
#[derive(Debug)]
pub(crate) struct HeadCache(Generational<(TenantId, String), Head>);

impl HeadCache {
    pub fn new(capacity: usize) -> Self {
        Self(Generational::new(capacity))
    }

    pub fn get(&self, tenant: TenantId, stream_id: &str) -> Option<Head> {
        self.0.get(&(tenant, stream_id.to_owned()))
    }

    pub fn put(&self, tenant: TenantId, stream_id: &str, head: Head) {
        self.0.put((tenant, stream_id.to_owned()), head);
    }

    pub fn forget(&self, tenant: TenantId, stream_id: &str) {
        self.0.forget(&(tenant, stream_id.to_owned()));
    }
}

/// Rows `verify` reads, page by page, in `(tenant_id, stream_id, stream_version)` order
/// (byte order for stream ids on both backends).
#[async_trait]
pub(crate) trait VerifySource: Sync {
    /// Events after `after = (tenant, stream_id, version)`, or from the start.
    async fn events_after(
        &self,
        after: Option<(TenantId, String, u64)>,
        tenant: Option<TenantId>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Stream heads after `after = (tenant, stream_id)`, or from the start.
    async fn heads_after(
        &self,
        after: Option<(TenantId, String)>,
        tenant: Option<TenantId>,
        limit: usize,
    ) -> Result<Vec<(TenantId, String, Head)>, StoreError>;
}

pub(crate) const VERIFY_PAGE: usize = 2_000;

/// The heads, read lazily in key order.
struct HeadCursor<'a, S: VerifySource + ?Sized> {
    source: &'a S,
    tenant: Option<TenantId>,
    buf: VecDeque<(TenantId, String, Head)>,
    after: Option<(TenantId, String)>,
    done: bool,
}

impl<S: VerifySource + ?Sized> HeadCursor<'_, S> {
    async fn peek(&mut self) -> Result<Option<&(TenantId, String, Head)>, StoreError> {
        if self.buf.is_empty() && !self.done {
            let page = self
                .source
                .heads_after(self.after.take(), self.tenant, VERIFY_PAGE)
                .await?;
            self.done = page.len() < VERIFY_PAGE;
            if let Some((t, s, _)) = page.last() {
                self.after = Some((*t, s.clone()));
            }
            self.buf.extend(page);
        }
        Ok(self.buf.front())
    }
}

/// Walks every chain and compares each stream's last event with its head row, holding one page
/// of events and one of heads in memory at a time.
pub(crate) async fn verify_walk<S: VerifySource + ?Sized>(
    source: &S,
    tenant: Option<TenantId>,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut heads = HeadCursor {
        source,
        tenant,
        buf: VecDeque::new(),
        after: None,
        done: false,
    };
    let mut current: Option<(TenantId, String, ChainVerifier)> = None;
    let mut after = None;
    loop {
        let page = source
            .events_after(after.take(), tenant, VERIFY_PAGE)
            .await?;
        let full = page.len() == VERIFY_PAGE;
        if let Some(last) = page.last() {
            after = Some((last.tenant_id, last.stream_id.clone(), last.stream_version));
        }
        for e in &page {
            let same =
                matches!(&current, Some((t, s, _)) if *t == e.tenant_id && *s == e.stream_id);
            if !same {
                if let Some(done) = current.take() {
                    finish_stream(done, &mut heads, &mut report).await?;
                }
                current = Some((e.tenant_id, e.stream_id.clone(), ChainVerifier::new()));
            }
            if let Some((_, _, v)) = current.as_mut() {
                v.push(&e.chain_input(), &e.hash);
            }
            report.events += 1;
        }
        if !full {
            break;
        }
    }
    if let Some(done) = current.take() {
        finish_stream(done, &mut heads, &mut report).await?;
    }
    // Heads after the last stream with events.
    while let Some((t, s, h)) = heads.peek().await?.cloned() {
        heads.buf.pop_front();
        orphan_head(t, s, &h, &mut report);
    }
    Ok(report)
}

async fn finish_stream<S: VerifySource + ?Sized>(
    (tenant, stream_id, verifier): (TenantId, String, ChainVerifier),
    heads: &mut HeadCursor<'_, S>,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
    let key = (tenant, stream_id.as_str());
    // Heads that sort before this stream have no events at all.
    let mut head = None;
    while let Some((t, s, h)) = heads.peek().await? {
        match (*t, s.as_str()).cmp(&key) {
            std::cmp::Ordering::Less => {
                let (t, s, h) = (*t, s.clone(), h.clone());
                heads.buf.pop_front();
                orphan_head(t, s, &h, report);
            }
            std::cmp::Ordering::Equal => {
                head = Some(h.clone());
                heads.buf.pop_front();
                break;
            }
            std::cmp::Ordering::Greater => break,
        }
    }
    report.streams += 1;
    // Events without a head row are compared with an empty head: a `HeadMismatch` with
    // `head_version: 0`.
    let faults = match &head {
        Some(h) => verifier.finish(Some((h.version, &h.hash))),
        None => verifier.finish(Some((0, &GENESIS))),
    };
    report
        .findings
        .extend(faults.into_iter().map(|fault| VerifyFinding {
            tenant_id: tenant,
            stream_id: stream_id.clone(),
            fault,
        }));
    Ok(())
}

fn orphan_head(tenant: TenantId, stream_id: String, head: &Head, report: &mut VerifyReport) {
    report.streams += 1;
    let faults = ChainVerifier::new().finish(Some((head.version, &head.hash)));
    report
        .findings
        .extend(faults.into_iter().map(|fault| VerifyFinding {
            tenant_id: tenant,
            stream_id: stream_id.clone(),
            fault,
        }));
}

/// Converts a stored non-negative integer.
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Database(format!("negative {what} {v} in the store")))
}

pub(crate) fn to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Database(format!("{what} {v} out of range")))
}

/// A version as bound to SQL (versions never exceed `MAX_STREAM_VERSION = i64::MAX`).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
