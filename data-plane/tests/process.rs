//! The `sidecar-proxy` process: configuration errors and graceful shutdown.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_sidecar-proxy");

#[test]
fn an_invalid_setting_exits_2_naming_it() {
    let out = Command::new(BIN).env_clear().env("SIDECAR_PORT", "http").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("SIDECAR_PORT (--port)"), "{stderr}");
}

#[test]
fn sigterm_exits_0_without_a_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("SIDECAR_DATA_DIR", dir.path())
        .env("SIDECAR_CONTROL_URL", "http://127.0.0.1:1")
        .env("SIDECAR_PORT", "0")
        .env("SIDECAR_OPS_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("serving /health") {
            break;
        }
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", rest.join("\n"));
    assert!(rest.iter().any(|l| l.contains("proxy stopped")), "{}", rest.join("\n"));
    let id = std::fs::read_to_string(dir.path().join("node_id")).unwrap();
    assert!(id.starts_with("node-"), "a node id is generated once and kept");
}
