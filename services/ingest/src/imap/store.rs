//! The connector's tables (migration 0011): accounts with their sealed login and sync state,
//! quarantined messages, and the id-only index the supervisor reads across tenants.
//! Every tenant statement runs in `Db::tenant_tx` (row-level security on PostgreSQL).

use super::{AccountConfig, AfterImport, AuthKind, Credentials, TlsMode};
use postvak_platform::cell::TenantContext;
use postvak_platform::db::DbTx;
use postvak_platform::db::{Db, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{
    ExpectedVersion, KeyScope, NewEvent, StoreError, StreamRef, TenantId,
};
use postvak_proto::events::ingest as ev;
use sqlx::Row;
use uuid::Uuid;

pub fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn credentials_aad(tenant: TenantId, account: Uuid) -> Vec<u8> {
    let mut a = b"postvak.ingest.imap-credentials".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(account.as_bytes());
    a
}

/// `len(username) as u32 BE ‖ username ‖ secret`.
fn encode_credentials(c: &Credentials) -> Vec<u8> {
    let u = c.username.as_bytes();
    let mut out = Vec::with_capacity(4 + u.len() + c.secret.expose().len());
    out.extend_from_slice(&(u.len() as u32).to_be_bytes());
    out.extend_from_slice(u);
    out.extend_from_slice(c.secret.expose().as_bytes());
    out
}

fn decode_credentials(b: &[u8]) -> Result<Credentials, StoreError> {
    let bad = || StoreError::Serialization("sealed IMAP credentials are malformed".into());
    let len = u32::from_be_bytes(b.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let end = 4usize.checked_add(len as usize).ok_or_else(bad)?;
    let username = String::from_utf8(b.get(4..end).ok_or_else(bad)?.to_vec()).map_err(|_| bad())?;
    let secret = String::from_utf8(b.get(end..).ok_or_else(bad)?.to_vec()).map_err(|_| bad())?;
    Ok(Credentials {
        username,
        secret: super::Secret::new(secret),
    })
}

/// Seals a login under the tenant key: `(key_id, sealed)`.
pub async fn seal_credentials(
    ctx: &TenantContext,
    account: Uuid,
    c: &Credentials,
) -> Result<(Uuid, Vec<u8>), StoreError> {
    let tenant = ctx.tenant();
    ctx.cell()
        .store
        .keyring()
        .seal(
            tenant,
            &KeyScope::Tenant,
            &encode_credentials(c),
            &credentials_aad(tenant, account),
        )
        .await
        .map_err(|e| StoreError::Database(e.to_string()))
}

/// A stored account row, login still sealed.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub account_id: Uuid,
    pub inbox_id: Uuid,
    pub host: String,
    pub port: i64,
    pub tls: String,
    pub auth: String,
    pub credentials: Vec<u8>,
    pub credentials_key: Uuid,
    pub folder: String,
    pub after_import: String,
    pub enabled: bool,
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub uid_validity: Option<i64>,
    pub last_uid: i64,
    pub imported: i64,
    pub status: String,
    pub last_sync_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}

const COLUMNS: &str = "account_id, inbox_id, host, port, tls, auth, credentials, credentials_key, \
    folder, after_import, enabled, revision, created_at, updated_at, uid_validity, last_uid, \
    imported, status, last_sync_at, last_error, last_error_at";

macro_rules! account_row {
    ($r:expr) => {{
        let r = $r;
        Ok::<_, sqlx::Error>(AccountRow {
            account_id: r.try_get(0)?,
            inbox_id: r.try_get(1)?,
            host: r.try_get(2)?,
            port: r.try_get(3)?,
            tls: r.try_get(4)?,
            auth: r.try_get(5)?,
            credentials: r.try_get(6)?,
            credentials_key: r.try_get(7)?,
            folder: r.try_get(8)?,
            after_import: r.try_get(9)?,
            enabled: r.try_get(10)?,
            revision: r.try_get(11)?,
            created_at: r.try_get(12)?,
            updated_at: r.try_get(13)?,
            uid_validity: r.try_get(14)?,
            last_uid: r.try_get(15)?,
            imported: r.try_get(16)?,
            status: r.try_get(17)?,
            last_sync_at: r.try_get(18)?,
            last_error: r.try_get(19)?,
            last_error_at: r.try_get(20)?,
        })
    }};
}

impl AccountRow {
    /// The row as the connector uses it, login opened.
    pub async fn open(&self, ctx: &TenantContext) -> Result<AccountConfig, StoreError> {
        let tenant = ctx.tenant();
        let plain = ctx
            .cell()
            .store
            .keyring()
            .open(
                tenant,
                self.credentials_key,
                &self.credentials,
                &credentials_aad(tenant, self.account_id),
            )
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let bad = |what: &str| StoreError::Serialization(format!("stored IMAP account: {what}"));
        Ok(AccountConfig {
            tenant,
            id: self.account_id,
            inbox_id: self.inbox_id,
            host: self.host.clone(),
            port: u16::try_from(self.port).map_err(|_| bad("port"))?,
            tls: TlsMode::parse(&self.tls).ok_or_else(|| bad("tls"))?,
            auth: AuthKind::parse(&self.auth).ok_or_else(|| bad("auth"))?,
            credentials: decode_credentials(&plain)?,
            folder: self.folder.clone(),
            after_import: AfterImport::parse(&self.after_import)
                .ok_or_else(|| bad("after_import"))?,
            enabled: self.enabled,
            revision: self.revision,
        })
    }
}

/// Everything an insert or update writes (not the sync state).
#[derive(Debug, Clone)]
pub struct AccountWrite {
    pub account_id: Uuid,
    pub inbox_id: Uuid,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub auth: AuthKind,
    pub credentials: Vec<u8>,
    pub credentials_key: Uuid,
    pub folder: String,
    pub after_import: AfterImport,
    pub enabled: bool,
}

/// The audit stream of an account.
pub fn audit_stream(account: Uuid) -> StreamRef {
    StreamRef::new(
        ev::STREAM_IMAP_ACCOUNT,
        format!("imap-{}", account.simple()),
    )
}

/// Appends an account's audit event inside `tx` (acted by the context's principal) and
/// commits: the change and its record commit together or not at all.
async fn commit_with_audit(
    ctx: &TenantContext,
    mut tx: DbTx,
    account: Uuid,
    mut event: NewEvent,
) -> Result<(), StoreError> {
    event.metadata.actor = Some(ctx.principal().actor());
    let store = &ctx.cell().store;
    store
        .append_in_tx(
            &mut tx,
            ctx.tenant(),
            &audit_stream(account),
            ExpectedVersion::Any,
            vec![event],
        )
        .await?;
    store.commit_appended(tx).await
}

pub async fn insert_account(
    ctx: &TenantContext,
    a: &AccountWrite,
    audit: NewEvent,
) -> Result<(), StoreError> {
    let now = now_secs();
    let tenant = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(tenant, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO imap_accounts (tenant_id, account_id, inbox_id, host, port, tls, auth, \
         credentials, credentials_key, folder, after_import, enabled, revision, created_at, \
         updated_at, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13, $14)"
    )
    .bind(tenant.0)
    .bind(a.account_id)
    .bind(a.inbox_id)
    .bind(&a.host)
    .bind(i64::from(a.port))
    .bind(a.tls.as_str())
    .bind(a.auth.as_str())
    .bind(a.credentials.as_slice())
    .bind(a.credentials_key)
    .bind(&a.folder)
    .bind(a.after_import.to_string())
    .bind(a.enabled)
    .bind(now)
    .bind(if a.enabled { "pending" } else { "disabled" })
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO imap_account_index (account_id, tenant_id, enabled, revision) \
         VALUES ($1, $2, $3, 1)"
    )
    .bind(a.account_id)
    .bind(tenant.0)
    .bind(a.enabled)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    commit_with_audit(ctx, tx, a.account_id, audit).await
}

