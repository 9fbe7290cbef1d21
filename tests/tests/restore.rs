//! A restore drill: export → a new store → import → the proxies converge, and the config
//! version never goes backwards. A fresh store starts its versions low, so an imported
//! config could otherwise arrive under a version a proxy already holds — with other
//! content — and the proxy, which skips a version it holds, would keep the old config.

use std::time::Duration;

use sidecar_proto::v1 as pb;
use sidecar_tests::{
    ControlPlaneHarness, Gateway, MockUpstream, Options, ProxyOptions, eventually, gateway::BackendDef,
};

async fn version(admin: &mut sidecar_tests::control::AdminClient) -> u64 {
    admin.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_config_reaches_proxies_that_held_a_newer_or_equal_version() {
    let (a, b) = (MockUpstream::start(&[]).await, MockUpstream::start(&[]).await);
    let mut gw = Gateway::start_fleet(Options::default(), ProxyOptions::default()).await;
    gw.add_backend(&a, BackendDef { name: "a", ..Default::default() }).await;
    let exported = gw.admin.export(pb::ExportRequest {}).await.unwrap().into_inner().document;
    let doc_version: u64 =
        serde_json::from_slice::<serde_json::Value>(&exported).unwrap()["config_version"].as_u64().unwrap();
    // After the export, a backend only b serves: the proxy runs a version the document lacks.
    gw.add_backend(&b, BackendDef { name: "b", models: &[("only-b", "x")], ..Default::default() }).await;
    let held = version(&mut gw.admin).await;
    assert!(held > doc_version);
    assert_eq!(gw.proxy.chat("only-b").await.status().as_u16(), 200);
    gw.cp.stop().await;

    // 1. A new store, imported while no proxy can reach it: the import lands above the
    //    document's version — here exactly the version the proxy holds, other content.
    let restored = ControlPlaneHarness::start_with(Options {
        key_hex: Some(gw.cp.key_hex.clone()),
        admin_token: Some(gw.cp.admin_token.clone()),
        ..Options::default()
    })
    .await;
    let mut admin = restored.admin().await;
    let imported = admin.import(pb::ImportRequest { document: exported.clone() }).await.unwrap().into_inner();
    assert!(imported.config_version > doc_version, "{} after a document of {doc_version}", imported.config_version);
    assert_eq!(imported.config_version, held, "the collision this drill is about");
    let mut restored = restored;
    restored.stop().await;
    // Now on the proxy's control-plane address: the proxy offers version `held`, the store
    // has `held` with other content. The proxy takes the store's config.
    let on_address = ControlPlaneHarness::start_with(Options {
        data_dir: Some(restored.data_dir.clone()),
        ..gw.cp.restart_options()
    })
    .await;
    eventually("the proxy drops the backend the restore removed", Duration::from_secs(15), || async {
        (gw.proxy.chat("only-b").await.status().as_u16() == 404).then_some(())
    })
    .await;
    assert_eq!(gw.proxy.chat("gpt-test").await.status().as_u16(), 200);

    // 2. Another new store on the proxy's address: the proxy, holding `held`, connects
    //    and the store raises its version above it (audited), so whatever it sends next
    //    is newer than anything the proxy ran; an import then lands above both.
    let mut on_address = on_address;
    on_address.stop().await;
    let fresh = ControlPlaneHarness::start_with(Options { data_dir: None, ..gw.cp.restart_options() }).await;
    let mut admin = fresh.admin().await;
    let raised = eventually("the store's version raised above the proxy's", Duration::from_secs(15), || {
        let mut admin = admin.clone();
        async move { Some(version(&mut admin).await).filter(|v| *v > held) }
    })
    .await;
    let imported = admin.import(pb::ImportRequest { document: exported }).await.unwrap().into_inner();
    assert!(imported.config_version > raised, "{} <= {raised}", imported.config_version);
    gw.proxy.wait_version(imported.config_version).await;
    assert_eq!(gw.proxy.chat("only-b").await.status().as_u16(), 404);
    assert_eq!(gw.proxy.chat("gpt-test").await.status().as_u16(), 200);
}
