//! The gRPC client for the control plane's node service, shared by the Sync stream and
//! the usage reporter: one lazily connected channel (TLS when the URL is `https://`,
//! HTTP/2 keep-alive) with the node token on every call.

use std::time::Duration;

use sidecar_proto::v1::node_service_client::NodeServiceClient;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use super::auth::Bearer;
use crate::{InitError, ProxyConfig};

/// The node client used for the Sync stream and for reports.
pub type NodeClient = NodeServiceClient<InterceptedService<Channel, Bearer>>;

/// A client for `config.control_url`; it connects on first use, so a control plane that
/// is down does not stop the proxy from starting.
pub fn connect(config: &ProxyConfig) -> Result<NodeClient, InitError> {
    let mut endpoint =
        Channel::from_shared(config.control_url.clone()).map_err(|e| InitError::ControlUrl(e.to_string()))?;
    if let Some(tls) = crate::tls::control(config)? {
        endpoint = endpoint.tls_config(tls).map_err(|e| InitError::ControlUrl(e.to_string()))?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(NodeServiceClient::with_interceptor(channel, Bearer::new(config.node_token.as_deref())))
}
