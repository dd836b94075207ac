//! `/v1/conversations` — the agent API.
//!
//! Permissions: the caller needs a role on an inbox holding the conversation, and a user must
//! take part in it (the inbox's members when it started, and those added since); otherwise it
//! answers 404 as if it didn't exist. Reading needs `read`; replying, notes, assignment and
//! every other change need `reply` (a `read` member gets 403 `inbox_permission_required`).
//!
//! Collisions: every conversation carries its stream version as `ETag`; a change sent with
//! `If-Match` against an older version is refused with 409 `stale_conversation`, whose body
//! lists what changed since and the new messages. A claim is exclusive: a second claim gets 409
//! `conversation_claimed` naming the holder. POSTs honour `Idempotency-Key`.

use crate::idempotency::{self, Claim, Stored};
use crate::projection::{ConversationRow, Cursor, ListFilter, SearchKey};
use crate::{Conversations, ServiceError, actor_of, codec, conversation_role, participation};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use postvak_core::access::InboxRole;
use postvak_core::conversation::{
    self as core, Conversation, ConversationCommand as C, ConversationError, ConversationEvent,
    Mailbox, ParticipantRef, Priority, Status,
};
use postvak_directory::Directory;
use postvak_directory::identity::Access;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::{Cells, Principal, TenantContext};
use postvak_platform::http::ApiError;
use postvak_proto::Problem;
use postvak_proto::rest::conversation as dto;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use time::OffsetDateTime;
use utoipa::IntoParams;
use uuid::Uuid;

/// Registers the conversation service's `/v1` routes. Needs `web::Data<Cells>`,
/// `web::Data<Directory>` and the shared authenticator as app data.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/conversations", web::get().to(list_conversations))
        .route("/v1/conversations", web::post().to(create_conversation))
        .route(
            "/v1/conversations/{conversation_id}",
            web::get().to(get_conversation),
        )
        .route(
            "/v1/conversations/{conversation_id}/files/{file_id}",
            web::get().to(download_file),
        )
        .route(
            "/v1/conversations/{conversation_id}/messages/{message_id}/raw",
            web::get().to(download_original),
        )
        .service(
            web::resource("/v1/conversations/{conversation_id}/replies")
                .app_data(reply_json_config())
                .route(web::post().to(create_reply)),
        )
        .route(
            "/v1/conversations/{conversation_id}/notes",
            web::post().to(create_note),
        )
        .route(
            "/v1/conversations/{conversation_id}/claim",
            web::post().to(claim_conversation),
        )
        .route(
            "/v1/conversations/{conversation_id}/assignee",
            web::put().to(assign_conversation),
        )
        .route(
            "/v1/conversations/{conversation_id}/assignee",
            web::delete().to(unassign_conversation),
        )
        .route(
            "/v1/conversations/{conversation_id}/status",
            web::put().to(set_conversation_status),
        )
        .route(
            "/v1/conversations/{conversation_id}/snooze",
            web::put().to(snooze_conversation),
        )
        .route(
            "/v1/conversations/{conversation_id}/snooze",
            web::delete().to(wake_conversation),
        )
        .route(
            "/v1/conversations/{conversation_id}/priority",
            web::put().to(set_conversation_priority),
        )
        .route(
            "/v1/conversations/{conversation_id}/tags",
            web::post().to(add_conversation_tag),
        )
        .route(
            "/v1/conversations/{conversation_id}/tags/{tag}",
            web::delete().to(remove_conversation_tag),
        )
        .route(
            "/v1/conversations/{conversation_id}/participants",
            web::post().to(add_conversation_participant),
        )
        .route(
            "/v1/conversations/{conversation_id}/archive",
            web::post().to(archive_conversation),
        )
        .route(
            "/v1/conversations/{conversation_id}/move",
            web::post().to(move_conversation),
        )
        .route(
            "/v1/conversations/{conversation_id}/merge",
            web::post().to(merge_conversation),
        )
        .route(
            "/v1/conversations/{conversation_id}/presence",
            web::post().to(set_presence),
        )
        .route("/v1/stream", web::get().to(stream_changes))
        .configure(crate::drafts::routes)
        .configure(crate::templates::routes)
        .configure(crate::suggest::routes)
        .configure(crate::contacts::api::routes);
}

/// An error response: a plain problem, or one of the two 409s with extra members.
#[derive(Debug)]
pub enum Failure {
    Api(ApiError),
    Stale(Box<dto::StaleConversationProblem>),
    Claimed(dto::ClaimedProblem),
    DraftLocked(Box<dto::DraftLockedProblem>),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Api(e) => e.fmt(f),
            Self::Stale(_) => f.write_str("409 stale_conversation"),
            Self::Claimed(_) => f.write_str("409 conversation_claimed"),
            Self::DraftLocked(_) => f.write_str("409 draft_locked"),
        }
    }
}

impl ResponseError for Failure {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Api(e) => e.status,
            Self::Stale(_) | Self::Claimed(_) | Self::DraftLocked(_) => StatusCode::CONFLICT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status_code());
        r.content_type("application/problem+json");
        match self {
            Self::Api(e) => e.error_response(),
            Self::Stale(p) => {
                r.insert_header(("ETag", etag(p.current_version)));
                r.json(p)
            }
            Self::Claimed(p) => r.json(p),
            Self::DraftLocked(p) => r.json(p),
        }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

fn domain_error(e: ConversationError) -> Failure {
    use ConversationError as D;
    let conflict = |code, title| ApiError::new(StatusCode::CONFLICT, code, title);
    let api = match &e {
        D::ClaimedBy { holder } => {
            return Failure::Claimed(dto::ClaimedProblem {
                type_uri: "https://postvak.dev/problems/conversation_claimed".into(),
                title: "Claimed by someone else".into(),
                status: 409,
                detail: format!("the conversation is claimed by user {holder}"),
                code: "conversation_claimed".into(),
                holder: *holder,
            });
        }
        D::NotOpened => ApiError::not_found(),
        D::AlreadyOpened => conflict("already_exists", "Already exists"),
        D::Merged { .. } => conflict("conversation_merged", "Merged into another conversation"),
        D::AlreadyParticipant(_) => conflict("already_participant", "Already taking part"),
        D::NoOtherParticipant => conflict("no_other_participant", "Nobody else would see it"),
        D::NotSnoozed => conflict("not_snoozed", "Not snoozed"),
        D::SnoozeNotOver => conflict("snooze_not_over", "Snooze not over"),
        D::NotAParticipant(_) => ApiError::unprocessable("not_a_participant", String::new()),
        D::InboxNotParticipating(_) => {
            ApiError::unprocessable("inbox_not_participating", String::new())
        }
        D::SameInbox(_) => ApiError::unprocessable("same_inbox", String::new()),
        D::MergeIntoSelf => ApiError::unprocessable("merge_into_self", String::new()),
        D::EmptyNote | D::EmptyReply => ApiError::unprocessable("body_required", String::new()),
        D::NoRecipient => ApiError::unprocessable("recipient_required", String::new()),
        D::InvalidTag(_) => ApiError::unprocessable("invalid_tag", String::new()),
        D::SnoozeInPast => ApiError::unprocessable("snooze_in_past", String::new()),
    };
    Failure::Api(api.with_detail(e.to_string()))
}

