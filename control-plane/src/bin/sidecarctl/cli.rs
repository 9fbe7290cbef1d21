//! Command-line definitions of `sidecarctl` (clap derive).

use clap::{Args, Parser, Subcommand, ValueEnum};
use sidecar_proto::v1 as pb;

use crate::settings::SettingArg;

/// Address used when neither --server nor SIDECAR_CONTROL_URL is given.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:9290";

/// sidecarctl: manage a Sidecar control plane (backends, pools, settings, nodes, tokens,
/// backups) over its AdminService gRPC API.
#[derive(Debug, Parser)]
#[command(name = "sidecarctl", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Control plane gRPC address.
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

/// `sidecarctl stats`
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Start: a duration ago (30m, 1h, 7days), an RFC 3339 time, a date or unix ms.
    #[arg(long, default_value = "1h", value_parser = crate::stats::parse_time)]
    pub(crate) since: TimeArg,
    /// End (exclusive), in the same forms; default: now.
    #[arg(long, value_parser = crate::stats::parse_time)]
    pub(crate) until: Option<TimeArg>,
    /// Bucket size; default: chosen from the range (up to 6 h per minute, up to 14 days
    /// per hour, else per day).
    #[arg(long, value_enum)]
    pub(crate) granularity: Option<GranularityArg>,
    /// Only this backend, by id or name (repeatable).
    #[arg(long = "backend", value_name = "BACKEND")]
    pub(crate) backends: Vec<String>,
    /// Only this model (repeatable).
    #[arg(long = "model", value_name = "MODEL")]
    pub(crate) models: Vec<String>,
    /// Only this pool (repeatable).
    #[arg(long = "pool", value_name = "POOL")]
    pub(crate) pools: Vec<String>,
    /// Only nodes of this region (repeatable).
    #[arg(long = "region", value_name = "REGION")]
    pub(crate) regions: Vec<String>,
    /// Only this node (repeatable).
    #[arg(long = "node", value_name = "NODE")]
    pub(crate) nodes: Vec<String>,
    /// Group rows by these, comma-separated, e.g. --by time,backend.
    #[arg(long = "by", value_enum, value_delimiter = ',', value_name = "DIM,...")]
    pub(crate) group_by: Vec<GroupBy>,
}

/// `sidecarctl cooldowns`
#[derive(Debug, Args)]
pub(crate) struct CooldownsArgs {
    /// Start: a duration ago (30m, 1h, 7days), an RFC 3339 time, a date or unix ms.
    #[arg(long, default_value = "24h", value_parser = crate::stats::parse_time)]
    pub(crate) since: TimeArg,
    /// End (exclusive), in the same forms; default: now.
    #[arg(long, value_parser = crate::stats::parse_time)]
    pub(crate) until: Option<TimeArg>,
    /// Only this backend, by id or name.
    #[arg(long)]
    pub(crate) backend: Option<String>,
    /// Only cooldowns caused by this node.
    #[arg(long)]
    pub(crate) node: Option<String>,
}

/// A point in time given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeArg {
    /// This long before now.
    Ago(std::time::Duration),
    /// This unix time, in ms.
    At(i64),
}

/// Stats bucket sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum GranularityArg {
    /// One row per minute.
    Minute,
    /// One row per hour.
    Hour,
    /// One row per UTC day.
    Day,
    /// Chosen from the range's length.
    Auto,
}

/// What stats rows can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum GroupBy {
    /// Time bucket.
    Time,
    /// Backend.
    Backend,
    /// Model (canonical name).
    Model,
    /// Pool.
    Pool,
    /// Region of the reporting node.
    Region,
    /// Reporting node.
    Node,
}

