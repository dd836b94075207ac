//! Draft providers (ADR 0016): a tenant registers an HTTP endpoint (`/v1/draft-providers`,
//! tenant admins) that is asked for a suggested reply whenever a customer writes; the answer
//! becomes a shared draft marked `suggested`, and a reply sent from it is counted
//! (`draft.suggestion_accepted`).
//!
//! - The `conversation-suggest` consumer queues one request per enabled provider of the
//!   message's inbox (`draft_suggestion_queue`, through the consumer's transaction). Only
//!   messages that arrived after the provider was registered are queued, so a replay of the
//!   log never asks about old mail.
//! - The worker makes the requests outside any transaction, several at once but at most
//!   [`PER_TENANT`] per tenant, each bounded by `timeout_ms`; a slow provider holds only its
//!   own tenant's slots. The request carries the conversation's subject, the customer and the
//!   last messages, signed like our webhooks (Standard Webhooks, the provider's own secret).
//!   `200` + `{body, subject?}` → a draft (its id derived from provider and message, so a
//!   repeat after a crash writes nothing twice) and `draft.suggested`; `204` → nothing;
//!   anything else is retried `max_attempts` times with backoff, then left with its error.
//! - Destinations must be public (`postvak_platform::netguard`, the webhooks' rule): checked
//!   at registration, and at every connection by the client's resolver.

use crate::api::{Call, Failure, call, service_error};
use crate::{Conversations, now_us};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::{Cell, Cells, Principal, TenantContext};
use postvak_platform::consumer::{EventHandler, HandlerError, WakeAfterCommit, run_consumer};
use postvak_platform::db::{Db, DbTx, db_error};
use postvak_platform::http::ApiError;
use postvak_platform::netguard::{AddressPolicy, ResolveError};
use postvak_platform::on_tx;
use postvak_platform::store::{
    ExpectedVersion, KeyScope, NewEvent, RecordedEvent, StoreError, StreamRef, TenantId,
    from_micros, micros,
};
use postvak_proto::Problem;
use postvak_proto::events::conversation::{self as cev, MessageV1};
use postvak_proto::events::draft::{self as dev, DraftSuggestedV1, SuggestionAcceptedV1};
use postvak_proto::rest::conversation::Mailbox;
use postvak_proto::rest::draft_providers as dto;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Durable consumer name.
pub const SUGGEST_CONSUMER: &str = "conversation-suggest";

const SERVICE: Principal = Principal::Service {
    name: "conversation",
};

/// Requests in flight for one tenant at once.
const PER_TENANT: usize = 2;
/// Messages sent as context.
const CONTEXT_MESSAGES: usize = 10;
/// One message's text in the context, in bytes.
const CONTEXT_TEXT: usize = 16 * 1024;
/// Largest suggestion accepted, in bytes (a draft's limit).
const MAX_SUGGESTION: usize = 256 * 1024;

/// `[draft_providers]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuggestSettings {
    /// One request's limit, connection included.
    pub timeout_ms: u64,
    /// Attempts before a request is given up (left in the queue with its error).
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    /// Requests in flight over all tenants.
    pub concurrency: usize,
    /// Address ranges providers may reach although not public (as `[webhooks] allow_private`).
    pub allow_private: Vec<String>,
}

impl Default for SuggestSettings {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            max_attempts: 3,
            retry_base_ms: 5_000,
            concurrency: 16,
            allow_private: Vec::new(),
        }
    }
}

/// The destination rule of the API (registered as app data; public addresses only when absent).
#[derive(Debug, Clone, Default)]
pub struct ProviderPolicy(pub AddressPolicy);

/// Registers the `/v1/draft-providers` routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/draft-providers", web::get().to(list_providers))
        .route("/v1/draft-providers", web::post().to(create_provider))
        .route(
            "/v1/draft-providers/{provider_id}",
            web::get().to(get_provider),
        )
        .route(
            "/v1/draft-providers/{provider_id}",
            web::put().to(update_provider),
        )
        .route(
            "/v1/draft-providers/{provider_id}",
            web::delete().to(delete_provider),
        );
}

