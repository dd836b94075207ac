//! REST DTOs of the notification service (`/v1/webhooks…`) and the body of a webhook.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Event names a webhook can subscribe to.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "convo.created",
    "convo.assigned",
    "convo.customer.reply.created",
    "convo.agent.reply.created",
    "convo.note.created",
    "convo.status",
    "convo.tags",
    "convo.agent.reply.failed",
];

/// A new subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `http` or `https` endpoint.
    pub url: String,
    /// Event names (see `WEBHOOK_EVENTS`); at least one.
    pub events: Vec<String>,
    /// Only events of conversations in this inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<Uuid>,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// A subscription just created, with its signing secret (shown this once only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_<base64>`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<Webhook>,
}

/// One delivery of one event to one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDelivery {
    /// Also the `webhook-id` header: the same on every retry and redelivery.
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending`, `delivered`, `dead` (retries exhausted: the dead-letter list).
    pub state: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDeliveryList {
    pub items: Vec<WebhookDelivery>,
}

/// The JSON body POSTed to an endpoint (Standard Webhooks shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookPayload {
    /// e.g. `convo.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: OffsetDateTime,
    pub data: WebhookData,
}

/// What happened to which conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookData {
    pub conversation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<Uuid>,
    /// The stored event's id (stable: receivers may dedupe on it).
    pub event_id: Uuid,
    /// The event's own fields as the conversation service stores them.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    /// The message's attachments, metadata only (no content), on
    /// `convo.customer.reply.created` and `convo.agent.reply.created`: present (possibly empty)
    /// on those, absent on the others. A message recorded before attachments were listed has
    /// an empty list here and only its count in `event.attachments`. There is no API that
    /// returns an attachment's content yet; `id` is stable and names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<crate::rest::conversation::MessageAttachment>>,
}

/// How a user is told about assignments, mentions, undelivered replies and SLA alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationPreferences {
    /// `each` (one mail per notification), `digest` (one mail per interval), `off`.
    pub delivery: String,
    /// The digest interval in seconds (default 3600).
    #[serde(default = "default_digest_secs")]
    pub digest_secs: u32,
    /// SLA warnings and breaches of conversations assigned to you (or, unassigned, of inboxes
    /// you administer): `inherit` (as `delivery`; the default), `each`, `digest` or `off`.
    #[serde(default = "default_sla_alerts")]
    pub sla_alerts: String,
    /// Also push your notifications to your `/v1/stream` (`event: notification`), whatever
    /// `delivery` says about mail (default `true`).
    #[serde(default = "default_stream")]
    pub stream: bool,
}

fn default_stream() -> bool {
    true
}

/// Body of `PUT /v1/inboxes/{inbox_id}/smtp-relay`: the inbox's replies go through this relay
/// instead of the platform's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSmtpRelay {
    /// A DNS name or an IP address; it must resolve to public addresses only, unless the
    /// operator allows a range (`[outbound_smtp] allow_private`).
    pub host: String,
    /// Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `starttls` (the default: required, not opportunistic), `tls` (from the first byte) or
    /// `none` (no TLS; not with a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    /// AUTH login; absent: no AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// AUTH password: stored sealed, never returned. May be left out when replacing a relay
    /// whose username stays the same (the stored one is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// An inbox's own SMTP relay (the password is never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SmtpRelay {
    pub inbox_id: Uuid,
    pub host: String,
    pub port: u16,
    /// `starttls`, `tls` or `none`.
    pub security: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A password is stored.
    pub has_password: bool,
    /// Bumped by every change.
    pub revision: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// An agent notification as `/v1/stream` sends it (`event: notification`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NotificationStreamEvent {
    pub notification_id: Uuid,
    /// `assigned`, `mentioned`, `reply_failed`, `sla_warning`, `sla_breached`.
    pub kind: String,
    pub conversation_id: Uuid,
    /// The user who caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Uuid>,
    /// SLA alerts: which clock, when it is due, the policy (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

fn default_digest_secs() -> u32 {
    3_600
}

fn default_sla_alerts() -> String {
    "inherit".to_owned()
}