pub(crate) fn service_error(e: ServiceError) -> Failure {
    match e {
        ServiceError::Domain(d) => domain_error(d),
        ServiceError::NotFound => Failure::Api(ApiError::not_found()),
        ServiceError::Stale { seen, current } => Failure::Api(
            ApiError::new(
                StatusCode::CONFLICT,
                "stale_conversation",
                "Changed since you looked",
            )
            .with_detail(format!("version {current}, you sent {seen}")),
        ),
        ServiceError::Forbidden(needed) => Failure::Api(
            ApiError::forbidden("inbox_permission_required", "Not allowed on this inbox")
                .with_detail(format!(
                    "this needs the {:?} permission on the conversation's inbox",
                    needed.as_str()
                )),
        ),
        ServiceError::Invalid(d) => Failure::Api(ApiError::unprocessable("invalid_request", d)),
        ServiceError::Directory(d) => Failure::Api(d.into()),
        ServiceError::Store(s) => Failure::Api(s.into()),
        ServiceError::Cell(c) => Failure::Api(ApiError::internal(&c)),
    }
}

/// Per-request plumbing.
pub(crate) struct Call {
    pub(crate) svc: Conversations,
    pub(crate) ctx: TenantContext,
    pub(crate) access: Access,
}

pub(crate) async fn call(
    cells: &web::Data<Cells>,
    dir: &web::Data<Directory>,
    auth: Authenticated,
) -> Result<Call, Failure> {
    let ctx = auth.0;
    let access = dir.access(&ctx).await?;
    Ok(Call {
        svc: Conversations {
            cells: cells.get_ref().clone(),
            directory: dir.get_ref().clone(),
        },
        ctx,
        access,
    })
}

pub(crate) fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// `If-Match: "7"` → 7; absent or `*` → none.
pub(crate) fn if_match(req: &HttpRequest) -> Result<Option<u64>, Failure> {
    let Some(v) = req.headers().get("if-match") else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    s.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| {
            Failure::Api(ApiError::bad_request(
                "invalid_if_match",
                "If-Match must be the ETag of the conversation, e.g. \"7\"",
            ))
        })
}

/// Requires `needed` on a conversation as the aggregate knows it.
pub(crate) fn require(
    access: &Access,
    state: &Conversation,
    needed: InboxRole,
) -> Result<(), ServiceError> {
    if !state.is_open() {
        return Err(ServiceError::NotFound);
    }
    let inboxes: Vec<Uuid> = state.inboxes.keys().copied().collect();
    let role = conversation_role(access, &inboxes, participation(state, access.user_id()));
    match role {
        None => Err(ServiceError::NotFound),
        Some(have) if have >= needed => Ok(()),
        Some(_) => Err(ServiceError::Forbidden(needed)),
    }
}

pub(crate) fn row_role(access: &Access, row: &ConversationRow) -> Option<InboxRole> {
    let inboxes: Vec<Uuid> = row.inboxes.iter().map(|(i, _)| *i).collect();
    let participant = access
        .user_id()
        .filter(|u| row.participants.contains(u))
        .map(|u| row.explicit.contains(&u));
    conversation_role(access, &inboxes, participant)
}

/// A 409 `stale_conversation` saying what changed after `seen`.
async fn stale(c: &Call, id: Uuid, seen: u64) -> Failure {
    let build = async {
        let loaded = c.svc.load(&c.ctx, id).await?;
        let changes = loaded
            .events
            .iter()
            .filter(|e| e.stream_version > seen)
            .map(|e| {
                let by = codec::decode(e).ok().and_then(|d| actor_of_event(&d));
                dto::ConversationChange {
                    version: e.stream_version,
                    change: e.event_type.clone(),
                    by,
                    at: e.recorded_at,
                }
            })
            .collect();
        let new_messages = c.svc.messages_since(&c.ctx, id, seen).await?;
        Ok::<_, ServiceError>(dto::StaleConversationProblem {
            type_uri: "https://postvak.dev/problems/stale_conversation".into(),
            title: "Changed since you looked".into(),
            status: 409,
            detail: format!(
                "the conversation is at version {}, you sent If-Match {seen}: look at what changed and try again",
                loaded.state.version
            ),
            code: "stale_conversation".into(),
            current_version: loaded.state.version,
            changes,
            new_messages,
        })
    };
    match build.await {
        Ok(p) => Failure::Stale(Box::new(p)),
        Err(e) => service_error(e),
    }
}

fn actor_of_event(e: &ConversationEvent) -> Option<Uuid> {
    use ConversationEvent as E;
    match e {
        E::MessageReceived(_) | E::ReplyDeliveryFailed(_) => None,
        E::ReplyQueued(m) => m.author,
        E::NoteAdded { author, .. } => *author,
        E::Opened { by, .. }
        | E::StatusChanged { by, .. }
        | E::Snoozed { by, .. }
        | E::Woken { by, .. }
        | E::PriorityChanged { by, .. }
        | E::Tagged { by, .. }
        | E::Untagged { by, .. }
        | E::Assigned { by, .. }
        | E::Unassigned { by, .. }
        | E::ParticipantAdded { by, .. }
        | E::ArchivedForInbox { by, .. }
        | E::Moved { by, .. }
        | E::MergedInto { by, .. }
        | E::MergedFrom { by, .. } => *by,
    }
}

/// A change's result before it becomes a response (so that it can be kept for replay).
pub(crate) struct Done {
    pub(crate) status: StatusCode,
    pub(crate) version: u64,
    pub(crate) location: Option<String>,
    pub(crate) body: serde_json::Value,
}

impl Done {
    fn response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        r.insert_header(("ETag", etag(self.version)));
        if let Some(l) = &self.location {
            r.insert_header(("Location", l.clone()));
        }
        r.json(&self.body)
    }
}

pub(crate) fn json<T: Serialize>(t: &T) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(t).map_err(|e| Failure::Api(ApiError::internal(&e)))
}

/// Runs a change; with `If-Match` that turned out stale, answers what changed since.
async fn changed<F>(
    c: &Call,
    id: Uuid,
    req: &HttpRequest,
    make: F,
) -> Result<crate::Changed, Failure>
where
    F: Fn(&Conversation) -> Result<Vec<C>, ServiceError>,
{
    changed_from(c, id, req, None, make).await
}

