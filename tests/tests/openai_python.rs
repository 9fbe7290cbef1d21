//! A real client nobody here wrote: the official `openai` Python package talks to the
//! proxy (installed by `scripts/install-test-deps.sh`).

use sidecar_tests::{Gateway, MockUpstream, gateway::BackendDef};

#[tokio::test]
async fn the_official_openai_python_client_works_through_the_proxy() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(&mock, BackendDef::default()).await;
    let seen = sidecar_tests::run_python_client("openai_client.py", &[("SIDECAR_PROXY_URL", gw.proxy.url())]).await;
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
