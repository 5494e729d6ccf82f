//! Secrets at rest: every Secret is stored sealed with AES-256-GCM, so its plaintext appears
//! nowhere on disk — not in the raft log, the state machine, its history, or snapshots.
//!
//! Two levels of keys, as in Kubernetes' KMS v2 design:
//! - data keys, a key ring (`current` + older keys kept for reading) replicated in the store at
//!   [`KEYRING_KEY`], itself sealed with
//! - the key-encryption key (KEK), 32 random bytes in `<data-dir>/pki/kek` (0600), created with
//!   the cluster and handed to joining members with the CA.
//!
//! A sealed value is `ferryenc:v1:<key-id>:<base64(nonce ‖ ciphertext ‖ tag)>`. Rotation adds a
//! new current data key through raft (all members see it at once) and re-seals every Secret.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::node::{Node, NodeError};
use crate::pki;
use crate::store::{Command, CommandResult, Precondition};

/// Where the sealed key ring lives in the store.
pub const KEYRING_KEY: &str = "/_ferry/encryption/keyring";
const PREFIX: &str = "ferryenc:v1:";

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("{0}")]
    Io(String),
    #[error("no encryption key ring yet; the cluster is still starting")]
    NoKeyRing,
    #[error("stored value sealed with unknown key {0:?}")]
    UnknownKey(String),
    #[error("stored value cannot be decrypted (corrupt, or sealed for another cluster)")]
    Corrupt,
    #[error("{0}")]
    Store(#[from] NodeError),
}

fn random<const N: usize>() -> Result<[u8; N], EncryptionError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| EncryptionError::Io("no randomness".into()))?;
    Ok(b)
}

fn key(bytes: &[u8]) -> Result<LessSafeKey, EncryptionError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| EncryptionError::Corrupt)
}

/// nonce ‖ ciphertext ‖ tag, with `aad` bound in.
fn seal_bytes(k: &LessSafeKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, EncryptionError> {
    let nonce = random::<NONCE_LEN>()?;
    let mut buf = plaintext.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| EncryptionError::Corrupt)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

fn open_bytes(k: &LessSafeKey, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, EncryptionError> {
    if sealed.len() < NONCE_LEN {
        return Err(EncryptionError::Corrupt);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| EncryptionError::Corrupt)?;
    let mut buf = ct.to_vec();
    let plain = k
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| EncryptionError::Corrupt)?;
    Ok(plain.to_vec())
}

/// The data keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyRing {
    current: String,
    /// id -> hex key
    keys: BTreeMap<String, String>,
}

/// The KEK file in a member's PKI folder.
pub fn kek_path(data_dir: &Path) -> std::path::PathBuf {
    pki::Pki::dir_of(data_dir).join("kek")
}

/// Creates the KEK for a new cluster.
pub fn create_kek(data_dir: &Path) -> Result<String, EncryptionError> {
    let hex = hex::encode(random::<32>()?);
    pki::write_private(&kek_path(data_dir), &hex)
        .map_err(|e| EncryptionError::Io(e.to_string()))?;
    Ok(hex)
}

pub fn load_kek(data_dir: &Path) -> Result<String, EncryptionError> {
    let p = kek_path(data_dir);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|e| EncryptionError::Io(format!("{}: {e}", p.display())))
}

/// Seals and opens Secret values for one member.
#[derive(Clone)]
pub struct Encryptor {
    node: Arc<Node>,
    kek: Arc<LessSafeKey>,
    /// (mod revision of the ring in the store, ring)
    cache: Arc<RwLock<Option<(u64, KeyRing)>>>,
}

impl Encryptor {
    pub fn new(node: Arc<Node>, kek_hex: &str) -> Result<Self, EncryptionError> {
        let bytes =
            hex::decode(kek_hex.trim()).map_err(|_| EncryptionError::Io("kek: not hex".into()))?;
        Ok(Self {
            node,
            kek: Arc::new(key(&bytes)?),
            cache: Arc::default(),
        })
    }

