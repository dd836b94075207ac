//! The per-stream hash chain. Each event's hash covers the previous event's hash and every
//! stored column that carries meaning, over the *ciphertext*, so the chain still verifies after
//! a key is destroyed (crypto-shredding) and proves nothing was modified, deleted or reordered.
//! Fields are length-prefixed so that no two different events can hash the same input.

use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const HASH_LEN: usize = 32;
pub type Hash = [u8; HASH_LEN];

/// The hash that precedes the first event of every stream.
pub const GENESIS: Hash = [0u8; HASH_LEN];

/// Everything of one stored event that its hash commits to.
#[derive(Debug, Clone, Copy)]
pub struct ChainInput<'a> {
    pub prev_hash: &'a [u8],
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub stream_type: &'a str,
    pub stream_id: &'a str,
    pub stream_version: u64,
    pub event_type: &'a str,
    pub event_version: u32,
    pub key_id: Uuid,
    pub payload: &'a [u8],
    pub metadata: &'a [u8],
    /// Microseconds since the Unix epoch (the precision both backends store).
    pub recorded_at_micros: i64,
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// Hash of one event, chained to its predecessor.
pub fn event_hash(input: &ChainInput<'_>) -> Hash {
    let mut h = Sha256::new();
    h.update(b"postvak.event.v1");
    field(&mut h, input.prev_hash);
    field(&mut h, input.event_id.as_bytes());
    field(&mut h, input.tenant_id.as_bytes());
    field(&mut h, input.stream_type.as_bytes());
    field(&mut h, input.stream_id.as_bytes());
    field(&mut h, &input.stream_version.to_be_bytes());
    field(&mut h, input.event_type.as_bytes());
    field(&mut h, &input.event_version.to_be_bytes());
    field(&mut h, input.key_id.as_bytes());
    field(&mut h, input.payload);
    field(&mut h, input.metadata);
    field(&mut h, &input.recorded_at_micros.to_be_bytes());
    h.finalize().into()
}

/// What is wrong with one place in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainFault {
    /// The stored hash does not match the event's contents: a column was changed.
    Modified { version: u64 },
    /// The event does not link to the one before it: events were deleted, inserted or reordered.
    BrokenLink { version: u64 },
    /// A version is missing: expected `expected`, found `found`.
    Gap { expected: u64, found: u64 },
    /// The stream's recorded head (version, hash) does not match its last event: trailing events
    /// were deleted or the head was altered.
    HeadMismatch {
        head_version: u64,
        last_version: u64,
    },
}

