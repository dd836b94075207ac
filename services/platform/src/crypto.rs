//! Envelope encryption. A master key (KEK, from config or a KMS) wraps data keys (DEKs) that are
//! stored, wrapped, in the cell's database: one per tenant and one per subject (a contact, say).
//! Destroying a subject key makes everything sealed under it unreadable (crypto-shredding)
//! without touching the append-only log.
//!
//! AES-256-GCM throughout with random 96-bit nonces. Keys are never logged: the types holding
//! them print `[redacted]`.

use crate::store::{KeyScope, TenantId};
use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use base64::Engine;
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the master key must be 32 bytes, base64-encoded")]
    BadMasterKey,
    #[error("key {key_id} was destroyed")]
    KeyDestroyed { key_id: Uuid },
    #[error("key {key_id} does not exist")]
    UnknownKey { key_id: Uuid },
    #[error("key {key_id} belongs to another tenant")]
    WrongTenant { key_id: Uuid },
    #[error("key {key_id} was wrapped by master key {kek_id}, which is not configured")]
    UnknownMasterKey { key_id: Uuid, kek_id: String },
    #[error("ciphertext failed authentication")]
    Authentication,
    #[error("key storage failed: {0}")]
    Storage(String),
}

/// The master key (KEK). Never printed.
pub struct MasterKey {
    key: SecretBox<[u8; 32]>,
    id: String,
}

impl Clone for MasterKey {
    fn clone(&self) -> Self {
        Self::from_bytes(*self.key.expose_secret())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, [redacted])", self.id)
    }
}

impl MasterKey {
    /// From 32 bytes, base64 (standard alphabet).
    pub fn from_base64(b64: &str) -> Result<Self, CryptoError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| CryptoError::BadMasterKey)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadMasterKey)?;
        Ok(Self::from_bytes(arr))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        // The id names the key without revealing it: the first 8 bytes of SHA-256 over a label
        // and the key.
        let mut h = Sha256::new();
        h.update(b"postvak.kek.id");
        h.update(bytes);
        let id = hex::encode(&h.finalize()[..8]);
        Self {
            key: SecretBox::new(Box::new(bytes)),
            id,
        }
    }

    /// A fresh random key, base64: what `postvak serve` writes to `data/master.key` on first
    /// start when none is configured.
    pub fn generate_base64() -> String {
        let key = Key::<Aes256Gcm>::generate();
        base64::engine::general_purpose::STANDARD.encode(key.as_slice())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(*self.key.expose_secret()))
    }
}

/// A data key as stored: wrapped by the KEK; `wrapped = None` once destroyed.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key_id: Uuid,
    pub tenant_id: TenantId,
    pub kek_id: String,
    pub wrapped: Option<Vec<u8>>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("key_id", &self.key_id)
            .field("tenant_id", &self.tenant_id)
            .field("kek_id", &self.kek_id)
            .field("destroyed", &self.wrapped.is_none())
            .finish()
    }
}

/// Where wrapped data keys live (the `data_keys` table of the cell's database).
#[async_trait]
pub trait KeyStore: Send + Sync + fmt::Debug {
    async fn get(&self, key_id: Uuid) -> Result<Option<StoredKey>, CryptoError>;
    async fn find(
        &self,
        tenant: TenantId,
        scope: &KeyScope,
    ) -> Result<Option<StoredKey>, CryptoError>;
    /// Inserts `key` for `scope` unless one exists; returns the key that is stored (the winner
    /// of a race).
    async fn insert(&self, key: StoredKey, scope: &KeyScope) -> Result<StoredKey, CryptoError>;
    /// Destroys the wrapped key material; `true` if a live key was destroyed.
    async fn destroy(&self, tenant: TenantId, scope: &KeyScope) -> Result<bool, CryptoError>;
}

struct CachedKey {
    tenant: TenantId,
    cipher: Aes256Gcm,
    /// Kept for deriving blind-index keys; zeroized on drop.
    raw: SecretBox<[u8; 32]>,
    /// Subject keys are re-checked after this, so a key destroyed by another process stops
    /// being used within `SUBJECT_KEY_TTL`.
    expires: Option<Instant>,
}

