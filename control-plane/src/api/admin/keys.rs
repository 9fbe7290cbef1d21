//! Client keys: create and rotate (the secret is shown once), list, show, update, revoke.
//! Every change is a config write, so proxies learn it with the next snapshot (within a
//! second of the commit).

use sidecar_proto::v1 as pb;

use super::{AdminApi, check_version};
use crate::{
    api::{
        convert::keys::{key_to_pb, spec_from_create, spec_from_update},
        error::{ApiError, ApiResult},
    },
    auth::{Principal, client_key_prefix, generate_client_key, hash_token},
    store::{ClientKeyRecord, ConfigChange, Store},
    util::{clip, new_id, now_ms},
    validate::keys::{KeySpec, key_spec},
};

/// The key `id` names: its id, else the name of a live key.
fn find(store: &Store, id: &str) -> Result<ClientKeyRecord, ApiError> {
    let keys = store.client_keys()?;
    keys.iter()
        .find(|k| k.id == id)
        .or_else(|| keys.iter().find(|k| k.live() && k.name.eq_ignore_ascii_case(id)))
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("key {:?} not found", clip(id))))
}

fn live(key: ClientKeyRecord) -> Result<ClientKeyRecord, ApiError> {
    if key.live() {
        Ok(key)
    } else {
        Err(ApiError::Conflict(format!("key {} ({}) is revoked: create a new key", key.name, key.id)))
    }
}

pub(super) async fn create(
    api: &AdminApi,
    who: Principal,
    req: pb::CreateKeyRequest,
) -> ApiResult<pb::CreateKeyResponse> {
    let spec = spec_from_create(req)?;
    let secret = generate_client_key();
    let (config_version, key) = api
        .shared
        .write(&who, "CreateKey", |store| {
            let spec = key_spec(spec, &store.pools()?, &store.client_keys()?, None, true, now_ms())?;
            let mut key = ClientKeyRecord {
                id: new_id("key"),
                hash: hash_token(&secret),
                prefix: client_key_prefix(&secret),
                created_at_ms: now_ms(),
                created_by: who.token_id.clone(),
                resource_version: 1,
                ..Default::default()
            };
            spec.apply(&mut key);
            let change = ConfigChange { put_client_keys: vec![key.clone()], ..Default::default() };
            Ok::<_, ApiError>((change, key.id.clone(), key))
        })
        .await?;
    Ok(pb::CreateKeyResponse { key: Some(key_to_pb(&key)), secret, config_version })
}

pub(super) async fn list(api: &AdminApi, _: Principal, req: pb::ListKeysRequest) -> ApiResult<pb::ListKeysResponse> {
    let mut keys = api.store().client_keys()?;
    keys.retain(|k| req.include_revoked || k.live());
    keys.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then_with(|| a.id.cmp(&b.id)));
    Ok(pb::ListKeysResponse { keys: keys.iter().map(key_to_pb).collect() })
}

pub(super) async fn get(api: &AdminApi, _: Principal, req: pb::GetKeyRequest) -> ApiResult<pb::ClientKey> {
    let key = find(api.store(), &req.id)?;
    let spent_usd = api.shared.budgets.spent(api.store(), &key, now_ms())?;
    Ok(pb::ClientKey { spent_usd, ..key_to_pb(&key) })
}

pub(super) async fn update(api: &AdminApi, who: Principal, req: pb::UpdateKeyRequest) -> ApiResult<pb::ClientKey> {
    let (_, key) = api
        .shared
        .write(&who, "UpdateKey", |store| {
            let mut key = live(find(store, &req.id)?)?;
            check_version("key", &key.id, key.resource_version, req.expected_resource_version)?;
            let (spec, expiry_changed) = spec_from_update(KeySpec::of(&key), &req)?;
            let spec = key_spec(spec, &store.pools()?, &store.client_keys()?, Some(&key.id), expiry_changed, now_ms())?;
            spec.apply(&mut key);
            key.resource_version += 1;
            let change = ConfigChange { put_client_keys: vec![key.clone()], ..Default::default() };
            Ok::<_, ApiError>((change, key.id.clone(), key))
        })
        .await?;
    Ok(key_to_pb(&key))
}

pub(super) async fn revoke(api: &AdminApi, who: Principal, req: pb::RevokeKeyRequest) -> ApiResult<pb::ClientKey> {
    let (_, key) = api
        .shared
        .write(&who, "RevokeKey", |store| {
            let mut key = live(find(store, &req.id)?)?;
            key.revoked_at_ms = Some(now_ms());
            key.enabled = false;
            key.resource_version += 1;
            let change = ConfigChange { put_client_keys: vec![key.clone()], ..Default::default() };
            Ok::<_, ApiError>((change, key.id.clone(), key))
        })
        .await?;
    Ok(key_to_pb(&key))
}

pub(super) async fn rotate(
    api: &AdminApi,
    who: Principal,
    req: pb::RotateKeyRequest,
) -> ApiResult<pb::CreateKeyResponse> {
    let secret = generate_client_key();
    let (config_version, key) = api
        .shared
        .write(&who, "RotateKey", |store| {
            let mut key = live(find(store, &req.id)?)?;
            key.hash = hash_token(&secret);
            key.prefix = client_key_prefix(&secret);
            key.rotated_at_ms = Some(now_ms());
            key.resource_version += 1;
            let change = ConfigChange { put_client_keys: vec![key.clone()], ..Default::default() };
            Ok::<_, ApiError>((change, key.id.clone(), key))
        })
        .await?;
    Ok(pb::CreateKeyResponse { key: Some(key_to_pb(&key)), secret, config_version })
}
