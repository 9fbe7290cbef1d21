//! `sidecar-proxy` configuration: flags, then environment variables, then an optional
//! TOML file (`--config`), then defaults. An invalid value is reported in one line that
//! names the setting.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Control plane gRPC URL.
    pub control_url: String,
    /// Node token.
    pub node_token: Option<String>,
    /// Node id; `None` = generated once and kept in the data dir.
    pub node_id: Option<String>,
    /// Region this node serves.
    pub region: String,
    /// OpenAI API listen address.
    pub listen: SocketAddr,
    /// Ops listen address.
    pub ops_listen: SocketAddr,
    /// Node id file and snapshot cache.
    pub data_dir: PathBuf,
    /// 32-byte key sealing the on-disk snapshot cache (it holds API keys).
    pub cache_key: Option<[u8; 32]>,
    /// Request body limit.
    pub max_body_bytes: usize,
    /// Tracing filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Rate-limit window; 60 s. Shorter only so tests can run minutes in seconds.
    pub rate_window: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Usage batches kept while the control plane is away.
    pub outbox_capacity: usize,
    /// API worker threads, each with its own event loop and upstream connections.
    pub workers: usize,
    /// Longest a client connection may wait before a request's headers are complete:
    /// closes slow senders and idle keep-alive connections.
    pub header_timeout: Duration,
    /// Longest a request body may take to arrive, from the end of its headers (408).
    pub body_timeout: Duration,
    /// Open client connections on the API port; past it new ones are closed at once.
    pub max_connections: usize,
    /// A private CA (PEM) trusted for an `https://` control URL, besides the bundled
    /// public roots.
    pub control_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) presented to the control plane (mTLS).
    pub control_client_cert: Option<(PathBuf, PathBuf)>,
    /// Certificate and key (PEM) to serve the OpenAI API over HTTPS; `None` = plaintext.
    pub api_tls: Option<(PathBuf, PathBuf)>,
    /// CA certificates (PEM) trusted for providers, besides the bundled and system roots.
    pub upstream_ca: Option<PathBuf>,
}

/// An invalid setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting}: {message}")]
pub struct ConfigError {
    /// The setting's names.
    pub setting: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Flags of `sidecar-proxy` (everything but secrets).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Flags {
    /// TOML file with any of the settings (keys in snake_case, e.g. control_url).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control plane URL [env: SIDECAR_CONTROL_URL] [default: http://127.0.0.1:9290]
    #[arg(long, value_name = "URL")]
    pub control_url: Option<String>,
    /// Node id [env: SIDECAR_NODE_ID] [default: generated once, kept in the data dir]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Region [env: SIDECAR_REGION]
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// API host [env: SIDECAR_HOST] [default: 127.0.0.1]
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// API port [env: SIDECAR_PORT] [default: 9190]
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,
    /// Ops listen address [env: SIDECAR_OPS_LISTEN] [default: 127.0.0.1:9191]
    #[arg(long, value_name = "ADDR")]
    pub ops_listen: Option<String>,
    /// Data directory [env: SIDECAR_DATA_DIR] [default: ./data/proxy]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Request body limit in bytes [env: SIDECAR_MAX_BODY_BYTES] [default: 10485760]
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<String>,
    /// Log filter [env: SIDECAR_LOG_LEVEL] [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// text or json [env: SIDECAR_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// API worker threads [env: SIDECAR_WORKERS] [default: one per CPU]
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// Open client connections allowed on the API port [env: SIDECAR_MAX_CONNECTIONS]
    /// [default: from the open-file limit]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
}

struct Setting {
    env: &'static str,
    flag: Option<&'static str>,
    file: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting { env: "SIDECAR_CONTROL_URL", flag: Some("--control-url"), file: "control_url" },
    Setting { env: "SIDECAR_NODE_TOKEN", flag: None, file: "node_token" },
    Setting { env: "SIDECAR_NODE_ID", flag: Some("--node-id"), file: "node_id" },
    Setting { env: "SIDECAR_REGION", flag: Some("--region"), file: "region" },
    Setting { env: "SIDECAR_HOST", flag: Some("--host"), file: "host" },
    Setting { env: "SIDECAR_PORT", flag: Some("--port"), file: "port" },
    Setting { env: "SIDECAR_OPS_LISTEN", flag: Some("--ops-listen"), file: "ops_listen" },
    Setting { env: "SIDECAR_DATA_DIR", flag: Some("--data-dir"), file: "data_dir" },
    Setting { env: "SIDECAR_CACHE_KEY", flag: None, file: "cache_key" },
    Setting { env: "SIDECAR_MAX_BODY_BYTES", flag: Some("--max-body-bytes"), file: "max_body_bytes" },
    Setting { env: "SIDECAR_LOG_LEVEL", flag: Some("--log-level"), file: "log_level" },
    Setting { env: "SIDECAR_LOG_FORMAT", flag: Some("--log-format"), file: "log_format" },
    Setting { env: "SIDECAR_RATE_WINDOW_MS", flag: None, file: "rate_window_ms" },
    Setting { env: "SIDECAR_SHUTDOWN_GRACE", flag: None, file: "shutdown_grace" },
    Setting { env: "SIDECAR_OUTBOX_BATCHES", flag: None, file: "outbox_batches" },
    Setting { env: "SIDECAR_WORKERS", flag: Some("--workers"), file: "workers" },
    Setting { env: "SIDECAR_HEADER_TIMEOUT", flag: None, file: "header_timeout" },
    Setting { env: "SIDECAR_BODY_TIMEOUT", flag: None, file: "body_timeout" },
    Setting { env: "SIDECAR_MAX_CONNECTIONS", flag: Some("--max-connections"), file: "max_connections" },
    Setting { env: "SIDECAR_CONTROL_CA", flag: None, file: "control_ca" },
    Setting { env: "SIDECAR_TLS_CLIENT_CERT", flag: None, file: "tls_client_cert" },
    Setting { env: "SIDECAR_TLS_CLIENT_KEY", flag: None, file: "tls_client_key" },
    Setting { env: "SIDECAR_TLS_CERT", flag: None, file: "tls_cert" },
    Setting { env: "SIDECAR_TLS_KEY", flag: None, file: "tls_key" },
    Setting { env: "SIDECAR_UPSTREAM_CA", flag: None, file: "upstream_ca" },
];

fn setting(env: &str) -> &'static Setting {
    SETTINGS.iter().find(|s| s.env == env).expect("known setting")
}

