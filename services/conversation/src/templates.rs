//! Reply templates: `/v1/templates…` and rendering one for a conversation.
//!
//! A template belongs to the tenant (managed by tenant admins) or to one inbox (managed by that
//! inbox's admins) and is visible to whoever may read that inbox. Its subject and body may use
//! `{{contact.name}}`, `{{agent.name}}`, `{{agent.signature}}` and `{{inbox.name}}` (anything
//! else is refused when saved); they are filled in by
//! `POST /v1/conversations/{id}/templates/{template_id}/render`. Templates live outside the log
//! like drafts; subject and body are sealed with the tenant key.

use crate::api::{Call, Done, Failure, call, etag, if_match, json, require, service_error};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use postvak_core::access::InboxRole;
use postvak_core::conversation::{check_template, render_template};
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::Cells;
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::http::ApiError;
use postvak_platform::on_tx;
use postvak_platform::store::{KeyScope, StoreError, TenantId, from_micros};
use postvak_proto::Problem;
use postvak_proto::rest::conversation as dto;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::IntoParams;
use uuid::Uuid;

const MAX_BODY: usize = 64 * 1024;

/// Registers the template routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/templates", web::get().to(list_templates))
        .route("/v1/templates", web::post().to(create_template))
        .route("/v1/templates/{template_id}", web::get().to(get_template))
        .route(
            "/v1/templates/{template_id}",
            web::put().to(update_template),
        )
        .route(
            "/v1/templates/{template_id}",
            web::delete().to(delete_template),
        )
        .route(
            "/v1/conversations/{conversation_id}/templates/{template_id}/render",
            web::post().to(render_conversation_template),
        );
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Content {
    subject: Option<String>,
    body: String,
}

#[derive(Debug, Clone)]
struct TemplateRow {
    id: Uuid,
    inbox_id: Option<Uuid>,
    name: String,
    content: Vec<u8>,
    content_key: Uuid,
    version: i64,
    created_us: i64,
    updated_us: i64,
}

fn aad(tenant: TenantId, id: Uuid) -> Vec<u8> {
    let mut a = b"postvak.conversation.template".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(id.as_bytes());
    a
}

fn store_err(e: StoreError) -> Failure {
    service_error(e.into())
}

async fn tx_of(c: &Call, write: bool) -> Result<DbTx, Failure> {
    c.ctx
        .cell()
        .db()
        .tenant_tx(c.ctx.tenant(), write)
        .await
        .map_err(|e| service_error(e.into()))
}

async fn fetch(c: &Call, id: Option<Uuid>) -> Result<Vec<TemplateRow>, Failure> {
    let mut tx = tx_of(c, false).await?;
    let rows = on_tx!(&mut tx, |x| {
        sqlx::query(
        "SELECT template_id, inbox_id, name, content, content_key, version, created_us, updated_us \
         FROM conversation_templates WHERE tenant_id = $1 AND ($2 IS NULL OR template_id = $2) \
         ORDER BY name, template_id"
    )
    .bind(c.ctx.tenant().0)
    .bind(id)
    .fetch_all(x)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok(TemplateRow {
            id: r.try_get(0)?,
            inbox_id: r.try_get(1)?,
            name: r.try_get(2)?,
            content: r.try_get(3)?,
            content_key: r.try_get(4)?,
            version: r.try_get(5)?,
            created_us: r.try_get(6)?,
            updated_us: r.try_get(7)?,
        }))
        .collect::<Result<Vec<_>, sqlx::Error>>())
    })
    .map_err(|e| store_err(db_error(e)))?;
    tx.commit().await.map_err(store_err)?;
    Ok(rows)
}

async fn open(c: &Call, r: &TemplateRow) -> Result<Content, Failure> {
    let t = c.ctx.tenant();
    let plain = c
        .ctx
        .cell()
        .store
        .keyring()
        .open(t, r.content_key, &r.content, &aad(t, r.id))
        .await
        .map_err(|e| store_err(e.into()))?;
    serde_json::from_slice(&plain).map_err(|e| store_err(StoreError::Serialization(e.to_string())))
}

async fn to_dto(c: &Call, r: &TemplateRow) -> Result<dto::Template, Failure> {
    let content = open(c, r).await?;
    Ok(dto::Template {
        id: r.id,
        inbox_id: r.inbox_id,
        name: r.name.clone(),
        subject: content.subject,
        body: content.body,
        version: u64::try_from(r.version).unwrap_or(0),
        created_at: from_micros(r.created_us),
        updated_at: from_micros(r.updated_us),
    })
}

/// May the caller see (use) a template of `inbox` (`None` = the tenant's)?
fn visible(c: &Call, inbox: Option<Uuid>) -> bool {
    match inbox {
        None => true,
        Some(i) => c.access.inbox_role(i).is_some(),
    }
}

