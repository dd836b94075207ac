//! `/v1/webhooks` — tenant webhook subscriptions, their deliveries and redelivery (tenant
//! administrators only: `tenant_admin_required` otherwise) — and
//! `/v1/me/notification-preferences` (the calling user's). Needs `web::Data<Directory>` and the
//! shared authenticator as app data.

use crate::ssrf::{DestinationError, DestinationPolicy};
use crate::webhooks::{self, WebhookError};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::TenantContext;
use postvak_platform::http::ApiError;
use postvak_proto::Problem;
use postvak_proto::rest::notification as dto;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

/// Registers the notification service's `/v1` routes; webhooks may point only at public
/// addresses (no exceptions).
pub fn routes(cfg: &mut web::ServiceConfig) {
    routes_with(DestinationPolicy::default())(cfg);
}

/// The routes with the operator's webhook destination policy (`[webhooks] allow_private`).
pub fn routes_with(policy: DestinationPolicy) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(policy));
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