/// [`changed`] starting from the state the handler already read (see
/// [`crate::Conversations::change_from`]).
async fn changed_from<F>(
    c: &Call,
    id: Uuid,
    req: &HttpRequest,
    known: Option<Conversation>,
    make: F,
) -> Result<crate::Changed, Failure>
where
    F: Fn(&Conversation) -> Result<Vec<C>, ServiceError>,
{
    let seen = if_match(req)?;
    match c.svc.change_from(&c.ctx, id, seen, known, make).await {
        Ok(ch) => Ok(ch),
        Err(ServiceError::Stale { seen, .. }) => Err(stale(c, id, seen).await),
        Err(e) => Err(service_error(e)),
    }
}

/// The conversation after a change, from the read model (read-your-writes).
async fn summary_done(c: &Call, id: Uuid, ch: &crate::Changed) -> Result<Done, Failure> {
    let row = c.svc.row(&c.ctx, id).await.map_err(service_error)?;
    let body = match row {
        Some(r) => json(
            &crate::projection::conversation_dto(c.ctx.cell().store.keyring(), c.ctx.tenant(), &r)
                .await
                .map_err(|e| service_error(e.into()))?,
        )?,
        None => return Err(Failure::Api(ApiError::not_found())),
    };
    Ok(Done {
        status: StatusCode::OK,
        version: ch.state.version,
        location: None,
        body,
    })
}

/// Wraps a POST with `Idempotency-Key` handling.
pub(crate) async fn idempotent<B, F, Fut>(
    c: &Call,
    req: &HttpRequest,
    body: &B,
    run: F,
) -> Result<HttpResponse, Failure>
where
    B: Serialize,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Done, Failure>>,
{
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("").trim().to_owned());
    let Some(key) = key else {
        return run().await.map(|d| d.response());
    };
    if key.is_empty() || key.len() > 255 {
        return Err(Failure::Api(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1–255 characters",
        )));
    }
    let mut h = Sha256::new();
    h.update(req.method().as_str().as_bytes());
    h.update(b" ");
    h.update(req.path().as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(body).unwrap_or_default());
    let fingerprint = h.finalize().to_vec();
    match idempotency::begin(&c.ctx, &key, &fingerprint)
        .await
        .map_err(|e| service_error(e.into()))?
    {
        Claim::Replay(s) => {
            let mut r =
                HttpResponse::build(StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK));
            if let Some(e) = &s.etag {
                r.insert_header(("ETag", e.clone()));
            }
            if let Some(l) = &s.location {
                r.insert_header(("Location", l.clone()));
            }
            r.insert_header(("Idempotent-Replayed", "true"));
            Ok(r.json(&s.body))
        }
        Claim::InFlight => Err(Failure::Api(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "The first request with this key is still running",
        ))),
        Claim::Mismatch => Err(Failure::Api(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        ))),
        Claim::Fresh => match run().await {
            Ok(done) => {
                let stored = Stored {
                    status: done.status.as_u16(),
                    etag: Some(etag(done.version)),
                    location: done.location.clone(),
                    body: done.body.clone(),
                };
                if let Err(e) = idempotency::complete(&c.ctx, &key, &stored).await {
                    tracing::warn!(error = %e, "cannot keep the idempotent response");
                }
                Ok(done.response())
            }
            Err(f) => {
                if let Err(e) = idempotency::abandon(&c.ctx, &key).await {
                    tracing::warn!(error = %e, "cannot release the idempotency key");
                }
                Err(f)
            }
        },
    }
}

// ----- queries -----

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only conversations this inbox holds (and has not archived from its view).
    pub inbox: Option<Uuid>,
    /// With `inbox`: the conversations that inbox archived from its view instead.
    #[serde(default)]
    pub archived: bool,
    /// `open`, `pending`, `closed`, `spam`.
    pub status: Option<String>,
    pub assignee: Option<Uuid>,
    #[serde(default)]
    pub unassigned: bool,
    pub tag: Option<String>,
    /// Conversations this user takes part in.
    pub participant: Option<Uuid>,
    /// `true`: snoozed now; `false`: not snoozed.
    pub snoozed: Option<bool>,
    /// RFC 3339: changed at or after.
    pub updated_since: Option<String>,
    /// Search: conversations whose subjects, messages or notes contain every word (case does
    /// not matter; `invoi*` matches words starting so). Answered from a blind index: no
    /// plaintext is stored for it.
    pub q: Option<String>,
    /// 1–200 (default 50).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Lists the conversations the caller can see, newest change first.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = dto::ConversationPage),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_conversations(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let q = q.into_inner();
    if let Some(s) = &q.status
        && Status::parse(s).is_none()
    {
        return Err(ApiError::bad_request(
            "invalid_status",
            "status is open, pending, closed or spam",
        )
        .into());
    }
    if let Some(inbox) = q.inbox {
        c.access.require_inbox(inbox, InboxRole::Read)?;
    }
    let cursor = match &q.cursor {
        Some(s) => Some(Cursor::decode(s).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not one we issued")
        })?),
        None => None,
    };
    let updated_since_us = match &q.updated_since {
        Some(s) => Some(
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(postvak_platform::store::micros)
                .map_err(|_| {
                    ApiError::bad_request("invalid_updated_since", "updated_since must be RFC 3339")
                })?,
        ),
        None => None,
    };
    let tag = match &q.tag {
        Some(t) => Some(core::normalise_tag(t).map_err(domain_error)?),
        None => None,
    };
    let search = match &q.q {
        Some(text) => search_terms(&c, text).await?,
        None => Vec::new(),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 200) as usize;
    // A user sees only what they take part in: the participant filter does it in SQL.
    let me = match &c.access.principal {
        Principal::User { user_id, role } if !role.administers_tenant() => Some(*user_id),
        _ => None,
    };
    let filter = ListFilter {
        inbox: q.inbox,
        archived: q.archived,
        status: q.status.clone(),
        assignee: q.assignee,
        unassigned: q.unassigned,
        tag,
        participant: me.or(q.participant),
        snoozed: q.snoozed,
        now_us: crate::now_us(),
        updated_since_us,
        include_merged: false,
        search,
    };
    let wanted = q.participant;
    let page = c
        .svc
        .list(&c.ctx, &filter, cursor, limit, |row| {
            row_role(&c.access, row).is_some()
                && wanted.is_none_or(|w| row.participants.contains(&w))
        })
        .await
        .map_err(service_error)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(page.to_json()))
}

