//! Usage statistics and cooldown history.

use sidecar_proto::v1 as pb;

use super::AdminApi;
use crate::{
    api::error::ApiResult,
    auth::Principal,
    stats::{self, StatsQuery},
};

pub(super) async fn get(api: &AdminApi, _: Principal, req: pb::GetStatsRequest) -> ApiResult<pb::GetStatsResponse> {
    let query = StatsQuery::try_from(&req)?;
    Ok(stats::get_stats(api.store(), &query)?.into())
}

pub(super) async fn cooldowns(
    api: &AdminApi,
    _: Principal,
    req: pb::ListCooldownsRequest,
) -> ApiResult<pb::ListCooldownsResponse> {
    let events = stats::list_cooldowns(api.store(), &(&req).into())?;
    Ok(pb::ListCooldownsResponse { events: events.into_iter().map(Into::into).collect() })
}
