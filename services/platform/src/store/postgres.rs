//! The PostgreSQL event store.
//!
//! Round trips dominate, so the common appends are ONE autocommit statement:
//! - a new stream (`NoStream`/`Exact(0)`: the previous hash is GENESIS):
//!   `WITH head AS (INSERT INTO streams … ON CONFLICT DO NOTHING RETURNING 1)
//!    INSERT INTO events SELECT … FROM UNNEST(…) WHERE EXISTS (SELECT 1 FROM head)`;
//! - an existing stream whose head `(version, hash)` this handle has cached (from its own appends
//!   or `read_stream`): the same with `UPDATE streams … WHERE version = $expected AND head_hash =
//!   $cached RETURNING 1`.
//!
//! Under READ COMMITTED a competing writer that got there first holds the head row's lock; ours
//! waits, re-evaluates its WHERE clause against the committed row, matches nothing and inserts
//! no event. Zero rows means "not the head we assumed", never a partial write. Then, and on a
//! cache miss or for `Any`, the slow path locks the head (`SELECT … FOR UPDATE`) in a
//! transaction and decides definitively: so correctness never depends on the cache, which is only
//! a hint.

use super::common::{
    self, ChainedBatch, Head, HeadCache, HeadCheck, SealedBatch, VerifySource, to_i64, to_u32,
    to_u64,
};
use super::pg_wake::Wake;
use super::{
    AppendOutcome, Backend, EventStore, ExpectedVersion, KeyScope, LogPosition, NewEvent, Payloads,
    RecordedEvent, StoreError, StoredEvent, StreamRef, TenantId, VerifyReport, open_stored,
};
use crate::crypto::{CryptoError, KeyStore, Keyring, StoredKey};
use crate::db::{Db, DbTx, db_error};
use async_trait::async_trait;
use postvak_core::chain::GENESIS;
use sqlx::postgres::{PgConnection, PgDatabaseError, PgPool, PgRow};
use sqlx::{Acquire, Row};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

/// Heads cached per handle by default (about 150 bytes each).
pub const DEFAULT_HEAD_CACHE: usize = 100_000;

/// How many times the slow path retries when a stream it found missing was created under it.
const CREATE_RACE_RETRIES: usize = 8;

// `tx` is read as `commit_tx`: an output column named `tx` would shadow the column in
// `ORDER BY tx`, and the sort would no longer come from the index.
macro_rules! event_columns {
    () => {
        "tx::text::bigint AS commit_tx, global_position, event_id, tenant_id, stream_type, stream_id, \
         stream_version, event_type, event_version, key_id, payload, metadata, recorded_at, \
         prev_hash, hash"
    };
}

/// The INSERT shared by every append: `$1` tenant, `$2` stream id, `$3` stream type, `$6`
/// recorded_at, `$7..$15` one array per column. Only runs if the CTE `head` returned a row.
macro_rules! insert_events {
    () => {
        "INSERT INTO events (event_id, tenant_id, stream_type, stream_id, stream_version, \
             event_type, event_version, key_id, payload, metadata, recorded_at, prev_hash, hash) \
         SELECT e.event_id, $1, $3, $2, e.stream_version, e.event_type, e.event_version, \
             e.key_id, e.payload, e.metadata, $6, e.prev_hash, e.hash \
         FROM UNNEST($7::uuid[], $8::bigint[], $9::text[], $10::int[], $11::uuid[], \
             $12::bytea[], $13::bytea[], $14::bytea[], $15::bytea[]) \
             AS e(event_id, stream_version, event_type, event_version, key_id, payload, \
                  metadata, prev_hash, hash) \
         WHERE EXISTS (SELECT 1 FROM head)"
    };
}

/// The same for one event, with scalars instead of arrays (the common case): `$7` event id,
/// `$8` type, `$9` type version, `$10` key, `$11` payload, `$12` metadata, `$13` prev hash; its
/// hash is the new head's, `$5`. The expected head is then `$14`, `$15`.
macro_rules! insert_one_event {
    () => {
        "INSERT INTO events (event_id, tenant_id, stream_type, stream_id, stream_version, \
             event_type, event_version, key_id, payload, metadata, recorded_at, prev_hash, hash) \
         SELECT $7, $1, $3, $2, $4, $8, $9, $10, $11, $12, $6, $13, $5 \
         WHERE EXISTS (SELECT 1 FROM head)"
    };
}

const APPEND_NEW_ONE: &str = concat!(
    "WITH head AS (INSERT INTO streams (tenant_id, stream_id, stream_type, version, head_hash) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1) ",
    insert_one_event!()
);

const APPEND_NEXT_ONE: &str = concat!(
    "WITH head AS (UPDATE streams SET version = $4, head_hash = $5 \
     WHERE tenant_id = $1 AND stream_id = $2 AND stream_type = $3 \
       AND version = $14 AND head_hash = $15 RETURNING 1) ",
    insert_one_event!()
);

/// Creates the head (`$4` version, `$5` hash) and the events, or nothing if the stream exists.
const APPEND_NEW: &str = concat!(
    "WITH head AS (INSERT INTO streams (tenant_id, stream_id, stream_type, version, head_hash) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1) ",
    insert_events!()
);