/// `sidecarctl backend ...`
#[derive(Debug, Subcommand)]
pub(crate) enum BackendCommand {
    /// Create a backend.
    Add(BackendAddArgs),
    /// List backends.
    #[command(alias = "ls")]
    List {
        /// Only backends of this pool.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Show one backend.
    Get {
        /// The backend's id or name.
        id: String,
    },
    /// Change a backend; only the given flags change.
    Update(BackendUpdateArgs),
    /// Delete a backend.
    #[command(alias = "delete")]
    Rm {
        /// The backend's id or name.
        id: String,
        /// Refuse unless the backend is at this resource version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Test a key with `GET {base_url}/models`: a stored backend, or --base-url with a key.
    Validate(BackendValidateArgs),
}

/// Where an API key comes from: the command line, stdin (`-`) or an environment variable.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The provider API key; `-` reads it from stdin.
    #[arg(long, conflicts_with = "api_key_env")]
    pub(crate) api_key: Option<String>,
    /// Read the provider API key from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub(crate) api_key_env: Option<String>,
}

/// Backend fields shared by `add` and `update`.
#[derive(Debug, Args)]
pub(crate) struct BackendFields {
    /// Pool the backend belongs to (default on add: primary).
    #[arg(long)]
    pub(crate) pool: Option<String>,
    /// Requests per minute (default on add: 40).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) rpm: Option<i64>,
    /// Tokens per minute; 0 = no token limit.
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) tpm: Option<i64>,
    /// The provider's window in seconds (1-60; default 60): it allows rpm × SECONDS / 60
    /// requests (and tpm × SECONDS / 60 tokens) in every window of that length; 0 = 60.
    #[arg(long = "window-seconds", allow_negative_numbers = true, value_name = "SECONDS")]
    pub(crate) window_seconds: Option<i64>,
    /// Upstream timeout in seconds; 0 = the default (120).
    #[arg(long, allow_negative_numbers = true, value_name = "SECONDS")]
    pub(crate) timeout: Option<i64>,
    /// Free-form tag, e.g. the provider's name.
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Region whose nodes may use the backend (repeatable; none = all regions).
    #[arg(long = "region", value_name = "REGION")]
    pub(crate) regions: Vec<String>,
    /// Model served, as CANONICAL or CANONICAL=NATIVE_ID (repeatable).
    #[arg(long = "model", value_name = "CANONICAL[=NATIVE_ID]", value_parser = parse_model)]
    pub(crate) models: Vec<(String, String)>,
    /// A model's price in USD per 1M tokens (repeatable); shown as cost in stats and the
    /// dashboard. On update without --model, changes only that model's price.
    #[arg(long = "price", value_name = "CANONICAL=INPUT/OUTPUT[/CACHE_READ[/CACHE_WRITE]]", value_parser = parse_price)]
    pub(crate) prices: Vec<(String, Price)>,
    /// Relative share of traffic within the pool (default on add: 1).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) weight: Option<i64>,
    /// Test the key first (GET {base_url}/models); the server refuses it on 401/403.
    #[arg(long)]
    pub(crate) validate: bool,
}

/// `sidecarctl backend add`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("key_source").required(true).args(["api_key", "api_key_env"])))]
pub(crate) struct BackendAddArgs {
    /// Unique name.
    #[arg(long)]
    pub(crate) name: String,
    /// Provider base URL including its version prefix, e.g. https://api.openai.com/v1.
    #[arg(long)]
    pub(crate) base_url: String,
    /// The API key.
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// The other fields.
    #[command(flatten)]
    pub(crate) fields: BackendFields,
    /// Create the backend disabled.
    #[arg(long)]
    pub(crate) disabled: bool,
}

/// `sidecarctl backend update`
#[derive(Debug, Args)]
pub(crate) struct BackendUpdateArgs {
    /// The backend's id or name.
    pub(crate) id: String,
    /// New name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// New base URL.
    #[arg(long)]
    pub(crate) base_url: Option<String>,
    /// New API key.
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// The other fields; --region and --model replace the whole list.
    #[command(flatten)]
    pub(crate) fields: BackendFields,
    /// Allow every region again (clears --region restrictions).
    #[arg(long, conflicts_with = "regions")]
    pub(crate) all_regions: bool,
    /// Put the backend back into rotation.
    #[arg(long, conflicts_with = "disable")]
    pub(crate) enable: bool,
    /// Take the backend out of rotation.
    #[arg(long)]
    pub(crate) disable: bool,
    /// Refuse unless the backend is at this resource version.
    #[arg(long)]
    pub(crate) expected_version: Option<u64>,
}

/// `sidecarctl backend validate`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("candidate_key").args(["api_key", "api_key_env"])))]
pub(crate) struct BackendValidateArgs {
    /// A stored backend's id or name.
    #[arg(conflicts_with_all = ["base_url", "api_key", "api_key_env"], required_unless_present = "base_url")]
    pub(crate) id: Option<String>,
    /// Base URL of a backend not stored yet (needs --api-key or --api-key-env).
    #[arg(long, requires = "candidate_key")]
    pub(crate) base_url: Option<String>,
    /// The key to test.
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Seconds to wait for the provider (default 10).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) timeout: Option<u32>,
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

impl GranularityArg {
    /// The granularity on the wire (auto = unspecified).
    pub(crate) fn to_pb(self) -> pb::Granularity {
        match self {
            Self::Minute => pb::Granularity::Minute,
            Self::Hour => pb::Granularity::Hour,
            Self::Day => pb::Granularity::Day,
            Self::Auto => pb::Granularity::Unspecified,
        }
    }
}