fn secret_aad(tenant: TenantId, provider: Uuid) -> Vec<u8> {
    let mut a = b"postvak.draft_provider_secret".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(provider.as_bytes());
    a
}

/// `webhook-signature` for a body (Standard Webhooks: `v1,<base64 HMAC-SHA256>` of
/// `id.timestamp.body` under the secret's key).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| format!("bad secret: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| format!("bad secret: {e}"))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The stream of one suggested draft.
pub fn suggestion_stream(draft: Uuid) -> StreamRef {
    StreamRef::new(dev::STREAM_DRAFT_SUGGESTION, format!("suggestion-{draft}"))
}

/// The draft a provider's answer to a message becomes: the same id on every attempt.
fn draft_id(provider: Uuid, message: Uuid) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"postvak.suggested_draft");
    h.update(provider.as_bytes());
    h.update(message.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

// ---------------------------------------------------------------------------------------------
// API

#[derive(Debug, Clone)]
struct ProviderRow {
    id: Uuid,
    inbox_id: Option<Uuid>,
    url: String,
    secret: Vec<u8>,
    secret_key: Uuid,
    enabled: bool,
    created_us: i64,
    updated_us: i64,
}

const COLUMNS: &str =
    "provider_id, inbox_id, url, secret, secret_key, enabled, created_us, updated_us";

fn row_of<R: Row>(r: &R) -> Result<ProviderRow, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    Uuid: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<Uuid>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    bool: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ProviderRow {
        id: r.try_get(0)?,
        inbox_id: r.try_get(1)?,
        url: r.try_get(2)?,
        secret: r.try_get(3)?,
        secret_key: r.try_get(4)?,
        enabled: r.try_get(5)?,
        created_us: r.try_get(6)?,
        updated_us: r.try_get(7)?,
    })
}

fn to_dto(r: &ProviderRow) -> dto::DraftProvider {
    dto::DraftProvider {
        id: r.id,
        url: r.url.clone(),
        inbox_id: r.inbox_id,
        enabled: r.enabled,
        created_at: from_micros(r.created_us),
        updated_at: from_micros(r.updated_us),
    }
}

async fn fetch(ctx: &TenantContext, id: Option<Uuid>) -> Result<Vec<ProviderRow>, StoreError> {
    let t = ctx.tenant();
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM draft_providers WHERE tenant_id = $1 \
         AND ($2 IS NULL OR provider_id = $2) ORDER BY created_us, provider_id"
    ));
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let rows = on_tx!(&mut tx, |c| sqlx::query(sql)
        .bind(t.0)
        .bind(id)
        .fetch_all(c)
        .await
        .and_then(|rows| rows.iter().map(row_of).collect::<Result<Vec<_>, _>>()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows)
}

fn store_err(e: StoreError) -> Failure {
    service_error(e.into())
}

