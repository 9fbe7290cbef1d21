//! Client keys' fleet-wide request limits: each key with an `rpm_limit` is one more limit
//! the nodes share, split by the same allocator and under the same rules as a backend's
//! (demand-based grants under a lease, increases only into headroom no node can still be
//! using, a departed node's share held until it cannot be in use). A key's window is the
//! minute. Every connected node may serve every key.

use std::collections::HashMap;

use tokio::time::Instant;

use super::{Fleet, FleetMessage, KeyDemand, KeyGrant};
use crate::snapshot::ConfigState;

impl Fleet {
    /// A node reported its demand on client keys. Only keys the config limits count: a
    /// node's report cannot grow the map.
    pub fn key_demand(&self, node_id: &str, demand: &[KeyDemand]) {
        let mut keys = self.keys.lock().expect("keys lock");
        let now = Instant::now();
        for d in demand {
            let Some(shares) = keys.get_mut(&d.key_id) else { continue };
            let report = self.report(now, (d.bucket_fill, d.in_window), d.lease_remaining, d.grant_round);
            shares.report(node_id, d.demand, report);
        }
    }

    /// The node's starting share of each limited key for a fresh snapshot, by key id.
    pub(super) fn key_starting(&self, node_id: &str, config: &ConfigState, now: Instant) -> Vec<(String, u32)> {
        let mut keys = self.keys.lock().expect("keys lock");
        let clock = self.clock(60, now);
        config
            .client_keys
            .iter()
            .filter(|k| k.rpm_limit > 0)
            .map(|k| (k.id.clone(), keys.entry(k.id.clone()).or_default().starting(node_id, k.rpm_limit, clock)))
            .collect()
    }

    /// One allocation round for the limited keys among the connected `nodes`: each
    /// node's key grants.
    pub(super) fn key_grants(
        &self,
        config: &ConfigState,
        nodes: &[&str],
        now: Instant,
    ) -> HashMap<String, Vec<KeyGrant>> {
        let mut keys = self.keys.lock().expect("keys lock");
        keys.retain(|id, _| config.client_keys.iter().any(|k| &k.id == id && k.rpm_limit > 0));
        let clock = self.clock(60, now);
        let mut per_node: HashMap<String, Vec<KeyGrant>> = HashMap::new();
        for k in config.client_keys.iter().filter(|k| k.rpm_limit > 0) {
            let split = keys.entry(k.id.clone()).or_default().split(nodes, k.rpm_limit, clock);
            for (node, (rpm, fallback_rpm, pace)) in nodes.iter().zip(split) {
                let grant = KeyGrant { key_id: k.id.clone(), rpm, pace, fallback_rpm };
                per_node.entry((*node).to_owned()).or_default().push(grant);
            }
        }
        per_node
    }

    /// Tells every connected node what is left of each client key's budget.
    pub fn broadcast_budgets(&self, budgets: Vec<crate::budgets::Remaining>) {
        let msg = FleetMessage::Budgets(budgets);
        for s in self.sessions.lock().expect("sessions lock").values() {
            // A node far behind gets the next one a grant interval later.
            let _ = s.tx.try_send(msg.clone());
        }
    }
}
