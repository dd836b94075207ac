//! Shared drafts: `/v1/conversations/{id}/drafts…`.
//!
//! A draft is a working copy of a reply, visible to everyone who may read the conversation and
//! edited by one person at a time. Saving takes (or renews) the lock for [`LOCK_SECS`]; while
//! someone else holds a live lock, a save or a lock request is 409 `draft_locked` naming the
//! holder. Every save needs `If-Match` with the draft's `ETag` (its version): a save against an
//! older version is 409 `stale_draft`. Drafts live outside the log (they are not facts; the
//! reply sent from one is), sealed with the tenant key.

use crate::api::{self, Call, Done, Failure, call, etag, if_match, json, require, service_error};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use postvak_core::access::InboxRole;
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::{Cells, TenantContext};
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::http::ApiError;
use postvak_platform::on_tx;
use postvak_platform::store::{KeyScope, StoreError, TenantId, from_micros};
use postvak_proto::Problem;
use postvak_proto::rest::conversation as dto;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

/// How long a lock lasts after the last save or lock request.
pub const LOCK_SECS: i64 = 120;
/// Largest draft body, in bytes.
const MAX_BODY: usize = 256 * 1024;

/// Registers the draft routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/conversations/{conversation_id}/drafts",
        web::get().to(list_drafts),
    )
    .route(
        "/v1/conversations/{conversation_id}/drafts",
        web::post().to(create_draft),
    )
    .route(
        "/v1/conversations/{conversation_id}/drafts/{draft_id}",
        web::get().to(get_draft),
    )
    .route(
        "/v1/conversations/{conversation_id}/drafts/{draft_id}",
        web::put().to(update_draft),
    )
    .route(
        "/v1/conversations/{conversation_id}/drafts/{draft_id}",
        web::delete().to(delete_draft),
    )
    .route(
        "/v1/conversations/{conversation_id}/drafts/{draft_id}/lock",
        web::post().to(lock_draft),
    )
    .route(
        "/v1/conversations/{conversation_id}/drafts/{draft_id}/lock",
        web::delete().to(unlock_draft),
    );
}

/// The sealed part of a draft.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Content {
    subject: Option<String>,
    body: String,
    to: Vec<dto::Mailbox>,
    cc: Vec<dto::Mailbox>,
}

#[derive(Debug, Clone)]
struct Row_ {
    id: Uuid,
    conversation_id: Uuid,
    version: i64,
    content: Vec<u8>,
    content_key: Uuid,
    created_by: Option<Uuid>,
    updated_by: Option<Uuid>,
    lock_holder: Option<Uuid>,
    lock_expires_us: Option<i64>,
    created_us: i64,
    updated_us: i64,
    suggested_by: Option<Uuid>,
}

const COLUMNS: &str = "draft_id, conversation_id, version, content, content_key, created_by, updated_by, \
    lock_holder, lock_expires_us, created_us, updated_us, suggested_by";

fn row_of<R: Row>(r: &R) -> Result<Row_, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    Uuid: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Row_ {
        id: r.try_get(0)?,
        conversation_id: r.try_get(1)?,
        version: r.try_get(2)?,
        content: r.try_get(3)?,
        content_key: r.try_get(4)?,
        created_by: r.try_get(5)?,
        updated_by: r.try_get(6)?,
        lock_holder: r.try_get(7)?,
        lock_expires_us: r.try_get(8)?,
        created_us: r.try_get(9)?,
        updated_us: r.try_get(10)?,
        suggested_by: r.try_get(11)?,
    })
}

fn aad(tenant: TenantId, id: Uuid) -> Vec<u8> {
    let mut a = b"postvak.conversation.draft".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(id.as_bytes());
    a
}

/// Who holds locks for this caller: the user, or the nil id for a machine.
fn holder(c: &Call) -> Uuid {
    c.access.user_id().unwrap_or(Uuid::nil())
}

async fn tx_of(c: &Call, write: bool) -> Result<DbTx, Failure> {
    c.ctx
        .cell()
        .db()
        .tenant_tx(c.ctx.tenant(), write)
        .await
        .map_err(|e| service_error(e.into()))
}

fn store_err(e: StoreError) -> Failure {
    service_error(e.into())
}

