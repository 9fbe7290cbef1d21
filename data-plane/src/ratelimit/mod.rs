//! Per-backend limiters: requests per minute (a token bucket that spreads admissions
//! over the minute, capped by a strict sliding window), tokens per minute, and V1's
//! adaptive retreat.

mod retreat;
mod tokens;
mod window;

pub use retreat::Retreat;
pub use tokens::TokenWindow;
pub use window::RequestLimiter;

#[cfg(test)]
mod tests;
