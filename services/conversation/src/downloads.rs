//! The bytes behind a conversation's file ids (ADR 0027): an inbound message's text and HTML
//! bodies, its attachments and inline images (ingest's sealed blobs), a reply's files
//! (`conversation_reply_files`, see [`crate::files`]) and an inbound message's original.
//!
//! A file is served only when a message of *this* conversation names it, as the read model the
//! caller may see shows it ([`find_file`], [`find_original`]): knowing an id is never enough
//! (ingest's blob ids are content-addressed per tenant, so the same bytes in two conversations
//! share one id — the conversation asked about decides). Content that was listed but can no
//! longer be read (a reply's files removed by a contact's erasure, a destroyed key, a removed
//! blob) is [`ReadError::Gone`], which the API answers 410 `file_erased`.
//!
//! The rest is how the bytes are labelled for a browser: a sanitised `Content-Type`,
//! `Content-Disposition` with an RFC 6266/5987 file name, and whether a sandboxing
//! `Content-Security-Policy` is needed.

use postvak_ingest::{IngestError, Ingestor};
use postvak_platform::cell::TenantContext;
use postvak_platform::crypto::CryptoError;
use postvak_platform::store::StoreError;
use postvak_proto::rest::conversation::ConversationDetail;
use uuid::Uuid;

/// Where a file's bytes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// One of ingest's sealed blobs (an inbound body part or attachment).
    IngestBlob(Uuid),
    /// A reply's file.
    ReplyFile(Uuid),
    /// The original of an inbound message, as ingest stored it.
    Original(Uuid),
}

/// A file a message of the conversation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub source: Source,
    /// As stored (`type/subtype`, maybe with parameters); [`content_type`] makes the header.
    pub content_type: String,
    /// The name to offer (not yet sanitised).
    pub filename: String,
}

/// The file `file_id` if a message of `detail` names it: an inbound message's text or HTML
/// body, or an attachment (inline or not) of any message.
pub(crate) fn find_file(detail: &ConversationDetail, file_id: Uuid) -> Option<Found> {
    for m in &detail.messages {
        let inbound = m.direction == "inbound";
        if inbound && m.text_blob_id == Some(file_id) {
            return Some(Found {
                source: Source::IngestBlob(file_id),
                content_type: "text/plain; charset=utf-8".into(),
                filename: "message.txt".into(),
            });
        }
        if inbound && m.html_blob_id == Some(file_id) {
            return Some(Found {
                source: Source::IngestBlob(file_id),
                content_type: "text/html; charset=utf-8".into(),
                filename: "message.html".into(),
            });
        }
        if let Some(a) = m.attachment_list.iter().find(|a| a.id == file_id) {
            return Some(Found {
                source: if inbound {
                    Source::IngestBlob(file_id)
                } else {
                    Source::ReplyFile(file_id)
                },
                content_type: a.content_type.clone(),
                filename: a
                    .filename
                    .clone()
                    .unwrap_or_else(|| default_name(&a.content_type)),
            });
        }
    }
    None
}

/// The original of `message_id` if it is an inbound message of `detail` (replies have none:
/// the notification service builds their MIME when it sends).
pub(crate) fn find_original(detail: &ConversationDetail, message_id: Uuid) -> Option<Found> {
    detail
        .messages
        .iter()
        .any(|m| m.id == message_id && m.direction == "inbound")
        .then(|| Found {
            source: Source::Original(message_id),
            content_type: "message/rfc822".into(),
            filename: "message.eml".into(),
        })
}

/// Why a listed file could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// Listed, but its content is no longer kept (removed, or its key destroyed).
    #[error("the content of this file is no longer kept")]
    Gone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn gone_or(e: StoreError) -> ReadError {
    match e {
        StoreError::Crypto(CryptoError::KeyDestroyed { .. }) => ReadError::Gone,
        other => ReadError::Store(other),
    }
}

fn from_ingest(e: IngestError) -> ReadError {
    match e {
        IngestError::Crypto(CryptoError::KeyDestroyed { .. }) => ReadError::Gone,
        IngestError::Store(s) => gone_or(s),
        IngestError::Crypto(c) => ReadError::Store(StoreError::Crypto(c)),
        other => ReadError::Store(StoreError::Unavailable(other.to_string())),
    }
}

/// The plaintext of a file found by [`find_file`] or [`find_original`].
pub(crate) async fn read(
    ctx: &TenantContext,
    ingestor: &Ingestor,
    source: Source,
) -> Result<Vec<u8>, ReadError> {
    let blob = match source {
        Source::ReplyFile(id) => {
            return crate::files::read(ctx, id)
                .await
                .map_err(gone_or)?
                .ok_or(ReadError::Gone);
        }
        Source::IngestBlob(id) => id,
        Source::Original(message) => {
            let received = ingestor
                .received_message(ctx, message)
                .await
                .map_err(from_ingest)?
                .ok_or(ReadError::Gone)?;
            received.raw.blob_id
        }
    };
    ingestor
        .read_blob(ctx, blob)
        .await
        .map_err(from_ingest)?
        .ok_or(ReadError::Gone)
}

/// The `type/subtype` of a stored type, lower case; `application/octet-stream` for anything
/// that is not a well-formed type (inbound types come from the sender).
pub(crate) fn essence(stored: &str) -> String {
    let e = stored
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match e.split_once('/') {
        Some((t, sub)) if crate::files::token(t) && crate::files::token(sub) => e,
        _ => "application/octet-stream".into(),
    }
}

/// The `Content-Type` header: the stored type's essence, with `charset=utf-8` for text that
/// is UTF-8 (ingest decodes text parts to UTF-8; a reply's text file is what the agent sent).
pub(crate) fn content_type(stored: &str, bytes: &[u8]) -> String {
    let e = essence(stored);
    if e.starts_with("text/") && std::str::from_utf8(bytes).is_ok() {
        format!("{e}; charset=utf-8")
    } else {
        e
    }
}

