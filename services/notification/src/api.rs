//! `/v1/webhooks` — tenant webhook subscriptions, their deliveries and redelivery (tenant
//! administrators only: `tenant_admin_required` otherwise) —, `/v1/inboxes/{id}/smtp-relay`
//! (an inbox's own SMTP relay; tenant administrators) and `/v1/me/notification-preferences`
//! (the calling user's). Needs `web::Data<Directory>` and the shared authenticator as app
//! data.

use crate::relays::{self, RelayConfig, RelayError, RelayPolicy, RelayWrite};
use crate::settings::SmtpSecurity;
use crate::ssrf::{DestinationError, DestinationPolicy};
use crate::webhooks::{self, WebhookError};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::TenantContext;
use postvak_platform::config::SecretString;
use postvak_platform::http::ApiError;
use postvak_platform::netguard::ResolveError;
use postvak_proto::Problem;
use postvak_proto::rest::notification as dto;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

/// Registers the notification service's `/v1` routes; webhooks and inbox relays may point
/// only at public addresses (no exceptions).
pub fn routes(cfg: &mut web::ServiceConfig) {
    routes_with(DestinationPolicy::default())(cfg);
}

/// The routes with the operator's webhook destination policy (`[webhooks] allow_private`);
/// inbox relays get public addresses only.
pub fn routes_with(policy: DestinationPolicy) -> impl FnOnce(&mut web::ServiceConfig) {
    routes_with_policies(policy, RelayPolicy::default())
}

/// The routes with the operator's policies for webhooks (`[webhooks] allow_private`) and inbox
/// relays (`[outbound_smtp] allow_private`).
pub fn routes_with_policies(
    webhooks: DestinationPolicy,
    relays: RelayPolicy,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(webhooks));
        cfg.app_data(web::Data::new(relays));
        register(cfg);
    }
}

fn register(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/webhooks", web::get().to(list_webhooks))
        .route("/v1/webhooks", web::post().to(create_webhook))
        .route(
            "/v1/webhooks/{webhook_id}",
            web::delete().to(delete_webhook),
        )
        .route(
            "/v1/webhooks/{webhook_id}/deliveries",
            web::get().to(list_webhook_deliveries),
        )
        .route(
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            web::post().to(redeliver_webhook_delivery),
        )
        .route(
            "/v1/inboxes/{inbox_id}/smtp-relay",
            web::get().to(get_smtp_relay),
        )
        .route(
            "/v1/inboxes/{inbox_id}/smtp-relay",
            web::put().to(put_smtp_relay),
        )
        .route(
            "/v1/inboxes/{inbox_id}/smtp-relay",
            web::delete().to(delete_smtp_relay),
        )
        .route(
            "/v1/me/notification-preferences",
            web::get().to(get_notification_preferences),
        )
        .route(
            "/v1/me/notification-preferences",
            web::put().to(set_notification_preferences),
        );
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid(d) => ApiError::unprocessable("invalid_webhook", d),
            WebhookError::Destination(d @ DestinationError::Forbidden(_)) => {
                ApiError::unprocessable("webhook_destination_forbidden", d.to_string())
            }
            WebhookError::Destination(d @ DestinationError::Unresolvable) => {
                ApiError::unprocessable("webhook_destination_unresolvable", d.to_string())
            }
            WebhookError::NotFound => ApiError::not_found(),
            WebhookError::Store(s) => s.into(),
        }
    }
}

async fn admin(dir: &Directory, auth: Authenticated) -> Result<TenantContext, ApiError> {
    let ctx = auth.0;
    dir.access(&ctx).await?.require_tenant_admin()?;
    Ok(ctx)
}

/// The tenant's webhook subscriptions.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = dto::WebhookList),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn list_webhooks(
    dir: web::Data<Directory>,
    auth: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let ctx = admin(&dir, auth).await?;
    let items = webhooks::list(&ctx).await?;
    Ok(HttpResponse::Ok().json(dto::WebhookList { items }))
}

