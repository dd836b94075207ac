//! `/v1/contacts` — contacts over the API.
//!
//! Who sees a contact: tenant admins (and admin API keys) all of them; anyone else a contact
//! with at least one conversation they may read — otherwise it answers 404 as if it didn't
//! exist. Changing or merging needs `reply` on such a conversation's inbox; creating a contact
//! by hand and erasing one need a tenant admin. A merged contact answers 410
//! `contact_merged` naming the survivor (`merged_into`); an erased one answers its erased state.

use super::{ContactServiceError, Contacts, read};
use crate::ServiceError;
use crate::api::{Call, Done, Failure, call, etag, if_match, json, service_error};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use base64::Engine;
use postvak_core::access::InboxRole;
use postvak_core::contact::{ContactError, Profile, clean_text, normalise_address};
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::Cells;
use postvak_platform::http::ApiError;
use postvak_proto::Problem;
use postvak_proto::rest::contact as dto;
use postvak_proto::rest::conversation as cdto;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use time::OffsetDateTime;
use utoipa::IntoParams;
use uuid::Uuid;

/// Registers the contact routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/contacts", web::get().to(list_contacts))
        .route("/v1/contacts", web::post().to(create_contact))
        .route("/v1/contacts/{contact_id}", web::get().to(get_contact))
        .route("/v1/contacts/{contact_id}", web::patch().to(update_contact))
        .route("/v1/contacts/{contact_id}", web::delete().to(erase_contact))
        .route(
            "/v1/contacts/{contact_id}/erase",
            web::post().to(erase_contact_post),
        )
        .route(
            "/v1/contacts/{contact_id}/merge",
            web::post().to(merge_contact),
        )
        .route(
            "/v1/contacts/{contact_id}/conversations",
            web::get().to(list_contact_conversations),
        )
        .route(
            "/v1/contacts/{contact_id}/export",
            web::get().to(export_contact),
        );
}

/// An error of a contact route: a plain problem, or 410 naming the survivor of a merge.
#[derive(Debug)]
pub enum ContactFailure {
    Base(Failure),
    Merged(dto::ContactMergedProblem),
}

impl fmt::Display for ContactFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Base(b) => b.fmt(f),
            Self::Merged(_) => f.write_str("410 contact_merged"),
        }
    }
}

impl ResponseError for ContactFailure {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Base(b) => b.status_code(),
            Self::Merged(_) => StatusCode::GONE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Base(b) => b.error_response(),
            Self::Merged(p) => HttpResponse::build(StatusCode::GONE)
                .content_type("application/problem+json")
                .insert_header(("Location", format!("/v1/contacts/{}", p.merged_into)))
                .json(p),
        }
    }
}

impl From<Failure> for ContactFailure {
    fn from(f: Failure) -> Self {
        Self::Base(f)
    }
}

impl From<ApiError> for ContactFailure {
    fn from(e: ApiError) -> Self {
        Self::Base(Failure::Api(e))
    }
}

fn merged_problem(into: Uuid) -> dto::ContactMergedProblem {
    dto::ContactMergedProblem {
        type_uri: "https://postvak.dev/problems/contact_merged".into(),
        title: "Merged into another contact".into(),
        status: 410,
        detail: format!("this contact was merged into contact {into}"),
        code: "contact_merged".into(),
        merged_into: into,
    }
}

/// The problem for a service error (as a plain [`Failure`], for idempotent POSTs).
fn failure(e: ContactServiceError) -> Failure {
    let conflict = |code, title| ApiError::new(StatusCode::CONFLICT, code, title);
    let api = match e {
        ContactServiceError::Domain(d) => {
            let api = match &d {
                ContactError::NotFound => ApiError::not_found(),
                ContactError::AlreadyExists => conflict("already_exists", "Already exists"),
                ContactError::Merged { into } => ApiError::new(
                    StatusCode::GONE,
                    "contact_merged",
                    "Merged into another contact",
                )
                .with_detail(format!("this contact was merged into contact {into}")),
                ContactError::Erased => conflict("contact_erased", "The contact was erased"),
                ContactError::MergeIntoSelf => {
                    ApiError::unprocessable("merge_into_self", String::new())
                }
                ContactError::Invalid(_) => {
                    ApiError::unprocessable("invalid_contact", String::new())
                }
            };
            api.with_detail(d.to_string())
        }
        ContactServiceError::NotFound => ApiError::not_found(),
        ContactServiceError::Stale { seen, current } => {
            conflict("stale_contact", "Changed since you looked").with_detail(format!(
                "the contact is at version {current}, you sent {seen}"
            ))
        }
        ContactServiceError::AddressTaken { address, holder } => conflict(
            "contact_address_taken",
            "The address belongs to another contact",
        )
        .with_detail(format!(
            "{address} belongs to contact {holder}: merge them instead"
        )),
        ContactServiceError::Conversation(c) => return service_error(c),
        ContactServiceError::Store(s) => s.into(),
        ContactServiceError::Cell(c) => ApiError::internal(&c),
    };
    Failure::Api(api)
}