/// Replaces an account's settings and bumps its revision (the supervisor restarts its task).
/// `reset_position` forgets the sync position (another server, login or folder).
pub async fn update_account(
    ctx: &TenantContext,
    a: &AccountWrite,
    reset_position: bool,
    audit: NewEvent,
) -> Result<bool, StoreError> {
    let now = now_secs();
    let tenant = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(tenant, true).await?;
    let n = on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE imap_accounts SET host = $3, port = $4, tls = $5, auth = $6, credentials = $7, \
         credentials_key = $8, folder = $9, after_import = $10, enabled = $11, \
         revision = revision + 1, updated_at = $12, \
         status = CASE WHEN $11 THEN 'pending' ELSE 'disabled' END, \
         uid_validity = CASE WHEN $13 THEN NULL ELSE uid_validity END, \
         last_uid = CASE WHEN $13 THEN 0 ELSE last_uid END \
         WHERE tenant_id = $1 AND account_id = $2"
    )
    .bind(tenant.0)
    .bind(a.account_id)
    .bind(&a.host)
    .bind(i64::from(a.port))
    .bind(a.tls.as_str())
    .bind(a.auth.as_str())
    .bind(a.credentials.as_slice())
    .bind(a.credentials_key)
    .bind(&a.folder)
    .bind(a.after_import.to_string())
    .bind(a.enabled)
    .bind(now)
    .bind(reset_position)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    if n == 0 {
        return Ok(false);
    }
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE imap_account_index SET enabled = $2, revision = revision + 1 \
         WHERE account_id = $1"
    )
    .bind(a.account_id)
    .bind(a.enabled)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    commit_with_audit(ctx, tx, a.account_id, audit).await?;
    Ok(true)
}