/// Moves the head from (`$16`, `$17`) to (`$4`, `$5`) and inserts the events, or nothing if the
/// head is not exactly (`$16`, `$17`) any more.
const APPEND_NEXT: &str = concat!(
    "WITH head AS (UPDATE streams SET version = $4, head_hash = $5 \
     WHERE tenant_id = $1 AND stream_id = $2 AND stream_type = $3 \
       AND version = $16 AND head_hash = $17 RETURNING 1) ",
    insert_events!()
);

/// Creates many streams and their events in one statement: `$1` tenant, `$2` recorded_at; heads
/// `$3..$6` (stream id, type, version, hash) in stream-id order; events `$7..$17`, one array per
/// column. A stream that exists already (committed, or committed by a transaction this one
/// waited for) is skipped with its events; the events inserted are returned by stream.
const CREATE_STREAMS: &str = "WITH head AS (\
       INSERT INTO streams (tenant_id, stream_id, stream_type, version, head_hash) \
       SELECT $1, h.stream_id, h.stream_type, h.version, h.head_hash \
       FROM UNNEST($3::text[], $4::text[], $5::bigint[], $6::bytea[]) \
           AS h(stream_id, stream_type, version, head_hash) \
       ON CONFLICT DO NOTHING RETURNING stream_id) \
     INSERT INTO events (event_id, tenant_id, stream_type, stream_id, stream_version, \
         event_type, event_version, key_id, payload, metadata, recorded_at, prev_hash, hash) \
     SELECT e.event_id, $1, e.stream_type, e.stream_id, e.stream_version, e.event_type, \
         e.event_version, e.key_id, e.payload, e.metadata, $2, e.prev_hash, e.hash \
     FROM UNNEST($7::uuid[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::int[], \
         $13::uuid[], $14::bytea[], $15::bytea[], $16::bytea[], $17::bytea[]) \
         AS e(event_id, stream_id, stream_type, stream_version, event_type, event_version, \
              key_id, payload, metadata, prev_hash, hash) \
     WHERE e.stream_id COLLATE \"C\" IN (SELECT stream_id FROM head) \
     RETURNING stream_id";

const LOCK_HEAD: &str = "SELECT stream_type, version, head_hash FROM streams \
     WHERE tenant_id = $1 AND stream_id = $2 FOR UPDATE";

/// `LOCK_HEAD` that fails at once (`55P03`) instead of waiting for another writer.
const LOCK_HEAD_NOWAIT: &str = "SELECT stream_type, version, head_hash FROM streams \
     WHERE tenant_id = $1 AND stream_id = $2 FOR UPDATE NOWAIT";

/// Attempts at locking a head without waiting (1–8 ms apart, ~1.5 s in all) before `append`
/// waits for the lock.
const NOWAIT_ATTEMPTS: u32 = 200;

fn lock_not_available(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

const FIND_EXISTING: &str = "SELECT event_id FROM events WHERE event_id = ANY($1) LIMIT 1";

const READ_STREAM: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE tenant_id = $1 AND stream_id = $2 AND stream_type = $3 \
       AND stream_version >= $4 ORDER BY stream_version"
);

const STREAM_VERSION: &str = "SELECT version FROM streams \
     WHERE tenant_id = $1 AND stream_id = $2 AND stream_type = $3";

// Only transactions below the snapshot's xmin are certainly finished: an event of a transaction
// that commits later always has a larger `tx` than anything returned now.
const READ_LOG: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE (tx, global_position) > ($1::bigint::text::xid8, $2) \
       AND tx < pg_snapshot_xmin(pg_current_snapshot()) \
     ORDER BY tx, global_position LIMIT $3"
);

// `tx >= after` repeats part of the row comparison on purpose: after the equality on `tenant_id`
// the btree cannot start the scan from a row comparison, and without a bound of its own on `tx`
// it read every index entry of the tenant from its first event on (56 pages for one new event
// in a bench's few thousand; linear in the tenant's log).
const READ_LOG_TENANT: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE tenant_id = $4 AND tx >= $1::bigint::text::xid8 \
       AND (tenant_id, tx, global_position) > ($4, $1::bigint::text::xid8, $2) \
       AND tx < pg_snapshot_xmin(pg_current_snapshot()) \
     ORDER BY tenant_id, tx, global_position LIMIT $3"
);

