//! Files attached to replies (ADR 0019): sent inline as base64 in `POST …/replies`, checked
//! here, sealed with the tenant key into `conversation_reply_files` before the `reply.queued`
//! event that names them (`MessageV1::files`: id, name, type, size, SHA-256), and read by the
//! notification service through [`read`] when it builds the mail. The bytes never travel in an
//! event (NATS caps a message at 1 MiB; the log would carry every file forever).
//!
//! A reply that is refused after its files were stored (a stale `If-Match`, say) removes them
//! again ([`discard`]); a crash in between leaves sealed rows no event names, which a sweeper
//! removes after a day ([`sweep_unreferenced`]). A contact's erasure removes the files of
//! their conversations' replies ([`remove_for_conversations`], ADR 0024).

use base64::Engine;
use postvak_platform::cell::{Cell, Cells, Principal, TenantContext};
use postvak_platform::db::{Db, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{KeyScope, StoreError, TenantId};
use postvak_proto::events::conversation::MessageFileV1;
use postvak_proto::rest::conversation::NewAttachment;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// At most this many files per reply.
pub const MAX_FILES: usize = 20;
/// At most this many bytes (decoded) in all of a reply's files.
pub const MAX_TOTAL_BYTES: usize = 10 << 20;
/// `body` + `body_html` at most (they travel in the `reply.queued` event).
pub const MAX_BODY_BYTES: usize = 512 << 10;
/// The JSON limit of `POST …/replies`: the files in base64 plus the bodies, with room.
pub const MAX_REPLY_JSON: usize = MAX_TOTAL_BYTES / 3 * 4 + MAX_BODY_BYTES * 2 + (64 << 10);

/// Why a reply's files or bodies are refused (each maps to a stable code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("at most {MAX_FILES} attachments per reply")]
    TooMany,
    #[error("the attachments are {0} bytes decoded; at most {MAX_TOTAL_BYTES} in all")]
    TooLarge(usize),
    #[error("body and body_html are {0} bytes; at most {MAX_BODY_BYTES} together")]
    BodyTooLarge(usize),
    #[error("attachment {index}: content_base64 is not valid base64 ({reason})")]
    BadBase64 { index: usize, reason: String },
    #[error("attachment {index}: content_type {value:?} is not a MIME type type/subtype")]
    BadContentType { index: usize, value: String },
    #[error(
        "attachment {index}: filename must be 1–255 characters without control characters, slashes or backslashes"
    )]
    BadFilename { index: usize },
}

impl FileError {
    /// The stable `code` of the problem.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooMany => "too_many_attachments",
            Self::TooLarge(_) => "attachments_too_large",
            Self::BodyTooLarge(_) => "reply_body_too_large",
            Self::BadBase64 { .. } => "invalid_attachment_base64",
            Self::BadContentType { .. } => "invalid_attachment_content_type",
            Self::BadFilename { .. } => "invalid_attachment_filename",
        }
    }

    /// 413 for sizes, 422 for the rest.
    pub fn too_large(&self) -> bool {
        matches!(self, Self::TooLarge(_) | Self::BodyTooLarge(_))
    }
}

/// A checked, decoded file.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// An RFC 6838 `type/subtype` name token.
pub(crate) fn token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                )
        })
}

/// `type/subtype` (RFC 6838 names), lowercased; parameters are not accepted.
fn content_type(v: &str) -> Option<String> {
    let v = v.trim().to_ascii_lowercase();
    let (t, sub) = v.split_once('/')?;
    if !token(t) || !token(sub) || t == "multipart" || t == "message" {
        return None;
    }
    Some(v)
}

fn filename_ok(f: &str) -> bool {
    let n = f.chars().count();
    (1..=255).contains(&n)
        && !f.trim().is_empty()
        && !f.chars().any(|c| c.is_control() || c == '/' || c == '\\')
}

