//! REST: `/v1/inboxes/{inbox_id}/imap-accounts[/{account_id}]` — IMAP accounts whose mail is
//! imported into the inbox, with their sync status and quarantined messages. Inbox admins
//! only; the password or token is accepted, sealed, and never returned.

use super::store::{self, AccountRow, AccountWrite};
use super::{AfterImport, AuthKind, Credentials, Secret, TlsMode, valid_folder};
use crate::settings::ImapSettings;
use actix_web::{HttpResponse, web};
use postvak_core::access::InboxRole;
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::{Cells, TenantContext};
use postvak_platform::http::ApiError;
use postvak_proto::Problem;
use postvak_proto::rest::imap as dto;
use time::OffsetDateTime;
use uuid::Uuid;

/// Registers the routes. Needs `web::Data<Cells>`, `web::Data<Directory>` and the
/// authenticator as app data; `settings.allow_plaintext` decides whether `tls = "plain"` is
/// accepted.
pub fn routes_with(settings: ImapSettings) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let settings = web::Data::new(settings);
        cfg.service(
            web::resource("/v1/inboxes/{inbox_id}/imap-accounts")
                .app_data(settings.clone())
                .route(web::get().to(list_imap_accounts))
                .route(web::post().to(create_imap_account)),
        )
        .service(
            web::resource("/v1/inboxes/{inbox_id}/imap-accounts/{account_id}")
                .app_data(settings)
                .route(web::get().to(get_imap_account))
                .route(web::patch().to(update_imap_account))
                .route(web::delete().to(delete_imap_account)),
        );
    }
}

/// The caller must administer the inbox, and the inbox must exist in its tenant.
async fn inbox_admin(
    cells: &Cells,
    directory: &Directory,
    auth: Authenticated,
    inbox: Uuid,
) -> Result<TenantContext, ApiError> {
    let ctx = auth.0;
    directory
        .access(&ctx)
        .await?
        .require_inbox(inbox, InboxRole::Admin)?;
    if !store::inbox_exists(cells.directory(), ctx.tenant(), inbox).await? {
        return Err(ApiError::not_found());
    }
    Ok(ctx)
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_imap_account", detail)
}

fn check_host(h: &str) -> Result<String, ApiError> {
    let h = h.trim().to_ascii_lowercase();
    if h.is_empty()
        || h.len() > 253
        || !h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_' | '[' | ']'))
    {
        return Err(invalid("host must be a DNS name or an IP address"));
    }
    Ok(h)
}

fn check_text(what: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > max || v.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err(invalid(format!(
            "{what} must be 1–{max} bytes without line breaks"
        )));
    }
    Ok(())
}

fn check_tls(v: &str, settings: &ImapSettings) -> Result<TlsMode, ApiError> {
    let t = TlsMode::parse(v).ok_or_else(|| invalid("tls must be tls, starttls or plain"))?;
    if t == TlsMode::Plain && !settings.allow_plaintext {
        return Err(ApiError::unprocessable(
            "plaintext_not_allowed",
            "tls = plain sends the password unencrypted; this server does not allow it",
        ));
    }
    Ok(t)
}

fn check_port(p: u16) -> Result<u16, ApiError> {
    if p == 0 {
        return Err(invalid("port must be 1–65535"));
    }
    Ok(p)
}

fn check_folder(f: &str) -> Result<(), ApiError> {
    if !valid_folder(f) {
        return Err(invalid(
            "folder must be 1–255 characters without quotes, backslashes or control characters",
        ));
    }
    Ok(())
}

fn check_after_import(v: &str) -> Result<AfterImport, ApiError> {
    AfterImport::parse(v)
        .ok_or_else(|| invalid("after_import must be keep, mark_seen, move:<folder> or delete"))
}