/// The blind-index terms of a search query.
async fn search_terms(c: &Call, text: &str) -> Result<Vec<SearchKey>, Failure> {
    let terms = core::parse_search(text)
        .map_err(|e| Failure::Api(ApiError::bad_request("invalid_search", e.to_string())))?;
    let keyring = c.ctx.cell().store.keyring();
    let mut out = Vec::with_capacity(terms.len());
    for t in terms {
        let (purpose, word, key): (_, _, fn(i64) -> SearchKey) = match &t {
            core::SearchTerm::Word(w) => (crate::projection::SEARCH_WORD, w, SearchKey::Word),
            core::SearchTerm::Prefix(p) => (crate::projection::SEARCH_PREFIX, p, SearchKey::Prefix),
        };
        let term = crate::projection::search_term(keyring, c.ctx.tenant(), purpose, word)
            .await
            .map_err(|e| service_error(e.into()))?;
        out.push(key(term));
    }
    Ok(out)
}

/// A conversation with its messages and notes. `ETag` = its version.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path)),
    responses((status = 200, body = dto::ConversationDetail),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_conversation(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let detail = c
        .svc
        .get_visible(&c.ctx, id, |row| row_role(&c.access, row).is_some())
        .await
        .map_err(service_error)?;
    Ok(HttpResponse::Ok()
        .insert_header(("ETag", etag(detail.conversation.version)))
        .json(detail))
}

// ----- files -----

/// How a download is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Disposition {
    /// Saved as a file (the default).
    #[default]
    Attachment,
    /// Shown by the browser: only for images other than SVG, PDFs and plain text.
    Inline,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// `attachment` (default) or `inline` (images other than SVG, PDFs and plain text only;
    /// other types answer 400 `inline_not_allowed`).
    #[param(inline)]
    pub disposition: Option<Disposition>,
}

/// A download's bytes and headers, or 304 when `If-None-Match` names its ETag.
async fn serve(
    c: &Call,
    ingestor: Option<web::Data<postvak_ingest::Ingestor>>,
    req: &HttpRequest,
    found: crate::downloads::Found,
    disposition: Disposition,
) -> Result<HttpResponse, Failure> {
    use crate::downloads as dl;
    let inline = disposition == Disposition::Inline;
    // Refused before anything is read: the type is known from the listing.
    if inline && !dl::inline_allowed(&dl::essence(&found.content_type)) {
        return Err(Failure::Api(ApiError::bad_request(
            "inline_not_allowed",
            format!(
                "{} is only offered as an attachment; inline is for images other than SVG, PDFs and plain text",
                dl::essence(&found.content_type)
            ),
        )));
    }
    let local;
    let ingestor = match &ingestor {
        Some(i) => i.get_ref(),
        None => {
            local = postvak_ingest::Ingestor::new(c.svc.cells().clone());
            &local
        }
    };
    // The content is read even for a 304: content that is gone must not be confirmed as
    // current to a cache.
    let bytes = dl::read(&c.ctx, ingestor, found.source)
        .await
        .map_err(|e| match e {
            dl::ReadError::Gone => Failure::Api(
                ApiError::new(StatusCode::GONE, "file_erased", "File erased")
                    .with_detail(e.to_string()),
            ),
            dl::ReadError::Store(s) => service_error(s.into()),
        })?;
    let etag = dl::etag(&hex::encode(Sha256::digest(&bytes)));
    let cache = ("Cache-Control", "private, no-cache");
    if let Some(v) = req.headers().get("if-none-match")
        && dl::none_match(v.to_str().unwrap_or(""), &etag)
    {
        return Ok(HttpResponse::NotModified()
            .insert_header(("ETag", etag))
            .insert_header(cache)
            .finish());
    }
    let content_type = dl::content_type(&found.content_type, &bytes);
    let essence = dl::essence(&found.content_type);
    let mut r = HttpResponse::Ok();
    r.content_type(content_type)
        .insert_header(("ETag", etag))
        .insert_header(cache)
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header((
            "Content-Disposition",
            dl::content_disposition(
                if inline { "inline" } else { "attachment" },
                &found.filename,
            ),
        ));
    if dl::needs_sandbox(&essence) {
        r.insert_header(("Content-Security-Policy", dl::SANDBOX_POLICY));
    }
    Ok(r.body(bytes))
}

/// The conversation (as the caller may see it) and the download named in it.
async fn visible_detail(c: &Call, id: Uuid) -> Result<dto::ConversationDetail, Failure> {
    c.svc
        .get_visible(&c.ctx, id, |row| row_role(&c.access, row).is_some())
        .await
        .map_err(service_error)
}

/// The bytes of a file of the conversation: a body, an attachment, an inline image or a
/// reply's file.
///
/// The file is one a message of this conversation names: an inbound message's body
/// (`text_blob_id`, `html_blob_id`), an attachment or inline image of any message
/// (`attachment_list[].id`), a reply's file. Same permission as reading the conversation; an
/// id no message of *this* conversation names answers 404 like a missing conversation.
/// `Content-Type` is the file's own; every download carries `X-Content-Type-Options:
/// nosniff` and, except PDFs, `Content-Security-Policy: sandbox; default-src 'none'; …`.
/// `ETag` is the SHA-256 of the content (strong); `If-None-Match` with it answers 304.
/// Content that is listed but no longer kept (a reply's files after a contact's erasure, a
/// destroyed key) answers 410 `file_erased`.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/files/{file_id}", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path),
           ("file_id" = Uuid, Path, description = "`text_blob_id`, `html_blob_id` or an `attachment_list[].id` of a message of this conversation"),
           DownloadQuery,
           ("If-None-Match" = Option<String>, Header, description = "The ETag of a copy you hold: 304 if it is still current")),
    responses((status = 200, description = "The file's bytes, with its own Content-Type",
               content((dto::FileContent = "*/*")),
               headers(("ETag" = String, description = "SHA-256 (hex) of the content, quoted"),
                       ("Content-Disposition" = String, description = "`attachment` (or `inline`) with `filename` and `filename*=UTF-8''…`"),
                       ("Cache-Control" = String, description = "`private, no-cache`"),
                       ("X-Content-Type-Options" = String, description = "`nosniff`"),
                       ("Content-Security-Policy" = String, description = "`sandbox; …` on everything but PDFs"))),
              (status = 304, description = "Not modified: the copy named in If-None-Match is current"),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 410, body = Problem, content_type = "application/problem+json", description = "`file_erased`: listed, but its content is no longer kept")))]
pub async fn download_file(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    ingestor: Option<web::Data<postvak_ingest::Ingestor>>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<(Uuid, Uuid)>,
    query: web::Query<DownloadQuery>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let (id, file_id) = path.into_inner();
    let detail = visible_detail(&c, id).await?;
    let found = crate::downloads::find_file(&detail, file_id)
        .ok_or_else(|| Failure::Api(ApiError::not_found()))?;
    serve(
        &c,
        ingestor,
        &req,
        found,
        query.disposition.unwrap_or_default(),
    )
    .await
}

