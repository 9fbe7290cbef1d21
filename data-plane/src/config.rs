//! `sidecar-proxy` configuration: flags, then environment variables, then an optional
//! TOML file (`--config`), then defaults. An invalid value is reported in one line that
//! names the setting.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use sidecar_settings::ConfigError;
use sidecar_settings::Layered;

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
    /// Control plane gRPC URLs, in order of preference (several instances of one control
    /// plane): the node stays on one while it works and moves to the next on failure.
    pub control_urls: Vec<String>,
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
    /// Serve requests that present no client key (SIDECAR_ALLOW_ANONYMOUS; by default
    /// only on a loopback-only API listener).
    pub allow_anonymous: bool,
    /// OpenTelemetry collector (OTLP/HTTP) to export traces to; `None` = no traces.
    pub otlp_endpoint: Option<String>,
}

sidecar_settings::settings! {
    /// Flags of `sidecar-proxy` (everything but secrets).
    pub struct Flags {
        /// TOML file with any of the settings (keys in snake_case, e.g. control_url).
        config
    }
    control_url = "SIDECAR_CONTROL_URL", flag "URL": "Control plane URL", default "http://127.0.0.1:9290";
    node_token = "SIDECAR_NODE_TOKEN": "Node token";
    node_id = "SIDECAR_NODE_ID", flag "ID": "Node id", computed "generated once, kept in the data dir";
    region = "SIDECAR_REGION", flag "REGION": "Region";
    host = "SIDECAR_HOST", flag "HOST": "API host", default "127.0.0.1";
    port = "SIDECAR_PORT", flag "PORT": "API port", default "9190";
    ops_listen = "SIDECAR_OPS_LISTEN", flag "ADDR": "Ops listen address", default "127.0.0.1:9191";
    data_dir = "SIDECAR_DATA_DIR", flag "DIR": "Data directory", default "./data/proxy";
    cache_key = "SIDECAR_CACHE_KEY": "64 hex characters sealing the on-disk snapshot cache";
    max_body_bytes = "SIDECAR_MAX_BODY_BYTES", flag "BYTES": "Request body limit in bytes", default "10485760";
    log_level = "SIDECAR_LOG_LEVEL", flag "LEVEL": "Log filter", default "info";
    log_format = "SIDECAR_LOG_FORMAT", flag "FORMAT": "text or json", default "text";
    rate_window_ms = "SIDECAR_RATE_WINDOW_MS": "Rate-limit window, milliseconds", default "60000";
    shutdown_grace = "SIDECAR_SHUTDOWN_GRACE": "How long shutdown waits for requests, seconds", default "30";
    outbox_batches = "SIDECAR_OUTBOX_BATCHES": "Usage batches kept while the control plane is away", default "3600";
    workers = "SIDECAR_WORKERS", flag "N": "API worker threads", computed "one per CPU";
    header_timeout = "SIDECAR_HEADER_TIMEOUT": "Longest wait for a request's headers, seconds", default "60";
    body_timeout = "SIDECAR_BODY_TIMEOUT": "Longest wait for a request body, seconds", default "30";
    max_connections = "SIDECAR_MAX_CONNECTIONS", flag "N": "Open client connections allowed on the API port",
        computed "from the open-file limit";
    control_ca = "SIDECAR_CONTROL_CA": "Private CA (PEM) trusted for an https:// control URL";
    tls_client_cert = "SIDECAR_TLS_CLIENT_CERT": "Client certificate (PEM) for the control plane (mTLS)";
    tls_client_key = "SIDECAR_TLS_CLIENT_KEY": "Its private key (PEM)";
    tls_cert = "SIDECAR_TLS_CERT": "Certificate (PEM) to serve the API over HTTPS";
    tls_key = "SIDECAR_TLS_KEY": "Its private key (PEM)";
    upstream_ca = "SIDECAR_UPSTREAM_CA": "CA certificates (PEM) trusted for providers";
    allow_anonymous = "SIDECAR_ALLOW_ANONYMOUS": "Serve requests without a client key (true or false)",
        computed "true on a loopback-only API listener, else false";
    otlp_endpoint = "SIDECAR_OTLP_ENDPOINT":
        "OpenTelemetry collector (OTLP/HTTP) to export traces to, e.g. http://otel-collector:4318 (unset: no traces)";
}