fn fail(e: ContactServiceError) -> ContactFailure {
    match e {
        ContactServiceError::Domain(ContactError::Merged { into }) => {
            ContactFailure::Merged(merged_problem(into))
        }
        other => ContactFailure::Base(failure(other)),
    }
}

fn contacts(c: &Call) -> Contacts {
    Contacts::new(c.svc.cells().clone())
}

/// The best role the caller holds on the conversations linked to a contact (tenant admins:
/// `Admin` always); `None`: the contact doesn't exist for them.
async fn role_on(c: &Call, links: &[(Uuid, Uuid)]) -> Result<Option<InboxRole>, ContactFailure> {
    if c.access.administers_tenant() {
        return Ok(Some(InboxRole::Admin));
    }
    let mut best = None;
    for (conversation, _) in links {
        if let Some(role) = conversation_visible(c, *conversation).await? {
            best = best.max(Some(role));
        }
    }
    Ok(best)
}

/// The caller's role on a conversation (from its read-model row), `None` if hidden.
async fn conversation_visible(c: &Call, id: Uuid) -> Result<Option<InboxRole>, ContactFailure> {
    let row = c.svc.row(&c.ctx, id).await.map_err(service_error)?;
    Ok(row.and_then(|row| crate::api::row_role(&c.access, &row)))
}

/// A contact's row if the caller may see it with at least `needed`: 404 when hidden or
/// missing, 410 when merged, 403 with a lesser role.
async fn visible(
    c: &Call,
    id: Uuid,
    needed: InboxRole,
) -> Result<read::ContactRow, ContactFailure> {
    let svc = contacts(c);
    let row = svc
        .row(&c.ctx, id)
        .await
        .map_err(fail)?
        .ok_or_else(|| ContactFailure::from(ApiError::not_found()))?;
    // A merged duplicate is as visible as its survivor (its links moved there).
    let mut holder = row.clone();
    for _ in 0..8 {
        match holder.merged_into.filter(|_| holder.status == "merged") {
            Some(into) => match svc.row(&c.ctx, into).await.map_err(fail)? {
                Some(next) => holder = next,
                None => break,
            },
            None => break,
        }
    }
    let links = svc.links(&c.ctx, holder.id).await.map_err(fail)?;
    let role = role_on(c, &links).await?;
    match role {
        None => return Err(ApiError::not_found().into()),
        Some(r) if r < needed => {
            return Err(ApiError::forbidden(
                "inbox_permission_required",
                "Not allowed on this contact's inboxes",
            )
            .with_detail(format!(
                "this needs the {:?} permission on an inbox where the contact has a conversation",
                needed.as_str()
            ))
            .into());
        }
        Some(_) => {}
    }
    if let Some(into) = row.merged_into
        && row.status == "merged"
    {
        return Err(ContactFailure::Merged(merged_problem(into)));
    }
    Ok(row)
}

