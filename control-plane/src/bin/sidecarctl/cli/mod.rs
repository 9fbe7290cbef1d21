//! Command-line definitions of `sidecarctl` (clap derive).

use clap::{Args, Parser, Subcommand, ValueEnum};
use sidecar_proto::v1 as pb;

use crate::settings::SettingArg;

mod backend;
mod keys;
mod stats;

pub(crate) use backend::*;
pub(crate) use keys::*;
pub(crate) use stats::*;

/// Address used when neither --server nor SIDECAR_CONTROL_URL is given.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:9290";

/// sidecarctl: manage a Sidecar control plane (backends, pools, settings, nodes, tokens,
/// backups) over its AdminService gRPC API.
#[derive(Debug, Parser)]
#[command(name = "sidecarctl", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Control plane gRPC address; several instances comma-separated (the first that
    /// answers is used).
    #[arg(long, global = true, help_heading = "Global options", env = "SIDECAR_CONTROL_URL", default_value = DEFAULT_SERVER)]
    pub(crate) server: String,
    /// Admin or viewer token, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, help_heading = "Global options", env = "SIDECAR_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, help_heading = "Global options", value_enum, default_value_t = Format::Table)]
    pub(crate) output: Format,
    /// A private CA (PEM) to trust for an https:// server, besides the bundled public roots.
    #[arg(long, global = true, help_heading = "Global options", env = "SIDECAR_CA", value_name = "FILE")]
    pub(crate) ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present, for a control plane that asks for one.
    #[arg(long, global = true, help_heading = "Global options", env = "SIDECAR_TLS_CLIENT_CERT", value_name = "FILE")]
    pub(crate) cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, help_heading = "Global options", env = "SIDECAR_TLS_CLIENT_KEY", value_name = "FILE")]
    pub(crate) key: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How responses are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for lists, `key: value` lines for single objects.
    Table,
    /// The response message as pretty JSON.
    Json,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
// Parsed once per process, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// Provider backends (one base URL + one API key each).
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Routing pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// System settings pushed to every proxy.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Data-plane nodes and the config version each one runs.
    Nodes,
    /// Client keys (sk-sc-…): who may use the proxies, with scope, limits and budgets.
    #[command(subcommand)]
    Key(KeyCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Per-node credentials: a node token bound to one node id (and region).
    #[command(subcommand, name = "node-token")]
    NodeToken(NodeTokenCommand),
    /// Write a backup (backends with keys still encrypted, pools, settings) to FILE.
    Export {
        /// Destination file, created with mode 0600; `-` writes to stdout.
        file: String,
    },
    /// Replace backends, pools and settings with a document written by `export`.
    Import {
        /// Source file; `-` reads stdin.
        file: String,
    },
    /// Bring the providers of a Sidecar V2 SQLite database over as backends.
    #[command(name = "import-v2")]
    ImportV2(ImportV2Args),
    /// Re-encrypt every stored API key under a new encryption key.
    RotateKey(RotateKeyArgs),
    /// Recent configuration changes.
    Audit {
        /// How far back to look, e.g. 30m, 1h, 2days (default: the last 24 hours).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
    },
    /// Usage statistics over a time range: totals, per backend, and grouped rows.
    Stats(StatsArgs),
    /// Fleet-wide cooldowns (429 back-offs) over a time range, newest first.
    Cooldowns(CooldownsArgs),
    /// The current config version.
    Version,
}

/// `sidecarctl pool ...`
#[derive(Debug, Subcommand)]
pub(crate) enum PoolCommand {
    /// List pools in routing order.
    #[command(alias = "ls")]
    List,
    /// Create a pool.
    Add {
        /// Pool name.
        name: String,
        /// Order, description and spill (defaults: after every pool, none, on-busy).
        #[command(flatten)]
        fields: PoolFields,
    },
    /// Change a pool's order, description or spill policy (built-in pools too).
    #[command(alias = "set")]
    Update {
        /// Pool name.
        name: String,
        /// The fields to change.
        #[command(flatten)]
        fields: PoolFields,
    },
    /// Delete a pool that no backend uses.
    #[command(alias = "delete")]
    Rm {
        /// Pool name.
        name: String,
    },
}

/// A pool's settable fields (`pool add`, `pool update`).
#[derive(Debug, Args)]
pub(crate) struct PoolFields {
    /// Position among pools (lower is tried first); on add, default: after every pool.
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) order: Option<i32>,
    /// What the pool is for.
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// When requests go on to the next pool (on add, default: on-busy).
    #[arg(long, value_enum)]
    pub(crate) spill: Option<SpillArg>,
}