// `READ_LOG`, then one row with `held_back` true when committed events at or above the xmin
// (visible, not returned yet) exist after the position: the `(tx, global_position)` index finds
// the first one or none. One statement, so both parts see the same snapshot.
macro_rules! held_back_row {
    ($after:literal) => {
        concat!(
            " UNION ALL SELECT true, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
               NULL, NULL, NULL, NULL, NULL, NULL \
             WHERE EXISTS (SELECT 1 FROM events WHERE ",
            $after,
            " AND tx >= pg_snapshot_xmin(pg_current_snapshot()))"
        )
    };
}

// The event columns with `payload` read only where `$5` (a `text[]` of stream types, or NULL for
// all) asks for it: a tailer that only learns which streams changed never reads the sealed
// payloads and their TOAST chunks.
macro_rules! tail_columns {
    () => {
        "tx::text::bigint AS commit_tx, global_position, event_id, tenant_id, stream_type, \
         stream_id, stream_version, event_type, event_version, key_id, \
         CASE WHEN $5::text[] IS NULL OR stream_type = ANY($5::text[]) THEN payload \
              ELSE '\\x'::bytea END AS payload, \
         metadata, recorded_at, prev_hash, hash"
    };
}

// `$4` is NULL here (it is the tenant in the next text): both bind the same parameters.
const READ_LOG_TAIL: &str = concat!(
    "(SELECT false AS held_back, ",
    tail_columns!(),
    " FROM events WHERE (tx, global_position) > ($1::bigint::text::xid8, $2) \
       AND tx < pg_snapshot_xmin(pg_current_snapshot()) \
       AND $4::uuid IS NULL \
     ORDER BY tx, global_position LIMIT $3)",
    held_back_row!("(tx, global_position) > ($1::bigint::text::xid8, $2) AND $4::uuid IS NULL")
);

const READ_LOG_TAIL_TENANT: &str = concat!(
    "(SELECT false AS held_back, ",
    tail_columns!(),
    " FROM events WHERE tenant_id = $4 AND tx >= $1::bigint::text::xid8 \
       AND (tenant_id, tx, global_position) > ($4, $1::bigint::text::xid8, $2) \
       AND tx < pg_snapshot_xmin(pg_current_snapshot()) \
     ORDER BY tenant_id, tx, global_position LIMIT $3)",
    held_back_row!(
        "tenant_id = $4 AND tx >= $1::bigint::text::xid8 \
         AND (tenant_id, tx, global_position) > ($4, $1::bigint::text::xid8, $2)"
    )
);

const VERIFY_EVENTS_FIRST: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events ORDER BY tenant_id, stream_id, stream_version LIMIT $1"
);
const VERIFY_EVENTS_AFTER: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE (tenant_id, stream_id, stream_version) > ($2, $3, $4) \
     ORDER BY tenant_id, stream_id, stream_version LIMIT $1"
);
const VERIFY_EVENTS_TENANT: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE tenant_id = $2 AND (stream_id, stream_version) > ($3, $4) \
     ORDER BY stream_id, stream_version LIMIT $1"
);
const VERIFY_HEADS_FIRST: &str = "SELECT tenant_id, stream_id, stream_type, version, head_hash \
     FROM streams ORDER BY tenant_id, stream_id LIMIT $1";
const VERIFY_HEADS_AFTER: &str = "SELECT tenant_id, stream_id, stream_type, version, head_hash \
     FROM streams WHERE (tenant_id, stream_id) > ($2, $3) ORDER BY tenant_id, stream_id LIMIT $1";
const VERIFY_HEADS_TENANT_FIRST: &str = "SELECT tenant_id, stream_id, stream_type, version, \
     head_hash FROM streams WHERE tenant_id = $2 ORDER BY stream_id LIMIT $1";
const VERIFY_HEADS_TENANT_AFTER: &str = "SELECT tenant_id, stream_id, stream_type, version, \
     head_hash FROM streams WHERE tenant_id = $2 AND stream_id > $3 ORDER BY stream_id LIMIT $1";

