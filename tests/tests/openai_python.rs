//! A real client nobody here wrote: the official `openai` Python package talks to the
//! proxy (installed by `scripts/install-test-deps.sh`).

use sidecar_tests::{Gateway, MockUpstream, gateway::BackendDef};

#[tokio::test]
async fn the_official_openai_python_client_works_through_the_proxy() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(&mock, BackendDef::default()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/openai_client.py");
    let output = tokio::process::Command::new(sidecar_tests::test_python())
        .arg(script)
        .env("SIDECAR_PROXY_URL", gw.proxy.url())
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the openai client failed (is the `openai` package installed? scripts/install-test-deps.sh installs it into target/test-venv):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(!seen["content"].as_str().unwrap().is_empty());
    assert_eq!(seen["model"], "native-gpt", "the upstream saw the native model id");
    assert_eq!(seen["usage"], 15);
    // The plain loop (`chunk.choices[0]`) ran to the end: no usage chunk it never asked for.
    assert!(seen["stream_chunks"].as_u64().unwrap() >= 2, "{seen}");
    assert!(!seen["stream_text"].as_str().unwrap().is_empty(), "{seen}");
    assert_eq!(seen["stream_usage"], 15, "the usage chunk the client asked for reached it");
    assert_eq!(seen["usage_chunk_choices"], 0);
    let calls = mock.calls_to("/v1/chat/completions");
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.header("authorization").as_deref() == Some("Bearer sk-backend-key-0123456789")));
    assert!(calls[1].json()["stream"].as_bool().unwrap());
}
