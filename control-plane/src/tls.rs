//! TLS for the API port (rustls, ring): gRPC, gRPC-web and the console over one port.
//!
//! The certificate and key are re-read when their files change (checked every two
//! seconds) or on SIGHUP, without dropping connections: new handshakes get the new
//! certificate, open node streams carry on. With a client CA, a client certificate
//! signed by it is verified during the handshake (optional there, so admin clients may
//! still come with a bearer token only); NodeService then requires one and takes the
//! node's identity from it: the first SAN DNS name, or else the subject's CN.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::ring::{default_provider, sign::any_supported_type},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

/// TLS handshakes the API port runs at once.
const MAX_HANDSHAKES: usize = 1024;

/// Where the API port's certificate, key and (for mTLS) client CA live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign node client certificates.
    pub client_ca: Option<PathBuf>,
}

/// A certificate or key that cannot be used, naming the file and why.
#[derive(Debug, thiserror::Error)]
#[error("{setting} ({path}): {reason}")]
pub struct TlsError {
    /// The setting that names the file.
    pub setting: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

fn error(setting: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError { setting, path: path.display().to_string(), reason: reason.into() }
}

/// Reads PEM certificates from `path`; at least one.
pub fn read_certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(setting, path, format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(setting, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(error(setting, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Reads the certificate chain and its key into something rustls can serve.
fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs("SIDECAR_TLS_CERT", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| error("SIDECAR_TLS_KEY", &files.key, format!("no usable PEM private key: {e}")))?;
    let key = any_supported_type(&key)
        .map_err(|e| error("SIDECAR_TLS_KEY", &files.key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(certs, key);
    certified
        .keys_match()
        .map_err(|e| error("SIDECAR_TLS_KEY", &files.key, format!("does not match the certificate: {e}")))?;
    Ok(certified)
}

/// Serves the current certificate; replaced whole on reload.
#[derive(Debug)]
struct Reloading {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The API port's TLS: the acceptor, and what keeps its certificate current.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    certs: Arc<Reloading>,
    files: TlsFiles,
    /// Whether NodeService requires a client certificate.
    pub client_auth: bool,
}

impl ServerTls {
    /// Loads the files and builds the server config (TLS 1.2 and 1.3, ALPN h2 and
    /// http/1.1 for gRPC-web and the console).
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let certs = Arc::new(Reloading { current: ArcSwap::from_pointee(certified_key(&files)?) });
        let provider = Arc::new(default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("SIDECAR_TLS_CERT", &files.cert, e.to_string()))?;
        let builder = match &files.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("SIDECAR_TLS_CLIENT_CA", path)? {
                    roots.add(cert).map_err(|e| {
                        error("SIDECAR_TLS_CLIENT_CA", path, format!("not a usable CA certificate: {e}"))
                    })?;
                }
                // Verified when presented; required by NodeService, not by the admin API.
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| error("SIDECAR_TLS_CLIENT_CA", path, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client_auth = files.client_ca.is_some();
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(config)), certs, files, client_auth })
    }

    /// Re-reads the certificate and key; on failure the current ones stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = certified_key(&self.files)?;
        self.certs.current.store(Arc::new(certified));
        Ok(())
    }

    /// Accepts TCP connections on `listener` and completes TLS handshakes off the accept
    /// loop (10 s each at most). Ends when `shutdown` turns true.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = mpsc::channel(64);
        // Handshakes in progress at once: a flood of connections that never finish one
        // is closed at once past this, instead of holding a task each for 10 s.
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(error = %e, "accepting API connections failed; retrying in 100 ms");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = stopped(&mut shutdown) => return,
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    debug!(%peer, "too many TLS handshakes in progress; closing the connection");
                    continue;
                };
                let acceptor = self.acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        // A plaintext client, a wrong CA, a scanner: the client sees the
                        // failure; here it is noise unless debugging.
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }

    /// Reloads the certificate when its files change or on SIGHUP, until shutdown.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let stamp = |files: &TlsFiles| -> Option<(SystemTime, SystemTime)> {
            let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            Some((m(&files.cert)?, m(&files.key)?))
        };
        let last = Mutex::new(stamp(&self.files));
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let reason = tokio::select! {
                _ = tick.tick() => {
                    let now = stamp(&self.files);
                    let mut last = last.lock().expect("stamp lock");
                    if now.is_none() || now == *last {
                        continue;
                    }
                    *last = now;
                    "the files changed"
                }
                _ = hangup => "SIGHUP",
                _ = stopped(&mut shutdown) => return,
            };
            match self.reload() {
                Ok(()) => info!(reason, cert = %self.files.cert.display(), "TLS certificate reloaded"),
                Err(e) => warn!(reason, error = %e, "TLS certificate not reloaded; the previous one stays in use"),
            }
        }
    }
}

/// Resolves once shutdown is asked for (holding no borrow of the watch across awaits).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// The node id a client certificate names: its first SAN DNS name that is a valid node
/// id, else its subject CN.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let valid = |s: &str| crate::validate::node_id("", s).is_ok();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name
                && valid(dns)
            {
                return Some((*dns).to_owned());
            }
        }
    }
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    valid(cn).then(|| cn.to_owned())
}