/// The event store over a PostgreSQL pool acting as `postvak_app`.
pub struct PostgresStore {
    db: Db,
    pool: PgPool,
    /// Tenant read connections (ADR 0035).
    reads: crate::reads::PgReads,
    keyring: Keyring,
    heads: HeadCache,
    /// No cached heads: every append to an existing stream takes the locking path.
    heads_disabled: bool,
    /// Wakes tailers after commits, this process's and (LISTEN/NOTIFY) other processes'.
    wake: Wake,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool)
            .field("keyring", &self.keyring)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A store over `db`, which must be a PostgreSQL database migrated by [`crate::db::migrate`].
    pub fn new(db: Db, keyring: Keyring) -> Result<Self, StoreError> {
        let pool = match &db {
            Db::Postgres(p) => p.clone(),
            Db::Sqlite(_) => {
                return Err(StoreError::Unavailable(
                    "PostgresStore needs a PostgreSQL database".into(),
                ));
            }
        };
        Ok(Self {
            db,
            keyring,
            heads: HeadCache::new(DEFAULT_HEAD_CACHE),
            heads_disabled: false,
            wake: Wake::new(pool.clone()),
            reads: crate::reads::PgReads::new(&pool),
            pool,
        })
    }

    /// Changes how many stream heads are cached (0 disables the one-statement path for
    /// existing streams; kept for tests and benchmarks).
    pub fn with_head_cache(mut self, capacity: usize) -> Self {
        self.heads = HeadCache::new(capacity);
        self.heads_disabled = capacity == 0;
        self
    }

    /// The one-statement attempt; `None` when the head was not what it assumed (or unknown).
    async fn try_fast(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
        stream: &StreamRef,
        expected: ExpectedVersion,
        batch: &SealedBatch,
    ) -> Result<Option<(AppendOutcome, Head)>, StoreError> {
        let assumed = match expected {
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => None,
            ExpectedVersion::Exact(v) => match self.cached_head(tenant, stream) {
                Some(h) if h.version == v => Some(h),
                _ => return Ok(None),
            },
            ExpectedVersion::Any => match self.cached_head(tenant, stream) {
                Some(h) => Some(h),
                None => return Ok(None),
            },
        };
        let (head_version, head_hash) = match &assumed {
            Some(h) => (h.version, h.hash.as_slice()),
            None => (0, GENESIS.as_slice()),
        };
        let Ok(chained) = common::chain(tenant, stream, head_version, head_hash, batch) else {
            // Overflow: let the slow path decide between that and a conflict.
            return Ok(None);
        };
        let rows = self
            .write(conn, tenant, stream, assumed.as_ref(), batch, &chained)
            .await?;
        if rows == batch.len() {
            Ok(Some(outcome(stream, batch, &chained)))
        } else {
            Ok(None)
        }
    }

    fn cached_head(&self, tenant: TenantId, stream: &StreamRef) -> Option<Head> {
        if self.heads_disabled {
            return None;
        }
        self.heads
            .get(tenant, &stream.stream_id)
            .filter(|h| h.stream_type == stream.stream_type)
    }

    /// Runs `APPEND_NEW` (no head) or `APPEND_NEXT` (from `head`); returns the events inserted.
    async fn write(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
        stream: &StreamRef,
        head: Option<&Head>,
        batch: &SealedBatch,
        chained: &ChainedBatch,
    ) -> Result<u64, StoreError> {
        let head_hash = chained.head_hash();
        let ids = batch.event_ids();
        let query = if let ([e], [version], [prev]) = (
            batch.events.as_slice(),
            chained.versions.as_slice(),
            chained.prev_hashes.as_slice(),
        ) {
            sqlx::query(if head.is_some() {
                APPEND_NEXT_ONE
            } else {
                APPEND_NEW_ONE
            })
            .bind(tenant.0)
            .bind(&stream.stream_id)
            .bind(&stream.stream_type)
            .bind(*version)
            .bind(head_hash.as_slice())
            .bind(batch.recorded_at)
            .bind(e.event_id)
            .bind(&e.event_type)
            .bind(event_version(e.event_version)?)
            .bind(e.key_id)
            .bind(e.payload.as_slice())
            .bind(e.metadata.as_slice())
            .bind(prev.as_slice())
        } else {
            let n = batch.events.len();
            let mut types = Vec::with_capacity(n);
            let mut type_versions = Vec::with_capacity(n);
            let mut keys = Vec::with_capacity(n);
            let mut payloads = Vec::with_capacity(n);
            let mut metadata = Vec::with_capacity(n);
            for e in &batch.events {
                types.push(e.event_type.as_str());
                type_versions.push(event_version(e.event_version)?);
                keys.push(e.key_id);
                payloads.push(e.payload.as_slice());
                metadata.push(e.metadata.as_slice());
            }
            sqlx::query(if head.is_some() {
                APPEND_NEXT
            } else {
                APPEND_NEW
            })
            .bind(tenant.0)
            .bind(&stream.stream_id)
            .bind(&stream.stream_type)
            .bind(to_i64(chained.last_version()))
            .bind(head_hash.as_slice())
            .bind(batch.recorded_at)
            .bind(ids.clone())
            .bind(chained.versions.clone())
            .bind(types)
            .bind(type_versions)
            .bind(keys)
            .bind(payloads)
            .bind(metadata)
            .bind(chained.prev_hashes.clone())
            .bind(chained.hashes.clone())
        };
        let query = match head {
            Some(h) => query.bind(to_i64(h.version)).bind(h.hash.as_slice()),
            None => query,
        };
        match query.execute(&mut *conn).await {
            Ok(r) => Ok(r.rows_affected()),
            Err(e) => Err(insert_error(e, stream, &ids)),
        }
    }

    /// The definitive path: lock the head, check, write. Runs inside a transaction.
    /// `locked`: the head as the caller already locked it in this transaction (`Some(None)`:
    /// no stream yet), so the first round does not lock it again.
    async fn locked_append(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
        stream: &StreamRef,
        expected: ExpectedVersion,
        batch: &SealedBatch,
        mut locked: Option<Option<Head>>,
    ) -> Result<(AppendOutcome, Head), StoreError> {
        for _ in 0..CREATE_RACE_RETRIES {
            let head = match locked.take() {
                Some(head) => head,
                None => sqlx::query(LOCK_HEAD)
                    .bind(tenant.0)
                    .bind(&stream.stream_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?
                    .map(|row| head_from_row(&row))
                    .transpose()?,
            };
            let head_version = match common::check_head(stream, expected, head.as_ref()) {
                Ok(v) => v,
                Err(HeadCheck::TypeMismatch(actual)) => {
                    return Err(StoreError::StreamTypeMismatch {
                        stream_id: stream.stream_id.clone(),
                        requested: stream.stream_type.clone(),
                        actual,
                    });
                }
                Err(HeadCheck::Conflict(actual)) => {
                    if let Some(h) = head {
                        self.heads.put(tenant, &stream.stream_id, h);
                    }
                    return Err(self
                        .conflict_or_duplicate(conn, stream, expected, actual, batch)
                        .await);
                }
            };
            let head_hash = head
                .as_ref()
                .map_or(GENESIS.as_slice(), |h| h.hash.as_slice());
            let chained = common::chain(tenant, stream, head_version, head_hash, batch)?;
            let rows = self
                .write(conn, tenant, stream, head.as_ref(), batch, &chained)
                .await?;
            if rows == batch.len() {
                return Ok(outcome(stream, batch, &chained));
            }
            if head.is_some() {
                return Err(StoreError::Database(format!(
                    "stream {} changed while its head was locked",
                    stream.stream_id
                )));
            }
            // The stream was created between our look and our insert: look again.
        }
        Err(StoreError::Database(format!(
            "stream {} kept being created under us",
            stream.stream_id
        )))
    }

    /// A wrong expected version is a `DuplicateEvent` if the events are already stored (a retry
    /// of an append that committed), else a `Conflict`.
    async fn conflict_or_duplicate(
        &self,
        conn: &mut PgConnection,
        stream: &StreamRef,
        expected: ExpectedVersion,
        actual: u64,
        batch: &SealedBatch,
    ) -> StoreError {
        let found: Result<Option<Uuid>, _> = sqlx::query_scalar(FIND_EXISTING)
            .bind(batch.event_ids())
            .fetch_optional(&mut *conn)
            .await;
        match found {
            Ok(Some(event_id)) => StoreError::DuplicateEvent { event_id },
            Ok(None) => StoreError::Conflict {
                stream_id: stream.stream_id.clone(),
                expected,
                actual,
            },
            Err(e) => db_error(e),
        }
    }

    async fn fetch_events(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        query
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(stored_from_row)
            .collect()
    }
}

