//! `sidecarctl nodes`, `sidecarctl token ...` and `sidecarctl node-token ...`: the
//! nodes, and the credentials of people, automation and nodes.

use anyhow::bail;
use sidecar_proto::v1 as pb;

use crate::{
    cli::{Format, NodeTokenCommand, TokenCommand},
    commands::Ctx,
    output::{Table, line, or_dash, print_json, time},
};

pub(crate) async fn nodes(ctx: &mut Ctx) -> anyhow::Result<()> {
    let resp = ctx.admin.list_nodes(pb::ListNodesRequest {}).await?.into_inner();
    if ctx.format == Format::Json {
        return print_json(&resp);
    }
    let mut t = Table::new(&[
        "ID",
        "REGION",
        "VERSION",
        "CONNECTED",
        "INSTANCE",
        "ACKED",
        "LAST_SEEN",
        "LAST_REPORT",
        "LAST_NACK",
    ]);
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
            if n.instance.is_empty() { "-".to_owned() } else { n.instance.clone() },
            or_dash(n.acked_config_version),
            time(n.last_seen_ms),
            time(n.last_report_ms),
            nack,
        ]);
    }
    Ok(t.print()?)
}

pub(crate) async fn token(ctx: &mut Ctx, command: TokenCommand) -> anyhow::Result<()> {
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

pub(crate) async fn node_token(ctx: &mut Ctx, command: NodeTokenCommand) -> anyhow::Result<()> {
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
