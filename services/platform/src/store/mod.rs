//! The event store: one trait, two implementations (PostgreSQL and SQLite) that pass one
//! conformance suite (`tests/platform/store_conformance.rs`).
//!
//! Contract:
//! - `append` writes N events to one stream atomically, or none. A wrong expected version is
//!   [`StoreError::Conflict`], never a lost or duplicated write.
//! - Payloads are sealed with AES-256-GCM under a per-tenant (or per-subject) data key before
//!   they leave the process; the hash chain covers the ciphertext.
//! - `read_log` returns committed events in commit order and never skips one, even when
//!   transactions commit out of sequence order (PostgreSQL: `xid8` below the snapshot's xmin).
//! - `verify` walks every stream's chain and reports modified, deleted or reordered events.

mod common;
mod pg_wake;
pub mod postgres;
pub mod sqlite;
mod tail;

pub use tail::TailPause;

use crate::crypto::{CryptoError, Keyring};
use async_trait::async_trait;
use postvak_core::chain::ChainFault;
use postvak_proto::{EventMetadata, WireEvent};
use serde::{Serialize, de::DeserializeOwned};
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;

/// Which events a log read returns with their payloads.
#[derive(Debug, Clone, Copy)]
pub enum Payloads<'a> {
    /// Every event's.
    All,
    /// Only those of these stream types; the others' payloads are left empty.
    OfStreamTypes(&'a [&'a str]),
}

/// A tenant id. Only a [`crate::cell::TenantContext`] hands one to service code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub Uuid);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifies a stream. `stream_id` is unique within a tenant; `stream_type` names the
/// aggregate and the owning service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamRef {
    pub stream_type: String,
    pub stream_id: String,
}

impl StreamRef {
    pub fn new(stream_type: impl Into<String>, stream_id: impl Into<String>) -> Self {
        Self {
            stream_type: stream_type.into(),
            stream_id: stream_id.into(),
        }
    }
}

/// Optimistic concurrency expectation for an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the current version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last version must be exactly this (0 = no stream).
    Exact(u64),
}

impl ExpectedVersion {
    pub fn matches(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::Exact(v) => v == actual,
        }
    }
}

/// Which data key seals an event's payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyScope {
    /// The tenant's data key.
    Tenant,
    /// A per-subject key (e.g. `contact:<uuid>`): destroying it makes the payload unreadable
    /// without touching the log.
    Subject(String),
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: u32,
    pub payload: serde_json::Value,
    pub metadata: EventMetadata,
    pub key: KeyScope,
}

impl NewEvent {
    /// A new event with a fresh UUIDv7 id, sealed under the tenant key.
    pub fn new(
        event_type: impl Into<String>,
        event_version: u32,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            event_version,
            payload,
            metadata: EventMetadata::default(),
            key: KeyScope::Tenant,
        }
    }

    /// Serialises a stored payload shape.
    pub fn from_payload<T: Serialize>(
        event_type: impl Into<String>,
        event_version: u32,
        payload: &T,
    ) -> Result<Self, StoreError> {
        let payload =
            serde_json::to_value(payload).map_err(|e| StoreError::Serialization(e.to_string()))?;
        Ok(Self::new(event_type, event_version, payload))
    }

    pub fn with_metadata(mut self, metadata: EventMetadata) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn with_key(mut self, key: KeyScope) -> Self {
        self.key = key;
        self
    }
}

/// Position in a cell's log: commit order is `(tx, global_position)`. On SQLite `tx` is 0 and
/// `global_position` alone is commit order (one writer at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPosition {
    pub tx: u64,
    pub global_position: i64,
}

impl LogPosition {
    pub const START: LogPosition = LogPosition {
        tx: 0,
        global_position: 0,
    };
}

/// What an append produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub first_version: u64,
    pub last_version: u64,
    pub event_ids: Vec<Uuid>,
}

