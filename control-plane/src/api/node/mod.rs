//! NodeService: config distribution to data-plane proxies (`Sync`) and usage reports
//! (`Report`), for node tokens only.

mod registry;

use std::{collections::VecDeque, pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use rand::RngCore;
use sidecar_proto::v1::{self as pb, node_message::Kind, node_service_server::NodeService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

pub use registry::NodeRegistry;

use crate::{
    auth::{Access, Principal},
    metrics,
    state::Shared,
    store::{LATENCY_BUCKETS_MS, ReportRecord, UsageCounters},
    util::clip,
};

/// How long a node has to say hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Snapshots whose answer we still accept; older ones are superseded anyway.
const PENDING_SNAPSHOTS: usize = 8;

/// The NodeService implementation.
pub struct NodeApi {
    shared: Arc<Shared>,
}

impl NodeApi {
    /// A NodeService over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Who the calling node is. With mTLS (`SIDECAR_TLS_CLIENT_CA`) that is the node its
    /// client certificate names (required; any bearer token is then not needed);
    /// otherwise a node token.
    fn node_principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        if !self.shared.node_client_certs {
            return self.shared.auth.check(request.metadata(), Access::Node);
        }
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "NodeService needs a client certificate signed by the control plane's SIDECAR_TLS_CLIENT_CA",
            )
        })?;
        let node_id = certs.first().and_then(crate::tls::node_id_of).ok_or_else(|| {
            Status::permission_denied("the client certificate names no node id (a SAN DNS name or the subject CN)")
        })?;
        Ok(Principal {
            token_id: format!("cert:{node_id}"),
            role: crate::store::Role::Node,
            node_id: Some(node_id),
            region: None,
        })
    }

    /// A node credential used for another node: refused, logged and audited.
    fn impostor(&self, who: &Principal, call: &str, node_id: &str, status: Status) -> Status {
        warn!(token = %who.token_id, node = %clip(node_id), call, error = %status.message(), "node credential refused");
        let target = format!("{call} as node {}: {}", clip(node_id), status.message());
        if let Err(error) = self.shared.store.audit_event(&who.actor(), "NodeCredentialRefused", &target) {
            warn!(%error, "could not audit a refused node credential");
        }
        status
    }

    /// Records when a token was last used (at most once a minute per token). Client
    /// certificates are not tokens: nothing is recorded for them.
    fn note_use(&self, who: &Principal) {
        if self.shared.node_client_certs {
            return;
        }
        let now = crate::util::now_ms();
        if self.shared.auth.used(&who.token_id, now)
            && let Err(error) = self.shared.store.touch_token(&who.token_id, now)
        {
            debug!(%error, "could not record a token's last use");
        }
    }
}

