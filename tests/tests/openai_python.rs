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

/// The proxy's API over HTTPS (SIDECAR_TLS_CERT/KEY), trusted by the official client
/// through a private CA, streaming included.
#[tokio::test]
async fn the_official_openai_python_client_works_over_https_with_a_private_ca() {
    let pki = sidecar_tests::pki::TestPki::new("proxy");
    let server = pki.server("proxy");
    let mock = MockUpstream::start(&[]).await;
    let env = vec![
        ("SIDECAR_TLS_CERT".into(), server.cert.display().to_string()),
        ("SIDECAR_TLS_KEY".into(), server.key.display().to_string()),
    ];
    let mut gw = Gateway::start_with(sidecar_tests::ProxyOptions { env, ..Default::default() }).await;
    gw.add_backend(&mock, BackendDef::default()).await;
    let url = format!("https://localhost:{}/v1", gw.proxy.addr.port());
    let seen = sidecar_tests::run_python_client(
        "openai_client.py",
        &[("SIDECAR_PROXY_URL", url), ("SIDECAR_CA", pki.ca_path().display().to_string())],
    )
    .await;
    assert_eq!(seen["model"], "native-gpt");
    assert!(seen["stream_chunks"].as_u64().unwrap() >= 2, "{seen}");
    assert_eq!(seen["stream_usage"], 15);

    // Plain HTTP against the HTTPS port gets nothing; h2 is offered by ALPN.
    let plain = reqwest::Client::new().get(format!("http://{}/health", gw.proxy.addr)).send().await;
    assert!(plain.is_err(), "plaintext must not be served on the HTTPS port");
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let h2 = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let resp = h2
        .post(format!("https://localhost:{}/v1/chat/completions", gw.proxy.addr.port()))
        .json(&sidecar_tests::proxy::chat_body("gpt-test", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "h2 negotiated by ALPN");
}