async fn answer(c: &Call, id: Uuid, status: StatusCode) -> Result<HttpResponse, ContactFailure> {
    let svc = contacts(c);
    let row = svc
        .row(&c.ctx, id)
        .await
        .map_err(fail)?
        .ok_or_else(|| ContactFailure::from(ApiError::not_found()))?;
    let body = svc.dto(&c.ctx, &row).await.map_err(fail)?;
    Ok(HttpResponse::build(status)
        .insert_header(("ETag", etag(body.version)))
        .json(body))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContactQuery {
    /// Only VIPs (`true`) or only the others (`false`).
    pub vip: Option<bool>,
    /// The contact holding this address (any case or surrounding whitespace), found by a
    /// blind index.
    pub address: Option<String>,
    /// Contacts of this organisation (case and spacing do not matter), found by a blind index.
    pub organisation: Option<String>,
    /// 1–200 (default 50).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Lists the contacts the caller can see, oldest first.
#[utoipa::path(get, path = "/v1/contacts", tag = "contacts", security(("bearer" = [])),
    params(ContactQuery),
    responses((status = 200, body = dto::ContactPage),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn list_contacts(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    q: web::Query<ContactQuery>,
) -> Result<HttpResponse, ContactFailure> {
    let c = call(&cells, &dir, auth).await?;
    let limit = match q.limit {
        None => 50,
        Some(n @ 1..=200) => n as usize,
        Some(_) => {
            return Err(ApiError::bad_request("invalid_limit", "limit must be 1–200").into());
        }
    };
    let mut after = match &q.cursor {
        None => None,
        Some(s) => Some(Uuid::try_parse(s).map_err(|_| {
            ContactFailure::from(ApiError::bad_request(
                "invalid_cursor",
                "cursor must be a next_cursor of an earlier page",
            ))
        })?),
    };
    let svc = contacts(&c);
    let keyring = c.ctx.cell().store.keyring();
    let mut filter = read::Filter {
        vip: q.vip,
        ..read::Filter::default()
    };
    if let Some(a) = &q.address {
        let Some(n) = normalise_address(a) else {
            return Err(ApiError::bad_request(
                "invalid_address",
                "address must be an e-mail address",
            )
            .into());
        };
        let found = svc.find_by_address(&c.ctx, &n).await.map_err(fail)?;
        match found {
            Some(id) => filter.only = Some(id),
            None => {
                return Ok(HttpResponse::Ok().json(dto::ContactPage {
                    items: vec![],
                    next_cursor: None,
                }));
            }
        }
    }
    if let Some(o) = q.organisation.as_deref().and_then(|o| clean_text(Some(o))) {
        filter.organisation = Some(
            read::organisation_index(keyring, c.ctx.tenant(), &o)
                .await
                .map_err(|e| fail(e.into()))?,
        );
    }
    let batch = i64::try_from(limit.saturating_mul(2).max(20)).unwrap_or(200);
    let mut items = Vec::new();
    let mut more = false;
    'fill: loop {
        let page = svc
            .list(&c.ctx, &filter, after, batch)
            .await
            .map_err(fail)?;
        let exhausted = (page.len() as i64) < batch;
        for r in page {
            after = Some(r.id);
            let links = svc.links(&c.ctx, r.id).await.map_err(fail)?;
            if role_on(&c, &links).await?.is_some() {
                if items.len() == limit {
                    more = true;
                    break 'fill;
                }
                items.push(r);
            }
        }
        if exhausted {
            break;
        }
    }
    let next_cursor = if more {
        items.last().map(|r| r.id.to_string())
    } else {
        None
    };
    let mut out = Vec::with_capacity(items.len());
    for r in &items {
        out.push(svc.dto(&c.ctx, r).await.map_err(fail)?);
    }
    Ok(HttpResponse::Ok().json(dto::ContactPage {
        items: out,
        next_cursor,
    }))
}

/// Creates a contact by hand (tenant admins). Its addresses must not belong to another
/// contact (409 `contact_address_taken` names it).
#[utoipa::path(post, path = "/v1/contacts", tag = "contacts", security(("bearer" = [])),
    request_body = dto::CreateContact,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = dto::Contact),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_contact(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    body: web::Json<dto::CreateContact>,
) -> Result<HttpResponse, ContactFailure> {
    let c = call(&cells, &dir, auth).await?;
    c.access.require_tenant_admin()?;
    let body = body.into_inner();
    let profile = Profile {
        name: body.name.clone(),
        addresses: body.addresses.clone(),
        organisation: body.organisation.clone(),
        vip: body.vip,
        notes: body.notes.clone(),
    };
    Ok(crate::api::idempotent(&c, &req, &body, || async {
        let svc = contacts(&c);
        let (id, _) = svc
            .create(&c.ctx, profile.clone(), c.access.user_id())
            .await
            .map_err(failure)?;
        let row = svc
            .row(&c.ctx, id)
            .await
            .map_err(failure)?
            .ok_or_else(|| Failure::Api(ApiError::not_found()))?;
        let t = svc.dto(&c.ctx, &row).await.map_err(failure)?;
        Ok(Done {
            status: StatusCode::CREATED,
            version: t.version,
            location: Some(format!("/v1/contacts/{id}")),
            body: json(&t)?,
        })
    })
    .await?)
}

/// A contact. `ETag` = its version. An erased contact answers `status: erased` and nothing
/// else about the person; a merged one 410 `contact_merged` naming the survivor.
#[utoipa::path(get, path = "/v1/contacts/{contact_id}", tag = "contacts", security(("bearer" = [])),
    params(("contact_id" = Uuid, Path)),
    responses((status = 200, body = dto::Contact),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 410, body = dto::ContactMergedProblem, content_type = "application/problem+json")))]