fn nonce() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn node_id_ok(id: &str) -> bool {
    crate::validate::node_id("node_id", id).is_ok()
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for NodeApi {
    type SyncStream = SyncStream;

    async fn sync(&self, request: Request<Streaming<pb::NodeMessage>>) -> Result<Response<SyncStream>, Status> {
        let who = self.node_principal(&request)?;
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::NodeMessage { kind: Some(Kind::Hello(hello)) }))) => hello,
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded("no Hello within 10 s of opening Sync"));
            }
            Ok(_) => {
                return Err(Status::invalid_argument("the first message on Sync must be Hello"));
            }
        };
        if !node_id_ok(&hello.node_id) {
            return Err(Status::invalid_argument(
                "hello.node_id: must be 1-128 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if let Err(status) = who.may_be_node(&hello.node_id, Some(&hello.region)) {
            return Err(self.impostor(&who, "Sync", &hello.node_id, status));
        }
        self.note_use(&who);
        let (tx, rx) = mpsc::channel(16);
        // A certificate is not revoked through the token list: only tokens are watched.
        let token_id = (!self.shared.node_client_certs).then_some(who.token_id);
        let session = Session { shared: self.shared.clone(), hello, tx, pending: VecDeque::new(), token_id };
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report(&self, request: Request<pb::ReportBatch>) -> Result<Response<pb::ReportAck>, Status> {
        let who = self.node_principal(&request)?;
        let batch = request.into_inner();
        let refuse = |status: Status, outcome: &'static str| {
            metrics::report(outcome);
            warn!(node = %clip(&batch.node_id), error = %status.message(), "report refused");
            Err(status)
        };
        let records = match check_batch(&batch) {
            Ok(r) => r,
            Err(status) => return refuse(status, "invalid"),
        };
        if let Err(status) = who.may_be_node(&batch.node_id, None) {
            let status = self.impostor(&who, "Report", &batch.node_id, status);
            return refuse(status, "refused");
        }
        self.note_use(&who);
        // A shared node token is not bound to a node id; a node using one may at least
        // not report as another node that is connected now: the sender must be the boot
        // that node's live Sync stream said hello with.
        let sender = if batch.sender_boot_id.is_empty() { &batch.boot_id } else { &batch.sender_boot_id };
        if self.shared.nodes.live_boot(&batch.node_id).is_some_and(|live| live != *sender) {
            return refuse(
                Status::failed_precondition(format!(
                    "node_id {}: that node is connected from another process (a different boot); a node may only report as itself",
                    clip(&batch.node_id)
                )),
                "refused",
            );
        }
        let store = &self.shared.store;
        let applied = match store.apply_report(&batch.node_id, &batch.boot_id, batch.seq, &records) {
            Ok(applied) => applied,
            Err(e @ crate::store::StoreError::Overflow { .. }) => {
                return refuse(Status::invalid_argument(format!("records: {e}; the batch is refused")), "invalid");
            }
            Err(error) => {
                warn!(%error, "report could not be stored");
                return Err(Status::internal("storage error"));
            }
        };
        // Acknowledge only what is on disk: a node drops a batch from its outbox once
        // acked, so an ack before the flush could lose it in a crash.
        store.flush().await.map_err(|_| Status::internal("storage error"))?;
        metrics::report(if applied { "applied" } else { "duplicate" });
        self.shared.nodes.reported(store, &batch.node_id);
        Ok(Response::new(pb::ReportAck { seq: batch.seq, applied }))
    }
}

/// Most records one batch may carry: a batch is cut every second, one record per
/// (minute, backend, model) seen in it.
const MAX_RECORDS: usize = 100_000;
/// Most requests one record may count: far above what one node serves in a batch.
const MAX_COUNT: u64 = 100_000_000;
/// Most tokens one attempt may report.
const MAX_TOKENS_PER_ATTEMPT: u64 = 100_000_000;
/// Most milliseconds one attempt may last.
const MAX_MS_PER_ATTEMPT: u64 = 24 * 3600 * 1000;
/// Most USD one attempt may cost.
const MAX_USD_PER_ATTEMPT: f64 = 100_000.0;

/// The record's counts are possible: bounded, no more results than attempts, no more
/// errors than answers, sums that do not overflow. Names the first field that is not.
fn check_counts(r: &pb::UsageRecord) -> Result<(), (&'static str, String)> {
    let too_many =
        |field, value: u64| (value > MAX_COUNT).then(|| (field, format!("{value} exceeds {MAX_COUNT} per record")));
    for (field, value) in [("attempts", r.attempts), ("answered", r.answered)] {
        if let Some(e) = too_many(field, value) {
            return Err(e);
        }
    }
    let results = [r.succeeded, r.errors_429, r.errors_5xx, r.errors_timeout, r.errors_connect, r.errors_4xx]
        .iter()
        .try_fold(0u64, |sum, v| sum.checked_add(*v));
    if results.is_none_or(|n| n > r.attempts) {
        return Err(("succeeded", "results (succeeded + errors_*) exceed attempts".into()));
    }
    if r.answered_errors > r.answered {
        return Err(("answered_errors", "exceeds answered".into()));
    }
    if r.ttft_count > r.attempts {
        return Err(("ttft_count", "exceeds attempts".into()));
    }
    if r.latency_histogram.iter().try_fold(0u64, |sum, v| sum.checked_add(*v)).is_none_or(|n| n > r.attempts) {
        return Err(("latency_histogram", "counts more attempts than attempts".into()));
    }
    let per_attempt = |field, value: u64, count: u64, max: u64| {
        (value > count.saturating_mul(max)).then(|| (field, format!("exceeds {max} per attempt")))
    };
    for (field, value, count, max) in [
        ("prompt_tokens", r.prompt_tokens, r.attempts, MAX_TOKENS_PER_ATTEMPT),
        ("completion_tokens", r.completion_tokens, r.attempts, MAX_TOKENS_PER_ATTEMPT),
        ("total_tokens", r.total_tokens, r.attempts, MAX_TOKENS_PER_ATTEMPT.saturating_mul(2)),
        ("latency_ms_sum", r.latency_ms_sum, r.attempts, MAX_MS_PER_ATTEMPT),
        ("ttft_ms_sum", r.ttft_ms_sum, r.ttft_count, MAX_MS_PER_ATTEMPT),
    ] {
        if let Some(e) = per_attempt(field, value, count, max) {
            return Err(e);
        }
    }
    if r.cost_usd > r.attempts as f64 * MAX_USD_PER_ATTEMPT {
        return Err(("cost_usd", format!("exceeds {MAX_USD_PER_ATTEMPT} USD per attempt")));
    }
    Ok(())
}