async fn fetch(
    tx: &mut DbTx,
    tenant: TenantId,
    conversation: Uuid,
    draft: Option<Uuid>,
) -> Result<Vec<Row_>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM conversation_drafts WHERE tenant_id = $1 AND conversation_id = $2 \
         AND ($3 IS NULL OR draft_id = $3) ORDER BY created_us, draft_id"
    ));
    on_tx!(tx, |c| sqlx::query(sql)
        .bind(tenant.0)
        .bind(conversation)
        .bind(draft)
        .fetch_all(c)
        .await
        .and_then(|rows| rows.iter().map(row_of).collect()))
    .map_err(db_error)
}

async fn to_dto(c: &Call, r: &Row_) -> Result<dto::Draft, Failure> {
    let t = c.ctx.tenant();
    let plain = c
        .ctx
        .cell()
        .store
        .keyring()
        .open(t, r.content_key, &r.content, &aad(t, r.id))
        .await
        .map_err(|e| store_err(e.into()))?;
    let content: Content = serde_json::from_slice(&plain)
        .map_err(|e| store_err(StoreError::Serialization(e.to_string())))?;
    let now = crate::now_us();
    let live = r.lock_expires_us.filter(|e| *e > now);
    Ok(dto::Draft {
        id: r.id,
        conversation_id: r.conversation_id,
        subject: content.subject,
        body: content.body,
        to: content.to,
        cc: content.cc,
        version: u64::try_from(r.version).unwrap_or(0),
        created_by: r.created_by,
        updated_by: r.updated_by,
        locked_by: live.and(r.lock_holder),
        lock_expires_at: live.map(from_micros),
        created_at: from_micros(r.created_us),
        updated_at: from_micros(r.updated_us),
        suggested: r.suggested_by.is_some(),
        suggested_by: r.suggested_by,
    })
}

/// A provider's suggestion as a new, unlocked draft `id` of `conversation` (ADR 0016); a draft
/// that exists already is left alone (a repeated request).
pub(crate) async fn insert_suggested(
    ctx: &TenantContext,
    id: Uuid,
    conversation: Uuid,
    provider: Uuid,
    subject: Option<String>,
    body: String,
) -> Result<(), StoreError> {
    let t = ctx.tenant();
    let content = Content {
        subject,
        body,
        to: Vec::new(),
        cc: Vec::new(),
    };
    let json =
        serde_json::to_vec(&content).map_err(|e| StoreError::Serialization(e.to_string()))?;
    let (key, sealed) = ctx
        .cell()
        .store
        .keyring()
        .seal(t, &KeyScope::Tenant, &json, &aad(t, id))
        .await?;
    let now = crate::now_us();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO conversation_drafts (tenant_id, draft_id, conversation_id, version, content, \
         content_key, created_by, updated_by, lock_holder, lock_expires_us, created_us, updated_us, \
         suggested_by) VALUES ($1, $2, $3, 1, $4, $5, NULL, NULL, NULL, NULL, $6, $6, $7) \
         ON CONFLICT (tenant_id, draft_id) DO NOTHING"
    )
    .bind(t.0)
    .bind(id)
    .bind(conversation)
    .bind(sealed)
    .bind(key)
    .bind(now)
    .bind(provider)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

/// Whether `conversation` has the draft `draft`.
pub(crate) async fn exists(
    ctx: &TenantContext,
    conversation: Uuid,
    draft: Uuid,
) -> Result<bool, StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let rows = fetch(&mut tx, t, conversation, Some(draft)).await?;
    tx.commit().await?;
    Ok(!rows.is_empty())
}

/// A draft a reply was sent from: removed (the reply is the fact now). Returns its provider
/// and version when it was a suggestion, so that the acceptance can be recorded.
pub(crate) async fn take_sent(
    ctx: &TenantContext,
    conversation: Uuid,
    draft: Uuid,
) -> Result<Option<(Uuid, i64)>, StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    let rows = fetch(&mut tx, t, conversation, Some(draft)).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM conversation_drafts WHERE tenant_id = $1 AND conversation_id = $2 AND draft_id = $3"
    )
    .bind(t.0)
    .bind(conversation)
    .bind(draft)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows
        .first()
        .and_then(|r| r.suggested_by.map(|p| (p, r.version))))
}