/// When requests leave a pool for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SpillArg {
    /// The next pool takes a request when no backend of this pool has a token now.
    OnBusy,
    /// The next pool is used only when every backend of this pool is cooling, in error or
    /// disabled; otherwise requests wait in the queue for this pool.
    OnFailure,
}

impl SpillArg {
    /// The wire value.
    pub(crate) fn to_pb(self) -> i32 {
        match self {
            SpillArg::OnBusy => pb::PoolSpill::OnBusy as i32,
            SpillArg::OnFailure => pb::PoolSpill::OnFailure as i32,
        }
    }
}

/// A spill policy as the CLI shows it.
pub(crate) fn spill_name(value: i32) -> &'static str {
    match pb::PoolSpill::try_from(value) {
        Ok(pb::PoolSpill::OnFailure) => "on-failure",
        _ => "on-busy",
    }
}

/// `sidecarctl settings ...`
#[derive(Debug, Subcommand)]
pub(crate) enum SettingsCommand {
    /// Show the settings.
    Get,
    /// Change settings, e.g. `cooldown_base_seconds=20 adaptive_retreat=true`.
    Set {
        /// KEY=VALUE pairs; keys are the settings' field names.
        #[arg(required = true, value_name = "KEY=VALUE", value_parser = crate::settings::parse_setting)]
        pairs: Vec<SettingArg>,
        /// Refuse unless the settings are at this resource version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
}

/// `sidecarctl token ...`
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token; its secret is printed only this once.
    Create {
        /// What the token may do.
        #[arg(long, value_enum)]
        role: TokenRole,
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never their secrets).
    #[command(alias = "ls")]
    List,
    /// Revoke a token.
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// `sidecarctl node-token ...`
#[derive(Debug, Subcommand)]
pub(crate) enum NodeTokenCommand {
    /// Issue a token for NODE_ID; its secret is printed only this once. For a node that
    /// already has one, this issues a second, equally valid token (rotation: give the
    /// node the new one, then revoke the old one by its token id).
    Create {
        /// The node id the token is bound to (the proxy's SIDECAR_NODE_ID).
        node_id: String,
        /// Only valid for a node saying hello with this region.
        #[arg(long)]
        region: Option<String>,
        /// A name to recognise it by (default: the node id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List node tokens (never their secrets): id, node id, region, created, last used.
    #[command(alias = "ls")]
    List,
    /// Revoke every token of a node id, or one token by its id (`tok_…`). A node whose
    /// tokens are all revoked is disconnected within a second and keeps serving its last
    /// config.
    Revoke {
        /// A node id, or a token id.
        id: String,
    },
}

/// Token roles.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum TokenRole {
    /// Read and write the admin API.
    Admin,
    /// Read the admin API.
    Viewer,
    /// A data-plane proxy (NodeService only).
    Node,
}

impl TokenRole {
    /// The role on the wire.
    pub(crate) fn to_pb(self) -> pb::Role {
        match self {
            Self::Admin => pb::Role::Admin,
            Self::Viewer => pb::Role::Viewer,
            Self::Node => pb::Role::Node,
        }
    }
}

/// `sidecarctl import-v2`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("v2key").required(true).args(["v2_key", "v2_key_env"])))]
pub(crate) struct ImportV2Args {
    /// The V2 database (`sidecar_v2.db`); opened read-only.
    #[arg(long, value_name = "FILE")]
    pub(crate) db: String,
    /// V2's SIDECAR_ENCRYPTION_KEY (64 hex characters) that sealed its provider keys; `-`
    /// reads it from stdin.
    #[arg(long, value_name = "HEX")]
    pub(crate) v2_key: Option<String>,
    /// Read V2's key from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub(crate) v2_key_env: Option<String>,
    /// Show what would be imported; create nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// `sidecarctl rotate-key`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("new").required(true).args(["new_key", "new_key_env"])))]
pub(crate) struct RotateKeyArgs {
    /// The new encryption key, 64 hex characters; `-` reads it from stdin.
    #[arg(long, value_name = "HEX")]
    pub(crate) new_key: Option<String>,
    /// Read the new encryption key from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub(crate) new_key_env: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn negative_numbers_reach_the_server_for_validation() {
        let cli =
            Cli::try_parse_from(["sidecarctl", "backend", "update", "b1", "--rpm", "-5", "--weight", "-1"]).unwrap();
        let Command::Backend(BackendCommand::Update(args)) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.fields.rpm, Some(-5));
        assert_eq!(args.fields.weight, Some(-1));
    }
}
