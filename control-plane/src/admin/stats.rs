//! Usage statistics and cooldown history queries.

use sidecar_proto::v1 as pb;
use tonic::Status;

use crate::store::Store;

/// Usage over a time range, by granularity, filtered and grouped.
pub(super) fn get_stats(
    _store: &Store,
    _request: &pb::GetStatsRequest,
) -> Result<pb::GetStatsResponse, Status> {
    Err(Status::unimplemented("GetStats"))
}

/// Fleet-wide cooldowns over a time range.
pub(super) fn list_cooldowns(
    _store: &Store,
    _request: &pb::ListCooldownsRequest,
) -> Result<pb::ListCooldownsResponse, Status> {
    Err(Status::unimplemented("ListCooldowns"))
}