/// Subscribes an endpoint to events (optionally of one inbox). The signing secret is in this
/// answer only.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    request_body = dto::CreateWebhook,
    responses((status = 201, body = dto::CreatedWebhook),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_webhook(
    dir: web::Data<Directory>,
    policy: web::Data<DestinationPolicy>,
    auth: Authenticated,
    body: web::Json<dto::CreateWebhook>,
) -> Result<HttpResponse, ApiError> {
    let ctx = admin(&dir, auth).await?;
    let created = webhooks::create(&ctx, &body, &policy).await?;
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header(("Location", format!("/v1/webhooks/{}", created.webhook.id)))
        .json(created))
}

/// Deletes a subscription; its pending deliveries end in the dead-letter list.
#[utoipa::path(delete, path = "/v1/webhooks/{webhook_id}", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = Uuid, Path)),
    responses((status = 204),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_webhook(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let ctx = admin(&dir, auth).await?;
    webhooks::delete(&ctx, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// At most this many, newest first (default 50, at most 500).
    pub limit: Option<u32>,
}

/// A subscription's deliveries, newest first; `state = dead` ones are the dead-letter list.
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = Uuid, Path), DeliveriesQuery),
    responses((status = 200, body = dto::WebhookDeliveryList),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_webhook_deliveries(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    query: web::Query<DeliveriesQuery>,
) -> Result<HttpResponse, ApiError> {
    let ctx = admin(&dir, auth).await?;
    let limit = i64::from(query.limit.unwrap_or(50).clamp(1, 500));
    let items = webhooks::deliveries(&ctx, path.into_inner(), limit).await?;
    Ok(HttpResponse::Ok().json(dto::WebhookDeliveryList { items }))
}

/// Sends a delivery again now, with the same `webhook-id` (a dead letter gets one more try).
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = Uuid, Path), ("delivery_id" = Uuid, Path)),
    responses((status = 202, body = dto::WebhookDelivery),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn redeliver_webhook_delivery(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let ctx = admin(&dir, auth).await?;
    let (webhook, delivery) = path.into_inner();
    let d = webhooks::redeliver(&ctx, webhook, delivery).await?;
    Ok(HttpResponse::build(StatusCode::ACCEPTED).json(d))
}

fn me(ctx: &TenantContext) -> Result<Uuid, ApiError> {
    crate::agents::user_of(ctx.principal()).ok_or_else(|| {
        ApiError::forbidden("user_required", "Users only")
            .with_detail("notification preferences belong to a user, not an API key")
    })
}

/// The caller's notification preferences: each, digest or off, and a mode for SLA alerts.
#[utoipa::path(get, path = "/v1/me/notification-preferences", tag = "notifications", security(("bearer" = [])),
    responses((status = 200, body = dto::NotificationPreferences),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn get_notification_preferences(auth: Authenticated) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    let user = me(&ctx)?;
    let p = crate::agents::preferences(&ctx, user).await?;
    Ok(HttpResponse::Ok().json(p))
}

/// Sets the caller's notification preferences.
#[utoipa::path(put, path = "/v1/me/notification-preferences", tag = "notifications", security(("bearer" = [])),
    request_body = dto::NotificationPreferences,
    responses((status = 200, body = dto::NotificationPreferences),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn set_notification_preferences(
    auth: Authenticated,
    body: web::Json<dto::NotificationPreferences>,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    let user = me(&ctx)?;
    crate::agents::set_preferences(&ctx, user, &body)
        .await?
        .map_err(|d| ApiError::unprocessable("invalid_preferences", d))?;
    Ok(HttpResponse::Ok().json(body.into_inner()))
}

impl From<RelayError> for ApiError {
    fn from(e: RelayError) -> Self {
        match e {
            RelayError::Invalid(d) => ApiError::unprocessable("invalid_smtp_relay", d),
            e @ RelayError::PasswordRequired => {
                ApiError::unprocessable("smtp_relay_password_required", e.to_string())
            }
            RelayError::Destination(e @ ResolveError::Forbidden(_)) => ApiError::unprocessable(
                "smtp_relay_host_forbidden",
                format!("{e}; the operator can allow a range with outbound_smtp.allow_private"),
            ),
            RelayError::Destination(e @ ResolveError::Unresolvable) => {
                ApiError::unprocessable("smtp_relay_host_unresolvable", e.to_string())
            }
            RelayError::Store(s) => s.into(),
        }
    }
}

/// A tenant administrator, and the inbox exists in the tenant (else 404).
async fn relay_admin(
    dir: &Directory,
    auth: Authenticated,
    inbox: Uuid,
) -> Result<TenantContext, ApiError> {
    let ctx = admin(dir, auth).await?;
    dir.get_inbox(&ctx, inbox).await?;
    Ok(ctx)
}

fn relay_view(r: &RelayConfig) -> dto::SmtpRelay {
    dto::SmtpRelay {
        inbox_id: r.inbox_id,
        host: r.host.clone(),
        port: r.port,
        security: relays::security_str(r.security).to_owned(),
        username: r.username.clone(),
        has_password: r.password.is_some(),
        revision: r.revision,
        created_at: postvak_platform::store::from_micros(r.created_us),
        updated_at: postvak_platform::store::from_micros(r.updated_us),
    }
}

fn relay_text(what: &str, v: &str, max: usize) -> Result<(), RelayError> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(RelayError::Invalid(format!(
            "{what} must be 1–{max} bytes without control characters"
        )));
    }
    Ok(())
}

