//! Rules per inbox: `/v1/inboxes/{inbox_id}/rules` (list, create, get, replace, delete,
//! reorder; inbox admins) and the dry-run.
//!
//! Every rule event of an inbox is on one stream (`routing_rules`, `rules-<inbox>`), so the
//! order and the rules change under one optimistic version. The read model (`routing_rules`,
//! bodies sealed with the tenant key) is rebuilt for the inbox from that stream right after
//! each append (ADR 0003): idempotent, and a crash in between is repaired by the next write or
//! by `rebuild`.

use crate::engine::{self, Snapshot};
use actix_web::{HttpResponse, web};
use postvak_core::access::InboxRole;
use postvak_core::conversation::Priority;
use postvak_core::routing::{
    self as core, Channel, Condition, Pattern, RuleError, Strategy, Trigger,
};
use postvak_directory::Directory;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::{Principal, TenantContext};
use postvak_platform::db::db_error;
use postvak_platform::http::ApiError;
use postvak_platform::on_tx;
use postvak_platform::store::{
    ExpectedVersion, KeyScope, NewEvent, RecordedEvent, StoreError, StreamRef, TenantId,
    from_micros, micros,
};
use postvak_proto::Problem;
use postvak_proto::events::routing as ev;
use postvak_proto::rest::routing as dto;
use sqlx::Row;
use std::collections::BTreeSet;
use time::OffsetDateTime;
use uuid::Uuid;

/// Most rules an inbox may hold.
pub const MAX_RULES: usize = 200;
const MAX_ATTEMPTS: usize = 5;

pub(crate) fn rules_stream(inbox: Uuid) -> StreamRef {
    StreamRef::new(ev::STREAM_RULES, format!("rules-{inbox}"))
}

/// Registers the rule routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/inboxes/{inbox_id}/rules", web::get().to(list_rules))
        .route("/v1/inboxes/{inbox_id}/rules", web::post().to(create_rule))
        .route(
            "/v1/inboxes/{inbox_id}/rules/reorder",
            web::post().to(reorder_rules),
        )
        .route(
            "/v1/inboxes/{inbox_id}/rules/dry-run",
            web::post().to(dry_run),
        )
        .route(
            "/v1/inboxes/{inbox_id}/rules/{rule_id}",
            web::get().to(get_rule),
        )
        .route(
            "/v1/inboxes/{inbox_id}/rules/{rule_id}",
            web::put().to(replace_rule),
        )
        .route(
            "/v1/inboxes/{inbox_id}/rules/{rule_id}",
            web::delete().to(delete_rule),
        );
}

// ---------------------------------------------------------------------------------------------
// REST shape → engine

fn rule_error(e: RuleError) -> ApiError {
    match e {
        RuleError::InvalidRegex { .. } => ApiError::unprocessable("invalid_regex", e.to_string()),
        RuleError::Invalid(d) => ApiError::unprocessable("invalid_rule", d),
    }
}

fn bounded(values: &[String], what: &str) -> Result<Vec<String>, RuleError> {
    if values.is_empty() || values.len() > 500 {
        return Err(RuleError::Invalid(format!("{what} needs 1–500 values")));
    }
    if values.iter().any(|v| v.trim().is_empty() || v.len() > 320) {
        return Err(RuleError::Invalid(format!(
            "{what}: values must be 1–320 characters"
        )));
    }
    Ok(values.iter().map(|v| v.trim().to_lowercase()).collect())
}

