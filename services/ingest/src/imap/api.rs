//! REST: `/v1/inboxes/{inbox_id}/imap-accounts[/{account_id}]` — IMAP accounts whose mail is
//! imported into the inbox, with their sync status and quarantined messages. Inbox admins
//! only; the password or token is accepted, sealed, and never returned.

use super::store::{self, AccountRow, AccountWrite};
use super::{AfterImport, AuthKind, Credentials, ReimportError, Secret, TlsMode, valid_folder};
use crate::settings::ImapSettings;
use actix_web::{HttpResponse, web};
use postvak_core::access::InboxRole;
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::{Cells, TenantContext};
use postvak_platform::http::ApiError;
use postvak_platform::netguard::{AddressPolicy, ResolveError};
use postvak_platform::store::NewEvent;
use postvak_proto::Problem;
use postvak_proto::events::ingest as ev;
use postvak_proto::rest::imap as dto;
use time::OffsetDateTime;
use uuid::Uuid;

/// Registers the routes. Needs `web::Data<Cells>`, `web::Data<Directory>` and the
/// authenticator as app data; `settings.allow_plaintext` decides whether `tls = "plain"` is
/// accepted.
pub fn routes_with(settings: ImapSettings) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let settings = web::Data::new(settings);
        let reimport_settings = settings.clone();
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
        )
        .service(
            web::resource(
                "/v1/inboxes/{inbox_id}/imap-accounts/{account_id}/quarantine/{uid_validity}/{uid}/reimport",
            )
            .app_data(reimport_settings)
            .route(web::post().to(reimport_quarantined_message)),
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

/// The host must resolve to public addresses only, unless `imap.allow_private` lets its range
/// through (the connector checks again at every connection).
async fn check_destination(settings: &ImapSettings, host: &str, port: u16) -> Result<(), ApiError> {
    let policy = AddressPolicy::new(&settings.allow_private).map_err(|e| ApiError::internal(&e))?;
    match policy.check_host(host, port).await {
        Ok(()) => Ok(()),
        Err(e @ ResolveError::Forbidden(_)) => Err(ApiError::unprocessable(
            "imap_host_forbidden",
            format!("{host}: {e}; the operator can allow a range with imap.allow_private"),
        )),
        Err(e @ ResolveError::Unresolvable) => Err(ApiError::unprocessable(
            "imap_host_unresolvable",
            format!("{host}: {e}"),
        )),
    }
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

/// An account's settings as its audit events record them: everything but the secret.
fn audited(w: &AccountWrite, username: &str) -> ev::ImapAccountSettingsV1 {
    ev::ImapAccountSettingsV1 {
        account_id: w.account_id,
        inbox_id: w.inbox_id,
        host: w.host.clone(),
        port: w.port,
        tls: w.tls.as_str().to_owned(),
        auth: w.auth.as_str().to_owned(),
        username: username.to_owned(),
        folder: w.folder.clone(),
        after_import: w.after_import.to_string(),
        enabled: w.enabled,
    }
}

fn reimported_view(r: &store::Reimported) -> dto::ReimportedMessage {
    dto::ReimportedMessage {
        message_id: r.message_id,
        conversation_id: r.conversation_id,
        duplicate: r.duplicate,
        reimported_at: time_of(r.at),
    }
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
            reimported: q.reimported.map(|r| reimported_view(&r)),
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
    check_destination(&settings, &host, port).await?;
    let account_id = Uuid::now_v7();
    let username = b.username;
    let (credentials_key, credentials) = store::seal_credentials(
        &ctx,
        account_id,
        &Credentials {
            username: username.clone(),
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
    let audit = NewEvent::from_payload(
        ev::IMAP_ACCOUNT_CREATED,
        1,
        &ev::ImapAccountCreatedV1 {
            account: audited(&write, &username),
        },
    )?;
    store::insert_account(&ctx, &write, audit).await?;
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
    if host != cur.host || port != cur.port {
        check_destination(&settings, &host, port).await?;
    }
    let reset = host != cur.host
        || port != cur.port
        || username != cur.credentials.username
        || folder != cur.folder;
    let secret_changed = b
        .secret
        .as_deref()
        .is_some_and(|s| s != cur.credentials.secret.expose());
    let secret = b
        .secret
        .map(Secret::new)
        .unwrap_or_else(|| cur.credentials.secret.clone());
    let (credentials_key, credentials) = store::seal_credentials(
        &ctx,
        account,
        &Credentials {
            username: username.clone(),
            secret,
        },
    )
    .await?;
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
    let changed: Vec<String> = [
        ("host", write.host != cur.host),
        ("port", write.port != cur.port),
        ("tls", write.tls != cur.tls),
        ("auth", write.auth != cur.auth),
        ("username", username != cur.credentials.username),
        ("secret", secret_changed),
        ("folder", write.folder != cur.folder),
        ("after_import", write.after_import != cur.after_import),
        ("enabled", write.enabled != cur.enabled),
    ]
    .into_iter()
    .filter(|(_, c)| *c)
    .map(|(f, _)| f.to_owned())
    .collect();
    let audit = NewEvent::from_payload(
        ev::IMAP_ACCOUNT_UPDATED,
        1,
        &ev::ImapAccountUpdatedV1 {
            account: audited(&write, &username),
            changed,
            position_reset: reset,
        },
    )?;
    if !store::update_account(&ctx, &write, reset, audit).await? {
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
    let audit = NewEvent::from_payload(
        ev::IMAP_ACCOUNT_DELETED,
        1,
        &ev::ImapAccountDeletedV1 {
            account_id: account,
            inbox_id: inbox,
        },
    )?;
    if !store::delete_account(&ctx, account, audit).await? {
        return Err(ApiError::not_found());
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Imports a quarantined message by request, e.g. after `imap.max_message_size` was raised:
/// fetched again from the account's server and delivered like any other (the size limit
/// applies; the check whether it looks like a mail does not). Asking again answers the same
/// delivery without fetching again.
#[utoipa::path(post,
    path = "/v1/inboxes/{inbox_id}/imap-accounts/{account_id}/quarantine/{uid_validity}/{uid}/reimport",
    tag = "ingest",
    params(("inbox_id" = Uuid, Path), ("account_id" = Uuid, Path),
           ("uid_validity" = u32, Path), ("uid" = u32, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = dto::ReimportedMessage),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              (status = 502, body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn reimport_quarantined_message(
    req: actix_web::HttpRequest,
    cells: web::Data<Cells>,
    directory: web::Data<Directory>,
    settings: web::Data<ImapSettings>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid, u32, u32)>,
) -> Result<HttpResponse, ApiError> {
    use actix_web::http::StatusCode;
    let (inbox, account, uid_validity, uid) = path.into_inner();
    let ctx = inbox_admin(&cells, &directory, auth, inbox).await?;
    load(&ctx, inbox, account).await?;
    // The binary shares one ingestor (index keys cached, one commit stage per cell).
    let ingestor = match req.app_data::<web::Data<crate::Ingestor>>() {
        Some(i) => i.get_ref().clone(),
        None => crate::Ingestor::new(cells.get_ref().clone()),
    };
    let connector = super::ImapConnector::new(ingestor, settings.get_ref().clone())
        .map_err(|e| ApiError::internal(&e))?;
    match connector.reimport(&ctx, account, uid_validity, uid).await {
        Ok(done) => Ok(HttpResponse::Ok().json(reimported_view(&done))),
        Err(ReimportError::NotQuarantined) => Err(ApiError::not_found()),
        Err(e @ ReimportError::UidValidityChanged { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "imap_uidvalidity_changed",
            "The folder was recreated",
        )
        .with_detail(e.to_string())),
        Err(e @ ReimportError::Gone) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "imap_message_gone",
            "The message is no longer at the source",
        )
        .with_detail(e.to_string())),
        Err(e @ ReimportError::TooLarge { .. }) => Err(ApiError::unprocessable(
            "imap_message_too_large",
            e.to_string(),
        )),
        Err(ReimportError::Store(e)) => Err(e.into()),
        Err(ReimportError::Sync(e)) => {
            tracing::warn!(error = %e, %account, code = "imap_reimport_failed", "re-import: the IMAP server failed");
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "imap_server_failed",
                "The IMAP server could not be reached, refused the login or failed",
            ))
        }
        Err(ReimportError::Pipeline(e)) => {
            tracing::warn!(error = %e, %account, code = "imap_reimport_failed", "re-import: the pipeline failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ingest_unavailable",
                "The message could not be stored now; try again",
            ))
        }
    }
}
