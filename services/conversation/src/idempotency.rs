//! `Idempotency-Key` on POST: the first response is kept (sealed: it may echo a body) per
//! `(tenant, key)` and replayed for a retry; a retry while the first is still running is
//! refused, and a key reused for a different request is refused.

use postvak_platform::cell::TenantContext;
use postvak_platform::db::db_error;
use postvak_platform::on_tx;
use postvak_platform::store::{KeyScope, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// What a request left to replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub body: serde_json::Value,
}

#[derive(Debug)]
pub(crate) enum Claim {
    /// First use: run the request, then [`complete`] or [`abandon`].
    Fresh,
    Replay(Stored),
    InFlight,
    /// The key was used for another request.
    Mismatch,
}

fn aad(ctx: &TenantContext, key: &str) -> Vec<u8> {
    let mut a = b"postvak.conversation.idempotency".to_vec();
    a.extend_from_slice(ctx.tenant().0.as_bytes());
    a.extend_from_slice(key.as_bytes());
    a
}

/// Fingerprint, sealed response, its key.
type KeptRow = (Vec<u8>, Option<Vec<u8>>, Option<uuid::Uuid>);

pub(crate) async fn begin(
    ctx: &TenantContext,
    key: &str,
    fingerprint: &[u8],
) -> Result<Claim, StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    let inserted = on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO conversation_idempotency (tenant_id, idem_key, fingerprint, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, idem_key) DO NOTHING"
    )
    .bind(t.0)
    .bind(key)
    .bind(fingerprint)
    .bind(crate::now_us() / 1_000_000)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    if inserted > 0 {
        tx.commit().await?;
        return Ok(Claim::Fresh);
    }
    let row: Option<KeptRow> = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT fingerprint, response, response_key FROM conversation_idempotency WHERE tenant_id = $1 AND idem_key = $2"
    )
    .bind(t.0)
    .bind(key)
    .fetch_optional(c)
    .await
    .and_then(|r| r.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    let Some((fp, response, response_key)) = row else {
        // Abandoned in between: the caller may retry.
        return Ok(Claim::InFlight);
    };
    if fp != fingerprint {
        return Ok(Claim::Mismatch);
    }
    match (response, response_key) {
        (Some(sealed), Some(k)) => {
            let plain = ctx
                .cell()
                .store
                .keyring()
                .open(t, k, &sealed, &aad(ctx, key))
                .await?;
            let stored: Stored = serde_json::from_slice(&plain)
                .map_err(|e| StoreError::Serialization(e.to_string()))?;
            Ok(Claim::Replay(stored))
        }
        _ => Ok(Claim::InFlight),
    }
}

pub(crate) async fn complete(
    ctx: &TenantContext,
    key: &str,
    stored: &Stored,
) -> Result<(), StoreError> {
    let t = ctx.tenant();
    let json = serde_json::to_vec(stored).map_err(|e| StoreError::Serialization(e.to_string()))?;
    let (k, sealed) = ctx
        .cell()
        .store
        .keyring()
        .seal(t, &KeyScope::Tenant, &json, &aad(ctx, key))
        .await?;
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE conversation_idempotency SET status = $1, response = $2, response_key = $3 \
         WHERE tenant_id = $4 AND idem_key = $5"
    )
    .bind(i32::from(stored.status))
    .bind(&sealed)
    .bind(k)
    .bind(t.0)
    .bind(key)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

/// Forgets a key whose request failed, so that a retry runs again.
pub(crate) async fn abandon(ctx: &TenantContext, key: &str) -> Result<(), StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM conversation_idempotency WHERE tenant_id = $1 AND idem_key = $2 AND response IS NULL"
    )
    .bind(t.0)
    .bind(key)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}
