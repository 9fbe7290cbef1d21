//! Provider API keys at rest: AES-256-GCM-SIV under `SIDECAR_ENCRYPTION_KEY`, each
//! ciphertext tagged with the id of the key that sealed it so keys can be rotated.

use aes_gcm_siv::{
    Aes256GcmSiv, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Associated data bound into every ciphertext, so a sealed key cannot be mistaken for
/// any other kind of encrypted value.
const AAD: &[u8] = b"sidecar.v1.backend.api_key";

/// Errors of key parsing, sealing and opening. None of them carries secret material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The key text is not 64 hex characters.
    #[error("expected 64 hex characters (32 bytes); generate one with `sidecar-control gen-key`")]
    MalformedKey,
    /// The ciphertext was sealed with a key this process does not hold.
    #[error("sealed with key id {0}, which this control plane does not have")]
    UnknownKeyId(String),
    /// Authentication failed: wrong key or tampered data.
    #[error("ciphertext under key id {0} failed to decrypt (wrong key or corrupted data)")]
    DecryptFailed(String),
}

/// A 256-bit master key and its id.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    cipher: Aes256GcmSiv,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Parses a key from 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(text.trim()).map_err(|_| CryptoError::MalformedKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::MalformedKey)?;
        Ok(Self::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8; 32]) -> Self {
        // The id is a hash of the key, so it identifies the key without revealing it and
        // needs no storage of its own.
        let digest = Sha256::new().chain_update(b"sidecar-key-id:").chain_update(bytes).finalize();
        Self { id: hex::encode(&digest[..6]), cipher: Aes256GcmSiv::new(bytes.into()) }
    }

    /// A fresh random key as 64 hex characters.
    pub fn generate_hex() -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    /// The key's id (12 hex characters).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext` under this key with a fresh random nonce.
    pub fn seal(&self, plaintext: &str) -> Sealed {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: AAD })
            .expect("AES-GCM-SIV encryption of a short message cannot fail");
        Sealed { key_id: self.id.clone(), nonce: nonce.to_vec(), ciphertext }
    }

    /// Decrypts a value sealed under this key.
    pub fn open(&self, sealed: &Sealed) -> Result<String, CryptoError> {
        if sealed.key_id != self.id {
            return Err(CryptoError::UnknownKeyId(sealed.key_id.clone()));
        }
        if sealed.nonce.len() != 12 {
            return Err(CryptoError::DecryptFailed(sealed.key_id.clone()));
        }
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: AAD })
            .map_err(|_| CryptoError::DecryptFailed(sealed.key_id.clone()))?;
        String::from_utf8(plain).map_err(|_| CryptoError::DecryptFailed(sealed.key_id.clone()))
    }
}

/// An encrypted value with the id of the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Id of the master key.
    pub key_id: String,
    /// 96-bit nonce.
    #[serde(with = "hex::serde")]
    pub nonce: Vec<u8>,
    /// Ciphertext with its authentication tag.
    #[serde(with = "hex::serde")]
    pub ciphertext: Vec<u8>,
}

/// The masked form of a key shown by the API: first 6 + `****` + last 4. Keys shorter
/// than 16 characters show only `****`, since 10 visible characters would be most of them.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 16 {
        return "****".to_owned();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_hex(&MasterKey::generate_hex()).unwrap()
    }

    #[test]
    fn seal_then_open_round_trips() {
        let k = key();
        let sealed = k.seal("sk-live-1234567890abcdef");
        assert_eq!(sealed.key_id, k.id());
        assert_ne!(sealed.ciphertext, b"sk-live-1234567890abcdef");
        assert_eq!(k.open(&sealed).unwrap(), "sk-live-1234567890abcdef");
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let k = key();
        assert_ne!(k.seal("same").ciphertext, k.seal("same").ciphertext);
    }

    #[test]
    fn wrong_key_is_refused_by_key_id() {
        let sealed = key().seal("secret");
        let other = key();
        assert!(matches!(other.open(&sealed), Err(CryptoError::UnknownKeyId(_))));
    }

    #[test]
    fn wrong_key_with_forged_key_id_fails_authentication() {
        let mut sealed = key().seal("secret");
        let other = key();
        sealed.key_id = other.id().to_owned();
        assert!(matches!(other.open(&sealed), Err(CryptoError::DecryptFailed(_))));
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let k = key();
        let mut sealed = k.seal("secret");
        sealed.ciphertext[0] ^= 1;
        assert!(matches!(k.open(&sealed), Err(CryptoError::DecryptFailed(_))));
    }

    #[test]
    fn key_id_is_stable_and_distinct() {
        let hex = MasterKey::generate_hex();
        assert_eq!(MasterKey::from_hex(&hex).unwrap().id(), MasterKey::from_hex(&hex).unwrap().id());
        assert_ne!(MasterKey::from_hex(&hex).unwrap().id(), key().id());
        assert_eq!(key().id().len(), 12);
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(31), &"ab".repeat(33)] {
            assert_eq!(MasterKey::from_hex(bad).unwrap_err(), CryptoError::MalformedKey, "{bad}");
        }
    }

    #[test]
    fn mask_shows_first_six_and_last_four() {
        assert_eq!(mask("sk-abcdefghijklmnop1234"), "sk-abc****1234");
        assert_eq!(mask("short-key"), "****");
        assert_eq!(mask(""), "****");
    }
}
