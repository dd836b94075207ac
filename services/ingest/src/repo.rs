//! Ingest's tables on both backends. Every PostgreSQL statement runs in a transaction that sets
//! `postvak.tenant_id`, which row-level security checks (the second wall behind each query's
//! own `tenant_id` condition). Every write is idempotent: a retried delivery changes nothing.

use postvak_platform::db::{Db, DbTx, PgTx, db_error};
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

/// The transaction a delivery writes in (blobs, event, message row, thread index): on
/// PostgreSQL armed for row-level security in the same round trip as `BEGIN`; on SQLite it
/// takes the write lock at once (`BEGIN IMMEDIATE`), as the event store's own appends do.
pub async fn write_tx(db: &Db, tenant: TenantId) -> Result<DbTx, StoreError> {
    match db {
        Db::Postgres(p) => {
            // A UUID's text form is hex and hyphens: nothing to escape.
            let begin = format!(
                "BEGIN; SELECT set_config('postvak.tenant_id', '{}', true)",
                tenant.0
            );
            p.begin_with(sqlx::AssertSqlSafe(begin))
                .await
                .map(|tx| DbTx::Postgres(PgTx::bound(tx, tenant)))
                .map_err(db_error)
        }
        Db::Sqlite(s) => s
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map(DbTx::Sqlite)
            .map_err(db_error),
    }
}

