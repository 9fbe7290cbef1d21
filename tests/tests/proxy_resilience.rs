//! Static stability: the proxy keeps serving while the control plane is away, delivers
//! the usage afterwards exactly once, boots from its encrypted cache, and keeps its old
//! config when it rejects a snapshot.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use sidecar_proto::v1::{
    self as pb,
    node_service_server::{NodeService, NodeServiceServer},
};
use sidecar_tests::{
    ControlPlaneHarness, Gateway, MockUpstream, ProxyHarness, ProxyOptions, eventually, gateway::BackendDef,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

async fn connected(proxy: &ProxyHarness) -> bool {
    proxy.status().await["control_plane"]["connected"].as_bool().unwrap()
}

fn total_requests(cp: &ControlPlaneHarness) -> u64 {
    let store = sidecar_control_plane::store::Store::open(&cp.data_dir).unwrap();
    store.usage_minutes(0, i64::MAX).unwrap().iter().map(|r| r.3.answered).sum()
}

#[tokio::test]
async fn the_proxy_serves_through_a_control_plane_outage_and_reports_exactly_once_after() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(&mock, BackendDef::default()).await;
    for _ in 0..3 {
        assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200);
    }
    gw.cp.stop().await;
    eventually("proxy notices", Duration::from_secs(10), || async { (!connected(&gw.proxy).await).then_some(()) })
        .await;
    for _ in 0..5 {
        assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200, "served from the last snapshot");
    }
    let outbox: u64 = gw.proxy.status().await["requests"]["total"].as_u64().unwrap();
    assert_eq!(outbox, 8);

    let mut cp = ControlPlaneHarness::start_with(gw.cp.restart_options()).await;
    eventually("proxy reconnects", Duration::from_secs(15), || async { connected(&gw.proxy).await.then_some(()) })
        .await;
    for _ in 0..2 {
        assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200);
    }
    eventually("outbox delivered", Duration::from_secs(15), || async {
        gw.proxy.shared.outbox.is_empty().then_some(())
    })
    .await;
    gw.proxy.stop().await;
    cp.stop().await;
    assert_eq!(mock.served(), 10);
    assert_eq!(total_requests(&cp), 10, "every request reported once: none lost, none twice");
}

#[tokio::test]
async fn a_proxy_restarted_while_the_control_plane_is_down_serves_from_its_encrypted_cache() {
    let mock = MockUpstream::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let options =
        ProxyOptions { data_dir: Some(dir.path().to_path_buf()), node_id: "cached".into(), ..Default::default() };
    let mut gw = Gateway::start_with(options.clone()).await;
    gw.add_backend(&mock, BackendDef { key: "sk-cached-secret-0123456789", ..Default::default() }).await;
    let version = gw.proxy.version();
    gw.proxy.stop().await;
    gw.cp.stop().await;

    let cache = std::fs::read(dir.path().join("snapshot.cache")).unwrap();
    assert!(!cache.windows(10).any(|w| w == b"sk-cached-"), "the cache holds no plaintext key");

    let revived = ProxyHarness::start(&gw.cp.url(), &gw.cp.node_token, options.clone()).await;
    assert_eq!(revived.version(), version, "the cached config is applied at boot");
    let ready = reqwest::get(format!("http://{}/health/ready", revived.ops_addr)).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(revived.chat("gpt-test").await.status(), 200);
    assert_eq!(
        mock.calls().last().unwrap().header("authorization").as_deref(),
        Some("Bearer sk-cached-secret-0123456789")
    );

    // A wrong cache key cannot open it: the proxy starts empty rather than guessing.
    drop(revived);
    let wrong = ProxyOptions { cache_key: Some("02".repeat(32)), ..options };
    let blind = ProxyHarness::start(&gw.cp.url(), &gw.cp.node_token, wrong).await;
    assert_eq!(blind.version(), 0);
}

/// A scripted control plane: sends the snapshots the test gives it, forwards answers.
struct FakeControlPlane {
    snapshots: Mutex<Option<mpsc::Receiver<pb::Snapshot>>>,
    answers: mpsc::Sender<pb::NodeMessage>,
}

#[tonic::async_trait]
impl NodeService for FakeControlPlane {
    type SyncStream = ReceiverStream<Result<pb::ControlMessage, Status>>;

    async fn sync(&self, request: Request<Streaming<pb::NodeMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        let answers = self.answers.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let _ = answers.send(m).await;
            }
        });
        let mut snapshots =
            self.snapshots.lock().unwrap().take().ok_or_else(|| Status::unavailable("one session only"))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(s) = snapshots.recv().await {
                let msg = pb::ControlMessage { kind: Some(pb::control_message::Kind::Snapshot(s)) };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report(&self, request: Request<pb::ReportBatch>) -> Result<Response<pb::ReportAck>, Status> {
        Ok(Response::new(pb::ReportAck { seq: request.into_inner().seq, applied: true }))
    }
}

