//! The gRPC clients for the control plane's node service, shared by the Sync stream and
//! the usage reporter: one lazily connected channel per control URL (TLS when the URLs are
//! `https://`, HTTP/2 keep-alive) with the node token on every call. With several URLs
//! (instances of one control plane) the node stays on one while it works and moves to the
//! next when a call to it fails; the callers' backoff paces the moves.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sidecar_proto::v1::node_service_client::NodeServiceClient;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use super::auth::Bearer;
use crate::{InitError, ProxyConfig};

/// A node client of one control URL.
pub type NodeClient = NodeServiceClient<InterceptedService<Channel, Bearer>>;

/// The node clients of every control URL, and which one is in use.
#[derive(Clone)]
pub struct ControlClients {
    clients: Arc<[(String, NodeClient)]>,
    current: Arc<AtomicUsize>,
}

impl ControlClients {
    /// The client in use, with its index (to report its failure).
    pub fn current(&self) -> (usize, NodeClient) {
        let i = self.current.load(Ordering::Acquire) % self.clients.len();
        (i, self.clients[i].1.clone())
    }

    /// The URL of client `i`.
    pub fn url(&self, i: usize) -> &str {
        &self.clients[i % self.clients.len()].0
    }

    /// A call through client `i` failed: the next URL is used from now on (unless another
    /// caller moved on already).
    pub fn failed(&self, i: usize) {
        let next = (i + 1) % self.clients.len();
        let _ = self.current.compare_exchange(i, next, Ordering::AcqRel, Ordering::Acquire);
    }

    /// How many control URLs there are.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Never: there is at least one URL.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Clients for `config.control_urls`; they connect on first use, so a control plane that
/// is down does not stop the proxy from starting.
pub fn connect(config: &ProxyConfig) -> Result<ControlClients, InitError> {
    let tls = crate::tls::control(config)?;
    let mut clients = Vec::with_capacity(config.control_urls.len());
    for url in &config.control_urls {
        let mut endpoint = Channel::from_shared(url.clone()).map_err(|e| InitError::ControlUrl(e.to_string()))?;
        if let Some(tls) = tls.clone() {
            endpoint = endpoint.tls_config(tls).map_err(|e| InitError::ControlUrl(e.to_string()))?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        clients.push((
            url.clone(),
            NodeServiceClient::with_interceptor(channel, Bearer::new(config.node_token.as_deref())),
        ));
    }
    if clients.is_empty() {
        return Err(InitError::ControlUrl("no control URL".into()));
    }
    Ok(ControlClients { clients: clients.into(), current: Arc::new(AtomicUsize::new(0)) })
}