/// The advisory-lock key of one thread key (a Message-ID's blind index in an inbox): the first
/// 8 bytes of SHA-256 over a label. A collision only makes two deliveries wait for each other.
pub fn thread_lock_key(tenant: TenantId, inbox: Uuid, mid_hash: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"postvak.ingest.thread\0");
    h.update(tenant.0.as_bytes());
    h.update(inbox.as_bytes());
    h.update(mid_hash.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// The advisory-lock key that deliveries hold shared and the blob sweeper exclusively: a
/// delivery that finds a blob already stored (and so writes nothing for it) cannot have that
/// blob deleted under it before its reference commits.
pub fn blob_gc_lock_key() -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(b"postvak.ingest.blob-gc");
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// A [`write_tx`] that, on PostgreSQL, also holds the blob sweeper's lock shared and a
/// transaction-scoped advisory lock on each of `thread_locks` (taken in the order given, which
/// must be sorted, so two transactions never wait for each other in a cycle) — all in the same
/// round trip as `BEGIN`. The statement after it sees every transaction that held one of those
/// locks as committed (READ COMMITTED takes a new snapshot per statement).
pub async fn write_tx_locked(
    db: &Db,
    tenant: TenantId,
    thread_locks: &[i64],
) -> Result<DbTx, StoreError> {
    match db {
        Db::Postgres(p) => {
            // Only UUIDs and integers are formatted in: nothing to escape.
            let mut begin = format!(
                "BEGIN; SELECT set_config('postvak.tenant_id', '{}', true); \
                 SELECT pg_advisory_xact_lock_shared({})",
                tenant.0,
                blob_gc_lock_key()
            );
            if !thread_locks.is_empty() {
                let list: Vec<String> = thread_locks.iter().map(i64::to_string).collect();
                begin.push_str(&format!(
                    "; SELECT count(pg_advisory_xact_lock(k)) FROM unnest('{{{}}}'::int8[]) AS k",
                    list.join(",")
                ));
            }
            p.begin_with(sqlx::AssertSqlSafe(begin))
                .await
                .map(|tx| DbTx::Postgres(PgTx::bound(tx, tenant)))
                .map_err(db_error)
        }
        Db::Sqlite(_) => write_tx(db, tenant).await,
    }
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

/// Stores blobs inside `tx` (from [`write_tx`]); a blob already stored (same id) is left as it
/// is. Rows are written in blob-id order, so two deliveries sharing blobs lock them in the same
/// order and never deadlock.
pub async fn put_blobs_tx(
    tx: &mut DbTx,
    tenant: TenantId,
    blobs: &[SealedBlob],
) -> Result<(), StoreError> {
    if blobs.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&SealedBlob> = blobs.iter().collect();
    sorted.sort_by_key(|b| b.blob_id);
    match tx {
        DbTx::Postgres(tx) => {
            let ids: Vec<Uuid> = sorted.iter().map(|b| b.blob_id).collect();
            let keys: Vec<Uuid> = sorted.iter().map(|b| b.key_id).collect();
            let sizes: Vec<i64> = sorted.iter().map(|b| b.size).collect();
            let sealed: Vec<&[u8]> = sorted.iter().map(|b| b.sealed.as_slice()).collect();
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
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        }
        DbTx::Sqlite(tx) => {
            // Multi-row statements: each statement is a round trip to SQLite's worker thread.
            // 64 rows × 6 parameters stays far below SQLite's limit on bound parameters.
            let now = now_secs();
            for chunk in sorted.chunks(64) {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO ingest_blobs (tenant_id, blob_id, key_id, size, sealed, created_at) ",
                );
                insert.push_values(chunk.iter(), |mut row, b| {
                    row.push_bind(tenant.0)
                        .push_bind(b.blob_id)
                        .push_bind(b.key_id)
                        .push_bind(b.size)
                        .push_bind(b.sealed.clone())
                        .push_bind(now);
                });
                insert.push(" ON CONFLICT (tenant_id, blob_id) DO NOTHING");
                insert.build().execute(&mut **tx).await.map_err(db_error)?;
            }
        }
    }
    Ok(())
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

/// The conversations the inbox's index knows for these blind indexes, read inside `tx`.
pub async fn lookup_thread_tx(
    tx: &mut DbTx,
    tenant: TenantId,
    inbox: Uuid,
    hashes: &[String],
) -> Result<HashMap<String, Uuid>, StoreError> {
    if hashes.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = match tx {
        // One primary-key probe per candidate, whatever the plan cache decides. The plain
        // `mid_hash = ANY($3)` let PostgreSQL's cached generic plan (chosen while the table was
        // empty) scan the whole inbox's index and filter: every lookup read every index row of
        // the inbox (measured: 1,077,457 rows fetched for 3,408 lookups over 1,472 mails, so
        // ingest slowed as an inbox grew).
        DbTx::Postgres(tx) => sqlx::query(
            "SELECT h.mid_hash, t.conversation_id FROM unnest($3::text[]) AS h(mid_hash) \
             CROSS JOIN LATERAL (SELECT conversation_id FROM ingest_thread_index \
               WHERE tenant_id = $1 AND inbox_id = $2 AND mid_hash = h.mid_hash LIMIT 1) AS t",
        )
        .bind(tenant.0)
        .bind(inbox)
        .bind(hashes)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?,
        DbTx::Sqlite(tx) => {
            let list = serde_json::to_string(hashes)
                .map_err(|e| StoreError::Serialization(e.to_string()))?;
            return sqlx::query(
                "SELECT mid_hash, conversation_id FROM ingest_thread_index \
                 WHERE tenant_id = ?1 AND inbox_id = ?2 AND mid_hash IN (SELECT value FROM json_each(?3))",
            )
            .bind(tenant.0)
            .bind(inbox)
            .bind(list)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?
            .iter()
            .map(pair)
            .collect();
        }
    };
    rows.iter().map(pair).collect()
}

/// The conversations the tenant's thread index knows for these `(inbox, blind index)` pairs,
/// read inside `tx`: one statement on PostgreSQL (a primary-key probe per pair).
pub async fn lookup_threads_tx(
    tx: &mut DbTx,
    tenant: TenantId,
    wanted: &[(Uuid, &str)],
) -> Result<HashMap<(Uuid, String), Uuid>, StoreError> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    match tx {
        DbTx::Postgres(pg) => {
            let inboxes: Vec<Uuid> = wanted.iter().map(|(i, _)| *i).collect();
            let hashes: Vec<&str> = wanted.iter().map(|(_, h)| *h).collect();
            let rows = sqlx::query(
                "SELECT q.inbox_id, q.mid_hash, t.conversation_id \
                 FROM unnest($2::uuid[], $3::text[]) AS q(inbox_id, mid_hash) \
                 CROSS JOIN LATERAL (SELECT conversation_id FROM ingest_thread_index \
                   WHERE tenant_id = $1 AND inbox_id = q.inbox_id AND mid_hash = q.mid_hash \
                   LIMIT 1) AS t",
            )
            .bind(tenant.0)
            .bind(&inboxes)
            .bind(&hashes)
            .fetch_all(&mut **pg)
            .await
            .map_err(db_error)?;
            for r in rows {
                let inbox: Uuid = r.try_get(0).map_err(db_error)?;
                let hash: String = r.try_get(1).map_err(db_error)?;
                let conversation: Uuid = r.try_get(2).map_err(db_error)?;
                out.insert((inbox, hash), conversation);
            }
        }
        DbTx::Sqlite(_) => {
            let mut inboxes: Vec<Uuid> = wanted.iter().map(|(i, _)| *i).collect();
            inboxes.dedup();
            for inbox in inboxes {
                let hashes: Vec<String> = wanted
                    .iter()
                    .filter(|(i, _)| *i == inbox)
                    .map(|(_, h)| (*h).to_owned())
                    .collect();
                for (h, c) in lookup_thread_tx(tx, tenant, inbox, &hashes).await? {
                    out.insert((inbox, h), c);
                }
            }
        }
    }
    Ok(out)
}

/// What one stored mail writes besides its event (see [`store_deliveries_tx`]).
#[derive(Debug)]
pub struct DeliveryRows<'a> {
    pub inbox_id: Uuid,
    pub message_id: Uuid,
    pub stream_id: &'a str,
    pub blobs: &'a [SealedBlob],
    /// Every blob the mail's event names.
    pub blob_refs: Vec<Uuid>,
    /// The blind indexes it claims in its inbox's thread index.
    pub hashes: &'a [String],
    pub conversation_id: Uuid,
}

