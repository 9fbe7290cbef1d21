//! Usage reports: every finished upstream attempt becomes an event on a bounded channel;
//! one task aggregates events per (minute, backend, model) and cuts a batch every second;
//! a bounded outbox holds batches until the control plane acknowledges them, so an outage
//! loses nothing that fits (beyond that the oldest batches are dropped and counted).

mod outbox;

use std::{collections::HashMap, sync::Arc, time::Duration};

use sidecar_proto::v1::{self as pb, node_service_client::NodeServiceClient};
use tokio::sync::{mpsc, watch};
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use tracing::{debug, error, warn};

use crate::{auth::Bearer, metrics::Metrics, upstream::Usage};

/// How often the aggregator sweeps the event channel.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Upper bounds (ms) of the latency histogram buckets, as the control plane reads them.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000];

/// How an attempt ended, for usage counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Upstream 2xx.
    Success,
    /// Upstream 429.
    RateLimited,
    /// Upstream 5xx.
    ServerError,
    /// No answer in time.
    Timeout,
    /// No connection (or it broke).
    Connect,
    /// Upstream 4xx other than 429.
    ClientError,
}

/// One finished upstream attempt.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    /// Unix ms when it finished.
    pub at_ms: i64,
    /// Backend id.
    pub backend_id: Arc<str>,
    /// Backend pool.
    pub pool: Arc<str>,
    /// Canonical model the client asked for.
    pub model: Arc<str>,
    /// How the upstream attempt ended; `None` when the event only records an answer
    /// (the proxy answered itself, or passed on an earlier attempt's error).
    pub attempt: Option<Outcome>,
    /// The client got its answer from this event: `Some(true)` for 2xx.
    pub answered: Option<bool>,
    /// Tokens, when the response carried usage.
    pub usage: Option<Usage>,
    /// Cost in USD.
    pub cost_usd: f64,
    /// Request to end of response.
    pub latency: Duration,
    /// Request to first byte, for streams.
    pub ttft: Option<Duration>,
}

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

fn bucket_index(ms: u64) -> usize {
    LATENCY_BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(LATENCY_BUCKETS_MS.len())
}

fn add(record: &mut pb::UsageRecord, e: &UsageEvent) {
    match e.answered {
        Some(true) => record.answered += 1,
        Some(false) => {
            record.answered += 1;
            record.answered_errors += 1;
        }
        None => {}
    }
    let Some(outcome) = e.attempt else { return };
    record.attempts += 1;
    match outcome {
        Outcome::Success => record.succeeded += 1,
        Outcome::RateLimited => record.errors_429 += 1,
        Outcome::ServerError => record.errors_5xx += 1,
        Outcome::Timeout => record.errors_timeout += 1,
        Outcome::Connect => record.errors_connect += 1,
        Outcome::ClientError => record.errors_4xx += 1,
    }
    if let Some(u) = e.usage {
        record.prompt_tokens += u.prompt;
        record.completion_tokens += u.completion;
        record.total_tokens += u.total;
    }
    record.cost_usd += e.cost_usd;
    let ms = e.latency.as_millis() as u64;
    record.latency_ms_sum += ms;
    if record.latency_histogram.is_empty() {
        record.latency_histogram = vec![0; LATENCY_BUCKETS_MS.len() + 1];
    }
    record.latency_histogram[bucket_index(ms)] += 1;
    if let Some(t) = e.ttft {
        record.ttft_ms_sum += t.as_millis() as u64;
        record.ttft_count += 1;
    }
}

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
    let mut pending: HashMap<(i64, Arc<str>, Arc<str>), pb::UsageRecord> = HashMap::new();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cut = |pending: &mut HashMap<_, pb::UsageRecord>| {
        if pending.is_empty() {
            return;
        }
        seq += 1;
        let batch = pb::ReportBatch {
            node_id: node_id.clone(),
            boot_id: boot_id.clone(),
            seq,
            records: pending.drain().map(|(_, r)| r).collect(),
            sent_at_ms: crate::now_ms(),
            // Set when sent: the batch may outlive this process.
            sender_boot_id: String::new(),
        };
        let dropped = outbox.push(batch, capacity);
        if dropped > 0 {
            warn!(dropped, "usage outbox full: dropped the oldest batches");
            metrics.outbox_dropped(dropped);
        }
    };
    let put = |pending: &mut HashMap<(i64, Arc<str>, Arc<str>), pb::UsageRecord>, e: UsageEvent| {
        let minute = e.at_ms - e.at_ms.rem_euclid(60_000);
        let record =
            pending.entry((minute, e.backend_id.clone(), e.model.clone())).or_insert_with(|| pb::UsageRecord {
                minute_ms: minute,
                backend_id: e.backend_id.to_string(),
                model: e.model.to_string(),
                pool: e.pool.to_string(),
                ..Default::default()
            });
        add(record, &e);
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

/// The node client used for reports.
pub type NodeClient = NodeServiceClient<InterceptedService<Channel, Bearer>>;

/// Sends outbox batches in order, one at a time, retrying with backoff until each is
/// acknowledged; `boot_id` (this process) is sent as the sender, whichever run cut the
/// batch. A batch the control plane refuses as invalid is dropped and counted: retrying
/// it would block every batch behind it. Once the aggregator is `done` (it cut the last
/// batch) it keeps trying for `drain_for`, then gives up (what is left stays on disk).
pub async fn deliver(
    outbox: Arc<Outbox>,
    mut client: NodeClient,
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

    fn event(outcome: Outcome, at_ms: i64, ms: u64) -> UsageEvent {
        UsageEvent {
            at_ms,
            backend_id: "bkd_1".into(),
            pool: "primary".into(),
            model: "m".into(),
            attempt: Some(outcome),
            answered: Some(outcome == Outcome::Success),
            usage: Some(Usage { prompt: 10, completion: 5, total: 15, cached: 0 }),
            cost_usd: 0.5,
            latency: Duration::from_millis(ms),
            ttft: None,
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