fn outcome(
    stream: &StreamRef,
    batch: &SealedBatch,
    chained: &ChainedBatch,
) -> (AppendOutcome, Head) {
    (
        AppendOutcome {
            first_version: chained.first_version,
            last_version: chained.last_version(),
            event_ids: batch.event_ids(),
        },
        Head {
            stream_type: stream.stream_type.clone(),
            version: chained.last_version(),
            hash: chained.head_hash().to_vec(),
        },
    )
}

/// Maps a failed insert: a unique violation on `event_id` is a retry of a committed append.
fn insert_error(e: sqlx::Error, stream: &StreamRef, ids: &[Uuid]) -> StoreError {
    if let sqlx::Error::Database(dbe) = &e
        && let Some(pg) = dbe.try_downcast_ref::<PgDatabaseError>()
        && pg.code() == "23505"
    {
        match pg.constraint() {
            Some("events_event_id_key") => {
                // Detail: `Key (event_id)=(…) already exists.`
                let event_id = pg
                    .detail()
                    .and_then(|d| d.split_once("=(")?.1.split_once(')'))
                    .and_then(|(id, _)| Uuid::parse_str(id).ok())
                    .or_else(|| ids.first().copied())
                    .unwrap_or_default();
                return StoreError::DuplicateEvent { event_id };
            }
            Some("events_pkey") => {
                return StoreError::Database(format!(
                    "stream {} has events beyond its recorded head; run `verify`",
                    stream.stream_id
                ));
            }
            _ => {}
        }
    }
    db_error(e)
}

fn head_from_row(row: &PgRow) -> Result<Head, StoreError> {
    Ok(Head {
        stream_type: row.try_get("stream_type").map_err(db_error)?,
        version: to_u64(row.try_get("version").map_err(db_error)?, "stream version")?,
        hash: row.try_get("head_hash").map_err(db_error)?,
    })
}

fn stored_from_row(row: &PgRow) -> Result<StoredEvent, StoreError> {
    let get = |e: sqlx::Error| db_error(e);
    Ok(StoredEvent {
        position: LogPosition {
            tx: to_u64(row.try_get("commit_tx").map_err(get)?, "tx")?,
            global_position: row.try_get("global_position").map_err(get)?,
        },
        event_id: row.try_get("event_id").map_err(get)?,
        tenant_id: TenantId(row.try_get("tenant_id").map_err(get)?),
        stream_type: row.try_get("stream_type").map_err(get)?,
        stream_id: row.try_get("stream_id").map_err(get)?,
        stream_version: to_u64(
            row.try_get("stream_version").map_err(get)?,
            "stream version",
        )?,
        event_type: row.try_get("event_type").map_err(get)?,
        event_version: to_u32(
            i64::from(row.try_get::<i32, _>("event_version").map_err(get)?),
            "event version",
        )?,
        key_id: row.try_get("key_id").map_err(get)?,
        payload: row.try_get("payload").map_err(get)?,
        metadata: row.try_get("metadata").map_err(get)?,
        recorded_at: row.try_get("recorded_at").map_err(get)?,
        prev_hash: row.try_get("prev_hash").map_err(get)?,
        hash: row.try_get("hash").map_err(get)?,
    })
}

