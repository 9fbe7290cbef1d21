//! Usage reports: every finished upstream attempt becomes a [`UsageEvent`] on a bounded
//! channel; one task sums events per (minute, backend, model) in its own totals and cuts a
//! batch every second; a bounded outbox holds batches until the control plane
//! acknowledges them, so an outage loses nothing that fits (beyond that the oldest
//! batches are dropped and counted). The request path's events are domain types
//! (`event`); `wire` turns them into protobuf, at delivery only.

mod aggregate;
mod event;
mod outbox;
mod wire;

use std::{collections::HashMap, sync::Arc, time::Duration};

use sidecar_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, warn};

pub use crate::config_sync::{ControlClients, NodeClient};
use crate::metrics::Metrics;
use aggregate::{UsageKey, UsageTotals};
pub use event::{BackendExhausted, BackendRecovered, LimitLearned, NodeEvent, Outcome, RateLimitEvent, UsageEvent};

/// How often the aggregator sweeps the event channel.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Upper bounds (ms) of the latency histogram buckets, as the control plane reads them.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000];

/// Where request handlers send usage events.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageEvent>,
    metrics: Metrics,
}

impl UsageSink {
    /// Records an event without waiting. The channel is large; if the reporter ever
    /// falls that far behind, the event is dropped and counted rather than blocking
    /// requests.
    pub fn record(&self, event: UsageEvent) {
        if self.tx.try_send(event).is_err() {
            self.metrics.usage_event_dropped();
        }
    }
}

/// Creates the sink and the receiver the reporter task consumes.
pub fn channel(metrics: Metrics) -> (UsageSink, mpsc::Receiver<UsageEvent>) {
    let (tx, rx) = mpsc::channel(65_536);
    (UsageSink { tx, metrics }, rx)
}

pub use outbox::{Outbox, Recovered};

/// Who the batches are from and how they are cut.
pub struct Batching {
    /// This node.
    pub node_id: String,
    /// This process start.
    pub boot_id: String,
    /// Outbox capacity in batches.
    pub capacity: usize,
    /// How often a batch is cut.
    pub interval: Duration,
}

/// Aggregates events and cuts a batch into the outbox every `interval`, and once more
/// when `shutdown` turns true (after draining the channel); then sets `done`, which is
/// what lets [`deliver`] finish.
pub async fn aggregate(
    mut rx: mpsc::Receiver<UsageEvent>,
    outbox: Arc<Outbox>,
    batching: Batching,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    let Batching { node_id, boot_id, capacity, interval } = batching;
    let mut pending: HashMap<UsageKey, UsageTotals> = HashMap::new();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cut = |pending: &mut HashMap<UsageKey, UsageTotals>| {
        if pending.is_empty() {
            return;
        }
        seq += 1;
        let header = wire::BatchHeader { node_id: &node_id, boot_id: &boot_id, seq };
        let dropped = outbox.push(wire::report_batch(header, pending.drain()), capacity);
        if dropped > 0 {
            warn!(dropped, "usage outbox full: dropped the oldest batches");
            metrics.outbox_dropped(dropped);
        }
    };
    let put = |pending: &mut HashMap<UsageKey, UsageTotals>, e: UsageEvent| {
        pending.entry(UsageKey::of(&e)).or_insert_with(|| UsageTotals::new(e.pool.clone())).add(&e);
    };
    // Events are drained in small periodic sweeps rather than one wake-up per event: at
    // tens of thousands of requests a second, waking this task per event costs more than
    // the accounting itself. The channel holds far more than one sweep's worth.
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.tick() => loop {
                match rx.try_recv() {
                    Ok(e) => put(&mut pending, e),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        cut(&mut pending);
                        let _ = done.send(true);
                        return;
                    }
                }
            },
            _ = tick.tick() => {
                while let Ok(e) = rx.try_recv() {
                    put(&mut pending, e);
                }
                cut(&mut pending);
            }
            _ = shutdown.wait_for(|s| *s) => {
                while let Ok(e) = rx.try_recv() {
                    put(&mut pending, e);
                }
                break;
            }
        }
    }
    cut(&mut pending);
    let _ = done.send(true);
}

