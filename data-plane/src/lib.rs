//! Sidecar data plane: an OpenAI-compatible proxy that spreads requests over provider
//! backends in pool order, keeps each under its rate limits, cools backends down on 429,
//! streams responses through untouched, and reports usage to the control plane, from
//! which it receives its config.

#![forbid(unsafe_code)]

pub mod config;
pub mod config_sync;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod ratelimit;
pub mod report;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod state;
mod tls;
pub mod upstream;
mod workers;

#[cfg(test)]
mod proptests;

use std::time::Duration;

use rand::{Rng, RngCore};

pub use config::{ConfigError, Flags, LogFormat, ProxyConfig};
pub use server::{InitError, Proxy};

/// Now as unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `bytes` random bytes as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// `d` scaled by a random factor in [0.5, 1.5), so reconnecting nodes spread out.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..1.5))
}