/// A proxy synced from a [`FakeControlPlane`]: send it snapshots, read its answers.
async fn proxy_on_fake_control_plane() -> (ProxyHarness, mpsc::Sender<pb::Snapshot>, mpsc::Receiver<pb::NodeMessage>) {
    let (snap_tx, snap_rx) = mpsc::channel(4);
    let (ans_tx, answers) = mpsc::channel(16);
    let fake = FakeControlPlane { snapshots: Mutex::new(Some(snap_rx)), answers: ans_tx };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (ProxyHarness::start(&url, "any", ProxyOptions::default()).await, snap_tx, answers)
}

fn snapshot(version: u64, base_url: &str, rpm: u32) -> pb::Snapshot {
    let mut mappings = HashMap::new();
    mappings.insert("gpt-test".to_string(), pb::ModelMapping { native_id: "native".into(), ..Default::default() });
    pb::Snapshot {
        version,
        nonce: format!("nonce-{version}"),
        backends: vec![pb::SnapshotBackend {
            id: "bkd_fake".into(),
            name: "fake".into(),
            base_url: base_url.into(),
            api_key: "sk-fake-0123456789".into(),
            timeout_seconds: 5,
            rpm_limit: rpm,
            pool: "primary".into(),
            enabled: true,
            weight: 1,
            model_mappings: mappings,
            ..Default::default()
        }],
        pools: vec![pb::Pool { name: "primary".into(), order: 0, ..Default::default() }],
        settings: Some(pb::Settings {
            cooldown_base_seconds: 30,
            cooldown_max_seconds: 600,
            queue_capacity: 10,
            queue_timeout_seconds: 5,
            low_priority_timeout_seconds: 1,
            emergency_fraction: 0.1,
            near_recovery_wait_seconds: 10,
            failure_threshold: 3,
            error_cooldown_seconds: 30,
            bucket_burst: 3,
            adaptive_retreat: false,
            ..Default::default()
        }),
        generated_at_ms: 0,
        client_keys: Vec::new(),
        config_hash: String::new(),
    }
}

async fn next_answer(answers: &mut mpsc::Receiver<pb::NodeMessage>) -> pb::node_message::Kind {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), answers.recv()).await.expect("an answer").expect("open");
        match m.kind {
            Some(pb::node_message::Kind::Hello(_) | pb::node_message::Kind::Demand(_)) | None => continue,
            Some(k) => return k,
        }
    }
}

#[tokio::test]
async fn a_nacked_snapshot_leaves_traffic_on_the_old_config() {
    let old = MockUpstream::start(&[]).await;
    let new = MockUpstream::start(&[]).await;
    let (proxy, snap_tx, mut answers) = proxy_on_fake_control_plane().await;

    snap_tx.send(snapshot(1, &old.base_url(), 60)).await.unwrap();
    match next_answer(&mut answers).await {
        pb::node_message::Kind::Ack(a) => assert_eq!((a.version, a.nonce.as_str()), (1, "nonce-1")),
        other => panic!("expected an ack, got {other:?}"),
    }
    assert_eq!(proxy.chat("gpt-test").await.status(), 200);

    // Version 2 moves the backend to the new upstream but with an unusable limit.
    snap_tx.send(snapshot(2, &new.base_url(), 0)).await.unwrap();
    match next_answer(&mut answers).await {
        pb::node_message::Kind::Nack(n) => {
            assert_eq!((n.version, n.nonce.as_str()), (2, "nonce-2"));
            assert!(n.error.contains("rpm_limit"), "{}", n.error);
        }
        other => panic!("expected a nack, got {other:?}"),
    }
    assert_eq!(proxy.version(), 1);
    assert_eq!(proxy.chat("gpt-test").await.status(), 200);
    assert_eq!(old.served(), 2, "traffic stays on the old config");
    assert_eq!(new.calls().len(), 0);

    // A valid version 3 is applied.
    snap_tx.send(snapshot(3, &new.base_url(), 60)).await.unwrap();
    assert!(matches!(next_answer(&mut answers).await, pb::node_message::Kind::Ack(_)));
    assert_eq!(proxy.chat("gpt-test").await.status(), 200);
    assert_eq!(new.served(), 1);
}

#[tokio::test]
async fn a_429_is_sent_to_the_control_plane_at_once() {
    let mock = MockUpstream::start(&[]).await;
    let (proxy, snap_tx, mut answers) = proxy_on_fake_control_plane().await;
    snap_tx.send(snapshot(1, &mock.base_url(), 60)).await.unwrap();
    next_answer(&mut answers).await;
    mock.push(sidecar_tests::Reply::too_many_requests(3));
    mock.push(sidecar_tests::Reply::too_many_requests(3));
    proxy.chat("gpt-test").await;
    match next_answer(&mut answers).await {
        pb::node_message::Kind::RateLimited(e) => {
            assert_eq!(e.backend_id, "bkd_fake");
            assert_eq!(e.consecutive_count, 1);
            assert_eq!(e.retry_after_ms, 3000);
            assert_eq!(e.cooldown_ms, 30_000);
        }
        other => panic!("expected a rate-limit event, got {other:?}"),
    }
}
