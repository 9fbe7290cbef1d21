//! TLS and mTLS between the planes, with certificates made in the test: the control
//! plane's API port over TLS, a proxy and sidecarctl trusting a private CA, client
//! certificates as node identities, and certificate reload without dropping streams.

use std::{path::PathBuf, time::Duration};

// The control plane runs in this test's runtime: commands are awaited, never blocked on.
use tokio::process::Command;

use sidecar_proto::v1::{self as pb, node_service_client::NodeServiceClient};
use sidecar_tests::{
    ControlPlaneHarness, MockUpstream, Options, ProxyHarness, ProxyOptions,
    control::HarnessTls,
    eventually,
    gateway::BackendDef,
    pki::{TestPki, served_certificate},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig},
};

fn sidecarctl() -> PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let bin = dir.join("sidecarctl");
    assert!(bin.exists(), "{} is missing: run the tests with `cargo test --workspace`", bin.display());
    bin
}

async fn tls_control_plane(pki: &TestPki, client_ca: bool) -> ControlPlaneHarness {
    let tls = HarnessTls {
        server: pki.server("control"),
        ca_pem: pki.ca_pem.clone(),
        client_ca: client_ca.then(|| pki.ca_path()),
        client: None,
    };
    ControlPlaneHarness::start_with(Options { tls: Some(tls), ..Options::default() }).await
}

#[tokio::test]
async fn the_api_port_speaks_tls_and_clients_trust_a_private_ca() {
    let pki = TestPki::new("sidecar");
    let cp = tls_control_plane(&pki, false).await;
    assert!(cp.url().starts_with("https://"));
    let mut admin = cp.admin().await;
    admin.list_backends(pb::ListBackendsRequest::default()).await.expect("admin over TLS");

    // A plaintext client against the TLS port fails.
    let plain = Channel::from_shared(format!("http://{}", cp.addr)).unwrap().connect().await;
    let failed = match plain {
        Err(_) => true,
        Ok(ch) => sidecar_proto::v1::admin_service_client::AdminServiceClient::new(ch)
            .get_config_version(pb::GetConfigVersionRequest {})
            .await
            .is_err(),
    };
    assert!(failed, "plaintext must not work against the TLS port");

    // A client that trusts another CA fails, and the error says why.
    let other = TestPki::new("other");
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&other.ca_pem));
    let err = Channel::from_shared(cp.url()).unwrap().tls_config(config).unwrap().connect().await.unwrap_err();
    let chain = format!("{err:?}");
    assert!(chain.contains("UnknownIssuer") || chain.contains("certificate"), "{chain}");

    // sidecarctl with --ca works; without it (public roots only) it fails naming the
    // certificate problem; --ca against an http:// URL is a usage error.
    let run = |args: &[&str]| {
        Command::new(sidecarctl())
            .args(["--server", &cp.url(), "--token", &cp.admin_token])
            .args(args)
            .env_remove("SIDECAR_CA")
            .output()
    };
    let ca = pki.ca_path().display().to_string();
    let ok = run(&["--ca", &ca, "version"]).await.unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = run(&["version"]).await.unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr).to_string();
    assert!(!bad.status.success());
    assert!(stderr.contains("certificate") || stderr.contains("UnknownIssuer"), "{stderr}");
    let usage = Command::new(sidecarctl())
        .args(["--server", &format!("http://{}", cp.addr), "--token", &cp.admin_token, "--ca", &ca, "version"])
        .output()
        .await
        .unwrap();
    assert_eq!(usage.status.code(), Some(2), "{}", String::from_utf8_lossy(&usage.stderr));

    // A proxy on an https:// URL with SIDECAR_CONTROL_CA syncs and serves.
    let mock = MockUpstream::start(&[]).await;
    let options = ProxyOptions {
        node_id: "tls-proxy".into(),
        env: vec![("SIDECAR_CONTROL_CA".into(), ca.clone())],
        ..Default::default()
    };
    let proxy = ProxyHarness::start(&cp.url(), &cp.node_token, options).await;
    let mut gw = sidecar_tests::Gateway { cp, proxy, admin };
    gw.add_backend(&mock, BackendDef::default()).await;
    assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200);
}

