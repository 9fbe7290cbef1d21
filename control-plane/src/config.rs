//! `sidecar-control` configuration: command-line flags, then environment variables, then
//! an optional TOML file (`--config`), then defaults. Every invalid value is reported in
//! one line that names the setting and what is expected.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use crate::{crypto::MasterKey, store::Settings, validate};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A V1 single-upstream configuration found in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Upstream {
    /// `SIDECAR_UPSTREAM`.
    pub base_url: String,
    /// `SIDECAR_API_KEY`.
    pub api_key: String,
    /// `SIDECAR_RATE_RPM`.
    pub rpm_limit: u32,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Seals provider keys at rest.
    pub encryption_key: MasterKey,
    /// Seeds an admin token.
    pub admin_token: Option<String>,
    /// Seeds a node token.
    pub node_token: Option<String>,
    /// Where sled lives.
    pub data_dir: PathBuf,
    /// Where backups go; belongs on other storage than `data_dir`.
    pub backup_dir: PathBuf,
    /// gRPC, gRPC-web (and later the console).
    pub listen: SocketAddr,
    /// `/health` and `/metrics`.
    pub ops_listen: SocketAddr,
    /// A tracing filter directive.
    pub log_level: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// Browser origins allowed to call the API cross-origin; empty = same origin only.
    pub cors_origins: Vec<String>,
    /// Settings stored at first start.
    pub initial_settings: Settings,
    /// V1 environment to turn into a backend at first start.
    pub v1_upstream: Option<V1Upstream>,
    /// Fleet coordination timing.
    pub fleet: crate::fleet::FleetTiming,
    /// Built browser console (`web-ui/dist`) served at `/`; `None` = not available.
    pub console_dir: Option<PathBuf>,
    /// TLS on the API port; `None` = plaintext (h2c and HTTP/1.1).
    pub tls: Option<crate::tls::TlsFiles>,
}

