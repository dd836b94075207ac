//! The ingest service: mail in over SMTP (and as raw MIME over REST), parsed, deduplicated,
//! threaded, sealed and stored, each accepted mail becoming one `message.received` event.
//!
//! - [`smtp::SmtpServer`]: the MX listener (`bind`, `port`, `run`).
//! - [`api::routes`]: `POST /v1/inboxes/{inbox_id}/messages/raw`.
//! - [`pipeline::Ingestor`]: the pipeline both share (see its module docs for why it neither
//!   loses nor doubles a mail).
//! - [`parse`], [`thread`], [`keys`]: pure parts — MIME parsing, threading decisions, blind
//!   indexes and reply tokens.
//! - [`bench`]: `postvak bench ingest`.
//!
//! - [`gc`]: the blob sweeper (blobs no message references, after a grace period).
//! - [`imap`]: the IMAP connector (accounts per inbox over `/v1/inboxes/{id}/imap-accounts`,
//!   a supervisor per cell syncing them into the pipeline).

pub mod api;
pub mod bench;
pub mod gc;
pub mod imap;
pub mod keys;
pub mod parse;
pub mod pipeline;
mod repo;
pub mod settings;
pub mod smtp;
pub mod standalone;
pub mod thread;

pub use gc::BlobGcSettings;
pub use pipeline::{Delivery, IngestError, Ingestor, Recipient, Source};
pub use settings::{ImapSettings, RawApiSettings, SmtpSettings};
