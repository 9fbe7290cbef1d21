//! Client keys' fleet-wide limits: each of a key's limits — requests per minute, tokens
//! per minute, requests in flight at once — is one more limit the nodes share, split by
//! the same allocator and under the same rules as a backend's (demand-based grants under
//! a lease, increases only into headroom no node can still be using, a departed node's
//! share held until it cannot be in use). A key's window is the minute. Every connected
//! node may serve every key.
//!
//! Tokens and requests in flight are not paced on the node (a node may take its whole
//! grant at once), so their bound on what a node may be using is its grants and, for a
//! recent report, its use then — never a pace. For requests in flight the "window" is the
//! time a grant counts after it was issued: a node admits no request beyond its grant in
//! force, and a request already in flight when its grant shrinks is counted by the
//! node's report (`in_use`) until it ends.

use std::collections::HashMap;

use tokio::time::Instant;

use super::{Fleet, FleetMessage, KeyDemand, KeyGrant, LimitUse};
use crate::snapshot::{ConfigState, KeyShares};

/// One of a client key's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum KeyLimit {
    Requests,
    Tokens,
    Concurrent,
}

impl KeyLimit {
    /// The key's value of this limit (0 = none).
    fn of(self, k: &crate::store::ClientKeyRecord) -> u32 {
        match self {
            KeyLimit::Requests => k.rpm_limit,
            KeyLimit::Tokens => k.tpm_limit,
            KeyLimit::Concurrent => k.max_concurrent,
        }
    }

    const ALL: [KeyLimit; 3] = [KeyLimit::Requests, KeyLimit::Tokens, KeyLimit::Concurrent];
}

/// Each limit a key sets, with its value.
fn limits(k: &crate::store::ClientKeyRecord) -> impl Iterator<Item = (KeyLimit, u32)> + '_ {
    KeyLimit::ALL.into_iter().map(move |l| (l, l.of(k))).filter(|(_, v)| *v > 0)
}

impl Fleet {
    /// A node reported its demand on client keys. Only limits the config sets count: a
    /// node's report cannot grow the map.
    pub fn key_demand(&self, node_id: &str, demand: &[KeyDemand]) {
        let mut keys = self.keys.lock().expect("keys lock");
        let now = Instant::now();
        for d in demand {
            let uses = [
                (
                    KeyLimit::Requests,
                    Some(LimitUse { demand: d.demand, in_use: d.in_window, fill: d.bucket_fill, granted: d.granted }),
                ),
                (KeyLimit::Tokens, d.tokens),
                (KeyLimit::Concurrent, d.concurrent),
            ];
            for (limit, used) in uses {
                let (Some(used), Some(shares)) = (used, keys.get_mut(&(d.key_id.clone(), limit))) else { continue };
                let report = self.report(now, (used.fill, used.in_use, used.granted), d.lease_remaining, d.grant_round);
                shares.report(node_id, used.demand, report);
            }
        }
    }

    /// The clock of a key's limit: the minute, paced only for requests.
    fn key_clock(&self, limit: KeyLimit, now: Instant) -> super::Clock {
        super::Clock { paced: limit == KeyLimit::Requests, ..self.clock(60, now) }
    }

    /// The node's starting shares of each limited key for a fresh snapshot, by key id.
    pub(super) fn key_starting(
        &self,
        node_id: &str,
        config: &ConfigState,
        now: Instant,
        allocating: bool,
    ) -> Vec<(String, KeyShares)> {
        let mut keys = self.keys.lock().expect("keys lock");
        let mut out = Vec::new();
        for k in &config.client_keys {
            let mut shares = KeyShares::default();
            for (limit, value) in limits(k) {
                let clock = self.key_clock(limit, now);
                let held = keys.entry((k.id.clone(), limit)).or_default();
                let start = if allocating { held.starting(node_id, value, clock) } else { 0 };
                *match limit {
                    KeyLimit::Requests => &mut shares.requests,
                    KeyLimit::Tokens => &mut shares.tokens,
                    KeyLimit::Concurrent => &mut shares.concurrent,
                } = Some(start);
            }
            if shares != KeyShares::default() {
                out.push((k.id.clone(), shares));
            }
        }
        out
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
        keys.retain(|(id, limit), _| config.client_keys.iter().any(|k| &k.id == id && limit.of(k) > 0));
        let mut per_node: HashMap<String, Vec<KeyGrant>> = HashMap::new();
        for k in config.client_keys.iter() {
            let mut grants: Vec<KeyGrant> = Vec::new();
            for (limit, value) in limits(k) {
                let clock = self.key_clock(limit, now);
                let split = keys.entry((k.id.clone(), limit)).or_default().split(nodes, value, clock);
                grants.resize_with(nodes.len(), || KeyGrant { key_id: k.id.clone(), ..Default::default() });
                for (g, (grant, fallback, pace)) in grants.iter_mut().zip(split) {
                    match limit {
                        KeyLimit::Requests => (g.rpm, g.fallback_rpm, g.pace) = (grant, fallback, pace),
                        KeyLimit::Tokens => (g.tpm, g.fallback_tpm) = (grant, fallback),
                        KeyLimit::Concurrent => (g.concurrent, g.fallback_concurrent) = (grant, fallback),
                    }
                }
            }
            for (node, grant) in nodes.iter().zip(grants) {
                per_node.entry((*node).to_owned()).or_default().push(grant);
            }
        }
        per_node
    }

    /// Tells every connected node what is left of each client key's budget.
    pub fn broadcast_budgets(&self, budgets: Vec<crate::budgets::Remaining>) {
        self.broadcast(FleetMessage::Budgets(budgets));
    }
}