/// An invalid setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting}: {message}")]
pub struct ConfigError {
    /// The setting's names (env, flag).
    pub setting: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Flags of `sidecar-control` (everything but secrets, which never go on a command line).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Flags {
    /// TOML file with any of the settings below (keys in snake_case).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [env: SIDECAR_DATA_DIR] [default: ./data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// gRPC / gRPC-web listen address [env: SIDECAR_CONTROL_LISTEN] [default: 127.0.0.1:9290]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Ops listen address (/health, /metrics) [env: SIDECAR_CONTROL_OPS_LISTEN] [default: 127.0.0.1:9291]
    #[arg(long, value_name = "ADDR")]
    pub ops_listen: Option<String>,
    /// Log filter, e.g. info or sidecar_control_plane=debug [env: SIDECAR_LOG_LEVEL]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// text or json [env: SIDECAR_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Comma-separated browser origins allowed cross-origin [env: SIDECAR_CORS_ORIGINS]
    #[arg(long, value_name = "ORIGINS")]
    pub cors_origins: Option<String>,
    /// Initial cooldown base, seconds [env: SIDECAR_COOLDOWN_BASE] [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub cooldown_base: Option<String>,
    /// Initial cooldown cap, seconds [env: SIDECAR_COOLDOWN_MAX] [default: 600]
    #[arg(long, value_name = "SECONDS")]
    pub cooldown_max: Option<String>,
    /// Initial queue capacity [env: SIDECAR_QUEUE_MAX] [default: 500]
    #[arg(long, value_name = "N")]
    pub queue_max: Option<String>,
    /// Initial queue wait limit, seconds [env: SIDECAR_QUEUE_TIMEOUT] [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub queue_timeout: Option<String>,
    /// Initial low-priority wait limit, seconds [env: SIDECAR_LOW_TIMEOUT] [default: 2]
    #[arg(long, value_name = "SECONDS")]
    pub low_timeout: Option<String>,
    /// Directory of the built browser console [env: SIDECAR_CONSOLE_DIR] [default: ./web-ui/dist]
    #[arg(long, value_name = "DIR")]
    pub console_dir: Option<String>,
}

/// One setting: its flag value (if the setting has a flag), env var and file key.
struct Setting {
    env: &'static str,
    flag: Option<&'static str>,
    file: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting { env: "SIDECAR_ENCRYPTION_KEY", flag: None, file: "encryption_key" },
    Setting { env: "SIDECAR_ADMIN_TOKEN", flag: None, file: "admin_token" },
    Setting { env: "SIDECAR_NODE_TOKEN", flag: None, file: "node_token" },
    Setting { env: "SIDECAR_DATA_DIR", flag: Some("--data-dir"), file: "data_dir" },
    Setting { env: "SIDECAR_BACKUP_DIR", flag: None, file: "backup_dir" },
    Setting { env: "SIDECAR_CONTROL_LISTEN", flag: Some("--listen"), file: "listen" },
    Setting { env: "SIDECAR_CONTROL_OPS_LISTEN", flag: Some("--ops-listen"), file: "ops_listen" },
    Setting { env: "SIDECAR_LOG_LEVEL", flag: Some("--log-level"), file: "log_level" },
    Setting { env: "SIDECAR_LOG_FORMAT", flag: Some("--log-format"), file: "log_format" },
    Setting { env: "SIDECAR_CORS_ORIGINS", flag: Some("--cors-origins"), file: "cors_origins" },
    Setting { env: "SIDECAR_COOLDOWN_BASE", flag: Some("--cooldown-base"), file: "cooldown_base" },
    Setting { env: "SIDECAR_COOLDOWN_MAX", flag: Some("--cooldown-max"), file: "cooldown_max" },
    Setting { env: "SIDECAR_QUEUE_MAX", flag: Some("--queue-max"), file: "queue_max" },
    Setting { env: "SIDECAR_QUEUE_TIMEOUT", flag: Some("--queue-timeout"), file: "queue_timeout" },
    Setting { env: "SIDECAR_LOW_TIMEOUT", flag: Some("--low-timeout"), file: "low_timeout" },
    Setting { env: "SIDECAR_UPSTREAM", flag: None, file: "upstream" },
    Setting { env: "SIDECAR_API_KEY", flag: None, file: "api_key" },
    Setting { env: "SIDECAR_RATE_RPM", flag: None, file: "rate_rpm" },
    Setting { env: "SIDECAR_CONSOLE_DIR", flag: Some("--console-dir"), file: "console_dir" },
    Setting { env: "SIDECAR_RATE_WINDOW_MS", flag: None, file: "rate_window_ms" },
    Setting { env: "SIDECAR_GRANT_LEASE_MS", flag: None, file: "grant_lease_ms" },
    Setting { env: "SIDECAR_GRANT_INTERVAL_MS", flag: None, file: "grant_interval_ms" },
    Setting { env: "SIDECAR_GRANT_PROPAGATION_MS", flag: None, file: "grant_propagation_ms" },
    Setting { env: "SIDECAR_TLS_CERT", flag: None, file: "tls_cert" },
    Setting { env: "SIDECAR_TLS_KEY", flag: None, file: "tls_key" },
    Setting { env: "SIDECAR_TLS_CLIENT_CA", flag: None, file: "tls_client_ca" },
    Setting { env: "SIDECAR_REQUIRE_TLS", flag: None, file: "require_tls" },
];

impl Setting {
    fn name(&self) -> String {
        match self.flag {
            Some(flag) => format!("{} ({flag})", self.env),
            None => self.env.to_owned(),
        }
    }
}

fn setting(env: &str) -> &'static Setting {
    SETTINGS.iter().find(|s| s.env == env).expect("known setting")
}

