//! Ingest's tables on both backends. Every PostgreSQL statement runs in a transaction that sets
//! `postvak.tenant_id`, which row-level security checks (the second wall behind each query's
//! own `tenant_id` condition). Every write is idempotent: a retried delivery changes nothing.

use postvak_platform::db::{Db, db_error};
use postvak_platform::store::{StoreError, TenantId};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row, Transaction};
use std::collections::HashMap;
use uuid::Uuid;

async fn pg_tx(
    pool: &PgPool,
    tenant: TenantId,
) -> Result<Transaction<'static, Postgres>, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    sqlx::query("SELECT set_config('postvak.tenant_id', $1, true)")
        .bind(tenant.0.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    Ok(tx)
}

/// The first two columns of a row.
fn pair<'r, R, A, B>(r: &'r R) -> Result<(A, B), StoreError>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    A: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    B: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((
        r.try_get(0).map_err(db_error)?,
        r.try_get(1).map_err(db_error)?,
    ))
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A sealed blob ready to store.
#[derive(Debug, Clone)]
pub struct SealedBlob {
    pub blob_id: Uuid,
    pub key_id: Uuid,
    pub size: i64,
    pub sealed: Vec<u8>,
}

pub async fn load_index_key(
    db: &Db,
    tenant: TenantId,
) -> Result<Option<(Uuid, Vec<u8>)>, StoreError> {
    let row = match db {
        Db::Postgres(p) => {
            let mut tx = pg_tx(p, tenant).await?;
            let r =
                sqlx::query("SELECT key_id, sealed FROM ingest_index_keys WHERE tenant_id = $1")
                    .bind(tenant.0)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            r.map(|r| pair(&r)).transpose()?
        }
        Db::Sqlite(s) => {
            sqlx::query("SELECT key_id, sealed FROM ingest_index_keys WHERE tenant_id = ?1")
                .bind(tenant.0)
                .fetch_optional(&s.reader)
                .await
                .map_err(db_error)?
                .map(|r| pair(&r))
                .transpose()?
        }
    };
    Ok(row)
}

/// Inserts a tenant's index key unless one exists (the first writer wins; callers re-read).
pub async fn insert_index_key(
    db: &Db,
    tenant: TenantId,
    key_id: Uuid,
    sealed: &[u8],
) -> Result<(), StoreError> {
    match db {
        Db::Postgres(p) => {
            let mut tx = pg_tx(p, tenant).await?;
            sqlx::query(
                "INSERT INTO ingest_index_keys (tenant_id, key_id, sealed) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id) DO NOTHING",
            )
            .bind(tenant.0)
            .bind(key_id)
            .bind(sealed)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)
        }
        Db::Sqlite(s) => sqlx::query(
            "INSERT INTO ingest_index_keys (tenant_id, key_id, sealed, created_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant.0)
        .bind(key_id)
        .bind(sealed)
        .bind(now_secs())
        .execute(&s.writer)
        .await
        .map(|_| ())
        .map_err(db_error),
    }
}

/// Stores blobs in one transaction; a blob already stored (same id) is left as it is.
pub async fn put_blobs(db: &Db, tenant: TenantId, blobs: &[SealedBlob]) -> Result<(), StoreError> {
    if blobs.is_empty() {
        return Ok(());
    }
    match db {
        Db::Postgres(p) => {
            let mut tx = pg_tx(p, tenant).await?;
            let ids: Vec<Uuid> = blobs.iter().map(|b| b.blob_id).collect();
            let keys: Vec<Uuid> = blobs.iter().map(|b| b.key_id).collect();
            let sizes: Vec<i64> = blobs.iter().map(|b| b.size).collect();
            let sealed: Vec<&[u8]> = blobs.iter().map(|b| b.sealed.as_slice()).collect();
            sqlx::query(
                "INSERT INTO ingest_blobs (tenant_id, blob_id, key_id, size, sealed) \
                 SELECT $1, b.id, b.key, b.size, b.sealed \
                 FROM unnest($2::uuid[], $3::uuid[], $4::int8[], $5::bytea[]) AS b(id, key, size, sealed) \
                 ON CONFLICT (tenant_id, blob_id) DO NOTHING",
            )
            .bind(tenant.0)
            .bind(&ids)
            .bind(&keys)
            .bind(&sizes)
            .bind(&sealed)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)
        }
        Db::Sqlite(s) => {
            let mut tx = s.writer.begin().await.map_err(db_error)?;
            for b in blobs {
                sqlx::query(
                    "INSERT INTO ingest_blobs (tenant_id, blob_id, key_id, size, sealed, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (tenant_id, blob_id) DO NOTHING",
                )
                .bind(tenant.0)
                .bind(b.blob_id)
                .bind(b.key_id)
                .bind(b.size)
                .bind(b.sealed.as_slice())
                .bind(now_secs())
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)
        }
    }
}