/// The policy sent with every download but a PDF's: a document opened from this origin runs no
/// script, loads nothing from elsewhere (an HTML mail's tracking images included) and gets an
/// opaque origin. PDFs are exempt because browsers' PDF viewers refuse to run sandboxed; a PDF's
/// own scripts run inside the viewer, not in this origin.
pub(crate) const SANDBOX_POLICY: &str =
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'";

/// Whether the response needs [`SANDBOX_POLICY`].
pub(crate) fn needs_sandbox(essence: &str) -> bool {
    essence != "application/pdf"
}

/// `?disposition=inline` is honoured for images a browser only displays (not SVG, which runs
/// script), PDFs and plain text; everything else is always an attachment.
pub(crate) fn inline_allowed(essence: &str) -> bool {
    match essence.split_once('/') {
        Some(("image", sub)) => !sub.contains("svg") && !sub.contains("xml"),
        _ => essence == "application/pdf" || essence == "text/plain",
    }
}

/// A name for an attachment the sender did not name.
fn default_name(content_type: &str) -> String {
    let ext = match essence(content_type).as_str() {
        "text/plain" => ".txt",
        "text/html" => ".html",
        "text/calendar" => ".ics",
        "application/pdf" => ".pdf",
        "image/png" => ".png",
        "image/jpeg" => ".jpg",
        "image/gif" => ".gif",
        "image/webp" => ".webp",
        "message/rfc822" => ".eml",
        _ => "",
    };
    format!("attachment{ext}")
}

/// A file name safe to offer: no path (separators become `_`), no control characters, none of
/// the characters Windows refuses, no leading dots or spaces, at most 150 characters;
/// `fallback` when nothing is left.
pub(crate) fn sanitise_filename(name: &str, fallback: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    let cut: String = trimmed.chars().take(150).collect();
    let cut = cut.trim_end().to_owned();
    if cut.is_empty() {
        fallback.to_owned()
    } else {
        cut
    }
}

/// `attachment` or `inline` with the file name twice (RFC 6266): an ASCII `filename` for old
/// clients and `filename*=UTF-8''…` (RFC 5987 percent-encoding) for the rest.
pub(crate) fn content_disposition(kind: &str, filename: &str) -> String {
    let name = sanitise_filename(filename, "file");
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !matches!(c, '%' | '"' | '\\' | ';') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            )
        {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// The strong ETag of a file: its SHA-256, hex, quoted.
pub(crate) fn etag(sha256_hex: &str) -> String {
    format!("\"{sha256_hex}\"")
}

/// Whether an `If-None-Match` value matches `etag` (`*`, or one of a list; the weak
/// comparison RFC 9110 asks for here, so `W/` is ignored).
pub(crate) fn none_match(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn types_are_reduced_to_a_well_formed_essence() {
        assert_eq!(essence("text/plain; charset=utf-8"), "text/plain");
        assert_eq!(essence("Image/PNG"), "image/png");
        for bad in ["", "text", "text/ plain\r\nX-Evil: 1", "a b/c", "/x", "x/"] {
            assert_eq!(essence(bad), "application/octet-stream", "{bad:?}");
        }
        assert_eq!(
            content_type("text/plain", "grüße".as_bytes()),
            "text/plain; charset=utf-8"
        );
        assert_eq!(content_type("text/plain", &[0xff, 0xfe]), "text/plain");
        assert_eq!(content_type("image/png", b"x"), "image/png");
    }

    #[test]
    fn only_displayable_types_may_be_inline_and_only_pdf_goes_unsandboxed() {
        for ok in ["image/png", "image/jpeg", "application/pdf", "text/plain"] {
            assert!(inline_allowed(ok), "{ok}");
        }
        for no in [
            "image/svg+xml",
            "text/html",
            "application/xhtml+xml",
            "text/xml",
            "application/javascript",
            "message/rfc822",
            "application/octet-stream",
        ] {
            assert!(!inline_allowed(no), "{no}");
            assert!(needs_sandbox(no), "{no}");
        }
        assert!(!needs_sandbox("application/pdf"));
    }

    #[test]
    fn file_names_are_sanitised_and_encoded_twice() {
        assert_eq!(sanitise_filename("../../etc/passwd", "f"), "_.._etc_passwd");
        assert_eq!(sanitise_filename("..", "f"), "f");
        assert_eq!(sanitise_filename(" a\r\nb.txt ", "f"), "a__b.txt");
        assert_eq!(sanitise_filename("C:\\x\\y.pdf", "f"), "C__x_y.pdf");
        assert_eq!(
            sanitise_filename(&"é".repeat(300), "f").chars().count(),
            150
        );
        assert_eq!(
            content_disposition("attachment", "Prüfbericht 100%.pdf"),
            "attachment; filename=\"Pr_fbericht 100_.pdf\"; \
             filename*=UTF-8''Pr%C3%BCfbericht%20100%25.pdf"
        );
        assert_eq!(
            content_disposition("inline", "a\"b;c.png"),
            "inline; filename=\"a_b_c.png\"; filename*=UTF-8''a_b%3Bc.png"
        );
        assert_eq!(default_name("application/pdf"), "attachment.pdf");
        assert_eq!(default_name("x-weird"), "attachment");
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let e = etag("ab12");
        assert_eq!(e, "\"ab12\"");
        assert!(none_match("\"ab12\"", &e));
        assert!(none_match("\"x\", W/\"ab12\"", &e));
        assert!(none_match("*", &e));
        assert!(!none_match("\"ab13\"", &e));
        assert!(!none_match("ab12", &e));
    }
}
