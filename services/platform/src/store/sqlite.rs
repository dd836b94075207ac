//! The SQLite event store: one file, one writer connection (appends queue for it, which beats
//! `SQLITE_BUSY` retries), a pool of WAL readers beside it. With one writer the rowid order of
//! `events` is commit order, so `tx` is always 0 and `read_log` never skips an event.

use super::common::{self, Head, HeadCheck, SealedBatch, VerifySource, to_i64, to_u32, to_u64};
use super::postgres::scope_columns;
use super::{
    AppendOutcome, Backend, EventStore, ExpectedVersion, KeyScope, LogPosition, NewEvent,
    RecordedEvent, StoreError, StoredEvent, StreamRef, TenantId, VerifyReport, from_micros, micros,
    now_micros, open_stored,
};
use crate::crypto::{CryptoError, KeyStore, Keyring, StoredKey};
use crate::db::{Db, DbTx, SqliteDb, db_error};
use async_trait::async_trait;
use postvak_core::chain::GENESIS;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Row, SqlitePool};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

macro_rules! event_columns {
    () => {
        "tx, global_position, event_id, tenant_id, stream_type, stream_id, stream_version, \
         event_type, event_version, key_id, payload, metadata, recorded_at, prev_hash, hash"
    };
}

const HEAD: &str =
    "SELECT stream_type, version, head_hash FROM streams WHERE tenant_id = ?1 AND stream_id = ?2";

const INSERT_HEAD: &str = "INSERT INTO streams (tenant_id, stream_id, stream_type, version, \
     head_hash) VALUES (?1, ?2, ?3, ?4, ?5)";

const UPDATE_HEAD: &str = "UPDATE streams SET version = ?3, head_hash = ?4 \
     WHERE tenant_id = ?1 AND stream_id = ?2";

const EVENT_EXISTS: &str = "SELECT 1 FROM events WHERE event_id = ?1";

const READ_STREAM: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE tenant_id = ?1 AND stream_id = ?2 AND stream_type = ?3 \
       AND stream_version >= ?4 ORDER BY stream_version"
);

const STREAM_VERSION: &str =
    "SELECT version FROM streams WHERE tenant_id = ?1 AND stream_id = ?2 AND stream_type = ?3";

const READ_LOG: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE global_position > ?1 ORDER BY global_position LIMIT ?2"
);

const READ_LOG_TENANT: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE tenant_id = ?3 AND global_position > ?1 \
     ORDER BY global_position LIMIT ?2"
);

const VERIFY_EVENTS_FIRST: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events ORDER BY tenant_id, stream_id, stream_version LIMIT ?1"
);
const VERIFY_EVENTS_AFTER: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE (tenant_id, stream_id, stream_version) > (?2, ?3, ?4) \
     ORDER BY tenant_id, stream_id, stream_version LIMIT ?1"
);
const VERIFY_EVENTS_TENANT: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE tenant_id = ?2 AND (stream_id, stream_version) > (?3, ?4) \
     ORDER BY tenant_id, stream_id, stream_version LIMIT ?1"
);
const VERIFY_HEADS_FIRST: &str = "SELECT tenant_id, stream_id, stream_type, version, head_hash \
     FROM streams ORDER BY tenant_id, stream_id LIMIT ?1";
const VERIFY_HEADS_AFTER: &str = "SELECT tenant_id, stream_id, stream_type, version, head_hash \
     FROM streams WHERE (tenant_id, stream_id) > (?2, ?3) ORDER BY tenant_id, stream_id LIMIT ?1";
const VERIFY_HEADS_TENANT_FIRST: &str = "SELECT tenant_id, stream_id, stream_type, version, \
     head_hash FROM streams WHERE tenant_id = ?2 ORDER BY tenant_id, stream_id LIMIT ?1";
const VERIFY_HEADS_TENANT_AFTER: &str = "SELECT tenant_id, stream_id, stream_type, version, \
     head_hash FROM streams WHERE tenant_id = ?2 AND stream_id > ?3 \
     ORDER BY tenant_id, stream_id LIMIT ?1";

/// The event store over one SQLite file.
pub struct SqliteStore {
    db: Db,
    sqlite: SqliteDb,
    keyring: Keyring,
    signal: Arc<Notify>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("db", &self.sqlite)
            .field("keyring", &self.keyring)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// A store over `db`, which must be a SQLite database migrated by [`crate::db::migrate`].
    pub fn new(db: Db, keyring: Keyring) -> Result<Self, StoreError> {
        let sqlite = match &db {
            Db::Sqlite(s) => s.clone(),
            Db::Postgres(_) => {
                return Err(StoreError::Unavailable(
                    "SqliteStore needs a SQLite database".into(),
                ));
            }
        };
        Ok(Self {
            db,
            sqlite,
            keyring,
            signal: Arc::new(Notify::new()),
        })
    }
}

