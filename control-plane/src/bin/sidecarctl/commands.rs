//! Running a parsed command: connect, call AdminService, print. Backend commands live
//! in `backend.rs`, nodes and tokens in `tokens.rs`, statistics in `stats.rs`; everything
//! else is here.

use std::{
    io::{self, Read, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use sidecar_proto::v1 as pb;

use crate::{
    backend,
    cli::{self, Cli, Command, Format, PoolCommand, RotateKeyArgs, SettingsCommand},
    client::{self, Admin, Usage},
    keys,
    output::{Table, line, or_dash, print_fields, print_json, time},
    settings, stats, tokens,
};

/// What every command needs: the connection and the output format.
pub(crate) struct Ctx {
    /// The AdminService client (token already attached).
    pub(crate) admin: Admin,
    /// How to print the response.
    pub(crate) format: Format,
}

/// Connects and runs the command.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let tls = client::TlsFiles { ca: cli.ca.clone(), cert: cli.cert.clone(), key: cli.key.clone() };
    let admin = client::connect(&cli.server, cli.token.as_deref(), &tls).await?;
    let mut ctx = Ctx { admin, format: cli.output };
    match cli.command {
        Command::Backend(c) => backend::run(&mut ctx, c).await,
        Command::Pool(c) => pool(&mut ctx, c).await,
        Command::Settings(c) => settings(&mut ctx, c).await,
        Command::Nodes => tokens::nodes(&mut ctx).await,
        Command::Key(c) => keys::run(&mut ctx, c).await,
        Command::Token(c) => tokens::token(&mut ctx, c).await,
        Command::NodeToken(c) => tokens::node_token(&mut ctx, c).await,
        Command::Export { file } => export(&mut ctx, &file).await,
        Command::Import { file } => import(&mut ctx, &file).await,
        Command::ImportV2(args) => crate::import_v2::run(&mut ctx, args).await,
        Command::RotateKey(args) => rotate_key(&mut ctx, args).await,
        Command::Audit { since } => {
            let since_ms = match since {
                Some(d) => now_ms().saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).max(1),
                None => 0,
            };
            let request = pb::ListAuditRequest { since_ms, until_ms: 0 };
            let resp = ctx.admin.list_audit(request).await?.into_inner();
            if ctx.format == Format::Json {
                return print_json(&resp);
            }
            let mut t = Table::new(&["TIME", "ACTOR", "ROLE", "ACTION", "TARGET", "CONFIG"]);
            for e in &resp.entries {
                t.row(vec![
                    time(e.at_ms),
                    e.actor.clone(),
                    e.role.clone(),
                    e.action.clone(),
                    e.target.clone(),
                    or_dash(e.config_version),
                ]);
            }
            Ok(t.print()?)
        }
        Command::Stats(args) => stats::stats(&mut ctx, args).await,
        Command::Cooldowns(args) => stats::cooldowns(&mut ctx, args).await,
        Command::Version => {
            let resp = ctx.admin.get_config_version(pb::GetConfigVersionRequest {}).await?.into_inner();
            match ctx.format {
                Format::Json => print_json(&resp),
                Format::Table => line(format_args!("{}", resp.version)),
            }
        }
    }
}

/// A secret from its flag (`-` reads stdin) or from the environment variable named by
/// its `-env` twin, so it need not appear on the command line or in shell history.
pub(crate) fn secret(value: Option<&str>, env_var: Option<&str>, flag: &str) -> anyhow::Result<Option<String>> {
    let raw = match (value, env_var) {
        (Some("-"), _) => {
            let mut s = String::new();
            io::stdin().read_to_string(&mut s).with_context(|| format!("reading --{flag} from stdin"))?;
            s
        }
        (Some(v), _) => v.to_owned(),
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| Usage(format!("environment variable {var} (from --{flag}-env) is not set")))?,
        (None, None) => return Ok(None),
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Usage(format!("--{flag} is empty")).into());
    }
    Ok(Some(trimmed.to_owned()))
}

