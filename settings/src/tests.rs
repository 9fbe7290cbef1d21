//! The declaration derives flags, help and table alike; the resolver's precedence and
//! file handling.
#![allow(unreachable_pub, reason = "the declared test flags are public as in a binary, but only used here")]

use clap::Args;

use crate::{ConfigError, Declared, Layered, Origin};

crate::settings! {
    /// Flags of a test binary.
    pub struct Flags {
        /// TOML file.
        config
    }
    secret = "T_SECRET": "A secret";
    data_dir = "T_DATA_DIR", flag "DIR": "Data directory", default "./data";
    origins = "T_ORIGINS", flag "ORIGINS": "Comma-separated origins";
    max_conns = "T_MAX_CONNS", flag "N": "Connection cap", computed "from the open-file limit";
    port = "T_PORT": "Port", default "9190";
}

fn with_file(text: &str) -> (tempfile::TempDir, Flags) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, text).unwrap();
    (dir, Flags { config: Some(path), ..Default::default() })
}

#[test]
fn the_table_and_the_flags_come_from_one_declaration() {
    let table: Vec<_> = Flags::SETTINGS.iter().map(|s| (s.env, s.file, s.flag(), s.default)).collect();
    assert_eq!(
        table,
        [
            ("T_SECRET", "secret", None, None),
            ("T_DATA_DIR", "data_dir", Some("--data-dir".into()), Some("./data")),
            ("T_ORIGINS", "origins", Some("--origins".into()), None),
            ("T_MAX_CONNS", "max_conns", Some("--max-conns".into()), None),
            ("T_PORT", "port", None, Some("9190")),
        ]
    );
    // Every setting with a flag has that flag, and nothing else does.
    let command = Flags::augment_args(clap::Command::new("t"));
    let longs: Vec<_> = command.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect();
    let flags: Vec<_> = Flags::SETTINGS.iter().filter_map(|s| s.flag()).collect();
    assert_eq!(longs, [&["--config".to_string()][..], &flags].concat());
    let flags = Flags { data_dir: Some("d".into()), max_conns: Some("9".into()), ..Default::default() };
    assert_eq!(flags.lookup("T_DATA_DIR").map(String::as_str), Some("d"));
    assert_eq!(flags.lookup("T_MAX_CONNS").map(String::as_str), Some("9"));
    assert_eq!(flags.lookup("T_SECRET"), None);
}

#[test]
fn help_lists_env_and_default() {
    let help = Flags::augment_args(clap::Command::new("t")).render_help().to_string();
    let line =
        |flag: &str| help.lines().find(|l| l.contains(flag)).unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(line("--config"), "--config <FILE> TOML file");
    assert_eq!(line("--data-dir"), "--data-dir <DIR> Data directory [env: T_DATA_DIR] [default: ./data]");
    assert_eq!(line("--origins"), "--origins <ORIGINS> Comma-separated origins [env: T_ORIGINS]");
    assert_eq!(
        line("--max-conns"),
        "--max-conns <N> Connection cap [env: T_MAX_CONNS] [default: from the open-file limit]"
    );
    assert!(!help.contains("secret") && !help.contains("T_PORT"), "{help}");
}

#[test]
fn flags_beat_env_beats_file_beats_default() {
    let (_dir, mut flags) = with_file("data_dir = \"file\"\norigins = \"file\"\nport = 1\n");
    flags.data_dir = Some("flag".into());
    let env = |name: &str| match name {
        "T_DATA_DIR" | "T_ORIGINS" => Some("env".to_string()),
        "T_PORT" => Some(String::new()),
        _ => None,
    };
    let src = Layered::new(&flags, &env).unwrap();
    assert_eq!(src.get("T_DATA_DIR"), Some(("flag".into(), Origin::Flag)));
    assert_eq!(src.get("T_ORIGINS"), Some(("env".into(), Origin::Env)));
    assert_eq!(src.get("T_PORT"), Some(("1".into(), Origin::File)), "an empty env var counts as unset");
    assert_eq!(src.get("T_SECRET"), None);

    let none = Flags::default();
    let src = Layered::new(&none, &|_| None).unwrap();
    assert_eq!(src.get("T_DATA_DIR"), Some(("./data".into(), Origin::Default)));
    assert_eq!(src.parse("T_PORT", "a port", |s| s.parse::<u16>().ok()), Ok(9190));
    assert_eq!(src.parse_opt("T_MAX_CONNS", "a number", |s| s.parse::<u32>().ok()), Ok(None));
    assert_eq!(src.text("T_SECRET").unwrap_err().to_string(), "invalid T_SECRET: missing");
}

#[test]
fn file_values_become_text_and_arrays_are_joined_with_commas() {
    let (_dir, flags) = with_file(
        "origins = [\"https://a.example\", \"https://b.example\"]\nport = 7\nsecret = true\ndata_dir = [1, 2]\n",
    );
    let src = Layered::new(&flags, &|_| None).unwrap();
    assert_eq!(src.value("T_ORIGINS").as_deref(), Some("https://a.example,https://b.example"));
    assert_eq!(src.value("T_PORT").as_deref(), Some("7"));
    assert_eq!(src.value("T_SECRET").as_deref(), Some("true"));
    assert_eq!(src.value("T_DATA_DIR").as_deref(), Some("1,2"));
}

#[test]
fn errors_name_the_setting_or_the_file_in_one_line() {
    let none = Flags::default();
    let src = Layered::new(&none, &|name| (name == "T_PORT").then(|| " x ".to_string())).unwrap();
    let e = src.parse("T_PORT", "a port", |s| s.parse::<u16>().ok()).unwrap_err();
    assert_eq!(e, ConfigError { setting: "T_PORT".into(), message: "expected a port, got \" x \"".into() });
    assert_eq!(src.invalid("T_DATA_DIR", "bad").to_string(), "invalid T_DATA_DIR (--data-dir): bad");

    let (_dir, flags) = with_file("prot = 1\n");
    let e = Layered::new(&flags, &|_| None).err().unwrap();
    assert!(e.setting.starts_with("config file ") && e.setting.ends_with("t.toml"), "{e}");
    assert_eq!(e.message, "unknown key `prot` (known: secret, data_dir, origins, max_conns, port)");
    let (_dir, flags) = with_file("port = \n");
    let e = Layered::new(&flags, &|_| None).err().unwrap();
    assert!(!e.to_string().contains('\n'), "{e}");
    let flags = Flags { config: Some("/nonexistent/t.toml".into()), ..Default::default() };
    assert!(Layered::new(&flags, &|_| None).err().unwrap().message.starts_with("cannot read it: "));
}