fn invalid(env: &str, message: impl Into<String>) -> ConfigError {
    let s = setting(env);
    let setting = match s.flag {
        Some(flag) => format!("{} ({flag})", s.env),
        None => s.env.to_owned(),
    };
    ConfigError { setting, message: message.into() }
}

fn flag_value<'a>(flags: &'a Flags, env: &str) -> Option<&'a String> {
    match env {
        "SIDECAR_CONTROL_URL" => flags.control_url.as_ref(),
        "SIDECAR_NODE_ID" => flags.node_id.as_ref(),
        "SIDECAR_REGION" => flags.region.as_ref(),
        "SIDECAR_HOST" => flags.host.as_ref(),
        "SIDECAR_PORT" => flags.port.as_ref(),
        "SIDECAR_OPS_LISTEN" => flags.ops_listen.as_ref(),
        "SIDECAR_DATA_DIR" => flags.data_dir.as_ref(),
        "SIDECAR_MAX_BODY_BYTES" => flags.max_body_bytes.as_ref(),
        "SIDECAR_LOG_LEVEL" => flags.log_level.as_ref(),
        "SIDECAR_LOG_FORMAT" => flags.log_format.as_ref(),
        "SIDECAR_WORKERS" => flags.workers.as_ref(),
        "SIDECAR_MAX_CONNECTIONS" => flags.max_connections.as_ref(),
        _ => None,
    }
}

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
        out.insert(key, value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string()));
    }
    Ok(out)
}

impl ProxyConfig {
    /// Resolves the configuration from flags, an environment lookup and the file.
    pub fn resolve(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        let get = |name: &str| -> Option<String> {
            flag_value(flags, name)
                .cloned()
                .or_else(|| env(name).filter(|v| !v.is_empty()))
                .or_else(|| file.get(setting(name).file).cloned())
        };
        let parse_num =
            |name: &str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
                match get(name) {
                    None => Ok(default),
                    Some(raw) => raw.trim().parse::<u64>().ok().filter(|v| (min..=max).contains(v)).ok_or_else(|| {
                        invalid(name, format!("expected a whole number from {min} to {max}, got {raw:?}"))
                    }),
                }
            };

