//! REST routes of the directory service. Every route checks the caller's role: tenant
//! administration needs a tenant admin/owner (or an admin API key); inbox routes need a
//! permission on that inbox, and an inbox the caller can't see answers 404 like a missing one.

use crate::identity::{Access, SessionKind, Team, User};
use crate::{Directory, ServiceError};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::{HttpRequest, HttpResponse, web};
use postvak_core::access::{Grant, Grantee, InboxRole, TenantRole};
use postvak_platform::auth::{Authenticated, SESSION_COOKIE};
use postvak_platform::cell::{Principal, TenantContext};
use postvak_platform::http::ApiError;
use postvak_proto::Problem;
use postvak_proto::events::identity::InboxUpdatedV1;
use postvak_proto::rest;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

/// The platform operator's token (`security.platform_admin_token`), app data.
#[derive(Debug, Clone, Default)]
pub struct PlatformAdminToken(pub Option<String>);

/// Registers the directory's `/v1` routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/me", web::get().to(me))
        .route("/v1/auth/login", web::post().to(login))
        .route("/v1/auth/logout", web::post().to(logout))
        .route("/v1/tenants", web::get().to(list_tenants))
        .route("/v1/tenants", web::post().to(create_tenant))
        .route("/v1/security", web::get().to(get_security))
        .route("/v1/security", web::put().to(put_security))
        .route("/v1/users", web::get().to(list_users))
        .route("/v1/users", web::post().to(create_user))
        .route("/v1/users/{user_id}", web::get().to(get_user))
        .route("/v1/users/{user_id}", web::patch().to(update_user))
        .route("/v1/users/{user_id}/password", web::put().to(set_password))
        .route("/v1/users/{user_id}/totp", web::post().to(enroll_totp))
        .route(
            "/v1/users/{user_id}/totp/confirm",
            web::post().to(confirm_totp),
        )
        .route("/v1/teams", web::get().to(list_teams))
        .route("/v1/teams", web::post().to(create_team))
        .route(
            "/v1/teams/{team_id}/members/{user_id}",
            web::put().to(add_team_member),
        )
        .route(
            "/v1/teams/{team_id}/members/{user_id}",
            web::delete().to(remove_team_member),
        )
        .route("/v1/inboxes", web::get().to(list_inboxes))
        .route("/v1/inboxes", web::post().to(create_inbox))
        .route("/v1/inboxes/{inbox_id}", web::get().to(get_inbox))
        .route("/v1/inboxes/{inbox_id}", web::patch().to(update_inbox))
        .route(
            "/v1/inboxes/{inbox_id}/members",
            web::get().to(list_members),
        )
        .route("/v1/inboxes/{inbox_id}/members", web::post().to(add_member))
        .route(
            "/v1/inboxes/{inbox_id}/members/{member_id}",
            web::delete().to(remove_member),
        )
        .route("/v1/api-keys", web::get().to(list_api_keys))
        .route("/v1/api-keys", web::post().to(create_api_key))
        .route("/v1/api-keys/{key_id}", web::delete().to(revoke_api_key));
}

fn scopes(p: &Principal) -> Vec<String> {
    match p {
        Principal::ApiKey { scopes, .. } => scopes.clone(),
        Principal::User { .. } | Principal::Service { .. } => Vec::new(),
    }
}

async fn access(dir: &Directory, ctx: &TenantContext) -> Result<Access, ApiError> {
    dir.access(ctx).await
}

fn user_dto(u: User) -> rest::User {
    rest::User {
        id: u.id,
        email: u.email,
        display_name: u.display_name,
        role: u.role.as_str().to_owned(),
        disabled: u.disabled,
        totp_enabled: u.totp_enabled,
        created_at: u.created_at,
    }
}

fn team_dto(t: Team) -> rest::Team {
    rest::Team {
        id: t.id,
        name: t.name,
        skills: t.skills,
        members: t.members,
    }
}

fn member_dto(g: Grant) -> rest::InboxMember {
    let (user_id, team_id) = match g.grantee {
        Grantee::User(u) => (Some(u), None),
        Grantee::Team(t) => (None, Some(t)),
    };
    rest::InboxMember {
        id: g.grant_id,
        inbox_id: g.inbox_id,
        user_id,
        team_id,
        role: g.role.as_str().to_owned(),
        valid_from: g.valid_from,
        valid_until: g.valid_until,
    }
}

