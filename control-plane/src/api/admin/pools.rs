//! Pools: create, update (order, description, spill policy; built-in pools too), list
//! and delete.

use sidecar_proto::v1 as pb;

use crate::{
    api::{
        admin::AdminApi,
        convert::{pool_to_pb, spill_from_pb},
        error::{ApiError, ApiResult},
    },
    auth::Principal,
    store::{ConfigChange, PoolRecord, Store},
    util::clip,
    validate::{self, field_error},
};

/// The pool called `name`, or NOT_FOUND naming it.
fn pool_named(store: &Store, name: &str) -> ApiResult<PoolRecord> {
    store
        .pools()?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("pool {:?} not found", clip(name))))
}

pub(super) async fn create(api: &AdminApi, who: Principal, req: pb::CreatePoolRequest) -> ApiResult<pb::PoolResponse> {
    let name = validate::identifier("name", req.name.trim())?;
    let description = validate::text("description", &req.description, 256)?;
    let spill = spill_from_pb(req.spill)?.unwrap_or_default();
    let (config_version, pool) = api
        .shared
        .write(&who, "CreatePool", |store| {
            let pools = store.pools()?;
            if pools.iter().any(|p| p.name.eq_ignore_ascii_case(&name)) {
                return Err(field_error("name", format!("a pool named {name:?} already exists")).into());
            }
            let order = match req.order {
                0 => pools.iter().map(|p| p.order).max().unwrap_or(0) + 100,
                o => o,
            };
            let pool = PoolRecord { name: name.clone(), order, description, builtin: false, spill };
            Ok::<_, ApiError>((
                ConfigChange { put_pools: vec![pool.clone()], ..Default::default() },
                name.clone(),
                pool,
            ))
        })
        .await?;
    Ok(pb::PoolResponse { pool: Some(pool_to_pb(&pool, 0)), config_version })
}

pub(super) async fn update(api: &AdminApi, who: Principal, req: pb::UpdatePoolRequest) -> ApiResult<pb::PoolResponse> {
    let description = req.description.as_deref().map(|d| validate::text("description", d, 256)).transpose()?;
    let spill = spill_from_pb(req.spill)?;
    let name = req.name;
    let (config_version, (pool, users)) = api
        .shared
        .write(&who, "UpdatePool", |store| {
            let mut pool = pool_named(store, &name)?;
            if let Some(order) = req.order {
                pool.order = order;
            }
            if let Some(description) = description {
                pool.description = description;
            }
            if let Some(spill) = spill {
                pool.spill = spill;
            }
            let users = store.backends()?.iter().filter(|b| b.pool == name).count() as u32;
            let change = ConfigChange { put_pools: vec![pool.clone()], ..Default::default() };
            Ok::<_, ApiError>((change, name.clone(), (pool, users)))
        })
        .await?;
    Ok(pb::PoolResponse { pool: Some(pool_to_pb(&pool, users)), config_version })
}

pub(super) async fn list(api: &AdminApi, _: Principal, _: pb::ListPoolsRequest) -> ApiResult<pb::ListPoolsResponse> {
    let backends = api.store().backends()?;
    let pools = api
        .store()
        .pools()?
        .iter()
        .map(|p| pool_to_pb(p, backends.iter().filter(|b| b.pool == p.name).count() as u32))
        .collect();
    Ok(pb::ListPoolsResponse { pools })
}

pub(super) async fn delete(api: &AdminApi, who: Principal, req: pb::DeletePoolRequest) -> ApiResult<pb::WriteResponse> {
    let name = req.name;
    let (config_version, ()) = api
        .shared
        .write(&who, "DeletePool", |store| {
            let pool = pool_named(store, &name)?;
            if pool.builtin {
                return Err(ApiError::Conflict(format!("pool {name:?} is built in and cannot be deleted")));
            }
            let users: Vec<String> = store.backends()?.into_iter().filter(|b| b.pool == name).map(|b| b.name).collect();
            if !users.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "pool {name:?} is used by {} backend(s) ({}); move or delete them first",
                    users.len(),
                    users.join(", ")
                )));
            }
            Ok((ConfigChange { delete_pools: vec![name.clone()], ..Default::default() }, name.clone(), ()))
        })
        .await?;
    Ok(pb::WriteResponse { config_version })
}
