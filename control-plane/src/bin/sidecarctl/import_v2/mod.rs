//! `sidecarctl import-v2 --db FILE`: brings a Sidecar V2 SQLite database (`sidecar_v2.db`)
//! over — its providers as backends through `CreateBackend` like any other client, its
//! `system_config` as settings (where they differ), its hour buckets as statistics through
//! `ImportUsage`. See docs/migration.md.
//!
//! V2 kept each provider's key as `<nonce_hex>:<ciphertext_hex>`, AES-256-GCM under its
//! `SIDECAR_ENCRYPTION_KEY` (64 hex characters); the old key decrypts them here, on the
//! operator's machine, and each key goes to the control plane like a key typed into
//! `backend add` (over TLS when the control plane serves it). Every key is decrypted
//! before anything is created: a key that opens none of them is the wrong key and
//! nothing is written; a row whose key alone does not open is reported and skipped.
//!
//! What comes over: name, label, base URL, key, API (`anthropic-*` → anthropic, anything
//! else → openai), timeout, RPM, pool, enabled, model mappings (native id, prices per
//! token, context window, max tokens, reasoning, input modalities) and metadata; not V2's
//! runtime state (status, cooldowns, 429 counts, health). A backend whose name exists is
//! skipped, unchanged settings are left alone and usage rows are added once, so running
//! the import twice changes nothing.

use std::collections::HashMap;

use anyhow::bail;
use serde_json::Value;
use sidecar_proto::v1 as pb;

use crate::{
    cli::{Format, ImportV2Args},
    client::Usage,
    commands::{Ctx, secret},
    output::{Table, print_json},
};

mod v2db;

use v2db::{cipher, read, settings_patch, usage};

/// Leaves in `patch` only what differs from `current`, so a second import changes nothing.
fn drop_unchanged(patch: &mut pb::SettingsPatch, current: &pb::Settings) {
    let same = |slot: &mut Option<i64>, now: u32| {
        if *slot == Some(i64::from(now)) {
            *slot = None;
        }
    };
    same(&mut patch.queue_capacity, current.queue_capacity);
    same(&mut patch.queue_timeout_seconds, current.queue_timeout_seconds);
    same(&mut patch.cooldown_base_seconds, current.cooldown_base_seconds);
    same(&mut patch.cooldown_max_seconds, current.cooldown_max_seconds);
    same(&mut patch.probe_interval_seconds, current.probe_interval_seconds);
    same(&mut patch.probe_timeout_seconds, current.probe_timeout_seconds);
    if patch.emergency_fraction.is_some_and(|f| (f - current.emergency_fraction).abs() < 1e-9) {
        patch.emergency_fraction = None;
    }
}

/// What happened to one V2 backend.
struct Outcome {
    v2_id: String,
    name: String,
    api: &'static str,
    pool: String,
    models: String,
    key: String,
    result: &'static str,
    detail: String,
}