        let control_url = get("SIDECAR_CONTROL_URL").unwrap_or_else(|| "http://127.0.0.1:9290".into());
        match control_url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => {}
            _ => {
                return Err(invalid(
                    "SIDECAR_CONTROL_URL",
                    format!("expected an http(s) URL such as http://127.0.0.1:9290, got {control_url:?}"),
                ));
            }
        }
        let node_token = get("SIDECAR_NODE_TOKEN");
        let node_id = get("SIDECAR_NODE_ID");
        if let Some(id) = &node_id
            && (id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(invalid("SIDECAR_NODE_ID", "expected 1-128 letters, digits, '-', '_' or '.'"));
        }
        let region = get("SIDECAR_REGION").unwrap_or_default();
        if region.len() > 64 || !region.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(invalid("SIDECAR_REGION", "expected up to 64 letters, digits, '-', '_' or '.'"));
        }
        let host = get("SIDECAR_HOST").unwrap_or_else(|| "127.0.0.1".into());
        let port = parse_num("SIDECAR_PORT", 9190, 0, 65535)?;
        let listen: SocketAddr =
            format!("{host}:{port}").parse().or_else(|_| format!("[{host}]:{port}").parse()).map_err(|_| {
                invalid("SIDECAR_HOST", format!("expected an IP address such as 127.0.0.1 or 0.0.0.0, got {host:?}"))
            })?;
        let ops_raw = get("SIDECAR_OPS_LISTEN").unwrap_or_else(|| "127.0.0.1:9191".into());
        let ops_listen: SocketAddr = ops_raw.parse().map_err(|_| {
            invalid("SIDECAR_OPS_LISTEN", format!("expected host:port such as 127.0.0.1:9191, got {ops_raw:?}"))
        })?;
        let data_dir = PathBuf::from(get("SIDECAR_DATA_DIR").unwrap_or_else(|| "./data/proxy".into()));
        let cache_key = match get("SIDECAR_CACHE_KEY") {
            None => None,
            Some(raw) => {
                let bytes = hex::decode(raw.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
                Some(bytes.ok_or_else(|| {
                    invalid(
                        "SIDECAR_CACHE_KEY",
                        "expected 64 hex characters (32 bytes), e.g. from `sidecar-control gen-key`",
                    )
                })?)
            }
        };
        let max_body_bytes = parse_num("SIDECAR_MAX_BODY_BYTES", 10 * 1024 * 1024, 1024, 1024 * 1024 * 1024)? as usize;
        let log_level = get("SIDECAR_LOG_LEVEL").unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(invalid(
                "SIDECAR_LOG_LEVEL",
                format!("expected a level (error, warn, info, debug, trace) or a filter directive, got {log_level:?}"),
            ));
        }
        let log_format = match get("SIDECAR_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid("SIDECAR_LOG_FORMAT", format!("expected text or json, got {other:?}")));
            }
        };
        let rate_window = Duration::from_millis(parse_num("SIDECAR_RATE_WINDOW_MS", 60_000, 100, 3_600_000)?);
        let shutdown_grace = Duration::from_secs(parse_num("SIDECAR_SHUTDOWN_GRACE", 30, 0, 3600)?);
        let outbox_capacity = parse_num("SIDECAR_OUTBOX_BATCHES", 3600, 1, 1_000_000)? as usize;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = parse_num("SIDECAR_WORKERS", cpus as u64, 1, 1024)? as usize;
        let header_timeout = Duration::from_secs(parse_num("SIDECAR_HEADER_TIMEOUT", 60, 1, 3600)?);
        let body_timeout = Duration::from_secs(parse_num("SIDECAR_BODY_TIMEOUT", 30, 1, 3600)?);
        let max_connections =
            parse_num("SIDECAR_MAX_CONNECTIONS", default_max_connections(open_file_limit()) as u64, 1, 10_000_000)?
                as usize;
        let path = |env: &str| get(env).map(PathBuf::from);
        let control_ca = path("SIDECAR_CONTROL_CA");
        // A certificate and its key come together.
        let pair = |cert: &str, key: &str| match (path(cert), path(key)) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(invalid(key, format!("missing: {cert} needs its key"))),
            (None, Some(_)) => Err(invalid(cert, format!("missing: {key} needs its certificate"))),
        };
        let control_client_cert = pair("SIDECAR_TLS_CLIENT_CERT", "SIDECAR_TLS_CLIENT_KEY")?;
        if (control_ca.is_some() || control_client_cert.is_some()) && !control_url.starts_with("https://") {
            let env = if control_ca.is_some() { "SIDECAR_CONTROL_CA" } else { "SIDECAR_TLS_CLIENT_CERT" };
            return Err(invalid(
                env,
                format!(
                    "is TLS, but SIDECAR_CONTROL_URL {control_url:?} is not https://; use the https:// URL of the control plane"
                ),
            ));
        }
        let api_tls = pair("SIDECAR_TLS_CERT", "SIDECAR_TLS_KEY")?;
        Ok(Self {
            upstream_ca: path("SIDECAR_UPSTREAM_CA"),
            api_tls,
            control_ca,
            control_client_cert,
            control_url,
            node_token,
            node_id,
            region,
            listen,
            ops_listen,
            data_dir,
            cache_key,
            max_body_bytes,
            log_level,
            log_format,
            rate_window,
            shutdown_grace,
            outbox_capacity,
            workers,
            header_timeout,
            body_timeout,
            max_connections,
        })
    }
}

