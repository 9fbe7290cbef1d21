//! `sidecarctl key ...`: client keys, who may use the proxies.

use clap::{Args, Subcommand, ValueEnum};
use sidecar_proto::v1 as pb;

/// `sidecarctl key ...`
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a client key; its secret (sk-sc-…) is printed only this once.
    Create {
        /// A unique name to recognise it by.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        settings: KeySettings,
    },
    /// List client keys (never their secrets: a short prefix only).
    #[command(alias = "ls")]
    List {
        /// Also list revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Show one key, by id or name.
    Show {
        /// The key's id (key_…) or name.
        id: String,
    },
    /// Change a key's scope, limits, budget or expiry, or enable/disable it.
    Update {
        /// The key's id or name.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        settings: KeySettings,
        /// Allow every model again (drops the --model scope).
        #[arg(long, conflicts_with = "models")]
        all_models: bool,
        /// Allow every pool again (drops the --pool scope).
        #[arg(long, conflicts_with = "pools")]
        all_pools: bool,
        /// Never expire.
        #[arg(long, conflicts_with = "expires")]
        no_expiry: bool,
        /// Refuse the key until enabled again.
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Accept the key again.
        #[arg(long)]
        enable: bool,
        /// Refuse unless the key is at this resource version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Revoke a key for good: every proxy refuses it within a second.
    Revoke {
        /// The key's id or name.
        id: String,
    },
    /// Replace a key's secret (same id, scope, limits and history); the new secret is
    /// printed only this once and the old one stops working within a second.
    Rotate {
        /// The key's id or name.
        id: String,
    },
}

/// A key's scope, limits, budget and expiry (unset = unchanged on update, none on create).
#[derive(Debug, Args)]
pub(crate) struct KeySettings {
    /// A team, for accounting.
    #[arg(long)]
    pub(crate) team: Option<String>,
    /// A canonical model the key may use (repeatable; default: every model).
    #[arg(long = "model", value_name = "CANONICAL")]
    pub(crate) models: Vec<String>,
    /// A pool the key may be routed to (repeatable; default: every pool).
    #[arg(long = "pool", value_name = "POOL")]
    pub(crate) pools: Vec<String>,
    /// Requests per minute, fleet-wide (0 = no limit).
    #[arg(long)]
    pub(crate) rpm: Option<u32>,
    /// Tokens per minute, fleet-wide (0 = no limit).
    #[arg(long)]
    pub(crate) tpm: Option<u32>,
    /// Requests in flight at once, fleet-wide (0 = no limit).
    #[arg(long)]
    pub(crate) max_concurrent: Option<u32>,
    /// Spend per period in USD (0 = no budget).
    #[arg(long)]
    pub(crate) budget_usd: Option<f64>,
    /// The budget's period (UTC).
    #[arg(long, value_enum)]
    pub(crate) budget_period: Option<Period>,
    /// When the key stops working: an RFC 3339 time (2027-01-31T00:00:00Z) or a
    /// duration from now (90days, 12h).
    #[arg(long, value_parser = parse_expiry)]
    pub(crate) expires: Option<i64>,
}

/// Budget periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Period {
    /// Each UTC day.
    Day,
    /// Each UTC calendar month.
    Month,
}

impl Period {
    /// The wire value.
    pub(crate) fn to_pb(self) -> pb::BudgetPeriod {
        match self {
            Period::Day => pb::BudgetPeriod::Day,
            Period::Month => pb::BudgetPeriod::Month,
        }
    }
}

/// An RFC 3339 time or a duration from now, as unix ms.
fn parse_expiry(value: &str) -> Result<i64, String> {
    let at = match humantime::parse_rfc3339_weak(value) {
        Ok(at) => at,
        Err(_) => {
            let d = humantime::parse_duration(value)
                .map_err(|_| format!("{value:?} is neither an RFC 3339 time nor a duration such as 90days"))?;
            std::time::SystemTime::now() + d
        }
    };
    let ms = at.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{value:?} is before 1970"))?.as_millis();
    i64::try_from(ms).map_err(|_| format!("{value:?} is too far in the future"))
}