/// The engine's rule for a stored or submitted body.
pub fn to_core(id: Uuid, body: &dto::RuleBody) -> Result<core::Rule, RuleError> {
    use dto::RuleCondition as RC;
    let mut conditions = Vec::with_capacity(body.conditions.len());
    for c in &body.conditions {
        conditions.push(match c {
            RC::SenderAddress { values } => {
                Condition::SenderAddress(bounded(values, "sender_address")?)
            }
            RC::SenderDomain { values } => {
                Condition::SenderDomain(bounded(values, "sender_domain")?)
            }
            RC::Recipient { values } => Condition::Recipient(bounded(values, "recipient")?),
            RC::SubjectWords { values } => {
                Condition::SubjectWords(bounded(values, "subject_words")?)
            }
            RC::BodyWords { values } => Condition::BodyWords(bounded(values, "body_words")?),
            RC::SubjectRegex { pattern } => Condition::SubjectRegex(Pattern::new(pattern)?),
            RC::BodyRegex { pattern } => Condition::BodyRegex(Pattern::new(pattern)?),
            RC::Vip { values } => Condition::Vip(bounded(values, "vip")?),
            RC::VipContact {} => Condition::VipContact,
            RC::Tags { values } => Condition::Tags(bounded(values, "tags")?),
            RC::Channel { values } => Condition::Channel(
                values
                    .iter()
                    .map(|v| {
                        Channel::parse(v).ok_or_else(|| {
                            RuleError::Invalid(format!(
                                "unknown channel {v:?} (smtp, imap, api, agent)"
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            RC::BusinessHours { inside } => Condition::BusinessHours(*inside),
            RC::SinceCustomer {
                at_least_minutes,
                at_most_minutes,
            } => Condition::SinceCustomer {
                at_least_min: *at_least_minutes,
                at_most_min: *at_most_minutes,
            },
            RC::SinceAgent {
                at_least_minutes,
                at_most_minutes,
            } => Condition::SinceAgent {
                at_least_min: *at_least_minutes,
                at_most_min: *at_most_minutes,
            },
        });
    }
    if conditions.len() > 50 || body.actions.len() > 20 {
        return Err(RuleError::Invalid(
            "a rule holds at most 50 conditions and 20 actions".into(),
        ));
    }
    use dto::RuleAction as RA;
    let mut actions = Vec::with_capacity(body.actions.len());
    for a in &body.actions {
        actions.push(match a {
            RA::AssignUser { user } => core::Action::AssignUser(*user),
            RA::AssignTeam {
                team,
                strategy,
                skill,
            } => core::Action::AssignTeam {
                team: *team,
                strategy: Strategy::parse(strategy).ok_or_else(|| {
                    RuleError::Invalid(format!(
                        "unknown strategy {strategy:?} (round_robin, least_loaded, skill_match)"
                    ))
                })?,
                skill: skill.clone(),
            },
            RA::AddTag { tag } => {
                let t = tag.trim();
                if t.is_empty() || t.len() > 64 || t.contains(char::is_whitespace) {
                    return Err(RuleError::Invalid(format!(
                        "{tag:?} is not a valid tag (1–64 characters, no spaces)"
                    )));
                }
                core::Action::AddTag(t.to_lowercase())
            }
            RA::SetPriority { priority } => {
                core::Action::SetPriority(Priority::parse(priority).ok_or_else(|| {
                    RuleError::Invalid(format!(
                        "unknown priority {priority:?} (low, normal, high, urgent)"
                    ))
                })?)
            }
            RA::AddParticipantUser { user } => core::Action::AddParticipantUser(*user),
            RA::AddParticipantInbox { inbox } => core::Action::AddParticipantInbox(*inbox),
            RA::AutoReply { template_id } => core::Action::AutoReply(*template_id),
            RA::Close => core::Action::Close,
            RA::Notify { users, message } => {
                if users.is_empty() || message.trim().is_empty() || message.len() > 2000 {
                    return Err(RuleError::Invalid(
                        "notify needs users and a message of at most 2000 characters".into(),
                    ));
                }
                core::Action::Notify {
                    users: users.clone(),
                    message: message.clone(),
                }
            }
        });
    }
    let triggers = body
        .triggers
        .iter()
        .map(|t| match t.as_str() {
            "opened" => Ok(Trigger::Opened),
            "message" => Ok(Trigger::Message),
            other => Err(RuleError::Invalid(format!(
                "unknown trigger {other:?} (opened, message)"
            ))),
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    let match_all = match body.match_mode.as_str() {
        "all" => true,
        "any" => false,
        other => {
            return Err(RuleError::Invalid(format!(
                "unknown match {other:?} (all, any)"
            )));
        }
    };
    let rule = core::Rule {
        id,
        name: body.name.trim().to_owned(),
        enabled: body.enabled,
        triggers,
        match_all,
        conditions,
        actions,
        stop_processing: body.stop_processing,
    };
    rule.validate()?;
    Ok(rule)
}

// ---------------------------------------------------------------------------------------------
// The stream and its read model

/// One rule as the inbox's stream tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleState {
    pub id: Uuid,
    pub body: dto::RuleBody,
    pub created_us: i64,
    pub updated_us: i64,
}

/// The inbox's rules in order, folded from its stream.
pub fn fold(events: &[RecordedEvent]) -> Result<Vec<RuleState>, StoreError> {
    let mut rules: Vec<RuleState> = Vec::new();
    for e in events {
        match e.event_type.as_str() {
            ev::RULE_CREATED => {
                let p: ev::RuleSavedV1 = e.payload()?;
                rules.retain(|r| r.id != p.rule_id);
                rules.push(RuleState {
                    id: p.rule_id,
                    body: p.rule,
                    created_us: p.at_us,
                    updated_us: p.at_us,
                });
            }
            ev::RULE_REPLACED => {
                let p: ev::RuleSavedV1 = e.payload()?;
                if let Some(r) = rules.iter_mut().find(|r| r.id == p.rule_id) {
                    r.body = p.rule;
                    r.updated_us = p.at_us;
                }
            }
            ev::RULE_DELETED => {
                let p: ev::RuleDeletedV1 = e.payload()?;
                rules.retain(|r| r.id != p.rule_id);
            }
            ev::RULES_REORDERED => {
                let p: ev::RulesReorderedV1 = e.payload()?;
                let mut ordered = Vec::with_capacity(rules.len());
                for id in &p.rule_ids {
                    if let Some(i) = rules.iter().position(|r| r.id == *id) {
                        ordered.push(rules.remove(i));
                    }
                }
                ordered.append(&mut rules);
                rules = ordered;
            }
            other => {
                return Err(StoreError::UnknownEventType {
                    event_type: other.to_owned(),
                    event_version: e.event_version,
                });
            }
        }
    }
    Ok(rules)
}

fn body_aad(tenant: TenantId, rule: Uuid) -> Vec<u8> {
    let mut a = b"postvak.routing.rule".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(rule.as_bytes());
    a
}

/// Rewrites the inbox's read model from its stream. Idempotent.
pub async fn project_inbox(ctx: &TenantContext, inbox: Uuid) -> Result<Vec<RuleState>, StoreError> {
    let events = ctx.read_stream(&rules_stream(inbox)).await?;
    let rules = fold(&events)?;
    let t = ctx.tenant();
    let keyring = ctx.cell().store.keyring();
    let mut sealed = Vec::with_capacity(rules.len());
    for r in &rules {
        let plain =
            serde_json::to_vec(&r.body).map_err(|e| StoreError::Serialization(e.to_string()))?;
        sealed.push(
            keyring
                .seal(t, &KeyScope::Tenant, &plain, &body_aad(t, r.id))
                .await?,
        );
    }
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM routing_rules WHERE tenant_id = $1 AND inbox_id = $2"
    )
    .bind(t.0)
    .bind(inbox)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    for (i, (r, (key, body))) in rules.iter().zip(&sealed).enumerate() {
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO routing_rules (tenant_id, inbox_id, rule_id, position, body, body_key, created_us, updated_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )
        .bind(t.0)
        .bind(inbox)
        .bind(r.id)
        .bind(i64::try_from(i).unwrap_or(i64::MAX))
        .bind(body)
        .bind(*key)
        .bind(r.created_us)
        .bind(r.updated_us)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
    }
    tx.commit().await?;
    Ok(rules)
}

/// The inbox's rules in order, from the read model.
pub async fn load(ctx: &TenantContext, inbox: Uuid) -> Result<Vec<RuleState>, StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let rows: Vec<(Uuid, Vec<u8>, Uuid, i64, i64)> = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT rule_id, body, body_key, created_us, updated_us FROM routing_rules \
         WHERE tenant_id = $1 AND inbox_id = $2 ORDER BY position"
    )
    .bind(t.0)
    .bind(inbox)
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
    let keyring = ctx.cell().store.keyring();
    let mut out = Vec::with_capacity(rows.len());
    for (id, body, key, created_us, updated_us) in rows {
        let plain = keyring.open(t, key, &body, &body_aad(t, id)).await?;
        out.push(RuleState {
            id,
            body: serde_json::from_slice(&plain)
                .map_err(|e| StoreError::Serialization(e.to_string()))?,
            created_us,
            updated_us,
        });
    }
    Ok(out)
}

/// The engine's rules of an inbox (a stored rule the engine can't read is skipped, loudly).
pub async fn load_core(ctx: &TenantContext, inbox: Uuid) -> Result<Vec<core::Rule>, StoreError> {
    Ok(load(ctx, inbox)
        .await?
        .iter()
        .filter_map(|r| match to_core(r.id, &r.body) {
            Ok(rule) => Some(rule),
            Err(e) => {
                tracing::error!(rule_id = %r.id, error = %e, "stored rule does not compile");
                None
            }
        })
        .collect())
}

fn dto_of(inbox: Uuid, position: usize, r: &RuleState) -> dto::Rule {
    dto::Rule {
        id: r.id,
        inbox_id: inbox,
        position: u32::try_from(position).unwrap_or(u32::MAX),
        name: r.body.name.clone(),
        enabled: r.body.enabled,
        triggers: r.body.triggers.clone(),
        match_mode: r.body.match_mode.clone(),
        conditions: r.body.conditions.clone(),
        actions: r.body.actions.clone(),
        stop_processing: r.body.stop_processing,
        created_at: from_micros(r.created_us),
        updated_at: from_micros(r.updated_us),
    }
}

fn by_user(ctx: &TenantContext) -> Option<Uuid> {
    match ctx.principal() {
        Principal::User { user_id, .. } => Some(*user_id),
        _ => None,
    }
}

/// Appends what `make` decides for the inbox's current rules (retrying on a concurrent
/// change), then rebuilds the read model.
async fn change<F>(ctx: &TenantContext, inbox: Uuid, make: F) -> Result<Vec<RuleState>, ApiError>
where
    F: Fn(&[RuleState]) -> Result<Vec<NewEvent>, ApiError>,
{
    let stream = rules_stream(inbox);
    for _ in 0..MAX_ATTEMPTS {
        let events = ctx.read_stream(&stream).await?;
        let version = events.last().map_or(0, |e| e.stream_version);
        let current = fold(&events)?;
        let new = make(&current)?;
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        match ctx.append(&stream, expected, new).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        return Ok(project_inbox(ctx, inbox).await?);
    }
    Err(ApiError::new(
        actix_web::http::StatusCode::CONFLICT,
        "rules_changed",
        "The inbox's rules kept changing; try again",
    ))
}

fn event<T: serde::Serialize>(t: &str, p: &T) -> Result<NewEvent, ApiError> {
    Ok(NewEvent::from_payload(t, 1, p)?)
}

/// The caller's context once they hold `role` on `inbox` (and the inbox exists).
pub(crate) async fn inbox_ctx(
    dir: &Directory,
    auth: Authenticated,
    inbox: Uuid,
    role: InboxRole,
) -> Result<TenantContext, ApiError> {
    let ctx = auth.0;
    dir.access(&ctx).await?.require_inbox(inbox, role)?;
    dir.get_inbox(&ctx, inbox).await?;
    Ok(ctx)
}

fn rule_not_found() -> ApiError {
    ApiError::not_found().with_detail("this inbox has no such rule")
}

// ---------------------------------------------------------------------------------------------
// The API

/// The inbox's rules in evaluation order (inbox admins).
#[utoipa::path(get, path = "/v1/inboxes/{inbox_id}/rules", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    responses((status = 200, body = dto::RuleList),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_rules(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Admin).await?;
    let rules = load(&ctx, inbox).await?;
    Ok(HttpResponse::Ok().json(dto::RuleList {
        items: rules
            .iter()
            .enumerate()
            .map(|(i, r)| dto_of(inbox, i, r))
            .collect(),
    }))
}

/// Adds a rule at the end of the inbox's order (inbox admins). An invalid regular expression
/// is `422 invalid_regex`; any other mistake `422 invalid_rule`.
#[utoipa::path(post, path = "/v1/inboxes/{inbox_id}/rules", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    request_body = dto::RuleBody,
    responses((status = 201, body = dto::Rule),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_rule(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<dto::RuleBody>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Admin).await?;
    let body = body.into_inner();
    let id = Uuid::now_v7();
    to_core(id, &body).map_err(rule_error)?;
    let at_us = micros(OffsetDateTime::now_utc());
    let by = by_user(&ctx);
    let rules = change(&ctx, inbox, |current| {
        if current.len() >= MAX_RULES {
            return Err(ApiError::unprocessable(
                "too_many_rules",
                format!("an inbox holds at most {MAX_RULES} rules"),
            ));
        }
        Ok(vec![event(
            ev::RULE_CREATED,
            &ev::RuleSavedV1 {
                rule_id: id,
                inbox_id: inbox,
                rule: body.clone(),
                by,
                at_us,
            },
        )?])
    })
    .await?;
    let (i, r) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.id == id)
        .ok_or_else(|| ApiError::internal(&"the created rule is missing"))?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/inboxes/{inbox}/rules/{id}")))
        .json(dto_of(inbox, i, r)))
}

/// One rule (inbox admins).
#[utoipa::path(get, path = "/v1/inboxes/{inbox_id}/rules/{rule_id}", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path), ("rule_id" = Uuid, Path)),
    responses((status = 200, body = dto::Rule),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_rule(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (inbox, id) = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Admin).await?;
    let rules = load(&ctx, inbox).await?;
    let (i, r) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.id == id)
        .ok_or_else(rule_not_found)?;
    Ok(HttpResponse::Ok().json(dto_of(inbox, i, r)))
}

/// Replaces a rule, keeping its place (inbox admins).
#[utoipa::path(put, path = "/v1/inboxes/{inbox_id}/rules/{rule_id}", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path), ("rule_id" = Uuid, Path)),
    request_body = dto::RuleBody,
    responses((status = 200, body = dto::Rule),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn replace_rule(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<dto::RuleBody>,
) -> Result<HttpResponse, ApiError> {
    let (inbox, id) = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Admin).await?;
    let body = body.into_inner();
    to_core(id, &body).map_err(rule_error)?;
    let at_us = micros(OffsetDateTime::now_utc());
    let by = by_user(&ctx);
    let rules = change(&ctx, inbox, |current| {
        if !current.iter().any(|r| r.id == id) {
            return Err(rule_not_found());
        }
        Ok(vec![event(
            ev::RULE_REPLACED,
            &ev::RuleSavedV1 {
                rule_id: id,
                inbox_id: inbox,
                rule: body.clone(),
                by,
                at_us,
            },
        )?])
    })
    .await?;
    let (i, r) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.id == id)
        .ok_or_else(rule_not_found)?;
    Ok(HttpResponse::Ok().json(dto_of(inbox, i, r)))
}