/// Deletes an account (and its quarantine list); `audit` is recorded only if it existed.
pub async fn delete_account(
    ctx: &TenantContext,
    account: Uuid,
    audit: NewEvent,
) -> Result<bool, StoreError> {
    let tenant = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(tenant, true).await?;
    let n = on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM imap_accounts WHERE tenant_id = $1 AND account_id = $2"
    )
    .bind(tenant.0)
    .bind(account)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM imap_quarantine WHERE tenant_id = $1 AND account_id = $2"
    )
    .bind(tenant.0)
    .bind(account)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    if n > 0 {
        on_tx!(&mut tx, |c| sqlx::query(
            "DELETE FROM imap_account_index WHERE account_id = $1 AND tenant_id = $2"
        )
        .bind(account)
        .bind(tenant.0)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        commit_with_audit(ctx, tx, account, audit).await?;
    } else {
        tx.commit().await?;
    }
    Ok(n > 0)
}

pub async fn get_account(
    db: &Db,
    tenant: TenantId,
    account: Uuid,
) -> Result<Option<AccountRow>, StoreError> {
    let mut tx = db.tenant_tx(tenant, false).await?;
    let sql =
        format!("SELECT {COLUMNS} FROM imap_accounts WHERE tenant_id = $1 AND account_id = $2");
    let row = on_tx!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(tenant.0)
        .bind(account)
        .fetch_optional(c)
        .await
        .and_then(|r| r.map(|r| account_row!(r)).transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(row)
}

pub async fn list_accounts(
    db: &Db,
    tenant: TenantId,
    inbox: Uuid,
) -> Result<Vec<AccountRow>, StoreError> {
    let mut tx = db.tenant_tx(tenant, false).await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM imap_accounts WHERE tenant_id = $1 AND inbox_id = $2 \
         ORDER BY created_at, account_id"
    );
    let rows = on_tx!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(tenant.0)
        .bind(inbox)
        .fetch_all(c)
        .await
        .and_then(|rows| rows
            .iter()
            .map(|r| account_row!(r))
            .collect::<Result<Vec<_>, _>>()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows)
}

/// One entry of the cross-tenant index: `(account, tenant, enabled, revision)`.
pub type IndexEntry = (Uuid, TenantId, bool, i64);

/// Every account of the cell (ids only; no row-level security on this table).
pub async fn index(db: &Db) -> Result<Vec<IndexEntry>, StoreError> {
    let mut tx = db.begin().await?;
    let rows = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT account_id, tenant_id, enabled, revision FROM imap_account_index"
    )
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok((
            r.try_get::<Uuid, _>(0)?,
            TenantId(r.try_get::<Uuid, _>(1)?),
            r.try_get::<bool, _>(2)?,
            r.try_get::<i64, _>(3)?
        )))
        .collect::<Result<Vec<_>, sqlx::Error>>()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows)
}

