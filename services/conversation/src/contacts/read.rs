//! The contact read model (`contacts`, `contact_addresses`, `contact_conversations`), on either
//! backend with one SQL text.
//!
//! Writes are idempotent and replace a row only with a newer version, so the API (right after
//! its append) and the consumer (catching up, replaying) can both apply the same state. The
//! profile is sealed under the contact's own key; addresses and the organisation are kept only
//! as blind indexes.

use super::codec::{contact_key, profile, profile_v1};
use postvak_core::contact::{Contact, ContactStatus, Profile, organisation_key};
use postvak_platform::crypto::{CryptoError, Keyring};
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{StoreError, TenantId, from_micros};
use postvak_proto::events::contact::ContactProfileV1;
use postvak_proto::rest::contact as dto;
use sqlx::Row;
use std::collections::BTreeSet;
use uuid::Uuid;

/// Blind-index purposes.
pub(crate) const ADDRESS_PURPOSE: &str = postvak_proto::events::contact::ADDRESS_INDEX_PURPOSE;
pub(crate) const ORGANISATION_PURPOSE: &str = "contact.organisation";

/// The stored index of a normalised address.
pub(crate) async fn address_index(
    keyring: &Keyring,
    tenant: TenantId,
    normalised: &str,
) -> Result<Vec<u8>, StoreError> {
    Ok(keyring
        .blind_index(tenant, ADDRESS_PURPOSE, normalised.as_bytes())
        .await?
        .to_vec())
}

pub(crate) async fn organisation_index(
    keyring: &Keyring,
    tenant: TenantId,
    organisation: &str,
) -> Result<Vec<u8>, StoreError> {
    Ok(keyring
        .blind_index(
            tenant,
            ORGANISATION_PURPOSE,
            organisation_key(organisation).as_bytes(),
        )
        .await?
        .to_vec())
}

fn aad(tenant: TenantId, id: Uuid) -> Vec<u8> {
    let mut a = b"postvak.contact.profile".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(id.as_bytes());
    a
}

fn status_str(s: ContactStatus) -> &'static str {
    match s {
        ContactStatus::New | ContactStatus::Active => "active",
        ContactStatus::Merged { .. } => "merged",
        ContactStatus::Erased => "erased",
    }
}

/// A contact's state, sealed and indexed, ready to write.
#[derive(Debug)]
pub(crate) struct Prepared {
    id: Uuid,
    version: i64,
    status: &'static str,
    merged_into: Option<Uuid>,
    vip: bool,
    organisation: Option<Vec<u8>>,
    profile: Option<(Vec<u8>, Uuid)>,
    addresses: BTreeSet<Vec<u8>>,
    conversations: Vec<(Uuid, Uuid)>,
    created_us: i64,
    updated_us: i64,
}

/// Seals and indexes `state` (outside any transaction: a first seal may create the key).
pub(crate) async fn prepare(
    keyring: &Keyring,
    tenant: TenantId,
    id: Uuid,
    state: &Contact,
) -> Result<Prepared, StoreError> {
    let mut prepared = Prepared {
        id,
        version: i64::try_from(state.version).unwrap_or(i64::MAX),
        status: status_str(state.status),
        merged_into: match state.status {
            ContactStatus::Merged { into } => Some(into),
            _ => None,
        },
        vip: false,
        organisation: None,
        profile: None,
        addresses: BTreeSet::new(),
        conversations: state.conversations.iter().map(|(c, i)| (*c, *i)).collect(),
        created_us: state.created_us,
        updated_us: state.updated_us,
    };
    if state.status == ContactStatus::Erased {
        return Ok(prepared);
    }
    if let Some(p) = &state.profile {
        let json = serde_json::to_vec(&profile_v1(p))
            .map_err(|e| StoreError::Serialization(e.to_string()))?;
        let (key, sealed) = match keyring
            .seal(tenant, &contact_key(id), &json, &aad(tenant, id))
            .await
        {
            Ok(k) => k,
            // Replaying an older state of a contact erased since: nothing to keep.
            Err(CryptoError::KeyDestroyed { .. }) => return Ok(prepared),
            Err(e) => return Err(e.into()),
        };
        prepared.profile = Some((sealed, key));
        prepared.vip = p.vip;
        if let Some(o) = &p.organisation {
            prepared.organisation = Some(organisation_index(keyring, tenant, o).await?);
        }
        if state.is_active() {
            for a in &p.addresses {
                prepared
                    .addresses
                    .insert(address_index(keyring, tenant, a).await?);
            }
        }
    }
    Ok(prepared)
}

/// Writes a prepared state unless the row is already at its version or newer.
/// The version of a contact's row, if it has one.
pub(crate) async fn version(
    tx: &mut DbTx,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<i64>, StoreError> {
    on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT version FROM contacts WHERE tenant_id = $1 AND contact_id = $2"
    )
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(c)
    .await)
    .map_err(db_error)
}

