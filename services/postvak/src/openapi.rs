//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(title = "Postvak", description = "Multi-tenant, event-sourced shared-inbox backend."),
    paths(
        postvak_platform::http::healthz,
        postvak_platform::http::readyz,
        postvak_platform::http::metrics,
        postvak_directory::api::me,
        postvak_directory::api::login,
        postvak_directory::api::logout,
        postvak_directory::api::list_tenants,
        postvak_directory::api::create_tenant,
        postvak_directory::api::get_security,
        postvak_directory::api::put_security,
        postvak_directory::api::list_users,
        postvak_directory::api::create_user,
        postvak_directory::api::get_user,
        postvak_directory::api::update_user,
        postvak_directory::api::set_password,
        postvak_directory::api::enroll_totp,
        postvak_directory::api::confirm_totp,
        postvak_directory::api::list_teams,
        postvak_directory::api::create_team,
        postvak_directory::api::add_team_member,
        postvak_directory::api::remove_team_member,
        postvak_directory::api::list_inboxes,
        postvak_directory::api::create_inbox,
        postvak_directory::api::get_inbox,
        postvak_directory::api::update_inbox,
        postvak_directory::api::list_members,
        postvak_directory::api::add_member,
        postvak_directory::api::remove_member,
        postvak_directory::api::list_api_keys,
        postvak_directory::api::create_api_key,
        postvak_directory::api::revoke_api_key,
        postvak_directory::sso::get_sso_settings,
        postvak_directory::sso::put_sso_settings,
        postvak_directory::sso::sso_start,
        postvak_directory::sso::sso_callback,
        postvak_ingest::api::post_raw_message,
        postvak_ingest::imap::api::list_imap_accounts,
        postvak_ingest::imap::api::create_imap_account,
        postvak_ingest::imap::api::get_imap_account,
        postvak_ingest::imap::api::update_imap_account,
        postvak_ingest::imap::api::delete_imap_account,
        postvak_ingest::imap::api::reimport_quarantined_message,
        postvak_conversation::api::list_conversations,
        postvak_conversation::api::create_conversation,
        postvak_conversation::api::get_conversation,
        postvak_conversation::api::download_file,
        postvak_conversation::api::download_original,
        postvak_conversation::api::create_reply,
        postvak_conversation::api::create_note,
        postvak_conversation::api::claim_conversation,
        postvak_conversation::api::assign_conversation,
        postvak_conversation::api::unassign_conversation,
        postvak_conversation::api::set_conversation_status,
        postvak_conversation::api::snooze_conversation,
        postvak_conversation::api::wake_conversation,
        postvak_conversation::api::set_conversation_priority,
        postvak_conversation::api::add_conversation_tag,
        postvak_conversation::api::remove_conversation_tag,
        postvak_conversation::api::add_conversation_participant,
        postvak_conversation::api::archive_conversation,
        postvak_conversation::api::move_conversation,
        postvak_conversation::api::merge_conversation,
        postvak_conversation::api::stream_changes,
        postvak_notification::api::list_webhooks,
        postvak_notification::api::create_webhook,
        postvak_notification::api::delete_webhook,
        postvak_notification::api::list_webhook_deliveries,
        postvak_notification::api::redeliver_webhook_delivery,
        postvak_notification::api::get_smtp_relay,
        postvak_notification::api::put_smtp_relay,
        postvak_notification::api::delete_smtp_relay,
        postvak_notification::api::get_notification_preferences,
        postvak_notification::api::set_notification_preferences,
        postvak_conversation::api::set_presence,
        postvak_conversation::drafts::list_drafts,
        postvak_conversation::drafts::create_draft,
        postvak_conversation::drafts::get_draft,
        postvak_conversation::drafts::update_draft,
        postvak_conversation::drafts::delete_draft,
        postvak_conversation::drafts::lock_draft,
        postvak_conversation::drafts::unlock_draft,
        postvak_conversation::templates::list_templates,
        postvak_conversation::templates::create_template,
        postvak_conversation::templates::get_template,
        postvak_conversation::templates::update_template,
        postvak_conversation::templates::delete_template,
        postvak_conversation::templates::render_conversation_template,
        postvak_conversation::suggest::list_providers,
        postvak_conversation::suggest::create_provider,
        postvak_conversation::suggest::get_provider,
        postvak_conversation::suggest::update_provider,
        postvak_conversation::suggest::delete_provider,
        postvak_conversation::contacts::api::list_contacts,
        postvak_conversation::contacts::api::create_contact,
        postvak_conversation::contacts::api::get_contact,
        postvak_conversation::contacts::api::update_contact,
        postvak_conversation::contacts::api::erase_contact,
        postvak_conversation::contacts::api::erase_contact_post,
        postvak_conversation::contacts::api::merge_contact,
        postvak_conversation::contacts::api::list_contact_conversations,
        postvak_conversation::contacts::api::export_contact,
        postvak_routing::rules::list_rules,
        postvak_routing::rules::create_rule,
        postvak_routing::rules::get_rule,
        postvak_routing::rules::replace_rule,
        postvak_routing::rules::delete_rule,
        postvak_routing::rules::reorder_rules,
        postvak_routing::rules::dry_run,
        postvak_routing::availability::get_availability,
        postvak_routing::availability::put_availability,
        postvak_routing::availability::reassign,
        postvak_routing::sla::get_sla_policy,
        postvak_routing::sla::put_sla_policy,
        postvak_routing::sla::delete_sla_policy,
        postvak_routing::sla::get_automation,
        postvak_routing::sla::put_automation,
        postvak_routing::metrics::get_metrics,
    ),
    components(schemas(
        postvak_proto::Problem,
        // What a draft provider receives and answers (not a route of ours).
        postvak_proto::rest::draft_providers::SuggestionRequest,
        postvak_proto::rest::draft_providers::SuggestionAnswer,
        // What `/v1/stream` sends as `event: notification`.
        postvak_proto::rest::notification::NotificationStreamEvent,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "auth", description = "Logins and sessions"),
        (name = "platform", description = "Installation-wide administration"),
        (name = "directory", description = "Users, teams, inboxes, memberships and API keys"),
        (name = "ingest", description = "Mail in: raw MIME and IMAP accounts"),
        (name = "conversations", description = "Conversations, replies as the inbox, notes, hand-offs, drafts, live updates"),
        (name = "templates", description = "Reply templates per tenant or inbox"),
        (name = "draft-providers", description = "Tenant endpoints asked for suggested reply drafts"),
        (name = "contacts", description = "Contacts: history, merge, GDPR export and erasure"),
        (name = "webhooks", description = "Signed tenant webhooks, deliveries and redelivery"),
        (name = "notifications", description = "Agent notification preferences, inbox SMTP relays"),
        (name = "routing", description = "Rules per inbox, dry-run, agent availability and reassignment, SLA policies, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (`pvk_…`) or a session token"))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON (what `docs/openapi.json` holds).