fn parse_role(s: &str) -> Result<TenantRole, ApiError> {
    TenantRole::parse(s).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_role",
            format!("{s:?} is not a role: use owner, admin, agent or viewer"),
        )
    })
}

fn err(e: ServiceError) -> ApiError {
    e.into()
}

/// A user acts on themselves, or an administrator acts on anyone of the tenant.
fn self_or_admin(a: &Access, user: Uuid) -> Result<(), ApiError> {
    if a.user_id() == Some(user) {
        return Ok(());
    }
    a.require_tenant_admin()
}

/// Only tenant owners may create or promote owners.
fn may_assign(a: &Access, role: TenantRole) -> Result<(), ApiError> {
    let is_owner = matches!(
        a.principal,
        Principal::User {
            role: TenantRole::Owner,
            ..
        }
    );
    if role == TenantRole::Owner && !is_owner {
        return Err(ApiError::forbidden("owner_required", "Owners only")
            .with_detail("only an owner can make someone an owner"));
    }
    Ok(())
}

/// Who am I: the tenant and principal behind the credentials.
#[utoipa::path(get, path = "/v1/me", tag = "directory", security(("bearer" = [])),
    responses((status = 200, body = rest::Me),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn me(dir: web::Data<Directory>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    Ok(HttpResponse::Ok().json(rest::Me {
        tenant_id: ctx.tenant().0,
        tenant_name: dir.tenant_name(&ctx).await.map_err(err)?,
        cell: ctx.cell().name.clone(),
        actor: ctx.principal().actor(),
        scopes: scopes(ctx.principal()),
    }))
}

/// Local login with email, password and (where enrolled or required) a one-time code.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = rest::Login,
    responses((status = 200, body = rest::Session),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn login(
    dir: web::Data<Directory>,
    body: web::Json<rest::Login>,
) -> Result<HttpResponse, ApiError> {
    let kind = match body.session.as_deref() {
        None | Some("bearer") => SessionKind::Bearer,
        Some("cookie") => SessionKind::Cookie,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_session_kind",
                format!("session must be \"bearer\" or \"cookie\", not {other:?}"),
            ));
        }
    };
    let s = dir
        .login_password(
            postvak_platform::store::TenantId(body.tenant_id),
            &body.email,
            &body.password,
            body.totp.as_deref(),
            kind,
        )
        .await?;
    let dto = rest::Session {
        token: (kind == SessionKind::Bearer).then(|| s.token.clone()),
        user_id: s.user_id,
        expires_at: s.expires_at,
    };
    let mut resp = HttpResponse::Ok();
    if kind == SessionKind::Cookie {
        resp.cookie(
            Cookie::build(SESSION_COOKIE, s.token)
                .path("/")
                .http_only(true)
                .secure(true)
                .same_site(SameSite::Lax)
                .max_age(actix_web::cookie::time::Duration::seconds(
                    crate::identity::SESSION_TTL.whole_seconds(),
                ))
                .finish(),
        );
    }
    Ok(resp.json(dto))
}

/// Ends the session the request was made with (bearer session token or cookie).
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "Logged out"),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn logout(
    dir: web::Data<Directory>,
    req: HttpRequest,
    _auth: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let bearer = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = bearer.or_else(|| req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()));
    match token {
        Some(t) if t.starts_with("pvs_") => dir.logout(&t).await.map_err(err)?,
        _ => {
            return Err(ApiError::bad_request(
                "not_a_session",
                "logout ends a session; revoke API keys with DELETE /v1/api-keys/{id}",
            ));
        }
    }
    let mut expired = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    expired.make_removal();
    Ok(HttpResponse::NoContent().cookie(expired).finish())
}

fn platform_admin(req: &HttpRequest, token: &PlatformAdminToken) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    match &token.0 {
        Some(expected) if crate::constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::unauthorized()
            .with_detail("tenant administration needs the platform administrator token")),
    }
}