async fn seal(c: &Call, id: Uuid, body: &dto::SaveDraft) -> Result<(Uuid, Vec<u8>), Failure> {
    if body.body.len() > MAX_BODY {
        return Err(ApiError::unprocessable(
            "draft_too_large",
            format!("a draft body holds at most {MAX_BODY} bytes"),
        )
        .into());
    }
    // Addresses are checked as a reply's would be.
    api::mailboxes(&body.to)?;
    api::mailboxes(&body.cc)?;
    let content = Content {
        subject: body.subject.clone(),
        body: body.body.clone(),
        to: body.to.clone(),
        cc: body.cc.clone(),
    };
    let json = serde_json::to_vec(&content)
        .map_err(|e| store_err(StoreError::Serialization(e.to_string())))?;
    let t = c.ctx.tenant();
    c.ctx
        .cell()
        .store
        .keyring()
        .seal(t, &KeyScope::Tenant, &json, &aad(t, id))
        .await
        .map_err(|e| store_err(e.into()))
}

/// Checks the caller may act on the conversation with `needed`.
async fn check(c: &Call, conversation: Uuid, needed: InboxRole) -> Result<(), Failure> {
    let loaded = c
        .svc
        .load(&c.ctx, conversation)
        .await
        .map_err(service_error)?;
    require(&c.access, &loaded.state, needed).map_err(service_error)
}

fn locked(holder: Uuid, expires_us: i64) -> Failure {
    Failure::DraftLocked(Box::new(dto::DraftLockedProblem {
        type_uri: "https://postvak.dev/problems/draft_locked".into(),
        title: "Someone else is editing this draft".into(),
        status: 409,
        detail: format!("user {holder} is editing the draft; the lock expires unless renewed"),
        code: "draft_locked".into(),
        holder,
        expires_at: from_micros(expires_us),
    }))
}

fn stale(current: i64, seen: u64) -> Failure {
    ApiError::new(StatusCode::CONFLICT, "stale_draft", "The draft changed")
        .with_detail(format!(
            "the draft is at version {current}, you sent If-Match {seen}: load it again"
        ))
        .into()
}

/// Why a conditional write touched no row: gone, locked or stale.
async fn refusal(c: &Call, conversation: Uuid, draft: Uuid, seen: Option<u64>) -> Failure {
    let mut tx = match tx_of(c, false).await {
        Ok(t) => t,
        Err(f) => return f,
    };
    let rows = match fetch(&mut tx, c.ctx.tenant(), conversation, Some(draft)).await {
        Ok(r) => r,
        Err(e) => return store_err(e),
    };
    let _ = tx.commit().await;
    let Some(r) = rows.first() else {
        return ApiError::not_found().into();
    };
    let now = crate::now_us();
    if let (Some(h), Some(exp)) = (r.lock_holder, r.lock_expires_us)
        && exp > now
        && h != holder(c)
    {
        return locked(h, exp);
    }
    match seen {
        Some(s) if i64::try_from(s).ok() != Some(r.version) => stale(r.version, s),
        _ => ApiError::new(StatusCode::CONFLICT, "stale_draft", "The draft changed").into(),
    }
}

fn respond(status: StatusCode, d: &dto::Draft) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("ETag", etag(d.version)))
        .json(d)
}

async fn one(c: &Call, conversation: Uuid, draft: Uuid) -> Result<dto::Draft, Failure> {
    let mut tx = tx_of(c, false).await?;
    let rows = fetch(&mut tx, c.ctx.tenant(), conversation, Some(draft))
        .await
        .map_err(store_err)?;
    tx.commit().await.map_err(store_err)?;
    match rows.first() {
        Some(r) => to_dto(c, r).await,
        None => Err(ApiError::not_found().into()),
    }
}

