//! The control plane in-process on port 0, with tokens and clients for tests.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use sidecar_control_plane::{ControlConfig, ControlPlane, Flags, ServeError, crypto::MasterKey};
use sidecar_proto::v1::{admin_service_client::AdminServiceClient, node_service_client::NodeServiceClient};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

/// An AdminService client for the control plane at `url` with `token`.
pub async fn admin_client(url: &str, token: &str) -> AdminClient {
    let channel = Channel::from_shared(url.to_owned()).expect("a URL").connect().await.expect("control plane answers");
    AdminServiceClient::with_interceptor(channel, Bearer(Some(format!("Bearer {token}").parse().expect("ASCII token"))))
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// An admin client with a token.
pub type AdminClient = AdminServiceClient<InterceptedService<Channel, Bearer>>;
/// A node client with a token.
pub type NodeClient = NodeServiceClient<InterceptedService<Channel, Bearer>>;

/// How to start a control plane.
#[derive(Clone)]
pub struct Options {
    /// Data directory; a fresh temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// Encryption key (hex); a fresh one when `None`.
    pub key_hex: Option<String>,
    /// Admin token to seed; `None` lets the control plane generate one.
    pub admin_token: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// API address; port 0 when `None`. A restart passes the old address so that
    /// proxies find the control plane again.
    pub listen: Option<SocketAddr>,
    /// Serve the API over TLS with this certificate; the harness's own clients trust
    /// `ca_pem` (and present `client`, if given).
    pub tls: Option<HarnessTls>,
}

/// TLS for a harness control plane.
#[derive(Clone)]
pub struct HarnessTls {
    /// Server certificate and key.
    pub server: crate::pki::Issued,
    /// The CA that signed it, PEM.
    pub ca_pem: String,
    /// Require client certificates from this CA for NodeService (mTLS).
    pub client_ca: Option<PathBuf>,
    /// The certificate the harness's clients present.
    pub client: Option<crate::pki::Issued>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            data_dir: None,
            key_hex: None,
            admin_token: Some("admin-token-0123456789abcdef".into()),
            env: Vec::new(),
            listen: None,
            tls: None,
        }
    }
}

/// A running in-process control plane.
pub struct ControlPlaneHarness {
    /// gRPC / gRPC-web address.
    pub addr: SocketAddr,
    /// Ops address.
    pub ops_addr: SocketAddr,
    /// An admin token.
    pub admin_token: String,
    /// A node token.
    pub node_token: String,
    /// The encryption key in use (hex).
    pub key_hex: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Keeps a temporary data directory alive.
    pub temp: Option<Arc<tempfile::TempDir>>,
    /// TLS in use, if any.
    pub tls: Option<HarnessTls>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl ControlPlaneHarness {
    /// Starts a control plane on a fresh data directory.
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Starts a control plane with `options`; panics with the error if it cannot start.
    pub async fn start_with(options: Options) -> Self {
        Self::try_start(options).await.unwrap_or_else(|e| panic!("control plane did not start: {e}"))
    }

    /// Starts a control plane with `options`.
    pub async fn try_start(options: Options) -> anyhow::Result<Self> {
        let (data_dir, temp) = match options.data_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(Arc::new(t)))
            }
        };
        let key_hex = options.key_hex.unwrap_or_else(MasterKey::generate_hex);
        let node_token = "node-token-0123456789abcdef".to_string();
        let mut env: Vec<(String, String)> = vec![
            ("SIDECAR_ENCRYPTION_KEY".into(), key_hex.clone()),
            ("SIDECAR_NODE_TOKEN".into(), node_token.clone()),
            ("SIDECAR_DATA_DIR".into(), data_dir.display().to_string()),
        ];
        if let Some(t) = &options.admin_token {
            env.push(("SIDECAR_ADMIN_TOKEN".into(), t.clone()));
        }
        if let Some(tls) = &options.tls {
            env.push(("SIDECAR_TLS_CERT".into(), tls.server.cert.display().to_string()));
            env.push(("SIDECAR_TLS_KEY".into(), tls.server.key.display().to_string()));
            if let Some(ca) = &tls.client_ca {
                env.push(("SIDECAR_TLS_CLIENT_CA".into(), ca.display().to_string()));
            }
        }
        env.extend(options.env);
        let lookup = move |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let config = ControlConfig::resolve(&Flags::default(), &lookup)?;
        let cp = ControlPlane::open(&config)?;
        let admin_token = match (options.admin_token, cp.generated_admin_token()) {
            (Some(t), _) => t,
            (None, Some(t)) => t.to_owned(),
            (None, None) => String::new(),
        };
        let api = bind_retrying(options.listen.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())).await?;
        let ops = TcpListener::bind("127.0.0.1:0").await?;
        let (addr, ops_addr) = (api.local_addr()?, ops.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cp.serve(api, ops, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            ops_addr,
            admin_token,
            node_token,
            key_hex,
            data_dir,
            temp,
            tls: options.tls,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://addr`, or `https://localhost:port` with TLS.
    pub fn url(&self) -> String {
        match &self.tls {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// Options that restart on the same data directory with the same key and tokens.
    pub fn restart_options(&self) -> Options {
        Options {
            data_dir: Some(self.data_dir.clone()),
            key_hex: Some(self.key_hex.clone()),
            admin_token: Some(self.admin_token.clone()),
            env: Vec::new(),
            listen: Some(self.addr),
            tls: self.tls.clone(),
        }
    }

    /// Stops gracefully and waits until the store is flushed and closed.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("control plane task").expect("control plane stopped cleanly");
        }
    }

    /// A channel to the API (trusting the harness CA, with its client certificate).
    pub async fn channel(&self) -> Channel {
        self.try_channel(self.tls.as_ref().and_then(|t| t.client.as_ref())).await.expect("connect to control plane")
    }

    /// A channel presenting `client` (with TLS), or the error connecting gave.
    pub async fn try_channel(&self, client: Option<&crate::pki::Issued>) -> Result<Channel, tonic::transport::Error> {
        let mut endpoint = Channel::from_shared(self.url()).unwrap();
        if let Some(tls) = &self.tls {
            let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some(c) = client {
                config = config.identity(Identity::from_pem(c.cert_pem(), c.key_pem()));
            }
            endpoint = endpoint.tls_config(config)?;
        }
        endpoint.connect().await
    }

    /// An AdminService client with `token` (`None`: no token at all).
    pub async fn admin_as(&self, token: Option<&str>) -> AdminClient {
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()));
        AdminServiceClient::with_interceptor(self.channel().await, bearer)
    }

    /// An AdminService client with the admin token.
    pub async fn admin(&self) -> AdminClient {
        self.admin_as(Some(&self.admin_token.clone())).await
    }

    /// A NodeService client with `token`.
    pub async fn node_as(&self, token: Option<&str>) -> NodeClient {
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()));
        NodeServiceClient::with_interceptor(self.channel().await, bearer)
    }

    /// A NodeService client with the node token.
    pub async fn node(&self) -> NodeClient {
        self.node_as(Some(&self.node_token.clone())).await
    }
}

/// Binds `addr`, retrying briefly: a restarted control plane rebinds the port its
/// predecessor just released.
async fn bind_retrying(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if tries < 50 && e.kind() == std::io::ErrorKind::AddrInUse => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Drop for ControlPlaneHarness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
