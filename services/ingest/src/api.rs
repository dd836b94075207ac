//! REST: `POST /v1/inboxes/{inbox_id}/messages/raw` — a mail as `message/rfc822`, through the
//! same pipeline as SMTP. Idempotent twice over: the same mail is stored once per inbox
//! (content dedupe), and an `Idempotency-Key` reused with a different body is refused (422).

use crate::pipeline::{Ingestor, Source};
use crate::repo::{self, Claim};
use crate::settings::RawApiSettings;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use postvak_core::access::InboxRole;
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::Cells;
use postvak_platform::http::ApiError;
use postvak_proto::Problem;
use postvak_proto::events::ingest::{EnvelopeV1, RawMessageAccepted};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use uuid::Uuid;

/// Registers the ingest routes with default settings. Needs `web::Data<Cells>`,
/// `web::Data<Directory>` and the authenticator as app data (the binary registers all three);
/// a `web::Data<Ingestor>` is used when present (it caches the tenants' index keys).
pub fn routes(cfg: &mut web::ServiceConfig) {
    routes_with(RawApiSettings::default())(cfg)
}

/// Registers the ingest routes with explicit settings.
pub fn routes_with(settings: RawApiSettings) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.service(
            web::resource("/v1/inboxes/{inbox_id}/messages/raw")
                .app_data(web::Data::new(settings))
                .route(web::post().to(post_raw_message)),
        );
    }
}

/// Stores a raw mail (`message/rfc822`) in an inbox, threads it, and emits
/// `message.received`. 201 when stored, 200 when the same mail was already stored.
#[utoipa::path(post, path = "/v1/inboxes/{inbox_id}/messages/raw", tag = "ingest",
    params(("inbox_id" = Uuid, Path),
           ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and body are answered like the first call; the same key with another body is refused")),
    request_body(content = Vec<u8>, content_type = "message/rfc822", description = "The mail, exactly as it would arrive over SMTP"),
    security(("bearer" = [])),
    responses((status = 201, body = RawMessageAccepted, description = "Stored"),
              (status = 200, body = RawMessageAccepted, description = "Already stored: nothing new was written"),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 413, body = Problem, content_type = "application/problem+json"),
              (status = 415, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all, fields(tenant_id))]
pub async fn post_raw_message(
    req: HttpRequest,
    cells: web::Data<Cells>,
    directory: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let ctx = auth.0;
    tracing::Span::current().record("tenant_id", tracing::field::display(ctx.tenant()));
    let inbox = path.into_inner();
    // Posting mail into an inbox needs the `reply` permission on it (an API key's `write`
    // scope); none at all answers 404, like a missing inbox.
    directory
        .access(&ctx)
        .await?
        .require_inbox(inbox, InboxRole::Reply)?;
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if content_type != "message/rfc822" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
        )
        .with_detail("send the mail as Content-Type: message/rfc822"));
    }
    let limit = req
        .app_data::<web::Data<RawApiSettings>>()
        .map(|s| s.max_message_size)
        .unwrap_or_else(|| RawApiSettings::default().max_message_size);
    let body = read_body(payload, limit).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request("empty_message", "the body is empty"));
    }
    // Another tenant's inbox answers exactly like a missing one.
    if !repo::inbox_exists(cells.directory(), ctx.tenant(), inbox)
        .await
        .map_err(ApiError::from)?
    {
        return Err(ApiError::not_found());
    }
    // The binary may share one (it caches index keys); otherwise one per request.
    let ingestor = match req.app_data::<web::Data<Ingestor>>() {
        Some(i) => i.get_ref().clone(),
        None => Ingestor::new(cells.get_ref().clone()),
    };
    let idempotency_key = match req.headers().get("idempotency-key") {
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1–255 visible ASCII characters",
                    )
                })?;
            Some(k.to_owned())
        }
        None => None,
    };
    if let Some(k) = &idempotency_key {
        let index_key = ingestor.index_key(&ctx).await.map_err(internal)?;
        let request_hash = hex::encode(Sha256::digest(&body));
        let claim = repo::claim_idempotency_key(
            ctx.cell().db(),
            ctx.tenant(),
            inbox,
            &index_key.idempotency_hash(inbox, k),
            &request_hash,
        )
        .await
        .map_err(ApiError::from)?;
        if claim == Claim::Conflict {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different message",
            ));
        }
    }
    let raw = Arc::new(body);
    let parsed = Ingestor::parse(raw.clone()).await.map_err(internal)?;
    let envelope = EnvelopeV1 {
        peer: req.connection_info().peer_addr().map(str::to_owned),
        ..EnvelopeV1::default()
    };
    let d = ingestor
        .deliver_to_inbox(&ctx, inbox, &raw, &parsed, None, envelope, Source::Api)
        .await
        .map_err(internal)?;
    let body = RawMessageAccepted {
        message_id: d.message_id,
        inbox_id: d.inbox_id,
        conversation_id: d.conversation_id,
        new_thread: d.new_thread,
        duplicate: d.duplicate,
    };
    Ok(if d.duplicate {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::Created().json(body)
    })
}

fn internal(e: crate::pipeline::IngestError) -> ApiError {
    match e {
        crate::pipeline::IngestError::Store(s) => s.into(),
        other => ApiError::internal(&other),
    }
}

async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "message_too_large",
                "Message too large",
            )
            .with_detail(format!("the limit is {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
