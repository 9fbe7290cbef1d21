//! The `sidecar-control` process: configuration errors and graceful shutdown.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_sidecar-control");

#[test]
fn a_missing_key_exits_2_with_one_line_saying_how_to_make_one() {
    let out = Command::new(BIN).env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("SIDECAR_ENCRYPTION_KEY") && stderr.contains("gen-key"), "{stderr}");
}

#[test]
fn an_invalid_setting_is_named() {
    let out = Command::new(BIN)
        .env_clear()
        .env("SIDECAR_ENCRYPTION_KEY", "ab".repeat(32))
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("SIDECAR_CONTROL_LISTEN (--listen)"), "{stderr}");
}

#[test]
fn gen_key_prints_a_fresh_64_hex_key() {
    let a = Command::new(BIN).arg("gen-key").output().unwrap();
    let b = Command::new(BIN).arg("gen-key").output().unwrap();
    let (a, b) = (String::from_utf8(a.stdout).unwrap(), String::from_utf8(b.stdout).unwrap());
    assert_eq!(a.trim().len(), 64);
    assert!(a.trim().chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

#[test]
fn sigterm_flushes_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("SIDECAR_ENCRYPTION_KEY", "cd".repeat(32))
        .env("SIDECAR_ADMIN_TOKEN", "admin-token-0123456789abcdef")
        .env("SIDECAR_DATA_DIR", dir.path())
        .env("SIDECAR_LOG_LEVEL", "info")
        .args(["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("serving /health") {
            break;
        }
    }
    assert!(seen.contains("serving gRPC"), "{seen}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", rest.join("\n"));
    assert!(rest.iter().any(|l| l.contains("store flushed")), "{}", rest.join("\n"));
    assert!(!seen.contains('\x1b'), "logs to a pipe carry no ANSI colour codes: {seen:?}");
    assert!(dir.path().join("sled").exists());
}