/// Deletes a rule (inbox admins).
#[utoipa::path(delete, path = "/v1/inboxes/{inbox_id}/rules/{rule_id}", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path), ("rule_id" = Uuid, Path)),
    responses((status = 204),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_rule(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (inbox, id) = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Admin).await?;
    let at_us = micros(OffsetDateTime::now_utc());
    let by = by_user(&ctx);
    change(&ctx, inbox, |current| {
        if !current.iter().any(|r| r.id == id) {
            return Err(rule_not_found());
        }
        Ok(vec![event(
            ev::RULE_DELETED,
            &ev::RuleDeletedV1 {
                rule_id: id,
                inbox_id: inbox,
                by,
                at_us,
            },
        )?])
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Sets the order rules are evaluated in: every rule of the inbox, once (inbox admins).
#[utoipa::path(post, path = "/v1/inboxes/{inbox_id}/rules/reorder", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    request_body = dto::ReorderRules,
    responses((status = 200, body = dto::RuleList),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn reorder_rules(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<dto::ReorderRules>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Admin).await?;
    let order = body.into_inner().rule_ids;
    let at_us = micros(OffsetDateTime::now_utc());
    let by = by_user(&ctx);
    let rules = change(&ctx, inbox, |current| {
        let given: BTreeSet<Uuid> = order.iter().copied().collect();
        let have: BTreeSet<Uuid> = current.iter().map(|r| r.id).collect();
        if given.len() != order.len() || given != have {
            return Err(ApiError::unprocessable(
                "invalid_rule_order",
                "rule_ids must list every rule of the inbox exactly once",
            ));
        }
        Ok(vec![event(
            ev::RULES_REORDERED,
            &ev::RulesReorderedV1 {
                inbox_id: inbox,
                rule_ids: order.clone(),
                by,
                at_us,
            },
        )?])
    })
    .await?;
    Ok(HttpResponse::Ok().json(dto::RuleList {
        items: rules
            .iter()
            .enumerate()
            .map(|(i, r)| dto_of(inbox, i, r))
            .collect(),
    }))
}

/// Which rules would fire for this message, with assignments resolved against the agents'
/// availability and workload now. Changes nothing (inbox admins).
#[utoipa::path(post, path = "/v1/inboxes/{inbox_id}/rules/dry-run", tag = "routing", security(("bearer" = [])),
    params(("inbox_id" = Uuid, Path)),
    request_body = dto::DryRunRequest,
    responses((status = 200, body = dto::DryRunResult),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn dry_run(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<dto::DryRunRequest>,
) -> Result<HttpResponse, ApiError> {
    let inbox = path.into_inner();
    let ctx = inbox_ctx(&dir, auth, inbox, InboxRole::Admin).await?;
    let req = body.into_inner();
    let channel = match req.channel.as_deref() {
        None => Channel::Smtp,
        Some(c) => Channel::parse(c).ok_or_else(|| {
            ApiError::unprocessable("invalid_channel", format!("unknown channel {c:?}"))
        })?,
    };
    let trigger = match req.trigger.as_deref() {
        None | Some("opened") => Trigger::Opened,
        Some("message") => Trigger::Message,
        Some(t) => {
            return Err(ApiError::unprocessable(
                "invalid_trigger",
                format!("unknown trigger {t:?} (opened, message)"),
            ));
        }
    };
    let now_us = micros(req.at.unwrap_or_else(OffsetDateTime::now_utc));
    let rules = load_core(&ctx, inbox).await?;
    let snapshot = Snapshot::load(&dir, &ctx, inbox, &rules).await?;
    let sender_is_vip_contact = crate::vip::is_vip_contact(&ctx, &req.from).await?;
    let facts = core::Facts {
        from: Some(req.from.trim().to_lowercase()),
        recipients: req
            .to
            .iter()
            .chain(&req.cc)
            .map(|r| r.trim().to_lowercase())
            .collect(),
        subject: req.subject,
        body: req.body,
        tags: req.tags.iter().map(|t| t.trim().to_lowercase()).collect(),
        channel: Some(channel),
        in_business_hours: snapshot.in_business_hours(now_us),
        now_us,
        last_customer_us: Some(now_us),
        last_agent_us: None,
        sender_is_vip_contact,
    };
    let mut pool = snapshot.pool.clone();
    let fired = core::evaluate(&rules, trigger, &facts, &mut pool, false);
    Ok(HttpResponse::Ok().json(dto::DryRunResult {
        fired: fired.iter().map(engine::fired_dto).collect(),
        in_business_hours: facts.in_business_hours,
        sender_is_vip_contact,
    }))
}