/// Checks URL syntax and destination; 422 with a stable code otherwise.
async fn check_url(policy: &AddressPolicy, url: &str) -> Result<String, Failure> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| {
        Failure::Api(ApiError::unprocessable(
            "invalid_draft_provider_url",
            format!("not a URL: {e}"),
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Failure::Api(ApiError::unprocessable(
            "invalid_draft_provider_url",
            "the URL must be http or https with a host",
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Failure::Api(ApiError::unprocessable(
            "invalid_draft_provider_url",
            "the URL must not carry credentials (requests are signed instead)",
        )));
    }
    let host = parsed.host_str().unwrap_or_default();
    let port = parsed.port_or_known_default().unwrap_or(443);
    match policy.check_host(host, port).await {
        Ok(()) => Ok(parsed.to_string()),
        Err(ResolveError::Forbidden(ip)) => Err(Failure::Api(ApiError::unprocessable(
            "draft_provider_destination_forbidden",
            format!("{ip} is not a public address (loopback, private, link-local or reserved)"),
        ))),
        Err(ResolveError::Unresolvable) => Err(Failure::Api(ApiError::unprocessable(
            "draft_provider_destination_unresolvable",
            "the provider's host does not resolve",
        ))),
    }
}

async fn check_inbox(c: &Call, dir: &Directory, inbox: Option<Uuid>) -> Result<(), Failure> {
    if let Some(i) = inbox {
        dir.get_inbox(&c.ctx, i).await.map_err(|_| {
            Failure::Api(ApiError::unprocessable(
                "unknown_inbox",
                format!("the tenant has no inbox {i}"),
            ))
        })?;
    }
    Ok(())
}

fn policy_of(p: Option<web::Data<ProviderPolicy>>) -> AddressPolicy {
    p.map(|p| p.0.clone()).unwrap_or_default()
}

/// The tenant's draft providers (tenant admins).
#[utoipa::path(get, path = "/v1/draft-providers", tag = "draft-providers", security(("bearer" = [])),
    responses((status = 200, body = dto::DraftProviderList),
              (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn list_providers(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    c.access.require_tenant_admin().map_err(Failure::Api)?;
    let items = fetch(&c.ctx, None)
        .await
        .map_err(store_err)?
        .iter()
        .map(to_dto)
        .collect();
    Ok(HttpResponse::Ok().json(dto::DraftProviderList { items }))
}

/// Registers a draft provider; its signing secret is in this answer only.
#[utoipa::path(post, path = "/v1/draft-providers", tag = "draft-providers", security(("bearer" = [])),
    request_body = dto::CreateDraftProvider,
    responses((status = 201, body = dto::CreatedDraftProvider),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_provider(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    policy: Option<web::Data<ProviderPolicy>>,
    auth: Authenticated,
    body: web::Json<dto::CreateDraftProvider>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    c.access.require_tenant_admin().map_err(Failure::Api)?;
    let body = body.into_inner();
    let url = check_url(&policy_of(policy), &body.url).await?;
    check_inbox(&c, &dir, body.inbox_id).await?;
    let (t, id) = (c.ctx.tenant(), Uuid::now_v7());
    let secret = format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 32]>()));
    let (key, sealed) = c
        .ctx
        .cell()
        .store
        .keyring()
        .seal(t, &KeyScope::Tenant, secret.as_bytes(), &secret_aad(t, id))
        .await
        .map_err(|e| store_err(e.into()))?;
    let now = now_us();
    let mut tx = c
        .ctx
        .cell()
        .db()
        .tenant_tx(t, true)
        .await
        .map_err(store_err)?;
    on_tx!(&mut tx, |x| sqlx::query(
        "INSERT INTO draft_providers (tenant_id, provider_id, inbox_id, url, secret, secret_key, \
         enabled, created_us, updated_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
    )
    .bind(t.0)
    .bind(id)
    .bind(body.inbox_id)
    .bind(&url)
    .bind(&sealed)
    .bind(key)
    .bind(body.enabled.unwrap_or(true))
    .bind(now)
    .execute(x)
    .await
    .map(|_| ()))
    .map_err(|e| store_err(db_error(e)))?;
    tx.commit().await.map_err(store_err)?;
    let row = fetch(&c.ctx, Some(id)).await.map_err(store_err)?;
    let provider = row
        .first()
        .map(to_dto)
        .ok_or_else(|| Failure::Api(ApiError::not_found()))?;
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header(("Location", format!("/v1/draft-providers/{id}")))
        .json(dto::CreatedDraftProvider { provider, secret }))
}

/// One draft provider.
#[utoipa::path(get, path = "/v1/draft-providers/{provider_id}", tag = "draft-providers", security(("bearer" = [])),
    params(("provider_id" = Uuid, Path)),
    responses((status = 200, body = dto::DraftProvider),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_provider(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    c.access.require_tenant_admin().map_err(Failure::Api)?;
    let rows = fetch(&c.ctx, Some(path.into_inner()))
        .await
        .map_err(store_err)?;
    match rows.first() {
        Some(r) => Ok(HttpResponse::Ok().json(to_dto(r))),
        None => Err(ApiError::not_found().into()),
    }
}

/// Replaces a draft provider's URL, inbox and switch (the secret stays).
#[utoipa::path(put, path = "/v1/draft-providers/{provider_id}", tag = "draft-providers", security(("bearer" = [])),
    params(("provider_id" = Uuid, Path)),
    request_body = dto::UpdateDraftProvider,
    responses((status = 200, body = dto::DraftProvider),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_provider(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    policy: Option<web::Data<ProviderPolicy>>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<dto::UpdateDraftProvider>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    c.access.require_tenant_admin().map_err(Failure::Api)?;
    let (id, body) = (path.into_inner(), body.into_inner());
    let url = check_url(&policy_of(policy), &body.url).await?;
    check_inbox(&c, &dir, body.inbox_id).await?;
    let t = c.ctx.tenant();
    let mut tx = c
        .ctx
        .cell()
        .db()
        .tenant_tx(t, true)
        .await
        .map_err(store_err)?;
    let n = on_tx!(&mut tx, |x| sqlx::query(
        "UPDATE draft_providers SET url = $1, inbox_id = $2, enabled = $3, updated_us = $4 \
         WHERE tenant_id = $5 AND provider_id = $6"
    )
    .bind(&url)
    .bind(body.inbox_id)
    .bind(body.enabled)
    .bind(now_us())
    .bind(t.0)
    .bind(id)
    .execute(x)
    .await
    .map(|r| r.rows_affected()))
    .map_err(|e| store_err(db_error(e)))?;
    tx.commit().await.map_err(store_err)?;
    if n == 0 {
        return Err(ApiError::not_found().into());
    }
    let rows = fetch(&c.ctx, Some(id)).await.map_err(store_err)?;
    match rows.first() {
        Some(r) => Ok(HttpResponse::Ok().json(to_dto(r))),
        None => Err(ApiError::not_found().into()),
    }
}

/// Removes a draft provider; requests still queued for it are dropped.
#[utoipa::path(delete, path = "/v1/draft-providers/{provider_id}", tag = "draft-providers", security(("bearer" = [])),
    params(("provider_id" = Uuid, Path)),
    responses((status = 204),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_provider(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    c.access.require_tenant_admin().map_err(Failure::Api)?;
    let (t, id) = (c.ctx.tenant(), path.into_inner());
    let mut tx = c
        .ctx
        .cell()
        .db()
        .tenant_tx(t, true)
        .await
        .map_err(store_err)?;
    let n = on_tx!(&mut tx, |x| sqlx::query(
        "DELETE FROM draft_providers WHERE tenant_id = $1 AND provider_id = $2"
    )
    .bind(t.0)
    .bind(id)
    .execute(x)
    .await
    .map(|r| r.rows_affected()))
    .map_err(|e| store_err(db_error(e)))?;
    on_tx!(&mut tx, |x| sqlx::query(
        "DELETE FROM draft_suggestion_queue WHERE tenant_id = $1 AND provider_id = $2"
    )
    .bind(t.0)
    .bind(id)
    .execute(x)
    .await
    .map(|_| ()))
    .map_err(|e| store_err(db_error(e)))?;
    tx.commit().await.map_err(store_err)?;
    if n == 0 {
        return Err(ApiError::not_found().into());
    }
    Ok(HttpResponse::NoContent().finish())
}

// ---------------------------------------------------------------------------------------------
// Replies sent from drafts

/// Refuses a reply naming a draft the conversation does not have (422 `unknown_draft`).
pub(crate) async fn check_draft(
    ctx: &TenantContext,
    conversation: Uuid,
    draft: Uuid,
) -> Result<(), Failure> {
    if crate::drafts::exists(ctx, conversation, draft)
        .await
        .map_err(store_err)?
    {
        Ok(())
    } else {
        Err(Failure::Api(ApiError::unprocessable(
            "unknown_draft",
            format!("the conversation has no draft {draft}"),
        )))
    }
}

/// After a reply was queued from `draft`: the draft goes, and a suggested one is counted as
/// accepted (once: the suggestion's stream takes one acceptance after its `draft.suggested`).
/// The reply stands whatever happens here; a failure is logged.
pub(crate) async fn reply_sent_from_draft(
    ctx: &TenantContext,
    conversation: Uuid,
    inbox: Uuid,
    draft: Uuid,
    reply: Uuid,
    by: Option<Uuid>,
) {
    let taken = match crate::drafts::take_sent(ctx, conversation, draft).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, %draft, "cannot remove the draft a reply was sent from");
            return;
        }
    };
    let Some((provider, version)) = taken else {
        return;
    };
    let accepted = SuggestionAcceptedV1 {
        draft_id: draft,
        provider_id: provider,
        conversation_id: conversation,
        inbox_id: inbox,
        reply_id: reply,
        edited: version > 1,
        by,
        at_us: now_us(),
    };
    let event = match NewEvent::from_payload(dev::SUGGESTION_ACCEPTED, 1, &accepted) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode draft.suggestion_accepted");
            return;
        }
    };
    match ctx
        .append(
            &suggestion_stream(draft),
            ExpectedVersion::Exact(1),
            vec![event],
        )
        .await
    {
        Ok(_) => metrics::counter!("postvak_draft_suggestions_total", "outcome" => "accepted")
            .increment(1),
        Err(StoreError::Conflict { .. }) => {}
        Err(e) => tracing::warn!(error = %e, %draft, "cannot record an accepted suggestion"),
    }
}