/// Checks and writes inside a transaction that holds the write lock.
async fn append_locked(
    conn: &mut SqliteConnection,
    tenant: TenantId,
    stream: &StreamRef,
    expected: ExpectedVersion,
    batch: &SealedBatch,
) -> Result<AppendOutcome, StoreError> {
    let head = sqlx::query(HEAD)
        .bind(tenant.0)
        .bind(&stream.stream_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?
        .map(|row| head_from_row(&row))
        .transpose()?;
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
            // A retry of an append that committed is a duplicate, not a conflict.
            for e in &batch.events {
                let exists = sqlx::query(EVENT_EXISTS)
                    .bind(e.event_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?;
                if exists.is_some() {
                    return Err(StoreError::DuplicateEvent {
                        event_id: e.event_id,
                    });
                }
            }
            return Err(StoreError::Conflict {
                stream_id: stream.stream_id.clone(),
                expected,
                actual,
            });
        }
    };
    let head_hash = head
        .as_ref()
        .map_or(GENESIS.as_slice(), |h| h.hash.as_slice());
    let chained = common::chain(tenant, stream, head_version, head_hash, batch)?;
    let new_hash = chained.head_hash();
    let head_query = match head {
        None => sqlx::query(INSERT_HEAD)
            .bind(tenant.0)
            .bind(&stream.stream_id)
            .bind(&stream.stream_type)
            .bind(to_i64(chained.last_version()))
            .bind(new_hash.as_slice()),
        Some(_) => sqlx::query(UPDATE_HEAD)
            .bind(tenant.0)
            .bind(&stream.stream_id)
            .bind(to_i64(chained.last_version()))
            .bind(new_hash.as_slice()),
    };
    head_query.execute(&mut *conn).await.map_err(db_error)?;
    let recorded_at = micros(batch.recorded_at);
    // One multi-row INSERT per chunk: every statement is a round trip to SQLite's worker
    // thread, which cost more than the inserts themselves for batches. 64 rows × 13 columns
    // stays far below SQLite's limit on bound parameters.
    let indexed: Vec<_> = batch.events.iter().enumerate().collect();
    for chunk in indexed.chunks(64) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO events (event_id, tenant_id, stream_type, stream_id, stream_version, \
             event_type, event_version, key_id, payload, metadata, recorded_at, prev_hash, hash) ",
        );
        insert.push_values(chunk.iter(), |mut row, (i, e)| {
            row.push_bind(e.event_id)
                .push_bind(tenant.0)
                .push_bind(stream.stream_type.clone())
                .push_bind(stream.stream_id.clone())
                .push_bind(chained.versions[*i])
                .push_bind(e.event_type.clone())
                .push_bind(i64::from(e.event_version))
                .push_bind(e.key_id)
                .push_bind(e.payload.clone())
                .push_bind(e.metadata.clone())
                .push_bind(recorded_at)
                .push_bind(chained.prev_hashes[*i].to_vec())
                .push_bind(chained.hashes[*i].to_vec());
        });
        if let Err(err) = insert.build().execute(&mut *conn).await {
            // Name the event that was already there, as the one-row insert did.
            let mut duplicate = chunk.first().map_or(Uuid::nil(), |(_, e)| e.event_id);
            for (_, e) in chunk {
                let exists = sqlx::query(EVENT_EXISTS)
                    .bind(e.event_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?;
                if exists.is_some() {
                    duplicate = e.event_id;
                    break;
                }
            }
            return Err(insert_error(err, stream, duplicate));
        }
    }
    Ok(AppendOutcome {
        first_version: chained.first_version,
        last_version: chained.last_version(),
        event_ids: batch.event_ids(),
    })
}

fn insert_error(e: sqlx::Error, stream: &StreamRef, event_id: Uuid) -> StoreError {
    if let sqlx::Error::Database(dbe) = &e {
        let msg = dbe.message();
        if msg.contains("UNIQUE") && msg.contains("events.event_id") {
            return StoreError::DuplicateEvent { event_id };
        }
        if msg.contains("UNIQUE") && msg.contains("events.stream_version") {
            return StoreError::Database(format!(
                "stream {} has events beyond its recorded head; run `verify`",
                stream.stream_id
            ));
        }
    }
    db_error(e)
}

fn head_from_row(row: &SqliteRow) -> Result<Head, StoreError> {
    Ok(Head {
        stream_type: row.try_get("stream_type").map_err(db_error)?,
        version: to_u64(row.try_get("version").map_err(db_error)?, "stream version")?,
        hash: row.try_get("head_hash").map_err(db_error)?,
    })
}

