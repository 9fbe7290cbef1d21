//! The control plane on PostgreSQL (`SIDECAR_STORE=postgres://…`) end to end, on a fresh
//! database of the test server (`sidecar_control_plane::testing`): a proxy is configured
//! and accounted exactly as on sled; a second control plane on the same database reads
//! what the first wrote and continues its config versions; the first, restarted on the
//! database alone (a fresh data directory), comes back with everything and the proxy
//! converges on it. A write through either instance reaches proxies connected to the
//! other, and tokens made on one are accepted by the other.

use std::time::Duration;

use sidecar_proto::v1 as pb;
use sidecar_tests::{
    ControlPlaneHarness, Gateway, MockUpstream, Options, ProxyHarness, ProxyOptions, eventually, gateway::BackendDef,
};

async fn totals(admin: &mut sidecar_tests::control::AdminClient) -> Option<pb::UsageTotals> {
    admin.get_stats(pb::GetStatsRequest::default()).await.ok()?.into_inner().totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_postgresql_serves_accounts_and_comes_back_from_the_database() {
    let store = vec![("SIDECAR_STORE".to_string(), sidecar_control_plane::testing::database())];
    let mock = MockUpstream::start(&[]).await;
    let options = Options { env: store.clone(), ..Options::default() };
    let mut gw = Gateway::start_fleet(options, ProxyOptions::default()).await;
    gw.add_backend(&mock, BackendDef { cost: (100e-6, 200e-6), ..Default::default() }).await;
    for _ in 0..5 {
        assert_eq!(gw.proxy.chat("gpt-test").await.status().as_u16(), 200);
    }
    // Every request is accounted once, with the provider's tokens and the prices.
    let mut admin = gw.admin.clone();
    let t = eventually("usage in the database", Duration::from_secs(15), || {
        let mut admin = admin.clone();
        async move { totals(&mut admin).await.filter(|t| t.requests == 5) }
    })
    .await;
    assert_eq!((t.prompt_tokens, t.completion_tokens), (50, 25));
    assert!((t.cost_usd - 5.0 * (10.0 * 100e-6 + 5.0 * 200e-6)).abs() < 1e-12, "{}", t.cost_usd);

    // A second control plane on the same database: same backends and usage; its write
    // takes the next config version.
    let second = ControlPlaneHarness::start_with(Options {
        env: store.clone(),
        key_hex: Some(gw.cp.key_hex.clone()),
        admin_token: Some(gw.cp.admin_token.clone()),
        ..Options::default()
    })
    .await;
    let mut admin2 = second.admin().await;
    let health: serde_json::Value =
        reqwest::get(format!("http://{}/health", second.ops_addr)).await.unwrap().json().await.unwrap();
    assert_eq!(
        (health["store"].as_str(), health["store_reachable"].as_bool()),
        (Some("postgres"), Some(true)),
        "{health}"
    );
    let listed = admin2.list_backends(pb::ListBackendsRequest::default()).await.unwrap().into_inner().backends;
    assert_eq!(listed.len(), 1);
    assert_eq!(totals(&mut admin2).await.map(|t| t.requests), Some(5));
    let before = admin.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version;
    let pool = pb::CreatePoolRequest { name: "reserve".into(), ..Default::default() };
    let written = admin2.create_pool(pool).await.unwrap().into_inner();
    assert_eq!(written.config_version, before + 1, "versions continue across instances");
    // A write through one instance reaches proxies connected to the other (a
    // notification wakes it; it re-reads the version), and a token made on one works on
    // the other.
    let on_second = ProxyHarness::start(&second.url(), &second.node_token, ProxyOptions::default()).await;
    on_second.wait_version(written.config_version).await;
    gw.proxy.wait_version(written.config_version).await;
    let started = std::time::Instant::now();
    let pool = pb::CreatePoolRequest { name: "spare".into(), ..Default::default() };
    let through_first = admin.create_pool(pool).await.unwrap().into_inner();
    on_second.wait_version(through_first.config_version).await;
    eprintln!("a write through the first instance reached a proxy of the second in {:?}", started.elapsed());
    let viewer = pb::CreateTokenRequest { name: "reader".into(), role: pb::Role::Viewer as i32, ..Default::default() };
    let viewer = admin2.create_token(viewer).await.unwrap().into_inner().secret;
    let mut as_viewer = gw.cp.admin_as(Some(&viewer)).await;
    eventually("the second instance's token accepted by the first", Duration::from_secs(5), || {
        let mut c = as_viewer.clone();
        async move { c.list_backends(pb::ListBackendsRequest::default()).await.ok().map(|_| ()) }
    })
    .await;
    let _ = &mut as_viewer;

    // The first control plane restarted with a fresh data directory: everything it
    // serves comes from the database, and the proxy converges on the newest version.
    gw.cp.stop().await;
    let restarted =
        ControlPlaneHarness::start_with(Options { data_dir: None, env: store, ..gw.cp.restart_options() }).await;
    gw.proxy.wait_version(through_first.config_version).await;
    assert_eq!(gw.proxy.chat("gpt-test").await.status().as_u16(), 200);
    let mut admin3 = restarted.admin().await;
    let pools = admin3.list_pools(pb::ListPoolsRequest {}).await.unwrap().into_inner().pools;
    assert!(pools.iter().any(|p| p.name == "reserve") && pools.iter().any(|p| p.name == "spare"), "{pools:?}");
    eventually("the sixth request accounted", Duration::from_secs(15), || {
        let mut admin = admin3.clone();
        async move { totals(&mut admin).await.filter(|t| t.requests == 6) }
    })
    .await;
    assert_eq!(mock.served(), 6);
}

/// A proxy given both instances' URLs stays on the first while it works and moves to the
/// second when the first stops: writes through the second reach it, and its usage is
/// accounted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_two_control_urls_moves_to_the_second_when_the_first_stops() {
    let store = vec![("SIDECAR_STORE".to_string(), sidecar_control_plane::testing::database())];
    let mock = MockUpstream::start(&[]).await;
    let mut first = ControlPlaneHarness::start_with(Options { env: store.clone(), ..Options::default() }).await;
    let second = ControlPlaneHarness::start_with(Options {
        env: store,
        key_hex: Some(first.key_hex.clone()),
        admin_token: Some(first.admin_token.clone()),
        ..Options::default()
    })
    .await;
    let urls = format!("{},{}", first.url(), second.url());
    let proxy = ProxyHarness::start(&urls, &first.node_token, ProxyOptions::default()).await;
    let mut admin1 = first.admin().await;
    let backend = BackendDef::default();
    let created = admin1.create_backend(sidecar_tests::gateway::backend_request(&mock, &backend)).await.unwrap();
    proxy.wait_version(created.into_inner().config_version).await;
    assert_eq!(proxy.chat("gpt-test").await.status().as_u16(), 200);
    let nodes = admin1.list_nodes(pb::ListNodesRequest::default()).await.unwrap().into_inner().nodes;
    assert!(nodes.iter().any(|n| n.connected), "on the first instance: {nodes:?}");

    first.stop().await;
    let mut admin2 = second.admin().await;
    let pool = pb::CreatePoolRequest { name: "after".into(), ..Default::default() };
    let written = admin2.create_pool(pool).await.unwrap().into_inner();
    proxy.wait_version(written.config_version).await;
    assert_eq!(proxy.chat("gpt-test").await.status().as_u16(), 200);
    eventually("both requests accounted once", Duration::from_secs(15), || {
        let mut admin = admin2.clone();
        async move { totals(&mut admin).await.filter(|t| t.requests == 2) }
    })
    .await;
    assert_eq!(mock.served(), 2);
}

/// A dead first URL: the proxy gets its config from the second.
#[tokio::test]
async fn a_proxy_whose_first_control_url_is_down_uses_the_next() {
    let cp = ControlPlaneHarness::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let urls = format!("http://{dead},{}", cp.url());
    let proxy = ProxyHarness::start(&urls, &cp.node_token, ProxyOptions::default()).await;
    let version =
        cp.admin().await.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version;
    proxy.wait_version(version).await;
}
