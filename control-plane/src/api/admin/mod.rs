//! AdminService: one table maps every RPC to the access it needs and its handler; one
//! wrapper (`AdminApi::call`) authenticates, checks the role, runs the handler and
//! records the per-RPC metric. Handlers live by resource and are thin: convert in, call
//! the domain, convert out.

mod backends;
mod dashboard;
mod keys;
mod nodes;
mod pools;
mod settings;
mod stats;
mod tokens;
mod transfer;

use std::{future::Future, sync::Arc};

use sidecar_proto::v1::{self as pb, admin_service_server::AdminService};
use tonic::{Code, Request, Response, Status};

use super::error::ApiError;
use crate::{
    auth::{Access, Principal},
    metrics, probe,
    state::Shared,
    store::Store,
};

/// The AdminService implementation.
pub struct AdminApi {
    shared: Arc<Shared>,
    http: reqwest::Client,
}

impl AdminApi {
    /// An AdminService over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared, http: probe::client() }
    }

    fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Authenticates the caller for `access`, runs `handler` with who it is and the
    /// request's message, and records the outcome as `method` in the admin request metric.
    async fn call<Req, Resp, Fut>(
        &self,
        method: &'static str,
        access: Access,
        request: Request<Req>,
        handler: impl FnOnce(Principal, Req) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: Future<Output = Result<Resp, ApiError>>,
    {
        let authorization = request.metadata().get("authorization").map(|v| v.as_bytes());
        let result = match self.shared.auth.check(authorization, access) {
            Ok(who) => handler(who, request.into_inner()).await.map_err(Status::from),
            Err(e) => Err(ApiError::from(e).into()),
        };
        metrics::admin_request(method, result.as_ref().map_or_else(Status::code, |_| Code::Ok));
        result.map(Response::new)
    }
}

/// Generates the AdminService methods from the table: `rpc(Request) -> Response: "Name",
/// access => handler;`.
macro_rules! rpcs {
    ($($rpc:ident($req:ident) -> $resp:ident : $name:literal, $access:ident => $handler:path;)*) => {
        #[tonic::async_trait]
        impl AdminService for AdminApi {
            $(
                async fn $rpc(&self, request: Request<pb::$req>) -> Result<Response<pb::$resp>, Status> {
                    self.call($name, Access::$access, request, |who, req| $handler(self, who, req)).await
                }
            )*

            type WatchDashboardStream = dashboard::DashboardStream;

            async fn watch_dashboard(
                &self,
                request: Request<pb::WatchDashboardRequest>,
            ) -> Result<Response<Self::WatchDashboardStream>, Status> {
                self.call("WatchDashboard", Access::AdminRead, request, |_, _| async { Ok(dashboard::watch(self)) })
                    .await
            }
        }
    };
}

rpcs! {
    create_backend(CreateBackendRequest) -> BackendResponse: "CreateBackend", AdminWrite => backends::create;
    get_backend(GetBackendRequest) -> Backend: "GetBackend", AdminRead => backends::get;
    list_backends(ListBackendsRequest) -> ListBackendsResponse: "ListBackends", AdminRead => backends::list;
    update_backend(UpdateBackendRequest) -> BackendResponse: "UpdateBackend", AdminWrite => backends::update;
    delete_backend(DeleteBackendRequest) -> WriteResponse: "DeleteBackend", AdminWrite => backends::delete;
    validate_backend(ValidateBackendRequest) -> ValidateBackendResponse: "ValidateBackend", AdminWrite => backends::validate;
    create_pool(CreatePoolRequest) -> PoolResponse: "CreatePool", AdminWrite => pools::create;
    update_pool(UpdatePoolRequest) -> PoolResponse: "UpdatePool", AdminWrite => pools::update;
    list_pools(ListPoolsRequest) -> ListPoolsResponse: "ListPools", AdminRead => pools::list;
    delete_pool(DeletePoolRequest) -> WriteResponse: "DeletePool", AdminWrite => pools::delete;
    get_settings(GetSettingsRequest) -> SettingsResponse: "GetSettings", AdminRead => settings::get;
    update_settings(UpdateSettingsRequest) -> SettingsResponse: "UpdateSettings", AdminWrite => settings::update;
    get_config_version(GetConfigVersionRequest) -> ConfigVersion: "GetConfigVersion", AdminRead => settings::version;
    list_audit(ListAuditRequest) -> ListAuditResponse: "ListAudit", AdminRead => settings::audit;
    list_nodes(ListNodesRequest) -> ListNodesResponse: "ListNodes", AdminRead => nodes::list;
    create_token(CreateTokenRequest) -> CreateTokenResponse: "CreateToken", AdminWrite => tokens::create;
    list_tokens(ListTokensRequest) -> ListTokensResponse: "ListTokens", AdminRead => tokens::list;
    revoke_token(RevokeTokenRequest) -> WriteResponse: "RevokeToken", AdminWrite => tokens::revoke;
    create_key(CreateKeyRequest) -> CreateKeyResponse: "CreateKey", AdminWrite => keys::create;
    list_keys(ListKeysRequest) -> ListKeysResponse: "ListKeys", AdminRead => keys::list;
    get_key(GetKeyRequest) -> ClientKey: "GetKey", AdminRead => keys::get;
    update_key(UpdateKeyRequest) -> ClientKey: "UpdateKey", AdminWrite => keys::update;
    revoke_key(RevokeKeyRequest) -> ClientKey: "RevokeKey", AdminWrite => keys::revoke;
    rotate_key(RotateKeyRequest) -> CreateKeyResponse: "RotateKey", AdminWrite => keys::rotate;
    export(ExportRequest) -> ExportResponse: "Export", AdminWrite => transfer::export;
    import(ImportRequest) -> ImportResponse: "Import", AdminWrite => transfer::import;
    rotate_encryption_key(RotateEncryptionKeyRequest) -> RotateEncryptionKeyResponse: "RotateEncryptionKey", AdminWrite => transfer::rotate;
    get_stats(GetStatsRequest) -> GetStatsResponse: "GetStats", AdminRead => stats::get;
    list_cooldowns(ListCooldownsRequest) -> ListCooldownsResponse: "ListCooldowns", AdminRead => stats::cooldowns;
    import_usage(ImportUsageRequest) -> ImportUsageResponse: "ImportUsage", AdminWrite => stats::import_usage;
}

/// Refuses a write whose expected resource version is not the current one.
fn check_version(kind: &str, id: &str, current: u64, expected: Option<u64>) -> Result<(), ApiError> {
    match expected {
        Some(expected) if expected != current => Err(ApiError::Conflict(format!(
            "{kind} {id} is at resource version {current}, not {expected}: re-read it and retry"
        ))),
        _ => Ok(()),
    }
}