/// Validates a batch and converts its records.
pub(crate) fn check_batch(batch: &pb::ReportBatch) -> Result<Vec<ReportRecord>, Status> {
    if !node_id_ok(&batch.node_id) {
        return Err(Status::invalid_argument("node_id: must be 1-128 characters of letters, digits, '-', '_' or '.'"));
    }
    if batch.boot_id.is_empty() || batch.boot_id.len() > 128 {
        return Err(Status::invalid_argument("boot_id: must be 1-128 characters"));
    }
    if batch.seq == 0 {
        return Err(Status::invalid_argument("seq: must start at 1"));
    }
    if batch.sender_boot_id.len() > 128 {
        return Err(Status::invalid_argument("sender_boot_id: must be at most 128 characters"));
    }
    if batch.records.len() > MAX_RECORDS {
        return Err(Status::invalid_argument(format!("records: at most {MAX_RECORDS} per batch")));
    }
    batch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let bad = |field: &str, why: &str| Status::invalid_argument(format!("records[{i}].{field}: {why}"));
            if r.minute_ms < 0 || r.minute_ms % 60_000 != 0 {
                return Err(bad("minute_ms", "must be a non-negative multiple of 60000"));
            }
            if r.backend_id.len() > 128 || r.backend_id.contains('\0') {
                return Err(bad("backend_id", "must be at most 128 characters"));
            }
            if r.model.len() > 256 || r.model.contains('\0') {
                return Err(bad("model", "must be at most 256 characters"));
            }
            if r.pool.len() > 128 {
                return Err(bad("pool", "must be at most 128 characters"));
            }
            if r.latency_histogram.len() > LATENCY_BUCKETS_MS.len() + 1 {
                return Err(bad("latency_histogram", "has more buckets than LATENCY_BUCKETS_MS + 1"));
            }
            if !r.cost_usd.is_finite() || r.cost_usd < 0.0 {
                return Err(bad("cost_usd", "must be a non-negative number"));
            }
            if let Err((field, why)) = check_counts(r) {
                return Err(bad(field, &why));
            }
            Ok(ReportRecord {
                minute_ms: r.minute_ms,
                backend_id: r.backend_id.clone(),
                model: r.model.clone(),
                pool: r.pool.clone(),
                counters: UsageCounters {
                    attempts: r.attempts,
                    answered: r.answered,
                    answered_errors: r.answered_errors,
                    succeeded: r.succeeded,
                    errors_429: r.errors_429,
                    errors_5xx: r.errors_5xx,
                    errors_timeout: r.errors_timeout,
                    errors_connect: r.errors_connect,
                    errors_4xx: r.errors_4xx,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    total_tokens: r.total_tokens,
                    cost_usd: r.cost_usd,
                    latency_ms_sum: r.latency_ms_sum,
                    latency_histogram: r.latency_histogram.clone(),
                    ttft_ms_sum: r.ttft_ms_sum,
                    ttft_count: r.ttft_count,
                },
            })
        })
        .collect()
}

