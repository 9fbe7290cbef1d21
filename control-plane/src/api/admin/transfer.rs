//! Export, import and encryption-key rotation.

use sidecar_proto::v1 as pb;

use super::AdminApi;
use crate::{
    api::error::{ApiError, ApiResult},
    auth::Principal,
    transfer::{self, ExportDocument},
};

pub(super) async fn export(api: &AdminApi, _: Principal, _: pb::ExportRequest) -> ApiResult<pb::ExportResponse> {
    let doc = ExportDocument::from_store(api.store())?;
    Ok(pb::ExportResponse { document: doc.to_json(), config_version: doc.config_version })
}

pub(super) async fn import(api: &AdminApi, who: Principal, req: pb::ImportRequest) -> ApiResult<pb::ImportResponse> {
    let key = api.shared.key();
    let (config_version, (backends, pools)) = api
        .shared
        .write(&who, "Import", |store| transfer::import(store, &req.document, &key).map_err(ApiError::from))
        .await?;
    Ok(pb::ImportResponse { backends, pools, config_version })
}

pub(super) async fn rotate(
    api: &AdminApi,
    who: Principal,
    req: pb::RotateEncryptionKeyRequest,
) -> ApiResult<pb::RotateEncryptionKeyResponse> {
    let r = transfer::rotate(&api.shared, &who, &req.new_key_hex).await?;
    Ok(pb::RotateEncryptionKeyResponse {
        old_key_id: r.old_key_id,
        new_key_id: r.new_key_id,
        keys_reencrypted: r.keys_reencrypted,
        config_version: r.config_version,
    })
}
