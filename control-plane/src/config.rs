//! `sidecar-control` configuration: command-line flags, then environment variables, then
//! an optional TOML file (`--config`), then defaults. Every invalid value is reported in
//! one line that names the setting and what is expected.

use std::{net::SocketAddr, path::PathBuf};

pub use sidecar_settings::ConfigError;
use sidecar_settings::{Layered, Origin};

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

/// Where the store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// sled in the data directory (one control plane).
    Sled,
    /// A PostgreSQL database, by URL (several control planes may share it).
    Postgres(String),
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sled => f.write_str("Sled"),
            // The URL may hold a password.
            Self::Postgres(_) => f.write_str("Postgres(…)"),
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Where the store lives.
    pub store: StoreLocation,
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
    /// This instance's name among the instances on one store (`/health`, `sidecarctl nodes`).
    pub instance_name: String,
    /// OpenTelemetry collector (OTLP/HTTP) to export traces to; `None` = no traces.
    pub otlp_endpoint: Option<String>,
}

sidecar_settings::settings! {
    /// Flags of `sidecar-control` (everything but secrets, which never go on a command line).
    pub struct Flags {
        /// TOML file with any of the settings below (keys in snake_case).
        config
    }
    encryption_key = "SIDECAR_ENCRYPTION_KEY": "Seals provider keys at rest: 64 hex characters";
    admin_token = "SIDECAR_ADMIN_TOKEN": "Seeds an admin token";
    node_token = "SIDECAR_NODE_TOKEN": "Seeds a node token shared by every proxy";
    data_dir = "SIDECAR_DATA_DIR", flag "DIR": "Data directory", default "./data";
    store = "SIDECAR_STORE":
        "The store: sled (embedded, in the data directory) or postgres://user:pass@host:port/db (several control planes on one database)",
        default "sled";
    backup_dir = "SIDECAR_BACKUP_DIR": "Where backups go (DATA_DIR/backups if unset); belongs on other storage";
    listen = "SIDECAR_CONTROL_LISTEN", flag "ADDR": "gRPC / gRPC-web listen address", default "127.0.0.1:9290";
    ops_listen = "SIDECAR_CONTROL_OPS_LISTEN", flag "ADDR": "Ops listen address (/health, /metrics)",
        default "127.0.0.1:9291";
    log_level = "SIDECAR_LOG_LEVEL", flag "LEVEL": "Log filter, e.g. info or sidecar_control_plane=debug",
        default "info";
    log_format = "SIDECAR_LOG_FORMAT", flag "FORMAT": "text or json", default "text";
    cors_origins = "SIDECAR_CORS_ORIGINS", flag "ORIGINS": "Comma-separated browser origins allowed cross-origin";
    cooldown_base = "SIDECAR_COOLDOWN_BASE", flag "SECONDS": "Initial cooldown base, seconds", default "30";
    cooldown_max = "SIDECAR_COOLDOWN_MAX", flag "SECONDS": "Initial cooldown cap, seconds", default "600";
    queue_max = "SIDECAR_QUEUE_MAX", flag "N": "Initial queue capacity", default "500";
    queue_timeout = "SIDECAR_QUEUE_TIMEOUT", flag "SECONDS": "Initial queue wait limit, seconds", default "30";
    low_timeout = "SIDECAR_LOW_TIMEOUT", flag "SECONDS": "Initial low-priority wait limit, seconds", default "2";
    upstream = "SIDECAR_UPSTREAM": "V1 upstream base URL, made a backend at first start";
    api_key = "SIDECAR_API_KEY": "V1 upstream API key";
    rate_rpm = "SIDECAR_RATE_RPM": "V1 upstream requests per minute";
    console_dir = "SIDECAR_CONSOLE_DIR", flag "DIR": "Directory of the built browser console",
        default "./web-ui/dist";
    rate_window_ms = "SIDECAR_RATE_WINDOW_MS": "The providers' minute, milliseconds", default "60000";
    grant_lease_ms = "SIDECAR_GRANT_LEASE_MS": "How long a grant stays valid, milliseconds", default "5000";
    grant_interval_ms = "SIDECAR_GRANT_INTERVAL_MS": "How often grants are sent, milliseconds", default "1000";
    grant_propagation_ms = "SIDECAR_GRANT_PROPAGATION_MS": "Bound on grant delivery, milliseconds", default "1000";
    lost_node_hold_ms = "SIDECAR_LOST_NODE_HOLD_MS":
        "How long a proxy cut off without a goodbye keeps its fallback share reserved, milliseconds",
        default "600000";
    tls_cert = "SIDECAR_TLS_CERT": "PEM certificate chain for TLS on the API port";
    tls_key = "SIDECAR_TLS_KEY": "PEM private key of that certificate";
    tls_client_ca = "SIDECAR_TLS_CLIENT_CA": "PEM CA certificates that sign node client certificates (mTLS)";
    require_tls = "SIDECAR_REQUIRE_TLS": "Refuse to listen beyond loopback without TLS", default "false";
    instance_name = "SIDECAR_INSTANCE_NAME":
        "This instance's name among control planes on one store, in /health and sidecarctl nodes (the host name if unset)";
    otlp_endpoint = "SIDECAR_OTLP_ENDPOINT":
        "OpenTelemetry collector (OTLP/HTTP) to export traces to, e.g. http://otel-collector:4318 (unset: no traces)";
}