/// Records that messages up to `last_uid` were imported (or quarantined) under
/// `uid_validity`. Called only after the pipeline committed them. Never moves backwards (a
/// task stopping after a settings change may finish a message its successor already passed).
pub async fn record_progress(
    db: &Db,
    tenant: TenantId,
    account: Uuid,
    uid_validity: u32,
    last_uid: u32,
    imported: u64,
) -> Result<(), StoreError> {
    let mut tx = db.tenant_tx(tenant, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE imap_accounts SET uid_validity = $3, last_uid = $4, imported = imported + $5, \
         last_sync_at = $6 WHERE tenant_id = $1 AND account_id = $2 \
         AND (uid_validity IS NULL OR uid_validity <> $3 OR last_uid < $4)"
    )
    .bind(tenant.0)
    .bind(account)
    .bind(i64::from(uid_validity))
    .bind(i64::from(last_uid))
    .bind(imported as i64)
    .bind(now_secs())
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

/// A new UIDVALIDITY: the folder is synced again from its start.
pub async fn reset_position(
    db: &Db,
    tenant: TenantId,
    account: Uuid,
    uid_validity: u32,
) -> Result<(), StoreError> {
    let mut tx = db.tenant_tx(tenant, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE imap_accounts SET uid_validity = $3, last_uid = 0 \
         WHERE tenant_id = $1 AND account_id = $2"
    )
    .bind(tenant.0)
    .bind(account)
    .bind(i64::from(uid_validity))
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

/// The connector's status: `syncing`, `idle`, `error` (with `error`), `disabled`.
pub async fn set_status(
    db: &Db,
    tenant: TenantId,
    account: Uuid,
    status: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_secs();
    let mut tx = db.tenant_tx(tenant, true).await?;
    match error {
        Some(e) => on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE imap_accounts SET status = $3, last_error = $4, last_error_at = $5 \
             WHERE tenant_id = $1 AND account_id = $2"
        )
        .bind(tenant.0)
        .bind(account)
        .bind(status)
        .bind(e)
        .bind(now)
        .execute(c)
        .await
        .map(|_| ())),
        None => on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE imap_accounts SET status = $3, last_sync_at = $4 \
             WHERE tenant_id = $1 AND account_id = $2"
        )
        .bind(tenant.0)
        .bind(account)
        .bind(status)
        .bind(now)
        .execute(c)
        .await
        .map(|_| ())),
    }
    .map_err(db_error)?;
    tx.commit().await
}

/// A quarantined message, recorded together with the progress past it (one transaction).
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub uid_validity: u32,
    pub uid: u32,
    pub reason: String,
    pub detail: String,
    pub size: Option<u64>,
    pub at: i64,
    /// Imported later by request (never set when quarantining).
    pub reimported: Option<Reimported>,
}

/// What re-importing a quarantined message delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reimported {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub duplicate: bool,
    pub at: i64,
}

const QUARANTINE_COLUMNS: &str = "uid_validity, uid, reason, detail, size, quarantined_at, \
     reimported_message_id, reimported_conversation_id, reimported_duplicate, reimported_at";

fn quarantine_row<'r, R>(r: &'r R) -> Result<Quarantined, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Uuid>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<bool>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let reimported = match (
        r.try_get::<Option<Uuid>, _>(6)?,
        r.try_get::<Option<Uuid>, _>(7)?,
        r.try_get::<Option<bool>, _>(8)?,
        r.try_get::<Option<i64>, _>(9)?,
    ) {
        (Some(message_id), Some(conversation_id), duplicate, at) => Some(Reimported {
            message_id,
            conversation_id,
            duplicate: duplicate.unwrap_or(false),
            at: at.unwrap_or(0),
        }),
        _ => None,
    };
    Ok(Quarantined {
        uid_validity: u32::try_from(r.try_get::<i64, _>(0)?).unwrap_or_default(),
        uid: u32::try_from(r.try_get::<i64, _>(1)?).unwrap_or_default(),
        reason: r.try_get(2)?,
        detail: r.try_get(3)?,
        size: r.try_get::<Option<i64>, _>(4)?.map(|s| s as u64),
        at: r.try_get(5)?,
        reimported,
    })
}

