//! AdminService: backends, pools, settings, nodes, tokens, export/import and key
//! rotation, for admin (read/write) and viewer (read) tokens.

mod backends;
pub mod convert;
mod pools;
mod stats;
mod transfer;

use std::{sync::Arc, time::Duration};

use sidecar_proto::v1::{self as pb, admin_service_server::AdminService};
use tonic::{Code, Request, Response, Status};
use tracing::{error, info};

use crate::{
    auth::{Access, Principal, generate_token, hash_token},
    metrics, probe,
    state::{Shared, StateError},
    store::{ConfigChange, Role, Store, StoreError, TokenRecord},
    util::{new_id, now_ms},
    validate::{self, FieldError, field_error},
};

pub use transfer::ExportDocument;

/// Timeout of a key validation call.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(10);

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        // Field paths and reasons may quote input (a map key, a rejected value): never
        // more than a bounded message goes back.
        let message = e.to_string();
        let mut status = Status::invalid_argument(crate::util::clip_to(&message, crate::util::MAX_ERROR_MESSAGE));
        if e.field.len() <= 256
            && let Ok(field) = e.field.parse()
        {
            // Lets the console put the message next to the field without parsing text.
            status.metadata_mut().insert("sidecar-field", field);
        }
        status
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        error!(error = %e, "store failure");
        Status::internal("storage error; see the control plane's log")
    }
}

impl From<StateError> for Status {
    fn from(e: StateError) -> Self {
        error!(error = %e, "config publication failure");
        Status::internal("could not publish the config; see the control plane's log")
    }
}

