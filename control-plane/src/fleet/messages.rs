//! What the fleet coordinator hears from nodes (demand, 429s) and tells them (grants,
//! cooldowns), as domain values; the node API converts them to and from the wire.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A node session's inbox for fleet messages.
pub type Sender = mpsc::Sender<FleetMessage>;

/// What the fleet tells one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FleetMessage {
    /// The node's grants for every backend it may use, valid for `lease_ms`.
    Grants {
        /// One per backend.
        grants: Vec<Grant>,
        /// One per client key with a request limit.
        keys: Vec<KeyGrant>,
        /// How long they hold without renewal.
        lease_ms: u64,
        /// The allocation round.
        round: u64,
    },
    /// A backend cools (or recovered, with a count of 0) fleet-wide.
    Cooldown(CooldownNotice),
    /// What is left of each client key's spend budget.
    Budgets(Vec<crate::budgets::Remaining>),
}

/// A node's share of one backend's limit, per backend window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The backend.
    pub backend_id: String,
    /// Requests per window.
    pub rpm: u32,
    /// The node's share of the fleet's rate by demand (requests per window): its bucket
    /// may refill at this pace while `rpm` catches up.
    pub pace: u32,
    /// Tokens per window; 0 = no token limit.
    pub tpm: u32,
    /// Requests per window if the lease runs out.
    pub fallback_rpm: u32,
    /// Tokens per window if the lease runs out.
    pub fallback_tpm: u32,
    /// The node's shares of the models' own limits on the backend, under the same lease.
    pub models: Vec<ModelGrant>,
}

/// A node's share of one model's own limits on a backend, per window of the model (its window_seconds, else the backend's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelGrant {
    /// The canonical model name.
    pub model: String,
    /// Requests per window.
    pub rpm: u32,
    /// Tokens per window; 0 = the model has no token limit.
    pub tpm: u32,
    /// Requests per window if the lease runs out.
    pub fallback_rpm: u32,
    /// Tokens per window if the lease runs out.
    pub fallback_tpm: u32,
}

/// A fleet-wide cooldown (or its end).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CooldownNotice {
    /// The backend.
    pub backend_id: String,
    /// Only this canonical model cools (or pauses) on the backend; empty = the backend.
    pub model: String,
    /// Fleet-wide consecutive 429s; 0 = recovered.
    pub consecutive_count: u32,
    /// Cooldown still to run.
    pub remaining_ms: u64,
    /// The cooldown's full length.
    pub duration_ms: u64,
    /// The node whose 429 (or success) caused it.
    pub node_id: String,
    /// A pause because the provider reported the budget spent, not a 429 cooldown.
    pub exhausted: bool,
}

/// A node's demand on one backend, as it reports every second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendDemand {
    /// The backend.
    pub backend_id: String,
    /// Requests per window it would admit if it could.
    pub demand: f64,
    /// Its bucket's fill (0..1).
    pub bucket_fill: f64,
    /// Admitted in the current window.
    pub in_window: u32,
    /// The same for each model with its own limits on the backend.
    pub models: Vec<ModelDemand>,
    /// How long the node's grant still held when it reported (zero: none in force).
    pub lease_remaining: std::time::Duration,
    /// The allocation round of the grant in force when it reported (0: none or unknown).
    pub grant_round: u64,
    /// The share the node ran when it reported (per window), whoever granted it.
    pub granted: u32,
}

/// A node's demand on one model's own limits on a backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelDemand {
    /// The canonical model name.
    pub model: String,
    /// Requests per window of the model it would admit if it could.
    pub demand: f64,
    /// The model bucket's fill (0..1).
    pub bucket_fill: f64,
    /// Admitted in the current window.
    pub in_window: u32,
    /// The share the node ran when it reported (per window), whoever granted it.
    pub granted: u32,
}

/// A 429 a node saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimited {
    /// The backend.
    pub backend_id: String,
    /// The node's consecutive 429 count for it.
    pub consecutive_count: u32,
    /// The upstream's Retry-After, ms; 0 = none.
    pub retry_after_ms: u64,
    /// The canonical model, when the provider's 429 named a model with its own limits;
    /// empty = the backend.
    pub model: String,
}

/// Live figures of a backend across the fleet, for the dashboard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackendLive {
    /// Fleet-wide consecutive 429s.
    pub consecutive: u32,
    /// Cooling until (unix ms), 0 = not cooling.
    pub cooling_until_ms: i64,
    /// Mean bucket fill over the nodes using it.
    pub bucket_fill: f64,
    /// Admitted in the current window, summed over nodes.
    pub in_window: u32,
    /// The same for each model with its own limits, by canonical name.
    pub models: std::collections::BTreeMap<String, ModelLive>,
}

/// Live figures of one model's own limits on a backend across the fleet.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelLive {
    /// Mean bucket fill over the nodes using it.
    pub bucket_fill: f64,
    /// Admitted in the current window, summed over nodes.
    pub in_window: u32,
}

/// A node's shares of one client key's limits (0 where the key has no such limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGrant {
    /// The key.
    pub key_id: String,
    /// Requests per minute.
    pub rpm: u32,
    /// As in [`Grant::pace`].
    pub pace: u32,
    /// Requests per minute if the lease runs out.
    pub fallback_rpm: u32,
    /// Tokens per minute.
    pub tpm: u32,
    /// Tokens per minute if the lease runs out.
    pub fallback_tpm: u32,
    /// Requests in flight at once.
    pub concurrent: u32,
    /// Requests in flight at once if the lease runs out.
    pub fallback_concurrent: u32,
}

/// A node's demand on one client key's request limit, as it reports every second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyDemand {
    /// The key.
    pub key_id: String,
    /// Requests per minute it would admit for the key if it could.
    pub demand: f64,
    /// The key bucket's fill (0..1).
    pub bucket_fill: f64,
    /// Admitted for the key in the current window.
    pub in_window: u32,
    /// How long the node's grant still held when it reported (zero: none in force).
    pub lease_remaining: std::time::Duration,
    /// The allocation round of the grant in force when it reported (0: none or unknown).
    pub grant_round: u64,
    /// The share the node ran when it reported (per window), whoever granted it.
    pub granted: u32,
    /// Its use of the key's token limit, if the key has one.
    pub tokens: Option<LimitUse>,
    /// Its use of the key's concurrency limit, if the key has one.
    pub concurrent: Option<LimitUse>,
}

/// A node's use of one of a client key's limits besides requests per minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitUse {
    /// What the node would admit if it could (tokens per minute; requests at once).
    pub demand: f64,
    /// Tokens admitted in the current window; requests in flight now.
    pub in_use: u32,
    /// What is free of the node's share, as a fraction of it.
    pub fill: f64,
    /// The share the node ran when it reported (per window), whoever granted it.
    pub granted: u32,
}