/// The subject whose key derives blind indexes. Not a person: never destroyed by erasure.
pub const INDEX_SUBJECT: &str = "postvak:index";

/// A blind index of one tenant and purpose, keyed once ([`Keyring::blind_indexer`]).
#[derive(Clone)]
pub struct BlindIndexer {
    mac: hmac::Hmac<Sha256>,
}

impl BlindIndexer {
    /// HMAC-SHA256 of `value`, as [`Keyring::blind_index`] gives it.
    pub fn index(&self, value: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = self.mac.clone();
        mac.update(value);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for BlindIndexer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexer(..)")
    }
}

/// How long another process may keep using a subject key it has cached after it was destroyed.
pub const SUBJECT_KEY_TTL: Duration = Duration::from_secs(60);

/// Seals and opens data under tenant and subject keys, caching unwrapped keys in memory.
pub struct Keyring {
    master: MasterKey,
    store: Arc<dyn KeyStore>,
    by_id: RwLock<HashMap<Uuid, Arc<CachedKey>>>,
    by_scope: RwLock<HashMap<(TenantId, KeyScope), Uuid>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("master", &self.master)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn wrap_aad(key_id: Uuid, tenant: TenantId) -> Vec<u8> {
    let mut aad = b"postvak.dek".to_vec();
    aad.extend_from_slice(key_id.as_bytes());
    aad.extend_from_slice(tenant.0.as_bytes());
    aad
}

fn seal_with(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = Nonce::generate();
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Authentication)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(nonce.as_slice());
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_with(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Authentication);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Authentication)?;
    cipher
        .decrypt(&nonce, Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Authentication)
}

impl Keyring {
    pub fn new(master: MasterKey, store: Arc<dyn KeyStore>) -> Self {
        Self {
            master,
            store,
            by_id: RwLock::new(HashMap::new()),
            by_scope: RwLock::new(HashMap::new()),
        }
    }

    pub fn master_key_id(&self) -> &str {
        self.master.id()
    }