fn flag_value<'a>(flags: &'a Flags, env: &str) -> Option<&'a String> {
    match env {
        "SIDECAR_DATA_DIR" => flags.data_dir.as_ref(),
        "SIDECAR_CONTROL_LISTEN" => flags.listen.as_ref(),
        "SIDECAR_CONTROL_OPS_LISTEN" => flags.ops_listen.as_ref(),
        "SIDECAR_LOG_LEVEL" => flags.log_level.as_ref(),
        "SIDECAR_LOG_FORMAT" => flags.log_format.as_ref(),
        "SIDECAR_CORS_ORIGINS" => flags.cors_origins.as_ref(),
        "SIDECAR_COOLDOWN_BASE" => flags.cooldown_base.as_ref(),
        "SIDECAR_COOLDOWN_MAX" => flags.cooldown_max.as_ref(),
        "SIDECAR_QUEUE_MAX" => flags.queue_max.as_ref(),
        "SIDECAR_QUEUE_TIMEOUT" => flags.queue_timeout.as_ref(),
        "SIDECAR_LOW_TIMEOUT" => flags.low_timeout.as_ref(),
        "SIDECAR_CONSOLE_DIR" => flags.console_dir.as_ref(),
        _ => None,
    }
}

struct Sources<'a> {
    flags: &'a Flags,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: BTreeMap<String, String>,
}

impl Sources<'_> {
    /// The value of a setting by precedence: flag, env, file.
    fn get(&self, env: &str) -> Option<String> {
        let s = setting(env);
        flag_value(self.flags, env)
            .cloned()
            .or_else(|| (self.env)(env).filter(|v| !v.is_empty()))
            .or_else(|| self.file.get(s.file).cloned())
    }

    fn parse<T>(
        &self,
        env: &str,
        default: T,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        match self.get(env) {
            None => Ok(default),
            Some(raw) => parse(raw.trim()).ok_or_else(|| invalid(env, format!("expected {expected}, got {raw:?}"))),
        }
    }
}

fn invalid(env: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { setting: setting(env).name(), message: message.into() }
}

/// Reads the TOML file into setting values as text, refusing unknown keys.
fn read_file(path: &std::path::Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let err = |message: String| ConfigError { setting: format!("config file {}", path.display()), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.message().to_owned()))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if !SETTINGS.iter().any(|s| s.file == key) {
            let known: Vec<_> = SETTINGS.iter().map(|s| s.file).collect();
            return Err(err(format!("unknown key `{key}` (known: {})", known.join(", "))));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        out.insert(key, text);
    }
    Ok(out)
}

fn parse_origin(origin: &str) -> Option<String> {
    let url = reqwest::Url::parse(origin).ok()?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && matches!(url.path(), "" | "/")
        && url.query().is_none();
    ok.then(|| origin.trim_end_matches('/').to_owned())
}

