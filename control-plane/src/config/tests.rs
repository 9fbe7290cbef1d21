//! Configuration precedence and one-line errors that name the setting.

use std::collections::HashMap;

use super::*;

fn key() -> String {
    MasterKey::generate_hex()
}

fn resolve(flags: &Flags, env: &[(&str, &str)]) -> Result<ControlConfig, ConfigError> {
    let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ControlConfig::resolve(flags, &move |name| env.get(name).cloned())
}

#[test]
fn defaults_apply_with_only_the_key() {
    let c = resolve(&Flags::default(), &[("SIDECAR_ENCRYPTION_KEY", &key())]).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9290");
    assert_eq!(c.ops_listen.to_string(), "127.0.0.1:9291");
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.backup_dir, PathBuf::from("./data/backups"));
    assert_eq!(c.log_format, LogFormat::Text);
    assert!(c.cors_origins.is_empty());
    assert_eq!(c.initial_settings, Settings::default());
    assert!(c.v1_upstream.is_none());
}

#[test]
fn missing_or_malformed_key_says_how_to_make_one() {
    for env in [vec![], vec![("SIDECAR_ENCRYPTION_KEY", "abcd")]] {
        let e = resolve(&Flags::default(), &env).unwrap_err();
        assert_eq!(e.setting, "SIDECAR_ENCRYPTION_KEY");
        assert!(e.to_string().contains("sidecar-control gen-key"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn the_key_value_is_never_echoed() {
    let bad = "z".repeat(64);
    let e = resolve(&Flags::default(), &[("SIDECAR_ENCRYPTION_KEY", &bad)]).unwrap_err();
    assert!(!e.to_string().contains(&bad));
}

#[test]
fn invalid_values_name_env_and_flag() {
    let k = key();
    let e =
        resolve(&Flags::default(), &[("SIDECAR_ENCRYPTION_KEY", &k), ("SIDECAR_CONTROL_LISTEN", "nope")]).unwrap_err();
    assert_eq!(e.setting, "SIDECAR_CONTROL_LISTEN (--listen)");
    assert!(e.message.contains("host:port"));
    let e = resolve(&Flags::default(), &[("SIDECAR_ENCRYPTION_KEY", &k), ("SIDECAR_LOG_FORMAT", "xml")]).unwrap_err();
    assert!(e.to_string().contains("text or json"));
    let e = resolve(&Flags::default(), &[("SIDECAR_ENCRYPTION_KEY", &k), ("SIDECAR_COOLDOWN_BASE", "-3")]).unwrap_err();
    assert!(e.setting.starts_with("SIDECAR_COOLDOWN_BASE"));
    let e =
        resolve(&Flags::default(), &[("SIDECAR_ENCRYPTION_KEY", &k), ("SIDECAR_ADMIN_TOKEN", "short")]).unwrap_err();
    assert_eq!(e.setting, "SIDECAR_ADMIN_TOKEN");
    let e = resolve(
        &Flags::default(),
        &[("SIDECAR_ENCRYPTION_KEY", &k), ("SIDECAR_CORS_ORIGINS", "https://ok.example, *")],
    )
    .unwrap_err();
    assert!(e.setting.starts_with("SIDECAR_CORS_ORIGINS"));
}

#[test]
fn flags_beat_env_and_env_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:1111\"\nops_listen = \"127.0.0.1:2222\"\nqueue_max = 7\ncors_origins = [\"https://a.example\"]\n").unwrap();
    let flags = Flags { config: Some(path), listen: Some("127.0.0.1:3333".into()), ..Default::default() };
    let c = resolve(&flags, &[("SIDECAR_ENCRYPTION_KEY", &key()), ("SIDECAR_CONTROL_OPS_LISTEN", "127.0.0.1:4444")])
        .unwrap();
    assert_eq!(c.listen.port(), 3333, "flag wins");
    assert_eq!(c.ops_listen.port(), 4444, "env beats file");
    assert_eq!(c.initial_settings.queue_capacity, 7, "file applies");
    assert_eq!(c.cors_origins, vec!["https://a.example".to_string()]);
}

#[test]
fn unknown_file_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.toml");
    std::fs::write(&path, "lisen = \"127.0.0.1:1111\"\n").unwrap();
    let flags = Flags { config: Some(path), ..Default::default() };
    let e = resolve(&flags, &[("SIDECAR_ENCRYPTION_KEY", &key())]).unwrap_err();
    assert!(e.message.contains("unknown key `lisen`"), "{e}");
}

#[test]
fn v1_environment_becomes_an_upstream() {
    let k = key();
    let c = resolve(
        &Flags::default(),
        &[
            ("SIDECAR_ENCRYPTION_KEY", &k),
            ("SIDECAR_UPSTREAM", "https://api.example.com/v1/"),
            ("SIDECAR_API_KEY", "sk-x"),
            ("SIDECAR_RATE_RPM", "60"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.v1_upstream,
        Some(V1Upstream { base_url: "https://api.example.com/v1".into(), api_key: "sk-x".into(), rpm_limit: 60 })
    );
    let e =
        resolve(&Flags::default(), &[("SIDECAR_ENCRYPTION_KEY", &k), ("SIDECAR_UPSTREAM", "https://x")]).unwrap_err();
    assert_eq!(e.setting, "SIDECAR_API_KEY");
}

#[test]
fn spec_settings_come_from_v1_env_names() {
    let c = resolve(
        &Flags::default(),
        &[
            ("SIDECAR_ENCRYPTION_KEY", &key()),
            ("SIDECAR_COOLDOWN_BASE", "10"),
            ("SIDECAR_COOLDOWN_MAX", "100"),
            ("SIDECAR_QUEUE_MAX", "50"),
            ("SIDECAR_QUEUE_TIMEOUT", "5"),
            ("SIDECAR_LOW_TIMEOUT", "1"),
        ],
    )
    .unwrap();
    let s = &c.initial_settings;
    assert_eq!(
        (
            s.cooldown_base_seconds,
            s.cooldown_max_seconds,
            s.queue_capacity,
            s.queue_timeout_seconds,
            s.low_priority_timeout_seconds
        ),
        (10, 100, 50, 5, 1)
    );
}

#[test]
fn backups_can_go_to_other_storage() {
    let c = resolve(
        &Flags::default(),
        &[
            ("SIDECAR_ENCRYPTION_KEY", &key()),
            ("SIDECAR_DATA_DIR", "/var/lib/sidecar"),
            ("SIDECAR_BACKUP_DIR", "/mnt/backup"),
        ],
    )
    .unwrap();
    assert_eq!((c.data_dir, c.backup_dir), (PathBuf::from("/var/lib/sidecar"), PathBuf::from("/mnt/backup")));
}

#[test]
fn a_shared_node_token_beyond_loopback_is_warned_about() {
    let key = key();
    let config = |listen: &str| {
        resolve(
            &Flags::default(),
            &[
                ("SIDECAR_ENCRYPTION_KEY", &key),
                ("SIDECAR_NODE_TOKEN", "shared-secret-0123456789"),
                ("SIDECAR_CONTROL_LISTEN", listen),
            ],
        )
        .unwrap()
    };
    assert!(config("127.0.0.1:9290").warnings().is_empty());
    let warnings = config("0.0.0.0:9290").warnings();
    assert!(
        warnings.iter().any(|w| w.contains("SIDECAR_NODE_TOKEN") && w.contains("node-token create")),
        "{warnings:?}"
    );
    assert!(!warnings.iter().any(|w| w.contains("shared-secret")), "never the secret");
}

#[test]
fn tls_settings_come_in_pairs_and_require_tls_refuses_a_plaintext_listener_beyond_loopback() {
    let key = key();
    let with = |extra: &[(&str, &str)]| {
        let mut env = vec![("SIDECAR_ENCRYPTION_KEY", key.as_str())];
        env.extend_from_slice(extra);
        resolve(&Flags::default(), &env)
    };
    assert_eq!(with(&[("SIDECAR_TLS_CERT", "c.pem")]).unwrap_err().setting, "SIDECAR_TLS_KEY");
    assert_eq!(with(&[("SIDECAR_TLS_KEY", "k.pem")]).unwrap_err().setting, "SIDECAR_TLS_CERT");
    assert_eq!(with(&[("SIDECAR_TLS_CLIENT_CA", "ca.pem")]).unwrap_err().setting, "SIDECAR_TLS_CLIENT_CA");
    let tls = with(&[("SIDECAR_TLS_CERT", "c.pem"), ("SIDECAR_TLS_KEY", "k.pem"), ("SIDECAR_TLS_CLIENT_CA", "ca.pem")])
        .unwrap()
        .tls
        .unwrap();
    assert_eq!(tls.client_ca.as_deref(), Some(std::path::Path::new("ca.pem")));

    // Beyond loopback without TLS: a warning, or with SIDECAR_REQUIRE_TLS a refusal.
    let exposed = with(&[("SIDECAR_CONTROL_LISTEN", "0.0.0.0:9290")]).unwrap();
    assert!(exposed.warnings().iter().any(|w| w.contains("without TLS") && w.contains("SIDECAR_TLS_CERT")));
    let refused = with(&[("SIDECAR_CONTROL_LISTEN", "0.0.0.0:9290"), ("SIDECAR_REQUIRE_TLS", "true")]).unwrap_err();
    assert_eq!(refused.setting, "SIDECAR_REQUIRE_TLS");
    assert!(refused.message.contains("0.0.0.0:9290"), "{refused}");
    // Loopback is fine either way; with TLS nothing is warned about.
    assert!(with(&[("SIDECAR_REQUIRE_TLS", "true")]).unwrap().warnings().is_empty());
    let secured = with(&[
        ("SIDECAR_CONTROL_LISTEN", "0.0.0.0:9290"),
        ("SIDECAR_REQUIRE_TLS", "true"),
        ("SIDECAR_TLS_CERT", "c.pem"),
        ("SIDECAR_TLS_KEY", "k.pem"),
    ])
    .unwrap();
    assert!(secured.warnings().is_empty(), "{:?}", secured.warnings());
}
