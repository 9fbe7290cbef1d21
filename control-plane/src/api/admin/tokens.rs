//! API tokens: create (the secret is shown once), list (with last use), revoke.

use sidecar_proto::v1 as pb;

use super::AdminApi;
use crate::{
    api::{
        convert::{role_from_pb, token_to_pb},
        error::{ApiError, ApiResult},
    },
    auth::{Principal, generate_token, hash_token},
    store::{ConfigChange, Role, TokenRecord},
    util::{clip, new_id, now_ms},
    validate::{self, field_error},
};

pub(super) async fn create(
    api: &AdminApi,
    who: Principal,
    req: pb::CreateTokenRequest,
) -> ApiResult<pb::CreateTokenResponse> {
    let role = role_from_pb("role", req.role)?;
    let name = validate::text("name", &req.name, 64)?;
    let node_id = match req.node_id.as_str() {
        "" => None,
        _ if role != Role::Node => return Err(field_error("node_id", "only node tokens are bound to a node id").into()),
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
    let (_, record) = api
        .shared
        .write(&who, "CreateToken", |_| {
            let change = ConfigChange { put_tokens: vec![record.clone()], ..Default::default() };
            Ok::<_, ApiError>((change, record.id.clone(), record))
        })
        .await?;
    Ok(pb::CreateTokenResponse { token: Some(token_to_pb(&record)), secret })
}

pub(super) async fn list(api: &AdminApi, _: Principal, _: pb::ListTokensRequest) -> ApiResult<pb::ListTokensResponse> {
    let mut tokens = api.store().tokens()?;
    tokens.sort_by_key(|t| t.created_at_ms);
    let used = api.store().tokens_last_used()?;
    let tokens = tokens
        .iter()
        .map(|t| pb::Token { last_used_ms: used.get(&t.id).copied().unwrap_or(0), ..token_to_pb(t) })
        .collect();
    Ok(pb::ListTokensResponse { tokens })
}

pub(super) async fn revoke(
    api: &AdminApi,
    who: Principal,
    req: pb::RevokeTokenRequest,
) -> ApiResult<pb::WriteResponse> {
    let id = req.id;
    let (config_version, ()) = api
        .shared
        .write(&who, "RevokeToken", |store| {
            let tokens = store.tokens()?;
            let token = tokens
                .iter()
                .find(|t| t.id == id)
                .ok_or_else(|| ApiError::NotFound(format!("token {:?} not found", clip(&id))))?;
            if token.role == Role::Admin && tokens.iter().filter(|t| t.role == Role::Admin).count() == 1 {
                return Err(ApiError::Conflict(
                    "cannot revoke the last admin token; create another admin token first".into(),
                ));
            }
            Ok((ConfigChange { delete_tokens: vec![id.clone()], ..Default::default() }, id.clone(), ()))
        })
        .await?;
    Ok(pb::WriteResponse { config_version })
}
