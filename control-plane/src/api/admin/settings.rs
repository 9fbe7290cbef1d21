//! System settings, the config version, and the audit log.

use sidecar_proto::v1 as pb;

use super::{AdminApi, check_version};
use crate::{
    api::{
        convert::{audit_to_pb, settings_to_pb},
        error::{ApiError, ApiResult},
    },
    auth::Principal,
    store::ConfigChange,
    util::now_ms,
    validate::{self, field_error},
};

pub(super) async fn get(api: &AdminApi, _: Principal, _: pb::GetSettingsRequest) -> ApiResult<pb::SettingsResponse> {
    let s = api.store().settings()?;
    Ok(pb::SettingsResponse {
        settings: Some(settings_to_pb(&s)),
        resource_version: s.resource_version,
        config_version: api.store().config_version(),
    })
}

pub(super) async fn update(
    api: &AdminApi,
    who: Principal,
    req: pb::UpdateSettingsRequest,
) -> ApiResult<pb::SettingsResponse> {
    let patch: validate::input::SettingsPatch = req.patch.unwrap_or_default().into();
    let (config_version, s) = api
        .shared
        .write(&who, "UpdateSettings", |store| {
            let current = store.settings()?;
            check_version("settings", "system", current.resource_version, req.expected_resource_version)?;
            let mut s = validate::settings_patch(&current, &patch)?;
            s.resource_version = current.resource_version + 1;
            Ok::<_, ApiError>((ConfigChange { settings: Some(s.clone()), ..Default::default() }, "settings".into(), s))
        })
        .await?;
    Ok(pb::SettingsResponse {
        settings: Some(settings_to_pb(&s)),
        resource_version: s.resource_version,
        config_version,
    })
}

pub(super) async fn version(
    api: &AdminApi,
    _: Principal,
    _: pb::GetConfigVersionRequest,
) -> ApiResult<pb::ConfigVersion> {
    Ok(pb::ConfigVersion { version: api.store().config_version() })
}

pub(super) async fn audit(api: &AdminApi, _: Principal, req: pb::ListAuditRequest) -> ApiResult<pb::ListAuditResponse> {
    let now = now_ms();
    let since = if req.since_ms == 0 { now - 24 * 3_600_000 } else { req.since_ms };
    let until = if req.until_ms == 0 { now + 1 } else { req.until_ms };
    if until < since {
        return Err(field_error("until_ms", "must not be before since_ms").into());
    }
    let entries = api.store().audit(since, until)?.iter().map(audit_to_pb).collect();
    Ok(pb::ListAuditResponse { entries })
}