/// A stored blob: `(key_id, sealed)`.
pub async fn get_blob(
    db: &Db,
    tenant: TenantId,
    blob_id: Uuid,
) -> Result<Option<(Uuid, Vec<u8>)>, StoreError> {
    let row = match db {
        Db::Postgres(p) => {
            let mut tx = pg_tx(p, tenant).await?;
            let r = sqlx::query(
                "SELECT key_id, sealed FROM ingest_blobs WHERE tenant_id = $1 AND blob_id = $2",
            )
            .bind(tenant.0)
            .bind(blob_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            r.map(|r| pair(&r)).transpose()?
        }
        Db::Sqlite(s) => sqlx::query(
            "SELECT key_id, sealed FROM ingest_blobs WHERE tenant_id = ?1 AND blob_id = ?2",
        )
        .bind(tenant.0)
        .bind(blob_id)
        .fetch_optional(&s.reader)
        .await
        .map_err(db_error)?
        .map(|r| pair(&r))
        .transpose()?,
    };
    Ok(row)
}

/// The conversations the inbox's index knows for these blind indexes.
pub async fn lookup_thread(
    db: &Db,
    tenant: TenantId,
    inbox: Uuid,
    hashes: &[String],
) -> Result<HashMap<String, Uuid>, StoreError> {
    if hashes.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = match db {
        Db::Postgres(p) => {
            let mut tx = pg_tx(p, tenant).await?;
            let r = sqlx::query(
                "SELECT mid_hash, conversation_id FROM ingest_thread_index \
                 WHERE tenant_id = $1 AND inbox_id = $2 AND mid_hash = ANY($3)",
            )
            .bind(tenant.0)
            .bind(inbox)
            .bind(hashes)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            r.iter().map(pair).collect::<Result<_, _>>()?
        }
        Db::Sqlite(s) => {
            let list = serde_json::to_string(hashes)
                .map_err(|e| StoreError::Serialization(e.to_string()))?;
            sqlx::query(
                "SELECT mid_hash, conversation_id FROM ingest_thread_index \
                 WHERE tenant_id = ?1 AND inbox_id = ?2 AND mid_hash IN (SELECT value FROM json_each(?3))",
            )
            .bind(tenant.0)
            .bind(inbox)
            .bind(list)
            .fetch_all(&s.reader)
            .await
            .map_err(db_error)?
            .iter()
            .map(pair)
            .collect::<Result<_, _>>()?
        }
    };
    Ok(rows)
}

/// Records a stored message: its row in `ingest_messages` and the blind indexes of the
/// Message-IDs it names for its conversation (ids already claimed keep their conversation).
/// One transaction; idempotent.
pub async fn record_message(
    db: &Db,
    tenant: TenantId,
    inbox: Uuid,
    message_id: Uuid,
    stream_id: &str,
    hashes: &[String],
    conversation: Uuid,
) -> Result<(), StoreError> {
    match db {
        Db::Postgres(p) => {
            let mut tx = pg_tx(p, tenant).await?;
            sqlx::query(
                "INSERT INTO ingest_messages (tenant_id, message_id, inbox_id, stream_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, message_id) DO NOTHING",
            )
            .bind(tenant.0)
            .bind(message_id)
            .bind(inbox)
            .bind(stream_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            if !hashes.is_empty() {
                sqlx::query(
                    "INSERT INTO ingest_thread_index (tenant_id, inbox_id, mid_hash, conversation_id) \
                     SELECT $1, $2, h, $4 FROM unnest($3::text[]) AS h \
                     ON CONFLICT (tenant_id, inbox_id, mid_hash) DO NOTHING",
                )
                .bind(tenant.0)
                .bind(inbox)
                .bind(hashes)
                .bind(conversation)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)
        }
        Db::Sqlite(s) => {
            let mut tx = s.writer.begin().await.map_err(db_error)?;
            sqlx::query(
                "INSERT INTO ingest_messages (tenant_id, message_id, inbox_id, stream_id) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant_id, message_id) DO NOTHING",
            )
            .bind(tenant.0)
            .bind(message_id)
            .bind(inbox)
            .bind(stream_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            if !hashes.is_empty() {
                let list = serde_json::to_string(hashes)
                    .map_err(|e| StoreError::Serialization(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO ingest_thread_index (tenant_id, inbox_id, mid_hash, conversation_id) \
                     SELECT ?1, ?2, value, ?3 FROM json_each(?4) WHERE true \
                     ON CONFLICT (tenant_id, inbox_id, mid_hash) DO NOTHING",
                )
                .bind(tenant.0)
                .bind(inbox)
                .bind(conversation)
                .bind(list)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)
        }
    }
}

/// The stream ids of a tenant's stored messages, oldest first (message ids are UUIDv7).
pub async fn message_streams(db: &Db, tenant: TenantId) -> Result<Vec<String>, StoreError> {
    match db {
        Db::Postgres(p) => {
            let mut tx = pg_tx(p, tenant).await?;
            let rows = sqlx::query(
                "SELECT stream_id FROM ingest_messages WHERE tenant_id = $1 ORDER BY message_id",
            )
            .bind(tenant.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            rows.iter()
                .map(|r| r.try_get::<String, _>(0).map_err(db_error))
                .collect()
        }
        Db::Sqlite(s) => sqlx::query(
            "SELECT stream_id FROM ingest_messages WHERE tenant_id = ?1 ORDER BY message_id",
        )
        .bind(tenant.0)
        .fetch_all(&s.reader)
        .await
        .map_err(db_error)?
        .iter()
        .map(|r| r.try_get::<String, _>(0).map_err(db_error))
        .collect(),
    }
}

/// What an `Idempotency-Key` claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First use, or a retry with the same request.
    Fresh,
    Same,
    /// The key was used for another request.
    Conflict,
}

pub async fn claim_idempotency_key(
    db: &Db,
    tenant: TenantId,
    inbox: Uuid,
    key_hash: &str,
    request_hash: &str,
) -> Result<Claim, StoreError> {
    let (inserted, stored): (bool, Option<String>) = match db {
        Db::Postgres(p) => {
            let mut tx = pg_tx(p, tenant).await?;
            let ins = sqlx::query(
                "INSERT INTO ingest_idempotency (tenant_id, inbox_id, key_hash, request_hash) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, inbox_id, key_hash) DO NOTHING",
            )
            .bind(tenant.0)
            .bind(inbox)
            .bind(key_hash)
            .bind(request_hash)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected()
                == 1;
            let stored = sqlx::query(
                "SELECT request_hash FROM ingest_idempotency \
                 WHERE tenant_id = $1 AND inbox_id = $2 AND key_hash = $3",
            )
            .bind(tenant.0)
            .bind(inbox)
            .bind(key_hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            (ins, stored)
        }
        Db::Sqlite(s) => {
            let mut tx = s.writer.begin().await.map_err(db_error)?;
            let ins = sqlx::query(
                "INSERT INTO ingest_idempotency (tenant_id, inbox_id, key_hash, request_hash, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (tenant_id, inbox_id, key_hash) DO NOTHING",
            )
            .bind(tenant.0)
            .bind(inbox)
            .bind(key_hash)
            .bind(request_hash)
            .bind(now_secs())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected()
                == 1;
            let stored = sqlx::query(
                "SELECT request_hash FROM ingest_idempotency \
                 WHERE tenant_id = ?1 AND inbox_id = ?2 AND key_hash = ?3",
            )
            .bind(tenant.0)
            .bind(inbox)
            .bind(key_hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            (ins, stored)
        }
    };
    Ok(match (inserted, stored) {
        (true, _) => Claim::Fresh,
        (false, Some(h)) if h == request_hash => Claim::Same,
        _ => Claim::Conflict,
    })
}

/// The inbox an inbound address belongs to, from the global directory (`address` is stored
/// lower case).
pub async fn resolve_address(
    directory: &Db,
    address: &str,
) -> Result<Option<(TenantId, Uuid)>, StoreError> {
    let row = match directory {
        Db::Postgres(p) => {
            sqlx::query("SELECT tenant_id, inbox_id FROM inbox_addresses WHERE address = $1")
                .bind(address)
                .fetch_optional(p)
                .await
                .map_err(db_error)?
                .map(|r| pair(&r))
                .transpose()?
        }
        Db::Sqlite(s) => {
            sqlx::query("SELECT tenant_id, inbox_id FROM inbox_addresses WHERE address = ?1")
                .bind(address)
                .fetch_optional(&s.reader)
                .await
                .map_err(db_error)?
                .map(|r| pair(&r))
                .transpose()?
        }
    };
    Ok(row.map(|(t, i)| (TenantId(t), i)))
}

/// Whether `inbox` is one of `tenant`'s (every inbox has at least one address).
pub async fn inbox_exists(
    directory: &Db,
    tenant: TenantId,
    inbox: Uuid,
) -> Result<bool, StoreError> {
    let row = match directory {
        Db::Postgres(p) => sqlx::query(
            "SELECT 1 FROM inbox_addresses WHERE tenant_id = $1 AND inbox_id = $2 LIMIT 1",
        )
        .bind(tenant.0)
        .bind(inbox)
        .fetch_optional(p)
        .await
        .map_err(db_error)?
        .is_some(),
        Db::Sqlite(s) => sqlx::query(
            "SELECT 1 FROM inbox_addresses WHERE tenant_id = ?1 AND inbox_id = ?2 LIMIT 1",
        )
        .bind(tenant.0)
        .bind(inbox)
        .fetch_optional(&s.reader)
        .await
        .map_err(db_error)?
        .is_some(),
    };
    Ok(row)
}
