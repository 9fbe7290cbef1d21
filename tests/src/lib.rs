//! End-to-end harness: starts the control plane in-process on port 0 (and, later,
//! proxies), plus scriptable mock upstreams, and gives tests real tonic clients.

#![forbid(unsafe_code)]

pub mod control;
pub mod gateway;
pub mod mock;
pub mod pki;
pub mod proxy;
pub mod sim;

use std::{future::Future, time::Duration};

pub use control::{ControlPlaneHarness, Options};
pub use gateway::Gateway;
pub use mock::{LimitHeaders, MockUpstream, Reply};
pub use proxy::{ProxyHarness, ProxyOptions};

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
/// Used instead of fixed sleeps: the test waits exactly as long as the system needs.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Python that has the tests' packages (`openai`, `grpcio-reflection`):
/// `$SIDECAR_TEST_PYTHON`, else the virtualenv `scripts/install-test-deps.sh` makes under
/// `target/test-venv`, else `python3`.
fn test_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SIDECAR_TEST_PYTHON") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/python");
    if venv.exists() { venv } else { "python3".into() }
}

/// Runs `tests/python/<script>` with the tests' Python and `env`, asserts it succeeded,
/// and returns what it printed as JSON (what the real client saw).
pub async fn run_python_client(script: &str, env: &[(&str, String)]) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(script);
    let output = tokio::process::Command::new(test_python())
        .arg(&path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "{script} failed (scripts/install-test-deps.sh installs its packages into target/test-venv):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e})"))
}

/// Offers `rate` requests per second of `body` at `priority` through `proxy` until
/// `until`, each on its own task (an open loop: a slow answer does not slow the offer);
/// the statuses answered, once every request is answered.
pub async fn offer(
    proxy: proxy::ProxyClient,
    body: serde_json::Value,
    priority: &'static str,
    rate: f64,
    until: std::time::Instant,
) -> Vec<u16> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    while std::time::Instant::now() < until {
        tick.tick().await;
        let (p, body) = (proxy.clone(), body.clone());
        tasks.spawn(async move { p.try_post(&body, priority).await });
    }
    tasks.join_all().await
}