/// One node's Sync stream: sends a snapshot at once and after every config change,
/// records the node's answers, and ends on shutdown or when either side goes away.
struct Session {
    shared: Arc<Shared>,
    hello: pb::Hello,
    tx: mpsc::Sender<Result<pb::ControlMessage, Status>>,
    /// (version, nonce) of snapshots sent and not yet answered.
    pending: VecDeque<(u64, String)>,
    /// The token the stream was opened with: revoking it ends the stream.
    token_id: Option<String>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::NodeMessage>) {
        let shared = self.shared.clone();
        let store = &shared.store;
        let node_id = self.hello.node_id.clone();
        let session = self.shared.nodes.connect(store, &self.hello);
        shared.fleet.attach(&node_id, session, &self.hello.region, self.tx.clone());
        info!(node = %node_id, region = %self.hello.region, has_version = self.hello.config_version, "node connected");
        let mut config = self.shared.config();
        let mut shutdown = self.shared.shutdown();
        let mut tokens = self.shared.auth.subscribe();
        config.mark_changed();
        loop {
            tokio::select! {
                _ = tokens.changed() => {
                    if let Some(token) = self.token_id.as_deref().filter(|t| !shared.auth.holds(t)) {
                        warn!(node = %node_id, token, "the node's credential was revoked: closing its stream");
                        let _ = self.tx.send(Err(Status::unauthenticated("this node's credential was revoked"))).await;
                        break;
                    }
                }
                _ = shutdown.changed() => {
                    let _ = self.tx.send(Err(Status::unavailable("control plane shutting down"))).await;
                    break;
                }
                changed = config.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let state = config.borrow_and_update().clone();
                    let nonce = nonce();
                    let mut snapshot = state.snapshot_for(&self.hello.region, nonce.clone());
                    shared.fleet.decorate(&node_id, &mut snapshot);
                    let msg = pb::ControlMessage { kind: Some(pb::control_message::Kind::Snapshot(snapshot)) };
                    if self.tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                    metrics::snapshot_pushed();
                    debug!(node = %node_id, version = state.version, "snapshot sent");
                    if self.pending.len() == PENDING_SNAPSHOTS {
                        self.pending.pop_front();
                    }
                    self.pending.push_back((state.version, nonce));
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.handle(message),
                    Ok(None) => break,
                    Err(status) => {
                        debug!(node = %node_id, %status, "sync stream error");
                        break;
                    }
                },
            }
        }
        shared.fleet.detach(&node_id, session);
        self.shared.nodes.disconnect(store, &node_id, session);
        info!(node = %node_id, "node disconnected");
    }

    /// Takes the answer to a snapshot we sent; answers to anything else are ignored.
    fn answered(&mut self, version: u64, nonce: &str) -> bool {
        match self.pending.iter().position(|(v, n)| *v == version && n == nonce) {
            Some(i) => {
                self.pending.drain(..=i);
                true
            }
            None => {
                warn!(node = %self.hello.node_id, version, "answer to a snapshot that was not sent or was already answered");
                false
            }
        }
    }

    fn handle(&mut self, message: pb::NodeMessage) {
        let shared = self.shared.clone();
        let store = &shared.store;
        let node_id = self.hello.node_id.clone();
        shared.nodes.seen(store, &node_id);
        match message.kind {
            Some(Kind::Ack(ack)) if self.answered(ack.version, &ack.nonce) => {
                metrics::snapshot_answer(true);
                shared.nodes.acked(store, &node_id, ack.version);
            }
            Some(Kind::Nack(nack)) if self.answered(nack.version, &nack.nonce) => {
                metrics::snapshot_answer(false);
                warn!(node = %node_id, version = nack.version, error = %nack.error, "node rejected snapshot");
                shared.nodes.nacked(store, &node_id, nack.version, &nack.error);
            }
            Some(Kind::Ack(_) | Kind::Nack(_)) => {}
            Some(Kind::RateLimited(event)) => {
                metrics::rate_limit_event();
                let settings = shared.config().borrow().settings.clone();
                if let Some(record) = shared.fleet.rate_limited(&node_id, &event, &settings) {
                    crate::fleet::Fleet::store_cooldown(store, &record);
                }
            }
            Some(Kind::Demand(demand)) => shared.fleet.demand(&node_id, &demand),
            Some(Kind::Recovered(r)) => shared.fleet.recovered(&node_id, &r.backend_id),
            Some(Kind::Hello(_)) => warn!(node = %node_id, "ignoring a second Hello on one stream"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Counts from everywhere in u64: small, near the bounds, near overflow.
    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..1000, MAX_COUNT - 2..MAX_COUNT + 2, u64::MAX - 2..=u64::MAX, any::<u64>()]
    }

    fn record() -> impl Strategy<Value = pb::UsageRecord> {
        (
            prop::array::uniform8(count()),
            prop::array::uniform6(count()),
            prop::collection::vec(count(), 0..13),
            any::<f64>(),
            any::<i64>(),
        )
            .prop_map(|(a, b, histogram, cost, minute)| pb::UsageRecord {
                minute_ms: minute,
                backend_id: "bkd_1".into(),
                model: "m".into(),
                attempts: a[0],
                answered: a[1],
                answered_errors: a[2],
                succeeded: a[3],
                errors_429: a[4],
                errors_5xx: a[5],
                errors_timeout: a[6],
                errors_connect: a[7],
                errors_4xx: b[0],
                prompt_tokens: b[1],
                completion_tokens: b[2],
                total_tokens: b[3],
                latency_ms_sum: b[4],
                ttft_ms_sum: b[5],
                ttft_count: b[0] / 2,
                latency_histogram: histogram,
                cost_usd: cost,
                ..Default::default()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any record: refused by name or accepted, never a panic; what is accepted is
        /// possible, and a thousand of them add up without overflowing.
        #[test]
        fn batch_validation_accepts_only_possible_counts(records in prop::collection::vec(record(), 1..4)) {
            let batch = pb::ReportBatch { node_id: "n".into(), boot_id: "b".into(), seq: 1, records, ..Default::default() };
            match check_batch(&batch) {
                Err(status) => {
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                    prop_assert!(status.message().starts_with("records["), "{}", status.message());
                }
                Ok(records) => {
                    for r in &records {
                        let c = &r.counters;
                        let results = c.succeeded + c.errors_429 + c.errors_5xx + c.errors_timeout + c.errors_connect + c.errors_4xx;
                        prop_assert!(results <= c.attempts && c.answered_errors <= c.answered);
                        prop_assert!(c.latency_histogram.iter().sum::<u64>() <= c.attempts);
                        let mut total = c.clone();
                        for _ in 0..1000 {
                            prop_assert!(total.checked_merge(c).is_ok());
                        }
                    }
                }
            }
        }

        /// What a proxy really sends (one result, one histogram count, at most one ttft
        /// per attempt; realistic tokens, latency and cost) is always accepted.
        #[test]
        fn batches_a_proxy_sends_are_accepted(
            attempts in prop::collection::vec((0usize..6, 0u64..200_000, 0u64..8_000, 0u64..600_000, any::<bool>()), 1..200),
            proxy_answered in 0u64..50,
        ) {
            let mut r = pb::UsageRecord { minute_ms: 60_000, latency_histogram: vec![0; 11], ..Default::default() };
            for (outcome, prompt, completion, ms, streamed) in attempts {
                r.attempts += 1;
                r.answered += 1;
                *[&mut r.succeeded, &mut r.errors_429, &mut r.errors_5xx, &mut r.errors_timeout, &mut r.errors_connect, &mut r.errors_4xx][outcome] += 1;
                if outcome != 0 {
                    r.answered_errors += 1;
                }
                r.prompt_tokens += prompt;
                r.completion_tokens += completion;
                r.total_tokens += prompt + completion;
                r.latency_ms_sum += ms;
                r.latency_histogram[outcome] += 1;
                r.cost_usd += (prompt + completion) as f64 * 1e-5;
                if streamed {
                    r.ttft_count += 1;
                    r.ttft_ms_sum += ms / 2;
                }
            }
            r.answered += proxy_answered;
            r.answered_errors += proxy_answered;
            let batch = pb::ReportBatch { node_id: "n".into(), boot_id: "b".into(), seq: 1, records: vec![r], ..Default::default() };
            prop_assert!(check_batch(&batch).is_ok(), "{:?}", check_batch(&batch).err());
        }
    }
}