/// The original of an inbound message of the conversation, exactly as it was received.
///
/// Served as `message/rfc822` (`attachment; filename="message.eml"`). Replies have none (404). Headers,
/// permission, 304 and 410 as for files.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages/{message_id}/raw", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path),
           ("message_id" = Uuid, Path, description = "An inbound message of this conversation"),
           DownloadQuery,
           ("If-None-Match" = Option<String>, Header, description = "The ETag of a copy you hold: 304 if it is still current")),
    responses((status = 200, description = "The message as received",
               content((dto::FileContent = "message/rfc822")),
               headers(("ETag" = String, description = "SHA-256 (hex) of the message, quoted"),
                       ("Content-Disposition" = String, description = "`attachment; filename=\"message.eml\"; …`"),
                       ("Cache-Control" = String, description = "`private, no-cache`"),
                       ("X-Content-Type-Options" = String, description = "`nosniff`"),
                       ("Content-Security-Policy" = String, description = "`sandbox; …`"))),
              (status = 304, description = "Not modified: the copy named in If-None-Match is current"),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 410, body = Problem, content_type = "application/problem+json", description = "`file_erased`: the original is no longer kept")))]
pub async fn download_original(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    ingestor: Option<web::Data<postvak_ingest::Ingestor>>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<(Uuid, Uuid)>,
    query: web::Query<DownloadQuery>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let (id, message_id) = path.into_inner();
    let detail = visible_detail(&c, id).await?;
    let found = crate::downloads::find_original(&detail, message_id)
        .ok_or_else(|| Failure::Api(ApiError::not_found()))?;
    serve(
        &c,
        ingestor,
        &req,
        found,
        query.disposition.unwrap_or_default(),
    )
    .await
}

// ----- changes -----

pub(crate) fn mailboxes(v: &[dto::Mailbox]) -> Result<Vec<Mailbox>, Failure> {
    v.iter()
        .map(|m| {
            let address = postvak_core::directory::normalise_address(&m.address).map_err(|e| {
                Failure::Api(ApiError::unprocessable("invalid_address", e.to_string()))
            })?;
            Ok(Mailbox {
                name: m.name.clone(),
                address,
            })
        })
        .collect()
}

/// A reply's files or bodies refused: 413 for sizes, 422 otherwise.
fn file_error(e: crate::files::FileError) -> Failure {
    let err = if e.too_large() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            e.code(),
            "The reply is too large",
        )
        .with_detail(e.to_string())
    } else {
        ApiError::unprocessable(e.code(), e.to_string())
    };
    Failure::Api(err)
}

/// `POST …/replies` carries files in base64: a larger JSON limit than other routes; a body
/// over it is 413 `reply_too_large`.
fn reply_json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(crate::files::MAX_REPLY_JSON)
        .error_handler(|err, _req| {
            use actix_web::error::JsonPayloadError as J;
            match err {
                J::Overflow { .. } | J::OverflowKnownLength { .. } => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "reply_too_large",
                    "The reply is too large",
                )
                .with_detail(format!(
                    "a reply's JSON body may have at most {} bytes",
                    crate::files::MAX_REPLY_JSON
                ))
                .into(),
                other => ApiError::bad_request("invalid_json", other.to_string()).into(),
            }
        })
}

/// Our Message-ID for an outbound mail and its `Reply-To`, both carrying the ingest service's
/// signed reply token for (inbox, conversation): an answer that keeps only `In-Reply-To`, or
/// only our address, still lands in this conversation. Without an ingestor (a process that
/// doesn't receive mail) the plain `<uuid>@domain` form is used.
async fn outbound_ids(
    c: &Call,
    ingestor: Option<&postvak_ingest::Ingestor>,
    inbox: Uuid,
    conversation: Uuid,
    from: &Mailbox,
) -> Result<(Option<String>, Vec<Mailbox>), Failure> {
    let Some(ingestor) = ingestor else {
        return Ok((None, Vec::new()));
    };
    let Some((local, domain)) = from.address.rsplit_once('@') else {
        return Ok((None, Vec::new()));
    };
    let key = ingestor
        .index_key(&c.ctx)
        .await
        .map_err(|e| Failure::Api(ApiError::internal(&e)))?;
    let token = key.reply_token(inbox, conversation);
    Ok((
        Some(key.outbound_message_id(inbox, conversation, domain)),
        vec![Mailbox {
            name: from.name.clone(),
            address: format!("{local}+{token}@{domain}"),
        }],
    ))
}

async fn inbox_sender(c: &Call, inbox: Uuid) -> Result<Mailbox, Failure> {
    let i = c
        .svc
        .directory
        .get_inbox(&c.ctx, inbox)
        .await
        .map_err(|e| service_error(e.into()))?;
    let address = i.addresses.first().cloned().ok_or_else(|| {
        Failure::Api(ApiError::unprocessable(
            "inbox_without_address",
            "the inbox has no address to send from",
        ))
    })?;
    Ok(Mailbox {
        name: Some(i.name),
        address,
    })
}

fn message_body(
    events: &[ConversationEvent],
    state: &Conversation,
) -> Result<serde_json::Value, Failure> {
    let Some(ConversationEvent::ReplyQueued(m)) = events
        .iter()
        .rev()
        .find(|e| matches!(e, ConversationEvent::ReplyQueued(_)))
    else {
        return Err(Failure::Api(ApiError::internal(
            &"the reply produced no message",
        )));
    };
    let boxes = |v: &[Mailbox]| {
        v.iter()
            .map(|b| dto::Mailbox {
                name: b.name.clone(),
                address: b.address.clone(),
            })
            .collect()
    };
    let _ = state;
    json(&dto::ConversationMessage {
        id: m.message_id,
        direction: "outbound".into(),
        subject: m.subject.clone(),
        from: boxes(&m.from),
        to: boxes(&m.to),
        cc: boxes(&m.cc),
        snippet: m.snippet.clone(),
        body_text: m.body_text.clone(),
        text_blob_id: None,
        html_blob_id: None,
        attachments: m.attachments,
        attachment_list: m
            .files
            .iter()
            .map(|f| crate::files::attachment_dto(&crate::codec::file_v1(f)))
            .collect(),
        body_html: m.body_html.clone(),
        message_id_header: m.message_id_header.clone(),
        in_reply_to: m.in_reply_to.clone(),
        references: m.references.clone(),
        author: m.author,
        auto_reply: false,
        at: postvak_platform::store::from_micros(m.at_us),
        delivery: Some(crate::delivery::queued()),
    })
}

