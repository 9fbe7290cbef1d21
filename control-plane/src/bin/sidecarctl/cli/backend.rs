//! `sidecarctl backend ...` arguments, with the `--price` and `--model` parsers.

use clap::{Args, Subcommand, ValueEnum};
use sidecar_proto::v1 as pb;

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
    /// Test a key with `GET {base_url}/models` (sent the way the backend's API takes a key): a
    /// stored backend, or --base-url with a key.
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

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendApi {
    /// OpenAI-compatible: chat, completions, embeddings, responses (`Authorization: Bearer`).
    Openai,
    /// Anthropic Messages: messages, count_tokens (`x-api-key`).
    Anthropic,
}

impl BackendApi {
    /// The wire value.
    pub(crate) fn to_pb(self) -> pb::BackendApi {
        match self {
            BackendApi::Openai => pb::BackendApi::Openai,
            BackendApi::Anthropic => pb::BackendApi::Anthropic,
        }
    }
}

/// Backend fields shared by `add` and `update`.
#[derive(Debug, Args)]
pub(crate) struct BackendFields {
    /// The API the provider speaks (default on add: openai). Requests are routed only to
    /// backends whose API serves their path.
    #[arg(long, value_enum)]
    pub(crate) api: Option<BackendApi>,
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
    /// Read the provider's rate-limit headers and pause the backend when they report the
    /// budget spent (default on add: true).
    #[arg(long, value_name = "BOOL")]
    pub(crate) learn_limits: Option<bool>,
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
    /// A model's own provider limit on this key, requests (and tokens) per minute, within
    /// the backend's (repeatable); `@SECONDS` when the provider enforces it in windows
    /// other than the backend's (e.g. `gpt-4o=60@10` is 10 per 10 s); `CANONICAL=none`
    /// removes it. On update without --model, changes only that model's limit.
    #[arg(long = "model-limit", value_name = "CANONICAL=RPM[/TPM][@SECONDS]|none", value_parser = parse_model_limit)]
    pub(crate) model_limits: Vec<(String, Option<ModelLimit>)>,
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
    /// The API the candidate speaks (default openai): decides how the key is sent.
    #[arg(long, value_enum, requires = "base_url")]
    pub(crate) api: Option<BackendApi>,
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
/// A model's own limits: requests per minute and, optionally, tokens per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModelLimit {
    /// Requests per minute.
    pub(crate) rpm: u32,
    /// Tokens per minute.
    pub(crate) tpm: Option<u32>,
    /// The provider's window for them, in seconds; `None` = the backend's.
    pub(crate) window_seconds: Option<u32>,
}

fn parse_model_limit(s: &str) -> Result<(String, Option<ModelLimit>), String> {
    const EXPECTED: &str =
        "expected CANONICAL=RPM or CANONICAL=RPM/TPM (per minute), optionally @SECONDS (the window), or CANONICAL=none";
    let (model, limits) = s.split_once('=').ok_or(EXPECTED)?;
    let model = model.trim();
    if model.is_empty() {
        return Err(EXPECTED.into());
    }
    if limits.trim().eq_ignore_ascii_case("none") {
        return Ok((model.to_owned(), None));
    }
    let number = |part: &str| -> Result<u32, String> {
        part.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{part:?} is not a limit (a whole number, at least 1); {EXPECTED}"))
    };
    let (limits, window_seconds) = match limits.split_once('@') {
        Some((limits, window)) => {
            let w = window.trim().trim_end_matches('s');
            let w = w.parse::<u32>().ok().filter(|w| (1..=60).contains(w));
            (limits, Some(w.ok_or_else(|| format!("{window:?} is not a window (1 to 60 seconds); {EXPECTED}"))?))
        }
        None => (limits, None),
    };
    let (rpm, tpm) = match limits.split_once('/') {
        Some((rpm, tpm)) => (number(rpm)?, Some(number(tpm)?)),
        None => (number(limits)?, None),
    };
    Ok((model.to_owned(), Some(ModelLimit { rpm, tpm, window_seconds })))
}

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
    use super::*;

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
    fn model_limit_flag_reads_rpm_and_optional_tpm() {
        let limit = |rpm, tpm, window_seconds| Some(ModelLimit { rpm, tpm, window_seconds });
        assert_eq!(parse_model_limit("gpt-4o=60").unwrap(), ("gpt-4o".into(), limit(60, None, None)));
        assert_eq!(parse_model_limit("m = 6/4000").unwrap(), ("m".into(), limit(6, Some(4000), None)));
        assert_eq!(parse_model_limit("m=60@10").unwrap(), ("m".into(), limit(60, None, Some(10))));
        assert_eq!(parse_model_limit("m=60/9000@10s").unwrap(), ("m".into(), limit(60, Some(9000), Some(10))));
        assert_eq!(parse_model_limit("m=none").unwrap(), ("m".into(), None));
        for bad in ["m", "=5", "m=0", "m=-1", "m=x", "m=5/", "m=5/0", "m=5@0", "m=5@61", "m=5@x", "m=5@"] {
            assert!(parse_model_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn model_flag_defaults_native_id_to_canonical() {
        assert_eq!(parse_model("gpt-4o").unwrap(), ("gpt-4o".into(), "gpt-4o".into()));
        assert_eq!(parse_model("gpt-4o=openai/gpt-4o").unwrap(), ("gpt-4o".into(), "openai/gpt-4o".into()));
        assert!(parse_model("=x").is_err());
        assert!(parse_model("x=").is_err());
    }
}
