//! Export, import and encryption-key rotation.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{
    auth::Principal,
    crypto::MasterKey,
    snapshot::StateError,
    state::Shared,
    store::{BackendRecord, ClientKeyRecord, ConfigChange, PoolRecord, Settings, Store, StoreError},
    util::now_ms,
    validate::{self, FieldError, field_error},
};

/// An import or key rotation refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Bad input, by field.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The new config could not be published.
    #[error(transparent)]
    Publish(#[from] StateError),
    /// A stored key could not be opened.
    #[error("backend {backend}: {reason}")]
    Key {
        /// Backend id.
        backend: String,
        /// Why.
        reason: String,
    },
}

/// What a key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The key replaced.
    pub old_key_id: String,
    /// The key now in use.
    pub new_key_id: String,
    /// API keys re-sealed.
    pub keys_reencrypted: u32,
    /// The config version of the rotation.
    pub config_version: u64,
}

const FORMAT: &str = "sidecar-export";
const FORMAT_VERSION: u32 = 1;

/// Everything an export holds. API keys stay sealed, each tagged with its key id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportDocument {
    /// Always `sidecar-export`.
    pub format: String,
    /// Layout version of this document.
    pub format_version: u32,
    /// When it was made, unix ms.
    pub exported_at_ms: i64,
    /// Config version at export.
    pub config_version: u64,
    /// Ids of the keys the API keys are sealed with.
    pub key_ids: Vec<String>,
    /// Every backend.
    pub backends: Vec<BackendRecord>,
    /// Every pool.
    pub pools: Vec<PoolRecord>,
    /// The settings.
    pub settings: Settings,
    /// Every client key, revoked ones included: hashes, scope and limits, never a
    /// secret (none is stored). Absent in documents from before client keys: importing
    /// such a document leaves the store's keys as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_keys: Option<Vec<ClientKeyRecord>>,
}

impl ExportDocument {
    /// The document of the store's current backends, pools and settings, as `Export`
    /// returns it and periodic backups write it.
    pub fn from_store(store: &Store) -> Result<Self, StoreError> {
        let backends = store.backends()?;
        let mut key_ids: Vec<String> = backends.iter().map(|b| b.api_key.key_id.clone()).collect();
        key_ids.sort();
        key_ids.dedup();
        Ok(Self {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            exported_at_ms: now_ms(),
            config_version: store.config_version(),
            key_ids,
            backends,
            pools: store.pools()?,
            settings: store.settings()?,
            client_keys: Some(store.client_keys()?),
        })
    }

    /// The document as pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("export documents serialize to JSON")
    }
}

/// Checks a document and turns it into one change that replaces backends, pools,
/// settings and (when the document has them) client keys: a key in the store but not in
/// the document is revoked, so it stops working everywhere and its history stays. Nothing
/// is written unless every part of the document is valid.
pub fn import(
    store: &Store,
    document: &[u8],
    key: &MasterKey,
) -> Result<(ConfigChange, String, (u32, u32)), TransferError> {
    let doc: ExportDocument = serde_json::from_slice(document)
        .map_err(|e| field_error("document", format!("not a Sidecar export document: {e}")))?;
    check_document(&doc, key)?;

    let mut change = ConfigChange::default();
    let keep_backends: HashSet<&str> = doc.backends.iter().map(|b| b.id.as_str()).collect();
    change.delete_backends =
        store.backends()?.into_iter().map(|b| b.id).filter(|id| !keep_backends.contains(id.as_str())).collect();
    let keep_pools: HashSet<&str> = doc.pools.iter().map(|p| p.name.as_str()).collect();
    for existing in store.pools()? {
        // The built-in pools always exist, also when a document lacks them.
        if !keep_pools.contains(existing.name.as_str()) && !existing.builtin {
            change.delete_pools.push(existing.name);
        }
    }
    if let Some(keys) = doc.client_keys {
        let now = now_ms();
        let keep: HashSet<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        for mut gone in store.client_keys()?.into_iter().filter(|k| k.live() && !keep.contains(k.id.as_str())) {
            gone.revoked_at_ms = Some(now);
            gone.resource_version += 1;
            change.put_client_keys.push(gone);
        }
        change.put_client_keys.extend(keys);
    }
    let counts = (doc.backends.len() as u32, doc.pools.len() as u32);
    // Above the document's version, so proxies that ran it (or anything before it) see
    // the import as new, also in a fresh store whose own version is lower.
    change.min_version = Some(doc.config_version + 1);
    change.put_backends = doc.backends;
    change.put_pools = doc.pools;
    change.settings = Some(doc.settings);
    Ok((change, "document".into(), counts))
}