/// File descriptors kept back from client connections: upstream connections idle in the
/// pools, the control-plane stream, the snapshot cache and outbox files, the ops port
/// and its scrapers, logs.
const FD_RESERVE: u64 = 256;

/// The default connection cap for an open-file limit: every client connection may hold
/// one upstream connection while its request is in flight, so half of what is left
/// after the reserve.
pub fn default_max_connections(open_files: u64) -> usize {
    (open_files.saturating_sub(FD_RESERVE) / 2).max(16) as usize
}

/// The process's open-file limit (soft); a conventional 1024 where it cannot be read.
pub fn open_file_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Raises the open-file limit (soft) to the hard limit, as most servers do at start: the
/// distribution default of 1024 is far below what a proxy needs. Called by the binary
/// before its configuration is resolved, so the default connection cap follows it.
pub fn raise_open_file_limit() {
    if let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE)
        && soft < hard
    {
        let _ = rlimit::increase_nofile_limit(hard);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(env: &[(&str, &str)]) -> Result<ProxyConfig, ConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ProxyConfig::resolve(&Flags::default(), &move |n| env.get(n).cloned())
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9190");
        assert_eq!(c.ops_listen.to_string(), "127.0.0.1:9191");
        assert_eq!(c.control_url, "http://127.0.0.1:9290");
        assert_eq!(c.rate_window, Duration::from_secs(60));
        assert_eq!(c.header_timeout, Duration::from_secs(60));
        assert_eq!(c.body_timeout, Duration::from_secs(30));
        assert_eq!(c.max_connections, default_max_connections(open_file_limit()));
        assert!(c.cache_key.is_none());
    }

    #[test]
    fn the_default_connection_cap_leaves_descriptors_for_everything_else() {
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(1 << 20), 524_160);
        assert_eq!(default_max_connections(100), 16, "never below a usable floor");
    }

    #[test]
    fn control_link_tls_needs_an_https_url_and_a_key_with_its_certificate() {
        let https = ("SIDECAR_CONTROL_URL", "https://control.internal:9290");
        let c = resolve(&[https, ("SIDECAR_CONTROL_CA", "ca.pem")]).unwrap();
        assert_eq!(c.control_ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        let e = resolve(&[("SIDECAR_CONTROL_CA", "ca.pem")]).unwrap_err();
        assert_eq!(e.setting, "SIDECAR_CONTROL_CA");
        assert!(e.message.contains("https://"), "{e}");
        let e = resolve(&[https, ("SIDECAR_TLS_CLIENT_CERT", "c.pem")]).unwrap_err();
        assert_eq!(e.setting, "SIDECAR_TLS_CLIENT_KEY");
        let c = resolve(&[https, ("SIDECAR_TLS_CLIENT_CERT", "c.pem"), ("SIDECAR_TLS_CLIENT_KEY", "k.pem")]).unwrap();
        assert!(c.control_client_cert.is_some());
    }

    #[test]
    fn v1_host_and_port_names_work() {
        let c = resolve(&[("SIDECAR_HOST", "0.0.0.0"), ("SIDECAR_PORT", "8080")]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (env, value) in [
            ("SIDECAR_PORT", "99999"),
            ("SIDECAR_CONTROL_URL", "grpc://x"),
            ("SIDECAR_CACHE_KEY", "abc"),
            ("SIDECAR_MAX_BODY_BYTES", "ten"),
            ("SIDECAR_LOG_FORMAT", "xml"),
            ("SIDECAR_HOST", "not a host"),
            ("SIDECAR_REGION", "eu west"),
            ("SIDECAR_WORKERS", "0"),
            ("SIDECAR_HEADER_TIMEOUT", "0"),
            ("SIDECAR_BODY_TIMEOUT", "0"),
            ("SIDECAR_MAX_CONNECTIONS", "0"),
        ] {
            let e = resolve(&[(env, value)]).unwrap_err();
            assert!(e.setting.starts_with(env), "{env}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn flags_beat_env() {
        let flags = Flags { port: Some("7000".into()), ..Default::default() };
        let c = ProxyConfig::resolve(&flags, &|n| (n == "SIDECAR_PORT").then(|| "8000".to_string())).unwrap();
        assert_eq!(c.listen.port(), 7000);
    }
}