pub(crate) async fn write(tx: &mut DbTx, tenant: TenantId, p: &Prepared) -> Result<(), StoreError> {
    let t = tenant.0;
    if version(tx, tenant, p.id)
        .await?
        .is_some_and(|v| v >= p.version)
    {
        return Ok(());
    }
    let (sealed, key) = match &p.profile {
        Some((s, k)) => (Some(s.clone()), Some(*k)),
        None => (None, None),
    };
    let count = i64::try_from(p.conversations.len()).unwrap_or(i64::MAX);
    let written = on_tx!(tx, |c| sqlx::query(
        "INSERT INTO contacts (tenant_id, contact_id, status, merged_into, vip, organisation_index, \
           profile, profile_key, conversation_count, created_us, updated_us, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (tenant_id, contact_id) DO UPDATE SET status = excluded.status, \
           merged_into = excluded.merged_into, vip = excluded.vip, \
           organisation_index = excluded.organisation_index, profile = excluded.profile, \
           profile_key = excluded.profile_key, conversation_count = excluded.conversation_count, \
           created_us = excluded.created_us, updated_us = excluded.updated_us, version = excluded.version \
         WHERE contacts.version < excluded.version"
    )
    .bind(t)
    .bind(p.id)
    .bind(p.status)
    .bind(p.merged_into)
    .bind(p.vip)
    .bind(p.organisation.as_deref())
    .bind(sealed.as_deref())
    .bind(key)
    .bind(if p.status == "merged" { 0 } else { count })
    .bind(p.created_us)
    .bind(p.updated_us)
    .bind(p.version)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    if written == 0 {
        // A concurrent writer got a newer version in first.
        return Ok(());
    }

    let held: Vec<Vec<u8>> = on_tx!(tx, |c| sqlx::query(
        "SELECT address_index FROM contact_addresses WHERE tenant_id = $1 AND contact_id = $2"
    )
    .bind(t)
    .bind(p.id)
    .fetch_all(c)
    .await
    .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect()))
    .map_err(db_error)?;
    for gone in held.iter().filter(|h| !p.addresses.contains(*h)) {
        on_tx!(tx, |c| sqlx::query(
            "DELETE FROM contact_addresses WHERE tenant_id = $1 AND address_index = $2 AND contact_id = $3"
        )
        .bind(t)
        .bind(gone.as_slice())
        .bind(p.id)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
    }
    for a in &p.addresses {
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO contact_addresses (tenant_id, address_index, contact_id) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, address_index) DO UPDATE SET contact_id = excluded.contact_id"
        )
        .bind(t)
        .bind(a.as_slice())
        .bind(p.id)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
    }

    if p.status == "merged" {
        // The links moved to the survivor with its absorb.
        on_tx!(tx, |c| sqlx::query(
            "DELETE FROM contact_conversations WHERE tenant_id = $1 AND contact_id = $2"
        )
        .bind(t)
        .bind(p.id)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
    } else {
        for (conversation, inbox) in &p.conversations {
            on_tx!(tx, |c| sqlx::query(
                "INSERT INTO contact_conversations (tenant_id, contact_id, conversation_id, inbox_id, linked_us) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, contact_id, conversation_id) DO NOTHING"
            )
            .bind(t)
            .bind(p.id)
            .bind(*conversation)
            .bind(*inbox)
            .bind(p.updated_us)
            .execute(c)
            .await
            .map(|_| ()))
            .map_err(db_error)?;
        }
    }
    Ok(())
}

/// A row of `contacts`.
#[derive(Debug, Clone)]
pub(crate) struct ContactRow {
    pub id: Uuid,
    pub status: String,
    pub merged_into: Option<Uuid>,
    pub vip: bool,
    pub profile: Option<Vec<u8>>,
    pub profile_key: Option<Uuid>,
    pub conversation_count: i64,
    pub created_us: i64,
    pub updated_us: i64,
    pub version: i64,
}

const COLUMNS: &str = "contact_id, status, merged_into, vip, profile, profile_key, \
    conversation_count, created_us, updated_us, version";

fn row_of<R: Row>(r: &R) -> Result<ContactRow, sqlx::Error>
where
    for<'a> Uuid: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Uuid>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok(ContactRow {
        id: r.try_get(0)?,
        status: r.try_get(1)?,
        merged_into: r.try_get(2)?,
        vip: r.try_get(3)?,
        profile: r.try_get(4)?,
        profile_key: r.try_get(5)?,
        conversation_count: r.try_get(6)?,
        created_us: r.try_get(7)?,
        updated_us: r.try_get(8)?,
        version: r.try_get(9)?,
    })
}

pub(crate) async fn get(
    tx: &mut DbTx,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<ContactRow>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM contacts WHERE tenant_id = $1 AND contact_id = $2"
    ));
    on_tx!(tx, |c| sqlx::query(sql)
        .bind(tenant.0)
        .bind(id)
        .fetch_optional(c)
        .await
        .and_then(|r| r.as_ref().map(row_of).transpose()))
    .map_err(db_error)
}

