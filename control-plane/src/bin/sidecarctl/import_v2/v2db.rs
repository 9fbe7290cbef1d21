//! Reading a V2 database: its backends with their keys decrypted, its settings and its
//! usage history, as the admin API's messages.

use std::collections::HashMap;

use anyhow::{Context, bail};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde_json::Value;
use sidecar_proto::v1 as pb;

use crate::client::Usage;

/// One V2 `backends` row, its key decrypted.
#[derive(Debug)]
pub(super) struct V2Backend {
    pub(super) id: String,
    pub(super) spec: pb::BackendSpec,
}

/// The V2 cipher from its `SIDECAR_ENCRYPTION_KEY` (64 hex characters).
pub(super) fn cipher(hex_key: &str) -> anyhow::Result<LessSafeKey> {
    let bytes = hex::decode(hex_key.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| Usage("the V2 key must be 64 hex characters (V2's SIDECAR_ENCRYPTION_KEY)".into()))?;
    Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("32 bytes is an AES-256 key")))
}

/// Decrypts one V2 `api_key_encrypted` value (`<nonce_hex>:<ciphertext_hex>`).
fn decrypt(cipher: &LessSafeKey, sealed: &str) -> Result<String, String> {
    let (nonce, ciphertext) = sealed.split_once(':').ok_or("not in V2's nonce:ciphertext form")?;
    let nonce: [u8; 12] =
        hex::decode(nonce).ok().and_then(|n| n.try_into().ok()).ok_or("the nonce is not 12 bytes of hex")?;
    let mut buf = hex::decode(ciphertext).map_err(|_| "the ciphertext is not hex")?;
    let plain = cipher
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .map_err(|_| "cannot be decrypted: wrong V2 key, or the value is damaged")?;
    String::from_utf8(plain.to_vec()).map_err(|_| "decrypts to bytes that are not text".into())
}

/// A V2 mapping (`{"native_id", "cost": {"input","output","cacheRead","cacheWrite"},
/// "context_window", "max_tokens", "reasoning", "input_modalities", …}`).
fn mapping(v: &Value) -> pb::ModelMapping {
    let cost = &v["cost"];
    let price = |k: &str| cost[k].as_f64().unwrap_or(0.0);
    let count = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    pb::ModelMapping {
        native_id: v["native_id"].as_str().unwrap_or_default().to_owned(),
        cost: Some(pb::ModelCost {
            input: price("input"),
            output: price("output"),
            cache_read: price("cacheRead"),
            cache_write: price("cacheWrite"),
        }),
        context_window: count("context_window"),
        max_tokens: count("max_tokens"),
        reasoning: v["reasoning"].as_bool().unwrap_or(false),
        input_modalities: v["input_modalities"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The V2 database: its backends (keys decrypted), the rows whose key did not decrypt
/// (name and why), and its `system_config`.
pub(super) struct V2Database {
    pub(super) backends: Vec<V2Backend>,
    /// (V2 id, name, why)
    pub(super) unreadable: Vec<(String, String, String)>,
    pub(super) config: HashMap<String, String>,
}

/// Reads the V2 database at `path`, decrypting its keys with `key`. A key that decrypts
/// for no row at all is the wrong key: an error, before anything is written.
pub(super) fn read(path: &str, key: &LessSafeKey) -> anyhow::Result<V2Database> {
    use rusqlite::{Connection, OpenFlags};
    if !std::path::Path::new(path).is_file() {
        bail!(Usage(format!("{path}: no such file")));
    }
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open {path} as SQLite"))?;
    let mut rows = db
        .prepare(
            "SELECT id, name, label, api_base_url, api_key_encrypted, api, timeout_seconds, rpm_limit, pool, enabled, \
             model_mappings_json, metadata_json FROM backends ORDER BY created_at, name",
        )
        .with_context(|| format!("{path} is not a Sidecar V2 database (no backends table as V2 made it)"))?;
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    let mut rows = rows.query([])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let name: String = row.get(1)?;
        let api_key = match decrypt(key, &row.get::<_, String>(4)?) {
            Ok(k) => k,
            Err(why) => {
                unreadable.push((id, name, format!("its key {why}")));
                continue;
            }
        };
        let json = |i: usize| -> anyhow::Result<Value> {
            let text: Option<String> = row.get(i)?;
            let text = text.unwrap_or_default();
            if text.trim().is_empty() {
                return Ok(Value::Object(Default::default()));
            }
            serde_json::from_str(&text).with_context(|| format!("{name}: column {i} is not JSON"))
        };
        let mappings = json(10)?;
        let metadata = json(11)?;
        let api: String = row.get(5)?;
        let spec = pb::BackendSpec {
            name,
            label: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
            base_url: row.get(3)?,
            api_key,
            timeout_seconds: row.get(6)?,
            rpm_limit: Some(row.get(7)?),
            pool: row.get(8)?,
            enabled: Some(row.get::<_, i64>(9)? != 0),
            model_mappings: mappings
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), mapping(v))).collect())
                .unwrap_or_default(),
            metadata: metadata
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                        .collect()
                })
                .unwrap_or_default(),
            source: pb::BackendSource::Import as i32,
            api: if api.starts_with("anthropic") { pb::BackendApi::Anthropic } else { pb::BackendApi::Openai } as i32,
            ..Default::default()
        };
        out.push(V2Backend { id, spec });
    }
    drop(rows);
    if out.is_empty() && !unreadable.is_empty() {
        let names: Vec<&str> = unreadable.iter().map(|(_, n, _)| n.as_str()).collect();
        bail!(
            "nothing imported: no provider key decrypts with this V2 key (is it V2's SIDECAR_ENCRYPTION_KEY?); tried {}",
            names.join(", ")
        );
    }
    // Settings V2 kept in `system_config` (absent in databases that never changed one).
    let mut config = HashMap::new();
    if let Ok(mut q) = db.prepare("SELECT key, value FROM system_config") {
        let mut rows = q.query([])?;
        while let Some(row) = rows.next()? {
            config.insert(row.get::<_, String>(0)?, row.get::<_, String>(1)?);
        }
    }
    Ok(V2Database { backends: out, unreadable, config })
}

