//! A proxy in-process on port 0, fed by a control plane, with helpers to call it.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use sidecar_data_plane::{Flags, Proxy, ProxyConfig, state::Shared};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// How to start a proxy.
#[derive(Clone)]
pub struct ProxyOptions {
    /// Node id.
    pub node_id: String,
    /// Region.
    pub region: String,
    /// Data directory; a fresh temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// Snapshot cache key (hex); a fixed test key when `None`.
    pub cache_key: Option<String>,
    /// Rate-limit window (60 s in production; short in tests).
    pub rate_window: Duration,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            node_id: "proxy-1".into(),
            region: String::new(),
            data_dir: None,
            cache_key: None,
            rate_window: Duration::from_secs(60),
            env: Vec::new(),
        }
    }
}

/// A running in-process proxy.
pub struct ProxyHarness {
    /// API address.
    pub addr: SocketAddr,
    /// Ops address.
    pub ops_addr: SocketAddr,
    /// Live state (bundle, counters).
    pub shared: Arc<Shared>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Keeps a temporary data directory alive.
    pub temp: Option<Arc<tempfile::TempDir>>,
    /// Options it was started with.
    pub options: ProxyOptions,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// The fixed cache key tests use.
pub const TEST_CACHE_KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

impl ProxyHarness {
    /// The fleet-wide consecutive 429 count of `backend` if it is cooling on this proxy now.
    pub fn cooling(&self, backend: &str) -> Option<u32> {
        let bundle = self.shared.bundle.load();
        let b = bundle.backend(backend)?;
        let c = b.state.cooldown.lock().unwrap();
        c.cooling_until(tokio::time::Instant::now()).map(|_| c.consecutive)
    }

    /// Starts a proxy syncing from `control_url` with `node_token`.
    pub async fn start(control_url: &str, node_token: &str, options: ProxyOptions) -> Self {
        let (data_dir, temp) = match &options.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir().unwrap();
                (t.path().to_path_buf(), Some(Arc::new(t)))
            }
        };
        let mut env: Vec<(String, String)> = vec![
            ("SIDECAR_CONTROL_URL".into(), control_url.into()),
            ("SIDECAR_NODE_TOKEN".into(), node_token.into()),
            ("SIDECAR_NODE_ID".into(), options.node_id.clone()),
            ("SIDECAR_REGION".into(), options.region.clone()),
            ("SIDECAR_DATA_DIR".into(), data_dir.display().to_string()),
            ("SIDECAR_CACHE_KEY".into(), options.cache_key.clone().unwrap_or_else(|| TEST_CACHE_KEY.into())),
            ("SIDECAR_RATE_WINDOW_MS".into(), options.rate_window.as_millis().to_string()),
            ("SIDECAR_SHUTDOWN_GRACE".into(), "5".into()),
        ];
        env.extend(options.env.clone());
        let lookup = move |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let config = ProxyConfig::resolve(&Flags::default(), &lookup).expect("proxy config");
        let proxy = Proxy::new(&config).expect("proxy starts");
        let shared = proxy.shared();
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, ops_addr) = (api.local_addr().unwrap(), ops.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.serve(api, ops, async move {
            let _ = stopped.await;
        }));
        Self { addr, ops_addr, shared, data_dir, temp, options, stop: Some(stop), task: Some(task) }
    }

    /// `http://addr/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The config version it runs.
    pub fn version(&self) -> u64 {
        self.shared.bundle.load().version
    }

    /// Waits until it runs `version` or later.
    pub async fn wait_version(&self, version: u64) {
        crate::eventually(&format!("proxy runs config {version}"), Duration::from_secs(10), || async {
            (self.version() >= version).then_some(())
        })
        .await;
    }

    /// POSTs JSON to `path` (e.g. `/chat/completions`) with extra headers.
    pub async fn post(&self, path: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = reqwest::Client::new().post(format!("{}{path}", self.url())).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("proxy answers")
    }

    /// A chat completion for `model` (non-streaming).
    pub async fn chat(&self, model: &str) -> reqwest::Response {
        self.post("/chat/completions", &chat_body(model, false), &[]).await
    }

    /// `GET /status` on the ops port.
    pub async fn status(&self) -> serde_json::Value {
        reqwest::get(format!("http://{}/status", self.ops_addr)).await.unwrap().json().await.unwrap()
    }

    /// One backend's entry in `/status`.
    pub async fn backend_status(&self, id: &str) -> serde_json::Value {
        let status = self.status().await;
        status["buckets"].as_array().unwrap().iter().find(|b| b["id"] == id).cloned().unwrap_or_default()
    }

    /// Stops gracefully (finishing in-flight requests, flushing reports).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("proxy task").expect("proxy stopped cleanly");
        }
    }
}

impl Drop for ProxyHarness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A chat request body.
pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{ "role": "user", "content": "hello" }],
        "stream": stream,
    })
}

/// A cheap handle for calling a proxy from spawned tasks.
#[derive(Clone)]
pub struct ProxyClient {
    url: String,
    client: reqwest::Client,
    headers: Vec<(String, String)>,
}

impl ProxyHarness {
    /// A handle that can move into a task.
    pub fn clone_handle(&self) -> ProxyClient {
        ProxyClient { url: self.url(), client: reqwest::Client::new(), headers: Vec::new() }
    }
}

impl ProxyClient {
    /// The same handle, sending `name: value` with every request (a client key).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn request(&self, priority: &str) -> reqwest::RequestBuilder {
        let mut req = self.client.post(format!("{}/chat/completions", self.url)).header("x-priority", priority);
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        req
    }

    /// POSTs a chat request with `X-Priority`; the status, or 0 if the connection failed
    /// (a proxy going away under load).
    pub async fn try_post(&self, body: &serde_json::Value, priority: &str) -> u16 {
        let sent = self.request(priority).json(body).send().await;
        sent.map_or(0, |r| r.status().as_u16())
    }

    /// POSTs a chat request with `X-Priority`; returns status and JSON body (Null if none).
    pub async fn post_status(&self, body: &serde_json::Value, priority: &str) -> (u16, serde_json::Value) {
        let resp = self.request(priority).json(body).send().await.expect("proxy answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    }
}
