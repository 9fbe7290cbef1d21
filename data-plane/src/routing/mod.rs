//! Routing: the runtime bundle (backends with their live state, routes per model),
//! candidate choice within pools, and the priority queue for requests that must wait.

mod backend;
mod bundle;
mod key;
mod queue;
mod select;

pub use backend::{Availability, Backend, BackendState, Cooldown, Health, ModelBucket, ModelQuota, Quota, backoff};
pub use bundle::{Bundle, Route, Tier};
pub use key::{KeyBudget, KeyPermit, KeyRefusal, KeyState};
pub use queue::{Decision, Priority, Queue, QueueFull};
pub use select::{Assessment, Grant, assess, take, take_emergency};

#[cfg(test)]
mod tests;
