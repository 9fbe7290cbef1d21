//! The wire edge stays at the edge: generated protobuf types (`sidecar_proto`) and gRPC
//! statuses (`tonic::Status`) appear only where requests come in or messages go out. In
//! the control plane that is `api/` (plus the binaries and the fuzzing entry points); in
//! the proxy it is `config_sync/` and the report's delivery (plus test-only code). The
//! control plane's domain also never reaches up into `api`, and no control-plane source
//! file reaches 400 lines.
//!
//! Checks this checkout, or the one at `SIDECAR_SOURCE_ROOT` (to check another tree).

use std::{
    fs,
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    std::env::var_os("SIDECAR_SOURCE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// Every `.rs` file under `dir`, as paths relative to `dir` with `/` separators.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/");
                out.push((rel, fs::read_to_string(&path).unwrap()));
            }
        }
    }
    assert!(!out.is_empty(), "no sources under {}", dir.display());
    out
}

/// Whether the source names the wire: the proto crate, or tonic's `Status` (by path or
/// in a `use tonic::{…}` list).
fn names_the_wire(text: &str) -> Option<String> {
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let tonic_status = code.contains("tonic::Status")
            || (code.contains("use tonic::")
                && code.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == "Status"));
        if code.contains("sidecar_proto") || tonic_status {
            return Some(format!("line {}: {}", n + 1, line.trim()));
        }
    }
    None
}

fn violations(dir: &str, allowed: impl Fn(&str) -> bool, forbidden: impl Fn(&str) -> Option<String>) -> Vec<String> {
    sources(&root().join(dir))
        .into_iter()
        .filter(|(path, _)| !allowed(path))
        .filter_map(|(path, text)| forbidden(&text).map(|what| format!("{dir}/{path} {what}")))
        .collect()
}

#[test]
fn the_control_plane_domain_speaks_domain_types_only() {
    let edge = |p: &str| p.starts_with("api/") || p.starts_with("bin/") || p == "fuzzing.rs";
    let found = violations("control-plane/src", edge, names_the_wire);
    assert!(found.is_empty(), "wire types outside the control plane's edge (api/):\n{}", found.join("\n"));

    let assembly = |p: &str| edge(p) || p == "lib.rs" || p == "server.rs";
    let reaches_up = |text: &str| {
        text.lines()
            .enumerate()
            .find(|(_, l)| l.contains("crate::api") || l.contains("api::"))
            .map(|(n, l)| format!("line {}: {}", n + 1, l.trim()))
    };
    let found = violations("control-plane/src", assembly, reaches_up);
    assert!(found.is_empty(), "the domain reaches up into the API layer:\n{}", found.join("\n"));
}

#[test]
fn the_proxy_request_path_speaks_domain_types_only() {
    let edge = |p: &str| {
        p.starts_with("config_sync/")
            || matches!(p, "report/mod.rs" | "report/outbox.rs" | "report/wire.rs")
            || matches!(p, "fuzzing.rs" | "proptests.rs")
            || p.ends_with("/tests.rs")
    };
    let found = violations("data-plane/src", edge, names_the_wire);
    assert!(
        found.is_empty(),
        "wire types outside the proxy's edge (config_sync/, report delivery):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_must_refuse() {
    assert!(names_the_wire("use sidecar_proto::v1 as pb;").is_some());
    assert!(names_the_wire("use tonic::{Request, Status};").is_some());
    assert!(names_the_wire("fn f() -> Result<(), tonic::Status> {").is_some());
    assert!(names_the_wire("use tonic::transport::Server; // not Status").is_none());
    assert!(names_the_wire("use http::StatusCode;").is_none());
}

/// A control-plane source file that outgrows 400 lines holds more than one concept: split
/// it by what it does (as `fleet/cooldown.rs` was split from `fleet/mod.rs`).
#[test]
fn no_control_plane_source_file_reaches_400_lines() {
    let too_long: Vec<String> = sources(&root().join("control-plane/src"))
        .into_iter()
        .map(|(path, text)| (path, text.lines().count()))
        .filter(|(_, lines)| *lines >= 400)
        .map(|(path, lines)| format!("control-plane/src/{path}: {lines} lines"))
        .collect();
    assert!(too_long.is_empty(), "split these by concept:\n{}", too_long.join("\n"));
}
