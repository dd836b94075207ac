//! The directory's read models, on either backend (one SQL text for both, see `on_tx!`).
//! Every write is an idempotent upsert so that re-applying an event (retry, replay) changes
//! nothing. Tenant tables are touched only inside `Db::tenant_tx`, which on PostgreSQL arms
//! row-level security for that tenant.

use postvak_core::directory::DirectoryEvent;
use postvak_platform::cell::Cell;
use postvak_platform::db::{AsConn, Conn, Db, DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{StoreError, TenantId};
use postvak_proto::events::directory::ApiKeyIssuedV1;
use postvak_proto::rest::Inbox;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ServiceError;

pub(crate) fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) fn from_secs(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A transaction on the global directory database (no tenant binding: its tables are looked
/// up before a tenant is known).
pub(crate) async fn global_tx(db: &Db, write: bool) -> Result<DbTx, StoreError> {
    match db {
        Db::Postgres(p) => p.begin().await.map(|t| DbTx::Postgres(t.into())),
        Db::Sqlite(s) => if write { &s.writer } else { &s.reader }
            .begin()
            .await
            .map(DbTx::Sqlite),
    }
    .map_err(db_error)
}

pub(crate) async fn apply(
    cell_db: &Db,
    directory: &Db,
    tenant: TenantId,
    event: &DirectoryEvent,
) -> Result<(), StoreError> {
    match event {
        DirectoryEvent::TenantCreated { name, cell, .. } => {
            let mut tx = global_tx(directory, true).await?;
            on_tx!(&mut tx, |c| sqlx::query(
                "INSERT INTO tenants (tenant_id, name, cell, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant_id) DO UPDATE SET name = excluded.name, cell = excluded.cell"
            )
            .bind(tenant.0)
            .bind(name)
            .bind(cell)
            .bind(now())
            .execute(c)
            .await
            .map(|_| ()))
            .map_err(db_error)?;
            tx.commit().await?;
        }
        DirectoryEvent::InboxCreated {
            inbox_id,
            name,
            addresses,
        } => {
            let mut tx = cell_db.tenant_tx(tenant, true).await?;
            on_tx!(&mut tx, |c| sqlx::query(
                "INSERT INTO inboxes (tenant_id, inbox_id, name, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant_id, inbox_id) DO UPDATE SET name = excluded.name"
            )
            .bind(tenant.0)
            .bind(inbox_id)
            .bind(name)
            .bind(now())
            .execute(c)
            .await
            .map(|_| ()))
            .map_err(db_error)?;
            tx.commit().await?;
            reserve_addresses(directory, tenant, *inbox_id, addresses)
                .await
                .map_err(|e| match e {
                    ServiceError::Store(s) => s,
                    other => StoreError::Database(other.to_string()),
                })?;
        }
    }
    Ok(())
}

/// Claims addresses for an inbox; an address held by another inbox is `AddressTaken` (and
/// what this call claimed is released). Re-claiming one's own addresses is a no-op.
pub(crate) async fn reserve_addresses(
    directory: &Db,
    tenant: TenantId,
    inbox_id: Uuid,
    addresses: &[String],
) -> Result<(), ServiceError> {
    let mut tx = global_tx(directory, true).await?;
    for a in addresses {
        let inserted = on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO inbox_addresses (address, tenant_id, inbox_id) VALUES ($1, $2, $3) \
             ON CONFLICT (address) DO NOTHING"
        )
        .bind(a)
        .bind(tenant.0)
        .bind(inbox_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        if inserted == 0 {
            let owner: Option<(Uuid, Uuid)> = on_tx!(&mut tx, |c| sqlx::query(
                "SELECT tenant_id, inbox_id FROM inbox_addresses WHERE address = $1"
            )
            .bind(a)
            .fetch_optional(c)
            .await
            .and_then(|r| r.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()))
            .map_err(db_error)?;
            if owner != Some((tenant.0, inbox_id)) {
                // Dropping the transaction rolls back what this call claimed.
                return Err(ServiceError::AddressTaken(a.clone()));
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn release_addresses(
    directory: &Db,
    tenant: TenantId,
    inbox_id: Uuid,
) -> Result<(), StoreError> {
    let mut tx = global_tx(directory, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM inbox_addresses WHERE tenant_id = $1 AND inbox_id = $2"
    )
    .bind(tenant.0)
    .bind(inbox_id)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

async fn addresses_of(
    directory: &Db,
    tenant: TenantId,
    inbox_ids: &[Uuid],
) -> Result<Vec<(Uuid, String)>, StoreError> {
    match directory {
        // One statement on its own (a read needs no transaction): one round trip.
        Db::Postgres(p) => sqlx::query_as(
            "SELECT inbox_id, address FROM inbox_addresses WHERE tenant_id = $1 AND inbox_id = ANY($2) \
             ORDER BY inbox_id, address",
        )
        .bind(tenant.0)
        .bind(inbox_ids)
        .fetch_all(p)
        .await
        .map_err(db_error),
        Db::Sqlite(_) => {
            let mut tx = global_tx(directory, false).await?;
            let mut out = Vec::new();
            for id in inbox_ids {
                let rows: Vec<String> = on_tx!(&mut tx, |c| sqlx::query(
                    "SELECT address FROM inbox_addresses WHERE tenant_id = $1 AND inbox_id = $2 ORDER BY address"
                )
                .bind(tenant.0)
                .bind(id)
                .fetch_all(c)
                .await
                .and_then(|rows| rows.iter().map(|r| r.try_get::<String, _>(0)).collect()))
                .map_err(db_error)?;
                out.extend(rows.into_iter().map(|a| (*id, a)));
            }
            tx.commit().await?;
            Ok(out)
        }
    }
}

/// inbox_id, name, created_at, signature, timezone, business_hours (JSON).
type InboxRow = (
    Uuid,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn inbox_row<R: Row>(r: &R) -> Result<InboxRow, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    Uuid: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok((
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get(5)?,
    ))
}

fn inbox_of(
    (id, name, created, signature, timezone, hours): InboxRow,
    addresses: Vec<String>,
) -> Inbox {
    Inbox {
        id,
        name,
        addresses,
        created_at: from_secs(created),
        signature,
        timezone,
        business_hours: hours.and_then(|h| serde_json::from_str(&h).ok()),
    }
}

/// Which inboxes to list.
#[derive(Debug, Clone)]
pub(crate) enum InboxFilter {
    All,
    /// Only these (the caller's readable inboxes).
    Only(Vec<Uuid>),
}

/// The statement start that reads an [`InboxRow`] of tenant `$1`.
macro_rules! inbox_select {
    () => {
        "SELECT inbox_id, name, created_at, signature, timezone, business_hours FROM inboxes \
         WHERE tenant_id = $1"
    };
}

pub(crate) async fn list_inboxes(
    cell_db: &Db,
    directory: &Db,
    tenant: TenantId,
    filter: &InboxFilter,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Inbox>, StoreError> {
    let after = after.unwrap_or(Uuid::nil());
    let limit = i64::from(limit.clamp(1, 201));
    let only = match filter {
        InboxFilter::All => None,
        InboxFilter::Only(ids) if ids.is_empty() => return Ok(Vec::new()),
        InboxFilter::Only(ids) => Some(ids.as_slice()),
    };
    let mut tx = cell_db.tenant_tx(tenant, false).await?;
    // The readable inboxes are filtered in the statement, so a page is filled from all of
    // them (filtering a page afterwards left it short, and a client stopped there).
    let rows: Vec<InboxRow> = match only {
        None => on_tx!(&mut tx, |c| sqlx::query(concat!(
            inbox_select!(),
            " AND inbox_id > $2 ORDER BY inbox_id LIMIT $3"
        ))
        .bind(tenant.0)
        .bind(after)
        .bind(limit)
        .fetch_all(c)
        .await
        .and_then(|rows| rows.iter().map(inbox_row).collect())),
        Some(ids) => match tx.conn() {
            Conn::Postgres(c) => sqlx::query(concat!(
                inbox_select!(),
                " AND inbox_id > $2 AND inbox_id = ANY($4) ORDER BY inbox_id LIMIT $3"
            ))
            .bind(tenant.0)
            .bind(after)
            .bind(limit)
            .bind(ids)
            .fetch_all(c)
            .await
            .and_then(|rows| rows.iter().map(inbox_row).collect()),
            Conn::Sqlite(c) => {
                // Only numbered placeholders go into the text, numbered in order of
                // appearance (SQLite's rule); the ids are bound.
                let sql = format!(
                    concat!(
                        inbox_select!(),
                        " AND inbox_id > $2 AND inbox_id IN ({}) ORDER BY inbox_id LIMIT ${}"
                    ),
                    postvak_platform::db::placeholders(3, ids.len()),
                    3 + ids.len()
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant.0)
                    .bind(after);
                for id in ids {
                    q = q.bind(*id);
                }
                q.bind(limit)
                    .fetch_all(c)
                    .await
                    .and_then(|rows| rows.iter().map(inbox_row).collect())
            }
        },
    }
    .map_err(db_error)?;
    tx.commit().await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let addresses = addresses_of(directory, tenant, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let id = row.0;
            inbox_of(
                row,
                addresses
                    .iter()
                    .filter(|(i, _)| *i == id)
                    .map(|(_, a)| a.clone())
                    .collect(),
            )
        })
        .collect())
}

/// One inbox by id: its row through the tenant's read connection, its addresses from the
/// global directory (a round trip each on PostgreSQL).
pub(crate) async fn get_inbox(
    cell: &Cell,
    directory: &Db,
    tenant: TenantId,
    inbox_id: Uuid,
) -> Result<Option<Inbox>, StoreError> {
    let mut tx = cell.read_tx(tenant).await?;
    let row: Option<InboxRow> = on_tx!(&mut tx, |c| sqlx::query(concat!(
        inbox_select!(),
        " AND inbox_id = $2"
    ))
    .bind(tenant.0)
    .bind(inbox_id)
    .fetch_optional(c)
    .await
    .and_then(|r| r.as_ref().map(inbox_row).transpose()))
    .map_err(db_error)?;
    tx.end_read();
    let Some(row) = row else {
        return Ok(None);
    };
    let addresses = addresses_of(directory, tenant, &[row.0]).await?;
    Ok(Some(inbox_of(
        row,
        addresses.into_iter().map(|(_, a)| a).collect(),
    )))
}

pub(crate) async fn tenant_name(
    directory: &Db,
    tenant: TenantId,
) -> Result<Option<String>, StoreError> {
    let mut tx = global_tx(directory, false).await?;
    let name = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT name FROM tenants WHERE tenant_id = $1"
    )
    .bind(tenant.0)
    .fetch_optional(c)
    .await
    .and_then(|r| r.map(|r| r.try_get::<String, _>(0)).transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(name)
}

pub(crate) async fn apply_api_key(
    directory: &Db,
    tenant: TenantId,
    p: &ApiKeyIssuedV1,
    inboxes: Option<&[Uuid]>,
) -> Result<(), StoreError> {
    let hash = hex::decode(&p.secret_hash)
        .map_err(|e| StoreError::Serialization(format!("api key hash: {e}")))?;
    let scopes = p.scopes.join(" ");
    let inboxes = inboxes.map(|ids| {
        ids.iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    });
    let mut tx = global_tx(directory, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO api_keys (key_id, tenant_id, name, prefix, secret_hash, scopes, expires_at, created_at, inboxes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (key_id) DO NOTHING"
    )
    .bind(p.key_id)
    .bind(tenant.0)
    .bind(&p.name)
    .bind(&p.prefix)
    .bind(&hash)
    .bind(&scopes)
    .bind(p.expires_at)
    .bind(now())
    .bind(&inboxes)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

pub(crate) async fn revoke_api_key(
    directory: &Db,
    tenant: TenantId,
    key_id: Uuid,
) -> Result<bool, StoreError> {
    let mut tx = global_tx(directory, true).await?;
    let n = on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND tenant_id = $3 AND revoked_at IS NULL"
    )
    .bind(now())
    .bind(key_id)
    .bind(tenant.0)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(n > 0)
}

#[derive(Debug, Clone)]
pub(crate) struct ApiKeyRow {
    pub key_id: Uuid,
    pub tenant_id: TenantId,
    pub name: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub inboxes: Option<Vec<Uuid>>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub created_at: i64,
}

const API_KEY_COLUMNS: &str = "key_id, tenant_id, name, prefix, secret_hash, scopes, inboxes, \
                               expires_at, revoked_at, last_used_at, created_at";

fn api_key_row<R: Row>(r: &R) -> Result<ApiKeyRow, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> usize: sqlx::ColumnIndex<R>,
    Uuid: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let split = |s: String| -> Vec<String> { s.split_whitespace().map(str::to_owned).collect() };
    let inboxes: Option<String> = r.try_get(6)?;
    Ok(ApiKeyRow {
        key_id: r.try_get(0)?,
        tenant_id: TenantId(r.try_get(1)?),
        name: r.try_get(2)?,
        prefix: r.try_get(3)?,
        secret_hash: r.try_get(4)?,
        scopes: split(r.try_get(5)?),
        inboxes: inboxes.map(|s| {
            s.split_whitespace()
                .filter_map(|id| Uuid::try_parse(id).ok())
                .collect()
        }),
        expires_at: r.try_get(7)?,
        revoked_at: r.try_get(8)?,
        last_used_at: r.try_get(9)?,
        created_at: r.try_get(10)?,
    })
}

pub(crate) async fn find_api_key(
    directory: &Db,
    key_id: Uuid,
) -> Result<Option<ApiKeyRow>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_id = $1"
    ));
    let mut tx = global_tx(directory, false).await?;
    let row = on_tx!(&mut tx, |c| sqlx::query(sql)
        .bind(key_id)
        .fetch_optional(c)
        .await
        .and_then(|r| r.as_ref().map(api_key_row).transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(row)
}

pub(crate) async fn list_api_keys(
    directory: &Db,
    tenant: TenantId,
) -> Result<Vec<ApiKeyRow>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY key_id"
    ));
    let mut tx = global_tx(directory, false).await?;
    let rows = on_tx!(&mut tx, |c| sqlx::query(sql)
        .bind(tenant.0)
        .fetch_all(c)
        .await
        .and_then(|rows| rows.iter().map(api_key_row).collect()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows)
}

pub(crate) async fn touch_api_key(directory: &Db, key_id: Uuid, at: i64) -> Result<(), StoreError> {
    let mut tx = global_tx(directory, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE api_keys SET last_used_at = $1 WHERE key_id = $2"
    )
    .bind(at)
    .bind(key_id)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

pub(crate) async fn apply_inbox_update(
    cell_db: &Db,
    tenant: TenantId,
    u: &postvak_proto::events::identity::InboxUpdatedV1,
) -> Result<(), StoreError> {
    let hours = u.business_hours.as_ref().map(|h| h.to_string());
    let mut tx = cell_db.tenant_tx(tenant, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE inboxes SET name = COALESCE($1, name), signature = COALESCE($2, signature), \
         timezone = COALESCE($3, timezone), business_hours = COALESCE($4, business_hours) \
         WHERE tenant_id = $5 AND inbox_id = $6"
    )
    .bind(&u.name)
    .bind(&u.signature)
    .bind(&u.timezone)
    .bind(&hours)
    .bind(tenant.0)
    .bind(u.inbox_id)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

pub(crate) async fn list_tenants(
    directory: &Db,
) -> Result<Vec<postvak_proto::rest::Tenant>, StoreError> {
    let mut tx = global_tx(directory, false).await?;
    let rows = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT tenant_id, name, cell FROM tenants ORDER BY tenant_id"
    )
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok(postvak_proto::rest::Tenant {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            cell: r.try_get(2)?
        }))
        .collect::<Result<Vec<_>, sqlx::Error>>()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows)
}