/// Checks the bodies' size and every file (count, name, type, base64, total size).
pub fn check(
    body: &str,
    body_html: Option<&str>,
    files: &[NewAttachment],
) -> Result<Vec<NewFile>, FileError> {
    let body_len = body.len().saturating_add(body_html.map_or(0, str::len));
    if body_len > MAX_BODY_BYTES {
        return Err(FileError::BodyTooLarge(body_len));
    }
    if files.len() > MAX_FILES {
        return Err(FileError::TooMany);
    }
    // Refuse by encoded size before decoding anything large.
    let encoded: usize = files.iter().map(|f| f.content_base64.len()).sum();
    if encoded / 4 * 3 > MAX_TOTAL_BYTES + 3 * MAX_FILES {
        return Err(FileError::TooLarge(encoded / 4 * 3));
    }
    let mut out = Vec::with_capacity(files.len());
    let mut total = 0usize;
    for (index, f) in files.iter().enumerate() {
        if !filename_ok(&f.filename) {
            return Err(FileError::BadFilename { index });
        }
        let ct = content_type(&f.content_type).ok_or_else(|| FileError::BadContentType {
            index,
            value: f.content_type.clone(),
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(f.content_base64.trim())
            .map_err(|e| FileError::BadBase64 {
                index,
                reason: e.to_string(),
            })?;
        total = total.saturating_add(bytes.len());
        if total > MAX_TOTAL_BYTES {
            return Err(FileError::TooLarge(total));
        }
        out.push(NewFile {
            filename: f.filename.trim().to_owned(),
            content_type: ct,
            bytes,
        });
    }
    Ok(out)
}

fn aad(tenant: TenantId, file: Uuid) -> Vec<u8> {
    let mut a = b"postvak.conversation.reply-file".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(file.as_bytes());
    a
}

/// Seals and stores a reply's files (one transaction); returns what the event records.
pub async fn store(
    ctx: &TenantContext,
    message_id: Uuid,
    files: &[NewFile],
) -> Result<Vec<MessageFileV1>, StoreError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let t = ctx.tenant();
    let keyring = ctx.cell().store.keyring();
    let mut rows = Vec::with_capacity(files.len());
    let mut refs = Vec::with_capacity(files.len());
    for f in files {
        let id = Uuid::now_v7();
        let (key, sealed) = keyring
            .seal(t, &KeyScope::Tenant, &f.bytes, &aad(t, id))
            .await
            .map_err(StoreError::Crypto)?;
        rows.push((id, key, sealed, f.bytes.len()));
        refs.push(MessageFileV1 {
            file_id: id,
            filename: Some(f.filename.clone()),
            content_type: f.content_type.clone(),
            size: f.bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&f.bytes)),
            inline: false,
            content_id: None,
        });
    }
    let now = crate::now_us();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    for (id, key, sealed, size) in &rows {
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO conversation_reply_files (tenant_id, file_id, message_id, size, sealed, \
             key_id, created_us) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )
        .bind(t.0)
        .bind(*id)
        .bind(message_id)
        .bind(i64::try_from(*size).unwrap_or(i64::MAX))
        .bind(sealed.as_slice())
        .bind(*key)
        .bind(now)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
    }
    tx.commit().await?;
    Ok(refs)
}

/// Removes the files of a reply that was not queued after all.
pub async fn discard(ctx: &TenantContext, message_id: Uuid) -> Result<(), StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM conversation_reply_files WHERE tenant_id = $1 AND message_id = $2"
    )
    .bind(t.0)
    .bind(message_id)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    tx.commit().await
}

/// Removes every file of the replies in `conversations` (a contact's erasure, ADR 0024): the
/// rows go, so the files can no longer be read by anyone, whatever key they were sealed with.
/// Returns how many were removed.
pub async fn remove_for_conversations(
    ctx: &TenantContext,
    conversations: &[Uuid],
) -> Result<u64, StoreError> {
    let t = ctx.tenant();
    let mut removed = 0;
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    for conversation in conversations {
        removed += on_tx!(&mut tx, |c| sqlx::query(
            "DELETE FROM conversation_reply_files WHERE tenant_id = $1 AND message_id IN \
             (SELECT message_id FROM conversation_messages \
              WHERE tenant_id = $1 AND conversation_id = $2 AND direction = 'outbound')"
        )
        .bind(t.0)
        .bind(*conversation)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db_error)?;
    }
    tx.commit().await?;
    Ok(removed)
}

/// A reply file no stored message names is removed once it is this old (a crash between
/// storing the files and appending `reply.queued`; the API removes those of a refused reply
/// itself). Long enough that a message's read-model row, written right after its event, is
/// there.
pub const UNREFERENCED_GRACE: Duration = Duration::from_secs(24 * 3600);
/// How often each cell's tenants are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Removes the tenant's reply files that no message of `conversation_messages` names and that
/// were stored more than `grace` ago; returns how many. Rows of that read model are inserted
/// (once) and moved by merges, never deleted, so a file a stored reply names is never taken.
pub async fn sweep_unreferenced(ctx: &TenantContext, grace: Duration) -> Result<u64, StoreError> {
    let t = ctx.tenant();
    let cutoff =
        crate::now_us().saturating_sub(i64::try_from(grace.as_micros()).unwrap_or(i64::MAX));
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    let removed = on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM conversation_reply_files WHERE tenant_id = $1 AND created_us < $2 \
         AND NOT EXISTS (SELECT 1 FROM conversation_messages m \
           WHERE m.tenant_id = $1 AND m.message_id = conversation_reply_files.message_id)"
    )
    .bind(t.0)
    .bind(cutoff)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    tx.commit().await?;
    if removed > 0 {
        tracing::info!(tenant_id = %t, removed, "reply files no message names removed");
    }
    Ok(removed)
}

