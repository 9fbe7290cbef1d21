//! End to end: the real `sidecarctl` binary against an in-process control plane and a
//! mock provider (for key validation), all on port 0.

use std::{
    io::Write,
    net::SocketAddr,
    process::{Command, Stdio},
};

use axum::{Json, Router, http::HeaderMap, http::StatusCode, routing::get};
use serde_json::{Value, json};
use sidecar_control_plane::{ControlConfig, ControlPlane, Flags, crypto::MasterKey};
use tokio::{net::TcpListener, sync::oneshot};

const ADMIN: &str = "admin-token-0123456789abcdef";
const GOOD_KEY: &str = "good-key-0123456789";
const PLAIN_KEY: &str = "sk-plaintext-secret-987654321";

/// What one `sidecarctl` run left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "sidecarctl failed: {self:?}");
        self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Asserts a usage error (exit code 2, as clap's) and returns stderr.
    fn usage_error(self) -> String {
        assert_eq!(self.code, 2, "expected a usage error: {self:?}");
        assert!(self.stderr.starts_with("error: "), "{self:?}");
        self.stderr
    }

    /// Asserts failure with exit code 1 and returns stderr.
    fn failed(self) -> String {
        assert_eq!(self.code, 1, "expected a failed call: {self:?}");
        assert!(self.stderr.starts_with("error: "), "{self:?}");
        self.stderr
    }
}

/// Runs `sidecarctl` off the runtime's threads, so the in-process server keeps serving.
struct Ctl {
    server: String,
    token: String,
}

impl Ctl {
    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, None, &[]).await
    }

    async fn run_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidecarctl"));
        // Server and token come from the environment, as in a script.
        cmd.args(args)
            .env("SIDECAR_CONTROL_URL", &self.server)
            .env("SIDECAR_TOKEN", &self.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let stdin = stdin.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("spawn sidecarctl");
            let mut pipe = child.stdin.take().unwrap();
            if let Some(input) = stdin {
                pipe.write_all(input.as_bytes()).unwrap();
            }
            drop(pipe);
            let out = child.wait_with_output().unwrap();
            Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .await
        .unwrap()
    }

    fn with_token(&self, token: &str) -> Ctl {
        Ctl { server: self.server.clone(), token: token.to_owned() }
    }
}

