//! Sidecar's gRPC API, package `sidecar.v1`: code generated from `sidecar/v1/*.proto`.
//!
//! Wire types stop at the edge: the control plane and the data plane each convert these
//! messages into their own domain types once.

#![forbid(unsafe_code)]
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// Package `sidecar.v1`.
pub mod v1 {
    tonic::include_proto!("sidecar.v1");
}

/// Encoded `FileDescriptorSet` of every Sidecar proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sidecar_descriptor");
