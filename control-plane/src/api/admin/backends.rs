//! Backends: create (optionally testing the key first), read, list, update, delete, and
//! key validation against the provider.

use std::time::Duration;

use sidecar_proto::v1::{self as pb, validate_backend_request::Target};

use super::{AdminApi, check_version};
use crate::{
    api::{
        convert::backend_to_pb,
        error::{ApiError, ApiResult},
    },
    auth::Principal,
    probe::{self, ProbeResult},
    status::{BackendStatus, Health},
    store::{Api, BackendRecord, ConfigChange, Store},
    util::{clip, now_ms},
    validate::{self, field_error},
};

/// Timeout of a key validation call.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds a backend by id, or else by name.
fn find(store: &Store, id_or_name: &str) -> ApiResult<BackendRecord> {
    if id_or_name.is_empty() {
        return Err(field_error("id", "must name a backend (id or name)").into());
    }
    if let Some(b) = store.backend(id_or_name)? {
        return Ok(b);
    }
    store
        .backends()?
        .into_iter()
        .find(|b| b.name.eq_ignore_ascii_case(id_or_name))
        .ok_or_else(|| ApiError::NotFound(format!("backend {:?} not found", clip(id_or_name))))
}

impl From<ProbeResult> for pb::ValidateBackendResponse {
    fn from(r: ProbeResult) -> Self {
        Self { ok: r.ok, http_status: r.http_status, message: r.message, latency_ms: r.latency_ms, models: r.models }
    }
}

impl AdminApi {
    /// Backends as the API shows them, with their runtime state (health, fleet cooldown).
    fn views(&self, backends: &[BackendRecord]) -> Vec<pb::Backend> {
        let live = self.shared.cluster.live(&self.shared.fleet);
        let health = self.shared.health.lock().expect("health lock").clone();
        let learned = self.shared.learned.lock().expect("learned lock").clone();
        let now = now_ms();
        backends
            .iter()
            .map(|b| {
                let l = live.get(&b.id).cloned().unwrap_or_default();
                let h = health.get(&b.id).copied().unwrap_or(Health::Healthy);
                let mut out = backend_to_pb(b, BackendStatus::of(b.enabled, h, l.cooling_until_ms, now));
                out.cooldown_until_ms = if l.cooling_until_ms > now { l.cooling_until_ms } else { 0 };
                out.consecutive_429_count = l.consecutive;
                out.learned_rpm_limit = learned.get(&b.id).copied().unwrap_or(0);
                out
            })
            .collect()
    }

    /// Tests a key with the provider; a key the provider rejects is a bad `field`.
    async fn probe_key(
        &self,
        target: (&str, Api),
        api_key: &str,
        field: &str,
    ) -> ApiResult<pb::ValidateBackendResponse> {
        let result = probe::probe(&self.http, target, api_key, VALIDATE_TIMEOUT).await;
        if matches!(result.http_status, 401 | 403) {
            return Err(field_error(field, format!("the provider rejected this key ({})", result.message)).into());
        }
        Ok(result.into())
    }

    fn open_key(&self, b: &BackendRecord) -> ApiResult<String> {
        self.shared.key().open(&b.api_key).map_err(|e| ApiError::Internal(e.to_string()))
    }
}

/// The status a freshly written backend is shown with.
fn written(b: &BackendRecord) -> pb::Backend {
    backend_to_pb(b, if b.enabled { BackendStatus::Healthy } else { BackendStatus::Disabled })
}

pub(super) async fn create(
    api: &AdminApi,
    who: Principal,
    req: pb::CreateBackendRequest,
) -> ApiResult<pb::BackendResponse> {
    let spec =
        validate::input::BackendSpec::try_from(req.backend.ok_or_else(|| field_error("backend", "is required"))?)?;
    let key = api.shared.key();
    // Validate before probing so bad input fails fast; the write re-validates under the
    // writer lock, where names and pools cannot change underneath it.
    let draft = validate::new_backend(&spec, &api.store().backends()?, &api.store().pools()?, &key)?;
    let validation = match req.validate {
        true => Some(api.probe_key((&draft.base_url, draft.api), &spec.api_key, "backend.api_key").await?),
        false => None,
    };
    let (config_version, backend) = api
        .shared
        .write(&who, "CreateBackend", |store| {
            let b = validate::new_backend(&spec, &store.backends()?, &store.pools()?, &key)?;
            let target = b.id.clone();
            Ok::<_, ApiError>((ConfigChange { put_backends: vec![b.clone()], ..Default::default() }, target, b))
        })
        .await?;
    Ok(pb::BackendResponse { backend: Some(written(&backend)), config_version, validation })
}

