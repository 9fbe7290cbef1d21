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

/// JSON forms of enum fields for the CLI's `-o json`: the value's name without the
/// enum's prefix, in lower case (`ROLE_VIEWER` → `"viewer"`); a value this build does
/// not know prints as its number.
pub mod json {
    use serde::Serializer;

    fn name<S: Serializer>(s: S, value: i32, prefix: &str, known: Option<&str>) -> Result<S::Ok, S::Error> {
        match known {
            Some(n) => s.serialize_str(&n.trim_start_matches(prefix).to_ascii_lowercase()),
            None => s.serialize_i32(value),
        }
    }

    macro_rules! enum_json {
        ($($fn:ident: $ty:ident, $prefix:literal;)*) => {$(
            #[doc = concat!("Serializes a `", stringify!($ty), "` field by name.")]
            pub fn $fn<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
                name(s, *value, $prefix, crate::v1::$ty::try_from(*value).ok().map(|v| v.as_str_name()))
            }
        )*};
    }

    enum_json! {
        role: Role, "ROLE_";
        backend_status: BackendStatus, "BACKEND_STATUS_";
        backend_source: BackendSource, "BACKEND_SOURCE_";
        backend_api: BackendApi, "BACKEND_API_";
        granularity: Granularity, "GRANULARITY_";
    }
}
