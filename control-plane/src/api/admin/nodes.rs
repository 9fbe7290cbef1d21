//! Nodes: every node ever seen, with whether it is connected now.

use sidecar_proto::v1 as pb;

use super::AdminApi;
use crate::{
    api::{convert::node_to_pb, error::ApiResult},
    auth::Principal,
};

pub(super) async fn list(api: &AdminApi, _: Principal, _: pb::ListNodesRequest) -> ApiResult<pb::ListNodesResponse> {
    let here = api.shared.cluster.name();
    let nodes =
        api.store().nodes()?.iter().map(|n| node_to_pb(n, api.shared.nodes.is_connected_anywhere(n, here))).collect();
    Ok(pb::ListNodesResponse { nodes, config_version: api.store().config_version() })
}
