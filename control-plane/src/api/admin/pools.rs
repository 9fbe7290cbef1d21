//! Pools: create, update (order, description, spill policy; built-in pools too) and
//! delete.

use sidecar_proto::v1 as pb;
use tonic::{Request, Status};

use super::{AdminApi, convert};
use crate::{
    auth::Access,
    store::{ConfigChange, PoolRecord, Store},
    validate::{self, field_error},
};

impl AdminApi {
    pub(super) async fn create_pool_impl(
        &self,
        request: Request<pb::CreatePoolRequest>,
    ) -> Result<pb::PoolResponse, Status> {
        let who = self.who(&request, Access::AdminWrite)?;
        let req = request.into_inner();
        let name = validate::identifier("name", req.name.trim())?;
        let description = validate::text("description", &req.description, 256)?;
        let spill = convert::spill_from_pb(req.spill)?.unwrap_or_default();
        let (config_version, pool) = self
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
                Ok((ConfigChange { put_pools: vec![pool.clone()], ..Default::default() }, name.clone(), pool))
            })
            .await?;
        Ok(pb::PoolResponse { pool: Some(convert::pool_to_pb(&pool, 0)), config_version })
    }

    pub(super) async fn update_pool_impl(
        &self,
        request: Request<pb::UpdatePoolRequest>,
    ) -> Result<pb::PoolResponse, Status> {
        let who = self.who(&request, Access::AdminWrite)?;
        let req = request.into_inner();
        let description = req.description.as_deref().map(|d| validate::text("description", d, 256)).transpose()?;
        let spill = convert::spill_from_pb(req.spill)?;
        let name = req.name;
        let (config_version, (pool, users)) = self
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
                Ok((change, name.clone(), (pool, users)))
            })
            .await?;
        Ok(pb::PoolResponse { pool: Some(convert::pool_to_pb(&pool, users)), config_version })
    }

    pub(super) async fn delete_pool_impl(
        &self,
        request: Request<pb::DeletePoolRequest>,
    ) -> Result<pb::WriteResponse, Status> {
        let who = self.who(&request, Access::AdminWrite)?;
        let name = request.into_inner().name;
        let (config_version, ()) = self
            .write(&who, "DeletePool", |store| {
                let pool = pool_named(store, &name)?;
                if pool.builtin {
                    return Err(Status::failed_precondition(format!(
                        "pool {name:?} is built in and cannot be deleted"
                    )));
                }
                let users: Vec<String> =
                    store.backends()?.into_iter().filter(|b| b.pool == name).map(|b| b.name).collect();
                if !users.is_empty() {
                    return Err(Status::failed_precondition(format!(
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
}

/// The pool called `name`, or NOT_FOUND naming it.
fn pool_named(store: &Store, name: &str) -> Result<PoolRecord, Status> {
    store
        .pools()?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Status::not_found(format!("pool {:?} not found", crate::util::clip(name))))
}
