//! The AdminService connection: bearer-token interceptor, connect, and turning gRPC and
//! transport failures into one-line messages an operator can act on.

use std::{fmt, time::Duration};

use sidecar_proto::v1::admin_service_client::AdminServiceClient;
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// Largest message either way; export documents hold every backend.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// An AdminService client that sends the bearer token on every call.
pub(crate) type Admin = AdminServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub(crate) struct BearerAuth(MetadataValue<Ascii>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A mistake in how the command was called, reported like clap's own (exit code 2).
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The control plane could not be reached at all.
#[derive(Debug)]
struct Unreachable {
    url: String,
    detail: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot reach the control plane at {}: {}", self.url, self.detail)
    }
}

impl std::error::Error for Unreachable {}

/// `--server` as a URL: a bare `host:port` means plain-text gRPC over http. Several
/// instances of one control plane are comma-separated: each is made a URL.
pub(crate) fn server_url(server: &str) -> String {
    server
        .split(',')
        .map(|s| s.trim().trim_end_matches('/'))
        .filter(|s| !s.is_empty())
        .map(|s| if s.contains("://") { s.to_owned() } else { format!("http://{s}") })
        .collect::<Vec<_>>()
        .join(",")
}

/// TLS files for an https:// server.
#[derive(Debug, Default)]
pub(crate) struct TlsFiles {
    /// Private CA to trust.
    pub(crate) ca: Option<std::path::PathBuf>,
    /// Client certificate.
    pub(crate) cert: Option<std::path::PathBuf>,
    /// Its key.
    pub(crate) key: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// The client TLS config for `url`: none for http://.
    fn config(&self, url: &str) -> anyhow::Result<Option<ClientTlsConfig>> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Usage(format!("--{flag} {}: cannot read it: {e}", path.display())))
        };
        if !url.starts_with("https://") {
            if self.ca.is_some() || self.cert.is_some() {
                return Err(
                    Usage(format!("--ca and --cert are for TLS, but the server URL {url} is not https://")).into()
                );
            }
            return Ok(None);
        }
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read("ca", ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?)),
            (None, None) => {}
            _ => return Err(Usage("--cert and --key go together".into()).into()),
        }
        Ok(Some(tls))
    }
}

/// Connects to the control plane at `server` with `token`.
pub(crate) async fn connect(server: &str, token: Option<&str>, tls: &TlsFiles) -> anyhow::Result<Admin> {
    let token = token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no API token: pass --token or set SIDECAR_TOKEN"))?;
    let mut auth: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow::anyhow!("the token contains characters a token cannot have"))?;
    auth.set_sensitive(true);
    // Several URLs: the first that answers.
    let mut unreachable = Vec::new();
    let mut connected = None;
    for url in server_url(server).split(',') {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("invalid --server URL {url:?}: {}", chain(&e)))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        if let Some(config) = tls.config(url)? {
            endpoint = endpoint.tls_config(config).map_err(|e| anyhow::anyhow!("TLS for {url}: {}", chain(&e)))?;
        }
        match endpoint.connect().await {
            Ok(channel) => {
                connected = Some(channel);
                break;
            }
            Err(e) => unreachable.push(Unreachable { url: url.to_owned(), detail: chain(&e) }),
        }
    }
    let Some(channel) = connected else {
        let last = unreachable.pop().expect("at least one URL was tried");
        let url = if unreachable.is_empty() { last.url } else { server_url(server) };
        return Err(Unreachable { url, detail: last.detail }.into());
    };
    Ok(AdminServiceClient::with_interceptor(channel, BearerAuth(auth))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The one-line message for a failed command (without the `error: ` prefix).
pub(crate) fn describe(error: &anyhow::Error, server: &str) -> String {
    let Some(status) = error.downcast_ref::<Status>() else {
        return format!("{error:#}");
    };
    let message = status.message().trim();
    match status.code() {
        // Tonic reports a connection lost or refused mid-call as UNAVAILABLE.
        Code::Unavailable => format!(
            "cannot reach the control plane at {}: {}",
            server_url(server),
            if message.is_empty() { "unavailable" } else { message }
        ),
        Code::Unauthenticated => {
            format!("unauthenticated: {message} (pass a valid token with --token or SIDECAR_TOKEN)")
        }
        code => format!("{}: {message}", code_words(code)),
    }
}

/// Whether the failure is a usage mistake (exit code 2) rather than a failed call.
pub(crate) fn is_usage(error: &anyhow::Error) -> bool {
    error.downcast_ref::<Usage>().is_some()
}

/// A gRPC status code in words, e.g. "invalid argument".
fn code_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// An error and its causes on one line, without tonic's uninformative outer layers.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if text != "transport error" && !parts.iter().any(|p| p == &text) {
            parts.push(text);
        }
        next = e.source();
    }
    match parts.is_empty() {
        true => error.to_string(),
        false => parts.join(": "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_code_words_and_message() {
        let e = anyhow::Error::from(Status::invalid_argument("backend.rpm_limit: must be at least 1 (got 0)"));
        assert_eq!(describe(&e, "x"), "invalid argument: backend.rpm_limit: must be at least 1 (got 0)");
        let e = anyhow::Error::from(Status::unavailable("tcp connect error"));
        assert_eq!(
            describe(&e, "127.0.0.1:1"),
            "cannot reach the control plane at http://127.0.0.1:1: tcp connect error"
        );
    }

    #[test]
    fn bare_host_port_means_http() {
        assert_eq!(server_url("127.0.0.1:9290"), "http://127.0.0.1:9290");
        assert_eq!(server_url("https://cp.example/"), "https://cp.example");
        assert_eq!(server_url("cp-a:9290, https://cp-b:9290/"), "http://cp-a:9290,https://cp-b:9290");
    }

    #[tokio::test]
    async fn missing_token_says_how_to_give_one() {
        let e = connect("http://127.0.0.1:9", None, &TlsFiles::default()).await.err().unwrap();
        assert!(e.to_string().contains("--token or set SIDECAR_TOKEN"), "{e}");
    }
}