pub async fn get_contact(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ContactFailure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    visible(&c, id, InboxRole::Read).await?;
    answer(&c, id, StatusCode::OK).await
}

/// Changes a contact: the fields given are replaced (an empty string clears one; `addresses`
/// is the whole new list). `If-Match` with the `ETag` refuses a change against a stale view
/// (409 `stale_contact`).
#[utoipa::path(patch, path = "/v1/contacts/{contact_id}", tag = "contacts", security(("bearer" = [])),
    request_body = dto::UpdateContact,
    params(("contact_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = dto::Contact),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 410, body = dto::ContactMergedProblem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_contact(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::UpdateContact>,
) -> Result<HttpResponse, ContactFailure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let seen = if_match(&req)?;
    visible(&c, id, InboxRole::Reply).await?;
    let b = body.into_inner();
    let edit = |p: &Profile| Profile {
        name: b.name.clone().map_or_else(|| p.name.clone(), Some),
        addresses: b.addresses.clone().unwrap_or_else(|| p.addresses.clone()),
        organisation: b
            .organisation
            .clone()
            .map_or_else(|| p.organisation.clone(), Some),
        vip: b.vip.unwrap_or(p.vip),
        notes: b.notes.clone().map_or_else(|| p.notes.clone(), Some),
    };
    contacts(&c)
        .update(&c.ctx, id, seen, edit, c.access.user_id())
        .await
        .map_err(fail)?;
    answer(&c, id, StatusCode::OK).await
}

/// Merges this contact (a duplicate) into `into`: its addresses, the fields the survivor
/// lacks, its notes and its conversations move to the survivor; this one answers 410
/// `contact_merged` from then on. Needs `reply` on both contacts' conversations.
#[utoipa::path(post, path = "/v1/contacts/{contact_id}/merge", tag = "contacts", security(("bearer" = [])),
    request_body = dto::MergeContact,
    params(("contact_id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = dto::Contact),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 410, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn merge_contact(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::MergeContact>,
) -> Result<HttpResponse, ContactFailure> {
    let c = call(&cells, &dir, auth).await?;
    let from = path.into_inner();
    let body = body.into_inner();
    if from == body.into {
        return Err(ApiError::unprocessable(
            "merge_into_self",
            "a contact can't be merged into itself",
        )
        .into());
    }
    visible(&c, from, InboxRole::Reply).await?;
    visible(&c, body.into, InboxRole::Reply).await?;
    Ok(crate::api::idempotent(&c, &req, &body, || async {
        let svc = contacts(&c);
        svc.merge(&c.ctx, from, body.into, c.access.user_id())
            .await
            .map_err(failure)?;
        let row = svc
            .row(&c.ctx, body.into)
            .await
            .map_err(failure)?
            .ok_or_else(|| Failure::Api(ApiError::not_found()))?;
        let t = svc.dto(&c.ctx, &row).await.map_err(failure)?;
        Ok(Done {
            status: StatusCode::OK,
            version: t.version,
            location: Some(format!("/v1/contacts/{}", body.into)),
            body: json(&t)?,
        })
    })
    .await?)
}

/// The conversations of a contact that the caller may read, newest change first.
#[utoipa::path(get, path = "/v1/contacts/{contact_id}/conversations", tag = "contacts", security(("bearer" = [])),
    params(("contact_id" = Uuid, Path)),
    responses((status = 200, body = dto::ContactConversations),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 410, body = dto::ContactMergedProblem, content_type = "application/problem+json")))]