/// Runs `sidecarctl import-v2`.
pub(crate) async fn run(ctx: &mut Ctx, args: ImportV2Args) -> anyhow::Result<()> {
    let Some(hex_key) = secret(args.v2_key.as_deref(), args.v2_key_env.as_deref(), "v2-key")? else {
        bail!(Usage("give the V2 key with --v2-key or --v2-key-env".into()));
    };
    let v2 = read(&args.db, &cipher(&hex_key)?)?;
    let existing: HashMap<String, String> = ctx
        .admin
        .list_backends(pb::ListBackendsRequest::default())
        .await?
        .into_inner()
        .backends
        .into_iter()
        .map(|b| (b.name, b.id))
        .collect();
    let mut outcomes = Vec::new();
    let mut failures = 0;
    // V2 id → the backend here that carries its history.
    let mut ids = HashMap::new();
    for b in v2.backends {
        let (result, detail) = if let Some(id) = existing.get(&b.spec.name) {
            ids.insert(b.id.clone(), id.clone());
            ("skipped", format!("a backend with this name exists ({id})"))
        } else if args.dry_run {
            ("would import", String::new())
        } else {
            let request = pb::CreateBackendRequest { backend: Some(b.spec.clone()), validate: false };
            match ctx.admin.create_backend(request).await {
                Ok(r) => {
                    let id = r.into_inner().backend.map(|b| b.id).unwrap_or_default();
                    ids.insert(b.id.clone(), id.clone());
                    ("imported", id)
                }
                Err(status) => {
                    failures += 1;
                    ("failed", status.message().to_owned())
                }
            }
        };
        let mut models: Vec<&str> = b.spec.model_mappings.keys().map(String::as_str).collect();
        models.sort_unstable();
        outcomes.push(Outcome {
            v2_id: b.id,
            api: crate::output::api_name(b.spec.api),
            pool: b.spec.pool.clone(),
            models: models.join(","),
            key: sidecar_control_plane::crypto::mask(&b.spec.api_key),
            name: b.spec.name,
            result,
            detail,
        });
    }
    for (v2_id, name, why) in v2.unreadable {
        failures += 1;
        let (api, key) = ("-", "-".to_owned());
        let (pool, models) = (String::new(), String::new());
        outcomes.push(Outcome { v2_id, name, api, pool, models, key, result: "failed", detail: why });
    }
    // Settings V2 kept that have a meaning here, where they differ.
    let (mut patch, mapped) = settings_patch(&v2.config);
    let current = ctx.admin.get_settings(pb::GetSettingsRequest {}).await?.into_inner().settings.unwrap_or_default();
    drop_unchanged(&mut patch, &current);
    let settings = if patch == pb::SettingsPatch::default() {
        if mapped.is_empty() { "none in the V2 database".to_owned() } else { "unchanged".to_owned() }
    } else if args.dry_run {
        format!("would change: {patch:?}")
    } else {
        let request = pb::UpdateSettingsRequest { patch: Some(patch), expected_resource_version: None };
        ctx.admin.update_settings(request).await?;
        format!("changed from V2's system_config ({})", mapped.join(", "))
    };
    // Usage history, under the backends here, each V2 row once.
    let history = usage(&args.db, &ids)?;
    let usage_line = if args.dry_run {
        format!("would add up to {} hours of V2 usage history", history.len())
    } else {
        let (mut imported, mut skipped) = (0, 0);
        for chunk in history.chunks(10_000) {
            let request = pb::ImportUsageRequest { source: "v2".into(), rows: chunk.to_vec() };
            let r = ctx.admin.import_usage(request).await?.into_inner();
            (imported, skipped) = (imported + r.imported, skipped + r.skipped);
        }
        format!("{imported} hours of V2 usage history added, {skipped} already imported")
    };
    match ctx.format {
        Format::Json => {
            let rows: Vec<Value> = outcomes
                .iter()
                .map(|o| serde_json::json!({ "v2_id": o.v2_id, "name": o.name, "result": o.result, "detail": o.detail, "api_key": o.key }))
                .collect();
            print_json(&serde_json::json!({ "backends": rows, "settings": settings, "usage": usage_line }))?;
        }
        Format::Table => {
            let mut t = Table::new(&["V2 ID", "NAME", "API", "POOL", "MODELS", "KEY", "RESULT", "DETAIL"]);
            for o in outcomes.iter() {
                t.row(vec![
                    o.v2_id.clone(),
                    o.name.clone(),
                    o.api.into(),
                    o.pool.clone(),
                    o.models.clone(),
                    o.key.clone(),
                    o.result.into(),
                    o.detail.clone(),
                ]);
            }
            t.print()?;
            println!("settings: {settings}");
            println!("usage: {usage_line}");
        }
    }
    if failures > 0 {
        let what = if args.dry_run { "cannot be imported" } else { "were not imported" };
        bail!("{failures} of {} V2 backends {what} (see above)", outcomes.len());
    }
    Ok(())
}