impl GroupBy {
    /// The dimension on the wire.
    pub(crate) fn to_pb(self) -> pb::StatsDimension {
        match self {
            Self::Time => pb::StatsDimension::Time,
            Self::Backend => pb::StatsDimension::Backend,
            Self::Model => pb::StatsDimension::Model,
            Self::Pool => pb::StatsDimension::Pool,
            Self::Region => pb::StatsDimension::Region,
            Self::Node => pb::StatsDimension::Node,
        }
    }
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

/// A model's price in USD per 1M tokens: input, output, cache read, cache write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Price(pub(crate) [f64; 4]);

impl Price {
    /// The mapping's cost, which the API keeps in USD per token.
    pub(crate) fn to_cost(self) -> pb::ModelCost {
        let [input, output, cache_read, cache_write] = self.0.map(|p| p / 1e6);
        pb::ModelCost { input, output, cache_read, cache_write }
    }

    /// The price of a mapping's cost, per 1M tokens.
    pub(crate) fn of(cost: &pb::ModelCost) -> Self {
        Price([cost.input, cost.output, cost.cache_read, cost.cache_write].map(|c| c * 1e6))
    }
}

impl std::fmt::Display for Price {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Rounded to a millionth of a dollar per 1M tokens: what per-token floats print as.
        let [i, o, r, w] = self.0.map(|p| (p * 1e6).round() / 1e6);
        write!(f, "{i}/{o}")?;
        if r != 0.0 || w != 0.0 {
            write!(f, "/{r}/{w}")?;
        }
        Ok(())
    }
}

/// Parses `CANONICAL=INPUT/OUTPUT[/CACHE_READ[/CACHE_WRITE]]` (USD per 1M tokens).
fn parse_price(s: &str) -> Result<(String, Price), String> {
    const EXPECTED: &str = "expected CANONICAL=INPUT/OUTPUT[/CACHE_READ[/CACHE_WRITE]] in USD per 1M tokens, \
                            e.g. gpt-4o-mini=0.15/0.60";
    let (model, prices) = s.split_once('=').ok_or(EXPECTED)?;
    let model = model.trim();
    let parts: Vec<&str> = prices.split('/').map(str::trim).collect();
    if model.is_empty() || !(2..=4).contains(&parts.len()) {
        return Err(EXPECTED.into());
    }
    let mut out = [0.0; 4];
    for (slot, part) in out.iter_mut().zip(&parts) {
        *slot = match part.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => v,
            _ => return Err(format!("{part:?} is not a price (a number of USD, 0 or more); {EXPECTED}")),
        };
    }
    Ok((model.to_owned(), Price(out)))
}

/// Parses `CANONICAL[=NATIVE_ID]`; without `=` the native id is the canonical name.
fn parse_model(s: &str) -> Result<(String, String), String> {
    let (canonical, native) = match s.split_once('=') {
        Some((c, n)) => (c.trim(), n.trim()),
        None => (s.trim(), s.trim()),
    };
    if canonical.is_empty() || native.is_empty() {
        return Err("expected CANONICAL or CANONICAL=NATIVE_ID, e.g. gpt-4o=openai/gpt-4o".into());
    }
    Ok((canonical.to_owned(), native.to_owned()))
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
    fn price_flag_reads_usd_per_million_tokens() {
        let (model, price) = parse_price("gpt-4o-mini=0.15/0.60").unwrap();
        assert_eq!((model.as_str(), price.0), ("gpt-4o-mini", [0.15, 0.6, 0.0, 0.0]));
        let cost = price.to_cost();
        assert!((cost.input - 0.15e-6).abs() < 1e-15 && (cost.output - 0.6e-6).abs() < 1e-15);
        assert_eq!(Price::of(&cost).to_string(), "0.15/0.6");
        let (_, price) = parse_price("m=3/15/0.3/3.75").unwrap();
        assert_eq!(price.to_string(), "3/15/0.3/3.75");
        for bad in ["m", "m=1", "=1/2", "m=1/x", "m=1/-2", "m=1/2/3/4/5", "m=NaN/1"] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn model_flag_defaults_native_id_to_canonical() {
        assert_eq!(parse_model("gpt-4o").unwrap(), ("gpt-4o".into(), "gpt-4o".into()));
        assert_eq!(parse_model("gpt-4o=openai/gpt-4o").unwrap(), ("gpt-4o".into(), "openai/gpt-4o".into()));
        assert!(parse_model("=x").is_err());
        assert!(parse_model("x=").is_err());
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
