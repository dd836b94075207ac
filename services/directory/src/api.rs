//! REST routes of the directory service.

use crate::{Directory, ServiceError};
use actix_web::{HttpResponse, web};
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::Principal;
use postvak_platform::http::ApiError;
use postvak_proto::Problem;
use postvak_proto::rest::{CreateInbox, Inbox, InboxPage, Me};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

/// Registers the directory's `/v1` routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/me", web::get().to(me))
        .route("/v1/inboxes", web::get().to(list_inboxes))
        .route("/v1/inboxes", web::post().to(create_inbox))
        .route("/v1/inboxes/{inbox_id}", web::get().to(get_inbox));
}

fn scopes(p: &Principal) -> Vec<String> {
    match p {
        Principal::ApiKey { scopes, .. } => scopes.clone(),
        Principal::User { .. } | Principal::Service { .. } => Vec::new(),
    }
}

/// Requires a scope (`admin` implies every scope, `write` implies `read`).
fn require(p: &Principal, scope: &str) -> Result<(), ApiError> {
    let have = scopes(p);
    let ok = have.iter().any(|s| {
        s == scope || s == "admin" || (scope == "read" && s == "write")
    });
    if ok || matches!(p, Principal::Service { .. }) {
        Ok(())
    } else {
        Err(ApiError::forbidden("insufficient_scope", "Insufficient scope")
            .with_detail(format!("this call needs the {scope:?} scope")))
    }
}

/// Who am I: the tenant and principal behind the credentials.
#[utoipa::path(get, path = "/v1/me", tag = "directory",
    security(("bearer" = [])),
    responses((status = 200, body = Me),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn me(dir: web::Data<Directory>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    Ok(HttpResponse::Ok().json(Me {
        tenant_id: ctx.tenant().0,
        tenant_name: dir.tenant_name(&ctx).await.map_err(ApiError::from)?,
        cell: ctx.cell().name.clone(),
        actor: ctx.principal().actor(),
        scopes: scopes(ctx.principal()),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1–200, default 50.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The tenant's inboxes, oldest first.
#[utoipa::path(get, path = "/v1/inboxes", tag = "directory",
    params(PageQuery),
    security(("bearer" = [])),
    responses((status = 200, body = InboxPage),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn list_inboxes(
    dir: web::Data<Directory>,
    auth: Authenticated,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    require(ctx.principal(), "read")?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 200"));
    }
    let after = match &q.cursor {
        Some(c) => Some(
            Uuid::try_parse(c)
                .map_err(|_| ApiError::bad_request("invalid_cursor", "cursor is not one we issued"))?,
        ),
        None => None,
    };
    // One more than asked tells whether there is a next page.
    let mut items = dir
        .list_inboxes(&ctx, None, after, limit + 1)
        .await
        .map_err(ApiError::from)?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|i| i.id.to_string())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(InboxPage { items, next_cursor }))
}

/// Creates an inbox with one or more addresses.
#[utoipa::path(post, path = "/v1/inboxes", tag = "directory",
    request_body = CreateInbox,
    security(("bearer" = [])),
    responses((status = 201, body = Inbox),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_inbox(
    dir: web::Data<Directory>,
    auth: Authenticated,
    body: web::Json<CreateInbox>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    require(ctx.principal(), "admin")?;
    let inbox = dir
        .create_inbox(&ctx, &body.name, &body.addresses)
        .await
        .map_err(ApiError::from)?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/inboxes/{}", inbox.id)))
        .json(inbox))
}

/// One inbox. Another tenant's inbox id answers 404 exactly like a missing one.
#[utoipa::path(get, path = "/v1/inboxes/{inbox_id}", tag = "directory",
    params(("inbox_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Inbox),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_inbox(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    require(ctx.principal(), "read")?;
    match dir.get_inbox(&ctx, path.into_inner()).await {
        Ok(i) => Ok(HttpResponse::Ok().json(i)),
        Err(ServiceError::NotFound) => Err(ApiError::not_found()),
        Err(e) => Err(e.into()),
    }
}
