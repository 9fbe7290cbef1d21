//! `NodeService.Report`: a node's usage batch, checked, applied exactly once per
//! `(node_id, boot_id, seq)`, and acknowledged only once it is on disk.

use sidecar_proto::v1 as pb;
use tonic::Request;
use tracing::warn;

use super::NodeApi;
use crate::{
    api::{convert::report::check_batch, error::ApiError},
    metrics,
    store::StoreError,
    util::clip,
};

impl NodeApi {
    pub(super) async fn take_report(&self, request: Request<pb::ReportBatch>) -> Result<pb::ReportAck, ApiError> {
        let who = self.node_principal(&request)?;
        let batch = request.into_inner();
        let refuse = |e: ApiError, outcome: &'static str| {
            metrics::report(outcome);
            warn!(node = %clip(&batch.node_id), error = %e, "report refused");
            Err(e)
        };
        let mut records = match check_batch(&batch) {
            Ok(r) => r,
            Err(e) => return refuse(e.into(), "invalid"),
        };
        // Only keys the config knows become usage keys: a node cannot grow the store with
        // made-up ids. (A key revoked since its requests ran is no longer known: its last
        // minute counts as requests without a key.)
        if records.iter().any(|r| !r.key_id.is_empty()) {
            let config = self.shared.config().borrow().clone();
            let known = |id: &str| config.client_keys.binary_search_by(|k| k.id.as_str().cmp(id)).is_ok();
            for r in records.iter_mut().filter(|r| !r.key_id.is_empty() && !known(&r.key_id)) {
                r.key_id.clear();
            }
        }
        if let Err(e) = self.check_node(&who, "Report", &batch.node_id, None) {
            return refuse(e, "refused");
        }
        self.note_use(&who);
        // A shared node token is not bound to a node id; a node using one may at least
        // not report as another node that is connected now: the sender must be the boot
        // that node's live Sync stream said hello with.
        let sender = if batch.sender_boot_id.is_empty() { &batch.boot_id } else { &batch.sender_boot_id };
        if self.shared.nodes.live_boot(&batch.node_id).is_some_and(|live| live != *sender) {
            return refuse(
                ApiError::Conflict(format!(
                    "node_id {}: that node is connected from another process (a different boot); a node may only report as itself",
                    clip(&batch.node_id)
                )),
                "refused",
            );
        }
        let store = &self.shared.store;
        let applied = match store.apply_report(&batch.node_id, &batch.boot_id, batch.seq, &records) {
            Ok(applied) => applied,
            Err(e @ StoreError::Overflow { .. }) => {
                return refuse(ApiError::invalid("records", format!("{e}; the batch is refused")), "invalid");
            }
            Err(error) => return Err(error.into()),
        };
        // Acknowledge only what is on disk: a node drops a batch from its outbox once
        // acked, so an ack before the flush could lose it in a crash.
        store.flush().await?;
        metrics::report(if applied { "applied" } else { "duplicate" });
        if applied {
            let spend = self.shared.budgets.record(&records);
            self.shared.cluster.spent(spend);
        }
        self.shared.nodes.reported(store, &batch.node_id);
        Ok(pb::ReportAck { seq: batch.seq, applied })
    }
}
