//! `sidecarctl key ...`: client keys.

use sidecar_proto::v1 as pb;

use crate::{
    cli::{Format, KeyCommand, KeySettings},
    commands::Ctx,
    output::{Table, line, list, print_fields, print_json, time},
};

fn limit(n: u32) -> String {
    if n == 0 { "-".into() } else { n.to_string() }
}

fn budget(k: &pb::ClientKey) -> String {
    if k.budget_usd <= 0.0 {
        return "-".into();
    }
    let period = if k.budget_period == pb::BudgetPeriod::Day as i32 { "day" } else { "month" };
    format!("${:.2}/{period}", k.budget_usd)
}

fn state(k: &pb::ClientKey) -> &'static str {
    if k.revoked_at_ms > 0 {
        "revoked"
    } else if !k.enabled {
        "disabled"
    } else if k.expires_at_ms > 0 && k.expires_at_ms <= crate::commands::now_ms() {
        "expired"
    } else {
        "active"
    }
}

fn show(k: &pb::ClientKey) -> anyhow::Result<()> {
    Ok(print_fields(&[
        ("id", k.id.clone()),
        ("name", k.name.clone()),
        ("prefix", k.prefix.clone()),
        ("state", state(k).into()),
        ("team", if k.team.is_empty() { "-".into() } else { k.team.clone() }),
        ("models", list(&k.models, "all")),
        ("pools", list(&k.pools, "all")),
        ("rpm", limit(k.rpm_limit)),
        ("tpm", limit(k.tpm_limit)),
        ("max_concurrent", limit(k.max_concurrent)),
        ("budget", budget(k)),
        (
            "spent",
            format!(
                "${:.4} this {}",
                k.spent_usd,
                if k.budget_period == pb::BudgetPeriod::Day as i32 { "day (UTC)" } else { "month (UTC)" }
            ),
        ),
        ("expires", if k.expires_at_ms > 0 { time(k.expires_at_ms) } else { "never".into() }),
        ("created", format!("{} by {}", time(k.created_at_ms), k.created_by)),
        ("rotated", if k.rotated_at_ms > 0 { time(k.rotated_at_ms) } else { "-".into() }),
        ("revoked", if k.revoked_at_ms > 0 { time(k.revoked_at_ms) } else { "-".into() }),
        ("resource_version", k.resource_version.to_string()),
    ])?)
}

/// Prints a created or rotated key: the secret alone on stdout (so that
/// `KEY=$(sidecarctl key create ...)` works), the note on stderr.
fn secret(ctx: &Ctx, resp: pb::CreateKeyResponse, what: &str) -> anyhow::Result<()> {
    if ctx.format == Format::Json {
        return print_json(&resp);
    }
    let k = resp.key.unwrap_or_default();
    eprintln!("{what} key {} ({}); its secret is shown only this once:", k.name, k.id);
    line(&resp.secret)
}

pub(crate) async fn run(ctx: &mut Ctx, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { name, settings } => {
            let KeySettings { team, models, pools, rpm, tpm, max_concurrent, budget_usd, budget_period, expires } =
                settings;
            let request = pb::CreateKeyRequest {
                name,
                team: team.unwrap_or_default(),
                models,
                pools,
                rpm_limit: rpm.unwrap_or(0),
                tpm_limit: tpm.unwrap_or(0),
                max_concurrent: max_concurrent.unwrap_or(0),
                budget_usd: budget_usd.unwrap_or(0.0),
                budget_period: budget_period.map_or(0, |p| p.to_pb() as i32),
                expires_at_ms: expires.unwrap_or(0),
            };
            let resp = ctx.admin.create_key(request).await?.into_inner();
            secret(ctx, resp, "created")
        }
        KeyCommand::List { all } => {
            let resp = ctx.admin.list_keys(pb::ListKeysRequest { include_revoked: all }).await?.into_inner();
            if ctx.format == Format::Json {
                return print_json(&resp);
            }
            let mut t =
                Table::new(&["ID", "NAME", "PREFIX", "STATE", "TEAM", "MODELS", "RPM", "TPM", "BUDGET", "EXPIRES"]);
            for k in &resp.keys {
                t.row(vec![
                    k.id.clone(),
                    k.name.clone(),
                    k.prefix.clone(),
                    state(k).into(),
                    if k.team.is_empty() { "-".into() } else { k.team.clone() },
                    list(&k.models, "all"),
                    limit(k.rpm_limit),
                    limit(k.tpm_limit),
                    budget(k),
                    if k.expires_at_ms > 0 { time(k.expires_at_ms) } else { "never".into() },
                ]);
            }
            Ok(t.print()?)
        }
        KeyCommand::Show { id } => {
            let k = ctx.admin.get_key(pb::GetKeyRequest { id }).await?.into_inner();
            if ctx.format == Format::Json { print_json(&k) } else { show(&k) }
        }
        KeyCommand::Update {
            id,
            name,
            settings,
            all_models,
            all_pools,
            no_expiry,
            disable,
            enable,
            expected_version,
        } => {
            let KeySettings { team, models, pools, rpm, tpm, max_concurrent, budget_usd, budget_period, expires } =
                settings;
            let request = pb::UpdateKeyRequest {
                id,
                name,
                team,
                set_models: all_models || !models.is_empty(),
                models,
                set_pools: all_pools || !pools.is_empty(),
                pools,
                rpm_limit: rpm,
                tpm_limit: tpm,
                max_concurrent,
                budget_usd,
                budget_period: budget_period.map(|p| p.to_pb() as i32),
                expires_at_ms: if no_expiry { Some(0) } else { expires },
                enabled: if disable {
                    Some(false)
                } else if enable {
                    Some(true)
                } else {
                    None
                },
                expected_resource_version: expected_version,
            };
            let k = ctx.admin.update_key(request).await?.into_inner();
            if ctx.format == Format::Json { print_json(&k) } else { show(&k) }
        }
        KeyCommand::Revoke { id } => {
            let k = ctx.admin.revoke_key(pb::RevokeKeyRequest { id }).await?.into_inner();
            match ctx.format {
                Format::Json => print_json(&k),
                Format::Table => line(format_args!("revoked key {} ({})", k.name, k.id)),
            }
        }
        KeyCommand::Rotate { id } => {
            let resp = ctx.admin.rotate_key(pb::RotateKeyRequest { id }).await?.into_inner();
            secret(ctx, resp, "rotated")
        }
    }
}