pub(super) async fn get(api: &AdminApi, _: Principal, req: pb::GetBackendRequest) -> ApiResult<pb::Backend> {
    let b = find(api.store(), &req.id)?;
    Ok(api.views(std::slice::from_ref(&b)).remove(0))
}

pub(super) async fn list(
    api: &AdminApi,
    _: Principal,
    req: pb::ListBackendsRequest,
) -> ApiResult<pb::ListBackendsResponse> {
    let mut backends: Vec<_> =
        api.store().backends()?.into_iter().filter(|b| req.pool.is_empty() || b.pool == req.pool).collect();
    backends.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pb::ListBackendsResponse { backends: api.views(&backends) })
}

pub(super) async fn update(
    api: &AdminApi,
    who: Principal,
    req: pb::UpdateBackendRequest,
) -> ApiResult<pb::BackendResponse> {
    let patch = validate::input::BackendPatch::try_from(req.patch.unwrap_or_default())?;
    let key = api.shared.key();
    let validation = if req.validate {
        let current = find(api.store(), &req.id)?;
        let base_url = match &patch.base_url {
            Some(u) => validate::base_url("patch.base_url", u)?,
            None => current.base_url.clone(),
        };
        let api_key = match &patch.api_key {
            Some(k) => validate::api_key("patch.api_key", k)?,
            None => api.open_key(&current)?,
        };
        Some(api.probe_key((&base_url, patch.api.unwrap_or(current.api)), &api_key, "patch.api_key").await?)
    } else {
        None
    };
    let (config_version, backend) = api
        .shared
        .write(&who, "UpdateBackend", |store| {
            let current = find(store, &req.id)?;
            check_version("backend", &current.id, current.resource_version, req.expected_resource_version)?;
            let b = validate::patched(current, &patch, &store.backends()?, &store.pools()?, &key)?;
            let target = b.id.clone();
            Ok::<_, ApiError>((ConfigChange { put_backends: vec![b.clone()], ..Default::default() }, target, b))
        })
        .await?;
    Ok(pb::BackendResponse { backend: Some(written(&backend)), config_version, validation })
}

pub(super) async fn delete(
    api: &AdminApi,
    who: Principal,
    req: pb::DeleteBackendRequest,
) -> ApiResult<pb::WriteResponse> {
    let (config_version, ()) = api
        .shared
        .write(&who, "DeleteBackend", |store| {
            let b = find(store, &req.id)?;
            check_version("backend", &b.id, b.resource_version, req.expected_resource_version)?;
            Ok::<_, ApiError>((ConfigChange { delete_backends: vec![b.id.clone()], ..Default::default() }, b.id, ()))
        })
        .await?;
    Ok(pb::WriteResponse { config_version })
}

pub(super) async fn validate(
    api: &AdminApi,
    _: Principal,
    req: pb::ValidateBackendRequest,
) -> ApiResult<pb::ValidateBackendResponse> {
    let (base_url, kind, api_key, timeout) = match req.target {
        Some(Target::Id(id)) => {
            let b = find(api.store(), &id)?;
            let key = api.open_key(&b)?;
            (b.base_url, b.api, key, VALIDATE_TIMEOUT)
        }
        Some(Target::Candidate(c)) => {
            let timeout = match c.timeout_seconds {
                0 => VALIDATE_TIMEOUT,
                s => Duration::from_secs(u64::from(s.min(120))),
            };
            (
                validate::base_url("candidate.base_url", &c.base_url)?,
                crate::api::convert::api_from_pb("candidate.api", c.api)?.unwrap_or_default(),
                validate::api_key("candidate.api_key", &c.api_key)?,
                timeout,
            )
        }
        None => return Err(field_error("target", "give a backend id or a candidate (base_url, api_key)").into()),
    };
    Ok(probe::probe(&api.http, (&base_url, kind), &api_key, timeout).await.into())
}