// ---------------------------------------------------------------------------------------------
// Consumer and worker

/// The consumer that queues requests and the worker that makes them, for one cell.
pub fn start(
    cells: &Cells,
    cell: Arc<Cell>,
    settings: SuggestSettings,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let policy = match AddressPolicy::new(&settings.allow_private) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "draft_providers.allow_private is invalid; no suggestions will be asked for");
            return Vec::new();
        }
    };
    // reqwest is built without a default TLS provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.timeout_ms.max(1)))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(GuardedResolver {
            policy: policy.clone(),
        })
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the draft provider HTTP client");
            return Vec::new();
        }
    };
    let wake = Arc::new(Notify::new());
    let handler = Arc::new(SuggestHandler {
        wake: WakeAfterCommit::new(wake.clone()),
    });
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn({
        let (store, bus, cancel) = (cell.store.clone(), cell.bus.clone(), cancel.clone());
        async move {
            run_consumer(store, bus, handler, cancel).await;
        }
    }));
    let worker = Arc::new(Worker {
        service: Conversations::new(cells.clone()),
        ingestor: postvak_ingest::Ingestor::new(cells.clone()),
        client,
        policy,
        settings,
    });
    tasks.push(tokio::spawn(run_worker(worker, cell, wake, cancel)));
    tasks
}