async fn pool(ctx: &mut Ctx, command: PoolCommand) -> anyhow::Result<()> {
    match command {
        PoolCommand::List => {
            let resp = ctx.admin.list_pools(pb::ListPoolsRequest {}).await?.into_inner();
            if ctx.format == Format::Json {
                return print_json(&resp);
            }
            let mut t = Table::new(&["NAME", "ORDER", "SPILL", "BACKENDS", "BUILTIN", "DESCRIPTION"]);
            for p in &resp.pools {
                t.row(vec![
                    p.name.clone(),
                    p.order.to_string(),
                    cli::spill_name(p.spill).to_owned(),
                    p.backend_count.to_string(),
                    p.builtin.to_string(),
                    p.description.clone(),
                ]);
            }
            Ok(t.print()?)
        }
        PoolCommand::Add { name, fields } => {
            let request = pb::CreatePoolRequest {
                name,
                order: fields.order.unwrap_or(0),
                description: fields.description.unwrap_or_default(),
                spill: fields.spill.map_or(0, cli::SpillArg::to_pb),
            };
            let resp = ctx.admin.create_pool(request).await?.into_inner();
            pool_written(ctx.format, "created", &resp)
        }
        PoolCommand::Update { name, fields } => {
            let request = pb::UpdatePoolRequest {
                name,
                order: fields.order,
                description: fields.description,
                spill: fields.spill.map_or(0, cli::SpillArg::to_pb),
            };
            let resp = ctx.admin.update_pool(request).await?.into_inner();
            pool_written(ctx.format, "updated", &resp)
        }
        PoolCommand::Rm { name } => {
            let request = pb::DeletePoolRequest { name: name.clone() };
            let resp = ctx.admin.delete_pool(request).await?.into_inner();
            match ctx.format {
                Format::Json => print_json(&resp),
                Format::Table => line(format_args!("deleted pool {name} (config version {})", resp.config_version)),
            }
        }
    }
}

/// What a pool write prints.
fn pool_written(format: Format, verb: &str, resp: &pb::PoolResponse) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(resp);
    }
    let p = resp.pool.clone().unwrap_or_default();
    line(format_args!(
        "{verb} pool {} (order {}, spill {}), config version {}",
        p.name,
        p.order,
        cli::spill_name(p.spill),
        resp.config_version
    ))
}

async fn settings(ctx: &mut Ctx, command: SettingsCommand) -> anyhow::Result<()> {
    let resp = match command {
        SettingsCommand::Get => ctx.admin.get_settings(pb::GetSettingsRequest {}).await?,
        SettingsCommand::Set { pairs, expected_version } => {
            let request = pb::UpdateSettingsRequest {
                patch: Some(settings::patch(&pairs)),
                expected_resource_version: expected_version,
            };
            ctx.admin.update_settings(request).await?
        }
    }
    .into_inner();
    if ctx.format == Format::Json {
        return print_json(&resp);
    }
    let mut rows = settings::fields(&resp.settings.unwrap_or_default());
    rows.push(("resource_version", resp.resource_version.to_string()));
    rows.push(("config_version", resp.config_version.to_string()));
    Ok(print_fields(&rows)?)
}

async fn export(ctx: &mut Ctx, file: &str) -> anyhow::Result<()> {
    let resp = ctx.admin.export(pb::ExportRequest {}).await?.into_inner();
    if file == "-" {
        // The document itself is JSON, so it is the output in both formats.
        let mut out = io::stdout().lock();
        out.write_all(&resp.document)?;
        return Ok(out.flush()?);
    }
    write_private(file, &resp.document).with_context(|| format!("writing {file}"))?;
    match ctx.format {
        Format::Json => print_json(&serde_json::json!({
            "file": file,
            "bytes": resp.document.len(),
            "config_version": resp.config_version,
        })),
        Format::Table => line(format_args!(
            "exported config version {} to {file} ({} bytes)",
            resp.config_version,
            resp.document.len()
        )),
    }
}

async fn import(ctx: &mut Ctx, file: &str) -> anyhow::Result<()> {
    let document = match file {
        "-" => {
            let mut buf = Vec::new();
            io::stdin().read_to_end(&mut buf).context("reading stdin")?;
            buf
        }
        path => std::fs::read(path).with_context(|| format!("reading {path}"))?,
    };
    if document.is_empty() {
        bail!("{file} is empty; expected a document written by `sidecarctl export`");
    }
    let resp = ctx.admin.import(pb::ImportRequest { document }).await?.into_inner();
    match ctx.format {
        Format::Json => print_json(&resp),
        Format::Table => line(format_args!(
            "imported {} backends and {} pools, config version {}",
            resp.backends, resp.pools, resp.config_version
        )),
    }
}

async fn rotate_key(ctx: &mut Ctx, args: RotateKeyArgs) -> anyhow::Result<()> {
    let Some(new_key_hex) = secret(args.new_key.as_deref(), args.new_key_env.as_deref(), "new-key")? else {
        return Err(Usage("give the key with --new-key or --new-key-env".into()).into());
    };
    let request = pb::RotateEncryptionKeyRequest { new_key_hex };
    let resp = ctx.admin.rotate_encryption_key(request).await?.into_inner();
    eprintln!("note: set SIDECAR_ENCRYPTION_KEY to the new key before the control plane restarts");
    match ctx.format {
        Format::Json => print_json(&resp),
        Format::Table => line(format_args!(
            "re-encrypted {} API keys under key {} (was {}), config version {}",
            resp.keys_reencrypted, resp.new_key_id, resp.old_key_id, resp.config_version
        )),
    }
}

/// Writes a backup readable by its owner only: it holds (encrypted) provider keys.
fn write_private(path: &str, bytes: &[u8]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // `mode` applies only to new files; tighten an existing one before writing to it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

/// Now as unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
