//! The on-disk copy of the last applied snapshot, so a proxy that boots while the control
//! plane is down can serve. It holds API keys, so it is sealed with AES-256-GCM-SIV under
//! `SIDECAR_CACHE_KEY` and written atomically (temp file + rename, mode 0600).

use std::{io::Write, path::PathBuf};

use aes_gcm_siv::{
    Aes256GcmSiv, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use prost::Message;
use rand::RngCore;
use sidecar_proto::v1 as pb;

const AAD: &[u8] = b"sidecar.v1.proxy.snapshot-cache";

/// The sealed snapshot file.
pub struct Cache {
    path: PathBuf,
    cipher: Aes256GcmSiv,
}

impl Cache {
    /// A cache file in `dir` sealed with `key`.
    pub fn new(dir: &std::path::Path, key: &[u8; 32]) -> Self {
        Self { path: dir.join("snapshot.cache"), cipher: Aes256GcmSiv::new(key.into()) }
    }

    /// Seals and writes `snapshot`.
    pub fn save(&self, snapshot: &pb::Snapshot) -> std::io::Result<()> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let plain = snapshot.encode_to_vec();
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad: AAD })
            .map_err(|_| std::io::Error::other("sealing the snapshot failed"))?;
        let tmp = self.path.with_extension("tmp");
        let mut file = open_private(&tmp)?;
        file.write_all(&nonce)?;
        file.write_all(&sealed)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Reads and opens the cached snapshot, if there is one.
    pub fn load(&self) -> Result<Option<pb::Snapshot>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        if bytes.len() < 12 {
            return Err("cache file is truncated".into());
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: AAD })
            .map_err(|_| "cache does not open with SIDECAR_CACHE_KEY (another key, or corrupted)".to_string())?;
        pb::Snapshot::decode(plain.as_slice()).map(Some).map_err(|e| format!("cache is not a snapshot: {e}"))
    }
}

#[cfg(unix)]
fn open_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn open_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_never_holds_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), &[7; 32]);
        assert_eq!(cache.load().unwrap(), None);
        let snapshot = pb::Snapshot {
            version: 9,
            backends: vec![pb::SnapshotBackend { api_key: "sk-very-secret-key".into(), ..Default::default() }],
            ..Default::default()
        };
        cache.save(&snapshot).unwrap();
        let raw = std::fs::read(dir.path().join("snapshot.cache")).unwrap();
        assert!(!raw.windows(18).any(|w| w == b"sk-very-secret-key"));
        assert_eq!(cache.load().unwrap(), Some(snapshot));
        let wrong = Cache::new(dir.path(), &[8; 32]);
        assert!(wrong.load().unwrap_err().contains("SIDECAR_CACHE_KEY"));
    }
}
