//! The live dashboard stream: every watcher gets the shared dashboard as it is
//! recomputed (once a second), until it goes away or the control plane shuts down.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use sidecar_proto::v1 as pb;
use tonic::Status;

use super::AdminApi;

/// The WatchDashboard stream.
pub(super) type DashboardStream = Pin<Box<dyn Stream<Item = Result<pb::Dashboard, Status>> + Send>>;

pub(super) fn watch(api: &AdminApi) -> DashboardStream {
    let mut shutdown = api.shared.shutdown();
    let stream = tokio_stream::wrappers::WatchStream::new(api.shared.dashboard.subscribe())
        .filter(|d| futures::future::ready(d.at_ms > 0))
        .map(|d| Ok(pb::Dashboard::from(d.as_ref())))
        .take_until(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
    Box::pin(stream)
}