impl ProxyConfig {
    /// Resolves the configuration from flags, an environment lookup and the file.
    pub fn resolve(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let src = Layered::new(flags, env)?;
        let whole = |min: u64, max: u64| move |s: &str| s.parse::<u64>().ok().filter(|v| (min..=max).contains(v));
        let num =
            |name: &str, min, max| src.parse(name, &format!("a whole number from {min} to {max}"), whole(min, max));
        let opt_num =
            |name: &str, min, max| src.parse_opt(name, &format!("a whole number from {min} to {max}"), whole(min, max));

        let control_url = src.text("SIDECAR_CONTROL_URL")?;
        let control_urls: Vec<String> =
            control_url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        for url in control_urls.iter().chain(control_urls.is_empty().then_some(&control_url)) {
            match url.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => {}
                _ => {
                    return Err(src.invalid(
                        "SIDECAR_CONTROL_URL",
                        format!(
                            "expected an http(s) URL such as http://127.0.0.1:9290 (or several, comma-separated), got {url:?}"
                        ),
                    ));
                }
            }
        }
        let https = control_urls.iter().filter(|u| u.starts_with("https://")).count();
        if https != 0 && https != control_urls.len() {
            return Err(src.invalid("SIDECAR_CONTROL_URL", "mixes https:// and http:// URLs; use one scheme for all"));
        }
        let node_token = src.value("SIDECAR_NODE_TOKEN");
        let node_id = src.value("SIDECAR_NODE_ID");
        if let Some(id) = &node_id
            && (id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(src.invalid("SIDECAR_NODE_ID", "expected 1-128 letters, digits, '-', '_' or '.'"));
        }
        let region = src.value("SIDECAR_REGION").unwrap_or_default();
        if region.len() > 64 || !region.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(src.invalid("SIDECAR_REGION", "expected up to 64 letters, digits, '-', '_' or '.'"));
        }
        let host = src.text("SIDECAR_HOST")?;
        let port = num("SIDECAR_PORT", 0, 65535)?;
        let listen: SocketAddr =
            format!("{host}:{port}").parse().or_else(|_| format!("[{host}]:{port}").parse()).map_err(|_| {
                src.invalid(
                    "SIDECAR_HOST",
                    format!("expected an IP address such as 127.0.0.1 or 0.0.0.0, got {host:?}"),
                )
            })?;
        let ops_listen = src.parse("SIDECAR_OPS_LISTEN", "host:port such as 127.0.0.1:9191", |s| s.parse().ok())?;
        let data_dir = PathBuf::from(src.text("SIDECAR_DATA_DIR")?);
        let cache_key = match src.value("SIDECAR_CACHE_KEY") {
            None => None,
            Some(raw) => {
                let bytes = hex::decode(raw.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
                Some(bytes.ok_or_else(|| {
                    src.invalid(
                        "SIDECAR_CACHE_KEY",
                        "expected 64 hex characters (32 bytes), e.g. from `sidecar-control gen-key`",
                    )
                })?)
            }
        };
        let max_body_bytes = num("SIDECAR_MAX_BODY_BYTES", 1024, 1024 * 1024 * 1024)? as usize;
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
        let rate_window = Duration::from_millis(num("SIDECAR_RATE_WINDOW_MS", 100, 3_600_000)?);
        let shutdown_grace = Duration::from_secs(num("SIDECAR_SHUTDOWN_GRACE", 0, 3600)?);
        let outbox_capacity = num("SIDECAR_OUTBOX_BATCHES", 1, 1_000_000)? as usize;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = opt_num("SIDECAR_WORKERS", 1, 1024)?.map_or(cpus, |n| n as usize);
        let header_timeout = Duration::from_secs(num("SIDECAR_HEADER_TIMEOUT", 1, 3600)?);
        let body_timeout = Duration::from_secs(num("SIDECAR_BODY_TIMEOUT", 1, 3600)?);
        let max_connections = opt_num("SIDECAR_MAX_CONNECTIONS", 1, 10_000_000)?
            .map_or_else(|| default_max_connections(open_file_limit()), |n| n as usize);
        let path = |env: &str| src.value(env).map(PathBuf::from);
        let control_ca = path("SIDECAR_CONTROL_CA");
        // A certificate and its key come together.
        let pair = |cert: &str, key: &str| match (path(cert), path(key)) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(src.invalid(key, format!("missing: {cert} needs its key"))),
            (None, Some(_)) => Err(src.invalid(cert, format!("missing: {key} needs its certificate"))),
        };
        let control_client_cert = pair("SIDECAR_TLS_CLIENT_CERT", "SIDECAR_TLS_CLIENT_KEY")?;
        if (control_ca.is_some() || control_client_cert.is_some()) && https == 0 {
            let env = if control_ca.is_some() { "SIDECAR_CONTROL_CA" } else { "SIDECAR_TLS_CLIENT_CERT" };
            return Err(src.invalid(
                env,
                format!(
                    "is TLS, but SIDECAR_CONTROL_URL {control_url:?} is not https://; use the https:// URL of the control plane"
                ),
            ));
        }
        let api_tls = pair("SIDECAR_TLS_CERT", "SIDECAR_TLS_KEY")?;
        let allow_anonymous = src
            .parse_opt("SIDECAR_ALLOW_ANONYMOUS", "true or false", |s| match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                _ => None,
            })?
            .unwrap_or(listen.ip().is_loopback());
        let otlp_endpoint = sidecar_otel::endpoint_setting(src.value("SIDECAR_OTLP_ENDPOINT").as_deref())
            .map_err(|why| src.invalid("SIDECAR_OTLP_ENDPOINT", why))?;
        Ok(Self {
            otlp_endpoint,
            allow_anonymous,
            upstream_ca: path("SIDECAR_UPSTREAM_CA"),
            api_tls,
            control_ca,
            control_client_cert,
            control_urls,
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
        assert_eq!(c.control_urls, ["http://127.0.0.1:9290"]);
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

    /// The proxy's loader once differed from the control plane's: it did not trim values,
    /// so a stray space (common in env files and TOML) refused a valid one.
    #[test]
    fn values_are_trimmed_as_in_the_control_plane() {
        let c = resolve(&[("SIDECAR_LOG_FORMAT", " json "), ("SIDECAR_OPS_LISTEN", " 127.0.0.1:9999 ")]).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.ops_listen.to_string(), "127.0.0.1:9999");
    }

    #[test]
    fn anonymous_use_is_allowed_by_default_only_on_a_loopback_listener() {
        assert!(resolve(&[]).unwrap().allow_anonymous, "127.0.0.1, as scripts/start.sh runs it");
        assert!(resolve(&[("SIDECAR_HOST", "::1")]).unwrap().allow_anonymous);
        assert!(!resolve(&[("SIDECAR_HOST", "0.0.0.0")]).unwrap().allow_anonymous);
        assert!(!resolve(&[("SIDECAR_HOST", "10.1.2.3")]).unwrap().allow_anonymous);
        assert!(resolve(&[("SIDECAR_HOST", "0.0.0.0"), ("SIDECAR_ALLOW_ANONYMOUS", "true")]).unwrap().allow_anonymous);
        assert!(!resolve(&[("SIDECAR_ALLOW_ANONYMOUS", "false")]).unwrap().allow_anonymous);
        let e = resolve(&[("SIDECAR_ALLOW_ANONYMOUS", "maybe")]).unwrap_err();
        assert!(e.setting.starts_with("SIDECAR_ALLOW_ANONYMOUS"), "{e}");
    }

    #[test]
    fn flags_beat_env() {
        let flags = Flags { port: Some("7000".into()), ..Default::default() };
        let c = ProxyConfig::resolve(&flags, &|n| (n == "SIDECAR_PORT").then(|| "8000".to_string())).unwrap();
        assert_eq!(c.listen.port(), 7000);
    }
}