    fn ring(&self) -> Result<KeyRing, EncryptionError> {
        let (kv, _) = self
            .node
            .sm
            .get(KEYRING_KEY)
            .map_err(|e| EncryptionError::Io(e.to_string()))?;
        let kv = kv.ok_or(EncryptionError::NoKeyRing)?;
        if let Some((rev, ring)) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && *rev == kv.mod_revision
        {
            return Ok(ring.clone());
        }
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(kv.value.as_bytes())
            .map_err(|_| EncryptionError::Corrupt)?;
        let plain = open_bytes(&self.kek, &sealed, KEYRING_KEY.as_bytes())?;
        let ring: KeyRing = serde_json::from_slice(&plain).map_err(|_| EncryptionError::Corrupt)?;
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) =
            Some((kv.mod_revision, ring.clone()));
        Ok(ring)
    }

    fn sealed_ring(&self, ring: &KeyRing) -> Result<String, EncryptionError> {
        let json = serde_json::to_vec(ring).map_err(|e| EncryptionError::Io(e.to_string()))?;
        let sealed = seal_bytes(&self.kek, &json, KEYRING_KEY.as_bytes())?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    /// Adds a new current data key (the first one on a new cluster); returns its id.
    pub async fn add_key(&self) -> Result<String, EncryptionError> {
        loop {
            self.node.read_barrier().await?;
            let (kv, _) = self
                .node
                .sm
                .get(KEYRING_KEY)
                .map_err(|e| EncryptionError::Io(e.to_string()))?;
            let (mut ring, precondition) = match &kv {
                Some(kv) => (self.ring()?, Precondition::ModRevision(kv.mod_revision)),
                None => (
                    KeyRing {
                        current: String::new(),
                        keys: BTreeMap::new(),
                    },
                    Precondition::Absent,
                ),
            };
            let id = format!("k{}", ring.keys.len() + 1);
            ring.keys.insert(id.clone(), hex::encode(random::<32>()?));
            ring.current = id.clone();
            let value = self.sealed_ring(&ring)?;
            match self
                .node
                .write(Command::Put {
                    key: KEYRING_KEY.into(),
                    value,
                    precondition,
                })
                .await?
            {
                CommandResult::Applied { .. } => return Ok(id),
                _ => continue,
            }
        }
    }

    /// Makes sure the cluster has a key ring.
    pub async fn ensure_key(&self) -> Result<(), EncryptionError> {
        self.node.read_barrier().await?;
        match self
            .node
            .sm
            .get(KEYRING_KEY)
            .map_err(|e| EncryptionError::Io(e.to_string()))?
            .0
        {
            Some(_) => Ok(()),
            None => self.add_key().await.map(|_| ()),
        }
    }

    /// Seals a stored value (`key` is bound in as associated data, so a sealed value cannot be
    /// moved to another key).
    pub fn seal(&self, store_key: &str, plaintext: &str) -> Result<String, EncryptionError> {
        let ring = self.ring()?;
        let k = ring
            .keys
            .get(&ring.current)
            .ok_or_else(|| EncryptionError::UnknownKey(ring.current.clone()))?;
        let bytes = hex::decode(k).map_err(|_| EncryptionError::Corrupt)?;
        let sealed = seal_bytes(&key(&bytes)?, plaintext.as_bytes(), store_key.as_bytes())?;
        Ok(format!(
            "{PREFIX}{}:{}",
            ring.current,
            base64::engine::general_purpose::STANDARD.encode(sealed)
        ))
    }

    /// True when `stored` is sealed with the current key (nothing to re-encrypt).
    pub fn is_current(&self, stored: &str) -> bool {
        match (
            stored.strip_prefix(PREFIX).and_then(|r| r.split_once(':')),
            self.ring(),
        ) {
            (Some((id, _)), Ok(ring)) => id == ring.current,
            _ => false,
        }
    }

    /// The plaintext of a stored value; values that are not sealed pass through unchanged.
    pub fn open(&self, store_key: &str, stored: &str) -> Result<String, EncryptionError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (id, b64) = rest.split_once(':').ok_or(EncryptionError::Corrupt)?;
        let ring = self.ring()?;
        let k = ring
            .keys
            .get(id)
            .ok_or_else(|| EncryptionError::UnknownKey(id.to_string()))?;
        let bytes = hex::decode(k).map_err(|_| EncryptionError::Corrupt)?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| EncryptionError::Corrupt)?;
        let plain = open_bytes(&key(&bytes)?, &sealed, store_key.as_bytes())?;
        String::from_utf8(plain).map_err(|_| EncryptionError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_binds_the_key_and_detects_tampering() {
        let k = key(&[7u8; 32]).expect("key");
        let sealed = seal_bytes(&k, b"hunter2", b"/secrets/default/db").expect("seal");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            open_bytes(&k, &sealed, b"/secrets/default/db").expect("open"),
            b"hunter2"
        );
        assert!(
            open_bytes(&k, &sealed, b"/secrets/default/other").is_err(),
            "bound to its key"
        );
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(
            open_bytes(&k, &bad, b"/secrets/default/db").is_err(),
            "tampering detected"
        );
        assert!(
            open_bytes(
                &key(&[8u8; 32]).expect("key"),
                &sealed,
                b"/secrets/default/db"
            )
            .is_err()
        );
        assert!(open_bytes(&k, b"short", b"x").is_err());
    }
}