/// Resolves names, keeps the permitted addresses, fails when none is left.
#[derive(Debug, Clone)]
struct GuardedResolver {
    policy: AddressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ok: Vec<SocketAddr> = policy
                .resolve(&host, 0)
                .await
                .map_err(|e| format!("{host}: {e}"))?;
            let addrs: reqwest::dns::Addrs = Box::new(ok.into_iter());
            Ok(addrs)
        })
    }
}

struct SuggestHandler {
    wake: WakeAfterCommit,
}

#[async_trait]
impl EventHandler for SuggestHandler {
    fn name(&self) -> &str {
        SUGGEST_CONSUMER
    }

    /// Its writes go through the transaction only: a fetch commits once (ADR 0030).
    fn batch_transactions(&self) -> bool {
        true
    }

    fn committed(&self) {
        self.wake.committed();
    }

    fn stream_types(&self) -> Vec<String> {
        vec![cev::STREAM_CONVERSATION.to_owned()]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        if event.event_type != cev::MESSAGE_RECEIVED || event.event_version != 1 {
            return Ok(());
        }
        let m: MessageV1 = match event.payload() {
            Ok(m) => m,
            Err(StoreError::Shredded { .. }) => return Ok(()),
            Err(e) => return Err(HandlerError::Permanent(e.to_string())),
        };
        if m.auto_reply {
            return Ok(());
        }
        let t = event.tenant_id;
        let recorded = micros(event.recorded_at);
        tx.bind_tenant(t).await?;
        let n = on_tx!(tx, |c| sqlx::query(
            "INSERT INTO draft_suggestion_queue (tenant_id, provider_id, message_id, conversation_id, \
             queued_at, next_attempt_at, attempts) \
             SELECT tenant_id, provider_id, $2, $3, $4, $4, 0 FROM draft_providers \
             WHERE tenant_id = $1 AND enabled AND (inbox_id IS NULL OR inbox_id = $5) \
             AND created_us <= $6 \
             ON CONFLICT (tenant_id, provider_id, message_id) DO NOTHING"
        )
        .bind(t.0)
        .bind(m.message_id)
        .bind(m.conversation_id)
        .bind(now_us())
        .bind(m.inbox_id)
        .bind(recorded)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| HandlerError::Store(db_error(e)))?;
        if n > 0 {
            self.wake.queued();
        }
        Ok(())
    }
}