/// An agent writes first: opens a conversation in an inbox and queues the first mail, sent
/// from the inbox's address.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations", security(("bearer" = [])),
    request_body = dto::CreateConversation,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_conversation(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    ingestor: Option<web::Data<postvak_ingest::Ingestor>>,
    auth: Authenticated,
    req: HttpRequest,
    body: web::Json<dto::CreateConversation>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let body = body.into_inner();
    c.access.require_inbox(body.inbox_id, InboxRole::Reply)?;
    idempotent(&c, &req, &body, || async {
        let from = inbox_sender(&c, body.inbox_id).await?;
        let to = mailboxes(&body.to)?;
        if to.is_empty() {
            return Err(domain_error(ConversationError::NoRecipient));
        }
        let cc = mailboxes(&body.cc)?;
        let members = c
            .svc
            .members_of(&c.ctx, body.inbox_id)
            .await
            .map_err(service_error)?;
        let id = Uuid::now_v7();
        let outbound = outbound_ids(
            &c,
            ingestor.as_ref().map(|i| i.get_ref()),
            body.inbox_id,
            id,
            &from,
        )
        .await?;
        let by = actor_of(c.ctx.principal());
        let now = crate::now_us();
        let ch = c
            .svc
            .change(&c.ctx, id, None, |_| {
                Ok(vec![
                    C::Open {
                        conversation_id: id,
                        inbox_id: body.inbox_id,
                        members: members.clone(),
                        by,
                        at_us: now,
                    },
                    C::Reply {
                        reply: core::Reply {
                            message_id: Uuid::now_v7(),
                            from: from.clone(),
                            to: to.clone(),
                            cc: cc.clone(),
                            subject: Some(body.subject.clone()),
                            body: body.body.clone(),
                            message_id_header: outbound.0.clone(),
                            reply_to: outbound.1.clone(),
                            body_html: None,
                            files: Vec::new(),
                        },
                        by,
                        at_us: now,
                    },
                ])
            })
            .await
            .map_err(service_error)?;
        let mut done = summary_done(&c, id, &ch).await?;
        done.status = StatusCode::CREATED;
        done.location = Some(format!("/v1/conversations/{id}"));
        Ok(done)
    })
    .await
}

/// Replies as the inbox: sent from the inbox's first address (never the agent's), with our own
/// Message-ID and the thread's `In-Reply-To`/`References`; queued for the notification service
/// (`reply.queued`) and kept in the conversation as the shared mailbox's sent item.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/replies", tag = "conversations", security(("bearer" = [])),
    request_body = dto::CreateReply,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = dto::ConversationMessage),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::StaleConversationProblem, content_type = "application/problem+json"),
              (status = 413, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_reply(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    ingestor: Option<web::Data<postvak_ingest::Ingestor>>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::CreateReply>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let body = body.into_inner();
    idempotent(&c, &req, &body, || async {
        // Check first, so that a stranger learns nothing about the inbox.
        let state = c.svc.state(&c.ctx, id).await.map_err(service_error)?;
        require(&c.access, &state, InboxRole::Reply).map_err(service_error)?;
        let new_files =
            crate::files::check(&body.body, body.body_html.as_deref(), &body.attachments)
                .map_err(file_error)?;
        if let Some(t) = body.template_id {
            crate::activity::check_template(&c.ctx, state.inbox_id, t).await?;
        }
        if let Some(d) = body.draft_id {
            crate::suggest::check_draft(&c.ctx, id, d).await?;
        }
        let from = inbox_sender(&c, state.inbox_id).await?;
        let outbound = outbound_ids(
            &c,
            ingestor.as_ref().map(|i| i.get_ref()),
            state.inbox_id,
            id,
            &from,
        )
        .await?;
        let to = mailboxes(&body.to)?;
        let cc = mailboxes(&body.cc)?;
        let by = actor_of(c.ctx.principal());
        let message_id = Uuid::now_v7();
        // Stored before the event that names them; removed again if the reply is refused.
        let files: Vec<core::MessageFile> = crate::files::store(&c.ctx, message_id, &new_files)
            .await
            .map_err(|e| Failure::Api(e.into()))?
            .iter()
            .map(crate::codec::file)
            .collect();
        let ch = changed_from(&c, id, &req, Some(state), |s| {
            require(&c.access, s, InboxRole::Reply)?;
            Ok(vec![C::Reply {
                reply: core::Reply {
                    message_id,
                    from: from.clone(),
                    to: to.clone(),
                    cc: cc.clone(),
                    subject: body.subject.clone(),
                    body: body.body.clone(),
                    message_id_header: outbound.0.clone(),
                    reply_to: outbound.1.clone(),
                    body_html: body.body_html.clone(),
                    files: files.clone(),
                },
                by,
                at_us: crate::now_us(),
            }])
        })
        .await;
        let seen = if_match(&req).ok().flatten();
        let ch = match ch {
            Ok(ch) => ch,
            Err(f) => {
                if !files.is_empty()
                    && let Err(e) = crate::files::discard(&c.ctx, message_id).await
                {
                    tracing::warn!(error = %e, %message_id, "files of a refused reply were not removed");
                }
                return Err(crate::activity::refused(&c.ctx, id, "reply", seen, f).await);
            }
        };
        if let Some(t) = body.template_id {
            crate::activity::template_used(&c.ctx, id, message_id, t).await;
        }
        if let Some(d) = body.draft_id {
            let inbox = ch.state.inbox_id;
            let by = c.access.user_id();
            crate::suggest::reply_sent_from_draft(&c.ctx, id, inbox, d, message_id, by).await;
        }
        Ok(Done {
            status: StatusCode::CREATED,
            version: ch.state.version,
            location: None,
            body: message_body(&ch.events, &ch.state)?,
        })
    })
    .await
}

/// Adds an internal note (never sent), with @mentions.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/notes", tag = "conversations", security(("bearer" = [])),
    request_body = dto::CreateNote,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = dto::Note),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::StaleConversationProblem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_note(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::CreateNote>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let body = body.into_inner();
    idempotent(&c, &req, &body, || async {
        let by = actor_of(c.ctx.principal());
        let note_id = Uuid::now_v7();
        let ch = changed(&c, id, &req, |s| {
            require(&c.access, s, InboxRole::Reply)?;
            Ok(vec![C::AddNote {
                note_id,
                body: body.body.clone(),
                mentions: body.mentions.clone(),
                by,
                at_us: crate::now_us(),
            }])
        })
        .await;
        let seen = if_match(&req).ok().flatten();
        let ch = match ch {
            Ok(ch) => ch,
            Err(f) => return Err(crate::activity::refused(&c.ctx, id, "note", seen, f).await),
        };
        let Some(ConversationEvent::NoteAdded {
            note_id,
            author,
            body,
            mentions,
            at_us,
        }) = ch.events.first()
        else {
            return Err(Failure::Api(ApiError::internal(
                &"the note produced no event",
            )));
        };
        Ok(Done {
            status: StatusCode::CREATED,
            version: ch.state.version,
            location: None,
            body: json(&dto::Note {
                id: *note_id,
                author: *author,
                body: body.clone(),
                mentions: mentions.clone(),
                at: postvak_platform::store::from_micros(*at_us),
            })?,
        })
    })
    .await
}