fn event_version(v: u32) -> Result<i32, StoreError> {
    i32::try_from(v).map_err(|_| StoreError::Serialization(format!("event_version {v} too large")))
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl EventStore for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    #[tracing::instrument(
        skip(self, events),
        fields(tenant_id = %tenant, stream_id = %stream.stream_id, n = events.len())
    )]
    async fn append(
        &self,
        tenant: TenantId,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        common::precheck(&events)?;
        let batch = common::seal(&self.keyring, tenant, events).await?;
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let (out, head) = match self
            .try_fast(&mut conn, tenant, stream, expected, &batch)
            .await?
        {
            Some(done) => done,
            None => {
                let mut attempt = 0u32;
                loop {
                    let mut tx = conn.begin().await.map_err(db_error)?;
                    // Lock the head without waiting: a transaction that waits for a row lock
                    // already has its xid, and a writer arriving as the holder ends can take
                    // the row first and commit a lower version under a later xid; the log
                    // (read in xid order) would then list our higher version first. A failed
                    // attempt's xid is rolled back with it. After a while, wait as before.
                    // The head it locked is handed on, so it is not locked twice.
                    let locked = if attempt < NOWAIT_ATTEMPTS {
                        let row = sqlx::query(LOCK_HEAD_NOWAIT)
                            .bind(tenant.0)
                            .bind(&stream.stream_id)
                            .fetch_optional(&mut *tx)
                            .await;
                        match row {
                            Ok(row) => Some(row.as_ref().map(head_from_row).transpose()?),
                            Err(e) if lock_not_available(&e) => {
                                // Rolled back now, not with the next BEGIN: an open
                                // transaction would hold the relay's snapshot horizon back
                                // while we sleep.
                                tx.rollback().await.map_err(db_error)?;
                                attempt += 1;
                                tokio::time::sleep(std::time::Duration::from_millis(u64::from(
                                    attempt.min(8),
                                )))
                                .await;
                                continue;
                            }
                            Err(e) => return Err(db_error(e)),
                        }
                    } else {
                        None
                    };
                    let done = self
                        .locked_append(&mut tx, tenant, stream, expected, &batch, locked)
                        .await?;
                    tx.commit().await.map_err(db_error)?;
                    break done;
                }
            }
        };
        self.heads.put(tenant, &stream.stream_id, head);
        self.wake.announce();
        Ok(out)
    }

    /// Same checks and statements as `append`, on the caller's connection; the head cache
    /// learns nothing until a later append or read (the caller may still roll back).
    #[tracing::instrument(
        skip(self, tx, events),
        fields(tenant_id = %tenant, stream_id = %stream.stream_id, n = events.len())
    )]
    async fn append_in_tx(
        &self,
        tx: &mut DbTx,
        tenant: TenantId,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let DbTx::Postgres(tx) = tx else {
            return Err(StoreError::Database(
                "a SQLite transaction cannot append to PostgreSQL".into(),
            ));
        };
        common::precheck(&events)?;
        let batch = common::seal(&self.keyring, tenant, events).await?;
        // Not committed yet: the cache must not believe in this head.
        self.heads.forget(tenant, &stream.stream_id);
        let conn: &mut PgConnection = tx;
        if let Some(out) = self
            .try_fast(conn, tenant, stream, expected, &batch)
            .await?
        {
            self.heads.forget(tenant, &stream.stream_id);
            return Ok(out.0);
        }
        let result = self
            .locked_append(conn, tenant, stream, expected, &batch, None)
            .await;
        self.heads.forget(tenant, &stream.stream_id);
        result.map(|(out, _)| out)
    }

    /// One statement for every stream (see `CREATE_STREAMS`); a stream found to exist is then
    /// asked through `append_in_tx`, which says exactly why (a conflict, another type, a retry).
    #[tracing::instrument(skip(self, tx, streams), fields(tenant_id = %tenant, n = streams.len()))]
    async fn create_streams_in_tx(
        &self,
        tx: &mut DbTx,
        tenant: TenantId,
        streams: Vec<(StreamRef, Vec<NewEvent>)>,
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        if !matches!(tx, DbTx::Postgres(_)) {
            return Err(StoreError::Database(
                "a SQLite transaction cannot append to PostgreSQL".into(),
            ));
        }
        let mut sealed = Vec::with_capacity(streams.len());
        for (stream, events) in streams {
            common::precheck(&events)?;
            let batch = common::seal(&self.keyring, tenant, events.clone()).await?;
            let chained = common::chain(tenant, &stream, 0, GENESIS.as_slice(), &batch)?;
            self.heads.forget(tenant, &stream.stream_id);
            sealed.push((stream, events, batch, chained));
        }
        // Heads in stream-id order: two transactions creating overlapping streams lock them
        // in the same order.
        let mut order: Vec<usize> = (0..sealed.len()).collect();
        order.sort_by(|a, b| sealed[*a].0.stream_id.cmp(&sealed[*b].0.stream_id));
        let mut head_ids = Vec::with_capacity(order.len());
        let mut head_types = Vec::with_capacity(order.len());
        let mut head_versions = Vec::with_capacity(order.len());
        let mut head_hashes = Vec::with_capacity(order.len());
        for &i in &order {
            let (stream, _, _, chained) = &sealed[i];
            head_ids.push(stream.stream_id.as_str());
            head_types.push(stream.stream_type.as_str());
            head_versions.push(to_i64(chained.last_version()));
            head_hashes.push(chained.head_hash().to_vec());
        }
        let (mut ids, mut sids, mut stypes, mut versions, mut types) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut type_versions, mut keys, mut payloads, mut metadata, mut prevs, mut hashes) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for (stream, _, batch, chained) in &sealed {
            for (j, e) in batch.events.iter().enumerate() {
                ids.push(e.event_id);
                sids.push(stream.stream_id.as_str());
                stypes.push(stream.stream_type.as_str());
                versions.push(chained.versions[j]);
                types.push(e.event_type.as_str());
                type_versions.push(event_version(e.event_version)?);
                keys.push(e.key_id);
                payloads.push(e.payload.as_slice());
                metadata.push(e.metadata.as_slice());
                prevs.push(chained.prev_hashes[j].as_slice());
                hashes.push(chained.hashes[j].as_slice());
            }
        }
        let recorded_at = sealed
            .first()
            .map_or_else(super::now_micros, |s| s.2.recorded_at);
        let DbTx::Postgres(pg) = tx else {
            return Err(StoreError::Database("not a PostgreSQL transaction".into()));
        };
        let written: Vec<String> = match sqlx::query_scalar(CREATE_STREAMS)
            .bind(tenant.0)
            .bind(recorded_at)
            .bind(&head_ids)
            .bind(&head_types)
            .bind(&head_versions)
            .bind(&head_hashes)
            .bind(&ids)
            .bind(&sids)
            .bind(&stypes)
            .bind(&versions)
            .bind(&types)
            .bind(&type_versions)
            .bind(&keys)
            .bind(&payloads)
            .bind(&metadata)
            .bind(&prevs)
            .bind(&hashes)
            .fetch_all(&mut **pg)
            .await
        {
            Ok(w) => w,
            Err(e) => return Err(insert_error(e, &sealed[0].0, &ids)),
        };
        let written: std::collections::HashSet<String> = written.into_iter().collect();
        let mut out = Vec::with_capacity(sealed.len());
        for (stream, events, batch, chained) in sealed {
            if written.contains(&stream.stream_id) {
                out.push(Ok(outcome(&stream, &batch, &chained).0));
                continue;
            }
            // It exists: the single-stream path says why, exactly as an `append_in_tx` would.
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

    #[tracing::instrument(skip(self), fields(tenant_id = %tenant, stream_id = %stream.stream_id))]
    async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &StreamRef,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stored = self
            .fetch_events(
                sqlx::query(READ_STREAM)
                    .bind(tenant.0)
                    .bind(&stream.stream_id)
                    .bind(&stream.stream_type)
                    .bind(to_i64(from_version)),
            )
            .await?;
        if let Some(last) = stored.last() {
            self.heads.put(
                tenant,
                &stream.stream_id,
                Head {
                    stream_type: last.stream_type.clone(),
                    version: last.stream_version,
                    hash: last.hash.clone(),
                },
            );
        }
        let mut out = Vec::with_capacity(stored.len());
        for e in &stored {
            out.push(open_stored(&self.keyring, e).await?);
        }
        Ok(out)
    }

    #[tracing::instrument(skip(self), fields(tenant_id = %tenant, stream_id = %stream.stream_id))]
    async fn stream_version(
        &self,
        tenant: TenantId,
        stream: &StreamRef,
    ) -> Result<u64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(STREAM_VERSION)
            .bind(tenant.0)
            .bind(&stream.stream_id)
            .bind(&stream.stream_type)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        v.map_or(Ok(0), |v| to_u64(v, "stream version"))
    }

    #[tracing::instrument(skip(self), fields(tenant_id = ?tenant.map(|t| t.0)))]
    async fn read_log(
        &self,
        after: LogPosition,
        limit_n: usize,
        tenant: Option<TenantId>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let tx = i64::try_from(after.tx).unwrap_or(i64::MAX);
        let query = match tenant {
            None => sqlx::query(READ_LOG),
            Some(_) => sqlx::query(READ_LOG_TENANT),
        }
        .bind(tx)
        .bind(after.global_position)
        .bind(limit(limit_n));
        let query = match tenant {
            None => query,
            Some(t) => query.bind(t.0),
        };
        self.fetch_events(query).await
    }

    #[tracing::instrument(skip(self), fields(tenant_id = ?tenant.map(|t| t.0)))]
    async fn read_log_tail(
        &self,
        after: LogPosition,
        limit_n: usize,
        tenant: Option<TenantId>,
        payloads: Payloads<'_>,
    ) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        let tx = i64::try_from(after.tx).unwrap_or(i64::MAX);
        let payload_types: Option<Vec<&str>> = match payloads {
            Payloads::All => None,
            Payloads::OfStreamTypes(types) => Some(types.to_vec()),
        };
        let query = match tenant {
            None => sqlx::query(READ_LOG_TAIL),
            Some(_) => sqlx::query(READ_LOG_TAIL_TENANT),
        }
        .bind(tx)
        .bind(after.global_position)
        .bind(limit(limit_n))
        .bind(tenant.map(|t| t.0))
        .bind(payload_types);
        let rows = query.fetch_all(&self.pool).await.map_err(db_error)?;
        let mut held_back = false;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<bool, _>("held_back").map_err(db_error)? {
                held_back = true;
            } else {
                events.push(stored_from_row(row)?);
            }
        }
        Ok((events, held_back))
    }

    #[tracing::instrument(skip(self), fields(tenant_id = ?tenant.map(|t| t.0)))]
    async fn verify(&self, tenant: Option<TenantId>) -> Result<VerifyReport, StoreError> {
        common::verify_walk(self, tenant).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await
    }

    fn append_signal(&self) -> Arc<Notify> {
        self.wake.signal()
    }

    fn announce_commit(&self) {
        self.wake.announce();
    }

    fn db(&self) -> &Db {
        &self.db
    }

    fn reads(&self) -> Option<&crate::reads::PgReads> {
        Some(&self.reads)
    }
}

