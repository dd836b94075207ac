//! The directory's read models, on either backend. Every write is an idempotent upsert so that
//! re-applying an event (retry, replay) changes nothing.

use postvak_core::directory::DirectoryEvent;
use postvak_platform::db::{Db, db_error};
use postvak_platform::store::{StoreError, TenantId};
use postvak_proto::events::directory::ApiKeyIssuedV1;
use postvak_proto::rest::Inbox;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ServiceError;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(crate) async fn apply(
    cell_db: &Db,
    directory: &Db,
    tenant: TenantId,
    event: &DirectoryEvent,
) -> Result<(), StoreError> {
    match event {
        DirectoryEvent::TenantCreated { name, cell, .. } => match directory {
            Db::Postgres(p) => sqlx::query(
                "INSERT INTO tenants (tenant_id, name, cell, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant_id) DO UPDATE SET name = EXCLUDED.name, cell = EXCLUDED.cell",
            )
            .bind(tenant.0)
            .bind(name)
            .bind(cell)
            .bind(now())
            .execute(p)
            .await
            .map(|_| ()),
            Db::Sqlite(s) => sqlx::query(
                "INSERT INTO tenants (tenant_id, name, cell, created_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (tenant_id) DO UPDATE SET name = excluded.name, cell = excluded.cell",
            )
            .bind(tenant.0)
            .bind(name)
            .bind(cell)
            .bind(now().unix_timestamp())
            .execute(&s.writer)
            .await
            .map(|_| ()),
        }
        .map_err(db_error)?,
        DirectoryEvent::InboxCreated {
            inbox_id,
            name,
            addresses,
        } => {
            match cell_db {
                Db::Postgres(p) => sqlx::query(
                    "INSERT INTO inboxes (tenant_id, inbox_id, name, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (tenant_id, inbox_id) DO UPDATE SET name = EXCLUDED.name",
                )
                .bind(tenant.0)
                .bind(inbox_id)
                .bind(name)
                .bind(now())
                .execute(p)
                .await
                .map(|_| ()),
                Db::Sqlite(s) => sqlx::query(
                    "INSERT INTO inboxes (tenant_id, inbox_id, name, created_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (tenant_id, inbox_id) DO UPDATE SET name = excluded.name",
                )
                .bind(tenant.0)
                .bind(inbox_id)
                .bind(name)
                .bind(now().unix_timestamp())
                .execute(&s.writer)
                .await
                .map(|_| ()),
            }
            .map_err(db_error)?;
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

/// Claims addresses for an inbox; an address held by another inbox is `AddressTaken`.
/// Re-claiming one's own addresses is a no-op.
pub(crate) async fn reserve_addresses(
    directory: &Db,
    tenant: TenantId,
    inbox_id: Uuid,
    addresses: &[String],
) -> Result<(), ServiceError> {
    for a in addresses {
        let inserted = match directory {
            Db::Postgres(p) => sqlx::query(
                "INSERT INTO inbox_addresses (address, tenant_id, inbox_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (address) DO NOTHING",
            )
            .bind(a)
            .bind(tenant.0)
            .bind(inbox_id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
            Db::Sqlite(s) => sqlx::query(
                "INSERT INTO inbox_addresses (address, tenant_id, inbox_id) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (address) DO NOTHING",
            )
            .bind(a)
            .bind(tenant.0)
            .bind(inbox_id)
            .execute(&s.writer)
            .await
            .map(|r| r.rows_affected()),
        }
        .map_err(db_error)?;
        if inserted == 0 {
            let owner = address_owner(directory, a).await?;
            if owner != Some((tenant, inbox_id)) {
                release_addresses(directory, tenant, inbox_id).await?;
                return Err(ServiceError::AddressTaken(a.clone()));
            }
        }
    }
    Ok(())
}

pub(crate) async fn release_addresses(
    directory: &Db,
    tenant: TenantId,
    inbox_id: Uuid,
) -> Result<(), StoreError> {
    match directory {
        Db::Postgres(p) => {
            sqlx::query("DELETE FROM inbox_addresses WHERE tenant_id = $1 AND inbox_id = $2")
                .bind(tenant.0)
                .bind(inbox_id)
                .execute(p)
                .await
                .map(|_| ())
        }
        Db::Sqlite(s) => {
            sqlx::query("DELETE FROM inbox_addresses WHERE tenant_id = ?1 AND inbox_id = ?2")
                .bind(tenant.0)
                .bind(inbox_id)
                .execute(&s.writer)
                .await
                .map(|_| ())
        }
    }
    .map_err(db_error)
}

async fn address_owner(directory: &Db, address: &str) -> Result<Option<(TenantId, Uuid)>, StoreError> {
    let row = match directory {
        Db::Postgres(p) => {
            sqlx::query("SELECT tenant_id, inbox_id FROM inbox_addresses WHERE address = $1")
                .bind(address)
                .fetch_optional(p)
                .await
        }
        .map(|r| r.map(|r| (r.try_get::<Uuid, _>(0), r.try_get::<Uuid, _>(1)))),
        Db::Sqlite(s) => {
            sqlx::query("SELECT tenant_id, inbox_id FROM inbox_addresses WHERE address = ?1")
                .bind(address)
                .fetch_optional(&s.reader)
                .await
        }
        .map(|r| r.map(|r| (r.try_get::<Uuid, _>(0), r.try_get::<Uuid, _>(1)))),
    }
    .map_err(db_error)?;
    match row {
        Some((Ok(t), Ok(i))) => Ok(Some((TenantId(t), i))),
        Some((Err(e), _)) | Some((_, Err(e))) => Err(db_error(e)),
        None => Ok(None),
    }
}

async fn addresses_of(directory: &Db, tenant: TenantId, inbox_id: Uuid) -> Result<Vec<String>, StoreError> {
    let rows = match directory {
        Db::Postgres(p) => sqlx::query(
            "SELECT address FROM inbox_addresses WHERE tenant_id = $1 AND inbox_id = $2 ORDER BY address",
        )
        .bind(tenant.0)
        .bind(inbox_id)
        .fetch_all(p)
        .await
        .and_then(|rows| rows.iter().map(|r| r.try_get::<String, _>(0)).collect()),
        Db::Sqlite(s) => sqlx::query(
            "SELECT address FROM inbox_addresses WHERE tenant_id = ?1 AND inbox_id = ?2 ORDER BY address",
        )
        .bind(tenant.0)
        .bind(inbox_id)
        .fetch_all(&s.reader)
        .await
        .and_then(|rows| rows.iter().map(|r| r.try_get::<String, _>(0)).collect()),
    };
    rows.map_err(db_error)
}

type InboxRow = (Uuid, String, OffsetDateTime);

pub(crate) async fn list_inboxes(
    cell_db: &Db,
    directory: &Db,
    tenant: TenantId,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Inbox>, StoreError> {
    let after = after.unwrap_or(Uuid::nil());
    let limit = i64::from(limit.clamp(1, 200));
    let rows: Vec<InboxRow> = match cell_db {
        Db::Postgres(p) => sqlx::query(
            "SELECT inbox_id, name, created_at FROM inboxes \
             WHERE tenant_id = $1 AND inbox_id > $2 ORDER BY inbox_id LIMIT $3",
        )
        .bind(tenant.0)
        .bind(after)
        .bind(limit)
        .fetch_all(p)
        .await
        .and_then(|rows| {
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect()
        }),
        Db::Sqlite(s) => sqlx::query(
            "SELECT inbox_id, name, created_at FROM inboxes \
             WHERE tenant_id = ?1 AND inbox_id > ?2 ORDER BY inbox_id LIMIT ?3",
        )
        .bind(tenant.0)
        .bind(after)
        .bind(limit)
        .fetch_all(&s.reader)
        .await
        .and_then(|rows| {
            rows.iter()
                .map(|r| {
                    let secs: i64 = r.try_get(2)?;
                    Ok((
                        r.try_get(0)?,
                        r.try_get(1)?,
                        OffsetDateTime::from_unix_timestamp(secs)
                            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    ))
                })
                .collect()
        }),
    }
    .map_err(db_error)?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, name, created_at) in rows {
        out.push(Inbox {
            id,
            name,
            addresses: addresses_of(directory, tenant, id).await?,
            created_at,
        });
    }
    Ok(out)
}

pub(crate) async fn get_inbox(
    cell_db: &Db,
    directory: &Db,
    tenant: TenantId,
    inbox_id: Uuid,
) -> Result<Option<Inbox>, StoreError> {
    // Same query as a list page of one, starting just before the id.
    let before = Uuid::from_u128(inbox_id.as_u128().wrapping_sub(1));
    let page = list_inboxes(cell_db, directory, tenant, Some(before), 1).await?;
    Ok(page.into_iter().find(|i| i.id == inbox_id))
}

pub(crate) async fn tenant_name(directory: &Db, tenant: TenantId) -> Result<Option<String>, StoreError> {
    match directory {
        Db::Postgres(p) => sqlx::query("SELECT name FROM tenants WHERE tenant_id = $1")
            .bind(tenant.0)
            .fetch_optional(p)
            .await
            .and_then(|r| r.map(|r| r.try_get::<String, _>(0)).transpose()),
        Db::Sqlite(s) => sqlx::query("SELECT name FROM tenants WHERE tenant_id = ?1")
            .bind(tenant.0)
            .fetch_optional(&s.reader)
            .await
            .and_then(|r| r.map(|r| r.try_get::<String, _>(0)).transpose()),
    }
    .map_err(db_error)
}

pub(crate) async fn apply_api_key(
    directory: &Db,
    tenant: TenantId,
    p: &ApiKeyIssuedV1,
) -> Result<(), StoreError> {
    let hash = hex::decode(&p.secret_hash)
        .map_err(|e| StoreError::Serialization(format!("api key hash: {e}")))?;
    let scopes = p.scopes.join(" ");
    let expires = p
        .expires_at
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
    match directory {
        Db::Postgres(db) => sqlx::query(
            "INSERT INTO api_keys (key_id, tenant_id, name, prefix, secret_hash, scopes, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(p.key_id)
        .bind(tenant.0)
        .bind(&p.name)
        .bind(&p.prefix)
        .bind(hash)
        .bind(scopes)
        .bind(expires)
        .bind(now())
        .execute(db)
        .await
        .map(|_| ()),
        Db::Sqlite(s) => sqlx::query(
            "INSERT INTO api_keys (key_id, tenant_id, name, prefix, secret_hash, scopes, expires_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(p.key_id)
        .bind(tenant.0)
        .bind(&p.name)
        .bind(&p.prefix)
        .bind(hash)
        .bind(scopes)
        .bind(p.expires_at)
        .bind(now().unix_timestamp())
        .execute(&s.writer)
        .await
        .map(|_| ()),
    }
    .map_err(db_error)
}

#[derive(Debug)]
pub(crate) struct ApiKeyRow {
    pub tenant_id: TenantId,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked: bool,
    pub last_used_at: Option<OffsetDateTime>,
}

pub(crate) async fn find_api_key(directory: &Db, key_id: Uuid) -> Result<Option<ApiKeyRow>, StoreError> {
    fn split(s: String) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }
    let secs = |v: Option<i64>| v.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
    match directory {
        Db::Postgres(p) => sqlx::query(
            "SELECT tenant_id, secret_hash, scopes, expires_at, revoked_at IS NOT NULL, last_used_at \
             FROM api_keys WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(p)
        .await
        .and_then(|r| {
            r.map(|r| {
                Ok(ApiKeyRow {
                    tenant_id: TenantId(r.try_get(0)?),
                    secret_hash: r.try_get(1)?,
                    scopes: split(r.try_get(2)?),
                    expires_at: r.try_get(3)?,
                    revoked: r.try_get(4)?,
                    last_used_at: r.try_get(5)?,
                })
            })
            .transpose()
        }),
        Db::Sqlite(s) => sqlx::query(
            "SELECT tenant_id, secret_hash, scopes, expires_at, revoked_at IS NOT NULL, last_used_at \
             FROM api_keys WHERE key_id = ?1",
        )
        .bind(key_id)
        .fetch_optional(&s.reader)
        .await
        .and_then(|r| {
            r.map(|r| {
                Ok(ApiKeyRow {
                    tenant_id: TenantId(r.try_get(0)?),
                    secret_hash: r.try_get(1)?,
                    scopes: split(r.try_get(2)?),
                    expires_at: secs(r.try_get(3)?),
                    revoked: r.try_get(4)?,
                    last_used_at: secs(r.try_get(5)?),
                })
            })
            .transpose()
        }),
    }
    .map_err(db_error)
}

pub(crate) async fn touch_api_key(directory: &Db, key_id: Uuid, at: OffsetDateTime) -> Result<(), StoreError> {
    match directory {
        Db::Postgres(p) => sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE key_id = $1")
            .bind(key_id)
            .bind(at)
            .execute(p)
            .await
            .map(|_| ()),
        Db::Sqlite(s) => sqlx::query("UPDATE api_keys SET last_used_at = ?2 WHERE key_id = ?1")
            .bind(key_id)
            .bind(at.unix_timestamp())
            .execute(&s.writer)
            .await
            .map(|_| ()),
    }
    .map_err(db_error)
}