/// Everything a batch of deliveries writes besides its events, inside `tx`: blobs, message
/// rows, blob references and thread index. One statement on PostgreSQL for the whole batch.
/// Rows go in key order (blobs by id, index rows by inbox and hash), so two transactions
/// sharing rows wait for each other instead of deadlocking; an index key two mails of the
/// batch claim goes to the earlier one, as if they had been written one by one.
pub async fn store_deliveries_tx(
    tx: &mut DbTx,
    tenant: TenantId,
    rows: &[DeliveryRows<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let DbTx::Postgres(pg) = tx else {
        for r in rows {
            put_blobs_tx(tx, tenant, r.blobs).await?;
            record_message_tx(
                tx,
                tenant,
                r.inbox_id,
                r.message_id,
                r.stream_id,
                r.hashes,
                r.conversation_id,
            )
            .await?;
            record_blob_refs_tx(tx, tenant, r.message_id, &r.blob_refs).await?;
        }
        return Ok(());
    };
    let mut blobs: Vec<&SealedBlob> = rows.iter().flat_map(|r| r.blobs.iter()).collect();
    blobs.sort_by_key(|b| b.blob_id);
    blobs.dedup_by_key(|b| b.blob_id);
    let blob_ids: Vec<Uuid> = blobs.iter().map(|b| b.blob_id).collect();
    let blob_keys: Vec<Uuid> = blobs.iter().map(|b| b.key_id).collect();
    let blob_sizes: Vec<i64> = blobs.iter().map(|b| b.size).collect();
    let blob_sealed: Vec<&[u8]> = blobs.iter().map(|b| b.sealed.as_slice()).collect();
    let mut refs: Vec<(Uuid, Uuid)> = rows
        .iter()
        .flat_map(|r| r.blob_refs.iter().map(|b| (*b, r.message_id)))
        .collect();
    refs.sort_unstable();
    refs.dedup();
    let (ref_blobs, ref_messages): (Vec<Uuid>, Vec<Uuid>) = refs.into_iter().unzip();
    let msg_ids: Vec<Uuid> = rows.iter().map(|r| r.message_id).collect();
    let msg_inboxes: Vec<Uuid> = rows.iter().map(|r| r.inbox_id).collect();
    let msg_streams: Vec<&str> = rows.iter().map(|r| r.stream_id).collect();
    // The first claim of a key wins: keep the earliest mail's, then sort for lock order.
    let mut index: Vec<(Uuid, &str, Uuid)> = Vec::new();
    let mut claimed: std::collections::HashSet<(Uuid, &str)> = std::collections::HashSet::new();
    for r in rows {
        for h in r.hashes {
            if claimed.insert((r.inbox_id, h.as_str())) {
                index.push((r.inbox_id, h.as_str(), r.conversation_id));
            }
        }
    }
    index.sort_unstable();
    let idx_inboxes: Vec<Uuid> = index.iter().map(|i| i.0).collect();
    let idx_hashes: Vec<&str> = index.iter().map(|i| i.1).collect();
    let idx_conversations: Vec<Uuid> = index.iter().map(|i| i.2).collect();
    sqlx::query(
        "WITH b AS (INSERT INTO ingest_blobs (tenant_id, blob_id, key_id, size, sealed) \
           SELECT $1, b.id, b.key, b.size, b.sealed \
           FROM unnest($2::uuid[], $3::uuid[], $4::int8[], $5::bytea[]) AS b(id, key, size, sealed) \
           ON CONFLICT (tenant_id, blob_id) DO NOTHING), \
         m AS (INSERT INTO ingest_messages (tenant_id, message_id, inbox_id, stream_id) \
           SELECT $1, m.id, m.inbox, m.stream FROM unnest($6::uuid[], $7::uuid[], $8::text[]) \
             AS m(id, inbox, stream) \
           ON CONFLICT (tenant_id, message_id) DO NOTHING), \
         r AS (INSERT INTO ingest_blob_refs (tenant_id, blob_id, message_id) \
           SELECT $1, r.blob, r.message FROM unnest($9::uuid[], $10::uuid[]) AS r(blob, message) \
           ON CONFLICT DO NOTHING) \
         INSERT INTO ingest_thread_index (tenant_id, inbox_id, mid_hash, conversation_id) \
         SELECT $1, i.inbox, i.hash, i.conversation \
         FROM unnest($11::uuid[], $12::text[], $13::uuid[]) AS i(inbox, hash, conversation) \
         ON CONFLICT (tenant_id, inbox_id, mid_hash) DO NOTHING",
    )
    .bind(tenant.0)
    .bind(&blob_ids)
    .bind(&blob_keys)
    .bind(&blob_sizes)
    .bind(&blob_sealed)
    .bind(&msg_ids)
    .bind(&msg_inboxes)
    .bind(&msg_streams)
    .bind(&ref_blobs)
    .bind(&ref_messages)
    .bind(&idx_inboxes)
    .bind(&idx_hashes)
    .bind(&idx_conversations)
    .execute(&mut **pg)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Records which blobs a stored message's event names (what the blob sweeper keeps), inside
/// `tx`; idempotent.
pub async fn record_blob_refs_tx(
    tx: &mut DbTx,
    tenant: TenantId,
    message_id: Uuid,
    blobs: &[Uuid],
) -> Result<(), StoreError> {
    let mut blobs = blobs.to_vec();
    blobs.sort_unstable();
    blobs.dedup();
    if blobs.is_empty() {
        return Ok(());
    }
    match tx {
        DbTx::Postgres(pg) => {
            sqlx::query(
                "INSERT INTO ingest_blob_refs (tenant_id, blob_id, message_id) \
                 SELECT $1, b, $2 FROM unnest($3::uuid[]) AS b ON CONFLICT DO NOTHING",
            )
            .bind(tenant.0)
            .bind(message_id)
            .bind(&blobs)
            .execute(&mut **pg)
            .await
            .map_err(db_error)?;
        }
        DbTx::Sqlite(sq) => {
            // One statement (a mail names a handful of blobs; 64 × 3 parameters at most).
            for chunk in blobs.chunks(64) {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO ingest_blob_refs (tenant_id, blob_id, message_id) ",
                );
                insert.push_values(chunk.iter(), |mut row, b| {
                    row.push_bind(tenant.0).push_bind(*b).push_bind(message_id);
                });
                insert.push(" ON CONFLICT DO NOTHING");
                insert.build().execute(&mut **sq).await.map_err(db_error)?;
            }
        }
    }
    Ok(())
}

/// Records a stored message in its own transaction (see [`record_message_tx`]).
pub async fn record_message(
    db: &Db,
    tenant: TenantId,
    inbox: Uuid,
    message_id: Uuid,
    stream_id: &str,
    hashes: &[String],
    conversation: Uuid,
) -> Result<(), StoreError> {
    let mut tx = write_tx(db, tenant).await?;
    record_message_tx(
        &mut tx,
        tenant,
        inbox,
        message_id,
        stream_id,
        hashes,
        conversation,
    )
    .await?;
    tx.commit().await
}

/// Records a stored message inside `tx`: its row in `ingest_messages` and the blind indexes of
/// the Message-IDs it names for its conversation (ids already claimed keep their conversation).
/// One statement on PostgreSQL; idempotent. Index rows go in hash order (no deadlock between
/// two deliveries naming the same ids).
pub async fn record_message_tx(
    tx: &mut DbTx,
    tenant: TenantId,
    inbox: Uuid,
    message_id: Uuid,
    stream_id: &str,
    hashes: &[String],
    conversation: Uuid,
) -> Result<(), StoreError> {
    let mut hashes: Vec<&str> = hashes.iter().map(String::as_str).collect();
    hashes.sort_unstable();
    hashes.dedup();
    match tx {
        DbTx::Postgres(tx) => {
            sqlx::query(
                "WITH m AS (INSERT INTO ingest_messages (tenant_id, message_id, inbox_id, stream_id) \
                   VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, message_id) DO NOTHING) \
                 INSERT INTO ingest_thread_index (tenant_id, inbox_id, mid_hash, conversation_id) \
                 SELECT $1, $3, h, $6 FROM unnest($5::text[]) AS h \
                 ON CONFLICT (tenant_id, inbox_id, mid_hash) DO NOTHING",
            )
            .bind(tenant.0)
            .bind(message_id)
            .bind(inbox)
            .bind(stream_id)
            .bind(&hashes)
            .bind(conversation)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        }
        DbTx::Sqlite(tx) => {
            sqlx::query(
                "INSERT INTO ingest_messages (tenant_id, message_id, inbox_id, stream_id) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant_id, message_id) DO NOTHING",
            )
            .bind(tenant.0)
            .bind(message_id)
            .bind(inbox)
            .bind(stream_id)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
            if !hashes.is_empty() {
                let list = serde_json::to_string(&hashes)
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
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
            }
        }
    }
    Ok(())
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

/// The stream id of one stored message of the tenant (`None`: ingest holds no such message).
pub async fn message_stream_of(
    db: &Db,
    tenant: TenantId,
    message_id: Uuid,
) -> Result<Option<String>, StoreError> {
    match db {
        Db::Postgres(p) => {
            let mut tx = pg_tx(p, tenant).await?;
            let r = sqlx::query_scalar(
                "SELECT stream_id FROM ingest_messages WHERE tenant_id = $1 AND message_id = $2",
            )
            .bind(tenant.0)
            .bind(message_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            Ok(r)
        }
        Db::Sqlite(s) => sqlx::query_scalar(
            "SELECT stream_id FROM ingest_messages WHERE tenant_id = ?1 AND message_id = ?2",
        )
        .bind(tenant.0)
        .bind(message_id)
        .fetch_optional(&s.reader)
        .await
        .map_err(db_error),
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

/// The tenants placed in a cell, from the global directory.
pub async fn tenants_of_cell(directory: &Db, cell: &str) -> Result<Vec<Uuid>, StoreError> {
    match directory {
        Db::Postgres(p) => {
            sqlx::query_scalar(
                "SELECT tenant_id FROM tenant_cells WHERE cell = $1 ORDER BY tenant_id",
            )
            .bind(cell)
            .fetch_all(p)
            .await
        }
        Db::Sqlite(s) => {
            sqlx::query_scalar(
                "SELECT tenant_id FROM tenant_cells WHERE cell = ?1 ORDER BY tenant_id",
            )
            .bind(cell)
            .fetch_all(&s.reader)
            .await
        }
    }
    .map_err(db_error)
}

/// Whether the tenant's blob references were recovered from the log (see [`crate::gc`]).
pub async fn blob_refs_backfilled(db: &Db, tenant: TenantId) -> Result<bool, StoreError> {
    match db {
        Db::Postgres(p) => {
            let mut tx = pg_tx(p, tenant).await?;
            let found = sqlx::query("SELECT 1 FROM ingest_blob_gc WHERE tenant_id = $1")
                .bind(tenant.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?
                .is_some();
            tx.commit().await.map_err(db_error)?;
            Ok(found)
        }
        Db::Sqlite(s) => Ok(
            sqlx::query("SELECT 1 FROM ingest_blob_gc WHERE tenant_id = ?1")
                .bind(tenant.0)
                .fetch_optional(&s.reader)
                .await
                .map_err(db_error)?
                .is_some(),
        ),
    }
}

pub async fn mark_blob_refs_backfilled(db: &Db, tenant: TenantId) -> Result<(), StoreError> {
    let mut tx = write_tx(db, tenant).await?;
    match &mut tx {
        DbTx::Postgres(pg) => {
            sqlx::query(
                "INSERT INTO ingest_blob_gc (tenant_id) VALUES ($1) ON CONFLICT (tenant_id) DO NOTHING",
            )
            .bind(tenant.0)
            .execute(&mut **pg)
            .await
            .map_err(db_error)?;
        }
        DbTx::Sqlite(sq) => {
            sqlx::query(
                "INSERT INTO ingest_blob_gc (tenant_id, backfilled_at) VALUES (?1, ?2) \
                 ON CONFLICT (tenant_id) DO NOTHING",
            )
            .bind(tenant.0)
            .bind(now_secs())
            .execute(&mut **sq)
            .await
            .map_err(db_error)?;
        }
    }
    tx.commit().await
}

/// Removes up to `limit` of the tenant's blobs that no message references and that were stored
/// more than `grace` ago; returns how many. On PostgreSQL under the blob sweeper's advisory lock
/// held exclusively (deliveries hold it shared: see [`blob_gc_lock_key`]).
pub async fn remove_unreferenced_blobs(
    db: &Db,
    tenant: TenantId,
    grace: std::time::Duration,
    limit: i64,
) -> Result<u64, StoreError> {
    let grace_secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX / 2);
    let mut tx = write_tx(db, tenant).await?;
    let removed = match &mut tx {
        DbTx::Postgres(pg) => {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(blob_gc_lock_key())
                .execute(&mut **pg)
                .await
                .map_err(db_error)?;
            let n = sqlx::query(
                "DELETE FROM ingest_blobs WHERE tenant_id = $1 AND blob_id IN ( \
                   SELECT b.blob_id FROM ingest_blobs b \
                   WHERE b.tenant_id = $1 AND b.created_at < now() - make_interval(secs => $2) \
                     AND NOT EXISTS (SELECT 1 FROM ingest_blob_refs r \
                       WHERE r.tenant_id = b.tenant_id AND r.blob_id = b.blob_id) \
                   ORDER BY b.created_at LIMIT $3)",
            )
            .bind(tenant.0)
            .bind(grace_secs as f64)
            .bind(limit)
            .execute(&mut **pg)
            .await
            .map_err(db_error)?
            .rows_affected();
            sqlx::query("UPDATE ingest_blob_gc SET last_sweep_at = now() WHERE tenant_id = $1")
                .bind(tenant.0)
                .execute(&mut **pg)
                .await
                .map_err(db_error)?;
            n
        }
        DbTx::Sqlite(sq) => {
            let now = now_secs();
            let n = sqlx::query(
                "DELETE FROM ingest_blobs WHERE rowid IN ( \
                   SELECT b.rowid FROM ingest_blobs b \
                   WHERE b.tenant_id = ?1 AND b.created_at < ?2 \
                     AND NOT EXISTS (SELECT 1 FROM ingest_blob_refs r \
                       WHERE r.tenant_id = b.tenant_id AND r.blob_id = b.blob_id) \
                   ORDER BY b.created_at LIMIT ?3)",
            )
            .bind(tenant.0)
            .bind(now.saturating_sub(grace_secs))
            .bind(limit)
            .execute(&mut **sq)
            .await
            .map_err(db_error)?
            .rows_affected();
            sqlx::query("UPDATE ingest_blob_gc SET last_sweep_at = ?2 WHERE tenant_id = ?1")
                .bind(tenant.0)
                .bind(now)
                .execute(&mut **sq)
                .await
                .map_err(db_error)?;
            n
        }
    };
    tx.commit().await?;
    Ok(removed)
}
