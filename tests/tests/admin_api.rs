//! AdminService end to end: every RPC, auth, validation, optimistic concurrency.

use std::collections::HashMap;

use sidecar_proto::v1 as pb;
use sidecar_tests::{ControlPlaneHarness, MockUpstream, Options};
use tonic::Code;

const KEY: &str = "sk-live-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123";

fn spec(name: &str, base_url: &str) -> pb::BackendSpec {
    let mut mappings = HashMap::new();
    mappings.insert(
        "gpt-4o".to_string(),
        pb::ModelMapping {
            native_id: "openai/gpt-4o".into(),
            cost: Some(pb::ModelCost { input: 2.5e-6, output: 1e-5, ..Default::default() }),
            ..Default::default()
        },
    );
    pb::BackendSpec {
        name: name.into(),
        base_url: base_url.into(),
        api_key: KEY.into(),
        rpm_limit: Some(60),
        model_mappings: mappings,
        ..Default::default()
    }
}

fn create(spec: pb::BackendSpec) -> pb::CreateBackendRequest {
    pb::CreateBackendRequest { backend: Some(spec), validate: false }
}

#[tokio::test]
async fn backend_crud_round_trip_masks_the_key() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let v0 = admin.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version;

    let created =
        admin.create_backend(create(spec("nvidia-1", "https://api.example.com/v1/"))).await.unwrap().into_inner();
    let b = created.backend.unwrap();
    assert!(b.id.starts_with("bkd_"));
    assert_eq!(b.base_url, "https://api.example.com/v1", "trailing slash dropped");
    assert_eq!(b.api_key_masked, "sk-liv****0123");
    assert_eq!(
        (b.rpm_limit, b.pool.as_str(), b.source(), b.status()),
        (60, "primary", pb::BackendSource::Api, pb::BackendStatus::Healthy)
    );
    assert!(created.config_version > v0);

    let got = admin.get_backend(pb::GetBackendRequest { id: "nvidia-1".into() }).await.unwrap().into_inner();
    assert_eq!(got.id, b.id, "get by name");
    let listed = admin.list_backends(pb::ListBackendsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.backends.len(), 1);
    assert!(!format!("{listed:?}").contains(KEY), "plaintext key never leaves the API");

    let patch = pb::BackendPatch { rpm_limit: Some(90), label: Some("nvidia".into()), ..Default::default() };
    let updated = admin
        .update_backend(pb::UpdateBackendRequest {
            id: b.id.clone(),
            patch: Some(patch),
            expected_resource_version: Some(1),
            validate: false,
        })
        .await
        .unwrap()
        .into_inner();
    let u = updated.backend.unwrap();
    assert_eq!((u.rpm_limit, u.label.as_str(), u.resource_version), (90, "nvidia", 2));
    assert_eq!(u.model_mappings["gpt-4o"].native_id, "openai/gpt-4o", "untouched fields stay");
    assert!(updated.config_version > created.config_version);

    let deleted = admin
        .delete_backend(pb::DeleteBackendRequest { id: b.id.clone(), expected_resource_version: None })
        .await
        .unwrap();
    assert!(deleted.into_inner().config_version > updated.config_version);
    let err = admin.get_backend(pb::GetBackendRequest { id: b.id }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn a_stale_resource_version_is_rejected() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let b =
        admin.create_backend(create(spec("a", "https://a.example/v1"))).await.unwrap().into_inner().backend.unwrap();
    let patch = || Some(pb::BackendPatch { weight: Some(2), ..Default::default() });
    admin
        .update_backend(pb::UpdateBackendRequest {
            id: b.id.clone(),
            patch: patch(),
            expected_resource_version: Some(1),
            validate: false,
        })
        .await
        .unwrap();
    let err = admin
        .update_backend(pb::UpdateBackendRequest {
            id: b.id.clone(),
            patch: patch(),
            expected_resource_version: Some(1),
            validate: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("resource version 2"), "{}", err.message());
    let err = admin
        .delete_backend(pb::DeleteBackendRequest { id: b.id.clone(), expected_resource_version: Some(1) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let s = admin.get_settings(pb::GetSettingsRequest {}).await.unwrap().into_inner();
    let err = admin
        .update_settings(pb::UpdateSettingsRequest {
            patch: Some(pb::SettingsPatch { queue_capacity: Some(10), ..Default::default() }),
            expected_resource_version: Some(s.resource_version + 5),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn every_invalid_input_is_invalid_argument_naming_the_field() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    admin.create_backend(create(spec("taken", "https://a.example/v1"))).await.unwrap();

    let base = || spec("fresh", "https://b.example/v1");
    let cases: Vec<(&str, pb::BackendSpec)> = vec![
        ("backend.name", pb::BackendSpec { name: "".into(), ..base() }),
        ("backend.name", pb::BackendSpec { name: "TAKEN".into(), ..base() }),
        ("backend.rpm_limit", pb::BackendSpec { rpm_limit: Some(0), ..base() }),
        ("backend.rpm_limit", pb::BackendSpec { rpm_limit: Some(-5), ..base() }),
        ("backend.base_url", pb::BackendSpec { base_url: "ftp://x.example/v1".into(), ..base() }),
        ("backend.base_url", pb::BackendSpec { base_url: "".into(), ..base() }),
        ("backend.api_key", pb::BackendSpec { api_key: "".into(), ..base() }),
        ("backend.pool", pb::BackendSpec { pool: "nope".into(), ..base() }),
        ("backend.tpm_limit", pb::BackendSpec { tpm_limit: -1, ..base() }),
        ("backend.timeout_seconds", pb::BackendSpec { timeout_seconds: -1, ..base() }),
        ("backend.window_seconds", pb::BackendSpec { window_seconds: 61, ..base() }),
        ("backend.window_seconds", pb::BackendSpec { window_seconds: -10, ..base() }),
        // 5 RPM enforced per 10 s would allow 0.83 requests per window.
        ("backend.window_seconds", pb::BackendSpec { rpm_limit: Some(5), window_seconds: 10, ..base() }),
        ("backend.weight", pb::BackendSpec { weight: Some(0), ..base() }),
        ("backend.regions[0]", pb::BackendSpec { regions: vec!["".into()], ..base() }),
        ("backend.source", pb::BackendSpec { source: 9, ..base() }),
        ("backend.model_mappings[\"gpt-4o\"].native_id", {
            let mut s = base();
            s.model_mappings.get_mut("gpt-4o").unwrap().native_id = "".into();
            s
        }),
    ];
    for (field, spec) in cases {
        let err = admin.create_backend(create(spec)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {}", err.message());
        assert!(err.message().starts_with(field), "expected {field} in {:?}", err.message());
        assert_eq!(err.metadata().get("sidecar-field").unwrap().to_str().unwrap(), field);
    }
    let err = admin.create_backend(pb::CreateBackendRequest { backend: None, validate: false }).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "backend: is required"));

    let err = admin
        .update_backend(pb::UpdateBackendRequest {
            id: "taken".into(),
            patch: Some(pb::BackendPatch { rpm_limit: Some(0), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("patch.rpm_limit"), "{}", err.message());
    let err =
        admin.create_pool(pb::CreatePoolRequest { name: "bad name".into(), ..Default::default() }).await.unwrap_err();
    assert!(err.message().starts_with("name"), "{}", err.message());
    let err = admin
        .update_settings(pb::UpdateSettingsRequest {
            patch: Some(pb::SettingsPatch { cooldown_base_seconds: Some(0), ..Default::default() }),
            expected_resource_version: None,
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("patch.cooldown_base_seconds"), "{}", err.message());
    let err = admin.create_token(pb::CreateTokenRequest { role: 7, ..Default::default() }).await.unwrap_err();
    assert!(err.message().starts_with("role"), "{}", err.message());

    // Nothing invalid was stored.
    let listed = admin.list_backends(pb::ListBackendsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.backends.len(), 1);
}

#[tokio::test]
async fn tokens_and_roles_gate_the_api() {
    let cp = ControlPlaneHarness::start().await;
    let mut none = cp.admin_as(None).await;
    assert_eq!(none.list_backends(pb::ListBackendsRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);
    let mut wrong = cp.admin_as(Some("not-a-token")).await;
    assert_eq!(
        wrong.list_backends(pb::ListBackendsRequest::default()).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let mut admin = cp.admin().await;
    let viewer = admin
        .create_token(pb::CreateTokenRequest {
            role: pb::Role::Viewer as i32,
            name: "ops".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(viewer.secret.starts_with("sct_"));
    let mut as_viewer = cp.admin_as(Some(&viewer.secret)).await;
    assert!(as_viewer.list_backends(pb::ListBackendsRequest::default()).await.is_ok(), "viewer reads");
    let err = as_viewer.create_backend(create(spec("x", "https://x.example/v1"))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "viewer cannot write");
    assert_eq!(
        as_viewer.export(pb::ExportRequest {}).await.unwrap_err().code(),
        Code::PermissionDenied,
        "export carries sealed keys"
    );

    let mut as_node = cp.admin_as(Some(&cp.node_token)).await;
    assert_eq!(
        as_node.list_backends(pb::ListBackendsRequest::default()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut admin_on_node = cp.node_as(Some(&cp.admin_token)).await;
    let err = admin_on_node
        .report(pb::ReportBatch { node_id: "n".into(), boot_id: "b".into(), seq: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "admin tokens are not node tokens");

    let tokens = admin.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    assert!(tokens.iter().any(|t| t.id == viewer.token.as_ref().unwrap().id && t.role() == pb::Role::Viewer));
    assert!(!format!("{tokens:?}").contains(&viewer.secret), "secrets are never listed");
    admin.revoke_token(pb::RevokeTokenRequest { id: viewer.token.unwrap().id }).await.unwrap();
    assert_eq!(
        as_viewer.list_backends(pb::ListBackendsRequest::default()).await.unwrap_err().code(),
        Code::Unauthenticated,
        "revoked"
    );
    let err = admin.revoke_token(pb::RevokeTokenRequest { id: "tok_env_admin".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "the last admin token stays");
}

#[tokio::test]
async fn without_a_configured_admin_token_one_is_generated_and_works() {
    let cp = ControlPlaneHarness::start_with(Options { admin_token: None, ..Options::default() }).await;
    assert!(cp.admin_token.starts_with("sct_"));
    let mut admin = cp.admin().await;
    let tokens = admin.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    assert_eq!(tokens.iter().filter(|t| t.role() == pb::Role::Admin).count(), 1);
}

#[tokio::test]
async fn pools_are_ordered_and_a_pool_in_use_cannot_be_deleted() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let pools = admin.list_pools(pb::ListPoolsRequest {}).await.unwrap().into_inner().pools;
    let names: Vec<_> = pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["primary", "fallback"], "built-in pools exist from first start");

    admin.create_pool(pb::CreatePoolRequest { name: "reserve".into(), ..Default::default() }).await.unwrap();
    let err =
        admin.create_pool(pb::CreatePoolRequest { name: "reserve".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let pools = admin.list_pools(pb::ListPoolsRequest {}).await.unwrap().into_inner().pools;
    assert_eq!(pools.last().unwrap().name, "reserve", "new pools go last");

    let mut s = spec("r1", "https://r.example/v1");
    s.pool = "reserve".into();
    admin.create_backend(create(s)).await.unwrap();
    let err = admin.delete_pool(pb::DeletePoolRequest { name: "reserve".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("r1"), "{}", err.message());
    let err = admin.delete_pool(pb::DeletePoolRequest { name: "primary".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    admin.delete_backend(pb::DeleteBackendRequest { id: "r1".into(), expected_resource_version: None }).await.unwrap();
    admin.delete_pool(pb::DeletePoolRequest { name: "reserve".into() }).await.unwrap();
    assert_eq!(
        admin.delete_pool(pb::DeletePoolRequest { name: "reserve".into() }).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn settings_are_typed_with_ranges_and_versioned() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let s = admin.get_settings(pb::GetSettingsRequest {}).await.unwrap().into_inner();
    let settings = s.settings.unwrap();
    assert_eq!(
        (settings.cooldown_base_seconds, settings.cooldown_max_seconds, settings.queue_capacity),
        (30, 600, 500)
    );
    assert_eq!((settings.queue_timeout_seconds, settings.low_priority_timeout_seconds), (30, 2));
    assert!((settings.emergency_fraction - 0.10).abs() < 1e-9);
    let updated = admin
        .update_settings(pb::UpdateSettingsRequest {
            patch: Some(pb::SettingsPatch {
                cooldown_base_seconds: Some(10),
                adaptive_retreat: Some(true),
                ..Default::default()
            }),
            expected_resource_version: Some(s.resource_version),
        })
        .await
        .unwrap()
        .into_inner();
    let u = updated.settings.unwrap();
    assert_eq!((u.cooldown_base_seconds, u.adaptive_retreat, u.cooldown_max_seconds), (10, true, 600));
    assert_eq!(updated.resource_version, s.resource_version + 1);
}

#[tokio::test]
async fn validate_backend_reports_the_upstream_answer_and_create_refuses_a_rejected_key() {
    let mock = MockUpstream::start(&["good-key-0123456789"]).await;
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let candidate = |key: &str| pb::ValidateBackendRequest {
        target: Some(pb::validate_backend_request::Target::Candidate(pb::ValidateTarget {
            base_url: mock.base_url(),
            api_key: key.into(),
            ..Default::default()
        })),
    };
    let ok = admin.validate_backend(candidate("good-key-0123456789")).await.unwrap().into_inner();
    assert!(ok.ok);
    assert_eq!((ok.http_status, ok.models.clone()), (200, vec!["m1".to_string(), "m2".to_string()]));
    let bad = admin.validate_backend(candidate("bad-key-0123456789xyz")).await.unwrap().into_inner();
    assert!(!bad.ok);
    assert_eq!(bad.http_status, 401);
    assert!(bad.message.contains("Incorrect API key"), "{}", bad.message);
    assert_eq!(mock.calls().last().unwrap().authorization.as_deref(), Some("Bearer bad-key-0123456789xyz"));
    // An Anthropic candidate is tested the Anthropic way: `x-api-key` and a version.
    let anthropic = pb::ValidateBackendRequest {
        target: Some(pb::validate_backend_request::Target::Candidate(pb::ValidateTarget {
            base_url: mock.base_url(),
            api_key: "good-key-0123456789".into(),
            api: pb::BackendApi::Anthropic as i32,
            ..Default::default()
        })),
    };
    assert!(admin.validate_backend(anthropic).await.unwrap().into_inner().ok);
    let call = mock.calls().last().unwrap().clone();
    assert_eq!(
        (call.header("x-api-key").as_deref(), call.authorization.as_deref()),
        (Some("good-key-0123456789"), None)
    );
    assert!(call.header("anthropic-version").is_some());

    let mut s = spec("checked", &mock.base_url());
    s.api_key = "bad-key-0123456789xyz".into();
    let err =
        admin.create_backend(pb::CreateBackendRequest { backend: Some(s.clone()), validate: true }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("backend.api_key"), "{}", err.message());
    assert!(err.message().contains("401"), "{}", err.message());
    assert!(admin.list_backends(pb::ListBackendsRequest::default()).await.unwrap().into_inner().backends.is_empty());

    s.api_key = "good-key-0123456789".into();
    let created =
        admin.create_backend(pb::CreateBackendRequest { backend: Some(s), validate: true }).await.unwrap().into_inner();
    assert_eq!(created.validation.unwrap().http_status, 200);
    let by_id = admin
        .validate_backend(pb::ValidateBackendRequest {
            target: Some(pb::validate_backend_request::Target::Id("checked".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(by_id.ok, "a stored backend is validated with its decrypted key");

    let unreachable = pb::ValidateBackendRequest {
        target: Some(pb::validate_backend_request::Target::Candidate(pb::ValidateTarget {
            base_url: "http://127.0.0.1:1/v1".into(),
            api_key: "k".into(),
            timeout_seconds: 2,
            ..Default::default()
        })),
    };
    let r = admin.validate_backend(unreachable).await.unwrap().into_inner();
    assert_eq!((r.ok, r.http_status), (false, 0));
    assert!(r.message.contains("could not connect"), "{}", r.message);
}

#[tokio::test]
async fn every_write_is_audited_with_who_and_what() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let b = admin.create_backend(create(spec("audited", "https://a.example/v1"))).await.unwrap().into_inner();
    let entries = admin.list_audit(pb::ListAuditRequest::default()).await.unwrap().into_inner().entries;
    let last = entries.last().unwrap();
    assert_eq!(last.action, "CreateBackend");
    assert_eq!(last.actor, "tok_env_admin");
    assert_eq!(last.target, b.backend.unwrap().id);
    assert_eq!(last.config_version, b.config_version);
}

#[tokio::test]
async fn errors_never_echo_a_huge_input_back() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let huge = "x".repeat(1 << 20);
    let err = admin.get_backend(pb::GetBackendRequest { id: huge.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().len() < 200, "{} bytes", err.message().len());
    assert!(err.message().contains('…'), "{}", err.message());
    // A field path that quotes a map key is bounded too.
    let mut mappings = HashMap::new();
    mappings.insert(huge, pb::ModelMapping { native_id: "n".into(), ..Default::default() });
    let spec = pb::BackendSpec {
        name: "b".into(),
        base_url: "http://127.0.0.1:1".into(),
        api_key: "sk-0123456789abcdef".into(),
        model_mappings: mappings,
        ..Default::default()
    };
    let err =
        admin.create_backend(pb::CreateBackendRequest { backend: Some(spec), validate: false }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() <= 2048, "{} bytes", err.message().len());
}

#[tokio::test]
async fn a_backend_that_serves_no_model_is_refused_unless_disabled_and_queue_capacity_0_is_refused() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let spec = |enabled: bool| pb::BackendSpec {
        name: format!("empty-{enabled}"),
        base_url: "http://127.0.0.1:1".into(),
        api_key: "sk-0123456789abcdef".into(),
        enabled: Some(enabled),
        ..Default::default()
    };
    let err = admin
        .create_backend(pb::CreateBackendRequest { backend: Some(spec(true)), validate: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("backend.model_mappings"), "{}", err.message());
    let parked = admin
        .create_backend(pb::CreateBackendRequest { backend: Some(spec(false)), validate: false })
        .await
        .expect("a disabled backend may wait for its mappings");
    let id = parked.into_inner().backend.unwrap().id;
    let enable = pb::BackendPatch { enabled: Some(true), ..Default::default() };
    let err = admin
        .update_backend(pb::UpdateBackendRequest { id, patch: Some(enable), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("backend.model_mappings"), "enabling it without mappings: {}", err.message());

    let patch = pb::SettingsPatch { queue_capacity: Some(0), ..Default::default() };
    let err = admin
        .update_settings(pb::UpdateSettingsRequest { patch: Some(patch), expected_resource_version: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("queue_capacity"), "{}", err.message());
}

#[tokio::test]
async fn a_model_limit_must_fit_in_the_backends_and_is_named_when_it_does_not() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let limited = |rpm: Option<u32>, tpm: Option<u32>| {
        let mut s = spec("limited", "https://a.example/v1");
        s.tpm_limit = 10_000;
        let m = s.model_mappings.get_mut("gpt-4o").unwrap();
        (m.rpm_limit, m.tpm_limit) = (rpm, tpm);
        s
    };
    let field = "backend.model_mappings[\"gpt-4o\"]";
    for (spec, which) in [
        (limited(Some(61), None), "rpm_limit"),
        (limited(Some(0), None), "rpm_limit"),
        (limited(None, Some(10_001)), "tpm_limit"),
    ] {
        let err = admin.create_backend(create(spec)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        let want = format!("{field}.{which}");
        assert_eq!(err.metadata().get("sidecar-field").unwrap().to_str().unwrap(), want, "{}", err.message());
    }

    // Within the backend's limits: stored and shown.
    let b = admin.create_backend(create(limited(Some(20), Some(4000)))).await.unwrap().into_inner().backend.unwrap();
    let m = &b.model_mappings["gpt-4o"];
    assert_eq!((m.rpm_limit, m.tpm_limit), (Some(20), Some(4000)));

    // Lowering the backend's limit below a model's is refused by the model's field, and
    // nothing changes.
    let err = admin
        .update_backend(pb::UpdateBackendRequest {
            id: b.id.clone(),
            patch: Some(pb::BackendPatch { rpm_limit: Some(10), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.metadata().get("sidecar-field").unwrap().to_str().unwrap(), format!("{field}.rpm_limit"));
    let now = admin.get_backend(pb::GetBackendRequest { id: b.id }).await.unwrap().into_inner();
    assert_eq!((now.rpm_limit, now.resource_version), (60, b.resource_version));
}

#[tokio::test]
async fn a_models_own_window_is_one_to_sixty_seconds_and_needs_a_limit() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let windowed = |rpm: Option<u32>, window: u32| {
        let mut s = spec("windowed", "https://a.example/v1");
        let m = s.model_mappings.get_mut("gpt-4o").unwrap();
        (m.rpm_limit, m.window_seconds) = (rpm, Some(window));
        s
    };
    let field = "backend.model_mappings[\"gpt-4o\"].window_seconds";
    for (spec, why) in [
        (windowed(Some(30), 0), "1..=60"),
        (windowed(Some(30), 61), "1..=60"),
        (windowed(None, 10), "rpm_limit or tpm_limit"),
    ] {
        let err = admin.create_backend(create(spec)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert_eq!(err.metadata().get("sidecar-field").unwrap().to_str().unwrap(), field, "{}", err.message());
        assert!(err.message().contains(why), "{}", err.message());
    }
    // 1 request per minute cannot be spread over 10 s windows.
    let err = admin.create_backend(create(windowed(Some(1), 10))).await.unwrap_err();
    let named = err.metadata().get("sidecar-field").unwrap().to_str().unwrap().to_owned();
    assert_eq!(named, "backend.model_mappings[\"gpt-4o\"].rpm_limit", "{}", err.message());
    let b = admin.create_backend(create(windowed(Some(30), 10))).await.unwrap().into_inner().backend.unwrap();
    assert_eq!(b.model_mappings["gpt-4o"].window_seconds, Some(10));
}
