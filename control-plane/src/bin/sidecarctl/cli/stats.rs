//! `sidecarctl stats` and `sidecarctl cooldowns` arguments.

use clap::{Args, ValueEnum};
use sidecar_proto::v1 as pb;

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
    /// Only this client key, by id or name (repeatable). (`--key` is the TLS client key.)
    #[arg(long = "client-key", value_name = "KEY")]
    pub(crate) keys: Vec<String>,
    /// Only client keys of this team (repeatable).
    #[arg(long = "team", value_name = "TEAM")]
    pub(crate) teams: Vec<String>,
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
    /// Client key (`-` = requests without one).
    Key,
    /// The client key's team.
    Team,
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
            Self::Key => pb::StatsDimension::Key,
            Self::Team => pb::StatsDimension::Team,
        }
    }
}