/// One quarantined message of an account.
pub async fn quarantined_one(
    db: &Db,
    tenant: TenantId,
    account: Uuid,
    uid_validity: u32,
    uid: u32,
) -> Result<Option<Quarantined>, StoreError> {
    let mut tx = db.tenant_tx(tenant, false).await?;
    let sql = format!(
        "SELECT {QUARANTINE_COLUMNS} FROM imap_quarantine \
         WHERE tenant_id = $1 AND account_id = $2 AND uid_validity = $3 AND uid = $4"
    );
    let row = on_tx!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(tenant.0)
        .bind(account)
        .bind(i64::from(uid_validity))
        .bind(i64::from(uid))
        .fetch_optional(c)
        .await
        .and_then(|r| r.as_ref().map(quarantine_row).transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(row)
}

/// Records that a quarantined message was imported, with its audit event, in one
/// transaction. `false` (nothing written) when a concurrent request recorded it first.
pub async fn mark_reimported(
    ctx: &TenantContext,
    account: Uuid,
    uid_validity: u32,
    uid: u32,
    done: &Reimported,
    audit: NewEvent,
) -> Result<bool, StoreError> {
    let tenant = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(tenant, true).await?;
    let n = on_tx!(&mut tx, |c| {
        sqlx::query(
        "UPDATE imap_quarantine SET reimported_message_id = $5, reimported_conversation_id = $6, \
         reimported_duplicate = $7, reimported_at = $8 \
         WHERE tenant_id = $1 AND account_id = $2 AND uid_validity = $3 AND uid = $4 \
         AND reimported_message_id IS NULL"
    )
    .bind(tenant.0)
    .bind(account)
    .bind(i64::from(uid_validity))
    .bind(i64::from(uid))
    .bind(done.message_id)
    .bind(done.conversation_id)
    .bind(done.duplicate)
    .bind(done.at)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })
    .map_err(db_error)?;
    if n == 0 {
        // Dropping the transaction rolls it back.
        drop(tx);
        return Ok(false);
    }
    commit_with_audit(ctx, tx, account, audit).await?;
    Ok(true)
}

pub async fn quarantine(
    db: &Db,
    tenant: TenantId,
    account: Uuid,
    q: &Quarantined,
) -> Result<(), StoreError> {
    let mut tx = db.tenant_tx(tenant, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO imap_quarantine (tenant_id, account_id, uid_validity, uid, reason, detail, \
         size, quarantined_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (tenant_id, account_id, uid_validity, uid) DO NOTHING"
    )
    .bind(tenant.0)
    .bind(account)
    .bind(i64::from(q.uid_validity))
    .bind(i64::from(q.uid))
    .bind(&q.reason)
    .bind(&q.detail)
    .bind(q.size.map(|s| s as i64))
    .bind(q.at)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE imap_accounts SET uid_validity = $3, last_uid = $4, last_sync_at = $5 \
         WHERE tenant_id = $1 AND account_id = $2 \
         AND (uid_validity IS NULL OR uid_validity <> $3 OR last_uid < $4)"
    )
    .bind(tenant.0)
    .bind(account)
    .bind(i64::from(q.uid_validity))
    .bind(i64::from(q.uid))
    .bind(q.at)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

/// The newest quarantined messages of an account.
pub async fn quarantined(
    db: &Db,
    tenant: TenantId,
    account: Uuid,
    limit: i64,
) -> Result<Vec<Quarantined>, StoreError> {
    let mut tx = db.tenant_tx(tenant, false).await?;
    let sql = format!(
        "SELECT {QUARANTINE_COLUMNS} FROM imap_quarantine \
         WHERE tenant_id = $1 AND account_id = $2 \
         ORDER BY quarantined_at DESC, uid DESC LIMIT $3"
    );
    let rows = on_tx!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(tenant.0)
        .bind(account)
        .bind(limit)
        .fetch_all(c)
        .await
        .and_then(|rows| rows
            .iter()
            .map(quarantine_row)
            .collect::<Result<Vec<_>, _>>()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows)
}

/// Whether the inbox exists for the tenant (another tenant's inbox answers like a missing one).
pub async fn inbox_exists(db: &Db, tenant: TenantId, inbox: Uuid) -> Result<bool, StoreError> {
    crate::repo::inbox_exists(db, tenant, inbox).await
}