/// May the caller change a template of `inbox`?
fn require_manage(c: &Call, inbox: Option<Uuid>) -> Result<(), Failure> {
    match inbox {
        None => c.access.require_tenant_admin().map_err(Failure::Api),
        Some(i) => c
            .access
            .require_inbox(i, InboxRole::Admin)
            .map_err(Failure::Api),
    }
}

fn validate(body: &dto::SaveTemplate) -> Result<(), Failure> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::unprocessable("invalid_name", "a name has 1–200 characters").into());
    }
    if body.body.len() > MAX_BODY {
        return Err(ApiError::unprocessable(
            "template_too_large",
            format!("a template body holds at most {MAX_BODY} bytes"),
        )
        .into());
    }
    for text in [Some(body.body.as_str()), body.subject.as_deref()]
        .into_iter()
        .flatten()
    {
        check_template(text).map_err(|e| {
            Failure::Api(ApiError::unprocessable(
                "unknown_template_variable",
                e.to_string(),
            ))
        })?;
    }
    Ok(())
}

async fn seal(c: &Call, id: Uuid, body: &dto::SaveTemplate) -> Result<(Uuid, Vec<u8>), Failure> {
    let json = serde_json::to_vec(&Content {
        subject: body.subject.clone(),
        body: body.body.clone(),
    })
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

/// A template the caller may see, or 404.
async fn visible_one(c: &Call, id: Uuid) -> Result<TemplateRow, Failure> {
    fetch(c, Some(id))
        .await?
        .into_iter()
        .find(|r| visible(c, r.inbox_id))
        .ok_or_else(|| Failure::Api(ApiError::not_found()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TemplateQuery {
    /// Only the tenant's templates and this inbox's.
    pub inbox: Option<Uuid>,
}

/// The templates the caller may use: the tenant's and those of inboxes they may read.
#[utoipa::path(get, path = "/v1/templates", tag = "templates", security(("bearer" = [])),
    params(TemplateQuery),
    responses((status = 200, body = dto::TemplateList),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn list_templates(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    q: web::Query<TemplateQuery>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let mut items = Vec::new();
    for r in fetch(&c, None).await? {
        let wanted = match (q.inbox, r.inbox_id) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        };
        if wanted && visible(&c, r.inbox_id) {
            items.push(to_dto(&c, &r).await?);
        }
    }
    Ok(HttpResponse::Ok().json(dto::TemplateList { items }))
}

/// Creates a template of the tenant (tenant admin) or of an inbox (inbox admin).
#[utoipa::path(post, path = "/v1/templates", tag = "templates", security(("bearer" = [])),
    request_body = dto::SaveTemplate,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = dto::Template),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_template(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    body: web::Json<dto::SaveTemplate>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let body = body.into_inner();
    require_manage(&c, body.inbox_id)?;
    validate(&body)?;
    crate::api::idempotent(&c, &req, &body, || async {
        let id = Uuid::now_v7();
        let (key, sealed) = seal(&c, id, &body).await?;
        let now = crate::now_us();
        let mut tx = tx_of(&c, true).await?;
        on_tx!(&mut tx, |x| sqlx::query(
            "INSERT INTO conversation_templates (tenant_id, template_id, inbox_id, name, content, content_key, \
               version, created_us, updated_us) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)"
        )
        .bind(c.ctx.tenant().0)
        .bind(id)
        .bind(body.inbox_id)
        .bind(body.name.trim())
        .bind(&sealed)
        .bind(key)
        .bind(now)
        .execute(x)
        .await
        .map(|_| ()))
        .map_err(|e| store_err(db_error(e)))?;
        tx.commit().await.map_err(store_err)?;
        let t = to_dto(&c, &visible_one(&c, id).await?).await?;
        Ok(Done {
            status: StatusCode::CREATED,
            version: t.version,
            location: Some(format!("/v1/templates/{id}")),
            body: json(&t)?,
        })
    })
    .await
}

/// A template. `ETag` = its version.
#[utoipa::path(get, path = "/v1/templates/{template_id}", tag = "templates", security(("bearer" = [])),
    params(("template_id" = Uuid, Path)),
    responses((status = 200, body = dto::Template),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_template(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let t = to_dto(&c, &visible_one(&c, path.into_inner()).await?).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("ETag", etag(t.version)))
        .json(t))
}

/// Changes a template's name, subject or body (`If-Match` optional; the inbox can't change).
#[utoipa::path(put, path = "/v1/templates/{template_id}", tag = "templates", security(("bearer" = [])),
    request_body = dto::SaveTemplate,
    params(("template_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = dto::Template),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_template(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::SaveTemplate>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let body = body.into_inner();
    let current = visible_one(&c, id).await?;
    require_manage(&c, current.inbox_id)?;
    if body.inbox_id.is_some() && body.inbox_id != current.inbox_id {
        return Err(ApiError::unprocessable(
            "template_inbox_fixed",
            "a template stays with its inbox: create a new one instead",
        )
        .into());
    }
    validate(&body)?;
    let seen = if_match(&req)?;
    let (key, sealed) = seal(&c, id, &body).await?;
    let mut tx = tx_of(&c, true).await?;
    let changed = on_tx!(&mut tx, |x| sqlx::query(
        "UPDATE conversation_templates SET name = $1, content = $2, content_key = $3, version = version + 1, \
           updated_us = $4 WHERE tenant_id = $5 AND template_id = $6 AND ($7 IS NULL OR version = $7)"
    )
    .bind(body.name.trim())
    .bind(&sealed)
    .bind(key)
    .bind(crate::now_us())
    .bind(c.ctx.tenant().0)
    .bind(id)
    .bind(seen.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
    .execute(x)
    .await
    .map(|r| r.rows_affected()))
    .map_err(|e| store_err(db_error(e)))?;
    tx.commit().await.map_err(store_err)?;
    if changed == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_template",
            "The template changed",
        )
        .with_detail(format!(
            "the template is at version {}, load it again",
            current.version
        ))
        .into());
    }
    let t = to_dto(&c, &visible_one(&c, id).await?).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("ETag", etag(t.version)))
        .json(t))
}

