//! Client keys: who may use the proxies, with their scope and limits. Stored as a hash;
//! the secret is shown once, when the key is created or rotated.

use serde::{Deserialize, Serialize};

use super::{SledStore, StoreError};

/// How often a key's spend budget starts afresh (UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// Each UTC day.
    Day,
    /// Each UTC calendar month.
    #[default]
    Month,
}

/// A client key (`sk-sc-…`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientKeyRecord {
    /// `key_…`.
    pub id: String,
    /// Unique among keys that are not revoked.
    pub name: String,
    /// Free text grouping keys for accounting; empty = none.
    #[serde(default)]
    pub team: String,
    /// SHA-256 of the key.
    #[serde(with = "hex::serde")]
    pub hash: [u8; 32],
    /// `sk-sc-` and the secret's first characters.
    pub prefix: String,
    /// Canonical model names it may use; empty = all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Pools it may be routed to; empty = all.
    #[serde(default)]
    pub pools: Vec<String>,
    /// Fleet-wide requests per minute; 0 = no limit.
    #[serde(default)]
    pub rpm_limit: u32,
    /// Fleet-wide tokens per minute; 0 = no limit.
    #[serde(default)]
    pub tpm_limit: u32,
    /// Requests in flight at once, fleet-wide; 0 = no limit.
    #[serde(default)]
    pub max_concurrent: u32,
    /// Spend per period in USD; 0 = no budget.
    #[serde(default)]
    pub budget_usd: f64,
    /// The budget's period.
    #[serde(default)]
    pub budget_period: BudgetPeriod,
    /// Unix ms; `None` = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// A disabled key is refused until enabled again.
    pub enabled: bool,
    /// Unix ms; a revoked key is never accepted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
    /// Creation time, unix ms.
    pub created_at_ms: i64,
    /// Token id of the creator.
    pub created_by: String,
    /// When the secret was last replaced, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at_ms: Option<i64>,
    /// Bumped on every change (optimistic concurrency).
    pub resource_version: u64,
}

impl ClientKeyRecord {
    /// Whether proxies should still know it (revoked keys are left out of snapshots).
    pub fn live(&self) -> bool {
        self.revoked_at_ms.is_none()
    }
}

impl SledStore {
    /// Every client key, revoked ones included, ordered by id.
    pub fn client_keys(&self) -> Result<Vec<ClientKeyRecord>, StoreError> {
        Self::scan(&self.client_keys, "client_keys")
    }
}
