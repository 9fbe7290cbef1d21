//! V1's adaptive retreat, per backend: when the share of 429s over the last minute
//! (with a minimum sample) exceeds 5%, the effective rate drops to 75% (floor 5 RPM);
//! after 120 s under 2% it recovers by 2 RPM per evaluation tick. Ticks are timed by the
//! caller, never driven by responses.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);
const MIN_SAMPLE: usize = 20;
const RETREAT_ABOVE: f64 = 0.05;
const RECOVER_BELOW: f64 = 0.02;
const CALM_FOR: Duration = Duration::from_secs(120);
const FLOOR_RPM: f64 = 5.0;
const STEP_RPM: f64 = 2.0;

/// Outcomes are counted per second, so the state stays small at any request rate.
const SLOT: Duration = Duration::from_secs(1);

/// Retreat state of one backend.
#[derive(Debug)]
pub struct Retreat {
    effective: f64,
    /// (slot start, answers, 429s), oldest first; at most a minute of slots.
    outcomes: VecDeque<(Instant, u32, u32)>,
    calm_since: Option<Instant>,
}

impl Retreat {
    /// Starts at the configured rate.
    pub fn new(rpm: u32) -> Self {
        Self { effective: f64::from(rpm), outcomes: VecDeque::new(), calm_since: None }
    }

    /// Records one upstream answer.
    pub fn record(&mut self, now: Instant, was_429: bool) {
        match self.outcomes.back_mut() {
            Some(slot) if now < slot.0 + SLOT => {
                slot.1 += 1;
                slot.2 += u32::from(was_429);
            }
            _ => self.outcomes.push_back((now, 1, u32::from(was_429))),
        }
        self.prune(now);
    }

    fn prune(&mut self, now: Instant) {
        while self.outcomes.front().is_some_and(|&(t, _, _)| now.saturating_duration_since(t) >= WINDOW) {
            self.outcomes.pop_front();
        }
    }

    /// The 429 share over the last minute, if the sample is large enough.
    pub fn rate_429(&mut self, now: Instant) -> Option<f64> {
        self.prune(now);
        let answers: u32 = self.outcomes.iter().map(|o| o.1).sum();
        let limited: u32 = self.outcomes.iter().map(|o| o.2).sum();
        (answers as usize >= MIN_SAMPLE).then(|| f64::from(limited) / f64::from(answers))
    }

    /// One evaluation tick; returns the effective RPM (never above `configured`).
    pub fn tick(&mut self, now: Instant, configured: u32) -> u32 {
        let configured = f64::from(configured);
        self.effective = self.effective.min(configured);
        match self.rate_429(now) {
            Some(rate) if rate > RETREAT_ABOVE => {
                self.effective = (self.effective * 0.75).max(FLOOR_RPM.min(configured));
                self.calm_since = None;
            }
            rate => {
                let calm = rate.is_none_or(|r| r < RECOVER_BELOW);
                if !calm {
                    self.calm_since = None;
                } else if self.effective < configured {
                    let since = *self.calm_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= CALM_FOR {
                        self.effective = (self.effective + STEP_RPM).min(configured);
                    }
                }
            }
        }
        self.effective.round().max(1.0) as u32
    }

    /// Whether the rate is currently reduced.
    pub fn retreating(&self, configured: u32) -> bool {
        self.effective < f64::from(configured)
    }

    /// The effective RPM.
    pub fn effective(&self) -> f64 {
        self.effective
    }
}