impl ControlConfig {
    /// What is unsafe about this configuration, for a warning at every start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = vec![];
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            out.push(format!(
                "the API listens on {} beyond this host without TLS: admin tokens, node tokens and the provider keys in \
                 every snapshot cross the network in plaintext. Set SIDECAR_TLS_CERT and SIDECAR_TLS_KEY \
                 (SIDECAR_REQUIRE_TLS=true refuses to start like this); see docs/security.md",
                self.listen
            ));
        }
        if self.node_token.is_some() && !self.listen.ip().is_loopback() {
            out.push(format!(
                "SIDECAR_NODE_TOKEN is one credential shared by every proxy, and the API listens on {} beyond this host: \
                 whoever holds it can pull every provider key and report as any node. Issue per-node tokens \
                 (`sidecarctl node-token create NODE_ID`) and unset SIDECAR_NODE_TOKEN",
                self.listen
            ));
        }
        out
    }

    /// Resolves the configuration from flags, an environment lookup and the file the
    /// flags (or nothing) name.
    pub fn resolve(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        let src = Sources { flags, env, file };

        let key_hint = "set SIDECAR_ENCRYPTION_KEY to 64 hex characters; `sidecar-control gen-key` prints a fresh one";
        let encryption_key = match src.get("SIDECAR_ENCRYPTION_KEY") {
            None => {
                return Err(invalid("SIDECAR_ENCRYPTION_KEY", format!("missing: {key_hint}")));
            }
            Some(raw) => MasterKey::from_hex(&raw)
                .map_err(|_| invalid("SIDECAR_ENCRYPTION_KEY", format!("malformed: {key_hint}")))?,
        };
        let token = |env: &str| -> Result<Option<String>, ConfigError> {
            match src.get(env) {
                Some(t) if t.trim().len() < 16 => Err(invalid(env, "must be at least 16 characters")),
                Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                    Err(invalid(env, "must not contain whitespace"))
                }
                other => Ok(other),
            }
        };
        let admin_token = token("SIDECAR_ADMIN_TOKEN")?;
        let node_token = token("SIDECAR_NODE_TOKEN")?;
        let addr = |env: &str, default: &str| {
            src.parse(env, default.parse().expect("default address"), "host:port such as 127.0.0.1:9290", |s| {
                s.parse::<SocketAddr>().ok()
            })
        };
        let listen = addr("SIDECAR_CONTROL_LISTEN", "127.0.0.1:9290")?;
        let ops_listen = addr("SIDECAR_CONTROL_OPS_LISTEN", "127.0.0.1:9291")?;
        let data_dir = PathBuf::from(src.get("SIDECAR_DATA_DIR").unwrap_or_else(|| "./data".into()));
        let backup_dir = src.get("SIDECAR_BACKUP_DIR").map_or_else(|| data_dir.join("backups"), PathBuf::from);
        let log_level = src.get("SIDECAR_LOG_LEVEL").unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(invalid(
                "SIDECAR_LOG_LEVEL",
                format!("expected a level (error, warn, info, debug, trace) or a filter directive, got {log_level:?}"),
            ));
        }
        let log_format = src.parse("SIDECAR_LOG_FORMAT", LogFormat::Text, "text or json", |s| match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        })?;
        let cors_origins = match src.get("SIDECAR_CORS_ORIGINS") {
            None => Vec::new(),
            Some(raw) => raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|o| {
                    parse_origin(o).ok_or_else(|| {
                        invalid(
                            "SIDECAR_CORS_ORIGINS",
                            format!("expected origins such as https://console.example.com, got {o:?}"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };

        let defaults = Settings::default();
        let seconds = |env: &str, default: u32, min: u32, max: u32| {
            src.parse(env, default, &format!("a whole number from {min} to {max}"), |s| {
                s.parse::<u32>().ok().filter(|v| (min..=max).contains(v))
            })
        };
        let initial_settings = Settings {
            cooldown_base_seconds: seconds("SIDECAR_COOLDOWN_BASE", defaults.cooldown_base_seconds, 1, 3600)?,
            cooldown_max_seconds: seconds("SIDECAR_COOLDOWN_MAX", defaults.cooldown_max_seconds, 1, 86_400)?,
            queue_capacity: seconds("SIDECAR_QUEUE_MAX", defaults.queue_capacity, 0, 100_000)?,
            queue_timeout_seconds: seconds("SIDECAR_QUEUE_TIMEOUT", defaults.queue_timeout_seconds, 1, 600)?,
            low_priority_timeout_seconds: seconds(
                "SIDECAR_LOW_TIMEOUT",
                defaults.low_priority_timeout_seconds,
                0,
                600,
            )?,
            ..defaults
        };
        if initial_settings.cooldown_max_seconds < initial_settings.cooldown_base_seconds {
            return Err(invalid("SIDECAR_COOLDOWN_MAX", "must be at least SIDECAR_COOLDOWN_BASE"));
        }

        let v1_upstream = match (src.get("SIDECAR_UPSTREAM"), src.get("SIDECAR_API_KEY")) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid("SIDECAR_API_KEY", "must be set together with SIDECAR_UPSTREAM"));
            }
            (None, Some(_)) => {
                return Err(invalid("SIDECAR_UPSTREAM", "must be set together with SIDECAR_API_KEY"));
            }
            (Some(url), Some(key)) => Some(V1Upstream {
                base_url: validate::base_url("url", &url).map_err(|e| invalid("SIDECAR_UPSTREAM", e.reason))?,
                api_key: validate::api_key("key", &key).map_err(|e| invalid("SIDECAR_API_KEY", e.reason))?,
                rpm_limit: seconds("SIDECAR_RATE_RPM", validate::DEFAULT_RPM, 1, 1_000_000)?,
            }),
        };

        let millis = |env: &str, default: u64, min: u64, max: u64| {
            src.parse(env, default, &format!("milliseconds from {min} to {max}"), |s| {
                s.parse::<u64>().ok().filter(|v| (min..=max).contains(v))
            })
        };
        let fleet = crate::fleet::FleetTiming {
            window: std::time::Duration::from_millis(millis("SIDECAR_RATE_WINDOW_MS", 60_000, 100, 3_600_000)?),
            lease: std::time::Duration::from_millis(millis("SIDECAR_GRANT_LEASE_MS", 5_000, 100, 600_000)?),
            interval: std::time::Duration::from_millis(millis("SIDECAR_GRANT_INTERVAL_MS", 1_000, 50, 60_000)?),
            propagation: std::time::Duration::from_millis(millis("SIDECAR_GRANT_PROPAGATION_MS", 1_000, 10, 60_000)?),
        };
        if fleet.lease <= fleet.interval {
            return Err(invalid("SIDECAR_GRANT_LEASE_MS", "must be longer than SIDECAR_GRANT_INTERVAL_MS"));
        }

        // An explicit directory must hold a built console; the default is used if present.
        let console_dir = match src.get("SIDECAR_CONSOLE_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if !dir.join("index.html").is_file() {
                    return Err(invalid(
                        "SIDECAR_CONSOLE_DIR",
                        format!(
                            "{} has no index.html; build the console with `npm --prefix web-ui ci && npm --prefix web-ui run build`",
                            dir.display()
                        ),
                    ));
                }
                Some(dir)
            }
            None => Some(PathBuf::from("web-ui/dist")).filter(|d| d.join("index.html").is_file()),
        };

        // TLS: certificate and key together; a client CA only with them. The files are
        // read (and checked) when the control plane opens.
        let file = |env: &str| src.get(env).map(PathBuf::from);
        let tls = match (file("SIDECAR_TLS_CERT"), file("SIDECAR_TLS_KEY")) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::TlsFiles { cert, key, client_ca: file("SIDECAR_TLS_CLIENT_CA") })
            }
            (None, None) => None,
            (Some(_), None) => return Err(invalid("SIDECAR_TLS_KEY", "missing: SIDECAR_TLS_CERT needs its key")),
            (None, Some(_)) => {
                return Err(invalid("SIDECAR_TLS_CERT", "missing: SIDECAR_TLS_KEY needs its certificate"));
            }
        };
        if tls.is_none() && src.get("SIDECAR_TLS_CLIENT_CA").is_some() {
            return Err(invalid(
                "SIDECAR_TLS_CLIENT_CA",
                "needs TLS on the API port: set SIDECAR_TLS_CERT and SIDECAR_TLS_KEY",
            ));
        }
        let require_tls = src.parse("SIDECAR_REQUIRE_TLS", false, "true or false", |s| s.parse::<bool>().ok())?;
        if require_tls && tls.is_none() && !listen.ip().is_loopback() {
            return Err(invalid(
                "SIDECAR_REQUIRE_TLS",
                format!(
                    "the API listens on {listen}, beyond this host, without TLS: set SIDECAR_TLS_CERT and SIDECAR_TLS_KEY, or listen on a loopback address"
                ),
            ));
        }

        Ok(Self {
            tls,
            console_dir,
            fleet,
            encryption_key,
            admin_token,
            node_token,
            data_dir,
            backup_dir,
            listen,
            ops_listen,
            log_level,
            log_format,
            cors_origins,
            initial_settings,
            v1_upstream,
        })
    }
}

#[cfg(test)]
mod tests;