pub fn json() -> anyhow::Result<String> {
    Ok(ApiDoc::openapi().to_pretty_json()? + "\n")
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// Every route a service registers (a `route` or `web::resource` call with a literal path
    /// in its sources) is a path of the document, with its method
    /// when the registration names one. Exempt: the document itself and `postvak bench`'s
    /// stand-in identity provider.
    #[test]
    fn every_route_is_documented() {
        fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    sources(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        const EXEMPT: [&str; 3] = [
            "/openapi.json",
            "/jwks",
            "/.well-known/openid-configuration",
        ];
        let doc: Value = serde_json::from_str(&super::json().unwrap()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for service in std::fs::read_dir(&services).unwrap() {
            let src = service.unwrap().path().join("src");
            if src.is_dir() {
                sources(&src, &mut files);
            }
        }
        let mut seen = 0;
        let mut missing = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            for call in [".route(", "web::resource("] {
                for (at, _) in text.match_indices(call) {
                    let rest = text[at + call.len()..].trim_start();
                    let Some(lit) = rest.strip_prefix("\"/") else {
                        continue;
                    };
                    let Some(end) = lit.find('"') else { continue };
                    let path = format!("/{}", &lit[..end]);
                    if EXEMPT.contains(&path.as_str()) {
                        continue;
                    }
                    seen += 1;
                    let after = lit[end..].trim_start_matches(['"', ',', ' ', '\n']);
                    let method = after
                        .strip_prefix("web::")
                        .and_then(|m| m.split_once("()"))
                        .map(|(m, _)| m);
                    match (paths.get(&path), method) {
                        (None, _) => missing.push(format!("{path} ({})", f.display())),
                        (Some(ops), Some(m)) if ops.get(m).is_none() => {
                            missing.push(format!("{m} {path} ({})", f.display()));
                        }
                        _ => {}
                    }
                }
            }
        }
        assert!(
            seen > 50,
            "only {seen} routes found: is the scan still right?"
        );
        missing.sort();
        assert!(
            missing.is_empty(),
            "undocumented routes:\n{}",
            missing.join("\n")
        );
    }

    /// Every `allOf` in the document whose parts can all hold at once: a part that forbids
    /// additional properties must name every property the other parts add. (A strict struct
    /// flattened into another — `deny_unknown_fields` + `flatten` — breaks this, and every
    /// response of that type then fails its own schema.)
    #[test]
    fn no_all_of_contradicts_itself() {
        let doc: Value = serde_json::from_str(&super::json().unwrap()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let resolve = |v: &Value| -> Value {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
                None => v.clone(),
            }
        };
        let mut bad = Vec::new();
        let mut stack: Vec<(String, Value)> = vec![("#".into(), doc.clone())];
        while let Some((at, v)) = stack.pop() {
            match &v {
                Value::Object(m) => {
                    if let Some(Value::Array(parts)) = m.get("allOf") {
                        let parts: Vec<Value> = parts.iter().map(&resolve).collect();
                        let props = |p: &Value| -> Vec<String> {
                            p["properties"]
                                .as_object()
                                .map(|o| o.keys().cloned().collect())
                                .unwrap_or_default()
                        };
                        for (i, p) in parts.iter().enumerate() {
                            if p["additionalProperties"] != Value::Bool(false) {
                                continue;
                            }
                            let own = props(p);
                            for (j, q) in parts.iter().enumerate() {
                                if i != j {
                                    for k in props(q).into_iter().filter(|k| !own.contains(k)) {
                                        bad.push(format!(
                                            "{at}: part {i} forbids `{k}` of part {j}"
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    for (k, c) in m {
                        stack.push((format!("{at}/{k}"), c.clone()));
                    }
                }
                Value::Array(a) => {
                    for (i, c) in a.iter().enumerate() {
                        stack.push((format!("{at}/{i}"), c.clone()));
                    }
                }
                _ => {}
            }
        }
        bad.sort();
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
