//! Agent availability: `PUT/GET /v1/users/{user_id}/availability` (the user themselves or a
//! tenant admin) and `POST /v1/users/{user_id}/reassign`.
//!
//! Availability is `routing.availability_changed` events on `availability-<user>`; the read
//! model `routing_availability` is written right after the append (ADR 0003). Assignment skips
//! agents who are not `online` or who hold `capacity` open conversations (workload:
//! `routing_rule_conversations`).
//!
//! Reassigning an agent's open conversations uses the inbox's first enabled rule that assigns
//! within a team (its strategy, against everyone else's availability and workload); the
//! decision is recorded as `routing.rule_fired` (trigger `reassign`) and applied through
//! `conversation.apply` like any rule's.

use crate::engine::{self, Snapshot, Worker};
use crate::rules;
use actix_web::{HttpResponse, web};
use postvak_core::routing::{self as core, Availability, Decided, Fired};
use postvak_directory::Directory;
use postvak_ingest::Ingestor;
use postvak_platform::auth::Authenticated;
use postvak_platform::cell::{Principal, TenantContext};
use postvak_platform::db::db_error;
use postvak_platform::http::ApiError;
use postvak_platform::on_tx;
use postvak_platform::store::{ExpectedVersion, NewEvent, StoreError, StreamRef, from_micros};
use postvak_proto::Problem;
use postvak_proto::events::routing as ev;
use postvak_proto::rest::routing as dto;
use sqlx::Row;
use uuid::Uuid;

/// Largest capacity an agent may set.
pub const MAX_CAPACITY: u32 = 10_000;

fn stream(user: Uuid) -> StreamRef {
    StreamRef::new(ev::STREAM_AVAILABILITY, format!("availability-{user}"))
}

/// Registers the availability routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/users/{user_id}/availability",
        web::get().to(get_availability),
    )
    .route(
        "/v1/users/{user_id}/availability",
        web::put().to(put_availability),
    )
    .route("/v1/users/{user_id}/reassign", web::post().to(reassign));
}

/// The caller may see and set `user`'s availability: themselves or a tenant admin; the user
/// must exist (404 otherwise).
async fn self_or_admin(dir: &Directory, ctx: &TenantContext, user: Uuid) -> Result<(), ApiError> {
    let access = dir.access(ctx).await?;
    if access.user_id() != Some(user) {
        access.require_tenant_admin()?;
    }
    dir.get_user(ctx, user).await?;
    Ok(())
}

async fn read(ctx: &TenantContext, user: Uuid) -> Result<dto::Availability, StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let row: Option<(String, Option<i64>, i64)> = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT status, capacity, updated_us FROM routing_availability WHERE tenant_id = $1 AND user_id = $2"
    )
    .bind(t.0)
    .bind(user)
    .fetch_optional(c)
    .await
    .and_then(|r| r.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).transpose()))
    .map_err(db_error)?;
    let open = engine::open_counts(&mut tx, t, &[user]).await?;
    tx.commit().await?;
    Ok(match row {
        Some((status, capacity, updated_us)) => dto::Availability {
            user_id: user,
            status,
            capacity: capacity.and_then(|c| u32::try_from(c).ok()),
            open_assigned: open.get(&user).copied().unwrap_or(0),
            updated_at: Some(from_micros(updated_us)),
        },
        None => dto::Availability {
            user_id: user,
            status: Availability::Online.as_str().into(),
            capacity: None,
            open_assigned: open.get(&user).copied().unwrap_or(0),
            updated_at: None,
        },
    })
}

/// An agent's availability and open assigned conversations.
#[utoipa::path(get, path = "/v1/users/{user_id}/availability", tag = "routing", security(("bearer" = [])),
    params(("user_id" = Uuid, Path)),
    responses((status = 200, body = dto::Availability),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_availability(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let user = path.into_inner();
    let ctx = auth.0;
    self_or_admin(&dir, &ctx, user).await?;
    Ok(HttpResponse::Ok().json(read(&ctx, user).await?))
}

/// Sets an agent's availability (`online`, `away`, `out_of_office`) and capacity; with
/// `reassign` (not `online`), their open conversations are reassigned now.
#[utoipa::path(put, path = "/v1/users/{user_id}/availability", tag = "routing", security(("bearer" = [])),
    params(("user_id" = Uuid, Path)),
    request_body = dto::PutAvailability,
    responses((status = 200, body = dto::Availability),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_availability(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<dto::PutAvailability>,
) -> Result<HttpResponse, ApiError> {
    let user = path.into_inner();
    let ctx = auth.0;
    self_or_admin(&dir, &ctx, user).await?;
    let body = body.into_inner();
    let status = Availability::parse(&body.status).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_availability",
            format!(
                "unknown status {:?} (online, away, out_of_office)",
                body.status
            ),
        )
    })?;
    if body.capacity.is_some_and(|c| c > MAX_CAPACITY) {
        return Err(ApiError::unprocessable(
            "invalid_capacity",
            format!("capacity is at most {MAX_CAPACITY}"),
        ));
    }
    if body.reassign && status == Availability::Online {
        return Err(ApiError::unprocessable(
            "invalid_availability",
            "reassign goes with away or out_of_office",
        ));
    }
    let at_us = engine::now_us();
    let by = match ctx.principal() {
        Principal::User { user_id, .. } => Some(*user_id),
        _ => None,
    };
    let event = NewEvent::from_payload(
        ev::AVAILABILITY_CHANGED,
        1,
        &ev::AvailabilityChangedV1 {
            user_id: user,
            status: status.as_str().into(),
            capacity: body.capacity,
            by,
            at_us,
        },
    )?;
    ctx.append(&stream(user), ExpectedVersion::Any, vec![event])
        .await?;
    project(&ctx, user, status, body.capacity, at_us).await?;
    if body.reassign {
        reassign_all(&dir, &ctx, user).await?;
    }
    Ok(HttpResponse::Ok().json(read(&ctx, user).await?))
}

