//! Compiles `sidecar/v1/*.proto` with protox (pure Rust, no system `protoc`) and
//! generates prost messages and tonic services, plus the descriptor set for reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["sidecar/v1/types.proto", "sidecar/v1/admin.proto", "sidecar/v1/node.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("sidecar_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        // Lets the CLI print any response as JSON without a hand-written view per type.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        // Enum fields print as their lower-case names ("viewer", "healthy"), not numbers.
        .field_attribute("sidecar.v1.Token.role", r#"#[serde(serialize_with = "crate::json::role")]"#)
        .field_attribute("sidecar.v1.Backend.status", r#"#[serde(serialize_with = "crate::json::backend_status")]"#)
        .field_attribute("sidecar.v1.Backend.source", r#"#[serde(serialize_with = "crate::json::backend_source")]"#)
        .field_attribute("sidecar.v1.Backend.api", r#"#[serde(serialize_with = "crate::json::backend_api")]"#)
        .field_attribute("sidecar.v1.BackendLive.status", r#"#[serde(serialize_with = "crate::json::backend_status")]"#)
        .field_attribute(
            "sidecar.v1.GetStatsResponse.granularity",
            r#"#[serde(serialize_with = "crate::json::granularity")]"#,
        )
        .compile_fds(fds)?;
    Ok(())
}
