//! Usage served while the control plane is down survives a restart of the proxy (a real
//! `sidecar-proxy` process), stopped with SIGTERM or killed with SIGKILL: the batches wait
//! on disk and are delivered, exactly once, when both are back.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use prost::Message;
use sidecar_proto::v1 as pb;
use sidecar_tests::{ControlPlaneHarness, MockUpstream, eventually, proxy::chat_body};

/// The `sidecar-proxy` binary cargo built for this test run.
fn proxy_binary() -> PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let bin = dir.join("sidecar-proxy");
    assert!(bin.exists(), "{} is missing: run the tests with `cargo test --workspace`", bin.display());
    bin
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct ProxyProcess {
    child: Child,
    api: SocketAddr,
}

impl ProxyProcess {
    async fn start(control_url: &str, token: &str, data: &Path) -> Self {
        let (api, ops) = (free_port(), free_port());
        let child = Command::new(proxy_binary())
            .env_clear()
            .env("SIDECAR_CONTROL_URL", control_url)
            .env("SIDECAR_NODE_TOKEN", token)
            .env("SIDECAR_NODE_ID", "durable-1")
            .env("SIDECAR_DATA_DIR", data)
            .env("SIDECAR_CACHE_KEY", sidecar_tests::proxy::TEST_CACHE_KEY)
            .env("SIDECAR_SHUTDOWN_GRACE", "2")
            .env("SIDECAR_LOG_LEVEL", "warn")
            .args(["--port", &api.port().to_string(), "--ops-listen", &ops.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sidecar-proxy starts");
        eventually("proxy ready", Duration::from_secs(20), || async {
            let r = reqwest::get(format!("http://{ops}/health/ready")).await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        Self { child, api }
    }

    fn signal(mut self, signal: &str) {
        Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        let status = self.child.wait().unwrap();
        if signal == "-TERM" {
            assert_eq!(status.code(), Some(0), "a clean exit on SIGTERM");
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests answered in the batches waiting in the proxy's on-disk outbox.
fn answered_on_disk(data: &Path) -> u64 {
    let Ok(files) = std::fs::read_dir(data.join("outbox")) else { return 0 };
    files
        .filter_map(|f| f.ok())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".batch"))
        .filter_map(|f| pb::ReportBatch::decode(std::fs::read(f.path()).ok()?.as_slice()).ok())
        .flat_map(|b| b.records)
        .map(|r| r.answered)
        .sum()
}

fn stored_answered(cp: &ControlPlaneHarness, node: &str) -> (u64, u64) {
    let store = sidecar_control_plane::store::Store::open(&cp.data_dir).unwrap();
    let rows = store.usage(sidecar_control_plane::store::Granularity::Minute, 0, i64::MAX).unwrap();
    rows.iter()
        .filter(|r| r.node_id == node)
        .fold((0, 0), |(a, s), r| (a + r.counters.answered, s + r.counters.succeeded))
}

async fn fifty_requests_survive_a_proxy_restart_during_an_outage(signal: &str) {
    let mock = MockUpstream::start(&[]).await;
    // The proxy under test is the fleet's only node, so its share is the whole limit.
    let mut cp = ControlPlaneHarness::start().await;
    let mappings = [("gpt-test".to_string(), pb::ModelMapping { native_id: "n".into(), ..Default::default() })];
    let spec = pb::BackendSpec {
        name: "b".into(),
        base_url: mock.base_url(),
        api_key: "sk-0123456789abcdef".into(),
        rpm_limit: Some(100_000),
        model_mappings: mappings.into_iter().collect(),
        ..Default::default()
    };
    cp.admin().await.create_backend(pb::CreateBackendRequest { backend: Some(spec), validate: false }).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = cp.url();
    let token = cp.node_token.clone();
    let proxy = ProxyProcess::start(&url, &token, data.path()).await;

    cp.stop().await;
    let client = reqwest::Client::new();
    for _ in 0..50 {
        let r = client.post(format!("http://{}/v1/chat/completions", proxy.api)).json(&chat_body("gpt-test", false));
        let r = r.send().await.unwrap();
        let status = r.status();
        assert_eq!(status, 200, "served from the last snapshot: {}", r.text().await.unwrap());
    }
    assert_eq!(mock.served(), 50);
    if signal == "-KILL" {
        // A crash loses only events not yet cut into a batch (at most a second's worth):
        // kill once every request is in a batch on disk.
        eventually("all 50 on disk", Duration::from_secs(10), || async {
            (answered_on_disk(data.path()) == 50).then_some(())
        })
        .await;
    }
    proxy.signal(signal);

    let mut cp = ControlPlaneHarness::start_with(cp.restart_options()).await;
    let proxy = ProxyProcess::start(&url, &token, data.path()).await;
    eventually("the old batches delivered and deleted", Duration::from_secs(20), || async {
        (answered_on_disk(data.path()) == 0).then_some(())
    })
    .await;
    proxy.signal("-TERM");
    cp.stop().await;
    assert_eq!(stored_answered(&cp, "durable-1"), (50, 50), "exactly 50 accounted: none lost, none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_a_proxy_stopped_with_sigterm_during_an_outage() {
    fifty_requests_survive_a_proxy_restart_during_an_outage("-TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_a_proxy_killed_with_sigkill_during_an_outage() {
    fifty_requests_survive_a_proxy_restart_during_an_outage("-KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delivered_again_after_a_crash_before_its_delete_counts_once() {
    // The crash window after the ack and before the file's delete: the same batch, with
    // its original identity, arrives twice.
    let cp = ControlPlaneHarness::start().await;
    let mut node = cp.node().await;
    let batch = pb::ReportBatch {
        node_id: "durable-2".into(),
        boot_id: "boot-old".into(),
        seq: 1,
        records: vec![pb::UsageRecord {
            minute_ms: 120_000,
            answered: 3,
            attempts: 3,
            succeeded: 3,
            latency_histogram: vec![3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(node.report(batch.clone()).await.unwrap().into_inner().applied);
    let again = pb::ReportBatch { sender_boot_id: "boot-new".into(), ..batch };
    assert!(!node.report(again).await.unwrap().into_inner().applied, "a redelivery is a duplicate");
}
