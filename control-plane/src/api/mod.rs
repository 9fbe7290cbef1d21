//! The wire edge: the only part of the control plane that sees `sidecar_proto` or
//! `tonic::Status`. Requests come in here — AdminService ([`admin`], for operators, the
//! console and automation), NodeService ([`node`], for data-plane proxies), reflection,
//! gRPC health and the console's files — and leave as calls into the domain (`state`,
//! `store`, `fleet`, `stats`, `validate`, …), which speaks domain types only. Every
//! proto ⇄ domain conversion is in [`convert`]; every error becomes a status in
//! [`error`].

pub mod admin;
pub mod console;
pub mod convert;
pub mod error;
pub mod node;
pub mod reflection;

use std::{path::Path, sync::Arc};

use sidecar_proto::v1::{admin_service_server::AdminServiceServer, node_service_server::NodeServiceServer};
use tonic::service::Routes;

pub use admin::AdminApi;
pub use error::ApiError;
pub use node::NodeApi;

use crate::state::Shared;

/// Largest gRPC message accepted (imports carry every backend).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Every service of the API port: AdminService and NodeService (gRPC and gRPC-web),
/// reflection, gRPC health, and the console (or a page saying how to build it).
pub async fn routes(shared: Arc<Shared>, console_dir: Option<&Path>) -> Result<Routes, prost::DecodeError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AdminServiceServer<AdminApi>>().await;
    health_reporter.set_serving::<NodeServiceServer<NodeApi>>().await;
    let index = reflection::index()?;
    let reflection_v1 = tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer::new(
        reflection::ReflectionV1(index.clone()),
    );
    let reflection_v1alpha = tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer::new(
        reflection::ReflectionV1Alpha(index),
    );
    let admin = AdminServiceServer::new(AdminApi::new(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let node = NodeServiceServer::new(NodeApi::new(shared));
    Ok(console::with_console(
        Routes::new(admin)
            .add_service(node)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(health),
        console_dir,
    ))
}