/// Runs a simple change and answers the conversation.
async fn simple<F>(
    c: &Call,
    req: &HttpRequest,
    id: Uuid,
    needed: InboxRole,
    make: F,
) -> Result<Done, Failure>
where
    F: Fn(&Conversation) -> Result<Vec<C>, ServiceError>,
{
    let ch = changed(c, id, req, |s| {
        require(&c.access, s, needed)?;
        make(s)
    })
    .await?;
    summary_done(c, id, &ch).await
}

fn user_required() -> Failure {
    Failure::Api(ApiError::unprocessable(
        "user_required",
        "only a user can claim a conversation",
    ))
}

/// Takes the conversation: exclusive. A second claim gets 409 `conversation_claimed` naming the
/// holder.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/claim", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::ClaimedProblem, content_type = "application/problem+json")))]
pub async fn claim_conversation(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let user = c.access.user_id().ok_or_else(user_required)?;
    idempotent(&c, &req, &serde_json::Value::Null, || async {
        simple(&c, &req, id, InboxRole::Reply, |_| {
            Ok(vec![C::Claim {
                user,
                at_us: crate::now_us(),
            }])
        })
        .await
    })
    .await
}

/// Assigns the conversation to a user (who becomes a participant).
#[utoipa::path(put, path = "/v1/conversations/{conversation_id}/assignee", tag = "conversations", security(("bearer" = [])),
    request_body = dto::Assign,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::StaleConversationProblem, content_type = "application/problem+json")))]
pub async fn assign_conversation(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::Assign>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let assignee = body.user_id;
    c.svc
        .directory
        .get_user(&c.ctx, assignee)
        .await
        .map_err(|_| {
            Failure::Api(ApiError::unprocessable(
                "unknown_user",
                format!("no user {assignee}"),
            ))
        })?;
    let by = actor_of(c.ctx.principal());
    Ok(simple(&c, &req, id, InboxRole::Reply, |_| {
        Ok(vec![C::Assign {
            assignee,
            by,
            at_us: crate::now_us(),
        }])
    })
    .await?
    .response())
}

/// Unassigns the conversation.
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/assignee", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::StaleConversationProblem, content_type = "application/problem+json")))]
pub async fn unassign_conversation(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let by = actor_of(c.ctx.principal());
    Ok(simple(&c, &req, path.into_inner(), InboxRole::Reply, |_| {
        Ok(vec![C::Unassign {
            by,
            at_us: crate::now_us(),
        }])
    })
    .await?
    .response())
}

/// Sets the status: `open`, `pending`, `closed` or `spam`.
#[utoipa::path(put, path = "/v1/conversations/{conversation_id}/status", tag = "conversations", security(("bearer" = [])),
    request_body = dto::SetStatus,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::StaleConversationProblem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn set_conversation_status(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::SetStatus>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let status = Status::parse(&body.status).ok_or_else(|| {
        Failure::Api(ApiError::unprocessable(
            "invalid_status",
            "status is open, pending, closed or spam",
        ))
    })?;
    let by = actor_of(c.ctx.principal());
    Ok(simple(&c, &req, path.into_inner(), InboxRole::Reply, |_| {
        Ok(vec![C::SetStatus {
            status,
            by,
            at_us: crate::now_us(),
        }])
    })
    .await?
    .response())
}

/// Snoozes until a time; it wakes by itself then (or when the customer writes).
#[utoipa::path(put, path = "/v1/conversations/{conversation_id}/snooze", tag = "conversations", security(("bearer" = [])),
    request_body = dto::Snooze,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::StaleConversationProblem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn snooze_conversation(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::Snooze>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let until_us = postvak_platform::store::micros(body.until);
    let by = actor_of(c.ctx.principal());
    Ok(simple(&c, &req, path.into_inner(), InboxRole::Reply, |_| {
        Ok(vec![C::Snooze {
            until_us,
            by,
            at_us: crate::now_us(),
        }])
    })
    .await?
    .response())
}

/// Ends a snooze now.
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/snooze", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn wake_conversation(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let by = actor_of(c.ctx.principal());
    Ok(simple(&c, &req, path.into_inner(), InboxRole::Reply, |_| {
        Ok(vec![C::Wake {
            by,
            manual: true,
            at_us: crate::now_us(),
        }])
    })
    .await?
    .response())
}

/// Sets the priority: `low`, `normal`, `high`, `urgent`.
#[utoipa::path(put, path = "/v1/conversations/{conversation_id}/priority", tag = "conversations", security(("bearer" = [])),
    request_body = dto::SetPriority,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::StaleConversationProblem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn set_conversation_priority(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::SetPriority>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let priority = Priority::parse(&body.priority).ok_or_else(|| {
        Failure::Api(ApiError::unprocessable(
            "invalid_priority",
            "priority is low, normal, high or urgent",
        ))
    })?;
    let by = actor_of(c.ctx.principal());
    Ok(simple(&c, &req, path.into_inner(), InboxRole::Reply, |_| {
        Ok(vec![C::SetPriority {
            priority,
            by,
            at_us: crate::now_us(),
        }])
    })
    .await?
    .response())
}

/// Adds a tag.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/tags", tag = "conversations", security(("bearer" = [])),
    request_body = dto::AddTag,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::StaleConversationProblem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn add_conversation_tag(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::AddTag>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let body = body.into_inner();
    let by = actor_of(c.ctx.principal());
    idempotent(&c, &req, &body, || async {
        simple(&c, &req, id, InboxRole::Reply, |_| {
            Ok(vec![C::AddTag {
                tag: body.tag.clone(),
                by,
                at_us: crate::now_us(),
            }])
        })
        .await
    })
    .await
}

/// Removes a tag.
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/tags/{tag}", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = Uuid, Path), ("tag" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::StaleConversationProblem, content_type = "application/problem+json")))]
pub async fn remove_conversation_tag(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<(Uuid, String)>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let (id, tag) = path.into_inner();
    let by = actor_of(c.ctx.principal());
    Ok(simple(&c, &req, id, InboxRole::Reply, |_| {
        Ok(vec![C::RemoveTag {
            tag: tag.clone(),
            by,
            at_us: crate::now_us(),
        }])
    })
    .await?
    .response())
}