/// Sends outbox batches in order, one at a time, retrying with backoff until each is
/// acknowledged; `boot_id` (this process) is sent as the sender, whichever run cut the
/// batch. A batch the control plane refuses as invalid is dropped and counted: retrying
/// it would block every batch behind it. Once the aggregator is `done` (it cut the last
/// batch) it keeps trying for `drain_for`, then gives up (what is left stays on disk).
pub async fn deliver(
    outbox: Arc<Outbox>,
    clients: ControlClients,
    boot_id: String,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    drain_for: Duration,
) {
    let mut backoff = Duration::from_millis(200);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let Some(batch) = outbox.front() else {
            if deadline.is_some() {
                return;
            }
            tokio::select! {
                _ = outbox.ready.notified() => continue,
                _ = shutdown.wait_for(|s| *s) => {
                    deadline = Some(tokio::time::Instant::now() + drain_for);
                    continue;
                }
            }
        };
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            warn!(pending = outbox.len(), "shutting down with usage batches the control plane has not acknowledged");
            return;
        }
        let mut request = tonic::Request::new(pb::ReportBatch { sender_boot_id: boot_id.clone(), ..batch.clone() });
        request.set_timeout(Duration::from_secs(5));
        let (using, mut client) = clients.current();
        match client.report(request).await {
            Ok(ack) => {
                debug!(seq = ack.get_ref().seq, applied = ack.get_ref().applied, "report acknowledged");
                outbox.remove(&batch);
                backoff = Duration::from_millis(200);
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                error!(
                    boot = %batch.boot_id,
                    seq = batch.seq,
                    error = %status.message(),
                    "the control plane refused a usage batch as invalid; dropping it"
                );
                outbox.remove(&batch);
                metrics.report_rejected();
            }
            Err(status) => {
                debug!(%status, "report failed; will retry");
                clients.failed(using);
                let wait = crate::jitter(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if deadline.is_some() {
                    tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait_for(|s| *s) => deadline = Some(tokio::time::Instant::now() + drain_for),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Usage;

    fn event(outcome: Outcome, at_ms: i64, ms: u64) -> UsageEvent {
        UsageEvent {
            at_ms,
            backend_id: "bkd_1".into(),
            pool: "primary".into(),
            model: "m".into(),
            attempt: Some(outcome),
            answered: Some(outcome == Outcome::Success),
            usage: Some(Usage { prompt: 10, completion: 5, total: 15, cached: 0, cache_write: 0 }),
            cost_usd: 0.5,
            latency: Duration::from_millis(ms),
            ttft: None,
            key_id: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_aggregated_per_minute_backend_and_model_into_sequenced_batches() {
        let metrics = Metrics::new();
        let (sink, rx) = channel(metrics.clone());
        let outbox = Arc::new(Outbox::default());
        let (stop_tx, stop) = watch::channel(false);
        let (done_tx, mut done) = watch::channel(false);
        let batching =
            Batching { node_id: "n".into(), boot_id: "b".into(), capacity: 10, interval: Duration::from_secs(1) };
        let task = tokio::spawn(aggregate(rx, outbox.clone(), batching, metrics, stop, done_tx));
        sink.record(event(Outcome::Success, 60_000, 40));
        sink.record(event(Outcome::RateLimited, 60_500, 3000));
        sink.record(event(Outcome::Success, 120_000, 40));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sink.record(event(Outcome::ServerError, 120_001, 70_000));
        stop_tx.send(true).unwrap();
        done.wait_for(|d| *d).await.unwrap();
        task.await.unwrap();
        let batches = outbox.batches();
        assert_eq!(batches.iter().map(|b| b.seq).collect::<Vec<_>>(), [1, 2]);
        let mut first = batches[0].records.clone();
        first.sort_by_key(|r| r.minute_ms);
        assert_eq!(first.len(), 2, "two minutes");
        let r = &first[0];
        assert_eq!((r.attempts, r.succeeded, r.errors_429, r.prompt_tokens), (2, 1, 1, 20));
        assert_eq!(r.latency_histogram[0], 1, "40 ms in the first bucket");
        assert_eq!(r.latency_histogram[6], 1, "3 s in the 5 s bucket");
        let last = &batches[1].records[0];
        assert_eq!(
            (last.errors_5xx, *last.latency_histogram.last().unwrap()),
            (1, 1),
            "70 s lands in the overflow bucket"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_outbox_drops_the_oldest_batches_and_counts_them() {
        let metrics = Metrics::new();
        let (sink, rx) = channel(metrics.clone());
        let outbox = Arc::new(Outbox::default());
        let (stop_tx, stop) = watch::channel(false);
        let (done_tx, mut done) = watch::channel(false);
        let batching =
            Batching { node_id: "n".into(), boot_id: "b".into(), capacity: 2, interval: Duration::from_secs(1) };
        tokio::spawn(aggregate(rx, outbox.clone(), batching, metrics.clone(), stop, done_tx));
        for i in 0..3 {
            sink.record(event(Outcome::Success, 60_000 * (i + 1), 10));
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        stop_tx.send(true).unwrap();
        done.wait_for(|d| *d).await.unwrap();
        let seqs: Vec<u64> = outbox.batches().iter().map(|b| b.seq).collect();
        assert_eq!(seqs, [2, 3], "the oldest batch was dropped");
        assert!(metrics.render().contains("sidecar_report_outbox_dropped_total 1"), "{}", metrics.render());
    }
}
