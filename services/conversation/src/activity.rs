//! Facts about agents' work that are not changes of a conversation (ADR 0014): a reply or note
//! refused for a stale view (409 `stale_conversation`, a duplicate reply prevented) and a reply
//! written from a template. Each is one event on its own `conversation_activity` stream,
//! appended with `NoStream`, so the routing service's metrics count them from the log and a
//! replay counts them again.

use crate::api::Failure;
use postvak_platform::cell::TenantContext;
use postvak_platform::http::ApiError;
use postvak_platform::store::{ExpectedVersion, NewEvent, StoreError, StreamRef};
use postvak_proto::events::agent_activity as ev;
use uuid::Uuid;

/// Records a reply/note that was refused as stale, then answers the same refusal. Any other
/// failure passes through untouched. A failure to record is logged, never shown to the caller:
/// the 409 is what they must see.
pub(crate) async fn refused(
    ctx: &TenantContext,
    conversation_id: Uuid,
    action: &str,
    seen: Option<u64>,
    failure: Failure,
) -> Failure {
    let (Failure::Stale(problem), Some(seen_version)) = (&failure, seen) else {
        return failure;
    };
    let fact = ev::StaleWriteRefusedV1 {
        conversation_id,
        action: action.to_owned(),
        user_id: user_of(ctx),
        seen_version,
        current_version: problem.current_version,
        at_us: crate::now_us(),
    };
    let recorded = async {
        let e = NewEvent::from_payload(ev::STALE_WRITE_REFUSED, 1, &fact)?;
        let stream = StreamRef::new(ev::STREAM_ACTIVITY, format!("refused-{}", e.event_id));
        ctx.append(&stream, ExpectedVersion::NoStream, vec![e])
            .await
    };
    if let Err(e) = recorded.await {
        tracing::error!(error = %e, %conversation_id, "a stale refusal was not recorded");
    }
    failure
}

/// A template the reply may name: one of the tenant's, or of the conversation's inbox.
pub(crate) async fn check_template(
    ctx: &TenantContext,
    inbox_id: Uuid,
    template_id: Uuid,
) -> Result<(), Failure> {
    let internal = |e: StoreError| Failure::Api(ApiError::internal(&e));
    let mut tx = ctx
        .cell()
        .db()
        .tenant_tx(ctx.tenant(), false)
        .await
        .map_err(internal)?;
    let found = crate::templates::load_in_tx(
        &mut tx,
        ctx.cell().store.keyring(),
        ctx.tenant(),
        template_id,
    )
    .await
    .map_err(internal)?;
    drop(tx);
    match found {
        Some((None, _, _)) => Ok(()),
        Some((Some(inbox), _, _)) if inbox == inbox_id => Ok(()),
        _ => Err(Failure::Api(ApiError::unprocessable(
            "unknown_template",
            "template_id names no template of the tenant or of this conversation's inbox",
        ))),
    }
}

/// Records that the reply `message_id` was written from `template_id` (once per reply).
pub(crate) async fn template_used(
    ctx: &TenantContext,
    conversation_id: Uuid,
    message_id: Uuid,
    template_id: Uuid,
) {
    let fact = ev::TemplateUsedV1 {
        conversation_id,
        message_id,
        template_id,
        user_id: user_of(ctx),
        at_us: crate::now_us(),
    };
    let recorded = async {
        let e = NewEvent::from_payload(ev::TEMPLATE_USED, 1, &fact)?;
        let stream = StreamRef::new(ev::STREAM_ACTIVITY, format!("template-{message_id}"));
        ctx.append(&stream, ExpectedVersion::NoStream, vec![e])
            .await
    };
    match recorded.await {
        Ok(_) | Err(StoreError::Conflict { .. }) => {}
        Err(e) => tracing::error!(error = %e, %conversation_id, "a template use was not recorded"),
    }
}

fn user_of(ctx: &TenantContext) -> Option<Uuid> {
    match ctx.principal() {
        postvak_platform::cell::Principal::User { user_id, .. } => Some(*user_id),
        _ => None,
    }
}