pub async fn list_contact_conversations(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ContactFailure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    visible(&c, id, InboxRole::Read).await?;
    let items = readable_conversations(&c, id).await?;
    Ok(HttpResponse::Ok().json(dto::ContactConversations { items }))
}

async fn readable_conversations(
    c: &Call,
    id: Uuid,
) -> Result<Vec<cdto::Conversation>, ContactFailure> {
    let links = contacts(c).links(&c.ctx, id).await.map_err(fail)?;
    let keyring = c.ctx.cell().store.keyring();
    let mut items = Vec::new();
    for (conversation, _) in links {
        if conversation_visible(c, conversation).await?.is_none() {
            continue;
        }
        if let Some(row) = c
            .svc
            .row(&c.ctx, conversation)
            .await
            .map_err(service_error)?
        {
            items.push(
                crate::projection::conversation_dto(keyring, c.ctx.tenant(), &row)
                    .await
                    .map_err(|e| service_error(ServiceError::Store(e)))?,
            );
        }
    }
    items.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
    Ok(items)
}

/// Everything kept about a contact, for a GDPR access request: the contact, their
/// conversations with messages and internal notes (those the caller may read), and the
/// original `.eml` of every inbound message while ingest still holds it.
#[utoipa::path(get, path = "/v1/contacts/{contact_id}/export", tag = "contacts", security(("bearer" = [])),
    params(("contact_id" = Uuid, Path)),
    responses((status = 200, body = dto::ContactExport),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 410, body = dto::ContactMergedProblem, content_type = "application/problem+json")))]
pub async fn export_contact(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ContactFailure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let row = visible(&c, id, InboxRole::Read).await?;
    let svc = contacts(&c);
    let contact = svc.dto(&c.ctx, &row).await.map_err(fail)?;
    let mut notes = Vec::new();
    let links = svc.links(&c.ctx, id).await.map_err(fail)?;
    let mut conversations = Vec::new();
    for (conversation, _) in &links {
        match c
            .svc
            .get_visible(&c.ctx, *conversation, |row| {
                crate::api::row_role(&c.access, row).is_some()
            })
            .await
        {
            Ok(d) => conversations.push(d),
            Err(ServiceError::NotFound) => {}
            Err(e) => return Err(service_error(e).into()),
        }
    }
    if conversations.len() < links.len() {
        notes.push(format!(
            "{} of the contact's {} conversations are not included: you may not read them (a tenant admin's export holds all)",
            links.len() - conversations.len(),
            links.len()
        ));
    }
    let inbound: BTreeSet<(Uuid, Uuid)> = conversations
        .iter()
        .flat_map(|d| {
            d.messages
                .iter()
                .filter(|m| m.direction == "inbound")
                .map(move |m| (m.id, d.conversation.id))
        })
        .collect();
    let original_messages = originals(&c, &inbound, &mut notes).await;
    let reply_files = reply_files(&c, &conversations, &mut notes).await;
    if contact.status == "erased" {
        notes.push(
            "the contact was erased: their profile is gone; messages of their conversations are kept under the tenant's key (see ADR 0012)".into(),
        );
    }
    Ok(HttpResponse::Ok().json(dto::ContactExport {
        exported_at: OffsetDateTime::now_utc(),
        contact,
        conversations,
        original_messages,
        reply_files,
        notes,
    }))
}

/// The content of every file attached to a reply in `conversations`.
async fn reply_files(
    c: &Call,
    conversations: &[cdto::ConversationDetail],
    notes: &mut Vec<String>,
) -> Vec<dto::ExportedFile> {
    let mut out = Vec::new();
    for d in conversations {
        for m in d.messages.iter().filter(|m| m.direction == "outbound") {
            for f in &m.attachment_list {
                let (content, reason) = match crate::files::read(&c.ctx, f.id).await {
                    Ok(Some(bytes)) => (
                        Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                        None,
                    ),
                    Ok(None) => (
                        None,
                        Some("the file was removed (a contact of the conversation was erased)"),
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read a reply file for an export");
                        (None, Some("the file could not be read"))
                    }
                };
                out.push(dto::ExportedFile {
                    file_id: f.id,
                    message_id: m.id,
                    conversation_id: d.conversation.id,
                    filename: f.filename.clone(),
                    content_type: f.content_type.clone(),
                    size: f.size,
                    sha256: f.sha256.clone(),
                    available: content.is_some(),
                    content_base64: content,
                    reason: reason.map(str::to_owned),
                });
            }
        }
    }
    if out.iter().any(|f| !f.available) {
        notes.push("some reply files are missing; each says why".into());
    }
    out
}