/// Records the call's outcome in the admin request metric.
fn observe<T>(method: &'static str, result: Result<T, Status>) -> Result<Response<T>, Status> {
    metrics::admin_request(method, result.as_ref().map_or_else(Status::code, |_| Code::Ok));
    result.map(Response::new)
}

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

    fn who<T>(&self, request: &Request<T>, access: Access) -> Result<Principal, Status> {
        self.shared.auth.check(request.metadata(), access)
    }

    fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Backends as the API shows them, with their runtime state (health, fleet cooldown).
    fn views(&self, backends: &[crate::store::BackendRecord]) -> Vec<pb::Backend> {
        let live = self.shared.fleet.live();
        let health = self.shared.health.lock().expect("health lock").clone();
        let now = now_ms();
        backends
            .iter()
            .map(|b| {
                let mut out = convert::backend_to_pb(b);
                let l = live.get(&b.id).cloned().unwrap_or_default();
                out.status =
                    convert::backend_status(b.enabled, health.get(&b.id).copied(), l.cooling_until_ms, now).to_owned();
                out.cooldown_until_ms = if l.cooling_until_ms > now { l.cooling_until_ms } else { 0 };
                out.consecutive_429_count = l.consecutive;
                out
            })
            .collect()
    }

    /// Runs one config write: serialised with every other write, committed in one
    /// transaction with its audit entry, published to nodes, and flushed to disk before
    /// the caller hears it succeeded.
    async fn write<T>(
        &self,
        who: &Principal,
        action: &'static str,
        build: impl FnOnce(&Store) -> Result<(ConfigChange, String, T), Status>,
    ) -> Result<(u64, T), Status> {
        let _guard = self.shared.writer.lock().await;
        let store = self.store();
        let (change, target, out) = build(store)?;
        let tokens_changed = !change.put_tokens.is_empty() || !change.delete_tokens.is_empty();
        let version = store.commit(change, &who.actor(), action, &target)?;
        if tokens_changed {
            self.shared.auth.reload(store.tokens()?);
        }
        self.shared.publish()?;
        store.flush().await?;
        info!(action, target = %target, actor = %who.token_id, version, "config write");
        Ok((version, out))
    }

    async fn validation(
        &self,
        base_url: &str,
        api_key: &str,
        field: &str,
    ) -> Result<pb::ValidateBackendResponse, Status> {
        let result = probe::probe(&self.http, base_url, api_key, VALIDATE_TIMEOUT).await;
        if matches!(result.http_status, 401 | 403) {
            return Err(field_error(field, format!("the provider rejected this key ({})", result.message)).into());
        }
        Ok(result)
    }

    async fn create_backend_impl(
        &self,
        request: Request<pb::CreateBackendRequest>,
    ) -> Result<pb::BackendResponse, Status> {
        let who = self.who(&request, Access::AdminWrite)?;
        let req = request.into_inner();
        let spec = req.backend.ok_or_else(|| field_error("backend", "is required"))?;
        let key = self.shared.key();
        // Validate before probing so bad input fails fast; the write re-validates under
        // the writer lock, where names and pools cannot change underneath it.
        let draft = backends::new_backend(&spec, &self.store().backends()?, &self.store().pools()?, &key)?;
        let validation = match req.validate {
            true => Some(self.validation(&draft.base_url, &spec.api_key, "backend.api_key").await?),
            false => None,
        };
        let (config_version, backend) = self
            .write(&who, "CreateBackend", |store| {
                let b = backends::new_backend(&spec, &store.backends()?, &store.pools()?, &key)?;
                let target = b.id.clone();
                Ok((ConfigChange { put_backends: vec![b.clone()], ..Default::default() }, target, b))
            })
            .await?;
        Ok(pb::BackendResponse { backend: Some(convert::backend_to_pb(&backend)), config_version, validation })
    }

    async fn update_backend_impl(
        &self,
        request: Request<pb::UpdateBackendRequest>,
    ) -> Result<pb::BackendResponse, Status> {
        let who = self.who(&request, Access::AdminWrite)?;
        let req = request.into_inner();
        let patch = req.patch.unwrap_or_default();
        let key = self.shared.key();
        let validation = if req.validate {
            let current = backends::find(self.store(), &req.id)?;
            let base_url = match &patch.base_url {
                Some(u) => validate::base_url("patch.base_url", u)?,
                None => current.base_url.clone(),
            };
            let api_key = match &patch.api_key {
                Some(k) => validate::api_key("patch.api_key", k)?,
                None => key.open(&current.api_key).map_err(|e| Status::internal(e.to_string()))?,
            };
            Some(self.validation(&base_url, &api_key, "patch.api_key").await?)
        } else {
            None
        };
        let (config_version, backend) = self
            .write(&who, "UpdateBackend", |store| {
                let current = backends::find(store, &req.id)?;
                backends::check_version(
                    "backend",
                    &current.id,
                    current.resource_version,
                    req.expected_resource_version,
                )?;
                let b = backends::patched(current, &patch, &store.backends()?, &store.pools()?, &key)?;
                let target = b.id.clone();
                Ok((ConfigChange { put_backends: vec![b.clone()], ..Default::default() }, target, b))
            })
            .await?;
        Ok(pb::BackendResponse { backend: Some(convert::backend_to_pb(&backend)), config_version, validation })
    }

    async fn validate_backend_impl(
        &self,
        request: Request<pb::ValidateBackendRequest>,
    ) -> Result<pb::ValidateBackendResponse, Status> {
        self.who(&request, Access::AdminWrite)?;
        let (base_url, api_key, timeout) = match request.into_inner().target {
            Some(pb::validate_backend_request::Target::Id(id)) => {
                let b = backends::find(self.store(), &id)?;
                let key = self.shared.key().open(&b.api_key).map_err(|e| Status::internal(e.to_string()))?;
                (b.base_url, key, VALIDATE_TIMEOUT)
            }
            Some(pb::validate_backend_request::Target::Candidate(c)) => {
                let timeout = match c.timeout_seconds {
                    0 => VALIDATE_TIMEOUT,
                    s => Duration::from_secs(u64::from(s.min(120))),
                };
                (
                    validate::base_url("candidate.base_url", &c.base_url)?,
                    validate::api_key("candidate.api_key", &c.api_key)?,
                    timeout,
                )
            }
            None => {
                return Err(field_error("target", "give a backend id or a candidate (base_url, api_key)").into());
            }
        };
        Ok(probe::probe(&self.http, &base_url, &api_key, timeout).await)
    }

    async fn create_token_impl(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<pb::CreateTokenResponse, Status> {
        let who = self.who(&request, Access::AdminWrite)?;
        let req = request.into_inner();
        let role = Role::parse(&req.role)
            .ok_or_else(|| field_error("role", format!("expected admin, viewer or node, got {:?}", req.role)))?;
        let name = validate::text("name", &req.name, 64)?;
        let node_id = match req.node_id.as_str() {
            "" => None,
            _ if role != Role::Node => {
                return Err(field_error("node_id", "only node tokens are bound to a node id").into());
            }
            id => Some(validate::node_id("node_id", id)?),
        };
        let region = match req.region.as_str() {
            "" => None,
            _ if node_id.is_none() => {
                return Err(field_error("region", "a region binds a node token with a node_id").into());
            }
            r => Some(validate::identifier("region", r)?),
        };
        let secret = generate_token();
        let record = TokenRecord {
            id: new_id("tok"),
            role,
            name,
            hash: hash_token(&secret),
            created_at_ms: now_ms(),
            created_by: who.token_id.clone(),
            node_id,
            region,
        };
        let (_, record) = self
            .write(&who, "CreateToken", |_| {
                Ok((ConfigChange { put_tokens: vec![record.clone()], ..Default::default() }, record.id.clone(), record))
            })
            .await?;
        Ok(pb::CreateTokenResponse { token: Some(convert::token_to_pb(&record)), secret })
    }

    async fn revoke_token_impl(&self, request: Request<pb::RevokeTokenRequest>) -> Result<pb::WriteResponse, Status> {
        let who = self.who(&request, Access::AdminWrite)?;
        let id = request.into_inner().id;
        let (config_version, ()) = self
            .write(&who, "RevokeToken", |store| {
                let tokens = store.tokens()?;
                let token = tokens
                    .iter()
                    .find(|t| t.id == id)
                    .ok_or_else(|| Status::not_found(format!("token {:?} not found", crate::util::clip(&id))))?;
                if token.role == Role::Admin && tokens.iter().filter(|t| t.role == Role::Admin).count() == 1 {
                    return Err(Status::failed_precondition(
                        "cannot revoke the last admin token; create another admin token first",
                    ));
                }
                Ok((ConfigChange { delete_tokens: vec![id.clone()], ..Default::default() }, id.clone(), ()))
            })
            .await?;
        Ok(pb::WriteResponse { config_version })
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_backend(
        &self,
        request: Request<pb::CreateBackendRequest>,
    ) -> Result<Response<pb::BackendResponse>, Status> {
        observe("CreateBackend", self.create_backend_impl(request).await)
    }

    async fn get_backend(&self, request: Request<pb::GetBackendRequest>) -> Result<Response<pb::Backend>, Status> {
        let result = async {
            self.who(&request, Access::AdminRead)?;
            let b = backends::find(self.store(), &request.get_ref().id)?;
            Ok(self.views(std::slice::from_ref(&b)).remove(0))
        };
        observe("GetBackend", result.await)
    }

    async fn list_backends(
        &self,
        request: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        let result = (|| {
            self.who(&request, Access::AdminRead)?;
            let pool = &request.get_ref().pool;
            let mut backends: Vec<_> =
                self.store().backends()?.into_iter().filter(|b| pool.is_empty() || &b.pool == pool).collect();
            backends.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(pb::ListBackendsResponse { backends: self.views(&backends) })
        })();
        observe("ListBackends", result)
    }

    async fn update_backend(
        &self,
        request: Request<pb::UpdateBackendRequest>,
    ) -> Result<Response<pb::BackendResponse>, Status> {
        observe("UpdateBackend", self.update_backend_impl(request).await)
    }

    async fn delete_backend(
        &self,
        request: Request<pb::DeleteBackendRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let result = async {
            let who = self.who(&request, Access::AdminWrite)?;
            let req = request.into_inner();
            let (config_version, ()) = self
                .write(&who, "DeleteBackend", |store| {
                    let b = backends::find(store, &req.id)?;
                    backends::check_version("backend", &b.id, b.resource_version, req.expected_resource_version)?;
                    Ok((ConfigChange { delete_backends: vec![b.id.clone()], ..Default::default() }, b.id, ()))
                })
                .await?;
            Ok(pb::WriteResponse { config_version })
        };
        observe("DeleteBackend", result.await)
    }

    async fn validate_backend(
        &self,
        request: Request<pb::ValidateBackendRequest>,
    ) -> Result<Response<pb::ValidateBackendResponse>, Status> {
        observe("ValidateBackend", self.validate_backend_impl(request).await)
    }

    async fn create_pool(&self, request: Request<pb::CreatePoolRequest>) -> Result<Response<pb::PoolResponse>, Status> {
        observe("CreatePool", self.create_pool_impl(request).await)
    }

    async fn update_pool(&self, request: Request<pb::UpdatePoolRequest>) -> Result<Response<pb::PoolResponse>, Status> {
        observe("UpdatePool", self.update_pool_impl(request).await)
    }

    async fn list_pools(
        &self,
        request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let result = (|| {
            self.who(&request, Access::AdminRead)?;
            let backends = self.store().backends()?;
            let pools = self
                .store()
                .pools()?
                .iter()
                .map(|p| convert::pool_to_pb(p, backends.iter().filter(|b| b.pool == p.name).count() as u32))
                .collect();
            Ok(pb::ListPoolsResponse { pools })
        })();
        observe("ListPools", result)
    }

    async fn delete_pool(
        &self,
        request: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        observe("DeletePool", self.delete_pool_impl(request).await)
    }

    async fn get_settings(
        &self,
        request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::SettingsResponse>, Status> {
        let result = (|| {
            self.who(&request, Access::AdminRead)?;
            let s = self.store().settings()?;
            Ok(pb::SettingsResponse {
                settings: Some(convert::settings_to_pb(&s)),
                resource_version: s.resource_version,
                config_version: self.store().config_version(),
            })
        })();
        observe("GetSettings", result)
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::SettingsResponse>, Status> {
        let result = async {
            let who = self.who(&request, Access::AdminWrite)?;
            let req = request.into_inner();
            let patch = req.patch.unwrap_or_default();
            let (config_version, s) = self
                .write(&who, "UpdateSettings", |store| {
                    let current = store.settings()?;
                    backends::check_version(
                        "settings",
                        "system",
                        current.resource_version,
                        req.expected_resource_version,
                    )?;
                    let mut s = validate::settings_patch(&current, &patch)?;
                    s.resource_version = current.resource_version + 1;
                    Ok((ConfigChange { settings: Some(s.clone()), ..Default::default() }, "settings".into(), s))
                })
                .await?;
            Ok(pb::SettingsResponse {
                settings: Some(convert::settings_to_pb(&s)),
                resource_version: s.resource_version,
                config_version,
            })
        };
        observe("UpdateSettings", result.await)
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let result = (|| {
            self.who(&request, Access::AdminRead)?;
            let nodes = self
                .store()
                .nodes()?
                .iter()
                .map(|n| convert::node_to_pb(n, self.shared.nodes.is_connected(&n.id)))
                .collect();
            Ok(pb::ListNodesResponse { nodes, config_version: self.store().config_version() })
        })();
        observe("ListNodes", result)
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        observe("CreateToken", self.create_token_impl(request).await)
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let result = (|| {
            self.who(&request, Access::AdminRead)?;
            let mut tokens = self.store().tokens()?;
            tokens.sort_by_key(|t| t.created_at_ms);
            let used = self.store().tokens_last_used()?;
            let tokens = tokens
                .iter()
                .map(|t| pb::Token { last_used_ms: used.get(&t.id).copied().unwrap_or(0), ..convert::token_to_pb(t) })
                .collect();
            Ok(pb::ListTokensResponse { tokens })
        })();
        observe("ListTokens", result)
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        observe("RevokeToken", self.revoke_token_impl(request).await)
    }

    async fn export(&self, request: Request<pb::ExportRequest>) -> Result<Response<pb::ExportResponse>, Status> {
        let result = (|| {
            self.who(&request, Access::AdminWrite)?;
            transfer::export(self.store())
        })();
        observe("Export", result)
    }

    async fn import(&self, request: Request<pb::ImportRequest>) -> Result<Response<pb::ImportResponse>, Status> {
        let result = async {
            let who = self.who(&request, Access::AdminWrite)?;
            let document = request.into_inner().document;
            let key = self.shared.key();
            let (config_version, (backends, pools)) =
                self.write(&who, "Import", |store| transfer::import(store, &document, &key)).await?;
            Ok(pb::ImportResponse { backends, pools, config_version })
        };
        observe("Import", result.await)
    }

    async fn rotate_encryption_key(
        &self,
        request: Request<pb::RotateEncryptionKeyRequest>,
    ) -> Result<Response<pb::RotateEncryptionKeyResponse>, Status> {
        let result = async {
            let who = self.who(&request, Access::AdminWrite)?;
            transfer::rotate(&self.shared, &who, &request.into_inner().new_key_hex).await
        };
        observe("RotateEncryptionKey", result.await)
    }

    async fn get_config_version(
        &self,
        request: Request<pb::GetConfigVersionRequest>,
    ) -> Result<Response<pb::ConfigVersion>, Status> {
        let result =
            self.who(&request, Access::AdminRead).map(|_| pb::ConfigVersion { version: self.store().config_version() });
        observe("GetConfigVersion", result)
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let result = (|| {
            self.who(&request, Access::AdminRead)?;
            let req = request.get_ref();
            let now = now_ms();
            let since = if req.since_ms == 0 { now - 24 * 3_600_000 } else { req.since_ms };
            let until = if req.until_ms == 0 { now + 1 } else { req.until_ms };
            if until < since {
                return Err(field_error("until_ms", "must not be before since_ms").into());
            }
            let entries = self.store().audit(since, until)?.iter().map(convert::audit_to_pb).collect();
            Ok(pb::ListAuditResponse { entries })
        })();
        observe("ListAudit", result)
    }

    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Result<Response<pb::GetStatsResponse>, Status> {
        let result = (|| {
            self.who(&request, Access::AdminRead)?;
            stats::get_stats(self.store(), request.get_ref())
        })();
        observe("GetStats", result)
    }

    async fn list_cooldowns(
        &self,
        request: Request<pb::ListCooldownsRequest>,
    ) -> Result<Response<pb::ListCooldownsResponse>, Status> {
        let result = (|| {
            self.who(&request, Access::AdminRead)?;
            stats::list_cooldowns(self.store(), request.get_ref())
        })();
        observe("ListCooldowns", result)
    }

    type WatchDashboardStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Dashboard, Status>> + Send>>;

    async fn watch_dashboard(
        &self,
        request: Request<pb::WatchDashboardRequest>,
    ) -> Result<Response<Self::WatchDashboardStream>, Status> {
        let result = self.who(&request, Access::AdminRead).map(|_| {
            use futures::StreamExt;
            let mut shutdown = self.shared.shutdown();
            let stream = tokio_stream::wrappers::WatchStream::new(self.shared.dashboard.subscribe())
                .filter(|d| futures::future::ready(d.at_ms > 0))
                .map(|d| Ok(pb::Dashboard::clone(&d)))
                .take_until(async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                });
            let stream: Self::WatchDashboardStream = Box::pin(stream);
            stream
        });
        observe("WatchDashboard", result)
    }
}