/// Deletes a template.
#[utoipa::path(delete, path = "/v1/templates/{template_id}", tag = "templates", security(("bearer" = [])),
    params(("template_id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_template(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let current = visible_one(&c, id).await?;
    require_manage(&c, current.inbox_id)?;
    let mut tx = tx_of(&c, true).await?;
    on_tx!(&mut tx, |x| sqlx::query(
        "DELETE FROM conversation_templates WHERE tenant_id = $1 AND template_id = $2"
    )
    .bind(c.ctx.tenant().0)
    .bind(id)
    .execute(x)
    .await
    .map(|_| ()))
    .map_err(|e| store_err(db_error(e)))?;
    tx.commit().await.map_err(store_err)?;
    Ok(HttpResponse::NoContent().finish())
}

/// Fills a template in for a conversation and the caller: `{{contact.name}}` (the customer:
/// name, else address), `{{agent.name}}`, `{{agent.signature}}` (the agent's name and the
/// inbox's signature) and `{{inbox.name}}`.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/templates/{template_id}/render", tag = "templates", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path), ("template_id" = Uuid, Path)),
    responses((status = 200, body = dto::RenderedTemplate),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn render_conversation_template(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let (conversation, template) = path.into_inner();
    let loaded = c
        .svc
        .load(&c.ctx, conversation)
        .await
        .map_err(service_error)?;
    require(&c.access, &loaded.state, InboxRole::Read).map_err(service_error)?;
    let row = visible_one(&c, template).await?;
    let content = open(&c, &row).await?;
    let state = &loaded.state;
    let contact = state
        .reply_target
        .first()
        .map(|m| m.name.clone().unwrap_or_else(|| m.address.clone()));
    let agent = match c.access.user_id() {
        Some(u) => c
            .svc
            .directory()
            .get_user(&c.ctx, u)
            .await
            .ok()
            .map(|u| u.display_name),
        None => None,
    };
    let inbox = c
        .svc
        .directory()
        .get_inbox(&c.ctx, state.inbox_id)
        .await
        .ok();
    let signature = {
        let parts: Vec<String> = [
            agent.clone(),
            inbox.as_ref().and_then(|i| i.signature.clone()),
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .collect();
        (!parts.is_empty()).then(|| parts.join("\n"))
    };
    let inbox_name = inbox.map(|i| i.name);
    let value = |name: &str| match name {
        "contact.name" => contact.clone(),
        "agent.name" => agent.clone(),
        "agent.signature" => signature.clone(),
        "inbox.name" => inbox_name.clone(),
        _ => None,
    };
    Ok(HttpResponse::Ok().json(dto::RenderedTemplate {
        subject: content
            .subject
            .as_deref()
            .map(|s| render_template(s, value)),
        body: render_template(&content.body, value),
    }))
}

/// A template's inbox (`None` = the tenant's) and its opened `(subject, body)`, read through
/// `tx` (the `conversation.apply` command runs inside one). `None` when there is no such
/// template.
pub(crate) async fn load_in_tx(
    tx: &mut DbTx,
    keyring: &postvak_platform::crypto::Keyring,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<(Option<Uuid>, Option<String>, String)>, StoreError> {
    let row: Option<(Option<Uuid>, Vec<u8>, Uuid)> = on_tx!(tx, |x| sqlx::query(
        "SELECT inbox_id, content, content_key FROM conversation_templates \
         WHERE tenant_id = $1 AND template_id = $2"
    )
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(x)
    .await
    .and_then(|r| r
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .transpose()))
    .map_err(db_error)?;
    let Some((inbox, content, key)) = row else {
        return Ok(None);
    };
    let plain = keyring
        .open(tenant, key, &content, &aad(tenant, id))
        .await?;
    let c: Content =
        serde_json::from_slice(&plain).map_err(|e| StoreError::Serialization(e.to_string()))?;
    Ok(Some((inbox, c.subject, c.body)))
}
