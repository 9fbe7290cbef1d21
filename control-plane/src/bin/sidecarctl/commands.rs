//! Running a parsed command: connect, call AdminService, print. Backend commands live
//! in `backend.rs`; everything else is here.

use std::{
    io::{self, Read, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use sidecar_proto::v1 as pb;

use crate::{
    backend,
    cli::{self, Cli, Command, Format, NodeTokenCommand, PoolCommand, RotateKeyArgs, SettingsCommand, TokenCommand},
    client::{self, Admin, Usage},
    output::{Table, line, or_dash, print_fields, print_json, time},
    settings, stats,
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
        Command::Nodes => nodes(&mut ctx).await,
        Command::Token(c) => token(&mut ctx, c).await,
        Command::NodeToken(c) => node_token(&mut ctx, c).await,
        Command::Export { file } => export(&mut ctx, &file).await,
        Command::Import { file } => import(&mut ctx, &file).await,
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

async fn nodes(ctx: &mut Ctx) -> anyhow::Result<()> {
    let resp = ctx.admin.list_nodes(pb::ListNodesRequest {}).await?.into_inner();
    if ctx.format == Format::Json {
        return print_json(&resp);
    }
    let mut t = Table::new(&["ID", "REGION", "VERSION", "CONNECTED", "ACKED", "LAST_SEEN", "LAST_REPORT", "LAST_NACK"]);
    for n in &resp.nodes {
        let nack = match n.last_nack_error.as_str() {
            "" => "-".to_owned(),
            e => format!("v{}: {e}", n.last_nack_version),
        };
        t.row(vec![
            n.id.clone(),
            n.region.clone(),
            n.software_version.clone(),
            n.connected.to_string(),
            or_dash(n.acked_config_version),
            time(n.last_seen_ms),
            time(n.last_report_ms),
            nack,
        ]);
    }
    Ok(t.print()?)
}

async fn token(ctx: &mut Ctx, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { role, name } => {
            let request = pb::CreateTokenRequest {
                role: role.to_pb() as i32,
                name: name.unwrap_or_default(),
                ..Default::default()
            };
            let resp = ctx.admin.create_token(request).await?.into_inner();
            if ctx.format == Format::Json {
                return print_json(&resp);
            }
            let t = resp.token.unwrap_or_default();
            // The note goes to stderr so that `TOKEN=$(sidecarctl token create ...)` works.
            eprintln!("created {} token {}; its secret is shown only this once:", t.role, t.id);
            line(&resp.secret)
        }
        TokenCommand::List => {
            let resp = ctx.admin.list_tokens(pb::ListTokensRequest {}).await?.into_inner();
            if ctx.format == Format::Json {
                return print_json(&resp);
            }
            let mut t = Table::new(&["ID", "ROLE", "NAME", "CREATED", "CREATED_BY"]);
            for tok in &resp.tokens {
                t.row(vec![
                    tok.id.clone(),
                    crate::output::role_name(tok.role).to_owned(),
                    tok.name.clone(),
                    time(tok.created_at_ms),
                    tok.created_by.clone(),
                ]);
            }
            Ok(t.print()?)
        }
        TokenCommand::Revoke { id } => {
            let request = pb::RevokeTokenRequest { id: id.clone() };
            let resp = ctx.admin.revoke_token(request).await?.into_inner();
            match ctx.format {
                Format::Json => print_json(&resp),
                Format::Table => line(format_args!("revoked token {id} (config version {})", resp.config_version)),
            }
        }
    }
}

async fn node_token(ctx: &mut Ctx, command: NodeTokenCommand) -> anyhow::Result<()> {
    match command {
        NodeTokenCommand::Create { node_id, region, name } => {
            let request = pb::CreateTokenRequest {
                role: pb::Role::Node as i32,
                name: name.unwrap_or_else(|| node_id.clone()),
                node_id: node_id.clone(),
                region: region.unwrap_or_default(),
            };
            let resp = ctx.admin.create_token(request).await?.into_inner();
            if ctx.format == Format::Json {
                return print_json(&resp);
            }
            let t = resp.token.unwrap_or_default();
            eprintln!("created node token {} for node {node_id}; its secret is shown only this once:", t.id);
            line(&resp.secret)
        }
        NodeTokenCommand::List => {
            let mut resp = ctx.admin.list_tokens(pb::ListTokensRequest {}).await?.into_inner();
            resp.tokens.retain(|t| t.role == pb::Role::Node as i32);
            if ctx.format == Format::Json {
                return print_json(&resp);
            }
            let mut t = Table::new(&["ID", "NODE", "REGION", "NAME", "CREATED", "LAST_USED"]);
            for tok in &resp.tokens {
                t.row(vec![
                    tok.id.clone(),
                    if tok.node_id.is_empty() { "(shared)".into() } else { tok.node_id.clone() },
                    if tok.region.is_empty() { "-".into() } else { tok.region.clone() },
                    tok.name.clone(),
                    time(tok.created_at_ms),
                    time(tok.last_used_ms),
                ]);
            }
            Ok(t.print()?)
        }
        NodeTokenCommand::Revoke { id } => {
            let tokens = ctx.admin.list_tokens(pb::ListTokensRequest {}).await?.into_inner().tokens;
            let chosen: Vec<&pb::Token> =
                tokens.iter().filter(|t| t.role == pb::Role::Node as i32 && (t.id == id || t.node_id == id)).collect();
            if chosen.is_empty() {
                bail!("no node token with id or node id {id:?}");
            }
            let mut revoked = vec![];
            let mut version = 0;
            for t in chosen {
                version = ctx
                    .admin
                    .revoke_token(pb::RevokeTokenRequest { id: t.id.clone() })
                    .await?
                    .into_inner()
                    .config_version;
                revoked.push(t.id.clone());
            }
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({ "revoked": revoked, "config_version": version })),
                Format::Table => line(format_args!("revoked {} (config version {version})", revoked.join(", "))),
            }
        }
    }
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