struct Worker {
    service: Conversations,
    ingestor: postvak_ingest::Ingestor,
    client: reqwest::Client,
    policy: AddressPolicy,
    settings: SuggestSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    tenant: TenantId,
    provider: Uuid,
    message: Uuid,
}

#[derive(Debug, Clone)]
struct Due {
    key: Key,
    conversation: Uuid,
    attempts: i64,
}

async fn due_batch(db: &Db, max_attempts: u32) -> Result<Vec<Due>, StoreError> {
    let mut tx = db.begin().await?;
    let rows: Vec<(Uuid, Uuid, Uuid, Uuid, i64)> = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT tenant_id, provider_id, message_id, conversation_id, attempts \
         FROM draft_suggestion_queue WHERE next_attempt_at <= $1 AND attempts < $2 \
         ORDER BY next_attempt_at LIMIT 64"
    )
    .bind(now_us())
    .bind(i64::from(max_attempts))
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?
        )))
        .collect()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|(t, provider, message, conversation, attempts)| Due {
            key: Key {
                tenant: TenantId(t),
                provider,
                message,
            },
            conversation,
            attempts,
        })
        .collect())
}

async fn run_worker(
    worker: Arc<Worker>,
    cell: Arc<Cell>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let db = cell.db().clone();
    let mut running: JoinSet<Key> = JoinSet::new();
    let mut in_flight: HashSet<Key> = HashSet::new();
    let mut per_tenant: HashMap<TenantId, usize> = HashMap::new();
    let total = worker.settings.concurrency.max(1);
    loop {
        if cancel.is_cancelled() {
            running.abort_all();
            return;
        }
        if in_flight.len() < total {
            match due_batch(&db, worker.settings.max_attempts).await {
                Ok(batch) => {
                    for d in batch {
                        if in_flight.len() >= total {
                            break;
                        }
                        let busy = per_tenant.get(&d.key.tenant).copied().unwrap_or(0);
                        if in_flight.contains(&d.key) || busy >= PER_TENANT {
                            continue;
                        }
                        in_flight.insert(d.key);
                        *per_tenant.entry(d.key.tenant).or_default() += 1;
                        let (w, db) = (worker.clone(), db.clone());
                        running.spawn(async move {
                            let key = d.key;
                            w.attempt(&db, d).await;
                            key
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the draft suggestion queue"),
            }
        }
        tokio::select! {
            () = cancel.cancelled() => {}
            () = wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(key) = done {
                    in_flight.remove(&key);
                    if let Some(n) = per_tenant.get_mut(&key.tenant) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            per_tenant.remove(&key.tenant);
                        }
                    }
                }
            }
        }
    }
}

/// What a request came to.
enum Outcome {
    /// Done (a draft, nothing to suggest, or nothing to ask any more): drop the queue row.
    Done,
    /// Try again later, with this error.
    Retry(String),
}

impl Worker {
    async fn attempt(&self, db: &Db, d: Due) {
        let outcome = match self.ask(&d).await {
            Ok(o) => o,
            Err(e) => Outcome::Retry(e),
        };
        let result = match outcome {
            Outcome::Done => finish(db, &d.key, None, 0).await,
            Outcome::Retry(e) => {
                tracing::info!(error = %e, provider = %d.key.provider, "draft provider request failed");
                metrics::counter!("postvak_draft_suggestions_total", "outcome" => "failed")
                    .increment(1);
                let attempts = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
                let delay = Duration::from_millis(self.settings.retry_base_ms)
                    .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)));
                let at =
                    now_us().saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
                finish(db, &d.key, Some(&e), at).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot update the draft suggestion queue");
        }
    }

    async fn ask(&self, d: &Due) -> Result<Outcome, String> {
        let ctx = self
            .service
            .cells()
            .context(d.key.tenant, SERVICE)
            .await
            .map_err(|e| e.to_string())?;
        let Some(provider) = fetch(&ctx, Some(d.key.provider))
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .filter(|p| p.enabled)
        else {
            return Ok(Outcome::Done);
        };
        let t = ctx.tenant();
        let secret = ctx
            .cell()
            .store
            .keyring()
            .open(
                t,
                provider.secret_key,
                &provider.secret,
                &secret_aad(t, provider.id),
            )
            .await
            .map_err(|e| e.to_string())?;
        let secret = String::from_utf8_lossy(&secret).into_owned();
        let Some(request) = self.context(&ctx, d).await? else {
            return Ok(Outcome::Done);
        };
        let url = reqwest::Url::parse(&provider.url).map_err(|e| e.to_string())?;
        // Names are checked by the resolver at connect time; an IP literal never reaches it.
        if let Some(host) = url.host_str()
            && let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
            && !self.policy.permits(ip)
        {
            return Err(format!("{ip} is not a public address"));
        }
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let id = format!("msg_{}_{}", d.key.provider.simple(), d.key.message.simple());
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = sign(&secret, &id, ts, &body)?;
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Outcome::Done);
        }
        if status != reqwest::StatusCode::OK {
            return Err(format!("the provider answered {status}"));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if bytes.len() > MAX_SUGGESTION + 4096 {
            return Err(format!("the answer is too large ({} bytes)", bytes.len()));
        }
        let answer: dto::SuggestionAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the answer is not a suggestion: {e}"))?;
        if answer.body.trim().is_empty() {
            return Ok(Outcome::Done);
        }
        if answer.body.len() > MAX_SUGGESTION {
            return Err(format!("a suggestion holds at most {MAX_SUGGESTION} bytes"));
        }
        let draft = draft_id(d.key.provider, d.key.message);
        crate::drafts::insert_suggested(
            &ctx,
            draft,
            d.conversation,
            d.key.provider,
            answer.subject,
            answer.body,
        )
        .await
        .map_err(|e| e.to_string())?;
        let suggested = DraftSuggestedV1 {
            draft_id: draft,
            provider_id: d.key.provider,
            conversation_id: d.conversation,
            inbox_id: request.inbox_id,
            message_id: d.key.message,
            at_us: now_us(),
        };
        let event = NewEvent::from_payload(dev::DRAFT_SUGGESTED, 1, &suggested)
            .map_err(|e| e.to_string())?;
        match ctx
            .append(
                &suggestion_stream(draft),
                ExpectedVersion::NoStream,
                vec![event],
            )
            .await
        {
            Ok(_) => metrics::counter!("postvak_draft_suggestions_total", "outcome" => "suggested")
                .increment(1),
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        Ok(Outcome::Done)
    }

    /// What the provider is told: subject, the customer, the last messages. `None` when the
    /// conversation or the message is gone.
    async fn context(
        &self,
        ctx: &TenantContext,
        d: &Due,
    ) -> Result<Option<dto::SuggestionRequest>, String> {
        let loaded = match self.service.load(ctx, d.conversation).await {
            Ok(l) => l,
            Err(crate::ServiceError::NotFound) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut messages: Vec<(MessageV1, bool)> = Vec::new();
        for e in &loaded.events {
            let inbound = match e.event_type.as_str() {
                cev::MESSAGE_RECEIVED => true,
                cev::REPLY_QUEUED => false,
                _ => continue,
            };
            match e.payload::<MessageV1>() {
                Ok(m) => messages.push((m, inbound)),
                Err(StoreError::Shredded { .. }) => {}
                Err(err) => return Err(err.to_string()),
            }
        }
        let Some((trigger, _)) = messages
            .iter()
            .find(|(m, _)| m.message_id == d.key.message)
            .cloned()
        else {
            return Ok(None);
        };
        let mailbox = |m: &postvak_proto::events::conversation::MailboxV1| Mailbox {
            name: m.name.clone(),
            address: m.address.clone(),
        };
        let first = messages.len().saturating_sub(CONTEXT_MESSAGES);
        let mut context = Vec::new();
        for (m, inbound) in &messages[first..] {
            let text = if *inbound {
                match m.text_blob {
                    Some(b) => match self.ingestor.read_blob(ctx, b).await {
                        Ok(Some(t)) => String::from_utf8_lossy(&t).into_owned(),
                        Ok(None) => m.snippet.clone(),
                        Err(e) => return Err(e.to_string()),
                    },
                    None => m.snippet.clone(),
                }
            } else {
                m.body_text.clone().unwrap_or_default()
            };
            context.push(dto::SuggestionContextMessage {
                id: m.message_id,
                direction: if *inbound { "inbound" } else { "outbound" }.into(),
                from: m.from.first().map(mailbox),
                subject: m.subject.clone(),
                text: cut(text, CONTEXT_TEXT),
                at: from_micros(m.at_us),
            });
        }
        let subject = messages
            .iter()
            .find_map(|(m, inbound)| inbound.then(|| m.subject.clone()).flatten());
        Ok(Some(dto::SuggestionRequest {
            kind: "draft.suggestion_requested".into(),
            provider_id: d.key.provider,
            conversation_id: d.conversation,
            inbox_id: loaded.state.inbox_id,
            message_id: d.key.message,
            subject,
            contact: trigger
                .reply_to
                .first()
                .or(trigger.from.first())
                .map(mailbox),
            messages: context,
        }))
    }
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

async fn finish(db: &Db, key: &Key, error: Option<&str>, next_at: i64) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    match error {
        None => on_tx!(&mut tx, |c| sqlx::query(
            "DELETE FROM draft_suggestion_queue WHERE tenant_id = $1 AND provider_id = $2 \
             AND message_id = $3"
        )
        .bind(key.tenant.0)
        .bind(key.provider)
        .bind(key.message)
        .execute(c)
        .await
        .map(|_| ())),
        Some(e) => on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE draft_suggestion_queue SET attempts = attempts + 1, last_error = $1, \
             next_attempt_at = $2 WHERE tenant_id = $3 AND provider_id = $4 AND message_id = $5"
        )
        .bind(e)
        .bind(next_at)
        .bind(key.tenant.0)
        .bind(key.provider)
        .bind(key.message)
        .execute(c)
        .await
        .map(|_| ())),
    }
    .map_err(db_error)?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_suggested_draft_has_one_id_per_provider_and_message() {
        let (p, m) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(draft_id(p, m), draft_id(p, m));
        assert_ne!(draft_id(p, m), draft_id(m, p));
        assert_ne!(draft_id(p, m), draft_id(p, Uuid::now_v7()));
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(cut("aé".into(), 2), "a");
        assert_eq!(cut("abc".into(), 5), "abc");
    }
}