/// Every tenant (platform administrator only).
#[utoipa::path(get, path = "/v1/tenants", tag = "platform", security(("bearer" = [])),
    responses((status = 200, body = Vec<rest::Tenant>),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn list_tenants(
    dir: web::Data<Directory>,
    token: web::Data<PlatformAdminToken>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    platform_admin(&req, &token)?;
    Ok(HttpResponse::Ok().json(dir.list_tenants().await.map_err(err)?))
}

/// Creates a tenant with its first owner and an admin API key (platform administrator only).
#[utoipa::path(post, path = "/v1/tenants", tag = "platform", request_body = rest::CreateTenant,
    security(("bearer" = [])),
    responses((status = 201, body = rest::CreatedTenant),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_tenant(
    dir: web::Data<Directory>,
    token: web::Data<PlatformAdminToken>,
    req: HttpRequest,
    body: web::Json<rest::CreateTenant>,
) -> Result<HttpResponse, ApiError> {
    platform_admin(&req, &token)?;
    postvak_core::directory::normalise_address(&body.owner_email).map_err(|e| err(e.into()))?;
    let tenant = dir
        .create_tenant(&body.name, body.cell.as_deref())
        .await
        .map_err(err)?;
    let ctx = dir
        .cells()
        .context(
            tenant,
            Principal::Service {
                name: "platform-admin",
            },
        )
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let owner = dir
        .create_user(&ctx, &body.owner_email, &body.owner_name, TenantRole::Owner)
        .await
        .map_err(err)?;
    let key = dir
        .issue_api_key(&ctx, "bootstrap", &["admin".to_owned()], None, None)
        .await
        .map_err(err)?;
    Ok(HttpResponse::Created().json(rest::CreatedTenant {
        tenant: rest::Tenant {
            id: tenant.0,
            name: body.name.trim().to_owned(),
            cell: ctx.cell().name.clone(),
        },
        owner: user_dto(owner),
        api_key: rest::IssuedApiKey {
            id: key.key_id,
            token: key.token,
        },
    }))
}

/// The tenant's security settings.
#[utoipa::path(get, path = "/v1/security", tag = "directory", security(("bearer" = [])),
    responses((status = 200, body = rest::SecuritySettings),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn get_security(
    dir: web::Data<Directory>,
    auth: Authenticated,
) -> Result<HttpResponse, ApiError> {
    access(&dir, &auth.0).await?.require_tenant_admin()?;
    let mfa_required = dir.mfa_required_for(&auth.0).await.map_err(err)?;
    Ok(HttpResponse::Ok().json(rest::SecuritySettings { mfa_required }))
}

/// Changes the tenant's security settings (MFA for local logins).
#[utoipa::path(put, path = "/v1/security", tag = "directory", request_body = rest::SecuritySettings,
    security(("bearer" = [])),
    responses((status = 200, body = rest::SecuritySettings),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn put_security(
    dir: web::Data<Directory>,
    auth: Authenticated,
    body: web::Json<rest::SecuritySettings>,
) -> Result<HttpResponse, ApiError> {
    access(&dir, &auth.0).await?.require_tenant_admin()?;
    dir.set_mfa_required(&auth.0, body.mfa_required)
        .await
        .map_err(err)?;
    Ok(HttpResponse::Ok().json(body.into_inner()))
}

/// The tenant's users.
#[utoipa::path(get, path = "/v1/users", tag = "directory", security(("bearer" = [])),
    responses((status = 200, body = Vec<rest::User>),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn list_users(
    dir: web::Data<Directory>,
    auth: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let users = dir.list_users(&auth.0, None).await.map_err(err)?;
    Ok(HttpResponse::Ok().json(users.into_iter().map(user_dto).collect::<Vec<_>>()))
}

/// Creates a user (tenant admin; only an owner creates owners).
#[utoipa::path(post, path = "/v1/users", tag = "directory", request_body = rest::CreateUser,
    security(("bearer" = [])),
    responses((status = 201, body = rest::User),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_user(
    dir: web::Data<Directory>,
    auth: Authenticated,
    body: web::Json<rest::CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let a = access(&dir, &auth.0).await?;
    a.require_tenant_admin()?;
    let role = parse_role(body.role.as_deref().unwrap_or("agent"))?;
    may_assign(&a, role)?;
    if let Some(pw) = &body.password
        && pw.chars().count() < 12
    {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "a password needs at least 12 characters",
        ));
    }
    let user = dir
        .create_user(&auth.0, &body.email, &body.display_name, role)
        .await
        .map_err(err)?;
    if let Some(pw) = &body.password {
        dir.set_password(&auth.0, user.id, pw).await.map_err(err)?;
    }
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/users/{}", user.id)))
        .json(user_dto(user)))
}

/// One user.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "directory",
    params(("user_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = rest::User),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_user(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let user = dir
        .get_user(&auth.0, path.into_inner())
        .await
        .map_err(err)?;
    Ok(HttpResponse::Ok().json(user_dto(user)))
}

/// Changes a user's role or disables them (tenant admin).
#[utoipa::path(patch, path = "/v1/users/{user_id}", tag = "directory",
    params(("user_id" = Uuid, Path)), request_body = rest::UpdateUser, security(("bearer" = [])),
    responses((status = 200, body = rest::User),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_user(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<rest::UpdateUser>,
) -> Result<HttpResponse, ApiError> {
    let a = access(&dir, &auth.0).await?;
    a.require_tenant_admin()?;
    let role = body.role.as_deref().map(parse_role).transpose()?;
    let target = dir.get_user(&auth.0, *path).await.map_err(err)?;
    if let Some(r) = role {
        may_assign(&a, r)?;
    }
    if target.role == TenantRole::Owner {
        may_assign(&a, TenantRole::Owner)?;
    }
    let user = dir
        .update_user(&auth.0, path.into_inner(), role, body.disabled)
        .await
        .map_err(err)?;
    Ok(HttpResponse::Ok().json(user_dto(user)))
}

/// Sets a user's local password (the user themselves or a tenant admin).
#[utoipa::path(put, path = "/v1/users/{user_id}/password", tag = "directory",
    params(("user_id" = Uuid, Path)), request_body = rest::SetPassword, security(("bearer" = [])),
    responses((status = 204, description = "Password set"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn set_password(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<rest::SetPassword>,
) -> Result<HttpResponse, ApiError> {
    let a = access(&dir, &auth.0).await?;
    self_or_admin(&a, *path)?;
    dir.set_password(&auth.0, path.into_inner(), &body.password)
        .await
        .map_err(err)?;
    Ok(HttpResponse::NoContent().finish())
}

/// Starts enrolling a one-time code generator (the user themselves or a tenant admin).
#[utoipa::path(post, path = "/v1/users/{user_id}/totp", tag = "directory",
    params(("user_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = rest::TotpEnrollment),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn enroll_totp(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let a = access(&dir, &auth.0).await?;
    self_or_admin(&a, *path)?;
    let (secret, otpauth_url) = dir
        .enroll_totp(&auth.0, path.into_inner())
        .await
        .map_err(err)?;
    Ok(HttpResponse::Ok().json(rest::TotpEnrollment {
        secret,
        otpauth_url,
    }))
}

/// Confirms the enrolled generator with a current code; from then on logins need a code.
#[utoipa::path(post, path = "/v1/users/{user_id}/totp/confirm", tag = "directory",
    params(("user_id" = Uuid, Path)), request_body = rest::TotpCode, security(("bearer" = [])),
    responses((status = 204, description = "Enrolled"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn confirm_totp(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<rest::TotpCode>,
) -> Result<HttpResponse, ApiError> {
    let a = access(&dir, &auth.0).await?;
    self_or_admin(&a, *path)?;
    dir.confirm_totp(&auth.0, path.into_inner(), &body.code)
        .await
        .map_err(err)?;
    Ok(HttpResponse::NoContent().finish())
}

/// The tenant's teams.
#[utoipa::path(get, path = "/v1/teams", tag = "directory", security(("bearer" = [])),
    responses((status = 200, body = Vec<rest::Team>),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn list_teams(
    dir: web::Data<Directory>,
    auth: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let teams = dir.list_teams(&auth.0, None).await.map_err(err)?;
    Ok(HttpResponse::Ok().json(teams.into_iter().map(team_dto).collect::<Vec<_>>()))
}

/// Creates a team (tenant admin).
#[utoipa::path(post, path = "/v1/teams", tag = "directory", request_body = rest::CreateTeam,
    security(("bearer" = [])),
    responses((status = 201, body = rest::Team),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_team(
    dir: web::Data<Directory>,
    auth: Authenticated,
    body: web::Json<rest::CreateTeam>,
) -> Result<HttpResponse, ApiError> {
    access(&dir, &auth.0).await?.require_tenant_admin()?;
    let team = dir
        .create_team(&auth.0, &body.name, &body.skills)
        .await
        .map_err(err)?;
    Ok(HttpResponse::Created().json(team_dto(team)))
}

/// Adds a user to a team (tenant admin).
#[utoipa::path(put, path = "/v1/teams/{team_id}/members/{user_id}", tag = "directory",
    params(("team_id" = Uuid, Path), ("user_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = rest::Team),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn add_team_member(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    team_membership(&dir, auth, path.into_inner(), true).await
}

/// Removes a user from a team (tenant admin).
#[utoipa::path(delete, path = "/v1/teams/{team_id}/members/{user_id}", tag = "directory",
    params(("team_id" = Uuid, Path), ("user_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = rest::Team),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn remove_team_member(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    team_membership(&dir, auth, path.into_inner(), false).await
}

async fn team_membership(
    dir: &Directory,
    auth: Authenticated,
    (team, user): (Uuid, Uuid),
    add: bool,
) -> Result<HttpResponse, ApiError> {
    access(dir, &auth.0).await?.require_tenant_admin()?;
    let t = dir
        .set_team_member(&auth.0, team, user, add)
        .await
        .map_err(err)?;
    Ok(HttpResponse::Ok().json(team_dto(t)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1–200, default 50.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The inboxes the caller may read, oldest first.
#[utoipa::path(get, path = "/v1/inboxes", tag = "directory", params(PageQuery),
    security(("bearer" = [])),
    responses((status = 200, body = rest::InboxPage),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn list_inboxes(
    dir: web::Data<Directory>,
    auth: Authenticated,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    let a = access(&dir, &ctx).await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 200",
        ));
    }
    let after =
        match &q.cursor {
            Some(c) => Some(Uuid::try_parse(c).map_err(|_| {
                ApiError::bad_request("invalid_cursor", "cursor is not one we issued")
            })?),
            None => None,
        };
    let only = if a.administers_tenant() {
        None
    } else {
        Some(a.readable(&dir.inbox_ids(&ctx).await.map_err(err)?))
    };
    // One more than asked tells whether there is a next page.
    let mut items = dir
        .list_inboxes(&ctx, only, after, limit + 1)
        .await
        .map_err(err)?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|i| i.id.to_string())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(rest::InboxPage { items, next_cursor }))
}

/// Creates an inbox with one or more addresses (tenant admin).
#[utoipa::path(post, path = "/v1/inboxes", tag = "directory", request_body = rest::CreateInbox,
    security(("bearer" = [])),
    responses((status = 201, body = rest::Inbox),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_inbox(
    dir: web::Data<Directory>,
    auth: Authenticated,
    body: web::Json<rest::CreateInbox>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    access(&dir, &ctx).await?.require_tenant_admin()?;
    let inbox = dir
        .create_inbox(&ctx, &body.name, &body.addresses)
        .await
        .map_err(err)?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/inboxes/{}", inbox.id)))
        .json(inbox))
}

/// One inbox. An inbox of another tenant, or one the caller holds no permission on, answers
/// 404 exactly like a missing one.
#[utoipa::path(get, path = "/v1/inboxes/{inbox_id}", tag = "directory",
    params(("inbox_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = rest::Inbox),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_inbox(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    let inbox = dir.get_inbox(&ctx, *path).await.map_err(err)?;
    access(&dir, &ctx)
        .await?
        .require_inbox(inbox.id, InboxRole::Read)?;
    Ok(HttpResponse::Ok().json(inbox))
}

/// Changes an inbox's name, signature, time zone or business hours (inbox admin).
#[utoipa::path(patch, path = "/v1/inboxes/{inbox_id}", tag = "directory",
    params(("inbox_id" = Uuid, Path)), request_body = rest::UpdateInbox, security(("bearer" = [])),
    responses((status = 200, body = rest::Inbox),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_inbox(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<rest::UpdateInbox>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    let inbox = dir.get_inbox(&ctx, *path).await.map_err(err)?;
    access(&dir, &ctx)
        .await?
        .require_inbox(inbox.id, InboxRole::Admin)?;
    let b = body.into_inner();
    let updated = dir
        .update_inbox(
            &ctx,
            inbox.id,
            InboxUpdatedV1 {
                inbox_id: inbox.id,
                name: b.name,
                signature: b.signature,
                timezone: b.timezone,
                business_hours: b.business_hours,
            },
        )
        .await
        .map_err(err)?;
    Ok(HttpResponse::Ok().json(updated))
}

/// The inbox's members (grants), including ones not yet or no longer in force.
#[utoipa::path(get, path = "/v1/inboxes/{inbox_id}/members", tag = "directory",
    params(("inbox_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Vec<rest::InboxMember>),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_members(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    let inbox = dir.get_inbox(&ctx, *path).await.map_err(err)?;
    access(&dir, &ctx)
        .await?
        .require_inbox(inbox.id, InboxRole::Read)?;
    let grants = dir.grants(&ctx, Some(inbox.id)).await.map_err(err)?;
    Ok(HttpResponse::Ok().json(grants.into_iter().map(member_dto).collect::<Vec<_>>()))
}

/// Grants a user or team a role on the inbox, optionally from/until a time (handover: the old
/// grant ends by itself at `valid_until`).
#[utoipa::path(post, path = "/v1/inboxes/{inbox_id}/members", tag = "directory",
    params(("inbox_id" = Uuid, Path)), request_body = rest::CreateInboxMember,
    security(("bearer" = [])),
    responses((status = 201, body = rest::InboxMember),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn add_member(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<rest::CreateInboxMember>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    let inbox = dir.get_inbox(&ctx, *path).await.map_err(err)?;
    access(&dir, &ctx)
        .await?
        .require_inbox(inbox.id, InboxRole::Admin)?;
    let grantee = match (body.user_id, body.team_id) {
        (Some(u), None) => Grantee::User(u),
        (None, Some(t)) => Grantee::Team(t),
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_grantee",
                "give exactly one of user_id and team_id",
            ));
        }
    };
    let role = InboxRole::parse(&body.role).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_role",
            format!(
                "{:?} is not an inbox role: use read, reply or admin",
                body.role
            ),
        )
    })?;
    let g = dir
        .grant_inbox(
            &ctx,
            inbox.id,
            grantee,
            role,
            body.valid_from,
            body.valid_until,
        )
        .await
        .map_err(|e| match e {
            // A grantee that doesn't exist is a bad request body, not a missing inbox.
            ServiceError::NotFound => {
                ApiError::unprocessable("unknown_grantee", "no such user or team in this tenant")
            }
            other => err(other),
        })?;
    Ok(HttpResponse::Created().json(member_dto(g)))
}

/// Revokes a membership at once.
#[utoipa::path(delete, path = "/v1/inboxes/{inbox_id}/members/{member_id}", tag = "directory",
    params(("inbox_id" = Uuid, Path), ("member_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Revoked"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn remove_member(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    let (inbox_id, grant) = path.into_inner();
    let inbox = dir.get_inbox(&ctx, inbox_id).await.map_err(err)?;
    access(&dir, &ctx)
        .await?
        .require_inbox(inbox.id, InboxRole::Admin)?;
    dir.revoke_grant(&ctx, inbox.id, grant).await.map_err(err)?;
    Ok(HttpResponse::NoContent().finish())
}

/// The tenant's API keys (tenant admin).
#[utoipa::path(get, path = "/v1/api-keys", tag = "directory", security(("bearer" = [])),
    responses((status = 200, body = Vec<rest::ApiKey>),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn list_api_keys(
    dir: web::Data<Directory>,
    auth: Authenticated,
) -> Result<HttpResponse, ApiError> {
    access(&dir, &auth.0).await?.require_tenant_admin()?;
    Ok(HttpResponse::Ok().json(dir.list_api_keys(&auth.0).await.map_err(err)?))
}

/// Issues an API key (tenant admin). The token is in this answer only.
#[utoipa::path(post, path = "/v1/api-keys", tag = "directory", request_body = rest::CreateApiKey,
    security(("bearer" = [])),
    responses((status = 201, body = rest::IssuedApiKey),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_api_key(
    dir: web::Data<Directory>,
    auth: Authenticated,
    body: web::Json<rest::CreateApiKey>,
) -> Result<HttpResponse, ApiError> {
    access(&dir, &auth.0).await?.require_tenant_admin()?;
    let key = dir
        .issue_api_key(
            &auth.0,
            &body.name,
            &body.scopes,
            body.inboxes.as_deref(),
            body.expires_at,
        )
        .await
        .map_err(err)?;
    Ok(HttpResponse::Created().json(rest::IssuedApiKey {
        id: key.key_id,
        token: key.token,
    }))
}

/// Revokes an API key at once (tenant admin).
#[utoipa::path(delete, path = "/v1/api-keys/{key_id}", tag = "directory",
    params(("key_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Revoked"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn revoke_api_key(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    access(&dir, &auth.0).await?.require_tenant_admin()?;
    dir.revoke_api_key(&auth.0, path.into_inner())
        .await
        .map_err(err)?;
    Ok(HttpResponse::NoContent().finish())
}