/// Hands the conversation to a person or another inbox: they become participants (an inbox
/// with its members at this moment).
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/participants", tag = "conversations", security(("bearer" = [])),
    request_body = dto::AddParticipant,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn add_conversation_participant(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::AddParticipant>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let body = body.into_inner();
    idempotent(&c, &req, &body, || async {
        // Check the caller first: a stranger learns nothing about users or inboxes.
        let loaded = c.svc.load(&c.ctx, id).await.map_err(service_error)?;
        require(&c.access, &loaded.state, InboxRole::Reply).map_err(service_error)?;
        let (participant, members) = match (body.user_id, body.inbox_id) {
            (Some(u), None) => {
                c.svc.directory.get_user(&c.ctx, u).await.map_err(|_| {
                    Failure::Api(ApiError::unprocessable(
                        "unknown_user",
                        format!("no user {u}"),
                    ))
                })?;
                (ParticipantRef::User(u), Vec::new())
            }
            (None, Some(i)) => {
                c.svc.directory.get_inbox(&c.ctx, i).await.map_err(|_| {
                    Failure::Api(ApiError::unprocessable(
                        "unknown_inbox",
                        format!("no inbox {i}"),
                    ))
                })?;
                let members = c.svc.members_of(&c.ctx, i).await.map_err(service_error)?;
                (ParticipantRef::Inbox(i), members)
            }
            _ => {
                return Err(Failure::Api(ApiError::unprocessable(
                    "invalid_participant",
                    "give exactly one of user_id and inbox_id",
                )));
            }
        };
        let by = actor_of(c.ctx.principal());
        simple(&c, &req, id, InboxRole::Reply, |_| {
            Ok(vec![C::AddParticipant {
                participant,
                members: members.clone(),
                by,
                at_us: crate::now_us(),
            }])
        })
        .await
    })
    .await
}

/// Archives the conversation from one inbox's view; it stays live for the other participants.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/archive", tag = "conversations", security(("bearer" = [])),
    request_body = dto::ArchiveForInbox,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn archive_conversation(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::ArchiveForInbox>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let body = body.into_inner();
    idempotent(&c, &req, &body, || async {
        let loaded = c.svc.load(&c.ctx, id).await.map_err(service_error)?;
        require(&c.access, &loaded.state, InboxRole::Read).map_err(service_error)?;
        // Only the inbox's own people archive it from its view.
        c.access.require_inbox(body.inbox_id, InboxRole::Reply)?;
        let by = actor_of(c.ctx.principal());
        simple(&c, &req, id, InboxRole::Read, |_| {
            Ok(vec![C::ArchiveForInbox {
                inbox_id: body.inbox_id,
                by,
                at_us: crate::now_us(),
            }])
        })
        .await
    })
    .await
}

/// Moves the conversation to another inbox (whose members at this moment take over).
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/move", tag = "conversations", security(("bearer" = [])),
    request_body = dto::MoveConversation,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = dto::StaleConversationProblem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn move_conversation(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::MoveConversation>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let body = body.into_inner();
    idempotent(&c, &req, &body, || async {
        let loaded = c.svc.load(&c.ctx, id).await.map_err(service_error)?;
        require(&c.access, &loaded.state, InboxRole::Reply).map_err(service_error)?;
        c.access.require_inbox(body.inbox_id, InboxRole::Reply)?;
        let members = c
            .svc
            .members_of(&c.ctx, body.inbox_id)
            .await
            .map_err(service_error)?;
        let by = actor_of(c.ctx.principal());
        simple(&c, &req, id, InboxRole::Reply, |_| {
            Ok(vec![C::Move {
                to_inbox: body.inbox_id,
                members: members.clone(),
                by,
                at_us: crate::now_us(),
            }])
        })
        .await
    })
    .await
}

/// Merges this conversation into another: its messages, participants and tags move there and
/// it takes no further changes (later mail to it lands in the other).
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/merge", tag = "conversations", security(("bearer" = [])),
    request_body = dto::MergeConversation,
    params(("conversation_id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = dto::Conversation, description = "The conversation merged into"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn merge_conversation(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: web::Json<dto::MergeConversation>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let body = body.into_inner();
    let target = body.into;
    idempotent(&c, &req, &body, || async {
        let by = actor_of(c.ctx.principal());
        let seen = if_match(&req)?;
        let merged = c
            .svc
            .merge(&c.ctx, id, target, seen, by, |s| {
                require(&c.access, s, InboxRole::Reply)
            })
            .await;
        let ch = match merged {
            Ok((_, target_changed)) => target_changed,
            Err(ServiceError::Stale { seen, .. }) => return Err(stale(&c, id, seen).await),
            Err(e) => return Err(service_error(e)),
        };
        summary_done(&c, target, &ch).await
    })
    .await
}

// ----- live -----

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Seconds between heartbeats (`: heartbeat` comments) when nothing else is sent: 1–60,
    /// default 15.
    pub heartbeat_secs: Option<u32>,
}

/// Live changes of the conversations the caller may read, as Server-Sent Events:
/// `event: conversation` (`id:` = the log position; send it back as `Last-Event-ID` to resume
/// after it) and `event: presence` (ephemeral), with heartbeats.
#[utoipa::path(get, path = "/v1/stream", tag = "conversations", security(("bearer" = [])),
    params(StreamQuery, ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, content_type = "text/event-stream", body = dto::ConversationStreamEvent,
               description = "`event: conversation` carries a ConversationStreamEvent, `event: presence` a PresenceStreamEvent"),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn stream_changes(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    req: HttpRequest,
    q: web::Query<StreamQuery>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let resume = match req.headers().get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(crate::live::decode_position)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be an id this stream sent",
                    )
                })?,
        ),
        None => None,
    };
    let heartbeat =
        std::time::Duration::from_secs(u64::from(q.heartbeat_secs.unwrap_or(15).clamp(1, 60)));
    let start = match resume {
        Some(p) => p,
        None => crate::live::head(c.ctx.cell().db(), c.ctx.tenant())
            .await
            .map_err(|e| service_error(e.into()))?,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(crate::live::run_stream(
        c.svc, c.ctx, c.access, start, heartbeat, tx,
    ));
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .body(crate::live::ChannelBody(rx)))
}

/// Tells the others who may read the conversation that the caller is viewing or replying to
/// it (pushed on their `/v1/stream`; ephemeral, not kept in the log).
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/presence", tag = "conversations", security(("bearer" = [])),
    request_body = dto::SetPresence,
    params(("conversation_id" = Uuid, Path)),
    responses((status = 204, description = "Sent to the others watching"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn set_presence(
    cells: web::Data<Cells>,
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<dto::SetPresence>,
) -> Result<HttpResponse, Failure> {
    let c = call(&cells, &dir, auth).await?;
    let id = path.into_inner();
    let loaded = c.svc.load(&c.ctx, id).await.map_err(service_error)?;
    require(&c.access, &loaded.state, InboxRole::Read).map_err(service_error)?;
    let state = body.into_inner().state;
    if state != "viewing" && state != "replying" {
        return Err(
            ApiError::unprocessable("invalid_presence", "state is viewing or replying").into(),
        );
    }
    // Only people have presence; a machine has nobody to show.
    if let Some(user_id) = c.access.user_id() {
        // Ephemeral: if the bus cannot take it now, the client's next refresh will do.
        if let Err(e) = crate::live::publish_presence(&c.ctx, id, user_id, state).await {
            tracing::warn!(error = %e, "presence not published");
        }
    }
    Ok(HttpResponse::NoContent().finish())
}