/// The shared drafts of a conversation.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/drafts", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path)),
    responses((status = 200, body = dto::DraftList),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_drafts(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    check(&c, id, InboxRole::Read).await?;
    let mut tx = tx_of(&c, false).await?;
    let rows = fetch(&mut tx, c.ctx.tenant(), id, None)
        .await
        .map_err(store_err)?;
    tx.commit().await.map_err(store_err)?;
    let mut items = Vec::with_capacity(rows.len());
    for r in &rows {
        items.push(to_dto(&c, r).await?);
    }
    Ok(HttpResponse::Ok().json(dto::DraftList { items }))
}

/// Starts a shared draft; the author holds its lock.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/drafts", tag = "conversations", security(("bearer" = [])),
    request_body = dto::SaveDraft,
    params(("conversation_id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = dto::Draft),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_draft(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::SaveDraft>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let conversation = path.into_inner();
    let body = body.into_inner();
    api::idempotent(&c, &req, &body, || async {
        check(&c, conversation, InboxRole::Reply).await?;
        let id = Uuid::now_v7();
        let (key, sealed) = seal(&c, id, &body).await?;
        let now = crate::now_us();
        let me = holder(&c);
        let author = c.access.user_id();
        let mut tx = tx_of(&c, true).await?;
        on_tx!(&mut tx, |x| sqlx::query(
            "INSERT INTO conversation_drafts (tenant_id, draft_id, conversation_id, version, content, content_key, \
               created_by, updated_by, lock_holder, lock_expires_us, created_us, updated_us) \
             VALUES ($1, $2, $3, 1, $4, $5, $6, $6, $7, $8, $9, $9)"
        )
        .bind(c.ctx.tenant().0)
        .bind(id)
        .bind(conversation)
        .bind(&sealed)
        .bind(key)
        .bind(author)
        .bind(me)
        .bind(now + LOCK_SECS * 1_000_000)
        .bind(now)
        .execute(x)
        .await
        .map(|_| ()))
        .map_err(|e| store_err(db_error(e)))?;
        tx.commit().await.map_err(store_err)?;
        let d = one(&c, conversation, id).await?;
        Ok(Done {
            status: StatusCode::CREATED,
            version: d.version,
            location: Some(format!("/v1/conversations/{conversation}/drafts/{id}")),
            body: json(&d)?,
        })
    })
    .await
}

/// A draft. `ETag` = its version.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/drafts/{draft_id}", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path), ("draft_id" = Uuid, Path)),
    responses((status = 200, body = dto::Draft),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_draft(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let (conversation, draft) = path.into_inner();
    check(&c, conversation, InboxRole::Read).await?;
    let d = one(&c, conversation, draft).await?;
    Ok(respond(StatusCode::OK, &d))
}

/// Saves a draft: needs `If-Match` with its `ETag`; takes or renews the lock. 409
/// `draft_locked` while someone else edits it, 409 `stale_draft` against an older version.
#[utoipa::path(put, path = "/v1/conversations/{conversation_id}/drafts/{draft_id}", tag = "conversations", security(("bearer" = [])),
    request_body = dto::SaveDraft,
    params(("conversation_id" = Uuid, Path), ("draft_id" = Uuid, Path), ("If-Match" = String, Header)),
    responses((status = 200, body = dto::Draft),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::DraftLockedProblem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              (status = 428, body = Problem, content_type = "application/problem+json")))]
pub async fn update_draft(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<dto::SaveDraft>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let (conversation, draft) = path.into_inner();
    check(&c, conversation, InboxRole::Reply).await?;
    let Some(seen) = if_match(&req)? else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "if_match_required",
            "If-Match required",
        )
        .with_detail("send the draft's ETag in If-Match")
        .into());
    };
    let (key, sealed) = seal(&c, draft, &body.into_inner()).await?;
    let now = crate::now_us();
    let me = holder(&c);
    let mut tx = tx_of(&c, true).await?;
    let changed = on_tx!(&mut tx, |x| sqlx::query(
        "UPDATE conversation_drafts SET version = version + 1, content = $1, content_key = $2, updated_by = $3, \
           lock_holder = $4, lock_expires_us = $5, updated_us = $6 \
         WHERE tenant_id = $7 AND conversation_id = $8 AND draft_id = $9 AND version = $10 \
           AND (lock_holder IS NULL OR lock_holder = $4 OR lock_expires_us IS NULL OR lock_expires_us <= $6)"
    )
    .bind(&sealed)
    .bind(key)
    .bind(c.access.user_id())
    .bind(me)
    .bind(now + LOCK_SECS * 1_000_000)
    .bind(now)
    .bind(c.ctx.tenant().0)
    .bind(conversation)
    .bind(draft)
    .bind(i64::try_from(seen).unwrap_or(i64::MAX))
    .execute(x)
    .await
    .map(|r| r.rows_affected()))
    .map_err(|e| store_err(db_error(e)))?;
    tx.commit().await.map_err(store_err)?;
    if changed == 0 {
        return Err(refusal(&c, conversation, draft, Some(seen)).await);
    }
    let d = one(&c, conversation, draft).await?;
    Ok(respond(StatusCode::OK, &d))
}