/// A provider that accepts only [`GOOD_KEY`] on `GET /v1/models`.
async fn mock_provider() -> SocketAddr {
    async fn models(headers: HeaderMap) -> (StatusCode, Json<Value>) {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth == Some(&format!("Bearer {GOOD_KEY}")) {
            (StatusCode::OK, Json(json!({"data": [{"id": "m1"}]})))
        } else {
            (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "Incorrect API key"}})))
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/v1/models", get(models));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecarctl_drives_the_admin_api_end_to_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data").to_string_lossy().into_owned();
    let key = MasterKey::generate_hex();
    let env = move |name: &str| match name {
        "SIDECAR_ENCRYPTION_KEY" => Some(key.clone()),
        "SIDECAR_ADMIN_TOKEN" => Some(ADMIN.to_owned()),
        "SIDECAR_DATA_DIR" => Some(data_dir.clone()),
        _ => None,
    };
    let config = ControlConfig::resolve(&Flags::default(), &env)?;
    let cp = ControlPlane::open(&config)?;
    let api = TcpListener::bind("127.0.0.1:0").await?;
    let ops = TcpListener::bind("127.0.0.1:0").await?;
    let addr = api.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(cp.serve(api, ops, async move {
        let _ = stop_rx.await;
    }));
    let provider = format!("http://{}/v1", mock_provider().await);
    let ctl = Ctl { server: format!("http://{addr}"), token: ADMIN.to_owned() };

    // Add in table mode: a one-line confirmation naming the backend.
    let out = ctl
        .run(&[
            "backend",
            "add",
            "--name",
            "alpha",
            "--base-url",
            "https://api.example.com/v1",
            "--api-key",
            PLAIN_KEY,
            "--model",
            "gpt-4o=openai/gpt-4o",
            "--rpm",
            "30",
            "--label",
            "example",
        ])
        .await
        .ok();
    assert!(out.starts_with("created backend alpha (bkd_"), "{out}");

    // Add in JSON mode, the key read from stdin so it is not on the command line.
    let beta = ctl
        .run_with(
            &[
                "-o",
                "json",
                "backend",
                "add",
                "--name",
                "beta",
                "--base-url",
                "https://api.example.com/v1",
                "--api-key",
                "-",
                "--model",
                "m2",
                "--price",
                "m2=0.15/0.60",
                "--tpm",
                "1000",
            ],
            Some(&format!("{PLAIN_KEY}\n")),
            &[],
        )
        .await
        .json();
    assert_eq!(beta["backend"]["name"], "beta");
    assert_eq!(beta["backend"]["source"], "api");
    assert_eq!(beta["backend"]["model_mappings"]["m2"]["native_id"], "m2");
    let cost = &beta["backend"]["model_mappings"]["m2"]["cost"];
    assert!((cost["input"].as_f64().unwrap() - 0.15e-6).abs() < 1e-15, "USD per token on the wire: {cost}");
    assert!((cost["output"].as_f64().unwrap() - 0.60e-6).abs() < 1e-15, "{cost}");
    assert!(beta["config_version"].as_u64().unwrap() > 0);

    // Lists show the masked key, never the key itself.
    let listed = ctl.run(&["-o", "json", "backend", "list"]).await;
    assert!(!listed.stdout.contains(PLAIN_KEY), "{listed:?}");
    let listed = listed.json();
    let backends = listed["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    let masked = backends[0]["api_key_masked"].as_str().unwrap();
    assert!(masked.starts_with("sk-pla") && masked.contains("****"), "{masked}");
    let table = ctl.run(&["backend", "list"]).await.ok();
    let header = table.lines().next().unwrap();
    for column in ["ID", "NAME", "POOL", "API", "STATUS", "RPM", "TPM", "MODELS", "KEY", "URL"] {
        assert!(header.contains(column), "{header}");
    }
    let alpha_row = table.lines().find(|l| l.contains(" alpha ")).unwrap();
    assert!(alpha_row.contains("gpt-4o") && alpha_row.contains(masked), "{table}");
    assert!(!table.contains(PLAIN_KEY), "{table}");

    // Get by name, as key: value lines.
    let got = ctl.run(&["backend", "get", "alpha"]).await.ok();
    assert!(got.contains("name:") && got.contains("alpha"), "{got}");
    assert!(got.contains("gpt-4o=openai/gpt-4o"), "{got}");
    assert!(got.lines().any(|l| l.starts_with("rpm_limit:") && l.ends_with(" 30")), "{got}");

    // Update only the RPM; the rest stays.
    ctl.run(&["backend", "update", "alpha", "--rpm", "60"]).await.ok();
    let alpha = ctl.run(&["-o", "json", "backend", "get", "alpha"]).await.json();
    assert_eq!(alpha["rpm_limit"], 60);
    assert_eq!(alpha["label"], "example");
    assert_eq!(alpha["model_mappings"]["gpt-4o"]["native_id"], "openai/gpt-4o");

    // The API a backend speaks: openai by default, anthropic when asked; shown in the
    // list and by get; an unknown one refused by name.
    assert!(alpha_row.contains(" openai "), "{table}");
    ctl.run(&["backend", "update", "alpha", "--api", "anthropic"]).await.ok();
    let alpha = ctl.run(&["-o", "json", "backend", "get", "alpha"]).await.json();
    assert_eq!(alpha["api"], "anthropic", "{alpha}");
    let got = ctl.run(&["backend", "get", "alpha"]).await.ok();
    assert!(got.lines().any(|l| l.starts_with("api:") && l.ends_with(" anthropic")), "{got}");
    let err = ctl.run(&["backend", "update", "alpha", "--api", "gemini"]).await.usage_error();
    assert!(err.contains("invalid value 'gemini'") && err.contains("openai, anthropic"), "{err}");
    ctl.run(&["backend", "update", "alpha", "--api", "openai"]).await.ok();

    // A provider that enforces per 10 s: shown, and refused where a window would allow
    // less than one request.
    ctl.run(&["backend", "update", "alpha", "--window-seconds", "10"]).await.ok();
    let got = ctl.run(&["backend", "get", "alpha"]).await.ok();
    assert!(got.lines().any(|l| l.starts_with("window_seconds:") && l.ends_with(" 10")), "{got}");
    let err = ctl.run(&["backend", "update", "alpha", "--rpm", "5"]).await.failed();
    assert!(err.contains("backend.window_seconds") && err.contains("rpm_limit 5 with window_seconds 10"), "{err}");
    let err = ctl.run(&["backend", "update", "alpha", "--window-seconds", "90"]).await.failed();
    assert!(err.contains("patch.window_seconds"), "{err}");

    // Prices: shown per 1M tokens; a price-only update keeps the models.
    let got = ctl.run(&["backend", "get", "beta"]).await.ok();
    assert!(got.lines().any(|l| l.starts_with("prices_usd_per_1m:") && l.ends_with("m2=0.15/0.6")), "{got}");
    ctl.run(&["backend", "update", "alpha", "--price", "gpt-4o=2.5/10/1.25/0"]).await.ok();
    let got = ctl.run(&["backend", "get", "alpha"]).await.ok();
    assert!(got.contains("gpt-4o=2.5/10/1.25/0") && got.contains("gpt-4o=openai/gpt-4o"), "{got}");
    let err = ctl.run(&["backend", "update", "alpha", "--price", "nope=1/2"]).await.usage_error();
    assert!(err.contains("no model nope"), "{err}");
    let err = ctl.run(&["backend", "update", "alpha", "--price", "gpt-4o=1"]).await.usage_error();
    assert!(err.contains("INPUT/OUTPUT"), "{err}");

    // The server validates; its field path reaches the operator.
    let err = ctl.run(&["backend", "update", "alpha", "--rpm", "0"]).await.failed();
    assert!(err.contains("invalid argument") && err.contains("rpm_limit"), "{err}");
    let err = ctl.run(&["backend", "update", "alpha", "--rpm", "-5"]).await.failed();
    assert!(err.contains("rpm_limit"), "{err}");

    // A stale expected version is refused.
    let err = ctl.run(&["backend", "update", "alpha", "--rpm", "61", "--expected-version", "1"]).await.failed();
    assert!(err.contains("failed precondition"), "{err}");

    // Pools: create one and move a backend into it.
    let out = ctl.run(&["pool", "add", "batch", "--description", "overnight jobs"]).await.ok();
    assert!(out.contains("created pool batch"), "{out}");
    ctl.run(&["backend", "update", "beta", "--pool", "batch"]).await.ok();
    let in_batch = ctl.run(&["-o", "json", "backend", "list", "--pool", "batch"]).await.json();
    let names: Vec<_> = in_batch["backends"].as_array().unwrap().iter().map(|b| b["name"].clone()).collect();
    assert_eq!(names, vec![json!("beta")]);
    let pools = ctl.run(&["pool", "list"]).await.ok();
    assert!(pools.lines().any(|l| l.starts_with("batch ") && l.contains("overnight jobs")), "{pools}");
    assert!(pools.lines().any(|l| l.starts_with("primary ") && l.contains("on-busy")), "{pools}");
    let out = ctl.run(&["pool", "update", "primary", "--spill", "on-failure"]).await.ok();
    assert!(out.contains("updated pool primary") && out.contains("spill on-failure"), "{out}");
    let pools = ctl.run(&["pool", "list"]).await.ok();
    assert!(pools.lines().any(|l| l.starts_with("primary ") && l.contains("on-failure")), "{pools}");
    let err = ctl.run(&["pool", "update", "nope", "--spill", "on-busy"]).await.failed();
    assert!(err.contains("not found"), "{err}");
    let err = ctl.run(&["pool", "rm", "batch"]).await.failed();
    assert!(err.contains("beta"), "a pool in use names its users: {err}");

    // Settings.
    let out = ctl
        .run(&["settings", "set", "cooldown_base_seconds=20", "adaptive_retreat=true", "emergency_fraction=0.2"])
        .await
        .ok();
    assert!(out.lines().any(|l| l.starts_with("cooldown_base_seconds:") && l.ends_with(" 20")), "{out}");
    let settings = ctl.run(&["-o", "json", "settings", "get"]).await.json();
    assert_eq!(settings["settings"]["cooldown_base_seconds"], 20);
    assert_eq!(settings["settings"]["adaptive_retreat"], true);
    assert_eq!(settings["settings"]["emergency_fraction"], 0.2);
    let bad = ctl.run(&["settings", "set", "cooldown=5"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("cooldown_base_seconds"), "{bad:?}");

    // A viewer may read but not write.
    let viewer = ctl.run(&["token", "create", "--role", "viewer", "--name", "dash"]).await;
    assert!(viewer.stderr.contains("shown only this once"), "{viewer:?}");
    let viewer = ctl.with_token(viewer.ok().trim());
    viewer.run(&["backend", "list"]).await.ok();
    let err = viewer.run(&["pool", "add", "nope"]).await.failed();
    assert!(err.contains("permission denied"), "{err}");
    let tokens = ctl.run(&["-o", "json", "token", "list"]).await.json();
    assert!(tokens["tokens"].as_array().unwrap().iter().any(|t| t["name"] == "dash" && t["role"] == "viewer"));

    // Per-node tokens: issued per node id (twice, to rotate), listed without secrets,
    // revoked by node id.
    let first = ctl.run(&["node-token", "create", "edge-1", "--region", "eu"]).await;
    assert!(first.stderr.contains("node edge-1") && first.stderr.contains("shown only this once"), "{first:?}");
    let first = first.ok().trim().to_owned();
    let second = ctl.run(&["node-token", "create", "edge-1"]).await.ok().trim().to_owned();
    assert_ne!(first, second);
    let listed = ctl.run(&["node-token", "list"]).await.ok();
    let rows: Vec<&str> = listed.lines().filter(|l| l.contains("edge-1")).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(rows.iter().any(|r| r.contains(" eu ")), "{listed}");
    assert!(!listed.contains(&first) && !listed.contains(&second), "secrets never listed");
    let err = ctl.run(&["node-token", "create", "not a node id"]).await.failed();
    assert!(err.contains("node_id"), "{err}");
    let out = ctl.run(&["node-token", "revoke", "edge-1"]).await.ok();
    assert!(out.starts_with("revoked tok_") && out.matches("tok_").count() == 2, "{out}");
    assert!(!ctl.run(&["node-token", "list"]).await.ok().contains("edge-1"));
    let err = ctl.run(&["node-token", "revoke", "edge-1"]).await.failed();
    assert!(err.contains("no node token"), "{err}");

    // Key validation against the mock provider.
    let out = ctl.run(&["backend", "validate", "--base-url", &provider, "--api-key", GOOD_KEY]).await.ok();
    assert!(out.contains("m1") && out.contains("200"), "{out}");
    let bad = ctl.run(&["backend", "validate", "--base-url", &provider, "--api-key", "bad-key-000000000"]).await;
    assert!(bad.stdout.contains("401"), "{bad:?}");
    assert!(bad.failed().contains("Incorrect API key"));
    let err = ctl
        .run(&[
            "backend",
            "add",
            "--name",
            "gamma",
            "--base-url",
            &provider,
            "--api-key",
            "bad-key-000000000",
            "--model",
            "m1",
            "--validate",
        ])
        .await
        .failed();
    assert!(err.contains("api_key") && err.contains("Incorrect API key"), "{err}");
    let out = ctl
        .run_with(
            &[
                "backend",
                "add",
                "--name",
                "gamma",
                "--base-url",
                &provider,
                "--api-key-env",
                "GAMMA_KEY",
                "--model",
                "m1",
                "--validate",
            ],
            None,
            &[("GAMMA_KEY", GOOD_KEY)],
        )
        .await
        .ok();
    assert!(out.contains("key validated"), "{out}");
    ctl.run(&["backend", "validate", "gamma"]).await.ok();

    // Export to a private file, change things, import the backup back.
    let backup = dir.path().join("backup.json");
    let backup_path = backup.to_str().unwrap();
    let out = ctl.run(&["export", backup_path]).await.ok();
    assert!(out.contains("exported config version"), "{out}");
    let document: Value = serde_json::from_slice(&std::fs::read(&backup)?)?;
    assert!(!document.to_string().contains(PLAIN_KEY), "keys stay encrypted in a backup");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&backup)?.permissions().mode() & 0o777, 0o600);
    }
    let out = ctl.run(&["backend", "rm", "alpha"]).await.ok();
    assert!(out.contains("deleted backend alpha"), "{out}");
    let err = ctl.run(&["backend", "get", "alpha"]).await.failed();
    assert!(err.contains("not found"), "{err}");
    let imported = ctl.run(&["-o", "json", "import", backup_path]).await.json();
    assert_eq!(imported["backends"], 3);
    let alpha = ctl.run(&["-o", "json", "backend", "get", "alpha"]).await.json();
    assert_eq!(alpha["rpm_limit"], 60);
    ctl.run(&["backend", "validate", "gamma"]).await.ok();

    // Remove a backend for good.
    ctl.run(&["backend", "rm", "beta"]).await.ok();
    let listed = ctl.run(&["-o", "json", "backend", "list"]).await.json();
    assert!(listed["backends"].as_array().unwrap().iter().all(|b| b["name"] != "beta"));

    // Nodes (none connected), version, audit.
    let nodes = ctl.run(&["-o", "json", "nodes"]).await.json();
    assert!(nodes["nodes"].as_array().is_none_or(|n| n.is_empty()), "{nodes}");
    assert!(ctl.run(&["nodes"]).await.ok().starts_with("ID "));
    let version: u64 = ctl.run(&["version"]).await.ok().trim().parse()?;
    assert!(version >= 10, "every write bumped the version: {version}");
    let audit = ctl.run(&["audit", "--since", "1h"]).await.ok();
    assert!(audit.contains("CreateBackend") && audit.contains("Import"), "{audit}");

    // Authentication failures.
    let err = ctl.with_token("wrong-token-0000000000").run(&["backend", "list"]).await.failed();
    assert!(err.contains("unauthenticated"), "{err}");
    let err = ctl.with_token("").run(&["backend", "list"]).await.failed();
    assert!(err.contains("--token") && err.contains("SIDECAR_TOKEN"), "{err}");

    stop_tx.send(()).ok();
    server.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_control_plane_is_named_in_the_error() -> anyhow::Result<()> {
    // Bind then drop, so nothing listens on the port.
    let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let ctl = Ctl { server: format!("http://{addr}"), token: ADMIN.to_owned() };
    let err = ctl.run(&["backend", "list"]).await.failed();
    assert!(err.contains(&format!("cannot reach the control plane at http://{addr}")), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn several_control_urls_use_the_first_that_answers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = MasterKey::generate_hex();
    let (addr, stop, task) = start_control_plane(dir.path().to_str().unwrap(), &key).await?;
    let dead = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let ctl = Ctl { server: format!("{dead}, http://{addr}"), token: ADMIN.to_owned() };
    let listed = ctl.run(&["-o", "json", "pool", "list"]).await.json();
    assert!(listed.to_string().contains("primary"), "{listed}");
    // None answers: the error names them all.
    let ctl = Ctl { server: format!("{dead},{dead}"), token: ADMIN.to_owned() };
    let err = ctl.run(&["pool", "list"]).await.failed();
    assert!(err.contains(&format!("cannot reach the control plane at http://{dead},http://{dead}")), "{err}");
    let _ = stop.send(());
    task.await??;
    Ok(())
}

const NODE: &str = "node-token-0123456789abcdef";

/// Starts a control plane on `data_dir`; returns its address, its stop switch and task.
async fn start_control_plane(
    data_dir: &str,
    key: &str,
) -> anyhow::Result<(
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), sidecar_control_plane::ServeError>>,
)> {
    let (data_dir, key) = (data_dir.to_owned(), key.to_owned());
    let env = move |name: &str| match name {
        "SIDECAR_ENCRYPTION_KEY" => Some(key.clone()),
        "SIDECAR_ADMIN_TOKEN" => Some(ADMIN.to_owned()),
        "SIDECAR_NODE_TOKEN" => Some(NODE.to_owned()),
        "SIDECAR_DATA_DIR" => Some(data_dir.clone()),
        _ => None,
    };
    let config = ControlConfig::resolve(&Flags::default(), &env)?;
    let cp = ControlPlane::open(&config)?;
    let api = TcpListener::bind("127.0.0.1:0").await?;
    let ops = TcpListener::bind("127.0.0.1:0").await?;
    let addr = api.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(cp.serve(api, ops, async move {
        let _ = stop_rx.await;
    }));
    Ok((addr, stop_tx, task))
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecarctl_shows_stats_and_cooldowns() -> anyhow::Result<()> {
    use sidecar_control_plane::store::{CooldownRecord, Store};
    use sidecar_proto::v1::{self as pb, node_service_client::NodeServiceClient};

    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data").to_string_lossy().into_owned();
    let key = MasterKey::generate_hex();
    let (addr, stop, task) = start_control_plane(&data_dir, &key).await?;
    let ctl = Ctl { server: format!("http://{addr}"), token: ADMIN.to_owned() };
    let alpha = ctl
        .run(&[
            "-o",
            "json",
            "backend",
            "add",
            "--name",
            "alpha",
            "--base-url",
            "https://api.example.com/v1",
            "--api-key",
            PLAIN_KEY,
            "--model",
            "gpt-4o",
        ])
        .await
        .json();
    let alpha_id = alpha["backend"]["id"].as_str().unwrap().to_owned();

    // A node reports: 3 answers from alpha (one after a 429 elsewhere), 1 from the proxy.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let minute = now - now % 60_000;
    let batch = pb::ReportBatch {
        node_id: "node-eu-1".into(),
        boot_id: "boot-1".into(),
        seq: 1,
        records: vec![
            pb::UsageRecord {
                minute_ms: minute,
                backend_id: alpha_id.clone(),
                model: "gpt-4o".into(),
                pool: "primary".into(),
                attempts: 4,
                succeeded: 3,
                errors_429: 1,
                answered: 3,
                prompt_tokens: 30,
                completion_tokens: 15,
                total_tokens: 45,
                cost_usd: 0.25,
                latency_ms_sum: 400,
                ..Default::default()
            },
            pb::UsageRecord {
                minute_ms: minute,
                backend_id: String::new(),
                model: "unknown-model".into(),
                answered: 1,
                answered_errors: 1,
                ..Default::default()
            },
        ],
        sent_at_ms: now,
        ..Default::default()
    };
    let channel = tonic::transport::Channel::from_shared(ctl.server.clone())?.connect().await?;
    let mut request = tonic::Request::new(batch);
    request.metadata_mut().insert("authorization", format!("Bearer {NODE}").parse()?);
    let ack = NodeServiceClient::new(channel).report(request).await?.into_inner();
    assert!(ack.applied);

    // Stop, record a cooldown in the store directly (the fleet records them), restart:
    // the usage survives the restart as well.
    stop.send(()).ok();
    task.await??;
    {
        let store = Store::open(std::path::Path::new(&data_dir))?;
        store.record_cooldown(&CooldownRecord {
            backend_id: alpha_id.clone(),
            node_id: "node-eu-1".into(),
            consecutive_count: 2,
            duration_ms: 60_000,
            retry_after_ms: 5_000,
            start_ms: now - 600_000,
            end_ms: now - 540_000,
            model: String::new(),
        })?;
        store.flush().await?;
    }
    let (addr, stop, task) = start_control_plane(&data_dir, &key).await?;
    let ctl = Ctl { server: format!("http://{addr}"), token: ADMIN.to_owned() };

    // JSON: totals and by_backend carry the figures flat, as scripts expect them.
    let stats = ctl.run(&["-o", "json", "stats", "--since", "1h"]).await.json();
    let totals = &stats["totals"];
    assert_eq!(totals["requests"], 4, "{stats}");
    assert_eq!(totals["succeeded"], 3);
    assert_eq!(totals["errors"], 1);
    assert_eq!(totals["rate_limited"], 1);
    assert_eq!(totals["prompt_tokens"], 30);
    assert_eq!(totals["completion_tokens"], 15);
    assert_eq!(totals["cost_usd"], 0.25);
    assert_eq!(stats["granularity"], "minute");
    assert!(stats["since_ms"].as_i64().unwrap() < stats["until_ms"].as_i64().unwrap());
    let by_backend = stats["by_backend"].as_array().unwrap();
    assert_eq!(by_backend.len(), 2, "{stats}");
    assert_eq!(by_backend[0]["backend_id"], "", "the proxy's own answers");
    assert_eq!(by_backend[0]["requests"], 1);
    assert_eq!(by_backend[0]["errors"], 1);
    assert_eq!(by_backend[1]["backend_id"], alpha_id.as_str());
    assert_eq!(by_backend[1]["backend_name"], "alpha");
    for (field, want) in [
        ("requests", json!(3)),
        ("succeeded", json!(3)),
        ("errors", json!(0)),
        ("rate_limited", json!(1)),
        ("prompt_tokens", json!(30)),
        ("completion_tokens", json!(15)),
        ("cost_usd", json!(0.25)),
    ] {
        assert_eq!(by_backend[1][field], want, "by_backend[1].{field}: {stats}");
    }
    assert!(by_backend[1].get("totals").is_none(), "flat, not nested");

    // Grouped and filtered.
    let grouped = ctl.run(&["-o", "json", "stats", "--by", "model,node", "--backend", "alpha"]).await.json();
    let rows = grouped["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{grouped}");
    assert_eq!(rows[0]["model"], "gpt-4o");
    assert_eq!(rows[0]["node_id"], "node-eu-1");
    assert_eq!(rows[0]["requests"], 3);
    assert_eq!(grouped["totals"]["requests"], 3);

    // Table: totals, the per-backend table, and the grouped rows.
    let table = ctl.run(&["stats", "--by", "model"]).await.ok();
    assert!(table.lines().any(|l| l.starts_with("requests:") && l.ends_with(" 4")), "{table}");
    let header = table.lines().find(|l| l.starts_with("BACKEND")).unwrap();
    for column in ["REQUESTS", "SUCCEEDED", "ERRORS", "429", "PROMPT", "COMPLETION", "COST"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(table.lines().any(|l| l.starts_with("alpha ") && l.contains(" 0.250000")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("(proxy) ")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("MODEL ")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("unknown-model ")), "{table}");

    // Usage mistakes are caught locally (exit 2); bad ranges by the server (exit 1).
    let bad = ctl.run(&["stats", "--by", "colour"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    let bad = ctl.run(&["stats", "--since", "soon"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    let err = ctl.run(&["stats", "--since", "1h", "--until", "2h"]).await.failed();
    assert!(err.contains("invalid argument") && err.contains("until_ms"), "{err}");

    // Cooldowns, with the backend's name, filterable by backend and node.
    let cooldowns = ctl.run(&["-o", "json", "cooldowns"]).await.json();
    let events = cooldowns["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{cooldowns}");
    assert_eq!(events[0]["backend_name"], "alpha");
    assert_eq!(events[0]["node_id"], "node-eu-1");
    assert_eq!(events[0]["consecutive_count"], 2);
    assert_eq!(events[0]["duration_ms"], 60_000);
    let table = ctl.run(&["cooldowns", "--backend", "alpha"]).await.ok();
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("START") && header.contains("RETRY_AFTER"), "{table}");
    let row = table.lines().nth(1).unwrap();
    assert!(row.contains("alpha") && row.contains("node-eu-1") && row.contains("1m"), "{table}");
    for args in
        [&["-o", "json", "cooldowns", "--node", "node-us-1"][..], &["-o", "json", "cooldowns", "--since", "5m"][..]]
    {
        let none = ctl.run(args).await.json();
        assert!(none["events"].as_array().is_none_or(|e| e.is_empty()), "{args:?}: {none}");
    }

    // Nodes show when each last reported.
    let nodes = ctl.run(&["nodes"]).await.ok();
    assert!(nodes.lines().next().unwrap().contains("LAST_REPORT"), "{nodes}");
    assert!(nodes.contains("node-eu-1"), "{nodes}");

    stop.send(()).ok();
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecarctl_manages_client_keys() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data").to_string_lossy().into_owned();
    let key = MasterKey::generate_hex();
    let (addr, stop, task) = start_control_plane(&data_dir, &key).await?;
    let ctl = Ctl { server: format!("http://{addr}"), token: ADMIN.to_owned() };

    // The secret alone on stdout (KEY=$(sidecarctl key create ...)), the note on stderr.
    let run = ctl
        .run(&["key", "create", "--name", "ci", "--team", "platform", "--model", "gpt-4o", "--expires", "30days"])
        .await;
    assert!(run.stderr.contains("shown only this once"), "{run:?}");
    let secret = run.ok().trim().to_owned();
    assert!(secret.starts_with("sk-sc-") && secret.len() >= 38, "{secret}");

    let list = ctl.run(&["key", "list"]).await.ok();
    assert!(list.starts_with("ID ") && list.contains("ci") && list.contains(&secret[..10]), "{list}");
    assert!(!list.contains(&secret[10..]), "only a prefix is listed: {list}");
    let shown = ctl.run(&["-o", "json", "key", "show", "ci"]).await.json();
    assert_eq!(shown["team"], "platform");
    assert_eq!(shown["models"], serde_json::json!(["gpt-4o"]));
    assert!(shown["expires_at_ms"].as_i64().is_some_and(|at| at > 0), "{shown}");

    let updated =
        ctl.run(&["-o", "json", "key", "update", "ci", "--all-models", "--disable", "--no-expiry"]).await.json();
    assert_eq!(updated["models"], serde_json::json!([]), "{updated}");
    assert_eq!(updated["enabled"], false, "{updated}");
    assert_eq!(updated["expires_at_ms"], 0, "{updated}");
    let shown = ctl.run(&["key", "show", "ci"]).await.ok();
    assert!(shown.contains("disabled") && shown.contains("models") && shown.contains("all"), "{shown}");

    let rotated = ctl.run(&["key", "rotate", "ci"]).await.ok().trim().to_owned();
    assert!(rotated.starts_with("sk-sc-") && rotated != secret);
    let out = ctl.run(&["key", "revoke", "ci"]).await.ok();
    assert!(out.contains("revoked key ci"), "{out}");
    assert!(!ctl.run(&["key", "list"]).await.ok().contains("ci"));
    assert!(ctl.run(&["key", "list", "--all"]).await.ok().contains("revoked"));

    // Bad input is named; usage errors are clap's.
    let err = ctl.run(&["key", "create", "--name", "x", "--pool", "nope"]).await.failed();
    assert!(err.contains("key.pools[0]") && err.contains("unknown pool"), "{err}");
    let err = ctl.run(&["key", "create", "--name", "x", "--expires", "someday"]).await.usage_error();
    assert!(err.contains("RFC 3339"), "{err}");
    let err = ctl.run(&["key", "show", "nobody"]).await.failed();
    assert!(err.contains("not found"), "{err}");

    stop.send(()).ok();
    task.await??;
    Ok(())
}

/// V2's `backends` table, as V2 created it (seeds: the V2 schema).
const V2_DDL: &str = "CREATE TABLE IF NOT EXISTS backends (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, label TEXT DEFAULT '', api_base_url TEXT NOT NULL,
    api_key_encrypted TEXT NOT NULL, api TEXT NOT NULL DEFAULT 'openai-completions',
    timeout_seconds INTEGER NOT NULL DEFAULT 120, rpm_limit INTEGER NOT NULL DEFAULT 40,
    pool TEXT NOT NULL DEFAULT 'primary' CHECK(pool IN ('primary', 'fallback')),
    enabled INTEGER NOT NULL DEFAULT 1,
    status TEXT NOT NULL DEFAULT 'healthy' CHECK(status IN ('healthy', 'cooling', 'error', 'disabled')),
    model_mappings_json TEXT DEFAULT '{}',
    source TEXT NOT NULL DEFAULT 'webui' CHECK(source IN ('webui', 'env', 'import')),
    cooldown_until TEXT, consecutive_429_count INTEGER DEFAULT 0, metadata_json TEXT DEFAULT '{}',
    created_at TEXT NOT NULL DEFAULT (datetime('now')), updated_at TEXT NOT NULL DEFAULT (datetime('now')));";
/// V2's example SIDECAR_ENCRYPTION_KEY, and keys sealed under it by V2's code path
/// (Python `cryptography` AESGCM, `nonce_hex:ciphertext_hex`).
const V2_KEY: &str = "0000111122223333444455556666777788889999aaaabbbbccccddddeeeeffff";
const V2_GOOD_KEY: &str =
    "84bf38fe82a8813e767f8992:fd2e723b97860e2aba3cb551e1da58c29c444844c0bf2682980ebb7030acfea1e65a77";
const V2_ANTHROPIC_KEY: &str =
    "2216189d61486825dc72174f:8edd9b07ee932d5e5e3ba75fa69b8cfa42afb91d17e713d3eb97f300a9ac2ca9f70bd797b9bbee5f";

#[tokio::test(flavor = "multi_thread")]
async fn sidecarctl_imports_the_providers_of_a_v2_database() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data").to_string_lossy().into_owned();
    let (addr, stop, task) = start_control_plane(&data_dir, &MasterKey::generate_hex()).await?;
    let ctl = Ctl { server: format!("http://{addr}"), token: ADMIN.to_owned() };
    let provider = mock_provider().await;

    let db_path = dir.path().join("sidecar_v2.db");
    let db = rusqlite::Connection::open(&db_path)?;
    db.execute_batch(V2_DDL)?;
    let mappings = json!({"gpt-4o": {"native_id": "openai/gpt-4o", "cost": {"input": 2.5e-6, "output": 1e-5, "cacheRead": 1.25e-6, "cacheWrite": 0.0},
        "context_window": 128000, "max_tokens": 16384, "reasoning": false, "input_modalities": ["text", "image"], "compat": {}}});
    db.execute(
        "INSERT INTO backends (id, name, label, api_base_url, api_key_encrypted, rpm_limit, pool, model_mappings_json, metadata_json, status, consecutive_429_count)
         VALUES ('b-1', 'v2-openai', 'OpenAI', ?1, ?2, 90, 'primary', ?3, '{\"team\": \"ml\", \"tier\": 4}', 'cooling', 3)",
        rusqlite::params![format!("http://{provider}/v1"), V2_GOOD_KEY, mappings.to_string()],
    )?;
    db.execute(
        "INSERT INTO backends (id, name, api_base_url, api_key_encrypted, api, timeout_seconds, pool, enabled, model_mappings_json)
         VALUES ('b-2', 'v2-claude', 'https://api.anthropic.com/v1', ?1, 'anthropic-messages', 300, 'fallback', 0, '{\"claude\": {\"native_id\": \"claude-sonnet-4-5\"}}')",
        [V2_ANTHROPIC_KEY],
    )?;
    // A row whose key does not decrypt (sealed under another key) is reported and skipped.
    db.execute(
        "INSERT INTO backends (id, name, api_base_url, api_key_encrypted) VALUES ('b-3', 'v2-broken', 'https://x.example/v1', ?1)",
        [V2_GOOD_KEY.replace(":fd", ":fe")],
    )?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS system_config (key TEXT PRIMARY KEY, value TEXT NOT NULL, description TEXT DEFAULT '',
           updated_at TEXT NOT NULL DEFAULT (datetime('now')));
         INSERT INTO system_config (key, value) VALUES ('queue_max_depth', '250'), ('cooldown_base_seconds', '45.0'),
           ('emergency_rpm_fraction', '0.2'), ('port', '9190'), ('log_level', 'INFO');
         CREATE TABLE IF NOT EXISTS backend_usage_logs (id TEXT PRIMARY KEY,
           backend_id TEXT NOT NULL REFERENCES backends(id) ON DELETE CASCADE, model TEXT DEFAULT 'unknown',
           prompt_tokens INTEGER DEFAULT 0, completion_tokens INTEGER DEFAULT 0, total_tokens INTEGER DEFAULT 0,
           cost REAL DEFAULT 0.0, request_count INTEGER DEFAULT 0, error_count INTEGER DEFAULT 0,
           avg_latency_ms INTEGER DEFAULT 0, ttft_ms INTEGER DEFAULT 0, hour_bucket TEXT NOT NULL,
           created_at TEXT NOT NULL DEFAULT (datetime('now')));
         INSERT INTO backend_usage_logs (id, backend_id, model, prompt_tokens, completion_tokens, total_tokens, cost,
           request_count, error_count, avg_latency_ms, hour_bucket) VALUES
           ('u1', 'b-1', 'gpt-4o', 100, 50, 150, 0.5, 10, 1, 200, strftime('%Y-%m-%dT%H:00:00Z', 'now', '-3 hours')),
           ('u2', 'b-1', 'gpt-4o', 40, 20, 60, 0.25, 4, 0, 100, strftime('%Y-%m-%dT%H:00:00Z', 'now', '-2 hours')),
           ('u3', 'b-3', 'x', 1, 1, 2, 0.01, 1, 0, 1, strftime('%Y-%m-%dT%H:00:00Z', 'now', '-2 hours'));",
    )?;
    drop(db);
    let db_arg = db_path.to_string_lossy().into_owned();
    let env = [("V2KEY", V2_KEY)];

    // A wrong old key imports nothing, and says why.
    let wrong = "1".repeat(64);
    let err = ctl.run_with(&["import-v2", "--db", &db_arg, "--v2-key", &wrong], None, &[]).await.failed();
    assert!(
        err.contains("nothing imported") && err.contains("no provider key decrypts") && err.contains("v2-openai"),
        "{err}"
    );
    assert!(!err.contains("good-key"), "{err}");
    // A dry run creates nothing.
    let run = ctl.run_with(&["import-v2", "--db", &db_arg, "--v2-key-env", "V2KEY", "--dry-run"], None, &env).await;
    let dry = run.stdout.clone();
    assert!(run.failed().contains("1 of 3 V2 backends cannot be imported"));
    assert!(dry.contains("would import") && dry.contains("v2-claude"), "{dry}");
    assert!(dry.contains("good-k****6789") && !dry.contains("good-key-0123456789"), "keys masked: {dry}");
    assert!(dry.contains("settings: would change") && dry.contains("queue_capacity: Some(250)"), "{dry}");
    assert!(ctl.run(&["-o", "json", "backend", "list"]).await.json()["backends"].as_array().unwrap().is_empty());

    let run = ctl.run_with(&["import-v2", "--db", &db_arg, "--v2-key-env", "V2KEY"], None, &env).await;
    let out = run.stdout.clone();
    assert!(run.failed().contains("1 of 3 V2 backends were not imported"));
    assert_eq!(out.matches(" imported ").count(), 2, "{out}");
    assert!(
        out.lines().any(|l| l.contains("v2-broken") && l.contains("failed") && l.contains("wrong V2 key")),
        "{out}"
    );
    assert!(out.contains("settings: changed"), "{out}");
    assert!(out.contains("usage: 2 hours of V2 usage history added, 0 already imported"), "{out}");
    let history = ctl.run(&["-o", "json", "stats", "--since", "12h", "--granularity", "hour"]).await.json();
    let t = &history["totals"];
    assert_eq!(
        (&t["requests"], &t["errors"], &t["prompt_tokens"], &t["completion_tokens"]),
        (&json!(14), &json!(1), &json!(140), &json!(70)),
        "{history}"
    );
    assert!((t["cost_usd"].as_f64().unwrap() - 0.75).abs() < 1e-9, "{history}");
    let grouped = ctl
        .run(&["-o", "json", "stats", "--since", "12h", "--granularity", "hour", "--by", "node,backend"])
        .await
        .json();
    assert!(grouped.to_string().contains("v2-import"), "{grouped}");
    let settings = ctl.run(&["-o", "json", "settings", "get"]).await.json();
    let s = &settings["settings"];
    assert_eq!((&s["queue_capacity"], &s["cooldown_base_seconds"]), (&json!(250), &json!(45)), "{settings}");
    assert_eq!(s["emergency_fraction"], 0.2);
    assert!(
        !out.contains("good-key-0123456789") && !out.contains("sk-ant-v2-key-abcdefghij"),
        "no key is printed: {out}"
    );
    assert!(out.lines().any(|l| l.starts_with("b-3") && l.contains("v2-broken")), "{out}");
    let openai = ctl.run(&["-o", "json", "backend", "get", "v2-openai"]).await.json();
    assert_eq!(
        (&openai["source"], &openai["api"], &openai["pool"], &openai["rpm_limit"], &openai["enabled"]),
        (&json!("import"), &json!("openai"), &json!("primary"), &json!(90), &json!(true)),
        "{openai}"
    );
    assert_eq!(openai["label"], "OpenAI");
    assert_eq!(openai["metadata"], json!({"team": "ml", "tier": "4"}));
    let gpt = &openai["model_mappings"]["gpt-4o"];
    assert_eq!(gpt["native_id"], "openai/gpt-4o");
    assert_eq!((gpt["cost"]["input"].as_f64(), gpt["cost"]["cache_read"].as_f64()), (Some(2.5e-6), Some(1.25e-6)));
    assert_eq!((&gpt["max_tokens"], &gpt["input_modalities"]), (&json!(16384), &json!(["text", "image"])));
    assert_eq!(openai["status"], "healthy", "V2's runtime state (cooling, 429 count) stays behind");
    // The key came over decrypted and re-sealed: the provider accepts it.
    let valid = ctl.run(&["-o", "json", "backend", "validate", "v2-openai"]).await.json();
    assert_eq!(valid["ok"], true, "{valid}");
    let claude = ctl.run(&["-o", "json", "backend", "get", "v2-claude"]).await.json();
    assert_eq!(
        (&claude["api"], &claude["pool"], &claude["enabled"]),
        (&json!("anthropic"), &json!("fallback"), &json!(false))
    );
    assert_eq!(claude["timeout_seconds"], 300);
    assert!(claude["api_key_masked"].as_str().unwrap().starts_with("sk-ant"), "{claude}");

    // Again: nothing changes.
    let again = ctl.run_with(&["import-v2", "--db", &db_arg, "--v2-key-env", "V2KEY"], None, &env).await;
    assert_eq!(again.stdout.matches("skipped").count(), 2, "{again:?}");
    assert!(again.stdout.contains("settings: unchanged"), "{again:?}");
    assert!(again.stdout.contains("0 hours of V2 usage history added, 2 already imported"), "{again:?}");
    let history = ctl.run(&["-o", "json", "stats", "--since", "12h", "--granularity", "hour"]).await.json();
    assert_eq!(history["totals"]["requests"], 14, "not counted twice: {history}");
    // Not a V2 database, or no file: named.
    let err = ctl.run_with(&["import-v2", "--db", &data_dir, "--v2-key", V2_KEY], None, &[]).await.usage_error();
    assert!(err.contains("no such file"), "{err}");
    let not_v2 = dir.path().join("other.db");
    rusqlite::Connection::open(&not_v2)?.execute_batch("CREATE TABLE t (x)")?;
    let err = ctl.run(&["import-v2", "--db", &not_v2.to_string_lossy(), "--v2-key", V2_KEY]).await.failed();
    assert!(err.contains("not a Sidecar V2 database"), "{err}");

    stop.send(()).ok();
    task.await??;
    Ok(())
}
