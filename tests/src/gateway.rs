//! A whole gateway in one process: control plane, one proxy, and helpers to configure
//! backends on mock upstreams.

use std::collections::HashMap;

use sidecar_proto::v1 as pb;

use crate::{
    control::{AdminClient, ControlPlaneHarness, Options},
    mock::MockUpstream,
    proxy::{ProxyHarness, ProxyOptions},
};

/// Control plane + proxy.
pub struct Gateway {
    /// The control plane.
    pub cp: ControlPlaneHarness,
    /// The proxy.
    pub proxy: ProxyHarness,
    /// An admin client.
    pub admin: AdminClient,
}

/// A backend to add.
pub struct BackendDef<'a> {
    /// Name.
    pub name: &'a str,
    /// Pool.
    pub pool: &'a str,
    /// Requests per minute (per rate window).
    pub rpm: i64,
    /// (canonical, native) model pairs.
    pub models: &'a [(&'a str, &'a str)],
    /// Cost per token (input, output) for every model.
    pub cost: (f64, f64),
    /// The backend's key.
    pub key: &'a str,
    /// The provider's window in seconds (0 = the default, 60).
    pub window_seconds: i64,
    /// (canonical model, its own requests per minute) for models the provider limits
    /// separately on the key.
    pub model_limits: &'a [(&'a str, u32)],
    /// Whether proxies learn from the provider's rate-limit headers (`None` = default).
    pub learn_limits: Option<bool>,
    /// The API the provider speaks (unspecified = OpenAI).
    pub api: pb::BackendApi,
    /// Cost per token of cache reads and cache writes for every model.
    pub cache_cost: (f64, f64),
}

impl Default for BackendDef<'_> {
    fn default() -> Self {
        Self {
            name: "b",
            pool: "primary",
            rpm: 600,
            models: &[("gpt-test", "native-gpt")],
            cost: (0.0, 0.0),
            key: "sk-backend-key-0123456789",
            window_seconds: 0,
            model_limits: &[],
            learn_limits: None,
            api: pb::BackendApi::Unspecified,
            cache_cost: (0.0, 0.0),
        }
    }
}

impl Gateway {
    /// A control plane and a proxy with default options.
    pub async fn start() -> Self {
        Self::start_with(ProxyOptions::default()).await
    }

    /// A control plane and a proxy with `options`.
    pub async fn start_with(options: ProxyOptions) -> Self {
        Self::start_fleet(Options::default(), options).await
    }

    /// A control plane with `cp` options and a first proxy with `options`.
    pub async fn start_fleet(cp: Options, options: ProxyOptions) -> Self {
        let cp = ControlPlaneHarness::start_with(cp).await;
        let proxy = ProxyHarness::start(&cp.url(), &cp.node_token, options).await;
        let admin = cp.admin().await;
        proxy
            .wait_version(
                cp.admin().await.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version,
            )
            .await;
        Self { cp, proxy, admin }
    }

    /// Starts another proxy on the same control plane, running the current config.
    pub async fn add_proxy(&mut self, options: ProxyOptions) -> ProxyHarness {
        let proxy = ProxyHarness::start(&self.cp.url(), &self.cp.node_token, options).await;
        let version = self.admin.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version;
        proxy.wait_version(version).await;
        proxy
    }

    /// Adds a backend on `mock` and waits until the proxy runs the new config.
    pub async fn add_backend(&mut self, mock: &MockUpstream, def: BackendDef<'_>) -> pb::Backend {
        let created =
            self.admin.create_backend(backend_request(mock, &def)).await.expect("backend created").into_inner();
        self.proxy.wait_version(created.config_version).await;
        created.backend.unwrap()
    }

    /// Changes settings and waits until the proxy runs them.
    pub async fn settings(&mut self, patch: pb::SettingsPatch) {
        let r = self
            .admin
            .update_settings(pb::UpdateSettingsRequest { patch: Some(patch), expected_resource_version: None })
            .await
            .expect("settings updated")
            .into_inner();
        self.proxy.wait_version(r.config_version).await;
    }
}

/// The `CreateBackend` request for a backend on `mock`.
pub fn backend_request(mock: &MockUpstream, def: &BackendDef<'_>) -> pb::CreateBackendRequest {
    let mut mappings = HashMap::new();
    for (canonical, native) in def.models {
        mappings.insert(
            canonical.to_string(),
            pb::ModelMapping {
                native_id: native.to_string(),
                cost: Some(pb::ModelCost {
                    input: def.cost.0,
                    output: def.cost.1,
                    cache_read: def.cache_cost.0,
                    cache_write: def.cache_cost.1,
                }),
                rpm_limit: def.model_limits.iter().find(|(m, _)| m == canonical).map(|(_, rpm)| *rpm),
                ..Default::default()
            },
        );
    }
    pb::CreateBackendRequest {
        backend: Some(pb::BackendSpec {
            name: def.name.into(),
            base_url: mock.base_url(),
            api_key: def.key.into(),
            rpm_limit: Some(def.rpm),
            window_seconds: def.window_seconds,
            learn_limits: def.learn_limits,
            api: def.api as i32,
            pool: def.pool.into(),
            model_mappings: mappings,
            timeout_seconds: 5,
            ..Default::default()
        }),
        validate: false,
    }
}
