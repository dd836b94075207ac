//! Every webhook, preference and inbox-relay route is documented (the handler names the binary's OpenAPI document lists).

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(paths(
    postvak_notification::api::list_webhooks,
    postvak_notification::api::create_webhook,
    postvak_notification::api::delete_webhook,
    postvak_notification::api::list_webhook_deliveries,
    postvak_notification::api::redeliver_webhook_delivery,
    postvak_notification::api::get_notification_preferences,
    postvak_notification::api::set_notification_preferences,
    postvak_notification::api::get_smtp_relay,
    postvak_notification::api::put_smtp_relay,
    postvak_notification::api::delete_smtp_relay,
))]
struct Doc;

#[test]
fn the_webhook_routes_are_in_the_openapi_document() {
    let doc = serde_json::to_value(Doc::openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/webhooks", "get"),
        ("/v1/webhooks", "post"),
        ("/v1/webhooks/{webhook_id}", "delete"),
        ("/v1/webhooks/{webhook_id}/deliveries", "get"),
        (
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            "post",
        ),
        ("/v1/me/notification-preferences", "get"),
        ("/v1/me/notification-preferences", "put"),
        ("/v1/inboxes/{inbox_id}/smtp-relay", "get"),
        ("/v1/inboxes/{inbox_id}/smtp-relay", "put"),
        ("/v1/inboxes/{inbox_id}/smtp-relay", "delete"),
    ] {
        assert!(paths[path].get(method).is_some(), "{method} {path} missing");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in [
        "CreateWebhook",
        "CreatedWebhook",
        "WebhookDeliveryList",
        "PutSmtpRelay",
        "SmtpRelay",
        "Problem",
    ] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
}