/// Filters of a contact list.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub vip: Option<bool>,
    pub organisation: Option<Vec<u8>>,
    /// Only this contact (an address search already resolved).
    pub only: Option<Uuid>,
}

/// Active contacts after `after` (by id, i.e. creation order), at most `limit`.
pub(crate) async fn list(
    tx: &mut DbTx,
    tenant: TenantId,
    f: &Filter,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ContactRow>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM contacts WHERE tenant_id = $1 AND status = 'active' \
         AND ($2 IS NULL OR vip = $2) AND ($3 IS NULL OR organisation_index = $3) \
         AND ($4 IS NULL OR contact_id = $4) AND ($5 IS NULL OR contact_id > $5) \
         ORDER BY contact_id LIMIT $6"
    ));
    on_tx!(tx, |c| sqlx::query(sql)
        .bind(tenant.0)
        .bind(f.vip)
        .bind(f.organisation.as_deref())
        .bind(f.only)
        .bind(after)
        .bind(limit)
        .fetch_all(c)
        .await
        .and_then(|rows| rows.iter().map(row_of).collect()))
    .map_err(db_error)
}

/// The contact holding an address index.
pub(crate) async fn by_address(
    tx: &mut DbTx,
    tenant: TenantId,
    index: &[u8],
) -> Result<Option<Uuid>, StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "SELECT contact_id FROM contact_addresses WHERE tenant_id = $1 AND address_index = $2"
    )
    .bind(tenant.0)
    .bind(index)
    .fetch_optional(c)
    .await
    .and_then(|r| r.map(|r| r.try_get(0)).transpose()))
    .map_err(db_error)
}

/// Reserves an address index for `contact` unless someone holds it; returns the holder.
pub(crate) async fn reserve(
    tx: &mut DbTx,
    tenant: TenantId,
    index: &[u8],
    contact: Uuid,
) -> Result<Uuid, StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO contact_addresses (tenant_id, address_index, contact_id) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id, address_index) DO NOTHING"
    )
    .bind(tenant.0)
    .bind(index)
    .bind(contact)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    by_address(tx, tenant, index)
        .await?
        .ok_or_else(|| StoreError::Database("address reservation vanished".into()))
}

/// Releases reservations `contact` took but does not hold in its profile (a failed create).
pub(crate) async fn release(
    tx: &mut DbTx,
    tenant: TenantId,
    index: &[u8],
    contact: Uuid,
) -> Result<(), StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "DELETE FROM contact_addresses WHERE tenant_id = $1 AND address_index = $2 AND contact_id = $3"
    )
    .bind(tenant.0)
    .bind(index)
    .bind(contact)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)
}

/// The conversations linked to a contact: `(conversation, inbox)`.
pub(crate) async fn links(
    tx: &mut DbTx,
    tenant: TenantId,
    contact: Uuid,
) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "SELECT conversation_id, inbox_id FROM contact_conversations \
         WHERE tenant_id = $1 AND contact_id = $2 ORDER BY linked_us, conversation_id"
    )
    .bind(tenant.0)
    .bind(contact)
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()))
    .map_err(db_error)
}

/// The profile of a row; `None` once erased (no ciphertext, or its key destroyed).
pub(crate) async fn open_profile(
    keyring: &Keyring,
    tenant: TenantId,
    r: &ContactRow,
) -> Result<Option<Profile>, StoreError> {
    let (Some(sealed), Some(key)) = (&r.profile, r.profile_key) else {
        return Ok(None);
    };
    match keyring.open(tenant, key, sealed, &aad(tenant, r.id)).await {
        Ok(plain) => {
            let p: ContactProfileV1 = serde_json::from_slice(&plain)
                .map_err(|e| StoreError::Serialization(e.to_string()))?;
            Ok(Some(profile(&p)))
        }
        Err(CryptoError::KeyDestroyed { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The API's view of a row.
pub(crate) async fn to_dto(
    keyring: &Keyring,
    tenant: TenantId,
    r: &ContactRow,
) -> Result<dto::Contact, StoreError> {
    let profile = if r.status == "erased" {
        None
    } else {
        open_profile(keyring, tenant, r).await?
    };
    let erased = r.status == "erased" || profile.is_none();
    let p = profile.unwrap_or_default();
    Ok(dto::Contact {
        id: r.id,
        status: if erased { "erased" } else { r.status.as_str() }.to_owned(),
        name: p.name,
        addresses: p.addresses,
        organisation: p.organisation,
        vip: !erased && (p.vip || r.vip),
        notes: p.notes,
        conversation_count: u64::try_from(r.conversation_count).unwrap_or(0),
        version: u64::try_from(r.version).unwrap_or(0),
        created_at: from_micros(r.created_us),
        updated_at: from_micros(r.updated_us),
    })
}