/// An event as stored: ciphertext and chain, no plaintext. What the relay publishes and what
/// `verify` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub position: LogPosition,
    pub event_id: Uuid,
    pub tenant_id: TenantId,
    pub stream_type: String,
    pub stream_id: String,
    pub stream_version: u64,
    pub event_type: String,
    pub event_version: u32,
    pub key_id: Uuid,
    /// nonce ‖ ciphertext ‖ tag
    pub payload: Vec<u8>,
    /// Metadata JSON bytes exactly as hashed.
    pub metadata: Vec<u8>,
    /// Microsecond precision.
    pub recorded_at: OffsetDateTime,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// The payload of an event after decryption.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    Json(serde_json::Value),
    /// The key that sealed it was destroyed (erasure): the event still exists, its content not.
    Shredded,
}

/// A decrypted event.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: LogPosition,
    pub event_id: Uuid,
    pub tenant_id: TenantId,
    pub stream_type: String,
    pub stream_id: String,
    pub stream_version: u64,
    pub event_type: String,
    pub event_version: u32,
    pub data: EventData,
    pub metadata: EventMetadata,
    pub recorded_at: OffsetDateTime,
}

impl RecordedEvent {
    /// Deserialises the payload into a stored shape. Use [`EventCodec`] for upcasting.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        match &self.data {
            EventData::Json(v) => T::deserialize(v).map_err(|e| StoreError::Decode {
                event_type: self.event_type.clone(),
                event_version: self.event_version,
                reason: e.to_string(),
            }),
            EventData::Shredded => Err(StoreError::Shredded {
                event_id: self.event_id,
            }),
        }
    }
}

/// Maps a service's domain events to and from stored shapes, upcasting old versions on read.
pub trait EventCodec: Sized {
    /// `(event_type, event_version, payload)` of the newest stored shape.
    fn encode(&self) -> Result<(&'static str, u32, serde_json::Value), StoreError>;
    /// Decodes any version this service ever stored; an unknown `(type, version)` is
    /// [`StoreError::UnknownEventType`].
    fn decode(event: &RecordedEvent) -> Result<Self, StoreError>;
}

/// One fault found by `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFinding {
    pub tenant_id: TenantId,
    pub stream_id: String,
    pub fault: ChainFault,
}

/// Result of `verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub streams: u64,
    pub events: u64,
    pub findings: Vec<VerifyFinding>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.findings.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream_id} is at version {actual}, expected {expected:?}")]
    Conflict {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    #[error("stream {stream_id} is a {actual}, not a {requested}")]
    StreamTypeMismatch {
        stream_id: String,
        requested: String,
        actual: String,
    },
    #[error("stream {stream_id} would pass the largest version a stream can hold")]
    VersionOverflow { stream_id: String },
    #[error("an append needs at least one event")]
    EmptyAppend,
    #[error("event {event_id} was already appended")]
    DuplicateEvent { event_id: Uuid },
    #[error("unknown event type {event_type} v{event_version}")]
    UnknownEventType {
        event_type: String,
        event_version: u32,
    },
    #[error("event {event_type} v{event_version} does not decode: {reason}")]
    Decode {
        event_type: String,
        event_version: u32,
        reason: String,
    },
    #[error("event {event_id}'s key was destroyed")]
    Shredded { event_id: Uuid },
    #[error("cannot serialize event: {0}")]
    Serialization(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("migration failed: {0}")]
    Migration(String),
}

impl StoreError {
    /// Stable machine-readable code, used by the HTTP error mapping and the CLI.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Conflict { .. } => "stream_conflict",
            Self::StreamTypeMismatch { .. } => "stream_type_mismatch",
            Self::VersionOverflow { .. } => "stream_version_overflow",
            Self::EmptyAppend => "empty_append",
            Self::DuplicateEvent { .. } => "duplicate_event",
            Self::UnknownEventType { .. } => "unknown_event_type",
            Self::Decode { .. } => "event_decode_failed",
            Self::Shredded { .. } => "event_shredded",
            Self::Serialization(_) => "event_serialization_failed",
            Self::Crypto(_) => "crypto_failed",
            Self::Unavailable(_) => "database_unavailable",
            Self::Database(_) => "database_error",
            Self::Migration(_) => "migration_failed",
        }
    }
}