/// Checks a `PUT` body (everything but where the host points).
fn relay_write(b: dto::PutSmtpRelay) -> Result<RelayWrite, RelayError> {
    let host = b.host.trim().to_ascii_lowercase();
    if host.is_empty()
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_' | '[' | ']'))
    {
        return Err(RelayError::Invalid(
            "host must be a DNS name or an IP address".into(),
        ));
    }
    let security = match b.security.as_deref() {
        None => SmtpSecurity::Starttls,
        Some(s) => relays::parse_security(s)
            .ok_or_else(|| RelayError::Invalid("security must be starttls, tls or none".into()))?,
    };
    let port = b.port.unwrap_or(match security {
        SmtpSecurity::Starttls => 587,
        SmtpSecurity::Tls => 465,
        SmtpSecurity::None => 25,
    });
    if port == 0 {
        return Err(RelayError::Invalid("port must be 1–65535".into()));
    }
    if let Some(u) = &b.username {
        relay_text("username", u, 320)?;
    }
    if let Some(p) = &b.password {
        relay_text("password", p, 1024)?;
    }
    if security == SmtpSecurity::None && (b.username.is_some() || b.password.is_some()) {
        return Err(RelayError::Invalid(
            "AUTH over a connection without TLS would send the password in clear: use starttls or tls".into(),
        ));
    }
    Ok(RelayWrite {
        host,
        port,
        security,
        username: b.username,
        password: b.password.map(SecretString::new),
    })
}

/// The inbox's own SMTP relay (404 when it sends through the platform's default).
#[utoipa::path(get, path = "/v1/inboxes/{inbox_id}/smtp-relay", tag = "notifications", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    responses((status = 200, body = dto::SmtpRelay),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_smtp_relay(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = relay_admin(&dir, auth, inbox).await?;
    let r = relays::get(&ctx, inbox)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(HttpResponse::Ok().json(relay_view(&r)))
}

/// Sends the inbox's replies through this relay from now on (replaces any earlier one). The
/// password is stored sealed and never returned; the change is recorded without it.
#[utoipa::path(put, path = "/v1/inboxes/{inbox_id}/smtp-relay", tag = "notifications", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    request_body = dto::PutSmtpRelay,
    responses((status = 200, body = dto::SmtpRelay),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_smtp_relay(
    dir: web::Data<Directory>,
    policy: web::Data<RelayPolicy>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<dto::PutSmtpRelay>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = relay_admin(&dir, auth, inbox).await?;
    let w = relay_write(body.into_inner())?;
    policy
        .0
        .check_host(&w.host, w.port)
        .await
        .map_err(RelayError::Destination)?;
    let r = relays::put(&ctx, inbox, w).await?;
    Ok(HttpResponse::Ok().json(relay_view(&r)))
}

/// The inbox sends through the platform's default relay again.
#[utoipa::path(delete, path = "/v1/inboxes/{inbox_id}/smtp-relay", tag = "notifications", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    responses((status = 204),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_smtp_relay(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = relay_admin(&dir, auth, inbox).await?;
    if !relays::delete(&ctx, inbox).await? {
        return Err(ApiError::not_found());
    }
    Ok(HttpResponse::NoContent().finish())
}