/// Deletes a draft (not while someone else holds its lock).
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/drafts/{draft_id}", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path), ("draft_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204, description = "Deleted"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::DraftLockedProblem, content_type = "application/problem+json")))]
pub async fn delete_draft(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let (conversation, draft) = path.into_inner();
    check(&c, conversation, InboxRole::Reply).await?;
    let seen = if_match(&req)?;
    let now = crate::now_us();
    let mut tx = tx_of(&c, true).await?;
    let changed = on_tx!(&mut tx, |x| sqlx::query(
        "DELETE FROM conversation_drafts WHERE tenant_id = $1 AND conversation_id = $2 AND draft_id = $3 \
           AND ($4 IS NULL OR version = $4) \
           AND (lock_holder IS NULL OR lock_holder = $5 OR lock_expires_us IS NULL OR lock_expires_us <= $6)"
    )
    .bind(c.ctx.tenant().0)
    .bind(conversation)
    .bind(draft)
    .bind(seen.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
    .bind(holder(&c))
    .bind(now)
    .execute(x)
    .await
    .map(|r| r.rows_affected()))
    .map_err(|e| store_err(db_error(e)))?;
    tx.commit().await.map_err(store_err)?;
    if changed == 0 {
        return Err(refusal(&c, conversation, draft, seen).await);
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Takes or renews the lock of a draft for [`LOCK_SECS`] seconds.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/drafts/{draft_id}/lock", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path), ("draft_id" = Uuid, Path)),
    responses((status = 200, body = dto::Draft),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::DraftLockedProblem, content_type = "application/problem+json")))]
pub async fn lock_draft(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let (conversation, draft) = path.into_inner();
    check(&c, conversation, InboxRole::Reply).await?;
    let now = crate::now_us();
    let mut tx = tx_of(&c, true).await?;
    let changed = on_tx!(&mut tx, |x| sqlx::query(
        "UPDATE conversation_drafts SET lock_holder = $1, lock_expires_us = $2 \
         WHERE tenant_id = $3 AND conversation_id = $4 AND draft_id = $5 \
           AND (lock_holder IS NULL OR lock_holder = $1 OR lock_expires_us IS NULL OR lock_expires_us <= $6)"
    )
    .bind(holder(&c))
    .bind(now + LOCK_SECS * 1_000_000)
    .bind(c.ctx.tenant().0)
    .bind(conversation)
    .bind(draft)
    .bind(now)
    .execute(x)
    .await
    .map(|r| r.rows_affected()))
    .map_err(|e| store_err(db_error(e)))?;
    tx.commit().await.map_err(store_err)?;
    if changed == 0 {
        return Err(refusal(&c, conversation, draft, None).await);
    }
    let d = one(&c, conversation, draft).await?;
    Ok(respond(StatusCode::OK, &d))
}

/// Releases the caller's lock of a draft (nothing happens when someone else holds it).
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/drafts/{draft_id}/lock", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path), ("draft_id" = Uuid, Path)),
    responses((status = 200, body = dto::Draft),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn unlock_draft(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let (conversation, draft) = path.into_inner();
    check(&c, conversation, InboxRole::Reply).await?;
    let mut tx = tx_of(&c, true).await?;
    on_tx!(&mut tx, |x| sqlx::query(
        "UPDATE conversation_drafts SET lock_holder = NULL, lock_expires_us = NULL \
         WHERE tenant_id = $1 AND conversation_id = $2 AND draft_id = $3 AND lock_holder = $4"
    )
    .bind(c.ctx.tenant().0)
    .bind(conversation)
    .bind(draft)
    .bind(holder(&c))
    .execute(x)
    .await
    .map(|_| ()))
    .map_err(|e| store_err(db_error(e)))?;
    tx.commit().await.map_err(store_err)?;
    let d = one(&c, conversation, draft).await?;
    Ok(respond(StatusCode::OK, &d))
}
