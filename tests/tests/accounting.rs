//! Exactly-once accounting across control-plane crashes: traffic through two proxies
//! while the control plane (a real process) is killed with SIGKILL and restarted twice;
//! afterwards its `succeeded` equals what the upstream served, exactly.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sidecar_control_plane::crypto::MasterKey;
use sidecar_tests::{MockUpstream, ProxyHarness, ProxyOptions, eventually};

const ADMIN: &str = "admin-token-0123456789abcdef";
const NODE: &str = "node-token-0123456789abcdef";

/// The `sidecar-control` binary cargo built for this test run.
fn control_binary() -> PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let bin = dir.join("sidecar-control");
    assert!(bin.exists(), "{} is missing: run the tests with `cargo test --workspace`", bin.display());
    bin
}

struct ControlProcess {
    child: Child,
}

impl ControlProcess {
    fn start(data: &Path, key: &str, listen: SocketAddr) -> Self {
        let child = Command::new(control_binary())
            .env_clear()
            .env("SIDECAR_ENCRYPTION_KEY", key)
            .env("SIDECAR_ADMIN_TOKEN", ADMIN)
            .env("SIDECAR_NODE_TOKEN", NODE)
            .env("SIDECAR_DATA_DIR", data)
            .env("SIDECAR_LOG_LEVEL", "warn")
            .args(["--listen", &listen.to_string(), "--ops-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sidecar-control starts");
        Self { child }
    }

    async fn ready(listen: SocketAddr) {
        eventually("control plane listening", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(listen).await.ok().map(|_| ())
        })
        .await;
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn terminate(mut self) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert_eq!(self.child.wait().unwrap().code(), Some(0));
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_equals_upstream_served_across_two_control_plane_kills() {
    let data = tempfile::tempdir().unwrap();
    let key = MasterKey::generate_hex();
    let listen = free_port();
    let url = format!("http://{listen}");
    let mock = MockUpstream::start(&[]).await;

    let cp = ControlProcess::start(data.path(), &key, listen);
    ControlProcess::ready(listen).await;
    let channel = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let auth = format!("Bearer {ADMIN}");
    let mut admin = sidecar_proto::v1::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", auth.parse().unwrap());
            Ok(r)
        },
    );
    let mut mappings = std::collections::HashMap::new();
    mappings.insert(
        "gpt-test".to_string(),
        sidecar_proto::v1::ModelMapping { native_id: "n".into(), ..Default::default() },
    );
    let created = admin
        .create_backend(sidecar_proto::v1::CreateBackendRequest {
            backend: Some(sidecar_proto::v1::BackendSpec {
                name: "b".into(),
                base_url: mock.base_url(),
                api_key: "sk-0123456789abcdef".into(),
                rpm_limit: Some(100_000),
                model_mappings: mappings,
                ..Default::default()
            }),
            validate: false,
        })
        .await
        .unwrap()
        .into_inner();
    drop(admin);
    let mut proxies = Vec::new();
    for id in ["acct-1", "acct-2"] {
        let p = ProxyHarness::start(&url, NODE, ProxyOptions { node_id: id.into(), ..Default::default() }).await;
        p.wait_version(created.config_version).await;
        proxies.push(p);
    }

    // Steady traffic through both proxies while the control plane dies twice.
    let until = Instant::now() + Duration::from_secs(7);
    let mut load = tokio::task::JoinSet::new();
    for p in &proxies {
        let client = p.clone_handle();
        load.spawn(async move {
            let mut n = 0u32;
            while Instant::now() < until {
                client.try_post(&serde_json::json!({"model": "gpt-test", "messages": []}), "normal").await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        });
    }
    let mut cp = Some(cp);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cp.take().unwrap().kill();
        tokio::time::sleep(Duration::from_millis(800)).await;
        cp = Some(ControlProcess::start(data.path(), &key, listen));
        ControlProcess::ready(listen).await;
    }
    let sent: u32 = load.join_all().await.iter().sum();
    for p in &mut proxies {
        eventually("outbox delivered", Duration::from_secs(30), || async { p.shared.outbox.is_empty().then_some(()) })
            .await;
        p.stop().await;
    }
    cp.take().unwrap().terminate();

    let store = sidecar_control_plane::store::Store::open(data.path()).unwrap();
    let rows = store.usage_minutes(0, i64::MAX).unwrap();
    let succeeded: u64 = rows.iter().map(|r| r.3.succeeded).sum();
    let answered: u64 = rows.iter().map(|r| r.3.answered).sum();
    eprintln!("sent {sent}, upstream served {}, control plane counted {succeeded} succeeded", mock.served());
    assert!(mock.served() > 100, "enough traffic to mean something");
    assert_eq!(succeeded, mock.served() as u64, "not one lost, not one counted twice");
    assert_eq!(answered, u64::from(sent), "every client request accounted once");
}
