//! TLS: the link to the control plane (`https://` with a private CA and a client
//! certificate), and the OpenAI API port served over HTTPS (HTTP/1.1 and h2 via ALPN).

use std::{path::Path, sync::Arc};

use rustls::{
    ServerConfig,
    crypto::ring::default_provider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::{InitError, ProxyConfig};

/// Reads a PEM file for the control-plane link, checking it holds what it should.
pub(crate) fn pem_file(
    setting: &'static str,
    path: &std::path::Path,
    certificates: bool,
) -> Result<Vec<u8>, InitError> {
    let fail = |reason: String| InitError::Tls { setting, path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let usable = if certificates {
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
        !certs.map_err(|e| fail(format!("not a PEM certificate file: {e}")))?.is_empty()
    } else {
        PrivateKeyDer::from_pem_slice(&bytes).is_ok()
    };
    if !usable {
        return Err(fail(if certificates { "holds no PEM certificate" } else { "holds no PEM private key" }.into()));
    }
    Ok(bytes)
}

/// TLS for an `https://` control URL: the bundled public roots plus `SIDECAR_CONTROL_CA`,
/// and the client certificate if one is configured.
pub(crate) fn control(config: &ProxyConfig) -> Result<Option<ClientTlsConfig>, InitError> {
    if !config.control_urls.iter().any(|u| u.starts_with("https://")) {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new().with_webpki_roots();
    if let Some(ca) = &config.control_ca {
        tls = tls.ca_certificate(Certificate::from_pem(pem_file("SIDECAR_CONTROL_CA", ca, true)?));
    }
    if let Some((cert, key)) = &config.control_client_cert {
        let cert = pem_file("SIDECAR_TLS_CLIENT_CERT", cert, true)?;
        let key = pem_file("SIDECAR_TLS_CLIENT_KEY", key, false)?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Some(tls))
}

/// The certificates of a PEM file.
pub(crate) fn certificates(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, InitError> {
    CertificateDer::pem_slice_iter(&pem_file(setting, path, true)?).collect::<Result<Vec<_>, _>>().map_err(|e| {
        InitError::Tls { setting, path: path.display().to_string(), reason: format!("not a PEM certificate file: {e}") }
    })
}

/// The API port's TLS acceptor, from `SIDECAR_TLS_CERT` and `SIDECAR_TLS_KEY`.
pub(crate) fn api_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, InitError> {
    let fail = |setting: &'static str, path: &Path, reason: String| InitError::Tls {
        setting,
        path: path.display().to_string(),
        reason,
    };
    let certs = certificates("SIDECAR_TLS_CERT", cert)?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem_file("SIDECAR_TLS_KEY", key, false)?)
        .map_err(|e| fail("SIDECAR_TLS_KEY", key, format!("no usable PEM private key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("SIDECAR_TLS_CERT", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| fail("SIDECAR_TLS_KEY", key, format!("cannot be used with the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
