//! The one place the reporter's domain values become protobuf: usage totals into
//! `UsageRecord`s of a `ReportBatch` (as the outbox stores and delivers them), and
//! [`NodeEvent`]s into the Sync stream's `NodeMessage` kinds.

use sidecar_proto::v1 as pb;

use super::{
    NodeEvent,
    aggregate::{UsageKey, UsageTotals},
};

/// Who a batch is from and where it sits in that run's sequence.
pub(crate) struct BatchHeader<'a> {
    pub(crate) node_id: &'a str,
    pub(crate) boot_id: &'a str,
    pub(crate) seq: u64,
}

/// A batch of `records`, stamped as sent now. `sender_boot_id` is left empty: it is set
/// when the batch is sent, since it may outlive this process.
pub(crate) fn report_batch(
    header: BatchHeader<'_>,
    records: impl Iterator<Item = (UsageKey, UsageTotals)>,
) -> pb::ReportBatch {
    pb::ReportBatch {
        node_id: header.node_id.to_owned(),
        boot_id: header.boot_id.to_owned(),
        seq: header.seq,
        records: records.map(|(key, totals)| usage_record(key, totals)).collect(),
        sent_at_ms: crate::now_ms(),
        sender_boot_id: String::new(),
    }
}

fn usage_record(key: UsageKey, t: UsageTotals) -> pb::UsageRecord {
    pb::UsageRecord {
        minute_ms: key.minute_ms,
        backend_id: key.backend_id.to_string(),
        model: key.model.to_string(),
        key_id: key.key_id.as_deref().unwrap_or_default().to_owned(),
        pool: t.pool.to_string(),
        attempts: t.attempts,
        succeeded: t.succeeded,
        errors_429: t.errors_429,
        errors_5xx: t.errors_5xx,
        errors_timeout: t.errors_timeout,
        errors_connect: t.errors_connect,
        errors_4xx: t.errors_4xx,
        prompt_tokens: t.prompt_tokens,
        completion_tokens: t.completion_tokens,
        total_tokens: t.total_tokens,
        cost_usd: t.cost_usd,
        latency_ms_sum: t.latency_ms_sum,
        // Only records with attempts carry a histogram (answers alone do not).
        latency_histogram: if t.attempts > 0 { t.latency_histogram.to_vec() } else { Vec::new() },
        ttft_ms_sum: t.ttft_ms_sum,
        ttft_count: t.ttft_count,
        answered: t.answered,
        answered_errors: t.answered_errors,
    }
}

impl From<NodeEvent> for pb::node_message::Kind {
    fn from(event: NodeEvent) -> Self {
        match event {
            NodeEvent::RateLimited(e) => Self::RateLimited(pb::RateLimitEvent {
                backend_id: e.backend_id,
                retry_after_ms: e.retry_after.map_or(0, |d| d.as_millis() as u64),
                cooldown_ms: e.cooldown.as_millis() as u64,
                consecutive_count: e.consecutive_count,
                at_ms: e.at_ms,
                model: e.model,
            }),
            NodeEvent::Recovered(e) => {
                Self::Recovered(pb::BackendRecovered { backend_id: e.backend_id, at_ms: e.at_ms, model: e.model })
            }
            NodeEvent::LimitLearned(e) => Self::LimitLearned(pb::LimitLearned {
                backend_id: e.backend_id,
                rpm_limit: e.rpm_limit,
                at_ms: e.at_ms,
            }),
            NodeEvent::Exhausted(e) => Self::Exhausted(pb::BackendExhausted {
                backend_id: e.backend_id,
                reset_ms: e.reset.as_millis() as u64,
                at_ms: e.at_ms,
                model: e.model,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::report::{BackendRecovered, Outcome, RateLimitEvent, UsageEvent};

    #[test]
    fn node_events_keep_every_field() {
        let kind = pb::node_message::Kind::from(NodeEvent::RateLimited(RateLimitEvent {
            backend_id: "bkd_1".into(),
            retry_after: Some(Duration::from_millis(1500)),
            cooldown: Duration::from_secs(30),
            consecutive_count: 2,
            at_ms: 7,
            model: "gpt-alt".into(),
        }));
        let want = pb::RateLimitEvent {
            backend_id: "bkd_1".into(),
            retry_after_ms: 1500,
            cooldown_ms: 30_000,
            consecutive_count: 2,
            at_ms: 7,
            model: "gpt-alt".into(),
        };
        assert_eq!(kind, pb::node_message::Kind::RateLimited(want));
        let none = RateLimitEvent {
            backend_id: "b".into(),
            retry_after: None,
            cooldown: Duration::ZERO,
            consecutive_count: 1,
            at_ms: 0,
            model: String::new(),
        };
        let pb::node_message::Kind::RateLimited(e) = NodeEvent::RateLimited(none).into() else { panic!() };
        assert_eq!(e.retry_after_ms, 0, "no Retry-After is 0 on the wire");
        let kind = pb::node_message::Kind::from(NodeEvent::Recovered(BackendRecovered {
            backend_id: "bkd_2".into(),
            at_ms: 9,
            model: "gpt-alt".into(),
        }));
        assert_eq!(
            kind,
            pb::node_message::Kind::Recovered(pb::BackendRecovered {
                backend_id: "bkd_2".into(),
                at_ms: 9,
                model: "gpt-alt".into()
            })
        );
    }

    #[test]
    fn answers_alone_carry_no_histogram() {
        let event = UsageEvent {
            at_ms: 61_000,
            backend_id: "".into(),
            pool: "".into(),
            model: "m".into(),
            attempt: None,
            answered: Some(false),
            usage: None,
            cost_usd: 0.0,
            latency: Duration::ZERO,
            ttft: None,
            key_id: None,
        };
        let key = UsageKey::of(&event);
        let mut totals = UsageTotals::new(Arc::clone(&event.pool));
        totals.add(&event);
        let header = BatchHeader { node_id: "n", boot_id: "b", seq: 1 };
        let batch = report_batch(header, std::iter::once((key.clone(), totals.clone())));
        let r = &batch.records[0];
        assert_eq!((r.minute_ms, r.answered, r.answered_errors, r.attempts), (60_000, 1, 1, 0));
        assert!(r.latency_histogram.is_empty());
        totals.add(&UsageEvent { attempt: Some(Outcome::Success), answered: None, ..event });
        let header = BatchHeader { node_id: "n", boot_id: "b", seq: 2 };
        let batch = report_batch(header, std::iter::once((key, totals)));
        assert_eq!(batch.records[0].latency_histogram, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