/// Which implementation a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The event store of one cell.
#[async_trait]
pub trait EventStore: Send + Sync + fmt::Debug {
    fn backend(&self) -> Backend;

    /// The keyring sealing this cell's payloads.
    fn keyring(&self) -> &Keyring;

    /// Appends `events` to `stream` if its version matches `expected`; all or nothing.
    async fn append(
        &self,
        tenant: TenantId,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError>;

    /// Appends inside the caller's transaction, so that the events commit together with the
    /// caller's other writes (an effect and the events it causes, blobs and the event naming
    /// them), or not at all. Same checks and outcomes as [`EventStore::append`]: a wrong
    /// expected version is a `Conflict` and leaves the transaction usable (the caller decides
    /// whether to roll back). `tx` must come from this store's [`EventStore::db`]
    /// (`begin` / `tenant_tx(_, true)`).
    ///
    /// Commit with [`EventStore::commit_appended`]: tailers in this process (relay, in-process
    /// bus) are woken by the append signal, which only a commit may raise.
    ///
    /// SQLite: the data keys the events are sealed under must exist already (seal anything
    /// under the scope before opening `tx`): creating one needs the writer connection `tx`
    /// holds.
    async fn append_in_tx(
        &self,
        tx: &mut crate::db::DbTx,
        tenant: TenantId,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError>;

    /// Creates many new streams inside the caller's transaction, each with its events: what
    /// [`EventStore::append_in_tx`] with [`ExpectedVersion::NoStream`] does for each, in as few
    /// statements as the backend allows (PostgreSQL: one for all of them). One result per
    /// stream, in order: a stream that exists already is an `Err` (`Conflict`, or
    /// `StreamTypeMismatch`/`DuplicateEvent` as `append_in_tx` would say) and wrote nothing,
    /// and the transaction stays usable; any other failure is the outer `Err` (roll back).
    /// Stream ids must be distinct.
    async fn create_streams_in_tx(
        &self,
        tx: &mut crate::db::DbTx,
        tenant: TenantId,
        streams: Vec<(StreamRef, Vec<NewEvent>)>,
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(streams.len());
        for (stream, events) in streams {
            match self
                .append_in_tx(tx, tenant, &stream, ExpectedVersion::NoStream, events)
                .await
            {
                Ok(o) => out.push(Ok(o)),
                Err(
                    e @ (StoreError::Conflict { .. }
                    | StoreError::StreamTypeMismatch { .. }
                    | StoreError::DuplicateEvent { .. }),
                ) => out.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Commits a transaction [`EventStore::append_in_tx`] wrote into, then wakes this process's
    /// tailers (as [`EventStore::append`] does after its own commit).
    async fn commit_appended(&self, tx: crate::db::DbTx) -> Result<(), StoreError> {
        tx.commit().await?;
        self.announce_commit();
        Ok(())
    }

    /// A stream's events with `stream_version >= from_version`, decrypted, in version order.
    /// Returns an empty list for a stream that does not exist.
    async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &StreamRef,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Current version of a stream (0 = none).
    async fn stream_version(&self, tenant: TenantId, stream: &StreamRef)
    -> Result<u64, StoreError>;

    /// Up to `limit` committed events after `after`, in commit order, as stored (ciphertext);
    /// only `tenant`'s when given. Never skips a committed event: an event that is not returned
    /// now is returned by a later call with the same or a later position.
    async fn read_log(
        &self,
        after: LogPosition,
        limit: usize,
        tenant: Option<TenantId>,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// [`EventStore::read_log`], and whether committed events after `after` exist that it did
    /// not return because a transaction that began before theirs committed is still running
    /// ("held back"). Their commit was announced already, so a tailer that found fewer events
    /// than it asked for should look again soon rather than wait for the next announcement or
    /// its poll ([`TailPause`]). Never held back where commits are serialised (SQLite).
    /// Events outside `payloads` come with an empty payload (and cannot be opened).
    async fn read_log_tail(
        &self,
        after: LogPosition,
        limit: usize,
        tenant: Option<TenantId>,
        payloads: Payloads<'_>,
    ) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        let mut events = self.read_log(after, limit, tenant).await?;
        if let Payloads::OfStreamTypes(types) = payloads {
            for e in &mut events {
                if !types.contains(&e.stream_type.as_str()) {
                    e.payload = Vec::new();
                }
            }
        }
        Ok((events, false))
    }

    /// Walks every stream's hash chain (one tenant's when given) and reports faults.
    async fn verify(&self, tenant: Option<TenantId>) -> Result<VerifyReport, StoreError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// What log tailers (relay, in-process bus, SSE streams) wait on instead of polling:
    /// notified after every commit announced through this handle ([`EventStore::announce_commit`])
    /// and, on PostgreSQL, after commits other processes announce (LISTEN/NOTIFY, a hint:
    /// tailers still poll, since a notification can be lost).
    fn append_signal(&self) -> std::sync::Arc<tokio::sync::Notify>;

    /// Tells tailers that this process committed events (after the commit, never before):
    /// this process's at once and, on PostgreSQL, other processes' through one coalesced
    /// `NOTIFY`. Only commits that appended events need announcing.
    fn announce_commit(&self) {
        self.append_signal().notify_waiters();
    }

    /// The database this store lives in (consumers write checkpoints into it).
    fn db(&self) -> &crate::db::Db;

    /// The tenant read connections beside the store's pool, if its backend has them
    /// (PostgreSQL: [`crate::reads`]).
    fn reads(&self) -> Option<&crate::reads::PgReads> {
        None
    }

    /// Decrypts one stored event.
    async fn open(&self, event: &StoredEvent) -> Result<RecordedEvent, StoreError> {
        open_stored(self.keyring(), event).await
    }
}

/// Decrypts a stored event with a keyring (shared by both backends and bus consumers).
pub async fn open_stored(keyring: &Keyring, e: &StoredEvent) -> Result<RecordedEvent, StoreError> {
    let data =
        match keyring
            .open(
                e.tenant_id,
                e.key_id,
                &e.payload,
                &payload_aad(e.tenant_id, e.event_id),
            )
            .await
        {
            Ok(plain) => EventData::Json(serde_json::from_slice(&plain).map_err(|err| {
                StoreError::Decode {
                    event_type: e.event_type.clone(),
                    event_version: e.event_version,
                    reason: err.to_string(),
                }
            })?),
            Err(CryptoError::KeyDestroyed { .. }) => EventData::Shredded,
            Err(other) => return Err(other.into()),
        };
    let metadata = serde_json::from_slice(&e.metadata).map_err(|err| StoreError::Decode {
        event_type: e.event_type.clone(),
        event_version: e.event_version,
        reason: format!("metadata: {err}"),
    })?;
    Ok(RecordedEvent {
        position: e.position,
        event_id: e.event_id,
        tenant_id: e.tenant_id,
        stream_type: e.stream_type.clone(),
        stream_id: e.stream_id.clone(),
        stream_version: e.stream_version,
        event_type: e.event_type.clone(),
        event_version: e.event_version,
        data,
        metadata,
        recorded_at: e.recorded_at,
    })
}

/// Associated data binding a payload's ciphertext to its event: a ciphertext moved to another
/// row does not decrypt.
pub fn payload_aad(tenant: TenantId, event_id: Uuid) -> [u8; 32] {
    let mut aad = [0u8; 32];
    aad[..16].copy_from_slice(tenant.0.as_bytes());
    aad[16..].copy_from_slice(event_id.as_bytes());
    aad
}

impl StoredEvent {
    /// The input of this event's chain hash.
    pub fn chain_input(&self) -> postvak_core::chain::ChainInput<'_> {
        postvak_core::chain::ChainInput {
            prev_hash: &self.prev_hash,
            event_id: self.event_id,
            tenant_id: self.tenant_id.0,
            stream_type: &self.stream_type,
            stream_id: &self.stream_id,
            stream_version: self.stream_version,
            event_type: &self.event_type,
            event_version: self.event_version,
            key_id: self.key_id,
            payload: &self.payload,
            metadata: &self.metadata,
            recorded_at_micros: micros(self.recorded_at),
        }
    }

    /// The form relayed on NATS.
    pub fn to_wire(&self) -> WireEvent {
        use base64::Engine;
        WireEvent {
            tx: self.position.tx,
            global_position: self.position.global_position,
            event_id: self.event_id,
            tenant_id: self.tenant_id.0,
            stream_type: self.stream_type.clone(),
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            event_type: self.event_type.clone(),
            event_version: self.event_version,
            key_id: self.key_id,
            payload: base64::engine::general_purpose::STANDARD.encode(&self.payload),
            metadata: String::from_utf8_lossy(&self.metadata).into_owned(),
            recorded_at: self.recorded_at,
            prev_hash: hex::encode(&self.prev_hash),
            hash: hex::encode(&self.hash),
        }
    }

    /// Parses the NATS form back; `None` when a field is malformed.
    pub fn from_wire(w: &WireEvent) -> Option<Self> {
        use base64::Engine;
        Some(Self {
            position: LogPosition {
                tx: w.tx,
                global_position: w.global_position,
            },
            event_id: w.event_id,
            tenant_id: TenantId(w.tenant_id),
            stream_type: w.stream_type.clone(),
            stream_id: w.stream_id.clone(),
            stream_version: w.stream_version,
            event_type: w.event_type.clone(),
            event_version: w.event_version,
            key_id: w.key_id,
            payload: base64::engine::general_purpose::STANDARD
                .decode(&w.payload)
                .ok()?,
            metadata: w.metadata.clone().into_bytes(),
            recorded_at: w.recorded_at,
            prev_hash: hex::decode(&w.prev_hash).ok()?,
            hash: hex::decode(&w.hash).ok()?,
        })
    }
}

/// Microseconds since the epoch: the precision both backends keep, and what the chain hashes.
pub fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// The current time truncated to microseconds, so that what is hashed is what is stored.
pub fn now_micros() -> OffsetDateTime {
    from_micros(micros(OffsetDateTime::now_utc()))
}

pub fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Largest stream version: versions are stored as signed 64-bit integers.
pub const MAX_STREAM_VERSION: u64 = i64::MAX as u64;

/// Opens the event store of the database at `url` (`postgres://…` or `sqlite:…`), with a keyring
/// over the same database's `data_keys` under `master`. Does not migrate: run
/// [`crate::db::migrate`] first (as the owner).
pub async fn open_store(
    url: &str,
    opts: &crate::db::DbOptions,
    master: crate::crypto::MasterKey,
) -> Result<std::sync::Arc<dyn EventStore>, StoreError> {
    use crate::db::Db;
    use std::sync::Arc;
    let db = crate::db::connect(url, opts).await?;
    match &db {
        Db::Postgres(pool) => {
            let keys = Arc::new(postgres::PgKeyStore::new(pool.clone()));
            let keyring = Keyring::new(master, keys);
            Ok(Arc::new(postgres::PostgresStore::new(db, keyring)?))
        }
        Db::Sqlite(s) => {
            let keys = Arc::new(sqlite::SqliteKeyStore::new(s));
            let keyring = Keyring::new(master, keys);
            Ok(Arc::new(sqlite::SqliteStore::new(db, keyring)?))
        }
    }
}
