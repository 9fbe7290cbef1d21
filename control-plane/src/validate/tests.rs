//! Every validation rule refuses bad input naming the field, and accepts good input.

use std::collections::HashMap;

use super::*;
use crate::store::{PoolRecord, Settings};

fn pools() -> Vec<PoolRecord> {
    ["primary", "fallback"]
        .iter()
        .map(|n| PoolRecord {
            name: (*n).into(),
            order: 0,
            description: String::new(),
            builtin: true,
            spill: Default::default(),
        })
        .collect()
}

fn field_of<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.unwrap_err().field
}

#[test]
fn identifiers_must_be_non_empty_short_and_plain() {
    assert_eq!(field_of(identifier("backend.name", "")), "backend.name");
    assert!(identifier("x", "has space").unwrap_err().reason.contains("' '"));
    assert!(identifier("x", &"a".repeat(65)).is_err());
    assert_eq!(identifier("x", "nvidia-1.eu_2").unwrap(), "nvidia-1.eu_2");
}

#[test]
fn base_urls_must_be_http_with_host_and_lose_their_trailing_slash() {
    for bad in ["", "ftp://x.com/v1", "not a url", "https://user:pw@x.com/v1", "https://x.com/v1?q=1", "file:///etc"] {
        assert_eq!(field_of(base_url("backend.base_url", bad)), "backend.base_url", "{bad}");
    }
    assert_eq!(base_url("f", "https://api.example.com/v1/").unwrap(), "https://api.example.com/v1");
    assert_eq!(base_url("f", "http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
}

#[test]
fn api_keys_must_be_non_empty_without_whitespace() {
    assert!(api_key("k", "").is_err());
    assert!(api_key("k", "sk abc").is_err());
    assert!(api_key("k", "sk-abc\n").is_err());
    assert!(api_key("k", "sk-abc").is_ok());
}

#[test]
fn rpm_must_be_positive() {
    for bad in [0, -1, -40, 1_000_000_001] {
        let e = rpm_limit("backend.rpm_limit", bad).unwrap_err();
        assert_eq!(e.field, "backend.rpm_limit");
        assert!(e.reason.contains(&bad.to_string()), "{e}");
    }
    assert_eq!(rpm_limit("r", 40).unwrap(), 40);
}

#[test]
fn tpm_zero_means_none_and_negative_is_refused() {
    assert_eq!(tpm_limit("t", 0).unwrap(), None);
    assert_eq!(tpm_limit("t", 5000).unwrap(), Some(5000));
    assert_eq!(field_of(tpm_limit("backend.tpm_limit", -1)), "backend.tpm_limit");
}

#[test]
fn window_seconds_zero_means_a_minute_and_a_window_must_allow_a_request() {
    assert_eq!(window_seconds("w", 0).unwrap(), 60);
    assert_eq!(window_seconds("w", 10).unwrap(), 10);
    assert_eq!(field_of(window_seconds("backend.window_seconds", 61)), "backend.window_seconds");
    assert_eq!(field_of(window_seconds("backend.window_seconds", -1)), "backend.window_seconds");
    assert!(window_allows_a_request("w", 6, 10).is_ok(), "6 RPM per 10 s is one request");
    let e = window_allows_a_request("backend.window_seconds", 5, 10).unwrap_err();
    assert!(e.reason.contains("rpm_limit 5 with window_seconds 10"), "{e}");
    assert_eq!(crate::store::per_window(60, 10), 10);
    assert_eq!(crate::store::per_window(100, 1), 1, "100 RPM per second rounds down to 1");
    assert_eq!(crate::store::per_window(u32::MAX, 60), u32::MAX);
}

#[test]
fn timeout_zero_means_default_and_bounds_hold() {
    assert_eq!(timeout_seconds("t", 0).unwrap(), DEFAULT_TIMEOUT_SECONDS);
    assert!(timeout_seconds("t", -5).is_err());
    assert!(timeout_seconds("t", 3601).is_err());
}

#[test]
fn weight_must_be_between_1_and_1000() {
    assert!(weight("w", 0).is_err());
    assert!(weight("w", 1001).is_err());
    assert_eq!(weight("w", 3).unwrap(), 3);
}

#[test]
fn pools_must_exist_and_empty_means_primary() {
    assert_eq!(pool("p", "", &pools()).unwrap(), "primary");
    let e = pool("backend.pool", "nope", &pools()).unwrap_err();
    assert_eq!(e.field, "backend.pool");
    assert!(e.reason.contains("unknown pool \"nope\""), "{e}");
}

#[test]
fn duplicate_names_are_refused_case_insensitively_except_for_self() {
    let key = crate::crypto::MasterKey::from_hex(&crate::crypto::MasterKey::generate_hex()).unwrap();
    let existing = crate::store::BackendRecord {
        id: "bkd_1".into(),
        name: "Alpha".into(),
        label: String::new(),
        base_url: "https://a".into(),
        api_key: key.seal("k"),
        api_key_masked: "****".into(),
        timeout_seconds: 1,
        rpm_limit: 1,
        tpm_limit: None,
        window_seconds: 60,
        learn_limits: true,
        api: Default::default(),
        pool: "primary".into(),
        enabled: true,
        weight: 1,
        model_mappings: Default::default(),
        regions: vec![],
        source: crate::store::Source::Api,
        metadata: Default::default(),
        created_at_ms: 0,
        updated_at_ms: 0,
        resource_version: 1,
    };
    let others = [existing];
    let e = backend_name("backend.name", "alpha", &others, None).unwrap_err();
    assert!(e.reason.contains("already exists"), "{e}");
    assert!(backend_name("patch.name", "alpha", &others, Some("bkd_1")).is_ok());
}

#[test]
fn model_mappings_need_a_native_id_and_sane_costs() {
    let mut m = HashMap::new();
    m.insert("gpt-4o".to_string(), MappingInput { native_id: " ".into(), ..Default::default() });
    assert_eq!(field_of(model_mappings("backend.model_mappings", &m)), "backend.model_mappings[\"gpt-4o\"].native_id");

    let mut m = HashMap::new();
    m.insert(
        "gpt-4o".to_string(),
        MappingInput {
            native_id: "openai/gpt-4o".into(),
            cost: crate::store::Cost { input: -1.0, ..Default::default() },
            ..Default::default()
        },
    );
    assert_eq!(field_of(model_mappings("f", &m)), "f[\"gpt-4o\"].cost.input");

    let mut m = HashMap::new();
    m.insert("".to_string(), MappingInput { native_id: "x".into(), ..Default::default() });
    assert_eq!(field_of(model_mappings("f", &m)), "f");

    let mut m = HashMap::new();
    m.insert(
        "m".to_string(),
        MappingInput { native_id: "x".into(), input_modalities: vec!["smell".into()], ..Default::default() },
    );
    assert_eq!(field_of(model_mappings("f", &m)), "f[\"m\"].input_modalities[0]");
}

#[test]
fn model_mapping_defaults_are_filled_in() {
    let mut m = HashMap::new();
    m.insert("gpt-4o".to_string(), MappingInput { native_id: "openai/gpt-4o".into(), ..Default::default() });
    let out = model_mappings("f", &m).unwrap();
    let got = &out["gpt-4o"];
    assert_eq!((got.context_window, got.max_tokens), (128_000, 65_536));
    assert_eq!(got.input_modalities, vec!["text".to_string()]);
}

#[test]
fn regions_are_identifiers_and_deduplicated() {
    assert_eq!(regions("r", &["eu".into(), "eu".into(), "us".into()]).unwrap(), vec!["eu", "us"]);
    assert_eq!(field_of(regions("backend.regions", &["ok".into(), "".into()])), "backend.regions[1]");
}

#[test]
fn metadata_values_are_bounded() {
    let mut m = HashMap::new();
    m.insert("k".to_string(), "x".repeat(1025));
    assert_eq!(field_of(metadata("backend.metadata", &m)), "backend.metadata[\"k\"]");
}

#[test]
fn settings_ranges_and_cross_field_rules_hold() {
    let s = Settings::default();
    let bad = SettingsPatch { cooldown_base_seconds: Some(0), ..Default::default() };
    assert_eq!(field_of(settings_patch(&s, &bad)), "patch.cooldown_base_seconds");
    let bad = SettingsPatch { emergency_fraction: Some(1.5), ..Default::default() };
    assert_eq!(field_of(settings_patch(&s, &bad)), "patch.emergency_fraction");
    let bad = SettingsPatch { cooldown_max_seconds: Some(10), ..Default::default() };
    assert_eq!(field_of(settings_patch(&s, &bad)), "patch.cooldown_max_seconds");
    let good = SettingsPatch { queue_capacity: Some(10), adaptive_retreat: Some(true), ..Default::default() };
    let out = settings_patch(&s, &good).unwrap();
    assert_eq!((out.queue_capacity, out.adaptive_retreat, out.cooldown_base_seconds), (10, true, 30));
}