fn time_of(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

async fn view(ctx: &TenantContext, row: &AccountRow) -> Result<dto::ImapAccount, ApiError> {
    let cfg = row.open(ctx).await?;
    let quarantined = store::quarantined(ctx.cell().db(), ctx.tenant(), row.account_id, 100)
        .await?
        .into_iter()
        .map(|q| dto::QuarantinedMessage {
            uid_validity: q.uid_validity,
            uid: q.uid,
            reason: q.reason,
            detail: q.detail,
            size: q.size,
            quarantined_at: time_of(q.at),
        })
        .collect();
    Ok(dto::ImapAccount {
        id: row.account_id,
        inbox_id: row.inbox_id,
        host: row.host.clone(),
        port: cfg.port,
        tls: row.tls.clone(),
        username: cfg.credentials.username,
        auth: row.auth.clone(),
        folder: row.folder.clone(),
        after_import: row.after_import.clone(),
        enabled: row.enabled,
        sync: dto::ImapSyncStatus {
            status: if row.enabled {
                row.status.clone()
            } else {
                "disabled".into()
            },
            uid_validity: row.uid_validity.and_then(|v| u32::try_from(v).ok()),
            last_uid: u32::try_from(row.last_uid).unwrap_or(0),
            imported: u64::try_from(row.imported).unwrap_or(0),
            last_error: row.last_error.clone(),
            last_error_at: row.last_error_at.map(time_of),
            last_sync_at: row.last_sync_at.map(time_of),
            quarantined,
        },
        created_at: time_of(row.created_at),
        updated_at: time_of(row.updated_at),
    })
}

async fn load(ctx: &TenantContext, inbox: Uuid, account: Uuid) -> Result<AccountRow, ApiError> {
    store::get_account(ctx.cell().db(), ctx.tenant(), account)
        .await?
        .filter(|r| r.inbox_id == inbox)
        .ok_or_else(ApiError::not_found)
}

/// The inbox's IMAP accounts with their sync status.
#[utoipa::path(get, path = "/v1/inboxes/{inbox_id}/imap-accounts", tag = "ingest",
    params(("inbox_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = dto::ImapAccountList),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_imap_accounts(
    cells: web::Data<Cells>,
    directory: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_admin(&cells, &directory, auth, inbox).await?;
    let mut items = Vec::new();
    for row in store::list_accounts(ctx.cell().db(), ctx.tenant(), inbox).await? {
        items.push(view(&ctx, &row).await?);
    }
    Ok(HttpResponse::Ok().json(dto::ImapAccountList { items }))
}

/// Connects an IMAP account to the inbox: its mail is imported from then on (the folder's
/// existing mail first).
#[utoipa::path(post, path = "/v1/inboxes/{inbox_id}/imap-accounts", tag = "ingest",
    params(("inbox_id" = Uuid, Path)),
    request_body = dto::CreateImapAccount,
    security(("bearer" = [])),
    responses((status = 201, body = dto::ImapAccount),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_imap_account(
    cells: web::Data<Cells>,
    directory: web::Data<Directory>,
    settings: web::Data<ImapSettings>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<dto::CreateImapAccount>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_admin(&cells, &directory, auth, inbox).await?;
    let b = body.into_inner();
    let host = check_host(&b.host)?;
    let tls = check_tls(b.tls.as_deref().unwrap_or("tls"), &settings)?;
    let port = check_port(b.port.unwrap_or(tls.default_port()))?;
    let auth = AuthKind::parse(b.auth.as_deref().unwrap_or("password"))
        .ok_or_else(|| invalid("auth must be password or xoauth2"))?;
    check_text("username", &b.username, 320)?;
    check_text("secret", &b.secret, 8192)?;
    let folder = b.folder.unwrap_or_else(|| "INBOX".to_owned());
    check_folder(&folder)?;
    let after_import = check_after_import(b.after_import.as_deref().unwrap_or("keep"))?;
    let account_id = Uuid::now_v7();
    let (credentials_key, credentials) = store::seal_credentials(
        &ctx,
        account_id,
        &Credentials {
            username: b.username,
            secret: Secret::new(b.secret),
        },
    )
    .await?;
    let write = AccountWrite {
        account_id,
        inbox_id: inbox,
        host,
        port,
        tls,
        auth,
        credentials,
        credentials_key,
        folder,
        after_import,
        enabled: b.enabled.unwrap_or(true),
    };
    store::insert_account(ctx.cell().db(), ctx.tenant(), &write).await?;
    let row = load(&ctx, inbox, account_id).await?;
    Ok(HttpResponse::Created().json(view(&ctx, &row).await?))
}

/// One IMAP account with its sync status and the messages it quarantined.
#[utoipa::path(get, path = "/v1/inboxes/{inbox_id}/imap-accounts/{account_id}", tag = "ingest",
    params(("inbox_id" = Uuid, Path), ("account_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = dto::ImapAccount),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_imap_account(
    cells: web::Data<Cells>,
    directory: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (inbox, account) = path.into_inner();
    let ctx = inbox_admin(&cells, &directory, auth, inbox).await?;
    let row = load(&ctx, inbox, account).await?;
    Ok(HttpResponse::Ok().json(view(&ctx, &row).await?))
}

/// Changes an account. A new host, username or folder starts the sync from the folder's
/// first message again (mail already imported is recognised and not stored twice).
#[utoipa::path(patch, path = "/v1/inboxes/{inbox_id}/imap-accounts/{account_id}", tag = "ingest",
    params(("inbox_id" = Uuid, Path), ("account_id" = Uuid, Path)),
    request_body = dto::UpdateImapAccount,
    security(("bearer" = [])),
    responses((status = 200, body = dto::ImapAccount),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_imap_account(
    cells: web::Data<Cells>,
    directory: web::Data<Directory>,
    settings: web::Data<ImapSettings>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<dto::UpdateImapAccount>,
) -> Result<HttpResponse, ApiError> {
    let (inbox, account) = path.into_inner();
    let ctx = inbox_admin(&cells, &directory, auth, inbox).await?;
    let row = load(&ctx, inbox, account).await?;
    let cur = row.open(&ctx).await?;
    let b = body.into_inner();
    let host = match &b.host {
        Some(h) => check_host(h)?,
        None => cur.host.clone(),
    };
    let tls = match &b.tls {
        Some(t) => check_tls(t, &settings)?,
        None => cur.tls,
    };
    let port = check_port(b.port.unwrap_or(cur.port))?;
    let auth = match &b.auth {
        Some(a) => AuthKind::parse(a).ok_or_else(|| invalid("auth must be password or xoauth2"))?,
        None => cur.auth,
    };
    if let Some(u) = &b.username {
        check_text("username", u, 320)?;
    }
    if let Some(s) = &b.secret {
        check_text("secret", s, 8192)?;
    }
    let folder = b.folder.clone().unwrap_or_else(|| cur.folder.clone());
    check_folder(&folder)?;
    let after_import = match &b.after_import {
        Some(a) => check_after_import(a)?,
        None => cur.after_import.clone(),
    };
    let username = b
        .username
        .clone()
        .unwrap_or_else(|| cur.credentials.username.clone());
    let reset = host != cur.host
        || port != cur.port
        || username != cur.credentials.username
        || folder != cur.folder;
    let secret = b
        .secret
        .map(Secret::new)
        .unwrap_or_else(|| cur.credentials.secret.clone());
    let (credentials_key, credentials) =
        store::seal_credentials(&ctx, account, &Credentials { username, secret }).await?;
    let write = AccountWrite {
        account_id: account,
        inbox_id: inbox,
        host,
        port,
        tls,
        auth,
        credentials,
        credentials_key,
        folder,
        after_import,
        enabled: b.enabled.unwrap_or(cur.enabled),
    };
    if !store::update_account(ctx.cell().db(), ctx.tenant(), &write, reset).await? {
        return Err(ApiError::not_found());
    }
    let row = load(&ctx, inbox, account).await?;
    Ok(HttpResponse::Ok().json(view(&ctx, &row).await?))
}

/// Disconnects an account: nothing more is imported from it; what was imported stays.
#[utoipa::path(delete, path = "/v1/inboxes/{inbox_id}/imap-accounts/{account_id}", tag = "ingest",
    params(("inbox_id" = Uuid, Path), ("account_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 204),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_imap_account(
    cells: web::Data<Cells>,
    directory: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (inbox, account) = path.into_inner();
    let ctx = inbox_admin(&cells, &directory, auth, inbox).await?;
    load(&ctx, inbox, account).await?;
    if !store::delete_account(ctx.cell().db(), ctx.tenant(), account).await? {
        return Err(ApiError::not_found());
    }
    Ok(HttpResponse::NoContent().finish())
}
