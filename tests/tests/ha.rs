//! Several control planes on one PostgreSQL database act as one: the leader allocates for
//! the proxies of every instance, a 429 seen through one instance cools the backend on
//! the proxies of the other, and killing the leader under load fails no request, elects
//! another within seconds, keeps the provider's limit and loses no usage.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sidecar_control_plane::crypto::MasterKey;
use sidecar_proto::v1 as pb;
use sidecar_tests::{
    ControlPlaneHarness, Gateway, MockUpstream, Options, ProxyHarness, ProxyOptions, Reply, eventually,
    gateway::BackendDef,
};

const ADMIN: &str = "admin-token-0123456789abcdef";
const NODE: &str = "node-token-0123456789abcdef";

async fn health(ops: SocketAddr) -> Option<serde_json::Value> {
    reqwest::get(format!("http://{ops}/health")).await.ok()?.json().await.ok()
}

async fn wait_leader(ops: SocketAddr, timeout: Duration) -> Duration {
    let started = Instant::now();
    eventually("a leader", timeout, || async {
        health(ops).await.filter(|h| h["leader"].as_bool() == Some(true)).map(|_| ())
    })
    .await;
    started.elapsed()
}

fn named(store: &[(String, String)], name: &str) -> Vec<(String, String)> {
    let mut env = store.to_vec();
    env.push(("SIDECAR_INSTANCE_NAME".into(), name.into()));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_through_either_instance_cools_the_backend_on_proxies_of_the_other_within_250_ms() {
    let store = vec![("SIDECAR_STORE".to_string(), sidecar_control_plane::testing::database())];
    let x = MockUpstream::start(&[]).await;
    let y = MockUpstream::start(&[]).await;
    let cp = Options { env: named(&store, "cp-a"), ..Options::default() };
    let mut gw = Gateway::start_fleet(cp, ProxyOptions { node_id: "proxy-a".into(), ..Default::default() }).await;
    wait_leader(gw.cp.ops_addr, Duration::from_secs(10)).await;
    let second = ControlPlaneHarness::start_with(Options {
        env: named(&store, "cp-b"),
        key_hex: Some(gw.cp.key_hex.clone()),
        admin_token: Some(gw.cp.admin_token.clone()),
        ..Options::default()
    })
    .await;
    let h = health(second.ops_addr).await.unwrap();
    assert_eq!((h["leader"].as_bool(), h["instance"].as_str()), (Some(false), Some("cp-b")), "{h}");
    gw.settings(pb::SettingsPatch {
        cooldown_base_seconds: Some(1),
        cooldown_max_seconds: Some(8),
        near_recovery_wait_seconds: Some(0),
        emergency_fraction: Some(0.0),
        ..Default::default()
    })
    .await;
    let xb = gw.add_backend(&x, BackendDef { name: "x", ..Default::default() }).await;
    let spare = gw.add_backend(&y, BackendDef { name: "y", pool: "fallback", ..Default::default() }).await;
    let b = ProxyHarness::start(
        &second.url(),
        &second.node_token,
        ProxyOptions { node_id: "proxy-b".into(), ..Default::default() },
    )
    .await;
    b.wait_version(gw.proxy.version()).await;
    // proxy-b's instance does not allocate: its share comes from the leader, relayed.
    eventually("proxy-b has a share of y from the leader", Duration::from_secs(10), || async {
        let bundle = b.shared.bundle.load();
        (bundle.backend(&spare.id)?.state.limiter.lock().unwrap().limit() > 0).then_some(())
    })
    .await;
    // Both instances list both nodes, each on its instance.
    let nodes = second.admin().await.list_nodes(pb::ListNodesRequest::default()).await.unwrap().into_inner().nodes;
    let on = |id: &str| nodes.iter().find(|n| n.id == id).map(|n| (n.connected, n.instance.clone()));
    assert_eq!(on("proxy-a"), Some((true, "cp-a".to_string())), "{nodes:?}");
    assert_eq!(on("proxy-b"), Some((true, "cp-b".to_string())), "{nodes:?}");

    // A 429 at the leader's proxy cools x on the other instance's proxy.
    x.push(Reply::status(429));
    assert_eq!(gw.proxy.chat("gpt-test").await.headers()["x-sidecar-backend"], "y");
    let at_429 = x.calls_to("/v1/chat/completions").last().unwrap().at;
    eventually("proxy-b cools x", Duration::from_secs(2), || async { b.cooling(&xb.id) }).await;
    let leader_to_other = at_429.elapsed();
    // And after it, a 429 at the other instance's proxy escalates on the leader's proxy.
    eventually("x recovers at proxy-b", Duration::from_secs(5), || async { b.cooling(&xb.id).is_none().then_some(()) })
        .await;
    x.push(Reply::status(429));
    assert_eq!(b.chat("gpt-test").await.headers()["x-sidecar-backend"], "y");
    let at_429 = x.calls_to("/v1/chat/completions").last().unwrap().at;
    eventually("proxy-a cools x a second time", Duration::from_secs(2), || async {
        gw.proxy.cooling(&xb.id).filter(|&c| c == 2)
    })
    .await;
    let other_to_leader = at_429.elapsed();
    eprintln!("cooldown across instances: leader's proxy to the other's {leader_to_other:?}, back {other_to_leader:?}");
    assert!(leader_to_other <= Duration::from_millis(250), "{leader_to_other:?}");
    assert!(other_to_leader <= Duration::from_millis(250), "{other_to_leader:?}");
}

/// The `sidecar-control` binary cargo built for this test run.
fn control_binary() -> PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    dir.join("sidecar-control")
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A control plane as a process of its own, to be killed.
struct ControlProcess {
    child: Child,
    listen: SocketAddr,
    ops: SocketAddr,
    _data: tempfile::TempDir,
}

/// The providers' minute, compressed: the test sees several windows.
const WINDOW: Duration = Duration::from_secs(6);

impl ControlProcess {
    fn start(database: &str, key: &str, name: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let (listen, ops) = (free_port(), free_port());
        let child = Command::new(control_binary())
            .env_clear()
            .env("SIDECAR_STORE", database)
            .env("SIDECAR_INSTANCE_NAME", name)
            .env("SIDECAR_ENCRYPTION_KEY", key)
            .env("SIDECAR_ADMIN_TOKEN", ADMIN)
            .env("SIDECAR_NODE_TOKEN", NODE)
            .env("SIDECAR_DATA_DIR", data.path())
            .env("SIDECAR_RATE_WINDOW_MS", WINDOW.as_millis().to_string())
            .env("SIDECAR_GRANT_LEASE_MS", "2000")
            .env("SIDECAR_GRANT_INTERVAL_MS", "500")
            .env("SIDECAR_GRANT_PROPAGATION_MS", "500")
            .env("SIDECAR_LOG_LEVEL", "warn")
            .args(["--listen", &listen.to_string(), "--ops-listen", &ops.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sidecar-control starts");
        Self { child, listen, ops, _data: data }
    }

    fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    async fn admin(&self) -> sidecar_tests::control::AdminClient {
        sidecar_tests::control::admin_client(&self.url(), ADMIN).await
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_fails_no_request_keeps_the_limit_and_loses_no_usage() {
    let database = sidecar_control_plane::testing::database();
    let key = MasterKey::generate_hex();
    let a = ControlProcess::start(&database, &key, "cp-a");
    wait_leader(a.ops, Duration::from_secs(20)).await;
    let b = ControlProcess::start(&database, &key, "cp-b");
    eventually("cp-b up", Duration::from_secs(20), || async { health(b.ops).await.map(|_| ()) }).await;

    // A provider that enforces 120 per window, strictly.
    const LIMIT: u32 = 120;
    let mock = MockUpstream::start(&[]).await;
    mock.set_rpm_limit(LIMIT, WINDOW);
    let mut admin = a.admin().await;
    // No emergency reserve: every request is served on a share the leader granted.
    let patch = pb::SettingsPatch { emergency_fraction: Some(0.0), ..Default::default() };
    admin
        .update_settings(pb::UpdateSettingsRequest { patch: Some(patch), expected_resource_version: None })
        .await
        .unwrap();
    let def = BackendDef { rpm: i64::from(LIMIT), ..Default::default() };
    let created =
        admin.create_backend(sidecar_tests::gateway::backend_request(&mock, &def)).await.unwrap().into_inner();
    // Two proxies prefer the leader, one the other instance.
    let mut proxies = Vec::new();
    for (id, urls) in [("p1", [&a, &b]), ("p2", [&a, &b]), ("p3", [&b, &a])] {
        let urls = format!("{},{}", urls[0].url(), urls[1].url());
        let options = ProxyOptions { node_id: id.into(), rate_window: WINDOW, ..Default::default() };
        let p = ProxyHarness::start(&urls, NODE, options).await;
        p.wait_version(created.config_version).await;
        proxies.push(p);
    }

    // Four times the limit, skewed 3:1:3 over the three proxies (a proxy of each
    // instance could use the whole limit alone), for 16 s: requests queue at the proxies,
    // well within their queue timeout. The leader dies after 5 s.
    let until = Instant::now() + Duration::from_secs(16);
    let mut load = tokio::task::JoinSet::new();
    // 14 clients each asking every 150 ms: 93 per second against 20 allowed.
    for (i, p) in proxies.iter().enumerate() {
        let clients = if i == 1 { 2 } else { 6 };
        for _ in 0..clients {
            let client = p.clone_handle();
            load.spawn(async move {
                let mut statuses = Vec::new();
                let mut next = Instant::now();
                while Instant::now() < until {
                    let status =
                        client.try_post(&serde_json::json!({"model": "gpt-test", "messages": []}), "normal").await;
                    statuses.push((i, Instant::now(), status));
                    next += Duration::from_millis(150);
                    tokio::time::sleep_until(next.into()).await;
                }
                statuses
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed_at = Instant::now();
    a.kill();
    let takeover = wait_leader(b.ops, Duration::from_secs(10)).await;
    // An admin write through the survivor reaches every proxy.
    let mut admin = b.admin().await;
    let pool = pb::CreatePoolRequest { name: "after-failover".into(), ..Default::default() };
    let written = admin.create_pool(pool).await.unwrap().into_inner();
    for p in &proxies {
        p.wait_version(written.config_version).await;
    }
    let answers: Vec<(usize, Instant, u16)> = load.join_all().await.into_iter().flatten().collect();
    // Before the kill, each proxy was served (p3 through the instance that does not
    // lead).
    let before: Vec<usize> =
        (0..3).map(|i| answers.iter().filter(|(p, at, s)| *p == i && *at < killed_at && *s == 200).count()).collect();
    let per_proxy: Vec<usize> =
        (0..3).map(|i| answers.iter().filter(|(p, _, s)| *p == i && *s == 200).count()).collect();
    eprintln!("served per proxy before the kill {before:?}, in all {per_proxy:?}");
    assert!(before.iter().all(|n| *n > 0), "a proxy was not served before the kill: {before:?}");
    let statuses: Vec<u16> = answers.iter().map(|(_, _, s)| *s).collect();
    for p in &proxies {
        eventually("outbox delivered", Duration::from_secs(30), || async { p.shared.outbox.is_empty().then_some(()) })
            .await;
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    let sent = statuses.len();
    let totals = eventually("usage accounted", Duration::from_secs(15), || {
        let mut admin = admin.clone();
        async move {
            let t = admin.get_stats(pb::GetStatsRequest::default()).await.ok()?.into_inner().totals?;
            (t.requests as usize == sent).then_some(t)
        }
    })
    .await;
    eprintln!(
        "leader killed under load: {} requests, {} failed, new leader after {takeover:?}, provider 429s {}, \
         upstream served {}, control plane counted {} requests ({} succeeded)",
        statuses.len(),
        failed.len(),
        mock.violations(),
        mock.served(),
        totals.requests,
        totals.succeeded
    );
    assert!(failed.is_empty(), "failed client requests: {failed:?}");
    assert!(takeover <= Duration::from_secs(5), "new leader after {takeover:?}");
    assert_eq!(mock.violations(), 0, "the provider's limit was exceeded");
    assert_eq!(mock.served(), ok, "every success came from the provider once");
    assert_eq!(totals.succeeded as usize, mock.served(), "usage counted exactly once across the failover");
    // Without the leader for a while, the fleet still uses most of the limit.
    let windows = 16.0 / WINDOW.as_secs_f64();
    eprintln!("used {:.0}% of the limit over the run", 100.0 * ok as f64 / (windows * f64::from(LIMIT)));
    assert!(ok as f64 > 0.6 * windows * f64::from(LIMIT), "{ok} served");
}
