//! Blind indexes and reply tokens.
//!
//! Each tenant has a random 32-byte **index key**, stored sealed under the tenant's data key
//! (`ingest_index_keys`). Everything ingest must look up by a value that is personal data — a
//! Message-ID, an `Idempotency-Key`, the content of a blob — is looked up by
//! HMAC-SHA256(index key, label ‖ value) instead, so the lookup tables hold no plaintext and
//! equal values of two tenants do not collide or correlate.
//!
//! Reply tokens (`support+<token>@…`) and our outbound Message-IDs (`<pv1.<token>.<nonce>@…>`)
//! carry a conversation id and a MAC over (inbox, conversation): they identify the conversation
//! even when a client strips `References`, and can't be forged for another inbox or tenant.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// A tenant's index key. Never printed.
#[derive(Clone)]
pub struct IndexKey([u8; 32]);

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IndexKey([redacted])")
    }
}

/// The prefix of our outbound Message-IDs' local part.
pub const OUTBOUND_ID_PREFIX: &str = "pv1.";

const MAC_LEN: usize = 8;

impl IndexKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn generate() -> Self {
        Self(rand::random())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // HMAC pads keys shorter than the block to the block size with zeros; doing it here
        // makes the construction infallible (same MAC as `new_from_slice`).
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.0);
        let mut mac = <HmacSha256 as KeyInit>::new(&block.into());
        for p in parts {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// Blind index of a Message-ID (as normalised by the parser).
    pub fn message_id_hash(&self, message_id: &str) -> String {
        hex::encode(&self.mac(&[b"mid", message_id.as_bytes()])[..16])
    }

    /// The dedupe key of a delivery: one per (inbox, Message-ID, content).
    pub fn dedupe_key(&self, inbox: Uuid, message_id: Option<&str>, content_hash: &[u8]) -> String {
        let mid = message_id.unwrap_or("");
        hex::encode(
            &self.mac(&[
                b"dedupe",
                inbox.as_bytes(),
                &[u8::from(message_id.is_some())],
                mid.as_bytes(),
                content_hash,
            ])[..16],
        )
    }

    /// Blind index of an `Idempotency-Key`.
    pub fn idempotency_hash(&self, inbox: Uuid, key: &str) -> String {
        hex::encode(&self.mac(&[b"idem", inbox.as_bytes(), key.as_bytes()])[..16])
    }

    /// A blob's id: a keyed hash of its content, so the same content is stored once per tenant
    /// and the id reveals nothing about it.
    pub fn blob_id(&self, sha256: &[u8]) -> Uuid {
        let mac = self.mac(&[b"blob", sha256]);
        let mut b = [0u8; 16];
        b.copy_from_slice(&mac[..16]);
        uuid::Builder::from_custom_bytes(b).into_uuid()
    }

    /// The reply token of a conversation in an inbox: base32 of the conversation id and a MAC.
    pub fn reply_token(&self, inbox: Uuid, conversation: Uuid) -> String {
        let mac = self.mac(&[b"reply", inbox.as_bytes(), conversation.as_bytes()]);
        let mut raw = Vec::with_capacity(16 + MAC_LEN);
        raw.extend_from_slice(conversation.as_bytes());
        raw.extend_from_slice(&mac[..MAC_LEN]);
        base32_encode(&raw)
    }

    /// The conversation a reply token names, if it is one of ours for this inbox.
    pub fn verify_reply_token(&self, inbox: Uuid, token: &str) -> Option<Uuid> {
        let raw = base32_decode(token)?;
        if raw.len() != 16 + MAC_LEN {
            return None;
        }
        let conversation = Uuid::from_slice(&raw[..16]).ok()?;
        let mac = self.mac(&[b"reply", inbox.as_bytes(), conversation.as_bytes()]);
        constant_time_eq(&raw[16..], &mac[..MAC_LEN]).then_some(conversation)
    }

    /// A Message-ID for a mail we send from `inbox` in `conversation` (without angle
    /// brackets). The notification service uses it for outbound replies.
    pub fn outbound_message_id(&self, inbox: Uuid, conversation: Uuid, domain: &str) -> String {
        let nonce: [u8; 6] = rand::random();
        format!(
            "{OUTBOUND_ID_PREFIX}{}.{}@{domain}",
            self.reply_token(inbox, conversation),
            hex::encode(nonce)
        )
    }

    /// The conversation of one of our outbound Message-IDs, if `message_id` is one for `inbox`.
    pub fn conversation_of_outbound_id(&self, inbox: Uuid, message_id: &str) -> Option<Uuid> {
        let rest = message_id.strip_prefix(OUTBOUND_ID_PREFIX)?;
        let token = rest.split(['.', '@']).next()?;
        self.verify_reply_token(inbox, token)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// RFC 4648 base32, lower case, no padding: local parts are matched case-insensitively by
/// many mail systems, so the token must survive case folding.
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buf: u64 = 0;
    let mut bits = 0u32;
    for &b in data {
        buf = (buf << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(B32[((buf >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(B32[((buf << (5 - bits)) & 31) as usize]));
    }
    out
}

pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut buf: u64 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buf = (buf << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buf >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reply_tokens_round_trip_and_do_not_cross_inboxes_or_tenants() {
        let k = IndexKey::generate();
        let other = IndexKey::generate();
        let inbox = Uuid::now_v7();
        let conv = Uuid::now_v7();
        let t = k.reply_token(inbox, conv);
        assert_eq!(k.verify_reply_token(inbox, &t), Some(conv));
        assert_eq!(k.verify_reply_token(inbox, &t.to_uppercase()), Some(conv));
        assert_eq!(k.verify_reply_token(Uuid::now_v7(), &t), None);
        assert_eq!(other.verify_reply_token(inbox, &t), None);
        let mid = k.outbound_message_id(inbox, conv, "example.org");
        assert_eq!(k.conversation_of_outbound_id(inbox, &mid), Some(conv));
        assert_eq!(k.conversation_of_outbound_id(Uuid::now_v7(), &mid), None);
    }

    proptest! {
        #[test]
        fn base32_round_trips(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(base32_decode(&base32_encode(&data)), Some(data));
        }

        #[test]
        fn arbitrary_tokens_never_verify_or_panic(s in ".{0,80}") {
            let k = IndexKey::generate();
            prop_assert_eq!(k.verify_reply_token(Uuid::nil(), &s), None);
            prop_assert_eq!(k.conversation_of_outbound_id(Uuid::nil(), &s), None);
        }
    }
}