    /// Seals `plaintext` under the key of `scope`, creating that key on first use. Returns the
    /// key id and `nonce ‖ ciphertext ‖ tag`.
    pub async fn seal(
        &self,
        tenant: TenantId,
        scope: &KeyScope,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<(Uuid, Vec<u8>), CryptoError> {
        let (key_id, key) = self.key_for_scope(tenant, scope).await?;
        Ok((key_id, seal_with(&key.cipher, plaintext, aad)?))
    }

    /// Seals many plaintexts under one scope's key (one lookup).
    pub async fn seal_many<'a>(
        &self,
        tenant: TenantId,
        scope: &KeyScope,
        items: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(Uuid, Vec<Vec<u8>>), CryptoError> {
        let (key_id, key) = self.key_for_scope(tenant, scope).await?;
        let sealed = items
            .into_iter()
            .map(|(plain, aad)| seal_with(&key.cipher, plain, aad))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((key_id, sealed))
    }

    /// Opens what `seal` produced. [`CryptoError::KeyDestroyed`] once the key was destroyed.
    pub async fn open(
        &self,
        tenant: TenantId,
        key_id: Uuid,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let key = self.key_by_id(key_id).await?;
        if key.tenant != tenant {
            return Err(CryptoError::WrongTenant { key_id });
        }
        open_with(&key.cipher, sealed, aad)
    }

    /// A blind index: HMAC-SHA256 of `value` under a key derived from the tenant's index key
    /// and `purpose`. Equal inputs give equal outputs within one tenant and purpose, so lookups
    /// work without storing the value; nothing about the value can be read back.
    pub async fn blind_index(
        &self,
        tenant: TenantId,
        purpose: &str,
        value: &[u8],
    ) -> Result<[u8; 32], CryptoError> {
        Ok(self.blind_indexer(tenant, purpose).await?.index(value))
    }

    /// [`Keyring::blind_index`] for many values of one tenant and purpose: the key lookup and
    /// the purpose key's derivation are done once, and each value costs one keyed HMAC (two
    /// SHA-256 blocks for a word) instead of the whole derivation again.
    pub async fn blind_indexer(
        &self,
        tenant: TenantId,
        purpose: &str,
    ) -> Result<BlindIndexer, CryptoError> {
        use hmac::{Hmac, Mac};
        let (_, key) = self
            .key_for_scope(tenant, &KeyScope::Subject(INDEX_SUBJECT.to_owned()))
            .await?;
        let mut derive = Hmac::<Sha256>::new_from_slice(key.raw.expose_secret())
            .map_err(|_| CryptoError::Storage("index key length".into()))?;
        derive.update(b"postvak.index.v1");
        derive.update(purpose.as_bytes());
        let purpose_key = derive.finalize().into_bytes();
        let mac = Hmac::<Sha256>::new_from_slice(&purpose_key)
            .map_err(|_| CryptoError::Storage("index key length".into()))?;
        Ok(BlindIndexer { mac })
    }

    /// Destroys the key of `scope` (never the tenant key through this call): everything sealed
    /// under it becomes unreadable. `true` if a live key was destroyed.
    pub async fn destroy(&self, tenant: TenantId, scope: &KeyScope) -> Result<bool, CryptoError> {
        let destroyed = self.store.destroy(tenant, scope).await?;
        let id = write(&self.by_scope).remove(&(tenant, scope.clone()));
        if let Some(id) = id {
            write(&self.by_id).remove(&id);
        }
        // A key cached under its id only (opened, never sealed with here) is found by tenant.
        if let Some(found) = self.store.find(tenant, scope).await? {
            write(&self.by_id).remove(&found.key_id);
        }
        Ok(destroyed)
    }

    async fn key_for_scope(
        &self,
        tenant: TenantId,
        scope: &KeyScope,
    ) -> Result<(Uuid, Arc<CachedKey>), CryptoError> {
        let cached_id = read(&self.by_scope).get(&(tenant, scope.clone())).copied();
        if let Some(id) = cached_id
            && let Some(key) = self.cached(id)
        {
            return Ok((id, key));
        }
        let stored = match self.store.find(tenant, scope).await? {
            Some(k) => k,
            None => {
                let key_id = Uuid::now_v7();
                let dek = Key::<Aes256Gcm>::generate();
                let wrapped = seal_with(
                    &self.master.cipher(),
                    dek.as_slice(),
                    &wrap_aad(key_id, tenant),
                )?;
                self.store
                    .insert(
                        StoredKey {
                            key_id,
                            tenant_id: tenant,
                            kek_id: self.master.id().to_owned(),
                            wrapped: Some(wrapped),
                        },
                        scope,
                    )
                    .await?
            }
        };
        let key = self.unwrap_and_cache(&stored, matches!(scope, KeyScope::Subject(_)))?;
        write(&self.by_scope).insert((tenant, scope.clone()), stored.key_id);
        Ok((stored.key_id, key))
    }

    async fn key_by_id(&self, key_id: Uuid) -> Result<Arc<CachedKey>, CryptoError> {
        if let Some(k) = self.cached(key_id) {
            return Ok(k);
        }
        let stored = self
            .store
            .get(key_id)
            .await?
            .ok_or(CryptoError::UnknownKey { key_id })?;
        // Whether it is a subject key is not known here; a TTL on every key opened by id keeps
        // destroyed keys from living on in other processes.
        self.unwrap_and_cache(&stored, true)
    }

    fn cached(&self, key_id: Uuid) -> Option<Arc<CachedKey>> {
        let key = read(&self.by_id).get(&key_id).cloned()?;
        match key.expires {
            Some(t) if t <= Instant::now() => {
                write(&self.by_id).remove(&key_id);
                None
            }
            _ => Some(key),
        }
    }

    fn unwrap_and_cache(
        &self,
        stored: &StoredKey,
        expiring: bool,
    ) -> Result<Arc<CachedKey>, CryptoError> {
        let wrapped = stored.wrapped.as_ref().ok_or(CryptoError::KeyDestroyed {
            key_id: stored.key_id,
        })?;
        if stored.kek_id != self.master.id() {
            return Err(CryptoError::UnknownMasterKey {
                key_id: stored.key_id,
                kek_id: stored.kek_id.clone(),
            });
        }
        let dek = open_with(
            &self.master.cipher(),
            wrapped,
            &wrap_aad(stored.key_id, stored.tenant_id),
        )?;
        let key = Key::<Aes256Gcm>::try_from(dek.as_slice()).map_err(|_| {
            CryptoError::Storage(format!("data key {} has the wrong length", stored.key_id))
        })?;
        let mut raw = [0u8; 32];
        raw.copy_from_slice(key.as_slice());
        let cached = Arc::new(CachedKey {
            tenant: stored.tenant_id,
            cipher: Aes256Gcm::new(&key),
            raw: SecretBox::new(Box::new(raw)),
            expires: expiring.then(|| Instant::now() + SUBJECT_KEY_TTL),
        });
        write(&self.by_id).insert(stored.key_id, cached.clone());
        Ok(cached)
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An in-memory key store, for unit tests of code that seals data.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    keys: tokio::sync::Mutex<Vec<(KeyScope, StoredKey)>>,
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn get(&self, key_id: Uuid) -> Result<Option<StoredKey>, CryptoError> {
        Ok(self
            .keys
            .lock()
            .await
            .iter()
            .find(|(_, k)| k.key_id == key_id)
            .map(|(_, k)| k.clone()))
    }

    async fn find(
        &self,
        tenant: TenantId,
        scope: &KeyScope,
    ) -> Result<Option<StoredKey>, CryptoError> {
        Ok(self
            .keys
            .lock()
            .await
            .iter()
            .find(|(s, k)| s == scope && k.tenant_id == tenant)
            .map(|(_, k)| k.clone()))
    }

    async fn insert(&self, key: StoredKey, scope: &KeyScope) -> Result<StoredKey, CryptoError> {
        let mut keys = self.keys.lock().await;
        if let Some((_, k)) = keys
            .iter()
            .find(|(s, k)| s == scope && k.tenant_id == key.tenant_id)
        {
            return Ok(k.clone());
        }
        keys.push((scope.clone(), key.clone()));
        Ok(key)
    }

    async fn destroy(&self, tenant: TenantId, scope: &KeyScope) -> Result<bool, CryptoError> {
        let mut keys = self.keys.lock().await;
        let mut destroyed = false;
        for (s, k) in keys.iter_mut() {
            if s == scope && k.tenant_id == tenant && k.wrapped.is_some() {
                k.wrapped = None;
                destroyed = true;
            }
        }
        Ok(destroyed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring() -> Keyring {
        Keyring::new(
            MasterKey::from_base64(&MasterKey::generate_base64()).unwrap(),
            Arc::new(MemoryKeyStore::default()),
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    const T: TenantId = TenantId(Uuid::from_u128(1));

    #[test]
    fn bad_master_keys_are_refused() {
        assert!(matches!(
            MasterKey::from_base64("c2hvcnQ="),
            Err(CryptoError::BadMasterKey)
        ));
        assert!(matches!(
            MasterKey::from_base64("not base64!"),
            Err(CryptoError::BadMasterKey)
        ));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let b64 = MasterKey::generate_base64();
        let mk = MasterKey::from_base64(&b64).unwrap();
        let shown = format!("{mk:?}");
        assert!(!shown.contains(&b64));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn destroyed_subject_key_shreds_only_its_data() {
        rt().block_on(async {
            let ring = ring();
            let subject = KeyScope::Subject("contact:1".into());
            let (sk, sealed_s) = ring.seal(T, &subject, b"alice", b"a").await.unwrap();
            let (tk, sealed_t) = ring.seal(T, &KeyScope::Tenant, b"bob", b"a").await.unwrap();
            assert!(ring.destroy(T, &subject).await.unwrap());
            assert!(matches!(
                ring.open(T, sk, &sealed_s, b"a").await,
                Err(CryptoError::KeyDestroyed { .. })
            ));
            assert_eq!(ring.open(T, tk, &sealed_t, b"a").await.unwrap(), b"bob");
            // A new subject key is not the old one.
            assert!(!ring.destroy(T, &subject).await.unwrap());
        });
    }

    #[test]
    fn blind_indexes_are_stable_per_tenant_and_purpose() {
        rt().block_on(async {
            let ring = ring();
            let a = ring.blind_index(T, "email", b"x@y.z").await.unwrap();
            assert_eq!(a, ring.blind_index(T, "email", b"x@y.z").await.unwrap());
            assert_ne!(
                a,
                ring.blind_index(T, "message-id", b"x@y.z").await.unwrap()
            );
            let other = TenantId(Uuid::from_u128(2));
            assert_ne!(a, ring.blind_index(other, "email", b"x@y.z").await.unwrap());
        });
    }

    /// Index terms already stored must keep matching: the keyed indexer gives exactly the
    /// definition, HMAC(HMAC(index key, "postvak.index.v1" ‖ purpose), value).
    #[test]
    fn the_keyed_indexer_gives_the_defined_hmac() {
        use hmac::{Mac, SimpleHmac};
        rt().block_on(async {
            let ring = ring();
            let indexer = ring
                .blind_indexer(T, "conversation.search.word")
                .await
                .unwrap();
            let (_, key) = ring
                .key_for_scope(T, &KeyScope::Subject(INDEX_SUBJECT.to_owned()))
                .await
                .unwrap();
            for value in [&b""[..], b"hello", &[0xffu8; 200][..]] {
                let mut derive =
                    SimpleHmac::<Sha256>::new_from_slice(key.raw.expose_secret()).unwrap();
                derive.update(b"postvak.index.v1conversation.search.word");
                let purpose = derive.finalize().into_bytes();
                let mut mac = SimpleHmac::<Sha256>::new_from_slice(&purpose).unwrap();
                mac.update(value);
                let want: [u8; 32] = mac.finalize().into_bytes().into();
                assert_eq!(indexer.index(value), want);
                assert_eq!(
                    ring.blind_index(T, "conversation.search.word", value)
                        .await
                        .unwrap(),
                    want
                );
            }
        });
    }

    #[test]
    fn wrong_tenant_or_aad_does_not_open() {
        rt().block_on(async {
            let ring = ring();
            let (k, sealed) = ring.seal(T, &KeyScope::Tenant, b"x", b"aad").await.unwrap();
            assert!(ring.open(T, k, &sealed, b"other").await.is_err());
            assert!(matches!(
                ring.open(TenantId(Uuid::from_u128(2)), k, &sealed, b"aad")
                    .await,
                Err(CryptoError::WrongTenant { .. })
            ));
        });
    }

    proptest! {
        #[test]
        fn seal_open_round_trips_and_nonces_differ(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            rt().block_on(async {
                let ring = ring();
                let (k, a) = ring.seal(T, &KeyScope::Tenant, &data, b"").await.unwrap();
                let (_, b) = ring.seal(T, &KeyScope::Tenant, &data, b"").await.unwrap();
                prop_assert_ne!(&a[..12], &b[..12]);
                prop_assert_eq!(ring.open(T, k, &a, b"").await.unwrap(), data);
                Ok(())
            })?;
        }

        #[test]
        fn any_flipped_bit_fails_authentication(data in proptest::collection::vec(any::<u8>(), 1..64), pos in any::<usize>(), bit in 0u8..8) {
            rt().block_on(async {
                let ring = ring();
                let (k, mut s) = ring.seal(T, &KeyScope::Tenant, &data, b"").await.unwrap();
                let i = pos % s.len();
                s[i] ^= 1 << bit;
                prop_assert!(ring.open(T, k, &s, b"").await.is_err());
                Ok(())
            })?;
        }
    }
}