/// The host's name (the pod's, under Kubernetes), else `control-plane`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "control-plane".to_owned())
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
        let src = Layered::new(flags, env)?;

        let key_hint = "set SIDECAR_ENCRYPTION_KEY to 64 hex characters; `sidecar-control gen-key` prints a fresh one";
        let encryption_key = match src.value("SIDECAR_ENCRYPTION_KEY") {
            None => return Err(src.invalid("SIDECAR_ENCRYPTION_KEY", format!("missing: {key_hint}"))),
            Some(raw) => MasterKey::from_hex(&raw)
                .map_err(|_| src.invalid("SIDECAR_ENCRYPTION_KEY", format!("malformed: {key_hint}")))?,
        };
        let token = |env: &str| -> Result<Option<String>, ConfigError> {
            match src.value(env) {
                Some(t) if t.trim().len() < 16 => Err(src.invalid(env, "must be at least 16 characters")),
                Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                    Err(src.invalid(env, "must not contain whitespace"))
                }
                other => Ok(other),
            }
        };
        let admin_token = token("SIDECAR_ADMIN_TOKEN")?;
        let node_token = token("SIDECAR_NODE_TOKEN")?;
        let addr = |env: &str| src.parse(env, "host:port such as 127.0.0.1:9290", |s| s.parse::<SocketAddr>().ok());
        let listen = addr("SIDECAR_CONTROL_LISTEN")?;
        let ops_listen = addr("SIDECAR_CONTROL_OPS_LISTEN")?;
        let data_dir = PathBuf::from(src.text("SIDECAR_DATA_DIR")?);
        let store = match src.text("SIDECAR_STORE")?.trim() {
            "sled" | "" => StoreLocation::Sled,
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StoreLocation::Postgres(url.to_owned())
            }
            // Never echo the value: it may be a URL with a password.
            _ => return Err(src.invalid("SIDECAR_STORE", "expected sled or a postgres://user:pass@host:port/db URL")),
        };
        let instance_name = match src.value("SIDECAR_INSTANCE_NAME").map(|s| s.trim().to_owned()) {
            Some(name) if !name.is_empty() => {
                if name.len() > 128 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(src
                        .invalid("SIDECAR_INSTANCE_NAME", "expected a name of at most 128 characters without spaces"));
                }
                name
            }
            _ => host_name(),
        };
        let otlp_endpoint = sidecar_otel::endpoint_setting(src.value("SIDECAR_OTLP_ENDPOINT").as_deref())
            .map_err(|why| src.invalid("SIDECAR_OTLP_ENDPOINT", why))?;
        let backup_dir = src.value("SIDECAR_BACKUP_DIR").map_or_else(|| data_dir.join("backups"), PathBuf::from);
        let log_level = src.text("SIDECAR_LOG_LEVEL")?;
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(src.invalid(
                "SIDECAR_LOG_LEVEL",
                format!("expected a level (error, warn, info, debug, trace) or a filter directive, got {log_level:?}"),
            ));
        }
        let log_format = src.parse("SIDECAR_LOG_FORMAT", "text or json", |s| match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        })?;
        let cors_origins = match src.value("SIDECAR_CORS_ORIGINS") {
            None => Vec::new(),
            Some(raw) => raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|o| {
                    parse_origin(o).ok_or_else(|| {
                        src.invalid(
                            "SIDECAR_CORS_ORIGINS",
                            format!("expected origins such as https://console.example.com, got {o:?}"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };

        let whole = |min: u32, max: u32| move |s: &str| s.parse::<u32>().ok().filter(|v| (min..=max).contains(v));
        let seconds = |env: &str, min: u32, max: u32| {
            src.parse(env, &format!("a whole number from {min} to {max}"), whole(min, max))
        };
        let initial_settings = Settings {
            cooldown_base_seconds: seconds("SIDECAR_COOLDOWN_BASE", 1, 3600)?,
            cooldown_max_seconds: seconds("SIDECAR_COOLDOWN_MAX", 1, 86_400)?,
            queue_capacity: seconds("SIDECAR_QUEUE_MAX", 0, 100_000)?,
            queue_timeout_seconds: seconds("SIDECAR_QUEUE_TIMEOUT", 1, 600)?,
            low_priority_timeout_seconds: seconds("SIDECAR_LOW_TIMEOUT", 0, 600)?,
            ..Settings::default()
        };
        if initial_settings.cooldown_max_seconds < initial_settings.cooldown_base_seconds {
            return Err(src.invalid("SIDECAR_COOLDOWN_MAX", "must be at least SIDECAR_COOLDOWN_BASE"));
        }

        let v1_upstream = match (src.value("SIDECAR_UPSTREAM"), src.value("SIDECAR_API_KEY")) {
            (None, None) => None,
            (Some(_), None) => return Err(src.invalid("SIDECAR_API_KEY", "must be set together with SIDECAR_UPSTREAM")),
            (None, Some(_)) => return Err(src.invalid("SIDECAR_UPSTREAM", "must be set together with SIDECAR_API_KEY")),
            (Some(url), Some(key)) => Some(V1Upstream {
                base_url: validate::base_url("url", &url).map_err(|e| src.invalid("SIDECAR_UPSTREAM", e.reason))?,
                api_key: validate::api_key("key", &key).map_err(|e| src.invalid("SIDECAR_API_KEY", e.reason))?,
                rpm_limit: src
                    .parse_opt("SIDECAR_RATE_RPM", "a whole number from 1 to 1000000", whole(1, 1_000_000))?
                    .unwrap_or(validate::DEFAULT_RPM),
            }),
        };

        let millis = |env: &str, min: u64, max: u64| {
            let ms = src.parse(env, &format!("milliseconds from {min} to {max}"), |s| {
                s.parse::<u64>().ok().filter(|v| (min..=max).contains(v))
            });
            ms.map(std::time::Duration::from_millis)
        };
        let fleet = crate::fleet::FleetTiming {
            window: millis("SIDECAR_RATE_WINDOW_MS", 100, 3_600_000)?,
            lease: millis("SIDECAR_GRANT_LEASE_MS", 100, 600_000)?,
            interval: millis("SIDECAR_GRANT_INTERVAL_MS", 50, 60_000)?,
            propagation: millis("SIDECAR_GRANT_PROPAGATION_MS", 10, 60_000)?,
            lost_hold: millis("SIDECAR_LOST_NODE_HOLD_MS", 0, 86_400_000)?,
        };
        if fleet.lease <= fleet.interval {
            return Err(src.invalid("SIDECAR_GRANT_LEASE_MS", "must be longer than SIDECAR_GRANT_INTERVAL_MS"));
        }

        // An explicit directory must hold a built console; the default is used if present.
        let console_dir = match src.get("SIDECAR_CONSOLE_DIR") {
            Some((dir, Origin::Default)) => Some(PathBuf::from(dir)).filter(|d| d.join("index.html").is_file()),
            Some((dir, _)) => {
                let dir = PathBuf::from(dir);
                if !dir.join("index.html").is_file() {
                    return Err(src.invalid(
                        "SIDECAR_CONSOLE_DIR",
                        format!(
                            "{} has no index.html; build the console with `npm --prefix web-ui ci && npm --prefix web-ui run build`",
                            dir.display()
                        ),
                    ));
                }
                Some(dir)
            }
            None => None,
        };

        // TLS: certificate and key together; a client CA only with them. The files are
        // read (and checked) when the control plane opens.
        let file = |env: &str| src.value(env).map(PathBuf::from);
        let tls = match (file("SIDECAR_TLS_CERT"), file("SIDECAR_TLS_KEY")) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::TlsFiles { cert, key, client_ca: file("SIDECAR_TLS_CLIENT_CA") })
            }
            (None, None) => None,
            (Some(_), None) => return Err(src.invalid("SIDECAR_TLS_KEY", "missing: SIDECAR_TLS_CERT needs its key")),
            (None, Some(_)) => {
                return Err(src.invalid("SIDECAR_TLS_CERT", "missing: SIDECAR_TLS_KEY needs its certificate"));
            }
        };
        if tls.is_none() && src.value("SIDECAR_TLS_CLIENT_CA").is_some() {
            return Err(src.invalid(
                "SIDECAR_TLS_CLIENT_CA",
                "needs TLS on the API port: set SIDECAR_TLS_CERT and SIDECAR_TLS_KEY",
            ));
        }
        let require_tls = src.parse("SIDECAR_REQUIRE_TLS", "true or false", |s| s.parse::<bool>().ok())?;
        if require_tls && tls.is_none() && !listen.ip().is_loopback() {
            return Err(src.invalid(
                "SIDECAR_REQUIRE_TLS",
                format!(
                    "the API listens on {listen}, beyond this host, without TLS: set SIDECAR_TLS_CERT and SIDECAR_TLS_KEY, or listen on a loopback address"
                ),
            ));
        }

        Ok(Self {
            store,
            instance_name,
            otlp_endpoint,
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