fn stored_from_row(row: &SqliteRow) -> Result<StoredEvent, StoreError> {
    let get = |e: sqlx::Error| db_error(e);
    Ok(StoredEvent {
        position: LogPosition {
            tx: to_u64(row.try_get("tx").map_err(get)?, "tx")?,
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
        event_version: to_u32(row.try_get("event_version").map_err(get)?, "event version")?,
        key_id: row.try_get("key_id").map_err(get)?,
        payload: row.try_get("payload").map_err(get)?,
        metadata: row.try_get("metadata").map_err(get)?,
        recorded_at: from_micros(row.try_get("recorded_at").map_err(get)?),
        prev_hash: row.try_get("prev_hash").map_err(get)?,
        hash: row.try_get("hash").map_err(get)?,
    })
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteStore {
    async fn fetch_events(
        &self,
        query: sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        query
            .fetch_all(&self.sqlite.reader)
            .await
            .map_err(db_error)?
            .iter()
            .map(stored_from_row)
            .collect()
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
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
        // Seal before taking the writer: creating a data key needs it too.
        let batch = common::seal(&self.keyring, tenant, events).await?;
        let mut tx = self
            .sqlite
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)?;
        let out = append_locked(&mut tx, tenant, stream, expected, &batch).await?;
        tx.commit().await.map_err(db_error)?;
        self.signal.notify_waiters();
        Ok(out)
    }

    /// `tx` holds the one writer connection (from [`Db::begin`] / `tenant_tx(_, true)`), so
    /// the checks run under the write lock as in `append`.
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
        let DbTx::Sqlite(tx) = tx else {
            return Err(StoreError::Database(
                "a PostgreSQL transaction cannot append to SQLite".into(),
            ));
        };
        common::precheck(&events)?;
        let batch = common::seal(&self.keyring, tenant, events).await?;
        append_locked(tx, tenant, stream, expected, &batch).await
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
            .fetch_optional(&self.sqlite.reader)
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
        let query = match tenant {
            None => sqlx::query(READ_LOG),
            Some(_) => sqlx::query(READ_LOG_TENANT),
        }
        .bind(after.global_position)
        .bind(limit(limit_n));
        let query = match tenant {
            None => query,
            Some(t) => query.bind(t.0),
        };
        self.fetch_events(query).await
    }

    #[tracing::instrument(skip(self), fields(tenant_id = ?tenant.map(|t| t.0)))]
    async fn verify(&self, tenant: Option<TenantId>) -> Result<VerifyReport, StoreError> {
        common::verify_walk(self, tenant).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await
    }

    fn append_signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    fn db(&self) -> &Db {
        &self.db
    }
}

#[async_trait]
impl VerifySource for SqliteStore {
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
            .fetch_all(&self.sqlite.reader)
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

/// Wrapped data keys in the `data_keys` table: reads on the reader pool, writes on the writer.
#[derive(Debug, Clone)]
pub struct SqliteKeyStore {
    reader: SqlitePool,
    writer: SqlitePool,
}

impl SqliteKeyStore {
    pub fn new(db: &SqliteDb) -> Self {
        Self {
            reader: db.reader.clone(),
            writer: db.writer.clone(),
        }
    }
}

fn storage(e: sqlx::Error) -> CryptoError {
    CryptoError::Storage(e.to_string())
}

fn key_from_row(row: &SqliteRow) -> Result<StoredKey, CryptoError> {
    Ok(StoredKey {
        key_id: row.try_get("key_id").map_err(storage)?,
        tenant_id: TenantId(row.try_get("tenant_id").map_err(storage)?),
        kek_id: row.try_get("kek_id").map_err(storage)?,
        wrapped: row.try_get("wrapped").map_err(storage)?,
    })
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn get(&self, key_id: Uuid) -> Result<Option<StoredKey>, CryptoError> {
        sqlx::query("SELECT key_id, tenant_id, kek_id, wrapped FROM data_keys WHERE key_id = ?1")
            .bind(key_id)
            .fetch_optional(&self.reader)
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
             WHERE tenant_id = ?1 AND scope = ?2 AND coalesce(subject, '') = ?3",
        )
        .bind(tenant.0)
        .bind(scope)
        .bind(subject.unwrap_or(""))
        .fetch_optional(&self.reader)
        .await
        .map_err(storage)?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn insert(&self, key: StoredKey, scope: &KeyScope) -> Result<StoredKey, CryptoError> {
        let (scope_name, subject) = scope_columns(scope);
        let inserted = sqlx::query(
            "INSERT INTO data_keys (key_id, tenant_id, scope, subject, kek_id, wrapped, \
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )
        .bind(key.key_id)
        .bind(key.tenant_id.0)
        .bind(scope_name)
        .bind(subject)
        .bind(&key.kek_id)
        .bind(&key.wrapped)
        .bind(micros(now_micros()))
        .execute(&self.writer)
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
            "UPDATE data_keys SET wrapped = NULL, destroyed_at = ?4 \
             WHERE tenant_id = ?1 AND scope = ?2 AND coalesce(subject, '') = ?3 \
               AND wrapped IS NOT NULL",
        )
        .bind(tenant.0)
        .bind(scope)
        .bind(subject.unwrap_or(""))
        .bind(micros(now_micros()))
        .execute(&self.writer)
        .await
        .map_err(storage)?
        .rows_affected();
        Ok(n > 0)
    }
}