/// V2's usage history (`backend_usage_logs`, one row per backend and hour) as
/// ImportUsage rows, for the V2 backends in `ids` (V2 id → id here). A database without
/// the table has none.
pub(super) fn usage(path: &str, ids: &HashMap<String, String>) -> anyhow::Result<Vec<pb::ImportedUsage>> {
    let db = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let Ok(mut q) = db.prepare(
        "SELECT id, backend_id, model, prompt_tokens, completion_tokens, total_tokens, cost, request_count, \
         error_count, avg_latency_ms, hour_bucket FROM backend_usage_logs ORDER BY hour_bucket, id",
    ) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut rows = q.query([])?;
    while let Some(row) = rows.next()? {
        let Some(backend) = ids.get(&row.get::<_, String>(1)?) else { continue };
        let hour: String = row.get(10)?;
        let at = humantime::parse_rfc3339_weak(hour.trim().trim_end_matches('Z'))
            .with_context(|| format!("backend_usage_logs: hour_bucket {hour:?} is not a time"))?;
        let ms = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let n = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64) };
        let requests = n(7)?;
        out.push(pb::ImportedUsage {
            row_id: row.get(0)?,
            backend: backend.clone(),
            model: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
            hour_start_ms: ms - ms.rem_euclid(3_600_000),
            requests,
            errors: n(8)?.min(requests),
            prompt_tokens: n(3)?,
            completion_tokens: n(4)?,
            total_tokens: n(5)?,
            cost_usd: row.get::<_, Option<f64>>(6)?.unwrap_or(0.0).max(0.0),
            latency_ms_sum: n(9)?.saturating_mul(requests),
        });
    }
    Ok(out)
}

/// V2's `system_config` values that have a setting here: (V2 key, our field) and the
/// value, parsed. Others (ports, tokens, log level) are per-process configuration.
pub(super) fn settings_patch(config: &HashMap<String, String>) -> (pb::SettingsPatch, Vec<String>) {
    let mut patch = pb::SettingsPatch::default();
    let mut applied = Vec::new();
    let num = |k: &str| config.get(k).and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite());
    let mut int = |k: &str, field: &str, slot: &mut Option<i64>| {
        if let Some(v) = num(k) {
            *slot = Some(v.round() as i64);
            applied.push(format!("{k} → {field}"));
        }
    };
    int("queue_max_depth", "queue_capacity", &mut patch.queue_capacity);
    int("queue_timeout_seconds", "queue_timeout_seconds", &mut patch.queue_timeout_seconds);
    int("cooldown_base_seconds", "cooldown_base_seconds", &mut patch.cooldown_base_seconds);
    int("cooldown_max_seconds", "cooldown_max_seconds", &mut patch.cooldown_max_seconds);
    int("health_check_interval_seconds", "probe_interval_seconds", &mut patch.probe_interval_seconds);
    int("health_check_timeout_seconds", "probe_timeout_seconds", &mut patch.probe_timeout_seconds);
    if let Some(v) = num("emergency_rpm_fraction") {
        patch.emergency_fraction = Some(v);
        applied.push("emergency_rpm_fraction → emergency_fraction".into());
    }
    (patch, applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by V2's own code path: Python `cryptography`'s AESGCM under the V2 docs'
    /// example key, nonce and ciphertext hex-joined with `:`.
    const V2_KEY: &str = "0000111122223333444455556666777788889999aaaabbbbccccddddeeeeffff";
    const SEALED: &str = "df81c267983bfdc09d4453ce:2f6f1ab576c1026719970c70618b9795422fe10fc8db5e94193fadd9abf54922e4b266b21102dabbcefd0f";

    #[test]
    fn decrypts_what_v2_encrypted_and_names_what_is_wrong_otherwise() {
        let key = cipher(V2_KEY).unwrap();
        assert_eq!(decrypt(&key, SEALED).unwrap(), "sk-v2-openai-key-0123456789");
        let wrong = cipher(&"1".repeat(64)).unwrap();
        assert!(decrypt(&wrong, SEALED).unwrap_err().contains("wrong V2 key"));
        assert!(decrypt(&key, "abc").unwrap_err().contains("nonce:ciphertext"));
        assert!(decrypt(&key, "00:11").unwrap_err().contains("12 bytes"));
        let tampered = SEALED.replace(":2f", ":3f");
        assert!(decrypt(&key, &tampered).is_err());
        assert!(cipher("abcd").is_err(), "a short key is refused");
    }

    #[test]
    fn v2_mappings_keep_prices_per_token_and_model_facts() {
        let m = mapping(&serde_json::json!({
            "native_id": "deepseek-ai/deepseek-v4-pro",
            "cost": {"input": 0.000001, "output": 0.000004, "cacheRead": 1e-7, "cacheWrite": 2e-6},
            "context_window": 64000, "max_tokens": 8192, "reasoning": true,
            "input_modalities": ["text", "image"], "compat": {"x": 1}
        }));
        assert_eq!(m.native_id, "deepseek-ai/deepseek-v4-pro");
        assert_eq!(m.cost, Some(pb::ModelCost { input: 1e-6, output: 4e-6, cache_read: 1e-7, cache_write: 2e-6 }));
        assert_eq!((m.context_window, m.max_tokens, m.reasoning), (64000, 8192, true));
        assert_eq!(m.input_modalities, ["text", "image"]);
    }
}