#[async_trait]
impl VerifySource for PostgresStore {
    async fn events_after(
        &self,
        after: Option<(TenantId, String, u64)>,
        tenant: Option<TenantId>,
        limit_n: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let n = limit(limit_n);
        let query = match (tenant, after) {
            (Some(t), after) => {
                let (s, v) = after.map_or((String::new(), 0), |(_, s, v)| (s, v));
                sqlx::query(VERIFY_EVENTS_TENANT)
                    .bind(n)
                    .bind(t.0)
                    .bind(s)
                    .bind(to_i64(v))
            }
            (None, None) => sqlx::query(VERIFY_EVENTS_FIRST).bind(n),
            (None, Some((t, s, v))) => sqlx::query(VERIFY_EVENTS_AFTER)
                .bind(n)
                .bind(t.0)
                .bind(s)
                .bind(to_i64(v)),
        };
        self.fetch_events(query).await
    }

    async fn heads_after(
        &self,
        after: Option<(TenantId, String)>,
        tenant: Option<TenantId>,
        limit_n: usize,
    ) -> Result<Vec<(TenantId, String, Head)>, StoreError> {
        let n = limit(limit_n);
        let query = match (tenant, after) {
            (Some(t), None) => sqlx::query(VERIFY_HEADS_TENANT_FIRST).bind(n).bind(t.0),
            (Some(t), Some((_, s))) => sqlx::query(VERIFY_HEADS_TENANT_AFTER)
                .bind(n)
                .bind(t.0)
                .bind(s),
            (None, None) => sqlx::query(VERIFY_HEADS_FIRST).bind(n),
            (None, Some((t, s))) => sqlx::query(VERIFY_HEADS_AFTER).bind(n).bind(t.0).bind(s),
        };
        query
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(|row| {
                Ok((
                    TenantId(row.try_get("tenant_id").map_err(db_error)?),
                    row.try_get("stream_id").map_err(db_error)?,
                    head_from_row(row)?,
                ))
            })
            .collect()
    }
}