/// The original `.eml` of `inbound` messages, through the ingest library.
async fn originals(
    c: &Call,
    inbound: &BTreeSet<(Uuid, Uuid)>,
    notes: &mut Vec<String>,
) -> Vec<dto::ExportedEml> {
    if inbound.is_empty() {
        return Vec::new();
    }
    let ingest = postvak_ingest::Ingestor::new(c.svc.cells().clone());
    let received = match ingest.received_messages(&c.ctx).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list received messages for an export");
            notes.push(
                "the original messages could not be read from ingest this time; ask again later"
                    .into(),
            );
            return inbound
                .iter()
                .map(|(m, conv)| missing(*m, *conv, "ingest unavailable"))
                .collect();
        }
    };
    let mut out = Vec::with_capacity(inbound.len());
    for (message, conversation) in inbound {
        let Some(p) = received.iter().find(|p| p.message_id == *message) else {
            out.push(missing(
                *message,
                *conversation,
                "ingest holds no original of this message",
            ));
            continue;
        };
        match ingest.read_blob(&c.ctx, p.raw.blob_id).await {
            Ok(Some(raw)) => out.push(dto::ExportedEml {
                message_id: *message,
                conversation_id: *conversation,
                eml_base64: Some(base64::engine::general_purpose::STANDARD.encode(raw)),
                available: true,
                reason: None,
            }),
            Ok(None) => out.push(missing(*message, *conversation, "the original was removed")),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an original message for an export");
                out.push(missing(
                    *message,
                    *conversation,
                    "the original could not be read",
                ));
            }
        }
    }
    if out.iter().any(|o| !o.available) {
        notes.push("some original messages are missing; each says why".into());
    }
    out
}

fn missing(message: Uuid, conversation: Uuid, why: &str) -> dto::ExportedEml {
    dto::ExportedEml {
        message_id: message,
        conversation_id: conversation,
        eml_base64: None,
        available: false,
        reason: Some(why.to_owned()),
    }
}

async fn erase(c: Call, id: Uuid) -> Result<HttpResponse, ContactFailure> {
    c.access.require_tenant_admin()?;
    let svc = contacts(&c);
    // A merged duplicate may be erased too (its survivor is not touched).
    if svc.row(&c.ctx, id).await.map_err(fail)?.is_none()
        && svc.load(&c.ctx, id).await.map_err(fail)?.state.version == 0
    {
        return Err(ApiError::not_found().into());
    }
    svc.erase(&c.ctx, id, c.access.user_id())
        .await
        .map_err(fail)?;
    answer(&c, id, StatusCode::OK).await
}

/// Erases a contact (tenant admins): `contact.erased` is recorded (no personal data in it)
/// and the contact's key is destroyed, so their profile can't be read anywhere — not in the
/// log (which is not rewritten; its hash chain still verifies), not in the read model. Their
/// conversations stay, linked to the erased contact. Mail from the same address later makes a
/// new contact.
#[utoipa::path(delete, path = "/v1/contacts/{contact_id}", tag = "contacts", security(("bearer" = [])),
    params(("contact_id" = Uuid, Path)),
    responses((status = 200, body = dto::Contact),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn erase_contact(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ContactFailure> {
    let c = call(&cells, &dir, auth).await?;
    erase(c, path.into_inner()).await
}

/// The same as `DELETE /v1/contacts/{contact_id}`, for clients that can't send DELETE.
#[utoipa::path(post, path = "/v1/contacts/{contact_id}/erase", tag = "contacts", security(("bearer" = [])),
    params(("contact_id" = Uuid, Path)),
    responses((status = 200, body = dto::Contact),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn erase_contact_post(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ContactFailure> {
    let c = call(&cells, &dir, auth).await?;
    erase(c, path.into_inner()).await
}
