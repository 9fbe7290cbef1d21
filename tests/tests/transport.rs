//! The API's edges: gRPC-web with CORS, standard health, and the ops port.

use sidecar_proto::v1 as pb;
use sidecar_tests::{ControlPlaneHarness, Options};

/// One unary call as gRPC-web (HTTP/1.1, `application/grpc-web+proto`).
async fn grpc_web(
    cp: &ControlPlaneHarness,
    path: &str,
    message: &impl prost::Message,
    origin: Option<&str>,
) -> reqwest::Response {
    let body = frame(message);
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", cp.url()))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {}", cp.admin_token))
        .body(body);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.unwrap()
}

/// Frames a protobuf message as one gRPC(-web) data frame.
fn frame(message: &impl prost::Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

#[tokio::test]
async fn grpc_web_calls_work_over_http1() {
    let cp = ControlPlaneHarness::start().await;
    let resp = grpc_web(&cp, "/sidecar.v1.AdminService/ListPools", &pb::ListPoolsRequest {}, None).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/grpc-web"));
    let body = resp.bytes().await.unwrap();
    assert_eq!(body[0], 0, "first frame is data");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let pools: pb::ListPoolsResponse = prost::Message::decode(&body[5..5 + len]).unwrap();
    assert_eq!(pools.pools.len(), 2);
}

#[tokio::test]
async fn cors_is_same_origin_only_by_default_and_allows_configured_origins() {
    let cp = ControlPlaneHarness::start().await;
    let preflight = |cp: &ControlPlaneHarness, origin: &str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{}/sidecar.v1.AdminService/ListPools", cp.url()))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,authorization,x-grpc-web")
            .send()
    };
    let resp = preflight(&cp, "https://evil.example").await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none(), "no origin allowed by default");

    let env = vec![("SIDECAR_CORS_ORIGINS".to_string(), "https://console.example".to_string())];
    let cp2 = ControlPlaneHarness::start_with(Options { env, ..Options::default() }).await;
    let resp = preflight(&cp2, "https://console.example").await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://console.example");
    let resp = preflight(&cp2, "https://evil.example").await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let resp =
        grpc_web(&cp2, "/sidecar.v1.AdminService/ListPools", &pb::ListPoolsRequest {}, Some("https://console.example"))
            .await;
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://console.example");
    assert!(resp.headers()["access-control-expose-headers"].to_str().unwrap().contains("grpc-status"));
}

#[tokio::test]
async fn standard_health_service_reports_serving() {
    let cp = ControlPlaneHarness::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(cp.channel().await);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest { service: "sidecar.v1.AdminService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
}

#[tokio::test]
async fn ops_port_serves_health_and_described_metrics() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    admin.list_pools(pb::ListPoolsRequest {}).await.unwrap();
    let _ = admin.get_backend(pb::GetBackendRequest { id: "missing".into() }).await;
    let health: serde_json::Value =
        reqwest::get(format!("http://{}/health", cp.ops_addr)).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert!(health["config_version"].as_u64().unwrap() >= 1);
    assert_eq!((health["store"].as_str(), health["store_reachable"].as_bool()), (Some("sled"), Some(true)));
    let metrics = reqwest::get(format!("http://{}/metrics", cp.ops_addr)).await.unwrap().text().await.unwrap();
    for needle in [
        "# HELP sidecar_control_admin_requests_total",
        "# TYPE sidecar_control_admin_requests_total counter",
        "sidecar_control_admin_requests_total{method=\"ListPools\",code=\"OK\"}",
        "sidecar_control_admin_requests_total{method=\"GetBackend\",code=\"NOT_FOUND\"}",
        "sidecar_control_config_version",
        "sidecar_control_store_size_bytes",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    assert!(!metrics.contains(&cp.admin_token));
    assert_eq!(reqwest::get(format!("http://{}/nope", cp.ops_addr)).await.unwrap().status(), 404);
}

#[tokio::test]
async fn the_console_is_served_on_the_api_port_with_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html><h1>Sidecar console</h1>").unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("assets/app.js"), "console.log('hi')").unwrap();
    let env = vec![("SIDECAR_CONSOLE_DIR".to_string(), dir.path().display().to_string())];
    let cp = ControlPlaneHarness::start_with(Options { env, ..Options::default() }).await;
    let index = reqwest::get(format!("{}/", cp.url())).await.unwrap();
    assert_eq!(index.status(), 200);
    let csp = index.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"), "{csp}");
    assert!(index.text().await.unwrap().contains("Sidecar console"));
    let js = reqwest::get(format!("{}/assets/app.js", cp.url())).await.unwrap();
    assert!(js.headers()["content-type"].to_str().unwrap().contains("javascript"));
    let deep = reqwest::get(format!("{}/providers", cp.url())).await.unwrap();
    assert!(deep.text().await.unwrap().contains("Sidecar console"), "console routes fall back to index.html");
    // gRPC-web still answers on the same port.
    let resp = grpc_web(&cp, "/sidecar.v1.AdminService/ListPools", &pb::ListPoolsRequest {}, None).await;
    assert_eq!(resp.status(), 200);

    let bare = ControlPlaneHarness::start().await;
    let page = reqwest::get(format!("{}/", bare.url())).await.unwrap();
    if page.status() == 404 {
        assert!(page.text().await.unwrap().contains("not built"));
    }
}