/// Wrapped data keys in the `data_keys` table.
#[derive(Debug, Clone)]
pub struct PgKeyStore {
    pool: PgPool,
}

impl PgKeyStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// `(scope, subject)` columns of a key scope.
pub(crate) fn scope_columns(scope: &KeyScope) -> (&'static str, Option<&str>) {
    match scope {
        KeyScope::Tenant => ("tenant", None),
        KeyScope::Subject(s) => ("subject", Some(s.as_str())),
    }
}

fn storage(e: sqlx::Error) -> CryptoError {
    CryptoError::Storage(e.to_string())
}

fn key_from_row(row: &PgRow) -> Result<StoredKey, CryptoError> {
    Ok(StoredKey {
        key_id: row.try_get("key_id").map_err(storage)?,
        tenant_id: TenantId(row.try_get("tenant_id").map_err(storage)?),
        kek_id: row.try_get("kek_id").map_err(storage)?,
        wrapped: row.try_get("wrapped").map_err(storage)?,
    })
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn get(&self, key_id: Uuid) -> Result<Option<StoredKey>, CryptoError> {
        sqlx::query("SELECT key_id, tenant_id, kek_id, wrapped FROM data_keys WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    async fn find(
        &self,
        tenant: TenantId,
        scope: &KeyScope,
    ) -> Result<Option<StoredKey>, CryptoError> {
        let (scope, subject) = scope_columns(scope);
        sqlx::query(
            "SELECT key_id, tenant_id, kek_id, wrapped FROM data_keys \
             WHERE tenant_id = $1 AND scope = $2 AND coalesce(subject, '') = $3",
        )
        .bind(tenant.0)
        .bind(scope)
        .bind(subject.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await
        .map_err(storage)?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn insert(&self, key: StoredKey, scope: &KeyScope) -> Result<StoredKey, CryptoError> {
        let (scope_name, subject) = scope_columns(scope);
        // ON CONFLICT waits for a competing insert to finish; the loser then reads the winner's.
        let inserted = sqlx::query(
            "INSERT INTO data_keys (key_id, tenant_id, scope, subject, kek_id, wrapped) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(key.key_id)
        .bind(key.tenant_id.0)
        .bind(scope_name)
        .bind(subject)
        .bind(&key.kek_id)
        .bind(&key.wrapped)
        .execute(&self.pool)
        .await
        .map_err(storage)?
        .rows_affected();
        if inserted == 1 {
            return Ok(key);
        }
        self.find(key.tenant_id, scope).await?.ok_or_else(|| {
            CryptoError::Storage(format!("data key {} collided and vanished", key.key_id))
        })
    }

    async fn destroy(&self, tenant: TenantId, scope: &KeyScope) -> Result<bool, CryptoError> {
        let (scope, subject) = scope_columns(scope);
        let n = sqlx::query(
            "UPDATE data_keys SET wrapped = NULL, destroyed_at = now() \
             WHERE tenant_id = $1 AND scope = $2 AND coalesce(subject, '') = $3 \
               AND wrapped IS NOT NULL",
        )
        .bind(tenant.0)
        .bind(scope)
        .bind(subject.unwrap_or(""))
        .execute(&self.pool)
        .await
        .map_err(storage)?
        .rows_affected();
        Ok(n > 0)
    }
}