/// Walks one stream in version order and reports every fault. Feed it events with `push`, then
/// call `finish` with the stream's recorded head.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_version: u64,
    prev: Hash,
    faults: Vec<ChainFault>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self {
            expected_version: 1,
            prev: GENESIS,
            faults: Vec::new(),
        }
    }

    /// `stored_hash` is the hash column as stored.
    pub fn push(&mut self, input: &ChainInput<'_>, stored_hash: &[u8]) {
        if input.stream_version != self.expected_version {
            self.faults.push(ChainFault::Gap {
                expected: self.expected_version,
                found: input.stream_version,
            });
        }
        let recomputed = event_hash(input);
        if recomputed.as_slice() != stored_hash {
            self.faults.push(ChainFault::Modified {
                version: input.stream_version,
            });
        } else if input.prev_hash != self.prev.as_slice() {
            self.faults.push(ChainFault::BrokenLink {
                version: input.stream_version,
            });
        }
        self.prev = to_hash(stored_hash);
        self.expected_version = input.stream_version.saturating_add(1);
    }

    /// `head` is the stream's recorded `(version, head_hash)`, if the store keeps one.
    pub fn finish(mut self, head: Option<(u64, &[u8])>) -> Vec<ChainFault> {
        let last_version = self.expected_version - 1;
        if let Some((head_version, head_hash)) = head
            && (head_version != last_version || head_hash != self.prev.as_slice())
        {
            self.faults.push(ChainFault::HeadMismatch {
                head_version,
                last_version,
            });
        }
        self.faults
    }
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut h = GENESIS;
    if bytes.len() == HASH_LEN {
        h.copy_from_slice(bytes);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chain(n: u64) -> Vec<(Vec<u8>, Vec<u8>, Hash)> {
        // (payload, prev, hash)
        let mut out = Vec::new();
        let mut prev = GENESIS;
        for v in 1..=n {
            let payload = format!("payload-{v}").into_bytes();
            let h = event_hash(&input(&prev, v, &payload));
            out.push((payload, prev.to_vec(), h));
            prev = h;
        }
        out
    }

    fn input<'a>(prev: &'a [u8], v: u64, payload: &'a [u8]) -> ChainInput<'a> {
        ChainInput {
            prev_hash: prev,
            event_id: Uuid::from_u128(v as u128),
            tenant_id: Uuid::from_u128(7),
            stream_type: "inbox",
            stream_id: "s",
            stream_version: v,
            event_type: "t",
            event_version: 1,
            key_id: Uuid::nil(),
            payload,
            metadata: b"{}",
            recorded_at_micros: 1,
        }
    }

    /// (version, payload, prev hash, hash)
    type Row = (u64, Vec<u8>, Vec<u8>, Hash);

    fn verify(rows: &[Row], head: (u64, Hash)) -> Vec<ChainFault> {
        let mut v = ChainVerifier::new();
        for (ver, payload, prev, hash) in rows {
            v.push(&input(prev, *ver, payload), hash);
        }
        v.finish(Some((head.0, &head.1)))
    }

    fn rows(n: u64) -> (Vec<Row>, (u64, Hash)) {
        let c = chain(n);
        let head = (n, c.last().map(|r| r.2).unwrap_or(GENESIS));
        (
            c.into_iter()
                .enumerate()
                .map(|(i, (p, prev, h))| (i as u64 + 1, p, prev, h))
                .collect(),
            head,
        )
    }

    #[test]
    fn intact_chain_has_no_fault() {
        let (r, head) = rows(5);
        assert!(verify(&r, head).is_empty());
    }

    #[test]
    fn field_boundaries_matter() {
        let a = ChainInput {
            stream_type: "ab",
            stream_id: "c",
            ..input(&GENESIS, 1, b"x")
        };
        let b = ChainInput {
            stream_type: "a",
            stream_id: "bc",
            ..input(&GENESIS, 1, b"x")
        };
        assert_ne!(event_hash(&a), event_hash(&b));
    }

    proptest! {
        #[test]
        fn any_byte_flip_is_found(n in 1u64..20, pick in 0usize..100, byte in 0usize..8, bit in 0u8..8) {
            let (mut r, head) = rows(n);
            let i = pick % r.len();
            let b = byte % r[i].1.len();
            r[i].1[b] ^= 1 << bit;
            let expected = ChainFault::Modified { version: i as u64 + 1 };
            prop_assert!(verify(&r, head).contains(&expected));
        }

        #[test]
        fn any_deletion_is_found(n in 1u64..20, pick in 0usize..100) {
            let (mut r, head) = rows(n);
            let i = pick % r.len();
            r.remove(i);
            prop_assert!(!verify(&r, head).is_empty());
        }

        #[test]
        fn any_swap_is_found(n in 2u64..20, a in 0usize..100, b in 0usize..100) {
            let (mut r, head) = rows(n);
            let (a, b) = (a % r.len(), b % r.len());
            prop_assume!(a != b);
            // Swap contents but keep the version column where it was (an attacker reordering rows).
            let (pa, pb) = (r[a].1.clone(), r[b].1.clone());
            r[a].1 = pb;
            r[b].1 = pa;
            prop_assert!(!verify(&r, head).is_empty());
        }
    }
}