/// Writes the read model for one availability change (idempotent: the newest change wins).
async fn project(
    ctx: &TenantContext,
    user: Uuid,
    status: Availability,
    capacity: Option<u32>,
    at_us: i64,
) -> Result<(), StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO routing_availability (tenant_id, user_id, status, capacity, updated_us) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant_id, user_id) DO UPDATE SET status = excluded.status, capacity = excluded.capacity, \
         updated_us = excluded.updated_us WHERE routing_availability.updated_us <= excluded.updated_us"
    )
    .bind(t.0)
    .bind(user)
    .bind(status.as_str())
    .bind(capacity.map(i64::from))
    .bind(at_us)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

/// Reassigns `user`'s open conversations now (the user themselves or a tenant admin).
#[utoipa::path(post, path = "/v1/users/{user_id}/reassign", tag = "routing", security(("bearer" = [])),
    params(("user_id" = Uuid, Path)),
    responses((status = 200, body = dto::ReassignResult),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn reassign(
    dir: web::Data<Directory>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let user = path.into_inner();
    let ctx = auth.0;
    self_or_admin(&dir, &ctx, user).await?;
    let items = reassign_all(&dir, &ctx, user).await?;
    Ok(HttpResponse::Ok().json(dto::ReassignResult { items }))
}

async fn reassign_all(
    dir: &Directory,
    ctx: &TenantContext,
    user: Uuid,
) -> Result<Vec<dto::Reassigned>, ApiError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let held: Vec<(Uuid, Uuid)> = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT conversation_id, inbox_id FROM routing_rule_conversations \
         WHERE tenant_id = $1 AND assignee = $2 AND open = $3 ORDER BY conversation_id"
    )
    .bind(t.0)
    .bind(user)
    .bind(true)
    .fetch_all(c)
    .await
    .and_then(|rows| rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()))
    .map_err(db_error)?;
    tx.commit().await?;
    let worker = Worker {
        cells: dir.cells().clone(),
        directory: dir.clone(),
        ingestor: Ingestor::new(dir.cells().clone()),
        bus: ctx.cell().bus.clone(),
    };
    // One trigger id per request: a retry of the same request is a new decision.
    let trigger = Uuid::now_v7();
    let mut out = Vec::with_capacity(held.len());
    for (conversation, inbox) in held {
        let rules = rules::load_core(ctx, inbox).await?;
        let Some((rule, team, strategy, skill)) =
            rules.iter().filter(|r| r.enabled).find_map(|r| {
                r.actions.iter().find_map(|a| match a {
                    core::Action::AssignTeam {
                        team,
                        strategy,
                        skill,
                    } => Some((r, *team, *strategy, skill.clone())),
                    _ => None,
                })
            })
        else {
            out.push(dto::Reassigned {
                conversation_id: conversation,
                assignee: None,
                outcome: "no_assignment_rule".into(),
            });
            continue;
        };
        let snapshot = Snapshot::load(dir, ctx, inbox, std::slice::from_ref(rule)).await?;
        let mut pool = snapshot.pool;
        // Never back to the same agent, whatever their availability says.
        pool.agents.remove(&user);
        let Some(pick) = pool.assign(rule.id, team, strategy, skill.as_deref()) else {
            out.push(dto::Reassigned {
                conversation_id: conversation,
                assignee: None,
                outcome: "no_one_available".into(),
            });
            continue;
        };
        let fired = [Fired {
            rule_id: rule.id,
            rule_name: rule.name.clone(),
            actions: vec![Decided::Assign(pick)],
        }];
        let recorded = worker
            .record(
                ctx,
                conversation,
                inbox,
                trigger,
                "reassign",
                &fired,
                &rules,
                true,
            )
            .await
            .map_err(|e| ApiError::internal(&e))?;
        worker
            .send(ctx, conversation, trigger, &recorded)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        out.push(dto::Reassigned {
            conversation_id: conversation,
            assignee: Some(pick),
            outcome: "reassigned".into(),
        });
    }
    Ok(out)
}
