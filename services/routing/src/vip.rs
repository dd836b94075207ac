//! VIP contacts for the `vip_contact` rule condition (ADR 0020).
//!
//! Contacts belong to the conversation service; the VIP mark is set there
//! (`PATCH /v1/contacts/{id}`). Routing never reads that service's tables: its rules consumer
//! follows the `contact` stream type in the cell's commit order, together with the conversation
//! events that trigger rules, and keeps `routing_vip_addresses` — the blind indexes of the
//! addresses of active VIP contacts (`contact.address` purpose, the same index the contacts
//! use, so no address is stored) — and `routing_contacts`, the contact version last applied.
//!
//! - `contact.created` / `contact.updated` carry the whole profile: the contact's rows are
//!   replaced by its addresses if it is VIP, removed if not.
//! - `contact.merged` (on the duplicate) and `contact.erased` remove the contact's rows. The
//!   survivor of a merge gets the duplicate's addresses (and VIP if either was) with its own
//!   `contact.updated`.
//! - Events of an erased contact whose key is destroyed arrive shredded and are skipped; its
//!   `contact.erased` (tenant key) still removes the rows.
//! - A version older than the one applied is ignored, so a late redelivery never undoes a
//!   merge or an erasure.
//!
//! Because mail and contact changes go through one consumer in commit order, a mail accepted
//! after the VIP mark was committed is evaluated with it.

use postvak_core::contact::normalise_address;
use postvak_platform::cell::TenantContext;
use postvak_platform::crypto::Keyring;
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{EventData, RecordedEvent, StoreError, TenantId};
use postvak_proto::events::contact as kev;
use sqlx::Row;
use uuid::Uuid;

fn contact_of(stream_id: &str) -> Option<Uuid> {
    stream_id
        .strip_prefix("contact-")
        .and_then(|s| s.parse().ok())
}

/// The blind index of an address as the contacts store it; `None` when it is not an address.
pub(crate) async fn address_index(
    keyring: &Keyring,
    tenant: TenantId,
    address: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(normalised) = normalise_address(address) else {
        return Ok(None);
    };
    Ok(Some(
        keyring
            .blind_index(tenant, kev::ADDRESS_INDEX_PURPOSE, normalised.as_bytes())
            .await?
            .to_vec(),
    ))
}

/// Applies one `contact` event to the VIP table, in the consumer's transaction.
pub(crate) async fn follow(
    tx: &mut DbTx,
    keyring: &Keyring,
    e: &RecordedEvent,
) -> Result<(), StoreError> {
    let Some(contact) = contact_of(&e.stream_id) else {
        return Ok(());
    };
    if matches!(e.data, EventData::Shredded) {
        return Ok(());
    }
    // `None`: the event does not touch the VIP marks. `Some(addresses)`: the contact's VIP
    // addresses from now on (empty: none).
    let addresses: Option<Vec<String>> = match e.event_type.as_str() {
        kev::CONTACT_CREATED => {
            let p: kev::ContactCreatedV1 = e.payload()?;
            Some(if p.profile.vip {
                p.profile.addresses
            } else {
                Vec::new()
            })
        }
        kev::CONTACT_UPDATED => {
            let p: kev::ContactUpdatedV1 = e.payload()?;
            Some(if p.profile.vip {
                p.profile.addresses
            } else {
                Vec::new()
            })
        }
        kev::CONTACT_MERGED | kev::CONTACT_ERASED => Some(Vec::new()),
        _ => None,
    };
    let Some(addresses) = addresses else {
        return Ok(());
    };
    let t = e.tenant_id;
    let version = i64::try_from(e.stream_version).unwrap_or(i64::MAX);
    let applied: Option<i64> = on_tx!(tx, |c| sqlx::query(
        "SELECT version FROM routing_contacts WHERE tenant_id = $1 AND contact_id = $2"
    )
    .bind(t.0)
    .bind(contact)
    .fetch_optional(c)
    .await
    .and_then(|r| r.map(|r| r.try_get(0)).transpose()))
    .map_err(db_error)?;
    if applied.is_some_and(|v| v >= version) {
        return Ok(());
    }
    let mut indexes = Vec::with_capacity(addresses.len());
    for a in &addresses {
        if let Some(i) = address_index(keyring, t, a).await? {
            indexes.push(i);
        }
    }
    on_tx!(tx, |c| sqlx::query(
        "DELETE FROM routing_vip_addresses WHERE tenant_id = $1 AND contact_id = $2"
    )
    .bind(t.0)
    .bind(contact)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    for i in &indexes {
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO routing_vip_addresses (tenant_id, address_index, contact_id) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        )
        .bind(t.0)
        .bind(i.as_slice())
        .bind(contact)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
    }
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO routing_contacts (tenant_id, contact_id, version) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id, contact_id) DO UPDATE SET version = excluded.version"
    )
    .bind(t.0)
    .bind(contact)
    .bind(version)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    Ok(())
}

/// Whether `address` belongs to a contact marked VIP, as routing last heard.
pub async fn is_vip_contact(ctx: &TenantContext, address: &str) -> Result<bool, StoreError> {
    let t = ctx.tenant();
    let Some(index) = address_index(ctx.cell().store.keyring(), t, address).await? else {
        return Ok(false);
    };
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let found: Option<Uuid> = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT contact_id FROM routing_vip_addresses \
         WHERE tenant_id = $1 AND address_index = $2 LIMIT 1"
    )
    .bind(t.0)
    .bind(index.as_slice())
    .fetch_optional(c)
    .await
    .and_then(|r| r.map(|r| r.try_get(0)).transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(found.is_some())
}

/// Rebuilds one tenant's VIP table from its `contact` events; returns how many were applied.
pub async fn rebuild(ctx: &TenantContext) -> Result<u64, StoreError> {
    let keyring = ctx.cell().store.keyring();
    crate::rebuild_from_log(
        ctx,
        &["routing_vip_addresses", "routing_contacts"],
        |t| t == kev::STREAM_CONTACT,
        async |tx, event| follow(tx, keyring, event).await,
    )
    .await
}
