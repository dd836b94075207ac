//! Settings of the SMTP listener (the `[smtp]` section of the configuration).

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpSettings {
    /// Listen address; port 0 picks a free port (tests).
    pub addr: String,
    /// Our name in the greeting and EHLO reply.
    pub hostname: String,
    /// Largest message accepted, in bytes (advertised as `SIZE`; more is answered 552).
    pub max_message_size: usize,
    /// PEM certificate chain and private key for STARTTLS; STARTTLS is offered only with both.
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    /// Open connections in total; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open connections per peer IP; more are answered 421 and closed.
    pub max_connections_per_peer: usize,
    /// Messages (`MAIL FROM`) per peer IP per minute, as a token bucket of this size; more
    /// are answered 451 4.7.1 until tokens refill.
    pub max_messages_per_minute_per_peer: u32,
    /// Recipients per message; more are answered 452.
    pub max_recipients: usize,
    /// A connection idle longer than this is closed (421).
    pub idle_timeout_secs: u64,
    /// Protocol errors tolerated per connection before it is closed.
    pub max_errors: u32,
    /// Seconds `run` waits on shutdown for sessions in the middle of a delivery.
    pub shutdown_grace_secs: u64,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:2525".to_owned(),
            hostname: "localhost".to_owned(),
            max_message_size: 25 * 1024 * 1024,
            tls_cert_path: None,
            tls_key_path: None,
            max_connections: 1024,
            max_connections_per_peer: 32,
            max_messages_per_minute_per_peer: 1200,
            max_recipients: 100,
            idle_timeout_secs: 300,
            max_errors: 10,
            shutdown_grace_secs: 30,
        }
    }
}

/// Settings of the raw-MIME endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawApiSettings {
    /// Largest body accepted, in bytes (more: 413).
    pub max_message_size: usize,
}

impl Default for RawApiSettings {
    fn default() -> Self {
        Self {
            max_message_size: 25 * 1024 * 1024,
        }
    }
}

/// Settings of the IMAP connector (the `[imap]` section).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImapSettings {
    /// Run the connector at all (`postvak serve` / `run ingest`).
    pub enabled: bool,
    /// Seconds between polls of a server that does not offer IDLE.
    pub poll_interval_secs: u64,
    /// Seconds an IDLE lasts before it is renewed (RFC 2177: servers may drop it after 30
    /// minutes).
    pub idle_renew_secs: u64,
    /// Accounts syncing at the same time per cell; the others wait their turn (an account in
    /// IDLE or between polls holds no slot).
    pub max_concurrent_accounts: usize,
    /// Larger messages are quarantined without being downloaded.
    pub max_message_size: u64,
    /// Seconds between looks at the account list (created, changed, deleted accounts).
    pub discovery_interval_secs: u64,
    /// Seconds to connect, log in and select; and the limit of any one command.
    pub connect_timeout_secs: u64,
    pub command_timeout_secs: u64,
    /// Backoff of a failing account: doubles from `backoff_initial_secs` up to
    /// `backoff_max_secs`.
    pub backoff_initial_secs: u64,
    pub backoff_max_secs: u64,
    /// Attempts at one message while the database answers before it is quarantined as
    /// `pipeline_failed` (a database that does not answer never quarantines anything).
    pub max_message_attempts: u32,
    /// Accept accounts with `tls = "plain"` (no encryption: loopback tests only).
    pub allow_plaintext: bool,
    /// A PEM file of extra trust anchors (a private CA; tests), besides the Web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Address ranges an account's host may resolve to although they are not public
    /// (e.g. `["127.0.0.1/32"]` for a server on the same host). Everything else that is
    /// loopback, private, link-local or reserved is refused at creation and at every
    /// connection — the same policy as webhooks (`postvak_platform::netguard`).
    pub allow_private: Vec<String>,
}

impl Default for ImapSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval_secs: 60,
            idle_renew_secs: 25 * 60,
            max_concurrent_accounts: 16,
            max_message_size: 25 * 1024 * 1024,
            discovery_interval_secs: 10,
            connect_timeout_secs: 30,
            command_timeout_secs: 300,
            backoff_initial_secs: 5,
            backoff_max_secs: 600,
            max_message_attempts: 5,
            allow_plaintext: false,
            ca_file: None,
            allow_private: Vec::new(),
        }
    }
}
