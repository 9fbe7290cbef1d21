//! Shared helpers of the benchmark tools.

#![forbid(unsafe_code)]

use std::time::Duration;

/// The `q`-quantile (0..=1) of `samples` (sorted in place).
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i]
}

/// Microseconds as a float, for JSON output.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