#[tokio::test]
async fn a_proxy_without_the_ca_cannot_sync_and_says_why() {
    let pki = TestPki::new("sidecar");
    let cp = tls_control_plane(&pki, false).await;
    let proxy = ProxyHarness::start(&cp.url(), &cp.node_token, ProxyOptions::default()).await;
    let status = eventually("the proxy reports the TLS failure", Duration::from_secs(10), || async {
        let s = proxy.status().await;
        let error = s["control_plane"]["last_error"].as_str().unwrap_or_default().to_owned();
        (!error.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(status["control_plane"]["connected"], false, "{status}");
    let error = status["control_plane"]["last_error"].as_str().unwrap();
    assert!(error.contains("certificate") && error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn with_mtls_a_node_is_the_node_its_certificate_names() {
    let pki = TestPki::new("sidecar");
    let cp = tls_control_plane(&pki, true).await;
    // Admin clients still come with a bearer token only.
    cp.admin().await.list_backends(pb::ListBackendsRequest::default()).await.expect("admin without a client cert");

    let hello = |node: &str| pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Hello(pb::Hello {
            node_id: node.into(),
            boot_id: "boot-1".into(),
            ..Default::default()
        })),
    };
    let sync = |channel: Channel, node: &'static str| async move {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello(node)).await.unwrap();
        let r = NodeServiceClient::new(channel).sync(ReceiverStream::new(rx)).await;
        (r, tx)
    };

    // No client certificate: refused, even with the node token.
    let (r, _tx) = sync(cp.try_channel(None).await.unwrap(), "node-a").await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    // A certificate from another CA: the handshake fails (with TLS 1.3 the client learns
    // it at its first request).
    let other = TestPki::new("other");
    match cp.try_channel(Some(&other.client("node-a"))).await {
        Err(_) => {}
        Ok(channel) => {
            let (r, _tx) = sync(channel, "node-a").await;
            assert!(r.is_err(), "a foreign client certificate is refused");
        }
    }
    // The certificate's node id is the identity: node-a may not claim node-b.
    let a = pki.client("node-a");
    let (r, _tx) = sync(cp.try_channel(Some(&a)).await.unwrap(), "node-b").await;
    let err = r.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("node-a"), "{}", err.message());
    let (r, _tx) = sync(cp.try_channel(Some(&a)).await.unwrap(), "node-a").await;
    let mut stream = r.expect("node-a syncs as itself").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert!(matches!(first.kind, Some(pb::control_message::Kind::Snapshot(_))));
    // A certificate with only a CN names the node too.
    let cn = pki.client_cn_only("node-c");
    let (r, _tx) = sync(cp.try_channel(Some(&cn)).await.unwrap(), "node-c").await;
    r.expect("the CN is the node id when there is no SAN");

    // A proxy with its client certificate syncs without any node token.
    let options = ProxyOptions {
        node_id: "node-p".into(),
        env: vec![
            ("SIDECAR_CONTROL_CA".into(), pki.ca_path().display().to_string()),
            ("SIDECAR_TLS_CLIENT_CERT".into(), pki.client("node-p").cert.display().to_string()),
            ("SIDECAR_TLS_CLIENT_KEY".into(), pki.client("node-p").key.display().to_string()),
        ],
        ..Default::default()
    };
    let proxy = ProxyHarness::start(&cp.url(), "", options).await;
    let version =
        cp.admin().await.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version;
    proxy.wait_version(version).await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_dropping_node_streams() {
    let pki = TestPki::new("sidecar");
    let cp = tls_control_plane(&pki, false).await;
    let mut node = {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::NodeMessage {
            kind: Some(pb::node_message::Kind::Hello(pb::Hello {
                node_id: "node-r".into(),
                boot_id: "b".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let stream = cp.node().await.sync(ReceiverStream::new(rx)).await.unwrap().into_inner();
        (tx, stream)
    };
    // Renew: a new certificate (new key, same names) written over the old files.
    let before = std::fs::read(&cp.tls.as_ref().unwrap().server.cert).unwrap();
    let renewed = pki.server("renewed");
    let server = cp.tls.as_ref().unwrap().server.clone();
    std::fs::copy(&renewed.key, &server.key).unwrap();
    std::fs::copy(&renewed.cert, &server.cert).unwrap();
    assert_ne!(before, std::fs::read(&server.cert).unwrap());
    // New handshakes get the new certificate (checked every 2 s).
    let ca = pki.ca_pem.clone();
    eventually("the renewed certificate is served", Duration::from_secs(10), || async {
        let der = served_certificate(cp.addr.port(), &ca).await?;
        (der == renewed.cert_der()).then_some(())
    })
    .await;
    // The node's stream is still open: a write reaches it.
    let mut admin = cp.admin().await;
    let mut spec = pb::BackendSpec {
        name: "after-renewal".into(),
        base_url: "https://x.example/v1".into(),
        api_key: "sk-after-renewal-0123".into(),
        ..Default::default()
    };
    spec.model_mappings.insert("m".into(), pb::ModelMapping { native_id: "m".into(), ..Default::default() });
    admin.create_backend(pb::CreateBackendRequest { backend: Some(spec), validate: false }).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), node.1.message()).await.unwrap().unwrap().unwrap();
        if let Some(pb::control_message::Kind::Snapshot(s)) = msg.kind
            && s.backends.iter().any(|b| b.name == "after-renewal")
        {
            break;
        }
    }
}

#[tokio::test]
async fn unusable_certificate_files_are_refused_at_start_naming_the_setting() {
    let pki = TestPki::new("sidecar");
    let junk = pki.dir().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let server = pki.server("control");

    // The control plane: a junk certificate, a key that is not the certificate's.
    let start = |cert: PathBuf, key: PathBuf| {
        let env = vec![
            ("SIDECAR_TLS_CERT".to_string(), cert.display().to_string()),
            ("SIDECAR_TLS_KEY".to_string(), key.display().to_string()),
        ];
        ControlPlaneHarness::try_start(Options { env, ..Options::default() })
    };
    let err = start(junk.clone(), server.key.clone()).await.err().unwrap().to_string();
    assert!(err.starts_with("SIDECAR_TLS_CERT") && err.contains("junk.pem"), "{err}");
    let other = pki.server("other");
    let err = start(server.cert.clone(), other.key.clone()).await.err().unwrap().to_string();
    assert!(err.starts_with("SIDECAR_TLS_KEY") && err.contains("does not match"), "{err}");

    // The proxy: a junk CA.
    let env = [
        ("SIDECAR_CONTROL_URL", "https://localhost:1".to_string()),
        ("SIDECAR_CONTROL_CA", junk.display().to_string()),
        ("SIDECAR_DATA_DIR", pki.dir().join("proxy").display().to_string()),
    ];
    let lookup = move |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
    let config = sidecar_data_plane::ProxyConfig::resolve(&sidecar_data_plane::Flags::default(), &lookup).unwrap();
    let err = sidecar_data_plane::Proxy::new(&config).err().unwrap().to_string();
    assert!(err.starts_with("SIDECAR_CONTROL_CA") && err.contains("junk.pem"), "{err}");
}

/// A provider behind a private CA (or a corporate TLS proxy) is reachable only when
/// SIDECAR_UPSTREAM_CA names that CA; without it the certificate is refused, counted as
/// a connect failure, and the client gets an OpenAI-shaped error.
#[tokio::test]
async fn a_provider_behind_a_private_ca_is_reached_only_with_sidecar_upstream_ca() {
    let pki = TestPki::new("provider");
    let mock = MockUpstream::start(&[]).await;
    let front = sidecar_tests::pki::tls_front(mock.addr, &pki.server("provider")).await;
    let trusting = ProxyOptions {
        node_id: "trusting".into(),
        env: vec![("SIDECAR_UPSTREAM_CA".into(), pki.ca_path().display().to_string())],
        ..Default::default()
    };
    let mut gw = sidecar_tests::Gateway::start_with(trusting).await;
    let untrusting = gw.add_proxy(ProxyOptions { node_id: "untrusting".into(), ..Default::default() }).await;
    let mut mappings = std::collections::HashMap::new();
    mappings.insert("gpt-test".to_string(), pb::ModelMapping { native_id: "native-gpt".into(), ..Default::default() });
    let created = gw
        .admin
        .create_backend(pb::CreateBackendRequest {
            backend: Some(pb::BackendSpec {
                name: "private".into(),
                base_url: format!("https://localhost:{}/v1", front.port()),
                api_key: "sk-private-provider-0123456789".into(),
                model_mappings: mappings,
                timeout_seconds: 5,
                ..Default::default()
            }),
            validate: false,
        })
        .await
        .unwrap()
        .into_inner();
    gw.proxy.wait_version(created.config_version).await;
    untrusting.wait_version(created.config_version).await;

    let refused = untrusting.chat("gpt-test").await;
    assert!(refused.status().is_server_error(), "{}", refused.status());
    assert!(mock.calls_to("/v1/chat/completions").is_empty(), "nothing got through an untrusted certificate");
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert_eq!(mock.calls_to("/v1/chat/completions").len(), 1);
}

/// SIGHUP reloads the certificate even when the files' times say nothing changed (a
/// renewal copied with its times preserved, say): `systemctl reload`.
#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let pki = TestPki::new("sidecar");
    let cp = tls_control_plane(&pki, false).await;
    let server = cp.tls.as_ref().unwrap().server.clone();
    let times = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (cert_time, key_time) = (times(&server.cert), times(&server.key));
    let renewed = pki.server("renewed-hup");
    std::fs::copy(&renewed.key, &server.key).unwrap();
    std::fs::copy(&renewed.cert, &server.cert).unwrap();
    for (path, time) in [(&server.cert, cert_time), (&server.key, key_time)] {
        std::fs::File::options().write(true).open(path).unwrap().set_modified(time).unwrap();
    }
    // Past two file checks, the old certificate is still served: nothing looked changed.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let ca = pki.ca_pem.clone();
    assert_ne!(served_certificate(cp.addr.port(), &ca).await.unwrap(), renewed.cert_der());
    let status = Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().await.unwrap();
    assert!(status.success());
    eventually("SIGHUP reloads the certificate", Duration::from_secs(5), || async {
        (served_certificate(cp.addr.port(), &ca).await? == renewed.cert_der()).then_some(())
    })
    .await;
}
