//! Settings: `[outbound_smtp]` (the platform's default relay) and `[webhooks]`.

use postvak_platform::config::SecretString;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// How the relay connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which is required.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS (a relay on localhost only).
    None,
}

/// The platform's default SMTP relay (`Config::section("outbound_smtp")`), the DKIM keys
/// replies are signed with, and the limits of inbox relays (an inbox may have its own relay,
/// set over the API: `/v1/inboxes/{id}/smtp-relay`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundSmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// An extra trusted root certificate (PEM) for a relay with a private CA.
    pub ca_cert_file: Option<PathBuf>,
    /// Connections kept open to the relay.
    pub pool_size: u32,
    /// Mails sent at once.
    pub concurrency: usize,
    pub timeout_ms: u64,
    /// First retry after a temporary failure; doubled per attempt up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts before a temporarily failing mail is given up (`reply.failed`).
    pub max_attempts: u32,
    /// A mail found `sending` this long after it was claimed was interrupted: its delivery is
    /// uncertain and it is not resent (ADR 0006).
    pub sending_lease_ms: u64,
    /// Sender of agent notifications (assigned, mentioned, digests).
    pub notification_from: String,
    /// DKIM keys by sending domain: a reply whose From address is at `domain` is signed.
    pub dkim: Vec<DkimKeySettings>,
    /// Address ranges an inbox's own relay may be at although they are loopback, private,
    /// link-local or reserved (refused otherwise, when it is set and at every connection),
    /// e.g. `["10.20.0.0/16"]` for a relay inside the operator's network. Empty by default.
    /// The default relay above is the operator's own and is not checked.
    pub allow_private: Vec<String>,
    /// Connections kept open to each inbox relay.
    pub inbox_relay_pool_size: u32,
    /// Mails sent at once through one inbox relay (a slow one never holds up the others).
    pub inbox_relay_concurrency: usize,
    /// Inbox relays whose connection pools are kept at once; the least recently used is
    /// closed beyond that.
    pub inbox_relay_pools: usize,
}

/// One DKIM signing key (`[[outbound_smtp.dkim]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeySettings {
    /// The sending domain (`d=`), matched against the From address, case-insensitively.
    pub domain: String,
    /// The selector (`s=`): the public key is at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM (PKCS#1, `BEGIN RSA PRIVATE KEY`) for `rsa`; base64 of the 32-byte seed for
    /// `ed25519`. Read once at start; never logged.
    pub private_key_file: PathBuf,
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
}

/// `rsa` (rsa-sha256, the default) or `ed25519` (ed25519-sha256, RFC 8463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    #[default]
    Rsa,
    Ed25519,
}

impl Default for OutboundSmtpSettings {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 587,
            security: SmtpSecurity::Starttls,
            username: None,
            password: None,
            ca_cert_file: None,
            pool_size: 8,
            concurrency: 8,
            timeout_ms: 30_000,
            retry_base_ms: 30_000,
            retry_max_ms: 3_600_000,
            max_attempts: 12,
            sending_lease_ms: 600_000,
            notification_from: "Postvak <notifications@localhost>".into(),
            dkim: Vec::new(),
            allow_private: Vec::new(),
            inbox_relay_pool_size: 2,
            inbox_relay_concurrency: 2,
            inbox_relay_pools: 64,
        }
    }
}

impl OutboundSmtpSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
    pub fn retry_base(&self) -> Duration {
        Duration::from_millis(self.retry_base_ms)
    }
    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms)
    }
    pub fn sending_lease(&self) -> Duration {
        Duration::from_millis(self.sending_lease_ms)
    }
}

/// Webhook delivery (`Config::section("webhooks")`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// One request's limit, connection included.
    pub timeout_ms: u64,
    /// Requests in flight to one endpoint (subscription) at once.
    pub per_endpoint_concurrency: usize,
    /// Requests in flight for one tenant over all its endpoints.
    pub per_tenant_concurrency: usize,
    /// Requests in flight over all endpoints.
    pub total_concurrency: usize,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts before a delivery goes to the dead-letter list.
    pub max_attempts: u32,
    /// Address ranges webhooks may reach although they are loopback, private, link-local or
    /// reserved (refused otherwise, at creation and at every connection), e.g.
    /// `["127.0.0.1/32"]` for a receiver on the same host. Empty by default.
    pub allow_private: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            per_endpoint_concurrency: 4,
            per_tenant_concurrency: 32,
            total_concurrency: 256,
            retry_base_ms: 5_000,
            retry_max_ms: 3_600_000,
            max_attempts: 10,
            allow_private: Vec::new(),
        }
    }
}

/// Everything `postvak_notification::start` needs: read `[outbound_smtp]` and `[webhooks]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationSettings {
    pub outbound_smtp: OutboundSmtpSettings,
    pub webhooks: WebhookSettings,
}
