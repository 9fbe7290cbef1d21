//! Durability and keys: restart, encryption at rest, rotation, export/import, V1 env.

use std::{collections::HashMap, time::Duration};

use sidecar_control_plane::crypto::MasterKey;
use sidecar_proto::v1::{self as pb, control_message, node_message};
use sidecar_tests::{ControlPlaneHarness, Options};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const KEY: &str = "sk-PLAINTEXT-SECRET-do-not-leak-987654321";

fn create(name: &str, key: &str) -> pb::CreateBackendRequest {
    let mut mappings = HashMap::new();
    mappings.insert("gpt-4o".to_string(), pb::ModelMapping { native_id: "openai/gpt-4o".into(), ..Default::default() });
    pb::CreateBackendRequest {
        backend: Some(pb::BackendSpec {
            name: name.into(),
            base_url: "https://api.example.com/v1".into(),
            api_key: key.into(),
            model_mappings: mappings,
            ..Default::default()
        }),
        validate: false,
    }
}

/// The API keys a node receives, by backend name.
async fn node_keys(cp: &ControlPlaneHarness) -> HashMap<String, String> {
    let (tx, out) = mpsc::channel(4);
    let hello = pb::Hello { node_id: "key-check".into(), boot_id: "b".into(), ..Default::default() };
    tx.send(pb::NodeMessage { kind: Some(node_message::Kind::Hello(hello)) }).await.unwrap();
    let mut rx = cp.node().await.sync(ReceiverStream::new(out)).await.unwrap().into_inner();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), rx.message()).await.unwrap().unwrap().unwrap();
        // Quota grants may come first; the snapshot follows.
        if let Some(control_message::Kind::Snapshot(s)) = msg.kind {
            return s.backends.into_iter().map(|b| (b.name, b.api_key)).collect();
        }
    }
}