/// Sweeps every tenant of `cell` every [`SWEEP_INTERVAL`] until `cancel`.
pub(crate) fn start_sweeper(
    cells: Cells,
    cell: Arc<Cell>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = sweep_cell(&cells, &cell).await {
                tracing::warn!(cell = %cell.name, error = %e, "reply file sweep failed; trying again later");
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
    })
}

async fn sweep_cell(cells: &Cells, cell: &Cell) -> Result<(), StoreError> {
    for tenant in tenants_of_cell(cells.directory(), &cell.name).await? {
        let ctx = cells
            .context(TenantId(tenant), SWEEPER)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        sweep_unreferenced(&ctx, UNREFERENCED_GRACE).await?;
    }
    Ok(())
}

const SWEEPER: Principal = Principal::Service {
    name: "conversation",
};

/// The tenants placed in a cell, from the global directory's placement table.
async fn tenants_of_cell(directory: &Db, cell: &str) -> Result<Vec<Uuid>, StoreError> {
    match directory {
        Db::Postgres(p) => {
            sqlx::query_scalar("SELECT tenant_id FROM tenant_cells WHERE cell = $1")
                .bind(cell)
                .fetch_all(p)
                .await
        }
        Db::Sqlite(s) => {
            sqlx::query_scalar("SELECT tenant_id FROM tenant_cells WHERE cell = ?1")
                .bind(cell)
                .fetch_all(&s.reader)
                .await
        }
    }
    .map_err(db_error)
}

/// How a message's file is shown.
pub(crate) fn attachment_dto(
    f: &MessageFileV1,
) -> postvak_proto::rest::conversation::MessageAttachment {
    postvak_proto::rest::conversation::MessageAttachment {
        id: f.file_id,
        filename: f.filename.clone(),
        content_type: f.content_type.clone(),
        size: f.size,
        sha256: f.sha256.clone(),
        inline: f.inline,
        content_id: f.content_id.clone(),
    }
}

/// A reply file's content (`None`: no such file in this tenant).
pub async fn read(ctx: &TenantContext, file_id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let row: Option<(Vec<u8>, Uuid)> = on_tx!(&mut tx, |c| {
        sqlx::query_as(
        "SELECT sealed, key_id FROM conversation_reply_files WHERE tenant_id = $1 AND file_id = $2"
    )
    .bind(t.0)
    .bind(file_id)
    .fetch_optional(c)
    .await
    })
    .map_err(db_error)?;
    tx.commit().await?;
    let Some((sealed, key)) = row else {
        return Ok(None);
    };
    let plain = ctx
        .cell()
        .store
        .keyring()
        .open(t, key, &sealed, &aad(t, file_id))
        .await
        .map_err(StoreError::Crypto)?;
    Ok(Some(plain))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn att(name: &str, ct: &str, b64: &str) -> NewAttachment {
        NewAttachment {
            filename: name.into(),
            content_type: ct.into(),
            content_base64: b64.into(),
        }
    }

    #[test]
    fn files_are_checked_with_stable_codes() {
        let ok = check("hi", None, &[att("a.pdf", "Application/PDF", "JVBERg==")]).unwrap();
        assert_eq!(ok[0].bytes, b"%PDF");
        assert_eq!(ok[0].content_type, "application/pdf");
        let code = |r: Result<Vec<NewFile>, FileError>| r.unwrap_err().code();
        assert_eq!(
            code(check("hi", None, &[att("a", "text/plain", "@@@")])),
            "invalid_attachment_base64"
        );
        for ct in [
            "text",
            "text/plain; charset=utf-8",
            "multipart/mixed",
            "a/b c",
            "",
        ] {
            assert_eq!(
                code(check("hi", None, &[att("a", ct, "")])),
                "invalid_attachment_content_type",
                "{ct}"
            );
        }
        for name in ["", "  ", "../x", "a\\b", "a\nb"] {
            assert_eq!(
                code(check("hi", None, &[att(name, "text/plain", "")])),
                "invalid_attachment_filename",
                "{name:?}"
            );
        }
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; MAX_TOTAL_BYTES + 1]);
        assert_eq!(
            code(check("hi", None, &[att("a", "text/plain", &big)])),
            "attachments_too_large"
        );
        let many: Vec<_> = (0..=MAX_FILES)
            .map(|_| att("a", "text/plain", ""))
            .collect();
        assert_eq!(code(check("hi", None, &many)), "too_many_attachments");
        let html = "x".repeat(MAX_BODY_BYTES);
        assert_eq!(code(check("hi", Some(&html), &[])), "reply_body_too_large");
    }
}