fn check_document(doc: &ExportDocument, key: &MasterKey) -> Result<(), FieldError> {
    if doc.format != FORMAT {
        return Err(field_error("document.format", format!("expected {FORMAT:?}, got {:?}", doc.format)));
    }
    if doc.format_version != FORMAT_VERSION {
        return Err(field_error(
            "document.format_version",
            format!("this control plane reads version {FORMAT_VERSION}, not {}", doc.format_version),
        ));
    }
    let mut pool_names = HashSet::from(["primary", "fallback"]);
    for (i, p) in doc.pools.iter().enumerate() {
        validate::identifier(&format!("document.pools[{i}].name"), &p.name)?;
        if !pool_names.insert(&p.name) && !p.builtin {
            return Err(field_error(format!("document.pools[{i}].name"), format!("duplicate pool {:?}", p.name)));
        }
    }
    let (mut ids, mut names) = (HashSet::new(), HashSet::new());
    for (i, b) in doc.backends.iter().enumerate() {
        let f = |name: &str| format!("document.backends[{i}].{name}");
        validate::identifier(&f("name"), &b.name)?;
        validate::base_url(&f("base_url"), &b.base_url)?;
        validate::rpm_limit(&f("rpm_limit"), i64::from(b.rpm_limit))?;
        validate::window_seconds(&f("window_seconds"), i64::from(b.window_seconds))?;
        validate::window_allows_a_request(&f("window_seconds"), b.rpm_limit, b.window_seconds)?;
        validate::backend::model_limits_within(b)
            .map_err(|e| field_error(f(e.field.trim_start_matches("backend.")), e.reason))?;
        if !ids.insert(b.id.as_str()) || !b.id.starts_with("bkd_") {
            return Err(field_error(f("id"), format!("duplicate or malformed id {:?}", b.id)));
        }
        if !names.insert(b.name.to_ascii_lowercase()) {
            return Err(field_error(f("name"), format!("duplicate name {:?}", b.name)));
        }
        if !pool_names.contains(b.pool.as_str()) {
            return Err(field_error(f("pool"), format!("unknown pool {:?}", b.pool)));
        }
        if b.api_key.key_id != key.id() {
            return Err(field_error(
                f("api_key"),
                format!(
                    "sealed with key id {}, but this control plane's key id is {}: import needs the key the export was made under",
                    b.api_key.key_id,
                    key.id()
                ),
            ));
        }
        key.open(&b.api_key).map_err(|e| field_error(f("api_key"), e.to_string()))?;
    }
    validate::check_settings(&doc.settings, "document.settings")?;
    check_keys(doc)
}

/// Every client key of a document as `CreateKey` would take it (by field, under
/// `document.client_keys[i]`), with unique ids and hashes, and names unique among the
/// live ones.
fn check_keys(doc: &ExportDocument) -> Result<(), FieldError> {
    let Some(keys) = &doc.client_keys else { return Ok(()) };
    let (mut ids, mut hashes) = (HashSet::new(), HashSet::new());
    for (i, k) in keys.iter().enumerate() {
        let f = |name: &str| format!("document.client_keys[{i}].{name}");
        if !ids.insert(k.id.as_str()) || !k.id.starts_with("key_") || k.id.len() > 64 {
            return Err(field_error(f("id"), format!("duplicate or malformed id {:?}", k.id)));
        }
        if !hashes.insert(k.hash) {
            return Err(field_error(f("hash"), "the same key hash twice"));
        }
        let others: &[ClientKeyRecord] = if k.live() { &keys[..i] } else { &[] };
        validate::keys::key_spec(validate::keys::KeySpec::of(k), &doc.pools, others, Some(&k.id), false, now_ms())
            .map_err(|e| field_error(f(e.field.trim_start_matches("key.")), e.reason))?;
    }
    Ok(())
}

/// Re-encrypts every stored key under `new_key_hex` in one transaction, then makes it the
/// current key. The operator must set `SIDECAR_ENCRYPTION_KEY` to the new key before the
/// next restart; the control plane refuses to start with a key that opens nothing.
pub async fn rotate(shared: &Shared, who: &Principal, new_key_hex: &str) -> Result<Rotation, TransferError> {
    let new_key = MasterKey::from_hex(new_key_hex).map_err(|e| field_error("new_key_hex", e.to_string()))?;
    let _guard = shared.writer.lock().await;
    let old_key = shared.key();
    if old_key.id() == new_key.id() {
        return Err(field_error("new_key_hex", "is the key already in use").into());
    }
    let mut change = ConfigChange { active_key_id: Some(new_key.id().to_owned()), ..Default::default() };
    for mut b in shared.store.backends()? {
        let plain = old_key
            .open(&b.api_key)
            .map_err(|e| TransferError::Key { backend: b.id.clone(), reason: e.to_string() })?;
        b.api_key = new_key.seal(&plain);
        change.put_backends.push(b);
    }
    let count = change.put_backends.len() as u32;
    let version = shared.store.commit(change, &who.actor(), "RotateEncryptionKey", new_key.id())?;
    *shared.key.write().expect("key lock") = new_key.clone();
    shared.publish()?;
    shared.store.flush().await?;
    info!(
        old = old_key.id(),
        new = new_key.id(),
        keys = count,
        "encryption key rotated; set SIDECAR_ENCRYPTION_KEY to the new key before restarting"
    );
    Ok(Rotation {
        old_key_id: old_key.id().to_owned(),
        new_key_id: new_key.id().to_owned(),
        keys_reencrypted: count,
        config_version: version,
    })
}
