//! NodeService: config distribution to data-plane proxies (`Sync`, in `sync`) and
//! usage reports (`Report`, in `report`), for node credentials only: a node token, or
//! with mTLS the node id its client certificate names.

mod report;
mod sync;

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use sidecar_proto::v1::{self as pb, node_service_server::NodeService};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::error::ApiError;
use crate::{
    auth::{Access, Principal},
    state::Shared,
    store::Role,
    util::clip,
};

/// The NodeService implementation.
pub struct NodeApi {
    shared: Arc<Shared>,
}

impl NodeApi {
    /// A NodeService over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Who the calling node is. With mTLS (`SIDECAR_TLS_CLIENT_CA`) that is the node its
    /// client certificate names (required; any bearer token is then not needed);
    /// otherwise a node token.
    fn node_principal<T>(&self, request: &Request<T>) -> Result<Principal, ApiError> {
        if !self.shared.node_client_certs {
            let authorization = request.metadata().get("authorization").map(|v| v.as_bytes());
            return Ok(self.shared.auth.check(authorization, Access::Node)?);
        }
        let certs = request.peer_certs().ok_or_else(|| {
            ApiError::Unauthenticated(
                "NodeService needs a client certificate signed by the control plane's SIDECAR_TLS_CLIENT_CA".into(),
            )
        })?;
        let node_id = certs.first().and_then(crate::tls::node_id_of).ok_or_else(|| {
            ApiError::Permission("the client certificate names no node id (a SAN DNS name or the subject CN)".into())
        })?;
        Ok(Principal { token_id: format!("cert:{node_id}"), role: Role::Node, node_id: Some(node_id), region: None })
    }

    /// Refuses a node credential used for another node: logged and audited.
    fn check_node(&self, who: &Principal, call: &str, node_id: &str, region: Option<&str>) -> Result<(), ApiError> {
        let Err(refusal) = who.may_be_node(node_id, region) else {
            return Ok(());
        };
        let message = refusal.to_string();
        warn!(token = %who.token_id, node = %clip(node_id), call, error = %message, "node credential refused");
        let target = format!("{call} as node {}: {message}", clip(node_id));
        if let Err(error) = self.shared.store.audit_event(&who.actor(), "NodeCredentialRefused", &target) {
            warn!(%error, "could not audit a refused node credential");
        }
        Err(ApiError::Permission(message))
    }

    /// Records when a token was last used (at most once a minute per token). Client
    /// certificates are not tokens: nothing is recorded for them.
    fn note_use(&self, who: &Principal) {
        if self.shared.node_client_certs {
            return;
        }
        let now = crate::util::now_ms();
        if self.shared.auth.used(&who.token_id, now)
            && let Err(error) = self.shared.store.touch_token(&who.token_id, now)
        {
            debug!(%error, "could not record a token's last use");
        }
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for NodeApi {
    type SyncStream = SyncStream;

    async fn sync(&self, request: Request<Streaming<pb::NodeMessage>>) -> Result<Response<SyncStream>, Status> {
        Ok(Response::new(self.open_sync(request).await?))
    }

    async fn report(&self, request: Request<pb::ReportBatch>) -> Result<Response<pb::ReportAck>, Status> {
        Ok(Response::new(self.take_report(request).await?))
    }
}