fn dir_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn restart_keeps_everything_and_the_config_version_keeps_rising() {
    let mut cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let b = admin.create_backend(create("keeper", KEY)).await.unwrap().into_inner();
    admin.create_pool(pb::CreatePoolRequest { name: "extra".into(), ..Default::default() }).await.unwrap();
    admin
        .update_settings(pb::UpdateSettingsRequest {
            patch: Some(pb::SettingsPatch { queue_capacity: Some(42), ..Default::default() }),
            expected_resource_version: None,
        })
        .await
        .unwrap();
    let viewer = admin
        .create_token(pb::CreateTokenRequest { role: pb::Role::Viewer as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let before = admin.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version;
    drop(admin);
    cp.stop().await;

    let cp2 = ControlPlaneHarness::start_with(cp.restart_options()).await;
    let mut admin = cp2.admin().await;
    let after = admin.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version;
    assert!(after >= before, "config version went backwards: {before} -> {after}");
    let got = admin.get_backend(pb::GetBackendRequest { id: "keeper".into() }).await.unwrap().into_inner();
    assert_eq!(got, b.backend.unwrap());
    let pools = admin.list_pools(pb::ListPoolsRequest {}).await.unwrap().into_inner().pools;
    assert!(pools.iter().any(|p| p.name == "extra"));
    let s = admin.get_settings(pb::GetSettingsRequest {}).await.unwrap().into_inner();
    assert_eq!(s.settings.unwrap().queue_capacity, 42);
    let mut as_viewer = cp2.admin_as(Some(&viewer.secret)).await;
    assert!(as_viewer.list_backends(pb::ListBackendsRequest::default()).await.is_ok(), "tokens survive");
    let next = admin
        .delete_backend(pb::DeleteBackendRequest { id: "keeper".into(), expected_resource_version: None })
        .await
        .unwrap();
    assert!(next.into_inner().config_version > before);
    assert_eq!(node_keys(&cp2).await.len(), 0);
}

#[tokio::test]
async fn the_data_dir_never_holds_the_plaintext_key() {
    let mut cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    admin.create_backend(create("secret", KEY)).await.unwrap();
    assert_eq!(node_keys(&cp).await["secret"], KEY);
    drop(admin);
    cp.stop().await;
    assert!(!dir_contains(&cp.data_dir, KEY.as_bytes()), "plaintext key found in the data dir");
    assert!(!dir_contains(&cp.data_dir, cp.admin_token.as_bytes()), "plaintext admin token found in the data dir");
    // The check can see things: the backend's name is there in clear.
    assert!(dir_contains(&cp.data_dir, b"secret"));
}

#[tokio::test]
async fn rotation_keeps_every_backend_usable_and_the_old_key_is_then_refused() {
    let mut cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    admin.create_backend(create("one", "sk-one-0123456789abcdef")).await.unwrap();
    admin.create_backend(create("two", "sk-two-0123456789abcdef")).await.unwrap();
    let old_id =
        admin.get_backend(pb::GetBackendRequest { id: "one".into() }).await.unwrap().into_inner().api_key_key_id;

    let err =
        admin.rotate_encryption_key(pb::RotateEncryptionKeyRequest { new_key_hex: "abc".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("new_key_hex"));

    let new_hex = MasterKey::generate_hex();
    let r = admin
        .rotate_encryption_key(pb::RotateEncryptionKeyRequest { new_key_hex: new_hex.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.keys_reencrypted, 2);
    assert_eq!(r.old_key_id, old_id);
    assert_ne!(r.new_key_id, old_id);
    let listed = admin.list_backends(pb::ListBackendsRequest::default()).await.unwrap().into_inner().backends;
    assert!(listed.iter().all(|b| b.api_key_key_id == r.new_key_id));
    let keys = node_keys(&cp).await;
    assert_eq!((keys["one"].as_str(), keys["two"].as_str()), ("sk-one-0123456789abcdef", "sk-two-0123456789abcdef"));
    // New backends are sealed with the new key too.
    admin.create_backend(create("three", "sk-three-0123456789abcdef")).await.unwrap();
    drop(admin);
    cp.stop().await;

    let old = Options { key_hex: Some(cp.key_hex.clone()), ..cp.restart_options() };
    let err = ControlPlaneHarness::try_start(old).await.err().expect("the old key is refused");
    assert!(err.to_string().contains(&r.new_key_id), "{err}");

    let restarted = ControlPlaneHarness::start_with(Options { key_hex: Some(new_hex), ..cp.restart_options() }).await;
    let keys = node_keys(&restarted).await;
    assert_eq!(keys.len(), 3);
    assert_eq!(keys["three"], "sk-three-0123456789abcdef");
}

#[tokio::test]
async fn export_then_wipe_then_import_restores_everything() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    admin
        .create_pool(pb::CreatePoolRequest {
            name: "reserve".into(),
            description: "last resort".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut spec = create("a", "sk-aaaa-0123456789abcdef");
    spec.backend.as_mut().unwrap().pool = "reserve".into();
    admin.create_backend(spec).await.unwrap();
    admin.create_backend(create("b", "sk-bbbb-0123456789abcdef")).await.unwrap();
    admin
        .update_settings(pb::UpdateSettingsRequest {
            patch: Some(pb::SettingsPatch { cooldown_max_seconds: Some(900), ..Default::default() }),
            expected_resource_version: None,
        })
        .await
        .unwrap();
    // Client keys: one with a scope and limits, one revoked.
    let limited = pb::CreateKeyRequest {
        name: "ci".into(),
        team: "build".into(),
        pools: vec!["reserve".into()],
        rpm_limit: 30,
        tpm_limit: 20_000,
        max_concurrent: 4,
        budget_usd: 5.0,
        budget_period: pb::BudgetPeriod::Day as i32,
        ..Default::default()
    };
    let ci = admin.create_key(limited).await.unwrap().into_inner();
    let old = admin.create_key(pb::CreateKeyRequest { name: "old".into(), ..Default::default() }).await.unwrap();
    let old = old.into_inner().key.unwrap();
    admin.revoke_key(pb::RevokeKeyRequest { id: old.id.clone() }).await.unwrap();
    let all_keys = pb::ListKeysRequest { include_revoked: true };
    let keys_before = admin.list_keys(all_keys).await.unwrap().into_inner().keys;
    let exported = admin.export(pb::ExportRequest {}).await.unwrap().into_inner();
    let text = String::from_utf8(exported.document.clone()).unwrap();
    assert!(!text.contains("sk-aaaa-0123456789abcdef"), "keys stay sealed in exports");
    assert!(!text.contains(&ci.secret[6..]), "no client key secret in exports");
    assert!(text.contains("key_id"));
    let backends_before = admin.list_backends(pb::ListBackendsRequest::default()).await.unwrap().into_inner().backends;
    let pools_before = admin.list_pools(pb::ListPoolsRequest {}).await.unwrap().into_inner().pools;
    let settings_before = admin.get_settings(pb::GetSettingsRequest {}).await.unwrap().into_inner().settings;

    // Wipe: a new control plane on a fresh data dir with the same key.
    let fresh =
        ControlPlaneHarness::start_with(Options { key_hex: Some(cp.key_hex.clone()), ..Options::default() }).await;
    let mut admin2 = fresh.admin().await;
    admin2.create_backend(create("stray", "sk-stray-0123456789abcdef")).await.unwrap();
    let stray = admin2.create_key(pb::CreateKeyRequest { name: "stray".into(), ..Default::default() }).await.unwrap();
    let stray = stray.into_inner().key.unwrap();
    let imported = admin2.import(pb::ImportRequest { document: exported.document.clone() }).await.unwrap().into_inner();
    assert_eq!((imported.backends, imported.pools), (2, 3));
    assert_eq!(
        admin2.list_backends(pb::ListBackendsRequest::default()).await.unwrap().into_inner().backends,
        backends_before
    );
    assert_eq!(admin2.list_pools(pb::ListPoolsRequest {}).await.unwrap().into_inner().pools, pools_before);
    assert_eq!(admin2.get_settings(pb::GetSettingsRequest {}).await.unwrap().into_inner().settings, settings_before);
    let keys = node_keys(&fresh).await;
    assert_eq!(keys["a"], "sk-aaaa-0123456789abcdef", "imported keys decrypt");
    // The client keys are the document's; a key only the new store had is revoked.
    let keys_after = admin2.list_keys(all_keys).await.unwrap().into_inner().keys;
    let (strays, imported_keys): (Vec<_>, Vec<_>) = keys_after.into_iter().partition(|k| k.id == stray.id);
    assert_eq!(imported_keys, keys_before);
    assert!(strays[0].revoked_at_ms > 0, "{strays:?}");
    // A document from before client keys leaves the store's keys as they are.
    let mut old_doc: serde_json::Value = serde_json::from_slice(&exported.document).unwrap();
    old_doc.as_object_mut().unwrap().remove("client_keys");
    let later = admin2.create_key(pb::CreateKeyRequest { name: "later".into(), ..Default::default() }).await.unwrap();
    let later = later.into_inner().key.unwrap().id;
    let old_doc = serde_json::to_vec(&old_doc).unwrap();
    admin2.import(pb::ImportRequest { document: old_doc }).await.unwrap();
    let live = admin2.list_keys(pb::ListKeysRequest::default()).await.unwrap().into_inner().keys;
    assert!(live.iter().any(|k| k.id == later), "{live:?}");
    // A bad key in a document is named and nothing is written.
    let mut bad: serde_json::Value = serde_json::from_slice(&exported.document).unwrap();
    bad["client_keys"][0]["max_concurrent"] = serde_json::json!(100_000_001u64);
    let err = admin2.import(pb::ImportRequest { document: serde_json::to_vec(&bad).unwrap() }).await.unwrap_err();
    assert!(err.message().contains("document.client_keys[0].max_concurrent"), "{}", err.message());

    // A control plane with another key refuses the file and changes nothing.
    let other = ControlPlaneHarness::start().await;
    let mut admin3 = other.admin().await;
    admin3.create_backend(create("mine", "sk-mine-0123456789abcdef")).await.unwrap();
    let err = admin3.import(pb::ImportRequest { document: exported.document }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("key id"), "{}", err.message());
    let names: Vec<_> = admin3
        .list_backends(pb::ListBackendsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .backends
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["mine"]);
    let err = admin3.import(pb::ImportRequest { document: b"{not json".to_vec() }).await.unwrap_err();
    assert!(err.message().starts_with("document"), "{}", err.message());
}

#[tokio::test]
async fn v1_environment_becomes_one_env_backend_once() {
    let env = vec![
        ("SIDECAR_UPSTREAM".to_string(), "https://v1.example.com/v1".to_string()),
        ("SIDECAR_API_KEY".to_string(), "sk-v1-0123456789abcdef".to_string()),
        ("SIDECAR_RATE_RPM".to_string(), "25".to_string()),
    ];
    let mut cp = ControlPlaneHarness::start_with(Options { env: env.clone(), ..Options::default() }).await;
    let mut admin = cp.admin().await;
    let backends = admin.list_backends(pb::ListBackendsRequest::default()).await.unwrap().into_inner().backends;
    assert_eq!(backends.len(), 1);
    let b = &backends[0];
    assert_eq!(
        (b.source(), b.rpm_limit, b.base_url.as_str()),
        (pb::BackendSource::Env, 25, "https://v1.example.com/v1")
    );
    assert!(b.model_mappings.contains_key("*"), "a V1 upstream serves any model");
    admin.delete_backend(pb::DeleteBackendRequest { id: b.id.clone(), expected_resource_version: None }).await.unwrap();
    drop(admin);
    cp.stop().await;
    let again = ControlPlaneHarness::start_with(Options { env, ..cp.restart_options() }).await;
    let mut admin = again.admin().await;
    assert!(
        admin.list_backends(pb::ListBackendsRequest::default()).await.unwrap().into_inner().backends.is_empty(),
        "the migration runs once; a deleted env backend does not come back"
    );
}
