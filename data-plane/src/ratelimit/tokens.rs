//! Tokens per minute. Token counts are known only after the response, so an admission
//! reserves an estimate and settles it to the real count when the usage arrives.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// A sliding window of token spend.
#[derive(Debug)]
pub struct TokenWindow {
    limit: u64,
    window: Duration,
    /// (time, tokens, reservation id), oldest first.
    spent: VecDeque<(Instant, u64, u64)>,
    sum: u64,
    next_id: u64,
}

impl TokenWindow {
    /// A window allowing `limit` tokens per `window`.
    pub fn new(limit: u64, window: Duration) -> Self {
        Self { limit: limit.max(1), window, spent: VecDeque::new(), sum: 0, next_id: 0 }
    }

    /// Changes the limit, keeping what was spent.
    pub fn reconfigure(&mut self, limit: u64, window: Duration) {
        self.limit = limit.max(1);
        self.window = window;
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(t, n, _)) = self.spent.front() {
            if now.saturating_duration_since(t) < self.window {
                break;
            }
            self.sum -= n;
            self.spent.pop_front();
        }
    }

    /// When `estimate` more tokens fit. An empty window always admits one request, so
    /// a request larger than the whole limit is not stuck forever.
    pub fn next_available(&mut self, now: Instant, estimate: u64) -> Instant {
        self.prune(now);
        if self.spent.is_empty() || self.sum + estimate <= self.limit {
            return now;
        }
        let mut freed = self.sum;
        for &(t, n, _) in &self.spent {
            freed -= n;
            if freed + estimate <= self.limit || freed == 0 {
                return t + self.window;
            }
        }
        now
    }

    /// Reserves `estimate` tokens now; returns the reservation id.
    pub fn reserve(&mut self, now: Instant, estimate: u64) -> u64 {
        self.prune(now);
        self.next_id += 1;
        self.spent.push_back((now, estimate, self.next_id));
        self.sum += estimate;
        self.next_id
    }

    /// Replaces a reservation's estimate with the real count (0 for a refund).
    pub fn settle(&mut self, id: u64, actual: u64) {
        // Ids grow with every reservation, so the log is sorted by id: a busy minute's
        // thousands of entries are searched in a few steps, not walked.
        if let Ok(i) = self.spent.binary_search_by_key(&id, |e| e.2) {
            let entry = &mut self.spent[i];
            self.sum = self.sum - entry.1 + actual;
            entry.1 = actual;
        }
    }

    /// Tokens spent in the current window.
    pub fn used(&mut self, now: Instant) -> u64 {
        self.prune(now);
        self.sum
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}
